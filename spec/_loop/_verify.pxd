# Sampling and draft verification kernels. See _verify.pyx for details.
#
# The kernels run without the GIL, allocate nothing per call and touch no Python object; the
# engine cimports them (workspace_init allocates once, up front). Callers pass valid arguments (the Python wrappers in _verify.pyx check
# them): n_vocab >= 1, token ids in [0, n_vocab), rows of n_vocab floats.
#
# Target distribution p of one row of logits l (llama.cpp's sampler chain order):
#   top-k (k highest logits, ties -> lower id) -> top-p (smallest prefix of the softmax(l) of the
#   survivors, in descending order, whose mass reaches top_p) -> min-p (keep l >= l_max + log(min_p))
#   -> temperature: p = softmax(l / temperature) over the survivors, 0 elsewhere.
# temperature <= 0 means greedy: p is one-hot at the argmax (lowest id on ties).
cimport cython
from libc.stdint cimport uint64_t

from spec._c.typedefs cimport token_t
from spec._runtime._argmax cimport argmax   # re-declared here for the kernels' users


cdef struct SamplerParams:
    float temperature    # <= 0: greedy
    int top_k            # <= 0: off
    float top_p          # >= 1: off
    float min_p          # <= 0: off


cdef struct Rng:         # xoshiro256** state, seeded via splitmix64
    uint64_t s[4]


cdef void rng_seed(Rng* rng, uint64_t seed) noexcept nogil
cdef uint64_t rng_next(Rng* rng) noexcept nogil
cdef double rng_uniform(Rng* rng) noexcept nogil            # in [0, 1), 53 random bits


cdef struct Workspace:   # scratch buffers sized for one vocabulary; allocated once per engine
    int n_vocab          # capacity: kernels refuse larger vocabularies (see below)
    float* w             # [n_vocab] unnormalized target weights exp((l - l_max)/T); 0 = filtered out
    float* r             # [n_vocab] residual weights max(0, p - q) for rejection with draft probs
    uint64_t* keys       # [n_vocab] sort keys (logit descending, id ascending) for top-k / top-p
    token_t* kept        # [n_vocab] ids with w > 0 possible, when a filter is on
    double* wsum         # [ceil(n_vocab / 256)] block sums of w when every id is a candidate
    double* rsum         # [ceil(n_vocab / 256)] block sums of r, likewise
    int n_kept           # entries of kept in use; -1 = no filter, every id is a candidate
    double z             # sum of w: p(i) = w[i] / z


# 0 on success; -1 with MemoryError set (the GIL is taken to set it) on allocation failure.
# The struct must be zeroed (or freed) before init; init frees what it held before.
cdef int workspace_init(Workspace* ws, int n_vocab) except -1 nogil
cdef void workspace_free(Workspace* ws) noexcept nogil   # idempotent; leaves the struct zeroed

# argmax(logits, n_vocab) (cimported above): highest logit, lowest index on ties; NaNs never win.
# Top-1 minus top-2 logit (+inf when n_vocab == 1); the top-1 id goes to *top if top != NULL.
cdef float top2_margin(const float* logits, int n_vocab, token_t* top) noexcept nogil

# Fill ws with the target distribution p of one row (see above); returns the argmax id.
# Afterwards p(i) = ws.w[i] / ws.z; with ws.n_kept >= 0 only ids in ws.kept[0:n_kept] are nonzero.
# A row whose maximum is not finite (+inf, or nothing above -inf) falls back to one-hot at the
# argmax; NaN entries get weight 0. Weights use a vectorized exp accurate to ~1e-7 relative that
# flushes weights below e^-87 (p < 1.7e-38) to 0.
# Returns -1 (and leaves ws unusable) if ws.n_vocab < n_vocab.
cdef token_t target_weights(const float* logits, int n_vocab, const SamplerParams* params,
                            Workspace* ws) noexcept nogil

# One token from p; argmax when temperature <= 0 (then rng and ws are not touched).
# Returns -1 if ws.n_vocab < n_vocab (a caller bug), otherwise a valid id.
cdef token_t sample_token(const float* logits, int n_vocab, const SamplerParams* params,
                          Rng* rng, Workspace* ws) noexcept nogil

# Both verifiers read n_draft + 1 rows of logits (row i at logits + i*row_stride: the target's
# distribution for draft position i; row n_draft is the bonus position), return n_accepted and
# write n_accepted + 1 tokens to out: the accepted drafts, then the correction at the first
# rejection or the bonus token when every draft passed.
#
# Greedy: accept while argmax(row i) == draft[i]; the emitted token is the argmax of the first
# mismatching row (or of the bonus row).
cdef int verify_greedy(const float* logits, Py_ssize_t row_stride, int n_vocab,
                       const token_t* draft, int n_draft, token_t* out) noexcept nogil

# Stochastic (Leviathan et al. 2023; Chen et al. 2023), lossless: the emitted tokens follow p.
#   draft_probs == NULL (deterministic drafter, q one-hot): accept draft[i] with probability
#     p(draft[i]); on rejection sample from p with draft[i] removed, renormalized.
#   draft_probs = n_draft rows of n_vocab floats (row i at draft_probs + i*n_vocab), the drafter's
#     distribution q_i that draft[i] was sampled from: accept with probability min(1, p/q); on
#     rejection sample from normalize(max(0, p - q)).
#   Every draft accepted: the bonus token is sampled from p of row n_draft.
# One uniform per tested draft, plus (at most) one for the emitted token. temperature <= 0: verify_greedy
# (rng and ws untouched). Draft ids outside [0, n_vocab) are rejected (p = 0).
# Returns -1 (out untouched) if ws.n_vocab < n_vocab.
cdef int verify_stochastic(const float* logits, Py_ssize_t row_stride, int n_vocab,
                           const token_t* draft, const float* draft_probs, int n_draft,
                           const SamplerParams* params, Rng* rng, Workspace* ws,
                           token_t* out) noexcept nogil


# A seeded Rng + Workspace + SamplerParams owned by one Python object: the engine may accept one
# from its caller (rng=...) and pass &sampler.rng, &sampler.ws, &sampler.params to the kernels
# after sampler.reserve(n_vocab).
@cython.final
cdef class Sampler:
    cdef Rng rng                   # the random stream, seeded from seed
    cdef Workspace ws              # grown on demand by reserve
    cdef SamplerParams params      # the settings given to __init__ (checked)
    cdef readonly object seed      # the int the stream was last seeded with

    cdef int reserve(self, int n_vocab) except -1   # GIL held; MemoryError on failure
