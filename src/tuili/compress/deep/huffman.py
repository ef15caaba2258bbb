"""Canonical Huffman coding of small integer alphabets (cluster indices, index gaps).

Only the code lengths are stored; both sides rebuild the same canonical code from them. Decoding
reads a fixed window of ``max length`` bits and looks the symbol up in one table."""
from __future__ import annotations

import heapq

import numpy as np

from tuili.errors import ModelLoadError


def code_lengths(counts: np.ndarray) -> np.ndarray:
    """Huffman code length per symbol (0 for symbols that never occur; a lone symbol gets length 1)."""
    counts = np.asarray(counts, np.int64)
    used = np.flatnonzero(counts)
    lengths = np.zeros(len(counts), np.int64)
    if len(used) == 1:
        lengths[used] = 1
        return lengths
    heap = [(int(counts[s]), i, [int(s)]) for i, s in enumerate(used)]
    heapq.heapify(heap)
    tie = len(heap)
    while len(heap) > 1:
        c1, _, s1 = heapq.heappop(heap)
        c2, _, s2 = heapq.heappop(heap)
        lengths[s1 + s2] += 1  # every symbol under the merged node sinks one level
        heapq.heappush(heap, (c1 + c2, tie, s1 + s2))
        tie += 1
    return lengths


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """The canonical code of each symbol (as an integer of ``lengths[s]`` bits)."""
    codes = np.zeros(len(lengths), np.int64)
    code, prev = 0, 0
    for s in sorted(np.flatnonzero(lengths), key=lambda s: (lengths[s], s)):
        code <<= int(lengths[s]) - prev
        codes[s] = code
        code += 1
        prev = int(lengths[s])
    return codes


def encode(symbols: np.ndarray, lengths: np.ndarray) -> bytes:
    """Pack the codes of ``symbols`` MSB-first into bytes (zero-padded to a byte boundary)."""
    codes = canonical_codes(lengths)
    sym = np.asarray(symbols, np.int64)
    if len(sym) == 0:
        return b""
    ln, cd = lengths[sym], codes[sym]
    width = int(lengths.max())
    # each code as `width` bits, then keep its first `ln` bits: vectorized, no per-bit Python loop
    bits = ((cd[:, None] << (width - ln[:, None])) >> np.arange(width - 1, -1, -1)[None, :]) & 1
    keep = np.arange(width)[None, :] < ln[:, None]
    return np.packbits(bits[keep].astype(np.uint8)).tobytes()


def decode(data: bytes, lengths: np.ndarray, count: int) -> np.ndarray:
    """The first ``count`` symbols of a stream written by :func:`encode`."""
    lengths = np.asarray(lengths, np.int64)
    if count == 0:
        return np.zeros(0, np.int64)
    width = int(lengths.max())
    if width == 0:
        raise ModelLoadError("corrupt compressed model: a Huffman table with no symbols")
    codes = canonical_codes(lengths)
    table_sym = np.full(1 << width, -1, np.int64)
    table_len = np.zeros(1 << width, np.int64)
    for s in np.flatnonzero(lengths):
        lo = int(codes[s]) << (width - int(lengths[s]))
        hi = lo + (1 << (width - int(lengths[s])))
        table_sym[lo:hi], table_len[lo:hi] = s, lengths[s]
    bits = np.unpackbits(np.frombuffer(data, np.uint8))
    bits = np.concatenate([bits, np.zeros(width, np.uint8)])
    # the value of the `width`-bit window starting at every bit position, computed once
    weights = 1 << np.arange(width - 1, -1, -1)
    n = len(bits) - width + 1
    windows = np.zeros(n, np.int64)
    for j in range(width):
        windows += bits[j:j + n].astype(np.int64) * int(weights[j])
    out = np.empty(count, np.int64)
    pos = 0
    sym_at, len_at = table_sym[windows], table_len[windows]
    for i in range(count):
        if pos >= n or sym_at[pos] < 0:
            raise ModelLoadError("corrupt compressed model: a Huffman stream ends early or holds an invalid code")
        out[i] = sym_at[pos]
        pos += int(len_at[pos])
    return out


__all__ = ["canonical_codes", "code_lengths", "decode", "encode"]
