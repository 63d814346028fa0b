"""The drafter base class: a nogil C-level protocol for the engine, thin Python methods for research.

The Python methods hold the drafter's lock (threads sharing a drafter take turns) and raise
EngineBusyError while an engine's generation holds the drafter (see ``_hold``).

Subclasses override the underscore hooks (``_reserve``, ``_begin``, ``_draft``, ``_accept``,
``_follow``, ``_end``); the public C-level methods keep the per-sequence bookkeeping in one
place.
"""
from libc.stdlib cimport free, realloc
from libc.string cimport memset

import threading

import numpy as np
cimport numpy as cnp

from spec._c.typedefs cimport LLAMA_MAX_SEQ, token_t
from spec._runtime._errors import EngineBusyError

cnp.import_array()

cdef extern from *:
    """
    /* Index of the first negative id, or -1. An OR of all ids first (its sign bit is set iff
       some id is negative): it vectorizes even with plain SSE2, so the common all-valid case
       costs a fraction of a nanosecond per token. */
    static Py_ssize_t spec_first_negative(const int32_t* t, Py_ssize_t n) {
        int32_t any = 0;
        for (Py_ssize_t i = 0; i < n; i++) any |= t[i];
        if (any >= 0) return -1;
        for (Py_ssize_t i = 0; i < n; i++) if (t[i] < 0) return i;
        return -1;
    }
    """
    Py_ssize_t _first_negative "spec_first_negative"(const token_t* toks, Py_ssize_t n) nogil


cdef cnp.ndarray as_token_array(object tokens, str name):
    """``tokens`` as a 1-D C-contiguous int32 ndarray of non-negative ids.

    C-contiguous int32 arrays (what the engine and research code pass) are used in place: only
    a vectorized scan for negative ids touches them. Lists and other integer dtypes are converted.
    """
    cdef cnp.ndarray arr
    cdef Py_ssize_t bad
    if not (type(tokens) is np.ndarray and (<cnp.ndarray> tokens).ndim == 1
            and (<cnp.ndarray> tokens).descr.type_num == cnp.NPY_INT32
            and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray> tokens)):
        tokens = np.asarray(tokens)
        if tokens.ndim != 1:
            raise ValueError(f"{name} must be 1-D, got shape {tokens.shape}")
        if tokens.size and not np.issubdtype(tokens.dtype, np.integer):
            raise TypeError(f"{name} must hold integer token ids, got dtype {tokens.dtype}")
        if tokens.size and tokens.max() > 0x7FFFFFFF:
            raise ValueError(f"{name} holds token ids outside [0, 2**31)")
        if tokens.size and tokens.min() < 0:
            bad = int(np.argmax(tokens < 0))
            raise ValueError(f"{name}[{bad}] = {tokens[bad]} is outside [0, 2**31): not a token id")
        return np.ascontiguousarray(tokens, dtype=np.int32)
    arr = <cnp.ndarray> tokens
    with nogil:
        bad = _first_negative(<const token_t*> cnp.PyArray_DATA(arr), cnp.PyArray_DIM(arr, 0))
    if bad >= 0:
        raise ValueError(f"{name}[{bad}] = {(<const token_t*> cnp.PyArray_DATA(arr))[bad]} is "
                         f"outside [0, 2**31): not a token id")
    return arr


cdef int check_drafted(const token_t* draft, Py_ssize_t n) except -1:
    """Refuse a draft holding a negative id (see Drafter.checked_history for how one could)."""
    cdef Py_ssize_t bad = _first_negative(draft, n)
    if bad >= 0:
        raise ValueError(f"the draft holds {draft[bad]}, not a token id: the history was "
                         f"changed in place after an earlier draft() read it")
    return 0


cdef const token_t[::1] as_tokens(object tokens, str name) except *:
    """A C-contiguous int32 memoryview of ``tokens`` (see as_token_array)."""
    return as_token_array(tokens, name)


cdef class Drafter:
    """Base class of every drafter: begin a sequence, draft, accept, end.

    Every method takes a ``seq_id`` so one drafter serves many sequences of a batch. Python
    methods validate their arguments and convert arrays; the engine calls the C-level methods
    declared in ``_base.pxd`` without the GIL.
    """

    def __cinit__(self):
        self.n_seq = 0
        self.begun = NULL
        self.last_draft = NULL
        self.n_checked = NULL
        self.holder = None
        self.lock = threading.RLock()

    def __dealloc__(self):
        free(self.begun)
        free(self.last_draft)
        free(self.n_checked)

    # -- C level -------------------------------------------------------------------------------

    cdef int reserve_seqs(self, int n_seq) except -1:
        cdef unsigned char* grown
        cdef Py_ssize_t* grown_last
        if n_seq <= self.n_seq:
            return 0
        grown = <unsigned char*> realloc(self.begun, n_seq)
        if grown == NULL:
            raise MemoryError()
        memset(grown + self.n_seq, 0, n_seq - self.n_seq)
        self.begun = grown
        grown_last = <Py_ssize_t*> realloc(self.last_draft, n_seq * sizeof(Py_ssize_t))
        if grown_last == NULL:
            raise MemoryError()
        memset(grown_last + self.n_seq, 0, (n_seq - self.n_seq) * sizeof(Py_ssize_t))
        self.last_draft = grown_last
        grown_last = <Py_ssize_t*> realloc(self.n_checked, n_seq * sizeof(Py_ssize_t))
        if grown_last == NULL:
            raise MemoryError()
        memset(grown_last + self.n_seq, 0, (n_seq - self.n_seq) * sizeof(Py_ssize_t))
        self.n_checked = grown_last
        self._reserve(n_seq)
        self.n_seq = n_seq
        return 0

    cdef int begin_seq(self, int seq, const token_t* prompt, Py_ssize_t n_prompt) except -1 nogil:
        self.begun[seq] = 1
        self.last_draft[seq] = 0
        self.n_checked[seq] = 0
        return self._begin(seq, prompt, n_prompt)

    cdef Py_ssize_t draft_seq(self, int seq, const token_t* history, Py_ssize_t n_history,
                              token_t id_last, Py_ssize_t n_max, token_t* out) except -1 nogil:
        cdef Py_ssize_t n
        self.last_draft[seq] = 0
        if n_max <= 0:
            return 0
        n = self._draft(seq, history, n_history, id_last, n_max, out)
        self.last_draft[seq] = n
        return n

    cdef Py_ssize_t draft_tree_seq(self, int seq, const token_t* history, Py_ssize_t n_history,
                                   token_t id_last, Py_ssize_t n_path_max, Py_ssize_t n_max,
                                   token_t* out, int32_t* parents, float* probs,
                                   Py_ssize_t* n_path) except -1 nogil:
        cdef Py_ssize_t n
        self.last_draft[seq] = 0
        n_path[0] = 0
        if n_path_max <= 0 or n_max <= 0:
            return 0
        n = self._draft_tree(seq, history, n_history, id_last, min(n_path_max, n_max), n_max,
                             out, parents, probs, n_path)
        self.last_draft[seq] = n_path[0]      # accept counts tokens of the path
        return n

    cdef int accept_seq(self, int seq, Py_ssize_t n_accepted) except -1 nogil:
        if n_accepted > self.last_draft[seq]:
            with gil:
                raise ValueError(f"n_accepted={n_accepted} exceeds the length of the last draft "
                                 f"of sequence {seq} ({self.last_draft[seq]}; accept is once "
                                 f"per draft)")
        self.last_draft[seq] = 0
        return self._accept(seq, n_accepted)

    cdef int follow_seq(self, int seq, Py_ssize_t n_accepted) except -1 nogil:
        self.last_draft[seq] = 0      # its own draft, if any, is settled with the step
        return self._follow(seq, n_accepted)

    cdef int end_seq(self, int seq, const token_t* output, Py_ssize_t n_output) except -1 nogil:
        self.begun[seq] = 0
        self.last_draft[seq] = 0
        self.n_checked[seq] = 0
        return self._end(seq, output, n_output)

    cdef int reset_seq(self, int seq) except -1:
        self.begun[seq] = 0
        self.last_draft[seq] = 0
        self.n_checked[seq] = 0
        return self._reset_seq(seq)

    cdef int _reserve(self, int n_seq) except -1:
        return 0

    cdef int _begin(self, int seq, const token_t* prompt, Py_ssize_t n_prompt) except -1 nogil:
        return 0

    cdef Py_ssize_t _draft(self, int seq, const token_t* history, Py_ssize_t n_history,
                           token_t id_last, Py_ssize_t n_max, token_t* out) except -1 nogil:
        return 0

    cdef Py_ssize_t _draft_tree(self, int seq, const token_t* history, Py_ssize_t n_history,
                                token_t id_last, Py_ssize_t n_path_max, Py_ssize_t n_max,
                                token_t* out, int32_t* parents, float* probs,
                                Py_ssize_t* n_path) except -1 nogil:
        cdef Py_ssize_t i, n = self._draft(seq, history, n_history, id_last, n_path_max, out)
        for i in range(n):
            parents[i] = <int32_t> i - 1
            if probs != NULL:
                probs[i] = 1.0
        n_path[0] = n
        return n

    cdef int _accept(self, int seq, Py_ssize_t n_accepted) except -1 nogil:
        return 0

    cdef int _follow(self, int seq, Py_ssize_t n_accepted) except -1 nogil:
        return 0      # model-free drafters learn the accepted tokens from the next history

    cdef int _end(self, int seq, const token_t* output, Py_ssize_t n_output) except -1 nogil:
        return 0

    cdef int _reset_seq(self, int seq) except -1:
        return 0      # drafters whose begin already starts afresh (or that keep no state)

    # -- Python level --------------------------------------------------------------------------

    def _hold(self, holder):
        """Reserve the drafter for ``holder``'s generation (an engine; None frees it), once a
        Python-level call in progress has returned. A drafter serves one engine at a time: two
        loops driving its per-sequence state at once would corrupt it."""
        with self.lock:
            if holder is not None and self.holder is not None and self.holder is not holder:
                raise EngineBusyError(f"this {type(self).__name__} is in use by another "
                                      f"engine's generation: give each engine its own drafter")
            self.holder = holder

    cdef int check_draft_args(self, Py_ssize_t n_max, int id_last, int seq_id) except -1:
        self.check_free()
        if n_max < 0:
            raise ValueError(f"n_max must be >= 0, got {n_max}")
        if id_last < 0:
            raise ValueError(f"id_last must be a token id >= 0, got {id_last}")
        return self.check_seq(seq_id, True)

    cdef cnp.ndarray checked_history(self, object history, int seq):
        """``history`` as a token array (see as_token_array), costing O(1) in its length.

        A generation's history only grows, so an int32 array is scanned only past the length an
        earlier call of this sequence already scanned (a shorter history is scanned whole).
        Drafters use older tokens only as keys and in comparisons; an id made negative in place
        after its scan can at worst surface in a draft, which ``draft`` refuses.
        """
        cdef cnp.ndarray arr
        cdef Py_ssize_t n, start, bad
        cdef const token_t* data
        if not (type(history) is np.ndarray and (<cnp.ndarray> history).ndim == 1
                and (<cnp.ndarray> history).descr.type_num == cnp.NPY_INT32
                and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray> history)):
            arr = as_token_array(history, "history")      # converted: a copy it needs anyway
            self.n_checked[seq] = cnp.PyArray_DIM(arr, 0)
            return arr
        arr = <cnp.ndarray> history
        n = cnp.PyArray_DIM(arr, 0)
        start = self.n_checked[seq] if self.n_checked[seq] <= n else 0
        data = <const token_t*> cnp.PyArray_DATA(arr)
        with nogil:
            bad = _first_negative(data + start, n - start)
        if bad >= 0:
            raise ValueError(f"history[{start + bad}] = {data[start + bad]} is outside "
                             f"[0, 2**31): not a token id")
        self.n_checked[seq] = n
        return arr

    cdef int check_free(self) except -1:
        if self.holder is not None:
            raise EngineBusyError(f"this {type(self).__name__} is in use by an engine's "
                                  f"generation")
        return 0

    def _check_seq(self, int seq_id, bint need_begun=True):
        self.check_seq(seq_id, need_begun)

    cdef int check_seq(self, int seq_id, bint need_begun) except -1:
        self.check_free()
        # per-sequence state is allocated up to the highest id begun
        if not 0 <= seq_id < LLAMA_MAX_SEQ:
            raise ValueError(f"seq_id must be in [0, {LLAMA_MAX_SEQ}) (llama.cpp's LLAMA_MAX_SEQ), "
                             f"got {seq_id}")
        if need_begun and (seq_id >= self.n_seq or not self.begun[seq_id]):
            raise ValueError(f"unknown sequence id {seq_id}: call begin(prompt, seq_id={seq_id}) first")
        return 0

    def begin(self, prompt, int seq_id=0):
        """Start a generation for ``seq_id`` whose target context holds ``prompt``."""
        cdef const token_t[::1] toks
        with self.lock:
            self.check_free()
            self._check_seq(seq_id, need_begun=False)
            toks = as_tokens(prompt, "prompt")
            self.reserve_seqs(seq_id + 1)
            with nogil:
                self.begin_seq(seq_id, &toks[0] if toks.shape[0] else NULL, toks.shape[0])

    def draft(self, history, int id_last, Py_ssize_t n_max, int seq_id=0):
        """Draft up to ``n_max`` tokens to follow ``history + [id_last]``; returns int32 array.

        ``history`` holds every token already in the target context for this sequence (prompt and
        accepted output, without ``id_last``).
        """
        cdef cnp.ndarray hist
        cdef const token_t* hist_ptr
        cdef Py_ssize_t n_hist
        cdef cnp.npy_intp dim
        cdef cnp.ndarray out
        cdef token_t* out_ptr
        cdef Py_ssize_t n
        with self.lock:
            self.check_draft_args(n_max, id_last, seq_id)
            hist = self.checked_history(history, seq_id)
            hist_ptr = <const token_t*> cnp.PyArray_DATA(hist)
            n_hist = cnp.PyArray_DIM(hist, 0)
            dim = n_max
            out = cnp.PyArray_EMPTY(1, &dim, cnp.NPY_INT32, 0)
            out_ptr = <token_t*> cnp.PyArray_DATA(out)
            n = 0
            if n_max == 0:
                return out
            with nogil:
                n = self.draft_seq(seq_id, hist_ptr if n_hist else NULL, n_hist, id_last, n_max, out_ptr)
            check_drafted(out_ptr, n)
            return out[:n]

    def accept(self, Py_ssize_t n_accepted, int seq_id=0):
        """Report that the first ``n_accepted`` tokens of the last draft for ``seq_id`` were accepted."""
        with self.lock:
            self.check_free()
            if n_accepted < 0:
                raise ValueError(f"n_accepted must be >= 0, got {n_accepted}")
            self._check_seq(seq_id)
            with nogil:
                self.accept_seq(seq_id, n_accepted)

    def end(self, output=(), int seq_id=0):
        """Finish the generation of ``seq_id``; ``output`` = the tokens it generated."""
        cdef const token_t[::1] toks
        with self.lock:
            self.check_free()
            self._check_seq(seq_id)
            toks = as_tokens(output, "output")
            with nogil:
                self.end_seq(seq_id, &toks[0] if toks.shape[0] else NULL, toks.shape[0])

    def __repr__(self):
        return f"{type(self).__name__}()"
