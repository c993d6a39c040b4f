"""`make bench-petition`: the petition service's SLA machinery at 1,000,000 open cases.

1. Deadlines: `--cases` open cases (a mix of categories, received over the past 40 days on the
   official calendar) get their SLA deadline and warning from services/petition/sla.py;
   deadlines_per_s is that arithmetic's rate (Civil Code counting, working days).
2. The cases and their stored timers (warning + breach per case; those already past are
   marked fired, as a running service would have) are bulk-loaded into the service's own
   schema (SQLite file, migrations applied).
3. Timer firing: the service's timer loop (services/petition/timers.py, the code the service
   runs) while `--timers` breach timers of open cases fall due over `--spread` seconds;
   timer_fire_p99_ms is the p99 of (instant the firing transaction committed − due instant),
   measured per timer. Each firing opens a supervision record, schedules the reminder and
   writes its event to the outbox, as in the service.
4. list_overdue_p99_ms: a province supervisor's `GET /v1/petitions?overdue=true` use case,
   first page and next pages (cursor), `--lists` times.
5. rss_mb: resident memory of this process at the end (VmRSS).

Prints, as its last line:
BENCH petition open_cases=<n> timer_fire_p99_ms=<float> deadlines_per_s=<float> rss_mb=<float> list_overdue_p99_ms=<float>
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "gen")]

from govmedia_kit import workdays  # noqa: E402
from govmedia_kit.auth import Principal  # noqa: E402
from govmedia_kit.runtime import Runtime  # noqa: E402
from services.petition import policies, sla, timers, usecases  # noqa: E402
from services.petition.service import build_spec, load_settings  # noqa: E402

MIX = [("consultation", 2, sla.WORKDAYS), ("help", 10, sla.WORKDAYS), ("suggestion", 10, sla.WORKDAYS),
       ("complaint", 15, sla.WORKDAYS), ("report", 15, sla.WORKDAYS), ("petition", 15, sla.CALENDAR_DAYS)]
LABEL = {"consultation": "gd12345.consultation.2wd", "help": "gd12345.help.10wd", "suggestion": "gd12345.suggestion.10wd",
         "complaint": "gd12345.complaint.15wd", "report": "gd12345.report.15wd",
         "petition": "xinfang2022.acceptance.15d"}
ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def db_time(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def p99(values: list[float]) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(0.99 * (len(values) - 1))))] if values else float("nan")


def load(db_path: Path, n: int, policy_ids: dict[str, str], now: datetime) -> tuple[float, list[str]]:
    """Compute and bulk-insert n open cases with their timers; answers deadlines/s and some open ids."""
    cal = workdays.default_calendar()
    rng = random.Random(6)
    con = sqlite3.connect(db_path)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=OFF")
    compute_s = 0.0
    open_ids: list[str] = []
    batch_p, batch_t = [], []
    base_ns = time.time_ns() - n * 1000
    # A deadline depends only on the day and the period: received times are spread over the
    # day, but the arithmetic is the same per (day, period) — still computed per case here.
    for i in range(n):
        category, days, unit = MIX[i % len(MIX)]
        received = now - timedelta(seconds=rng.uniform(0, 40 * 86400))
        t0 = time.perf_counter()
        d = sla.compute(cal, received, sla.Period(days, unit))
        compute_s += time.perf_counter() - t0
        pid = f"{base_ns + i * 1000:016x}{i:08x}"
        code = "".join(rng.choice(ALPHABET) for _ in range(12))
        stage = "acceptance" if category == "petition" else "handling"
        r = db_time(received)
        batch_p.append((pid, code, category, "web", f"基准留言{i}", "内容", "received", policy_ids[category],
                        LABEL[category], stage, unit, days, r, d.last_day.isoformat(), db_time(d.due_at),
                        db_time(d.warn_at), r, r, f"基准留言{i}"))
        for kind, due in (("warning", d.warn_at), ("breach", d.due_at)):
            batch_t.append((f"{pid}{kind[0]}", pid, kind, stage, db_time(due), db_time(due) if due <= now else None))
        if d.due_at > now + timedelta(minutes=5) and len(open_ids) < 200_000:
            open_ids.append(pid)
        if len(batch_p) >= 20_000:
            _flush(con, batch_p, batch_t)
    _flush(con, batch_p, batch_t)
    con.execute("ANALYZE")
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # as a service that has run for a while
    con.close()
    return n / compute_s, open_ids


def _flush(con, batch_p, batch_t) -> None:
    con.executemany(
        "INSERT INTO petitions (id, tracking_code, category, channel, title, content, status, policy_id, sla_policy,"
        " sla_stage, sla_unit, sla_days, sla_started_at, sla_last_day, due_at, warn_at, created_at, updated_at,"
        " matter_key, sla_version, sla_pauses, sla_warn_share, sla_paused, sla_running, extension_days,"
        " recheck_level) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,1,'[]',0.8,0,1,0,0)", batch_p)
    con.executemany("INSERT INTO petition_timers (id, petition_id, kind, stage, due_at, fired_at, cancelled)"
                    " VALUES (?,?,?,?,?,?,0)", batch_t)
    con.commit()
    batch_p.clear()
    batch_t.clear()


async def main(args) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-petition-"))
    db_path = tmp / "petition.db"
    settings = load_settings(database_url=f"sqlite+aiosqlite:///{db_path}", data_dir=tmp, grpc_port=0,
                             timer_poll_s=1.0, nats_url="nats://127.0.0.1:1")
    rt = Runtime(build_spec(), settings)
    await rt.db.migrate(rt.spec.migrations_dir)
    await rt.spec.on_start(rt)  # the service's own start-up: data key, policies, SQLite cache
    ids = {p.category: p.id for p in await policies.list_policies(rt, Principal("b", "b", "u", ("ops",)))}
    now = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    per_s, open_ids = load(db_path, args.cases, ids, now)
    print(f"loaded {args.cases} open cases in {time.perf_counter() - t0:.1f}s; deadlines {per_s:,.0f}/s",
          file=sys.stderr)

    # Timer firing under the service's own loop.
    chosen = random.Random(7).sample(open_ids, min(args.timers, len(open_ids)))
    start = datetime.now(timezone.utc) + timedelta(seconds=3)
    due = {pid: start + timedelta(seconds=args.spread * k / max(len(chosen) - 1, 1)) for k, pid in enumerate(chosen)}
    con = sqlite3.connect(db_path)
    con.executemany("UPDATE petition_timers SET due_at = ? WHERE id = ?",
                    [(db_time(d), f"{pid}b") for pid, d in due.items()])
    con.commit()
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    lateness: list[float] = []
    original = timers.fire_due

    async def measured(rt_, limit=500, now=None):
        fired = await original(rt_, limit, now)
        committed = datetime.now(timezone.utc)
        for timer, _late in fired:
            if timer.petition_id in due and timer.kind == "breach":
                lateness.append((committed - due[timer.petition_id]).total_seconds() * 1000)
        return fired

    timers.fire_due = measured
    stop = asyncio.Event()
    loop_task = asyncio.create_task(timers.run_loop(rt, stop))
    deadline = time.monotonic() + args.spread + 60
    while len(lateness) < len(chosen) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    stop.set()
    await loop_task
    timers.fire_due = original
    if len(lateness) < len(chosen):
        raise SystemExit(f"bench: only {len(lateness)} of {len(chosen)} timers fired")

    # The supervisor's overdue list.
    who = Principal("sup", "sup", "u", ("supervisor",), region_path="/province/")
    times = []
    cursor = None
    for k in range(args.lists):
        t0 = time.perf_counter()
        items, nxt = await usecases.list_petitions(rt, who, 50, cursor, overdue=True)
        [usecases.public_view(rt, p, who) for p in items]
        times.append((time.perf_counter() - t0) * 1000)
        cursor = nxt if (nxt and k % 10) else None
    await rt.db.dispose()
    print(json.dumps({"fired": len(lateness), "fire_median_ms": statistics.median(lateness),
                      "fire_p90_ms": sorted(lateness)[int(0.9 * (len(lateness) - 1))], "fire_max_ms": max(lateness),
                      "list_median_ms": statistics.median(times)}), file=sys.stderr)
    print(f"BENCH petition open_cases={args.cases} timer_fire_p99_ms={p99(lateness):.1f} "
          f"deadlines_per_s={per_s:.1f} rss_mb={rss_mb():.1f} list_overdue_p99_ms={p99(times):.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=1_000_000)
    parser.add_argument("--timers", type=int, default=2000, help="breach timers falling due during the run")
    parser.add_argument("--spread", type=float, default=20.0, help="seconds over which they fall due")
    parser.add_argument("--lists", type=int, default=200)
    asyncio.run(main(parser.parse_args()))
