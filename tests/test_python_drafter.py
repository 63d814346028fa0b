"""Drafters written in Python (spec.PythonDrafter): the loop calls their methods, their drafts
match the same logic written as a plain reference, output stays lossless, and their errors end
the generation without breaking the engine."""
from __future__ import annotations

import numpy as np
import pytest

import spec
from spec.engine import Engine

N_CTX = 1024
PROMPTS = ["alpha beta gamma delta", "river stone cloud market engine", "paper window silver"]


class RepeatLast(spec.PythonDrafter):
    """Repeat what followed the last earlier occurrence of id_last (a numpy prompt lookup),
    recording every call."""

    def __init__(self):
        self.calls = []
        self.fail_after = None          # raise on this many-th draft call

    def begin(self, prompt, seq_id=0):
        self.calls.append(("begin", seq_id, len(prompt)))

    def draft(self, history, id_last, n_max, seq_id=0):
        n_drafts = sum(c[0] == "draft" for c in self.calls)
        if self.fail_after is not None and n_drafts >= self.fail_after:
            raise RuntimeError("drafter failed on purpose")
        self.calls.append(("draft", seq_id, len(history), id_last, n_max))
        return reference_draft(np.array(history), id_last, n_max)

    def accept(self, n_accepted, seq_id=0):
        self.calls.append(("accept", seq_id, n_accepted))

    def end(self, output, seq_id=0):
        self.calls.append(("end", seq_id, len(output)))


def reference_draft(history: np.ndarray, id_last: int, n_max: int) -> list[int]:
    """The same logic as RepeatLast, as plain Python over a list."""
    tokens = history.tolist()
    for i in range(len(tokens) - 1, -1, -1):
        if tokens[i] == id_last:
            return tokens[i + 1:i + 1 + n_max]
    return []


@pytest.fixture(scope="module")
def plain(bigram_model):
    with Engine(bigram_model, drafter=None, n_ctx=N_CTX, n_threads=1) as engine:
        return [engine.generate(p, max_tokens=96) for p in PROMPTS]


@pytest.mark.parametrize("n_draft", [4, "auto"])
def test_the_engine_runs_a_python_drafter_losslessly(bigram_model, plain, n_draft):
    d = RepeatLast()
    with Engine(bigram_model, drafter=d, n_draft=n_draft, n_ctx=N_CTX, n_threads=1) as engine:
        results = [engine.generate(p, max_tokens=96) for p in PROMPTS]
    for got, want in zip(results, plain):
        np.testing.assert_array_equal(got.tokens, want.tokens)
    assert sum(r.stats.n_accepted for r in results) > 0, "the drafter never helped"
    assert sum(r.stats.draft_s for r in results) > 0
    kinds = [c[0] for c in d.calls]
    assert kinds.count("begin") == kinds.count("end") == len(PROMPTS)
    # every draft call saw the history the reference saw: its length grows by the accepted
    # tokens + 1 from one draft to the next, within a generation
    drafts = [c for c in d.calls if c[0] == "draft"]
    assert drafts and all(c[4] > 0 for c in drafts)


def test_each_draft_is_the_reference_draft_of_the_same_history(bigram_model):
    seen = []

    class Checked(RepeatLast):
        def draft(self, history, id_last, n_max, seq_id=0):
            out = super().draft(history, id_last, n_max, seq_id)
            seen.append((np.array(history), id_last, n_max, list(out)))
            return out

    with Engine(bigram_model, drafter=Checked(), n_draft=6, n_ctx=N_CTX, n_threads=1) as engine:
        result = engine.generate(PROMPTS[0], max_tokens=64)
    assert seen
    full = np.concatenate([bigram_model.tokenize(PROMPTS[0]), result.tokens])
    for history, id_last, n_max, out in seen:
        n = len(history)
        np.testing.assert_array_equal(history, full[:n])    # prompt + accepted output so far
        assert id_last == full[n]
        assert out == reference_draft(history, id_last, n_max)


def test_batches_and_simulate_drive_it_too(bigram_model, plain):
    d = RepeatLast()
    with Engine(bigram_model, drafter=d, n_draft=4, n_ctx=N_CTX, n_threads=1) as engine:
        results = engine.generate_batch(PROMPTS, n_parallel=3, max_tokens=96)
    for got, want in zip(results, plain):
        np.testing.assert_array_equal(got.tokens, want.tokens)
    assert {c[1] for c in d.calls if c[0] == "draft"} == {0, 1, 2}      # three sequences
    stream = np.concatenate([bigram_model.tokenize(PROMPTS[0]), plain[0].tokens])
    sim = spec.simulate(RepeatLast(), stream, n_max=4, prompt_len=len(stream) - 96)
    assert sim.n_accepted > 0


def test_an_error_in_the_drafter_ends_the_generation_and_the_engine_goes_on(bigram_model,
                                                                            plain):
    d = RepeatLast()
    d.fail_after = 3
    with Engine(bigram_model, drafter=d, n_draft=4, n_ctx=N_CTX, n_threads=1) as engine:
        with pytest.raises(RuntimeError, match="failed on purpose"):
            engine.generate(PROMPTS[0], max_tokens=96)
        with pytest.raises(RuntimeError, match="failed on purpose"):
            engine.generate_batch(PROMPTS, n_parallel=2, max_tokens=96)
        d.fail_after = None
        got = engine.generate(PROMPTS[0], max_tokens=96)
        batch = engine.generate_batch(PROMPTS, n_parallel=2, max_tokens=96)
    np.testing.assert_array_equal(got.tokens, plain[0].tokens)
    for r, want in zip(batch, plain):
        np.testing.assert_array_equal(r.tokens, want.tokens)


@pytest.mark.parametrize("returned, message", [
    ([1, 2, 3, 4, 5], "returned 5 tokens, more than n_max=4"),
    ([[1, 2]], "1-D sequence of token ids"),
    ([1.5], "1-D sequence of token ids"),
    ([-1], "token id outside"),
    ([2 ** 40], "token id outside"),
])
def test_bad_drafts_are_named(bigram_model, returned, message):
    class Bad(spec.PythonDrafter):
        def draft(self, history, id_last, n_max, seq_id=0):
            return returned

    with Engine(bigram_model, drafter=Bad(), n_draft=4, n_ctx=N_CTX, n_threads=1) as engine:
        with pytest.raises(ValueError, match=message):
            engine.generate(PROMPTS[0], max_tokens=8)


def test_defaults_draft_nothing(bigram_model, plain):
    with Engine(bigram_model, drafter=spec.PythonDrafter(), n_draft=4, n_ctx=N_CTX,
                n_threads=1) as engine:
        got = engine.generate(PROMPTS[0], max_tokens=96)
        engine.reset_drafter()
    np.testing.assert_array_equal(got.tokens, plain[0].tokens)
    assert got.stats.n_drafted == 0
