"""ONNX forms of a binarized model.

* standard ops (any engine): what ``torch.onnx.export`` records for :class:`BinaryConv2d` in eval
  mode, ``Sign`` then ``Conv`` whose weight is ``alpha * Sign(W)`` (torch folds a following
  BatchNorm into it: still one magnitude per output channel, possibly negative);
* tuili ops (:func:`to_binary_ops`): each ``Sign -> Conv`` pair whose weight has one magnitude per
  output channel becomes ``tuili::BinaryConv`` with the signs bit-packed (64 channels per uint64
  word, 32x fewer weight bytes) and ``alpha`` = that magnitude; the tuili runtime runs it with
  XNOR + popcount (:mod:`tuili.ops.binary`). Results are identical to the standard form.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from tuili.errors import ConfigError, ModelLoadError
from tuili.ops.binary import DOMAIN, pack_weights

log = logging.getLogger(__name__)


def _binary_weight(w: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(alpha [C_out], weight) when every output channel of ``w`` has one magnitude, else None."""
    if w.ndim != 4 or w.dtype != np.float32:
        return None
    mag = np.abs(w).reshape(w.shape[0], -1)
    alpha = mag[:, 0]
    if not np.all(mag == alpha[:, None]) or not np.all(alpha > 0):
        return None
    return alpha.astype(np.float32), w


def _copy(node: onnx.NodeProto) -> onnx.NodeProto:
    out = onnx.NodeProto()
    out.CopyFrom(node)
    return out


def to_binary_ops(src, dst) -> list[str]:
    """Rewrite the ONNX model at ``src`` (path) into ``dst`` with ``tuili::BinaryConv`` for every
    binary ``Sign -> Conv``; returns the names of the rewritten Conv nodes. ``src`` is not modified."""
    src, dst = Path(src), Path(dst)
    if src.resolve() == dst.resolve():
        raise ConfigError(f"output {dst} is the input model; write the tuili form to another file")
    try:
        model = onnx.load(str(src))
    except Exception as e:  # noqa: BLE001 - onnx raises several kinds
        raise ModelLoadError(f"cannot read ONNX model {src}: {e}") from e
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    uses: dict[str, int] = {}
    for n in g.node:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    rewritten, drop = [], set()
    nodes = []
    for n in g.node:
        sign = producer.get(n.input[0]) if n.op_type == "Conv" and n.input else None
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        found = None
        if sign is not None and sign.op_type == "Sign" and n.input[1] in inits and attrs.get("group", 1) == 1:
            w = numpy_helper.to_array(inits[n.input[1]])
            found = _binary_weight(w) if w.ndim == 4 else None
        if found is None:
            nodes.append(_copy(n))
            continue
        alpha, w = found
        base = n.name or n.output[0]
        packed, scale = f"{base}.binary_weight", f"{base}.alpha"
        g.initializer.extend([numpy_helper.from_array(pack_weights(w), packed), numpy_helper.from_array(alpha, scale)])
        keep = {k: v for k, v in attrs.items() if k in ("auto_pad", "dilations", "pads", "strides", "kernel_shape")}
        inputs = [sign.input[0], packed, scale] + list(n.input[2:3])
        nodes.append(helper.make_node("BinaryConv", inputs, list(n.output), name=n.name, domain=DOMAIN,
                                      channels=int(w.shape[1]), **keep))
        uses[n.input[1]] -= 1
        uses[n.input[0]] -= 1
        if uses[n.input[0]] == 0:
            drop.add(sign.output[0])
        rewritten.append(n.name)
    nodes = [n for n in nodes if not (n.op_type == "Sign" and n.output[0] in drop)]
    del g.node[:]
    g.node.extend(nodes)
    unused = [t for t in g.initializer if uses.get(t.name, 1) == 0]
    for t in unused:
        g.initializer.remove(t)
    if rewritten and not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(dst))
    log.info("%s: %d Sign -> Conv pairs became tuili::BinaryConv", dst, len(rewritten))
    return rewritten
