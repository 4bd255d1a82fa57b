"""The `dspark` command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from transformers import TextStreamer

from .configuration_dspark import parse_gating
from .drafters import check_drafter_source, load_drafter
from .targets import encode_prompt, load_target, log, sampling_kwargs, timed_generate


def cmd_generate(args: argparse.Namespace) -> int:
    check_drafter_source(args.drafter)  # before the target loads
    target, tokenizer = load_target(args.target, allow_pickle=args.allow_pickle, device=args.device, dtype=args.dtype)
    drafter, trained = load_drafter(args.drafter, target)
    if not trained:
        log(
            "drafter: untrained (DSparkDrafter.from_target) - output is still exactly the target's, but drafts are "
            "rarely accepted, so expect tau near 1 and no speed-up. Pass --drafter for a trained one."
        )
    inputs = encode_prompt(tokenizer, args.prompt, target.device)
    kwargs = dict(
        max_new_tokens=args.max_new_tokens, pad_token_id=tokenizer.pad_token_id, **sampling_kwargs(args.temperature)
    )
    dspark_kwargs = dict(assistant_model=drafter, gating=args.gating)
    if args.prompt_lookup_tokens:
        dspark_kwargs["prompt_lookup_num_tokens"] = args.prompt_lookup_tokens

    # Warm up both paths once (allocator, kernels, lazy inits) so timings compare steady states.
    warm = dict(kwargs, max_new_tokens=min(8, args.max_new_tokens))
    timed_generate(target, inputs, args.seed, **warm, **dspark_kwargs)
    if args.compare:
        timed_generate(target, inputs, args.seed, **warm)

    streamer = None if args.json else TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    tokens, seconds = timed_generate(target, inputs, args.seed, streamer=streamer, **kwargs, **dspark_kwargs)
    stats = drafter.stats
    result: dict[str, Any] = {
        "text": tokenizer.decode(tokens, skip_special_tokens=True),
        "new_tokens": len(tokens),
        "tau": stats.tau,
        "rounds": stats.rounds,
        "lookup_rounds": stats.lookup_rounds,
        "per_position_acceptance": stats.per_position_acceptance,
        "dspark_tok_s": len(tokens) / seconds,
        "dspark_seconds": seconds,
        "drafter": _drafter_label(drafter, trained),
        "drafter_trained": trained,
        "target": target.config.name_or_path,
        "device": str(target.device),
        "temperature": args.temperature,
        "gating": args.gating or drafter.config.gating,
    }
    if args.compare:
        plain, plain_seconds = timed_generate(target, inputs, args.seed, **kwargs)
        result["plain_tok_s"] = len(plain) / plain_seconds
        result["plain_seconds"] = plain_seconds
        result["speedup"] = result["dspark_tok_s"] / result["plain_tok_s"]
        result["tokens_identical"] = plain.tolist() == tokens.tolist() if args.temperature == 0 else None
    if args.json:
        print(json.dumps(result))
        return 0
    print()
    print(
        f"DSpark : {result['new_tokens']} tokens in {seconds:.2f} s = {result['dspark_tok_s']:.1f} tok/s, "
        f"tau {stats.tau:.2f} over {stats.rounds} rounds"
    )
    if args.compare:
        identical = {True: "yes", False: "NO", None: "n/a (sampling)"}[result["tokens_identical"]]
        print(f"plain  : {len(plain)} tokens in {plain_seconds:.2f} s = {result['plain_tok_s']:.1f} tok/s")
        print(f"speed-up {result['speedup']:.2f}x, tokens identical: {identical}")
    return 0


def _drafter_label(drafter, trained: bool) -> str:
    return drafter.name_or_path if trained else "untrained"


def emit_report(report: dict[str, Any], args: argparse.Namespace, kind: str) -> int:
    """The end of eval / bench / profile: files with --out, then the JSON line (--json) or the markdown table."""
    from .evaluation.report import REPORTS, write_report

    if args.out:
        log("wrote " + ", ".join(map(str, write_report(report, args.out, kind))))
    print(json.dumps(report) if args.json else REPORTS[kind][0](report))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .evaluation import evaluate_acceptance, read_eval_prompts, summarize_rounds, teacher_forced_acceptance
    from .evaluation.report import environment

    if args.teacher_forced and (any(t > 0 for t in args.temperature) or args.gating != "fixed"):
        raise ValueError("--teacher-forced replays greedy rounds with fixed gating: drop --temperature / --gating")
    sets = {path: read_eval_prompts(path, args.limit) for path in args.data}  # every file checked before loading
    check_drafter_source(args.drafter)
    target, tokenizer = load_target(args.target, allow_pickle=args.allow_pickle, device=args.device, dtype=args.dtype)
    drafter, trained = load_drafter(args.drafter, target)
    if not trained:
        log("drafter: untrained (DSparkDrafter.from_target) - expect tau near 1. Pass --drafter for a trained one.")
    lookup = {"prompt_lookup_num_tokens": args.prompt_lookup_tokens} if args.prompt_lookup_tokens else {}
    results, rounds = [], []
    for path, prompts in sets.items():
        for temperature in args.temperature:
            log(f"{path}: {len(prompts)} prompts, temperature {temperature:g}")
            if args.teacher_forced:
                result = teacher_forced_acceptance(
                    target, tokenizer, drafter, prompts, args.max_new_tokens, args.batch_size, args.prompt_lookup_tokens
                )
            else:
                result = evaluate_acceptance(
                    target, tokenizer, drafter, prompts, args.max_new_tokens,
                    dict(sampling_kwargs(temperature), gating=args.gating, **lookup), seed=args.seed,
                )  # fmt: skip
            rounds += result.pop("stats")
            results.append(dict(result, dataset=Path(path).stem, data=str(path), temperature=temperature))
    pooled = summarize_rounds(rounds)
    report = {
        "tau": pooled["tau"], "per_position_acceptance": pooled["per_position_acceptance"],
        "rounds": pooled["rounds"], "prompts": sum(r["prompts"] for r in results), "results": results,
        "gating": args.gating, "drafter": _drafter_label(drafter, trained), "drafter_trained": trained,
        "method": "teacher_forced" if args.teacher_forced else "generate", "max_new_tokens": args.max_new_tokens,
        "prompt_lookup_num_tokens": args.prompt_lookup_tokens, **environment(target.device),
    }  # fmt: skip
    return emit_report(report, args, "eval")


def cmd_bench(args: argparse.Namespace) -> int:
    from .drafters import DEFAULT_DFLASH, DEFAULT_DRAFTER
    from .evaluation import read_eval_prompts
    from .evaluation.bench import benchmark
    from .evaluation.report import environment

    if args.repeats < 1:
        raise ValueError(f"--repeats must be at least 1, got {args.repeats}")
    if args.profile_limit is not None and args.profile_limit < 1:
        raise ValueError(f"--profile-limit must be at least 1, got {args.profile_limit}")
    prompts = read_eval_prompts(args.data, args.limit)
    check_drafter_source(args.drafter)
    check_drafter_source(args.dflash_drafter)
    target, tokenizer = load_target(args.target, allow_pickle=args.allow_pickle, device=args.device, dtype=args.dtype)
    drafters, labels = {}, {}
    for method, name in (("dspark", args.drafter), ("dflash_ablation", args.dflash_drafter)):
        if args.methods is not None and not any(m.startswith(method.split("_")[0]) for m in args.methods):
            continue
        drafter, trained = load_drafter(
            name, target, default=DEFAULT_DFLASH if method == "dflash_ablation" else DEFAULT_DRAFTER
        )
        if trained:
            drafters[method], labels[method] = drafter, drafter.name_or_path
        else:
            log(f"{method}: no trained drafter, left out of the benchmark")
    result = benchmark(
        target, tokenizer, prompts, drafters, args.max_new_tokens, args.temperature, args.repeats, args.seed,
        args.prompt_lookup_tokens, args.gating, args.methods, args.profile_limit, compiled=not args.no_compiled,
    )  # fmt: skip
    report = {
        **result, "data": str(args.data), "prompts": len(prompts), "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature, "repeats": args.repeats, "batch_size": 1, "drafters": labels,
        "prompt_lookup_num_tokens": args.prompt_lookup_tokens,
        "profile_prompts": min(args.profile_limit or len(prompts), len(prompts)),
        "dtype": str(target.dtype).removeprefix("torch."),
        **environment(target.device),
    }  # fmt: skip
    return emit_report(report, args, "bench")


def cmd_profile(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from .decoding.profile import load_profile, profile_path
    from .evaluation.report import environment

    if any(b < 1 for b in args.batch_sizes):
        raise ValueError(f"--batch-sizes must be positive, got {args.batch_sizes}")
    if args.max_tokens is not None and args.max_tokens < 1:
        raise ValueError(f"--max-tokens must be at least 1, got {args.max_tokens}")
    check_drafter_source(args.drafter)
    target, _ = load_target(args.target, allow_pickle=args.allow_pickle, device=args.device, dtype=args.dtype)
    drafter, trained = load_drafter(args.drafter, target)
    profile = load_profile(target, drafter, args.batch_sizes, args.max_tokens, refresh=not args.cached)
    report = {
        "profile": asdict(profile), "path": str(profile_path(target)), "drafter": _drafter_label(drafter, trained),
        **environment(target.device),
    }  # fmt: skip
    return emit_report(report, args, "profile")


def cmd_prepare_data(args: argparse.Namespace) -> int:
    from .training.data import prepare_data, read_prompts

    prompts = read_prompts(args.prompts, args.limit)
    target, tokenizer = load_target(args.target, allow_pickle=args.allow_pickle, device=args.device, dtype=args.dtype)
    path = prepare_data(
        target, tokenizer, prompts, args.output, args.max_new_tokens, args.batch_size, args.max_prompt_tokens,
        args.temperature, args.static_cache,
    )  # fmt: skip
    log(f"{len(prompts)} conversations in {path}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .training.data import load_rows
    from .training.trainer import train_drafter

    rows = load_rows(args.data)
    held_out = min(args.calibration_rows, len(rows) // 10)  # the last rows, never trained on
    rows, calibration_rows = (rows[:-held_out], rows[-held_out:]) if held_out else (rows, None)
    if not held_out:
        log("too few rows to hold some out: the confidences stay uncalibrated")
    target, tokenizer = load_target(args.target, allow_pickle=args.allow_pickle, device=args.device, dtype=args.dtype)
    extra = {"max_steps": args.steps} if args.steps else {"num_train_epochs": args.epochs}
    trainer = train_drafter(
        target, rows, args.output, markov_rank=args.markov_rank, block_size=args.block_size, loss_type=args.loss,
        num_anchors=args.num_anchors, max_length=args.max_length,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
        resume_from_checkpoint=args.resume, calibration_rows=calibration_rows, init=args.init,
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=args.grad_accum, learning_rate=args.lr, bf16=args.bf16,
        save_steps=args.save_steps, logging_steps=args.logging_steps, use_cpu=target.device.type == "cpu", **extra,
    )  # fmt: skip
    if trainer.calibration:
        report = trainer.calibration
        temps = " ".join(f"{t:.2f}" for t in report["temperatures"])
        log(f"calibration on {held_out} held-out rows: ECE {report['ece_before']:.4f} -> {report['ece_after']:.4f}")
        log(f"confidence temperatures by position: {temps}")
    runtime = trainer.train_metrics.get("train_runtime", 0.0)
    log(f"drafter saved to {args.output} after {trainer.state.global_step} steps (training loop {runtime:.1f} s)")
    return 0


def cmd_draft_vocab(args: argparse.Namespace) -> int:
    """Copy a drafter folder with a draft vocabulary in its config; weights and every other file stay as they are."""
    import shutil

    from huggingface_hub import snapshot_download
    from transformers import AutoConfig

    from .configuration_dspark import check_draft_vocab
    from .modeling_dspark import check_target_compatible
    from .targets import eos_ids
    from .training.draft_vocab import count_tokens, coverage, most_frequent

    source = Path(args.drafter)
    source = source if source.is_dir() else Path(snapshot_download(args.drafter))
    config = AutoConfig.from_pretrained(source)
    if config.model_type != "dspark":
        raise ValueError(f"{args.drafter} holds a {config.model_type!r} model, not a DSpark drafter")
    target, tokenizer = load_target(args.target, allow_pickle=args.allow_pickle, device="cpu")
    check_target_compatible(config, target)  # the tokens are counted with this target's tokenizer
    if args.size is None:
        ids = None
        log("no --size: the drafter drafts from the whole vocabulary")
    else:
        counts = count_tokens(args.data, config.vocab_size, tokenizer, args.limit)
        ids = most_frequent(counts, args.size, always=eos_ids(target, tokenizer))
        log(f"draft vocabulary: {len(ids)} tokens, {coverage(counts, ids):.2%} of the {int(counts.sum())} counted")
    config.draft_vocab = check_draft_vocab(ids, config.vocab_size)
    output = Path(args.output)
    if output.resolve() != source.resolve():
        shutil.copytree(source, output, dirs_exist_ok=True)
    config.save_pretrained(output)
    log(f"drafter written to {output}")
    return 0


def cmd_export_hub(args: argparse.Namespace) -> int:
    from .export_hub import export_hub

    folder = export_hub(args.drafter or args.folder, args.folder)
    log(f"Hub folder written to {folder}: upload it with `hf upload <org>/<name> {folder}`")
    return 0


DRAFTER_HELP = "drafter folder or Hub id (default: the shipped SmolLM2 drafter; 'untrained' for a fresh one)"
PICKLE_HELP = "also load a target whose weights are pickles (.bin), which can run code: only if you trust it"
TARGET_HELP = "target Hub id, folder or .gguf (default: SmolLM2-135M-Instruct)"
GATING_HELP = (
    "prefix policy per round: scheduler (L maximising expected tokens/s from measured costs), threshold[:a] or "
    "fixed[:L] (default: the drafter's own, normally scheduler)"
)


def gating_spec(spec: str) -> str:
    """argparse type: a gating name as `make_gating` reads it, checked before any model loads."""
    try:
        parse_gating(spec)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return spec


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
    gen.add_argument("--target", default=None, help=TARGET_HELP)
    gen.add_argument("--allow-pickle", action="store_true", help=PICKLE_HELP)
    gen.add_argument("--max-new-tokens", type=int, default=128)
    gen.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    gen.add_argument("--gating", type=gating_spec, default=None, help=GATING_HELP)
    gen.add_argument("--compare", action="store_true", help="also run plain generate() and report the speed-up")
    gen.add_argument("--prompt-lookup-tokens", type=int, default=0,
                     help="N > 0: prompt lookup beside the drafter (prompt_lookup_num_tokens=N), e.g. 16")  # fmt: skip
    gen.add_argument("--json", action="store_true", help="print one JSON object as the last line of stdout")
    gen.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA if present)")
    gen.add_argument("--dtype", default=None, help="float32 (default), bfloat16 ...")
    gen.add_argument("--seed", type=int, default=0)
    gen.set_defaults(func=cmd_generate)

    ev = sub.add_parser("eval", help="acceptance length (tau) of a drafter over JSONL prompt sets")
    ev.add_argument("--data", required=True, nargs="+", help='JSONL files, rows {"turns": [...]} (first turn = prompt)')
    ev.add_argument("--limit", type=int, default=None, help="use the first N prompts of each file")
    ev.add_argument("--max-new-tokens", type=int, default=256)
    ev.add_argument("--temperature", type=float, nargs="+", default=[0.0],
                    help="one or more; 0 = greedy (default), e.g. --temperature 0 1")  # fmt: skip
    ev.add_argument("--drafter", default=None, help=DRAFTER_HELP)
    ev.add_argument("--target", default=None, help=TARGET_HELP)
    ev.add_argument("--allow-pickle", action="store_true", help=PICKLE_HELP)
    ev.add_argument("--gating", type=gating_spec, default="fixed",
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
    ev.add_argument("--device", default=None)
    ev.add_argument("--dtype", default=None)
    ev.add_argument("--seed", type=int, default=0)
    ev.set_defaults(func=cmd_eval)

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
    bench.add_argument("--target", default=None, help=TARGET_HELP)
    bench.add_argument("--allow-pickle", action="store_true", help=PICKLE_HELP)
    bench.add_argument("--out", default=None, help="write OUT.json, OUT.md (table) and OUT.png (plot)")
    bench.add_argument("--json", action="store_true", help="print one JSON object as the last line of stdout")
    bench.add_argument("--gating", type=gating_spec, nargs="+", default=[],
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
    bench.add_argument("--device", default=None)
    bench.add_argument("--dtype", default=None)
    bench.add_argument("--seed", type=int, default=0)
    bench.set_defaults(func=cmd_bench)

    prof = sub.add_parser("profile", help="measure verification and drafting costs on this device (cached on disk)")
    prof.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8],
                      help="batch sizes to measure (the generate() path uses 1)")  # fmt: skip
    prof.add_argument("--max-tokens", type=int, default=None,
                      help="new tokens per sequence up to this (default: the drafter's block + 1)")  # fmt: skip
    prof.add_argument("--cached", action="store_true", help="reuse a cached profile; measure only what it lacks")
    prof.add_argument("--drafter", default=None, help=DRAFTER_HELP)
    prof.add_argument("--target", default=None, help=TARGET_HELP)
    prof.add_argument("--allow-pickle", action="store_true", help=PICKLE_HELP)
    prof.add_argument("--out", default=None, help="write OUT.json, OUT.md (table) and OUT.png (plot)")
    prof.add_argument("--json", action="store_true", help="print one JSON object as the last line of stdout")
    prof.add_argument("--device", default=None)
    prof.add_argument("--dtype", default=None)
    prof.set_defaults(func=cmd_profile)

    prep = sub.add_parser("prepare-data", help="regenerate training responses with the target (resumable)")
    prep.add_argument("--prompts", default="sharegpt", help="'sharegpt' (default) or a JSONL file of prompts")
    prep.add_argument("--output", required=True, help="folder for data.jsonl")
    prep.add_argument("--target", default=None, help=TARGET_HELP)
    prep.add_argument("--allow-pickle", action="store_true", help=PICKLE_HELP)
    prep.add_argument("--limit", type=int, default=None, help="use the first N prompts")
    prep.add_argument("--max-new-tokens", type=int, default=512)
    prep.add_argument("--max-prompt-tokens", type=int, default=1024)
    prep.add_argument("--batch-size", type=int, default=8)
    prep.add_argument("--temperature", type=float, default=0.0, help="0 = greedy responses (default)")
    prep.add_argument("--static-cache", action="store_true",
                      help="GPU: one batch shape, a static KV cache: decoding compiled once (CUDA graphs)")  # fmt: skip
    prep.add_argument("--device", default=None)
    prep.add_argument("--dtype", default=None)
    prep.set_defaults(func=cmd_prepare_data)

    train = sub.add_parser("train", help="train a drafter for a target with transformers.Trainer")
    train.add_argument("--data", required=True, help="folder or data.jsonl from `dspark prepare-data`")
    train.add_argument("--output", required=True, help="checkpoints and the final drafter folder")
    train.add_argument("--target", default=None, help=TARGET_HELP)
    train.add_argument("--allow-pickle", action="store_true", help=PICKLE_HELP)
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
    train.add_argument("--device", default=None)
    train.add_argument("--dtype", default=None)
    train.set_defaults(func=cmd_train)

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
    vocab.add_argument("--target", default=None, help=TARGET_HELP)
    vocab.add_argument("--allow-pickle", action="store_true", help=PICKLE_HELP)
    vocab.set_defaults(func=cmd_draft_vocab)

    hub = sub.add_parser("export-hub", help="make a drafter folder a Hub repo that loads with trust_remote_code")
    hub.add_argument("folder", help="the Hub folder to write (card, config, weights, calibration, two code files)")
    hub.add_argument("--drafter", default=None, help="drafter folder to export (default: FOLDER itself, in place)")
    hub.set_defaults(func=cmd_export_hub)
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
    try:
        temperatures = getattr(args, "temperature", [])  # cheap checks before loading any model
        for temperature in temperatures if isinstance(temperatures, list) else [temperatures]:
            sampling_kwargs(temperature)
        if args.command == "generate":
            if not args.prompt.strip():
                raise ValueError("The prompt is empty.")
        return args.func(args)
    except (ValueError, OSError) as err:
        print(f"dspark: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
