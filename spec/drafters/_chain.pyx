"""A chain of drafters, as the reference ``common/speculative.cpp`` runs several speculative
types in one configuration.

Stages are tried in order each step: the first whose draft reaches its ``n_min`` (at least one
token) wins and its draft is the chain's; a shorter draft falls through to the next stage.
Every stage that drafted in a step is told how much of its draft the target accepted: the
winner its accepted count, a stage that fell through the length of its draft's common prefix
with the accepted tokens (those tokens were verified, whoever drafted them). Every stage
begins, ends and resets with the chain, so each sees the whole accepted stream. Statistics are
kept per stage in the reference's terms (calls to begin / draft / accept, drafts and tokens
generated and accepted, time in each call).

One stage may be a model-based session (spec.sessions: a draft model, MTP, EAGLE-3, DFlash),
typically the last: it drafts only in the steps the stages before it fall through, and it hears
every step's accepted count whoever drafted (``follow_seq``), as the reference tells every
speculative type every accept. Its draft context follows the target through the session's
``after_decode`` (the engine's loop finds the session in the chain and feeds it every target
decode, the verify batches of the other stages' drafts included), so it holds the accepted
tokens whichever stage drafted them; the session drops the rejected rows before it drafts.
"""
from contextlib import contextmanager

from cpython.ref cimport PyObject
from libc.stdint cimport int64_t
from libc.string cimport memset
from libcpp.vector cimport vector
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

from spec._c.typedefs cimport token_t
from spec.drafters._base cimport Drafter


ctypedef vector[token_t] TokenVec


cdef struct StageStats:
    int64_t n_call_begin, n_call_draft, n_call_accept
    int64_t n_gen_drafts, n_acc_drafts, n_gen_tokens, n_acc_tokens
    int64_t t_begin_ns, t_draft_ns, t_accept_ns


cdef inline int64_t _now_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <int64_t> ts.tv_sec * 1000000000 + ts.tv_nsec


STAT_KEYS = ("n_call_begin", "n_call_draft", "n_call_accept", "n_gen_drafts", "n_acc_drafts",
             "n_gen_tokens", "n_acc_tokens")


def format_stages(stages: list) -> str:
    """Per-stage statistics (:meth:`DrafterChain.stage_stats`), one line per stage, in the
    reference's terms."""
    return "\n".join(
        f"statistics {s['name']}: #calls(b,g,a) = {s['n_call_begin']} {s['n_call_draft']} "
        f"{s['n_call_accept']}, #gen drafts = {s['n_gen_drafts']}, #acc drafts = "
        f"{s['n_acc_drafts']}, #gen tokens = {s['n_gen_tokens']}, #acc tokens = "
        f"{s['n_acc_tokens']}, dur(b,g,a) = {s['t_begin_ms']:.3f}, {s['t_draft_ms']:.3f}, "
        f"{s['t_accept_ms']:.3f} ms" for s in stages)


def stage_delta(after: list, before: list) -> list:
    """Per-stage statistics accumulated between two :meth:`DrafterChain.stage_stats` calls."""
    return [{k: (v if k == "name" else v - b[k]) for k, v in a.items()}
            for a, b in zip(after, before)]


def _per_stage(str name, value, int n):
    values = (value,) * n if isinstance(value, int) else tuple(value)
    if len(values) != n or any(isinstance(v, bool) or not isinstance(v, int) or v < 0
                               for v in values):
        raise ValueError(f"{name} must be an integer >= 0 or {n} of them, got {value!r}")
    return values


@contextmanager
def _session_turn(session):
    """A chain's Python-level call: with a session stage, under the session's two context locks
    once it is checked usable, as the session's own methods run."""
    if session is None:
        yield
        return
    with session._turn():
        yield


cdef class _Stage:
    """One stage of a chain and the rest of the chain after it (so the nogil hooks walk the
    stages by recursion: a typed attribute needs no reference counting, a list would)."""
    cdef Drafter drafter
    cdef _Stage next
    cdef bint follows                # hears every step's accepted count (a model-based session)
    cdef Py_ssize_t min_len          # shortest winning draft (>= 1)
    cdef Py_ssize_t max_len          # longest draft asked (0: no cap)
    cdef StageStats stats
    cdef vector[vector[token_t]] drafts   # per sequence: this step's draft
    cdef vector[char] drafted        # per sequence: drafted this step

    cdef int reserve(self, int n_seq) except -1:
        self.drafter.reserve_seqs(n_seq)
        if <size_t> n_seq > self.drafts.size():
            self.drafts.resize(n_seq)
            self.drafted.resize(n_seq, 0)
        if self.next is not None:
            self.next.reserve(n_seq)
        return 0

    cdef void clear(self, int seq) noexcept nogil:
        self.drafted[seq] = 0
        if self.next is not None:
            self.next.clear(seq)

    cdef int begin(self, int seq, const token_t* prompt, Py_ssize_t n_prompt) except -1 nogil:
        cdef int64_t t0 = _now_ns()
        self.drafter.begin_seq(seq, prompt, n_prompt)
        self.stats.t_begin_ns += _now_ns() - t0
        self.stats.n_call_begin += 1
        if self.next is not None:
            self.next.begin(seq, prompt, n_prompt)
        return 0

    cdef Py_ssize_t draft(self, int seq, const token_t* history, Py_ssize_t n_history,
                          token_t id_last, Py_ssize_t n_max, token_t* out, PyObject** winner,
                          TokenVec** win_draft) except -1 nogil:
        cdef Py_ssize_t k = n_max if self.max_len == 0 else min(n_max, self.max_len)
        cdef int64_t t0 = _now_ns()
        cdef Py_ssize_t n = self.drafter.draft_seq(seq, history, n_history, id_last, k, out)
        self.stats.t_draft_ns += _now_ns() - t0
        self.stats.n_call_draft += 1
        self.drafts[seq].assign(out, out + n)
        self.drafted[seq] = 1
        if n >= self.min_len:
            winner[0] = <PyObject*> self
            win_draft[0] = &self.drafts[seq]
            self.stats.n_gen_drafts += 1
            self.stats.n_gen_tokens += n
            return n              # out holds this stage's draft: it wrote last
        if self.next is not None:
            return self.next.draft(seq, history, n_history, id_last, n_max, out, winner,
                                   win_draft)
        return 0

    cdef int accept(self, int seq, Py_ssize_t n_accepted, PyObject* winner,
                    const TokenVec* win_draft) except -1 nogil:
        cdef Py_ssize_t m = 0, n_win
        cdef int64_t t0
        cdef bint won = <PyObject*> self == winner
        if self.drafted[seq] or self.follows:
            t0 = _now_ns()
            if won:
                m = n_accepted
                self.stats.n_acc_tokens += n_accepted
                self.stats.n_acc_drafts += n_accepted > 0
                self.drafter.accept_seq(seq, m)
            elif self.follows:         # the step's count, its own draft (if any) lost
                self.drafter.follow_seq(seq, n_accepted)
            else:
                if win_draft != NULL:  # its tokens the target accepted (as the winner's)
                    n_win = min(n_accepted, <Py_ssize_t> win_draft.size())
                    while (m < n_win and m < <Py_ssize_t> self.drafts[seq].size()
                           and self.drafts[seq][m] == win_draft[0][m]):
                        m += 1
                self.drafter.accept_seq(seq, m)
            self.stats.t_accept_ns += _now_ns() - t0
            self.stats.n_call_accept += self.drafted[seq]
            self.drafted[seq] = 0
        if self.next is not None:
            self.next.accept(seq, n_accepted, winner, win_draft)
        return 0

    cdef int end(self, int seq, const token_t* output, Py_ssize_t n_output) except -1 nogil:
        self.drafted[seq] = 0
        self.drafter.end_seq(seq, output, n_output)
        if self.next is not None:
            self.next.end(seq, output, n_output)
        return 0

    cdef int reset_seq(self, int seq) except -1:
        self.drafted[seq] = 0
        self.drafter.reset_seq(seq)
        if self.next is not None:
            self.next.reset_seq(seq)
        return 0


cdef class DrafterChain(Drafter):
    """Drafters tried in order; the first draft at least ``n_min[i]`` long (and non-empty) wins.

    Parameters
    ----------
    stages : sequence of Drafter
        Model-free drafters (spec's, ``llama:<type>``, :class:`PythonDrafter`) and at most one
        model-based session (:mod:`spec.sessions`), each used by this chain only. An engine
        builds a chain with a session stage from names (``Engine(model,
        drafter="ngram-mod,draft", drafter_params={"draft_model": PATH})``); a chain built by
        hand with one is driven as the session is: ``session.process()`` after every decode
        of its target context.
    names : sequence of str, optional
        A name per stage for the statistics (default: the class names).
    n_min : int or sequence of int
        Shortest draft a stage may win with (default 0: any non-empty draft).
    n_max : int or sequence of int
        Longest draft asked of a stage (default 0: as long as the engine asks).
    """
    cdef readonly tuple stages
    cdef readonly tuple names
    cdef readonly tuple n_min
    cdef readonly tuple n_max
    cdef readonly object session     # the model-based stage (a spec.sessions.Session), or None
    cdef _Stage head
    cdef vector[PyObject*] winner    # per sequence: the winning _Stage (borrowed), or NULL
    cdef vector[TokenVec*] win_draft   # per sequence: the winning stage's draft

    def __init__(self, stages, names=None, n_min=0, n_max=0):
        from spec.drafters.sessions._sessions import Session
        stages = tuple(stages)
        if not stages:
            raise ValueError("a drafter chain needs at least one stage")
        for i, s in enumerate(stages):
            if not isinstance(s, Drafter) or isinstance(s, DrafterChain):
                raise TypeError(f"stage {i} must be a spec Drafter (not a chain), got "
                                f"{type(s).__name__}")
        if len({id(s) for s in stages}) != len(stages):
            raise ValueError("a drafter appears twice in the chain: give each stage its own")
        sessions = [i for i, s in enumerate(stages) if isinstance(s, Session)]
        if len(sessions) > 1:
            raise ValueError(f"a drafter chain holds at most one model-based session stage, "
                             f"got {len(sessions)} (stages {', '.join(map(str, sessions))}): "
                             f"each decodes its own model after every target decode")
        for i in sessions:
            stages[i]._check_live()
        n = len(stages)
        names = tuple(type(s).__name__ for s in stages) if names is None else tuple(names)
        if len(names) != n or not all(isinstance(x, str) for x in names):
            raise ValueError(f"names must be {n} strings, got {names!r}")
        mins = _per_stage("n_min", n_min, n)
        maxs = _per_stage("n_max", n_max, n)
        self.stages, self.names, self.n_min, self.n_max = stages, names, mins, maxs
        cdef _Stage node, nxt = None
        for i in reversed(range(n)):
            node = _Stage()
            node.drafter = stages[i]
            node.next = nxt
            node.min_len = max(mins[i], 1)
            node.max_len = maxs[i]
            node.follows = isinstance(stages[i], Session)
            nxt = node
        self.head = nxt
        self.session = stages[sessions[0]] if sessions else None

    # -- the C-level hooks -----------------------------------------------------------------------

    cdef int _reserve(self, int n_seq) except -1:
        self.head.reserve(n_seq)
        self.winner.resize(n_seq, NULL)
        self.win_draft.resize(n_seq, NULL)
        return 0

    cdef int _begin(self, int seq, const token_t* prompt, Py_ssize_t n_prompt) except -1 nogil:
        self.winner[seq] = NULL
        self.head.clear(seq)
        return self.head.begin(seq, prompt, n_prompt)

    cdef Py_ssize_t _draft(self, int seq, const token_t* history, Py_ssize_t n_history,
                           token_t id_last, Py_ssize_t n_max, token_t* out) except -1 nogil:
        self.winner[seq] = NULL
        self.win_draft[seq] = NULL
        self.head.clear(seq)
        return self.head.draft(seq, history, n_history, id_last, n_max, out,
                               &self.winner[seq], &self.win_draft[seq])

    cdef int _accept(self, int seq, Py_ssize_t n_accepted) except -1 nogil:
        self.head.accept(seq, n_accepted, self.winner[seq], self.win_draft[seq])
        self.winner[seq] = NULL
        self.win_draft[seq] = NULL
        return 0

    cdef int _end(self, int seq, const token_t* output, Py_ssize_t n_output) except -1 nogil:
        self.winner[seq] = NULL
        return self.head.end(seq, output, n_output)

    cdef int _reset_seq(self, int seq) except -1:
        self.winner[seq] = NULL
        return self.head.reset_seq(seq)

    # -- Python level ----------------------------------------------------------------------------

    def begin(self, prompt, int seq_id=0):
        """Start a generation for ``seq_id`` in every stage (see :meth:`Drafter.begin`)."""
        with _session_turn(self.session):
            Drafter.begin(self, prompt, seq_id)

    def draft(self, history, int id_last, Py_ssize_t n_max, int seq_id=0):
        """The first stage draft long enough (see :meth:`Drafter.draft`)."""
        with _session_turn(self.session):
            return Drafter.draft(self, history, id_last, n_max, seq_id)

    def accept(self, Py_ssize_t n_accepted, int seq_id=0):
        """Tell every stage what the target accepted of the last draft (see
        :meth:`Drafter.accept`)."""
        with _session_turn(self.session):
            Drafter.accept(self, n_accepted, seq_id)

    def end(self, output=(), int seq_id=0):
        """Finish the generation of ``seq_id`` in every stage (see :meth:`Drafter.end`)."""
        with _session_turn(self.session):
            Drafter.end(self, output, seq_id)

    def _replace_session(self, new):
        """Put ``new`` (a live session) in the session stage's place, keeping the statistics:
        the engine rebuilds its session with the contexts it replaces."""
        from spec.drafters.sessions._sessions import Session
        if self.session is None:
            raise ValueError("this chain has no session stage")
        if not isinstance(new, Session):
            raise TypeError(f"a session is needed, got {type(new).__name__}")
        new._check_live()
        node = self.head
        while (<_Stage> node).drafter is not self.session:
            node = (<_Stage> node).next
        if self.n_seq:
            (<Drafter> new).reserve_seqs(self.n_seq)
        (<_Stage> node).drafter = new
        for i in range(self.n_seq):
            (<_Stage> node).drafted[i] = 0
        self.stages = tuple(new if s is self.session else s for s in self.stages)
        self.session = new

    def _hold(self, holder):
        """Hold every stage with the chain (see :meth:`Drafter._hold`)."""
        with self.lock:
            held = []
            try:
                for s in self.stages:
                    s._hold(holder)
                    held.append(s)
                Drafter._hold(self, holder)
            except BaseException:
                for s in held:           # as it was: a stage busy elsewhere holds nothing
                    s._hold(None)
                raise

    def reset(self):
        """Reset every stage (what each learned across generations) and the statistics."""
        with self.lock:
            self.check_free()
            for s in self.stages:
                s.reset()
            node = self.head
            while node is not None:
                memset(&(<_Stage> node).stats, 0, sizeof(StageStats))
                node = (<_Stage> node).next

    def stage_stats(self) -> list:
        """Per stage: ``name``, the counters of :data:`STAT_KEYS` and ``t_begin_ms``,
        ``t_draft_ms``, ``t_accept_ms`` (cumulative since construction or :meth:`reset`)."""
        out = []
        node = self.head
        for name in self.names:
            st = (<_Stage> node).stats
            node = (<_Stage> node).next
            out.append({"name": name, "n_call_begin": st.n_call_begin,
                        "n_call_draft": st.n_call_draft, "n_call_accept": st.n_call_accept,
                        "n_gen_drafts": st.n_gen_drafts, "n_acc_drafts": st.n_acc_drafts,
                        "n_gen_tokens": st.n_gen_tokens, "n_acc_tokens": st.n_acc_tokens,
                        "t_begin_ms": st.t_begin_ns / 1e6, "t_draft_ms": st.t_draft_ns / 1e6,
                        "t_accept_ms": st.t_accept_ns / 1e6})
        return out

    def format_stats(self) -> str:
        """The statistics, one line per stage, as the reference prints them."""
        return format_stages(self.stage_stats())

    def print_stats(self):
        print(self.format_stats())

    def __repr__(self):
        return f"DrafterChain({', '.join(self.names)})"
