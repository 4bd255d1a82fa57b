"""`dspark bench` on the real SmolLM2 target: every peer in one process on the same prompts, with the shipped
DSpark drafter and its DFlash ablation; greedy outputs compared with plain generate()."""

from __future__ import annotations

import json

import pytest
from conftest import EVAL_DIR

from dspark_hf import DSparkDrafter
from dspark_hf.cli import main
from dspark_hf.drafters import DEFAULT_DRAFTER, MODEL_CARDS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def markov_off(tmp_path_factory):
    """The shipped drafter with its Markov head removed: a trained rank-0 drafter standing in for the DFlash ablation,
    whose checkpoint is not shipped."""
    shipped = DSparkDrafter.from_pretrained(MODEL_CARDS / DEFAULT_DRAFTER.split("/")[1])
    config = shipped.config
    config.markov_rank = 0
    ablation = DSparkDrafter(config)
    own = ablation.state_dict()
    ablation.load_state_dict({k: v for k, v in shipped.state_dict().items() if k in own and v.shape == own[k].shape},
                             strict=False)  # fmt: skip
    path = tmp_path_factory.mktemp("markov_off")
    ablation.save_pretrained(path)
    return path


def test_bench_json_markdown_and_plot(tmp_path, capsys, markov_off):
    out = tmp_path / "gsm8k"
    args = ["bench", "--data", str(EVAL_DIR / "gsm8k.jsonl"), "--limit", "2", "--max-new-tokens", "24", "--repeats",
            "2", "--dflash-drafter", str(markov_off), "--device", "cpu", "--json", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    methods = report["methods"]
    assert list(methods) == ["plain", "prompt_lookup", "dflash_ablation", "dspark"]
    assert methods["plain"]["speedup"] == 1.0 and methods["plain"]["tau"] == 1.0
    for name, m in methods.items():
        assert m["identical"] is True, name  # greedy: every method gives plain's tokens
        assert len(m["tok_s_per_pass"]) == 2 and m["tok_s"] > 0
        assert m["speedup"] == pytest.approx(m["tok_s"] / methods["plain"]["tok_s"])
        p = m["profile"]
        assert p["target_forward_s"] > 0 and p["other_s"] > 0
        assert p["total_s"] == pytest.approx(p["target_forward_s"] + p["draft_s"] + p["other_s"])
    # the trained drafter is accepted: fewer target forwards per token than plain decoding
    assert methods["dspark"]["tau"] > 1.2 and methods["dflash_ablation"]["tau"] >= 1.0
    assert methods["dspark"]["profile"]["draft_s"] > 0 and methods["plain"]["profile"]["draft_s"] == 0
    assert report["drafters"] == {
        "dspark": str(MODEL_CARDS / "SmolLM2-135M-Instruct-DSpark"),
        "dflash_ablation": str(markov_off),
    }
    assert {"device", "torch", "transformers", "date", "command"} <= set(report)

    saved = json.loads(out.with_name("gsm8k.json").read_text())
    assert saved["methods"]["dspark"]["tok_s"] == methods["dspark"]["tok_s"]
    table = out.with_name("gsm8k.md").read_text()
    assert all(f"| {name} |" in table for name in methods) and "Where the time goes" in table
    assert out.with_name("gsm8k.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_sampling_reports_no_identity_and_leaves_out_a_missing_ablation(capsys):
    args = ["bench", "--data", str(EVAL_DIR / "mt-bench.jsonl"), "--limit", "1", "--max-new-tokens", "12",
            "--repeats", "1", "--temperature", "1.0", "--device", "cpu", "--json"]  # fmt: skip
    assert main(args) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out.strip().splitlines()[-1])
    assert list(report["methods"]) == ["plain", "prompt_lookup", "dspark"]
    assert "dflash_ablation: no trained drafter" in captured.err
    assert all(m["identical"] is None for m in report["methods"].values())


def test_bench_refuses_zero_repeats(capsys):
    args = ["bench", "--data", str(EVAL_DIR / "gsm8k.jsonl"), "--repeats", "0", "--device", "cpu"]
    assert main(args) == 1
    assert "repeats" in capsys.readouterr().err
