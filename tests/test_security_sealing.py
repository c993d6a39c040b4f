"""Citizens' data sealed at rest (issue 16): news-clue contacts sealed as petition contacts
are; the data keys rotate (a key id in every sealed value, retired keys still open, values in
the format before key ids still open, `govmedia reseal` moves rows to the current key in
batches, idempotent and safe to interrupt); the associated data binds the row, so a sealed
value copied into another row does not open; production refuses to start without a key.

Pure rules first (govmedia_kit/sealing.py), then real processes on both databases, the raw
rows read behind the services' back."""
from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import secrets
import subprocess
import sys

import grpc
import pytest
from alembic import command
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from govmedia.content.v1 import content_pb2 as cpb
from govmedia.content.v1 import content_pb2_grpc as cpb_grpc
from govmedia.petition.v1 import petition_pb2 as pb
from govmedia.petition.v1 import petition_pb2_grpc as pb_grpc
from govmedia_cli.stack import ROOT
from govmedia_kit.db import alembic_config
from govmedia_kit.sealing import Keyring, SealingError, key_id, load_keyring, parse_key
from services.petition.crypto import INDEX_LABEL, Vault, load_vault
from tests.helpers import assert_error, client, eventually, login, service_db

K1, K2 = bytes(range(32)), bytes(range(32, 64))
C1, C2 = bytes(range(64, 96)), bytes(range(96, 128))


def legacy_seal(key: bytes, field: str, value: str) -> str:
    """A value as services/petition/crypto.py sealed it before key ids: g1:, the field name as
    associated data (the code of that version, written out)."""
    nonce = secrets.token_bytes(12)
    return "g1:" + base64.urlsafe_b64encode(nonce + AESGCM(key).encrypt(nonce, value.encode(), field.encode())).decode()


# --- the pure rules ----------------------------------------------------------------------

def test_a_sealed_value_names_its_key_and_is_bound_to_its_row():
    ring = Keyring(K1, index_label=b"t")
    sealed = ring.seal("13812345678", table="clues", row="r1", field="contact_phone")
    assert sealed.startswith(f"g2:{key_id(K1)}:") and "13812345678" not in sealed
    assert sealed != ring.seal("13812345678", table="clues", row="r1", field="contact_phone")  # fresh nonce
    assert ring.open(sealed, table="clues", row="r1", field="contact_phone") == "13812345678"
    for elsewhere in ({"table": "clues", "row": "r2", "field": "contact_phone"},      # another row
                      {"table": "clues", "row": "r1", "field": "contact_name"},       # another field
                      {"table": "petitions", "row": "r1", "field": "contact_phone"}):  # another table
        with pytest.raises(SealingError, match="copied from another row"):
            ring.open(sealed, **elsewhere)
    tampered = sealed[:-4] + ("AAAA" if sealed[-4:] != "AAAA" else "BBBB")
    with pytest.raises(SealingError):
        ring.open(tampered, table="clues", row="r1", field="contact_phone")
    assert ring.seal(None, table="clues", row="r1", field="contact_phone") is None
    assert "000102" not in repr(ring) and K1.hex() not in repr(ring)


def test_retired_keys_open_only_the_current_one_seals():
    old = Keyring(K1, index_label=b"t")
    sealed = old.seal("张三", table="petitions", row="p1", field="contact_name")
    rotated = Keyring(K2, [K1], index_label=b"t")
    assert rotated.open(sealed, table="petitions", row="p1", field="contact_name") == "张三"
    assert rotated.needs_reseal(sealed) and rotated.key_of(sealed) == key_id(K1)
    again = rotated.seal("张三", table="petitions", row="p1", field="contact_name")
    assert again.startswith(f"g2:{key_id(K2)}:") and not rotated.needs_reseal(again)
    with pytest.raises(SealingError, match=key_id(K1)):  # the retired key dropped too early: named, not shown
        Keyring(K2, index_label=b"t").open(sealed, table="petitions", row="p1", field="contact_name")


def test_values_sealed_before_key_ids_still_open_until_refused():
    legacy = legacy_seal(K1, "contact_phone", "13812345678")
    assert Vault(K1).open("contact_phone", legacy, "any-row") == "13812345678"
    assert Vault(K2, (K1,)).open("contact_phone", legacy, "p1") == "13812345678"  # after a rotation too
    assert Vault(K2, (K1,)).keyring.needs_reseal(legacy)
    with pytest.raises(SealingError):
        Vault(K1).open("contact_name", legacy, "p1")  # the old binding (the field) still holds
    with pytest.raises(SealingError, match="legacy"):
        Vault(K1, legacy=False).open("contact_phone", legacy, "p1")
    with pytest.raises(SealingError):
        Vault(K2).open("contact_phone", legacy, "p1")


def test_blind_index_keeps_its_old_values_and_rotates_with_the_key():
    # The index written before key ids: HMAC(HMAC(key, label), phone).
    before = hmac.new(hmac.new(K1, INDEX_LABEL, hashlib.sha256).digest(), b"13812345678", hashlib.sha256).hexdigest()
    assert Vault(K1).blind("13812345678") == before
    rotated = Vault(K2, (K1,))
    assert rotated.blind("13812345678") != before and rotated.blinds("13812345678") == [
        rotated.blind("13812345678"), before]
    assert rotated.blinds(None) == [None]


def test_keys_come_from_settings_production_refuses_without(tmp_path, monkeypatch):
    with pytest.raises(SealingError, match="PETITION_DATA_KEY is required in production"):
        load_vault("", tmp_path, production=True)
    from services.content.clues import keyring_of
    from services.content.service import load_settings
    monkeypatch.delenv("CONTENT_DATA_KEY", raising=False)
    with pytest.raises(SealingError, match="CONTENT_DATA_KEY is required in production"):
        keyring_of(load_settings(env="production", data_dir=tmp_path))
    # Development: a key file made once, private, the same on the next start.
    first = keyring_of(load_settings(env="development", data_dir=tmp_path))
    assert (tmp_path / "content-data.key").stat().st_mode & 0o077 == 0
    assert keyring_of(load_settings(env="development", data_dir=tmp_path)).current_id == first.current_id
    # Configured: the current key, retired ones comma-separated, hex or base64.
    ring = keyring_of(load_settings(data_key=C2.hex(), data_key_previous=f"{base64.b64encode(C1).decode()}, "))
    assert ring.current_id == key_id(C2) and set(ring.key_ids) == {key_id(C2), key_id(C1)}
    assert C2.hex() not in repr(load_settings(data_key=C2.hex()))
    with pytest.raises(SealingError, match="CONTENT_DATA_KEY_PREVIOUS"):
        keyring_of(load_settings(data_key=C2.hex(), data_key_previous="not-a-key"))
    with pytest.raises(SealingError):
        parse_key("ab" * 31, "X")
    assert load_keyring(K1.hex(), "", name="X", data_dir=tmp_path, key_file="x.key", production=True,
                        index_label=b"t").current_id == key_id(K1)


# --- news clues, real processes ----------------------------------------------------------

NAME, PHONE = "张三丰", "13812348000"


def clue(unit_id: str, **fields) -> dict:
    return {"unit_id": unit_id, "title": "某路段井盖缺失", "content": "人民路井盖缺失，夜间危险。",
            "contact": {"name": NAME, "phone": "138-1234-8000"}, **fields}


def grpc_code(err: grpc.aio.AioRpcError) -> str:
    return dict(err.trailing_metadata() or ())["error-code"]


def test_clue_contacts_are_sealed_bound_to_their_row(stack_factory, db_backend):
    stack = stack_factory(db_backend, only=("account", "content"), env={"CONTENT_DATA_KEY": C1.hex()})
    ops = client(stack, "account", login(stack, "ops"))
    home = ops.get("/v1/units").json()["items"][0]["id"]
    public = client(stack, "content")
    eventually(lambda: public.post("/v1/clues", json=clue(home)).status_code == 201, interval=0.5)
    editor_token = login(stack, "editor")
    editor = client(stack, "content", editor_token)
    md = (("authorization", f"Bearer {editor_token}"),)

    async def submit_over_grpc():
        async with grpc.aio.insecure_channel(stack.services["content"].grpc_target) as channel:
            await cpb_grpc.ContentServiceStub(channel).SubmitClue(cpb.SubmitClueRequest(
                unit_id=home, title="路灯不亮", content="东街路灯坏了", contact=cpb.Contact(name="王五", phone="13900001111")))
    asyncio.run(submit_over_grpc())
    rest_id, grpc_id = (c["id"] for c in editor.get("/v1/clues").json()["items"])

    # Stored: sealed with the configured key, nothing of the contact in clear, no clear column.
    rows = asyncio.run(service_db(stack, "content", "SELECT * FROM clues ORDER BY id"))
    assert len(rows) == 2 and PHONE not in str(rows) and NAME not in str(rows) and "13900001111" not in str(rows)
    sealed = dict((r[0], r[1:]) for r in asyncio.run(service_db(
        stack, "content", "SELECT id, contact_name_enc, contact_phone_enc FROM clues ORDER BY id")))
    assert all(v.startswith(f"g2:{key_id(C1)}:") for pair in sealed.values() for v in pair)

    # Staff read it as before: in clear on the one clue for the unit's editors, masked in lists.
    assert editor.get(f"/v1/clues/{rest_id}").json()["contact"] == {"name": NAME, "phone": PHONE}
    assert editor.get("/v1/clues").json()["items"][0]["contact"] == {"name": "张**", "phone": "138****8000"}

    async def read_over_grpc(clue_id: str):
        async with grpc.aio.insecure_channel(stack.services["content"].grpc_target) as channel:
            stub = cpb_grpc.ContentServiceStub(channel)
            listed = (await stub.ListClues(cpb.ListCluesRequest(), metadata=md)).items
            return listed, await stub.GetClue(cpb.GetClueRequest(id=clue_id), metadata=md)
    listed, one = asyncio.run(read_over_grpc(grpc_id))
    assert (one.contact.name, one.contact.phone) == ("王五", "13900001111") and one.contact_revealed
    assert [c.contact.phone for c in listed] == ["138****8000", "139****1111"]

    # A sealed contact copied into another clue's row does not open there: neither transport
    # shows it, both say why (and the lists, which open every row, refuse the same way).
    name_enc, phone_enc = sealed[rest_id]
    asyncio.run(service_db(stack, "content", f"UPDATE clues SET contact_name_enc = '{name_enc}', "
                                             f"contact_phone_enc = '{phone_enc}' WHERE id = '{grpc_id}'"))
    copied = editor.get(f"/v1/clues/{grpc_id}")
    assert_error(copied, 500, "sealed_data_unreadable")
    assert PHONE not in copied.text and NAME not in copied.text
    with pytest.raises(grpc.aio.AioRpcError) as err:
        asyncio.run(read_over_grpc(grpc_id))
    assert grpc_code(err.value) == "sealed_data_unreadable" and PHONE not in (err.value.details() or "")
    # Put back in its own row, it opens again.
    original_name, original_phone = sealed[grpc_id]
    asyncio.run(service_db(stack, "content", f"UPDATE clues SET contact_name_enc = '{original_name}', "
                                             f"contact_phone_enc = '{original_phone}' WHERE id = '{grpc_id}'"))
    assert editor.get(f"/v1/clues/{grpc_id}").json()["contact"] == {"name": "王五", "phone": "13900001111"}
    logged = stack.services["content"].log_path.read_text(encoding="utf-8")
    assert PHONE not in logged and "13900001111" not in logged and C1.hex() not in logged


def test_existing_clear_clue_contacts_are_sealed_by_the_migration(db_backend, tmp_path, monkeypatch):
    """Clues stored in clear before revision 0008: sealed by it (bound to their rows); its
    downgrade opens them back into the clear columns the old code reads."""
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    from tests.conftest import drop_pg_databases, fresh_pg_databases

    monkeypatch.setenv("GOVMEDIA_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("CONTENT_DATA_KEY", C1.hex())
    urls = fresh_pg_databases(["content"]) if db_backend == "postgres" else {
        "content": f"sqlite+aiosqlite:///{tmp_path}/content.db"}

    async def sql(statement: str):
        engine = create_async_engine(urls["content"])
        try:
            async with engine.begin() as conn:
                result = await conn.execute(text(statement))
                return result.all() if result.returns_rows else None
        finally:
            await engine.dispose()

    try:
        cfg = alembic_config(ROOT / "services" / "content" / "migrations", urls["content"])
        command.upgrade(cfg, "0007_review_decisions")
        for cid, name, phone in (("c1", NAME, PHONE), ("c2", None, None), ("c3", "李四", None)):
            asyncio.run(sql(
                "INSERT INTO clues (id, unit_id, tracking_code, title, content, contact_name, contact_phone, status, "
                f"created_at, updated_at) VALUES ('{cid}', 'u1', 'CODE{cid}', '井盖', '缺失', "
                f"{repr(name) if name else 'NULL'}, {repr(phone) if phone else 'NULL'}, 'new', "
                "'2026-03-02 02:00:00', '2026-03-02 02:00:00')"))
        command.upgrade(cfg, "0008_sealed_clue_contacts")
        rows = {r[0]: r[1:] for r in asyncio.run(sql(
            "SELECT id, contact_name_enc, contact_phone_enc FROM clues ORDER BY id"))}
        columns = asyncio.run(sql("SELECT * FROM clues WHERE id = 'c1'"))
        assert PHONE not in str(columns) and NAME not in str(columns)
        ring = Keyring(C1, index_label=b"govmedia-content-blind-index")
        opened = {cid: tuple(ring.open(v, table="clues", row=cid, field=f)
                             for v, f in zip(pair, ("contact_name", "contact_phone"))) for cid, pair in rows.items()}
        assert opened == {"c1": (NAME, PHONE), "c2": (None, None), "c3": ("李四", None)}
        with pytest.raises(SealingError):
            ring.open(rows["c1"][0], table="clues", row="c3", field="contact_name")
        command.downgrade(cfg, "0007_review_decisions")
        assert asyncio.run(sql("SELECT id, contact_name, contact_phone FROM clues ORDER BY id")) == [
            ("c1", NAME, PHONE), ("c2", None, None), ("c3", "李四", None)]
    finally:
        if db_backend == "postgres":
            drop_pg_databases(urls)


# --- rotation and re-sealing, real processes ------------------------------------------------

COMPLAINT = {"category": "complaint", "title": "小区噪音扰民", "content": "夜间施工至凌晨两点。", "channel": "web",
             "contact": {"name": "张三", "phone": "138 1234 5678"}}


def reseal(stack, service: str, keys: dict, *args: str) -> subprocess.CompletedProcess:
    """`govmedia reseal <service>` as an operator runs it in a pod: the service's environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PETITION_", "CONTENT_"))}
    env.update(keys, GOVMEDIA_DATA_DIR=str(stack.data_dir), PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'gen'}")
    if service in stack._pg_urls:
        env[f"{service.upper()}_DATABASE_URL"] = stack._pg_urls[service]
    return subprocess.run([sys.executable, "-m", "govmedia_cli", "reseal", service, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def restart_with(stack, service: str, keys: dict) -> None:
    env = stack.services[service].env
    for name in [n for n in env if n.startswith(f"{service.upper()}_DATA_KEY")]:
        del env[name]
    env.update(keys)
    stack.restart(service)


def test_keys_rotate_and_reseal_moves_rows_to_the_current_key(calendar_file, stack_factory, db_backend):
    old_keys = {"PETITION_DATA_KEY": K1.hex(), "CONTENT_DATA_KEY": C1.hex()}
    stack = stack_factory(db_backend, only=("account", "petition", "content"), env=old_keys)
    public, clues_public = client(stack, "petition"), client(stack, "content")
    handler_token = login(stack, "handler")
    handler = client(stack, "petition", handler_token)
    first = public.post("/v1/petitions", json=COMPLAINT).json()["id"]
    second = public.post("/v1/petitions", json={**COMPLAINT, "category": "help", "title": "路灯不亮",
                                                "contact": {"name": "李四", "phone": "13900001111"}}).json()["id"]
    home = client(stack, "account", login(stack, "ops")).get("/v1/units").json()["items"][0]["id"]
    eventually(lambda: clues_public.post("/v1/clues", json=clue(home)).status_code == 201, interval=0.5)
    editor = client(stack, "content", login(stack, "editor"))
    clue_id = editor.get("/v1/clues").json()["items"][0]["id"]

    def petition_rows() -> dict:
        return {r[0]: r[1:] for r in asyncio.run(service_db(
            stack, "petition", "SELECT id, contact_name_enc, contact_phone_enc, contact_id_enc, contact_key "
                               "FROM petitions ORDER BY id"))}

    # A contact as the code before key ids sealed it (g1, no row binding) still opens.
    asyncio.run(service_db(stack, "petition", f"UPDATE petitions SET contact_name_enc = "
                                              f"'{legacy_seal(K1, 'contact_name', '李四')}' WHERE id = '{second}'"))
    assert handler.get(f"/v1/petitions/{second}").json()["contact"] == {"name": "李四", "phone": "13900001111"}

    # Rotation: the new key current, the old one retired, in both services; all still opens.
    new_keys = {"PETITION_DATA_KEY": K2.hex(), "PETITION_DATA_KEY_PREVIOUS": K1.hex(),
                "CONTENT_DATA_KEY": C2.hex(), "CONTENT_DATA_KEY_PREVIOUS": C1.hex()}
    restart_with(stack, "petition", {k: v for k, v in new_keys.items() if k.startswith("PETITION_")})
    restart_with(stack, "content", {k: v for k, v in new_keys.items() if k.startswith("CONTENT_")})
    assert handler.get(f"/v1/petitions/{first}").json()["contact"] == {"name": "张三", "phone": "13812345678"}
    assert handler.get(f"/v1/petitions/{second}").json()["contact"]["name"] == "李四"
    assert editor.get(f"/v1/clues/{clue_id}").json()["contact"] == {"name": NAME, "phone": PHONE}
    # The same citizen on the same matter after the rotation: still linked to the case indexed
    # under the retired key (staff see the link).
    third = public.post("/v1/petitions", json={**COMPLAINT, "content": "又施工了。"}).json()["id"]
    assert handler.get(f"/v1/petitions/{third}").json()["duplicate_of"] == first

    # An interrupted re-seal: one row per batch, and the second row fails (its phone copied
    # from the first row). Batches before it are done, it and those after are as they were.
    before = petition_rows()
    asyncio.run(service_db(stack, "petition", f"UPDATE petitions SET contact_phone_enc = '{before[first][1]}' "
                                              f"WHERE id = '{second}'"))
    broken = reseal(stack, "petition", new_keys, "--batch-size", "1")
    assert broken.returncode == 2 and "copied from another row" in broken.stderr, broken.stdout + broken.stderr
    midway = petition_rows()
    assert all(v.startswith(f"g2:{key_id(K2)}:") for v in midway[first][:2])
    assert midway[second][0] == before[second][0] and midway[third] == before[third]
    assert before[third][0].startswith(f"g2:{key_id(K2)}:")
    asyncio.run(service_db(stack, "petition", f"UPDATE petitions SET contact_phone_enc = '{before[second][1]}' "
                                              f"WHERE id = '{second}'"))

    # Run again: it finishes; again: nothing left to do.
    done = reseal(stack, "petition", new_keys, "--batch-size", "1")
    assert done.returncode == 0, done.stdout + done.stderr
    # Only the row left over: the first was done before the failure, the third was sealed
    # with the new key when it came in.
    assert "resealed 1," in done.stdout and "rows not sealed with the current key: 0" in done.stdout
    after = petition_rows()
    vault = Vault(K2)
    for pid, (name_enc, phone_enc, id_enc, contact_key) in after.items():
        assert name_enc.startswith(f"g2:{key_id(K2)}:") and phone_enc.startswith(f"g2:{key_id(K2)}:")
        assert contact_key == vault.blind(vault.open("contact_phone", phone_enc, pid))  # the index moved too
    assert vault.open("contact_name", after[second][0], second) == "李四"  # the legacy value, now row-bound
    again = reseal(stack, "petition", new_keys)
    assert again.returncode == 0 and "resealed 0," in again.stdout, again.stdout + again.stderr
    assert reseal(stack, "petition", new_keys, "--check").returncode == 0
    content = reseal(stack, "content", new_keys)
    assert content.returncode == 0 and "resealed 1," in content.stdout, content.stdout + content.stderr
    assert all(v.startswith(f"g2:{key_id(C2)}:") for v in asyncio.run(service_db(
        stack, "content", "SELECT contact_name_enc, contact_phone_enc FROM clues"))[0])

    # The retired keys withdrawn (and the legacy format refused): everything opens with the new ones alone.
    restart_with(stack, "petition", {"PETITION_DATA_KEY": K2.hex(), "PETITION_DATA_OPEN_LEGACY": "false"})
    restart_with(stack, "content", {"CONTENT_DATA_KEY": C2.hex()})
    assert handler.get(f"/v1/petitions/{second}").json()["contact"] == {"name": "李四", "phone": "13900001111"}
    assert editor.get(f"/v1/clues/{clue_id}").json()["contact"] == {"name": NAME, "phone": PHONE}

    async def over_grpc(pid: str):
        async with grpc.aio.insecure_channel(stack.services["petition"].grpc_target) as channel:
            return await pb_grpc.PetitionServiceStub(channel).GetPetition(
                pb.GetPetitionRequest(id=pid), metadata=(("authorization", f"Bearer {handler_token}"),))
    one = asyncio.run(over_grpc(first))
    assert (one.contact.name, one.contact.phone) == ("张三", "13812345678")

    # A petition's sealed name copied into another case's row does not open there (REST and gRPC).
    asyncio.run(service_db(stack, "petition", f"UPDATE petitions SET contact_name_enc = '{after[first][0]}' "
                                              f"WHERE id = '{second}'"))
    copied = handler.get(f"/v1/petitions/{second}")
    assert copied.status_code == 500 and "张三" not in copied.text
    with pytest.raises(grpc.aio.AioRpcError) as err:
        asyncio.run(over_grpc(second))
    assert err.value.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
    assert "张三" not in (err.value.details() or "")
    logged = stack.services["petition"].log_path.read_text(encoding="utf-8")
    assert "13812345678" not in logged and K1.hex() not in logged and K2.hex() not in logged


def test_reseal_refuses_production_without_the_key(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PETITION_", "CONTENT_"))}
    env.update(GOVMEDIA_ENV="production", GOVMEDIA_DATA_DIR=str(tmp_path),
               PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'gen'}")
    for service, name in (("petition", "PETITION_DATA_KEY"), ("content", "CONTENT_DATA_KEY")):
        done = subprocess.run([sys.executable, "-m", "govmedia_cli", "reseal", service], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and f"{name} is required in production" in done.stderr, done.stderr
    assert not list(tmp_path.glob("*.key"))  # no development key made in production


@pytest.mark.parametrize("service", ["petition", "content"])
def test_a_service_refuses_to_start_in_production_without_its_data_key(service, tmp_path):
    """The process itself (as the container runs it): stops at start-up, naming the variable,
    and makes no key of its own."""
    from govmedia_cli.stack import free_port

    name = f"{service.upper()}_DATA_KEY"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PETITION_", "CONTENT_", "GOVMEDIA_"))}
    env.update({"GOVMEDIA_ENV": "production", "GOVMEDIA_DATA_DIR": str(tmp_path), "NATS_URL": "nats://127.0.0.1:1",
                f"{service.upper()}_HTTP_PORT": str(free_port()), f"{service.upper()}_GRPC_PORT": str(free_port()),
                "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'gen'}"})
    done = subprocess.run([sys.executable, "-m", f"services.{service}"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode != 0 and f"{name} is required in production" in done.stdout + done.stderr
    assert not list(tmp_path.glob("*.key"))
