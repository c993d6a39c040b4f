"""Petition use cases: one function each, called by REST and gRPC alike."""
from __future__ import annotations

import logging

from sqlalchemy.exc import IntegrityError
from sqlmodel import select

from govmedia.events.v1 import events_pb2 as ev
from govmedia_kit.auth import Principal
from govmedia_kit.db import page, utcnow
from govmedia_kit.errors import AppError, not_found
from govmedia_kit.public import new_tracking_code, normalize_tracking_code
from govmedia_kit.runtime import Runtime

from .domain import check_contact, local_iso, start_clock
from .models import Petition, PetitionCreate, TimelineEntry

log = logging.getLogger(__name__)

RECEIVED = "govmedia.petition.petition.received"
# Who works on petitions in the back office (this issue: read only).
STAFF = ("handler", "supervisor", "ops")
# Who answers the citizen and so may see the contact data of one petition.
CONTACT_READERS = ("handler", "ops")

_CHANNEL_ZH = {"web": "网站", "app": "客户端", "comment": "评论", "hotline": "热线", "wechat": "微信",
               "weibo": "微博", "email": "电子邮件"}


# --- public ---------------------------------------------------------------------------

async def create_petition(rt: Runtime, data: PetitionCreate) -> Petition:
    """Public intake: store the petition, start its SLA clock, open its timeline, emit `received`."""
    name, phone = check_contact(data.category, data.contact.name if data.contact else None,
                                data.contact.phone if data.contact else None)
    received_at = utcnow()
    clock = start_clock(data.category, received_at)
    for attempt in range(3):
        petition = Petition(
            tracking_code=new_tracking_code(), category=data.category, channel=data.channel, title=data.title,
            content=data.content, contact_name=name, contact_phone=phone, location=data.location or None,
            sla_policy=clock.policy.code, sla_stage=clock.policy.stage, sla_unit=clock.policy.unit,
            sla_days=clock.policy.days, sla_last_day=clock.last_day, due_at=clock.due_at, warn_at=clock.warn_at,
            created_at=received_at, updated_at=received_at,
        )
        try:
            async with rt.unit_of_work() as s:
                s.add(petition)
                await s.flush()
                s.add(TimelineEntry(petition_id=petition.id, at=received_at, actor="citizen", action="received",
                                    note=f"经{_CHANNEL_ZH.get(data.channel, data.channel)}渠道提交"))
                await rt.outbox.emit(s, RECEIVED, _received_event(petition), petition.id)
            break
        except IntegrityError:
            # 60 random bits: a tracking-code collision is next to impossible, but not a reason to fail.
            if attempt == 2:
                raise
    # Never the contact data, nor the text (which citizens fill with it).
    log.info("petition %s received: %s via %s, due %s", petition.id, petition.category, petition.channel,
             local_iso(petition.due_at))
    return petition


async def track_petition(rt: Runtime, tracking_code: str) -> Petition:
    code = normalize_tracking_code(tracking_code)
    petition = None
    if code:
        async with rt.db.session() as s:
            petition = (await s.exec(select(Petition).where(Petition.tracking_code == code))).first()
    if petition is None:
        raise AppError(404, "petition_not_found", "未找到该查询码对应的留言")
    return petition


# --- back office ------------------------------------------------------------------------

async def list_petitions(rt: Runtime, who: Principal, limit: int, cursor: str | None = None,
                         status: str | None = None, category: str | None = None) -> tuple[list[Petition], str | None]:
    who.require(*STAFF)
    stmt = select(Petition).order_by(Petition.id).limit(limit + 1)
    if cursor:
        stmt = stmt.where(Petition.id > cursor)
    if status:
        stmt = stmt.where(Petition.status == status)
    if category:
        stmt = stmt.where(Petition.category == category)
    async with rt.db.session() as s:
        return page(list((await s.exec(stmt)).all()), limit)


async def get_petition(rt: Runtime, who: Principal, petition_id: str) -> tuple[Petition, bool]:
    """One petition, and whether the caller may see the contact data unmasked."""
    who.require(*STAFF)
    async with rt.db.session() as s:
        petition = await s.get(Petition, petition_id)
    if petition is None:
        raise not_found("petition", petition_id)
    return petition, who.has(*CONTACT_READERS)


async def petition_timeline(rt: Runtime, who: Principal, petition_id: str) -> list[TimelineEntry]:
    who.require(*STAFF)
    async with rt.db.session() as s:
        if await s.get(Petition, petition_id) is None:
            raise not_found("petition", petition_id)
        stmt = select(TimelineEntry).where(TimelineEntry.petition_id == petition_id).order_by(TimelineEntry.id)
        return list((await s.exec(stmt)).all())


# --- events -------------------------------------------------------------------------

def _received_event(p: Petition) -> ev.PetitionReceived:
    # No contact data on the bus: consumers that need it ask this service.
    return ev.PetitionReceived(
        petition_id=p.id, category=p.category, channel=p.channel, title=p.title, due_at=local_iso(p.due_at),
        policy=p.sla_policy, stage=p.sla_stage, warn_at=local_iso(p.warn_at), received_at=local_iso(p.created_at),
    )
