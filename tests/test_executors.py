"""Registration executors without Ray: the local executor's resume, error order, the spill
directory, and what ``executor="ray"`` says when Ray is not installed."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest
from conftest import write_jsonl

from mixtera_core import MixteraClient
from mixtera_core.errors import FileChangedError, MalformedRecordError, UnknownFormatError
from mixtera_core.executors import REGISTRATIONS_DIR
from mixtera_core.hookspecs import hookimpl
from mixtera_core.plugins import PluginManager
from mixtera_plugins.parsers import FieldsParser

FIELDS = {"lang": "lang"}
SCANNED: Counter[str] = Counter()


class CountingParser(FieldsParser):
    """The fields parser, counting the files it is asked about (one call per scan of a file)."""

    name = "counting_fields"

    def file_properties(self, path: str) -> dict:
        SCANNED[path] += 1
        return super().file_properties(path)


class _Plugin:
    @hookimpl
    def mixtera_parsers(self) -> list:
        return [CountingParser]


def corpus(root: Path, files: int = 6) -> Path:
    for k in range(files):
        write_jsonl(
            root / f"part{k:02d}.jsonl.zst",
            [
                {"text": f"doc {k}-{i} " * (i % 5 + 1), "lang": ["en", "de", "fr"][(k + i) % 3]}
                for i in range(40)
            ],
            "zst",
        )
    return root


def snapshot(client: MixteraClient) -> dict:
    """Every catalog table, file ids and paths included (the data, not the version counter)."""
    con = client.catalog.cursor()
    out = {}
    for table, order in (
        ("datasets", "id"),
        ("files", "id"),
        ("samples", "file_id, sample_index"),
        ("properties", "name"),
        ("dataset_properties", "dataset_id, name"),
    ):
        out[table] = con.execute(f"SELECT * FROM {table} ORDER BY {order}").fetchall()
    return out


@pytest.fixture
def counting_client(tmp_path):
    SCANNED.clear()
    c = MixteraClient.local(tmp_path / "db", plugins=PluginManager(extra=[_Plugin()]))
    yield c
    c.close()


class Interrupted(Exception):
    pass


def test_interrupted_registration_resumes_without_rescanning_finished_files(counting_client, tmp_path):
    root = corpus(tmp_path / "data", files=6)
    done: list[str] = []

    def stop_after_three(path: str, n: int, total: int) -> None:
        done.append(path)
        if n == 3:
            raise Interrupted()

    with pytest.raises(Interrupted):
        counting_client.register_dataset(
            "d", root, parser="counting_fields", parser_options=FIELDS, workers=1, progress=stop_after_three
        )
    assert counting_client.list_datasets() == []  # nothing half-written
    spill = tmp_path / "db" / REGISTRATIONS_DIR
    assert spill.is_dir()
    first_run = Counter(SCANNED)
    SCANNED.clear()
    report = counting_client.register_dataset("d", root, parser="counting_fields", parser_options=FIELDS)
    assert report.resumed == 3 and (report.files, report.samples) == (6, 240)
    # the three finished files were not scanned again; every other file exactly once
    assert not set(SCANNED) & set(done)
    assert sorted(SCANNED) == sorted({str(p) for p in root.iterdir()} - set(done))
    assert set(SCANNED.values()) == {1} and sum(first_run.values()) >= 3
    assert not spill.exists()  # removed once committed

    # the same catalog as one uninterrupted registration
    with MixteraClient.local(tmp_path / "fresh", plugins=PluginManager(extra=[_Plugin()])) as fresh:
        fresh.register_dataset("d", root, parser="counting_fields", parser_options=FIELDS)
        assert snapshot(fresh) == snapshot(counting_client)


def test_a_file_changed_since_the_interruption_is_scanned_again(counting_client, tmp_path):
    root = corpus(tmp_path / "data", files=4)

    def stop(path: str, n: int, total: int) -> None:
        if n == 4:
            raise Interrupted()

    with pytest.raises(Interrupted):
        counting_client.register_dataset(
            "d", root, parser="counting_fields", parser_options=FIELDS, workers=1, progress=stop
        )
    changed = root / "part01.jsonl.zst"
    write_jsonl(changed, [{"text": "new", "lang": "xx"}] * 7, "zst")
    SCANNED.clear()
    report = counting_client.register_dataset("d", root, parser="counting_fields", parser_options=FIELDS)
    assert report.resumed == 3 and dict(SCANNED) == {str(changed): 1}
    assert report.samples == 3 * 40 + 7 and counting_client.properties()["lang"]["xx"] == 7

    # other settings: the spilled scans are not used
    def stop_again(path: str, n: int, total: int) -> None:
        if n == 4:
            raise Interrupted()

    with pytest.raises(Interrupted):
        counting_client.register_dataset(
            "e", root, parser="counting_fields", parser_options=FIELDS, workers=1, progress=stop_again
        )
    SCANNED.clear()
    report = counting_client.register_dataset(
        "e", root, parser="counting_fields", parser_options={"language": "lang"}
    )
    assert report.resumed == 0 and len(SCANNED) == 4


def test_the_first_failing_file_in_path_order_is_reported(tmp_path, client):
    root = corpus(tmp_path / "data", files=8)
    for k in (2, 6):  # two malformed files: the error always names part02
        write_jsonl(root / f"part{k:02d}.jsonl.zst", [{"text": "ok", "lang": "en"}, "{broken"], "zst")
    for workers in (1, 2, 8):
        with pytest.raises(MalformedRecordError, match="part02"):
            client.register_dataset("d", root, parser_options=FIELDS, workers=workers)
    assert client.list_datasets() == []


def test_errors_survive_pickling():
    # scans that fail in another process (a Ray worker) come back as the same error
    for err in (
        MalformedRecordError("a.jsonl", "line 3", "bad JSON", "fix it"),
        FileChangedError("b.parquet", "it shrank"),
        UnknownFormatError("csv", ["jsonl", "parquet"]),
    ):
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is type(err) and str(back) == str(err) and back.__dict__ == err.__dict__


def test_ray_executor_without_ray_says_how_to_install_it(tmp_path):
    write_jsonl(tmp_path / "d" / "a.jsonl", [{"text": "x", "lang": "en"}])
    code = textwrap.dedent(
        """
        import sys
        sys.modules["ray"] = None  # as if Ray were not installed
        from mixtera_core import MixteraClient
        from mixtera_core.errors import MixteraError
        with MixteraClient.local(sys.argv[1]) as c:
            try:
                c.register_dataset("d", sys.argv[2], parser_options={"lang": "lang"}, executor="ray")
            except MixteraError as e:
                print(e)
            assert c.list_datasets() == []
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "db"), str(tmp_path / "d")],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "RAY_ADDRESS": ""},
    ).stdout
    assert 'pip install "mixtera[ray]"' in out


def test_unknown_executor_is_refused(client, tmp_path):
    write_jsonl(tmp_path / "d" / "a.jsonl", [{"text": "x", "lang": "en"}])
    with pytest.raises(ValueError, match="executor must be"):
        client.register_dataset("d", tmp_path / "d", parser_options=FIELDS, executor="dask")
