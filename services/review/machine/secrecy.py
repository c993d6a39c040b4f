"""Classification marks (密级标志) on a draft.

The rule: the level words 绝密 / 机密 / 秘密 count only in the form of a MARK, never in
running prose, because publicity about the secrecy law is full of them ("保守国家秘密",
"国家秘密的密级分为绝密、机密、秘密三级", "揭秘", "商业秘密"). A mark is
  - the level with the statutory star, anywhere: "秘密★", "机密★10年", "绝密 ☆";
  - the level (or "绝密级") in square brackets, anywhere: "【机密】", "[秘密级]", "〔绝密〕";
  - the level (or "机密级") standing alone at the head of a line, as on a document's
    first line: "机密" or "机密级" followed by the line's end or by a space.
Marking phrases that are not level words ("仅供内部参考", "内部资料，注意保密", "不得外传")
live in the editable secrecy list and are matched with the lexicons (allow-list applies).
Runs on the simplified text, so "機密★" is a mark too.
"""
from __future__ import annotations

import re

from .findings import BLOCKING, Finding
from .folding import FoldedText

LEVELS = re.compile("绝密|机密|秘密")
# Patterns around a level word found at [i, i + 2); the text is width-folded, so an
# ideographic space is a plain space and "［" is "[".
_STAR_AFTER = re.compile(r"级?[ \t]*[★☆]")
_OPEN_BEFORE = re.compile(r"[【\[〔][ \t]*\Z")  # searched with endpos=i
_CLOSE_AFTER = re.compile(r"级?[ \t]*[】\]〕]")
_ALONE_AFTER = re.compile(r"级?(?=[ \t\r\n]|\Z)")


def find_secrecy_marks(field: str, text: FoldedText) -> list[Finding]:
    s, findings = text.simplified, []
    for level in LEVELS.finditer(s):
        span = _mark(s, level.start(), level.end())
        if span:
            start, end = span
            findings.append(Finding("secrecy", BLOCKING, field, start, end, text.original[start:end], "secrecy_mark"))
    return findings


def _mark(s: str, i: int, j: int) -> tuple[int, int] | None:
    if m := _STAR_AFTER.match(s, j):
        return i, m.end()
    if (opened := _OPEN_BEFORE.search(s, max(0, i - 4), i)) and (closed := _CLOSE_AFTER.match(s, j)):
        return opened.start(), closed.end()
    line_start = s.rfind("\n", 0, i) + 1
    if not s[line_start:i].strip(" \t") and (alone := _ALONE_AFTER.match(s, j)):
        return i, alone.end()
    return None
