"""Model-based speculation sessions (spec.sessions) on synthesized tiny models.

Draft-model pairs: a target and a noisy copy of it (same vocabulary): real acceptance, output
equal to plain greedy. MTP: a tiny qwen35 (hybrid: gated-delta-net + attention) model with one
NextN block, through both recurrent paths (checkpoint/replay and n_rs_seq rollback): random heads
accept nothing, so the tests check drafts were made, stats count them and the output is the
plain greedy one. EAGLE-3: a 4-layer llama target and a random 1-layer eagle3 draft, the same
checks. DFlash: no tiny DFlash draft is synthesized yet (its architecture and metadata were not
reproduced here), so only its init checks are tested.
"""
from __future__ import annotations

import gc

import numpy as np
import pytest

import spec
import spec.testing
from spec import (BadSeqIdError, ClosedError, Context, DraftModelSession, Engine,
                  InvalidConfigError, Model, MtpSession, SessionConfig, SessionInitError,
                  SessionProcessError, SpecError)

PROMPT = "The quick brown fox jumps over the lazy dog. Once upon a time"
TIE = 1e-3   # a divergence is acceptable only where plain greedy's top-two logits nearly tie


def assert_lossless(plain, other):
    a, b = np.asarray(plain.tokens), np.asarray(other.tokens)
    n = min(len(a), len(b))
    diff = np.nonzero(a[:n] != b[:n])[0]
    if diff.size == 0:
        assert len(a) == len(b), "one run stopped early"
        return
    i = int(diff[0])
    assert plain.margins is not None and plain.margins[i] <= TIE, (
        f"divergence at token {i} with a clear margin: plain {a[i]} vs speculative {b[i]}")


@pytest.fixture(scope="module")
def pair(tmp_path_factory, vocab_path):
    """A target and a draft = target + 1 % noise (same seed, same vocabulary)."""
    d = tmp_path_factory.mktemp("pair")
    vocab = vocab_path("llama-spm")
    tgt = spec.testing.make_tiny_llama(d / "tgt.gguf", vocab=vocab, seed=11, proj_scale=0.3)
    dft = spec.testing.make_tiny_llama(d / "dft.gguf", vocab=vocab, seed=11, proj_scale=0.3,
                                       perturb=0.01)
    return tgt, dft


@pytest.fixture(scope="module")
def mtp_path(tmp_path_factory, vocab_path):
    return spec.testing.make_tiny_qwen35_mtp(tmp_path_factory.mktemp("mtp") / "mtp.gguf",
                                             vocab=vocab_path("llama-spm"), seed=5)


@pytest.fixture(scope="module")
def nomtp_path(tmp_path_factory, vocab_path):
    return spec.testing.make_tiny_qwen35_mtp(tmp_path_factory.mktemp("nomtp") / "nomtp.gguf",
                                             vocab=vocab_path("llama-spm"), seed=5, mtp=False)


@pytest.fixture(scope="module")
def plain_pair(pair):
    with Engine(pair[0], drafter=None, n_ctx=512) as e:
        return e.generate(PROMPT, max_tokens=64, trace=True)


# -- SessionConfig ----------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs", [
    dict(n_seq=0, n_draft_max=4), dict(n_seq=1, n_draft_max=0), dict(n_seq=1, n_draft_max=-3),
    dict(n_seq=1, n_draft_max=4, p_min=1.5), dict(n_seq=1, n_draft_max=4, p_min=-0.1),
    dict(n_seq=1, n_draft_max=4, p_min=float("nan")), dict(n_seq=1, n_draft_max=4, n_min=5),
    dict(n_seq=1, n_draft_max=4, n_min=-1), dict(n_seq=1.5, n_draft_max=4),
])
def test_config_rejects(kwargs):
    with pytest.raises(InvalidConfigError):
        SessionConfig(**kwargs)


def test_config_ok_and_errors_are_spec_errors():
    c = SessionConfig(2, 8, n_min=1, p_min=0.5)
    assert (c.n_seq, c.n_draft_max, c.n_min, c.p_min) == (2, 8, 1, 0.5)
    for cls in (InvalidConfigError, SessionInitError, SessionProcessError, BadSeqIdError):
        assert issubclass(cls, SpecError)


# -- draft-model session ----------------------------------------------------------------------

def test_draft_model_engine_lossless_with_acceptance(pair, plain_pair):
    tgt, dft = pair
    with Engine(tgt, drafter="draft", n_draft=4, n_ctx=512,
                drafter_params={"draft_model": dft}) as e:
        r = e.generate(PROMPT, max_tokens=64)
        st = e.drafter.stats()
    assert_lossless(plain_pair, r)
    assert r.stats.n_drafted > 0
    assert r.stats.accept_rate > 0.5, r.stats.format()
    assert st["drafted"] == r.stats.n_drafted and st["accepted"] == r.stats.n_accepted
    assert r.stats.n_steps - 1 <= st["calls"] <= r.stats.n_steps


BATCH = [PROMPT, "Hello there, said the old man to the", "One two three four five six seven"]


@pytest.mark.parametrize("n_parallel_built", [1, 3], ids=["context-rebuilt", "context-fits"])
def test_draft_model_engine_batch(pair, n_parallel_built):
    """Three sequences share the target and the draft context; an engine built for fewer
    sequences rebuilds both contexts and the session for the batch."""
    tgt, dft = pair
    with Engine(tgt, drafter=None, n_ctx=512) as e:
        plain = [e.generate(p, max_tokens=48, trace=True) for p in BATCH]
    with Engine(tgt, drafter="draft", n_draft=4, n_ctx=512, n_parallel=n_parallel_built,
                drafter_params={"draft_model": dft}) as e:
        results = e.generate_batch(BATCH, n_parallel=3, max_tokens=48)
        assert e.ctx.n_seq_max == 3 and e.draft_ctx.n_seq_max == 3
        assert e.drafter.target_ctx is e.ctx
        again = e.generate(BATCH[1], max_tokens=48)    # single-sequence use still works after
    for p, r in zip(plain, results):
        assert_lossless(p, r)
        assert r.stats.n_drafted > 0 and r.stats.accept_rate > 0.5, r.stats.format()
    assert_lossless(plain[1], again)


def test_draft_model_session_by_hand(pair):
    tgt, dft = pair
    mt, md = Model(tgt), Model(dft)
    ct, cd = Context(mt, n_ctx=256), Context(md, n_ctx=256)
    s = DraftModelSession.from_config(ct, cd, SessionConfig(1, 4))
    assert (s.n_seq, s.n_draft_max, s.n_min, s.p_min) == (1, 4, 0, 0.0)
    assert not s.need_embd() and not s.need_embd_pre_norm()
    prompt = mt.tokenize(PROMPT)
    with pytest.raises(SessionProcessError):
        s.draft(0, len(prompt), 1)              # before begin
    ct.decode(prompt)
    s.process()
    s.begin(0, prompt)
    with pytest.raises(SessionProcessError):
        s.accept(0, 0)                          # before any draft
    id_last = int(np.argmax(ct.logits()[-1]))
    n_past, out = len(prompt), [id_last]
    while len(out) < 32:
        d = s.draft(0, n_past, id_last)
        assert d.dtype == np.int32 and 0 < len(d) <= 4
        ct.decode(np.r_[id_last, d].astype(np.int32), pos=n_past, all_logits=True)
        s.process()
        am = ct.logits().argmax(1)
        n = 0
        while n < len(d) and am[n] == d[n]:
            n += 1
        s.accept(0, n)
        out += [int(t) for t in d[:n]] + [int(am[n])]
        n_past += 1 + n
        ct.kv_remove(0, n_past, -1)
        id_last = out[-1]
    ref, _, _ = ct.generate_greedy(prompt, 32, stop_at_eog=False)
    assert out[:32] == ref.tolist()
    st = s.stats()
    assert st["accepted"] > 0 and st["drafted"] >= st["accepted"]
    assert st["process_calls"] == st["calls"] + 1
    for bad in (1, -1, 7):
        with pytest.raises(BadSeqIdError):
            s.draft(bad, n_past, id_last)
        with pytest.raises(BadSeqIdError):
            s.begin(bad, prompt)
    with pytest.raises(TypeError):
        s.process([1, 2, 3])
    del s
    gc.collect()


def test_mismatched_vocabularies(pair, tmp_path, vocab_path):
    other = spec.testing.make_tiny_llama(tmp_path / "bpe.gguf", vocab=vocab_path("llama-bpe"),
                                         seed=1)
    with pytest.raises(SessionInitError, match="vocabular"):
        Engine(pair[0], drafter="draft", n_draft=4, n_ctx=256,
               drafter_params={"draft_model": other})


def test_session_init_errors(pair):
    mt = Model(pair[0])
    ct, cd = Context(mt, n_ctx=128), Context(Model(pair[1]), n_ctx=128, n_seq_max=2)
    with pytest.raises(SessionInitError, match="n_seq_max"):
        DraftModelSession(ct, cd, 1, 4)          # draft context sized for 2 sequences
    with pytest.raises(InvalidConfigError):
        DraftModelSession(ct, cd, 2, 4)          # target serves one sequence
    with pytest.raises(SessionInitError):
        DraftModelSession(ct, ct, 1, 4)
    with pytest.raises(TypeError):
        spec.Session(ct, cd, 1, 4)               # abstract
    with pytest.raises(InvalidConfigError):
        DraftModelSession(ct, cd, 1, 0)
    with pytest.raises(ValueError, match="draft_model"):
        Engine(mt, drafter="draft", n_ctx=128)
    with pytest.raises(ValueError, match="session"):
        spec.make_drafter("draft")


def test_close_under_live_session_is_deferred(pair):
    ct, cd = Context(Model(pair[0]), n_ctx=128), Context(Model(pair[1]), n_ctx=128)
    s = DraftModelSession(ct, cd, 1, 4)
    prompt = ct.model.tokenize(PROMPT)
    ct.decode(prompt)
    s.process()
    s.begin(0, prompt)
    ct.close()
    assert ct.closed
    with pytest.raises(ClosedError):
        s.draft(0, len(prompt), 1)
    with pytest.raises(ClosedError):
        s.process()
    cd.close()
    del s                                        # frees the session, then both contexts
    gc.collect()


def test_loop_refuses_foreign_session(pair):
    from spec._engine import Loop
    ct, cd = Context(Model(pair[0]), n_ctx=128), Context(Model(pair[1]), n_ctx=128)
    other = Context(ct.model, n_ctx=128)
    s = DraftModelSession(ct, cd, 1, 4)
    with pytest.raises(ValueError, match="target_ctx"):
        Loop(other, s, n_draft_max=4)


# -- MTP (hybrid qwen35 target) ---------------------------------------------------------------

@pytest.fixture(scope="module")
def plain_mtp(mtp_path):
    with Engine(mtp_path, drafter=None, n_ctx=256) as e:
        return e.generate(PROMPT, max_tokens=40, trace=True)


@pytest.mark.parametrize("n_rs_seq", [0, 3], ids=["checkpoint", "rollback"])
def test_mtp_engine(mtp_path, plain_mtp, n_rs_seq):
    with Engine(mtp_path, drafter="mtp", n_draft=3, n_ctx=256,
                drafter_params={"n_rs_seq": n_rs_seq}) as e:
        assert e.ctx.recurrent and e.ctx.n_rs_seq == n_rs_seq
        assert e.drafter.need_embd() and e.drafter.need_embd_pre_norm()
        r = e.generate(PROMPT, max_tokens=40)
        st = e.drafter.stats()
    assert_lossless(plain_mtp, r)
    assert r.stats.n_drafted > 0 and st["drafted"] == r.stats.n_drafted
    # the last step may draft nothing (token budget): no draft call then
    assert r.stats.n_steps - 1 <= st["calls"] <= r.stats.n_steps
    assert st["accepted"] == r.stats.n_accepted
    if n_rs_seq == 0:
        # checkpoint path: every step that rejected part of its draft is replayed (one more
        # process call); random heads reject (nearly) everything
        n_replays = st["process_calls"] - 1 - r.stats.n_steps
        assert 1 <= n_replays <= st["calls"]
        if st["accepted"] == 0:
            assert n_replays == st["calls"]
    else:
        assert st["process_calls"] == 1 + r.stats.n_steps


@pytest.mark.parametrize("n_rs_seq", [0, 3], ids=["checkpoint", "rollback"])
def test_mtp_engine_batch(mtp_path, n_rs_seq):
    """The recurrent target's checkpoint or rollback path per sequence, three sequences per
    batch (the engine, built for one, rebuilds its contexts keeping n_rs_seq)."""
    with Engine(mtp_path, drafter=None, n_ctx=256) as e:
        plain = [e.generate(p, max_tokens=24, trace=True) for p in BATCH]
    with Engine(mtp_path, drafter="mtp", n_draft=3, n_ctx=256,
                drafter_params={"n_rs_seq": n_rs_seq}) as e:
        results = e.generate_batch(BATCH, n_parallel=3, max_tokens=24)
        assert e.ctx.n_seq_max == 3 and e.ctx.n_rs_seq == n_rs_seq
    for p, r in zip(plain, results):
        assert_lossless(p, r)
        assert r.stats.n_drafted > 0


def test_mtp_without_nextn(nomtp_path):
    with pytest.raises(SessionInitError, match="MTP"):
        Engine(nomtp_path, drafter="mtp", n_draft=3, n_ctx=128)
    m = Model(nomtp_path, load_mtp=True)
    with pytest.raises(ValueError, match="NextN"):
        Context(m, n_ctx=128, ctx_type="mtp")
    ct, cd = Context(m, n_ctx=128), Context(m, n_ctx=128)
    with pytest.raises(SessionInitError, match="lacks MTP heads"):
        MtpSession(ct, cd, 1, 3)


def test_mtp_needs_loaded_heads_and_mtp_context(mtp_path):
    m = Model(mtp_path)                          # heads not loaded
    with pytest.raises(ValueError, match="load_mtp"):
        Context(m, n_ctx=128, ctx_type="mtp")
    with pytest.raises(SessionInitError, match="load_mtp"):
        Engine(m, drafter="mtp", n_ctx=128)
    m2 = Model(mtp_path, load_mtp=True)
    ct, cd = Context(m2, n_ctx=128), Context(m2, n_ctx=128)
    with pytest.raises(SessionInitError, match="wrong type"):
        MtpSession(ct, cd, 1, 3)


# -- EAGLE-3 (4-layer llama target + 1-layer eagle3 draft) -------------------------------------

@pytest.fixture(scope="module")
def eagle3_pair(tmp_path_factory, vocab_path):
    d = tmp_path_factory.mktemp("eagle3")
    vocab = vocab_path("llama-spm")
    tgt = spec.testing.make_tiny_llama(d / "tgt4.gguf", vocab=vocab, seed=2, n_layer=4)
    dft = spec.testing.make_tiny_eagle3(d / "e3.gguf", n_embd_target=64, vocab=vocab)
    return tgt, dft


def test_eagle3_engine(eagle3_pair):
    tgt, dft = eagle3_pair
    with Engine(tgt, drafter=None, n_ctx=256) as e:
        plain = e.generate(PROMPT, max_tokens=24, trace=True)
    with Engine(tgt, drafter="eagle3", n_draft=3, n_ctx=256,
                drafter_params={"draft_model": dft}) as e:
        assert e.drafter.need_embd() and not e.drafter.need_embd_pre_norm()
        assert e.draft_ctx.ctx_other is e.ctx
        r = e.generate(PROMPT, max_tokens=24)
        st = e.drafter.stats()
    assert_lossless(plain, r)
    assert r.stats.n_drafted > 0 and st["drafted"] == r.stats.n_drafted
    assert st["accepted"] == r.stats.n_accepted
    assert st["process_calls"] == 1 + r.stats.n_steps


def test_eagle3_and_dflash_refuse_other_models(eagle3_pair, pair):
    tgt, _ = eagle3_pair
    ct = Context(Model(tgt), n_ctx=128)
    not_eagle = Context(Model(pair[1]), n_ctx=128)
    with pytest.raises(SessionInitError, match="not an EAGLE-3 model"):
        spec.Eagle3Session(ct, not_eagle, 1, 3)
    # No DFlash draft is synthesized (see the module notes): its init checks still must hold.
    with pytest.raises(SessionInitError, match="not a DFlash model"):
        spec.DFlashSession(ct, not_eagle, 1, 3)
    with pytest.raises(ValueError, match="draft_model"):
        Engine(tgt, drafter="dflash", n_ctx=128)


# -- CLI -----------------------------------------------------------------------------------------

def test_cli_draft_model(pair, capsys):
    import json
    from spec.cli import main
    tgt, dft = pair
    rc = main(["generate", "--model", str(tgt), "--n-ctx", "256", "--prompt", PROMPT,
               "--drafter", "draft", "--draft-model", str(dft), "--n-draft", "4",
               "--max-tokens", "16", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["drafter"] == "draft" and out["accept_rate"] > 0.5, out
