"""The `dspark` commands: what each does once `dspark_cli` has parsed its arguments."""

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
    load_profile(target, drafter, args.batch_sizes, args.max_tokens, refresh=not args.cached)
    profile = load_profile(target, drafter, args.batch_sizes, args.max_tokens, do_sample=True)  # + a sampled round
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


COMMANDS = {
    "generate": cmd_generate,
    "eval": cmd_eval,
    "bench": cmd_bench,
    "profile": cmd_profile,
    "prepare-data": cmd_prepare_data,
    "train": cmd_train,
    "draft-vocab": cmd_draft_vocab,
    "export-hub": cmd_export_hub,
}


def run_command(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Run a parsed `dspark` command (the parser is `dspark_cli`'s): cheap checks first, then the models load."""
    gatings = getattr(args, "gating", None)
    for spec in gatings if isinstance(gatings, list) else [gatings] if gatings else []:
        try:
            parse_gating(spec)
        except ValueError as err:
            parser.error(f"argument --gating: {err}")
    try:
        temperatures = getattr(args, "temperature", [])
        for temperature in temperatures if isinstance(temperatures, list) else [temperatures]:
            sampling_kwargs(temperature)
        if args.command == "generate" and not args.prompt.strip():
            raise ValueError("The prompt is empty.")
        return COMMANDS[args.command](args)
    except (ValueError, OSError) as err:
        print(f"dspark: error: {err}", file=sys.stderr)
        return 1
