"""Where a model-config problem is: :class:`ModelConfigError` (file, line, column, field path) and the
:class:`Locator` that maps field paths such as ``input[1].dims`` to the line and column of the
config.pbtxt text that writes them, and a line and column back to the field written there."""
from __future__ import annotations

import re
from dataclasses import dataclass

from google.protobuf.descriptor import Descriptor

from tuili.errors import ConfigError


class ModelConfigError(ConfigError):
    """A model configuration problem, located: ``file``, ``line``, ``column`` (1-based,
    None when unknown) and ``field`` (a path such as ``input[1].dims``)."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 column: int | None = None, field: str | None = None):
        self.file, self.line, self.column, self.field = file, line, column, field
        where = file or "<model config>"
        if line is not None:
            where += f":{line}"
            if column is not None:
                where += f":{column}"
        fld = f" field '{field}':" if field else ""
        self.reason = message
        super().__init__(f"{where}:{fld} {message}")


_TOKEN_RE = re.compile(
    r"""(?P<ws>\s+)|(?P<comment>\#[^\n]*)|(?P<str>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')"""
    r"""|(?P<punct>[{}\[\]:,;<>])|(?P<word>[^\s{}\[\]:,;<>"'#]+)"""
)


@dataclass(frozen=True)
class _Tok:
    text: str
    kind: str
    line: int
    col: int


def _tokenize(text: str) -> list[_Tok]:
    toks: list[_Tok] = []
    line, line_start = 1, 0
    for m in _TOKEN_RE.finditer(text):
        kind = m.lastgroup
        if kind is None:  # unreachable: every alternative of _TOKEN_RE is a named group
            continue
        if kind not in ("ws", "comment"):
            toks.append(_Tok(m.group(), kind, line, m.start() - line_start + 1))
        nl = m.group().count("\n")
        if nl:
            line += nl
            line_start = m.start() + m.group().rindex("\n") + 1
    return toks


class Locator:
    """Maps field paths (``input[1].dims``) to the line/column where they are written.

    A light structural scan of the text-format source, guided by the message
    descriptors so repeated fields get indices. It tolerates malformed input
    (it is also used to name the field of a syntax error)."""

    def __init__(self, text: str, root: Descriptor):
        self.first: dict[str, tuple[int, int]] = {}
        self.ordered: list[tuple[int, int, str]] = []
        toks = _tokenize(text)
        # frame: (path prefix, descriptor or None, occurrence counts)
        stack: list[tuple[str, Descriptor | None, dict[str, int]]] = [("", root, {})]
        # list context: (path of the repeated message field, descriptor, frame depth)
        lists: list[tuple[str, Descriptor | None, int, list[int]]] = []
        i, n = 0, len(toks)
        while i < n:
            t = toks[i]
            nxt = toks[i + 1].text if i + 1 < n else ""
            prefix, desc, counts = stack[-1]
            if t.kind == "word" and nxt in (":", "{", "<", "["):
                fd = desc.fields_by_name.get(t.text) if desc is not None else None
                idx = counts.get(t.text, 0)
                counts[t.text] = idx + 1
                base = f"{prefix}{t.text}"
                repeated = fd is not None and fd.is_repeated and fd.message_type is not None
                path = f"{base}[{idx}]" if repeated else base
                self.first.setdefault(path, (t.line, t.col))
                self.first.setdefault(base, (t.line, t.col))
                self.ordered.append((t.line, t.col, path))
                sub = fd.message_type if fd is not None and fd.message_type is not None else None
                j = i + 1
                if toks[j].text == ":":
                    j += 1
                opener = toks[j].text if j < n else ""
                if opener in ("{", "<"):
                    stack.append((path + ".", sub, {}))
                    i = j + 1
                    continue
                if opener == "[" and sub is not None:
                    # list of messages: field: [ {..}, {..} ]
                    start = counts[t.text] - 1
                    counts[t.text] = start  # the elements below are counted one by one
                    lists.append((base, sub, len(stack), [start]))
                    i = j + 1
                    continue
                i = j
                continue
            if t.text in ("{", "<") and lists and lists[-1][2] == len(stack):
                base, sub, _, nxt_idx = lists[-1]
                idx = nxt_idx[0]
                nxt_idx[0] += 1
                counts[base.rsplit(".", 1)[-1]] = nxt_idx[0]
                path = f"{base}[{idx}]"
                self.first.setdefault(path, (t.line, t.col))
                self.ordered.append((t.line, t.col, path))
                stack.append((path + ".", sub, {}))
            elif t.text == "]" and lists and lists[-1][2] == len(stack):
                lists.pop()
            elif t.text in ("}", ">") and len(stack) > 1:
                stack.pop()
                while lists and lists[-1][2] > len(stack):
                    lists.pop()
            i += 1

    def where(self, path: str) -> tuple[int | None, int | None]:
        """Line/column of ``path`` or of its nearest written ancestor."""
        p = path
        while p:
            if p in self.first:
                return self.first[p]
            cut = max(p.rfind("."), p.rfind("["))
            if cut <= 0:
                break
            p = p[:cut]
        return None, None

    def field_at(self, line: int, col: int) -> str | None:
        """The last field written at or before (line, col)."""
        best = None
        for ln, c, path in self.ordered:
            if (ln, c) <= (line, col):
                best = path
            else:
                break
        return best
