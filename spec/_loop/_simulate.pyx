"""Offline replay of a token stream through a drafter, as if a model had produced it.

:func:`simulate` measures what a drafter would achieve under greedy verification without running a
model: acceptance statistics are exact for that stream, and the drafter's own cost per call is
timed. The loop runs without the GIL through the drafter's C-level methods, so a Python subclass
that overrides only the Python ``draft`` method is replayed through its C hooks, not its override.

Given a verify-cost table (seconds of a verify batch by rows, as the engine measures it), it also
prices the replay: the speedup over plain decoding of verifying every full draft, of the engine's
own planner (``n_draft="auto"``, run on the stream), and of the hindsight oracle that knows at
every step how many drafted tokens the target will accept.
"""
from libc.stdint cimport int64_t
from libc.string cimport memset
from libcpp.vector cimport vector
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

import numpy as np
cimport numpy as cnp

from spec._loop._plan cimport (EXPLORE_EVERY, CostModel, DraftPolicy, PlanBuffers, checked_tokens,
                         cost_init, cost_update, plan_drafts, plan_verify, policy_observe,
                         policy_start)
from spec._c.typedefs cimport token_t
from spec.drafters._base cimport Drafter

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

    With a ``cost_table`` (nan otherwise), speedups over plain decoding of the same stream, each
    as plain time / speculative time under the table:

        fixed_speedup: verifying every full draft (the replay above).
        policy_speedup: the engine's planner (``n_draft="auto"``, up to ``n_max``) on the stream.
        oracle_speedup: the physical limit for this drafter and table: the drafter drafts at
            every position, and the draft prefix verified at each step is chosen with hindsight
            (knowing how many tokens the target accepts) to minimize the total verify time.
        step_oracle_speedup: a planner told each step's acceptance in advance, choosing that
            step's prefix for the best tokens per second without looking further ahead: the
            most better acceptance estimates could give the planner (up to the few streams
            where its choices happen to leave better positions for later steps).
        policy_mean_accept_len, oracle_mean_accept_len: their tokens per verify step.
    """

    __slots__ = ("n_calls", "n_generated", "n_drafted", "n_accepted", "mean_accept_len",
                 "accept_rate", "accept_hist", "us_per_call", "us_per_call_all", "drafts",
                 "fixed_speedup", "policy_speedup", "oracle_speedup", "step_oracle_speedup",
                 "policy_mean_accept_len", "oracle_mean_accept_len")

    def __init__(self, *, n_calls, n_generated, n_drafted, n_accepted, accept_hist,
                 us_per_call_all, drafts=None, fixed_speedup=float("nan"),
                 policy_speedup=float("nan"), oracle_speedup=float("nan"),
                 step_oracle_speedup=float("nan"), policy_mean_accept_len=float("nan"),
                 oracle_mean_accept_len=float("nan")):
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
        self.fixed_speedup = fixed_speedup
        self.policy_speedup = policy_speedup
        self.oracle_speedup = oracle_speedup
        self.step_oracle_speedup = step_oracle_speedup
        self.policy_mean_accept_len = policy_mean_accept_len
        self.oracle_mean_accept_len = oracle_mean_accept_len

    def as_dict(self):
        """The scalar statistics as a dict (for tables and JSON)."""
        return {k: getattr(self, k) for k in
                ("n_calls", "n_generated", "n_drafted", "n_accepted", "mean_accept_len",
                 "accept_rate", "us_per_call", "fixed_speedup", "policy_speedup",
                 "oracle_speedup", "step_oracle_speedup", "policy_mean_accept_len",
                 "oracle_mean_accept_len")}

    def __repr__(self):
        return (f"SimResult(n_calls={self.n_calls}, n_drafted={self.n_drafted}, "
                f"n_accepted={self.n_accepted}, mean_accept_len={self.mean_accept_len:.3f}, "
                f"accept_rate={self.accept_rate:.3f}, us_per_call={self.us_per_call:.2f})")


cdef inline int64_t now_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <int64_t> ts.tv_sec * 1000000000 + ts.tv_nsec


cdef inline Py_ssize_t _matched(const token_t* draft, Py_ssize_t n,
                                const token_t* truth) noexcept nogil:
    cdef Py_ssize_t k = 0
    while k < n and draft[k] == truth[k]:
        k += 1
    return k


cdef struct Priced:
    double seconds          # verify time of the replay under the cost table
    Py_ssize_t n_steps
    Py_ssize_t n_tokens     # tokens generated by the steps


cdef int _replay_policy(Drafter drafter, int seq, const token_t* t, Py_ssize_t n_tok,
                        Py_ssize_t p, Py_ssize_t n_max, const double* table, token_t* out,
                        Priced* res) except -1 nogil:
    """The engine's auto planner on the stream, one sequence (the steps of _engine._step)."""
    cdef CostModel cost
    cdef DraftPolicy policy
    cdef DraftPolicy* policy_ptr = &policy
    cdef double alpha, job_alpha = 0.6          # Loop's prior, as a fresh engine starts
    cdef int avail, forced, length, run, rows, n_checked, n_matched
    cdef PlanBuffers plan
    cdef Py_ssize_t i = p, n, k, a
    cdef bint explore
    plan.policy = &policy_ptr
    plan.alpha = &alpha
    plan.run = &run
    plan.avail = &avail
    plan.forced = &forced
    plan.lengths = &length
    cost_init(&cost, 0.43)
    for rows in range(1, n_max + 2):            # calibrated: every size measured once
        cost_update(&cost, rows, table[rows])
    policy_start(&policy, job_alpha)
    drafter.begin_seq(seq, t, p)
    while i < n_tok - 1:
        explore = cost.clock % EXPLORE_EVERY == EXPLORE_EVERY - 1
        avail = <int> min(n_max, n_tok - 1 - i)
        plan_drafts(plan, 1, &cost, explore, job_alpha, True)    # a model-free drafter: shadow
        n = 0
        if avail > 0:
            n = min(drafter.draft_seq(seq, t, i, t[i], avail, out), <Py_ssize_t> avail)
        avail = <int> n
        plan_verify(plan, 1, &cost, explore)
        k = length
        a = _matched(out, k, t + i + 1)
        rows = <int> k + 1
        res.seconds += table[rows]
        cost_update(&cost, rows, table[rows])
        n_checked = checked_tokens(out, <int> n, <int> k, <int> a, t + i + 1, &n_matched)
        policy_observe(&policy, &job_alpha, n_checked, n_matched)
        if k > 0:
            drafter.accept_seq(seq, a)
        res.n_steps += 1
        res.n_tokens += a + 1
        i += a + 1
    drafter.end_seq(seq, t + p, n_tok - p)
    return 0


cdef int _replay_oracle(Drafter drafter, int seq, const token_t* t, Py_ssize_t n_tok,
                        Py_ssize_t p, Py_ssize_t n_max, const double* table, token_t* out,
                        Priced* res, Priced* step_res) except -1 nogil:
    """The fastest schedule of verified draft lengths, knowing how many tokens the target
    accepts: the drafter drafts (up to n_max) at EVERY position of the stream, and dynamic
    programming over positions picks, at each step, the prefix to verify (longer than the
    accepted part only where that batch is cheaper), minimizing the total verify time.
    step_res: the step oracle (_step_oracle) on the same drafts."""
    cdef Py_ssize_t n_pos = n_tok - p, i, j, k, a, nxt
    cdef vector[Py_ssize_t] drafted, accepted, choice
    cdef vector[double] best          # best[j]: least time from position p + j to the end
    cdef double c
    drafted.resize(n_pos)
    accepted.resize(n_pos)
    choice.resize(n_pos)
    best.resize(n_pos + 1)
    drafter.begin_seq(seq, t, p)
    for i in range(p, n_tok - 1):
        k = min(n_max, n_tok - 1 - i)
        drafted[i - p] = min(drafter.draft_seq(seq, t, i, t[i], k, out), k)
        accepted[i - p] = _matched(out, drafted[i - p], t + i + 1)
        drafter.accept_seq(seq, accepted[i - p])
    drafter.end_seq(seq, t + p, n_tok - p)
    best[n_pos - 1] = 0
    best[n_pos] = 0
    for j in range(n_pos - 2, -1, -1):
        best[j] = -1
        for k in range(drafted[j] + 1):
            nxt = min(j + min(k, accepted[j]) + 1, n_pos - 1)
            c = table[k + 1] + best[nxt]
            if best[j] < 0 or c < best[j] * (1.0 - 1e-12):
                best[j] = c
                choice[j] = k
    res.seconds = best[0]
    j = 0
    while j < n_pos - 1:
        a = min(choice[j], accepted[j])
        res.n_steps += 1
        res.n_tokens += a + 1
        j += a + 1
    _step_oracle(drafted.data(), accepted.data(), n_pos, table, step_res)
    return 0


cdef void _step_oracle(const Py_ssize_t* drafted, const Py_ssize_t* accepted, Py_ssize_t n_pos,
                       const double* table, Priced* res) noexcept nogil:
    """The step oracle: told each step's acceptance (accepted[j] of the drafted[j] tokens drafted
    at position j), it verifies the prefix with the best tokens per second for that step (fewer
    rows on ties), blind to where the step leaves the next one. Between it and the planner lies
    what predicting acceptance could win; between it and the oracle, what only hindsight over
    later steps wins."""
    cdef Py_ssize_t j = 0, k, a, best_k
    while j < n_pos - 1:
        best_k = 0
        for k in range(1, drafted[j] + 1):
            if ((min(k, accepted[j]) + 1) * table[best_k + 1]
                    > (min(best_k, accepted[j]) + 1) * table[k + 1] * (1.0 + 1e-12)):
                best_k = k
        a = min(best_k, accepted[j])
        res.seconds += table[best_k + 1]
        res.n_steps += 1
        res.n_tokens += a + 1
        j += a + 1


cdef object _cost_array(object cost_table, Py_ssize_t n_max):
    """cost_table ({rows: seconds} or a sequence indexed by rows) as float64 [n_max + 2]."""
    table = np.full(n_max + 2, np.nan)
    try:
        items = cost_table.items() if isinstance(cost_table, dict) else enumerate(cost_table)
        for rows, seconds in items:
            if 1 <= int(rows) <= n_max + 1:
                table[int(rows)] = float(seconds)
    except (TypeError, ValueError):
        raise TypeError("cost_table must map batch rows to seconds (a dict, or a sequence "
                        "indexed by rows)") from None
    bad = [r for r in range(1, n_max + 2) if not (np.isfinite(table[r]) and table[r] > 0)]
    if bad:
        raise ValueError(f"cost_table needs a positive time for every batch of 1 .. n_max + 1 = "
                         f"{n_max + 1} rows; missing or bad: {bad[:8]}")
    return table


def _fresh(drafter):
    """A new drafter from a factory (:func:`spec.simulate` turns a name into one: the drafters'
    names belong to the Python API, above this layer)."""
    if not callable(drafter):
        raise TypeError(f"with cost_table, drafter must be a factory returning a new Drafter "
                        f"(or a name, through spec.simulate), got {type(drafter).__name__}")
    d = drafter()
    if not isinstance(d, Drafter):
        raise TypeError(f"the drafter factory returned {type(d).__name__}, not a Drafter")
    return d


def simulate(drafter, tokens, *, Py_ssize_t n_max, Py_ssize_t prompt_len=0,
             bint record=False, int seq_id=0, cost_table=None):
    """Replay ``tokens`` through ``drafter`` with greedy verification; returns a :class:`SimResult`.

    The first ``p = max(prompt_len, 1)`` tokens are the prompt (a model needs at least one token of
    context before it samples; a stream shorter than that is all prompt): ``begin(tokens[:p])``.
    Then, with ``i = p``, every step drafts up to ``min(n_max, len(tokens) - 1 - i)`` tokens from
    ``history = tokens[:i]`` and ``id_last = tokens[i]``, accepts the longest prefix of the draft
    equal to ``tokens[i+1:]``, reports it with ``accept``, and moves on ``i += n_accepted + 1``,
    until ``tokens[i]`` is the last token of the stream. Finally ``end(tokens[p:])``.

    ``seq_id`` selects the drafter sequence used (reserved if needed). The drafter keeps whatever
    it learned; call ``reset()`` between unrelated replays if it has one.

    ``cost_table`` (rows → seconds of a verify batch, for 1 .. n_max + 1 rows, e.g. an engine's
    ``Loop.cost_model["table"]``) also prices the replay: see :class:`SimResult`'s speedups. The
    policy and oracle replays each need a drafter that has not seen the stream (it would know
    the future), so ``drafter`` is then a name (``"suffix"``) or a factory returning a new one.
    (A name is turned into a factory by :func:`spec.simulate`, the public entry point; called
    directly, this module's ``simulate`` takes a factory.)
    """
    cdef Drafter shared
    if isinstance(drafter, Drafter):
        # the drafter's lock: threads sharing it take turns (the replay mutates its state)
        shared = <Drafter> drafter
        with shared.lock:
            return _simulate(drafter, tokens, n_max, prompt_len, record, seq_id, cost_table)
    return _simulate(drafter, tokens, n_max, prompt_len, record, seq_id, cost_table)


def _simulate(drafter, tokens, Py_ssize_t n_max, Py_ssize_t prompt_len, bint record, int seq_id,
              cost_table):
    if n_max < 0:
        raise ValueError(f"n_max must be >= 0, got {n_max}")
    factory = None
    if cost_table is not None:
        if isinstance(drafter, Drafter):
            raise TypeError("with cost_table, pass a drafter name or a factory (e.g. "
                            "lambda: spec.SuffixTree()): each priced replay needs a fresh "
                            "drafter, as one that replayed the stream has learned its future")
        factory = drafter
        drafter = _fresh(factory)
    elif not isinstance(drafter, Drafter):
        raise TypeError(f"drafter must be a Drafter, got {type(drafter).__name__}")
    table_arr = _cost_array(cost_table, n_max) if cost_table is not None else None
    (<Drafter> drafter).check_seq(seq_id, False)   # the bound Drafter.begin applies (and free)
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
    cdef Drafter d = <Drafter> drafter
    d.reserve_seqs(seq_id + 1)

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
    cdef double fixed_s = 0
    cdef const double* table = NULL
    if table_arr is not None:
        table = <const double*> cnp.PyArray_DATA(table_arr)
    with nogil:
        d.begin_seq(seq_id, t, p)
        while i < n_tok - 1:
            cap = min(n_max, n_tok - 1 - i)
            t0 = now_ns()
            n = d.draft_seq(seq_id, t, i, t[i], cap, out)
            times_ns.push_back(now_ns() - t0)
            if n > cap:                      # a drafter overstepping its budget: keep the budget
                n = cap
            k = 0
            while k < n and out[k] == t[i + 1 + k]:
                k += 1
            d.accept_seq(seq_id, k)
            if table != NULL:
                fixed_s += table[n + 1]
            if record:
                rec_tokens.insert(rec_tokens.end(), out, out + n)
                rec_ends.push_back(<Py_ssize_t> rec_tokens.size())
            n_calls += 1
            n_drafted += n
            n_accepted += k
            hist[k] += 1
            i += k + 1
        d.end_seq(seq_id, t + p, n_tok - p)

    priced = {}
    cdef Priced pol, ora, step
    cdef double plain_s
    if table != NULL and n_tok - 1 > p:
        memset(&pol, 0, sizeof(Priced))
        memset(&ora, 0, sizeof(Priced))
        memset(&step, 0, sizeof(Priced))
        d = _fresh(factory)
        d.reserve_seqs(seq_id + 1)
        with nogil:
            _replay_policy(d, seq_id, t, n_tok, p, n_max, table, out, &pol)
        d = _fresh(factory)
        d.reserve_seqs(seq_id + 1)
        with nogil:
            _replay_oracle(d, seq_id, t, n_tok, p, n_max, table, out, &ora, &step)
        plain_s = (n_tok - 1 - p) * table[1]
        priced = dict(fixed_speedup=plain_s / fixed_s, policy_speedup=plain_s / pol.seconds,
                      oracle_speedup=plain_s / ora.seconds,
                      step_oracle_speedup=plain_s / step.seconds,
                      policy_mean_accept_len=<double> pol.n_tokens / pol.n_steps,
                      oracle_mean_accept_len=<double> ora.n_tokens / ora.n_steps)

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
                     drafts=drafts, **priced)
