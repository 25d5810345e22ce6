/**
 * The pipeline end to end with an injected clock: HTTP intake → SQLite ledger → scheduler → real SDK client →
 * emulator. Every scenario compares what the emulator metered with what intake acknowledged.
 */
import { MarketplaceMeteringClient, MeterUsageCommand } from '@aws-sdk/client-marketplace-metering';
import { afterEach, describe, expect, it } from 'vitest';
import { HOUR_MS } from '../../src/clock.js';
import { MeteringEmulator } from '../../src/emulator/emulator.js';
import { DRY_RUN_RECORD_ID } from '../../src/send/awsErrors.js';
import { driveClock, startPipeline, type Pipeline } from '../helpers/pipeline.js';
import { TempDirs } from '../helpers/tmp.js';

const H10 = Date.parse('2026-03-01T10:00:00Z');
const H11 = H10 + HOUR_MS;

const dirs = new TempDirs();
const pipelines: Pipeline[] = [];

afterEach(async () => {
  for (const p of pipelines.splice(0)) await p.close();
  dirs.cleanup();
});

async function pipeline(options: Partial<Parameters<typeof startPipeline>[0]> = {}): Promise<Pipeline> {
  const p = await startPipeline({ stateDir: dirs.make(), ...options });
  pipelines.push(p);
  return p;
}

describe('metering pipeline', () => {
  it('meters an hour of usage once, after the hour closes, with its allocations', async () => {
    // Prepare
    const p = await pipeline({ start: H10 + 60_000 });
    expect(
      (await p.api.report({ dimension: 'requests', quantity: 3, tags: { tenant: 'acme' } })).status,
    ).toBe(202);
    p.clock.set(H10 + 120_000);
    expect(
      (
        await p.tcpApi.report([
          { dimension: 'requests', quantity: 4 },
          { dimension: 'gb', quantity: 9 },
        ])
      ).status,
    ).toBe(202);

    // Act
    expect(await p.scheduler.runOnce({ includeOpen: false })).toMatchObject({ sealed: 0, sent: 0 });
    p.clock.set(H11 + 1000);
    const summary = await p.scheduler.runOnce({ includeOpen: false });

    // Assess
    expect(summary).toMatchObject({ sealed: 2, sent: 2, retrying: 0, failed: 0 });
    const requests = p.emulator.records.find((r) => r.dimension === 'requests')!;
    expect(requests).toMatchObject({
      identity: 'TASK1',
      productCode: 'prod',
      hourStartMs: H10,
      timestampMs: H10 + 60_000,
      quantity: 7,
    });
    expect(requests.allocations).toEqual([
      { quantity: 3, tags: { tenant: 'acme' } },
      { quantity: 4, tags: {} },
    ]);
    expect(Object.fromEntries(p.emulator.totals())).toEqual({ requests: 7, gb: 9 });
    expect(p.ledger.status(p.clock.now()).records).toMatchObject({ pending: 0, sent: 2 });

    await p.scheduler.runOnce({ includeOpen: false });
    expect(p.emulator.calls.filter((c) => c.operation === 'MeterUsage')).toHaveLength(2);
  });

  it('retries throttling and 500s with backoff until the record arrives once', async () => {
    const p = await pipeline({ start: H10 + 60_000 });
    await p.api.report({ dimension: 'requests', quantity: 5 });
    p.emulator.failNext('MeterUsage', 'ThrottlingException', 2);
    p.emulator.failNext('MeterUsage', 'InternalServiceErrorException', 1);
    p.clock.set(H11);

    expect(await p.scheduler.runOnce({ includeOpen: false })).toMatchObject({
      sealed: 1,
      sent: 0,
      retrying: 1,
    });
    // Backoff: the record is not due again at once.
    expect(await p.scheduler.runOnce({ includeOpen: false })).toMatchObject({ sent: 0, retrying: 0 });
    for (let i = 0; i < 3; i++) {
      p.clock.set(p.ledger.nextAttemptMs()!);
      await p.scheduler.runOnce({ includeOpen: false });
    }

    expect(p.emulator.records).toHaveLength(1);
    expect(p.emulator.records[0].quantity).toBe(5);
    const calls = p.emulator.calls.filter((c) => c.operation === 'MeterUsage');
    expect(calls.map((c) => c.error ?? c.status)).toEqual([
      'ThrottlingException',
      'ThrottlingException',
      'InternalServiceErrorException',
      200,
    ]);
    // Every resend is byte-identical: same ClientToken and same body.
    expect(new Set(calls.map((c) => JSON.stringify(c.input))).size).toBe(1);
  });

  it('retries through the timer armed for the next attempt', async () => {
    const p = await pipeline({ start: H10 + 60_000 });
    await p.api.report({ dimension: 'requests', quantity: 5 });
    p.emulator.failNext('MeterUsage', 'ThrottlingException', 1);
    p.clock.set(H11);
    await p.scheduler.runOnce({ includeOpen: false });
    expect(p.clock.pendingTimers).toEqual([p.ledger.nextAttemptMs()]);

    p.clock.set(p.ledger.nextAttemptMs()!); // fires the scheduler's retry timer
    await waitFor(() => p.emulator.records.length === 1);
    expect(p.emulator.records[0].quantity).toBe(5);
  });

  it('treats a 500 as possibly delivered, and resends the same request', async () => {
    const p = await pipeline({ start: H10 + 60_000 });
    await p.api.report({ dimension: 'requests', quantity: 2 });
    p.emulator.failNext('MeterUsage', 'InternalServiceErrorException', 1);
    p.clock.set(H11);
    expect(await p.scheduler.runOnce({ includeOpen: false })).toMatchObject({ retrying: 1 });
    expect(p.ledger.pending()[0].maybeDelivered).toBe(true);
    p.clock.set(p.ledger.nextAttemptMs()!);
    await p.scheduler.runOnce({ includeOpen: false });
    expect(p.emulator.totals().get('requests')).toBe(2);
  });

  it.each([
    ['UnrecognizedClientException'],
    ['ExpiredTokenException'],
    ['AccessDeniedException'],
    ['RequestExpired'],
  ])('retries a record refused with %s once the credentials heal, never failing it', async (errorName) => {
    // Regression: credential errors that did not match a name pattern failed the record for good.
    const p = await pipeline({ start: H10 + 60_000 });
    await p.api.report({ dimension: 'requests', quantity: 3 });
    p.emulator.failNext('MeterUsage', errorName, 2);
    p.clock.set(H11);
    await p.scheduler.runOnce({ includeOpen: false });
    expect(p.ledger.pending()[0]).toMatchObject({ maybeDelivered: false });
    for (let i = 0; i < 2; i++) {
      p.clock.set(p.ledger.nextAttemptMs()!);
      await p.scheduler.runOnce({ includeOpen: false });
    }
    expect(p.ledger.status(p.clock.now()).records).toMatchObject({ sent: 1, failed: 0 });
    expect(p.emulator.totals().get('requests')).toBe(3);
  });

  it('marks a DuplicateRequestException failed, alerts, and never resends another quantity', async () => {
    const p = await pipeline({ start: H10 + 60_000 });
    // Another sender with the same identity already metered this hour with another quantity.
    const other = new MarketplaceMeteringClient({
      region: 'us-east-1',
      endpoint: p.emulator.url,
      credentials: { accessKeyId: 'TASK1', secretAccessKey: 'x' },
      maxAttempts: 1,
    });
    await other.send(
      new MeterUsageCommand({
        ProductCode: 'prod',
        Timestamp: new Date(H10 + 1000),
        UsageDimension: 'requests',
        UsageQuantity: 1,
      }),
    );
    other.destroy();
    await p.api.report({ dimension: 'requests', quantity: 8 });
    p.clock.set(H11);

    expect(await p.scheduler.runOnce({ includeOpen: false })).toMatchObject({ failed: 1 });
    p.clock.set(H11 + 2 * HOUR_MS);
    await p.scheduler.runOnce({ includeOpen: false });

    const calls = p.emulator.calls.filter((c) => c.operation === 'MeterUsage' && c.identity === 'TASK1');
    expect(calls.map((c) => c.error ?? c.status)).toEqual([200, 'DuplicateRequestException']);
    const status = p.ledger.status(p.clock.now());
    expect(status.records).toMatchObject({ failed: 1, pending: 0 });
    expect(status.failed[0].error).toMatch(/^DuplicateRequestException/);
    const alert = p.logLines().find((l) => l['code'] === 'DuplicateRequestException');
    expect(alert).toMatchObject({ level: 'error', alert: true, dimension: 'requests' });
  });

  it.each([
    ['InvalidUsageDimensionException'],
    ['InvalidTagException'],
    ['InvalidUsageAllocationsException'],
    ['CustomerNotEntitledException'],
    ['InvalidEndpointRegionException'],
    ['InvalidProductCodeException'],
  ])('keeps a record refused with %s as failed with the error', async (errorName) => {
    const p = await pipeline({ start: H10 + 60_000 });
    await p.api.report({ dimension: 'requests', quantity: 1 });
    p.emulator.failNext('MeterUsage', errorName, 1);
    p.clock.set(H11);
    expect(await p.scheduler.runOnce({ includeOpen: false })).toMatchObject({ failed: 1 });
    p.clock.set(H11 + HOUR_MS);
    await p.scheduler.runOnce({ includeOpen: false });
    expect(p.emulator.calls).toHaveLength(1);
    expect(p.ledger.status(p.clock.now()).failed[0].error).toContain(errorName);
  });

  it('carries usage through an outage longer than the six-hour window, into a later hour', async () => {
    const p = await pipeline({ start: H10 + 60_000 });
    await p.api.report({ dimension: 'requests', quantity: 6, tags: { t: 'a' } });
    // AWS throttles everything for seven hours.
    p.emulator.failNext('MeterUsage', 'ThrottlingException', 10_000);
    p.clock.set(H11);
    await p.scheduler.runOnce({ includeOpen: false });
    while (p.clock.now() < H10 + 7 * HOUR_MS) {
      p.clock.set(Math.max(p.ledger.nextAttemptMs() ?? p.clock.now() + 60_000, p.clock.now() + 60_000));
      await p.scheduler.runOnce({ includeOpen: false });
    }
    expect(p.ledger.status(p.clock.now()).records).toMatchObject({ carried: 1 });
    p.emulator.reset(); // the outage ends

    p.clock.set(H10 + 9 * HOUR_MS);
    await p.scheduler.runOnce({ includeOpen: false });

    expect(p.emulator.records).toHaveLength(1);
    const record = p.emulator.records[0];
    expect(record.quantity).toBe(6);
    expect(record.hourStartMs).toBe(H10 + 5 * HOUR_MS + 0); // carried at 15:46 into the 15:00 hour
    expect(record.allocations).toEqual([{ quantity: 6, tags: { t: 'a' } }]);
  });

  it('carries a record that AWS calls out of bounds', async () => {
    const p = await pipeline({ start: H10 + 60_000 });
    await p.api.report({ dimension: 'requests', quantity: 4 });
    p.emulator.failNext('MeterUsage', 'TimestampOutOfBoundsException', 1);
    p.clock.set(H11 + 60_000);
    expect(await p.scheduler.runOnce({ includeOpen: false })).toMatchObject({ carried: 1 });
    p.clock.set(H11 + HOUR_MS);
    await p.scheduler.runOnce({ includeOpen: false });
    expect(p.emulator.records.map((r) => [r.hourStartMs, r.quantity])).toEqual([[H11, 4]]);
  });

  it('does not carry a record whose answer was lost: AWS had it, and the resend says so', async () => {
    const p = await pipeline({ start: H10 + 60_000 });
    await p.api.report({ dimension: 'requests', quantity: 4 });
    p.emulator.failNext('MeterUsage', 'ResetAfterProcessing', 1);
    p.clock.set(H11);
    expect(await p.scheduler.runOnce({ includeOpen: false })).toMatchObject({ retrying: 1 });
    expect(p.ledger.pending()[0].maybeDelivered).toBe(true);

    p.clock.set(p.ledger.nextAttemptMs()!); // fires the retry timer
    await p.scheduler.runOnce({ includeOpen: false }); // runs after the retry
    expect(p.ledger.status(p.clock.now()).records).toMatchObject({ sent: 1, pending: 0 });
    expect(p.emulator.records).toHaveLength(1);
    expect(p.emulator.totals().get('requests')).toBe(4);
  });

  it('keeps as failed, not carried, a record whose window closes after an attempt that may have arrived', async () => {
    const p = await pipeline({ start: H10 + 60_000 });
    await p.api.report({ dimension: 'requests', quantity: 4 });
    p.emulator.failNext('MeterUsage', 'ResetAfterProcessing', 1);
    p.emulator.failNext('MeterUsage', 'ThrottlingException', 10_000);
    p.clock.set(H11);
    await p.scheduler.runOnce({ includeOpen: false });
    p.clock.set(H10 + 7 * HOUR_MS);
    await p.scheduler.runOnce({ includeOpen: false });
    expect(p.ledger.status(p.clock.now()).records).toMatchObject({ failed: 1, carried: 0, pending: 0 });

    expect(p.emulator.totals().get('requests')).toBe(4); // billed once, by the first attempt
    expect(p.ledger.status(p.clock.now()).open).toEqual([]);
    expect(p.logLines().some((l) => l['code'] === 'ERR_SEND_AMBIGUOUS' && l['alert'] === true)).toBe(true);
  });

  // Regression: a possibly delivered record was failed at the carry deadline, 15 minutes before AWS's window
  // closed, without a resend; one AWS never had was then never billed.
  it('resends a possibly delivered record with its ClientToken until the window closes, billing it once', async () => {
    // Prepare: a 500 makes the record possibly delivered (AWS did not record it), then AWS is unreachable.
    const p = await pipeline({ start: H10 + 60_000 });
    await p.api.report({ dimension: 'requests', quantity: 4 });
    p.emulator.failNext('MeterUsage', 'InternalServiceErrorException', 1);
    p.clock.set(H11);
    await p.scheduler.runOnce({ includeOpen: false });
    const port = Number(new URL(p.emulator.url).port);
    await p.emulator.stop();
    await runUntil(p, H10 + 60_000 + 5 * HOUR_MS + 50 * 60_000);
    expect(p.ledger.status(p.clock.now()).records).toMatchObject({ pending: 1, failed: 0, carried: 0 });

    // Act: AWS is back in the last ten minutes of the window.
    await p.emulator.start({ port });
    await runUntil(p, H10 + 60_000 + 6 * HOUR_MS - 60_000);

    // Assess: sent with the same token and body, billed once, nothing carried.
    expect(p.ledger.status(p.clock.now()).records).toMatchObject({
      pending: 0,
      sent: 1,
      failed: 0,
      carried: 0,
    });
    expect(p.emulator.records.map((r) => r.quantity)).toEqual([4]);
    const bodies = new Set(
      p.emulator.calls.filter((c) => c.operation === 'MeterUsage').map((c) => JSON.stringify(c.input)),
    );
    expect(bodies.size).toBe(1);
  });

  it('treats a timed-out request as maybe delivered and resends it byte-identical', async () => {
    const p = await pipeline({ start: H10 + 60_000, requestTimeoutMs: 200 });
    await p.api.report({ dimension: 'requests', quantity: 4 });
    p.emulator.failNext('MeterUsage', 'Timeout', 1);
    p.clock.set(H11);
    expect(await p.scheduler.runOnce({ includeOpen: false })).toMatchObject({ retrying: 1 });
    expect(p.ledger.pending()[0]).toMatchObject({ maybeDelivered: true });
    p.clock.set(p.ledger.nextAttemptMs()!);
    await p.scheduler.runOnce({ includeOpen: false });
    expect(p.ledger.status(p.clock.now()).records).toMatchObject({ sent: 1, pending: 0 });
    expect(p.emulator.totals().get('requests')).toBe(4);
  });

  it('in dry-run mode sends DryRun requests, bills nothing and marks records sent', async () => {
    const p = await pipeline({ start: H10 + 60_000, dryRun: true });
    await p.api.report({ dimension: 'requests', quantity: 4 });
    p.clock.set(H11);
    expect(await p.scheduler.runOnce({ includeOpen: false })).toMatchObject({ sent: 1 });
    expect(p.emulator.records).toEqual([]);
    expect(p.emulator.calls[0]).toMatchObject({ error: 'DryRunOperation' });
    expect((p.emulator.calls[0].input as { DryRun: boolean }).DryRun).toBe(true);
    expect(p.ledger.status(p.clock.now()).records.sent).toBe(1);
    expect(p.ledger.get(1)!.meteringRecordId).toBe(DRY_RUN_RECORD_ID);
  });

  it('accepts a DryRun answered with plain success', async () => {
    const dir = dirs.make();
    const clockStart = H10 + 60_000;
    const emulator = new MeteringEmulator({
      productCode: 'prod',
      dryRunResponse: 'success',
      now: () => p.clock.now(),
    });
    await emulator.start();
    const p = await pipeline({ stateDir: dir, start: clockStart, dryRun: true, emulator });
    await p.api.report({ dimension: 'requests', quantity: 4 });
    p.clock.set(H11);
    expect(await p.scheduler.runOnce({ includeOpen: false })).toMatchObject({ sent: 1 });
    await emulator.stop();
  });

  it('at shutdown seals the open hour; usage after a restart in the same hour goes to the next hour', async () => {
    const dir = dirs.make();
    let clockNow = (): number => 0;
    const emulator = new MeteringEmulator({ productCode: 'prod', now: () => clockNow() });
    await emulator.start();
    const first = await startPipeline({ stateDir: dir, start: H10 + 60_000, emulator });
    clockNow = () => first.clock.now();
    await first.api.report({ dimension: 'requests', quantity: 3 });
    expect(await first.scheduler.flush(first.clock.now() + 20_000)).toMatchObject({ sealed: 1, sent: 1 });
    await first.close();

    const second = await startPipeline({ stateDir: dir, clock: first.clock, emulator });
    pipelines.push(second);
    second.clock.set(H10 + 30 * 60_000);
    await second.api.report({ dimension: 'requests', quantity: 5 });
    // Shutdown again in the same hour: the next hour has not begun, so its usage stays in the ledger.
    expect(await second.scheduler.flush(second.clock.now() + 20_000)).toMatchObject({ sealed: 0, sent: 0 });
    expect(second.ledger.status(second.clock.now()).open).toEqual([
      { dimension: 'requests', hourStartMs: H11, quantity: 5, tagSets: 1 },
    ]);

    second.clock.set(H11 + HOUR_MS);
    await second.scheduler.runOnce({ includeOpen: false });
    expect(emulator.records.map((r) => [r.hourStartMs, r.quantity])).toEqual([
      [H10, 3],
      [H11, 5],
    ]);
    await emulator.stop();
  });

  // Regression: the shutdown flush only sent records already due, so a record waiting out the hourly
  // backoff (attempt 5: next retry a minute away) was left unsent by a 20 s shutdown.
  it('at shutdown tries at once a record waiting out its backoff, then retries quickly until the deadline', async () => {
    // Prepare: five throttles put the record at attempts=5, its next retry well past a 20 s deadline.
    const p = await pipeline({ start: H10 + 60_000 });
    await p.api.report({ dimension: 'requests', quantity: 6 });
    p.emulator.failNext('MeterUsage', 'ThrottlingException', 5);
    p.clock.set(H11 + 1000);
    await p.scheduler.runOnce({ includeOpen: false });
    for (let i = 0; i < 4; i++) {
      p.clock.set(p.ledger.nextAttemptMs()!);
      await p.scheduler.runOnce({ includeOpen: false });
    }
    const [record] = p.ledger.pending();
    expect(record.attempts).toBe(5);
    const startMs = p.clock.now();
    expect(record.nextAttemptMs - startMs).toBeGreaterThan(20_000);

    // Act: shut down with a 20 s deadline while AWS throttles three more times.
    p.emulator.failNext('MeterUsage', 'ThrottlingException', 3);
    const summary = await driveClock(p, p.scheduler.flush(startMs + 20_000));

    // Assess: sent within the deadline, once.
    expect(summary).toMatchObject({ sent: 1, retrying: 0 });
    expect(p.clock.now() - startMs).toBeLessThan(20_000);
    expect(p.emulator.records.map((r) => r.quantity)).toEqual([6]);
    expect(p.ledger.status(p.clock.now()).records).toMatchObject({ pending: 0, sent: 1 });
  });

  // Regression: after the clock stepped back inside the hour, the record kept a timestamp ahead of the clock,
  // AWS refused it, and it was carried into an hour that had not begun (exit 75).
  it('after the clock steps back inside the hour, meters the hour at shutdown with a timestamp the clock reached', async () => {
    const p = await pipeline({ start: H10 + 50 * 60_000 });
    await p.api.report({ dimension: 'requests', quantity: 5 });
    p.clock.set(H10 + 5 * 60_000);

    const summary = await driveClock(p, p.scheduler.flush(p.clock.now() + 20_000));

    expect(summary).toMatchObject({ sealed: 1, sent: 1, carried: 0 });
    // The flush seals by the clock, which driveClock moves on while the ledger's writes wait for the disk: the
    // timestamp is a time the clock reached after stepping back, never the 10:50 the usage was first stamped.
    const [record] = p.emulator.records;
    expect(p.emulator.records).toHaveLength(1);
    expect([record.hourStartMs, record.quantity]).toEqual([H10, 5]);
    expect(record.timestampMs).toBeGreaterThanOrEqual(H10 + 5 * 60_000);
    expect(record.timestampMs).toBeLessThanOrEqual(p.clock.now());
    expect(record.timestampMs).toBeLessThan(H10 + 50 * 60_000);
    expect(p.ledger.status(p.clock.now())).toMatchObject({ open: [], records: { pending: 0 } });
  });

  it('at shutdown keeps retrying transient failures until the deadline, then leaves the record pending', async () => {
    const p = await pipeline({ start: H10 + 60_000 });
    await p.api.report({ dimension: 'requests', quantity: 2 });
    p.emulator.failNext('MeterUsage', 'ThrottlingException', 10_000);
    const startMs = p.clock.now();

    const summary = await driveClock(p, p.scheduler.flush(startMs + 10_000));

    const calls = p.emulator.calls.filter((c) => c.operation === 'MeterUsage');
    // A short bounded backoff: many attempts in 10 s, none after the deadline.
    expect(calls.length).toBeGreaterThan(5);
    expect(Math.max(...calls.map((c) => c.atMs))).toBeLessThanOrEqual(startMs + 10_000);
    expect(summary).toMatchObject({ sealed: 1, sent: 0, retrying: 1 });
    expect(p.ledger.status(p.clock.now()).records.pending).toBe(1);
  });
});

async function waitFor(condition: () => boolean, timeoutMs = 5000): Promise<void> {
  const start = Date.now();
  while (!condition()) {
    if (Date.now() - start > timeoutMs) throw new Error('condition not met in time');
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** Advances the clock in `stepMs` steps to `untilMs`, running the scheduler (and its due retries) at each. */
async function runUntil(p: Pipeline, untilMs: number, stepMs = 60_000): Promise<void> {
  while (p.clock.now() < untilMs) {
    p.clock.set(Math.min(untilMs, p.clock.now() + stepMs));
    await p.scheduler.runOnce({ includeOpen: false });
  }
}
