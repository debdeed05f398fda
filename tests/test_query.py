"""Where-clauses and order-bys for `modelfs select` (modelfs/store/query.py).

A clause means what the module docstring says: three-valued comparisons (a
missing field or a number against a string is UNKNOWN, never an exception),
Kleene 'and'/'or'/'not', and a record matches only when the clause is True.
Anything outside the grammar, Python included, is a QueryError that names the
problem and puts its caret under the right column; no input reaches eval or
blows the stack. Order-bys sort missing values last in either direction,
numbers before strings, and keep ties in input order.
"""

from __future__ import annotations

import errno
import math

import pytest

from modelfs.errors import InvalidArgumentError
from modelfs.store.query import (
    MAX_DEPTH,
    MAX_TEXT,
    QueryError,
    parse_order,
    parse_where,
)


def matches(clause: str, record: dict) -> bool:
    return parse_where(clause).matches(record)


def where_error(clause: str) -> QueryError:
    with pytest.raises(QueryError) as caught:
        parse_where(clause)
    return caught.value


def order_error(text: str) -> QueryError:
    with pytest.raises(QueryError) as caught:
        parse_order(text)
    return caught.value


def char_at_caret(error: QueryError) -> str:
    """The character of the message's excerpt that the caret points at ('' past the end)."""
    _, excerpt, caret = str(error).split("\n")
    column = caret.index("^")
    return excerpt[column : column + 1]


# -- comparisons -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("clause", "expected"),
    [
        ("a == 2", True),
        ("a == 3", False),
        ("a = 2", True),
        ("a = 3", False),
        ("a != 3", True),
        ("a != 2", False),
        ("a < 3", True),
        ("a < 2", False),
        ("a <= 2", True),
        ("a <= 1", False),
        ("a > 1", True),
        ("a > 2", False),
        ("a >= 2", True),
        ("a >= 3", False),
    ],
)
def test_every_operator_compares_numbers(clause: str, expected: bool) -> None:
    assert matches(clause, {"a": 2}) is expected


@pytest.mark.parametrize(
    ("clause", "expected"),
    [
        ("s == 'sst2'", True),
        ("s == 'SST2'", False),  # exact, case-sensitive
        ("s == 'sst'", False),
        ("s != 'mnli'", True),
        ("s < 'sst3'", True),
        ("s < 'sst2'", False),
        ("s <= 'sst2'", True),
        ("s > 'Zebra'", True),  # code point order: 'Z' < 's'
        ("s >= 'sst20'", False),
    ],
)
def test_every_operator_compares_strings_by_code_point(clause: str, expected: bool) -> None:
    assert matches(clause, {"s": "sst2"}) is expected


def test_ints_and_floats_compare_numerically() -> None:
    assert matches("a == 1", {"a": 1.0})
    assert matches("a == 1.0", {"a": 1})
    assert matches("a < 0.5", {"a": 0})
    assert matches("a > 2", {"a": 2.5})
    assert matches("a == 12345678901234567890", {"a": 12345678901234567890})


def test_the_clause_in_the_brief_selects_what_it_says() -> None:
    where = parse_where("accuracy > 0.9 and dataset == 'sst2'")
    assert where.matches({"accuracy": 0.95, "dataset": "sst2", "version": 3})
    assert not where.matches({"accuracy": 0.85, "dataset": "sst2"})
    assert not where.matches({"accuracy": 0.95, "dataset": "mnli"})


# -- precedence and parentheses ----------------------------------------------------


def test_and_binds_tighter_than_or() -> None:
    # a or (b and c), not (a or b) and c
    assert matches("a == 1 or b == 1 and c == 1", {"a": 1, "b": 0, "c": 0})
    assert not matches("a == 1 or b == 1 and c == 1", {"a": 0, "b": 1, "c": 0})
    assert matches("b == 1 and c == 1 or a == 1", {"a": 1, "b": 0, "c": 0})


def test_not_binds_tighter_than_and_and_or() -> None:
    # (not a == 1) or b == 1, not not (a == 1 or b == 1)
    assert matches("not a == 1 or b == 1", {"a": 1, "b": 1})
    assert not matches("not a == 1 or b == 1", {"a": 1, "b": 0})
    # (not a == 1) and b == 1, not not (a == 1 and b == 1)
    assert not matches("not a == 1 and b == 1", {"a": 0, "b": 0})
    assert matches("not a == 1 and b == 1", {"a": 0, "b": 1})


def test_parentheses_override_precedence() -> None:
    record = {"a": 1, "b": 0, "c": 0}
    assert matches("a == 1 or b == 1 and c == 1", record)
    assert not matches("(a == 1 or b == 1) and c == 1", record)
    assert not matches("not (a == 1 or b == 1)", record)
    assert matches("((((a == 1))))", record)


def test_not_of_not_is_the_original() -> None:
    assert matches("not not a == 1", {"a": 1})
    assert not matches("not not not a == 1", {"a": 1})


def test_whitespace_is_free() -> None:
    assert matches("(a==1)or(b=='x')", {"a": 0, "b": "x"})
    assert matches("  a\t==\n1  ", {"a": 1})
    assert matches("has(a)and a>=1", {"a": 1})


# -- in, not in, has ---------------------------------------------------------------


def test_in_matches_any_element_of_the_list() -> None:
    assert matches("d in ('sst2', 'mnli')", {"d": "mnli"})
    assert not matches("d in ('sst2', 'mnli')", {"d": "qqp"})
    assert matches("v in (1, 2.5, 3)", {"v": 2.5})
    assert matches("v in (3)", {"v": 3})
    assert matches("v in (1, 2,)", {"v": 2})  # a trailing comma is allowed


def test_not_in_is_the_negation_of_in() -> None:
    assert matches("d not in ('sst2', 'mnli')", {"d": "qqp"})
    assert not matches("d not in ('sst2', 'mnli')", {"d": "sst2"})
    assert matches("not d in ('sst2')", {"d": "qqp"})


def test_in_and_not_in_are_unknown_for_a_missing_field() -> None:
    assert not matches("d in ('sst2')", {})
    assert not matches("d not in ('sst2')", {})
    assert not matches("not d in ('sst2')", {})


def test_in_with_only_other_typed_elements_is_unknown() -> None:
    # As `v == 'a' or v == 'b'`: each comparison is UNKNOWN, so both in and not in fail.
    assert not matches("v in ('a', 'b')", {"v": 1})
    assert not matches("v not in ('a', 'b')", {"v": 1})
    assert matches("v in ('a', 1)", {"v": 1})


def test_has_is_true_or_false_never_unknown() -> None:
    assert matches("has(a)", {"a": 0})
    assert matches("has(a)", {"a": ""})
    assert not matches("has(a)", {"b": 1})
    assert matches("not has(a)", {"b": 1})
    assert not matches("not has(a)", {"a": 1})
    assert matches("not has(a) or a > 1", {})


def test_a_none_value_counts_as_missing() -> None:
    assert not matches("has(a)", {"a": None})
    assert not matches("a == 1", {"a": None})
    assert not matches("not a == 1", {"a": None})


# -- missing fields and mismatched types: UNKNOWN ----------------------------------


@pytest.mark.parametrize("op", ["==", "=", "!=", "<", "<=", ">", ">="])
def test_a_comparison_with_a_missing_field_is_unknown(op: str) -> None:
    assert not matches(f"x {op} 1", {"a": 1})
    assert not matches(f"not x {op} 1", {"a": 1})
    assert not matches(f"not (x {op} 'y')", {"a": 1})


@pytest.mark.parametrize("op", ["==", "=", "!=", "<", "<=", ">", ">="])
def test_a_number_against_a_string_is_unknown_either_way(op: str) -> None:
    assert not matches(f"d {op} 1", {"d": "sst2"})
    assert not matches(f"not d {op} 1", {"d": "sst2"})
    assert not matches(f"a {op} '1'", {"a": 1})
    assert not matches(f"not a {op} '1'", {"a": 1})


def test_nan_in_a_record_compares_unknown() -> None:
    nan = {"loss": math.nan}
    assert not matches("loss > 1", nan)
    assert not matches("not loss > 1", nan)
    assert not matches("loss != 1", nan)
    assert matches("has(loss)", nan)


def test_and_or_not_follow_kleene_logic() -> None:
    record = {"a": 1}  # x is missing: x > 1 is UNKNOWN
    assert matches("not (x > 1 and a == 0)", record)  # UNKNOWN and False = False
    assert not matches("not (x > 1 and a == 1)", record)  # UNKNOWN and True = UNKNOWN
    assert matches("x > 1 or a == 1", record)  # UNKNOWN or True = True
    assert not matches("x > 1 or a == 0", record)  # UNKNOWN or False = UNKNOWN ...
    assert not matches("not (x > 1 or a == 0)", record)  # ... and so is its negation
    assert not matches("not (x > 1 or a == 1)", record)
    assert not matches("not not x > 1", record)


# -- literals and names ------------------------------------------------------------


@pytest.mark.parametrize(
    ("literal", "value"),
    [
        ("10", 10),
        ("0", 0),
        ("-3", -3),
        ("+3", 3),
        ("-0.5", -0.5),
        (".5", 0.5),
        ("-.5", -0.5),
        ("1.", 1.0),
        ("1e-3", 0.001),
        ("1E3", 1000.0),
        ("2.5e+2", 250.0),
        ("007", 7),
    ],
)
def test_number_forms(literal: str, value: float) -> None:
    assert matches(f"a == {literal}", {"a": value})
    assert not matches(f"a != {literal}", {"a": value})


def test_a_signed_number_needs_no_space_after_the_operator() -> None:
    assert matches("a>-1", {"a": 0})
    assert matches("a in (-1,+2)", {"a": 2})


@pytest.mark.parametrize(
    ("literal", "value"),
    [
        (r"'it\'s'", "it's"),
        (r'"it\'s"', "it's"),
        ('"it\'s"', "it's"),
        (r'"say \"hi\""', 'say "hi"'),
        ("'say \"hi\"'", 'say "hi"'),
        (r"'a\\b'", "a\\b"),
        (r"'a\nb'", "a\nb"),
        (r"'a\tb'", "a\tb"),
        ("''", ""),
        ('"sst2"', "sst2"),
        ("'é ✓'", "é ✓"),
    ],
)
def test_strings_take_either_quote_and_the_five_escapes(literal: str, value: str) -> None:
    assert matches(f"s == {literal}", {"s": value})
    assert not matches(f"s == {literal}", {"s": value + "x"})


def test_dots_and_dashes_belong_to_names() -> None:
    assert matches("eval.f1 > 0.5", {"eval.f1": 0.7})
    assert matches("f1-score >= 0.8", {"f1-score": 0.8})
    assert not matches("f1-score >= 0.8", {"f1": 0.8})
    assert matches("_private == 1", {"_private": 1})


def test_backquoted_names_may_hold_anything_but_a_backquote() -> None:
    assert matches("`eval f1` > 0.5", {"eval f1": 0.7})
    assert matches("`and` == 1 and `not` == 2", {"and": 1, "not": 2})
    assert matches("has(`my metric`)", {"my metric": 1})
    assert matches("`naïve (x)` in (1)", {"naïve (x)": 1})


def test_keywords_are_lower_case_only() -> None:
    assert matches("AND == 1", {"AND": 1})
    assert matches("Not == 1", {"Not": 1})
    error = where_error("a == 1 AND b == 2")
    assert error.column == 7
    assert "lower-case" in error.reason


def test_fields_lists_every_field_mentioned() -> None:
    where = parse_where("a == 1 or has(b) and c in (1, 2) and not `d e` < 2 or f not in ('x')")
    assert where.fields == frozenset({"a", "b", "c", "d e", "f"})
    assert isinstance(where.fields, frozenset)


def test_str_is_the_original_text() -> None:
    text = "  accuracy>0.9  and  (dataset = 'sst2') "
    assert str(parse_where(text)) == text
    assert parse_where(text).text == text


# -- malformed clauses -------------------------------------------------------------


@pytest.mark.parametrize(
    ("clause", "column", "reason"),
    [
        ("accuracy >", 10, "expected a value after '>'"),
        ("accuracy > > 1", 11, "expected a value after '>'"),
        ("accuracy > and x == 1", 11, "expected a value after '>'"),
        ("(a == 1", 0, "'(' is never closed"),
        ("a == 1)", 6, "unmatched ')'"),
        ("a === 1", 4, "expected a value after '=='"),
        ("a == 'unterminated", 5, "unterminated string"),
        ('a == "x\\"', 5, "unterminated string"),
        ("a == 'x\\", 5, "unterminated string"),
        ("a == 1 and", 10, "expected a condition after 'and'"),
        ("a == 1 or not", 13, "expected a condition after 'not'"),
        ("and a == 1", 0, "expected a condition"),
        ("a == inf", 5, "inf is not a number"),
        ("a == nan", 5, "nan is not a number"),
        ("a == -inf", 5, "unexpected character '-'"),
        ("a in ()", 6, "empty list after 'in'"),
        ("a in (1,,2)", 8, "expected a value after ','"),
        ("a in (1 2)", 8, "expected ',' or ')'"),
        ("a in (1, 2", 10, "never closed"),
        ("a in 1", 5, "expected '(' after 'in'"),
        ("a not 1", 6, "expected 'in' after 'not'"),
        ("1 == a", 0, "expected a field name, found number 1"),
        ("'x' == a", 0, "expected a field name"),
        ("a == 1 b == 2", 7, "expected 'and', 'or' or the end, found name 'b'"),
        ("(a == 1 b == 2)", 8, "expected 'and', 'or' or ')'"),
        ("a == x", 5, "a string needs quotes"),
        ("a", 1, "expected an operator"),
        ("a 1", 2, "expected an operator"),
        ("a == 1 $", 7, "unexpected character '$'"),
        ("a ! 1", 2, "unexpected character '!'"),
        ("a == 1.2.3", 5, "malformed number '1.2.3'"),
        ("a == 1e", 5, "malformed number"),
        ("a == 0x10", 5, "malformed number"),
        ("a == 1_000", 5, "malformed number"),
        ("a == 1e400", 5, "out of range"),
        ("a == 'x\\q'", 7, "unknown escape '\\q'"),
        ("`a == 1", 0, "unterminated `name`"),
        ("`` == 1", 0, "empty `name`"),
        ("has a", 4, "expected '(' after 'has'"),
        ("has(1)", 4, "expected a field name after '('"),
        ("has(a", 5, "expected ')' after the field name"),
        ("has(a) == 1", 7, "expected 'and', 'or' or the end"),
        ("in == 1", 0, "expected a condition"),
        ("", 0, "empty where-clause"),
        ("   ", 0, "empty where-clause"),
        ("()", 1, "expected a condition after '('"),
    ],
)
def test_a_malformed_clause_names_the_problem_at_its_column(
    clause: str, column: int, reason: str
) -> None:
    error = where_error(clause)
    assert reason in error.reason
    assert error.column == column
    assert error.text == clause
    message = str(error)
    assert message.startswith(f"bad where-clause: {error.reason} at column {column + 1}\n")
    assert char_at_caret(error) == clause[column : column + 1]


def test_the_message_shows_the_text_with_a_caret() -> None:
    error = where_error("accuracy > and x == 1")
    assert str(error) == (
        "bad where-clause: expected a value after '>' at column 12\n"
        "  accuracy > and x == 1\n"
        "             ^"
    )


def test_a_query_error_is_an_invalid_argument() -> None:
    error = where_error("a ==")
    assert isinstance(error, InvalidArgumentError)
    assert isinstance(error, ValueError)
    assert error.errno == errno.EINVAL


def test_the_caret_lines_up_past_tabs_and_newlines() -> None:
    error = where_error("a ==\t\n\t$")
    assert error.column == 7
    assert char_at_caret(error) == "$"


def test_a_long_clause_shows_a_window_around_the_problem() -> None:
    clause = "a == 1 and " * 100 + "b == $ and " + "c == 1 and " * 100 + "d == 1"
    error = where_error(clause)
    assert error.column == clause.index("$")
    excerpt = str(error).split("\n")[1]
    assert len(excerpt) < 100
    assert char_at_caret(error) == "$"


def test_nesting_deeper_than_the_limit_is_refused_without_recursion_error() -> None:
    clause = "(" * 100 + "a == 1" + ")" * 100
    error = where_error(clause)
    assert error.column == MAX_DEPTH == 64
    assert "nesting" in error.reason
    error = where_error("not " * 100 + "a == 1")
    assert error.column == 4 * MAX_DEPTH
    assert "nesting" in error.reason


def test_nesting_up_to_the_limit_parses() -> None:
    assert matches("(" * MAX_DEPTH + "a == 1" + ")" * MAX_DEPTH, {"a": 1})
    assert matches("not " * MAX_DEPTH + "a == 1", {"a": 1})  # an even number of nots


def test_text_longer_than_the_limit_is_refused() -> None:
    assert MAX_TEXT == 4096
    exactly = "a == 1" + " " * (MAX_TEXT - len("a == 1"))
    assert matches(exactly, {"a": 1})
    clause = "a == 1 or " * 500 + "a == 1"
    error = where_error(clause)
    assert error.column == MAX_TEXT
    assert "longer than 4096 characters" in error.reason
    error = where_error(exactly + " ")
    assert error.column == MAX_TEXT


def test_long_flat_chains_are_not_nesting() -> None:
    # 500 terms: a parser or evaluator that recursed once per term would blow the stack.
    clause = "x==0 or " * 500 + "a==1"
    assert len(clause) <= MAX_TEXT
    assert matches(clause, {"a": 1})
    assert not matches(clause, {"a": 2})
    clause = "a>0 and " * 500 + "a<2"
    assert matches(clause, {"a": 1})
    assert not matches(clause, {"a": 2})


@pytest.mark.parametrize(
    "clause",
    [
        "__import__('os')",
        "__import__('os').system('true')",
        "a == __import__('os')",
        "open('/etc/passwd').read() == 'x'",
        "exec('x = 1')",
        "a == 1; import os",
        "a == 1 if b else c",
        "[x for x in a] == 1",
        "lambda: 1",
        "a == True",
        "a == None",
        "a.__class__ == a",
        "a == b",
        "a + 1 == 2",
        "a == 1 && b == 2",
        "a == 1 || b == 2",
        "a == f'{x}'",
    ],
)
def test_python_looking_input_is_only_a_parse_error(clause: str) -> None:
    error = where_error(clause)
    assert str(error).startswith("bad where-clause: ")


def test_a_dunder_name_is_just_a_field_name() -> None:
    where = parse_where("a.__class__ == 'int' or __builtins__ == 1")
    assert where.fields == frozenset({"a.__class__", "__builtins__"})
    assert not where.matches({"a": 1})
    assert where.matches({"__builtins__": 1})


# -- order-by: parsing -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "keys"),
    [
        ("-accuracy,time", (("accuracy", True), ("time", False))),
        ("-accuracy, +time", (("accuracy", True), ("time", False))),
        ("  accuracy  ", (("accuracy", False),)),
        ("- accuracy ,+ time", (("accuracy", True), ("time", False))),
        (
            "-`eval f1`,eval.f1,f1-score",
            (("eval f1", True), ("eval.f1", False), ("f1-score", False)),
        ),
        ("-`and`", (("and", True),)),
    ],
)
def test_order_keys(text: str, keys: tuple) -> None:
    order = parse_order(text)
    assert order.keys == keys
    assert order.fields == frozenset(field for field, _ in keys)
    assert str(order) == text


@pytest.mark.parametrize(
    ("text", "column", "reason"),
    [
        ("", 0, "empty order-by"),
        ("  ", 0, "empty order-by"),
        ("a,,b", 2, "empty key"),
        (",a", 0, "empty key"),
        ("a,", 1, "trailing ','"),
        ("a, b ,", 5, "trailing ','"),
        ("a,-a", 3, "duplicate key 'a'"),
        ("a,b,+b", 5, "duplicate key 'b'"),
        ("-", 1, "expected a field name after '-'"),
        ("a,+", 3, "expected a field name after '+'"),
        ("--a", 1, "unexpected character '-'"),
        ("a b", 2, "expected ',' between keys"),
        ("a desc", 2, "write -field for descending"),
        ("1", 0, "expected a field name, found number 1"),
        ("-1", 1, "expected a field name after '-'"),
        ("and", 0, "'and' is a keyword"),
        ("a;", 1, "unexpected character ';'"),
        ("`a", 0, "unterminated `name`"),
        ("a" * (MAX_TEXT + 1), MAX_TEXT, "longer than 4096 characters"),
    ],
)
def test_a_malformed_order_names_the_problem_at_its_column(
    text: str, column: int, reason: str
) -> None:
    error = order_error(text)
    assert reason in error.reason
    assert error.column == column
    assert str(error).startswith(f"bad order-by: {error.reason} at column {column + 1}\n")
    assert char_at_caret(error) == text[column : column + 1]


# -- order-by: sorting -------------------------------------------------------------


def names(records: list[dict]) -> list[str]:
    return [record["n"] for record in records]


def test_ascending_and_descending() -> None:
    records = [{"n": "b", "a": 2}, {"n": "c", "a": 3.5}, {"n": "a", "a": 1}]
    assert names(parse_order("a").sort(records)) == ["a", "b", "c"]
    assert names(parse_order("+a").sort(records)) == ["a", "b", "c"]
    assert names(parse_order("-a").sort(records)) == ["c", "b", "a"]


def test_strings_sort_by_code_point() -> None:
    records = [{"n": 1, "s": "b"}, {"n": 2, "s": "B"}, {"n": 3, "s": "a"}]
    assert names(parse_order("s").sort(records)) == [2, 3, 1]
    assert names(parse_order("-s").sort(records)) == [1, 3, 2]


def test_missing_values_sort_last_in_both_directions() -> None:
    records = [{"n": "x"}, {"n": "one", "a": 1}, {"n": "none", "a": None}, {"n": "two", "a": 2}]
    assert names(parse_order("a").sort(records)) == ["one", "two", "x", "none"]
    assert names(parse_order("-a").sort(records)) == ["two", "one", "x", "none"]


def test_nan_sorts_with_the_missing() -> None:
    records = [{"n": "nan", "a": math.nan}, {"n": "one", "a": 1}, {"n": "two", "a": 2}]
    assert names(parse_order("a").sort(records)) == ["one", "two", "nan"]
    assert names(parse_order("-a").sort(records)) == ["two", "one", "nan"]


def test_numbers_sort_before_strings_in_both_directions() -> None:
    records = [
        {"n": "s-b", "a": "b"},
        {"n": "2", "a": 2},
        {"n": "gone"},
        {"n": "s-a", "a": "a"},
        {"n": "1", "a": 1.0},
    ]
    assert names(parse_order("a").sort(records)) == ["1", "2", "s-a", "s-b", "gone"]
    assert names(parse_order("-a").sort(records)) == ["2", "1", "s-b", "s-a", "gone"]


def test_ties_keep_input_order_in_both_directions() -> None:
    records = [{"n": i, "a": i % 2} for i in range(8)] + [{"n": 8}, {"n": 9}]
    assert names(parse_order("a").sort(records)) == [0, 2, 4, 6, 1, 3, 5, 7, 8, 9]
    assert names(parse_order("-a").sort(records)) == [1, 3, 5, 7, 0, 2, 4, 6, 8, 9]
    assert names(parse_order("-a").sort(reversed(records))) == [7, 5, 3, 1, 6, 4, 2, 0, 9, 8]


def test_ties_fall_to_the_next_key() -> None:
    records = [
        {"n": "a", "acc": 0.9, "time": 3},
        {"n": "b", "acc": 0.95, "time": 5},
        {"n": "c", "acc": 0.9, "time": 1},
        {"n": "d", "acc": 0.95, "time": 2},
        {"n": "e", "acc": 0.9},
        {"n": "f", "time": 0},
    ]
    assert names(parse_order("-acc,time").sort(records)) == ["d", "b", "c", "a", "e", "f"]
    assert names(parse_order("acc,-time").sort(records)) == ["a", "c", "e", "b", "d", "f"]
    assert names(parse_order("time, -acc").sort(records)) == ["f", "c", "d", "a", "b", "e"]


def test_sort_takes_any_iterable_and_a_key_and_returns_the_items() -> None:
    items = [("v1", {"acc": 0.5}), ("v2", {"acc": 0.7}), ("v3", {})]
    result = parse_order("-acc").sort(iter(items), key=lambda item: item[1])
    assert result == [items[1], items[0], items[2]]
    assert parse_order("acc").sort([]) == []


def test_sort_does_not_change_its_input() -> None:
    records = [{"n": 2, "a": 2}, {"n": 1, "a": 1}]
    parse_order("a").sort(records)
    assert names(records) == [2, 1]
