"""The drafter base class: a nogil C-level protocol for the engine, thin Python methods for research.

Subclasses override the underscore hooks (``_reserve``, ``_begin``, ``_draft``, ``_accept``,
``_end``); the public C-level methods keep the per-sequence bookkeeping in one place.
"""
from libc.stdlib cimport free, realloc
from libc.string cimport memset

import numpy as np
cimport numpy as cnp

from spec._typedefs cimport token_t

cnp.import_array()


cdef const token_t[::1] as_tokens(object tokens, str name) except *:
    """A C-contiguous int32 view of ``tokens``; converts lists and other integer dtypes."""
    arr = np.asarray(tokens)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name} must hold integer token ids, got dtype {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() > 0x7FFFFFFF):
        raise ValueError(f"{name} holds token ids outside [0, 2**31)")
    return np.ascontiguousarray(arr, dtype=np.int32)


cdef class Drafter:
    """Base class of every drafter: begin a sequence, draft, accept, end.

    Every method takes a ``seq_id`` so one drafter serves many sequences of a batch. Python
    methods validate their arguments and convert arrays; the engine calls the C-level methods
    declared in ``_base.pxd`` without the GIL.
    """

    def __cinit__(self):
        self.n_seq = 0
        self.begun = NULL

    def __dealloc__(self):
        free(self.begun)

    # -- C level -------------------------------------------------------------------------------

    cdef int reserve_seqs(self, int n_seq) except -1:
        cdef unsigned char* grown
        if n_seq <= self.n_seq:
            return 0
        grown = <unsigned char*> realloc(self.begun, n_seq)
        if grown == NULL:
            raise MemoryError()
        memset(grown + self.n_seq, 0, n_seq - self.n_seq)
        self.begun = grown
        self._reserve(n_seq)
        self.n_seq = n_seq
        return 0

    cdef int begin_seq(self, int seq, const token_t* prompt, Py_ssize_t n_prompt) except -1 nogil:
        self.begun[seq] = 1
        return self._begin(seq, prompt, n_prompt)

    cdef Py_ssize_t draft_seq(self, int seq, const token_t* history, Py_ssize_t n_history,
                              token_t id_last, Py_ssize_t n_max, token_t* out) except -1 nogil:
        if n_max <= 0:
            return 0
        return self._draft(seq, history, n_history, id_last, n_max, out)

    cdef int accept_seq(self, int seq, Py_ssize_t n_accepted) except -1 nogil:
        return self._accept(seq, n_accepted)

    cdef int end_seq(self, int seq, const token_t* output, Py_ssize_t n_output) except -1 nogil:
        self.begun[seq] = 0
        return self._end(seq, output, n_output)

    cdef int _reserve(self, int n_seq) except -1:
        return 0

    cdef int _begin(self, int seq, const token_t* prompt, Py_ssize_t n_prompt) except -1 nogil:
        return 0

    cdef Py_ssize_t _draft(self, int seq, const token_t* history, Py_ssize_t n_history,
                           token_t id_last, Py_ssize_t n_max, token_t* out) except -1 nogil:
        return 0

    cdef int _accept(self, int seq, Py_ssize_t n_accepted) except -1 nogil:
        return 0

    cdef int _end(self, int seq, const token_t* output, Py_ssize_t n_output) except -1 nogil:
        return 0

    # -- Python level --------------------------------------------------------------------------

    def _check_seq(self, int seq_id, bint need_begun=True):
        if seq_id < 0:
            raise ValueError(f"seq_id must be >= 0, got {seq_id}")
        if need_begun and (seq_id >= self.n_seq or not self.begun[seq_id]):
            raise ValueError(f"unknown sequence id {seq_id}: call begin(prompt, seq_id={seq_id}) first")

    def begin(self, prompt, int seq_id=0):
        """Start a generation for ``seq_id`` whose target context holds ``prompt``."""
        self._check_seq(seq_id, need_begun=False)
        cdef const token_t[::1] toks = as_tokens(prompt, "prompt")
        self.reserve_seqs(seq_id + 1)
        with nogil:
            self.begin_seq(seq_id, &toks[0] if toks.shape[0] else NULL, toks.shape[0])

    def draft(self, history, int id_last, Py_ssize_t n_max, int seq_id=0):
        """Draft up to ``n_max`` tokens to follow ``history + [id_last]``; returns int32 array.

        ``history`` holds every token already in the target context for this sequence (prompt and
        accepted output, without ``id_last``).
        """
        if n_max < 0:
            raise ValueError(f"n_max must be >= 0, got {n_max}")
        if id_last < 0:
            raise ValueError(f"id_last must be a token id >= 0, got {id_last}")
        self._check_seq(seq_id)
        cdef const token_t[::1] hist = as_tokens(history, "history")
        out = np.empty(n_max, dtype=np.int32)
        cdef token_t[::1] out_view = out
        cdef Py_ssize_t n = 0
        if n_max == 0:
            return out
        with nogil:
            n = self.draft_seq(seq_id, &hist[0] if hist.shape[0] else NULL, hist.shape[0],
                               id_last, n_max, &out_view[0])
        return out[:n].copy()

    def accept(self, Py_ssize_t n_accepted, int seq_id=0):
        """Report that the first ``n_accepted`` tokens of the last draft for ``seq_id`` were accepted."""
        if n_accepted < 0:
            raise ValueError(f"n_accepted must be >= 0, got {n_accepted}")
        self._check_seq(seq_id)
        with nogil:
            self.accept_seq(seq_id, n_accepted)

    def end(self, output=(), int seq_id=0):
        """Finish the generation of ``seq_id``; ``output`` = the tokens it generated."""
        self._check_seq(seq_id)
        cdef const token_t[::1] toks = as_tokens(output, "output")
        with nogil:
            self.end_seq(seq_id, &toks[0] if toks.shape[0] else NULL, toks.shape[0])

    def __repr__(self):
        return f"{type(self).__name__}()"
