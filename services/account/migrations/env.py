from govmedia_kit.db import run_migrations
from services.account.models import Base
import services.account.signin_models  # noqa: F401  (its tables are on Base too)
import services.account.inspections_models  # noqa: F401
import services.account.activity_models  # noqa: F401
import services.account.notices_models  # noqa: F401

run_migrations(Base.metadata)
import services.account.calendar_models  # noqa: F401
