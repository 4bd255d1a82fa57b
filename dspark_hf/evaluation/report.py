"""Reports of `dspark eval` and `dspark bench`: where and how a run was made, a markdown table, a PNG plot.

A committed result must say what produced it, so every report carries the device, versions, date and command."""

from __future__ import annotations

import json
import platform
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import transformers

from ..decoding.profile import device_name
from ..kernels.cpu_linears import onednn_available


def environment(device: torch.device) -> dict[str, Any]:
    """Device, library versions, date and the command line of this run."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "device": device_name(device),
        "cpu_threads": torch.get_num_threads(),
        # how DSpark's generation computes fp32 linear layers on a CPU (cpu_linears.py); plain generate() keeps MKL
        "cpu_linears": ("oneDNN" if onednn_available() else "PyTorch default") if device.type == "cpu" else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "triton": triton_version,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": shlex.join(["dspark", *sys.argv[1:]]),
    }


def _environment_lines(env: dict[str, Any]) -> list[str]:
    return [
        f"- device: {env['device']} ({env['cpu_threads']} CPU threads"
        + (f"; DSpark's linear layers: {env['cpu_linears']}" if env.get("cpu_linears") else "")
        + ")",
        f"- versions: python {env['python']}, torch {env['torch']}, transformers {env['transformers']}, "
        f"triton {env['triton']}",
        f"- date: {env['date']}",
        f"- command: `{env['command']}`",
    ]


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def eval_markdown(report: dict[str, Any]) -> str:
    """τ and acceptance by position, one row per (dataset, temperature)."""
    block = max(len(r["per_position_acceptance"]) for r in report["results"])
    head = "| dataset | temperature | prompts | rounds | τ | " + " | ".join(f"pos {k + 1}" for k in range(block)) + " |"
    rows = [head, "|" + " --- |" * (5 + block)]
    for r in report["results"]:
        rates = " | ".join(_fmt(a) for a in r["per_position_acceptance"])
        rows.append(
            f"| {r['dataset']} | {r['temperature']:g} | {r['prompts']} | {r['rounds']} | {r['tau']:.2f} | {rates} |"
        )
    return "\n".join([f"# dspark eval — drafter `{report['drafter']}`", "", *rows, "", *_environment_lines(report)])


def bench_markdown(report: dict[str, Any]) -> str:
    """One row per method: tokens/s, speed against the best plain decoding of the run and against eager plain, τ,
    identical to plain; for drafter methods their gating, the share of verified drafts accepted and the drafts
    verified per round."""
    best = report.get("best_plain", "plain")
    rows = [
        f"| method | gating | tok/s | vs best plain ({best}) | vs eager plain | τ | accepted / verified | "
        "verified per round | identical to plain |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, m in report["methods"].items():
        identical = "-" if m["identical"] is None else ("yes" if m["identical"] else "**no**")
        accepted = "-" if m.get("acceptance_rate") is None else f"{100 * m['acceptance_rate']:.1f}%"
        verified = _fmt(m.get("mean_verified"))
        rows.append(
            f"| {name} | {m.get('gating', '-')} | {m['tok_s']:.1f} | **{m.get('vs_best_plain', m['speedup']):.2f}×** | "
            f"{m['speedup']:.2f}× | {m['tau']:.2f} | {accepted} | {verified} | {identical} |"
        )
    warmups = [f"{name} {m['warmup_s']:.1f} s" for name, m in report["methods"].items() if "warmup_s" in m]
    setup = (
        f"{report['data']}: {report['prompts']} prompts, {report['max_new_tokens']} new tokens, temperature "
        f"{report['temperature']:g}, batch 1, median of {report['repeats']} passes after warm-up"
    )
    profile = [
        f"Where the time goes (one more pass over {report.get('profile_prompts', report['prompts'])} prompts, device "
        "synchronised around each target forward):",
        "",
        "| method | target forwards | drafting | rest of generate() | total s |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, m in report["methods"].items():
        p = m["profile"]
        shares = " | ".join(f"{100 * p[k] / p['total_s']:.0f}%" for k in ("target_forward_s", "draft_s", "other_s"))
        profile.append(f"| {name} | {shares} | {p['total_s']:.2f} |")
    warmup = f"Warm-up before timing (plain_compiled's includes its compile): {', '.join(warmups)}."
    return "\n".join(
        ["# dspark bench", "", setup, "", *rows, "", warmup, "", *profile, *_round_lines(report),
         "", *_environment_lines(report)]
    )  # fmt: skip


def _round_lines(report: dict[str, Any]) -> list[str]:
    """The static loop's rounds phase by phase, beside one step of the best plain decoding (its whole time per
    token): what a round costs against what it replaces."""
    timed = {name: m["profile"] for name, m in report["methods"].items() if m["profile"].get("round_phases")}
    if not timed:
        return []
    best = report.get("best_plain", "plain")
    step_ms = 1e3 / report["methods"][best]["tok_s"]
    lines = [
        "",
        f"A round of the static loop, phase by phase (the profile pass; device synchronised after each phase), "
        f"beside one step of {best}: {step_ms:.2f} ms per token.",
        "",
        "| method | phase | ms each | times per round | ms per round | per round, in plain steps |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, p in timed.items():
        phases = sorted(p["round_phases"].items(), key=lambda kv: (kv[0].startswith("verify"), _verify_order(kv[0])))
        for phase, (seconds, times) in phases:
            per_round = 1e3 * seconds / p["rounds"]
            lines.append(
                f"| {name} | {phase} | {1e3 * seconds / times:.2f} | {times / p['rounds']:.2f} | {per_round:.2f} | "
                f"{per_round / step_ms:.2f} |"
            )
        whole = 1e3 * sum(seconds for seconds, _ in p["round_phases"].values()) / p["rounds"]
        lines.append(f"| {name} | **whole round** | | | **{whole:.2f}** | **{whole / step_ms:.2f}** |")
    return lines


def _verify_order(phase: str) -> int:
    return int(phase.split()[-1]) if phase.startswith("verify") else 0


def profile_markdown(report: dict[str, Any]) -> str:
    """T_v in milliseconds: one row per number of new tokens per sequence, one column per batch size."""
    profile = report["profile"]
    batches = sorted(profile["verify_s"], key=int)
    rows = [
        "| new tokens per sequence | " + " | ".join(f"batch {b}" for b in batches) + " |",
        "| --- |" + " --- |" * len(batches),
    ]
    for t in range(1, max(len(profile["verify_s"][b]) for b in batches) + 1):
        cells = [
            _fmt(1e3 * row[t - 1], 1) if t <= len(row) else "-" for row in (profile["verify_s"][b] for b in batches)
        ]
        rows.append(f"| {t} | " + " | ".join(cells) + " |")
    drafts = [f"- drafting round ({signature}): {1e3 * s:.1f} ms" for signature, s in profile["draft_s"].items()]
    setup = (
        f"{profile['target']} in {profile['dtype']} on {profile['device']}: one target forward on a "
        f"{profile['context_tokens']}-token cache, milliseconds (median of repeats, made nondecreasing in tokens)"
    )
    return "\n".join(["# dspark profile", "", setup, "", *rows, "", *drafts, f"- cached at {report['path']}", "",
                      *_environment_lines(report)])  # fmt: skip


def plot_eval(report: dict[str, Any], path: Path) -> None:
    """Left: acceptance by block position per (dataset, temperature); right: τ per dataset and temperature."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for r in report["results"]:
        rates = [(k + 1, a) for k, a in enumerate(r["per_position_acceptance"]) if a is not None]
        left.plot(*zip(*rates, strict=True), marker="o", label=f"{r['dataset']} T={r['temperature']:g}")
    left.set(xlabel="block position", ylabel="acceptance", title="Acceptance by position", ylim=(0, 1))
    left.legend(fontsize=8)
    labels = [f"{r['dataset']}\nT={r['temperature']:g}" for r in report["results"]]
    bars = right.bar(labels, [r["tau"] for r in report["results"]], color="#4c72b0")
    right.bar_label(bars, fmt="%.2f")
    right.set(ylabel="τ (tokens per round)", title="Acceptance length τ")
    right.tick_params(axis="x", labelsize=7 if len(labels) > 4 else 9)
    _save(fig, path, f"drafter {Path(report['drafter']).name} · {report['device']}")


def plot_bench(report: dict[str, Any], path: Path) -> None:
    """Speed per method against the run's best plain decoding (τ printed on each bar)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    names = list(report["methods"])
    ratio = {n: report["methods"][n].get("vs_best_plain", report["methods"][n]["speedup"]) for n in names}
    bars = ax.bar(names, [ratio[n] for n in names], color="#55a868")
    ax.bar_label(bars, labels=[f"{ratio[n]:.2f}× τ={report['methods'][n]['tau']:.2f}" for n in names])
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    title = f"{Path(report['data']).stem}, {report['max_new_tokens']} new tokens, T={report['temperature']:g}"
    ax.set(ylabel=f"speed vs the best plain decoding ({report.get('best_plain', 'plain')})", title=title)
    _save(fig, path, report["device"])


def plot_profile(report: dict[str, Any], path: Path) -> None:
    """T_v against new tokens per sequence, one line per batch size, drafting rounds as horizontal lines."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    profile = report["profile"]
    for batch, row in sorted(profile["verify_s"].items(), key=lambda kv: int(kv[0])):
        ax.plot(range(1, len(row) + 1), [1e3 * v for v in row], marker="o", label=f"verify, batch {batch}")
    for signature, seconds in profile["draft_s"].items():
        ax.axhline(1e3 * seconds, linestyle="--", color="grey", label=f"drafting round ({signature})")
    ax.set(xlabel="new tokens per sequence", ylabel="ms", title=f"Measured costs, {profile['target']}", ylim=(0, None))
    ax.legend(fontsize=7)
    _save(fig, path, report["device"])


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError("PNG plots need matplotlib: pip install 'dspark-hf[eval]'") from err
    return plt


def _save(fig, path: Path, caption: str) -> None:
    fig.suptitle(caption, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    fig.clf()


# kind -> (markdown table, PNG plot) of a report
REPORTS = {
    "eval": (eval_markdown, plot_eval),
    "bench": (bench_markdown, plot_bench),
    "profile": (profile_markdown, plot_profile),
}


def write_report(report: dict[str, Any], out: str | Path, kind: str) -> list[Path]:
    """`out`.json, `out`.md and `out`.png for a `kind` ("eval", "bench" or "profile") report; returns the paths."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = [out.parent / f"{out.name}.{suffix}" for suffix in ("json", "md", "png")]
    paths[0].write_text(json.dumps(report, indent=1) + "\n")
    markdown, plot = REPORTS[kind]
    paths[1].write_text(markdown(report) + "\n")
    plot(report, paths[2])
    return paths
