import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { HOUR_MS } from '../../src/clock.js';
import { LedgerCorruptError, StateLockedError, StorageUnavailableError } from '../../src/errors.js';
import type { Rejection } from '../../src/intake/usage.js';
import type { UsageReport } from '../../src/ledger/ledger.js';
import { MAX_QUANTITY, MAX_RECORD_AGE_MS } from '../../src/awsLimits.js';
import { CARRY_MARGIN_MS, canonicalTags } from '../../src/ledger/hours.js';
import { type LedgerOptions, type RecordResult } from '../../src/ledger/ledger.js';
import { MAX_EXACT_TOTAL } from '../../src/ledger/buckets.js';
import { InProcessLedger } from '../../src/ledger/inProcessLedger.js';
import { SqliteLedger } from '../../src/ledger/sqliteLedger.js';
import { LEDGER_FILE } from '../../src/ledger/database.js';
import { ManualClock } from '../helpers/manualClock.js';
import { TempDirs } from '../helpers/tmp.js';
import { Tmpfs } from '../helpers/tmpfs.js';
import { usageBatch } from '../../src/ledger/usageBatch.js';

const H10 = Date.parse('2026-03-01T10:00:00Z');
const H11 = H10 + HOUR_MS;
const H12 = H11 + HOUR_MS;

const dirs = new TempDirs();
const open: SqliteLedger[] = [];
const mounts: Tmpfs[] = [];

afterEach(() => {
  for (const ledger of open.splice(0)) ledger.close();
  for (const fs of mounts.splice(0)) fs.unmount();
  dirs.cleanup();
});

function openLedger(
  stateDir: string,
  clock: ManualClock,
  options: { dryRun?: boolean } & Pick<LedgerOptions, 'syncFile' | 'onBroken'> = {},
): SqliteLedger {
  const { dryRun, ...rest } = options;
  const ledger = SqliteLedger.open({
    stateDir,
    productCode: 'prod',
    dryRun: dryRun ?? false,
    clock,
    ...rest,
  });
  open.push(ledger);
  return ledger;
}

/** Syncs of the log that end only when the test says so. */
class HeldSyncs {
  started = 0;
  #pending: { resolve: () => void; reject: (err: Error) => void }[] = [];
  readonly syncFile = (): Promise<void> =>
    new Promise<void>((resolve, reject) => {
      this.started++;
      this.#pending.push({ resolve, reject });
    });
  finish(): void {
    for (const p of this.#pending.splice(0)) p.resolve();
  }
  fail(err: Error): void {
    for (const p of this.#pending.splice(0)) p.reject(err);
  }
}

async function until(condition: () => boolean): Promise<void> {
  for (let i = 0; i < 500 && !condition(); i++) await new Promise((resolve) => setTimeout(resolve, 2));
  expect(condition()).toBe(true);
}

function report(
  dimension: string,
  quantity: number,
  tags?: Record<string, string>,
  id?: string,
): UsageReport {
  return { dimension, quantity, tagsKey: canonicalTags(tags), id };
}

async function recorded(ledger: SqliteLedger, reports: UsageReport[]): Promise<RecordResult> {
  const result = await ledger.record(usageBatch(reports));
  if (result.kind !== 'recorded') throw new Error(`rejected: ${result.message}`);
  return result;
}

async function rejectedBy(ledger: SqliteLedger, reports: UsageReport[]): Promise<Rejection> {
  const result = await ledger.record(usageBatch(reports));
  if (result.kind !== 'rejection') throw new Error('expected a rejection');
  return result;
}

function setup(start = H10 + 5 * 60_000): { clock: ManualClock; ledger: SqliteLedger; dir: string } {
  const dir = dirs.make();
  const clock = new ManualClock(start);
  return { clock, ledger: openLedger(dir, clock), dir };
}

describe('SqliteLedger', () => {
  // Decision (docs/design.md, "Durability"): SQLite does not sync inside a commit (synchronous=NORMAL); the ledger
  // syncs the log after it, off the event loop, and answers nothing before. The tests below hold the sync back.
  it('opens in WAL mode and leaves the sync of each commit to the ledger', () => {
    const { dir, ledger } = setup();
    ledger.close();
    const db = new Database(join(dir, LEDGER_FILE));
    expect(db.pragma('journal_mode', { simple: true })).toBe('wal');
    db.close();
    // synchronous is a per-connection setting: read it from the ledger's own connection.
    const again = openLedger(dir, new ManualClock(H10));
    expect(again.durability()).toEqual({ journalMode: 'wal', synchronous: 'normal' });
  });

  it('answers a batch only after a sync of the log that began after its commit', async () => {
    const dir = dirs.make();
    const clock = new ManualClock(H10 + 60_000);
    const syncs = new HeldSyncs();
    const ledger = openLedger(dir, clock, { syncFile: syncs.syncFile });
    let answered = 0;
    const first = ledger.record(usageBatch([report('a', 1)])).then(() => answered++);
    await until(() => syncs.started === 1);
    // Committed (another connection would read it) but not answered while the sync runs.
    expect(ledger.status(clock.now()).open[0].quantity).toBe(1);
    const second = ledger.record(usageBatch([report('a', 2)])).then(() => answered++);
    const third = ledger.record(usageBatch([report('a', 4)])).then(() => answered++);
    await new Promise((resolve) => setTimeout(resolve, 20));
    // Batches that arrive during a sync wait for it, then share the next commit and sync.
    expect(answered).toBe(0);
    expect(syncs.started).toBe(1);
    syncs.finish();
    await first;
    expect(answered).toBe(1);
    // The two waiting batches commit together, and wait for their own sync.
    await until(() => syncs.started === 2);
    expect(answered).toBe(1);
    syncs.finish();
    await Promise.all([second, third]);
    expect(answered).toBe(3);
    expect(syncs.started).toBe(2);
  });

  // Regression: Linux reports a writeback error once per file, so a sync queued behind a failed one could
  // succeed and answer "durable" for commits whose earlier frames never reached the disk.
  it('answers no sync as durable once one has failed, not even one queued behind it', async () => {
    const dir = dirs.make();
    const clock = new ManualClock(H10 + 60_000);
    const syncs = new HeldSyncs();
    const ledger = openLedger(dir, clock, { syncFile: syncs.syncFile });
    const recording = ledger.record(usageBatch([report('a', 1)]));
    await until(() => syncs.started === 1);
    const queued = ledger.durable(); // a commit made while the first sync runs
    syncs.fail(Object.assign(new Error('EIO: i/o error, fdatasync'), { code: 'EIO' }));
    await expect(recording).rejects.toBeInstanceOf(StorageUnavailableError);
    await expect(queued).rejects.toBeInstanceOf(StorageUnavailableError);
    expect(syncs.started).toBe(1);
  });

  it('syncs the log on the way out, so nothing committed before closing waits for a sync', async () => {
    const dir = dirs.make();
    const clock = new ManualClock(H10 + 60_000);
    const syncs = new HeldSyncs();
    const ledger = openLedger(dir, clock, { syncFile: syncs.syncFile });
    const recording = ledger.record(usageBatch([report('a', 2)]));
    ledger.close(); // commits the queued batch and syncs it before the file closes
    syncs.finish();
    expect(await recording).toMatchObject({ kind: 'recorded', accepted: 1 });
    await expect(ledger.durable()).resolves.toBeUndefined();
    const again = openLedger(dir, clock);
    expect(again.status(clock.now()).open[0].quantity).toBe(2);
  });

  it('answers every write of the sending side only once it is on disk', async () => {
    const dir = dirs.make();
    const clock = new ManualClock(H10 + 60_000);
    const syncs = new HeldSyncs();
    const store = openLedger(dir, clock, { syncFile: syncs.syncFile });
    const ledger = new InProcessLedger(store);
    const recording = ledger.record(usageBatch([report('a', 3)]));
    await until(() => syncs.started === 1);
    syncs.finish();
    await recording;
    clock.set(H11 + 60_000);
    const sealing = ledger.seal(clock.now(), false);
    await until(() => syncs.started === 2);
    syncs.finish();
    const [record] = await sealing;
    // The request must not leave before "in flight" is durable: a crash then makes the record possibly delivered.
    let inFlight = false;
    const marking = ledger.markInFlight(record.id).then(() => (inFlight = true));
    await until(() => syncs.started === 3);
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect(inFlight).toBe(false);
    syncs.finish();
    await marking;
    expect(inFlight).toBe(true);
  });

  it('refuses every write once a sync of the log fails, and says so once', async () => {
    const dir = dirs.make();
    const clock = new ManualClock(H10 + 60_000);
    const syncs = new HeldSyncs();
    const broken: Error[] = [];
    const ledger = openLedger(dir, clock, { syncFile: syncs.syncFile, onBroken: (err) => broken.push(err) });
    const recording = ledger.record(usageBatch([report('a', 1)]));
    await until(() => syncs.started === 1);
    syncs.fail(Object.assign(new Error('EIO: i/o error, fdatasync'), { code: 'EIO' }));
    await expect(recording).rejects.toBeInstanceOf(StorageUnavailableError);
    await expect(ledger.record(usageBatch([report('a', 1)]))).rejects.toBeInstanceOf(StorageUnavailableError);
    expect(() => ledger.seal(clock.now(), true)).toThrow(StorageUnavailableError);
    expect(() => ledger.markSent(1, 'x', clock.now())).toThrow(StorageUnavailableError);
    await expect(ledger.durable()).rejects.toBeInstanceOf(StorageUnavailableError);
    expect(ledger.writable(clock.now())).toMatchObject({ ok: false });
    expect(broken).toHaveLength(1);
    expect(broken[0].message).toMatch(/EIO/);
  });

  it('counts usage per (dimension, hour, tag set) in the hour of arrival', async () => {
    const { clock, ledger } = setup();
    await recorded(ledger, [report('requests', 2), report('requests', 3, { t: 'a' }), report('gb', 1)]);
    clock.set(H10 + 30 * 60_000);
    await recorded(ledger, [report('requests', 5)]);
    expect(ledger.status(clock.now()).open).toEqual([
      { dimension: 'gb', hourStartMs: H10, quantity: 1, tagSets: 1 },
      { dimension: 'requests', hourStartMs: H10, quantity: 10, tagSets: 2 },
    ]);
  });

  it('seals an hour only once it has closed, with the first usage as timestamp', async () => {
    const { clock, ledger } = setup(H10 + 60_000);
    await recorded(ledger, [report('requests', 2)]);
    clock.set(H10 + 120_000);
    await recorded(ledger, [report('requests', 3, { t: 'a' })]);
    expect(ledger.seal(H11 - 1, false)).toEqual([]);

    const records = ledger.seal(H11, false);

    expect(records).toHaveLength(1);
    expect(records[0]).toMatchObject({
      dimension: 'requests',
      hourStartMs: H10,
      quantity: 5,
      timestampMs: H10 + 60_000,
      status: 'pending',
    });
    expect(records[0].request).toEqual({
      ProductCode: 'prod',
      TimestampMs: H10 + 60_000,
      UsageDimension: 'requests',
      UsageQuantity: 5,
      UsageAllocations: [
        { AllocatedUsageQuantity: 3, Tags: [{ Key: 't', Value: 'a' }] },
        { AllocatedUsageQuantity: 2 },
      ],
      ClientToken: records[0].clientToken,
    });
    expect(ledger.status(H11).open).toEqual([]);
  });

  it('hands the record sealed last the request it was stored from, once; every other read parses the stored text', async () => {
    const { ledger } = setup(H10 + 60_000);
    await recorded(ledger, [report('requests', 2, { t: 'a' }), report('gb', 7, { t: 'a' }), report('gb', 1)]);
    const [first, last] = ledger.seal(H11, false);
    const stored = new Map(ledger.due(H11).map((r) => [r.id, r.request]));
    expect([...stored.keys()]).toEqual([first.id, last.id]);

    const parse = vi.spyOn(JSON, 'parse');
    try {
      const handed = last.request;
      expect(parse).not.toHaveBeenCalled(); // the object the text was serialised from, not a parse of it
      expect(handed).toEqual(stored.get(last.id));
      expect(JSON.stringify(handed)).toBe(JSON.stringify(stored.get(last.id)));
      const again = last.request;
      expect(parse).toHaveBeenCalledTimes(1);
      expect(again).toEqual(handed);
      expect(again).not.toBe(handed);
      // Sealed before the last one: only its text is kept.
      expect(first.request).toEqual(stored.get(first.id));
      expect(parse).toHaveBeenCalledTimes(2);
    } finally {
      parse.mockRestore();
    }
  });

  it('reads the hours with usage three times for a run of seals one at a time, not once a record', async () => {
    const { clock, ledger } = setup(H10 + 60_000);
    for (let h = 0; h < 4; h++) {
      await recorded(
        ledger,
        ['a', 'b', 'c', 'd', 'e', 'f'].map((d) => report(d, h + 1, { t: d })),
      );
      clock.advance(HOUR_MS);
    }
    const statement = Object.getPrototypeOf(new Database(':memory:').prepare('SELECT 1')) as {
      all: (...args: unknown[]) => unknown[];
    };
    const all = vi.spyOn(statement, 'all');
    try {
      const sealed = [];
      for (;;) {
        const records = ledger.seal(clock.now(), false, 1);
        if (records.length === 0) break;
        sealed.push(...records);
      }
      expect(sealed.map((r) => r.quantity)).toEqual([
        1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 4, 4, 4, 4, 4, 4,
      ]);
      const reads = all.mock.contexts.filter((c) =>
        (c as { source: string }).source.startsWith('SELECT DISTINCT'),
      );
      // At the first call, when the list is used up (by the call that seals its last pair), and by the last call,
      // which finds nothing more: not 25, one for each call.
      expect(reads).toHaveLength(3);
    } finally {
      all.mockRestore();
    }
  });

  it('seals each (dimension, hour) at most once and moves late usage to the next hour', async () => {
    const { clock, ledger } = setup(H10 + 60_000);
    await recorded(ledger, [report('requests', 2)]);
    // Shutdown flush seals the open hour.
    expect(ledger.seal(clock.now(), true)).toHaveLength(1);
    clock.set(H10 + 120_000);
    await recorded(ledger, [report('requests', 4), report('gb', 1)]);

    expect(ledger.status(clock.now()).open).toEqual([
      { dimension: 'gb', hourStartMs: H10, quantity: 1, tagSets: 1 },
      { dimension: 'requests', hourStartMs: H11, quantity: 4, tagSets: 1 },
    ]);
    // The next hour has not begun: even a shutdown flush may not seal it.
    expect(ledger.seal(clock.now(), true).map((r) => [r.dimension, r.hourStartMs])).toEqual([['gb', H10]]);
    const later = ledger.seal(H12, false);
    expect(later.map((r) => [r.dimension, r.hourStartMs, r.quantity, r.timestampMs])).toEqual([
      ['requests', H11, 4, H11],
    ]);
  });

  it('keeps the sealed hours across a restart', async () => {
    const { clock, ledger, dir } = setup(H10 + 60_000);
    await recorded(ledger, [report('requests', 2)]);
    ledger.seal(clock.now(), true);
    ledger.close();

    const reopened = openLedger(dir, clock);
    await recorded(reopened, [report('requests', 1)]);
    expect(reopened.status(clock.now()).open[0].hourStartMs).toBe(H11);
    expect(reopened.ledgerId).toBe(ledger.ledgerId);
  });

  it('sends nothing for a zero-usage hour and leaves the hour unlocked', async () => {
    const { clock, ledger } = setup(H10 + 60_000);
    await recorded(ledger, [report('requests', 0)]);
    expect(ledger.seal(clock.now(), true)).toEqual([]);
    await recorded(ledger, [report('requests', 3)]);
    expect(ledger.status(clock.now()).open[0]).toMatchObject({ hourStartMs: H10, quantity: 3 });
  });

  it('derives a ClientToken unique to the ledger, stable for the record', async () => {
    const a = setup(H10 + 60_000);
    const b = setup(H10 + 60_000);
    await recorded(a.ledger, [report('requests', 1)]);
    await recorded(b.ledger, [report('requests', 1)]);
    const [ra] = a.ledger.seal(H11, false);
    const [rb] = b.ledger.seal(H11, false);
    expect(ra.clientToken).not.toBe(rb.clientToken);
    expect(a.ledger.get(ra.id)!.clientToken).toBe(ra.clientToken);
    expect(a.ledger.get(ra.id)!.request).toEqual(ra.request);
  });

  it('caps a total over 2,147,483,647 and carries the excess into the next hour with its tags', async () => {
    const { clock, ledger } = setup(H10 + 60_000);
    await recorded(ledger, [report('requests', MAX_QUANTITY, { t: 'a' }), report('requests', 7, { t: 'b' })]);
    const [record] = ledger.seal(H11 + 10, false);
    expect(record.quantity).toBe(MAX_QUANTITY);
    expect(record.request.UsageAllocations!.reduce((s, a) => s + a.AllocatedUsageQuantity, 0)).toBe(
      MAX_QUANTITY,
    );
    expect(ledger.status(clock.now()).open).toEqual([
      { dimension: 'requests', hourStartMs: H11, quantity: 7, tagSets: 1 },
    ]);
    const [next] = ledger.seal(H12, false);
    expect(next).toMatchObject({ hourStartMs: H11, quantity: 7, timestampMs: H11 });
    expect(next.request.UsageAllocations).toEqual([
      { AllocatedUsageQuantity: 7, Tags: [{ Key: 't', Value: 'b' }] },
    ]);
  });

  it('carries an unsent record into the open hour, per tag set, exactly once', async () => {
    const { clock, ledger } = setup(H10 + 60_000);
    await recorded(ledger, [report('requests', 5, { t: 'a' }), report('requests', 2)]);
    const [record] = ledger.seal(H11, false);
    const deadline = H10 + 60_000 + MAX_RECORD_AGE_MS - CARRY_MARGIN_MS;
    expect(ledger.expiring(deadline - 1)).toEqual([]);
    expect(ledger.expiring(deadline).map((r) => r.id)).toEqual([record.id]);

    clock.set(deadline);
    expect(ledger.carry(record.id, clock.now(), 'window closing')).toBe(Date.parse('2026-03-01T15:00:00Z'));
    expect(ledger.carry(record.id, clock.now(), 'again')).toBeUndefined();

    expect(ledger.get(record.id)!.status).toBe('carried');
    expect(ledger.status(clock.now()).open).toEqual([
      { dimension: 'requests', hourStartMs: Date.parse('2026-03-01T15:00:00Z'), quantity: 7, tagSets: 2 },
    ]);
    const [carried] = ledger.seal(Date.parse('2026-03-01T16:00:00Z'), false);
    expect(carried.timestampMs).toBe(deadline);
    expect(carried.quantity).toBe(7);
  });

  it('moves a record through sent, retry and failed, changing only pending records', async () => {
    const { ledger } = setup(H10 + 60_000);
    await recorded(ledger, [report('a', 1), report('b', 1), report('c', 1)]);
    const [a, b, c] = ledger.seal(H11, false);

    ledger.markRetry(a.id, 'ThrottlingException: slow down', H11 + 5000, false);
    expect(ledger.due(H11 + 4999).map((r) => r.dimension)).toEqual(['b', 'c']);
    expect(ledger.nextAttemptMs()).toBe(H11);
    ledger.markRetry(a.id, 'ECONNRESET: reset', H11 + 9000, true);
    ledger.markRetry(a.id, 'ThrottlingException: slow down', H11 + 9000, false);
    expect(ledger.get(a.id)).toMatchObject({
      attempts: 3,
      maybeDelivered: true,
      lastError: 'ThrottlingException: slow down',
    });

    ledger.markSent(b.id, 'rec-1', H11);
    ledger.markFailed(c.id, 'InvalidTagException: bad', H11);
    ledger.markSent(c.id, 'rec-2', H11);

    expect(ledger.get(b.id)).toMatchObject({ status: 'sent', meteringRecordId: 'rec-1' });
    expect(ledger.get(c.id)).toMatchObject({ status: 'failed', lastError: 'InvalidTagException: bad' });
    const status = ledger.status(H11 + 60_000);
    expect(status.records).toEqual({ pending: 1, sent: 1, carried: 0, failed: 1 });
    expect(status.oldestUnsentAgeSeconds).toBe((H11 + 60_000 - (H10 + 60_000)) / 1000);
    expect(status.failed).toEqual([
      { dimension: 'c', hourStartMs: H10, quantity: 1, error: 'InvalidTagException: bad' },
    ]);
  });

  it('treats a record that was in flight when the process died as possibly delivered', async () => {
    // Regression: AWS could accept a record and the process die before markSent; after a restart the record
    // looked undelivered and could be carried, billing it twice.
    const { clock, ledger, dir } = setup(H10 + 60_000);
    await recorded(ledger, [report('a', 5), report('b', 1)]);
    const [a, b] = ledger.seal(H11, false);
    ledger.markInFlight(a.id);
    ledger.markInFlight(b.id);
    ledger.markRetry(b.id, 'ThrottlingException: slow', H11 + 5000, false);
    ledger.close();

    const reopened = openLedger(dir, clock);
    expect(reopened.get(a.id)!.maybeDelivered).toBe(true);
    expect(reopened.get(b.id)!.maybeDelivered).toBe(false);
  });

  it('treats a record marked in flight as possibly delivered while the process still runs', async () => {
    // Regression: AWS accepted a record, then markSent failed (disk full); the record stayed pending and could
    // be carried once the disk recovered, billing it twice.
    const { ledger } = setup(H10 + 60_000);
    await recorded(ledger, [report('a', 5)]);
    const [a] = ledger.seal(H11, false);
    ledger.markInFlight(a.id);
    expect(ledger.get(a.id)!.maybeDelivered).toBe(true);
  });

  it('does not take a later hour a bucket was moved to as the time after a restart', async () => {
    // Regression: usage moved to the next hour (stamped 11:00) made the high-water mark 11:00 after a restart,
    // so usage at 10:20 went into the future hour and records sealed at shutdown were not due until 11:00.
    const { clock, ledger, dir } = setup(H10 + 5 * 60_000);
    await recorded(ledger, [report('a', 1)]);
    ledger.seal(clock.now(), true); // shutdown flush seals 10:00 for a
    ledger.close();
    clock.set(H10 + 15 * 60_000);
    const second = openLedger(dir, clock);
    await recorded(second, [report('a', 2), report('c', 3)]); // a moves to 11:00; c stays at 10:00
    second.close();
    clock.set(H10 + 20 * 60_000);
    const third = openLedger(dir, clock);
    await recorded(third, [report('c', 4)]);

    expect(third.status(clock.now()).open).toEqual([
      { dimension: 'c', hourStartMs: H10, quantity: 7, tagSets: 1 },
      { dimension: 'a', hourStartMs: H11, quantity: 2, tagSets: 1 },
    ]);
    clock.set(H10 + 25 * 60_000);
    const [c] = third.seal(clock.now(), true);
    expect(c).toMatchObject({ dimension: 'c', hourStartMs: H10, quantity: 7 });
    // Both the 10:00 record of a (sealed by the first shutdown) and the new one of c are due now.
    expect(
      third
        .due(clock.now())
        .map((r) => `${r.dimension}@${r.hourStartMs - H10}`)
        .sort(),
    ).toEqual(['a@0', 'c@0']);
  });

  it('carries tag sets under the same key intake uses, so a carried and a new report share one allocation', async () => {
    // Regression: keys like "10" and "9" came back in JavaScript's integer-first order, giving two
    // allocations with the same tags, which AWS refuses.
    const { clock, ledger } = setup(H10 + 60_000);
    await recorded(ledger, [report('a', 5, { '10': 'x', '9': 'y' })]);
    const [record] = ledger.seal(H11, false);
    clock.set(H10 + 60_000 + MAX_RECORD_AGE_MS - CARRY_MARGIN_MS);
    ledger.carry(record.id, clock.now(), 'window closing');
    await recorded(ledger, [report('a', 1, { '9': 'y', '10': 'x' })]);
    expect(ledger.status(clock.now()).open).toEqual([
      { dimension: 'a', hourStartMs: Date.parse('2026-03-01T15:00:00Z'), quantity: 6, tagSets: 1 },
    ]);
  });

  it('carries into a later hour when the open hour could not take the tag sets', async () => {
    // Regression: a carry could give a record six tag keys, which AWS refuses, so the usage was never billed.
    const { clock, ledger } = setup(H10 + 60_000);
    await recorded(ledger, [report('a', 10, { k1: 'x', k2: 'x', k3: 'x' })]);
    const [record] = ledger.seal(H11, false);
    const deadline = H10 + 60_000 + MAX_RECORD_AGE_MS - CARRY_MARGIN_MS;
    clock.set(deadline);
    await recorded(ledger, [report('a', 1, { k4: 'y', k5: 'y', k6: 'y' })]);
    const H15 = Date.parse('2026-03-01T15:00:00Z');

    expect(ledger.carry(record.id, clock.now(), 'window closing')).toBe(H15 + HOUR_MS);

    expect(ledger.status(clock.now()).open).toEqual([
      { dimension: 'a', hourStartMs: H15, quantity: 1, tagSets: 1 },
      { dimension: 'a', hourStartMs: H15 + HOUR_MS, quantity: 10, tagSets: 1 },
    ]);
  });

  // Regression: a carried record using 5 tag keys made the app's next {tenant} report a 422 for the hour.
  it('folds carried usage into the untagged allocation when the app needs the tag keys it holds', async () => {
    // Prepare: an unsent record with five tag keys is carried into the open hour 15:00.
    const { clock, ledger } = setup(H10 + 60_000);
    const five = { k1: 'a', k2: 'b', k3: 'c', k4: 'd', k5: 'e' };
    await recorded(ledger, [report('a', 10, five), report('a', 3, { k1: 'z' })]);
    const [record] = ledger.seal(H11, false);
    clock.set(H10 + 60_000 + MAX_RECORD_AGE_MS - CARRY_MARGIN_MS);
    const H15 = Date.parse('2026-03-01T15:00:00Z');
    expect(ledger.carry(record.id, clock.now(), 'window closing')).toBe(H15);

    // Act: the app reports under a sixth key, and under a key the carried usage holds too.
    const result = await ledger.record(
      usageBatch([report('a', 2, { tenant: 'acme' }), report('a', 1, { k1: 'z' })]),
    );

    // Assess: accepted; the hour keeps every unit, the carried part without its tags.
    expect(result).toMatchObject({ kind: 'recorded', accepted: 2 });
    const [sealed] = ledger.seal(H15 + HOUR_MS, false);
    expect(sealed.quantity).toBe(16);
    expect(sealed.request.UsageAllocations).toEqual([
      { AllocatedUsageQuantity: 1, Tags: [{ Key: 'k1', Value: 'z' }] },
      { AllocatedUsageQuantity: 2, Tags: [{ Key: 'tenant', Value: 'acme' }] },
      { AllocatedUsageQuantity: 13 },
    ]);
  });

  it('still refuses usage that breaks the tag limits by itself, keeping the carried usage as it was', async () => {
    const { clock, ledger } = setup(H10 + 60_000);
    await recorded(ledger, [report('a', 10, { k1: 'a' })]);
    const [record] = ledger.seal(H11, false);
    clock.set(H10 + 60_000 + MAX_RECORD_AGE_MS - CARRY_MARGIN_MS);
    ledger.carry(record.id, clock.now(), 'window closing');
    const six = Array.from({ length: 6 }, (_, i) => report('a', 1, { [`own${i}`]: 'x' }));

    expect(await rejectedBy(ledger, six)).toMatchObject({ code: 'InvalidTags' });

    const [sealed] = ledger.seal(Date.parse('2026-03-01T16:00:00Z'), false);
    expect(sealed.request.UsageAllocations).toEqual([
      { AllocatedUsageQuantity: 10, Tags: [{ Key: 'k1', Value: 'a' }] },
    ]);
  });

  it('moves carried usage to a later hour when the app needs all 2,500 tag sets of the hour', async () => {
    const { clock, ledger } = setup(H10 + 60_000);
    const sets = (prefix: string, n: number): UsageReport[] =>
      Array.from({ length: n }, (_, i) => report('a', 1, { t: `${prefix}${i}` }));
    await recorded(ledger, sets('carried-', 2500));
    const [record] = ledger.seal(H11, false);
    clock.set(H10 + 60_000 + MAX_RECORD_AGE_MS - CARRY_MARGIN_MS);
    ledger.carry(record.id, clock.now(), 'window closing');

    await recorded(ledger, sets('app-', 2500));

    // The app's 2,500 tag sets fill the hour; the carried usage, folded, moved on to the next one.
    const H15 = Date.parse('2026-03-01T15:00:00Z');
    expect(ledger.status(clock.now()).open).toEqual([
      { dimension: 'a', hourStartMs: H15, quantity: 2500, tagSets: 2500 },
      { dimension: 'a', hourStartMs: H15 + HOUR_MS, quantity: 2500, tagSets: 1 },
    ]);
  });

  it('never stamps usage before the software started when the clock jumps back', async () => {
    // Prepare: the ledger starts at 10:30.
    const { clock, ledger } = setup(H10 + 30 * 60_000);
    await recorded(ledger, [report('a', 1)]);

    // Act: the clock steps back 40 minutes, into the previous hour.
    clock.set(H10 - 10 * 60_000);
    await recorded(ledger, [report('a', 2)]);
    const atShutdown = ledger.seal(clock.now(), true);
    clock.set(H11 + 60_000);
    const [record] = ledger.seal(clock.now(), false);

    // Assess: counted in the hour the software started in, stamped at its start, sealed once the clock passed it.
    expect(atShutdown).toEqual([]);
    expect(record).toMatchObject({ hourStartMs: H10, quantity: 3, timestampMs: H10 + 30 * 60_000 });
    expect(ledger.status(clock.now()).open).toEqual([]);
  });

  it('after a forward jump that is undone, seals nothing ahead of the clock and no hour twice', async () => {
    const { clock, ledger } = setup(H10 + 5 * 60_000);
    await recorded(ledger, [report('a', 1)]);
    // The clock jumps forward three hours: hour 10 closes and is sealed.
    clock.set(H10 + 3 * HOUR_MS + 10 * 60_000);
    expect(ledger.seal(clock.now(), false).map((r) => r.hourStartMs)).toEqual([H10]);
    await recorded(ledger, [report('a', 2)]);
    // NTP corrects it back to 10:20.
    clock.set(H10 + 20 * 60_000);
    await recorded(ledger, [report('a', 4)]);

    // Neither a scheduled nor a shutdown seal may send the 13:00 hour before the clock reaches it.
    expect(ledger.seal(clock.now(), false)).toEqual([]);
    expect(ledger.seal(clock.now(), true)).toEqual([]);
    expect(ledger.status(clock.now()).open).toEqual([
      { dimension: 'a', hourStartMs: H10 + 3 * HOUR_MS, quantity: 6, tagSets: 1 },
    ]);
    clock.set(H10 + 4 * HOUR_MS);
    const [late] = ledger.seal(clock.now(), false);
    expect(late).toMatchObject({ hourStartMs: H10 + 3 * HOUR_MS, quantity: 6 });
    expect(late.timestampMs).toBeLessThanOrEqual(clock.now());
  });

  // Regression: after the clock stepped back (12:50 to 12:05) the record kept its 12:50 stamp, AWS refused
  // it as out of bounds, and it was carried into an hour that had not begun.
  it('never stamps a record ahead of the clock that seals it, after the clock steps back', async () => {
    const { clock, ledger } = setup(H12 + 50 * 60_000);
    await recorded(ledger, [report('a', 5)]);
    clock.set(H12 + 5 * 60_000);

    const [record] = ledger.seal(clock.now(), true);

    expect(record).toMatchObject({ hourStartMs: H12, quantity: 5, timestampMs: H12 + 5 * 60_000 });
    expect(record.request.TimestampMs).toBe(H12 + 5 * 60_000);
  });

  it('acknowledges a repeated idempotency key without counting it again, for 24 hours', async () => {
    const { clock, ledger } = setup(H10 + 60_000);
    expect(
      await recorded(ledger, [report('a', 5, undefined, 'k1'), report('a', 5, undefined, 'k1')]),
    ).toMatchObject({
      accepted: 1,
      duplicates: 1,
    });
    expect(
      await recorded(ledger, [report('a', 5, undefined, 'k1'), report('a', 1, undefined, 'k2')]),
    ).toMatchObject({
      accepted: 1,
      duplicates: 1,
    });
    expect(ledger.status(clock.now()).open[0].quantity).toBe(6);

    // Keys age with time that really passes (the monotonic clock moves with the manual clock here).
    clock.set(H10 + 60_000 + 24 * HOUR_MS - 1);
    ledger.prune(clock.now());
    expect(await recorded(ledger, [report('a', 5, undefined, 'k1')])).toMatchObject({ duplicates: 1 });
    clock.set(H10 + 60_000 + 24 * HOUR_MS + 1);
    ledger.prune(clock.now());
    expect(await recorded(ledger, [report('a', 5, undefined, 'k1')])).toMatchObject({
      accepted: 1,
      duplicates: 0,
    });
  });

  describe('zero reporting', () => {
    function zeroLedger(startMs: number): { clock: ManualClock; ledger: SqliteLedger } {
      const clock = new ManualClock(startMs);
      const ledger = SqliteLedger.open({
        stateDir: dirs.make(),
        productCode: 'prod',
        dryRun: false,
        clock,
        zeroUsage: { dimensions: ['a', 'b'], fromMs: startMs, fromMonotonicMs: clock.monotonicMs() },
      });
      open.push(ledger);
      return { clock, ledger };
    }

    it('seals 0 for each listed dimension without usage in an hour it ran in, never before it started', async () => {
      const started = H10 + 20 * 60_000;
      const { clock, ledger } = zeroLedger(started);
      await recorded(ledger, [report('a', 5)]);
      clock.set(H11 + 60_000);
      const records = ledger.seal(clock.now(), false);
      expect(records.map((r) => [r.dimension, r.hourStartMs, r.quantity, r.timestampMs])).toEqual([
        ['a', H10, 5, started],
        // Stamped when the sidecar started, not at the start of the hour.
        ['b', H10, 0, started],
      ]);
      expect(records[1].request).toEqual({
        ProductCode: 'prod',
        TimestampMs: started,
        UsageDimension: 'b',
        UsageQuantity: 0,
        ClientToken: records[1].clientToken,
      });
      // Sealed once: the next pass in the same hour adds nothing, the next hour gets its own zeros.
      expect(ledger.seal(clock.now(), false)).toEqual([]);
      clock.set(H12 + 60_000);
      expect(ledger.seal(clock.now(), false).map((r) => [r.dimension, r.hourStartMs, r.quantity])).toEqual([
        ['a', H11, 0],
        ['b', H11, 0],
      ]);
    });

    it('seals the same records one (dimension, hour) at a time as all at once, zeros and capped excess too', async () => {
      const started = H10 + 5 * 60_000;
      const usage = [
        report('a', MAX_QUANTITY, { t: 'x' }),
        report('a', 7, { t: 'y' }),
        report('c', 3, { t: 'x' }),
      ];
      const whole = zeroLedger(started);
      const stepped = zeroLedger(started);
      for (const { clock, ledger } of [whole, stepped]) {
        await recorded(ledger, usage);
        clock.set(H11 + 10 * 60_000);
        await recorded(ledger, [report('c', 2, { t: 'x' })]);
        clock.set(H12 + 60_000);
      }
      const shape = (records: { dimension: string; hourStartMs: number; request: object }[]): unknown[] =>
        records.map((r) => ({ ...r.request, ClientToken: undefined, hour: r.hourStartMs }));

      const all = whole.ledger.seal(whole.clock.now(), false);
      // a, b, c for H10; b and c for H11; and a's H11, which holds only the excess carried while sealing a's H10:
      // the same call seals it once the hours with usage are done, before the zeros.
      expect(all.map((r) => [r.dimension, r.hourStartMs])).toEqual([
        ['a', H10],
        ['c', H10],
        ['c', H11],
        ['a', H11],
        ['b', H10],
        ['b', H11],
      ]);
      expect(whole.ledger.seal(whole.clock.now(), false)).toEqual([]);
      const steps: number[] = [];
      const oneByOne = [];
      for (;;) {
        const records = stepped.ledger.seal(stepped.clock.now(), false, 1);
        steps.push(records.length);
        if (records.length === 0) break;
        oneByOne.push(...records);
      }

      // One at a time, the excess carried into a closed hour is sealed by the same run of calls.
      expect(all.map((r) => [r.dimension, r.hourStartMs, r.quantity])[3]).toEqual(['a', H11, 7]);
      expect(steps).toEqual([...all.map(() => 1), 0]);
      expect(shape(oneByOne).sort(byJson)).toEqual(shape(all).sort(byJson));
      expect(oneByOne.map((r) => [r.dimension, r.hourStartMs])).toEqual(
        all.map((r) => [r.dimension, r.hourStartMs]),
      );
      // Nothing is left open, and nothing is sealed twice.
      expect(stepped.ledger.status(stepped.clock.now()).open).toEqual(
        whole.ledger.status(whole.clock.now()).open,
      );
      expect(stepped.ledger.seal(stepped.clock.now(), false)).toEqual([]);
    });

    it('seals the open hour too at shutdown, and an hour whose usage summed to 0', async () => {
      const { clock, ledger } = zeroLedger(H10 + 60_000);
      await recorded(ledger, [report('a', 0)]);
      clock.set(H10 + 30 * 60_000);
      const records = ledger.seal(clock.now(), true);
      expect(records.map((r) => [r.dimension, r.hourStartMs, r.quantity])).toEqual([
        ['a', H10, 0],
        ['b', H10, 0],
      ]);
      // Usage after the shutdown seal goes to the next hour, as for any sealed hour.
      await recorded(ledger, [report('b', 2)]);
      expect(ledger.status(clock.now()).open).toMatchObject([
        { dimension: 'b', hourStartMs: H11, quantity: 2 },
      ]);
    });

    // Regression: with the clock behind at start and corrected later, zeros went out for hours before the start.
    it('reaches back no further than the start when the clock was behind then and corrected since', () => {
      const { clock, ledger } = zeroLedger(H10 - 3 * HOUR_MS + 5 * 60_000); // three hours behind
      clock.jump(H10 + 5 * 60_000); // corrected: no time passed
      clock.set(H11 + 60_000);
      const records = ledger.seal(clock.now(), false);
      expect(records.map((r) => [r.dimension, r.hourStartMs, r.timestampMs])).toEqual([
        ['a', H10, H10 + 5 * 60_000],
        ['b', H10, H10 + 5 * 60_000],
      ]);
    });

    // Regression: a run of seals one at a time at one clock reading took the start back from the monotonic
    // clock at each call, so the time the run had taken moved the start earlier, into the hour before it.
    it('reaches back no further than the start while a run of seals one at a time takes its time', async () => {
      const { clock, ledger } = zeroLedger(H10 - 3 * HOUR_MS + 200); // three hours behind, 200 ms into H10
      clock.jump(H10 + 200); // corrected: no time passed
      await recorded(ledger, [report('a', 5)]);
      clock.set(H11 + 60_000);
      const sealClockMs = clock.now();
      const records = [];
      for (;;) {
        const sealed = ledger.seal(sealClockMs, false, 1);
        if (sealed.length === 0) break;
        records.push(...sealed);
        clock.advance(300); // the send of each record takes 300 ms
      }
      expect(records.map((r) => [r.dimension, r.hourStartMs, r.quantity, r.timestampMs])).toEqual([
        ['a', H10, 5, H10 + 200],
        ['b', H10, 0, H10 + 200],
      ]);
    });

    it('hands nothing on for a pending zero record, taking it out with the rest', async () => {
      const { clock, ledger } = zeroLedger(H10 + 60_000);
      await recorded(ledger, [report('a', 3)]);
      clock.set(H10 + 30 * 60_000);
      const sealed = ledger.seal(clock.now(), true);
      const snapshot = ledger.handoffs.snapshot();
      expect([...snapshot.recordIds].sort()).toEqual(sealed.map((r) => r.id).sort());
      expect(snapshot.usage).toEqual([
        { dimension: 'a', hourMs: H10, allocations: [{ tagsKey: '{}', quantity: 3 }] },
      ]);
      expect(snapshot.uncertain).toEqual([]);
    });

    // Regression: the start, taken back from the monotonic clock, had a fraction of a millisecond; the zero
    // record's Timestamp could not be stored, and the whole seal failed.
    it('stamps whole milliseconds when the monotonic clock has fractions', () => {
      const base = new ManualClock(H10 + 5 * 60_000);
      const clock = { ...base, now: () => base.now(), monotonicMs: () => base.monotonicMs() + 0.375 };
      const startedMs = clock.now();
      const ledger = SqliteLedger.open({
        stateDir: dirs.make(),
        productCode: 'prod',
        dryRun: false,
        clock: clock as unknown as ManualClock,
        zeroUsage: { dimensions: ['a'], fromMs: startedMs, fromMonotonicMs: base.monotonicMs() + 0.5 },
      });
      open.push(ledger);
      base.set(H10 + 30 * 60_000);
      const [record] = ledger.seal(clock.now(), true);
      expect(record).toMatchObject({ dimension: 'a', quantity: 0 });
      expect(Number.isInteger(record.timestampMs)).toBe(true);
      expect(record.timestampMs).toBeGreaterThanOrEqual(startedMs);
    });

    it('looks back at most four hours after a long stop of the clock', () => {
      const { clock, ledger } = zeroLedger(H10 + 60_000);
      clock.set(H10 + 10 * HOUR_MS + 60_000);
      const hours = [...new Set(ledger.seal(clock.now(), false).map((r) => r.hourStartMs))];
      expect(hours).toEqual([6, 7, 8, 9].map((h) => H10 + h * HOUR_MS));
    });
  });

  it('keeps settled records for the retention it is given, and failed records until a human acts', async () => {
    const dir = dirs.make();
    const clock = new ManualClock(H10 + 60_000);
    const ledger = SqliteLedger.open({
      stateDir: dir,
      productCode: 'prod',
      dryRun: false,
      clock,
      retentionMs: 2 * 24 * HOUR_MS,
    });
    open.push(ledger);
    await recorded(ledger, [report('sent', 1), report('failed', 2)]);
    clock.set(H11 + 60_000);
    const sealed = new Map(ledger.seal(clock.now(), false).map((r) => [r.dimension, r.id]));
    const settledAt = clock.now();
    ledger.markSent(sealed.get('sent')!, 'mrid', settledAt);
    ledger.markFailed(sealed.get('failed')!, 'InvalidTagException: x', settledAt);
    clock.set(settledAt + 2 * 24 * HOUR_MS - 1);
    ledger.prune(clock.now());
    expect(ledger.status(clock.now()).records).toMatchObject({ sent: 1, failed: 1 });
    clock.set(settledAt + 2 * 24 * HOUR_MS + 1);
    ledger.prune(clock.now());
    expect(ledger.status(clock.now()).records).toMatchObject({ sent: 0, failed: 1 });
  });

  // Regression: pruning took the only trace of a seal made by a clock running fast; after a restart with the
  // clock corrected, usage went into the sealed hour again and its record was refused by AWS as a duplicate.
  it('never stamps usage into an hour it sealed, after retention pruned the record and the clock was set back', async () => {
    const dir = dirs.make();
    const clock = new ManualClock(H10 + 50 * 60_000);
    const options = { stateDir: dir, productCode: 'prod', dryRun: false, clock, retentionMs: 24 * HOUR_MS };
    const first = SqliteLedger.open(options);
    open.push(first);
    await recorded(first, [report('a', 5)]);
    clock.set(H11 + 5 * 60_000); // ten minutes fast
    const [sealed] = first.seal(clock.now(), false);
    first.markSent(sealed.id, 'mrid', clock.now());
    clock.set(H11 + 5 * 60_000 + 2 * 24 * HOUR_MS);
    first.prune(clock.now());
    expect(first.status(clock.now()).records.sent).toBe(0);
    first.close();
    open.splice(open.indexOf(first), 1);

    clock.set(H10 + 57 * 60_000); // the clock corrected, back before the seal
    const second = SqliteLedger.open(options);
    open.push(second);
    await recorded(second, [report('a', 7)]);
    expect(second.status(clock.now()).open).toMatchObject([
      { dimension: 'a', hourStartMs: H11, quantity: 7 },
    ]);
  });

  it('keeps no trace of a wrong clock a year ahead that only ticked, so usage after its correction is not stamped in the future', async () => {
    const dir = dirs.make();
    const clock = new ManualClock(H10 + 5 * 60_000);
    const options = { stateDir: dir, productCode: 'prod', dryRun: false, clock };
    const first = SqliteLedger.open(options);
    open.push(first);
    clock.jump(H10 + 365 * 24 * HOUR_MS);
    expect(first.seal(clock.now(), false)).toEqual([]);
    first.prune(clock.now());
    first.close();
    open.splice(open.indexOf(first), 1);

    clock.jump(H10 + 10 * 60_000);
    const second = SqliteLedger.open(options);
    open.push(second);
    await recorded(second, [report('a', 1)]);
    expect(second.status(clock.now()).open).toMatchObject([{ dimension: 'a', hourStartMs: H10 }]);
  });

  it('keeps settled records 45 days by default', async () => {
    const { clock, ledger } = setup(H10 + 60_000);
    await recorded(ledger, [report('sent', 1)]);
    clock.set(H11 + 60_000);
    const [record] = ledger.seal(clock.now(), false);
    ledger.markSent(record.id, 'mrid', clock.now());
    const settledAt = clock.now();
    clock.set(settledAt + 45 * 24 * HOUR_MS - 1);
    ledger.prune(clock.now());
    expect(ledger.status(clock.now()).records.sent).toBe(1);
    clock.set(settledAt + 45 * 24 * HOUR_MS + 1);
    ledger.prune(clock.now());
    expect(ledger.status(clock.now()).records.sent).toBe(0);
  });

  // Decision (docs/metering.md): a wall clock jumping more than 24 h forward must not forget every key at once.
  it('forgets keys no faster than time passes when the wall clock jumps a day forward', async () => {
    const { clock, ledger } = setup(H10 + 60_000);
    await recorded(ledger, [report('a', 5, undefined, 'before-the-jump')]);

    clock.jump(H10 + 60_000 + 30 * HOUR_MS); // a wrong clock: no time has passed
    ledger.prune(clock.now());
    expect(await recorded(ledger, [report('a', 5, undefined, 'before-the-jump')])).toMatchObject({
      duplicates: 1,
    });

    // Once 24 hours have really passed the key goes, whatever the wall clock says.
    clock.set(clock.now() + 24 * HOUR_MS + 1);
    ledger.prune(clock.now());
    expect(await recorded(ledger, [report('a', 5, undefined, 'before-the-jump')])).toMatchObject({
      accepted: 1,
    });
  });

  // Regression: the key store was bounded only by time; at 30 keyed reports/s it filled the chart's volume.
  it('keeps at most the configured number of keys, forgetting the oldest first and saying so', async () => {
    const dir = dirs.make();
    const clock = new ManualClock(H10 + 60_000);
    const evictions: [number, number | undefined][] = [];
    const ledger = SqliteLedger.open({
      stateDir: dir,
      productCode: 'prod',
      dryRun: false,
      clock,
      idempotencyKeysMax: 1000,
      onKeysEvicted: (evicted, oldestKeptAtMs) => evictions.push([evicted, oldestKeptAtMs]),
    });
    open.push(ledger);

    for (let batch = 0; batch < 12; batch++) {
      clock.set(H10 + 60_000 + batch * 1000);
      await recorded(
        ledger,
        Array.from({ length: 100 }, (_, i) => report('a', 1, undefined, `key-${batch}-${i}`)),
      );
    }

    // 1,200 keys given; at most 1% over the bound at any time, back to 1,000 when trimmed.
    expect(ledger.keyStats().count).toBeLessThanOrEqual(1010);
    expect(evictions.length).toBeGreaterThan(0);
    expect(evictions[0][0]).toBe(100);
    // The oldest went first: the first batch is forgotten (counted again), the last is still known.
    expect(await recorded(ledger, [report('a', 1, undefined, 'key-0-0')])).toMatchObject({ accepted: 1 });
    expect(await recorded(ledger, [report('a', 1, undefined, 'key-11-99')])).toMatchObject({
      duplicates: 1,
    });
    expect(evictions.at(-1)![1]).toBeGreaterThan(H10 + 60_000);
    // The count survives a restart.
    const count = ledger.keyStats().count;
    ledger.close();
    expect(openLedger(dir, clock).keyStats().count).toBe(count);
  });

  // Decision (docs/metering.md): an hour's total stays exact. SQLite would add past 2^53 exactly, but the record
  // is sealed in JavaScript numbers, which would round it: usage beyond is refused, never acknowledged.
  it('keeps an hour total exact: usage that would take it past 2^53 - 1 is refused', async () => {
    // Prepare: an hour holding 2^53 - 10 (written straight into the file: reaching it through intake takes
    // four million reports of the largest quantity).
    const { dir, ledger, clock } = setup(H10 + 60_000);
    await recorded(ledger, [report('a', 1, { t: 'x' })]);
    ledger.close();
    const db = new Database(join(dir, LEDGER_FILE));
    db.prepare('UPDATE buckets SET quantity = ?').run(BigInt(MAX_EXACT_TOTAL) - 10n);
    db.close();
    const reopened = openLedger(dir, clock);

    // Act and assess: 11 more would pass 2^53 - 1; 10 fit.
    expect(await rejectedBy(reopened, [report('a', 11, { t: 'y' })])).toMatchObject({
      code: 'InvalidQuantity',
    });
    await recorded(reopened, [report('a', 10, { t: 'y' })]);
    expect(reopened.status(clock.now()).open[0].quantity).toBe(MAX_EXACT_TOTAL);
    const [sealed] = reopened.seal(H11, false);
    expect(sealed.quantity).toBe(MAX_QUANTITY);
    // The excess, exact, waits in the next hour.
    expect(reopened.status(clock.now()).open).toEqual([
      { dimension: 'a', hourStartMs: H11, quantity: MAX_EXACT_TOTAL - MAX_QUANTITY, tagSets: 2 },
    ]);
  });

  // Regression: keys were forgotten by arrival time alone; after the clock stepped back every new key tied with
  // the others, and a just-acknowledged key could be the one forgotten, so its resend was counted twice.
  it('forgets keys in the order they arrived, even when their times tie after the clock stepped back', async () => {
    const dir = dirs.make();
    const clock = new ManualClock(H12 + 50 * 60_000);
    const ledger = SqliteLedger.open({
      stateDir: dir,
      productCode: 'prod',
      dryRun: false,
      clock,
      idempotencyKeysMax: 100,
    });
    open.push(ledger);
    await recorded(
      ledger,
      Array.from({ length: 100 }, (_, i) => report('a', 1, undefined, `z-old-${i}`)),
    );
    clock.jump(H12 + 5 * 60_000);

    await recorded(ledger, [report('a', 1, undefined, 'a-recent')]);
    await recorded(
      ledger,
      Array.from({ length: 5 }, (_, i) => report('a', 1, undefined, `b-later-${i}`)),
    );

    expect(ledger.keyStats().count).toBe(100);
    expect(await recorded(ledger, [report('a', 1, undefined, 'a-recent')])).toMatchObject({ duplicates: 1 });
    expect(await recorded(ledger, [report('a', 1, undefined, 'z-old-0')])).toMatchObject({ accepted: 1 });
  });

  it('rejects a batch that would exceed 2,500 tag sets and stores nothing of it', async () => {
    const { clock, ledger } = setup(H10 + 60_000);
    const first = Array.from({ length: 2500 }, (_, i) => report('a', 1, { n: String(i) }));
    await recorded(ledger, first);
    const problem = await rejectedBy(ledger, [
      report('b', 9),
      report('a', 1, { n: '0' }),
      report('a', 1, { n: 'new' }),
    ]);
    expect(problem.code).toBe('TooManyTagSets');
    const open = ledger.status(clock.now()).open;
    expect(open).toEqual([{ dimension: 'a', hourStartMs: H10, quantity: 2500, tagSets: 2500 }]);
  });

  it('checks and stores the keys of a batch in bulk, counting each known or repeated key once', async () => {
    const { clock, ledger } = setup(H10 + 60_000);
    const keyed = (n: number, prefix: string) =>
      Array.from({ length: n }, (_, i) => report('a', 1, { t: String(i % 3) }, `${prefix}${i}`));
    expect(await recorded(ledger, keyed(500, 'k'))).toMatchObject({ accepted: 500, duplicates: 0 });
    // 250 known keys, 250 new ones each sent twice, and unkeyed usage in between.
    const mixed = [
      ...keyed(250, 'k'),
      report('a', 7),
      ...keyed(250, 'n'),
      ...keyed(250, 'n'),
      report('b', 2),
    ];
    expect(await recorded(ledger, mixed)).toMatchObject({ accepted: 252, duplicates: 500 });
    expect(ledger.keyStats().count).toBe(750);
    const open = ledger.status(clock.now()).open;
    expect(open).toEqual([
      { dimension: 'a', hourStartMs: H10, quantity: 500 + 7 + 250, tagSets: 4 },
      { dimension: 'b', hourStartMs: H10, quantity: 2, tagSets: 1 },
    ]);
    // The keys are stored in request order: bounded eviction forgets the oldest first.
    expect(await recorded(ledger, [report('a', 1, undefined, 'n249')])).toMatchObject({ duplicates: 1 });
  });

  it('names the first report at fault whether or not it has a key', async () => {
    const { ledger } = setup(H10 + 60_000);
    await recorded(
      ledger,
      Array.from({ length: 2500 }, (_, i) => report('a', 1, { n: String(i) })),
    );
    // The keyed report at index 1 brings the 2,501st tag set; the unkeyed one at 2 would too.
    const problem = await rejectedBy(ledger, [
      report('b', 1),
      report('a', 1, { n: 'new-1' }, 'key-1'),
      report('a', 1, { n: 'new-2' }),
    ]);
    expect(problem).toMatchObject({ code: 'TooManyTagSets', index: 1 });
    // A dimension named first by a keyed report is checked first.
    const first = await rejectedBy(ledger, [report('a', 1, { n: 'new-3' }, 'key-2'), report('c', 1, {})]);
    expect(first).toMatchObject({ code: 'TooManyTagSets', index: 0 });
  });

  it('rejects a batch that would use more than 5 tag keys in one record', async () => {
    const { clock, ledger } = setup(H10 + 60_000);
    await recorded(ledger, [
      report('a', 1, { k1: 'v', k2: 'v', k3: 'v' }),
      report('a', 1, { k4: 'v', k5: 'v' }),
    ]);
    const problem = await rejectedBy(ledger, [report('a', 1, { k6: 'v' }, 'id-1')]);
    expect(problem.code).toBe('InvalidTags');
    // The rejected batch's idempotency key was not stored either.
    expect(await recorded(ledger, [report('a', 1, { k1: 'v' }, 'id-1')])).toMatchObject({ accepted: 1 });
    expect(ledger.status(clock.now()).open[0].quantity).toBe(3);
  });

  it('shares one commit between batches that arrive together, each all or nothing', async () => {
    const { clock, ledger } = setup(H10 + 60_000);
    await recorded(
      ledger,
      Array.from({ length: 2500 }, (_, i) => report('full', 1, { n: String(i) })),
    );
    const commitsBefore = ledger.commits;
    const results = await Promise.all([
      ledger.record(usageBatch([report('a', 1)])),
      ledger.record(usageBatch([report('full', 1, { n: 'overflow' })])),
      ledger.record(usageBatch([report('a', 2)])),
    ]);
    expect(results.map((r) => r.kind)).toEqual(['recorded', 'rejection', 'recorded']);
    expect(ledger.commits - commitsBefore).toBe(1);
    expect(ledger.status(clock.now()).open.find((o) => o.dimension === 'a')!.quantity).toBe(3);
  });

  it('refuses a file that is not a database, and leaves it in place', () => {
    const dir = dirs.make();
    writeFileSync(join(dir, LEDGER_FILE), 'this is not a database at all, just text'.repeat(200));
    expect(() => openLedger(dir, new ManualClock(H10))).toThrow(LedgerCorruptError);
    expect(() => openLedger(dir, new ManualClock(H10))).toThrow(/not a readable database/);
  });

  it('refuses a ledger of a newer schema', () => {
    const dir = dirs.make();
    const db = new Database(join(dir, LEDGER_FILE));
    db.pragma('user_version = 99');
    db.close();
    expect(() => openLedger(dir, new ManualClock(H10))).toThrow(/schema 99/);
  });

  // Regression: nothing locked the state directory; two sidecars on one ledger sent each other's records.
  it('holds its state directory: a second ledger on it is refused until the first is closed', () => {
    const { dir, ledger, clock } = setup();
    expect(() => SqliteLedger.open({ stateDir: dir, productCode: 'prod', dryRun: false, clock })).toThrow(
      StateLockedError,
    );
    ledger.close();
    expect(openLedger(dir, clock).ledgerId).toBe(ledger.ledgerId);
  });

  it('reports a state directory it cannot create as storage unavailable', () => {
    const dir = dirs.make();
    writeFileSync(join(dir, 'file'), '');
    expect(() => openLedger(join(dir, 'file', 'state'), new ManualClock(H10))).toThrow(
      StorageUnavailableError,
    );
  });

  it('answers a failed commit (disk full) with StorageUnavailableError and keeps what was committed before', async () => {
    const fs = Tmpfs.mount(1024);
    mounts.push(fs);
    const clock = new ManualClock(H10 + 60_000);
    const ledger = openLedger(fs.dir, clock);
    await recorded(ledger, [report('a', 1)]);

    fs.fill();
    const big = Array.from({ length: 2000 }, (_, i) =>
      report('a', 1, { n: `tag-set-${i}-${'x'.repeat(40)}` }),
    );
    await expect(ledger.record(usageBatch(big))).rejects.toBeInstanceOf(StorageUnavailableError);
    fs.drain();
    await recorded(ledger, [report('a', 2)]);

    expect(ledger.status(clock.now()).open).toEqual([
      { dimension: 'a', hourStartMs: H10, quantity: 3, tagSets: 1 },
    ]);
  });
});

/** Orders values by their JSON text, for comparing lists whose order does not matter. */
function byJson(a: unknown, b: unknown): number {
  const [x, y] = [JSON.stringify(a), JSON.stringify(b)];
  return x < y ? -1 : x > y ? 1 : 0;
}
