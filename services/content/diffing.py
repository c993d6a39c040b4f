"""The difference between two revisions of a draft (pure functions over their snapshots).

Short fields (title, subtitle, cover, category, source, targets, attachments) answer with
their value before and after. The body answers with a line diff (difflib over lines), and
for each changed line paired with its new version the character-level opcodes: Chinese has
no spaces between words, so a word diff would see a whole sentence as one word.

Body hunks follow difflib's opcodes over lines (0-based, end exclusive):
`{"op": "equal" | "replace" | "delete" | "insert", "before_start", "before_end",
"after_start", "after_end", "before": [lines], "after": [lines], "lines": [pairs]}`.
Equal hunks carry no text (the revisions have it); in a replace hunk the n-th old line is
paired with the n-th new line, and each pair has `chars`, difflib's opcodes over the two
lines' characters with the text of each side.
"""
from __future__ import annotations

import difflib

from .models import SNAPSHOT_FIELDS

# Beyond this many lines on a side, a replaced block is not paired line by line (its pairs
# would be noise and their character diffs expensive): it shows as old and new lines.
MAX_PAIRED_LINES = 200
# Character diffs of very long lines cost quadratic time in difflib: beyond this, the pair
# is shown as one replacement.
MAX_CHAR_DIFF_LINE = 5000


def diff_snapshots(before: dict, after: dict) -> list[dict]:
    """The changed fields between two snapshots, in the order of SNAPSHOT_FIELDS."""
    changes = []
    for name in SNAPSHOT_FIELDS:
        old, new = _value(before, name), _value(after, name)
        if old == new:
            continue
        if name == "body":
            changes.append({"field": "body", "before": None, "after": None, "hunks": body_hunks(old or "", new or "")})
        else:
            changes.append({"field": name, "before": old, "after": new, "hunks": None})
    return changes


def _value(snapshot: dict, name: str):
    # Snapshots stored before attachments existed have none.
    return snapshot.get(name, [] if name == "attachments" else None)


def body_hunks(before: str, after: str) -> list[dict]:
    old, new = before.splitlines(), after.splitlines()
    hunks = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, old, new, autojunk=False).get_opcodes():
        hunk = {"op": op, "before_start": i1, "before_end": i2, "after_start": j1, "after_end": j2,
                "before": [], "after": [], "lines": []}
        if op != "equal":
            hunk["before"], hunk["after"] = old[i1:i2], new[j1:j2]
        if op == "replace" and max(i2 - i1, j2 - j1) <= MAX_PAIRED_LINES:
            hunk["lines"] = [{"before": a, "after": b, "chars": char_opcodes(a, b)}
                             for a, b in zip(old[i1:i2], new[j1:j2])]
        hunks.append(hunk)
    return hunks


def char_opcodes(before: str, after: str) -> list[dict]:
    if max(len(before), len(after)) > MAX_CHAR_DIFF_LINE:
        opcodes = [("replace", 0, len(before), 0, len(after))]
    else:
        opcodes = difflib.SequenceMatcher(None, before, after, autojunk=False).get_opcodes()
    return [{"op": op, "before_start": i1, "before_end": i2, "after_start": j1, "after_end": j2,
             "before": before[i1:i2], "after": after[j1:j2]} for op, i1, i2, j1, j2 in opcodes]
