/**
 * Pacing under the account's shared quota, end to end: the scheduler and dispatcher following the process-wide
 * pacer, through the real SDK client against the emulator, on an injected clock.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { HOUR_MS } from '../../src/clock.js';
import { PACING_MIN_RATE } from '../../src/send/pacing.js';
import { driveClock, startPipeline, type Pipeline } from '../helpers/pipeline.js';
import { TempDirs } from '../helpers/tmp.js';

const H10 = Date.parse('2026-03-01T10:00:00Z');
const H11 = H10 + HOUR_MS;
const DIMENSIONS = ['requests', 'gb', 'nodes'];

const dirs = new TempDirs();
const pipelines: Pipeline[] = [];

afterEach(async () => {
  for (const p of pipelines.splice(0)) await p.close();
  dirs.cleanup();
});

/** A pipeline with one unit of each dimension acknowledged in the 10:00 hour. */
async function withUsage(): Promise<Pipeline> {
  const p = await startPipeline({ stateDir: dirs.make(), start: H10 + 60_000, dimensions: DIMENSIONS });
  pipelines.push(p);
  await p.api.report(DIMENSIONS.map((dimension) => ({ dimension, quantity: 1 })));
  return p;
}

function meterCalls(p: Pipeline): { atMs: number; outcome: string | number }[] {
  return p.emulator.calls
    .filter((c) => c.operation === 'MeterUsage')
    .map((c) => ({ atMs: c.atMs, outcome: c.error ?? c.status }));
}

/** When the MeterUsage call of `dimension` reached the emulator. */
function meterCallAt(p: Pipeline, dimension: string): number {
  const call = p.emulator.calls.find(
    (c) =>
      c.operation === 'MeterUsage' && (c.input as { UsageDimension?: string }).UsageDimension === dimension,
  );
  return call!.atMs;
}

describe('pacing', () => {
  it('spreads the records of an hourly tick over METERING_SEND_JITTER_SECONDS, each at its own instant', async () => {
    const draws = [0.1, 0.9, 0.5];
    const p = await startPipeline({
      stateDir: dirs.make(),
      start: H10 + 60_000,
      dimensions: DIMENSIONS,
      sendJitterSeconds: 600,
      random: () => draws.shift() ?? 0.5,
    });
    pipelines.push(p);
    await p.api.report(DIMENSIONS.map((dimension) => ({ dimension, quantity: 1 })));
    p.clock.set(H11);

    p.scheduler.tick();
    for (let i = 0; i < 20 && p.emulator.records.length < 3; i++) {
      await new Promise((resolve) => setTimeout(resolve, 20));
      const [next] = p.clock.pendingTimers;
      if (next !== undefined) p.clock.set(next);
    }

    expect(Object.fromEntries(p.emulator.totals())).toEqual({ requests: 1, gb: 1, nodes: 1 });
    // Records are sealed in dimension order (gb, nodes, requests): 60 s, 540 s and 300 s into the spread.
    const sent = p.emulator.records.map((r) => [r.dimension, meterCallAt(p, r.dimension) - H11]);
    expect(Object.fromEntries(sent)).toEqual({ gb: 60_000, nodes: 540_000, requests: 300_000 });
  });

  it('after a throttle, defers the hourly sends the pacer holds back and resumes them on its timer', async () => {
    const p = await withUsage();
    p.emulator.failNext('MeterUsage', 'ThrottlingException', 1);
    p.clock.set(H11);

    const summary = await p.scheduler.runOnce({ includeOpen: false });

    // The throttled record waits; the bucket's one token lets the next go at once; the last is held back.
    expect(summary).toMatchObject({ sealed: 3, sent: 1, retrying: 1, paced: true });
    expect(summary.resumeAtMs).toBeGreaterThan(H11);
    expect(meterCalls(p).map((c) => c.outcome)).toEqual(['ThrottlingException', 200]);
    expect(p.ledger.status(p.clock.now()).records.pending).toBe(2);
    // The scheduler's retry timer waits for the pacer, not only for the records' own retry times.
    expect(p.clock.pendingTimers[0]).toBe(summary.resumeAtMs);

    for (let i = 0; i < 10 && p.emulator.records.length < 3; i++) {
      p.clock.set(p.clock.pendingTimers[0]);
      await new Promise((resolve) => setTimeout(resolve, 50));
      await p.scheduler.runOnce({ includeOpen: false });
    }

    expect(Object.fromEntries(p.emulator.totals())).toEqual({ requests: 1, gb: 1, nodes: 1 });
    const calls = meterCalls(p);
    expect(calls.map((c) => c.outcome)).toEqual(['ThrottlingException', 200, 200, 200]);
    // The record held back went one token at the slowed rate (the floor, stretched) after the throttle; then
    // the pacer recovers on success and the throttled record follows sooner.
    expect(calls[2].atMs - calls[0].atMs).toBeGreaterThanOrEqual(1000 / PACING_MIN_RATE);
    expect(calls[3].atMs - calls[2].atMs).toBeLessThan(calls[2].atMs - calls[0].atMs);
  });

  it('spreads a paced shutdown flush over the first half of its time', async () => {
    const p = await withUsage();
    const startMs = p.clock.now();

    const summary = await driveClock(p, p.scheduler.flush(startMs + 20_000, { paced: true }));

    expect(summary).toMatchObject({ sealed: 3, sent: 3, retrying: 0, paced: false });
    const times = meterCalls(p).map((c) => c.atMs - startMs);
    // Each record at a random instant of its own third of the first 10 s (the test's random is 0.5).
    expect(times).toHaveLength(3);
    times.forEach((t, i) => {
      expect(t).toBeGreaterThanOrEqual((i * 10_000) / 3);
      expect(t).toBeLessThan(((i + 1) * 10_000) / 3 + 100);
    });
  });

  it('ends a paced shutdown flush at the first throttle, leaving the rest pending for a handoff', async () => {
    const p = await withUsage();
    p.emulator.failNext('MeterUsage', 'ThrottlingException', 1);
    const startMs = p.clock.now();

    const summary = await driveClock(p, p.scheduler.flush(startMs + 20_000, { paced: true }));

    expect(summary).toMatchObject({ sealed: 3, sent: 0, retrying: 3, paced: true });
    expect(meterCalls(p).map((c) => c.outcome)).toEqual(['ThrottlingException']);
    expect(p.clock.now() - startMs).toBeLessThan(10_000);
    expect(p.ledger.status(p.clock.now()).records).toMatchObject({ pending: 3, sent: 0 });
  });

  it('ends a paced shutdown flush, without a throttled call, once peers stopping with it hand off', async () => {
    const p = await withUsage();
    const startMs = p.clock.now();
    let asked = 0;
    // Peers' handoffs appear after this sidecar's first send.
    const yieldWhen = (): Promise<boolean> => Promise.resolve(asked++ > 0);

    const summary = await driveClock(p, p.scheduler.flush(startMs + 20_000, { paced: true, yieldWhen }));

    expect(summary).toMatchObject({ sealed: 3, sent: 1, retrying: 2, paced: true });
    expect(meterCalls(p).map((c) => c.outcome)).toEqual([200]);
    expect(p.ledger.status(p.clock.now()).records).toMatchObject({ pending: 2, sent: 1 });
  });

  it('ends a paced shutdown flush when the pacer would only let the next send go after the deadline', async () => {
    const p = await withUsage();
    // An hourly send throttled a minute before the shutdown: the pacer is slowed down.
    p.emulator.failNext('MeterUsage', 'ThrottlingException', 2);
    p.clock.set(H11);
    await p.scheduler.runOnce({ includeOpen: false });
    const startMs = p.clock.now();

    // A 3 s flush: less than one token at the slowed rate.
    const summary = await driveClock(p, p.scheduler.flush(startMs + 3_000, { paced: true }));

    expect(summary).toMatchObject({ sent: 0, paced: true });
    expect(meterCalls(p)).toHaveLength(2);
    expect(p.ledger.status(p.clock.now()).records.pending).toBe(3);
  });

  it('does not hold back a shutdown flush without a handoff directory: it is the usage’s last chance', async () => {
    const p = await withUsage();
    p.emulator.failNext('MeterUsage', 'ThrottlingException', 4);
    const startMs = p.clock.now();

    const summary = await driveClock(p, p.scheduler.flush(startMs + 10_000));

    expect(summary).toMatchObject({ sealed: 3, sent: 3, paced: false });
    expect(Object.fromEntries(p.emulator.totals())).toEqual({ requests: 1, gb: 1, nodes: 1 });
    // Seven calls in less than the 5 s one token takes at the slowed rate.
    expect(meterCalls(p)).toHaveLength(7);
    expect(p.clock.now() - startMs).toBeLessThan(5_000);
  });
});
