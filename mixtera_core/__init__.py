"""Mixtera: a data plane for foundation-model training.

Entry points: :class:`MixteraClient` (``MixteraClient.local(db_dir)``), :class:`Query` and
:func:`col`. Extension points live in :mod:`mixtera_core.hookspecs`.

The names below are imported on first use (PEP 562), so ``import mixtera_core`` and the
``mixtera`` command start without loading DuckDB, pyarrow or the plugins until a command
needs them; torch, scipy and grpc load only with the features that use them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: The package version; pyproject.toml reads it from here (setuptools dynamic version).
__version__ = "0.1.0"

# public name -> submodule that defines it
_EXPORTS = {
    "ChunkerIndex": "index",
    "DatasetInfo": "catalog",
    "Explanation": "report",
    "JobInfo": "job_store",
    "LocalMixteraClient": "client",
    "MixteraClient": "client",
    "MixteraError": "errors",
    "Query": "query",
    "RegistrationReport": "catalog",
    "col": "query",
}

__all__ = [  # the keys of _EXPORTS
    "ChunkerIndex",
    "DatasetInfo",
    "Explanation",
    "JobInfo",
    "LocalMixteraClient",
    "MixteraClient",
    "MixteraError",
    "Query",
    "RegistrationReport",
    "col",
]

if TYPE_CHECKING:
    from .catalog import DatasetInfo, RegistrationReport
    from .client import LocalMixteraClient, MixteraClient
    from .errors import MixteraError
    from .index import ChunkerIndex
    from .job_store import JobInfo
    from .query import Query, col
    from .report import Explanation


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mixtera_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
