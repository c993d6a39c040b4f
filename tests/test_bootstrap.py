"""A production installation starts with no users: the image's `bootstrap-ops` command
creates the first ops user once, from a password file, and nothing on a second run."""
from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import nats
from nats.js.errors import NotFoundError

from govmedia.events.v1 import events_pb2 as ev
from govmedia_cli.stack import ROOT
from services.account import totp
from tests.helpers import assert_error, client, eventually

ENTRYPOINT = ROOT / "deploy" / "docker" / "entrypoint.py"


async def last_event(stack, subject: str):
    nc = await nats.connect(stack.nats_url)
    try:
        msg = await nc.jetstream().get_last_msg("GOVMEDIA_ACCOUNT", subject)
    except NotFoundError:
        return None
    finally:
        await nc.close()
    payload = ev.RegionUpserted()
    payload.ParseFromString(msg.data)
    return payload


def login_enrolling_totp(stack, username: str, password: str) -> str:
    """A production ops or regulator user's first sign-in: the password gives an enrolment
    ticket, not a token; enrol, confirm with a first code, sign in with the next one."""
    acc = client(stack, "account")
    form = {"username": username, "password": password}
    ticket = assert_error(acc.post("/v1/auth/token", data=form), 403,
                          "totp_enrolment_required")["error"]["details"]["enrolment_ticket"]
    secret = acc.post("/v1/auth/totp/enrol", json={"enrolment_ticket": ticket}).json()["secret"]
    now = time.time()
    confirmed = acc.post("/v1/auth/totp/confirm", json={"enrolment_ticket": ticket, "code": totp.totp(secret, now)})
    assert confirmed.status_code == 200, confirmed.text
    assert_error(acc.post("/v1/auth/token", data=form), 401, "totp_required")
    # the confirming code is spent: the next step's code (one step of drift is accepted)
    r = acc.post("/v1/auth/token", data={**form, "otp": totp.totp(secret, now + totp.STEP_S)})
    assert r.status_code == 200, r.text
    return r.json()["access_token"]


def bootstrap(stack, password_file, **overrides) -> subprocess.CompletedProcess:
    env = {**stack.services["account"].env,
           "ACCOUNT_BOOTSTRAP_PROVINCE": "示范省", "ACCOUNT_BOOTSTRAP_UNIT": "省政务新媒体运营中心",
           "ACCOUNT_BOOTSTRAP_USERNAME": "first-ops", "ACCOUNT_BOOTSTRAP_PASSWORD_FILE": str(password_file),
           **overrides}
    return subprocess.run([sys.executable, str(ENTRYPOINT), "bootstrap-ops"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_first_ops_user_is_created_once_and_its_password_never_printed(stack_factory, db_backend, tmp_path):
    # production needs the key that seals the signing keys (a test value)
    stack = stack_factory(db_backend, only=("account",), load_demo=False,
                          env={"GOVMEDIA_ENV": "production", "ACCOUNT_KEY_ENCRYPTION_KEY": "ab" * 32})
    password = "correct-horse-battery-42"
    secret = tmp_path / "password"

    secret.write_text("too-short\n", encoding="utf-8")
    refused = bootstrap(stack, secret)
    assert refused.returncode != 0 and "password_too_short" in refused.stderr
    secret.write_text(password + "\n", encoding="utf-8")  # a Secret file's trailing newline is not part of it
    assert bootstrap(stack, secret, ACCOUNT_BOOTSTRAP_UNIT=" ").returncode != 0

    created = bootstrap(stack, secret)
    assert created.returncode == 0, created.stderr
    assert "first ops user created" in created.stdout
    again = bootstrap(stack, secret, ACCOUNT_BOOTSTRAP_USERNAME="second-ops")
    assert again.returncode == 0 and "nothing changed" in again.stdout
    for out in (refused, created, again):
        assert password not in out.stdout + out.stderr and "too-short" not in out.stdout + out.stderr
    assert password not in stack.services["account"].log_path.read_text(errors="replace")

    # In production ops sign in with a second factor: the first sign-in enrols it.
    token = login_enrolling_totp(stack, "first-ops", password)
    ops = client(stack, "account", token)
    listed = ops.get("/v1/users")
    assert listed.status_code == 200, listed.text
    [me] = listed.json()["items"]
    assert (me["username"], me["roles"]) == ("first-ops", ["ops"])
    unit_id = me["unit_id"]
    # The first ops user can now create everybody else.
    made = ops.post("/v1/users", json={"username": "regulator-1", "display_name": "网管办", "unit_id": unit_id,
                                       "roles": ["regulator"], "password": "another-pass-2026"})
    assert made.status_code == 201, made.text
    assert login_enrolling_totp(stack, "regulator-1", "another-pass-2026")
    # The command only wrote the outbox; the running service relayed its events to the bus.
    region = eventually(lambda: asyncio.run(last_event(stack, "govmedia.account.region.upserted")))
    assert region.name == "示范省"
    # The second run named another user, and it does not exist.
    r = client(stack, "account").post("/v1/auth/token", data={"username": "second-ops", "password": password})
    assert r.status_code == 401
