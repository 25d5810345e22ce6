/**
 * The ledger's schema and its versioned migrations. `PRAGMA user_version` holds the version a file is at; a new
 * file goes through every step from 0, and a file written by an earlier build goes through the steps after
 * its version, each step in one transaction together with the version bump, so a crash mid-migration leaves
 * the file at the previous version, whole. A file of a newer version is refused, never downgraded.
 *
 * Version history:
 * - 1: meta, buckets, records, idempotency keys. Builds of version 1 differ: later ones added
 *   `records.in_flight` without changing the version, so a version-1 file may or may not have that column.
 * - 2: `records.in_flight` always present; `buckets.carried_quantity`, the part of a bucket carried in from
 *   an earlier hour, which intake may fold into the untagged allocation (docs/metering.md, "Carry");
 *   `idempotency_keys.seq`, the order keys arrived in, so the oldest are forgotten first even when their
 *   arrival times tie (after the clock stepped back, keys are stamped with the same high-water mark).
 * - 3: handoffs (./handoffStore.ts): `records.handoff_id`, set on a record handed off to another sidecar (its
 *   status is then `carried`); `handoffs`, the handoffs this ledger wrote or adopted, by id; and
 *   `uncertain_records`, records that arrived with an adopted handoff and may already be billed: kept for
 *   status and alerts, never sent.
 * - 4: `idempotency_keys` keyed by `seq` (the arrival order, as the row id) with a unique index on the key:
 *   two B-trees instead of three for every key stored and forgotten, and forgetting the oldest is a range
 *   delete. The keys keep their arrival order.
 * - 5: `records.sealed_by`, the platform identity of the sidecar that sealed the record (ECS task ARN, or pod
 *   name and UID, and the host), as JSON, for the reconciliation export; null for records sealed earlier.
 * - 6: corrections and unit scaling. `idempotency_keys` also keeps what each key counted (its quantity, and in
 *   `key_usage`, shared by the keys of one (dimension, hour, tag set, unit divisor), where it went), so that
 *   `DELETE /v1/usage/{id}` can take it back; null for keys stored earlier, which cannot be cancelled. `cancellations`: every report cancelled, kept
 *   for status and the export. `unit_remainders`: per (dimension, tag set, divisor), the fine-unit usage below one
 *   billed unit carried into later hours (./units.ts).
 */
import { randomUUID } from 'node:crypto';
import type Database from 'better-sqlite3';
import { LedgerCorruptError, StorageUnavailableError, describeError, errorCode } from '../errors.js';

/** The version this build writes. */
export const SCHEMA_VERSION = 6;

/** What the first step needs to create a ledger. */
interface Creation {
  /** Clock reading when the ledger is created: usage is never stamped earlier. */
  readonly nowMs: number;
}

/** One migration step: brings a file from `to - 1` to `to`. Runs inside a transaction. */
interface Step {
  readonly to: number;
  readonly up: (db: Database.Database, creation: Creation) => void;
}

const STEPS: readonly Step[] = [
  {
    to: 1,
    up(db, creation) {
      db.exec(`
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) STRICT;
        CREATE TABLE buckets (
          dimension TEXT NOT NULL,
          hour_ms INTEGER NOT NULL,
          tags TEXT NOT NULL,
          quantity INTEGER NOT NULL,
          first_at_ms INTEGER NOT NULL,
          PRIMARY KEY (dimension, hour_ms, tags)
        ) STRICT, WITHOUT ROWID;
        CREATE TABLE records (
          id INTEGER PRIMARY KEY,
          dimension TEXT NOT NULL,
          hour_ms INTEGER NOT NULL,
          quantity INTEGER NOT NULL,
          timestamp_ms INTEGER NOT NULL,
          client_token TEXT NOT NULL,
          request TEXT NOT NULL,
          status TEXT NOT NULL CHECK (status IN ('pending', 'sent', 'carried', 'failed')),
          attempts INTEGER NOT NULL DEFAULT 0,
          next_attempt_ms INTEGER NOT NULL,
          maybe_delivered INTEGER NOT NULL DEFAULT 0,
          last_error TEXT,
          metering_record_id TEXT,
          sealed_at_ms INTEGER NOT NULL,
          settled_at_ms INTEGER,
          carried_to_hour_ms INTEGER,
          UNIQUE (dimension, hour_ms)
        ) STRICT;
        CREATE INDEX records_status ON records (status, next_attempt_ms);
        CREATE TABLE idempotency_keys (id TEXT PRIMARY KEY, at_ms INTEGER NOT NULL) STRICT, WITHOUT ROWID;
        CREATE INDEX idempotency_keys_at ON idempotency_keys (at_ms);
      `);
      const insert = db.prepare('INSERT INTO meta (key, value) VALUES (?, ?)');
      insert.run('ledger_id', randomUUID());
      insert.run('created_at_ms', String(creation.nowMs));
    },
  },
  {
    to: 2,
    up(db) {
      if (!hasColumn(db, 'records', 'in_flight')) {
        db.exec('ALTER TABLE records ADD COLUMN in_flight INTEGER NOT NULL DEFAULT 0');
      }
      db.exec('ALTER TABLE buckets ADD COLUMN carried_quantity INTEGER NOT NULL DEFAULT 0');
      db.exec('ALTER TABLE idempotency_keys ADD COLUMN seq INTEGER NOT NULL DEFAULT 0');
      db.exec('CREATE INDEX idempotency_keys_seq ON idempotency_keys (seq)');
    },
  },
  {
    to: 3,
    up(db) {
      db.exec(`
        ALTER TABLE records ADD COLUMN handoff_id TEXT;
        CREATE TABLE handoffs (
          id TEXT PRIMARY KEY,
          direction TEXT NOT NULL CHECK (direction IN ('written', 'adopted')),
          origin_ledger_id TEXT NOT NULL,
          origin_host TEXT NOT NULL,
          written_at_ms INTEGER NOT NULL,
          at_ms INTEGER NOT NULL,
          quantity INTEGER NOT NULL,
          uncertain INTEGER NOT NULL
        ) STRICT;
        CREATE TABLE uncertain_records (
          handoff_id TEXT NOT NULL,
          origin_ledger_id TEXT NOT NULL,
          dimension TEXT NOT NULL,
          hour_ms INTEGER NOT NULL,
          quantity INTEGER NOT NULL,
          client_token TEXT NOT NULL,
          error TEXT,
          PRIMARY KEY (handoff_id, client_token)
        ) STRICT;
      `);
    },
  },
  {
    to: 4,
    up(db) {
      db.exec(`
        CREATE TABLE idempotency_keys_v4 (
          seq INTEGER PRIMARY KEY,
          id TEXT NOT NULL UNIQUE,
          at_ms INTEGER NOT NULL
        ) STRICT;
        INSERT INTO idempotency_keys_v4 (seq, id, at_ms)
          SELECT row_number() OVER (ORDER BY seq, at_ms, id), id, at_ms FROM idempotency_keys;
        DROP TABLE idempotency_keys;
        ALTER TABLE idempotency_keys_v4 RENAME TO idempotency_keys;
      `);
    },
  },
  {
    to: 5,
    up(db) {
      db.exec('ALTER TABLE records ADD COLUMN sealed_by TEXT');
    },
  },
  {
    to: 6,
    up(db) {
      db.exec(`
        CREATE TABLE key_usage (
          id INTEGER PRIMARY KEY,
          dimension TEXT NOT NULL,
          hour_ms INTEGER NOT NULL,
          tags TEXT NOT NULL,
          divisor INTEGER NOT NULL,
          UNIQUE (dimension, hour_ms, tags, divisor)
        ) STRICT;
        CREATE INDEX key_usage_hour ON key_usage (hour_ms);
        ALTER TABLE idempotency_keys ADD COLUMN usage_id INTEGER;
        ALTER TABLE idempotency_keys ADD COLUMN quantity INTEGER;
        CREATE TABLE cancellations (
          id TEXT PRIMARY KEY,
          dimension TEXT NOT NULL,
          hour_ms INTEGER NOT NULL,
          tags TEXT NOT NULL,
          quantity INTEGER NOT NULL,
          divisor INTEGER NOT NULL,
          reported_at_ms INTEGER NOT NULL,
          cancelled_at_ms INTEGER NOT NULL
        ) STRICT;
        CREATE INDEX cancellations_hour ON cancellations (dimension, hour_ms);
        CREATE TABLE unit_remainders (
          dimension TEXT NOT NULL,
          tags TEXT NOT NULL,
          divisor INTEGER NOT NULL,
          quantity INTEGER NOT NULL,
          at_ms INTEGER NOT NULL,
          PRIMARY KEY (dimension, tags, divisor)
        ) STRICT, WITHOUT ROWID;
      `);
    },
  },
];

/**
 * Brings the database to {@link SCHEMA_VERSION}, one step per transaction. Returns the version it found.
 * @throws LedgerCorruptError when the file is of a newer version than this build understands.
 */
export function migrate(db: Database.Database, path: string, creation: Creation): number {
  const found = db.pragma('user_version', { simple: true }) as number;
  if (found > SCHEMA_VERSION) {
    throw new LedgerCorruptError(
      `the ledger at ${path} has schema ${found}, newer than this version understands (${SCHEMA_VERSION}): run the newer sidecar version, or move the file aside only after its records were sent`,
    );
  }
  for (const step of STEPS) {
    if (step.to <= found) continue;
    try {
      db.transaction(() => {
        step.up(db, creation);
        db.pragma(`user_version = ${step.to}`);
      })();
    } catch (err) {
      const code = errorCode(err);
      const detail = describeError(err);
      // A volume that cannot take the write is a storage problem; anything else means the file does not hold
      // what its version says. Either way the step was rolled back and the file is as it was.
      if (code !== undefined && STORAGE_CODES.test(code)) {
        throw new StorageUnavailableError(
          `the ledger at ${path} could not be migrated from schema ${step.to - 1} to ${step.to} (${detail}); it is unchanged: check that METERING_STATE_DIR is a writable volume with free space`,
          { cause: err },
        );
      }
      throw new LedgerCorruptError(
        `the ledger at ${path} could not be migrated from schema ${step.to - 1} to ${step.to} (${detail}); it is kept unchanged at schema ${step.to - 1}: check what wrote it before moving it aside`,
        { cause: err },
      );
    }
  }
  return found;
}

/** SQLite result codes of a volume that cannot take a write. */
const STORAGE_CODES = /^SQLITE_(FULL|IOERR|READONLY|CANTOPEN|BUSY|LOCKED)/;

function hasColumn(db: Database.Database, table: string, column: string): boolean {
  return (db.pragma(`table_info(${table})`) as { name: string }[]).some((c) => c.name === column);
}
