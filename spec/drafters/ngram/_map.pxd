# ngram-map-k / ngram-map-k4v state: one map per sequence. See _map.pyx for details.
#
# Every index below is a position in the sequence's token history (the hot data holds no tokens),
# mirroring llama.cpp's common_ngram_map (common/ngram-map.h).
from libc.stdint cimport int16_t, uint16_t, uint32_t
from libcpp.vector cimport vector

from spec._c.typedefs cimport token_t
from spec.drafters._base cimport Drafter


cdef enum:
    NGRAM_MAX_VALUES = 4              # m-gram value slots per key
    NGRAM_HASH_MAP_SIZE = 262144      # 2^18 entries of the hash -> position map
    NGRAM_MAX_VALUE_COUNT = 16380     # saturation bound of key_num and value_num


cdef struct MapValue:
    Py_ssize_t value_idx              # history position of this m-gram after the key (0 = unused slot)
    uint16_t value_num                # occurrences of this m-gram after the key (saturating)
    int16_t n_accepted                # tokens accepted at its last draft; caps the next draft length


cdef struct MapKey:
    Py_ssize_t key_idx                # history position of the key n-gram (where it was first matched)
    Py_ssize_t stat_idx               # values are counted from here (inclusive) on the next draft
    uint16_t key_num                  # draft-time hits of this key (saturating)
    MapValue values[4]                # NGRAM_MAX_VALUES slots, filled left to right


cdef struct SeqMap:
    vector[MapKey] keys               # keys met at draft time, in creation order (first match wins)
    vector[uint32_t] key_pos          # keys[i].key_idx, contiguous for the lookup scan
    vector[uint32_t] key_map          # hash(n-gram) % 2^18 -> a position of that n-gram (0 = empty)
    uint32_t key_map_last_idx         # positions 1..key_map_last_idx are hashed into key_map
    Py_ssize_t size_last_begin        # history length at the last begin (the prompt)
    Py_ssize_t idx_last_check         # history length at the last begin or draft
    bint last_draft_created           # the last draft call chose a key (accept updates it)
    Py_ssize_t last_draft_key_idx     # index in keys of that key
    int last_draft_value_idx          # its value slot used for the draft
    vector[token_t] key_tokens        # scratch: the current key n-gram (size_n tokens)


cdef class NgramMap(Drafter):
    cdef readonly int size_n          # key n-gram length
    cdef readonly int size_m          # value m-gram length = maximum draft length
    cdef readonly int min_hits        # k4v: key hits needed before drafting
    cdef readonly bint key_only       # True: ngram-map-k (values[0] only); False: ngram-map-k4v
    cdef vector[SeqMap] maps          # one per sequence id

    cdef int _init_params(self, object size_n, object size_m, object min_hits, bint key_only) except -1
    cdef int _reset_seq(self, int seq) except -1


cdef class NgramMapK(NgramMap):
    pass


cdef class NgramMapK4V(NgramMap):
    pass
