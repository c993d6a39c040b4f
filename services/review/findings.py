"""Machine review (机审) of every submission, before any person sees it, and the override of a
blocking finding as a false positive.

When a review opens, the snapshot's title, subtitle and body are checked with this process's
MachineReviewer (lexicons.py) and every finding is stored with the review, with the lexicon
version used, in the same transaction that makes the review visible. A blocking finding
stops approval at every level until a holder of the review's last level (principal or
editor-in-chief by default; a delegate of theirs too) overrides it with a written reason;
warnings are shown and never stop anything.
"""
from __future__ import annotations

import asyncio

from sqlmodel.ext.asyncio.session import AsyncSession

from govmedia.events.v1 import events_pb2 as ev
from govmedia_kit.auth import Principal
from govmedia_kit.db import utcnow
from govmedia_kit.errors import AppError, conflict, forbidden
from govmedia_kit.runtime import Runtime

from . import delegations, lexicons
from .store import editors_of, findings_of, levels_of, locked_review
from .models import FindingPublic, OverrideIn, Review, ReviewFinding, ReviewLevel, ReviewView, trail

CHECKED_FIELDS = ("title", "subtitle", "body")


async def check_snapshot(rt: Runtime, s: AsyncSession, review: Review, item: ev.ItemSnapshot) -> list[ReviewFinding]:
    """Run the machine review on the snapshot and store its findings with `review`."""
    reviewer, version = await lexicons.cache(rt).reviewer_for(s)
    fields = {name: getattr(item, name) for name in CHECKED_FIELDS}
    # A reprint (it names a source, or reprints a cloud-library item) must name where it comes from.
    is_reprint = item.HasField("source") or bool(item.reprint_of)
    source_named = bool(item.source.name.strip()) if item.HasField("source") else not is_reprint
    found = await asyncio.to_thread(reviewer.check, fields, is_reprint=is_reprint, source_named=source_named)
    review.lexicon_version = version
    rows = [ReviewFinding(review_id=review.id, category=f.category[:100], severity=f.severity, field=f.field[:40],
                          start=f.start, end=f.end, matched=f.matched, rule=f.rule, suggestion=f.suggestion)
            for f in found]
    for row in rows:
        s.add(row)
    return rows


def blocking_refusal(findings: list[ReviewFinding]) -> AppError | None:
    open_ = [f for f in findings if f.open_blocking]
    if not open_:
        return None
    return conflict("blocking_findings", "机审发现须处理的问题，最后一级审核人确认误报前不能通过",
                    {"findings": [FindingPublic.of(f).model_dump() for f in open_]})


async def override_finding(rt: Runtime, who: Principal, review_id: str, finding_id: str,
                           data: OverrideIn) -> ReviewView:
    """A holder of the review's last level marks a blocking finding a false positive, in writing."""
    now = utcnow()
    async with rt.unit_of_work() as s:
        review = await locked_review(s, review_id)
        levels = await levels_of(s, review.id)
        finding = await s.get(ReviewFinding, finding_id)
        if finding is None or finding.review_id != review.id:
            raise AppError(404, "finding_not_found", "未找到该机审问题", {"id": finding_id})
        if review.state != "in_review":
            raise conflict("review_closed", "该审核单已结束，不能再作处理", {"state": review.state})
        if who.subject == review.author_id:
            raise forbidden("author_cannot_review", "作者不能审核自己的稿件")
        editors = await editors_of(s, review)
        if who.subject in editors:
            raise forbidden("editor_cannot_review", "撰写或修改过本稿件的人不能审核该稿件")
        last = max(levels, key=lambda lv: lv.level)
        delegation = await _acting_at(s, who, review, last, editors)
        if finding.severity != "blocking":
            raise conflict("finding_not_blocking", "提示类问题不影响通过，无需确认误报", {"severity": finding.severity})
        if finding.overridden_at is not None:
            raise conflict("finding_already_overridden", "该问题已被确认为误报",
                           {"overridden_by": finding.overridden_by})
        before = FindingPublic.of(finding).model_dump()
        finding.overridden_by, finding.overridden_at, finding.override_reason = who.subject, now, data.reason
        finding.overridden_for = delegation.delegator_id if delegation else None
        review.updated_at = now  # bumps row_version: a decision racing this one is refused
        s.add(finding)
        s.add(review)
        await s.flush()
        if delegation:
            await trail.append(s, review.item_id, "delegation_used", who.subject, None,
                               {"review_id": review.id, "delegation_id": delegation.id, "role": delegation.role,
                                "delegator_id": delegation.delegator_id, "for": "override"}, at=now)
        await trail.append(s, review.item_id, "finding_overridden", who.subject, before,
                           {**FindingPublic.of(finding).model_dump(), "review_id": review.id}, at=now)
        findings = (await findings_of(s, [review.id]))[review.id]
    return ReviewView(review, levels, findings)


async def _acting_at(s: AsyncSession, who: Principal, review: Review, level: ReviewLevel, editors: set[str]):
    """None when `who` holds `level` in the review's unit; the delegation when they act for its
    holder; otherwise a refusal."""
    if who.unit_id == review.unit_id and who.has(*level.holder_roles):
        return None
    if who.unit_id == review.unit_id:
        for d in await delegations.active_for(s, who, review.unit_id, level.holder_roles):
            if d.delegator_id not in editors:
                return d
    raise forbidden("not_last_level_holder",
                    f"只有最后一级审核人（{'或'.join(level.holder_roles)}）可以确认机审误报")
