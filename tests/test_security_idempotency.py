"""The idempotency layer (Idempotency-Key) never keeps a secret for replay and never holds a
large upload in memory (issue 16). REST only: gRPC has no idempotency keys. SQLite and
PostgreSQL."""
from __future__ import annotations

import asyncio
import hashlib
import uuid
from pathlib import Path

from tests.helpers import assert_error, client, db_dialect, login, service_db
from tests.test_content_attachments import DRAFT, MP4_HEAD, chunks, upload
from tests.test_dispatch import demo_unit

MiB = 1024 * 1024


def test_answers_carrying_a_secret_are_never_kept_nor_replayed(stack_factory, db_backend):
    stack = stack_factory(db_backend, only=("account",))
    ops = client(stack, "account", login(stack, "ops"))
    unit = demo_unit(ops)
    assert ops.post(f"/v1/units/{unit['id']}/platform-exceptions",
                    json={"platform": "app", "reason": "测试矩阵"}).status_code in (201, 409)
    key = {"Idempotency-Key": str(uuid.uuid4())}
    body = {"unit_id": unit["id"], "platform": "app", "name": f"{unit['name']}客户端", "handle": "idem-stream",
            "opened_on": "2025-01-01", "responsible": {"principal": "甲", "deputy": "乙", "chief_editor": "丙"},
            "delivery": {"mode": "stream"}}

    # registering a stream account answers its client secret once
    first = ops.post("/v1/accounts", json=body, headers=key)
    assert first.status_code == 201, first.text
    secret, account_id = first.json()["client_secret"], first.json()["id"]
    # the repeat is not applied again, and does not hand the secret out a second time
    again = assert_error(ops.post("/v1/accounts", json=body, headers=key), 409, "idempotency_answer_withheld")
    assert secret not in str(again) and again["error"]["details"] == {"status": 201}
    assert [a["id"] for a in ops.get("/v1/accounts", params={"limit": 200}).json()["items"]
            if a["handle"] == "idem-stream"] == [account_id]
    # the same key with another body is still refused as reused
    assert_error(ops.post("/v1/accounts", json={**body, "handle": "other"}, headers=key), 422,
                 "idempotency_key_reused")

    # rotating the secret: shown once, not rotated again by the repeat, not replayed
    rotate_key = {"Idempotency-Key": str(uuid.uuid4())}
    rotated = ops.post(f"/v1/accounts/{account_id}/client-secret", headers=rotate_key)
    assert rotated.status_code == 200, rotated.text
    new_secret = rotated.json()["client_secret"]
    assert_error(ops.post(f"/v1/accounts/{account_id}/client-secret", headers=rotate_key), 409,
                 "idempotency_answer_withheld")
    token = client(stack, "account").post("/v1/auth/token", data={
        "grant_type": "client_credentials", "client_id": account_id, "client_secret": new_secret})
    assert token.status_code == 200, token.text  # the secret the first call showed is still the one

    # nothing of either secret was stored with the keys
    rows = asyncio.run(service_db(stack, "account", "SELECT body, content_type, status FROM idempotency_keys"))
    stored = b"".join(bytes(r[0]) for r in rows)
    assert secret.encode() not in stored and new_secret.encode() not in stored
    assert sum(1 for r in rows if r[1] == "application/vnd.govmedia.withheld") == 2

    # an ordinary answer is still kept and replayed
    region = {"name": "幂等市", "parent_id": ops.get("/v1/regions").json()["items"][0]["id"], "level": "city"}
    made = ops.post("/v1/regions", json=region, headers={"Idempotency-Key": "idem-region"})
    replay = ops.post("/v1/regions", json=region, headers={"Idempotency-Key": "idem-region"})
    assert made.status_code == replay.status_code == 201 and made.json() == replay.json()
    assert replay.headers["idempotent-replayed"] == "true"


def _peak_rss(pid: int) -> int:
    """The process's peak resident memory (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_a_large_upload_with_a_key_streams_through(stack_factory, db_backend):
    stack = stack_factory(db_backend, only=("account", "content"))
    editor = client(stack, "content", login(stack, "editor"))
    draft = editor.post("/v1/drafts", json=DRAFT)
    assert draft.status_code == 201, draft.text
    draft_id = draft.json()["id"]
    pid = stack.services["content"].proc.pid
    size = 96 * MiB
    key = {"Idempotency-Key": "upload-large-0001"}
    before = _peak_rss(pid)
    once = upload(editor, draft_id, chunks(size, MP4_HEAD), "video/mp4", 1, name="大视频.mp4", **key)
    assert once.status_code == 201, once.text
    digest = hashlib.sha256()
    for part in chunks(size, MP4_HEAD):
        digest.update(part)
    assert once.json()["size"] == size and once.json()["sha256"] == digest.hexdigest()
    # the repeat is read (hashed, thrown away) and answered from the key: the same attachment
    twice = upload(editor, draft_id, chunks(size, MP4_HEAD), "video/mp4", 1, name="大视频.mp4", **key)
    assert twice.status_code == 201 and twice.json()["id"] == once.json()["id"]
    assert twice.headers["idempotent-replayed"] == "true"
    # another body under the same key: refused, after reading it through
    other = upload(editor, draft_id, chunks(size, MP4_HEAD + b"x"), "video/mp4", 1, name="大视频.mp4", **key)
    assert_error(other, 422, "idempotency_key_reused")
    # three passes of 96 MiB, none held whole: the process's peak grew by far less than one
    assert _peak_rss(pid) - before < size // 2, (before, _peak_rss(pid))


def test_keys_are_stored_as_hashes_and_a_dead_requests_reservation_expires(stack_factory, db_backend):
    stack = stack_factory(db_backend, only=("account",))
    ops = client(stack, "account", login(stack, "ops"))
    parent = ops.get("/v1/regions").json()["items"][0]["id"]
    # the longest key on a long path: a fixed-length hash is stored (PostgreSQL's column took
    # neither whole: 500), and neither the path nor the key is in the database
    key = {"Idempotency-Key": "k" * 200}
    assert_error(ops.post("/v1/" + "x" * 400, json={}, headers=key), 404, "not_found")
    made = ops.post("/v1/regions", json={"name": "散列市", "parent_id": parent, "level": "city"}, headers=key)
    assert made.status_code == 201, made.text
    scopes = [s for (s,) in asyncio.run(service_db(stack, "account", "SELECT scope FROM idempotency_keys"))]
    assert scopes and all(len(s) == 64 and "k" * 20 not in s for s in scopes)

    # a request that died holding its key (reserved, never finished): a repeat is "in use" while
    # the reservation is fresh, and applied once the reservation's lease has run out
    key = {"Idempotency-Key": "crashed-request-1"}
    body = {"name": "中断市", "parent_id": parent, "level": "city"}
    first = ops.post("/v1/regions", json=body, headers=key)
    assert first.status_code == 201, first.text
    asyncio.run(service_db(stack, "account", "DELETE FROM regions WHERE id = '%s'" % first.json()["id"]))
    asyncio.run(service_db(stack, "account", "UPDATE idempotency_keys SET status = 0, body = ''"
                           " WHERE scope NOT IN (%s)" % ", ".join(f"'{s}'" for s in scopes)))
    assert_error(ops.post("/v1/regions", json=body, headers=key), 409, "idempotency_key_in_use")
    old = "2026-01-01 00:00:00" + ("+00" if db_dialect(stack, "account") == "postgresql" else "")
    asyncio.run(service_db(stack, "account", f"UPDATE idempotency_keys SET created_at = '{old}' WHERE status = 0"))
    again = ops.post("/v1/regions", json=body, headers=key)
    assert again.status_code == 201 and "idempotent-replayed" not in again.headers, again.text
