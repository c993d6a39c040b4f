"""gRPC transport of the review service: the same use cases as REST."""
from __future__ import annotations

import json

from govmedia.review.v1 import review_pb2 as pb
from govmedia.review.v1 import review_pb2_grpc as pb_grpc
from govmedia_kit.auth import grpc_principal
from govmedia_kit.db import iso
from govmedia_kit.errors import invalid
from govmedia_kit.grpc import grpc_errors, page_limit, parse_request
from govmedia_kit.runtime import Runtime

from . import chains, delegations, findings, lexicons, usecases
from .models import (
    CHECKS,
    ChainIn,
    ChainPublic,
    DecisionIn,
    DelegationIn,
    DelegationPublic,
    FindingPublic,
    LexiconPublic,
    OverrideIn,
    ReviewView,
    TermsIn,
)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ReviewService"].full_name
STATES = ("in_review", "approved", "rejected", "superseded")


def _finding(f) -> pb.Finding:
    p = FindingPublic.of(f)
    return pb.Finding(id=p.id, category=p.category, severity=p.severity, field=p.field, start=p.start, end=p.end,
                      matched=p.matched, rule=p.rule, suggestion=p.suggestion or "", overridden=p.overridden,
                      overridden_by=p.overridden_by or "", overridden_at=p.overridden_at or "",
                      override_reason=p.override_reason or "", overridden_for=p.overridden_for or "")


def _review(view: ReviewView) -> pb.Review:
    r = view.review
    return pb.Review(
        id=r.id, item_id=r.item_id, item_version=r.item_version, unit_id=r.unit_id, author_id=r.author_id,
        state=r.state, current_level=r.current_level, title=r.title, created_at=iso(r.created_at),
        updated_at=iso(r.updated_at), item=r.item(), urgent=r.urgent, chain_version=r.chain_version,
        lexicon_version=r.lexicon_version or 0, findings=[_finding(f) for f in view.findings],
        blocking_open=sum(1 for f in view.findings if f.open_blocking),
        levels=[pb.Level(level=lv.level, holder_role=lv.holder_role, decision=lv.decision or "",
                         decided_by=lv.decided_by or "", decided_at=iso(lv.decided_at) or "",
                         comment=lv.comment or "", checks=pb.Checks(**lv.checks) if lv.checks else None,
                         deadline_minutes=lv.deadline_minutes, due_at=iso(lv.due_at) or "",
                         reminded_at=iso(lv.reminded_at) or "", escalated_at=iso(lv.escalated_at) or "",
                         delegated_from=lv.delegated_from or "", delegation_id=lv.delegation_id or "")
                for lv in view.levels],
    )


def _chain(c: ChainPublic) -> pb.Chain:
    return pb.Chain(unit_id=c.unit_id, version=c.version, is_default=c.is_default, changed_by=c.changed_by or "",
                    changed_at=c.changed_at or "",
                    levels=[pb.ChainLevel(level=lv.level, roles=lv.roles, deadline_minutes=lv.deadline_minutes)
                            for lv in c.levels])


def _lexicons(x: LexiconPublic) -> pb.Lexicons:
    return pb.Lexicons(version=x.version, data_json=json.dumps(x.data, ensure_ascii=False), created_by=x.created_by,
                       created_at=x.created_at, change=x.change)


def _delegation(d: DelegationPublic) -> pb.Delegation:
    return pb.Delegation(id=d.id, unit_id=d.unit_id, from_user_id=d.from_user_id, to_user_id=d.to_user_id,
                         role=d.role, starts_at=d.starts_at, ends_at=d.ends_at, reason=d.reason,
                         created_by=d.created_by, created_at=d.created_at, revoked_at=d.revoked_at or "",
                         revoked_by=d.revoked_by or "", active=d.active)


def _json(value: str, field: str):
    try:
        return json.loads(value)
    except ValueError:
        raise invalid("validation_failed", "请求参数不合法", [{"field": field, "problem": "not valid JSON"}])


class ReviewServicer(pb_grpc.ReviewServiceServicer):
    def __init__(self, rt: Runtime):
        self.rt = rt

    async def _who(self, context):
        return await grpc_principal(context, self.rt.verifier)

    # --- reviews ---

    @grpc_errors
    async def ListReviews(self, request, context):
        who = await self._who(context)
        if request.state and request.state not in STATES:
            raise invalid("validation_failed", "请求参数不合法", [{"field": "state", "problem": f"one of {STATES}"}])
        items, nxt = await usecases.list_reviews(self.rt, who, page_limit(request.limit), request.cursor or None,
                                                 request.item_id or None, request.state or None, request.mine,
                                                 request.overdue)
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

    @grpc_errors
    async def OverrideFinding(self, request, context):
        who = await self._who(context)
        data = parse_request(OverrideIn, reason=request.reason)
        return _review(await findings.override_finding(self.rt, who, request.review_id, request.finding_id, data))

    @grpc_errors
    async def GetAudit(self, request, context):
        who = await self._who(context)
        stream, items, nxt = await usecases.audit_entries(self.rt, who, request.review_id,
                                                          page_limit(request.limit, 200, 1000), request.cursor or None)
        dump = lambda v: json.dumps(v, ensure_ascii=False, sort_keys=True) if v is not None else ""  # noqa: E731
        return pb.AuditEntries(stream_id=stream, next_cursor=nxt or 0, items=[
            pb.AuditEntry(seq=e.seq, action=e.action, actor=e.actor, at=e.at, before_json=dump(e.before),
                          after_json=dump(e.after), prev_hash=e.prev_hash, hash=e.hash) for e in items])

    @grpc_errors
    async def VerifyAudit(self, request, context):
        who = await self._who(context)
        result = await usecases.audit_verify(self.rt, who, request.id)
        broken = result.first_broken or {}
        return pb.AuditVerification(stream_id=result.stream_id, ok=result.ok, entries=result.entries,
                                    first_broken_seq=broken.get("seq", 0), first_broken_reason=broken.get("reason", ""))

    # --- chains ---

    @grpc_errors
    async def GetChain(self, request, context):
        who = await self._who(context)
        return _chain(await chains.get_chain(self.rt, who, request.unit_id))

    @grpc_errors
    async def PutChain(self, request, context):
        who = await self._who(context)
        data = parse_request(ChainIn, levels=[
            {"roles": list(lv.roles), **({"deadline_minutes": lv.deadline_minutes} if lv.deadline_minutes else {})}
            for lv in request.levels])
        if_match = request.if_match if request.HasField("if_match") else None
        return _chain(await chains.put_chain(self.rt, who, request.unit_id, data, if_match))

    @grpc_errors
    async def ListChainVersions(self, request, context):
        who = await self._who(context)
        items, nxt = await chains.chain_history(self.rt, who, request.unit_id, page_limit(request.limit),
                                                request.cursor or None)
        return pb.ChainList(items=[_chain(c) for c in items], next_cursor=nxt or 0)

    # --- lexicons ---

    @grpc_errors
    async def GetLexicons(self, request, context):
        who = await self._who(context)
        return _lexicons(await lexicons.get_lexicons(self.rt, who, request.version or None))

    @grpc_errors
    async def PutLexicons(self, request, context):
        who = await self._who(context)
        data = _json(request.data_json, "data_json")
        return _lexicons(await lexicons.put_lexicons(self.rt, who, request.if_match or None, data, request.change))

    @grpc_errors
    async def EditLexiconTerms(self, request, context):
        who = await self._who(context)
        data = parse_request(TermsIn, category=request.category,
                             add={term: severity or None for term, severity in request.add.items()},
                             remove=list(request.remove))
        if_match = request.if_match if request.HasField("if_match") else None
        return _lexicons(await lexicons.edit_terms(self.rt, who, data, if_match))

    @grpc_errors
    async def ListLexiconVersions(self, request, context):
        who = await self._who(context)
        items, nxt = await lexicons.list_versions(self.rt, who, page_limit(request.limit), request.cursor or None)
        return pb.LexiconVersionList(next_cursor=nxt or 0, items=[
            pb.LexiconVersion(version=v.version, created_by=v.created_by, created_at=v.created_at, change=v.change)
            for v in items])

    # --- delegations ---

    @grpc_errors
    async def CreateDelegation(self, request, context):
        who = await self._who(context)
        data = parse_request(DelegationIn, to_user_id=request.to_user_id, role=request.role,
                             starts_at=request.starts_at, ends_at=request.ends_at, reason=request.reason,
                             from_user_id=request.from_user_id or None)
        return _delegation(await delegations.create_delegation(self.rt, who, data))

    @grpc_errors
    async def ListDelegations(self, request, context):
        who = await self._who(context)
        active = request.active if request.HasField("active") else None
        items, nxt = await delegations.list_delegations(self.rt, who, page_limit(request.limit),
                                                        request.cursor or None, active, request.to_user_id or None,
                                                        request.from_user_id or None)
        return pb.DelegationList(items=[_delegation(d) for d in items], next_cursor=nxt or "")

    @grpc_errors
    async def RevokeDelegation(self, request, context):
        who = await self._who(context)
        return _delegation(await delegations.revoke_delegation(self.rt, who, request.id))


def add_to_server(rt: Runtime, server) -> None:
    pb_grpc.add_ReviewServiceServicer_to_server(ReviewServicer(rt), server)
