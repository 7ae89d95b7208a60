"""A third-party plugin package, installed for real, is discovered through its entry point.

``examples/plugin_package`` (distribution ``mixtera-csv-plugin``) is pip-installed into a
temporary directory; a fresh interpreter with that directory on its path then finds the
``csv`` format and the ``length_bucket`` parser without any change to Mixtera.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "examples" / "plugin_package"

CSV = 'text,lang,year\nhi,en,2001\n"two\nlines of text",de,2002\n' + "x" * 40 + ",fr,2003\n"

CHILD = textwrap.dedent(
    """
    import json, sys
    import mixtera_csv
    from mixtera_core.plugins import PluginManager

    pm = PluginManager()
    desc = pm.describe()
    fmt = pm.format("csv")
    by_bucket = fmt.scan(sys.argv[1], pm.parser("length_bucket", short_max=5, medium_max=20))
    by_fields = fmt.scan(sys.argv[1], pm.parser("fields", language="lang", year={"path": "year", "type": "int"}))
    print(json.dumps({
        "module": mixtera_csv.__file__,
        "formats": desc["format"],
        "parsers": desc["parser"],
        "csv_class": type(fmt).__name__,
        "matches": [fmt.matches("a/b.csv"), fmt.matches("a/b.jsonl")],
        "bucket": by_bucket.properties.to_pylist(),
        "fields": by_fields.properties.to_pylist(),
        "read": [[i, r] for i, r in fmt.read(sys.argv[1], [(1, 3)], by_fields.read_index)],
    }))
    """
)


@pytest.fixture(scope="module")
def site_dir(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("plugin_package")
    # Build from a copy so that setuptools' build/ and *.egg-info never land in the repository.
    src = tmp / "src"
    shutil.copytree(PACKAGE, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    site = tmp / "site"
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index"]
    cmd += ["--disable-pip-version-check", "--quiet", "--target", str(site), str(src)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"pip install failed:\n{proc.stdout}\n{proc.stderr}"
    return site


def test_installed_package_is_discovered_through_its_entry_point(site_dir, tmp_path):
    dist_infos = list(site_dir.glob("mixtera_csv_plugin-*.dist-info"))
    assert len(dist_infos) == 1
    entry_points = (dist_infos[0] / "entry_points.txt").read_text()
    assert "[mixtera]" in entry_points and "csv = mixtera_csv" in entry_points

    data = tmp_path / "small.csv"
    data.write_text(CSV)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = os.pathsep.join([str(site_dir), str(REPO)])
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(data)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])

    # The module came from the installed copy, and the plugin manager names its entry point.
    assert Path(out["module"]).resolve().is_relative_to(site_dir.resolve())
    assert ["csv", "csv"] in out["formats"]
    assert ["length_bucket", "csv"] in out["parsers"]
    assert ["fields", "mixtera_plugins.parsers"] in out["parsers"]  # built-ins are still there
    assert out["csv_class"] == "CsvFormat"
    assert out["matches"] == [True, False]

    # Scanning through the installed plugins: slow path (Python parser) and fast path (fields).
    assert out["bucket"] == [
        {"sample_index": 0, "length_bucket": "short"},
        {"sample_index": 1, "length_bucket": "medium"},
        {"sample_index": 2, "length_bucket": "long"},
    ]
    assert out["fields"] == [
        {"sample_index": 0, "language": "en", "year": 2001},
        {"sample_index": 1, "language": "de", "year": 2002},
        {"sample_index": 2, "language": "fr", "year": 2003},
    ]
    assert out["read"] == [
        [1, {"text": "two\nlines of text", "lang": "de", "year": "2002"}],
        [2, {"text": "x" * 40, "lang": "fr", "year": "2003"}],
    ]


def test_core_alone_does_not_know_csv():
    """Without the installed package on the path, discovery finds no csv plugin."""
    from mixtera_core.errors import UnknownFormatError, UnknownParserError
    from mixtera_core.plugins import PluginManager

    with pytest.raises(metadata.PackageNotFoundError):
        metadata.distribution("mixtera-csv-plugin")
    pm = PluginManager()
    assert "csv" not in pm.names("format")
    assert "length_bucket" not in pm.names("parser")
    with pytest.raises(UnknownFormatError, match="no format plugin named 'csv'"):
        pm.format("csv")
    with pytest.raises(UnknownParserError):
        pm.parser("length_bucket")


def test_csv_format_errors_and_skips(tmp_path, monkeypatch):
    """The example format follows the contract: errors name the row, skipped rows stay skipped."""
    monkeypatch.syspath_prepend(str(PACKAGE))
    import mixtera_csv

    from mixtera_core.errors import InvalidPropertyError, MalformedRecordError, MissingFieldError
    from mixtera_core.plugins import PluginManager

    pm = PluginManager(load_entrypoints=False, extra=[mixtera_csv])
    fmt = pm.format("csv")
    fields = pm.parser("fields", language="lang", year={"path": "year", "type": "int"})
    path = tmp_path / "bad.csv"
    path.write_text("text,lang,year\na,en,1\nbroken\nc,fr,notayear\nd,,4\n")

    with pytest.raises(MalformedRecordError, match=r"bad\.csv:row 1: expected 3 columns, got 1"):
        fmt.scan(str(path), fields)
    scan = fmt.scan(str(path), fields, on_error="skip")
    assert scan.properties.to_pylist() == [
        {"sample_index": 0, "language": "en", "year": 1},
        {"sample_index": 3, "language": None, "year": 4},
    ]
    assert scan.skipped == 2
    assert [i for i, _ in fmt.read(str(path), [(0, 10)], scan.read_index)] == [0, 3]

    path.write_text("text,lang,year\na,en,1\nc,fr,notayear\n")
    with pytest.raises(MalformedRecordError, match=r"row 1: property 'year': expected int"):
        fmt.scan(str(path), fields)
    with pytest.raises(MissingFieldError, match="'nope'"):
        fmt.scan(str(path), pm.parser("fields", x="nope"))
    with pytest.raises(MalformedRecordError, match="row 0"):
        fmt.scan(str(path), pm.parser("length_bucket", text_field="body"))
    with pytest.raises(InvalidPropertyError):
        pm.parser("length_bucket", short_max=10, medium_max=5)
