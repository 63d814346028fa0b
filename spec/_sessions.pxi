# Speculative sessions over llama.cpp's common_speculative (included into _core.pyx: a session
# calls llama.cpp on contexts, and only this module's copy of llama.cpp may touch them).
#
# A Session is a Drafter, so the engine drives it like any other drafter; the engine also calls
# after_decode() after every target decode (prefill chunks, verify batches, checkpoint replays),
# which feeds the target context's last batch to common_speculative_process.

from spec._common_spec cimport (
    COMMON_SPECULATIVE_TYPE_DRAFT_DFLASH, COMMON_SPECULATIVE_TYPE_DRAFT_EAGLE3,
    COMMON_SPECULATIVE_TYPE_DRAFT_MTP, COMMON_SPECULATIVE_TYPE_DRAFT_SIMPLE,
    common_params_speculative, common_speculative_accept, common_speculative_begin,
    common_speculative_draft, common_speculative_draft_params, common_speculative_free,
    common_speculative_get_draft_params, common_speculative_init, common_speculative_print_stats,
    common_speculative_process, common_speculative_type)
from libc.stdint cimport uint16_t

from spec._errors import (BadSeqIdError, InvalidConfigError, SessionInitError,
                          SessionProcessError)


cdef str _model_arch(Model model):
    cdef char buf[64]
    cdef int32_t n = llama_model_meta_val_str(model.ptr, b"general.architecture", buf, sizeof(buf))
    return buf[:max(0, min(n, 63))].decode("utf-8", "replace") if n >= 0 else ""


cdef class Session(Drafter):
    """Base class of the model-based speculation sessions (see :mod:`spec.sessions`).

    ``Session(target_ctx, draft_ctx, n_seq, n_draft_max, *, n_min=0, p_min=0.0)``. Use a
    subclass: :class:`DraftModelSession`, :class:`MtpSession`, :class:`Eagle3Session`,
    :class:`DFlashSession`.
    """
    KIND = None

    def __cinit__(self):
        self.spec = NULL
        self.mirror = NULL
        self.n_calls = self.n_drafted = self.n_accepted = self.n_process = 0
        self.t_draft_us = self.t_process_us = self.t_accept_us = 0

    def __init__(self, Context target_ctx, Context draft_ctx, n_seq, n_draft_max, *, n_min=0,
                 p_min=0.0):
        from spec.sessions import SessionConfig
        config = SessionConfig(n_seq, n_draft_max, n_min, p_min)
        self._init(target_ctx, draft_ctx, config)

    @classmethod
    def from_config(cls, Context target_ctx, Context draft_ctx, config):
        """A session from a :class:`spec.sessions.SessionConfig`."""
        from spec.sessions import SessionConfig
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
        try:
            self.spec = common_speculative_init(params, config.n_seq)
            self.mirror = new common_batch(target_ctx.ptr)
        except Exception as e:
            raise SessionInitError(f"{type(self).__name__}: llama.cpp refused the session: {e}") from e
        if self.spec == NULL:
            raise SessionInitError(f"{type(self).__name__}: llama.cpp created no speculative "
                                   f"implementation (see the 'spec.llama' log)")
        self.kind = self.KIND
        self._config = config
        self.cfg_n_seq = config.n_seq
        target_ctx.lend()               # checked and counted together: see spec._handle
        self.target_ctx = target_ctx
        draft_ctx.lend()
        self.draft_ctx = draft_ctx
        self.prompts.resize(config.n_seq)
        self.pos0.assign(config.n_seq, -1)
        self.reserve_seqs(config.n_seq)

    def _check_pair(self, Context target_ctx, Context draft_ctx):
        pass

    def __dealloc__(self):
        self.free_session()

    cdef void free_session(self) noexcept:
        # Idempotent: frees llama.cpp's object, then gives back the contexts (spec._handle).
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
        """Whether the type reads hidden states of the target context (set up by the session)."""
        return self.kind != COMMON_SPECULATIVE_TYPE_DRAFT_SIMPLE

    def need_embd_pre_norm(self):
        """Whether the type reads pre-norm hidden states (MTP: the NextN input rows)."""
        return self.kind == COMMON_SPECULATIVE_TYPE_DRAFT_MTP

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
        """Start a generation of ``seq_id`` whose target context holds ``prompt_tokens``."""
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
        """Feed the target context's last decode (``Context.decode``, ≤ n_batch tokens) to the
        session; call it after EVERY target decode. ``batch`` must be None (the target
        context's own batch is used)."""
        with self.target_ctx.lock, self.draft_ctx.lock:
            self.check_free()
            self._live()
            if batch is not None:
                raise TypeError("process() reads the target context's last batch; pass no argument")
            if self.target_ctx.batch.n_tokens == 0:
                raise SessionProcessError("the target context has decoded nothing yet")
            with nogil:
                self.after_decode()

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
                raise SessionProcessError(f"draft() before begin() for seq_id {seq_id}")
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
                n = self._draft(seq, p.data(), n_past, id_last, ov.shape[0], &ov[0])
            return out[:n].copy()

    def accept(self, seq_id, int n_accepted):
        """Report how many of ``seq_id``'s last draft the target accepted."""
        cdef int seq
        with self.target_ctx.lock, self.draft_ctx.lock:
            self.check_free()
            self._live()
            self._seq(seq_id)
            if self.pos0[seq_id] < 0:
                raise SessionProcessError(f"accept() before draft() for seq_id {seq_id}")
            if n_accepted < 0 or n_accepted > self._config.n_draft_max:
                raise ValueError(f"n_accepted must be in [0, {self._config.n_draft_max}], got {n_accepted}")
            seq = seq_id
            with nogil:
                self._accept(seq, n_accepted)

    def stats(self):
        """Counters and timings of this session (draft calls, drafted and accepted tokens)."""
        return {"calls": self.n_calls, "drafted": self.n_drafted, "accepted": self.n_accepted,
                "process_calls": self.n_process,
                "accept_rate": (<double> self.n_accepted) / self.n_drafted if self.n_drafted else 0.0,
                "t_draft_s": self.t_draft_us * 1e-6, "t_process_s": self.t_process_us * 1e-6,
                "t_accept_s": self.t_accept_us * 1e-6}

    def print_stats(self):
        """Print the stats, then llama.cpp's own (to its log)."""
        s = self.stats()
        print(f"{type(self).__name__}: {s['calls']} drafts, {s['drafted']} drafted, "
              f"{s['accepted']} accepted ({100 * s['accept_rate']:.1f} %), "
              f"draft {s['t_draft_s'] * 1e3:.1f} ms, process {s['t_process_s'] * 1e3:.1f} ms")
        if self.spec != NULL:
            common_speculative_print_stats(self.spec)

    def reset(self):
        """Forget every sequence (begin again before drafting)."""
        cdef int i
        for i in range(self.n_seq):
            self.begun[i] = 0
        for i in range(self.cfg_n_seq):
            self.pos0[i] = -1

    def __repr__(self):
        if self._config is None:
            return f"{type(self).__name__}(uninitialized)"
        return (f"{type(self).__name__}(n_seq={self._config.n_seq}, "
                f"n_draft_max={self._config.n_draft_max})")


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
        from spec._gguf import read_gguf
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


cdef class DFlashSession(Session):
    """A DFlash block-diffusion draft model (llama.cpp dflash)."""
    KIND = COMMON_SPECULATIVE_TYPE_DRAFT_DFLASH

    def _check_pair(self, Context target_ctx, Context draft_ctx):
        arch = _model_arch(draft_ctx.model)
        if "dflash" not in arch and "dspark" not in arch:
            raise SessionInitError(f"not a DFlash model: {draft_ctx.model.path!r} has "
                                   f"architecture {arch!r}")
        if draft_ctx.ctx_type != "default":
            raise SessionInitError(f"draft context of the wrong type: {draft_ctx.ctx_type!r}")
