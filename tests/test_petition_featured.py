"""A good answer featured (精选) by the unit that gave it: the petition service sends it on with
the citizen's name, numbers and addresses stripped, and content makes a draft of it, once,
which then goes through the normal review. Account, petition and content as processes."""
from __future__ import annotations

import jwt
import pytest

from services.petition.domain import redacted
from tests.helpers import assert_error, client, eventually, login

COMPLAINT = {"category": "complaint", "title": "幸福路路灯不亮，联系13812345678",
             "content": "我是张三，住幸福路 1 号，电话13812345678，邮箱zs@example.com，路灯坏了一个月。",
             "channel": "web", "contact": {"name": "张三", "phone": "13812345678"}}
ANSWER = "张三您好：路灯已于 11 月 20 日修复，如仍有问题请拨打 020-12345678。"


def test_redaction_masks_numbers_addresses_and_names():
    text = "张三，身份证11010519491231002X，手机13812345678，座机020-12345678，卡号6222020200112233445，zs@example.com"
    out = redacted(text, ("张三",))
    for secret in ("张三", "11010519491231002X", "13812345678", "020-12345678", "6222020200112233445",
                   "zs@example.com"):
        assert secret not in out
    assert out.startswith("张某") and "身份证" in out
    assert redacted("2026年11月共120户，投诉编号 20261123") == "2026年11月共120户，投诉编号 20261123"


@pytest.fixture
def stack(calendar_file, stack_factory, db_backend):
    return stack_factory(db_backend, only=("account", "petition", "content"))


def test_a_featured_answer_becomes_a_draft_without_personal_data(stack):
    handler_token = login(stack, "handler")
    handler, editor = client(stack, "petition", handler_token), client(stack, "petition", login(stack, "editor"))
    home = client(stack, "account", login(stack, "ops")).get("/v1/units").json()["items"][0]["id"]
    pid = client(stack, "petition").post("/v1/petitions", json=COMPLAINT).json()["id"]
    assert handler.post(f"/v1/petitions/{pid}/accept", json={}).status_code == 200

    def assign():
        r = handler.post(f"/v1/petitions/{pid}/assign", json={"unit_id": home})
        return r if r.status_code == 200 else None
    eventually(assign)  # once the directory knows the unit
    assert_error(handler.post(f"/v1/petitions/{pid}/feature", json={}), 409, "invalid_state")  # not answered yet
    assert handler.post(f"/v1/petitions/{pid}/start", json={}).status_code == 200
    answered = handler.post(f"/v1/petitions/{pid}/answer", json={"answer": ANSWER}).json()
    assert "feature" in answered["actions"]

    assert_error(editor.post(f"/v1/petitions/{pid}/feature", json={}), 403, "role_required")
    featured = handler.post(f"/v1/petitions/{pid}/feature", json={})
    assert featured.status_code == 200, featured.text
    assert featured.json()["featured_at"]
    assert_error(handler.post(f"/v1/petitions/{pid}/feature", json={}), 409, "already_featured")
    timeline = handler.get(f"/v1/petitions/{pid}/timeline").json()["items"]
    assert timeline[-1]["action"] == "feature"

    # content: one draft of the unit, written for the handler, with nothing that identifies the citizen
    drafts = client(stack, "content", login(stack, "editor"))

    def the_draft():
        found = [d for d in drafts.get("/v1/drafts", params={"limit": 200}).json()["items"]
                 if d.get("petition_id") == pid]
        return found or None
    [draft] = eventually(the_draft, timeout=30)
    handler_id = jwt.decode(handler_token, options={"verify_signature": False})["sub"]
    assert draft["author_id"] == handler_id and draft["unit_id"] == home and draft["status"] == "draft"
    assert draft["title"].startswith("网民留言答复：幸福路路灯不亮") and draft["category"] == "网民留言答复"
    for secret in ("张三", "13812345678", "zs@example.com", "020-12345678"):
        assert secret not in draft["title"] + draft["body"], secret
    assert "路灯已于 11 月 20 日修复" in draft["body"] and "张某" in draft["body"]

    # … and it goes through the normal review: an editor of the unit sends it in.
    submitted = drafts.post(f"/v1/drafts/{draft['id']}/submit")
    assert submitted.status_code == 200, submitted.text
    assert submitted.json()["status"] != "draft"
