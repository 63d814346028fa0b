"""llama.cpp's own model-free drafters behind spec's :class:`~spec.drafters._base.Drafter` interface.

:class:`LlamaDrafter` wraps ``common_speculative`` (llama.cpp ``common/speculative.h``) for the
n-gram types ``ngram-simple``, ``ngram-map-k``, ``ngram-map-k4v``, ``ngram-mod`` and
``ngram-cache``. It is the reference the Cython drafters in :mod:`spec.ngram` are tested and
benchmarked against, so it forwards every call to upstream unchanged, quirks included, and only
adds the checks that keep upstream's assertions (which abort the process) from firing.

Sequences: one ``common_speculative`` object serves ``capacity`` sequence ids. It is created for
``n_seq`` ids (constructor argument, default 1) and re-created larger when a higher id is reserved,
but only while no sequence has begun: upstream keeps learned state across generations (and
ngram-mod shares one table between all sequences), which a re-creation would silently drop. After
the first ``begin``, reserving beyond ``capacity`` raises ValueError; pass ``n_seq`` up front.

Logging: what upstream logs while a drafter is set up (e.g. a warning about its parameters)
reaches the ``spec.llama`` logger through :func:`spec._runtime._log.upstream_log`; during drafting it is
silent. :func:`set_log_verbosity` prints it to the console instead, for debugging.
"""
cimport cython
from libc.stdint cimport INT32_MAX, UINT32_MAX, int32_t, uint16_t, uint32_t
from libc.string cimport memcpy
from libcpp.vector cimport vector

import operator
import os

import numpy as np

from spec._c.common_spec cimport (
    COMMON_SPECULATIVE_TYPE_NGRAM_CACHE, COMMON_SPECULATIVE_TYPE_NGRAM_MAP_K,
    COMMON_SPECULATIVE_TYPE_NGRAM_MAP_K4V, COMMON_SPECULATIVE_TYPE_NGRAM_MOD,
    COMMON_SPECULATIVE_TYPE_NGRAM_SIMPLE, common_params_speculative,
    common_params_speculative_ngram_map,
    common_speculative, common_speculative_accept, common_speculative_begin,
    common_speculative_draft, common_speculative_draft_params, common_speculative_free,
    common_speculative_get_draft_params, common_speculative_init, common_speculative_type,
    common_speculative_type_from_name, llama_tokens,
)
from spec._c.typedefs cimport LLAMA_MAX_SEQ, token_t
from spec.drafters._base cimport Drafter

from spec._runtime._log import get_log_verbosity, set_log_verbosity, upstream_log

# The model-free types, in upstream's chain priority order.
SUPPORTED_TYPES = ("ngram-simple", "ngram-map-k", "ngram-map-k4v", "ngram-mod", "ngram-cache")

# ngram-cache's draft length is fixed at 8 upstream (create_state_ngram_cache, "TODO get from
# config?"). Its drafts are greedy token by token, so a shorter n_draft is exactly a truncation.
cdef enum:
    NGRAM_CACHE_N_DRAFT = 8
    NGRAM_MAX = 4           # LLAMA_NGRAM_MAX (common/ngram-cache.h)

# size_m is stored in an int16 per value (common_ngram_map_value::n_accepted); n_accepted is a
# uint16 in common_speculative_accept: keep every draft length within both.
cdef enum:
    MAX_SIZE_M = 32767
    MAX_U16 = 65535

def supported_types():
    """The llama.cpp speculative type names :class:`LlamaDrafter` accepts."""
    return SUPPORTED_TYPES


cdef dict _ngram_map_defaults(const common_params_speculative_ngram_map& m):
    return {"size_n": m.size_n, "size_m": m.size_m, "min_hits": m.min_hits}


cdef dict _defaults():
    """Upstream's default parameters per type, read from a default-constructed params struct."""
    cdef common_params_speculative p
    return {
        "ngram-simple": _ngram_map_defaults(p.ngram_simple),
        "ngram-map-k": _ngram_map_defaults(p.ngram_map_k),
        "ngram-map-k4v": _ngram_map_defaults(p.ngram_map_k4v),
        "ngram-mod": {"n_match": p.ngram_mod.n_match, "n_max": p.ngram_mod.n_max,
                      "n_min": p.ngram_mod.n_min},
        "ngram-cache": {"n_draft": NGRAM_CACHE_N_DRAFT, "static_path": None, "dynamic_path": None},
    }


DEFAULTS = _defaults()


def _int_param(str type_name, str name, value, long lo, long hi):
    if isinstance(value, bool):
        raise TypeError(f"{type_name}: {name} must be an integer, got {value!r}")
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{type_name}: {name} must be an integer, got {value!r}") from None
    if not lo <= v <= hi:
        raise ValueError(f"{type_name}: {name} must be in [{lo}, {hi}], got {v}")
    return v


cdef Py_ssize_t _cache_file_error(const int32_t* a, Py_ssize_t n) noexcept nogil:
    """Index of the first malformed int32 in an n-gram cache file image, or -1 if well formed.

    Format (common_ngram_cache_save): repeated {ngram: 4 x int32, ntokens > 0, ntokens x
    (token, count > 0)}, ending exactly at the end of the file. Upstream's loader asserts (aborts
    the process) on anything else, so files are checked here first.
    """
    cdef Py_ssize_t i = 0, k, ntok
    while i < n:
        if i + 5 > n or a[i + 4] <= 0:
            return i
        ntok = a[i + 4]
        i += 5
        if i + 2 * ntok > n:
            return i
        for k in range(ntok):
            if a[i + 2 * k + 1] <= 0:
                return i + 2 * k + 1
        i += 2 * ntok
    return -1


def _cache_path(str name, value):
    """Validate an ngram-cache lookup file argument; returns its path as str ('' for None)."""
    if value is None:
        return ""
    try:
        path = os.fspath(value)
    except TypeError:
        raise TypeError(f"ngram-cache: {name} must be a path or None, got {value!r}") from None
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not path:
        raise ValueError(f"ngram-cache: {name} must not be empty (use None for no file)")
    with open(path, "rb") as f:          # FileNotFoundError etc. name the path
        data = f.read()
    if len(data) % 4:
        raise ValueError(f"ngram-cache: {name} {path!r} is not an n-gram cache file "
                         f"(size {len(data)} is not a multiple of 4)")
    cdef const int32_t[::1] words = np.frombuffer(data, dtype=np.int32) if data else \
        np.zeros(0, dtype=np.int32)
    cdef Py_ssize_t bad = -1
    if words.shape[0]:
        bad = _cache_file_error(&words[0], words.shape[0])
    if bad >= 0:
        raise ValueError(f"ngram-cache: {name} {path!r} is not an n-gram cache file "
                         f"(malformed record at byte {4 * bad})")
    return path


@cython.final
cdef class LlamaDrafter(Drafter):
    """One of llama.cpp's n-gram drafters (``common_speculative``), driven through spec's interface.

    ``LlamaDrafter(type_name, *, n_seq=1, **params)`` with ``type_name`` one of
    :data:`SUPPORTED_TYPES` and the parameters of that type (upstream defaults in
    :data:`DEFAULTS`):

    - ``ngram-simple``, ``ngram-map-k``, ``ngram-map-k4v``: ``size_n`` (key n-gram length,
      1..65535), ``size_m`` (drafted m-gram length, 1..32767), ``min_hits`` (0..65535; only k4v
      uses it).
    - ``ngram-mod``: ``n_match`` (1..65535), ``n_max`` (1..65535), ``n_min`` (0..n_max).
    - ``ngram-cache``: ``n_draft`` (1..8; upstream always drafts up to 8, shorter caps truncate),
      ``static_path`` / ``dynamic_path`` (n-gram cache files written by llama-lookup-create /
      llama-lookup-merge, or None).

    ``n_seq`` (1..256, llama.cpp's LLAMA_MAX_SEQ) is how many sequence ids to create state for up
    front (see the module docstring).
    Unknown types, unknown parameter names and out-of-range values raise ValueError; non-integer
    values TypeError; unreadable cache files OSError.

    As for every drafter, ``accept(n)`` requires ``n`` <= the length of the last draft of that
    sequence (upstream asserts or corrupts its statistics otherwise). Beyond upstream, for the ngram-map types a draft
    whose history is shorter than the one before it (without a new ``begin``) raises ValueError
    (upstream aborts the process). ``accept`` is once per draft; ``end`` does nothing upstream
    (learned state carries over to the next ``begin`` of the sequence, as in llama-server).

    Each draft copies the history into the ``std::vector`` upstream takes: an O(history) memcpy
    per call that :func:`spec._loop._simulate.simulate` timings include.
    """
    cdef common_speculative* spec
    cdef common_params_speculative cparams
    cdef common_speculative_type ctype
    cdef readonly str type_name
    cdef dict _params
    cdef readonly int capacity          # sequence ids the common_speculative object holds
    cdef bint started                   # a sequence began on the current object
    cdef Py_ssize_t cap                 # extra draft-length cap (ngram-cache n_draft)
    cdef bint guard_history             # ngram-map types: check the history never shrinks
    cdef Py_ssize_t guard_min_len       # 2n+m: ngram-map does nothing below this history length
    cdef Py_ssize_t min_safe_len        # ngram-cache: shortest history upstream reads in bounds
    cdef vector[llama_tokens] hist      # per seq: the history handed to upstream
    cdef vector[llama_tokens] result    # per seq: upstream writes the draft here
    cdef vector[Py_ssize_t] hist_floor  # per seq: mirror of ngram-map's idx_last_check

    def __cinit__(self):
        self.spec = NULL
        self.capacity = 0
        self.started = False

    def __dealloc__(self):
        common_speculative_free(self.spec)
        self.spec = NULL

    def __init__(self, type_name, *, n_seq=1, **params):
        if not isinstance(type_name, str):
            raise TypeError(f"type_name must be a str, got {type(type_name).__name__}")
        if type_name not in SUPPORTED_TYPES:
            raise ValueError(f"unknown or unsupported speculative type {type_name!r}; "
                             f"LlamaDrafter supports {', '.join(SUPPORTED_TYPES)}")
        cdef int n = _int_param(type_name, "n_seq", n_seq, 1, LLAMA_MAX_SEQ)
        unknown = sorted(set(params) - set(DEFAULTS[type_name]))
        if unknown:
            raise ValueError(f"{type_name} has no parameter {unknown[0]!r} "
                             f"(valid: {', '.join(DEFAULTS[type_name])})")
        merged = dict(DEFAULTS[type_name], **params)
        self.type_name = type_name
        self.ctype = common_speculative_type_from_name(type_name.encode())
        self.cap = <Py_ssize_t> INT32_MAX
        self.guard_history = False
        self.guard_min_len = 0
        self.min_safe_len = 0
        self.cparams.types.clear()
        self.cparams.types.push_back(self.ctype)

        cdef common_params_speculative_ngram_map* m = NULL
        if self.ctype == COMMON_SPECULATIVE_TYPE_NGRAM_SIMPLE:
            m = &self.cparams.ngram_simple
        elif self.ctype == COMMON_SPECULATIVE_TYPE_NGRAM_MAP_K:
            m = &self.cparams.ngram_map_k
        elif self.ctype == COMMON_SPECULATIVE_TYPE_NGRAM_MAP_K4V:
            m = &self.cparams.ngram_map_k4v
        if m != NULL:
            merged["size_n"] = _int_param(type_name, "size_n", merged["size_n"], 1, MAX_U16)
            merged["size_m"] = _int_param(type_name, "size_m", merged["size_m"], 1, MAX_SIZE_M)
            merged["min_hits"] = _int_param(type_name, "min_hits", merged["min_hits"], 0, MAX_U16)
            m.size_n = merged["size_n"]
            m.size_m = merged["size_m"]
            m.min_hits = merged["min_hits"]
            if self.ctype != COMMON_SPECULATIVE_TYPE_NGRAM_SIMPLE:
                self.guard_history = True
                self.guard_min_len = 2 * m.size_n + m.size_m
        elif self.ctype == COMMON_SPECULATIVE_TYPE_NGRAM_MOD:
            merged["n_match"] = _int_param(type_name, "n_match", merged["n_match"], 1, MAX_U16)
            merged["n_max"] = _int_param(type_name, "n_max", merged["n_max"], 1, MAX_U16)
            merged["n_min"] = _int_param(type_name, "n_min", merged["n_min"], 0, merged["n_max"])
            self.cparams.ngram_mod.n_match = merged["n_match"]
            self.cparams.ngram_mod.n_max = merged["n_max"]
            self.cparams.ngram_mod.n_min = merged["n_min"]
        else:  # ngram-cache
            merged["n_draft"] = _int_param(type_name, "n_draft", merged["n_draft"], 1,
                                           NGRAM_CACHE_N_DRAFT)
            self.cap = merged["n_draft"]
            # common_ngram_cache_draft builds its longest (LLAMA_NGRAM_MAX = 4) key from the last
            # four tokens of history + id_last; with fewer it indexes before its draft vector
            # (common/ngram-cache.cpp:56, reached from :177; AddressSanitizer reports the read).
            self.min_safe_len = NGRAM_MAX - 1
            static = _cache_path("static_path", merged["static_path"])
            dynamic = _cache_path("dynamic_path", merged["dynamic_path"])
            self.cparams.ngram_cache.lookup_cache_static = os.fsencode(static)
            self.cparams.ngram_cache.lookup_cache_dynamic = os.fsencode(dynamic)
            merged["static_path"] = static or None
            merged["dynamic_path"] = dynamic or None
        self._params = merged
        self._create(n)
        self.reserve_seqs(n)

    cdef int _create(self, int n_seq) except -1:
        """(Re-)create the upstream object for ``n_seq`` sequence ids; all learned state is dropped."""
        cdef common_speculative* spec = NULL
        try:
            with upstream_log():
                spec = common_speculative_init(self.cparams, <uint32_t> n_seq)
        except MemoryError:
            raise
        except Exception as e:
            raise ValueError(f"llama.cpp rejected {self.type_name} parameters {self._params}: "
                             f"{e}") from e
        if spec == NULL:
            raise ValueError(f"llama.cpp enabled no implementation for {self.type_name}")
        common_speculative_free(self.spec)
        self.spec = spec
        self.capacity = n_seq
        self.started = False
        self.hist.clear()
        self.hist.resize(n_seq)
        self.result.clear()
        self.result.resize(n_seq)
        self.hist_floor.assign(n_seq, 0)
        return 0

    # -- Drafter hooks -------------------------------------------------------------------------

    cdef int _reserve(self, int n_seq) except -1:
        if n_seq <= self.capacity:
            return 0
        if n_seq > LLAMA_MAX_SEQ:
            raise ValueError(f"LlamaDrafter serves at most {LLAMA_MAX_SEQ} sequences (llama.cpp's "
                             f"LLAMA_MAX_SEQ); sequence id {n_seq - 1} is out of range")
        if self.started:
            raise ValueError(
                f"LlamaDrafter({self.type_name!r}) holds {self.capacity} sequence(s) and a "
                f"generation has begun, so it cannot grow to {n_seq} without losing upstream "
                f"state: construct it with n_seq={n_seq} (or more)")
        return self._create(n_seq)

    cdef int _begin(self, int seq, const token_t* prompt, Py_ssize_t n_prompt) except -1 nogil:
        self.started = True
        self.hist[seq].assign(prompt, prompt + n_prompt)
        common_speculative_begin(self.spec, seq, self.hist[seq])
        self.hist_floor[seq] = n_prompt
        return 0

    cdef Py_ssize_t _draft(self, int seq, const token_t* history, Py_ssize_t n_history,
                           token_t id_last, Py_ssize_t n_max, token_t* out) except -1 nogil:
        cdef common_speculative_draft_params* dp
        cdef llama_tokens* res = &self.result[seq]
        cdef Py_ssize_t n
        # ngram-map aborts if the history is shorter than at its last draft or begin (it keeps
        # positions into it); below 2n+m it returns before looking.
        if self.guard_history and n_history >= self.guard_min_len:
            if n_history < self.hist_floor[seq] or n_history >= <Py_ssize_t> UINT32_MAX:
                with gil:
                    raise ValueError(
                        f"{self.type_name}: history of {n_history} tokens is shorter than at the "
                        f"previous draft or begin ({self.hist_floor[seq]}) of sequence {seq}; "
                        f"call begin() again after removing tokens")
            self.hist_floor[seq] = n_history
        if n_history < self.min_safe_len:
            return 0        # see min_safe_len; spec's NgramCache drafts from its static part here
        self.hist[seq].assign(history, history + n_history)
        res.clear()
        dp = &common_speculative_get_draft_params(self.spec, seq)
        dp.drafting = True
        n_max = min(n_max, self.cap)
        dp.n_max = <int32_t> n_max       # > 0 here: upstream treats <= 0 as "no limit"
        dp.pos0 = <int32_t> min(n_history, <Py_ssize_t> INT32_MAX)
        dp.id_last = id_last
        dp.prompt = &self.hist[seq]
        dp.result = res
        common_speculative_draft(self.spec)
        n = min(<Py_ssize_t> res.size(), n_max)
        if n > 0:
            memcpy(out, res.data(), n * sizeof(token_t))
        return n

    cdef int _accept(self, int seq, Py_ssize_t n_accepted) except -1 nogil:
        # n_accepted <= the last draft's length: checked by Drafter.accept_seq
        common_speculative_accept(self.spec, seq, <uint16_t> n_accepted)
        return 0

    # -- Python level --------------------------------------------------------------------------

    def reset(self):
        """Drop all learned state (re-creates the upstream object); sequences stay reserved."""
        with self.lock:
            self.check_free()
            self._create(self.capacity)

    @property
    def params(self):
        """The parameters in effect (upstream defaults filled in), as a new dict."""
        return dict(self._params)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self._params.items())
        return f"LlamaDrafter({self.type_name!r}, {args})"
