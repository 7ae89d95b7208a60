"""``mixtera demo``: the quickstart, end to end, on data every Python installation has.

Builds the demo corpus (:mod:`mixtera_core.demo`), registers its three datasets (three
formats) in an embedded catalog, shows the properties, runs a query over two languages
and reads a few samples of each component back through the format plugins.
"""

from __future__ import annotations

import itertools
import os
import textwrap
import time

from .client import MixteraClient
from .demo import build_demo_corpus
from .query import Query


def run_demo(
    out_dir: str,
    db_dir: str | None = None,
    max_samples_per_domain: int | None = None,
    *,
    client: MixteraClient | None = None,
    target: str | None = None,
) -> None:
    """Build the corpus under ``out_dir`` and run the tour on an embedded catalog (``db_dir``,
    default ``out_dir/db``) or on ``client`` (e.g. a remote one: the corpus must then lie under
    the server's allowed roots). ``target``: the CLI options that name the catalog, for the
    commands suggested at the end."""
    out_dir = os.path.abspath(out_dir)
    t0 = time.perf_counter()
    corpus = build_demo_corpus(os.path.join(out_dir, "corpus"), max_samples_per_domain=max_samples_per_domain)
    print(corpus.summary())
    print(f"(built in {time.perf_counter() - t0:.1f}s)\n")

    db_dir = db_dir or os.path.join(out_dir, "db")
    where = f"catalog {db_dir}" if client is None else "catalog"
    target = target or f"--db {db_dir}"
    with client if client is not None else MixteraClient.local(db_dir, rank=0) as client:
        for ds in corpus.datasets.values():
            t0 = time.perf_counter()
            report = client.register_dataset(
                ds.name,
                ds.location,
                format=ds.format,
                parser="fields",
                parser_options=ds.parser_options,
                replace=True,
            )
            print(f"{report} [{ds.format}] in {time.perf_counter() - t0:.2f}s")

        print(f"\n{where}: properties")
        for prop, values in client.properties().items():
            shown = ", ".join(f"{v}={n}" for v, n in list(values.items())[:8])
            more = f", ... ({len(values)} values)" if len(values) > 8 else ""
            print(f"  {prop}: {shown}{more}")

        query = Query.for_job("demo").select(("language", "in", ["python", "en"]))
        print("\nquery: language in [python, en], components by language and source")
        print(textwrap.indent(str(client.explain(query, properties=["language", "source"])), "  "))

        print("\nfirst sample of each component, read back through its format plugin:")
        for key, record in client.peek(query, n=1, properties=["language", "source"]):
            text = record.get("text") if isinstance(record, dict) else None
            if isinstance(text, bytes):
                text = text.decode("utf-8", "replace")
            if text is None and isinstance(record, dict) and "txt" in record:
                text = record["txt"].decode("utf-8", "replace")
            snippet = " ".join(str(text).split())[:100]
            print(f"  [{key}] {snippet}...")
        mixture = {"language=python": 0.4, "language=c": 0.2, "language=en": 0.4}
        job = client.execute(
            Query.for_job("demo-mix"), mixture, chunk_size=64, seed=0, on_exhausted="repeat", dp_groups=2
        )
        print(f"\njob {job!r}: mixture {mixture}, 2 data-parallel groups, chunks of 64 samples")
        print(textwrap.indent(str(client.explain(Query.for_job("demo-mix"), mixture, samples=4000)), "  "))
        t0 = time.perf_counter()
        streamed = 0
        for group in range(2):
            streamed += sum(1 for _ in itertools.islice(client.stream(job, dp_group=group), 2000))
        print(f"\nstreamed {streamed} samples from both groups in {time.perf_counter() - t0:.2f}s:")
        print(textwrap.indent(str(client.report(job)), "  "))
        print(f"\nnext: `mixtera {target} explain --where 'language==c' --by language,topics`")
        print(f"      `mixtera {target} report demo-mix`")
