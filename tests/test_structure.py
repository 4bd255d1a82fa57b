"""The package's layering: imports run one way, and the model files stand on torch and transformers alone."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers import third_party_imports

from dspark_hf.import_graph import import_graph

PACKAGE = Path(__file__).resolve().parents[1] / "dspark_hf"


def test_import_graph_script_finds_no_cycle():
    result = subprocess.run([sys.executable, "-m", "dspark_hf.import_graph"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("no import cycle")
    assert "decoding.round" in result.stdout and "modeling_dspark" in result.stdout


@pytest.mark.parametrize(
    "module, allowed",
    [
        ("dspark_hf.configuration_dspark", set()),
        ("dspark_hf.modeling_dspark", {"dspark_hf.configuration_dspark"}),
        ("dspark_hf.decoding.policies", set()),
        ("dspark_hf.decoding.compat", set()),
        ("dspark_hf.hub_routing", {"dspark_hf.modeling_dspark"}),
    ],
)
def test_basic_modules_import_nothing_above_them(module, allowed):
    assert import_graph()[module] <= allowed


def test_the_round_knows_nothing_of_the_loops_or_the_routing():
    graph = import_graph()
    loops = {"dspark_hf.decoding.candidates", "dspark_hf.decoding.static_loop", "dspark_hf.decoding.routing"}
    for module in ("dspark_hf.decoding.round", "dspark_hf.decoding.profile", "dspark_hf.evaluation.acceptance"):
        assert not graph[module] & loops, module


@pytest.mark.parametrize("name", ["configuration_dspark.py", "modeling_dspark.py", "hub_routing.py"])
def test_model_files_use_only_torch_and_transformers(name):
    assert third_party_imports(PACKAGE / name) <= {"torch", "transformers"}
