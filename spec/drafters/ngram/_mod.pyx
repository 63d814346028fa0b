"""ngram-mod: a fixed-size hash table from n-gram to the token that last followed it.

Same algorithm, parameters and reset rules as llama.cpp's ``common_ngram_mod`` (common/ngram-mod.cpp)
driven by ``common_speculative_impl_ngram_mod`` (common/speculative.cpp). The polynomial hash is
rolled (one multiply-add per token instead of ``n_match``); modulo 2**64 it gives bit-identical
slots, so the table contents and every draft are the same as upstream's.
"""
cimport cython
from libc.stdint cimport int64_t, uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memset

from spec._c.typedefs cimport token_t
from spec.drafters._base cimport Drafter


cdef extern from *:
    # Upstream's multiplier (a 64-bit LCG constant); as an unsigned literal so C never sees a
    # signed overflow.
    """
    #define SPEC_NGRAM_MOD_MUL 6364136223846793005ULL
    """
    const uint64_t MUL "SPEC_NGRAM_MOD_MUL"

cdef enum:
    EMPTY = -1              # an unused table slot (common_ngram_mod::EMPTY)
    CHUNK = 32              # draft() indexes new history only once more than this many tokens arrived
    LIMIT = 1024            # bound of n_match, n_max, n_min (llama.cpp's --spec-ngram-mod-* checks)

DEFAULT_TABLE_SIZE = 4 * 1024 * 1024     # upstream's fixed 4 Mi entries (16 MiB)


cdef struct ModSeq:         # per-sequence state (common_speculative_impl_ngram_mod::seq_info)
    Py_ssize_t i_last       # history positions below this have been added to the table
    Py_ssize_t n_draft_last # length of the last draft before the caller's n_max cut; 0 = none
    int n_low               # consecutive accepts with acceptance fraction < 1/4


cdef inline uint64_t tok_u64(token_t t) noexcept nogil:
    # size_t arithmetic on an int32 token: sign-extend, then wrap (what C++ does in idx()).
    return <uint64_t> <int64_t> t


cdef inline uint64_t hash_ngram(const token_t* tokens, Py_ssize_t n) noexcept nogil:
    """common_ngram_mod::idx before the modulo: h = h*MUL + tok over n tokens, mod 2**64."""
    cdef uint64_t h = 0
    cdef Py_ssize_t i
    for i in range(n):
        h = h * MUL + tok_u64(tokens[i])
    return h


@cython.final
cdef class NgramMod(Drafter):
    """Self-speculation from a hash table of n-grams, llama.cpp's ``ngram-mod``.

    One table of ``table_size`` int32 entries is shared by every sequence id, like upstream: the
    slot of an n-gram (``hash % table_size``) holds the token that most recently followed it (last
    writer wins; collisions are not detected). A draft chains lookups from the last ``n_match - 1``
    history tokens plus the token just sampled.

    Parameters
    ----------
    n_match : int
        N-gram length hashed for each lookup, in [1, 1024] (upstream default 24).
    n_max : int
        Longest draft, in [0, 1024]. A call's own ``n_max`` then cuts the draft further (upstream's
        ``common_speculative_draft`` truncation); the acceptance statistics below use the length
        before that cut, as upstream does.
    n_min : int
        A chain that stops before ``n_min`` tokens yields no draft, in [0, 1024]. If ``n_min >
        n_max``, a chain reaching ``n_max`` is still offered (as upstream).
    table_size : int, keyword-only
        Number of entries; upstream's is fixed at 4 Mi. Only a different size changes the drafts.

    Behaviour reproduced from upstream, on purpose:

    * ``begin(prompt)`` adds every n-gram of the prompt followed by a token, then clears the whole
      table (all sequences) if more than 25 % of its slots are used; positions it added are then
      not added again, so a reset there loses the prompt.
    * ``draft`` needs at least ``n_match`` history tokens (although it uses ``n_match - 1``) and adds
      the history's new n-grams only once more than 32 tokens arrived since the last indexing; the
      n-gram ending in the sampled token is never added.
    * After 5 accepts in a row with fewer than 1/4 of the last draft accepted, the whole table is
      cleared and only that sequence re-indexes its history (others keep their position). An accept
      after an empty draft counts neither way.
    * ``begin`` does not clear the low-acceptance streak.

    Difference: a call with ``n_max == 0`` returns an empty draft without touching any state
    (upstream treats a zero cap as "no cap").

    Not thread-safe: drafting writes to the shared table, so drive one instance from one thread.
    """
    cdef readonly int n_match
    cdef readonly int n_max
    cdef readonly int n_min
    cdef readonly Py_ssize_t table_size
    cdef token_t* table             # table_size entries, EMPTY or a token
    cdef Py_ssize_t used            # entries != EMPTY (common_ngram_mod::used)
    cdef uint64_t mask              # table_size - 1 when it is a power of two, else 0
    cdef uint64_t pow_top           # MUL**(n_match - 1): weight of a window's first token
    cdef ModSeq* seqs               # n_seq entries

    def __cinit__(self):
        self.table = NULL
        self.seqs = NULL

    def __dealloc__(self):
        free(self.table)
        free(self.seqs)

    def __init__(self, int n_match=24, int n_max=64, int n_min=48, *,
                 Py_ssize_t table_size=DEFAULT_TABLE_SIZE):
        cdef int i
        if not 1 <= n_match <= LIMIT:
            raise ValueError(f"n_match must be in [1, {LIMIT}], got {n_match}")
        if not 0 <= n_max <= LIMIT:
            raise ValueError(f"n_max must be in [0, {LIMIT}], got {n_max}")
        if not 0 <= n_min <= LIMIT:
            raise ValueError(f"n_min must be in [0, {LIMIT}], got {n_min}")
        if table_size < 1:
            raise ValueError(f"table_size must be >= 1, got {table_size}")
        if <size_t> table_size > (<size_t> -1) // sizeof(token_t):
            raise ValueError(f"table_size too large: {table_size}")
        self.n_match = n_match
        self.n_max = n_max
        self.n_min = n_min
        free(self.table)
        self.table = <token_t*> malloc(<size_t> table_size * sizeof(token_t))
        if self.table == NULL:
            raise MemoryError(f"cannot allocate the ngram-mod table ({table_size} entries)")
        self.table_size = table_size
        self.mask = <uint64_t> (table_size - 1) if (table_size & (table_size - 1)) == 0 else 0
        self.pow_top = 1
        for i in range(n_match - 1):
            self.pow_top *= MUL
        self.clear_table()

    # -- table (common_ngram_mod) ----------------------------------------------------------------

    cdef void clear_table(self) noexcept nogil:
        memset(self.table, 0xFF, <size_t> self.table_size * sizeof(token_t))   # all EMPTY (-1)
        self.used = 0

    cdef inline Py_ssize_t slot(self, uint64_t h) noexcept nogil:
        if self.mask or self.table_size == 1:
            return <Py_ssize_t> (h & self.mask)
        return <Py_ssize_t> (h % <uint64_t> self.table_size)

    cdef inline uint64_t roll(self, uint64_t h, token_t out, token_t into) noexcept nogil:
        """Hash of the window shifted by one: drop ``out`` (its first token), append ``into``."""
        return (h - tok_u64(out) * self.pow_top) * MUL + tok_u64(into)

    cdef void add_range(self, const token_t* tokens, Py_ssize_t a, Py_ssize_t b) noexcept nogil:
        """common_ngram_mod::add(tokens + i) for i in [a, b): n-gram tokens[i..i+n) -> tokens[i+n]."""
        cdef Py_ssize_t n = self.n_match, i, s
        cdef uint64_t h
        if a >= b:
            return
        h = hash_ngram(tokens + a, n)
        for i in range(a, b):
            s = self.slot(h)
            if self.table[s] == EMPTY:
                self.used += 1
            self.table[s] = tokens[i + n]
            h = self.roll(h, tokens[i], tokens[i + n])

    # -- drafter hooks -----------------------------------------------------------------------------

    cdef int _reserve(self, int n_seq) except -1:
        cdef ModSeq* grown = <ModSeq*> realloc(self.seqs, <size_t> n_seq * sizeof(ModSeq))
        if grown == NULL:
            raise MemoryError()
        memset(grown + self.n_seq, 0, <size_t> (n_seq - self.n_seq) * sizeof(ModSeq))
        self.seqs = grown
        return 0

    cdef int _begin(self, int seq, const token_t* prompt, Py_ssize_t n_prompt) except -1 nogil:
        cdef ModSeq* s = &self.seqs[seq]
        cdef Py_ssize_t n = self.n_match
        s.i_last = 0
        s.n_draft_last = 0
        if n_prompt < n:
            return 0
        self.add_range(prompt, 0, n_prompt - n)
        s.i_last = n_prompt - n
        # Occupancy above 25 %: clear (upstream compares used/size > 0.25 in double; same result).
        if 4 * <uint64_t> self.used > <uint64_t> self.table_size:
            self.clear_table()
        return 0

    cdef Py_ssize_t _draft(self, int seq, const token_t* history, Py_ssize_t n_history,
                           token_t id_last, Py_ssize_t n_max, token_t* out) except -1 nogil:
        cdef ModSeq* s = &self.seqs[seq]
        cdef Py_ssize_t n = self.n_match, i, m
        cdef token_t tok
        cdef uint64_t h
        # window[0..n) = last n-1 history tokens + id_last; window[n + i] = i-th drafted token.
        cdef token_t window[2 * LIMIT]
        s.n_draft_last = 0
        if n_history < n:
            return 0
        if s.i_last + CHUNK < n_history:
            self.add_range(history, s.i_last, n_history - n)
            s.i_last = n_history - n
        for i in range(n - 1):
            window[i] = history[n_history - n + 1 + i]
        window[n - 1] = id_last
        h = hash_ngram(window, n)
        m = self.n_max
        for i in range(self.n_max):
            tok = self.table[self.slot(h)]
            if tok == EMPTY:
                if i < self.n_min:
                    return 0
                m = i
                break
            window[n + i] = tok
            h = self.roll(h, window[i], tok)
        s.n_draft_last = m
        if m > n_max:
            m = n_max
        for i in range(m):
            out[i] = window[n + i]
        return m

    cdef int _accept(self, int seq, Py_ssize_t n_accepted) except -1 nogil:
        cdef ModSeq* s = &self.seqs[seq]
        if s.n_draft_last <= 0:
            return 0
        # n_accepted / n_draft_last < 0.25, exactly, in integers.
        if 4 * n_accepted < s.n_draft_last:
            s.n_low += 1
            if s.n_low >= 5:
                self.clear_table()
                s.n_low = 0
                s.i_last = 0
        else:
            s.n_low = 0
        return 0

    # -- Python level ------------------------------------------------------------------------------

    @property
    def n_used(self):
        """Number of table entries holding a token."""
        return self.used

    @property
    def occupancy(self):
        """Fraction of table entries holding a token (upstream clears the table above 0.25)."""
        return self.used / self.table_size

    def reset(self):
        """Clear the table and every sequence's state (indexing position, last draft, low streak)."""
        with self.lock:
            self.check_free()
            self.clear_table()
            if self.seqs != NULL:
                memset(self.seqs, 0, <size_t> self.n_seq * sizeof(ModSeq))

    def _slot_of(self, ngram):
        """Table slot of an ``n_match``-token n-gram (upstream's ``idx``); for tests."""
        toks = [int(t) for t in ngram]
        if len(toks) != self.n_match:
            raise ValueError(f"ngram must hold n_match={self.n_match} tokens, got {len(toks)}")
        cdef uint64_t h = 0
        for t in toks:
            h = h * MUL + tok_u64(<token_t> t)
        return self.slot(h)

    def _get(self, Py_ssize_t slot):
        """Token stored at ``slot`` (-1 if empty); for tests."""
        if not 0 <= slot < self.table_size:
            raise IndexError(f"slot {slot} out of range [0, {self.table_size})")
        return self.table[slot]

    def _seq_state(self, int seq_id):
        """(i_last, n_draft_last, n_low) of ``seq_id``; for tests."""
        self._check_seq(seq_id, need_begun=False)
        if seq_id >= self.n_seq:
            raise ValueError(f"unknown sequence id {seq_id}")
        cdef ModSeq* s = &self.seqs[seq_id]
        return s.i_last, s.n_draft_last, s.n_low

    def __repr__(self):
        return (f"NgramMod(n_match={self.n_match}, n_max={self.n_max}, n_min={self.n_min}"
                + (f", table_size={self.table_size})" if self.table_size != DEFAULT_TABLE_SIZE else ")"))
