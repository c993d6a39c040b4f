from govmedia_kit.db import run_migrations
from services.dispatch.models import Base

run_migrations(Base.metadata)
