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


def _drafter(text: str) -> str:
    """A drafter name, or comma-separated names for a chain (underscore spellings accepted)."""
    from spec.engine import _canonical, drafter_names
    names = [_canonical(n.strip()) for n in text.split(",")]
    known = drafter_names()
    unknown = [n for n in names if n not in known]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown drafter(s) {', '.join(map(repr, unknown))}; "
                                         f"known: {', '.join(known)}")
    return ",".join(names)


def add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="default",
                   help="'default' (Gemma-3-270M), 'smollm2', or a GGUF path")
    p.add_argument("--n-ctx", type=int, default=None,
                   help="context window in KV cells (default: min(4096, training); a batch job "
                        "then grows it to hold n_parallel requests)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("-ngl", "--n-gpu-layers", type=int, default=0,
                   help="layers to offload to a GPU backend, -1 = all (needs a GPU build; see "
                        "README 'Backends')")
    p.add_argument("-v", "--verbose", action="store_true", help="show llama.cpp's log")


def add_generation_options(p: argparse.ArgumentParser) -> None:
    from spec.engine import drafter_names
    p.add_argument("--drafter", default="none", type=_drafter,
                   help=f"drafting method (default: none = plain decoding): one of "
                        f"{', '.join(drafter_names())}, or a chain of them tried in order "
                        f"(at most one model-based stage, typically last), e.g. "
                        f"suffix,ngram-mod or ngram-mod,draft")
    p.add_argument("--n-draft", type=_n_draft, default="auto", help="draft length or 'auto'")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--min-p", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
