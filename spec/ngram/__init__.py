"""Drafters in typed Cython: llama.cpp's n-gram family and a suffix tree, one interface."""
from spec.ngram._base import Drafter
from spec.ngram._cache import NgramCache
from spec.ngram._chain import DrafterChain
from spec.ngram._map import NgramMapK, NgramMapK4V
from spec.ngram._mod import NgramMod
from spec.ngram._python import PythonDrafter
from spec.ngram._simple import NgramSimple
from spec.ngram._suffix import SuffixTree

__all__ = ["Drafter", "DrafterChain", "NgramCache", "NgramMapK", "NgramMapK4V", "NgramMod", "NgramSimple",
           "PythonDrafter", "SuffixTree"]
