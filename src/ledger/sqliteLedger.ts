/**
 * The hour ledger: the single source of truth for usage, on SQLite (better-sqlite3) in METERING_STATE_DIR with
 * WAL and synchronous=FULL, so a commit survives a crash or power loss. Usage accumulates in buckets per
 * (dimension, hour, tag set); sealing turns an hour's buckets into one record per dimension, stored with its
 * exact MeterUsage request; the sender then marks each record sent, carried or failed.
 *
 * Contract: a crash at any moment leaves every acknowledged batch counted exactly once. `record()` resolves only
 * after the transaction holding the batch has committed; batches that arrive together share one commit (group
 * commit). Sealing a bucket, storing its record and deleting the bucket happen in one transaction, as does every
 * carry. An unreadable or newer-schema database raises {@link LedgerCorruptError}; it is never reset.
 */
import { closeSync, fsyncSync, mkdirSync, openSync, unlinkSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import type { Clock } from '../clock.js';
import { HOUR_MS } from '../clock.js';
import { LedgerCorruptError, StorageUnavailableError } from '../errors.js';
import {
  ledgerRejection,
  type LedgerRejection,
  type LedgerStatus,
  type RecordResult,
  type RecordStatus,
  type StoredRecord,
  type UsageReport,
} from './ledger.js';
import { MAX_TAG_KEYS, MAX_TAG_SETS } from '../awsLimits.js';
import {
  bucketTime,
  canonicalTags,
  carryDeadline,
  clientToken,
  maySeal,
  meterUsageRequest,
  recordTimestamp,
  seal,
  targetHour,
  type MeterUsageRequest,
} from './hours.js';
import { DEFAULT_IDEMPOTENCY_KEYS_MAX, IDEMPOTENCY_TTL_MS } from './keys.js';
import { migrate } from './schema.js';
import { lockStateDir, type StateLock } from './stateLock.js';

/** Database file name inside the state directory. */
export const LEDGER_FILE = 'ledger.db';

/** Size of the write probe: a volume with less free space than this is treated as full. */
const WRITE_PROBE_BYTES = 64 * 1024;

/**
 * How far over its bound the key store may grow before the oldest keys are forgotten, as a share of the
 * bound: forgetting in steps of 1% keeps the cost off most commits.
 */
const KEYS_SLACK = 0.01;

/** Settled (sent or carried) records are kept this long for status and audits; failed ones until a human acts. */
const SETTLED_RETENTION_MS = 30 * 24 * HOUR_MS;

/** Options of {@link SqliteLedger.open}. */
export interface LedgerOptions {
  readonly stateDir: string;
  readonly productCode: string;
  readonly dryRun: boolean;
  readonly clock: Clock;
  /** Most idempotency keys kept; default {@link DEFAULT_IDEMPOTENCY_KEYS_MAX}. */
  readonly idempotencyKeysMax?: number;
  /**
   * Told after a commit that forgot keys to stay within the bound: how many, and the arrival time of the
   * oldest key still kept (the shorter window in which a resend is still recognised).
   */
  readonly onKeysEvicted?: (evicted: number, oldestKeptAtMs: number | undefined) => void;
}

interface RecordRow {
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
}

interface Queued {
  readonly reports: readonly UsageReport[];
  readonly arrivalMs: number;
  readonly resolve: (result: RecordResult | LedgerRejection) => void;
  readonly reject: (err: unknown) => void;
}

/**
 * Largest total of one (dimension, hour) the ledger keeps: 2^53 - 1, the largest integer JavaScript numbers
 * hold exactly. SQLite's integers would go further, but the sealed record is computed in JavaScript, so usage
 * that would take an hour beyond this is refused rather than acknowledged and rounded (docs/metering.md).
 */
export const MAX_EXACT_TOTAL = Number.MAX_SAFE_INTEGER;

/** A limit a batch would break, as intake answers it. */
type LimitProblem = { code: LedgerRejection['code']; message: string };

/** Thrown inside a batch's savepoint to roll back just that batch. */
class BatchRejected extends Error {
  constructor(readonly rejection: LedgerRejection) {
    super(rejection.message);
  }
}

/** The SQLite hour ledger. Create with {@link SqliteLedger.open}; one instance per database file. */
export class SqliteLedger {
  readonly #db: Database.Database;
  readonly #options: LedgerOptions;
  readonly #ledgerId: string;
  /** Sealed hours per dimension: late usage for these goes to the next hour. Mirrors `records`. */
  readonly #sealed = new Map<string, Set<number>>();
  #queue: Queued[] = [];
  #flushScheduled = false;
  #closed = false;
  #commits = 0;
  /** The latest time the ledger has used; see {@link SqliteLedger.#timeNow}. */
  #highWaterMs: number;
  readonly #stmt: ReturnType<SqliteLedger['prepare']>;
  readonly #transactions: { queue: (items: readonly Queued[]) => (RecordResult | LedgerRejection)[] };
  readonly #path: string;
  /** The state directory's lock, held while the ledger is open (see ./stateLock.ts). */
  readonly #lock: StateLock;
  readonly #keysMax: number;
  /** Idempotency keys stored, counted as they are added and removed (a count(*) would cost a scan). */
  #keyCount: number;
  /** The arrival order of the last key stored (rolled-back batches leave gaps, which do not matter). */
  #keySeq: number;
  /** Keys forgotten in the commit under way, reported once it has committed. */
  #keysEvicted = 0;
  /** Keys older than this were pruned; it advances no faster than the monotonic clock (see prune). */
  #keyHorizonMs: number;
  #keyHorizonAtMonotonicMs: number;

  private constructor(db: Database.Database, options: LedgerOptions, ledgerId: string, lock: StateLock) {
    this.#db = db;
    this.#lock = lock;
    this.#path = db.name;
    this.#options = options;
    this.#ledgerId = ledgerId;
    this.#stmt = this.prepare();
    this.#transactions = this.#transactionsOf(db);
    this.#highWaterMs = Math.max(
      ...(
        this.#db
          .prepare(
            // Clock readings only: a bucket's first usage can be stamped at the start of a later hour.
            `SELECT (SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'created_at_ms') AS a,
                    (SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'high_water_ms') AS b,
                    (SELECT max(sealed_at_ms) FROM records) AS c`,
          )
          .raw()
          .get() as (number | null)[]
      ).map((v) => v ?? 0),
    );
    this.#keysMax = options.idempotencyKeysMax ?? DEFAULT_IDEMPOTENCY_KEYS_MAX;
    this.#keyCount = this.#db.prepare('SELECT count(*) FROM idempotency_keys').pluck().get() as number;
    this.#keySeq = this.#db
      .prepare('SELECT coalesce(max(seq), 0) FROM idempotency_keys')
      .pluck()
      .get() as number;
    const stored = this.#db
      .prepare("SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'key_horizon_ms'")
      .pluck()
      .get() as number | undefined;
    const oldestKey = this.#db.prepare('SELECT min(at_ms) FROM idempotency_keys').pluck().get() as
      number | null;
    // A ledger without a horizon (new, or from an earlier schema) starts where its keys do.
    this.#keyHorizonMs = stored ?? Math.min(options.clock.now() - IDEMPOTENCY_TTL_MS, oldestKey ?? Infinity);
    this.#keyHorizonAtMonotonicMs = options.clock.monotonicMs();
    // A record that was being sent when the process died may have reached AWS: never carry it.
    this.#db.prepare('UPDATE records SET maybe_delivered = 1, in_flight = 0 WHERE in_flight = 1').run();
    for (const row of this.#db.prepare('SELECT dimension, hour_ms FROM records').all() as {
      dimension: string;
      hour_ms: number;
    }[]) {
      this.#markSealed(row.dimension, row.hour_ms);
    }
  }

  /**
   * Opens (or creates) the ledger in `options.stateDir`, holding the directory's lock until {@link close}.
   * @throws StateLockedError when another sidecar holds the state directory.
   * @throws LedgerCorruptError when the file is not a readable ledger of this or an older schema.
   * @throws StorageUnavailableError when the directory or file cannot be created or written.
   */
  static open(options: LedgerOptions): SqliteLedger {
    const path = join(options.stateDir, LEDGER_FILE);
    try {
      mkdirSync(options.stateDir, { recursive: true });
    } catch (err) {
      throw new StorageUnavailableError(
        `cannot create the state directory ${options.stateDir} (${describe(err)}): check that METERING_STATE_DIR is a writable volume`,
        { cause: err },
      );
    }
    const lock = lockStateDir(options.stateDir);
    let db: Database.Database;
    try {
      db = new Database(path);
    } catch (err) {
      lock.release();
      throw new StorageUnavailableError(
        `cannot open the ledger at ${path} (${describe(err)}): check that METERING_STATE_DIR is a writable volume`,
        { cause: err },
      );
    }
    try {
      const check = db.pragma('quick_check', { simple: true }) as string;
      if (check !== 'ok')
        throw new LedgerCorruptError(`the ledger at ${path} failed its integrity check: ${check}`);
      db.pragma('journal_mode = WAL');
      db.pragma('synchronous = FULL');
      db.pragma('busy_timeout = 5000');
      migrate(db, path, { nowMs: options.clock.now() });
      const row = db.prepare("SELECT value FROM meta WHERE key = 'ledger_id'").get() as
        { value: string } | undefined;
      if (row === undefined) throw new LedgerCorruptError(`the ledger at ${path} has no ledger id`);
      const ledgerId = row.value;
      return new SqliteLedger(db, options, ledgerId, lock);
    } catch (err) {
      db.close();
      lock.release();
      if (err instanceof LedgerCorruptError) throw err;
      if (isCorruption(err)) {
        throw new LedgerCorruptError(
          `the ledger at ${path} is not a readable database (${describe(err)}); it is kept as it is: restore it or move it aside only after checking what it held`,
          { cause: err },
        );
      }
      throw new StorageUnavailableError(`cannot open the ledger at ${path} (${describe(err)})`, {
        cause: err,
      });
    }
  }

  private prepare() {
    const db = this.#db;
    return {
      keyExists: db.prepare('SELECT 1 FROM idempotency_keys WHERE id = ?').pluck(),
      insertKey: db.prepare('INSERT INTO idempotency_keys (id, at_ms, seq) VALUES (?, ?, ?)'),
      addToBucket: db.prepare(
        'UPDATE buckets SET quantity = quantity + ?, first_at_ms = min(first_at_ms, ?) WHERE dimension = ? AND hour_ms = ? AND tags = ?',
      ),
      insertBucket: db.prepare(
        'INSERT INTO buckets (dimension, hour_ms, tags, quantity, first_at_ms) VALUES (?, ?, ?, ?, ?)',
      ),
      addCarried: db.prepare(
        'UPDATE buckets SET quantity = quantity + ?, carried_quantity = carried_quantity + ?, first_at_ms = min(first_at_ms, ?) WHERE dimension = ? AND hour_ms = ? AND tags = ?',
      ),
      insertCarried: db.prepare(
        'INSERT INTO buckets (dimension, hour_ms, tags, quantity, carried_quantity, first_at_ms) VALUES (?, ?, ?, ?, ?, ?)',
      ),
      carriedTagged: db.prepare(
        "SELECT tags, carried_quantity, first_at_ms FROM buckets WHERE dimension = ? AND hour_ms = ? AND carried_quantity > 0 AND tags <> '{}'",
      ),
      carriedOf: db
        .prepare('SELECT carried_quantity FROM buckets WHERE dimension = ? AND hour_ms = ? AND tags = ?')
        .pluck(),
      takeCarried: db.prepare(
        'UPDATE buckets SET quantity = quantity - carried_quantity, carried_quantity = 0 WHERE dimension = ? AND hour_ms = ? AND tags = ?',
      ),
      deleteEmptyBucket: db.prepare(
        'DELETE FROM buckets WHERE dimension = ? AND hour_ms = ? AND tags = ? AND quantity = 0',
      ),
      countTagSets: db.prepare('SELECT count(*) FROM buckets WHERE dimension = ? AND hour_ms = ?').pluck(),
      hourTotal: db
        .prepare('SELECT coalesce(sum(quantity), 0) FROM buckets WHERE dimension = ? AND hour_ms = ?')
        .pluck(),
      countTagKeys: db
        .prepare(
          'SELECT count(DISTINCT t.key) FROM buckets b, json_each(b.tags) t WHERE b.dimension = ? AND b.hour_ms = ?',
        )
        .pluck(),
      bucketHours: db.prepare('SELECT DISTINCT dimension, hour_ms FROM buckets ORDER BY hour_ms, dimension'),
      bucketsOf: db.prepare(
        'SELECT tags, quantity, first_at_ms FROM buckets WHERE dimension = ? AND hour_ms = ? ORDER BY tags',
      ),
      deleteBuckets: db.prepare('DELETE FROM buckets WHERE dimension = ? AND hour_ms = ?'),
      insertRecord: db.prepare(
        `INSERT INTO records (dimension, hour_ms, quantity, timestamp_ms, client_token, request, status, next_attempt_ms, sealed_at_ms)
         VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, ?) RETURNING *`,
      ),
      due: db.prepare(
        "SELECT * FROM records WHERE status = 'pending' AND next_attempt_ms <= ? ORDER BY timestamp_ms, id",
      ),
      pending: db.prepare("SELECT * FROM records WHERE status = 'pending' ORDER BY timestamp_ms, id"),
      nextAttempt: db.prepare("SELECT min(next_attempt_ms) FROM records WHERE status = 'pending'").pluck(),
      byId: db.prepare('SELECT * FROM records WHERE id = ?'),
      retryNow: db.prepare("UPDATE records SET next_attempt_ms = ? WHERE id = ? AND status = 'pending'"),
      retryAllNow: db.prepare(
        "UPDATE records SET next_attempt_ms = ? WHERE status = 'pending' AND next_attempt_ms > ?",
      ),
      markInFlight: db.prepare("UPDATE records SET in_flight = 1 WHERE id = ? AND status = 'pending'"),
      markSent: db.prepare(
        "UPDATE records SET status = 'sent', in_flight = 0, metering_record_id = ?, settled_at_ms = ?, attempts = attempts + 1 WHERE id = ? AND status = 'pending'",
      ),
      markRetry: db.prepare(
        "UPDATE records SET in_flight = 0, attempts = attempts + 1, next_attempt_ms = ?, last_error = ?, maybe_delivered = max(maybe_delivered, ?) WHERE id = ? AND status = 'pending'",
      ),
      markFailed: db.prepare(
        "UPDATE records SET status = 'failed', in_flight = 0, last_error = ?, settled_at_ms = ?, attempts = attempts + ? WHERE id = ? AND status = 'pending'",
      ),
      markCarried: db.prepare(
        "UPDATE records SET status = 'carried', in_flight = 0, last_error = ?, settled_at_ms = ?, carried_to_hour_ms = ? WHERE id = ? AND status = 'pending'",
      ),
      tagsOf: db.prepare('SELECT tags FROM buckets WHERE dimension = ? AND hour_ms = ?').pluck(),
      statusCounts: db.prepare('SELECT status, count(*) AS n FROM records GROUP BY status'),
      openUsage: db.prepare(
        'SELECT dimension, hour_ms, sum(quantity) AS quantity, count(*) AS tag_sets FROM buckets GROUP BY dimension, hour_ms ORDER BY hour_ms, dimension',
      ),
      pendingByDimension: db.prepare(
        "SELECT dimension, sum(quantity) AS quantity FROM records WHERE status = 'pending' GROUP BY dimension",
      ),
      probe: db.prepare(
        "INSERT INTO meta (key, value) VALUES ('probe', ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
      ),
      oldestPending: db.prepare("SELECT min(timestamp_ms) FROM records WHERE status = 'pending'").pluck(),
      failed: db.prepare(
        "SELECT dimension, hour_ms, quantity, last_error FROM records WHERE status = 'failed' ORDER BY hour_ms DESC LIMIT 100",
      ),
      pruneKeys: db.prepare('DELETE FROM idempotency_keys WHERE at_ms < ?'),
      oldestKey: db.prepare('SELECT min(at_ms) FROM idempotency_keys').pluck(),
      setKeyHorizon: db.prepare(
        "INSERT INTO meta (key, value) VALUES ('key_horizon_ms', ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
      ),
      pruneSettled: db.prepare(
        "DELETE FROM records WHERE status IN ('sent', 'carried') AND settled_at_ms < ? RETURNING dimension, hour_ms",
      ),
    };
  }

  /** Transactions committed by {@link record} so far (several batches share one under load). */
  get commits(): number {
    return this.#commits;
  }

  /** The durability settings of the ledger's connection, for checks and diagnostics. */
  durability(): { journalMode: string; synchronous: string } {
    const journalMode = this.#db.pragma('journal_mode', { simple: true }) as string;
    const synchronous = this.#db.pragma('synchronous', { simple: true }) as number;
    return {
      journalMode,
      synchronous: ['off', 'normal', 'full', 'extra'][synchronous] ?? String(synchronous),
    };
  }

  /** The random id created with this ledger; part of every ClientToken. */
  get ledgerId(): string {
    return this.#ledgerId;
  }

  /**
   * Adds a batch of validated reports, counted in the hour of arrival (or the next unsealed hour, for a
   * dimension whose hour is already sealed). All or nothing: resolves with the counts once the batch has
   * committed, or with a {@link LedgerRejection} (TooManyTagSets, InvalidTags) that stored nothing. Reports whose
   * idempotency key was seen in the last 24 hours, or earlier in the batch, are acknowledged as duplicates.
   * @throws StorageUnavailableError (as a rejected promise) when the commit failed; nothing was stored.
   */
  record(reports: readonly UsageReport[]): Promise<RecordResult | LedgerRejection> {
    if (this.#closed) return Promise.reject(new StorageUnavailableError('the ledger is closed'));
    return new Promise((resolve, reject) => {
      this.#queue.push({ reports, arrivalMs: this.#timeNow(this.#options.clock.now()), resolve, reject });
      if (!this.#flushScheduled) {
        this.#flushScheduled = true;
        // Group commit: every batch queued before the next turn of the event loop shares one transaction.
        setImmediate(() => this.#flush());
      }
    });
  }

  /** Commits every queued batch in one transaction; each batch in its own savepoint. */
  #flush(): void {
    this.#flushScheduled = false;
    const queue = this.#queue;
    this.#queue = [];
    if (queue.length === 0) return;
    let results: (RecordResult | LedgerRejection)[];
    const keysBefore = this.#keyCount;
    try {
      results = this.#transactions.queue(queue);
      this.#commits++;
    } catch (err) {
      this.#keyCount = keysBefore;
      this.#keysEvicted = 0;
      const failure = new StorageUnavailableError(`the ledger could not commit (${describe(err)})`, {
        cause: err,
      });
      for (const item of queue) item.reject(failure);
      return;
    }
    queue.forEach((item, i) => item.resolve(results[i]));
    if (this.#keysEvicted > 0) {
      const evicted = this.#keysEvicted;
      this.#keysEvicted = 0;
      this.#options.onKeysEvicted?.(evicted, this.#oldestKeyAtMs());
    }
  }

  #oldestKeyAtMs(): number | undefined {
    return (this.#stmt.oldestKey.get() as number | null) ?? undefined;
  }

  /** The idempotency keys kept: how many, and the arrival time of the oldest. */
  keyStats(): { count: number; oldestAtMs: number | undefined } {
    return { count: this.#keyCount, oldestAtMs: this.#oldestKeyAtMs() };
  }

  /**
   * The group-commit transactions: one for the whole queue, a savepoint per batch inside it. Built once, as
   * better-sqlite3 prepares a transaction function's BEGIN and SAVEPOINT statements when it is created, which
   * costs more than a small batch.
   */
  #transactionsOf(db: Database.Database) {
    const batch = db.transaction((reports: readonly UsageReport[], arrivalMs: number) =>
      this.#apply(reports, arrivalMs),
    );
    const setHighWater = db.prepare(
      "INSERT INTO meta (key, value) VALUES ('high_water_ms', ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value WHERE CAST(value AS INTEGER) < CAST(excluded.value AS INTEGER)",
    );
    const evictKeys = db.prepare(
      'DELETE FROM idempotency_keys WHERE id IN (SELECT id FROM idempotency_keys ORDER BY seq LIMIT ?)',
    );
    const queue = db.transaction((items: readonly Queued[]) => {
      const results = items.map((item) => {
        const keysBefore = this.#keyCount;
        try {
          return batch(item.reports, item.arrivalMs);
        } catch (err) {
          // The batch's savepoint rolled back, its keys with it.
          this.#keyCount = keysBefore;
          if (!(err instanceof BatchRejected)) throw err;
          return err.rejection;
        }
      });
      // Over the bound: forget the oldest keys, back down to the bound.
      if (this.#keyCount > this.#keysMax * (1 + KEYS_SLACK)) {
        const evicted = evictKeys.run(this.#keyCount - this.#keysMax).changes;
        this.#keyCount -= evicted;
        this.#keysEvicted = evicted;
      }
      // Kept so that a restart after the clock stepped back still stamps nothing earlier.
      setHighWater.run(String(Math.max(...items.map((item) => item.arrivalMs))));
      return results;
    });
    return { queue };
  }

  #apply(reports: readonly UsageReport[], arrivalMs: number): RecordResult {
    const stmt = this.#stmt;
    let duplicates = 0;
    const seenIds = new Set<string>();
    // Sum the batch per (dimension, tag set) first: one statement per bucket, not per report.
    const sums = new Map<string, Map<string, { quantity: number; index: number }>>();
    reports.forEach((report, index) => {
      if (report.id !== undefined) {
        if (seenIds.has(report.id) || stmt.keyExists.get(report.id) !== undefined) {
          duplicates++;
          return;
        }
        seenIds.add(report.id);
        stmt.insertKey.run(report.id, arrivalMs, ++this.#keySeq);
        this.#keyCount++;
      }
      let byTags = sums.get(report.dimension);
      if (byTags === undefined) {
        byTags = new Map<string, { quantity: number; index: number }>();
        sums.set(report.dimension, byTags);
      }
      const sum = byTags.get(report.tagsKey);
      if (sum === undefined) byTags.set(report.tagsKey, { quantity: report.quantity, index });
      else sum.quantity += report.quantity;
    });
    for (const [dimension, byTags] of sums) {
      const hourMs = targetHour(arrivalMs, (h) => this.#isSealed(dimension, h));
      const atMs = bucketTime(arrivalMs, hourMs);
      let firstNewIndex: number | undefined;
      let firstIndex: number | undefined;
      for (const [tagsKey, sum] of byTags) {
        firstIndex ??= sum.index;
        if (stmt.addToBucket.run(sum.quantity, atMs, dimension, hourMs, tagsKey).changes === 0) {
          stmt.insertBucket.run(dimension, hourMs, tagsKey, sum.quantity, atMs);
          firstNewIndex ??= sum.index;
        }
      }
      this.#checkLimits(
        dimension,
        hourMs,
        firstNewIndex ?? firstIndex ?? 0,
        reports.length > 1,
        firstNewIndex !== undefined,
      );
    }
    const counted = new Map<string, number>();
    for (const [dimension, byTags] of sums) {
      let quantity = 0;
      for (const sum of byTags.values()) quantity += sum.quantity;
      counted.set(dimension, quantity);
    }
    return { kind: 'recorded', accepted: reports.length - duplicates, duplicates, counted };
  }

  /**
   * Refuses a batch that would give one record more tag sets or tag keys than AWS accepts. Usage carried into
   * the hour never causes the refusal: if the hour is over a limit and holds carried usage with tags, that usage
   * is folded into the hour's untagged allocation (same quantity, billed in the same hour, without its tags);
   * if the app's own usage needs even that allocation's place (2,500 tag sets of its own), the carried usage
   * moves on to the next hour that can take it. Then the limits are checked again. The same holds for the
   * hour's total, kept at most {@link MAX_EXACT_TOTAL} so that it stays exact in JavaScript numbers.
   */
  #checkLimits(dimension: string, hourMs: number, index: number, batch: boolean, newTagSets: boolean): void {
    const check = (): LimitProblem | undefined =>
      this.#totalProblem(dimension, hourMs) ??
      (newTagSets ? this.#tagLimitProblem(dimension, hourMs) : undefined);
    let problem = check();
    if (problem !== undefined && this.#foldCarried(dimension, hourMs)) problem = check();
    if (problem !== undefined && this.#moveCarried(dimension, hourMs)) problem = check();
    if (problem !== undefined)
      throw new BatchRejected(ledgerRejection(problem.code, problem.message, batch ? index : undefined));
  }

  /** The hour's total over {@link MAX_EXACT_TOTAL}. */
  #totalProblem(dimension: string, hourMs: number): LimitProblem | undefined {
    const total = this.#stmt.hourTotal.get(dimension, hourMs) as number;
    if (total <= MAX_EXACT_TOTAL) return undefined;
    return {
      code: 'InvalidQuantity',
      message: `dimension ${JSON.stringify(dimension)} would total more than ${MAX_EXACT_TOTAL} this hour, beyond what is kept exact (AWS bills at most 2,147,483,647 a record; the rest is carried hour after hour)`,
    };
  }

  #tagLimitProblem(dimension: string, hourMs: number): LimitProblem | undefined {
    const tagSets = this.#stmt.countTagSets.get(dimension, hourMs) as number;
    if (tagSets > MAX_TAG_SETS) {
      return {
        code: 'TooManyTagSets',
        message: `dimension ${JSON.stringify(dimension)} would have ${tagSets} tag sets this hour; AWS accepts at most ${MAX_TAG_SETS} per record`,
      };
    }
    const tagKeys = this.#stmt.countTagKeys.get(dimension, hourMs) as number;
    if (tagKeys > MAX_TAG_KEYS) {
      return {
        code: 'InvalidTags',
        message: `dimension ${JSON.stringify(dimension)} would use ${tagKeys} distinct tag keys this hour; AWS accepts at most ${MAX_TAG_KEYS} per record`,
      };
    }
    return undefined;
  }

  /**
   * Moves the tagged usage carried into (dimension, hour) to the hour's untagged bucket, freeing the tag sets and
   * keys it held for the app. Returns whether anything moved. Runs inside the batch's savepoint, so a batch
   * refused all the same leaves the carried usage as it was.
   */
  #foldCarried(dimension: string, hourMs: number): boolean {
    const stmt = this.#stmt;
    const carried = stmt.carriedTagged.all(dimension, hourMs) as {
      tags: string;
      carried_quantity: number;
      first_at_ms: number;
    }[];
    for (const bucket of carried) {
      stmt.takeCarried.run(dimension, hourMs, bucket.tags);
      stmt.deleteEmptyBucket.run(dimension, hourMs, bucket.tags);
      this.#addCarried(dimension, hourMs, '{}', bucket.carried_quantity, bucket.first_at_ms);
    }
    return carried.length > 0;
  }

  /** Moves the carried usage left in (dimension, hour), untagged by now, to a later hour. Returns whether any. */
  #moveCarried(dimension: string, hourMs: number): boolean {
    const quantity = this.#stmt.carriedOf.get(dimension, hourMs, '{}') as number | undefined;
    if (quantity === undefined || quantity === 0) return false;
    this.#stmt.takeCarried.run(dimension, hourMs, '{}');
    this.#stmt.deleteEmptyBucket.run(dimension, hourMs, '{}');
    this.#placeCarried(dimension, hourMs + HOUR_MS, [{ tagsKey: '{}', quantity }]);
    return true;
  }

  /** Adds carried usage to a bucket, marking it as carried. */
  #addCarried(dimension: string, hourMs: number, tagsKey: string, quantity: number, atMs: number): void {
    if (this.#stmt.addCarried.run(quantity, quantity, atMs, dimension, hourMs, tagsKey).changes === 0) {
      this.#stmt.insertCarried.run(dimension, hourMs, tagsKey, quantity, quantity, atMs);
    }
  }

  /**
   * Seals every (dimension, hour) that may be sealed at `clockMs` (closed hours; with `includeOpen`, at shutdown,
   * also the open hour) into pending records, each with its stored MeterUsage request. Excess over the quantity
   * cap moves to the next hour. Each (dimension, hour) is sealed at most once. Returns the new records.
   * @throws StorageUnavailableError when the transaction could not commit; nothing changed.
   */
  seal(clockMs: number, includeOpen: boolean): StoredRecord[] {
    this.#timeNow(clockMs); // keeps the high-water mark moving with the clock
    const stmt = this.#stmt;
    const sealedNow: { dimension: string; hourMs: number }[] = [];
    try {
      const records = this.#db.transaction(() => {
        const out: StoredRecord[] = [];
        const hours = stmt.bucketHours.all() as { dimension: string; hour_ms: number }[];
        for (const { dimension, hour_ms: hourMs } of hours) {
          if (!maySeal(hourMs, clockMs, includeOpen) || this.#isSealed(dimension, hourMs)) continue;
          const buckets = (
            stmt.bucketsOf.all(dimension, hourMs) as { tags: string; quantity: number; first_at_ms: number }[]
          ).map((b) => ({ tagsKey: b.tags, quantity: b.quantity, firstAtMs: b.first_at_ms }));
          stmt.deleteBuckets.run(dimension, hourMs);
          const bucketSeal = seal(buckets);
          if (bucketSeal === undefined) continue; // Zero usage: nothing to send, and the hour stays unlocked.
          const sealed = {
            ...bucketSeal,
            timestampMs: recordTimestamp(bucketSeal.timestampMs, hourMs, clockMs),
          };
          const token = clientToken(this.#ledgerId, dimension, hourMs);
          const request = meterUsageRequest({
            productCode: this.#options.productCode,
            dimension,
            seal: sealed,
            clientToken: token,
            dryRun: this.#options.dryRun,
          });
          const row = stmt.insertRecord.get(
            dimension,
            hourMs,
            sealed.quantity,
            sealed.timestampMs,
            token,
            JSON.stringify(request),
            // Clock readings, not the stamping time: a record is due, and was sealed, by the clock.
            clockMs,
            clockMs,
          ) as RecordRow;
          sealedNow.push({ dimension, hourMs });
          out.push(toRecord(row));
          // The cap's excess is carried into the next hour that can take it, keeping its tag sets.
          if (sealed.excess.length > 0) this.#placeCarried(dimension, hourMs + HOUR_MS, sealed.excess);
        }
        return out;
      })();
      for (const { dimension, hourMs } of sealedNow) this.#markSealed(dimension, hourMs);
      return records;
    } catch (err) {
      throw new StorageUnavailableError(`the ledger could not seal (${describe(err)})`, { cause: err });
    }
  }

  /** Pending records whose next attempt is due at `nowMs`, oldest first. */
  due(nowMs: number): StoredRecord[] {
    return (this.#stmt.due.all(nowMs) as RecordRow[]).map(toRecord);
  }

  /** Every pending record, oldest first. */
  pending(): StoredRecord[] {
    return (this.#stmt.pending.all() as RecordRow[]).map(toRecord);
  }

  /** When the earliest pending record is due for its next attempt; undefined when nothing is pending. */
  nextAttemptMs(): number | undefined {
    const value = this.#stmt.nextAttempt.get() as number | null;
    return value ?? undefined;
  }

  /** Reads one record. */
  get(id: number): StoredRecord | undefined {
    const row = this.#stmt.byId.get(id) as RecordRow | undefined;
    return row && toRecord(row);
  }

  /** Makes one pending record due at `nowMs`. */
  retryNow(id: number, nowMs: number): void {
    this.#write(() => this.#stmt.retryNow.run(nowMs, id));
  }

  /** Makes every pending record due at `nowMs` (a fresh start does not wait out a previous run's backoff). */
  retryAllNow(nowMs: number): void {
    this.#write(() => this.#stmt.retryAllNow.run(nowMs, nowMs));
  }

  /**
   * Marks a record as being sent, durably, before the request leaves: if the process dies before the outcome
   * is recorded, the next start treats the record as possibly delivered.
   */
  markInFlight(id: number): void {
    this.#write(() => this.#stmt.markInFlight.run(id));
  }

  /** AWS accepted the record. Idempotent: only a pending record changes. */
  markSent(id: number, meteringRecordId: string, nowMs: number): void {
    this.#write(() => this.#stmt.markSent.run(meteringRecordId, nowMs, id));
  }

  /** A transient failure: try again at `nextAttemptMs`. `maybeDelivered` is sticky once set. */
  markRetry(id: number, error: string, nextAttemptMs: number, maybeDelivered: boolean): void {
    this.#write(() => this.#stmt.markRetry.run(nextAttemptMs, error, maybeDelivered ? 1 : 0, id));
  }

  /** AWS refused the record for good: kept with the error for a human. Never resent. */
  markFailed(id: number, error: string, nowMs: number, attempted = true): void {
    this.#write(() => this.#stmt.markFailed.run(error, nowMs, attempted ? 1 : 0, id));
  }

  /**
   * Carries a pending record whose six-hour window is closing (or that AWS called out of bounds): its quantity,
   * per tag set, is added to the hour open at `nowMs` (or the next unsealed hour), and the record is marked
   * carried, in one transaction. Returns the hour it went to.
   */
  carry(id: number, clockMs: number, reason: string): number | undefined {
    const nowMs = this.#timeNow(clockMs);
    return this.#write(() =>
      this.#db.transaction(() => {
        const row = this.#stmt.byId.get(id) as RecordRow | undefined;
        if (row === undefined || row.status !== 'pending') return undefined;
        const record = toRecord(row);
        const allocations = (
          record.request.UsageAllocations ?? [{ AllocatedUsageQuantity: record.quantity }]
        ).map((a) => ({
          tagsKey: canonicalTags(Object.fromEntries((a.Tags ?? []).map((t) => [t.Key, t.Value]))),
          quantity: a.AllocatedUsageQuantity,
        }));
        const hourMs = this.#placeCarried(record.dimension, nowMs, allocations);
        this.#stmt.markCarried.run(reason, nowMs, hourMs, id);
        return hourMs;
      })(),
    );
  }

  /**
   * Adds carried usage (per tag set) to the first unsealed hour from `fromMs` on whose record would still be
   * within AWS's tag limits (2,500 tag sets, 5 tag keys), so a carry never produces a record AWS refuses, and
   * whose total stays exact. Returns the hour. An hour with no usage always fits, because the carried usage
   * came from one valid record.
   */
  #placeCarried(
    dimension: string,
    fromMs: number,
    allocations: readonly { tagsKey: string; quantity: number }[],
  ): number {
    let hourMs = targetHour(fromMs, (h) => this.#isSealed(dimension, h));
    while (!this.#fits(dimension, hourMs, allocations)) {
      hourMs = targetHour(hourMs + HOUR_MS, (h) => this.#isSealed(dimension, h));
    }
    const atMs = bucketTime(fromMs, hourMs);
    for (const { tagsKey, quantity } of allocations)
      this.#addCarried(dimension, hourMs, tagsKey, quantity, atMs);
    return hourMs;
  }

  /**
   * Whether adding these allocations to (dimension, hour) keeps its record within AWS's tag limits, and its
   * total within {@link MAX_EXACT_TOTAL}.
   */
  #fits(
    dimension: string,
    hourMs: number,
    allocations: readonly { tagsKey: string; quantity: number }[],
  ): boolean {
    const adding = allocations.reduce((sum, a) => sum + a.quantity, 0);
    if ((this.#stmt.hourTotal.get(dimension, hourMs) as number) + adding > MAX_EXACT_TOTAL) return false;
    const tagsKeys = allocations.map((a) => a.tagsKey);
    const sets = new Set(this.#stmt.tagsOf.all(dimension, hourMs) as string[]);
    for (const key of tagsKeys) sets.add(key);
    if (sets.size > MAX_TAG_SETS) return false;
    const keys = new Set<string>();
    for (const set of sets) for (const key of Object.keys(JSON.parse(set) as object)) keys.add(key);
    return keys.size <= MAX_TAG_KEYS;
  }

  /**
   * Records past their carry deadline at `clockMs`: carried, or, for one that may have been delivered, resent
   * until AWS's window closes (see the scheduler).
   */
  expiring(clockMs: number): StoredRecord[] {
    // By the clock itself: AWS judges the window by its own clock, not by the ledger's stamping time.
    return this.pending().filter((r) => carryDeadline(r.timestampMs) <= clockMs);
  }

  /** A summary for status and for the exit code at shutdown. */
  status(nowMs: number): LedgerStatus {
    const records: Record<RecordStatus, number> = { pending: 0, sent: 0, carried: 0, failed: 0 };
    for (const row of this.#stmt.statusCounts.all() as { status: RecordStatus; n: number }[])
      records[row.status] = row.n;
    const oldest = this.#stmt.oldestPending.get() as number | null;
    return {
      ledgerId: this.#ledgerId,
      open: (
        this.#stmt.openUsage.all() as {
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
        (this.#stmt.pendingByDimension.all() as { dimension: string; quantity: number }[]).map((r) => [
          r.dimension,
          r.quantity,
        ]),
      ),
      failed: (
        this.#stmt.failed.all() as {
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
    };
  }

  /**
   * Whether the ledger can commit right now: a one-row write transaction, so a read-only or full volume shows
   * before usage is refused. Used by readiness; never throws.
   */
  writable(nowMs: number): { ok: true } | { ok: false; reason: string } {
    // SQLite reuses space in its write-ahead log, so a small commit can succeed on a full disk: also write
    // and sync a probe file of a useful size next to the database.
    const probe = join(this.#options.stateDir, '.write-probe');
    try {
      const fd = openSync(probe, 'w');
      try {
        writeSync(fd, Buffer.alloc(WRITE_PROBE_BYTES));
        fsyncSync(fd);
      } finally {
        closeSync(fd);
        unlinkSync(probe);
      }
      this.#stmt.probe.run(String(nowMs));
      return { ok: true };
    } catch (err) {
      return { ok: false, reason: `the state directory or ledger cannot be written (${describe(err)})` };
    }
  }

  /** The files of the database: the ledger itself, its write-ahead log and shared-memory index. */
  get files(): readonly string[] {
    return [this.#path, `${this.#path}-wal`, `${this.#path}-shm`];
  }

  /**
   * Forgets idempotency keys older than 24 hours and settled records past retention. Keys age by the clock, but
   * their horizon (keys older than it are forgotten) never advances faster than the monotonic clock: a wall
   * clock jumping a day or more forward must not forget every key at once, so a resend of a report
   * acknowledged just before the jump is still recognised. Time the sidecar was not running does not count,
   * so keys are kept at least 24 hours of running time (the key bound caps their number meanwhile).
   */
  prune(nowMs: number): void {
    const monotonicMs = this.#options.clock.monotonicMs();
    const allowedMs = this.#keyHorizonMs + Math.max(0, monotonicMs - this.#keyHorizonAtMonotonicMs);
    const horizonMs = Math.max(this.#keyHorizonMs, Math.min(nowMs - IDEMPOTENCY_TTL_MS, allowedMs));
    const { keysPruned, unsealed } = this.#write(() =>
      this.#db.transaction(() => {
        const pruned = this.#stmt.pruneKeys.run(horizonMs).changes;
        this.#stmt.setKeyHorizon.run(String(horizonMs));
        const settled = this.#stmt.pruneSettled.all(nowMs - SETTLED_RETENTION_MS) as {
          dimension: string;
          hour_ms: number;
        }[];
        return { keysPruned: pruned, unsealed: settled };
      })(),
    );
    // Memory follows the file only once the transaction has committed.
    this.#keyCount -= keysPruned;
    for (const row of unsealed) this.#sealed.get(row.dimension)?.delete(row.hour_ms);
    this.#keyHorizonMs = horizonMs;
    this.#keyHorizonAtMonotonicMs = monotonicMs;
  }

  /** Commits every queued batch, then closes the database. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#flush();
    this.#closed = true;
    this.#db.close();
    this.#lock.release();
  }

  #write<T>(fn: () => T): T {
    try {
      return fn();
    } catch (err) {
      throw new StorageUnavailableError(`the ledger could not commit (${describe(err)})`, { cause: err });
    }
  }

  /**
   * The time usage is stamped with: the clock, but never earlier than any time the ledger has already used
   * (its creation, a bucket's first usage, a seal). After the clock jumps back, usage is neither stamped before
   * the software started nor counted in an hour already sealed. Whether an hour may be sealed is decided by
   * the clock itself, so after a jump forward that is later undone nothing is sealed until the clock has caught
   * up again, and no record carries a timestamp ahead of the clock.
   */
  #timeNow(clockMs: number): number {
    if (clockMs > this.#highWaterMs) this.#highWaterMs = clockMs;
    return this.#highWaterMs;
  }

  #isSealed(dimension: string, hourMs: number): boolean {
    return this.#sealed.get(dimension)?.has(hourMs) ?? false;
  }

  #markSealed(dimension: string, hourMs: number): void {
    let hours = this.#sealed.get(dimension);
    if (hours === undefined) {
      hours = new Set<number>();
      this.#sealed.set(dimension, hours);
    }
    hours.add(hourMs);
  }
}

function toRecord(row: RecordRow): StoredRecord {
  return {
    id: row.id,
    dimension: row.dimension,
    hourStartMs: row.hour_ms,
    quantity: row.quantity,
    timestampMs: row.timestamp_ms,
    clientToken: row.client_token,
    request: JSON.parse(row.request) as MeterUsageRequest,
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

function isCorruption(err: unknown): boolean {
  const code = (err as { code?: unknown }).code;
  return code === 'SQLITE_NOTADB' || code === 'SQLITE_CORRUPT' || code === 'SQLITE_CORRUPT_VTAB';
}

function describe(err: unknown): string {
  const code = (err as { code?: unknown }).code;
  const message = err instanceof Error ? err.message : String(err);
  return typeof code === 'string' ? `${code}: ${message}` : message;
}
