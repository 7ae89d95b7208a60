"""The `mixtera` command, in process and as the installed console script."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from conftest import write_jsonl

from mixtera_core.cli import main


def corpus(tmp_path):
    write_jsonl(tmp_path / "d" / "a.jsonl", [{"meta": {"language": "python", "license": "mit"}}] * 3)
    write_jsonl(tmp_path / "d" / "b.jsonl.zst", [{"meta": {"language": "c", "license": "bsd"}}] * 2, "zst")
    return tmp_path / "d"


def test_register_inspect_remove(tmp_path, capsys):
    db = str(tmp_path / "db")
    root = corpus(tmp_path)
    assert (
        main(
            [
                "--db",
                db,
                "register",
                "code",
                str(root),
                "--field",
                "language=meta.language",
                "--options",
                '{"license": "meta.license"}',
                "--quiet",
            ]
        )
        == 0
    )
    assert "registered 'code': 2 files, 5 samples" in capsys.readouterr().out
    assert main(["--db", db, "datasets"]) == 0
    assert "code: 2 files, 5 samples (jsonl, fields)" in capsys.readouterr().out
    assert main(["--db", db, "properties", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "language": {"c": 2, "python": 3},
        "license": {"bsd": 2, "mit": 3},
    }
    assert main(["--db", db, "explain", "--where", "license in mit,bsd", "--by", "language"]) == 0
    out = capsys.readouterr().out
    assert "language=c" in out and "language=python" in out and "total" in out
    assert (
        main(
            [
                "--db",
                db,
                "explain",
                "--where",
                "language==c",
                "--or-where",
                "license==mit and language==python",
            ]
        )
        == 0
    )
    assert "5" in capsys.readouterr().out.splitlines()[-1]
    assert main(["--db", db, "remove", "code"]) == 0
    assert main(["--db", db, "datasets"]) == 0
    assert "no datasets registered" in capsys.readouterr().out


def test_errors_are_reported_not_raised(tmp_path, capsys):
    db = str(tmp_path / "db")
    root = corpus(tmp_path)
    assert (
        main(["--db", db, "register", "x", str(root), "--format", "jsnl", "--field", "l=meta.language"]) == 1
    )
    err = capsys.readouterr().err
    assert "UnknownFormatError: no format plugin named 'jsnl'" in err and "installed: jsonl" in err
    assert main(["--db", db, "remove", "nope"]) == 1
    assert "no dataset named 'nope'" in capsys.readouterr().err


def test_console_script_lists_builtin_plugins():
    exe = shutil.which("mixtera")
    assert exe, "the mixtera console script is not installed (pip install -e .)"
    out = subprocess.run([exe, "plugins"], check=True, capture_output=True, text=True).stdout
    for name in (
        "jsonl",
        "parquet",
        "webdataset",
        "fields",
        "slimpajama",
        "pile",
        "hf",
        "tiktoken",
        "loss_weighted",
        "ado",
        "odm",
    ):
        assert f"  {name} " in out
    # the trainer adapters come in through the package's own entry points, like a third party's
    adapters = out.split("trainer_adapters:\n", 1)[1]
    assert "  lightning " in adapters and "  hf " in adapters


def test_demo_runs_end_to_end(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo"), "--max-samples", "30"]) == 0
    out = capsys.readouterr().out
    assert "registered 'code'" in out and "[jsonl]" in out and "[parquet]" in out and "[webdataset]" in out
    assert "language=python" in out and "first sample of each component" in out


def test_package_layout_is_importable_as_documented(tmp_path):
    # run outside the repository so only the installed distribution can satisfy the imports
    code = "import mixtera_core, mixtera_plugins.formats, mixtera_integrations.lightning, mixtera_integrations.hf"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)


def test_explain_with_mixture_and_report(tmp_path, capsys):
    db = str(tmp_path / "db")
    root = corpus(tmp_path)
    assert (
        main(["--db", db, "register", "code", str(root), "--field", "language=meta.language", "--quiet"]) == 0
    )
    capsys.readouterr()
    assert (
        main(
            [
                "--db",
                db,
                "explain",
                "--mixture",
                "language=python:0.6",
                "--mixture",
                "language=c:0.4",
                "--samples",
                "100",
                "--per-step",
                "10",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "60.00%" in out and "epochs" in out and "dry at step" in out
    with pytest.raises(SystemExit, match="KEY:WEIGHT"):
        main(["--db", db, "explain", "--mixture", "language=python"])
    assert main(["--db", db, "explain", "--mixture", "language=python:0.5"]) == 1
    assert "sum to 1" in capsys.readouterr().err
