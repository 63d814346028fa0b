"""Drafters in typed Cython: llama.cpp's n-gram family and a suffix tree, one interface.

A thin re-export, kept as the public path: the classes live in :mod:`spec.drafters` (the drafter
layer; ``spec.drafters.ngram`` holds the n-gram family)."""
from spec.drafters._base import Drafter
from spec.drafters.ngram._cache import NgramCache
from spec.drafters._chain import DrafterChain
from spec.drafters.ngram._map import NgramMapK, NgramMapK4V
from spec.drafters.ngram._mod import NgramMod
from spec.drafters._python import PythonDrafter
from spec.drafters.ngram._simple import NgramSimple
from spec.drafters._suffix import SuffixTree

__all__ = ["Drafter", "DrafterChain", "NgramCache", "NgramMapK", "NgramMapK4V", "NgramMod", "NgramSimple",
           "PythonDrafter", "SuffixTree"]
