"""SLA policies per category, versioned: version 1 holds the defaults of the issue (domain.py);
ops adds a version to change a category's limits. A case keeps the version it was created
under (its `policy_id`), so a change never moves an existing deadline."""
from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import func
from sqlalchemy.exc import IntegrityError
from sqlmodel import select

from govmedia_kit.auth import Principal
from govmedia_kit.db import new_id, utcnow
from govmedia_kit.errors import conflict, invalid, not_found
from govmedia_kit.runtime import Runtime

from .domain import CATEGORIES, DEFAULT_POLICIES, policy_label
from .models import PolicyIn, PolicyPublic, SlaPolicy
from .sla import DEFAULT_WARN_SHARE, Period

log = logging.getLogger(__name__)
SYSTEM = "system"


def default_row_values(category: str, now: datetime, warn_share: float = DEFAULT_WARN_SHARE) -> dict:
    d = DEFAULT_POLICIES[category]
    return dict(
        id=new_id(), category=category, version=1, code=d.code,
        acceptance_days=d.acceptance.days if d.acceptance else None,
        acceptance_unit=d.acceptance.unit if d.acceptance else None,
        handling_days=d.handling.days, handling_unit=d.handling.unit, extension_max_days=d.extension_max.days,
        recheck_days=d.recheck.days, recheck_unit=d.recheck.unit, warn_share=warn_share,
        note="默认：广东 12345（2022）/ 信访工作条例（2022）", created_by=SYSTEM, created_at=now,
    )


async def seed(rt: Runtime) -> None:
    """Version 1 of every category that has none yet (a fresh database, a new category)."""
    async with rt.unit_of_work() as s:
        have = set((await s.exec(select(SlaPolicy.category).distinct())).all())
        for category in CATEGORIES:
            if category not in have:
                s.add(SlaPolicy(**default_row_values(category, utcnow(), rt.settings.sla_warn_share)))


async def current(s, category: str) -> SlaPolicy:
    row = (await s.exec(select(SlaPolicy).where(SlaPolicy.category == category)
                        .order_by(SlaPolicy.version.desc()).limit(1))).first()
    if row is None:
        raise not_found("sla_policy", category)
    return row


def period_of(policy: SlaPolicy, stage: str) -> Period:
    if stage == "acceptance":
        return Period(policy.acceptance_days, policy.acceptance_unit)
    if stage in ("recheck", "review"):
        return Period(policy.recheck_days, policy.recheck_unit)
    return Period(policy.handling_days, policy.handling_unit)


def first_stage(policy: SlaPolicy) -> str:
    return "acceptance" if policy.acceptance_days else "handling"


def label(policy: SlaPolicy, stage: str) -> str:
    return policy_label(policy.code, stage, period_of(policy, stage), staged=bool(policy.acceptance_days))


def public(p: SlaPolicy) -> PolicyPublic:
    from .domain import local_iso

    return PolicyPublic(**p.model_dump(exclude={"created_at"}), created_at=local_iso(p.created_at))


async def list_policies(rt: Runtime, who: Principal, category: str | None = None,
                        history: bool = False) -> list[SlaPolicy]:
    who.require("ops", "supervisor", "handler", "regulator")
    async with rt.db.session() as s:
        stmt = select(SlaPolicy).order_by(SlaPolicy.category, SlaPolicy.version)
        if category:
            stmt = stmt.where(SlaPolicy.category == category)
        rows = list((await s.exec(stmt)).all())
    if history:
        return rows
    latest: dict[str, SlaPolicy] = {}
    for row in rows:
        latest[row.category] = row
    return [latest[c] for c in CATEGORIES if c in latest]


async def new_version(rt: Runtime, who: Principal, category: str, data: PolicyIn) -> SlaPolicy:
    """Ops of the province: a new version of `category`'s limits for the cases to come."""
    who.require_province("ops")
    if category not in CATEGORIES:
        raise not_found("sla_policy", category)
    if (data.acceptance_days is None) != (data.acceptance_unit is None):
        raise invalid("acceptance_incomplete", "受理时限须同时给出天数和计算方式", {"field": "acceptance_days"})
    async with rt.unit_of_work() as s:
        prev = await current(s, category)
        version = (await s.scalar(select(func.max(SlaPolicy.version)).where(SlaPolicy.category == category))) + 1
        row = SlaPolicy(
            category=category, version=version, code=data.code or f"{prev.code.split('.v')[0]}.v{version}",
            acceptance_days=data.acceptance_days, acceptance_unit=data.acceptance_unit,
            handling_days=data.handling_days, handling_unit=data.handling_unit,
            extension_max_days=data.extension_max_days, recheck_days=data.recheck_days,
            recheck_unit=data.recheck_unit, warn_share=data.warn_share, note=data.note, created_by=who.subject,
            created_at=utcnow(),
        )
        s.add(row)
        try:
            await s.flush()
        except IntegrityError:
            raise conflict("policy_version_conflict", "时限规则刚被他人修改，请刷新后重试") from None
    log.info("SLA policy %s v%d by %s", category, version, who.subject)
    return row
