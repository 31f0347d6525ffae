"""FHIRPath (N1, the version FHIR R4 uses) parsed into a small syntax tree.

The whole expression grammar is parsed — operators with their precedence, invocations, indexers,
`$this`/`$index`/`$total`, `%variables`, string/number/boolean literals and `{}` — so that the
compiler can decide per construct what it evaluates itself. Date/time and quantity literals are
refused (`Unsupported`): no invariant of the R4 base definitions uses them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "Binary",
    "Call",
    "Empty",
    "Index",
    "Literal",
    "Name",
    "Node",
    "TypeOp",
    "Unary",
    "Unsupported",
    "Var",
    "parse",
]


class Unsupported(Exception):
    """Valid FHIRPath (or something this parser cannot tell from it) outside what is compiled."""


@dataclass(frozen=True, slots=True)
class Name:
    """A path step on `on`, or on the focus when `on` is None (may also be a type name)."""

    on: Node | None
    name: str


@dataclass(frozen=True, slots=True)
class Call:
    on: Node | None
    function: str
    args: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Index:
    on: Node
    index: Node


@dataclass(frozen=True, slots=True)
class TypeOp:
    on: Node
    operator: str  # "is" | "as"
    type_name: str


@dataclass(frozen=True, slots=True)
class Binary:
    operator: str
    left: Node
    right: Node


@dataclass(frozen=True, slots=True)
class Unary:
    operator: str  # "-" | "+"
    operand: Node


@dataclass(frozen=True, slots=True)
class Literal:
    value: str | bool | int | float


@dataclass(frozen=True, slots=True)
class Empty:
    """`{}`, the empty collection."""


@dataclass(frozen=True, slots=True)
class Var:
    name: str  # "%ucum", "%resource", "$this", ...


Node = Name | Call | Index | TypeOp | Binary | Unary | Literal | Empty | Var

_TOKEN = re.compile(
    r"\s*(?:"
    r"(?P<string>'(?:[^'\\]|\\.)*')"
    r"|(?P<number>\d+(?:\.\d+)?)"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*|`(?:[^`\\]|\\.)*`)"
    r"|(?P<variable>%[A-Za-z_][A-Za-z0-9_]*|%`[^`]*`|%'[^']*'|\$[a-z]+)"
    r"|(?P<date>@[0-9T:.+\-Z]*)"
    r"|(?P<op><=|>=|!=|!~|[=~<>|&+\-*/().\[\],{}])"
    r")"
)
# Binary operators by precedence, loosest first (FHIRPath N1 §6, "Operator precedence").
_LEVELS: tuple[frozenset[str], ...] = (
    frozenset({"implies"}),
    frozenset({"or", "xor"}),
    frozenset({"and"}),
    frozenset({"in", "contains"}),
    frozenset({"=", "~", "!=", "!~"}),
    frozenset({"<", ">", "<=", ">="}),
    frozenset({"|"}),
)
_ADDITIVE = frozenset({"+", "-", "&"})
_MULTIPLICATIVE = frozenset({"*", "/", "div", "mod"})
_ESCAPES = {
    "'": "'",
    '"': '"',
    "`": "`",
    "\\": "\\",
    "/": "/",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
}
_ESCAPE = re.compile(r"\\(u[0-9a-fA-F]{4}|.)", re.DOTALL)


def _unescape(text: str) -> str:
    """FHIRPath string escapes; an unknown escape keeps its backslash (`\\s` in a regex)."""

    def one(m: re.Match[str]) -> str:
        code = m.group(1)
        if len(code) == 5:
            return chr(int(code[1:], 16))
        return _ESCAPES.get(code, "\\" + code)

    return _ESCAPE.sub(one, text)


def parse(expression: str) -> Node:
    """The syntax tree of `expression`; ValueError when it is not FHIRPath, Unsupported for
    date/time and quantity literals."""
    return _Parser(expression).parse()


class _Parser:
    def __init__(self, expression: str) -> None:
        self.expression = expression
        self.tokens: list[tuple[str, str]] = []
        text = expression.rstrip()
        pos = 0
        while pos < len(text):
            match = _TOKEN.match(text, pos)
            if match is None or match.end() == pos:
                raise self.error(f"unexpected text {text[pos : pos + 20]!r}")
            kind = match.lastgroup
            assert kind is not None
            self.tokens.append((kind, match.group(kind)))
            pos = match.end()
        self.pos = 0

    def error(self, message: str) -> ValueError:
        return ValueError(f"invalid FHIRPath {self.expression!r}: {message}")

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, value: str | None = None) -> tuple[str, str]:
        token = self.peek()
        if token is None:
            raise self.error("unexpected end" + (f", expected {value!r}" if value else ""))
        if value is not None and token[1] != value:
            raise self.error(f"expected {value!r}, found {token[1]!r}")
        self.pos += 1
        return token

    def at(self, *values: str) -> bool:
        token = self.peek()
        return token is not None and token[0] in ("op", "name") and token[1] in values

    def parse(self) -> Node:
        node = self.binary(0)
        token = self.peek()
        if token is not None:
            raise self.error(f"unexpected {token[1]!r}")
        return node

    def binary(self, level: int) -> Node:
        if level == len(_LEVELS):
            return self.type_operation()
        node = self.binary(level + 1)
        while self.at(*_LEVELS[level]):
            operator = self.take()[1]
            node = Binary(operator, node, self.binary(level + 1))
        return node

    def type_operation(self) -> Node:
        node = self.additive()
        while self.at("is", "as"):
            operator = self.take()[1]
            node = TypeOp(node, operator, self.type_name())
        return node

    def additive(self) -> Node:
        node = self.multiplicative()
        while self.at(*_ADDITIVE):
            operator = self.take()[1]
            node = Binary(operator, node, self.multiplicative())
        return node

    def multiplicative(self) -> Node:
        node = self.unary()
        while self.at(*_MULTIPLICATIVE):
            operator = self.take()[1]
            node = Binary(operator, node, self.unary())
        return node

    def unary(self) -> Node:
        if self.at("-", "+"):
            operator = self.take()[1]
            return Unary(operator, self.unary())
        return self.postfix()

    def type_name(self) -> str:
        kind, name = self.take()
        if kind != "name":
            raise self.error(f"expected a type name, found {name!r}")
        name = name.strip("`")
        if self.at("."):
            self.take()
            name = f"{name}.{self.take()[1].strip('`')}"
        return name

    def postfix(self) -> Node:
        node = self.primary()
        while True:
            if self.at("."):
                self.take()
                kind, name = self.take()
                if kind != "name":
                    raise self.error(f"expected a name after '.', found {name!r}")
                node = self.invocation(node, name)
            elif self.at("["):
                self.take()
                index = self.binary(0)
                self.take("]")
                node = Index(node, index)
            else:
                return node

    def invocation(self, on: Node | None, name: str) -> Node:
        if name.startswith("`"):
            return Name(on, _unescape(name[1:-1]))
        if not self.at("("):
            return Name(on, name)
        self.take("(")
        args: list[Node] = []
        if name in ("is", "as", "ofType"):
            args.append(Literal(self.type_name()))
        elif not self.at(")"):
            args.append(self.binary(0))
            while self.at(","):
                self.take()
                args.append(self.binary(0))
        self.take(")")
        return Call(on, name, tuple(args))

    def primary(self) -> Node:
        kind, value = self.take()
        if kind == "op" and value == "(":
            node = self.binary(0)
            self.take(")")
            return node
        if kind == "op" and value == "{":
            self.take("}")
            return Empty()
        if kind == "string":
            return Literal(_unescape(value[1:-1]))
        if kind == "number":
            if self.peek() is not None and self.peek()[0] == "string":  # type: ignore[index]
                raise Unsupported("quantity literal")
            return Literal(float(value) if "." in value else int(value))
        if kind == "variable":
            return Var(value)
        if kind == "date":
            raise Unsupported("date/time literal")
        if kind == "name":
            if value in ("true", "false"):
                return Literal(value == "true")
            return self.invocation(None, value)
        raise self.error(f"unexpected {value!r}")
