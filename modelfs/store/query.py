"""Where-clauses and order-bys over model versions' records, for `modelfs select`.

A record maps a field name to an int, float or str: a version's metrics plus the
built-in fields the caller adds (version, time, size, path, content_hash). Both
languages are parsed by hand (a tokenizer and a recursive descent); nothing is
ever evaluated as Python.

Where-clause grammar (whitespace is free; keywords are lower-case only):

    expr    := conj ('or' conj)*
    conj    := neg ('and' neg)*
    neg     := 'not' neg | atom
    atom    := '(' expr ')' | 'has' '(' field ')'
             | field op literal | field ['not'] 'in' '(' literal (',' literal)* [','] ')'
    op      := '==' | '=' | '!=' | '<' | '<=' | '>' | '>='      ('=' means '==')
    field   := NAME | `any text but a backquote`
    NAME    := [A-Za-z_][A-Za-z0-9_.-]*, except the keywords and, or, not, in, has
    literal := number | string
    number  := [+-] (digits ['.' [digits]] | '.' digits) [('e'|'E') [+-] digits]
               ASCII digits; an int unless it has a '.' or an exponent; no inf or nan,
               nothing out of float range, and no letter, digit, '_', '.', '+' or '-'
               right after it (so 1e, 1.2.3, 0x10 and 1_000 are errors)
    string  := '...' or "...", with the escapes \\ \' \" \n \t and no others

A clause has at most 4096 characters and 64 levels of nesting ('(' and 'not').

Semantics are three-valued, like SQL's NULL: a comparison is UNKNOWN when the
field is missing (absent or None), when its value is NaN or not an int, float or
str, or when it compares a number with a string. Numbers compare numerically (int with float), strings by
code point. 'and', 'or' and 'not' follow Kleene logic (False and UNKNOWN is False,
True or UNKNOWN is True, not UNKNOWN is UNKNOWN). `f in (a, b)` means
`f == a or f == b`, and `f not in (...)` is its negation. `has(f)` is True when
the record holds f with a value other than None, else False; never UNKNOWN. A
record matches when the clause is True.

Order-by: comma-separated keys, each a field (as above) optionally prefixed by
'-' (descending) or '+' (ascending, the default); no key may be empty or repeat.
For each key, records holding a number come first, then those holding a string,
then those missing the field (absent, None, NaN or another type), whatever the
direction; the direction orders values within the numbers and within the
strings. Ties fall to the next key, then keep their input order.

Errors are QueryError (EINVAL), whose message names the problem and shows the
text with a caret under it; `column` is 0-based, the message's column 1-based.

Caveats:
- The caret counts characters, so it sits left of the problem after wide
  (East Asian) characters in the text.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from operator import eq, ge, gt, itemgetter, le, lt, ne
from typing import Any, NamedTuple, TypeVar

from ..errors import InvalidArgumentError

MAX_TEXT = 4096
MAX_DEPTH = 64
KEYWORDS = frozenset({"and", "or", "not", "in", "has"})

Value = int | float | str
Record = Mapping[str, Value]
Truth = bool | None  # None is UNKNOWN
Test = Callable[[Record], Truth]
R = TypeVar("R")

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")
# [0-9], not \d: \d would take other scripts' digits, which int() then accepts.
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_NUMBER_TAIL = re.compile(r"[A-Za-z0-9_.+\-]+")
_OPERATORS = ("==", "!=", "<=", ">=", "<", ">", "=")  # longest first
_ESCAPES = {"\\": "\\", "'": "'", '"': '"', "n": "\n", "t": "\t"}
_COMPARE = {"==": eq, "=": eq, "!=": ne, "<": lt, "<=": le, ">": gt, ">=": ge}
_EXCERPT = 72  # characters of the text shown above the caret


class QueryError(InvalidArgumentError):
    """A where-clause or order-by that does not parse, with a caret under the problem."""

    def __init__(self, what: str, text: str, column: int, reason: str) -> None:
        super().__init__(what, text, column, reason)
        self.what = what  # "where-clause" or "order-by"
        self.text = text
        self.column = column
        self.reason = reason

    def __str__(self) -> str:
        # Non-printing characters (tabs, newlines) become spaces so the caret lines up;
        # a long text is cut to a window around the column.
        line = "".join(c if c.isprintable() else " " for c in self.text)
        start = max(0, min(self.column - _EXCERPT // 2, len(line) - _EXCERPT))
        before = "..." if start else ""
        after = "..." if start + _EXCERPT < len(line) else ""
        shown = f"{before}{line[start : start + _EXCERPT]}{after}"
        caret = " " * (len(before) + self.column - start) + "^"
        return f"bad {self.what}: {self.reason} at column {self.column + 1}\n  {shown}\n  {caret}"


class _Token(NamedTuple):
    kind: str  # name, keyword, number, string, op, "(", ")", ",", end
    value: Any
    column: int
    end: int
    source: str


def _describe(token: _Token) -> str:
    if token.kind == "end":
        return "the end of the text"
    if token.kind == "name":
        return f"name {token.source!r}"
    if token.kind in ("number", "string"):
        return f"{token.kind} {token.source}"
    return repr(token.source)


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos].isspace():
        pos += 1
    return pos


def _scan(text: str, pos: int, what: str) -> _Token:
    """The token that starts at or after pos (after whitespace)."""
    pos = _skip_space(text, pos)

    def token(kind: str, value: Any, end: int) -> _Token:
        return _Token(kind, value, pos, end, text[pos:end])

    def fail(reason: str, column: int = pos) -> QueryError:
        return QueryError(what, text, column, reason)

    if pos == len(text):
        return token("end", None, pos)
    c = text[pos]
    if c in "(),":
        return token(c, c, pos + 1)
    for op in _OPERATORS:
        if text.startswith(op, pos):
            return token("op", op, pos + len(op))
    if c == "`":
        end = text.find("`", pos + 1)
        if end < 0:
            raise fail("unterminated `name`")
        if end == pos + 1:
            raise fail("empty `name`")
        return token("name", text[pos + 1 : end], end + 1)
    if c in "'\"":
        chars, i = [], pos + 1
        while True:
            if i >= len(text) or text[i:] == "\\":
                raise fail("unterminated string")
            if text[i] == c:
                return token("string", "".join(chars), i + 1)
            if text[i] == "\\":
                escape = text[i + 1]
                if escape not in _ESCAPES:
                    raise fail(f"unknown escape '\\{escape}' (only \\\\ \\' \\\" \\n \\t)", i)
                chars.append(_ESCAPES[escape])
                i += 2
            else:
                chars.append(text[i])
                i += 1
    if match := _NAME.match(text, pos):
        kind = "keyword" if match.group() in KEYWORDS else "name"
        return token(kind, match.group(), match.end())
    if match := _NUMBER.match(text, pos):
        if tail := _NUMBER_TAIL.match(text, match.end()):
            raise fail(f"malformed number {text[pos : tail.end()]!r}")
        source = match.group()
        if not any(ch in source for ch in ".eE"):
            return token("number", int(source), match.end())
        value = float(source)
        if value in (float("inf"), float("-inf")):
            raise fail(f"number {source} is out of range")
        return token("number", value, match.end())
    raise fail(f"unexpected character {c!r}")


def _check_text(text: str, what: str) -> None:
    if len(text) > MAX_TEXT:
        raise QueryError(what, text, MAX_TEXT, f"longer than {MAX_TEXT} characters")
    if not text.strip():
        raise QueryError(what, text, 0, f"empty {what}")


def _is_number(value: object) -> bool:
    # value == value leaves out NaN (math.isnan overflows on huge ints).
    return isinstance(value, int | float) and value == value


def _comparison(field: str, op: str, literal: Value) -> Test:
    compare, want_string = _COMPARE[op], isinstance(literal, str)

    def test(record: Record) -> Truth:
        value = record.get(field)
        same_kind = isinstance(value, str) if want_string else _is_number(value)
        return compare(value, literal) if same_kind else None

    return test


def _kleene(tests: list[Test], decisive: bool) -> Test:
    """The Kleene 'or' (decisive=True) or 'and' (decisive=False) of tests."""

    def test(record: Record) -> Truth:
        result: Truth = not decisive
        for term in tests:
            truth = term(record)
            if truth is decisive:
                return decisive
            if truth is None:
                result = None
        return result

    return tests[0] if len(tests) == 1 else test


def _negate(term: Test) -> Test:
    def test(record: Record) -> Truth:
        truth = term(record)
        return None if truth is None else not truth

    return test


class Where:
    """A parsed where-clause; parse_where makes one."""

    __slots__ = ("text", "fields", "_test")

    def __init__(self, text: str, test: Test, fields: frozenset[str]) -> None:
        self.text = text
        self.fields = fields  # every field the clause mentions
        self._test = test

    def matches(self, record: Record) -> bool:
        """Whether the clause is True for record (False and UNKNOWN do not match)."""
        return self._test(record) is True

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"parse_where({self.text!r})"


class _WhereParser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.depth = 0
        self.fields: set[str] = set()
        self.previous: _Token | None = None
        self.token = _scan(text, 0, "where-clause")

    def fail(self, reason: str, column: int | None = None) -> QueryError:
        column = self.token.column if column is None else column
        return QueryError("where-clause", self.text, column, reason)

    def after(self) -> str:
        return f" after {_describe(self.previous)}" if self.previous else ""

    def advance(self) -> _Token:
        token = self.previous = self.token
        self.token = _scan(self.text, token.end, "where-clause")
        return token

    def at(self, kind: str, value: str | None = None) -> bool:
        return self.token.kind == kind and (value is None or self.token.value == value)

    def expect(self, kind: str, reason: str) -> _Token:
        if not self.at(kind):
            raise self.fail(reason)
        return self.advance()

    def enter(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.fail(f"nesting deeper than {MAX_DEPTH} levels")

    def parse(self) -> Test:
        test = self.expression()
        if self.at(")"):
            raise self.fail("unmatched ')'")
        if not self.at("end"):
            reason = f"expected 'and', 'or' or the end, found {_describe(self.token)}"
            if self.at("name") and self.token.value.lower() in KEYWORDS:
                reason += " (keywords are lower-case)"
            raise self.fail(reason)
        return test

    def expression(self) -> Test:
        terms = [self.conjunction()]
        while self.at("keyword", "or"):
            self.advance()
            terms.append(self.conjunction())
        return _kleene(terms, True)

    def conjunction(self) -> Test:
        terms = [self.negation()]
        while self.at("keyword", "and"):
            self.advance()
            terms.append(self.negation())
        return _kleene(terms, False)

    def negation(self) -> Test:
        if not self.at("keyword", "not"):
            return self.atom()
        self.enter()
        self.advance()
        test = _negate(self.negation())
        self.depth -= 1
        return test

    def atom(self) -> Test:
        if self.at("("):
            self.enter()
            opening = self.advance()
            test = self.expression()
            if self.at("end"):
                raise self.fail("'(' is never closed", opening.column)
            self.expect(")", f"expected 'and', 'or' or ')', found {_describe(self.token)}")
            self.depth -= 1
            return test
        if self.at("keyword", "has"):
            self.advance()
            self.expect("(", "expected '(' after 'has'")
            field = self.field()
            self.expect(")", "expected ')' after the field name")
            return lambda record: record.get(field) is not None
        if self.at("number") or self.at("string"):
            raise self.fail(f"expected a field name, found {_describe(self.token)}")
        if not self.at("name"):
            raise self.fail(f"expected a condition{self.after()}")
        field = self.field()
        if self.at("op"):
            op = self.advance().value
            return _comparison(field, op, self.literal())
        negated = self.at("keyword", "not")
        if negated:
            self.advance()
            if not self.at("keyword", "in"):
                raise self.fail("expected 'in' after 'not'")
        if not self.at("keyword", "in"):
            raise self.fail(
                f"expected an operator (==, !=, <, <=, >, >=, in) after field {field!r}"
            )
        self.advance()
        test = _kleene([_comparison(field, "==", value) for value in self.values()], True)
        return _negate(test) if negated else test

    def values(self) -> list[Value]:
        """The parenthesised list after 'in': one value or more, a trailing ',' allowed."""
        self.expect("(", "expected '(' after 'in'")
        if self.at(")"):
            raise self.fail("empty list after 'in'")
        values = [self.literal()]
        while self.at(","):
            self.advance()
            if self.at(")"):  # a trailing ','
                break
            values.append(self.literal())
        if self.at("end"):
            raise self.fail("the list after 'in' is never closed")
        self.expect(")", f"expected ',' or ')' in the list, found {_describe(self.token)}")
        return values

    def field(self) -> str:
        if not self.at("name"):
            raise self.fail(f"expected a field name{self.after()}")
        field = self.advance().value
        self.fields.add(field)
        return field

    def literal(self) -> Value:
        if self.at("number") or self.at("string"):
            return self.advance().value
        reason = f"expected a value{self.after()}"
        if self.at("name") and self.token.value.lower() in ("inf", "infinity", "nan"):
            reason = f"{self.token.value} is not a number; only finite numbers are allowed"
        elif self.at("name"):
            reason += " (a string needs quotes)"
        raise self.fail(reason)


def parse_where(text: str) -> Where:
    """The where-clause in text; QueryError if it does not parse."""
    _check_text(text, "where-clause")
    parser = _WhereParser(text)
    test = parser.parse()
    return Where(text, test, frozenset(parser.fields))


class Order:
    """A parsed order-by; parse_order makes one."""

    __slots__ = ("text", "keys", "fields")

    def __init__(self, text: str, keys: tuple[tuple[str, bool], ...]) -> None:
        self.text = text
        self.keys = keys  # (field, descending), most significant first
        self.fields = frozenset(field for field, _ in keys)

    def sort(self, records: Iterable[R], key: Callable[[R], Record] = lambda item: item) -> list[R]:
        """The items in order; key maps an item to its record. Stable."""
        items = [(key(item), item) for item in records]
        # One stable pass per key, least significant first.
        for field, descending in reversed(self.keys):
            groups: tuple[list[Any], ...] = ([], [], [])  # numbers, strings, the rest
            for pair in items:
                value = pair[0].get(field)
                group = 1 if isinstance(value, str) else 0 if _is_number(value) else 2
                groups[group].append((value, pair))
            for group in groups[:2]:
                # reverse=True keeps equal items in their order: the sort stays stable.
                group.sort(key=itemgetter(0), reverse=descending)
            items = [pair for group in groups for _, pair in group]
        return [item for _, item in items]

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"parse_order({self.text!r})"


def parse_order(text: str) -> Order:
    """The order-by in text ("-accuracy, +time"); QueryError if it does not parse."""
    _check_text(text, "order-by")
    keys: list[tuple[str, bool]] = []
    pos, comma = 0, -1

    def fail(reason: str, column: int) -> QueryError:
        return QueryError("order-by", text, column, reason)

    while True:
        pos = _skip_space(text, pos)
        sign = text[pos] if text[pos : pos + 1] in ("-", "+") else ""
        token = _scan(text, pos + len(sign), "order-by")
        if token.kind == "keyword":
            raise fail(f"{token.value!r} is a keyword; `{token.value}` names a field", token.column)
        if token.kind != "name":
            if sign:
                reason = f"expected a field name after {sign!r}"
            elif token.kind == "end" and keys:
                raise fail("trailing ','", comma)
            elif token.kind in (",", "end"):
                reason = "empty key"
            else:
                reason = f"expected a field name, found {_describe(token)}"
            raise fail(reason, token.column)
        if any(field == token.value for field, _ in keys):
            raise fail(f"duplicate key {token.value!r}", token.column)
        keys.append((token.value, sign == "-"))
        token = _scan(text, token.end, "order-by")
        if token.kind == "end":
            return Order(text, tuple(keys))
        if token.kind != ",":
            reason = f"expected ',' between keys, found {_describe(token)}"
            if token.source.lower() in ("asc", "desc"):
                reason += " (write -field for descending)"
            raise fail(reason, token.column)
        pos, comma = token.end, token.column
