"""Draft planning: what a verify batch costs, and the draft lengths that pay most for it.

On a CPU a verify batch's time is far from linear in its rows: the matrix kernels process rows
in tiles, so 8 rows can cost less than 7, and 16 rows little more than 8 (bench/RESULTS.md,
"What a verify batch costs, by rows"). The engine therefore measures the time of every batch
size it decodes (COST_ROWS table entries) and plans draft lengths against those measurements,
with a linear fit t = a + b·rows for the sizes it has not measured recently.

The per-sequence policy (``DraftPolicy``: its acceptance estimate, probes) lives here too, so the
engine's loop and the offline simulator (:func:`spec.simulate` with ``cost_table``) run the very
same planner.
"""
from libc.stdint cimport int64_t
from libc.string cimport memset

from spec._c.typedefs cimport LLAMA_MAX_SEQ, token_t


cdef void cost_init(CostModel* m, double draft_cost) noexcept nogil:
    # Prior: one row costs draft_cost of a single-token step (a + b = 1 time unit).
    memset(m, 0, sizeof(CostModel))
    m.prior = draft_cost
    m.b = draft_cost
    m.a = 1.0 - draft_cost


cdef bint cost_fitted(const CostModel* m) noexcept nogil:
    return m.n_samples >= 8


cdef int64_t cost_age(const CostModel* m, int n_rows) noexcept nogil:
    # Verify batches since n_rows was last measured (a huge age if never or off the table).
    if n_rows > COST_ROWS or m.seen[n_rows] == 0:
        return 1 << 40
    return m.clock - m.seen[n_rows]


cdef double cost_estimate(const CostModel* m, int n_rows) noexcept nogil:
    """Expected time of a verify batch of n_rows (in prior units until the fit has 8 samples)."""
    if cost_fitted(m) and cost_age(m, n_rows) <= COST_FRESH:
        return m.mean[n_rows]
    return m.a + m.b * n_rows


cdef void cost_update(CostModel* m, int n_rows, double seconds) noexcept nogil:
    """Add one verify batch: update its table entry and refit the line.

    The line minimizes Σ w·(t − a − b·n)² + λ·((1 − c)·b − c·a)², c the prior ratio. The penalty
    is worth a few samples: where batch sizes vary the data decide, and where they do not
    (every batch is one row per sequence) a and b cannot be told apart, and the fit drifts back
    to the prior ratio instead of freezing on a few slow batches (a fresh context's first touch
    of its logits buffer).
    """
    cdef double x = n_rows, decay = 0.97, lam = 4.0, c = m.prior
    cdef double m00, m01, m11, det, a, b
    m.clock += 1
    if n_rows <= COST_ROWS:
        # A stale entry restarts from the new sample: the context may have grown since.
        if cost_age(m, n_rows) > COST_FRESH:
            m.mean[n_rows] = seconds
        else:
            m.mean[n_rows] = 0.75 * m.mean[n_rows] + 0.25 * seconds
        m.seen[n_rows] = m.clock
    m.s0 = decay * m.s0 + 1.0
    m.s1 = decay * m.s1 + x
    m.s2 = decay * m.s2 + x * x
    m.t1 = decay * m.t1 + seconds
    m.t2 = decay * m.t2 + x * seconds
    m.n_samples += 1
    if not cost_fitted(m):
        return
    # Normal equations (XᵀWX + λ·ppᵀ)·(a, b) = XᵀWt with p = (−c, 1 − c).
    m00 = m.s0 + lam * c * c
    m01 = m.s1 - lam * c * (1.0 - c)
    m11 = m.s2 + lam * (1.0 - c) * (1.0 - c)
    det = m00 * m11 - m01 * m01
    if det <= 0:
        return
    a = (m11 * m.t1 - m01 * m.t2) / det
    b = (m00 * m.t2 - m01 * m.t1) / det
    if b > 0 and a >= 0:
        m.a = a
        m.b = b


cdef int _next_seq(const double* alpha, const int* run, const int* avail, const int* lengths,
                   const double* reach, int n_seqs, double* next_gain) noexcept nogil:
    # The sequence whose next drafted token gains most (lowest index on ties); -1 if none left.
    # reach[i]: probability that all lengths[i] tokens planned so far are accepted.
    cdef int i, best = -1
    cdef double g
    next_gain[0] = -1.0
    for i in range(n_seqs):
        if lengths[i] < avail[i]:
            g = reach[i] * token_prob(alpha[i], run[i], lengths[i])
            if g > next_gain[0]:
                next_gain[0] = g
                best = i
    return best


cdef int plan_lengths(const double* alpha, const int* run, const int* avail, const int* forced,
                      int n_seqs, const CostModel* cost, bint explore, int* lengths) noexcept nogil:
    """Draft lengths maximizing the step's expected tokens per second, Σ E_i(k_i) / T(rows).

    alpha[i], run[i]: sequence i's per-token acceptance and current run of correctly drafted
    tokens (see token_prob; run may be NULL: no runs); avail[i]: the most tokens it can verify
    (< 0: not in this step's batch); forced[i] ≤ avail[i]: tokens it verifies regardless (a
    probe). With acceptances fixed, the best x drafted tokens overall are the x largest gains
    (within a sequence they shrink with k, so they form prefixes): the plan walks x upward by the
    largest next gain and keeps the x whose batch of n + x rows has the best expected rate under
    the measured cost T. With explore, it instead lands on the nearest multiple of TILE rows not
    measured in the last EXPLORE_AGE batches (the kernels' tiles are the likely cheap sizes, and
    a size measured slow once must get a second chance). Returns the batch rows.
    """
    cdef int i, x, x_max = 0, x_min = 0, best_x, n_rows = 0, rows, target = -1
    cdef double tokens = 0, rate, best_rate, g
    cdef double reach[LLAMA_MAX_SEQ]
    cdef int no_run[LLAMA_MAX_SEQ]
    if n_seqs > LLAMA_MAX_SEQ:
        n_seqs = LLAMA_MAX_SEQ
    if run == NULL:
        memset(no_run, 0, n_seqs * sizeof(int))
        run = no_run
    for i in range(n_seqs):
        lengths[i] = 0
        reach[i] = 1.0
        if avail[i] < 0:
            continue
        n_rows += 1
        lengths[i] = forced[i]
        x_min += forced[i]
        x_max += avail[i]
        tokens += 1.0
        for x in range(forced[i]):
            reach[i] *= token_prob(alpha[i], run[i], x)
            tokens += reach[i]
    if n_rows == 0:
        return 0
    best_x = x_min
    best_rate = tokens / cost_estimate(cost, n_rows + x_min)
    for x in range(x_min + 1, x_max + 1):
        i = _next_seq(alpha, run, avail, lengths, reach, n_seqs, &g)
        lengths[i] += 1
        reach[i] = g
        tokens += g
        rows = n_rows + x
        if rows % TILE and cost_age(cost, rows) > COST_FRESH and cost_fitted(cost):
            continue    # the fit misses the tile penalty: an unmeasured size lands on a tile
        rate = tokens / cost_estimate(cost, rows)
        if rate > best_rate * (1.0 + 1e-9):
            best_rate = rate
            best_x = x
    if explore and cost_fitted(cost):
        # nearest stale tile multiple to the best size, the larger one on ties
        for rows in range(n_rows + x_min, n_rows + x_max + 1):
            if rows % TILE == 0 and rows != n_rows + best_x and cost_age(cost, rows) > EXPLORE_AGE:
                if target < 0 or abs(rows - n_rows - best_x) <= abs(target - n_rows - best_x):
                    target = rows
        if target >= 0:
            best_x = target - n_rows
    # replay the walk up to the chosen total
    for i in range(n_seqs):
        lengths[i] = forced[i] if avail[i] >= 0 else 0
        reach[i] = 1.0
        for x in range(lengths[i]):
            reach[i] *= token_prob(alpha[i], run[i], x)
    for x in range(x_min, best_x):
        i = _next_seq(alpha, run, avail, lengths, reach, n_seqs, &g)
        lengths[i] += 1
        reach[i] = g
    return n_rows + best_x


# -- the per-sequence policy ---------------------------------------------------------------------

cdef void policy_start(DraftPolicy* p, double alpha0) noexcept nogil:
    memset(p, 0, sizeof(DraftPolicy))
    p.alpha = alpha0


cdef void plan_drafts(PlanBuffers plan, int n_seqs, const CostModel* cost, bint explore,
                      double job_alpha, bint shadow) noexcept nogil:
    """Before drafting: who drafts, and how far (plan.lengths; plan.forced holds probes).

    The caller sets plan.policy[i] and plan.avail[i] (the most tokens sequence i can verify; < 0:
    not in this step's batch). With ``shadow`` the caller drafts for every sequence anyway (a
    model-free drafter costs microseconds) and reports the unverified first token's fate
    (policy_observe), which keeps the estimates current. Otherwise sequences the plan leaves
    idle drift toward the job's acceptance, and one that stayed idle PROBE_EVERY steps verifies
    a one-token probe, so a sequence that stopped drafting can come back.
    """
    cdef int i
    cdef DraftPolicy* p
    for i in range(n_seqs):
        plan.alpha[i] = min(max(plan.policy[i].alpha, 0.0), 1.0)
        plan.run[i] = plan.policy[i].run
        plan.forced[i] = 0
    plan_lengths(plan.alpha, plan.run, plan.avail, plan.forced, n_seqs, cost, explore,
                 plan.lengths)
    if shadow:
        return
    for i in range(n_seqs):
        if plan.avail[i] <= 0 or plan.lengths[i] > 0:
            continue
        p = plan.policy[i]
        if p.alpha < job_alpha:
            p.alpha += 0.03 * (job_alpha - p.alpha)
        p.steps_since_probe += 1
        if p.steps_since_probe >= PROBE_EVERY:
            p.steps_since_probe = 0
            plan.forced[i] = 1


cdef void plan_verify(PlanBuffers plan, int n_seqs, const CostModel* cost,
                      bint explore) noexcept nogil:
    """After drafting, with plan.avail[i] set to the tokens sequence i drafted: the prefix of
    each draft to verify (plan.lengths)."""
    cdef int i
    for i in range(n_seqs):
        if plan.avail[i] >= 0:
            plan.forced[i] = min(plan.forced[i], plan.avail[i])
    plan_lengths(plan.alpha, plan.run, plan.avail, plan.forced, n_seqs, cost, explore,
                 plan.lengths)


cdef int checked_tokens(const token_t* draft, int n_drafted, int n_verified, int n_accepted,
                        const token_t* emitted, int* n_matched) noexcept nogil:
    """How many drafted tokens a step checked, and (n_matched) how many of them matched: the
    verified ones, plus the first unverified one when every verified token was accepted (it is
    compared with the token the step emitted after them, a check that costs nothing)."""
    n_matched[0] = n_accepted
    if n_accepted == n_verified and n_verified < n_drafted:
        n_matched[0] += draft[n_verified] == emitted[n_verified]
        return n_verified + 1
    return n_verified


cdef void policy_observe(DraftPolicy* p, double* job_alpha, int n_checked,
                         int n_matched) noexcept nogil:
    """Learn from a step's checked draft tokens (see checked_tokens). An EMA over them: matched
    ones count as successes, the first mismatch as a failure; tokens after it carry no
    information. The run of matched tokens grows with them and ends at a mismatch."""
    cdef int j
    if n_checked <= 0:
        return
    for j in range(min(n_matched + 1, n_checked)):
        p.alpha = 0.9 * p.alpha + 0.1 * (1.0 if j < n_matched else 0.0)
        job_alpha[0] = 0.98 * job_alpha[0] + 0.02 * (1.0 if j < n_matched else 0.0)
    p.run = p.run + n_matched if n_matched == n_checked else 0
