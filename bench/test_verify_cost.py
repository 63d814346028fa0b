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

from _verify_cost import CONTEXT, REPEATS, measure
from conftest import THREADS, save

MAX_ROWS = 72


def test_verify_cost_by_rows(default_model_path):
    ms = measure(default_model_path, MAX_ROWS, THREADS, last_only=True)
    median_ms, last_only_ms = ms["all"], ms["last_only"]
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
