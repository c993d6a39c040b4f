"""Petitions stored before the workflow migration: their contact data is sealed with the data
key (the clear columns go), they get version 1 of their category's policy, and their clock."""
from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from alembic import command

from govmedia_kit.db import alembic_config
from services.petition.crypto import DataKeyError, Vault, load_vault, parse_key
from services.petition.service import load_settings, vault_of

MIGRATIONS = Path(__file__).resolve().parent.parent / "services" / "petition" / "migrations"


def test_existing_petitions_are_sealed_and_get_their_policy(tmp_path, monkeypatch):
    monkeypatch.setenv("GOVMEDIA_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("PETITION_DATA_KEY", raising=False)
    cfg = alembic_config(MIGRATIONS, f"sqlite+aiosqlite:///{tmp_path}/p.db")
    command.upgrade(cfg, "d42d37ce3a7f")
    with sqlite3.connect(tmp_path / "p.db") as db:
        db.execute(
            "INSERT INTO petitions (id, tracking_code, category, channel, title, content, contact_name, contact_phone,"
            " status, sla_policy, sla_stage, sla_unit, sla_days, sla_last_day, due_at, warn_at, sla_paused,"
            " created_at, updated_at) VALUES ('p1', 'ABCDEFGHJKMN', 'complaint', 'web', '噪音', '夜间施工', '张三',"
            " '13812345678', 'received', 'gd12345.complaint.15wd', 'handling', 'workdays', 15, '2026-03-23',"
            " '2026-03-24 16:00:00', '2026-03-20 16:00:00', 0, '2026-03-02 02:00:00', '2026-03-02 02:00:00')")
    command.upgrade(cfg, "head")
    with sqlite3.connect(tmp_path / "p.db") as db:
        db.row_factory = sqlite3.Row
        row = dict(db.execute("SELECT * FROM petitions WHERE id = 'p1'").fetchone())
        policy = dict(db.execute("SELECT * FROM sla_policies WHERE id = ?", (row["policy_id"],)).fetchone())
    assert "contact_name" not in row and "contact_phone" not in row
    assert "13812345678" not in str(row) and "张三" not in str(row)
    vault = vault_of(load_settings())
    assert vault.open("contact_name", row["contact_name_enc"], "p1") == "张三"
    assert vault.open("contact_phone", row["contact_phone_enc"], "p1") == "13812345678"
    assert row["contact_key"] == vault.blind("13812345678")
    assert policy["category"] == "complaint" and policy["version"] == 1 and policy["handling_days"] == 15
    assert row["sla_started_at"].startswith("2026-03-02") and row["sla_running"] == 1
    # The key file was made once, private to the service's user.
    assert (tmp_path / "petition-data.key").stat().st_mode & 0o077 == 0


def test_sealing_is_bound_to_key_and_field(tmp_path):
    vault = Vault(bytes(range(32)))
    sealed = vault.seal("contact_phone", "13812345678", "p1")
    assert "13812345678" not in sealed and sealed != vault.seal("contact_phone", "13812345678", "p1")  # fresh nonce
    assert vault.open("contact_phone", sealed, "p1") == "13812345678"
    with pytest.raises(DataKeyError):
        vault.open("contact_name", sealed, "p1")  # moved to another field
    with pytest.raises(DataKeyError):
        vault.open("contact_phone", sealed, "p2")  # moved to another row
    with pytest.raises(DataKeyError):
        Vault(bytes(32)).open("contact_phone", sealed, "p1")  # another key
    assert "00010203" not in repr(vault)
    assert parse_key("ab" * 32) == bytes([0xAB]) * 32
    with pytest.raises(DataKeyError):
        parse_key("short")
    with pytest.raises(DataKeyError):
        load_vault("", tmp_path, production=True)
