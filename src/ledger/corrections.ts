/**
 * Corrections before sealing (`DELETE /v1/usage/{id}`, docs/api.md): a report with an idempotency key is taken
 * back out of its bucket while its hour is not sealed. Runs inside the ledger's group commit, in the
 * cancellation's own savepoint, so it is ordered with the batches around it and answered only once durable.
 *
 * Rules: a repeat answers the first cancellation and changes nothing; an unknown id, a sealed hour, or usage no
 * longer in the ledger is refused and changes nothing; a bucket never goes below the app's own usage in it (usage
 * carried in from other hours is never taken). The key stays known, so a resend of the cancelled report is a
 * duplicate, not counted again.
 */
import type { Buckets } from './buckets.js';
import type { KeyStore } from './keyStore.js';
import type { CancelResult, Cancellation } from './ledger.js';
import type { Statements } from './statements.js';
import { uncount, type HourUnits } from './units.js';

/** A row of `cancellations`. */
export interface CancellationRow {
  id: string;
  dimension: string;
  hour_ms: number;
  tags: string;
  quantity: number;
  divisor: number;
  reported_at_ms: number;
  cancelled_at_ms: number;
}

/** The row as the rest of the sidecar sees it. */
export function toCancellation(row: CancellationRow): Cancellation {
  return {
    id: row.id,
    dimension: row.dimension,
    hourStartMs: row.hour_ms,
    tagsKey: row.tags,
    quantity: row.quantity,
    divisor: row.divisor,
    reportedAtMs: row.reported_at_ms,
    cancelledAtMs: row.cancelled_at_ms,
  };
}

/** Thrown inside a cancellation's savepoint when the buckets do not hold what the plan takes: rolls it back. */
class BucketsChanged extends Error {}

/** The corrections of one ledger connection. */
export class Corrections {
  readonly #stmt: Statements;
  readonly #keys: KeyStore;
  readonly #buckets: Buckets;
  readonly #isSealed: (dimension: string, hourMs: number) => boolean;

  constructor(
    stmt: Statements,
    keys: KeyStore,
    buckets: Buckets,
    isSealed: (dimension: string, hourMs: number) => boolean,
  ) {
    this.#stmt = stmt;
    this.#keys = keys;
    this.#buckets = buckets;
    this.#isSealed = isSealed;
  }

  /** Cancels the report keyed `id` at `nowMs`, inside a savepoint of the ledger's. */
  cancel(id: string, nowMs: number): CancelResult {
    const stmt = this.#stmt;
    const done = stmt.cancellationOf.get(id) as CancellationRow | undefined;
    if (done !== undefined) return { kind: 'cancelled', repeat: true, cancellation: toCancellation(done) };
    const key = this.#keys.get(id);
    if (key === undefined) {
      return refused(
        'UnknownUsageId',
        `no report with id ${JSON.stringify(id)} is known: ids are kept 24 hours, and only reports sent with an "id" can be cancelled`,
      );
    }
    const usage = key.usage;
    if (usage === undefined) {
      return refused(
        'NotCancellable',
        `the report with id ${JSON.stringify(id)} was stored by an earlier version, which did not keep what each id counted`,
      );
    }
    const { dimension, hourMs, tagsKey, quantity, divisor } = usage;
    const hour = new Date(hourMs).toISOString();
    if (this.#isSealed(dimension, hourMs)) {
      return refused(
        'HourSealed',
        `the report with id ${JSON.stringify(id)} is in dimension ${JSON.stringify(dimension)}'s hour ${hour}, which is sealed into its record; a sealed record never changes`,
      );
    }
    const divisorNow = this.#buckets.divisorOf(dimension);
    if (divisorNow !== divisor) {
      return refused(
        'NotCancellable',
        `dimension ${JSON.stringify(dimension)}'s unit divisor changed from ${divisor} to ${divisorNow} since the report with id ${JSON.stringify(id)}; its usage can no longer be taken back exactly`,
      );
    }
    // Whole units: only the report's own bucket. Scaled: every unsealed hour of the tag set, and its remainder.
    let hours: HourUnits[];
    let remainder = 0;
    if (divisor === 1) {
      const units = stmt.appUnits.get(dimension, hourMs, tagsKey) as number | undefined;
      hours = [{ hourMs, units: units ?? 0 }];
    } else {
      hours = (stmt.tagSetUnits.all(dimension, tagsKey) as { hour_ms: number; units: number }[]).map((r) => ({
        hourMs: r.hour_ms,
        units: r.units,
      }));
      remainder = (stmt.remainderOf.get(dimension, tagsKey, divisor) as number | undefined) ?? 0;
    }
    const plan = uncount(hours, remainder, quantity, divisor, hourMs);
    if (plan === undefined) {
      return refused(
        'NotCancellable',
        `the usage of the report with id ${JSON.stringify(id)} is no longer in the ledger's open hours (it was handed off to another sidecar)`,
      );
    }
    for (const take of plan.take) {
      const changed = stmt.takeUnits.run(take.units, dimension, take.hourMs, tagsKey, take.units).changes;
      if (changed !== 1) throw new BucketsChanged(`bucket ${dimension} ${take.hourMs} ${tagsKey} changed`);
      stmt.deleteEmptyBucket.run(dimension, take.hourMs, tagsKey);
    }
    if (divisor !== 1) this.#buckets.setRemainder(dimension, tagsKey, divisor, plan.remainder, nowMs);
    const row = stmt.insertCancellation.get(
      id,
      dimension,
      hourMs,
      tagsKey,
      quantity,
      divisor,
      key.atMs,
      nowMs,
    ) as CancellationRow;
    return { kind: 'cancelled', repeat: false, cancellation: toCancellation(row) };
  }
}

function refused(code: Extract<CancelResult, { kind: 'refused' }>['code'], message: string): CancelResult {
  return { kind: 'refused', code, message };
}
