"""Two petition processes on one database and one NATS (as with two replicas): many timers
come due at once under both timer loops, and each fires exactly once — one event on the bus,
one timeline entry, one supervision record per breach. Real processes, both databases."""
from __future__ import annotations

import asyncio
from collections import Counter

import httpx

from govmedia.events.v1 import events_pb2 as ev
from tests.helpers import bus_messages, client, db_dialect, eventually, service_db

CASES = 60


def test_two_replicas_fire_each_timer_once(calendar_file, stack_factory, db_backend):
    stack = stack_factory(db_backend, only=("account", "petition"), env={
        "PETITION_INTAKE_RATE_PER_MINUTE": "100000", "PETITION_TIMER_POLL_S": "0.2"})
    second = stack.add_replica("petition")
    replicas = [client(stack, "petition"), httpx.Client(base_url=second.base_url, timeout=15)]
    ids = []
    for i in range(CASES):  # through both replicas
        r = replicas[i % 2].post("/v1/petitions", json={"category": "consultation", "title": f"咨询{i}",
                                                        "content": "c", "channel": "web"})
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    pending = asyncio.run(service_db(stack, "petition", "SELECT kind, count(*) FROM petition_timers "
                                     "WHERE fired_at IS NULL GROUP BY kind ORDER BY kind"))
    assert pending == [("breach", CASES), ("warning", CASES)]

    # Every warning and breach comes due at once, behind the back of both running loops.
    past = "2026-01-05 01:00:00" + ("+00" if db_dialect(stack, "petition") == "postgresql" else "")
    asyncio.run(service_db(stack, "petition", f"UPDATE petition_timers SET due_at = '{past}'"))

    def fired() -> int:
        return asyncio.run(service_db(stack, "petition", "SELECT count(*) FROM petition_timers "
                                      "WHERE kind IN ('warning', 'breach') AND fired_at IS NOT NULL"))[0][0]
    eventually(lambda: fired() == 2 * CASES, timeout=60)
    assert stack.services["petition"].proc.poll() is None and second.proc.poll() is None

    # One timeline entry per timer, one supervision record per breach …
    entries = asyncio.run(service_db(stack, "petition", "SELECT petition_id, action FROM petition_timeline "
                                     "WHERE action LIKE 'sla_%'"))
    assert Counter(entries) == Counter({(pid, kind): 1 for pid in ids for kind in ("sla_warning", "sla_breach")})
    supervisions = asyncio.run(service_db(stack, "petition", "SELECT petition_id FROM petition_supervisions"))
    assert sorted(p for (p,) in supervisions) == sorted(ids)
    # … and one event each on the bus (every replica's relay publishes; JetStream keeps one).
    eventually(lambda: asyncio.run(service_db(stack, "petition", "SELECT count(*) FROM outbox "
                                              "WHERE published_at IS NULL"))[0][0] == 0, timeout=60)
    msgs = asyncio.run(bus_messages(stack, "govmedia.petition.sla.>", "GOVMEDIA_PETITION"))
    alerts = Counter((ev.PetitionSlaAlert.FromString(m.data).petition_id, m.subject.rsplit(".", 1)[1])
                     for m in msgs)
    assert alerts == Counter({(pid, kind): 1 for pid in ids for kind in ("warning", "breached")})
    # Nothing is left to fire, and neither replica logged a failure of its timers.
    assert asyncio.run(service_db(stack, "petition", f"SELECT count(*) FROM petition_timers WHERE fired_at IS "
                                  f"NULL AND due_at <= '{past}'"))[0][0] == 0
    for svc in (stack.services["petition"], second):
        assert "SLA timers failed" not in svc.log_path.read_text()
