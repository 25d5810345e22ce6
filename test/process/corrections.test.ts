/**
 * Corrections and unit scaling through the built CLI, a real sidecar process and the emulator: a cancellation
 * acknowledged just before a SIGKILL stays made, a resend of the cancelled report is not counted, and a scaled
 * dimension bills whole units with its remainder shown in the status, the shutdown log and the export.
 */
import { describe, expect, it } from 'vitest';
import { SidecarClient } from '../../src/client/client.js';
import { cli, jsonLines } from '../helpers/cli.js';
import { sidecarFixture } from '../helpers/fixture.js';
import { processTestScope } from '../helpers/scope.js';

const { cleanups } = processTestScope('metering-corrections-');
const GIB = 2 ** 30;

describe('corrections before sealing', () => {
  it('keeps a cancellation acknowledged just before a kill, and bills only what stayed', async () => {
    // Prepare
    const { emulator, socketPath, spawn, stateDir } = await sidecarFixture(cleanups, { name: 'cancel' });
    const first = spawn();
    await first.ready();
    const client = new SidecarClient({ socketPath });
    const reports = [
      { dimension: 'requests', quantity: 5, id: 'evt-1', tags: { tenant: 'acme' } },
      { dimension: 'requests', quantity: 3, id: 'evt-2', tags: { tenant: 'acme' } },
      { dimension: 'gb', quantity: 7, id: 'evt-3' },
    ];
    expect((await client.report(reports)).status).toBe(202);

    // Act: cancel through the CLI, kill at once, resend everything to the next sidecar, and stop it.
    const cancelled = await cli(['cancel', 'evt-1'], { METERING_SOCKET: socketPath });
    first.child.kill('SIGKILL');
    await new Promise((resolve) => first.child.once('exit', resolve));
    const second = spawn();
    await second.ready();
    const resend = await client.report(reports);
    const repeat = await client.cancel('evt-1');
    const gone = await client.cancel('evt-9');
    const table = await cli(['status'], { METERING_SOCKET: socketPath });
    client.close();
    const exit = await second.stop('SIGTERM');
    const exported = await cli(['export', '--cancellations', '--format', 'jsonl'], {
      METERING_STATE_DIR: stateDir,
    });
    const csv = await cli(['export', '--cancellations'], { METERING_STATE_DIR: stateDir });

    // Assess
    expect(cancelled.code).toBe(0);
    expect(JSON.parse(cancelled.stdout)).toMatchObject({ id: 'evt-1', quantity: 5, repeat: false });
    expect(resend).toEqual({ status: 202, body: { accepted: 0, duplicates: 3 } });
    expect(repeat).toMatchObject({ status: 200, body: { repeat: true } });
    expect(gone).toMatchObject({ status: 404, body: { error: { code: 'UnknownUsageId' } } });
    expect(table.stdout).toMatch(/cancelled \(last 24 hours\)\n {2}\S+ {2}requests +5 {2}\(1 reports\)/);
    expect(exit.code).toBe(0);
    expect(Object.fromEntries(emulator.totals())).toEqual({ requests: 3, gb: 7 });
    expect(emulator.records.find((r) => r.dimension === 'requests')!.allocations).toEqual([
      { quantity: 3, tags: { tenant: 'acme' } },
    ]);
    expect(jsonLines(exported.stdout)).toEqual([
      expect.objectContaining({
        id: 'evt-1',
        dimension: 'requests',
        tags: { tenant: 'acme' },
        quantity: 5,
        unit_divisor: 1,
      }),
    ]);
    expect(csv.stdout.split('\r\n')[0]).toBe(
      'id,dimension,hour,tags,quantity,unit_divisor,reported_at,cancelled_at',
    );
    expect(csv.stdout).toContain('evt-1,requests,');
  });

  it('refuses a cancellation once the shutdown seal locked the hour', async () => {
    const { emulator, socketPath, spawn } = await sidecarFixture(cleanups, { name: 'sealed' });
    const first = spawn();
    await first.ready();
    expect(
      (await cli(['report', 'requests', '5', '--id', 'evt-1'], { METERING_SOCKET: socketPath })).code,
    ).toBe(0);
    expect((await first.stop('SIGTERM')).code).toBe(0);
    const second = spawn();
    await second.ready();
    const refused = await cli(['cancel', 'evt-1'], { METERING_SOCKET: socketPath });
    expect((await second.stop('SIGTERM')).code).toBe(0);
    expect(refused.code).toBe(1);
    expect(JSON.parse(refused.stdout)).toMatchObject({ error: { code: 'HourSealed' } });
    expect(Object.fromEntries(emulator.totals())).toEqual({ requests: 5 });
  });
});

describe('unit scaling', () => {
  it('bills whole GiB from bytes, and reports the remainder it never bills in status, log and export', async () => {
    // Prepare
    const { emulator, socketPath, spawn, stateDir } = await sidecarFixture(cleanups, {
      name: 'units',
      env: { METERING_UNIT_DIVISORS: `gb=${GIB}` },
    });
    const sidecar = spawn();
    await sidecar.ready();
    const client = new SidecarClient({ socketPath });

    // Act: 3.25 GiB in bytes, in reports larger than an unscaled dimension takes.
    const reply = await client.report([
      { dimension: 'gb', quantity: 3 * GIB },
      { dimension: 'gb', quantity: GIB / 4, tags: { volume: 'data' } },
    ]);
    const status = await client.status();
    const table = await cli(['status'], { METERING_SOCKET: socketPath });
    client.close();
    const exit = await sidecar.stop('SIGTERM');
    const remainders = await cli(['export', '--remainders', '--format', 'jsonl'], {
      METERING_STATE_DIR: stateDir,
    });

    // Assess
    expect(reply.status).toBe(202);
    expect((status.body as { unitRemainders: unknown }).unitRemainders).toEqual([
      { dimension: 'gb', divisor: GIB, quantity: GIB / 4, tagSets: 1 },
    ]);
    expect(table.stdout).toContain(`unit remainders (below one unit, not billed yet)\n  gb`);
    expect(table.stdout).toContain(`${GIB / 4} of ${GIB} per unit  (1 tag sets)`);
    expect(exit.code).toBe(0);
    expect(emulator.records.map((r) => [r.dimension, r.quantity, r.allocations])).toEqual([['gb', 3, []]]);
    const logged = sidecar
      .logLines()
      .find((l) => String(l['msg']).startsWith('unit remainders below one unit'));
    expect(logged?.['remainders']).toEqual([
      { dimension: 'gb', divisor: GIB, quantity: GIB / 4, tagSets: 1 },
    ]);
    expect(jsonLines(remainders.stdout)).toEqual([
      expect.objectContaining({
        dimension: 'gb',
        tags: { volume: 'data' },
        unit_divisor: GIB,
        quantity: GIB / 4,
        units: '0.250000',
      }),
    ]);
  });
});
