"""gRPC transport of the review service: the same use cases as REST."""
from __future__ import annotations


from govmedia.review.v1 import review_pb2 as pb
from govmedia.review.v1 import review_pb2_grpc as pb_grpc
from govmedia_kit.auth import grpc_principal
from govmedia_kit.db import iso
from govmedia_kit.errors import invalid
from govmedia_kit.grpc import grpc_errors, page_limit, parse_request
from govmedia_kit.runtime import Runtime

from . import usecases
from .models import CHECKS, DecisionIn, ReviewView

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ReviewService"].full_name
STATES = ("in_review", "approved", "rejected", "superseded")




def _review(view: ReviewView) -> pb.Review:
    r = view.review
    return pb.Review(
        id=r.id, item_id=r.item_id, item_version=r.item_version, unit_id=r.unit_id, author_id=r.author_id,
        state=r.state, current_level=r.current_level, title=r.title, created_at=iso(r.created_at),
        updated_at=iso(r.updated_at), item=r.item(),
        levels=[pb.Level(level=lv.level, holder_role=lv.holder_role, decision=lv.decision or "",
                         decided_by=lv.decided_by or "", decided_at=iso(lv.decided_at) or "",
                         comment=lv.comment or "", checks=pb.Checks(**lv.checks) if lv.checks else None)
                for lv in view.levels],
    )


class ReviewServicer(pb_grpc.ReviewServiceServicer):
    def __init__(self, rt: Runtime):
        self.rt = rt

    async def _who(self, context):
        return await grpc_principal(context, self.rt.verifier)

    @grpc_errors
    async def ListReviews(self, request, context):
        who = await self._who(context)
        if request.state and request.state not in STATES:
            raise invalid("validation_failed", "请求参数不合法", [{"field": "state", "problem": f"one of {STATES}"}])
        items, nxt = await usecases.list_reviews(self.rt, who, page_limit(request.limit), request.cursor or None,
                                                 request.item_id or None, request.state or None, request.mine)
        return pb.ReviewList(items=[_review(r) for r in items], next_cursor=nxt or "")

    @grpc_errors
    async def GetReview(self, request, context):
        who = await self._who(context)
        return _review(await usecases.get_review(self.rt, who, request.id))

    @grpc_errors
    async def Decide(self, request, context):
        who = await self._who(context)
        checks = {name: getattr(request.checks, name) for name in CHECKS} if request.HasField("checks") else None
        data = parse_request(DecisionIn, decision=request.decision, comment=request.comment, checks=checks)
        return _review(await usecases.decide(self.rt, who, request.review_id, data))


def add_to_server(rt: Runtime, server) -> None:
    pb_grpc.add_ReviewServiceServicer_to_server(ReviewServicer(rt), server)
