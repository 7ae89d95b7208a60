"""Webdataset samples with image members: bytes by default, decoded on request."""

from __future__ import annotations

import io
import json

import pytest
import webdataset

from mixtera_core import MixteraClient, Query

PIL = pytest.importorskip("PIL.Image")


def png(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    PIL.new("RGB", (4, 3), color).save(buf, format="PNG")
    return buf.getvalue()


def test_image_members_as_bytes_and_decoded(tmp_path):
    shard = tmp_path / "imgs" / "shard-0.tar"
    shard.parent.mkdir()
    with webdataset.TarWriter(str(shard)) as w:
        for i in range(12):
            kind = "cat" if i % 3 else "dog"
            w.write(
                {
                    "__key__": f"s{i:03d}",
                    "png": png((i * 20, 0, 0)),
                    "txt": f"a {kind}",
                    "json": json.dumps({"label": kind}).encode(),
                }
            )
    with MixteraClient.local(tmp_path / "db") as client:
        client.register_dataset(
            "imgs", shard.parent, format="webdataset", parser_options={"label": "json.label"}
        )
        job = client.execute(
            Query.for_job("vl"), {"label=cat": 0.5, "label=dog": 0.5}, chunk_size=4, on_exhausted="repeat"
        )
        raw = [s for _, s in zip(range(8), client.stream(job, output="record"), strict=False)]
        assert all(isinstance(s.data["png"], bytes) and s.data["png"].startswith(b"\x89PNG") for s in raw)
        assert [s.key for s in raw].count("label=dog") == 4
        decoded = [
            s for _, s in zip(range(8), client.stream(job, output="record", decode="pil"), strict=False)
        ]
        img = decoded[0].data["png"]
        assert isinstance(img, PIL.Image) and img.size == (4, 3)
        assert decoded[0].data["__key__"] == raw[0].data["__key__"]
        texts = [s.data for _, s in zip(range(4), client.stream(job), strict=False)]
        assert all(t in ("a cat", "a dog") for t in texts)
