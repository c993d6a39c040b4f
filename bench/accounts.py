"""`make bench-accounts`: sign-in and token verification under load, with a ledger of
20,000 accounts.

Starts the account service (its own nats-server, SQLite), loads 20,000 accounts straight
into its database, then measures: token verification in-process (what every service does
on every request), sign-in latency over HTTP (Argon2id on purpose), and listing the ledger
over HTTP (pages of 50, with and without filters). Prints, as its last line:
BENCH accounts token_verify_per_s=<float> signin_p99_ms=<float> list_accounts_p99_ms=<float> accounts=20000
"""
from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import httpx
from sqlalchemy import create_engine, insert, select

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "gen")]

from govmedia_cli.stack import Stack  # noqa: E402
from govmedia_kit.auth import TokenVerifier  # noqa: E402
from govmedia_kit.db import new_id, utcnow  # noqa: E402
from services.account.models import PLATFORMS, Account, Unit  # noqa: E402

RESPONSIBLE = {"principal": "甲", "deputy": "乙", "chief_editor": "丙"}


def p99(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=100)[98] if len(samples) >= 2 else samples[0]


def load_accounts(db_file: Path, n: int) -> None:
    """Bulk rows, as a province's ledger would hold them after years of registrations."""
    engine = create_engine(f"sqlite:///{db_file}")
    with engine.begin() as conn:
        unit = conn.execute(select(Unit.__table__)).first()
        now = utcnow()
        rows = [dict(id=new_id(), unit_id=unit.id, region_id=unit.region_id, platform=PLATFORMS[i % len(PLATFORMS)],
                     name=f"示范省账号{i}", handle=f"bench-{i}", opened_on=date(2025, 1, 2), responsible=RESPONSIBLE,
                     delivery_mode="stream", status="active", filing_due=date(2025, 1, 16), filed_on=date(2025, 1, 10),
                     created_at=now, updated_at=now) for i in range(n)]
        for start in range(0, n, 2000):
            conn.execute(insert(Account.__table__), rows[start:start + 2000])
    engine.dispose()


async def verify_rate(base: str, token: str, seconds: float = 3.0) -> float:
    async with httpx.AsyncClient() as http:
        jwks = (await http.get(f"{base}/.well-known/jwks.json")).json()
    verifier = TokenVerifier(None, "govmedia-account", jwks)
    await verifier.verify(token)
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for _ in range(200):
            await verifier.verify(token)
        done += 200
    return done / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--accounts", type=int, default=20_000)
    parser.add_argument("--signins", type=int, default=60)
    parser.add_argument("--lists", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        stack = Stack(data_dir=Path(tmp), free_ports=True)
        try:
            stack.start(only=("account",))
            base = stack.services["account"].base_url
            load_accounts(Path(tmp) / "account.db", args.accounts)
            with httpx.Client(base_url=base, timeout=30) as http:
                signin = []
                for _ in range(args.signins):
                    t = time.perf_counter()
                    r = http.post("/v1/auth/token", data={"username": "regulator", "password": "demo-pass-2026"})
                    signin.append((time.perf_counter() - t) * 1000)
                    r.raise_for_status()
                token = r.json()["access_token"]
                auth = {"Authorization": f"Bearer {token}"}
                total = 0
                cursor = None
                listing = []
                for i in range(args.lists):
                    params: dict = {"limit": 50}
                    if i % 3 == 1:
                        params["platform"] = random.choice(PLATFORMS)
                    if i % 3 == 2 and cursor:
                        params["cursor"] = cursor
                    t = time.perf_counter()
                    r = http.get("/v1/accounts", params=params, headers=auth)
                    listing.append((time.perf_counter() - t) * 1000)
                    r.raise_for_status()
                    cursor = r.json()["next_cursor"] or None
                    total += len(r.json()["items"])
                totals = http.get("/v1/ledger/totals", headers=auth).json()
            assert totals["accounts"] >= args.accounts, totals
            rate = asyncio.run(verify_rate(base, token))
            print(f"sign-in median {statistics.median(signin):.1f} ms; list median {statistics.median(listing):.1f} ms;"
                  f" {total} rows listed; ledger holds {totals['accounts']} accounts")
        finally:
            stack.stop()
    print(f"BENCH accounts token_verify_per_s={rate:.1f} signin_p99_ms={p99(signin):.1f} "
          f"list_accounts_p99_ms={p99(listing):.1f} accounts={args.accounts}")


if __name__ == "__main__":
    main()
