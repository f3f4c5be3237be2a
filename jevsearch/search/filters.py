"""Metadata filters (``where=``): parsing, validation and evaluation over a columnar field table. No I/O.

A filter is a JSON object in the convention other vector stores use::

    {"team": "finance"}                                   # plain value: equality ($eq)
    {"year": {"$gte": 2023, "$lt": 2025}}                 # several operators on one field: all must hold
    {"path": {"$glob": "reports/2024/**"}}                # glob over paths
    {"$or": [{"kind": "text"}, {"pages": {"$gt": 10}}]}   # $and / $or take lists of filters
    {"team": "finance", "status": {"$ne": "draft"}}       # several fields: all must hold

Operators: ``$eq $ne`` (a str, number or bool), ``$in $nin`` (a list of them), ``$gt $gte $lt $lte``
(a number, or a str compared as text: ISO dates such as ``"2024-05-01"`` order correctly), ``$glob``
(a str; ``*`` and ``?`` stay within one folder, ``**`` spans folders, ``[abc]`` a class; a pattern not
starting with ``/`` may match from any folder boundary, so ``"reports/2024/**"`` matches
``/home/me/reports/2024/q3.pdf``), ``$exists`` (bool), ``$and $or`` (lists of filters).

Semantics, for schemaless metadata:

* values of another type never match (``{"year": "2024"}`` does not match the number 2024; True is
  not 1); a document without the field matches no comparison;
* ``$ne``/``$nin`` are the negations of ``$eq``/``$in``: they match documents lacking the field;
* a list value matches when any element does (``{"tags": "q3"}`` matches ``["q3", "final"]``); ``$ne``
  then means "no element equals";
* null values and nested objects are not filterable (a filter on them never matches; ``$exists``
  ignores them). A field no document has is not an error: metadata has no schema.

Anything else (unknown operator, wrong operand type, NaN, a nested object in place of a value, a
list without ``$in``) raises InvalidInputError naming the field and the problem.

Evaluation is vectorised: a field table holds, per field, the values of every document in typed numpy
columns (see :class:`FieldTable`); :meth:`Filter.mask` returns a boolean mask over its rows.

>>> f = parse({"team": "finance", "year": {"$gte": 2023}})
>>> f
Filter(and(eq(team, 'finance'), gte(year, 2023)))
>>> parse({"year": {"$after": 2023}})
Traceback (most recent call last):
...
jevsearch.errors.InvalidInputError: where: field 'year': unknown operator '$after' (hint: use one of $eq, $exists, $glob, $gt, $gte, $in, $lt, $lte, $ne, $nin)
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from jevsearch.errors import InvalidInputError

COMPARE = ("$gt", "$gte", "$lt", "$lte")
FIELD_OPS = ("$eq", "$ne", "$in", "$nin", *COMPARE, "$glob", "$exists")
LOGIC_OPS = ("$and", "$or")
_CMP = {"$gt": np.greater, "$gte": np.greater_equal, "$lt": np.less, "$lte": np.less_equal}


# ----- what the evaluator reads ------------------------------------------------------------------
class FieldColumn(Protocol):
    """One field's values over a table's rows, exploded (entry i belongs to row ``*_rows[i]``; a row
    with a list value has several entries, a row without the field none). Typed parts:

    num_rows, num_vals   int64 / float64 arrays  (int and float values)
    str_rows, str_codes  int64 / int32 arrays    (codes index ``vocab``)
    vocab                np.ndarray of str       (append-only: a code never changes meaning)
    bool_rows, bool_vals int64 / bool arrays
    cache                dict                    (per-vocab results, e.g. a glob's matches, kept by
                                                 the evaluator; the owner clears it if vocab is rebuilt)
    """

    num_rows: np.ndarray
    num_vals: np.ndarray
    str_rows: np.ndarray
    str_codes: np.ndarray
    vocab: np.ndarray
    bool_rows: np.ndarray
    bool_vals: np.ndarray
    cache: dict

    def code(self, value: str) -> int | None:
        """The code of a string value, or None if no row has it."""


class FieldTable(Protocol):
    """Rows (documents) and their field columns."""

    rows: int

    def column(self, name: str) -> FieldColumn | None:
        """The column of ``name``, or None when no row has that field."""


# ----- the parsed filter -------------------------------------------------------------------------
@dataclass(frozen=True)
class _Cond:
    op: str  # one of FIELD_OPS
    field: str
    arg: object  # checked operand; a tuple for $in/$nin, a compiled regex for $glob

    def __repr__(self) -> str:
        arg = self.arg.pattern if isinstance(self.arg, re.Pattern) else self.arg
        return f"{self.op[1:]}({self.field}, {arg!r})"


@dataclass(frozen=True)
class _Logic:
    op: str  # "$and" | "$or"
    parts: tuple

    def __repr__(self) -> str:
        return f"{self.op[1:]}({', '.join(map(repr, self.parts))})"


class Filter:
    """A validated filter (build with :func:`parse`); :meth:`mask` evaluates it over a field table."""

    def __init__(self, node):
        self._node = node

    def __repr__(self) -> str:
        return f"Filter({self._node!r})"

    def fields(self) -> set[str]:
        """The field names the filter reads."""
        out, todo = set(), [self._node]
        while todo:
            node = todo.pop()
            if isinstance(node, _Cond):
                out.add(node.field)
            else:
                todo.extend(node.parts)
        return out

    def mask(self, table: FieldTable) -> np.ndarray:
        """Boolean mask [table.rows]: the rows the filter matches."""
        return _eval(self._node, table)


def parse(where) -> Filter | None:
    """Check a ``where`` object and compile it; None for no filter (None or ``{}``).

    >>> parse({"kind": {"$in": ["pdf", "image"]}, "$or": [{"year": 2024}, {"draft": True}]})
    Filter(and(in(kind, ('pdf', 'image')), or(eq(year, 2024), eq(draft, True))))
    >>> parse({"tags": ["a"]})
    Traceback (most recent call last):
    ...
    jevsearch.errors.InvalidInputError: where: field 'tags': a list is not a value (hint: {"tags": {"$in": [...]}} matches any of several values)
    """
    if where is None:
        return None
    if not isinstance(where, dict):
        raise InvalidInputError(f"where: expected a JSON object (dict), got {type(where).__name__} "
                                '(hint: e.g. {"team": "finance"})')
    if not where:
        return None
    return Filter(_parse_object(where, "where"))


def _parse_object(obj, where: str):
    if not isinstance(obj, dict) or not obj:
        raise InvalidInputError(f"{where}: expected a non-empty JSON object of conditions, got {obj!r}")
    parts = []
    for key, value in obj.items():
        if not isinstance(key, str) or not key:
            raise InvalidInputError(f"{where}: field name {key!r} is not a non-empty string")
        if key.startswith("$"):
            if key not in LOGIC_OPS:
                hint = "field operators go inside a field" if key in FIELD_OPS else f"use one of {', '.join(LOGIC_OPS)}"
                raise InvalidInputError(f"{where}: unknown operator {key!r} at the top level (hint: {hint}, "
                                        'e.g. {"year": {"$gte": 2023}})')
            if not isinstance(value, list) or not value:
                raise InvalidInputError(f"{where}: {key} takes a non-empty list of filters, got {value!r}")
            parts.append(_Logic(key, tuple(_parse_object(v, f"{where}.{key}[{i}]") for i, v in enumerate(value))))
        else:
            parts.append(_parse_field(key, value, where))
    return parts[0] if len(parts) == 1 else _Logic("$and", tuple(parts))


def _parse_field(name: str, spec, where: str):
    what = f"{where}: field {name!r}"
    if not isinstance(spec, dict):
        hint = f'{{"{name}": {{"$in": [...]}}}} matches any of several values'
        return _Cond("$eq", name, _scalar(spec, what, list_hint=hint))
    if not spec:
        raise InvalidInputError(f"{what}: empty operator object (hint: e.g. {{\"$eq\": value}})")
    conds = []
    for op, arg in spec.items():
        if not isinstance(op, str) or not op.startswith("$"):
            raise InvalidInputError(f"{what}: {op!r} is not an operator; nested fields are not filterable "
                                    f"(hint: use one of {', '.join(sorted(FIELD_OPS))})")
        if op not in FIELD_OPS:
            raise InvalidInputError(f"{what}: unknown operator {op!r} (hint: use one of "
                                    f"{', '.join(sorted(FIELD_OPS))})")
        conds.append(_Cond(op, name, _operand(op, arg, f"{what}: {op}")))
    return conds[0] if len(conds) == 1 else _Logic("$and", tuple(conds))


def _operand(op: str, arg, what: str):
    if op in ("$eq", "$ne"):
        return _scalar(arg, what)
    if op in ("$in", "$nin"):
        if not isinstance(arg, (list, tuple)):
            raise InvalidInputError(f"{what}: expected a list of values, got {type(arg).__name__} "
                                    f"(hint: {op} [\"a\", \"b\"])")
        return tuple(_scalar(a, f"{what}[{i}]") for i, a in enumerate(arg))
    if op in COMPARE:
        if isinstance(arg, bool) or not isinstance(arg, (int, float, str)):
            raise InvalidInputError(f"{what}: expected a number or a string, got {type(arg).__name__} {arg!r}")
        return _finite(arg, what)
    if op == "$glob":
        if not isinstance(arg, str) or not arg:
            raise InvalidInputError(f"{what}: expected a non-empty pattern string, got {arg!r}")
        return glob_regex(arg)
    if not isinstance(arg, bool):  # $exists
        raise InvalidInputError(f"{what}: expected true or false, got {arg!r}")
    return arg


def _scalar(value, what: str, list_hint: str = "use $in/$nin for several values"):
    if value is None:
        raise InvalidInputError(f"{what}: null is not a filterable value (hint: {{\"$exists\": false}} matches "
                                "documents without the field)")
    if isinstance(value, (list, tuple)):
        raise InvalidInputError(f"{what}: a list is not a value (hint: {list_hint})")
    if isinstance(value, dict):
        raise InvalidInputError(f"{what}: an object is not a value; nested fields are not filterable")
    if not isinstance(value, (str, bool, int, float)):
        raise InvalidInputError(f"{what}: {type(value).__name__} is not a filterable type "
                                "(hint: a string, number or boolean)")
    return _finite(value, what)


def _finite(value, what: str):
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidInputError(f"{what}: {value} is not a finite number")
    return value


def glob_regex(pattern: str) -> re.Pattern:
    """Compile a path glob: ``*`` / ``?`` within one folder, ``**`` across folders, ``[...]`` a class.
    A pattern not starting with ``/`` may match from any folder boundary.

    >>> bool(glob_regex("reports/2024/**").match("/home/me/reports/2024/q3/a.pdf"))
    True
    >>> [bool(glob_regex("*.md").match(p)) for p in ("/n/a.md", "/n/a.md.bak", "b.md")]
    [True, False, True]
    >>> bool(glob_regex("/data/*.pdf").match("/data/x/y.pdf")), bool(glob_regex("/data/**.pdf").match("/data/x/y.pdf"))
    (False, True)
    """
    out, i, n = [], 0, len(pattern)
    while i < n:
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")  # zero or more whole folders
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[" and (close := pattern.find("]", i + 2 if pattern.startswith("[!", i) else i + 1)) != -1:
            body = pattern[i + 1:close]
            body = "^" + body[1:] if body.startswith("!") else body
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = close + 1
        else:
            out.append(re.escape(c))
            i += 1
    body = "".join(out)
    return re.compile(body + r"\Z" if pattern.startswith("/") else r"(?:.*/)?" + body + r"\Z", re.DOTALL)


# ----- evaluation --------------------------------------------------------------------------------
def _eval(node, table: FieldTable) -> np.ndarray:
    if isinstance(node, _Logic):
        masks = (_eval(p, table) for p in node.parts)
        out = next(masks)
        for m in masks:
            out = out & m if node.op == "$and" else out | m
        return out
    negate = node.op in ("$ne", "$nin") or (node.op == "$exists" and not node.arg)
    op = {"$ne": "$eq", "$nin": "$in"}.get(node.op, node.op)
    col = table.column(node.field)
    mask = np.zeros(table.rows, dtype=bool)
    if col is not None:
        for rows in _matching_rows(op, node.arg, col):
            mask[rows] = True
    return ~mask if negate else mask


def _matching_rows(op: str, arg, col: FieldColumn):
    """Row arrays (possibly repeated rows) where a value of ``col`` satisfies ``op arg``."""
    if op == "$exists":
        yield from (col.num_rows, col.str_rows, col.bool_rows)
    elif op == "$eq":
        yield from _equal(col, (arg,))
    elif op == "$in":
        yield from _equal(col, arg)
    elif op in COMPARE:
        if isinstance(arg, str):
            hit = _CMP[op](col.vocab, arg) if len(col.vocab) else np.zeros(0, bool)
            yield col.str_rows[hit[col.str_codes]]
        else:
            yield col.num_rows[_CMP[op](col.num_vals, arg)]
    elif op == "$glob":
        yield col.str_rows[_glob_vocab(col, arg)[col.str_codes]]


def _equal(col: FieldColumn, values) -> list[np.ndarray]:
    out = []
    strs = [c for v in values if isinstance(v, str) and (c := col.code(v)) is not None]
    if strs:
        out.append(col.str_rows[np.isin(col.str_codes, strs)])
    bools = {v for v in values if isinstance(v, bool)}
    if bools and len(col.bool_vals):
        out.append(col.bool_rows[np.isin(col.bool_vals, list(bools))])
    nums = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if nums and len(col.num_vals):
        out.append(col.num_rows[np.isin(col.num_vals, nums)])
    return out


def _glob_vocab(col: FieldColumn, rx: re.Pattern) -> np.ndarray:
    """Which vocabulary strings ``rx`` matches, extended incrementally as the vocabulary grows: paths
    are as many as documents, and a regex per path per query would cost time in proportion to them."""
    key = ("$glob", rx.pattern)
    done = col.cache.get(key, np.zeros(0, dtype=bool))
    if len(done) < len(col.vocab):
        more = np.fromiter((rx.match(s) is not None for s in col.vocab[len(done):].tolist()), dtype=bool,
                           count=len(col.vocab) - len(done))
        done = np.concatenate([done, more])
        if len(col.cache) > 256:  # a long-running process with ever new patterns: start over
            col.cache.clear()
        col.cache[key] = done
    return done
