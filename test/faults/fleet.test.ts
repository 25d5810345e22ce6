/**
 * Fault suite, fleets: a whole fleet of built sidecars replaced at once under one account's shared MeterUsage
 * quota, as a seller's rollout goes. The emulator enforces 1 call/s for the account (the pressure 10 times as
 * many pods put on AWS's 10/s); every sidecar gets SIGTERM at the same moment with a 15 s shutdown timeout and a
 * state volume that dies with it; replacements start with fresh state directories and the same handoff
 * directory. Nothing acknowledged may be lost or billed twice.
 */
import { mkdirSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { SidecarClient } from '../../src/client/client.js';
import { HOUR_MS, hourStart } from '../../src/clock.js';
import { MeteringEmulator } from '../../src/emulator/emulator.js';
import { faketimeEnv } from '../helpers/faketime.js';
import { SidecarProcess, startCredentialsServer } from '../helpers/sidecarProcess.js';

const DIMENSIONS = ['requests', 'gb', 'nodes'];
const UNITS = 10;
const cleanups: (() => Promise<void> | void)[] = [];
afterAll(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

describe('a fleet replaced at once under a shared quota (built CLI)', () => {
  it('12 sidecars stopped together under 1 MeterUsage/s all exit 0, and their replacements bill every unit once', async () => {
    // Prepare: ten minutes into an hour on every clock, so the whole test stays inside one hour.
    const dir = mkdtempSync(join(tmpdir(), 'metering-fleet-'));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const hourMs = hourStart(Date.now()) + HOUR_MS;
    // The emulator's clock follows the sidecars' (it moves once, when the replacements start).
    let offsetMs = hourMs + 10 * 60_000 - Date.now();
    const emulator = new MeteringEmulator({
      productCode: 'prod-fleet',
      dimensions: DIMENSIONS,
      quota: { MeterUsage: 1 },
      now: () => Date.now() + offsetMs,
    });
    const url = await emulator.start();
    cleanups.push(() => emulator.stop());
    const handoffDir = join(dir, 'handoff');
    mkdirSync(handoffDir);
    let spawned = 0;
    const spawn = async (
      shutdownSeconds: number,
      jitterSeconds: number,
    ): Promise<{ sidecar: SidecarProcess; socketPath: string }> => {
      const n = spawned++;
      const creds = await startCredentialsServer(`ASIAFLEETPOD${n}`);
      cleanups.push(() => creds.close());
      const socketPath = join(dir, `pod${n}.sock`);
      const sidecar = SidecarProcess.spawn({
        METERING_PRODUCT_CODE: 'prod-fleet',
        METERING_ENTITLEMENT: 'none',
        METERING_DIMENSIONS: DIMENSIONS.join(','),
        METERING_SOCKET: socketPath,
        METERING_LISTEN: 'off',
        METERING_ADMIN_LISTEN: 'off',
        METERING_STATE_DIR: join(dir, `state${n}`),
        METERING_HANDOFF_DIR: handoffDir,
        METERING_SHUTDOWN_TIMEOUT_SECONDS: String(shutdownSeconds),
        METERING_SEND_JITTER_SECONDS: String(jitterSeconds),
        AWS_REGION: 'us-east-1',
        AWS_ENDPOINT_URL_MARKETPLACE_METERING: url,
        AWS_CONTAINER_CREDENTIALS_FULL_URI: creds.url,
        ...faketimeEnv(offsetMs),
      });
      cleanups.push(() => {
        sidecar.child.kill('SIGKILL');
      });
      return { sidecar, socketPath };
    };
    const fleet = await Promise.all(Array.from({ length: 12 }, () => spawn(15, 0)));
    await Promise.all(fleet.map((p) => p.sidecar.ready(60_000)));
    for (const pod of fleet) {
      const client = new SidecarClient({ socketPath: pod.socketPath });
      for (const dimension of DIMENSIONS) {
        expect((await client.report({ dimension, quantity: UNITS })).status).toBe(202);
      }
      client.close();
    }
    const acknowledged = fleet.length * UNITS;

    // Act 1: the rollout stops the whole fleet at once.
    const startedMs = Date.now();
    const exits = await Promise.all(fleet.map((p) => p.sidecar.stop('SIGTERM')));
    const stopSeconds = (Date.now() - startedMs) / 1000;
    const deliveredByFleet = emulator.records.length;
    const handedOff = readdirSync(handoffDir).filter((f) => f.startsWith('handoff-')).length;

    // Act 2: replacements on fresh volumes, started just before the hour ends (the test skips the rest of the
    // hour), adopt what was handed off and deliver it with the hourly send, as a running fleet does.
    offsetMs = hourMs + HOUR_MS - 15_000 - Date.now();
    const replacements = await Promise.all(Array.from({ length: 3 }, () => spawn(15, 10)));
    await Promise.all(replacements.map((p) => p.sidecar.ready(60_000)));
    const billed = (): boolean => DIMENSIONS.every((d) => emulator.totals().get(d) === acknowledged);
    for (const until = Date.now() + 120_000; !billed() && Date.now() < until;) {
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
    const replaced = await Promise.all(replacements.map((p) => p.sidecar.stop('SIGTERM')));

    // Assess
    const calls = emulator.calls.filter((c) => c.operation === 'MeterUsage');
    const throttled = calls.filter((c) => c.error === 'ThrottlingException').length;
    console.log(
      `fleet rollout: 12 sidecars stopped in ${stopSeconds.toFixed(1)} s; ${deliveredByFleet} records delivered, ` +
        `${handedOff} handoffs written; replacements delivered ${emulator.records.length - deliveredByFleet} more ` +
        `with the hourly send; ` +
        `${throttled} throttled calls for ${emulator.records.length} delivered records`,
    );
    expect(
      exits.map((e) => e.code),
      fleet.map((p) => p.sidecar.stdout).join('\n'),
    ).toEqual(fleet.map(() => 0));
    expect(
      replaced.map((e) => e.code),
      replacements.map((p) => p.sidecar.stdout).join('\n'),
    ).toEqual(replacements.map(() => 0));
    expect(Object.fromEntries(emulator.totals())).toEqual(
      Object.fromEntries(DIMENSIONS.map((d) => [d, acknowledged])),
    );
    expect(calls.filter((c) => c.error === 'DuplicateRequestException')).toEqual([]);
    expect(readdirSync(handoffDir).filter((f) => !f.startsWith('adopted-'))).toEqual([]);
  }, 240_000);
});
