// The agent's ledger on its worker thread (src/ledger/workerLedger.ts), run from the build: the same contract as
// the in-process ledger, every answer only after its commit, errors of the same classes, the lock held by the
// thread and released by close, and a lost thread refusing everything from then on.
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, describe, expect, it } from 'vitest';
import { HOUR_MS } from '../../src/clock.js';
import { StateLockedError, StorageUnavailableError } from '../../src/errors.js';
import { LEDGER_FILE } from '../../src/ledger/database.js';
import { canonicalTags } from '../../src/ledger/hours.js';
import { SqliteLedger } from '../../src/ledger/sqliteLedger.js';
import { usageBatch } from '../../src/ledger/usageBatch.js';
import { WorkerLedger, type WorkerLedgerOptions } from '../../src/ledger/workerLedger.js';
import { ManualClock } from '../helpers/manualClock.js';
import { TempDirs } from '../helpers/tmp.js';

const WORKER_URL = new URL('../../dist/ledger/ledgerWorker.js', import.meta.url);
const H10 = Date.parse('2026-03-01T10:00:00Z');

const dirs = new TempDirs();
const opened: WorkerLedger[] = [];

afterEach(async () => {
  for (const ledger of opened.splice(0)) await ledger.close();
  dirs.cleanup();
});

async function openLedger(
  stateDir: string,
  clock: ManualClock,
  extra: Partial<WorkerLedgerOptions> = {},
): Promise<WorkerLedger> {
  const ledger = await WorkerLedger.open({
    stateDir,
    productCode: 'prod',
    dryRun: false,
    clock,
    workerUrl: WORKER_URL,
    ...extra,
  });
  opened.push(ledger);
  return ledger;
}

const report = (dimension: string, quantity: number, tags?: Record<string, string>, id?: string) => ({
  dimension,
  quantity,
  tagsKey: canonicalTags(tags),
  id,
});

/** The buckets as another connection reads them from the file: what a crash right now would leave. */
function bucketsOnDisk(
  stateDir: string,
): { dimension: string; tags: string; quantity: number; first_at_ms: number }[] {
  const db = new Database(join(stateDir, LEDGER_FILE), { readonly: true });
  try {
    return db
      .prepare('SELECT dimension, tags, quantity, first_at_ms FROM buckets ORDER BY dimension, tags')
      .all() as {
      dimension: string;
      tags: string;
      quantity: number;
      first_at_ms: number;
    }[];
  } finally {
    db.close();
  }
}

describe('WorkerLedger', () => {
  it('answers a batch only once it is in the file, stamped with the caller’s clock', async () => {
    const dir = dirs.make();
    const clock = new ManualClock(H10 + 5 * 60_000);
    const ledger = await openLedger(dir, clock);
    const pending = ledger.record(usageBatch([report('a', 2, { t: 'x' }), report('a', 3, { t: 'x' })]));
    // The caller's clock moves on before the worker commits: the batch keeps the time it was made.
    clock.set(H10 + 20 * 60_000);
    expect(await pending).toMatchObject({ kind: 'recorded', accepted: 2, duplicates: 0 });
    expect(bucketsOnDisk(dir)).toEqual([
      { dimension: 'a', tags: '{"t":"x"}', quantity: 5, first_at_ms: H10 + 5 * 60_000 },
    ]);
    expect((await ledger.status(clock.now())).open).toEqual([
      { dimension: 'a', hourStartMs: H10, quantity: 5, tagSets: 1 },
    ]);
  });

  it('commits batches made together, each all or nothing, and answers each', async () => {
    const dir = dirs.make();
    const clock = new ManualClock(H10 + 60_000);
    const ledger = await openLedger(dir, clock);
    await ledger.record(
      usageBatch(Array.from({ length: 2500 }, (_, i) => report('full', 1, { n: String(i) }))),
    );
    const results = await Promise.all([
      ledger.record(usageBatch([report('a', 1, undefined, 'k1')])),
      ledger.record(usageBatch([report('a', 2), report('full', 1, { n: 'one-too-many' })])),
      ledger.record(usageBatch([report('a', 4, undefined, 'k1'), report('b', 8)])),
    ]);
    expect(results.map((r) => r.kind)).toEqual(['recorded', 'rejection', 'recorded']);
    expect(results[1]).toMatchObject({ code: 'TooManyTagSets', index: 1 });
    expect(results[2]).toMatchObject({ accepted: 1, duplicates: 1 });
    const open = (await ledger.status(clock.now())).open.map((o) => [o.dimension, o.quantity]);
    expect(open).toEqual([
      ['a', 1],
      ['b', 8],
      ['full', 2500],
    ]);
  });

  it('seals, settles and hands off through the thread like the in-process ledger', async () => {
    const dir = dirs.make();
    const clock = new ManualClock(H10 + 60_000);
    const ledger = await openLedger(dir, clock);
    await ledger.record(usageBatch([report('a', 7, { t: 'x' })]));
    clock.set(H10 + HOUR_MS + 60_000);
    const [record] = await ledger.seal(clock.now(), false);
    expect(record).toMatchObject({ dimension: 'a', hourStartMs: H10, quantity: 7, status: 'pending' });
    expect(record.request.UsageAllocations).toEqual([
      { AllocatedUsageQuantity: 7, Tags: [{ Key: 't', Value: 'x' }] },
    ]);
    expect(await ledger.pendingCount()).toBe(1);
    await ledger.markInFlight(record.id);
    await ledger.markSent(record.id, 'mr-1', clock.now());
    expect((await ledger.status(clock.now())).records).toMatchObject({ pending: 0, sent: 1 });
    expect(await ledger.handoffIds()).toEqual({ written: new Set(), adopted: new Set() });
    expect(await ledger.writable(clock.now())).toEqual({ ok: true });
  });

  it('holds the state directory for its thread, and frees it when closed', async () => {
    const dir = dirs.make();
    const clock = new ManualClock(H10);
    const ledger = await openLedger(dir, clock);
    await expect(openLedger(dir, clock)).rejects.toBeInstanceOf(StateLockedError);
    expect(() => SqliteLedger.open({ stateDir: dir, productCode: 'prod', dryRun: false, clock })).toThrow(
      StateLockedError,
    );
    const id = ledger.ledgerId;
    await ledger.record(usageBatch([report('a', 1)]));
    await ledger.close();
    await ledger.close(); // idempotent
    await expect(ledger.record(usageBatch([report('a', 1)]))).rejects.toBeInstanceOf(StorageUnavailableError);
    const again = await openLedger(dir, clock);
    expect(again.ledgerId).toBe(id);
    expect((await again.status(clock.now())).open[0].quantity).toBe(1);
  });

  it('commits what is queued before it closes', async () => {
    const dir = dirs.make();
    const clock = new ManualClock(H10);
    const ledger = await openLedger(dir, clock);
    const recorded = ledger.record(usageBatch([report('a', 3)]));
    const closed = ledger.close();
    expect(await recorded).toMatchObject({ kind: 'recorded', accepted: 1 });
    await closed;
    expect(bucketsOnDisk(dir).map((b) => b.quantity)).toEqual([3]);
  });

  it('tells the caller’s thread when it forgets keys to stay within the bound', async () => {
    const dir = dirs.make();
    const clock = new ManualClock(H10);
    const evictions: number[] = [];
    const ledger = await openLedger(dir, clock, {
      idempotencyKeysMax: 100,
      onKeysEvicted: (evicted) => evictions.push(evicted),
    });
    await ledger.record(
      usageBatch(Array.from({ length: 150 }, (_, i) => report('a', 1, undefined, `k${i}`))),
    );
    expect(evictions).toEqual([50]);
    expect((await ledger.keyStats()).count).toBe(100);
  });

  it('refuses every call once its thread is lost, and says so once', async () => {
    const dir = dirs.make();
    const clock = new ManualClock(H10);
    const lost: Error[] = [];
    const ledger = await openLedger(dir, clock, {
      workerUrl: new URL('../helpers/lostLedgerWorker.mjs', import.meta.url),
      onLost: (err) => lost.push(err),
    });
    await expect(ledger.record(usageBatch([report('a', 1)]))).rejects.toBeInstanceOf(StorageUnavailableError);
    await expect(ledger.seal(clock.now(), true)).rejects.toBeInstanceOf(StorageUnavailableError);
    expect(await ledger.writable(clock.now())).toMatchObject({ ok: false });
    expect(lost).toHaveLength(1);
    expect(lost[0].message).toMatch(/worker thread/);
    await ledger.close();
  });
});
