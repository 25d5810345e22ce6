/**
 * Metrics across a scripted scenario on the real pipeline: usage in, a rejected request, the hour sealed,
 * MeterUsage throttled then accepted. The exposition must parse as Prometheus text and each value must move.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { HOUR_MS } from '../../src/clock.js';
import { PACING_MIN_RATE } from '../../src/send/pacing.js';
import { startPipeline, type Pipeline } from '../helpers/pipeline.js';
import { parsePrometheus, sampleValue, type Sample } from '../helpers/prometheus.js';
import { TempDirs } from '../helpers/tmp.js';

const H10 = Date.parse('2026-03-01T10:00:00Z');
const dirs = new TempDirs();
const pipelines: Pipeline[] = [];

afterEach(async () => {
  for (const p of pipelines.splice(0)) await p.close();
  dirs.cleanup();
});

async function scrape(p: Pipeline): Promise<Sample[]> {
  const { contentType, body } = await p.metrics.text();
  expect(contentType).toBe('text/plain; version=0.0.4; charset=utf-8');
  return parsePrometheus(body);
}

describe('metrics', () => {
  it('move as usage is accepted, sealed, throttled and sent', async () => {
    // Prepare
    const p = await startPipeline({
      stateDir: dirs.make(),
      start: H10 + 60_000,
      dimensions: ['requests', 'gb'],
    });
    pipelines.push(p);
    const before = await scrape(p);
    expect(sampleValue(before, 'metering_usage_quantity_total', { dimension: 'requests' })).toBe(0);

    // Act 1: usage in, one rejected request.
    await p.api.report([
      { dimension: 'requests', quantity: 5, tags: { tenant: 'acme' } },
      { dimension: 'gb', quantity: 2 },
    ]);
    await p.api.report({ dimension: 'requests', quantity: 3 });
    await p.api.report({ dimension: 'nope', quantity: 1 });
    const afterIntake = await scrape(p);

    // Act 2: the hour closes; AWS throttles the first attempt (gb: records are sent in sealing order).
    p.emulator.failNext('MeterUsage', 'ThrottlingException', 1);
    p.clock.set(H10 + HOUR_MS);
    await p.scheduler.runOnce({ includeOpen: false });
    const afterThrottle = await scrape(p);

    // Act 3: the retry is accepted.
    p.clock.set(p.ledger.nextAttemptMs()!);
    await p.scheduler.runOnce({ includeOpen: false });
    const afterSend = await scrape(p);

    // Assess
    expect(sampleValue(afterIntake, 'metering_usage_quantity_total', { dimension: 'requests' })).toBe(8);
    expect(sampleValue(afterIntake, 'metering_usage_quantity_total', { dimension: 'gb' })).toBe(2);
    expect(sampleValue(afterIntake, 'metering_intake_requests_total', { result: 'accepted', code: '' })).toBe(
      2,
    );
    expect(
      sampleValue(afterIntake, 'metering_intake_requests_total', {
        result: 'rejected',
        code: 'UnknownDimension',
      }),
    ).toBe(1);
    expect(sampleValue(afterIntake, 'metering_pending_quantity', { dimension: 'requests' })).toBe(8);
    expect(sampleValue(afterIntake, 'metering_ledger_size_bytes')).toBeGreaterThan(0);
    expect(sampleValue(afterIntake, 'metering_oldest_unsent_age_seconds')).toBe(0);

    expect(sampleValue(afterThrottle, 'metering_records_sealed_total', { dimension: 'requests' })).toBe(1);
    expect(sampleValue(afterThrottle, 'metering_records_sealed_total', { dimension: 'gb' })).toBe(1);
    expect(
      sampleValue(afterThrottle, 'metering_aws_calls_total', {
        operation: 'MeterUsage',
        outcome: 'error',
        error: 'ThrottlingException',
      }),
    ).toBe(1);
    expect(sampleValue(afterThrottle, 'metering_records_sent_total', { dimension: 'requests' })).toBe(1);
    expect(sampleValue(afterThrottle, 'metering_records_sent_total', { dimension: 'gb' })).toBe(0);
    expect(sampleValue(afterThrottle, 'metering_pending_quantity', { dimension: 'gb' })).toBe(2);
    expect(sampleValue(afterThrottle, 'metering_pending_quantity', { dimension: 'requests' })).toBe(0);
    expect(sampleValue(afterThrottle, 'metering_oldest_unsent_age_seconds')).toBe(HOUR_MS / 1000 - 60);
    // The pacer slowed down after the throttle; before it, nothing limited the sends.
    expect(sampleValue(afterIntake, 'metering_send_rate_limit_per_second')).toBe(0);
    expect(sampleValue(afterThrottle, 'metering_send_rate_limit_per_second')).toBeGreaterThanOrEqual(
      PACING_MIN_RATE,
    );

    expect(sampleValue(afterSend, 'metering_records_sent_total', { dimension: 'gb' })).toBe(1);
    expect(
      sampleValue(afterSend, 'metering_aws_calls_total', {
        operation: 'MeterUsage',
        outcome: 'success',
        error: '',
      }),
    ).toBe(2);
    expect(sampleValue(afterSend, 'metering_pending_quantity', { dimension: 'gb' })).toBe(0);
    expect(sampleValue(afterSend, 'metering_oldest_unsent_age_seconds')).toBe(0);
    expect(sampleValue(afterSend, 'metering_last_success_timestamp_seconds')).toBeGreaterThan(
      Date.now() / 1000 - 60,
    );
    expect(
      sampleValue(afterSend, 'metering_aws_call_duration_seconds_count', { operation: 'MeterUsage' }),
    ).toBe(3);
    // Default process metrics, under the names stock Node.js dashboards and alerts query.
    for (const name of [
      'process_cpu_seconds_total',
      'process_resident_memory_bytes',
      'nodejs_heap_size_used_bytes',
      'nodejs_eventloop_lag_seconds',
      'nodejs_eventloop_lag_p99_seconds',
    ])
      expect(
        afterSend.some((s) => s.name === name),
        name,
      ).toBe(true);
    // Only the product's own series carry the prefix.
    expect(afterSend.filter((s) => /^metering_(process|nodejs)_/.test(s.name))).toEqual([]);
  });

  it('counts failed and carried records by dimension and error', async () => {
    const p = await startPipeline({ stateDir: dirs.make(), start: H10 + 60_000 });
    pipelines.push(p);
    await p.api.report([
      { dimension: 'a', quantity: 1 },
      { dimension: 'b', quantity: 1 },
    ]);
    p.emulator.failNext('MeterUsage', 'InvalidUsageDimensionException', 1);
    p.emulator.failNext('MeterUsage', 'TimestampOutOfBoundsException', 1);
    p.clock.set(H10 + HOUR_MS);
    await p.scheduler.runOnce({ includeOpen: false });
    const samples = await scrape(p);
    expect(
      sampleValue(samples, 'metering_records_failed_total', {
        dimension: 'a',
        error: 'InvalidUsageDimensionException',
      }),
    ).toBe(1);
    expect(sampleValue(samples, 'metering_records_carried_total', { dimension: 'b' })).toBe(1);
  });

  it('never labels by more than 24 dimensions', async () => {
    const p = await startPipeline({ stateDir: dirs.make(), start: H10 + 60_000 });
    pipelines.push(p);
    await p.api.report(Array.from({ length: 40 }, (_, i) => ({ dimension: `d${i}`, quantity: 1 })));
    const samples = await scrape(p);
    const labels = new Set(
      samples.filter((s) => s.name === 'metering_usage_quantity_total').map((s) => s.labels['dimension']),
    );
    expect(labels.size).toBe(25);
    expect(sampleValue(samples, 'metering_usage_quantity_total', { dimension: 'other' })).toBe(16);
  });
});
