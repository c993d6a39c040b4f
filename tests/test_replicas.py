"""Two instances of every service on one machine (issue 7), as two pods of each Deployment
would run: other ports, the same databases and NATS. Requests go to either instance; the
push and the retraction walk through both; work is shared through the durable JetStream
consumers and the database claims, and nothing is applied twice: every client gets the
publish once and the kill once, and each SLA timer of cases taken in by either petition
instance fires once (many timers at once: tests/test_petition_replicas.py)."""
from __future__ import annotations

import asyncio
import itertools
from collections import Counter

import httpx
import pytest

from govmedia.events.v1 import events_pb2 as ev
from govmedia_cli.stack import TLS
from tests.helpers import auth, bus_messages, db_dialect, eventually, login, service_db
from tests.test_e2e import CHECKS, RESPONSIBLE
from tests.webhook_receiver import Receiver, client_secret

pytestmark = pytest.mark.e2e

CLIENTS = 8
CASES = 6


class Both:
    """REST calls of one user, alternating between the two instances of a service."""

    def __init__(self, urls: list[str], token: str | None):
        self.clients = [httpx.Client(base_url=url, headers=auth(token) if token else {}, timeout=15, verify=TLS) for url in urls]
        self._next = itertools.cycle(self.clients)

    def __getattr__(self, method):
        return getattr(next(self._next), method)


def test_two_instances_of_every_service_apply_everything_once(stack_factory, db_backend, calendar_file):
    stack = stack_factory(db_backend)
    for name in list(stack.services):
        stack.add_replica(name)
    urls = {name: [stack.services[name].base_url] + [r.base_url for r in stack.replicas if r.name == name]
            for name in stack.services}
    assert all(len(u) == 2 for u in urls.values())

    def user(service: str, username: str) -> Both:
        return Both(urls[service], login(stack, username))

    with Receiver() as receiver:
        ops = user("account", "ops")
        home = ops.get("/v1/units").json()["items"][0]
        names = [f"client-{n}" for n in range(CLIENTS)]
        for n, name in enumerate(names):
            unit = ops.post("/v1/units", json={"name": f"示范省第{n}厅", "region_id": home["region_id"]})
            assert unit.status_code == 201, unit.text
            made = ops.post("/v1/accounts", json={
                "unit_id": unit.json()["id"], "platform": "weibo", "name": f"示范省第{n}厅发布", "handle": name,
                "opened_on": "2025-01-02", "responsible": RESPONSIBLE,
                "delivery": {"mode": "webhook", "url": receiver.url(name), "secret": client_secret(name)}})
            assert made.status_code == 201, made.text

        editor = user("content", "editor")
        draft = editor.post("/v1/drafts", json={"title": "关于开展政务公开日活动的通知", "body": "各单位：现将有关事项通知如下。",
                                                "category": "government", "targets": {"scope": "all"}})
        assert draft.status_code == 201, draft.text
        item_id = draft.json()["id"]
        assert editor.post(f"/v1/drafts/{item_id}/submit").status_code == 200
        reviewers = [user("review", n) for n in ("reviewer1", "reviewer2", "reviewer3")]
        review = eventually(lambda: reviewers[0].get("/v1/reviews", params={"item_id": item_id}).json()["items"])[0]
        for reviewer in reviewers:
            decided = reviewer.post(f"/v1/reviews/{review['id']}/decisions",
                                    json={"decision": "approve", "comment": "同意", "checks": CHECKS})
            assert decided.status_code == 200, decided.text

        def received(kind: str) -> dict[str, int]:
            return {n: sum(1 for e in receiver.events[n] if e["type"].endswith(kind) and e["data"]["item_id"] == item_id)
                    for n in names}
        eventually(lambda: all(received("published").values()), timeout=60)
        retracted = user("content", "reviewer3").post(f"/v1/items/{item_id}/retract", json={"reason": "数据有误"})
        assert retracted.status_code == 200, retracted.text
        eventually(lambda: all(received("retracted").values()), timeout=60)
        dispatch = user("dispatch", "ops")
        report = eventually(lambda: (r := dispatch.get(f"/v1/retractions/{item_id}").json())["completed_at"] and r)
        assert (report["targets"], report["confirmed"], report["outstanding"]) == (CLIENTS, CLIENTS, 0)
        # Let any late copy arrive before counting.
        asyncio.run(asyncio.sleep(2))
        assert received("published") == dict.fromkeys(names, 1)
        assert received("retracted") == dict.fromkeys(names, 1)
        assert receiver.errors == []

    # Cases taken in by either petition instance; their warnings and breaches made due at once.
    public = Both(urls["petition"], None)
    pids = []
    for n in range(CASES):
        made = public.post("/v1/petitions", json={"category": "consultation", "title": f"咨询办事流程{n}",
                                                  "content": "请问如何办理？", "channel": "web"})
        assert made.status_code == 201, made.text
        pids.append(made.json()["id"])
    past = "2026-01-05 01:00:00" + ("+00" if db_dialect(stack, "petition") == "postgresql" else "")
    asyncio.run(service_db(stack, "petition", f"UPDATE petition_timers SET due_at = '{past}' "
                                              "WHERE kind IN ('warning', 'breach')"))
    eventually(lambda: asyncio.run(service_db(stack, "petition", "SELECT count(*) FROM petition_timers "
                                              "WHERE fired_at IS NOT NULL"))[0][0] == 2 * CASES, timeout=60)
    eventually(lambda: asyncio.run(service_db(stack, "petition", "SELECT count(*) FROM outbox "
                                              "WHERE published_at IS NULL"))[0][0] == 0, timeout=60)
    alerts = asyncio.run(bus_messages(stack, "govmedia.petition.sla.>", "GOVMEDIA_PETITION"))
    assert Counter((ev.PetitionSlaAlert.FromString(m.data).petition_id, m.subject.rsplit(".", 1)[1])
                   for m in alerts) == Counter({(p, kind): 1 for p in pids for kind in ("warning", "breached")})
