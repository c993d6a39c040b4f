"""The container's entry point: one service of the platform per container.

    entrypoint.py serve     [SERVICE]            run the service (REST, gRPC, consumers, workers)
    entrypoint.py migrate   [SERVICE]            bring its database to the newest Alembic revision, exit
    entrypoint.py downgrade SERVICE REVISION     step its database back to REVISION (a rollback), exit

SERVICE is one of account, content, review, dispatch, petition; when it is left out it
comes from GOVMEDIA_SERVICE (the image's build argument SERVICE). The service reads its
settings from the environment exactly as `python -m services.<name>` does on a machine
(README "Configuration"); `serve` replaces this process with that command, so the
service is PID 1 and gets SIGTERM from Kubernetes directly.

`serve` also migrates at start-up (the runtime always does); `migrate` exists so a
Kubernetes init container brings the schema up before a new version takes traffic.
"""
from __future__ import annotations

import importlib
import logging
import os
import sys

USAGE = "usage: entrypoint.py serve|migrate [SERVICE] | downgrade SERVICE REVISION"


def _service(args: list[str]) -> str:
    from govmedia_kit.config import SERVICES

    name = (args[0] if args else os.environ.get("GOVMEDIA_SERVICE", "")).strip()
    if name not in SERVICES:
        sys.exit(f"unknown service {name!r}: one of {', '.join(SERVICES)} (argument or GOVMEDIA_SERVICE)")
    return name


def _alembic(name: str, action: str, revision: str) -> None:
    from alembic import command

    from govmedia_kit.db import alembic_config
    from govmedia_kit.logs import setup_logging

    module = importlib.import_module(f"services.{name}.service")
    settings = module.load_settings()
    setup_logging(settings.log_level, name)
    spec = module.build_spec()
    url = settings.resolved_database_url()
    cfg = alembic_config(spec.migrations_dir, url)
    getattr(command, action)(cfg, revision)
    # Only the host and database: a URL may carry a password.
    where = url.rpartition("@")[2]
    logging.getLogger("govmedia.migrate").info("%s: %s to %s done (%s)", name, action, revision, where)


def main(argv: list[str]) -> None:
    command, args = (argv[0], argv[1:]) if argv else ("serve", [])
    if command == "serve":
        name = _service(args)
        os.execv(sys.executable, [sys.executable, "-m", f"services.{name}"])
    elif command == "migrate":
        _alembic(_service(args), "upgrade", "head")
    elif command == "downgrade" and len(args) == 2:
        _alembic(_service(args[:1]), "downgrade", args[1])
    else:
        sys.exit(USAGE)


if __name__ == "__main__":
    main(sys.argv[1:])
