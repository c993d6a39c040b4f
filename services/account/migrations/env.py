from govmedia_kit.db import run_migrations
from services.account.models import Base
import services.account.signin_models  # noqa: F401  (its tables are on Base too)

run_migrations(Base.metadata)
