"""Versioned schema migrations of the PostgreSQL store, in PostgreSQL's dialect.

The versions and descriptions are those of `gateway.store.migrations` (the SQLite store's), so one version
number means one schema whichever the backend. Append a migration; never edit an applied one.

Differences from the SQLite scripts, each for a reason:

- integers are ``BIGINT`` (64-bit, as SQLite's INTEGER is), bytes ``BYTEA``, and every text column that a
  query sorts or compares by range is ``COLLATE "C"`` (byte order, as SQLite compares), so that listings come
  out in the same order on both backends whatever the database's default collation;
- row IDs are identity columns; the message log's index is given by the store (the next one after the
  largest) because the Merkle tree over it needs 1, 2, 3, ... without the gaps a rolled-back sequence leaves;
- triggers are plpgsql functions; the ledger's derived columns are ``STORED`` generated columns;
- statements that only convert rows written by an earlier version (and the Python data steps of versions 4
  and 5) are left out: no PostgreSQL database of a version before this store exists, so there are none.

Each script is a list of statements run in one transaction with the row in ``schema_migrations``.
"""

from __future__ import annotations

from gateway.store.migrations import (
    AUTHORIZATION_TIE_TOTALS_FILL,
    AUTHORIZATION_USAGE_FILL,
    AUTHORIZATION_USAGE_STATES,
    LEDGER_COLUMNS,
    LEDGER_TOTAL_COLUMNS,
)
from gateway.store.migrations import MIGRATIONS as SQLITE_MIGRATIONS

T = 'TEXT COLLATE "C"'
"""Text compared byte for byte, as SQLite compares."""

WRITE_LOCK = 0x6361_7262_6F6E_0001
"""The advisory lock every write transaction takes first ("carbon" and 1): one writer at a time per database."""

_EMPTY = "'\\x'::bytea"


def _transfer_json(row: str) -> str:
    """A transfer row as JSON text, with the columns the store reads a transfer from (as migration 7 of
    `gateway.store.migrations` writes them for SQLite)."""
    return (
        f"json_build_object('transfer_id', {row}.transfer_id, 'role', {row}.role, 'state', {row}.state,"
        f" 'terms', {row}.terms, 'rejections', {row}.rejections, 'created_at', {row}.created_at,"
        f" 'updated_at', {row}.updated_at)::text"
    )


def _ledger_json(row: str) -> str:
    """A ledger row as JSON text: every stored column (the generated ones follow from them)."""
    return "json_build_object(" + ", ".join(f"'{c}', {row}.{c}" for c in LEDGER_COLUMNS) + ")::text"


def _total_columns(row: str) -> str:
    """The columns of ``row`` a summary group is the same in, as SQLite's migration 19 names them."""
    return ", ".join(f"{row}.{c}" for c in LEDGER_TOTAL_COLUMNS.split(", "))


def _total_key(row: str) -> str:
    """The key of ``row``'s summary group."""
    return f"json_build_array({_total_columns(row)})::text"


LEDGER_TOTALS_REBUILD = (
    "DELETE FROM ledger_totals",
    f"INSERT INTO ledger_totals SELECT {_total_key('l')}, {_total_columns('l')}, SUM(l.quantity >> 32),"
    f" SUM(l.quantity & 4294967295), COUNT(*) FROM ledger l GROUP BY {_total_columns('l')}",
)
"""Sums the ledger into ``ledger_totals`` again: at a start that finds them wrong (`TOTALS_AGREE`), after migration
19 first did (`gateway.store.migrations.LEDGER_TOTALS_REBUILD` on SQLite, which sums at every start)."""


def _agree(kept: str, summed: str) -> str:
    """One statement: whether the rows of ``kept`` are exactly those of ``summed``."""
    return f"SELECT NOT EXISTS (({kept} EXCEPT ALL {summed}) UNION ALL ({summed} EXCEPT ALL {kept}))"


TOTALS_AGREE = (
    _agree(
        "SELECT authorization_id, first_quantity::numeric FROM authorization_usage WHERE first_quantity <> 0",
        "SELECT authorization_id, SUM(first_quantity) FROM transfers"
        f" WHERE role = 'initiating' AND state IN ({AUTHORIZATION_USAGE_STATES}) GROUP BY authorization_id"
        " HAVING SUM(first_quantity) <> 0",
    ),
    _agree(
        "SELECT authorization_id, quantity::numeric FROM authorization_tie_totals WHERE quantity <> 0",
        "SELECT authorization_id, SUM(quantity) FROM authorization_ties GROUP BY authorization_id"
        " HAVING SUM(quantity) <> 0",
    ),
    # The group's columns too: the summary reads them, not the key.
    _agree(
        f"SELECT group_key, {LEDGER_TOTAL_COLUMNS}, high::numeric, low::numeric, entries::numeric FROM ledger_totals"
        " WHERE entries <> 0 OR high <> 0 OR low <> 0",
        f"SELECT {_total_key('l')}, {_total_columns('l')}, SUM(l.quantity >> 32), SUM(l.quantity & 4294967295),"
        f" COUNT(*)::numeric FROM ledger l GROUP BY {_total_columns('l')}",
    ),
)
"""Whether the totals the triggers keep (authorization usage and ties, `LEDGER_TOTALS_REBUILD`'s ledger totals)
are what summing their rows again would give, read without the write lock: a start sums them again, under the
lock every writer waits for, only when they are not (a repair by hand bypassed the triggers)."""


def _description(version: int) -> str:
    for number, description, _ in SQLITE_MIGRATIONS:
        if number == version:
            return description
    raise KeyError(version)


PG_MIGRATIONS: list[tuple[int, str, list[str]]] = [
    (
        1,
        _description(1),
        [
            f"CREATE TABLE accounts (account_id {T} PRIMARY KEY, holder_name {T} NOT NULL, account_type {T} NOT NULL)",
            f"CREATE TABLE authorizations (authorization_id {T} PRIMARY KEY, body {T} NOT NULL)",
            f"""CREATE TABLE blocks (
                block_id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
                unit_kind {T} NOT NULL,
                issuing_registry {T} NOT NULL,
                issuance {T} NOT NULL,
                serial_start BIGINT NOT NULL,
                serial_end BIGINT NOT NULL,
                body {T} NOT NULL,
                account_id {T} NOT NULL REFERENCES accounts(account_id),
                status {T} NOT NULL,
                transfer_id {T} NOT NULL DEFAULT '',
                parent_id BIGINT REFERENCES blocks(block_id),
                CHECK (serial_end >= serial_start)
            )""",
            "CREATE INDEX blocks_space ON blocks (unit_kind, issuing_registry, issuance, serial_start)",
            "CREATE INDEX blocks_transfer ON blocks (transfer_id, status)",
            f"""CREATE TABLE transfers (
                transfer_id {T} PRIMARY KEY,
                role {T} NOT NULL,
                state BIGINT NOT NULL,
                terms {T} NOT NULL,
                authorization_id {T} NOT NULL,
                quantity BIGINT NOT NULL,
                rejections {T} NOT NULL,
                created_at {T} NOT NULL,
                updated_at {T} NOT NULL
            )""",
            f"""CREATE TABLE ledger (
                entry_id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
                action_date {T} NOT NULL,
                action_type {T} NOT NULL,
                transfer_id {T} NOT NULL,
                block {T} NOT NULL,
                quantity BIGINT NOT NULL,
                vintage BIGINT NOT NULL,
                cooperative_approach {T} NOT NULL,
                authorization_id {T} NOT NULL,
                first_transferring_party {T} NOT NULL,
                transferring_party {T} NOT NULL,
                acquiring_party {T} NOT NULL,
                purpose {T} NOT NULL
            )""",
            f"""CREATE TABLE channels (
                direction {T} NOT NULL,
                peer {T} NOT NULL,
                last_sequence BIGINT NOT NULL,
                last_hash BYTEA NOT NULL,
                PRIMARY KEY (direction, peer)
            )""",
            # The first outbox; version 3 replaces it.
            f"""CREATE TABLE outbox (
                outbox_id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
                receiver {T} NOT NULL,
                sequence BIGINT NOT NULL,
                message_id {T} NOT NULL UNIQUE,
                envelope BYTEA NOT NULL,
                state {T} NOT NULL,
                attempts BIGINT NOT NULL DEFAULT 0,
                next_attempt_at {T} NOT NULL,
                last_error {T} NOT NULL DEFAULT '',
                created_at {T} NOT NULL,
                UNIQUE (receiver, sequence)
            )""",
            f"""CREATE TABLE messages (
                direction {T} NOT NULL,
                peer {T} NOT NULL,
                message_id {T} NOT NULL,
                envelope BYTEA NOT NULL,
                receipt BYTEA NOT NULL,
                recorded_at {T} NOT NULL,
                PRIMARY KEY (direction, peer, message_id)
            )""",
            f"""CREATE TABLE idempotency (
                caller {T} NOT NULL,
                method {T} NOT NULL,
                idempotency_key {T} NOT NULL,
                request_hash {T} NOT NULL,
                response BYTEA NOT NULL,
                PRIMARY KEY (caller, method, idempotency_key)
            )""",
        ],
    ),
    (
        2,
        _description(2),
        [
            f"""CREATE TABLE trust_documents (
                party {T} NOT NULL,
                version BIGINT NOT NULL,
                envelope BYTEA NOT NULL,
                recorded_at {T} NOT NULL,
                PRIMARY KEY (party, version)
            )""",
            f"""CREATE TABLE held_statements (
                sender {T} NOT NULL,
                sequence BIGINT NOT NULL,
                envelope BYTEA NOT NULL,
                held_at {T} NOT NULL,
                PRIMARY KEY (sender, sequence)
            )""",
        ],
    ),
    (
        3,
        _description(3),
        [
            "DROP TABLE outbox",
            f"""CREATE TABLE outbox (
                outbox_id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
                receiver {T} NOT NULL,
                message_id {T} NOT NULL UNIQUE,
                kind {T} NOT NULL,
                transfer_id {T} NOT NULL DEFAULT '',
                body BYTEA NOT NULL,
                state {T} NOT NULL,
                sequence BIGINT NOT NULL DEFAULT 0,
                attempts BIGINT NOT NULL DEFAULT 0,
                next_attempt_at {T} NOT NULL,
                last_code BIGINT NOT NULL DEFAULT 0,
                last_error {T} NOT NULL DEFAULT '',
                payload_digest BYTEA NOT NULL DEFAULT {_EMPTY},
                created_at {T} NOT NULL,
                settled_at {T}
            )""",
            "CREATE INDEX outbox_lane ON outbox (receiver, state, outbox_id)",
            "CREATE INDEX outbox_transfer ON outbox (transfer_id, state)",
            f"""CREATE TABLE message_log (
                log_index BIGINT PRIMARY KEY,
                direction {T} NOT NULL,
                peer {T} NOT NULL,
                message_id {T} NOT NULL,
                kind {T} NOT NULL,
                form {T} NOT NULL,
                envelope BYTEA NOT NULL,
                recorded_at {T} NOT NULL
            )""",
            "CREATE INDEX message_log_message ON message_log (peer, message_id)",
            """CREATE FUNCTION message_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN RAISE EXCEPTION 'the message log is append-only'; END $$""",
            "CREATE TRIGGER message_log_no_update BEFORE UPDATE ON message_log"
            " FOR EACH ROW EXECUTE FUNCTION message_log_append_only()",
            "CREATE TRIGGER message_log_no_delete BEFORE DELETE ON message_log"
            " FOR EACH ROW EXECUTE FUNCTION message_log_append_only()",
            f"""CREATE TABLE issued_ranges (
                unit_kind {T} NOT NULL,
                issuing_registry {T} NOT NULL,
                issuance {T} NOT NULL,
                serial_start BIGINT NOT NULL,
                serial_end BIGINT NOT NULL,
                recorded_at {T} NOT NULL,
                PRIMARY KEY (unit_kind, issuing_registry, issuance, serial_start)
            )""",
            f"""CREATE TABLE abroad_ranges (
                unit_kind {T} NOT NULL,
                issuing_registry {T} NOT NULL,
                issuance {T} NOT NULL,
                serial_start BIGINT NOT NULL,
                serial_end BIGINT NOT NULL,
                PRIMARY KEY (unit_kind, issuing_registry, issuance, serial_start)
            )""",
            "CREATE INDEX blocks_guarded ON blocks (unit_kind, issuing_registry, issuance, serial_start)"
            " WHERE status IN ('held', 'reserved', 'pending', 'debited')",
            "ALTER TABLE transfers ADD COLUMN first_quantity BIGINT NOT NULL DEFAULT 0",
            f"ALTER TABLE transfers ADD COLUMN status_queried_at {T} NOT NULL DEFAULT ''",
            "CREATE INDEX transfers_open ON transfers (state, created_at)",
        ],
    ),
    (
        4,
        _description(4),
        [
            f"""CREATE TABLE known_ranges (
                unit_kind {T} NOT NULL,
                issuing_registry {T} NOT NULL,
                issuance {T} NOT NULL,
                serial_start BIGINT NOT NULL,
                serial_end BIGINT NOT NULL,
                PRIMARY KEY (unit_kind, issuing_registry, issuance, serial_start)
            )""",
            "DROP TABLE issued_ranges",
            f"ALTER TABLE outbox ADD COLUMN sealed BYTEA NOT NULL DEFAULT {_EMPTY}",
        ],
    ),
    (
        5,
        _description(5),
        [
            f"""CREATE TABLE authorization_versions (
                seq BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
                authorization_id {T} NOT NULL,
                version {T} NOT NULL,
                date {T} NOT NULL,
                body {T} NOT NULL,
                recorded_at {T} NOT NULL,
                UNIQUE (authorization_id, version)
            )""",
            f"""CREATE TABLE authorization_ties (
                authorization_id {T} NOT NULL,
                action_id {T} NOT NULL,
                quantity BIGINT NOT NULL,
                recorded_at {T} NOT NULL
            )""",
            "CREATE INDEX authorization_ties_id ON authorization_ties (authorization_id)",
            f"ALTER TABLE ledger ADD COLUMN action_subtype {T} NOT NULL DEFAULT ''",
            "ALTER TABLE ledger ADD COLUMN year_of_use BIGINT",
            f"ALTER TABLE ledger ADD COLUMN using_party {T} NOT NULL DEFAULT ''",
            f"ALTER TABLE ledger ADD COLUMN using_entity {T} NOT NULL DEFAULT ''",
            f"ALTER TABLE ledger ADD COLUMN note {T} NOT NULL DEFAULT ''",
            f"ALTER TABLE ledger ADD COLUMN unit_kind {T} GENERATED ALWAYS AS (block::jsonb ->> 'unit_kind') STORED",
            f"ALTER TABLE ledger ADD COLUMN issuing_registry {T}"
            " GENERATED ALWAYS AS (block::jsonb ->> 'issuing_registry') STORED",
            f"ALTER TABLE ledger ADD COLUMN issuance {T} GENERATED ALWAYS AS (block::jsonb ->> 'issuance') STORED",
            "ALTER TABLE ledger ADD COLUMN serial_start BIGINT"
            " GENERATED ALWAYS AS ((block::jsonb ->> 'start')::bigint) STORED",
            "ALTER TABLE ledger ADD COLUMN serial_end BIGINT"
            " GENERATED ALWAYS AS ((block::jsonb ->> 'end')::bigint) STORED",
            "ALTER TABLE ledger ADD COLUMN action_year BIGINT"
            " GENERATED ALWAYS AS (CAST(substr(action_date, 1, 4) AS BIGINT)) STORED",
            f"ALTER TABLE ledger ADD COLUMN partner {T} GENERATED ALWAYS AS"
            " (CASE WHEN action_type = 'Acquisition' THEN transferring_party ELSE acquiring_party END) STORED",
            "CREATE INDEX ledger_party_action_space ON ledger"
            " (first_transferring_party, action_type, unit_kind, issuing_registry, issuance, serial_start)",
            "CREATE INDEX ledger_summary ON ledger (action_type, action_subtype, purpose, vintage, year_of_use,"
            " action_year, cooperative_approach, authorization_id, first_transferring_party, partner, quantity)",
            "CREATE INDEX ledger_action ON ledger (transfer_id)",
            "DROP INDEX blocks_guarded",
            "CREATE INDEX blocks_guarded ON blocks (unit_kind, issuing_registry, issuance, serial_start)"
            " WHERE status IN ('held', 'reserved', 'pending', 'debited', 'used', 'cancelled')",
            f"""CREATE TABLE ledger_spans (
                first_transferring_party {T} NOT NULL,
                unit_kind {T} NOT NULL,
                issuing_registry {T} NOT NULL,
                issuance {T} NOT NULL,
                longest BIGINT NOT NULL,
                PRIMARY KEY (first_transferring_party, unit_kind, issuing_registry, issuance)
            )""",
            "CREATE TABLE reported_emissions"
            f" (year BIGINT PRIMARY KEY, quantity BIGINT NOT NULL, recorded_at {T} NOT NULL)",
            f"""CREATE TABLE locked_periods (
                first_year BIGINT NOT NULL,
                last_year BIGINT NOT NULL,
                locked_at {T} NOT NULL,
                reason {T} NOT NULL,
                PRIMARY KEY (first_year, last_year)
            )""",
            f"CREATE TABLE settings (name {T} PRIMARY KEY, value {T} NOT NULL, recorded_at {T} NOT NULL)",
        ],
    ),
    (
        6,
        _description(6),
        [
            f"ALTER TABLE message_log ADD COLUMN transfer_id {T} NOT NULL DEFAULT ''",
            "CREATE INDEX message_log_transfer ON message_log (transfer_id) WHERE transfer_id != ''",
            """CREATE TABLE log_tree (
                level BIGINT NOT NULL,
                node_index BIGINT NOT NULL,
                hash BYTEA NOT NULL,
                PRIMARY KEY (level, node_index)
            )""",
            "CREATE TABLE reconciliation_dirty (entry_id BIGINT PRIMARY KEY)",
            """CREATE FUNCTION ledger_reconciliation_mark() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                    IF TG_OP IN ('UPDATE', 'DELETE') THEN
                        INSERT INTO reconciliation_dirty VALUES (OLD.entry_id) ON CONFLICT DO NOTHING;
                    END IF;
                    IF TG_OP IN ('INSERT', 'UPDATE') THEN
                        INSERT INTO reconciliation_dirty VALUES (NEW.entry_id) ON CONFLICT DO NOTHING;
                    END IF;
                    RETURN NULL;
                END $$""",
            "CREATE TRIGGER ledger_reconciliation_insert AFTER INSERT ON ledger"
            " FOR EACH ROW EXECUTE FUNCTION ledger_reconciliation_mark()",
            "CREATE TRIGGER ledger_reconciliation_update AFTER UPDATE ON ledger"
            " FOR EACH ROW EXECUTE FUNCTION ledger_reconciliation_mark()",
            "CREATE TRIGGER ledger_reconciliation_delete AFTER DELETE ON ledger"
            " FOR EACH ROW EXECUTE FUNCTION ledger_reconciliation_mark()",
            f"""CREATE TABLE reconciliation_leaves (
                entry_id BIGINT PRIMARY KEY,
                partner {T} NOT NULL,
                group_key {T} NOT NULL,
                bucket BIGINT NOT NULL,
                body BYTEA NOT NULL,
                digest BYTEA NOT NULL,
                quantity BIGINT NOT NULL
            )""",
            "CREATE INDEX reconciliation_leaves_bucket ON reconciliation_leaves (partner, group_key, bucket)",
            f"""CREATE TABLE reconciliation_nodes (
                partner {T} NOT NULL,
                group_key {T} NOT NULL,
                level BIGINT NOT NULL,
                prefix BIGINT NOT NULL,
                blocks BIGINT NOT NULL,
                quantity_high BIGINT NOT NULL,
                quantity_low BIGINT NOT NULL,
                h0 BIGINT NOT NULL, h1 BIGINT NOT NULL, h2 BIGINT NOT NULL, h3 BIGINT NOT NULL,
                h4 BIGINT NOT NULL, h5 BIGINT NOT NULL, h6 BIGINT NOT NULL, h7 BIGINT NOT NULL,
                PRIMARY KEY (partner, level, group_key, prefix)
            )""",
            f"""CREATE TABLE reconciliation_runs (
                run_id {T} PRIMARY KEY,
                partner {T} NOT NULL,
                role {T} NOT NULL,
                status BIGINT NOT NULL,
                snapshot_at {T} NOT NULL,
                started_at {T} NOT NULL,
                updated_at {T} NOT NULL,
                detail {T} NOT NULL DEFAULT '',
                progress BYTEA NOT NULL DEFAULT {_EMPTY},
                report BYTEA NOT NULL DEFAULT {_EMPTY},
                resolved_reason {T} NOT NULL DEFAULT '',
                resolved_at {T}
            )""",
            "CREATE INDEX reconciliation_runs_partner ON reconciliation_runs (partner, started_at)",
            f"""CREATE TABLE frozen_ranges (
                run_id {T} NOT NULL,
                unit_kind {T} NOT NULL,
                issuing_registry {T} NOT NULL,
                issuance {T} NOT NULL,
                serial_start BIGINT NOT NULL,
                serial_end BIGINT NOT NULL,
                PRIMARY KEY (run_id, unit_kind, issuing_registry, issuance, serial_start, serial_end)
            )""",
            "CREATE INDEX frozen_ranges_space ON frozen_ranges (unit_kind, issuing_registry, issuance, serial_start)",
            f"""CREATE TABLE partner_log_heads (
                partner {T} PRIMARY KEY,
                tree_size BIGINT NOT NULL,
                root_hash BYTEA NOT NULL,
                seen_at {T} NOT NULL,
                partner_saw BIGINT NOT NULL DEFAULT 0
            )""",
            f"""CREATE TABLE partner_log_history (
                partner {T} NOT NULL,
                tree_size BIGINT NOT NULL,
                root_hash BYTEA NOT NULL,
                PRIMARY KEY (partner, tree_size)
            )""",
        ],
    ),
    (
        7,
        _description(7),
        [
            # Positions come from an identity column. A rolled-back write leaves a gap in the numbers, which
            # readers never wait on; what matters is that positions commit in increasing order, which holds
            # because every write transaction holds the store's write lock (see gateway.store.postgres).
            f"""CREATE TABLE changes (
                position BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                kind {T} NOT NULL,
                subject_id {T} NOT NULL,
                body {T} NOT NULL,
                recorded_at {T} NOT NULL
            )""",
            """CREATE FUNCTION changes_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                    RAISE EXCEPTION 'the change feed is append-only';
                END $$""",
            "CREATE TRIGGER changes_no_update BEFORE UPDATE ON changes"
            " FOR EACH ROW EXECUTE FUNCTION changes_append_only()",
            "CREATE TRIGGER changes_no_delete BEFORE DELETE ON changes"
            " FOR EACH ROW EXECUTE FUNCTION changes_append_only()",
            """CREATE FUNCTION change_now() RETURNS text LANGUAGE sql AS $$
                SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
            $$""",
            # A change takes the store's write lock before its position: the gateway's own writers hold it
            # already, and a hand-made repair in another session then also commits its positions in order, so a
            # watcher never passes a position that commits later.
            f"""CREATE FUNCTION transfer_change() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                    PERFORM pg_advisory_xact_lock({WRITE_LOCK});
                    IF TG_OP = 'UPDATE' AND OLD.transfer_id IS NOT DISTINCT FROM NEW.transfer_id
                        AND OLD.role IS NOT DISTINCT FROM NEW.role AND OLD.state IS NOT DISTINCT FROM NEW.state
                        AND OLD.terms IS NOT DISTINCT FROM NEW.terms
                        AND OLD.rejections IS NOT DISTINCT FROM NEW.rejections
                        AND OLD.created_at IS NOT DISTINCT FROM NEW.created_at
                        AND OLD.updated_at IS NOT DISTINCT FROM NEW.updated_at THEN
                        RETURN NULL;
                    END IF;
                    INSERT INTO changes (kind, subject_id, body, recorded_at)
                        VALUES ('transfer', NEW.transfer_id, {_transfer_json("NEW")}, change_now());
                    RETURN NULL;
                END $$""",
            "CREATE TRIGGER transfers_change_insert AFTER INSERT ON transfers"
            " FOR EACH ROW EXECUTE FUNCTION transfer_change()",
            "CREATE TRIGGER transfers_change_update AFTER UPDATE ON transfers"
            " FOR EACH ROW EXECUTE FUNCTION transfer_change()",
            f"""CREATE FUNCTION ledger_change() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                    PERFORM pg_advisory_xact_lock({WRITE_LOCK});
                    IF TG_OP = 'INSERT' THEN
                        INSERT INTO changes (kind, subject_id, body, recorded_at)
                            VALUES ('ledger_entry', NEW.entry_id::text, {_ledger_json("NEW")}, change_now());
                    ELSIF TG_OP = 'UPDATE' THEN
                        IF OLD.entry_id IS DISTINCT FROM NEW.entry_id THEN
                            INSERT INTO changes (kind, subject_id, body, recorded_at) VALUES
                                ('ledger_entry_removed', OLD.entry_id::text, {_ledger_json("OLD")}, change_now());
                        END IF;
                        INSERT INTO changes (kind, subject_id, body, recorded_at)
                            VALUES ('ledger_entry_changed', NEW.entry_id::text, {_ledger_json("NEW")}, change_now());
                    ELSE
                        INSERT INTO changes (kind, subject_id, body, recorded_at)
                            VALUES ('ledger_entry_removed', OLD.entry_id::text, {_ledger_json("OLD")}, change_now());
                    END IF;
                    RETURN NULL;
                END $$""",
            "CREATE TRIGGER ledger_change_insert AFTER INSERT ON ledger FOR EACH ROW EXECUTE FUNCTION ledger_change()",
            "CREATE TRIGGER ledger_change_update AFTER UPDATE ON ledger FOR EACH ROW EXECUTE FUNCTION ledger_change()",
            "CREATE TRIGGER ledger_change_delete AFTER DELETE ON ledger FOR EACH ROW EXECUTE FUNCTION ledger_change()",
            # What a database already holds starts the feed, as on SQLite.
            "INSERT INTO changes (kind, subject_id, body, recorded_at)"
            f" SELECT 'transfer', transfer_id, {_transfer_json('transfers')}, change_now() FROM transfers"
            " ORDER BY updated_at, transfer_id",
            "INSERT INTO changes (kind, subject_id, body, recorded_at)"
            f" SELECT 'ledger_entry', entry_id::text, {_ledger_json('ledger')}, change_now() FROM ledger"
            " ORDER BY entry_id",
        ],
    ),
    (
        8,
        _description(8),
        [
            f"ALTER TABLE outbox ADD COLUMN lease_owner {T} NOT NULL DEFAULT ''",
            f"ALTER TABLE outbox ADD COLUMN lease_until {T} NOT NULL DEFAULT ''",
        ],
    ),
    (
        9,
        _description(9),
        [
            # Writers of a replica still at version 8 wait until the triggers exist: no transfer is left out of
            # the fill and uncounted by the triggers.
            f"SELECT pg_advisory_xact_lock({WRITE_LOCK})",
            f"CREATE TABLE authorization_usage (authorization_id {T} PRIMARY KEY, first_quantity BIGINT NOT NULL)",
            AUTHORIZATION_USAGE_FILL,
            # The write lock first, as every writer of the gateway takes it before any row: a change made by hand
            # then never holds a usage row while waiting for the lock a gateway writer holds.
            f"""CREATE FUNCTION authorization_usage_follow() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                    PERFORM pg_advisory_xact_lock({WRITE_LOCK});
                    IF TG_OP IN ('UPDATE', 'DELETE') AND OLD.role = 'initiating'
                        AND OLD.state IN ({AUTHORIZATION_USAGE_STATES}) THEN
                        UPDATE authorization_usage SET first_quantity = first_quantity - OLD.first_quantity
                            WHERE authorization_id = OLD.authorization_id;
                    END IF;
                    IF TG_OP IN ('INSERT', 'UPDATE') AND NEW.role = 'initiating'
                        AND NEW.state IN ({AUTHORIZATION_USAGE_STATES}) THEN
                        INSERT INTO authorization_usage VALUES (NEW.authorization_id, NEW.first_quantity)
                            ON CONFLICT (authorization_id) DO UPDATE
                            SET first_quantity = authorization_usage.first_quantity + excluded.first_quantity;
                    END IF;
                    RETURN NULL;
                END $$""",
            "CREATE TRIGGER authorization_usage_follow AFTER INSERT OR UPDATE OR DELETE ON transfers"
            " FOR EACH ROW EXECUTE FUNCTION authorization_usage_follow()",
        ],
    ),
    (
        10,
        _description(10),
        [
            f"CREATE TABLE transfer_terms (transfer_id {T} PRIMARY KEY, terms TEXT NOT NULL)",
            "CREATE INDEX transfers_created ON transfers (created_at, transfer_id)",
        ],
    ),
    (
        11,
        _description(11),
        [
            "CREATE TABLE changes_pruned (singleton INTEGER PRIMARY KEY CHECK (singleton = 1),"
            " through BIGINT NOT NULL, digest BYTEA NOT NULL)",
            f"INSERT INTO changes_pruned VALUES (1, 0, {_EMPTY})",
            """CREATE OR REPLACE FUNCTION changes_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                    IF TG_OP = 'DELETE' AND OLD.position <= (SELECT through FROM changes_pruned) THEN
                        RETURN OLD;
                    END IF;
                    RAISE EXCEPTION 'the change feed is append-only: changes leave only by PruneChanges';
                END $$""",
        ],
    ),
    (
        12,
        _description(12),
        ["CREATE INDEX outbox_state ON outbox (state, outbox_id)"],
    ),
    (
        13,
        _description(13),
        [
            "CREATE INDEX blocks_current ON blocks (account_id, unit_kind, issuing_registry, issuance, serial_start,"
            " block_id) WHERE status IN ('held', 'reserved', 'pending')",
        ],
    ),
    (
        14,
        _description(14),
        ["CREATE INDEX outbox_sequence ON outbox (receiver, sequence) WHERE kind != 'trust'"],
    ),
    (
        15,
        _description(15),
        [
            "CREATE INDEX reconciliation_runs_status ON reconciliation_runs (status, role, updated_at)",
            "CREATE INDEX reconciliation_runs_started ON reconciliation_runs (started_at DESC, run_id)",
        ],
    ),
    (
        16,
        _description(16),
        [
            # As in version 9: writers of a replica still at version 15 wait until the trigger exists.
            f"SELECT pg_advisory_xact_lock({WRITE_LOCK})",
            f"CREATE TABLE authorization_tie_totals (authorization_id {T} PRIMARY KEY, quantity BIGINT NOT NULL)",
            AUTHORIZATION_TIE_TOTALS_FILL,
            f"""CREATE FUNCTION authorization_tie_totals_follow() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                    PERFORM pg_advisory_xact_lock({WRITE_LOCK});
                    IF TG_OP IN ('UPDATE', 'DELETE') THEN
                        UPDATE authorization_tie_totals SET quantity = quantity - OLD.quantity
                            WHERE authorization_id = OLD.authorization_id;
                    END IF;
                    IF TG_OP IN ('INSERT', 'UPDATE') THEN
                        INSERT INTO authorization_tie_totals VALUES (NEW.authorization_id, NEW.quantity)
                            ON CONFLICT (authorization_id) DO UPDATE
                            SET quantity = authorization_tie_totals.quantity + excluded.quantity;
                    END IF;
                    RETURN NULL;
                END $$""",
            "CREATE TRIGGER authorization_tie_totals_follow AFTER INSERT OR UPDATE OR DELETE ON authorization_ties"
            " FOR EACH ROW EXECUTE FUNCTION authorization_tie_totals_follow()",
        ],
    ),
    (
        17,
        _description(17),
        # Nothing: PostgreSQL's row triggers cost less than the round trips of set statements (measured with 1
        # to 256 entries), so its ledger's insert triggers write every change and mark as before.
        [],
    ),
    (
        18,
        _description(18),
        [
            # As in version 9: writers of a replica still at version 17 wait until the trigger exists. Such a
            # replica reads and writes ledger_spans, which this version's writers keep for it.
            f"SELECT pg_advisory_xact_lock({WRITE_LOCK})",
            f"""CREATE TABLE ledger_action_spans (
                first_transferring_party {T} NOT NULL,
                action_type {T} NOT NULL,
                unit_kind {T} NOT NULL,
                issuing_registry {T} NOT NULL,
                issuance {T} NOT NULL,
                longest BIGINT NOT NULL,
                PRIMARY KEY (first_transferring_party, action_type, unit_kind, issuing_registry, issuance)
            )""",
            "INSERT INTO ledger_action_spans SELECT first_transferring_party, action_type, unit_kind,"
            " issuing_registry, issuance, MAX(serial_end - serial_start) FROM ledger"
            " GROUP BY first_transferring_party, action_type, unit_kind, issuing_registry, issuance",
            f"""CREATE FUNCTION ledger_action_spans_follow() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                    PERFORM pg_advisory_xact_lock({WRITE_LOCK});
                    INSERT INTO ledger_action_spans VALUES (NEW.first_transferring_party, NEW.action_type,
                        NEW.unit_kind, NEW.issuing_registry, NEW.issuance, NEW.serial_end - NEW.serial_start)
                        ON CONFLICT (first_transferring_party, action_type, unit_kind, issuing_registry, issuance)
                        DO UPDATE SET longest = GREATEST(ledger_action_spans.longest, excluded.longest);
                    RETURN NULL;
                END $$""",
            "CREATE TRIGGER ledger_action_spans_follow AFTER INSERT OR UPDATE ON ledger"
            " FOR EACH ROW EXECUTE FUNCTION ledger_action_spans_follow()",
        ],
    ),
    (
        19,
        _description(19),
        [
            # As in version 9: writers of a replica still at version 18 wait until the trigger exists. Such a
            # replica sums the ledger through ledger_summary, which stays.
            f"SELECT pg_advisory_xact_lock({WRITE_LOCK})",
            f"""CREATE TABLE ledger_totals (
                group_key {T} PRIMARY KEY,
                action_type {T} NOT NULL,
                action_subtype {T} NOT NULL,
                purpose {T} NOT NULL,
                vintage BIGINT NOT NULL,
                year_of_use BIGINT,
                action_year BIGINT,
                cooperative_approach {T} NOT NULL,
                authorization_id {T} NOT NULL,
                first_transferring_party {T} NOT NULL,
                partner {T},
                high BIGINT NOT NULL,
                low BIGINT NOT NULL,
                entries BIGINT NOT NULL
            )""",
            LEDGER_TOTALS_REBUILD[1],
            f"""CREATE FUNCTION ledger_totals_follow() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                    PERFORM pg_advisory_xact_lock({WRITE_LOCK});
                    IF TG_OP IN ('UPDATE', 'DELETE') THEN
                        UPDATE ledger_totals SET high = high - (OLD.quantity >> 32),
                            low = low - (OLD.quantity & 4294967295), entries = entries - 1
                            WHERE group_key = {_total_key("OLD")};
                    END IF;
                    IF TG_OP IN ('INSERT', 'UPDATE') THEN
                        INSERT INTO ledger_totals VALUES ({_total_key("NEW")}, {_total_columns("NEW")},
                            NEW.quantity >> 32, NEW.quantity & 4294967295, 1)
                            ON CONFLICT (group_key) DO UPDATE SET high = ledger_totals.high + excluded.high,
                            low = ledger_totals.low + excluded.low, entries = ledger_totals.entries + 1;
                    END IF;
                    RETURN NULL;
                END $$""",
            "CREATE TRIGGER ledger_totals_follow AFTER INSERT OR UPDATE OR DELETE ON ledger"
            " FOR EACH ROW EXECUTE FUNCTION ledger_totals_follow()",
        ],
    ),
    (
        20,
        "fold each first transfer to another Party into reconciliation again, under its transfer's purpose",
        [
            "INSERT INTO reconciliation_dirty SELECT entry_id FROM ledger WHERE action_type = 'First transfer'"
            " AND action_subtype = 'First transfer to another Party' ON CONFLICT DO NOTHING",
        ],
    ),
    (
        21,
        "the authorization version each transfer was proposed under",
        ["CREATE TABLE transfer_authorization_versions (transfer_id TEXT PRIMARY KEY, version TEXT NOT NULL)"],
    ),
]
"""(version, description, statements), in the order they are applied."""
