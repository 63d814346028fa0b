"""Side by side: this checkout against an earlier revision, on batch and single-request jobs.

    python bench/ab.py --before REV [--before-tree DIR] [--jobs code,complete,chat,single,tiny]
                       [--n-parallel 8] [--rounds 3]

Whole-job timings on this machine drift between runs by more than most changes do, so a change
is judged by running both builds alternately in one session, never by comparing figures from
different runs. The --before revision is cloned into a temporary directory and built in place
(llama.cpp comes from the build cache); every job runs in a fresh interpreter that imports one
build or the other, plain and speculative, round after round; the figure per job and side is the
median over rounds of after / before throughput. Jobs (32 prompts, default model, greedy):
``code`` and ``chat`` generate 64 tokens per request, ``complete`` generates each code rewrite
to its closing fence (at most 320 tokens). ``single`` generates 64 tokens for each of 8 code
prompts one request at a time (``Engine.generate``). ``tiny`` generates 2,048 tokens one request
at a time on a tiny random llama (2 layers, 64 wide), where llama.cpp's decode costs a few
microseconds and spec's own per-step code is most of the time: it bounds what the Python and
Cython layers can add to the other jobs. Results: ``bench/results/ab.json`` (``--name``).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
JOBS = ("code", "complete", "chat", "single", "tiny")
TINY_MODEL = Path(tempfile.gettempdir()) / "spec-ab-tiny-llama.gguf"
SIDES = ("plain", "spec")


def run_job(job: str, n_parallel: int, drafter: str | None) -> dict:
    """One job in this interpreter (whichever spec it imports); its throughput."""
    sys.path.insert(0, str(BENCH))
    import spec
    if job in ("single", "tiny"):
        return _run_single(job, drafter)
    from _workloads import chat_prompts, code_prompts
    from spec.models import gemma3_270m

    prompts = (chat_prompts if job == "chat" else code_prompts)(32)
    gen = dict(max_tokens=320, stop=["```"]) if job == "complete" else dict(max_tokens=64)
    with spec.Model(gemma3_270m()) as model:
        with spec.Engine(model, drafter=drafter, n_threads=os.cpu_count(),
                         n_parallel=n_parallel) as engine:
            engine.generate_batch(prompts[:2], n_parallel=n_parallel, max_tokens=4)  # warm-up
            t0 = time.perf_counter()
            results = engine.generate_batch(prompts, n_parallel=n_parallel, **gen)
            wall = time.perf_counter() - t0
    n_generated = sum(r.stats.n_generated for r in results)
    return {"spec_file": spec.__file__, "tok_s": n_generated / wall, "wall_s": wall,
            "n_generated": n_generated}


def _run_single(job: str, drafter: str | None) -> dict:
    """Requests one at a time: 8 code prompts on the default model, or one long tiny-model run."""
    import spec
    from _workloads import code_prompts
    from spec.models import gemma3_270m

    if job == "tiny":
        path, prompts, n_tokens, n_threads = TINY_MODEL, [[1, 2, 3, 4, 5, 6, 7, 8]], 2048, 1
    else:
        path, prompts, n_tokens, n_threads = gemma3_270m(), code_prompts(8), 64, os.cpu_count()
    with spec.Model(path) as model:
        with spec.Engine(model, drafter=drafter, n_threads=n_threads) as engine:
            engine.generate(prompts[0], max_tokens=4)                              # warm-up
            t0 = time.perf_counter()
            results = [engine.generate(p, max_tokens=n_tokens) for p in prompts]
            wall = time.perf_counter() - t0
    n_generated = sum(r.stats.n_generated for r in results)
    return {"spec_file": spec.__file__, "tok_s": n_generated / wall, "wall_s": wall,
            "n_generated": n_generated}


def _build(rev: str, into: Path) -> None:
    subprocess.run(["git", "clone", "-q", str(ROOT), str(into)], check=True)
    subprocess.run(["git", "-C", str(into), "checkout", "-q", rev], check=True)
    subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=into,
                   check=True, stdout=subprocess.DEVNULL)


def _job_in(tree: Path, job: str, n_parallel: int, side: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree))
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--run-job", job,
                          str(n_parallel), side], env=env, cwd=tempfile.gettempdir(),
                         capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if not Path(result["spec_file"]).resolve().is_relative_to(tree.resolve()):
        raise RuntimeError(f"the job imported {result['spec_file']}, not the build in {tree}")
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--before", help="git revision to compare this checkout against")
    ap.add_argument("--before-tree", type=Path,
                    help="an in-place build of --before to use instead of cloning and building it")
    ap.add_argument("--jobs", default=",".join(JOBS))
    ap.add_argument("--n-parallel", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--drafter", default="suffix")
    ap.add_argument("--name", default="ab", help="results file: bench/results/NAME.json")
    ap.add_argument("--run-job", nargs=3, metavar=("JOB", "N_PARALLEL", "SIDE"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.run_job:
        job, n_parallel, side = args.run_job
        print(json.dumps(run_job(job, int(n_parallel), None if side == "plain" else side)))
        return 0
    if not args.before:
        ap.error("--before is required")
    jobs = args.jobs.split(",")
    if unknown := set(jobs) - set(JOBS):
        ap.error(f"unknown jobs {sorted(unknown)}; choose from {', '.join(JOBS)}")
    before_rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", args.before], check=True,
                                capture_output=True, text=True).stdout.strip()
    after_rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], check=True,
                               capture_output=True, text=True).stdout.strip()
    if subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                      check=True, capture_output=True, text=True).stdout.strip():
        after_rev += "+uncommitted"        # the record names what actually ran
    runs = {(job, tree, side): [] for job in jobs for tree in ("before", "after")
            for side in SIDES}
    with tempfile.TemporaryDirectory() as tmp:
        if args.before_tree:
            before = args.before_tree.resolve()
            head = subprocess.run(["git", "-C", str(before), "rev-parse", "HEAD"], check=True,
                                  capture_output=True, text=True).stdout.strip()
            if head != before_rev:
                ap.error(f"--before-tree {before} is at {head[:12]}, not {before_rev[:12]}")
        else:
            before = Path(tmp) / "before"
            _build(before_rev, before)
        trees = {"before": before, "after": ROOT}
        if "tiny" in jobs and not TINY_MODEL.exists():
            sys.path.insert(0, str(ROOT))
            from spec.testing import make_tiny_llama
            make_tiny_llama(TINY_MODEL, proj_scale=0.05)      # repetitive: drafts get accepted
        for rnd in range(args.rounds):
            for job in jobs:
                for tree, path in trees.items():
                    for side in SIDES:
                        drafter = "plain" if side == "plain" else args.drafter
                        r = _job_in(path, job, args.n_parallel, drafter)
                        runs[job, tree, side].append(r)
                        print(f"round {rnd} {job:8s} {tree:6s} {side:5s} {r['tok_s']:7.1f} tok/s "
                              f"({r['n_generated']} tokens)", flush=True)
    summary = {}
    for job in jobs:
        for side in SIDES:
            ratios = [a["tok_s"] / b["tok_s"]
                      for a, b in zip(runs[job, "after", side], runs[job, "before", side])]
            # near-ties can end a request elsewhere, so each side's token totals are kept too
            summary[f"{job}/{side}"] = {"after_over_before": statistics.median(ratios),
                                        "ratios": ratios}
            for tree in ("before", "after"):
                for key in ("tok_s", "n_generated", "wall_s"):
                    summary[f"{job}/{side}"][f"{tree}_{key}"] = [
                        r[key] for r in runs[job, tree, side]]
            print(f"{job:8s} {side:5s} after / before {statistics.median(ratios):.3f} "
                  f"(rounds: {', '.join(f'{x:.3f}' for x in ratios)})")
    sys.path[:0] = [str(ROOT), str(BENCH)]        # the machine record imports this checkout
    from conftest import save
    save(args.name, {"command": "python bench/ab.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                "before": before_rev, "after": after_rev, "n_parallel": args.n_parallel,
                "drafter": args.drafter, "rounds": args.rounds, "jobs": summary})
    return 0


if __name__ == "__main__":
    sys.exit(main())
