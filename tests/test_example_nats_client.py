"""The units' developers' example client (examples/nats_client.py) and the protocol's
description (docs/nats-client-protocol.md, docs/asyncapi-nats-clients.yaml).

The example runs as a real subprocess against the whole platform, operator-mode NATS
included: an account registered in delivery mode nats, items pushed through content and
three review levels, retracted; the example shows, kills, acknowledges; stopped, it misses
a push and a retraction, and started again it gets the kill before anything else; its key
revoked, it fetches new credentials by itself; its secret rotated, it stops. The
AsyncAPI document is checked by hand (AsyncAPI 3.0's structure, every reference resolves,
the subjects are the estate's) and its payload schemas against the events the example
really received."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import jsonschema
import pytest
import yaml

from govmedia_kit.db import new_id
from govmedia_kit.nats_estate import client_subjects
from tests.helpers import auth, client, client_token, eventually, login
from tests.test_dispatch import approve, demo_unit, register, wait_known
from tests.test_e2e import CHECKS, review_of

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "nats_client.py"
ASYNCAPI = ROOT / "docs" / "asyncapi-nats-clients.yaml"
PROTOCOL = ROOT / "docs" / "nats-client-protocol.md"
PUBLISHED, KILLED = "govmedia.dispatch.item.published", "govmedia.dispatch.item.retracted"
# No resend by backoff within the test's minutes: what the restarted example gets comes from
# its hello alone, kills first (a resend of a publish could otherwise land before it).
ENV = {"DISPATCH_NATS_RESEND_BASE_S": "60", "DISPATCH_NATS_RESEND_CAP_S": "60",
       # One live NATS key per account: a key issued to someone else revokes the example's.
       "ACCOUNT_NATS_CLIENT_KEYS_MAX": "1"}


# --- the AsyncAPI document and the page -------------------------------------------------------

def asyncapi() -> dict:
    return yaml.safe_load(ASYNCAPI.read_text(encoding="utf-8"))


def resolve(doc: dict, ref: str):
    assert ref.startswith("#/"), ref
    node = doc
    for part in ref[2:].split("/"):
        assert isinstance(node, dict) and part in node, f"{ref} does not resolve"
        node = node[part]
    return node


def refs(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


def payload_validator(doc: dict, schema: str) -> jsonschema.Draft202012Validator:
    """A validator for one of the document's schemas, its references resolved in the document."""
    return jsonschema.Draft202012Validator({**doc, "$ref": f"#/components/schemas/{schema}"})


def test_the_asyncapi_document_describes_the_protocol():
    doc = asyncapi()
    # AsyncAPI 3.0's required fields and shapes (checked against the official JSON schema,
    # @asyncapi/specs 3.0.0, when the document was written; that schema is not on PyPI).
    assert doc["asyncapi"] == "3.0.0"
    assert doc["info"]["title"] and doc["info"]["version"]
    assert set(doc) <= {"asyncapi", "id", "info", "servers", "defaultContentType", "channels", "operations",
                        "components"}
    for server in doc["servers"].values():
        assert server["host"] and server["protocol"] in {"nats", "ws", "wss"}
    # Every reference resolves; every channel has the estate's subject; each operation is the
    # client's (receive its events, send the rest) on a channel with that message.
    for ref in refs(doc):
        resolve(doc, ref)
    subjects = client_subjects("{accountId}")
    assert {name: channel["address"] for name, channel in doc["channels"].items()} == subjects
    for channel in doc["channels"].values():
        assert set(channel["parameters"]) == {"accountId"}
    actions = {resolve(doc, op["channel"]["$ref"])["address"]: op["action"] for op in doc["operations"].values()}
    assert actions == {subjects["events"]: "receive", subjects["ack"]: "send", subjects["hello"]: "send",
                       subjects["metrics"]: "send"}
    for name, op in doc["operations"].items():
        channel_ref = op["channel"]["$ref"]
        for message in op["messages"]:
            assert message["$ref"].startswith(channel_ref + "/messages/"), (name, message)
    # Each message's examples satisfy its payload schema, and the page's JSON examples too.
    for message in doc["components"]["messages"].values():
        validator = payload_validator(doc, message["payload"]["$ref"].rsplit("/", 1)[1])
        for example in message["examples"]:
            validator.validate(example["payload"])
    page = PROTOCOL.read_text(encoding="utf-8")
    events = [json.loads(block) for block in re.findall(r"```json\n(.*?)```", page, re.S) if '"specversion"' in block]
    assert {e["type"] for e in events} == {PUBLISHED, KILLED}
    for event in events:
        payload_validator(doc, "ItemPublished" if event["type"] == PUBLISHED else "ItemRetracted").validate(event)
    assert not payload_validator(doc, "Ack").is_valid({"ids": [f"d{i}" for i in range(1001)]})
    assert not payload_validator(doc, "ItemPublished").is_valid({**events[0], "data": {"item_id": "x"}})


# --- the example's rules, alone ----------------------------------------------------------------

def example_module():
    spec = importlib.util.spec_from_file_location("nats_client_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_example_store_applies_the_client_rules(tmp_path):
    """Deduplicate by id, the highest version wins, a kill always wins (even before any
    publish of the item), an unknown type changes nothing."""
    store = example_module().Store(str(tmp_path / "rules.db"))

    def event(event_id: str, kind: str, item: str, version: int) -> dict:
        return {"specversion": "1.0", "id": event_id, "type": kind, "source": "/govmedia/dispatch", "subject": item,
                "data": {"item_id": item, "version": version, "title": f"{item} v{version}"}}

    steps = [(event("e1", PUBLISHED, "a", 1), "shown"), (event("e1", PUBLISHED, "a", 1), "duplicate"),
             (event("e2", PUBLISHED, "a", 2), "shown"), (event("e3", PUBLISHED, "a", 1), "older"),
             (event("e4", KILLED, "a", 2), "killed"), (event("e4", KILLED, "a", 2), "duplicate"),
             (event("e5", PUBLISHED, "a", 3), "kept_killed"),
             (event("e6", KILLED, "b", 1), "killed"), (event("e7", PUBLISHED, "b", 1), "kept_killed"),
             (event("e8", "govmedia.dispatch.item.unknown", "c", 1), "ignored")]
    assert [store.apply(e) for e, _ in steps] == [outcome for _, outcome in steps]
    assert store.items() == {"a": {"state": "killed", "version": 2, "title": "a v2"},
                             "b": {"state": "killed", "version": 1, "title": ""}}
    store.close()


# --- the example against the platform ------------------------------------------------------------

class Example:
    """examples/nats_client.py as a process, its log in a file."""

    def __init__(self, stack, account: dict, store: Path, log: Path, *args: str):
        self.store, self.log = store, log
        env = {**os.environ, "GOVMEDIA_ACCOUNT_URL": stack.services["account"].base_url,
               "GOVMEDIA_CLIENT_ID": account["id"], "GOVMEDIA_CLIENT_SECRET": account["client_secret"],
               "GOVMEDIA_STORE": str(store)}
        self.out = log.open("a", encoding="utf-8")
        self.start = log.stat().st_size if log.exists() else 0
        self.proc = subprocess.Popen([sys.executable, str(EXAMPLE), *args], env=env, stdout=self.out,
                                     stderr=subprocess.STDOUT, cwd=ROOT)

    def text(self) -> str:
        return self.log.read_text(encoding="utf-8")[self.start:]

    def wait_listening(self) -> None:
        def listening():
            assert self.proc.poll() is None, self.text()
            return "listening on" in self.text()
        eventually(listening, timeout=30)

    def stop(self) -> int:
        """SIGTERM: drains and exits 0."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)


@pytest.fixture
def start_example():
    """Start the example (`start_example(stack, account, store, log, *args)`); whatever is
    still running at the end of the test is killed."""
    started: list[Example] = []

    def start(*args) -> Example:
        started.append(Example(*args))
        return started[-1]

    yield start
    for example in started:
        if example.proc.poll() is None:
            example.proc.kill()
            example.proc.wait(timeout=10)
        example.out.close()


def shown(store: Path) -> dict:
    """What the example's store holds, as its --show prints it."""
    out = subprocess.run([sys.executable, str(EXAMPLE), "--store", str(store), "--show"], capture_output=True,
                         text=True, timeout=30, check=True)
    return json.loads(out.stdout)


def journal(store: Path, after: int = 0) -> list[tuple]:
    db = sqlite3.connect(store)
    try:
        return db.execute("SELECT seq, type, item_id, outcome FROM journal WHERE seq > ? ORDER BY seq",
                          (after,)).fetchall()
    finally:
        db.close()


def push(stack, account_id: str, title: str) -> str:
    """An item to one account through the real flow: draft, submit, three review levels."""
    editor = client(stack, "content", login(stack, "editor"))
    draft = editor.post("/v1/drafts", json={"title": title, "body": f"{title}：正文。",
                                            "targets": {"accounts": [account_id]}})
    assert draft.status_code == 201, draft.text
    item_id = draft.json()["id"]
    assert editor.post(f"/v1/drafts/{item_id}/submit").status_code == 200
    reviewers = [client(stack, "review", login(stack, f"reviewer{level}")) for level in (1, 2, 3)]
    review = eventually(lambda: review_of(reviewers[0], item_id), timeout=30)
    for reviewer in reviewers:
        r = reviewer.post(f"/v1/reviews/{review['id']}/decisions", json={"decision": "approve", "checks": CHECKS})
        assert r.status_code == 200, r.text
    assert r.json()["state"] == "approved"
    return item_id


def retract_item(stack, item_id: str, reason: str) -> None:
    r = client(stack, "content", login(stack, "reviewer3")).post(f"/v1/items/{item_id}/retract",
                                                                 json={"reason": reason})
    assert r.status_code == 200, r.text


@pytest.mark.e2e
def test_the_example_client_shows_kills_and_catches_up(stack_factory, start_example, tmp_path):
    stack = stack_factory("sqlite", secure_nats=True, env=ENV)
    ops_token = login(stack, "ops")
    ops, disp = client(stack, "account", ops_token), client(stack, "dispatch", ops_token)
    unit = demo_unit(ops)
    account = register(ops, unit["id"], "example-app", {"mode": "nats"}, platform="app")
    assert account["client_secret"]
    wait_known(disp, [account["id"]])
    store, log = tmp_path / "client.db", tmp_path / "client.log"

    # Online, with its own key: a push is shown, its retraction kills it, both acknowledged.
    example = start_example(stack, account, store, log)
    example.wait_listening()
    assert "(our own key)" in example.text()
    first = push(stack, account["id"], "示范通知一")
    eventually(lambda: shown(store).get(first, {}).get("state") == "published", timeout=30)
    assert shown(store)[first]["title"] == "示范通知一"
    retract_item(stack, first, "数据有误，撤回更正")
    eventually(lambda: shown(store)[first]["state"] == "killed", timeout=30)
    done = eventually(lambda: (r := disp.get(f"/v1/retractions/{first}").json()).get("completed_at") and r,
                      timeout=30)
    assert done["targets"] == done["confirmed"] == 1 and done["outstanding"] == 0
    assert eventually(lambda: disp.get(f"/v1/publications/{first}").json()["counts"]["acknowledged"] == 1)
    # The events as received match the AsyncAPI document's payload schemas.
    doc, db = asyncapi(), sqlite3.connect(store)
    [kill_event] = [json.loads(row[0]) for row in db.execute("SELECT event FROM items WHERE item_id = ?", (first,))]
    db.close()
    payload_validator(doc, "ItemRetracted").validate(kill_event)
    assert kill_event["data"]["reason"] == "数据有误，撤回更正" and kill_event["data"]["account_id"] == account["id"]
    assert [(t, o) for _, t, i, o in journal(store) if i == first] == [(PUBLISHED, "shown"), (KILLED, "killed")]
    assert example.stop() == 0
    assert "Traceback" not in example.text()

    # Offline: `second` is pushed and retracted, `third` pushed. Back, this time with a key
    # the service makes: the kill of `second` comes before any publish, `second` is never
    # shown, `third` is.
    seen = journal(store)[-1][0]
    second = push(stack, account["id"], "示范通知二")
    eventually(lambda: disp.get(f"/v1/publications/{second}").json().get("targets") == 1)
    third = push(stack, account["id"], "示范通知三")
    eventually(lambda: disp.get(f"/v1/publications/{third}").json().get("targets") == 1)
    retract_item(stack, second, "撤回")
    eventually(lambda: disp.get(f"/v1/retractions/{second}").json().get("targets") == 1)
    example = start_example(stack, account, store, log, "--service-key")
    example.wait_listening()
    assert "(the service's key)" in example.text()
    eventually(lambda: shown(store).get(second, {}).get("state") == "killed"
               and shown(store).get(third, {}).get("state") == "published", timeout=30)
    after = journal(store, seen)
    assert after[0][1:] == (KILLED, second, "killed"), after
    assert not [row for row in after if row[2] == second and row[1] == PUBLISHED]
    assert shown(store)[first]["state"] == "killed"
    done = eventually(lambda: (r := disp.get(f"/v1/retractions/{second}").json()).get("completed_at") and r,
                      timeout=30)
    assert done["confirmed"] == 1 and done["outstanding"] == 0
    eventually(lambda: disp.get(f"/v1/publications/{third}").json()["counts"]["acknowledged"] == 1)

    # Its key revoked (another key issued to the account, one live key allowed): the servers
    # disconnect it; it fetches new credentials itself, connects again and goes on.
    other = httpx.post(f"{stack.services['account'].base_url}/v1/clients/nats-credentials", json={},
                       headers=auth(client_token(stack, account)), timeout=15)
    assert other.status_code == 201, other.text
    eventually(lambda: example.text().count("listening on") == 2, timeout=30)
    assert "credentials refused or revoked" in example.text()
    fourth = push(stack, account["id"], "示范通知四")
    eventually(lambda: shown(store).get(fourth, {}).get("state") == "published", timeout=30)

    # The secret rotated: the servers disconnect the client, the account service refuses the
    # old secret, and the example stops with its "refused" status (3) rather than retrying.
    rotated = ops.post(f"/v1/accounts/{account['id']}/client-secret")
    assert rotated.status_code in (200, 201), rotated.text
    assert example.proc.wait(timeout=30) == 3, example.text()
    assert "token refused" in example.text()


def test_the_example_client_over_websocket(stack_factory, start_example, tmp_path):
    stack = stack_factory("sqlite", only=("account", "dispatch"), secure_nats=True, env=ENV)
    ops_token = login(stack, "ops")
    ops, disp = client(stack, "account", ops_token), client(stack, "dispatch", ops_token)
    unit = demo_unit(ops)
    account = register(ops, unit["id"], "example-ws", {"mode": "nats"}, platform="web")
    wait_known(disp, [account["id"]])
    store = tmp_path / "client.db"
    example = start_example(stack, account, store, tmp_path / "client.log", "--websocket")
    example.wait_listening()
    assert f"connected to {stack.nats.websocket_url}" in example.text()
    item = new_id()
    approve(stack, item, unit["id"], accounts=[account["id"]])
    eventually(lambda: shown(store).get(item, {}).get("state") == "published", timeout=30)
    assert example.stop() == 0
