"""Stop strings: the scanner on synthetic pieces, and speculative steps that accept tokens past
a stop string (single sequence and batch)."""
from __future__ import annotations

import numpy as np
import pytest

from spec._loop._stops import StopScanner
from spec.engine import Engine

PIECES = {0: b"def", 1: b" f", 2: b"(x", 3: b"):", 4: b"\n`", 5: b"``", 6: b"\n", 7: b"Th",
          8: b"e end", 9: b"\xc3", 10: b"\xa9", 11: b"!"}


def scanner(stop):
    return StopScanner(lambda t: PIECES[t], stop)


def test_a_stop_completed_mid_step_keeps_the_tokens_up_to_it():
    sc = scanner(["```"])
    tokens = [0, 1, 2, 3]
    assert sc.feed(tokens) == "def f(x):" and not sc.found
    tokens += [4, 5, 6, 7]             # one step: "```" ends in token 5, two tokens follow
    assert sc.feed(tokens) == "\n" and sc.found
    assert sc.n_keep == 6 and sc.text == "def f(x):\n"
    assert sc.feed(tokens + [8]) == "" and sc.close() == "" and sc.text == "def f(x):\n"


def test_a_stream_never_shows_the_start_of_a_stop_string():
    sc = scanner(["```"])
    shown = [sc.feed([0, 1, 2, 3, 4])]          # ends in "\n`": "`" may start the stop
    assert shown == ["def f(x):\n"]
    shown.append(sc.feed([0, 1, 2, 3, 4, 5]))
    assert sc.found and "".join(shown) == sc.text == "def f(x):\n"


def test_held_back_text_is_shown_when_no_stop_follows():
    sc = scanner(["```"])
    assert sc.feed([0, 4]) == "def\n"                # "`" may start the stop: held back
    assert sc.feed([0, 4, 6]) == "`\n" and not sc.found
    assert sc.feed([0, 4, 6, 5]) == ""              # "``" held back
    assert sc.feed([0, 4, 6, 5, 7]) == "``Th"
    assert sc.close() == "" and sc.text == "def\n`\n``Th" and not sc.found


def test_earliest_of_several_stops_and_multibyte_pieces():
    sc = scanner(["end", "é"])
    assert sc.feed([7, 9]) == "Th"                 # the lone "\xc3" decodes to nothing yet
    assert sc.feed([7, 9, 10, 8]) == "" and sc.found
    assert sc.text == "Th" and sc.n_keep == 3      # "é" is complete at token 10
    sc = scanner(["end"])
    assert sc.feed([7, 8]) == "The " and sc.text == "The " and sc.n_keep == 2
    assert scanner([]).feed([7, 8, 11]) == "The end!"


def assert_stops_at(engine, result, stop):
    """result.tokens end with the token that completes the stop string; the text ends before it."""
    text = lambda toks: b"".join(engine.model.token_to_piece(int(t)) for t in toks).decode(
        "utf-8", "replace")
    assert stop in text(result.tokens) and stop not in text(result.tokens[:-1])
    assert result.text == text(result.tokens)[:text(result.tokens).find(stop)]
    assert result.stats.n_generated == len(result.tokens)


@pytest.fixture(scope="module")
def cycling(bigram_model):
    """A prompt holding the model's output cycle, its plain continuation, and a stop string
    that ends well inside it (drafts accepted in full run past it)."""
    with Engine(bigram_model, drafter=None, n_ctx=1024) as engine:
        first = engine.generate("alpha beta gamma", max_tokens=96)
        prompt = np.concatenate([bigram_model.tokenize("alpha beta gamma"), first.tokens])
        plain = engine.generate(prompt, max_tokens=64)
    stop = plain.text[40:46]
    assert stop.strip() and plain.text.find(stop) >= 20, "no usable stop string"
    return prompt, plain, stop


def test_speculation_does_not_output_tokens_past_a_stop(bigram_model, cycling):
    prompt, plain, stop = cycling
    with Engine(bigram_model, drafter=None, n_ctx=1024) as engine:
        want = engine.generate(prompt, max_tokens=64, stop=[stop])
        assert_stops_at(engine, want, stop)
    with Engine(bigram_model, drafter="ngram-simple", n_draft=8, n_ctx=1024) as engine:
        got = engine.generate(prompt, max_tokens=64, stop=[stop])
        streamed = "".join(engine.stream(prompt, max_tokens=64, stop=[stop]))
        assert_stops_at(engine, got, stop)
        assert got.stats.n_accepted > 0
        # the last step accepted tokens past the stop string (else the case is not exercised)
        assert got.stats.n_steps + got.stats.n_accepted + 1 > got.stats.n_generated
        batch = engine.generate_batch([prompt, prompt[5:]], n_parallel=2, max_tokens=64,
                                      stop=[stop])
        for r in batch:
            assert_stops_at(engine, r, stop)
    np.testing.assert_array_equal(got.tokens, want.tokens)
    np.testing.assert_array_equal(batch[0].tokens, want.tokens)
    assert got.text == want.text == streamed == plain.text[:plain.text.find(stop)]


def test_finish_reason_says_what_ended_the_generation(bigram_model, cycling):
    prompt, plain, stop = cycling
    with Engine(bigram_model, drafter="ngram-simple", n_draft=8, n_ctx=1024) as engine:
        assert engine.generate(prompt, max_tokens=64, stop=[stop]).finish_reason == "stop"
        assert engine.generate(prompt, max_tokens=64).finish_reason == "length"
        assert engine.generate(prompt, max_tokens=0).finish_reason == "length"
        reasons = [r.finish_reason for r in engine.generate_batch(
            [{"prompt": prompt, "stop": [stop]}, prompt], n_parallel=2, max_tokens=64)]
        assert reasons == ["stop", "length"]
