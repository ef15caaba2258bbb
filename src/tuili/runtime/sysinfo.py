"""What `tuili info` reports: the CPU (features, cores), the math libraries the kernels call (BLAS,
numba, torch/oneDNN) and the peers a benchmark compares with (onnxruntime, OpenVINO), each with its
version and thread count. Facts only; a library that is not installed is reported as such."""
from __future__ import annotations

import importlib
import importlib.metadata
import re

from tuili.runtime import cpu


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def collect() -> dict:
    c = cpu.info()
    out: dict = {
        "cpu": {"model": c.model, "cores": c.cores, "features": {f: c.has(f) for f in cpu.KNOWN},
                "masked": sorted(c.masked & set(cpu.KNOWN)),
                "native_bf16": c.has("avx512_bf16") or c.has("amx_bf16"),
                "exact_int8_dot": cpu.exact_int8_dot()},
        "numpy": _numpy(), "numba": _numba(), "torch": _torch(), "onnxruntime": _onnxruntime(),
        "openvino": _openvino(), "precision_auto": _precision_auto(), "int8": _int8(),
    }
    return out


def _precision_auto() -> dict:
    from tuili.runtime import precision

    d = precision.decide("auto")
    return {"precision": d.precision, "reason": d.reason, "bf16_ops": sorted(op for _, op in d.ops)}


def _int8() -> dict:
    from tuili.runtime import int8

    d = int8.decide()
    return {"enabled": d.enabled, "reason": d.reason}


def _numpy() -> dict:
    import numpy as np
    from threadpoolctl import threadpool_info

    blas = [{"library": p.get("internal_api"), "version": p.get("version"), "threads": p.get("num_threads"),
             "architecture": p.get("architecture")} for p in threadpool_info() if p.get("user_api") == "blas"]
    return {"version": np.__version__, "blas": blas}


def _numba() -> dict:
    import numba

    config = numba.config  # its settings are set at import time: mypy cannot see them
    return {"version": numba.__version__, "threads": getattr(config, "NUMBA_NUM_THREADS", None),
            "threading_layer": getattr(config, "THREADING_LAYER", "default")}


def _torch() -> dict:
    import torch

    onednn = re.search(r"(?:MKL-DNN|oneDNN) v([\d.]+)", torch.__config__.show())
    return {"version": torch.__version__, "threads": torch.get_num_threads(),
            "onednn": onednn.group(1) if onednn and torch.backends.mkldnn.is_available() else None,
            "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def _onnxruntime() -> dict | None:
    if _version("onnxruntime") is None:
        return None
    import onnxruntime as ort

    return {"version": ort.__version__, "providers": ort.get_available_providers()}


def _openvino() -> dict | None:
    if _version("openvino") is None:
        return None
    ov = importlib.import_module("openvino")
    core = ov.Core()
    return {"version": ov.__version__, "cpu_capabilities": list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")),
            "default_precision": core.get_property("CPU", "INFERENCE_PRECISION_HINT").to_string()}


def render(facts: dict) -> str:
    c = facts["cpu"]
    lines = [f"CPU          {c['model']}, {c['cores']} cores available to this process",
             "features     " + " ".join(f if on else f"-{f}" for f, on in c["features"].items())]
    if c["masked"]:
        lines.append(f"masked       {' '.join(c['masked'])} (by {cpu.MASK_ENV})")
    lines.append(f"bf16         {'native (AVX512_BF16/AMX)' if c['native_bf16'] else 'not native: bf16 would be emulated, slower than fp32'}")
    lines.append(f"int8 dot     {'exact int32 sums via ' + c['exact_int8_dot'] if c['exact_int8_dot'] else 'no VNNI/AMX: u8s8 kernels (vpmaddubsw) saturate at int16'}")
    lines.append(f"int8 kernels {'QLinearConv, QLinearMatMul, folded QDQ groups: ' if facts['int8']['enabled'] else 'off: '}"
                 f"{facts['int8']['reason']}")
    a = facts["precision_auto"]
    lines.append(f"precision    auto -> {a['precision']} ({a['reason']})")
    n = facts["numpy"]
    for b in n["blas"] or [{"library": "unknown", "version": None, "threads": None, "architecture": None}]:
        lines.append(f"numpy        {n['version']}, BLAS {b['library']} {b['version'] or ''} ({b['architecture'] or '?'}), "
                     f"{b['threads']} threads")
    nb = facts["numba"]
    lines.append(f"numba        {nb['version']}, {nb['threads']} threads, layer {nb['threading_layer']}")
    t = facts["torch"]
    lines.append(f"torch        {t['version']}, {t['threads']} threads, oneDNN {t['onednn'] or 'unavailable'}, "
                 f"ATen kernels {t['cpu_capability']}")
    o = facts["onnxruntime"]
    lines.append(f"onnxruntime  {o['version']}, providers {', '.join(o['providers'])}" if o else "onnxruntime  not installed")
    v = facts["openvino"]
    lines.append(f"openvino     {v['version']}, CPU {' '.join(v['cpu_capabilities'])}, default precision "
                 f"{v['default_precision']}" if v else "openvino     not installed (pip install 'tuili[openvino]')")
    return "\n".join(lines)
