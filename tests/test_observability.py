"""Observability, with the services as real processes: GET /metrics of every service after a
push, a retraction, a petition and some gRPC calls (Prometheus text, parsed by
prometheus_client's own parser); JSON log lines carrying the ids of a trace this test caused
(the spans received by a local OTLP/HTTP endpoint); database errors logged without their
parameters."""
from __future__ import annotations

import io
import json
import logging
import threading
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from govmedia.account.v1 import account_pb2 as apb
from govmedia.account.v1 import account_pb2_grpc as apb_grpc
from govmedia_kit import workdays
from govmedia_kit.config import SERVICES
from govmedia_cli.stack import TLS
from tests.helpers import client, eventually, login
from tests.webhook_receiver import Receiver, client_secret

RESPONSIBLE = {"principal": "张三", "deputy": "李四", "chief_editor": "王五"}
CHECKS = {"policy": True, "wording": True, "secrecy": True, "law": True}
PHONE = "139 8765 4321"
PETITION = {"category": "complaint", "title": "路灯不亮", "content": "幸福路北段路灯连续一周不亮。", "channel": "web",
            "contact": {"name": "赵六", "phone": PHONE}, "location": "示范市示范区幸福路 9 号"}


def scrape(stack, service: str) -> dict:
    """name → [(labels, value)] of every sample of the service's /metrics."""
    r = httpx.get(f"{stack.services[service].base_url}/metrics", timeout=10, verify=TLS)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            samples.setdefault(s.name, []).append((s.labels, s.value))
    samples["_text"] = r.text  # type: ignore[assignment]
    return samples


def value(samples: dict, name: str, **labels) -> float | None:
    """The sample of `name` whose labels include `labels` (None: no such sample)."""
    found = [v for ls, v in samples.get(name, []) if all(ls.get(k) == w for k, w in labels.items())]
    return sum(found) if found else None


def spec_durables(service: str) -> set[str]:
    import importlib

    module = importlib.import_module(f"services.{service}.service")
    return {c.durable for c in module.build_spec().consumers}


def register_webhook_account(ops, receiver) -> dict:
    unit_id = ops.get("/v1/units").json()["items"][0]["id"]
    r = ops.post("/v1/accounts", json={
        "unit_id": unit_id, "platform": "weibo", "name": "示范省发布", "handle": "obs-weibo", "opened_on": "2025-01-02",
        "responsible": RESPONSIBLE,
        "delivery": {"mode": "webhook", "url": receiver.url("obs-1"), "secret": client_secret("obs-1")},
    })
    assert r.status_code == 201, r.text
    return r.json()


def review_of(reviews, item_id: str):
    found = reviews.get("/v1/reviews", params={"item_id": item_id}).json()["items"]
    return next((r for r in found if r["state"] == "in_review"), None)


async def test_metrics_endpoint_of_every_service(calendar_file, stack_factory):
    stack = stack_factory("sqlite", env={"GOVMEDIA_METRICS_REFRESH_S": "0.3"})
    with Receiver() as receiver:
        ops = client(stack, "account", login(stack, "ops"))
        register_webhook_account(ops, receiver)

        # A push through content → review (three levels) → dispatch → the webhook client.
        editor = client(stack, "content", login(stack, "editor"))
        draft = editor.post("/v1/drafts", json={"title": "关于指标的通知", "body": "各单位：……",
                                                "targets": {"scope": "all"}})
        assert draft.status_code == 201, draft.text
        item_id = draft.json()["id"]
        assert editor.post(f"/v1/drafts/{item_id}/submit").status_code == 200
        reviewers = {n: client(stack, "review", login(stack, n)) for n in ("reviewer1", "reviewer2", "reviewer3")}
        review = eventually(lambda: review_of(reviewers["reviewer1"], item_id), timeout=30)
        for name in ("reviewer1", "reviewer2", "reviewer3"):
            r = reviewers[name].post(f"/v1/reviews/{review['id']}/decisions",
                                     json={"decision": "approve", "comment": "同意", "checks": CHECKS})
            assert r.status_code == 200, r.text
        eventually(lambda: receiver.holds("obs-1") == {item_id}, timeout=30)
        # … and its retraction: the kill is acknowledged by the client.
        retract = client(stack, "content", login(stack, "reviewer3")).post(
            f"/v1/items/{item_id}/retract", json={"reason": "撤回测试"})
        assert retract.status_code == 200, retract.text
        dispatch = client(stack, "dispatch", login(stack, "ops"))
        eventually(lambda: dispatch.get(f"/v1/retractions/{item_id}").json().get("completed_at"), timeout=30)

        # A petition (public intake) and a miss.
        public = client(stack, "petition")
        petition = public.post("/v1/petitions", json=PETITION)
        assert petition.status_code == 201, petition.text
        assert editor.get("/v1/drafts/no-such-draft-4242").status_code == 404
        assert editor.get("/no/such/path/4242").status_code == 404

        # gRPC: a health check and a refused call.
        async with grpc.aio.insecure_channel(stack.services["account"].grpc_target) as channel:
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await apb_grpc.AccountServiceStub(channel).ListRegions(apb.ListRequest())
            refused_code = refused.value.code().name

        # The request counter of a route goes up with a call to it (by route template).
        before = scrape(stack, "content")
        route = "/v1/drafts/{draft_id}"
        assert route in {ls["route"] for ls, _ in before["govmedia_http_requests_total"]}, \
            sorted({ls["route"] for ls, _ in before["govmedia_http_requests_total"]})
        was = value(before, "govmedia_http_requests_total", method="GET", route=route, status="200") or 0
        assert editor.get(f"/v1/drafts/{item_id}").status_code == 200
        after = scrape(stack, "content")
        assert value(after, "govmedia_http_requests_total", method="GET", route=route, status="200") == was + 1
        assert value(after, "govmedia_http_requests_total", method="POST", route="/v1/drafts", status="201") >= 1
        assert value(after, "govmedia_http_requests_total", method="POST", route="/v1/drafts/{draft_id}/submit",
                     status="200") >= 1
        assert value(after, "govmedia_http_requests_total", route=route, status="404") >= 1
        assert value(after, "govmedia_http_requests_total", route="unmatched", status="404") >= 1
        assert value(after, "govmedia_http_request_duration_seconds_count", method="GET", route=route) >= was + 1
        assert "govmedia_http_server_errors_total" not in after or \
            value(after, "govmedia_http_server_errors_total", route=route) is None

        for service in SERVICES:
            samples = scrape(stack, service)
            text = samples["_text"]
            # Route templates and counts only: no raw ids, nothing a citizen wrote.
            for secret in (item_id, "4242", petition.json()["id"], PHONE, "13987654321", "赵六", "路灯"):
                assert secret not in text, (service, secret)
            assert value(samples, "target_info", service_name=f"govmedia-{service}") == 1
            # The outbox: backlog and the age of the oldest unsent event, on every service.
            assert value(samples, "govmedia_outbox_backlog") is not None, service
            assert value(samples, "govmedia_outbox_oldest_age_seconds") is not None, service
            assert value(samples, "govmedia_nats_connected") == 1
            # The cyclic collector: start-up's objects frozen (collector.tune_gc), its pauses counted.
            assert value(samples, "govmedia_gc_frozen_objects") > 10_000, service
            assert value(samples, "govmedia_gc_pause_seconds_total", generation="0") >= 0
            assert value(samples, "python_gc_collections_total", generation="2") is not None
            # Consumer lag per durable: each of the service's durables, with its stream.
            want = spec_durables(service)
            got = {ls["durable"]: ls["stream"] for ls, _ in samples.get("govmedia_consumer_pending_messages", [])}
            assert set(got) == want, (service, got, want)
            assert all(s.startswith("GOVMEDIA_") for s in got.values())
            assert value(samples, "govmedia_http_requests_total", route="/readyz") >= 1

        account = scrape(stack, "account")
        assert value(account, "govmedia_grpc_server_handled_total", grpc_service="grpc.health.v1.Health",
                     grpc_method="Check", grpc_code="OK") >= 1
        assert value(account, "govmedia_grpc_server_handled_total", grpc_method="ListRegions",
                     grpc_code=refused_code) >= 1
        assert value(account, "govmedia_grpc_server_handling_seconds_count", grpc_method="ListRegions") >= 1
        assert value(account, "govmedia_http_requests_total", method="POST", route="/v1/auth/token",
                     status="200") >= 1

        # Dispatch: deliveries and kills per state, and the retraction complete (computed by
        # the periodic task: wait for a round after the kill's acknowledgement).
        def dispatch_done():
            d = scrape(stack, "dispatch")
            return (value(d, "govmedia_dispatch_deliveries", kind="kill", state="acknowledged") == 1
                    and value(d, "govmedia_dispatch_retractions_open") == 0 and d)

        d = eventually(dispatch_done, timeout=30)
        assert value(d, "govmedia_dispatch_deliveries", kind="publish", state="acknowledged") == 1
        assert value(d, "govmedia_dispatch_deliveries", kind="publish", state="failed") == 0
        assert {ls["state"] for ls, _ in d["govmedia_dispatch_deliveries"]} >= {
            "pending", "in_flight", "delivered", "acknowledged", "failed", "cancelled"}
        assert value(d, "govmedia_dispatch_kills_outstanding") == 0
        assert value(d, "govmedia_dispatch_kill_completeness_ratio") == 1
        assert value(d, "govmedia_dispatch_kill_completeness_min_ratio") == 1
        assert value(d, "govmedia_dispatch_retraction_oldest_open_age_seconds") == 0
        assert value(d, "govmedia_consumer_pending_messages", durable="dispatch-item-retracted",
                     stream="GOVMEDIA_CONTENT") == 0

        # Petition: SLA warnings and breaches (none due yet), open cases past their deadline.
        p = eventually(lambda: (s := scrape(stack, "petition"))
                       and value(s, "govmedia_petition_sla_timers_fired", kind="breach") is not None and s)
        assert value(p, "govmedia_petition_sla_timers_fired", kind="warning") == 0
        assert value(p, "govmedia_petition_sla_timers_fired", kind="breach") == 0
        assert value(p, "govmedia_petition_sla_overdue_open") == 0
        # The calendar file of the test covers 2027; chinesecalendar covers up to 2026.
        today = workdays.local_date(datetime.now(timezone.utc))
        assert value(p, "govmedia_calendar_covered_days") == workdays.covered_days(today) >= 0
        assert value(p, "govmedia_http_requests_total", method="POST", route="/v1/petitions", status="201") == 1


class OtlpReceiver:
    """A local OTLP/HTTP traces endpoint: keeps the spans the services export."""

    def __init__(self):
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        self.spans: list = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                request = ExportTraceServiceRequest()
                request.ParseFromString(raw)
                for rs in request.resource_spans:
                    for ss in rs.scope_spans:
                        receiver.spans.extend(ss.spans)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def span_ids(self, trace_id: str) -> set[str]:
        return {s.span_id.hex() for s in list(self.spans) if s.trace_id.hex() == trace_id}


def test_json_logs_carry_the_trace_and_span_ids(calendar_file, stack_factory):
    trace_id, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    with OtlpReceiver() as otlp:
        stack = stack_factory("sqlite", only=("petition",), load_demo=False, env={
            "LOG_FORMAT": "json", "OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.url,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", "OTEL_BSP_SCHEDULE_DELAY": "100",
        })
        r = httpx.post(f"{stack.services['petition'].base_url}/v1/petitions", json=PETITION,
                       headers={"traceparent": f"00-{trace_id}-{parent}-01"}, timeout=10)
        assert r.status_code == 201, r.text
        petition_id = r.json()["id"]
        log_path = stack.services["petition"].log_path

        def traced_lines():
            complete = log_path.read_text(encoding="utf-8").split("\n")[:-1]  # not a line being written
            lines = [json.loads(line) for line in complete if line.strip()]
            return [e for e in lines if e.get("trace_id") == trace_id and petition_id in e["message"]]

        [entry] = eventually(traced_lines, timeout=20)
        # The span the line was written in is one the service exported, in the caller's trace.
        eventually(lambda: entry["span_id"] in otlp.span_ids(trace_id), timeout=20)
        assert entry["span_id"] != parent and len(entry["span_id"]) == 16
        assert entry["service"] == "petition" and entry["level"] == "INFO"
        assert entry["logger"].startswith("services.petition")
        assert {"time", "level", "logger", "message", "service", "trace_id", "span_id"} <= set(entry)
        stack.stop()

    # Every line the process wrote is one JSON object; nothing the citizen wrote is in them.
    text = log_path.read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines
    for line in lines:
        entry = json.loads(line)
        assert isinstance(entry, dict) and {"time", "level", "logger", "message", "service"} <= set(entry), line
    for secret in (PHONE, "13987654321", "赵六", "幸福路北段"):
        assert secret not in text


async def test_database_errors_are_logged_without_their_parameters(tmp_path):
    """A failing statement logged with its traceback (JSON) names the statement, never the values."""
    from sqlalchemy import Column, MetaData, String, Table, insert
    from sqlalchemy.exc import IntegrityError

    from govmedia_kit.db import Database
    from govmedia_kit.logs import JsonFormatter

    phone = "139" + "87654321"  # (built here: a traceback quotes source lines, not values)
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")
    table = Table("contacts", MetaData(), Column("phone", String(30), primary_key=True))
    async with db.engine.begin() as conn:
        await conn.run_sync(table.metadata.create_all)
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter("test"))
    log = logging.getLogger("test.db.errors")
    log.addHandler(handler)
    try:
        async with db.transaction() as s:
            await s.execute(insert(table).values(phone=phone))
        with pytest.raises(IntegrityError):
            async with db.transaction() as s:
                await s.execute(insert(table).values(phone=phone))
        try:
            async with db.transaction() as s:
                await s.execute(insert(table).values(phone=phone))
        except IntegrityError:
            log.exception("insert failed")
    finally:
        log.removeHandler(handler)
        await db.dispose()
    entry = json.loads(out.getvalue())
    assert "IntegrityError" in entry["exception"] and "INSERT INTO contacts" in entry["exception"]
    assert phone not in out.getvalue()
    assert "trace_id" not in entry  # no span here


def test_text_log_format_names_the_span():
    from opentelemetry.sdk.trace import TracerProvider

    from govmedia_kit.logs import TextFormatter, formatter

    record = logging.LogRecord("services.x", logging.INFO, __file__, 1, "hello %s", ("world",), None)
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("op") as span:
        line = TextFormatter("x").format(record)
        ctx = span.get_span_context()
    assert line.endswith("hello world")
    assert f"trace={ctx.trace_id:032x} span={ctx.span_id:016x}" in line
    assert isinstance(formatter("x", "json"), logging.Formatter)
    assert json.loads(formatter("x", "json").format(record))["message"] == "hello world"


async def test_grpc_metrics_for_unary_and_streaming_calls():
    """The kit's gRPC server (a real one, in this process): calls of every shape are counted
    by method and final code, aborted ones with the abort's code, streams that the client
    cancels as CANCELLED, and the responses still arrive whole."""
    import asyncio

    from govmedia_kit import metrics
    from govmedia_kit.grpc import build_server, set_serving

    async def count(request: bytes, context):
        for i in range(int(request.decode())):
            yield str(i).encode()

    async def lookup(request: bytes, context):
        if request == b"missing":
            await context.abort(grpc.StatusCode.NOT_FOUND, "not_found: 不存在")
        return request.upper()

    def add(server):
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.v1.Echo", {
            "Count": grpc.unary_stream_rpc_method_handler(count),
            "Lookup": grpc.unary_unary_rpc_method_handler(lookup),
        }),))

    server, health, port = build_server(0, [add], ["test.v1.Echo"], host="127.0.0.1")
    await server.start()
    await set_serving(health, ["test.v1.Echo"], True)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stream = channel.unary_stream("/test.v1.Echo/Count")
            assert [m async for m in stream(b"3")] == [b"0", b"1", b"2"]
            lookup_call = channel.unary_unary("/test.v1.Echo/Lookup")
            assert await lookup_call(b"abc") == b"ABC"
            with pytest.raises(grpc.aio.AioRpcError) as missing:
                await lookup_call(b"missing")
            assert missing.value.code() == grpc.StatusCode.NOT_FOUND
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
            assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
            watch.cancel()

        def handled(method: str, code: str) -> float | None:
            families = {f.name: f for f in text_string_to_metric_families(metrics.render().decode())}
            return value({"s": [(s.labels, s.value) for s in families["govmedia_grpc_server_handled"].samples
                                if s.name.endswith("_total")]}, "s", grpc_method=method, grpc_code=code)

        assert handled("Count", "OK") == 1
        assert handled("Lookup", "OK") == 1
        assert handled("Lookup", "NOT_FOUND") == 1
        # The server learns of the cancellation a moment after the client.
        deadline = asyncio.get_running_loop().time() + 10
        while handled("Watch", "CANCELLED") is None and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        assert handled("Watch", "CANCELLED") == 1
    finally:
        await server.stop(grace=1)
