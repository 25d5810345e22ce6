/**
 * Fault suite, MeterUsage faults: throttling storms, 500s, connection resets, timeouts, a 10-minute outage and
 * an outage longer than the six-hour window, on the real pipeline (real SDK, real SQLite, the emulator) with an
 * injected clock. Each scenario compares what the emulator metered with what intake acknowledged.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { HOUR_MS } from '../../src/clock.js';
import { startPipeline, type Pipeline } from '../helpers/pipeline.js';
import { TempDirs } from '../helpers/tmp.js';

const H10 = Date.parse('2026-03-01T10:00:00Z');
const dirs = new TempDirs();
const pipelines: Pipeline[] = [];
afterEach(async () => {
  for (const p of pipelines.splice(0)) await p.close();
  dirs.cleanup();
});

/** Acknowledges usage in every hour from 10:00 to `hours` later, returning the totals per dimension. */
async function usageOverHours(p: Pipeline, hours: number): Promise<Map<string, number>> {
  const acked = new Map<string, number>();
  for (let h = 0; h < hours; h++) {
    p.clock.set(Math.max(p.clock.now(), H10 + h * HOUR_MS + 60_000));
    await p.scheduler.runOnce({ includeOpen: false });
    for (const dimension of ['requests', 'gb']) {
      const quantity = 100 + h;
      expect((await p.api.report({ dimension, quantity, tags: { hour: String(h) } })).status).toBe(202);
      acked.set(dimension, (acked.get(dimension) ?? 0) + quantity);
    }
  }
  return acked;
}

/** Advances the clock in `stepMs` steps to `untilMs`, running the scheduler (and its due retries) at each. */
async function runUntil(p: Pipeline, untilMs: number, stepMs = 60_000): Promise<void> {
  while (p.clock.now() < untilMs) {
    p.clock.set(Math.min(untilMs, p.clock.now() + stepMs));
    await p.scheduler.runOnce({ includeOpen: false });
  }
}

async function pipeline(): Promise<Pipeline> {
  const p = await startPipeline({ stateDir: dirs.make(), start: H10 + 60_000, requestTimeoutMs: 300 });
  pipelines.push(p);
  return p;
}

function assertMeteredOnce(p: Pipeline, acked: Map<string, number>): void {
  expect(Object.fromEntries(p.emulator.totals())).toEqual(Object.fromEntries(acked));
  const keys = p.emulator.records.map((r) => `${r.dimension}|${r.hourStartMs}`);
  expect(new Set(keys).size).toBe(keys.length);
  expect(p.emulator.calls.some((c) => c.error === 'DuplicateRequestException')).toBe(false);
  expect(p.ledger.status(p.clock.now()).records).toMatchObject({ pending: 0, failed: 0 });
}

describe('fault suite: MeterUsage faults', () => {
  it.each([
    ['a throttling storm', 'ThrottlingException', 60],
    ['a run of 500s', 'InternalServiceErrorException', 20],
    ['connection resets', 'ConnectionReset', 20],
    ['answers lost after AWS recorded them', 'ResetAfterProcessing', 10],
    ['timeouts', 'Timeout', 8],
  ])('meters everything exactly once through %s', async (_name, fault, count) => {
    const p = await pipeline();
    p.emulator.failNext('MeterUsage', fault, count);
    const acked = await usageOverHours(p, 4);
    await runUntil(p, H10 + 6 * HOUR_MS);
    assertMeteredOnce(p, acked);
  });

  it('meters everything after a 10-minute outage at the top of the hour', async () => {
    const p = await pipeline();
    const acked = await usageOverHours(p, 2);
    const port = Number(new URL(p.emulator.url).port);
    await p.emulator.stop(); // connection refused
    p.clock.set(H10 + 2 * HOUR_MS);
    await runUntil(p, H10 + 2 * HOUR_MS + 10 * 60_000);
    expect(p.ledger.status(p.clock.now()).records.pending).toBeGreaterThan(0);
    await p.emulator.start({ port });
    await runUntil(p, H10 + 3 * HOUR_MS);
    assertMeteredOnce(p, acked);
  });

  it('carries usage through an outage longer than the six-hour window into later hours, never dropping it', async () => {
    const p = await pipeline();
    const acked = await usageOverHours(p, 2);
    const port = Number(new URL(p.emulator.url).port);
    await p.emulator.stop();
    await runUntil(p, H10 + 9 * HOUR_MS, 5 * 60_000);
    const during = p.ledger.status(p.clock.now());
    expect(during.records.carried).toBeGreaterThan(0);
    await p.emulator.start({ port });
    await runUntil(p, H10 + 11 * HOUR_MS, 5 * 60_000);

    expect(Object.fromEntries(p.emulator.totals())).toEqual(Object.fromEntries(acked));
    // Hour 10 was sent before the outage; hour 11 was sealed during it and carried into a later hour.
    const hours = p.emulator.records.map((r) => r.hourStartMs);
    expect(hours).toContain(H10);
    expect(hours).not.toContain(H10 + HOUR_MS);
    expect(Math.max(...hours)).toBeGreaterThanOrEqual(H10 + 6 * HOUR_MS);
    expect(p.ledger.status(p.clock.now()).records).toMatchObject({ pending: 0, failed: 0 });
  });
});
