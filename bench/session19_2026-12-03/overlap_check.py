"""Does run 9's prompt list carry HumanEval problems? For each HumanEval prompt: its function's name, and the first
30-60 characters of its docstring, looked up in the first N prompts of the list (those the data stage answered).
Usage: python bench/session19_2026-12-03/overlap_check.py PROMPTS.jsonl [N=8192]
"""

import json
import re
import sys
from pathlib import Path

EVAL = Path(__file__).resolve().parents[3] / "shared" / "data" / "eval" / "humaneval.jsonl"


def main(prompts_path: str, n: str = "8192") -> None:
    problems = [json.loads(line)["turns"][0] for line in EVAL.read_text().splitlines()]
    names = {re.findall(r"def (\w+)\(", p)[-1] for p in problems}
    openings = [m.group(1) for p in problems if (m := re.search(r'"""\s*(.{30,60})', p))]
    rows = [json.loads(line)["prompt"] for line in Path(prompts_path).read_text().splitlines()][: int(n)]
    same_name = [m.group(1) for r in rows if (m := re.search(r"def (\w+)\(", r)) and m.group(1) in names]
    text = "\n".join(rows)
    found = [o for o in openings if o in text]
    print(f"{len(problems)} HumanEval problems; {len(rows)} prompts")
    print(f"prompts whose function shares a HumanEval name: {len(same_name)} {sorted(set(same_name))}")
    print(f"HumanEval docstring openings found in the prompts: {len(found)} of {len(openings)}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
