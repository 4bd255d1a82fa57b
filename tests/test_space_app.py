"""space/app.py without a browser: token provenance, limits and error messages, on the real SmolLM2 target."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
from helpers import prime_markov_head

from dspark_hf import DSparkDrafter
from dspark_hf.targets import encode_prompt

pytest.importorskip("gradio")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "space"))
import app  # noqa: E402


def test_token_sources_follow_the_rounds():
    # prefill token, round 1 accepts 2 drafts + bonus, round 2 accepts none + bonus, round 3 accepts 1 + bonus
    assert app.token_sources([2, 0, 1], 8) == [None, "draft 1", "draft 2", None, None, "draft 1", None]
    assert app.token_sources([3], 2) == [None, "draft 1"]  # cut at the number of tokens generated
    # a prompt-lookup round's accepted tokens are labelled as lookup, whatever their position
    assert app.token_sources([2, 3], 8, [False, True]) == [None, "draft 1", "draft 2", None] + ["lookup"] * 3 + [None]


def test_text_is_rendered_as_written_with_accepted_spans_marked_inside_it():
    colors = app.source_colors(3)
    pieces = [("def f():\n", None), ("    ret", "draft 1"), ("urn", "draft 1"), (" 1 <", "lookup"), ("2", None)]
    html = app.render_text(pieces, colors)
    assert html.startswith('<div class="generated"') and "white-space: pre-wrap" in html  # breaks and indents kept
    # adjacent pieces of one source are one mark (no seam inside a word); text is escaped, never markup
    assert html.count("<mark") == 2 and '<mark data-source="draft 1"' in html and ">    return</mark>" in html
    assert "def f():\n" in html and "> 1 &lt;</mark>2</div>" in html
    assert (
        app.render_text([("a < b", None)], colors) == f'<div class="generated" style="{app.TEXT_STYLE}">a &lt; b</div>'
    )


@pytest.mark.slow
def test_side_by_side_run(smollm2):
    target, tokenizer = smollm2
    prompt = "What is 7 times 8? Answer in one sentence."
    plain = target.generate(**encode_prompt(tokenizer, prompt, target.device), max_new_tokens=24, do_sample=False)
    drafter = prime_markov_head(DSparkDrafter.from_target(target), [plain[0].tolist()])
    side = app.SideBySide(target, tokenizer, drafter, trained=False)

    assert "Enter a prompt" in list(side.run("   ", 24, 0.0, "fixed"))[-1][2]
    assert "too long" in list(side.run("x" * (app.MAX_PROMPT_CHARS + 1), 24, 0.0, "fixed"))[-1][2]
    # within the character bound, far past the token bound (~3 tokens a character): refused in tokens, at once
    started = time.perf_counter()
    message = list(side.run("龘" * app.MAX_PROMPT_CHARS, 24, 0.0, "fixed"))[-1][2]
    assert "too long" in message and "tokens" in message and f"at most {app.MAX_PROMPT_TOKENS}" in message, message
    assert time.perf_counter() - started < 5
    assert "Generation failed" in list(side.run(prompt, 24, 0.0, "no-such-gating"))[-1][2]

    updates = list(side.run(prompt, 24, 0.0, "fixed", lookup=False))
    assert len(updates) > 2  # streamed: partial texts before the final summary
    plain_text, highlighted, summary, plot = updates[-1]
    assert "".join(piece for piece, _ in highlighted) == plain_text
    assert plain_text == tokenizer.decode(plain[0, -len(highlighted) :], skip_special_tokens=True)
    labels = [label for _, label in highlighted]
    assert sum(label is not None for label in labels) == drafter.stats.accepted_tokens > 0
    assert "tokens identical: yes" in summary and "untrained drafter" in summary
    assert plot["rounds"].sum() == drafter.stats.rounds and list(plot["accepted drafts"])[0] == "0"
    assert "prompt-lookup" not in summary and "lookup" not in labels
    assert len(plot) == drafter.config.block_size + 1


@pytest.mark.slow
def test_side_by_side_run_with_prompt_lookup(smollm2):
    """The default run verifies prompt-lookup continuations beside the drafter: still identical to the target alone,
    and the pane labels exactly the tokens accepted in lookup rounds as lookup."""
    target, tokenizer = smollm2
    prompt = "Repeat this sentence three times: the quick brown fox jumps over the lazy dog."
    drafter = DSparkDrafter.from_target(target)  # untrained: its drafts are seldom accepted, lookup's often
    side = app.SideBySide(target, tokenizer, drafter, trained=False)
    plain_text, highlighted, summary, plot = list(side.run(prompt, 40, 0.0, "fixed"))[-1]
    stats = drafter.stats
    assert "tokens identical: yes" in summary and f"{stats.lookup_rounds} rounds verified a prompt-lookup" in summary
    rounds = zip(stats.accepted_per_round, stats.lookup_per_round, strict=True)
    from_lookup = sum(accepted for accepted, looked_up in rounds if looked_up)
    labels = [label for _, label in highlighted]
    assert from_lookup > 0 and labels.count("lookup") == from_lookup
    assert len(plot) == app.LOOKUP_TOKENS + 1 and plot["rounds"].sum() == stats.rounds
