"""The Deep Compression file (``.tdc``): an ONNX model whose Conv/Gemm/MatMul weights are stored as
sparse, shared, Huffman-coded streams (Han et al. 2016, Sec. 2-4). Layout, version 1 (little-endian):

    magic    8 bytes  b"\\x89TDC\\r\\n\\x1a\\n" (PNG-style: catches text-mode copies and truncation early)
    version  u16      1
    hlen     u32      then hlen bytes: zlib(JSON header) = {"tensors": [{"name", "k", "entries", "gap_bits",
                      "value_lengths", "gap_lengths", "value_bytes", "gap_bytes"}, ...]}
    slen     u32      then slen bytes: zlib(the ONNX ModelProto with the coded weights' data removed)
    per coded tensor, in header order:
             float32[k]  the codebook (shared weight values)
             value_bytes the Huffman-coded cluster index of each entry (symbol k = a filler zero)
             gap_bytes   the Huffman-coded gaps: entry i sits ``gap + 1`` positions after entry i-1
                         (first entry: after position -1); a gap longer than 2**gap_bits - 1 is split
                         by filler entries, as the paper does with its 8-bit (conv) / 5-bit (fc) gaps

Huffman tables are stored as code lengths (canonical codes). Everything else of the model (graph,
biases, metadata) is the zlib-compressed skeleton, so the loader restores the model exactly."""
from __future__ import annotations

import dataclasses
import json
import logging
import struct
import zlib
from pathlib import Path

import numpy as np

from tuili.compress.deep import huffman
from tuili.errors import ConfigError, ModelLoadError

log = logging.getLogger(__name__)

MAGIC = b"\x89TDC\r\n\x1a\n"
VERSION = 1
WEIGHT_OPS = {"Conv": 1, "Gemm": 1, "MatMul": 1}  # op -> input index of its weight
MIN_SIZE = 16  # smaller tensors stay in the skeleton


@dataclasses.dataclass
class TensorStats:
    """Bits of one weight tensor at each stage of the paper's Table 1 (P: pruned, Q: quantized, H: Huffman)."""

    name: str
    numel: int
    nonzero: int
    k: int
    entries: int  # nonzeros + fillers
    bits_p: int  # float32 values + fixed-width gaps
    bits_pq: int  # fixed-width cluster indices + fixed-width gaps (+ codebook)
    bits_pqh: int  # Huffman indices + Huffman gaps (+ codebook)

    @property
    def ratio(self) -> float:
        return 32 * self.numel / max(self.bits_pqh, 1)


@dataclasses.dataclass
class CompressReport:
    path: Path
    file_bytes: int
    onnx_bytes: int  # the float ONNX model it came from
    skeleton_bytes: int  # compressed graph, biases and metadata
    tensors: list[TensorStats]

    @property
    def ratio(self) -> float:
        return self.onnx_bytes / max(self.file_bytes, 1)

    def table(self) -> str:
        lines = ["| layer | weights | nonzero % | clusters | bits/weight P | P+Q | P+Q+H | smaller |",
                 "|---|---|---|---|---|---|---|---|"]
        for t in self.tensors:
            lines.append(f"| {t.name} | {t.numel:,} | {100 * t.nonzero / t.numel:.1f} | {t.k} | "
                         f"{t.bits_p / t.numel:.2f} | {t.bits_pq / t.numel:.2f} | {t.bits_pqh / t.numel:.2f} | "
                         f"{t.ratio:.1f}x |")
        lines.append(f"file {self.file_bytes:,} B (skeleton {self.skeleton_bytes:,} B) from ONNX {self.onnx_bytes:,} B: "
                     f"{self.ratio:.1f}x smaller")
        return "\n".join(lines)


def _load_onnx(model):
    import onnx

    if isinstance(model, onnx.ModelProto):
        return model
    try:
        return onnx.load(str(model))
    except Exception as e:  # onnx raises DecodeError / OSError
        raise ModelLoadError(f"cannot read ONNX model {model}: {e}") from e


def weight_names(model) -> list[str]:
    """Float32 initializers used as Conv/Gemm/MatMul weights, with at least MIN_SIZE elements."""
    from onnx import TensorProto

    inits = {t.name: t for t in model.graph.initializer}
    names = []
    for node in model.graph.node:
        i = WEIGHT_OPS.get(node.op_type)
        if i is not None and len(node.input) > i and node.input[i] in inits and node.input[i] not in names:
            t = inits[node.input[i]]
            if t.data_type == TensorProto.FLOAT and int(np.prod(t.dims)) >= MIN_SIZE:
                names.append(t.name)
    return names


def _entries(w: np.ndarray, codebook: np.ndarray, gap_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """(gaps, symbols) of the sparse stream, fillers (symbol k) inserted where a gap is too long."""
    pos = np.flatnonzero(w)
    gaps = np.diff(np.concatenate([[-1], pos])) - 1
    span = 1 << gap_bits
    fillers = gaps // span
    sym = np.searchsorted(codebook, w[pos])
    total = len(pos) + int(fillers.sum())
    g_out = np.full(total, span - 1, np.int64)
    s_out = np.full(total, len(codebook), np.int64)
    real = np.cumsum(fillers + 1) - 1  # where each real entry lands after its fillers
    g_out[real] = gaps - fillers * span
    s_out[real] = sym
    return g_out, s_out


def _huffman_bits(symbols: np.ndarray, n: int) -> tuple[int, np.ndarray]:
    counts = np.bincount(symbols, minlength=n)
    lengths = huffman.code_lengths(counts)
    return int((counts * lengths).sum()), lengths


def compress(model, path, *, cluster_bits: dict | None = None, sparsity: float | None = None) -> CompressReport:
    """Write ``model`` (ONNX path or ModelProto) as a ``.tdc`` file. Weights with more than 256
    distinct nonzero values are first clustered (k-means, ``cluster_bits``: {"conv": 5, "fc": 4});
    weights already shared (``tuili.compress.deep.sharing``) keep their values exactly. ``sparsity``
    first zeroes that fraction of smallest-magnitude weights per tensor (data-free: no fine-tuning)."""
    import onnx
    from onnx import numpy_helper

    from tuili.compress.deep.sharing import DEFAULT_BITS, kmeans_1d
    from tuili.compress.prune.unstructured import check_sparsity

    bits = {**DEFAULT_BITS, **(cluster_bits or {})}
    if sparsity is not None:
        sparsity = check_sparsity(sparsity)
    src_bytes = len(model.SerializeToString()) if isinstance(model, onnx.ModelProto) else Path(model).stat().st_size
    model = _load_onnx(model)
    skeleton = onnx.ModelProto()
    skeleton.CopyFrom(model)
    inits = {t.name: t for t in skeleton.graph.initializer}
    header, blobs, stats = [], [], []
    for name in weight_names(skeleton):
        t = inits[name]
        w = numpy_helper.to_array(t).astype(np.float32).ravel()
        if sparsity is not None:
            w = w.copy()
            w[np.argsort(np.abs(w), kind="stable")[:int(round(sparsity * w.size))]] = 0
        codebook = np.unique(w[w != 0])
        if len(codebook) > 256:
            k_bits = bits["conv"] if len(t.dims) > 2 else bits["fc"]
            centroids, idx = kmeans_1d(w[w != 0], 1 << k_bits)
            log.info("%s: %d distinct values clustered to %d", name, len(codebook), len(centroids))
            w = w.copy()
            w[w != 0] = centroids[idx]
            codebook = np.unique(w[w != 0])
        k = len(codebook)
        best = None
        for gb in range(1, 9):  # the gap width that codes shortest
            gaps, syms = _entries(w, codebook, gb)
            gbits, glen = _huffman_bits(gaps, 1 << gb)
            vbits, vlen = _huffman_bits(syms, k + 1)
            if best is None or gbits + vbits < best[0]:
                best = (gbits + vbits, gb, gaps, syms, glen, vlen)
        _, gb, gaps, syms, glen, vlen = best
        vdata, gdata = huffman.encode(syms, vlen), huffman.encode(gaps, glen)
        header.append({"name": name, "k": k, "entries": len(syms), "gap_bits": gb, "value_lengths": vlen.tolist(),
                       "gap_lengths": glen.tolist(), "value_bytes": len(vdata), "gap_bytes": len(gdata)})
        blobs += [codebook.astype("<f4").tobytes(), vdata, gdata]
        nnz = int(np.count_nonzero(w))
        q_bits = max(1, int(np.ceil(np.log2(k + 1))))
        stats.append(TensorStats(name, w.size, nnz, k, len(syms), bits_p=len(syms) * (32 + gb),
                                 bits_pq=len(syms) * (q_bits + gb) + 32 * k,
                                 bits_pqh=8 * (len(vdata) + len(gdata)) + 32 * k))
        t.ClearField("raw_data")
        t.ClearField("float_data")
    if not header:
        raise ConfigError("deep compression: the model has no float32 Conv/Gemm/MatMul weight initializer to compress")
    h = zlib.compress(json.dumps({"tensors": header}, separators=(",", ":")).encode(), 9)
    s = zlib.compress(skeleton.SerializeToString(), 9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(MAGIC + struct.pack("<HI", VERSION, len(h)) + h + struct.pack("<I", len(s)) + s + b"".join(blobs))
    return CompressReport(path, path.stat().st_size, src_bytes, len(s), stats)


def load(path):
    """Rebuild the ONNX ModelProto from a ``.tdc`` file."""
    import onnx

    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ModelLoadError(f"cannot read compressed model {path}: {e}") from e
    if data[:8] != MAGIC:
        raise ModelLoadError(f"{path} is not a tuili Deep Compression file (bad magic); write one with "
                             "`tuili deep-compress`")
    try:
        version, hlen = struct.unpack_from("<HI", data, 8)
        if version != VERSION:
            raise ModelLoadError(f"{path}: format version {version}; this tuili reads version {VERSION}")
        at = 14
        header = json.loads(zlib.decompress(data[at:at + hlen]))
        at += hlen
        (slen,) = struct.unpack_from("<I", data, at)
        model = onnx.ModelProto.FromString(zlib.decompress(data[at + 4:at + 4 + slen]))
        at += 4 + slen
        inits = {t.name: t for t in model.graph.initializer}
        for rec in header["tensors"]:
            k = rec["k"]
            codebook = np.frombuffer(data, "<f4", k, at)
            at += 4 * k
            syms = huffman.decode(data[at:at + rec["value_bytes"]], np.array(rec["value_lengths"]), rec["entries"])
            at += rec["value_bytes"]
            gaps = huffman.decode(data[at:at + rec["gap_bytes"]], np.array(rec["gap_lengths"]), rec["entries"])
            at += rec["gap_bytes"]
            t = inits[rec["name"]]
            w = np.zeros(int(np.prod(t.dims)), np.float32)
            pos = np.cumsum(gaps + 1) - 1
            real = syms < k
            w[pos[real]] = codebook[syms[real]]
            t.raw_data = w.astype("<f4").tobytes()
        if at != len(data):
            raise ModelLoadError(f"{path}: {len(data) - at} trailing bytes; the file is corrupt")
    except ModelLoadError:
        raise
    except (struct.error, zlib.error, ValueError, KeyError, IndexError) as e:
        raise ModelLoadError(f"{path}: corrupt or truncated Deep Compression file ({type(e).__name__}: {e})") from e
    return model


def decompress(path, out) -> Path:
    """Write the ONNX model of a ``.tdc`` file to ``out``."""
    import onnx

    out = Path(out)
    onnx.save(load(path), str(out))
    return out


__all__ = ["MAGIC", "VERSION", "CompressReport", "TensorStats", "compress", "decompress", "load", "weight_names"]
