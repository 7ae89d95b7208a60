"""Built-in dataset formats (being written)."""

from mixtera_core.hookspecs import hookimpl


@hookimpl
def mixtera_formats():
    return []
