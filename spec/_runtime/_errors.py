"""The exceptions spec raises. Every one of them derives from :class:`SpecError`."""
from __future__ import annotations


class SpecError(Exception):
    """Base class of spec's own errors."""


class ModelLoadError(SpecError):
    """llama.cpp could not load a model file (not GGUF, truncated, unsupported architecture...)."""


class ContextError(SpecError):
    """llama.cpp could not create a context (e.g. out of memory for the requested n_ctx)."""


class ClosedError(SpecError, ValueError):
    """A closed Model, Context or Engine was used."""


class EngineBusyError(SpecError, RuntimeError):
    """An Engine was asked for a generation while this thread's previous one (an unfinished
    stream or iter_batch) still holds it."""


class NonFiniteLogitsError(SpecError, FloatingPointError):
    """The model produced NaN or infinite logits (typically weights holding NaN or Inf)."""


class ContextOverflowError(SpecError, ValueError):
    """Tokens do not fit in the context window."""


class RequestError(SpecError, ValueError, TypeError):
    """One request of a batch is invalid (:meth:`spec.Engine.iter_batch` checks every request
    before generating anything). ``index`` is its position in the batch, ``reason`` what is wrong;
    it is both a ValueError and a TypeError, as the underlying check raised one or the other."""

    def __init__(self, index: int, reason: str):
        super().__init__(f"request {index}: {reason}")
        self.index = index
        self.reason = reason



class ParamError(SpecError):
    """A generation parameter is bad. ``name`` is the parameter (``"top_p"``), ``reason`` what
    is wrong with it (``"must be a number in (0, 1], got 2.0"``); the message is both. Raised as
    :class:`ParamTypeError` or :class:`ParamValueError`."""

    def __init__(self, name: str, reason: str):
        super().__init__(f"{name} {reason}")
        self.name = name
        self.reason = reason


class ParamTypeError(ParamError, TypeError):
    """A generation parameter of the wrong type."""


class ParamValueError(ParamError, ValueError):
    """A generation parameter out of range."""

class DecodeError(SpecError):
    """llama_decode failed. ``code`` is llama.cpp's return value."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


class KVCacheFullError(DecodeError):
    """llama_decode returned 1: no KV slot for the batch (a warning upstream; fatal for a step)."""


class DecodeAbortedError(DecodeError):
    """llama_decode returned 2: the decode was aborted."""


class InvalidBatchError(DecodeError):
    """llama_decode returned -1: the batch was rejected as invalid."""


def decode_error(code: int, n_tokens: int) -> DecodeError:
    """Map a non-zero llama_decode return code to its exception."""
    if code == 1:
        return KVCacheFullError(
            f"llama_decode: no KV slot for a batch of {n_tokens} tokens (context full?)", code)
    if code == 2:
        return DecodeAbortedError("llama_decode: aborted", code)
    if code == -1:
        return InvalidBatchError(f"llama_decode: invalid batch of {n_tokens} tokens", code)
    return DecodeError(f"llama_decode failed with code {code} on a batch of {n_tokens} tokens", code)


class InvalidConfigError(SpecError, ValueError):
    """A SessionConfig (or session argument) is out of range; raised before anything reaches C."""


class SessionInitError(SpecError):
    """A speculative session could not be created; the message names the likely cause."""


class SessionProcessError(SpecError):
    """A speculative session failed to process a target batch or to draft."""


class BadSeqIdError(SpecError, ValueError):
    """A sequence id outside [0, n_seq) was passed to a session."""

    def __init__(self, seq_id: int, n_seq: int):
        super().__init__(f"seq_id must be in [0, {n_seq}), got {seq_id}")
        self.seq_id = seq_id
        self.n_seq = n_seq
