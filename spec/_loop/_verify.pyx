"""Sampling and draft verification kernels: nogil C for the engine, checked wrappers for research.

The C level (declared in ``_verify.pxd``) computes the target distribution of a row of logits,
samples from it and verifies drafts, greedily or with the lossless speculative-sampling rule
(Leviathan et al. 2023; Chen et al. 2023). The Python level (``verify_greedy_np``,
``verify_stochastic_np``, ``target_probs``, ``Sampler``) validates its arguments and calls the
same kernels, so research code and tests see exactly what the engine does.

Target distribution (llama.cpp's sampler chain order): top-k -> top-p -> min-p -> temperature.

* top-k keeps the k highest logits (ties go to the lower token id);
* top-p walks the survivors by descending logit (ties: lower id first) and keeps the shortest
  prefix whose softmax mass at temperature 1, over the survivors, reaches top_p (at least one);
* min-p keeps logits >= l_max + log(min_p), i.e. softmax probability >= min_p * p_max;
* p = softmax(logits / temperature) over what is left, 0 elsewhere.

Filters cost O(V): top-k is one pass with a bounded heap; top-p sorts the best 256 and only for
flat distributions goes on with a mass-weighted quickselect. Both work on packed 64-bit keys
(logit, id), so comparisons are plain integer ones and ties break by id deterministically.
Without filters a row costs a vectorized max and exp pass; sampling walks 256-id block sums.
"""
import os

import numpy as np
cimport cython
cimport numpy as cnp
from libc.float cimport FLT_MAX
from libc.math cimport INFINITY, logf
from libc.stdint cimport uint32_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset

from spec._c.typedefs cimport token_t

cnp.import_array()


cdef extern from *:
    """
    /* The two O(V) loops every row pays for, in C so gcc vectorizes them (SSE2 at -O3). Both
       need -fno-trapping-math to if-convert the selects; measured on a 256k-token row: max
       0.22 -> 0.065 ms, exp + sum 1.2 -> 0.39 ms against a glibc expf loop. The max (and the
       argmax over it) lives in spec/_runtime/_argmax.pxd: _core's plain greedy loop uses it too. */
    #include <math.h>
    #include <stdint.h>
    #include <string.h>

    /* exp(x) for x <= 0 to ~1e-7 relative; x < -87 (also -inf and NaN) gives 0. Cephes-style:
       x = n ln2 + r, |r| <= ln2/2, degree-6 polynomial in r, 2^n through the exponent bits. */
    __attribute__((optimize("no-trapping-math")))
    static inline float spec_exp_neg(float x) {
        float xc = x > -87.0f ? x : -87.0f;
        float fn = (xc * 1.44269504088896341f - 12582912.0f) + 12582912.0f;  /* round(x/ln2) */
        float r = xc - fn * 0.693359375f;
        r = r - fn * -2.12194440e-4f;
        float p = 1.9875691500e-4f;
        p = p * r + 1.3981999507e-3f;
        p = p * r + 8.3334519073e-3f;
        p = p * r + 4.1665795894e-2f;
        p = p * r + 1.6666665459e-1f;
        p = p * r + 5.0000001201e-1f;
        p = p * r * r + r + 1.0f;
        int32_t bits = ((int32_t)fn + 127) << 23;
        float scale;
        memcpy(&scale, &bits, sizeof scale);
        return x > -87.0f ? p * scale : 0.0f;
    }

    #define SPEC_BLOCK 256

    /* w[i] = exp((l[i] - m) * inv_t) for every i, the sum of each SPEC_BLOCK-long block in
       bsum (so sampling skips whole blocks), and the total returned. */
    __attribute__((optimize("no-trapping-math")))
    static double spec_exp_weights(const float* __restrict__ l, float* __restrict__ w,
                                   double* __restrict__ bsum, int n, float m, float inv_t) {
        double z = 0;
        for (int lo = 0, b = 0; lo < n; lo += SPEC_BLOCK, b++) {
            int hi = n - lo < SPEC_BLOCK ? n : lo + SPEC_BLOCK;
            double acc[4] = {0, 0, 0, 0};
            double s;
            int i;
            for (i = lo; i < hi; i++) w[i] = spec_exp_neg((l[i] - m) * inv_t);
            for (i = lo; i + 4 <= hi; i += 4)
                for (int j = 0; j < 4; j++) acc[j] += w[i + j];
            s = (acc[0] + acc[1]) + (acc[2] + acc[3]);
            for (; i < hi; i++) s += w[i];
            bsum[b] = s;
            z += s;
        }
        return z;
    }
    """
    float spec_exp_neg(float x) noexcept nogil
    const int SPEC_BLOCK
    double spec_exp_weights(const float* l, float* w, double* bsum, int n, float m,
                            float inv_t) noexcept nogil


cdef extern from "<algorithm>" namespace "std" nogil:
    # Sorting plain integers cannot throw: declared noexcept so no exception plumbing is generated.
    void nth_element[It](It first, It nth, It last) noexcept
    void partial_sort[It](It first, It middle, It last) noexcept
    void sort[It](It first, It last) noexcept
    void make_heap[It](It first, It last) noexcept
    void push_heap[It](It first, It last) noexcept
    void pop_heap[It](It first, It last) noexcept


# -- random numbers: splitmix64 seeding, xoshiro256** stream --------------------------------------

cdef inline uint64_t rotl(uint64_t x, int k) noexcept nogil:
    return (x << k) | (x >> (64 - k))


cdef inline uint64_t splitmix64(uint64_t* x) noexcept nogil:
    cdef uint64_t z
    x[0] += <uint64_t>0x9E3779B97F4A7C15ULL
    z = x[0]
    z = (z ^ (z >> 30)) * <uint64_t>0xBF58476D1CE4E5B9ULL
    z = (z ^ (z >> 27)) * <uint64_t>0x94D049BB133111EBULL
    return z ^ (z >> 31)


cdef void rng_seed(Rng* rng, uint64_t seed) noexcept nogil:
    # splitmix64 never yields an all-zero xoshiro state from four consecutive outputs.
    cdef uint64_t x = seed
    cdef int i
    for i in range(4):
        rng.s[i] = splitmix64(&x)


cdef uint64_t rng_next(Rng* rng) noexcept nogil:
    cdef uint64_t* s = rng.s
    cdef uint64_t result = rotl(s[1] * 5, 7) * 9
    cdef uint64_t t = s[1] << 17
    s[2] ^= s[0]
    s[3] ^= s[1]
    s[1] ^= s[2]
    s[0] ^= s[3]
    s[2] ^= t
    s[3] = rotl(s[3], 45)
    return result


cdef double rng_uniform(Rng* rng) noexcept nogil:
    # The top 53 bits scaled by 2**-53: every double in [0, 1) of that grid, never 1.0.
    return <double>(rng_next(rng) >> 11) * (1.0 / 9007199254740992.0)


# -- workspace -------------------------------------------------------------------------------------

cdef void workspace_free(Workspace* ws) noexcept nogil:
    free(ws.w)
    free(ws.r)
    free(ws.keys)
    free(ws.kept)
    free(ws.wsum)
    free(ws.rsum)
    memset(ws, 0, sizeof(Workspace))


cdef int workspace_init(Workspace* ws, int n_vocab) except -1 nogil:
    workspace_free(ws)
    if n_vocab < 1:
        with gil:
            raise ValueError(f"n_vocab must be >= 1, got {n_vocab}")
    cdef size_t n = <size_t>n_vocab
    cdef size_t n_blocks = (n + SPEC_BLOCK - 1) // SPEC_BLOCK
    ws.w = <float*>malloc(n * sizeof(float))
    ws.r = <float*>malloc(n * sizeof(float))
    ws.keys = <uint64_t*>malloc(n * sizeof(uint64_t))
    ws.kept = <token_t*>malloc(n * sizeof(token_t))
    ws.wsum = <double*>malloc(n_blocks * sizeof(double))
    ws.rsum = <double*>malloc(n_blocks * sizeof(double))
    if (ws.w == NULL or ws.r == NULL or ws.keys == NULL or ws.kept == NULL or ws.wsum == NULL
            or ws.rsum == NULL):
        workspace_free(ws)
        with gil:
            raise MemoryError(f"cannot allocate a sampling workspace for {n_vocab} tokens")
    ws.n_vocab = n_vocab
    ws.n_kept = -1
    ws.z = 0
    return 0


# -- argmax: spec/_runtime/_argmax.pxd (cimported through _verify.pxd) ----------------------

cdef float top2_margin(const float* logits, int n_vocab, token_t* top) noexcept nogil:
    cdef token_t best = 0
    cdef float l1 = -INFINITY
    cdef float l2 = -INFINITY
    cdef float l
    cdef int i
    for i in range(n_vocab):
        l = logits[i]
        if l > l1:
            l2 = l1
            l1 = l
            best = i
        elif l > l2:
            l2 = l
    if top != NULL:
        top[0] = best
    if n_vocab < 2:
        return INFINITY
    return l1 - l2


# -- target distribution ---------------------------------------------------------------------------

cdef inline uint64_t sort_key(float l, token_t i) noexcept nogil:
    # Ascending keys = descending logits, then ascending ids: the float's bits are mapped to an
    # unsigned integer of the same order, complemented, and the id fills the low word.
    cdef uint32_t b
    if l == 0:
        l = 0                      # -0.0 and +0.0 must tie
    memcpy(&b, &l, sizeof(float))
    b = ~b if (b & 0x80000000u) else (b | 0x80000000u)
    return ((<uint64_t>(~b)) << 32) | <uint32_t>i


cdef inline token_t key_id(uint64_t key) noexcept nogil:
    return <token_t>(key & 0xFFFFFFFFu)


cdef inline void one_hot(Workspace* ws, int n_vocab, token_t tok) noexcept nogil:
    memset(ws.w, 0, <size_t>n_vocab * sizeof(float))
    ws.w[tok] = 1
    ws.kept[0] = tok
    ws.n_kept = 1
    ws.z = 1


cdef void top_k_heap(const float* logits, int n_vocab, int k, uint64_t* heap) noexcept nogil:
    """heap[0:k] = keys of the k best ids, as a max-heap of keys: heap[0] is the worst kept.

    One pass with a bounded heap: most ids fail a single float comparison, so this costs about
    an argmax (an nth_element over all keys was ~20x slower on a 256k vocabulary).
    """
    cdef int i
    cdef float worst
    for i in range(k):
        heap[i] = sort_key(logits[i], i)
    make_heap(heap, heap + k)
    worst = logits[key_id(heap[0])]
    for i in range(k, n_vocab):
        if logits[i] > worst:      # strict: a later id with an equal logit ranks below
            pop_heap(heap, heap + k)
            heap[k - 1] = sort_key(logits[i], i)
            push_heap(heap, heap + k)
            worst = logits[key_id(heap[0])]


cdef int nucleus(const float* logits, int n_vocab, float m, float top_p, int n,
                 Workspace* ws) noexcept nogil:
    """Shrink the candidates to the top-p nucleus, left sorted in keys[0:size]; returns its size.

    Candidates are keys[0:n] (after top-k), or every id when n == n_vocab (keys not built yet).
    Masses at temperature 1 go to ws.r (free at this point). The common peaked case ends inside
    the best 256, found with the bounded heap; a flat distribution continues with a mass-weighted
    quickselect (nth_element at the midpoint, keep the half holding the boundary), so the cost
    stays O(n) instead of sorting most of the vocabulary.
    """
    cdef double z1 = 0, cum = 0, need, half
    cdef float e
    cdef int i, j, lo, hi, mid
    cdef int head = n if n < 256 else 256
    cdef token_t tok
    if n == n_vocab:
        z1 = spec_exp_weights(logits, ws.r, ws.rsum, n_vocab, m, 1)
        need = top_p * z1
        if head < n:
            top_k_heap(logits, n_vocab, head, ws.keys)
            sort(ws.keys, ws.keys + head)
            for j in range(head):
                cum += ws.r[key_id(ws.keys[j])]
                if cum >= need:
                    return j + 1
            cum = 0
        for i in range(n_vocab):
            ws.keys[i] = sort_key(logits[i], i)
    else:
        for j in range(n):
            tok = key_id(ws.keys[j])
            e = spec_exp_neg(logits[tok] - m)
            ws.r[tok] = e
            z1 += e
        need = top_p * z1
    partial_sort(ws.keys, ws.keys + head, ws.keys + n)
    for j in range(head):
        cum += ws.r[key_id(ws.keys[j])]
        if cum >= need:
            return j + 1
    lo = head
    hi = n
    while hi - lo > 256:
        # Invariant: keys[0:lo] are kept, their mass is cum < need, the boundary is in [lo, hi).
        mid = lo + (hi - lo) // 2
        nth_element(ws.keys + lo, ws.keys + mid, ws.keys + hi)
        half = 0
        for j in range(lo, mid + 1):
            half += ws.r[key_id(ws.keys[j])]
        if cum + half >= need:
            hi = mid + 1
        else:
            cum += half
            lo = mid + 1
    sort(ws.keys + lo, ws.keys + hi)
    for j in range(lo, hi):
        cum += ws.r[key_id(ws.keys[j])]
        if cum >= need:
            return j + 1
    return hi      # rounding kept the sum just short of need: keep everything walked


cdef token_t target_weights(const float* logits, int n_vocab, const SamplerParams* params,
                            Workspace* ws) noexcept nogil:
    cdef token_t am, tok
    cdef float m, inv_t, wi, lmin
    cdef double z
    cdef int i, j, n, k
    cdef bint use_k, use_p, use_min
    if ws.n_vocab < n_vocab:
        return -1
    am = argmax(logits, n_vocab)
    m = logits[am]
    inv_t = 1.0 / params.temperature if params.temperature > 0 else INFINITY
    # Greedy, a temperature too small to divide by, or a row with an infinite maximum.
    if not (inv_t <= FLT_MAX and -FLT_MAX <= m <= FLT_MAX):
        one_hot(ws, n_vocab, am)
        return am

    k = params.top_k
    use_k = 0 < k < n_vocab
    use_p = params.top_p < 1
    use_min = params.min_p > 0

    if not (use_k or use_p or use_min):
        # The common case: one pass, every id a candidate.
        z = spec_exp_weights(logits, ws.w, ws.wsum, n_vocab, m, inv_t)
        ws.n_kept = -1
        ws.z = z
        if not (z > 0):                 # defensive: w[am] == 1 makes z >= 1
            one_hot(ws, n_vocab, am)
        return am

    n = n_vocab
    if use_k or use_p:
        if use_k:
            top_k_heap(logits, n_vocab, k, ws.keys)
            n = k
        if use_p:
            n = nucleus(logits, n_vocab, m, params.top_p, n, ws)
        for j in range(n):
            ws.kept[j] = key_id(ws.keys[j])
        if use_min:
            lmin = m + logf(params.min_p)
            i = 0
            for j in range(n):
                tok = ws.kept[j]
                if logits[tok] >= lmin:
                    ws.kept[i] = tok
                    i += 1
            n = i
    else:
        lmin = m + logf(params.min_p)
        n = 0
        for i in range(n_vocab):
            if logits[i] >= lmin:
                ws.kept[n] = i
                n += 1

    memset(ws.w, 0, <size_t>n_vocab * sizeof(float))
    z = 0
    for j in range(n):
        tok = ws.kept[j]
        wi = spec_exp_neg((logits[tok] - m) * inv_t)
        ws.w[tok] = wi
        z += wi
    ws.n_kept = n
    ws.z = z
    if not (z > 0):
        one_hot(ws, n_vocab, am)
    return am


cdef token_t pick(const float* w, const double* bsum, double z, const Workspace* ws,
                  int n_vocab, token_t skip, double u) noexcept nogil:
    """The candidate where the running sum of w (skipping ``skip``) first exceeds u*z.

    z must be the sum of w over the candidates minus w[skip]; bsum holds the block sums of w
    when every id is a candidate (ws.n_kept < 0), so whole blocks are skipped. Zero weights are
    never picked; rounding that leaves the walk short returns the last candidate of positive
    weight, and -1 means there is none.
    """
    cdef double target = u * z
    cdef double acc = 0, s
    cdef token_t tok, last = -1
    cdef int j, b, lo, hi
    if ws.n_kept >= 0:
        for j in range(ws.n_kept):
            tok = ws.kept[j]
            if tok == skip or not (w[tok] > 0):
                continue
            acc += w[tok]
            last = tok
            if acc > target:
                return tok
        return last
    b = 0
    lo = 0
    while lo < n_vocab:
        hi = lo + SPEC_BLOCK if n_vocab - lo > SPEC_BLOCK else n_vocab
        s = bsum[b]
        if lo <= skip < hi:
            s -= w[skip]
        if acc + s <= target:
            acc += s
        else:
            for j in range(lo, hi):
                if j == skip or not (w[j] > 0):
                    continue
                acc += w[j]
                if acc > target:
                    return j
        lo = hi
        b += 1
    for j in range(n_vocab - 1, -1, -1):
        if j != skip and w[j] > 0:
            return j
    return -1


cdef inline token_t sample_loaded(const Workspace* ws, int n_vocab, token_t am, Rng* rng) noexcept nogil:
    # One token from the distribution loaded in ws by target_weights.
    cdef token_t tok = pick(ws.w, ws.wsum, ws.z, ws, n_vocab, -1, rng_uniform(rng))
    return tok if tok >= 0 else am


cdef token_t sample_token(const float* logits, int n_vocab, const SamplerParams* params,
                          Rng* rng, Workspace* ws) noexcept nogil:
    cdef token_t am
    if params.temperature <= 0:
        return argmax(logits, n_vocab)
    am = target_weights(logits, n_vocab, params, ws)
    if am < 0:
        return -1
    return sample_loaded(ws, n_vocab, am, rng)


# -- verification ----------------------------------------------------------------------------------

cdef int verify_greedy(const float* logits, Py_ssize_t row_stride, int n_vocab,
                       const token_t* draft, int n_draft, token_t* out) noexcept nogil:
    cdef int i
    cdef token_t tok
    for i in range(n_draft + 1):
        tok = argmax(logits + i * row_stride, n_vocab)
        out[i] = tok
        if i == n_draft or tok != draft[i]:
            return i
    return n_draft       # not reached


cdef token_t resample_without(const Workspace* ws, int n_vocab, token_t x, token_t am,
                              Rng* rng) noexcept nogil:
    # p with x removed, renormalized: the residual max(0, p - q) for a one-hot q at x.
    cdef double z = ws.z - (ws.w[x] if 0 <= x < n_vocab else 0)
    cdef token_t tok
    if not (z > 0):
        return am        # x held all the mass: then it is accepted with probability 1
    tok = pick(ws.w, ws.wsum, z, ws, n_vocab, x, rng_uniform(rng))
    return tok if tok >= 0 else am


cdef token_t resample_residual(Workspace* ws, int n_vocab, const float* q, token_t am,
                               Rng* rng) noexcept nogil:
    # normalize(max(0, p - q)); the residual is 0 wherever p is 0, so only candidates matter.
    cdef double inv_z = 1.0 / ws.z
    cdef double rz = 0, s
    cdef float r
    cdef token_t tok
    cdef int j, b, lo, hi
    if ws.n_kept >= 0:
        for j in range(ws.n_kept):
            tok = ws.kept[j]
            r = <float>(ws.w[tok] * inv_z - q[tok])
            ws.r[tok] = r if r > 0 else 0
            rz += ws.r[tok]
    else:
        b = 0
        lo = 0
        while lo < n_vocab:
            hi = lo + SPEC_BLOCK if n_vocab - lo > SPEC_BLOCK else n_vocab
            s = 0
            for j in range(lo, hi):
                r = <float>(ws.w[j] * inv_z - q[j])
                ws.r[j] = r if r > 0 else 0
                s += ws.r[j]
            ws.rsum[b] = s
            rz += s
            lo = hi
            b += 1
    if not (rz > 0):
        # p <= q everywhere up to rounding: a rejection had probability ~0; fall back to p.
        return sample_loaded(ws, n_vocab, am, rng)
    tok = pick(ws.r, ws.rsum, rz, ws, n_vocab, -1, rng_uniform(rng))
    return tok if tok >= 0 else am


cdef int verify_stochastic(const float* logits, Py_ssize_t row_stride, int n_vocab,
                           const token_t* draft, const float* draft_probs, int n_draft,
                           const SamplerParams* params, Rng* rng, Workspace* ws,
                           token_t* out) noexcept nogil:
    cdef int i
    cdef token_t x, am
    cdef double px, qx
    cdef const float* q = NULL
    cdef bint valid
    if params.temperature <= 0:
        return verify_greedy(logits, row_stride, n_vocab, draft, n_draft, out)
    if ws.n_vocab < n_vocab:
        return -1
    for i in range(n_draft):
        am = target_weights(logits + i * row_stride, n_vocab, params, ws)
        x = draft[i]
        valid = 0 <= x < n_vocab
        px = ws.w[x] / ws.z if valid else 0
        qx = 1
        if draft_probs != NULL:
            q = draft_probs + <Py_ssize_t>i * n_vocab
            qx = q[x] if valid else 1
        # Accept with probability min(1, p/q), written so q(x) = 0 accepts any p(x) > 0.
        if rng_uniform(rng) * qx < px:
            out[i] = x
            continue
        if draft_probs == NULL:
            out[i] = resample_without(ws, n_vocab, x, am, rng)
        else:
            out[i] = resample_residual(ws, n_vocab, q, am, rng)
        return i
    am = target_weights(logits + <Py_ssize_t>n_draft * row_stride, n_vocab, params, ws)
    out[n_draft] = sample_loaded(ws, n_vocab, am, rng)
    return n_draft


# -- Python level ----------------------------------------------------------------------------------

cdef SamplerParams make_params(object temperature, object top_k, object top_p,
                               object min_p) except *:
    """Checked SamplerParams; errors name the offending argument."""
    cdef SamplerParams params
    t = _as_float(temperature, "temperature")
    p = _as_float(top_p, "top_p")
    mp = _as_float(min_p, "min_p")
    if isinstance(top_k, (bool, np.bool_)) or not isinstance(top_k, (int, np.integer)):
        raise TypeError(f"top_k must be an int, got {type(top_k).__name__}")
    k = int(top_k)
    if not t >= 0 or t == float("inf"):
        raise ValueError(f"temperature must be finite and >= 0 (0 = greedy), got {temperature!r}")
    if k < 0:
        raise ValueError(f"top_k must be >= 0 (0 = off), got {top_k!r}")
    if not 0 < p <= 1:
        raise ValueError(f"top_p must be in (0, 1] (1 = off), got {top_p!r}")
    if not 0 <= mp <= 1:
        raise ValueError(f"min_p must be in [0, 1] (0 = off), got {min_p!r}")
    params.temperature = t
    params.top_k = k if k < 0x7FFFFFFF else 0x7FFFFFFF
    params.top_p = p
    params.min_p = mp
    return params


cdef object _as_float(object value, str name):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    return float(value)


cdef object _as_logits(object obj, int ndim, str name):
    """``obj`` as a float32 array of ``ndim`` dims whose last axis is contiguous; checked values."""
    arr = np.asarray(obj)
    if not np.issubdtype(arr.dtype, np.floating):
        raise TypeError(f"{name} must hold floating-point logits, got dtype {arr.dtype}")
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {arr.shape}")
    if arr.shape[arr.ndim - 1] < 1:
        raise ValueError(f"{name} needs a vocabulary of at least one token, got shape {arr.shape}")
    if arr.shape[arr.ndim - 1] > 0x7FFFFFFF:
        raise ValueError(f"{name} has a vocabulary larger than 2**31 - 1")
    if arr.dtype != np.float32:
        arr = arr.astype(np.float32)
    # Rows may be strided (a view into a bigger logits buffer); the vocabulary axis must be dense.
    if arr.strides[arr.ndim - 1] != 4 or (ndim == 2 and (arr.strides[0] < 0 or arr.strides[0] % 4)):
        arr = np.ascontiguousarray(arr)
    if not np.isfinite(arr).all():      # one pass in the common case; details only on failure
        if np.isnan(arr).any():
            raise ValueError(f"{name} contains NaN")
        if np.isposinf(arr).any():
            raise ValueError(f"{name} contains +inf")
        if arr.size and np.isneginf(arr).all(axis=arr.ndim - 1).any():
            raise ValueError(f"{name} has a row where every logit is -inf")
    return arr


cdef object _as_draft(object obj, int n_vocab):
    arr = np.asarray(obj)
    if arr.ndim != 1:
        raise ValueError(f"draft must be 1-D, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"draft must hold integer token ids, got dtype {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() >= n_vocab):
        raise ValueError(f"draft holds token ids outside the vocabulary [0, {n_vocab})")
    return np.ascontiguousarray(arr, dtype=np.int32)


cdef object _as_draft_probs(object obj, Py_ssize_t n_draft, int n_vocab):
    arr = np.asarray(obj)
    if not np.issubdtype(arr.dtype, np.floating):
        raise TypeError(f"draft_probs must hold floating-point probabilities, got dtype {arr.dtype}")
    if arr.shape != (n_draft, n_vocab):
        raise ValueError(f"draft_probs must have shape (len(draft), n_vocab) = {(n_draft, n_vocab)}, "
                         f"got {arr.shape}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all() or (arr < 0).any():
        raise ValueError("draft_probs must be finite and >= 0")
    sums = arr.sum(axis=1, dtype=np.float64)
    if n_draft and np.abs(sums - 1).max() > 1e-3:
        raise ValueError(f"draft_probs rows must each sum to 1, got sums {sums}")
    return arr


cdef object _entropy_seed():
    return int.from_bytes(os.urandom(8), "little")


@cython.final
cdef class Sampler:
    """A seeded random stream plus sampling settings: ``sample(logits_row)`` draws one token.

    ``seed`` is an int in [0, 2**64) (None: from the OS). The settings are those of
    ``target_probs``. Pass a Sampler as ``rng=`` to ``verify_stochastic_np`` to make its output
    reproducible; the verifier then draws from this Sampler's stream. The engine can take one
    too and use its ``rng``, ``ws`` and ``params`` fields directly (see _verify.pxd).
    """

    def __cinit__(self):
        memset(&self.ws, 0, sizeof(Workspace))

    def __dealloc__(self):
        workspace_free(&self.ws)

    def __init__(self, seed=None, *, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0):
        self.params = make_params(temperature, top_k, top_p, min_p)
        self.reseed(seed)

    def reseed(self, seed=None):
        """Restart the random stream from ``seed`` (None: a fresh seed from the OS)."""
        if seed is None:
            seed = _entropy_seed()
        if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
            raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
        seed = int(seed)
        if not 0 <= seed < 2 ** 64:
            raise ValueError(f"seed must be in [0, 2**64), got {seed}")
        self.seed = seed
        rng_seed(&self.rng, <uint64_t>seed)

    cdef int reserve(self, int n_vocab) except -1:
        if self.ws.n_vocab < n_vocab:
            workspace_init(&self.ws, n_vocab)
        return 0

    @property
    def temperature(self):
        return self.params.temperature

    @property
    def top_k(self):
        return self.params.top_k

    @property
    def top_p(self):
        return self.params.top_p

    @property
    def min_p(self):
        return self.params.min_p

    def sample(self, logits_row):
        """One token id drawn from ``target_probs(logits_row, ...)`` with this Sampler's settings."""
        arr = _as_logits(logits_row, 1, "logits_row")
        cdef const float[::1] row = arr
        cdef int n_vocab = row.shape[0]
        cdef token_t tok
        self.reserve(n_vocab)
        with nogil:
            tok = sample_token(&row[0], n_vocab, &self.params, &self.rng, &self.ws)
        return int(tok)

    def random(self, Py_ssize_t n=1):
        """``n`` uniforms in [0, 1) from this Sampler's stream (float64 array)."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        out = np.empty(n, dtype=np.float64)
        cdef double[::1] view = out
        cdef Py_ssize_t i
        with nogil:
            for i in range(n):
                view[i] = rng_uniform(&self.rng)
        return out

    def __repr__(self):
        return (f"Sampler(seed={self.seed}, temperature={self.temperature:g}, top_k={self.top_k}, "
                f"top_p={self.top_p:g}, min_p={self.min_p:g})")


def target_probs(logits_row, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0):
    """The target distribution p the kernels sample from, as a float64 array over the vocabulary.

    top-k -> top-p -> min-p -> temperature (see the module docstring); temperature 0 gives a
    one-hot at the argmax (lowest id on ties).
    """
    cdef SamplerParams params = make_params(temperature, top_k, top_p, min_p)
    arr = _as_logits(logits_row, 1, "logits_row")
    cdef const float[::1] row = arr
    cdef int n_vocab = row.shape[0]
    cdef Workspace ws
    memset(&ws, 0, sizeof(Workspace))
    workspace_init(&ws, n_vocab)
    out = np.empty(n_vocab, dtype=np.float64)
    cdef double[::1] p = out
    cdef int i
    try:
        with nogil:
            target_weights(&row[0], n_vocab, &params, &ws)
            for i in range(n_vocab):
                p[i] = ws.w[i] / ws.z
    finally:
        workspace_free(&ws)
    return out


cdef Py_ssize_t _rows(object arr) except -1:
    """Row stride, in floats, of a checked 2-D float32 logits array."""
    return arr.strides[0] // 4 if arr.shape[0] > 1 else arr.shape[1]


def verify_greedy_np(logits, draft):
    """Greedy verification: ``logits[n+1, V]`` for ``draft[n]``; returns the emitted int32 tokens.

    The result holds the accepted drafts followed by the argmax at the first mismatch (or of the
    bonus row): its length is n_accepted + 1.
    """
    arr = _as_logits(logits, 2, "logits")
    cdef int n_vocab = arr.shape[1]
    dr = _as_draft(draft, n_vocab)
    cdef Py_ssize_t n_draft = dr.shape[0]
    if arr.shape[0] != n_draft + 1:
        raise ValueError(f"logits must have len(draft) + 1 = {n_draft + 1} rows, got {arr.shape[0]}")
    cdef const token_t[::1] d = dr
    out = np.empty(n_draft + 1, dtype=np.int32)
    cdef token_t[::1] o = out
    cdef const float* ptr = <const float*>cnp.PyArray_DATA(arr)
    cdef Py_ssize_t stride = _rows(arr)
    cdef int n
    with nogil:
        n = verify_greedy(ptr, stride, n_vocab, &d[0] if n_draft else NULL, <int>n_draft, &o[0])
    return out[:n + 1].copy()


def verify_stochastic_np(logits, draft, draft_probs=None, *, temperature=None, top_k=None,
                         top_p=None, min_p=None, rng=None):
    """Speculative-sampling verification; returns the emitted int32 tokens (n_accepted + 1).

    ``logits[n+1, V]``: the target's rows for ``draft[n]`` and the bonus position.
    ``draft_probs[n, V]`` (optional): the drafter's distributions the drafts were sampled from;
    None means a deterministic drafter (one-hot q). ``rng``: a Sampler supplying the random
    stream (None: a fresh OS-seeded one). Settings left at None come from ``rng`` when it is a
    Sampler, else default to temperature=1, top_k=0, top_p=1, min_p=0. The emitted tokens follow
    the target distribution ``target_probs(row, ...)`` exactly.
    """
    cdef Sampler sampler
    if rng is None:
        sampler = Sampler(None)
    elif isinstance(rng, Sampler):
        sampler = rng
    else:
        raise TypeError(f"rng must be a Sampler or None, got {type(rng).__name__}")
    cdef SamplerParams params = make_params(
        sampler.params.temperature if temperature is None else temperature,
        sampler.params.top_k if top_k is None else top_k,
        sampler.params.top_p if top_p is None else top_p,
        sampler.params.min_p if min_p is None else min_p)

    arr = _as_logits(logits, 2, "logits")
    cdef int n_vocab = arr.shape[1]
    dr = _as_draft(draft, n_vocab)
    cdef Py_ssize_t n_draft = dr.shape[0]
    if arr.shape[0] != n_draft + 1:
        raise ValueError(f"logits must have len(draft) + 1 = {n_draft + 1} rows, got {arr.shape[0]}")
    cdef const float* q = NULL
    if draft_probs is not None:
        qa = _as_draft_probs(draft_probs, n_draft, n_vocab)
        if n_draft:
            q = <const float*>cnp.PyArray_DATA(qa)
    sampler.reserve(n_vocab)

    cdef const token_t[::1] d = dr
    out = np.empty(n_draft + 1, dtype=np.int32)
    cdef token_t[::1] o = out
    cdef const float* ptr = <const float*>cnp.PyArray_DATA(arr)
    cdef Py_ssize_t stride = _rows(arr)
    cdef int n
    with nogil:
        n = verify_stochastic(ptr, stride, n_vocab, &d[0] if n_draft else NULL, q, <int>n_draft,
                              &params, &sampler.rng, &sampler.ws, &o[0])
    return out[:n + 1].copy()


# -- private helpers for tests ---------------------------------------------------------------------

def _rng_u64(seed, Py_ssize_t n):
    """The first ``n`` raw xoshiro256** outputs after rng_seed(seed) (uint64 array)."""
    cdef Rng rng
    rng_seed(&rng, <uint64_t>int(seed))
    out = np.empty(n, dtype=np.uint64)
    cdef uint64_t[::1] view = out
    cdef Py_ssize_t i
    for i in range(n):
        view[i] = rng_next(&rng)
    return out


def _top2_margin(logits_row):
    """(top-1 id, top-1 minus top-2 logit) of a row, through the C helper."""
    arr = _as_logits(logits_row, 1, "logits_row")
    cdef const float[::1] row = arr
    cdef token_t top = -1
    cdef float margin = top2_margin(&row[0], row.shape[0], &top)
    return int(top), float(margin)


def _workspace_too_small(logits_row):
    """sample_token with a workspace one token short: the C level returns -1 instead of writing."""
    arr = _as_logits(logits_row, 1, "logits_row")
    cdef const float[::1] row = arr
    cdef int n_vocab = row.shape[0]
    cdef Workspace ws
    cdef Rng rng
    cdef SamplerParams params = make_params(1.0, 0, 1.0, 0.0)
    memset(&ws, 0, sizeof(Workspace))
    rng_seed(&rng, 0)
    cdef token_t tok
    if n_vocab < 2:
        raise ValueError("needs n_vocab >= 2")
    workspace_init(&ws, n_vocab - 1)
    try:
        tok = sample_token(&row[0], n_vocab, &params, &rng, &ws)
    finally:
        workspace_free(&ws)
    return int(tok)
