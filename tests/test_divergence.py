"""spec.divergence: the decode log, its exact replay, and the proof of a rounding flip."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import spec
from spec.divergence import replay_argmax
from spec.engine import Engine

from _lossless import assert_lossless

PROMPT = "def add(a, b):\n    return a + b\n\nprint(add(1, 2))\n"


@pytest.fixture(scope="module")
def traced(bigram_model):
    """A plain and a speculative traced run of the same prompt (their tokens are equal). The
    prompt holds a corrupted copy of the continuation, so drafts are accepted in part."""
    head = bigram_model.tokenize(PROMPT)
    with Engine(bigram_model, drafter=None, n_ctx=1024) as engine:
        cont = engine.generate(head, max_tokens=120).tokens
        cont[::7] = (cont[::7] + 5) % bigram_model.n_vocab
        prompt = np.concatenate([head, cont, head[1:]])
        plain = engine.generate(prompt, max_tokens=60, trace=True)
    with Engine(bigram_model, drafter="ngram-simple", n_draft=6, n_ctx=1024) as engine:
        fast = engine.generate(prompt, max_tokens=60, trace=True)
    assert fast.stats.n_accepted > 0, "no draft accepted: the verify batches are single rows"
    return plain, fast


def test_the_log_holds_every_decode_and_kv_edit(traced):
    plain, fast = traced
    ops = fast.decode_trace.ops
    kinds = {op[0] for op in ops}
    assert kinds >= {"decode", "remove"}
    rows = [op[1] for op in ops if op[0] == "decode"]
    assert all(r.dtype == np.int32 and r.shape[1] == 4 for r in rows)
    # the prompt's rows, then verify batches wider than one row (drafts were accepted)
    assert rows[0][0, 1] == 0 and max(len(r) for r in rows) > 1
    # plain decoding after the prompt is one row per decode, one decode per token
    plain_rows = [op[1] for op in plain.decode_trace.ops if op[0] == "decode"]
    assert all(len(r) == 1 for r in plain_rows[1:])
    assert len(plain_rows) - 1 == len(plain.tokens) - 1


@pytest.mark.parametrize("which", ["plain", "fast"])
def test_the_replay_reproduces_every_token(bigram_model, traced, which):
    result = traced[0] if which == "plain" else traced[1]
    for i in range(0, len(result.tokens), 7):
        got = replay_argmax(bigram_model, result.decode_trace, i)
        assert got.token == result.tokens[i], i
    # exact, not merely the same argmax: the plain run's recorded margins come back bit for bit
    if which == "plain":
        for i in (0, 13, 40):
            assert replay_argmax(bigram_model, result.decode_trace, i).margin == \
                pytest.approx(float(result.margins[i]), abs=0, rel=1e-6)


def test_a_wrong_token_is_not_excused(bigram_model, traced):
    """A run that emitted something other than the target's argmax (as a verification bug
    would) fails the proof, whatever the margin."""
    plain, fast = traced
    i = 30
    bad_tokens = fast.tokens.copy()
    bad_tokens[i] = (bad_tokens[i] + 1) % bigram_model.n_vocab
    bad = dataclasses.replace(fast, tokens=bad_tokens)
    with pytest.raises(AssertionError, match="a bug, not rounding"):
        assert_lossless(bigram_model, plain, bad)


def test_a_stale_kv_cell_is_reported(bigram_model, traced):
    """Drop the engine's rollback of rejected rows from the log: the replay refuses the next
    decode instead of reproducing the stale cells."""
    _, fast = traced
    trace = fast.decode_trace
    rollbacks = [k for k, op in enumerate(trace.ops) if op[0] == "remove" and op[2] > 0]
    assert rollbacks, "no partial rejection in this run"
    k = rollbacks[0]
    broken = dataclasses.replace(trace, ops=trace.ops[:k] + trace.ops[k + 1:])
    with pytest.raises(AssertionError, match="does not continue sequence"):
        replay_argmax(bigram_model, broken, len(fast.tokens) - 1)


def test_equal_runs_need_no_proof(bigram_model, traced):
    plain, fast = traced
    assert assert_lossless(bigram_model, plain, fast) is False


def test_recording_is_off_unless_asked(bigram_model):
    with Engine(bigram_model, drafter="suffix", n_ctx=256) as engine:
        assert engine.generate(PROMPT, max_tokens=8).decode_trace is None
        assert engine.ctx.n_recorded == 0


def test_a_batch_job_records_each_request(bigram_model):
    prompts = [PROMPT, "The quick brown fox", "Once upon a time"]
    with Engine(bigram_model, drafter="ngram-simple", n_ctx=1024) as engine:
        results = engine.generate_batch(prompts, n_parallel=2, max_tokens=24, trace=True)
        assert engine.ctx.n_recorded == 0, "recording stops with the job"
    for r in results:
        t = r.decode_trace
        assert t is not None and t.n_prompt == len(bigram_model.tokenize(prompts[results.index(r)]))
        for i in (0, len(r.tokens) - 1):
            assert replay_argmax(bigram_model, t, i).token == r.tokens[i]


def test_decode_rows_rejects_bad_input(bigram_model):
    with spec.Context(bigram_model, n_ctx=64, n_batch=8) as ctx:
        with pytest.raises(ValueError, match="shape"):
            ctx.decode_rows(np.zeros((2, 3), dtype=np.int32))
        with pytest.raises(ValueError, match="empty"):
            ctx.decode_rows(np.zeros((0, 4), dtype=np.int32))
        with pytest.raises(ValueError, match="at most n_batch"):
            ctx.decode_rows(np.zeros((9, 4), dtype=np.int32))
        with pytest.raises(ValueError, match="positions"):
            ctx.decode_rows([[1, ctx.n_ctx, 0, 1]])
        with pytest.raises(ValueError, match="seq_id"):
            ctx.decode_rows([[1, 0, 1, 1]])
        with pytest.raises(ValueError):
            ctx.decode_rows([[bigram_model.n_vocab, 0, 0, 1]])
        ctx.decode_rows([[1, 0, 0, 0], [2, 1, 0, 1]])
        assert ctx.logits().shape == (1, bigram_model.n_vocab)
