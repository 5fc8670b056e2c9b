"""Read optc's text IR (what `optc show` and `format_model` print) back into a Model.

`parse(format_model(m))` prints back to the same text, and exports to ONNX that computes what `m` computes,
provided the text holds every payload: tensors of more than 8 elements are elided by the default printer
(`init float32[16, 8, 3, 3]`); print with `format_model(m, values=True)` (`optc show --values`) to keep them.
An elided payload is an error unless the caller opts in to a stand-in (`elided="zeros"` or `"random"`), which
is what tests written by hand want: the shape and type of a weight matter to a rule, its values rarely do.

Comments run from `//` or `#` to the end of the line, so a FileCheck-style test file (see
`optc.rewrites.filecheck`) is itself valid input.
"""

from __future__ import annotations

import ast
import math
import re
import zlib
from decimal import Decimal
from typing import Any, Literal

import ml_dtypes
import numpy as np
import onnx

from ..errors import OptcError
from .core import Attr, AttrType, Function, Graph, Model, Node, Value
from .printer import KEYWORDS
from .tensors import NumpyTensor, SparseTensor
from .types import DataType, MapType, OptionalType, SequenceType, SparseTensorType, TensorType

Elided = Literal["error", "zeros", "random"]


class ParseError(OptcError):
    """Malformed text IR: the message starts with `line L, column C:` (1-based) of the offending token."""

    def __init__(self, line: int, column: int, message: str):
        super().__init__(f"line {line}, column {column}: {message}")
        self.line = line
        self.column = column


def parse(text: str, *, elided: Elided = "error") -> Model:
    """A Model from optc's text IR (see `optc.ir.printer`).

    `elided`: what an elided tensor payload (`float32[16, 8, 3, 3]` with no values, `... @external`) becomes:
    `"error"` (the default) raises ParseError; `"zeros"` fills it with zeros; `"random"` with values drawn from
    a generator seeded by the value's name (floats uniform in [-1, 1), integers in [0, 4), booleans fair
    coins), so the same text always gives the same model. Raises ParseError (an OptcError) for malformed
    text, values used before their definition or defined twice, and unknown element types.
    """
    if elided not in ("error", "zeros", "random"):
        raise ValueError(f"elided must be 'error', 'zeros' or 'random', not {elided!r}")
    if not isinstance(text, str):
        raise ParseError(1, 1, f"the text IR must be a str, not {type(text).__name__}"
                               f"{' (decode the bytes first)' if isinstance(text, bytes | bytearray) else ''}")
    return _Parser(text, elided).model()


# -- tokens ------------------------------------------------------------------------------------------------------

_STR = r"""b?'(?:[^'\\\n]|\\.)*'|b?"(?:[^"\\\n]|\\.)*\""""
_TOKEN = re.compile(
    rf"""(?P<ws>[ \t\r\n]+|(?://|\#)[^\n]*)
    |%(?P<val>[A-Za-z0-9_./\-]+|{_STR}|<)
    |(?P<str>{_STR})
    |(?P<num>-?nan:0x[0-9a-fA-F]+|-(?:inf|nan)(?![A-Za-z0-9_])|-?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
    |(?P<ident>[A-Za-z_][A-Za-z0-9_.\-]*)
    |(?P<punct>->|::|\.\.\.|[(){{}}\[\]<>,=:@?])
    """,
    re.VERBOSE,
)


class _Tok:
    __slots__ = ("kind", "text", "pos")

    def __init__(self, kind: str, text: str, pos: int):
        self.kind, self.text, self.pos = kind, text, pos

    def __repr__(self) -> str:
        if self.kind == "eof":
            return "the end of the text"
        return f"'%{self.text}'" if self.kind == "val" else f"'{self.text}'"


_DTYPES = {d.short_name: d for d in DataType if d != DataType.UNDEFINED}
_ATTR_KINDS = {t.name.lower(): t for t in AttrType if t != AttrType.UNDEFINED}
_PLURAL = {AttrType.INT: AttrType.INTS, AttrType.FLOAT: AttrType.FLOATS, AttrType.STRING: AttrType.STRINGS,
           AttrType.TENSOR: AttrType.TENSORS, AttrType.TYPE_PROTO: AttrType.TYPE_PROTOS,
           AttrType.SPARSE_TENSOR: AttrType.SPARSE_TENSORS}


class _Parser:
    def __init__(self, text: str, elided: Elided):
        self.text = text
        self.elided = elided
        self.toks: list[_Tok] = []
        pos = 0
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if m is None:
                raise self._error_at(pos, f"unexpected character {text[pos]!r}")
            kind = m.lastgroup
            if kind != "ws":
                self.toks.append(_Tok(kind, m.group(kind), pos))
            pos = m.end()
        self.toks.append(_Tok("eof", "", len(text)))
        self.i = 0
        self.returned_at = self.toks[0]  # the last `return` read
        self.in_function = False  # attribute references (@name:type) are allowed in function bodies only

    # -- token helpers --------------------------------------------------------------------------------------
    def _error_at(self, pos: int, msg: str) -> ParseError:
        line = self.text.count("\n", 0, pos) + 1
        col = pos - (self.text.rfind("\n", 0, pos) + 1) + 1
        return ParseError(line, col, msg)

    def error(self, msg: str, tok: _Tok | None = None) -> ParseError:
        return self._error_at((tok or self.peek()).pos, msg)

    def peek(self, k: int = 0) -> _Tok:
        return self.toks[min(self.i + k, len(self.toks) - 1)]

    def next(self) -> _Tok:
        t = self.peek()
        self.i += 1
        return t

    def at(self, text: str, k: int = 0) -> bool:
        t = self.peek(k)
        return t.kind in ("punct", "ident") and t.text == text

    def accept(self, text: str) -> bool:
        if self.at(text):
            self.i += 1
            return True
        return False

    def expect(self, text: str, what: str = "") -> _Tok:
        t = self.peek()
        if not self.at(text):
            raise self.error(f"expected '{text}'{' ' + what if what else ''}, found {t!r}")
        self.i += 1
        return t

    def name(self, what: str) -> str:
        """A bare identifier or a quoted string."""
        t = self.next()
        if t.kind == "ident":
            return t.text
        if t.kind == "str":
            return self.text_literal(t)
        raise self.error(f"expected {what}, found {t!r}", t)

    def string(self, t: _Tok) -> Any:
        try:
            return ast.literal_eval(t.text)
        except (ValueError, SyntaxError) as exc:
            raise self.error(f"bad string literal: {exc}", t) from None

    def text_literal(self, t: _Tok) -> str:
        """A quoted name: a str literal (bytes are for STRING attributes and tensors only)."""
        v = self.string(t)
        if not isinstance(v, str):
            raise self.error("expected a quoted name, found a bytes literal", t)
        return v

    def integer(self, what: str) -> int:
        t = self.next()
        if t.kind != "num" or not re.fullmatch(r"-?\d+", t.text):
            raise self.error(f"expected {what} (an integer), found {t!r}", t)
        return int(t.text)

    def version(self, what: str) -> int:
        """A positive int64 (an IR or opset version)."""
        t = self.peek()
        v = self.integer(what)
        if not 1 <= v < 1 << 63:
            raise self.error(f"{what} must be a positive 64-bit integer, not {v}", t)
        return v

    def value_name(self, t: _Tok) -> str:
        raw = t.text
        if raw == "<":
            raise self.error("an unnamed value (printed as %<unnamed ...>) cannot be parsed: name it first", t)
        return self.text_literal(t) if raw[-1] in "'\"" else raw

    # -- model ----------------------------------------------------------------------------------------------
    def model(self) -> Model:
        self.expect("<", "at the start of the model header")
        self.expect("ir_version")
        self.expect(":")
        ir_version = self.version("the IR version")
        self.expect(",")
        self.expect("opsets")
        self.expect(":")
        opsets = self.opsets()
        producer = version = ""
        if self.accept(","):
            self.expect("producer")
            self.expect(":")
            producer = self.literal_string("the producer name")
            if self.peek().kind == "str":
                version = self.literal_string("the producer version")
        self.expect(">", "to close the model header")
        if not self.at("graph"):
            raise self.error(f"expected 'graph', found {self.peek()!r}")
        self.next()
        graph = self.graph([])
        model = Model(graph, opsets, ir_version=ir_version)
        model.producer_name, model.producer_version = producer, version
        while self.at("function"):
            fn = self.function()
            if fn.key in model.functions:
                raise self.error(f"function {fn.domain}::{fn.name} is defined twice")
            model.functions[fn.key] = fn
        if self.peek().kind != "eof":
            raise self.error(f"expected 'function' or the end of the text, found {self.peek()!r}")
        return model

    def literal_string(self, what: str) -> str:
        t = self.next()
        if t.kind != "str":
            raise self.error(f"expected {what} (a quoted string), found {t!r}", t)
        return self.text_literal(t)

    def opsets(self) -> dict[str, int]:
        self.expect("{")
        out: dict[str, int] = {}
        while not self.accept("}"):
            if out:
                self.expect(",")
            tok = self.peek()
            domain = self.name("a domain")
            domain = "" if domain == "ai.onnx" else domain
            self.expect(":")
            if domain in out:
                raise self.error(f"opset of domain '{domain or 'ai.onnx'}' given twice", tok)
            out[domain] = self.version("an opset version")
        return out

    # -- graphs ---------------------------------------------------------------------------------------------
    def graph(self, outer: list[dict[str, Value]]) -> Graph:
        """After the keyword (`graph` or `attr:`): name (ins) -> (outs) { body }."""
        name = self.name("a graph name")
        g = Graph(name="" if name == "_" and self.toks[self.i - 1].kind == "ident" else name)
        scope: dict[str, Value] = {}
        self.expect("(", "before the graph inputs")
        while not self.accept(")"):
            if g.inputs:
                self.expect(",")
            v = Value(self.define_name(scope), self.typed())
            scope[v.name] = v
            g.inputs.append(v)
        self.expect("->")
        self.expect("(", "before the graph outputs")
        declared: list[tuple[str, Any, _Tok]] = []
        while not self.accept(")"):
            if declared:
                self.expect(",")
            tok = self.peek()
            if tok.kind != "val":
                raise self.error(f"expected a graph output (%name: type), found {tok!r}")
            self.next()
            declared.append((self.value_name(tok), self.typed(), tok))
        self.expect("{")
        returned = self.body(g, scope, outer, functions=False)
        if [n for n, _, _ in declared] != [v.name for v in returned]:
            raise self.error(f"'return' names {[v.name for v in returned]}, but the graph header declares "
                             f"{[n for n, _, _ in declared]}", self.returned_at)
        for v, (_, t, _) in zip(returned, declared, strict=True):
            if v.name in scope and t is not None:
                v.type = t
        g.outputs.extend(returned)
        return g

    def define_name(self, scope: dict[str, Value]) -> str:
        t = self.next()
        if t.kind != "val":
            raise self.error(f"expected a value (%name), found {t!r}", t)
        name = self.value_name(t)
        if name in scope:
            raise self.error(f"value %{name} is defined twice", t)
        return name

    def typed(self) -> Any:
        self.expect(":", "and a type after the value")
        return self.type()

    def body(self, g: Graph, scope: dict[str, Value], outer: list[dict[str, Value]], functions: bool) -> list[Value]:
        """Initializers and nodes up to `return ...` and `}`; returns the returned values."""
        while True:
            t = self.peek()
            if t.kind == "ident" and t.text == "return":
                self.next()
                self.returned_at = t
                returned = []
                while self.peek().kind == "val":
                    returned.append(self.lookup(self.next(), scope, outer))
                    if not self.accept(","):
                        break
                self.expect("}", "after the returned values")
                return returned
            if t.kind == "val" and self.at("=", 1) and self.at("init", 2):
                if functions:
                    raise self.error("a function body has no initializers")
                self.initializer(g, scope)
            elif t.text == "..." and t.kind == "punct":
                raise self.error("the text was truncated (printed with max_nodes); print it whole to parse it")
            elif t.kind == "eof":
                raise self.error("the graph is not closed: expected 'return' and '}'")
            else:
                self.node(g, scope, outer)

    def lookup(self, t: _Tok, scope: dict[str, Value], outer: list[dict[str, Value]]) -> Value:
        name = self.value_name(t)
        for s in (scope, *reversed(outer)):
            v = s.get(name)
            if v is not None:
                return v
        raise self.error(f"value %{name} is used before it is defined", t)

    def initializer(self, g: Graph, scope: dict[str, Value]) -> None:
        t = self.next()
        name = self.value_name(t)
        self.next()  # =
        self.next()  # init
        tensor = self.tensor(name)
        v = scope.get(name)
        if v is not None and (v.const is not None or not any(x is v for x in g.inputs)):
            raise self.error(f"value %{name} is defined twice", t)
        if v is None:  # (a graph input of the same name is an old-style initializer input: it keeps its type)
            v = scope[name] = Value(name)
        v.const = tensor
        g.add_initializer(v)

    # -- nodes ----------------------------------------------------------------------------------------------
    def node(self, g: Graph, scope: dict[str, Value], outer: list[dict[str, Value]]) -> None:
        outputs: list[Value | None] = []
        out_toks: list[_Tok] = []
        if self.peek().kind == "val" or self.at("None"):
            while True:
                t = self.next()
                if t.kind == "ident" and t.text == "None":
                    outputs.append(None)
                elif t.kind == "val":
                    v = Value(self.value_name(t))
                    if self.accept(":"):
                        v.type = self.type()
                    outputs.append(v)
                    out_toks.append(t)
                else:
                    raise self.error(f"expected a node output (%name or None), found {t!r}", t)
                if not self.accept(","):
                    break
            self.expect("=", "after the node outputs")
        domain, op_type = "", self.name("an op type")
        if self.accept("::"):
            domain, op_type = op_type, self.name("an op type")
        self.expect("(", f"after {op_type}")
        inputs: list[Value | None] = []
        while not self.accept(")"):
            if inputs:
                self.expect(",")
            t = self.next()
            if t.kind == "ident" and t.text == "None":
                inputs.append(None)
            elif t.kind == "val":
                inputs.append(self.lookup(t, scope, outer))
            else:
                raise self.error(f"expected an input (%name or None), found {t!r}", t)
        attrs: dict[str, Attr] = {}
        if self.accept("{"):
            while not self.accept("}"):
                if attrs:
                    self.expect(",")
                at = self.peek()
                name = self.name("an attribute name")
                self.expect("=")
                if name in attrs:
                    raise self.error(f"attribute '{name}' is given twice", at)
                attrs[name] = self.attr(name)
        node_name = doc = ""
        if self.accept("@"):  # the node's name, then its doc string: @conv1 doc 'text'
            if self.peek().kind == "ident" and self.peek().text in KEYWORDS:  # (printed quoted)
                raise self.error(f"expected a node name after '@', found {self.peek()!r}")
            node_name = self.name("a node name after '@'")
            if self.at("doc") and self.peek(1).kind == "str":
                self.next()
                doc = self.text_literal(self.next())
        # subgraph blocks: `name: graph ...` or `name[i]: graph ...` (GRAPHS)
        while self.peek().kind in ("ident", "str") and (self.at(":", 1) or self.at("[", 1)):
            at = self.peek()
            name = self.name("an attribute name")
            index = None
            if self.accept("["):
                index = self.integer("a graph index")
                self.expect("]")
            self.expect(":")
            sub = self.graph([*outer, scope])
            if index is None:
                if name in attrs:
                    raise self.error(f"attribute '{name}' is given twice", at)
                attrs[name] = Attr(name, AttrType.GRAPH, sub)
            else:
                a = attrs.get(name)
                if a is None and index == 0:
                    attrs[name] = Attr(name, AttrType.GRAPHS, [sub])
                elif a is not None and a.type == AttrType.GRAPHS and index == len(a.value):
                    a.value.append(sub)
                else:
                    raise self.error(f"graph {name}[{index}] is out of order", at)
        node = Node(op_type, inputs, list(attrs.values()), domain=domain, outputs=outputs, name=node_name)
        node.doc_string = doc
        for v, t in zip([o for o in outputs if o is not None], out_toks, strict=True):
            if v.name in scope:
                raise self.error(f"value %{v.name} is defined twice", t)
            scope[v.name] = v
        g.append(node)

    def attr(self, name: str) -> Attr:
        t = self.peek()
        if self.at("@"):
            if not self.in_function:
                raise self.error("an attribute reference (@name:type) is allowed only in a function body")
            self.next()
            ref = self.name("the name of a function attribute")
            self.expect(":", "and the attribute's type after the reference")
            kt = self.peek()
            kind = _ATTR_KINDS.get(self.name("an attribute type"))
            if kind is None:
                raise self.error(f"unknown attribute type; one of {', '.join(_ATTR_KINDS)}", kt)
            return Attr(name, kind, None, ref_attr_name=ref)
        if self.accept("["):
            if self.accept("]"):
                self.expect(":", "and the type of the empty list ([]:ints, []:floats, ...)")
                kt = self.peek()
                kind = _ATTR_KINDS.get(self.name("a list type"))
                if kind is None or kind not in (*_PLURAL.values(), AttrType.GRAPHS, AttrType.SPARSE_TENSORS):
                    raise self.error("expected a list type: ints, floats, strings, tensors, graphs, "
                                     "sparse_tensors or type_protos", kt)
                return Attr(name, kind, [])
            items: list[tuple[AttrType, Any]] = []
            while True:
                items.append(self.scalar_attr(name))
                if self.accept("]"):
                    break
                self.expect(",", "or ']' in the list")
            kinds = {k for k, _ in items}
            if kinds == {AttrType.INT, AttrType.FLOAT}:
                return Attr(name, AttrType.FLOATS, [float(np.float32(v)) for _, v in items])
            if len(kinds) != 1:
                raise self.error(f"the list of attribute '{name}' mixes element types", t)
            (kind,) = kinds
            return Attr(name, _PLURAL[kind], [v for _, v in items])
        kind, value = self.scalar_attr(name)
        return Attr(name, kind, value)

    def scalar_attr(self, name: str) -> tuple[AttrType, Any]:
        t = self.peek()
        if t.kind == "str":
            self.next()
            return AttrType.STRING, self.string(t)
        if t.kind == "num" or (t.kind == "ident" and t.text in ("inf", "nan")):
            self.next()
            if re.fullmatch(r"-?\d+", t.text):
                return AttrType.INT, int(t.text)
            return AttrType.FLOAT, float(self.floats([t], np.dtype(np.float32))[0])
        if t.kind == "ident" and t.text == "type":
            self.next()
            return AttrType.TYPE_PROTO, self.type()
        if t.kind == "ident" and (t.text in _DTYPES or t.text == "sparse"):
            tensor = self.tensor(name)
            return (AttrType.SPARSE_TENSOR if isinstance(tensor, SparseTensor) else AttrType.TENSOR), tensor
        raise self.error(f"expected a value for attribute '{name}', found {t!r}", t)

    # -- types ----------------------------------------------------------------------------------------------
    def type(self) -> Any:
        t = self.next()
        if t.kind == "punct" and t.text == "?":
            return None
        if t.kind != "ident":
            raise self.error(f"expected a type, found {t!r}", t)
        if t.text in ("seq", "optional"):
            self.expect("<")
            elem = self.type()
            self.expect(">")
            return SequenceType(elem) if t.text == "seq" else OptionalType(elem)
        if t.text == "map":
            self.expect("<")
            key = self.dtype(self.next())
            self.expect(",")
            value = self.type()
            self.expect(">")
            return MapType(key, value)
        if t.text == "sparse":
            self.expect("<")
            dt = self.dtype(self.next())
            shape = self.shape() if self.at("[") else None
            self.expect(">")
            return SparseTensorType(dt, shape)
        return TensorType(self.dtype(t), self.shape() if self.at("[") else None)

    def dtype(self, t: _Tok) -> DataType:
        dt = _DTYPES.get(t.text) if t.kind == "ident" else None
        if dt is None:
            raise self.error(f"unknown element type {t!r} (one of {', '.join(_DTYPES)})", t)
        return dt

    def shape(self) -> tuple:
        self.expect("[")
        dims: list = []
        while not self.accept("]"):
            if dims:
                self.expect(",")
            t = self.next()
            if t.kind == "num" and re.fullmatch(r"\d+", t.text):
                dims.append(int(t.text))
            elif t.kind == "punct" and t.text == "?":
                dims.append(None)
            elif t.kind == "ident":
                dims.append(t.text)
            elif t.kind == "str":
                dims.append(self.text_literal(t))
            else:
                raise self.error(f"expected a dimension (a size, a name or ?), found {t!r}", t)
        return tuple(dims)

    # -- tensors --------------------------------------------------------------------------------------------
    def tensor(self, name: str, need_values: bool = False) -> NumpyTensor | SparseTensor:
        start = self.peek()
        if self.accept("sparse"):
            return self.sparse_tensor(name, start)
        dt = self.dtype(self.next())
        shape = self.shape()
        if any(not isinstance(d, int) for d in shape):
            raise self.error("a tensor needs a static shape", start)
        if self.at("["):
            self.next()
            items: list[_Tok] = []
            while not self.accept("]"):
                if items:
                    self.expect(",")
                items.append(self.next())
            if len(items) != math.prod(shape):
                raise self.error(f"{dt.short_name}{list(shape)} has {math.prod(shape)} elements, "
                                 f"the text gives {len(items)}", start)
            return NumpyTensor(self.elements(items, dt).reshape(shape), dt)
        external = self.accept("@")
        if external:
            self.expect("external")
        if self.elided == "error" or need_values or dt in (DataType.COMPLEX64, DataType.COMPLEX128, DataType.STRING):
            what = "external data" if external else "elided"
            raise self.error(f"the payload of %{name} ({dt.short_name}{list(shape)}) is {what}: print the "
                             f"model with values=True (optc show --values), or parse with elided='zeros' or "
                             f"'random' to stand in values", start)
        return NumpyTensor(_stand_in(dt, shape, name, self.elided), dt)

    def sparse_tensor(self, name: str, start: _Tok) -> SparseTensor:
        """After `sparse`: `float32[4, 4] values float32[2] [...] indices int64[2] [...]` (see the printer)."""
        dt = self.dtype(self.next())
        shape = self.shape()
        if any(not isinstance(d, int) for d in shape):
            raise self.error("a tensor needs a static shape", start)
        self.expect("values", "after the shape of a sparse tensor")
        values = self.tensor(name)
        if isinstance(values, SparseTensor) or values.dtype != dt:
            raise self.error(f"the values of a sparse {dt.short_name} tensor must be a dense {dt.short_name} "
                             f"tensor", start)
        self.expect("indices", "after the values of a sparse tensor")
        at = self.peek()
        indices = self.tensor(name, need_values=True)
        if isinstance(indices, SparseTensor) or indices.dtype != DataType.INT64:
            raise self.error("the indices of a sparse tensor must be a dense int64 tensor", at)
        proto = onnx.SparseTensorProto()
        proto.dims.extend(shape)
        proto.values.CopyFrom(values.to_proto(name))
        proto.indices.CopyFrom(indices.to_proto(""))
        return SparseTensor(proto)

    def elements(self, items: list[_Tok], dt: DataType) -> np.ndarray:
        if dt == DataType.STRING:
            bad = next((t for t in items if t.kind != "str"), None)
            if bad is not None:
                raise self.error(f"expected a string element, found {bad!r}", bad)
            return np.array([self.string(t) for t in items] or [], dtype=object)  # str, or bytes (not UTF-8)
        if dt == DataType.BOOL:
            bad = next((t for t in items if t.text not in ("true", "false")), None)
            if bad is not None:
                raise self.error(f"expected true or false, found {bad!r}", bad)
            return np.array([t.text == "true" for t in items], dtype=np.bool_)
        if dt.is_floating:
            return self.floats(items, dt.numpy(), dt.short_name)
        if dt in (DataType.COMPLEX64, DataType.COMPLEX128):
            raise self.error("complex tensors print without their values and cannot be parsed", items[0])
        out = []
        for t in items:
            if t.kind != "num" or not re.fullmatch(r"-?\d+", t.text):
                raise self.error(f"expected an integer element, found {t!r}", t)
            out.append(int(t.text))
        info = ml_dtypes.iinfo(dt.numpy())
        for t, v in zip(items, out, strict=True):
            if not info.min <= v <= info.max:
                raise self.error(f"{v} does not fit {dt.short_name} ({info.min} to {info.max})", t)
        return np.array(out, dtype=dt.numpy())

    def floats(self, items: list[_Tok], dtype: np.dtype, label: str = "") -> np.ndarray:
        """Decimal text to `dtype` (float16/32/64 correctly rounded; bfloat16, float8, ... through float32, exact
        for what the printer prints); `nan:0x...` gives a NaN's bits in `dtype`. A value that the narrow types
        cannot hold (NaN or inf where they have none, beyond the largest finite value where they have no inf)
        and bits that are not a NaN of `dtype` raise ParseError."""
        label = label or str(dtype)
        texts = []
        payloads: dict[int, int] = {}  # element index -> the bits of a NaN written as nan:0x...
        for i, t in enumerate(items):
            if t.kind == "num" and ":" in t.text:
                if t.text.startswith("-"):
                    raise self.error("a NaN given by its bits (nan:0x...) takes no sign: the bits hold it", t)
                payloads[i] = int(t.text.split(":")[1], 16)
                texts.append("nan")
            elif t.kind == "num" or (t.kind == "ident" and t.text in ("inf", "nan")):
                texts.append(t.text)
            else:
                raise self.error(f"expected a float element, found {t!r}", t)
        try:
            x64 = np.array([float(s) for s in texts], dtype=np.float64)
        except ValueError as exc:
            raise self.error(f"bad float: {exc}", items[0]) from None
        if dtype == np.float64:
            y = x64
        elif dtype.kind == "f" and dtype.itemsize in (2, 4):
            y = _round_decimal(texts, x64, dtype)
        else:
            with np.errstate(all="ignore"):  # NaN and out-of-range casts are checked below
                y = _round_decimal(texts, x64, np.dtype(np.float32)).astype(dtype)
            self._check_narrow(items, x64, dtype, label)
        u = np.dtype(f"u{dtype.itemsize}")
        bits = y.view(u)
        for i, b in payloads.items():
            with np.errstate(all="ignore"):
                is_nan = b < 1 << (8 * dtype.itemsize) and bool(np.isnan(np.array(b, u).view(dtype).astype(np.float32)))
            if not is_nan:
                raise self.error(f"{hex(b)} is not the bits of a {label} NaN", items[i])
            bits[i] = b
        return y

    def _check_narrow(self, items: list[_Tok], x64: np.ndarray, dtype: np.dtype, label: str) -> None:
        """ParseError for an element that a narrow float type (ml_dtypes) cannot hold."""
        with np.errstate(all="ignore"):
            has_nan = bool(np.isnan(np.array(np.nan, np.float32).astype(dtype).astype(np.float32)))
            has_inf = bool(np.isinf(np.array(np.inf, np.float32).astype(dtype).astype(np.float32)))
        finfo = ml_dtypes.finfo(dtype)
        top = float(finfo.max)
        half_ulp = 2.0 ** math.floor(math.log2(top)) * float(finfo.eps) / 2  # values from here on do not round to max
        for t, x in zip(items, x64.tolist(), strict=True):
            if math.isnan(x) and not has_nan:
                raise self.error(f"{label} has no NaN", t)
            if math.isinf(x) and not has_inf:
                raise self.error(f"{label} has no infinity", t)
            if math.isfinite(x) and not has_inf and abs(x) >= top + half_ulp:
                raise self.error(f"{x!r} is beyond the largest {label} ({top!r})", t)

    # -- functions ------------------------------------------------------------------------------------------
    def function(self) -> Function:
        self.next()  # function
        domain = ""
        if not self.at("::"):
            domain = self.name("a function domain")
        self.expect("::")
        name = self.name("a function name")
        attributes: list[str] = []
        defaults: dict[str, Attr] = {}
        if self.accept("<"):
            while not self.accept(">"):
                if attributes or defaults:
                    self.expect(",")
                a = self.name("an attribute name")
                if self.accept("="):
                    defaults[a] = self.attr(a)
                else:
                    attributes.append(a)
        g = Graph(name=name)
        scope: dict[str, Value] = {}
        self.expect("(")
        while not self.accept(")"):
            if g.inputs:
                self.expect(",")
            v = Value(self.define_name(scope))
            scope[v.name] = v
            g.inputs.append(v)
        self.expect("->")
        self.expect("(")
        declared: list[str] = []
        while not self.accept(")"):
            if declared:
                self.expect(",")
            t = self.next()
            if t.kind != "val":
                raise self.error(f"expected a function output (%name), found {t!r}", t)
            declared.append(self.value_name(t))
        opsets: dict[str, int] = {}
        if self.accept("opsets"):
            opsets = self.opsets()
        self.expect("{")
        self.in_function = True
        returned = self.body(g, scope, [], functions=True)
        self.in_function = False
        if declared != [v.name for v in returned]:
            raise self.error(f"'return' names {[v.name for v in returned]}, but the function header declares "
                             f"{declared}", self.returned_at)
        g.outputs.extend(returned)
        return Function(domain, name, g, attributes=attributes, attribute_defaults=defaults, opset_imports=opsets)


def _round_decimal(texts: list[str], x64: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Round decimals to float16/float32 correctly. Going through float64 rounds twice, which errs only when
    the float64 lands exactly on a midpoint of `dtype`: those few are settled with exact decimal arithmetic."""
    with np.errstate(over="ignore", invalid="ignore"):  # beyond the largest finite value: inf, as the cast rounds
        y = x64.astype(dtype)
        finite = np.isfinite(x64) & np.isfinite(y)
        yb = y.astype(np.float64)
        toward = np.nextafter(y, np.where(x64 > yb, np.inf, -np.inf).astype(dtype))
    mid = (yb + toward.astype(np.float64)) / 2
    for i in np.flatnonzero(finite & (x64 != yb) & (x64 == mid)):
        d = Decimal(texts[i])
        a, b = y[i], toward[i]
        da, db = abs(d - Decimal(float(a))), abs(d - Decimal(float(b)))
        if db < da or (db == da and int(np.asarray(b).view(f"u{dtype.itemsize}")) % 2 == 0):
            y[i] = b
    return y


def _stand_in(dt: DataType, shape: tuple, name: str, how: str) -> np.ndarray:
    """Zeros, or values seeded by `name` (see `parse`)."""
    native = dt.numpy()
    if how == "zeros":
        return np.zeros(shape, native)
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    if dt == DataType.BOOL:
        return rng.random(shape) < 0.5
    if dt.is_floating:
        return rng.uniform(-1, 1, size=shape).astype(np.float32).astype(native)
    return rng.integers(0, 4, size=shape).astype(native)
