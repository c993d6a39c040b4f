"""Content use cases of drafts: one function each, called by REST, gRPC and the event consumers alike.

The other capabilities have their own modules: attachments.py (images and video),
library.py (the cloud library and reprints), clues.py (news clues from the public)."""
from __future__ import annotations

import logging

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm.exc import StaleDataError
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from govmedia.events.v1 import events_pb2 as ev
from govmedia_kit.audit import AuditEntryPublic, AuditVerifyPublic
from govmedia_kit.auth import Principal
from govmedia_kit.db import iso, page, utcnow
from govmedia_kit.errors import AppError, conflict, forbidden, invalid, not_found
from govmedia_kit.runtime import Runtime

from .diffing import diff_snapshots
from .models import CONTENT_FIELDS, EDITABLE, Draft, DraftCreate, DraftIn, Revision, directory, reach, trail

log = logging.getLogger(__name__)

# Who may write drafts (采编); ops may act for its own unit too, and reads and retracts
# across the units of its region subtree.
AUTHORS = ("editor", "ops")
# Who may order a one-key retraction (一键撤稿): the unit's principal / editor-in-chief, or ops.
RETRACTORS = ("principal", "chief_editor", "ops")

SUBMITTED = "govmedia.content.draft.submitted"
RETRACTED = "govmedia.content.item.retracted"


# --- drafts --------------------------------------------------------------------

async def create_draft(rt: Runtime, who: Principal, data: DraftCreate | DraftIn) -> Draft:
    """A new draft of the caller's unit, version 1, with its first revision. A draft with a
    source is a reprint (转载): it keeps the title it is created with as the original's and
    must keep naming its source."""
    who.require(*AUTHORS)
    fields = data.stored()
    reprint = getattr(data, "reprint", False) or fields["source"] is not None
    if reprint and not fields["source"]:
        raise _source_required()
    async with rt.unit_of_work() as s:
        draft = await new_draft(s, unit_id=who.unit_id, author_id=who.subject, fields=fields,
                                original_title=fields["title"] if reprint else None)
    return draft


async def new_draft(s: AsyncSession, *, unit_id: str, author_id: str, fields: dict, **extra) -> Draft:
    """Store a draft at version 1 with its first revision (in the caller's transaction).
    Its targets must lie within the unit's reach (403 `target_out_of_reach`); `targets` None
    is the unit's own reach (its region's subtree), as reprints and drafts from clues get."""
    if fields.get("targets", {}) is None:
        fields = {**fields, "targets": await reach.own_targets(s, unit_id)}
    await reach.require_within(s, unit_id, fields.get("targets") or {})
    draft = Draft(unit_id=unit_id, author_id=author_id, **fields, **extra)
    s.add(draft)
    await s.flush()
    snapshot = draft.stored_snapshot()
    s.add(Revision(draft_id=draft.id, version=1, editor_id=author_id, snapshot=snapshot,
                   changed=[name for name, value in snapshot.items() if value not in (None, [])]))
    await trail.append(s, draft.id, "created", author_id, None,
                       {**snapshot, "version": 1, **{k: v for k, v in extra.items() if v is not None}})
    return draft


async def get_draft(rt: Runtime, who: Principal, draft_id: str) -> Draft:
    async with rt.db.session() as s:
        draft = await s.get(Draft, draft_id)
        if not draft:
            raise not_found("draft", draft_id)
        await directory.require_reach(s, who, draft.unit_id, "ops")
    return draft


async def list_drafts(rt: Runtime, who: Principal, limit: int, cursor: str | None,
                      status: str | None = None) -> tuple[list[Draft], str | None]:
    """The caller's unit's drafts (those of its region subtree for ops), oldest first."""
    stmt = select(Draft).order_by(Draft.id).limit(limit + 1)
    reach = directory.reach_filter(Draft.unit_id, who, "ops")
    if reach is not None:
        stmt = stmt.where(reach)
    if cursor:
        stmt = stmt.where(Draft.id > cursor)
    if status:
        stmt = stmt.where(Draft.status == status)
    async with rt.db.session() as s:
        return page(list((await s.exec(stmt)).all()), limit)


async def update_draft(rt: Runtime, who: Principal, draft_id: str, if_match: int | None, data: DraftIn) -> Draft:
    """Replace the author's fields of a draft based on version `if_match` (optimistic locking).

    A change that changes nothing stores nothing and keeps the version."""
    fields = data.stored()
    async with rt.unit_of_work() as s:
        draft = await load_for_edit(s, who, draft_id, if_match)
        check_reprint(draft, fields)
        changed = [name for name in CONTENT_FIELDS if getattr(draft, name) != fields[name]]
        if not changed:
            return draft
        if fields["source"] is not None and not draft.is_reprint:
            draft.original_title = fields["title"]  # naming a source makes it a reprint from now on
        if "targets" in changed:
            await reach.require_within(s, draft.unit_id, fields["targets"])
        for name in changed:
            setattr(draft, name, fields[name])
        await record_revision(s, who, draft, changed, if_match)
    return draft


def require_if_match(if_match: int | None) -> int:
    if if_match is None:
        raise AppError(428, "if_match_required", "修改稿件须在 If-Match 中给出所依据的版本号")
    return if_match


async def load_for_edit(s: AsyncSession, who: Principal, draft_id: str, if_match: int | None) -> Draft:
    """The draft, locked, once the caller may change it at version `if_match` (an edit of its
    fields or of its attachments)."""
    require_if_match(if_match)
    draft = await load_for_write(s, draft_id)
    require_writer(who, draft)
    if draft.version != if_match:
        raise conflict("version_conflict", "稿件已被他人修改，请刷新后重试",
                       {"current_version": draft.version, "if_match": if_match})
    if draft.status not in EDITABLE:
        raise conflict("not_editable", "稿件在审核中或已通过，不能修改", {"status": draft.status})
    return draft


async def record_revision(s: AsyncSession, who: Principal, draft: Draft, changed: list[str], if_match: int) -> None:
    """A new version of the draft (its content already changed), its revision row and its
    audit entry (the changed fields before, from the previous revision, and after)."""
    previous = (await s.exec(select(Revision.snapshot).where(Revision.draft_id == draft.id,
                                                             Revision.version == draft.version))).first() or {}
    draft.version += 1
    draft.updated_at = utcnow()
    snapshot = draft.stored_snapshot()
    s.add(Revision(draft_id=draft.id, version=draft.version, editor_id=who.subject, changed=changed,
                   snapshot=snapshot))
    await trail.append(s, draft.id, "edited", who.subject,
                       {"version": draft.version - 1, **{k: previous.get(k) for k in changed}},
                       {"version": draft.version, **{k: snapshot[k] for k in changed}})
    try:
        await s.flush()
    except (IntegrityError, StaleDataError):
        # A concurrent change based on the same version was stored first.
        raise conflict("version_conflict", "稿件已被他人修改，请刷新后重试", {"if_match": if_match})


def check_reprint(draft: Draft, fields: dict) -> None:
    """A reprint (转载) keeps its source named and its original title (不得歪曲篡改标题)."""
    if not draft.is_reprint:
        return
    if not fields["source"]:
        raise _source_required()
    if fields["title"] != draft.original_title:
        raise invalid("reprint_title_locked", "转载稿件不得修改原标题",
                      {"field": "title", "original_title": draft.original_title})


def _source_required() -> AppError:
    return invalid("reprint_source_required", "转载稿件须注明出处（来源名称）", {"field": "source"})


async def list_revisions(rt: Runtime, who: Principal, draft_id: str, limit: int,
                         cursor: str | None) -> tuple[list[Revision], str | None]:
    await get_draft(rt, who, draft_id)
    stmt = select(Revision).where(Revision.draft_id == draft_id).order_by(Revision.id).limit(limit + 1)
    if cursor:
        stmt = stmt.where(Revision.id > cursor)
    async with rt.db.session() as s:
        return page(list((await s.exec(stmt)).all()), limit)


async def diff_revisions(rt: Runtime, who: Principal, draft_id: str, from_version: int, to_version: int) -> dict:
    """What changed between two versions of a draft (either order): per field before and
    after, and for the body a line diff with character-level opcodes (diffing.py)."""
    await get_draft(rt, who, draft_id)
    versions = {from_version, to_version}
    async with rt.db.session() as s:
        rows = (await s.exec(select(Revision).where(Revision.draft_id == draft_id,
                                                    Revision.version.in_(versions)))).all()
    found = {r.version: r for r in rows}
    missing = sorted(versions - set(found))
    if missing:
        raise AppError(404, "revision_not_found", "未找到该版本的修改记录", {"id": draft_id, "versions": missing})
    before, after = found[from_version], found[to_version]
    return {"draft_id": draft_id, "from": from_version, "to": to_version,
            "from_editor_id": before.editor_id, "from_created_at": iso(before.created_at),
            "to_editor_id": after.editor_id, "to_created_at": iso(after.created_at),
            "changes": diff_snapshots(before.snapshot, after.snapshot)}


async def draft_audit(rt: Runtime, who: Principal, draft_id: str, limit: int,
                      cursor: int | None) -> tuple[list[AuditEntryPublic], int | None]:
    """The draft's audit stream in order (created, each edit, submissions, outcomes,
    retraction); `cursor` is a sequence number."""
    await get_draft(rt, who, draft_id)
    async with rt.db.session() as s:
        rows = await trail.entries(s, draft_id, after_seq=cursor or 0, limit=limit + 1)
    nxt = rows[limit - 1]["seq"] if len(rows) > limit else None
    return [AuditEntryPublic.of(e) for e in rows[:limit]], nxt


async def draft_audit_verify(rt: Runtime, who: Principal, draft_id: str) -> AuditVerifyPublic:
    """Recompute the draft's chain: the first entry altered, removed or out of order."""
    await get_draft(rt, who, draft_id)
    async with rt.db.session() as s:
        return AuditVerifyPublic(stream_id=draft_id, **await trail.verify(s, draft_id))


async def submit_draft(rt: Runtime, who: Principal, draft_id: str) -> Draft:
    """Send the current version to the three-level review (先审后发)."""
    async with rt.unit_of_work() as s:
        draft = await load_for_write(s, draft_id)
        require_writer(who, draft)
        if draft.status not in EDITABLE:
            raise conflict("not_submittable", "只有草稿或退回的稿件可以送审", {"status": draft.status})
        # Again at submission: a draft stored before the rule, or whose unit's region changed.
        await reach.require_within(s, draft.unit_id, draft.targets or {})
        draft.status = "in_review"
        draft.review_comment = draft.rejected_level = draft.rejected_by = None
        draft.review_decisions = []
        draft.submitted_at = draft.updated_at = utcnow()
        await _save(s)
        await trail.append(s, draft.id, "submitted", who.subject, None, {"version": draft.version})
        item = draft.snapshot()
        item.editor_ids.extend(await revision_editors(s, draft))
        await rt.outbox.emit(s, SUBMITTED, ev.DraftSubmitted(item=item), draft.id)
    return draft


async def revision_editors(s: AsyncSession, draft: Draft) -> list[str]:
    """Who wrote or edited the draft's content up to its current version (the author first):
    none of them may review it (review/usecases.py)."""
    rows = (await s.exec(select(Revision.editor_id).where(Revision.draft_id == draft.id,
                                                          Revision.version <= draft.version)
                         .order_by(Revision.version))).all()
    return list(dict.fromkeys([draft.author_id, *rows]))


async def retract_item(rt: Runtime, who: Principal, item_id: str, reason: str) -> Draft:
    """One-key retraction of an approved item: dispatch broadcasts the kill."""
    who.require(*RETRACTORS)
    async with rt.unit_of_work() as s:
        draft = await load_for_write(s, item_id, what="item")
        await directory.require_reach(s, who, draft.unit_id, "ops")
        if draft.status == "retracted":
            raise conflict("already_retracted", "稿件已撤回", {"retracted_at": iso(draft.retracted_at)})
        # In review too: the last approval may be on its way to dispatch already, and the kill
        # must be able to overtake it (dispatch suppresses an approval that comes after a kill).
        if draft.status not in ("approved", "in_review"):
            raise conflict("not_approved", "只有送审中或审核通过的稿件可以撤回", {"status": draft.status})
        draft.status = "retracted"
        draft.retract_reason = reason
        draft.retracted_by = who.subject
        draft.retracted_at = draft.updated_at = utcnow()
        await _save(s)
        await trail.append(s, draft.id, "retracted", who.subject, None, {"version": draft.version, "reason": reason})
        await rt.outbox.emit(s, RETRACTED, ev.ItemRetracted(
            item_id=draft.id, version=draft.version, unit_id=draft.unit_id, reason=reason, retracted_by=who.subject,
        ), draft.id)
    return draft


# --- review outcomes (event consumers; the session is the inbox transaction) ---

async def apply_approval(s: AsyncSession, msg: ev.ItemApproved) -> bool:
    """The review passed: the item is approved, but only the version that was reviewed."""
    draft = await _current_review_target(s, msg.item.item_id, msg.item.version, "approval")
    if draft is None:
        return False
    draft.status = "approved"
    draft.approved_at = draft.updated_at = utcnow()
    await trail.append(s, draft.id, "approved", f"review:{msg.review_id}", None,
                       {"version": draft.version, "approver_ids": list(msg.approver_ids)})
    return True


async def apply_rejection(s: AsyncSession, msg: ev.ItemRejected) -> bool:
    """The review sent the item back: it returns to its author with the comment, editable again."""
    draft = await _current_review_target(s, msg.item_id, msg.version, "rejection")
    if draft is None:
        return False
    draft.status = "rejected"
    draft.review_comment = msg.comment
    draft.rejected_level = msg.level
    draft.rejected_by = msg.reviewer_id
    draft.review_decisions = [{"level": d.level, "reviewer_id": d.reviewer_id, "decision": d.decision,
                               "comment": d.comment or None, "decided_at": d.decided_at} for d in msg.decisions]
    draft.updated_at = utcnow()
    await trail.append(s, draft.id, "rejected", msg.reviewer_id, None,
                       {"version": draft.version, "level": msg.level, "comment": msg.comment, "review_id": msg.review_id})
    return True


async def _current_review_target(s: AsyncSession, item_id: str, version: int, outcome: str) -> Draft | None:
    """The draft an outcome applies to, or None when it is about an old version or round."""
    draft = (await s.exec(select(Draft).where(Draft.id == item_id).with_for_update())).first()
    if draft is None or draft.version != version or draft.status != "in_review":
        log.info("ignoring %s of item %s v%d (current: %s)", outcome, item_id, version,
                 f"v{draft.version} {draft.status}" if draft else "unknown")
        return None
    return draft


# --- helpers -----------------------------------------------------------------

async def load_for_write(s: AsyncSession, draft_id: str, what: str = "draft") -> Draft:
    # FOR UPDATE serialises writers on PostgreSQL; SQLite has one writer anyway.
    draft = (await s.exec(select(Draft).where(Draft.id == draft_id).with_for_update())).first()
    if not draft:
        raise not_found(what, draft_id)
    return draft


async def _save(s: AsyncSession) -> None:
    """Write now, so a writer that lost a race is refused with 409 and emits nothing."""
    try:
        await s.flush()
    except StaleDataError:
        raise conflict("concurrent_change", "稿件正被他人同时处理，请刷新后重试")


def require_writer(who: Principal, draft: Draft) -> None:
    """The author, or an editor of the draft's unit."""
    who.require_unit(draft.unit_id, cross_unit_roles=())
    if who.subject != draft.author_id and not who.has("editor"):
        raise forbidden("not_author", "只有作者或本单位采编人员可以修改和送审稿件")
