"""Event consumers of the review service: a submitted draft opens a review; the account
service's units and users feed the directory and the users read model."""
from __future__ import annotations

from govmedia.events.v1 import events_pb2 as ev
from govmedia_kit.bus import Consumer

from . import delegations, usecases
from .models import directory, reach


async def on_draft_submitted(rt, session, event) -> None:
    await usecases.open_review(rt, session, event.parse(ev.DraftSubmitted))


CONSUMERS = [
    Consumer("review-draft-submitted", "govmedia.content.draft.submitted", on_draft_submitted),
    directory.consumer("review"),
    *reach.consumers("review"),
    delegations.CONSUMER,
]
