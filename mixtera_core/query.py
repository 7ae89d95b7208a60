"""Queries: which samples a job trains on.

Two equivalent ways to say it::

    Query.for_job("run-1").select(("language", "==", "python"), ("license", "in", ["mit", "psf"]))
    Query.for_job("run-1").select(col("language") == "python", col("license").isin(["mit", "psf"]))

How conditions combine (precisely):

- The conditions passed to **one** ``select(...)`` call are ANDed.
- **Several** ``select`` calls are ORed: each call adds a set of samples, like ``UNION``.
  ``q.select(A, B).select(C)`` selects samples matching ``(A AND B) OR C``.
- A query with no ``select`` selects every sample.
- Expressions compose with ``&`` (and), ``|`` (or) and ``~`` (not) for anything else.

Semantics: a sample without a value for a property (NULL) never matches a comparison on
that property, ``!=`` included. For a list-valued property a comparison matches when
*any* element matches (``!=`` matches when no element equals the value). The pseudo
property ``dataset`` matches the dataset's registered name.

Everything compiles to parameterized SQL: values are bound, never interpolated.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import QueryError
from .holdout import PARTS, Holdout
from .properties import PropertyType, property_type
from .records import coerce

OPERATORS = ("==", "!=", "<", ">", "<=", ">=", "in")
DATASET_PSEUDO_PROPERTY = "dataset"


class Expr(ABC):
    """A boolean condition over sample properties."""

    @abstractmethod
    def to_sql(self, schema: Mapping[str, PropertyType]) -> tuple[str, list[Any]]:
        """SQL boolean expression over the ``samples`` table, and its bound parameters."""

    @abstractmethod
    def to_json(self) -> Any:
        """A JSON-able description (also the wire format for the server)."""

    def __and__(self, other: Expr) -> Expr:
        return And((self, _as_expr(other)))

    def __or__(self, other: Expr) -> Expr:
        return Or((self, _as_expr(other)))

    def __invert__(self) -> Expr:
        return Not(self)

    def __bool__(self) -> bool:
        raise TypeError("use & | ~ to combine conditions, not 'and', 'or', 'not'")


@dataclass(frozen=True, eq=False)
class Condition(Expr):
    prop: str
    op: str
    value: Any

    def __post_init__(self) -> None:
        if self.op not in OPERATORS:
            raise QueryError(f"unknown operator {self.op!r}; use one of {' '.join(OPERATORS)}")
        if self.op == "in" and (not isinstance(self.value, list | tuple | set | frozenset) or not self.value):
            raise QueryError(f"'in' needs a non-empty list of values for {self.prop!r}, got {self.value!r}")
        if self.op != "in" and isinstance(self.value, list | tuple | set):
            raise QueryError(f"operator {self.op!r} on {self.prop!r} takes one value; use 'in' for a list")
        if self.value is None:
            raise QueryError(f"comparing {self.prop!r} with None is not supported; NULL never matches")

    def _values(self, ptype: PropertyType) -> Any:
        elem = ptype.element
        try:
            if self.op == "in":
                return [coerce(v, elem) for v in sorted(self.value, key=repr)]
            return coerce(self.value, elem)
        except ValueError as e:
            raise QueryError(f"value for {self.prop!r} ({ptype.name}): {e}") from None

    def to_sql(self, schema: Mapping[str, PropertyType]) -> tuple[str, list[Any]]:
        if self.prop == DATASET_PSEUDO_PROPERTY and self.prop not in schema:
            inner = Condition("name", self.op, self.value).to_sql({"name": property_type("str")})
            return f"dataset_id IN (SELECT id FROM datasets WHERE {inner[0]})", inner[1]
        if self.prop not in schema:
            known = ", ".join(sorted([*schema, DATASET_PSEUDO_PROPERTY]))
            raise QueryError(f"unknown property {self.prop!r} (known: {known})")
        ptype = schema[self.prop]
        col = '"' + self.prop + '"'
        value = self._values(ptype)
        elem_sql = ptype.element.duckdb
        if not ptype.is_list:
            if self.op == "in":
                return f"list_contains(?::{elem_sql}[], {col})", [value]
            op = "=" if self.op == "==" else self.op
            return f"{col} {op} ?::{elem_sql}", [value]
        if self.op == "in":
            return f"list_has_any({col}, ?::{elem_sql}[])", [value]
        if self.op == "==":
            return f"list_contains({col}, ?::{elem_sql})", [value]
        if self.op == "!=":
            return f"({col} IS NOT NULL AND NOT list_contains({col}, ?::{elem_sql}))", [value]
        # "any element < v" is "the smallest element < v" (and > / >= use the largest): no lambdas needed
        agg = "list_min" if self.op in ("<", "<=") else "list_max"
        return f"{agg}({col}) {self.op} ?::{elem_sql}", [value]

    def to_json(self) -> Any:
        value = sorted(self.value, key=repr) if self.op == "in" else self.value
        return [self.prop, self.op, value]


@dataclass(frozen=True, eq=False)
class And(Expr):
    parts: tuple[Expr, ...]

    def to_sql(self, schema: Mapping[str, PropertyType]) -> tuple[str, list[Any]]:
        return _join(self.parts, " AND ", schema)

    def to_json(self) -> Any:
        return {"and": [p.to_json() for p in self.parts]}


@dataclass(frozen=True, eq=False)
class Or(Expr):
    parts: tuple[Expr, ...]

    def to_sql(self, schema: Mapping[str, PropertyType]) -> tuple[str, list[Any]]:
        return _join(self.parts, " OR ", schema)

    def to_json(self) -> Any:
        return {"or": [p.to_json() for p in self.parts]}


@dataclass(frozen=True, eq=False)
class Not(Expr):
    part: Expr

    def to_sql(self, schema: Mapping[str, PropertyType]) -> tuple[str, list[Any]]:
        sql, params = self.part.to_sql(schema)
        # coalesce: NOT of a NULL comparison must not resurrect samples lacking the property
        return f"NOT coalesce(({sql}), FALSE)", params

    def to_json(self) -> Any:
        return {"not": self.part.to_json()}


def _join(parts: tuple[Expr, ...], sep: str, schema: Mapping[str, PropertyType]) -> tuple[str, list[Any]]:
    if not parts:
        return ("TRUE" if sep == " AND " else "FALSE"), []
    sqls, params = [], []
    for p in parts:
        s, ps = p.to_sql(schema)
        sqls.append(f"({s})")
        params.extend(ps)
    return sep.join(sqls), params


class Column:
    """``col("language") == "python"``: builds conditions with Python operators."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __eq__(self, value: Any) -> Condition:  # type: ignore[override]
        return Condition(self.name, "==", value)

    def __ne__(self, value: Any) -> Condition:  # type: ignore[override]
        return Condition(self.name, "!=", value)

    def __lt__(self, value: Any) -> Condition:
        return Condition(self.name, "<", value)

    def __le__(self, value: Any) -> Condition:
        return Condition(self.name, "<=", value)

    def __gt__(self, value: Any) -> Condition:
        return Condition(self.name, ">", value)

    def __ge__(self, value: Any) -> Condition:
        return Condition(self.name, ">=", value)

    def isin(self, values: Any) -> Condition:
        return Condition(self.name, "in", list(values))

    __hash__ = None  # type: ignore[assignment]


def col(name: str) -> Column:
    return Column(name)


def _as_expr(item: Any) -> Expr:
    if isinstance(item, Expr):
        return item
    if isinstance(item, tuple | list) and len(item) == 3 and isinstance(item[0], str):
        value = item[2]
        if item[1] == "in" and isinstance(value, tuple | set | frozenset):
            value = list(value)
        return Condition(item[0], item[1], value)
    raise QueryError(
        f"a condition is a (property, operator, value) tuple or a col() expression, got {item!r}"
    )


def expr_from_json(data: Any) -> Expr:
    if isinstance(data, list):
        return _as_expr(tuple(data))
    if isinstance(data, dict) and len(data) == 1:
        ((key, val),) = data.items()
        if key == "not":
            return Not(expr_from_json(val))
        if key in ("and", "or"):
            parts = tuple(expr_from_json(v) for v in val)
            return And(parts) if key == "and" else Or(parts)
    raise QueryError(f"cannot read a condition from {data!r}")


class Query:
    """Which samples a job trains on. Build with :meth:`for_job` and :meth:`select`.

    ``split``: ``(Holdout, "train" | "eval")`` keeps only one part of a held-out split
    (:mod:`mixtera_core.holdout`); made by :meth:`Holdout.train` / :meth:`Holdout.eval`.
    """

    def __init__(
        self, job_id: str, selects: tuple[Expr, ...] = (), split: tuple[Holdout, str] | None = None
    ) -> None:
        if not isinstance(job_id, str) or not job_id:
            raise QueryError(f"job id must be a non-empty string, got {job_id!r}")
        if split is not None and (
            not isinstance(split, tuple) or len(split) != 2 or not isinstance(split[0], Holdout)
            or split[1] not in PARTS
        ):  # fmt: skip
            raise QueryError(f"split is (Holdout, one of {PARTS}), got {split!r}")
        self.job_id = job_id
        self.selects = selects
        self.split = split

    @classmethod
    def for_job(cls, job_id: str) -> Query:
        return cls(job_id)

    def select(self, *conditions: Any) -> Query:
        """Add one set of samples: the AND of ``conditions`` (no conditions: every sample).

        Returns a new query; sets added by several calls are ORed.
        """
        parts = tuple(_as_expr(c) for c in conditions)
        if not parts:
            expr: Expr = _All()
        else:
            expr = parts[0] if len(parts) == 1 else And(parts)
        return Query(self.job_id, (*self.selects, expr), self.split)

    def with_split(self, holdout: Holdout, part: str, job_id: str | None = None) -> Query:
        """This query restricted to ``part`` ("train" or "eval") of ``holdout``, optionally under another
        job id. See :meth:`Holdout.train` and :meth:`Holdout.eval`."""
        if self.split is not None:
            raise QueryError(f"query {self.job_id!r} is split already ({self.split[1]} of {self.split[0]})")
        return Query(job_id or self.job_id, self.selects, (holdout, part))

    @property
    def expr(self) -> Expr:
        if not self.selects:
            return _All()
        return self.selects[0] if len(self.selects) == 1 else Or(self.selects)

    def to_sql(self, schema: Mapping[str, PropertyType]) -> tuple[str, list[Any]]:
        """The WHERE clause (without the keyword) and its parameters."""
        sql, params = self.expr.to_sql(schema)
        if self.split is None:
            return sql, params
        holdout, part = self.split
        held, held_params = holdout.to_sql()
        return f"({sql}) AND {'' if part == 'eval' else 'NOT '}({held})", [*params, *held_params]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"job_id": self.job_id, "selects": [s.to_json() for s in self.selects]}
        if self.split is not None:  # absent otherwise: specs of unsplit queries stay as they were
            out["split"] = {**self.split[0].to_json(), "part": self.split[1]}
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Query:
        split = None
        if data.get("split") is not None:
            raw = data["split"]
            if not isinstance(raw, Mapping) or raw.get("part") not in PARTS:
                raise QueryError(f"a query's split is {{'fraction', 'seed', 'part': {PARTS}}}, got {raw!r}")
            split = (Holdout.from_json({k: v for k, v in raw.items() if k != "part"}), str(raw["part"]))
        return cls(data["job_id"], tuple(expr_from_json(s) for s in data.get("selects", [])), split)

    def __repr__(self) -> str:
        return f"Query({self.to_json()!r})"


class _All(Expr):
    def to_sql(self, schema: Mapping[str, PropertyType]) -> tuple[str, list[Any]]:
        return "TRUE", []

    def to_json(self) -> Any:
        return {"and": []}


def parse_condition(text: str) -> Condition:
    """Parse a CLI condition: ``language==python``, ``license in mit,psf``, ``year>=2020``."""
    stripped = text.strip()
    lowered = stripped.lower()
    if " in " in lowered:
        i = lowered.index(" in ")
        prop, values = stripped[:i].strip(), stripped[i + 4 :]
        return Condition(prop, "in", [v.strip() for v in values.split(",") if v.strip()])
    for op in ("==", "!=", "<=", ">=", "<", ">", "="):
        if op in stripped:
            prop, value = stripped.split(op, 1)
            return Condition(prop.strip(), "==" if op == "=" else op, value.strip())
    raise QueryError(f"cannot read condition {text!r}; write e.g. 'language==python' or 'license in mit,psf'")
