"""The editable data of the machine review (LexiconData), its validation, and the
default data shipped in data/."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from .findings import SEVERITIES
from .folding import fold_terms

DATA_DIR = Path(__file__).parent / "data"
MAX_TERM_CHARS = 50
MAX_TERMS = 200_000
_CODE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)*$")
_KEYS = ("categories", "allow", "wording", "secrecy")
_CATEGORY_KEYS = ("name", "severity", "terms")
_DETECTOR_CODES = ("wording", "secrecy", "reprint_source", "personal_data")  # findings of the built-in checks


@dataclass
class LexiconData:
    """Everything ops may edit; JSON-serialisable both ways."""

    # code -> {"name": str, "severity": "blocking"|"warning", "terms": {term: severity or None}}
    categories: dict[str, dict] = field(default_factory=dict)
    allow: list[str] = field(default_factory=list)
    wording: dict[str, str] = field(default_factory=dict)  # wrong form -> canonical form
    secrecy: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "categories": {
                code: {"name": c["name"], "severity": c["severity"], "terms": dict(c["terms"])}
                for code, c in self.categories.items()
            },
            "allow": list(self.allow),
            "wording": dict(self.wording),
            "secrecy": list(self.secrecy),
        }

    @classmethod
    def from_json(cls, data: dict) -> "LexiconData":
        """Build from JSON data, validating it; raises ValueError saying what is wrong."""
        if not isinstance(data, dict):
            raise ValueError("lexicon data must be a JSON object")
        unknown = sorted(set(data) - set(_KEYS))
        if unknown:
            raise ValueError(f"unknown lexicon keys {unknown}; expected {list(_KEYS)}")
        categories = data.get("categories", {})
        if not isinstance(categories, dict):
            raise ValueError("'categories' must be an object of code -> category")
        lexicon = cls(
            categories={code: _category(code, c) for code, c in categories.items()},
            allow=_string_list(data.get("allow", []), "allow"),
            wording=_wording(data.get("wording", {})),
            secrecy=_string_list(data.get("secrecy", []), "secrecy"),
        )
        lexicon.validate()
        return lexicon

    def term_count(self) -> int:
        return (sum(len(c["terms"]) for c in self.categories.values())
                + len(self.allow) + len(self.wording) + len(self.secrecy))

    def validate(self) -> None:
        """Raise ValueError on anything the reviewer could not build from."""
        if self.term_count() > MAX_TERMS:
            raise ValueError(f"too many terms: {self.term_count()} (at most {MAX_TERMS})")
        for code, category in self.categories.items():
            _category(code, category)
        _string_list(self.allow, "allow")
        _string_list(self.secrecy, "secrecy")
        _wording(self.wording)
        _check_folded(self)


def _category(code, category) -> dict:
    where = f"category {code!r}"
    if not isinstance(code, str) or not _CODE.match(code):
        raise ValueError(f"{where}: code must look like 'prohibited.rumour' (a-z, 0-9, _ and dots)")
    if code.split(".")[0] in _DETECTOR_CODES:
        raise ValueError(f"{where}: code is reserved for a built-in check")
    if not isinstance(category, dict):
        raise ValueError(f"{where}: must be an object with {list(_CATEGORY_KEYS)}")
    unknown = sorted(set(category) - set(_CATEGORY_KEYS))
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}")
    name = category.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{where}: 'name' must be a non-empty string")
    severity = category.get("severity")
    if severity not in SEVERITIES:
        raise ValueError(f"{where}: unknown severity {severity!r} (use {' or '.join(SEVERITIES)})")
    terms = category.get("terms", {})
    if isinstance(terms, list):  # a plain list means: every term at the category's severity
        terms = dict.fromkeys(terms)
    if not isinstance(terms, dict):
        raise ValueError(f"{where}: 'terms' must be an object of term -> severity or null")
    checked = {}
    for term, term_severity in terms.items():
        _check_term(term, where)
        if term_severity is not None and term_severity not in SEVERITIES:
            raise ValueError(f"{where}: term {term!r} has unknown severity {term_severity!r}")
        checked[term] = term_severity
    return {"name": name, "severity": severity, "terms": checked}


def _string_list(values, where: str) -> list[str]:
    if not isinstance(values, list):
        raise ValueError(f"'{where}' must be a list of strings")
    for value in values:
        _check_term(value, where)
    return list(values)


def _wording(wording) -> dict[str, str]:
    if not isinstance(wording, dict):
        raise ValueError("'wording' must be an object of wrong form -> canonical form")
    for wrong, canonical in wording.items():
        _check_term(wrong, "wording")
        _check_term(canonical, f"wording (canonical form of {wrong!r})")
    return dict(wording)


def _check_folded(lexicon: LexiconData) -> None:
    """Checks on the folded terms, in one batch: folding one by one is slow."""
    terms = [t for c in lexicon.categories.values() for t in c["terms"]]
    terms += lexicon.allow + lexicon.secrecy + list(lexicon.wording) + list(lexicon.wording.values())
    folded = dict(zip(terms, (compact for compact, _ in fold_terms(terms))))
    for term in terms:
        if not folded[term]:
            raise ValueError(f"term {term!r} has no letters or digits to match")
    for wrong, canonical in lexicon.wording.items():
        if folded[wrong] == folded[canonical]:
            raise ValueError(f"wording: wrong form {wrong!r} reads the same as its canonical form {canonical!r}")


def _check_term(term, where: str) -> None:
    if not isinstance(term, str):
        raise ValueError(f"{where}: term {term!r} is not a string")
    if not term.strip():
        raise ValueError(f"{where}: empty term")
    if len(term) > MAX_TERM_CHARS:
        raise ValueError(f"{where}: term longer than {MAX_TERM_CHARS} characters: {term[:20]!r}…")
    if "\n" in term or "\r" in term:
        raise ValueError(f"{where}: term {term!r} spans lines")


def default_lexicons() -> LexiconData:
    """The default data: data/categories.json, data/terms/<code>.txt, allow.txt,
    wording.tsv and secrecy.txt."""
    categories = {}
    for code, meta in json.loads((DATA_DIR / "categories.json").read_text("utf-8")).items():
        terms = {}
        for line in _lines(DATA_DIR / "terms" / f"{code}.txt"):
            term, _, severity = line.partition("\t")
            terms[term.strip()] = severity.strip() or None
        categories[code] = {"name": meta["name"], "severity": meta["severity"], "terms": terms}
    wording = {}
    for line in _lines(DATA_DIR / "wording.tsv"):
        canonical, *wrong_forms = [cell.strip() for cell in line.split("\t")]
        wording.update((wrong, canonical) for wrong in wrong_forms if wrong)
    return LexiconData.from_json({
        "categories": categories,
        "allow": _lines(DATA_DIR / "allow.txt"),
        "wording": wording,
        "secrecy": _lines(DATA_DIR / "secrecy.txt"),
    })


def _lines(path: Path) -> list[str]:
    """Non-empty lines, without '#' comments."""
    out = []
    for line in path.read_text("utf-8").splitlines():
        line = line.split("#", 1)[0].rstrip()
        if line.strip():
            out.append(line.strip(" "))
    return out
