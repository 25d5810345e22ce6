/**
 * The ledger's side of a handoff (docs/design.md, "Handoff"): what a stopping sidecar takes out of its ledger
 * and what an adopter puts into its own, each in one transaction, idempotent by handoff id.
 *
 * - A writer takes a {@link HandoffStore.snapshot} of everything it still holds (pending records, unsealed
 *   buckets), publishes it as a file, then {@link HandoffStore.complete}s it: the records become `carried`
 *   with the handoff's id, the buckets are deleted, and the id is remembered, all in one transaction. The file
 *   is published first, so a crash in between leaves the usage in the file and in a ledger that either dies
 *   with its volume or, restarted, completes the same handoff before it sends anything.
 * - An adopter {@link HandoffStore.adopt}s a claimed handoff: its billable usage is carried into the adopter's
 *   open hour (within AWS's tag limits, like any carry), its uncertain records are kept for status and alerts
 *   only, and the id is remembered, all in one transaction; a second adoption of the same id changes nothing.
 */
import type Database from 'better-sqlite3';
import type { Buckets } from './buckets.js';
import { allocationsOf, type MeterUsageRequest } from './hours.js';

/** Billable usage of one origin (dimension, hour), per tag set (canonical tags text, `{}` untagged). */
export interface HandoffUsageEntry {
  readonly dimension: string;
  readonly hourMs: number;
  readonly allocations: readonly { readonly tagsKey: string; readonly quantity: number }[];
}

/** A record that may already have been billed under its writer's identity. */
export interface UncertainEntry {
  readonly dimension: string;
  readonly hourMs: number;
  readonly quantity: number;
  readonly clientToken: string;
  readonly error: string | null;
}

/** What a ledger still holds, as a handoff takes it over. */
export interface HandoffSnapshot {
  readonly usage: readonly HandoffUsageEntry[];
  readonly uncertain: readonly UncertainEntry[];
  readonly recordIds: readonly number[];
  readonly bucketHours: readonly { readonly dimension: string; readonly hourMs: number }[];
}

/** A handoff as the ledger records it: a snapshot with its id and origin. */
export interface HandoffEntry extends HandoffSnapshot {
  readonly id: string;
  readonly originLedgerId: string;
  readonly originHost: string;
  readonly writtenAtMs: number;
}

/** Handoffs in the ledger, for status and metrics. */
export interface HandoffSummary {
  readonly written: number;
  readonly adopted: number;
  /** Uncertain records that arrived with adopted handoffs: shown and alerted on, never billed. */
  readonly uncertain: readonly (UncertainEntry & {
    readonly handoffId: string;
    readonly originLedgerId: string;
  })[];
}

/** The handoff tables and transitions of one ledger connection. */
export class HandoffStore {
  readonly #buckets: Buckets;
  readonly #timeNow: (clockMs: number) => number;
  readonly #sql;
  readonly #complete: (entry: HandoffEntry, nowMs: number) => boolean;
  readonly #adopt: (entry: HandoffEntry, nowMs: number) => boolean;

  constructor(db: Database.Database, buckets: Buckets, timeNow: (clockMs: number) => number) {
    this.#buckets = buckets;
    this.#timeNow = timeNow;
    this.#sql = {
      pending: db.prepare(
        "SELECT id, dimension, hour_ms, quantity, client_token, request, maybe_delivered, in_flight, last_error FROM records WHERE status = 'pending' ORDER BY id",
      ),
      bucketHours: db.prepare(
        'SELECT dimension, hour_ms, tags, quantity FROM buckets ORDER BY dimension, hour_ms, tags',
      ),
      known: db.prepare('SELECT direction FROM handoffs WHERE id = ?').pluck(),
      insert: db.prepare(
        'INSERT INTO handoffs (id, direction, origin_ledger_id, origin_host, written_at_ms, at_ms, quantity, uncertain) VALUES (?, ?, ?, ?, ?, ?, ?, ?)',
      ),
      handOff: db.prepare(
        "UPDATE records SET status = 'carried', in_flight = 0, handoff_id = ?, last_error = 'handed off', settled_at_ms = ? WHERE id = ? AND status = 'pending'",
      ),
      deleteBuckets: db.prepare('DELETE FROM buckets WHERE dimension = ? AND hour_ms = ?'),
      insertUncertain: db.prepare(
        'INSERT OR IGNORE INTO uncertain_records (handoff_id, origin_ledger_id, dimension, hour_ms, quantity, client_token, error) VALUES (?, ?, ?, ?, ?, ?, ?)',
      ),
      ids: db.prepare('SELECT id, direction FROM handoffs'),
      counts: db.prepare('SELECT direction, count(*) AS n FROM handoffs GROUP BY direction'),
      uncertain: db.prepare(
        'SELECT handoff_id, origin_ledger_id, dimension, hour_ms, quantity, client_token, error FROM uncertain_records ORDER BY hour_ms, dimension',
      ),
    };
    this.#complete = db.transaction((entry: HandoffEntry, nowMs: number) => {
      if (this.#sql.known.get(entry.id) !== undefined) return false;
      for (const id of entry.recordIds) this.#sql.handOff.run(entry.id, nowMs, id);
      for (const { dimension, hourMs } of entry.bucketHours) this.#sql.deleteBuckets.run(dimension, hourMs);
      this.#sql.insert.run(...row(entry, 'written', nowMs));
      return true;
    });
    this.#adopt = db.transaction((entry: HandoffEntry, nowMs: number) => {
      if (this.#sql.known.get(entry.id) !== undefined) return false;
      for (const usage of entry.usage) this.#buckets.placeCarried(usage.dimension, nowMs, usage.allocations);
      for (const u of entry.uncertain) {
        this.#sql.insertUncertain.run(
          entry.id,
          entry.originLedgerId,
          u.dimension,
          u.hourMs,
          u.quantity,
          u.clientToken,
          u.error,
        );
      }
      this.#sql.insert.run(...row(entry, 'adopted', nowMs));
      return true;
    });
  }

  /**
   * Everything the ledger still holds: each pending record that has certainly not reached AWS as billable
   * usage of its (dimension, hour), each one that may have as uncertain, and every unsealed bucket.
   */
  snapshot(): HandoffSnapshot {
    const usage: HandoffUsageEntry[] = [];
    const uncertain: UncertainEntry[] = [];
    const recordIds: number[] = [];
    for (const r of this.#sql.pending.all() as PendingRow[]) {
      recordIds.push(r.id);
      // A zero record (METERING_ZERO_USAGE) bills nothing: it is taken out with the rest, and hands nothing on.
      if (r.quantity === 0) continue;
      if (r.maybe_delivered === 1 || r.in_flight === 1) {
        uncertain.push({
          dimension: r.dimension,
          hourMs: r.hour_ms,
          quantity: r.quantity,
          clientToken: r.client_token,
          error: r.last_error,
        });
      } else {
        const request = JSON.parse(r.request) as MeterUsageRequest;
        usage.push({ dimension: r.dimension, hourMs: r.hour_ms, allocations: allocationsOf(request) });
      }
    }
    const byHour = new Map<
      string,
      { dimension: string; hourMs: number; allocations: { tagsKey: string; quantity: number }[] }
    >();
    for (const b of this.#sql.bucketHours.all() as {
      dimension: string;
      hour_ms: number;
      tags: string;
      quantity: number;
    }[]) {
      const key = JSON.stringify([b.dimension, b.hour_ms]);
      let entry = byHour.get(key);
      if (entry === undefined) {
        entry = { dimension: b.dimension, hourMs: b.hour_ms, allocations: [] };
        byHour.set(key, entry);
      }
      if (b.quantity > 0) entry.allocations.push({ tagsKey: b.tags, quantity: b.quantity });
    }
    const bucketHours = [...byHour.values()].map(({ dimension, hourMs }) => ({ dimension, hourMs }));
    for (const entry of byHour.values()) if (entry.allocations.length > 0) usage.push(entry);
    return { usage, uncertain, recordIds, bucketHours };
  }

  /** The writer's transaction: takes the handoff's records and buckets out. `false`: already done. */
  complete(entry: HandoffEntry, clockMs: number): boolean {
    return this.#complete(entry, this.#timeNow(clockMs));
  }

  /** The adopter's transaction: carries the handoff's usage into the open hour. `false`: already adopted. */
  adopt(entry: HandoffEntry, clockMs: number): boolean {
    return this.#adopt(entry, this.#timeNow(clockMs));
  }

  /** Ids of the handoffs this ledger wrote and adopted. */
  ids(): { written: Set<string>; adopted: Set<string> } {
    const written = new Set<string>();
    const adopted = new Set<string>();
    for (const r of this.#sql.ids.all() as { id: string; direction: string }[]) {
      (r.direction === 'written' ? written : adopted).add(r.id);
    }
    return { written, adopted };
  }

  summary(): HandoffSummary {
    const counts = { written: 0, adopted: 0 };
    for (const r of this.#sql.counts.all() as { direction: 'written' | 'adopted'; n: number }[])
      counts[r.direction] = r.n;
    const uncertain = (this.#sql.uncertain.all() as UncertainRow[]).map((r) => ({
      handoffId: r.handoff_id,
      originLedgerId: r.origin_ledger_id,
      dimension: r.dimension,
      hourMs: r.hour_ms,
      quantity: r.quantity,
      clientToken: r.client_token,
      error: r.error,
    }));
    return { ...counts, uncertain };
  }
}

interface PendingRow {
  id: number;
  dimension: string;
  hour_ms: number;
  quantity: number;
  client_token: string;
  request: string;
  maybe_delivered: number;
  in_flight: number;
  last_error: string | null;
}

/** A row of `uncertain_records`. */
export interface UncertainRow {
  handoff_id: string;
  origin_ledger_id: string;
  dimension: string;
  hour_ms: number;
  quantity: number;
  client_token: string;
  error: string | null;
}

function row(entry: HandoffEntry, direction: 'written' | 'adopted', nowMs: number): unknown[] {
  const quantity = entry.usage.reduce((sum, u) => sum + u.allocations.reduce((s, a) => s + a.quantity, 0), 0);
  return [
    entry.id,
    direction,
    entry.originLedgerId,
    entry.originHost,
    entry.writtenAtMs,
    nowMs,
    quantity,
    entry.uncertain.length,
  ];
}
