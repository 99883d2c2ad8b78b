"""The shape of the code: no import cycle among project modules, lazy imports included, and the
layers of ``f5worker`` import only downwards."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tools.import_graph import ROOT, cycles, import_graph

GRAPH = import_graph()


def test_there_is_no_import_cycle():
    assert cycles(GRAPH) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_model_files_layer_reads_top_down():
    assert "f5worker.model_cache" not in GRAPH["f5worker.model_files"]
    assert "f5worker.tts_model" not in GRAPH["f5worker.model_cache"] | GRAPH["f5worker.model_files"]


def test_the_engine_is_in_the_graph_and_its_upstream_loader_imports_no_project_module():
    assert {"f5worker.engine", "f5worker.engine.upstream", "f5worker.engine.sampler"} <= GRAPH.keys()
    assert GRAPH["f5worker.engine.upstream"] == set()
    assert "f5worker.engine.upstream" in GRAPH["f5worker.tts_model"]


def test_the_package_never_imports_an_entry_point():
    entry_points = {name for name in GRAPH if not name.startswith("f5worker")}
    for name, imports in GRAPH.items():
        if name.startswith("f5worker"):
            assert not imports & entry_points, name


@pytest.mark.process
def test_the_graph_command_prints_no_cycle():
    out = subprocess.run([sys.executable, "tools/import_graph.py"], cwd=ROOT, capture_output=True, text=True,
                         check=True)
    assert out.stdout.rstrip().endswith("no cycle")
    assert "f5worker.contract -> f5worker.formats" in out.stdout
