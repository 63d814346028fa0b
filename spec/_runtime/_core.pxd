# Handle classes over llama.cpp. See _core.pyx for details.
#
# Other compiled modules (the sessions, the engine loop) cimport Model and Context and drive them
# through their cdef methods.
from libc.stdint cimport int32_t, uint8_t
from libcpp.vector cimport vector

from spec._runtime._handle cimport Handle
from spec._c.llama cimport llama_batch, llama_context, llama_model, llama_vocab
from spec._c.typedefs cimport pos_t, seq_t, token_t


cdef class Model(Handle):
    cdef llama_model* ptr
    cdef const llama_vocab* vocab
    cdef readonly str path
    cdef readonly int n_vocab
    cdef readonly bint vocab_only # loaded without weights: tokenizer only, no contexts
    cdef readonly bint load_mtp   # loaded with its MTP (NextN) heads

    cdef int check_tokens(self, const token_t[::1] tokens, str name) except -1


cdef class Context(Handle):
    cdef llama_context* ptr
    cdef readonly Model model
    cdef llama_batch batch        # reusable decode batch of capacity batch_capacity
    cdef int batch_capacity
    cdef readonly int n_ctx
    cdef readonly int n_batch
    cdef readonly int n_seq_max
    cdef readonly int n_vocab
    cdef int n_outputs            # rows of logits produced by the last decode
    cdef int n_views              # live numpy views over the logits buffer (it must not move)
    cdef int outputs_held         # rows of logits llama.cpp's output buffer holds (it grows)
    cdef object lock              # one thread at a time (see _one_thread_at_a_time)
    cdef object holder            # thread id of the engine generation holding it, or None
    cdef public object seed       # default seed for samplers drawing from this context
    cdef readonly str ctx_type    # "default" or "mtp"
    cdef readonly int n_rs_seq    # recurrent rollback depth llama.cpp granted (0: none)
    cdef readonly bint recurrent  # the model has recurrent layers (recurrent or hybrid memory)
    cdef readonly Context ctx_other  # the context this one reads (EAGLE-3 / MTP draft contexts)
    cdef vector[vector[uint8_t]] ckpts  # per-sequence checkpoint (recurrent state before a verify)
    cdef vector[pos_t] ckpt_next  # per sequence: positions held at checkpoint_save (-1: none)
    # The decode log (record()): every decode's rows and every KV edit made through this
    # context, flat: an op code, then its fields (see LOG_* in _core.pyx).
    cdef bint recording
    cdef vector[int32_t] log
    cdef Py_ssize_t n_logged

    cdef object nonfinite_error(self)   # NonFiniteLogitsError naming the model

    # Batch building: clear, add tokens, decode. The engine builds multi-sequence batches this way.
    cdef void batch_clear(self) noexcept nogil
    cdef int batch_add(self, token_t token, pos_t pos, seq_t seq, bint output) except -1 nogil
    cdef int batch_add_seq(self, int row, seq_t seq) except -1 nogil
    cdef int batch_decode(self) except -1 nogil
    # Decode tokens[0..n) of one sequence at positions pos0.., in chunks of n_batch; logits for
    # every position if all_logits, else for the last one only.
    cdef int decode_tokens(self, const token_t* tokens, int n, pos_t pos0, seq_t seq,
                           bint all_logits) except -1 nogil
    cdef const float* logits_row(self, int i) noexcept nogil
    cdef bint seq_rm(self, seq_t seq, pos_t p0, pos_t p1) noexcept nogil
    cdef void seq_cp(self, seq_t src, seq_t dst, pos_t p0, pos_t p1) noexcept nogil
    cdef void log_op(self, int32_t op, int32_t a, int32_t b, int32_t c, int32_t d) noexcept nogil
    cdef pos_t seq_pos_max(self, seq_t seq) noexcept nogil
    # Checkpoint path for memories that cannot drop a rejected suffix: save the sequence's
    # partial (recurrent) state before a verify decode, restore it on partial acceptance.
    cdef int ckpt_save(self, seq_t seq) except -1 nogil
    cdef int ckpt_load(self, seq_t seq) except -1 nogil
    cdef int _greedy_loop(self, seq_t seq, pos_t pos, int max_tokens, bint stop_at_eog,
                          token_t* out) except -1 nogil


# Prompt-like input as a C-contiguous int32 view (list, tuple or array), validated.
cdef const token_t[::1] _as_tokens(object tokens, str name)
