/**
 * Fault suite, scenario 1: 100 SIGKILLs at random moments (under concurrent load, during commits, during
 * sends and during shutdown flushes) over simulated hours. The built sidecar runs unmodified; libfaketime
 * shifts the clock it reads, further ahead at every restart, so hours close, are sealed and sent while AWS
 * (the emulator, on the same shifted clock) throttles, fails and loses answers. At the end the emulator's
 * record of what was metered is checked against the clients' record of what was acknowledged.
 */
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, describe, expect, it } from 'vitest';
import type { EmulatorCall, MeteredRecord } from '../../src/emulator/emulator.js';
import { LEDGER_FILE } from '../../src/ledger/database.js';
import { SidecarClient, type UsageInput } from '../../src/client/client.js';
import { sidecarFixture, type Cleanups } from '../helpers/fixture.js';
import { seededRandom, testSeed } from '../helpers/seed.js';
import type { SidecarProcess } from '../helpers/sidecarProcess.js';

const DIMENSIONS = ['requests', 'gb', 'nodes'];
const KILLS = Number(process.env['FAULT_KILLS'] ?? 100);
const HOUR_MS = 3_600_000;

/** Figures of this run, printed at the end (docs/reliability.md quotes them). */
export const figures = { kills: 0, sigterms: 0, restarts: 0, faults: 0, batches: 0, records: 0, hours: 0 };

const cleanups: Cleanups = [];
afterAll(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

const random = seededRandom(testSeed('fault suite (kills)', 'FAULT_SEED'));

function randomInt(min: number, max: number): number {
  return min + Math.floor(random() * (max - min + 1));
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

describe('fault suite: SIGKILL campaign over simulated hours', () => {
  it(`meters exactly the acknowledged usage through ${KILLS} kills`, async () => {
    // Prepare
    let offsetMs = 0;
    const { emulator, socketPath, spawn, stateDir } = await sidecarFixture(cleanups, {
      name: 'faults',
      emulator: { dimensions: DIMENSIONS },
      env: {
        METERING_DIMENSIONS: DIMENSIONS.join(','),
        METERING_SHUTDOWN_TIMEOUT_SECONDS: '5',
        METERING_LOG_LEVEL: 'info',
      },
      clockOffsetMs: () => offsetMs,
    });
    let sidecar: SidecarProcess | undefined;
    const start = async (): Promise<void> => {
      sidecar = spawn();
      figures.restarts++;
      await sidecar.ready(30_000);
    };

    // Clients send batches with idempotency ids and resend each until it is acknowledged.
    const acked = new Map<string, number>();
    const stop = { now: false };
    const client = async (name: string): Promise<void> => {
      let seq = 0;
      let api = new SidecarClient({ socketPath }, { timeoutMs: 5000 });
      while (!stop.now) {
        const records: UsageInput[] = Array.from({ length: randomInt(1, 25) }, () => ({
          dimension: DIMENSIONS[randomInt(0, DIMENSIONS.length - 1)],
          quantity: randomInt(0, 5000),
          tags: { client: name, region: ['eu', 'us', 'ap'][randomInt(0, 2)] },
          id: `${name}-${seq++}`,
        }));
        for (;;) {
          try {
            const reply = await api.report(records);
            if (reply.status === 202) break;
            // 503 while starting (entitlement) or 429: the batch was not stored; resend.
            if (reply.status !== 503 && reply.status !== 429) throw new Error(`unexpected ${reply.status}`);
          } catch (err) {
            if (err instanceof Error && err.message.startsWith('unexpected')) throw err;
            api.close();
            api = new SidecarClient({ socketPath }, { timeoutMs: 5000 });
          }
          await sleep(10);
        }
        figures.batches++;
        figures.records += records.length;
        for (const r of records) acked.set(r.dimension, (acked.get(r.dimension) ?? 0) + r.quantity);
      }
      api.close();
    };

    // Act
    await start();
    const clients = Array.from({ length: 4 }, (_, i) => client(`c${i}`));
    const startedAtMs = Date.now();
    while (figures.kills < KILLS) {
      // Now and then AWS misbehaves.
      if (random() < 0.3) {
        const fault = [
          'ThrottlingException',
          'InternalServiceErrorException',
          'ResetAfterProcessing',
          'ConnectionReset',
        ][randomInt(0, 3)];
        const count = randomInt(1, 3);
        emulator.failNext('MeterUsage', fault, count);
        figures.faults += count;
      }
      await sleep(randomInt(20, 300));
      if (random() < 0.1) {
        // A shutdown flush, killed at a random moment of its sends.
        sidecar!.child.kill('SIGTERM');
        figures.sigterms++;
        await sleep(randomInt(0, 40));
      }
      await sidecar!.stop('SIGKILL');
      figures.kills++;
      // Time moves on: a new simulated hour every few restarts (less than the six-hour window).
      if (random() < 0.25) {
        offsetMs += randomInt(45, 100) * 60_000;
        figures.hours++;
      }
      await start();
    }
    stop.now = true;
    await Promise.all(clients);
    // AWS behaves from now on. A healthy run on the same clock settles what the kills left in doubt while AWS
    // still takes it; it may leave usage for an hour that has not begun (exit 75).
    emulator.clearFaults();
    await sidecar!.stop('SIGKILL');
    await start();
    expect([0, 75]).toContain((await sidecar!.stop('SIGTERM')).code);
    // The last hour: the clock moves past the next hour's start, because usage that arrived after a shutdown
    // flush sealed its hour was counted in the next hour (which a flush may not seal before it begins). Then a
    // clean shutdown.
    offsetMs += 61 * 60_000;
    await start();
    const exit = await sidecar!.stop('SIGTERM');
    const elapsedS = Math.round((Date.now() - startedAtMs) / 1000);

    // Assess
    expect(exit.code, sidecar!.stdout).toBe(0);
    const metered = Object.fromEntries(emulator.totals());
    if (JSON.stringify(Object.entries(metered).sort()) !== JSON.stringify([...acked].sort())) {
      // A difference is a money bug: say where it is before failing.
      console.log(
        `fault suite (kills): MISMATCH\n${differences(stateDir, emulator.records, emulator.calls)}`,
      );
    }
    expect(metered).toEqual(Object.fromEntries(acked));
    // One record per (task, dimension, hour); never a DuplicateRequestException or IdempotencyConflict.
    const keys = emulator.records.map((r) => `${r.identity}|${r.dimension}|${r.hourStartMs}`);
    expect(new Set(keys).size).toBe(keys.length);
    const errors = new Set(emulator.calls.map((c) => c.error));
    expect(errors.has('DuplicateRequestException')).toBe(false);
    expect(errors.has('IdempotencyConflictException')).toBe(false);
    // No record was ever sent twice with different content.
    const bodies = new Map<string, string>();
    for (const call of emulator.calls) {
      if (call.operation !== 'MeterUsage') continue;
      const input = call.input as { ClientToken: string };
      const body = JSON.stringify(call.input);
      expect(bodies.get(input.ClientToken) ?? body).toBe(body);
      bodies.set(input.ClientToken, body);
    }
    // Each record's timestamp lies inside its hour and inside the simulated run.
    for (const r of emulator.records) {
      expect(r.timestampMs - r.hourStartMs).toBeLessThan(HOUR_MS);
      expect(r.timestampMs).toBeGreaterThanOrEqual(startedAtMs - 60_000);
      expect(r.allocations.reduce((s, a) => s + a.quantity, 0)).toBe(r.quantity);
    }
    expect(new Set(emulator.records.map((r) => r.hourStartMs)).size).toBeGreaterThan(3);
    console.log(
      `fault suite (kills): ${figures.kills} SIGKILLs (${figures.sigterms} during shutdown flushes), ${figures.restarts} starts, ` +
        `${figures.hours} simulated hour steps, ${figures.faults} MeterUsage faults injected, ${figures.batches} batches / ` +
        `${figures.records} records acknowledged, ${emulator.records.length} records metered, losses 0, duplicates 0, ${elapsedS} s`,
    );
  }, 600_000);
});

/** Where the ledger and the emulator disagree: records by state, and hours metered differently. */
function differences(
  stateDir: string,
  metered: readonly MeteredRecord[],
  calls: readonly EmulatorCall[],
): string {
  const db = new Database(join(stateDir, LEDGER_FILE), { readonly: true });
  try {
    const records = db
      .prepare(
        'SELECT dimension, hour_ms, quantity, timestamp_ms, status, attempts, maybe_delivered, last_error, client_token, carried_to_hour_ms FROM records ORDER BY hour_ms, dimension',
      )
      .all() as { dimension: string; hour_ms: number; quantity: number; client_token: string }[];
    const byHour = new Map(metered.map((r) => [`${r.dimension}|${r.hourStartMs}`, r]));
    const lines = records
      .filter((r) => {
        if ((r as { status?: string }).status === 'carried') return false; // billed in a later hour's record
        const m = byHour.get(`${r.dimension}|${r.hour_ms}`);
        return m === undefined || m.quantity !== r.quantity || m.clientToken !== r.client_token;
      })
      .map(
        (r) =>
          `ledger ${JSON.stringify(r)} emulator ${JSON.stringify(byHour.get(`${r.dimension}|${r.hour_ms}`))}`,
      );
    const outcomes = new Map<string, number>();
    for (const c of calls) {
      const key = `${c.operation}:${c.error ?? c.status}`;
      outcomes.set(key, (outcomes.get(key) ?? 0) + 1);
    }
    const buckets = db.prepare('SELECT * FROM buckets').all();
    return [...lines, `buckets ${JSON.stringify(buckets)}`, `calls ${JSON.stringify([...outcomes])}`].join(
      '\n',
    );
  } finally {
    db.close();
  }
}
