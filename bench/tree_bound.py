"""The most token trees could add to the suffix drafter's linear drafts, on recorded streams.

    python bench/tree_bound.py [--rows 7] [--n-gen 256]

Untimed and exact: every stream of ``bench/results/streams_default_256.json`` (plain greedy
outputs of the default model, 40 code-rewrite and 32 chat prompts, see bench/planner_sim.py) is
walked twice, step by step as the engine verifies:

- **linear**: the suffix drafter (the engine's settings) drafts its full path (up to 64
  tokens) and the target accepts the prefix that matches the stream;
- **tree**: the same path, and wherever the target departs from it (or goes on past its end) a
  branch may win more tokens — if the target's next tokens are among the alternatives the suffix
  trees hold there. The tree is given everything: every continuation of the drafter's match
  (``min_token_prob`` 0), and of shorter contexts too (trees cut at ``max_depth`` 16, 8, 4, 3
  and 2), the branch that matches the stream furthest chosen with hindsight, up to ``--rows``
  branch rows (the engine's tree adds at most 3), and those rows free.

Tokens per verify step, tree / linear, is then an upper bound on the tree engine's tokens per
verify-second over the linear engine's with this drafter: the tree's path rows are the linear
draft's, its branch rows cost nothing here, and no real choice of branches beats hindsight.
Also counted: the steps where the target's token was not the path's next one, and how many of
them the drafter's match (or any context) had as an alternative.
Results: ``bench/results/tree_bound.json``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
N_PATH = 64                         # the engine's n_draft_max
CONTEXT_DEPTHS = (64, 16, 8, 4, 3, 2)   # alternatives from the match and from shorter contexts
N_ALTERNATIVES = 1024               # tree tokens asked of each alternative tree per step


def _deepest(tokens: np.ndarray, parents: np.ndarray, truth: list[int]) -> int:
    """How many tokens of ``truth`` a walk down the drafted tree (tokens, parents) matches."""
    child = {}
    for i, (tok, par) in enumerate(zip(tokens.tolist(), parents.tolist())):
        child.setdefault((par, tok), i)
    node, depth = -1, 0
    for tok in truth:
        node = child.get((node, tok))
        if node is None:
            break
        depth += 1
    return depth


def walk(prompt: list[int], gen: list[int], rows: int | None) -> dict:
    """Replay ``gen`` after ``prompt``: linear (``rows`` None) or with up to ``rows`` branch rows.
    Returns the walk's verify steps and, for the tree, its departures and how they were met."""
    import spec
    from spec.drafters._suffix import SuffixTree
    path_drafter = spec.make_drafter("suffix")
    alternatives = [SuffixTree(max_depth=d, min_token_prob=0.0) for d in CONTEXT_DEPTHS]
    p = np.asarray(prompt, np.int32)
    for d in (path_drafter, *alternatives):
        d.begin(p)
    stats = {"steps": 0, "departures": 0, "in_match": 0, "in_any_context": 0, "branch_tokens": 0}
    k = 0                            # gen[k] is id_last: sampled, not yet decoded
    while k + 1 < len(gen):
        history = np.asarray(prompt + gen[:k], np.int32)
        path = path_drafter.draft(history, gen[k], N_PATH).tolist()
        path_drafter.accept(0)       # the walk's own acceptance; the drafter syncs on history
        truth = gen[k + 1:]
        accepted = 0
        while accepted < min(len(path), len(truth)) and path[accepted] == truth[accepted]:
            accepted += 1
        gained = accepted
        if rows is not None and accepted < len(truth):
            stats["departures"] += 1
            depths = []
            for d in alternatives:
                tokens, parents, _ = d.draft_tree(history, gen[k], N_ALTERNATIVES)
                d.accept(0)
                depths.append(_deepest(tokens, parents, truth[:accepted + rows]))
            stats["in_match"] += depths[0] > accepted
            stats["in_any_context"] += max(depths) > accepted
            gained = max(accepted, max(depths))
            stats["branch_tokens"] += gained - accepted
        stats["steps"] += 1
        k += gained + 1
    return stats


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=7, help="branch rows the tree may add per step")
    ap.add_argument("--n-gen", type=int, default=256, help="stream length replayed (<= 256)")
    args = ap.parse_args(argv)
    sys.path[:0] = [str(ROOT), str(BENCH)]
    from conftest import save
    from planner_sim import STREAMS
    streams = json.loads(STREAMS.read_text())["streams"]
    per_prompt = {}
    for key, s in streams.items():
        gen = s["gen"][:args.n_gen]
        linear = walk(s["prompt"], gen, None)
        tree = walk(s["prompt"], gen, args.rows)
        per_prompt[key] = {"linear_steps": linear["steps"], **{f"tree_{k}": v for k, v in
                                                                tree.items()},
                           "bound": linear["steps"] / tree["steps"]}
    summary = {}
    for kind in ("code", "chat"):
        rows = [r for k, r in per_prompt.items() if k.startswith(kind)]
        departures = sum(r["tree_departures"] for r in rows)
        summary[kind] = {
            "prompts": len(rows),
            "bound median": statistics.median(r["bound"] for r in rows),
            "bound max": max(r["bound"] for r in rows),
            "bound pooled": sum(r["linear_steps"] for r in rows) / sum(r["tree_steps"]
                                                                        for r in rows),
            "departures": departures,
            "next token among the match's alternatives": sum(r["tree_in_match"] for r in rows)
            / departures,
            "next token among any context's alternatives": sum(r["tree_in_any_context"]
                                                               for r in rows) / departures,
        }
        print(kind, "  ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                              for k, v in summary[kind].items()), flush=True)
    save("tree_bound", {"command": "python bench/tree_bound.py " + " ".join(
        argv if argv is not None else sys.argv[1:]), "rows": args.rows, "n_gen": args.n_gen,
        "context_depths": CONTEXT_DEPTHS, "summary": summary, "per_prompt": per_prompt})
    return 0


if __name__ == "__main__":
    sys.exit(main())
