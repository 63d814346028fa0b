"""Chains of drafters (spec.DrafterChain): each step's draft is the first stage's draft that is
long enough, every stage that drafted learns what was accepted, per-stage statistics, and the
engine's output stays lossless."""
from __future__ import annotations

import numpy as np
import pytest

import spec
import spec.cli
import spec.testing
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


# -- a model-based session stage --------------------------------------------------------------
# The cycling bigram target (conftest.BIGRAM) with a noisy copy of it as the draft model: the
# draft model wins the steps before the output cycles (accepting most of its drafts, not all),
# the n-gram stage most of those after.
N_GEN = 160

@pytest.fixture(scope="module")
def bigram_draft_path(tmp_path_factory, vocab_path):
    from conftest import BIGRAM
    return spec.testing.make_tiny_llama(tmp_path_factory.mktemp("bigram_draft") / "dft.gguf",
                                        vocab=vocab_path("llama-spm"), perturb=0.05, **BIGRAM)


@pytest.fixture(scope="module")
def plain_bigram(bigram_model):
    with Engine(bigram_model, drafter=None, n_ctx=N_CTX, n_threads=1) as engine:
        return [engine.generate(p, max_tokens=N_GEN).tokens for p in PROMPTS]


def model_chain(target, draft_path, drafter="ngram-simple,draft", **kw):
    return Engine(target, drafter=drafter, n_ctx=N_CTX, n_threads=1,
                  drafter_params={"draft_model": str(draft_path)}, **kw)


@pytest.mark.parametrize("n_draft", [4, "auto"])
def test_a_chain_with_a_draft_model_stage_is_lossless(bigram_model, bigram_draft_path,
                                                      plain_bigram, n_draft):
    with model_chain(bigram_model, bigram_draft_path, n_draft=n_draft) as engine:
        chain = engine.drafter
        assert isinstance(chain, spec.DrafterChain) and chain.names == ("ngram-simple", "draft")
        session = chain.session
        assert isinstance(session, spec.DraftModelSession) and chain.stages[1] is session
        assert session.target_ctx is engine.ctx and session.draft_ctx is engine.draft_ctx
        results = [engine.generate(p, max_tokens=N_GEN) for p in PROMPTS]
        stats, st = chain.stage_stats(), session.stats()
    for r, want in zip(results, plain_bigram):
        np.testing.assert_array_equal(r.tokens, want)
    ngram, draft = stats
    # both stages win steps; the draft model only where the n-gram stage fell through
    assert ngram["n_gen_drafts"] > 0 and draft["n_gen_drafts"] > 0, chain.format_stats()
    assert draft["n_call_draft"] == ngram["n_call_draft"] - ngram["n_gen_drafts"]
    assert ngram["n_call_begin"] == draft["n_call_begin"] == len(PROMPTS)
    # every accepted token is one stage's: the stages' counts add up to the generations'
    assert ngram["n_acc_tokens"] + draft["n_acc_tokens"] == sum(r.stats.n_accepted for r in results)
    for r in results:
        assert sum(s["n_acc_tokens"] for s in r.stats.stages) == r.stats.n_accepted
        if n_draft == 4:        # every draft is verified whole
            assert sum(s["n_gen_tokens"] for s in r.stats.stages) == r.stats.n_drafted
    # the session's own counters are the draft stage's; it saw every target decode
    assert (st["calls"], st["drafted"], st["accepted"]) == (
        draft["n_call_draft"], draft["n_gen_tokens"], draft["n_acc_tokens"])
    assert st["process_calls"] == sum(1 + r.stats.n_steps for r in results)
    assert draft["n_acc_tokens"] < draft["n_gen_tokens"]       # some drafts were rejected
    # as the draft model alone (n_draft=4: ~80 %; "auto" drafts longer, ~50 %)
    assert draft["n_acc_tokens"] > (0.6 if n_draft == 4 else 0.35) * draft["n_gen_tokens"], \
        chain.format_stats()
    assert "statistics draft: #calls(b,g,a)" in results[0].stats.format()


class PartlyWrong(spec.PythonDrafter):
    """Every other call, the known greedy continuation with its last token wrong (the target
    accepts all but that one); nothing on the other calls, so the next stage drafts then."""

    def __init__(self, stream, n_vocab):
        self.stream, self.n_vocab, self.calls = stream, n_vocab, 0

    def draft(self, history, id_last, n_max, seq_id=0):
        self.calls += 1
        i = len(history) + 1
        d = self.stream[i:i + min(n_max, 3)].copy()
        if self.calls % 2 or len(d) < 2:
            return ()
        d[-1] = (d[-1] + 1) % self.n_vocab
        return d


def test_the_session_stage_drafts_right_after_another_stage_was_partly_rejected(
        bigram_model, bigram_draft_path, plain_bigram):
    """The verify batch of the other stage's draft reached the draft context (the loop feeds
    the session every target decode), its rejected rows too: the session drops those before it
    drafts, so its next draft continues the accepted tokens."""
    prompt = bigram_model.tokenize(PROMPTS[0])
    stream = np.concatenate([prompt, plain_bigram[0]]).astype(np.int32)
    first = PartlyWrong(stream, bigram_model.n_vocab)
    with model_chain(bigram_model, bigram_draft_path, drafter=[first, "draft"],
                     n_draft=4) as engine:
        r = engine.generate(PROMPTS[0], max_tokens=N_GEN)
        st = engine.drafter.session.stats()
    np.testing.assert_array_equal(r.tokens, plain_bigram[0])
    wrong, draft = r.stats.stages
    assert wrong["name"] == "PartlyWrong" and wrong["n_gen_drafts"] >= 10
    # each of its drafts lost exactly its last token; the session drafted in the steps between
    assert wrong["n_acc_tokens"] == wrong["n_gen_tokens"] - wrong["n_gen_drafts"]
    assert draft["n_call_draft"] >= wrong["n_gen_drafts"]
    # ... and every time it was asked it drafted (a draft context holding the rejected rows
    # could not decode the next position), mostly accepted, as the draft model alone does
    assert draft["n_gen_drafts"] == draft["n_call_draft"] == st["calls"]
    assert draft["n_acc_tokens"] > 0.6 * draft["n_gen_tokens"], r.stats.format()
    assert wrong["n_acc_tokens"] + draft["n_acc_tokens"] == r.stats.n_accepted


def test_a_chain_with_a_session_stage_in_a_batch_and_on_the_command_line(
        bigram_model, bigram_model_path, bigram_draft_path, plain_bigram, capsys):
    import json
    with model_chain(bigram_model, bigram_draft_path, drafter="ngram-mod,draft",
                     n_draft=4) as engine:
        before = engine.drafter.session
        results = engine.generate_batch(PROMPTS, n_parallel=3, max_tokens=N_GEN)
        # the engine rebuilt its contexts for three sequences: the session stage with them
        session = engine.drafter.session
        assert session is not before and before.closed and engine.drafter.stages[1] is session
        assert session.target_ctx is engine.ctx and engine.ctx.n_seq_max == 3
        assert engine.draft_ctx.n_seq_max == 3
        stats = engine.drafter.stage_stats()
        again = engine.generate(PROMPTS[1], max_tokens=N_GEN)
    for r, want in zip(results, plain_bigram):
        np.testing.assert_array_equal(r.tokens, want)
    np.testing.assert_array_equal(again.tokens, plain_bigram[1])
    assert stats[1]["n_call_begin"] == len(PROMPTS) and stats[1]["n_acc_tokens"] > 0
    assert spec.cli.main(["generate", "--model", str(bigram_model_path), "--prompt", PROMPTS[0],
                          "--max-tokens", "48", "--drafter", "ngram_mod,draft", "--draft-model",
                          str(bigram_draft_path), "--n-draft", "4", "--n-ctx", "256",
                          "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["drafter"] == "ngram-mod,draft" and out["tokens"] == plain_bigram[0][:48].tolist()
    assert [s["name"] for s in out["stages"]] == ["ngram-mod", "draft"]
    assert sum(s["n_acc_tokens"] for s in out["stages"]) == out["n_accepted"] > 0


def test_a_chain_with_a_session_stage_by_hand(bigram_model_path, bigram_draft_path):
    """A chain holding a session, driven through the chain's Python methods: the session is
    fed every target decode by hand (process), as alone."""
    target = spec.Context(spec.Model(bigram_model_path), n_ctx=512)
    draft_ctx = spec.Context(spec.Model(bigram_draft_path), n_ctx=512)
    session = spec.DraftModelSession(target, draft_ctx, 1, 4)
    chain = spec.DrafterChain([spec.NgramSimple(size_n=2, size_m=4), session])
    assert chain.session is session and chain.names == ("NgramSimple", "DraftModelSession")
    prompt = target.model.tokenize(PROMPTS[0])
    ref, _, _ = spec.Context(target.model, n_ctx=512).generate_greedy(prompt, N_GEN,
                                                                       stop_at_eog=False)
    target.decode(prompt)
    session.process()
    chain.begin(prompt)
    tokens = list(prompt) + [int(np.argmax(target.logits()[-1]))]
    while len(tokens) < len(prompt) + N_GEN:
        n_past = len(tokens) - 1
        d = chain.draft(np.array(tokens[:-1]), tokens[-1], 4)
        target.decode(np.r_[tokens[-1], d].astype(np.int32), pos=n_past, all_logits=True)
        session.process()
        am = target.logits().argmax(1)
        n = common_prefix(d, am)
        chain.accept(n)
        target.kv_remove(0, n_past + 1 + n, -1)
        tokens += [int(t) for t in d[:n]] + [int(am[n])]
    assert tokens[len(prompt):len(prompt) + N_GEN] == ref.tolist()
    stats = chain.stage_stats()
    assert all(s["n_gen_drafts"] > 0 for s in stats), chain.format_stats()
    target.close()
    with pytest.raises(spec.ClosedError):
        chain.draft(np.array(tokens[:-1]), tokens[-1], 4)


def test_at_most_one_model_stage(pair, mtp_paths):
    with pytest.raises(ValueError, match="at most one model-based stage"):
        Engine(pair[0], drafter="ngram-mod,draft,eagle3", n_ctx=128,
               drafter_params={"draft_model": str(pair[1])})
    with pytest.raises(ValueError, match="at most one model-based stage"):
        Engine(mtp_paths[0], drafter=["mtp", "suffix", "draft"], n_ctx=128)
    target = spec.Context(spec.Model(pair[0]), n_ctx=128)
    sessions = [spec.DraftModelSession(target, spec.Context(spec.Model(pair[1]), n_ctx=128), 1, 4)
                for _ in range(2)]
    with pytest.raises(ValueError, match="at most one model-based session stage"):
        spec.DrafterChain([spec.SuffixTree(), *sessions])
    with pytest.raises(ValueError, match="target_ctx"):    # the loop checks the chain's session
        from spec._loop._engine import Loop
        from spec._loop._params import Drafting
        Loop(spec.Context(target.model, n_ctx=128), spec.DrafterChain([sessions[0]]),
             Drafting(4))
    sessions[1].close()
    with pytest.raises(spec.ClosedError):                  # a chain takes live sessions only
        spec.DrafterChain([sessions[1]])


@pytest.mark.parametrize("n_draft", [3, "auto"])
def test_an_eagle3_stage(tmp_path_factory, vocab_path, n_draft):
    """EAGLE-3 picks the hidden-state row its next draft starts from by every step's accepted
    count, the n-gram stage's steps too (a random EAGLE-3 head accepts nothing here)."""
    from conftest import BIGRAM
    d = tmp_path_factory.mktemp("chain_eagle3")
    vocab = vocab_path("llama-spm")
    target = spec.testing.make_tiny_llama(d / "tgt4.gguf", vocab=vocab, n_layer=4, **BIGRAM)
    eagle3 = spec.testing.make_tiny_eagle3(d / "e3.gguf", n_embd_target=64, vocab=vocab)
    with Engine(target, drafter=None, n_ctx=N_CTX, n_threads=1) as engine:
        plain = engine.generate(PROMPTS[0], max_tokens=N_GEN).tokens
    with model_chain(target, eagle3, drafter="ngram-simple,eagle3", n_draft=n_draft) as engine:
        assert isinstance(engine.drafter.session, spec.Eagle3Session)
        r = engine.generate(PROMPTS[0], max_tokens=N_GEN)
    np.testing.assert_array_equal(r.tokens, plain)
    ngram, eagle = r.stats.stages
    assert ngram["n_gen_drafts"] > 0 and eagle["n_gen_drafts"] > 0, r.stats.format()
    assert ngram["n_acc_tokens"] + eagle["n_acc_tokens"] == r.stats.n_accepted


# -- MTP stages (a tiny hybrid qwen35 target, with and without its NextN block) -----------------

@pytest.fixture(scope="module")
def mtp_paths(tmp_path_factory, vocab_path):
    d = tmp_path_factory.mktemp("chain_mtp")
    vocab = vocab_path("llama-spm")
    return (spec.testing.make_tiny_qwen35_mtp(d / "mtp.gguf", vocab=vocab, seed=5),
            spec.testing.make_tiny_qwen35_mtp(d / "nomtp.gguf", vocab=vocab, seed=5, mtp=False))


@pytest.mark.parametrize("n_rs_seq", [0, 3], ids=["checkpoint", "rollback"])
def test_an_mtp_stage_on_a_hybrid_target(mtp_paths, n_rs_seq):
    """MTP after a stage whose drafts lose their last token: the hybrid target restores its
    checkpoint and replays the accepted tokens (or rolls back), the MTP head hears every step's
    count (its next draft starts from that row), and the output stays plain greedy's (random
    heads accept next to nothing)."""
    with Engine(mtp_paths[0], drafter=None, n_ctx=256) as engine:
        plain = engine.generate(PROMPTS[0], max_tokens=48).tokens
    model = spec.Model(mtp_paths[0], load_mtp=True)
    stream = np.concatenate([model.tokenize(PROMPTS[0]), plain]).astype(np.int32)
    with Engine(model, drafter=[PartlyWrong(stream, model.n_vocab), "mtp"], n_draft=3,
                n_ctx=256, drafter_params={"n_rs_seq": n_rs_seq}) as engine:
        assert engine.ctx.recurrent and engine.ctx.n_rs_seq == n_rs_seq
        assert isinstance(engine.drafter.session, spec.MtpSession)
        r = engine.generate(PROMPTS[0], max_tokens=48)
        st = engine.drafter.session.stats()
    np.testing.assert_array_equal(r.tokens, plain)
    wrong, mtp = r.stats.stages
    assert wrong["n_gen_drafts"] >= 5 and mtp["n_gen_drafts"] > 0, r.stats.format()
    assert wrong["n_acc_tokens"] == wrong["n_gen_tokens"] - wrong["n_gen_drafts"]
    assert wrong["n_acc_tokens"] + mtp["n_acc_tokens"] == r.stats.n_accepted
    assert st["calls"] == mtp["n_call_draft"]
    n_replays = st["process_calls"] - 1 - r.stats.n_steps    # a processed replay each
    assert n_replays >= wrong["n_gen_drafts"] if n_rs_seq == 0 else n_replays == 0


def test_an_mtp_stage_without_nextn_layers_is_dropped(mtp_paths, caplog):
    nomtp = mtp_paths[1]
    with Engine(nomtp, drafter=None, n_ctx=256) as engine:
        plain = engine.generate(PROMPTS[0], max_tokens=48).tokens
    with caplog.at_level("WARNING", logger="spec"):
        engine = Engine(nomtp, drafter="suffix,mtp", n_draft=3, n_ctx=256,
                        drafter_params={"n_min": (0, 2)})
    with engine:
        [rec] = [r for r in caplog.records if "NextN" in r.getMessage()]
        assert rec.name == "spec" and rec.levelname == "WARNING" and "'mtp' stage" in rec.message
        assert engine.drafter.names == ("suffix",) and engine.drafter.n_min == (0,)
        assert engine.drafter.session is None and engine.draft_ctx is None
        r = engine.generate(PROMPTS[0], max_tokens=48)
    np.testing.assert_array_equal(r.tokens, plain)
    # alone it stays an error, as a one-stage chain too
    for drafter in ("mtp", ["mtp"]):
        with pytest.raises(spec.SessionInitError, match="NextN"):
            Engine(nomtp, drafter=drafter, n_ctx=128)


@pytest.mark.slow
def test_a_chain_is_lossless_on_the_default_model(default_model_path):
    """suffix → ngram-mod on Gemma-3-270M equals plain greedy (Q4_K weights quantize activations
    per batch: a near-tie may flip, and each flip is proven by replaying the exact batches)."""
    from _lossless import assert_lossless
    prompt = spec.cli.DEMO_PROMPT
    with spec.Model(default_model_path) as model:
        with Engine(model, drafter=None) as engine:
            plain = engine.generate(prompt, max_tokens=64, trace=True)
        with Engine(model, drafter="suffix,ngram-mod", n_draft=8) as engine:
            result = engine.generate(prompt, max_tokens=64, trace=True)
        assert len(plain.tokens) == 64 and result.stats.n_accepted > 0
        assert [s["name"] for s in result.stats.stages] == ["suffix", "ngram-mod"]
        assert_lossless(model, plain, result)
