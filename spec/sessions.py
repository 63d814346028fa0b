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

from spec._batch import Batch
from spec._errors import BadSeqIdError, InvalidConfigError, SessionInitError, SessionProcessError
from spec._session_config import SessionConfig
from spec._sessions import (DFlashSession, DraftModelSession, Eagle3Session, MtpSession,
                            Session)

__all__ = ["Batch", "SessionConfig", "Session", "DraftModelSession", "MtpSession", "Eagle3Session",
           "DFlashSession", "SessionInitError", "SessionProcessError", "BadSeqIdError",
           "InvalidConfigError"]
