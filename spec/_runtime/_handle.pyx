"""The one ownership rule for objects that wrap llama.cpp memory.

A borrower (a context over a model, a numpy view over a context's logits, a session over two
contexts) holds a Python reference to what it borrows and counts itself with :meth:`Handle.lend`;
when it is freed it calls :meth:`Handle.give_back`. ``close()`` makes a handle unusable at once
(``ClosedError`` from then on) and frees its C object as soon as nothing borrows it, so closing in
any order, from any thread holding the GIL, never leaves a dangling pointer. Garbage collection
frees it the same way: a handle is only collected after its borrowers, which reference it.

Subclasses implement :meth:`free`: release the C object if there is one (it may run twice, or
after a failed ``__init__``) and give back what they borrowed.
"""
from spec._runtime._errors import ClosedError


cdef class Handle:

    def __cinit__(self):
        self.closed = False
        self.n_borrowers = 0

    cdef int check_open(self) except -1:
        if self.closed:
            raise ClosedError(f"{self.describe()} is closed")
        return 0

    cdef int lend(self) except -1:
        self.check_open()
        self.n_borrowers += 1
        return 0

    cdef void give_back(self) noexcept:
        self.n_borrowers -= 1
        if self.closed and self.n_borrowers == 0:
            self.free()

    cdef void free(self) noexcept:
        pass

    cdef str describe(self):
        return type(self).__name__

    def close(self):
        """Make this unusable now; its memory is freed once nothing borrows it. Idempotent."""
        if self.closed:
            return
        self.closed = True
        if self.n_borrowers == 0:
            self.free()

    @property
    def closed(self):
        """True once :meth:`close` was called."""
        return self.closed

    @property
    def _n_borrowers(self):
        """Live borrowers (diagnostics and tests)."""
        return self.n_borrowers

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
