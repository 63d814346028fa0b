"""Command-line options shared by the subcommands of ``python -m spec`` (cli and batch)."""
from __future__ import annotations

import argparse


def _n_draft(text: str):
    if text == "auto":
        return "auto"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--n-draft must be a positive integer or 'auto', got {text!r}")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"--n-draft must be > 0, got {value}")
    return value


def add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="default",
                   help="'default' (Gemma-3-270M), 'smollm2', or a GGUF path")
    p.add_argument("--n-ctx", type=int, default=None,
                   help="context window in KV cells (default: min(4096, training); a batch job "
                        "then grows it to hold n_parallel requests)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("-v", "--verbose", action="store_true", help="show llama.cpp's log")


def add_generation_options(p: argparse.ArgumentParser) -> None:
    from spec.engine import drafter_names
    p.add_argument("--drafter", default="none", choices=drafter_names(),
                   help="drafting method (default: none = plain decoding)")
    p.add_argument("--n-draft", type=_n_draft, default="auto", help="draft length or 'auto'")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--min-p", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
