"""Thin re-export, kept as the public path: ``spec.ray`` *is* :mod:`spec.jobs.ray` (batch
generation on Ray Data; ``pip install "spec[ray]"``). The module object is the same one, so
``spec.ray.X = ...`` patches what :func:`spec.jobs.ray.generate` uses."""
import sys

from spec.jobs import ray as _impl

sys.modules[__name__] = _impl
