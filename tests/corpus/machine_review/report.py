"""Precision and recall of the machine review on this corpus.

    .venv/bin/python tests/corpus/machine_review/report.py

planted.tsv: violations, each with the category it must be found under.
clean.txt: ordinary government prose, which must raise nothing blocking.
Counted per (item, category): a planted item's expected category found is a true
positive, missed a false negative; any other category raised on any item (planted or
clean) is a false positive. With blocking_only, only blocking findings count as raised
and planted items of warning categories are left out.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))

from services.review.machine import BLOCKING, MachineReviewer, default_lexicons  # noqa: E402


@dataclass
class Item:
    fields: dict[str, str]
    expected: str | None = None  # None for clean prose
    is_reprint: bool = False
    source_named: bool = True
    label: str = ""


@dataclass
class Score:
    true_positives: int = 0
    false_negatives: int = 0
    false_positives: int = 0
    missed: list = field(default_factory=list)  # (item label, expected category)
    false_alarms: list = field(default_factory=list)  # (item label, finding)

    @property
    def precision(self) -> float:
        raised = self.true_positives + self.false_positives
        return self.true_positives / raised if raised else 1.0

    @property
    def recall(self) -> float:
        wanted = self.true_positives + self.false_negatives
        return self.true_positives / wanted if wanted else 1.0


def planted_items() -> list[Item]:
    items = []
    for number, line in enumerate((HERE / "planted.tsv").read_text("utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        category, field_name, text, *flags = line.split("\t")
        text = text.replace("\\u200b", "\u200b").replace("\\n", "\n")
        reprint = "reprint" in flags
        items.append(Item({field_name: text}, category, is_reprint=reprint, source_named=not reprint,
                          label=f"planted.tsv:{number}"))
    return items


def clean_items() -> list[Item]:
    items: list[Item] = []
    for line in (HERE / "clean.txt").read_text("utf-8").splitlines():
        if line.startswith("=== "):
            title = line[4:].partition("|")[2].strip()
            items.append(Item({"title": title, "body": ""}, label=f"clean.txt: {title}"))
        elif items and line.strip():
            body = items[-1].fields["body"]
            items[-1].fields["body"] = f"{body}\n{line}" if body else line
    return items


def score(reviewer: MachineReviewer, *, blocking_only: bool = False) -> Score:
    result = Score()
    warning_categories = {code for code, c in default_lexicons().categories.items() if c["severity"] != BLOCKING}
    for item in planted_items() + clean_items():
        if blocking_only and item.expected in warning_categories:
            continue
        findings = reviewer.check(item.fields, is_reprint=item.is_reprint, source_named=item.source_named)
        if blocking_only:
            findings = [f for f in findings if f.severity == BLOCKING]
        raised = {f.category for f in findings}
        if item.expected:
            if item.expected in raised:
                result.true_positives += 1
            else:
                result.false_negatives += 1
                result.missed.append((item.label, item.expected))
        for finding in findings:
            if finding.category != item.expected:
                result.false_alarms.append((item.label, finding))
        result.false_positives += len(raised - {item.expected})
    return result


def main() -> None:
    reviewer = MachineReviewer(default_lexicons())
    print(f"corpus: {len(planted_items())} planted violations, {len(clean_items())} clean items")
    for title, blocking_only in (("all findings", False), ("blocking findings", True)):
        s = score(reviewer, blocking_only=blocking_only)
        print(f"{title}: precision={s.precision:.3f} recall={s.recall:.3f} "
              f"(tp={s.true_positives} fn={s.false_negatives} fp={s.false_positives})")
        for label, expected in s.missed:
            print(f"  missed {expected}: {label}")
        for label, finding in s.false_alarms:
            print(f"  false alarm {finding.category} ({finding.severity}) {finding.matched!r}: {label}")


if __name__ == "__main__":
    main()
