"""Recurrent family: RNN, LSTM, GRU (every opset; ``layout`` from opset 14).

The input projection ``X @ W^T + Wb`` is one matmul over all time steps; only the
recurrence loops over time. ``sequence_lens`` is handled with per-batch masks; the
reverse direction walks each batch entry's own valid prefix backwards through a
gather (an involution, so the same index un-reverses the outputs).
"""
from __future__ import annotations

import logging

import numpy as np

from tuili.errors import KernelError
from tuili.ops._numba import HAVE_NUMBA as _HAVE_NUMBA
from tuili.ops._numba import numba
from tuili.ops.registry import register

log = logging.getLogger(__name__)


if _HAVE_NUMBA:
    # Fused recurrences for the default activations: the whole time loop runs in compiled code,
    # with one BLAS matmul (h @ R^T) per step and the gate math fused per element.

    # State is kept transposed, (H, B): the per-step product is R (G*H, H) @ h^T (H, B), which
    # OpenBLAS runs 2-3x faster than h (B, H) @ R^T for the small batches of recurrent nets.

    @numba.njit(cache=True, nogil=True, error_model="numpy")
    def _past_end(valid, y, t, b):  # pragma: no cover - compiled
        """True, with output row y[t, b] zeroed, when step t is past batch entry b's length."""
        if valid[t, b]:
            return False
        for j in range(y.shape[2]):
            y[t, b, j] = 0
        return True

    @numba.njit(cache=True, nogil=True, error_model="numpy")
    def _lstm_loop(xw, r, h, c, p, has_p, input_forget, clip, valid, y):  # pragma: no cover - compiled
        steps, nb, g4 = xw.shape
        hs = g4 // 4
        one = xw.dtype.type(1)
        ht = np.ascontiguousarray(h.T)
        ct = np.ascontiguousarray(c.T)
        for t in range(steps):
            rec = np.dot(r, ht)  # (4H, B)
            for b in range(nb):
                if _past_end(valid, y, t, b):
                    continue
                for j in range(hs):
                    cp = ct[j, b]
                    gi = xw[t, b, j] + rec[j, b]
                    go = xw[t, b, hs + j] + rec[hs + j, b]
                    gf = xw[t, b, 2 * hs + j] + rec[2 * hs + j, b]
                    gc = xw[t, b, 3 * hs + j] + rec[3 * hs + j, b]
                    if has_p:
                        gi += p[j] * cp
                        gf += p[2 * hs + j] * cp
                    if clip > 0:
                        gi = min(max(gi, -clip), clip)
                        gf = min(max(gf, -clip), clip)
                        gc = min(max(gc, -clip), clip)
                    i_t = one / (one + np.exp(-gi))
                    f_t = (one - i_t) if input_forget else one / (one + np.exp(-gf))
                    cn = f_t * cp + i_t * np.tanh(gc)
                    if has_p:
                        go += p[hs + j] * cn
                    if clip > 0:
                        go = min(max(go, -clip), clip)
                    o_t = one / (one + np.exp(-go))
                    hn = o_t * np.tanh(cn)
                    ct[j, b] = cn
                    ht[j, b] = hn
                    y[t, b, j] = hn
        h[:, :] = ht.T
        c[:, :] = ct.T

    @numba.njit(cache=True, nogil=True, error_model="numpy")
    def _gru_loop(xw, r, rb_h, h, lbr, clip, valid, y):  # pragma: no cover - compiled
        # xw already holds Wb + Rb for z and r, and Rb_h too when not linear_before_reset
        steps, nb, g3 = xw.shape
        hs = g3 // 3
        one = xw.dtype.type(1)
        rzr = np.ascontiguousarray(r[: 2 * hs])
        rhh = np.ascontiguousarray(r[2 * hs :])
        ht = np.ascontiguousarray(h.T)
        zt = np.empty((hs, nb), dtype=xw.dtype)
        rt = np.empty((hs, nb), dtype=xw.dtype)
        for t in range(steps):
            rec = np.dot(rzr, ht)  # (2H, B)
            for b in range(nb):
                for j in range(hs):
                    gz = xw[t, b, j] + rec[j, b]
                    gr = xw[t, b, hs + j] + rec[hs + j, b]
                    if clip > 0:
                        gz = min(max(gz, -clip), clip)
                        gr = min(max(gr, -clip), clip)
                    zt[j, b] = one / (one + np.exp(-gz))
                    rr = one / (one + np.exp(-gr))
                    rt[j, b] = rr if lbr else rr * ht[j, b]
            if lbr:
                hrec = np.dot(rhh, ht)
            else:
                hrec = np.dot(rhh, rt)
            for b in range(nb):
                if _past_end(valid, y, t, b):
                    continue
                for j in range(hs):
                    if lbr:
                        gh = xw[t, b, 2 * hs + j] + rt[j, b] * (hrec[j, b] + rb_h[j])
                    else:
                        gh = xw[t, b, 2 * hs + j] + hrec[j, b]
                    if clip > 0:
                        gh = min(max(gh, -clip), clip)
                    hh = np.tanh(gh)
                    hn = hh + zt[j, b] * (ht[j, b] - hh)
                    ht[j, b] = hn
                    y[t, b, j] = hn
        h[:, :] = ht.T


def _default_acts(names, defaults) -> bool:
    return not names or all(n.lower() == d.lower() for n, d in zip(names, defaults * (len(names) // len(defaults))))


# ---------------------------------------------------------------- activations


def _sigmoid(x):
    """Logistic in x's dtype. Callers run under np.errstate(over="ignore"): exp(-x) may
    overflow to inf for very negative x, which correctly gives 0."""
    out = np.exp(-x)
    out += 1
    np.reciprocal(out, out=out)
    return out


# name -> (number of alpha params, number of beta params, default alpha, default beta, fn(x, a, b))
_ACTS = {
    "sigmoid": (0, 0, 0.0, 0.0, lambda x, a, b: _sigmoid(x)),
    "tanh": (0, 0, 0.0, 0.0, lambda x, a, b: np.tanh(x)),
    "relu": (0, 0, 0.0, 0.0, lambda x, a, b: np.maximum(x, 0)),
    "affine": (1, 1, 1.0, 0.0, lambda x, a, b: a * x + b),
    "leakyrelu": (1, 0, 0.01, 0.0, lambda x, a, b: np.where(x >= 0, x, a * x)),
    "thresholdedrelu": (1, 0, 1.0, 0.0, lambda x, a, b: np.where(x > a, x, 0)),
    "scaledtanh": (1, 1, 1.0, 1.0, lambda x, a, b: a * np.tanh(b * x)),
    "hardsigmoid": (1, 1, 0.2, 0.5, lambda x, a, b: np.clip(a * x + b, 0, 1)),
    "elu": (1, 0, 1.0, 0.0, lambda x, a, b: np.where(x >= 0, x, a * (np.exp(x) - 1))),
    "softsign": (0, 0, 0.0, 0.0, lambda x, a, b: x / (1 + np.abs(x))),
    "softplus": (0, 0, 0.0, 0.0, lambda x, a, b: np.logaddexp(0, x)),
}


def _activations(op, names, alphas, betas, defaults, num_dir):
    """List (per direction) of lists of callables x -> y."""
    if not names:
        names = defaults * num_dir
    elif len(names) == len(defaults) and num_dir == 2:
        names = list(names) * 2  # one set given for both directions
    if len(names) != len(defaults) * num_dir:
        raise KernelError(f"{op}: expected {len(defaults) * num_dir} activations, got {names}")
    alphas = list(alphas or [])
    betas = list(betas or [])
    ai = bi = 0
    fns = []
    for name in names:
        key = name.lower()
        if key not in _ACTS:
            raise KernelError(f"{op}: unsupported activation {name!r}; supported: {sorted(_ACTS)}")
        na, nb, da, db, fn = _ACTS[key]
        a, b = da, db
        if na and ai < len(alphas):
            a = alphas[ai]
            ai += 1
        if nb and bi < len(betas):
            b = betas[bi]
            bi += 1
        if key == "sigmoid":
            fns.append(_sigmoid)
        elif key == "tanh":
            fns.append(np.tanh)
        else:
            fns.append(lambda x, fn=fn, a=a, b=b: fn(x, x.dtype.type(a), x.dtype.type(b)).astype(x.dtype, copy=False))
    k = len(defaults)
    return [fns[d * k : (d + 1) * k] for d in range(num_dir)]


# ---------------------------------------------------------------- shared plumbing


class _Setup:
    def __init__(self, op, x, w, r, b, sequence_lens, initial_states, hidden_size, direction, layout, gates):
        if direction not in ("forward", "reverse", "bidirectional"):
            raise KernelError(f"{op}: direction must be forward, reverse or bidirectional, got {direction!r}")
        self.num_dir = 2 if direction == "bidirectional" else 1
        self.dirs = ["forward", "reverse"] if direction == "bidirectional" else [direction]
        self.layout = layout
        if layout:
            x = x.transpose(1, 0, 2)
        self.x = x
        self.seq, self.batch, _ = x.shape
        self.hidden = int(hidden_size) if hidden_size else r.shape[-1]
        self.dtype = x.dtype
        h = self.hidden
        if w.shape[0] != self.num_dir or w.shape[1] != gates * h:
            raise KernelError(f"{op}: W has shape {w.shape}, expected ({self.num_dir}, {gates * h}, input_size)")
        if b is None:
            b = np.zeros((self.num_dir, 2 * gates * h), dtype=x.dtype)
        self.wb = b[:, : gates * h]
        self.rb = b[:, gates * h :]
        if sequence_lens is None:
            self.lens = np.full(self.batch, self.seq, dtype=np.int64)
            self.full = True
        else:
            self.lens = np.asarray(sequence_lens).astype(np.int64).reshape(-1)
            self.full = bool(np.all(self.lens == self.seq))
        self.states = []
        for s in initial_states:
            if s is None:
                self.states.append(np.zeros((self.num_dir, self.batch, h), dtype=x.dtype))
            else:
                self.states.append(s.transpose(1, 0, 2) if layout else s)
        # (T, B) mask of valid steps
        self.valid = None if self.full else (np.arange(self.seq)[:, None] < self.lens[None, :])

    def projection(self, w, d, with_rb=True):
        """X @ W[d]^T + Wb[d] (+ Rb[d]) for all time steps, as (T, B, G*H)."""
        t, bsz, i = self.x.shape
        xw = (self.x.reshape(t * bsz, i) @ w[d].T).reshape(t, bsz, -1)
        xw += (self.wb[d] + self.rb[d]) if with_rb else self.wb[d]
        return xw

    def reverse_index(self):
        """(T, B) time index that reverses each batch entry's valid prefix."""
        t = np.arange(self.seq)[:, None]
        lens = self.lens[None, :]
        return np.where(t < lens, lens - 1 - t, t)

    def order(self, arr, d, rev_idx):
        """Reorder a (T, B, ...) array for direction d (involution)."""
        if self.dirs[d] != "reverse":
            return arr
        if self.full:
            return arr[::-1]
        return arr[rev_idx, np.arange(self.batch)[None, :]]

    def fused_ok(self, activations, defaults) -> bool:
        """Can the compiled recurrence run (numba, float32/64, default activations, T > 0)?"""
        return (
            _HAVE_NUMBA
            and self.dtype in (np.float32, np.float64)
            and _default_acts(activations, defaults)
            and self.seq > 0
        )

    def valid_mask(self, d, rev_idx):
        """(T, B) contiguous mask of the steps inside each batch entry's sequence, in direction d's order."""
        valid = self.valid if self.valid is not None else np.ones((self.seq, self.batch), dtype=bool)
        return np.ascontiguousarray(self.order(valid, d, rev_idx))

    def keep(self, t, new, old):
        """``new`` for the batch entries whose sequence includes step t, ``old`` for the others."""
        return new if self.valid is None else np.where(self.valid[t][:, None], new, old)

    def emit(self, y, t, h):
        """Write step t's output: ``h``, or 0 for batch entries past their sequence length."""
        y[t] = h if self.valid is None else np.where(self.valid[t][:, None], h, 0)

    def outputs(self, ctx, ys, finals):
        """ys: list per direction of (T, B, H); finals: list of per-direction state lists."""
        y = np.stack(ys, axis=1)  # (T, D, B, H)
        states = [np.stack(f, axis=0) for f in zip(*finals)]  # each (D, B, H)
        if self.layout:
            y = y.transpose(2, 0, 1, 3)
            states = [s.transpose(1, 0, 2) for s in states]
        res = (y, *states)
        n = max(1, ctx.num_outputs)
        return res[:n] if n > 1 else res[0]


def _clip(x, clip):
    if clip is not None:
        np.clip(x, -clip, clip, out=x)
    return x


# ---------------------------------------------------------------- RNN


@register("RNN", since=1)
def rnn(
    ctx, x, w, r, b=None, sequence_lens=None, initial_h=None, *,
    activation_alpha=None, activation_beta=None, activations=None, clip=None,
    direction="forward", hidden_size=None, layout=0, output_sequence=0,
):
    s = _Setup("RNN", x, w, r, b, sequence_lens, [initial_h], hidden_size, direction, layout, 1)
    acts = _activations("RNN", activations, activation_alpha, activation_beta, ["Tanh"], s.num_dir)
    rev_idx = None if s.full else s.reverse_index()
    ys, finals = [], []
    with np.errstate(over="ignore"):
        for d in range(s.num_dir):
            f = acts[d][0]
            xw = s.order(s.projection(w, d), d, rev_idx)
            rt = r[d].T
            h = s.states[0][d]
            y = np.empty((s.seq, s.batch, s.hidden), dtype=s.dtype)
            for t in range(s.seq):
                h = s.keep(t, f(_clip(xw[t] + h @ rt, clip)), h)
                s.emit(y, t, h)
            ys.append(s.order(y, d, rev_idx))
            finals.append([h])
    return s.outputs(ctx, ys, finals)


# ---------------------------------------------------------------- LSTM


@register("LSTM", since=1)
def lstm(
    ctx, x, w, r, b=None, sequence_lens=None, initial_h=None, initial_c=None, p=None, *,
    activation_alpha=None, activation_beta=None, activations=None, clip=None,
    direction="forward", hidden_size=None, input_forget=0, layout=0, output_sequence=0,
):
    s = _Setup("LSTM", x, w, r, b, sequence_lens, [initial_h, initial_c], hidden_size, direction, layout, 4)
    acts = _activations("LSTM", activations, activation_alpha, activation_beta, ["Sigmoid", "Tanh", "Tanh"], s.num_dir)
    hs = s.hidden
    rev_idx = None if s.full else s.reverse_index()
    ys, finals = [], []
    fast = s.fused_ok(activations, ["Sigmoid", "Tanh", "Tanh"])
    with np.errstate(over="ignore"):
        for d in range(s.num_dir):
            if fast:
                xw = np.ascontiguousarray(s.order(s.projection(w, d), d, rev_idx))
                h = s.states[0][d].astype(s.dtype, copy=True)
                c = s.states[1][d].astype(s.dtype, copy=True)
                pd = p[d].astype(s.dtype) if p is not None else np.zeros(3 * hs, dtype=s.dtype)
                y = np.empty((s.seq, s.batch, hs), dtype=s.dtype)
                vd = s.valid_mask(d, rev_idx)
                _lstm_loop(xw, np.ascontiguousarray(r[d]), h, c, pd, p is not None, bool(input_forget),
                           s.dtype.type(clip if clip is not None else 0), vd, y)
                ys.append(s.order(y, d, rev_idx))
                finals.append([h, c])
                continue
            f, g_act, h_act = acts[d]
            xw = s.order(s.projection(w, d), d, rev_idx)
            rt = r[d].T
            peep = p is not None and np.any(p[d])
            if peep:
                pi, po, pf = p[d, :hs], p[d, hs : 2 * hs], p[d, 2 * hs :]
            h = s.states[0][d]
            c = s.states[1][d]
            y = np.empty((s.seq, s.batch, hs), dtype=s.dtype)
            for t in range(s.seq):
                gates = xw[t] + h @ rt  # columns: i | o | f | c
                c_t = g_act(_clip(gates[:, 3 * hs :], clip))
                if peep:
                    i_t = f(_clip(gates[:, :hs] + pi * c, clip))
                    f_t = (1 - i_t) if input_forget else f(_clip(gates[:, 2 * hs : 3 * hs] + pf * c, clip))
                    cn = f_t * c + i_t * c_t
                    o_t = f(_clip(gates[:, hs : 2 * hs] + po * cn, clip))
                else:
                    iof = f(_clip(gates[:, : 3 * hs], clip))
                    i_t, o_t = iof[:, :hs], iof[:, hs : 2 * hs]
                    f_t = (1 - i_t) if input_forget else iof[:, 2 * hs :]
                    cn = f_t * c
                    cn += i_t * c_t
                h, c = s.keep(t, o_t * h_act(cn), h), s.keep(t, cn, c)
                s.emit(y, t, h)
            ys.append(s.order(y, d, rev_idx))
            finals.append([h, c])
    return s.outputs(ctx, ys, finals)


# ---------------------------------------------------------------- GRU


@register("GRU", since=1)
def gru(
    ctx, x, w, r, b=None, sequence_lens=None, initial_h=None, *,
    activation_alpha=None, activation_beta=None, activations=None, clip=None,
    direction="forward", hidden_size=None, layout=0, linear_before_reset=0, output_sequence=0,
):
    s = _Setup("GRU", x, w, r, b, sequence_lens, [initial_h], hidden_size, direction, layout, 3)
    acts = _activations("GRU", activations, activation_alpha, activation_beta, ["Sigmoid", "Tanh"], s.num_dir)
    hs = s.hidden
    rev_idx = None if s.full else s.reverse_index()
    ys, finals = [], []
    fast = s.fused_ok(activations, ["Sigmoid", "Tanh"])
    with np.errstate(over="ignore"):
        for d in range(s.num_dir):
            if fast:
                xw = s.projection(w, d, with_rb=False)
                rb_h = np.ascontiguousarray(s.rb[d, 2 * hs :]).astype(s.dtype)
                xw[:, :, : 2 * hs] += s.rb[d, : 2 * hs]
                if not linear_before_reset:
                    xw[:, :, 2 * hs :] += rb_h
                xw = np.ascontiguousarray(s.order(xw, d, rev_idx))
                h = s.states[0][d].astype(s.dtype, copy=True)
                y = np.empty((s.seq, s.batch, hs), dtype=s.dtype)
                vd = s.valid_mask(d, rev_idx)
                _gru_loop(xw, np.ascontiguousarray(r[d]), rb_h, h, bool(linear_before_reset),
                          s.dtype.type(clip if clip is not None else 0), vd, y)
                ys.append(s.order(y, d, rev_idx))
                finals.append([h])
                continue
            f, g_act = acts[d]
            xw = s.projection(w, d, with_rb=False)
            rb_h = s.rb[d, 2 * hs :]
            xw[:, :, : 2 * hs] += s.rb[d, : 2 * hs]
            if not linear_before_reset:
                xw[:, :, 2 * hs :] += rb_h  # outside the reset product: fold it in
            xw = s.order(xw, d, rev_idx)
            rzr_t = r[d, : 2 * hs].T
            rh_t = r[d, 2 * hs :].T
            h = s.states[0][d]
            y = np.empty((s.seq, s.batch, hs), dtype=s.dtype)
            for t in range(s.seq):
                if linear_before_reset:
                    rec = h @ r[d].T  # one matmul for z, r and h
                    zr = f(_clip(xw[t, :, : 2 * hs] + rec[:, : 2 * hs], clip))
                    rr = zr[:, hs:]
                    rec_h = rec[:, 2 * hs :]
                    rec_h += rb_h
                    hh = xw[t, :, 2 * hs :] + rr * rec_h
                else:
                    zr = f(_clip(xw[t, :, : 2 * hs] + h @ rzr_t, clip))
                    rr = zr[:, hs:]
                    hh = xw[t, :, 2 * hs :] + (rr * h) @ rh_t
                z = zr[:, :hs]
                hh = g_act(_clip(hh, clip))
                hn = s.keep(t, hh + z * (h - hh), h)  # (1 - z) * hh + z * h
                s.emit(y, t, hn)
                h = hn.astype(s.dtype, copy=False)
            ys.append(s.order(y, d, rev_idx))
            finals.append([h])
    return s.outputs(ctx, ys, finals)
