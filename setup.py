"""Build spec's Cython extensions against the pinned, cached llama.cpp shared libraries.

Every ``spec/**/*.pyx`` becomes an extension. The modules in ``LLAMA_LINKED`` call llama.cpp: they
link its shared libraries, which are copied into the package (``spec/_lib``) and found there through
an ``$ORIGIN``-relative RPATH, so one copy of llama.cpp serves every module in the process. The
other modules are pure Cython.
"""
import os
import shutil
import sys
from pathlib import Path

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from buildsupport.llama_build import ensure_built, locate, portable, sanitizers  # noqa: E402

LLAMA_LINKED = {"spec._runtime._core", "spec._runtime._log", "spec.drafters._upstream",
                "spec.drafters.sessions._sessions"}

DIRECTIVES = dict(language_level=3, boundscheck=False, wraparound=False,
                  initializedcheck=False, cdivision=True, embedsignature=True)
if os.environ.get("SPEC_DEBUG_CYTHON"):
    DIRECTIVES.update(boundscheck=True, wraparound=True, initializedcheck=True, cdivision=False)


# Where the llama.cpp libraries live inside the package.
LIB_DIR = "spec/_lib"

# Same CPU target as the llama.cpp build: -march=native unless SPEC_PORTABLE=1.
NATIVE = [] if portable() else ["-march=native"]

# SPEC_SANITIZE=address,undefined: the extensions are instrumented like llama.cpp.
SANITIZE = ([f"-fsanitize={','.join(sanitizers())}", "-fno-omit-frame-pointer", "-g"]
            if sanitizers() else [])


def module_name(pyx: Path) -> str:
    return ".".join(pyx.relative_to(ROOT).with_suffix("").parts)


def selected_modules():
    """Every spec/**/*.pyx module, or those matching SPEC_ONLY (comma-separated prefixes; dev use)."""
    only = [p for p in os.environ.get("SPEC_ONLY", "").split(",") if p]
    for pyx in sorted((ROOT / "spec").rglob("*.pyx")):
        name = module_name(pyx)
        if not only or any(name.startswith(p) for p in only):
            yield name, pyx


def llama_link_args(name: str, llama) -> list[str]:
    """Link ``name`` against the llama.cpp libraries, found at run time in ``spec/_lib``."""
    module_dir = Path(*name.split(".")[:-1])
    rpath = os.path.relpath(LIB_DIR, module_dir)
    return [f"-L{llama.lib_dir}", *(f"-l{p.name[3:-3]}" for p in llama.shared_libs),
            f"-Wl,-rpath,$ORIGIN/{rpath}"]


def extensions(llama):
    exts = []
    for name, pyx in selected_modules():
        linked = name in LLAMA_LINKED
        exts.append(Extension(
            name, [str(pyx.relative_to(ROOT))], language="c++",
            # the repository root: spec/_c/*.h; cimporting _core needs llama.h
            include_dirs=[str(ROOT), np.get_include(), *llama.include_dirs],
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION"),
                           ("GGML_USE_CPU", None), ("LLAMA_SUBPROCESS", None)],
            extra_compile_args=["-std=c++17", "-O3", *NATIVE, *SANITIZE],
            extra_link_args=[*SANITIZE, *(llama_link_args(name, llama) if linked else [])],
        ))
    return exts


def write_build_info(llama):
    text = (
        '"""Written by setup.py: the llama.cpp build this package was compiled against."""\n'
        f"LLAMA_CPP_COMMIT = {llama.commit!r}\n"
        f"LLAMA_CPP_SRC = {str(llama.src)!r}\n"
        f"LLAMA_CPP_BUILD = {str(llama.build)!r}\n"
        f"CMAKE_FLAGS = {list(llama.flags)!r}\n"
    )
    path = ROOT / "spec" / "_build_info.py"
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


class BuildExt(build_ext):
    def run(self):
        self.parallel = self.parallel or os.cpu_count()
        if needs_llama:
            self.copy_llama_libs()
        super().run()

    def copy_llama_libs(self):
        """Ship llama.cpp's libraries under their SONAMEs beside the modules that load them."""
        dest = ROOT / LIB_DIR if self.inplace else Path(self.build_lib) / LIB_DIR
        dest.mkdir(parents=True, exist_ok=True)
        for lib in llama.runtime_files():
            target = dest / lib.name
            if not target.exists() or target.stat().st_mtime < lib.stat().st_mtime:
                # Replace, never overwrite: a running process may have the old file mapped.
                partial = target.with_name(target.name + ".partial")
                shutil.copy2(lib, partial)
                partial.replace(target)


needs_llama = any(name in LLAMA_LINKED for name, _ in selected_modules())
llama = ensure_built() if needs_llama else locate()
write_build_info(llama)
setup(
    ext_modules=cythonize(extensions(llama), compiler_directives=DIRECTIVES,
                          nthreads=os.cpu_count() or 1),
    cmdclass={"build_ext": BuildExt},
    package_data={"spec": ["_build_info.py"]},
)
