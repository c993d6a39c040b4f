"""One Aho–Corasick automaton over every lexicon term, allow-list phrase, wrong form
and secrecy phrase, run over the compact folded text."""
from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass

import ahocorasick

from .findings import BLOCKING, Finding
from .folding import FoldedText, fold_terms
from .lexicon import LexiconData

ALLOW = "(allow)"  # no category code can look like this
WORDING = "wording"
SECRECY = "secrecy"


@dataclass(frozen=True)
class Entry:
    category: str  # a lexicon category code, "wording", "secrecy", or ALLOW
    severity: str
    rule: str  # the term as ops wrote it
    suggestion: str | None
    own_gaps: frozenset[int]  # offsets where the term itself has a separator


class Matcher:
    """Immutable once built; `scan` may run in many threads at once."""

    def __init__(self, data: LexiconData):
        plain = []  # (term, category, severity, suggestion)
        for code, category in data.categories.items():
            for term, severity in category["terms"].items():
                plain.append((term, code, severity or category["severity"], None))
        plain += [(term, ALLOW, "", None) for term in data.allow]
        # A canonical name is allowed by itself, so a wrong form that happens to sit
        # inside the right one ("人民共和国" inside "中华人民共和国") never fires.
        plain += [(canonical, ALLOW, "", None) for canonical in set(data.wording.values())]
        plain += [(wrong, WORDING, BLOCKING, canonical) for wrong, canonical in data.wording.items()]
        plain += [(term, SECRECY, BLOCKING, None) for term in data.secrecy]

        grouped: dict[str, list[Entry]] = {}
        for (term, category, severity, suggestion), (key, gaps) in zip(plain, fold_terms([p[0] for p in plain])):
            grouped.setdefault(key, []).append(Entry(category, severity, term, suggestion, gaps))
        self._automaton = ahocorasick.Automaton()
        for key, entries in grouped.items():
            self._automaton.add_word(key, (len(key), tuple(entries)))
        self._automaton.make_automaton()
        self.size = len(plain)

    def scan(self, field: str, text: FoldedText) -> list[Finding]:
        if not text.compact or not self.size:  # an empty trie cannot be searched
            return []
        hits, allowed = [], []
        for last, (length, entries) in self._automaton.iter(text.compact):
            p, q = last - length + 1, last + 1
            for entry in entries:
                (allowed if entry.category == ALLOW else hits).append((p, q, entry))
        # Allow-list phrases are common in government prose: look at them only when needed.
        hits = [(p, q, e) for p, q, e in hits if text.joins(p, q, e.own_gaps)]
        if not hits:
            return []
        allowed = [(p, q, e) for p, q, e in allowed if text.joins(p, q, e.own_gaps, lenient=True)]
        hits = _outermost(_not_allowed(hits, allowed))
        findings = []
        for p, q, entry in hits:
            start, end = text.span(p, q)
            findings.append(Finding(entry.category, entry.severity, field, start, end,
                                    text.original[start:end], entry.rule, entry.suggestion))
        return findings


def _not_allowed(hits: list, allowed: list) -> list:
    """Drop hits lying inside an allow-listed phrase occurrence."""
    if not allowed:
        return hits
    allowed.sort(key=lambda h: h[0])
    starts, reach, furthest = [], [], -1
    for p, q, _ in allowed:
        furthest = max(furthest, q)
        starts.append(p)
        reach.append(furthest)  # the furthest end of any allowed span starting at or before p
    kept = []
    for hit in hits:
        k = bisect_right(starts, hit[0]) - 1
        if k < 0 or reach[k] < hit[1]:
            kept.append(hit)
    return kept


def _outermost(hits: list) -> list:
    """Of hits of one category nested in each other ("六合彩" in "六合彩开奖"), keep the outer."""
    hits.sort(key=lambda h: (h[2].category, h[0], -h[1]))
    kept, category, furthest = [], None, -1
    for hit in hits:
        if hit[2].category != category:
            category, furthest = hit[2].category, -1
        if hit[1] > furthest:
            kept.append(hit)
            furthest = hit[1]
    return kept
