/**
 * Crash safety with the built CLI in a child process: clients send usage concurrently (retrying with the same
 * idempotency ids until acknowledged, as the API asks), the sidecar is SIGKILLed at random moments, including
 * during commits and during sends, and restarted on the same state directory. The emulator must end up with,
 * per dimension, exactly the acknowledged total, and must never have answered DuplicateRequestException.
 */
import { connect } from 'node:net';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { SidecarClient, type UsageInput } from '../../src/client/client.js';
import { sidecarFixture, type Cleanups } from '../helpers/fixture.js';
import { seededRandom, testSeed } from '../helpers/seed.js';
import type { SidecarProcess } from '../helpers/sidecarProcess.js';

const DIMENSIONS = ['requests', 'gb', 'nodes'];

const cleanups: Cleanups = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function setup(overrides: Record<string, string> = {}) {
  const fixture = await sidecarFixture(cleanups, {
    name: 'crash',
    emulator: { dimensions: DIMENSIONS },
    env: {
      METERING_ENTITLEMENT: 'none',
      METERING_DIMENSIONS: DIMENSIONS.join(','),
      METERING_SHUTDOWN_TIMEOUT_SECONDS: '30',
      METERING_LOG_LEVEL: 'info',
      ...overrides,
    },
  });
  const startSidecar = async (): Promise<SidecarProcess> => {
    const sidecar = fixture.spawn();
    await sidecar.ready();
    return sidecar;
  };
  return { emulator: fixture.emulator, socketPath: fixture.socketPath, startSidecar, fixture };
}

/** Acknowledged quantity per dimension, as the clients saw it. */
class Ledger {
  readonly acked = new Map<string, number>();
  batches = 0;
  attempts = 0;

  add(records: readonly UsageInput[]): void {
    this.batches++;
    for (const r of records) this.acked.set(r.dimension, (this.acked.get(r.dimension) ?? 0) + r.quantity);
  }
}

const random = seededRandom(testSeed('crash safety', 'CRASH_SEED'));

function randomInt(min: number, max: number): number {
  return min + Math.floor(random() * (max - min + 1));
}

/** A client that sends batches until told to stop, retrying each batch with the same ids until it gets 202. */
async function runClient(
  name: string,
  socketPath: string,
  acks: Ledger,
  stop: { now: boolean },
): Promise<void> {
  let seq = 0;
  let client = new SidecarClient({ socketPath }, { timeoutMs: 5000 });
  while (!stop.now) {
    const records: UsageInput[] = Array.from({ length: randomInt(1, 20) }, () => ({
      dimension: DIMENSIONS[randomInt(0, DIMENSIONS.length - 1)],
      quantity: randomInt(1, 1000),
      tags: { client: name, tier: ['gold', 'silver'][randomInt(0, 1)] },
      id: `${name}-${seq++}`,
    }));
    for (;;) {
      acks.attempts++;
      try {
        const reply = await client.report(records);
        if (reply.status === 202) {
          acks.add(records);
          break;
        }
        throw new Error(`unexpected ${reply.status} ${JSON.stringify(reply.body)}`);
      } catch (err) {
        if (err instanceof Error && err.message.startsWith('unexpected')) throw err;
        // The sidecar is down or restarting: the batch's fate is unknown, so resend it with the same ids.
        client.close();
        client = new SidecarClient({ socketPath }, { timeoutMs: 5000 });
        await new Promise((resolve) => setTimeout(resolve, 15));
      }
    }
  }
  client.close();
}

describe('crash safety (built CLI, SIGKILL and restart)', () => {
  it('meters exactly the acknowledged usage through random kills during commits and sends', async () => {
    // Prepare
    const { emulator, socketPath, startSidecar } = await setup();
    const acks = new Ledger();
    const stop = { now: false };
    let sidecar = await startSidecar();
    const clients = Array.from({ length: 4 }, (_, i) => runClient(`c${i}`, socketPath, acks, stop));

    // Act 1: SIGKILL at random moments under concurrent load.
    const KILLS = 8;
    for (let k = 0; k < KILLS; k++) {
      await new Promise((resolve) => setTimeout(resolve, randomInt(50, 400)));
      expect((await sidecar.stop('SIGKILL')).signal).toBe('SIGKILL');
      sidecar = await startSidecar();
    }
    stop.now = true;
    await Promise.all(clients);

    // Act 2: SIGKILL during the final flush's sends, once while a send hangs and once after AWS recorded a
    // record whose answer was lost.
    emulator.failNext('MeterUsage', 'ResetAfterProcessing', 1);
    emulator.failNext('MeterUsage', 'Timeout', 1);
    const callsBefore = emulator.calls.length;
    sidecar.child.kill('SIGTERM');
    while (emulator.calls.length < callsBefore + 2) await new Promise((resolve) => setTimeout(resolve, 5));
    expect((await sidecar.stop('SIGKILL')).signal).toBe('SIGKILL');

    // Act 3: restart (pending records are sent at start), throttling and 500s on the way, then a clean stop.
    emulator.failNext('MeterUsage', 'ThrottlingException', 2);
    emulator.failNext('MeterUsage', 'InternalServiceErrorException', 2);
    sidecar = await startSidecar();
    const exit = await sidecar.stop('SIGTERM');

    // Assess
    expect(exit.code, sidecar.stdout).toBe(0);
    expect(acks.batches).toBeGreaterThan(20);
    const metered = Object.fromEntries(emulator.totals());
    expect(metered).toEqual(Object.fromEntries(acks.acked));
    const errors = emulator.calls.map((c) => c.error);
    expect(errors).not.toContain('DuplicateRequestException');
    expect(errors).not.toContain('IdempotencyConflictException');
    expect(errors).toContain('ThrottlingException');
    expect(errors).toContain('InternalServiceErrorException');
    // One record per (dimension, hour) for this task, each with allocations summing to its quantity.
    const keys = emulator.records.map((r) => `${r.identity}|${r.dimension}|${r.hourStartMs}`);
    expect(new Set(keys).size).toBe(keys.length);
    for (const record of emulator.records) {
      expect(record.identity).toBe('ASIATASKCRASH');
      expect(record.allocations.reduce((sum, a) => sum + a.quantity, 0)).toBe(record.quantity);
    }
    // Every resend of a record carried the same body.
    const bodies = new Map<string, Set<string>>();
    for (const call of emulator.calls) {
      const input = call.input as { ClientToken: string };
      const set = bodies.get(input.ClientToken) ?? new Set<string>();
      set.add(JSON.stringify(call.input));
      bodies.set(input.ClientToken, set);
    }
    for (const set of bodies.values()) expect(set.size).toBe(1);
  }, 120_000);

  // Regression: a second sidecar on the same state directory started, sent the first one's ClientTokens from
  // another identity, and then failed every seal.
  it('refuses a second sidecar on the same state directory (exit 78); a SIGKILL leaves no stale lock', async () => {
    const { emulator, socketPath, startSidecar, fixture } = await setup();
    const first = await startSidecar();
    const client = new SidecarClient({ socketPath });
    expect((await client.report({ dimension: 'gb', quantity: 3 })).status).toBe(202);

    // Its own socket, as a second task or pod would have: only the state directory is shared.
    const second = fixture.spawn({ METERING_SOCKET: join(fixture.dir, 'second.sock') });
    const exit = await second.exited;
    expect(exit.code).toBe(78);
    // The error's class by name, as the bundled command logs it.
    expect(second.fatal()).toMatchObject({ code: 'ERR_STATE_LOCKED', err: { type: 'StateLockedError' } });
    expect(String(second.fatal()['msg'])).toContain('another sidecar is running on METERING_STATE_DIR');
    // The first one carries on undisturbed.
    expect((await client.report({ dimension: 'gb', quantity: 4 })).status).toBe(202);
    client.close();

    expect((await first.stop('SIGKILL')).signal).toBe('SIGKILL');
    const third = await startSidecar();
    expect((await third.stop('SIGTERM')).code).toBe(0);
    expect(Object.fromEntries(emulator.totals())).toEqual({ gb: 7 });
    expect(new Set(emulator.records.map((r) => r.identity))).toEqual(new Set(['ASIATASKCRASH']));
  }, 60_000);

  // Regression: one upload stalled mid-body held a 5 s shutdown for 10 s, and the final send was then aborted.
  it('cuts off an upload stalled mid-body at shutdown, and still sends everything acknowledged in time', async () => {
    // Prepare
    const { emulator, socketPath, startSidecar } = await setup({ METERING_SHUTDOWN_TIMEOUT_SECONDS: '5' });
    const sidecar = await startSidecar();
    const client = new SidecarClient({ socketPath });
    expect((await client.report({ dimension: 'gb', quantity: 5 })).status).toBe(202);
    client.close();
    const stalled = connect(socketPath);
    await new Promise<void>((resolve) => stalled.once('connect', resolve));
    stalled.write(
      'POST /v1/usage HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 60\r\n\r\n{"dimension":"gb",',
    );
    const closed = new Promise<string>((resolve) => {
      let answer = '';
      stalled.on('data', (chunk: Buffer) => (answer += chunk.toString('utf8')));
      stalled.once('close', () => resolve(answer));
    });
    await new Promise((resolve) => setTimeout(resolve, 100));

    // Act
    const started = Date.now();
    const exit = await sidecar.stop('SIGTERM');
    const elapsedMs = Date.now() - started;

    // Assess: the stalled request was never acknowledged; the acknowledged usage was sent, within the budget.
    expect(exit.code, sidecar.stdout).toBe(0);
    expect(elapsedMs).toBeLessThan(5_000);
    expect(await closed).not.toContain('202');
    expect(Object.fromEntries(emulator.totals())).toEqual({ gb: 5 });
  }, 60_000);

  it('leaves unsent records in the ledger (exit 75) when AWS is unreachable, and sends them at the next start', async () => {
    const { emulator, socketPath, startSidecar } = await setup({ METERING_SHUTDOWN_TIMEOUT_SECONDS: '2' });
    let sidecar = await startSidecar();
    const client = new SidecarClient({ socketPath });
    expect((await client.report({ dimension: 'gb', quantity: 42 })).status).toBe(202);
    client.close();
    emulator.failNext('MeterUsage', 'InternalServiceErrorException', 10_000);

    const exit = await sidecar.stop('SIGTERM');
    expect(exit.code, sidecar.stdout).toBe(75);
    expect(emulator.records).toEqual([]);

    emulator.reset();
    sidecar = await startSidecar();
    while (emulator.records.length === 0) await new Promise((resolve) => setTimeout(resolve, 10));
    expect((await sidecar.stop('SIGTERM')).code).toBe(0);
    expect(Object.fromEntries(emulator.totals())).toEqual({ gb: 42 });
  }, 120_000);
});
