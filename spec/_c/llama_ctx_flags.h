// What a llama_context extracts besides logits (llama.cpp 0c1e570: src/llama-cparams.h), which
// llama.h has no getters for. A session compares these flags before and after
// common_speculative_init to learn what its speculative type needs from the target context
// (spec/_sessions.pxi). Read-only; the setters are llama.h / llama-ext.h functions.
#pragma once

#include "llama-context.h"

// cparams.embeddings: post-norm embeddings (llama_set_embeddings)
static inline bool spec_ctx_embeddings(const llama_context * ctx) {
    return ctx->get_cparams().embeddings;
}

// cparams.embeddings_nextn: the hidden state before the final output norm
// (llama_set_embeddings_nextn; the Rust reference calls it "pre-norm")
static inline bool spec_ctx_embeddings_nextn(const llama_context * ctx) {
    return ctx->get_cparams().embeddings_nextn;
}

// cparams.embeddings_nextn_masked: nextn rows only where batch.logits != 0
static inline bool spec_ctx_embeddings_nextn_masked(const llama_context * ctx) {
    return ctx->get_cparams().embeddings_nextn_masked;
}

// size of cparams.embeddings_layer_inp (n_layer + 1)
static inline int spec_ctx_n_layer_inp(const llama_context * ctx) {
    return (int) ctx->get_cparams().embeddings_layer_inp.size();
}

// cparams.embeddings_layer_inp[il]: the input of layer il is extracted
// (llama_set_embeddings_layer_inp); false for il out of range
static inline bool spec_ctx_layer_inp(const llama_context * ctx, int il) {
    const auto & v = ctx->get_cparams().embeddings_layer_inp;
    return il >= 0 && (size_t) il < v.size() && v[il];
}
