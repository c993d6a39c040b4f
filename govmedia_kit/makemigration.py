"""Write a new Alembic revision for a service from its models:
`python -m govmedia_kit.makemigration <service> "<message>"` (against a scratch SQLite database)."""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from alembic import command

from .db import alembic_config


def main(service: str, message: str) -> None:
    migrations = Path("services") / service / "migrations"
    (migrations / "versions").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = alembic_config(migrations, f"sqlite+aiosqlite:///{tmp}/scratch.db")
        command.upgrade(cfg, "head")
        command.revision(cfg, message=message, autogenerate=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
