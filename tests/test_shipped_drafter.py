"""The shipped drafter, `model_cards/SmolLM2-135M-Instruct-DSpark`: an upload-ready Hub folder, the default drafter
wherever the default target runs, and a real speed-up source on the real target (drafts accepted, output unchanged)."""

from __future__ import annotations

import json
import re

import pytest
from helpers import eval_prompts, run_isolated, tiny_target
from hub_server import LocalHub
from safetensors import safe_open

import dspark_hf
from dspark_hf import DSparkDrafter
from dspark_hf.drafters import DEFAULT_DRAFTER, MODEL_CARDS, load_drafter
from dspark_hf.export_hub import export_hub
from dspark_hf.targets import encode_prompt, smollm2_folder

# the shipped folder must load and draft on the oldest supported transformers too: every test but the longest one
# (the shipped drafter on the real target, through dspark_hf) runs again there (`compat`)

FOLDER = MODEL_CARDS / DEFAULT_DRAFTER.split("/")[1]


def card_metadata() -> dict[str, str]:
    text = (FOLDER / "README.md").read_text()
    match = re.match(r"---\n(.*?)\n---\n", text, re.S)
    assert match, "the model card must open with a YAML block"
    return dict(re.findall(r"^(\w+):\s*(.*)$", match.group(1), re.M))


@pytest.mark.compat
def test_folder_is_a_complete_hub_repo():
    files = {p.name for p in FOLDER.iterdir()}
    assert {"README.md", "config.json", "model.safetensors"} <= files
    assert not files & {"pytorch_model.bin", "training_args.bin", "optimizer.pt"}, "safetensors only"
    assert (FOLDER / "model.safetensors").stat().st_size < 50 * 2**20
    config = json.loads((FOLDER / "config.json").read_text())
    assert config["model_type"] == "dspark" and config["target_name_or_path"] == dspark_hf.DEFAULT_TARGET
    assert len(config["confidence_temperatures"]) == config["block_size"], "calibrated"
    assert config["gating"] == "scheduler"  # the default policy: measured costs, not a fixed rule
    vocab = config["draft_vocab"]  # the 8192 most frequent ShareGPT response tokens and EOS (`dspark draft-vocab`)
    assert len(vocab) == 8193 and 2 in vocab and vocab == sorted(set(vocab))
    # no code is committed beside the weights: `dspark export-hub` writes it from the package (no stale copy)
    assert not [p.name for p in FOLDER.iterdir() if p.suffix == ".py"] and "auto_map" not in config
    with safe_open(FOLDER / "model.safetensors", "pt") as weights:
        keys = set(weights.keys())
    assert any(k.startswith("markov_") for k in keys) and not any("embed_tokens" in k or "lm_head" in k for k in keys)


@pytest.mark.compat
def test_model_card_metadata_and_sections():
    meta = card_metadata()
    assert meta["base_model"] == dspark_hf.DEFAULT_TARGET
    assert meta["library_name"] == "dspark-hf" and meta["license"] == "mit"
    text = (FOLDER / "README.md").read_text()
    assert "tags:" in text and "- speculative-decoding" in text and "datasets:" in text
    for section in (
        "## Usage",
        "## Training data",
        "## Training recipe",
        "## Evaluation",
        "## Limitations",
        "## License",
    ):
        assert section in text, section


@pytest.mark.compat
def test_model_card_table_matches_the_committed_eval():
    """The card's τ figures are the ones the eval run wrote (bench/), not typed by hand."""
    text = (FOLDER / "README.md").read_text()
    evaluation = text[text.index("## Evaluation") :]  # the record the section cites (training records come earlier)
    record = FOLDER.parents[1] / re.search(r"`(bench/[^`/]+/)", evaluation).group(1)
    runs = {m: json.loads((record / f"h200_eval_{m}.json").read_text()) for m in ("dspark", "dflash")}
    assert all(run["drafter_trained"] and run["method"] == "teacher_forced" for run in runs.values())
    for name, label in (("gsm8k", "GSM8K"), ("humaneval", "HumanEval"), ("mt-bench", "MT-Bench")):
        row = re.search(rf"^\| {label} \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|", text, re.M)
        assert row, label
        tau = {m: next(r["tau"] for r in run["results"] if r["dataset"] == name) for m, run in runs.items()}
        assert row.groups() == (f"{tau['dspark']:.2f}", f"{tau['dflash']:.2f}", f"{tau['dspark'] / tau['dflash']:.2f}")


@pytest.mark.slow
def test_default_drafter_on_the_default_target_is_the_shipped_one(smollm2):
    target, tokenizer = smollm2
    drafter, trained = load_drafter(None, target)
    assert trained and drafter.name_or_path in (DEFAULT_DRAFTER, str(FOLDER))
    rounds = dict.fromkeys(("drafter", "with lookup"), 0)
    accepted, lookup_rounds = dict.fromkeys(rounds, 0), 0
    for text in eval_prompts("gsm8k", 2) + eval_prompts("humaneval", 2):
        inputs = encode_prompt(tokenizer, text, target.device)
        plain = target.generate(**inputs, max_new_tokens=64, do_sample=False)
        for method, lookup in (("drafter", {}), ("with lookup", {"prompt_lookup_num_tokens": 10})):
            spec = target.generate(
                **inputs, assistant_model=drafter, max_new_tokens=64, do_sample=False, gating="fixed", **lookup
            )
            assert spec.tolist() == plain.tolist(), method
            rounds[method] += drafter.stats.rounds
            accepted[method] += drafter.stats.accepted_tokens
        lookup_rounds += drafter.stats.lookup_rounds
    tau = {method: (accepted[method] + rounds[method]) / rounds[method] for method in rounds}
    # trained, not primed: its own drafts are accepted (an untrained drafter stays at tau ~= 1.0); prompt lookup
    # beside it takes over some rounds and brings more tokens per round
    assert tau["drafter"] > 1.5 and tau["with lookup"] > tau["drafter"] and lookup_rounds > 10, (tau, lookup_rounds)


@pytest.mark.compat
def test_default_drafter_for_another_target_is_an_untrained_one(capfd):
    target = tiny_target(vocab_size=49152)
    drafter, trained = load_drafter(None, target)
    assert not trained and isinstance(drafter, DSparkDrafter) and drafter.is_bound
    assert "trained for SmolLM2-135M-Instruct" in capfd.readouterr().err


FROM_HUB = """
import json, sys
from dspark_hf.drafters import default_drafter_source
print(json.dumps({"source": default_drafter_source()}))
"""


@pytest.mark.compat
def test_default_drafter_comes_from_the_hub_when_reachable(tmp_path):
    with LocalHub({DEFAULT_DRAFTER: FOLDER}) as hub:
        env = {"HF_ENDPOINT": hub.endpoint, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "0"}
        assert run_isolated(FROM_HUB, env=env) == {"source": DEFAULT_DRAFTER}
    offline = {"HF_HOME": str(tmp_path / "empty"), "HF_HUB_OFFLINE": "1"}
    assert run_isolated(FROM_HUB, env=offline) == {"source": str(FOLDER)}


REMOTE_ON_SMOLLM2 = """
import json, sys
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer
target = AutoModelForCausalLM.from_pretrained(sys.argv[2]).eval()
tokenizer = AutoTokenizer.from_pretrained(sys.argv[2])
drafter = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True)
inputs = tokenizer.apply_chat_template([{"role": "user", "content": sys.argv[3]}], add_generation_prompt=True,
                                       return_tensors="pt", return_dict=True)
plain = target.generate(**inputs, max_new_tokens=48, do_sample=False)
spec = target.generate(**inputs, assistant_model=drafter, max_new_tokens=48, do_sample=False)
print(json.dumps({
    "class": type(drafter).__module__ + "." + type(drafter).__name__,
    "dspark_hf_imported": any(m == "dspark_hf" or m.startswith("dspark_hf.") for m in sys.modules),
    "identical": plain.tolist() == spec.tolist(),
    "rounds": drafter.stats.rounds,
    "accepted": drafter.stats.accepted_tokens,
}))
"""


@pytest.mark.slow
@pytest.mark.compat
def test_the_folder_alone_drafts_for_smollm2_with_remote_code(smollm2, tmp_path):
    """A Hub user's path: no dspark_hf import, `trust_remote_code=True` runs the folder's own code on the real
    target (loaded by Transformers alone, from the GGUF's converted folder; the default gating, the scheduler,
    profiles the device from that code too), output identical to plain greedy, drafts accepted."""
    hub = export_hub(FOLDER, tmp_path / "hub")  # the repo as uploaded: the folder plus its two code files
    out = run_isolated(REMOTE_ON_SMOLLM2, str(hub), str(smollm2_folder()), eval_prompts("gsm8k", 1)[0])
    assert out["class"].startswith("transformers_modules.") and not out["dspark_hf_imported"]
    assert out["identical"] and out["rounds"] > 0 and out["accepted"] > 0
