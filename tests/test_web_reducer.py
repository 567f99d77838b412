"""The web client's pure modules (server/static/turns.js, why.js) under Node.js's test runner.

The JavaScript tests are in tests/web/*.test.mjs; they import the page's modules as they are
served (plain ES modules, no build step). scripts/setup.sh installs Node.js where it is missing.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.conftest import REPO_ROOT


def test_turn_reducer_and_vision_rules_in_node() -> None:
    """Every tests/web/*.test.mjs passes under `node --test`."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("Node.js is required for the web client's unit tests (scripts/setup.sh installs it)")
    files = sorted(str(p) for p in (REPO_ROOT / "tests" / "web").glob("*.test.mjs"))
    assert files, "no JavaScript tests found"
    run = subprocess.run([node, "--test", *files], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    summary = [line for line in run.stdout.splitlines() if line.startswith(("# pass", "# fail", "not ok"))]
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert any(line.startswith("# pass") and int(line.split()[-1]) >= 20 for line in summary), summary
