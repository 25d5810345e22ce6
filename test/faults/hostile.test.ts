/**
 * Fault suite, hostile intake: property-based fuzzing (fast-check) of the app API of the built sidecar with
 * random JSON, huge numbers, unicode and control characters in dimensions and tags; slow-loris connections;
 * 10,000 connections opened and dropped. The process must stay up, its memory bounded, and every total
 * unchanged by rejected input. Plus the security properties: no app API off loopback, a read-only admin API.
 */
import { readFileSync } from 'node:fs';
import { mkdtempSync, rmSync } from 'node:fs';
import { request } from 'node:http';
import { connect, type Socket } from 'node:net';
import { networkInterfaces, tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HOUR_MS, hourStart } from '../../src/clock.js';
import { faketimeEnv } from '../helpers/faketime.js';
import { testSeed } from '../helpers/seed.js';
import { SidecarClient } from '../../src/client/client.js';
import { MeteringEmulator } from '../../src/emulator/emulator.js';
import { SidecarProcess, startCredentialsServer } from '../helpers/sidecarProcess.js';

const cleanups: (() => Promise<void> | void)[] = [];
let sidecar: SidecarProcess;
let emulator: MeteringEmulator;
let socketPath: string;
let appPort: number;
let adminPort: number;

beforeAll(async () => {
  const dir = mkdtempSync(join(tmpdir(), 'metering-hostile-'));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  // The sidecar's clock (libfaketime) starts five minutes into an hour, so that no hour closes, and no total
  // moves into a sealed record, while a scenario compares totals before and after an attack.
  const offsetMs = hourStart(Date.now()) + HOUR_MS + 5 * 60_000 - Date.now();
  emulator = new MeteringEmulator({ productCode: 'prod-hostile', now: () => Date.now() + offsetMs });
  const url = await emulator.start();
  cleanups.push(() => emulator.stop());
  const creds = await startCredentialsServer('ASIATASKHOSTILE');
  cleanups.push(() => creds.close());
  socketPath = join(dir, 'metering.sock');
  appPort = 20_000 + Math.floor(Math.random() * 20_000);
  adminPort = appPort + 1;
  sidecar = SidecarProcess.spawn({
    METERING_PRODUCT_CODE: 'prod-hostile',
    METERING_PUBLIC_KEY: emulator.publicKeyPem,
    METERING_SOCKET: socketPath,
    METERING_LISTEN: `127.0.0.1:${appPort}`,
    METERING_ADMIN_LISTEN: `0.0.0.0:${adminPort}`,
    METERING_STATE_DIR: join(dir, 'state'),
    METERING_SEND_JITTER_SECONDS: '0',
    METERING_DIMENSIONS: 'requests,gb,nodes,after-attack',
    AWS_REGION: 'us-east-1',
    AWS_ENDPOINT_URL_MARKETPLACE_METERING: url,
    AWS_CONTAINER_CREDENTIALS_FULL_URI: creds.url,
    ...faketimeEnv(offsetMs),
  });
  cleanups.push(() => {
    sidecar.child.kill('SIGKILL');
  });
  await sidecar.ready();
}, 60_000);

afterAll(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

function rssMb(): number {
  const status = readFileSync(`/proc/${sidecar.child.pid}/status`, 'utf8');
  return Number(/VmRSS:\s+(\d+) kB/.exec(status)![1]) / 1024;
}

function post(
  body: string | Buffer,
  headers: Record<string, string> = { 'content-type': 'application/json' },
): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath, method: 'POST', path: '/v1/usage', headers, agent: false }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode ?? 0));
    });
    req.on('error', reject);
    req.end(body);
  });
}

/** Open-hour quantity per dimension. */
async function totals(): Promise<Map<string, number>> {
  const open = (await openHours()) as { dimension: string; quantity: number }[];
  const out = new Map<string, number>();
  for (const o of open) out.set(o.dimension, (out.get(o.dimension) ?? 0) + o.quantity);
  return out;
}

async function openHours(): Promise<unknown> {
  const client = new SidecarClient({ socketPath });
  const status = (await client.status()).body as { openHours: unknown };
  client.close();
  return status.openHours;
}

/** fast-check's seed for every property of this file; printed, replayable with FUZZ_SEED. */
const FUZZ_SEED = testSeed('fault suite (hostile intake)', 'FUZZ_SEED');

/** Counters for docs/reliability.md. */
const figures = { fuzzed: 0, rejected: 0, slowLoris: 0, opened: 0, connected: 0 };

describe('fault suite: hostile intake against the built sidecar', () => {
  it('rejects every invalid body without changing totals, and counts every valid one', async () => {
    const baseline = await totals();
    const accepted = new Map<string, number>();
    const rssBefore = rssMb();
    const junk = fc.oneof(
      fc.json(),
      fc.jsonValue().map((v) => JSON.stringify(v)),
      fc.string({ unit: 'binary' }),
      fc
        .record({
          dimension: fc.oneof(fc.string({ unit: 'binary', maxLength: 300 }), fc.integer(), fc.constant('')),
          quantity: fc.oneof(
            fc.double(),
            fc.bigInt().map(String),
            fc.integer({ min: -1e15, max: -1 }),
            fc.constant(2 ** 31),
          ),
          tags: fc.dictionary(
            fc.string({ unit: 'binary', maxLength: 120 }),
            fc.string({ unit: 'binary', maxLength: 300 }),
            { maxKeys: 8 },
          ),
        })
        .map((r) => JSON.stringify(r)),
      fc
        .array(
          fc.record({
            dimension: fc.string({ unit: 'grapheme', minLength: 1 }),
            quantity: fc.integer({ min: -5, max: -1 }),
          }),
          { minLength: 1, maxLength: 50 },
        )
        .map((records) => JSON.stringify({ records })),
    );
    await fc.assert(
      fc.asyncProperty(junk, async (body) => {
        figures.fuzzed++;
        const status = await post(body);
        if (status === 202) {
          // A generator can produce a valid record by chance: it must then be counted exactly.
          const parsed = JSON.parse(body) as { records?: { dimension: string; quantity: number }[] };
          for (const r of parsed.records ?? [parsed as { dimension: string; quantity: number }]) {
            accepted.set(r.dimension, (accepted.get(r.dimension) ?? 0) + r.quantity);
          }
          return;
        }
        figures.rejected++;
        expect(status).toBeGreaterThanOrEqual(400);
        expect(status).toBeLessThan(500);
      }),
      { numRuns: 1500, seed: FUZZ_SEED },
    );
    const expected = new Map(baseline);
    for (const [d, q] of accepted) expected.set(d, (expected.get(d) ?? 0) + q);
    expect(await totals()).toEqual(expected);
    expect(rssMb() - rssBefore).toBeLessThan(100);
    expect(sidecar.child.exitCode).toBeNull();
  }, 300_000);

  it('counts random valid batches exactly, with random tags and idempotency keys', async () => {
    const client = new SidecarClient({ socketPath });
    const expected = new Map(await totals());
    const seenIds = new Set<string>();
    const record = fc.record({
      dimension: fc.constantFrom('requests', 'gb', 'nodes'),
      quantity: fc.integer({ min: 0, max: 2_147_483_647 }),
      id: fc.option(fc.stringMatching(/^k[0-9]{1,3}$/), { nil: undefined }),
      tags: fc.dictionary(
        fc.stringMatching(/^[a-z][a-z0-9_.:/@=+ -]{0,20}$/),
        fc.stringMatching(/^[A-Za-z0-9+ =._:/@-]{1,40}$/),
        { maxKeys: 2 },
      ),
    });
    await fc.assert(
      fc.asyncProperty(fc.array(record, { minLength: 1, maxLength: 20 }), async (records) => {
        const reply = await client.report(records);
        if (reply.status === 202) {
          // A repeated id (in this batch or an earlier one) is acknowledged but not counted again.
          for (const r of records) {
            if (r.id !== undefined && seenIds.has(r.id)) continue;
            if (r.id !== undefined) seenIds.add(r.id);
            expected.set(r.dimension, (expected.get(r.dimension) ?? 0) + r.quantity);
          }
        } else {
          // The only acceptable refusal for valid records: more than 5 tag keys or 2,500 tag sets in the hour.
          expect((reply.body as { error: { code: string } }).error.code).toMatch(
            /^(InvalidTags|TooManyTagSets)$/,
          );
        }
      }),
      { numRuns: 300, seed: FUZZ_SEED },
    );
    client.close();
    expect(await totals()).toEqual(expected);
  }, 300_000);

  it('survives slow-loris connections and 10,000 connections opened and dropped', async () => {
    const before = await openHours();
    const rssBefore = rssMb();
    // Slow loris: headers trickle in a byte at a time until the server's header timeout closes them.
    const slow: Socket[] = [];
    for (let i = 0; i < 200; i++) {
      const socket = connect(socketPath);
      socket.on('error', () => undefined);
      socket.write('POST /v1/usage HTTP/1.1\r\nhost: x\r\n');
      slow.push(socket);
      figures.slowLoris++;
    }
    // 10,000 connections opened and dropped, some mid-request.
    for (let batch = 0; batch < 100; batch++) {
      await Promise.all(
        Array.from(
          { length: 100 },
          (_, i) =>
            new Promise<void>((resolve) => {
              figures.opened++;
              const socket = i % 2 === 0 ? connect(socketPath) : connect(appPort, '127.0.0.1');
              socket.on('error', () => resolve());
              socket.on('connect', () => {
                if (i % 3 === 0) socket.write('POST /v1/usage HTTP/1.1\r\ncontent-length: 100\r\n\r\n{"dim');
                socket.destroy();
                figures.connected++;
                resolve();
              });
            }),
        ),
      );
    }
    // The sidecar still serves, promptly, while the slow connections hang on.
    const client = new SidecarClient({ socketPath });
    const started = Date.now();
    expect((await client.report({ dimension: 'after-attack', quantity: 3 })).status).toBe(202);
    expect(Date.now() - started).toBeLessThan(2000);
    client.close();
    for (const socket of slow) socket.destroy();
    const after = (await openHours()) as { dimension: string; quantity: number }[];
    expect(after.filter((o) => o.dimension !== 'after-attack')).toEqual(before);
    expect(rssMb() - rssBefore).toBeLessThan(100);
    expect(sidecar.child.exitCode).toBeNull();
    console.log(
      `fault suite (hostile intake): ${figures.fuzzed} fuzzed bodies (${figures.rejected} rejected), ${figures.slowLoris} slow-loris connections, ${figures.opened} connections opened and dropped (${figures.connected} accepted, the rest refused by the listen backlog); RSS ${rssMb().toFixed(0)} MB`,
    );
  }, 300_000);

  it('never serves the app API off loopback, and the admin API changes nothing', async () => {
    const addresses = Object.values(networkInterfaces())
      .flat()
      .filter((a) => a !== undefined && a.family === 'IPv4' && !a.internal)
      .map((a) => a!.address);
    for (const address of addresses) {
      const reachable = await new Promise<boolean>((resolve) => {
        const socket = connect(appPort, address);
        socket.once('connect', () => {
          socket.destroy();
          resolve(true);
        });
        socket.once('error', () => resolve(false));
      });
      expect(reachable, `app API reachable on ${address}`).toBe(false);
    }
    const before = await openHours();
    for (const method of ['POST', 'PUT', 'PATCH', 'DELETE']) {
      for (const path of ['/v1/usage', '/v1/status', '/v1/entitlement', '/readyz', '/metrics']) {
        const res = await fetch(`http://127.0.0.1:${adminPort}${path}`, {
          method,
          headers: { 'content-type': 'application/json' },
          body: '{"dimension":"admin","quantity":1,"nonce":"x"}',
        });
        expect([404, 405]).toContain(res.status);
      }
    }
    expect(await openHours()).toEqual(before);
  });
});
