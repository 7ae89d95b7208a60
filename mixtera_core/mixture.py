"""Mixtures: how much of each part of the query result a job trains on.

A :class:`MixtureKey` names a set of components by property values. ``"language=python"``
is one constraint; ``"language=python,c;license=mit"`` reads "language is python or c,
and license is mit" (``;`` separates properties, ``,`` separates alternative values).

**Matching** is symmetric: two keys match when, for every property *both* constrain,
their value sets intersect. The chunker index of a job is built over exactly the
properties the mixture's keys name, so each component carries a value for every key
property and "key matches component" is well defined. A component whose property holds
a list matches when any element is allowed; a null value matches nothing.

A mixture resolves, for a concrete query result (the components and their sizes), to
one weight per component. Inside a key that matches several components, its weight is
split in proportion to their sizes (their natural proportions).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import MixteraError
from .properties import validate_property_name

WEIGHT_TOLERANCE = 1e-6


class MixtureError(MixteraError, ValueError):
    """A mixture cannot be used: bad weights, overlapping keys, keys matching nothing."""


def _norm(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@dataclass(frozen=True)
class MixtureKey:
    """Constraints ``property -> allowed values`` (values compared as strings)."""

    constraints: tuple[tuple[str, frozenset[str]], ...]

    @classmethod
    def parse(cls, spec: str | Mapping[str, Any] | MixtureKey) -> MixtureKey:
        if isinstance(spec, MixtureKey):
            return spec
        items: dict[str, frozenset[str]] = {}
        if isinstance(spec, str):
            if not spec.strip():
                raise MixtureError("an empty mixture key; write e.g. 'language=python'")
            for part in spec.split(";"):
                if "=" not in part:
                    raise MixtureError(f"mixture key {spec!r}: {part!r} is not 'property=value[,value...]'")
                prop, values = part.split("=", 1)
                vals = [v.strip() for v in values.split(",")]
                if not prop.strip() or any(not v for v in vals):
                    raise MixtureError(f"mixture key {spec!r}: empty property or value in {part!r}")
                items[_check(prop.strip(), spec)] = frozenset(vals)
        elif isinstance(spec, Mapping):
            for prop, values in spec.items():
                given: Any = values if isinstance(values, list | tuple | set | frozenset) else [values]
                if not given:
                    raise MixtureError(f"mixture key {dict(spec)!r}: property {prop!r} has no values")
                items[_check(prop, spec)] = frozenset(_norm(v) for v in given)
        else:
            raise MixtureError(f"a mixture key is a string like 'language=python' or a dict, got {spec!r}")
        return cls(tuple(sorted(items.items())))

    @classmethod
    def of_component(cls, values: Mapping[str, Any]) -> MixtureKey:
        """The key of one index component (its exact values; a list value allows each element)."""
        items = []
        for prop, v in values.items():
            if v is None:
                vals: frozenset[str] = frozenset()
            elif isinstance(v, list):
                vals = frozenset(_norm(x) for x in v)
            else:
                vals = frozenset([_norm(v)])
            items.append((prop, vals))
        return cls(tuple(sorted(items)))

    @property
    def properties(self) -> list[str]:
        return [p for p, _ in self.constraints]

    def as_dict(self) -> dict[str, frozenset[str]]:
        return dict(self.constraints)

    def matches(self, other: MixtureKey) -> bool:
        mine, theirs = self.as_dict(), other.as_dict()
        return all(mine[p] & theirs[p] for p in mine.keys() & theirs.keys())

    def merge(self, other: MixtureKey) -> MixtureKey:
        """Both keys' constraints at once (used to flatten hierarchical mixtures)."""
        merged = self.as_dict()
        for prop, vals in other.constraints:
            merged[prop] = merged[prop] & vals if prop in merged else vals
            if not merged[prop]:
                raise MixtureError(f"keys {self} and {other} exclude each other on {prop!r}")
        return MixtureKey(tuple(sorted(merged.items())))

    def __str__(self) -> str:
        return ";".join(f"{p}={','.join(sorted(v))}" for p, v in self.constraints)


def _check(prop: str, spec: Any) -> str:
    try:
        return validate_property_name(prop)
    except MixteraError as e:
        raise MixtureError(f"mixture key {spec!r}: {e}") from None


def _check_weights(weights: Mapping[Any, float], what: str) -> None:
    for k, w in weights.items():
        if not isinstance(w, int | float) or isinstance(w, bool) or not math.isfinite(w) or w < 0:
            raise MixtureError(f"{what}: weight of {k} must be a finite number >= 0, got {w!r}")
    total = float(sum(weights.values()))
    if abs(total - 1.0) > WEIGHT_TOLERANCE:
        listing = ", ".join(f"{k}: {w}" for k, w in weights.items())
        raise MixtureError(f"{what}: weights must sum to 1, they sum to {total:.6g} ({listing})")


@dataclass
class ResolvedMixture:
    """A mixture applied to concrete components: one weight per component."""

    keys: list[MixtureKey]  # the mixture's keys; key ids are positions in this list
    key_weights: np.ndarray  # float64 per key
    component_key: np.ndarray  # int64 per component: its key id, -1 if no key matches
    weights: np.ndarray  # float64 per component, sums to 1

    @property
    def unmatched_components(self) -> list[int]:
        return [int(c) for c in np.flatnonzero(self.component_key < 0)]


class Mixture(ABC):
    """Which share of the data each key gets. Subclasses are small and serializable."""

    @abstractmethod
    def properties(self) -> list[str] | None:
        """Properties that define components for this mixture (None: every catalog property)."""

    @abstractmethod
    def resolve(self, components: Sequence[MixtureKey], sizes: np.ndarray, step: int = 0) -> ResolvedMixture:
        """Weights per component for the mixture in force at training ``step``."""

    @abstractmethod
    def to_json(self) -> dict[str, Any]: ...

    def switch_steps(self) -> list[int]:
        """Training steps at which the mixture changes by itself (schedules)."""
        return []

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> Mixture:
        kind = data.get("type")
        if kind == "static":
            return StaticMixture(data["weights"])
        if kind == "inferring":
            return InferringMixture(data.get("properties"))
        if kind == "hierarchical":
            return HierarchicalMixture(_tree_from_json(data["tree"]))
        if kind == "schedule":
            return ScheduleMixture([(int(s), Mixture.from_json(m)) for s, m in data["schedule"]])
        if kind == "dynamic":
            return DynamicMixture(
                StaticMixture(data["initial"]), data["algorithm"], **data.get("options", {})
            )
        raise MixtureError(f"unknown mixture type {kind!r} in {dict(data)!r}")


def as_mixture(spec: Mixture | Mapping[str, float] | None) -> Mixture:
    """A mixture from a Mixture, a ``{key: weight}`` dict (static) or None (natural proportions)."""
    if spec is None:
        return InferringMixture()
    if isinstance(spec, Mixture):
        return spec
    if isinstance(spec, Mapping):
        return StaticMixture(spec)
    raise MixtureError(f"a mixture is a Mixture object or a dict of key -> weight, got {spec!r}")


class StaticMixture(Mixture):
    """Fixed weights per key: ``StaticMixture({"language=python": 0.7, "language=c": 0.3})``."""

    keys: list[MixtureKey]
    key_weights: list[float]

    def __init__(self, weights: Mapping[str, float] | Mapping[MixtureKey, float] | StaticMixture) -> None:
        if isinstance(weights, StaticMixture):
            weights = {k: w for k, w in zip(weights.keys, weights.key_weights, strict=True)}
        if not weights:
            raise MixtureError("a static mixture needs at least one key")
        parsed: dict[MixtureKey, float] = {}
        items: Any = weights.items()
        for k, w in items:
            key = MixtureKey.parse(k)
            if key in parsed:
                raise MixtureError(f"key {key} is given twice")
            parsed[key] = w
        _check_weights({str(k): w for k, w in parsed.items()}, "static mixture")
        self.keys = list(parsed)
        self.key_weights = [float(w) for w in parsed.values()]

    def properties(self) -> list[str]:
        props: list[str] = []
        for k in self.keys:
            props.extend(p for p in k.properties if p not in props)
        return props

    def resolve(self, components: Sequence[MixtureKey], sizes: np.ndarray, step: int = 0) -> ResolvedMixture:
        comp_key = np.full(len(components), -1, dtype=np.int64)
        for c, comp in enumerate(components):
            for k, key in enumerate(self.keys):
                if key.matches(comp):
                    if comp_key[c] >= 0:
                        raise MixtureError(
                            f"component {comp} matches two keys, {self.keys[comp_key[c]]} and {key}; "
                            f"make the keys disjoint"
                        )
                    comp_key[c] = k
        weights = np.zeros(len(components), dtype=np.float64)
        for k, key in enumerate(self.keys):
            members = np.flatnonzero(comp_key == k)
            if len(members) == 0:
                raise MixtureError(
                    f"key {key} matches no samples of the query (components: "
                    f"{', '.join(map(str, components)) or 'none'}); remove it or fix the query"
                )
            sub = sizes[members].astype(np.float64)
            weights[members] = self.key_weights[k] * sub / sub.sum()
        return ResolvedMixture(list(self.keys), np.asarray(self.key_weights), comp_key, weights)

    def to_json(self) -> dict[str, Any]:
        return {
            "type": "static",
            "weights": {str(k): w for k, w in zip(self.keys, self.key_weights, strict=True)},
        }


class InferringMixture(Mixture):
    """Natural proportions of the query result; each component is its own key."""

    def __init__(self, properties: Sequence[str] | None = None) -> None:
        self._properties = list(properties) if properties is not None else None

    def properties(self) -> list[str] | None:
        return self._properties

    def resolve(self, components: Sequence[MixtureKey], sizes: np.ndarray, step: int = 0) -> ResolvedMixture:
        total = float(sizes.sum())
        if total <= 0:
            raise MixtureError("the query selects no samples; nothing to mix")
        weights = sizes.astype(np.float64) / total
        return ResolvedMixture(list(components), weights.copy(), np.arange(len(components)), weights)

    def to_json(self) -> dict[str, Any]:
        return {"type": "inferring", "properties": self._properties}


Tree = Mapping[str, "float | tuple[float, Tree]"]


def _flatten(
    tree: Tree, prefix: MixtureKey | None, scale: float, out: dict[MixtureKey, float], where: str
) -> None:
    level = {k: (v[0] if isinstance(v, tuple | list) else v) for k, v in tree.items()}
    _check_weights(level, f"hierarchical mixture level {where}")
    for k, v in tree.items():
        key = MixtureKey.parse(k)
        full = key if prefix is None else prefix.merge(key)
        if isinstance(v, tuple | list):
            w, sub = v
            _flatten(sub, full, scale * float(w), out, f"under {full}")
        else:
            if full in out:
                raise MixtureError(f"key {full} appears twice in the hierarchical mixture")
            out[full] = scale * float(v)


def _tree_to_json(tree: Tree) -> Any:
    return {k: [v[0], _tree_to_json(v[1])] if isinstance(v, tuple | list) else v for k, v in tree.items()}


def _tree_from_json(data: Any) -> Any:
    return {k: (v[0], _tree_from_json(v[1])) if isinstance(v, list) else v for k, v in data.items()}


class HierarchicalMixture(StaticMixture):
    """Nested weights, e.g. 60% code split 50/50 by language, 40% prose::

        HierarchicalMixture({
            "kind=code": (0.6, {"language=python": 0.5, "language=c": 0.5}),
            "kind=prose": 0.4,
        })

    Each level sums to 1; a child key is combined with its parent's (both must hold).
    """

    def __init__(self, tree: Tree) -> None:
        flat: dict[MixtureKey, float] = {}
        _flatten(tree, None, 1.0, flat, "top")
        self.tree = tree
        super().__init__({k: w for k, w in flat.items()})

    def to_json(self) -> dict[str, Any]:
        return {"type": "hierarchical", "tree": _tree_to_json(self.tree)}


class ScheduleMixture(Mixture):
    """Switches mixtures on the training step: ``ScheduleMixture([(0, m1), (1000, m2)])``.

    The mixture of the largest start step <= the current step is in force. The first entry
    must start at step 0. All mixtures of a schedule must name the same properties.
    """

    def __init__(self, schedule: Sequence[tuple[int, Mixture | Mapping[str, float]]]) -> None:
        if not schedule:
            raise MixtureError("a schedule needs at least one (step, mixture) entry")
        steps = [int(s) for s, _ in schedule]
        if steps[0] != 0:
            raise MixtureError(f"a schedule must start at step 0, it starts at {steps[0]}")
        if any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
            raise MixtureError(f"schedule steps must increase strictly, got {steps}")
        self.schedule = [(s, as_mixture(m)) for s, m in zip(steps, (m for _, m in schedule), strict=True)]
        props = {tuple(m.properties() or ()) for _, m in self.schedule}
        if len(props) > 1:
            raise MixtureError(
                f"all mixtures of a schedule must use the same properties, got {sorted(props)}"
            )

    def properties(self) -> list[str] | None:
        return self.schedule[0][1].properties()

    def mixture_at(self, step: int) -> Mixture:
        current = self.schedule[0][1]
        for s, m in self.schedule:
            if s <= step:
                current = m
        return current

    def resolve(self, components: Sequence[MixtureKey], sizes: np.ndarray, step: int = 0) -> ResolvedMixture:
        return self.mixture_at(step).resolve(components, sizes, step)

    def switch_steps(self) -> list[int]:
        return [s for s, _ in self.schedule[1:]]

    def to_json(self) -> dict[str, Any]:
        return {"type": "schedule", "schedule": [[s, m.to_json()] for s, m in self.schedule]}


class DynamicMixture(Mixture):
    """Starts at ``initial`` and lets a mixing-algorithm plugin move the weights from feedback.

    ``algorithm`` names a plugin of the ``mixtera_mixing_algorithms`` hook; ``options``
    go to its constructor. The weights the algorithm returns are per key of ``initial``.
    """

    def __init__(self, initial: StaticMixture | Mapping[str, float], algorithm: str, **options: Any) -> None:
        self.initial = initial if isinstance(initial, StaticMixture) else StaticMixture(initial)
        if not isinstance(algorithm, str) or not algorithm:
            raise MixtureError("DynamicMixture needs the name of a mixing algorithm plugin")
        self.algorithm = algorithm
        self.options = options

    def properties(self) -> list[str] | None:
        return self.initial.properties()

    def resolve(self, components: Sequence[MixtureKey], sizes: np.ndarray, step: int = 0) -> ResolvedMixture:
        return self.initial.resolve(components, sizes, step)

    def to_json(self) -> dict[str, Any]:
        return {
            "type": "dynamic",
            "initial": self.initial.to_json()["weights"],
            "algorithm": self.algorithm,
            "options": self.options,
        }


def reweight(resolved: ResolvedMixture, sizes: np.ndarray, key_weights: Sequence[float]) -> np.ndarray:
    """Component weights for new per-key weights (split inside a key by component size)."""
    kw = np.asarray(key_weights, dtype=np.float64)
    if kw.shape != (len(resolved.keys),):
        raise MixtureError(f"expected {len(resolved.keys)} key weights, got {kw.shape[0] if kw.ndim else kw}")
    _check_weights({str(k): float(w) for k, w in zip(resolved.keys, kw, strict=True)}, "new mixture")
    out = np.zeros(len(resolved.component_key), dtype=np.float64)
    for k in range(len(resolved.keys)):
        members = np.flatnonzero(resolved.component_key == k)
        if len(members):
            sub = sizes[members].astype(np.float64)
            out[members] = kw[k] * sub / sub.sum()
    return out
