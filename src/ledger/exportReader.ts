/**
 * Reading a ledger for the reconciliation export (`metering-sidecar export`, docs/operations.md): every record
 * it holds, with its state, as one consistent snapshot. The file is opened read-only, without the state
 * directory's lock, so a running sidecar goes on writing meanwhile (SQLite's write-ahead log lets a reader see
 * the last commit while the writer adds more); a stopped sidecar's ledger is read from a copy in the temporary
 * directory, so nothing is written beside it and a volume mounted read-only reads as well. Nothing is
 * migrated or repaired: a ledger of a newer schema is refused, and one older than schema 3 must be opened by the
 * sidecar once first.
 */
import { copyFileSync, existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { LedgerCorruptError, StorageUnavailableError, describeError } from '../errors.js';
import type { PlatformIdentity } from '../platform.js';
import { toCancellation, type CancellationRow } from './corrections.js';
import { LEDGER_FILE } from './database.js';
import type { UncertainRow } from './handoffStore.js';
import { allocationsOf, type MeterUsageRequest } from './hours.js';
import { SCHEMA_VERSION } from './schema.js';
import type { RecordRow } from './statements.js';

/**
 * Where an exported record stands:
 * - `pending`: sealed, not yet accepted by AWS (it may be retrying; `maybeDelivered` says whether an attempt
 *   may have reached AWS);
 * - `sent`: accepted, with its MeteringRecordId;
 * - `carried`: its window closed before it could be sent, and its usage went into a later hour (`carriedTo`),
 *   or to another sidecar with a handoff (`handoffId`);
 * - `failed`: AWS refused it for good (`error`); never resent;
 * - `uncertain`: an attempt may have reached AWS and no answer ever came; never resent, never carried, so AWS
 *   holds it once or not at all (check the seller report). Also the records another sidecar handed off in
 *   that state (`source: 'handoff'`).
 */
export type ExportState = 'pending' | 'sent' | 'carried' | 'failed' | 'uncertain';

/** One record of the export. Times are epoch milliseconds. */
export interface ExportedRecord {
  /** `ledger`: sealed by this ledger; `handoff`: an uncertain record adopted with another sidecar's handoff. */
  readonly source: 'ledger' | 'handoff';
  /** The ledger that sealed the record (another sidecar's, for a handoff). */
  readonly ledgerId: string;
  readonly dimension: string;
  readonly hourStartMs: number;
  /** The record's Timestamp; unknown for a handed-off record. */
  readonly timestampMs: number | undefined;
  readonly quantity: number;
  /** The usage per tag set, as the MeterUsage request allocates it; empty for a handed-off record. */
  readonly allocations: readonly {
    readonly tags: Readonly<Record<string, string>>;
    readonly quantity: number;
  }[];
  readonly state: ExportState;
  /** Sent with DryRun (METERING_DRY_RUN): AWS checked it and billed nothing. */
  readonly dryRun: boolean;
  readonly maybeDelivered: boolean;
  readonly carriedToHourMs: number | undefined;
  readonly handoffId: string | undefined;
  /** The last AWS error (or the reason it was carried or left uncertain). */
  readonly error: string | undefined;
  readonly meteringRecordId: string | undefined;
  readonly clientToken: string;
  readonly attempts: number | undefined;
  readonly sealedAtMs: number | undefined;
  readonly settledAtMs: number | undefined;
  /** The task or pod that sealed it, where the platform told (schema 5 on); undefined before. */
  readonly sealedBy: PlatformIdentity | undefined;
}

/** A report cancelled before its hour was sealed (`DELETE /v1/usage/{id}`). */
export interface ExportedCancellation {
  readonly id: string;
  readonly dimension: string;
  /** The hour the report had been counted in. */
  readonly hourStartMs: number;
  readonly tags: Readonly<Record<string, string>>;
  /** As reported: in the dimension's fine unit when `divisor` > 1. */
  readonly quantity: number;
  readonly divisor: number;
  readonly reportedAtMs: number;
  readonly cancelledAtMs: number;
}

/** Fine-unit usage of one tag set below one billed unit, carried on and not billed (yet, or ever). */
export interface ExportedRemainder {
  readonly dimension: string;
  readonly tags: Readonly<Record<string, string>>;
  readonly divisor: number;
  /** Fine units, fewer than `divisor`. */
  readonly quantity: number;
  /** When it last changed. */
  readonly atMs: number;
}

/** Which records to export: those whose hour starts at or after `sinceMs` and before `untilMs`. */
export interface ExportRange {
  readonly sinceMs?: number;
  readonly untilMs?: number;
}

/** A ledger opened for export. */
export class LedgerExport {
  readonly #db: Database.Database;
  readonly #ledgerId: string;
  readonly #hasSealedBy: boolean;
  /** Schema 6 on: cancellations and unit remainders are kept. */
  readonly #hasCorrections: boolean;
  /** The directory of the copy read instead of a stopped ledger, removed at {@link close}. */
  readonly #copy: string | undefined;

  private constructor(
    db: Database.Database,
    ledgerId: string,
    hasSealedBy: boolean,
    hasCorrections: boolean,
    copy: string | undefined,
  ) {
    this.#db = db;
    this.#ledgerId = ledgerId;
    this.#hasSealedBy = hasSealedBy;
    this.#hasCorrections = hasCorrections;
    this.#copy = copy;
  }

  /**
   * Opens the ledger in `stateDir` read-only.
   * @throws StorageUnavailableError when there is no ledger there or it cannot be read.
   * @throws LedgerCorruptError when the file is not a ledger this version can read.
   */
  static open(stateDir: string): LedgerExport {
    const path = join(stateDir, LEDGER_FILE);
    if (!existsSync(path)) {
      throw new StorageUnavailableError(
        `there is no ledger at ${path}: set METERING_STATE_DIR (or --state-dir) to the sidecar's state directory`,
      );
    }
    let db: Database.Database;
    let copy: string | undefined;
    try {
      // A ledger with no write-ahead log has no sidecar writing it (a running one keeps its log open), and the
      // file alone is the whole ledger: a copy of it is read, as SQLite's read-only connection would otherwise
      // create a log and its index beside the file, and cannot on a volume mounted read-only. A running
      // sidecar's ledger is read in place, beside the writer.
      if (existsSync(`${path}-wal`)) db = new Database(path, { readonly: true, fileMustExist: true });
      else {
        copy = mkdtempSync(join(tmpdir(), 'metering-export-'));
        copyFileSync(path, join(copy, LEDGER_FILE));
        db = new Database(join(copy, LEDGER_FILE), { readonly: true, fileMustExist: true });
      }
      db.pragma('busy_timeout = 5000');
    } catch (err) {
      if (copy !== undefined) rmSync(copy, { recursive: true, force: true });
      throw new StorageUnavailableError(`cannot open the ledger at ${path} (${describeError(err)})`, {
        cause: err,
      });
    }
    try {
      const version = db.pragma('user_version', { simple: true }) as number;
      if (version > SCHEMA_VERSION || version < 3) {
        throw new LedgerCorruptError(
          version > SCHEMA_VERSION
            ? `the ledger at ${path} has schema ${version}, newer than this version reads (${SCHEMA_VERSION}): export it with the newer version`
            : `the ledger at ${path} has schema ${version}: run the sidecar of this version on it once, then export`,
        );
      }
      const id = db.prepare("SELECT value FROM meta WHERE key = 'ledger_id'").pluck().get() as
        string | undefined;
      if (id === undefined) throw new LedgerCorruptError(`the ledger at ${path} has no ledger id`);
      const columns = db.pragma('table_info(records)') as { name: string }[];
      return new LedgerExport(
        db,
        id,
        columns.some((c) => c.name === 'sealed_by'),
        version >= 6,
        copy,
      );
    } catch (err) {
      db.close();
      if (copy !== undefined) rmSync(copy, { recursive: true, force: true });
      if (err instanceof LedgerCorruptError) throw err;
      throw new LedgerCorruptError(`cannot read the ledger at ${path} (${describeError(err)})`, {
        cause: err,
      });
    }
  }

  /** The ledger's id (part of every ClientToken it made). */
  get ledgerId(): string {
    return this.#ledgerId;
  }

  /**
   * Calls `visit` with each record in `range` as it is read: this ledger's own, oldest hour first, then the
   * uncertain records adopted with handoffs. One read transaction, so the export is one consistent state of the
   * ledger, and one row in memory at a time, however large the ledger.
   */
  each(range: ExportRange, visit: (record: ExportedRecord) => void): void {
    const since = range.sinceMs ?? Number.MIN_SAFE_INTEGER;
    const until = range.untilMs ?? Number.MAX_SAFE_INTEGER;
    const sealedBy = this.#hasSealedBy ? '' : ', NULL AS sealed_by';
    const own = this.#db.prepare(
      `SELECT *${sealedBy} FROM records WHERE hour_ms >= ? AND hour_ms < ? ORDER BY hour_ms, dimension, id`,
    );
    const adopted = this.#db.prepare(
      `SELECT handoff_id, origin_ledger_id, dimension, hour_ms, quantity, client_token, error
         FROM uncertain_records WHERE hour_ms >= ? AND hour_ms < ? ORDER BY hour_ms, dimension, client_token`,
    );
    this.#db
      .transaction(() => {
        for (const row of own.iterate(since, until) as IterableIterator<RecordRow>) visit(this.#fromRow(row));
        for (const row of adopted.iterate(since, until) as IterableIterator<UncertainRow>)
          visit(fromUncertain(row));
      })
      .deferred();
  }

  /** The reports cancelled whose hour is in `range`, oldest hour first (none before schema 6). */
  cancellations(range: ExportRange = {}): ExportedCancellation[] {
    if (!this.#hasCorrections) return [];
    const rows = this.#db
      .prepare(
        'SELECT * FROM cancellations WHERE hour_ms >= ? AND hour_ms < ? ORDER BY hour_ms, dimension, cancelled_at_ms, id',
      )
      .all(
        range.sinceMs ?? Number.MIN_SAFE_INTEGER,
        range.untilMs ?? Number.MAX_SAFE_INTEGER,
      ) as CancellationRow[];
    return rows.map((r) => {
      const { tagsKey, ...c } = toCancellation(r);
      return { ...c, tags: JSON.parse(tagsKey) as Record<string, string> };
    });
  }

  /** The unit remainders the ledger carries, by dimension and tag set (none before schema 6). */
  remainders(): ExportedRemainder[] {
    if (!this.#hasCorrections) return [];
    const rows = this.#db
      .prepare('SELECT * FROM unit_remainders ORDER BY dimension, divisor, tags')
      .all() as { dimension: string; tags: string; divisor: number; quantity: number; at_ms: number }[];
    return rows.map((r) => ({
      dimension: r.dimension,
      tags: JSON.parse(r.tags) as Record<string, string>,
      divisor: r.divisor,
      quantity: r.quantity,
      atMs: r.at_ms,
    }));
  }

  /** The records {@link each} visits, as an array (for a small range, and for tests). */
  records(range: ExportRange = {}): ExportedRecord[] {
    const out: ExportedRecord[] = [];
    this.each(range, (record) => out.push(record));
    return out;
  }

  close(): void {
    this.#db.close();
    if (this.#copy !== undefined) rmSync(this.#copy, { recursive: true, force: true });
  }

  #fromRow(row: RecordRow): ExportedRecord {
    const request = JSON.parse(row.request) as MeterUsageRequest;
    const maybeDelivered = row.maybe_delivered !== 0 || row.in_flight !== 0;
    return {
      source: 'ledger',
      ledgerId: this.#ledgerId,
      dimension: row.dimension,
      hourStartMs: row.hour_ms,
      timestampMs: row.timestamp_ms,
      quantity: row.quantity,
      allocations: allocationsOf(request).map((a) => ({
        tags: JSON.parse(a.tagsKey) as Record<string, string>,
        quantity: a.quantity,
      })),
      state: row.status === 'failed' && maybeDelivered ? 'uncertain' : row.status,
      dryRun: request.DryRun === true,
      maybeDelivered,
      carriedToHourMs: row.carried_to_hour_ms ?? undefined,
      handoffId: row.handoff_id ?? undefined,
      error: row.last_error ?? undefined,
      meteringRecordId: row.metering_record_id ?? undefined,
      clientToken: row.client_token,
      attempts: row.attempts,
      sealedAtMs: row.sealed_at_ms,
      settledAtMs: row.settled_at_ms ?? undefined,
      sealedBy: row.sealed_by === null ? undefined : (JSON.parse(row.sealed_by) as PlatformIdentity),
    };
  }
}

function fromUncertain(row: UncertainRow): ExportedRecord {
  return {
    source: 'handoff',
    ledgerId: row.origin_ledger_id,
    dimension: row.dimension,
    hourStartMs: row.hour_ms,
    timestampMs: undefined,
    quantity: row.quantity,
    allocations: [],
    state: 'uncertain',
    dryRun: false,
    maybeDelivered: true,
    carriedToHourMs: undefined,
    handoffId: row.handoff_id,
    error: row.error ?? undefined,
    meteringRecordId: undefined,
    clientToken: row.client_token,
    attempts: undefined,
    sealedAtMs: undefined,
    settledAtMs: undefined,
    sealedBy: undefined,
  };
}
