"""REST transport of the petition service (DESIGN.md §5)."""
from __future__ import annotations

from datetime import date
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request, Response

from govmedia_kit.auth import AnyPrincipal, CurrentPrincipal
from govmedia_kit.public import admit_public
from govmedia_kit.runtime import RuntimeDep

from . import imports, open311_keys, policies, supervision, usecases
from .domain import CITIZEN_ACTIONS, STAFF_ACTIONS
from .models import (
    ActionIn, Category, CommentImport, HotlineImport, ImportReceipt, Open311KeyIn, Open311KeyPublic, Page,
    PetitionCreate, PetitionPublic, PetitionReceipt, PetitionStatus, PolicyIn, PolicyPublic, Status, SupervisionIn,
    SupervisionPublic, TimelineEntryPublic,
)
from .domain import local_iso

router = APIRouter(tags=["petitions"])
Limit = Annotated[int, Query(ge=1, le=200)]
StaffAction = Literal[STAFF_ACTIONS]  # type: ignore[valid-type]
CitizenAction = Literal[CITIZEN_ACTIONS]  # type: ignore[valid-type]


async def intake_gate(request: Request, rt: RuntimeDep) -> None:
    admit_public(request, rt.state["intake_limiter"], write=True)


async def track_gate(request: Request, rt: RuntimeDep) -> None:
    admit_public(request, rt.state["track_limiter"], write=False)


async def citizen_gate(request: Request, rt: RuntimeDep) -> None:
    admit_public(request, rt.state["track_limiter"], write=True)


@router.post("/v1/petitions", status_code=201, response_model=PetitionReceipt, dependencies=[Depends(intake_gate)])
async def create_petition(rt: RuntimeDep, body: PetitionCreate):
    """Public intake, no token. The answer carries the tracking code, shown only here."""
    return usecases.receipt(await usecases.public_intake(rt, body))


@router.post("/v1/petitions/imports/hotline", status_code=201, response_model=ImportReceipt, tags=["imports"],
             responses={200: {"model": ImportReceipt, "description": "the work order was imported before"}})
async def import_hotline(rt: RuntimeDep, who: CurrentPrincipal, body: HotlineImport, response: Response):
    """A transfer from the government hotline (12345), by the provincial intake desk (handler)
    or ops. `received_at` (ISO 8601 with offset; absent: now) is when the hotline took the call:
    the SLA clock starts then. Idempotent on `work_order_no`: the same work order again answers
    200 with its case; with a different category, title, content or contact, `409 import_conflict`."""
    r = await imports.import_hotline(rt, who, body)
    response.status_code = 201 if r.created else 200
    return r


@router.post("/v1/petitions/imports/comments", status_code=201, response_model=ImportReceipt, tags=["imports"],
             responses={200: {"model": ImportReceipt, "description": "the comment was imported before"}})
async def import_comment(rt: RuntimeDep, who: AnyPrincipal, body: CommentImport, response: Response):
    """A comment left on an account of the caller's unit, by the unit's client credentials (its
    app) or its handler. Idempotent on (`account_id`, `comment_id`); the same comment with a
    different category, title, content or contact: `409 import_conflict`."""
    r = await imports.import_comment(rt, who, body)
    response.status_code = 201 if r.created else 200
    return r


@router.get("/v1/petitions", response_model=Page)
async def list_petitions(rt: RuntimeDep, who: CurrentPrincipal, limit: Limit = 50, cursor: str | None = None,
                         status: Status | None = None, category: Category | None = None, unit_id: str | None = None,
                         region: str | None = None, overdue: bool | None = None, at_risk: bool | None = None):
    """Cases the caller reaches; `overdue=true` / `at_risk=true` (past the warning) for supervision."""
    items, nxt = await usecases.list_petitions(rt, who, limit, cursor, status, category, unit_id, overdue, at_risk,
                                               region)
    return Page(items=[usecases.public_view(rt, p, who) for p in items], next_cursor=nxt)


@router.get("/v1/petitions/track/{tracking_code}", response_model=PetitionStatus, dependencies=[Depends(track_gate)])
async def track_petition(rt: RuntimeDep, tracking_code: str):
    """Public status lookup by tracking code: status, deadline, answer; no contact data."""
    return await usecases.track_petition(rt, tracking_code)


@router.post("/v1/petitions/track/{tracking_code}/{action}", response_model=PetitionStatus,
             dependencies=[Depends(citizen_gate)])
async def citizen_act(rt: RuntimeDep, tracking_code: str, action: CitizenAction, body: ActionIn):
    """The citizen, by tracking code: `rate` (`rating` 1–5, `note`), `supplement` (`note`:
    what was asked for; resumes the clock), `recheck` (`reason`: 复查, then 复核)."""
    return await usecases.citizen_act(rt, tracking_code, action, body)


@router.get("/v1/petitions/{petition_id}", response_model=PetitionPublic)
async def get_petition(rt: RuntimeDep, who: CurrentPrincipal, petition_id: str):
    return await usecases.get_petition(rt, who, petition_id)


@router.get("/v1/petitions/{petition_id}/timeline", response_model=Page)
async def petition_timeline(rt: RuntimeDep, who: CurrentPrincipal, petition_id: str):
    entries = await usecases.petition_timeline(rt, who, petition_id)
    return Page(items=[TimelineEntryPublic(at=local_iso(e.at), actor=e.actor, action=e.action, note=e.note)
                       for e in entries])


@router.post("/v1/petitions/{petition_id}/supervision", response_model=SupervisionPublic, tags=["supervision"])
async def supervise(rt: RuntimeDep, who: CurrentPrincipal, petition_id: str, body: SupervisionIn):
    """督办 note (and a deadline for the unit's report) by a supervisor."""
    return await supervision.supervise(rt, who, petition_id, body)


@router.post("/v1/petitions/{petition_id}/{action}", response_model=PetitionPublic)
async def act(rt: RuntimeDep, who: CurrentPrincipal, petition_id: str, action: StaffAction, body: ActionIn):
    """A workflow action: accept; decline (`reason`, `redirect_to`); assign (`unit_id`); return
    (`reason`, within 5 working days); start; wait (`note`: what the citizen must supply — pauses
    the clock); resume; extend (principal: `days`, `reason` told to the citizen; once); answer
    (`answer`); close; decide (`decision` upheld|revised, `answer`: on a 复查/复核)."""
    return await usecases.act(rt, who, petition_id, action, body)


# --- supervision and statistics -------------------------------------------------------

@router.get("/v1/supervision/overview", tags=["supervision"])
async def supervision_overview(rt: RuntimeDep, who: CurrentPrincipal):
    """Open cases overdue and at risk, by unit, within the caller's region."""
    return await supervision.overview(rt, who)


@router.get("/v1/supervisions", response_model=Page, tags=["supervision"])
async def list_supervisions(rt: RuntimeDep, who: CurrentPrincipal,
                            status: Literal["open", "closed"] | None = None):
    return Page(items=await supervision.list_supervisions(rt, who, status))


@router.get("/v1/supervisions/{supervision_id}", response_model=SupervisionPublic, tags=["supervision"])
async def get_supervision(rt: RuntimeDep, who: CurrentPrincipal, supervision_id: str):
    return await supervision.get_supervision(rt, who, supervision_id)


@router.get("/v1/stats/sla", tags=["statistics"], responses={200: {"content": {"text/csv": {}}}})
async def sla_stats(rt: RuntimeDep, who: CurrentPrincipal,
                    group_by: Annotated[list[str], Query(description="one or two of unit, category, region, month: "
                                                         "repeated or comma-separated (`unit,month`)")] = ["unit"],
                    since: date | None = None, until: date | None = None, category: Category | None = None,
                    unit_id: Annotated[str | None, Query(max_length=32)] = None,
                    region: Annotated[str | None, Query(max_length=400, description="a region path")] = None,
                    format: Literal["json", "csv"] = "json"):
    """Received, closed, on-time rate, average handling working days, satisfaction; by one
    dimension or two at once (e.g. each unit per month)."""
    rows = await supervision.stats(rt, who, group_by, since, until, category, unit_id, region)
    dims = supervision.parse_groups(group_by)  # (checked by stats, after the caller's role)
    label = ",".join(dims)
    if format == "csv":
        return Response(supervision.stats_csv(rows, dims), media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": f'attachment; filename="petition-sla-{"-".join(dims)}.csv"'})
    return {"group_by": label, "dimensions": list(dims), "since": since, "until": until, "items": rows}


# --- SLA policies ------------------------------------------------------------------------

@router.get("/v1/sla/policies", response_model=Page, tags=["sla"])
async def list_policies(rt: RuntimeDep, who: CurrentPrincipal, category: Category | None = None,
                        history: bool = False):
    """The current version per category (`history=true`: every version)."""
    return Page(items=[policies.public(p) for p in await policies.list_policies(rt, who, category, history)])


@router.put("/v1/sla/policies/{category}", response_model=PolicyPublic, tags=["sla"])
async def new_policy_version(rt: RuntimeDep, who: CurrentPrincipal, category: Category, body: PolicyIn):
    """A new version of the category's time limits (province ops); existing cases keep theirs."""
    return policies.public(await policies.new_version(rt, who, category, body))


# --- Open311 API keys ------------------------------------------------------------------------

@router.post("/v1/open311/keys", status_code=201, response_model=Open311KeyPublic, tags=["open311"])
async def create_open311_key(rt: RuntimeDep, who: CurrentPrincipal, body: Open311KeyIn, response: Response):
    """A key for an Open311 client (province ops): `scopes` of `open311:read_full` (the full rows
    of GET requests) and `open311:write` (POST requests). The key is in this answer only (never
    cached, nor kept for an idempotent replay)."""
    response.headers["Cache-Control"] = "no-store"
    return await open311_keys.create_key(rt, who, body)


@router.get("/v1/open311/keys", response_model=Page, tags=["open311"])
async def list_open311_keys(rt: RuntimeDep, who: CurrentPrincipal):
    """Every key, revoked ones included, without the key itself (its first characters: `prefix`)."""
    return Page(items=await open311_keys.list_keys(rt, who))


@router.get("/v1/open311/keys/audit", tags=["open311"])
async def open311_key_audit(rt: RuntimeDep, who: CurrentPrincipal):
    """Who made and revoked which key, hash-chained (`ok`: the chain is whole)."""
    return await open311_keys.audit(rt, who)


@router.delete("/v1/open311/keys/{key_id}", response_model=Open311KeyPublic, tags=["open311"])
async def revoke_open311_key(rt: RuntimeDep, who: CurrentPrincipal, key_id: str):
    """The key stops working at once; revoking it again is `409 open311_key_revoked`."""
    return await open311_keys.revoke_key(rt, who, key_id)
