/**
 * Upgrading in place, with the built CLI: a state volume holding a ledger written by an earlier build (the
 * fixtures of test/fixtures) is migrated at start, and everything it held is metered.
 */
import { mkdirSync } from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import { sidecarFixture, type Cleanups } from '../helpers/fixture.js';
import { fixtureLedger } from '../helpers/ledgerFixture.js';

const cleanups: Cleanups = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

/** The fixtures' clock: half an hour into the open hour 10:00 they hold usage of. */
const FIXTURE_NOW_MS = Date.parse('2026-03-01T10:30:00Z');

describe('upgrade with an earlier ledger (built CLI)', () => {
  // Regression: a ledger of the first version-1 builds crash-looped with "no such column: in_flight".
  it.each(['ledger-v1.sql', 'ledger-v1-in-flight.sql'])(
    'migrates %s at start and meters what it held',
    async (fixture) => {
      const offsetMs = FIXTURE_NOW_MS - Date.now();
      const f = await sidecarFixture(cleanups, {
        name: 'migrate',
        emulator: { dimensions: ['requests', 'gb'] },
        clockOffsetMs: () => offsetMs,
        env: { METERING_ENTITLEMENT: 'none', METERING_DIMENSIONS: 'requests,gb' },
      });
      mkdirSync(f.stateDir, { recursive: true });
      fixtureLedger(f.stateDir, fixture);

      const sidecar = f.spawn();
      await sidecar.ready();
      const exit = await sidecar.stop('SIGTERM');

      expect(exit.code, sidecar.stdout).toBe(0);
      // The pending record of hour 09, resent byte-identical, and the open hour 10, sealed at shutdown.
      expect(Object.fromEntries(f.emulator.totals())).toEqual({ gb: 12, requests: 7 });
      const gb = f.emulator.records.find((r) => r.dimension === 'gb')!;
      expect(gb.clientToken).toBe('2efbca87-7e6d-7adf-80e8-e836ff5e81fc');
      expect(gb.allocations).toEqual([{ quantity: 12, tags: { tenant: 'acme' } }]);
    },
  );
});
