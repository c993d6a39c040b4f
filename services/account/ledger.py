"""The unified ledger (统一台账): every account with its unit and region, filtered by region
subtree, unit, platform and status; as CSV (UTF-8 with a BOM, so spreadsheet software reads
the Chinese right) or XLSX; and totals by region, platform and status."""
from __future__ import annotations

import io
from collections import Counter

from sqlmodel import select

from govmedia_kit.auth import Principal
from govmedia_kit.exports import csv_text, xlsx_append
from govmedia_kit.runtime import Runtime

from .accounts import READERS, check_filters
from .models import Account, Region, Unit
from .regions import reach_filter, region_subtree

COLUMNS = ["account_id", "platform", "name", "handle", "status", "opened_on", "filing_due", "filed_on", "unit",
           "region", "principal", "deputy", "chief_editor", "delivery_mode"]
HEADINGS = ["账号ID", "平台", "账号名称", "账号", "状态", "开设日期", "备案期限", "备案日期", "主办单位", "地区",
            "主要负责人", "分管负责人", "总编辑", "推送方式"]


async def ledger_rows(rt: Runtime, who: Principal, region_id: str | None = None, unit_id: str | None = None,
                      platform: str | None = None, status: str | None = None) -> list[tuple[Account, Unit, Region]]:
    """The ledger rows of the caller's region subtree (regulator, supervisor, ops), filtered."""
    who.require(*READERS)
    check_filters(platform, status)
    async with rt.db.session() as s:
        stmt = (select(Account, Unit, Region).join(Unit, Unit.id == Account.unit_id)
                .join(Region, Region.id == Account.region_id).order_by(Region.name, Unit.name, Account.platform))
        reach = reach_filter(who, Account.unit_id, *READERS)
        if reach is not None:
            stmt = stmt.where(reach)
        if region_id:
            stmt = stmt.where(Account.region_id.in_(await region_subtree(s, region_id)))
        if unit_id:
            stmt = stmt.where(Account.unit_id == unit_id)
        if platform:
            stmt = stmt.where(Account.platform == platform)
        if status:
            stmt = stmt.where(Account.status == status)
        return list((await s.exec(stmt)).all())


def _values(account: Account, unit: Unit, region: Region) -> list:
    r = account.responsible
    return [account.id, account.platform, account.name, account.handle or "", account.status,
            account.opened_on.isoformat() if account.opened_on else "",
            account.filing_due.isoformat() if account.filing_due else "",
            account.filed_on.isoformat() if account.filed_on else "", unit.name, region.name,
            r.get("principal", ""), r.get("deputy", ""), r.get("chief_editor", ""), account.delivery_mode]


def as_csv(rows) -> bytes:
    """Cells that could start a formula are neutralised (govmedia_kit/exports.py)."""
    return csv_text(COLUMNS, (_values(*row) for row in rows)).encode("utf-8")


def as_xlsx(rows) -> bytes:
    from openpyxl import Workbook  # imported here, not at start-up (~0.1 s of CPU), for a rare export

    book = Workbook()
    sheet = book.active
    sheet.title = "统一台账"
    xlsx_append(sheet, HEADINGS)
    for row in rows:
        xlsx_append(sheet, _values(*row))  # text as text, never a formula (govmedia_kit/exports.py)
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


def totals(rows) -> dict:
    """`by_region` counts by name, for people; `regions` by id, since two townships of two
    counties may well share a name (城关镇)."""
    by_region, by_platform, by_status, by_id = Counter(), Counter(), Counter(), Counter()
    regions = {}
    for account, _unit, region in rows:
        by_region[region.name] += 1
        by_id[region.id] += 1
        regions[region.id] = region
        by_platform[account.platform] += 1
        by_status[account.status] += 1
    return {"accounts": len(rows), "by_region": dict(by_region), "by_platform": dict(by_platform),
            "by_status": dict(by_status),
            "regions": [{"region_id": rid, "name": regions[rid].name, "level": regions[rid].level, "accounts": n}
                        for rid, n in sorted(by_id.items(), key=lambda kv: (regions[kv[0]].path, kv[0]))]}
