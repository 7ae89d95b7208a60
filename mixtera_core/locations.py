"""Resolve a dataset location (file, directory, glob, URL, or a list of them) to absolute file paths or URLs.

Patterns from a remote client (a server's registrations) are held to more: :func:`check_glob`
bounds a glob's length and its recursive parts, and :func:`client_regex` compiles a regular
expression over paths (the ``path_regex`` of the ``fields`` parser) with RE2, whose matching
takes linear time, so no pattern can stall the server with catastrophic backtracking.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Sequence
from typing import Any

from . import storage
from .errors import DatasetLocationError, InvalidPropertyError

_GLOB_CHARS = set("*?[")
#: Characters a client's regex or glob may have.
MAX_PATTERN = 4096
#: ``**`` parts a client's glob may have (each one walks a whole tree).
MAX_RECURSIVE_PARTS = 2


def check_glob(raw: str) -> None:
    """Refuse a client's location that is too long or a glob with too many ``**`` parts."""
    if len(raw) > MAX_PATTERN:
        raise DatasetLocationError(f"a location has {len(raw)} characters; the limit is {MAX_PATTERN}")
    if "\x00" in raw:
        raise DatasetLocationError("a location must not contain NUL characters")
    if _GLOB_CHARS & set(raw):
        recursive = sum(1 for part in raw.replace(os.sep, "/").split("/") if "**" in part)
        if recursive > MAX_RECURSIVE_PARTS:
            raise DatasetLocationError(
                f"glob {raw[:200]!r} has {recursive} '**' parts; the limit is {MAX_RECURSIVE_PARTS}"
            )


def client_regex(pattern: Any, what: str = "path_regex") -> Any:
    """``pattern`` compiled with RE2 (``google-re2``): linear-time matching, no backreferences
    or lookaround. Refused (:class:`~mixtera_core.errors.InvalidPropertyError`) when it is not a
    string, too long, not valid RE2 syntax, has no capturing group, or RE2 is not installed."""
    if not isinstance(pattern, str):
        raise InvalidPropertyError(f"{what} must be a string, got {type(pattern).__name__}")
    if len(pattern) > MAX_PATTERN:
        raise InvalidPropertyError(f"{what} has {len(pattern)} characters; the limit is {MAX_PATTERN}")
    try:
        import re2  # type: ignore[import-not-found,import-untyped,unused-ignore]
    except ImportError:
        raise InvalidPropertyError(
            f"{what} from a remote client needs RE2 on the server (pip install google-re2), which is "
            f"not installed; the server refuses client regexes without it"
        ) from None
    options = re2.Options()
    options.max_mem = 8 << 20
    options.log_errors = False
    try:
        rx = re2.compile(pattern, options)
    except Exception as e:  # re2.error, or a pattern too big for max_mem
        raise InvalidPropertyError(f"{what} {pattern[:200]!r} is not a valid RE2 regex: {e}") from None
    if rx.groups < 1:
        raise InvalidPropertyError(f"{what} {pattern[:200]!r} needs a capturing group, e.g. 'data/(\\w+)/'")
    return rx


def resolve_files(
    location: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    matches: Callable[[str], bool],
    format_name: str,
    suffixes: Sequence[str],
) -> list[str]:
    """Absolute, sorted, de-duplicated file paths for a location.

    A file is taken as given (whatever its suffix: the user named it). Directories are
    walked recursively and globs (``**`` allowed) expanded; from those, only files the
    format claims (``matches``) are kept. Hidden files and directories are ignored. URLs of
    an fsspec filesystem (``s3://bucket/prefix/*.jsonl.zst``) are resolved the same way by
    :func:`mixtera_core.storage.resolve_remote` and kept as URLs; ``file://`` is a local path.
    """
    items = [location] if isinstance(location, str | os.PathLike) else list(location)
    if not items:
        raise DatasetLocationError("no location given; pass a file, a directory or a glob")
    found: set[str] = set()
    for item in items:
        raw = os.fspath(item)
        if storage.is_remote(raw):
            found.update(storage.resolve_remote(raw, matches, format_name, suffixes))
            continue
        path = storage.local_path(raw)
        if _GLOB_CHARS & set(raw):
            hits = [os.path.abspath(p) for p in glob.glob(path, recursive=True)]
            files = [p for p in hits if os.path.isfile(p) and matches(p)]
            for d in (p for p in hits if os.path.isdir(p)):
                files.extend(_walk(d, matches))
            if not files:
                raise DatasetLocationError(
                    f"glob {raw!r} matches no {format_name} file (suffixes {', '.join(suffixes)}); check the pattern"
                )
            found.update(files)
        elif os.path.isfile(path):
            found.add(path)
        elif os.path.isdir(path):
            files = _walk(path, matches)
            if not files:
                raise DatasetLocationError(
                    f"directory {path} holds no {format_name} file (suffixes {', '.join(suffixes)}); "
                    f"pick another format or location"
                )
            found.update(files)
        else:
            raise DatasetLocationError(f"location {path} does not exist; check the path")
    return sorted(found)


def _walk(root: str, matches: Callable[[str], bool]) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if not name.startswith("."):
                full = os.path.join(dirpath, name)
                if matches(full):
                    out.append(os.path.abspath(full))
    return out
