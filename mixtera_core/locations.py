"""Resolve a dataset location (file, directory, glob, or a list of them) to absolute file paths."""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Sequence

from .errors import DatasetLocationError

_GLOB_CHARS = set("*?[")


def resolve_files(
    location: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    matches: Callable[[str], bool],
    format_name: str,
    suffixes: Sequence[str],
) -> list[str]:
    """Absolute, sorted, de-duplicated file paths for a location.

    A file is taken as given (whatever its suffix: the user named it). Directories are
    walked recursively and globs (``**`` allowed) expanded; from those, only files the
    format claims (``matches``) are kept. Hidden files and directories are ignored.
    """
    items = [location] if isinstance(location, str | os.PathLike) else list(location)
    if not items:
        raise DatasetLocationError("no location given; pass a file, a directory or a glob")
    found: set[str] = set()
    for item in items:
        raw = os.fspath(item)
        path = os.path.abspath(os.path.expanduser(raw))
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
