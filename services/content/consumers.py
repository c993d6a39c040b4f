"""Event consumers of the content service: the outcome of a review comes back to the draft."""
from __future__ import annotations

from govmedia.events.v1 import events_pb2 as ev
from govmedia_kit.bus import Consumer

from . import usecases
from .models import directory


async def on_item_approved(rt, session, event) -> None:
    await usecases.apply_approval(session, event.parse(ev.ItemApproved))


async def on_item_rejected(rt, session, event) -> None:
    await usecases.apply_rejection(session, event.parse(ev.ItemRejected))


CONSUMERS = [
    directory.consumer("content"),
    Consumer("content-item-approved", "govmedia.review.item.approved", on_item_approved),
    Consumer("content-item-rejected", "govmedia.review.item.rejected", on_item_rejected),
]
