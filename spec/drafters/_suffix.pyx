"""Suffix-tree drafting (SuffixDecoding, arXiv 2411.04975), as in Arctic Inference's suffix_decoding.

Two kinds of trees hold every suffix (cut to ``max_depth`` tokens) of their sequences, with a
count per node = how often the node's string occurs:

* one tree per sequence id over its prompt and its output so far, grown by the tokens each
  ``draft`` call finds new in the history;
* one global tree over the outputs of finished generations (added by ``end``), bounded by
  ``max_cached_requests`` with first-in-first-out eviction.

Drafting matches every suffix of ``history + [id_last]`` up to ``max_depth`` tokens. For each
match of length k it follows the most frequent continuation for at most
``floor(max_spec_factor * k + max_spec_offset)`` tokens while the estimated probability of the
path (product of child count / parent count) stays >= ``min_token_prob``; the draft's score is
the sum of those probabilities. The product telescopes along a path (each ratio's denominator is
the previous one's numerator) to count(node reached) / count(matched node), so the threshold is
tested exactly, in integers (see ``at_least``). A ``min_token_prob`` that is the double nearest a
fraction with a denominator below 2**31 stands for that fraction (0.1 for 1/10): a path at exactly
the threshold drafts, where a product of rounded quotients (3/10 * 1/3 = 0.0999... in double)
would drop it. The best-scoring match of each tree wins (ties: the longer match),
and the global tree's draft replaces the sequence's own only with a strictly higher score.

Tree maintenance is Arctic Inference's online algorithm: each sequence keeps the nodes where its
``max_depth`` newest suffixes end, so appending a token touches at most ``max_depth`` nodes.
Every suffix ends on a node boundary, so a node's count is the same along its whole edge.
Structures: see _suffix.pxd.

Where this differs from Arctic Inference: the whole pattern is a candidate match too (Arctic stops
one short of it); an output joins the global tree when its generation ends, not token by token;
each node keeps only its top child (highest count, then smallest token id, so ties are
reproducible) instead of a fully ordered sibling list, which is all path drafting needs.
"""
cimport cython
from libc.math cimport floor, isfinite
from libc.stdint cimport INT32_MAX, int32_t, int64_t, uint32_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memmove, memset

import numbers
import operator
from fractions import Fraction

import numpy as np
cimport numpy as cnp

from spec._c.typedefs cimport token_t
from spec.drafters._base cimport Drafter, check_drafted

cnp.import_array()

cdef enum:
    LINEAR_LC = 2              # children blocks of <= 2**LINEAR_LC slots are scanned, larger ones hashed
    MAX_DEPTH_LIMIT = 65535


# -- allocation ------------------------------------------------------------------------------------

cdef int grow(void** buf, int64_t* cap, int64_t need, size_t item) noexcept nogil:
    """Grow ``*buf`` to hold at least ``need`` items (x1.25 steps); -1 when out of memory.

    Never frees the old buffer on failure (the caller still owns it).
    """
    cdef int64_t new_cap = cap[0]
    cdef void* p
    if need <= new_cap:
        return 0
    if new_cap < 16:
        new_cap = 16
    while new_cap < need:
        new_cap += new_cap >> 2
    p = realloc(buf[0], <size_t> new_cap * item)
    if p == NULL:
        return -1
    buf[0] = p
    cap[0] = new_cap
    return 0


cdef int raise_memory_error() except -1 with gil:
    raise MemoryError("suffix tree: out of memory")


# -- trees -----------------------------------------------------------------------------------------

cdef void tree_free(Tree* t) noexcept nogil:
    """Release every buffer; the tree is empty (``nodes == NULL``) afterwards."""
    free(t.nodes)
    free(t.slab)
    free(t.toks)
    free(t.active)
    memset(t, 0, sizeof(Tree))


cdef int tree_reset(Tree* t, int max_depth) noexcept nogil:
    """Empty the tree (keeping its buffers) and create the root; -1 when out of memory."""
    cdef int i
    cdef int64_t cap
    t.max_depth = max_depth
    t.n_nodes = 0
    t.free_node = -1
    t.n_live = 0
    t.slab_used = 0
    for i in range(32):
        t.slab_free[i] = -1
    t.tok_begin = 0
    t.tok_end = 0
    t.act_head = 0
    t.act_len = 0
    if t.active == NULL:
        t.active = <int32_t*> malloc(<size_t> max_depth * sizeof(int32_t))
        if t.active == NULL:
            return -1
    if node_new(t) < 0:                      # the root, always node 0
        return -1
    return 0


cdef inline bint tree_ready(const Tree* t) noexcept nogil:
    return t.nodes != NULL and t.n_live > 0


cdef size_t tree_bytes(const Tree* t) noexcept nogil:
    """Bytes allocated by the tree (capacity, not just what is in use)."""
    return (<size_t> t.cap_nodes * sizeof(Node) + <size_t> t.slab_cap * sizeof(int32_t)
            + <size_t> t.tok_cap * sizeof(token_t)
            + (<size_t> t.max_depth * sizeof(int32_t) if t.active != NULL else 0))


cdef int32_t node_new(Tree* t) noexcept nogil:
    """A fresh node (count 0, no edge, no children); -1 when out of memory."""
    cdef int32_t i
    cdef int64_t cap
    if t.free_node >= 0:
        i = t.free_node
        t.free_node = t.nodes[i].parent
    else:
        if t.n_nodes == INT32_MAX:
            return -1
        if t.n_nodes == t.cap_nodes:
            cap = t.cap_nodes
            if grow(<void**> &t.nodes, &cap, <int64_t> t.n_nodes + 1, sizeof(Node)) < 0:
                return -1
            t.cap_nodes = <int32_t> (cap if cap < INT32_MAX else INT32_MAX)
        i = t.n_nodes
        t.n_nodes += 1
    t.n_live += 1
    t.nodes[i].count = 0
    t.nodes[i].parent = -1
    t.nodes[i].ref = 0
    t.nodes[i].length = 0
    t.nodes[i].top = -1
    t.nodes[i].kids = -1
    return i


cdef void node_free(Tree* t, int32_t i) noexcept nogil:
    if t.nodes[i].kids >= 0:
        slab_release(t, t.nodes[i].kids)
    t.nodes[i].kids = -1
    t.nodes[i].length = -1
    t.nodes[i].parent = t.free_node
    t.free_node = i
    t.n_live -= 1


cdef int tok_push(Tree* t, token_t tok) noexcept nogil:
    if t.tok_end == t.tok_cap:
        if t.tok_end >= INT32_MAX:           # node refs are int32
            return -1
        if grow(<void**> &t.toks, &t.tok_cap, t.tok_end + 1, sizeof(token_t)) < 0:
            return -1
    t.toks[t.tok_end] = tok
    t.tok_end += 1
    return 0


# -- children blocks -------------------------------------------------------------------------------

cdef inline token_t key_of(const Tree* t, int32_t node) noexcept nogil:
    """A child's key is its first edge token, read through its reference (no copy is stored)."""
    return t.toks[t.nodes[node].ref]


cdef inline int32_t home_slot(token_t tok, int lc) noexcept nogil:
    return <int32_t> ((<uint32_t> tok * 2654435769u) >> (32 - lc))


cdef inline bint better(const Tree* t, int32_t a, int32_t b) noexcept nogil:
    """Child ``a`` ranks before child ``b``: higher count, then smaller token id."""
    cdef int32_t ca = t.nodes[a].count, cb = t.nodes[b].count
    return ca > cb or (ca == cb and key_of(t, a) < key_of(t, b))


cdef int32_t slab_alloc(Tree* t, int lc) noexcept nogil:
    """Offset of a block with 2**lc child slots; -1 when out of memory."""
    cdef int32_t b = t.slab_free[lc]
    cdef int64_t need
    if b >= 0:
        t.slab_free[lc] = t.slab[b]
        return b
    need = t.slab_used + 1 + (<int64_t> 1 << lc)
    if need > INT32_MAX:
        return -1
    if grow(<void**> &t.slab, &t.slab_cap, need, sizeof(int32_t)) < 0:
        return -1
    b = <int32_t> t.slab_used
    t.slab_used = need
    return b


cdef void slab_release(Tree* t, int32_t b) noexcept nogil:
    cdef int lc = t.slab[b] & 31
    t.slab[b] = t.slab_free[lc]
    t.slab_free[lc] = b


cdef inline int32_t kid_count(const Tree* t, int32_t node) noexcept nogil:
    cdef int32_t b = t.nodes[node].kids
    return 0 if b < 0 else <int32_t> (<uint32_t> t.slab[b] >> 5)


cdef int32_t kid_slot(const Tree* t, int32_t node, token_t tok) noexcept nogil:
    """Slab position of the entry for child key ``tok``, -1 if absent."""
    cdef int32_t b = t.nodes[node].kids
    cdef int32_t h, n, i, c, mask
    cdef int lc
    cdef const int32_t* e
    if b < 0:
        return -1
    h = t.slab[b]
    lc = h & 31
    n = <int32_t> (<uint32_t> h >> 5)
    e = t.slab + b + 1
    if lc <= LINEAR_LC:
        for i in range(n):
            if t.toks[t.nodes[e[i]].ref] == tok:
                return b + 1 + i
        return -1
    mask = (1 << lc) - 1
    i = home_slot(tok, lc)
    while True:
        c = e[i]
        if c < 0:
            return -1
        if t.toks[t.nodes[c].ref] == tok:
            return b + 1 + i
        i = (i + 1) & mask


cdef inline int32_t kid_find(const Tree* t, int32_t node, token_t tok) noexcept nogil:
    """The child of ``node`` whose edge starts with ``tok``, -1 if none."""
    cdef int32_t s = kid_slot(t, node, tok)
    return -1 if s < 0 else t.slab[s]


cdef void hash_put(Tree* t, int32_t b, int lc, int32_t child) noexcept nogil:
    cdef int32_t mask = (1 << lc) - 1
    cdef int32_t i = home_slot(key_of(t, child), lc)
    cdef int32_t* e = t.slab + b + 1
    while e[i] >= 0:
        i = (i + 1) & mask
    e[i] = child


cdef int kid_insert(Tree* t, int32_t node, int32_t child) noexcept nogil:
    """Add ``child`` (its key must be absent) to ``node``'s children; -1 when out of memory."""
    cdef int32_t b = t.nodes[node].kids, nb, h, n, i, c
    cdef int lc, new_lc
    if b < 0:
        b = slab_alloc(t, 0)
        if b < 0:
            return -1
        t.slab[b] = (1 << 5) | 0
        t.slab[b + 1] = child
        t.nodes[node].kids = b
        return 0
    h = t.slab[b]
    lc = h & 31
    n = <int32_t> (<uint32_t> h >> 5)
    if lc <= LINEAR_LC and n < (1 << lc):
        t.slab[b + 1 + n] = child
        t.slab[b] = ((n + 1) << 5) | lc
        return 0
    if lc > LINEAR_LC and (n + 1) * 4 <= (3 << lc):
        hash_put(t, b, lc, child)
        t.slab[b] = ((n + 1) << 5) | lc
        return 0
    # Full: move to a block twice as large (slab_alloc may move the slab; offsets stay valid).
    new_lc = lc + 1
    if new_lc > 30:
        return -1
    nb = slab_alloc(t, new_lc)
    if nb < 0:
        return -1
    if new_lc <= LINEAR_LC:
        for i in range(n):
            t.slab[nb + 1 + i] = t.slab[b + 1 + i]
    else:
        for i in range(1 << new_lc):
            t.slab[nb + 1 + i] = -1
        for i in range(1 << lc):
            c = t.slab[b + 1 + i]
            if lc <= LINEAR_LC and i >= n:
                break
            if c >= 0:
                hash_put(t, nb, new_lc, c)
    slab_release(t, b)
    t.nodes[node].kids = nb
    t.slab[nb] = (n << 5) | new_lc
    return kid_insert(t, node, child)


cdef void kid_remove(Tree* t, int32_t node, token_t tok) noexcept nogil:
    """Drop the child keyed ``tok`` (which must exist); frees the block when it empties."""
    cdef int32_t b = t.nodes[node].kids
    cdef int32_t h = t.slab[b], n, s, i, j, k, c, mask
    cdef int lc = h & 31
    cdef int32_t* e = t.slab + b + 1
    n = <int32_t> (<uint32_t> h >> 5)
    s = kid_slot(t, node, tok) - b - 1
    if lc <= LINEAR_LC:
        e[s] = e[n - 1]
    else:
        # Backward-shift deletion keeps linear probing tombstone-free.
        mask = (1 << lc) - 1
        i = s
        j = s
        while True:
            j = (j + 1) & mask
            c = e[j]
            if c < 0:
                break
            k = home_slot(key_of(t, c), lc)
            # c may move to i unless its home lies cyclically in (i, j].
            if (i <= j and (k <= i or k > j)) or (i > j and k <= i and k > j):
                e[i] = c
                i = j
        e[i] = -1
    n -= 1
    if n == 0:
        slab_release(t, b)
        t.nodes[node].kids = -1
    else:
        t.slab[b] = (n << 5) | lc


cdef inline void kid_replace(Tree* t, int32_t node, token_t tok, int32_t child) noexcept nogil:
    """Point the entry keyed ``tok`` at ``child`` (whose key must be ``tok`` too)."""
    t.slab[kid_slot(t, node, tok)] = child


cdef int32_t kid_at(const Tree* t, int32_t node, int32_t i) noexcept nogil:
    """The i-th child slot of ``node`` (-1 for an empty hash slot); i < kid_slots(node)."""
    return t.slab[t.nodes[node].kids + 1 + i]


cdef int32_t kid_slots(const Tree* t, int32_t node) noexcept nogil:
    cdef int32_t b = t.nodes[node].kids
    cdef int32_t h
    if b < 0:
        return 0
    h = t.slab[b]
    return <int32_t> (<uint32_t> h >> 5) if (h & 31) <= LINEAR_LC else (1 << (h & 31))


cdef int32_t kid_any(const Tree* t, int32_t node) noexcept nogil:
    """Some child of ``node`` (its only one when it has one), -1 for a leaf."""
    cdef int32_t i, c
    for i in range(kid_slots(t, node)):
        c = kid_at(t, node, i)
        if c >= 0:
            return c
    return -1


cdef void top_recompute(Tree* t, int32_t node) noexcept nogil:
    cdef int32_t i, c, best = -1
    for i in range(kid_slots(t, node)):
        c = kid_at(t, node, i)
        if c >= 0 and (best < 0 or better(t, c, best)):
            best = c
    t.nodes[node].top = best


cdef inline void top_raise(Tree* t, int32_t node, int32_t child) noexcept nogil:
    """``child`` of ``node`` gained count: it may be the new top."""
    cdef int32_t top = t.nodes[node].top
    if top != child and (top < 0 or better(t, child, top)):
        t.nodes[node].top = child


# -- growing a tree --------------------------------------------------------------------------------

cdef int tree_append(Tree* t, token_t tok) noexcept nogil:
    """Append ``tok`` to the sequence being built: extend its ``max_depth`` newest suffixes.

    -1 when out of memory (the tree is then inconsistent and must be reset).
    """
    cdef int32_t depth = t.max_depth, q, slot, node, child, c, parent
    cdef int32_t pos
    cdef token_t first
    if tok_push(t, tok) < 0:
        return -1
    pos = <int32_t> (t.tok_end - 1)
    # A new suffix starts at the root; the longest one falls off at max_depth tokens.
    if t.act_len == depth:
        t.act_head = (t.act_head + 1) % depth
        t.act_len -= 1
    t.active[(t.act_head + t.act_len) % depth] = 0
    t.act_len += 1
    t.nodes[0].count += 1
    # Longest suffix first: each one then moves into a depth no other active suffix occupies.
    for q in range(t.act_len):
        slot = (t.act_head + q) % depth
        node = t.active[slot]
        child = kid_find(t, node, tok)
        if child < 0:
            if node != 0 and t.nodes[node].count == 1:
                # Only this suffix reaches node, so node is its own leaf: lengthen the edge.
                t.nodes[node].length += 1
            else:
                c = node_new(t)
                if c < 0:
                    return -1
                t.nodes[c].count = 1
                t.nodes[c].parent = node
                t.nodes[c].ref = pos
                t.nodes[c].length = 1
                if kid_insert(t, node, c) < 0:
                    return -1
                top_raise(t, node, c)
                t.active[slot] = c
        elif node != 0 and t.nodes[node].count == t.nodes[child].count + 1:
            # Only this suffix ends at node; every other one continues into child (node's only
            # child). After the append all of them share node's edge + tok.
            if t.nodes[child].length == 1:
                # Edge + tok is exactly child's string: child absorbs node's edge.
                parent = t.nodes[node].parent
                first = key_of(t, node)
                t.nodes[child].count += 1
                t.nodes[child].length = t.nodes[node].length + 1
                t.nodes[child].ref = pos + 1 - t.nodes[child].length
                t.nodes[child].parent = parent
                kid_replace(t, parent, first, child)
                if t.nodes[parent].top == node:
                    t.nodes[parent].top = child
                node_free(t, node)
                t.active[slot] = child
            else:
                # node's edge takes child's first token; child keeps the rest.
                t.nodes[node].length += 1
                t.nodes[node].ref = pos + 1 - t.nodes[node].length
                if (t.slab[t.nodes[node].kids] & 31) > LINEAR_LC:
                    # Keys are read through refs, so a hash table would need child re-keyed.
                    # Not expected: a hashed block means >4 children once, and a node that still
                    # has one child with no other suffix ending at it would have been merged.
                    # Kept so that a broken expectation costs a re-hash, not a lost child.
                    kid_remove(t, node, tok)
                    t.nodes[child].ref += 1
                    t.nodes[child].length -= 1
                    if kid_insert(t, node, child) < 0:
                        return -1
                else:
                    t.nodes[child].ref += 1
                    t.nodes[child].length -= 1
        elif t.nodes[child].length == 1:
            t.nodes[child].count += 1
            t.nodes[child].ref = pos
            top_raise(t, node, child)
            t.active[slot] = child
        else:
            # Split child after its first token; the new node takes child's place under node.
            c = node_new(t)
            if c < 0:
                return -1
            t.nodes[c].count = t.nodes[child].count + 1
            t.nodes[c].parent = node
            t.nodes[c].ref = pos
            t.nodes[c].length = 1
            kid_replace(t, node, tok, c)
            t.nodes[child].ref += 1
            t.nodes[child].length -= 1
            t.nodes[child].parent = c
            if kid_insert(t, c, child) < 0:
                return -1
            t.nodes[c].top = child
            if t.nodes[node].top == child:
                t.nodes[node].top = c
            else:
                top_raise(t, node, c)
            t.active[slot] = c
    return 0


cdef int tree_extend(Tree* t, const token_t* toks, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        if tree_append(t, toks[i]) < 0:
            return -1
    return 0


# -- matching and speculating ----------------------------------------------------------------------

cdef bint tree_match(const Tree* t, const token_t* head, Py_ssize_t m, token_t last,
                     int32_t* out_node, int32_t* out_j) noexcept nogil:
    """Walk ``head[0:m] + [last]`` down from the root; on success store where it ends."""
    cdef int32_t node = 0, j = 0
    cdef Py_ssize_t i
    cdef token_t tok
    for i in range(m + 1):
        tok = head[i] if i < m else last
        if j == t.nodes[node].length:
            node = kid_find(t, node, tok)
            if node < 0:
                return False
            j = 1
        else:
            if t.toks[t.nodes[node].ref + j] != tok:
                return False
            j += 1
    out_node[0] = node
    out_j[0] = j
    return True


cdef inline bint at_least(int64_t count, int64_t base, int64_t num, int64_t den,
                          int64_t slack) noexcept nogil:
    """``count / base >= num / den`` (slack 0) or ``>`` (slack 1), exactly.

    Every factor is below 2**31, so the products fit in int64. ``SuffixTree.__init__`` picks
    (num, den, slack) from ``min_token_prob``: num / den is the fraction nearest it with
    den < 2**31, so no ratio of counts lies strictly between the two; only the ratio equal to
    num / den needs deciding, and slack 1 rejects it when it is below a ``min_token_prob`` that
    does not stand for it.
    """
    return count * den - num * base >= slack


cdef Py_ssize_t spec_path(const Tree* t, int32_t node, int32_t j, Py_ssize_t cap, int64_t num,
                          int64_t den, int64_t slack, token_t* out, float* probs,
                          double* score) noexcept nogil:
    """Follow the most frequent continuation from (node, j) for at most ``cap`` tokens.

    The path probability is the product of child count / parent count over the branch points
    passed, i.e. count(node reached) / count(start node); drafting stops once it falls below
    ``num / den`` (compared in integers, see ``at_least``). Writes tokens (and their path probabilities, each one
    quotient of two counts) when the buffers are given; the score is the sum of the
    probabilities, added token by token (the tests' reference adds the same doubles in the same
    order).
    """
    cdef double prob = 1.0, s = 0.0
    cdef Py_ssize_t n = 0
    cdef int32_t c
    cdef int64_t base = t.nodes[node].count, cnt = base
    while n < cap and at_least(cnt, base, num, den, slack):
        if j < t.nodes[node].length:
            if out != NULL:
                out[n] = t.toks[t.nodes[node].ref + j]
            if probs != NULL:
                probs[n] = <float> prob
            s += prob
            n += 1
            j += 1
        else:
            c = t.nodes[node].top
            if c < 0:
                break
            cnt = t.nodes[c].count
            prob = <double> cnt / <double> base
            node = c
            j = 0
    score[0] = s
    return n


# -- removal (global tree) -------------------------------------------------------------------------

cdef void free_chain(Tree* t, int32_t node) noexcept nogil:
    """Free a node whose count reached 0 and its descendants (one chain: their counts were 1)."""
    cdef int32_t nxt
    while node >= 0:
        nxt = kid_any(t, node)
        node_free(t, node)
        node = nxt


# -- the drafter -----------------------------------------------------------------------------------

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


def _float_param(str name, value):
    """``value`` as a finite float: TypeError for non-numbers (and bools), ValueError for nan/inf."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    v = float(value)
    if not isfinite(v):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return v


cdef struct Item:                 # a candidate token of draft_tree's best-first expansion
    double prob                   # path probability of the token
    int64_t order                 # push order: earlier wins ties
    int32_t node                  # the token is edge[j] of node
    int32_t j
    int32_t parent                # index of the parent token in the output, -1 for a root
    int32_t depth                 # tokens from the match to this one (1 for a root)


cdef inline bint item_before(const Item* a, const Item* b) noexcept nogil:
    return a.prob > b.prob or (a.prob == b.prob and a.order < b.order)


cdef void heap_push(Item* h, Py_ssize_t n, Item it) noexcept nogil:
    """Push onto the heap h[0:n] (h has room for n + 1)."""
    cdef Py_ssize_t i = n, p
    while i > 0:
        p = (i - 1) >> 1
        if not item_before(&it, &h[p]):
            break
        h[i] = h[p]
        i = p
    h[i] = it


cdef Item heap_pop(Item* h, Py_ssize_t n) noexcept nogil:
    """Pop the best item of the heap h[0:n] (n >= 1)."""
    cdef Item top = h[0], last = h[n - 1]
    cdef Py_ssize_t i = 0, c
    n -= 1
    while True:
        c = 2 * i + 1
        if c >= n:
            break
        if c + 1 < n and item_before(&h[c + 1], &h[c]):
            c += 1
        if not item_before(&h[c], &last):
            break
        h[i] = h[c]
        i = c
    if n > 0:
        h[i] = last
    return top


@cython.final
cdef class SuffixTree(Drafter):
    """Suffix-tree drafter: SuffixDecoding with per-sequence trees and a global output cache.

    Parameters
    ----------
    max_depth : int
        Suffixes are stored cut to this many tokens; patterns are matched on at most this many
        (the last history tokens plus the token just sampled). A match of length k can draft at
        most ``max_depth - k`` tokens, so long matches trade context for draft room.
    max_spec_factor, max_spec_offset : float
        A match of length k drafts at most ``floor(max_spec_factor * k + max_spec_offset)``
        tokens (and at most ``n_max``).
    min_token_prob : float
        Stop drafting once the estimated probability of the drafted path (the product of
        child count / parent count at each branch point) drops below this, in [0, 1]. The test
        is exact, in integers: a value that is the double nearest a fraction with a
        denominator below 2**31 stands for that fraction, so a path whose probability is
        exactly 1/10 drafts at 0.1 (a product of rounded quotients would make it 0.0999...);
        any other value is compared as the real number it is.
    max_cached_requests : int
        Finished outputs kept in the global tree: ``end(output)`` adds one and evicts the oldest
        beyond this many. 0 disables the global tree, -1 keeps every output.

    ``draft`` brings the sequence's tree up to date with the history it receives: the history must
    extend the one of the previous call (prompt + accepted tokens). A history that is shorter, or
    whose token at the previous end differs, rebuilds the tree from scratch. One instance must not
    be used from several threads at once (the global tree is shared between sequences).
    """

    def __cinit__(self):
        self.local = NULL
        self.stale = NULL
        self.n_stale = 0
        self.cap_stale = 0
        memset(&self.glob, 0, sizeof(Tree))

    def __init__(self, max_depth=24, max_spec_factor=1.0, max_spec_offset=0.0,
                 min_token_prob=0.1, max_cached_requests=10000):
        self.max_depth = _int_param("max_depth", max_depth, 1, MAX_DEPTH_LIMIT)
        self.max_spec_factor = _float_param("max_spec_factor", max_spec_factor)
        if self.max_spec_factor < 0:
            raise ValueError(f"max_spec_factor must be >= 0, got {max_spec_factor}")
        self.max_spec_offset = _float_param("max_spec_offset", max_spec_offset)
        self.min_token_prob = _float_param("min_token_prob", min_token_prob)
        if not 0.0 <= self.min_token_prob <= 1.0:
            raise ValueError(f"min_token_prob must be in [0, 1], got {min_token_prob}")
        # The exact threshold test (see at_least): the fraction nearest min_token_prob with a
        # denominator below 2**31; the ratio equal to it passes unless it is below a
        # min_token_prob that is not its nearest double.
        frac = Fraction(self.min_token_prob).limit_denominator(INT32_MAX)
        self.prob_num = frac.numerator
        self.prob_den = frac.denominator
        self.prob_slack = 1 if float(frac) != self.min_token_prob and frac < Fraction(
            self.min_token_prob) else 0
        self.max_cached_requests = _int_param("max_cached_requests", max_cached_requests,
                                              -1, 0x7FFFFFFF)
        self._free_all()

    def __dealloc__(self):
        cdef int i
        if self.local != NULL:
            for i in range(self.n_seq):
                tree_free(&self.local[i])
            free(self.local)
        tree_free(&self.glob)
        free(self.stale)

    def _free_all(self):
        cdef int i
        if self.local != NULL:
            for i in range(self.n_seq):
                tree_free(&self.local[i])
                self.begun[i] = 0
        tree_free(&self.glob)
        self.cached.clear()
        free(self.stale)
        self.stale = NULL
        self.n_stale = 0
        self.cap_stale = 0

    # -- hooks ---------------------------------------------------------------------------------

    cdef int _reserve(self, int n_seq) except -1:
        cdef Tree* grown = <Tree*> realloc(self.local, <size_t> n_seq * sizeof(Tree))
        if grown == NULL:
            raise MemoryError()
        memset(grown + self.n_seq, 0, <size_t> (n_seq - self.n_seq) * sizeof(Tree))
        self.local = grown
        return 0

    cdef int _begin(self, int seq, const token_t* prompt, Py_ssize_t n_prompt) except -1 nogil:
        cdef Tree* t = &self.local[seq]
        if tree_reset(t, self.max_depth) < 0 or tree_extend(t, prompt, n_prompt) < 0:
            tree_free(t)
            return raise_memory_error()
        return 0

    cdef int _sync(self, int seq, const token_t* history, Py_ssize_t n_history) except -1 nogil:
        """Append the history tokens the sequence's tree has not seen (rebuild if it diverged)."""
        cdef Tree* t = &self.local[seq]
        cdef Py_ssize_t have = <Py_ssize_t> t.tok_end
        if not tree_ready(t) or n_history < have or (
                have > 0 and (history[have - 1] != t.toks[have - 1] or history[0] != t.toks[0])):
            if tree_reset(t, self.max_depth) < 0:
                tree_free(t)
                return raise_memory_error()
            have = 0
        if tree_extend(t, history + have, n_history - have) < 0:
            tree_free(t)
            return raise_memory_error()
        return 0

    cdef Match _choose(self, int seq, const token_t* history, Py_ssize_t n_history,
                       token_t id_last, Py_ssize_t n_max) noexcept nogil:
        """The best match over both trees (``tree == NULL`` if neither can draft)."""
        cdef Match best, gbest
        cdef const Tree* t = &self.local[seq]
        cdef const Tree* g = &self.glob
        cdef Py_ssize_t k, n, cap, p_len = min(<Py_ssize_t> self.max_depth, n_history + 1)
        cdef int32_t base, node, j
        cdef double score, c
        best.tree = NULL
        best.score = 0.0
        gbest.tree = NULL
        gbest.score = 0.0
        # Sequence tree: the active ring already holds where each history suffix ends, so the
        # match of length k is one child step from the suffix of length k - 1.
        for k in range(1, p_len + 1):
            if k == 1:
                base = 0
            else:
                base = t.active[(t.act_head + t.act_len - (k - 1)) % t.max_depth]
            node = kid_find(t, base, id_last)
            if node < 0:
                break          # every longer pattern ends with this one: no match either
            c = floor(<double> k * self.max_spec_factor + self.max_spec_offset + 1e-6)
            cap = n_max if c >= <double> n_max else (<Py_ssize_t> c if c > 0 else 0)
            n = spec_path(t, node, 1, cap, self.prob_num, self.prob_den, self.prob_slack, NULL, NULL,
                              &score)
            if n > 0 and score >= best.score:
                best.tree = t
                best.node = node
                best.j = 1
                best.cap = cap
                best.match_len = k
                best.score = score
        # Global tree: walk each pattern suffix down from the root.
        if tree_ready(g) and g.nodes[0].count > 0:
            for k in range(1, p_len + 1):
                if not tree_match(g, history + n_history - (k - 1), k - 1, id_last, &node, &j):
                    break
                c = floor(<double> k * self.max_spec_factor + self.max_spec_offset + 1e-6)
                cap = n_max if c >= <double> n_max else (<Py_ssize_t> c if c > 0 else 0)
                n = spec_path(g, node, j, cap, self.prob_num, self.prob_den, self.prob_slack, NULL, NULL,
                              &score)
                if n > 0 and score >= gbest.score:
                    gbest.tree = g
                    gbest.node = node
                    gbest.j = j
                    gbest.cap = cap
                    gbest.match_len = k
                    gbest.score = score
        if gbest.tree != NULL and gbest.score > best.score:
            return gbest
        return best

    cdef Py_ssize_t _draft(self, int seq, const token_t* history, Py_ssize_t n_history,
                           token_t id_last, Py_ssize_t n_max, token_t* out) except -1 nogil:
        cdef Match m
        cdef double score
        self._sync(seq, history, n_history)
        m = self._choose(seq, history, n_history, id_last, n_max)
        if m.tree == NULL:
            return 0
        return spec_path(m.tree, m.node, m.j, m.cap, self.prob_num, self.prob_den, self.prob_slack, out, NULL,
                         &score)

    cdef int _end(self, int seq, const token_t* output, Py_ssize_t n_output) except -1 nogil:
        cdef Tree* g = &self.glob
        tree_free(&self.local[seq])
        if self.max_cached_requests == 0 or n_output == 0:
            return 0
        if not tree_ready(g) and tree_reset(g, self.max_depth) < 0:
            tree_free(g)
            return raise_memory_error()
        g.act_len = 0                        # suffixes never run across two outputs
        if tree_extend(g, output, n_output) < 0:
            with gil:
                self._free_global()
            return raise_memory_error()
        self.cached.push_back(n_output)
        while self.max_cached_requests > 0 and <Py_ssize_t> self.cached.size() > self.max_cached_requests:
            self._evict_oldest()
        return 0

    def _free_global(self):
        tree_free(&self.glob)
        self.cached.clear()

    cdef int _evict_oldest(self) except -1 nogil:
        """Remove the oldest cached output's suffixes from the global tree.

        Every node's ref points into the newest output that passes through it (each insertion
        re-points the nodes it touches), so once the oldest output's suffixes are gone no live
        node refers to its tokens and they can be dropped from the arena.
        """
        cdef Tree* t = &self.glob
        cdef int64_t a = t.tok_begin, n = self.cached.front(), i, end, idx, shift
        cdef int32_t node, child, c, p, depth = t.max_depth, d
        cdef token_t tok
        cdef Py_ssize_t s
        cdef int64_t cap = self.cap_stale
        # Each node is marked stale at most once per removal: reserve for all of them first, so
        # that the removal itself cannot fail half way.
        if grow(<void**> &self.stale, &cap, t.n_live, sizeof(int32_t)) < 0:
            return raise_memory_error()
        self.cap_stale = cap
        self.cached.pop_front()
        self.n_stale = 0
        for i in range(a, a + n):
            end = i + depth if i + depth < a + n else a + n
            t.nodes[0].count -= 1
            node = 0
            idx = i
            while idx < end:
                tok = t.toks[idx]
                child = kid_find(t, node, tok)
                if child < 0:                # cannot happen in a consistent tree
                    break
                if t.nodes[node].top == child:
                    t.nodes[node].top = -2       # recomputed once, after the removal
                    self.stale[self.n_stale] = node
                    self.n_stale += 1
                t.nodes[child].count -= 1
                if t.nodes[child].count == 0:
                    kid_remove(t, node, tok)
                    free_chain(t, child)
                    break
                idx += t.nodes[child].length
                node = child
            # No suffix may end at node any more: fold it into an only child of equal count.
            if node != 0 and kid_count(t, node) == 1:
                c = kid_any(t, node)
                if t.nodes[c].count == t.nodes[node].count:
                    p = t.nodes[node].parent
                    tok = key_of(t, node)
                    t.nodes[c].ref -= t.nodes[node].length
                    t.nodes[c].length += t.nodes[node].length
                    t.nodes[c].parent = p
                    kid_replace(t, p, tok, c)
                    if t.nodes[p].top == node:
                        t.nodes[p].top = c
                    node_free(t, node)
        for s in range(self.n_stale):
            d = self.stale[s]
            if t.nodes[d].length >= 0 and t.nodes[d].top == -2:
                top_recompute(t, d)
        t.tok_begin += n
        # Drop the dead prefix of the arena once it outweighs the live part.
        if t.tok_begin > 4096 and t.tok_begin >= t.tok_end - t.tok_begin:
            shift = t.tok_begin
            memmove(t.toks, t.toks + shift, <size_t> (t.tok_end - shift) * sizeof(token_t))
            for d in range(1, t.n_nodes):
                if t.nodes[d].length >= 0:
                    t.nodes[d].ref -= <int32_t> shift
            t.tok_end -= shift
            t.tok_begin = 0
        return 0

    # -- Python level --------------------------------------------------------------------------

    def reset(self):
        """Drop every sequence's tree and the global tree (all sequences must ``begin`` again)."""
        with self.lock:
            self.check_free()
            self._free_all()

    def draft_tree(self, history, int id_last, Py_ssize_t n_max, int seq_id=0):
        """Tree-shaped draft for tree verification: ``(tokens, parents, probs)``.

        ``tokens`` (int32), ``parents`` (int32: index of the parent token, -1 for tokens that
        directly follow ``id_last``) and ``probs`` (float32: estimated path probability, in
        (0, 1]) describe at most ``n_max`` tokens, parents before children. The first tokens are
        the path draft (``draft`` returns exactly them, as the chain ``parents = -1, 0, 1, ...``);
        the rest are the other continuations of the same match, most probable first, down to
        ``min_token_prob`` and no deeper than the path draft's length cap.
        """
        cdef const token_t[::1] hist
        cdef token_t[::1] tok_v
        cdef int32_t[::1] par_v
        cdef float[::1] prob_v
        cdef Py_ssize_t n, n_path
        with self.lock:
            self.check_draft_args(n_max, id_last, seq_id)
            hist = self.checked_history(history, seq_id)
            tokens = np.empty(n_max, dtype=np.int32)
            parents = np.empty(n_max, dtype=np.int32)
            probs = np.empty(n_max, dtype=np.float32)
            tok_v = tokens
            par_v = parents
            prob_v = probs
            n = 0
            if n_max == 0:
                return tokens, parents, probs
            with nogil:
                n = self._draft_tree(seq_id, &hist[0] if hist.shape[0] else NULL, hist.shape[0],
                                     id_last, n_max, n_max, &tok_v[0], &par_v[0], &prob_v[0],
                                     &n_path)
            check_drafted(&tok_v[0], n)
            return tokens[:n].copy(), parents[:n].copy(), probs[:n].copy()

    cdef Py_ssize_t _draft_tree(self, int seq, const token_t* history, Py_ssize_t n_history,
                                token_t id_last, Py_ssize_t n_path_max, Py_ssize_t n_max,
                                token_t* out, int32_t* parents, float* probs,
                                Py_ssize_t* n_path) except -1 nogil:
        cdef Match m
        cdef const Tree* t
        cdef Item* heap = NULL
        cdef Item it
        cdef Py_ssize_t n = 0, n_heap = 0, q
        cdef int64_t cap_heap = 0, order = 0
        cdef int32_t node, j, c, i, top, depth
        cdef double prob, pc
        cdef int64_t base, num = self.prob_num, den = self.prob_den, slack = self.prob_slack
        n_path[0] = 0
        self._sync(seq, history, n_history)
        m = self._choose(seq, history, n_history, id_last, n_path_max)
        if m.tree == NULL:
            return 0
        t = m.tree
        # The chain: the path draft, pushing the branches it passes over as candidates.
        node = m.node
        j = m.j
        base = t.nodes[node].count     # path probabilities are count(node) / base (see spec_path)
        prob = 1.0
        depth = 0
        while n < m.cap and at_least(t.nodes[node].count, base, num, den, slack):
            if j < t.nodes[node].length:
                out[n] = t.toks[t.nodes[node].ref + j]
                parents[n] = <int32_t> n - 1
                if probs != NULL:
                    probs[n] = <float> prob
                n += 1
                depth += 1
                j += 1
                continue
            top = t.nodes[node].top
            if top < 0:
                break
            for i in range(kid_slots(t, node)):
                c = kid_at(t, node, i)
                if c < 0 or c == top:
                    continue
                if not at_least(t.nodes[c].count, base, num, den, slack):
                    continue
                pc = <double> t.nodes[c].count / <double> base
                if grow(<void**> &heap, &cap_heap, n_heap + 1, sizeof(Item)) < 0:
                    free(heap)
                    return raise_memory_error()
                it.prob = pc
                it.order = order
                it.node = c
                it.j = 0
                it.parent = <int32_t> n - 1
                it.depth = depth + 1
                order += 1
                heap_push(heap, n_heap, it)
                n_heap += 1
            prob = <double> t.nodes[top].count / <double> base
            node = top
            j = 0
        n_path[0] = n
        # Branches, most probable first; each emitted token offers its own continuations.
        while n < n_max and n_heap > 0:
            it = heap_pop(heap, n_heap)
            n_heap -= 1
            out[n] = t.toks[t.nodes[it.node].ref + it.j]
            parents[n] = it.parent
            if probs != NULL:
                probs[n] = <float> it.prob
            q = n
            n += 1
            if it.depth >= m.cap:
                continue
            if it.j + 1 < t.nodes[it.node].length:
                if grow(<void**> &heap, &cap_heap, n_heap + 1, sizeof(Item)) < 0:
                    free(heap)
                    return raise_memory_error()
                it.j += 1
                it.parent = <int32_t> q
                it.depth += 1
                it.order = order
                order += 1
                heap_push(heap, n_heap, it)
                n_heap += 1
                continue
            node = it.node
            for i in range(kid_slots(t, node)):
                c = kid_at(t, node, i)
                if c < 0:
                    continue
                if not at_least(t.nodes[c].count, base, num, den, slack):
                    continue
                pc = <double> t.nodes[c].count / <double> base
                if grow(<void**> &heap, &cap_heap, n_heap + 1, sizeof(Item)) < 0:
                    free(heap)
                    return raise_memory_error()
                heap_push(heap, n_heap, Item(pc, order, c, 0, <int32_t> q, it.depth + 1))
                order += 1
                n_heap += 1
        free(heap)
        return n

    def memory_bytes(self):
        """Bytes allocated by all trees (every sequence's and the global one)."""
        cdef size_t total
        cdef int i
        with self.lock:
            self.check_free()
            total = tree_bytes(&self.glob) + <size_t> self.cap_stale * sizeof(int32_t)
            for i in range(self.n_seq):
                total += tree_bytes(&self.local[i])
            return total

    def tree_stats(self, seq_id=None):
        """Size of a sequence's tree, or of the global one (``seq_id=None``).

        ``nodes`` and ``tokens`` are live; ``bytes`` is what the tree has allocated and
        ``bytes_used`` the part of it in use (the rest is growth room and freed slots).
        """
        cdef const Tree* t
        with self.lock:
            self.check_free()
            t = self._tree(seq_id)
            if not tree_ready(t):
                return {"nodes": 0, "tokens": 0, "bytes": tree_bytes(t), "bytes_used": 0}
            return {"nodes": t.n_live, "tokens": t.tok_end - t.tok_begin, "bytes": tree_bytes(t),
                    "bytes_used": (t.n_live * sizeof(Node) + t.slab_used * sizeof(int32_t)
                                   + (t.tok_end - t.tok_begin) * sizeof(token_t)
                                   + t.max_depth * sizeof(int32_t))}

    @property
    def n_cached(self):
        """Outputs currently held by the global tree."""
        return self.cached.size()

    cdef const Tree* _tree(self, seq_id) except NULL:
        if seq_id is None:
            return &self.glob
        self._check_seq(seq_id)
        return &self.local[<int> seq_id]

    def _dump(self, seq_id=None):
        """Every node as ``(string, count, top child's first token or -1, number of children)``.

        For tests: the string is the node's full path from the root (the root is ``()``).
        """
        cdef const Tree* t = self._tree(seq_id)
        cdef int32_t node, c
        cdef int64_t i
        if not tree_ready(t):
            return []
        toks = [t.toks[i] for i in range(t.tok_end)]
        rows = []
        stack = [(0, ())]
        while stack:
            node, prefix = stack.pop()
            top = t.nodes[node].top
            rows.append((prefix, t.nodes[node].count, -1 if top < 0 else key_of(t, top),
                         kid_count(t, node)))
            for i in range(kid_slots(t, node)):
                c = kid_at(t, node, <int32_t> i)
                if c < 0:
                    continue
                if t.nodes[c].parent != node:
                    raise AssertionError(f"node {c}: parent {t.nodes[c].parent} != {node}")
                if t.nodes[c].ref < t.tok_begin or t.nodes[c].ref + t.nodes[c].length > t.tok_end:
                    raise AssertionError(f"node {c}: edge outside the live arena")
                stack.append((c, prefix + tuple(int(x) for x in
                                               toks[t.nodes[c].ref:t.nodes[c].ref + t.nodes[c].length])))
        if len(rows) != t.n_live:
            raise AssertionError(f"{len(rows)} reachable nodes, {t.n_live} live")
        return rows

    def __repr__(self):
        return (f"SuffixTree(max_depth={self.max_depth}, max_spec_factor={self.max_spec_factor}, "
                f"max_spec_offset={self.max_spec_offset}, min_token_prob={self.min_token_prob}, "
                f"max_cached_requests={self.max_cached_requests})")
