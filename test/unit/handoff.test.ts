/**
 * Handoff on real SQLite ledgers and a real directory: the file format, the directory protocol, and the
 * handoff between sidecars with a crash at every step between the file and the ledgers.
 */
import { readdirSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { HOUR_MS } from '../../src/clock.js';
import { HandoffDirectory, TOMBSTONE_RETENTION_MS } from '../../src/handoff/directory.js';
import {
  HANDOFF_FORMAT,
  HANDOFF_VERSION,
  decodeHandoff,
  encodeHandoff,
  type Handoff,
} from '../../src/handoff/format.js';
import { Handoffs, toEntry, toHandoff, type HandoffsOptions } from '../../src/handoff/handoffs.js';
import { canonicalTags } from '../../src/ledger/hours.js';
import { InProcessLedger } from '../../src/ledger/inProcessLedger.js';
import type { UsageReport } from '../../src/ledger/ledger.js';
import { SqliteLedger } from '../../src/ledger/sqliteLedger.js';
import { memoryLogger } from '../helpers/logger.js';
import { ManualClock } from '../helpers/manualClock.js';
import { TempDirs } from '../helpers/tmp.js';
import { usageBatch } from '../../src/ledger/usageBatch.js';

const H10 = Date.parse('2026-03-01T10:00:00Z');
const dirs = new TempDirs();
const opened: SqliteLedger[] = [];

afterEach(() => {
  for (const ledger of opened.splice(0)) ledger.close();
  dirs.cleanup();
});

function report(dimension: string, quantity: number, tags?: Record<string, string>): UsageReport {
  return { dimension, quantity, tagsKey: canonicalTags(tags), id: undefined };
}

/** One sidecar: its own ledger in its own state directory, and the shared handoff directory. */
function sidecar(
  shared: string,
  clock: ManualClock,
  options: { productCode?: string; dimensions?: string[] } = {},
) {
  const store = SqliteLedger.open({
    stateDir: dirs.make(),
    productCode: options.productCode ?? 'prod',
    dryRun: false,
    clock,
  });
  opened.push(store);
  const ledger = new InProcessLedger(store);
  const { logger, lines } = memoryLogger();
  const counted: [string, number][] = [];
  const make = (ledgerView: HandoffsOptions['ledger'] = ledger): Handoffs =>
    new Handoffs({
      directory: new HandoffDirectory(shared),
      ledger: ledgerView,
      productCode: options.productCode ?? 'prod',
      dimensions: options.dimensions,
      host: 'test-host',
      clock,
      logger,
      observer: { handoff: (direction, quantity) => counted.push([direction, quantity]) },
    });
  return { store, ledger, handoffs: make(), make, lines, counted };
}

/** Billable quantity a ledger holds (open buckets and pending records), per dimension and tag set. */
function held(store: SqliteLedger): Record<string, number> {
  const out: Record<string, number> = {};
  const snapshot = store.handoffs.snapshot();
  for (const u of snapshot.usage) {
    for (const a of u.allocations) {
      const key = `${u.dimension} ${a.tagsKey}`;
      out[key] = (out[key] ?? 0) + a.quantity;
    }
  }
  return out;
}

function files(dir: string): string[] {
  return readdirSync(dir).sort();
}

async function usageIn(store: SqliteLedger, reports: UsageReport[]): Promise<void> {
  const result = await store.record(usageBatch(reports));
  if (result.kind !== 'recorded') throw new Error(result.message);
}

describe('handoff file format', () => {
  const handoff: Handoff = {
    format: HANDOFF_FORMAT,
    version: HANDOFF_VERSION,
    id: 'a1b2c3d4-0000-4000-8000-000000000000.0badcafe',
    productCode: 'prod',
    origin: { ledgerId: 'a1b2c3d4-0000-4000-8000-000000000000', host: 'h', writtenAtMs: H10 },
    usage: [{ dimension: 'gb', hourMs: H10, allocations: [{ tags: { team: 'a' }, quantity: 3 }] }],
    uncertain: [{ dimension: 'gb', hourMs: H10 - HOUR_MS, quantity: 2, clientToken: 't', error: 'reset' }],
    recordIds: [1],
    bucketHours: [{ dimension: 'gb', hourMs: H10 }],
  };

  it('reads back what it writes', () => {
    expect(decodeHandoff(encodeHandoff(handoff), 'prod')).toEqual({ kind: 'handoff', handoff });
  });

  it('calls another product or format version foreign, to be left in place', () => {
    expect(decodeHandoff(encodeHandoff(handoff), 'other').kind).toBe('foreign');
    expect(decodeHandoff(JSON.stringify({ ...handoff, version: 2 }), 'prod')).toMatchObject({
      kind: 'foreign',
      message: expect.stringContaining('version 2') as string,
    });
  });

  it.each([
    ['a partial file', encodeHandoff(handoff).slice(0, 40)],
    ['another JSON document', '{"hello":"world"}'],
    [
      'a quantity that is not an integer',
      JSON.stringify({
        ...handoff,
        usage: [{ ...handoff.usage[0], allocations: [{ tags: {}, quantity: 1.5 }] }],
      }),
    ],
    [
      'a tag AWS refuses',
      JSON.stringify({
        ...handoff,
        usage: [{ ...handoff.usage[0], allocations: [{ tags: { 'bad#key': 'v' }, quantity: 1 }] }],
      }),
    ],
    ['an id that is not a handoff id', JSON.stringify({ ...handoff, id: '../../etc/passwd' })],
  ])('refuses %s as invalid', (_name, text) => {
    expect(decodeHandoff(text, 'prod').kind).toBe('invalid');
  });
});

describe('HandoffDirectory', () => {
  const id = HandoffDirectory.newId('ledger-1');
  const handoff = (handoffId: string): Handoff => ({
    format: HANDOFF_FORMAT,
    version: HANDOFF_VERSION,
    id: handoffId,
    productCode: 'prod',
    origin: { ledgerId: 'ledger-1', host: 'h', writtenAtMs: H10 },
    usage: [],
    uncertain: [],
    recordIds: [],
    bucketHours: [],
  });

  it('publishes by rename: no temporary file is left, and the writer is part of the id', async () => {
    const dir = dirs.make();

    await new HandoffDirectory(dir).publish(handoff(id));

    expect(files(dir)).toEqual([`handoff-${id}.json`]);
    expect(HandoffDirectory.writerOf(id)).toBe('ledger-1');
  });

  it('lets exactly one of racing adopters claim a handoff', async () => {
    const dir = dirs.make();
    await new HandoffDirectory(dir).publish(handoff(id));

    const claims = await Promise.all(
      ['adopter-a', 'adopter-b', 'adopter-c'].map((who) => new HandoffDirectory(dir).claim(id, who)),
    );

    expect(claims.filter(Boolean)).toHaveLength(1);
    expect(files(dir)).toHaveLength(1);
    expect(files(dir)[0]).toMatch(/^claimed-.*\.adopter-[abc]\.json$/);
  });

  it('keeps tombstones for a week, and removes abandoned temporary files after a day', async () => {
    const dir = dirs.make();
    const directory = new HandoffDirectory(dir);
    await directory.publish(handoff(id));
    await directory.claim(id, 'adopter');
    await directory.finish(id, 'adopter');
    const stale = HandoffDirectory.newId('ledger-2');
    writeFileSync(join(dir, `.tmp-${stale}.json`), '{');
    const dayOld = (Date.now() - 25 * HOUR_MS) / 1000;
    utimesSync(join(dir, `.tmp-${stale}.json`), dayOld, dayOld);

    const soon = await directory.prune(Date.now());
    const later = await directory.prune(Date.now() + TOMBSTONE_RETENTION_MS + HOUR_MS);

    expect([soon, later]).toEqual([1, 1]);
    expect(files(dir)).toEqual([]);
  });
});

describe('Handoffs between sidecars', () => {
  it('moves every unit, tags kept, out of the writer and into the adopter, once', async () => {
    // Prepare: a sealed record (tagged and untagged) and an open bucket in the writer.
    const shared = dirs.make();
    const clock = new ManualClock(H10 + 5 * 60_000);
    const writer = sidecar(shared, clock);
    await usageIn(writer.store, [report('gb', 5, { team: 'a' }), report('gb', 2), report('cpu', 1)]);
    clock.set(H10 + HOUR_MS + 60_000);
    writer.store.seal(clock.now(), false);
    await usageIn(writer.store, [report('gb', 4, { team: 'b' })]);
    const before = held(writer.store);

    // Act
    const written = await writer.handoffs.handOff();
    const adopter = sidecar(shared, clock);
    const adopted = await adopter.handoffs.adoptAll();
    const again = await adopter.handoffs.adoptAll();

    // Assess
    expect(written?.quantity).toBe(12);
    expect(held(writer.store)).toEqual({});
    expect(writer.store.status(clock.now()).records.pending).toBe(0);
    expect([adopted, again]).toEqual([1, 0]);
    expect(held(adopter.store)).toEqual(before);
    expect(adopter.store.status(clock.now()).handoffs).toMatchObject({ adopted: 1, written: 0 });
    expect(writer.store.status(clock.now()).handoffs).toMatchObject({ adopted: 0, written: 1 });
    expect(files(shared)).toEqual([`adopted-${written?.id}.json`]);
    expect([...writer.counted, ...adopter.counted]).toEqual([
      ['written', 12],
      ['adopted', 12],
    ]);
  });

  it('tells a stopping sidecar once a peer stopping with it hands off, not when adopters work', async () => {
    const shared = dirs.make();
    const clock = new ManualClock(H10 + 5 * 60_000);
    const stopping = sidecar(shared, clock);
    const earlier = sidecar(shared, clock);
    const peer = sidecar(shared, clock);
    const adopter = sidecar(shared, clock);
    await usageIn(earlier.store, [report('gb', 1)]);
    await earlier.handoffs.handOff();
    await usageIn(peer.store, [report('gb', 3)]);

    const peersHandedOff = await stopping.handoffs.peerSignal();
    const before = await peersHandedOff();
    // A running adopter claims and finishes the earlier handoff: the directory changes, no peer handed off.
    expect(await adopter.handoffs.adoptAll()).toBe(1);
    const afterAdoption = await peersHandedOff();
    await peer.handoffs.handOff();

    expect([before, afterAdoption]).toEqual([false, false]);
    expect(await peersHandedOff()).toBe(true);
  });

  it('carries a record that may already be billed as uncertain, never as billable usage', async () => {
    const shared = dirs.make();
    const clock = new ManualClock(H10 + 5 * 60_000);
    const writer = sidecar(shared, clock);
    await usageIn(writer.store, [report('gb', 7), report('cpu', 3)]);
    clock.set(H10 + HOUR_MS + 60_000);
    const [gb] = writer.store.seal(clock.now(), false).filter((r) => r.dimension === 'gb');
    writer.store.markRetry(gb.id, 'ECONNRESET: socket hang up', clock.now() + 5_000, true);

    await writer.handoffs.handOff();
    const adopter = sidecar(shared, clock);
    await adopter.handoffs.adoptAll();

    expect(held(adopter.store)).toEqual({ 'cpu {}': 3 });
    expect(adopter.store.status(clock.now()).handoffs.uncertain).toMatchObject([
      { dimension: 'gb', quantity: 7, error: 'ECONNRESET: socket hang up' },
    ]);
    expect(adopter.lines().some((l) => l['code'] === 'ERR_HANDOFF_UNCERTAIN')).toBe(true);
  });

  it('lets racing adopters take each handoff exactly once', async () => {
    const shared = dirs.make();
    const clock = new ManualClock(H10 + 5 * 60_000);
    let total = 0;
    for (let i = 0; i < 8; i++) {
      const writer = sidecar(shared, clock);
      await usageIn(writer.store, [report('gb', i + 1)]);
      total += i + 1;
      await writer.handoffs.handOff();
    }
    const adopters = [sidecar(shared, clock), sidecar(shared, clock), sidecar(shared, clock)];

    const counts = await Promise.all(adopters.map((a) => a.handoffs.adoptAll()));

    expect(counts.reduce((a, b) => a + b, 0)).toBe(8);
    expect(adopters.reduce((sum, a) => sum + (held(a.store)['gb {}'] ?? 0), 0)).toBe(total);
    expect(files(shared).every((f) => f.startsWith('adopted-'))).toBe(true);
  });

  it('leaves a handoff of another product, or with a dimension it does not meter, in place', async () => {
    const shared = dirs.make();
    const clock = new ManualClock(H10 + 5 * 60_000);
    const foreign = sidecar(shared, clock, { productCode: 'other' });
    await usageIn(foreign.store, [report('gb', 1)]);
    await foreign.handoffs.handOff();
    const unknownDimension = sidecar(shared, clock);
    await usageIn(unknownDimension.store, [report('frames', 1)]);
    await unknownDimension.handoffs.handOff();
    const adopter = sidecar(shared, clock, { dimensions: ['gb'] });

    await adopter.handoffs.adoptAll();
    await adopter.handoffs.adoptAll();

    expect(held(adopter.store)).toEqual({});
    expect(adopter.handoffs.view).toEqual({ pending: 2, ignored: 2 });
    expect(files(shared).filter((f) => f.startsWith('handoff-'))).toHaveLength(2);
    expect(adopter.lines().filter((l) => l['code'] === 'ERR_HANDOFF_IGNORED')).toHaveLength(2);
  });
});

describe('Handoffs across a crash at every step', () => {
  it('writer: published but not recorded, restarted on its volume, completes the handoff before anything else', async () => {
    // Prepare: the ledger transaction after publishing fails, as if the process died there.
    const shared = dirs.make();
    const clock = new ManualClock(H10 + 5 * 60_000);
    const writer = sidecar(shared, clock);
    await usageIn(writer.store, [report('gb', 6)]);
    const dying = writer.make({
      ledgerId: writer.ledger.ledgerId,
      handoffSnapshot: () => writer.ledger.handoffSnapshot(),
      handoffIds: () => writer.ledger.handoffIds(),
      adoptHandoff: (entry, clockMs) => writer.ledger.adoptHandoff(entry, clockMs),
      completeHandoff: (): Promise<boolean> => Promise.reject(new Error('SIGKILL')),
    });
    await dying.handOff();
    expect(held(writer.store)).toEqual({ 'gb {}': 6 }); // in the ledger and in the published file

    // Act: the restart recovers; another sidecar adopts.
    const recovered = await writer.make().recover();
    const adopter = sidecar(shared, clock);
    await adopter.handoffs.adoptAll();

    // Assess: counted once, in the adopter.
    expect(recovered).toEqual({ completed: 1, resumed: 0 });
    expect(held(writer.store)).toEqual({});
    expect(held(adopter.store)).toEqual({ 'gb {}': 6 });
  });

  it('writer: recovers a handoff that was adopted (tombstone) before it restarted', async () => {
    const shared = dirs.make();
    const clock = new ManualClock(H10 + 5 * 60_000);
    const writer = sidecar(shared, clock);
    await usageIn(writer.store, [report('gb', 6)]);
    const snapshot = writer.store.handoffs.snapshot();
    const directory = new HandoffDirectory(shared);
    const id = HandoffDirectory.newId(writer.store.ledgerId);
    await directory.publish(
      toHandoff(snapshot, {
        id,
        productCode: 'prod',
        origin: { ledgerId: writer.store.ledgerId, host: 'h', writtenAtMs: clock.now() },
      }),
    );
    const adopter = sidecar(shared, clock);
    await adopter.handoffs.adoptAll();

    await writer.make().recover();

    expect(files(shared)).toEqual([`adopted-${id}.json`]);
    expect(held(writer.store)).toEqual({});
    expect(held(adopter.store)).toEqual({ 'gb {}': 6 });
  });

  it('adopter: claimed but not merged, restarted on its volume, resumes the adoption', async () => {
    const shared = dirs.make();
    const clock = new ManualClock(H10 + 5 * 60_000);
    const writer = sidecar(shared, clock);
    await usageIn(writer.store, [report('gb', 9)]);
    const { id } = (await writer.handoffs.handOff())!;
    const adopter = sidecar(shared, clock);
    await new HandoffDirectory(shared).claim(id, adopter.store.ledgerId);

    const resumed = await adopter.make().recover();

    expect(resumed).toEqual({ completed: 0, resumed: 1 });
    expect(held(adopter.store)).toEqual({ 'gb {}': 9 });
    expect(files(shared)).toEqual([`adopted-${id}.json`]);
  });

  it('adopter: merged but not finished, restarted, finishes without counting again', async () => {
    const shared = dirs.make();
    const clock = new ManualClock(H10 + 5 * 60_000);
    const writer = sidecar(shared, clock);
    await usageIn(writer.store, [report('gb', 9)]);
    const { id } = (await writer.handoffs.handOff())!;
    const adopter = sidecar(shared, clock);
    const directory = new HandoffDirectory(shared);
    const text = await directory.read(id, 'handoff');
    await directory.claim(id, adopter.store.ledgerId);
    const decoded = decodeHandoff(text!, 'prod');
    if (decoded.kind !== 'handoff') throw new Error('expected a handoff');
    const entry = toEntry(decoded.handoff);
    adopter.store.handoffs.adopt(entry, clock.now());

    const resumed = await adopter.make().recover();

    expect(resumed).toEqual({ completed: 0, resumed: 0 });
    expect(held(adopter.store)).toEqual({ 'gb {}': 9 });
    expect(files(shared)).toEqual([`adopted-${id}.json`]);
  });
});
