"""Supervision (督办) and statistics.

- Supervisors (and ops) see overdue and at-risk cases of their region by unit, the
  supervision records the breaches opened, add notes and a deadline by which the unit must
  report (a timer tells everyone when it passes), or open a record themselves.
- Statistics by unit, category, region and period: received (linked duplicates not counted),
  closed, on-time rate, average handling time in working days, satisfaction; CSV as well.
"""
from __future__ import annotations

from datetime import date

from sqlalchemy import case, func
from sqlmodel import select

from govmedia_kit import workdays
from govmedia_kit.auth import Principal
from govmedia_kit.db import as_utc, utcnow
from govmedia_kit.errors import invalid, not_found
from govmedia_kit.exports import csv_text
from govmedia_kit.runtime import Runtime

from .domain import local_iso
from .models import Petition, Supervision, SupervisionIn, SupervisionNote, SupervisionPublic, Timer, TimelineEntry, directory
from .usecases import REGION_STAFF, _get_visible, reach_clause

SUPERVISORS = ("supervisor", "ops")
STATS_ROLES = ("supervisor", "ops", "handler", "principal", "regulator")


def _supervision_reach(who: Principal):
    scope = who.scope(*REGION_STAFF)
    if scope is None:
        return Supervision.unit_id == who.unit_id
    return None if scope == "" else Supervision.region_path.startswith(scope, autoescape=True)


async def overview(rt: Runtime, who: Principal) -> dict:
    """Overdue and at-risk open cases, counted by unit (with its region path and name)."""
    who.require(*SUPERVISORS)
    now = utcnow()
    unit = func.coalesce(Petition.unit_id, Petition.desk_unit_id)
    overdue = case((Petition.due_at <= now, 1), else_=0)
    at_risk = case(((Petition.warn_at <= now) & (Petition.due_at > now), 1), else_=0)
    stmt = (select(unit, func.max(func.coalesce(Petition.region_path, Petition.desk_region_path)),
                   func.sum(overdue), func.sum(at_risk), func.count())
            .where(Petition.sla_running.is_(True), Petition.sla_paused.is_(False)).group_by(unit))
    reach = reach_clause(who)
    if reach is not None:
        stmt = stmt.where(reach)
    async with rt.db.session() as s:
        rows = (await s.exec(stmt)).all()
        out = []
        for unit_id, path, n_over, n_risk, n_open in rows:
            out.append({"unit_id": unit_id, "unit_name": await directory.name(s, unit_id) if unit_id else None,
                        "region_path": path, "open": n_open, "overdue": int(n_over or 0),
                        "at_risk": int(n_risk or 0)})
    out.sort(key=lambda r: (-r["overdue"], -r["at_risk"], r["unit_id"] or ""))
    return {"at": local_iso(now), "units": out}


async def list_supervisions(rt: Runtime, who: Principal, status: str | None = None) -> list[SupervisionPublic]:
    who.require(*SUPERVISORS)
    stmt = select(Supervision).order_by(Supervision.opened_at.desc()).limit(500)
    reach = _supervision_reach(who)
    if reach is not None:
        stmt = stmt.where(reach)
    if status:
        stmt = stmt.where(Supervision.status == status)
    async with rt.db.session() as s:
        rows = (await s.exec(stmt)).all()
        return [await _public(s, r) for r in rows]


async def _public(s, sv: Supervision) -> SupervisionPublic:
    notes = (await s.exec(select(SupervisionNote).where(SupervisionNote.supervision_id == sv.id)
                          .order_by(SupervisionNote.at))).all()
    return SupervisionPublic(
        id=sv.id, petition_id=sv.petition_id, unit_id=sv.unit_id, reason=sv.reason, status=sv.status,
        opened_by=sv.opened_by, opened_at=local_iso(sv.opened_at), deadline=local_iso(sv.deadline),
        reminded_at=local_iso(sv.reminded_at), public_notice_at=local_iso(sv.public_notice_at),
        notes=[{"at": local_iso(n.at), "author": n.author, "note": n.note, "deadline": local_iso(n.deadline)}
               for n in notes])


async def supervise(rt: Runtime, who: Principal, petition_id: str, data: SupervisionIn) -> SupervisionPublic:
    """A supervisor's note (and deadline) on a case: into its open record, or a new one."""
    who.require(*SUPERVISORS)
    now = utcnow()
    deadline = workdays.end_of_day(data.deadline) if data.deadline else None
    if deadline is not None and deadline <= now:
        raise invalid("deadline_in_past", "督办期限须晚于今天", {"field": "deadline"})
    async with rt.unit_of_work() as s:
        p = await _get_visible(s, who, petition_id)
        sv = (await s.exec(select(Supervision).where(Supervision.petition_id == p.id, Supervision.status == "open")
                           .order_by(Supervision.opened_at.desc()))).first()
        if sv is None:
            sv = Supervision(petition_id=p.id, unit_id=p.unit_id or p.desk_unit_id,
                             region_path=p.region_path or p.desk_region_path, reason="manual", opened_by=who.subject,
                             opened_at=now)
            s.add(sv)
            await s.flush()
        s.add(SupervisionNote(supervision_id=sv.id, at=now, author=who.subject, note=data.note, deadline=deadline))
        if deadline is not None:
            sv.deadline = deadline
            s.add(Timer(petition_id=p.id, kind="supervision_due", stage=p.sla_stage, due_at=deadline))
            s.add(sv)
        s.add(TimelineEntry(petition_id=p.id, at=now, actor=who.subject, action="supervision_note",
                            note=data.note + (f"（限 {data.deadline.isoformat()} 前报告）" if data.deadline else ""),
                            public=False))
        result = await _public(s, sv)
    wake = rt.state.get("timer_wake")
    if wake is not None:
        wake.set()
    return result


async def get_supervision(rt: Runtime, who: Principal, supervision_id: str) -> SupervisionPublic:
    who.require(*SUPERVISORS)
    async with rt.db.session() as s:
        sv = await s.get(Supervision, supervision_id)
        if sv is None:
            raise not_found("supervision", supervision_id)
        await _get_visible(s, who, sv.petition_id)
        return await _public(s, sv)


# --- statistics -------------------------------------------------------------------------

GROUPS = ("unit", "category", "region", "month")
MAX_GROUPS = 2
STAT_FIELDS = ("group", "received", "closed", "answered", "on_time", "on_time_rate", "avg_handling_workdays",
               "rated", "satisfaction")


def parse_groups(values: list[str] | str | None) -> tuple[str, ...]:
    """`group_by` as given: repeated (`group_by=unit&group_by=month`), comma-separated
    (`unit,month`) or both; one or two dimensions. Unknown names, a repeated dimension, more
    than two, or unit with region (a unit lies in one region: the same rows twice over) are
    refused, each with its stable code."""
    raw = [values] if isinstance(values, str) else list(values or [])
    dims = tuple(part.strip() for value in raw for part in value.split(",") if part.strip()) or ("unit",)
    unknown = [d for d in dims if d not in GROUPS]
    if unknown:
        raise invalid("invalid_group_by", f"group_by 只能是 {'、'.join(GROUPS)}",
                      {"field": "group_by", "unknown": [u[:40] for u in unknown[:5]], "allowed": list(GROUPS)})
    if len(set(dims)) != len(dims):
        raise invalid("invalid_group_combination", "group_by 的维度不能重复",
                      {"field": "group_by", "group_by": list(dims), "reason": "repeated"})
    if len(dims) > MAX_GROUPS:
        raise invalid("invalid_group_combination", f"最多同时按 {MAX_GROUPS} 个维度分组",
                      {"field": "group_by", "group_by": list(dims), "reason": "too_many", "max": MAX_GROUPS})
    if {"unit", "region"} <= set(dims):
        raise invalid("invalid_group_combination", "单位已属于唯一地区，不能同时按单位和地区分组",
                      {"field": "group_by", "group_by": list(dims), "reason": "redundant"})
    return dims


async def stats(rt: Runtime, who: Principal, group_by: str | tuple[str, ...] | list[str] = "unit",
                since: date | None = None, until: date | None = None, category: str | None = None,
                unit_id: str | None = None, region: str | None = None) -> list[dict]:
    """Figures of the petitions received in [since, until] (local days), grouped by one or two
    dimensions; `unit_id` and `region` (a region path: its subtree) narrow what the caller reaches.
    Every row has `group` (the keys joined by "|"), `name` (the unit's, when grouped by unit) and
    one field per dimension."""
    who.require(*STATS_ROLES)
    dims = parse_groups(group_by)
    if since and until and until < since:
        raise invalid("invalid_period", "until 不能早于 since", {"field": "until"})
    stmt = select(Petition.unit_id, Petition.desk_unit_id, Petition.category, Petition.region_path,
                  Petition.desk_region_path, Petition.created_at, Petition.status, Petition.answered_at,
                  Petition.answered_on_time, Petition.handling_workdays, Petition.rating
                  ).where(Petition.status != "linked")
    reach = reach_clause(who) if who.has("handler", "principal", *REGION_STAFF) else None
    if who.has("regulator") and not who.has("handler", "principal", *REGION_STAFF):
        scope = who.scope("regulator")
        reach = None if scope == "" else (Petition.unit_id == who.unit_id if scope is None else
                                          Petition.region_path.startswith(scope, autoescape=True))
    if reach is not None:
        stmt = stmt.where(reach)
    if since:
        stmt = stmt.where(Petition.created_at >= workdays.start_of_day(since))
    if until:
        stmt = stmt.where(Petition.created_at < workdays.end_of_day(until))
    if category:
        stmt = stmt.where(Petition.category == category)
    if unit_id:
        stmt = stmt.where(func.coalesce(Petition.unit_id, Petition.desk_unit_id) == unit_id)
    if region:
        stmt = stmt.where(func.coalesce(Petition.region_path, Petition.desk_region_path)
                          .startswith(region, autoescape=True))
    groups: dict[tuple[str, ...], dict] = {}
    async with rt.db.session() as s:
        for r in (await s.exec(stmt)).all():
            key = tuple(_group_key(d, r) for d in dims)
            g = groups.setdefault(key, {"received": 0, "closed": 0, "answered": 0, "on_time": 0,
                                        "_wd": 0, "_wd_n": 0, "rated": 0, "_rating": 0})
            g["received"] += 1
            g["closed"] += r.status in ("closed", "declined")
            if r.answered_at is not None:
                g["answered"] += 1
                g["on_time"] += bool(r.answered_on_time)
            if r.handling_workdays is not None:
                g["_wd"] += r.handling_workdays
                g["_wd_n"] += 1
            if r.rating is not None:
                g["rated"] += 1
                g["_rating"] += r.rating
        names = {}
        if "unit" in dims:
            at = dims.index("unit")
            for unit in {key[at] for key in groups} - {"-"}:
                names[unit] = await directory.name(s, unit)
    out = []
    for key in sorted(groups):
        g = groups[key]
        row = {"group": "|".join(key), "name": names.get(key[dims.index("unit")]) if "unit" in dims else None}
        row.update(zip(dims, key))
        row.update({
            "received": g["received"], "closed": g["closed"], "answered": g["answered"], "on_time": g["on_time"],
            "on_time_rate": round(g["on_time"] / g["answered"], 4) if g["answered"] else None,
            "avg_handling_workdays": round(g["_wd"] / g["_wd_n"], 2) if g["_wd_n"] else None,
            "rated": g["rated"], "satisfaction": round(g["_rating"] / g["rated"], 2) if g["rated"] else None,
        })
        out.append(row)
    return out


def _group_key(group_by: str, r) -> str:
    if group_by == "unit":
        return r.unit_id or r.desk_unit_id or "-"
    if group_by == "category":
        return r.category
    if group_by == "region":
        path = r.region_path or r.desk_region_path or ""
        parts = [x for x in path.split("/") if x]
        return parts[-1] if parts else "-"
    return as_utc(r.created_at).astimezone(workdays.SHANGHAI).strftime("%Y-%m")


def stats_csv(rows: list[dict], dims: tuple[str, ...] = ("unit",)) -> str:
    """One line per group: `group,name`, then (with two dimensions) one column per dimension,
    then the measures. A one-dimension export keeps the columns it always had."""
    extra = list(dims) if len(dims) > 1 else []
    # Names that could start a formula are neutralised (govmedia_kit/exports.py); BOM: Excel opens it as UTF-8.
    return csv_text(["group", "name", *extra, *STAT_FIELDS[1:]],
                    ([r["group"], r["name"] or "", *(r[d] for d in extra),
                      *("" if r[f] is None else r[f] for f in STAT_FIELDS[1:])] for r in rows))
