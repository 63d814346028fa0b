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

Recurrent and hybrid targets (``target_ctx.recurrent``; Mamba, RWKV, Qwen3.5's gated delta
net) cannot drop a rejected draft's rows from their memory (``kv_remove`` returns False), unless
the context was made with a rollback depth ``n_rs_seq`` at least the draft's length. The engine
then takes a checkpoint path; by hand, the same calls::

    loop: draft = session.draft(seq_id, n_past, id_last)
          target_ctx.checkpoint_save(seq_id)                  # before the verify decode
          batch = Batch([id_last, *draft], pos=n_past, all_logits=True)
          target_ctx.decode(batch); session.process(batch)
          verify (n accepted), session.accept(seq_id, n)
          if n < len(draft):                                  # partly rejected
              target_ctx.checkpoint_restore(seq_id)           # state at n_past, rows >= n_past gone
              replay = Batch([id_last, *draft[:n]], pos=n_past)
              target_ctx.decode(replay); session.process(replay)   # processed like every decode
          n_past += 1 + n; id_last = the target's token after the accepted ones

``checkpoint_save`` keeps the sequence's recurrent state (llama.cpp's partial state; an
attention-only context saves its cells) and n_past; ``checkpoint_restore`` brings both back.
The verify's logits stay valid for choosing the next token: the replay only rebuilds the state.

A session can also be a stage of a :class:`spec.DrafterChain` (at most one, typically the last:
``Engine(model, drafter="ngram-mod,draft", drafter_params={"draft_model": PATH})``): it drafts
in the steps the stages before it fall through, still ``process``-es every target decode (the
engine's loop feeds it) and hears every step's accepted count; its draft context drops the rows
of another stage's rejected draft before it drafts again.
"""
from __future__ import annotations

from spec._runtime._batch import Batch
from spec._runtime._errors import BadSeqIdError, InvalidConfigError, SessionInitError, SessionProcessError
from spec.drafters.sessions._session_config import SessionConfig
from spec.drafters.sessions._sessions import (DFlashSession, DraftModelSession, Eagle3Session, MtpSession,
                            Session)

__all__ = ["Batch", "SessionConfig", "Session", "DraftModelSession", "MtpSession", "Eagle3Session",
           "DFlashSession", "SessionInitError", "SessionProcessError", "BadSeqIdError",
           "InvalidConfigError"]
