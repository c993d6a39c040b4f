from govmedia_kit.db import run_migrations
from services.content.models import Base

run_migrations(Base.metadata)
