# Declarations of the parts of llama.cpp's common library (0c1e570: common/common.h, common/log.h,
# common/speculative.h) that spec.drafters._upstream wraps: the model-free n-gram speculative types.
# Struct fields are listed only where spec reads or writes them (the C++ compiler sees the real
# headers). Keep prototypes in sync when the pin moves.
from libc.stdint cimport int32_t, uint16_t, uint32_t
from libcpp cimport bool
from libcpp.string cimport string
from libcpp.vector cimport vector

from spec._c.llama cimport llama_context


cdef extern from "llama.h" nogil:
    # The three scalar typedefs common/speculative.h uses; the rest of llama.h is in spec/_c/llama.pxd.
    # typedef int32_t llama_pos; typedef int32_t llama_token; typedef int32_t llama_seq_id;
    ctypedef int32_t llama_pos
    ctypedef int32_t llama_token
    ctypedef int32_t llama_seq_id


cdef extern from "common.h" nogil:
    # struct common_batch: a token batch (mirror vector + llama_batch_ext) that
    # common_speculative_process reads; entries are (id, pos, seq_id, output).
    cdef cppclass common_batch:
        common_batch()
        common_batch(llama_context* ctx) except +
        void clear()
        int32_t size()
        int32_t add(llama_token id, llama_pos pos, llama_seq_id seq_id, bool output) except +

    # bool common_context_can_seq_rm(...) is not used: the engine probes the model type instead.

    # using llama_tokens = std::vector<llama_token>;
    ctypedef vector[llama_token] llama_tokens

    cdef enum common_speculative_type:
        COMMON_SPECULATIVE_TYPE_NONE
        COMMON_SPECULATIVE_TYPE_DRAFT_SIMPLE
        COMMON_SPECULATIVE_TYPE_DRAFT_EAGLE3
        COMMON_SPECULATIVE_TYPE_DRAFT_MTP
        COMMON_SPECULATIVE_TYPE_DRAFT_DFLASH
        COMMON_SPECULATIVE_TYPE_DRAFT_DSPARK
        COMMON_SPECULATIVE_TYPE_NGRAM_SIMPLE
        COMMON_SPECULATIVE_TYPE_NGRAM_MAP_K
        COMMON_SPECULATIVE_TYPE_NGRAM_MAP_K4V
        COMMON_SPECULATIVE_TYPE_NGRAM_MOD
        COMMON_SPECULATIVE_TYPE_NGRAM_CACHE
        COMMON_SPECULATIVE_TYPE_COUNT

    cdef cppclass common_params_speculative_ngram_mod:
        int32_t n_match         # n-gram length hashed into the table (default 24)
        int32_t n_max           # longest draft (default 64)
        int32_t n_min           # drafts shorter than this are dropped (default 48)

    cdef cppclass common_params_speculative_ngram_map:
        uint16_t size_n         # key n-gram length (default 12)
        uint16_t size_m         # drafted m-gram length (default 48)
        uint16_t min_hits       # key hits before a k4v draft is proposed (default 1)

    cdef cppclass common_params_speculative_ngram_cache:
        string lookup_cache_static      # path of a static n-gram cache file ("" = none)
        string lookup_cache_dynamic     # path of a dynamic n-gram cache file ("" = none)

    # Model-based types (draft-simple, eagle3, mtp, dflash) read these.
    cdef cppclass common_params_speculative_draft:
        int32_t n_max           # longest draft (default 3)
        int32_t n_min           # drafts shorter than this are dropped (default 0)
        float p_min             # stop drafting below this top-1 draft probability (default 0)
        bool backend_sampling   # draft sampling offloaded to the backend (default true)
        llama_context* ctx_tgt
        llama_context* ctx_dft

    cdef cppclass common_params_speculative:
        vector[common_speculative_type] types   # a chain; the first non-empty draft wins
        common_params_speculative_draft draft
        common_params_speculative_ngram_mod ngram_mod
        common_params_speculative_ngram_map ngram_simple
        common_params_speculative_ngram_map ngram_map_k
        common_params_speculative_ngram_map ngram_map_k4v
        common_params_speculative_ngram_cache ngram_cache


cdef extern from "log.h" nogil:
    int LOG_LEVEL_DEBUG
    int LOG_LEVEL_TRACE
    int LOG_LEVEL_INFO
    int LOG_LEVEL_WARN
    int LOG_LEVEL_ERROR
    int LOG_LEVEL_OUTPUT

    # Messages whose verbosity is above the threshold are dropped before formatting.
    # int  common_log_get_verbosity_thold(void);
    int common_log_get_verbosity_thold()
    # void common_log_set_verbosity_thold(int verbosity); // not thread-safe
    void common_log_set_verbosity_thold(int verbosity)

    cdef cppclass common_log
    # struct common_log * common_log_main(); // singleton (its worker thread prints to stdout/stderr)
    common_log* common_log_main()
    # void common_log_flush(struct common_log * log); // flush all pending log messages
    void common_log_flush(common_log* log)


cdef extern from "speculative.h" nogil:
    cdef cppclass common_speculative

    # enum common_speculative_type common_speculative_type_from_name(const std::string & name);
    # (COMMON_SPECULATIVE_TYPE_COUNT for an unknown name)
    common_speculative_type common_speculative_type_from_name(const string& name) except +

    # common_speculative * common_speculative_init(common_params_speculative & params, uint32_t n_seq);
    # NULL when no type is enabled; throws std::invalid_argument on bad synthetic-rate params.
    common_speculative* common_speculative_init(common_params_speculative& params,
                                                uint32_t n_seq) except +

    # void common_speculative_free(common_speculative * spec);
    void common_speculative_free(common_speculative* spec)

    cdef cppclass common_speculative_draft_params:
        bool drafting                   # set to request a draft for this sequence; reset by draft()
        int32_t n_max                   # longer results are truncated (<= 0: no limit)
        llama_pos pos0                  # n_past of the target context
        llama_token id_last             # the just-sampled token, not in *prompt
        const llama_tokens* prompt      # every token in the target context
        llama_tokens* result            # must be empty on entry; receives the draft

    # common_speculative_draft_params & common_speculative_get_draft_params(common_speculative * spec, llama_seq_id seq_id);
    common_speculative_draft_params& common_speculative_get_draft_params(common_speculative* spec,
                                                                         llama_seq_id seq_id)

    # void common_speculative_begin(common_speculative * spec, llama_seq_id seq_id, const llama_tokens & prompt);
    void common_speculative_begin(common_speculative* spec, llama_seq_id seq_id,
                                  const llama_tokens& prompt) except +

    # void common_speculative_draft(common_speculative * spec);
    void common_speculative_draft(common_speculative* spec) except +

    # void common_speculative_accept(common_speculative * spec, llama_seq_id, uint16_t n_accepted);
    # Aborts (GGML_ASSERT) when no draft was ever produced for seq_id and n_accepted != 0.
    void common_speculative_accept(common_speculative* spec, llama_seq_id seq_id,
                                   uint16_t n_accepted) except +

    # bool common_speculative_process(common_speculative * spec, const common_batch & batch);
    # Feeds a decoded target batch to the model-based types (draft decodes); false on failure.
    bool common_speculative_process(common_speculative* spec, const common_batch& batch) except +

    # void common_speculative_print_stats(const common_speculative * spec);
    void common_speculative_print_stats(const common_speculative* spec) except +

    # int32_t common_speculative_n_max(const common_speculative * spec);
    int32_t common_speculative_n_max(const common_speculative* spec)
