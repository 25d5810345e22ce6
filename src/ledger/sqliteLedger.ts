/**
 * The hour ledger: the single source of truth for usage, on SQLite (better-sqlite3) in METERING_STATE_DIR in
 * WAL mode, every commit made durable (the write-ahead log synced, ./walSync.ts) before anything depends on it,
 * so a commit that was answered survives a crash or power loss. Usage accumulates in buckets per
 * (dimension, hour, tag set); sealing turns an hour's buckets into one record per dimension, stored with its
 * exact MeterUsage request; the sender then marks each record sent, carried or failed.
 *
 * Contract: a crash at any moment leaves every acknowledged batch counted exactly once. `record()` resolves only
 * after the transaction holding the batch has committed and the log has been synced; batches that arrive together
 * share one commit (group commit), and batches that arrive while it is synced form the next. Every other write is
 * synchronous here and made durable by {@link SqliteLedger.durable}, which callers await before acting on it
 * (`InProcessLedger` does, for the rest of the sidecar). Sealing a bucket, storing its record and deleting the
 * bucket happen in one transaction, as does every carry. An unreadable or newer-schema database raises LedgerCorruptError; it is never reset.
 */
import Database from 'better-sqlite3';
import { HOUR_MS } from '../clock.js';
import { StorageUnavailableError, describeError } from '../errors.js';
import {
  type CancelResult,
  type LedgerOptions,
  type LedgerRejection,
  type LedgerStatus,
  type RecordResult,
  type StoredRecord,
} from './ledger.js';
import type { UsageBatch } from './usageBatch.js';
import { BatchRejected, Buckets } from './buckets.js';
import {
  allocationsOf,
  carryDeadline,
  clientToken,
  maySeal,
  meterUsageRequest,
  recordTimestamp,
  seal,
  zeroUsageHours,
  type MeterUsageRequest,
  type Seal,
  type Tag,
} from './hours.js';
import { Corrections } from './corrections.js';
import { HandoffStore } from './handoffStore.js';
import { KeyStore } from './keyStore.js';
import { DEFAULT_IDEMPOTENCY_KEYS_MAX, DEFAULT_RETENTION_MS } from './keys.js';
import { prepareStatements, readStatus, toRecord, type RecordRow, type Statements } from './statements.js';
import type { StateLock } from './stateLock.js';
import { openDatabase, probeWritable } from './database.js';
import { WalSync } from './walSync.js';

/** A unit remainder given up after the retention period (`LedgerOptions.onRemaindersPruned`). */
export interface PrunedRemainder {
  readonly dimension: string;
  readonly divisor: number;
  readonly quantity: number;
}

/** What a queued write does: add a batch of usage, or cancel a report. */
type Write =
  { readonly kind: 'usage'; readonly batch: UsageBatch } | { readonly kind: 'cancel'; readonly id: string };

/** What each kind of write answers. */
type Answer = RecordResult | LedgerRejection | CancelResult;

interface Queued {
  readonly write: Write;
  readonly arrivalMs: number;
  readonly resolve: (answer: Answer) => void;
  readonly reject: (err: unknown) => void;
}

/** The SQLite hour ledger. Create with {@link SqliteLedger.open}; one instance per database file. */
export class SqliteLedger {
  readonly #db: Database.Database;
  readonly #options: LedgerOptions;
  readonly #ledgerId: string;
  /** Sealed hours per dimension: late usage for these goes to the next hour. Mirrors `records`. */
  readonly #sealed = new Map<string, Set<number>>();
  /** What a run of {@link seal} calls at one clock reading shares, while it has more to seal. */
  #sealRun: SealRun | undefined;
  /**
   * The request object of the record sealed last, until its record first reads it: sent straight after its seal,
   * a record is not parsed back from the text it was stored as (150 KB for 2,500 allocations). One only, so that
   * records sealed for later hold nothing but their text.
   */
  #lastBuilt: { readonly owner: object; readonly request: MeterUsageRequest } | undefined;
  #queue: Queued[] = [];
  #flushScheduled = false;
  /** A group's commit is being synced; see {@link SqliteLedger.#scheduleFlush}. */
  #groupSyncing = false;
  #closed = false;
  #commits = 0;
  /** The latest time the ledger has used; see {@link SqliteLedger.#timeNow}. */
  #highWaterMs: number;
  /**
   * The newest hour of a record retention pruned: every hour up to it counts as sealed for every dimension, so
   * that a clock set far back (after a restart, say) cannot stamp usage into an hour whose record is gone.
   */
  #prunedThroughMs: number;
  /**
   * The time retention ages cancellations and unit remainders by (see {@link SqliteLedger.#retentionNow}): saved at
   * each prune, and from then on advanced no faster than the monotonic clock.
   */
  #retentionBaseMs: number;
  #retentionBaseMonotonicMs: number;
  readonly #stmt: Statements;
  readonly #keys: KeyStore;
  readonly #buckets: Buckets;
  readonly #handoffs: HandoffStore;
  readonly #corrections: Corrections;
  readonly #transactions: {
    queue: (items: readonly Queued[]) => { results: Answer[]; evicted: number };
  };
  readonly #path: string;
  /** The state directory's lock, held while the ledger is open (see ./stateLock.ts). */
  readonly #lock: StateLock;
  readonly #wal: WalSync;
  /** Set once a sync of the log failed: every write is refused from then on. */
  #broken: StorageUnavailableError | undefined;
  private constructor(db: Database.Database, options: LedgerOptions, ledgerId: string, lock: StateLock) {
    this.#db = db;
    this.#lock = lock;
    this.#path = db.name;
    this.#options = options;
    this.#ledgerId = ledgerId;
    this.#stmt = prepareStatements(db);
    this.#keys = new KeyStore(
      db,
      this.#stmt,
      options.clock,
      options.idempotencyKeysMax ?? DEFAULT_IDEMPOTENCY_KEYS_MAX,
    );
    const isSealed = (dimension: string, hourMs: number): boolean => this.#isSealed(dimension, hourMs);
    this.#buckets = new Buckets(this.#stmt, isSealed, options.unitDivisors);
    this.#corrections = new Corrections(this.#stmt, this.#keys, this.#buckets, isSealed);
    this.#handoffs = new HandoffStore(db, this.#buckets, (clockMs) => this.#timeNow(clockMs));
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
    this.#prunedThroughMs =
      (this.#db
        .prepare("SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'pruned_through_ms'")
        .pluck()
        .get() as number | undefined) ?? Number.MIN_SAFE_INTEGER;
    this.#retentionBaseMs =
      (this.#db
        .prepare("SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'retention_clock_ms'")
        .pluck()
        .get() as number | undefined) ?? options.clock.now();
    this.#retentionBaseMonotonicMs = options.clock.monotonicMs();
    // A record that was being sent when the process died may have reached AWS: never carry it.
    this.#db.prepare('UPDATE records SET maybe_delivered = 1, in_flight = 0 WHERE in_flight = 1').run();
    for (const row of this.#db.prepare('SELECT dimension, hour_ms FROM records').all() as {
      dimension: string;
      hour_ms: number;
    }[]) {
      this.#markSealed(row.dimension, row.hour_ms);
    }
    this.#wal = new WalSync(`${this.#path}-wal`, options.stateDir, options.syncFile);
  }

  /**
   * Opens (or creates) the ledger in `options.stateDir`, holding the directory's lock until {@link close}.
   * @throws StateLockedError when another sidecar holds the state directory.
   * @throws LedgerCorruptError when the file is not a readable ledger of this or an older schema.
   * @throws StorageUnavailableError when the directory or file cannot be created or written.
   */
  static open(options: LedgerOptions): SqliteLedger {
    const { db, lock, ledgerId } = openDatabase(options.stateDir, options.clock.now());
    try {
      return new SqliteLedger(db, options, ledgerId, lock);
    } catch (err) {
      db.close();
      lock.release();
      throw new StorageUnavailableError(`cannot open the ledger at ${db.name} (${describeError(err)})`, {
        cause: err,
      });
    }
  }

  /**
   * Resolves once every commit made so far is on disk (one sync of the log shared by all who wait for it).
   * Rejects with StorageUnavailableError when the sync fails; the ledger then refuses every later write.
   */
  durable(): Promise<void> {
    if (this.#broken !== undefined) return Promise.reject(this.#broken);
    // Closing synced the log on the way out: nothing committed before it is left to sync.
    if (this.#closed) return Promise.resolve();
    return this.#wal.sync().then(
      () => {
        if (this.#broken !== undefined) throw this.#broken;
      },
      (err: unknown) => {
        throw this.#break(err);
      },
    );
  }

  /** Marks the ledger broken by a failed sync (once) and returns the error every write answers from now on. */
  #break(err: unknown): StorageUnavailableError {
    if (this.#broken !== undefined) return this.#broken;
    const broken = new StorageUnavailableError(
      `the ledger's write-ahead log could not be synced (${describeError(err)}); what it holds is recovered at the next start`,
      { cause: err },
    );
    this.#broken = broken;
    this.#options.onBroken?.(broken);
    return broken;
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
  record(batch: UsageBatch): Promise<RecordResult | LedgerRejection> {
    return this.#enqueue({ kind: 'usage', batch }) as Promise<RecordResult | LedgerRejection>;
  }

  /**
   * Cancels the report with idempotency key `id` if its hour is not sealed (./corrections.ts), in the next group
   * commit: ordered after every batch queued before it, and answered once durable. A refusal changed nothing.
   * @throws StorageUnavailableError (as a rejected promise) when the commit failed; nothing changed.
   */
  cancel(id: string): Promise<CancelResult> {
    return this.#enqueue({ kind: 'cancel', id }) as Promise<CancelResult>;
  }

  #enqueue(write: Write): Promise<Answer> {
    if (this.#closed) return Promise.reject(new StorageUnavailableError('the ledger is closed'));
    return new Promise((resolve, reject) => {
      this.#queue.push({ write, arrivalMs: this.#timeNow(this.#options.clock.now()), resolve, reject });
      this.#scheduleFlush();
    });
  }

  /**
   * Group commit: every batch queued before the next turn of the event loop shares one transaction, and while a
   * group's sync is under way the batches that arrive wait for it and form the next group. The event loop goes
   * on parsing meanwhile, and each sync covers as many batches as the old blocking commit did.
   */
  #scheduleFlush(): void {
    if (this.#flushScheduled || this.#groupSyncing || this.#queue.length === 0) return;
    this.#flushScheduled = true;
    setImmediate(() => this.#flush());
  }

  /** Commits every queued batch in one transaction; each batch in its own savepoint. */
  #flush(): void {
    this.#flushScheduled = false;
    const queue = this.#queue;
    this.#queue = [];
    if (queue.length === 0) return;
    if (this.#broken !== undefined) {
      for (const item of queue) item.reject(this.#broken);
      return;
    }
    let results: Answer[];
    let evicted: number;
    const keysBefore = this.#keys.checkpoint();
    try {
      ({ results, evicted } = this.#transactions.queue(queue));
      this.#commits++;
    } catch (err) {
      this.#keys.restore(keysBefore);
      const failure = new StorageUnavailableError(`the ledger could not commit (${describeError(err)})`, {
        cause: err,
      });
      for (const item of queue) item.reject(failure);
      return;
    }
    if (evicted > 0) this.#options.onKeysEvicted?.(evicted, this.#keys.oldestAtMs());
    // Answered only once the commit is on disk.
    this.#groupSyncing = true;
    void this.durable()
      .then(
        () => queue.forEach((item, i) => item.resolve(results[i])),
        (err: unknown) => {
          for (const item of queue) item.reject(err);
        },
      )
      .finally(() => {
        this.#groupSyncing = false;
        this.#scheduleFlush();
      });
  }

  /** The idempotency keys kept: how many, and the arrival time of the oldest. */
  keyStats(): { count: number; oldestAtMs: number | undefined } {
    return { count: this.#keys.count, oldestAtMs: this.#keys.oldestAtMs() };
  }

  /**
   * The group-commit transactions: one for the whole queue, a savepoint per batch inside it. Built once, as
   * better-sqlite3 prepares a transaction function's BEGIN and SAVEPOINT statements when it is created, which
   * costs more than a small batch.
   */
  #transactionsOf(db: Database.Database) {
    const savepoint = db.transaction((write: Write, arrivalMs: number): Answer =>
      write.kind === 'usage'
        ? this.#buckets.apply(write.batch, arrivalMs, this.#keys)
        : this.#corrections.cancel(write.id, arrivalMs),
    );
    const queue = db.transaction((items: readonly Queued[]) => {
      const results = items.map((item) => {
        const keysBefore = this.#keys.checkpoint();
        try {
          return savepoint(item.write, item.arrivalMs);
        } catch (err) {
          // The batch's savepoint rolled back, its keys with it.
          this.#keys.restore(keysBefore);
          if (!(err instanceof BatchRejected)) throw err;
          return err.rejection;
        }
      });
      const evicted = this.#keys.trim();
      // Kept so that a restart after the clock stepped back still stamps nothing earlier.
      this.#stmt.setHighWater.run(String(Math.max(...items.map((item) => item.arrivalMs))));
      return { results, evicted };
    });
    return { queue };
  }

  /**
   * Seals every (dimension, hour) that may be sealed at `clockMs` (closed hours; with `includeOpen`, at shutdown,
   * also the open hour) into pending records, each with its stored MeterUsage request, or the first `limit` of
   * them, oldest hour first (the rest are sealed by the next calls, so that a sender can send one record while
   * the next is sealed). Excess over the quantity cap moves to the next hour. Each (dimension, hour) is sealed at
   * most once. Returns the new records.
   * @throws StorageUnavailableError when the transaction could not commit; nothing changed.
   */
  seal(clockMs: number, includeOpen: boolean, limit = Infinity): StoredRecord[] {
    if (this.#broken !== undefined) throw this.#broken;
    this.#timeNow(clockMs); // keeps the high-water mark moving with the clock
    const stmt = this.#stmt;
    const sealedNow = new Set<string>();
    const sealedKey = (dimension: string, hourMs: number): string => `${hourMs}\n${dimension}`;
    let run = this.#sealRun;
    if (run?.clockMs !== clockMs || run.includeOpen !== includeOpen) {
      run = {
        clockMs,
        includeOpen,
        hours: [],
        next: 0,
        sealedFromHours: false,
        tags: new Map(),
        zeroStartedMs: this.#zeroStartedMs(clockMs),
      };
      this.#sealRun = run;
    }
    const tagsCache = run.tags;
    try {
      const records = this.#db.transaction(() => {
        const out: StoredRecord[] = [];
        const insert = (dimension: string, hourMs: number, sealed: Seal): void => {
          const token = clientToken(this.#ledgerId, dimension, hourMs);
          const request = meterUsageRequest({
            productCode: this.#options.productCode,
            dimension,
            seal: sealed,
            clientToken: token,
            dryRun: this.#options.dryRun,
            tagsCache,
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
            this.#options.identity ?? null,
          ) as RecordRow;
          sealedNow.add(sealedKey(dimension, hourMs));
          const owner = {};
          this.#lastBuilt = { owner, request };
          out.push(
            toRecord(row, () => {
              const built = this.#lastBuilt;
              if (built?.owner !== owner) return undefined;
              this.#lastBuilt = undefined;
              return built.request;
            }),
          );
        };
        let readNow = false;
        for (;;) {
          if (run.next === run.hours.length) {
            // The list is read at the first call, and again when used up: once in each call (for usage that came
            // between the calls) and after each list a pair was sealed from (a seal may carry excess into a new
            // pair). Each call thus ends on a fresh list; the calls between walk the list they have.
            if (readNow && !run.sealedFromHours) break;
            run.hours = stmt.bucketHours.all() as { dimension: string; hour_ms: number }[];
            run.next = 0;
            run.sealedFromHours = false;
            readNow = true;
            continue;
          }
          if (out.length >= limit) return out;
          const { dimension, hour_ms: hourMs } = run.hours[run.next++];
          if (!maySeal(hourMs, clockMs, includeOpen) || this.#isSealed(dimension, hourMs)) continue;
          if (sealedNow.has(sealedKey(dimension, hourMs))) continue;
          const buckets = (stmt.bucketsOf.all(dimension, hourMs) as [string, number, number][]).map(
            ([tagsKey, quantity, firstAtMs]) => ({ tagsKey, quantity, firstAtMs }),
          );
          stmt.deleteBuckets.run(dimension, hourMs);
          const bucketSeal = seal(buckets);
          if (bucketSeal === undefined) continue; // Zero usage: nothing to send, and the hour stays unlocked.
          run.sealedFromHours = true;
          insert(dimension, hourMs, {
            ...bucketSeal,
            timestampMs: recordTimestamp(bucketSeal.timestampMs, hourMs, clockMs),
          });
          // The cap's excess is carried into the next hour that can take it, keeping its tag sets.
          if (bucketSeal.excess.length > 0)
            this.#buckets.placeCarried(dimension, hourMs + HOUR_MS, bucketSeal.excess);
        }
        const zero = this.#options.zeroUsage;
        if (zero !== undefined) {
          // Zero reporting: every configured dimension without a record gets one of quantity 0 for each hour this
          // sidecar ran in, from the moment it started (never earlier), so a buyer sees the product metered.
          const startedMs = run.zeroStartedMs ?? zero.fromMs; // read whenever zero reporting is on
          for (const hourMs of zeroUsageHours(startedMs, clockMs, includeOpen)) {
            for (const dimension of zero.dimensions) {
              if (out.length >= limit) return out;
              if (this.#isSealed(dimension, hourMs) || sealedNow.has(sealedKey(dimension, hourMs))) continue;
              if (stmt.tagsOf.get(dimension, hourMs) !== undefined) continue; // usage arrived: not zero
              insert(dimension, hourMs, {
                quantity: 0,
                timestampMs: recordTimestamp(Math.max(hourMs, startedMs), hourMs, clockMs),
                allocations: [],
                excess: [],
              });
            }
          }
        }
        return out;
      })();
      for (const record of records) this.#markSealed(record.dimension, record.hourStartMs);
      if (records.length < limit) this.#sealRun = undefined; // nothing is left to seal
      return records;
    } catch (err) {
      this.#sealRun = undefined;
      this.#lastBuilt = undefined;
      throw new StorageUnavailableError(`the ledger could not seal (${describeError(err)})`, { cause: err });
    }
  }

  /**
   * When zero reporting counts the sidecar as started, by the clock as it reads at `clockMs` (read when a run of
   * seals begins, as close to that reading as can be: a later call would put the start earlier by the time the
   * run has taken). A clock corrected since the start (it was behind) must not reach back into hours before it.
   */
  #zeroStartedMs(clockMs: number): number | undefined {
    const zero = this.#options.zeroUsage;
    if (zero === undefined) return undefined;
    const elapsedMs = this.#options.clock.monotonicMs() - zero.fromMonotonicMs;
    // Whole milliseconds (the monotonic clock has fractions), rounded up: never before the start.
    return Math.ceil(Math.max(zero.fromMs, clockMs - elapsedMs));
  }

  /** Handing what is left to another sidecar, and adopting what others left (./handoffStore.ts). */
  get handoffs(): HandoffStore {
    if (this.#broken !== undefined) throw this.#broken;
    return this.#handoffs;
  }

  /** Pending records whose next attempt is due at `nowMs`, oldest first. */
  due(nowMs: number): StoredRecord[] {
    return (this.#stmt.due.all(nowMs) as RecordRow[]).map((row) => toRecord(row));
  }

  /** Every pending record, oldest first. */
  pending(): StoredRecord[] {
    return (this.#stmt.pending.all() as RecordRow[]).map((row) => toRecord(row));
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

  /** Makes one pending record due at `atMs`. */
  dueAt(id: number, atMs: number): void {
    this.#write(() => this.#stmt.dueAt.run(atMs, id));
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
        const hourMs = this.#buckets.placeCarried(record.dimension, nowMs, allocationsOf(record.request));
        this.#stmt.markCarried.run(reason, nowMs, hourMs, id);
        return hourMs;
      })(),
    );
  }

  /**
   * Records past their carry deadline at `clockMs`: carried, or, for one that may have been delivered, resent
   * until AWS's window closes (see `Dispatcher.pass` in ../schedule/dispatcher.ts).
   */
  expiring(clockMs: number): StoredRecord[] {
    // By the clock itself: AWS judges the window by its own clock, not by the ledger's stamping time.
    return this.pending().filter((r) => carryDeadline(r.timestampMs) <= clockMs);
  }

  /** A summary for status and for the exit code at shutdown. */
  status(nowMs: number): LedgerStatus {
    return { ...readStatus(this.#stmt, this.#ledgerId, nowMs), handoffs: this.#handoffs.summary() };
  }

  /**
   * Whether the ledger can commit right now: a one-row write transaction, so a read-only or full volume shows
   * before usage is refused. Used by readiness; never throws.
   */
  writable(nowMs: number): { ok: true } | { ok: false; reason: string } {
    if (this.#broken !== undefined) return { ok: false, reason: this.#broken.message };
    return probeWritable(this.#options.stateDir, () => this.#stmt.probe.run(String(nowMs)));
  }

  /** The files of the database: the ledger itself, its write-ahead log and shared-memory index. */
  get files(): readonly string[] {
    return [this.#path, `${this.#path}-wal`, `${this.#path}-shm`];
  }

  /**
   * Forgets idempotency keys older than 24 hours (see {@link KeyStore.prune}) and settled records past
   * retention, each in a transaction; memory follows only what committed.
   */
  prune(nowMs: number): void {
    this.#write(() => this.#keys.prune(nowMs));
    const retentionMs = this.#options.retentionMs ?? DEFAULT_RETENTION_MS;
    const retentionNowMs = this.#retentionNow(nowMs);
    const { throughMs, givenUp } = this.#write(() =>
      this.#db.transaction(() => {
        // Cancellations and remainders age by a clock that cannot jump forward (a wall clock set a month ahead
        // must not give up every remainder at once), and neither goes while a key that may need it is kept.
        this.#stmt.pruneCancellations.run(retentionNowMs - retentionMs);
        // A remainder below one unit untouched for the whole retention is given up, like one left at the end.
        const givenUp = this.#stmt.pruneRemainders.all(retentionNowMs - retentionMs) as PrunedRemainder[];
        this.#stmt.setRetentionClock.run(String(retentionNowMs));
        const pruned = this.#stmt.pruneSettled.all(nowMs - retentionMs) as {
          dimension: string;
          hour_ms: number;
        }[];
        if (pruned.length === 0) return { throughMs: this.#prunedThroughMs, givenUp };
        const newest = pruned.reduce((max, r) => Math.max(max, r.hour_ms), this.#prunedThroughMs);
        this.#stmt.setPrunedThrough.run(String(newest));
        return { throughMs: newest, givenUp };
      })(),
    );
    this.#retentionBaseMs = retentionNowMs;
    this.#retentionBaseMonotonicMs = this.#options.clock.monotonicMs();
    if (givenUp.length > 0) this.#options.onRemaindersPruned?.(givenUp);
    // Hours up to the newest pruned one stay sealed by the floor; only later ones are kept in memory.
    this.#prunedThroughMs = throughMs;
    for (const hours of this.#sealed.values())
      for (const hourMs of hours) if (hourMs <= throughMs) hours.delete(hourMs);
  }

  /** Commits every queued batch, then closes the database. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#flush();
    this.#closed = true;
    // Everything committed is synced here, before the database closes (which checkpoints the log into it).
    try {
      this.#wal.closeAfterSync();
    } catch (err) {
      this.#break(err);
    }
    this.#db.close();
    this.#lock.release();
  }

  #write<T>(fn: () => T): T {
    if (this.#broken !== undefined) throw this.#broken;
    try {
      return fn();
    } catch (err) {
      throw new StorageUnavailableError(`the ledger could not commit (${describeError(err)})`, {
        cause: err,
      });
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

  /**
   * The clock as retention of cancellations and remainders reads it: `clockMs`, but never more than the monotonic
   * time run since the last prune (or the open) past the time saved then. Time the sidecar was stopped does not
   * count, so they may be kept a little longer than the retention; never shorter.
   */
  #retentionNow(clockMs: number): number {
    const elapsedMs = Math.max(0, this.#options.clock.monotonicMs() - this.#retentionBaseMonotonicMs);
    return Math.min(clockMs, this.#retentionBaseMs + elapsedMs);
  }

  #isSealed(dimension: string, hourMs: number): boolean {
    return hourMs <= this.#prunedThroughMs || (this.#sealed.get(dimension)?.has(hourMs) ?? false);
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

/**
 * A run of {@link SqliteLedger.seal} calls at one clock reading, from its first call until one returns fewer
 * records than its limit or throws. A call with another reading starts a new run.
 */
interface SealRun {
  readonly clockMs: number;
  readonly includeOpen: boolean;
  /** The (dimension, hour) pairs with buckets, oldest hour first, as last read, and the next one to look at. */
  hours: { dimension: string; hour_ms: number }[];
  next: number;
  /** Whether a pair of the list read last was sealed (so a seal may have carried excess into a new pair). */
  sealedFromHours: boolean;
  /** The tags of each tag set, built once for the run, not once per dimension. */
  readonly tags: Map<string, readonly Tag[]>;
  /** When zero reporting counts the sidecar as started, read when the run began; undefined without it. */
  readonly zeroStartedMs: number | undefined;
}
