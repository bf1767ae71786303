"""Versioned schema migrations, shared by the SQL stores. Append a migration; never edit an applied one."""

from __future__ import annotations

MIGRATIONS: tuple[tuple[int, str, str], ...] = (
    (
        1,
        "initial schema: accounts, authorizations, blocks, transfers, ledger, exchange, idempotency",
        """
        CREATE TABLE accounts (
            account_id TEXT PRIMARY KEY,
            holder_name TEXT NOT NULL,
            account_type TEXT NOT NULL
        );
        CREATE TABLE authorizations (
            authorization_id TEXT PRIMARY KEY,
            body TEXT NOT NULL
        );
        CREATE TABLE blocks (
            block_id INTEGER PRIMARY KEY,
            unit_kind TEXT NOT NULL,
            issuing_registry TEXT NOT NULL,
            issuance TEXT NOT NULL,
            serial_start BIGINT NOT NULL,
            serial_end BIGINT NOT NULL,
            body TEXT NOT NULL,
            account_id TEXT NOT NULL REFERENCES accounts(account_id),
            status TEXT NOT NULL,
            transfer_id TEXT NOT NULL DEFAULT '',
            parent_id BIGINT REFERENCES blocks(block_id),
            CHECK (serial_end >= serial_start)
        );
        CREATE INDEX blocks_space ON blocks (unit_kind, issuing_registry, issuance, serial_start);
        CREATE INDEX blocks_transfer ON blocks (transfer_id, status);
        CREATE TABLE transfers (
            transfer_id TEXT PRIMARY KEY,
            role TEXT NOT NULL,
            state INTEGER NOT NULL,
            terms TEXT NOT NULL,
            authorization_id TEXT NOT NULL,
            quantity BIGINT NOT NULL,
            rejections TEXT NOT NULL,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        );
        CREATE TABLE ledger (
            entry_id INTEGER PRIMARY KEY,
            action_date TEXT NOT NULL,
            action_type TEXT NOT NULL,
            transfer_id TEXT NOT NULL,
            block TEXT NOT NULL,
            quantity BIGINT NOT NULL,
            vintage INTEGER NOT NULL,
            cooperative_approach TEXT NOT NULL,
            authorization_id TEXT NOT NULL,
            first_transferring_party TEXT NOT NULL,
            transferring_party TEXT NOT NULL,
            acquiring_party TEXT NOT NULL,
            purpose TEXT NOT NULL
        );
        CREATE TABLE channels (
            direction TEXT NOT NULL,
            peer TEXT NOT NULL,
            last_sequence BIGINT NOT NULL,
            last_hash BLOB NOT NULL,
            PRIMARY KEY (direction, peer)
        );
        CREATE TABLE outbox (
            outbox_id INTEGER PRIMARY KEY,
            receiver TEXT NOT NULL,
            sequence BIGINT NOT NULL,
            message_id TEXT NOT NULL UNIQUE,
            envelope BLOB NOT NULL,
            state TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at TEXT NOT NULL,
            last_error TEXT NOT NULL DEFAULT '',
            created_at TEXT NOT NULL,
            UNIQUE (receiver, sequence)
        );
        CREATE INDEX outbox_due ON outbox (state, next_attempt_at);
        CREATE TABLE messages (
            direction TEXT NOT NULL,
            peer TEXT NOT NULL,
            message_id TEXT NOT NULL,
            envelope BLOB NOT NULL,
            receipt BLOB NOT NULL,
            recorded_at TEXT NOT NULL,
            PRIMARY KEY (direction, peer, message_id)
        );
        CREATE TABLE idempotency (
            caller TEXT NOT NULL,
            method TEXT NOT NULL,
            idempotency_key TEXT NOT NULL,
            request_hash TEXT NOT NULL,
            response BLOB NOT NULL,
            PRIMARY KEY (caller, method, idempotency_key)
        );
        """,
    ),
    (
        2,
        "trust documents (own and partners', every version kept) and statements held behind a sequence gap",
        """
        CREATE TABLE trust_documents (
            party TEXT NOT NULL,
            version INTEGER NOT NULL,
            envelope BLOB NOT NULL,
            recorded_at TEXT NOT NULL,
            PRIMARY KEY (party, version)
        );
        CREATE TABLE held_statements (
            sender TEXT NOT NULL,
            sequence BIGINT NOT NULL,
            envelope BLOB NOT NULL,
            held_at TEXT NOT NULL,
            PRIMARY KEY (sender, sequence)
        );
        """,
    ),
    (
        3,
        "integrity: statements signed at send time, dead letters, an append-only message log, provenance of"
        " issued ranges, debited blocks, first-transfer quantities and status queries",
        """
        CREATE TABLE outbox_v3 (
            outbox_id INTEGER PRIMARY KEY,
            receiver TEXT NOT NULL,
            message_id TEXT NOT NULL UNIQUE,
            kind TEXT NOT NULL,
            transfer_id TEXT NOT NULL DEFAULT '',
            body BLOB NOT NULL,
            state TEXT NOT NULL,
            sequence BIGINT NOT NULL DEFAULT 0,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at TEXT NOT NULL,
            last_code INTEGER NOT NULL DEFAULT 0,
            last_error TEXT NOT NULL DEFAULT '',
            payload_digest BLOB NOT NULL DEFAULT X'',
            created_at TEXT NOT NULL,
            settled_at TEXT
        );
        INSERT INTO outbox_v3 (outbox_id, receiver, message_id, kind, transfer_id, body, state, sequence, attempts,
                               next_attempt_at, last_error, created_at)
            SELECT outbox_id, receiver, message_id, 'legacy', '', envelope, state, sequence, attempts,
                   next_attempt_at, last_error, created_at FROM outbox;
        DROP TABLE outbox;
        ALTER TABLE outbox_v3 RENAME TO outbox;
        CREATE INDEX outbox_lane ON outbox (receiver, state, outbox_id);
        CREATE INDEX outbox_transfer ON outbox (transfer_id, state);
        CREATE TABLE message_log (
            log_index INTEGER PRIMARY KEY,
            direction TEXT NOT NULL,
            peer TEXT NOT NULL,
            message_id TEXT NOT NULL,
            kind TEXT NOT NULL,
            form TEXT NOT NULL,
            envelope BLOB NOT NULL,
            recorded_at TEXT NOT NULL
        );
        CREATE INDEX message_log_message ON message_log (peer, message_id);
        INSERT INTO message_log (direction, peer, message_id, kind, form, envelope, recorded_at)
            SELECT direction, peer, message_id, 'statement', 'protobuf', envelope, recorded_at FROM messages
            ORDER BY recorded_at, message_id;
        DELETE FROM messages WHERE direction = 'out';
        CREATE TRIGGER message_log_no_update BEFORE UPDATE ON message_log
            BEGIN SELECT RAISE(ABORT, 'the message log is append-only'); END;
        CREATE TRIGGER message_log_no_delete BEFORE DELETE ON message_log
            BEGIN SELECT RAISE(ABORT, 'the message log is append-only'); END;
        CREATE TABLE issued_ranges (
            unit_kind TEXT NOT NULL,
            issuing_registry TEXT NOT NULL,
            issuance TEXT NOT NULL,
            serial_start BIGINT NOT NULL,
            serial_end BIGINT NOT NULL,
            recorded_at TEXT NOT NULL,
            PRIMARY KEY (unit_kind, issuing_registry, issuance, serial_start)
        );
        INSERT INTO issued_ranges
            SELECT unit_kind, issuing_registry, issuance, serial_start, serial_end, '1970-01-01T00:00:00.000000Z'
            FROM blocks WHERE parent_id IS NULL AND transfer_id = '' AND status != 'dropped';
        CREATE TABLE abroad_ranges (
            unit_kind TEXT NOT NULL,
            issuing_registry TEXT NOT NULL,
            issuance TEXT NOT NULL,
            serial_start BIGINT NOT NULL,
            serial_end BIGINT NOT NULL,
            PRIMARY KEY (unit_kind, issuing_registry, issuance, serial_start)
        );
        CREATE INDEX blocks_guarded ON blocks (unit_kind, issuing_registry, issuance, serial_start)
            WHERE status IN ('held', 'reserved', 'pending', 'debited');
        ALTER TABLE transfers ADD COLUMN first_quantity BIGINT NOT NULL DEFAULT 0;
        UPDATE transfers SET first_quantity = (
            SELECT COALESCE(SUM(json_extract(b.value, '$.end') - json_extract(b.value, '$.start') + 1), 0)
            FROM json_each(transfers.terms, '$.blocks') AS b WHERE json_extract(b.value, '$.first_transferred') = 0
        );
        ALTER TABLE transfers ADD COLUMN status_queried_at TEXT NOT NULL DEFAULT '';
        CREATE INDEX transfers_open ON transfers (state, created_at)
        """,
    ),
    (
        4,
        "known ranges (every range registered or received here, for ever) and the sealed envelope an outbox"
        " message reuses while it is valid",
        """
        CREATE TABLE known_ranges (
            unit_kind TEXT NOT NULL,
            issuing_registry TEXT NOT NULL,
            issuance TEXT NOT NULL,
            serial_start BIGINT NOT NULL,
            serial_end BIGINT NOT NULL,
            PRIMARY KEY (unit_kind, issuing_registry, issuance, serial_start)
        );
        DROP TABLE issued_ranges;
        ALTER TABLE outbox ADD COLUMN sealed BLOB NOT NULL DEFAULT X''
        """,
    ),
)

MIGRATIONS = (
    *MIGRATIONS,
    (
        5,
        "the ledger: authorization versions, ties of units to authorizations, AEF columns of every action,"
        " reported emissions, locked periods and settings chosen once",
        """
        CREATE TABLE authorization_versions (
            seq INTEGER PRIMARY KEY,
            authorization_id TEXT NOT NULL,
            version TEXT NOT NULL,
            date TEXT NOT NULL,
            body TEXT NOT NULL,
            recorded_at TEXT NOT NULL,
            UNIQUE (authorization_id, version)
        );
        INSERT INTO authorization_versions (authorization_id, version, date, body, recorded_at)
            SELECT authorization_id, json_extract(body, '$.version'), json_extract(body, '$.date'), body,
                   '1970-01-01T00:00:00.000000Z' FROM authorizations ORDER BY authorization_id;
        CREATE TABLE authorization_ties (
            authorization_id TEXT NOT NULL,
            action_id TEXT NOT NULL,
            quantity BIGINT NOT NULL,
            recorded_at TEXT NOT NULL
        );
        CREATE INDEX authorization_ties_id ON authorization_ties (authorization_id);
        ALTER TABLE ledger ADD COLUMN action_subtype TEXT NOT NULL DEFAULT '';
        ALTER TABLE ledger ADD COLUMN year_of_use INTEGER;
        ALTER TABLE ledger ADD COLUMN using_party TEXT NOT NULL DEFAULT '';
        ALTER TABLE ledger ADD COLUMN using_entity TEXT NOT NULL DEFAULT '';
        ALTER TABLE ledger ADD COLUMN note TEXT NOT NULL DEFAULT '';
        ALTER TABLE ledger ADD COLUMN unit_kind TEXT GENERATED ALWAYS AS (json_extract(block, '$.unit_kind')) VIRTUAL;
        ALTER TABLE ledger ADD COLUMN issuing_registry TEXT
            GENERATED ALWAYS AS (json_extract(block, '$.issuing_registry')) VIRTUAL;
        ALTER TABLE ledger ADD COLUMN issuance TEXT GENERATED ALWAYS AS (json_extract(block, '$.issuance')) VIRTUAL;
        ALTER TABLE ledger ADD COLUMN serial_start BIGINT GENERATED ALWAYS AS (json_extract(block, '$.start')) VIRTUAL;
        ALTER TABLE ledger ADD COLUMN serial_end BIGINT GENERATED ALWAYS AS (json_extract(block, '$.end')) VIRTUAL;
        ALTER TABLE ledger ADD COLUMN action_year INTEGER
            GENERATED ALWAYS AS (CAST(substr(action_date, 1, 4) AS INTEGER)) VIRTUAL;
        ALTER TABLE ledger ADD COLUMN partner TEXT
            GENERATED ALWAYS AS (CASE WHEN action_type = 'Acquisition' THEN transferring_party ELSE acquiring_party END)
            VIRTUAL;
        UPDATE ledger SET action_subtype = 'First transfer to another Party'
            WHERE action_type = 'First transfer' AND action_subtype = '';
        UPDATE ledger SET block = json_set(block, '$.first_transferring_party', first_transferring_party,
                '$.cooperative_approach', cooperative_approach, '$.authorization_id', authorization_id)
            WHERE first_transferring_party != '' AND json_extract(block, '$.authorization_id') IS NULL;
        CREATE INDEX ledger_party_action_space ON ledger
            (first_transferring_party, action_type, unit_kind, issuing_registry, issuance, serial_start);
        CREATE INDEX ledger_summary ON ledger (action_type, action_subtype, purpose, vintage, year_of_use, action_year,
            cooperative_approach, authorization_id, first_transferring_party, partner, quantity);
        CREATE INDEX ledger_action ON ledger (transfer_id);
        DROP INDEX blocks_guarded;
        CREATE INDEX blocks_guarded ON blocks (unit_kind, issuing_registry, issuance, serial_start)
            WHERE status IN ('held', 'reserved', 'pending', 'debited', 'used', 'cancelled');
        CREATE TABLE ledger_spans (
            first_transferring_party TEXT NOT NULL,
            unit_kind TEXT NOT NULL,
            issuing_registry TEXT NOT NULL,
            issuance TEXT NOT NULL,
            longest BIGINT NOT NULL,
            PRIMARY KEY (first_transferring_party, unit_kind, issuing_registry, issuance)
        );
        INSERT INTO ledger_spans
            SELECT first_transferring_party, unit_kind, issuing_registry, issuance, MAX(serial_end - serial_start)
            FROM ledger GROUP BY first_transferring_party, unit_kind, issuing_registry, issuance;
        CREATE TABLE reported_emissions (
            year INTEGER PRIMARY KEY,
            quantity BIGINT NOT NULL,
            recorded_at TEXT NOT NULL
        );
        CREATE TABLE locked_periods (
            first_year INTEGER NOT NULL,
            last_year INTEGER NOT NULL,
            locked_at TEXT NOT NULL,
            reason TEXT NOT NULL,
            PRIMARY KEY (first_year, last_year)
        );
        CREATE TABLE settings (
            name TEXT PRIMARY KEY,
            value TEXT NOT NULL,
            recorded_at TEXT NOT NULL
        )
        """,
    ),
)

MIGRATIONS = (
    *MIGRATIONS,
    (
        6,
        "reconciliation: the message log as a Merkle tree, the reconciliation tree kept as the ledger changes,"
        " runs, frozen ranges and the partners' log heads",
        """
        ALTER TABLE message_log ADD COLUMN transfer_id TEXT NOT NULL DEFAULT '';
        CREATE INDEX message_log_transfer ON message_log (transfer_id) WHERE transfer_id != '';
        CREATE TABLE log_tree (
            level INTEGER NOT NULL,
            node_index INTEGER NOT NULL,
            hash BLOB NOT NULL,
            PRIMARY KEY (level, node_index)
        ) WITHOUT ROWID;
        CREATE TABLE reconciliation_dirty (entry_id INTEGER PRIMARY KEY);
        CREATE TRIGGER ledger_reconciliation_insert AFTER INSERT ON ledger
            BEGIN INSERT OR IGNORE INTO reconciliation_dirty VALUES (NEW.entry_id); END;
        CREATE TRIGGER ledger_reconciliation_update AFTER UPDATE ON ledger
            BEGIN
                INSERT OR IGNORE INTO reconciliation_dirty VALUES (OLD.entry_id);
                INSERT OR IGNORE INTO reconciliation_dirty VALUES (NEW.entry_id);
            END;
        CREATE TRIGGER ledger_reconciliation_delete AFTER DELETE ON ledger
            BEGIN INSERT OR IGNORE INTO reconciliation_dirty VALUES (OLD.entry_id); END;
        INSERT INTO reconciliation_dirty SELECT entry_id FROM ledger;
        CREATE TABLE reconciliation_leaves (
            entry_id INTEGER PRIMARY KEY,
            partner TEXT NOT NULL,
            group_key TEXT NOT NULL,
            bucket INTEGER NOT NULL,
            body BLOB NOT NULL,
            digest BLOB NOT NULL,
            quantity BIGINT NOT NULL
        );
        CREATE INDEX reconciliation_leaves_bucket ON reconciliation_leaves (partner, group_key, bucket);
        CREATE TABLE reconciliation_nodes (
            partner TEXT NOT NULL,
            group_key TEXT NOT NULL,
            level INTEGER NOT NULL,
            prefix INTEGER NOT NULL,
            blocks BIGINT NOT NULL,
            quantity_high BIGINT NOT NULL,
            quantity_low BIGINT NOT NULL,
            h0 BIGINT NOT NULL, h1 BIGINT NOT NULL, h2 BIGINT NOT NULL, h3 BIGINT NOT NULL,
            h4 BIGINT NOT NULL, h5 BIGINT NOT NULL, h6 BIGINT NOT NULL, h7 BIGINT NOT NULL,
            PRIMARY KEY (partner, level, group_key, prefix)
        ) WITHOUT ROWID;
        CREATE TABLE reconciliation_runs (
            run_id TEXT PRIMARY KEY,
            partner TEXT NOT NULL,
            role TEXT NOT NULL,
            status INTEGER NOT NULL,
            snapshot_at TEXT NOT NULL,
            started_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            detail TEXT NOT NULL DEFAULT '',
            progress BLOB NOT NULL DEFAULT X'',
            report BLOB NOT NULL DEFAULT X'',
            resolved_reason TEXT NOT NULL DEFAULT '',
            resolved_at TEXT
        );
        CREATE INDEX reconciliation_runs_partner ON reconciliation_runs (partner, started_at);
        CREATE TABLE frozen_ranges (
            run_id TEXT NOT NULL,
            unit_kind TEXT NOT NULL,
            issuing_registry TEXT NOT NULL,
            issuance TEXT NOT NULL,
            serial_start BIGINT NOT NULL,
            serial_end BIGINT NOT NULL,
            PRIMARY KEY (run_id, unit_kind, issuing_registry, issuance, serial_start, serial_end)
        );
        CREATE INDEX frozen_ranges_space ON frozen_ranges (unit_kind, issuing_registry, issuance, serial_start);
        CREATE TABLE partner_log_heads (
            partner TEXT PRIMARY KEY,
            tree_size BIGINT NOT NULL,
            root_hash BLOB NOT NULL,
            seen_at TEXT NOT NULL,
            partner_saw BIGINT NOT NULL DEFAULT 0
        );
        CREATE TABLE partner_log_history (
            partner TEXT NOT NULL,
            tree_size BIGINT NOT NULL,
            root_hash BLOB NOT NULL,
            PRIMARY KEY (partner, tree_size)
        ) WITHOUT ROWID
        """,
    ),
)

# The helpers below write migration 7's SQL: it is applied as they make it, so they must never change.

_NOW = "strftime('%Y-%m-%dT%H:%M:%f', 'now') || '000Z'"
"""The database's clock as `gateway.store.codec.to_text` writes instants (SQLite keeps milliseconds)."""


def _transfer_json(row: str) -> str:
    """A transfer row as JSON, with the columns `gateway.store.sqlite` reads a transfer from."""
    return (
        f"json_object('transfer_id', {row}.transfer_id, 'role', {row}.role, 'state', {row}.state,"
        f" 'terms', {row}.terms, 'rejections', {row}.rejections, 'created_at', {row}.created_at,"
        f" 'updated_at', {row}.updated_at)"
    )


LEDGER_COLUMNS = (
    "entry_id",
    "action_date",
    "action_type",
    "transfer_id",
    "block",
    "quantity",
    "vintage",
    "cooperative_approach",
    "authorization_id",
    "first_transferring_party",
    "transferring_party",
    "acquiring_party",
    "purpose",
    "action_subtype",
    "year_of_use",
    "using_party",
    "using_entity",
    "note",
)


def _ledger_json(row: str) -> str:
    """A ledger row as JSON: every stored column (the generated ones follow from them)."""
    return "json_object(" + ", ".join(f"'{c}', {row}.{c}" for c in LEDGER_COLUMNS) + ")"


def _change(kind: str, subject: str, body: str, where: str = "") -> str:
    return (
        f"INSERT INTO changes (kind, subject_id, body, recorded_at) SELECT '{kind}', {subject}, {body}, {_NOW}"
        + (f" WHERE {where}" if where else "")
        + ";"
    )


# The change feed (WatchChanges). Triggers write each change in the transaction that makes it, so a change
# commits exactly when its cause does: none is missed, and none that is rolled back appears. Positions are
# allocated under the database's write lock and so commit in increasing order: a reader that has seen
# position N has seen every committed position below N. SQLite has one writer at a time. The PostgreSQL store
# must keep this true by serializing every write transaction (its advisory lock): with concurrent writers a
# sequence's values could commit out of order, and a watcher could pass a position that commits later.
# AUTOINCREMENT: a position is never handed out twice, even once rows are gone.
MIGRATIONS = (
    *MIGRATIONS,
    (
        7,
        "the change feed: every transfer change and every ledger insert, update and delete, by position",
        f"""
        CREATE TABLE changes (
            position INTEGER PRIMARY KEY AUTOINCREMENT,
            kind TEXT NOT NULL,
            subject_id TEXT NOT NULL,
            body TEXT NOT NULL,
            recorded_at TEXT NOT NULL
        );
        CREATE TRIGGER changes_no_update BEFORE UPDATE ON changes
            BEGIN SELECT RAISE(ABORT, 'the change feed is append-only'); END;
        CREATE TRIGGER changes_no_delete BEFORE DELETE ON changes
            BEGIN SELECT RAISE(ABORT, 'the change feed is append-only'); END;
        CREATE TRIGGER transfers_change_insert AFTER INSERT ON transfers
            BEGIN {_change("transfer", "NEW.transfer_id", _transfer_json("NEW"))} END;
        CREATE TRIGGER transfers_change_update AFTER UPDATE ON transfers
            WHEN OLD.transfer_id IS NOT NEW.transfer_id OR OLD.role IS NOT NEW.role OR OLD.state IS NOT NEW.state
                OR OLD.terms IS NOT NEW.terms OR OLD.rejections IS NOT NEW.rejections
                OR OLD.created_at IS NOT NEW.created_at OR OLD.updated_at IS NOT NEW.updated_at
            BEGIN {_change("transfer", "NEW.transfer_id", _transfer_json("NEW"))} END;
        CREATE TRIGGER ledger_change_insert AFTER INSERT ON ledger
            BEGIN {_change("ledger_entry", "CAST(NEW.entry_id AS TEXT)", _ledger_json("NEW"))} END;
        CREATE TRIGGER ledger_change_update AFTER UPDATE ON ledger
            BEGIN
                {
            _change(
                "ledger_entry_removed",
                "CAST(OLD.entry_id AS TEXT)",
                _ledger_json("OLD"),
                "OLD.entry_id IS NOT NEW.entry_id",
            )
        }
                {_change("ledger_entry_changed", "CAST(NEW.entry_id AS TEXT)", _ledger_json("NEW"))}
            END;
        CREATE TRIGGER ledger_change_delete AFTER DELETE ON ledger
            BEGIN {_change("ledger_entry_removed", "CAST(OLD.entry_id AS TEXT)", _ledger_json("OLD"))} END;
        INSERT INTO changes (kind, subject_id, body, recorded_at)
            SELECT 'transfer', transfer_id, {_transfer_json("transfers")}, {_NOW} FROM transfers
            ORDER BY updated_at, transfer_id;
        INSERT INTO changes (kind, subject_id, body, recorded_at)
            SELECT 'ledger_entry', CAST(entry_id AS TEXT), {_ledger_json("ledger")}, {_NOW} FROM ledger
            ORDER BY entry_id
        """,
    ),
)

MIGRATIONS = (
    *MIGRATIONS,
    (
        8,
        "outbox leases: the replica that claimed a message and until when, so replicas sharing one database never"
        " send the same message at once",
        """
        ALTER TABLE outbox ADD COLUMN lease_owner TEXT NOT NULL DEFAULT '';
        ALTER TABLE outbox ADD COLUMN lease_until TEXT NOT NULL DEFAULT ''
        """,
    ),
)

AUTHORIZATION_USAGE_STATES = "1, 2, 4, 8"
"""`gateway.domain.transfer.USES_AUTHORIZED_QUANTITY` as migration 9 spells it (PROPOSED, CHECKED, COMPLETED,
ACCEPTED). A change to that set needs a new migration; a test compares the two."""

AUTHORIZATION_USAGE_FILL = (
    "INSERT INTO authorization_usage SELECT authorization_id, SUM(first_quantity) FROM transfers"
    f" WHERE role = 'initiating' AND state IN ({AUTHORIZATION_USAGE_STATES}) GROUP BY authorization_id"
)
"""Fills ``authorization_usage`` from the transfers: in migration 9, and at a start after emptying it
(`AUTHORIZATION_USAGE_REBUILD`), so that a repair made by hand (which may bypass the triggers: ``TRUNCATE``,
``INSERT OR REPLACE``, a session with triggers off) is undone by the next start. SQLite sums again at every
start; PostgreSQL only when the totals differ from their rows (`gateway.store.pg_migrations.TOTALS_AGREE`)."""

AUTHORIZATION_TIE_TOTALS_FILL = (
    "INSERT INTO authorization_tie_totals"
    " SELECT authorization_id, SUM(quantity) FROM authorization_ties GROUP BY authorization_id"
)
"""Fills ``authorization_tie_totals`` from the ties: in migration 16, and at a start, as the usage above."""

AUTHORIZATION_USAGE_REBUILD = (
    "DELETE FROM authorization_usage",
    AUTHORIZATION_USAGE_FILL,
    "DELETE FROM authorization_tie_totals",
    AUTHORIZATION_TIE_TOTALS_FILL,
)

# The first-transferred quantity each authorization has used, kept by triggers in the transaction of every
# change to an initiating transfer: a proposal checks its authorization with one row, where a sum over every
# transfer made under it grew with the registry's history.
MIGRATIONS = (
    *MIGRATIONS,
    (
        9,
        "the first-transferred quantity used per authorization, kept by triggers instead of summed per proposal",
        f"""
        CREATE TABLE authorization_usage (
            authorization_id TEXT PRIMARY KEY,
            first_quantity BIGINT NOT NULL
        );
        {AUTHORIZATION_USAGE_FILL};
        CREATE TRIGGER authorization_usage_insert AFTER INSERT ON transfers
            WHEN NEW.role = 'initiating' AND NEW.state IN ({AUTHORIZATION_USAGE_STATES})
            BEGIN
                INSERT INTO authorization_usage VALUES (NEW.authorization_id, NEW.first_quantity)
                    ON CONFLICT (authorization_id) DO UPDATE
                    SET first_quantity = first_quantity + excluded.first_quantity;
            END;
        CREATE TRIGGER authorization_usage_update AFTER UPDATE ON transfers
            WHEN (OLD.role = 'initiating' AND OLD.state IN ({AUTHORIZATION_USAGE_STATES}))
                OR (NEW.role = 'initiating' AND NEW.state IN ({AUTHORIZATION_USAGE_STATES}))
            BEGIN
                UPDATE authorization_usage SET first_quantity = first_quantity - OLD.first_quantity
                    WHERE authorization_id = OLD.authorization_id
                    AND OLD.role = 'initiating' AND OLD.state IN ({AUTHORIZATION_USAGE_STATES});
                INSERT INTO authorization_usage
                    SELECT NEW.authorization_id, NEW.first_quantity
                    WHERE NEW.role = 'initiating' AND NEW.state IN ({AUTHORIZATION_USAGE_STATES})
                    ON CONFLICT (authorization_id) DO UPDATE
                    SET first_quantity = first_quantity + excluded.first_quantity;
            END;
        CREATE TRIGGER authorization_usage_delete AFTER DELETE ON transfers
            WHEN OLD.role = 'initiating' AND OLD.state IN ({AUTHORIZATION_USAGE_STATES})
            BEGIN
                UPDATE authorization_usage SET first_quantity = first_quantity - OLD.first_quantity
                    WHERE authorization_id = OLD.authorization_id;
            END
        """,
    ),
)

# A transfer's terms (its blocks: a thousand make some 400 kB) never change, but its row changes state several
# times, and each change rewrote the terms with the row and copied them into the change feed. Transfers
# recorded from this version on keep their terms here and an empty text in the row; the readers take them
# from here when a row is here (`gateway.store.codec.TRANSFERS`). Rows written before keep theirs in place.
# Transfers are listed in the order they were created: by an index, not a sort of every row and its terms.
MIGRATIONS = (
    *MIGRATIONS,
    (
        10,
        "the terms of each transfer in a table of their own, so that a change of state does not rewrite them",
        """
        CREATE TABLE transfer_terms (
            transfer_id TEXT PRIMARY KEY,
            terms TEXT NOT NULL
        );
        CREATE INDEX transfers_created ON transfers (created_at, transfer_id)
        """,
    ),
)

# The change feed is append-only, and without this it grows for ever. An administrator prunes it up to a
# position (`PruneChanges`); this row keeps how far, and the digest of the last change removed, so that a watcher
# behind it is refused instead of silently skipping what was removed, and one exactly at it still resumes. The
# feed's delete guard lets a row go only once it is at or below that position.
MIGRATIONS = (
    *MIGRATIONS,
    (
        11,
        "the change feed's pruned prefix: the position through which changes were removed, and the last one's digest",
        """
        CREATE TABLE changes_pruned (
            singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
            through INTEGER NOT NULL,
            digest BLOB NOT NULL
        );
        INSERT INTO changes_pruned VALUES (1, 0, x'');
        DROP TRIGGER changes_no_delete;
        CREATE TRIGGER changes_no_delete BEFORE DELETE ON changes
            WHEN OLD.position > (SELECT through FROM changes_pruned)
            BEGIN SELECT RAISE(ABORT, 'the change feed is append-only: changes leave only by PruneChanges'); END
        """,
    ),
)

# Delivered messages stay in the outbox for good. The outbox worker looks for its lanes' heads and their leases
# several times a round, on the event loop; through `outbox_lane`, which leads with the receiver, each look read
# every message ever sent (about 30 ms at half a million). Through this index it reads the pending ones only.
MIGRATIONS = (
    *MIGRATIONS,
    (
        12,
        "an index of the outbox by state, so that finding the pending messages reads only those",
        """
        CREATE INDEX outbox_state ON outbox (state, outbox_id)
        """,
    ),
)

# Blocks superseded, sent away, used and cancelled stay in the table for good, and blocks_guarded holds the used
# and cancelled ones. A page of one account's holdings (ListHoldings, any read-only caller) read every guarded
# block of every account to find the account's few current ones. This index holds the current blocks alone, by
# account, in the order of a page (SQLite appends the row ID, which is the block ID; PostgreSQL's names it). Only
# this one: with a second, by serial space, a batched transfer of 1,000 blocks took about 9% longer; with this
# alone, no change beyond the measurement's noise.
MIGRATIONS = (
    *MIGRATIONS,
    (
        13,
        "an index of each account's current holdings",
        """
        CREATE INDEX blocks_current ON blocks (account_id, unit_kind, issuing_registry, issuance, serial_start)
            WHERE status IN ('held', 'reserved', 'pending')
        """,
    ),
)

# When a partner's receipt says it lacks statements, or asks for one again, the worker finds what it sent that
# partner by sequence number: the digest of one, the highest sent, and every one from a number on, sent again.
# Through outbox_lane each of these read every message ever delivered to the partner, inside the delivery's write
# transaction, and a partner that keeps asking repeats them at each retry. Trust documents are left out, as the
# queries leave them out (they are sealed with the largest sequence number, outside the channel's).
MIGRATIONS = (
    *MIGRATIONS,
    (
        14,
        "an index of the statements sent to each partner by sequence number",
        """
        CREATE INDEX outbox_sequence ON outbox (receiver, sequence) WHERE kind != 'trust'
        """,
    ),
)

# Reconciliation runs stay for good, and a partner starts one here with each request naming a new run. The sweep
# looked for stale runs every few seconds among the newest 1,000 of them (reading every run ever made and sorting
# them), so a stale run older than those was never closed; the operator's listing read them all too.
MIGRATIONS = (
    *MIGRATIONS,
    (
        15,
        "indexes of the reconciliation runs by status and by start, newest first",
        """
        CREATE INDEX reconciliation_runs_status ON reconciliation_runs (status, role, updated_at);
        CREATE INDEX reconciliation_runs_started ON reconciliation_runs (started_at DESC, run_id)
        """,
    ),
)

# Every proposal checks its authorization's first-transferred quantity: the transfers' part is one row (migration
# 9), but the ties' part summed every tie ever made under the authorization (each issuance registered under it,
# each use that tied units), so a proposal took longer as the authorization aged. Triggers keep the sum per
# authorization in the transaction of each tie, as they keep the transfers' part; a tie added or removed by hand
# is counted too, and a repair that bypasses the triggers is undone at the next start.
MIGRATIONS = (
    *MIGRATIONS,
    (
        16,
        "the quantity tied to each authorization, kept by triggers as ties are added",
        f"""
        CREATE TABLE authorization_tie_totals (
            authorization_id TEXT PRIMARY KEY,
            quantity BIGINT NOT NULL
        );
        {AUTHORIZATION_TIE_TOTALS_FILL};
        CREATE TRIGGER authorization_tie_totals_insert AFTER INSERT ON authorization_ties
            BEGIN
                INSERT INTO authorization_tie_totals VALUES (NEW.authorization_id, NEW.quantity)
                    ON CONFLICT (authorization_id) DO UPDATE SET quantity = quantity + excluded.quantity;
            END;
        CREATE TRIGGER authorization_tie_totals_update AFTER UPDATE ON authorization_ties
            BEGIN
                UPDATE authorization_tie_totals SET quantity = quantity - OLD.quantity
                    WHERE authorization_id = OLD.authorization_id;
                INSERT INTO authorization_tie_totals VALUES (NEW.authorization_id, NEW.quantity)
                    ON CONFLICT (authorization_id) DO UPDATE SET quantity = quantity + excluded.quantity;
            END;
        CREATE TRIGGER authorization_tie_totals_delete AFTER DELETE ON authorization_ties
            BEGIN
                UPDATE authorization_tie_totals SET quantity = quantity - OLD.quantity
                    WHERE authorization_id = OLD.authorization_id;
            END
        """,
    ),
)

DATA_STEPS: dict[int, str] = {4: "known ranges", 5: "ties of acquired blocks"}
"""Versions whose migration also fills a table from existing rows, in code (`gateway.store.sqlite`): the
ranges of known_ranges are merged so that they never overlap, which plain SQL does not do simply; and blocks
acquired before ties existed take the tie their acquisition's ledger entry names, through their splits."""

# A transfer of a thousand blocks records a thousand ledger entries on each side, and the row triggers of
# migrations 6 and 7 cost more than the rows themselves. `SQLiteTransaction.append_ledger`, given several
# entries, names them in ledger_appending while it writes them and then writes their changes and dirty marks
# with one statement each (`LEDGER_APPENDED`), in entry order, as the triggers would have; every other insert
# (by hand, by a repair) still fires them. PostgreSQL keeps its triggers: there, set statements cost more.
_APPENDING = "NOT EXISTS (SELECT 1 FROM ledger_appending WHERE NEW.entry_id BETWEEN first_id AND last_id)"

LEDGER_APPENDED: tuple[str, ...] = (
    f"INSERT INTO changes (kind, subject_id, body, recorded_at) SELECT 'ledger_entry', CAST(l.entry_id AS TEXT),"
    f" {_ledger_json('l')}, {_NOW} FROM ledger l WHERE l.entry_id BETWEEN ?1 AND ?2 ORDER BY l.entry_id",
    "INSERT OR IGNORE INTO reconciliation_dirty SELECT entry_id FROM ledger WHERE entry_id BETWEEN ?1 AND ?2",
)
"""What the ledger's insert triggers write, for the entries from ``?1`` to ``?2`` at once (extended by migration
19)."""

MIGRATIONS = (
    *MIGRATIONS,
    (
        17,
        "ledger entries appended together write their changes and reconciliation marks together",
        f"""
        CREATE TABLE ledger_appending (
            first_id INTEGER NOT NULL,
            last_id INTEGER NOT NULL
        );
        DROP TRIGGER ledger_change_insert;
        CREATE TRIGGER ledger_change_insert AFTER INSERT ON ledger WHEN {_APPENDING}
            BEGIN {_change("ledger_entry", "CAST(NEW.entry_id AS TEXT)", _ledger_json("NEW"))} END;
        DROP TRIGGER ledger_reconciliation_insert;
        CREATE TRIGGER ledger_reconciliation_insert AFTER INSERT ON ledger WHEN {_APPENDING}
            BEGIN INSERT OR IGNORE INTO reconciliation_dirty VALUES (NEW.entry_id); END
        """,
    ),
)

# `SQLiteTransaction.ledger_of_units` searches each action type's entries from as far back as that type's longest
# entry reaches. One long entry (an issuance of millions registered under an authorization) widened the window
# of every type to the whole serial space: each arriving block whose units were here before read every entry
# of its space. The insert and update triggers keep the spans, so a row written by hand counts too; entries
# appended together (migration 17) are counted by `LEDGER_ACTION_SPAN` instead.
_ACTION_SPAN = """INSERT INTO ledger_action_spans VALUES (NEW.first_transferring_party, NEW.action_type,
                NEW.unit_kind, NEW.issuing_registry, NEW.issuance, NEW.serial_end - NEW.serial_start)
                ON CONFLICT DO UPDATE SET longest = MAX(longest, excluded.longest)"""

LEDGER_ACTION_SPAN = (
    "INSERT INTO ledger_action_spans VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO UPDATE"
    " SET longest = MAX(longest, excluded.longest)"
)
"""One span of entries appended together, raised: their spans are known before they are written
(`gateway.store.codec.ledger_action_spans`), so nothing reads their blocks back for it."""

MIGRATIONS = (
    *MIGRATIONS,
    (
        18,
        "the longest ledger entry per first transferring Party, action type and serial space, kept by triggers",
        f"""
        CREATE TABLE ledger_action_spans (
            first_transferring_party TEXT NOT NULL,
            action_type TEXT NOT NULL,
            unit_kind TEXT NOT NULL,
            issuing_registry TEXT NOT NULL,
            issuance TEXT NOT NULL,
            longest BIGINT NOT NULL,
            PRIMARY KEY (first_transferring_party, action_type, unit_kind, issuing_registry, issuance)
        ) WITHOUT ROWID;
        INSERT INTO ledger_action_spans
            SELECT first_transferring_party, action_type, unit_kind, issuing_registry, issuance,
                MAX(serial_end - serial_start)
            FROM ledger GROUP BY first_transferring_party, action_type, unit_kind, issuing_registry, issuance;
        CREATE TRIGGER ledger_action_spans_insert AFTER INSERT ON ledger WHEN {_APPENDING}
            BEGIN {_ACTION_SPAN}; END;
        CREATE TRIGGER ledger_action_spans_update AFTER UPDATE ON ledger
            BEGIN {_ACTION_SPAN}; END;
        DROP TABLE ledger_spans
        """,
    ),
)

# GetLedgerSummary summed the whole ledger on every call (65 ms at 200,000 entries, holding the store). The totals
# per summary group are kept as the ledger changes: by triggers, so a row written, changed or removed by hand
# counts, and for entries appended together by one set statement. A group whose entries are all gone keeps its
# row, with no entries. A repair that bypasses the triggers (``INSERT OR REPLACE``, ``TRUNCATE``) is undone at
# the next start, which sums the ledger again (`LEDGER_TOTALS_REBUILD`). The wide index the sum used goes; the
# entries still awaiting their first transfer abroad (`SQLiteTransaction.ledger_unresolved`) get a small one.
_TOTAL_COLUMNS = (
    "action_type",
    "action_subtype",
    "purpose",
    "vintage",
    "year_of_use",
    "action_year",
    "cooperative_approach",
    "authorization_id",
    "first_transferring_party",
    "partner",
)
"""The columns a summary group is the same in (`gateway.domain.summary.LedgerTotal`)."""

LEDGER_TOTAL_COLUMNS = ", ".join(_TOTAL_COLUMNS)


def _total_of(row: str) -> str:
    """The group key and columns of ``row``'s summary group."""
    values = ", ".join(f"{row}.{c}" for c in _TOTAL_COLUMNS)
    return f"json_array({values}), {values}"


def _add_total(row: str) -> str:
    return (
        f"INSERT INTO ledger_totals VALUES ({_total_of(row)}, {row}.quantity >> 32, {row}.quantity & 4294967295, 1)"
        " ON CONFLICT (group_key) DO UPDATE SET high = high + excluded.high, low = low + excluded.low,"
        " entries = entries + 1"
    )


def _remove_total(row: str) -> str:
    values = ", ".join(f"{row}.{c}" for c in _TOTAL_COLUMNS)
    return (
        f"UPDATE ledger_totals SET high = high - ({row}.quantity >> 32), low = low - ({row}.quantity & 4294967295),"
        f" entries = entries - 1 WHERE group_key = json_array({values})"
    )


_SUMMED = (
    f"SELECT {_total_of('l')}, SUM(l.quantity >> 32), SUM(l.quantity & 4294967295), COUNT(*) FROM ledger l"
    " {where} GROUP BY " + ", ".join(f"l.{c}" for c in _TOTAL_COLUMNS)
)

LEDGER_APPENDED = (
    *LEDGER_APPENDED,
    "INSERT INTO ledger_totals "
    + _SUMMED.format(where="WHERE l.entry_id BETWEEN ?1 AND ?2")
    + " ON CONFLICT (group_key) DO UPDATE SET high = high + excluded.high, low = low + excluded.low,"
    " entries = entries + excluded.entries",
)

LEDGER_TOTALS_REBUILD = ("DELETE FROM ledger_totals", f"INSERT INTO ledger_totals {_SUMMED.format(where='')}")
"""Sums the ledger into ``ledger_totals`` again: at every start, after migration 19 first did (PostgreSQL: at a
start that finds them wrong, `gateway.store.pg_migrations.TOTALS_AGREE`)."""

MIGRATIONS = (
    *MIGRATIONS,
    (
        19,
        "the ledger's totals per summary group, kept by triggers as the ledger changes",
        f"""
        CREATE TABLE ledger_totals (
            group_key TEXT PRIMARY KEY,
            action_type TEXT NOT NULL,
            action_subtype TEXT NOT NULL,
            purpose TEXT NOT NULL,
            vintage INTEGER NOT NULL,
            year_of_use INTEGER,
            action_year INTEGER,
            cooperative_approach TEXT NOT NULL,
            authorization_id TEXT NOT NULL,
            first_transferring_party TEXT NOT NULL,
            partner TEXT,
            high INTEGER NOT NULL,
            low INTEGER NOT NULL,
            entries INTEGER NOT NULL
        ) WITHOUT ROWID;
        {LEDGER_TOTALS_REBUILD[1]};
        CREATE TRIGGER ledger_totals_insert AFTER INSERT ON ledger WHEN {_APPENDING}
            BEGIN {_add_total("NEW")}; END;
        CREATE TRIGGER ledger_totals_update AFTER UPDATE ON ledger
            BEGIN {_remove_total("OLD")}; {_add_total("NEW")}; END;
        CREATE TRIGGER ledger_totals_delete AFTER DELETE ON ledger
            BEGIN {_remove_total("OLD")}; END;
        DROP INDEX ledger_summary;
        CREATE INDEX ledger_unresolved ON ledger (first_transferring_party, entry_id)
            WHERE action_type = 'Transfer' AND action_subtype = 'Not yet defined'
        """,
    ),
)

MIGRATIONS = (
    *MIGRATIONS,
    (
        20,
        "fold each first transfer to another Party into reconciliation again, under its transfer's purpose",
        """
        INSERT OR IGNORE INTO reconciliation_dirty SELECT entry_id FROM ledger
            WHERE action_type = 'First transfer' AND action_subtype = 'First transfer to another Party'
        """,
    ),
)

# A transfer's completion booked its units under the versions of its authorization recorded by the instant the
# transfer was created: clocks, not the order of commits, so a replica whose clock was behind (or a clock that
# stepped) could book the units under a version the Proposal did not deliver them under. The version the
# Proposal used is recorded with the transfer instead; transfers proposed before keep the rule by instants.
MIGRATIONS = (
    *MIGRATIONS,
    (
        21,
        "the authorization version each transfer was proposed under",
        """
        CREATE TABLE transfer_authorization_versions (
            transfer_id TEXT PRIMARY KEY,
            version TEXT NOT NULL
        ) WITHOUT ROWID
        """,
    ),
)
