/**
 * The SQL of the ledger, prepared once per connection, and the mapping of a records row to a {@link StoredRecord}.
 * The schema these statements read and write is ./schema.ts.
 */
import Database from 'better-sqlite3';
import { HOUR_MS, hourStart } from '../clock.js';
import type { MeterUsageRequest } from './hours.js';
import type { LedgerStatus, RecordStatus, StoredRecord } from './ledger.js';

/** Parameters of one key in {@link insertKeysSql}'s statements, in order. */
export const KEY_COLUMNS = 5;

/** An insert of `rows` idempotency keys, each bound as (id, at_ms, seq, usage_id, quantity). */
function insertKeysSql(rows: number): string {
  const row = `(${Array.from({ length: KEY_COLUMNS }, () => '?').join(', ')})`;
  return `INSERT INTO idempotency_keys (id, at_ms, seq, usage_id, quantity) VALUES ${Array.from({ length: rows }, () => row).join(', ')}`;
}

/** The SQL of every statement, by name; `pluck` ones answer their first column only, `raw` ones arrays of columns. */
const SQL = {
  keyExists: { sql: 'SELECT 1 FROM idempotency_keys WHERE id = ?', pluck: true },
  insertKey: { sql: insertKeysSql(1) },
  keyOf: {
    sql: 'SELECT k.at_ms, u.dimension, u.hour_ms, u.tags, k.quantity, u.divisor FROM idempotency_keys k LEFT JOIN key_usage u ON u.id = k.usage_id WHERE k.id = ?',
  },
  // The id of a (dimension, hour, tag set, divisor) the keys of a batch share; the no-op update returns the row.
  keyUsage: {
    sql: 'INSERT INTO key_usage (dimension, hour_ms, tags, divisor) VALUES (?, ?, ?, ?) ON CONFLICT (dimension, hour_ms, tags, divisor) DO UPDATE SET divisor = excluded.divisor RETURNING id',
    pluck: true,
  },
  // What no key kept refers to any more: a key's usage is never in an hour before the one it arrived in.
  pruneKeyUsage: {
    sql: 'DELETE FROM key_usage WHERE hour_ms < coalesce((SELECT at_ms FROM idempotency_keys ORDER BY seq LIMIT 1) / 3600000 * 3600000, 9223372036854775807)',
  },
  // A JSON array of keys: one statement however many a batch holds. json_each's `key` is the array index.
  knownKeys: {
    sql: 'SELECT id FROM idempotency_keys WHERE id IN (SELECT value FROM json_each(?))',
    pluck: true,
  },
  // Keys by the ten and the hundred: one statement of many rows binds plain values, which measured half the cost
  // of unpacking the rows from JSON in SQL.
  insertKeys10: { sql: insertKeysSql(10) },
  insertKeys100: { sql: insertKeysSql(100) },
  addToBucket: {
    sql: 'UPDATE buckets SET quantity = quantity + ?, first_at_ms = min(first_at_ms, ?) WHERE dimension = ? AND hour_ms = ? AND tags = ?',
  },
  insertBucket: {
    sql: 'INSERT INTO buckets (dimension, hour_ms, tags, quantity, first_at_ms) VALUES (?, ?, ?, ?, ?)',
  },
  addCarried: {
    sql: 'UPDATE buckets SET quantity = quantity + ?, carried_quantity = carried_quantity + ?, first_at_ms = min(first_at_ms, ?) WHERE dimension = ? AND hour_ms = ? AND tags = ?',
  },
  insertCarried: {
    sql: 'INSERT INTO buckets (dimension, hour_ms, tags, quantity, carried_quantity, first_at_ms) VALUES (?, ?, ?, ?, ?, ?)',
  },
  carriedTagged: {
    sql: "SELECT tags, carried_quantity, first_at_ms FROM buckets WHERE dimension = ? AND hour_ms = ? AND carried_quantity > 0 AND tags <> '{}'",
  },
  carriedOf: {
    sql: 'SELECT carried_quantity FROM buckets WHERE dimension = ? AND hour_ms = ? AND tags = ?',
    pluck: true,
  },
  takeCarried: {
    sql: 'UPDATE buckets SET quantity = quantity - carried_quantity, carried_quantity = 0 WHERE dimension = ? AND hour_ms = ? AND tags = ?',
  },
  deleteEmptyBucket: {
    sql: 'DELETE FROM buckets WHERE dimension = ? AND hour_ms = ? AND tags = ? AND quantity = 0',
  },
  countTagSets: { sql: 'SELECT count(*) FROM buckets WHERE dimension = ? AND hour_ms = ?', pluck: true },
  hourTotal: {
    sql: 'SELECT coalesce(sum(quantity), 0) FROM buckets WHERE dimension = ? AND hour_ms = ?',
    pluck: true,
  },
  countTagKeys: {
    sql: 'SELECT count(DISTINCT t.key) FROM buckets b, json_each(b.tags) t WHERE b.dimension = ? AND b.hour_ms = ?',
    pluck: true,
  },
  bucketHours: { sql: 'SELECT DISTINCT dimension, hour_ms FROM buckets ORDER BY hour_ms, dimension' },
  // Arrays, not objects: a seal reads every tag set of an hour (2,500 rows a dimension in the benchmark).
  bucketsOf: {
    sql: 'SELECT tags, quantity, first_at_ms FROM buckets WHERE dimension = ? AND hour_ms = ? ORDER BY tags',
    raw: true,
  },
  deleteBuckets: { sql: 'DELETE FROM buckets WHERE dimension = ? AND hour_ms = ?' },
  insertRecord: {
    sql: `INSERT INTO records (dimension, hour_ms, quantity, timestamp_ms, client_token, request, status, next_attempt_ms, sealed_at_ms, sealed_by)
       VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?) RETURNING *`,
  },
  due: {
    sql: "SELECT * FROM records WHERE status = 'pending' AND next_attempt_ms <= ? ORDER BY timestamp_ms, id",
  },
  pending: { sql: "SELECT * FROM records WHERE status = 'pending' ORDER BY timestamp_ms, id" },
  nextAttempt: { sql: "SELECT min(next_attempt_ms) FROM records WHERE status = 'pending'", pluck: true },
  byId: { sql: 'SELECT * FROM records WHERE id = ?' },
  dueAt: { sql: "UPDATE records SET next_attempt_ms = ? WHERE id = ? AND status = 'pending'" },
  retryAllNow: {
    sql: "UPDATE records SET next_attempt_ms = ? WHERE status = 'pending' AND next_attempt_ms > ?",
  },
  markInFlight: { sql: "UPDATE records SET in_flight = 1 WHERE id = ? AND status = 'pending'" },
  markSent: {
    sql: "UPDATE records SET status = 'sent', in_flight = 0, metering_record_id = ?, settled_at_ms = ?, attempts = attempts + 1 WHERE id = ? AND status = 'pending'",
  },
  markRetry: {
    sql: "UPDATE records SET in_flight = 0, attempts = attempts + 1, next_attempt_ms = ?, last_error = ?, maybe_delivered = max(maybe_delivered, ?) WHERE id = ? AND status = 'pending'",
  },
  markFailed: {
    sql: "UPDATE records SET status = 'failed', in_flight = 0, last_error = ?, settled_at_ms = ?, attempts = attempts + ? WHERE id = ? AND status = 'pending'",
  },
  markCarried: {
    sql: "UPDATE records SET status = 'carried', in_flight = 0, last_error = ?, settled_at_ms = ?, carried_to_hour_ms = ? WHERE id = ? AND status = 'pending'",
  },
  tagsOf: { sql: 'SELECT tags FROM buckets WHERE dimension = ? AND hour_ms = ?', pluck: true },
  statusCounts: { sql: 'SELECT status, count(*) AS n FROM records GROUP BY status' },
  openUsage: {
    sql: 'SELECT dimension, hour_ms, sum(quantity) AS quantity, count(*) AS tag_sets FROM buckets GROUP BY dimension, hour_ms ORDER BY hour_ms, dimension',
  },
  pendingByDimension: {
    sql: "SELECT dimension, sum(quantity) AS quantity FROM records WHERE status = 'pending' GROUP BY dimension",
  },
  probe: {
    sql: "INSERT INTO meta (key, value) VALUES ('probe', ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
  },
  oldestPending: { sql: "SELECT min(timestamp_ms) FROM records WHERE status = 'pending'", pluck: true },
  failed: {
    sql: "SELECT dimension, hour_ms, quantity, last_error FROM records WHERE status = 'failed' ORDER BY hour_ms DESC LIMIT 100",
  },
  // Keys are stored in arrival order (seq is the row id), so pruning and eviction delete a prefix of rows: up
  // to the first key young enough to keep, or the oldest n. Neither needs an index beyond the row id. Arrival
  // times rise with seq (keys are stamped with the ledger's high-water mark, saved with them); were one ever
  // out of order, pruning would stop early and keep keys too long, never forget one too soon.
  // `oldestKey` reads the first row for the same reason.
  pruneKeys: {
    sql: 'DELETE FROM idempotency_keys WHERE seq < coalesce((SELECT seq FROM idempotency_keys WHERE at_ms >= ? ORDER BY seq LIMIT 1), 9223372036854775807)',
  },
  evictKeys: {
    sql: 'DELETE FROM idempotency_keys WHERE seq < (SELECT seq FROM idempotency_keys ORDER BY seq LIMIT 1 OFFSET ?)',
  },
  setHighWater: {
    sql: "INSERT INTO meta (key, value) VALUES ('high_water_ms', ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value WHERE CAST(value AS INTEGER) < CAST(excluded.value AS INTEGER)",
  },
  oldestKey: { sql: 'SELECT at_ms FROM idempotency_keys ORDER BY seq LIMIT 1', pluck: true },
  setKeyHorizon: {
    sql: "INSERT INTO meta (key, value) VALUES ('key_horizon_ms', ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
  },
  setPrunedThrough: {
    sql: "INSERT INTO meta (key, value) VALUES ('pruned_through_ms', ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value WHERE CAST(value AS INTEGER) < CAST(excluded.value AS INTEGER)",
  },
  remainderOf: {
    sql: 'SELECT quantity FROM unit_remainders WHERE dimension = ? AND tags = ? AND divisor = ?',
    pluck: true,
  },
  setRemainder: {
    sql: 'INSERT INTO unit_remainders (dimension, tags, divisor, quantity, at_ms) VALUES (?, ?, ?, ?, ?) ON CONFLICT (dimension, tags, divisor) DO UPDATE SET quantity = excluded.quantity, at_ms = excluded.at_ms',
  },
  deleteRemainder: { sql: 'DELETE FROM unit_remainders WHERE dimension = ? AND tags = ? AND divisor = ?' },
  remainders: {
    sql: 'SELECT dimension, divisor, sum(quantity) AS quantity, count(*) AS tag_sets FROM unit_remainders GROUP BY dimension, divisor ORDER BY dimension, divisor',
  },
  // Not while a kept key counted usage of the tag set: its cancellation would need the remainder.
  pruneRemainders: {
    sql: 'DELETE FROM unit_remainders AS r WHERE r.at_ms < ? AND NOT EXISTS (SELECT 1 FROM key_usage u WHERE u.dimension = r.dimension AND u.tags = r.tags AND u.divisor = r.divisor) RETURNING dimension, divisor, quantity',
  },
  setRetentionClock: {
    sql: "INSERT INTO meta (key, value) VALUES ('retention_clock_ms', ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
  },
  appUnits: {
    sql: 'SELECT quantity - carried_quantity FROM buckets WHERE dimension = ? AND hour_ms = ? AND tags = ?',
    pluck: true,
  },
  tagSetUnits: {
    sql: 'SELECT hour_ms, quantity - carried_quantity AS units FROM buckets WHERE dimension = ? AND tags = ?',
  },
  // Never below the usage carried into the bucket: only the app's own units are taken back.
  takeUnits: {
    sql: 'UPDATE buckets SET quantity = quantity - ? WHERE dimension = ? AND hour_ms = ? AND tags = ? AND quantity - carried_quantity >= ?',
  },
  cancellationOf: { sql: 'SELECT * FROM cancellations WHERE id = ?' },
  insertCancellation: {
    sql: 'INSERT INTO cancellations (id, dimension, hour_ms, tags, quantity, divisor, reported_at_ms, cancelled_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING *',
  },
  cancelledSince: {
    sql: 'SELECT dimension, hour_ms, count(*) AS n, sum(quantity) AS quantity FROM cancellations WHERE hour_ms >= ? GROUP BY dimension, hour_ms ORDER BY hour_ms, dimension',
  },
  // Not while its key is kept: a repeat of the cancellation must find it, and never cancel a second time.
  pruneCancellations: {
    sql: 'DELETE FROM cancellations WHERE cancelled_at_ms < ? AND id NOT IN (SELECT id FROM idempotency_keys)',
  },
  pruneSettled: {
    sql: "DELETE FROM records WHERE status IN ('sent', 'carried') AND settled_at_ms < ? RETURNING dimension, hour_ms",
  },
} as const satisfies Readonly<
  Record<string, { readonly sql: string; readonly pluck?: true; readonly raw?: true }>
>;

/** The prepared statements of one connection, by name. */
export type Statements = { readonly [K in keyof typeof SQL]: Database.Statement };

/** Prepares every statement of the ledger on `db`. */
export function prepareStatements(db: Database.Database): Statements {
  const prepared: Partial<Record<keyof typeof SQL, Database.Statement>> = {};
  for (const [name, { sql, ...options }] of Object.entries(SQL) as [
    keyof typeof SQL,
    { sql: string; pluck?: true; raw?: true },
  ][]) {
    const statement = db.prepare(sql);
    prepared[name] =
      options.pluck === true ? statement.pluck() : options.raw === true ? statement.raw() : statement;
  }
  return prepared as Statements;
}

/** A row of `records`. */
export interface RecordRow {
  id: number;
  dimension: string;
  hour_ms: number;
  quantity: number;
  timestamp_ms: number;
  client_token: string;
  request: string;
  status: RecordStatus;
  attempts: number;
  next_attempt_ms: number;
  maybe_delivered: number;
  in_flight: number;
  last_error: string | null;
  metering_record_id: string | null;
  sealed_at_ms: number;
  settled_at_ms: number | null;
  carried_to_hour_ms: number | null;
  handoff_id: string | null;
  /** The sealing sidecar's platform identity as JSON (schema 5); null before. */
  sealed_by: string | null;
}

/**
 * A records row as the rest of the ledger sees it; its request is parsed each time it is read, unless `built`
 * hands over the object the row's text was serialised from (a record just sealed, ./sqliteLedger.ts).
 */
export function toRecord(row: RecordRow, built?: () => MeterUsageRequest | undefined): StoredRecord {
  const text = row.request;
  return {
    id: row.id,
    dimension: row.dimension,
    hourStartMs: row.hour_ms,
    quantity: row.quantity,
    timestampMs: row.timestamp_ms,
    clientToken: row.client_token,
    // Parsed when read, not kept: a due list of 24 records of 2,500 allocations holds only their stored text, and
    // each is parsed when it is sent.
    get request(): MeterUsageRequest {
      return built?.() ?? (JSON.parse(text) as MeterUsageRequest);
    },
    status: row.status,
    attempts: row.attempts,
    nextAttemptMs: row.next_attempt_ms,
    // A record still marked in flight had an attempt whose outcome was never stored (for instance because the
    // disk filled up right after AWS accepted it): it may have been delivered.
    maybeDelivered: row.maybe_delivered !== 0 || row.in_flight !== 0,
    lastError: row.last_error ?? undefined,
    meteringRecordId: row.metering_record_id ?? undefined,
  };
}

/** The summary of the ledger behind `stmt` at `nowMs`, for status and for the exit code at shutdown. */
export function readStatus(
  stmt: Statements,
  ledgerId: string,
  nowMs: number,
): Omit<LedgerStatus, 'handoffs'> {
  const cancelledSinceMs = hourStart(nowMs) - 24 * HOUR_MS;
  const records: Record<RecordStatus, number> = { pending: 0, sent: 0, carried: 0, failed: 0 };
  for (const row of stmt.statusCounts.all() as { status: RecordStatus; n: number }[])
    records[row.status] = row.n;
  const oldest = stmt.oldestPending.get() as number | null;
  return {
    ledgerId: ledgerId,
    open: (
      stmt.openUsage.all() as {
        dimension: string;
        hour_ms: number;
        quantity: number;
        tag_sets: number;
      }[]
    ).map((r) => ({
      dimension: r.dimension,
      hourStartMs: r.hour_ms,
      quantity: r.quantity,
      tagSets: r.tag_sets,
    })),
    records,
    oldestUnsentAgeSeconds: oldest === null ? null : Math.max(0, Math.floor((nowMs - oldest) / 1000)),
    pendingByDimension: new Map(
      (stmt.pendingByDimension.all() as { dimension: string; quantity: number }[]).map((r) => [
        r.dimension,
        r.quantity,
      ]),
    ),
    failed: (
      stmt.failed.all() as {
        dimension: string;
        hour_ms: number;
        quantity: number;
        last_error: string | null;
      }[]
    ).map((r) => ({
      dimension: r.dimension,
      hourStartMs: r.hour_ms,
      quantity: r.quantity,
      error: r.last_error ?? undefined,
    })),
    cancellations: (
      stmt.cancelledSince.all(cancelledSinceMs) as {
        dimension: string;
        hour_ms: number;
        n: number;
        quantity: number;
      }[]
    ).map((r) => ({ dimension: r.dimension, hourStartMs: r.hour_ms, count: r.n, quantity: r.quantity })),
    remainders: (
      stmt.remainders.all() as { dimension: string; divisor: number; quantity: number; tag_sets: number }[]
    ).map((r) => ({ dimension: r.dimension, divisor: r.divisor, quantity: r.quantity, tagSets: r.tag_sets })),
  };
}
