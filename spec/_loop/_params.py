"""Sampling parameters: one frozen object, validated once where a request enters spec.

:class:`Sampling` is built at the public boundary (``Engine.generate``, ``stream``,
``iter_batch``, the batch jobs' per-request parameters) and converted to the loop's C struct in
one place, ``spec._loop._engine.Sequence``. Nothing below the boundary checks these values again.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

from spec._runtime._errors import ParamTypeError, ParamValueError

SEED_MIN, SEED_MAX = -(1 << 63), (1 << 64) - 1
_INT32_MAX = (1 << 31) - 1

#: The request parameters :class:`Sampling` holds.
SAMPLING_KEYS = ("temperature", "top_k", "top_p", "min_p", "seed")


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _number(name: str, v, rule: str, ok) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise ParamTypeError(name, f"must be a number {rule}, got {v!r}")
    v = float(v)
    if not (math.isfinite(v) and ok(v)):
        raise ParamValueError(name, f"must be a number {rule}, got {v!r}")
    return v


@dataclass(frozen=True)
class Sampling:
    """How a request picks its tokens: ``temperature`` 0 is greedy; otherwise the target
    distribution after top-k → top-p → min-p → temperature is sampled (losslessly, through
    rejection sampling of the drafts). ``seed`` None draws a fresh seed per generation.

    Raises :class:`~spec._runtime._errors.ParamTypeError` / ``ParamValueError`` (a TypeError /
    ValueError carrying the field's ``name`` and the ``reason``) for the first bad field; fields
    are normalised to Python ``float`` / ``int`` (numpy scalars are accepted).
    """
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    seed: int | None = None

    def __post_init__(self):
        fix = object.__setattr__        # frozen: normalise through the base class
        fix(self, "temperature", _number("temperature", self.temperature, ">= 0",
                                         lambda v: v >= 0))
        fix(self, "top_p", _number("top_p", self.top_p, "in (0, 1]", lambda v: 0 < v <= 1))
        fix(self, "min_p", _number("min_p", self.min_p, "in [0, 1]", lambda v: 0 <= v <= 1))
        if not _is_int(self.top_k):
            raise ParamTypeError("top_k", f"must be an integer >= 0, got {self.top_k!r}")
        if not 0 <= self.top_k <= _INT32_MAX:
            raise ParamValueError("top_k", f"must be an integer >= 0, got {self.top_k!r}")
        fix(self, "top_k", int(self.top_k))
        if self.seed is not None:
            if not _is_int(self.seed):
                raise ParamTypeError("seed", f"must be a 64-bit integer or None, got {self.seed!r}")
            if not SEED_MIN <= self.seed <= SEED_MAX:
                raise ParamValueError("seed", f"must be a 64-bit integer or None, got {self.seed!r}")
            fix(self, "seed", int(self.seed))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0
