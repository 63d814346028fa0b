"""GPU check: greedy losslessness, speedups and verify cost by rows with every layer offloaded.

Run by ``bench/gpu.sh`` on a machine with a GPU build of spec (``CMAKE_ARGS="-DGGML_CUDA=on"``);
also runs on the CPU build with ``--allow-cpu`` (then nothing is offloaded). Prints one summary
table and exits non-zero when a speculative output differs from plain decoding at a token whose
plain top-two logits do not nearly tie, or when no GPU backend is present (without --allow-cpu).

    python bench/gpu_check.py [--model default] [--prompts 4] [--max-tokens 128]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import spec  # noqa: E402
from spec._runtime import _core  # noqa: E402
from spec.engine import DRAFTERS  # noqa: E402

# A divergence is tolerated only where plain greedy's top-two logits nearly tie: the default
# model's Q4_K weights quantize activations per batch, so its ties reach 0.15 logits (as in
# tests/test_engine.py::test_lossless_on_the_default_model).
TIE = 0.15
ROWS = (1, 2, 4, 8, 16, 32, 64)


def first_divergence(plain, other) -> int | None:
    """Index of the first token where ``other`` leaves ``plain`` with a clear margin, or None."""
    a, b = np.asarray(plain.tokens), np.asarray(other.tokens)
    n = min(len(a), len(b))
    diff = np.nonzero(a[:n] != b[:n])[0]
    if diff.size == 0:
        return None if len(a) == len(b) else n
    i = int(diff[0])
    print(f"  diverges at token {i}: plain top-two margin {plain.margins[i]:.4f}")
    return None if plain.margins[i] <= TIE else i


def verify_cost(model, rows_measured=ROWS) -> dict[int, float]:
    """Median seconds of one decode of k rows (all logits), k in ROWS, after a 256-token prompt."""
    ctx = spec.Context(model, n_ctx=1024)
    prompt = np.arange(100, 356, dtype=np.int32) % model.n_vocab
    ctx.decode(prompt)
    rows = np.arange(1000, 1000 + max(ROWS), dtype=np.int32) % model.n_vocab
    cost = {}
    for k in rows_measured:
        times = []
        for _ in range(7):
            ctx.kv_remove(0, len(prompt), -1)
            t0 = time.perf_counter()
            ctx.decode(rows[:k], pos=len(prompt), all_logits=True)
            times.append(time.perf_counter() - t0)
        cost[k] = statistics.median(times[2:])
    ctx.close()
    return cost


def _checked(name, plain_runs, results, elapsed, plain_s, failures) -> tuple:
    """A summary row for one configuration; a clear divergence from plain greedy is a failure."""
    drafted = sum(r.stats.n_drafted for r in results)
    accepted = sum(r.stats.n_accepted for r in results)
    bad = [(i, first_divergence(plain_runs[i], r)) for i, r in enumerate(results)]
    bad = [(i, j) for i, j in bad if j is not None]
    status = "ok" if not bad else f"DIVERGES (prompt {bad[0][0]}, token {bad[0][1]})"
    if bad:
        failures.append(f"{name}: {status}")
    return (name, elapsed, sum(len(r.tokens) for r in results), plain_s / elapsed,
            f"{accepted / drafted:.0%}" if drafted else "-", status)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--n-gpu-layers", type=int, default=-1)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--max-rows", type=int, default=max(ROWS),
                        help="largest verify batch whose cost is measured")
    parser.add_argument("--drafters", default="",
                        help="';'-separated drafter names (default: every drafter)")
    parser.add_argument("--allow-cpu", action="store_true",
                        help="run on a build without a GPU backend (nothing is offloaded)")
    args = parser.parse_args()

    gpu_backends = [b for b in _core.backends() if b not in ("CPU", "BLAS")]
    print(f"backends: {', '.join(_core.backends())}")
    for dev in _core.devices():
        print(f"device:   {dev['name']} ({dev['type']}) {dev['description']}, "
              f"{dev['memory_total'] / 2**30:.1f} GiB")
    if not gpu_backends and not args.allow_cpu:
        print("FAIL: no GPU backend in this build (install with CMAKE_ARGS=\"-DGGML_CUDA=on\")")
        return 1

    from _workloads import code_prompts
    prompts = code_prompts(args.prompts)
    model = spec.Model(spec.models.resolve(args.model), n_gpu_layers=args.n_gpu_layers)
    failures = []
    rows = []
    plain_runs = {}
    with spec.Engine(model, drafter=None, n_ctx=4096) as engine:
        engine.generate(prompts[0], max_tokens=8)                       # warm-up
        t0 = time.perf_counter()
        for i, p in enumerate(prompts):
            plain_runs[i] = engine.generate(p, max_tokens=args.max_tokens, trace=True)
        plain_s = time.perf_counter() - t0
    n_tokens = sum(len(r.tokens) for r in plain_runs.values())
    short = [i for i, r in plain_runs.items() if len(r.tokens) < args.max_tokens // 2]
    if short:   # an empty output would make every comparison below vacuous
        print(f"FAIL: plain decoding stopped early on prompts {short} "
              f"({[len(plain_runs[i].tokens) for i in short]} tokens)")
        return 1
    rows.append(("plain", plain_s, n_tokens, 1.0, "-", "ok"))
    for drafter in args.drafters.split(";") if args.drafters else DRAFTERS:
        with spec.Engine(model, drafter=drafter, n_ctx=4096) as engine:
            engine.generate(prompts[0], max_tokens=8)
            t0 = time.perf_counter()
            results = [engine.generate(p, max_tokens=args.max_tokens) for p in prompts]
            elapsed = time.perf_counter() - t0
        rows.append(_checked(drafter, plain_runs, results, elapsed, plain_s, failures))
    # A batch job (n_parallel sequences per decode) against the same plain outputs.
    with spec.Engine(model, drafter="suffix", n_ctx=4096) as engine:
        t0 = time.perf_counter()
        batch = engine.generate_batch(prompts, n_parallel=min(4, len(prompts)),
                                      max_tokens=args.max_tokens)
        elapsed = time.perf_counter() - t0
    rows.append(_checked("batch (suffix)", plain_runs, batch, elapsed, plain_s, failures))
    # A draft-model session, the draft model offloaded too (the target drafting for itself:
    # any model is a valid draft of itself, and its drafts are mostly accepted).
    draft = spec.Model(model.path, n_gpu_layers=args.n_gpu_layers)
    with spec.Engine(model, drafter="draft", n_draft=8, n_ctx=4096,
                     drafter_params={"draft_model": draft}) as engine:
        t0 = time.perf_counter()
        results = [engine.generate(p, max_tokens=args.max_tokens) for p in prompts]
        elapsed = time.perf_counter() - t0
    rows.append(_checked("draft model", plain_runs, results, elapsed, plain_s, failures))
    draft.close()
    rows_measured = tuple(k for k in ROWS if k <= args.max_rows)
    cost = verify_cost(model, rows_measured)
    model.close()

    print(f"\n{args.prompts} code-rewrite prompts (bench/_workloads.py code_prompts) x {args.max_tokens} tokens, greedy, "
          f"n_gpu_layers={args.n_gpu_layers}")
    print(f"{'drafter':<16}{'time s':>9}{'tokens':>8}{'speedup':>9}{'accept':>8}  lossless")
    for name, s, n, speedup, acc, status in rows:
        print(f"{name:<16}{s:>9.2f}{n:>8}{speedup:>8.2f}x{acc:>8}  {status}")
    print("\nverify cost by rows (one decode, all logits): " + ", ".join(
        f"{k}: {cost[k] * 1e3:.2f} ms ({cost[k] / cost[1]:.2f}x)" for k in rows_measured))
    if failures:
        print("\nFAIL: " + "; ".join(failures))
        return 1
    print("\nOK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
