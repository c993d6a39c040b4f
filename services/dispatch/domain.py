"""Dispatch rules that need no database: who an item targets (and who is left out, and
why), how it is rendered for each platform, how a webhook is signed, when a failed
delivery is tried again, and when an endpoint is given a rest (the circuit breaker and
the per-endpoint limit). Everything here is pure: unit-tested without a service."""
from __future__ import annotations

import hashlib
import hmac
import json
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Iterable
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from govmedia_kit.db import iso

from .models import EVENT_TYPES, PUBLISH

SOURCE = "/govmedia/dispatch"
SHANGHAI = ZoneInfo("Asia/Shanghai")


# --- targeting ---------------------------------------------------------------------

@dataclass(frozen=True)
class TargetRule:
    """The targeting rule, documented once here:

    - each kind given (regions, platforms, accounts, unit_kinds) is a filter; within a kind
      the values are a union (two regions = either subtree; two unit kinds = either kind),
      and kinds given together intersect (regions=[A] + platforms=[weibo] +
      unit_kinds=[department] = the weibo accounts of departments in A's subtree);
    - a region means its whole subtree (the region and every region below it);
    - a unit kind is the kind of the account's unit (government | department | institution |
      party | other);
    - `all` is the whole matrix; with other kinds given it adds nothing (they still filter);
    - nothing given and `all` false targets nobody (never the whole matrix by accident);
    - of the accounts selected, only active ones with a reachable endpoint get the item; the
      others are left out and counted per reason in the publication (`excluded`): the
      account's status (closed, suspended, deregistered…), `endpoint_gone` (the webhook
      answered 410), `unknown_account` (an account named in `accounts` dispatch has never
      heard of).
    """

    all: bool
    regions: frozenset[str]
    platforms: frozenset[str]
    accounts: frozenset[str]
    unit_kinds: frozenset[str] = frozenset()

    @classmethod
    def of(cls, spec: dict) -> "TargetRule":
        return cls(bool(spec.get("all")), frozenset(spec.get("regions") or ()),
                   frozenset(spec.get("platforms") or ()), frozenset(spec.get("accounts") or ()),
                   frozenset(spec.get("unit_kinds") or ()))

    @property
    def empty(self) -> bool:
        return not (self.all or self.regions or self.platforms or self.accounts or self.unit_kinds)


ENDPOINT_GONE = "endpoint_gone"
UNKNOWN_ACCOUNT = "unknown_account"


@dataclass(frozen=True)
class Candidate:
    """An account the rule selected, as the partition needs it."""

    account_id: str
    mode: str
    platform: str
    status: str
    endpoint_active: bool


def partition_targets(candidates: Iterable[Candidate], named: Iterable[str] = (),
                      known: Iterable[str] = ()) -> tuple[list[Candidate], dict[str, int]]:
    """The candidates that get the item, and how many were left out per reason.
    `named` are the accounts the rule names; those not `known` to dispatch at all count
    as `unknown_account`."""
    included: list[Candidate] = []
    excluded: Counter[str] = Counter()
    for c in candidates:
        if c.status != "active":
            excluded[c.status or "unknown_status"] += 1
        elif not c.endpoint_active:
            excluded[ENDPOINT_GONE] += 1
        else:
            included.append(c)
    unknown = set(named) - set(known)
    if unknown:
        excluded[UNKNOWN_ACCOUNT] += len(unknown)
    return included, dict(sorted(excluded.items()))


def region_subtree(roots: frozenset[str], parent_of: dict[str, str | None]) -> set[str]:
    """Every region at or below one of `roots` (parent links of the whole province)."""
    children: dict[str, list[str]] = {}
    for rid, parent in parent_of.items():
        if parent:
            children.setdefault(parent, []).append(rid)
    found, todo = set(), list(roots)
    while todo:
        rid = todo.pop()
        if rid in found:
            continue
        found.add(rid)
        todo.extend(children.get(rid, ()))
    return found


def parse_publish_at(value: str) -> datetime | None:
    """The embargo of a snapshot: ISO 8601 (UTC when no offset is given); empty = at once.
    Anything else is refused (ValueError): an embargo is never guessed, so a garbled one is
    never published early."""
    if not value or not value.strip():
        return None
    at = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    return at.replace(tzinfo=timezone.utc) if at.tzinfo is None else at.astimezone(timezone.utc)


# --- rendering ---------------------------------------------------------------------

class RenderError(ValueError):
    """The item cannot take this platform's form (e.g. WeChat without any image). That
    target fails with the reason; the rest of the publication goes on."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason

    @property
    def error(self) -> str:
        return f"render: {self.reason}"


# Characters (Unicode code points: one Chinese character is one), documented in the README.
WEIBO_TEXT_MAX = 2000
WEIBO_SUMMARY_MAX = 140
WEIBO_IMAGES_MAX = 9
WECHAT_TITLE_MAX = 64
WECHAT_DIGEST_MAX = 120
DOUYIN_TITLE_MAX = 55
DOUYIN_DESCRIPTION_MAX = 1000
APP_TITLE_MAX = 30
APP_SUMMARY_MAX = 60
FORMATS = {"weibo": "weibo", "wechat": "wechat", "douyin": "douyin", "app": "app"}  # others: generic


def shorten(text: str, limit: int) -> str:
    """At most `limit` characters; a cut text ends with "…" (counted in the limit)."""
    text = text or ""
    return text if len(text) <= limit else text[:limit - 1].rstrip() + "…"


def plain(text: str) -> str:
    """Whitespace folded to single spaces: what a summary is cut from."""
    return re.sub(r"\s+", " ", text or "").strip()


def _summary(payload: dict, limit: int) -> str:
    return shorten(plain(payload.get("subtitle") or payload.get("body", "")), limit)


def _images(payload: dict) -> list[dict]:
    return [a for a in payload.get("attachments") or () if a.get("kind") == "image"]


def _videos(payload: dict) -> list[dict]:
    return [a for a in payload.get("attachments") or () if a.get("kind") == "video"]


def _common(payload: dict) -> dict:
    """What every publish form carries besides its own fields: attribution is never dropped."""
    data = {}
    for extra in ("category", "link", "publish_at"):
        if payload.get(extra):
            data[extra] = payload[extra]
    if payload.get("source"):
        data["source"] = payload["source"]
    return data


def render_weibo(payload: dict) -> dict:
    """Text ≤ 2000 characters. A longer body becomes headline + summary (≤ 140) + a link to
    the full item; up to 9 images and the first video ride along."""
    title, body = payload.get("title", ""), payload.get("body", "")
    data = {"format": "weibo", "title": title, "truncated": False}
    if len(body) <= WEIBO_TEXT_MAX:
        data["body"] = body
    else:
        summary = _summary(payload, WEIBO_SUMMARY_MAX)
        link = payload.get("link", "")
        text = f"【{title}】{summary} 全文：{link}"
        if len(text) > WEIBO_TEXT_MAX:  # a title of absurd length: the headline gives way
            room = WEIBO_TEXT_MAX - len(f"【】{summary} 全文：{link}")
            text = f"【{shorten(title, max(room, 1))}】{summary} 全文：{link}"
        data.update(body=text, summary=summary, truncated=True)
    images = [a["url"] for a in _images(payload)][:WEIBO_IMAGES_MAX]
    if images:
        data["images"] = images
    videos = _videos(payload)
    if videos:
        data["video"] = videos[0]
    return {**data, **_common(payload)}


def render_wechat(payload: dict) -> dict:
    """An article: title ≤ 64, digest ≤ 120 (the subtitle, else the start of the body), the
    full body, and a cover image, which is required: the cover_url, else the first image
    attachment; neither is a render failure."""
    cover = payload.get("cover_url") or next((a["url"] for a in _images(payload)), "")
    if not cover:
        raise RenderError("wechat needs a cover image (cover_url or an image attachment)")
    data = {"format": "wechat", "title": shorten(payload.get("title", ""), WECHAT_TITLE_MAX),
            "digest": _summary(payload, WECHAT_DIGEST_MAX), "body": payload.get("body", ""), "cover_url": cover}
    if payload.get("subtitle"):
        data["subtitle"] = payload["subtitle"]
    images = [a["url"] for a in _images(payload)]
    if images:
        data["images"] = images
    if payload.get("source") and payload["source"].get("url"):
        data["content_source_url"] = payload["source"]["url"]
    return {**data, **_common(payload)}


def render_douyin(payload: dict) -> dict:
    """A video post: the first video attachment is required (without one the target fails
    with the reason); title ≤ 55, description ≤ 1000 (the subtitle, else the body)."""
    videos = _videos(payload)
    if not videos:
        raise RenderError("douyin needs a video attachment")
    data = {"format": "douyin", "title": shorten(payload.get("title", ""), DOUYIN_TITLE_MAX),
            "body": shorten(plain(payload.get("subtitle") or payload.get("body", "")), DOUYIN_DESCRIPTION_MAX),
            "video": videos[0]}
    cover = payload.get("cover_url") or next((a["url"] for a in _images(payload)), "")
    if cover:
        data["cover_url"] = cover
    return {**data, **_common(payload)}


def render_app(payload: dict) -> dict:
    """A push notification (title ≤ 30, summary ≤ 60) plus the full item for the app to show."""
    data = _generic_fields(payload)
    data.update(format="app", notification={"title": shorten(payload.get("title", ""), APP_TITLE_MAX),
                                            "summary": _summary(payload, APP_SUMMARY_MAX)})
    return {**data, **_common(payload)}


def _generic_fields(payload: dict) -> dict:
    data = {"format": "generic", "title": payload.get("title", ""), "body": payload.get("body", "")}
    for extra in ("subtitle", "cover_url"):
        if payload.get(extra):
            data[extra] = payload[extra]
    if payload.get("attachments"):
        data["attachments"] = list(payload["attachments"])
    return data


def render_generic(payload: dict) -> dict:
    """Every other platform (kuaishou, toutiao, bilibili, web, other): the item as written."""
    return {**_generic_fields(payload), **_common(payload)}


RENDERERS = {"weibo": render_weibo, "wechat": render_wechat, "douyin": render_douyin, "app": render_app}


def render_publish(platform: str, payload: dict) -> dict:
    """The platform's form of an item (without the delivery's identifiers); RenderError
    when the item cannot take that form."""
    return RENDERERS.get(platform, render_generic)(payload)


def render(kind: str, platform: str, payload: dict, *, item_id: str, version: int, account_id: str,
           reason: str = "", rendered: dict | None = None) -> dict:
    """The `data` of a client event for one account: identifiers, then the platform's form
    (`rendered`, if already computed for the platform) or, for a kill, the reason."""
    data = {"item_id": item_id, "version": version, "account_id": account_id, "platform": platform}
    if kind == PUBLISH:
        data.update(rendered if rendered is not None else render_publish(platform, payload))
    else:
        data["reason"] = reason
    return data


def render_failures(platforms: Iterable[str], payload: dict) -> dict[str, str]:
    """Platform → the `render: …` error, for the platforms the item cannot take."""
    failures = {}
    for platform in sorted(set(platforms)):
        try:
            render_publish(platform, payload)
        except RenderError as exc:
            failures[platform] = exc.error
    return failures


def cloud_event(delivery_id: str, kind: str, item_id: str, created_at: datetime, data: dict) -> dict:
    """A CloudEvents 1.0 structured event; the id is the delivery's, stable across retries."""
    return {
        "specversion": "1.0",
        "id": delivery_id,
        "type": EVENT_TYPES[kind],
        "source": SOURCE,
        "subject": item_id,
        "time": iso(created_at),
        "datacontenttype": "application/json",
        "data": data,
    }


def encode(event: dict) -> bytes:
    return json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode()


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """X-Signature-256 of DESIGN.md §6: HMAC-SHA256(secret, timestamp + "." + raw body)."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


# --- retries -----------------------------------------------------------------------

def backoff(attempts: int, base: float, cap: float) -> float:
    """Seconds before try `attempts + 1`: exponential, capped, with jitter (half to full)
    so a thousand clients that failed together do not come back together."""
    delay = min(cap, base * 2 ** max(attempts - 1, 0))
    return delay * random.uniform(0.5, 1.0)


# --- endpoints: circuit breaker and per-endpoint concurrency ----------------------------

def endpoint_key(url: str | None) -> str:
    """What a breaker and a concurrency limit are kept per: the webhook URL's host:port
    (the default port of its scheme when none is written)."""
    if not url:
        return ""
    try:
        parts = urlsplit(url.strip())
        host = (parts.hostname or "").lower()
        port = parts.port or {"https": 443, "http": 80}.get(parts.scheme.lower(), 0)
    except ValueError:
        return url.strip()[:255]
    return f"{host}:{port}"[:255] if host else url.strip()[:255]


def is_endpoint_failure(status: int | None) -> bool:
    """What counts against an endpoint's breaker: no answer (timeout, connection error) or a 5xx.
    Any other answer shows the endpoint is alive."""
    return status is None or status >= 500


@dataclass
class Breaker:
    """One endpoint's circuit breaker: closed → (N consecutive failures) open for the
    cool-down → half-open (one try through) → closed on success, open again on failure."""

    failures: int = 0
    open_until: datetime | None = None
    trial: bool = False  # half-open: the one try is in flight

    def state(self, now: datetime) -> str:
        if self.open_until is None:
            return "closed"
        return "open" if now < self.open_until else "half_open"


@dataclass
class EndpointGate:
    """Who may send to which endpoint now: at most `limit` requests in flight per endpoint,
    nothing while its breaker is open, one trial when half-open. Kept per process, in memory
    (a restarted process starts with every breaker closed)."""

    limit: int = 8
    threshold: int = 5
    cooldown_s: float = 30.0
    in_flight: Counter = field(default_factory=Counter)
    breakers: dict[str, Breaker] = field(default_factory=dict)

    def free(self, key: str, now: datetime) -> int:
        """How many more sends the endpoint takes now."""
        room = max(self.limit - self.in_flight[key], 0)
        breaker = self.breakers.get(key)
        if breaker is None:
            return room
        state = breaker.state(now)
        if state == "open":
            return 0
        if state == "half_open":
            return 0 if breaker.trial else min(room, 1)
        return room

    def blocked(self, now: datetime, keys: Iterable[str] | None = None) -> set[str]:
        """Endpoints that take nothing now (full, open, or a half-open trial in flight)."""
        keys = set(self.in_flight) | set(self.breakers) if keys is None else set(keys)
        return {k for k in keys if self.free(k, now) <= 0}

    def started(self, key: str, now: datetime) -> None:
        self.in_flight[key] += 1
        breaker = self.breakers.get(key)
        if breaker is not None and breaker.state(now) == "half_open":
            breaker.trial = True

    def finished(self, key: str, failed: bool, now: datetime) -> datetime | None:
        """Record one send's end; answers the time the breaker stays open until when this
        failure opened (or re-opened) it."""
        self.in_flight[key] -= 1
        if self.in_flight[key] <= 0:
            del self.in_flight[key]
        breaker = self.breakers.setdefault(key, Breaker())
        if not failed:
            self.breakers.pop(key, None)  # the endpoint answers: closed, count reset
            return None
        state = breaker.state(now)
        breaker.failures += 1
        if state == "half_open" or (state == "closed" and breaker.failures >= self.threshold):
            breaker.open_until = now + timedelta(seconds=self.cooldown_s)
            breaker.trial = False
            return breaker.open_until
        return None

    def open_keys(self, now: datetime) -> dict[str, datetime]:
        return {k: b.open_until for k, b in self.breakers.items() if b.state(now) == "open"}


# --- client metrics ---------------------------------------------------------------------

METRIC_FIELDS = ("reads", "likes", "shares", "comments")


def shanghai_day(at: datetime) -> str:
    """The calendar day (Asia/Shanghai) metrics are counted in."""
    if at.tzinfo is None:
        at = at.replace(tzinfo=timezone.utc)
    return at.astimezone(SHANGHAI).date().isoformat()


def merge_metrics(entries: Iterable[dict]) -> dict[tuple[str, str], dict[str, int]]:
    """Entries of one report summed per (item, day): a client may name an item twice."""
    merged: dict[tuple[str, str], dict[str, int]] = {}
    for e in entries:
        into = merged.setdefault((e["item_id"], e["day"]), dict.fromkeys(METRIC_FIELDS, 0))
        for f in METRIC_FIELDS:
            into[f] += int(e.get(f) or 0)
    return merged
