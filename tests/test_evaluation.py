"""`dspark eval`: τ and per-position acceptance over a prompt set, on the real SmolLM2 target."""

from __future__ import annotations

import json

import pytest
from helpers import EVAL_DIR, prime_markov_head

from dspark_cli import main
from dspark_hf import DSparkDrafter, DSparkStats
from dspark_hf.evaluation import evaluate_acceptance, merge_stats, read_eval_prompts, teacher_forced_acceptance


def test_merge_stats_pools_rounds_not_averages_of_taus():
    a = DSparkStats(block_size=3, rounds=2, accepted_tokens=4, accepted_per_round=[3, 1], verified_per_round=[3, 3])
    b = DSparkStats(block_size=3, rounds=4, accepted_tokens=0, accepted_per_round=[0] * 4, verified_per_round=[1] * 4)
    merged = merge_stats([a, b])
    assert merged.rounds == 6 and merged.tau == pytest.approx(10 / 6)  # not the mean of 3.0 and 1.0
    assert merged.per_position_acceptance == [pytest.approx(2 / 6), 0.5, 0.5]  # pooled over the rounds that got there


def test_read_eval_prompts_errors(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        read_eval_prompts(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "hi"}\n')
    with pytest.raises(ValueError, match="turns"):
        read_eval_prompts(bad)
    assert len(read_eval_prompts(EVAL_DIR / "gsm8k.jsonl", limit=3)) == 3


@pytest.mark.slow
def test_eval_on_smollm2(smollm2, capsys):
    target, tokenizer = smollm2
    prompts = read_eval_prompts(EVAL_DIR / "gsm8k.jsonl", limit=2)
    drafter = DSparkDrafter.from_target(target, block_size=4)
    plain = [target.generate(**tokenizer.apply_chat_template([{"role": "user", "content": p}],
             add_generation_prompt=True, return_tensors="pt", return_dict=True), max_new_tokens=24,
             do_sample=False)[0].tolist() for p in prompts]  # fmt: skip
    prime_markov_head(drafter, plain)  # drafts that are often right, so acceptance is measured, not just zeros
    result = evaluate_acceptance(
        target, tokenizer, drafter, prompts, max_new_tokens=24, generate_kwargs={"gating": "fixed"}
    )
    assert result["prompts"] == 2 and result["new_tokens"] == 48
    assert result["tau"] == pytest.approx((result["accepted_tokens"] + result["rounds"]) / result["rounds"])
    assert result["tau"] > 1.2 and len(result["per_position_acceptance"]) == 4

    # replaying the rounds on the target's own continuations gives the same rounds as running them
    replayed = teacher_forced_acceptance(target, tokenizer, drafter, prompts, max_new_tokens=24, batch_size=1)
    for key in ("rounds", "accepted_tokens", "verified_tokens", "new_tokens", "tau", "per_position_acceptance"):
        assert replayed[key] == result[key], key
    batched = teacher_forced_acceptance(target, tokenizer, drafter, prompts, max_new_tokens=24, batch_size=2)
    assert batched["new_tokens"] == 48 and abs(batched["tau"] - result["tau"]) < 0.25
    # and with prompt lookup beside the drafter, round for round too
    looked_up = evaluate_acceptance(
        target, tokenizer, drafter, prompts, max_new_tokens=24,
        generate_kwargs={"gating": "fixed", "prompt_lookup_num_tokens": 10},
    )  # fmt: skip
    replayed = teacher_forced_acceptance(
        target, tokenizer, drafter, prompts, max_new_tokens=24, batch_size=1, prompt_lookup_tokens=10
    )
    for key in ("rounds", "accepted_tokens", "verified_tokens", "tau", "per_position_acceptance"):
        assert replayed[key] == looked_up[key], key
    assert sum(s.lookup_rounds for s in replayed["stats"]) == sum(s.lookup_rounds for s in looked_up["stats"])

    code = main(["eval", "--data", str(EVAL_DIR / "humaneval.jsonl"), "--limit", "1", "--max-new-tokens", "8",
                 "--device", "cpu", "--json"])  # fmt: skip
    assert code == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"tau", "per_position_acceptance", "rounds", "prompts"} <= set(row) and row["prompts"] == 1
    assert row["rounds"] >= 1 and row["tau"] >= 1.0 and row["method"] == "generate"

    args = ["eval", "--data", str(EVAL_DIR / "gsm8k.jsonl"), "--limit", "2", "--max-new-tokens", "8", "--device", "cpu"]
    assert main([*args, "--teacher-forced", "--json"]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["method"] == "teacher_forced" and row["prompts"] == 2 and row["rounds"] >= 2
    assert main([*args, "--teacher-forced", "--temperature", "1.0"]) == 1
    assert "greedy" in capsys.readouterr().err


@pytest.mark.slow
def test_eval_several_sets_and_temperatures_with_report(tmp_path, capsys):
    out = tmp_path / "eval"
    sets = [str(EVAL_DIR / "gsm8k.jsonl"), str(EVAL_DIR / "mt-bench.jsonl")]
    args = ["eval", "--data", *sets, "--limit", "1", "--max-new-tokens", "12", "--temperature", "0", "1",
            "--device", "cpu", "--json", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    runs = [(r["dataset"], r["temperature"]) for r in report["results"]]
    assert runs == [("gsm8k", 0.0), ("gsm8k", 1.0), ("mt-bench", 0.0), ("mt-bench", 1.0)]
    assert report["rounds"] == sum(r["rounds"] for r in report["results"]) and report["prompts"] == 4
    accepted = sum(r["accepted_tokens"] for r in report["results"])
    assert report["tau"] == pytest.approx((accepted + report["rounds"]) / report["rounds"])  # pooled, not averaged
    assert report["drafter_trained"] and report["drafter"].endswith("SmolLM2-135M-Instruct-DSpark")
    table = out.with_name("eval.md").read_text()
    assert "| gsm8k | 1 | 1 |" in table and "| mt-bench | 0 | 1 |" in table and "pos 7" in table
    assert out.with_name("eval.png").read_bytes()[:4] == b"\x89PNG"
