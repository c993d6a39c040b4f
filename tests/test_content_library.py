"""The cloud library (云稿库) and reprints (转载), against real processes: every approved item
listed for every unit with its unit's name, search and filters, paging, the reprint that
keeps its source and the original title, the reprint count, retracted items leaving at once,
and the gRPC side."""
from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import grpc
import pytest

from govmedia.content.v1 import content_pb2 as cpb
from govmedia.content.v1 import content_pb2_grpc as cpb_grpc
from govmedia.events.v1 import events_pb2 as ev
from tests.helpers import assert_error, client, eventually
from tests.test_content_attachments import PNG, matrix_client_token, upload
from tests.test_content_review import ALL_CHECKS, People, decide, last_event

PASSWORD = "library-pass-2026"
HOME_REVIEWERS = ("reviewer1", "reviewer2", "reviewer3")
CITY_REVIEWERS = ("lib-r1", "lib-r2", "lib-r3")


@pytest.fixture
def stack(stack_factory, db_backend):
    return stack_factory(db_backend, only=("account", "content", "review"))


def city_unit(people: People) -> dict:
    """A city under the demo province with its government office: an editor and three reviewers."""
    ops = people.account("ops")
    province = ops.get("/v1/regions").json()["items"][0]
    city = ops.post("/v1/regions", json={"name": "云稿市", "parent_id": province["id"], "level": "city"}).json()
    unit = ops.post("/v1/units", json={"name": "云稿市政府办", "region_id": city["id"]}).json()
    for username, role in (("lib-editor", "editor"), ("lib-r1", "section_head"), ("lib-r2", "deputy"),
                           ("lib-r3", "principal")):
        made = ops.post("/v1/users", json={"username": username, "password": PASSWORD, "unit_id": unit["id"],
                                           "roles": [role]})
        assert made.status_code == 201, made.text
        people.token(username, PASSWORD)
    return {"province": province["id"], "city": city["id"], "unit": unit["id"]}


def create(people: People, author: str, **fields) -> dict:
    """A draft (by default to the whole province: the demo editor's unit is the province's).
    A new unit's first draft waits until content's directory knows the unit (from events)."""
    body = {"body": "正文", "targets": {"scope": "all"}, **fields}
    r = eventually(lambda: (r := people.content(author).post("/v1/drafts", json=body)).status_code == 201 and r)
    return r.json()


def approve(people: People, item_id: str, author: str = "editor", reviewers=HOME_REVIEWERS) -> dict:
    """Submit and pass the three levels; the draft once content has heard of the approval."""
    assert people.content(author).post(f"/v1/drafts/{item_id}/submit").status_code == 200

    def open_one():
        items = people.review(reviewers[0]).get("/v1/reviews", params={"item_id": item_id,
                                                                       "state": "in_review"}).json()["items"]
        return items[0] if items else None
    review = eventually(open_one)
    for reviewer in reviewers:
        r = decide(people, reviewer, review["id"], decision="approve", checks=ALL_CHECKS, comment="同意")
        assert r.status_code == 200, r.text

    def approved():
        draft = people.content(author).get(f"/v1/drafts/{item_id}").json()
        return draft if draft["status"] == "approved" else None
    return eventually(approved)


def ids(page: dict) -> list[str]:
    return [item["id"] for item in page["items"]]


def test_library_search_reprint_and_retraction(stack):
    people = People(stack)
    where = city_unit(people)
    editor, city_editor = people.content("editor"), people.content("lib-editor")

    flood = create(people, "editor", title="全省防汛抗旱工作会议召开", body="会议部署水库安全度汛。\n各地要压实责任。",
                   category="government")
    assert upload(editor, flood["id"], PNG, "image/png", 1, name="会场.png").status_code == 201
    livelihood = create(people, "editor", title="关于发布民生实事项目的通知", subtitle="十件实事", category="livelihood")
    doomed = create(people, "editor", title="一条将被撤回的消息", category="government")
    festival = create(people, "lib-editor", title="云稿市文化节开幕", body="文化节为期七天。", category="culture",
                      targets={"regions": [where["city"]]})  # a city pushes within its own region
    for item in (flood, livelihood, doomed):
        approve(people, item["id"])
    approve(people, festival["id"], "lib-editor", CITY_REVIEWERS)
    order = [festival["id"], doomed["id"], livelihood["id"], flood["id"]]  # newest approval first
    never_submitted = create(people, "editor", title="防汛草稿，未送审")

    # -- everyone signed in reads the library: newest first, unit names, never unapproved items
    reader = people.content("handler")
    listed = eventually(lambda: (page := reader.get("/v1/library").json())
                        and all(i["unit_name"] for i in page["items"]) and page)
    assert ids(listed) == order and never_submitted["id"] not in ids(listed)
    first = listed["items"][-1]
    assert (first["unit_name"], first["title"], first["reprint_count"], first["body"]) == (
        "省政府办公厅", flood["title"], 0, None)
    assert first["excerpt"].startswith("会议部署水库") and first["approved_at"] and len(first["attachments"]) == 1
    assert listed["items"][0]["unit_name"] == "云稿市政府办"
    search = lambda **params: ids(reader.get("/v1/library", params=params).json())
    assert search(q="防汛") == [flood["id"]]
    assert search(q="水库") == [flood["id"]]          # the body
    assert search(q="十件实事") == [livelihood["id"]]  # the subtitle
    assert search(q="100%_") == []                     # LIKE wildcards are literal
    assert search(category="livelihood") == [livelihood["id"]]
    assert search(region=where["city"]) == [festival["id"]]
    assert search(region=where["province"]) == order
    assert search(region=where["city"], category="government") == []
    today = datetime.now(ZoneInfo("Asia/Shanghai")).date()
    assert search(**{"from": today.isoformat(), "to": today.isoformat()}) == order
    assert search(to=(today - timedelta(days=1)).isoformat()) == []
    assert search(**{"from": (today + timedelta(days=1)).isoformat()}) == []
    assert search(**{"from": f"{today.isoformat()}T00:00:00+08:00"}) == order
    page1 = reader.get("/v1/library", params={"limit": 3}).json()
    page2 = reader.get("/v1/library", params={"limit": 3, "cursor": page1["next_cursor"]}).json()
    assert ids(page1) + ids(page2) == order and page2["next_cursor"] is None
    one = reader.get(f"/v1/library/{flood['id']}").json()
    assert one["body"] == "会议部署水库安全度汛。\n各地要压实责任。" and one["unit_name"] == "省政府办公厅"
    assert_error(reader.get(f"/v1/library/{never_submitted['id']}"), 404, "library_item_not_found")
    assert_error(reader.get("/v1/library", params={"from": "2026-13-40"}), 422, "validation_failed")
    assert_error(reader.get("/v1/library", params={"cursor": "!!not-a-cursor!!"}), 422, "validation_failed")
    assert_error(reader.get("/v1/library", params={"limit": 0}), 422, "validation_failed")
    assert_error(client(stack, "content").get("/v1/library"), 401, "unauthenticated")
    matrix = client(stack, "content", matrix_client_token(people, flood["unit_id"]))
    assert_error(matrix.get("/v1/library"), 403, "client_not_allowed")

    # -- a reprint: a draft of the caller's unit, source named, title locked, attachments along
    assert_error(reader.post(f"/v1/library/{flood['id']}/reprint"), 403, "role_required")
    assert_error(city_editor.post(f"/v1/library/{never_submitted['id']}/reprint"), 404, "library_item_not_found")
    assert_error(city_editor.post(f"/v1/library/{flood['id']}/reprint", json={"targets": {"scope": "some"}}), 422,
                 "validation_failed")
    made = city_editor.post(f"/v1/library/{flood['id']}/reprint",
                            json={"targets": {"regions": [where["city"]], "platforms": ["weibo"]}})
    assert made.status_code == 201, made.text
    reprint = made.json()
    assert made.headers["location"] == f"/v1/drafts/{reprint['id']}" and made.headers["etag"] == '"1"'
    assert (reprint["unit_id"], reprint["status"], reprint["reprint"], reprint["reprint_of"]) == (
        where["unit"], "draft", True, flood["id"])
    assert reprint["title"] == reprint["original_title"] == flood["title"]
    assert reprint["source"]["name"] == "省政府办公厅"
    assert reprint["source"]["url"].endswith(f"/v1/library/{flood['id']}")
    assert reprint["body"] == one["body"] and reprint["targets"] == {"regions": [where["city"]],
                                                                      "platforms": ["weibo"]}
    copied, original_file = reprint["attachments"][0], one["attachments"][0]
    assert copied["id"] != original_file["id"] and copied["sha256"] == original_file["sha256"]
    assert city_editor.get(copied["url"]).content == PNG
    assert search(q="防汛") == [flood["id"]]
    assert reader.get(f"/v1/library/{flood['id']}").json()["reprint_count"] == 1

    # the reprint rules hold on every later change
    put = lambda body, version: city_editor.put(f"/v1/drafts/{reprint['id']}", headers={"If-Match": str(version)},
                                                json={"title": reprint["title"], "body": reprint["body"],
                                                      "source": reprint["source"],
                                                      "targets": {"regions": [where["city"]]},
                                                      **body})
    assert_error(put({"title": "防汛会议召开（转）"}, 1), 422, "reprint_title_locked")
    assert_error(put({"source": None}, 1), 422, "reprint_source_required")
    assert_error(put({"source": {"name": "   "}}, 1), 422, "validation_failed")
    assert city_editor.get(f"/v1/drafts/{reprint['id']}").json()["version"] == 1
    edited = put({"subtitle": "转自省政府办公厅", "source": {"name": "省政府办公厅（云稿库）",
                                                         "url": reprint["source"]["url"]}}, 1)
    assert edited.status_code == 200 and edited.json()["version"] == 2, edited.text
    # removing the copied file from the reprint leaves the original's in place
    removed = city_editor.delete(f"/v1/drafts/{reprint['id']}/attachments/{copied['id']}", headers={"If-Match": "2"})
    assert removed.status_code == 200, removed.text
    assert reader.get(original_file["url"]).content == PNG

    # the reprint goes through its own unit's review with `reprint_of` in the snapshot
    approve(people, reprint["id"], "lib-editor", CITY_REVIEWERS)
    submitted = asyncio.run(last_event(stack, "GOVMEDIA_CONTENT", "govmedia.content.draft.submitted",
                                       ev.DraftSubmitted))
    assert (submitted.item.item_id, submitted.item.reprint_of) == (reprint["id"], flood["id"])
    assert submitted.item.source.name == "省政府办公厅（云稿库）"
    in_library = reader.get(f"/v1/library/{reprint['id']}").json()
    assert (in_library["reprint_of"], in_library["unit_name"]) == (flood["id"], "云稿市政府办")
    # reprinting a reprint keeps the attribution to where the content comes from
    again = editor.post(f"/v1/library/{reprint['id']}/reprint").json()
    assert again["source"]["name"] == "省政府办公厅（云稿库）" and again["reprint_of"] == reprint["id"]
    # without targets a reprint goes to the unit's own reach (the province's, for its office)
    assert again["targets"] == {"regions": [where["province"]]} and again["title"] == flood["title"]

    # -- a reprint from outside the library: declared with its source, the title kept
    assert_error(editor.post("/v1/drafts", json={"title": "新华社电", "body": "正文", "targets": {"scope": "all"},
                                                 "reprint": True}), 422, "reprint_source_required")
    outside = create(people, "editor", title="新华社：春耕备耕有序推进", reprint=True,
                     source={"name": "新华社", "url": "https://www.news.cn/a"})
    assert outside["reprint"] and outside["original_title"] == "新华社：春耕备耕有序推进"
    assert_error(editor.put(f"/v1/drafts/{outside['id']}", headers={"If-Match": "1"}, json={
        "title": "春耕备耕有序推进", "body": "正文", "source": outside["source"], "targets": {"scope": "all"}}),
        422, "reprint_title_locked")
    # a source alone makes a reprint too (the rule: a draft with a source is one)
    cited = create(people, "editor", title="省统计局：前三季度经济运行情况", source={"name": "省统计局"})
    assert cited["reprint"] and cited["original_title"] == "省统计局：前三季度经济运行情况"

    # -- retraction takes an item out of the library at once
    assert people.content("reviewer3").post(f"/v1/items/{doomed['id']}/retract",
                                            json={"reason": "内容有误"}).status_code == 200
    assert doomed["id"] not in ids(reader.get("/v1/library").json())
    assert_error(reader.get(f"/v1/library/{doomed['id']}"), 404, "library_item_not_found")
    assert_error(city_editor.post(f"/v1/library/{doomed['id']}/reprint"), 404, "library_item_not_found")

    # -- gRPC: the same library and reprint
    async def over_grpc():
        md = lambda name: (("authorization", f"Bearer {people.token(name)}"),)
        async with grpc.aio.insecure_channel(stack.services["content"].grpc_target) as channel:
            stub = cpb_grpc.ContentServiceStub(channel)
            found = await stub.ListLibrary(cpb.ListLibraryRequest(q="防汛", approved_from=today.isoformat()),
                                           metadata=md("handler"))
            assert [i.id for i in found.items] == [reprint["id"], flood["id"]]  # the reprint is approved too
            assert (found.items[1].reprint_count, found.items[1].unit_name) == (1, "省政府办公厅")
            assert (found.items[0].reprint_of, len(found.items[1].attachments)) == (flood["id"], 1)
            item = await stub.GetLibraryItem(cpb.GetLibraryItemRequest(id=flood["id"]), metadata=md("handler"))
            assert item.body.startswith("会议部署")
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.ListLibrary(cpb.ListLibraryRequest(approved_to="yesterday"), metadata=md("handler"))
            assert dict(err.value.trailing_metadata())["error-code"] == "validation_failed"
            draft = await stub.ReprintItem(cpb.ReprintItemRequest(item_id=livelihood["id"]), metadata=md("lib-editor"))
            assert (draft.reprint, draft.reprint_of, draft.fields.title) == (True, livelihood["id"], livelihood["title"])
            assert draft.fields.source.name == "省政府办公厅" and not draft.fields.targets.all
            assert list(draft.fields.targets.regions) == [where["city"]]  # the city's own reach
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.ReprintItem(cpb.ReprintItemRequest(item_id=doomed["id"]), metadata=md("lib-editor"))
            assert dict(err.value.trailing_metadata())["error-code"] == "library_item_not_found"
    asyncio.run(over_grpc())
    assert reader.get(f"/v1/library/{livelihood['id']}").json()["reprint_count"] == 1
