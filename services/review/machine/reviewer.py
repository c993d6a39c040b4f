"""MachineReviewer: every check of the machine review over a draft's fields."""
from __future__ import annotations

from .findings import BLOCKING, Finding
from .folding import FoldedText
from .lexicon import LexiconData
from .matcher import Matcher
from .personal import find_personal_data
from .secrecy import find_secrecy_marks


class MachineReviewer:
    """Built once per lexicon version and shared: immutable, so `check` may run in many
    threads at once. Raises ValueError from the constructor on invalid data."""

    __slots__ = ("version", "_matcher")

    def __init__(self, data: LexiconData, version: str = "default"):
        data.validate()
        object.__setattr__(self, "version", version)
        object.__setattr__(self, "_matcher", Matcher(data))

    def __setattr__(self, name, value):
        raise AttributeError("MachineReviewer is immutable: build a new one")

    @property
    def term_count(self) -> int:
        return self._matcher.size

    def check(self, fields: dict[str, str], *, is_reprint: bool = False, source_named: bool = True) -> list[Finding]:
        """Findings over every field given ("title", "subtitle", "body" …), sorted by
        field then start; positions and text refer to the original field text."""
        findings: list[Finding] = []
        for field, text in fields.items():
            if text is None or text == "":
                continue
            if not isinstance(text, str):
                raise TypeError(f"field {field!r} must be a string, not {type(text).__name__}")
            folded = FoldedText(text)
            findings += self._matcher.scan(field, folded)
            findings += find_personal_data(field, folded)
            findings += find_secrecy_marks(field, folded)
        if is_reprint and not source_named:
            findings.append(Finding("reprint_source", BLOCKING, "source", 0, 0, "", "reprint_source"))
        findings.sort(key=lambda f: (f.field, f.start, f.end, f.category, f.rule))
        return findings
