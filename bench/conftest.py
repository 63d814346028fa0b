"""Shared fixtures for the benchmarks (run with ``python -m pytest bench -s``)."""
from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

RESULTS = Path(__file__).resolve().parent / "results"
THREADS = int(os.environ.get("SPEC_BENCH_THREADS", os.cpu_count() or 2))


def machine() -> dict:
    import spec._runtime._core as core
    cpu = ""
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu or platform.processor(), "cores": os.cpu_count(), "threads": THREADS,
            "python": platform.python_version(),
            "features": [k for k, v in core.cpu_features().items() if v]}


def save(name: str, data: dict) -> None:
    """Write bench/results/<name>.json (the figures RESULTS.md quotes) and print it."""
    RESULTS.mkdir(exist_ok=True)
    data = {"machine": machine(), **data}
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2))
    print(json.dumps(data, indent=2))


@pytest.fixture(scope="session")
def default_model_path() -> str:
    from spec.models import ModelNotInstalledError, resolve
    try:
        return str(resolve("default"))
    except ModelNotInstalledError as e:
        pytest.skip(str(e))
