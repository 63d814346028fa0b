"""Model-based speculation sessions over llama.cpp's ``common_speculative`` (see spec.sessions).

A Session is a Drafter, so the engine drives it like any other drafter; the engine also calls
after_decode() after every target decode (prefill chunks, verify batches, checkpoint replays),
which feeds the target context's last batch to common_speculative_process. A session borrows its
two contexts (spec._runtime._handle).
"""
from contextlib import contextmanager

import numpy as np

from libc.stdint cimport int32_t
from spec._runtime._core cimport Context, Model, _as_tokens
from spec._c.llama cimport *
from spec._c.typedefs cimport pos_t, seq_t, token_t

from spec._c.common_spec cimport (
    COMMON_SPECULATIVE_TYPE_DRAFT_DFLASH, COMMON_SPECULATIVE_TYPE_DRAFT_EAGLE3,
    COMMON_SPECULATIVE_TYPE_DRAFT_MTP, COMMON_SPECULATIVE_TYPE_DRAFT_SIMPLE,
    common_params_speculative, common_speculative_accept, common_speculative_begin,
    common_speculative_draft, common_speculative_draft_params, common_speculative_free,
    common_speculative_get_draft_params, common_speculative_init, common_speculative_print_stats,
    common_speculative_process, common_speculative_type, LOG_LEVEL_TRACE)
from libc.stdint cimport uint16_t, uint32_t

from spec._runtime._batch import Batch
from spec._runtime._errors import (BadSeqIdError, ClosedError, InvalidConfigError, SessionInitError,
                          SessionProcessError)
from spec._runtime._log import captured_upstream, strip_levels, upstream_log
from spec.drafters.sessions._session_config import SessionConfig


cdef extern from "spec/_c/llama_ctx_flags.h" nogil:
    # Getters over llama_context's cparams (spec/_c/llama_ctx_flags.h; llama.h has none).
    bint spec_ctx_embeddings(const llama_context* ctx)
    bint spec_ctx_embeddings_nextn(const llama_context* ctx)
    bint spec_ctx_embeddings_nextn_masked(const llama_context* ctx)
    int spec_ctx_n_layer_inp(const llama_context* ctx)
    bint spec_ctx_layer_inp(const llama_context* ctx, int il)

    # llama-ext.h (the staging API common/speculative.cpp uses; the helper header includes it):
    # LLAMA_API void llama_set_embeddings_nextn(struct llama_context * ctx, bool value, bool masked);
    void llama_set_embeddings_nextn(llama_context* ctx, bint value, bint masked)
    # LLAMA_API void llama_set_embeddings_layer_inp(struct llama_context * ctx, uint32_t lid, bool value);
    void llama_set_embeddings_layer_inp(llama_context* ctx, uint32_t lid, bint value)
    # LLAMA_API const int32_t * llama_model_target_layer_ids  (const struct llama_model * model);
    const int32_t* llama_model_target_layer_ids(const llama_model* model)
    # LLAMA_API uint32_t        llama_model_target_layer_ids_n(const struct llama_model * model);
    uint32_t llama_model_target_layer_ids_n(const llama_model* model)


def _ctx_extraction(Context ctx):
    """What ``ctx`` extracts besides logits (a test helper): post-norm embeddings, nextn
    (pre-norm) rows and whether those are masked, and the layers whose input is extracted."""
    ctx.check_open()
    cdef const llama_context* c = ctx.ptr
    return {"embeddings": spec_ctx_embeddings(c), "nextn": spec_ctx_embeddings_nextn(c),
            "nextn_masked": spec_ctx_embeddings_nextn_masked(c),
            "layers": tuple(il for il in range(spec_ctx_n_layer_inp(c))
                            if spec_ctx_layer_inp(c, il))}


cdef str _model_arch(Model model):
    cdef char buf[64]
    cdef int32_t n = llama_model_meta_val_str(model.ptr, b"general.architecture", buf, sizeof(buf))
    return buf[:max(0, min(n, 63))].decode("utf-8", "replace") if n >= 0 else ""


cdef class Session(Drafter):
    """Base class of the model-based speculation sessions (see :mod:`spec.sessions`).

    ``Session(target_ctx, draft_ctx, n_seq, n_draft_max, *, n_min=0, p_min=0.0)``. Use a
    subclass: :class:`DraftModelSession`, :class:`MtpSession`, :class:`Eagle3Session`,
    :class:`DFlashSession`.

    Driven by hand: ``process`` after every target decode, ``draft``, verify, ``accept`` (see
    :mod:`spec.sessions`). On a recurrent or hybrid target (``target_ctx.recurrent``, no
    rollback depth ``n_rs_seq``) a rejected draft cannot be dropped from the target's memory:
    call ``target_ctx.checkpoint_save(seq)`` before each verify decode and, when the draft was
    partly rejected, ``target_ctx.checkpoint_restore(seq)`` (the state at n_past) then decode
    and ``process`` the replay ``[id_last, *accepted]`` at n_past, as the engine does.
    A session may be one stage of a :class:`spec.DrafterChain`.
    """
    KIND = None

    def __cinit__(self):
        self.spec = NULL
        self.mirror = NULL
        self.n_calls = self.n_drafted = self.n_accepted = self.n_process = 0
        self.t_draft_us = self.t_process_us = self.t_accept_us = 0

    def __init__(self, Context target_ctx, Context draft_ctx, n_seq, n_draft_max, *, n_min=0,
                 p_min=0.0):
        config = SessionConfig(n_seq, n_draft_max, n_min, p_min)
        self._init(target_ctx, draft_ctx, config)

    @classmethod
    def from_config(cls, Context target_ctx, Context draft_ctx, config):
        """A session from a :class:`spec.sessions.SessionConfig`."""
        if not isinstance(config, SessionConfig):
            raise TypeError(f"config must be a SessionConfig, got {type(config).__name__}")
        self = cls.__new__(cls)
        (<Session> self)._init(target_ctx, draft_ctx, config)
        return self

    def _init(self, Context target_ctx, Context draft_ctx, config):
        if self.spec != NULL:
            raise SessionInitError("session is already initialized")
        if self.KIND is None:
            raise TypeError("Session is abstract: use DraftModelSession, MtpSession, "
                            "Eagle3Session or DFlashSession")
        if target_ctx is None or draft_ctx is None:
            raise TypeError("target_ctx and draft_ctx must be Context objects, got None")
        if target_ctx is draft_ctx:
            raise SessionInitError("target_ctx and draft_ctx must be two different contexts")
        target_ctx.check_open()
        draft_ctx.check_open()
        if config.n_seq > target_ctx.n_seq_max:
            raise InvalidConfigError(f"n_seq={config.n_seq} exceeds the target context's "
                                     f"n_seq_max={target_ctx.n_seq_max}")
        if config.n_seq != draft_ctx.n_seq_max:
            raise SessionInitError(
                f"the draft context serves n_seq_max={draft_ctx.n_seq_max} sequences but the "
                f"session n_seq={config.n_seq}: create the draft context with "
                f"n_seq_max={config.n_seq}")
        self._check_pair(target_ctx, draft_ctx)
        cdef common_params_speculative params
        params.types.clear()
        params.types.push_back(<common_speculative_type> self.KIND)
        params.draft.n_max = config.n_draft_max
        params.draft.n_min = config.n_min
        params.draft.p_min = config.p_min
        params.draft.backend_sampling = False
        params.draft.ctx_tgt = target_ctx.ptr
        params.draft.ctx_dft = draft_ctx.ptr
        # What the type needs from the target context is what its constructor turns on there
        # (llama_set_embeddings*, common/speculative.cpp): start from nothing extracted, read
        # the flags after init, then give back what the context had as well.
        cdef llama_context* tctx = target_ctx.ptr
        cdef int il, n_lay = spec_ctx_n_layer_inp(tctx)
        cdef bint e0 = spec_ctx_embeddings(tctx), n0 = spec_ctx_embeddings_nextn(tctx)
        cdef bint m0 = spec_ctx_embeddings_nextn_masked(tctx), e1 = False, n1 = False, m1 = False
        with target_ctx.lock:
            layers0 = [il for il in range(n_lay) if spec_ctx_layer_inp(tctx, il)]
            llama_set_embeddings(tctx, False)
            llama_set_embeddings_nextn(tctx, False, m0)
            for il in layers0:
                llama_set_embeddings_layer_inp(tctx, <uint32_t> il, False)
            try:
                with upstream_log():
                    self.spec = common_speculative_init(params, config.n_seq)
                self.mirror = new common_batch(target_ctx.ptr)
            except Exception as e:
                raise SessionInitError(
                    f"{type(self).__name__}: llama.cpp refused the session: {e}") from e
            finally:
                e1 = spec_ctx_embeddings(tctx)
                n1 = spec_ctx_embeddings_nextn(tctx)
                m1 = spec_ctx_embeddings_nextn_masked(tctx)
                layers1 = [il for il in range(n_lay) if spec_ctx_layer_inp(tctx, il)]
                llama_set_embeddings(tctx, e0 or e1)
                if n1:      # all rows (unmasked) if either side wants them
                    llama_set_embeddings_nextn(tctx, True, m1 and (m0 or not n0))
                else:
                    llama_set_embeddings_nextn(tctx, n0, m0)
                for il in layers0:
                    if il not in layers1:
                        llama_set_embeddings_layer_inp(tctx, <uint32_t> il, True)
        self.req_embd = e1
        self.req_embd_nextn = n1
        self.req_layers = tuple(layers1)
        if self.spec == NULL:
            raise SessionInitError(f"{type(self).__name__}: llama.cpp created no speculative "
                                   f"implementation (see the 'spec.llama' log)")
        self.kind = self.KIND
        self._config = config
        self.cfg_n_seq = config.n_seq
        target_ctx.lend()               # checked and counted together: see spec._runtime._handle
        self.target_ctx = target_ctx
        draft_ctx.lend()
        self.draft_ctx = draft_ctx
        self.prompts.resize(config.n_seq)
        self.pos0.assign(config.n_seq, -1)
        self.drafted_any.assign(config.n_seq, 0)
        self.reserve_seqs(config.n_seq)

    def _check_pair(self, Context target_ctx, Context draft_ctx):
        pass

    def __dealloc__(self):
        self.free_session()

    cdef void free_session(self) noexcept:
        # Idempotent: frees llama.cpp's object, then gives back the contexts (spec._runtime._handle).
        if self.spec != NULL:
            common_speculative_free(self.spec)
            self.spec = NULL
        if self.mirror != NULL:
            del self.mirror
            self.mirror = NULL
        if not self.closed:
            self.closed = True
            if self.target_ctx is not None:
                self.target_ctx.give_back()
            if self.draft_ctx is not None:
                self.draft_ctx.give_back()

    def close(self):
        """Free the session now and give back its two contexts (which a close() of theirs was
        waiting for). Idempotent; drafting afterwards raises ClosedError. Waits for an engine
        step running in another thread (it holds the target context's lock)."""
        if self.target_ctx is None:
            self.free_session()
            return
        with self.target_ctx.lock:
            self.free_session()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def closed(self):
        """True once :meth:`close` was called."""
        return self.closed

    cdef int _live(self) except -1:
        if self.closed:
            raise ClosedError(f"{type(self).__name__} is closed")
        if self.spec == NULL:
            raise SessionInitError("session was not initialized")
        self.target_ctx.check_open()
        self.draft_ctx.check_open()
        return 0

    cdef int _seq(self, seq_id) except -1:
        if isinstance(seq_id, bool) or not isinstance(seq_id, (int, np.integer)):
            raise TypeError(f"seq_id must be an int, got {type(seq_id).__name__}")
        if not 0 <= seq_id < self.cfg_n_seq:
            raise BadSeqIdError(int(seq_id), self.cfg_n_seq)
        return 0

    # -- properties --------------------------------------------------------------------------

    @property
    def config(self):
        return self._config

    @property
    def n_draft_max(self):
        return self._config.n_draft_max

    @property
    def n_min(self):
        return self._config.n_min

    @property
    def p_min(self):
        return self._config.p_min

    def need_embd(self):
        """Whether the speculative type needs post-norm embeddings of the target context
        (``llama_set_embeddings``).

        Read from the target context: what llama.cpp's ``common_speculative_init`` turned on
        there for this session (the session sets it up; callers rarely need this). False for
        MTP, as in the reference; with the pinned llama.cpp no type asks for them.
        """
        return bool(self.req_embd)

    def need_embd_pre_norm(self):
        """Whether the speculative type needs the target's pre-norm hidden states (the rows
        before the final norm; llama.cpp calls them "nextn" embeddings,
        ``llama_set_embeddings_nextn``).

        Read from the target context like :meth:`need_embd`: true for MTP (the NextN head's
        input), for an EAGLE-3 draft that reads the target's last layer, false otherwise.
        """
        return bool(self.req_embd_nextn)

    def need_embd_layers(self):
        """The target layers whose input hidden states the type extracts
        (``llama_set_embeddings_layer_inp``): EAGLE-3 and DFlash read some; a tuple of ints."""
        return self.req_layers if self.req_layers is not None else ()

    # -- C level (the engine) ----------------------------------------------------------------

    cdef int _reserve(self, int n_seq) except -1:
        if n_seq > self.cfg_n_seq:
            raise BadSeqIdError(n_seq - 1, self.cfg_n_seq)
        return 0

    cdef int _begin(self, int seq, const token_t* prompt, Py_ssize_t n_prompt) except -1 nogil:
        self.prompts[seq].assign(prompt, prompt + n_prompt)
        self.pos0[seq] = -1
        common_speculative_begin(self.spec, seq, self.prompts[seq])
        return 0

    cdef Py_ssize_t _draft(self, int seq, const token_t* history, Py_ssize_t n_history,
                           token_t id_last, Py_ssize_t n_max, token_t* out) except -1 nogil:
        cdef llama_tokens* p = &self.prompts[seq]
        cdef Py_ssize_t i, n
        cdef int64_t t0 = llama_time_us()
        # The draft context holds what the target holds: positions < n_history. After a step
        # another stage of a chain won (spec.drafters._chain), the verify batch after_decode
        # mirrored left its rejected rows here (this session drafted nothing to accept). The
        # reference trims the draft context with the target's memory whoever drafted:
        # llama.cpp's server (tools/server/server-context.cpp) removes positions past the
        # target's from ctx_dft before each verify, and slot.mem.seq_rm (common_memory,
        # common/common.h) drops the rejected ones from both contexts; ik_llama.cpp's
        # common_speculative_trim_sequence trims both at once.
        llama_memory_seq_rm(llama_get_memory(self.draft_ctx.ptr), seq, <pos_t> n_history, -1)
        # The history grows by the accepted tokens between calls: append, don't copy it all.
        if <Py_ssize_t> p.size() > n_history:
            p.resize(n_history)
        for i in range(p.size(), n_history):
            p.push_back(history[i])
        self.result.clear()
        cdef common_speculative_draft_params* dp = &common_speculative_get_draft_params(self.spec, seq)
        dp.drafting = True
        dp.n_max = <int32_t> n_max
        dp.pos0 = <pos_t> n_history
        dp.id_last = id_last
        dp.prompt = p
        dp.result = &self.result
        common_speculative_draft(self.spec)
        if self.result.size() > 0:
            self.drafted_any[seq] = 1     # llama.cpp's impl_last[seq] is this type from now on
        n = min(<Py_ssize_t> self.result.size(), n_max)
        for i in range(n):
            out[i] = self.result[i]
        self.pos0[seq] = <pos_t> n_history
        self.n_calls += 1
        self.n_drafted += n
        self.t_draft_us += llama_time_us() - t0
        return n

    cdef int _accept(self, int seq, Py_ssize_t n_accepted) except -1 nogil:
        cdef int64_t t0 = llama_time_us()
        common_speculative_accept(self.spec, seq, <uint16_t> n_accepted)
        self.n_accepted += n_accepted
        if self.pos0[seq] >= 0:
            # the draft context keeps what the target keeps: prompt + accepted + id_last
            llama_memory_seq_rm(llama_get_memory(self.draft_ctx.ptr), seq,
                                self.pos0[seq] + 1 + <pos_t> n_accepted, -1)
        self.t_accept_us += llama_time_us() - t0
        return 0

    cdef int _follow(self, int seq, Py_ssize_t n_accepted) except -1 nogil:
        """A stage of a chain: the target accepted ``n_accepted`` tokens of another stage's
        draft (this session did not draft this step, or its draft lost)."""
        cdef int64_t t0 = llama_time_us()
        # The reference tells every type every step's count (common_speculative_accept: the
        # type that drafted as its own, the others with is_other = true). MTP and EAGLE-3 pick
        # by it the target hidden-state row their next draft starts from; draft-simple's and
        # DFlash's accept do nothing with it, so they are not told (llama.cpp's statistics of
        # the type would count the other stage's tokens as its own). llama.cpp aborts on an
        # accept of n > 0 for a sequence that has no non-empty draft of this type yet (it cannot
        # attribute it): until then the next draft starts from the verify batch's last row (a
        # weaker draft, never a different output).
        if ((self.kind == COMMON_SPECULATIVE_TYPE_DRAFT_MTP
                or self.kind == COMMON_SPECULATIVE_TYPE_DRAFT_EAGLE3) and self.drafted_any[seq]):
            common_speculative_accept(self.spec, seq, <uint16_t> min(n_accepted, 65535))
        self.pos0[seq] = -1
        self.t_accept_us += llama_time_us() - t0
        return 0

    cdef int after_decode(self) except -1 nogil:
        """Feed the target context's last decoded batch to the session."""
        cdef llama_batch* b = &self.target_ctx.batch
        cdef int i
        cdef seq_t seq
        cdef bint ok
        cdef int64_t t0 = llama_time_us()
        cdef llama_memory_t mem = llama_get_memory(self.draft_ctx.ptr)
        self.mirror.clear()
        for i in range(b.n_tokens):
            seq = b.seq_id[i][0]
            if seq >= self.cfg_n_seq:
                with gil:
                    raise BadSeqIdError(seq, self.cfg_n_seq)
            self.mirror.add(b.token[i], b.pos[i], seq, b.logits[i] != 0)
            if i == 0 or b.seq_id[i - 1][0] != seq:
                # the draft context must hold nothing at or after the batch's first position
                # (drafting and rejected verify rows left some there)
                llama_memory_seq_rm(mem, seq, b.pos[i], -1)
        ok = common_speculative_process(self.spec, self.mirror[0])
        self.n_process += 1
        self.t_process_us += llama_time_us() - t0
        if not ok:
            with gil:
                raise SessionProcessError(
                    f"{type(self).__name__}: the draft context failed to process a batch of "
                    f"{b.n_tokens} tokens (draft context full? see the 'spec.llama' log)")
        return 0

    # -- Python level ------------------------------------------------------------------------

    def begin(self, seq_id, prompt_tokens=()):
        """Start a generation of ``seq_id`` whose target context holds ``prompt_tokens``.

        Optional, as in the reference: the model types follow the target through
        :meth:`process`, and a sequence not begun starts at its first :meth:`draft`.
        """
        cdef const token_t[::1] toks
        cdef int seq
        with self.target_ctx.lock, self.draft_ctx.lock:
            self.check_free()
            self._live()
            self._seq(seq_id)
            toks = _as_tokens(prompt_tokens, "prompt_tokens")
            self.target_ctx.model.check_tokens(toks, "prompt_tokens")
            seq = seq_id
            self.begin_seq(seq, &toks[0] if toks.shape[0] else NULL, toks.shape[0])

    def process(self, batch=None):
        """Hand the session the batch just decoded on the target context; call it after EVERY
        target decode (prefill and verify), as the reference's ``process(&batch)``.

        ``batch`` is what was passed to ``target_ctx.decode``: a :class:`spec.Batch` or the
        token array. It must be that context's last decode (ValueError otherwise), and at most
        ``n_batch`` tokens: a longer decode is split, and only its last part's hidden states
        are still there to read. ``None`` (the default) takes the last decode as it is.
        SessionProcessError if llama.cpp fails to process it (draft context full?).
        """
        with self.target_ctx.lock, self.draft_ctx.lock:
            self.check_free()
            self._live()
            if self.target_ctx.batch.n_tokens == 0:
                raise SessionProcessError("the target context has decoded nothing yet")
            if batch is not None:
                self._check_batch(batch)
            with nogil:
                self.after_decode()

    cdef int _check_batch(self, object batch) except -1:
        """ValueError unless ``batch`` is the target context's last decoded batch."""
        cdef llama_batch* b = &self.target_ctx.batch
        cdef const token_t[::1] toks
        cdef Py_ssize_t i, n
        cdef int seq = -1
        cdef int pos = -1
        if isinstance(batch, Batch):
            toks = batch.tokens
            seq = batch.seq_id
            pos = batch.pos
        elif isinstance(batch, (str, bytes, dict)):
            raise TypeError(f"batch must be a spec.Batch or the decoded token array, got "
                            f"{type(batch).__name__}")
        else:
            toks = _as_tokens(batch, "batch")
        n = toks.shape[0]
        if n > b.n_tokens:
            raise ValueError(
                f"the batch has {n} tokens but the target context's last decode took "
                f"{b.n_tokens}: decodes longer than n_batch={self.target_ctx.batch_capacity} "
                f"are split and only the last part's hidden states remain; decode at most "
                f"n_batch tokens per call and process() after each")
        if n < b.n_tokens:
            raise ValueError(f"the batch has {n} tokens but the target context's last decode "
                             f"took {b.n_tokens}: pass the batch that was just decoded")
        for i in range(n):
            if toks[i] != b.token[i] or (seq >= 0 and b.seq_id[i][0] != seq):
                raise ValueError(
                    f"the batch is not the target context's last decode (token {i}: "
                    f"{toks[i]} for seq_id {seq if seq >= 0 else '?'}, decoded "
                    f"{b.token[i]} for seq_id {b.seq_id[i][0]}): pass the batch just decoded")
        if pos >= 0 and b.pos[0] != pos:
            raise ValueError(f"the batch starts at position {pos} but the target context's last "
                             f"decode started at {b.pos[0]}")
        return 0

    def draft(self, seq_id, int n_past, int id_last):
        """Draft up to n_draft_max tokens after ``id_last`` at position ``n_past`` (tokens in
        the target context). Returns an int32 array (possibly empty)."""
        cdef llama_tokens* p
        cdef token_t[::1] ov
        cdef Py_ssize_t n
        cdef int seq
        with self.target_ctx.lock, self.draft_ctx.lock:
            self.check_free()
            self._live()
            self._seq(seq_id)
            if not self.begun[seq_id]:
                # begin() is optional, as in the reference: the model types follow the target
                # through process(); the sequence starts with no prompt recorded.
                self.begun[seq_id] = 1
                self.last_draft[seq_id] = 0
                self.prompts[seq_id].clear()
                self.pos0[seq_id] = -1
            if n_past < 0 or n_past >= self.target_ctx.n_ctx:
                raise ValueError(f"n_past must be in [0, n_ctx={self.target_ctx.n_ctx}), got {n_past}")
            if id_last < 0 or id_last >= self.target_ctx.n_vocab:
                raise ValueError(f"id_last = {id_last} is not a token id of the target model")
            p = &self.prompts[seq_id]
            if <int> p.size() < n_past:
                p.resize(n_past, 0)  # positions the caller did not report; the model types ignore them
            out = np.empty(self._config.n_draft_max, dtype=np.int32)
            ov = out
            seq = seq_id
            with nogil:
                n = self.draft_seq(seq, p.data(), n_past, id_last, ov.shape[0], &ov[0])
            return out[:n].copy()

    def accept(self, seq_id, int n_accepted):
        """Report how many of ``seq_id``'s last draft the target accepted (0: none).

        Once per draft. SessionProcessError before any draft of ``seq_id`` (or when its last
        draft was already accepted); ValueError if ``n_accepted`` is negative or longer than
        that draft (llama.cpp would abort on an accept it cannot attribute to a draft).
        """
        cdef int seq
        with self.target_ctx.lock, self.draft_ctx.lock:
            self.check_free()
            self._live()
            self._seq(seq_id)
            if self.pos0[seq_id] < 0:
                raise SessionProcessError(
                    f"accept() for seq_id {seq_id} without a draft to accept (no draft() since "
                    f"begin, or the last draft was already accepted)")
            if n_accepted < 0 or n_accepted > self.last_draft[seq_id]:
                raise ValueError(
                    f"n_accepted must be in [0, {self.last_draft[seq_id]}] (the length of "
                    f"seq_id {seq_id}'s last draft), got {n_accepted}")
            seq = seq_id
            with nogil:
                self.accept_seq(seq, n_accepted)
            self.pos0[seq] = -1

    def _check_live(self):
        """ClosedError / SessionInitError unless the session and both its contexts are usable."""
        self._live()

    def _turn(self):
        """A context manager: both contexts' locks held and the session checked usable, as
        around the session's own methods (a chain holding it runs its Python-level calls so)."""
        return _session_turn(self)

    def stats(self):
        """Counters and timings of this session (draft calls, drafted and accepted tokens)."""
        return {"calls": self.n_calls, "drafted": self.n_drafted, "accepted": self.n_accepted,
                "process_calls": self.n_process,
                "accept_rate": (<double> self.n_accepted) / self.n_drafted if self.n_drafted else 0.0,
                "t_draft_s": self.t_draft_us * 1e-6, "t_process_s": self.t_process_us * 1e-6,
                "t_accept_s": self.t_accept_us * 1e-6}

    def print_stats(self):
        """Print spec's counters, then llama.cpp's own statistics, as the reference's
        ``print_stats`` (``common_speculative_print_stats``: calls to begin / draft / accept,
        drafts and tokens generated and accepted, acceptance rate per draft position).

        Both go to ``sys.stdout``: llama.cpp's common library prints its part at trace level
        through ``common_log``, which has no callback, so it is collected from the process's
        output (:func:`spec._runtime._log.captured_upstream`) and printed here.
        """
        s = self.stats()
        print(f"{type(self).__name__}: {s['calls']} drafts, {s['drafted']} drafted, "
              f"{s['accepted']} accepted ({100 * s['accept_rate']:.1f} %), "
              f"draft {s['t_draft_s'] * 1e3:.1f} ms, process {s['t_process_s'] * 1e3:.1f} ms",
              flush=True)
        if self.spec != NULL:
            with captured_upstream(LOG_LEVEL_TRACE) as text:
                common_speculative_print_stats(self.spec)
            upstream = strip_levels(text[0])
            if upstream:
                print(upstream, flush=True)

    def reset(self):
        """Forget every sequence (begin again before drafting)."""
        cdef int i
        for i in range(self.n_seq):
            self.begun[i] = 0
            self.last_draft[i] = 0
        for i in range(self.cfg_n_seq):
            self.pos0[i] = -1

    def __repr__(self):
        if self._config is None:
            return f"{type(self).__name__}(uninitialized)"
        return (f"{type(self).__name__}(n_seq={self._config.n_seq}, "
                f"n_draft_max={self._config.n_draft_max})")


@contextmanager
def _session_turn(Session s):
    with s.target_ctx.lock, s.draft_ctx.lock:
        s._live()
        yield


def _check_vocab(Context target_ctx, Context draft_ctx, str what):
    cdef Model mt = target_ctx.model, md = draft_ctx.model
    if mt.n_vocab != md.n_vocab or llama_vocab_get_type(mt.vocab) != llama_vocab_get_type(md.vocab):
        raise SessionInitError(
            f"incompatible vocabularies: target has {mt.n_vocab} tokens (type "
            f"{llama_vocab_get_type(mt.vocab)}), {what} has {md.n_vocab} (type "
            f"{llama_vocab_get_type(md.vocab)}); speculation needs the same tokenizer")


cdef class DraftModelSession(Session):
    """A separate (smaller) draft model with the target's vocabulary (llama.cpp draft-simple)."""
    KIND = COMMON_SPECULATIVE_TYPE_DRAFT_SIMPLE

    def _check_pair(self, Context target_ctx, Context draft_ctx):
        if draft_ctx.ctx_type != "default":
            raise SessionInitError(f"draft context of the wrong type: {draft_ctx.ctx_type!r} "
                                   f"(a draft model needs a default context)")
        _check_vocab(target_ctx, draft_ctx, "the draft model")


cdef class MtpSession(Session):
    """The target's own multi-token-prediction (NextN) head as the draft (llama.cpp draft-mtp).

    The target model must be loaded with ``load_mtp=True``; ``draft_ctx`` is a context over the
    same model with ``ctx_type="mtp"``.
    """
    KIND = COMMON_SPECULATIVE_TYPE_DRAFT_MTP

    def _check_pair(self, Context target_ctx, Context draft_ctx):
        if llama_model_n_layer_nextn(draft_ctx.model.ptr) <= 0:
            raise SessionInitError(f"model {draft_ctx.model.path!r} lacks MTP heads (no NextN "
                                   f"layers): MTP needs a model with nextn_predict_layers > 0")
        if not draft_ctx.model.load_mtp:
            raise SessionInitError("the MTP heads were not loaded: Model(path, load_mtp=True)")
        if draft_ctx.ctx_type != "mtp":
            raise SessionInitError(f"draft context of the wrong type: {draft_ctx.ctx_type!r}; "
                                   f"create it with Context(model, ctx_type='mtp')")
        if llama_model_n_embd(draft_ctx.model.ptr) != llama_model_n_embd(target_ctx.model.ptr):
            raise SessionInitError("the MTP head's width differs from the target's hidden size")
        _check_vocab(target_ctx, draft_ctx, "the MTP model")


cdef class Eagle3Session(Session):
    """An EAGLE-3 draft model reading three target layers' hidden states (llama.cpp eagle3)."""
    KIND = COMMON_SPECULATIVE_TYPE_DRAFT_EAGLE3

    def _check_pair(self, Context target_ctx, Context draft_ctx):
        arch = _model_arch(draft_ctx.model)
        if arch != "eagle3":
            raise SessionInitError(f"not an EAGLE-3 model: {draft_ctx.model.path!r} has "
                                   f"architecture {arch!r}")
        if draft_ctx.ctx_type != "default":
            raise SessionInitError(f"draft context of the wrong type: {draft_ctx.ctx_type!r}")
        # llama.cpp aborts when drafting starts if the draft reads a layer the target lacks
        # (GGML_ASSERT(lid <= n_layer)) or hidden states of another width
        from spec._runtime._gguf import read_gguf
        kv = read_gguf(draft_ctx.model.path).kv
        n_layer = llama_model_n_layer(target_ctx.model.ptr)
        n_embd = llama_model_n_embd(target_ctx.model.ptr)
        layers = getattr(kv.get("eagle3.target_layers"), "values", None) or []
        beyond = [int(lid) for lid in layers if not 0 <= int(lid) <= n_layer]
        if beyond:
            raise SessionInitError(f"EAGLE-3 draft {draft_ctx.model.path!r} reads target layers "
                                   f"{beyond}, but the target has {n_layer} layers")
        width = kv.get("eagle3.target_hidden_size")
        if width is not None and int(width) != n_embd:
            raise SessionInitError(f"EAGLE-3 draft {draft_ctx.model.path!r} reads hidden states "
                                   f"of width {int(width)}, but the target's are {n_embd} wide")


# Target architectures whose graphs set res->t_layer_inp[n_layer] (the output of the last
# layer): deepseek4.cpp, mimo2.cpp, nemotron-h.cpp (nemotron_h_moe inherits its graph). Any other
# target aborts building its next graph when a draft reads layer input n_layer
# (llama-graph.cpp:1384, GGML_ASSERT(t_layer_inp[il] != nullptr)).
_LAST_LAYER_INP_ARCHS = ("deepseek4", "mimo2", "nemotron_h", "nemotron_h_moe")
# Architectures spec runs whose graphs extract no layer inputs at all (gemma3.cpp sets no
# t_layer_inp): a DFlash draft would abort the target at the same assert.
_NO_LAYER_INP_ARCHS = ("gemma3",)


cdef class DFlashSession(Session):
    """A DFlash block-diffusion draft model (llama.cpp draft-dflash).

    The draft context must be created with ``ctx_other=target_ctx``: a converted DFlash draft
    has no token embeddings or output head of its own and uses the target's. Each draft decodes
    the block [id_last, mask, ...] in one non-causal pass, so a draft is at most
    ``dflash.block_size - 1`` tokens (llama.cpp clamps ``n_draft_max`` to that). After every
    target decode, :meth:`process` injects the hidden states of the target layers named by the
    draft's ``dflash.target_layers`` into the draft's KV cache.
    """
    KIND = COMMON_SPECULATIVE_TYPE_DRAFT_DFLASH

    def _check_pair(self, Context target_ctx, Context draft_ctx):
        arch = _model_arch(draft_ctx.model)
        if "dflash" not in arch and "dspark" not in arch:
            raise SessionInitError(f"not a DFlash model: {draft_ctx.model.path!r} has "
                                   f"architecture {arch!r}")
        if draft_ctx.ctx_type != "default":
            raise SessionInitError(f"draft context of the wrong type: {draft_ctx.ctx_type!r}")
        _check_vocab(target_ctx, draft_ctx, "the DFlash draft")
        # What llama.cpp would abort on (file:line there) or fail at on every draft:
        cdef const llama_model* md = draft_ctx.model.ptr
        cdef const llama_model* mt = target_ctx.model.ptr
        path = draft_ctx.model.path
        if llama_vocab_mask(llama_model_get_vocab(md)) < 0:
            # not an abort: every noise block would fail to decode and drafts stay empty
            raise SessionInitError(f"DFlash draft {path!r} has no mask token "
                                   f"(tokenizer.ggml.mask_token_id): it cannot build the "
                                   f"noise block it denoises")
        # the fused features are k rows of the target's width, which the draft's fc reads as k
        # rows of its own (n_embd_inp_enc = k * n_embd, src/models/dflash.cpp:41); a draft
        # borrowing the target's tensors was refused by Context(ctx_other=...) already
        if llama_model_n_embd(md) != llama_model_n_embd(mt):
            raise SessionInitError(f"DFlash draft {path!r} is {llama_model_n_embd(md)} wide "
                                   f"but the target's hidden states are "
                                   f"{llama_model_n_embd(mt)} wide")
        layers = [int(llama_model_target_layer_ids(md)[i])
                  for i in range(llama_model_target_layer_ids_n(md))]
        n_layer = llama_model_n_layer(mt)
        target_arch = _model_arch(target_ctx.model)
        if target_arch in _NO_LAYER_INP_ARCHS:
            raise SessionInitError(f"target architecture {target_arch!r} does not extract "
                                   f"layer inputs, which a DFlash draft reads")
        # llama-context.cpp:1240, GGML_ASSERT(lid <= model.hparams.n_layer()) in
        # common_speculative_init; lid == n_layer: see _LAST_LAYER_INP_ARCHS
        top = n_layer if target_arch in _LAST_LAYER_INP_ARCHS else n_layer - 1
        beyond = [lid for lid in layers if not 0 <= lid <= top]
        if beyond:
            raise SessionInitError(
                f"DFlash draft {path!r} reads the input of target layers {beyond} "
                f"(dflash.target_layers = {layers}), but the {target_arch} target has "
                f"{n_layer} layers: inputs 0..{top} can be read")
