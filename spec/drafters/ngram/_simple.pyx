"""ngram-simple: draft the tokens that followed the most recent earlier occurrence of the current n-gram.

Same algorithm and parameters as llama.cpp's ``common_ngram_simple_draft`` (common/ngram-map.cpp,
driven by ``common_speculative_impl_ngram_simple``): stateless, one backwards scan of the history
per call.
"""
cimport cython
from libc.string cimport memcmp, memcpy

import operator

from spec._c.typedefs cimport token_t
from spec.drafters._base cimport Drafter


def _int_param(str name, value, long lo, long hi):
    """``value`` as an int in [lo, hi]: TypeError for non-integers (bools and floats included)."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {value!r}") from None
    if not lo <= v <= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {v}")
    return v


cdef enum:
    SCAN_BLOCK = 32     # positions tested per branch-free (vectorizable) block of the scan


cdef Py_ssize_t find_last(const token_t* tokens, Py_ssize_t j_hi, const token_t* head,
                          token_t last, Py_ssize_t n) noexcept nogil:
    """The largest j in [1, j_hi] with tokens[j..j+n) == head[0..n-1) + [last], or 0 if none.

    Blocks of SCAN_BLOCK start positions are first screened without branches on the pattern's
    last two tokens (one for n == 1), a loop the compiler turns into SIMD compares; only blocks
    with a candidate are checked one position at a time, most recent first.
    """
    cdef token_t prev = head[n - 2] if n >= 2 else last
    cdef const token_t* a = tokens + n - 1             # a[j] = last token of the n-gram at j
    cdef const token_t* b = tokens + n - 2 if n >= 2 else a
    cdef size_t head_bytes = <size_t> (n - 1) * sizeof(token_t)
    cdef Py_ssize_t j = j_hi, lo, k
    cdef int hit
    while j >= SCAN_BLOCK:                              # block [j - SCAN_BLOCK + 1, j], all >= 1
        lo = j - SCAN_BLOCK + 1
        hit = 0
        for k in range(SCAN_BLOCK):
            hit |= (a[lo + k] == last) & (b[lo + k] == prev)
        if hit:
            for k in range(SCAN_BLOCK - 1, -1, -1):
                if a[lo + k] == last and memcmp(tokens + lo + k, head, head_bytes) == 0:
                    return lo + k
        j = lo - 1
    while j > 0:
        if a[j] == last and memcmp(tokens + j, head, head_bytes) == 0:
            return j
        j -= 1
    return 0


cdef Py_ssize_t ngram_simple_draft(const token_t* tokens, Py_ssize_t cur_len, token_t sampled,
                                   Py_ssize_t n, Py_ssize_t m, Py_ssize_t n_max,
                                   token_t* out) noexcept nogil:
    """Write the draft for ``tokens[0..cur_len) + [sampled]`` to ``out`` (at most n_max); return its length.

    The pattern is the last n-1 history tokens plus ``sampled``; start positions are scanned from
    cur_len-n-1 down to 1 (position 0 is never a match upstream) and the first hit wins.
    """
    cdef Py_ssize_t match_pos, copy_max
    # Needs n + m + 1 tokens before anything can be drafted.
    if cur_len <= n + m + 1:
        return 0
    match_pos = find_last(tokens, cur_len - n - 1, tokens + cur_len - n + 1, sampled, n)
    if match_pos == 0:
        return 0
    copy_max = cur_len - (match_pos + n)
    if copy_max > m:
        copy_max = m
    if copy_max < n:                         # upstream rejects drafts shorter than the n-gram
        return 0
    # common_speculative_draft truncates to the caller's n_max after the fact.
    if copy_max > n_max:
        copy_max = n_max
    memcpy(out, tokens + match_pos + n, <size_t> copy_max * sizeof(token_t))
    return copy_max


@cython.final
cdef class NgramSimple(Drafter):
    """Self-speculation by n-gram lookup, llama.cpp's ``ngram-simple``.

    Parameters
    ----------
    size_n : int
        Length of the n-gram to look up: the last ``size_n - 1`` tokens of the history plus the
        token just sampled.
    size_m : int
        Maximum draft length: the tokens after the most recent earlier occurrence of the n-gram.
        A draft shorter than ``size_n`` is not offered, and nothing is drafted before the history
        holds more than ``size_n + size_m + 1`` tokens.

    Stateless: every sequence id shares the same (empty) state.
    """
    cdef readonly int size_n
    cdef readonly int size_m

    def __init__(self, size_n=12, size_m=48):
        # Upstream stores both as uint16_t.
        self.size_n = _int_param("size_n", size_n, 1, 0xFFFF)
        self.size_m = _int_param("size_m", size_m, 1, 0xFFFF)

    cdef Py_ssize_t _draft(self, int seq, const token_t* history, Py_ssize_t n_history,
                           token_t id_last, Py_ssize_t n_max, token_t* out) except -1 nogil:
        return ngram_simple_draft(history, n_history, id_last, self.size_n, self.size_m, n_max, out)

    def reset(self):
        """Drop all state (there is none: ngram-simple is stateless)."""

    def __repr__(self):
        return f"NgramSimple(size_n={self.size_n}, size_m={self.size_m})"
