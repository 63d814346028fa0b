"""What a verify batch costs by its number of rows (logits at every row), on the default model.

    python -m pytest bench/test_verify_cost.py -s

The kernels are far from linear in the rows (row tiles), which is why the engine plans draft
lengths against the measured time of each batch size: decode n rows of one sequence after a
300-token context, n = 1..72 (the longest auto draft is 64 tokens), rows interleaved
across repetitions, median per n, relative to one row. The same rows with logits at the last
one only (as a prompt is decoded) separate the output layer's share: what each verified row
adds through the 262k-entry vocabulary projection.
"""
from __future__ import annotations

import statistics
import time

import spec
from conftest import THREADS, save

MAX_ROWS = 72
REPEATS = 7
CONTEXT = 300


def test_verify_cost_by_rows(default_model_path):
    times = {n: [] for n in range(1, MAX_ROWS + 1)}
    last_only = {n: [] for n in times}
    with spec.Model(default_model_path) as model, \
            spec.Context(model, n_ctx=1024, n_batch=512, n_threads=THREADS) as ctx:
        tokens = model.tokenize("def add(a, b):\n    return a + b\n" * 40)
        assert tokens.size >= CONTEXT + MAX_ROWS
        ctx.decode(tokens[:CONTEXT], pos=0, seq_id=0)
        for _ in range(REPEATS):
            for n in times:
                for all_logits, out in ((True, times), (False, last_only)):
                    t0 = time.perf_counter()
                    ctx.decode(tokens[CONTEXT:CONTEXT + n], pos=CONTEXT, seq_id=0,
                               all_logits=all_logits)
                    out[n].append(time.perf_counter() - t0)
                    ctx.kv_remove(0, CONTEXT, -1)
    median_ms = {n: 1e3 * statistics.median(v) for n, v in times.items()}
    last_only_ms = {n: 1e3 * statistics.median(v) for n, v in last_only.items()}
    assert all(v > 0 for v in median_ms.values())
    save("verify_cost", {
        "command": "python -m pytest bench/test_verify_cost.py -s",
        "context": CONTEXT, "repeats": REPEATS, "median_ms": median_ms,
        "relative_to_one_row": {n: v / median_ms[1] for n, v in median_ms.items()},
        "logits_at_last_row_only_ms": last_only_ms,
        # what the vocabulary projection of rows 2..n adds, per row
        "output_layer_ms_per_row": {n: (median_ms[n] - last_only_ms[n]) / (n - 1)
                                    for n in median_ms if n > 1},
    })
