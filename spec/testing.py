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


def copy_tokenizer(writer, vocab: str | os.PathLike, skip: tuple[str, ...] = ()) -> int:
    """Copy the ``tokenizer.*`` metadata of the GGUF ``vocab`` into a ``gguf.GGUFWriter`` (less
    the keys in ``skip``); returns the vocabulary size."""
    from gguf import GGUFValueType

    n_vocab = 0
    for key, vtype, sub, value in read_tokenizer_kv(vocab):
        if key in skip:
            continue
        if vtype == _ARRAY_TYPE:
            writer.add_key_value(key, value, GGUFValueType.ARRAY, sub_type=GGUFValueType(sub))
            if key == "tokenizer.ggml.tokens":
                n_vocab = len(value)
        else:
            writer.add_key_value(key, value, GGUFValueType(vtype))
    if not n_vocab:
        raise ValueError(f"{vocab}: no tokenizer.ggml.tokens")
    return n_vocab


def _write(writer, tmp: Path, path: Path) -> Path:
    """Write a built GGUFWriter to ``tmp``, then move it to ``path`` (a reader never sees a
    half-written model)."""
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(path)
    return path


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
    from gguf import GGUFWriter, LlamaFileType

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
    n_vocab = copy_tokenizer(writer, vocab)
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
    return _write(writer, tmp, path)


def make_tiny_qwen35_mtp(path: str | os.PathLike, *, vocab: str | os.PathLike | None = None,
                         n_trunk: int = 2, n_embd: int = 64, n_head: int = 4, n_head_kv: int = 2,
                         head_dim: int = 16, n_ff: int = 128, ssm_state: int = 16,
                         ssm_groups: int = 2, ssm_v_heads: int = 4, ssm_conv: int = 4,
                         full_attn_interval: int = 2, seed: int = 0, mtp: bool = True,
                         proj_scale: float = 1.0) -> Path:
    """Write a tiny random qwen35-architecture GGUF (hybrid: gated-delta-net recurrent layers
    and attention layers) with one MTP (NextN) block, and return the path.

    Trunk layer i is recurrent unless (i + 1) % full_attn_interval == 0. The NextN block (index
    n_trunk) is an attention layer plus ``nextn.{eh_proj, enorm, hnorm, shared_head_norm}``;
    llama.cpp falls back to token_embd / output for the optional NextN embedding and head.
    ``mtp=False`` writes the trunk only (a model without MTP heads). Written with ``gguf``:
    llama_model_save_to_file gets the per-layer arrays of hybrid MTP models wrong.

    ``proj_scale`` scales the blocks' matrices, as :func:`make_tiny_llama`'s. The token
    embedding and the output head are drawn first, as there: a tiny llama of the same ``seed``
    shares them, so with small ``proj_scale`` both are near the same bigram table and the llama
    drafts for this hybrid target with real (partial) acceptance.
    """
    from gguf import GGUFWriter, LlamaFileType

    vocab = Path(vocab) if vocab is not None else vocab_path()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    E, F, H, Hkv, D = n_embd, n_ff, n_head, n_head_kv, head_dim
    S, G, R, K = ssm_state, ssm_groups, ssm_v_heads, ssm_conv
    Kd, Vd = S * G, S * R
    if D // 2 < 3:
        raise ValueError(f"head_dim must be >= 6 (rope sections), got {D}")
    sections = [D // 2 - 2 * (D // 6), D // 6, D // 6, 0]
    n_mtp = 1 if mtp else 0
    rng = np.random.default_rng(seed)
    tmp = path.with_name(path.name + ".tmp")
    w = GGUFWriter(str(tmp), "qwen35")
    w.add_name(f"tiny-qwen35-mtp{n_mtp}-L{n_trunk}-E{E}-seed{seed}")
    w.add_context_length(4096)
    w.add_embedding_length(E)
    w.add_block_count(n_trunk + n_mtp)
    if n_mtp:
        w.add_nextn_predict_layers(n_mtp)
    w.add_feed_forward_length(F)
    w.add_head_count(H)
    w.add_head_count_kv(Hkv)
    w.add_key_length(D)
    w.add_value_length(D)
    w.add_rope_dimension_count(D)
    w.add_rope_dimension_sections(sections)
    w.add_rope_freq_base(1e7)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_ssm_conv_kernel(K)
    w.add_ssm_state_size(S)
    w.add_ssm_group_count(G)
    w.add_ssm_time_step_rank(R)
    w.add_ssm_inner_size(Vd)
    w.add_full_attention_interval(full_attn_interval)
    w.add_file_type(LlamaFileType.ALL_F32)
    n_vocab = copy_tokenizer(w, vocab)
    w.add_vocab_size(n_vocab)

    def mat(name, shape, std=None):
        std = proj_scale / np.sqrt(shape[1]) if std is None else std
        w.add_tensor(name, rng.standard_normal(shape, dtype=np.float32) * np.float32(std))

    def vec(name, n, value=1.0):
        w.add_tensor(name, np.full((n,), value, dtype=np.float32))

    def attn_block(i):
        vec(f"blk.{i}.attn_norm.weight", E)
        vec(f"blk.{i}.post_attention_norm.weight", E)
        mat(f"blk.{i}.attn_q.weight", (2 * H * D, E))     # query + output gate per head
        mat(f"blk.{i}.attn_k.weight", (Hkv * D, E))
        mat(f"blk.{i}.attn_v.weight", (Hkv * D, E))
        mat(f"blk.{i}.attn_output.weight", (E, H * D))
        vec(f"blk.{i}.attn_q_norm.weight", D)
        vec(f"blk.{i}.attn_k_norm.weight", D)

    def ffn(i):
        mat(f"blk.{i}.ffn_gate.weight", (F, E))
        mat(f"blk.{i}.ffn_up.weight", (F, E))
        mat(f"blk.{i}.ffn_down.weight", (E, F))

    mat("token_embd.weight", (n_vocab, E), std=1.0)
    vec("output_norm.weight", E)
    mat("output.weight", (n_vocab, E), std=1.0)          # untied: a tied random model echoes
    for i in range(n_trunk):
        if (i + 1) % full_attn_interval != 0:             # gated delta net
            vec(f"blk.{i}.attn_norm.weight", E)
            vec(f"blk.{i}.post_attention_norm.weight", E)
            mat(f"blk.{i}.attn_qkv.weight", (2 * Kd + Vd, E))
            mat(f"blk.{i}.attn_gate.weight", (Vd, E))
            mat(f"blk.{i}.ssm_conv1d.weight", (2 * Kd + Vd, K))   # F32: ssm_conv needs it
            w.add_tensor(f"blk.{i}.ssm_dt.bias", rng.standard_normal((R,), dtype=np.float32) * np.float32(0.1))
            w.add_tensor(f"blk.{i}.ssm_a", -np.exp(rng.uniform(0.0, np.log(16.0), (R,))).astype(np.float32))
            mat(f"blk.{i}.ssm_beta.weight", (R, E))
            mat(f"blk.{i}.ssm_alpha.weight", (R, E))
            vec(f"blk.{i}.ssm_norm.weight", S)
            mat(f"blk.{i}.ssm_out.weight", (E, Vd))
        else:
            attn_block(i)
        ffn(i)
    if n_mtp:
        i = n_trunk
        attn_block(i)
        ffn(i)
        mat(f"blk.{i}.nextn.eh_proj.weight", (E, 2 * E))
        vec(f"blk.{i}.nextn.enorm.weight", E)
        vec(f"blk.{i}.nextn.hnorm.weight", E)
        vec(f"blk.{i}.nextn.shared_head_norm.weight", E)
    return _write(w, tmp, path)


def make_tiny_eagle3(path: str | os.PathLike, *, n_embd_target: int = 64,
                     vocab: str | os.PathLike | None = None, target_layers=(0, 1, 2),
                     n_embd: int = 64, n_head: int = 2, n_ff: int = 128, seed: int = 0,
                     std: float = 0.1) -> Path:
    """Write a tiny random 1-layer EAGLE-3 draft GGUF for a llama target of width
    ``n_embd_target`` with at least max(target_layers)+1 layers, and return the path.

    Layout: ``fc`` (3·n_embd_target → n_embd) fuses the three target layers' hidden states;
    one decoder block whose attention reads [token embedding, hidden] (2·n_embd wide);
    ``output_norm`` and an untied ``output`` head. The token embedding is the target's
    (optional tensor omitted). Metadata ``eagle3.target_layers`` (exactly 3) and
    ``eagle3.target_hidden_size``.
    """
    from gguf import GGUFValueType, GGUFWriter

    if len(target_layers) != 3:
        raise ValueError(f"EAGLE-3 reads exactly 3 target layers, got {target_layers!r}")
    if n_embd % n_head:
        raise ValueError(f"n_embd ({n_embd}) must be divisible by n_head ({n_head})")
    vocab = Path(vocab) if vocab is not None else vocab_path()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    E, F, H = n_embd, n_ff, n_head
    D = E // H
    rng = np.random.default_rng(seed)
    tmp = path.with_name(path.name + ".tmp")
    w = GGUFWriter(str(tmp), "eagle3")
    w.add_name(f"tiny-eagle3-E{E}-seed{seed}")
    w.add_block_count(1)
    w.add_context_length(4096)
    w.add_embedding_length(E)
    w.add_feed_forward_length(F)
    w.add_head_count(H)
    w.add_head_count_kv(H)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(D)
    w.add_key_value("eagle3.target_layers", [int(i) for i in target_layers], GGUFValueType.ARRAY,
                    sub_type=GGUFValueType.INT32)
    w.add_key_value("eagle3.target_hidden_size", int(n_embd_target), GGUFValueType.UINT32)
    n_vocab = copy_tokenizer(w, vocab)
    w.add_vocab_size(n_vocab)

    def t(name, rows, cols=None):     # numpy shape (rows, cols) = ggml (cols, rows)
        shape = (rows,) if cols is None else (rows, cols)
        w.add_tensor(name, rng.standard_normal(shape, dtype=np.float32) * np.float32(std))

    t("fc.weight", E, 3 * n_embd_target)
    t("output_norm.weight", E)
    t("output.weight", n_vocab, E)
    t("blk.0.attn_norm.weight", E)
    t("blk.0.attn_norm_2.weight", E)
    t("blk.0.attn_q.weight", H * D, 2 * E)
    t("blk.0.attn_k.weight", H * D, 2 * E)
    t("blk.0.attn_v.weight", H * D, 2 * E)
    t("blk.0.attn_output.weight", E, H * D)
    t("blk.0.ffn_norm.weight", E)
    t("blk.0.ffn_gate.weight", F, E)
    t("blk.0.ffn_up.weight", F, E)
    t("blk.0.ffn_down.weight", E, F)
    return _write(w, tmp, path)


def make_tiny_dflash(path: str | os.PathLike, *, n_embd: int = 64,
                     vocab: str | os.PathLike | None = None, target_layers=(1, 2, 3),
                     n_layer: int = 1, n_head: int = 4, n_head_kv: int = 2, head_dim: int = 16,
                     n_ff: int = 128, block_size: int = 4, mask_token_id: int | None = 0,
                     seed: int = 0, std: float = 0.3) -> Path:
    """Write a tiny random DFlash (block-diffusion) draft GGUF for a target of width ``n_embd``
    with the same vocabulary, and return the path.

    Laid out as llama.cpp's converter writes a DFlash draft (``DFlashModel`` in
    ``conversion/qwen.py``, a Qwen3 backbone; ``llama_model_dflash`` in ``src/models/dflash.cpp``
    loads it): ``fc`` (k·n_embd → n_embd) fuses the k target layers' hidden states and
    ``enc.output_norm`` normalizes the result, whose per-layer K/V the draft injects into its
    cache; ``n_layer`` Qwen3 blocks (GQA, per-head q/k norms) denoise the block [id_last,
    mask, mask, ...] with non-causal attention; ``output_norm``. No ``token_embd`` and no
    ``output`` (both optional): a DFlash draft shares the target's embeddings and head, which
    llama.cpp reaches through the draft context's ``ctx_other``, so ``n_embd`` must be the
    target's width.

    Metadata as converted: ``dflash.target_layers`` holds the target layer *inputs* read (the
    converter writes Hugging Face's ``target_layer_ids`` + 1; on a llama target each must be
    below its layer count), ``dflash.block_size`` (a draft is at most block_size - 1 tokens),
    and ``tokenizer.ggml.mask_token_id`` — the noise token, which llama-spm lacks, so <unk> by
    default (None: none written, as the converter does for a config without one).

    Weights are N(0, std²), norms 1. At the default std the drafts depend on the target's
    hidden states; near 0.1 the mask token's embedding dominates and every block drafts the
    same tokens whatever the context.
    """
    from gguf import GGUFValueType, GGUFWriter

    layers = [int(i) for i in target_layers]
    if not layers:
        raise ValueError("a DFlash draft reads at least one target layer, got none")
    if block_size < 2:
        raise ValueError(f"block_size must be >= 2 (the anchor plus one draft slot), "
                         f"got {block_size}")
    vocab = Path(vocab) if vocab is not None else vocab_path()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    E, F, H, Hkv, D = n_embd, n_ff, n_head, n_head_kv, head_dim
    rng = np.random.default_rng(seed)
    tmp = path.with_name(path.name + ".tmp")
    w = GGUFWriter(str(tmp), "dflash")
    w.add_name(f"tiny-dflash-L{n_layer}-E{E}-seed{seed}")
    w.add_block_count(n_layer)
    w.add_context_length(4096)
    w.add_embedding_length(E)
    w.add_feed_forward_length(F)
    w.add_head_count(H)
    w.add_head_count_kv(Hkv)
    w.add_key_length(D)
    w.add_value_length(D)
    w.add_rope_freq_base(1e6)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_key_value("dflash.block_size", int(block_size), GGUFValueType.UINT32)
    w.add_key_value("dflash.target_layers", layers, GGUFValueType.ARRAY,
                    sub_type=GGUFValueType.INT32)
    n_vocab = copy_tokenizer(w, vocab, skip=("tokenizer.ggml.mask_token_id",))
    if mask_token_id is not None:
        if not 0 <= mask_token_id < n_vocab:
            raise ValueError(f"mask_token_id must be a token id in [0, {n_vocab}), "
                             f"got {mask_token_id}")
        w.add_key_value("tokenizer.ggml.mask_token_id", int(mask_token_id),
                        GGUFValueType.UINT32)
    w.add_vocab_size(n_vocab)

    def mat(name, rows, cols):     # numpy shape (rows, cols) = ggml (cols, rows)
        w.add_tensor(name, rng.standard_normal((rows, cols), dtype=np.float32) * np.float32(std))

    def vec(name, n):
        w.add_tensor(name, np.ones(n, dtype=np.float32))

    mat("fc.weight", E, len(layers) * E)
    vec("enc.output_norm.weight", E)
    vec("output_norm.weight", E)
    for i in range(n_layer):
        vec(f"blk.{i}.attn_norm.weight", E)
        mat(f"blk.{i}.attn_q.weight", H * D, E)
        mat(f"blk.{i}.attn_k.weight", Hkv * D, E)
        mat(f"blk.{i}.attn_v.weight", Hkv * D, E)
        mat(f"blk.{i}.attn_output.weight", E, H * D)
        vec(f"blk.{i}.attn_q_norm.weight", D)
        vec(f"blk.{i}.attn_k_norm.weight", D)
        vec(f"blk.{i}.ffn_norm.weight", E)
        mat(f"blk.{i}.ffn_gate.weight", F, E)
        mat(f"blk.{i}.ffn_up.weight", F, E)
        mat(f"blk.{i}.ffn_down.weight", E, F)
    return _write(w, tmp, path)
