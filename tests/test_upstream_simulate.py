"""LlamaDrafter (llama.cpp's n-gram drafters) and the offline simulator."""
import logging
import math
import time

import numpy as np
import pytest

from spec._loop._simulate import SimResult, simulate
from spec.drafters._upstream import (DEFAULTS, SUPPORTED_TYPES, LlamaDrafter, get_log_verbosity,
                            set_log_verbosity, supported_types)
from spec.drafters._base import Drafter

# Small parameters so that short streams produce drafts (upstream defaults need ~61 tokens).
SMALL = {
    "ngram-simple": dict(size_n=2, size_m=4),
    "ngram-map-k": dict(size_n=2, size_m=4),
    "ngram-map-k4v": dict(size_n=2, size_m=4, min_hits=1),
    "ngram-mod": dict(n_match=3, n_max=6, n_min=1),
    "ngram-cache": dict(n_draft=8),
}


def periodic(period, repeats, seed=0, vocab=1000):
    """A stream repeating ``period`` distinct tokens: every n-gram predicts its true continuation."""
    rng = np.random.default_rng(seed)
    base = rng.choice(vocab, size=period, replace=False)
    return np.tile(base, repeats).astype(np.int32)


def ref_ngram_simple(hist, id_last, n, m):
    """ngram-simple as described in the notes (independent of the wrapper)."""
    hist = list(hist)
    L = len(hist)
    if L <= n + m + 1:
        return []
    pattern = hist[L - n + 1:] + [id_last]
    for j in range(L - n - 1, 0, -1):
        if hist[j:j + n] == pattern:
            count = min(m, L - (j + n))
            return hist[j + n:j + n + count] if count >= n else []
    return []


def replay(drafter, tokens, n_max, prompt_len=0, seq_id=0):
    """simulate()'s loop through the Python methods: (drafts, accepted counts)."""
    tokens = [int(t) for t in tokens]
    p = min(max(prompt_len, 1), len(tokens))
    drafter.begin(tokens[:p], seq_id=seq_id)
    drafts, accepted = [], []
    i = p
    while i < len(tokens) - 1:
        cap = min(n_max, len(tokens) - 1 - i)
        d = drafter.draft(tokens[:i], tokens[i], cap, seq_id=seq_id) if cap else np.zeros(0, np.int32)
        k = 0
        while k < len(d) and d[k] == tokens[i + 1 + k]:
            k += 1
        drafter.accept(k, seq_id=seq_id)
        drafts.append(d)
        accepted.append(k)
        i += k + 1
    drafter.end(tokens[p:], seq_id=seq_id)
    return drafts, accepted


# -- LlamaDrafter: construction and parameters ----------------------------------------------------

def test_supported_types_and_defaults():
    assert supported_types() == SUPPORTED_TYPES
    assert set(DEFAULTS) == set(SUPPORTED_TYPES)
    # Read from upstream's default-constructed params struct (values documented in the notes).
    assert DEFAULTS["ngram-simple"] == {"size_n": 12, "size_m": 48, "min_hits": 1}
    assert DEFAULTS["ngram-mod"] == {"n_match": 24, "n_max": 64, "n_min": 48}
    assert DEFAULTS["ngram-cache"]["n_draft"] == 8


@pytest.mark.parametrize("type_name", SUPPORTED_TYPES)
def test_constructs_every_type(type_name):
    d = LlamaDrafter(type_name)
    assert isinstance(d, Drafter)
    assert d.type_name == type_name
    assert d.params == DEFAULTS[type_name]
    assert d.capacity == 1 and d.n_seq == 1
    assert repr(d).startswith(f"LlamaDrafter({type_name!r}")
    d2 = LlamaDrafter(type_name, **SMALL[type_name])
    assert d2.params == dict(DEFAULTS[type_name], **SMALL[type_name])
    d2.params["n_seq"] = 5               # a copy
    assert "n_seq" not in d2.params


@pytest.mark.parametrize("name", ["ngram", "ngram_simple", "NGRAM-SIMPLE", "none", "draft-simple",
                                  "draft-mtp", "draft-eagle3", ""])
def test_unknown_or_model_types_rejected(name):
    with pytest.raises(ValueError, match="unsupported speculative type"):
        LlamaDrafter(name)


def test_type_name_must_be_str():
    with pytest.raises(TypeError):
        LlamaDrafter(3)


@pytest.mark.parametrize("type_name, params", [
    ("ngram-simple", dict(size_n=0)),
    ("ngram-simple", dict(size_m=0)),
    ("ngram-map-k", dict(size_n=70000)),
    ("ngram-map-k", dict(size_m=40000)),
    ("ngram-map-k4v", dict(min_hits=-1)),
    ("ngram-mod", dict(n_match=0)),
    ("ngram-mod", dict(n_max=0)),
    ("ngram-mod", dict(n_max=8, n_min=9)),
    ("ngram-mod", dict(n_min=-1)),
    ("ngram-cache", dict(n_draft=0)),
    ("ngram-cache", dict(n_draft=9)),
    ("ngram-simple", dict(n_match=4)),          # a parameter of another type
    ("ngram-mod", dict(size_n=4)),
    ("ngram-cache", dict(bogus=1)),
    ("ngram-simple", dict(n_seq=0)),
    ("ngram-simple", dict(n_seq=257)),
])
def test_bad_params_raise_value_error(type_name, params):
    with pytest.raises(ValueError, match=list(params)[-1]):
        LlamaDrafter(type_name, **params)


@pytest.mark.parametrize("value", [1.5, "3", True, None])
def test_non_integer_params_raise_type_error(value):
    with pytest.raises(TypeError, match="size_n"):
        LlamaDrafter("ngram-simple", size_n=value)


def test_numpy_integer_params_accepted():
    d = LlamaDrafter("ngram-simple", size_n=np.int64(3), size_m=np.uint16(5))
    assert d.params["size_n"] == 3 and d.params["size_m"] == 5


# -- LlamaDrafter: drafts --------------------------------------------------------------------------

def test_ngram_simple_continues_repetition():
    toks = periodic(7, 6)
    continuation = periodic(7, 7)
    d = LlamaDrafter("ngram-simple", size_n=2, size_m=4)
    d.begin(toks[:3])
    seen_nonempty = 0
    for i in range(3, len(toks)):
        draft = d.draft(toks[:i], toks[i], 8)
        assert draft.dtype == np.int32
        if len(draft):
            seen_nonempty += 1
            np.testing.assert_array_equal(draft, continuation[i + 1:i + 1 + len(draft)])
            assert len(draft) <= 4
        d.accept(0)
    assert seen_nonempty > len(toks) // 2


@pytest.mark.parametrize("n, m", [(1, 1), (2, 3), (3, 2), (2, 6), (3, 3)])
def test_ngram_simple_matches_reference(n, m):
    rng = np.random.default_rng(n * 10 + m)
    toks = rng.integers(0, 4, size=120).astype(np.int32)   # small vocabulary: many matches
    d = LlamaDrafter("ngram-simple", size_n=n, size_m=m)
    d.begin(toks[:1])
    n_nonempty = 0
    for i in range(1, len(toks)):
        for n_max in (1, 3, 64):
            want = ref_ngram_simple(toks[:i], int(toks[i]), n, m)[:n_max]
            got = d.draft(toks[:i], toks[i], n_max)
            assert list(got) == want, (i, n_max)
            n_nonempty += bool(want)
    # upstream never drafts fewer than size_n tokens, so size_m < size_n disables it
    assert n_nonempty > 50 if m >= n else n_nonempty == 0


@pytest.mark.parametrize("type_name", SUPPORTED_TYPES)
def test_every_type_drafts_the_true_continuation_of_a_periodic_stream(type_name):
    toks = periodic(11, 30, seed=3)
    d = LlamaDrafter(type_name, **SMALL[type_name])
    r = simulate(d, toks, n_max=8, prompt_len=4, record=True)
    assert r.n_drafted > 0
    # distinct tokens within a period: every n-gram has exactly one continuation
    assert r.n_accepted == r.n_drafted
    assert r.accept_rate == 1.0


def test_n_max_truncates_drafts():
    toks = periodic(9, 8)
    long_d = LlamaDrafter("ngram-simple", size_n=2, size_m=6)
    short_d = LlamaDrafter("ngram-simple", size_n=2, size_m=6)
    for d in (long_d, short_d):
        d.begin(toks[:2])
    n_cut = 0
    for i in range(2, len(toks) - 1):
        full = long_d.draft(toks[:i], toks[i], 64)
        cut = short_d.draft(toks[:i], toks[i], 2)
        assert len(cut) <= 2
        np.testing.assert_array_equal(cut, full[:2])
        n_cut += len(full) > 2
    assert n_cut > 0


def test_ngram_cache_n_draft_is_a_truncation_of_upstream_8():
    toks = periodic(13, 10, seed=5)
    r8 = simulate(LlamaDrafter("ngram-cache"), toks, n_max=8, prompt_len=30, record=True)
    r3 = simulate(LlamaDrafter("ngram-cache", n_draft=3), toks, n_max=8, prompt_len=30,
                  record=True)
    assert max(len(x) for x in r8.drafts) == 8
    assert max(len(x) for x in r3.drafts) == 3
    # the replays diverge (different steps); compare call by call on the same histories instead
    a, b = LlamaDrafter("ngram-cache"), LlamaDrafter("ngram-cache", n_draft=3)
    for d in (a, b):
        d.begin(toks[:30])
    n_long = 0
    for i in range(30, len(toks) - 1, 3):
        da, db = a.draft(toks[:i], toks[i], 8), b.draft(toks[:i], toks[i], 8)
        np.testing.assert_array_equal(db, da[:3])
        n_long += len(da) > 3
        a.accept(0)
        b.accept(0)
    assert n_long > 0


def test_ngram_cache_learns_only_within_chunks():
    # upstream quirk (see the notes): the context cache is updated from the tokens that arrived
    # since the previous draft only, so one-token steps never teach it anything. The wrapper's
    # first call reaching upstream has 3 tokens of history (see min_safe_len): that first chunk
    # (4 tokens, no repeat in a period of 6) is all it ever learns, so it never drafts past it.
    toks = periodic(6, 10)
    d = LlamaDrafter("ngram-cache")
    d.begin(toks[:1])
    for i in range(1, len(toks) - 1):
        assert len(d.draft(toks[:i], toks[i], 8)) <= 3
        d.accept(0)
    d2 = LlamaDrafter("ngram-cache")
    d2.begin(toks[:1])
    np.testing.assert_array_equal(d2.draft(toks[:30], toks[30], 8), toks[31:39])


def test_ngram_mod_indexes_new_tokens_in_chunks():
    # upstream adds history n-grams to its table only once > 32 new tokens have arrived
    toks = periodic(5, 20)
    d = LlamaDrafter("ngram-mod", n_match=2, n_max=4, n_min=1)
    d.begin(toks[:1])
    assert len(d.draft(toks[:20], toks[20], 4)) == 0
    np.testing.assert_array_equal(d.draft(toks[:40], toks[40], 4), toks[41:45])


# -- LlamaDrafter: guards against upstream assertions ---------------------------------------------

def test_accept_bounded_by_last_draft():
    toks = periodic(6, 5)
    d = LlamaDrafter("ngram-simple", size_n=2, size_m=3)
    d.begin(toks[:2])
    with pytest.raises(ValueError, match="n_accepted=1"):
        d.accept(1)                       # nothing drafted yet: upstream would abort
    draft = d.draft(toks[:20], toks[20], 8)
    assert len(draft) == 3
    with pytest.raises(ValueError, match="exceeds"):
        d.accept(4)
    d.accept(3)
    with pytest.raises(ValueError):
        d.accept(1)                       # one accept per draft
    d.accept(0)


@pytest.mark.parametrize("type_name", ["ngram-map-k", "ngram-map-k4v"])
def test_ngram_map_history_shrink_raises_instead_of_aborting(type_name):
    toks = periodic(7, 6)
    d = LlamaDrafter(type_name, size_n=2, size_m=3)
    d.begin(toks[:10])
    d.draft(toks[:30], toks[30], 4)
    d.accept(0)
    with pytest.raises(ValueError, match="shorter"):
        d.draft(toks[:20], toks[20], 4)
    with pytest.raises(ValueError, match="shorter"):
        d.draft(toks[:8], toks[8], 4)     # shorter than the begin prompt (>= 2n+m tokens)
    d.draft(toks[:5], toks[5], 4)         # below 2n+m upstream does not look: allowed
    d.begin(toks[:15])                    # a new generation may start from a shorter context
    got = d.draft(toks[:20], toks[20], 4)
    np.testing.assert_array_equal(got, toks[21:21 + len(got)])


# -- LlamaDrafter: sequences -----------------------------------------------------------------------

@pytest.mark.parametrize("type_name", ["ngram-simple", "ngram-map-k", "ngram-map-k4v",
                                       "ngram-cache"])
def test_sequences_are_independent(type_name):
    streams = [periodic(5 + s, 12, seed=s) for s in range(4)]
    multi = LlamaDrafter(type_name, n_seq=4, **SMALL[type_name])
    singles = [LlamaDrafter(type_name, **SMALL[type_name]) for _ in streams]
    for s, toks in enumerate(streams):
        multi.begin(toks[:25], seq_id=s)
        singles[s].begin(toks[:25])
    n_nonempty = 0
    for i in range(25, 55):                # interleave the sequences step by step
        for s, toks in enumerate(streams):
            got = multi.draft(toks[:i], toks[i], 5, seq_id=s)
            want = singles[s].draft(toks[:i], toks[i], 5)
            np.testing.assert_array_equal(got, want)
            k = int(np.argmin(np.append(got == toks[i + 1:i + 1 + len(got)], False)))
            multi.accept(k, seq_id=s)
            singles[s].accept(k)
            n_nonempty += len(got) > 0
    assert n_nonempty > 40


def test_ngram_mod_serves_many_sequences():
    streams = [periodic(7, 12, seed=s) for s in range(3)]
    d = LlamaDrafter("ngram-mod", n_seq=3, **SMALL["ngram-mod"])
    for s, toks in enumerate(streams):
        r = simulate(d, toks, n_max=6, prompt_len=2, seq_id=s)
        assert r.n_drafted > 0 and r.n_accepted == r.n_drafted


def test_capacity_grows_until_a_sequence_begins():
    d = LlamaDrafter("ngram-map-k", size_n=2, size_m=3)
    toks = periodic(5, 4)
    d.begin(toks[:4], seq_id=2)           # nothing begun yet: re-created for 3 sequences
    assert d.capacity == 3 and d.n_seq == 3
    d.begin(toks[:4], seq_id=1)
    with pytest.raises(ValueError, match="n_seq=6"):
        d.begin(toks[:4], seq_id=5)
    assert d.capacity == 3
    d.draft(toks[:12], toks[12], 3, seq_id=2)   # still usable
    d.reset()
    assert d.capacity == 3
    d.begin(toks[:4], seq_id=5)           # after reset nothing has begun
    assert d.capacity == 6


def test_sequence_ids_bounded_by_llama_max_seq():
    d = LlamaDrafter("ngram-simple")
    with pytest.raises(ValueError, match="LLAMA_MAX_SEQ"):
        d.begin([1, 2], seq_id=256)
    d.begin([1, 2], seq_id=255)
    assert d.capacity == 256


def test_reset_forgets():
    toks = periodic(7, 8)
    d = LlamaDrafter("ngram-map-k", size_n=2, size_m=3)
    first = simulate(d, toks, n_max=3, record=True)
    d.reset()
    again = simulate(d, toks, n_max=3, record=True)
    assert first.n_calls == again.n_calls
    for a, b in zip(first.drafts, again.drafts):
        np.testing.assert_array_equal(a, b)


def test_draft_requires_begin():
    d = LlamaDrafter("ngram-simple")
    with pytest.raises(ValueError, match="begin"):
        d.draft([1, 2, 3], 4, 3)


# -- ngram-cache lookup files ----------------------------------------------------------------------

def write_cache(path, entries):
    """Write an n-gram cache file: entries = {ngram tuple: {token: count}} (upstream's format)."""
    words = []
    for ngram, counts in entries.items():
        words += list(ngram) + [-1] * (4 - len(ngram)) + [len(counts)]
        for tok, cnt in counts.items():
            words += [tok, cnt]
    np.asarray(words, dtype=np.int32).tofile(path)


@pytest.mark.parametrize("which", ["static_path", "dynamic_path"])
def test_ngram_cache_lookup_file(tmp_path, which):
    path = tmp_path / "cache.bin"
    if which == "static_path":    # static: 2-grams; needs >= 2 samples with a >= 50 % share
        write_cache(path, {(21, 22): {23: 5, 30: 1}, (22, 23): {24: 3}})
    else:                         # dynamic: n-grams ending at id_last, strict thresholds
        write_cache(path, {(22,): {23: 6}, (23,): {24: 6}})
    plain = LlamaDrafter("ngram-cache")
    d = LlamaDrafter("ngram-cache", **{which: path})
    assert d.params[which] == str(path)
    for x in (plain, d):                # >= 3 tokens of history: see the wrapper's min_safe_len
        x.begin([5, 7, 21])
    assert list(plain.draft([5, 7, 21], 22, 8)) == []
    assert list(d.draft([5, 7, 21], 22, 8)) == [23, 24]


def test_ngram_cache_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        LlamaDrafter("ngram-cache", static_path=tmp_path / "missing.bin")
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"\x01\x02\x03")
    with pytest.raises(ValueError, match="multiple of 4"):
        LlamaDrafter("ngram-cache", static_path=bad)
    np.asarray([1, 2, -1, -1, 2, 5, 1], dtype=np.int32).tofile(bad)   # truncated record
    with pytest.raises(ValueError, match="malformed record"):
        LlamaDrafter("ngram-cache", dynamic_path=bad)
    np.asarray([1, 2, -1, -1, 1, 5, 0], dtype=np.int32).tofile(bad)   # count 0
    with pytest.raises(ValueError, match="malformed record at byte 24"):
        LlamaDrafter("ngram-cache", static_path=bad)
    np.asarray([1, 2, -1, -1, 0], dtype=np.int32).tofile(bad)         # ntokens 0
    with pytest.raises(ValueError, match="malformed record at byte 0"):
        LlamaDrafter("ngram-cache", static_path=bad)
    with pytest.raises(ValueError, match="empty"):
        LlamaDrafter("ngram-cache", static_path="")
    with pytest.raises(TypeError):
        LlamaDrafter("ngram-cache", static_path=3)
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")                # an empty cache is a valid file
    assert LlamaDrafter("ngram-cache", static_path=empty).params["static_path"] == str(empty)


# -- logging ---------------------------------------------------------------------------------------

def _exercise_logging_paths():
    LlamaDrafter("ngram-mod", n_match=4)  # upstream warns: n_match < 16
    d = LlamaDrafter("ngram-map-k", size_n=2, size_m=3)
    toks = periodic(7, 6)
    d.begin(toks[:30])
    d.draft(toks[:35], toks[35], 4)
    d.begin(toks[:12])                    # upstream logs an info line when the context shrank


def test_upstream_logs_are_silent_by_default(capfd):
    assert get_log_verbosity() == -1
    _exercise_logging_paths()
    time.sleep(0.2)                       # upstream prints from a worker thread
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_upstream_warnings_reach_python_logging(caplog, capfd):
    with caplog.at_level(logging.WARNING, logger="spec.llama"):
        LlamaDrafter("ngram-mod", n_match=4)
    warnings = [r for r in caplog.records if r.name == "spec.llama"]
    assert any("n_match=4 is too small" in r.getMessage() and r.levelno == logging.WARNING
               for r in warnings), [r.getMessage() for r in warnings]
    out, err = capfd.readouterr()
    assert "n_match" not in out + err            # routed, not printed


def test_log_verbosity_can_be_raised(capfd):
    previous = get_log_verbosity()
    set_log_verbosity(3)
    try:
        assert get_log_verbosity() == 3
        _exercise_logging_paths()
        text = ""
        for _ in range(40):
            time.sleep(0.05)
            out, err = capfd.readouterr()
            text += out + err
            if "n_match" in text:
                break
        assert "n_match=4 is too small" in text
    finally:
        set_log_verbosity(previous)
    assert get_log_verbosity() == -1


# -- simulate --------------------------------------------------------------------------------------

def check_consistent(r, n_tokens, prompt_len, n_max):
    p = min(max(prompt_len, 1), n_tokens)
    assert isinstance(r, SimResult)
    assert r.n_generated == n_tokens - p
    assert r.accept_hist.shape == (n_max + 1,)
    assert r.accept_hist.sum() == r.n_calls
    assert (r.accept_hist * np.arange(n_max + 1)).sum() == r.n_accepted
    assert 0 <= r.n_accepted <= r.n_drafted <= r.n_calls * n_max
    # each step advances by accepted + 1; the replay stops with id_last at or past the last token
    assert r.n_calls + r.n_accepted in (r.n_generated - 1, r.n_generated) or r.n_calls == 0
    assert r.us_per_call_all.shape == (r.n_calls,)
    assert (r.us_per_call_all >= 0).all()
    if r.n_calls:
        assert math.isclose(r.mean_accept_len, (r.n_accepted + r.n_calls) / r.n_calls)
        assert r.us_per_call == np.median(r.us_per_call_all)
    if r.n_drafted:
        assert math.isclose(r.accept_rate, r.n_accepted / r.n_drafted)
    if r.drafts is not None:
        assert len(r.drafts) == r.n_calls
        assert sum(len(x) for x in r.drafts) == r.n_drafted
        assert all(x.dtype == np.int32 for x in r.drafts)


@pytest.mark.parametrize("type_name", SUPPORTED_TYPES)
@pytest.mark.parametrize("n_max, prompt_len", [(4, 0), (8, 5), (1, 30), (3, 200)])
def test_simulate_matches_python_replay(type_name, n_max, prompt_len):
    rng = np.random.default_rng(n_max + prompt_len)
    # a noisy periodic stream: drafts are sometimes right, sometimes wrong
    toks = periodic(9, 25, seed=1)
    flip = rng.random(len(toks)) < 0.08
    toks[flip] = rng.integers(0, 1000, size=flip.sum())
    r = simulate(LlamaDrafter(type_name, **SMALL[type_name]), toks, n_max=n_max,
                 prompt_len=prompt_len, record=True)
    check_consistent(r, len(toks), prompt_len, n_max)
    drafts, accepted = replay(LlamaDrafter(type_name, **SMALL[type_name]), toks, n_max, prompt_len)
    assert r.n_calls == len(drafts)
    for got, want in zip(r.drafts, drafts):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(r.accept_hist, np.bincount(accepted, minlength=n_max + 1))
    assert r.n_accepted == sum(accepted)
    if type_name != "ngram-cache" or prompt_len >= 30:    # see the ngram-cache quirk test
        assert 0 < r.n_accepted < r.n_drafted  # both outcomes occur on this stream


def test_simulate_known_answer_ngram_simple():
    """Replay with an independent Python model of ngram-simple and of the loop."""
    toks = periodic(6, 10, seed=2).tolist()
    toks[31] = 999                        # one disturbance
    n, m, n_max, p = 2, 4, 3, 4
    expect_hist = np.zeros(n_max + 1, dtype=np.int64)
    drafts = []
    i = p
    while i < len(toks) - 1:
        cap = min(n_max, len(toks) - 1 - i)
        d = ref_ngram_simple(toks[:i], toks[i], n, m)[:cap]
        k = 0
        while k < len(d) and d[k] == toks[i + 1 + k]:
            k += 1
        drafts.append(d)
        expect_hist[k] += 1
        i += k + 1
    r = simulate(LlamaDrafter("ngram-simple", size_n=n, size_m=m), toks, n_max=n_max,
                 prompt_len=p, record=True)
    assert [list(x) for x in r.drafts] == drafts
    np.testing.assert_array_equal(r.accept_hist, expect_hist)
    assert r.n_drafted == sum(len(d) for d in drafts)
    assert expect_hist[n_max] > 0 and expect_hist[0] > 0


def test_simulate_base_drafter_drafts_nothing():
    toks = np.arange(20)
    r = simulate(Drafter(), toks, n_max=4, prompt_len=5, record=True)
    assert r.n_calls == 20 - 5 - 1        # one verify step per remaining token
    assert r.n_drafted == 0 and r.n_accepted == 0
    np.testing.assert_array_equal(r.accept_hist, [r.n_calls, 0, 0, 0, 0])
    assert r.mean_accept_len == 1.0
    assert math.isnan(r.accept_rate)
    assert all(len(x) == 0 for x in r.drafts)
    check_consistent(r, 20, 5, 4)


def test_simulate_n_max_zero():
    toks = periodic(5, 6)
    r = simulate(LlamaDrafter("ngram-simple", size_n=2, size_m=3), toks, n_max=0, prompt_len=2)
    assert r.n_calls == len(toks) - 3 and r.n_drafted == 0
    np.testing.assert_array_equal(r.accept_hist, [r.n_calls])


def test_simulate_caps_drafts_at_the_end_of_the_stream():
    toks = periodic(5, 6)
    r = simulate(LlamaDrafter("ngram-simple", size_n=2, size_m=4), toks, n_max=16, prompt_len=2,
                 record=True)
    check_consistent(r, len(toks), 2, 16)
    assert r.n_accepted == r.n_drafted and r.n_drafted > 0
    assert r.accept_hist[5:].sum() == 0   # size_m = 4 bounds every draft


@pytest.mark.parametrize("tokens", [[], [5], [5, 6]])
def test_simulate_short_streams(tokens):
    r = simulate(LlamaDrafter("ngram-simple"), tokens, n_max=3, prompt_len=len(tokens),
                 record=True)
    assert r.n_calls == 0 and r.drafts == []
    assert math.isnan(r.mean_accept_len) and math.isnan(r.us_per_call)
    r = simulate(LlamaDrafter("ngram-simple"), tokens, n_max=3)
    assert r.n_calls == max(len(tokens) - 2, 0)


def test_simulate_accepts_lists_and_other_int_dtypes():
    toks = periodic(7, 6)
    a = simulate(LlamaDrafter("ngram-simple", size_n=2, size_m=3), toks.tolist(), n_max=3,
                 record=True)
    b = simulate(LlamaDrafter("ngram-simple", size_n=2, size_m=3), toks.astype(np.uint16),
                 n_max=3, record=True)
    c = simulate(LlamaDrafter("ngram-simple", size_n=2, size_m=3), toks[::-1][::-1], n_max=3,
                 record=True)
    for r in (b, c):
        assert r.n_calls == a.n_calls
        for x, y in zip(r.drafts, a.drafts):
            np.testing.assert_array_equal(x, y)
    assert simulate(Drafter(), toks, n_max=3).drafts is None


def test_simulate_on_another_sequence():
    toks = periodic(8, 6)
    a = simulate(LlamaDrafter("ngram-map-k", size_n=2, size_m=3), toks, n_max=3, record=True)
    d = LlamaDrafter("ngram-map-k", size_n=2, size_m=3, n_seq=3)
    b = simulate(d, toks, n_max=3, record=True, seq_id=2)
    assert a.n_calls == b.n_calls and a.n_drafted == b.n_drafted and a.n_drafted > 0
    with pytest.raises(ValueError, match="n_seq"):
        simulate(d, toks, n_max=3, seq_id=3)   # capacity is fixed once a sequence has begun


def test_simulate_bad_input():
    d = LlamaDrafter("ngram-simple")
    with pytest.raises(ValueError, match="n_max"):
        simulate(d, [1, 2, 3], n_max=-1)
    with pytest.raises(ValueError, match="prompt_len"):
        simulate(d, [1, 2, 3], n_max=2, prompt_len=4)
    with pytest.raises(ValueError, match="prompt_len"):
        simulate(d, [1, 2, 3], n_max=2, prompt_len=-1)
    with pytest.raises(ValueError, match="1-D"):
        simulate(d, [[1, 2], [3, 4]], n_max=2)
    with pytest.raises(ValueError, match="1-D"):
        simulate(d, 7, n_max=2)
    with pytest.raises(TypeError, match="integer"):
        simulate(d, [1.0, 2.0], n_max=2)
    with pytest.raises(ValueError, match="outside"):
        simulate(d, [1, -2, 3], n_max=2)
    with pytest.raises(ValueError, match="seq_id"):
        simulate(d, [1, 2, 3], n_max=2, seq_id=-1)
    with pytest.raises(TypeError):
        simulate(None, [1, 2, 3], n_max=2)
    with pytest.raises(TypeError):
        simulate(object(), [1, 2, 3], n_max=2)
    with pytest.raises(TypeError):
        simulate(d, [1, 2, 3])            # n_max is required


def test_simulate_result_repr_and_dict():
    r = simulate(LlamaDrafter("ngram-simple", size_n=2, size_m=3), periodic(5, 6), n_max=3)
    assert "n_calls=" in repr(r)
    assert r.as_dict()["n_calls"] == r.n_calls
