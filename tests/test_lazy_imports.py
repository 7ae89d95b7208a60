"""The core and the CLI load torch, scipy and grpc only when a feature needs them.

Each check runs in a fresh interpreter (``sys.modules`` of this test process holds whatever
other tests imported) and looks at what that process really loaded. How long start-up takes
is measured by ``benchmarks/startup.py``, not asserted here.
"""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import write_jsonl

HEAVY = ("torch", "scipy", "grpc", "pandas")


def loaded_after(code: str, *args: str) -> dict[str, bool]:
    """Which HEAVY modules a fresh interpreter holds after running ``code``."""
    probe = f"\nimport json, sys\nprint(json.dumps({{m: m in sys.modules for m in {HEAVY!r}}}))"
    out = subprocess.run(
        [sys.executable, "-c", code + probe, *args], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_importing_the_core_and_its_public_names_loads_nothing_heavy():
    code = (
        "import mixtera_core\n"
        "from mixtera_core import *\n"
        "from mixtera_core import MixteraClient, Query, col, ChunkerIndex, JobInfo\n"
        "import mixtera_core.cli\n"
        "from mixtera_core.plugins import get_plugin_manager\n"
        "pm = get_plugin_manager()\n"
        "assert 'ado' in pm.names('mixing_algorithm') and 'lightning' in pm.names('trainer_adapter')\n"
    )
    assert loaded_after(code) == dict.fromkeys(HEAVY, False)


def test_cli_commands_on_a_catalog_load_nothing_heavy(tmp_path):
    write_jsonl(tmp_path / "d" / "a.jsonl", [{"text": "x", "meta": {"language": "python"}}] * 4)
    db = str(tmp_path / "db")
    setup = (
        "import sys\n"
        "from mixtera_core import MixteraClient, Query\n"
        "with MixteraClient.local(sys.argv[1]) as c:\n"
        "    c.register_dataset('d', sys.argv[2], parser_options={'language': 'meta.language'})\n"
        "    list(c.stream(c.execute(Query.for_job('j'), {'language=python': 1.0})))\n"
    )
    subprocess.run([sys.executable, "-c", setup, db, str(tmp_path / "d")], check=True)
    for argv in (
        ["datasets"],
        ["properties"],
        ["jobs"],
        ["jobs", "show", "j"],
        ["report", "j"],
        ["explain", "--by", "language"],
    ):
        code = f"import sys\nfrom mixtera_core.cli import main\nassert main(['--db', sys.argv[1], *{argv!r}]) == 0"
        loaded = loaded_after(code, db)
        assert not any(loaded.values()), (argv, loaded)
    # the check can fail: a remote client does load grpc
    assert loaded_after("from mixtera_core import MixteraClient\nMixteraClient.remote('127.0.0.1', 1)")[
        "grpc"
    ]
