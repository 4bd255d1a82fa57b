"""Soak test of the GPU fast path: hundreds of varied generate() calls in one process, as users make them.

Each call is drawn at random: DSpark (two drafters: the shipped one with its draft vocabulary, and the same weights
drafting from the whole vocabulary) with and without prompt lookup, greedy and sampled (temperature 0.8, with and
without top-k), on the float32 target or the same target in bfloat16; plain eager generate() and Transformers'
compiled static cache (`cache_implementation="static"`) interleaved; now and then the bfloat16 copy is cast to float32
and back (new weight tensors under kept graphs). Prompts run from 20 to 3000 tokens, `max_new_tokens` from 1 to 256,
so the static cache goes through every capacity step and the verification forwards through every length. Each plain
eager call is followed by the greedy float32 DSpark call on the same prompt and the two outputs are compared.

The first calls sweep every capacity step, dtype, drafter and lookup setting, so that the memory of the first 50
calls already holds every shape; the summary compares it with the last 50, and counts the CUDA graphs captured in
the last 50 (none once every shape has its graphs). Any error, any greedy mismatch and any fast-path fallback
(`dspark_hf.fallback_counts()`) fails the soak (exit status 1).

    python bench/soak.py --calls 500 --seed 1 --out bench/results/soak_seed1.json
    python bench/soak.py --repro   # the smallest failing sequence reported on 7c00fe6 (issue #27)
    python bench/soak.py --processes 4 --calls 150 --out bench/results/soak.json   # side by side, seeds 1..4

Prints one line per call and a summary; `--out` gets the summary and every call's record (JSON).
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

import dspark_hf

EVAL_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "eval"
CAPACITY_STEP = 1024


def prompt_texts(eval_dir: Path) -> list[str]:
    texts = []
    for name in ("gsm8k", "humaneval", "mt-bench"):
        for line in (eval_dir / f"{name}.jsonl").read_text().splitlines():
            if line.strip():
                texts.append(json.loads(line)["turns"][0])
    return texts


def prompt_ids(tokenizer, texts: list[str], length: int, rng: random.Random) -> torch.Tensor:
    """A chat-templated prompt of about `length` tokens: a question after enough other texts to reach the length,
    cut in the middle of that background where it is too long (the template's head and the question stay)."""
    question = rng.choice(texts)
    context: list[str] = []
    budget = length - len(tokenizer(question)["input_ids"]) - 16
    while budget > 0:
        context.append(rng.choice(texts))
        budget -= len(tokenizer(context[-1])["input_ids"]) + 2
    content = ("Background:\n" + "\n\n".join(context) + "\n\nQuestion: " if context else "") + question
    chat = [{"role": "user", "content": content}]
    text = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) > length:
        head = min(8, length // 2)
        ids = ids[:head] + ids[len(ids) - (length - head) :]
    return torch.tensor([ids])


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def memory_mb(device: torch.device) -> tuple[float, float]:
    """(allocated, reserved) MiB of the caching allocator."""
    if device.type != "cuda":
        return 0.0, 0.0
    return round(torch.cuda.memory_allocated(device) / 2**20, 1), round(torch.cuda.memory_reserved(device) / 2**20, 1)


def device_usable() -> bool:
    """False once the CUDA context is lost (an illegal memory access leaves every later call failing)."""
    try:
        torch.cuda.synchronize()
    except Exception:  # noqa: BLE001
        return False
    return True


def describe(call: int, r: dict, flag: str) -> str:
    what = f"{r['kind']:8s} {r.get('dtype', ''):9s} {r.get('drafter') or '':10s} lookup={r.get('lookup', 0):<2d}"
    size = f"{r.get('sample', ''):6s} prompt={r.get('prompt', 0):<5d} new={r.get('new', 0):<4d}"
    return f"{call:4d} {what} {size} {r.get('seconds', 0):7.3f}s {r.get('loop', '')} alloc={r['allocated_mb']}MB {flag}"


class Soak:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.rng = random.Random(args.seed)
        self.device = torch.device(args.device)
        self.targets = {"float32": dspark_hf.load_target(device=self.device)[0]}
        self.tokenizer = dspark_hf.load_target(device="cpu")[1]
        self.targets["bfloat16"] = copy.deepcopy(self.targets["float32"]).to(torch.bfloat16)
        # two drafters, each loaded once per target (a drafter follows its target's dtype: one object shared by both
        # targets would be cast back and forth, and its graphs captured again after each cast)
        self.drafters: dict[tuple[str, str], torch.nn.Module] = {}
        for dtype, target in self.targets.items():
            for name in ("shipped", "full-vocab"):
                drafter, trained = dspark_hf.load_drafter(args.drafter, target)
                if not trained:
                    sys.exit("soak: the shipped drafter was not found (run from a checkout, or pass --drafter)")
                if name == "full-vocab":
                    drafter.set_draft_vocab(None)
                self.drafters[name, dtype] = drafter
        self.drafter_names = ["shipped", "full-vocab"]
        self.texts = prompt_texts(Path(args.eval_dir))
        self.lengths: set[int] = set()  # tokens per verification forward seen in the static loop
        self.capacities: set[int] = set()
        self.in_dspark = False
        for target in self.targets.values():
            target.register_forward_pre_hook(self._count)
        self.records: list[dict] = []

    def _count(self, module, args) -> None:
        if self.in_dspark and args and isinstance(args[0], torch.Tensor):
            self.lengths.add(int(args[0].shape[-1]))

    def call(self, kind: str, prompt: torch.Tensor, max_new: int, dtype: str, drafter: str | None = None,
             lookup: int = 0, sample: str = "greedy") -> dict:  # fmt: skip
        target = self.targets[dtype]
        kwargs: dict = {"max_new_tokens": max_new, "do_sample": sample != "greedy"}
        if sample != "greedy":
            kwargs.update(temperature=0.8, top_k=50 if sample == "top-k" else 0, top_p=1.0)
        if kind == "compiled":
            kwargs["cache_implementation"] = "static"
        if kind == "dspark":
            kwargs["assistant_model"] = self.drafters[drafter, dtype]
            if lookup:
                kwargs["prompt_lookup_num_tokens"] = lookup
        ids = prompt.to(self.device)
        synchronize(self.device)
        started = time.perf_counter()
        self.in_dspark = kind == "dspark"
        try:
            out = target.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), pad_token_id=self.tokenizer.pad_token_id, **kwargs
            )
        finally:
            self.in_dspark = False
        synchronize(self.device)
        record = dict(kind=kind, dtype=dtype, drafter=drafter, lookup=lookup, sample=sample, prompt=ids.shape[1],
                      max_new=max_new, seconds=round(time.perf_counter() - started, 4),
                      new=int(out.shape[1] - ids.shape[1]))  # fmt: skip
        if kind == "dspark":
            stats = self.drafters[drafter, dtype].stats
            record.update(loop=stats.loop, tau=round(stats.tau, 3))
            record.update(fallbacks=list(getattr(stats, "fallbacks", [])), captures=getattr(stats, "captures", None))
            if stats.loop == "static":
                static = target._dspark_static_target
                self.capacities.add(static.capacity)
        record["tokens"] = out[0, ids.shape[1] :].tolist()
        return record

    def random_call(self, index: int) -> list[dict]:
        rng = self.rng
        if index % 97 == 96:  # new weight tensors for the bfloat16 copy: kept graphs must not replay the old ones
            self.targets["bfloat16"].to(torch.float32).to(torch.bfloat16)
            return [dict(kind="recast", dtype="bfloat16")]
        length = int(round(20 * (3000 / 20) ** rng.random()))  # 20 .. 3000, log-uniform
        max_new = rng.choice([1, 2, 3, 7, 8, 16, 17, 32, 64, 100, 128, 200, 256, 256])
        roll = rng.random()
        if roll < 0.12:  # plain eager, then DSpark greedy float32 on the same prompt: compared
            max_new = min(max_new, 64)
            prompt = prompt_ids(self.tokenizer, self.texts, length, rng)
            plain = self.call("plain", prompt, max_new, "float32")
            drafter, lookup = rng.choice(self.drafter_names), rng.choice([0, 16])
            spec = self.call("dspark", prompt, max_new, "float32", drafter, lookup)
            spec["compared"], spec["identical"] = True, spec["tokens"] == plain["tokens"]
            return [plain, spec]
        if roll < 0.17:  # Transformers' compiled static cache, in two shapes (each new shape recompiles)
            length, max_new = rng.choice([(64, 32), (512, 32)])
            prompt = prompt_ids(self.tokenizer, self.texts, length, rng)
            return [self.call("compiled", prompt, max_new, rng.choice(self.args.compiled_dtypes))]
        prompt = prompt_ids(self.tokenizer, self.texts, length, rng)
        dtype = "float32" if rng.random() < 0.6 else "bfloat16"
        sample = rng.choice(["greedy", "greedy", "sample", "top-k"])
        return [
            self.call("dspark", prompt, max_new, dtype, rng.choice(self.drafter_names), rng.choice([0, 16]), sample)
        ]

    def sweep(self) -> list[tuple]:
        """Every capacity step, with both dtypes, both drafters, lookup on and off, greedy."""
        return [
            (length, 256, dtype, drafter, lookup)
            for length in (40, 1100, 2100, 3000)
            for dtype in ("float32", "bfloat16")
            for drafter in self.drafter_names
            for lookup in (0, 16)
        ]

    def run(self) -> dict:
        args = self.args
        plan: list = [("sweep", c) for c in self.sweep()] if not args.repro else []
        if args.repro:  # DSpark + lookup 16, 256 new tokens, greedy: short, past the first capacity step, short
            plan = [("repro", (length, 256, "float32", "shipped", 16)) for length in (48, 1264, 49)]
        total = len(plan) if args.repro else args.calls
        index, calls = 0, 0
        while calls < total:
            try:
                if index < len(plan):
                    length, max_new, dtype, drafter, lookup = plan[index][1]
                    prompt = prompt_ids(self.tokenizer, self.texts, length, self.rng)
                    records = [self.call("dspark", prompt, max_new, dtype, drafter, lookup)]
                else:
                    records = self.random_call(index)
            except Exception as err:  # noqa: BLE001 - the soak counts every failure
                records = [dict(kind="error", error=repr(err), trace=traceback.format_exc(limit=6))]
            for record in records:
                record.update(index=index, call=calls)
                record["allocated_mb"], record["reserved_mb"] = memory_mb(self.device)
                record.pop("tokens", None)
                self.records.append(record)
                flag = "ERROR " + record["error"] if record["kind"] == "error" else ""
                if record.get("compared") and not record["identical"]:
                    flag = "MISMATCH"
                if record.get("fallbacks"):
                    flag += " FALLBACK " + ",".join(record["fallbacks"])
                print(describe(calls, record, flag), flush=True)
                if record["kind"] != "recast":
                    calls += 1
            if records[-1]["kind"] == "error" and self.device.type == "cuda" and not device_usable():
                print("soak: the CUDA context is lost; stopping", flush=True)
                break
            index += 1
        return self.summary()

    def summary(self) -> dict:
        calls = [r for r in self.records if r["kind"] != "recast"]
        compared = [r for r in calls if r.get("compared")]
        first, last = calls[:50], calls[-50:]
        counts = dspark_hf.fallback_counts() if hasattr(dspark_hf, "fallback_counts") else None
        return dict(
            seed=self.args.seed,
            calls=len(calls),
            errors=sum(r["kind"] == "error" for r in calls),
            fallbacks=None if counts is None else sum(counts.values()),
            fallback_counts=counts,
            compared=len(compared),
            mismatches=sum(not r["identical"] for r in compared),
            captures_last_50=sum(r.get("captures") or 0 for r in last),
            dspark_calls_last_50=sum(r["kind"] == "dspark" for r in last),
            by_kind={k: sum(r["kind"] == k for r in calls) for k in ("dspark", "plain", "compiled", "error")},
            static_loop_calls=sum(r.get("loop") == "static" for r in calls),
            recasts=sum(r["kind"] == "recast" for r in self.records),
            verification_lengths=sorted(self.lengths),
            capacities=sorted(self.capacities),
            allocated_mb_first_50=round(statistics.mean(r["allocated_mb"] for r in first), 1),
            allocated_mb_last_50=round(statistics.mean(r["allocated_mb"] for r in last), 1),
            reserved_mb_first_50=round(statistics.mean(r["reserved_mb"] for r in first), 1),
            reserved_mb_last_50=round(statistics.mean(r["reserved_mb"] for r in last), 1),
            seconds=round(sum(r.get("seconds", 0) for r in calls), 1),
            versions=dict(
                torch=torch.__version__,
                transformers=__import__("transformers").__version__,
                device=torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu",
            ),  # fmt: skip
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=500, help="calls to make (default: 500)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the random calls (default: 1)")
    parser.add_argument("--drafter", default=None, help="the drafter (default: the shipped one)")
    parser.add_argument("--device", default="cuda", help="the device (default: cuda)")
    parser.add_argument(
        "--compiled-dtypes", nargs="+", default=["float32", "bfloat16"],
        help="dtypes of the compiled static-cache calls (each compiles once per shape; default: both)",
    )  # fmt: skip
    parser.add_argument("--eval-dir", default=str(EVAL_DIR), help="folder of the prompt JSONL files")
    parser.add_argument("--repro", action="store_true", help="only the smallest failing sequence of issue #27")
    parser.add_argument("--out", default=None, help="write the summary and every call's record here (JSON)")
    parser.add_argument(
        "--processes", type=int, default=1,
        help="run this many soaks side by side (seeds SEED.., compiled calls alternating float32 / bfloat16); --out "
        "then gets their summaries and a total (default: 1)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.processes > 1:
        sys.exit(side_by_side(args))
    soak = Soak(args)
    summary = soak.run()
    print(json.dumps(summary, indent=1))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"summary": summary, "calls": soak.records}, indent=0))
    sys.exit(0 if passed(summary) else 1)


def passed(summary: dict) -> bool:
    return summary["errors"] == 0 and summary["mismatches"] == 0 and summary["fallbacks"] == 0


def side_by_side(args: argparse.Namespace) -> int:
    """`--processes N`: N soaks at once, one process each, seeds seed .. seed + N - 1; their logs beside --out."""
    out = Path(args.out or "soak.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    dspark_hf.load_target(device="cpu")  # converts the GGUF target once, before the processes would race for it
    runs = []
    for i in range(args.processes):
        seed = args.seed + i
        part = out.with_name(f"{out.stem}_seed{seed}.json")
        command = [sys.executable, __file__, "--seed", str(seed), "--calls", str(args.calls), "--device", args.device,
                   "--eval-dir", args.eval_dir, "--out", str(part),
                   "--compiled-dtypes", ["float32", "bfloat16"][i % 2]]  # fmt: skip
        if args.drafter:
            command += ["--drafter", args.drafter]
        log = open(out.with_name(f"{out.stem}_seed{seed}.log"), "w")  # noqa: SIM115 - closed after the run
        runs.append((seed, part, log, subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)))
    summaries = []
    for seed, part, log, process in runs:
        rc = process.wait()
        log.close()
        summary = json.loads(part.read_text())["summary"] if part.exists() else {"seed": seed, "errors": 1}
        summaries.append(dict(summary, rc=rc))
    keys = ("calls", "errors", "fallbacks", "mismatches", "compared", "captures_last_50")
    total = {key: sum(s.get(key) or 0 for s in summaries) for key in keys}
    total["passed"] = all(s.get("rc") == 0 for s in summaries)
    out.write_text(json.dumps({"total": total, "processes": summaries}, indent=1))
    print(json.dumps(total))
    return 0 if total["passed"] else 1


if __name__ == "__main__":
    main()
