"""Cases that do not come from a citizen typing into the public intake, through authenticated
imports only (the public intake takes the web form and the app; anything else is refused there):

- hotline transfers (12345 热线转办): the provincial intake desk (a handler of the province
  level) or ops imports the hotline's work order; the case goes to the provincial desk like
  a web message, recorded with channel `hotline`;
- comments left on a unit's accounts (评论导入): the unit's client credentials (its app) or its
  handler import a comment of an account of that unit only; the case's desk is that unit
  ("谁开设、谁主办"), recorded with channel `comment` and the account.

Each import is idempotent on its source's own id — the work order number, the account and
the comment's id: imported again with the same category, title, content and contact, it
answers with the case it made (`created: false`); with anything of those different, it is
refused (`409 import_conflict`, the case's id in the details) and nothing changes.
Contact data is sealed like the intake's and never logged.

A work order may say when the hotline took the call (`received_at`, ISO 8601 with an offset;
absent: now). The case counts as received then — its SLA clock and the Civil Code counting
(sla.py: the day of receipt is not counted …) start there — and its timeline shows both the
hotline's receipt and the import. Refused (422): unparsable or without an offset
(`invalid_received_at`), more than a minute ahead of this service's clock
(`received_at_in_future`), older than `PETITION_HOTLINE_MAX_AGE_DAYS` (30)
(`received_at_too_old`).
"""
from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone

from govmedia.events.v1 import events_pb2 as ev
from govmedia_kit.auth import CLIENT_ROLE, Principal, is_province_path
from govmedia_kit.bus import Consumer
from govmedia_kit.db import utcnow
from govmedia_kit.errors import conflict, forbidden, invalid, not_found
from govmedia_kit.runtime import Runtime

from . import usecases
from .models import AccountRef, CommentImport, HotlineImport, ImportReceipt, PetitionCreate, directory
from .usecases import Origin

log = logging.getLogger(__name__)
HOTLINE_ROLES = ("handler", "ops")
HOTLINE_ACTOR = "hotline"  # the timeline's actor of the hotline's own receipt of the call
PLATFORM_ZH = {"weibo": "微博", "wechat": "微信公众号", "douyin": "抖音", "kuaishou": "快手", "toutiao": "今日头条",
               "bilibili": "B站", "app": "客户端", "web": "网站", "other": "其他平台"}
# How far ahead of this service's clock a hotline's `received_at` may be (the two clocks differ).
CLOCK_SKEW = timedelta(minutes=1)
ACCOUNT_CHANGES = ("govmedia.account.account.activated", "govmedia.account.account.updated",
                   "govmedia.account.account.closed")


def hotline_ref(work_order_no: str) -> str:
    return f"hotline:{work_order_no}"


def comment_ref(account_id: str, comment_id: str) -> str:
    return f"comment:{account_id}:{comment_id}"


async def import_hotline(rt: Runtime, who: Principal, data: HotlineImport) -> ImportReceipt:
    """A 12345 work order: by the provincial intake desk (handler) or ops, received by the
    hotline at `received_at` (checked first; nothing stored on a refusal); a second import of
    the same work order answers with the first one's case, or `import_conflict` if it differs."""
    who.require(*HOTLINE_ROLES)
    if not who.has("ops") and not is_province_path(who.region_path):
        raise forbidden("not_intake_desk", "热线工单只能由省级受理窗口或运维人员导入")
    received_at = received_moment(data.received_at, utcnow(), rt.settings.hotline_max_age_days)
    petition = PetitionCreate(category=data.category, title=data.title, content=data.content, channel="hotline",
                              contact=data.contact, location=data.location, lat=data.lat, lon=data.lon)
    origin = Origin(source_ref=hotline_ref(data.work_order_no), imported_by=who.subject, actor=who.subject,
                    note=f"12345 热线转来，工单号 {data.work_order_no}", received_at=received_at,
                    received_actor=HOTLINE_ACTOR, received_note=f"12345 热线受理来电，工单号 {data.work_order_no}")
    p, created = await usecases.create_or_find(rt, petition, origin)
    log.info("hotline work order %s %s petition %s (by %s)", data.work_order_no,
             "made" if created else "was already", p.id, who.subject)
    return receipt(p, created)


async def import_comment(rt: Runtime, who: Principal, data: CommentImport) -> ImportReceipt:
    """A comment on an account of the caller's unit: by the unit's client credentials or its
    handler; the same comment imported again answers with its case."""
    if not who.has(CLIENT_ROLE, "handler"):
        raise forbidden("role_required", "需要以下角色之一：handler、client")
    async with rt.db.session() as s:
        account = await s.get(AccountRef, data.account_id)
        if account is None:
            raise not_found("account", data.account_id)
        if account.unit_id != who.unit_id:
            raise forbidden("other_unit", "只能导入本单位账号的评论")
        if who.has(CLIENT_ROLE) and who.account_id and who.account_id != account.id:
            own = await s.get(AccountRef, who.account_id)
            if own is not None and own.status == "closed":
                raise forbidden("client_account_closed", "该客户端所属账号已关闭")
        if account.status == "closed":
            raise conflict("account_closed", "该账号已关闭，不能再导入评论", {"account_id": account.id})
        region = await directory.region_path(s, account.unit_id)
    title = data.title or _title_of(data.content)
    petition = PetitionCreate(category=data.category, title=title, content=data.content, channel="comment",
                              contact=data.contact, location=data.location)
    where = f"“{account.name}”（{PLATFORM_ZH.get(account.platform, account.platform)}）" if account.name else \
        PLATFORM_ZH.get(account.platform, account.platform)
    origin = Origin(source_ref=comment_ref(account.id, data.comment_id), account_id=account.id,
                    imported_by=who.subject, actor=who.subject, note=f"从账号{where}的评论导入，评论编号 {data.comment_id}",
                    desk_unit_id=account.unit_id, desk_region_path=region)
    p, created = await usecases.create_or_find(rt, petition, origin)
    log.info("comment %s of account %s %s petition %s (by %s)", data.comment_id, account.id,
             "made" if created else "was already", p.id, who.subject)
    return receipt(p, created)


def received_moment(raw: str | None, now: datetime, max_age_days: int) -> datetime | None:
    """A work order's `received_at` as an aware UTC moment (None: not given), or a refusal with
    its stable code: unparsable or without an offset, in the future beyond CLOCK_SKEW, older
    than `max_age_days`."""
    if raw is None:
        return None
    moment = None
    if len(raw) <= 64:
        try:
            parsed = datetime.fromisoformat(raw)
            if parsed.tzinfo is not None and parsed.utcoffset() is not None:
                moment = parsed.astimezone(timezone.utc)
        except (ValueError, OverflowError):
            moment = None
    if moment is None:
        raise invalid("invalid_received_at", "received_at 须为带时区偏移的 ISO 8601 时间，如 2026-11-23T09:30:00+08:00",
                      {"field": "received_at"})
    if moment > now + CLOCK_SKEW:
        raise invalid("received_at_in_future", "热线受理时间不能晚于当前时间",
                      {"field": "received_at", "max_skew_s": int(CLOCK_SKEW.total_seconds())})
    if moment < now - timedelta(days=max_age_days):
        raise invalid("received_at_too_old", f"热线受理时间早于 {max_age_days} 天前，不能再导入",
                      {"field": "received_at", "max_age_days": max_age_days})
    return moment


def _title_of(content: str) -> str:
    """A comment has no subject line: its first 30 characters, on one line."""
    line = " ".join(content.split())
    return line if len(line) <= 30 else line[:29] + "…"


def receipt(p, created: bool) -> ImportReceipt:
    return ImportReceipt(id=p.id, tracking_code=p.tracking_code, status=p.status, category=p.category,
                         channel=p.channel, created=created, source_ref=p.source_ref or "",
                         duplicate_of=p.duplicate_of, created_at=usecases.local_iso(p.created_at),
                         sla=usecases.sla_view(p))


# --- the account read model -------------------------------------------------------------

async def on_account_changed(rt: Runtime, s, event) -> None:
    """Which unit each account belongs to, and whether it is still open. Other events under
    govmedia.account.account.> carry other payloads: not ours."""
    if event.type not in ACCOUNT_CHANGES:
        return
    msg = event.parse(ev.AccountChanged)
    row = await s.get(AccountRef, msg.account_id)
    if row is None:
        row = AccountRef(id=msg.account_id, unit_id=msg.unit_id, platform=msg.platform)
    row.unit_id, row.platform, row.name = msg.unit_id, msg.platform, msg.name
    row.status = msg.status or ("closed" if event.type.endswith(".closed") else "active")
    row.updated_at = utcnow()
    s.add(row)


CONSUMERS = [Consumer("petition-account-changed", "govmedia.account.account.>", on_account_changed)]
