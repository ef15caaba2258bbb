"""Parameter and multiply-accumulate counts, with torch's own FlopCounterMode.

Models are built on the ``meta`` device, so counting ResNet-50 or DistilBERT allocates no weights
and runs no arithmetic. MACs = FLOPs / 2 (FlopCounterMode counts matmuls and convolutions as two
FLOPs per multiply-add and ignores elementwise ops, which is the papers' convention)."""
from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from tuili.zoo.registry import check_resolution, check_seq_len, check_width, get_spec


def count(name: str, *, width: float | None = None, resolution: int | None = None, seq_len: int | None = None,
          num_classes: int | None = None) -> tuple[int, int]:
    """(parameters, MACs) of one forward pass at batch 1 and the given (or default) input size."""
    spec = get_spec(name)
    w = check_width(spec, width)
    r = check_resolution(spec, resolution)
    s = check_seq_len(spec, seq_len)
    with torch.device("meta"):
        model = spec.builder(width=w, num_classes=num_classes or spec.num_classes, resolution=r)
    model.eval()
    params = sum(p.numel() for p in model.parameters())
    inputs = meta_inputs(spec, r, s)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(*inputs)
    return params, counter.get_total_flops() // 2


def meta_inputs(spec, resolution, seq_len) -> list[torch.Tensor]:
    out = []
    for _name, shape in spec.input_shapes(batch=1, resolution=resolution, seq_len=seq_len).items():
        shape = tuple(0 if d == "past_sequence" else d for d in shape)
        dtype = torch.int64 if spec.is_text and len(shape) == 2 else torch.float32
        out.append(torch.zeros(shape, dtype=dtype, device="meta"))
    return out


def layer_table(name: str, *, width=None, resolution=None, seq_len=None) -> list[dict]:
    """One row per leaf module: name, type, output shape, params, MACs (batch 1, default input)."""
    spec = get_spec(name)
    w = check_width(spec, width)
    r = check_resolution(spec, resolution)
    s = check_seq_len(spec, seq_len)
    with torch.device("meta"):
        model = spec.builder(width=w, num_classes=spec.num_classes, resolution=r)
    model.eval()
    rows: list[dict] = []
    counter = FlopCounterMode(display=False)
    leaves = [(n, m) for n, m in model.named_modules() if n and not any(True for _ in m.children())]
    hooks = []
    before: dict[str, int] = {}

    def total():
        return counter.get_total_flops()

    for n, m in leaves:
        def pre(mod, args, n=n):
            before[n] = total()

        def post(mod, args, out, n=n):
            o = out[0] if isinstance(out, tuple) else out
            rows.append({
                "name": n, "type": type(mod).__name__,
                "output": tuple(o.shape) if hasattr(o, "shape") else "",
                "params": sum(p.numel() for p in mod.parameters(recurse=False)),
                "macs": (total() - before[n]) // 2,
            })
        hooks += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    with counter, torch.no_grad():
        model(*meta_inputs(spec, r, s))
    for h in hooks:
        h.remove()
    return rows
