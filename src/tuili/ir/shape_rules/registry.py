"""Shape/dtype rule registry, the data types rules exchange, and dim arithmetic helpers.

A rule is ``@shape_rule("Op")`` on ``def rule(ctx: InferContext) -> list[TensorType | None]``.
Rules raise :class:`ShapeInferenceError` (message without node context; the driver adds it)
when the inputs are inconsistent, and return ``None`` entries when they cannot say.

Dims are ``int`` (known), ``str`` (symbolic: an input's name such as ``"N"``, or a polynomial
over such names that rules computed, in canonical form: ``"3*N"``, ``"past+seq"``, ``"N-1"``)
or ``None`` (unknown). Known values of small tensors (shape arithmetic) travel as numpy arrays;
an array holding symbolic or unknown entries is an ``object`` array of ``int``/``str``/``None``.
"""
from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from onnx import TensorProto

from tuili.errors import ShapeInferenceError


# --------------------------------------------------------------------------- data types
@dataclass
class TensorType:
    dtype: int | None = None
    shape: tuple | None = None

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)

    def __repr__(self) -> str:  # compact, used in error messages
        name = TensorProto.DataType.Name(self.dtype) if self.dtype else "?"
        shp = "?" if self.shape is None else "[" + ",".join("?" if d is None else str(d) for d in self.shape) + "]"
        return f"{name}{shp}"


@dataclass
class SequenceType:
    """A sequence of tensors; ``elem`` describes every element (shape merged over elements)."""

    elem: TensorType | None = None


@dataclass
class OptionalType:
    elem: TensorType | SequenceType | None = None


_COUNTER = itertools.count()


@dataclass
class InferContext:
    """What a rule sees of one node.

    ``inputs``: one type per input (None = omitted optional input or unknown type);
    ``values``: known values of inputs (initializers, Constant outputs, propagated shape values);
    ``attrs``: decoded attributes as given on the node (defaults are the rule's business);
    ``out_values``: a rule may store known output values here (``set_value``) for value propagation;
    ``subgraph_infer(attr_name, input_types, lenient=False)``: the driver's hook that infers a
    subgraph attribute with its formal inputs typed and returns the types of its outputs.
    """

    op_type: str
    domain: str
    opset: int
    node_name: str
    inputs: list
    attrs: dict
    values: list
    num_outputs: int
    out_values: list = field(default_factory=list)
    subgraph_infer: Callable | None = None  # driver hook: (attr_name, input_types) -> output types
    _fresh: Callable[[], str] | None = None

    def __post_init__(self) -> None:
        if not self.out_values:
            self.out_values = [None] * self.num_outputs

    def fresh_dim(self) -> str:
        if self._fresh is not None:
            return self._fresh()
        return f"unk__{next(_COUNTER)}"

    # convenience -----------------------------------------------------------
    def input(self, i: int):
        return self.inputs[i] if i < len(self.inputs) else None

    def value(self, i: int):
        return self.values[i] if i < len(self.values) else None

    def has_input(self, i: int) -> bool:
        return i < len(self.inputs) and self.inputs[i] is not None

    def dtype(self, i: int) -> int | None:
        t = self.input(i)
        return getattr(t, "dtype", None) if isinstance(t, TensorType) else None

    def shape(self, i: int) -> tuple | None:
        t = self.input(i)
        return t.shape if isinstance(t, TensorType) else None

    def rank(self, i: int) -> int | None:
        s = self.shape(i)
        return None if s is None else len(s)

    def attr(self, name: str, default: Any = None) -> Any:
        return self.attrs.get(name, default)

    def set_value(self, i: int, v) -> None:
        if v is not None and i < len(self.out_values):
            self.out_values[i] = as_value(v)

    def int_list(self, i: int) -> list | None:
        """Known value of input i as a list of ints/symbols/None, or None if unknown."""
        v = self.value(i)
        if v is None:
            return None
        return [_scalar(x) for x in np.asarray(v).reshape(-1).tolist()]

    def int_list_concrete(self, i: int) -> list[int] | None:
        lst = self.int_list(i)
        if lst is None or any(not isinstance(x, int) for x in lst):
            return None
        return lst


def as_value(v) -> np.ndarray:
    """Normalize a propagated value: always an ndarray; symbolic entries keep an object array."""
    if isinstance(v, np.ndarray):
        return v
    if v is None or isinstance(v, str):
        arr = np.empty((), dtype=object)
        arr[()] = v
        return arr
    return np.asarray(v)


def _scalar(x):
    if isinstance(x, (bool, np.bool_)):
        return int(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return int(x) if float(x).is_integer() else float(x)
    return x  # str or None


# --------------------------------------------------------------------------- registry
Rule = Callable[[InferContext], list]
_RULES: dict[tuple[str, str], Rule] = {}


def shape_rule(*op_types: str, domain: str = "") -> Callable[[Rule], Rule]:
    def deco(fn: Rule) -> Rule:
        for op in op_types:
            _RULES[(domain, op)] = fn
        return fn

    return deco


def get_rule(op_type: str, domain: str = "") -> Rule | None:
    if domain == "ai.onnx":
        domain = ""
    return _RULES.get((domain, op_type))


def registered_ops(domain: str = "") -> list[str]:
    return sorted(op for d, op in _RULES if d == domain)


# --------------------------------------------------------------------------- dims
# A symbolic dim is a string. Dims computed by rules are polynomials over the input symbols with
# integer coefficients, written in a canonical form ("N", "3*N", "past+seq", "N-1"), so equal
# expressions get equal names and products/quotients/sums cancel ("3*N" / 3 == "N").
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:]*$")
_TERM = re.compile(r"[+-]?[^+-]+")

Poly = dict  # {tuple(sorted atoms): int coefficient}


def _parse(d) -> Poly | None:
    if d is None:
        return None
    if isinstance(d, (int, np.integer)):
        return {(): int(d)} if d else {}
    text = str(d)
    poly: dict = {}
    terms = _TERM.findall(text)
    if not terms or "".join(terms) != text:
        return _opaque(text)
    for term in terms:
        sign = -1 if term.startswith("-") else 1
        coef, atoms = sign, []
        for part in term.lstrip("+-").split("*"):
            if part.isdigit():
                coef *= int(part)
            elif _IDENT.match(part):
                atoms.append(part)
            else:
                return _opaque(text)  # not one of our expressions: an opaque name
        key = tuple(sorted(atoms))
        poly[key] = poly.get(key, 0) + coef
    poly = {k: c for k, c in poly.items() if c}
    if len(terms) > 1 or "*" in text:
        if _format(poly) != text:  # a name that merely looks like an expression ("seq-len")
            return _opaque(text)
    return poly


def _opaque(text: str):
    """A declared name that is not an identifier: an atom, unless it would print ambiguously."""
    return None if any(c in text for c in "+-*") else {(text,): 1}


def _format(poly: Poly):
    if not poly:
        return 0
    if set(poly) == {()}:
        return poly[()]
    parts = []
    for key in sorted(poly, key=lambda k: (len(k) == 0, k)):
        c = poly[key]
        body = "*".join(key)
        if not key:
            term = str(abs(c))
        elif abs(c) == 1:
            term = body
        else:
            term = f"{abs(c)}*{body}"
        parts.append(("-" if c < 0 else "+") + term)
    text = "".join(parts)
    return text[1:] if text.startswith("+") else text


def _poly_mul(a: Poly, b: Poly) -> Poly:
    out: dict = {}
    for ka, ca in a.items():
        for kb, cb in b.items():
            key = tuple(sorted(ka + kb))
            out[key] = out.get(key, 0) + ca * cb
    return {k: c for k, c in out.items() if c}


def dim_mul(a, b):
    if (isinstance(a, int) and a == 0) or (isinstance(b, int) and b == 0):
        return 0
    if isinstance(b, int) and b == 1:
        return a
    if isinstance(a, int) and a == 1:
        return b
    pa, pb = _parse(a), _parse(b)
    if pa is None or pb is None:
        return None
    return _format(_poly_mul(pa, pb))


def dim_prod(dims: Iterable):
    out = 1
    for d in dims:
        out = dim_mul(out, d)
        if out is None:
            return None
    return out


def dim_div(a, b):
    """Exact division a / b (b a single term), or None when it cannot be expressed."""
    pa, pb = _parse(a), _parse(b)
    if pa is None or pb is None or len(pb) != 1:
        return None
    (kb, cb), = pb.items()
    if cb == 0:
        return None
    out = {}
    for ka, ca in pa.items():
        atoms = list(ka)
        for s in kb:
            if s in atoms:
                atoms.remove(s)
            else:
                return None
        if ca % cb:
            return None
        out[tuple(atoms)] = ca // cb
    return _format(out)


def dim_floordiv(a, b):
    if isinstance(a, int) and isinstance(b, int) and b != 0:
        return a // b
    return dim_div(a, b)


def dim_add(a, b):
    if isinstance(a, int) and isinstance(b, int):
        return a + b
    if isinstance(b, int) and b == 0:
        return a
    if isinstance(a, int) and a == 0:
        return b
    pa, pb = _parse(a), _parse(b)
    if pa is None or pb is None:
        return None
    out = dict(pa)
    for k, c in pb.items():
        out[k] = out.get(k, 0) + c
    return _format({k: c for k, c in out.items() if c})


def dim_sub(a, b):
    if isinstance(a, int) and isinstance(b, int):
        return a - b
    return dim_add(a, dim_mul(b, -1)) if b is not None else None


def evaluate_dim(d, bindings: dict):
    """The size a dim takes once its symbols have values (e.g. ``{"N": 8}`` for a batch of 8):
    an int, or None if the dim is unknown or uses an unbound symbol. For memory planners."""
    if d is None or isinstance(d, (int, np.integer)):
        return None if d is None else int(d)
    poly = _parse(d)
    if poly is None:
        return None
    total = 0
    for atoms, coef in poly.items():
        term = coef
        for a in atoms:
            if a not in bindings:
                return None
            term *= int(bindings[a])
        total += term
    return total


def merge_dim(a, b):
    """Two descriptions of the same dim: prefer the more precise one; conflicts -> error."""
    if a is None:
        return b
    if b is None:
        return a
    if isinstance(a, int) and isinstance(b, int):
        if a != b:
            raise ShapeInferenceError(f"dimension mismatch: {a} vs {b}")
        return a
    if isinstance(a, int):
        return a
    if isinstance(b, int):
        return b
    return a


def merge_shape(a, b):
    if a is None:
        return b
    if b is None:
        return a
    if len(a) != len(b):
        raise ShapeInferenceError(f"rank mismatch: {list(a)} vs {list(b)}")
    return tuple(merge_dim(x, y) for x, y in zip(a, b))


def unify_dim(a, b):
    """Join of two possibly different dims (e.g. If branches): keep only what both agree on."""
    if a == b:
        return a
    return None


def unify_shape(a, b):
    if a is None or b is None or len(a) != len(b):
        return None
    return tuple(unify_dim(x, y) for x, y in zip(a, b))


def broadcast_shapes(*shapes):
    """Multidirectional (numpy) broadcasting with symbols; None if any rank unknown."""
    if any(s is None for s in shapes):
        return None
    r = max((len(s) for s in shapes), default=0)
    out = []
    for i in range(r):
        dims = [s[len(s) - r + i] for s in shapes if len(s) - r + i >= 0]
        out.append(_broadcast_dims(dims, shapes))
    return tuple(out)


def _broadcast_dims(dims, shapes):
    ints = {d for d in dims if isinstance(d, int) and d != 1}
    if len(ints) > 1:
        raise ShapeInferenceError(f"shapes {', '.join(str(list(s)) for s in shapes)} cannot broadcast")
    if ints:
        return ints.pop()
    others = [d for d in dims if not (isinstance(d, int) and d == 1)]
    if not others:
        return 1
    if any(d is None for d in others):
        return None  # unknown vs symbol: the unknown may be 1 or the symbol may be 1
    syms = set(others)
    if len(syms) == 1:
        return syms.pop()
    return None


def normalize_axis(axis: int, rank: int, what: str = "axis") -> int:
    if not -rank <= axis < max(rank, 1) and not (rank == 0 and axis in (0, -1)):
        raise ShapeInferenceError(f"{what} {axis} out of range for rank {rank}")
    return axis + rank if axis < 0 else axis


def value_to_dim(v):
    """An entry of a propagated shape value as a dim."""
    if v is None:
        return None
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, str):
        return v
    return None


def shape_value(shape) -> np.ndarray | None:
    """The value of Shape(x) given x's shape: int64 array, or object array if not all known."""
    if shape is None:
        return None
    if all(isinstance(d, int) for d in shape):
        return np.asarray(shape, dtype=np.int64).reshape(len(shape))
    arr = np.empty(len(shape), dtype=object)
    for i, d in enumerate(shape):
        arr[i] = d
    return arr


def same(ctx: InferContext, i: int = 0) -> TensorType | None:
    t = ctx.input(i)
    return TensorType(t.dtype, t.shape) if isinstance(t, TensorType) else None


INT64 = TensorProto.INT64
BOOL = TensorProto.BOOL
