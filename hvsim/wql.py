r"""WQL, the WMI query language, as far as the simulator's WinRM needs it.

Three statement forms (WMI "WQL (SQL for WMI)" reference):

* ``SELECT * | p1, p2 FROM Class [WHERE cond]`` with ``=``, ``<>``, ``!=``, ``<``,
  ``>``, ``<=``, ``>=``, ``[NOT] LIKE`` (``%``, ``_``, ``[abc]``, ``[^a-z]``),
  ``IS [NOT] NULL``, ``ISA``, ``AND``, ``OR``, ``NOT`` and parentheses; literals in
  ``'...'`` or ``"..."`` (backslash escapes ``\\``, ``\'``, ``\"``), numbers,
  ``TRUE``/``FALSE``/``NULL``.  String comparisons are case-insensitive, as in WMI.
* ``ASSOCIATORS OF {objpath} [WHERE AssocClass = A ResultClass = R Role = X ResultRole = Y]``
* ``REFERENCES OF {objpath} [WHERE ResultClass = A Role = X]``

Object paths are WMI paths, ``[\\HOST\root\ns:]Class.Key="v",Key2=5`` with ``\\``
and ``\"`` escaped inside quoted values (or the single-key form ``Class="v"``).

Errors raise :class:`WqlError`; the dispatcher turns them into ``n:CannotProcessFilter``.
"""

from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass
from typing import Any, Callable, List, Sequence, Tuple, Union

from hvsim.cim import CimInstance, CimInterval, CimRef, ClassDef


class WqlError(ValueError):
    """The query (or object path) is not valid WQL, or names unknown properties."""


# ---------------------------------------------------------------------------
# Object paths


@dataclass(frozen=True)
class ObjectPath:
    """A parsed WMI object path; ``keys`` keep the spelling and order of the text."""

    host: str | None
    namespace: str | None  # with '/' separators, e.g. "root/virtualization/v2"
    class_name: str
    keys: Tuple[Tuple[str | None, str], ...]  # (None, v) for the single-key form ``Class="v"``

    def to_ref(self, default_namespace: str, key_names: Sequence[str] = ()) -> CimRef:
        """The :class:`CimRef` this path names; ``key_names`` resolves the single-key form."""
        keys: List[Tuple[str, str]] = []
        for given, value in self.keys:
            name = given
            if name is None:
                if len(key_names) != 1:
                    raise WqlError(f"object path {self.class_name}=... needs key names")
                name = key_names[0]
            keys.append((name, value))
        return CimRef(self.namespace or default_namespace, self.class_name, tuple(keys))


_IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _read_quoted(text: str, pos: int) -> Tuple[str, int]:
    """Read a quoted value starting at ``text[pos]`` (the quote); return (value, next pos)."""
    quote = text[pos]
    out: List[str] = []
    i = pos + 1
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text) and text[i + 1] in ("\\", '"', "'"):
            out.append(text[i + 1])
            i += 2
            continue
        if c == quote:
            return "".join(out), i + 1
        out.append(c)
        i += 1
    raise WqlError(f"unterminated quoted value in {text!r}")


def parse_object_path(text: str) -> ObjectPath:
    r"""Parse a WMI object path such as ``\\HV01\root\virtualization\v2:Msvm_X.InstanceID="a\\b"``."""
    s = text.strip()
    host: str | None = None
    namespace: str | None = None
    if s.startswith(("\\\\", "//")):
        rest = s[2:]
        m = re.match(r"[^\\/]+", rest)
        if not m:
            raise WqlError(f"object path {text!r} has an empty host")
        host = m.group(0)
        s = rest[m.end():]
        if s[:1] in ("\\", "/"):
            s = s[1:]
    # The namespace ends at the first ':' that is not inside quotes.
    colon = -1
    quote: str | None = None
    for i, c in enumerate(s):
        if quote:
            if c == "\\":
                continue
            if c == quote and (i == 0 or s[i - 1] != "\\"):
                quote = None
        elif c in ('"', "'"):
            quote = c
        elif c == ":":
            colon = i
            break
        elif c in ".=":
            break
    if colon >= 0:
        namespace = s[:colon].replace("\\", "/").strip("/")
        s = s[colon + 1:]
    m = _IDENT_RE.match(s)
    if not m:
        raise WqlError(f"object path {text!r} has no class name")
    class_name = m.group(0)
    pos = m.end()
    keys: List[Tuple[str | None, str]] = []
    if pos < len(s) and s[pos] == "=":
        value, pos = _read_value(s, pos + 1, text)
        keys.append((None, value))
    elif pos < len(s) and s[pos] == ".":
        pos += 1
        while True:
            km = _IDENT_RE.match(s, pos)
            if not km:
                raise WqlError(f"object path {text!r}: key name expected at {s[pos:]!r}")
            pos = km.end()
            if pos >= len(s) or s[pos] != "=":
                raise WqlError(f"object path {text!r}: '=' expected after {km.group(0)}")
            value, pos = _read_value(s, pos + 1, text)
            keys.append((km.group(0), value))
            if pos < len(s) and s[pos] == ",":
                pos += 1
                continue
            break
    if s[pos:].strip():
        raise WqlError(f"object path {text!r}: unexpected {s[pos:]!r}")
    return ObjectPath(host, namespace, class_name, tuple(keys))


def _read_value(s: str, pos: int, text: str) -> Tuple[str, int]:
    if pos < len(s) and s[pos] in ('"', "'"):
        return _read_quoted(s, pos)
    m = re.compile(r"[^,]*").match(s, pos)
    assert m is not None
    value = m.group(0).strip()
    if not value:
        raise WqlError(f"object path {text!r}: empty key value")
    return value, m.end()


# ---------------------------------------------------------------------------
# Tokens

_KEYWORDS = {
    "SELECT", "FROM", "WHERE", "AND", "OR", "NOT", "LIKE", "IS", "ISA", "NULL", "TRUE", "FALSE",
    "ASSOCIATORS", "REFERENCES", "OF",
}


@dataclass(frozen=True)
class _Tok:
    kind: str  # KW, IDENT, STR, NUM, OP, LP, RP, COMMA, STAR, PATH, END
    value: Any
    pos: int


_NUM_RE = re.compile(r"[+-]?(0[xX][0-9A-Fa-f]+|\d+(\.\d*)?([eE][+-]?\d+)?|\.\d+([eE][+-]?\d+)?)")


def _tokenize(text: str) -> List[_Tok]:
    toks: List[_Tok] = []
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
            continue
        if c in ('"', "'"):
            value, j = _read_quoted(text, i)
            toks.append(_Tok("STR", value, i))
            i = j
            continue
        if c == "{":
            j = _matching_brace(text, i)
            toks.append(_Tok("PATH", text[i + 1:j], i))
            i = j + 1
            continue
        two = text[i:i + 2]
        if two in ("<>", "!=", "<=", ">="):
            toks.append(_Tok("OP", "<>" if two == "!=" else two, i))
            i += 2
            continue
        if c in "=<>":
            toks.append(_Tok("OP", c, i))
            i += 1
            continue
        if c == "(":
            toks.append(_Tok("LP", c, i))
            i += 1
            continue
        if c == ")":
            toks.append(_Tok("RP", c, i))
            i += 1
            continue
        if c == ",":
            toks.append(_Tok("COMMA", c, i))
            i += 1
            continue
        if c == "*":
            toks.append(_Tok("STAR", c, i))
            i += 1
            continue
        m = _NUM_RE.match(text, i)
        if m and (c.isdigit() or c in "+-."):
            raw = m.group(0)
            num: Union[int, float]
            if raw.lower().lstrip("+-").startswith("0x"):
                num = int(raw, 16)
            elif re.fullmatch(r"[+-]?\d+", raw):
                num = int(raw)
            else:
                num = float(raw)
            toks.append(_Tok("NUM", num, i))
            i = m.end()
            continue
        m = _IDENT_RE.match(text, i)
        if m:
            word = m.group(0)
            if word.upper() in _KEYWORDS:
                toks.append(_Tok("KW", word.upper(), i))
            else:
                toks.append(_Tok("IDENT", word, i))
            i = m.end()
            continue
        raise WqlError(f"unexpected character {c!r} at position {i}")
    toks.append(_Tok("END", None, n))
    return toks


def _matching_brace(text: str, start: int) -> int:
    quote: str | None = None
    i = start + 1
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\":
                i += 2
                continue
            if c == quote:
                quote = None
        elif c in ('"', "'"):
            quote = c
        elif c == "}":
            return i
        i += 1
    raise WqlError("object path '{' is not closed by '}'")


# ---------------------------------------------------------------------------
# AST


@dataclass(frozen=True)
class Compare:
    """``prop op literal`` (the parser puts the property on the left)."""

    prop: str
    op: str  # =, <>, <, >, <=, >=
    value: Any  # str, int, float, bool or None (NULL)


@dataclass(frozen=True)
class Like:
    prop: str
    pattern: str
    negate: bool = False


@dataclass(frozen=True)
class IsNull:
    prop: str
    negate: bool = False


@dataclass(frozen=True)
class Isa:
    prop: str
    class_name: str


@dataclass(frozen=True)
class Not:
    expr: Expr


@dataclass(frozen=True)
class And:
    left: Expr
    right: Expr


@dataclass(frozen=True)
class Or:
    left: Expr
    right: Expr


Expr = Union[Compare, Like, IsNull, Isa, Not, And, Or]


@dataclass(frozen=True)
class SelectQuery:
    """``SELECT props FROM class_name WHERE where``; ``props`` None means ``*``."""

    class_name: str
    props: Tuple[str, ...] | None = None
    where: Expr | None = None
    text: str = ""


@dataclass(frozen=True)
class AssociatorsQuery:
    """``ASSOCIATORS OF {path}`` with its WHERE keywords."""

    path: ObjectPath
    assoc_class: str | None = None
    result_class: str | None = None
    role: str | None = None
    result_role: str | None = None
    text: str = ""


@dataclass(frozen=True)
class ReferencesQuery:
    """``REFERENCES OF {path}``; ``result_class`` names the association class."""

    path: ObjectPath
    result_class: str | None = None
    role: str | None = None
    text: str = ""


Query = Union[SelectQuery, AssociatorsQuery, ReferencesQuery]


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.toks = _tokenize(text)
        self.i = 0

    def peek(self) -> _Tok:
        return self.toks[self.i]

    def take(self) -> _Tok:
        t = self.toks[self.i]
        self.i += 1
        return t

    def is_kw(self, *words: str) -> bool:
        t = self.peek()
        return t.kind == "KW" and t.value in words

    def expect_kw(self, word: str) -> None:
        t = self.take()
        if t.kind != "KW" or t.value != word:
            raise WqlError(f"{word} expected at position {t.pos} of {self.text!r}")

    def ident(self, what: str) -> str:
        t = self.take()
        if t.kind == "IDENT":
            return str(t.value)
        if t.kind == "STR" and _IDENT_RE.fullmatch(str(t.value)):
            return str(t.value)
        raise WqlError(f"{what} expected at position {t.pos} of {self.text!r}")

    def end(self) -> None:
        t = self.peek()
        if t.kind != "END":
            raise WqlError(f"unexpected {t.value!r} at position {t.pos} of {self.text!r}")

    # statements

    def statement(self) -> Query:
        if self.is_kw("SELECT"):
            return self.select()
        if self.is_kw("ASSOCIATORS", "REFERENCES"):
            return self.assoc()
        raise WqlError(f"query must start with SELECT, ASSOCIATORS OF or REFERENCES OF: {self.text!r}")

    def select(self) -> SelectQuery:
        self.expect_kw("SELECT")
        props: List[str] | None = None
        if self.peek().kind == "STAR":
            self.take()
        else:
            props = [self.ident("property name")]
            while self.peek().kind == "COMMA":
                self.take()
                props.append(self.ident("property name"))
        self.expect_kw("FROM")
        cls = self.ident("class name")
        where: Expr | None = None
        if self.is_kw("WHERE"):
            self.take()
            where = self.or_expr()
        self.end()
        return SelectQuery(cls, tuple(props) if props is not None else None, where, self.text)

    def assoc(self) -> Query:
        kind = self.take().value
        self.expect_kw("OF")
        t = self.take()
        if t.kind != "PATH":
            raise WqlError(f"{{object path}} expected after {kind} OF in {self.text!r}")
        path = parse_object_path(str(t.value))
        opts: dict[str, str] = {}
        allowed = (
            {"assocclass", "resultclass", "role", "resultrole", "classdefsonly", "keysonly"}
            if kind == "ASSOCIATORS"
            else {"resultclass", "role", "classdefsonly", "keysonly"}
        )
        if self.is_kw("WHERE"):
            self.take()
            while self.peek().kind != "END":
                name = self.ident("WHERE keyword").lower()
                if name not in allowed:
                    raise WqlError(f"{name!r} is not supported in {kind} OF (query {self.text!r})")
                if name in ("classdefsonly", "keysonly"):
                    raise WqlError(f"{name} is not supported by the simulator")
                op = self.take()
                if op.kind != "OP" or op.value != "=":
                    raise WqlError(f"'=' expected after {name} in {self.text!r}")
                opts[name] = self.ident(f"value of {name}")
        self.end()
        if kind == "ASSOCIATORS":
            return AssociatorsQuery(
                path, opts.get("assocclass"), opts.get("resultclass"), opts.get("role"),
                opts.get("resultrole"), self.text,
            )
        return ReferencesQuery(path, opts.get("resultclass"), opts.get("role"), self.text)

    # expressions

    def or_expr(self) -> Expr:
        left = self.and_expr()
        while self.is_kw("OR"):
            self.take()
            left = Or(left, self.and_expr())
        return left

    def and_expr(self) -> Expr:
        left = self.not_expr()
        while self.is_kw("AND"):
            self.take()
            left = And(left, self.not_expr())
        return left

    def not_expr(self) -> Expr:
        if self.is_kw("NOT"):
            self.take()
            return Not(self.not_expr())
        return self.primary()

    def literal(self) -> Tuple[bool, Any]:
        """(is_literal, value): a literal, or (False, property name)."""
        t = self.take()
        if t.kind in ("STR", "NUM"):
            return True, t.value
        if t.kind == "KW" and t.value in ("TRUE", "FALSE"):
            return True, t.value == "TRUE"
        if t.kind == "KW" and t.value == "NULL":
            return True, None
        if t.kind == "IDENT":
            return False, t.value
        raise WqlError(f"property or value expected at position {t.pos} of {self.text!r}")

    def primary(self) -> Expr:
        if self.peek().kind == "LP":
            self.take()
            e = self.or_expr()
            if self.take().kind != "RP":
                raise WqlError(f"')' expected in {self.text!r}")
            return e
        left_lit, left = self.literal()
        if self.is_kw("IS"):
            if left_lit:
                raise WqlError(f"IS needs a property on its left in {self.text!r}")
            self.take()
            negate = False
            if self.is_kw("NOT"):
                self.take()
                negate = True
            self.expect_kw("NULL")
            return IsNull(left, negate)
        if self.is_kw("ISA"):
            if left_lit:
                raise WqlError(f"ISA needs a property on its left in {self.text!r}")
            self.take()
            t = self.take()
            if t.kind not in ("STR", "IDENT"):
                raise WqlError(f"class name expected after ISA in {self.text!r}")
            return Isa(left, str(t.value))
        negate = False
        if self.is_kw("NOT"):
            self.take()
            negate = True
            if not self.is_kw("LIKE"):
                raise WqlError(f"LIKE expected after NOT in {self.text!r}")
        if self.is_kw("LIKE"):
            if left_lit:
                raise WqlError(f"LIKE needs a property on its left in {self.text!r}")
            self.take()
            t = self.take()
            if t.kind != "STR":
                raise WqlError(f"string pattern expected after LIKE in {self.text!r}")
            return Like(left, str(t.value), negate)
        op = self.take()
        if op.kind != "OP":
            raise WqlError(f"comparison operator expected at position {op.pos} of {self.text!r}")
        right_lit, right = self.literal()
        if left_lit == right_lit:
            raise WqlError(f"a comparison needs one property and one constant in {self.text!r}")
        if left_lit:
            flipped = {"<": ">", ">": "<", "<=": ">=", ">=": "<="}.get(op.value, op.value)
            return Compare(right, flipped, left)
        return Compare(left, op.value, right)


def parse_wql(text: str) -> Query:
    """Parse a WQL statement; raises :class:`WqlError` with the reason."""
    if not text or not text.strip():
        raise WqlError("empty query")
    return _Parser(text.strip()).statement()


# ---------------------------------------------------------------------------
# Evaluation


def like_regex(pattern: str) -> re.Pattern[str]:
    """Compile a WQL LIKE pattern (``%``, ``_``, ``[set]``, ``[^set]``) case-insensitively."""
    out: List[str] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "%":
            out.append(".*")
        elif c == "_":
            out.append(".")
        elif c == "[":
            j = pattern.find("]", i + 1)
            if j < 0:
                raise WqlError(f"LIKE pattern {pattern!r}: '[' without ']'")
            body = pattern[i + 1:j]
            neg = body.startswith("^")
            if neg:
                body = body[1:]
            escaped = "".join("\\" + ch if ch in "\\]^" else ch for ch in body)
            out.append(f"[{'^' if neg else ''}{escaped}]")
            i = j
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out) + r"\Z", re.IGNORECASE | re.DOTALL)


IsA = Callable[[str, str], bool]  # (class_name, base) -> bool

_SYSTEM_PROPS = ("__CLASS",)


def check_properties(expr: Expr | None, props: Sequence[str] | None, cdef: ClassDef) -> None:
    """Raise :class:`WqlError` when the query names a property the class lacks (WMI does too)."""
    names: List[str] = list(props or ())
    stack: List[Expr] = [expr] if expr is not None else []
    while stack:
        e = stack.pop()
        if isinstance(e, (And, Or)):
            stack.extend((e.left, e.right))
        elif isinstance(e, Not):
            stack.append(e.expr)
        else:
            names.append(e.prop)
    for name in names:
        if name.upper() in _SYSTEM_PROPS:
            continue
        pdef = cdef.prop(name)
        if pdef is None:
            raise WqlError(f"class {cdef.name} has no property {name!r}")


def evaluate(expr: Expr | None, inst: CimInstance, cdef: ClassDef | None, is_a: IsA) -> bool:
    """Whether ``inst`` satisfies ``expr`` (None = no WHERE clause)."""
    if expr is None:
        return True
    if isinstance(expr, And):
        return evaluate(expr.left, inst, cdef, is_a) and evaluate(expr.right, inst, cdef, is_a)
    if isinstance(expr, Or):
        return evaluate(expr.left, inst, cdef, is_a) or evaluate(expr.right, inst, cdef, is_a)
    if isinstance(expr, Not):
        return not evaluate(expr.expr, inst, cdef, is_a)
    value = _prop_value(inst, expr.prop)
    ptype = _prop_type(cdef, expr.prop)
    if isinstance(value, list) or (cdef is not None and _is_array(cdef, expr.prop)):
        raise WqlError(f"array property {expr.prop} cannot be used in a WHERE clause")
    if isinstance(expr, IsNull):
        return (value is None) != expr.negate
    if isinstance(expr, Isa):
        if isinstance(value, (CimInstance, CimRef)):
            return is_a(value.class_name, expr.class_name)
        return False
    if isinstance(expr, Like):
        if value is None:
            return False
        return bool(like_regex(expr.pattern).match(_as_text(value))) != expr.negate
    return _compare(value, expr.op, expr.value, ptype)


def _prop_value(inst: CimInstance, name: str) -> Any:
    if name.upper() == "__CLASS":
        return inst.class_name
    return inst.get(name)


def _prop_type(cdef: ClassDef | None, name: str) -> str | None:
    if cdef is None:
        return None
    p = cdef.prop(name)
    return p.cim_type if p else None


def _is_array(cdef: ClassDef, name: str) -> bool:
    p = cdef.prop(name)
    return bool(p and p.is_array)


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, CimRef):
        return _ref_text(value)
    if isinstance(value, (_dt.datetime, CimInterval)):
        from hvsim.cimxml import format_datetime

        return format_datetime(value)
    return str(value)


def _ref_text(ref: CimRef) -> str:
    ns = ref.namespace.replace("/", "\\")
    keys = ",".join(f'{k}="{v}"' for k, v in ref.keys)
    return f"{ns}:{ref.class_name}.{keys}"


def _compare(value: Any, op: str, const: Any, ptype: str | None) -> bool:
    if const is None:
        # WMI treats "= NULL" / "<> NULL" like IS [NOT] NULL.
        if op == "=":
            return value is None
        if op == "<>":
            return value is not None
        return False
    if value is None:
        return False
    left: Any
    right: Any
    if isinstance(value, bool):
        left = value
        right = _to_bool(const)
        if op not in ("=", "<>"):
            raise WqlError("booleans only compare with = or <>")
    elif isinstance(value, (int, float)):
        left = value
        right = _to_number(const)
    elif isinstance(value, CimRef):
        other = _ref_from_const(const, value.namespace)
        same = other is not None and value.same_as(other)
        if op == "=":
            return same
        if op == "<>":
            return not same
        raise WqlError("references only compare with = or <>")
    elif isinstance(value, _dt.datetime):
        left = value if value.tzinfo else value.replace(tzinfo=_dt.timezone.utc)
        right = _to_datetime(const)
    elif isinstance(value, CimInterval):
        left = value.seconds
        iv = _to_datetime(const)
        right = iv.seconds if isinstance(iv, CimInterval) else None
        if right is None:
            raise WqlError(f"{const!r} is not a CIM interval")
    else:
        left = str(value).lower()
        right = _as_text(const).lower() if not isinstance(const, str) else const.lower()
        if ptype in ("uint8", "uint16", "uint32", "uint64", "sint8", "sint16", "sint32", "sint64"):
            left, right = _to_number(value), _to_number(const)
    return _apply(op, left, right)


def _apply(op: str, left: Any, right: Any) -> bool:
    try:
        if op == "=":
            return bool(left == right)
        if op == "<>":
            return bool(left != right)
        if op == "<":
            return bool(left < right)
        if op == ">":
            return bool(left > right)
        if op == "<=":
            return bool(left <= right)
        if op == ">=":
            return bool(left >= right)
    except TypeError as exc:
        raise WqlError(f"cannot compare {left!r} with {right!r}") from exc
    raise WqlError(f"unknown operator {op}")


def _to_bool(const: Any) -> bool:
    if isinstance(const, bool):
        return const
    if isinstance(const, (int, float)):
        return const != 0
    s = str(const).strip().lower()
    if s in ("true", "1"):
        return True
    if s in ("false", "0"):
        return False
    raise WqlError(f"{const!r} is not a boolean")


def _to_number(const: Any) -> Union[int, float]:
    if isinstance(const, bool):
        return int(const)
    if isinstance(const, (int, float)):
        return const
    s = str(const).strip()
    try:
        return int(s, 0) if re.fullmatch(r"[+-]?(0[xX][0-9a-fA-F]+|\d+)", s) else float(s)
    except ValueError as exc:
        raise WqlError(f"{const!r} is not a number") from exc


def _to_datetime(const: Any) -> Any:
    from hvsim.cimxml import CimXmlError, parse_datetime

    try:
        return parse_datetime(str(const))
    except CimXmlError as exc:
        raise WqlError(f"{const!r} is not a CIM datetime") from exc


def _ref_from_const(const: Any, default_ns: str) -> CimRef | None:
    try:
        return parse_object_path(str(const)).to_ref(default_ns)
    except WqlError:
        return None


def project(inst: CimInstance, props: Sequence[str] | None, cdef: ClassDef | None) -> CimInstance:
    """The instance reduced to the selected properties (``SELECT a, b``), in schema order."""
    if props is None:
        return inst
    wanted = {p.lower() for p in props}
    out: dict[str, Any] = {}
    names = [p.name for p in cdef.properties] if cdef else list(inst.properties)
    for name in names:
        if name.lower() in wanted:
            out[name] = inst.get(name)
    return CimInstance(inst.class_name, inst.namespace, out, inst.path)
