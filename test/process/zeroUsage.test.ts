/**
 * Zero reporting (METERING_ZERO_USAGE) through the built CLI and the emulator, killed at the worst moment: the
 * shutdown seal has locked the hour with one real and two zero records, AWS has recorded the first send but
 * its answer was lost, and the process dies before it resends. The next sidecar on the same volume bills each
 * dimension's hour exactly once: the real usage once, the zeros once, nothing twice.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { SidecarClient } from '../../src/client/client.js';
import { sidecarFixture, type Cleanups } from '../helpers/fixture.js';

const cleanups: Cleanups = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function until(condition: () => boolean, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error('timed out');
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

describe('zero reporting across a kill', () => {
  it('bills the real usage and each zero once when the sidecar dies after AWS recorded a send it never heard of', async () => {
    // Prepare
    const { emulator, socketPath, spawn } = await sidecarFixture(cleanups, {
      name: 'zero',
      env: { METERING_ZERO_USAGE: 'true' },
    });
    const first = spawn();
    await first.ready();
    const client = new SidecarClient({ socketPath });
    expect((await client.report({ dimension: 'requests', quantity: 5, id: 'evt-1' })).status).toBe(202);
    client.close();
    // The first send is recorded and its answer lost; every later one is refused until the restart, so the
    // kill below lands with exactly one record at AWS however the sends interleave.
    emulator.failNext('MeterUsage', 'ResetAfterProcessing', 1);
    emulator.failNext('MeterUsage', 'ThrottlingException', 1000);

    // Act: the shutdown seal, the first send recorded and its answer lost, then SIGKILL before the resend.
    first.child.kill('SIGTERM');
    await until(
      () => emulator.records.length === 1 && first.stdout.includes('MeterUsage failed for now; will retry'),
    );
    first.child.kill('SIGKILL');
    await new Promise((resolve) => first.child.once('exit', resolve));
    const recordedBeforeRestart = emulator.records.length;
    emulator.clearFaults();
    const second = spawn();
    await second.ready();
    const exit = await second.stop('SIGTERM');

    // Assess
    expect(recordedBeforeRestart).toBe(1);
    expect(exit.code).toBe(0);
    // The hour of the report (a run across the top of an hour also seals the next hour's zeros at the end).
    const hourMs = emulator.records.find((r) => r.dimension === 'requests')!.hourStartMs;
    const billed = emulator.records
      .filter((r) => r.hourStartMs === hourMs)
      .map((r) => [r.dimension, r.quantity])
      .sort();
    expect(billed).toEqual([
      ['gb', 0],
      ['nodes', 0],
      ['requests', 5],
    ]);
    // One hour, one record per dimension: the resend of the recorded one carried its ClientToken.
    const keys = emulator.records.map((r) => `${r.dimension} ${r.hourStartMs}`);
    expect(new Set(keys).size).toBe(keys.length);
    expect(new Set(emulator.records.map((r) => r.clientToken)).size).toBe(keys.length);
  });
});
