"""Dispatch rules that need no database: who an item targets, how it is rendered, how a
webhook is signed, and when a failed delivery is tried again."""
from __future__ import annotations

import hashlib
import hmac
import json
import random
from dataclasses import dataclass
from datetime import datetime

from govmedia_kit.db import iso

from .models import EVENT_TYPES, PUBLISH

SOURCE = "/govmedia/dispatch"


# --- targeting ---------------------------------------------------------------------

@dataclass(frozen=True)
class TargetRule:
    """The targeting rule, documented once here:

    - each kind given (regions, platforms, accounts) is a filter; within a kind the values
      are a union (two regions = either subtree), and kinds given together intersect
      (regions=[A] + platforms=[weibo] = the weibo accounts in A's subtree);
    - a region means its whole subtree (the region and every region below it);
    - `all` is the whole matrix; with other kinds given it adds nothing (they still filter);
    - nothing given and `all` false targets nobody (never the whole matrix by accident);
    - only active accounts with a reachable endpoint are targeted (closed, suspended and
      410-gone endpoints are left out).
    """

    all: bool
    regions: frozenset[str]
    platforms: frozenset[str]
    accounts: frozenset[str]

    @classmethod
    def of(cls, spec: dict) -> "TargetRule":
        return cls(bool(spec.get("all")), frozenset(spec.get("regions") or ()),
                   frozenset(spec.get("platforms") or ()), frozenset(spec.get("accounts") or ()))

    @property
    def empty(self) -> bool:
        return not (self.all or self.regions or self.platforms or self.accounts)


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


# --- rendering ---------------------------------------------------------------------

def render(kind: str, platform: str, payload: dict, *, item_id: str, version: int, account_id: str,
           reason: str = "") -> dict:
    """The `data` of a client event for one platform. Generic for now (title and body);
    per-platform formats (微博 length limits, 公众号 markup…) belong here."""
    data = {"item_id": item_id, "version": version, "account_id": account_id, "platform": platform}
    if kind == PUBLISH:
        data.update(title=payload.get("title", ""), body=payload.get("body", ""))
        for extra in ("subtitle", "cover_url", "category"):
            if payload.get(extra):
                data[extra] = payload[extra]
        if payload.get("source"):
            data["source"] = payload["source"]
    else:
        data["reason"] = reason
    return data


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
