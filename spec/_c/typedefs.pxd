# Shared C typedefs (one place, like sklearn's utils/_typedefs.pxd).
from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t

ctypedef int32_t token_t     # llama_token
ctypedef int32_t pos_t       # llama_pos
ctypedef int32_t seq_t       # llama_seq_id

cdef enum:
    # llama.cpp's LLAMA_MAX_SEQ (src/llama-cparams.h): the most sequences a context decodes
    # together; also bounds the sequence ids a drafter keeps state for.
    LLAMA_MAX_SEQ = 256
