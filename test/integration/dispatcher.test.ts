/**
 * One send pass over the real ledger, the real SDK client and the emulator: sealing and sending overlap, and a
 * seal that fails half way through a pass loses nothing.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { HOUR_MS } from '../../src/clock.js';
import { MeteringEmulator } from '../../src/emulator/emulator.js';
import { StorageUnavailableError } from '../../src/errors.js';
import { canonicalTags } from '../../src/ledger/hours.js';
import { InProcessLedger } from '../../src/ledger/inProcessLedger.js';
import type { StoredRecord } from '../../src/ledger/ledger.js';
import { SqliteLedger } from '../../src/ledger/sqliteLedger.js';
import { usageBatch } from '../../src/ledger/usageBatch.js';
import { Dispatcher } from '../../src/schedule/dispatcher.js';
import { createSendClient } from '../../src/send/client.js';
import { MeteringSender, type Sender } from '../../src/send/sender.js';
import { memoryLogger } from '../helpers/logger.js';
import { ManualClock } from '../helpers/manualClock.js';
import { TempDirs } from '../helpers/tmp.js';

const H10 = Date.parse('2026-03-01T10:00:00Z');
const DIMENSIONS = ['a', 'b', 'c', 'd'];

const dirs = new TempDirs();
const cleanups: (() => Promise<void> | void)[] = [];

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  dirs.cleanup();
});

/** What happened, in order: each seal call's start, each send's start and end. */
type Step = 'seal' | `send ${string}` | `answer ${string}`;

async function setup() {
  const clock = new ManualClock(H10 + 60_000);
  const emulator = new MeteringEmulator({ productCode: 'prod', now: () => clock.now() });
  const endpoint = await emulator.start();
  cleanups.push(() => emulator.stop());
  const sqlite = SqliteLedger.open({ stateDir: dirs.make(), productCode: 'prod', dryRun: false, clock });
  cleanups.push(() => sqlite.close());
  const client = createSendClient({
    region: 'us-east-1',
    endpoint,
    credentials: { accessKeyId: 'TASK1', secretAccessKey: 'secret' },
    requestTimeoutMs: 2_000,
  });
  cleanups.push(() => client.destroy());
  const steps: Step[] = [];
  const fault: { failSealCall: number; stopOnAnswer?: AbortController; stopOnSeal?: AbortController } = {
    failSealCall: 0,
  };
  let sealCalls = 0;
  // The real ledger and sender, with what they do written down, and a seal that can be made to fail.
  class WatchedLedger extends InProcessLedger {
    override seal(clockMs: number, includeOpen: boolean, limit?: number): Promise<StoredRecord[]> {
      steps.push('seal');
      if (++sealCalls === fault.failSealCall) {
        return Promise.reject(new StorageUnavailableError('the ledger could not seal (disk I/O error)'));
      }
      const sealed = super.seal(clockMs, includeOpen, limit);
      fault.stopOnSeal?.abort();
      return sealed;
    }
  }
  const ledger = new WatchedLedger(sqlite);
  const real = new MeteringSender(client);
  const sender: Sender = {
    send: async (request, options) => {
      steps.push(`send ${request.UsageDimension}`);
      const result = await real.send(request, options);
      steps.push(`answer ${request.UsageDimension}`);
      fault.stopOnAnswer?.abort();
      return result;
    },
  };
  const dispatcher = new Dispatcher({ ledger, sender, clock, logger: memoryLogger('silent').logger });
  const pass = (signal = new AbortController().signal) =>
    dispatcher.pass({
      includeOpen: false,
      signal,
      retryAt: (_, now) => now + 1,
    });
  // 200 tag sets per dimension, so each sealed record carries a request of some size.
  for (const dimension of DIMENSIONS) {
    const reports = Array.from({ length: 200 }, (_, i) => ({
      dimension,
      quantity: i + 1,
      tagsKey: canonicalTags({ tenant: `t${i}` }),
      id: undefined,
    }));
    const result = await sqlite.record(usageBatch(reports));
    expect(result.kind).toBe('recorded');
  }
  clock.set(H10 + HOUR_MS + 1_000);
  return { emulator, sqlite, steps, fault, pass, clock };
}

const HOUR_TOTAL = (200 * 201) / 2;

describe('send pass', () => {
  it('sends the first sealed record before the last is sealed, and seals each next one while one is sent', async () => {
    const { emulator, steps, pass } = await setup();

    expect(await pass()).toMatchObject({ sealed: 4, sent: 4, retrying: 0, failed: 0 });

    expect(Object.fromEntries(emulator.totals())).toEqual(
      Object.fromEntries(DIMENSIONS.map((d) => [d, HOUR_TOTAL])),
    );
    const firstSend = steps.findIndex((s) => s.startsWith('send'));
    expect(firstSend).toBeGreaterThan(0);
    expect(steps.lastIndexOf('seal')).toBeGreaterThan(firstSend);
    // Between a send and its answer, the next (dimension, hour) was sealed: the seal overlapped the wait.
    const overlapped = steps.filter((s, i) => s === 'seal' && steps[i - 1]?.startsWith('send'));
    expect(overlapped.length).toBeGreaterThanOrEqual(1);
    for (const [i, step] of steps.entries()) {
      if (step === 'seal' && steps[i - 1]?.startsWith('send')) expect(steps[i + 1]).toMatch(/^answer /);
    }
  });

  it('fails the pass when a seal fails half way, after settling the send in flight; the next pass loses nothing', async () => {
    const { emulator, sqlite, fault, pass, clock } = await setup();
    fault.failSealCall = 2;

    await expect(pass()).rejects.toThrow(StorageUnavailableError);

    // The record sent before the failure is settled as sent, once; the rest wait in the hour ledger.
    const afterFailure = sqlite.status(clock.now());
    expect(afterFailure.records).toMatchObject({ pending: 0, sent: 1 });
    expect(emulator.records).toHaveLength(1);
    expect(afterFailure.open.map((o) => o.dimension).sort()).toHaveLength(3);

    expect(await pass()).toMatchObject({ sealed: 3, sent: 3, failed: 0 });
    expect(emulator.records).toHaveLength(4);
    expect(Object.fromEntries(emulator.totals())).toEqual(
      Object.fromEntries(DIMENSIONS.map((d) => [d, HOUR_TOTAL])),
    );
    expect(await pass()).toMatchObject({ sealed: 0, sent: 0 });
  });

  it('seals nothing more once the pass is stopped (a shutdown deadline), and the next pass sends the rest once', async () => {
    const { emulator, sqlite, steps, fault, pass, clock } = await setup();
    const stop = new AbortController();
    fault.stopOnAnswer = stop; // the deadline passes while the first record is answered

    expect(await pass(stop.signal)).toMatchObject({ sent: 1, failed: 0 });

    // The seal that overlapped the first answer is the last one: nothing is sealed after the deadline.
    const firstAnswer = steps.findIndex((s) => s.startsWith('answer'));
    expect(steps.slice(firstAnswer).filter((s) => s === 'seal')).toEqual([]);
    expect(steps.filter((s) => s === 'seal')).toHaveLength(2);
    const left = sqlite.status(clock.now());
    expect(left.records).toMatchObject({ pending: 1, sent: 1 });
    expect(left.open).toHaveLength(2);

    fault.stopOnAnswer = undefined;
    expect(await pass()).toMatchObject({ sealed: 2, sent: 3, failed: 0 });
    expect(emulator.records).toHaveLength(4);
    expect(Object.fromEntries(emulator.totals())).toEqual(
      Object.fromEntries(DIMENSIONS.map((d) => [d, HOUR_TOTAL])),
    );
  });

  it('starts no send once the pass is stopped while a record is being sealed', async () => {
    const { emulator, sqlite, steps, fault, pass, clock } = await setup();
    const stop = new AbortController();
    fault.stopOnSeal = stop; // the deadline passes while the first (dimension, hour) is sealed

    expect(await pass(stop.signal)).toMatchObject({ sealed: 1, sent: 0, retrying: 0, failed: 0 });

    expect(steps).toEqual(['seal']);
    expect(emulator.records).toHaveLength(0);
    // The sealed record waits, never marked in flight; the rest of the hour waits unsealed.
    const left = sqlite.status(clock.now());
    expect(left.records).toMatchObject({ pending: 1, sent: 0 });
    expect(sqlite.due(clock.now()).map((r) => r.maybeDelivered)).toEqual([false]);
    expect(left.open).toHaveLength(3);

    fault.stopOnSeal = undefined;
    expect(await pass()).toMatchObject({ sealed: 3, sent: 4, failed: 0 });
    expect(Object.fromEntries(emulator.totals())).toEqual(
      Object.fromEntries(DIMENSIONS.map((d) => [d, HOUR_TOTAL])),
    );
  });
});
