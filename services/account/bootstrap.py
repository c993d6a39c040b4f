"""The first ops user of a production installation.

Production refuses the demo set, and every way of creating users needs a signed-in
`ops` (or regulator) user: somebody has to be first. `bootstrap_ops` creates the
province, the operations team's unit and one `ops` user in an empty user table; once
any user exists it changes nothing, so the Kubernetes Job that runs it may run again.
The password comes from a mounted Secret file, never from the command line or a log.
"""
from __future__ import annotations

import logging

from sqlmodel import select

from govmedia_kit.errors import AppError
from govmedia_kit.runtime import Runtime

from .models import Region, Unit, User
from .tokens import passwords
from .usecases import _region_event, _unit_event, _user_event

log = logging.getLogger(__name__)

MIN_PASSWORD = 12  # longer than a user's (10): this account can create every other


async def seed_unit(rt: Runtime, s, region_name: str, unit_name: str,
                    users: list[tuple[str, str, list[str]]], password_hash: str, short_names=()) -> Unit:
    """A province region, one unit in it and its users, with their events (one transaction)."""
    region = Region.new(region_name, "province")
    s.add(region)
    await s.flush()
    unit = Unit(name=unit_name, region_id=region.id, kind="government", short_names=list(short_names))
    s.add(unit)
    await s.flush()
    await rt.outbox.emit(s, "govmedia.account.region.upserted", _region_event(region), region.id)
    await rt.outbox.emit(s, "govmedia.account.unit.upserted", _unit_event(unit, region.path), unit.id)
    for username, display, roles in users:
        user = User(username=username, display_name=display, unit_id=unit.id, roles=roles,
                    password_hash=password_hash)
        s.add(user)
        await s.flush()
        await rt.outbox.emit(s, "govmedia.account.user.upserted", _user_event(user), user.id)
    return unit


async def bootstrap_ops(rt: Runtime, province: str, unit: str, username: str, password: str) -> bool:
    """Create the first ops user; False (and nothing changed) when there are users already."""
    province, unit, username = province.strip(), unit.strip(), username.strip()
    if not (province and unit and username):
        raise AppError(422, "bootstrap_incomplete", "需要省份名称、运营单位名称和用户名")
    if len(password) < MIN_PASSWORD:
        raise AppError(422, "password_too_short", f"首个运维账号的密码至少 {MIN_PASSWORD} 位")
    async with rt.unit_of_work() as s:
        if (await s.exec(select(User.id).limit(1))).first():
            return False
        await seed_unit(rt, s, province, unit, [(username, "平台运维", ["ops"])], passwords(rt).hash(password))
    log.info("first ops user created in %s / %s", province, unit)
    return True
