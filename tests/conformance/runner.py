"""ONNX backend conformance: onnx's node test cases (built from the installed onnx with
``collect_testcases``) and its shipped `simple`, `pytorch-converted` and `pytorch-operator` model
data, run through ``tuili.InferenceSession`` on tuili's native kernels.

    python -m tests.conformance.runner [-v] [--filter SUBSTRING] [--engine onnxruntime]
    # prints the pass counts per directory
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from tests.conformance.skips import SKIPS

DATA_DIRS = ("simple", "pytorch-converted", "pytorch-operator")


@dataclass
class Case:
    name: str
    directory: str           # "node" or one of DATA_DIRS
    load: Callable[[], tuple[onnx.ModelProto, list[tuple[list, list]]]]
    rtol: float = 1e-3
    atol: float = 1e-7


def to_value(x: Any) -> Any:
    """Test data may come as protos (exotic dtypes, sequences, optionals): make them values."""
    if isinstance(x, onnx.TensorProto):
        return numpy_helper.to_array(x)
    if isinstance(x, onnx.SequenceProto):
        return numpy_helper.to_list(x)
    if isinstance(x, onnx.OptionalProto):
        return numpy_helper.to_optional(x)
    return x


def node_cases() -> list[Case]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from onnx.backend.test.case.node import collect_testcases

        cases = collect_testcases(None)
    return [Case(c.name, "node", (lambda c=c: (c.model, c.data_sets)), c.rtol, c.atol) for c in cases]


def _read_pb(path: str) -> Any:
    data = Path(path).read_bytes()
    t = onnx.TensorProto()
    t.ParseFromString(data)
    return numpy_helper.to_array(t)


def _load_dir(model_dir: str):
    model = onnx.load(os.path.join(model_dir, "model.onnx"))
    sets = []
    for d in sorted(glob.glob(os.path.join(model_dir, "test_data_set_*"))):
        ins = [_read_pb(p) for p in sorted(glob.glob(os.path.join(d, "input_*.pb")), key=_pb_index)]
        outs = [_read_pb(p) for p in sorted(glob.glob(os.path.join(d, "output_*.pb")), key=_pb_index)]
        sets.append((ins, outs))
    return model, sets


def _pb_index(p: str) -> int:
    return int(Path(p).stem.split("_")[-1])


def data_cases() -> list[Case]:
    root = Path(onnx.__file__).parent / "backend" / "test" / "data"
    out = []
    for directory in DATA_DIRS:
        for model_dir in sorted((root / directory).iterdir()):
            if (model_dir / "model.onnx").is_file():
                out.append(Case(model_dir.name, directory, lambda d=str(model_dir): _load_dir(d)))
    return out


def all_cases() -> list[Case]:
    return node_cases() + data_cases()


def compare(expected: Any, got: Any, rtol: float, atol: float) -> str | None:
    """None if ``got`` matches ``expected`` (dtype, shape, values within tolerance), else why not."""
    if isinstance(expected, list):
        if not isinstance(got, (list, tuple)) or len(got) != len(expected):
            return f"expected a sequence of {len(expected)}, got {type(got).__name__}"
        for e, g in zip(expected, got):
            err = compare(e, g, rtol, atol)
            if err:
                return err
        return None
    if expected is None:
        return None if got is None else f"expected an empty optional, got {type(got).__name__}"
    if not isinstance(got, np.ndarray):
        return f"expected an array, got {type(got).__name__}"
    expected = np.asarray(expected)
    if expected.dtype != got.dtype:
        return f"dtype {got.dtype} != expected {expected.dtype}"
    if expected.shape != got.shape:
        return f"shape {got.shape} != expected {expected.shape}"
    if expected.dtype == object or expected.dtype.kind in "USb":
        return None if np.array_equal(expected, got) else "values differ"
    try:
        e64, g64 = expected.astype(np.float64), got.astype(np.float64)
    except (TypeError, ValueError):
        return None if np.array_equal(expected.view(np.uint8), got.view(np.uint8)) else "values differ"
    if not np.allclose(g64, e64, rtol=rtol, atol=atol, equal_nan=True):
        err = np.nanmax(np.abs(g64 - e64)) if g64.size else 0
        return f"values differ: max abs error {err:.3g}"
    return None


def run_case(case: Case, engine: str = "tuili") -> tuple[str, str]:
    """("pass" | "fail" | "error" | "skip", detail). ``engine="onnxruntime"`` measures the peer
    on the same cases (and runs the skipped ones too)."""
    import tuili

    if case.name in SKIPS and engine == "tuili":
        return "skip", SKIPS[case.name]
    try:
        model, data_sets = case.load()
        sess = tuili.InferenceSession(model, engine=engine)
    except Exception as e:  # noqa: BLE001
        return "error", f"load: {type(e).__name__}: {e}"
    names = [i.name for i in model.graph.input]
    init = {t.name for t in model.graph.initializer}
    names = [n for n in names if n not in init] if len(names) > len(data_sets[0][0]) else names
    outputs = [o.name for o in model.graph.output]
    for inputs, expected in data_sets:
        inputs, expected = [to_value(x) for x in inputs], [to_value(x) for x in expected]
        try:
            got = sess.run(outputs, dict(zip(names, inputs)))
        except Exception as e:  # noqa: BLE001
            return "error", f"run: {type(e).__name__}: {str(e)[:300]}"
        for name, exp, g in zip(outputs, expected, got):
            err = compare(exp, g, case.rtol, case.atol)
            if err:
                return "fail", f"output {name!r}: {err}"
    return "pass", ""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-v", "--verbose", action="store_true", help="list every case that does not pass")
    ap.add_argument("--filter", default="", help="only cases whose name contains this")
    ap.add_argument("--engine", default="tuili", choices=["tuili", "onnxruntime"],
                    help="onnxruntime: the same cases on the peer, for comparison")
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    counts: dict[str, Counter] = defaultdict(Counter)
    for case in all_cases():
        if args.filter not in case.name:
            continue
        status, detail = run_case(case, args.engine)
        counts[case.directory][status] += 1
        if args.verbose and status != "pass":
            print(f"{status:5s} {case.directory}/{case.name}: {detail}")
    print("| directory | cases | pass | fail | error | skipped | pass rate |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    total: Counter = Counter()
    for directory in ("node", *DATA_DIRS):
        c = counts.get(directory)
        if not c:
            continue
        total.update(c)
        n = sum(c.values())
        print(f"| {directory} | {n} | {c['pass']} | {c['fail']} | {c['error']} | {c['skip']} | {c['pass'] / n:.1%} |")
    n = sum(total.values())
    if n:
        print(f"| **all** | {n} | {total['pass']} | {total['fail']} | {total['error']} | {total['skip']} | "
              f"{total['pass'] / n:.1%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
