"""Machine review speed: build a reviewer with the default data plus a synthetic lexicon
of 10,000 terms, then check realistic government prose (the clean corpus, repeated) in
drafts of about 6 KB. Throughput counts UTF-8 bytes. Prints, as its last line:
BENCH machine_review lexicon_terms=<int> check_mb_per_s=<float>
"""
from __future__ import annotations

import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

from services.review.machine import LexiconData, MachineReviewer, default_lexicons  # noqa: E402

CLEAN = ROOT / "tests" / "corpus" / "machine_review" / "clean.txt"
DRAFT_BYTES = 6_000


def clean_paragraphs() -> list[str]:
    lines = CLEAN.read_text("utf-8").splitlines()
    return [line for line in lines if line.strip() and not line.startswith(("#", "==="))]


def synthetic_lexicon(terms: int, alphabet: str, seed: int = 7) -> dict:
    """`terms` random 3-8 character phrases over the corpus's own characters."""
    rng = random.Random(seed)
    out: dict[str, None] = {}
    while len(out) < terms:
        out["".join(rng.choice(alphabet) for _ in range(rng.randint(3, 8)))] = None
    return out


def drafts(megabytes: float) -> list[str]:
    """The clean corpus's paragraphs, repeated, cut into drafts of about DRAFT_BYTES."""
    paragraphs, out, draft, draft_bytes, total = clean_paragraphs(), [], [], 0, 0
    target = int(megabytes * 1_000_000)
    while total < target:
        for paragraph in paragraphs:
            size = len(paragraph.encode("utf-8"))
            draft.append(paragraph)
            draft_bytes += size
            total += size
            if draft_bytes >= DRAFT_BYTES:
                out.append("\n".join(draft))
                draft, draft_bytes = [], 0
            if total >= target:
                break
    if draft:
        out.append("\n".join(draft))
    return out


def measure(terms: int = 10000, megabytes: float = 2.0) -> dict:
    paragraphs = clean_paragraphs()
    alphabet = "".join(sorted({ch for p in paragraphs for ch in p if "\u4e00" <= ch <= "\u9fff"}))
    data = default_lexicons().to_json()
    data["categories"]["prohibited.synthetic"] = {
        "name": "合成词库", "severity": "blocking", "terms": synthetic_lexicon(terms, alphabet)}
    lexicon = LexiconData.from_json(data)

    started = time.perf_counter()
    reviewer = MachineReviewer(lexicon, version="bench")
    build_s = time.perf_counter() - started

    texts = drafts(megabytes)
    size = sum(len(t.encode("utf-8")) for t in texts)
    started = time.perf_counter()
    findings = sum(len(reviewer.check({"title": "标题", "body": text})) for text in texts)
    check_s = time.perf_counter() - started
    return {
        "lexicon_terms": lexicon.term_count(),
        "build_s": round(build_s, 4),
        "check_mb_per_s": round(size / 1_000_000 / check_s, 2),
        "checked_mb": round(size / 1_000_000, 2),
        "drafts": len(texts),
        "findings": findings,
    }


if __name__ == "__main__":
    result = measure()
    print(" ".join(f"{k}={v}" for k, v in result.items()))
    print(f"BENCH machine_review lexicon_terms={result['lexicon_terms']} check_mb_per_s={result['check_mb_per_s']}")
