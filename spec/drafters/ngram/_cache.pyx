"""ngram-cache: greedy drafting from n-gram statistics of the context, earlier generations and a corpus.

Same algorithm and thresholds as llama.cpp's ``common_ngram_cache_draft`` / ``_update`` / ``_save`` /
``_load`` / ``_merge`` (common/ngram-cache.cpp) driven by ``common_speculative_impl_ngram_cache``
(common/speculative.cpp), with the hash maps replaced by open-addressing tables in C structs.
"""
cimport cython
from libc.errno cimport errno
from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t
from libc.stdio cimport FILE, fclose, fopen, fwrite
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memcpy, memset

import os

import numpy as np

from spec._c.typedefs cimport token_t
from spec.drafters._base cimport Drafter


cdef enum:
    NGRAM_MIN = 1           # LLAMA_NGRAM_MIN: shortest context/dynamic n-gram
    NGRAM_MAX = 4           # LLAMA_NGRAM_MAX: longest n-gram, and the padded key length
    NGRAM_STATIC = 2        # LLAMA_NGRAM_STATIC: n-gram length of the static cache
    NO_TOKEN = -1           # LLAMA_TOKEN_NULL: pads short n-grams; marks an empty part slot
    COUNT_MAX = 0x7FFFFFFF  # counts saturate here instead of overflowing int32
    KEY_BYTES = 16          # sizeof(common_ngram)

# Thresholds below which a draft candidate is rejected, indexed by n-gram length - 1
# (ngram-cache.cpp: draft_min_sample_size_lax/_strict, draft_min_percent_lax/_strict).
cdef int MIN_SAMPLE_LAX[4]
cdef int MIN_PERCENT_LAX[4]
cdef int MIN_SAMPLE_STRICT[4]
cdef int MIN_PERCENT_STRICT[4]
MIN_SAMPLE_LAX[:] = [2, 2, 1, 1]
MIN_PERCENT_LAX[:] = [66, 50, 50, 50]
MIN_SAMPLE_STRICT[:] = [4, 3, 2, 2]
MIN_PERCENT_STRICT[:] = [75, 66, 66, 66]


# ---------------------------------------------------------------------------------------------
# The cache: n-gram -> {token -> count}, open addressing at both levels.
# ---------------------------------------------------------------------------------------------

cdef struct Count:          # one slot of a part
    token_t token           # a token seen after the n-gram; NO_TOKEN = empty slot
    int32_t count           # how often (> 0); saturates at COUNT_MAX

cdef union PartSlots:
    Count one               # cap == 1: the only slot, inline (most n-grams have one successor)
    Count* many             # cap >= 2: heap array of cap slots, linear probing by token

cdef struct Entry:          # one n-gram and its part (common_ngram -> common_ngram_cache_part)
    token_t key[4]          # the n-gram padded with NO_TOKEN, laid out like common_ngram
    int32_t n               # distinct tokens in the part; 0 = unused slot of the n-gram table
    int32_t cap             # slots of the part, a power of two
    PartSlots slots

cdef struct Cache:          # common_ngram_cache
    Entry* entries          # cap slots, linear probing by n-gram; NULL while empty
    Py_ssize_t cap          # a power of two (0 while empty); kept at most 3/4 full
    Py_ssize_t n            # n-grams stored

cdef struct CacheSeq:       # per-sequence state (common_speculative_impl_ngram_cache::seq_info)
    Py_ssize_t cache_size   # tokens of history + id_last already fed to the context cache
    Cache context           # n-grams (1..4) of this sequence's context


cdef int raise_nomem() except -1 with gil:
    raise MemoryError()


cdef inline Count* part_slots(Entry* e) noexcept nogil:
    return &e.slots.one if e.cap == 1 else e.slots.many


cdef inline uint64_t key_hash(const token_t* k) noexcept nogil:
    # Mixes all 16 bytes. (Upstream XORs per-token Fibonacci hashes, so e.g. [a, a] and [b, b]
    # collide; the hash only changes speed, never results.)
    cdef uint64_t a = <uint64_t> <uint32_t> k[0] | (<uint64_t> <uint32_t> k[1] << 32)
    cdef uint64_t b = <uint64_t> <uint32_t> k[2] | (<uint64_t> <uint32_t> k[3] << 32)
    cdef uint64_t h = a * <uint64_t> 0x9E3779B97F4A7C15 ^ (b + <uint64_t> 0x632BE59BD9B4E019) * <uint64_t> 0xBF58476D1CE4E5B9
    h ^= h >> 31
    h *= <uint64_t> 0x94D049BB133111EB
    return h ^ (h >> 29)


cdef inline uint64_t token_hash(token_t t) noexcept nogil:
    return (<uint64_t> <uint32_t> t * <uint64_t> 0x9E3779B97F4A7C15) >> 32


cdef inline bint key_eq(const token_t* a, const token_t* b) noexcept nogil:
    return a[0] == b[0] and a[1] == b[1] and a[2] == b[2] and a[3] == b[3]


cdef Entry* cache_find(const Cache* c, const token_t* key) noexcept nogil:
    """The entry of ``key``, or NULL."""
    cdef Py_ssize_t mask, i
    cdef Entry* e
    if c.n == 0:
        return NULL
    mask = c.cap - 1
    i = <Py_ssize_t> (key_hash(key) & <uint64_t> mask)
    while True:
        e = &c.entries[i]
        if e.n == 0:
            return NULL
        if key_eq(e.key, key):
            return e
        i = (i + 1) & mask


cdef int cache_grow(Cache* c) except -1 nogil:
    """Double the n-gram table (or create it) and rehash."""
    cdef Py_ssize_t new_cap = c.cap * 2 if c.cap else 16
    cdef Py_ssize_t mask = new_cap - 1, i, j
    cdef Entry* fresh
    if <size_t> new_cap > (<size_t> -1) // sizeof(Entry):
        return raise_nomem()
    fresh = <Entry*> calloc(<size_t> new_cap, sizeof(Entry))
    if fresh == NULL:
        return raise_nomem()
    for i in range(c.cap):
        if c.entries[i].n:
            j = <Py_ssize_t> (key_hash(c.entries[i].key) & <uint64_t> mask)
            while fresh[j].n:
                j = (j + 1) & mask
            fresh[j] = c.entries[i]
    free(c.entries)
    c.entries = fresh
    c.cap = new_cap
    return 0


cdef void cache_clear(Cache* c) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(c.cap):
        if c.entries[i].n and c.entries[i].cap > 1:
            free(c.entries[i].slots.many)
    free(c.entries)
    c.entries = NULL
    c.cap = 0
    c.n = 0


cdef inline int32_t sat_add(int32_t a, int32_t b) noexcept nogil:
    return COUNT_MAX if <int64_t> a + b > COUNT_MAX else a + b


cdef Count* part_find(Entry* e, token_t t) noexcept nogil:
    """The slot of ``t`` in the part of ``e``, or NULL."""
    cdef Count* s = part_slots(e)
    cdef Py_ssize_t mask = e.cap - 1, i, k
    i = <Py_ssize_t> (token_hash(t) & <uint64_t> mask)
    for k in range(e.cap):              # bounded: small parts may be full
        if s[i].token == t:
            return &s[i]
        if s[i].token == NO_TOKEN:
            return NULL
        i = (i + 1) & mask
    return NULL


cdef int part_grow(Entry* e) except -1 nogil:
    cdef int32_t new_cap = e.cap * 2
    cdef Count* old = part_slots(e)
    cdef Count* fresh
    cdef Py_ssize_t mask = new_cap - 1, i, j
    if e.cap >= (1 << 30):
        return raise_nomem()
    fresh = <Count*> malloc(<size_t> new_cap * sizeof(Count))
    if fresh == NULL:
        return raise_nomem()
    memset(fresh, 0xFF, <size_t> new_cap * sizeof(Count))      # token = NO_TOKEN everywhere
    for i in range(e.cap):
        if old[i].token != NO_TOKEN:
            j = <Py_ssize_t> (token_hash(old[i].token) & <uint64_t> mask)
            while fresh[j].token != NO_TOKEN:
                j = (j + 1) & mask
            fresh[j] = old[i]
    if e.cap > 1:
        free(e.slots.many)
    e.slots.many = fresh
    e.cap = new_cap
    return 0


cdef int part_add(Entry* e, token_t t, int32_t count, bint keep_first) except -1 nogil:
    """Add ``count`` to ``t`` in the part of ``e`` (or, if ``keep_first``, ignore a known ``t``)."""
    cdef Count* s = part_find(e, t)
    cdef Py_ssize_t mask, i
    if s != NULL:
        if not keep_first:
            s.count = sat_add(s.count, count)
        return 0
    # Grow when full (caps 1 and 2) or past 3/4 full (caps >= 4).
    if e.n + 1 > e.cap or (e.cap >= 4 and 4 * (e.n + 1) > 3 * e.cap):
        part_grow(e)
    s = part_slots(e)
    mask = e.cap - 1
    i = <Py_ssize_t> (token_hash(t) & <uint64_t> mask)
    while s[i].token != NO_TOKEN:
        i = (i + 1) & mask
    s[i].token = t
    s[i].count = count
    e.n += 1
    return 0


cdef Entry* cache_entry(Cache* c, const token_t* key, bint* created) except NULL nogil:
    """The entry of ``key``, inserted with an empty part if absent (the caller fills it at once)."""
    cdef Py_ssize_t mask, i
    cdef Entry* e = cache_find(c, key)
    if e != NULL:
        created[0] = False
        return e
    if 4 * (c.n + 1) > 3 * c.cap:
        cache_grow(c)
    mask = c.cap - 1
    i = <Py_ssize_t> (key_hash(key) & <uint64_t> mask)
    while c.entries[i].n:
        i = (i + 1) & mask
    e = &c.entries[i]
    memcpy(e.key, key, KEY_BYTES)
    e.cap = 1
    e.slots.one.token = NO_TOKEN
    e.slots.one.count = 0
    c.n += 1
    created[0] = True
    return e


cdef int cache_add(Cache* c, const token_t* key, token_t t, int32_t count) except -1 nogil:
    """Count ``count`` more sightings of ``t`` after ``key``."""
    cdef bint created
    cdef Entry* e = cache_entry(c, key, &created)
    if created:                      # the first token goes inline: cannot fail
        e.slots.one.token = t
        e.slots.one.count = count
        e.n = 1
        return 0
    return part_add(e, t, count, False)


cdef int cache_merge(Cache* dst, Cache* src) except -1 nogil:
    """common_ngram_cache_merge: add every count of ``src`` to ``dst``."""
    cdef Py_ssize_t i, k
    cdef Entry* e
    cdef Count* s
    for i in range(src.cap):
        e = &src.entries[i]
        if e.n == 0:
            continue
        s = part_slots(e)
        for k in range(e.cap):
            if s[k].token != NO_TOKEN:
                cache_add(dst, e.key, s[k].token, s[k].count)
    return 0


cdef inline token_t seq_at(const token_t* a, Py_ssize_t na, token_t last, Py_ssize_t j) noexcept nogil:
    """Token j of ``a[0..na) + [last]``."""
    return a[j] if j < na else last


cdef int cache_update(Cache* c, int ngram_min, int ngram_max, const token_t* a, Py_ssize_t na,
                      token_t last, bint has_last) except -1 nogil:
    """common_ngram_cache_update over the whole of ``a[0..na)`` (+ ``[last]`` if ``has_last``)."""
    cdef Py_ssize_t total = na + (1 if has_last else 0), i, j
    cdef int size
    cdef token_t key[4]
    for size in range(ngram_min, ngram_max + 1):
        for i in range(size, total):
            for j in range(NGRAM_MAX):
                key[j] = seq_at(a, na, last, i - size + j) if j < size else NO_TOKEN
            cache_add(c, key, seq_at(a, na, last, i), 1)
    return 0


# ---------------------------------------------------------------------------------------------
# Drafting (common_ngram_cache_draft and its two try_draft helpers).
# ---------------------------------------------------------------------------------------------

cdef inline int64_t static_weight(Entry* part_static, token_t t) noexcept nogil:
    """100 x the static count of ``t``, or 1 without one."""
    cdef Count* s
    if part_static == NULL:
        return 1
    s = part_find(part_static, t)
    return 100 * <int64_t> s.count if s != NULL else 1


cdef token_t try_draft_primary(const Cache* c, const token_t* keys, const bint* have_key,
                               Entry* part_static, const int* min_sample,
                               const int* min_percent) noexcept nogil:
    """Longest n-gram first: the top candidate of the first part that passes the thresholds.

    Score = count x static weight; ties go to the lowest token id. The thresholds apply to the
    winner's count against the part's total, as upstream.
    """
    cdef int size, k
    cdef Entry* e
    cdef Count* s
    cdef int64_t score, best_score, best_count, total
    cdef token_t best
    for size in range(NGRAM_MAX, NGRAM_MIN - 1, -1):
        if not have_key[size - 1]:
            continue
        e = cache_find(c, keys + NGRAM_MAX * (size - 1))
        if e == NULL:
            continue
        s = part_slots(e)
        best = NO_TOKEN
        best_score = 0
        best_count = 0
        total = 0
        for k in range(e.cap):
            if s[k].token == NO_TOKEN:
                continue
            score = s[k].count * static_weight(part_static, s[k].token)
            if score > best_score or (score == best_score and s[k].token < best):
                best = s[k].token
                best_score = score
                best_count = s[k].count
            total += s[k].count
        if total < min_sample[size - 1]:
            continue
        if 100 * best_count < min_percent[size - 1] * total:
            continue
        return best
    return NO_TOKEN


cdef token_t try_draft_static(Entry* part_static) noexcept nogil:
    """The most frequent static successor if it has >= 50 % of >= 2 samples (ties: lowest id)."""
    cdef Count* s
    cdef int k
    cdef int64_t best_count = 0, total = 0
    cdef token_t best = NO_TOKEN
    if part_static == NULL:
        return NO_TOKEN
    s = part_slots(part_static)
    for k in range(part_static.cap):
        if s[k].token == NO_TOKEN:
            continue
        if s[k].count > best_count or (s[k].count == best_count and s[k].token < best):
            best = s[k].token
            best_count = s[k].count
        total += s[k].count
    if total < MIN_SAMPLE_LAX[NGRAM_STATIC - 1]:
        return NO_TOKEN
    if 100 * best_count < MIN_PERCENT_LAX[NGRAM_STATIC - 1] * total:
        return NO_TOKEN
    return best


cdef Py_ssize_t cache_draft(Cache* context, Cache* dynamic, Cache* static_, const token_t* history,
                            Py_ssize_t n_history, token_t id_last, Py_ssize_t n_draft,
                            token_t* out) noexcept nogil:
    """Draft up to n_draft tokens after ``history + [id_last]`` into ``out``; return how many."""
    cdef Py_ssize_t inp_size = n_history + 1, n = 0, total, start, j
    cdef int size
    cdef token_t key_static[4]
    cdef token_t keys[16]               # keys[4*(size-1) ..] = the last `size` tokens, padded
    cdef bint have_key[4]
    cdef Entry* part_static
    cdef token_t tok
    if inp_size < NGRAM_STATIC:
        return 0
    while n < n_draft:
        total = inp_size + n
        # Token j of inp + draft: history, then id_last, then what was drafted so far.
        key_static[0] = history[total - 2] if total - 2 < n_history else (
            id_last if total - 2 == n_history else out[total - 2 - inp_size])
        key_static[1] = id_last if n == 0 else out[n - 1]
        key_static[2] = NO_TOKEN
        key_static[3] = NO_TOKEN
        part_static = cache_find(static_, key_static)
        for size in range(NGRAM_MIN, NGRAM_MAX + 1):
            start = total - size
            # Upstream reads out of bounds (before the draft buffer) when the sequence is shorter
            # than the n-gram; no cache can hold such a key, so this is a miss.
            have_key[size - 1] = start >= 0
            if start < 0:
                continue
            for j in range(NGRAM_MAX):
                if j >= size:
                    keys[NGRAM_MAX * (size - 1) + j] = NO_TOKEN
                elif start + j < n_history:
                    keys[NGRAM_MAX * (size - 1) + j] = history[start + j]
                elif start + j == n_history:
                    keys[NGRAM_MAX * (size - 1) + j] = id_last
                else:
                    keys[NGRAM_MAX * (size - 1) + j] = out[start + j - inp_size]
        tok = try_draft_primary(context, keys, have_key, part_static, MIN_SAMPLE_LAX, MIN_PERCENT_LAX)
        if tok == NO_TOKEN:
            tok = try_draft_primary(dynamic, keys, have_key, part_static, MIN_SAMPLE_STRICT,
                                    MIN_PERCENT_STRICT)
        if tok == NO_TOKEN:
            tok = try_draft_static(part_static)
        if tok == NO_TOKEN:
            break
        out[n] = tok
        n += 1
    return n


# ---------------------------------------------------------------------------------------------
# The lookup-cache file format (common_ngram_cache_save / _load): native-endian, no header,
# repeated {int32 ngram[4], int32 n, n x {int32 token, int32 count}}.
# ---------------------------------------------------------------------------------------------

cdef enum ParseError:
    PARSE_OK = 0
    PARSE_SHORT_KEY
    PARSE_SHORT_N
    PARSE_BAD_N
    PARSE_SHORT_PART
    PARSE_BAD_COUNT
    PARSE_BAD_TOKEN
    PARSE_BAD_KEY

PARSE_MESSAGES = {
    PARSE_SHORT_KEY: "truncated record: fewer than 16 bytes left for the n-gram",
    PARSE_SHORT_N: "truncated record: no room for the token count after the n-gram",
    PARSE_BAD_N: "token count must be > 0",
    PARSE_SHORT_PART: "truncated record: fewer (token, count) pairs than its token count",
    PARSE_BAD_COUNT: "a count must be > 0",
    PARSE_BAD_TOKEN: "a token id must be >= 0",
    PARSE_BAD_KEY: "invalid n-gram: 1 to 4 token ids >= 0 padded with -1 expected",
}


cdef inline int32_t read_i32(const unsigned char* p) noexcept nogil:
    cdef int32_t v
    memcpy(&v, p, 4)
    return v


cdef bint key_valid(const token_t* key) noexcept nogil:
    cdef int j
    if key[0] < 0:
        return False
    for j in range(1, NGRAM_MAX):
        if key[j] < NO_TOKEN or (key[j] >= 0 and key[j - 1] == NO_TOKEN):
            return False
    return True


cdef int parse_cache(const unsigned char* buf, size_t size, Cache* c, size_t* where) except -1 nogil:
    """Parse a lookup-cache file into the empty ``c``; return PARSE_OK or an error (``where`` = offset).

    Like upstream, a repeated n-gram keeps its first record and a repeated token in a record its
    first count.
    """
    cdef size_t off = 0, rec, part_bytes
    cdef token_t key[4]
    cdef int32_t n, i, t, cnt
    cdef Entry* e
    cdef bint created, skip
    while off < size:
        rec = off
        where[0] = rec
        if size - off < KEY_BYTES:
            return PARSE_SHORT_KEY
        memcpy(key, buf + off, KEY_BYTES)
        if not key_valid(key):
            return PARSE_BAD_KEY
        off += KEY_BYTES
        if size - off < 4:
            return PARSE_SHORT_N
        n = read_i32(buf + off)
        where[0] = off
        if n <= 0:
            return PARSE_BAD_N
        off += 4
        part_bytes = <size_t> n * 8
        if size - off < part_bytes:
            return PARSE_SHORT_PART
        e = NULL
        skip = cache_find(c, key) != NULL       # a repeated n-gram: upstream's emplace keeps the first
        for i in range(n):
            t = read_i32(buf + off)
            cnt = read_i32(buf + off + 4)
            where[0] = off
            if t < 0:
                return PARSE_BAD_TOKEN
            if cnt <= 0:
                return PARSE_BAD_COUNT
            off += 8
            if skip:
                continue
            if e == NULL:
                e = cache_entry(c, key, &created)
                e.slots.one.token = t
                e.slots.one.count = cnt
                e.n = 1
            else:
                part_add(e, t, cnt, True)
    return PARSE_OK


cdef int write_cache(const Cache* c, FILE* f) noexcept nogil:
    """Write ``c`` in the lookup-cache format; 0, or -1 with errno set."""
    cdef Py_ssize_t i, k
    cdef Entry* e
    cdef Count* s
    for i in range(c.cap):
        e = &c.entries[i]
        if e.n == 0:
            continue
        if fwrite(e.key, KEY_BYTES, 1, f) != 1 or fwrite(&e.n, 4, 1, f) != 1:
            return -1
        s = part_slots(e)
        for k in range(e.cap):
            if s[k].token != NO_TOKEN and fwrite(&s[k], 8, 1, f) != 1:     # {token, count}
                return -1
    return 0


cdef object cache_counts(Cache* c, const token_t* key):
    cdef Entry* e = cache_find(c, key)
    cdef Count* s
    cdef int k
    result = {}
    if e == NULL:
        return result
    s = part_slots(e)
    for k in range(e.cap):
        if s[k].token != NO_TOKEN:
            result[s[k].token] = s[k].count
    return dict(sorted(result.items()))


# ---------------------------------------------------------------------------------------------

CACHE_NAMES = ("context", "dynamic", "static")


@cython.final
cdef class NgramCache(Drafter):
    """Lookup decoding from n-gram statistics, llama.cpp's ``ngram-cache``.

    Three caches map an n-gram (up to 4 tokens) to the tokens seen after it with their counts:

    * **context**, one per sequence: n-grams of length 1..4 of the tokens seen while drafting;
    * **dynamic**: n-grams of length 1..4 from earlier generations (``dynamic_path``, or built with
      :meth:`add_dynamic` / :meth:`merge_context`);
    * **static**: 2-grams from a large corpus (``static_path``, or :meth:`add_static`), used to
      weigh candidates and as a last resort.

    Each drafted token (greedy, one at a time, up to ``n_draft``) comes from the context cache
    (longest n-gram first; at least {2, 2, 1, 1} samples for n = 1..4, the top candidate holding at
    least {66, 50, 50, 50} %), else the dynamic cache (strict: {4, 3, 2, 2} samples,
    {75, 66, 66, 66} %), candidates scored count x (100 x static count of the last 2-gram, or 1);
    else the static cache alone (>= 2 samples, top >= 50 %). Nothing is drafted before the history
    holds one token.

    Parameters
    ----------
    n_draft : int
        Longest draft (upstream fixes 8). A call's ``n_max`` cuts it further.
    static_path, dynamic_path : str or os.PathLike, optional
        Lookup-cache files (as written by llama-lookup-create / llama-lookup-merge / llama-lookup)
        to load, as :meth:`load_static` / :meth:`load_dynamic`.

    Ties: upstream picks, among candidates with the same score, whichever its
    ``std::unordered_map`` iterates first, which depends on the library and insertion history.
    Here the **lowest token id** wins every tie (in the score, and for the static fallback in the
    count). Drafts are identical to upstream's whenever no such tie decides a token.

    Upstream behaviour reproduced on purpose:

    * The context cache is updated only from the *new chunk* of each ``draft`` call (history
      tokens not seen before plus the sampled token), as one sequence of its own: n-grams that
      straddle two calls are never counted, and a call after which nothing was accepted adds
      nothing.
    * ``begin`` does nothing: the context cache and its position survive across generations of a
      sequence id (a shorter new prompt is not indexed until the history outgrows the old one).
      Use :meth:`reset` to start afresh.
    * ``accept`` and ``end`` do nothing; the dynamic cache never learns on its own (call
      :meth:`merge_context`, as llama.cpp's lookup example does at the end of a generation).

    Differences: counts add up in 64 bits and saturate at 2**31 - 1 when stored (upstream's
    int32 arithmetic overflows on very large corpora); a file with a trailing partial record is
    rejected (upstream ignores fewer than 16 trailing bytes); the static and dynamic caches are
    shared by all sequences (upstream copies them per sequence; neither changes while drafting).

    Not thread-safe: drafting updates the context cache; use one thread per instance.
    """
    cdef readonly int n_draft
    cdef Cache dynamic
    cdef Cache static_
    cdef CacheSeq* seqs             # n_seq entries

    def __cinit__(self):
        self.seqs = NULL
        memset(&self.dynamic, 0, sizeof(Cache))
        memset(&self.static_, 0, sizeof(Cache))

    def __dealloc__(self):
        cdef int i
        if self.seqs != NULL:
            for i in range(self.n_seq):
                cache_clear(&self.seqs[i].context)
            free(self.seqs)
        cache_clear(&self.dynamic)
        cache_clear(&self.static_)

    def __init__(self, int n_draft=8, static_path=None, dynamic_path=None):
        if not 1 <= n_draft <= 0xFFFF:          # upstream stores it as uint16_t
            raise ValueError(f"n_draft must be in [1, 65535], got {n_draft}")
        self.n_draft = n_draft
        if static_path is not None:
            self.load_static(static_path)
        if dynamic_path is not None:
            self.load_dynamic(dynamic_path)

    # -- drafter hooks -----------------------------------------------------------------------------

    cdef int _reserve(self, int n_seq) except -1:
        cdef CacheSeq* grown = <CacheSeq*> realloc(self.seqs, <size_t> n_seq * sizeof(CacheSeq))
        if grown == NULL:
            raise MemoryError()
        memset(grown + self.n_seq, 0, <size_t> (n_seq - self.n_seq) * sizeof(CacheSeq))
        self.seqs = grown
        return 0

    cdef int _reset_seq(self, int seq) except -1:
        # The context cache only ever grows with the history; a new one starts it over.
        cache_clear(&self.seqs[seq].context)
        self.seqs[seq].cache_size = 0
        return 0

    cdef Py_ssize_t _draft(self, int seq, const token_t* history, Py_ssize_t n_history,
                           token_t id_last, Py_ssize_t n_max, token_t* out) except -1 nogil:
        cdef CacheSeq* s = &self.seqs[seq]
        if s.cache_size < n_history + 1:
            # Only the new chunk, as a sequence of its own (upstream's tokens_new).
            cache_update(&s.context, NGRAM_MIN, NGRAM_MAX, history + s.cache_size,
                         n_history - s.cache_size, id_last, True)
            s.cache_size = n_history + 1
        # Greedy and stateless, so cutting at n_max now equals upstream's truncation afterwards.
        return cache_draft(&s.context, &self.dynamic, &self.static_, history, n_history, id_last,
                           min(<Py_ssize_t> self.n_draft, n_max), out)

    # -- Python level ------------------------------------------------------------------------------

    cdef Cache* pick(self, str cache, int seq_id) except NULL:
        if cache == "dynamic":
            return &self.dynamic
        if cache == "static":
            return &self.static_
        if cache == "context":
            if seq_id < 0 or seq_id >= self.n_seq:
                raise ValueError(f"unknown sequence id {seq_id}: call begin(prompt, seq_id={seq_id}) first")
            return &self.seqs[seq_id].context
        raise ValueError(f"cache must be one of {CACHE_NAMES}, got {cache!r}")

    cdef load_into(self, Cache* target, path):
        path = os.fspath(path)
        with open(path, "rb") as f:
            data = f.read()
        cdef const unsigned char[::1] view = data
        cdef Cache fresh
        cdef size_t where = 0
        cdef int rc
        memset(&fresh, 0, sizeof(Cache))
        try:
            with nogil:
                rc = parse_cache(&view[0] if view.shape[0] else NULL, view.shape[0], &fresh, &where)
        except MemoryError:
            cache_clear(&fresh)
            raise
        if rc != PARSE_OK:
            cache_clear(&fresh)
            raise ValueError(f"{path!r} is not a valid lookup cache: {PARSE_MESSAGES[rc]} "
                             f"(at byte offset {where} of {view.shape[0]})")
        cache_clear(target)
        target[0] = fresh

    cdef save_from(self, Cache* source, path):
        path = os.fspath(path)
        cdef bytes bpath = os.fsencode(path)
        cdef const char* cpath = bpath
        cdef FILE* f
        cdef int rc = 0, err = 0
        with nogil:
            f = fopen(cpath, "wb")
            if f == NULL:
                err = errno
            else:
                rc = write_cache(source, f)
                if rc:
                    err = errno
                if fclose(f) != 0 and rc == 0:
                    rc = -1
                    err = errno
        if f == NULL or rc:
            raise OSError(err, os.strerror(err), path)

    def load_static(self, path):
        """Replace the static cache with the lookup-cache file ``path`` (e.g. from llama-lookup-create).

        Raises FileNotFoundError if it does not exist and ValueError (naming the byte offset) if it
        is truncated or corrupt; the cache is unchanged then.
        """
        with self.lock:
            self.check_free()
            self.load_into(&self.static_, path)

    def load_dynamic(self, path):
        """Replace the dynamic cache with the lookup-cache file ``path`` (errors as load_static)."""
        with self.lock:
            self.check_free()
            self.load_into(&self.dynamic, path)

    def save_static(self, path):
        """Write the static cache to ``path`` in llama.cpp's lookup-cache format."""
        self.save_from(&self.static_, path)

    def save_dynamic(self, path):
        """Write the dynamic cache to ``path`` in llama.cpp's lookup-cache format."""
        self.save_from(&self.dynamic, path)

    def save_context(self, path, int seq_id=0):
        """Write the context cache of ``seq_id`` to ``path`` in llama.cpp's lookup-cache format."""
        self.save_from(self.pick("context", seq_id), path)

    def add_static(self, tokens):
        """Count the 2-grams of ``tokens`` into the static cache (what llama-lookup-create does)."""
        cdef const token_t[::1] toks
        with self.lock:
            self.check_free()
            toks = _tokens(tokens)
            with nogil:
                cache_update(&self.static_, NGRAM_STATIC, NGRAM_STATIC,
                             &toks[0] if toks.shape[0] else NULL, toks.shape[0], 0, False)

    def add_dynamic(self, tokens):
        """Count the 1- to 4-grams of ``tokens`` into the dynamic cache."""
        cdef const token_t[::1] toks
        with self.lock:
            self.check_free()
            toks = _tokens(tokens)
            with nogil:
                cache_update(&self.dynamic, NGRAM_MIN, NGRAM_MAX,
                             &toks[0] if toks.shape[0] else NULL, toks.shape[0], 0, False)

    def merge_context(self, int seq_id=0):
        """Add the context cache of ``seq_id`` to the dynamic cache (llama.cpp's lookup example does
        this at the end of a generation, before saving the dynamic cache)."""
        cdef Cache* src
        with self.lock:
            self.check_free()
            src = self.pick("context", seq_id)
            with nogil:
                cache_merge(&self.dynamic, src)

    def counts(self, ngram, str cache="context", int seq_id=0):
        """``{token: count}`` of the tokens seen after ``ngram`` (1 to 4 token ids) in ``cache``."""
        cdef token_t key[4]
        with self.lock:
            self.check_free()
            toks = [int(t) for t in ngram]
            if not 1 <= len(toks) <= NGRAM_MAX:
                raise ValueError(f"ngram must hold 1 to {NGRAM_MAX} tokens, got {len(toks)}")
            if any(not 0 <= t <= 0x7FFFFFFF for t in toks):
                raise ValueError("ngram holds token ids outside [0, 2**31)")
            for j in range(NGRAM_MAX):
                key[j] = toks[j] if j < len(toks) else NO_TOKEN
            return cache_counts(self.pick(cache, seq_id), key)

    def n_ngrams(self, str cache="context", int seq_id=0):
        """Number of distinct n-grams in ``cache`` ("context" of ``seq_id``, "dynamic" or "static")."""
        return self.pick(cache, seq_id).n

    def reset(self, seq_id=None):
        """Drop the context cache of ``seq_id`` (default: every sequence); static and dynamic stay."""
        cdef int i
        with self.lock:
            self.check_free()
            if seq_id is not None:
                i = seq_id
                cache_clear(self.pick("context", i))
                self.seqs[i].cache_size = 0
                return
            for i in range(self.n_seq):
                cache_clear(&self.seqs[i].context)
                self.seqs[i].cache_size = 0

    def __repr__(self):
        return (f"NgramCache(n_draft={self.n_draft}, n_static={self.static_.n}, "
                f"n_dynamic={self.dynamic.n})")


cdef const token_t[::1] _tokens(object tokens) except *:
    """A C-contiguous int32 view of ``tokens`` (validated like the drafter methods' arguments)."""
    arr = np.asarray(tokens)
    if arr.ndim != 1:
        raise ValueError(f"tokens must be 1-D, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"tokens must hold integer token ids, got dtype {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() > 0x7FFFFFFF):
        raise ValueError("tokens holds token ids outside [0, 2**31)")
    return np.ascontiguousarray(arr, dtype=np.int32)
