"""The unified ledger (统一台账) as CSV: one row per account with its unit and region."""
from __future__ import annotations

import csv
import io

from sqlmodel import select

from govmedia_kit.runtime import Runtime

from .models import Account, Region, Unit

COLUMNS = ["account_id", "platform", "name", "handle", "status", "opened_on", "unit", "region",
           "principal", "deputy", "chief_editor", "delivery_mode"]


async def ledger_csv(rt: Runtime) -> str:
    async with rt.db.session() as s:
        rows = (await s.exec(
            select(Account, Unit, Region).join(Unit, Unit.id == Account.unit_id).join(Region, Region.id == Account.region_id)
            .order_by(Region.name, Unit.name, Account.platform)
        )).all()
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(COLUMNS)
    for account, unit, region in rows:
        r = account.responsible
        writer.writerow([account.id, account.platform, account.name, account.handle, account.status,
                         account.opened_on.isoformat(), unit.name, region.name, r.get("principal", ""),
                         r.get("deputy", ""), r.get("chief_editor", ""), account.delivery_mode])
    return out.getvalue()
