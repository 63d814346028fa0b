# Draft planning shared by the engine loop and the simulator. See _plan.pyx for details.
from libc.stdint cimport int64_t

from spec._c.typedefs cimport token_t

cdef enum:
    COST_ROWS = 256     # batch sizes with a table entry (bigger ones use the linear fit)
    COST_FRESH = 256    # an entry older than this many verify batches falls back to the fit
    TILE = 4            # exploration tries only multiples of this: the kernels' row tiles
    EXPLORE_EVERY = 16  # steps between explorations of a batch size not measured lately
    EXPLORE_AGE = 64    # an entry older than this is re-measured when exploring
    PROBE_EVERY = 16    # plain steps before a sequence that stopped drafting tries one token


cdef struct CostModel:
    # Linear fit: verify time t of a batch with n rows as t = a + b·n, by exponentially weighted
    # least squares (recent batches count most), anchored to the prior ratio b / (a + b).
    double s0, s1, s2, t1, t2   # weighted sums of 1, n, n², t, n·t
    double prior                # draft_cost: one row's cost as a fraction of a one-row step
    int n_samples
    double a, b                 # current fit (seconds); the prior in step units until fitted
    # Measured table: mean[n] is the running mean time of batches with n rows, measured last
    # when the clock (verify batches so far) read seen[n]; seen[n] == 0: never.
    int64_t clock
    double mean[COST_ROWS + 1]
    int64_t seen[COST_ROWS + 1]


cdef struct DraftPolicy:
    # One sequence's state for "auto" draft lengths.
    double alpha                # EMA of the per-token acceptance probability
    int run                     # drafted tokens matched in a row up to now (0 after a miss)
    int steps_since_probe       # steps left idle since its last draft or probe


cdef struct PlanBuffers:
    # Per-sequence inputs and outputs of a step's plan, owned by the caller.
    DraftPolicy** policy
    double* alpha
    int* run
    int* avail                  # most tokens it can verify (< 0: not in the batch)
    int* forced                 # tokens it verifies regardless (a probe)
    int* lengths                # the plan: tokens to draft / verify


cdef inline double token_prob(double alpha, int run, int j) noexcept nogil:
    # Acceptance probability of a sequence's j-th drafted token (0-based), given that the run
    # of correctly drafted tokens before it is run + j long: its measured rate or, where higher,
    # r / (r + 1) for a run of r, so a long copy run is trusted to continue and the draft grows
    # quickly with it (over a draft the product telescopes to run / (run + k)), while a miss
    # (run 0) falls back to the measured rate at once.
    return max(alpha, (run + j) / (run + j + 1.0))


cdef void cost_init(CostModel* m, double draft_cost) noexcept nogil
cdef bint cost_fitted(const CostModel* m) noexcept nogil
cdef int64_t cost_age(const CostModel* m, int n_rows) noexcept nogil
cdef double cost_estimate(const CostModel* m, int n_rows) noexcept nogil
cdef void cost_update(CostModel* m, int n_rows, double seconds) noexcept nogil
cdef int plan_lengths(const double* alpha, const int* run, const int* avail, const int* forced,
                      int n_seqs, const CostModel* cost, bint explore, int* lengths) noexcept nogil

cdef void policy_start(DraftPolicy* p, double alpha0) noexcept nogil
cdef void plan_drafts(PlanBuffers plan, int n_seqs, const CostModel* cost, bint explore,
                      double job_alpha, bint shadow) noexcept nogil
cdef void plan_verify(PlanBuffers plan, int n_seqs, const CostModel* cost,
                      bint explore) noexcept nogil
cdef int checked_tokens(const token_t* draft, int n_drafted, int n_verified, int n_accepted,
                        const token_t* emitted, int* n_matched) noexcept nogil
cdef void policy_observe(DraftPolicy* p, double* job_alpha, int n_checked,
                         int n_matched) noexcept nogil
