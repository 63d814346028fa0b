"""The auto planner on recorded token streams, without timing: simulated speedups per prompt.

    python bench/planner_sim.py [--before REV] [--drafters suffix,ngram-simple]

The streams are plain greedy outputs of the default model, 256 new tokens, for the first 40
code-rewrite and 32 chat prompts of the end-to-end workloads (the first 8 of each are the
held-out prompts the timed benchmarks run; the rest are more of the same kind). They are made
once (about 5 minutes, 2 threads) and kept in ``bench/results/streams_default_256.json``; a
stream is deterministic up to llama.cpp's near-ties, so a kept file stands for the model.
Every stream is replayed by :func:`spec.simulate` with the verify-cost table of
``bench/results/verify_cost.json`` at 128 and 256 new tokens (a 128-token stream is the
256-token one cut): the planner's speedup over plain decoding ("policy"), the step oracle's
(told each step's acceptance, planning one step at a time: about the most better acceptance
estimates could give the planner) and the hindsight oracle's, per prompt. Nothing is timed,
so the figures are exact and any machine reproduces them; what they leave out (real costs
drift, the engine's own cost measurements are noisy, a step's overhead) the timed benchmark
``bench/draft_lengths.py`` measures. With ``--before`` the same replays run in a build of an
earlier revision, side by side.
Results: ``bench/results/planner_sim.json``.
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
STREAMS = BENCH / "results" / "streams_default_256.json"
N_GEN = 256
N_CODE, N_CHAT = 40, 32
N_MAX = 64


def make_streams() -> dict:
    """{key: {"prompt": [ids], "gen": [ids]}} for every prompt whose answer has >= 16 tokens."""
    sys.path[:0] = [str(ROOT), str(BENCH)]
    import spec
    from _workloads import chat_prompts, code_prompts
    out = {}
    with spec.Model(spec.models.resolve("default")) as model:
        plain = spec.Engine(model, drafter=None, n_ctx=4096, n_threads=2)
        for kind, prompts in (("code", code_prompts(N_CODE)), ("chat", chat_prompts(N_CHAT))):
            for i, prompt in enumerate(prompts):
                res = plain.generate(prompt, max_tokens=N_GEN)
                if res.stats.n_generated >= 16:
                    out[f"{kind}{i}"] = {"prompt": model.tokenize(prompt).tolist(),
                                         "gen": res.tokens.tolist()}
                print(f"stream {kind}{i}: {res.stats.n_generated} tokens", file=sys.stderr)
    return out


def replay(drafters: list[str]) -> dict:
    """In this interpreter (whichever spec it imports): {drafter: {n_gen: {key: (policy,
    oracle, step oracle)}}}."""
    import spec
    from draft_lengths import cost_table
    streams = json.loads(STREAMS.read_text())["streams"]
    table = cost_table()
    out = {"spec_file": spec.__file__, "results": {}}
    for drafter in drafters:
        for n_gen in (128, 256):
            cell = out["results"].setdefault(drafter, {}).setdefault(str(n_gen), {})
            for key, s in streams.items():
                p = len(s["prompt"])
                sim = spec.simulate(drafter, s["prompt"] + s["gen"][:n_gen], n_max=N_MAX,
                                    prompt_len=p, cost_table=table)
                # (an earlier revision's SimResult may predate the step oracle)
                cell[key] = (sim.policy_speedup, sim.oracle_speedup,
                             getattr(sim, "step_oracle_speedup", float("nan")))
    return out


def _replay_in(tree: Path, drafters: list[str]) -> dict:
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--replay",
                           ",".join(drafters)], env=dict(os.environ, PYTHONPATH=str(tree)),
                          cwd=tempfile.gettempdir(), capture_output=True, text=True, check=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if not Path(result["spec_file"]).resolve().is_relative_to(tree.resolve()):
        raise RuntimeError(f"the replay imported {result['spec_file']}, not the build in {tree}")
    return result["results"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--before", help="an earlier revision to replay side by side")
    ap.add_argument("--before-dir", help="where to build --before (kept for the next run)")
    ap.add_argument("--drafters", default="suffix,ngram-simple")
    ap.add_argument("--replay", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.replay:
        print(json.dumps(replay(args.replay.split(","))))
        return 0
    sys.path[:0] = [str(ROOT), str(BENCH)]
    from conftest import save
    from draft_lengths import _build
    if not STREAMS.exists():
        STREAMS.write_text(json.dumps({"n_gen": N_GEN, "model": "default",
                                       "streams": make_streams()}))
    drafters = args.drafters.split(",")
    sides = {"after": ROOT}
    with tempfile.TemporaryDirectory() as tmp:
        if args.before:
            sides = {"before": Path(args.before_dir or Path(tmp) / "before"), "after": ROOT}
            _build(args.before, sides["before"])
        results = {side: _replay_in(tree, drafters) for side, tree in sides.items()}
    summary = {}
    for drafter in drafters:
        for n_gen in ("128", "256"):
            for kind in ("code", "chat"):
                name = f"{drafter} {n_gen} {kind}"
                row = summary[name] = {}
                for side in sides:
                    cell = results[side][drafter][n_gen]
                    keys = [k for k in cell if k.startswith(kind)]
                    pol = [cell[k][0] for k in keys]
                    row[f"{side} policy"] = statistics.median(pol)
                    row[f"{side} worst"] = min(pol)
                    row[f"{side} prompts below 0.97"] = sum(x < 0.97 for x in pol)
                    row[f"{side} policy/oracle"] = statistics.median(cell[k][0] / cell[k][1]
                                                                     for k in keys)
                    row["oracle"] = statistics.median(cell[k][1] for k in keys)
                    if side == "after":
                        row["step oracle/oracle"] = statistics.median(cell[k][2] / cell[k][1]
                                                                      for k in keys)
                    row["prompts"] = len(keys)
                print(f"{name:24s} " + "  ".join(f"{k} {v:.3f}" if isinstance(v, float)
                                                 else f"{k} {v}" for k, v in row.items()))
    save("planner_sim", {"command": "python bench/planner_sim.py " + " ".join(
        argv if argv is not None else sys.argv[1:]), "before": args.before, "n_max": N_MAX,
        "summary": summary, "per_prompt": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
