from govmedia_kit.db import run_migrations
from services.review.models import Base

run_migrations(Base.metadata)
