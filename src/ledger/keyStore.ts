/**
 * The idempotency keys of the ledger: a report whose `id` is known is acknowledged and not counted again. Keys
 * are kept 24 hours, aged so that a wall clock jumping forward cannot forget them all at once, and at most a
 * bound's worth of them, the oldest forgotten first (docs/metering.md, "Idempotency keys"). Every change runs
 * inside a transaction of the ledger's; the in-memory count follows what committed.
 */
import type Database from 'better-sqlite3';
import type { Clock } from '../clock.js';
import { IDEMPOTENCY_TTL_MS } from './keys.js';
import type { Statements } from './statements.js';

/**
 * How far over its bound the key store may grow before the oldest keys are forgotten, as a share of the
 * bound: forgetting in steps of 1% keeps the cost off most commits.
 */
const KEYS_SLACK = 0.01;

/** What a key counted, kept so that its report can be cancelled (schema 6; keys stored earlier have none). */
export interface KeyedUsage {
  readonly dimension: string;
  /** The hour whose bucket the report went into (its hour of arrival, or the next unsealed one). */
  readonly hourMs: number;
  readonly tagsKey: string;
  /** As reported: in the dimension's fine unit when it has a divisor. */
  readonly quantity: number;
  /** The dimension's unit divisor when the report arrived; 1 when it had none. */
  readonly divisor: number;
}

/** A stored key: when it arrived and what it counted. */
export interface StoredKey {
  readonly atMs: number;
  readonly usage: KeyedUsage | undefined;
}

/** Columns of what the keys of one batch counted, row `i` for key `i` ({@link KeyStore.addAll}). */
export interface KeyedColumns {
  readonly dimension: readonly string[];
  readonly hourMs: readonly number[];
  readonly tagsKey: readonly string[];
  readonly quantity: readonly number[];
  readonly divisor: readonly number[];
}

/** The key store of one ledger connection. */
export class KeyStore {
  readonly #db: Database.Database;
  readonly #stmt: Statements;
  readonly #clock: Clock;
  readonly #max: number;
  /** Keys stored, counted as they are added and removed (a count(*) would cost a scan). */
  #count: number;
  /** The arrival order of the last key stored (rolled-back batches leave gaps, which do not matter). */
  #seq: number;
  /** Keys older than this were pruned; it advances no faster than the monotonic clock (see {@link prune}). */
  #horizonMs: number;
  #horizonAtMonotonicMs: number;

  constructor(db: Database.Database, stmt: Statements, clock: Clock, max: number) {
    this.#db = db;
    this.#stmt = stmt;
    this.#clock = clock;
    this.#max = max;
    this.#count = db.prepare('SELECT count(*) FROM idempotency_keys').pluck().get() as number;
    this.#seq = db.prepare('SELECT coalesce(max(seq), 0) FROM idempotency_keys').pluck().get() as number;
    const stored = db
      .prepare("SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'key_horizon_ms'")
      .pluck()
      .get() as number | undefined;
    // A ledger without a horizon (new, or from an earlier schema) starts where its keys do.
    this.#horizonMs = stored ?? Math.min(clock.now() - IDEMPOTENCY_TTL_MS, this.oldestAtMs() ?? Infinity);
    this.#horizonAtMonotonicMs = clock.monotonicMs();
  }

  /** Keys kept. */
  get count(): number {
    return this.#count;
  }

  /** The arrival time of the oldest key kept. */
  oldestAtMs(): number | undefined {
    return (this.#stmt.oldestKey.get() as number | null) ?? undefined;
  }

  /** Whether `id` is known. */
  has(id: string): boolean {
    return this.#stmt.keyExists.get(id) !== undefined;
  }

  /** The stored key `id`, with what it counted; undefined when it is not known (or forgotten). */
  get(id: string): StoredKey | undefined {
    const row = this.#stmt.keyOf.get(id) as
      | {
          at_ms: number;
          dimension: string | null;
          hour_ms: number | null;
          tags: string | null;
          quantity: number | null;
          divisor: number | null;
        }
      | undefined;
    if (row === undefined) return undefined;
    const usage =
      row.dimension === null || row.hour_ms === null || row.tags === null || row.quantity === null
        ? undefined
        : {
            dimension: row.dimension,
            hourMs: row.hour_ms,
            tagsKey: row.tags,
            quantity: row.quantity,
            divisor: row.divisor ?? 1,
          };
    return { atMs: row.at_ms, usage };
  }

  /** Which of `ids` are known: one statement for the lot. */
  known(ids: readonly string[]): Set<string> {
    if (ids.length === 1) return new Set(this.has(ids[0]) ? ids : []);
    return new Set(this.#stmt.knownKeys.all(JSON.stringify(ids)) as string[]);
  }

  /**
   * Stores `ids`, arrived at `atMs`, in their order, with what each counted (row `i` of `usage` for `ids[i]`):
   * one statement for the lot. Inside a transaction; see {@link restore} when it rolls back.
   */
  addAll(ids: readonly string[], atMs: number, usage: KeyedColumns): void {
    if (ids.length === 0) return;
    const stmt = this.#stmt;
    // Where the keys' usage went, one row per (dimension, hour, tag set, divisor) they share: a batch has few,
    // and keys next to each other mostly share one, so the previous key's is tried first.
    const usageIds = new Map<string, number>();
    let last = -1;
    let lastId = 0;
    const usageIdOf = (k: number): number => {
      if (
        last >= 0 &&
        usage.dimension[k] === usage.dimension[last] &&
        usage.hourMs[k] === usage.hourMs[last] &&
        usage.tagsKey[k] === usage.tagsKey[last] &&
        usage.divisor[k] === usage.divisor[last]
      ) {
        last = k;
        return lastId;
      }
      const at = `${usage.dimension[k]}\n${usage.hourMs[k]}\n${usage.divisor[k]}\n${usage.tagsKey[k]}`;
      let id = usageIds.get(at);
      if (id === undefined) {
        id = stmt.keyUsage.get(
          usage.dimension[k],
          usage.hourMs[k],
          usage.tagsKey[k],
          usage.divisor[k],
        ) as number;
        usageIds.set(at, id);
      }
      last = k;
      lastId = id;
      return id;
    };
    let i = 0;
    // Rows of a hundred, then of ten, then one by one: each statement binds its rows' values in order.
    for (const [rows, insert] of [
      [100, stmt.insertKeys100],
      [10, stmt.insertKeys10],
      [1, stmt.insertKey],
    ] as const) {
      for (; ids.length - i >= rows; i += rows) {
        const values: unknown[] = [];
        for (let k = i; k < i + rows; k++)
          values.push(ids[k], atMs, this.#seq + 1 + k, usageIdOf(k), usage.quantity[k]);
        insert.run(values);
      }
    }
    this.#seq += ids.length;
    this.#count += ids.length;
  }

  /** The count to {@link restore} if the transaction under way rolls back. */
  checkpoint(): number {
    return this.#count;
  }

  /** Puts the count back after a rollback of what was added since `checkpoint`. */
  restore(checkpoint: number): void {
    this.#count = checkpoint;
  }

  /**
   * Over the bound (by more than the slack), forgets the oldest keys, by arrival order, back down to the bound.
   * Inside the commit's transaction. Returns how many were forgotten.
   */
  trim(): number {
    if (this.#count <= this.#max * (1 + KEYS_SLACK)) return 0;
    const evicted = this.#stmt.evictKeys.run(this.#count - this.#max).changes;
    this.#stmt.pruneKeyUsage.run();
    this.#count -= evicted;
    return evicted;
  }

  /**
   * Forgets keys older than 24 hours, in a transaction of its own. Keys age by the clock, but their horizon
   * (keys older than it are forgotten) never advances faster than the monotonic clock: a wall clock jumping a
   * day or more forward must not forget every key at once, so a resend of a report acknowledged just before the
   * jump is still recognised. Time the sidecar was not running does not count, so keys are kept at least 24
   * hours of running time (the bound caps their number meanwhile).
   * @throws whatever the commit throws; the store is then unchanged.
   */
  prune(nowMs: number): void {
    const monotonicMs = this.#clock.monotonicMs();
    const allowedMs = this.#horizonMs + Math.max(0, monotonicMs - this.#horizonAtMonotonicMs);
    const horizonMs = Math.max(this.#horizonMs, Math.min(nowMs - IDEMPOTENCY_TTL_MS, allowedMs));
    const pruned = this.#db.transaction(() => {
      const changes = this.#stmt.pruneKeys.run(horizonMs).changes;
      this.#stmt.pruneKeyUsage.run();
      this.#stmt.setKeyHorizon.run(String(horizonMs));
      return changes;
    })();
    // Memory follows the file only once the transaction has committed.
    this.#count -= pruned;
    this.#horizonMs = horizonMs;
    this.#horizonAtMonotonicMs = monotonicMs;
  }
}
