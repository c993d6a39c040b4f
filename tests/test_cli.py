"""`govmedia up` (what `make run` runs) brings the platform up with the demo data and
stops every process on SIGTERM; `govmedia demo` refuses production."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from govmedia_cli.stack import ROOT, free_port, port_open
from govmedia_kit.config import DEFAULT_PORTS

PORTS = [p for pair in DEFAULT_PORTS.values() for p in pair]


def test_up_runs_everything_and_stops_cleanly(tmp_path):
    if any(port_open("127.0.0.1", p) for p in PORTS):
        pytest.skip("the default ports are taken on this machine (is `make run` running?)")
    nats_port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "govmedia_cli", "up", "--data-dir", str(tmp_path / "data"),
         "--nats-url", f"nats://127.0.0.1:{nats_port}"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'gen'}"},
    )
    try:
        out = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            out.append(line)
            if "Ctrl-C stops everything" in line:
                break
        text = "".join(out)
        assert "Ctrl-C stops everything" in text, text
        assert f"nats://127.0.0.1:{nats_port}  (started here)" in text
        assert "http://127.0.0.1:8004" in text
        status = subprocess.run([sys.executable, "-m", "govmedia_cli", "status"], cwd=ROOT, capture_output=True,
                                text=True, env={**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'gen'}"})
        assert status.returncode == 0, status.stdout
        assert status.stdout.count("ready") >= 5
        r = httpx.post("http://127.0.0.1:8001/v1/auth/token", data={"username": "editor", "password": "demo-pass-2026"})
        assert r.status_code == 200  # the demo data is there
        assert (tmp_path / "data" / "content.db").exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, rest
    assert "stopped." in rest
    assert not any(port_open("127.0.0.1", p) for p in PORTS + [nats_port])


def test_demo_refuses_production(tmp_path):
    env = {**os.environ, "GOVMEDIA_ENV": "production", "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'gen'}"}
    r = subprocess.run([sys.executable, "-m", "govmedia_cli", "demo", "--data-dir", str(tmp_path)], cwd=ROOT,
                       capture_output=True, text=True, env=env)
    assert r.returncode == 2
    assert "demo_refused_in_production" in r.stderr
