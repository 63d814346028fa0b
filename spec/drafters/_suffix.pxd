# Suffix-tree drafter (SuffixDecoding). See _suffix.pyx for the algorithms.
#
# A tree stores every suffix, cut to max_depth tokens, of the sequences it holds. Nodes are
# path-compressed: a node's edge is arena[ref : ref + length], never a copy. Nodes, children
# blocks and tokens live in three flat C arrays addressed by int32 indices, so a tree is a few
# reallocs and no per-node malloc.
from libc.stdint cimport int32_t, int64_t
from libcpp.deque cimport deque

from spec._c.typedefs cimport token_t
from spec.drafters._base cimport Drafter


cdef struct Node:
    int32_t count    # occurrences of the string root..end of this node (suffixes through or ending here)
    int32_t parent   # parent node (-1 for the root); next free slot while on the free list
    int32_t ref      # arena position of this node's first edge token
    int32_t length   # edge length in tokens: 0 for the root, -1 for a free slot
    int32_t top      # child with the highest count (ties: smaller token id), -1 if none;
                     # -2 = stale while a removal runs (recomputed before it returns)
    int32_t kids     # slab offset of this node's children block, -1 for a leaf


cdef struct Tree:
    Node* nodes            # node pool; node 0 is the root
    int32_t n_nodes        # slots handed out so far (live + free-listed)
    int32_t cap_nodes      # allocated slots
    int32_t free_node      # head of the free-slot list, -1 if empty
    int32_t n_live         # live nodes
    int32_t* slab          # children blocks: header (n_children << 5 | log2 capacity), then
                           # child ids; <= 4 slots: packed list, else open addressing (-1 empty)
    int64_t slab_used      # words handed out
    int64_t slab_cap       # words allocated
    int32_t slab_free[32]  # free-block list head per log2 capacity, -1 if empty
    token_t* toks          # token arena; live tokens are toks[tok_begin:tok_end]
    int64_t tok_begin      # first live token (the global tree drops evicted outputs in front)
    int64_t tok_end        # one past the last token
    int64_t tok_cap        # allocated tokens
    int32_t* active        # ring of max_depth nodes: where each of the newest suffixes ends
    int32_t act_head       # ring slot of the oldest (longest) active suffix
    int32_t act_len        # active suffixes (<= max_depth)
    int32_t max_depth      # suffixes are cut to this many tokens


cdef struct Match:
    const Tree* tree       # tree the draft comes from (NULL: nothing to draft)
    int32_t node           # node holding the end of the matched pattern
    int32_t j              # tokens of that node's edge already matched
    Py_ssize_t cap         # draft length cap for this match
    Py_ssize_t match_len   # matched pattern length
    double score           # sum of the path draft's probabilities


cdef class SuffixTree(Drafter):
    cdef readonly int max_depth
    cdef readonly double max_spec_factor
    cdef readonly double max_spec_offset
    cdef readonly double min_token_prob
    cdef int64_t prob_num         # the fraction prob_num / prob_den nearest min_token_prob with
    cdef int64_t prob_den         #   prob_den < 2**31, for the exact threshold test (at_least)
    cdef int64_t prob_slack       # 1: a ratio equal to that fraction is below the threshold
    cdef readonly Py_ssize_t max_cached_requests
    cdef Tree* local              # per sequence id: prompt + output so far
    cdef Tree glob                # finished outputs, oldest evicted first
    cdef deque[int64_t] cached    # lengths of the outputs in glob's arena, oldest first
    cdef int32_t* stale           # nodes whose top child must be recomputed after a removal
    cdef Py_ssize_t n_stale
    cdef Py_ssize_t cap_stale

    cdef int _sync(self, int seq, const token_t* history, Py_ssize_t n_history) except -1 nogil
    cdef Match _choose(self, int seq, const token_t* history, Py_ssize_t n_history,
                       token_t id_last, Py_ssize_t n_max) noexcept nogil
    cdef int _evict_oldest(self) except -1 nogil
    cdef const Tree* _tree(self, seq_id) except NULL
