"""The ``[mixtera]`` section and the query/mixture spec file (pure Python: no torch, no torchtitan).

:class:`MixteraConfig` is the ``mixtera`` section of a
:class:`~mixtera_integrations.torchtitan.trainer.MixteraTrainer` config: where the catalog is
(a ``mixtera-server`` address or a local catalog directory), the job id, the spec file and
the job options that belong to the training run (chunk size, tokenizer, sequence length,
seed, streams per rank). On the command line its fields are ``--mixtera.<field>``.

The **spec file** (TOML or JSON, chosen by the extension) says *what* to train on; see
:func:`load_spec`::

    job_id = "slimpajama-static"          # optional; the section's job_id wins

    [query]                                # optional: no query selects every sample
    where = ["redpajama_set_name != RedPajamaGithub"]   # ANDed, `mixtera explain --where` syntax
    or_where = []                          # each entry one more alternative ("a and b")

    [mixture]                              # static: key -> weight
    "redpajama_set_name=RedPajamaC4" = 0.6
    "redpajama_set_name=RedPajamaWikipedia" = 0.4

    [options]                              # optional: other job options
    on_exhausted = "repeat"

A dynamic mixture names its algorithm, the initial weights and the algorithm's options::

    [mixture]
    algorithm = "ado"
    [mixture.initial]
    "redpajama_set_name=RedPajamaC4" = 0.6
    "redpajama_set_name=RedPajamaWikipedia" = 0.4
    [mixture.options]
    warmup = 500

``[mixture]`` may also be any mixture in the serialized form of
:meth:`mixtera_core.mixture.Mixture.to_json` (a ``type`` key: ``static``, ``inferring``,
``hierarchical``, ``schedule``, ``dynamic``); no ``[mixture]`` at all means natural proportions.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from mixtera_core.errors import MixteraError
from mixtera_core.mixture import DynamicMixture, Mixture, MixtureError, StaticMixture
from mixtera_core.query import Condition, Expr, Query, expr_from_json, parse_condition

__all__ = ["MixteraConfig", "MixtureSpec", "SpecError", "load_spec", "parse_spec"]

#: job options the [mixtera] section (or the trainer's topology) sets; a spec file may not
SECTION_OPTIONS = (
    "chunk_size",
    "seed",
    "dp_groups",
    "nodes_per_group",
    "num_workers",
    "tokenizer",
    "seq_len",
)
#: job options a spec file's [options] table may set (see MixteraClient.execute)
SPEC_OPTIONS = (
    "on_exhausted",
    "block_size",
    "text_field",
    "tokenizer_options",
    "add_bos",
    "add_eos",
    "token_estimate_samples",
    "samples_per_step",
)


class SpecError(MixteraError, ValueError):
    """A spec file or a ``[mixtera]`` section is malformed; the message names the file and the entry."""


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            raise SpecError(
                f"{path}: reading TOML needs Python >= 3.11 (tomllib) or `pip install tomli`; "
                f"or write the file as JSON"
            ) from None
    try:
        with open(path, "rb") as fh:
            data: dict[str, Any] = tomllib.load(fh)
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"{path}: not valid TOML: {e}") from None
    return data


def read_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A TOML (``.toml``) or JSON (any other extension) file as a dict."""
    p = Path(path)
    if not p.is_file():
        raise SpecError(f"spec file {str(p)!r} does not exist")
    if p.suffix.lower() == ".toml":
        return _read_toml(p)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise SpecError(f"{p}: not valid JSON ({e}); TOML files need the extension .toml") from None
    if not isinstance(data, dict):
        raise SpecError(f"{p}: the top level must be an object, got {type(data).__name__}")
    return data


@dataclass(kw_only=True)
class MixteraConfig:
    """The ``[mixtera]`` section of a torchtitan job (``--mixtera.<field>`` on the command line)."""

    server: str = ""
    """mixtera-server address as host:port (every rank connects to it). Empty: use db."""

    db: str = ""
    """Local catalog directory, opened by rank 0 only (static mixtures with several ranks;
    a dynamic mixture with several ranks needs a server)."""

    token_file: str = ""
    """File holding the server's auth token (mixtera-server --token-file)."""

    tls_ca: str = ""
    """CA (or self-signed) certificate of a TLS server (mixtera-server --tls-cert)."""

    ship_samples: bool = False
    """The server reads the samples and sends them (for ranks that cannot see the files)."""

    job_id: str = ""
    """Mixtera job id; the same spec under the same id attaches to the existing job."""

    spec: str = ""
    """Query/mixture spec file (.toml, or JSON)."""

    chunk_size: int = 1024
    """Samples per Mixtera chunk."""

    tokenizer: str = ""
    """Tokenizer as plugin:source (e.g. hf:/models/llama3/tokenizer.json, tiktoken:cl100k_base).
    Empty: hf:<hf_assets_path>, the tokenizer directory torchtitan uses."""

    seq_len: int = 0
    """Tokens per training sequence; 0: training.seq_len (a different value is an error)."""

    seed: int = 0
    """Seed of the job's chunking and shuffling."""

    num_workers: int = 1
    """Mixtera streams per rank, read in parallel background threads and interleaved per sequence."""

    feedback_every: int = 1
    """Training steps summed into one feedback message (dynamic mixtures)."""

    document_positions: bool = False
    """Also yield per-document positions (reset after each EOS) as input_dict["positions"]."""

    # ------------------------------------------------------------------ helpers

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "[mixtera]") -> MixteraConfig:
        """A section from a mapping; unknown keys are an error naming the known ones."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SpecError(
                f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})"
            )
        return cls(**dict(data))

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str], table: str = "mixtera") -> MixteraConfig:
        """The ``[mixtera]`` table (or ``table``) of a TOML or JSON file."""
        data = read_file(path)
        section = data.get(table)
        if not isinstance(section, Mapping):
            raise SpecError(f"{path}: no [{table}] table")
        return cls.from_dict(section, f"{path} [{table}]")

    def validate(self) -> None:
        """Raise :class:`SpecError` naming the field when the section cannot work."""
        if bool(self.server) == bool(self.db):
            raise SpecError(
                "[mixtera] needs exactly one of server (host:port of a mixtera-server) and db (a local "
                f"catalog directory); got server={self.server!r}, db={self.db!r}"
            )
        if self.server:
            self.address()
        if not self.spec:
            raise SpecError("[mixtera] needs spec: the path of the query/mixture spec file (.toml or .json)")
        for name in ("chunk_size", "num_workers", "feedback_every"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise SpecError(f"[mixtera] {name} must be a positive integer, got {v!r}")
        if not isinstance(self.seq_len, int) or self.seq_len < 0:
            raise SpecError(f"[mixtera] seq_len must be >= 0 (0: training.seq_len), got {self.seq_len!r}")
        if self.tokenizer:
            self.tokenizer_spec(None)

    def address(self) -> tuple[str, int]:
        """``server`` as (host, port)."""
        host, sep, port = self.server.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise SpecError(f"[mixtera] server must be host:port, e.g. 10.0.0.5:7878, got {self.server!r}")
        return host.strip("[]"), int(port)

    def auth_token(self) -> str | None:
        if not self.token_file:
            return None
        try:
            return Path(self.token_file).read_text(encoding="utf-8").strip() or None
        except OSError as e:
            raise SpecError(f"[mixtera] token_file {self.token_file!r} cannot be read: {e}") from None

    def tokenizer_spec(self, hf_assets_path: str | None) -> tuple[str, str]:
        """(plugin, source) of the tokenizer; the default is the ``hf`` plugin on torchtitan's assets."""
        if self.tokenizer:
            name, sep, source = self.tokenizer.partition(":")
            if not sep or not name or not source:
                raise SpecError(
                    f"[mixtera] tokenizer must be plugin:source, e.g. hf:/models/tokenizer.json or "
                    f"tiktoken:cl100k_base, got {self.tokenizer!r}"
                )
            return name, source
        if not hf_assets_path:
            raise SpecError("[mixtera] tokenizer is empty and there is no hf_assets_path to take it from")
        return "hf", hf_assets_path


@dataclass
class MixtureSpec:
    """A parsed spec file: the query (without job id), the mixture and extra job options."""

    selects: list[Expr] = field(default_factory=list)
    mixture: Mixture | None = None
    options: dict[str, Any] = field(default_factory=dict)
    job_id: str | None = None
    source: str = "<spec>"

    def query(self, job_id: str | None = None) -> Query:
        """The query of job ``job_id`` (default: the spec's own ``job_id``)."""
        jid = job_id or self.job_id
        if not jid:
            raise SpecError(
                f"{self.source}: no job id; set job_id in the [mixtera] section or in the spec file"
            )
        return Query(jid, tuple(self.selects))

    @property
    def dynamic(self) -> bool:
        return isinstance(self.mixture, DynamicMixture)


def _condition(item: Any, where: str) -> Expr:
    if isinstance(item, str):
        return parse_condition(item)
    if isinstance(item, list | tuple) and len(item) == 3 and isinstance(item[0], str):
        value = list(item[2]) if item[1] == "in" and isinstance(item[2], list | tuple) else item[2]
        return Condition(item[0], item[1], value)
    raise SpecError(
        f"{where}: a condition is a string like 'language==python' or a list [property, operator, value], "
        f"got {item!r}"
    )


def _and(parts: list[Expr]) -> Expr:
    from mixtera_core.query import And

    return parts[0] if len(parts) == 1 else And(tuple(parts))


def _parse_query(data: Any, where: str) -> list[Expr]:
    if data is None:
        return []
    if not isinstance(data, Mapping):
        raise SpecError(f"{where}: [query] must be a table, got {data!r}")
    unknown = sorted(set(data) - {"where", "or_where", "selects"})
    if unknown:
        raise SpecError(
            f"{where}: unknown key(s) {', '.join(unknown)} in [query] (known: where, or_where, selects)"
        )
    selects: list[Expr] = []
    where_items = data.get("where", [])
    if isinstance(where_items, str):
        where_items = [where_items]
    if where_items:
        selects.append(_and([_condition(c, f"{where} [query] where") for c in where_items]))
    or_items = data.get("or_where", [])
    if isinstance(or_items, str):
        or_items = [or_items]
    for alt in or_items:
        if not isinstance(alt, str):
            raise SpecError(
                f"{where}: [query] or_where entries are strings like 'a==1 and b==2', got {alt!r}"
            )
        selects.append(_and([parse_condition(c) for c in alt.split(" and ")]))
    for raw in data.get("selects", []):
        selects.append(expr_from_json(raw))
    return selects


def _weights(data: Any, where: str) -> dict[str, float]:
    if not isinstance(data, Mapping) or not data:
        raise SpecError(f"{where}: mixture weights must be a non-empty table of key = weight, got {data!r}")
    out: dict[str, float] = {}
    for key, w in data.items():
        if isinstance(w, bool) or not isinstance(w, int | float):
            raise SpecError(f"{where}: the weight of {key!r} must be a number, got {w!r}")
        out[str(key)] = float(w)
    return out


def _parse_mixture(data: Any, where: str) -> Mixture | None:
    if data is None:
        return None
    if not isinstance(data, Mapping):
        raise SpecError(f"{where}: [mixture] must be a table, got {data!r}")
    try:
        if "type" in data:
            return Mixture.from_json(data)
        if "algorithm" in data:
            unknown = sorted(set(data) - {"algorithm", "initial", "weights", "options"})
            if unknown:
                raise SpecError(
                    f"{where}: unknown key(s) {', '.join(unknown)} in a dynamic [mixture] "
                    f"(known: algorithm, initial, options)"
                )
            initial = data.get("initial", data.get("weights"))
            options = data.get("options", {})
            if not isinstance(options, Mapping):
                raise SpecError(f"{where}: [mixture.options] must be a table, got {options!r}")
            return DynamicMixture(
                _weights(initial, f"{where} [mixture.initial]"), str(data["algorithm"]), **options
            )
        if "weights" in data:
            if len(data) != 1:
                raise SpecError(f"{where}: a static [mixture] with 'weights' takes no other keys")
            return StaticMixture(_weights(data["weights"], f"{where} [mixture.weights]"))
        return StaticMixture(_weights(data, f"{where} [mixture]"))
    except MixtureError as e:
        raise SpecError(f"{where}: {e}") from None


def parse_spec(data: Mapping[str, Any], source: str = "<spec>") -> MixtureSpec:
    """A :class:`MixtureSpec` from the contents of a spec file."""
    unknown = sorted(set(data) - {"job_id", "query", "mixture", "options"})
    if unknown:
        raise SpecError(
            f"{source}: unknown key(s) {', '.join(unknown)} (known: job_id, query, mixture, options)"
        )
    options = dict(data.get("options", {}) or {})
    owned = sorted(set(options) & set(SECTION_OPTIONS))
    if owned:
        raise SpecError(
            f"{source}: [options] may not set {', '.join(owned)}: they belong to the [mixtera] section "
            f"(or follow from the trainer's parallelism)"
        )
    unknown_opts = sorted(set(options) - set(SPEC_OPTIONS))
    if unknown_opts:
        raise SpecError(
            f"{source}: unknown job option(s) {', '.join(unknown_opts)} in [options] "
            f"(known: {', '.join(SPEC_OPTIONS)})"
        )
    job_id = data.get("job_id")
    if job_id is not None and not isinstance(job_id, str):
        raise SpecError(f"{source}: job_id must be a string, got {job_id!r}")
    return MixtureSpec(
        selects=_parse_query(data.get("query"), source),
        mixture=_parse_mixture(data.get("mixture"), source),
        options=options,
        job_id=job_id,
        source=source,
    )


def load_spec(path: str | os.PathLike[str]) -> MixtureSpec:
    """Read a query/mixture spec file (``.toml``, else JSON); see the module docstring for its shape."""
    return parse_spec(read_file(path), str(path))


def execute_options(
    section: MixteraConfig,
    spec: MixtureSpec,
    *,
    seq_len: int,
    dp_groups: int,
    nodes_per_group: int,
    hf_assets_path: str | None,
) -> dict[str, Any]:
    """The keyword arguments of ``client.execute(query, mixture, **options)`` for this run."""
    if section.seq_len and section.seq_len != seq_len:
        raise SpecError(
            f"[mixtera] seq_len={section.seq_len} differs from the trainer's seq_len={seq_len}; "
            f"leave it 0 to follow training.seq_len"
        )
    return {
        **spec.options,
        "chunk_size": section.chunk_size,
        "seed": section.seed,
        "dp_groups": dp_groups,
        "nodes_per_group": nodes_per_group,
        "num_workers": section.num_workers,
        "tokenizer": section.tokenizer_spec(hf_assets_path),
        "seq_len": seq_len,
    }
