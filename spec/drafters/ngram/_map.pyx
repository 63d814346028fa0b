"""ngram-map-k and ngram-map-k4v: n-gram lookup through a per-sequence hash map of history positions.

Same algorithm, parameters and state updates as llama.cpp's ``common_ngram_map_{begin,draft,accept}``
(common/ngram-map.cpp) as driven by ``common_speculative_impl_ngram_map_k``: one map per sequence,
``begin`` prunes state past a shrunk history, ``draft`` indexes new n-grams and looks the current
one up, ``accept`` caps the next draft of the key that was used by how many tokens were accepted.

Everything upstream does is reproduced, quirks included: which of several occurrences wins, hash
collisions that hide an occurrence, n-grams just before the prompt end that are never indexed,
the k4v recount of the last counted occurrence. Where upstream has undefined behaviour or aborts:

- after a ``begin`` whose prompt is shorter than the last history but not than the previous
  prompt, upstream can read keys and values past the end of the history; here they do not match;
- ``accept`` after a ``begin`` pruned the drafted key is ignored (upstream indexes past the end);
- a draft whose history is shorter than the one last seen, without a new ``begin``, raises
  ValueError (upstream aborts, or silently returns below 2n+m tokens);
- ``accept(n)`` with n > size_m stores size_m (only min(size_m, n) is ever used; upstream's int16
  would wrap past 32767).

The positions are the state, so the history given to ``draft`` must extend the one seen before
(as in upstream); matching always reads the live history.
"""
cimport cython
from libc.stdint cimport UINT32_MAX, int16_t, uint16_t, uint32_t
from libc.string cimport memcmp, memcpy
from libcpp.vector cimport vector

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


cdef inline uint32_t ngram_hash(const token_t* tokens, Py_ssize_t n) noexcept nogil:
    """Upstream's LCG hash of n tokens, in uint32 arithmetic."""
    cdef uint32_t h = 0
    cdef Py_ssize_t i
    for i in range(n):
        h = h * <uint32_t> 2654435761U + <uint32_t> tokens[i]
    return h


cdef inline bint key_at(const token_t* inp, Py_ssize_t j, const token_t* key, Py_ssize_t n) noexcept nogil:
    """inp[j..j+n) == key[0..n); the last token (the one just sampled) is tested first."""
    return inp[j + n - 1] == key[n - 1] and memcmp(inp + j, key, <size_t> (n - 1) * sizeof(token_t)) == 0


cdef enum:
    SCAN_BLOCK = 32     # start positions screened per branch-free (vectorizable) block


cdef Py_ssize_t scan_down(const token_t* inp, Py_ssize_t hi, Py_ssize_t lo, const token_t* key,
                          Py_ssize_t n) noexcept nogil:
    """The largest j with lo < j <= hi and inp[j..j+n) == key[0..n), or 0 if none (lo >= 0).

    Blocks of start positions are screened without branches on the key's last two tokens (a loop
    the compiler vectorizes); only blocks with a candidate are checked position by position.
    """
    cdef token_t last = key[n - 1]
    cdef token_t prev = key[n - 2] if n >= 2 else last
    cdef const token_t* a = inp + n - 1                 # a[j] = last token of the n-gram at j
    cdef const token_t* b = inp + n - 2 if n >= 2 else a
    cdef Py_ssize_t j = hi, start, k
    cdef int hit
    while j - SCAN_BLOCK >= lo:                         # block [j - SCAN_BLOCK + 1, j], all > lo
        start = j - SCAN_BLOCK + 1
        hit = 0
        for k in range(SCAN_BLOCK):
            hit |= (a[start + k] == last) & (b[start + k] == prev)
        if hit:
            for k in range(SCAN_BLOCK - 1, -1, -1):
                if key_at(inp, start + k, key, n):
                    return start + k
        j = start - 1
    while j > lo:
        if key_at(inp, j, key, n):
            return j
        j -= 1
    return 0


cdef Py_ssize_t scan_up(const token_t* inp, Py_ssize_t lo, Py_ssize_t hi, const token_t* key,
                        Py_ssize_t n) noexcept nogil:
    """The smallest i with lo <= i <= hi and inp[i..i+n) == key[0..n), or -1 if none."""
    cdef token_t last = key[n - 1]
    cdef token_t prev = key[n - 2] if n >= 2 else last
    cdef const token_t* a = inp + n - 1
    cdef const token_t* b = inp + n - 2 if n >= 2 else a
    cdef Py_ssize_t i = lo, k
    cdef int hit
    while i + SCAN_BLOCK - 1 <= hi:                     # block [i, i + SCAN_BLOCK - 1]
        hit = 0
        for k in range(SCAN_BLOCK):
            hit |= (a[i + k] == last) & (b[i + k] == prev)
        if hit:
            for k in range(SCAN_BLOCK):
                if key_at(inp, i + k, key, n):
                    return i + k
        i += SCAN_BLOCK
    while i <= hi:
        if key_at(inp, i, key, n):
            return i
        i += 1
    return -1


cdef inline uint16_t saturating_inc(uint16_t x) noexcept nogil:
    return x + 1 if x < NGRAM_MAX_VALUE_COUNT else NGRAM_MAX_VALUE_COUNT


cdef int reset_map(SeqMap* mp, Py_ssize_t size_n) except -1:
    """A fresh, empty map (as constructed upstream)."""
    mp.keys.clear()
    mp.key_pos.clear()
    mp.key_map.assign(NGRAM_HASH_MAP_SIZE, 0)
    mp.key_map_last_idx = 0
    mp.size_last_begin = 0
    mp.idx_last_check = 0
    mp.last_draft_created = False
    mp.last_draft_key_idx = 0
    mp.last_draft_value_idx = 0
    mp.key_tokens.resize(size_n)
    return 0


cdef void map_begin(SeqMap* mp, Py_ssize_t size_begin, Py_ssize_t n, Py_ssize_t m,
                    bint key_only) noexcept nogil:
    """common_ngram_map_begin: forget n-grams, keys and values past a history that shrank."""
    cdef Py_ssize_t cleanup = mp.size_last_begin
    cdef Py_ssize_t i, r, w, j, k
    cdef uint32_t* km
    cdef MapKey* key
    cdef bint keep
    if cleanup > size_begin:
        cleanup = size_begin - n - m if size_begin > n + m else 0

    if size_begin < mp.idx_last_check:
        km = mp.key_map.data()
        for i in range(NGRAM_HASH_MAP_SIZE):
            if km[i] != 0 and km[i] >= <size_t> cleanup:
                km[i] = 0
        mp.key_map_last_idx = <uint32_t> (cleanup - 1) if cleanup > 0 else 0

        # Upstream erases keys one at a time walking backwards; each decision depends on that key
        # alone, so one stable compaction gives the same vector in linear time.
        w = 0
        for r in range(<Py_ssize_t> mp.keys.size()):
            key = &mp.keys[r]
            keep = key.key_idx < cleanup
            if keep and not key_only:
                for j in range(NGRAM_MAX_VALUES - 1, -1, -1):
                    if key.values[j].value_idx != 0 and key.values[j].value_idx >= cleanup:
                        for k in range(j, NGRAM_MAX_VALUES - 1):
                            key.values[k] = key.values[k + 1]
                        # The last slot keeps its n_accepted, as upstream.
                        key.values[NGRAM_MAX_VALUES - 1].value_idx = 0
                        key.values[NGRAM_MAX_VALUES - 1].value_num = 0
                keep = key.values[0].value_idx != 0
            if keep:
                if w != r:
                    mp.keys[w] = mp.keys[r]
                    mp.key_pos[w] = mp.key_pos[r]
                w += 1
        mp.keys.resize(w)
        mp.key_pos.resize(w)

    mp.idx_last_check = size_begin
    mp.size_last_begin = size_begin


cdef Py_ssize_t map_draft(SeqMap* mp, const token_t* inp, Py_ssize_t cur_len, token_t sampled,
                          Py_ssize_t n, Py_ssize_t m, Py_ssize_t min_hits, bint key_only,
                          Py_ssize_t n_max, token_t* out) except -1 nogil:
    """common_ngram_map_draft, with the draft truncated to n_max as common_speculative_draft does."""
    cdef Py_ssize_t lim, j, i, v, match_pos = 0, key_offset, n_keys, vb, vv
    cdef Py_ssize_t n_draft, slot_max
    cdef uint32_t idx_key, sum_occur
    cdef uint32_t* km
    cdef const uint32_t* kp
    cdef token_t* key
    cdef MapKey new_key
    cdef MapKey* curr
    cdef uint16_t max_occur
    cdef int idx_value

    mp.last_draft_created = False
    mp.last_draft_key_idx = 0
    mp.last_draft_value_idx = 0
    if cur_len < 2 * n + m:
        return 0
    mp.idx_last_check = cur_len

    key = mp.key_tokens.data()
    memcpy(key, inp + cur_len - n + 1, <size_t> (n - 1) * sizeof(token_t))
    key[n - 1] = sampled
    km = mp.key_map.data()
    lim = cur_len - n - m - 1              # last start position with a full m-gram after the key

    # 1. The hash map (positions 1..key_map_last_idx), verified against the history.
    idx_key = km[ngram_hash(key, n) & (NGRAM_HASH_MAP_SIZE - 1)]
    if idx_key != 0 and idx_key < lim and key_at(inp, idx_key, key, n):
        match_pos = idx_key
    # 2. Prompt positions not hashed yet, most recent first.
    if match_pos == 0 and mp.size_last_begin > n + m + 1:
        match_pos = scan_down(inp, mp.size_last_begin - n - m - 1, mp.key_map_last_idx, key, n)
    # 3. Generated positions not hashed yet, most recent first.
    if match_pos == 0:
        match_pos = scan_down(inp, lim, max(mp.size_last_begin, <Py_ssize_t> mp.key_map_last_idx),
                              key, n)

    # Hash the new positions in the same order; a slot keeps its first writer.
    if mp.size_last_begin > n + m + 1:
        j = mp.size_last_begin - n - m - 1
        while j > mp.key_map_last_idx:
            i = ngram_hash(inp + j, n) & (NGRAM_HASH_MAP_SIZE - 1)
            if km[i] == 0:
                km[i] = <uint32_t> j
            j -= 1
    j = lim
    while j > mp.size_last_begin and j > mp.key_map_last_idx:
        i = ngram_hash(inp + j, n) & (NGRAM_HASH_MAP_SIZE - 1)
        if km[i] == 0:
            km[i] = <uint32_t> j
        j -= 1
    if <uint32_t> lim > mp.key_map_last_idx:
        mp.key_map_last_idx = <uint32_t> lim

    if match_pos == 0:
        return 0

    # The key's statistics: the first key whose n-gram (read from the live history) matches.
    # (The dominant cost of a draft once there are many keys: a linear scan over their positions,
    # kept contiguous in key_pos.)
    n_keys = <Py_ssize_t> mp.key_pos.size()
    kp = mp.key_pos.data()
    key_offset = n_keys
    for i in range(n_keys):
        j = kp[i]
        if j + n <= cur_len and key_at(inp, j, key, n):
            key_offset = i
            break
    if key_offset == n_keys:
        new_key.key_idx = match_pos
        new_key.stat_idx = 0
        new_key.key_num = 0
        for v in range(NGRAM_MAX_VALUES):
            new_key.values[v].value_idx = 0
            new_key.values[v].value_num = 0
            new_key.values[v].n_accepted = <int16_t> m
        mp.keys.push_back(new_key)
        mp.key_pos.push_back(<uint32_t> match_pos)
    curr = &mp.keys[key_offset]
    curr.key_num = saturating_inc(curr.key_num)

    if key_only:
        # ngram-map-k: the m tokens after the match, capped by the last acceptance (values[0]).
        slot_max = 0
    else:
        # ngram-map-k4v: count the m-grams after each occurrence of the key since the last count
        # (the start position is counted again), then draft only if one m-gram dominates.
        if curr.key_num < min_hits:
            return 0
        i = scan_up(inp, curr.stat_idx, match_pos, key, n)
        while i >= 0:
            vb = i + n
            idx_value = -1
            for v in range(NGRAM_MAX_VALUES):
                vv = curr.values[v].value_idx
                if vv == 0:
                    curr.values[v].value_idx = vb
                    curr.values[v].value_num = 0
                    curr.values[v].n_accepted = <int16_t> m
                    idx_value = v
                    break
                if vv + m <= cur_len and memcmp(inp + vb, inp + vv, <size_t> m * sizeof(token_t)) == 0:
                    idx_value = v
                    break
            if idx_value >= 0:
                curr.values[idx_value].value_num = saturating_inc(curr.values[idx_value].value_num)
            i = scan_up(inp, i + 1, match_pos, key, n)
        curr.stat_idx = match_pos

        max_occur = 0
        slot_max = 0
        for v in range(NGRAM_MAX_VALUES):
            if curr.values[v].value_num > max_occur:
                max_occur = curr.values[v].value_num
                slot_max = v
        sum_occur = 0
        for v in range(NGRAM_MAX_VALUES):
            if v != slot_max:
                sum_occur += curr.values[v].value_num
        if sum_occur > 0 and max_occur < 2 * sum_occur:
            return 0

    # The drafted tokens always follow match_pos (k4v's chosen value only sets the length cap).
    n_draft = curr.values[slot_max].n_accepted
    if n_draft > m:
        n_draft = m
    if n_draft > n_max:
        n_draft = n_max
    if n_draft < 0:
        n_draft = 0
    memcpy(out, inp + match_pos + n, <size_t> n_draft * sizeof(token_t))
    mp.last_draft_created = True
    mp.last_draft_key_idx = key_offset
    mp.last_draft_value_idx = <int> slot_max
    return n_draft


cdef class NgramMap(Drafter):
    """Shared implementation of :class:`NgramMapK` and :class:`NgramMapK4V` (not for direct use)."""

    def __init__(self, *args, **kwargs):
        raise TypeError("NgramMap is abstract: use NgramMapK or NgramMapK4V")

    cdef int _init_params(self, object size_n, object size_m, object min_hits,
                          bint key_only) except -1:
        # Upstream: uint16_t sizes and hit count; n_accepted is an int16_t that starts at size_m.
        n = _int_param("size_n", size_n, 1, 0xFFFF)
        m = _int_param("size_m", size_m, 1, 0x7FFF)
        h = _int_param("min_hits", min_hits, 1, 0xFFFF)
        if self.n_seq:
            raise RuntimeError("parameters cannot change once sequences have state")
        self.size_n = n
        self.size_m = m
        self.min_hits = h
        self.key_only = key_only
        return 0

    cdef int _reserve(self, int n_seq) except -1:
        cdef Py_ssize_t s, old = <Py_ssize_t> self.maps.size()
        if self.size_n == 0:
            raise TypeError(f"{type(self).__name__} was not initialized (use NgramMapK or NgramMapK4V)")
        self.maps.resize(n_seq)
        for s in range(old, n_seq):
            reset_map(&self.maps[s], self.size_n)
        return 0

    cdef int _reset_seq(self, int seq) except -1:
        # Keys and acceptance caps point into the previous history: meaningless for a new one.
        return reset_map(&self.maps[seq], self.size_n)

    cdef int _begin(self, int seq, const token_t* prompt, Py_ssize_t n_prompt) except -1 nogil:
        map_begin(&self.maps[seq], n_prompt, self.size_n, self.size_m, self.key_only)
        return 0

    cdef Py_ssize_t _draft(self, int seq, const token_t* history, Py_ssize_t n_history,
                           token_t id_last, Py_ssize_t n_max, token_t* out) except -1 nogil:
        cdef SeqMap* mp = &self.maps[seq]
        if n_history < mp.idx_last_check:
            with gil:
                raise ValueError(
                    f"history has {n_history} tokens but this sequence has already seen "
                    f"{mp.idx_last_check}: call begin() with the new context after it shrinks")
        if n_history >= <Py_ssize_t> UINT32_MAX:
            with gil:
                raise ValueError(f"history too long for the uint32 position map: {n_history} tokens")
        return map_draft(mp, history, n_history, id_last, self.size_n, self.size_m,
                         self.min_hits, self.key_only, n_max, out)

    cdef int _accept(self, int seq, Py_ssize_t n_accepted) except -1 nogil:
        cdef SeqMap* mp = &self.maps[seq]
        if not mp.last_draft_created:
            return 0
        # Upstream would index past the end if begin() pruned the key since the draft.
        if mp.last_draft_key_idx >= <Py_ssize_t> mp.keys.size():
            return 0
        # Only min(size_m, n_accepted) is ever used, so clamping keeps the int16 in range.
        if n_accepted > self.size_m:
            n_accepted = self.size_m
        mp.keys[mp.last_draft_key_idx].values[mp.last_draft_value_idx].n_accepted = <int16_t> n_accepted
        return 0

    def reset(self):
        """Drop the state of every sequence (as if freshly constructed)."""
        cdef Py_ssize_t s
        with self.lock:
            self.check_free()
            for s in range(<Py_ssize_t> self.maps.size()):
                reset_map(&self.maps[s], self.size_n)

    def _state(self, int seq_id=0):
        """The map of ``seq_id`` as Python objects (for tests and debugging).

        Returns a dict with ``keys`` (a list of ``(key_idx, stat_idx, key_num, [(value_idx,
        value_num, n_accepted) x 4])``), ``key_map`` (a uint32 array), ``key_map_last_idx``,
        ``size_last_begin``, ``idx_last_check``, ``last_draft_created``, ``last_draft_key_idx`` and
        ``last_draft_value_idx``.
        """
        import numpy as np
        if not 0 <= seq_id < <int> self.maps.size():
            raise ValueError(f"unknown sequence id {seq_id}")
        cdef SeqMap* mp = &self.maps[seq_id]
        cdef MapKey* k
        cdef Py_ssize_t i
        keys = []
        for i in range(<Py_ssize_t> mp.keys.size()):
            k = &mp.keys[i]
            keys.append((k.key_idx, k.stat_idx, k.key_num,
                         [(k.values[v].value_idx, k.values[v].value_num, k.values[v].n_accepted)
                          for v in range(NGRAM_MAX_VALUES)]))
        key_map = np.empty(NGRAM_HASH_MAP_SIZE, dtype=np.uint32)
        cdef uint32_t[::1] km = key_map
        memcpy(&km[0], mp.key_map.data(), NGRAM_HASH_MAP_SIZE * sizeof(uint32_t))
        return dict(keys=keys, key_map=key_map,
                    key_map_last_idx=mp.key_map_last_idx, size_last_begin=mp.size_last_begin,
                    idx_last_check=mp.idx_last_check, last_draft_created=mp.last_draft_created,
                    last_draft_key_idx=mp.last_draft_key_idx,
                    last_draft_value_idx=mp.last_draft_value_idx)

    def __repr__(self):
        return (f"{type(self).__name__}(size_n={self.size_n}, size_m={self.size_m}, "
                f"min_hits={self.min_hits})")


@cython.final
cdef class NgramMapK(NgramMap):
    """Self-speculation through an n-gram map, llama.cpp's ``ngram-map-k``.

    Parameters
    ----------
    size_n : int
        Key length: the last ``size_n - 1`` history tokens plus the token just sampled.
    size_m : int
        Maximum draft length: the tokens after the matched occurrence. After a draft from a key,
        that key's next draft is capped by how many tokens were accepted (so a key whose draft was
        fully rejected drafts nothing until ``begin`` forgets it).
    min_hits : int
        Accepted for symmetry with :class:`NgramMapK4V`; unused, as upstream.

    Nothing is drafted before the history holds ``2 * size_n + size_m`` tokens. One map per
    sequence id (a 1 MiB position table each).
    """

    def __init__(self, size_n=12, size_m=48, min_hits=1):
        self._init_params(size_n, size_m, min_hits, True)


@cython.final
cdef class NgramMapK4V(NgramMap):
    """Self-speculation through an n-gram map with value statistics, llama.cpp's ``ngram-map-k4v``.

    Parameters
    ----------
    size_n : int
        Key length: the last ``size_n - 1`` history tokens plus the token just sampled.
    size_m : int
        Value length and maximum draft length.
    min_hits : int
        How many times a key must have been looked up at draft time before it drafts.

    For each key up to four distinct m-grams that followed it are counted; a draft is offered only
    when the most frequent one occurs at least twice as often as all others together, and its
    length is capped by that m-gram's last acceptance. The drafted tokens are those after the most
    recent occurrence of the key, as upstream.
    """

    def __init__(self, size_n=12, size_m=48, min_hits=1):
        self._init_params(size_n, size_m, min_hits, False)
