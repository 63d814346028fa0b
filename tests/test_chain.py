"""Chains of drafters (spec.DrafterChain): each step's draft is the first stage's draft that is
long enough, every stage that drafted learns what was accepted, per-stage statistics, and the
engine's output stays lossless."""
from __future__ import annotations

import numpy as np
import pytest

import spec
import spec.cli
from spec.engine import Engine, make_drafter

N_CTX = 1024
PROMPTS = ["alpha beta gamma delta", "river stone cloud market engine", "paper window silver"]


def common_prefix(a, b) -> int:
    n = 0
    while n < len(a) and n < len(b) and a[n] == b[n]:
        n += 1
    return n


@pytest.fixture(scope="module")
def stream(bigram_model):
    """Prompt + plain greedy output of the cycling bigram model (drafts get accepted)."""
    with Engine(bigram_model, drafter=None, n_ctx=N_CTX, n_threads=1) as engine:
        out = engine.generate(PROMPTS[0], max_tokens=160)
    prompt = bigram_model.tokenize(PROMPTS[0])
    return np.concatenate([prompt, out.tokens]).astype(np.int32), len(prompt)


def stages():
    return [spec.NgramSimple(size_n=3, size_m=6), spec.NgramMod(n_match=4, n_max=12, n_min=2),
            spec.SuffixTree(max_depth=24)]


N_MIN = (5, 3, 0)


def test_each_draft_is_the_first_long_enough_stage_draft_and_states_follow(stream):
    tokens, p = stream
    chain = spec.DrafterChain(stages(), n_min=N_MIN)
    alone = stages()                              # the same drafters, fed the same calls
    chain.begin(tokens[:p])
    for d in alone:
        d.begin(tokens[:p])
    i, winners = p, []
    while i < len(tokens) - 1:
        n_max = min(12, len(tokens) - 1 - i)
        got = chain.draft(tokens[:i], int(tokens[i]), n_max)
        drafts, want, w = [], np.empty(0, np.int32), None
        for k, d in enumerate(alone):
            draft = d.draft(tokens[:i], int(tokens[i]), n_max)
            drafts.append(draft)
            if len(draft) >= max(N_MIN[k], 1):
                want, w = draft, k
                break
        np.testing.assert_array_equal(got, want)
        n_acc = common_prefix(want, tokens[i + 1:])
        chain.accept(n_acc)
        for k, draft in enumerate(drafts):   # the winner its count, the others what matched it
            alone[k].accept(n_acc if k == w else min(n_acc, common_prefix(draft, want)))
        winners.append(w)
        i += n_acc + 1
    assert len({w for w in winners if w is not None}) >= 2, "one stage won every step"
    chain.end(tokens[p:])
    for d in alone:
        d.end(tokens[p:])
    # the stages' states equal the drafters fed alone: they draft the same from here on
    for j in range(p + 5, len(tokens) - 1, 7):
        for d_chain, d_alone in zip(chain.stages, alone):
            d_chain.begin(tokens[:j])
            d_alone.begin(tokens[:j])
            np.testing.assert_array_equal(d_chain.draft(tokens[:j], int(tokens[j]), 12),
                                          d_alone.draft(tokens[:j], int(tokens[j]), 12))
    stats = chain.stage_stats()
    assert stats[0]["n_call_draft"] == len(winners)
    assert [s["n_gen_drafts"] for s in stats] == [winners.count(k) for k in range(3)]
    assert stats[1]["n_call_draft"] == sum(w != 0 for w in winners)


@pytest.mark.parametrize("n_draft", [8, "auto"])
def test_the_engine_runs_a_chain_losslessly(bigram_model, n_draft):
    with Engine(bigram_model, drafter=None, n_ctx=N_CTX, n_threads=1) as engine:
        plain = [engine.generate(p, max_tokens=96).tokens for p in PROMPTS]
    with Engine(bigram_model, drafter="ngram-simple,suffix", n_draft=n_draft, n_ctx=N_CTX,
                n_threads=1) as engine:
        single = [engine.generate(p, max_tokens=96) for p in PROMPTS]
        batch = engine.generate_batch(PROMPTS, n_parallel=3, max_tokens=96)
        stats = engine.drafter.stage_stats()
        text = engine.drafter.format_stats()
    for got, b, want in zip(single, batch, plain):
        np.testing.assert_array_equal(got.tokens, want)
        np.testing.assert_array_equal(b.tokens, want)
    assert sum(r.stats.n_accepted for r in single) > 0
    assert [s["name"] for s in stats] == ["ngram-simple", "suffix"]
    assert stats[0]["n_call_begin"] == stats[1]["n_call_begin"] == 2 * len(PROMPTS)
    assert stats[0]["n_call_draft"] >= stats[1]["n_call_draft"] > 0
    assert sum(s["n_acc_tokens"] for s in stats) > 0
    assert text.startswith("statistics ngram-simple: #calls(b,g,a) = 6 ")
    # a generation's share of the stages' work, in its Result
    per_gen = [r.stats.stages for r in single]
    assert all([s["name"] for s in st] == ["ngram-simple", "suffix"] for st in per_gen)
    assert all(st[0]["n_call_begin"] == 1 for st in per_gen)
    for key in ("n_call_draft", "n_gen_tokens", "n_acc_tokens"):
        assert sum(st[0][key] + st[1][key] for st in per_gen) <= sum(s[key] for s in stats)
    assert sum(st[0]["n_acc_tokens"] + st[1]["n_acc_tokens"] for st in per_gen) == sum(
        r.stats.n_accepted for r in single)
    assert "statistics suffix: #calls(b,g,a) = 1 " in single[0].stats.format()
    assert batch[0].stats.stages == []


def test_names_aliases_simulate_and_the_command_line(tiny_model_path, stream, capsys):
    chain = make_drafter(["ngram_simple", "llama:ngram_map_k", spec.SuffixTree()])
    assert chain.names == ("ngram-simple", "llama:ngram-map-k", "SuffixTree")
    tokens, p = stream
    sim = spec.simulate(make_drafter("ngram-mod,suffix"), tokens, n_max=8, prompt_len=p)
    assert sim.n_accepted > 0
    assert spec.cli.main(["generate", "--model", str(tiny_model_path), "--prompt", "alpha",
                          "--max-tokens", "8", "--drafter", "suffix,ngram_mod",
                          "--n-ctx", "256"]) == 0
    with pytest.raises(SystemExit):
        spec.cli.main(["generate", "--model", str(tiny_model_path), "--drafter", "suffix,nope"])
    assert "unknown drafter(s) 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize("make, error, message", [
    (lambda: spec.DrafterChain([]), ValueError, "at least one stage"),
    (lambda: spec.DrafterChain([d := spec.SuffixTree(), d]), ValueError, "appears twice"),
    (lambda: spec.DrafterChain([spec.SuffixTree(), "suffix"]), TypeError, "stage 1"),
    (lambda: spec.DrafterChain([spec.DrafterChain([spec.SuffixTree()])]), TypeError, "chain"),
    (lambda: spec.DrafterChain([spec.SuffixTree()], n_min=-1), ValueError, "n_min"),
    (lambda: spec.DrafterChain([spec.SuffixTree()], n_max=(1, 2)), ValueError, "n_max"),
    (lambda: make_drafter("suffix,draft"), ValueError, "cannot be a stage"),
    (lambda: make_drafter("suffix,none"), ValueError, "cannot be a stage"),
])
def test_bad_chains_are_refused(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_a_stage_in_use_elsewhere_is_refused_while_the_chain_generates(bigram_model):
    shared = spec.SuffixTree()
    with Engine(bigram_model, drafter=shared, n_draft=4, n_ctx=N_CTX, n_threads=1) as other:
        stream = other.stream(PROMPTS[0], max_tokens=32)
        next(stream)                                      # holds `shared` mid-generation
        with Engine(bigram_model, drafter=[spec.NgramSimple(), shared], n_draft=4,
                    n_ctx=N_CTX, n_threads=1) as engine:
            with pytest.raises(spec.EngineBusyError):
                engine.generate(PROMPTS[1], max_tokens=8)
            stream.close()
            engine.generate(PROMPTS[1], max_tokens=8)    # free again: it runs
