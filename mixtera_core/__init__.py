"""Mixtera: a data plane for foundation-model training.

Entry points: :class:`MixteraClient` (``MixteraClient.local(db_dir)``), :class:`Query` and
:func:`col`. Extension points live in :mod:`mixtera_core.hookspecs`.
"""

from .catalog import DatasetInfo, RegistrationReport
from .client import Explanation, LocalMixteraClient, MixteraClient
from .errors import MixteraError
from .index import ChunkerIndex
from .query import Query, col

__all__ = [
    "ChunkerIndex",
    "DatasetInfo",
    "Explanation",
    "LocalMixteraClient",
    "MixteraClient",
    "MixteraError",
    "Query",
    "RegistrationReport",
    "col",
]
__version__ = "0.1.0"
