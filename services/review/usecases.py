"""Review use cases: one function each, called by REST, gRPC and the event consumer alike.

The other capabilities have their own modules: chains.py (the levels of a unit's chain),
lexicons.py and findings.py (machine review), urgency.py (deadlines of urgent items),
delegations.py (acting for an absent reviewer). Every action on a review is appended to the
item's audit stream (models.trail) in the same transaction.
"""
from __future__ import annotations

import logging

from sqlalchemy import String, exists, false, literal, or_
from sqlalchemy.orm.exc import StaleDataError
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from govmedia.events.v1 import events_pb2 as ev
from govmedia_kit.audit import AuditEntryPublic, AuditVerifyPublic
from govmedia_kit.auth import Principal
from govmedia_kit.db import iso, page, utcnow
from govmedia_kit.errors import conflict, forbidden, invalid, not_found
from govmedia_kit.reach import targets_of_message
from govmedia_kit.runtime import Runtime
from govmedia_kit.trace_context import continued, current_traceparent

from . import chains, delegations, findings as machine, urgency
from .models import (
    CHAIN_ROLES,
    DecisionIn,
    FindingPublic,
    Review,
    ReviewEditor,
    ReviewLevel,
    ReviewView,
    directory,
    reach,
    trail,
)
from .store import editors_of, findings_of, levels_of, locked_review, views_of

log = logging.getLogger(__name__)

APPROVED = "govmedia.review.item.approved"
REJECTED = "govmedia.review.item.rejected"


# --- opening a review (consumer of govmedia.content.draft.submitted) -------------

async def open_review(rt: Runtime, s: AsyncSession, submitted: ev.DraftSubmitted) -> Review | None:
    """The levels of the unit's chain in force for the submitted version, its machine review's
    findings, and the audit entry, all in the consumer's transaction: nobody sees the review
    before its findings. An earlier open round of the item is superseded. A submission that
    arrives after a newer version's (a late redelivery) opens nothing."""
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
        s.add(old)
        await trail.append(s, item.item_id, "superseded", "system", {"review_id": old.id, "state": "in_review"},
                           {"review_id": old.id, "state": "superseded", "by_version": item.version}, at=now)
        log.info("review %s of item %s superseded by version %d", old.id, item.item_id, item.version)
    chain_version, chain_levels = await chains.levels_for(s, item.unit_id)
    review = Review(item_id=item.item_id, item_version=item.version, unit_id=item.unit_id, author_id=item.author_id,
                    title=item.title[:200], snapshot=item.SerializeToString(), urgent=item.urgent,
                    chain_version=chain_version, created_at=now, updated_at=now,
                    trace_parent=current_traceparent())
    s.add(review)
    await s.flush()
    for editor_id in dict.fromkeys([item.author_id, *item.editor_ids]):
        s.add(ReviewEditor(review_id=review.id, user_id=editor_id))
    levels = [ReviewLevel(review_id=review.id, level=n, holder_role="|".join(lv["roles"]),
                          deadline_minutes=lv["deadline_minutes"]) for n, lv in enumerate(chain_levels, start=1)]
    urgency.start_clock(review, levels[0], now)
    for level in levels:
        s.add(level)
    found = await machine.check_snapshot(rt, s, review, item)
    await s.flush()
    await trail.append(s, item.item_id, "opened", "system", None, {
        "review_id": review.id, "item_version": item.version, "urgent": item.urgent,
        "chain_version": chain_version,
        "levels": [{"level": lv.level, "roles": list(lv.holder_roles), "deadline_minutes": lv.deadline_minutes}
                   for lv in levels],
        "lexicon_version": review.lexicon_version,
        "findings": [{k: v for k, v in FindingPublic.of(f).model_dump().items()
                      if k in ("id", "category", "severity", "field", "start", "end", "rule")} for f in found],
    }, at=now)
    return review


# --- reading -------------------------------------------------------------------

async def get_review(rt: Runtime, who: Principal, review_id: str) -> ReviewView:
    async with rt.db.session() as s:
        review = await s.get(Review, review_id)
        if not review:
            raise not_found("review", review_id)
        await directory.require_reach(s, who, review.unit_id, "ops")
        return (await views_of(s, [review]))[0]


def _holds(roles) -> object:
    """The review's current level is held by one of `roles` ("a|b" matched on whole names)."""
    wrapped = literal("|", String) + ReviewLevel.holder_role + literal("|", String)
    clauses = [wrapped.contains(f"|{r}|", autoescape=True) for r in roles]
    return or_(*clauses) if clauses else false()


async def list_reviews(rt: Runtime, who: Principal, limit: int, cursor: str | None, item_id: str | None = None,
                       state: str | None = None, mine: bool = False,
                       overdue: bool = False) -> tuple[list[ReviewView], str | None]:
    """Reviews of the caller's unit (those of its region subtree for ops), oldest first.

    `mine`: open reviews of the caller's unit waiting at a level whose role the caller holds or
    has been lent (delegation), minus the caller's own items and those they decided a level of.
    `overdue`: urgent reviews whose waiting level is past its deadline."""
    now = utcnow()
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
    if overdue:
        stmt = stmt.where(urgency.overdue_filter(now))
    async with rt.db.session() as s:
        if mine:
            roles = ({r for r in who.roles if r in CHAIN_ROLES}
                     | await delegations.delegated_roles(s, who, now))
            decided = select(ReviewLevel.id).where(ReviewLevel.review_id == Review.id,
                                                   or_(ReviewLevel.decided_by == who.subject,
                                                       ReviewLevel.delegated_from == who.subject))
            wrote = select(ReviewEditor.user_id).where(ReviewEditor.review_id == Review.id,
                                                       ReviewEditor.user_id == who.subject)
            stmt = stmt.where(Review.state == "in_review", Review.author_id != who.subject, ~wrote.exists(),
                              exists().where(ReviewLevel.review_id == Review.id,
                                             ReviewLevel.level == Review.current_level, _holds(sorted(roles))),
                              ~decided.exists())
        reviews, nxt = page(list((await s.exec(stmt)).all()), limit)
        return await views_of(s, reviews), nxt


# --- deciding --------------------------------------------------------------------

async def decide(rt: Runtime, who: Principal, review_id: str, data: DecisionIn) -> ReviewView:
    """One level's decision. Approving the chain's last level approves the item; rejecting at
    any level returns it. Approval is refused while a blocking machine finding stands."""
    async with rt.unit_of_work() as s:
        review = await locked_review(s, review_id)
        # In the submission's trace, so the approval event (and dispatch after it) is too.
        with continued(review.trace_parent, "review decide", attributes={"govmedia.review_id": review.id}):
            return await _decide(rt, who, s, review, data)


async def _decide(rt: Runtime, who: Principal, s: AsyncSession, review: Review, data: DecisionIn) -> ReviewView:
    """The body of `decide`, inside its transaction and span."""
    levels = await levels_of(s, review.id)
    if review.state != "in_review":
        raise conflict("review_closed", "该审核单已结束，不能再作决定", {"state": review.state})
    if who.subject == review.author_id:
        raise forbidden("author_cannot_review", "作者不能审核自己的稿件")
    editors = await editors_of(s, review)
    if who.subject in editors:
        raise forbidden("editor_cannot_review", "撰写或修改过本稿件的人不能审核该稿件")
    level = next(lv for lv in levels if lv.level == review.current_level)
    if level.decision is not None:
        # Read mid-way through another decision's commit (SQLite reads outside the write lock).
        raise conflict("concurrent_change", "该审核单刚被他人处理，请刷新后重试")
    delegation = await _acting_for(s, who, review, level, levels, editors)
    if data.decision == "approve":
        failed = data.checks.failed() if data.checks else ["policy", "wording", "secrecy", "law"]
        if failed:
            raise invalid("checks_incomplete", "通过前须确认政策关、文字关、保密关、法律关全部通过", {"failed": failed})
        refusal = machine.blocking_refusal((await findings_of(s, [review.id]))[review.id])
        if refusal:
            raise refusal
        if level.level == max(lv.level for lv in levels):
            # The last approval sends the item out: its targets within its unit's reach.
            await reach.require_within(s, review.unit_id, targets_of_message(review.item().targets))
    elif not data.comment:
        raise invalid("comment_required", "退回稿件须写明意见")
    now = utcnow()
    before = {"review_id": review.id, "state": review.state, "current_level": review.current_level}
    level.decision = data.decision
    level.decided_by = who.subject
    level.decided_at = now
    level.comment = data.comment or None
    level.checks = data.checks.model_dump() if data.checks else None
    if delegation:
        level.delegated_from, level.delegation_id = delegation.delegator_id, delegation.id
    review.updated_at = now
    last = max(lv.level for lv in levels)
    if data.decision == "reject":
        review.state = "rejected"
    elif level.level == last:
        review.state = "approved"
    else:
        review.current_level += 1
        urgency.start_clock(review, next(lv for lv in levels if lv.level == review.current_level), now)
    s.add(review)
    try:
        await s.flush()
    except StaleDataError:
        # Another decision (or an override) on this review was stored while this one was being made.
        raise conflict("concurrent_change", "该审核单刚被他人处理，请刷新后重试")
    if delegation:
        await trail.append(s, review.item_id, "delegation_used", who.subject, None,
                           {"review_id": review.id, "level": level.level, "delegation_id": delegation.id,
                            "role": delegation.role, "delegator_id": delegation.delegator_id}, at=now)
    await trail.append(s, review.item_id, "decided", who.subject, before, {
        "review_id": review.id, "level": level.level, "decision": data.decision, "comment": level.comment,
        "checks": level.checks, "delegated_from": level.delegated_from, "state": review.state,
        "current_level": review.current_level}, at=now)
    if review.state == "rejected":
        event_id = await rt.outbox.emit(s, REJECTED, ev.ItemRejected(
            review_id=review.id, item_id=review.item_id, version=review.item_version, level=level.level,
            reviewer_id=who.subject, comment=data.comment,
            decisions=[ev.LevelDecision(level=lv.level, reviewer_id=lv.decided_by, decision=lv.decision,
                                        comment=lv.comment or "", decided_at=iso(lv.decided_at))
                       for lv in sorted(levels, key=lambda lv: lv.level) if lv.decision is not None],
        ), review.item_id)
        await trail.append(s, review.item_id, "rejection_emitted", "system", None,
                           {"review_id": review.id, "event_id": event_id, "subject": REJECTED}, at=now)
    elif review.state == "approved":
        approvers = [lv.decided_by for lv in sorted(levels, key=lambda lv: lv.level)]
        event_id = await rt.outbox.emit(s, APPROVED, ev.ItemApproved(
            review_id=review.id, item=review.item(), approver_ids=approvers,
        ), review.item_id)
        await trail.append(s, review.item_id, "approval_emitted", "system", None,
                           {"review_id": review.id, "event_id": event_id, "subject": APPROVED,
                            "approver_ids": approvers}, at=now)
    found = (await findings_of(s, [review.id]))[review.id]
    return ReviewView(review, levels, found)


async def _acting_for(s: AsyncSession, who: Principal, review: Review, level: ReviewLevel,
                      levels: list[ReviewLevel], editors: set[str]):
    """None when `who` holds the level; the delegation they decide by when they act for an
    absent holder; otherwise a refusal. Separation of duties covers the delegator too: nobody
    takes part in two levels of one item, in person or through a delegate."""
    took_part = {lv.decided_by for lv in levels if lv.decided_by} | {lv.delegated_from for lv in levels
                                                                      if lv.delegated_from}
    refusal = forbidden("not_level_holder",
                        f"第 {level.level} 级审核须由本单位的 {'或'.join(level.holder_roles)} 作出")
    if who.unit_id != review.unit_id:
        raise refusal
    if who.has(*level.holder_roles):
        if who.subject in took_part:
            raise forbidden("already_decided_other_level", "同一人不能审核同一稿件的两个级别")
        return None
    candidates = await delegations.active_for(s, who, review.unit_id, level.holder_roles)
    if not candidates:
        raise refusal
    if who.subject in took_part:
        raise forbidden("already_decided_other_level", "同一人不能审核同一稿件的两个级别")
    usable = [d for d in candidates if d.delegator_id not in editors and d.delegator_id not in took_part]
    if not usable:
        if any(d.delegator_id == review.author_id for d in candidates):
            raise forbidden("author_cannot_review", "不能代作者审核其本人的稿件")
        if any(d.delegator_id in editors for d in candidates):
            raise forbidden("editor_cannot_review", "不能代撰写或修改过本稿件的人审核该稿件")
        raise forbidden("already_decided_other_level", "授权人已审核过该稿件的其他级别")
    return usable[0]


# --- the audit trail -----------------------------------------------------------------

async def _stream_of(s: AsyncSession, who: Principal, review_id: str) -> str:
    review = await s.get(Review, review_id)
    if not review:
        raise not_found("review", review_id)
    await directory.require_reach(s, who, review.unit_id, "ops")
    return review.item_id


async def audit_entries(rt: Runtime, who: Principal, review_id: str, limit: int,
                        cursor: int | None) -> tuple[str, list[AuditEntryPublic], int | None]:
    """The item's audit stream (every round of its review), in order; `cursor` is a sequence number."""
    async with rt.db.session() as s:
        stream = await _stream_of(s, who, review_id)
        entries = await trail.entries(s, stream, after_seq=cursor or 0, limit=limit + 1)
    rows, nxt = page(entries, limit, key=lambda e: e["seq"])
    return stream, [AuditEntryPublic.of(e) for e in rows], nxt


async def audit_verify(rt: Runtime, who: Principal, review_id: str) -> AuditVerifyPublic:
    async with rt.db.session() as s:
        stream = await _stream_of(s, who, review_id)
        result = await trail.verify(s, stream)
    return AuditVerifyPublic(stream_id=stream, **result)

