/**
 * Corrections (`DELETE /v1/usage/{id}`) and unit scaling through the real pipeline: intake on real sockets, the
 * SQLite ledger, the real SDK client against the emulator, the scheduler driven by runOnce().
 */
import { request } from 'node:http';
import { afterEach, describe, expect, it } from 'vitest';
import { HOUR_MS } from '../../src/clock.js';
import { rejection } from '../../src/intake/usage.js';
import { parsePrometheus, sampleValue } from '../helpers/prometheus.js';
import { startPipeline, type Pipeline } from '../helpers/pipeline.js';
import { TempDirs } from '../helpers/tmp.js';

const H10 = Date.parse('2026-03-01T10:00:00Z');
const H11 = H10 + HOUR_MS;
const H12 = H11 + HOUR_MS;
const GIB = 2 ** 30;

const dirs = new TempDirs();
const pipelines: Pipeline[] = [];
afterEach(async () => {
  for (const p of pipelines.splice(0)) await p.close();
  dirs.cleanup();
});

async function pipeline(options: Partial<Parameters<typeof startPipeline>[0]> = {}): Promise<Pipeline> {
  const p = await startPipeline({ stateDir: dirs.make(), start: H10 + 60_000, ...options });
  pipelines.push(p);
  return p;
}

/** A raw request over the unix socket, for paths the client would encode. */
function raw(socketPath: string, method: string, path: string): Promise<{ status: number; body: unknown }> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath, method, path, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () =>
        resolve({ status: res.statusCode ?? 0, body: JSON.parse(Buffer.concat(chunks).toString('utf8')) }),
      );
    });
    req.on('error', reject);
    req.end();
  });
}

async function scrape(p: Pipeline) {
  return parsePrometheus(await p.metrics.registry.metrics());
}

describe('DELETE /v1/usage/{id}', () => {
  it('cancels a report before its hour is sealed: AWS is billed only what stayed', async () => {
    // Prepare
    const p = await pipeline({ dimensions: ['requests'] });
    const id = 'order 42/line 1'; // a space and a slash: percent-encoded by the client
    expect(
      (await p.api.report({ dimension: 'requests', quantity: 5, id, tags: { tenant: 'acme' } })).status,
    ).toBe(202);
    expect((await p.api.report({ dimension: 'requests', quantity: 2 })).status).toBe(202);

    // Act
    p.clock.set(H10 + 120_000);
    const cancelled = await p.api.cancel(id);
    const repeat = await p.api.cancel(id);
    const resend = await p.api.report({ dimension: 'requests', quantity: 5, id, tags: { tenant: 'acme' } });
    p.clock.set(H11 + 1_000);
    await p.scheduler.runOnce({ includeOpen: false });
    const afterSeal = await p.api.cancel(id);

    // Assess
    expect(cancelled).toEqual({
      status: 200,
      body: {
        id,
        dimension: 'requests',
        quantity: 5,
        tags: { tenant: 'acme' },
        hour: '2026-03-01T10:00:00.000Z',
        reportedAt: '2026-03-01T10:01:00.000Z',
        cancelledAt: '2026-03-01T10:02:00.000Z',
        repeat: false,
      },
    });
    expect(repeat).toMatchObject({ status: 200, body: { id, repeat: true } });
    expect(resend).toEqual({ status: 202, body: { accepted: 0, duplicates: 1 } });
    // A cancellation already made is answered again after the seal; it does not become a refusal.
    expect(afterSeal).toMatchObject({ status: 200, body: { repeat: true } });
    expect(p.emulator.records).toHaveLength(1);
    expect(p.emulator.records[0]).toMatchObject({ dimension: 'requests', quantity: 2, allocations: [] });
    const samples = await scrape(p);
    expect(sampleValue(samples, 'metering_usage_cancelled_quantity_total', { dimension: 'requests' })).toBe(
      5,
    );
    expect(p.logLines().some((l) => l.msg === 'usage cancelled before its hour was sealed')).toBe(true);
  });

  it('refuses an id whose hour is sealed, and one it does not know, changing nothing', async () => {
    const p = await pipeline({ dimensions: ['requests'] });
    await p.api.report({ dimension: 'requests', quantity: 5, id: 'evt-1' });
    expect(await p.api.cancel('evt-unknown')).toMatchObject({
      status: 404,
      body: { error: { code: 'UnknownUsageId' } },
    });
    p.clock.set(H11 + 1_000);
    await p.scheduler.runOnce({ includeOpen: false });
    const sealed = await p.api.cancel('evt-1');
    expect(sealed).toMatchObject({ status: 409, body: { error: { code: 'HourSealed' } } });
    expect(p.emulator.records[0]).toMatchObject({ quantity: 5 });
    expect(p.ledger.status(p.clock.now()).cancellations).toEqual([]);
  });

  it.each([
    [400, 'InvalidRequest', 'DELETE', '/v1/usage/%E0%A4%A'],
    [400, 'InvalidRequest', 'DELETE', `/v1/usage/${'x'.repeat(257)}`],
    [400, 'InvalidRequest', 'DELETE', '/v1/usage/'],
    [405, 'MethodNotAllowed', 'POST', '/v1/usage/evt-1'],
    [405, 'MethodNotAllowed', 'DELETE', '/v1/usage'],
  ])('answers %i %s to %s %s', async (status, code, method, path) => {
    const p = await pipeline();
    await p.api.report({ dimension: 'a', quantity: 1, id: 'evt-1' });
    const reply = await raw(p.socketPath, method, path);
    expect(reply).toMatchObject({ status, body: { error: { code } } });
    expect(p.ledger.status(p.clock.now()).open[0].quantity).toBe(1);
  });

  it('answers the admission gate first, as for usage', async () => {
    const p = await pipeline();
    await p.api.report({ dimension: 'a', quantity: 1, id: 'evt-1' });
    p.setGate(rejection('NotEntitled', 'not entitled'));
    expect(await p.api.cancel('evt-1')).toMatchObject({
      status: 503,
      body: { error: { code: 'NotEntitled' } },
    });
    expect(p.ledger.status(p.clock.now()).open[0].quantity).toBe(1);
  });
});

describe('unit scaling', () => {
  it('takes bytes for a GiB dimension and bills whole GiB per hour, the remainder carried', async () => {
    // Prepare
    const p = await pipeline({ dimensions: ['storage_gib', 'requests'], unitDivisors: { storage_gib: GIB } });

    // Act: 2.75 GiB in the first hour, one report larger than a billed record's cap in the fine unit.
    const big = 5 * GIB; // over 2,147,483,647: refused for an unscaled dimension, fine here
    expect(
      (
        await p.api.report([
          { dimension: 'storage_gib', quantity: big / 2 },
          { dimension: 'storage_gib', quantity: GIB / 4, id: 'evt-1' },
        ])
      ).status,
    ).toBe(202);
    expect((await p.api.report({ dimension: 'requests', quantity: big })).status).toBe(422);
    p.clock.set(H11 + 1_000);
    await p.scheduler.runOnce({ includeOpen: false });
    // 0.75 GiB carried; 0.75 GiB more completes one unit in the second hour, 0.5 GiB carried on.
    await p.api.report({ dimension: 'storage_gib', quantity: (3 * GIB) / 4 });
    p.clock.set(H12 + 1_000);
    await p.scheduler.runOnce({ includeOpen: false });

    // Assess
    expect(p.emulator.records.map((r) => [r.hourStartMs, r.quantity])).toEqual([
      [H10, 2],
      [H11, 1],
    ]);
    expect(p.ledger.status(p.clock.now()).remainders).toEqual([
      { dimension: 'storage_gib', divisor: GIB, quantity: GIB / 2, tagSets: 1 },
    ]);
  });
});
