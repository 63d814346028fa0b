"""Model-based speculation sessions over llama.cpp's ``common_speculative``.

A session drives a draft source that needs a model: a separate draft model (``DraftModelSession``),
the target's own multi-token-prediction head (``MtpSession``), an EAGLE-3 draft
(``Eagle3Session``) or a DFlash draft (``DFlashSession``). It holds both contexts (and so their
models) alive; a context closed under a live session is released only when the session goes.

Protocol per sequence, as llama.cpp's ``examples/speculative-simple`` drives it::

    target_ctx.decode(prompt); session.process()        # after EVERY target decode
    session.begin(seq_id, prompt)
    loop: draft = session.draft(seq_id, n_past, id_last)
          target_ctx.decode([id_last, *draft], all_logits=True); session.process()
          verify, then session.accept(seq_id, n_accepted)

``process()`` reads the target context's last decoded batch (one call of ``Context.decode`` with
at most ``n_batch`` tokens). :class:`spec.Engine` does all of this with ``drafter="draft"``,
``"mtp"``, ``"eagle3"`` or ``"dflash"``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from spec._errors import BadSeqIdError, InvalidConfigError, SessionInitError, SessionProcessError


@dataclass(frozen=True)
class SessionConfig:
    """Session sizes and draft limits, validated on construction.

    n_seq : sequences (ids 0 .. n_seq-1) the session serves; the draft context needs
        ``n_seq_max == n_seq``.
    n_draft_max : longest draft.
    n_min : drafts shorter than this are dropped (0 ≤ n_min ≤ n_draft_max).
    p_min : drafting stops when the draft's top-1 probability falls below it (in [0, 1]).
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


from spec._core import (DFlashSession, DraftModelSession, Eagle3Session,  # noqa: E402
                        MtpSession, Session)

__all__ = ["SessionConfig", "Session", "DraftModelSession", "MtpSession", "Eagle3Session",
           "DFlashSession", "SessionInitError", "SessionProcessError", "BadSeqIdError",
           "InvalidConfigError"]
