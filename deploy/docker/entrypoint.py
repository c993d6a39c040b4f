"""The container's entry point: one service of the platform per container.

    entrypoint.py serve     [SERVICE]            run the service (REST, gRPC, consumers, workers)
    entrypoint.py migrate   [SERVICE]            bring its database to the newest Alembic revision, exit
    entrypoint.py downgrade SERVICE REVISION     step its database back to REVISION (a rollback), exit
    entrypoint.py bootstrap-ops                  create the first ops user of an empty account database, exit

`bootstrap-ops` reads ACCOUNT_BOOTSTRAP_PROVINCE, ACCOUNT_BOOTSTRAP_UNIT and
ACCOUNT_BOOTSTRAP_USERNAME, and the password from the file named by
ACCOUNT_BOOTSTRAP_PASSWORD_FILE (a mounted Secret); it does nothing once any user exists.

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

USAGE = "usage: entrypoint.py serve|migrate [SERVICE] | downgrade SERVICE REVISION | bootstrap-ops"


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


def _bootstrap_ops() -> None:
    import asyncio
    from pathlib import Path

    from govmedia_kit.errors import AppError
    from govmedia_kit.logs import setup_logging
    from govmedia_kit.runtime import Runtime
    from services.account.bootstrap import bootstrap_ops
    from services.account.service import build_spec, load_settings

    env = {name: os.environ.get(f"ACCOUNT_BOOTSTRAP_{name}", "") for name in
           ("PROVINCE", "UNIT", "USERNAME", "PASSWORD_FILE")}
    if not env["PASSWORD_FILE"]:
        sys.exit("bootstrap-ops: ACCOUNT_BOOTSTRAP_PASSWORD_FILE must name the file holding the password")
    password = Path(env["PASSWORD_FILE"]).read_text(encoding="utf-8").strip()
    settings = load_settings()
    setup_logging(settings.log_level, "account")

    async def run() -> bool:
        spec = build_spec()
        rt = Runtime(spec, settings)
        try:
            await rt.db.migrate(spec.migrations_dir)
            # Its events wait in the outbox; the running account service relays them.
            return await bootstrap_ops(rt, env["PROVINCE"], env["UNIT"], env["USERNAME"], password)
        finally:
            await rt.db.dispose()

    try:
        created = asyncio.run(run())
    except AppError as exc:
        sys.exit(f"bootstrap-ops: {exc.code}: {exc.message}")
    print("first ops user created" if created else "users exist already; nothing changed")


def main(argv: list[str]) -> None:
    command, args = (argv[0], argv[1:]) if argv else ("serve", [])
    if command == "serve":
        name = _service(args)
        os.execv(sys.executable, [sys.executable, "-m", f"services.{name}"])
    elif command == "migrate":
        _alembic(_service(args), "upgrade", "head")
    elif command == "bootstrap-ops" and not args:
        _bootstrap_ops()
    elif command == "downgrade" and len(args) == 2:
        _alembic(_service(args[:1]), "downgrade", args[1])
    else:
        sys.exit(USAGE)


if __name__ == "__main__":
    main(sys.argv[1:])
