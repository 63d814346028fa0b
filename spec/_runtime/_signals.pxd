# Ctrl-C in nogil loops: return to the GIL to check for signals at a bounded rate, not per token.
from cpython.exc cimport PyErr_CheckSignals
from libc.stdint cimport int64_t
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

cdef enum:
    SIGNAL_CHECK_US = 50000     # a pending KeyboardInterrupt is raised within ~50 ms of work


cdef inline int64_t monotonic_us() noexcept nogil:
    # Monotonic microseconds, without linking llama.cpp (llama_time_us reads the same clock).
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec * 1000000 + ts.tv_nsec // 1000


cdef inline int check_signals(int64_t* next_check_us) except -1 nogil:
    """Raise a pending signal's exception once ``next_check_us`` (start it at 0) has passed."""
    cdef int64_t now = monotonic_us()
    if now < next_check_us[0]:
        return 0
    next_check_us[0] = now + SIGNAL_CHECK_US
    with gil:
        PyErr_CheckSignals()
    return 0
