/**
 * Unit scaling and corrections before sealing, on the real SQLite ledger in a temporary directory: fine-unit
 * usage billed in whole units per hour with the remainder carried per tag set, and `cancel()` of a keyed report
 * while its hour is open.
 */
import Database from 'better-sqlite3';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { HOUR_MS } from '../../src/clock.js';
import { LEDGER_FILE } from '../../src/ledger/database.js';
import { canonicalTags } from '../../src/ledger/hours.js';
import type { CancelResult, LedgerOptions, StoredRecord, UsageReport } from '../../src/ledger/ledger.js';
import { SqliteLedger } from '../../src/ledger/sqliteLedger.js';
import { usageBatch } from '../../src/ledger/usageBatch.js';
import { ManualClock } from '../helpers/manualClock.js';
import { TempDirs } from '../helpers/tmp.js';

const H10 = Date.parse('2026-03-01T10:00:00Z');
const H11 = H10 + HOUR_MS;
const H12 = H11 + HOUR_MS;
const GB = 1_000_000_000;

const dirs = new TempDirs();
const open: SqliteLedger[] = [];
afterEach(() => {
  for (const ledger of open.splice(0)) ledger.close();
  dirs.cleanup();
});

function openLedger(dir: string, clock: ManualClock, options: Partial<LedgerOptions> = {}): SqliteLedger {
  const ledger = SqliteLedger.open({ stateDir: dir, productCode: 'prod', dryRun: false, clock, ...options });
  open.push(ledger);
  return ledger;
}

function report(
  dimension: string,
  quantity: number,
  options: { id?: string; tags?: Record<string, string> } = {},
): UsageReport {
  return { dimension, quantity, tagsKey: canonicalTags(options.tags), id: options.id };
}

function record(ledger: SqliteLedger, ...reports: UsageReport[]) {
  return ledger.record(usageBatch(reports));
}

/** Each record's quantity and allocations, by dimension and hour. */
function billed(records: readonly StoredRecord[]): Record<string, unknown> {
  return Object.fromEntries(
    records.map((r) => [
      `${r.dimension} ${new Date(r.hourStartMs).toISOString().slice(11, 16)}`,
      r.request.UsageAllocations === undefined
        ? r.quantity
        : r.request.UsageAllocations.map((a) => [
            a.Tags?.map((t) => `${t.Key}=${t.Value}`).join(',') ?? '',
            a.AllocatedUsageQuantity,
          ]),
    ]),
  );
}

function cancelled(result: CancelResult): boolean {
  return result.kind === 'cancelled';
}

describe('unit scaling', () => {
  const divisors = new Map([['storage_gb', GB]]);

  it('bills whole units per hour and carries the remainder of each tag set into the next hour', async () => {
    const dir = dirs.make();
    const clock = new ManualClock(H10 + 60_000);
    const ledger = openLedger(dir, clock, { unitDivisors: divisors });
    await record(
      ledger,
      report('storage_gb', 1.5 * GB),
      report('storage_gb', 0.4 * GB, { tags: { t: 'a' } }),
    );
    await record(ledger, report('requests', 3));
    // The remainder shows, per dimension and divisor, summed over its tag sets.
    expect(ledger.status(clock.now()).remainders).toEqual([
      { dimension: 'storage_gb', divisor: GB, quantity: 0.9 * GB, tagSets: 2 },
    ]);
    clock.set(H11 + 60_000);
    const first = ledger.seal(clock.now(), false);
    // 1.5 GB bills 1, 0.4 GB bills nothing yet: nothing is rounded up.
    expect(billed(first)).toEqual({ 'requests 10:00': 3, 'storage_gb 10:00': 1 });
    await record(
      ledger,
      report('storage_gb', 0.6 * GB),
      report('storage_gb', 0.7 * GB, { tags: { t: 'a' } }),
    );
    clock.set(H12 + 60_000);
    const second = ledger.seal(clock.now(), false);
    // 0.5 + 0.6 = 1.1 GB untagged, 0.4 + 0.7 = 1.1 GB tagged: one unit each, 0.1 GB each carried on.
    expect(billed(second)).toEqual({
      'storage_gb 11:00': [
        ['t=a', 1],
        ['', 1],
      ],
    });
    expect(ledger.status(clock.now()).remainders).toEqual([
      { dimension: 'storage_gb', divisor: GB, quantity: 0.2 * GB, tagSets: 2 },
    ]);
  });

  it('keeps the remainder across a restart on the same state directory', async () => {
    const dir = dirs.make();
    const clock = new ManualClock(H10 + 60_000);
    const ledger = openLedger(dir, clock, { unitDivisors: divisors });
    await record(ledger, report('storage_gb', 0.75 * GB));
    ledger.close();
    const again = openLedger(dir, clock, { unitDivisors: divisors });
    await record(again, report('storage_gb', 0.5 * GB));
    clock.set(H11 + 60_000);
    expect(billed(again.seal(clock.now(), false))).toEqual({ 'storage_gb 10:00': 1 });
    expect(again.status(clock.now()).remainders[0].quantity).toBe(0.25 * GB);
  });

  it('uses no tag set for usage that has not completed a unit, and sends nothing for it', async () => {
    const dir = dirs.make();
    const clock = new ManualClock(H10 + 60_000);
    const ledger = openLedger(dir, clock, { unitDivisors: divisors });
    await record(ledger, report('storage_gb', GB - 1, { tags: { t: 'a' } }));
    expect(ledger.status(clock.now()).open).toEqual([]);
    clock.set(H11 + 60_000);
    expect(ledger.seal(clock.now(), true)).toEqual([]);
  });

  it('keeps each divisor’s remainder apart, so a changed divisor never reinterprets fine units', async () => {
    const dir = dirs.make();
    const clock = new ManualClock(H10 + 60_000);
    const ledger = openLedger(dir, clock, { unitDivisors: new Map([['storage_gb', 1_000]]) });
    await record(ledger, report('storage_gb', 999));
    ledger.close();
    const again = openLedger(dir, clock, { unitDivisors: new Map([['storage_gb', 10]]) });
    await record(again, report('storage_gb', 5));
    clock.set(H11 + 60_000);
    expect(again.seal(clock.now(), true)).toEqual([]);
    expect(again.status(clock.now()).remainders).toEqual([
      { dimension: 'storage_gb', divisor: 10, quantity: 5, tagSets: 1 },
      { dimension: 'storage_gb', divisor: 1_000, quantity: 999, tagSets: 1 },
    ]);
  });

  it('refuses a batch whose fine-unit usage of one tag set would not stay exact, storing nothing', async () => {
    const dir = dirs.make();
    const clock = new ManualClock(H10 + 60_000);
    const ledger = openLedger(dir, clock, { unitDivisors: divisors });
    const result = await record(
      ledger,
      report('storage_gb', Number.MAX_SAFE_INTEGER),
      report('storage_gb', Number.MAX_SAFE_INTEGER),
    );
    expect(result).toMatchObject({ kind: 'rejection', code: 'InvalidQuantity' });
    expect(ledger.status(clock.now()).remainders).toEqual([]);
    expect(ledger.status(clock.now()).open).toEqual([]);
  });

  it('gives up a remainder untouched for the retention period, and says so', async () => {
    const dir = dirs.make();
    const clock = new ManualClock(H10 + 60_000);
    const givenUp: unknown[] = [];
    const ledger = openLedger(dir, clock, {
      unitDivisors: divisors,
      retentionMs: 24 * HOUR_MS,
      onRemaindersPruned: (r) => givenUp.push(...r),
    });
    await record(ledger, report('storage_gb', 0.3 * GB));
    clock.set(H10 + 23 * HOUR_MS);
    ledger.prune(clock.now());
    expect(givenUp).toEqual([]);
    clock.set(H10 + 25 * HOUR_MS);
    ledger.prune(clock.now());
    expect(givenUp).toEqual([{ dimension: 'storage_gb', divisor: GB, quantity: 0.3 * GB }]);
    expect(ledger.status(clock.now()).remainders).toEqual([]);
  });
});

describe('cancel', () => {
  it('takes a keyed report back out of its open hour, durably, and the resend stays a duplicate', async () => {
    const dir = dirs.make();
    const clock = new ManualClock(H10 + 60_000);
    const ledger = openLedger(dir, clock);
    await record(ledger, report('requests', 5, { id: 'evt-1', tags: { t: 'a' } }), report('requests', 3));
    clock.set(H10 + 120_000);
    const result = await ledger.cancel('evt-1');
    expect(result).toEqual({
      kind: 'cancelled',
      repeat: false,
      cancellation: {
        id: 'evt-1',
        dimension: 'requests',
        hourStartMs: H10,
        tagsKey: '{"t":"a"}',
        quantity: 5,
        divisor: 1,
        reportedAtMs: H10 + 60_000,
        cancelledAtMs: H10 + 120_000,
      },
    });
    // The emptied tag set is gone from the hour, not left as an allocation of 0.
    expect(ledger.status(clock.now()).open).toEqual([
      { dimension: 'requests', hourStartMs: H10, quantity: 3, tagSets: 1 },
    ]);
    expect(await record(ledger, report('requests', 5, { id: 'evt-1', tags: { t: 'a' } }))).toMatchObject({
      accepted: 0,
      duplicates: 1,
    });
    // A repeat answers the first cancellation and changes nothing.
    expect(await ledger.cancel('evt-1')).toMatchObject({ kind: 'cancelled', repeat: true });
    ledger.close();
    const again = openLedger(dir, clock);
    expect(await again.cancel('evt-1')).toMatchObject({ kind: 'cancelled', repeat: true });
    clock.set(H11 + 60_000);
    expect(billed(again.seal(clock.now(), false))).toEqual({ 'requests 10:00': 3 });
    expect(again.status(clock.now()).cancellations).toEqual([
      { dimension: 'requests', hourStartMs: H10, count: 1, quantity: 5 },
    ]);
  });

  it('refuses an unknown id and a sealed hour, changing nothing', async () => {
    const dir = dirs.make();
    const clock = new ManualClock(H10 + 60_000);
    const ledger = openLedger(dir, clock);
    await record(ledger, report('requests', 5, { id: 'evt-1' }));
    expect(await ledger.cancel('evt-2')).toMatchObject({ kind: 'refused', code: 'UnknownUsageId' });
    clock.set(H11 + 60_000);
    ledger.seal(clock.now(), false);
    const refused = await ledger.cancel('evt-1');
    expect(refused).toMatchObject({ kind: 'refused', code: 'HourSealed' });
    expect(refused.kind === 'refused' && refused.message).toContain('2026-03-01T10:00:00.000Z');
    expect(ledger.status(clock.now()).cancellations).toEqual([]);
  });

  it('cancels a report with everything in its hour gone, leaving the hour free for later usage', async () => {
    const dir = dirs.make();
    const clock = new ManualClock(H10 + 60_000);
    const ledger = openLedger(dir, clock);
    await record(ledger, report('requests', 5, { id: 'evt-1' }));
    expect(cancelled(await ledger.cancel('evt-1'))).toBe(true);
    clock.set(H10 + 120_000);
    expect(ledger.seal(clock.now(), true)).toEqual([]);
  });

  it('is ordered after a batch queued before it in the same group commit', async () => {
    const dir = dirs.make();
    const clock = new ManualClock(H10 + 60_000);
    const ledger = openLedger(dir, clock);
    const recording = record(ledger, report('requests', 5, { id: 'evt-1' }), report('requests', 1));
    const cancelling = ledger.cancel('evt-1');
    expect(await recording).toMatchObject({ kind: 'recorded', accepted: 2 });
    expect(cancelled(await cancelling)).toBe(true);
    expect(ledger.commits).toBe(1);
    expect(ledger.status(clock.now()).open[0].quantity).toBe(1);
  });

  it('never takes usage carried into the hour from elsewhere', async () => {
    const dir = dirs.make();
    const clock = new ManualClock(H10 + 60_000);
    const ledger = openLedger(dir, clock);
    await record(ledger, report('requests', 4, { id: 'evt-1' }));
    // The report's own usage was 4; the bucket also holds 10 carried in (a record near the end of its window).
    const db = new Database(join(dir, LEDGER_FILE));
    db.prepare(
      "UPDATE buckets SET quantity = quantity + 10, carried_quantity = 10 WHERE dimension = 'requests'",
    ).run();
    db.prepare("UPDATE idempotency_keys SET quantity = 6 WHERE id = 'evt-1'").run(); // more than its own 4
    db.close();
    expect(await ledger.cancel('evt-1')).toMatchObject({ kind: 'refused', code: 'NotCancellable' });
    expect(ledger.status(clock.now()).open[0].quantity).toBe(14);
  });

  it('refuses a key stored before the ledger kept what it counted', async () => {
    const dir = dirs.make();
    const clock = new ManualClock(H10 + 60_000);
    const ledger = openLedger(dir, clock);
    await record(ledger, report('requests', 4, { id: 'evt-1' }));
    const db = new Database(join(dir, LEDGER_FILE));
    db.prepare("UPDATE idempotency_keys SET usage_id = NULL, quantity = NULL WHERE id = 'evt-1'").run();
    db.close();
    const refused = await ledger.cancel('evt-1');
    expect(refused).toMatchObject({ kind: 'refused', code: 'NotCancellable' });
    expect(ledger.status(clock.now()).open[0].quantity).toBe(4);
  });

  it('keeps what each key of a batch counted, each in the hour it went to', async () => {
    const dir = dirs.make();
    const clock = new ManualClock(H10 + 60_000);
    const ledger = openLedger(dir, clock);
    await record(ledger, report('requests', 1));
    clock.set(H10 + 30 * 60_000);
    ledger.seal(clock.now(), true); // the shutdown seal of a previous run: 10:00 is locked for requests
    await record(
      ledger,
      report('requests', 2, { id: 'a', tags: { t: 'x' } }),
      report('nodes', 3, { id: 'b' }),
      report('requests', 4, { id: 'c' }),
      report('requests', 9, { id: 'a' }), // a duplicate in the batch: counted once, as first sent
    );
    const c = await ledger.cancel('c');
    expect(c).toMatchObject({ kind: 'cancelled', cancellation: { dimension: 'requests', hourStartMs: H11 } });
    const a = await ledger.cancel('a');
    expect(a).toMatchObject({ cancellation: { quantity: 2, tagsKey: '{"t":"x"}', hourStartMs: H11 } });
    const b = await ledger.cancel('b');
    expect(b).toMatchObject({ cancellation: { dimension: 'nodes', quantity: 3, hourStartMs: H10 } });
    expect(ledger.status(clock.now()).open).toEqual([]);
  });

  it('forgets where keys’ usage went together with the keys, by age and by the bound', async () => {
    const dir = dirs.make();
    const clock = new ManualClock(H10 + 60_000);
    const ledger = openLedger(dir, clock, { idempotencyKeysMax: 10 });
    const keyed = (prefix: string, n: number) =>
      Array.from({ length: n }, (_, i) => report('requests', 1, { id: `${prefix}-${i}` }));
    const usageRows = (): number => {
      const db = new Database(join(dir, LEDGER_FILE), { readonly: true });
      try {
        return db.prepare('SELECT count(*) FROM key_usage').pluck().get() as number;
      } finally {
        db.close();
      }
    };
    await record(ledger, ...keyed('a', 15));
    clock.set(H11 + 60_000);
    await record(ledger, ...keyed('b', 15));
    // Over the bound: the oldest keys go, and with them the hour they alone pointed to.
    expect(ledger.keyStats().count).toBe(10);
    expect(usageRows()).toBe(1);
    expect(await ledger.cancel('a-0')).toMatchObject({ kind: 'refused', code: 'UnknownUsageId' });
    expect(cancelled(await ledger.cancel('b-14'))).toBe(true);
    clock.set(H11 + 26 * HOUR_MS);
    ledger.prune(clock.now());
    expect(ledger.keyStats().count).toBe(0);
    expect(usageRows()).toBe(0);
  });

  // Regression: the cancellation went with retention while its key was still kept (after downtime), and a repeat
  // of the DELETE then took another report's usage.
  it('keeps a cancellation as long as its key, so a repeat never cancels twice', async () => {
    const dir = dirs.make();
    const clock = new ManualClock(H10 + 60_000);
    const divisors = new Map([['storage_gb', 10]]);
    const options = { unitDivisors: divisors, retentionMs: 24 * HOUR_MS };
    const ledger = openLedger(dir, clock, options);
    await record(ledger, report('storage_gb', 7, { id: 'a' }));
    expect(cancelled(await ledger.cancel('a'))).toBe(true);
    ledger.close();
    clock.set(H10 + 48 * HOUR_MS); // two days stopped: the key has not aged (its 24 hours are of running time)
    const again = openLedger(dir, clock, options);
    await record(again, report('storage_gb', 14, { id: 'b' }));
    again.prune(clock.now());
    const repeat = await again.cancel('a');
    expect(repeat).toMatchObject({ kind: 'cancelled', repeat: true });
    expect(again.status(clock.now()).open[0].quantity).toBe(1); // b's unit stays
    expect(again.status(clock.now()).remainders[0].quantity).toBe(4);
  });

  // Regression: retention read the wall clock, so a clock set a retention period ahead gave up every remainder.
  it('gives up no remainder when the wall clock jumps ahead, only as running time passes', async () => {
    const dir = dirs.make();
    const clock = new ManualClock(H10 + 60_000);
    const givenUp: unknown[] = [];
    const options = {
      unitDivisors: new Map([['storage_gb', 10]]),
      retentionMs: 24 * HOUR_MS,
      onRemaindersPruned: (r: readonly unknown[]) => givenUp.push(...r),
    };
    const ledger = openLedger(dir, clock, options);
    await record(ledger, report('storage_gb', 9));
    clock.jump(H10 + 30 * HOUR_MS); // the wall clock alone: no running time passes
    ledger.prune(clock.now());
    expect(givenUp).toEqual([]);
    ledger.close();
    const again = openLedger(dir, clock, options); // a restart does not make the jump count either
    again.prune(clock.now());
    expect(givenUp).toEqual([]);
    expect(again.status(clock.now()).remainders[0].quantity).toBe(9);
  });

  describe('of a scaled dimension', () => {
    const divisors = new Map([['storage_gb', 1_000]]);

    it('takes back the units the report completed, and keeps the rest as the remainder', async () => {
      const dir = dirs.make();
      const clock = new ManualClock(H10 + 60_000);
      const ledger = openLedger(dir, clock, { unitDivisors: divisors });
      await record(
        ledger,
        report('storage_gb', 1_200, { id: 'a' }),
        report('storage_gb', 1_500, { id: 'b' }),
      );
      expect(ledger.status(clock.now()).open[0].quantity).toBe(2); // 2,700: two units, 700 carried
      expect(cancelled(await ledger.cancel('b'))).toBe(true);
      expect(ledger.status(clock.now()).open[0].quantity).toBe(1);
      expect(ledger.status(clock.now()).remainders[0].quantity).toBe(200);
    });

    it('takes units from a later open hour when the report completed none in its own', async () => {
      const dir = dirs.make();
      const clock = new ManualClock(H10 + 60_000);
      const ledger = openLedger(dir, clock, { unitDivisors: divisors });
      await record(ledger, report('storage_gb', 700, { id: 'a' }));
      clock.set(H11 + 60_000); // 10:00 closed, not yet sealed
      await record(ledger, report('storage_gb', 500));
      expect(ledger.status(clock.now()).open).toEqual([
        { dimension: 'storage_gb', hourStartMs: H11, quantity: 1, tagSets: 1 },
      ]);
      expect(cancelled(await ledger.cancel('a'))).toBe(true);
      // 500 stays: no unit.
      expect(ledger.status(clock.now()).open).toEqual([]);
      expect(ledger.status(clock.now()).remainders[0].quantity).toBe(500);
      expect(ledger.seal(clock.now(), true)).toEqual([]);
    });

    it('refuses once the dimension’s divisor changed since the report', async () => {
      const dir = dirs.make();
      const clock = new ManualClock(H10 + 60_000);
      const ledger = openLedger(dir, clock, { unitDivisors: divisors });
      await record(ledger, report('storage_gb', 2_000, { id: 'a' }));
      ledger.close();
      const again = openLedger(dir, clock, { unitDivisors: new Map([['storage_gb', 10]]) });
      expect(await again.cancel('a')).toMatchObject({ kind: 'refused', code: 'NotCancellable' });
      expect(again.status(clock.now()).open[0].quantity).toBe(2);
    });
  });
});
