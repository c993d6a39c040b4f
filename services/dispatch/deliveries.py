"""Deliveries as ops see them: one delivery with its history of transitions, the list
(`state=failed` is the dead-letter list), and the manual resend of a failed publish."""
from __future__ import annotations

from govmedia_kit.auth import CLIENT_ROLE, Principal
from govmedia_kit.db import as_utc, page, utcnow
from govmedia_kit.errors import AppError, conflict, forbidden
from govmedia_kit.runtime import Runtime

from . import store
from .domain import RenderError, render_publish
from .models import (
    FAILED, PENDING, PUBLISH, Account, DeliveryPage, DeliveryPublic, Publication, Retraction, directory,
)
from .usecases import OVERSEERS, may_watch, signal

RESENDERS = ("ops",)


def _people(who: Principal) -> None:
    if who.has(CLIENT_ROLE):
        raise forbidden("client_not_allowed", "客户端凭据只能用于接收推送和回执")


async def _delivery_and_unit(s, delivery_id: str, lock: bool = False):
    row = await store.get_delivery(s, delivery_id, lock=lock)
    if row is None:
        raise AppError(404, "delivery_not_found", "未找到投递记录", {"id": delivery_id})
    pub = await s.get(Publication, row.item_id)
    return row, pub


async def get_delivery(rt: Runtime, who: Principal, delivery_id: str) -> DeliveryPublic:
    """One delivery and every transition it went through (the item's unit; ops, regulator and
    supervisor with reach)."""
    _people(who)
    async with rt.db.session() as s:
        row, pub = await _delivery_and_unit(s, delivery_id)
        await may_watch(s, who, pub.unit_id if pub else "")
        history = await store.history(s, delivery_id)
    return DeliveryPublic.of(row, history)


async def list_deliveries(rt: Runtime, who: Principal, *, limit: int, cursor: str | None, state: str | None,
                          item_id: str | None, account_id: str | None, kind: str | None) -> DeliveryPage:
    """Deliveries of the items the caller reaches, by id; `state=failed` is the dead-letter list."""
    _people(who)
    reach = directory.reach_filter(Publication.unit_id, who, *OVERSEERS)
    async with rt.db.session() as s:
        rows = await store.list_deliveries(s, limit=limit, cursor=cursor, state=state, item_id=item_id,
                                           account_id=account_id, kind=kind, reach=reach)
    items, nxt = page(list(rows), limit)
    return DeliveryPage(items=[DeliveryPublic.of(r) for r in items], next_cursor=nxt)


async def resend(rt: Runtime, who: Principal, delivery_id: str) -> DeliveryPublic:
    """A failed publish goes pending again, attempts reset (a transition failed → pending).
    Refused: not a failed publish (409 not_resendable), a newer version approved since
    (409 superseded), the item retracted since (409 item_retracted), the account no longer
    active (409 account_inactive), its endpoint gone and its URL unchanged (409
    endpoint_gone), the item still unable to take the platform's form (409 render_failed)."""
    _people(who)
    who.require(*RESENDERS)
    now = utcnow()
    async with rt.unit_of_work() as s:
        row, pub = await _delivery_and_unit(s, delivery_id, lock=True)
        await may_watch(s, who, pub.unit_id if pub else "")
        if row.kind != PUBLISH or row.state != FAILED:
            raise conflict("not_resendable", "只有失败的推送可以重新发送", {"kind": row.kind, "state": row.state})
        if await s.get(Retraction, row.item_id) is not None:
            raise conflict("item_retracted", "稿件已撤回，不能重新发送", {"item_id": row.item_id})
        if pub is None or pub.version != row.version or pub.suppressed:
            raise conflict("superseded", "稿件已有更新的版本，不能重发旧版本",
                           {"version": row.version, "current": pub.version if pub else None})
        account = await s.get(Account, row.account_id)
        if account is None or account.status != "active":
            raise conflict("account_inactive", "账号已不在运行状态", {"status": account.status if account else None})
        if not account.endpoint_active:
            raise conflict("endpoint_gone", "客户端已注销（410），更换地址后才能重发", {"account_id": account.id})
        try:
            render_publish(account.platform, pub.payload)
        except RenderError as exc:
            raise conflict("render_failed", "稿件不符合该平台的格式要求", {"reason": exc.error})
        publish_at = as_utc(pub.publish_at)
        due = publish_at if publish_at and publish_at > now else now
        await store.move_ids(s, [row.id], [FAILED], PENDING, now, error=f"resend by {who.subject}",
                             values={"attempts": 0, "last_error": None, "gone": False, "failed_at": None,
                                     "next_attempt_at": due})
        store.notify_after_commit(s, signal(rt))
        # The answer is what the resend did (read in its transaction), not what the worker it
        # wakes did next: that may already have claimed the delivery.
        answer = DeliveryPublic.of(await store.get_delivery(s, delivery_id), await store.history(s, delivery_id))
    return answer
