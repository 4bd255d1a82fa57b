"""`dspark prepare-data` and `dspark train` end to end on the real SmolLM2 target (CPU, a few tokens and steps)."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import eval_prompts
from transformers import AutoModel

from dspark_cli import main

pytestmark = pytest.mark.slow


def test_prepare_data_resumes_and_train_writes_a_lossless_drafter(tmp_path, smollm2, capsys):
    target, tokenizer = smollm2
    prompts = tmp_path / "prompts.jsonl"
    too_long = "word " * 400  # skipped whole: cutting it would drop the chat template's head
    texts = [*eval_prompts("gsm8k", 2), too_long, *eval_prompts("gsm8k", 3)[2:]]
    prompts.write_text("".join(json.dumps({"turns": [p]}) + "\n" for p in texts))
    data = tmp_path / "data"
    common = ["--prompts", str(prompts), "--output", str(data), "--max-new-tokens", "12", "--device", "cpu",
              "--max-prompt-tokens", "300"]  # fmt: skip
    assert main(["prepare-data", *common, "--limit", "2", "--batch-size", "2"]) == 0
    first = (data / "data.jsonl").read_text().splitlines()
    with (data / "data.jsonl").open("a") as handle:
        handle.write('{"input_ids": [1, 2')  # a row torn by a kill: dropped on resume
    with pytest.warns(UserWarning, match="skipped 1 prompts longer than 300 tokens"):
        assert main(["prepare-data", *common, "--batch-size", "2"]) == 0  # resumes: only the third prompt is new
    rows = [json.loads(line) for line in (data / "data.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and (data / "data.jsonl").read_text().splitlines()[:2] == first
    for row in rows:
        prompt_len = row["loss_mask"].index(1)
        response = row["input_ids"][prompt_len:]
        assert 1 <= len(response) <= 12 and all(row["loss_mask"][prompt_len:])
        # the response is the target's own greedy continuation of the chat-templated prompt
        prompt = torch.tensor([row["input_ids"][:prompt_len]])
        expected = target.generate(prompt, max_new_tokens=len(response), do_sample=False)[0, prompt_len:]
        assert expected.tolist() == response
    # one batch shape and a static cache (the GPU recipe's compiled decoding): the same rows; the last batch of two
    # holds one prompt and a repeat whose answer is dropped
    static = tmp_path / "static"
    static_args = [*common[:2], "--output", str(static), *common[4:], "--batch-size", "2", "--static-cache"]
    with pytest.warns(UserWarning, match="skipped 1 prompts"):
        assert main(["prepare-data", *static_args]) == 0
    assert (static / "data.jsonl").read_text() == (data / "data.jsonl").read_text()

    out = tmp_path / "drafter"
    args = ["train", "--data", str(data), "--output", str(out), "--steps", "2", "--block-size", "4",
            "--markov-rank", "8", "--num-anchors", "4", "--batch-size", "2", "--device", "cpu"]  # fmt: skip
    assert main(args) == 0
    drafter = AutoModel.from_pretrained(out)
    assert drafter.config.block_size == 4 and drafter.config.markov_rank == 8
    prompt = torch.tensor([rows[0]["input_ids"][: rows[0]["loss_mask"].index(1)]])
    plain = target.generate(prompt, max_new_tokens=10, do_sample=False)
    spec = target.generate(prompt, assistant_model=drafter, max_new_tokens=10, do_sample=False)
    assert spec.tolist() == plain.tolist()

    # --init: the DFlash ablation goes on from that drafter's backbone; a block size it was not trained for is refused
    again = f"train --data {data} --output {tmp_path / 'ablation'} --init {out} --steps 1 --markov-rank 0 --loss ce"
    again = [*again.split(), "--num-anchors", "4", "--batch-size", "2", "--device", "cpu"]
    capsys.readouterr()
    assert main([*again, "--block-size", "7"]) == 1
    assert "drafts blocks of 4, not 7" in capsys.readouterr().err
    assert main([*again, "--block-size", "4"]) == 0
    ablation = AutoModel.from_pretrained(tmp_path / "ablation")
    assert ablation.config.markov_rank == 0 and ablation.markov_in is None
    assert ablation.state_dict()["fc.weight"].shape == drafter.state_dict()["fc.weight"].shape


def test_cli_training_errors(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "missing"), "--output", str(tmp_path / "o")]) == 1
    assert "prepare-data" in capsys.readouterr().err
    assert main(["prepare-data", "--prompts", str(tmp_path / "none.jsonl"), "--output", str(tmp_path)]) == 1
    assert "JSONL" in capsys.readouterr().err
