"""News clues (报料): leads from the public for a unit's editors.

- Intake is public (no sign-in), rate-limited per client address, addressed to a unit the
  directory knows; the citizen gets a tracking code (shown once) to follow the status with
  `GET /v1/clues/track/{code}` (rate-limited, no personal data in the answer).
- The unit's editors (editor, chief editor, principal; ops within its region reach) list
  and triage: accept, decline with a reason, or mark a duplicate of another clue of the unit;
  an accepted clue becomes a draft of the unit linked to the clue (status `drafted`).
- Every step records who and when (`clue_steps`). Contact data: see clues_models.py; it is
  sealed with the content keyring (`CONTENT_DATA_KEY`, retired keys in
  `CONTENT_DATA_KEY_PREVIOUS`; govmedia_kit/sealing.py), each value bound to its clue's row,
  and moved to a new key by `govmedia reseal content`. Clues stored in clear before sealing
  were sealed by migration 0008.
"""
from __future__ import annotations

import logging

from sqlalchemy.exc import IntegrityError
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from govmedia_kit.auth import Principal
from govmedia_kit.db import page, utcnow
from govmedia_kit.errors import AppError, conflict, invalid
from govmedia_kit.public import new_tracking_code, normalize_phone, normalize_tracking_code
from govmedia_kit.runtime import Runtime
from govmedia_kit.sealing import Keyring, SealedTable, SealingError, load_keyring

from .clues_models import Clue, ClueCreate, ClueDraftIn, CluePublic, ClueStep, ClueTriage
from .models import Draft, directory
from .usecases import new_draft

log = logging.getLogger(__name__)

# Who triages a unit's clues; ops reach the units of its region subtree.
STAFF = ("editor", "chief_editor", "principal", "ops")
# Who sees a citizen's contact unmasked: the unit's own editors, on one clue.
CONTACT_READERS = ("editor", "chief_editor", "principal")

_DECISION_STATUS = {"accept": "accepted", "decline": "declined", "duplicate": "duplicate"}


# --- the contact, sealed --------------------------------------------------------------

TABLE = "clues"
# What `govmedia reseal content` moves to the current key: clues.<field>_enc.
SEALED = SealedTable(TABLE, ("contact_name", "contact_phone"))
KEY_FILE = "content-data.key"  # development only, made once in GOVMEDIA_DATA_DIR


def keyring_of(settings) -> Keyring:
    """CONTENT_DATA_KEY (required in production; a key file outside it) and the retired keys
    of CONTENT_DATA_KEY_PREVIOUS. Clue contacts were never sealed in the legacy format."""
    return load_keyring(settings.data_key.get_secret_value(), settings.data_key_previous.get_secret_value(),
                        name="CONTENT_DATA_KEY", data_dir=settings.data_dir, key_file=KEY_FILE,
                        production=settings.production, index_label=b"govmedia-content-blind-index", legacy=False)


def keyring(rt: Runtime) -> Keyring:
    return rt.state["data_keyring"]


def seal_contact(kr: Keyring, clue: Clue, name: str | None, phone: str | None) -> None:
    clue.contact_name_enc = kr.seal(name, table=TABLE, row=clue.id, field="contact_name")
    clue.contact_phone_enc = kr.seal(phone, table=TABLE, row=clue.id, field="contact_phone")


def contact_of(rt: Runtime, clue: Clue) -> tuple[str | None, str | None]:
    """The clue's contact (name, phone), opened in memory; never kept or logged."""
    kr = keyring(rt)
    try:
        return (kr.open(clue.contact_name_enc, table=TABLE, row=clue.id, field="contact_name"),
                kr.open(clue.contact_phone_enc, table=TABLE, row=clue.id, field="contact_phone"))
    except SealingError as exc:
        # Altered, copied from another row, or sealed with a key no longer configured: an
        # integrity failure to look into, never another citizen's contact shown here.
        log.error("clue %s: its contact does not open: %s", clue.id, exc)
        raise AppError(500, "sealed_data_unreadable", "报料联系人信息无法解密（数据被改动或密钥未配置）",
                       {"id": clue.id}) from None


def view(rt: Runtime, clue: Clue, reveal: bool = False, steps: list[ClueStep] | None = None) -> CluePublic:
    """A clue as staff see it: the contact opened, masked unless `reveal`."""
    return CluePublic.of(clue, contact_of(rt, clue), reveal, steps)


# --- public ---------------------------------------------------------------------------

async def submit_clue(rt: Runtime, data: ClueCreate) -> Clue:
    phone = normalize_phone(data.contact.phone) if data.contact else None
    name = data.contact.name if data.contact else None
    async with rt.db.session() as s:
        if await directory.region_path(s, data.unit_id) is None:
            raise invalid("unknown_unit", "未找到接收报料的单位", {"field": "unit_id"})
    for attempt in range(3):
        now = utcnow()
        clue = Clue(unit_id=data.unit_id, tracking_code=new_tracking_code(), title=data.title, content=data.content,
                    location=data.location, created_at=now, updated_at=now)
        seal_contact(keyring(rt), clue, name, phone)
        try:
            async with rt.unit_of_work() as s:
                s.add(clue)
                await s.flush()
                s.add(ClueStep(clue_id=clue.id, at=now, actor_id="citizen", action="received"))
            break
        except IntegrityError:
            if attempt == 2:  # 60 random bits: a collision is next to impossible
                raise
    # Never the contact data, nor the text (which citizens fill with it).
    log.info("clue %s received for unit %s", clue.id, clue.unit_id)
    return clue


async def track_clue(rt: Runtime, tracking_code: str) -> tuple[Clue, str | None]:
    code = normalize_tracking_code(tracking_code)
    clue = None
    async with rt.db.session() as s:
        if code:
            clue = (await s.exec(select(Clue).where(Clue.tracking_code == code))).first()
        if clue is None:
            raise AppError(404, "clue_not_found", "未找到该查询码对应的报料")
        return clue, await directory.name(s, clue.unit_id)


# --- the unit's editors -----------------------------------------------------------------

async def list_clues(rt: Runtime, who: Principal, limit: int, cursor: str | None = None,
                     status: str | None = None) -> tuple[list[Clue], str | None]:
    """The clues of the caller's unit (of its region subtree for ops), oldest first."""
    who.require(*STAFF)
    stmt = select(Clue).order_by(Clue.id).limit(limit + 1)
    reach = directory.reach_filter(Clue.unit_id, who, "ops")
    if reach is not None:
        stmt = stmt.where(reach)
    if cursor:
        stmt = stmt.where(Clue.id > cursor)
    if status:
        stmt = stmt.where(Clue.status == status)
    async with rt.db.session() as s:
        return page(list((await s.exec(stmt)).all()), limit)


async def get_clue(rt: Runtime, who: Principal, clue_id: str) -> tuple[Clue, bool, list[ClueStep]]:
    """One clue, whether the caller sees the contact unmasked, and its steps."""
    async with rt.db.session() as s:
        clue = await _reachable(s, who, clue_id)
        steps = (await s.exec(select(ClueStep).where(ClueStep.clue_id == clue_id).order_by(ClueStep.id))).all()
    return clue, reveals_contact(who, clue), list(steps)


def reveals_contact(who: Principal, clue: Clue) -> bool:
    return who.unit_id == clue.unit_id and who.has(*CONTACT_READERS)


async def triage_clue(rt: Runtime, who: Principal, clue_id: str, data: ClueTriage) -> Clue:
    if data.decision == "decline" and not data.reason:
        raise invalid("reason_required", "不采用报料须说明理由", {"field": "reason"})
    if data.decision == "duplicate" and not data.duplicate_of:
        raise invalid("duplicate_of_required", "标记重复须给出重复的报料", {"field": "duplicate_of"})
    async with rt.unit_of_work() as s:
        clue = await _reachable(s, who, clue_id, for_update=True)
        if clue.status != "new":
            raise conflict("clue_already_triaged", "该报料已处理", {"status": clue.status})
        note = data.reason or ""
        if data.decision == "duplicate":
            original = await s.get(Clue, data.duplicate_of)
            if original is None or original.id == clue.id or original.unit_id != clue.unit_id:
                raise invalid("invalid_duplicate", "重复的报料须是本单位的另一条报料", {"field": "duplicate_of"})
            clue.duplicate_of = original.id
            note = note or f"与报料 {original.id} 重复"
        elif data.decision == "decline":
            clue.decline_reason = data.reason
        now = utcnow()
        clue.status = _DECISION_STATUS[data.decision]
        clue.triaged_by, clue.triaged_at, clue.updated_at = who.subject, now, now
        s.add(ClueStep(clue_id=clue.id, at=now, actor_id=who.subject, actor_name=who.name, action=clue.status,
                       note=note))
    return clue


async def draft_from_clue(rt: Runtime, who: Principal, clue_id: str, data: ClueDraftIn) -> tuple[Clue, Draft]:
    """An accepted clue becomes a new draft of its unit, linked both ways (clue.draft_id, draft.clue_id)."""
    async with rt.unit_of_work() as s:
        clue = await _reachable(s, who, clue_id, for_update=True)
        # The draft belongs to the clue's unit: written by its own people only.
        who.require_unit(clue.unit_id, cross_unit_roles=())
        if clue.status != "accepted":
            raise conflict("clue_not_accepted", "只有已采用的报料可以生成稿件", {"status": clue.status})
        # Without targets: the unit's own reach (its region's subtree), never the whole province.
        fields = {"title": data.title or clue.title, "subtitle": None, "body": data.body or clue.content,
                  "cover_url": None, "category": None, "source": None,
                  "targets": data.targets.stored() if data.targets else None}
        draft = await new_draft(s, unit_id=clue.unit_id, author_id=who.subject, fields=fields, clue_id=clue.id)
        now = utcnow()
        clue.status, clue.draft_id = "drafted", draft.id
        clue.drafted_by, clue.drafted_at, clue.updated_at = who.subject, now, now
        s.add(ClueStep(clue_id=clue.id, at=now, actor_id=who.subject, actor_name=who.name, action="drafted",
                       note=draft.id))
    return clue, draft


async def _reachable(s: AsyncSession, who: Principal, clue_id: str, for_update: bool = False) -> Clue:
    who.require(*STAFF)
    stmt = select(Clue).where(Clue.id == clue_id)
    clue = (await s.exec(stmt.with_for_update() if for_update else stmt)).first()
    if clue is None:
        raise AppError(404, "clue_not_found", "未找到报料", {"id": clue_id})
    await directory.require_reach(s, who, clue.unit_id, "ops")
    return clue
