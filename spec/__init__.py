"""spec: speculative decoding on llama.cpp, with typed Cython drafters and a nogil engine loop.

Research code imports everything from here:

- :class:`Model`, :class:`Context` — handles over llama.cpp (``spec._runtime._core``);
- :class:`Engine` — generation with a drafter (``spec.engine``);
- drafters: :class:`NgramSimple`, :class:`NgramMapK`, :class:`NgramMapK4V`, :class:`NgramMod`,
  :class:`NgramCache`, :class:`SuffixTree`, :func:`llama_drafter` (llama.cpp's own), and
  :class:`PythonDrafter`, the base of drafters written in Python, and :class:`DrafterChain`
  (stages tried in order, as the reference's chains of speculative types);
- model-based sessions (:mod:`spec.sessions`): :class:`DraftModelSession`, :class:`MtpSession`,
  :class:`Eagle3Session`, :class:`DFlashSession`, configured by :class:`SessionConfig`, fed
  the :class:`Batch` each target decode took;
- :func:`simulate` — replay a token stream through a drafter without a model.
"""
from spec._runtime._errors import (ClosedError, ContextError, ContextOverflowError, DecodeAbortedError,
                          DecodeError, EngineBusyError, InvalidBatchError, KVCacheFullError,
                          ModelLoadError, NonFiniteLogitsError, RequestError, SpecError)
from spec._runtime._core import Context, Model
from spec.engine import Engine, Result, Stats, drafter_names, make_drafter, simulate
from spec.models import ModelNotInstalledError
from spec.ngram import (Drafter, DrafterChain, NgramCache, NgramMapK, NgramMapK4V, NgramMod, NgramSimple,
                        PythonDrafter, SuffixTree)
from spec._loop._simulate import SimResult
from spec.drafters._upstream import LlamaDrafter
from spec.sessions import (Batch, BadSeqIdError, DFlashSession, DraftModelSession, Eagle3Session,
                           InvalidConfigError, MtpSession, Session, SessionConfig,
                           SessionInitError, SessionProcessError)

__version__ = "0.1.0"


def llama_drafter(type_name: str, **params) -> LlamaDrafter:
    """llama.cpp's own implementation of an n-gram drafter type, behind spec's Drafter interface.

    ``type_name`` is one of "ngram-simple", "ngram-map-k", "ngram-map-k4v", "ngram-mod",
    "ngram-cache"; ``params`` use the same names as spec's Cython drafters.
    """
    return LlamaDrafter(type_name, **params)


__all__ = [
    "ClosedError", "Context", "ContextError", "ContextOverflowError", "DecodeAbortedError",
    "DecodeError", "Drafter", "DrafterChain", "Engine", "EngineBusyError", "InvalidBatchError", "KVCacheFullError", "LlamaDrafter",
    "Model", "ModelLoadError", "ModelNotInstalledError", "NgramCache", "NgramMapK", "NgramMapK4V",
    "NgramMod", "NgramSimple", "NonFiniteLogitsError", "PythonDrafter", "RequestError", "Result", "SimResult", "SpecError", "Stats", "SuffixTree",
    "drafter_names", "llama_drafter", "make_drafter", "simulate",
    "Batch", "BadSeqIdError", "DFlashSession", "DraftModelSession", "Eagle3Session", "InvalidConfigError",
    "MtpSession", "Session", "SessionConfig", "SessionInitError", "SessionProcessError",
]
