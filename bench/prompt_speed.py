"""Prompt decoding speed of the spec build in the current directory (for comparing backends).

Decodes a prompt of ``--tokens`` tokens in one call (n_batch = the prompt) on the default model,
``--rounds`` times, and prints one JSON line: median seconds and tokens per second, and the
build's backends. Compare two builds side by side by running it alternately from each clone:

    for i in 1 2 3; do (cd A && python bench/prompt_speed.py); (cd B && python bench/prompt_speed.py); done
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # this clone's build of spec

import spec  # noqa: E402
from spec._runtime import _core  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    model = spec.Model(spec.models.resolve(args.model))
    ctx = spec.Context(model, n_ctx=args.tokens + 16, n_batch=args.tokens, n_threads=args.threads)
    prompt = (np.arange(args.tokens, dtype=np.int64) * 7919 % (model.n_vocab - 1000) + 500)
    prompt = prompt.astype(np.int32)
    times = []
    for _ in range(args.rounds + 1):
        ctx.kv_remove(-1)
        t0 = time.perf_counter()
        ctx.decode(prompt)
        times.append(time.perf_counter() - t0)
    median = statistics.median(times[1:])       # the first round warms up
    print(json.dumps({"backends": _core.backends(), "tokens": args.tokens,
                      "median_s": round(median, 4), "tok_per_s": round(args.tokens / median, 1),
                      "rounds_s": [round(t, 4) for t in times[1:]]}))


if __name__ == "__main__":
    main()
