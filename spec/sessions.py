"""Model-based speculation sessions over llama.cpp's ``common_speculative``.

A session drives a draft source that needs a model: a separate draft model (``DraftModelSession``),
the target's own multi-token-prediction head (``MtpSession``), an EAGLE-3 draft
(``Eagle3Session``) or a DFlash draft (``DFlashSession``). It holds both contexts (and so their
models) alive; a context closed under a live session is released only when the session goes.

Protocol per sequence, as the reference (llama-cpp-4's ``MtpSession``) and llama.cpp's
``examples/speculative-simple`` drive it::

    batch = Batch(prompt); target_ctx.decode(batch); session.process(batch)
    session.begin(seq_id, prompt)                       # optional
    loop: draft = session.draft(seq_id, n_past, id_last)
          batch = Batch([id_last, *draft], pos=n_past, all_logits=True)
          target_ctx.decode(batch); session.process(batch)    # after EVERY target decode
          verify, then session.accept(seq_id, n_accepted)     # once per draft

``process(batch)`` checks that ``batch`` is the target context's last decode (a decode longer
than ``n_batch`` is split, and only its last part can be processed: decode at most ``n_batch``
tokens per call); ``process()`` takes that last decode as it is. ``begin`` only records the
prompt: without it a sequence starts at its first ``draft``. ``accept`` refuses more tokens than
the last draft had, and an accept without a draft (llama.cpp would abort).
``need_embd()`` / ``need_embd_pre_norm()`` / ``need_embd_layers()`` report what llama.cpp turned
on in the target context for the session's type (MTP: pre-norm hidden states only).
:class:`spec.Engine` does all of this with ``drafter="draft"``, ``"mtp"``, ``"eagle3"`` or
``"dflash"``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from dataclasses import replace

from spec._batch import Batch
from spec._errors import BadSeqIdError, InvalidConfigError, SessionInitError, SessionProcessError


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


from spec._core import (DFlashSession, DraftModelSession, Eagle3Session,  # noqa: E402
                        MtpSession, Session)

__all__ = ["Batch", "SessionConfig", "Session", "DraftModelSession", "MtpSession", "Eagle3Session",
           "DFlashSession", "SessionInitError", "SessionProcessError", "BadSeqIdError",
           "InvalidConfigError"]
