"""Tiny deterministic random-weight GGUF models for tests and experiments (needs ``gguf``).

A tiny model has the llama architecture, a real tokenizer copied from a vocabulary GGUF (for
instance llama.cpp's ``models/ggml-vocab-*.gguf``), and random weights drawn from a seeded
generator: its text is gibberish, but tokenization is real and the same seed gives the same
bytes. A draft/target pair shares the vocabulary; the draft is the target plus seeded noise.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

# GGUF value types (gguf spec): scalar struct formats and numpy dtypes for arrays.
_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q",
           11: "<q", 12: "<d"}
_ARRAY = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "<u1",
          10: "<u8", 11: "<i8", 12: "<f8"}
_STRING, _ARRAY_TYPE = 8, 9


def vocab_path(name: str = "llama-spm") -> Path:
    """A vocabulary-only GGUF shipped in the llama.cpp tree spec was built from."""
    from spec import _build_info

    path = Path(_build_info.LLAMA_CPP_SRC) / "models" / f"ggml-vocab-{name}.gguf"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found (is the llama.cpp source still in the cache?)")
    return path


def read_tokenizer_kv(path: str | os.PathLike) -> list[tuple[str, int, int | None, object]]:
    """The ``tokenizer.*`` metadata of a GGUF file as (key, type, array subtype, value) tuples.

    A direct struct parser: ``gguf.GGUFReader`` builds a numpy view per array element, which is
    slow on large vocabularies.
    """
    data = Path(path).read_bytes()
    if data[:4] != b"GGUF":
        raise ValueError(f"{path}: not a GGUF file")
    _version, _n_tensors, n_kv = struct.unpack_from("<IQQ", data, 4)
    off = 24

    def read_str(off):
        (n,) = struct.unpack_from("<Q", data, off)
        return data[off + 8: off + 8 + n], off + 8 + n

    out = []
    for _ in range(n_kv):
        key, off = read_str(off)
        (vtype,) = struct.unpack_from("<I", data, off)
        off += 4
        sub = None
        if vtype == _STRING:
            value, off = read_str(off)
        elif vtype == _ARRAY_TYPE:
            sub, n = struct.unpack_from("<IQ", data, off)
            off += 12
            if sub == _STRING:
                value = []
                for _ in range(n):
                    item, off = read_str(off)
                    value.append(item)
            else:
                dtype = np.dtype(_ARRAY[sub])
                value = np.frombuffer(data, dtype=dtype, count=n, offset=off).tolist()
                off += n * dtype.itemsize
        else:
            fmt = _SCALAR[vtype]
            (value,) = struct.unpack_from(fmt, data, off)
            off += struct.calcsize(fmt)
        name = key.decode()
        if name.startswith("tokenizer."):
            out.append((name, vtype, sub, value))
    return out


def make_tiny_llama(path: str | os.PathLike, *, vocab: str | os.PathLike | None = None,
                    n_layer: int = 2, n_embd: int = 64, n_head: int = 4, n_ff: int = 128,
                    n_ctx_train: int = 4096, seed: int = 0, perturb: float = 0.0,
                    perturb_seed: int = 12345, embd_std: float = 1.0,
                    proj_scale: float = 1.0) -> Path:
    """Write a tiny random llama-architecture GGUF to ``path`` and return the path.

    ``perturb`` > 0 adds N(0, perturb·std) noise (seeded by ``perturb_seed``) to every weight of
    the ``seed`` model: a draft model close to its target. Weights are drawn layer by layer in a
    fixed order, so a model with fewer layers shares the first layers of one with more.
    The output head is untied (a random tied model mostly repeats its input token).

    ``proj_scale`` scales the attention and feed-forward weights: near 0 the model becomes a
    bigram table (next token = f(current token)), whose greedy output falls into a cycle —
    repetitive text on which drafters get accepted, as with real models on grounded prompts.
    """
    from gguf import GGUFValueType, GGUFWriter, LlamaFileType

    vocab = Path(vocab) if vocab is not None else vocab_path()
    if n_embd % n_head:
        raise ValueError(f"n_embd ({n_embd}) must be divisible by n_head ({n_head})")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    head_dim = n_embd // n_head
    tmp = path.with_name(path.name + ".tmp")
    writer = GGUFWriter(str(tmp), "llama")
    writer.add_name(f"tiny-llama-L{n_layer}-E{n_embd}-seed{seed}-perturb{perturb}")
    writer.add_context_length(n_ctx_train)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(LlamaFileType.ALL_F32)
    n_vocab = 0
    for key, vtype, sub, value in read_tokenizer_kv(vocab):
        if vtype == _ARRAY_TYPE:
            writer.add_key_value(key, value, GGUFValueType.ARRAY, sub_type=GGUFValueType(sub))
            if key == "tokenizer.ggml.tokens":
                n_vocab = len(value)
        else:
            writer.add_key_value(key, value, GGUFValueType(vtype))
    if not n_vocab:
        raise ValueError(f"{vocab}: no tokenizer.ggml.tokens")
    writer.add_vocab_size(n_vocab)

    rng = np.random.default_rng(seed)
    noise = np.random.default_rng(perturb_seed) if perturb > 0 else None

    def draw(shape, std):
        a = rng.standard_normal(shape, dtype=np.float32) * np.float32(std)
        if noise is not None:
            a += noise.standard_normal(shape, dtype=np.float32) * np.float32(std * perturb)
        return a

    def matrix(name, rows, cols, std=None):
        if std is None:
            std = proj_scale / np.sqrt(cols)
        writer.add_tensor(name, draw((rows, cols), std))

    def norm(name):
        a = np.ones(n_embd, dtype=np.float32)
        if noise is not None:
            a += noise.standard_normal(n_embd, dtype=np.float32) * np.float32(0.1 * perturb)
        writer.add_tensor(name, a)

    matrix("token_embd.weight", n_vocab, n_embd, embd_std)
    norm("output_norm.weight")
    matrix("output.weight", n_vocab, n_embd, embd_std)
    for i in range(n_layer):
        norm(f"blk.{i}.attn_norm.weight")
        for proj in ("q", "k", "v"):
            matrix(f"blk.{i}.attn_{proj}.weight", n_embd, n_embd)
        matrix(f"blk.{i}.attn_output.weight", n_embd, n_embd)
        norm(f"blk.{i}.ffn_norm.weight")
        matrix(f"blk.{i}.ffn_gate.weight", n_ff, n_embd)
        matrix(f"blk.{i}.ffn_up.weight", n_ff, n_embd)
        matrix(f"blk.{i}.ffn_down.weight", n_embd, n_ff)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(path)
    return path
