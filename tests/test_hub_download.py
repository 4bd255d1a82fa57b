"""The real download path: `from_pretrained("org/name")` against a local server that speaks the Hub's file API."""

from __future__ import annotations

import pytest
from helpers import REMOTE_SCRIPT, run_isolated, tiny_target
from hub_server import LocalHub

from dspark_hf import DSparkDrafter
from dspark_hf.export_hub import CODE_FILES, export_hub

pytestmark = pytest.mark.compat

LOAD_WITH_IMPORT = """
import json, sys
import dspark_hf
from transformers import AutoModel
drafter = AutoModel.from_pretrained(sys.argv[1])
name = type(drafter).__module__ + "." + type(drafter).__name__
print(json.dumps({"class": name, "block": drafter.config.block_size}))
"""


@pytest.fixture()
def served(tmp_path):
    target = tiny_target()
    DSparkDrafter.from_target(target, block_size=5).save_pretrained(tmp_path / "drafter")
    export_hub(tmp_path / "drafter", tmp_path / "drafter")  # the repo as `dspark export-hub` writes it
    target.save_pretrained(tmp_path / "target")
    with LocalHub({"dspark-test/tiny-drafter": tmp_path / "drafter"}) as hub:
        env = {"HF_ENDPOINT": hub.endpoint, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "0"}
        yield hub, env, tmp_path


def test_download_with_dspark_hf_imported(served):
    hub, env, _ = served
    out = run_isolated(LOAD_WITH_IMPORT, "dspark-test/tiny-drafter", env=env)
    assert out == {"class": "dspark_hf.modeling_dspark.DSparkDrafter", "block": 5}
    assert any(r.startswith("GET") and r.endswith("/model.safetensors") for r in hub.requests)


def test_download_with_remote_code_only(served):
    hub, env, tmp_path = served
    out = run_isolated(REMOTE_SCRIPT, "dspark-test/tiny-drafter", str(tmp_path / "target"), env=env)
    assert out["class"].startswith("transformers_modules.") and not out["dspark_hf_imported"]
    assert out["identical"] and out["rounds"] > 0
    fetched = {r.rsplit("/", 1)[-1] for r in hub.requests if r.startswith("GET") and "/resolve/" in r}
    assert set(CODE_FILES) <= fetched and not {name for name in fetched if name.endswith(".py")} - set(CODE_FILES)
