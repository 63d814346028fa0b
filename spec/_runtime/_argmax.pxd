# The vectorized argmax of a row of logits: a pure-C inline with no further imports. The runtime
# layer owns it because _core's plain greedy loop needs it; the verification kernels (_verify)
# cimport it from here.
from libc.math cimport INFINITY

from spec._c.typedefs cimport token_t


cdef extern from *:
    """
    #include <math.h>

    /* Largest value of l[0..n), -inf if none; NaNs are skipped. Eight independent lanes. */
    __attribute__((optimize("no-trapping-math")))
    static float spec_max(const float* __restrict__ l, int n) {
        float lane[8];
        float m = -INFINITY;
        int i, j;
        for (j = 0; j < 8; j++) lane[j] = -INFINITY;
        for (i = 0; i + 8 <= n; i += 8)
            for (j = 0; j < 8; j++) lane[j] = l[i + j] > lane[j] ? l[i + j] : lane[j];
        for (j = 0; j < 8; j++) m = lane[j] > m ? lane[j] : m;
        for (; i < n; i++) m = l[i] > m ? l[i] : m;
        return m;
    }
    """
    float spec_max(const float* l, int n) noexcept nogil


# Highest logit, lowest index on ties; NaNs are never picked (0 if no row entry beats -inf).
cdef inline token_t argmax(const float* logits, int n_vocab) noexcept nogil:
    # A vectorized max, then the first id holding it: the lowest id wins ties.
    cdef float m = spec_max(logits, n_vocab)
    cdef int i
    if not (m > -INFINITY):
        return 0
    for i in range(n_vocab):
        if logits[i] == m:
            return i
    return 0
