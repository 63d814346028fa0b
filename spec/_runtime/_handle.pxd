# The one ownership rule for objects wrapping llama.cpp memory. See _handle.pyx.

cdef class Handle:
    cdef bint closed              # close() was called: unusable now, freed once not borrowed
    cdef int n_borrowers          # live objects pointing into this one's C memory

    cdef int check_open(self) except -1
    cdef int lend(self) except -1       # check_open, then count one more borrower
    cdef void give_back(self) noexcept  # one borrower less; frees a closed handle at zero
    cdef void free(self) noexcept       # free the C object (idempotent); see _handle.pyx
    cdef str describe(self)
