"""Schema migrations on a database written by an earlier version: migration 5 ties what it can, guesses nothing;
migration 9 keeps each authorization's used quantity equal to the sum it replaces."""

from __future__ import annotations

import json
import random
import sqlite3
from pathlib import Path

import pytest

from gateway.domain.transfer import USES_AUTHORIZED_QUANTITY, TransferState
from gateway.store import sqlite as store_sqlite
from gateway.store.migrations import AUTHORIZATION_USAGE_STATES, MIGRATIONS
from gateway.store.sqlite import SQLiteStore


def _at_version_4(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(str(path), isolation_level=None)
    db.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, description TEXT)")
    for version, description, script in MIGRATIONS[:4]:
        for statement in store_sqlite._statements(script):
            db.execute(statement)
        db.execute("INSERT INTO schema_migrations VALUES (?, ?)", (version, description))
    return db


def _block(start: int, end: int, *, first_transferred: bool) -> str:
    return json.dumps(
        {
            "unit_kind": "CCER",
            "issuing_registry": "CN-CCER",
            "issuance": "",
            "start": start,
            "end": end,
            "vintage": 2025,
            "project_id": "",
            "methodology_code": "",
            "mitigation_type": "Removals",
            "registry_reference": "",
            "first_transferred": first_transferred,
            "attributes": [],
        },
        sort_keys=True,
    )


def test_migration_5_ties_acquired_blocks_through_their_splits_and_fills_the_ledger_columns(tmp_path: Path) -> None:
    db = _at_version_4(tmp_path / "old.db")
    db.execute("INSERT INTO accounts VALUES ('CH-PH-0001', 'Holder', 'Party holding')")
    blocks = "INSERT INTO blocks (block_id, unit_kind, issuing_registry, issuance, serial_start, serial_end, body,"
    blocks += " account_id, status, transfer_id, parent_id) VALUES (?, 'CCER', 'CN-CCER', '', ?, ?, ?, 'CH-PH-0001', ?,"
    blocks += " ?, ?)"
    # Acquired 1-400 in transfer t1, then split: 1-100 used as the parent of a held child 1-100.
    db.execute(blocks, (1, 1, 400, _block(1, 400, first_transferred=True), "superseded", "t1", None))
    db.execute(blocks, (2, 1, 100, _block(1, 100, first_transferred=True), "held", "", 1))
    # Acquired onward before ties: the old ledger named no first transferring Party, so nothing is guessed.
    db.execute(blocks, (3, 500, 600, _block(500, 600, first_transferred=True), "held", "t2", None))
    # Registered here, never first transferred: stays untied.
    db.execute(blocks, (4, 700, 800, _block(700, 800, first_transferred=False), "held", "", None))
    ledger = "INSERT INTO ledger (action_date, action_type, transfer_id, block, quantity, vintage,"
    ledger += " cooperative_approach, authorization_id, first_transferring_party, transferring_party, acquiring_party,"
    ledger += " purpose) VALUES ('2026-01-01T00:00:00.000000Z', ?, ?, ?, ?, 2025, 'CA0001', 'CHN-A-0001', ?, 'CHN',"
    ledger += " 'CHE', 'NDC')"
    db.execute(ledger, ("Acquisition", "t1", _block(1, 400, first_transferred=False), 400, "CHN"))
    db.execute(ledger, ("Acquisition", "t2", _block(500, 600, first_transferred=True), 101, ""))
    db.execute(ledger, ("First transfer", "t3", _block(900, 950, first_transferred=False), 51, "CHE"))

    store_sqlite.migrate(db)

    ties = {
        row[0]: (body["first_transferring_party"], body["authorization_id"]) if "authorization_id" in body else None
        for row in db.execute("SELECT block_id, body FROM blocks")
        for body in [json.loads(row[1])]
    }
    assert ties == {1: ("CHN", "CHN-A-0001"), 2: ("CHN", "CHN-A-0001"), 3: None, 4: None}
    rows = db.execute(
        "SELECT action_type, action_subtype, serial_start, serial_end, json_extract(block, '$.authorization_id')"
        " FROM ledger ORDER BY entry_id"
    ).fetchall()
    assert rows == [
        ("Acquisition", "", 1, 400, "CHN-A-0001"),
        ("Acquisition", "", 500, 600, None),
        ("First transfer", "First transfer to another Party", 900, 950, "CHN-A-0001"),
    ]


def _at_version(path: Path, version: int) -> sqlite3.Connection:
    db = sqlite3.connect(str(path), isolation_level=None)
    db.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, description TEXT)")
    for number, description, script in MIGRATIONS:
        if number > version:
            break
        for statement in store_sqlite._statements(script):
            db.execute(statement)
        db.execute("INSERT INTO schema_migrations VALUES (?, ?)", (number, description))
    return db


def _summed(db: sqlite3.Connection) -> dict[str, int]:
    """The used quantities as they were computed before migration 9: a sum over every transfer."""
    states = ", ".join(str(int(s)) for s in USES_AUTHORIZED_QUANTITY)
    rows = db.execute(
        "SELECT authorization_id, SUM(first_quantity) FROM transfers"
        f" WHERE role = 'initiating' AND state IN ({states}) GROUP BY authorization_id"
    ).fetchall()
    return {row[0]: row[1] for row in rows}


def _any_transfer(db: sqlite3.Connection, rng: random.Random) -> str:
    return str(rng.choice([row[0] for row in db.execute("SELECT transfer_id FROM transfers ORDER BY transfer_id")]))


def _kept(db: sqlite3.Connection) -> dict[str, int]:
    return {row[0]: row[1] for row in db.execute("SELECT * FROM authorization_usage") if row[1] != 0}


def test_migration_20_folds_first_transfers_abroad_into_reconciliation_again(tmp_path: Path) -> None:
    db = _at_version(tmp_path / "old.db", 19)
    ledger = "INSERT INTO ledger (action_date, action_type, action_subtype, transfer_id, block, quantity, vintage,"
    ledger += " cooperative_approach, authorization_id, first_transferring_party, transferring_party, acquiring_party,"
    ledger += " purpose) VALUES ('2026-01-01T00:00:00.000Z', ?, ?, ?, ?, 10, 2025, 'CA0001', 'CHN-A-0001', 'CHN',"
    ledger += " 'CHN', 'CHE', 'NDC')"
    abroad = ("First transfer", "First transfer to another Party")
    db.execute(ledger, (*abroad, "t1", _block(1, 10, first_transferred=True)))
    db.execute(ledger, ("Transfer", "", "t2", _block(11, 20, first_transferred=True)))
    db.execute(ledger, ("First transfer", "Issuance", "", _block(21, 30, first_transferred=True)))
    db.execute("DELETE FROM reconciliation_dirty")  # all three folded under the earlier rule

    store_sqlite.migrate(db)

    dirty = db.execute("SELECT l.transfer_id FROM reconciliation_dirty JOIN ledger l USING (entry_id)").fetchall()
    assert dirty == [("t1",)]


def test_migration_9_states_are_the_states_that_use_an_authorization() -> None:
    assert {int(s) for s in AUTHORIZATION_USAGE_STATES.split(",")} == {int(s) for s in USES_AUTHORIZED_QUANTITY}


def test_migration_9_fills_the_used_quantities_and_its_triggers_keep_them_equal_to_the_sum(tmp_path: Path) -> None:
    db = _at_version(tmp_path / "old.db", 8)
    insert = (
        "INSERT INTO transfers (transfer_id, role, state, terms, authorization_id, quantity, rejections, created_at,"
        " updated_at, first_quantity) VALUES (?, ?, ?, '{}', ?, 0, '[]', '2026-01-01T00:00:00.000000Z',"
        " '2026-01-01T00:00:00.000000Z', ?)"
    )
    rng = random.Random(9)
    roles, states, authorizations = ("initiating", "acquiring"), [int(s) for s in TransferState], ["A1", "A2", "A3"]
    for i in range(60):
        db.execute(
            insert, (f"old{i}", rng.choice(roles), rng.choice(states), rng.choice(authorizations), rng.randint(0, 99))
        )
    version = store_sqlite.migrate(db)
    assert version >= 9
    assert _kept(db) == _summed(db)
    for step in range(400):
        action = rng.random()
        if action < 0.3:
            db.execute(
                insert,
                (f"new{step}", rng.choice(roles), rng.choice(states), rng.choice(authorizations), rng.randint(0, 99)),
            )
        elif action < 0.8:
            db.execute(
                "UPDATE transfers SET state = ?, first_quantity = ?, authorization_id = ? WHERE transfer_id = ?",
                (rng.choice(states), rng.randint(0, 99), rng.choice(authorizations), _any_transfer(db, rng)),
            )
        else:
            db.execute("DELETE FROM transfers WHERE transfer_id = ?", (_any_transfer(db, rng),))
        assert _kept(db) == _summed(db), f"after step {step}"


def test_migration_16_fills_the_tied_quantities_and_its_triggers_keep_them_equal_to_the_sum(tmp_path: Path) -> None:
    db = _at_version(tmp_path / "old.db", 15)
    insert = "INSERT INTO authorization_ties VALUES (?, ?, ?, '2026-01-01T00:00:00.000000Z')"
    rng = random.Random(16)
    authorizations = ["A1", "A2", "A3"]

    def summed() -> dict[str, int]:
        rows = db.execute("SELECT authorization_id, SUM(quantity) FROM authorization_ties GROUP BY authorization_id")
        return {row[0]: row[1] for row in rows if row[1]}

    def kept() -> dict[str, int]:
        return {row[0]: row[1] for row in db.execute("SELECT * FROM authorization_tie_totals") if row[1]}

    for i in range(40):
        db.execute(insert, (rng.choice(authorizations), f"old{i}", rng.randint(1, 99)))
    assert store_sqlite.migrate(db) >= 16
    assert kept() == summed()
    for step in range(300):
        action = rng.random()
        actions = [row[0] for row in db.execute("SELECT action_id FROM authorization_ties ORDER BY action_id")]
        if action < 0.4 or not actions:
            db.execute(insert, (rng.choice(authorizations), f"new{step}", rng.randint(1, 99)))
        elif action < 0.8:
            db.execute(
                "UPDATE authorization_ties SET quantity = ?, authorization_id = ? WHERE action_id = ?",
                (rng.randint(1, 99), rng.choice(authorizations), rng.choice(actions)),
            )
        else:
            db.execute("DELETE FROM authorization_ties WHERE action_id = ?", (rng.choice(actions),))
        assert kept() == summed(), f"after step {step}"


@pytest.mark.asyncio
async def test_used_and_tied_quantities_a_hand_made_repair_put_out_of_step_are_rebuilt_at_the_next_start(
    tmp_path: Path,
) -> None:
    path = tmp_path / "gateway.db"
    store = await SQLiteStore.open(path)
    await store.close()
    db = sqlite3.connect(str(path), isolation_level=None)
    insert = (
        "INSERT OR REPLACE INTO transfers (transfer_id, role, state, terms, authorization_id, quantity, rejections,"
        " created_at, updated_at, first_quantity) VALUES (?, 'initiating', 1, '{}', ?, 0, '[]',"
        " '2026-01-01T00:00:00.000000Z', '2026-01-01T00:00:00.000000Z', ?)"
    )
    db.execute(insert, ("t1", "A1", 7))
    db.execute(insert, ("t1", "A2", 4))  # a REPLACE deletes t1 without its delete trigger: A1 keeps its 7
    assert _kept(db) != _summed(db)
    # The tied quantities too: a repair that rewrote a total (or, on PostgreSQL, a TRUNCATE of the ties).
    db.execute("INSERT INTO authorization_ties VALUES ('A2', 'issued', 5, '2026-01-01T00:00:00.000000Z')")
    db.execute("UPDATE authorization_tie_totals SET quantity = 1000 WHERE authorization_id = 'A2'")
    db.execute("INSERT INTO authorization_tie_totals VALUES ('A3', 50)")
    db.close()
    store = await SQLiteStore.open(path)
    try:
        async with store.read() as tx:
            assert await tx.first_transfer_quantity_used("A1") == 0
            assert await tx.first_transfer_quantity_used("A2") == 4 + 5
            assert await tx.first_transfer_quantity_used("A3") == 0
    finally:
        await store.close()


@pytest.mark.asyncio
async def test_a_reader_says_which_version_to_use_for_a_schema_newer_or_older_than_its_own(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    await (await store_sqlite.SQLiteStore.open(path)).close()
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO schema_migrations VALUES (999, 'from a later version')")
    with pytest.raises(sqlite3.DatabaseError, match="use the carbon-gateway version that migrated it"):
        await store_sqlite.SQLiteStore.open_read_only(path)
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM schema_migrations WHERE version >= ?", (max(v for v, _, _ in MIGRATIONS),))
    with pytest.raises(sqlite3.DatabaseError, match="start the gateway of this version once"):
        await store_sqlite.SQLiteStore.open_read_only(path)
