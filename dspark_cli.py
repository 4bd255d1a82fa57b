"""The `dspark` command's options and entry point.

A top-level module, not part of `dspark_hf`: importing the package loads torch and Transformers (it registers the
drafter with the Auto classes), which takes seconds. `dspark --help` and usage errors answer from here without it;
a command imports `dspark_hf.cli` only once its arguments parse.
"""

from __future__ import annotations

import argparse
import sys

DRAFTER_HELP = "drafter folder or Hub id (default: the shipped SmolLM2 drafter; 'untrained' for a fresh one)"
PICKLE_HELP = "also load a target whose weights are pickles (.bin), which can run code: only if you trust it"
TARGET_HELP = "target Hub id, folder or .gguf (default: SmolLM2-135M-Instruct)"
GATING_HELP = (
    "prefix policy per round: scheduler (L maximising expected tokens/s from measured costs), threshold[:a] or "
    "fixed[:L] (default: the drafter's own, normally scheduler)"
)


def add_target_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("--target", default=None, help=TARGET_HELP)
    command.add_argument("--allow-pickle", action="store_true", help=PICKLE_HELP)


def add_device_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("--device", default=None)  # help: OPTION_HELP
    command.add_argument("--dtype", default=None)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dspark", description="DSpark speculative decoding for Transformers.")
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="generate from one prompt with DSpark (optionally beside plain generate())")
    gen.add_argument("--prompt", required=True, help="user message (the target's chat template is applied)")
    gen.add_argument(
        "--drafter",
        default=None,
        help=DRAFTER_HELP,
    )
    add_target_options(gen)
    gen.add_argument("--max-new-tokens", type=int, default=128)
    gen.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    gen.add_argument("--gating", default=None, help=GATING_HELP)
    gen.add_argument("--compare", action="store_true", help="also run plain generate() and report the speed-up")
    gen.add_argument("--prompt-lookup-tokens", type=int, default=0,
                     help="N > 0: prompt lookup beside the drafter (prompt_lookup_num_tokens=N), e.g. 16")  # fmt: skip
    gen.add_argument("--json", action="store_true", help="print one JSON object as the last line of stdout")
    add_device_options(gen)
    gen.add_argument("--seed", type=int, default=0)

    ev = sub.add_parser("eval", help="acceptance length (tau) of a drafter over JSONL prompt sets")
    ev.add_argument("--data", required=True, nargs="+", help='JSONL files, rows {"turns": [...]} (first turn = prompt)')
    ev.add_argument("--limit", type=int, default=None, help="use the first N prompts of each file")
    ev.add_argument("--max-new-tokens", type=int, default=256)
    ev.add_argument("--temperature", type=float, nargs="+", default=[0.0],
                    help="one or more; 0 = greedy (default), e.g. --temperature 0 1")  # fmt: skip
    ev.add_argument("--drafter", default=None, help=DRAFTER_HELP)
    add_target_options(ev)
    ev.add_argument("--gating", default="fixed",
                    help="fixed (default) verifies every draft, so tau measures the drafter alone")  # fmt: skip
    ev.add_argument(
        "--teacher-forced",
        action="store_true",
        help="greedy only: replay the rounds on the target's own (batched) continuations instead of "
        "running them; the same tau, many times faster",
    )
    ev.add_argument("--batch-size", type=int, default=16, help="--teacher-forced: prompts continued at once")
    ev.add_argument("--prompt-lookup-tokens", type=int, default=0,
                    help="N > 0: rounds verify up to N prompt-lookup tokens where the context repeats "
                    "(prompt_lookup_num_tokens=N beside the drafter); 0 (default): the drafter alone")  # fmt: skip
    ev.add_argument("--out", default=None, help="write OUT.json, OUT.md (table) and OUT.png (plot)")
    ev.add_argument("--json", action="store_true", help="print one JSON object as the last line of stdout")
    add_device_options(ev)
    ev.add_argument("--seed", type=int, default=0)

    bench = sub.add_parser("bench", help="tokens/s of plain, prompt lookup, DFlash ablation and DSpark, one process")
    bench.add_argument("--data", required=True, help='JSONL file, rows {"turns": [...]} (first turn = prompt)')
    bench.add_argument("--limit", type=int, default=10, help="use the first N prompts (default 10)")
    bench.add_argument("--max-new-tokens", type=int, default=256)
    bench.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    bench.add_argument("--repeats", type=int, default=3, help="passes over the prompts; figures are medians")
    bench.add_argument("--drafter", default=None, help=DRAFTER_HELP)
    bench.add_argument("--dflash-drafter", default=None,
                       help="the DFlash ablation (default: the shipped one; 'untrained' leaves it out)")  # fmt: skip
    bench.add_argument("--prompt-lookup-tokens", type=int, default=16,
                       help="prompt_lookup_num_tokens of the *lookup rows")  # fmt: skip
    add_target_options(bench)
    bench.add_argument("--out", default=None, help="write OUT.json, OUT.md (table) and OUT.png (plot)")
    bench.add_argument("--json", action="store_true", help="print one JSON object as the last line of stdout")
    bench.add_argument("--gating", nargs="+", default=[],
                       help="also run DSpark under these policies (rows dspark_<gating>), e.g. --gating fixed "
                       "threshold; the `dspark` row uses the drafter's default (scheduler)")  # fmt: skip
    bench.add_argument("--methods", nargs="+", default=None,
                       help="run only these (plain, the baseline, always runs), e.g. --methods dspark "
                       "dspark_fixed")  # fmt: skip
    bench.add_argument("--no-compiled", action="store_true",
                       help="leave out plain_compiled (Transformers' static cache, compiled: the baseline that counts; "
                       "its compile takes minutes on a small CPU)")  # fmt: skip
    bench.add_argument("--profile-limit", type=int, default=None,
                       help="the where-the-time-goes pass covers the first N prompts (default: all)")  # fmt: skip
    add_device_options(bench)
    bench.add_argument("--seed", type=int, default=0)

    prof = sub.add_parser("profile", help="measure verification and drafting costs on this device (cached on disk)")
    prof.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8],
                      help="batch sizes to measure (the generate() path uses 1)")  # fmt: skip
    prof.add_argument("--max-tokens", type=int, default=None,
                      help="new tokens per sequence up to this (default: the drafter's block + 1)")  # fmt: skip
    prof.add_argument("--cached", action="store_true", help="reuse a cached profile; measure only what it lacks")
    prof.add_argument("--drafter", default=None, help=DRAFTER_HELP)
    add_target_options(prof)
    prof.add_argument("--out", default=None, help="write OUT.json, OUT.md (table) and OUT.png (plot)")
    prof.add_argument("--json", action="store_true", help="print one JSON object as the last line of stdout")
    add_device_options(prof)

    prep = sub.add_parser("prepare-data", help="regenerate training responses with the target (resumable)")
    prep.add_argument("--prompts", default="sharegpt", help="'sharegpt' (default) or a JSONL file of prompts")
    prep.add_argument("--output", required=True, help="folder for data.jsonl")
    add_target_options(prep)
    prep.add_argument("--limit", type=int, default=None, help="use the first N prompts")
    prep.add_argument("--max-new-tokens", type=int, default=512)
    prep.add_argument("--max-prompt-tokens", type=int, default=1024)
    prep.add_argument("--batch-size", type=int, default=8)
    prep.add_argument("--temperature", type=float, default=0.0, help="0 = greedy responses (default)")
    prep.add_argument("--static-cache", action="store_true",
                      help="GPU: one batch shape, a static KV cache: decoding compiled once (CUDA graphs)")  # fmt: skip
    add_device_options(prep)

    train = sub.add_parser("train", help="train a drafter for a target with transformers.Trainer")
    train.add_argument("--data", required=True, help="folder or data.jsonl from `dspark prepare-data`")
    train.add_argument("--output", required=True, help="checkpoints and the final drafter folder")
    add_target_options(train)
    train.add_argument("--init", default=None, help="drafter (folder or Hub id) to go on training on new data")
    train.add_argument("--markov-rank", type=int, default=128, help="0 = no Markov head (DFlash ablation)")
    train.add_argument("--loss", choices=["dspark", "ce"], default="dspark", help="ce = the DFlash ablation's loss")
    train.add_argument("--block-size", type=int, default=7)
    train.add_argument("--steps", type=int, default=None, help="optimizer steps (default: --epochs)")
    train.add_argument("--epochs", type=float, default=1.0)
    train.add_argument("--batch-size", type=int, default=8, help="per device")
    train.add_argument("--grad-accum", type=int, default=1)
    train.add_argument("--lr", type=float, default=6e-4)
    train.add_argument("--num-anchors", type=int, default=64, help="blocks trained per sequence")
    train.add_argument("--max-length", type=int, default=2048)
    train.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU)")
    train.add_argument("--save-steps", type=int, default=500)
    train.add_argument("--logging-steps", type=int, default=10)
    train.add_argument("--resume", default=None, help="checkpoint folder to resume from")
    train.add_argument("--calibration-rows", type=int, default=256,
                       help="rows held out to calibrate the confidences (at most 10%%; 0 = none)")  # fmt: skip
    add_device_options(train)

    vocab = sub.add_parser("draft-vocab", help="draft from the target's most frequent tokens only (cheaper rounds)")
    vocab.add_argument("--drafter", required=True, help="the trained drafter (folder or Hub id)")
    vocab.add_argument("--output", required=True, help="folder for the drafter with its draft vocabulary")
    vocab.add_argument("--size", type=int, default=None,
                       help="tokens to keep, most frequent first (EOS always kept); omit to draft from the whole "
                       "vocabulary again")  # fmt: skip
    vocab.add_argument("--data", default="sharegpt",
                       help="where to count tokens: a `dspark prepare-data` folder or data.jsonl (the target's own "
                       "responses) or 'sharegpt' (the dataset's assistant turns; default)")  # fmt: skip
    vocab.add_argument("--limit", type=int, default=None, help="count over the first N conversations")
    add_target_options(vocab)

    hub = sub.add_parser("export-hub", help="make a drafter folder a Hub repo that loads with trust_remote_code")
    hub.add_argument("folder", help="the Hub folder to write (card, config, weights, calibration, two code files)")
    hub.add_argument("--drafter", default=None, help="drafter folder to export (default: FOLDER itself, in place)")
    for command in sub.choices.values():
        document_options(command)
    return parser


# help for options that mean the same in every command that has them
OPTION_HELP = {
    "--max-new-tokens": "tokens to generate per prompt",
    "--device": "cpu, cuda, cuda:1 ... (default: CUDA if present)",
    "--dtype": "the target's dtype: float32 (default; the token-identity guarantee), bfloat16, float16",
    "--seed": "random seed of sampling and of the prompts' order",
    "--max-prompt-tokens": "prompts longer than this are skipped (cutting them would drop the chat template's head)",
    "--batch-size": "prompts per batch",
    "--block-size": "tokens the drafter drafts per round (γ)",
    "--epochs": "passes over the data",
    "--grad-accum": "batches per optimizer step",
    "--lr": "peak learning rate (AdamW, cosine schedule)",
    "--max-length": "tokens per training sequence (longer ones are cut)",
    "--save-steps": "write a loadable drafter checkpoint every N steps",
    "--logging-steps": "log loss and acceptance estimates every N steps",
}


def document_options(command: argparse.ArgumentParser) -> None:
    """Every option says what it does and its default (shown by --help, and checked by the tests)."""
    for action in command._actions:
        if not action.option_strings or action.dest == "help":
            continue
        option = action.option_strings[-1]
        action.help = action.help or OPTION_HELP.get(option)
        if action.help is None:
            raise RuntimeError(f"{command.prog} {option} has no help text")  # a developer's error, caught by tests
        unset = action.default is None or action.default is False or action.default in ([], argparse.SUPPRESS)
        if not unset and "default" not in action.help:
            default = " ".join(map(str, action.default)) if isinstance(action.default, list) else action.default
            action.help += f" (default: {default})"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "max_new_tokens", 1) < 1:
        parser.error("--max-new-tokens must be >= 1")
    from dspark_hf.cli import run_command  # the heavy imports start here

    return run_command(parser, args)


if __name__ == "__main__":
    sys.exit(main())
