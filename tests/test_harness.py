"""The test harness itself: the ``process`` marker is enforced, importing conftest changes nothing,
bench/ needs no conftest, and the pinned tools are the ones installed and hooked."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from importlib.metadata import version

import pytest
import yaml

from tests.support.paths import ROOT


def test_a_test_without_the_process_marker_cannot_start_one(request):
    expected = rf"{re.escape(request.node.nodeid)} started a process .* without @pytest.mark.process"
    with pytest.raises(pytest.fail.Exception, match=expected):
        subprocess.run(["true"], check=True)


@pytest.mark.process
def test_a_test_with_the_process_marker_may():
    assert subprocess.run(["true"], check=False).returncode == 0


@pytest.mark.process
def test_importing_conftest_changes_no_variable_and_writes_no_cache():
    script = (
        "import json, os\n"
        "before = dict(os.environ)\n"
        "import tests.conftest\n"
        "from tests.support.tiny_models import TINY_HOME\n"
        "print(json.dumps({'changed': sorted(k for k in {*before, *os.environ} if before.get(k) != os.environ.get(k)),"
        " 'cache_written': TINY_HOME.exists()}))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == {"changed": [], "cache_written": False}


def test_bench_imports_test_support_only():
    for path in ROOT.glob("bench/*.py"):
        assert "conftest" not in path.read_text(), path


def test_the_dev_tools_are_pinned_installed_and_hooked_at_the_same_version():
    pins = dict(line.split("==") for line in (ROOT / "requirements-dev.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    for tool in ("pytest-timeout", "pre-commit", "ruff"):
        assert version(tool) == pins[tool], tool
    hooks = [hook for repo in yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())["repos"]
             for hook in repo["hooks"]]
    assert [dep for hook in hooks for dep in hook.get("additional_dependencies", [])] == [f"ruff=={pins['ruff']}"]
