"""Drafters written in Python: the engine's nogil loop calls their methods, taking the GIL for
each call only.

Subclass :class:`PythonDrafter` and override ``draft`` (and ``begin``, ``accept``, ``end``,
``reset`` when the drafter keeps state). The engine, batch jobs, :func:`spec.simulate` and
:mod:`spec.ray` drive it through the same C-level protocol as the Cython drafters
(``_base.pxd``); the base class does the bookkeeping (sequences begun, the length of the last
draft) and checks what ``draft`` returns. The time spent in these methods counts as draft time.
"""
import numpy as np
cimport numpy as cnp

from spec._c.typedefs cimport token_t
from spec.drafters._base cimport Drafter

cnp.import_array()


cdef cnp.ndarray _view(const token_t* tokens, Py_ssize_t n):
    """A read-only int32 array over ``n`` tokens owned by the caller (valid during the call)."""
    cdef cnp.npy_intp dim = n
    cdef cnp.ndarray arr
    if n == 0 or tokens == NULL:
        return np.empty(0, dtype=np.int32)
    arr = cnp.PyArray_SimpleNewFromData(1, &dim, cnp.NPY_INT32, <void*> tokens)
    cnp.PyArray_CLEARFLAGS(arr, cnp.NPY_ARRAY_WRITEABLE)
    return arr


cdef class PythonDrafter(Drafter):
    """Base class of drafters written in Python.

    Override these methods (each takes the sequence id last; the defaults do nothing and draft
    nothing):

    - ``begin(prompt, seq_id)``: a generation starts; ``prompt`` holds the tokens already in the
      target context.
    - ``draft(history, id_last, n_max, seq_id)``: return up to ``n_max`` token ids (any 1-D
      integer sequence) to follow ``history + [id_last]``. ``history`` is a read-only int32 view
      of the engine's buffer, valid during the call only: copy what you keep.
    - ``accept(n_accepted, seq_id)``: how many tokens of the last draft the target accepted.
    - ``end(output, seq_id)``: the generation finished with ``output`` (a view, as above).
    - ``reset()``: forget everything learned (:meth:`spec.Engine.reset_drafter`).

    An exception raised in them ends the generation with that exception; the engine stays
    usable. A draft longer than ``n_max`` or holding a negative id raises ValueError.

    Example: repeat what followed the last earlier occurrence of ``id_last``::

        class RepeatLast(spec.PythonDrafter):
            def draft(self, history, id_last, n_max, seq_id=0):
                hits = np.flatnonzero(history[:-1] == id_last)
                return history[hits[-1] + 1:][:n_max] if hits.size else ()
    """

    # -- the methods subclasses override -------------------------------------------------------

    def begin(self, prompt, int seq_id=0):
        pass

    def draft(self, history, int id_last, Py_ssize_t n_max, int seq_id=0):
        return ()

    def accept(self, Py_ssize_t n_accepted, int seq_id=0):
        pass

    def end(self, output=(), int seq_id=0):
        pass

    def reset(self):
        pass

    # -- the C-level hooks the loop calls --------------------------------------------------------

    cdef int _begin(self, int seq, const token_t* prompt, Py_ssize_t n_prompt) except -1 nogil:
        with gil:
            self.begin(_view(prompt, n_prompt), seq)
        return 0

    cdef Py_ssize_t _draft(self, int seq, const token_t* history, Py_ssize_t n_history,
                           token_t id_last, Py_ssize_t n_max, token_t* out) except -1 nogil:
        with gil:
            return self._call_draft(seq, history, n_history, id_last, n_max, out)

    cdef Py_ssize_t _call_draft(self, int seq, const token_t* history, Py_ssize_t n_history,
                                token_t id_last, Py_ssize_t n_max, token_t* out) except -1:
        cdef Py_ssize_t i, n
        cdef const token_t[::1] toks
        drafted = self.draft(_view(history, n_history), id_last, n_max, seq)
        if drafted is None:
            return 0
        arr = np.asarray(drafted)
        if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
            raise ValueError(f"{type(self).__name__}.draft must return a 1-D sequence of token "
                             f"ids, got {type(drafted).__name__} of shape {arr.shape} and dtype "
                             f"{arr.dtype}")
        n = arr.shape[0]
        if n > n_max:
            raise ValueError(f"{type(self).__name__}.draft returned {n} tokens, more than "
                             f"n_max={n_max}")
        if n == 0:
            return 0
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 0x7FFFFFFF:
            raise ValueError(f"{type(self).__name__}.draft returned a token id outside "
                             f"[0, 2**31): {lo if lo < 0 else hi}")
        toks = np.ascontiguousarray(arr, dtype=np.int32)
        for i in range(n):
            out[i] = toks[i]
        return n

    cdef int _accept(self, int seq, Py_ssize_t n_accepted) except -1 nogil:
        with gil:
            self.accept(n_accepted, seq)
        return 0

    cdef int _end(self, int seq, const token_t* output, Py_ssize_t n_output) except -1 nogil:
        with gil:
            self.end(_view(output, n_output), seq)
        return 0

    def __repr__(self):
        return f"{type(self).__name__}()"
