"""The engine demo: export zoo models, run each in tuili and in onnxruntime, print agreement and time.

    python -m tuili.demo [MODEL ...]
"""
from __future__ import annotations

import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np


def _median_ms(fn, repeat: int = 5) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * sorted(times)[len(times) // 2]


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console
    from rich.table import Table

    import tuili
    from tuili import zoo

    names = (argv if argv is not None else sys.argv[1:]) or ["resnet18", "mobilenet_v2", "bert_small"]
    console = Console()
    table = Table(title="tuili vs onnxruntime (same inputs, batch 1)")
    for col in ("model", "max abs diff", "max rel diff", "tuili ms", "onnxruntime ms", "tuili / ort"):
        table.add_column(col, justify="right" if col != "model" else "left")
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            path = Path(tmp) / f"{name}.onnx"
            console.print(f"exporting [bold]{name}[/] ...")
            zoo.export(name, path)
            feeds = zoo.example_inputs(name, batch=1)
            ours = tuili.InferenceSession(path)
            ref = tuili.InferenceSession(path, engine="onnxruntime")
            a, b = ours.run(None, feeds), ref.run(None, feeds)
            abs_err = max(float(np.max(np.abs(x - y))) for x, y in zip(a, b))
            rel_err = max(float(np.max(np.abs(x - y) / (np.abs(y) + 1e-6))) for x, y in zip(a, b))
            t_ours = _median_ms(partial(ours.run, None, feeds))
            t_ref = _median_ms(partial(ref.run, None, feeds))
            table.add_row(name, f"{abs_err:.2e}", f"{rel_err:.2e}", f"{t_ours:.1f}", f"{t_ref:.1f}",
                          f"{t_ours / t_ref:.2f}x")
    console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
