"""Peak memory of the account service under a burst of sign-ins at the production Argon2id cost
(64 MiB, 3 passes, 4 lanes): N concurrent password sign-ins over HTTP, then the process's
peak resident set (VmHWM from /proc) against the pod's memory limit.

    .venv/bin/python bench/signin_memory.py                 # 32 sign-ins, the prod limit (512 MiB)
    .venv/bin/python bench/signin_memory.py --slots 16 --queue-s 30   # what 16 hashes at once cost

Prints, as its last line:
BENCH signin_memory concurrent=<n> slots=<n> peak_rss_mib=<float> limit_mib=<n> ok=<n> busy=<n> wall_s=<float>
(`tests/test_security_signin.py::test_32_concurrent_sign_ins_stay_under_the_pods_memory_limit`
asserts the same bound, without timing.)"""
from __future__ import annotations

import argparse
import concurrent.futures
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "gen")]

from govmedia_cli.stack import Stack  # noqa: E402

USERS = ["editor", "ops", "reviewer1", "reviewer2", "reviewer3", "handler", "supervisor", "regulator"]


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrent", type=int, default=32)
    parser.add_argument("--limit-mib", type=int, default=512, help="the pod's memory limit (deploy/k8s base: 512Mi)")
    parser.add_argument("--slots", type=int, default=0, help="ACCOUNT_PASSWORD_HASH_SLOTS (0: derived from the limit)")
    parser.add_argument("--queue-s", type=float, default=5.0, help="ACCOUNT_PASSWORD_HASH_QUEUE_S")
    args = parser.parse_args()
    env = {"ACCOUNT_PASSWORD_HASH_MEMORY_KIB": "65536", "ACCOUNT_PASSWORD_HASH_TIME_COST": "3",
           "ACCOUNT_PASSWORD_HASH_PARALLELISM": "4", "ACCOUNT_MEMORY_LIMIT_MIB": str(args.limit_mib),
           "ACCOUNT_PASSWORD_HASH_SLOTS": str(args.slots), "ACCOUNT_PASSWORD_HASH_QUEUE_S": str(args.queue_s)}
    from services.account.signin import DEFAULT_MEMORY_RESERVE_MIB, hash_slots_for

    slots = args.slots or hash_slots_for(args.limit_mib, 65536, DEFAULT_MEMORY_RESERVE_MIB)
    with tempfile.TemporaryDirectory() as tmp:
        stack = Stack(data_dir=Path(tmp), free_ports=True, extra_env=env)
        try:
            stack.start(only=("account",))
            base = stack.services["account"].base_url
            pid = stack.services["account"].proc.pid
            idle = peak_rss_mib(pid)

            def one(i: int) -> int:
                return httpx.post(f"{base}/v1/auth/token", timeout=300,
                                  data={"username": USERS[i % len(USERS)], "password": "demo-pass-2026"}).status_code

            started = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(args.concurrent) as pool:
                codes = list(pool.map(one, range(args.concurrent)))
            wall = time.perf_counter() - started
            peak = peak_rss_mib(pid)
        finally:
            stack.stop()
    print(f"idle peak RSS {idle:.0f} MiB; statuses {sorted(set(codes))}")
    print(f"BENCH signin_memory concurrent={args.concurrent} slots={slots} peak_rss_mib={peak:.1f} "
          f"limit_mib={args.limit_mib} ok={codes.count(200)} busy={codes.count(429)} wall_s={wall:.2f}")


if __name__ == "__main__":
    main()
