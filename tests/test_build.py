"""The build: one llama.cpp in the process, shipped in the package; the build cache's key."""
from __future__ import annotations

from pathlib import Path

import pytest

import spec
import spec._core  # noqa: F401  (loads llama.cpp)
import spec._upstream  # noqa: F401
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
    names = sorted(f.name.split(".so")[0] for f in files)
    assert names == sorted(LIBS), files          # each library once, no static second copy
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
