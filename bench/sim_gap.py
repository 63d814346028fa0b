"""Where the timed engine parts from its replay: per prompt, the speedup measured, the engine's
own draft decisions priced by the verify-cost table, and the replay's planner.

    python bench/sim_gap.py [--n-gen 256] [--drafter suffix]

Default model, greedy, 2 threads, the 8 held-out code-rewrite and 8 chat prompts. Per prompt, one
engine decodes it plainly and one with the drafter (``n_draft="auto"``, ``trace=True``, which
records every verify batch's rows). Four figures, each a speedup over plain decoding:

- ``timed``: the measured one (decode seconds, plain / speculative);
- ``decisions_priced``: the engine's own verify batches priced by ``bench/results/verify_cost.json``
  (what its decisions would have cost at the table's prices);
- ``replay``: :func:`spec.simulate`'s planner on the plain output under the same table;
- ``oracle``: the hindsight schedule under the table.

``replay`` → ``decisions_priced`` is the planner deciding on its own noisy, cold measurements
(and on the speculative run's own output, which departs from plain at near-ties), and
``decisions_priced`` → ``timed`` is the prices: ``cost_scale`` is the engine's verify seconds over
the table's price of its batches, ``plain_scale`` the same for plain decoding, so
``cost_scale / plain_scale`` is how much dearer, relative to a one-row step, the engine's batches
were than the table says; ``overhead`` is the share of decode time outside the verify decodes
(drafting, verification kernels, bookkeeping). Results: ``bench/results/sim_gap.json``.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent), str(BENCH)]

COLUMNS = ("timed", "decisions_priced", "replay", "oracle", "cost_scale", "plain_scale",
           "overhead")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-gen", type=int, default=256)
    ap.add_argument("--drafter", default="suffix")
    args = ap.parse_args(argv)
    import numpy as np

    import spec
    from _workloads import chat_prompts, code_prompts
    from conftest import THREADS, save
    from draft_lengths import cost_table
    n_max = 64
    table = {rows: ms / 1e3 for rows, ms in cost_table().items() if rows <= n_max + 1}
    rows = {}
    with spec.Model(spec.models.resolve("default")) as model:
        plain = spec.Engine(model, drafter=None, n_ctx=4096, n_threads=THREADS)
        engine = spec.Engine(model, drafter=args.drafter, n_ctx=4096, n_threads=THREADS)
        for e in (plain, engine):
            e.generate("Hello", max_tokens=8)                       # warm-up
        for kind, prompts in (("code", code_prompts(8)), ("chat", chat_prompts(8))):
            for i, prompt in enumerate(prompts):
                base = plain.generate(prompt, max_tokens=args.n_gen)
                if base.stats.n_generated < 16:
                    continue
                res = engine.generate(prompt, max_tokens=args.n_gen, trace=True)
                trace = res.decode_trace
                # the request's decodes after its prompt: its verify batches
                verify_rows = [len(op[1]) for op in trace.ops[trace.first_op:]
                               if op[0] == "decode"][1:]
                priced = sum(table[min(r, n_max + 1)] for r in verify_rows)
                prompt_ids = model.tokenize(prompt)
                sim = spec.simulate(args.drafter, np.concatenate([prompt_ids, base.tokens]),
                                    n_max=n_max, prompt_len=len(prompt_ids), cost_table=table)
                n = base.stats.n_generated - 1
                rows[f"{kind}{i}"] = {
                    "timed": base.stats.decode_s / res.stats.decode_s,
                    "decisions_priced": n * table[1] / priced,
                    "replay": sim.policy_speedup, "oracle": sim.oracle_speedup,
                    "cost_scale": res.stats.verify_s / priced,
                    "plain_scale": base.stats.verify_s / (base.stats.n_steps * table[1]),
                    "overhead": 1 - res.stats.verify_s / res.stats.decode_s,
                    "same_output": bool(np.array_equal(base.tokens, res.tokens)),
                    "largest_batch": max(verify_rows, default=0)}
                print(f"{kind}{i} " + " ".join(f"{c} {rows[f'{kind}{i}'][c]:.3f}"
                                               for c in COLUMNS), file=sys.stderr)
    summary = {}
    for kind in ("code", "chat"):
        keys = [k for k in rows if k.startswith(kind)]
        summary[kind] = {c: statistics.median(rows[k][c] for k in keys) for c in COLUMNS}
        summary[kind]["relative_cost"] = statistics.median(
            rows[k]["cost_scale"] / rows[k]["plain_scale"] for k in keys)
    save("sim_gap", {"command": "python bench/sim_gap.py " + " ".join(
        argv if argv is not None else sys.argv[1:]), "n_gen": args.n_gen,
        "drafter": args.drafter, "summary": summary, "per_prompt": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
