"""Review use cases: one function each, called by REST, gRPC and the event consumer alike."""
from __future__ import annotations

import logging

from sqlalchemy.orm.exc import StaleDataError
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from govmedia.events.v1 import events_pb2 as ev
from govmedia_kit.auth import Principal
from govmedia_kit.db import page, utcnow
from govmedia_kit.errors import conflict, forbidden, invalid, not_found
from govmedia_kit.runtime import Runtime

from .models import LEVEL_ROLES, DecisionIn, Review, ReviewLevel, ReviewView, directory

log = logging.getLogger(__name__)

APPROVED = "govmedia.review.item.approved"
REJECTED = "govmedia.review.item.rejected"


# --- opening a review (consumer of govmedia.content.draft.submitted) -------------

async def open_review(s: AsyncSession, submitted: ev.DraftSubmitted) -> Review | None:
    """Three levels for the submitted version; an earlier open round of the item is superseded.
    A submission that arrives after a newer version's (a late redelivery) opens nothing."""
    item = submitted.item
    newer = (await s.exec(select(Review.id).where(Review.item_id == item.item_id,
                                                  Review.item_version > item.version))).first()
    if newer is not None:
        log.info("submission of item %s v%d arrived after a newer version's: ignored", item.item_id, item.version)
        return None
    now = utcnow()
    earlier = await s.exec(select(Review).where(Review.item_id == item.item_id, Review.state == "in_review")
                           .with_for_update())
    for old in earlier.all():
        old.state = "superseded"
        old.updated_at = now
        log.info("review %s of item %s superseded by version %d", old.id, item.item_id, item.version)
    review = Review(item_id=item.item_id, item_version=item.version, unit_id=item.unit_id, author_id=item.author_id,
                    title=item.title[:200], snapshot=item.SerializeToString(), created_at=now, updated_at=now)
    s.add(review)
    await s.flush()
    for level, roles in LEVEL_ROLES.items():
        s.add(ReviewLevel(review_id=review.id, level=level, holder_role="|".join(roles)))
    return review


# --- reading -------------------------------------------------------------------

async def get_review(rt: Runtime, who: Principal, review_id: str) -> ReviewView:
    async with rt.db.session() as s:
        review = await s.get(Review, review_id)
        if not review:
            raise not_found("review", review_id)
        await directory.require_reach(s, who, review.unit_id, "ops")
        return ReviewView(review, await _levels(s, review.id))


async def list_reviews(rt: Runtime, who: Principal, limit: int, cursor: str | None, item_id: str | None = None,
                       state: str | None = None, mine: bool = False) -> tuple[list[ReviewView], str | None]:
    """Reviews of the caller's unit (those of its region subtree for ops), oldest first.

    `mine`: open reviews of the caller's unit waiting at a level whose role the caller holds,
    minus the caller's own items (an author never reviews them)."""
    stmt = select(Review).order_by(Review.id).limit(limit + 1)
    if mine:
        stmt = stmt.where(Review.unit_id == who.unit_id)
    else:
        reach = directory.reach_filter(Review.unit_id, who, "ops")
        if reach is not None:
            stmt = stmt.where(reach)
    if cursor:
        stmt = stmt.where(Review.id > cursor)
    if item_id:
        stmt = stmt.where(Review.item_id == item_id)
    if state:
        stmt = stmt.where(Review.state == state)
    if mine:
        held = [level for level, roles in LEVEL_ROLES.items() if who.has(*roles)]
        stmt = stmt.where(Review.state == "in_review", Review.current_level.in_(held),
                          Review.author_id != who.subject)
    async with rt.db.session() as s:
        reviews, nxt = page(list((await s.exec(stmt)).all()), limit)
        levels: dict[str, list[ReviewLevel]] = {r.id: [] for r in reviews}
        if reviews:
            rows = await s.exec(select(ReviewLevel).where(ReviewLevel.review_id.in_(list(levels))))
            for lv in rows.all():
                levels[lv.review_id].append(lv)
    return [ReviewView(r, sorted(levels[r.id], key=lambda lv: lv.level)) for r in reviews], nxt


# --- deciding --------------------------------------------------------------------

async def decide(rt: Runtime, who: Principal, review_id: str, data: DecisionIn) -> ReviewView:
    """One level's decision. Approving level 3 approves the item; rejecting at any level returns it."""
    async with rt.unit_of_work() as s:
        review = (await s.exec(select(Review).where(Review.id == review_id).with_for_update())).first()
        if not review:
            raise not_found("review", review_id)
        levels = await _levels(s, review.id)
        if review.state != "in_review":
            raise conflict("review_closed", "该审核单已结束，不能再作决定", {"state": review.state})
        if who.subject == review.author_id:
            raise forbidden("author_cannot_review", "作者不能审核自己的稿件")
        level = next(lv for lv in levels if lv.level == review.current_level)
        if level.decision is not None:
            # Read mid-way through another decision's commit (SQLite reads outside the write lock).
            raise conflict("concurrent_change", "该审核单刚被他人处理，请刷新后重试")
        if who.unit_id != review.unit_id or not who.has(*level.holder_roles):
            raise forbidden("not_level_holder",
                            f"第 {level.level} 级审核须由本单位的 {'或'.join(level.holder_roles)} 作出")
        if any(lv.decided_by == who.subject for lv in levels):
            raise forbidden("already_decided_other_level", "同一人不能审核同一稿件的两个级别")
        if data.decision == "approve":
            failed = data.checks.failed() if data.checks else ["policy", "wording", "secrecy", "law"]
            if failed:
                raise invalid("checks_incomplete", "通过前须确认政策关、文字关、保密关、法律关全部通过", {"failed": failed})
        elif not data.comment:
            raise invalid("comment_required", "退回稿件须写明意见")
        now = utcnow()
        level.decision = data.decision
        level.decided_by = who.subject
        level.decided_at = now
        level.comment = data.comment or None
        level.checks = data.checks.model_dump() if data.checks else None
        review.updated_at = now
        if data.decision == "reject":
            review.state = "rejected"
        elif level.level == max(LEVEL_ROLES):
            review.state = "approved"
        else:
            review.current_level += 1
        try:
            await s.flush()
        except StaleDataError:
            # Another decision on this review was stored while this one was being made.
            raise conflict("concurrent_change", "该审核单刚被他人处理，请刷新后重试")
        if review.state == "rejected":
            await rt.outbox.emit(s, REJECTED, ev.ItemRejected(
                review_id=review.id, item_id=review.item_id, version=review.item_version, level=level.level,
                reviewer_id=who.subject, comment=data.comment,
            ), review.item_id)
        elif review.state == "approved":
            approvers = [lv.decided_by for lv in sorted(levels, key=lambda lv: lv.level)]
            await rt.outbox.emit(s, APPROVED, ev.ItemApproved(
                review_id=review.id, item=review.item(), approver_ids=approvers,
            ), review.item_id)
    return ReviewView(review, levels)


async def _levels(s: AsyncSession, review_id: str) -> list[ReviewLevel]:
    rows = await s.exec(select(ReviewLevel).where(ReviewLevel.review_id == review_id).order_by(ReviewLevel.level))
    return list(rows.all())
