"""Folding a field for matching, and mapping folded positions back to the original text.

Three steps, the first two keep every character in place (one in, one out):
1. full-width ASCII to half-width, ASCII letters to lower case;
2. Traditional to Simplified (OpenCC t2s), so a term cannot be dodged in Traditional;
3. drop separators (anything not a letter or digit: spaces, punctuation, symbols,
   zero-width characters), so "颠 覆" and "颠-覆" read as "颠覆". Whether a match that
   spans dropped separators counts is decided by `FoldedText.joins`.
"""
from __future__ import annotations

import re
import unicodedata
from bisect import bisect_right

import opencc

_WIDTH = {code: code - 0xFEE0 for code in range(0xFF01, 0xFF5F)}
_WIDTH[0x3000] = 0x20  # ideographic space
_WIDTH.update({code: code + 0x20 for code in range(ord("A"), ord("Z") + 1)})
_WIDTH.update({code: code - 0xFEE0 + 0x20 for code in range(0xFF21, 0xFF3B)})  # Ａ-Ｚ to a-z

# Characters that fold: ASCII capitals, the ideographic space, and full-width ASCII except
# the clause punctuation of ordinary Chinese prose (，：；！？（）), which only ever separates
# and is left alone, so most text needs no folding at all.
_FOLDABLE = re.compile("[A-Z\u3000" + "".join(
    re.escape(chr(code)) for code in range(0xFF01, 0xFF5F) if chr(code) not in "，：；！？（）") + "]+")

SEPARATORS = re.compile(r"[\W_]+")
_KEPT = re.compile(r"[^\W_]+")
_SURROGATES = re.compile("[\ud800-\udfff]")

# Clause punctuation in the ORIGINAL text: ordinary prose puts it between words, so a
# term matched across it only counts when the term is spread out character by character.
STRONG = frozenset("\n\r\u2028\u2029，。；：！？、“”‘’「」『』《》〈〉（）【】〔〕［］—…")
MAX_GAP = 3  # visible separator characters tolerated between two characters of a term

_t2s = opencc.OpenCC("t2s")
_char_cache: dict[str, str] = {}


def _simplify_char(ch: str) -> str:
    out = _char_cache.get(ch)
    if out is None:
        out = _t2s.convert(ch)
        out = _char_cache[ch] = out if len(out) == 1 else ch
    return out


def to_simplified(text: str) -> str:
    """t2s that keeps every character in place (same length, same positions)."""
    text = _SURROGATES.sub("\ufffd", text)  # OpenCC cannot encode lone surrogates
    out = _t2s.convert(text)
    if len(out) == len(text):
        return out
    # A phrase rule changed a length somewhere: redo line by line, and character by
    # character on the lines that still do not line up.
    lines = []
    for line in text.split("\n"):
        converted = _t2s.convert(line)
        if len(converted) != len(line):
            converted = "".join(_simplify_char(ch) for ch in line)
        lines.append(converted)
    return "\n".join(lines)


def fold_width(text: str) -> str:
    return _FOLDABLE.sub(lambda m: m.group().translate(_WIDTH), text)


def fold_terms(terms: list[str]) -> list[tuple[str, frozenset[int]]]:
    """Each term folded like text: (compact form, offsets where the term itself had a
    separator). One OpenCC call for the whole list keeps building fast."""
    simplified = to_simplified("\n".join(fold_width(t) for t in terms)).split("\n")
    return [_compact_term(t) for t in simplified]


def _compact_term(term: str) -> tuple[str, frozenset[int]]:
    pieces = SEPARATORS.split(term)
    gaps, offset = set(), 0
    for piece in pieces:
        if piece and offset:
            gaps.add(offset)
        offset += len(piece)
    return "".join(pieces), frozenset(gaps)


def _invisible(ch: str) -> bool:
    return unicodedata.category(ch) in ("Cf", "Mn", "Me", "Cc") and ch not in "\n\r\t"


CHUNK = 256  # characters of text mapped at a time, only where something matched


class FoldedText:
    """A field's text folded three ways: `simplified` (steps 1-2, same positions as
    `original`) and `compact` (step 3). Dropping separators is a per-character filter,
    so `compact` is built chunk by chunk, and a chunk's map from compact back to
    original positions is made only when a match lands in it."""

    __slots__ = ("original", "simplified", "compact", "_chunk_starts", "_chunk_maps")

    def __init__(self, original: str):
        self.original = original
        self.simplified = simplified = to_simplified(fold_width(original))
        pieces, starts, at = [], [], 0
        for offset in range(0, len(simplified), CHUNK):
            piece = SEPARATORS.sub("", simplified[offset:offset + CHUNK])
            pieces.append(piece)
            starts.append(at)
            at += len(piece)
        self.compact = "".join(pieces)
        self._chunk_starts = starts
        self._chunk_maps: dict[int, list[int]] = {}

    def original_index(self, compact_index: int) -> int:
        k = bisect_right(self._chunk_starts, compact_index) - 1
        positions = self._chunk_maps.get(k)
        if positions is None:
            offset = k * CHUNK
            chunk = self.simplified[offset:offset + CHUNK]
            positions = [offset + i for m in _KEPT.finditer(chunk) for i in range(m.start(), m.end())]
            self._chunk_maps[k] = positions  # same value from any thread: a benign race
        return positions[compact_index - self._chunk_starts[k]]

    def span(self, p: int, q: int) -> tuple[int, int]:
        """Original [start, end) of the compact span [p, q)."""
        return self.original_index(p), self.original_index(q - 1) + 1

    def joins(self, p: int, q: int, own_gaps: frozenset[int], lenient: bool = False) -> bool:
        """Whether a term matched at compact [p, q) is really one term in the original.

        Separators inside the match are accepted where the term itself has one; else a
        gap of up to MAX_GAP spaces, symbols or zero-width characters (someone spacing a
        word out); clause punctuation or line breaks only when every pair of the term's
        (three or more) characters is separated, as in "颠，覆，国，家" — otherwise
        "…分裂。国家…" would match across two sentences. `lenient` (for allow-list
        phrases, which can only suppress) accepts clause punctuation too.
        """
        if self.original_index(q - 1) - self.original_index(p) == q - p - 1:
            return True  # contiguous in the original
        positions = [self.original_index(i) for i in range(p, q)]
        gaps = [(i, positions[i - 1] + 1, positions[i]) for i in range(1, q - p)
                if positions[i] - positions[i - 1] > 1]
        spread_out = lenient or (len(gaps) == q - p - 1 and q - p >= 3)
        for offset, a, b in gaps:
            if offset in own_gaps:
                continue
            gap = [ch for ch in self.original[a:b] if not _invisible(ch)]
            if len(gap) > MAX_GAP:
                return False
            if not spread_out and any(ch in STRONG for ch in gap):
                return False
        return True
