/**
 * Fault suite, storage and clock: a read-only state volume and a corrupted database at startup (refuse with a
 * clear error, never start empty), a volume that fills up under load (refuse, then recover without losing
 * anything acknowledged), and the clock stepping back and then jumping forward by hours across restarts (no
 * record stamped before the software started, no hour sealed twice). The built sidecar runs unmodified;
 * libfaketime moves its clock.
 */
import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { SidecarClient } from '../../src/client/client.js';
import { sidecarFixture, type Cleanups } from '../helpers/fixture.js';
import { Tmpfs } from '../helpers/tmpfs.js';

const HOUR_MS = 3_600_000;
const cleanups: Cleanups = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function setup(stateDir?: string) {
  let offsetMs = 0;
  const fixture = await sidecarFixture(cleanups, {
    name: 'sc',
    ...(stateDir !== undefined ? { stateDir } : {}),
    clockOffsetMs: () => offsetMs,
  });
  return {
    ...fixture,
    state: fixture.stateDir,
    setOffset: (ms: number): void => {
      offsetMs = ms;
    },
  };
}

describe('fault suite: storage', () => {
  it('refuses to start on a read-only state volume, with a clear error', async () => {
    const fs = Tmpfs.mount(1024);
    cleanups.push(() => fs.unmount());
    mkdirSync(join(fs.dir, 'state'));
    fs.readOnly(true);
    const { spawn } = await setup(join(fs.dir, 'state'));
    const sidecar = spawn();
    expect((await sidecar.exited).code).toBe(1);
    expect(sidecar.fatal()).toMatchObject({ code: 'ERR_STATE_UNAVAILABLE' });
    expect(String(sidecar.fatal()['msg'])).toMatch(
      /METERING_STATE_DIR.*writable|read-only|EROFS|SQLITE_READONLY|SQLITE_CANTOPEN/i,
    );
    expect(sidecar.stdout).not.toContain('metering sidecar ready');
  });

  it('refuses to start on a corrupted ledger, never starting empty, and leaves the file as it was', async () => {
    const { emulator, socketPath, state, spawn } = await setup();
    const first = spawn();
    await first.ready();
    const client = new SidecarClient({ socketPath });
    expect(
      (
        await client.report(
          Array.from({ length: 500 }, (_, i) => ({
            dimension: 'requests',
            quantity: 1,
            tags: { n: `t${i}` },
          })),
        )
      ).status,
    ).toBe(202);
    client.close();
    emulator.failNext('MeterUsage', 'InternalServiceErrorException', 100); // keep the records in the ledger
    await first.stop('SIGTERM');
    // Corrupt the database's pages after the header.
    const file = join(state, 'ledger.db');
    const bytes = readFileSync(file);
    for (let i = 4096; i < bytes.length; i += 7) bytes[i] = (bytes[i] * 31 + 17) & 0xff;
    writeFileSync(file, bytes);
    const digest = createHash('sha256').update(bytes).digest('hex');

    const second = spawn();
    expect((await second.exited).code).toBe(1);
    expect(second.fatal()).toMatchObject({ code: 'ERR_STATE_CORRUPT' });
    expect(createHash('sha256').update(readFileSync(file)).digest('hex')).toBe(digest);
  });

  it('refuses usage while the volume is full under load, and meters exactly what was acknowledged', async () => {
    const fs = Tmpfs.mount(3072);
    cleanups.push(() => fs.unmount());
    const { emulator, socketPath, spawn } = await setup(join(fs.dir, 'state'));
    const sidecar = spawn();
    await sidecar.ready();
    const client = new SidecarClient({ socketPath });
    let acked = 0;
    let refused = 0;
    for (let round = 0; round < 60; round++) {
      if (round === 20) fs.fill();
      if (round === 45) fs.drain();
      const records = Array.from({ length: 50 }, (_, i) => ({
        dimension: 'gb',
        quantity: 3,
        tags: { r: `${round}-${i % 5}` },
        id: `${round}-${i}`,
      }));
      const reply = await client.report(records);
      if (reply.status === 202) acked += 150;
      else {
        expect(reply.status).toBe(503);
        refused++;
      }
      await new Promise((resolve) => setTimeout(resolve, round >= 20 && round < 45 ? 60 : 5));
    }
    client.close();
    fs.drain();
    expect((await sidecar.stop('SIGTERM')).code).toBe(0);
    expect(refused).toBeGreaterThan(0);
    expect(emulator.totals().get('gb')).toBe(acked);
  });
});

describe('fault suite: clock', () => {
  it('steps back two hours and jumps forward five across restarts: nothing before the start, no hour twice', async () => {
    const { emulator, socketPath, spawn, setOffset } = await setup();
    const startedAtMs = Date.now();
    let acked = 0;
    const report = async (): Promise<void> => {
      const client = new SidecarClient({ socketPath });
      expect((await client.report({ dimension: 'nodes', quantity: 7 })).status).toBe(202);
      acked += 7;
      client.close();
    };
    let sidecar = spawn();
    await sidecar.ready();
    await report();
    await sidecar.stop('SIGKILL');

    setOffset(-2 * HOUR_MS); // the clock steps back
    sidecar = spawn();
    await sidecar.ready();
    await report();
    await sidecar.stop('SIGKILL');

    setOffset(5 * HOUR_MS); // and jumps forward
    sidecar = spawn();
    await sidecar.ready();
    await report();
    const exit = await sidecar.stop('SIGTERM');

    expect(exit.code, sidecar.stdout).toBe(0);
    expect(emulator.totals().get('nodes')).toBe(acked);
    const hours = emulator.records.map((r) => r.hourStartMs);
    expect(new Set(hours).size).toBe(hours.length);
    for (const record of emulator.records) {
      expect(record.timestampMs).toBeGreaterThanOrEqual(startedAtMs - 1000);
      expect(record.timestampMs - record.hourStartMs).toBeLessThan(HOUR_MS);
    }
  });
});
