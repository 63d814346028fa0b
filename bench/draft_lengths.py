"""Auto draft lengths end to end: this checkout against an earlier revision, llama.cpp's
llama-speculative-simple, and the hindsight oracle, per prompt.

    python bench/draft_lengths.py --before REV [--rounds 2] [--n-gen 128] [--prompts 8]
                                  [--drafters suffix,ngram-simple] [--llama] [--model NAME]

Greedy, the default model (or ``--model``, a name of spec.models: ``smollm2``), 2 threads; the
held-out code-rewrite and chat prompts of the end-to-end benchmark. Every (revision, drafter)
pair runs in a fresh interpreter that, for each prompt in turn, generates with plain decoding
and then with the drafter (``n_draft="auto"``, the revision's defaults), so each speedup is a
ratio measured back to back; revisions alternate round after round and the figure per prompt
is the median over rounds. The oracle (``spec.simulate(..., cost_table=...)``) replays the
plain output (and, as "oracle own", the drafter's own output of the first round, which a
near-tie may have sent elsewhere) through the drafter, priced by a verify-cost table measured
in this run (as ``bench/test_verify_cost.py`` measures it, before and after the rounds, the
mean of the two): the best speedup any schedule of draft lengths could reach with that drafter
on this machine, in the state the clock ran in (default model only: the table is that model's;
"achieved/oracle stored table" prices the oracle by ``bench/results/verify_cost.json`` instead,
measured on another day, as runs before this one did). Beside it, the same replay's planner
("simulated") and step oracle (told each step's acceptance, planning one step at a time). With
``--llama``, llama.cpp's
``llama-speculative-simple`` runs each prompt with ngram-simple and ngram-mod at their defaults
(up to 48 drafted) and at ``size_n`` 4, in every round, right after spec's plain decoding of the
same prompt (in the first drafter's interpreter): its speedup is over that plain decode, measured
a few seconds earlier (spec's plain decode runs at 0.98 of llama.cpp's own, bench/RESULTS.md),
and its figure per prompt is the median over rounds like spec's. Prompts whose
plain answer is shorter than MIN_GEN tokens are left out.
Results: ``bench/results/draft_lengths.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
THREADS = int(os.environ.get("SPEC_BENCH_THREADS", os.cpu_count() or 2))
N_MAX = 64          # the oracle's longest draft (this checkout's n_draft_max)
MODEL = os.environ.get("SPEC_BENCH_MODEL", "default")     # set from --model for the runs
MIN_GEN = 16        # prompts whose plain answer is shorter are left out (an instruct model may
                    # end its answer at once)
LLAMA = {           # name -> (--spec-type, extra flags)
    "llama ngram-simple": ("ngram-simple", []),
    "llama ngram-simple n4": ("ngram-simple", ["--spec-ngram-simple-size-n", "4"]),
    "llama ngram-mod": ("ngram-mod", []),
    "llama ngram-mod n4": ("ngram-mod", ["--spec-ngram-mod-n-match", "4"]),
}
LLAMA_N_DRAFT = 48


def workloads(n_prompts: int) -> dict:
    sys.path.insert(0, str(BENCH))
    from _workloads import chat_prompts, code_prompts
    return {"code": code_prompts(n_prompts), "chat": chat_prompts(n_prompts)}


def run(drafter: str, n_gen: int, n_prompts: int, llama: bool = False) -> dict:
    """In this interpreter (whichever spec it imports): per prompt, plain then drafter (then,
    with ``llama``, llama.cpp's runs of the same prompt)."""
    import spec
    out = {"spec_file": spec.__file__, "runs": {}}
    with spec.Model(spec.models.resolve(MODEL)) as model:
        plain = spec.Engine(model, drafter=None, n_ctx=4096, n_threads=THREADS)
        engine = spec.Engine(model, drafter=drafter, n_ctx=4096, n_threads=THREADS)
        for e in (plain, engine):
            e.generate("Hello", max_tokens=8)                       # warm-up
        for kind, prompts in workloads(n_prompts).items():
            for i, prompt in enumerate(prompts):
                base = plain.generate(prompt, max_tokens=n_gen)
                if base.stats.n_generated < MIN_GEN:
                    continue    # the model ends its answer at once: no speed to compare
                res = engine.generate(prompt, max_tokens=n_gen)
                row = out["runs"][f"{kind}{i}"] = {
                    "plain_tok_s": base.stats.decode_tok_s, "tok_s": res.stats.decode_tok_s,
                    "speedup": res.stats.decode_tok_s / base.stats.decode_tok_s,
                    "mean_accept_len": res.stats.mean_accept_len,
                    "prompt_tokens": model.tokenize(prompt).tolist(),
                    "plain_tokens": base.tokens.tolist(), "spec_tokens": res.tokens.tolist(),
                    "same": base.tokens.tolist() == res.tokens.tolist()}
                if llama:
                    for name, tok_s in llama_runs(prompt, n_gen).items():
                        row[name] = tok_s / base.stats.decode_tok_s
    return out


def _run_in(tree: Path, drafter: str, n_gen: int, n_prompts: int, llama: bool) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree))
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--run", drafter,
                           str(n_gen), str(n_prompts), str(int(llama))], env=env,
                          cwd=tempfile.gettempdir(),
                          capture_output=True, text=True, check=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if not Path(result["spec_file"]).resolve().is_relative_to(tree.resolve()):
        raise RuntimeError(f"the run imported {result['spec_file']}, not the build in {tree}")
    return result


def _build(rev: str, into: Path) -> None:
    if (into / ".git").exists():          # --before-dir: built by an earlier run
        head = subprocess.run(["git", "-C", str(into), "rev-parse", "HEAD"], check=True,
                              capture_output=True, text=True).stdout.strip()
        full = subprocess.run(["git", "-C", str(ROOT), "rev-parse", rev], check=True,
                              capture_output=True, text=True).stdout.strip()
        if head != full:
            raise SystemExit(f"{into} holds {head}, not {rev}")
        return
    subprocess.run(["git", "clone", "-q", str(ROOT), str(into)], check=True)
    subprocess.run(["git", "-C", str(into), "checkout", "-q", rev], check=True)
    subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=into,
                   check=True, stdout=subprocess.DEVNULL)


def measured_table() -> dict:
    """The verify-cost table (rows -> ms, 1 .. N_MAX + 1) of the default model, measured now
    (main has put the checkout and bench/ on sys.path)."""
    import spec
    from _verify_cost import measure
    return measure(str(spec.models.resolve("default")), N_MAX + 1, THREADS)["all"]


def cost_table() -> dict:
    data = json.loads((BENCH / "results" / "verify_cost.json").read_text())
    table = {int(k): v for k, v in data["median_ms"].items()}
    if max(table) < N_MAX + 1:
        raise SystemExit(f"bench/results/verify_cost.json measures up to {max(table)} rows; "
                         f"the oracle needs {N_MAX + 1}: run python -m pytest "
                         f"bench/test_verify_cost.py -s")
    return table


def llama_runs(prompt: str, n_gen: int) -> dict:
    """llama-speculative-simple's decode tokens/s on ``prompt`` in each LLAMA setting."""
    sys.path.insert(0, str(BENCH))
    import spec
    from _llama_tools import speculative_simple
    model = str(spec.models.resolve(MODEL))
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write(prompt)
    try:
        return {name: speculative_simple(model, f.name, n_gen, THREADS, spec_type, LLAMA_N_DRAFT,
                                         flags, n_ctx=4096)["tok_s"]
                for name, (spec_type, flags) in LLAMA.items()}
    finally:
        os.unlink(f.name)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--before", required=False)
    ap.add_argument("--before-dir", help="where to build --before (kept for the next run)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--n-gen", type=int, default=128)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--drafters", default="suffix,ngram-simple",
                    help="comma-separated; with ';' the separator is ';' and a name may be a "
                         "chain (suffix;suffix,ngram-mod)")
    ap.add_argument("--save", default="draft_lengths",
                    help="results file name in bench/results (without .json)")
    ap.add_argument("--llama", action="store_true")
    ap.add_argument("--model", default="default", help="a model name of spec.models")
    ap.add_argument("--run", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.run:
        print(json.dumps(run(args.run[0], int(args.run[1]), int(args.run[2]),
                             bool(int(args.run[3])))))
        return 0
    sys.path[:0] = [str(ROOT), str(BENCH)]
    import spec
    from conftest import save
    global MODEL
    MODEL = os.environ["SPEC_BENCH_MODEL"] = args.model      # the runs' interpreters inherit it
    oracle = spec.models.resolve(args.model) == spec.models.resolve("default")
    stored_table = cost_table() if oracle else None
    measured = [measured_table()] if oracle else []
    table = None
    drafters = args.drafters.split(";" if ";" in args.drafters else ",")
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"after": ROOT}
        if args.before:
            trees = {"before": Path(args.before_dir or Path(tmp) / "before"), "after": ROOT}
            _build(args.before, trees["before"])
        for rnd in range(args.rounds):
            for drafter in drafters:
                for side, tree in trees.items():
                    llama = args.llama and drafter == drafters[0] and side == "after"
                    r = _run_in(tree, drafter, args.n_gen, args.prompts, llama)
                    runs.setdefault((side, drafter), []).append(r["runs"])
                    med = statistics.median(v["speedup"] for v in r["runs"].values())
                    print(f"round {rnd} {drafter:14s} {side:6s} median speedup {med:.3f}",
                          flush=True)
    if oracle:
        measured.append(measured_table())
        # the oracle's prices: the mean of the tables measured before and after the rounds
        table = {n: (measured[0][n] + measured[1][n]) / 2 for n in measured[0]}
    first = runs["after", drafters[0]][0]
    rows = {}
    for key in first:
        stream = first[key]["prompt_tokens"] + first[key]["plain_tokens"]
        row = {}
        for drafter in drafters:
            for side in trees:
                row[f"{side} {drafter}"] = statistics.median(
                    r[key]["speedup"] for r in runs[side, drafter])
            if oracle:
                n_prompt = len(first[key]["prompt_tokens"])
                sim = spec.simulate(drafter, stream, n_max=N_MAX, prompt_len=n_prompt,
                                    cost_table=table)
                row[f"oracle {drafter}"] = sim.oracle_speedup
                row[f"step oracle {drafter}"] = sim.step_oracle_speedup
                row[f"simulated {drafter}"] = sim.policy_speedup
                row[f"achieved/oracle {drafter}"] = row[f"after {drafter}"] / sim.oracle_speedup
                # priced by the stored table instead (measured on another day), as before
                stored = spec.simulate(drafter, stream, n_max=N_MAX, prompt_len=n_prompt,
                                       cost_table=stored_table).oracle_speedup
                row[f"achieved/oracle stored table {drafter}"] = row[f"after {drafter}"] / stored
                # The same limit on the stream this drafter's run produced (its first round's):
                # where a near-tie sent it down another output, that output is what it sped up.
                own = runs["after", drafter][0][key]
                if "spec_tokens" in own:
                    sim = spec.simulate(drafter, own["prompt_tokens"] + own["spec_tokens"],
                                        n_max=N_MAX, prompt_len=n_prompt, cost_table=table)
                    row[f"oracle own {drafter}"] = sim.oracle_speedup
                    row[f"achieved/oracle own {drafter}"] = (row[f"after {drafter}"]
                                                             / sim.oracle_speedup)
        if args.llama:
            for name in LLAMA:
                row[name] = statistics.median(r[key][name] for r in runs["after", drafters[0]])
        row["plain_tok_s"] = statistics.median(r[key]["plain_tok_s"]
                                               for r in runs["after", drafters[0]])
        rows[key] = row
    summary = {}
    for kind in ("code", "chat"):
        keys = [k for k in rows if k.startswith(kind)]
        cols = [c for c in rows[keys[0]] if c != "plain_tok_s"]
        summary[kind] = {c: {"median": statistics.median(rows[k][c] for k in keys),
                             "min": min(rows[k][c] for k in keys)} for c in cols}
        if args.llama:
            # against llama.cpp's best setting on this workload (best median speedup)
            best = max(LLAMA, key=lambda name: summary[kind][name]["median"])
            for drafter in drafters:
                ratios = [rows[k][f"after {drafter}"] / rows[k][best] for k in keys]
                summary[kind][f"{drafter} / {best}"] = {"median": statistics.median(ratios),
                                                         "min": min(ratios)}
            cols = list(summary[kind])
        print(f"\n{kind}: median (worst prompt)")
        for c in cols:
            print(f"  {c:28s} {summary[kind][c]['median']:.3f} ({summary[kind][c]['min']:.3f})")
    save(args.save, {"command": "python bench/draft_lengths.py " + " ".join(
        argv if argv is not None else sys.argv[1:]), "model": args.model,
        "before": args.before, "n_gen": args.n_gen,
        "n_prompts": args.prompts, "rounds": args.rounds, "n_max_oracle": N_MAX,
        "verify_cost_ms": {"before": measured[0], "after": measured[1]} if oracle else None,
        "summary": summary, "per_prompt": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
