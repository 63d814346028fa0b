"""Sampling and drafting parameters: small frozen objects, validated once where they enter spec.

:class:`Sampling` is built at the public boundary (``Engine.generate``, ``stream``,
``iter_batch``, the batch jobs' per-request parameters) and converted to the loop's C struct in
one place, ``spec._loop._engine.Sequence``. :class:`Drafting` is built by ``Engine(...)`` and
converted in one place, ``spec._loop._engine.Loop``, which also creates the sequences, so their draft
buffers hold its longest draft by construction. Nothing below the boundary checks these values
again.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import ClassVar

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


@dataclass(frozen=True)
class Drafting:
    """How long the drafts are: ``n_draft`` tokens every step, or ``"auto"``: each step's
    lengths planned from acceptance and the measured verify cost, up to ``n_draft_max``
    (default :attr:`N_DRAFT_MAX`, or ``n_batch - 1`` if smaller: one verify batch holds a draft
    and the token before it). ``draft_cost`` is the planner's prior cost of one drafted token,
    in plain decode steps, used until batch sizes have been measured. ``tree`` adds the drafter's
    alternative branches to a verify batch (a few rows, where the measured cost says they pay),
    for greedy sequences of a model-free drafter (see spec._loop._engine).

    Raises TypeError / ValueError naming the bad field.
    """
    n_draft: int | str = "auto"
    n_draft_max: int | None = None
    draft_cost: float = 0.43
    tree: bool = False

    N_DRAFT_MAX: ClassVar[int] = 64     # the default bound of "auto" drafts

    def __post_init__(self):
        fix = object.__setattr__
        if self.n_draft != "auto":
            if not _is_int(self.n_draft):
                raise ValueError(f"n_draft must be a positive int or 'auto', got {self.n_draft!r}")
            if self.n_draft <= 0:
                raise ValueError(f"n_draft must be > 0, got {self.n_draft}")
            fix(self, "n_draft", int(self.n_draft))
            if self.n_draft_max is not None:
                raise ValueError("n_draft_max bounds n_draft='auto'; with a fixed n_draft "
                                 "leave it out")
        elif self.n_draft_max is not None:
            if not _is_int(self.n_draft_max):
                raise ValueError(f"n_draft_max must be a positive int, got {self.n_draft_max!r}")
            if self.n_draft_max <= 0:
                raise ValueError(f"n_draft_max must be > 0, got {self.n_draft_max}")
            fix(self, "n_draft_max", int(self.n_draft_max))
        fix(self, "draft_cost", _number("draft_cost", self.draft_cost, ">= 0", lambda v: v >= 0))
        if not isinstance(self.tree, bool):
            raise TypeError(f"tree must be True or False, got {self.tree!r}")

    @property
    def auto(self) -> bool:
        return self.n_draft == "auto"

    def longest(self, n_batch: int) -> int:
        """The longest draft with verify batches of at most ``n_batch`` rows; ValueError if the
        asked length does not fit one."""
        if not self.auto:
            n, name = self.n_draft, "n_draft"
        elif self.n_draft_max is not None:
            n, name = self.n_draft_max, "n_draft_max"
        else:
            return min(self.N_DRAFT_MAX, n_batch - 1)
        if n >= n_batch:
            raise ValueError(f"{name}={n} must be < n_batch={n_batch}: one verify batch holds a "
                             f"draft and the token before it")
        return n
