"""The demo data set of DESIGN.md §5: one province, one unit, eight users."""
from __future__ import annotations

import logging

from sqlmodel import select

from govmedia_kit.errors import AppError
from govmedia_kit.runtime import Runtime

from .models import Region, Unit, User
from .tokens import hash_secret
from .usecases import _region_event, _unit_event, _user_event

log = logging.getLogger(__name__)

DEMO_PASSWORD = "demo-pass-2026"
DEMO_REGION = "示范省"
DEMO_UNIT = "省政府办公厅"
DEMO_USERS = [
    ("ops", "平台管理员", ["ops"]),
    ("regulator", "网管办", ["regulator"]),
    ("editor", "采编", ["editor"]),
    # The three review levels: section head → deputy in charge → principal / editor-in-chief.
    ("reviewer1", "科室负责人", ["section_head"]),
    ("reviewer2", "分管负责人", ["deputy"]),
    ("reviewer3", "主要负责人/总编辑", ["principal", "chief_editor"]),
    ("handler", "留言办理", ["handler"]),
    ("supervisor", "纪委督办", ["supervisor"]),
]


async def load_demo(rt: Runtime) -> bool:
    """Load the demo set into an empty database. Returns False when there was data already."""
    if rt.settings.production:
        raise AppError(409, "demo_refused_in_production", "生产环境不能加载演示数据")
    async with rt.unit_of_work() as s:
        if (await s.exec(select(User).limit(1))).first():
            return False
        region = Region.new(DEMO_REGION, "province")
        s.add(region)
        await s.flush()
        unit = Unit(name=DEMO_UNIT, region_id=region.id, kind="government", short_names=["示范省政府"])
        s.add(unit)
        await s.flush()
        await rt.outbox.emit(s, "govmedia.account.region.upserted", _region_event(region), region.id)
        await rt.outbox.emit(s, "govmedia.account.unit.upserted", _unit_event(unit, region.path), unit.id)
        password_hash = hash_secret(DEMO_PASSWORD)
        for username, display, roles in DEMO_USERS:
            user = User(username=username, display_name=display, unit_id=unit.id, roles=roles,
                        password_hash=password_hash)
            s.add(user)
            await s.flush()
            await rt.outbox.emit(s, "govmedia.account.user.upserted", _user_event(user), user.id)
    log.info("demo data loaded: %d users in %s / %s", len(DEMO_USERS), DEMO_REGION, DEMO_UNIT)
    return True
