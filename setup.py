"""Build spec's Cython extensions against the pinned, cached llama.cpp static libraries.

Every ``spec/**/*.pyx`` becomes an extension. The modules in ``LLAMA_LINKED`` call llama.cpp and
link its static libraries (symbols hidden with ``--exclude-libs``); the others are pure Cython.
"""
import os
import sys
from pathlib import Path

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from buildsupport.llama_build import ensure_built, locate, portable  # noqa: E402

LLAMA_LINKED = {"spec._core", "spec._upstream"}

DIRECTIVES = dict(language_level=3, boundscheck=False, wraparound=False,
                  initializedcheck=False, cdivision=True, embedsignature=True)
if os.environ.get("SPEC_DEBUG_CYTHON"):
    DIRECTIVES.update(boundscheck=True, wraparound=True, initializedcheck=True, cdivision=False)


# Same CPU target as the llama.cpp build: -march=native unless SPEC_PORTABLE=1.
NATIVE = [] if portable() else ["-march=native"]


def module_name(pyx: Path) -> str:
    return ".".join(pyx.relative_to(ROOT).with_suffix("").parts)


def selected_modules():
    """Every spec/**/*.pyx module, or those matching SPEC_ONLY (comma-separated prefixes; dev use)."""
    only = [p for p in os.environ.get("SPEC_ONLY", "").split(",") if p]
    for pyx in sorted((ROOT / "spec").rglob("*.pyx")):
        name = module_name(pyx)
        if not only or any(name.startswith(p) for p in only):
            yield name, pyx


def extensions(llama):
    exts = []
    for name, pyx in selected_modules():
        linked = name in LLAMA_LINKED
        exts.append(Extension(
            name, [str(pyx.relative_to(ROOT))], language="c++",
            include_dirs=[np.get_include(), *llama.include_dirs],  # cimporting _core needs llama.h
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION"),
                           ("GGML_USE_CPU", None), ("LLAMA_SUBPROCESS", None)],
            extra_compile_args=["-std=c++17", "-O3", *NATIVE, *(["-fopenmp"] if linked else [])],
            extra_objects=llama.static_libs if linked else [],
            extra_link_args=(["-fopenmp", "-lpthread", "-ldl", "-lm", "-Wl,--exclude-libs,ALL"]
                             if linked else []),
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
        super().run()


needs_llama = any(name in LLAMA_LINKED for name, _ in selected_modules())
llama = ensure_built() if needs_llama else locate()
write_build_info(llama)
setup(
    ext_modules=cythonize(extensions(llama), compiler_directives=DIRECTIVES,
                          nthreads=os.cpu_count() or 1),
    cmdclass={"build_ext": BuildExt},
    package_data={"spec": ["_build_info.py"]},
)
