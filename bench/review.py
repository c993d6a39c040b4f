"""`make bench-review`: machine review throughput, and whole review flows through the services.

1. The machine reviewer (services/review/machine) with a 10,000-term lexicon over ordinary
   Chinese government prose: MB of text checked per second (bench/machine_review.py).
2. Account, content, review and dispatch as processes (SQLite, their own nats-server):
   `--flows` complete flows, `--concurrency` at a time, each draft → submit → the machine
   check → three approvals → dispatch has planned the push (its publication exists).
   flows_per_s counts complete flows per second of wall time; approve_to_dispatch is
   the time from the last approval's answer to dispatch's publication being readable
   (polled every 5 ms, so it is at most 5 ms pessimistic).

Prints, as its last line:
BENCH review lexicon_terms=10000 check_mb_per_s=<float> flows_per_s=<float> approve_to_dispatch_p99_ms=<float>
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "gen")]

from bench.machine_review import measure  # noqa: E402
from govmedia_cli.stack import Stack  # noqa: E402

CHECKS = {"policy": True, "wording": True, "secrecy": True, "law": True}
BODY = ("为深入贯彻落实省委省政府关于优化营商环境的决策部署，进一步提升政务服务效能，"
        "我省持续推进“一网通办”改革，全省政务服务事项网上可办率达到百分之九十八。") * 20


async def token(http: httpx.AsyncClient, base: str, username: str) -> dict:
    r = await http.post(f"{base}/v1/auth/token", data={"username": username, "password": "demo-pass-2026"})
    r.raise_for_status()
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


async def until(check, timeout: float, what: str, every: float = 0.005):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(every)
    raise SystemExit(f"bench: timed out waiting for {what}")


async def flow(http, urls: dict, people: dict, n: int) -> float:
    """One item from draft to dispatch; returns approve → dispatch-planned seconds."""
    con, rev, dis = urls["content"], urls["review"], urls["dispatch"]
    r = await http.post(f"{con}/v1/drafts", headers=people["editor"], json={
        "title": f"基准测试稿件{n}", "body": BODY, "targets": {"scope": "all"}})
    r.raise_for_status()
    item = r.json()["id"]
    (await http.post(f"{con}/v1/drafts/{item}/submit", headers=people["editor"])).raise_for_status()

    async def opened():
        got = (await http.get(f"{rev}/v1/reviews", headers=people["reviewer1"], params={"item_id": item})).json()
        return got["items"][0]["id"] if got.get("items") else None

    review_id = await until(opened, 60, f"the review of {item}")
    answered = 0.0
    for level in (1, 2, 3):
        r = await http.post(f"{rev}/v1/reviews/{review_id}/decisions", headers=people[f"reviewer{level}"],
                            json={"decision": "approve", "comment": "同意", "checks": CHECKS})
        if r.status_code != 200:
            raise SystemExit(f"bench: level {level} of {item}: {r.status_code} {r.text[:200]}")
        answered = time.monotonic()

    async def planned():
        return (await http.get(f"{dis}/v1/publications/{item}", headers=people["ops"])).status_code == 200

    await until(planned, 60, f"dispatch to plan {item}")
    return time.monotonic() - answered


async def flows(urls: dict, total: int, concurrency: int) -> tuple[float, list[float]]:
    limits = httpx.Limits(max_connections=concurrency * 4)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        names = ("ops", "editor", "reviewer1", "reviewer2", "reviewer3")
        people = dict(zip(names, await asyncio.gather(*(token(http, urls["account"], n) for n in names))))
        await flow(http, urls, people, -1)  # warm-up: connections, caches, the first JIT of everything
        gate = asyncio.Semaphore(concurrency)

        async def one(n: int) -> float:
            async with gate:
                return await flow(http, urls, people, n)

        started = time.monotonic()
        latencies = await asyncio.gather(*(one(n) for n in range(total)))
        return time.monotonic() - started, list(latencies)


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[98] if len(values) > 1 else values[0]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--flows", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--terms", type=int, default=10000)
    args = parser.parse_args()

    lexicon = measure(terms=args.terms)
    print(f"machine review: {lexicon['lexicon_terms']} terms built in {lexicon['build_s']:.2f} s, "
          f"{lexicon['check_mb_per_s']:.2f} MB/s", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        stack = Stack(data_dir=Path(tmp), free_ports=True)
        try:
            stack.start(only=("account", "content", "review", "dispatch"))
            urls = {s: stack.services[s].base_url for s in ("account", "content", "review", "dispatch")}
            wall, latencies = asyncio.run(flows(urls, args.flows, args.concurrency))
        finally:
            stack.stop()
    print(f"{args.flows} flows at concurrency {args.concurrency} in {wall:.2f} s; approve → dispatch "
          f"median {statistics.median(latencies) * 1000:.1f} ms", flush=True)
    print(f"BENCH review lexicon_terms={args.terms} check_mb_per_s={lexicon['check_mb_per_s']:.2f} "
          f"flows_per_s={args.flows / wall:.2f} approve_to_dispatch_p99_ms={p99(latencies) * 1000:.1f}")


if __name__ == "__main__":
    main()
