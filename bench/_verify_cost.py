"""What a verify batch costs by its rows, measured: shared by bench/test_verify_cost.py (the
stored table) and bench/draft_lengths.py (a table measured in the same run as the clock)."""
from __future__ import annotations

import statistics
import time

CONTEXT = 300       # tokens already in the KV memory when the batch is decoded
REPEATS = 7


def measure(model_path: str, max_rows: int, threads: int, *, repeats: int = REPEATS,
            last_only: bool = False) -> dict:
    """Median milliseconds of decoding n rows of one sequence after a CONTEXT-token context,
    n = 1 .. max_rows, rows interleaved across repetitions: {"all": {n: ms}} with logits at every
    row (a verify batch) and, with ``last_only``, {"last_only": {n: ms}} with logits at the last
    row only (as a prompt is decoded)."""
    import spec
    modes = {"all": True, "last_only": False} if last_only else {"all": True}
    times = {mode: {n: [] for n in range(1, max_rows + 1)} for mode in modes}
    with spec.Model(model_path) as model, \
            spec.Context(model, n_ctx=1024, n_batch=512, n_threads=threads) as ctx:
        tokens = model.tokenize("def add(a, b):\n    return a + b\n" * 40)
        if tokens.size < CONTEXT + max_rows:
            raise ValueError(f"the filler text holds {tokens.size} tokens, fewer than "
                             f"{CONTEXT} + {max_rows}")
        ctx.decode(tokens[:CONTEXT], pos=0, seq_id=0)
        for _ in range(repeats):
            for n in range(1, max_rows + 1):
                for mode, all_logits in modes.items():
                    t0 = time.perf_counter()
                    ctx.decode(tokens[CONTEXT:CONTEXT + n], pos=CONTEXT, seq_id=0,
                               all_logits=all_logits)
                    times[mode][n].append(time.perf_counter() - t0)
                    ctx.kv_remove(0, CONTEXT, -1)
    return {mode: {n: 1e3 * statistics.median(v) for n, v in t.items()}
            for mode, t in times.items()}
