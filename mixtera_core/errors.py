"""Errors raised by Mixtera.

Every error says what went wrong, where (file, line or sample) and what to do about it,
so that a training engineer can fix their data or call without reading our source.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class MixteraError(Exception):
    """Base class of every error Mixtera raises on purpose.

    Picklable with its message and attributes whatever its constructor takes, so that an
    error raised in another process (a Ray task, a process pool) arrives as itself."""

    def __reduce__(self) -> tuple[Any, ...]:
        return _restore, (type(self), self.args, dict(self.__dict__))


def _restore(cls: type[MixteraError], args: tuple[Any, ...], state: dict[str, Any]) -> MixteraError:
    """Rebuild a pickled MixteraError without calling its constructor (see ``__reduce__``)."""
    err = cls.__new__(cls)
    Exception.__init__(err, *args)
    err.__dict__.update(state)
    return err


class UnknownPluginError(MixteraError, LookupError):
    """A format, parser, tokenizer, mixing algorithm or trainer adapter name is not installed."""

    def __init__(self, kind: str, name: str, installed: Iterable[str]):
        self.kind = kind
        self.name = name
        self.installed = sorted(installed)
        listing = ", ".join(self.installed) if self.installed else "none"
        super().__init__(
            f"no {kind} plugin named {name!r} (installed: {listing}). "
            f"Install a package that provides it (entry-point group 'mixtera') or pick an installed one."
        )


class WorkerPluginError(MixteraError, LookupError):
    """A plugin the registering process has is not installed where a distributed executor runs
    the work (a Ray worker): plugins are found by name on every worker."""


class UnknownFormatError(UnknownPluginError):
    def __init__(self, name: str, installed: Iterable[str]):
        super().__init__("format", name, installed)


class UnknownParserError(UnknownPluginError):
    def __init__(self, name: str, installed: Iterable[str]):
        super().__init__("parser", name, installed)


class DatasetLocationError(MixteraError, FileNotFoundError):
    """A dataset location does not exist or matches no file."""


class DatasetExistsError(MixteraError):
    """A dataset name is registered already."""


class UnknownDatasetError(MixteraError, LookupError):
    """A dataset name is not registered."""


class InvalidPropertyError(MixteraError, ValueError):
    """A property name or type is not acceptable."""


class MalformedRecordError(MixteraError, ValueError):
    """A sample cannot be parsed. The message names the file and the line or sample."""

    def __init__(self, path: str, where: str, reason: str, hint: str = ""):
        self.path = path
        self.where = where
        self.reason = reason
        msg = f"{path}:{where}: {reason}"
        if hint:
            msg += f" ({hint})"
        super().__init__(msg)


class CorruptFileError(MixteraError, ValueError):
    """A file cannot be read at all (corrupt compression, broken archive, bad footer)."""

    def __init__(self, path: str, reason: str):
        self.path = path
        super().__init__(f"{path}: {reason}. Check or re-create the file, or leave it out of the location.")


class MissingFieldError(MixteraError, KeyError):
    """A mapped field or column is absent from a file."""

    def __init__(self, path: str, field: str, available: Iterable[str] | None = None):
        self.path = path
        self.field = field
        msg = f"{path}: field {field!r} mapped by the parser is missing"
        if available is not None:
            msg += f" (available: {', '.join(sorted(available))})"
        msg += ". Fix the parser mapping or the file."
        super().__init__(msg)

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class JobError(MixteraError, ValueError):
    """A job spec is invalid, or a job id is unknown or reused with another spec."""


class QueryError(MixteraError, ValueError):
    """A query names an unknown property, an unknown operator or a value of the wrong type."""


class TokenIndexError(MixteraError):
    """The token index (``DB_DIR/tokens``) cannot be built or used as asked."""


class TokenIndexStaleError(TokenIndexError):
    """A data file changed (size or modification time) since it was registered or tokenized.

    The message names the file and says to re-register its dataset and tokenize again."""


class TokenIndexManifestError(TokenIndexError):
    """A token index directory's ``manifest.json`` is corrupt or disagrees with the settings
    asked for (tokenizer, BOS/EOS, text field)."""


class FileChangedError(CorruptFileError):
    """A data file differs from what registration recorded (size, modification time or
    content fingerprint): the catalog's indices no longer describe it.

    The message names the file and says to re-register the dataset. A subclass of
    :class:`CorruptFileError`, which the formats raised for a changed size before."""

    def __init__(self, path: str, reason: str):
        self.path = path
        self.reason = reason
        MixteraError.__init__(
            self,
            f"{path}: the file changed since it was registered ({reason}); its indices in the catalog "
            f"no longer describe it. Restore the file, or re-register the dataset "
            f"(register_dataset(..., replace=True)) and start a new job",
        )


class CatalogLockedError(MixteraError):
    """The catalog database is open in another process (DuckDB allows one writer process per
    file). Close the other process, or share the catalog through a server."""


class PlannerStateError(MixteraError, ValueError):
    """A planner state (a stream state's ``snapshot``) is malformed, out of range for its job, or
    (on a server) not one the server handed out: send the snapshot of a stream state unchanged."""


class PlanningLimitError(MixteraError, ValueError):
    """A chunk request would make the planner walk further than its limit in one request: send
    the planner snapshot of the stream's state with it, or ask for a nearer chunk."""


class SnapshotSignatureError(PlannerStateError):
    """A planner snapshot sent to a server lacks the server's signature or does not verify: it
    was changed, is for another job, or was handed out by another server."""


class RegistrationWarning(UserWarning):
    """A registration succeeded but looks wrong: e.g. a mapped property has no value in any
    sample (a misspelled field path). The registration report lists the same warnings."""
