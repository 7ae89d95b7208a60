"""Registration and tokenization on a real Ray cluster: a head started by ``ray.init`` on this
machine and a worker node started separately with ``ray start --address``, both with 2 CPUs.

A third-party plugin (``slow_fields``, a handcrafted distribution with an entry point in the
``mixtera`` group) is installed on the cluster's nodes through their PYTHONPATH; it writes a
marker per file it scans (naming the node) and, on the nodes, sleeps a little per file so that
a run can be interrupted or have its worker killed while tasks are running.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from conftest import hetero_corpus, write_jsonl

ray = pytest.importorskip("ray")

from mixtera_core import MixteraClient, Query  # noqa: E402
from mixtera_core.errors import WorkerPluginError  # noqa: E402
from mixtera_core.hookspecs import hookimpl  # noqa: E402
from mixtera_core.plugins import PluginManager  # noqa: E402
from mixtera_core.ray_executor import RayExecutor  # noqa: E402
from mixtera_core.token_index import TokenIndex  # noqa: E402
from mixtera_plugins.parsers import FieldsParser  # noqa: E402

PLUGIN = textwrap.dedent(
    """
    import os, time, uuid
    from mixtera_core.hookspecs import hookimpl
    from mixtera_plugins.parsers import FieldsParser

    class SlowFieldsParser(FieldsParser):
        name = "slow_fields"

        def file_properties(self, path):
            marks = os.environ.get("MIXTERA_TEST_MARKS")
            if marks:  # only on the cluster's nodes
                node = os.environ.get("MIXTERA_TEST_NODE", "?")
                with open(os.path.join(marks, node + "-" + uuid.uuid4().hex), "w") as fh:
                    fh.write(path)
                time.sleep(float(os.environ.get("MIXTERA_TEST_SLOW", "0")))
            return super().file_properties(path)

    @hookimpl
    def mixtera_parsers():
        return [SlowFieldsParser]
    """
)


def install_plugin(site: Path) -> None:
    """A distribution on ``site`` whose entry point (group ``mixtera``) provides ``slow_fields``."""
    site.mkdir(parents=True, exist_ok=True)
    (site / "mixtera_cluster_test_plugin.py").write_text(PLUGIN)
    dist = site / "mixtera_cluster_test_plugin-1.0.dist-info"
    dist.mkdir(exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mixtera-cluster-test-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[mixtera]\ncluster_test = mixtera_cluster_test_plugin\n")


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def kill_tree(proc: subprocess.Popen) -> None:
    for pid in [proc.pid, *descendants(proc.pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=30)


class Cluster:
    def __init__(self, root: Path) -> None:
        self.site = root / "site"
        self.marks = root / "marks"
        self.marks.mkdir()
        install_plugin(self.site)
        node_env = {
            "PYTHONPATH": os.pathsep.join([str(self.site), os.environ.get("PYTHONPATH", "")]).rstrip(
                os.pathsep
            ),
            "MIXTERA_TEST_MARKS": str(self.marks),
        }
        saved = {k: os.environ.get(k) for k in [*node_env, "MIXTERA_TEST_NODE", "MIXTERA_TEST_SLOW"]}
        os.environ.update(node_env, MIXTERA_TEST_NODE="head", MIXTERA_TEST_SLOW="0.2")
        try:  # the head's processes inherit this environment
            ctx = ray.init(
                address="local",
                num_cpus=2,
                include_dashboard=False,
                log_to_driver=False,
                # a dead node is noticed after ~3 s instead of ~15 s
                _system_config={"health_check_period_ms": 500, "health_check_failure_threshold": 6},
            )
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        self.address = ctx.address_info["gcs_address"]
        ray_cli = os.path.join(os.path.dirname(sys.executable), "ray")
        self.worker = subprocess.Popen(
            [
                ray_cli,
                "start",
                f"--address={self.address}",
                "--num-cpus=2",
                "--block",
                "--disable-usage-stats",
            ],
            env={**os.environ, **node_env, "MIXTERA_TEST_NODE": "worker", "MIXTERA_TEST_SLOW": "1.5"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 120
        while sum(n["Alive"] for n in ray.nodes()) < 2:
            assert self.worker.poll() is None and time.monotonic() < deadline, "the worker node did not join"
            time.sleep(0.2)
        # the driver has the plugin too (it needs the parser's schema); installed the same way
        sys.path.insert(0, str(self.site))
        self.plugins = PluginManager()
        sys.path.remove(str(self.site))

    def marks_by_path(self) -> dict[str, list[str]]:
        """path -> the nodes that started scanning it (one entry per scan)."""
        out: dict[str, list[str]] = {}
        for m in sorted(self.marks.iterdir()):
            out.setdefault(m.read_text(), []).append(m.name.split("-", 1)[0])
        return out

    def clear_marks(self) -> None:
        for m in self.marks.iterdir():
            m.unlink()

    def stop(self) -> None:
        if self.worker.poll() is None:
            kill_tree(self.worker)
        ray.shutdown()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if ray.is_initialized():
        pytest.skip("this process is connected to another Ray instance")
    c = Cluster(tmp_path_factory.mktemp("ray"))
    yield c
    c.stop()


def snapshot(client: MixteraClient) -> dict:
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


def webdataset_shard(path: Path, n: int, lang: str) -> None:
    import io
    import json
    import tarfile

    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tf:
        for i in range(n):
            for ext, data in (
                ("txt", f"caption {i} of {path.name} " * (1 + i % 4)),
                ("json", json.dumps({"lang": lang, "i": i})),
            ):
                raw = data.encode()
                info = tarfile.TarInfo(f"s{i:04d}.{ext}")
                info.size = len(raw)
                tf.addfile(info, io.BytesIO(raw))


def multi_format_corpus(root: Path) -> list[tuple]:
    corpus = hetero_corpus(root / "hetero", per_key=200)
    for k in range(3):
        webdataset_shard(root / "wds" / f"shard-{k}.tar", 30 + k, "img")
    return [*corpus["register"], ("wds", str(root / "wds"), "webdataset", {"lang": "json.lang"})]


def register_all(client: MixteraClient, datasets: list[tuple], **kwargs) -> list:
    return [
        client.register_dataset(name, loc, format=fmt, parser_options=fields, **kwargs)
        for name, loc, fmt, fields in datasets
    ]


def stream_of(client: MixteraClient, n: int = 400) -> list:
    job = client.execute(
        Query.for_job("same"),
        {"lang=python": 0.3, "lang=c": 0.3, "lang=uk": 0.2, "lang=img": 0.2},
        chunk_size=64,
        seed=3,
        on_exhausted="repeat",
    )
    return [(s.key, s.data) for s in itertools.islice(client.stream(job), n)]


def test_ray_registration_matches_the_local_executor(cluster, tmp_path):
    datasets = multi_format_corpus(tmp_path / "data")
    with MixteraClient.local(tmp_path / "local") as local, MixteraClient.local(tmp_path / "ray") as remote:
        local_reports = register_all(local, datasets)
        # one file per task for some datasets, grouped files for the others
        ray_reports = [
            remote.register_dataset(
                name, loc, format=fmt, parser_options=fields, executor=RayExecutor(files_per_task=1 + k % 2)
            )
            for k, (name, loc, fmt, fields) in enumerate(datasets)
        ]
        assert [(r.files, r.samples) for r in ray_reports] == [(r.files, r.samples) for r in local_reports]
        assert all(r.executor == "ray" for r in ray_reports) and sum(r.files for r in ray_reports) == 8
        assert snapshot(remote) == snapshot(local)  # files, read indexes, sizes, fingerprints, samples
        assert remote.properties() == local.properties()
        assert stream_of(remote) == stream_of(local)


def test_ray_token_index_matches_the_local_executor(cluster, tmp_path, small_bpe):
    datasets = multi_format_corpus(tmp_path / "data")
    with MixteraClient.local(tmp_path / "local") as local, MixteraClient.local(tmp_path / "ray") as remote:
        register_all(local, datasets)
        register_all(remote, datasets)
        names = [d[0] for d in datasets]
        lt = local.tokenize(names, ("hf", str(small_bpe)))
        rt = remote.tokenize(names, ("hf", str(small_bpe)), executor="ray")
        assert (rt.fingerprint, rt.files_tokenized, rt.samples, rt.tokens) == (
            lt.fingerprint,
            lt.files_tokenized,
            lt.samples,
            lt.tokens,
        )
        ldir, rdir = Path(lt.directory), Path(rt.directory)
        arrays = sorted(p.name for p in ldir.iterdir() if p.suffix in (".tokens", ".offsets", ".present"))
        assert arrays and arrays == sorted(
            p.name for p in rdir.iterdir() if p.suffix in (".tokens", ".offsets", ".present")
        )
        for name in arrays:
            assert (ldir / name).read_bytes() == (rdir / name).read_bytes(), name
        index = TokenIndex.open(tmp_path / "ray", rt.fingerprint)
        assert index is not None and index.covers({f.id: f.path for f in remote.catalog.files().values()})


def test_a_plugin_missing_on_the_workers_fails_with_its_name(cluster, tmp_path):
    class DriverOnlyParser(FieldsParser):
        name = "driver_only"

    class Plugin:
        @hookimpl
        def mixtera_parsers(self) -> list:
            return [DriverOnlyParser]

    write_jsonl(tmp_path / "d" / "a.jsonl", [{"text": "x", "lang": "en"}] * 3)
    with MixteraClient.local(tmp_path / "db", plugins=PluginManager(extra=[Plugin()])) as client:
        # the driver has it: locally it works
        client.register_dataset(
            "local", tmp_path / "d", parser="driver_only", parser_options={"lang": "lang"}
        )
        with pytest.raises(
            WorkerPluginError, match=r"parser plugin 'driver_only' is not installed on the Ray worker"
        ):
            client.register_dataset(
                "remote",
                tmp_path / "d",
                parser="driver_only",
                parser_options={"lang": "lang"},
                executor="ray",
            )
        with pytest.raises(WorkerPluginError, match="on every node of the Ray cluster"):
            client.register_dataset(
                "remote",
                tmp_path / "d",
                parser="driver_only",
                parser_options={"lang": "lang"},
                executor="ray",
            )
        assert [d.name for d in client.list_datasets()] == ["local"]


def test_cli_register_and_tokenize_with_executor_ray(cluster, tmp_path, capsys, small_bpe):
    from mixtera_core.cli import main

    write_jsonl(tmp_path / "d" / "a.jsonl", [{"text": f"t{i}", "lang": "en"} for i in range(5)])
    write_jsonl(tmp_path / "d" / "b.jsonl", [{"text": f"u{i}", "lang": "de"} for i in range(3)])
    db = str(tmp_path / "db")
    assert (
        main(["--db", db, "register", "d", str(tmp_path / "d"), "--field", "lang=lang", "--executor", "ray"])
        == 0
    )
    out, err = capsys.readouterr()
    assert "registered 'd': 2 files, 8 samples" in out and "samples/s, ray)" in err
    assert (
        main(["--db", db, "tokenize", "d", "--tokenizer", f"hf:{small_bpe}", "--executor", "ray", "--quiet"])
        == 0
    )
    assert "tokenized d: 2 files" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="--ray-address goes with --executor ray"):
        main(["--db", db, "register", "e", str(tmp_path / "d"), "--ray-address", "127.0.0.1:1"])


def slow_corpus(root: Path, files: int) -> Path:
    for k in range(files):
        write_jsonl(
            root / f"part{k:02d}.jsonl",
            [{"text": f"{k} {i} " * (1 + i % 3), "lang": ["en", "de"][(k + i) % 2]} for i in range(25)],
        )
    return root


class Interrupted(Exception):
    pass


def test_an_interrupted_ray_registration_resumes(cluster, tmp_path):
    root = slow_corpus(tmp_path / "data", 16)
    kwargs = {"parser": "slow_fields", "parser_options": {"lang": "lang"}}
    finished: list[str] = []

    def interrupt(path: str, n: int, total: int) -> None:
        finished.append(path)
        if n == 5:
            raise Interrupted()

    cluster.clear_marks()
    with MixteraClient.local(tmp_path / "db", plugins=cluster.plugins) as client:
        with pytest.raises(Interrupted):
            client.register_dataset(
                "d", root, executor=RayExecutor(files_per_task=1), progress=interrupt, **kwargs
            )
        assert client.list_datasets() == []
        cluster.clear_marks()
        report = client.register_dataset("d", root, executor="ray", **kwargs)
        assert report.resumed >= 5 and report.files == 16
        rescanned = cluster.marks_by_path()
        assert not set(rescanned) & set(finished)  # finished files were not scanned again
        assert len(rescanned) == 16 - report.resumed
        with MixteraClient.local(tmp_path / "local", plugins=cluster.plugins) as local:
            local.register_dataset("d", root, **kwargs)
            assert snapshot(local) == snapshot(client)


def test_a_worker_node_killed_mid_registration(cluster, tmp_path):
    """Runs last: it kills the worker node. Its tasks are retried on the head; same catalog."""
    root = slow_corpus(tmp_path / "data", 40)  # ~4 s on the head alone: the worker node gets tasks
    kwargs = {"parser": "slow_fields", "parser_options": {"lang": "lang"}}
    cluster.clear_marks()
    result: dict = {}
    with MixteraClient.local(tmp_path / "db", plugins=cluster.plugins) as client:

        def register() -> None:
            try:
                result["report"] = client.register_dataset(
                    "d", root, executor=RayExecutor(files_per_task=1), **kwargs
                )
            except BaseException as e:  # re-raised below
                result["error"] = e

        thread = threading.Thread(target=register)
        thread.start()
        deadline = time.monotonic() + 120
        while not any(m.name.startswith("worker-") for m in cluster.marks.iterdir()):
            assert thread.is_alive() and time.monotonic() < deadline, (
                f"no task ran on the worker node: {result}, {[(n['Alive'], n['Resources']) for n in ray.nodes()]}, "
                f"worker node process: {cluster.worker.poll()}"
            )
            time.sleep(0.01)
        kill_tree(cluster.worker)  # the worker node is mid-file (it sleeps 1.5 s per file)
        thread.join(timeout=240)
        assert not thread.is_alive()
        if "error" in result:
            raise result["error"]
        assert result["report"].files == 40
        marks = cluster.marks_by_path()
        retried = [p for p, nodes in marks.items() if "worker" in nodes and "head" in nodes]
        assert retried, marks  # a file started on the killed node was scanned again on the head
        with MixteraClient.local(tmp_path / "local", plugins=cluster.plugins) as local:
            local.register_dataset("d", root, **kwargs)
            assert snapshot(local) == snapshot(client)
            assert stream_of_single(local) == stream_of_single(client)


def stream_of_single(client: MixteraClient) -> list:
    job = client.execute(Query.for_job("j"), {"lang=en": 0.5, "lang=de": 0.5}, chunk_size=32, seed=1)
    return [(s.key, s.data) for s in itertools.islice(client.stream(job), 300)]
