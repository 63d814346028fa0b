"""Leak soak: thousands of create → generate → close cycles, and memory stops growing.

Each kind of cycle runs a warm-up (allocator pools, caches and lazily loaded code settle), then
the measured cycles; the process's resident set may grow by at most GROWTH_MB over them. A leak
of one tiny context (its KV cache and compute buffers, about 1 MB) or one tiny model (about 9 MB)
per cycle would exceed that many times over. Skipped under the sanitizer build, whose quarantine
holds freed memory on purpose.
"""
from __future__ import annotations

import gc
import os
from pathlib import Path

import pytest

import spec.testing
from spec import Context, DraftModelSession, Engine, Model
from spec.engine import DRAFTERS

pytestmark = [
    pytest.mark.soak,
    pytest.mark.skipif(bool(os.environ.get("SPEC_SANITIZE")),
                       reason="ASan's quarantine keeps freed memory: RSS says nothing there"),
    pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads RSS from Linux /proc"),
]

PROMPT = "The quick brown fox jumps over the lazy dog. Once upon a time"
GROWTH_MB = 8.0     # over the measured cycles, after warm-up


def rss_mb() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def soak(cycle, n_warm: int, n_measure: int) -> float:
    for _ in range(n_warm):
        cycle()
    gc.collect()
    before = rss_mb()
    for _ in range(n_measure):
        cycle()
    gc.collect()
    growth = rss_mb() - before
    assert growth <= GROWTH_MB, (f"RSS grew {growth:.1f} MB over {n_measure} cycles after "
                                 f"{n_warm} warm-up cycles (bound {GROWTH_MB} MB)")
    return growth


def test_model_and_context_cycles(tiny_model_path):
    def cycle():
        model = Model(tiny_model_path)
        ctx = Context(model, n_ctx=64, n_threads=1)
        ctx.decode(model.tokenize(PROMPT), all_logits=True)
        view = ctx.logits()                      # a borrower, dropped after the close
        ctx.close()
        model.close()
        del view
    soak(cycle, n_warm=30, n_measure=400)


@pytest.mark.parametrize("drafter", [None, *DRAFTERS, "llama:ngram-simple", "suffix,ngram-mod"])
def test_engine_cycles(tiny_model, drafter):
    prompt = tiny_model.tokenize(PROMPT)

    def cycle():
        with Engine(tiny_model, drafter=drafter, n_ctx=128, n_threads=1) as engine:
            engine.generate(prompt, max_tokens=8)
    soak(cycle, n_warm=20, n_measure=150)


@pytest.fixture(scope="module")
def pair_models(pair):
    return Model(pair[0]), Model(pair[1])


def test_draft_model_session_cycles(pair_models):
    mt, md = pair_models
    prompt = mt.tokenize(PROMPT)

    def cycle():
        ct, cd = Context(mt, n_ctx=128, n_threads=1), Context(md, n_ctx=128, n_threads=1)
        with DraftModelSession(ct, cd, 1, 4) as s:
            ct.decode(prompt)
            s.process()
            d = s.draft(0, len(prompt), int(prompt[-1]))
            s.accept(0, len(d))
        ct.close()
        cd.close()
    soak(cycle, n_warm=20, n_measure=300)


@pytest.mark.parametrize("kind", ["draft", "mtp", "eagle3"])
def test_session_engine_cycles(kind, pair_models, tmp_path_factory, vocab_path):
    d = tmp_path_factory.mktemp(f"soak-{kind}")
    vocab = vocab_path("llama-spm")
    if kind == "draft":
        target, params = pair_models[0], {"draft_model": pair_models[1]}
    elif kind == "mtp":
        target = spec.testing.make_tiny_qwen35_mtp(d / "mtp.gguf", vocab=vocab, seed=5)
        params = {}
    else:
        target = spec.testing.make_tiny_llama(d / "tgt4.gguf", vocab=vocab, seed=2, n_layer=4)
        params = {"draft_model": spec.testing.make_tiny_eagle3(d / "e3.gguf", n_embd_target=64,
                                                                vocab=vocab)}

    def cycle():
        with Engine(target, drafter=kind, n_draft=3, n_ctx=128, n_threads=1,
                    drafter_params=params) as engine:
            engine.generate(PROMPT, max_tokens=8)
    soak(cycle, n_warm=10, n_measure=100)
