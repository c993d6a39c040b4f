"""Personal data: resident ID numbers, mobile numbers and bank card numbers.

Runs on the width-folded text (same positions as the original). Every number is
bounded by non-digits, so a digit run longer than the form (a 20-digit serial) matches
nothing. Landlines and hotlines (12345, 010-12345678) are not personal data here, and
amounts ("13800000000元") are left alone. `matched` is always masked.
"""
from __future__ import annotations

import re
from datetime import date

from .findings import BLOCKING, Finding
from .folding import FoldedText

# GB/T 2260 province-level prefixes (the first two digits of a resident ID).
_PROVINCES = frozenset(
    "11 12 13 14 15 21 22 23 31 32 33 34 35 36 37 41 42 43 44 45 46 "
    "50 51 52 53 54 61 62 63 64 65 71 81 82".split()
)
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"
_NOT_MONEY = r"(?<![¥$￥])"  # at the start of a pattern
_NOT_AMOUNT = r"(?![ \t]*[元万亿%‰])"  # at the end

# 6-8-4, optionally grouped with one kind of separator ("110105 19491231 002X").
ID18 = re.compile(r"(?<![0-9])[1-9][0-9]{5}([ -]?)[0-9]{8}\1[0-9]{3}[0-9Xx](?![0-9])")
ID15 = re.compile(r"(?<![0-9])[1-9][0-9]{14}(?![0-9])")
MOBILE = re.compile(
    _NOT_MONEY + r"(?<![0-9+])(?:(?:\+|00)?86[ -]?)?1[3-9][0-9]([ -]?)[0-9]{4}\1[0-9]{4}(?![0-9]|-[0-9])"
    + _NOT_AMOUNT
)
# 16-19 digits, plain or in groups of four; 2-6 are the card networks' first digits.
BANK_CARDS = (
    re.compile(_NOT_MONEY + r"(?<![0-9])[2-6][0-9]{15,18}(?![0-9])" + _NOT_AMOUNT),
    re.compile(_NOT_MONEY + r"(?<![0-9])(?<![0-9][ -])[2-6][0-9]{3}([ -])[0-9]{4}(?:\1[0-9]{4}){2}"
               r"(?:\1[0-9]{1,3})?(?![ -]?[0-9])" + _NOT_AMOUNT),
)
# Every form has at least 11 digits: only the stretches of digits, spaces and dashes that
# long are searched, each with a little context for the prefix (+86) and the lookarounds.
_CANDIDATE = re.compile(r"[0-9][0-9 \-]{9,}[0-9Xx]")


def find_personal_data(field: str, text: FoldedText) -> list[Finding]:
    s = text.simplified
    windows = [(max(0, m.start() - 4), min(len(s), m.end() + 8)) for m in _CANDIDATE.finditer(s)]
    if not windows:
        return []
    found, taken = [], []

    def matches(pattern: re.Pattern):
        seen = set()
        for pos, endpos in windows:
            for m in pattern.finditer(s, pos, endpos):
                if m.span() not in seen:
                    seen.add(m.span())
                    yield m

    def add(m: re.Match, category: str, rule: str, masked: str) -> None:
        found.append(Finding(category, BLOCKING, field, m.start(), m.end(), masked, rule))
        taken.append((m.start(), m.end()))

    def free(m: re.Match) -> bool:
        return all(m.end() <= a or m.start() >= b for a, b in taken)

    for m in matches(ID18):
        if valid_id18(_digits(m.group())):
            add(m, "personal_data.id_number", "id_number", mask(text.original[m.start():m.end()], 4, 12))
    for m in matches(ID15):
        if valid_id15(m.group()):
            add(m, "personal_data.id_number", "id_number_15", mask(text.original[m.start():m.end()], 3, 9))
    for pattern in BANK_CARDS:
        for m in matches(pattern):
            digits = _digits(m.group())
            if free(m) and luhn_valid(digits):
                add(m, "personal_data.bank_card", "bank_card",
                    mask(text.original[m.start():m.end()], 4, len(digits) - 4))
    for m in matches(MOBILE):
        if free(m):
            add(m, "personal_data.mobile", "mobile", mask(text.original[m.start():m.end()], 4, 8))
    return found


def _digits(text: str) -> str:
    return "".join(ch for ch in text if ch.isalnum())


def valid_id18(number: str) -> bool:
    """GB 11643 checksum, a province prefix and a real birth date."""
    number = number.upper()
    if len(number) != 18 or number[:2] not in _PROVINCES or not _real_date(number[6:14]):
        return False
    total = sum(int(d) * w for d, w in zip(number[:17], _ID_WEIGHTS))
    return _ID_CHECK[total % 11] == number[17]


def valid_id15(number: str) -> bool:
    """The old 15-digit form has no checksum: a province prefix and a real 19yy date."""
    return number[:2] in _PROVINCES and _real_date("19" + number[6:12])


def _real_date(yyyymmdd: str) -> bool:
    try:
        born = date(int(yyyymmdd[:4]), int(yyyymmdd[4:6]), int(yyyymmdd[6:8]))
    except ValueError:
        return False
    return 1900 <= born.year <= 2100


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, d in enumerate(reversed(digits)):
        n = int(d) * (2 if i % 2 else 1)
        total += n - 9 if n > 9 else n
    return total % 10 == 0


def mask(text: str, lo: int, hi: int) -> str:
    """Star out the digits (and X) counted lo..hi-1 from the END of `text`, keeping any
    prefix and separators: mask("13800138000", 4, 8) == "138****8000"."""
    out, count = list(text), 0
    for i in range(len(text) - 1, -1, -1):
        if text[i].isalnum():
            if lo <= count < hi:
                out[i] = "*"
            count += 1
    return "".join(out)
