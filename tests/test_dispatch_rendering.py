"""Dispatch's pure rules (services/dispatch/domain.py), without a service: per-platform
rendering, targeting and its exclusions, the embargo's parsing, backoff, and the
per-endpoint gate (concurrency limit and circuit breaker)."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from services.dispatch.domain import (
    APP_SUMMARY_MAX, APP_TITLE_MAX, WECHAT_DIGEST_MAX, WECHAT_TITLE_MAX, WEIBO_SUMMARY_MAX, WEIBO_TEXT_MAX, Candidate,
    EndpointGate, RenderError, TargetRule, backoff, cloud_event, endpoint_key, is_endpoint_failure, merge_metrics,
    parse_publish_at, partition_targets, render, render_failures, render_publish, shanghai_day, shorten,
)

IMAGE = {"id": "a1", "kind": "image", "content_type": "image/jpeg", "size": 1000, "sha256": "ab" * 32,
         "name": "封面.jpg", "url": "/v1/attachments/a1"}
IMAGE2 = {**IMAGE, "id": "a2", "url": "/v1/attachments/a2"}
VIDEO = {"id": "v1", "kind": "video", "content_type": "video/mp4", "size": 10_000_000, "sha256": "cd" * 32,
         "name": "现场.mp4", "url": "/v1/attachments/v1"}
LINK = "https://www.example.gov.cn/items/it1"


def item(**over) -> dict:
    base = {"title": "关于开展政务公开日活动的通知", "subtitle": "", "body": "各单位：现将有关事项通知如下。",
            "cover_url": "", "category": "government", "link": LINK, "attachments": [],
            "source": {"name": "新华社", "url": "https://www.news.cn/x"}}
    return {**base, **over}


# --- rendering ---------------------------------------------------------------------------

def test_weibo_short_text_as_written_long_text_headline_summary_link():
    short = render_publish("weibo", item(attachments=[IMAGE, VIDEO]))
    assert short["format"] == "weibo" and short["body"] == "各单位：现将有关事项通知如下。" and not short["truncated"]
    assert short["images"] == [IMAGE["url"]] and short["video"] == VIDEO
    assert short["source"] == {"name": "新华社", "url": "https://www.news.cn/x"} and short["link"] == LINK

    exactly = render_publish("weibo", item(body="字" * WEIBO_TEXT_MAX))
    assert exactly["body"] == "字" * WEIBO_TEXT_MAX and not exactly["truncated"]  # characters, not bytes

    long_body = "第一段，" + "政务公开" * 600  # 2404 characters
    long = render_publish("weibo", item(body=long_body))
    assert long["truncated"] and len(long["body"]) <= WEIBO_TEXT_MAX
    assert long["body"].startswith("【关于开展政务公开日活动的通知】") and long["body"].endswith(LINK)
    assert len(long["summary"]) <= WEIBO_SUMMARY_MAX and long["summary"].endswith("…")
    assert long["summary"] in long["body"] and long["title"] == "关于开展政务公开日活动的通知"
    # the subtitle is the summary when there is one
    assert render_publish("weibo", item(body=long_body, subtitle="副标题摘要"))["summary"] == "副标题摘要"
    # at most nine images
    many = render_publish("weibo", item(attachments=[{**IMAGE, "url": f"/v1/attachments/{i}"} for i in range(12)]))
    assert len(many["images"]) == 9


def test_wechat_title_digest_and_required_cover():
    long_title = "关于" + "进一步加强" * 20 + "的通知"
    got = render_publish("wechat", item(title=long_title, body="正文" * 200, attachments=[IMAGE, IMAGE2]))
    assert got["format"] == "wechat" and len(got["title"]) == WECHAT_TITLE_MAX and got["title"].endswith("…")
    assert len(got["digest"]) <= WECHAT_DIGEST_MAX and got["body"] == "正文" * 200
    assert got["cover_url"] == IMAGE["url"]  # the first image, no cover given
    assert got["content_source_url"] == "https://www.news.cn/x"
    assert render_publish("wechat", item(cover_url="https://cdn/c.jpg", attachments=[IMAGE]))["cover_url"] == \
        "https://cdn/c.jpg"
    assert render_publish("wechat", item(subtitle="摘要", cover_url="https://cdn/c.jpg"))["digest"] == "摘要"
    with pytest.raises(RenderError) as err:
        render_publish("wechat", item(attachments=[VIDEO]))  # a video is no cover
    assert err.value.error.startswith("render: ") and "cover" in err.value.error


def test_douyin_needs_a_video_app_push_and_generic():
    with pytest.raises(RenderError) as err:
        render_publish("douyin", item(attachments=[IMAGE]))
    assert err.value.error == "render: douyin needs a video attachment"
    dy = render_publish("douyin", item(attachments=[IMAGE, VIDEO]))
    assert dy["format"] == "douyin" and dy["video"] == VIDEO and dy["cover_url"] == IMAGE["url"]

    app = render_publish("app", item(title="标题" * 30, body="正文内容" * 40, attachments=[IMAGE]))
    note = app["notification"]
    assert app["format"] == "app" and len(note["title"]) == APP_TITLE_MAX and len(note["summary"]) == APP_SUMMARY_MAX
    assert app["title"] == "标题" * 30 and app["body"] == "正文内容" * 40 and app["attachments"] == [IMAGE]

    for platform in ("kuaishou", "toutiao", "bilibili", "web", "other", "something-new"):
        g = render_publish(platform, item(subtitle="副", cover_url="https://cdn/c.jpg", attachments=[VIDEO]))
        assert g["format"] == "generic" and g["title"] and g["body"] and g["subtitle"] == "副"
        assert g["attachments"] == [VIDEO] and g["source"]["name"] == "新华社"

    failures = render_failures(["weibo", "wechat", "douyin", "app", "wechat"], item())
    assert set(failures) == {"wechat", "douyin"} and all(e.startswith("render: ") for e in failures.values())
    assert render_failures(["wechat", "douyin"], item(attachments=[IMAGE, VIDEO])) == {}


def test_event_data_identifiers_kill_and_stable_event_id():
    data = render("publish", "weibo", item(), item_id="it1", version=3, account_id="acc")
    assert data["item_id"] == "it1" and data["version"] == 3 and data["account_id"] == "acc"
    assert data["platform"] == "weibo" and data["title"]
    kill = render("kill", "wechat", {}, item_id="it1", version=3, account_id="acc", reason="有误")
    assert kill == {"item_id": "it1", "version": 3, "account_id": "acc", "platform": "wechat", "reason": "有误"}
    at = datetime(2026, 3, 1, tzinfo=timezone.utc)
    one, two = cloud_event("d1", "publish", "it1", at, data), cloud_event("d1", "publish", "it1", at, data)
    assert one == two and one["id"] == "d1" and one["type"] == "govmedia.dispatch.item.published"


def test_shorten_and_plain_text_summaries():
    assert shorten("一二三", 3) == "一二三" and shorten("一二三四", 3) == "一二…"
    got = render_publish("app", item(body="第一行\n\n  第二行\t第三行"))
    assert got["notification"]["summary"] == "第一行 第二行 第三行"


# --- targeting -------------------------------------------------------------------------

def test_target_rule_and_exclusions_per_reason():
    rule = TargetRule.of({"regions": ["r"], "unit_kinds": ["department", "institution"]})
    assert rule.unit_kinds == {"department", "institution"} and not rule.empty
    assert TargetRule.of({"unit_kinds": ["party"]}).empty is False
    assert TargetRule.of({}).empty and TargetRule.of({"all": False, "unit_kinds": []}).empty
    candidates = [
        Candidate("a1", "webhook", "weibo", "active", True),
        Candidate("a2", "stream", "app", "active", True),
        Candidate("c1", "webhook", "weibo", "closed", True),
        Candidate("c2", "webhook", "weibo", "closed", False),  # closed wins over gone
        Candidate("s1", "webhook", "weibo", "suspended", True),
        Candidate("g1", "webhook", "weibo", "active", False),
        Candidate("d1", "webhook", "weibo", "deregistered", True),
    ]
    included, excluded = partition_targets(candidates, named=["a1", "zz", "c1"], known=["a1", "c1"])
    assert [c.account_id for c in included] == ["a1", "a2"]
    assert excluded == {"closed": 2, "deregistered": 1, "endpoint_gone": 1, "suspended": 1, "unknown_account": 1}
    assert partition_targets([]) == ([], {})


def test_publish_at_parsing():
    assert parse_publish_at("") is None and parse_publish_at("  ") is None
    assert parse_publish_at("2026-05-01T08:00:00Z") == datetime(2026, 5, 1, 8, tzinfo=timezone.utc)
    assert parse_publish_at("2026-05-01T16:00:00+08:00") == datetime(2026, 5, 1, 8, tzinfo=timezone.utc)
    assert parse_publish_at("2026-05-01T08:00:00") == datetime(2026, 5, 1, 8, tzinfo=timezone.utc)  # naive = UTC
    with pytest.raises(ValueError):
        parse_publish_at("next tuesday")


# --- retries and endpoints ---------------------------------------------------------------

def test_backoff_is_exponential_capped_and_jittered():
    for attempts in range(1, 12):
        d = backoff(attempts, 0.5, 60)
        ceiling = min(60, 0.5 * 2 ** (attempts - 1))
        assert ceiling / 2 <= d <= ceiling
    assert len({round(backoff(3, 0.5, 60), 6) for _ in range(20)}) > 1


def test_endpoint_keys():
    assert endpoint_key("http://127.0.0.1:8080/h/x/ok") == "127.0.0.1:8080"
    assert endpoint_key("https://Hooks.Example.cn/a") == "hooks.example.cn:443"
    assert endpoint_key("http://hooks.example.cn/a") == "hooks.example.cn:80"
    assert endpoint_key(None) == "" and endpoint_key("not a url") == "not a url"
    assert is_endpoint_failure(None) and is_endpoint_failure(503) and not is_endpoint_failure(410)
    assert not is_endpoint_failure(200) and not is_endpoint_failure(404)


def test_endpoint_gate_limit_and_breaker():
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    gate = EndpointGate(limit=2, threshold=3, cooldown_s=10)
    assert gate.free("dead:80", t0) == 2
    gate.started("dead:80", t0)
    gate.started("dead:80", t0)
    assert gate.free("dead:80", t0) == 0 and gate.blocked(t0) == {"dead:80"}
    assert gate.free("ok:80", t0) == 2  # one endpoint full takes nothing from another
    # failures in a row open the breaker at the threshold
    assert gate.finished("dead:80", True, t0) is None
    assert gate.finished("dead:80", True, t0) is None
    gate.started("dead:80", t0)
    opened = gate.finished("dead:80", True, t0)
    assert opened == t0 + timedelta(seconds=10)
    assert gate.free("dead:80", t0 + timedelta(seconds=5)) == 0 and gate.open_keys(t0) == {"dead:80": opened}
    # half-open after the cool-down: one try
    later = t0 + timedelta(seconds=11)
    assert gate.free("dead:80", later) == 1
    gate.started("dead:80", later)
    assert gate.free("dead:80", later) == 0  # the trial is in flight
    reopened = gate.finished("dead:80", True, later)  # the trial failed: open again
    assert reopened == later + timedelta(seconds=10) and gate.free("dead:80", later) == 0
    # the next trial succeeds: closed, the count reset
    again = reopened + timedelta(seconds=1)
    gate.started("dead:80", again)
    assert gate.finished("dead:80", False, again) is None
    assert gate.free("dead:80", again) == 2 and gate.breakers == {} and gate.in_flight == {}
    # an answer other than 5xx between failures resets the count
    for failed in (True, True, False, True, True):
        gate.started("flaky:80", t0)
        assert gate.finished("flaky:80", failed, t0) is None


# --- metrics -----------------------------------------------------------------------------

def test_metrics_days_and_merge():
    assert shanghai_day(datetime(2026, 3, 1, 15, 59, tzinfo=timezone.utc)) == "2026-03-01"
    assert shanghai_day(datetime(2026, 3, 1, 16, 0, tzinfo=timezone.utc)) == "2026-03-02"  # midnight in Beijing
    merged = merge_metrics([{"item_id": "i", "day": "2026-03-01", "reads": 2, "likes": 1},
                            {"item_id": "i", "day": "2026-03-01", "reads": 3, "comments": 4},
                            {"item_id": "i", "day": "2026-03-02", "shares": 1}])
    assert merged == {("i", "2026-03-01"): {"reads": 5, "likes": 1, "shares": 0, "comments": 4},
                      ("i", "2026-03-02"): {"reads": 0, "likes": 0, "shares": 1, "comments": 0}}
