"""Session 8 scratch: replays lookup/drafter mixing rules on the pickle of cpu_lookup_drafts.py and prints tau per
rule (python bench/session8_2026-12-02/cpu_lookup_policies.py lookup_drafts12.json). "guided ng3 last" at L10 is
the rule dspark_hf.generation.lookup_continuation implements."""

import json
import sys

d = json.load(open(sys.argv[1]))
eos = set(d["eos"])


def matches(ids, gram):
    size = len(gram)
    n = len(ids)
    return [i + size for i in range(0, n - size) if ids[i : i + size] == gram]  # continuation starts


def lookup(ids, max_ngram=2, num=64, last=False):
    n = len(ids)
    for size in range(min(max_ngram, n - 1), 0, -1):
        starts = [s for s in matches(ids, ids[-size:]) if s < n]
        if starts:
            s = starts[-1] if last else starts[0]
            return ids[s : s + num], size
    return [], 0


def guided(ids, dd, max_ngram=2, num=64, last=True):
    """lookup whose continuation starts with the drafter's first token, with the longest ngram"""
    n = len(ids)
    for size in range(min(max_ngram, n - 1), 0, -1):
        starts = [s for s in matches(ids, ids[-size:]) if s < n]
        good = [s for s in starts if dd and ids[s] == dd[0]]
        if good:
            s = good[-1] if last else good[0]
            return ids[s : s + num], size
    return [], 0


def acc(draft, tokens, a):
    k = 0
    while k < len(draft) and a + 1 + k < len(tokens) and draft[k] == tokens[a + 1 + k]:
        k += 1
    return k


def cut(draft, budget):
    draft = draft[: max(budget, 0)]
    return draft[: next((k + 1 for k, t in enumerate(draft) if t in eos), None)]


def run(rows, policy, lnum=10):
    rounds = toks = ver = 0
    for r in rows:
        P, T, D = r["prompt_len"], r["tokens"], r["drafts"]
        a = P
        while a < len(T) - 1:
            rem = P + 256 - a - 2
            dd = cut(D[a - P], min(7, rem))
            draft = cut(policy(T[: a + 1], dd), min(lnum, rem))
            k = acc(draft, T, a)
            rounds += 1
            toks += k + 1
            ver += len(draft)
            a += k + 1
    return toks / rounds, ver / rounds


def best(ng, last):
    def p(ids, dd):
        cand, s = lookup(ids, ng, last=last)
        return cand if cand and ((dd and cand[0] == dd[0]) or s >= 2) else dd

    return p


def guided_pol(ng, last, lone=2):
    def p(ids, dd):
        cand, s = guided(ids, dd, ng, last=last)
        if cand:
            return cand
        cand, s = lookup(ids, ng, last=last)
        return cand if s >= lone else dd

    return p


def oracle(ids, dd):
    return None


policies = {
    "drafter": lambda ids, dd: dd,
    "hf_lookup": lambda ids, dd: lookup(ids)[0],
    "best ng2 first": best(2, False),
    "best ng2 last": best(2, True),
    "best ng3 last": best(3, True),
    "best ng4 last": best(4, True),
    "guided ng2 last": guided_pol(2, True),
    "guided ng3 last": guided_pol(3, True),
    "guided ng3 last lone3": guided_pol(3, True, 3),
    "guided ng4 last lone3": guided_pol(4, True, 3),
    "guided ng3 first": guided_pol(3, False),
}
for name, rows in d["sets"].items():
    print(name, len(rows))
    for pn, pol in policies.items():
        tau, v = run(rows, pol)
        print(f"  {pn:26s} tau {tau:.3f}  verified/round {v:.2f}")
print("---- lengths / extension")


def ext_pol(ids, dd, ng=3):
    cand, s = guided(ids, dd, ng, last=True)
    if cand:
        return cand
    cand, s = lookup(ids, ng, last=True)
    if s >= 2:
        return cand
    if len(dd) >= 3:
        e, s2 = lookup(ids + dd, ng, last=True)
        if s2 >= 2:
            return dd + e
    return dd


for name, rows in d["sets"].items():
    out = []
    for ln in (7, 10, 16, 24):
        tau, v = run(rows, guided_pol(3, True), lnum=ln)
        out.append(f"L{ln} {tau:.3f}/{v:.1f}")
    tau, v = run(rows, ext_pol, lnum=16)
    out.append(f"ext16 {tau:.3f}/{v:.1f}")
    print(name, "  ".join(out))
