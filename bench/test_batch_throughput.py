"""Batch generation throughput on the default model: plain vs speculation at n_parallel 1..8.

    python -m pytest bench/test_batch_throughput.py -s

32 code-rewrite prompts (HumanEval) and 32 chat prompts (ShareGPT), greedy, total generated
tokens / wall time of the whole job, plain and speculative jobs alternating for 3 rounds
(medians), 64 new tokens per request. Goals: speculation >= 1.0x plain at every n_parallel
(>= 1.3x at 8 on code); batched speculation at 8 >= 1.5x one-at-a-time speculation.

With 64 new tokens the prompts' prefill (≈ 180 tokens each, the same work on both sides) is a
large share of the job; ``-k complete`` also runs the code job as a user would, each rewrite
generated to its closing fence (stop "```", at most 320 tokens), at n_parallel 1 and 8.
"""
from __future__ import annotations

import os
import statistics
import time

import pytest

import spec
from _workloads import chat_prompts, code_prompts
from conftest import THREADS, save

N_PROMPTS = int(os.environ.get("SPEC_BENCH_BATCH_PROMPTS", 32))
MAX_TOKENS = int(os.environ.get("SPEC_BENCH_BATCH_TOKENS", 64))
PARALLEL = (1, 2, 4, 8)
DRAFTER = os.environ.get("SPEC_BENCH_BATCH_DRAFTER", "suffix")
ROUNDS = int(os.environ.get("SPEC_BENCH_BATCH_ROUNDS", 3))
ORDER = os.environ.get("SPEC_BENCH_BATCH_ORDER", "longest_first")     # or "input"


@pytest.fixture(scope="module")
def model(default_model_path):
    m = spec.Model(default_model_path)
    yield m
    m.close()


def _job(model, prompts, drafter, n_parallel, **gen):
    # default n_ctx: the job grows the context to hold n_parallel requests at once
    engine = spec.Engine(model, drafter=drafter, n_threads=THREADS, n_parallel=n_parallel)
    engine.generate_batch(prompts[:2], n_parallel=n_parallel, max_tokens=4)     # warm-up
    t0 = time.perf_counter()
    results = engine.generate_batch(prompts, n_parallel=n_parallel, order=ORDER, **gen)
    wall = time.perf_counter() - t0
    engine.close()
    n_gen = sum(r.stats.n_generated for r in results)
    drafted = sum(r.stats.n_drafted for r in results)
    accepted = sum(r.stats.n_accepted for r in results)
    steps = sum(r.stats.n_steps for r in results)
    # each request's share of the prompt decodes: the same work on both sides
    prefill_s = sum(r.stats.prefill_s for r in results)
    assert len(results) == len(prompts) and n_gen > 0
    return {"tok_s": n_gen / wall, "wall_s": wall, "n_generated": n_gen, "prefill_s": prefill_s,
            "accept_rate": accepted / drafted if drafted else 0.0,
            "drafted_per_step": drafted / steps if steps else 0.0,
            "tokens_per_step": (steps + accepted) / steps if steps else 0.0}, results


def _median_job(jobs: list[dict]) -> dict:
    """The round with the median throughput (its counters go with it)."""
    return sorted(jobs, key=lambda j: j["tok_s"])[len(jobs) // 2]


def _compare(model, prompts, parallel, **gen) -> dict:
    """Plain and speculative jobs alternating for ROUNDS rounds at each n_parallel."""
    rows = {}
    for n_parallel in parallel:
        plains, specs = [], []
        for _ in range(ROUNDS):                    # alternate sides; report medians
            plains.append(_job(model, prompts, None, n_parallel, **gen)[0])
            specs.append(_job(model, prompts, DRAFTER, n_parallel, **gen)[0])
        plain, specd = _median_job(plains), _median_job(specs)
        rows[n_parallel] = {"plain": plain, "spec": specd,
                            "speedup": statistics.median(s["tok_s"] / p["tok_s"]
                                                         for p, s in zip(plains, specs)),
                            "per_round_tok_s": {"plain": [p["tok_s"] for p in plains],
                                                "spec": [s["tok_s"] for s in specs]}}
    return rows


def _record(name: str, command: str, rows: dict, **extra) -> None:
    save(name, {
        "command": command, "n_prompts": N_PROMPTS, "drafter": DRAFTER, "rounds": ROUNDS,
        "order": ORDER,
        **extra, "rows": rows,
        "batched_spec_at_8_over_one_at_a_time_spec": rows[8]["spec"]["tok_s"] / rows[1]["spec"]["tok_s"],
    })


@pytest.mark.parametrize("workload", ["code", "chat"])
def test_batch_throughput(model, workload):
    prompts = (code_prompts if workload == "code" else chat_prompts)(N_PROMPTS)
    rows = _compare(model, prompts, PARALLEL, max_tokens=MAX_TOKENS)
    _record(f"batch_{workload}", f"python -m pytest bench/test_batch_throughput.py -s -k {workload}",
            rows, max_tokens=MAX_TOKENS)


def test_batch_throughput_complete_rewrites(model):
    rows = _compare(model, code_prompts(N_PROMPTS), (1, 8), max_tokens=320, stop=["```"])
    _record("batch_code_complete", "python -m pytest bench/test_batch_throughput.py -s -k complete",
            rows, max_tokens=320, stop="```")
