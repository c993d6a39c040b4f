"""The demo data set of DESIGN.md §5: one province, one unit, eight users."""
from __future__ import annotations

import logging

from sqlmodel import select

from govmedia_kit.errors import AppError
from govmedia_kit.runtime import Runtime

from .bootstrap import seed_unit
from .models import User
from .tokens import passwords

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
        await seed_unit(rt, s, DEMO_REGION, DEMO_UNIT, DEMO_USERS, passwords(rt).hash(DEMO_PASSWORD),
                        short_names=["示范省政府"])
    log.info("demo data loaded: %d users in %s / %s", len(DEMO_USERS), DEMO_REGION, DEMO_UNIT)
    return True
