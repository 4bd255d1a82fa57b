"""`dspark export-hub`: a small Hub folder written from the package, loadable with trust_remote_code alone."""

from __future__ import annotations

import json

import pytest
from helpers import REMOTE_SCRIPT, run_isolated, third_party_imports, tiny_target

from dspark_cli import main
from dspark_hf import DSparkDrafter
from dspark_hf.export_hub import AUTO_MAP, PACKAGE, export_hub

pytestmark = pytest.mark.compat


@pytest.fixture()
def folders(tmp_path):
    target = tiny_target()
    DSparkDrafter.from_target(target, block_size=4).save_pretrained(tmp_path / "drafter")
    (tmp_path / "drafter" / "README.md").write_text("# card\n")
    target.save_pretrained(tmp_path / "target")
    return tmp_path


def test_export_writes_card_config_weights_and_two_code_files(folders, capsys):
    assert main(["export-hub", str(folders / "hub"), "--drafter", str(folders / "drafter")]) == 0
    assert str(folders / "hub") in capsys.readouterr().err
    hub = folders / "hub"
    assert {p.name for p in hub.iterdir()} == {
        "README.md", "config.json", "model.safetensors", "configuration_dspark.py", "modeling_dspark.py",
    }  # fmt: skip
    config = json.loads((hub / "config.json").read_text())
    assert config["auto_map"] == AUTO_MAP and config["model_type"] == "dspark"
    assert (hub / "configuration_dspark.py").read_text() == (PACKAGE / "configuration_dspark.py").read_text()
    modeling = (hub / "modeling_dspark.py").read_text()
    assert modeling.startswith((PACKAGE / "modeling_dspark.py").read_text().rstrip())
    assert "class DSparkHubCandidateGenerator" in modeling and modeling.rstrip().endswith("install_hub_routing()")
    for name in ("configuration_dspark.py", "modeling_dspark.py"):
        assert third_party_imports(hub / name) <= {"torch", "transformers"}, name
    assert "from .modeling_dspark" not in modeling  # the appended routing uses the class defined above it


def test_export_in_place_and_refusals(folders):
    assert export_hub(folders / "drafter", folders / "drafter") == folders / "drafter"
    assert (folders / "drafter" / "modeling_dspark.py").is_file()
    with pytest.raises(ValueError, match="not a drafter folder"):
        export_hub(folders / "missing", folders / "out")
    with pytest.raises(ValueError, match="not a DSpark drafter"):
        export_hub(folders / "target", folders / "out")


def test_remote_code_without_dspark_hf_import(folders):
    """With trust_remote_code alone the folder's code loads and generate() drafts with it, losslessly."""
    export_hub(folders / "drafter", folders / "hub")
    out = run_isolated(REMOTE_SCRIPT, str(folders / "hub"), str(folders / "target"))
    assert out["class"].startswith("transformers_modules.") and out["class"].endswith("modeling_dspark.DSparkDrafter")
    assert not out["dspark_hf_imported"]
    assert out["identical"] and out["rounds"] > 0
    assert out["sampled_tokens"] == 20 and out["sampled_rounds"] > 0


BOTH_IN_ONE_PROCESS = """
import json, sys, torch
from transformers import AutoModel, AutoModelForCausalLM
target = AutoModelForCausalLM.from_pretrained(sys.argv[2]).eval()
remote = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True)
import dspark_hf  # from here on the package's class is the one Auto classes build, remote code asked for or not
package = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True)
prompt = torch.tensor([[1, 5, 9, 2]])
plain = target.generate(prompt, max_new_tokens=20, do_sample=False).tolist()
out = {}
for name, drafter in (("remote", remote), ("package", package), ("remote_again", remote)):
    spec = target.generate(prompt, assistant_model=drafter, max_new_tokens=20, do_sample=False).tolist()
    out[name] = [type(drafter).__module__, type(drafter.stats).__name__, spec == plain, drafter.stats.rounds]
print(json.dumps(out))
"""


def test_remote_and_package_drafters_keep_their_own_code_in_one_process(folders):
    """A process that loaded the folder's code and then imports dspark_hf runs each drafter with its own code."""
    export_hub(folders / "drafter", folders / "hub")
    out = run_isolated(BOTH_IN_ONE_PROCESS, str(folders / "hub"), str(folders / "target"))
    assert out["remote"][:3] == out["remote_again"][:3]
    assert out["remote"][0].startswith("transformers_modules.") and out["remote"][1] == "DSparkHubStats"
    assert out["package"][:2] == ["dspark_hf.modeling_dspark", "DSparkStats"]
    assert all(row[2] and row[3] > 0 for row in out.values()), out
