"""Register and stream a corpus that lives in S3: ``python examples/s3_example.py``.

1. builds the small demo corpus (:func:`mixtera_core.demo.build_demo_corpus`: jsonl.zst,
   parquet and webdataset shards) in a temporary directory;
2. without ``--endpoint``: starts moto's S3-compatible server (``moto_server``, from
   ``pip install "moto[server]"``) on 127.0.0.1 and points the AWS variables at it; with
   ``--endpoint URL`` it uses that store and the credentials of your environment instead;
3. uploads the shards to ``s3://BUCKET/demo/`` (``--bucket``, default ``mixtera-demo``);
4. registers the three datasets from their ``s3://`` URLs — Mixtera reads the objects with
   range requests and stores their ETags as fingerprints, nothing is downloaded whole;
5. runs a 40/20/40 mixture over ``language`` and prints what one stream delivered, then a
   checkpoint/resume that continues exactly where it stopped.

Needs ``pip install "mixtera[s3]"`` (s3fs) and, for the local server, ``moto[server]``.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mixtera_core import MixteraClient, Query
from mixtera_core.demo import build_demo_corpus


def start_moto() -> tuple[subprocess.Popen[bytes], str]:
    """moto_server on a free loopback port; returns the process and its endpoint URL."""
    exe = shutil.which("moto_server") or str(Path(sys.executable).with_name("moto_server"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stderr=subprocess.DEVNULL)
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    else:
        proc.kill()
        raise RuntimeError("moto_server did not start")
    # moto accepts any credentials; a real store reads yours from the environment or a profile
    os.environ.update(AWS_ACCESS_KEY_ID="demo", AWS_SECRET_ACCESS_KEY="demo", AWS_DEFAULT_REGION="us-east-1")
    return proc, f"http://127.0.0.1:{port}"


def upload(root: str, bucket: str, endpoint: str) -> None:
    import boto3  # comes with s3fs (through aiobotocore)

    s3 = boto3.client("s3", endpoint_url=endpoint)
    if bucket not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
        s3.create_bucket(Bucket=bucket)
    for path in sorted(Path(root).rglob("*")):
        if path.is_file():
            s3.upload_file(str(path), bucket, f"demo/{path.relative_to(root).as_posix()}")


def run(work: str, endpoint: str | None, bucket: str, samples: int) -> int:
    moto = None
    if endpoint is None:
        moto, endpoint = start_moto()
    # the standard variable every AWS client reads (Mixtera through s3fs too)
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    try:
        corpus = build_demo_corpus(os.path.join(work, "corpus"), max_samples_per_domain=200)
        upload(corpus.root, bucket, endpoint)
        print(f"uploaded the demo corpus to s3://{bucket}/demo/ at {endpoint}")
        client = MixteraClient.local(os.path.join(work, "db"))
        for ds in corpus.datasets.values():
            url = f"s3://{bucket}/demo/{ds.name}"  # a prefix: every object of the format under it
            report = client.register_dataset(ds.name, url, format=ds.format, parser_options=ds.parser_options)
            print(f"  {report} [{ds.format}, {url}]")
        weights = {"python": 0.4, "c": 0.2, "en": 0.4}
        present = {k: w for k, w in weights.items() if corpus.domain_counts.get(k)}
        mixture = {f"language={k}": w / sum(present.values()) for k, w in present.items()}
        job = client.execute(Query.for_job("s3-demo"), mixture, chunk_size=64, seed=0, on_exhausted="repeat")
        stream = client.stream(job)
        first = [s.key for s in itertools.islice(stream, samples)]
        counts = collections.Counter(first)
        print(
            f"streamed {len(first)} samples from S3: "
            + ", ".join(f"{k} {n}" for k, n in sorted(counts.items()))
        )
        state = stream.state_dict()
        more = [s.key for s in itertools.islice(client.stream(job, state=state), 100)]
        again = client.stream(job)
        whole = [s.key for s in itertools.islice(again, samples + 100)]
        ok = whole == first + more
        print(f"resumed from a checkpoint: the next 100 samples continue the stream exactly: {ok}")
        client.close()
        return 0 if ok else 1
    finally:
        if moto is not None:
            moto.terminate()
            moto.wait(10)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--endpoint", help="an S3 endpoint URL (default: start moto_server on 127.0.0.1)")
    p.add_argument("--bucket", default="mixtera-demo")
    p.add_argument("--samples", type=int, default=1000)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mixtera-s3-example-") as tmp:
        return run(tmp, args.endpoint, args.bucket, args.samples)


if __name__ == "__main__":
    sys.exit(main())
