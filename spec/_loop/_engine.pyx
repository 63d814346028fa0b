"""The speculative loop: draft → verify → accept for one or many sequences sharing a Context.

Each sequence's state is a plain C struct (``SeqState``); one engine step builds ONE decode batch
holding, for every active sequence, its last sampled token plus its draft, decodes it with logits
at every position, verifies each sequence's slice, rolls back each sequence's rejected KV
positions and tells the drafter what was accepted. ``run`` drives steps without the GIL until
every sequence is done or ``max_steps`` steps ran (streaming takes a step at a time).

Plain decoding is the same loop with drafts of length zero, so plain and speculative runs prefill
identically and differ only in the verify batches (see the losslessness tests).

Tree verification (``Drafting(tree=True)``, greedy sequences of a model-free drafter): a verify
batch's cost steps at the kernels' row tiles (8 rows can cost less than 7), so up to TILE - 1
more rows carry the drafter's alternative branches (``draft_tree_seq``) where they raise the
batch's expected tokens per second (``_fill_tree``). A branch is a temporary sequence id from the context's last TREE_SEQS ids:
it is given the sequence's KV memory (``seq_cp``, metadata only in a unified cache), its rows
are decoded in the same batch (rows shared by several branches belong to all of them), the
target's argmax walks the tree, and the accepted branch's cells are handed to the sequence
before every branch id is emptied again.
"""
from libc.math cimport NAN, exp, isfinite, isnan, log, pow
from libc.stdint cimport int32_t, int64_t, uint64_t
from libc.string cimport memset

import os

import numpy as np
cimport numpy as cnp

from spec._runtime._core cimport Context
from spec.drafters.sessions._sessions cimport Session
from spec._runtime._signals cimport check_signals, monotonic_us
from spec._loop._plan cimport (COST_FRESH, COST_ROWS, EXPLORE_EVERY, TILE, CostModel, DraftPolicy,
                         PlanBuffers, checked_tokens, cost_age, cost_estimate, cost_init, cost_update,
                         token_prob,
                         plan_drafts, plan_lengths, plan_verify, policy_observe, policy_start)
from spec._c.typedefs cimport pos_t, seq_t, token_t
from spec._loop._verify cimport (SamplerParams, Rng, Workspace, rng_seed, sample_token, top2_margin,
                           verify_greedy, verify_stochastic, workspace_free, workspace_init)
from spec._runtime._argmax cimport argmax
from spec.drafters._base cimport Drafter

from spec._loop._params import Drafting, Sampling

cnp.import_array()

GREEDY = Sampling()

cdef enum:
    TREE_SEQS = TILE - 1        # branch sequence ids: a batch grows by < TILE rows to a tile
    TREE_CANDIDATES = 16        # alternative tokens drafted beyond the path, for the spare rows

N_BRANCH_SEQS = TREE_SEQS       # sequence ids an engine adds to its context for tree branches


cdef struct SeqState:
    seq_t seq               # sequence id in the context and the drafter
    token_t* tokens         # [n_prompt + max_tokens]: prompt, then generated tokens
    int n_prompt
    int n_generated         # generated tokens in `tokens` (the last one is id_last, not yet decoded)
    int max_tokens
    pos_t n_past            # tokens in the KV memory (positions 0 .. n_past-1)
    bint done
    bint prefilling         # its prompt is being decoded chunk by chunk inside the steps
    int n_prefill_rows      # prompt tokens in the current step's batch
    double prefill_s        # time of its prompt's decodes (its share of shared batches)
    token_t* draft          # [n_draft_max] the current step's draft
    int n_proposed          # tokens the drafter proposed this step
    int n_draft             # the prefix of them verified
    int batch_start         # index of this sequence's first row in the step's batch
    int n_replay            # checkpoint path: tokens to re-decode after a restore (0: none)
    pos_t replay_pos        # their first position
    token_t replay_first    # the id_last of the rejected verify (replayed first)
    float* margins          # [max_tokens] top-1 minus top-2 logit per emitted token, or NULL
    int64_t* accept_hist    # [n_draft_max + 1] verify steps by number of accepted drafts
    int64_t* accept_by_pos  # [n_draft_max] accepted drafts by draft position
    int64_t* draft_by_pos   # [n_draft_max] drafted tokens by draft position
    int32_t* parents        # [n_draft_max + TREE_CANDIDATES] tree drafts: each token's parent,
    float* probs            #   the drafter's estimate of its path probability,
    float* node_p           #   its chance of acceptance (see _fill_tree),
    int32_t* node_map       #   its index in the batch's tree, or -1
    int n_nodes             # tree drafts: path + candidate branch tokens drafted this step
    int n_branch            # branch tokens verified this step, at draft[n_draft:]
    int n_leaves            # this step's branch sequence ids
    seq_t leaf_seq[TREE_SEQS]
    int32_t leaf_node[TREE_SEQS]
    Rng rng
    SamplerParams sampler
    # statistics
    int64_t n_steps         # verify decodes that carried this sequence
    int64_t n_drafted
    int64_t n_accepted
    int64_t n_branch_rows   # tree rows verified
    int64_t n_branch_accepted  # tokens accepted through a branch
    DraftPolicy policy      # adaptive draft length ("auto")


cdef struct EngineConfig:
    int n_draft_max         # upper bound on a draft's length
    bint auto_draft         # choose each draft's length from acceptance and cost
    bint trace              # record margins
    int n_vocab
    const unsigned char* is_eog  # [n_vocab] 1 for end-of-generation tokens
    bint checkpoint         # the memory cannot drop a rejected suffix: save/restore/replay
    bint tree               # fill spare rows of a verify batch with branches
    seq_t branch_seq0       # the first of the TREE_SEQS branch sequence ids


cdef struct Timers:
    double draft_s
    double verify_s         # decode time of the verify batches
    double sample_s         # verification / sampling kernels




cdef inline bint _generating(const SeqState* s) noexcept nogil:
    return not s.done and not s.prefilling


cdef int _emit(SeqState* s, const token_t* toks, int n, const float* margins_src,
               const unsigned char* is_eog) noexcept nogil:
    """Append n verified tokens; stop at an end-of-generation token or the token budget."""
    cdef int i
    for i in range(n):
        if s.n_generated >= s.max_tokens:
            s.done = True
            return 0
        if is_eog[toks[i]]:
            s.done = True
            return 0
        s.tokens[s.n_prompt + s.n_generated] = toks[i]
        if s.margins != NULL:
            s.margins[s.n_generated] = margins_src[i]
        s.n_generated += 1
    if s.n_generated >= s.max_tokens:
        s.done = True
    return 0



cdef int _check_finite(Context ctx, const float* logits, token_t chosen) except -1 nogil:
    """A model whose weights hold NaN/Inf yields NaN logits, from which every kernel picks
    token 0 forever: the chosen token's logit tells (a NaN row has no finite entry)."""
    if not isfinite(logits[chosen]):
        with gil:
            raise ctx.nonfinite_error()
    return 0


cdef int _first_token(Context ctx, SeqState* s, const float* logits, const EngineConfig* cfg,
                      Workspace* ws) except -1 nogil:
    """Sample the token that follows the prompt (from its last prompt position's logits)."""
    cdef token_t first
    cdef float margin = 0
    if s.done:
        return 0
    first = sample_token(logits, cfg.n_vocab, &s.sampler, &s.rng, ws)
    _check_finite(ctx, logits, first)
    if s.margins != NULL:
        margin = top2_margin(logits, cfg.n_vocab, NULL)
    _emit(s, &first, 1, &margin, cfg.is_eog)
    return 0


# -- tree verification -------------------------------------------------------------------------
#
# A sequence's tree this step: nodes 0 .. n_draft-1 are the path draft (node i's parent is
# i - 1; -1 is the root, the sequence's id_last), nodes n_draft .. n_draft+n_branch-1 the
# branches, parents before children. Node x sits in the batch at row batch_start + 1 + x, at
# position n_past + depth(x).

cdef int _fill_tree(SeqState** seqs, int n_seqs, const CostModel* cost,
                    int n_batch) noexcept nogil:
    """Add branches to the planned verify batch where they raise its expected tokens per
    second: up to TREE_SEQS rows, each the candidate most likely to be accepted (its parent
    in the batch), kept as far as the measured cost of the grown batch pays (sizes off the
    kernels' tiles count only where measured, as in the planner).

    A node's chance of acceptance: the planner's for a path token (token_prob along the path),
    and for a branch its parent's chance times the drafter's conditional estimate (the ratio
    of their path probabilities). Each accepted node is one more token. Returns rows added."""
    cdef SeqState* s
    cdef int i, j, c, p, x, n_rows = 0, n_picks = 0, best_x = 0, w
    cdef int pick_seq[TREE_SEQS]
    cdef int pick_node[TREE_SEQS]
    cdef double tokens = 0, gain, g, best_rate, rate, reach
    for i in range(n_seqs):
        s = seqs[i]
        if not _generating(s):
            continue
        n_rows += 1 + s.n_draft
        tokens += 1.0
        reach = 1.0
        for j in range(s.n_draft):
            reach *= token_prob(s.policy.alpha, s.policy.run, j)
            tokens += reach
            s.node_p[j] = <float> reach
        # candidates: their chance, and -1 in node_map (not in the batch)
        for c in range(s.n_proposed, s.n_nodes):
            s.node_map[c] = -1
            p = s.parents[c]
            if p < 0:
                s.node_p[c] = s.probs[c]
            elif p < s.n_proposed and p >= s.n_draft:
                s.node_p[c] = 0      # under a path token the plan does not verify
            else:
                s.node_p[c] = s.node_p[p] * s.probs[c] / s.probs[p] if s.probs[p] > 0 else 0
    if n_rows == 0:
        return 0
    best_rate = tokens / cost_estimate(cost, n_rows)
    for x in range(1, min(TREE_SEQS, n_batch - n_rows) + 1):
        # the most likely candidate whose parent is in the batch
        gain = 0
        for i in range(n_seqs):
            s = seqs[i]
            if not _generating(s):
                continue
            for c in range(s.n_proposed, s.n_nodes):
                p = s.parents[c]
                if s.node_map[c] >= 0 or not (p < s.n_draft or (
                        p >= s.n_proposed and s.node_map[p] >= 0)):
                    continue
                g = s.node_p[c]
                if g > gain:
                    gain = g
                    pick_seq[n_picks] = i
                    pick_node[n_picks] = c
        if gain <= 0:
            break
        seqs[pick_seq[n_picks]].node_map[pick_node[n_picks]] = 0      # in the batch
        n_picks += 1
        tokens += gain
        if (n_rows + x) % TILE and cost_age(cost, n_rows + x) > COST_FRESH:
            continue
        rate = tokens / cost_estimate(cost, n_rows + x)
        if rate > best_rate * (1.0 + 1e-9):
            best_rate = rate
            best_x = x
    for x in range(best_x, n_picks):
        seqs[pick_seq[x]].node_map[pick_node[x]] = -1
    # compact each sequence's chosen branches to draft[n_draft:], parents remapped
    for i in range(n_seqs):
        s = seqs[i]
        if not _generating(s) or s.n_nodes <= s.n_proposed:
            continue
        w = s.n_draft
        for c in range(s.n_proposed, s.n_nodes):
            if s.node_map[c] < 0:
                continue
            p = s.parents[c]
            s.node_map[c] = w
            s.draft[w] = s.draft[c]
            s.parents[w] = p if p < s.n_draft else s.node_map[p]
            w += 1
        s.n_branch = w - s.n_draft
    return best_x


cdef int _add_tree_rows(Context ctx, SeqState* s, int* n_leaves, seq_t branch_seq0,
                        int32_t* depth) except -1 nogil:
    """Add a sequence's branch rows to the batch (its root and path rows are in it) and give
    each branch leaf a sequence id holding the sequence's memory, on every row above it."""
    cdef int x, y, k, n_nodes = s.n_draft + s.n_branch
    cdef int row0 = s.batch_start + 1
    cdef seq_t b
    for x in range(s.n_draft, n_nodes):
        depth[x] = 0       # 0: no child (a leaf), else 1; depths below
    for x in range(s.n_draft, n_nodes):
        if s.parents[x] >= s.n_draft:
            depth[s.parents[x]] = 1
    s.n_leaves = 0
    for x in range(s.n_draft, n_nodes):
        if depth[x] == 0:
            s.leaf_node[s.n_leaves] = x
            s.leaf_seq[s.n_leaves] = branch_seq0 + n_leaves[0]
            s.n_leaves += 1
            n_leaves[0] += 1
    for x in range(s.n_draft, n_nodes):
        y = s.parents[x]
        depth[x] = (y + 2) if y < s.n_draft else depth[y] + 1
    for k in range(s.n_leaves):
        b = s.leaf_seq[k]
        ctx.seq_rm(b, -1, -1)
        ctx.seq_cp(s.seq, b, -1, -1)
    # a branch row's first sequence is its first leaf's: rows are added with it, then every
    # leaf is added to the rows above it that do not list it yet
    for x in range(s.n_draft, n_nodes):
        for k in range(s.n_leaves):
            y = s.leaf_node[k]
            while y > x:
                y = s.parents[y]
            if y == x:
                break
        ctx.batch_add(s.draft[x], s.n_past + depth[x], s.leaf_seq[k], True)
    for k in range(s.n_leaves):
        b = s.leaf_seq[k]
        y = s.leaf_node[k]
        while True:
            y = s.parents[y]
            if y < s.n_draft:
                break
            if ctx.batch.seq_id[row0 + y][0] != b:
                ctx.batch_add_seq(row0 + y, b)
        # the path rows up to the fork and the root
        while y >= -1:
            ctx.batch_add_seq(row0 + y, b)
            y -= 1
    return 0


cdef int _verify_tree(Context ctx, SeqState* s, int n_vocab, token_t* out, int32_t* rows,
                      int* n_path) except -1 nogil:
    """Greedy: follow the target's argmax from the root through the tree; out[0..n] = the
    accepted tokens and the target's token after them, rows[0..n] the rows that chose them.
    Returns n accepted; n_path = how many of them are on the path."""
    cdef int node = -1, x, n = 0, n_nodes = s.n_draft + s.n_branch, child
    cdef int row = s.batch_start
    cdef token_t t
    n_path[0] = 0
    while True:
        t = argmax(ctx.logits_row(row), n_vocab)
        out[n] = t
        rows[n] = row
        child = -1
        if node + 1 < s.n_draft and node + 1 == n and s.draft[node + 1] == t:
            child = node + 1        # the path continues
            n_path[0] += 1
        else:
            for x in range(s.n_draft, n_nodes):
                if s.parents[x] == node and s.draft[x] == t:
                    child = x
                    break
        if child < 0:
            return n
        n += 1
        node = child
        row = s.batch_start + 1 + child


cdef int _settle_tree(Context ctx, SeqState* s, int n_acc, int n_path,
                      int last_node) except -1 nogil:
    """After a tree verify that accepted n_acc nodes (n_path on the path, the last one
    last_node): the sequence keeps the accepted nodes' cells only, and the branch ids are
    emptied (cells only they held are freed)."""
    cdef int k, y, last = 0
    cdef pos_t fork = s.n_past + 1 + n_path
    if n_acc > n_path:
        # accepted through a branch: drop the path past the fork, then take the branch's cells
        # from a leaf below the last accepted node
        if not ctx.seq_rm(s.seq, fork, -1):
            with gil:
                raise RuntimeError(f"sequence {s.seq}: cannot drop positions >= {fork}")
        for k in range(s.n_leaves):
            y = s.leaf_node[k]
            while y > last_node:
                y = s.parents[y]
            if y == last_node:
                last = k
                break
        ctx.seq_cp(s.leaf_seq[last], s.seq, fork, s.n_past + 1 + n_acc)
    elif not ctx.seq_rm(s.seq, s.n_past + 1 + n_acc, -1):
        with gil:
            raise RuntimeError(f"sequence {s.seq}: cannot drop positions >= "
                               f"{s.n_past + 1 + n_acc}")
    for k in range(s.n_leaves):
        ctx.seq_rm(s.leaf_seq[k], -1, -1)
    s.n_leaves = 0
    return 0


cdef int _replay(Context ctx, Session session, SeqState** seqs, int n_seqs) except -1 nogil:
    """Checkpoint path, after a partial acceptance restored a sequence's state: re-decode
    [old id_last, accepted drafts...] for every such sequence in one batch."""
    cdef SeqState* s
    cdef int i, j, n_rows = 0
    ctx.batch_clear()
    for i in range(n_seqs):
        s = seqs[i]
        if s.n_replay == 0:
            continue
        ctx.batch_add(s.replay_first, s.replay_pos, s.seq, False)
        for j in range(1, s.n_replay):
            ctx.batch_add(s.draft[j - 1], s.replay_pos + j, s.seq, False)
        n_rows += s.n_replay
        s.n_replay = 0
    if n_rows == 0:
        return 0
    ctx.batch_decode()
    if session is not None:
        session.after_decode()
    return 0


cdef int _step(Context ctx, Drafter drafter, SeqState** seqs, int n_seqs, const EngineConfig* cfg,
               CostModel* cost, double* job_alpha, PlanBuffers plan, Workspace* ws, Timers* timers,
               token_t* out_buf, float* margin_buf, int32_t* scratch,
               Session session) except -1 nogil:
    """One draft → verify → accept step over every active sequence in seqs (session: the
    drafter when it is a model-based session, or the session stage of its chain, fed after
    every decode; else None). scratch: 2 * (n_draft_max + TREE_CANDIDATES + 2) ints."""
    cdef SeqState* s
    cdef int i, j, k, n_acc, n_rows, n_active = 0, row_cap, n_checked, n_matched
    cdef int n_path, n_leaves = 0
    cdef bint tree
    cdef Py_ssize_t n_path_drafted
    cdef int32_t* acc_rows = scratch + cfg.n_draft_max + TREE_CANDIDATES + 2
    cdef double seconds
    cdef bint any_replay = False, auto, explore, shadow
    cdef int64_t t0, t1, t2
    cdef const float* row0
    # 1. drafts
    t0 = monotonic_us()
    for i in range(n_seqs):
        n_active += not seqs[i].done    # generating, or may finish its prompt and join
    row_cap = ctx.n_batch // max(n_active, 1) - 1    # the verify batch fits n_batch
    for i in range(n_seqs):
        s = seqs[i]
        s.n_draft = 0
        s.n_proposed = 0
        s.n_nodes = 0
        s.n_branch = 0
        s.n_leaves = 0
        plan.policy[i] = &s.policy
        plan.forced[i] = 0
        plan.avail[i] = -1
        if _generating(s):
            # the step emits up to k + 1 tokens; the context and the batch must hold them
            plan.avail[i] = max(0, min(cfg.n_draft_max, s.max_tokens - s.n_generated - 1,
                                       ctx.n_ctx - s.n_past - 1, row_cap))
    auto = cfg.auto_draft and drafter is not None and cfg.n_draft_max > 0
    explore = cost.clock % EXPLORE_EVERY == EXPLORE_EVERY - 1
    # A model-free drafter drafts for every sequence (microseconds): what the target emits
    # then checks the drafts the plan does not verify, for free. A model (a session, or a chain
    # with a session stage) drafts only what the plan verifies.
    shadow = session is None
    if auto:
        # who drafts (and, for model-based sessions, how far), as if every draft were available
        plan_drafts(plan, n_seqs, cost, explore, job_alpha[0], shadow)
    for i in range(n_seqs):
        s = seqs[i]
        k = plan.avail[i]
        if k <= 0 or drafter is None:
            continue
        if auto and not shadow:
            if plan.lengths[i] == 0 and plan.forced[i] == 0:
                continue
            k = max(plan.lengths[i], plan.forced[i])
        if cfg.tree and s.sampler.temperature <= 0:
            s.n_nodes = <int> drafter.draft_tree_seq(
                s.seq, s.tokens, s.n_prompt + s.n_generated - 1,
                s.tokens[s.n_prompt + s.n_generated - 1], k, k + TREE_CANDIDATES, s.draft,
                s.parents, s.probs, &n_path_drafted)
            s.n_proposed = <int> n_path_drafted
        else:
            s.n_proposed = <int> min(k, drafter.draft_seq(
                s.seq, s.tokens, s.n_prompt + s.n_generated - 1,
                s.tokens[s.n_prompt + s.n_generated - 1], k, s.draft))
            s.n_nodes = s.n_proposed
        s.n_draft = s.n_proposed
    if auto:
        # the final plan, over the drafts actually made: verify the best prefix of each
        for i in range(n_seqs):
            if plan.avail[i] >= 0:
                plan.avail[i] = seqs[i].n_draft
        plan_verify(plan, n_seqs, cost, explore)
        for i in range(n_seqs):
            if plan.avail[i] >= 0:
                seqs[i].n_draft = plan.lengths[i]
    if cfg.tree and drafter is not None:
        _fill_tree(seqs, n_seqs, cost, ctx.n_batch)
    t1 = monotonic_us()
    timers.draft_s += (t1 - t0) * 1e-6
    # 2. prompt chunks of sequences still prefilling, in a decode of their own (logits at a
    # prompt's last token). On the CPU a prompt chunk gains nothing from sharing the verify
    # batch (prefill is compute-bound); apart, every verify batch is a shape the cost model
    # measures, and a prompt whose last chunk is decoded joins this step's verify.
    ctx.batch_clear()
    n_rows = 0
    for i in range(n_seqs):
        s = seqs[i]
        s.n_prefill_rows = 0
        if s.done or not s.prefilling or n_rows >= ctx.n_batch:
            continue
        s.batch_start = n_rows
        s.n_prefill_rows = min(s.n_prompt - s.n_past, ctx.n_batch - n_rows)
        for j in range(s.n_prefill_rows):
            ctx.batch_add(s.tokens[s.n_past + j], s.n_past + j, s.seq,
                          s.n_past + j == s.n_prompt - 1)
        n_rows += s.n_prefill_rows
    if n_rows > 0:
        ctx.batch_decode()
        if session is not None:
            session.after_decode()
        t2 = monotonic_us()
        seconds = (t2 - t1) * 1e-6
        t1 = t2
        # prompts whose last chunk was decoded: sample the first token, begin in the drafter
        # (it joins this step's verify batch with no draft)
        for i in range(n_seqs):
            s = seqs[i]
            if s.n_prefill_rows == 0:
                continue
            s.prefill_s += seconds * s.n_prefill_rows / n_rows
            s.n_past += s.n_prefill_rows
            if s.n_past == s.n_prompt:
                s.prefilling = False
                _first_token(ctx, s, ctx.logits_row(s.batch_start + s.n_prefill_rows - 1), cfg, ws)
                if drafter is not None:
                    drafter.begin_seq(s.seq, s.tokens, s.n_prompt)
            s.n_prefill_rows = 0
    # 3. the verify batch: [id_last, draft...] per sequence, logits at every position
    ctx.batch_clear()
    n_rows = 0
    for i in range(n_seqs):
        s = seqs[i]
        if not _generating(s):
            continue
        s.batch_start = n_rows
        if cfg.checkpoint and s.n_draft > 0:
            ctx.ckpt_save(s.seq)
        ctx.batch_add(s.tokens[s.n_prompt + s.n_generated - 1], s.n_past, s.seq, True)
        for j in range(s.n_draft):
            ctx.batch_add(s.draft[j], s.n_past + 1 + j, s.seq, True)
        n_rows += 1 + s.n_draft
        if s.n_branch > 0:
            _add_tree_rows(ctx, s, &n_leaves, cfg.branch_seq0, scratch)
            n_rows += s.n_branch
    if n_rows == 0:
        return 0
    ctx.batch_decode()
    if session is not None:
        session.after_decode()
    t2 = monotonic_us()
    seconds = (t2 - t1) * 1e-6
    timers.verify_s += seconds
    cost_update(cost, n_rows, seconds)
    # 4. verify each slice, roll back rejected positions, tell the drafter
    for i in range(n_seqs):
        s = seqs[i]
        if not _generating(s):
            continue
        row0 = ctx.logits_row(s.batch_start)
        tree = s.n_branch > 0
        if tree:
            n_acc = _verify_tree(ctx, s, cfg.n_vocab, out_buf, acc_rows, &n_path)
        elif s.sampler.temperature <= 0:
            n_acc = verify_greedy(row0, cfg.n_vocab, cfg.n_vocab, s.draft, s.n_draft, out_buf)
        else:
            n_acc = verify_stochastic(row0, cfg.n_vocab, cfg.n_vocab, s.draft, NULL, s.n_draft,
                                      &s.sampler, &s.rng, ws, out_buf)
            if n_acc < 0:
                with gil:
                    raise RuntimeError("sampler workspace is smaller than the vocabulary")
        _check_finite(ctx, row0, out_buf[0])
        if s.margins != NULL:
            for j in range(n_acc + 1):
                margin_buf[j] = top2_margin(
                    ctx.logits_row(acc_rows[j]) if tree else
                    row0 + <Py_ssize_t> j * cfg.n_vocab, cfg.n_vocab, NULL)
        s.n_steps += 1
        s.n_drafted += s.n_draft
        s.n_accepted += n_acc
        s.accept_hist[n_acc] += 1
        # The path's statistics, the draft policy and the drafter count the path. In a tree
        # draft[n_draft:] holds branches, so no unverified path token is checked for free.
        if tree:
            s.n_branch_rows += s.n_branch
            s.n_branch_accepted += n_acc - n_path
        else:
            n_path = n_acc
        for j in range(s.n_draft):
            s.draft_by_pos[j] += 1
            s.accept_by_pos[j] += j < n_path
        n_checked = checked_tokens(s.draft, s.n_draft if tree else s.n_proposed, s.n_draft,
                                   n_path, out_buf, &n_matched)
        policy_observe(&s.policy, job_alpha, n_checked, n_matched)
        if s.n_draft > 0:
            drafter.accept_seq(s.seq, n_path)
        if tree:
            _settle_tree(ctx, s, n_acc, n_path,
                         acc_rows[n_acc] - s.batch_start - 1 if n_acc > 0 else -1)
        elif s.n_draft > n_acc:
            if cfg.checkpoint:
                # restore the state before the verify, then replay the accepted prefix
                ctx.ckpt_load(s.seq)
                if not ctx.seq_rm(s.seq, s.n_past, -1):
                    with gil:
                        raise RuntimeError(f"sequence {s.seq}: cannot drop positions >= "
                                           f"{s.n_past} after restoring its checkpoint")
                s.replay_first = s.tokens[s.n_prompt + s.n_generated - 1]
                s.replay_pos = s.n_past
                s.n_replay = 1 + n_acc
                any_replay = True
            elif not ctx.seq_rm(s.seq, s.n_past + 1 + n_acc, -1):
                with gil:
                    raise RuntimeError(
                        f"sequence {s.seq}: the context's memory cannot drop the rejected "
                        f"positions >= {s.n_past + 1 + n_acc} (recurrent model without a "
                        f"checkpoint or rollback depth n_rs_seq)")
        s.n_past += 1 + n_acc
        _emit(s, out_buf, n_acc + 1, margin_buf, cfg.is_eog)
    timers.sample_s += (monotonic_us() - t2) * 1e-6
    if any_replay:
        t1 = monotonic_us()
        _replay(ctx, session, seqs, n_seqs)
        timers.verify_s += (monotonic_us() - t1) * 1e-6
    return 0


cdef PlanBuffers _plan_buffers(cnp.ndarray policies, cnp.ndarray alpha, cnp.ndarray ints):
    # policies: uintp [n] (DraftPolicy pointers); alpha: float64 [n]; ints: C-contiguous intc
    # [4, n] = avail, forced, lengths, run
    cdef PlanBuffers plan
    cdef int n = ints.shape[1]
    plan.policy = <DraftPolicy**> cnp.PyArray_DATA(policies)
    plan.alpha = <double*> cnp.PyArray_DATA(alpha)
    plan.avail = <int*> cnp.PyArray_DATA(ints)
    plan.forced = plan.avail + n
    plan.lengths = plan.forced + n
    plan.run = plan.lengths + n
    return plan


cdef class Sequence:
    """Buffers and C state of one generation (a request) inside the engine loop.

    Build it through :meth:`Loop.sequence`, which sizes its draft buffers for the loop.
    ``sampling`` is a :class:`spec._loop._params.Sampling` (None: greedy).

    ``alpha0`` is the prior per-token acceptance that sizes its first "auto" drafts; by default
    the loop's running acceptance over the sequences it has already run.
    """
    cdef SeqState state
    cdef object tokens_arr, draft_arr, parents_arr, probs_arr, node_map_arr, margins_arr
    cdef object hist_arr, acc_pos_arr, draft_pos_arr

    def __init__(self, int seq, prompt, int max_tokens, int n_draft_max, sampling=None, *,
                 bint trace=False, double alpha0=NAN):
        prompt = np.ascontiguousarray(prompt, dtype=np.int32)
        n_prompt = prompt.shape[0]
        self.tokens_arr = np.zeros(n_prompt + max_tokens + 1, dtype=np.int32)
        self.tokens_arr[:n_prompt] = prompt
        # room for a tree draft: the path and the branch candidates
        self.draft_arr = np.zeros(n_draft_max + TREE_CANDIDATES, dtype=np.int32)
        self.parents_arr = np.zeros(n_draft_max + TREE_CANDIDATES, dtype=np.int32)
        self.probs_arr = np.zeros((2, n_draft_max + TREE_CANDIDATES), dtype=np.float32)
        self.node_map_arr = np.zeros(n_draft_max + TREE_CANDIDATES, dtype=np.int32)
        self.margins_arr = np.zeros(max(max_tokens, 1), dtype=np.float32) if trace else None
        self.hist_arr = np.zeros(n_draft_max + 1, dtype=np.int64)
        self.acc_pos_arr = np.zeros(max(n_draft_max, 1), dtype=np.int64)
        self.draft_pos_arr = np.zeros(max(n_draft_max, 1), dtype=np.int64)
        memset(&self.state, 0, sizeof(SeqState))
        cdef SeqState* s = &self.state
        s.seq = seq
        s.tokens = <token_t*> cnp.PyArray_DATA(self.tokens_arr)
        s.n_prompt = n_prompt
        s.max_tokens = max_tokens
        s.draft = <token_t*> cnp.PyArray_DATA(self.draft_arr)
        s.parents = <int32_t*> cnp.PyArray_DATA(self.parents_arr)
        s.probs = <float*> cnp.PyArray_DATA(self.probs_arr)
        s.node_p = s.probs + n_draft_max + TREE_CANDIDATES
        s.node_map = <int32_t*> cnp.PyArray_DATA(self.node_map_arr)
        s.margins = <float*> cnp.PyArray_DATA(self.margins_arr) if trace else NULL
        s.accept_hist = <int64_t*> cnp.PyArray_DATA(self.hist_arr)
        s.accept_by_pos = <int64_t*> cnp.PyArray_DATA(self.acc_pos_arr)
        s.draft_by_pos = <int64_t*> cnp.PyArray_DATA(self.draft_pos_arr)
        # The one place a Sampling (validated when it was built) becomes the loop's C struct.
        if sampling is None:
            sampling = GREEDY
        s.sampler.temperature = sampling.temperature
        s.sampler.top_k = sampling.top_k
        s.sampler.top_p = sampling.top_p
        s.sampler.min_p = sampling.min_p
        seed = sampling.seed
        if seed is None:
            seed = int.from_bytes(os.urandom(8), "little")
        policy_start(&s.policy, alpha0)
        rng_seed(&s.rng, <uint64_t> (seed & 0xFFFFFFFFFFFFFFFF))
        s.done = max_tokens == 0

    @property
    def seq_id(self):
        return self.state.seq

    @property
    def done(self):
        return bool(self.state.done)

    @property
    def n_prompt(self):
        return self.state.n_prompt

    @property
    def n_generated(self):
        return self.state.n_generated

    @property
    def prefilling(self):
        """True while its prompt is still being decoded inside the loop's steps."""
        return bool(self.state.prefilling)

    @property
    def prefill_s(self):
        """Seconds spent decoding its prompt (its row share of batches shared with others)."""
        return self.state.prefill_s

    @property
    def tokens(self):
        """The generated tokens so far (a copy)."""
        return self.tokens_arr[self.state.n_prompt:self.state.n_prompt + self.state.n_generated].copy()

    @property
    def margins(self):
        if self.margins_arr is None:
            return None
        return self.margins_arr[:self.state.n_generated].copy()

    def stats(self):
        cdef SeqState* s = &self.state
        return {"n_steps": s.n_steps, "n_drafted": s.n_drafted, "n_accepted": s.n_accepted,
                "n_branch_rows": s.n_branch_rows, "n_branch_accepted": s.n_branch_accepted,
                "accept_hist": self.hist_arr.copy(),
                "accept_by_pos": self.acc_pos_arr.copy(), "draft_by_pos": self.draft_pos_arr.copy()}

    def set_seq_id(self, int seq):
        """The context sequence (slot) this generation runs in; set before Loop.start."""
        self.state.seq = seq

    def finish(self, int n_generated=-1):
        """Mark the sequence done (e.g. a stop string matched); with ``n_generated``, keep only
        its first n_generated tokens (a step may accept tokens past a stop string)."""
        if n_generated > self.state.n_generated:
            raise ValueError(f"cannot keep {n_generated} tokens: {self.state.n_generated} "
                             f"were generated")
        if n_generated >= 0:
            self.state.n_generated = n_generated
        self.state.done = True


cdef class Loop:
    """Drives Sequences through a Context with a Drafter (or none: plain decoding)."""
    cdef Context ctx
    cdef Drafter drafter
    cdef Session session    # the model-based session (the drafter or a stage of its chain), fed
                            # every target decode
    cdef EngineConfig cfg
    cdef Workspace ws
    cdef Timers timers
    cdef CostModel cost
    cdef double job_alpha   # acceptance over every sequence this loop ran: new ones start here
    cdef object out_arr, margin_arr, eog_arr, scratch_arr

    def __cinit__(self):
        memset(&self.ws, 0, sizeof(Workspace))

    def __init__(self, Context ctx not None, Drafter drafter=None, drafting=None, *,
                 bint trace=False):
        """``drafting`` (a :class:`spec._loop._params.Drafting`, default ``Drafting()``) is turned
        into the loop's C config here, and only here; its longest draft sizes the draft
        buffers of the sequences :meth:`sequence` creates."""
        from spec.drafters._chain import DrafterChain
        if drafting is None:
            drafting = Drafting()
        elif not isinstance(drafting, Drafting):
            raise TypeError(f"drafting must be a Drafting, got {type(drafting).__name__}")
        cdef int n_draft_max = drafting.longest(ctx.n_batch) if drafter is not None else 0
        self.ctx = ctx
        self.drafter = drafter
        # a model-based session, alone or as a stage of a chain, is fed every target decode
        session = drafter.session if isinstance(drafter, DrafterChain) else drafter
        if isinstance(session, Session):
            if (<Session> session).target_ctx is not ctx:
                raise ValueError("the session's target_ctx is not the context this loop decodes")
            self.session = <Session> session
        # Memories that cannot drop a rejected suffix (recurrent / hybrid models) without a
        # rollback depth covering a whole draft take the checkpoint path.
        self.cfg.checkpoint = (drafter is not None and n_draft_max > 0 and ctx.recurrent
                               and ctx.n_rs_seq < n_draft_max)
        self.cfg.n_draft_max = n_draft_max
        self.cfg.auto_draft = drafting.auto
        # trees: greedy sequences of a model-free drafter, on a memory that drops a suffix
        self.cfg.tree = (drafting.tree and drafter is not None and n_draft_max > 0
                         and self.session is None and not self.cfg.checkpoint)
        if self.cfg.tree and ctx.n_seq_max <= TREE_SEQS:
            raise ValueError(f"tree verification takes the context's last {TREE_SEQS} sequence "
                             f"ids for branches: n_seq_max={ctx.n_seq_max} leaves none for "
                             f"the sequences")
        self.cfg.branch_seq0 = ctx.n_seq_max - TREE_SEQS if self.cfg.tree else ctx.n_seq_max
        self.cfg.trace = trace
        self.cfg.n_vocab = ctx.n_vocab
        self.eog_arr = np.ascontiguousarray(ctx.model.eog_mask(), dtype=np.uint8)
        self.cfg.is_eog = <const unsigned char*> cnp.PyArray_DATA(self.eog_arr)
        with nogil:
            workspace_init(&self.ws, ctx.n_vocab)
        self.out_arr = np.zeros(self.cfg.n_draft_max + 1, dtype=np.int32)
        self.margin_arr = np.zeros(self.cfg.n_draft_max + 1, dtype=np.float32)
        self.scratch_arr = np.zeros(2 * (self.cfg.n_draft_max + TREE_CANDIDATES + 2),
                                    dtype=np.int32)
        memset(&self.timers, 0, sizeof(Timers))
        cost_init(&self.cost, drafting.draft_cost)
        self.job_alpha = 0.6

    def __dealloc__(self):
        workspace_free(&self.ws)

    @property
    def cost_model(self):
        """The verify-cost model: the line t = a + b·rows (seconds once fitted; a prior in
        one-row-step units before) and ``table``, the measured mean seconds of each batch size
        measured in the last COST_FRESH batches (the sizes the planner takes as measured)."""
        cdef int n
        table = {n: self.cost.mean[n] for n in range(1, COST_ROWS + 1)
                 if cost_age(&self.cost, n) <= COST_FRESH}
        return {"a": self.cost.a, "b": self.cost.b, "n_samples": self.cost.n_samples,
                "table": table}

    def _plan(self, alpha, avail, forced=None, run=None, bint explore=False):
        """Draft lengths the planner picks for sequences with acceptances ``alpha``, current
        runs of matched draft tokens ``run`` (default 0) and at most ``avail`` draft tokens each
        (< 0: not in the batch), ``forced`` tokens each at least, under this loop's cost model
        (for tests and for inspecting a loop)."""
        alpha_arr = np.array(alpha, dtype=np.float64, ndmin=1)
        n = alpha_arr.shape[0]
        ints_arr = np.zeros((4, max(n, 1)), dtype=np.intc)
        ints_arr[0, :n] = avail
        ints_arr[1, :n] = 0 if forced is None else forced
        ints_arr[3, :n] = 0 if run is None else run
        if (ints_arr[3, :n] < 0).any():
            raise ValueError("runs must be >= 0")
        if not ((ints_arr[1, :n] >= 0) & (ints_arr[1, :n] <= np.maximum(ints_arr[0, :n], 0))).all():
            raise ValueError("forced lengths must be in [0, avail]")
        if not ((alpha_arr >= 0) & (alpha_arr <= 1)).all():
            raise ValueError("acceptances must be in [0, 1]")
        cdef PlanBuffers plan = _plan_buffers(np.zeros(max(n, 1), dtype=np.uintp), alpha_arr,
                                              ints_arr)
        plan_lengths(plan.alpha, plan.run, plan.avail, plan.forced, n, &self.cost, explore,
                     plan.lengths)
        return ints_arr[2, :n].copy()

    @property
    def job_acceptance(self) -> float:
        """Per-token draft acceptance over every sequence this loop ran (new ones start here)."""
        return self.job_alpha

    def observe_cost(self, int n_rows, double seconds):
        """Feed one verify batch's size and decode time to the cost model (as every step does;
        exposed for tests and for calibrating a loop before timing it)."""
        if n_rows < 1 or not seconds >= 0:
            raise ValueError(f"need n_rows >= 1 and seconds >= 0, got {n_rows}, {seconds}")
        cost_update(&self.cost, n_rows, seconds)

    @property
    def timers(self):
        return {"draft_s": self.timers.draft_s, "verify_s": self.timers.verify_s,
                "sample_s": self.timers.sample_s}

    def reset_timers(self):
        memset(&self.timers, 0, sizeof(Timers))

    @property
    def tree(self) -> bool:
        """Whether verify batches carry tree branches (see the module's docstring)."""
        return bool(self.cfg.tree)

    @property
    def n_slots(self) -> int:
        """Sequence ids this loop's sequences may use: 0 .. n_slots-1 (the rest hold branches)."""
        return self.cfg.branch_seq0

    def sequence(self, int seq, prompt, int max_tokens, sampling=None, *, bint trace=False):
        """A :class:`Sequence` for this loop: its draft buffers hold this loop's longest draft."""
        return Sequence(seq, prompt, max_tokens, self.cfg.n_draft_max, sampling, trace=trace)

    def start(self, Sequence sq not None, bint interleave=False):
        """Prefill the sequence's prompt (its KV memory is cleared first), sample its first
        token and begin it in the drafter.

        With ``interleave`` the prompt is not decoded here: :meth:`run`'s steps decode it in
        chunks of up to n_batch tokens, one chunk before each verify batch, so running
        sequences keep generating while it prefills. Model-based sessions always prefill
        here (they process the prompt decodes on their own).
        """
        cdef SeqState* s = &sq.state
        cdef Context ctx = self.ctx
        cdef int64_t t0, t1
        cdef int i, n
        if s.n_prompt + s.max_tokens > ctx.n_ctx:
            from spec._runtime._errors import ContextOverflowError
            raise ContextOverflowError(
                f"prompt ({s.n_prompt} tokens) + max_tokens ({s.max_tokens}) exceed the context "
                f"window n_ctx={ctx.n_ctx}")
        if not 0 <= s.seq < self.cfg.branch_seq0:
            raise ValueError(f"sequence id {s.seq} is not in [0, {self.cfg.branch_seq0})"
                             + (f" (ids from {self.cfg.branch_seq0} hold tree branches)"
                                if self.cfg.tree else ""))
        if sq.draft_arr.shape[0] < self.cfg.n_draft_max + TREE_CANDIDATES:
            # its draft buffer would be written past its end
            raise ValueError(f"the sequence was built for drafts of "
                             f"{sq.draft_arr.shape[0] - TREE_CANDIDATES} tokens; this loop "
                             f"drafts up to {self.cfg.n_draft_max}")
        if self.drafter is not None:
            self.drafter.reserve_seqs(s.seq + 1)
            self.drafter.reset_seq(s.seq)     # a new request: nothing carries over per sequence
        if isnan(s.policy.alpha):
            s.policy.alpha = self.job_alpha
        s.prefill_s = 0
        if interleave and self.session is None and s.n_prompt > 0 and not s.done:
            self.check_open()
            ctx.seq_rm(s.seq, -1, -1)
            s.n_past = 0
            s.prefilling = True
            return
        with ctx.lock:
            self.check_open()
            with nogil:
                ctx.seq_rm(s.seq, -1, -1)
                t0 = monotonic_us()
                if self.session is None:
                    ctx.decode_tokens(s.tokens, s.n_prompt, 0, s.seq, False)
                else:
                    # chunk by chunk: the session processes every target decode
                    i = 0
                    while i < s.n_prompt:
                        n = min(s.n_prompt - i, ctx.n_batch)
                        ctx.decode_tokens(s.tokens + i, n, i, s.seq, False)
                        self.session.after_decode()
                        i += n
                t1 = monotonic_us()
                s.n_past = s.n_prompt
                _first_token(ctx, s, ctx.logits_row(-1), &self.cfg, &self.ws)
                if self.drafter is not None:
                    self.drafter.begin_seq(s.seq, s.tokens, s.n_prompt)
        s.prefill_s = (t1 - t0) * 1e-6

    cdef int check_open(self) except -1:
        """Before going nogil (under the context's lock, which Session.close takes too)."""
        self.ctx.check_open()
        if self.session is not None:
            self.session._live()
        return 0

    def run(self, list sequences, int max_steps=-1, bint until_one_done=False):
        """Run steps until every sequence is done, or max_steps steps ran, or (with
        until_one_done) a sequence finished; returns the number of steps run."""
        cdef int n = len(sequences), i, steps = 0, n_active, n_active0 = -1
        cdef int64_t next_signal_check = 0
        keep = np.zeros(max(n, 1), dtype=np.uintp)   # owns the pointer array
        cdef SeqState** seqs = <SeqState**> cnp.PyArray_DATA(keep)
        policies_arr = np.zeros(max(n, 1), dtype=np.uintp)
        alpha_arr = np.zeros(max(n, 1), dtype=np.float64)
        ints_arr = np.zeros((4, max(n, 1)), dtype=np.intc)
        cdef PlanBuffers plan = _plan_buffers(policies_arr, alpha_arr, ints_arr)
        for i in range(n):
            seqs[i] = &(<Sequence> sequences[i]).state
        cdef token_t* out_buf = <token_t*> cnp.PyArray_DATA(self.out_arr)
        cdef float* margin_buf = <float*> cnp.PyArray_DATA(self.margin_arr)
        cdef int32_t* scratch = <int32_t*> cnp.PyArray_DATA(self.scratch_arr)
        with self.ctx.lock:
            self.check_open()
            with nogil:
                while max_steps < 0 or steps < max_steps:
                    n_active = 0
                    for i in range(n):
                        n_active += not seqs[i].done
                    if n_active == 0 or (until_one_done and 0 <= n_active0 != n_active):
                        break
                    n_active0 = n_active
                    check_signals(&next_signal_check)
                    _step(self.ctx, self.drafter, seqs, n, &self.cfg, &self.cost, &self.job_alpha,
                          plan, &self.ws, &self.timers, out_buf, margin_buf, scratch,
                          self.session)
                    steps += 1
        return steps

    def end(self, Sequence sq not None):
        """Tell the drafter the sequence finished (its output may teach later sequences)."""
        cdef SeqState* s = &sq.state
        if self.drafter is not None:
            with nogil:
                self.drafter.end_seq(s.seq, s.tokens + s.n_prompt, s.n_generated)
