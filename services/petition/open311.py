"""Open311 GeoReport v2 under /open311/v2/, JSON and XML (every endpoint in `.json` and
`.xml`, with the spec's element names), over the same use cases as /v1.

- `GET services.json`: the categories as services (service_code = category).
- `GET services/{code}.json`: a service definition (no extra attributes: `attributes` empty).
- `POST requests.json`: form data, `api_key` required (PETITION_OPEN311_API_KEYS); a request is
  created in real time, so the answer carries `service_request_id` (never a token).
- `GET requests.json`: `service_request_id` (comma-separated, other filters then ignored),
  `service_code`, `start_date`, `end_date` (ISO 8601, at most 90 days apart; default the last
  90 days), `status` (open, closed); at most 1000 requests, newest first.
- `GET requests/{id}.json`: a list of one request. `GET tokens/{token}.json`: a tracking code
  given to the citizen works as the token.
- Errors: a list of `{"code", "description"}` with status 400, 403 or 404; in XML
  `<errors><error><code/><description/></error></errors>`.
- XML: `<services><service>…`, `<service_definition><service_code/><attributes/>`,
  `<service_requests><request>…` (lists, the POST answer and tokens alike); an empty element
  for a null, `true`/`false` for booleans. The API only emits XML, it never parses any.

Personal data never leaves here: `description` is the citizen's subject line, not the text;
no names or phones. `expected_datetime` is the deadline of the running SLA stage, and `calendar`
(our extension) says whether it rests on a provisional year (statutory holidays only, recomputed
once the State Council notice is loaded) or an official one.
"""
from __future__ import annotations

import functools
import hmac
import re
import xml.etree.ElementTree as ET  # only to write XML: this API never parses any
from datetime import datetime, timedelta

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from sqlmodel import select

from govmedia_kit.db import as_utc, utcnow
from govmedia_kit.errors import AppError
from govmedia_kit.public import normalize_tracking_code
from govmedia_kit.runtime import get_runtime

from . import usecases
from .domain import CATEGORIES, CATEGORY_ZH, local_iso
from .models import Petition, PetitionCreate, directory

router = APIRouter(prefix="/open311/v2", tags=["open311"])
MAX_SPAN = timedelta(days=90)
MAX_RESULTS = 1000
CLOSED = ("answered", "closed", "declined", "linked")
_DESCRIPTIONS = {
    "consultation": "政策、办事咨询（2 个工作日内答复）", "help": "生活求助（10 个工作日内办理）",
    "suggestion": "意见建议（10 个工作日内办理）", "complaint": "投诉（15 个工作日内办理，须留联系方式）",
    "report": "举报（15 个工作日内办理，须留联系方式）", "petition": "信访事项（15 日内告知是否受理，须留联系方式）",
}


FORMATS = ("json", "xml")
XML_TYPE = "text/xml; charset=utf-8"
# Characters XML 1.0 cannot carry (control characters a citizen may have pasted): dropped.
_NOT_XML = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


class Open311Error(Exception):
    def __init__(self, status: int, description: str):
        self.status, self.description = status, description


def _text(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return _NOT_XML.sub("", str(value))


def _fill(element: ET.Element, data: dict) -> None:
    for key, value in data.items():
        child = ET.SubElement(element, key)
        if isinstance(value, list):  # attributes of a service definition: <attributes><attribute>…
            for entry in value:
                _fill(ET.SubElement(child, key[:-1]), entry)
        else:
            child.text = _text(value)


def to_xml(root: str, item: str | None, data) -> bytes:
    """The spec's XML: `<root><item>…</item>…</root>` for a list, `<root>…</root>` for one object."""
    top = ET.Element(root)
    if item is None:
        _fill(top, data)
    else:
        for entry in data:
            _fill(ET.SubElement(top, item), entry)
    return ('<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(top, encoding="unicode")).encode("utf-8")


def _render(fmt: str, status: int, root: str, item: str | None, data) -> Response:
    if fmt == "xml":
        return Response(to_xml(root, item, data), status_code=status, media_type=XML_TYPE)
    return JSONResponse(data, status_code=status)


def _errors(fmt: str, status: int, description: str) -> Response:
    return _render(fmt, status, "errors", "error", [{"code": status, "description": description}])


def _open311(root: str, item: str | None, status: int = 200):
    """One endpoint in both formats (`{fmt}` in the path: json or xml): the handler answers the
    data, this renders it, and errors as the spec's error list in the same format."""
    def decorate(handler):
        @functools.wraps(handler)
        async def wrapper(*args, **kwargs):
            fmt = kwargs.get("fmt", "json")
            if fmt not in FORMATS:
                return _errors("json", 404, f"format {fmt[:20]} not supported: json or xml")
            try:
                return _render(fmt, status, root, item, await handler(*args, **kwargs))
            except Open311Error as exc:
                return _errors(fmt, exc.status, exc.description)
            except AppError as exc:
                code = exc.status if exc.status in (400, 403, 404, 429) else (400 if exc.status == 422 else exc.status)
                response = _errors(fmt, code, exc.message)
                if exc.status == 429 and exc.headers:
                    response.headers.update(exc.headers)
                return response
        return wrapper
    return decorate


def _service(code: str) -> dict:
    return {"service_code": code, "service_name": CATEGORY_ZH[code], "description": _DESCRIPTIONS[code],
            "metadata": False, "type": "realtime", "keywords": "", "group": "12345" if code != "petition" else "信访"}


@router.get("/services.{fmt}")
@_open311("services", "service")
async def services(fmt: str):
    return [_service(c) for c in CATEGORIES]


@router.get("/services/{service_code}.{fmt}")
@_open311("service_definition", None)
async def service_definition(service_code: str, fmt: str):
    if service_code not in CATEGORIES:
        raise Open311Error(404, f"service_code {service_code[:40]} not found")
    return {"service_code": service_code, "attributes": []}


def _parse_dt(value: str, name: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise Open311Error(400, f"{name} is not an ISO 8601 date-time") from None
    if moment.tzinfo is None:
        raise Open311Error(400, f"{name} needs a time zone (Z or an offset)")
    return moment


def _float(form, name: str) -> float | None:
    raw = (form.get(name) or "").strip()
    if not raw:
        return None
    try:
        return float(raw)
    except ValueError:
        raise Open311Error(400, f"{name} is not a number") from None


@router.post("/requests.{fmt}", status_code=201)
@_open311("service_requests", "request", status=201)
async def post_request(request: Request, fmt: str):
    rt = get_runtime(request)
    from govmedia_kit.public import admit_public

    admit_public(request, rt.state["intake_limiter"], write=True)
    form = await request.form()
    keys = [k.strip() for k in rt.settings.open311_api_keys.get_secret_value().split(",") if k.strip()]
    given = (form.get("api_key") or "").strip()
    if not given or not any(hmac.compare_digest(given, k) for k in keys):
        raise Open311Error(403, "api_key missing or invalid")
    code = (form.get("service_code") or "").strip()
    if not code:
        raise Open311Error(400, "service_code is required")
    if code not in CATEGORIES:
        raise Open311Error(404, f"service_code {code[:40]} not found")
    lat, lon = _float(form, "lat"), _float(form, "long")
    address = (form.get("address_string") or "").strip() or None
    if (lat is None or lon is None) and not address and not form.get("address_id"):
        raise Open311Error(400, "a location is required: lat and long, address_string or address_id")
    description = (form.get("description") or "").strip()
    if not description:
        raise Open311Error(400, "description is required")
    name = ((form.get("last_name") or "").strip() + (form.get("first_name") or "").strip()) or None
    phone = (form.get("phone") or "").strip() or None
    try:
        data = PetitionCreate(
            category=code, title=description[:40], content=description, channel="open311",
            contact={"name": name or "", "phone": phone or ""} if (name or phone) else None,
            location=address[:200] if address else None, lat=lat, lon=lon, service_code=code)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise Open311Error(400, f"{'.'.join(map(str, first.get('loc', ())))}: {first.get('msg', '')}") from None
    p = await usecases.create_petition(rt, data)
    return [{"service_request_id": p.id, "service_notice": _notice(p), "account_id": None}]


def _notice(p: Petition) -> str:
    if p.status == "linked":
        return "同一事项已在办理中，本次反映已并入原件"
    provisional = "（按法定节假日暂定，国务院节假日安排公布后自动调整）" if p.sla_calendar == "provisional" else ""
    return f"已登记，将于 {local_iso(p.due_at)} 前办理{provisional}"


async def _as_request(s, p: Petition) -> dict:
    closed = p.status in CLOSED
    notes = p.answer if p.answer else (f"{p.decline_reason}；请向{p.redirect_to}反映" if p.decline_reason else None)
    agency = await directory.name(s, p.unit_id) if p.unit_id else None
    return {
        "service_request_id": p.id, "status": "closed" if closed else "open", "status_notes": notes,
        "service_name": CATEGORY_ZH[p.category], "service_code": p.category, "description": p.title,
        "agency_responsible": agency, "service_notice": None, "requested_datetime": local_iso(p.created_at),
        "updated_datetime": local_iso(p.updated_at),
        "expected_datetime": local_iso(p.due_at) if p.sla_running else None,
        # Our extension: whether expected_datetime rests on a provisional calendar year.
        "calendar": p.sla_calendar if p.sla_running else None,
        "address": p.location, "address_id": None, "zipcode": None, "lat": p.lat, "long": p.lon, "media_url": None,
    }


@router.get("/requests.{fmt}")
@_open311("service_requests", "request")
async def get_requests(request: Request, fmt: str):
    rt = get_runtime(request)
    q = request.query_params
    stmt = select(Petition)
    ids = [i.strip() for i in (q.get("service_request_id") or "").split(",") if i.strip()]
    if ids:
        stmt = stmt.where(Petition.id.in_(ids[:MAX_RESULTS]))
    else:
        end = _parse_dt(q["end_date"], "end_date") if q.get("end_date") else None
        start = _parse_dt(q["start_date"], "start_date") if q.get("start_date") else None
        if start and end and end < start:
            raise Open311Error(400, "end_date is before start_date")
        if start and end and end - start > MAX_SPAN:
            raise Open311Error(400, "start_date and end_date may be at most 90 days apart")
        if end is None:
            end = start + MAX_SPAN if start else utcnow()
        if start is None:
            start = end - MAX_SPAN
        stmt = stmt.where(Petition.created_at >= as_utc(start), Petition.created_at <= as_utc(end))
        codes = [c.strip() for c in (q.get("service_code") or "").split(",") if c.strip()]
        if any(c not in CATEGORIES for c in codes):
            raise Open311Error(400, "unknown service_code")
        if codes:
            stmt = stmt.where(Petition.category.in_(codes))
        statuses = {v.strip() for v in (q.get("status") or "").split(",") if v.strip()}
        if statuses - {"open", "closed"}:
            raise Open311Error(400, "status must be open, closed or both")
        if statuses == {"open"}:
            stmt = stmt.where(Petition.status.not_in(CLOSED))
        elif statuses == {"closed"}:
            stmt = stmt.where(Petition.status.in_(CLOSED))
    stmt = stmt.order_by(Petition.id.desc()).limit(MAX_RESULTS)
    async with rt.db.session() as s:
        return [await _as_request(s, p) for p in (await s.exec(stmt)).all()]


@router.get("/requests/{service_request_id}.{fmt}")
@_open311("service_requests", "request")
async def get_request(request: Request, service_request_id: str, fmt: str):
    rt = get_runtime(request)
    async with rt.db.session() as s:
        p = await s.get(Petition, service_request_id)
        if p is None:
            raise Open311Error(404, f"service_request_id {service_request_id[:40]} not found")
        return [await _as_request(s, p)]


@router.get("/tokens/{token}.{fmt}")
@_open311("service_requests", "request")
async def get_token(request: Request, token: str, fmt: str):
    rt = get_runtime(request)
    from govmedia_kit.public import admit_public

    admit_public(request, rt.state["track_limiter"], write=False)
    code = normalize_tracking_code(token)
    async with rt.db.session() as s:
        p = (await s.exec(select(Petition).where(Petition.tracking_code == code))).first() if code else None
    if p is None:
        raise Open311Error(404, f"token {token[:40]} not found")
    return [{"service_request_id": p.id, "token": token}]
