"""Scoring what a model read: exact match and character accuracy (1 - character error rate)."""

from __future__ import annotations

from collections import defaultdict


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance: insertions, deletions and substitutions of one character each cost 1."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def char_accuracy(truth: str, read: str) -> float:
    """1 - edit distance / length of the truth, floored at 0 (a reading longer than the truth can
    otherwise go negative)."""
    return max(0.0, 1.0 - edit_distance(truth, read) / max(1, len(truth)))


def summarise(rows: list[dict], by: str) -> dict:
    """Per value of ``by`` (e.g. font_size): count, exact-match and character accuracy in percent."""
    groups: dict = defaultdict(list)
    for r in rows:
        groups[r[by]].append(r)
    return {str(key): overall(group) for key, group in sorted(groups.items())}


def overall(rows: list[dict]) -> dict:
    n = len(rows)
    return {"n": n,
            "exact": 100.0 * sum(r["truth"] == r["read"] for r in rows) / max(1, n),
            "chars": 100.0 * sum(char_accuracy(r["truth"], r["read"]) for r in rows) / max(1, n)}
