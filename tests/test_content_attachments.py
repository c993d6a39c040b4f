"""Attachments of drafts (images and video) and the diff between revisions, against real
processes: streamed uploads with type and size limits, refusals that store nothing, who may
fetch a file before and after approval (matrix clients included), removal, the snapshot that
carries attachments to review, and the gRPC side."""
from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import grpc
import httpx
import pytest

from govmedia.content.v1 import content_pb2 as cpb
from govmedia.content.v1 import content_pb2_grpc as cpb_grpc
from govmedia.events.v1 import events_pb2 as ev
from tests.helpers import assert_error, client, login
from tests.test_content_review import ALL_CHECKS, People, decide, draft_status, last_event, open_review

MiB = 1024 * 1024
# Small limits so the refusals are cheap; the video limit stays above the front door's
# buffering threshold (4 MiB), so uploads take the streamed path as in production.
LIMITS = {"CONTENT_IMAGE_MAX_BYTES": str(1 * MiB), "CONTENT_VIDEO_MAX_BYTES": str(5 * MiB)}
OTHER_PASSWORD = "other-pass-2026"
DRAFT = {"title": "全省春季植树活动安排", "body": "各市：\n今年植树节前后集中开展义务植树。\n请做好组织工作。",
         "targets": {"scope": "all"}}

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(range(256)) * 4
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x11" * 3000
GIF = b"GIF89a" + b"\x01" * 100
WEBP = b"RIFF\x24\x00\x00\x00WEBPVP8 " + b"\x02" * 100
MP4_HEAD = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom"


@pytest.fixture
def stack(stack_factory, db_backend):
    return stack_factory(db_backend, only=("account", "content", "review"), env=LIMITS)


def upload(c: httpx.Client, draft_id: str, data, content_type: str, version, name: str = "图.png", **headers):
    if version is not None:
        headers["If-Match"] = f'"{version}"'
    return c.post(f"/v1/drafts/{draft_id}/attachments", params={"name": name}, content=data,
                  headers={"Content-Type": content_type, **headers})


def chunks(total: int, head: bytes, size: int = 256 * 1024):
    """A body sent chunked (no Content-Length): `head`, then zeros up to `total` bytes."""
    yield head
    sent = len(head)
    while sent < total:
        n = min(size, total - sent)
        yield b"\x00" * n
        sent += n


def stored_files(stack) -> list[Path]:
    root = stack.data_dir / "content" / "attachments"
    return sorted(p for p in root.rglob("*") if p.is_file())


def other_unit_editor(people: People) -> str:
    """An editor of another unit (a city's government office) signed in; returns the username."""
    ops = people.account("ops")
    province = ops.get("/v1/regions").json()["items"][0]
    city = ops.post("/v1/regions", json={"name": "附件市", "parent_id": province["id"], "level": "city"}).json()
    unit = ops.post("/v1/units", json={"name": "附件市政府办", "region_id": city["id"]}).json()
    made = ops.post("/v1/users", json={"username": "att-editor", "password": OTHER_PASSWORD, "unit_id": unit["id"],
                                       "roles": ["editor"]})
    assert made.status_code == 201, made.text
    people.token("att-editor", OTHER_PASSWORD)
    return "att-editor"


def matrix_client_token(people: People, unit_id: str) -> str:
    """The client-credentials token of a stream account of the unit (a matrix client)."""
    account = people.account("ops").post("/v1/accounts", json={
        "unit_id": unit_id, "platform": "app", "name": "示范省政务客户端", "handle": "att-app",
        "opened_on": "2025-01-01", "responsible": {"principal": "甲", "deputy": "乙", "chief_editor": "丙"},
        "delivery": {"mode": "stream"}})
    assert account.status_code == 201, account.text
    r = httpx.post(f"{people.stack.services['account'].base_url}/v1/auth/token",
                   data={"grant_type": "client_credentials", "client_id": account.json()["id"],
                         "client_secret": account.json()["client_secret"]})
    assert r.status_code == 200, r.text
    return r.json()["access_token"]


def approve(people: People, item_id: str, version: int) -> dict:
    assert people.content("editor").post(f"/v1/drafts/{item_id}/submit").status_code == 200
    review = open_review(people, item_id, version)
    for reviewer in ("reviewer1", "reviewer2", "reviewer3"):
        r = decide(people, reviewer, review["id"], decision="approve", checks=ALL_CHECKS, comment="同意")
        assert r.status_code == 200, r.text
    return draft_status(people, item_id, "approved")


def test_upload_fetch_remove_with_limits_and_access(stack):
    people = People(stack)
    editor = people.content("editor")
    draft = editor.post("/v1/drafts", json=DRAFT).json()
    item_id, unit_id = draft["id"], draft["unit_id"]

    # -- an image: stored, hashed, the draft at a new version with a revision
    added = upload(editor, item_id, PNG, "image/png", 1, name="C:\\照片\\会场.png")
    assert added.status_code == 201, added.text
    png = added.json()
    assert (png["kind"], png["content_type"], png["size"], png["name"]) == ("image", "image/png", len(PNG), "会场.png")
    assert png["sha256"] == hashlib.sha256(PNG).hexdigest() and png["draft_version"] == 2
    assert added.headers["etag"] == '"2"' and added.headers["location"] == png["url"] == f"/v1/attachments/{png['id']}"
    # a video, larger than the front door buffers (streamed), declared length within its limit
    video_bytes = MP4_HEAD + b"\x07" * (int(4.5 * MiB) - len(MP4_HEAD))
    video = upload(editor, item_id, video_bytes, "video/mp4", 2, name="现场.mp4")
    assert video.status_code == 201, video.text
    video = video.json()
    assert video["kind"] == "video" and video["sha256"] == hashlib.sha256(video_bytes).hexdigest()
    for version, (body, ctype) in enumerate(((JPEG, "image/jpeg"), (GIF, "image/gif"), (WEBP, "image/webp")), 3):
        assert upload(editor, item_id, body, ctype, version, name=f"图{version}").status_code == 201
    current = editor.get(f"/v1/drafts/{item_id}").json()
    assert current["version"] == 6
    assert [a["id"] for a in current["attachments"]][:2] == [png["id"], video["id"]]
    assert [a["content_type"] for a in current["attachments"]] == [
        "image/png", "video/mp4", "image/jpeg", "image/gif", "image/webp"]
    assert [a["id"] for a in editor.get(f"/v1/drafts/{item_id}/attachments").json()["items"]] == [
        a["id"] for a in current["attachments"]]
    files_before = stored_files(stack)
    assert len(files_before) == 5

    # -- refusals store nothing and leave the version alone
    refusals = [
        (upload(editor, item_id, PNG, "image/png", None), 428, "if_match_required"),
        (upload(editor, item_id, PNG, "image/png", 2), 409, "version_conflict"),
        (upload(editor, item_id, JPEG, "image/png", 6), 415, "attachment_type_mismatch"),
        (upload(editor, item_id, b"<html><script>alert(1)</script></html>", "image/jpeg", 6), 415,
         "attachment_type_mismatch"),
        (upload(editor, item_id, PNG, "video/mp4", 6), 415, "attachment_type_mismatch"),
        (upload(editor, item_id, b"<svg xmlns='http://www.w3.org/2000/svg'/>", "image/svg+xml", 6), 415,
         "unsupported_attachment_type"),
        (upload(editor, item_id, b"plain words", "text/plain", 6), 415, "unsupported_media_type"),
        (upload(editor, item_id, b"", "image/png", 6), 422, "attachment_empty"),
        (upload(editor, item_id, PNG, "image/png", 6, name=""), 422, "validation_failed"),
        (upload(editor, item_id, PNG, "image/png", 6, name="a\x01b"), 422, "validation_failed"),
        (upload(editor, "no-such-draft", PNG, "image/png", 1), 404, "draft_not_found"),
        (upload(people.content("reviewer1"), item_id, PNG, "image/png", 6), 403, "not_author"),
        (upload(client(stack, "content"), item_id, PNG, "image/png", 6), 401, "unauthenticated"),
        # too large: an image over its limit declared, and sent chunked
        (upload(editor, item_id, PNG + b"\x00" * MiB, "image/png", 6), 413, "attachment_too_large"),
        (upload(editor, item_id, chunks(int(1.5 * MiB), PNG), "image/png", 6), 413, "attachment_too_large"),
        # a video over the front door's limit, declared: refused before anything is read
        (upload(editor, item_id, MP4_HEAD + b"\x00" * (6 * MiB), "video/mp4", 6), 413, "payload_too_large"),
    ]
    for response, status, code in refusals:
        assert_error(response, status, code)
    # a video over its limit sent chunked: refused while it is read (by the front door or the use case)
    chunked_video = upload(editor, item_id, chunks(6 * MiB, MP4_HEAD), "video/mp4", 6)
    assert chunked_video.status_code == 413, chunked_video.text
    assert chunked_video.json()["error"]["code"] in ("payload_too_large", "attachment_too_large")
    assert editor.get(f"/v1/drafts/{item_id}").json()["version"] == 6
    assert len(editor.get(f"/v1/drafts/{item_id}/revisions").json()["items"]) == 6
    assert stored_files(stack) == files_before  # no file kept, no half-written upload left

    # -- fetching: the unit's people, with ETag, caching rules, 304 and ranges
    got = editor.get(png["url"])
    assert got.status_code == 200 and got.content == PNG
    assert got.headers["content-type"] == "image/png" and got.headers["content-length"] == str(len(PNG))
    assert got.headers["etag"] == f'"{png["sha256"]}"' and got.headers["cache-control"] == "private, no-cache"
    assert got.headers["x-content-type-options"] == "nosniff"
    assert editor.get(png["url"], headers={"If-None-Match": got.headers["etag"]}).status_code == 304
    part = editor.get(video["url"], headers={"Range": "bytes=4-11"})
    assert part.status_code == 206 and part.content == b"ftypmp42"
    assert part.headers["content-range"] == f"bytes 4-11/{len(video_bytes)}"
    assert editor.get(video["url"], headers={"Range": f"bytes={len(video_bytes)}-"}).status_code == 416
    assert people.content("reviewer1").get(png["url"]).status_code == 200  # the unit's reviewers see it

    # before approval: nobody outside the unit, and no matrix client
    outsider = people.content(other_unit_editor(people))
    assert_error(outsider.get(png["url"]), 403, "other_unit")
    matrix = client(stack, "content", matrix_client_token(people, unit_id))
    assert_error(matrix.get(png["url"]), 403, "client_not_allowed")
    assert_error(matrix.get(f"/v1/drafts/{item_id}"), 403, "client_not_allowed")
    assert_error(editor.get("/v1/attachments/no-such-file"), 404, "attachment_not_found")

    # -- removal is an edit too: If-Match, a new version, the file gone
    gif_id = current["attachments"][3]["id"]
    assert_error(editor.delete(f"/v1/drafts/{item_id}/attachments/{gif_id}"), 428, "if_match_required")
    assert_error(editor.delete(f"/v1/drafts/{item_id}/attachments/{gif_id}", headers={"If-Match": "5"}), 409,
                 "version_conflict")
    assert_error(editor.delete(f"/v1/drafts/{item_id}/attachments/nope", headers={"If-Match": "6"}), 404,
                 "attachment_not_found")
    removed = editor.delete(f"/v1/drafts/{item_id}/attachments/{gif_id}", headers={"If-Match": "6"})
    assert removed.status_code == 200, removed.text
    assert removed.headers["etag"] == '"7"' and gif_id not in [a["id"] for a in removed.json()["attachments"]]
    assert_error(editor.get(f"/v1/attachments/{gif_id}"), 404, "attachment_not_found")
    assert len(stored_files(stack)) == 4
    last = editor.get(f"/v1/drafts/{item_id}/revisions").json()["items"][-1]
    assert last["version"] == 7 and last["changed"] == ["attachments"] and len(last["fields"]["attachments"]) == 4

    # -- the snapshot carries the attachments to review; approved, the file is everyone's
    approved = approve(people, item_id, 7)
    event = asyncio.run(last_event(stack, "GOVMEDIA_CONTENT", "govmedia.content.draft.submitted", ev.DraftSubmitted))
    sent = {a.attachment_id: a for a in event.item.attachments}
    assert list(sent) == [a["id"] for a in approved["attachments"]]
    assert (sent[png["id"]].kind, sent[png["id"]].sha256, sent[png["id"]].url, sent[png["id"]].size) == (
        "image", png["sha256"], png["url"], len(PNG))
    for reader in (outsider, matrix):
        fetched = reader.get(png["url"])
        assert fetched.status_code == 200 and fetched.content == PNG, fetched.text
        assert fetched.headers["cache-control"] == "private, max-age=300"
    assert_error(upload(editor, item_id, PNG, "image/png", 7), 409, "not_editable")
    assert_error(editor.delete(f"/v1/drafts/{item_id}/attachments/{png['id']}", headers={"If-Match": "7"}), 409,
                 "not_editable")
    # retracted, the item's files are the unit's again
    assert people.content("reviewer3").post(f"/v1/items/{item_id}/retract", json={"reason": "撤回"}).status_code == 200
    assert_error(matrix.get(png["url"]), 403, "client_not_allowed")
    assert_error(outsider.get(png["url"]), 403, "other_unit")


def test_diff_between_revisions(stack):
    people = People(stack)
    editor = people.content("editor")
    draft = editor.post("/v1/drafts", json=DRAFT).json()
    item_id = draft["id"]
    v2 = {**DRAFT, "title": "全省春季义务植树活动安排",
          "body": "各市：\n今年植树节前后集中开展全民义务植树。\n请做好组织工作。\n注意防火。",
          "category": "government"}
    assert editor.put(f"/v1/drafts/{item_id}", json=v2, headers={"If-Match": "1"}).status_code == 200
    # an upload with an Idempotency-Key is applied once; its repeat answers the same
    once = upload(editor, item_id, PNG, "image/png", 2, **{"Idempotency-Key": "upload-attempt-0001"})
    twice = upload(editor, item_id, PNG, "image/png", 2, **{"Idempotency-Key": "upload-attempt-0001"})
    assert once.status_code == twice.status_code == 201, (once.text, twice.text)
    assert twice.json()["id"] == once.json()["id"] and twice.headers["idempotent-replayed"] == "true"

    diff = editor.get(f"/v1/drafts/{item_id}/diff", params={"from": 1, "to": 3})
    assert diff.status_code == 200, diff.text
    body = diff.json()
    assert (body["draft_id"], body["from"], body["to"]) == (item_id, 1, 3)
    changes = {c["field"]: c for c in body["changes"]}
    assert list(changes) == ["title", "body", "category", "attachments"]
    assert (changes["title"]["before"], changes["title"]["after"]) == (DRAFT["title"], v2["title"])
    assert (changes["category"]["before"], changes["category"]["after"]) == (None, "government")
    assert changes["attachments"]["before"] == [] and len(changes["attachments"]["after"]) == 1
    hunks = changes["body"]["hunks"]
    assert [h["op"] for h in hunks] == ["equal", "replace", "equal", "insert"]
    replaced = hunks[1]
    assert (replaced["before"], replaced["after"]) == (["今年植树节前后集中开展义务植树。"], ["今年植树节前后集中开展全民义务植树。"])
    chars = replaced["lines"][0]["chars"]
    assert [c for c in chars if c["op"] != "equal"] == [
        {"op": "insert", "before_start": 11, "before_end": 11, "after_start": 11, "after_end": 13, "before": "",
         "after": "全民"}]
    assert hunks[3]["after"] == ["注意防火。"] and hunks[0]["before"] == []  # equal hunks carry no text
    # either direction; the same version is no change; unknown versions are 404
    back = editor.get(f"/v1/drafts/{item_id}/diff", params={"from": 3, "to": 1}).json()
    assert [c["field"] for c in back["changes"]] == ["title", "body", "category", "attachments"]
    assert editor.get(f"/v1/drafts/{item_id}/diff", params={"from": 2, "to": 2}).json()["changes"] == []
    assert_error(editor.get(f"/v1/drafts/{item_id}/diff", params={"from": 1, "to": 9}), 404, "revision_not_found")
    assert_error(editor.get(f"/v1/drafts/{item_id}/diff", params={"from": 1}), 422, "validation_failed")
    assert_error(editor.get(f"/v1/drafts/{item_id}/diff", params={"from": "x", "to": 2}), 422, "validation_failed")
    assert_error(editor.get("/v1/drafts/nope/diff", params={"from": 1, "to": 2}), 404, "draft_not_found")
    assert people.content("reviewer1").get(f"/v1/drafts/{item_id}/diff", params={"from": 1, "to": 2}).status_code == 200
    assert_error(people.content(other_unit_editor(people)).get(f"/v1/drafts/{item_id}/diff",
                                                               params={"from": 1, "to": 2}), 403, "other_unit")

    # -- gRPC: the same diff, and attachments listed, described and removed
    async def over_grpc():
        md = (("authorization", f"Bearer {people.token('editor')}"),)
        async with grpc.aio.insecure_channel(stack.services["content"].grpc_target) as channel:
            stub = cpb_grpc.ContentServiceStub(channel)
            diff = await stub.DiffRevisions(cpb.DiffRevisionsRequest(id=item_id, from_version=1, to_version=3),
                                            metadata=md)
            assert [c.field for c in diff.changes] == ["title", "body", "category", "attachments"]
            assert diff.changes[0].after_json == f'"{v2["title"]}"'
            assert diff.changes[1].hunks[1].lines[0].chars[1].after == "全民"
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.DiffRevisions(cpb.DiffRevisionsRequest(id=item_id, from_version=1, to_version=8),
                                         metadata=md)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            assert dict(err.value.trailing_metadata())["error-code"] == "revision_not_found"
            listed = await stub.ListAttachments(cpb.GetDraftRequest(id=item_id), metadata=md)
            assert [a.content_type for a in listed.items] == ["image/png"]
            one = await stub.GetAttachment(cpb.GetAttachmentRequest(id=listed.items[0].attachment_id), metadata=md)
            assert one.sha256 == hashlib.sha256(PNG).hexdigest() and one.url.endswith(one.attachment_id)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.DeleteAttachment(cpb.DeleteAttachmentRequest(
                    draft_id=item_id, attachment_id=one.attachment_id, if_match=2), metadata=md)
            assert dict(err.value.trailing_metadata())["error-code"] == "version_conflict"
            after = await stub.DeleteAttachment(cpb.DeleteAttachmentRequest(
                draft_id=item_id, attachment_id=one.attachment_id, if_match=3), metadata=md)
            assert after.version == 4 and list(after.attachments) == []
    asyncio.run(over_grpc())
    assert stored_files(stack) == []
    assert login(stack, "editor")  # the stack is still healthy
