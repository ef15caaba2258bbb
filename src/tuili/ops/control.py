"""Control flow: If, Loop, Scan, SequenceMap. Bodies run through ``ctx.run_subgraph``, which the
runtime binds to the planned subgraph and to the outer-scope values it reads."""
from __future__ import annotations

import numpy as np

from tuili.errors import InvalidInputError
from tuili.ops.registry import register


@register("If", since=1)
def if_(ctx, cond, *, then_branch, else_branch):
    branch = then_branch if bool(np.asarray(cond).reshape(-1)[0]) else else_branch
    return tuple(ctx.run_subgraph(branch, []))


def _stack(parts: list, like=None) -> np.ndarray:
    if parts:
        return np.stack(parts)
    return np.empty((0,), dtype=np.float32)


@register("Loop", since=1)
def loop(ctx, max_trip, cond, *carried, body):
    n_carried = len(carried)
    trips = None if max_trip is None else int(np.asarray(max_trip).reshape(-1)[0])
    keep_going = True if cond is None else bool(np.asarray(cond).reshape(-1)[0])
    state = list(carried)
    scans: list[list] | None = None
    i = 0
    while keep_going and (trips is None or i < trips):
        outs = ctx.run_subgraph(body, [np.asarray(i, dtype=np.int64), np.asarray(keep_going), *state])
        keep_going = bool(np.asarray(outs[0]).reshape(-1)[0]) if outs[0] is not None else keep_going
        state = list(outs[1:1 + n_carried])
        if scans is None:
            scans = [[] for _ in outs[1 + n_carried:]]
        for acc, value in zip(scans, outs[1 + n_carried:]):
            acc.append(value)
        i += 1
    n_scan = ctx.num_outputs - n_carried
    if scans is None:
        scans = [[] for _ in range(n_scan)]
    return tuple(state) + tuple(_stack(acc) for acc in scans)


@register("Scan", since=8)
def scan8(ctx, sequence_lens, *args, body, num_scan_inputs, directions=None, **_):
    # opset 8: inputs carry a batch axis 0 and the scan axis 1
    n_state = len(args) - num_scan_inputs
    batch = args[0].shape[0] if args else 0
    results = []
    for b in range(batch):
        seq_len = None if sequence_lens is None else int(sequence_lens[b])
        per = _scan(ctx, [a[b] for a in args[:n_state]], [a[b][:seq_len] for a in args[n_state:]],
                    body, [0] * num_scan_inputs, directions or [0] * num_scan_inputs, None, None)
        results.append(per)
    return tuple(np.stack([r[k] for r in results]) for k in range(ctx.num_outputs))


@register("Scan", since=9)
def scan(ctx, *args, body, num_scan_inputs, scan_input_axes=None, scan_input_directions=None,
         scan_output_axes=None, scan_output_directions=None):
    n_state = len(args) - num_scan_inputs
    axes = scan_input_axes or [0] * num_scan_inputs
    dirs = scan_input_directions or [0] * num_scan_inputs
    return tuple(_scan(ctx, list(args[:n_state]), list(args[n_state:]), body, axes, dirs,
                       scan_output_axes, scan_output_directions))


def _scan(ctx, state, scan_inputs, body, axes, dirs, out_axes, out_dirs):
    inputs = [np.moveaxis(x, ax, 0) for x, ax in zip(scan_inputs, axes)]
    inputs = [x[::-1] if d else x for x, d in zip(inputs, dirs)]
    lengths = {x.shape[0] for x in inputs}
    if len(lengths) > 1:
        raise InvalidInputError(f"Scan inputs disagree on the scan-axis length: {sorted(lengths)}")
    steps = lengths.pop() if lengths else 0
    n_state = len(state)
    collected: list[list] = []
    for t in range(steps):
        outs = ctx.run_subgraph(body, [*state, *(x[t] for x in inputs)])
        state = list(outs[:n_state])
        if not collected:
            collected = [[] for _ in outs[n_state:]]
        for acc, v in zip(collected, outs[n_state:]):
            acc.append(v)
    n_out = ctx.num_outputs - n_state
    collected = collected or [[] for _ in range(n_out)]
    out_axes = out_axes or [0] * n_out
    out_dirs = out_dirs or [0] * n_out
    scans = []
    for acc, ax, d in zip(collected, out_axes, out_dirs):
        y = _stack(acc[::-1] if d else acc)
        scans.append(np.moveaxis(y, 0, ax % y.ndim) if y.ndim else y)
    return [*state, *scans]


@register("SequenceMap", since=17)
def sequence_map(ctx, input_sequence, *additional, body):
    n = len(input_sequence)
    outs: list[list] | None = None
    for i in range(n):
        extra = [a[i] if isinstance(a, list) else a for a in additional]
        res = ctx.run_subgraph(body, [input_sequence[i], *extra])
        if outs is None:
            outs = [[] for _ in res]
        for acc, v in zip(outs, res):
            acc.append(v)
    return tuple(outs or [[] for _ in range(ctx.num_outputs)])
