"""The documentation site's code runs: every code block of every guide page is executed here.

Conventions for the pages under ``docs/`` (all of them except ``docs/reference/``, which
mkdocstrings generates, and the pages in :data:`ELSEWHERE`):

- A ```` ```python ```` block runs. A page's blocks run in order in one fresh Python process whose
  working directory is an empty temporary directory (also on ``sys.path``, as in an interactive
  session), sharing one namespace like the cells of a notebook. A page builds the data it uses
  itself (the demo corpus, or small files its blocks write).
- A block right after ``<!-- docs:file NAME -->`` is written to ``NAME`` in that directory at its
  place in the order instead (a training script, a plugin module, a config file); a later
  block runs or imports it where it is code.
- A ```` ```bash ```` block needs a marker: ``<!-- docs:run -->`` runs it with ``bash -euo pipefail``
  in that directory at its place in the order; ``<!-- docs:show -->`` marks a command a test
  machine cannot run (several GPUs, another machine, a package index), which is shown only.
  A shown command that names a ``*.py`` script must name one the page wrote (``docs:file``).
- A ```` ```text ```` block is output or a diagram, not code. Any other block fails the test.

``python -m pytest tests/test_docs.py`` runs them all; one page fails with the page and line of
the block that broke.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

#: Pages that train models in several processes (about a minute each on 2 cores): the slow step of CI.
SLOW = {"guides/pytorch.md", "guides/lightning.md", "guides/hf.md"}

#: Pages whose code blocks another test runs, and which one.
ELSEWHERE = {
    "torchtitan.md": "tests/test_torchtitan.py (test_guide_*): blocks marked <!-- guide:... -->",
}

FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>[A-Za-z0-9_+-]*)\s*$")
MARKER = re.compile(r"^<!--\s*docs:(?P<kind>run|show|file)\s*(?P<arg>\S*)\s*-->\s*$")


@dataclass
class Block:
    page: str
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    marker: str | None  # "run", "show", "file" or None
    arg: str


def blocks(path: Path) -> list[Block]:
    """The fenced blocks of a page, each with the docs: marker on the line before it (if any)."""
    lines = path.read_text().splitlines()
    rel = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name
    out: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, indent = i, len(m["indent"])
        i += 1
        body = []
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i][indent:])
            i += 1
        if i == len(lines):
            raise AssertionError(f"{rel}:{start + 1}: code block is never closed")
        prev = next((lines[j].strip() for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        mk = MARKER.match(prev)
        out.append(
            Block(
                rel,
                start + 1,
                m["lang"],
                "\n".join(body) + "\n",
                mk["kind"] if mk else None,
                mk["arg"] if mk else "",
            )
        )
        i += 1
    return out


def steps(page_blocks: list[Block]) -> list[dict[str, object]]:
    """What the runner does for each block, in order; raises on a block that breaks the conventions."""
    out: list[dict[str, object]] = []
    written: set[str] = set()
    for b in page_blocks:
        where = f"{b.page}:{b.line}"
        if b.marker == "file":
            assert b.arg, f"{where}: docs:file needs a file name"
            written.add(b.arg)
            out.append({"kind": "file", "where": where, "name": b.arg, "code": b.code})
        elif b.lang == "python":
            assert b.marker is None, f"{where}: python blocks always run; docs:{b.marker} is for bash blocks"
            out.append({"kind": "python", "where": where, "code": b.code})
        elif b.lang == "bash":
            assert b.marker in ("run", "show"), (
                f"{where}: a bash block needs <!-- docs:run --> or <!-- docs:show -->"
            )
            if b.marker == "run":
                out.append({"kind": "bash", "where": where, "code": b.code})
            else:
                for script in re.findall(r"[\w./-]+\.py\b", b.code):
                    assert script in written, (
                        f"{where}: shows {script}, which no docs:file block before it writes"
                    )
        else:
            assert b.lang == "text", (
                f"{where}: a ```{b.lang} block is neither run nor marked (see tests/test_docs.py)"
            )
    return out


RUNNER = r"""
import json, os, subprocess, sys
steps = json.load(open(sys.argv[1]))
sys.path.insert(0, os.getcwd())
namespace = {"__name__": "__main__"}
for step in steps:
    print(f"----- {step['where']} ({step['kind']})", flush=True)
    if step["kind"] == "python":
        exec(compile(step["code"], step["where"], "exec"), namespace)
    elif step["kind"] == "file":
        with open(step["name"], "w") as f:
            f.write(step["code"])
    else:
        subprocess.run(["bash", "-euo", "pipefail", "-c", step["code"]], check=True)
    sys.stdout.flush()
    sys.stderr.flush()
print("----- done", flush=True)
"""


def run_page(
    page_steps: list[dict[str, object]], tmp: Path, timeout: float = 280
) -> subprocess.CompletedProcess[str]:
    work = tmp / "work"
    work.mkdir()
    (tmp / "steps.json").write_text(json.dumps(page_steps))
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env.pop("MIXTERA_DB", None)
    # nothing is downloaded: a page that tries fails here instead of depending on a network
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    # Output goes to files, not pipes: a process the page leaves running (a server) would keep a
    # pipe open. The runner gets a session of its own, and whatever is left of it is killed.
    with open(tmp / "stdout.txt", "w") as out_f, open(tmp / "stderr.txt", "w") as err_f:
        proc = subprocess.Popen(
            [sys.executable, "-c", RUNNER, str(tmp / "steps.json")],
            cwd=work,
            env=env,
            stdout=out_f,
            stderr=err_f,
            text=True,
            start_new_session=True,
        )
        try:
            proc.wait(timeout=timeout)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    out, err = (tmp / "stdout.txt").read_text(), (tmp / "stderr.txt").read_text()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def guide_pages() -> list[Path]:
    return sorted(
        p
        for p in DOCS.rglob("*.md")
        if "reference" not in p.relative_to(DOCS).parts and p.name not in ELSEWHERE
    )


def page_params() -> list[object]:
    return [
        pytest.param(
            p,
            id=str(p.relative_to(DOCS)),
            marks=[pytest.mark.slow] if str(p.relative_to(DOCS)) in SLOW else [],
        )
        for p in guide_pages()
    ]


@pytest.mark.parametrize("page", page_params())
def test_page_runs(page: Path, tmp_path: Path) -> None:
    page_steps = steps(blocks(page))
    proc = run_page(page_steps, tmp_path)
    assert proc.returncode == 0, (
        f"{page.relative_to(ROOT)} failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}"
    )
    assert proc.stdout.rstrip().endswith("----- done")


def test_pages_are_found() -> None:
    names = {str(p.relative_to(DOCS)) for p in guide_pages()}
    for expected in ("index.md", "concepts.md", "guides/pytorch.md", "guides/lightning.md", "guides/hf.md"):
        assert expected in names
    runnable = sum(1 for p in guide_pages() for s in steps(blocks(p)) if s["kind"] == "python")
    assert runnable >= 20


def test_elsewhere_pages_mark_every_block() -> None:
    """The pages another test runs: every block carries that test's marker, so none goes unrun."""
    for name in ELSEWHERE:
        lines = (DOCS / name).read_text().splitlines()
        for b in blocks(DOCS / name):
            prev = next(lines[j].strip() for j in range(b.line - 2, -1, -1) if lines[j].strip())
            assert prev.startswith("<!-- guide:"), f"{b.page}:{b.line}: no <!-- guide:... --> marker"


def test_a_broken_block_fails(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "```python\nx = 1\n```\n\n<!-- docs:file helper.py -->\n```python\nVALUE = 2\n```\n\n"
        "<!-- docs:run -->\n```bash\ntest -f helper.py\n```\n\n```python\nimport helper\nassert x + helper.VALUE == 4\n```\n"
    )
    proc = run_page(steps(blocks(page)), tmp_path)
    assert proc.returncode != 0
    assert "page.md:15" in proc.stderr and "AssertionError" in proc.stderr
    assert "----- done" not in proc.stdout


def test_unmarked_blocks_are_refused(tmp_path: Path) -> None:
    for text, message in (
        ("```bash\nls\n```\n", "needs <!-- docs:run --> or <!-- docs:show -->"),
        ("```toml\na = 1\n```\n", "neither run nor marked"),
        ("<!-- docs:show -->\n```bash\ntorchrun train.py\n```\n", "no docs:file block before it writes"),
    ):
        page = tmp_path / "page.md"
        page.write_text(text)
        with pytest.raises(AssertionError, match=re.escape(message)):
            steps(blocks(page))
