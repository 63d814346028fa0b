# Declarations of the parts of llama.h (llama.cpp 0c1e570) that spec uses, in header order.
# Struct fields are listed only where spec reads or writes them (Cython needs no full layout:
# the C compiler sees the real header). Keep prototypes in sync when the pin moves.
from libc.stdint cimport int8_t, int32_t, int64_t, uint8_t, uint32_t, uint64_t


cdef extern from "ggml.h" nogil:
    cdef enum ggml_log_level:
        GGML_LOG_LEVEL_NONE
        GGML_LOG_LEVEL_DEBUG
        GGML_LOG_LEVEL_INFO
        GGML_LOG_LEVEL_WARN
        GGML_LOG_LEVEL_ERROR
        GGML_LOG_LEVEL_CONT

    # typedef void (*ggml_log_callback)(enum ggml_log_level level, const char * text, void * user_data);
    ctypedef void (*ggml_log_callback)(ggml_log_level level, const char* text, void* user_data) noexcept

    # typedef bool (*ggml_abort_callback)(void * data);
    ctypedef bint (*ggml_abort_callback)(void* data) noexcept


cdef extern from "ggml-backend.h" nogil:
    ctypedef struct ggml_backend_device:
        pass
    ctypedef ggml_backend_device* ggml_backend_dev_t
    ctypedef struct ggml_backend_reg:
        pass
    ctypedef ggml_backend_reg* ggml_backend_reg_t
    enum:   # enum ggml_backend_dev_type (the function below has the same name)
        GGML_BACKEND_DEVICE_TYPE_CPU
        GGML_BACKEND_DEVICE_TYPE_GPU
        GGML_BACKEND_DEVICE_TYPE_IGPU
        GGML_BACKEND_DEVICE_TYPE_ACCEL
    size_t ggml_backend_reg_count()
    ggml_backend_reg_t ggml_backend_reg_get(size_t index)
    const char* ggml_backend_reg_name(ggml_backend_reg_t reg)
    size_t ggml_backend_dev_count()
    ggml_backend_dev_t ggml_backend_dev_get(size_t index)
    const char* ggml_backend_dev_name(ggml_backend_dev_t device)
    const char* ggml_backend_dev_description(ggml_backend_dev_t device)
    void ggml_backend_dev_memory(ggml_backend_dev_t device, size_t* free, size_t* total)
    int ggml_backend_dev_type(ggml_backend_dev_t device)


cdef extern from "ggml-cpu.h" nogil:
    # Feature probes reported by `python -m spec info`.
    int ggml_cpu_has_avx()
    int ggml_cpu_has_avx2()
    int ggml_cpu_has_avx512()
    int ggml_cpu_has_fma()
    int ggml_cpu_has_f16c()
    int ggml_cpu_has_sse3()
    int ggml_cpu_has_neon()


cdef extern from "llama.h" nogil:
    int LLAMA_DEFAULT_SEED
    int LLAMA_TOKEN_NULL

    cdef struct llama_vocab
    cdef struct llama_model
    cdef struct llama_context
    cdef struct llama_memory_i
    ctypedef llama_memory_i* llama_memory_t

    ctypedef int32_t llama_pos
    ctypedef int32_t llama_token
    ctypedef int32_t llama_seq_id

    cdef enum llama_vocab_type:
        LLAMA_VOCAB_TYPE_NONE
        LLAMA_VOCAB_TYPE_SPM
        LLAMA_VOCAB_TYPE_BPE
        LLAMA_VOCAB_TYPE_WPM
        LLAMA_VOCAB_TYPE_UGM
        LLAMA_VOCAB_TYPE_RWKV
        LLAMA_VOCAB_TYPE_PLAMO2
        LLAMA_VOCAB_TYPE_TEST

    cdef enum llama_context_type:
        LLAMA_CONTEXT_TYPE_DEFAULT
        LLAMA_CONTEXT_TYPE_MTP

    ctypedef struct llama_batch:
        int32_t n_tokens
        llama_token* token
        float* embd
        llama_pos* pos
        int32_t* n_seq_id
        llama_seq_id** seq_id
        int8_t* logits

    ctypedef enum llama_split_mode:
        LLAMA_SPLIT_MODE_NONE
        LLAMA_SPLIT_MODE_LAYER
        LLAMA_SPLIT_MODE_ROW
        LLAMA_SPLIT_MODE_TENSOR

    cdef struct llama_model_params:
        int32_t n_gpu_layers
        llama_split_mode split_mode
        int32_t main_gpu
        const float* tensor_split
        bint vocab_only
        bint check_tensors
        bint load_mtp

    cdef struct llama_context_params:
        uint32_t n_ctx
        uint32_t n_batch
        uint32_t n_ubatch
        uint32_t n_seq_max
        uint32_t n_rs_seq
        int32_t n_threads
        int32_t n_threads_batch
        llama_context_type ctx_type
        ggml_abort_callback abort_callback
        void* abort_callback_data
        bint embeddings
        bint no_perf
        bint kv_unified
        llama_context* ctx_other

    const char* llama_version()

    size_t llama_max_devices()
    llama_model_params llama_model_default_params()
    llama_context_params llama_context_default_params()

    void llama_backend_init()

    # struct llama_model * llama_model_load_from_file(const char * path_model, struct llama_model_params params);
    llama_model* llama_model_load_from_file(const char* path_model, llama_model_params params)
    void llama_model_free(llama_model* model)

    # struct llama_context * llama_init_from_model(struct llama_model * model, struct llama_context_params params);
    llama_context* llama_init_from_model(llama_model* model, llama_context_params params)
    void llama_free(llama_context* ctx)

    int64_t llama_time_us()

    uint32_t llama_n_ctx(const llama_context* ctx)
    uint32_t llama_n_batch(const llama_context* ctx)
    uint32_t llama_n_ubatch(const llama_context* ctx)
    uint32_t llama_n_seq_max(const llama_context* ctx)
    # uint32_t llama_n_rs_seq(const struct llama_context * ctx); recurrent rollback depth (0: none)
    uint32_t llama_n_rs_seq(const llama_context* ctx)

    const llama_model* llama_get_model(const llama_context* ctx)
    llama_memory_t llama_get_memory(const llama_context* ctx)

    const llama_vocab* llama_model_get_vocab(const llama_model* model)

    int32_t llama_model_n_ctx_train(const llama_model* model)
    int32_t llama_model_n_embd(const llama_model* model)
    int32_t llama_model_n_layer(const llama_model* model)
    int32_t llama_model_n_layer_nextn(const llama_model* model)
    int32_t llama_model_n_head(const llama_model* model)

    int llama_vocab_get_type "llama_vocab_type"(const llama_vocab* vocab)  # renamed: clashes with the enum
    int32_t llama_vocab_n_tokens(const llama_vocab* vocab)

    # Metadata values/keys are written into buf; return the full length (or -1 if absent).
    int32_t llama_model_meta_val_str(const llama_model* model, const char* key, char* buf, size_t buf_size)
    int32_t llama_model_meta_count(const llama_model* model)
    int32_t llama_model_meta_key_by_index(const llama_model* model, int32_t i, char* buf, size_t buf_size)
    int32_t llama_model_meta_val_str_by_index(const llama_model* model, int32_t i, char* buf, size_t buf_size)
    int32_t llama_model_desc(const llama_model* model, char* buf, size_t buf_size)
    uint64_t llama_model_size(const llama_model* model)
    uint64_t llama_model_n_params(const llama_model* model)
    bint llama_model_is_recurrent(const llama_model* model)
    bint llama_model_is_hybrid(const llama_model* model)

    # Removes positions [p0, p1) of seq_id; false if a partial sequence cannot be removed.
    void llama_memory_clear(llama_memory_t mem, bint data)
    bint llama_memory_seq_rm(llama_memory_t mem, llama_seq_id seq_id, llama_pos p0, llama_pos p1)
    void llama_memory_seq_cp(llama_memory_t mem, llama_seq_id seq_id_src, llama_seq_id seq_id_dst,
                             llama_pos p0, llama_pos p1)
    llama_pos llama_memory_seq_pos_min(llama_memory_t mem, llama_seq_id seq_id)
    llama_pos llama_memory_seq_pos_max(llama_memory_t mem, llama_seq_id seq_id)

    size_t llama_state_seq_get_size(llama_context* ctx, llama_seq_id seq_id)
    size_t llama_state_seq_get_data(llama_context* ctx, uint8_t* dst, size_t size, llama_seq_id seq_id)
    size_t llama_state_seq_set_data(llama_context* ctx, const uint8_t* src, size_t size,
                                    llama_seq_id dest_seq_id)

    # #define LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY 1: only the state that cannot be rolled back by
    # position (recurrent / SWA caches) -- what a speculative checkpoint needs.
    int LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY
    ctypedef uint32_t llama_state_seq_flags
    size_t llama_state_seq_get_size_ext(llama_context* ctx, llama_seq_id seq_id,
                                        llama_state_seq_flags flags)
    size_t llama_state_seq_get_data_ext(llama_context* ctx, uint8_t* dst, size_t size,
                                        llama_seq_id seq_id, llama_state_seq_flags flags)
    size_t llama_state_seq_set_data_ext(llama_context* ctx, const uint8_t* src, size_t size,
                                        llama_seq_id dest_seq_id, llama_state_seq_flags flags)

    # struct llama_batch llama_batch_init(int32_t n_tokens, int32_t embd, int32_t n_seq_max);
    llama_batch llama_batch_init(int32_t n_tokens, int32_t embd, int32_t n_seq_max)
    void llama_batch_free(llama_batch batch)

    # 0 ok; 1 no KV slot; 2 aborted; -1 invalid batch; < -1 fatal.
    int32_t llama_decode(llama_context* ctx, llama_batch batch)

    void llama_set_n_threads(llama_context* ctx, int32_t n_threads, int32_t n_threads_batch)

    # Post-norm embeddings output on/off (a session reads the flag back, see _sessions.pxi).
    # LLAMA_API void llama_set_embeddings(struct llama_context * ctx, bool embeddings);
    void llama_set_embeddings(llama_context* ctx, bint embeddings)
    int32_t llama_n_threads(llama_context* ctx)

    void llama_set_abort_callback(llama_context* ctx, ggml_abort_callback abort_callback,
                                  void* abort_callback_data)
    void llama_synchronize(llama_context* ctx)

    # Row i of the logits of the last decode (negative i counts from the end); NULL if invalid.
    float* llama_get_logits(llama_context* ctx)
    float* llama_get_logits_ith(llama_context* ctx, int32_t i)

    const char* llama_vocab_get_text(const llama_vocab* vocab, llama_token token)
    bint llama_vocab_is_eog(const llama_vocab* vocab, llama_token token)
    bint llama_vocab_is_control(const llama_vocab* vocab, llama_token token)
    llama_token llama_vocab_bos(const llama_vocab* vocab)
    llama_token llama_vocab_eos(const llama_vocab* vocab)
    llama_token llama_vocab_eot(const llama_vocab* vocab)
    llama_token llama_vocab_nl(const llama_vocab* vocab)
    llama_token llama_vocab_pad(const llama_vocab* vocab)
    llama_token llama_vocab_mask(const llama_vocab* vocab)
    bint llama_vocab_get_add_bos(const llama_vocab* vocab)
    bint llama_vocab_get_add_eos(const llama_vocab* vocab)

    # Returns the token count, or minus the count needed when n_tokens_max is too small.
    int32_t llama_tokenize(const llama_vocab* vocab, const char* text, int32_t text_len,
                           llama_token* tokens, int32_t n_tokens_max,
                           bint add_special, bint parse_special)
    int32_t llama_token_to_piece(const llama_vocab* vocab, llama_token token, char* buf,
                                 int32_t length, int32_t lstrip, bint special)
    int32_t llama_detokenize(const llama_vocab* vocab, const llama_token* tokens, int32_t n_tokens,
                             char* text, int32_t text_len_max, bint remove_special,
                             bint unparse_special)

    const char* llama_print_system_info()

    void llama_log_set(ggml_log_callback log_callback, void* user_data)
