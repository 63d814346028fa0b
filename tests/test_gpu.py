"""Every layer offloaded to a device backend: greedy speculation stays lossless.

Runs only on a build with a device backend (Vulkan, CUDA, Metal, ...) that found a device;
skipped, saying so, on the CPU build. On the development machine the device is Mesa's lavapipe
(a Vulkan driver running on the CPU): build with ``CMAKE_ARGS="-DGGML_VULKAN=on"`` and run with
``GGML_VK_VISIBLE_DEVICES=0`` (ggml-vulkan skips CPU-type Vulkan devices unless told to use
one) — see README "Backends". ``bench/gpu_check.py`` does the same on the default model.
"""
from __future__ import annotations

import pytest

import spec
from spec._runtime import _log
from spec._runtime._core import backends, devices
from spec.engine import DRAFTERS
from _lossless import first_divergence

pytestmark = pytest.mark.gpu

DEVICES = [d for d in devices() if d["type"] in ("gpu", "igpu")]
if not DEVICES:
    pytest.skip(f"no device backend with a device in this build (backends: "
                f"{', '.join(backends())}); build with e.g. CMAKE_ARGS=\"-DGGML_VULKAN=on\"",
                allow_module_level=True)

# Device kernels accumulate in other orders (and precisions) than the CPU's: a near-tie may flip
# between batch shapes, as on the CPU, with a wider margin. The CPU tests prove each flip by
# replaying the exact batches (tests/_lossless.py); that needs bit-reproducible kernels, not yet
# established on a device, so here a divergence is accepted at a plain margin below DEVICE_TIE.
DEVICE_TIE = 0.05


def assert_lossless(plain, other, tie):
    i = first_divergence(plain.tokens, other.tokens)
    if i < 0:
        return
    assert i < len(plain.tokens) and i < len(other.tokens), "one run stopped early"
    assert plain.margins[i] <= tie, (
        f"divergence at token {i} with a clear margin {plain.margins[i]:.4f} > {tie}: "
        f"plain {plain.tokens[i]} vs speculative {other.tokens[i]}")
N_GEN = 40


@pytest.fixture(scope="module")
def offloaded(bigram_model_path):
    model = spec.Model(bigram_model_path, n_gpu_layers=-1)
    yield model
    model.close()


@pytest.fixture(scope="module")
def plain(offloaded):
    """Plain greedy runs of two prompts, with their top-two margins."""
    prompts = ["def add(a, b):\n    return a + b\n", "The quick brown fox jumps over"]
    with spec.Engine(offloaded, drafter=None, n_ctx=512) as engine:
        runs = [engine.generate(p, max_tokens=N_GEN, trace=True) for p in prompts]
    assert all(len(r.tokens) == N_GEN for r in runs)    # nothing to compare otherwise
    return prompts, runs


def test_the_model_is_on_the_device(offloaded, caplog):
    with caplog.at_level("INFO", logger="spec.llama"):
        _log.refresh_log_level()
        spec.Model(offloaded.path, n_gpu_layers=-1).close()
    _log.refresh_log_level()
    assert any("offloaded" in r.getMessage() and "layers to GPU" in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records][:20]


@pytest.mark.parametrize("drafter", sorted(DRAFTERS))
def test_every_drafter_is_lossless_offloaded(offloaded, plain, drafter):
    prompts, runs = plain
    with spec.Engine(offloaded, drafter=drafter, n_draft=8, n_ctx=512) as engine:
        for prompt, want in zip(prompts, runs):
            assert_lossless(want, engine.generate(prompt, max_tokens=N_GEN), DEVICE_TIE)


def test_a_batch_job_is_lossless_offloaded(offloaded, plain):
    prompts, runs = plain
    with spec.Engine(offloaded, drafter="suffix", n_ctx=512) as engine:
        got = engine.generate_batch(prompts, n_parallel=2, max_tokens=N_GEN)
    for want, result in zip(runs, got):
        assert_lossless(want, result, DEVICE_TIE)


def test_a_draft_model_session_with_both_models_offloaded(offloaded, plain, pair):
    target_path, draft_path = pair
    target = spec.Model(target_path, n_gpu_layers=-1)
    draft = spec.Model(draft_path, n_gpu_layers=-1)
    prompt = plain[0][0]
    with spec.Engine(target, drafter=None, n_ctx=512) as engine:
        want = engine.generate(prompt, max_tokens=N_GEN, trace=True)
    with spec.Engine(target, drafter="draft", n_draft=4, n_ctx=512,
                     drafter_params={"draft_model": draft}) as engine:
        result = engine.generate(prompt, max_tokens=N_GEN)
    assert result.stats.n_drafted > 0
    assert_lossless(want, result, DEVICE_TIE)
    draft.close()
    target.close()
