from govmedia_kit.db import run_migrations
from services.content import clues_models  # noqa: F401 (its tables)
from services.content.models import Base

run_migrations(Base.metadata)
