"""Run ONNX backend *node* test cases straight through tuili's registered kernels.

A development aid for kernel authors before/independently of the runtime:
single-node cases only (multi-node `_expanded` cases need the runtime).

    .venv/bin/python tools/node_cases.py Conv ConvTranspose    # filter by op type
    .venv/bin/python tools/node_cases.py -v Relu               # show failures
"""
from __future__ import annotations

import argparse
import sys
import traceback
import warnings
from collections import Counter

import numpy as np

warnings.filterwarnings("ignore")


def compare(expected, got, rtol, atol) -> str | None:
    if isinstance(expected, list):
        if not isinstance(got, (list, tuple)) or len(got) != len(expected):
            return f"expected sequence of {len(expected)}, got {type(got).__name__}"
        for e, g in zip(expected, got):
            err = compare(e, g, rtol, atol)
            if err:
                return err
        return None
    if expected is None:
        return None if got is None else f"expected None, got {type(got).__name__}"
    got = np.asarray(got)
    expected = np.asarray(expected)
    if expected.dtype != got.dtype:
        return f"dtype {got.dtype} != expected {expected.dtype}"
    if expected.shape != got.shape:
        return f"shape {got.shape} != expected {expected.shape}"
    if expected.dtype == object or expected.dtype.kind in "USb":
        return None if np.array_equal(expected, got) else "values differ"
    try:
        e64 = expected.astype(np.float64)
        g64 = got.astype(np.float64)
    except (TypeError, ValueError):
        return None if np.array_equal(expected, got) else "values differ"
    if not np.allclose(g64, e64, rtol=rtol, atol=atol, equal_nan=True):
        return f"values differ: max abs err {np.nanmax(np.abs(g64 - e64)) if g64.size else 0}"
    return None


def run_case(case) -> tuple[str, str]:
    from tuili.ir.attributes import decode_attribute
    from tuili.ops.registry import KernelContext, get_kernel

    graph = case.model.graph
    if len(graph.node) != 1:
        return "skip", "multi-node"
    node = graph.node[0]
    opset = next((o.version for o in case.model.opset_import if o.domain == node.domain), 1)
    try:
        kernel = get_kernel(node.op_type, node.domain, opset, node.name)
    except Exception as e:  # noqa: BLE001
        return "unsupported", str(e)[:120]
    attrs = {a.name: decode_attribute(a) for a in node.attribute}
    for inputs, outputs in case.data_sets:
        feeds = dict(zip([i.name for i in graph.input], inputs))
        args = [feeds.get(name) if name else None for name in node.input]
        try:
            if kernel.wants_ctx:
                ctx = KernelContext(node.op_type, opset, node.name, len(node.output))
                res = kernel.fn(ctx, *args, **attrs)
            else:
                res = kernel.fn(*args, **attrs)
        except Exception:  # noqa: BLE001
            return "error", traceback.format_exc(limit=3)
        if not isinstance(res, tuple):
            res = (res,)
        for name, exp, got in zip(node.output, outputs, res):
            err = compare(exp, got, case.rtol, case.atol)
            if err:
                return "fail", f"output {name}: {err}"
    return "pass", ""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("ops", nargs="*")
    ap.add_argument("-v", action="store_true")
    args = ap.parse_args()
    from onnx.backend.test.case.node import collect_testcases

    counts: Counter = Counter()
    for case in collect_testcases(None):
        op = case.model.graph.node[0].op_type
        if args.ops and op not in args.ops:
            continue
        status, msg = run_case(case)
        counts[status] += 1
        if args.v and status not in ("pass", "skip"):
            print(f"{status:12s} {case.name}: {msg}")
    print(dict(counts))


if __name__ == "__main__":
    sys.exit(main())
