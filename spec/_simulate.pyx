"""Offline replay of a token stream through a drafter, as if a model had produced it.

:func:`simulate` measures what a drafter would achieve under greedy verification without running a
model: acceptance statistics are exact for that stream, and the drafter's own cost per call is
timed. The loop runs without the GIL through the drafter's C-level methods, so a Python subclass
that overrides only the Python ``draft`` method is replayed through its C hooks, not its override.
"""
from libc.stdint cimport int64_t
from libcpp.vector cimport vector
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

import numpy as np
cimport numpy as cnp

from spec._typedefs cimport token_t
from spec.ngram._base cimport Drafter

cnp.import_array()


class SimResult:
    """Outcome of :func:`simulate`.

    Attributes:
        n_calls: draft calls = verify steps.
        n_generated: tokens the model produced in the replay (``len(tokens) - prompt``).
        n_drafted: tokens proposed over all calls.
        n_accepted: proposed tokens that matched the stream.
        mean_accept_len: mean tokens gained per verify step (accepted + 1); nan without steps.
        accept_rate: ``n_accepted / n_drafted``; nan if nothing was drafted.
        accept_hist: int64 array of length ``n_max + 1``; ``accept_hist[k]`` = steps that accepted
            exactly ``k`` tokens (so its sum is ``n_calls``).
        us_per_call: median wall time of one draft call in µs; nan without calls.
        us_per_call_all: float64 array, the time of every draft call in µs.
        drafts: with ``record=True`` a list of int32 arrays, the draft of every call (possibly
            empty); else None.
    """

    __slots__ = ("n_calls", "n_generated", "n_drafted", "n_accepted", "mean_accept_len",
                 "accept_rate", "accept_hist", "us_per_call", "us_per_call_all", "drafts")

    def __init__(self, *, n_calls, n_generated, n_drafted, n_accepted, accept_hist,
                 us_per_call_all, drafts=None):
        self.n_calls = n_calls
        self.n_generated = n_generated
        self.n_drafted = n_drafted
        self.n_accepted = n_accepted
        self.accept_hist = accept_hist
        self.us_per_call_all = us_per_call_all
        self.drafts = drafts
        self.mean_accept_len = (n_accepted + n_calls) / n_calls if n_calls else float("nan")
        self.accept_rate = n_accepted / n_drafted if n_drafted else float("nan")
        self.us_per_call = float(np.median(us_per_call_all)) if n_calls else float("nan")

    def as_dict(self):
        """The scalar statistics as a dict (for tables and JSON)."""
        return {k: getattr(self, k) for k in
                ("n_calls", "n_generated", "n_drafted", "n_accepted", "mean_accept_len",
                 "accept_rate", "us_per_call")}

    def __repr__(self):
        return (f"SimResult(n_calls={self.n_calls}, n_drafted={self.n_drafted}, "
                f"n_accepted={self.n_accepted}, mean_accept_len={self.mean_accept_len:.3f}, "
                f"accept_rate={self.accept_rate:.3f}, us_per_call={self.us_per_call:.2f})")


cdef inline int64_t now_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <int64_t> ts.tv_sec * 1000000000 + ts.tv_nsec


def simulate(Drafter drafter not None, tokens, *, Py_ssize_t n_max, Py_ssize_t prompt_len=0,
             bint record=False, int seq_id=0):
    """Replay ``tokens`` through ``drafter`` with greedy verification; returns a :class:`SimResult`.

    The first ``p = max(prompt_len, 1)`` tokens are the prompt (a model needs at least one token of
    context before it samples; a stream shorter than that is all prompt): ``begin(tokens[:p])``.
    Then, with ``i = p``, every step drafts up to ``min(n_max, len(tokens) - 1 - i)`` tokens from
    ``history = tokens[:i]`` and ``id_last = tokens[i]``, accepts the longest prefix of the draft
    equal to ``tokens[i+1:]``, reports it with ``accept``, and moves on ``i += n_accepted + 1``,
    until ``tokens[i]`` is the last token of the stream. Finally ``end(tokens[p:])``.

    ``seq_id`` selects the drafter sequence used (reserved if needed). The drafter keeps whatever
    it learned; call ``reset()`` between unrelated replays if it has one.
    """
    if n_max < 0:
        raise ValueError(f"n_max must be >= 0, got {n_max}")
    drafter.check_seq(seq_id, False)     # the bound Drafter.begin applies (and not in use)
    arr = np.asarray(tokens)
    if arr.ndim != 1:
        raise ValueError(f"tokens must be 1-D, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"tokens must hold integer token ids, got dtype {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() > 0x7FFFFFFF):
        raise ValueError("tokens holds token ids outside [0, 2**31)")
    cdef const token_t[::1] toks = np.ascontiguousarray(arr, dtype=np.int32)
    cdef Py_ssize_t n_tok = toks.shape[0]
    if not 0 <= prompt_len <= n_tok:
        raise ValueError(f"prompt_len must be in [0, len(tokens)={n_tok}], got {prompt_len}")
    drafter.reserve_seqs(seq_id + 1)

    cdef Py_ssize_t p = min(max(prompt_len, 1), n_tok)
    cdef Py_ssize_t buf_len = max(min(n_max, n_tok), 1)
    cdef token_t[::1] buf = np.empty(buf_len, dtype=np.int32)
    cdef const token_t* t = &toks[0] if n_tok else NULL
    cdef token_t* out = &buf[0]
    hist_arr = np.zeros(n_max + 1, dtype=np.int64)
    cdef int64_t[::1] hist = hist_arr
    cdef vector[int64_t] times_ns
    cdef vector[token_t] rec_tokens          # all drafts, concatenated (record=True)
    cdef vector[Py_ssize_t] rec_ends         # end offset of each draft in rec_tokens
    cdef Py_ssize_t i = p, cap, n, k, n_calls = 0, n_drafted = 0, n_accepted = 0
    cdef int64_t t0

    if n_tok > p:
        times_ns.reserve(n_tok - p)          # no reallocation between timed calls
    with nogil:
        drafter.begin_seq(seq_id, t, p)
        while i < n_tok - 1:
            cap = min(n_max, n_tok - 1 - i)
            t0 = now_ns()
            n = drafter.draft_seq(seq_id, t, i, t[i], cap, out)
            times_ns.push_back(now_ns() - t0)
            if n > cap:                      # a drafter overstepping its budget: keep the budget
                n = cap
            k = 0
            while k < n and out[k] == t[i + 1 + k]:
                k += 1
            drafter.accept_seq(seq_id, k)
            if record:
                rec_tokens.insert(rec_tokens.end(), out, out + n)
                rec_ends.push_back(<Py_ssize_t> rec_tokens.size())
            n_calls += 1
            n_drafted += n
            n_accepted += k
            hist[k] += 1
            i += k + 1
        drafter.end_seq(seq_id, t + p, n_tok - p)

    us_all = np.asarray(<int64_t[:times_ns.size()]> times_ns.data(), dtype=np.float64) / 1e3 \
        if times_ns.size() else np.zeros(0, dtype=np.float64)
    drafts = None
    cdef Py_ssize_t start = 0, j
    if record:
        flat = np.asarray(<token_t[:rec_tokens.size()]> rec_tokens.data()).copy() \
            if rec_tokens.size() else np.zeros(0, dtype=np.int32)
        drafts = []
        for j in range(<Py_ssize_t> rec_ends.size()):
            drafts.append(flat[start:rec_ends[j]].copy())
            start = rec_ends[j]
    return SimResult(n_calls=n_calls, n_generated=n_tok - p, n_drafted=n_drafted,
                     n_accepted=n_accepted, accept_hist=hist_arr, us_per_call_all=us_all,
                     drafts=drafts)
