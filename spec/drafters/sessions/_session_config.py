"""The sizes and draft limits of a model-based session (re-exported by spec.sessions)."""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

from spec._runtime._errors import InvalidConfigError


@dataclass(frozen=True)
class SessionConfig:
    """Session sizes and draft limits, validated on construction.

    n_seq : sequences (ids 0 .. n_seq-1) the session serves; the draft context needs
        ``n_seq_max == n_seq``.
    n_draft_max : longest draft.
    n_min : drafts shorter than this are dropped (0 ≤ n_min ≤ n_draft_max).
    p_min : drafting stops when the draft's top-1 probability falls below it (in [0, 1]).

    Frozen; :meth:`with_n_min` / :meth:`with_p_min` return validated copies, as the
    reference's builders: ``SessionConfig(1, 3).with_p_min(0.1)``.
    """
    n_seq: int
    n_draft_max: int
    n_min: int = 0
    p_min: float = 0.0

    def __post_init__(self):
        for name in ("n_seq", "n_draft_max", "n_min"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise InvalidConfigError(f"{name} must be an int, got {type(v).__name__}")
        if self.n_seq <= 0:
            raise InvalidConfigError(f"n_seq must be > 0, got {self.n_seq}")
        if self.n_seq > 256:
            raise InvalidConfigError(f"n_seq must be <= 256 (LLAMA_MAX_SEQ), got {self.n_seq}")
        if self.n_draft_max <= 0:
            raise InvalidConfigError(f"n_draft_max must be > 0, got {self.n_draft_max}")
        if self.n_draft_max > 65535:
            raise InvalidConfigError(f"n_draft_max must be <= 65535, got {self.n_draft_max}")
        if self.n_min < 0 or self.n_min > self.n_draft_max:
            raise InvalidConfigError(
                f"n_min must be in [0, n_draft_max={self.n_draft_max}], got {self.n_min}")
        if isinstance(self.p_min, bool) or not isinstance(self.p_min, (int, float)):
            raise InvalidConfigError(f"p_min must be a float, got {type(self.p_min).__name__}")
        if not (0.0 <= self.p_min <= 1.0) or math.isnan(self.p_min):
            raise InvalidConfigError(f"p_min must be in [0, 1], got {self.p_min}")

    def with_n_min(self, n_min: int) -> SessionConfig:
        """A copy with ``n_min`` set (drafts shorter than it are dropped), validated like the
        constructor (InvalidConfigError); as the reference's ``with_n_min``. Chains::

            SessionConfig(1, 4).with_n_min(2).with_p_min(0.1)
        """
        return replace(self, n_min=n_min)

    def with_p_min(self, p_min: float) -> SessionConfig:
        """A copy with ``p_min`` set (drafting stops below this top-1 probability), validated
        like the constructor (InvalidConfigError); as the reference's ``with_p_min``."""
        return replace(self, p_min=p_min)
