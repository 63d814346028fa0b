"""spec.simulate with a verify-cost table: fixed, planner (policy), step-oracle and
hindsight-oracle speedups."""
from __future__ import annotations

import numpy as np
import pytest

import spec

DRAFTERS = ["ngram-simple", "ngram-map-k", "ngram-mod", "ngram-cache", "suffix"]


def copy_stream(seed=0, n=300, copy=200, tail=100, vocab=50):
    """A prompt of random tokens, then an output that copies part of it, then new tokens."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, vocab, n)
    return np.concatenate([base, base[:copy], rng.integers(0, vocab, tail)]).astype(np.int32), n


def tiled(rows: int) -> float:
    """A CPU-like verify time: rows in tiles of 8 are cheap."""
    return 0.010 + 0.002 * rows - (0.006 if rows % 8 == 0 else 0.0)


TABLE = {r: tiled(r) for r in range(1, 70)}


@pytest.mark.parametrize("name", DRAFTERS)
def test_the_oracle_bounds_the_fixed_and_planned_schedules(name):
    # the oracle's dynamic programme searches every schedule of verified prefixes over the
    # drafts made at each position; for drafters whose drafts depend only on the history it
    # contains the fixed and the planner's schedules, so it is at least as fast
    for seed in range(3):
        tokens, p = copy_stream(seed)
        r = spec.simulate(name, tokens, n_max=32, prompt_len=p, cost_table=TABLE)
        assert r.oracle_speedup > 1.0
        # the step oracle walks one schedule over the oracle's own drafts: never faster
        assert r.step_oracle_speedup <= r.oracle_speedup * (1 + 1e-9), (seed, r)
        if name in ("ngram-simple", "suffix"):
            assert r.oracle_speedup >= r.fixed_speedup * (1 - 1e-9), (seed, r)
            assert r.oracle_speedup >= r.policy_speedup * (1 - 1e-9), (seed, r)
        assert r.policy_mean_accept_len >= 1 and r.oracle_mean_accept_len >= 1


def test_flat_cost_prices_steps():
    # rows cost nothing extra: a replay's speedup is its tokens per step; the oracle may still
    # beat verifying every full draft (a shorter prefix can land where the next draft is better)
    tokens, p = copy_stream(1)
    flat = {r: 1.0 for r in range(1, 20)}
    r = spec.simulate("ngram-simple", tokens, n_max=16, prompt_len=p, cost_table=flat)
    plain_steps = len(tokens) - 1 - p
    assert r.fixed_speedup == pytest.approx(plain_steps / r.n_calls)
    # knowing each step's acceptance, the step oracle verifies exactly the accepted prefix
    # (fewer rows on ties), so it walks the full-draft replay's steps
    assert r.step_oracle_speedup == pytest.approx(r.fixed_speedup, rel=1e-12)
    assert r.oracle_speedup >= r.fixed_speedup
    # plain steps / oracle steps = tokens per oracle step (up to a final bonus token)
    assert r.oracle_speedup == pytest.approx(r.oracle_mean_accept_len, rel=0.02)


def test_linear_cost_means_speculation_cannot_pay():
    # every row costs as much as a plain step: no schedule beats plain decoding
    tokens, p = copy_stream(2)
    linear = {r: float(r) for r in range(1, 20)}
    r = spec.simulate("suffix", tokens, n_max=16, prompt_len=p, cost_table=linear)
    assert r.oracle_speedup == pytest.approx(1.0)
    assert r.step_oracle_speedup == pytest.approx(1.0)
    assert r.policy_speedup <= 1.0 + 1e-9
    assert r.fixed_speedup < 1.0


def test_priced_replays_use_fresh_drafters():
    tokens, p = copy_stream(3)
    made = []

    def factory():
        made.append(spec.make_drafter("suffix"))
        return made[-1]

    a = spec.simulate(factory, tokens, n_max=16, prompt_len=p, cost_table=TABLE)
    b = spec.simulate("suffix", tokens, n_max=16, prompt_len=p, cost_table=TABLE)
    assert len(made) == 3                   # the replay, the planner's and the oracle's
    assert a.as_dict()["oracle_speedup"] == b.oracle_speedup
    assert a.policy_speedup == b.policy_speedup


def test_without_a_table_the_speedups_are_nan():
    tokens, p = copy_stream(4)
    r = spec.simulate(spec.SuffixTree(), tokens, n_max=8, prompt_len=p)
    assert np.isnan(r.oracle_speedup) and np.isnan(r.policy_speedup)
    assert np.isnan(r.step_oracle_speedup)


def test_bad_cost_tables_and_drafters_are_named():
    tokens, p = copy_stream(5)
    with pytest.raises(TypeError, match="fresh drafter"):
        spec.simulate(spec.SuffixTree(), tokens, n_max=8, prompt_len=p, cost_table=TABLE)
    with pytest.raises(ValueError, match="every batch of 1 .. n_max \\+ 1"):
        spec.simulate("suffix", tokens, n_max=8, prompt_len=p, cost_table={1: 0.1, 2: 0.2})
    with pytest.raises(ValueError, match="missing or bad"):
        spec.simulate("suffix", tokens, n_max=2, prompt_len=p, cost_table=[0, 1.0, -1.0, 2.0])
    with pytest.raises(TypeError, match="cost_table"):
        spec.simulate("suffix", tokens, n_max=2, prompt_len=p, cost_table=3.5)
    with pytest.raises(TypeError, match="not a Drafter"):
        spec.simulate(lambda: "suffix", tokens, n_max=2, prompt_len=p, cost_table=TABLE)
    with pytest.raises(TypeError, match="Drafter"):
        spec.simulate("suffix", tokens, n_max=2, prompt_len=p)


def test_the_planner_grows_drafts_along_a_copy_and_stays_plain_without_one():
    # 300 random tokens, then an exact copy of them: from a cold start the planner checks the
    # drafts it does not verify against what the target emits, trusts the growing run, and
    # verifies long drafts; on a stream with nothing to copy it stays (nearly) plain
    rng = np.random.default_rng(7)
    base = rng.integers(0, 1000, 300).astype(np.int32)
    copy = np.concatenate([base, base])
    r = spec.simulate("suffix", copy, n_max=64, prompt_len=300, cost_table=TABLE)
    assert r.policy_mean_accept_len >= 8
    assert r.policy_speedup >= 0.85 * r.oracle_speedup
    noise = rng.integers(0, 1000, 600).astype(np.int32)
    r = spec.simulate("suffix", noise, n_max=64, prompt_len=300, cost_table=TABLE)
    assert r.policy_speedup >= 0.97


def _step_oracle_by_definition(name, tokens, p, n_max, table):
    """The step oracle read straight from its definition, in Python: draft at every position
    (as the oracle does), then walk the stream verifying at each step the prefix with the best
    tokens per second for that step alone, fewest rows on ties."""
    d = spec.make_drafter(name)
    d.begin(tokens[:p])
    drafts, accepted = [], []
    for i in range(p, len(tokens) - 1):
        draft = np.asarray(d.draft(tokens[:i], int(tokens[i]), min(n_max, len(tokens) - 1 - i)))
        a = 0
        while a < draft.size and draft[a] == tokens[i + 1 + a]:
            a += 1
        d.accept(a)
        drafts.append(draft.size)
        accepted.append(a)
    j, seconds = 0, 0.0
    while j < len(drafts):
        a = accepted[j]
        k = max(range(drafts[j] + 1), key=lambda k: ((min(k, a) + 1) / table[k + 1], -k))
        seconds += table[k + 1]
        j += min(k, a) + 1
    return (len(tokens) - 1 - p) * table[1] / seconds


@pytest.mark.parametrize("name", ["ngram-simple", "suffix"])
def test_the_step_oracle_follows_its_definition(name):
    for seed in range(3):
        tokens, p = copy_stream(seed)
        r = spec.simulate(name, tokens, n_max=32, prompt_len=p, cost_table=TABLE)
        expected = _step_oracle_by_definition(name, tokens, p, 32, TABLE)
        assert r.step_oracle_speedup == pytest.approx(expected, rel=1e-9), (seed, r)
        assert r.step_oracle_speedup > 1.0
