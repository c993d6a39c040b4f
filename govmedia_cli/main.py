"""`govmedia`: the operator's command line.

  govmedia up       start nats-server (unless one answers at NATS_URL) and the five services
                    on the ports of DESIGN.md §5, SQLite under ./data, demo data on an empty
                    database; runs in the foreground, Ctrl-C or SIGTERM stops everything.
  govmedia demo     load the demo data set into the account database (refused in production).
  govmedia status   readiness of each service.
  govmedia reseal petition|content
                    move the sealed personal data of a service's database to its current
                    data key (PETITION_DATA_KEY / CONTENT_DATA_KEY), in batches; idempotent,
                    safe to interrupt and to run again, also while the service serves (in a
                    pod: `python -m govmedia_cli reseal petition`). `--check` only counts.
  govmedia nats-estate DIR
                    make the production NATS estate (operator, accounts, each service's user) in
                    DIR, once, and print which file goes into which Kubernetes Secret
                    (docs/runbook-nats.md); keys/operator.seed is kept offline.
"""
from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import httpx
import typer

from govmedia_kit.config import DEFAULT_PORTS, SERVICES

from .stack import Stack

app = typer.Typer(add_completion=False, help="Provincial government new-media platform (政务新媒体运营管理).")


@app.command()
def up(
    data_dir: Path = typer.Option(Path("data"), help="Where the SQLite files, NATS store and logs go."),
    nats_url: str = typer.Option(os.environ.get("NATS_URL", "nats://127.0.0.1:4222"),
                                 help="Where our nats-server listens (if the port is free); with --open-nats, use "
                                      "the server there if one answers."),
    demo: bool = typer.Option(True, help="Load the demo data set on an empty database."),
    secure_nats: bool = typer.Option(True, "--secure-nats/--open-nats",
                                     help="Our own nats-server in operator mode: each service its own NATS user, "
                                          "matrix clients theirs (README, NATS)."),
) -> None:
    """Run the whole platform on this machine, in the foreground."""
    stack = Stack(data_dir=data_dir.resolve(), nats_url=nats_url, secure_nats=secure_nats)
    stopping = False

    def _stop(signum, _frame):
        nonlocal stopping
        if not stopping:
            stopping = True
            raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        typer.echo("starting NATS and the five services…")
        stack.start(load_demo=demo)
        _print_where(stack)
        while True:
            for svc in stack.services.values():
                if svc.proc and svc.proc.poll() is not None:
                    typer.echo(f"{svc.name} exited with {svc.proc.returncode}; see {svc.log_path}", err=True)
                    raise SystemExit(1)
            time.sleep(1)
    except KeyboardInterrupt:
        typer.echo("\nstopping…")
    except RuntimeError as exc:
        typer.echo(f"start-up failed: {exc}", err=True)
        raise SystemExit(1)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stack.stop()
        typer.echo("stopped.")


def _print_where(stack: Stack) -> None:
    typer.echo("")
    typer.echo(f"  NATS      {stack.nats_url}" + ("  (started here)" if stack.nats else "  (already running)"))
    if stack.nats is not None and stack.nats.estate is not None:
        typer.echo(f"            WebSocket {stack.nats.websocket_url}; credentials in {stack.nats.estate.dir}"
                   " (admin.creds for the nats CLI)")
    for svc in stack.services.values():
        typer.echo(f"  {svc.name:<9} REST {svc.base_url}  (docs {svc.base_url}/docs)   gRPC {svc.grpc_target}")
    typer.echo(f"  logs      {stack.data_dir / 'logs'}")
    typer.echo("  demo users: ops regulator editor reviewer1 reviewer2 reviewer3 handler supervisor"
               " / password demo-pass-2026")
    typer.echo("  Ctrl-C stops everything.")


@app.command()
def demo(data_dir: Path = typer.Option(Path("data"), help="Where the account service keeps its SQLite file.")) -> None:
    """Load the demo data set into the account database (its events go out when the service runs)."""
    os.environ.setdefault("GOVMEDIA_DATA_DIR", str(data_dir))
    from govmedia_kit.errors import AppError
    from govmedia_kit.runtime import Runtime
    from services.account.demo import load_demo
    from services.account.service import build_spec, load_settings

    async def run() -> bool:
        spec, settings = build_spec(), load_settings()
        rt = Runtime(spec, settings)
        try:
            await rt.db.migrate(spec.migrations_dir)
            return await load_demo(rt)
        finally:
            await rt.db.dispose()

    try:
        loaded = asyncio.run(run())
    except AppError as exc:
        typer.echo(f"{exc.code}: {exc.message}", err=True)
        raise SystemExit(2)
    typer.echo("demo data loaded" if loaded else "the account database is not empty; nothing loaded")


@app.command()
def status(host: str = "127.0.0.1") -> None:
    """Readiness of each service on the default ports."""
    worst = 0
    for name in SERVICES:
        url = f"http://{host}:{DEFAULT_PORTS[name][0]}/readyz"
        try:
            r = httpx.get(url, timeout=2)
            checks = r.json().get("checks", {})
            state = "ready" if r.status_code == 200 else "not ready"
            detail = " ".join(f"{k}={'ok' if v else 'down'}" for k, v in checks.items())
        except httpx.HTTPError:
            state, detail = "down", ""
        worst = max(worst, 0 if state == "ready" else 1)
        typer.echo(f"{name:<9} {state:<10} {detail}")
    raise SystemExit(worst)


RESEALABLE = ("petition", "content")


def _sealed_data(service: str):
    """The settings, keyring and sealed table of a service, from its environment."""
    if service == "petition":
        from services.petition import crypto
        from services.petition.service import load_settings as petition_settings, vault_of
        # Values in the legacy format are what a re-seal exists for: it always opens them.
        settings = petition_settings(data_open_legacy=True)
        return settings, vault_of(settings).keyring, crypto.SEALED
    from services.content import clues
    from services.content.service import load_settings as content_settings
    settings = content_settings()
    return settings, clues.keyring_of(settings), clues.SEALED


@app.command()
def reseal(
    service: str = typer.Argument(..., help="petition or content"),
    batch_size: int = typer.Option(500, min=1, max=10000, help="Rows per transaction."),
    check: bool = typer.Option(False, "--check", help="Only count the rows not sealed with the current key "
                                                        "(exit 1 when there are any)."),
    data_dir: Path = typer.Option(Path("data"), help="GOVMEDIA_DATA_DIR when unset (SQLite files, development keys)."),
) -> None:
    """Move sealed personal data to the current data key; rows under retired keys or in the legacy format first
    open with the keys in <SERVICE>_DATA_KEY_PREVIOUS, then are sealed again bound to their row."""
    if service not in RESEALABLE:
        typer.echo(f"reseal: one of {', '.join(RESEALABLE)}", err=True)
        raise SystemExit(2)
    os.environ.setdefault("GOVMEDIA_DATA_DIR", str(data_dir))
    from govmedia_kit.db import Database
    from govmedia_kit.sealing import SealingError, count_stale, reseal as reseal_table

    async def run() -> int:
        settings, keyring, table = _sealed_data(service)
        db = Database(settings.resolved_database_url())
        try:
            if check:
                left = await count_stale(db.engine, table, keyring)
                typer.echo(f"{service}: current key {keyring.current_id}; rows not sealed with it: {left}")
                return 1 if left else 0
            report = await reseal_table(db.engine, table, keyring, batch_size,
                                        progress=lambda r: typer.echo(f"  … {r.resealed} rows resealed"))
            typer.echo(f"{service}: {report.line()}")
            left = await count_stale(db.engine, table, keyring)
            typer.echo(f"{service}: rows not sealed with the current key: {left}")
            return 1 if left else 0
        finally:
            await db.dispose()

    try:
        code = asyncio.run(run())
    except SealingError as exc:
        typer.echo(f"reseal {service}: {exc}", err=True)
        raise SystemExit(2)
    raise SystemExit(code)


def nats_estate_secrets(estate) -> dict[str, dict[str, Path | str]]:
    """Each Kubernetes Secret the manifests (deploy/k8s) mount, key → the estate's file (or a
    literal value): one Secret per service with its own user only, the servers' operator-mode
    part, the maintenance user. The operator's own seed is in none of them."""
    secrets: dict[str, dict[str, Path | str]] = {
        # Public JWTs only (operator, accounts): included by nats.conf (`include auth.conf`).
        "nats-auth": {"auth.conf": estate.dir / "server" / "auth.conf"},
        # The `nats` CLI of the nats-box Deployment (GOVMEDIA account, everything).
        "nats-admin": {"admin.creds": estate.creds("admin")},
    }
    for service in SERVICES:
        secrets[f"{service}-nats"] = {"nats.creds": estate.creds(service)}
    secrets["account-nats"].update({
        "system.creds": estate.creds("account-sys"),
        "operator-signing.seed": estate.operator_signing_seed,
        "clients-signing.seed": estate.clients_signing_seed,
        "clients-account": estate.public("CLIENTS"),
    })
    secrets["dispatch-nats"]["clients.creds"] = estate.creds("dispatch-clients")
    return secrets


@app.command("nats-estate")
def nats_estate(
    directory: Path = typer.Argument(..., help="Where the estate is made (kept as it is if it holds one)."),
    namespace: str = typer.Option("govmedia", help="The Kubernetes namespace in the printed commands."),
) -> None:
    """Make the production NATS estate in DIR (operator, SYS/GOVMEDIA/CLIENTS accounts, one user per service)
    and print the `kubectl create secret` commands that hand each part to its pods."""
    import shlex

    from govmedia_kit.nats_estate import Estate

    existed = (directory / "accounts.json").exists()
    estate = Estate.ensure(directory)
    server = estate.dir / "server"
    server.mkdir(exist_ok=True, mode=0o700)
    (server / "auth.conf").write_text(estate.server_auth())
    typer.echo(f"{'kept the' if existed else 'made a new'} estate in {estate.dir}: operator {estate.public('operator')}")
    for name, keys in nats_estate_secrets(estate).items():
        parts = [f"--from-literal={k}={v}" if isinstance(v, str) else f"--from-file={k}={v}" for k, v in keys.items()]
        typer.echo(f"kubectl -n {shlex.quote(namespace)} create secret generic {name} "
                   + " ".join(shlex.quote(p) for p in parts))
    typer.echo(f"keep offline: {estate.dir / 'keys' / 'operator.seed'} (the operator's own key: only a new operator "
               "signing key needs it; store it in the province's key vault and remove it from this machine)")


if __name__ == "__main__":
    app()
    sys.exit(0)
