"""Event consumers of the content service: the outcome of a review comes back to the draft;
a petition answer the unit featured becomes a draft."""
from __future__ import annotations

from govmedia.events.v1 import events_pb2 as ev
from govmedia_kit.bus import Consumer
from sqlmodel import select

from . import usecases
from .models import Draft, directory, reach


async def on_item_approved(rt, session, event) -> None:
    await usecases.apply_approval(session, event.parse(ev.ItemApproved))


async def on_item_rejected(rt, session, event) -> None:
    await usecases.apply_rejection(session, event.parse(ev.ItemRejected))


async def on_answer_featured(rt, session, event) -> None:
    """A featured answer (精选) becomes a draft of the unit, written for whoever featured it; it
    goes through machine review and the three levels like any other. Once per case."""
    msg = event.parse(ev.PetitionAnswerFeatured)
    if not msg.unit_id or not msg.answer:
        return
    if (await session.exec(select(Draft.id).where(Draft.petition_id == msg.petition_id))).first():
        return
    body = f"【网民留言】\n{msg.question}\n\n【答复】\n{msg.answer}"
    await usecases.new_draft(session, unit_id=msg.unit_id, author_id=msg.featured_by, fields={
        "title": f"网民留言答复：{msg.title}"[:200], "body": body, "category": "网民留言答复"},
        petition_id=msg.petition_id)


CONSUMERS = [
    directory.consumer("content"),
    *reach.consumers("content"),
    Consumer("content-item-approved", "govmedia.review.item.approved", on_item_approved),
    Consumer("content-item-rejected", "govmedia.review.item.rejected", on_item_rejected),
    Consumer("content-petition-featured", "govmedia.petition.answer.featured", on_answer_featured),
]
