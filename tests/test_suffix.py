"""SuffixTree drafter: compared with a naive reference of the same speculation rule.

The reference stores plain token lists and counts occurrences explicitly; it knows nothing of
trees, compression, active nodes or eviction bookkeeping.
"""
import math
from collections import Counter, deque
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spec.drafters._suffix import SuffixTree


# -- reference ---------------------------------------------------------------------------------------

def substring_table(seqs, depth):
    """{w: (occurrences of w, Counter of the token after each occurrence)} for 1 <= len(w) <= depth."""
    occ = Counter()
    nxt = {}
    for s in seqs:
        s = tuple(s)
        for i in range(len(s)):
            for k in range(1, min(depth, len(s) - i) + 1):
                w = s[i:i + k]
                occ[w] += 1
                if k < depth and i + k < len(s):
                    nxt.setdefault(w, Counter())[s[i + k]] += 1
    return occ, nxt


def threshold(min_prob):
    """The documented rule ``path probability >= min_token_prob`` in exact rationals: a value
    that is the double nearest a fraction with a denominator below 2**31 stands for it (0.1 is
    1/10); any other is the real number it is."""
    frac = Fraction(min_prob).limit_denominator(2**31 - 1)
    return frac if float(frac) == min_prob else Fraction(min_prob)


def ref_tree_draft(seqs, pattern, n_max, depth, factor, offset, min_prob):
    """Best (draft, score) over every match length, ties to the longer match."""
    occ, nxt = substring_table(seqs, depth)
    best, best_score = [], 0.0
    for k in range(1, len(pattern) + 1):
        w = tuple(pattern[-k:])
        if occ[w] == 0:
            break
        cap = min(n_max, max(0, math.floor(k * factor + offset + 1e-6)))
        draft, score, prob, cur = [], 0.0, Fraction(1), w
        while len(draft) < cap and len(cur) < depth:
            cont = nxt.get(cur)
            if not cont:
                break
            tok = min(cont, key=lambda t: (-cont[t], t))
            prob *= Fraction(cont[tok], occ[cur])
            if prob < threshold(min_prob):
                break
            draft.append(tok)
            score += float(prob)
            cur = cur + (tok,)
        if draft and score >= best_score:
            best, best_score = draft, score
    return best, best_score


class Reference:
    """The same drafter over plain lists: per-sequence histories and a FIFO of finished outputs."""

    def __init__(self, max_depth=24, max_spec_factor=1.0, max_spec_offset=0.0, min_token_prob=0.1,
                 max_cached_requests=10000):
        self.depth = max_depth
        self.factor = max_spec_factor
        self.offset = max_spec_offset
        self.min_prob = min_token_prob
        self.max_cached = max_cached_requests
        self.cached = deque()

    def draft(self, history, id_last, n_max):
        pattern = (list(history) + [id_last])[-self.depth:]
        args = (pattern, n_max, self.depth, self.factor, self.offset, self.min_prob)
        local, local_score = ref_tree_draft([list(history)], *args)
        glob, glob_score = ref_tree_draft(list(self.cached), *args)
        return glob if glob_score > local_score else local

    def end(self, output):
        if self.max_cached == 0 or len(output) == 0:
            return
        self.cached.append(list(output))
        while self.max_cached > 0 and len(self.cached) > self.max_cached:
            self.cached.popleft()


def occurs_in(needle, seqs):
    needle = list(needle)
    k = len(needle)
    return any(list(s[i:i + k]) == needle for s in seqs for i in range(len(s) - k + 1))


def check_tree_structure(drafter, seqs, depth, seq_id=None):
    """Every node = a substring with its exact count, top child and children; nothing redundant."""
    rows = drafter._dump(seq_id)
    if not any(len(s) for s in seqs):
        assert all(count == 0 for _, count, _, _ in rows)
        return
    occ, nxt = substring_table(seqs, depth)
    ends = {tuple(s[i:i + depth]) for s in seqs for i in range(len(s))}
    expected = {w for w in occ if w in ends or len(nxt.get(w, ())) >= 2}
    got = {w for w, _, _, _ in rows if w}
    assert got == expected
    for w, count, top, n_kids in rows:
        if not w:
            assert count == sum(len(s) for s in seqs)
            cont = Counter(x for s in seqs for x in s)
        else:
            assert count == occ[w], w
            cont = nxt.get(w, Counter())
        assert n_kids == len(cont)
        assert top == (min(cont, key=lambda t: (-cont[t], t)) if cont else -1)


# -- strategies --------------------------------------------------------------------------------------

params = st.fixed_dictionaries({
    "max_depth": st.integers(1, 10),
    "max_spec_factor": st.sampled_from([0.0, 0.5, 1.0, 1.5, 3.0]),
    "max_spec_offset": st.sampled_from([-1.0, 0.0, 0.5, 2.0]),
    # decimal thresholds (ratios equal to them are common), and ones that stand for no small
    # fraction: the nearest double above 1/10, 1/3 as rounded, an arbitrary value, a tiny one
    "min_token_prob": st.sampled_from([0.0, 0.1, 0.3, 0.5, 1.0, 0.2, 0.25,
                                       float(np.nextafter(0.1, 1.0)), 1 / 3, 0.123456789,
                                       1e-12]),
})


@st.composite
def streams(draw, max_len=120):
    """Small-alphabet streams: random, or a repeated motif with mutations."""
    alphabet = draw(st.integers(1, 5))
    if draw(st.booleans()):
        return draw(st.lists(st.integers(0, alphabet - 1), max_size=max_len))
    motif = draw(st.lists(st.integers(0, alphabet + 2), min_size=1, max_size=8))
    n = draw(st.integers(0, max_len))
    out = [motif[i % len(motif)] for i in range(n)]
    for i in draw(st.lists(st.integers(0, max(n - 1, 0)), max_size=n // 8 + 1)):
        if i < n:
            out[i] = draw(st.integers(0, alphabet + 2))
    return out


@st.composite
def generations(draw, max_len=120):
    """(stream, prompt length, steps): history = stream[:p], id_last = stream[p] at each step p."""
    stream = draw(streams(max_len))
    if not stream:
        return stream, 0, []
    n_prompt = draw(st.integers(0, len(stream) - 1))
    steps, p = [], n_prompt
    while p < len(stream):
        steps.append(p)
        p += draw(st.integers(1, 4))
    return stream, n_prompt, steps


SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# -- path drafts against the reference ---------------------------------------------------------------

@SETTINGS
@given(params, generations(), st.integers(0, 12))
def test_matches_reference_single_sequence(kw, gen, n_max):
    stream, n_prompt, steps = gen
    d = SuffixTree(**kw)
    ref = Reference(**kw)
    d.begin(stream[:n_prompt])
    for p in steps:
        hist = stream[:p]
        got = d.draft(hist, stream[p], n_max).tolist()
        assert got == ref.draft(hist, stream[p], n_max), (p, hist, stream[p])
        if got:
            assert occurs_in([stream[p]] + got, [hist])
    # draft(n_max=0) returns before reaching the tree, so it has seen only the prompt then.
    seen = stream[:steps[-1]] if steps and n_max > 0 else stream[:n_prompt]
    check_tree_structure(d, [seen], kw["max_depth"], 0)


@SETTINGS
@given(params, st.lists(generations(60), min_size=1, max_size=6), st.integers(-1, 3),
       st.integers(1, 12))
def test_matches_reference_with_global_tree(kw, gens, max_cached, n_max):
    d = SuffixTree(max_cached_requests=max_cached, **kw)
    ref = Reference(max_cached_requests=max_cached, **kw)
    for stream, n_prompt, steps in gens:
        d.begin(stream[:n_prompt])
        for p in steps:
            hist = stream[:p]
            got = d.draft(hist, stream[p], n_max).tolist()
            assert got == ref.draft(hist, stream[p], n_max)
            if got:
                assert occurs_in([stream[p]] + got, [hist, *ref.cached])
        d.end(stream[n_prompt:])
        ref.end(stream[n_prompt:])
        assert d.n_cached == len(ref.cached)
        check_tree_structure(d, list(ref.cached), kw["max_depth"])


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.integers(1, 3), st.data())
def test_eviction_many_outputs(depth, max_cached, data):
    """Long FIFO runs, including the global arena dropping its dead prefix (> 4096 tokens)."""
    d = SuffixTree(max_depth=depth, max_cached_requests=max_cached)
    ref = Reference(max_depth=depth, max_cached_requests=max_cached)
    for _ in range(data.draw(st.integers(1, 6))):
        n = data.draw(st.sampled_from([5, 50, 1500]))
        alphabet = data.draw(st.integers(1, 4))
        out = data.draw(st.lists(st.integers(0, alphabet - 1), min_size=n, max_size=n))
        d.begin([])
        d.end(out)
        ref.end(out)
        check_tree_structure(d, list(ref.cached), depth)
        probe = data.draw(st.lists(st.integers(0, 3), min_size=1, max_size=8))
        d.begin([])
        assert d.draft(probe[:-1], probe[-1], 8).tolist() == ref.draft(probe[:-1], probe[-1], 8)
        d.end()


def test_default_parameters_repetitive_text():
    rng = np.random.default_rng(0)
    words = [rng.integers(0, 50, size=rng.integers(1, 6)).tolist() for _ in range(30)]
    stream = [t for _ in range(40) for t in words[rng.integers(0, 30)]]
    d, ref = SuffixTree(), Reference()
    d.begin(stream[:20])
    n_drafted = 0
    for p in range(20, len(stream), 3):
        got = d.draft(stream[:p], stream[p], 16).tolist()
        assert got == ref.draft(stream[:p], stream[p], 16)
        n_drafted += len(got)
    assert n_drafted > 0


def test_known_answer():
    # history + id_last = 1 2 3 4 5 1 2 3 4 5 1 2 | 3, max_depth 8: the match "5 1 2 3" (k = 4)
    # drafts 4 5 1 2 (4 tokens, score 4) and beats k = 3 (cap 3) and k = 5 (room for 3).
    d = SuffixTree(max_depth=8)
    h = [1, 2, 3, 4, 5, 1, 2, 3, 4, 5, 1, 2]
    d.begin(h)
    assert d.draft(h, 3, 10).tolist() == [4, 5, 1, 2]
    assert d.draft(h, 3, 2).tolist() == [4, 5]
    # Global tree: "7 8" occurs twice in 7 8 9 7 8 9; after "8 9" only one of two continues.
    d.end([7, 8, 9, 7, 8, 9])
    d.begin([1])
    assert d.draft([1, 7], 8, 10).tolist() == [9, 7]
    tokens, parents, probs = d.draft_tree([1, 7], 8, 10)
    assert tokens.tolist() == [9, 7] and parents.tolist() == [-1, 0]
    assert probs.tolist() == [1.0, 0.5]
    d.accept(1)                                # bookkeeping only: the history carries it
    assert d.draft([1, 7], 8, 10, seq_id=0).tolist() == [9, 7]
    # Own tree: "7" -> 8 (k = 1, score 1); global: "9 7" -> 8 9 (score 2) wins.
    assert d.draft([1, 7, 8, 9], 7, 10).tolist() == [8, 9]


# -- edge cases --------------------------------------------------------------------------------------

def test_empty_and_one_token_histories():
    d = SuffixTree()
    d.begin([])
    assert d.draft([], 5, 8).tolist() == []
    assert d.draft([5], 5, 8).tolist() == []    # the one "5" is followed by nothing yet
    assert d.draft([5, 5], 5, 8).tolist() == [5]
    d.begin([])
    assert d.draft([7], 3, 8).tolist() == []
    d.end([])
    assert d.n_cached == 0


def test_n_max_zero_and_one():
    h = [1, 2, 3] * 10
    d = SuffixTree()
    d.begin(h)
    assert d.draft(h, 1, 0).tolist() == []
    assert d.draft(h, 1, 1).tolist() == [2]
    t, p, q = d.draft_tree(h, 1, 0)
    assert len(t) == len(p) == len(q) == 0
    assert d.draft_tree(h, 1, 1)[0].tolist() == [2]


def test_huge_periodic_history():
    period = 37
    h = np.arange(100_000, dtype=np.int32) % period
    d = SuffixTree()
    d.begin(h[:10])
    last = int(h[-1] + 1) % period
    got = d.draft(h, last, 16)
    # Every substring continues one way (prob 1); a match of length k drafts min(k, 24 - k).
    assert got.tolist() == [(last + 1 + i) % period for i in range(12)]
    stats = d.tree_stats(0)
    assert stats["tokens"] == len(h)
    assert stats["nodes"] < 2 * period * 24       # periodic: the tree stays small


def test_huge_random_history_drafts_continue_earlier_occurrences():
    rng = np.random.default_rng(1)
    h = rng.integers(0, 8, size=100_000).astype(np.int32)
    d = SuffixTree()
    d.begin(h[:1])
    for end in (50_000, 100_000 - 1):
        got = d.draft(h[:end], int(h[end]), 16).tolist()
        assert got, "an 8-token alphabet repeats every short pattern"
        assert all(0 <= t < 8 for t in got)
        needle = np.array([h[end]] + got, dtype=np.int32)
        windows = np.lib.stride_tricks.sliding_window_view(h[:end], len(needle))
        assert (windows == needle).all(axis=1).any()
    assert d.tree_stats(0)["tokens"] == 100_000 - 1


def test_interleaved_sequences_equal_each_alone():
    rng = np.random.default_rng(2)
    streams = [np.tile(rng.integers(0, 6, size=rng.integers(3, 12)), 50)[:150] for _ in range(5)]
    for s in streams:
        s[rng.integers(0, 150, size=10)] = rng.integers(0, 6, size=10)
    together = SuffixTree(max_depth=10)
    alone = [SuffixTree(max_depth=10) for _ in streams]
    seq_ids = [0, 3, 7, 1, 12]
    for i, s in enumerate(streams):
        together.begin(s[:5], seq_id=seq_ids[i])
        alone[i].begin(s[:5])
    pos = [5] * len(streams)
    while any(p < 150 for p in pos):
        i = int(rng.integers(0, len(streams)))
        if pos[i] >= 150:
            continue
        s, p = streams[i], pos[i]
        a = together.draft(s[:p], int(s[p]), 8, seq_id=seq_ids[i]).tolist()
        b = alone[i].draft(s[:p], int(s[p]), 8).tolist()
        assert a == b
        assert together.draft_tree(s[:p], int(s[p]), 8, seq_id=seq_ids[i])[0].tolist() == \
            alone[i].draft_tree(s[:p], int(s[p]), 8)[0].tolist()
        pos[i] += int(rng.integers(1, 5))


def test_history_that_diverges_rebuilds():
    d, ref = SuffixTree(max_depth=6), Reference(max_depth=6)
    a = [1, 2, 3, 1, 2, 3, 1, 2]
    b = [4, 5, 6, 4, 5]
    d.begin(a)
    assert d.draft(a, 3, 8).tolist() == ref.draft(a, 3, 8)
    assert d.draft(b, 6, 8).tolist() == ref.draft(b, 6, 8)          # shorter: rebuilt
    c = [9, 5, 6, 4, 5, 6, 4]
    assert d.draft(c, 5, 8).tolist() == ref.draft(c, 5, 8)          # same length +, new start
    check_tree_structure(d, [c], 6, 0)


def test_reset_and_memory():
    d = SuffixTree(max_cached_requests=1)
    assert d.memory_bytes() == 0
    d.begin(list(range(100)) * 3)
    d.draft(list(range(100)) * 3, 0, 8)
    d.end(list(range(50)))
    d.begin([1, 2, 3], seq_id=2)
    assert d.memory_bytes() > 0 and d.n_cached == 1
    d.begin([])
    d.end(list(range(60)))                     # evicts the first output
    assert d.n_cached == 1
    d.reset()
    assert d.memory_bytes() == 0 and d.n_cached == 0
    with pytest.raises(ValueError, match="unknown sequence"):
        d.draft([1, 2], 3, 4, seq_id=2)
    d.begin([5, 6, 5])
    assert d.draft([5, 6, 5], 6, 4).tolist() == [5]


def test_end_frees_the_sequence_tree_and_disabled_cache():
    d = SuffixTree(max_cached_requests=0)
    d.begin(list(range(1000)))
    before = d.memory_bytes()
    d.end(list(range(500)))
    assert d.memory_bytes() < before and d.n_cached == 0
    with pytest.raises(ValueError, match="unknown sequence"):
        d.draft([1], 2, 4)


# -- draft_tree --------------------------------------------------------------------------------------

@SETTINGS
@given(params, st.lists(generations(60), min_size=1, max_size=4), st.integers(0, 16))
def test_draft_tree_structure(kw, gens, n_max):
    d = SuffixTree(**kw)
    cached = []
    for stream, n_prompt, steps in gens:
        d.begin(stream[:n_prompt])
        for p in steps:
            hist, last = stream[:p], stream[p]
            path = d.draft(hist, last, n_max).tolist()
            tokens, parents, probs = d.draft_tree(hist, last, n_max)
            assert tokens.dtype == np.int32 and parents.dtype == np.int32
            assert probs.dtype == np.float32
            n = len(tokens)
            assert len(parents) == len(probs) == n <= n_max
            assert tokens[:len(path)].tolist() == path
            assert parents[:len(path)].tolist() == list(range(-1, len(path) - 1))
            assert all(-1 <= parents[i] < i for i in range(n))
            assert ((probs > 0) & (probs <= 1)).all()
            assert (probs >= np.float32(kw["min_token_prob"])).all()
            children = {}
            for i in range(n):
                if parents[i] >= 0:
                    assert probs[i] <= probs[parents[i]]
                key = (int(parents[i]), int(tokens[i]))
                assert key not in children, "two siblings with the same token"
                children[key] = i
                # Each root-to-node path continues an occurrence of id_last.
                branch, j = [], i
                while j >= 0:
                    branch.append(int(tokens[j]))
                    j = parents[j]
                assert occurs_in([last] + branch[::-1], [hist, *cached])
        d.end(stream[n_prompt:])
        if stream[n_prompt:]:
            cached.append(stream[n_prompt:])


def test_draft_tree_branches():
    # After "a": b (3 times), c (2 times), d (once): path a->b..., branches c and d.
    h = [0, 1, 5, 0, 1, 5, 0, 2, 6, 0, 1, 5, 0, 2, 6, 0, 3, 7]
    d = SuffixTree(max_depth=4, min_token_prob=0.1)
    d.begin(h)
    tokens, parents, probs = d.draft_tree(h, 0, 10)
    path = d.draft(h, 0, 10).tolist()
    assert path == tokens[:len(path)].tolist()
    roots = sorted(int(t) for t, p in zip(tokens, parents) if p == -1)
    assert roots == [1, 2, 3]
    assert probs[0] == pytest.approx(3 / 6)


# -- the probability threshold at equality -------------------------------------------------------

def threshold_stream(n_zero, n_one):
    """A history where "0" occurs ``n_zero`` times, followed by 1 in ``n_one`` of them, and each
    "0 1" by a different token (200, 201, ...): the path 0 -> 1 -> 200 has probability
    (n_one / n_zero) * (1 / n_one) = 1 / n_zero, then continues with a separator (1000)."""
    h = []
    for i in range(n_zero):
        h += [0, 1, 200 + i] if i < n_one else [0, 2 + i]
        h.append(1000 + i)
    return h


# (n_one, n_zero): the product of the two rounded quotients is 0.0999..., below 1 / n_zero.
EXACT_CASES = [(3, 10), (6, 10), (7, 10), (9, 10), (3, 5), (7, 13), (3, 20), (19, 20), (21, 23)]


@pytest.mark.parametrize("n_one, n_zero", EXACT_CASES)
def test_path_probability_exactly_at_threshold_drafts(n_one, n_zero):
    assert (n_one / n_zero) * (1 / n_one) < 1 / n_zero       # the case the quotients get wrong
    h = threshold_stream(n_zero, n_one)
    d = SuffixTree(max_spec_factor=0.0, max_spec_offset=3.0, min_token_prob=1 / n_zero)
    d.begin(h)
    assert d.draft(h, 0, 8).tolist() == [1, 200, 1000]
    tokens, parents, probs = d.draft_tree(h, 0, 100)
    assert tokens[:3].tolist() == [1, 200, 1000] and len(tokens) < 100
    # The other continuations of "0 1" are exactly at the threshold too: all follow token 1.
    assert sorted(t for t, p in zip(tokens.tolist(), parents.tolist()) if p == 0) == \
        list(range(200, 200 + n_one))
    assert (probs[1:] == np.float32(1 / n_zero)).all()
    assert Reference(max_spec_factor=0.0, max_spec_offset=3.0, min_token_prob=1 / n_zero).draft(
        h, 0, 8) == [1, 200, 1000]


@pytest.mark.parametrize("n_one, n_zero", EXACT_CASES)
def test_path_probability_just_below_threshold_stops(n_one, n_zero):
    kw = {"max_spec_factor": 0.0, "max_spec_offset": 3.0}
    # One more occurrence of "0": the path is 1 / (n_zero + 1) < 1 / n_zero.
    h = threshold_stream(n_zero + 1, n_one)
    d = SuffixTree(min_token_prob=1 / n_zero, **kw)
    d.begin(h)
    assert d.draft(h, 0, 8).tolist() == [1]
    assert d.draft_tree(h, 0, 16)[0].tolist() == [1]
    # The same path against a threshold one double above 1 / n_zero (a real number above it).
    h = threshold_stream(n_zero, n_one)
    d = SuffixTree(min_token_prob=float(np.nextafter(1 / n_zero, 1.0)), **kw)
    d.begin(h)
    assert d.draft(h, 0, 8).tolist() == [1]
    # ... and one double below it: drafts.
    d = SuffixTree(min_token_prob=float(np.nextafter(1 / n_zero, 0.0)), **kw)
    d.begin(h)
    assert d.draft(h, 0, 8).tolist() == [1, 200, 1000]


def test_threshold_extremes():
    h = threshold_stream(10, 3)
    for p, want in [(0.0, [1, 200, 1000]), (1.0, []), (0.3, [1, 200, 1000][:1]),
                    (float(np.nextafter(0.3, 1.0)), [])]:
        d = SuffixTree(max_spec_factor=0.0, max_spec_offset=3.0, min_token_prob=p)
        d.begin(h)
        assert d.draft(h, 0, 8).tolist() == want, p


# -- bad input ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs", [
    {"max_depth": 0}, {"max_depth": -3}, {"max_depth": 70_000},
    {"max_spec_factor": -0.5}, {"max_spec_factor": float("nan")}, {"max_spec_factor": float("inf")},
    {"max_spec_offset": float("nan")}, {"max_spec_offset": float("-inf")},
    {"min_token_prob": -0.1}, {"min_token_prob": 1.5}, {"min_token_prob": float("nan")},
    {"max_cached_requests": -2}, {"max_cached_requests": 2**40}, {"max_depth": 10**30},
])
def test_bad_constructor_arguments(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        SuffixTree(**kwargs)


@pytest.mark.parametrize("kwargs", [
    {"max_depth": 2.5}, {"max_depth": True}, {"max_depth": "8"}, {"max_spec_factor": "1"},
    {"max_spec_offset": None}, {"min_token_prob": False}, {"max_cached_requests": 1.0},
])
def test_wrong_constructor_types(kwargs):
    with pytest.raises(TypeError, match=next(iter(kwargs))):
        SuffixTree(**kwargs)


def test_numpy_scalars_accepted():
    d = SuffixTree(max_depth=np.int64(6), max_spec_factor=np.float32(1.5), min_token_prob=0,
                   max_cached_requests=np.int32(3))
    assert (d.max_depth, d.max_spec_factor, d.min_token_prob, d.max_cached_requests) == (6, 1.5, 0.0, 3)
    assert "max_depth=6" in repr(d)


def test_bad_call_arguments():
    d = SuffixTree()
    with pytest.raises(ValueError, match="unknown sequence"):
        d.draft([1, 2], 3, 4)
    with pytest.raises(ValueError, match="unknown sequence"):
        d.draft_tree([1, 2], 3, 4)
    d.begin([1, 2, 3])
    for method in (d.draft, d.draft_tree):
        with pytest.raises(TypeError, match="history"):
            method(np.array([1.0, 2.0]), 3, 4)
        with pytest.raises(ValueError, match="n_max"):
            method([1, 2], 3, -1)
        with pytest.raises(ValueError, match="unknown sequence"):
            method([1, 2], 3, 4, seq_id=5)
        with pytest.raises(ValueError, match="seq_id"):
            method([1, 2], 3, 4, seq_id=-1)
        with pytest.raises(ValueError, match="id_last"):
            method([1, 2], -3, 4)
        with pytest.raises(ValueError, match="1-D"):
            method(np.zeros((2, 2), dtype=np.int32), 3, 4)
        with pytest.raises(ValueError, match="outside"):
            method([1, -2], 3, 4)
    with pytest.raises(TypeError, match="output"):
        d.end(np.array([0.5]))
    with pytest.raises(ValueError, match="unknown sequence"):
        d.end([1], seq_id=4)
    with pytest.raises(ValueError, match="unknown sequence"):
        d.tree_stats(4)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 5), st.integers(1, 3), st.data())
def test_eviction_wide_alphabet(depth, max_cached, data):
    """Many children per node: hashed children blocks grow, lose entries and get re-keyed."""
    d = SuffixTree(max_depth=depth, max_cached_requests=max_cached)
    ref = Reference(max_depth=depth, max_cached_requests=max_cached)
    for _ in range(data.draw(st.integers(2, 8))):
        alphabet = data.draw(st.sampled_from([12, 40]))
        n = data.draw(st.integers(1, 120))
        out = data.draw(st.lists(st.integers(0, alphabet - 1), min_size=n, max_size=n))
        d.begin([])
        d.end(out)
        ref.end(out)
        check_tree_structure(d, list(ref.cached), depth)
        for _ in range(3):
            probe = data.draw(st.lists(st.integers(0, alphabet - 1), min_size=1, max_size=6))
            d.begin(probe[:-1])
            assert d.draft(probe[:-1], probe[-1], 6).tolist() == ref.draft(probe[:-1], probe[-1], 6)


@pytest.mark.parametrize("max_cached", [1, 2])
def test_global_arena_compaction(max_cached):
    """Evicted outputs leave a dead arena prefix; past 4096 tokens it is dropped and refs shift."""
    rng = np.random.default_rng(max_cached)
    d = SuffixTree(max_depth=5, max_cached_requests=max_cached)
    ref = Reference(max_depth=5, max_cached_requests=max_cached)
    for i in range(7):
        out = rng.integers(0, 3 + i, size=2000).tolist()
        d.begin([])
        d.end(out)
        ref.end(out)
        check_tree_structure(d, list(ref.cached), 5)
        for _ in range(5):
            probe = rng.integers(0, 3 + i, size=4).tolist()
            d.begin(probe[:-1])
            assert d.draft(probe[:-1], probe[-1], 8).tolist() == ref.draft(probe[:-1], probe[-1], 8)
    assert d.tree_stats(None)["tokens"] == sum(map(len, ref.cached))
