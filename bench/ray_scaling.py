"""Batch generation through Ray Data against the single-process batch job, on this machine.

    python bench/ray_scaling.py [--prompts 64] [--max-tokens 128] [--rounds 2]

The same code-rewrite prompts (HumanEval), greedy, drafter ``suffix`` with auto draft lengths,
n_parallel 8 per engine, default model, run as

- ``single``: ``python -m spec batch`` in one process, 2 llama.cpp threads (no Ray running);
- ``ray 1x2``: ``python -m spec batch --ray``, 1 actor with 2 threads;
- ``ray 2x1``: ``python -m spec batch --ray``, 2 actors with 1 thread each.

Each job runs in a fresh interpreter; the Ray ones start a local cluster first (``ray.init``,
timed apart: on a real cluster it is already up). Job time is the whole job as the command
runs it: reading the prompts, loading the model (in each actor), generating, writing the
results. Configurations alternate for ``--rounds`` rounds (reversed every other round); the
figures are medians. Results: ``bench/results/ray_scaling.json``.
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
CONFIGS = {"single": (None, 2), "ray 1x2": (1, 2), "ray 2x1": (2, 1)}   # (actors, threads)
N_PARALLEL = 8
DRAFTER = "suffix"


def worker(config: str, inp: str, out: str, max_tokens: int) -> dict:
    actors, threads = CONFIGS[config]
    common = dict(model="default", drafter=DRAFTER, n_draft="auto", n_parallel=N_PARALLEL,
                  max_tokens=max_tokens)
    if actors is None:
        import io
        from spec.batch import run_batch
        t0 = time.perf_counter()
        code, s = run_batch(inp, out, threads=threads, progress=False, log=io.StringIO(),
                            **common)
        job = time.perf_counter() - t0
        assert code == 0 and s["done"] == s["requests"], s
        return {"job_s": job, "tokens": s["generated_tokens"], "generate_s": s["wall_s"],
                "n_drafted": s["n_drafted"], "n_accepted": s["n_accepted"], "ray_init_s": 0.0}
    import logging
    import ray
    from spec.jobs.ray_batch import run_ray_batch
    t0 = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level=logging.ERROR,
             log_to_driver=False)
    init = time.perf_counter() - t0
    t0 = time.perf_counter()
    s = run_ray_batch(inp, out, concurrency=actors, threads=threads, progress=False, **common)
    job = time.perf_counter() - t0
    ray.shutdown()
    assert s["done"] == s["requests"] and s["errors"] == 0, s
    return {"job_s": job, "tokens": s["generated_tokens"], "generate_s": s["wall_s"],
            "n_drafted": s["n_drafted"], "n_accepted": s["n_accepted"], "ray_init_s": init}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--configs", default=",".join(CONFIGS),
                    help=f"comma-separated subset of: {', '.join(CONFIGS)}")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--input", help=argparse.SUPPRESS)
    ap.add_argument("--output", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.input, args.output, args.max_tokens)))
        return

    sys.path.insert(0, str(BENCH))
    from _workloads import code_prompts
    from conftest import save
    names = args.configs.split(",")
    if not set(names) <= set(CONFIGS):
        sys.exit(f"--configs: unknown {sorted(set(names) - set(CONFIGS))}")
    runs = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as tmp:
        inp = Path(tmp) / "prompts.jsonl"
        inp.write_text("".join(json.dumps({"id": i, "prompt": p}) + "\n"
                               for i, p in enumerate(code_prompts(args.prompts))))
        for r in range(args.rounds):
            order = names if r % 2 == 0 else names[::-1]
            for name in order:
                out = Path(tmp) / f"out-{r}-{name.replace(' ', '-')}"
                if CONFIGS[name][0] is None:
                    out = out.with_suffix(".jsonl")
                proc = subprocess.run(
                    [sys.executable, __file__, "--worker", name, "--input", str(inp),
                     "--output", str(out), "--max-tokens", str(args.max_tokens)],
                    capture_output=True, text=True)
                if proc.returncode:
                    sys.exit(f"{name} failed:\n{proc.stderr[-3000:]}")
                res = json.loads(proc.stdout.strip().splitlines()[-1])
                runs[name].append(res)
                print(f"round {r} {name:8s} job {res['job_s']:6.1f} s  "
                      f"{res['tokens'] / res['job_s']:6.1f} tok/s (job)  "
                      f"ray.init {res['ray_init_s']:.1f} s", flush=True)

    def med(name, key):
        return statistics.median(x[key] for x in runs[name])

    table = {}
    for name in names:
        table[name] = {
            "job_s": med(name, "job_s"), "tokens": med(name, "tokens"),
            "job_tok_s": statistics.median(x["tokens"] / x["job_s"] for x in runs[name]),
            "ray_init_s": med(name, "ray_init_s"),
            "accept_rate": statistics.median(x["n_accepted"] / x["n_drafted"]
                                             if x["n_drafted"] else 0.0 for x in runs[name]),
        }
    def ratio(a, b):      # median over rounds of the side-by-side ratio of job times
        if a not in runs or b not in runs:
            return None
        return statistics.median(x["job_s"] / y["job_s"] for x, y in zip(runs[a], runs[b]))

    summary = {
        "ray_1x2_job_time_over_single": ratio("ray 1x2", "single"),
        "single_job_time_over_ray_2x1": ratio("single", "ray 2x1"),
        "ray_1x2_job_time_over_ray_2x1": ratio("ray 1x2", "ray 2x1"),
    }
    print("\n| configuration | job s | tok/s (job) | accept rate | ray.init s |")
    print("|---|---|---|---|---|")
    for name, t in table.items():
        print(f"| {name} | {t['job_s']:.1f} | {t['job_tok_s']:.1f} | "
              f"{100 * t['accept_rate']:.0f} % | {t['ray_init_s']:.1f} |")
    print(json.dumps(summary, indent=2))
    save("ray_scaling", {"prompts": args.prompts, "max_tokens": args.max_tokens,
                         "rounds": args.rounds, "n_parallel": N_PARALLEL, "drafter": DRAFTER,
                         "configs": {k: {"actors": CONFIGS[k][0], "threads": CONFIGS[k][1]}
                                     for k in names},
                         "table": table, "summary": summary, "runs": runs})


if __name__ == "__main__":
    main()
