# Model-based speculation sessions over llama.cpp's common_speculative. See _sessions.pyx.
from libc.stdint cimport int64_t
from libcpp.vector cimport vector

from spec._c.common_spec cimport common_batch, common_speculative, llama_tokens
from spec._runtime._core cimport Context
from spec._c.typedefs cimport pos_t
from spec.drafters._base cimport Drafter


cdef class Session(Drafter):
    # A common_speculative over a target and a draft context. See _sessions.pyx.
    cdef common_speculative* spec
    cdef common_batch* mirror     # the target's last decoded batch, as process() takes it
    cdef readonly Context target_ctx
    cdef readonly Context draft_ctx
    cdef object _config
    cdef int kind                 # common_speculative_type
    cdef int cfg_n_seq
    cdef vector[llama_tokens] prompts   # per sequence: tokens in the target context
    cdef vector[pos_t] pos0       # per sequence: n_past of the last draft (-1: none)
    cdef vector[char] drafted_any # per sequence: some draft was non-empty (llama.cpp's impl_last)
    cdef llama_tokens result
    cdef int64_t n_calls, n_drafted, n_accepted, n_process
    # what common_speculative_init turned on in the target context (the type's requirement)
    cdef bint req_embd            # post-norm embeddings (llama_set_embeddings)
    cdef bint req_embd_nextn      # pre-norm / nextn hidden states (llama_set_embeddings_nextn)
    cdef tuple req_layers         # layers whose input is extracted (llama_set_embeddings_layer_inp)
    cdef int64_t t_draft_us, t_process_us, t_accept_us

    cdef bint closed              # close() was called (or it was collected)

    cdef void free_session(self) noexcept
    cdef int _live(self) except -1
    cdef int _seq(self, seq_id) except -1
    cdef int after_decode(self) except -1 nogil
    cdef int _check_batch(self, object batch) except -1
