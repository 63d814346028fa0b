"""Tokenizer known answers: llama.cpp's own ``models/ggml-vocab-*.gguf.inp/.out`` vectors.

``tokenize`` is called the way llama.cpp's tests/test-tokenizer-0.cpp calls it
(``common_tokenize(ctx, text, add_special=false, parse_special=false)``), and the files are split
the way its ``read_tests`` splits them. Round trips are checked only where the vocabulary
guarantees them (see each test).
"""
from __future__ import annotations

import numpy as np
import pytest

from spec._runtime._core import Model

SEP = b"\n__ggml_vocab_test__\n"

# Vocabularies with known-answer files; at least these must exist in the llama.cpp tree.
REQUIRED = ["llama-spm", "llama-bpe", "gpt-2", "qwen2"]
# (command-r and gemma-4 pass too, but their 256k vocabularies take seconds to load.)
OTHERS = ["phi-3", "qwen35", "deepseek-llm", "deepseek-coder", "falcon", "starcoder", "mpt",
          "refact"]

# Vocabularies whose detokenizer does no clean-up (llama.cpp sets clean_spaces only for BPE
# pre-tokenizers other than these; SPM never cleans): detokenize(tokenize(s)) == s exactly.
EXACT_DETOKENIZE = ["llama-spm", "phi-3", "qwen2", "qwen35", "deepseek-llm", "deepseek-coder"]
# Byte-level BPE vocabularies: every byte maps to a token piece, so the pieces always
# concatenate to the input bytes, whatever the detokenizer's clean-up does.
BYTE_LEVEL = ["gpt-2", "llama-bpe", "qwen2", "qwen35", "falcon", "starcoder", "mpt", "refact",
              "deepseek-llm", "deepseek-coder"]

_models: dict[str, Model] = {}


def read_vectors(vocab_file) -> list[tuple[bytes, list[int]]]:
    """(input bytes, expected ids) pairs, parsed like test-tokenizer-0.cpp's ``read_tests``."""
    inp = vocab_file.with_name(vocab_file.name + ".inp")
    out = vocab_file.with_name(vocab_file.name + ".out")
    if not inp.exists() or not out.exists():
        pytest.skip(f"{vocab_file.name} has no .inp/.out known-answer files")
    raw = inp.read_bytes()
    texts = raw.split(SEP)
    if raw.endswith(SEP):       # the C++ loop stops at the end instead of adding an empty test
        texts.pop()
    lines = out.read_bytes().split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    assert len(texts) == len(lines), f"{inp.name}: {len(texts)} inputs but {len(lines)} outputs"
    return [(t, [int(x) for x in line.strip().split(b" ") if x]) for t, line in zip(texts, lines)]


@pytest.fixture
def vocab(vocab_path):
    """``vocab(name)`` → (vocabulary-only Model, its known-answer vectors)."""
    def get(name):
        path = vocab_path(name)
        if name not in _models:
            _models[name] = Model(path, vocab_only=True)
        return _models[name], read_vectors(path)
    return get


def test_required_vectors_exist(vocab_path):
    for name in REQUIRED:
        path = vocab_path(name)
        assert path.with_name(path.name + ".inp").exists(), name
        assert path.with_name(path.name + ".out").exists(), name


@pytest.mark.parametrize("name", REQUIRED + OTHERS)
def test_known_answers(vocab, name):
    model, vectors = vocab(name)
    assert len(vectors) >= 40
    failures = []
    for text, expected in vectors:
        got = model.tokenize(text, add_special=False, parse_special=False)
        assert got.dtype == np.int32
        if got.tolist() != expected:
            failures.append((text, expected, got.tolist()))
    assert not failures, f"{len(failures)} of {len(vectors)} vectors differ, first: {failures[0]}"


@pytest.mark.parametrize("name", REQUIRED)
def test_str_and_bytes_input_agree(vocab, name):
    model, vectors = vocab(name)
    for text, expected in vectors:
        assert model.tokenize(text.decode("utf-8"), add_special=False).tolist() == expected


@pytest.mark.parametrize("name", EXACT_DETOKENIZE)
def test_detokenize_round_trip(vocab, name):
    model, vectors = vocab(name)
    for text, expected in vectors:
        assert model.detokenize(expected) == text.decode("utf-8"), text


@pytest.mark.parametrize("name", BYTE_LEVEL)
def test_pieces_concatenate_to_input(vocab, name):
    model, vectors = vocab(name)
    for text, expected in vectors:
        assert b"".join(model.token_to_piece(t) for t in expected) == text


@pytest.mark.parametrize("name", ["gpt-2", "llama-bpe"])
def test_cleaning_detokenizer_is_exact_without_triggers(vocab, name):
    """These vocabularies clean " ?", " !", " .", " ,", " '" on detokenize (like HF's
    clean_up_tokenization_spaces); texts without such sequences round-trip exactly."""
    model, vectors = vocab(name)
    triggers = [b" ?", b" !", b" .", b" ,", b" '"]
    checked = 0
    for text, expected in vectors:
        if any(t in text for t in triggers):
            continue
        assert model.detokenize(expected) == text.decode("utf-8"), text
        checked += 1
    assert checked >= 30
    # and the clean-up itself happens, as in llama.cpp
    assert model.detokenize(model.tokenize("Hello ?", add_special=False)) == "Hello?"


def test_spm_every_token_round_trips(vocab):
    """tests/test-tokenizer-1-spm.cpp: each token's text re-tokenizes to the same text."""
    model, _ = vocab("llama-spm")
    bad = []
    for i in range(model.n_vocab):
        text = model.detokenize([i], unparse_special=True)
        again = model.tokenize(text, add_special=False, parse_special=True)
        if model.detokenize(again, unparse_special=True) != text:
            bad.append((i, text))
    assert not bad, f"{len(bad)} tokens do not round-trip, first: {bad[:5]}"


def test_spm_code_points_round_trip(vocab):
    """tests/test-tokenizer-1-spm.cpp's code point loop: the whole BMP, then the code points
    above it in steps of 31 (the C++ test's skips: surrogates, unassigned planes 4-14, U+2581)."""
    model, _ = vocab("llama-spm")
    cps = [*range(0x10000), *range(0x10000, 0x110000, 31)]
    bad = []
    for cp in cps:
        if 0xD800 <= cp <= 0xDFFF or 0x40000 <= cp <= 0xE0000 or cp == 0x2581:
            continue
        s = chr(cp)
        if model.detokenize(model.tokenize(s, add_special=False, parse_special=True)) != s:
            bad.append(hex(cp))
    assert not bad, f"{len(bad)} code points do not round-trip: {bad[:10]}"


@pytest.mark.parametrize("name", REQUIRED)
def test_add_special_prepends_bos_when_the_vocabulary_says_so(vocab, name):
    model, _ = vocab(name)
    plain = model.tokenize("Hello world", add_special=False)
    special = model.tokenize("Hello world", add_special=True)
    if model.add_bos:
        assert special[0] == model.bos
        assert special[1:].tolist() == plain.tolist()
    else:
        assert special.tolist() == plain.tolist()


def test_parse_special(vocab):
    model, _ = vocab("llama-spm")
    assert model.tokenize("</s>", add_special=False, parse_special=True).tolist() == [model.eos]
    literal = model.tokenize("</s>", add_special=False, parse_special=False)
    assert model.eos not in literal.tolist() and len(literal) > 1


def test_empty_and_long_text(vocab):
    model, _ = vocab("llama-spm")
    assert model.tokenize("", add_special=False).tolist() == []
    assert model.detokenize([]) == ""
    text = "hello world " * 3000
    toks = model.tokenize(text, add_special=False)
    assert len(toks) >= 6000
    assert model.detokenize(toks) == text


def test_long_pieces_take_the_large_buffer_paths(vocab):
    """starcoder has a 256-byte token: longer than token_to_piece's 128-byte stack buffer and
    than detokenize's first guess of 8 bytes per token, so both retry with a larger buffer."""
    model, _ = vocab("starcoder")
    lengths = [len(model.token_to_piece(t)) for t in range(model.n_vocab)]
    longest = int(np.argmax(lengths))
    assert lengths[longest] > 128
    piece = model.token_to_piece(longest)
    assert model.tokenize(piece, add_special=False).tolist() == [longest]
    assert model.detokenize([longest] * 10) == (piece * 10).decode("utf-8")
