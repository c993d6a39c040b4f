"""Open311 GeoReport v2 under /open311/v2/, JSON and XML (every endpoint in `.json` and
`.xml`, with the spec's element names), over the same use cases as /v1.

- `GET services.json`: the categories as services (service_code = category).
- `GET services/{code}.json`: a service definition (no extra attributes: `attributes` empty).
- `POST requests.json`: form data, `api_key` required (PETITION_OPEN311_API_KEYS); a request is
  created in real time, so the answer carries `service_request_id` (never a token).
- `GET requests.json`: `service_request_id` (comma-separated, at most `MAX_PAGE`; other filters
  then ignored), `service_code`, `start_date`, `end_date` (ISO 8601, at most 90 days apart;
  default the last 90 days), `status` (open, closed); newest first, paged: `page_size` (default
  50, at most 200) and `cursor` (the `X-Next-Cursor` header of the page before, also in a
  `Link: <…>; rel="next"` header). Rate-limited per client address
  (`PETITION_OPEN311_READ_RATE_PER_MINUTE`), or per key for a keyed client.
- `GET requests/{id}.json`: a list of one request. `GET tokens/{token}.json`: a tracking code
  given to the citizen works as the token.
- Errors: a list of `{"code", "description"}` with status 400, 403 or 404; in XML
  `<errors><error><code/><description/></error></errors>`.
- XML: `<services><service>…`, `<service_definition><service_code/><attributes/>`,
  `<service_requests><request>…` (lists, the POST answer and tokens alike); an empty element
  for a null, `true`/`false` for booleans. The API only emits XML, it never parses any.

What anyone may read (no `api_key`) is what a citizen would be content to see on a public map:
only the categories public by policy (`PETITION_OPEN311_PUBLIC_CATEGORIES`; never a report or a
formal petition, domain.NEVER_PUBLIC), the subject line and the notes with personal numbers,
e-mail addresses and the citizen's name masked (domain.redacted, as in events), coordinates on
the 0.01° grid (domain.coarse), no address and no agency. The full rows (every category, the
text as written, exact coordinates, the address, the agency) need an `api_key` with the scope
`open311:read_full` (open311_keys.py), as the `api_key` parameter or the `X-API-Key` header; a key
that is unknown, revoked or without that scope is refused (403), never served the public view.
Neither view ever tells that a request was linked to an earlier one of the same citizen: a linked
request is open, as the citizen's receipt says (domain.citizen_status).

Personal data never leaves here: `description` is the citizen's subject line, not the text;
no names or phones. `expected_datetime` is the deadline of the running SLA stage, and `calendar`
(our extension) says whether it rests on a provisional year (statutory holidays only, recomputed
once the State Council notice is loaded) or an official one.
"""
from __future__ import annotations

import functools
import hmac
import re
from dataclasses import dataclass
import xml.etree.ElementTree as ET  # only to write XML: this API never parses any
from datetime import datetime, timedelta
from urllib.parse import urlencode

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from sqlmodel import select

from govmedia_kit.db import as_utc, utcnow
from govmedia_kit.errors import AppError
from govmedia_kit.public import admit_public, caller_address, normalize_tracking_code
from govmedia_kit.runtime import Runtime, get_runtime

from . import open311_keys, usecases
from .domain import CATEGORIES, CATEGORY_ZH, NEVER_PUBLIC, citizen_status, coarse, local_iso, redacted
from .models import Petition, PetitionCreate, directory

router = APIRouter(prefix="/open311/v2", tags=["open311"])
MAX_SPAN = timedelta(days=90)
PAGE_SIZE = 50   # requests in a page unless `page_size` says otherwise
MAX_PAGE = 200   # the most a page (or a `service_request_id` list) holds
# Closed as the citizen sees it: a linked request is not (citizen_status: received).
CLOSED = ("answered", "closed", "declined")
_ID = re.compile(r"[0-9a-f]{24}")
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
    """The spec's error (`code` = the HTTP status, `description`), with our stable snake_case code
    beside them as the extension `error_code`."""

    def __init__(self, status: int, description: str, error_code: str = ""):
        self.status, self.description = status, description
        self.error_code = error_code or {400: "invalid_request", 403: "forbidden", 404: "not_found"}.get(status, "")


@dataclass
class Paged:
    """A page of requests and the cursor of the next (None: the last page)."""
    items: list
    next_cursor: str | None


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


def _errors(fmt: str, status: int, description: str, error_code: str = "") -> Response:
    return _render(fmt, status, "errors", "error",
                   [{"code": status, "description": description, "error_code": error_code}])


def _paged(request: Request, fmt: str, status: int, root: str, item: str | None, page: Paged) -> Response:
    response = _render(fmt, status, root, item, page.items)
    if page.next_cursor:
        # Everything but the api_key (which a client may have put in the query) and the cursor.
        query = [(k, v) for k, v in request.query_params.multi_items() if k not in ("cursor", "api_key")]
        query.append(("cursor", page.next_cursor))
        response.headers["X-Next-Cursor"] = page.next_cursor
        response.headers["Link"] = f'<{request.url.path}?{urlencode(query)}>; rel="next"'
    return response


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
                data = await handler(*args, **kwargs)
                if isinstance(data, Paged):
                    return _paged(kwargs["request"], fmt, status, root, item, data)
                return _render(fmt, status, root, item, data)
            except Open311Error as exc:
                return _errors(fmt, exc.status, exc.description, exc.error_code)
            except AppError as exc:
                code = exc.status if exc.status in (400, 403, 404, 429) else (400 if exc.status == 422 else exc.status)
                response = _errors(fmt, code, exc.message, exc.code)
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
    if not 2000 <= moment.year <= 2100:  # (and so no overflow when the 90-day span is added)
        raise Open311Error(400, f"{name} must lie between the years 2000 and 2100")
    return moment


def _float(form, name: str) -> float | None:
    raw = (form.get(name) or "").strip()
    if not raw:
        return None
    try:
        return float(raw)
    except ValueError:
        raise Open311Error(400, f"{name} is not a number") from None


def public_categories(spec: str) -> tuple[str, ...]:
    """`PETITION_OPEN311_PUBLIC_CATEGORIES`: the categories anyone may read on Open311. An unknown
    category, or one that may never be public (report, petition), stops the service at start-up."""
    chosen = [c.strip() for c in spec.split(",") if c.strip()]
    unknown = [c for c in chosen if c not in CATEGORIES]
    if unknown:
        raise ValueError(f"PETITION_OPEN311_PUBLIC_CATEGORIES: unknown categories {unknown}")
    never = [c for c in chosen if c in NEVER_PUBLIC]
    if never:
        raise ValueError(f"PETITION_OPEN311_PUBLIC_CATEGORIES: {never} may never be public on Open311")
    return tuple(c for c in CATEGORIES if c in chosen)


def _given_key(request: Request, form=None) -> str:
    """The client's key: Open311's `api_key` parameter (query or form) or the `X-API-Key` header."""
    value = request.headers.get("x-api-key") or request.query_params.get("api_key") or ""
    if not value and form is not None:
        value = form.get("api_key") or ""
    return str(value).strip()


async def _reader(request: Request, rt: Runtime) -> bool:
    """Whether the caller reads the full rows (a live key with `open311:read_full`), after its
    rate limit: per key for a keyed client, per client address for everyone else."""
    given = _given_key(request)
    if not given:
        rt.state["open311_read_limiter"].admit(caller_address(request))
        return False
    key = await open311_keys.authorize(rt, given)
    if key is None:
        rt.state["open311_read_limiter"].admit(caller_address(request))  # guessing keys costs quota
        raise Open311Error(403, "api_key missing or invalid", "invalid_api_key")
    rt.state["open311_key_limiter"].admit(f"key:{key.id}")
    if open311_keys.READ_FULL not in key.scopes.split():
        raise Open311Error(403, f"api_key lacks the scope {open311_keys.READ_FULL}", "api_key_scope_missing")
    return True


async def _may_write(rt: Runtime, given: str) -> bool:
    legacy = [k.strip() for k in rt.settings.open311_api_keys.get_secret_value().split(",") if k.strip()]
    if any(hmac.compare_digest(given, k) for k in legacy):
        return True
    key = await open311_keys.authorize(rt, given)
    return key is not None and open311_keys.WRITE in key.scopes.split()


@router.post("/requests.{fmt}", status_code=201)
@_open311("service_requests", "request", status=201)
async def post_request(request: Request, fmt: str):
    rt = get_runtime(request)
    admit_public(request, rt.state["intake_limiter"], write=True)
    form = await request.form()
    given = _given_key(request, form)
    if not given or not await _may_write(rt, given):
        raise Open311Error(403, "api_key missing or invalid", "invalid_api_key")
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
    # The same for a request linked to an earlier one of the citizen's: linking is not told.
    provisional = "（按法定节假日暂定，国务院节假日安排公布后自动调整）" if p.sla_calendar == "provisional" else ""
    return f"已登记，将于 {local_iso(p.due_at)} 前办理{provisional}"


def _names(rt: Runtime, p: Petition) -> tuple[str, ...]:
    """The citizen's name, to mask where they typed it into the subject or an answer quotes it."""
    if not p.contact_name_enc:
        return ()
    name = usecases.vault(rt).open("contact_name", p.contact_name_enc, p.id)
    return (name,) if name else ()


def _as_request(rt: Runtime, p: Petition, agency: str | None, full: bool) -> dict:
    """One request as Open311 shows it: the full row to a keyed reader, else the public one."""
    status = citizen_status(p.status)
    linked = p.status == "linked"
    running = p.sla_running or linked  # a linked request looks like any request just received
    notes = None
    if not linked:
        notes = p.answer if p.answer else (f"{p.decline_reason}；请向{p.redirect_to}反映" if p.decline_reason else None)
    title = p.title
    if not full:
        names = _names(rt, p)
        title, notes = redacted(title, names), (redacted(notes, names) if notes else None)
    return {
        "service_request_id": p.id, "status": "closed" if status in CLOSED else "open", "status_notes": notes,
        "service_name": CATEGORY_ZH[p.category], "service_code": p.category, "description": title,
        "agency_responsible": agency if full else None, "service_notice": None,
        "requested_datetime": local_iso(p.created_at), "updated_datetime": local_iso(p.updated_at),
        "expected_datetime": local_iso(p.due_at) if running else None,
        # Our extension: whether expected_datetime rests on a provisional calendar year.
        "calendar": p.sla_calendar if running else None,
        "address": p.location if full else None, "address_id": None, "zipcode": None,
        "lat": p.lat if full else coarse(p.lat), "long": p.lon if full else coarse(p.lon), "media_url": None,
    }


def _page_size(raw: str | None) -> int:
    if raw is None or raw == "":
        return PAGE_SIZE
    try:
        size = int(raw)
    except ValueError:
        raise Open311Error(400, "page_size is not a whole number", "invalid_page_size") from None
    if not 1 <= size <= MAX_PAGE:
        raise Open311Error(400, f"page_size must be between 1 and {MAX_PAGE}", "invalid_page_size")
    return size


def _query(full: bool):
    """One statement per page: the requests, and (full rows only) each one's agency by an outer
    join on the unit directory: no query per row."""
    if full:
        return select(Petition, directory.table.c.name).outerjoin(
            directory.table, directory.table.c.unit_id == Petition.unit_id)
    return select(Petition)


async def _rows(rt: Runtime, stmt, full: bool) -> list[tuple[Petition, str | None]]:
    async with rt.db.session() as s:
        result = (await s.execute(stmt)).all()
    return [(row[0], row[1] if full else None) for row in result]


async def fetch_page(rt: Runtime, stmt, size: int, full: bool) -> Paged:
    """A page of `stmt` (newest first): one query, then each row rendered in memory."""
    rows = await _rows(rt, stmt.order_by(Petition.id.desc()).limit(size + 1), full)
    nxt = rows[size - 1][0].id if len(rows) > size else None
    return Paged([_as_request(rt, p, agency, full) for p, agency in rows[:size]], nxt)


@router.get("/requests.{fmt}")
@_open311("service_requests", "request")
async def get_requests(request: Request, fmt: str):
    rt = get_runtime(request)
    full = await _reader(request, rt)
    public = rt.state["open311_public"]
    q = request.query_params
    size = _page_size(q.get("page_size"))
    cursor = q.get("cursor") or None
    if cursor is not None and not _ID.fullmatch(cursor):
        raise Open311Error(400, "cursor is not one this API gave", "invalid_cursor")
    stmt = _query(full)
    if not full:
        stmt = stmt.where(Petition.category.in_(public))
    ids = [i.strip() for i in (q.get("service_request_id") or "").split(",") if i.strip()]
    if ids:
        if len(ids) > MAX_PAGE:
            raise Open311Error(400, f"at most {MAX_PAGE} service_request_id at once", "too_many_ids")
        stmt = stmt.where(Petition.id.in_(ids))
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
        hidden = [c for c in codes if c not in public]
        if hidden and not full:
            raise Open311Error(403, f"service_code {','.join(hidden)} is not public: an api_key with the scope "
                                    f"{open311_keys.READ_FULL} is needed", "service_not_public")
        if codes:
            stmt = stmt.where(Petition.category.in_(codes))
        statuses = {v.strip() for v in (q.get("status") or "").split(",") if v.strip()}
        if statuses - {"open", "closed"}:
            raise Open311Error(400, "status must be open, closed or both")
        if statuses == {"open"}:
            stmt = stmt.where(Petition.status.not_in(CLOSED))
        elif statuses == {"closed"}:
            stmt = stmt.where(Petition.status.in_(CLOSED))
    if cursor:
        stmt = stmt.where(Petition.id < cursor)
    return await fetch_page(rt, stmt, size, full)


@router.get("/requests/{service_request_id}.{fmt}")
@_open311("service_requests", "request")
async def get_request(request: Request, service_request_id: str, fmt: str):
    rt = get_runtime(request)
    full = await _reader(request, rt)
    stmt = _query(full).where(Petition.id == service_request_id)
    rows = await _rows(rt, stmt, full)
    # A request of a category that is not public is not found, as one that does not exist.
    if not rows or (not full and rows[0][0].category not in rt.state["open311_public"]):
        raise Open311Error(404, f"service_request_id {service_request_id[:40]} not found")
    p, agency = rows[0]
    return [_as_request(rt, p, agency, full)]


@router.get("/tokens/{token}.{fmt}")
@_open311("service_requests", "request")
async def get_token(request: Request, token: str, fmt: str):
    rt = get_runtime(request)
    admit_public(request, rt.state["track_limiter"], write=False)
    code = normalize_tracking_code(token)
    async with rt.db.session() as s:
        p = (await s.exec(select(Petition).where(Petition.tracking_code == code))).first() if code else None
    if p is None:
        raise Open311Error(404, "token not found")
    return [{"service_request_id": p.id, "token": token}]
