"""Reading reviews with their levels and findings (shared by the use-case modules)."""
from __future__ import annotations

from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from govmedia_kit.errors import not_found

from .models import Review, ReviewEditor, ReviewFinding, ReviewLevel, ReviewView


async def locked_review(s: AsyncSession, review_id: str) -> Review:
    """The review, locked for this transaction (PostgreSQL; SQLite's write lock is already held)."""
    review = (await s.exec(select(Review).where(Review.id == review_id).with_for_update())).first()
    if not review:
        raise not_found("review", review_id)
    return review


async def levels_of(s: AsyncSession, review_id: str) -> list[ReviewLevel]:
    rows = await s.exec(select(ReviewLevel).where(ReviewLevel.review_id == review_id).order_by(ReviewLevel.level))
    return list(rows.all())


async def findings_of(s: AsyncSession, review_ids: list[str]) -> dict[str, list[ReviewFinding]]:
    out: dict[str, list[ReviewFinding]] = {rid: [] for rid in review_ids}
    if review_ids:
        rows = await s.exec(select(ReviewFinding).where(ReviewFinding.review_id.in_(review_ids))
                            .order_by(ReviewFinding.id))
        for f in rows.all():
            out[f.review_id].append(f)
    return out


async def views_of(s: AsyncSession, reviews: list[Review]) -> list[ReviewView]:
    ids = [r.id for r in reviews]
    levels: dict[str, list[ReviewLevel]] = {rid: [] for rid in ids}
    if ids:
        rows = await s.exec(select(ReviewLevel).where(ReviewLevel.review_id.in_(ids)))
        for lv in rows.all():
            levels[lv.review_id].append(lv)
    findings = await findings_of(s, ids)
    return [ReviewView(r, sorted(levels[r.id], key=lambda lv: lv.level), findings[r.id]) for r in reviews]


async def editors_of(s: AsyncSession, review: Review) -> set[str]:
    """Who wrote or edited the reviewed version (the author included): they decide none of its
    levels and override none of its findings."""
    rows = (await s.exec(select(ReviewEditor.user_id).where(ReviewEditor.review_id == review.id))).all()
    return {review.author_id, *rows}
