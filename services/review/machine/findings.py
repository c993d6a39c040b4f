"""What the machine review reports: one Finding per problem, with its place in the field."""
from __future__ import annotations

from dataclasses import asdict, dataclass

BLOCKING = "blocking"
WARNING = "warning"
SEVERITIES = (BLOCKING, WARNING)


@dataclass(frozen=True)
class Finding:
    category: str  # e.g. "prohibited.rumour", "wording", "personal_data.mobile", "secrecy"
    severity: str  # "blocking" | "warning"
    field: str  # "title", "subtitle", "body", or "source" for the reprint rule
    start: int  # character offsets into the ORIGINAL field text
    end: int
    matched: str  # the original text there (masked for personal data)
    rule: str  # the lexicon term or the detector's name
    suggestion: str | None = None  # the canonical form for wording errors

    def to_dict(self) -> dict:
        return asdict(self)
