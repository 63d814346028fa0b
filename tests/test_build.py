"""The build: one llama.cpp in the process, shipped in the package; the build cache's key."""
from __future__ import annotations

from pathlib import Path

import pytest

import spec
import spec._runtime._core  # noqa: F401  (loads llama.cpp)
import spec.drafters._upstream  # noqa: F401
from buildsupport import llama_build

LIBS = ("libllama", "libllama-common", "libggml", "libggml-base", "libggml-cpu")


def _mapped_llama_files():
    files = set()
    for line in Path("/proc/self/maps").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 6 and Path(parts[-1]).name.startswith(("libllama", "libggml")):
            files.add(Path(parts[-1]))
    return files


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc")
def test_one_copy_of_each_llama_library_is_loaded_from_the_package():
    files = _mapped_llama_files()
    names = [f.name.split(".so")[0] for f in files]
    assert len(names) == len(set(names)), files  # each library once, no static second copy
    assert set(LIBS) <= set(names), files        # (+ a backend's, e.g. libggml-blas)
    lib_dir = Path(spec.__file__).parent / "_lib"
    assert {f.parent for f in files} == {lib_dir}


@pytest.mark.parametrize("var", ["CMAKE_ARGS", "SPEC_CMAKE_ARGS"])
def test_cmake_args_reach_the_flags_and_the_cache_key(monkeypatch, var):
    monkeypatch.delenv("CMAKE_ARGS", raising=False)
    monkeypatch.delenv("SPEC_CMAKE_ARGS", raising=False)
    plain = llama_build.locate()
    monkeypatch.setenv(var, "-DGGML_BLAS=on -DGGML_BLAS_VENDOR=OpenBLAS")
    blas = llama_build.locate()
    assert blas.flags[-2:] == ("-DGGML_BLAS=on", "-DGGML_BLAS_VENDOR=OpenBLAS")
    assert blas.build != plain.build and blas.src == plain.src


def test_sanitizers_have_their_own_build(monkeypatch):
    monkeypatch.delenv("SPEC_SANITIZE", raising=False)
    plain = llama_build.locate()
    monkeypatch.setenv("SPEC_SANITIZE", "address,undefined")
    asan = llama_build.locate()
    assert "-DLLAMA_SANITIZE_ADDRESS=ON" in asan.flags and "-DGGML_SANITIZE_UNDEFINED=ON" in asan.flags
    assert asan.build != plain.build
    monkeypatch.setenv("SPEC_SANITIZE", "adress")
    with pytest.raises(RuntimeError, match="unknown sanitizer.*adress"):
        llama_build.locate()


def test_backends_and_devices_of_the_default_build():
    from spec._runtime._core import backends, devices
    assert "CPU" in backends()
    cpus = [d for d in devices() if d["type"] == "cpu"]
    assert cpus and cpus[0]["memory_total"] > 0 and cpus[0]["name"]


@pytest.mark.parametrize("kwargs, match", [
    (dict(split_mode="rows"), "split_mode must be one of"),
    (dict(main_gpu=-2), "main_gpu must be a device index or -1"),
    (dict(tensor_split=[]), "tensor_split takes 1 to"),
    (dict(tensor_split=[1.0, -1.0]), "non-negative finite"),
    (dict(tensor_split=[0.0, 0.0]), "positive sum"),
    (dict(tensor_split=[float("nan")]), "non-negative finite"),
])
def test_offload_options_are_checked(tiny_model_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        spec.Model(tiny_model_path, **kwargs)


def test_offload_options_reach_the_model(tiny_model_path):
    # On the CPU build there is no GPU to offload to: llama.cpp loads on the CPU and the model
    # works; with a GPU build the same call offloads (bench/gpu.sh).
    model = spec.Model(tiny_model_path, n_gpu_layers=-1, split_mode="none", main_gpu=0,
                       tensor_split=[1.0])
    assert len(model.tokenize("hello")) > 0
    with pytest.raises(ValueError, match="n_gpu_layers applies to a model given by path"):
        spec.Engine(model, drafter=None, n_gpu_layers=2)
    model.close()


def test_a_failed_configure_names_the_variable_that_asked(monkeypatch):
    for var in ("CMAKE_ARGS", "SPEC_CMAKE_ARGS", "SPEC_SANITIZE", "SPEC_PORTABLE"):
        monkeypatch.delenv(var, raising=False)
    assert "default CPU build" in llama_build._asked_by()
    monkeypatch.setenv("CMAKE_ARGS", "-DGGML_CUDA=on")
    said = llama_build._asked_by()
    assert "CMAKE_ARGS='-DGGML_CUDA=on'" in said and "toolkit" in said
