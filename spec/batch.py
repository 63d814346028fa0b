"""Thin re-export, kept as the public path: ``spec.batch`` *is* :mod:`spec.jobs.batch` (resumable
batch generation over a JSONL file: :func:`run_batch`, :func:`format_summary`, ...). The module
object is the same one. The ``batch`` subcommand's arguments live in :mod:`spec.cli.batch`."""
import sys

from spec.jobs import batch as _impl

sys.modules[__name__] = _impl
