"""Model-based speculation sessions (spec.sessions) on synthesized tiny models.

Draft-model pairs: a target and a noisy copy of it (same vocabulary): real acceptance, output
equal to plain greedy. MTP: a tiny qwen35 (hybrid: gated-delta-net + attention) model with one
NextN block, through both recurrent paths (checkpoint/replay and n_rs_seq rollback): random heads
accept nothing, so the tests check drafts were made, stats count them and the output is the
plain greedy one. EAGLE-3: a 4-layer llama target and a random 1-layer eagle3 draft, the same
checks. DFlash: the same target and a random 1-layer DFlash draft (spec.testing.make_tiny_dflash)
reading three target layers' inputs, the same checks by hand and through Engine; drafts that do
not fit their target are refused before llama.cpp would abort.
"""
from __future__ import annotations

import dataclasses
import gc
import subprocess
import sys
from pathlib import Path

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


def greedy_by_hand(s, ct, n_past, id_last, n_tokens, *, pass_batch=False, nonempty=False,
                   max_steps=None):
    """The reference's loop on sequence 0, driven by hand: draft, decode [id_last, *draft] with
    all logits, process (the batch itself with ``pass_batch``), accept the prefix greedy
    decoding agrees with. Returns the tokens generated after ``id_last``: at least
    ``n_tokens``, or what ``max_steps`` drafts gave."""
    out = []
    steps = 0
    while len(out) < n_tokens and (max_steps is None or steps < max_steps):
        steps += 1
        d = s.draft(0, n_past, id_last)
        assert d.dtype == np.int32 and len(d) <= s.n_draft_max and (len(d) > 0 or not nonempty)
        if pass_batch:
            batch = spec.Batch(np.r_[id_last, d], pos=n_past, all_logits=True)
            ct.decode(batch)
            s.process(batch)
        else:
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
    return out


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
    assert not s.need_embd() and not s.need_embd_pre_norm() and s.need_embd_layers() == ()
    prompt = mt.tokenize(PROMPT)
    ct.decode(prompt)
    s.process()
    s.begin(0, prompt)
    with pytest.raises(SessionProcessError):
        s.accept(0, 0)                          # before any draft
    id_last = int(np.argmax(ct.logits()[-1]))
    out = [id_last] + greedy_by_hand(s, ct, len(prompt), id_last, 31, nonempty=True)
    ref, _, _ = ct.generate_greedy(prompt, 32, stop_at_eog=False)
    assert out[:32] == ref.tolist()
    st = s.stats()
    assert st["accepted"] > 0 and st["drafted"] >= st["accepted"]
    assert st["process_calls"] == st["calls"] + 1
    for bad in (1, -1, 7):
        with pytest.raises(BadSeqIdError):
            s.draft(bad, len(prompt), id_last)
        with pytest.raises(BadSeqIdError):
            s.begin(bad, prompt)
    with pytest.raises(ValueError, match="last decode"):
        s.process([1, 2, 3])                    # not the batch just decoded
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
    from spec._loop._engine import Loop
    from spec._loop._params import Drafting
    ct, cd = Context(Model(pair[0]), n_ctx=128), Context(Model(pair[1]), n_ctx=128)
    other = Context(ct.model, n_ctx=128)
    s = DraftModelSession(ct, cd, 1, 4)
    with pytest.raises(ValueError, match="target_ctx"):
        Loop(other, s, Drafting(4))


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
        # as the reference's table: pre-norm (nextn) hidden states, no post-norm embeddings
        assert not e.drafter.need_embd() and e.drafter.need_embd_pre_norm()
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


def test_hybrid_target_by_hand_takes_the_checkpoint_path(pair, tmp_path, vocab_path):
    """A hybrid (gated-delta-net + attention) target driven by hand through a session, as
    spec.sessions documents: checkpoint_save before each verify decode; on a partial accept,
    checkpoint_restore and replay [id_last, *accepted] (processed like every decode). The hybrid
    shares the tiny llama's embedding and head (same seed), so that llama drafts for it with
    real, partial acceptance. The output is plain greedy decoding's."""
    hybrid = spec.testing.make_tiny_qwen35_mtp(tmp_path / "hybrid.gguf", seed=11, mtp=False,
                                               proj_scale=0.3, vocab=vocab_path("llama-spm"))
    mt = Model(hybrid)
    prompt = mt.tokenize(PROMPT)
    ref, _, _ = Context(mt, n_ctx=256).generate_greedy(prompt, 40, stop_at_eog=False)
    ct, cd = Context(mt, n_ctx=256), Context(Model(pair[0]), n_ctx=256)
    assert ct.recurrent and ct.n_rs_seq == 0
    with pytest.raises(ValueError, match="checkpoint_save"):
        ct.checkpoint_restore(0)                 # nothing saved yet
    s = DraftModelSession(ct, cd, 1, 4)
    batch = spec.Batch(prompt)
    ct.decode(batch)
    s.process(batch)
    n_past, out, replays = len(prompt), [_greedy_argmax(ct)], []
    while len(out) < 40:
        id_last = out[-1]
        d = s.draft(0, n_past, id_last)
        assert ct.checkpoint_save(0) == n_past
        batch = spec.Batch([id_last, *d], pos=n_past, all_logits=True)
        ct.decode(batch)
        s.process(batch)
        am = ct.logits().argmax(1)
        n = 0
        while n < len(d) and am[n] == d[n]:
            n += 1
        s.accept(0, n)
        if n < len(d):
            # the recurrent state cannot drop the rejected rows: restore, then replay
            assert not ct.kv_remove(0, n_past + 1 + n, -1)
            assert ct.checkpoint_restore(0) == n_past
            assert ct.kv_pos_max(0) == n_past - 1
            replay = spec.Batch([id_last, *d[:n]], pos=n_past)
            ct.decode(replay)
            s.process(replay)
            replays.append(n)
        out += [int(t) for t in d[:n]] + [int(am[n])]
        n_past += 1 + n
    assert out[:40] == ref.tolist()
    assert ct.kv_pos_max(0) == n_past - 1
    assert any(replays) and s.stats()["accepted"] > 0      # replays of accepted tokens
    assert len(replays) < s.stats()["calls"]                # and drafts accepted whole


def test_checkpoints_work_on_any_context(pair):
    """checkpoint_save / checkpoint_restore on an attention-only context (it saves the cells
    themselves): the restored sequence decodes as if the rolled-back tokens never were."""
    m = Model(pair[0])
    ct = Context(m, n_ctx=128)
    p = m.tokenize(PROMPT)
    ct.decode(p)
    assert ct.checkpoint_save(0) == len(p)
    ct.decode([5, 6, 7], pos=len(p))
    assert ct.checkpoint_restore(0) == len(p) and ct.kv_pos_max(0) == len(p) - 1
    assert ct.checkpoint_restore(0) == len(p)              # it stays until the next save
    ct.decode([5], pos=len(p))
    ref = Context(m, n_ctx=128)
    ref.decode(np.r_[p, 5])
    np.testing.assert_allclose(ct.logits()[-1], ref.logits()[-1], atol=1e-4)
    for bad in (-1, 1):
        with pytest.raises(ValueError, match="seq_id"):
            ct.checkpoint_save(bad)
    ct.close()
    with pytest.raises(ClosedError):
        ct.checkpoint_save(0)


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
        assert not e.drafter.need_embd() and not e.drafter.need_embd_pre_norm()
        assert e.drafter.need_embd_layers() == (0, 1, 2)    # the draft's eagle3.target_layers
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
    with pytest.raises(SessionInitError, match="not a DFlash model"):
        spec.DFlashSession(ct, not_eagle, 1, 3)
    with pytest.raises(ValueError, match="draft_model"):
        Engine(tgt, drafter="dflash", n_ctx=128)


# -- DFlash (the 4-layer llama target + a 1-layer dflash draft) ---------------------------------

@pytest.fixture(scope="module")
def dflash_pair(eagle3_pair, tmp_path_factory, vocab_path):
    """The EAGLE-3 tests' target and a DFlash draft reading the inputs of its layers 1..3 with
    blocks of 4 (drafts of at most 3 tokens)."""
    dft = spec.testing.make_tiny_dflash(tmp_path_factory.mktemp("dflash") / "dflash.gguf",
                                        vocab=vocab_path("llama-spm"), target_layers=(1, 2, 3),
                                        block_size=4)
    return eagle3_pair[0], dft


@pytest.fixture(scope="module")
def plain_dflash(dflash_pair):
    with Engine(dflash_pair[0], drafter=None, n_ctx=256) as e:
        return e.generate(PROMPT, max_tokens=24, trace=True)


def dflash_contexts(pair, n_ctx=256):
    """A target context and a DFlash draft context borrowing its embeddings and head."""
    ct = Context(Model(pair[0]), n_ctx=n_ctx)
    return ct, Context(Model(pair[1]), n_ctx=n_ctx, ctx_other=ct)


@pytest.mark.parametrize("n_draft", [3, 8], ids=["within-block", "clamped-to-block"])
def test_dflash_engine(dflash_pair, plain_dflash, n_draft):
    """Drafts are made and counted, the output is plain greedy's (random draft: nothing is
    accepted), and no draft is longer than block_size - 1 = 3 whatever n_draft asks."""
    tgt, dft = dflash_pair
    with Engine(tgt, drafter="dflash", n_draft=n_draft, n_ctx=256,
                drafter_params={"draft_model": dft}) as e:
        assert isinstance(e.drafter, spec.DFlashSession)
        assert not e.drafter.need_embd() and not e.drafter.need_embd_pre_norm()
        assert e.drafter.need_embd_layers() == (1, 2, 3)    # the draft's dflash.target_layers
        assert e.draft_ctx.ctx_other is e.ctx
        r = e.generate(PROMPT, max_tokens=24)
        st = e.drafter.stats()
    assert_lossless(plain_dflash, r)
    assert r.stats.n_drafted > 0 and st["drafted"] == r.stats.n_drafted
    assert st["accepted"] == r.stats.n_accepted
    assert st["drafted"] <= 3 * st["calls"]
    assert st["process_calls"] == 1 + r.stats.n_steps


def test_dflash_engine_batch(dflash_pair):
    """Three sequences in one verify batch: process() injects each sequence's rows into its
    own part of the draft cache; the engine, built for one sequence, rebuilds both contexts
    (the new draft context borrowing from the new target context)."""
    tgt, dft = dflash_pair
    with Engine(tgt, drafter=None, n_ctx=256) as e:
        plain = [e.generate(p, max_tokens=16, trace=True) for p in BATCH]
    with Engine(tgt, drafter="dflash", n_draft=3, n_ctx=256,
                drafter_params={"draft_model": dft}) as e:
        results = e.generate_batch(BATCH, n_parallel=3, max_tokens=16)
        assert e.ctx.n_seq_max == 3 and e.draft_ctx.n_seq_max == 3
        assert e.draft_ctx.ctx_other is e.ctx and e.drafter.target_ctx is e.ctx
    for p, r in zip(plain, results):
        assert_lossless(p, r)
        assert r.stats.n_drafted > 0


def test_dflash_session_by_hand(dflash_pair):
    from spec.drafters.sessions._sessions import _ctx_extraction
    ct, cd = dflash_contexts(dflash_pair)
    s = spec.DFlashSession(ct, cd, 1, 3)
    assert (s.need_embd(), s.need_embd_pre_norm(), s.need_embd_layers()) == (False, False,
                                                                             (1, 2, 3))
    assert _ctx_extraction(ct)["layers"] == (1, 2, 3)
    prompt = ct.model.tokenize(PROMPT)
    ct.decode(prompt)
    s.process()
    assert cd.kv_pos_max(0) == len(prompt) - 1     # one injected row per target position
    s.begin(0, prompt)
    id_last = _greedy_argmax(ct)
    out = [id_last] + greedy_by_hand(s, ct, len(prompt), id_last, 15, nonempty=True)
    ref, _, _ = ct.generate_greedy(prompt, 16, stop_at_eog=False)
    assert out[:16] == ref.tolist()
    st = s.stats()
    assert st["drafted"] == 3 * st["calls"] > 0     # p_min = 0: every block is read whole
    assert st["process_calls"] == st["calls"] + 1


def test_dflash_drafts_read_the_target(dflash_pair):
    """The same token at the same position drafts differently after different contexts: the
    drafts come from the target's injected hidden states, not from the token alone."""
    drafts = set()
    for text in BATCH:
        ct, cd = dflash_contexts(dflash_pair, n_ctx=64)
        s = spec.DFlashSession(ct, cd, 1, 3)
        toks = ct.model.tokenize(text)[:8]
        ct.decode(toks)
        s.process()
        drafts.add(tuple(s.draft(0, len(toks), 100).tolist()))
    assert len(drafts) > 1, drafts


DFLASH_MISFITS = """
import sys
import spec.testing
from spec import Context, DFlashSession, Model
target, vocab, bpe, out = sys.argv[1:5]
cases = {
    "last layer": dict(target_layers=(1, 2, 4)),   # input 4 = n_layer: a llama graph lacks it
    "beyond": dict(target_layers=(1, 2, 5)),
    "width": dict(n_embd=32, n_head=2),
    "vocabulary": dict(vocab=bpe),
    "no mask": dict(mask_token_id=None),
}
ct = Context(Model(target), n_ctx=64)
for name, kwargs in cases.items():
    path = spec.testing.make_tiny_dflash(f"{out}/{name}.gguf", **{"vocab": vocab, **kwargs})
    try:
        s = DFlashSession(ct, Context(Model(path), n_ctx=64, ctx_other=ct), 1, 3)
        ct.decode(ct.model.tokenize("Hello world"))
        s.process()
        print(name, "-> ran", s.draft(0, 3, 5), flush=True)
    except Exception as e:
        print(name, "->", type(e).__name__, e, flush=True)
"""


def test_dflash_draft_that_does_not_fit_its_target(dflash_pair, tmp_path, vocab_path):
    """Each of these aborts the process in llama.cpp: a layer input the target's graph lacks
    (llama-graph.cpp:1384) or one past its layers (llama-context.cpp:1240), another width
    (ggml.c:3354), another vocabulary size (ggml-backend.cpp:283); a draft without a mask
    token drafts nothing, ever. spec refuses each with an exception naming the problem (run
    in a child process, which an abort would kill)."""
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-c", DFLASH_MISFITS, str(dflash_pair[0]),
                        str(vocab_path("llama-spm")), str(vocab_path("llama-bpe")),
                        str(tmp_path)], cwd=root, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    got = dict(line.split(" -> ", 1) for line in r.stdout.splitlines() if " -> " in line)
    expected = {
        "last layer": "SessionInitError DFlash draft", "beyond": "SessionInitError DFlash draft",
        "width": "ValueError", "vocabulary": "ValueError", "no mask": "SessionInitError",
    }
    for name, start in expected.items():
        assert got.get(name, "").startswith(start), (name, got.get(name), r.stderr[-2000:])
    assert "target layers [4]" in got["last layer"] and "inputs 0..3" in got["last layer"]
    assert "target layers [5]" in got["beyond"]
    assert "32 wide" in got["width"] and "64 wide" in got["width"]
    assert "output head" in got["vocabulary"]
    assert "mask token" in got["no mask"]


def test_dflash_refuses_a_gemma3_target(default_model_path, tmp_path):
    """Gemma-3's graph extracts no layer inputs: llama.cpp would abort the target's next
    decode (llama-graph.cpp:1384); the session refuses (in a child process, as above)."""
    code = """
import sys
import spec.testing
from spec import Context, DFlashSession, Model
ct = Context(Model(sys.argv[1]), n_ctx=64)
path = spec.testing.make_tiny_dflash(sys.argv[2], vocab=sys.argv[1], n_embd=ct.model.n_embd,
                                     target_layers=(1, 2))
try:
    DFlashSession(ct, Context(Model(path), n_ctx=64, ctx_other=ct), 1, 3)
except Exception as e:
    print("refused:", type(e).__name__, e)
"""
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-c", code, str(default_model_path),
                        str(tmp_path / "g3.gguf")], cwd=root, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "refused: SessionInitError target architecture 'gemma3'" in r.stdout, r.stdout


# -- the reference's session contracts ---------------------------------------------------------
# From the reference (llama-cpp-4's MtpSession / Eagle3Session, ../shared/reference/seeds): after
# every target decode, process(&batch) with the batch just decoded; draft; verify; accept(seq, n).
# begin() is optional; need_embd / need_embd_pre_norm report what the backend asked of the target
# context (MTP: false / true); the config has with_n_min / with_p_min builders.

def _greedy_argmax(ctx):
    return int(np.argmax(ctx.logits()[-1]))


def test_config_builders():
    c = SessionConfig(1, 4)
    c2 = c.with_n_min(2)
    assert (c.n_min, c2.n_min, c2.n_seq, c2.n_draft_max, c2.p_min) == (0, 2, 1, 4, 0.0)
    c3 = c2.with_p_min(0.1)
    assert (c3.n_min, c3.p_min) == (2, 0.1) and c2.p_min == 0.0     # new configs, old unchanged
    assert SessionConfig(1, 4).with_p_min(0.1).with_n_min(2) == c3
    with pytest.raises(dataclasses.FrozenInstanceError):
        c3.n_min = 1
    for bad in (5, -1, 1.5, True, None, "2"):
        with pytest.raises(InvalidConfigError):
            c.with_n_min(bad)
    for bad in (-0.1, 1.5, float("nan"), True, None, "0.1"):
        with pytest.raises(InvalidConfigError):
            c.with_p_min(bad)


def test_need_embd_comes_from_the_backend(pair, mtp_path, eagle3_pair, tmp_path, vocab_path):
    from spec.drafters.sessions._sessions import _ctx_extraction
    # draft-simple asks nothing of the target; a target that already extracts keeps doing so
    ct = Context(Model(pair[0]), n_ctx=128, embeddings=True)
    s = DraftModelSession(ct, Context(Model(pair[1]), n_ctx=128), 1, 4)
    assert (s.need_embd(), s.need_embd_pre_norm(), s.need_embd_layers()) == (False, False, ())
    assert _ctx_extraction(ct)["embeddings"]
    # MTP: the reference's table, need_embd false and need_embd_pre_norm true
    m = Model(mtp_path, load_mtp=True)
    ct = Context(m, n_ctx=128)
    s = MtpSession(ct, Context(m, n_ctx=128, ctx_type="mtp"), 1, 3)
    assert (s.need_embd(), s.need_embd_pre_norm(), s.need_embd_layers()) == (False, True, ())
    assert _ctx_extraction(ct)["nextn"] and not _ctx_extraction(ct)["nextn_masked"]
    # EAGLE-3: the input of each target layer it reads; the target's last layer (4 = n_layer)
    # is read as the pre-norm hidden state instead
    tgt, _ = eagle3_pair
    reads_last = spec.testing.make_tiny_eagle3(tmp_path / "e3last.gguf", n_embd_target=64,
                                              vocab=vocab_path("llama-spm"),
                                              target_layers=(1, 2, 4))
    for path, layers, pre_norm in [(eagle3_pair[1], (0, 1, 2), False),
                                   (reads_last, (1, 2), True)]:
        ct = Context(Model(tgt), n_ctx=128)
        s = spec.Eagle3Session(ct, Context(Model(path), n_ctx=128, ctx_other=ct), 1, 3)
        assert (s.need_embd(), s.need_embd_pre_norm(), s.need_embd_layers()) == \
            (False, pre_norm, layers)
        assert _ctx_extraction(ct)["layers"] == layers


def test_begin_is_optional_and_process_takes_the_batch(pair):
    """The reference's loop, without begin(): decode(batch); process(batch); draft; verify;
    accept. Lossless, with drafts accepted."""
    tgt, dft = pair
    mt = Model(tgt)
    ct, cd = Context(mt, n_ctx=256), Context(Model(dft), n_ctx=256)
    s = DraftModelSession.from_config(ct, cd, SessionConfig(1, 4).with_n_min(1))
    assert (s.n_min, s.p_min) == (1, 0.0)
    prompt = mt.tokenize(PROMPT)
    batch = spec.Batch(prompt)
    ct.decode(batch)
    s.process(batch)
    id_last = _greedy_argmax(ct)
    out = [id_last] + greedy_by_hand(s, ct, len(prompt), id_last, 31, pass_batch=True)
    ref, _, _ = ct.generate_greedy(prompt, 32, stop_at_eog=False)
    assert out[:32] == ref.tolist()
    st = s.stats()
    assert st["accepted"] > 0 and st["calls"] > 0


def test_mtp_without_begin(mtp_path):
    """MTP driven as the reference's quick start: process() after every target decode, then
    draft(); no begin(). Drafts are made (never verified here: the hybrid target advances one
    token at a time, accept(seq, 0) each step)."""
    m = Model(mtp_path, load_mtp=True)
    prompt = m.tokenize(PROMPT)
    ref, _, _ = Context(m, n_ctx=256).generate_greedy(prompt, 8, stop_at_eog=False)
    ct = Context(m, n_ctx=256)
    s = MtpSession(ct, Context(m, n_ctx=256, ctx_type="mtp"), 1, 3)
    batch = spec.Batch(prompt)
    ct.decode(batch)
    s.process(batch)
    n_past, out, drafted = len(prompt), [_greedy_argmax(ct)], 0
    while len(out) < 8:
        d = s.draft(0, n_past, out[-1])
        assert d.dtype == np.int32 and len(d) <= 3
        drafted += len(d)
        s.accept(0, 0)
        batch = spec.Batch([out[-1]], pos=n_past)
        ct.decode(batch)
        s.process(batch)
        n_past += 1
        out.append(_greedy_argmax(ct))
    assert drafted > 0
    assert out == ref.tolist()


def test_process_refuses_another_batch(pair):
    mt = Model(pair[0])
    ct, cd = Context(mt, n_ctx=256, n_batch=16), Context(Model(pair[1]), n_ctx=256)
    s = DraftModelSession(ct, cd, 1, 4)
    with pytest.raises(SessionProcessError, match="decoded nothing"):
        s.process()
    toks = np.resize(mt.tokenize(PROMPT), 40).astype(np.int32)
    p10 = toks[:10]
    ct.decode(spec.Batch(p10))
    for ok in (spec.Batch(p10), spec.Batch(p10, pos=0, seq_id=0), p10, p10.tolist(), None):
        s.process(ok)
    for bad, what in [(spec.Batch(p10, pos=3), "position"), (spec.Batch(p10[:-1]), "took 10"),
                      (spec.Batch(p10[::-1]), "not the target"),
                      (spec.Batch(p10, seq_id=1), "seq_id"), (toks[:11], "took 10"),
                      (3.5, "1-D")]:
        with pytest.raises(ValueError, match=what):
            s.process(bad)
    for bad in ("abc", b"abc", {"tokens": p10}):
        with pytest.raises(TypeError):
            s.process(bad)
    with pytest.raises(TypeError, match="from the Batch"):
        ct.decode(spec.Batch(p10), pos=0)
    # A decode longer than n_batch is split: only its last part can be processed.
    ct.kv_clear()
    ct.decode(toks)
    with pytest.raises(ValueError, match="n_batch=16"):
        s.process(toks)
    ct.kv_clear()
    for i in range(0, len(toks), 16):           # the reference's way: decode, process, ...
        chunk = spec.Batch(toks[i:i + 16], pos=i)
        ct.decode(chunk)
        s.process(chunk)
    assert cd.kv_pos_max(0) == len(toks) - 1


@pytest.mark.parametrize("kwargs, exc", [
    (dict(tokens=[]), ValueError), (dict(tokens="abc"), TypeError),
    (dict(tokens=[1, -2]), ValueError), (dict(tokens=[[1, 2]]), ValueError),
    (dict(tokens=[1.5]), TypeError), (dict(tokens=[2**31]), ValueError),
    (dict(tokens=[1], pos=-2), ValueError), (dict(tokens=[1], pos=1.0), TypeError),
    (dict(tokens=[1], seq_id=True), TypeError), (dict(tokens=[1], seq_id=-1), ValueError),
    (dict(tokens=[1], all_logits=1), TypeError),
])
def test_batch_rejects(kwargs, exc):
    with pytest.raises(exc):
        spec.Batch(**kwargs)


def test_batch_is_a_frozen_copy():
    src = np.array([5, 6, 7], dtype=np.int64)
    b = spec.Batch(src, pos=np.int64(4))
    src[0] = 9
    assert b.tokens.tolist() == [5, 6, 7] and b.tokens.dtype == np.int32 and b.pos == 4
    assert len(b) == 3 and not b.tokens.flags.writeable
    with pytest.raises(dataclasses.FrozenInstanceError):
        b.pos = 0


def prefilled_session(pair):
    """A draft-model session whose target context holds PROMPT, processed (not begun)."""
    mt = Model(pair[0])
    ct, cd = Context(mt, n_ctx=256), Context(Model(pair[1]), n_ctx=256)
    s = DraftModelSession(ct, cd, 1, 4)
    prompt = mt.tokenize(PROMPT)
    ct.decode(prompt)
    s.process()
    return ct, s, prompt


def test_accept_is_checked_against_the_last_draft(pair):
    ct, s, prompt = prefilled_session(pair)
    for n in (0, 1):
        with pytest.raises(SessionProcessError, match="without a draft"):
            s.accept(0, n)                      # before any draft
    d = s.draft(0, len(prompt), _greedy_argmax(ct))
    assert len(d) > 0
    for n in (len(d) + 1, 4 + 1, -1):
        with pytest.raises(ValueError, match="last draft"):
            s.accept(0, n)
    with pytest.raises(BadSeqIdError):
        s.accept(1, 0)
    s.accept(0, len(d))
    with pytest.raises(SessionProcessError, match="already accepted"):
        s.accept(0, 0)                          # once per draft


def test_print_stats_prints_llama_cpp_statistics(pair, capfd):
    """spec's counters, then llama.cpp's own statistics line for the type (which its common_log
    writes to file descriptor 2: collected and printed to stdout), with the same counts."""
    import re
    ct, s, prompt = prefilled_session(pair)
    s.begin(0, prompt)
    greedy_by_hand(s, ct, len(prompt), _greedy_argmax(ct), 10**6, max_steps=4)
    capfd.readouterr()
    s.print_stats()
    out, err = capfd.readouterr()
    st = s.stats()
    assert f"DraftModelSession: {st['calls']} drafts, {st['drafted']} drafted" in out
    lines = [ln for ln in out.splitlines() if "statistics" in ln and "draft-simple" in ln]
    assert len(lines) == 1, out + err
    assert "statistics" not in err
    m = re.search(r"#calls\(b,g,a\) =\s*(\d+)\s+(\d+)\s+(\d+).*#gen tokens =\s*(\d+), "
                  r"#acc tokens =\s*(\d+)", lines[0])
    assert m, lines[0]
    assert tuple(int(x) for x in m.groups()) == (1, 4, 4, st["drafted"], st["accepted"])


ACCEPT_AFTER_EMPTY_DRAFT = """
import sys
from spec import Context, DraftModelSession, Model, SessionConfig
ct, cd = Context(Model(sys.argv[1]), n_ctx=128), Context(Model(sys.argv[2]), n_ctx=128)
s = DraftModelSession.from_config(ct, cd, SessionConfig(1, 4).with_p_min(1.0))
p = ct.model.tokenize("The quick brown fox")
ct.decode(p)
s.process()
d = s.draft(0, len(p), 5)
assert len(d) == 0, d               # p_min = 1: nothing is confident enough
try:
    s.accept(0, 1)                  # upstream: GGML_ASSERT(n_accepted == 0), the process aborts
except ValueError as e:
    print("refused:", e)
s.accept(0, 0)
print("alive")
"""


def test_accept_after_an_empty_draft_cannot_abort(pair):
    """llama.cpp asserts when a sequence whose drafts were all empty accepts tokens; the session
    refuses first (run in a child process, which an abort would kill)."""
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-c", ACCEPT_AFTER_EMPTY_DRAFT, str(pair[0]),
                        str(pair[1])], cwd=root, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "refused: n_accepted must be in [0, 0]" in r.stdout and "alive" in r.stdout


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
