"""The `mixtera` command, in process and as the installed console script."""

from __future__ import annotations

import collections
import json
import shutil
import subprocess
import sys

import pytest
from conftest import write_jsonl

from mixtera_core.cli import main


def corpus(tmp_path):
    write_jsonl(
        tmp_path / "d" / "a.jsonl",
        [{"text": f"p{i}", "meta": {"language": "python", "license": "mit"}} for i in range(3)],
    )
    write_jsonl(
        tmp_path / "d" / "b.jsonl.zst",
        [{"text": f"c{i}", "meta": {"language": "c", "license": "bsd"}} for i in range(2)],
        "zst",
    )
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


# ---------------------------------------------------------------------- options, errors, JSON


def register(db, root, *extra):
    argv = ["register", "code", str(root), "--field", "language=meta.language", "--quiet", *extra]
    return main(["--db", str(db), *argv])


def test_version_is_the_installed_distributions(capsys):
    import importlib.metadata

    import mixtera_core

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out.strip()
    assert out == f"mixtera {mixtera_core.__version__}"
    assert importlib.metadata.version("mixtera") == mixtera_core.__version__


def test_catalog_options_go_before_or_after_the_command(tmp_path, capsys):
    root = corpus(tmp_path)
    db = tmp_path / "db"
    assert (
        main(["register", "code", str(root), "--field", "language=meta.language", "--quiet", "--db", str(db)])
        == 0
    )
    capsys.readouterr()
    assert main(["datasets", "--db", str(db), "--json"]) == 0
    assert [d["name"] for d in json.loads(capsys.readouterr().out)] == ["code"]
    # after the command wins over before it; nested `jobs ACTION` takes them too
    assert main(["--db", str(tmp_path / "other"), "datasets", "--db", str(db)]) == 0
    assert "code: 2 files, 5 samples" in capsys.readouterr().out
    assert main(["jobs", "list", "--db", str(db)]) == 0
    assert "no jobs saved" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [
        ["datasets"],
        ["properties"],
        ["remove", "code"],
        ["explain", "--by", "language"],
        ["report", "job"],
        ["jobs"],
        ["jobs", "show", "job"],
        ["jobs", "delete", "job"],
        ["tokenize", "code", "--tokenizer", "hf:tok.json"],
    ],
)
def test_a_mistyped_db_is_an_error_not_a_new_catalog(tmp_path, argv, monkeypatch):
    root = corpus(tmp_path)
    db = tmp_path / "db"
    assert register(db, root) == 0
    typo = tmp_path / "dbb"
    with pytest.raises(SystemExit) as exit_info:
        main(["--db", str(typo), *argv])
    message = str(exit_info.value.code)
    assert str(typo) in message and "does not exist" in message and "register" in message
    assert not typo.exists()
    # a directory that holds no catalog is refused the same way, and stays empty
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("MIXTERA_DB", str(tmp_path / "empty"))
    with pytest.raises(SystemExit, match="holds no catalog"):
        main(argv)
    assert list((tmp_path / "empty").iterdir()) == []


def test_no_catalog_named_says_how_to_name_one(monkeypatch):
    monkeypatch.delenv("MIXTERA_DB", raising=False)
    with pytest.raises(SystemExit, match="--db DIR .*--server HOST:PORT"):
        main(["datasets"])
    with pytest.raises(SystemExit, match="--token-file goes with --server"):
        main(["--db", "x", "--token-file", "t", "datasets"])
    with pytest.raises(SystemExit, match="--server wants HOST:PORT"):
        main(["--server", "localhost", "datasets"])


def test_errors_use_cli_wording(tmp_path, capsys):
    root = corpus(tmp_path)
    db = tmp_path / "db"
    assert register(db, root) == 0
    capsys.readouterr()
    assert register(db, root) == 1
    err = capsys.readouterr().err
    assert "DatasetExistsError" in err and "add --replace to re-register it" in err
    assert "replace=True" not in err
    assert register(db, root, "--replace") == 0
    write_jsonl(tmp_path / "bad" / "x.jsonl", ['{"meta": {"language": "c"}}', "{not json"])
    assert (
        main(["--db", str(db), "register", "bad", str(tmp_path / "bad"), "--field", "l=meta.language"]) == 1
    )
    err = capsys.readouterr().err
    assert "x.jsonl:line 2" in err and "register with --on-error skip" in err and "on_error=" not in err
    assert (
        main(["--db", str(db), "register", "bad", str(tmp_path / "bad"), "--field", "l=meta.language"]) == 1
    )
    assert "--field language=meta.language" not in capsys.readouterr().err
    assert main(["--db", str(db), "report", "nope"]) == 1
    err = capsys.readouterr().err
    assert "no job 'nope'" in err and "`mixtera jobs` lists the jobs" in err and "execute()" not in err


def test_a_field_mapping_that_matches_nothing_is_a_warning(tmp_path, capsys):
    write_jsonl(
        tmp_path / "d" / "a.jsonl",
        [{"meta": {"language": "python", "license": "mit" if i < 3 else None}} for i in range(5)],
    )
    db = str(tmp_path / "db")
    argv = ["--db", db, "register", "x", str(tmp_path / "d"), "--quiet", "--field", "license=meta.license"]
    assert main([*argv, "--field", "language=meta.langauge", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["values_found"] == {"language": 0, "license": 3}
    assert report["warnings"] == [
        "property 'language' (mapped to 'meta.langauge') has no value in any of the 5 samples of 'x': "
        "check the field path (a misspelled path matches nothing)"
    ]
    assert main([*argv, "--field", "language=meta.language", "--replace"]) == 0
    out = capsys.readouterr().out
    assert "registered 'x': 1 files, 5 samples" in out and "warning" not in out
    # the Python API warns too (and the report says it)
    from mixtera_core import MixteraClient
    from mixtera_core.errors import RegistrationWarning

    with MixteraClient.local(db) as client, pytest.warns(RegistrationWarning, match="'meta.lang'"):
        report = client.register_dataset(
            "y", tmp_path / "d", parser_options={"language": {"path": "meta.lang"}, "license": "meta.license"}
        )
    assert "warning: property 'language' (mapped to 'meta.lang')" in str(report)
    with MixteraClient.local(db) as client, pytest.warns(RegistrationWarning, match="matched no file path"):
        report = client.register_dataset(
            "z",
            tmp_path / "d",
            parser_options={"language": "meta.language", "crawl": {"path_regex": r"crawl-(\d+)/"}},
        )
    assert report.values_found == {"language": 5, "crawl": 0}
    assert report.warnings == [
        "property 'crawl' (path_regex 'crawl-(\\d+)/') has no value in any of the 5 samples of 'z': "
        "the regex matched no file path; check it against the paths"
    ]


def test_every_data_command_prints_json(tmp_path, capsys):
    from mixtera_core import MixteraClient, Query

    root = corpus(tmp_path)
    db = str(tmp_path / "db")
    assert (
        main(["--db", db, "register", "code", str(root), "--field", "language=meta.language", "--json"]) == 0
    )
    assert json.loads(capsys.readouterr().out)["samples"] == 5
    with MixteraClient.local(db) as client:
        job = client.execute(Query.for_job("j"), {"language=python": 0.6, "language=c": 0.4}, chunk_size=4)
        streamed = collections.Counter(s.key for s in client.stream(job))  # stops when c runs dry
    assert sum(streamed.values()) >= 4
    outputs = {}
    for argv in (
        ["datasets"],
        ["properties"],
        ["explain", "--by", "language"],
        ["explain", "--mixture", "language=python:1", "--mixture", "language=c:0", "--per-step", "2"],
        ["report", "j"],
        ["jobs"],
        ["jobs", "show", "j"],
        ["plugins"],
    ):
        assert main(["--db", db, *argv, "--json"]) == 0
        outputs[" ".join(argv[:2])] = json.loads(capsys.readouterr().out)
    assert outputs["datasets"][0]["num_samples"] == 5
    assert outputs["properties"] == {"language": {"c": 2, "python": 3}}
    assert {c["key"]: c["samples"] for c in outputs["explain --by"]["components"]} == {
        "language=c": 2,
        "language=python": 3,
    }
    # a component that never runs dry: JSON has no infinity, it is null
    dry = {c["key"]: c["dry_step"] for c in outputs["explain --mixture"]["components"]}
    assert dry == {"language=c": None, "language=python": 1.5}
    report = outputs["report j"]
    assert dict(zip(report["keys"], report["delivered"], strict=True)) == streamed
    assert report["delivered_share"][report["keys"].index("language=c")] == streamed["language=c"] / sum(
        streamed.values()
    )
    assert [j["job_id"] for j in outputs["jobs"]] == ["j"]
    assert outputs["jobs"][0]["delivered"] == sum(streamed.values())
    assert outputs["jobs show"]["info"]["spec"]["chunk_size"] == 4
    assert outputs["jobs show"]["mixture_history"] == [[0, {"language=python": 0.6, "language=c": 0.4}]]
    assert {"name": "jsonl", "provider": "mixtera_plugins.formats"} in outputs["plugins"]["format"]
    assert main(["--db", db, "jobs", "delete", "j", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"deleted": "j"}
    assert main(["--db", db, "remove", "code", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"removed": "code"}


def test_jobs_list_show_delete(tmp_path, capsys):
    from mixtera_core import MixteraClient, Query
    from mixtera_core.mixture import DynamicMixture

    root = corpus(tmp_path)
    db = tmp_path / "db"
    assert register(db, root) == 0
    with MixteraClient.local(db) as client:
        static = client.execute(
            Query.for_job("static"), {"language=python": 0.5, "language=c": 0.5}, chunk_size=2
        )
        taken = [s for _, s in zip(range(4), client.stream(static), strict=False)]
        dynamic = client.execute(
            Query.for_job("dyn"),
            DynamicMixture({"language=python": 0.5, "language=c": 0.5}, algorithm="loss_weighted"),
            chunk_size=2,
            feedback_delay=1,
            on_exhausted="repeat",
        )
        client.feedback(dynamic, 1, [4.0, 1.0], [1.0, 1.0], position=0)
    assert len(taken) == 4
    capsys.readouterr()
    assert main(["--db", str(db), "jobs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["dyn", "static"]
    assert "dynamic (loss_weighted) mixture" in lines[0] and "1 mixture changes" in lines[0]
    assert "static mixture, chunks of 2" in lines[1] and "4 samples delivered" in lines[1]
    assert main(["--db", str(db), "jobs", "show", "dyn"]) == 0
    out = capsys.readouterr().out
    assert "mixture history" in out and "  0: language=python 50.00%, language=c 50.00%" in out
    assert "  2: " in out  # the change lands at position + 1 + feedback_delay
    assert main(["--db", str(db), "jobs", "delete", "static"]) == 0
    assert capsys.readouterr().out.strip() == "deleted job 'static'"
    assert not (db / "jobs" / "static").exists()
    assert main(["--db", str(db), "jobs", "show", "static"]) == 1
    err = capsys.readouterr().err
    assert "JobNotFoundError: no job 'static'" in err and "jobs there: dyn" in err
    assert main(["--db", str(db), "jobs", "delete", "../db"]) == 1
    assert "job id '../db' must be" in capsys.readouterr().err
    # deleted means gone: the same spec builds a new job
    with MixteraClient.local(db) as client:
        again = client.execute(
            Query.for_job("static"), {"language=python": 0.5, "language=c": 0.5}, chunk_size=2
        )
        assert client.report(again).delivered == [0, 0]


def _hold_catalog(db):
    """Another process that opens the catalog (as a trainer's rank 0 does) until stopped."""
    code = (
        "import sys, time; from mixtera_core import MixteraClient; "
        "c = MixteraClient.local(sys.argv[1], rank=0); print('open', flush=True); sys.stdin.read()"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(db)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "open"
    return proc


def test_a_catalog_held_by_another_process(tmp_path, capsys):
    from mixtera_core import MixteraClient, Query

    root = corpus(tmp_path)
    db = tmp_path / "db"
    assert register(db, root) == 0
    with MixteraClient.local(db) as client:
        client.execute(Query.for_job("j"), {"language=python": 1.0}, chunk_size=2)
    capsys.readouterr()
    holder = _hold_catalog(db)
    try:
        with pytest.raises(SystemExit) as exit_info:
            main(["--db", str(db), "datasets"])
        message = str(exit_info.value.code)
        assert "is open in another process" in message and "--server HOST:PORT" in message
        assert "Traceback" not in message and "IO Error" not in message
        # reading saved jobs needs no DuckDB connection
        assert main(["--db", str(db), "jobs"]) == 0
        assert capsys.readouterr().out.startswith("j: samples, static mixture")
        assert main(["--db", str(db), "report", "j"]) == 0
        assert "job j: 0 samples delivered" in capsys.readouterr().out
        with pytest.raises(SystemExit, match="open in another process"):
            main(["--db", str(db), "jobs", "delete", "j"])
        assert (db / "jobs" / "j" / "job.json").exists()
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)


# ---------------------------------------------------------------------- --server: a real server process


@pytest.fixture
def served(tmp_path):
    """A corpus under tmp_path/data and a mixtera-server on loopback (token required) over
    tmp_path/db, with tmp_path/data as its allowed root."""
    from test_server import Server

    root = corpus(tmp_path / "data")
    token = tmp_path / "token"
    token.write_text("cli-token\n")
    server = Server(tmp_path / "db", "--token-file", str(token), "--allowed-root", str(tmp_path / "data"))
    try:
        yield server, root, token
    finally:
        assert server.stop() == 0


def test_every_command_works_against_a_server(served, tmp_path, capsys, monkeypatch):
    from mixtera_core import MixteraClient, Query

    server, root, token = served
    target = ["--server", f"127.0.0.1:{server.port}", "--token-file", str(token)]
    # a relative location is the user's, not the server's working directory
    monkeypatch.chdir(root.parent)
    assert main([*target, "register", "code", "d", "--field", "language=meta.language", "--quiet"]) == 0
    assert "registered 'code': 2 files, 5 samples" in capsys.readouterr().out
    assert main(["datasets", *target]) == 0  # options after the command
    assert f"code: 2 files, 5 samples (jsonl, fields) {root}" in capsys.readouterr().out
    assert main([*target, "properties", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"language": {"c": 2, "python": 3}}
    assert main([*target, "explain", "--where", "language==c"]) == 0
    assert "language=c" in capsys.readouterr().out
    assert main([*target, "register", "code", "d"]) == 1
    assert "e.g. --field language=meta.language" in capsys.readouterr().err
    assert main([*target, "register", "code", "d", "--field", "language=meta.language"]) == 1
    assert "add --replace to re-register it" in capsys.readouterr().err
    # a warning for a mapping that matches nothing comes back from the server
    assert main([*target, "register", "typo", "d", "--field", "language=meta.lang", "--quiet"]) == 0
    assert "warning: property 'language' (mapped to 'meta.lang') has no value" in capsys.readouterr().out
    assert main([*target, "remove", "typo"]) == 0
    capsys.readouterr()
    outside = write_jsonl(tmp_path / "elsewhere" / "x.jsonl", [{"text": "t", "meta": {"language": "c"}}])
    assert main([*target, "register", "out", str(outside), "--field", "language=meta.language"]) == 1
    err = capsys.readouterr().err
    assert "PermissionDeniedError" in err and "only files under its --allowed-root directories" in err

    # while the server holds the catalog, --db on it is refused with a pointer to --server
    with pytest.raises(SystemExit, match="open in another process.*--server HOST:PORT"):
        main(["--db", str(tmp_path / "db"), "datasets"])

    remote = MixteraClient.remote("127.0.0.1", server.port, "cli-token")
    try:
        job = remote.execute(Query.for_job("j"), {"language=python": 0.5, "language=c": 0.5}, chunk_size=2)
        keys = [s.key for _, s in zip(range(4), remote.stream(job), strict=False)]
        remote.report(job)  # sends the delivered counts
    finally:
        remote.close()
    assert main([*target, "jobs", "--json"]) == 0
    (info,) = json.loads(capsys.readouterr().out)
    assert info["job_id"] == "j" and info["delivered"] == len(keys) == 4
    assert main([*target, "jobs", "show", "j"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("j: samples, static mixture, chunks of 2") and "job j: 4 samples delivered" in out
    assert main([*target, "report", "j", "--json"]) == 0
    assert sum(json.loads(capsys.readouterr().out)["delivered"]) == 4
    assert main([*target, "jobs", "delete", "j"]) == 0
    assert not (tmp_path / "db" / "jobs" / "j").exists()
    capsys.readouterr()
    assert main([*target, "jobs", "show", "j"]) == 1
    assert "no job 'j'" in capsys.readouterr().err
    assert main([*target, "jobs"]) == 0
    assert "no jobs saved" in capsys.readouterr().out
    assert main([*target, "plugins"]) == 0
    captured = capsys.readouterr()
    assert "  jsonl " in captured.out and "the server at" in captured.err


def test_server_errors_say_what_to_do(served, capsys):
    server, _, token = served
    assert main(["--server", f"127.0.0.1:{server.port}", "datasets"]) == 1
    err = capsys.readouterr().err
    assert "AuthenticationError" in err and "--token-file" in err
    assert (
        main(["--server", f"127.0.0.1:{server.port}", "--token-file", str(token), "jobs", "show", "x"]) == 1
    )
    assert "no job 'x'" in capsys.readouterr().err
    server.stop()
    assert main(["--server", f"127.0.0.1:{server.port}", "--token-file", str(token), "datasets"]) == 1
    err = capsys.readouterr().err
    assert "ServerUnavailableError" in err and f"Is mixtera-server running at 127.0.0.1:{server.port}?" in err


def test_demo_over_a_server(served, tmp_path, capsys):
    server, _, token = served
    target = ["--server", f"127.0.0.1:{server.port}", "--token-file", str(token)]
    assert main([*target, "demo", "--out", str(tmp_path / "data" / "demo"), "--max-samples", "20"]) == 0
    out = capsys.readouterr().out
    assert (
        "registered 'code'" in out
        and "streamed" in out
        and f"`mixtera {' '.join(target)} report demo-mix`" in out
    )
    assert not (tmp_path / "data" / "demo" / "db").exists()  # the server's catalog, not a local one
    assert main([*target, "jobs"]) == 0
    assert capsys.readouterr().out.startswith("demo-mix: samples, static mixture")


def test_tls_server_with_tls_ca(tmp_path, capsys):
    from test_server import Server

    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        + ["-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost"]
        + ["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )
    root = corpus(tmp_path)
    server = Server(
        tmp_path / "db", "--tls-cert", str(cert), "--tls-key", str(key), "--allowed-root", str(root)
    )
    try:
        target = ["--server", f"127.0.0.1:{server.port}", "--tls-ca", str(cert)]
        assert (
            main([*target, "register", "code", str(root), "--field", "language=meta.language", "--quiet"])
            == 0
        )
        assert main(["datasets", *target]) == 0
        assert "code: 2 files, 5 samples" in capsys.readouterr().out
        assert main(["--server", f"127.0.0.1:{server.port}", "datasets"]) == 1  # TLS only
        assert "if it serves TLS, pass --tls-ca" in capsys.readouterr().err
    finally:
        assert server.stop() == 0


def test_register_an_s3_location_with_storage_options(tmp_path, capsys, monkeypatch):
    pytest.importorskip("s3fs")
    pytest.importorskip("moto")
    from s3_server import MotoServer

    root = corpus(tmp_path / "data")
    server = MotoServer()
    try:
        server.upload_tree(root, "bucket", "d")
        for name in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            monkeypatch.delenv(name, raising=False)  # the options alone say where and with whose keys
        secret = "s3cr3t-only-in-this-process"
        options = json.dumps({"endpoint_url": server.endpoint, "key": "testing", "secret": secret})
        db = str(tmp_path / "db")
        argv = ["register", "code", "s3://bucket/d", "--field", "language=meta.language", "--quiet"]
        assert main(["--db", db, *argv, "--storage-options", options]) == 0
        assert "registered 'code': 2 files, 5 samples" in capsys.readouterr().out
        assert main(["--db", db, "properties", "--json"]) == 0
        assert json.loads(capsys.readouterr().out) == {"language": {"c": 2, "python": 3}}
        assert not any(secret.encode() in p.read_bytes() for p in (tmp_path / "db").rglob("*") if p.is_file())
        with pytest.raises(SystemExit, match="--storage-options goes with --db"):
            main(["--server", "127.0.0.1:1", *argv, "--storage-options", options])
        with pytest.raises(SystemExit, match="--storage-options must be a JSON object"):
            main(["--db", db, *argv, "--storage-options", "[]"])
    finally:
        server.stop()
