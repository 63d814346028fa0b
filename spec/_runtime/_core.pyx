"""Handle classes over llama.cpp: Model, Context and the plain generation loop.

Lifetimes follow :mod:`spec._runtime._handle`'s one rule: a Context borrows its Model (and a draft context
the context it reads), numpy views of the logits borrow their Context; ``close()`` is idempotent,
makes the handle unusable at once and frees the C object as soon as nothing borrows it.
"""
import functools
import os
import threading

import numpy as np
cimport numpy as cnp
from libc.stdint cimport int32_t, int64_t, uint8_t
from libcpp.vector cimport vector
from libc.math cimport isfinite
from libc.stdlib cimport free, malloc

from spec._c.llama cimport *
from spec._runtime._signals cimport check_signals
from spec._c.typedefs cimport LLAMA_MAX_SEQ, pos_t, seq_t, token_t
from spec._runtime._argmax cimport argmax
from spec._runtime._errors import (ClosedError, ContextError, ContextOverflowError, EngineBusyError,
                          ModelLoadError, NonFiniteLogitsError, SpecError, decode_error)
from spec._runtime._batch import Batch
from spec._runtime._log import refresh_log_level
from spec._runtime._modelfile import borrowed_tensors, check_model_file

cnp.import_array()

# llama.cpp's logs go to the `spec.llama` logger (spec._runtime._log installs the bridge on import).
llama_backend_init()


def system_info():
    """llama.cpp's own summary of the CPU features and backends it was built with."""
    return (<bytes> llama_print_system_info()).decode()


_DEVICE_TYPES = {GGML_BACKEND_DEVICE_TYPE_CPU: "cpu", GGML_BACKEND_DEVICE_TYPE_GPU: "gpu",
                 GGML_BACKEND_DEVICE_TYPE_IGPU: "igpu", GGML_BACKEND_DEVICE_TYPE_ACCEL: "accel"}


def backends():
    """The ggml backends compiled into this build (e.g. ``["CPU"]``, ``["CUDA", "CPU"]``)."""
    return [(<bytes> ggml_backend_reg_name(ggml_backend_reg_get(i))).decode()
            for i in range(ggml_backend_reg_count())]


def devices():
    """The devices those backends found: name, description, type ("cpu", "gpu", "igpu",
    "accel", "meta") and memory in bytes (free, total)."""
    cdef ggml_backend_dev_t dev
    cdef size_t free_b = 0, total_b = 0
    out = []
    for i in range(ggml_backend_dev_count()):
        dev = ggml_backend_dev_get(i)
        ggml_backend_dev_memory(dev, &free_b, &total_b)
        out.append({"name": (<bytes> ggml_backend_dev_name(dev)).decode(),
                    "description": (<bytes> ggml_backend_dev_description(dev)).decode(),
                    "type": _DEVICE_TYPES.get(ggml_backend_dev_type(dev), "meta"),
                    "memory_free": free_b, "memory_total": total_b})
    return out


_SPLIT_MODES = {"none": LLAMA_SPLIT_MODE_NONE, "layer": LLAMA_SPLIT_MODE_LAYER,
                "row": LLAMA_SPLIT_MODE_ROW, "tensor": LLAMA_SPLIT_MODE_TENSOR}


def cpu_features():
    """The SIMD features ggml detects at run time."""
    return {"avx": bool(ggml_cpu_has_avx()), "avx2": bool(ggml_cpu_has_avx2()),
            "avx512": bool(ggml_cpu_has_avx512()), "fma": bool(ggml_cpu_has_fma()),
            "f16c": bool(ggml_cpu_has_f16c()), "sse3": bool(ggml_cpu_has_sse3()),
            "neon": bool(ggml_cpu_has_neon())}


# -- helpers ------------------------------------------------------------------------------------

cdef const token_t[::1] _as_tokens(object tokens, str name):
    arr = np.asarray(tokens)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D sequence of token ids, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name} must hold integer token ids, got dtype {arr.dtype}")
    if arr.dtype.itemsize > 4 or arr.dtype == np.uint32:
        # checked before the cast to int32, which would wrap 2**32 + 300 around to 300
        out_of_range = (arr < 0) | (arr > 0x7FFFFFFF)
        if out_of_range.any():
            i = int(np.argmax(out_of_range))
            raise ValueError(f"{name}[{i}] = {arr[i]} is not a token id (outside int32)")
    return np.ascontiguousarray(arr, dtype=np.int32)


def as_tokens(tokens, name="tokens"):
    """``tokens`` as a C-contiguous int32 numpy array (lists and other integer dtypes converted)."""
    return np.asarray(_as_tokens(tokens, name))


cdef int32_t _meta_get(bint key, const llama_model* model, int32_t i, char* buf, size_t size) noexcept:
    if key:
        return llama_model_meta_key_by_index(model, i, buf, size)
    return llama_model_meta_val_str_by_index(model, i, buf, size)


cdef str _meta_string(bint key, const llama_model* model, int32_t i):
    cdef char small[256]
    cdef int32_t n = _meta_get(key, model, i, small, sizeof(small))
    cdef char* buf
    if n < 0:
        return None
    if n < <int32_t> sizeof(small):
        return small[:n].decode("utf-8", "replace")
    buf = <char*> malloc(n + 1)
    if buf == NULL:
        raise MemoryError()
    try:
        _meta_get(key, model, i, buf, n + 1)
        return buf[:n].decode("utf-8", "replace")
    finally:
        free(buf)


# -- Model --------------------------------------------------------------------------------------

cdef class Model:
    """A GGUF model loaded by llama.cpp.

    Parameters
    ----------
    path : str, bytes or os.PathLike
        The GGUF file.
    vocab_only : bool
        Load only the vocabulary (tokenize/detokenize; no weights, no contexts).
    n_gpu_layers : int
        Layers to offload to the GPU backends this build has (see :func:`devices`; -1: all).
        With no GPU backend compiled in (the default CPU build) it has no effect.
    main_gpu : int
        The device that holds the whole model when ``split_mode="none"`` (-1: none, CPU only).
    split_mode : {"layer", "none", "row", "tensor"}
        How llama.cpp splits the model across several GPUs (default "layer").
    tensor_split : sequence of float, optional
        Proportions of the model per device (at most ``llama_max_devices()`` values).
    load_mtp : bool
        Also load multi-token-prediction (NextN) layers when the model has them.
    """

    def __cinit__(self):
        self.ptr = NULL
        self.vocab = NULL

    def __init__(self, path, *, bint vocab_only=False, int n_gpu_layers=0, int main_gpu=0,
                 split_mode="layer", tensor_split=None, bint load_mtp=False):
        path = check_model_file(path)
        if split_mode not in _SPLIT_MODES:
            raise ValueError(f"split_mode must be one of {sorted(_SPLIT_MODES)}, got {split_mode!r}")
        if main_gpu < -1:
            raise ValueError(f"main_gpu must be a device index or -1 (none), got {main_gpu}")
        cdef float[::1] split
        if tensor_split is not None:
            n_devices = llama_max_devices()
            values = np.asarray(tensor_split, dtype=np.float64).ravel()
            if values.size == 0 or values.size > n_devices:
                raise ValueError(f"tensor_split takes 1 to {n_devices} proportions (one per "
                                 f"device), got {values.size}")
            if not np.all(np.isfinite(values)) or np.any(values < 0) or values.sum() <= 0:
                raise ValueError(f"tensor_split must be non-negative finite proportions with a "
                                 f"positive sum, got {list(values)}")
            split = np.zeros(n_devices, dtype=np.float32)
            np.asarray(split)[:values.size] = values
        refresh_log_level()
        cdef llama_model_params params = llama_model_default_params()
        params.vocab_only = vocab_only
        params.n_gpu_layers = n_gpu_layers
        params.main_gpu = main_gpu
        params.split_mode = _SPLIT_MODES[split_mode]
        if tensor_split is not None:
            params.tensor_split = &split[0]      # read during the load below only
        params.load_mtp = load_mtp
        self.load_mtp = load_mtp
        cdef bytes bpath = os.fsencode(path)
        cdef const char* cpath = bpath
        with nogil:
            self.ptr = llama_model_load_from_file(cpath, params)
        if self.ptr == NULL:
            raise ModelLoadError(f"llama.cpp failed to load {path} (truncated, corrupt or an "
                                 f"unsupported architecture; see the 'spec.llama' log)")
        self.path = path
        self.vocab_only = vocab_only
        self.vocab = llama_model_get_vocab(self.ptr)
        self.n_vocab = llama_vocab_n_tokens(self.vocab)

    def __dealloc__(self):
        self.free()

    cdef void free(self) noexcept:
        if self.ptr != NULL:
            llama_model_free(self.ptr)
            self.ptr = NULL

    cdef str describe(self):
        return f"model {self.path!r}"

    def close(self):
        """Release the model; it is freed once the last context (or running tokenize) using it
        is done. Idempotent."""
        Handle.close(self)

    cdef int check_tokens(self, const token_t[::1] tokens, str name) except -1:
        cdef Py_ssize_t i
        cdef int n_vocab = self.n_vocab
        for i in range(tokens.shape[0]):
            if tokens[i] < 0 or tokens[i] >= n_vocab:
                raise ValueError(f"{name}[{i}] = {tokens[i]} is not a token id of this model "
                                 f"(vocabulary size {n_vocab})")
        return 0

    # -- properties --

    @property
    def architecture(self):
        """The ``general.architecture`` metadata value (e.g. "llama", "gemma3")."""
        return self.metadata.get("general.architecture", "")

    @property
    def n_ctx_train(self):
        self.check_open()
        return llama_model_n_ctx_train(self.ptr)

    @property
    def n_embd(self):
        self.check_open()
        return llama_model_n_embd(self.ptr)

    @property
    def n_layer(self):
        self.check_open()
        return llama_model_n_layer(self.ptr)

    @property
    def n_layer_nextn(self):
        """Multi-token-prediction (NextN) layers the model carries."""
        self.check_open()
        return llama_model_n_layer_nextn(self.ptr)

    @property
    def n_params(self):
        self.check_open()
        return llama_model_n_params(self.ptr)

    @property
    def size_bytes(self):
        self.check_open()
        return llama_model_size(self.ptr)

    @property
    def is_recurrent(self):
        self.check_open()
        return llama_model_is_recurrent(self.ptr) or llama_model_is_hybrid(self.ptr)

    @property
    def description(self):
        self.check_open()
        cdef char buf[256]
        n = llama_model_desc(self.ptr, buf, sizeof(buf))
        return buf[:max(0, min(n, 255))].decode("utf-8", "replace")

    @property
    def metadata(self):
        """All GGUF metadata as a ``{key: value-string}`` dict (arrays are summarized by llama.cpp)."""
        self.check_open()
        cdef int32_t i
        out = {}
        for i in range(llama_model_meta_count(self.ptr)):
            key = _meta_string(True, self.ptr, i)
            if key is not None:
                out[key] = _meta_string(False, self.ptr, i)
        return out

    @property
    def special_tokens(self):
        """Ids of the special tokens (-1 where the vocabulary has none)."""
        self.check_open()
        return {"bos": llama_vocab_bos(self.vocab), "eos": llama_vocab_eos(self.vocab),
                "eot": llama_vocab_eot(self.vocab), "nl": llama_vocab_nl(self.vocab),
                "pad": llama_vocab_pad(self.vocab)}

    @property
    def bos(self):
        self.check_open()
        return llama_vocab_bos(self.vocab)

    @property
    def eos(self):
        self.check_open()
        return llama_vocab_eos(self.vocab)

    @property
    def add_bos(self):
        """Whether tokenize(add_special=True) prepends BOS for this vocabulary."""
        self.check_open()
        return llama_vocab_get_add_bos(self.vocab)

    # -- vocabulary --

    def is_eog(self, int token):
        """True for end-of-generation tokens (EOS, EOT and the like)."""
        self.check_open()
        self._check_token(token)
        return llama_vocab_is_eog(self.vocab, token)

    def eog_mask(self):
        """Boolean array over the vocabulary: True for end-of-generation tokens."""
        self.check_open()
        cdef cnp.ndarray[cnp.uint8_t, ndim=1] mask = np.zeros(self.n_vocab, dtype=np.uint8)
        cdef int t
        for t in range(self.n_vocab):
            mask[t] = llama_vocab_is_eog(self.vocab, t)
        return mask.astype(bool)

    def _check_token(self, int token):
        if token < 0 or token >= self.n_vocab:
            raise ValueError(f"token {token} is not a token id of this model "
                             f"(vocabulary size {self.n_vocab})")

    def tokenize(self, text, bint add_special=True, bint parse_special=False):
        """Token ids of ``text`` (str or UTF-8 bytes) as an int32 numpy array."""
        self.check_open()
        cdef bytes data
        if isinstance(text, str):
            data = text.encode("utf-8")
        elif isinstance(text, (bytes, bytearray, memoryview)):
            data = bytes(text)
        else:
            raise TypeError(f"text must be str or bytes, got {type(text).__name__}")
        if len(data) > 0x7FFFFFF0:
            raise ValueError(f"text of {len(data)} bytes is too long to tokenize")
        cdef int32_t n_max = len(data) + 8
        cdef cnp.ndarray[token_t, ndim=1] out = np.empty(n_max, dtype=np.int32)
        cdef const char* cdata = data
        cdef int32_t n_data = len(data)
        cdef int32_t n
        self.lend()         # a close() from another thread meanwhile must not free the vocabulary
        try:
            with nogil:
                n = llama_tokenize(self.vocab, cdata, n_data, <token_t*> out.data, n_max,
                                   add_special, parse_special)
            if n < 0:
                if n == -0x7FFFFFFF - 1:
                    raise ValueError("tokenization overflowed int32")
                n_max = -n
                out = np.empty(n_max, dtype=np.int32)
                with nogil:
                    n = llama_tokenize(self.vocab, cdata, n_data, <token_t*> out.data, n_max,
                                       add_special, parse_special)
                if n < 0:
                    raise SpecError("llama_tokenize failed")
        finally:
            self.give_back()
        return out[:n].copy()

    def token_to_piece(self, int token, bint special=False):
        """The bytes of one token (may be a partial UTF-8 sequence)."""
        self.check_open()
        self._check_token(token)
        cdef char buf[128]
        cdef int32_t n = llama_token_to_piece(self.vocab, token, buf, sizeof(buf), 0, special)
        cdef char* big
        if n >= 0:
            return buf[:n]
        big = <char*> malloc(-n)
        if big == NULL:
            raise MemoryError()
        try:
            n = llama_token_to_piece(self.vocab, token, big, -n, 0, special)
            return big[:n]
        finally:
            free(big)

    def detokenize(self, tokens, bint remove_special=False, bint unparse_special=False):
        """The text of ``tokens`` (invalid UTF-8 replaced)."""
        self.check_open()
        cdef const token_t[::1] toks = _as_tokens(tokens, "tokens")
        self.check_tokens(toks, "tokens")
        cdef int32_t n_tok = toks.shape[0]
        if n_tok == 0:
            return ""
        cdef int32_t cap = n_tok * 8 + 16
        cdef bytearray buf = bytearray(cap)
        cdef int32_t n = llama_detokenize(self.vocab, &toks[0], n_tok, <char*> buf, cap,
                                          remove_special, unparse_special)
        if n < 0:
            cap = -n
            buf = bytearray(cap)
            n = llama_detokenize(self.vocab, &toks[0], n_tok, <char*> buf, cap,
                                 remove_special, unparse_special)
        return bytes(buf[:n]).decode("utf-8", "replace")

    def __repr__(self):
        state = "closed" if self.closed else f"n_vocab={self.n_vocab}"
        return f"Model({self.path!r}, {state})"


# -- Context ------------------------------------------------------------------------------------

def _check_borrowed(Model model, Model other):
    """ValueError unless the target ``other`` fits the tensors a draft ``model`` borrows from it
    through ctx_other: llama.cpp asserts at the first graph of a misfit (the context's own
    reserve), in ggml_mul_mat (ggml.c:3354) for another width, reading past the target's head
    (ggml-backend.cpp:283) for another vocabulary size."""
    borrowed = borrowed_tensors(model.path)
    if borrowed and model.n_embd != other.n_embd:
        raise ValueError(f"{model.path!r} borrows the {' and '.join(borrowed)} tensors of "
                         f"ctx_other's model, which is {other.n_embd} wide, but is "
                         f"{model.n_embd} wide itself")
    if "output" in borrowed and model.n_vocab != other.n_vocab:
        raise ValueError(f"{model.path!r} borrows the output head of ctx_other's model, "
                         f"which has {other.n_vocab} tokens, but has {model.n_vocab} itself")


cdef class _LogitsView:
    """Base object of the numpy views over a context's logits: keeps the context alive."""
    cdef Context ctx

    def __dealloc__(self):
        if self.ctx is not None:
            self.ctx.n_views -= 1
            self.ctx.give_back()


#: The most sequences one context decodes together (llama.cpp's LLAMA_MAX_SEQ).
MAX_SEQ = LLAMA_MAX_SEQ


# Record kinds of the decode log (Context.record): five ints each.
cdef enum:
    LOG_DECODE = 1      # n_rows, n_more; the rows follow, then n_more LOG_SEQ records
    LOG_ROW = 2         # token, pos, seq (its first), logits
    LOG_SEQ = 6         # row, seq: one more sequence of that row (tree verification)
    LOG_REMOVE = 3      # seq, p0, p1
    LOG_COPY = 4        # src, dst, p0, p1
    LOG_CLEAR = 5


def _one_thread_at_a_time(method):
    """Run a Context method under the context's lock: a llama.cpp context is not thread-safe,
    and decodes run without the GIL, so two threads would otherwise use it at once. While an
    engine generation holds the context (see Context._hold), other threads get EngineBusyError:
    a call between two of its steps would silently change its output."""
    @functools.wraps(method)
    def locked(Context self, *args, **kwargs):
        with self.lock:
            if self.holder is not None and self.holder != threading.get_ident():
                raise EngineBusyError("this context is in use by an engine generation in "
                                      "another thread")
            return method(self, *args, **kwargs)
    return locked


cdef class Context:
    """A llama.cpp inference context (KV memory + compute buffers) over a Model.

    Parameters
    ----------
    model : Model
    n_ctx : int
        Context window in tokens (default: min(4096, the model's training context)).
    n_batch : int
        Largest batch one decode call takes; longer inputs are split (default 512).
    n_threads : int
        CPU threads (default: all cores).
    n_seq_max : int
        Sequences that can share the context (batched generation).
    seed : int
        Seed for the samplers that draw from this context.
    ctx_other : Context
        For an EAGLE-3 or DFlash draft model: the target's context, kept alive by this one. A
        draft without its own token embeddings or output head uses the target's, so it must
        be as wide as the target (and, borrowing the head, have as many tokens): ValueError
        otherwise.

    Its methods hold the context's lock, so threads sharing a context take turns.
    """

    def __cinit__(self):
        self.ptr = NULL
        self.n_views = 0
        self.batch_capacity = 0
        self.n_outputs = 0
        self.lock = threading.RLock()
        self.holder = None

    def __init__(self, Model model not None, *, n_ctx=None, int n_batch=512, n_threads=None,
                 int n_seq_max=1, seed=0, ctx_type="default", n_rs_seq=0, Context ctx_other=None,
                 bint embeddings=False):
        model.check_open()
        if model.vocab_only:
            raise ValueError(f"model {model.path!r} was loaded with vocab_only=True: it has no "
                             f"weights to run a context on")
        if n_ctx is None:
            n_ctx = min(4096, max(llama_model_n_ctx_train(model.ptr), 64))
        if n_threads is None:
            n_threads = os.cpu_count() or 1
        for name, value in (("n_ctx", n_ctx), ("n_batch", n_batch), ("n_threads", n_threads),
                            ("n_seq_max", n_seq_max)):
            if int(value) <= 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        if ctx_type not in ("default", "mtp"):
            raise ValueError(f"ctx_type must be 'default' or 'mtp', got {ctx_type!r}")
        if ctx_type == "mtp":
            # llama.cpp aborts (GGML_ASSERT) building an MTP graph without loaded NextN tensors
            if llama_model_n_layer_nextn(model.ptr) <= 0:
                raise ValueError(f"ctx_type='mtp' needs a model with MTP (NextN) layers; "
                                 f"{model.path!r} has none")
            if not model.load_mtp:
                raise ValueError(f"ctx_type='mtp': load the model with Model(..., "
                                 f"load_mtp=True) (its MTP heads were not loaded)")
        if int(n_rs_seq) < 0:
            raise ValueError(f"n_rs_seq must be >= 0, got {n_rs_seq}")
        # llama.cpp clamps the batch to the context; past these bounds it asserts (aborting the
        # process) at the first decode instead of refusing the context
        n_ubatch = min(int(n_ctx), n_batch)
        if n_seq_max > n_ubatch:
            # it reserves a row of outputs per sequence, at most n_batch rows
            raise ValueError(f"n_seq_max={n_seq_max} exceeds min(n_ctx, n_batch) = {n_ubatch}")
        if int(n_rs_seq) > 0 and int(n_rs_seq) > n_ubatch - 2:
            # it keeps each sequence's last n_rs_seq + 1 tokens in one ubatch
            raise ValueError(f"n_rs_seq must be <= min(n_ctx, n_batch) - 2 = {n_ubatch - 2}, "
                             f"got {n_rs_seq}")
        refresh_log_level()
        cdef llama_context_params params = llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = n_batch
        params.n_ubatch = n_batch
        params.n_seq_max = n_seq_max
        params.n_rs_seq = n_rs_seq
        params.n_threads = n_threads
        params.n_threads_batch = n_threads
        params.ctx_type = LLAMA_CONTEXT_TYPE_MTP if ctx_type == "mtp" else LLAMA_CONTEXT_TYPE_DEFAULT
        params.kv_unified = True
        params.embeddings = embeddings
        if ctx_other is not None:
            ctx_other.check_open()
            _check_borrowed(model, ctx_other.model)
        model.lend()        # from here on a close() in another thread defers the free
        if ctx_other is not None:
            ctx_other.lend()
            params.ctx_other = ctx_other.ptr
        with nogil:
            self.ptr = llama_init_from_model(model.ptr, params)
        if self.ptr == NULL:
            model.give_back()
            if ctx_other is not None:
                ctx_other.give_back()
            raise ContextError(f"llama.cpp could not create a context (n_ctx={n_ctx}, "
                               f"n_batch={n_batch}); see the 'spec.llama' log")
        self.model = model
        self.n_ctx = llama_n_ctx(self.ptr)
        self.n_batch = llama_n_batch(self.ptr)
        self.n_seq_max = llama_n_seq_max(self.ptr)
        self.outputs_held = self.n_seq_max     # llama.cpp reserves max(n_seq_max, n_outputs)
        self.n_vocab = model.n_vocab
        # a row may belong to several sequences (a tree's shared prefix)
        self.batch = llama_batch_init(self.n_batch, 0, self.n_seq_max)
        self.batch_capacity = self.n_batch
        self.seed = seed
        self.ctx_type = ctx_type
        if ctx_other is not None:
            # the draft context reads the other's state: keep it alive until this one goes
            self.ctx_other = ctx_other
        self.n_rs_seq = llama_n_rs_seq(self.ptr)
        self.recurrent = llama_model_is_recurrent(model.ptr) or llama_model_is_hybrid(model.ptr)
        self.ckpts.resize(self.n_seq_max)
        self.ckpt_next.assign(self.n_seq_max, -1)

    def __dealloc__(self):
        self.free()

    cdef void free(self) noexcept:
        if self.ptr != NULL:
            llama_free(self.ptr)
            self.ptr = NULL
            if self.batch_capacity:
                llama_batch_free(self.batch)
                self.batch_capacity = 0
            if self.model is not None:
                self.model.give_back()
            if self.ctx_other is not None:
                self.ctx_other.give_back()

    cdef str describe(self):
        return "context"

    @_one_thread_at_a_time
    def close(self):
        """Release the context; it is freed once no logits view or session points into it.
        Idempotent."""
        Handle.close(self)

    def _hold(self, thread_id):
        """Reserve the context for the engine generation running in ``thread_id`` (None: free
        it again). Waits for a call in progress in another thread."""
        with self.lock:
            if thread_id is not None and self.holder not in (None, thread_id):
                raise EngineBusyError("this context is in use by an engine generation in "
                                      "another thread")
            self.holder = thread_id

    cdef int check_open(self) except -1:
        if self.closed or self.ptr == NULL:
            raise ClosedError("context is closed")
        return 0

    @property
    def n_threads(self):
        self.check_open()
        return llama_n_threads(self.ptr)

    # llama.cpp keeps a context's outputs in host memory whatever the backend: the CPU buffer
    # type, or the host (pinned) buffer type of the device holding the output layer
    # (src/llama-context.cpp:2194-2200 at this pin), filled from the device after each decode
    # (:1948). The verification kernels read them there.
    logits_on_host = True

    @property
    def logits_bytes_per_row(self):
        """Bytes of logits one output row holds (n_vocab float32): what a device backend copies
        to the host per verified row, e.g. 1 MiB for a 262k-token vocabulary."""
        return self.n_vocab * 4

    # -- C level ---------------------------------------------------------------------------------

    cdef void batch_clear(self) noexcept nogil:
        self.batch.n_tokens = 0

    cdef int batch_add(self, token_t token, pos_t pos, seq_t seq, bint output) except -1 nogil:
        cdef int i = self.batch.n_tokens
        if i >= self.batch_capacity:
            with gil:
                raise ValueError(f"batch holds at most n_batch={self.batch_capacity} tokens")
        self.batch.token[i] = token
        self.batch.pos[i] = pos
        self.batch.n_seq_id[i] = 1
        self.batch.seq_id[i][0] = seq
        self.batch.logits[i] = output
        self.batch.n_tokens = i + 1
        return 0

    cdef int batch_add_seq(self, int row, seq_t seq) except -1 nogil:
        """Add ``seq`` to the sequences of the batch's row ``row`` (not already among them)."""
        cdef int k = self.batch.n_seq_id[row]
        if k >= self.n_seq_max:
            with gil:
                raise ValueError(f"a row belongs to at most n_seq_max={self.n_seq_max} sequences")
        self.batch.seq_id[row][k] = seq
        self.batch.n_seq_id[row] = k + 1
        return 0

    cdef int batch_decode(self) except -1 nogil:
        cdef int32_t rc
        cdef int i, k, n_more, n_out = 0
        for i in range(self.batch.n_tokens):
            n_out += self.batch.logits[i] != 0
        if n_out > self.outputs_held and self.n_views > 0:
            # llama.cpp would reallocate its output buffer and leave the views dangling (as
            # numpy refuses to resize an array that others reference)
            with gil:
                raise BufferError(
                    f"this decode needs {n_out} rows of logits, more than llama.cpp's output "
                    f"buffer holds ({self.outputs_held}): it would move the buffer that a live "
                    f"logits() view points into; delete (or copy) the view first")
        if self.recording:
            n_more = 0
            for i in range(self.batch.n_tokens):
                n_more += self.batch.n_seq_id[i] - 1
            self.log_op(LOG_DECODE, self.batch.n_tokens, n_more, 0, 0)
            for i in range(self.batch.n_tokens):
                self.log_op(LOG_ROW, self.batch.token[i], self.batch.pos[i],
                            self.batch.seq_id[i][0], self.batch.logits[i] != 0)
            for i in range(self.batch.n_tokens):
                for k in range(1, self.batch.n_seq_id[i]):
                    self.log_op(LOG_SEQ, i, self.batch.seq_id[i][k], 0, 0)
        rc = llama_decode(self.ptr, self.batch)
        if rc != 0:
            self.n_outputs = 0
            with gil:
                raise decode_error(rc, self.batch.n_tokens)
        self.outputs_held = max(self.outputs_held, n_out)
        self.n_outputs = n_out
        return 0

    cdef int decode_tokens(self, const token_t* tokens, int n, pos_t pos0, seq_t seq,
                           bint all_logits) except -1 nogil:
        cdef int start = 0, end, i
        while start < n:
            end = min(n, start + self.batch_capacity)
            self.batch_clear()
            for i in range(start, end):
                self.batch_add(tokens[i], pos0 + i, seq, all_logits or i == n - 1)
            self.batch_decode()
            start = end
        return 0

    cdef const float* logits_row(self, int i) noexcept nogil:
        return llama_get_logits_ith(self.ptr, i)

    cdef bint seq_rm(self, seq_t seq, pos_t p0, pos_t p1) noexcept nogil:
        if self.recording:
            self.log_op(LOG_REMOVE, seq, p0, p1, 0)
        return llama_memory_seq_rm(llama_get_memory(self.ptr), seq, p0, p1)

    cdef void seq_cp(self, seq_t src, seq_t dst, pos_t p0, pos_t p1) noexcept nogil:
        if self.recording:
            self.log_op(LOG_COPY, src, dst, p0, p1)
        llama_memory_seq_cp(llama_get_memory(self.ptr), src, dst, p0, p1)

    cdef void log_op(self, int32_t op, int32_t a, int32_t b, int32_t c, int32_t d) noexcept nogil:
        # Records of five ints; a decode is a LOG_DECODE record followed by one LOG_ROW per row
        # and a LOG_SEQ per row's further sequence.
        if op != LOG_ROW and op != LOG_SEQ:
            self.n_logged += 1
        self.log.push_back(op)
        self.log.push_back(a)
        self.log.push_back(b)
        self.log.push_back(c)
        self.log.push_back(d)

    cdef pos_t seq_pos_max(self, seq_t seq) noexcept nogil:
        return llama_memory_seq_pos_max(llama_get_memory(self.ptr), seq)

    # -- Python level ----------------------------------------------------------------------------

    def _check_seq(self, int seq_id):
        if seq_id < 0 or seq_id >= self.n_seq_max:
            raise ValueError(f"seq_id must be in [0, {self.n_seq_max}), got {seq_id}")

    @_one_thread_at_a_time
    def decode(self, tokens, *, int pos=-1, int seq_id=0, bint all_logits=False):
        """Decode ``tokens`` for ``seq_id`` starting at position ``pos`` (default: after the
        sequence's last position). Afterwards :meth:`logits` holds one row per output position:
        every position if ``all_logits``, else the last one.

        ``tokens`` may be a :class:`spec.Batch`, which carries the other arguments (pass none
        of them then): ``ctx.decode(batch); session.process(batch)`` as in the reference.
        """
        if isinstance(tokens, Batch):
            if pos != -1 or seq_id != 0 or all_logits:
                raise TypeError("decode(batch) takes pos, seq_id and all_logits from the Batch; "
                                "pass them to Batch(...) instead")
            pos, seq_id, all_logits = tokens.pos, tokens.seq_id, tokens.all_logits
            tokens = tokens.tokens
        self.check_open()
        self._check_seq(seq_id)
        cdef const token_t[::1] toks = _as_tokens(tokens, "tokens")
        self.model.check_tokens(toks, "tokens")
        cdef int n = toks.shape[0]
        if n == 0:
            raise ValueError("tokens is empty")
        if pos < -1:
            raise ValueError(f"pos must be >= 0, or -1 for after the sequence's last position, "
                             f"got {pos}")
        if pos < 0:
            pos = self.seq_pos_max(seq_id) + 1
        if <int64_t> pos + n > self.n_ctx:      # int64: pos near 2**31 must not wrap
            raise ContextOverflowError(
                f"{n} tokens at position {pos} do not fit in the context (n_ctx={self.n_ctx})")
        if all_logits and n > self.batch_capacity:
            raise ValueError(f"all_logits needs len(tokens) <= n_batch={self.batch_capacity}, got {n}")
        with nogil:
            self.decode_tokens(&toks[0], n, pos, seq_id, all_logits)

    @_one_thread_at_a_time
    def logits(self):
        """Zero-copy float32 view ``(n_outputs, n_vocab)`` of the last decode's logits.

        The view keeps the context alive; its contents are overwritten by the next decode. A
        decode with more output rows than any before it (which makes llama.cpp reallocate the
        buffer) raises BufferError while a view is alive: copy what you keep.
        """
        self.check_open()
        cdef float* data = llama_get_logits(self.ptr)
        cdef cnp.npy_intp shape[2]
        shape[0] = self.n_outputs
        shape[1] = self.n_vocab
        if data == NULL or self.n_outputs == 0:
            return np.empty((0, self.n_vocab), dtype=np.float32)
        arr = cnp.PyArray_SimpleNewFromData(2, shape, cnp.NPY_FLOAT32, data)
        owner = _LogitsView()
        self.lend()
        owner.ctx = self
        self.n_views += 1
        cnp.set_array_base(arr, owner)
        return arr

    @_one_thread_at_a_time
    def kv_remove(self, int seq_id, int p0=0, int p1=-1):
        """Remove positions [p0, p1) of ``seq_id`` from the KV memory (p1 < 0: to the end).

        ``seq_id`` < 0 matches every sequence. Returns False if the memory cannot drop a partial
        range (recurrent models).
        """
        self.check_open()
        if not -1 <= seq_id < self.n_seq_max:
            raise ValueError(f"seq_id must be in [0, {self.n_seq_max}), or -1 for every "
                             f"sequence, got {seq_id}")
        return self.seq_rm(seq_id, p0, p1)

    @_one_thread_at_a_time
    def kv_copy(self, int src_seq, int dst_seq, int p0=0, int p1=-1):
        """Copy positions [p0, p1) of ``src_seq`` into ``dst_seq``."""
        self.check_open()
        self._check_seq(src_seq)
        self._check_seq(dst_seq)
        self.seq_cp(src_seq, dst_seq, p0, p1)

    @_one_thread_at_a_time
    def kv_clear(self):
        """Empty the KV memory of every sequence."""
        self.check_open()
        if self.recording:
            self.log_op(LOG_CLEAR, 0, 0, 0, 0)
        llama_memory_clear(llama_get_memory(self.ptr), True)

    @_one_thread_at_a_time
    def kv_pos_max(self, int seq_id=0):
        """The largest position stored for ``seq_id`` (-1 if empty)."""
        self.check_open()
        self._check_seq(seq_id)
        return self.seq_pos_max(seq_id)

    @_one_thread_at_a_time
    def record(self, bint on=True):
        """Start recording every decode's rows and every KV memory edit made through this
        context (``on``; what was recorded before is dropped), or stop. A debugging aid: the
        log grows by 20 bytes a decoded row. :meth:`recorded` returns it; replaying it on a
        fresh context with the same parameters reproduces each batch exactly
        (``spec.divergence.replay_argmax``)."""
        self.check_open()
        self.log.clear()
        self.n_logged = 0
        self.recording = on

    @property
    def n_recorded(self):
        """Operations recorded so far (decodes and KV edits)."""
        return self.n_logged

    @_one_thread_at_a_time
    def recorded(self):
        """The log since :meth:`record`, in order: ``("decode", rows)`` with ``rows`` an int32
        array of columns (token, pos, seq_id, logits), ``("remove", seq_id, p0, p1)``,
        ``("copy", src, dst, p0, p1)`` and ``("clear",)``. A decode whose rows belong to several
        sequences (tree verification) is ``("decode", rows, seqs)``: ``seqs[i]`` is row i's
        sequences, ``rows[i, 2]`` the first of them."""
        cdef Py_ssize_t i = 0, n = <Py_ssize_t> self.log.size()
        cdef int32_t kind, n_rows, n_more
        flat = np.empty(n, dtype=np.int32)
        cdef int32_t[::1] view = flat
        for i in range(n):
            view[i] = self.log[i]
        records = flat.reshape(-1, 5)
        ops = []
        i = 0
        while i < records.shape[0]:
            kind = records[i, 0]
            if kind == LOG_DECODE:
                n_rows = records[i, 1]
                n_more = records[i, 2]
                rows = records[i + 1:i + 1 + n_rows, 1:].copy()
                if n_more == 0:
                    ops.append(("decode", rows))
                else:
                    seqs = [[int(q)] for q in rows[:, 2]]
                    for row, q in records[i + 1 + n_rows:i + 1 + n_rows + n_more, 1:3]:
                        seqs[row].append(int(q))
                    ops.append(("decode", rows, tuple(map(tuple, seqs))))
                i += 1 + n_rows + n_more
                continue
            if kind == LOG_REMOVE:
                ops.append(("remove", *map(int, records[i, 1:4])))
            elif kind == LOG_COPY:
                ops.append(("copy", *map(int, records[i, 1:5])))
            else:
                ops.append(("clear",))
            i += 1
        return ops

    @_one_thread_at_a_time
    def decode_rows(self, rows, seqs=None):
        """Decode one batch of arbitrary rows: ``rows`` is an int array of shape (n, 4) with
        columns (token, pos, seq_id, logits), as :meth:`recorded` returns them; ``seqs``, if
        given, holds each row's sequences (``seqs[i][0] == rows[i, 2]``: a row shared by a
        tree's branches). Afterwards :meth:`logits` holds one row per row whose ``logits``
        column is nonzero, in order. llama.cpp refuses (DecodeError) positions that do not
        continue each sequence."""
        self.check_open()
        arr = np.asarray(rows)
        if arr.ndim != 2 or arr.shape[1] != 4 or not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"rows must be an integer array of shape (n, 4), got "
                             f"{arr.dtype} {arr.shape}")
        cdef Py_ssize_t n = arr.shape[0], i
        if n == 0:
            raise ValueError("rows is empty")
        if n > self.batch_capacity:
            raise ValueError(f"a batch holds at most n_batch={self.batch_capacity} rows, got {n}")
        self.model.check_tokens(_as_tokens(arr[:, 0], "rows[:, 0] (tokens)"), "rows[:, 0]")
        if arr[:, 1].min() < 0 or arr[:, 1].max() >= self.n_ctx:
            raise ValueError(f"positions must be in [0, n_ctx={self.n_ctx})")
        if arr[:, 2].min() < 0 or arr[:, 2].max() >= self.n_seq_max:
            raise ValueError(f"seq_id must be in [0, {self.n_seq_max})")
        more = [()] * n
        if seqs is not None:
            if len(seqs) != n:
                raise ValueError(f"seqs holds {len(seqs)} rows' sequences for {n} rows")
            for i in range(n):
                row_seqs = [int(q) for q in seqs[i]]
                if not row_seqs or row_seqs[0] != arr[i, 2] or len(set(row_seqs)) != len(row_seqs):
                    raise ValueError(f"seqs[{i}] must list distinct sequences starting with "
                                     f"rows[{i}, 2]={arr[i, 2]}, got {seqs[i]!r}")
                if min(row_seqs) < 0 or max(row_seqs) >= self.n_seq_max:
                    raise ValueError(f"seq_id must be in [0, {self.n_seq_max})")
                more[i] = row_seqs[1:]
        cdef int32_t[:, ::1] r = np.ascontiguousarray(arr, dtype=np.int32)
        self.batch_clear()
        for i in range(n):
            self.batch_add(r[i, 0], r[i, 1], r[i, 2], r[i, 3] != 0)
            for q in more[i]:
                self.batch_add_seq(i, q)
        with nogil:
            self.batch_decode()

    @_one_thread_at_a_time
    def kv_pos_min(self, int seq_id=0):
        self.check_open()
        self._check_seq(seq_id)
        return llama_memory_seq_pos_min(llama_get_memory(self.ptr), seq_id)

    @_one_thread_at_a_time
    def generate_greedy(self, prompt, int max_tokens, *, int seq_id=0, bint stop_at_eog=True):
        """Plain greedy generation: prefill ``prompt`` in chunks of n_batch, then one token per
        decode, all without the GIL. Returns ``(tokens, prefill_s, decode_s)``.

        The sequence's KV memory is cleared first. The end-of-generation token that stops the
        loop is not included in the output.
        """
        self.check_open()
        self._check_seq(seq_id)
        cdef const token_t[::1] toks = _as_tokens(prompt, "prompt")
        self.model.check_tokens(toks, "prompt")
        cdef int n_prompt = toks.shape[0]
        if n_prompt == 0:
            raise ValueError("prompt is empty")
        if max_tokens < 0:
            raise ValueError(f"max_tokens must be >= 0, got {max_tokens}")
        if n_prompt + max_tokens > self.n_ctx:
            raise ContextOverflowError(
                f"prompt ({n_prompt} tokens) + max_tokens ({max_tokens}) exceed the context "
                f"window n_ctx={self.n_ctx}")
        out = np.empty(max_tokens, dtype=np.int32)
        cdef token_t[::1] out_view = out
        cdef int n_out = 0
        cdef int64_t t0, t1, t2
        self.seq_rm(seq_id, -1, -1)
        with nogil:
            t0 = llama_time_us()
            self.decode_tokens(&toks[0], n_prompt, 0, seq_id, False)
            t1 = llama_time_us()
            n_out = self._greedy_loop(seq_id, n_prompt, max_tokens, stop_at_eog, &out_view[0] if max_tokens else NULL)
            t2 = llama_time_us()
        return out[:n_out].copy(), (t1 - t0) * 1e-6, (t2 - t1) * 1e-6

    cdef object nonfinite_error(self):
        return NonFiniteLogitsError(
            f"model {self.model.path!r} produced NaN or infinite logits (do its weights hold "
            f"NaN or Inf values?)")

    cdef int ckpt_save(self, seq_t seq) except -1 nogil:
        cdef vector[uint8_t]* buf = &self.ckpts[seq]
        cdef size_t n = llama_state_seq_get_size_ext(self.ptr, seq, LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY)
        buf.resize(n)
        if n and llama_state_seq_get_data_ext(self.ptr, buf.data(), n, seq,
                                              LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY) != n:
            with gil:
                raise SpecError(f"could not save the state of sequence {seq} (checkpoint)")
        return 0

    cdef int ckpt_load(self, seq_t seq) except -1 nogil:
        cdef vector[uint8_t]* buf = &self.ckpts[seq]
        if buf.size() and llama_state_seq_set_data_ext(self.ptr, buf.data(), buf.size(), seq,
                                                       LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY) == 0:
            with gil:
                raise SpecError(f"could not restore the state of sequence {seq} (checkpoint)")
        return 0

    @_one_thread_at_a_time
    def checkpoint_save(self, int seq_id=0):
        """Save ``seq_id``'s state before a verify decode whose draft may be partly rejected;
        returns the positions the sequence holds (n_past).

        The engine's path for recurrent and hybrid targets, whose memory cannot drop a rejected
        suffix, for a loop driven by hand (see :mod:`spec.sessions`). What is saved is the
        sequence's partial state (llama.cpp's ``LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY``: the
        recurrent state of a recurrent or hybrid model; a plain KV cache saves all its cells)
        and n_past. One checkpoint per sequence: a save replaces the last one.
        """
        self.check_open()
        self._check_seq(seq_id)
        with nogil:
            self.ckpt_save(seq_id)
        self.ckpt_next[seq_id] = self.seq_pos_max(seq_id) + 1
        return self.ckpt_next[seq_id]

    @_one_thread_at_a_time
    def checkpoint_restore(self, int seq_id=0):
        """Bring ``seq_id`` back to its last :meth:`checkpoint_save`: restore the saved state,
        drop every position from the saved n_past on (the verify batch's rows) and return that
        n_past. Decode the accepted tokens there again (the replay: the verify's ``id_last``
        and the accepted draft tokens) and the sequence holds what plain decoding would.

        The checkpoint stays: it can be restored again until the next save.
        ValueError if no checkpoint of ``seq_id`` was saved.
        """
        self.check_open()
        self._check_seq(seq_id)
        cdef pos_t n_past = self.ckpt_next[seq_id]
        if n_past < 0:
            raise ValueError(f"no checkpoint of sequence {seq_id}: call checkpoint_save({seq_id}) "
                             f"before the verify decode")
        with nogil:
            self.ckpt_load(seq_id)
        if not self.seq_rm(seq_id, n_past, -1):
            raise SpecError(f"sequence {seq_id}: cannot drop positions >= {n_past} after "
                            f"restoring its checkpoint")
        return n_past

    cdef int _greedy_loop(self, seq_t seq, pos_t pos, int max_tokens, bint stop_at_eog,
                          token_t* out) except -1 nogil:
        cdef int n_out = 0
        cdef token_t tok
        cdef const float* row
        cdef int64_t next_signal_check = 0
        while n_out < max_tokens:
            row = self.logits_row(-1)
            tok = argmax(row, self.n_vocab)   # vectorized
            if not isfinite(row[tok]):
                with gil:
                    raise self.nonfinite_error()
            if stop_at_eog and llama_vocab_is_eog(self.model.vocab, tok):
                break
            out[n_out] = tok
            n_out += 1
            if n_out == max_tokens:
                break
            check_signals(&next_signal_check)
            self.decode_tokens(&tok, 1, pos, seq, False)
            pos += 1
        return n_out

    def __repr__(self):
        if self.closed:
            return "Context(closed)"
        return f"Context(n_ctx={self.n_ctx}, n_batch={self.n_batch}, n_seq_max={self.n_seq_max})"


