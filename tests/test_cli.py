"""The `dspark generate` command, as a user runs it."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import tiny_target

from dspark_cli import build_parser, main
from dspark_hf import DSparkDrafter

pytestmark = pytest.mark.slow


def test_generate_compare_json_on_the_default_target():
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "dspark_cli",
            "generate",
            "--prompt",
            "What is 7 times 8?",
            "--compare",
            "--json",
            "--max-new-tokens",
            "24",
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["tokens_identical"] is True
    assert out["drafter_trained"] is True and out["drafter"].endswith("SmolLM2-135M-Instruct-DSpark")  # the shipped one
    assert out["new_tokens"] > 0 and out["text"].strip()
    assert out["tau"] >= 1.0 and out["rounds"] > 0
    assert out["dspark_tok_s"] > 0 and out["plain_tok_s"] > 0
    assert out["speedup"] == pytest.approx(out["dspark_tok_s"] / out["plain_tok_s"])


@pytest.fixture()
def tiny_dir(tmp_path, smollm2):
    _, tokenizer = smollm2
    target = tiny_target(vocab_size=49152)
    target.save_pretrained(tmp_path / "target")
    tokenizer.save_pretrained(tmp_path / "target")
    DSparkDrafter.from_target(target, markov_rank=0).save_pretrained(tmp_path / "drafter")
    DSparkDrafter.from_target(tiny_target(vocab_size=49152, seed=5), markov_rank=0).save_pretrained(tmp_path / "other")
    return tmp_path


def test_generate_with_a_saved_drafter_human_output(tiny_dir, capsys):
    code = main(
        [
            "generate",
            "--prompt",
            "hi",
            "--target",
            str(tiny_dir / "target"),
            "--drafter",
            str(tiny_dir / "drafter"),
            "--max-new-tokens",
            "12",
            "--compare",
            "--temperature",
            "0.7",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "tok/s" in out and "speed-up" in out and "n/a (sampling)" in out


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--prompt", "  "], 1, "prompt is empty"),
        (["--prompt", "hi", "--max-new-tokens", "0"], 2, "max-new-tokens"),
        (["--prompt", "hi", "--temperature", "-1"], 1, "temperature"),
        (["--prompt", "hi", "--drafter", "{dir}/other"], 1, "not for"),
        (["--prompt", "hi", "--drafter", "{dir}/target"], 1, "not a DSpark drafter"),
    ],
)
def test_generate_errors_are_clear(tiny_dir, capsys, args, code, message):
    args = [a.format(dir=tiny_dir) for a in args]
    try:
        assert main(["generate", "--target", str(tiny_dir / "target"), *args]) == code
    except SystemExit as exit_:  # argparse usage errors exit with status 2
        assert exit_.code == code
    assert message in capsys.readouterr().err


def test_quickstart_example_runs():
    script = Path(__file__).resolve().parents[1] / "examples" / "quickstart.py"
    result = subprocess.run(
        [sys.executable, str(script), "--max-new-tokens", "16"], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "identical to plain generate(): yes" in result.stdout and "speed-up" in result.stdout
    assert "DSparkStats(τ=" in result.stdout


def test_profile_command_measures_caches_and_reports(tiny_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DSPARK_HF_CACHE", str(tmp_path / "cache"))
    args = ["profile", "--target", str(tiny_dir / "target"), "--drafter", str(tiny_dir / "drafter"), "--batch-sizes",
            "1", "2", "--device", "cpu", "--json", "--out", str(tmp_path / "prof")]  # fmt: skip
    assert main(args) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out.strip().splitlines()[-1])
    profile = report["profile"]
    assert set(profile["verify_s"]) == {"1", "2"} and all(len(row) == 8 for row in profile["verify_s"].values())
    assert len(profile["draft_s"]) == 2 and report["path"].startswith(str(tmp_path / "cache" / "profiles"))
    assert "measuring costs" in captured.err and "profiling verification" in captured.err  # message + progress bar
    assert Path(report["path"]).is_file() and {"device", "torch", "date", "command"} <= set(report)
    table = (tmp_path / "prof.md").read_text()
    assert "| new tokens per sequence | batch 1 | batch 2 |" in table and "drafting round" in table
    assert (tmp_path / "prof.png").read_bytes()[:4] == b"\x89PNG"

    assert main([*args[:-2], "--cached"]) == 0  # --cached: nothing left to measure
    assert "measuring costs" not in capsys.readouterr().err
    for bad, message in (
        (["--batch-sizes", "0"], "--batch-sizes must be positive"),
        (["--max-tokens", "0"], "--max-tokens"),
    ):
        assert main([*args[:-2], *bad]) == 1
        assert message in capsys.readouterr().err


def test_generate_gating_option(tiny_dir, capsys):
    args = ["generate", "--prompt", "hi", "--target", str(tiny_dir / "target"), "--drafter", str(tiny_dir / "drafter"),
            "--max-new-tokens", "12", "--json"]  # fmt: skip
    assert main([*args, "--gating", "fixed:2"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["gating"] == "fixed:2"
    assert main(args) == 0  # default: the drafter's own (a fresh config's: the scheduler)
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["gating"] == "scheduler" and out["lookup_rounds"] == 0
    assert main([*args, "--prompt-lookup-tokens", "6"]) == 0  # greedy: the same text, lookup or not
    with_lookup = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert with_lookup["text"] == out["text"] and 0 <= with_lookup["lookup_rounds"] <= with_lookup["rounds"]
    with pytest.raises(SystemExit) as exit_:
        main([*args, "--gating", "fixed:x"])
    assert exit_.value.code == 2 and "Unknown gating" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (["[1, 2]"], "line 1: expected one JSON object per line"),
        (['{"turns": ["fine"]}', '{"turns": ["a" "b"]}'], "line 2: not valid JSON"),
        (['{"turns": "abc"}'], "line 1: expected one JSON object per line"),
        (['{"prompt": "no turns"}'], "line 1: expected"),
    ],
)
@pytest.mark.parametrize("command", ["eval", "bench"])
def test_bad_prompt_files_are_refused_before_any_model_loads(tmp_path, capsys, command, lines, message):
    data = tmp_path / "prompts.jsonl"
    data.write_text("\n".join(lines) + "\n")
    # a target that does not exist: reaching the model load would fail with another message
    assert main([command, "--data", str(data), "--target", str(tmp_path / "no-target")]) == 1
    err = capsys.readouterr().err
    assert f"{data}, {message}" in err and "turns" in err


@pytest.mark.parametrize("command", ["generate", "eval", "bench", "profile"])
def test_a_missing_drafter_folder_is_named_before_the_target_loads(tmp_path, capsys, command):
    data = tmp_path / "prompts.jsonl"
    data.write_text('{"turns": ["hi"]}\n')
    args = {"generate": ["--prompt", "hi"], "eval": ["--data", str(data)], "bench": ["--data", str(data)]}
    code = main([command, *args.get(command, []), "--drafter", "/nonexistent/drafter", "--target", str(tmp_path / "t")])
    err = capsys.readouterr().err
    assert code == 1 and "drafter folder /nonexistent/drafter not found" in err, err


def test_every_option_has_help_with_its_default_and_the_docs_synopsis_lists_it():
    """`dspark CMD --help` explains every option and its default; docs/cli.md's synopsis of each command lists exactly
    the options the parser has (no option undocumented, none documented that is gone)."""
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    docs = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text()
    synopses = {block.split()[1]: block for block in re.findall(r"```\n(dspark [a-z-]+ .*?)```", docs, re.S)}
    assert set(synopses) == set(commands)
    for name, command in commands.items():
        options = {a.option_strings[-1]: a for a in command._actions if a.option_strings and a.dest != "help"}
        assert set(re.findall(r"--[a-z0-9-]+", synopses[name])) == set(options), name
        for option, action in options.items():
            assert action.help, (name, option)
            if action.default is not None and action.default is not False and action.default != []:
                assert "default" in action.help, (name, option)


def test_dspark_help_answers_at_once_without_torch():
    script = Path(sys.executable).parent / "dspark"  # the console script an install puts beside python
    started = time.perf_counter()
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    assert result.returncode == 0, result.stderr
    assert all(name in result.stdout for name in ("generate", "eval", "bench", "profile", "train", "export-hub"))
    assert seconds < 1.0
    probe = (
        "import sys, dspark_cli;dspark_cli.build_parser(); print(sorted({'torch', 'transformers'} & {*sys.modules}))"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"
