"""`dspark bench` on the real SmolLM2 target: every peer in one process on the same prompts, with the shipped
DSpark drafter and its DFlash ablation; greedy outputs compared with plain generate()."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import EVAL_DIR, tiny_target

from dspark_cli import main
from dspark_hf import DSparkDrafter
from dspark_hf.drafters import DEFAULT_DRAFTER, MODEL_CARDS
from dspark_hf.evaluation.bench import benchmark, method_context
from dspark_hf.evaluation.report import bench_markdown, environment
from dspark_hf.kernels import cpu_linears
from dspark_hf.kernels.cpu_linears import onednn_available

pytestmark = pytest.mark.slow
# on a CPU: plain generate() and prompt lookup with DSpark's linear layers
PLAIN_ONEDNN, LOOKUP_ONEDNN = (["plain_onednn"], ["prompt_lookup_onednn"]) if onednn_available() else ([], [])


def bench_args(data: str, limit: int, max_new_tokens: int, *more: str) -> list[str]:
    """`dspark bench` on the CPU over the first `limit` prompts of a shared eval set."""
    return ["bench", "--data", str(EVAL_DIR / f"{data}.jsonl"), "--limit", str(limit), "--max-new-tokens",
            str(max_new_tokens), "--device", "cpu", *more]  # fmt: skip


@pytest.fixture(scope="module")
def markov_off(tmp_path_factory):
    """The shipped drafter with its Markov head removed: a trained rank-0 drafter standing in for the DFlash ablation,
    whose checkpoint is not shipped."""
    shipped = DSparkDrafter.from_pretrained(MODEL_CARDS / DEFAULT_DRAFTER.split("/")[1])
    config = shipped.config
    config.markov_rank = 0
    ablation = DSparkDrafter(config)
    own = ablation.state_dict()
    ablation.load_state_dict({k: v for k, v in shipped.state_dict().items() if k in own and v.shape == own[k].shape},
                             strict=False)  # fmt: skip
    path = tmp_path_factory.mktemp("markov_off")
    ablation.save_pretrained(path)
    return path


def test_bench_json_markdown_and_plot(tmp_path, capsys, markov_off):
    out = tmp_path / "gsm8k"
    # plain_compiled is left out here (its compile costs minutes on SmolLM2): the tiny-target test below covers it
    args = bench_args("gsm8k", 1, 24, "--repeats", "2", "--dflash-drafter", str(markov_off), "--json", "--out",
                      str(out), "--no-compiled")  # fmt: skip
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    methods = report["methods"]
    expected = ["plain", *PLAIN_ONEDNN, "prompt_lookup", *LOOKUP_ONEDNN, "dflash_ablation", "dflash_lookup", "dspark",
                "dspark_lookup"]  # fmt: skip
    assert list(methods) == expected
    assert methods["plain"]["speedup"] == 1.0 and methods["plain"]["tau"] == 1.0
    assert all(methods[name]["tau"] == 1.0 for name in PLAIN_ONEDNN)
    # the honest headline: every method against the fastest plain row of this run
    plains = ["plain", *PLAIN_ONEDNN]
    best = max(plains, key=lambda name: methods[name]["tok_s"])
    assert report["best_plain"] == best and methods[best]["vs_best_plain"] == 1.0
    assert all(methods[name]["vs_best_plain"] <= 1.0 for name in plains)
    assert all(m["warmup_s"] > 0 for m in methods.values())
    assert all(methods[name]["tau"] == methods["prompt_lookup"]["tau"] for name in LOOKUP_ONEDNN)  # the same rounds
    for name, m in methods.items():
        assert m["identical"] is True, name  # greedy: every method gives plain's tokens
        assert len(m["tok_s_per_pass"]) == 2 and m["tok_s"] > 0
        assert m["speedup"] == pytest.approx(m["tok_s"] / methods["plain"]["tok_s"])
        assert m["vs_best_plain"] == pytest.approx(m["tok_s"] / methods[best]["tok_s"])
        p = m["profile"]
        assert p["target_forward_s"] > 0 and p["other_s"] > 0
        assert p["total_s"] == pytest.approx(p["target_forward_s"] + p["draft_s"] + p["other_s"])
    # the trained drafter is accepted: fewer target forwards per token than plain decoding
    assert methods["dspark"]["tau"] > 1.2 and methods["dflash_ablation"]["tau"] >= 1.0
    assert methods["dspark_lookup"]["tau"] > 1.2 and report["prompt_lookup_num_tokens"] == 16
    assert methods["dflash_lookup"]["gating"] == "fixed" and methods["dflash_lookup"]["tau"] >= 1.0
    assert methods["dspark"]["profile"]["draft_s"] > 0 and methods["plain"]["profile"]["draft_s"] == 0
    assert report["drafters"] == {
        "dspark": str(MODEL_CARDS / "SmolLM2-135M-Instruct-DSpark"),
        "dflash_ablation": str(markov_off),
    }
    assert {"device", "torch", "transformers", "date", "command"} <= set(report)
    assert report["cpu_linears"] == ("oneDNN" if PLAIN_ONEDNN else "PyTorch default")

    saved = json.loads(out.with_name("gsm8k.json").read_text())
    assert saved["methods"]["dspark"]["tok_s"] == methods["dspark"]["tok_s"]
    table = out.with_name("gsm8k.md").read_text()
    assert all(f"| {name} |" in table for name in methods) and "Where the time goes" in table
    assert f"vs best plain ({best})" in table and "Warm-up before timing" in table
    assert out.with_name("gsm8k.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_sampling_reports_no_identity_and_leaves_out_a_missing_ablation(capsys):
    args = bench_args("mt-bench", 1, 12, "--repeats", "1", "--temperature", "1.0", "--json", "--no-compiled")
    assert main(args) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out.strip().splitlines()[-1])
    assert list(report["methods"]) == [
        "plain",
        *PLAIN_ONEDNN,
        "prompt_lookup",
        *LOOKUP_ONEDNN,
        "dspark",
        "dspark_lookup",
    ]
    assert "dflash_ablation: no trained drafter" in captured.err
    assert all(m["identical"] is None for m in report["methods"].values())


@pytest.mark.skipif(not PLAIN_ONEDNN, reason="this PyTorch build has no oneDNN (mkldnn) linear op")
def test_onednn_rows_run_on_the_kernel_dspark_uses_and_the_others_do_not(monkeypatch):
    monkeypatch.setattr(cpu_linears, "MIN_WEIGHT_ELEMENTS", 0)  # the tiny target's layers too
    target = tiny_target(seed=0)
    routed = lambda: any("forward" in m.__dict__ for m in target.modules())  # noqa: E731
    for name in ("plain", "prompt_lookup", "dspark"):
        with method_context(target, name):
            assert not routed(), name
    for name in (*PLAIN_ONEDNN, *LOOKUP_ONEDNN):
        with method_context(target, name):
            assert routed(), name
        assert not routed()


@pytest.mark.parametrize("option", ["--repeats", "--profile-limit"])
def test_bench_refuses_zero_repeats_or_profile_prompts(capsys, option):
    args = ["bench", "--data", str(EVAL_DIR / "gsm8k.jsonl"), option, "0", "--device", "cpu"]
    assert main(args) == 1
    assert f"{option} must be at least 1" in capsys.readouterr().err


def test_bench_compares_gating_policies_on_the_same_drafter(tmp_path, capsys):
    """`--gating` adds DSpark rows under other policies; each row says its policy, the share of verified drafts that
    were accepted and how many drafts it verified per round."""
    args = bench_args("mt-bench", 2, 32, "--repeats", "1", "--gating", "fixed", "threshold", "scheduler", "--methods",
                      "dspark", "dspark_fixed", "dspark_threshold", "--profile-limit", "1", "--json", "--no-compiled",
                      "--out", str(tmp_path / "g"))  # fmt: skip
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    methods = report["methods"]
    assert list(methods) == ["plain", "dspark", "dspark_fixed", "dspark_threshold"]  # scheduler is dspark's default
    assert [methods[m].get("gating") for m in methods] == [None, "scheduler", "fixed", "threshold"]
    assert report["profile_prompts"] == 1
    for name in ("dspark", "dspark_fixed", "dspark_threshold"):
        m = methods[name]
        assert m["identical"] is True, name
        assert 0 < m["acceptance_rate"] <= 1 and 0 < m["mean_verified"] <= 7
    # fixed verifies every draft, so it verifies the most per round and has the lowest share accepted
    assert methods["dspark_fixed"]["mean_verified"] > 5  # 7 a round, less only where the token budget ends
    assert methods["dspark_fixed"]["mean_verified"] > methods["dspark_threshold"]["mean_verified"]
    assert methods["dspark_fixed"]["acceptance_rate"] < methods["dspark_threshold"]["acceptance_rate"]
    table = (tmp_path / "g.md").read_text()
    assert "| dspark_threshold | threshold |" in table and "accepted / verified" in table
    assert "over 1 prompts" in table


def test_bench_times_the_static_loops_rounds_phase_by_phase(tmp_path, capsys, monkeypatch):
    """Where the static loop verifies (a GPU; here forced on the CPU), the profile pass times each round's phases and
    the table sets a round beside one step of the best plain decoding."""
    monkeypatch.setenv("DSPARK_STATIC_LOOP", "1")
    args = bench_args("gsm8k", 1, 24, "--repeats", "1", "--methods", "dspark", "--no-compiled", "--json", "--out",
                      str(tmp_path / "r"))  # fmt: skip
    assert main(args) == 0
    profile = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["methods"]["dspark"]["profile"]
    phases = profile["round_phases"]
    assert {"keep context", "draft", "accept"} < set(phases) and phases["draft"][1] == profile["rounds"] > 0
    assert sum(times for name, (_, times) in phases.items() if name.startswith("verify ")) == profile["rounds"]
    table = (tmp_path / "r.md").read_text()
    assert "A round of the static loop, phase by phase" in table and "| dspark | **whole round** |" in table


def test_bench_refuses_unknown_methods_and_gatings(capsys):
    base = bench_args("gsm8k", 1, 4)
    assert main([*base, "--methods", "dspark_fastest"]) == 1
    assert "unknown or unavailable methods ['dspark_fastest']" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main([*base, "--gating", "fastest"])
    assert exit_.value.code == 2 and "Unknown gating 'fastest'" in capsys.readouterr().err


def test_benchmark_example_script_runs(tmp_path):
    """examples/benchmark.sh as a user runs it (tiny settings): the cost profile, then every set with the gatings."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "LIMIT": "1", "REPEATS": "1",
           "NEW_TOKENS": "8", "DEVICE": "cpu", "EVAL_DIR": str(EVAL_DIR), "SETS": "mt-bench",
           "COMPILED": "0"}  # fmt: skip
    script = Path(__file__).resolve().parents[1] / "examples" / "benchmark.sh"
    result = subprocess.run(["bash", str(script), str(tmp_path / "run")], env=env, capture_output=True, text=True,
                            timeout=900)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "run_profile.json").read_text())["profile"]["verify_s"]
    methods = json.loads((tmp_path / "run_mt-bench.json").read_text())["methods"]
    assert {"plain", "prompt_lookup", "dspark", "dspark_fixed", "dspark_threshold"} <= set(methods)
    assert not (tmp_path / "run_gsm8k.json").exists() and not (tmp_path / "run_humaneval.json").exists()  # SETS picks


def test_the_compiled_baseline_warms_up_untimed_and_can_be_the_best_plain(smollm2):
    """`plain_compiled` (Transformers' static cache with its compiled step, compiled on the CPU too) on a tiny target
    with SmolLM2's tokenizer: its compile happens in the reported warm-up, its greedy output is plain's, and every
    method's `vs_best_plain` is against the fastest plain row."""
    tokenizer = smollm2[1]
    target = tiny_target(vocab_size=tokenizer.vocab_size, seed=5)
    report = benchmark(target, tokenizer, ["What is 7 times 8?", "Name a colour."], {}, max_new_tokens=12, repeats=2,
                       only=["prompt_lookup"])  # fmt: skip
    methods = report["methods"]
    assert list(methods) == ["plain", "plain_compiled", "prompt_lookup"]
    compiled = methods["plain_compiled"]
    assert compiled["identical"] is True and compiled["tau"] == 1.0
    assert compiled["warmup_s"] > 3 * methods["plain"]["warmup_s"]  # the compile, kept out of the timing
    best = report["best_plain"]
    assert best in ("plain", "plain_compiled") and methods[best]["tok_s"] == max(
        methods["plain"]["tok_s"], compiled["tok_s"]
    )
    for m in methods.values():
        assert m["vs_best_plain"] == pytest.approx(m["tok_s"] / methods[best]["tok_s"])
    setup = dict(data="x", prompts=2, max_new_tokens=12, temperature=0.0, repeats=2, **environment(target.device))
    table = bench_markdown(dict(report, **setup))
    assert f"vs best plain ({best})" in table and "plain_compiled's includes its compile" in table
