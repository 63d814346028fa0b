"""Shared fixtures: tiny random-weight models built on the fly, vocabularies, the default model.

Tiny models come from :func:`spec.testing.make_tiny_llama` (real llama-spm tokenizer, seeded
random weights), so every test that needs a model runs without downloads.
"""
from __future__ import annotations

from pathlib import Path

import pytest

import spec.testing
from spec._runtime._core import Model

# Seeds and shapes of the session's tiny models. The bigram model (attention and feed-forward
# scaled down to 5 %) predicts the next token from the current one, so its greedy output falls
# into a cycle: repetitive text on which drafters get accepted.
TINY = dict(seed=0)
BIGRAM = dict(seed=3, proj_scale=0.05)


def _vocab(name: str) -> Path:
    try:
        return spec.testing.vocab_path(name)
    except FileNotFoundError as e:
        pytest.skip(f"llama.cpp's vocabulary file is unavailable: {e}")


@pytest.fixture(scope="session")
def vocab_path():
    """``vocab_path(name)`` → llama.cpp's ``models/ggml-vocab-<name>.gguf`` (skips, saying why,
    when the llama.cpp source tree spec was built from is no longer in the cache)."""
    return _vocab


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory) -> Path:
    """A 2-layer, 64-wide random llama GGUF with the llama-spm tokenizer (32000 tokens)."""
    vocab = _vocab("llama-spm")
    return spec.testing.make_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny.gguf",
                                        vocab=vocab, **TINY)


@pytest.fixture(scope="session")
def tiny_model(tiny_model_path):
    """The tiny model, loaded once per session. Tests must not close it."""
    model = Model(tiny_model_path)
    yield model
    model.close()


@pytest.fixture(scope="session")
def bigram_model_path(tmp_path_factory) -> Path:
    """A tiny model whose greedy output cycles (see BIGRAM above)."""
    vocab = _vocab("llama-spm")
    return spec.testing.make_tiny_llama(tmp_path_factory.mktemp("bigram") / "bigram.gguf",
                                        vocab=vocab, **BIGRAM)


@pytest.fixture(scope="session")
def bigram_model(bigram_model_path):
    model = Model(bigram_model_path)
    yield model
    model.close()


@pytest.fixture(scope="session")
def default_model_path() -> Path:
    """The default model's file (Gemma-3-270M); skips with the install command when missing."""
    from spec.models import ModelNotInstalledError, resolve

    try:
        return resolve("default")
    except ModelNotInstalledError as e:
        pytest.skip(f"default model not installed: {e}")


@pytest.fixture(scope="session")
def pair(tmp_path_factory, vocab_path):
    """A target and a draft = target + 1 % noise (same seed, same vocabulary)."""
    d = tmp_path_factory.mktemp("pair")
    vocab = vocab_path("llama-spm")
    tgt = spec.testing.make_tiny_llama(d / "tgt.gguf", vocab=vocab, seed=11, proj_scale=0.3)
    dft = spec.testing.make_tiny_llama(d / "dft.gguf", vocab=vocab, seed=11, proj_scale=0.3,
                                       perturb=0.01)
    return tgt, dft
