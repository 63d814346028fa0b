"""``python -m spec batch``: the ``batch`` subcommand's arguments, over the batch library
(:mod:`spec.jobs.batch`; with ``--ray``, :mod:`spec.jobs.ray_batch`)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from spec.cli._options import add_generation_options, add_model_options
from spec.jobs.batch import MAX_PARALLEL, ORDERS, format_summary, run_batch
from spec.jobs.ray_batch import format_summary as format_ray_summary, run_ray_batch


# -- command line -----------------------------------------------------------------------------


def _n_parallel(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not 0 < value <= MAX_PARALLEL:
        raise argparse.ArgumentTypeError(f"expected an integer in [1, {MAX_PARALLEL}], "
                                         f"got {text!r}")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``batch`` subcommand's options."""
    add_model_options(p)
    p.add_argument("--input", required=True, type=Path,
                   help="JSONL file: {\"id\": ..., \"prompt\": ...} per line, with optional "
                        "max_tokens, temperature, top_k, top_p, min_p, seed, stop")
    p.add_argument("--output", required=True, type=Path,
                   help="JSONL results, appended as requests finish; an existing file is resumed")
    p.add_argument("--n-parallel", type=_n_parallel, default=8,
                   help=f"sequences decoded together in one batch (default 8, at most "
                        f"{MAX_PARALLEL})")
    add_generation_options(p)
    p.add_argument("--order", choices=[o.replace("_", "-") for o in ORDERS],
                   default="longest-first",
                   help="which requests start first: longest-first (most prompt + max_tokens "
                        "cells; the default, so long requests do not run alone at the end) or "
                        "input order")
    p.add_argument("--strict", action="store_true",
                   help="exit with code 2 before generating if any input line is invalid")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    ray = p.add_argument_group("Ray Data (pip install \"spec[ray]\")")
    ray.add_argument("--ray", action="store_true",
                     help="run on Ray Data: --input is a .jsonl or .parquet file or directory, "
                          "--output a directory of result files (rows whose id is already "
                          "there are skipped); --threads is per actor (default 1)")
    ray.add_argument("--ray-address", default=None,
                     help="cluster to join (default: RAY_ADDRESS, else a local Ray instance)")
    ray.add_argument("--concurrency", type=_positive, default=1,
                     help="actors, each with its own engine (default 1)")
    ray.add_argument("--output-format", choices=("jsonl", "parquet"), default=None,
                     help="result files' format (default: the input's)")
    ray.add_argument("--batch-size", type=_positive, default=None,
                     help="rows per call of an actor (default: the rows split evenly over the "
                          "actors, between 4 and 32 x --n-parallel)")


def cmd_batch(args) -> int:
    ray_only = [name for name, given in (("--ray-address", args.ray_address is not None),
                                         ("--concurrency", args.concurrency != 1),
                                         ("--output-format", args.output_format is not None),
                                         ("--batch-size", args.batch_size is not None))
                if given]
    if args.ray:
        if args.strict:
            print("error: --strict is not available with --ray (bad rows get an 'error' column)",
                  file=sys.stderr)
            return 2
        if args.n_gpu_layers:
            print("error: --n-gpu-layers is not available with --ray yet (actors reserve CPUs "
                  "only)", file=sys.stderr)
            return 2
        return cmd_ray_batch(args)
    if ray_only:
        print(f"error: {', '.join(ray_only)} need(s) --ray", file=sys.stderr)
        return 2
    try:
        code, summary = run_batch(
            args.input, args.output, model=args.model, drafter=args.drafter,
            n_parallel=args.n_parallel, n_draft=args.n_draft, max_tokens=args.max_tokens,
            temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
            seed=args.seed, stop=args.stop, n_ctx=args.n_ctx, threads=args.threads,
            strict=args.strict, progress=False if args.no_progress else None,
            order=args.order.replace("-", "_"), n_gpu_layers=args.n_gpu_layers)
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_summary(summary), file=sys.stderr)
    if args.json:
        print(json.dumps(summary))
    return code


def cmd_ray_batch(args) -> int:
    try:
        import ray.exceptions
    except ImportError:
        print('error: --ray needs Ray Data: pip install "spec[ray]"', file=sys.stderr)
        return 2
    try:
        summary = _run_from_args(args)
    except ray.exceptions.RayError as e:       # e.g. an actor could not start (model missing)
        print(f"error: the Ray job failed: {e}", file=sys.stderr)
        return 1
    print(format_ray_summary(summary), file=sys.stderr)
    if args.json:
        print(json.dumps(summary))
    return 0


def _run_from_args(args) -> dict:
    return run_ray_batch(
        args.input, args.output, ray_address=args.ray_address, concurrency=args.concurrency,
        threads=args.threads, output_format=args.output_format,
        progress=not args.no_progress, batch_size=args.batch_size, model=args.model,
        drafter=args.drafter, n_draft=args.n_draft, n_parallel=args.n_parallel,
        n_ctx=args.n_ctx, order=args.order.replace("-", "_"), max_tokens=args.max_tokens,
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
        seed=args.seed, stop=args.stop)
