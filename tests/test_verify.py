"""Tests of spec._loop._verify: greedy known answers, losslessness of speculative sampling (chi-square
against the target distribution at fixed seeds), the filter chain against a numpy reference,
reproducibility and input validation."""
import math

import numpy as np
import pytest

from spec._loop._verify import (Sampler, _rng_u64, _top2_margin, _workspace_too_small, target_probs,
                          verify_greedy_np, verify_stochastic_np)

try:
    from scipy.stats import chi2 as _scipy_chi2
except ImportError:          # the Wilson-Hilferty approximation below stands in
    _scipy_chi2 = None

ALPHA = 1e-3                 # fixed seeds: each chi-square test is deterministic


# -- references ------------------------------------------------------------------------------------

def ref_target_probs(logits, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0):
    """numpy float64 reference of the documented chain: top-k -> top-p -> min-p -> temperature."""
    l = np.asarray(logits, dtype=np.float32).astype(np.float64)
    V = l.size
    p = np.zeros(V)
    if temperature == 0:
        p[int(np.argmax(l))] = 1
        return p
    m = l.max()
    keep = np.lexsort((np.arange(V), -l))          # descending logit, then ascending id
    if 0 < top_k < V:
        keep = keep[:top_k]
    if top_p < 1:
        e = np.exp(l[keep] - m)
        reached = np.cumsum(e) >= np.float32(top_p) * e.sum()
        keep = keep[:int(np.argmax(reached)) + 1] if reached.any() else keep
    if min_p > 0:
        keep = keep[l[keep] >= m + np.log(min_p)]
    w = np.exp((l[keep] - m) / temperature)
    p[keep] = w / w.sum()
    return p


def chi2_sf(stat, df):
    """Chi-square survival function: scipy, else the Wilson-Hilferty normal approximation."""
    if _scipy_chi2 is not None:
        return float(_scipy_chi2.sf(stat, df))
    return wilson_hilferty_sf(stat, df)


def wilson_hilferty_sf(stat, df):
    a = 2.0 / (9.0 * df)
    z = ((stat / df) ** (1.0 / 3.0) - (1.0 - a)) / math.sqrt(a)
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def chi2_pvalue(samples, probs):
    """p-value of ``samples`` (token ids) being drawn from ``probs``. Ids of probability 0 must
    never occur; bins expecting fewer than 5 samples are pooled (the usual validity rule)."""
    probs = np.asarray(probs, dtype=np.float64)
    counts = np.bincount(np.asarray(samples), minlength=probs.size)
    support = probs > 0
    assert counts[~support].sum() == 0, f"sampled ids of probability 0: {np.flatnonzero(counts * ~support)}"
    obs, expected = counts[support], counts.sum() * probs[support] / probs[support].sum()
    small = expected < 5
    if small.any():
        obs = np.append(obs[~small], obs[small].sum())
        expected = np.append(expected[~small], expected[small].sum())
        if expected[-1] < 5 and expected.size > 1:          # still small: join the smallest bin
            j = int(np.argmin(expected[:-1]))
            obs[j] += obs[-1]
            expected[j] += expected[-1]
            obs, expected = obs[:-1], expected[:-1]
    stat = float(((obs - expected) ** 2 / expected).sum())
    df = expected.size - 1
    return 1.0 if df == 0 else chi2_sf(stat, df)


def xoshiro_ref(seed, n):
    """Pure-Python splitmix64 seeding + xoshiro256** (Blackman & Vigna reference code)."""
    M = (1 << 64) - 1

    def rotl(x, k):
        return ((x << k) | (x >> (64 - k))) & M

    x = seed
    s = []
    for _ in range(4):
        x = (x + 0x9E3779B97F4A7C15) & M
        z = x
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M
        s.append(z ^ (z >> 31))
    out = []
    for _ in range(n):
        out.append((rotl((s[1] * 5) & M, 7) * 9) & M)
        t = (s[1] << 17) & M
        s[2] ^= s[0]
        s[3] ^= s[1]
        s[1] ^= s[2]
        s[0] ^= s[3]
        s[2] ^= t
        s[3] = rotl(s[3], 45)
    return out


def run(logits, draft_fn, n, seed, draft_probs=None, **params):
    """n verifications of ``logits``; draft_fn(i) gives the i-th draft. Returns the outputs."""
    rng = Sampler(seed)
    return [verify_stochastic_np(logits, draft_fn(i), draft_probs, rng=rng, **params)
            for i in range(n)]


# Small synthetic targets: V = 8, probabilities well spread so every bin gets samples.
LOGITS = np.array([
    [2.0, 1.2, 0.3, -0.5, 1.7, -1.0, 0.0, 0.8],
    [-0.3, 0.9, 1.8, 0.1, -0.8, 1.1, 0.4, 0.0],
    [0.5, 0.5, -0.2, 1.5, 0.2, -0.6, 1.0, 0.7],
], dtype=np.float32)
V = LOGITS.shape[1]


# -- greedy ----------------------------------------------------------------------------------------

def test_greedy_all_accepted_plus_bonus():
    draft = LOGITS[:2].argmax(axis=1)
    out = verify_greedy_np(LOGITS, draft)
    assert out.dtype == np.int32
    assert out.tolist() == [*draft.tolist(), int(LOGITS[2].argmax())]


def test_greedy_first_mismatch_emits_its_argmax():
    draft = LOGITS[:2].argmax(axis=1).copy()
    draft[1] = (draft[1] + 1) % V
    out = verify_greedy_np(LOGITS, draft)
    assert out.tolist() == [int(draft[0]), int(LOGITS[1].argmax())]
    draft[0] = (draft[0] + 3) % V
    assert verify_greedy_np(LOGITS, draft).tolist() == [int(LOGITS[0].argmax())]


def test_greedy_ties_go_to_lowest_index():
    logits = np.array([[0.0, 1.0, 3.0, 3.0, 3.0], [5.0, 5.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    assert verify_greedy_np(logits, [3]).tolist() == [2]          # 3 ties with 2: rejected
    assert verify_greedy_np(logits, [2]).tolist() == [2, 0]       # accepted, bonus tie -> 0
    assert _top2_margin(logits[0]) == (2, 0.0)


def test_greedy_no_draft_and_one_token_vocab():
    assert verify_greedy_np(LOGITS[:1], []).tolist() == [int(LOGITS[0].argmax())]
    assert verify_greedy_np(np.zeros((3, 1), np.float32), [0, 0]).tolist() == [0, 0, 0]


def test_greedy_strided_and_other_layouts():
    draft = [int(LOGITS[0].argmax()), 3]
    expected = verify_greedy_np(LOGITS, draft).tolist()
    big = np.full((3, V + 5), 100.0, dtype=np.float32)
    big[:, :V] = LOGITS
    assert verify_greedy_np(big[:, :V], draft).tolist() == expected          # row stride V + 5
    assert verify_greedy_np(np.asfortranarray(LOGITS), draft).tolist() == expected
    assert verify_greedy_np(LOGITS.astype(np.float64), draft).tolist() == expected
    assert verify_greedy_np(LOGITS[::-1][::-1], np.array(draft, np.int64)).tolist() == expected


def test_greedy_matches_brute_force_on_random_cases():
    gen = np.random.default_rng(7)
    for _ in range(200):
        n, v = int(gen.integers(0, 6)), int(gen.integers(1, 6))
        logits = gen.integers(-2, 3, size=(n + 1, v)).astype(np.float32)   # many ties
        draft = np.where(gen.random(n) < 0.7, logits[:n].argmax(axis=1), gen.integers(0, v, n))
        expected = []
        for i in range(n + 1):
            top = int(np.argmax(logits[i]))
            expected.append(top)
            if i == n or top != draft[i]:
                break
        assert verify_greedy_np(logits, draft).tolist() == expected


def test_top2_margin():
    assert _top2_margin([1.0, 5.0, 3.0]) == (1, 2.0)
    assert _top2_margin([4.0]) == (0, math.inf)
    assert _top2_margin([-math.inf, 2.0, -math.inf]) == (1, math.inf)


def test_temperature_zero_is_greedy():
    gen = np.random.default_rng(3)
    for _ in range(50):
        logits = gen.normal(size=(4, 6)).astype(np.float32)
        draft = np.where(gen.random(3) < 0.6, logits[:3].argmax(axis=1), gen.integers(0, 6, 3))
        q = gen.dirichlet(np.ones(6), size=3)
        expected = verify_greedy_np(logits, draft).tolist()
        assert verify_stochastic_np(logits, draft, temperature=0, rng=Sampler(1)).tolist() == expected
        assert verify_stochastic_np(logits, draft, q, temperature=0.0, top_k=2,
                                    rng=Sampler(2)).tolist() == expected
        assert verify_stochastic_np(logits, draft, rng=Sampler(3, temperature=0)).tolist() == expected


# -- losslessness ----------------------------------------------------------------------------------

N = 24000
P0 = ref_target_probs(LOGITS[0])
HIGH, LOW = int(np.argmax(P0)), int(np.argmin(P0))


@pytest.mark.parametrize("x", [HIGH, LOW], ids=["high-p", "low-p"])
def test_one_hot_draft_first_token_follows_target(x):
    outs = run(LOGITS[:2], lambda i: [x], N, seed=11 + x)
    first = [int(o[0]) for o in outs]
    assert chi2_pvalue(first, P0) > ALPHA
    # Acceptance is p(x): the first emitted token is x exactly when the draft was accepted.
    n_acc = sum(len(o) - 1 for o in outs)
    assert abs(n_acc - N * P0[x]) < 4.5 * math.sqrt(N * P0[x] * (1 - P0[x]))
    assert n_acc == sum(f == x for f in first)
    # Power: resampling from p without removing x is detectably wrong for these samples.
    naive = P0 * (1 - P0[x])
    naive[x] += P0[x]
    assert chi2_pvalue(first, naive) < 1e-6


@pytest.mark.parametrize("mode", ["q-favours-high", "q-favours-low", "q-random"])
def test_probabilistic_draft_first_token_follows_target(mode):
    gen = np.random.default_rng(["q-favours-high", "q-favours-low", "q-random"].index(mode))
    if mode == "q-favours-high":
        q = P0 ** 3
    elif mode == "q-favours-low":
        q = 1 / P0
    else:
        q = gen.dirichlet(np.ones(V))
    q = (q / q.sum()).reshape(1, V)
    xs = gen.choice(V, size=N, p=q[0] / q[0].sum())          # the drafter samples x ~ q
    outs = run(LOGITS[:2], lambda i: [xs[i]], N, seed=21, draft_probs=q)
    first = [int(o[0]) for o in outs]
    assert chi2_pvalue(first, P0) > ALPHA
    # Acceptance rate sum_x min(p(x), q(x)) (Leviathan et al., Theorem 3.5).
    alpha = np.minimum(P0, q[0]).sum()
    n_acc = sum(len(o) - 1 for o in outs)
    assert abs(n_acc - N * alpha) < 4.5 * math.sqrt(N * alpha * (1 - alpha))
    assert chi2_pvalue(first, q[0]) < 1e-6                   # power: q itself is rejected


def test_second_token_given_first_accepted_follows_target():
    p1 = ref_target_probs(LOGITS[1])
    x0, x1 = HIGH, int(np.argsort(p1)[len(p1) // 2])        # a middling second draft
    outs = run(LOGITS, lambda i: [x0, x1], N, seed=5)
    second = [int(o[1]) for o in outs if len(o) >= 2]
    assert all(int(o[0]) == x0 for o in outs if len(o) >= 2)
    assert len(second) > N * P0[x0] * 0.9
    assert chi2_pvalue(second, p1) > ALPHA
    # Both drafts accepted: the bonus comes from the last row.
    p2 = ref_target_probs(LOGITS[2])
    bonus = [int(o[2]) for o in outs if len(o) == 3]
    assert chi2_pvalue(bonus, p2) > ALPHA


def test_second_token_with_probabilistic_drafts():
    gen = np.random.default_rng(9)
    q = gen.dirichlet(np.ones(V) * 2, size=2)
    q /= q.sum(axis=1, keepdims=True)
    xs = np.stack([gen.choice(V, size=N, p=q[0]), gen.choice(V, size=N, p=q[1])], axis=1)
    outs = run(LOGITS, lambda i: xs[i], N, seed=6, draft_probs=q)
    p1 = ref_target_probs(LOGITS[1])
    assert chi2_pvalue([int(o[0]) for o in outs], P0) > ALPHA
    assert chi2_pvalue([int(o[1]) for o in outs if len(o) >= 2], p1) > ALPHA


def test_bonus_token_follows_last_row():
    p1 = ref_target_probs(LOGITS[1])
    outs = run(LOGITS[:2], lambda i: [HIGH], N, seed=8)
    bonus = [int(o[1]) for o in outs if len(o) == 2]
    assert chi2_pvalue(bonus, p1) > ALPHA


FILTERS = dict(temperature=0.7, top_k=6, top_p=0.9, min_p=0.05)


def test_filtered_target_lossless_for_kept_and_filtered_drafts():
    logits = np.array([[1.0, 2.2, 0.1, 1.5, -0.4, 0.9, 1.9, -2.0, 0.6, 1.2],
                       [0.0] * 10], dtype=np.float32)
    p = ref_target_probs(logits[0], **FILTERS)
    np.testing.assert_allclose(target_probs(logits[0], **FILTERS), p, rtol=1e-5, atol=1e-7)
    kept, dropped = np.flatnonzero(p > 0), np.flatnonzero(p == 0)
    assert 2 < kept.size < 10
    x_kept = int(kept[np.argsort(p[kept])[0]])                # the least likely kept token
    x_dropped = int(dropped[0])
    for x, seed in ((x_kept, 31), (x_dropped, 32)):
        outs = run(logits, lambda i: [x], N // 2, seed=seed, **FILTERS)
        assert chi2_pvalue([int(o[0]) for o in outs], p) > ALPHA
    # A filtered-out draft is never accepted.
    assert all(len(o) == 1 for o in outs)
    gen = np.random.default_rng(4)
    q = gen.dirichlet(np.ones(10), size=1)
    xs = gen.choice(10, size=N // 2, p=q[0])
    outs = run(logits, lambda i: [xs[i]], N // 2, seed=33, draft_probs=q, **FILTERS)
    assert chi2_pvalue([int(o[0]) for o in outs], p) > ALPHA


def test_sampler_sample_follows_target_probs():
    row = LOGITS[2]
    for params, seed in ((dict(), 1), (dict(temperature=1.6, top_k=5), 2),
                         (dict(temperature=0.5, min_p=0.1), 3), (dict(top_p=0.8), 4)):
        s = Sampler(seed, **params)
        samples = [s.sample(row) for _ in range(N // 2)]
        assert chi2_pvalue(samples, ref_target_probs(row, **params)) > ALPHA, params


def test_sampling_on_a_large_vocabulary():
    # Several sampling blocks of 256 ids: block skipping must not bias the draw.
    gen = np.random.default_rng(12)
    v = 3000
    row = np.full(v, -np.inf, dtype=np.float32)
    hot = gen.choice(v, size=12, replace=False)               # mass spread over distant blocks
    row[hot] = gen.normal(size=12).astype(np.float32)
    p = target_probs(row)
    assert set(np.flatnonzero(p)) == set(hot.tolist())
    s = Sampler(13)
    assert chi2_pvalue([s.sample(row) for _ in range(N // 2)], p) > ALPHA
    # Rejection resampling with x removed, across blocks.
    x = int(hot[np.argmax(row[hot])])
    logits = np.stack([row, row])
    outs = run(logits, lambda i: [x], N // 2, seed=14)
    assert chi2_pvalue([int(o[0]) for o in outs], p) > ALPHA
    q = np.zeros((1, v))
    q[0, hot[:6]] = gen.dirichlet(np.ones(6))
    xs = gen.choice(v, size=N // 2, p=q[0])
    outs = run(logits, lambda i: [xs[i]], N // 2, seed=15, draft_probs=q)
    assert chi2_pvalue([int(o[0]) for o in outs], p) > ALPHA


def test_masked_tokens_never_sampled():
    row = np.array([0.5, -np.inf, 0.2, -np.inf, 0.1], dtype=np.float32)
    p = target_probs(row)
    assert p[1] == p[3] == 0 and abs(p.sum() - 1) < 1e-12
    s = Sampler(0)
    assert not {1, 3} & {s.sample(row) for _ in range(3000)}
    outs = run(np.stack([row, row]), lambda i: [1], 2000, seed=3)
    assert all(len(o) == 1 and int(o[0]) not in (1, 3) for o in outs)


def test_wilson_hilferty_close_to_exact():
    # The fallback p-value must be usable when scipy is absent. For even df the survival function
    # has a closed form: exp(-x/2) * sum_{i < df/2} (x/2)^i / i!.
    for stat, df in ((7.0, 8), (20.0, 6), (3.0, 10), (30.0, 8)):
        exact = math.exp(-stat / 2) * sum((stat / 2) ** i / math.factorial(i) for i in range(df // 2))
        assert abs(wilson_hilferty_sf(stat, df) - exact) < 0.01
        assert abs(chi2_sf(stat, df) - exact) < (1e-9 if _scipy_chi2 is not None else 0.01)


# -- the filter chain --------------------------------------------------------------------------

PARAMS = [dict(), dict(temperature=0.5), dict(temperature=2.0), dict(top_k=1), dict(top_k=3),
          dict(top_k=40), dict(top_p=0.5), dict(top_p=0.95), dict(top_p=0.01), dict(min_p=0.05),
          dict(min_p=0.3), dict(min_p=1.0), dict(top_k=40, top_p=0.95, min_p=0.05, temperature=0.8),
          dict(top_k=5, top_p=0.7, temperature=1.3), dict(top_p=0.9, min_p=0.2),
          dict(temperature=0)]


@pytest.mark.parametrize("v", [1, 2, 9, 300, 5000])
@pytest.mark.parametrize("params", PARAMS, ids=lambda d: ",".join(f"{k}={v}" for k, v in d.items()) or "plain")
def test_target_probs_matches_numpy_reference(v, params):
    gen = np.random.default_rng(v)
    for scale in (0.3, 2.0, 8.0):
        row = (gen.normal(size=v) * scale).astype(np.float32)
        got = target_probs(row, **params)
        ref = ref_target_probs(row, **params)
        assert got.dtype == np.float64 and got.shape == (v,)
        # Same support, except that weights below e^-87 (p < 1.7e-38) flush to 0 in float32.
        assert not (got > 0)[ref == 0].any()
        assert (got > 0)[ref > 1e-30].all()
        np.testing.assert_allclose(got, ref, rtol=2e-5, atol=1e-9)
        assert abs(got.sum() - 1) < 1e-6


def test_top_p_nucleus_deep_in_a_flat_vocabulary():
    # The boundary lies far beyond the first 256 candidates: the weighted quickselect path.
    gen = np.random.default_rng(1)
    row = (gen.normal(size=20000) * 0.5).astype(np.float32)
    for params in (dict(top_p=0.9), dict(top_p=0.3), dict(top_k=5000, top_p=0.8)):
        got, ref = target_probs(row, **params), ref_target_probs(row, **params)
        assert (ref > 0).sum() > 1000
        np.testing.assert_array_equal(got > 0, ref > 0)
        np.testing.assert_allclose(got, ref, rtol=2e-5, atol=1e-12)


def test_filter_ties_break_by_lower_id():
    row = np.array([1.0, 3.0, 3.0, 3.0, 0.0], dtype=np.float32)
    np.testing.assert_allclose(target_probs(row, top_k=2), [0, 0.5, 0.5, 0, 0])
    np.testing.assert_allclose(target_probs(np.full(4, 2.0, np.float32), top_p=0.5), [0.5, 0.5, 0, 0])
    np.testing.assert_allclose(target_probs(row, min_p=1.0), [0, 1 / 3, 1 / 3, 1 / 3, 0])
    np.testing.assert_array_equal(target_probs(row, temperature=0), [0, 1, 0, 0, 0])
    np.testing.assert_allclose(target_probs([0.0, -0.0, 0.0], top_k=2), [0.5, 0.5, 0])


def test_extreme_logits_stay_finite():
    row = np.array([1e4, -1e4, 9999.0, 0.0, -3e38, 3e38], dtype=np.float32)
    for t in (1e-6, 0.01, 1.0, 100.0):
        p = target_probs(row, temperature=t)
        assert np.isfinite(p).all() and abs(p.sum() - 1) < 1e-6 and p.argmax() == 5
    p = target_probs(np.array([0.0, -100.0, -200.0], np.float32), temperature=1e-30)
    np.testing.assert_array_equal(p, [1, 0, 0])


# -- reproducibility and the random stream -----------------------------------------------------------

def test_rng_matches_reference_xoshiro256starstar():
    for seed in (0, 1, 12345, 2 ** 64 - 1):
        assert _rng_u64(seed, 16).tolist() == xoshiro_ref(seed, 16)
    u = Sampler(99).random(200000)
    assert u.min() >= 0 and u.max() < 1
    assert abs(u.mean() - 0.5) < 0.005 and abs(u.var() - 1 / 12) < 0.002


def test_same_seed_same_output_different_seed_different():
    gen = np.random.default_rng(0)
    cases = []
    for _ in range(200):
        logits = gen.normal(size=(4, 12)).astype(np.float32)
        cases.append((logits, gen.integers(0, 12, 3), gen.dirichlet(np.ones(12), size=3)))

    def outputs(seed):
        s = Sampler(seed, top_k=8, temperature=0.9)
        res = []
        for logits, draft, q in cases:
            res.append(verify_stochastic_np(logits, draft, rng=s).tolist())
            res.append(verify_stochastic_np(logits, draft, q, rng=s).tolist())
            res.append(s.sample(logits[0]))
        return res

    assert outputs(42) == outputs(42)
    assert outputs(42) != outputs(43)
    s = Sampler(7)
    first = [s.sample(LOGITS[0]) for _ in range(50)]
    s.reseed(7)
    assert [s.sample(LOGITS[0]) for _ in range(50)] == first
    assert Sampler(None).seed != Sampler(None).seed
    out = verify_stochastic_np(LOGITS, [1, 2])                 # rng=None: OS-seeded
    assert 1 <= len(out) <= 3


def test_settings_come_from_the_sampler_unless_given():
    s = Sampler(0, temperature=0.5, top_k=2, top_p=0.9, min_p=0.1)
    assert (s.temperature, s.top_k, s.min_p) == (0.5, 2, pytest.approx(0.1))
    assert abs(s.top_p - 0.9) < 1e-7 and "Sampler(seed=0" in repr(s)
    row = np.array([[3.0, 2.9, 2.8, 0.0]], dtype=np.float32)
    assert {int(verify_stochastic_np(row, [], rng=s)[0]) for _ in range(300)} == {0, 1}
    assert {int(verify_stochastic_np(row, [], rng=s, top_k=0, min_p=0.0, top_p=1.0)[0])
            for _ in range(300)} == {0, 1, 2}


# -- the C level refuses a workspace that is too small ----------------------------------------------

def test_workspace_too_small_returns_minus_one():
    assert _workspace_too_small(np.zeros(10, np.float32)) == -1


# -- bad inputs ------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, exc, word", [
    (dict(temperature=-0.1), ValueError, "temperature"),
    (dict(temperature=float("nan")), ValueError, "temperature"),
    (dict(temperature=float("inf")), ValueError, "temperature"),
    (dict(temperature="hot"), TypeError, "temperature"),
    (dict(top_k=-1), ValueError, "top_k"),
    (dict(top_k=2.5), TypeError, "top_k"),
    (dict(top_p=0.0), ValueError, "top_p"),
    (dict(top_p=1.5), ValueError, "top_p"),
    (dict(min_p=-0.1), ValueError, "min_p"),
    (dict(min_p=1.01), ValueError, "min_p"),
])
def test_bad_settings_raise(kwargs, exc, word):
    with pytest.raises(exc, match=word):
        verify_stochastic_np(LOGITS, [0, 1], rng=Sampler(0), **kwargs)
    with pytest.raises(exc, match=word):
        target_probs(LOGITS[0], **kwargs)
    with pytest.raises(exc, match=word):
        Sampler(0, **kwargs)


def test_bad_arrays_raise():
    with pytest.raises(ValueError, match="logits"):
        verify_greedy_np(LOGITS[0], [])                               # 1-D
    with pytest.raises(ValueError, match="rows"):
        verify_greedy_np(LOGITS, [0])                                 # 3 rows for 1 draft
    with pytest.raises(ValueError, match="rows"):
        verify_stochastic_np(LOGITS, [0, 1, 2], rng=Sampler(0))
    with pytest.raises(TypeError, match="logits"):
        verify_greedy_np(LOGITS.astype(np.int32), [0, 1])
    with pytest.raises(ValueError, match="logits"):
        verify_greedy_np(np.zeros((1, 0), np.float32), [])
    bad = LOGITS.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        verify_stochastic_np(bad, [0, 1], rng=Sampler(0))
    bad[1, 2] = np.inf
    with pytest.raises(ValueError, match=r"\+inf"):
        verify_greedy_np(bad, [0, 1])
    bad[1] = -np.inf
    with pytest.raises(ValueError, match="-inf"):
        verify_greedy_np(bad, [0, 1])
    with pytest.raises(ValueError, match="draft"):
        verify_greedy_np(LOGITS, [0, V])                              # outside the vocabulary
    with pytest.raises(ValueError, match="draft"):
        verify_stochastic_np(LOGITS, [-1, 0], rng=Sampler(0))
    with pytest.raises(TypeError, match="draft"):
        verify_greedy_np(LOGITS, [0.0, 1.0])
    with pytest.raises(ValueError, match="draft"):
        verify_greedy_np(LOGITS, [[0, 1]])
    with pytest.raises(ValueError, match="draft_probs"):
        verify_stochastic_np(LOGITS, [0, 1], np.full((1, V), 1 / V), rng=Sampler(0))
    with pytest.raises(ValueError, match="draft_probs"):
        verify_stochastic_np(LOGITS, [0, 1], np.full((2, V), 0.5), rng=Sampler(0))
    q = np.full((2, V), 1 / V)
    q[0, 0], q[0, 1] = -0.1, 1 / V + 0.1
    with pytest.raises(ValueError, match="draft_probs"):
        verify_stochastic_np(LOGITS, [0, 1], q, rng=Sampler(0))
    with pytest.raises(TypeError, match="draft_probs"):
        verify_stochastic_np(LOGITS, [0, 1], np.ones((2, V), np.int64), rng=Sampler(0))
    with pytest.raises(TypeError, match="rng"):
        verify_stochastic_np(LOGITS, [0, 1], rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="seed"):
        Sampler(-1)
    with pytest.raises(TypeError, match="seed"):
        Sampler(1.5)
    with pytest.raises(ValueError, match="logits_row"):
        Sampler(0).sample(LOGITS)
    with pytest.raises(ValueError, match="n"):
        Sampler(0).random(-1)
    # Empty drafts with an empty probability table are fine.
    assert len(verify_stochastic_np(LOGITS[:1], [], np.zeros((0, V)), rng=Sampler(0))) == 1
