/**
 * Operating the built sidecar: readiness when the state volume fills up and recovers, the healthcheck
 * command's exit codes, `status --json` against the ledger itself, the read-only admin listener, and logs
 * that never carry a secret.
 */
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import Database from 'better-sqlite3';
import { afterEach, describe, expect, it } from 'vitest';
import { SidecarClient } from '../../src/client/client.js';
import { parsePrometheus, sampleValue } from '../helpers/prometheus.js';
import { sidecarFixture, type Cleanups } from '../helpers/fixture.js';
import { MAIN, NODE } from '../helpers/sidecarProcess.js';
import { Tmpfs } from '../helpers/tmpfs.js';

const run = promisify(execFile);
const cleanups: Cleanups = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function setup(options: { stateDir?: string; env?: Record<string, string> } = {}) {
  return sidecarFixture(cleanups, {
    name: 'op',
    ...(options.stateDir !== undefined ? { stateDir: options.stateDir } : {}),
    env: { METERING_ADMIN_LISTEN: '127.0.0.1:0', ...options.env },
  });
}

async function cli(
  args: string[],
  env: Record<string, string>,
): Promise<{ code: number; stdout: string; ms: number }> {
  const started = Date.now();
  try {
    const { stdout } = await run(NODE, [MAIN, ...args], {
      env: { PATH: process.env['PATH'] ?? '', ...env },
    });
    return { code: 0, stdout, ms: Date.now() - started };
  } catch (err) {
    const e = err as { code: number; stdout: string };
    return { code: e.code, stdout: e.stdout, ms: Date.now() - started };
  }
}

describe('operating the sidecar', () => {
  it('keeps the idempotency-key store within its bound, with a metric and a warning', async () => {
    const { socketPath, spawn } = await setup({
      env: { METERING_IDEMPOTENCY_KEYS_MAX: '1000', METERING_ENTITLEMENT: 'none' },
    });
    const sidecar = spawn();
    await sidecar.ready();
    const port = await sidecar.adminPort();
    const client = new SidecarClient({ socketPath });
    cleanups.push(() => client.close());

    const records = Array.from({ length: 1500 }, (_, i) => ({
      dimension: 'requests',
      quantity: 1,
      id: `report-${i}`,
    }));
    expect((await client.report(records)).status).toBe(202);

    const metrics = parsePrometheus(await (await fetch(`http://127.0.0.1:${port}/metrics`)).text());
    expect(sampleValue(metrics, 'metering_idempotency_keys_evicted_total')).toBe(500);
    expect(sampleValue(metrics, 'metering_idempotency_keys')).toBe(1000);
    const warning = sidecar.logLines().find((l) => l['code'] === 'ERR_IDEMPOTENCY_KEYS_FULL');
    expect(warning).toMatchObject({ level: 'warn', evicted: 500, keysMax: 1000 });
    expect((await sidecar.stop('SIGTERM')).code).toBe(0);
  });

  it('turns unready and refuses usage while the state volume is full, and recovers without losing anything', async () => {
    // Prepare
    const fs = Tmpfs.mount(4096);
    cleanups.push(() => fs.unmount());
    const { emulator, socketPath, spawn } = await setup({ stateDir: join(fs.dir, 'state') });
    const sidecar = spawn();
    await sidecar.ready();
    const port = await sidecar.adminPort();
    const client = new SidecarClient({ socketPath });
    cleanups.push(() => client.close());
    expect((await client.report({ dimension: 'requests', quantity: 7 })).status).toBe(202);
    expect((await fetch(`http://127.0.0.1:${port}/readyz`)).status).toBe(200);

    // Act: the volume fills up.
    fs.fill();
    await new Promise((resolve) => setTimeout(resolve, 1100)); // the write probe is cached for a second
    const unready = await fetch(`http://127.0.0.1:${port}/readyz`);
    const refused = await client.report({ dimension: 'requests', quantity: 100 });
    // ... and drains again.
    fs.drain();
    await new Promise((resolve) => setTimeout(resolve, 1100));
    const readyAgain = await fetch(`http://127.0.0.1:${port}/readyz`);
    const accepted = await client.report({ dimension: 'requests', quantity: 1 });
    const metrics = parsePrometheus(await (await fetch(`http://127.0.0.1:${port}/metrics`)).text());
    const exit = await sidecar.stop('SIGTERM');

    // Assess
    expect(unready.status).toBe(503);
    const body = (await unready.json()) as { checks: { ledger: { ok: boolean; reason: string } } };
    expect(body.checks.ledger.ok).toBe(false);
    expect(body.checks.ledger.reason).toMatch(/ENOSPC|SQLITE_FULL/);
    expect(refused).toMatchObject({ status: 503, body: { error: { code: 'StorageUnavailable' } } });
    expect(readyAgain.status).toBe(200);
    expect(accepted.status).toBe(202);
    expect(
      sampleValue(metrics, 'metering_intake_requests_total', {
        result: 'rejected',
        code: 'StorageUnavailable',
      }),
    ).toBe(1);
    expect(
      sampleValue(metrics, 'metering_errors_total', { code: 'ERR_STATE_UNAVAILABLE' }),
    ).toBeGreaterThanOrEqual(1);
    expect(exit.code).toBe(0);
    expect(Object.fromEntries(emulator.totals())).toEqual({ requests: 8 });
  });

  it('healthcheck exits 0 when ready and 1 otherwise, within 2 seconds, through the admin listener or the socket', async () => {
    const { emulator, socketPath, spawn, env } = await setup({
      env: { METERING_ADMIN_LISTEN: '127.0.0.1:19281' },
    });
    // Not running at all.
    const down = await cli(['healthcheck'], env);
    expect(down.code).toBe(1);
    expect(down.ms).toBeLessThan(2500);

    // Entitlement pending: not ready.
    emulator.failNext('RegisterUsage', 'ThrottlingException', 10_000);
    const sidecar = spawn();
    while (!sidecar.stdout.includes('entitlement check failed for now'))
      await new Promise((r) => setTimeout(r, 10));
    const pending = await cli(['healthcheck'], env);
    expect(pending.code).toBe(1);
    expect(pending.stdout).toContain('not ready');
    expect(pending.stdout).toContain('ThrottlingException');

    // Ready.
    emulator.reset();
    await sidecar.ready(30_000);
    const ready = await cli(['healthcheck'], env);
    expect(ready).toMatchObject({ code: 0 });
    expect(ready.stdout).toMatch(/^ready /);
    expect(ready.ms).toBeLessThan(2500);
    // With the admin listener off, through the app socket.
    const viaSocket = await cli(['healthcheck'], {
      METERING_ADMIN_LISTEN: 'off',
      METERING_SOCKET: socketPath,
    });
    expect(viaSocket.code).toBe(0);
    expect((await sidecar.stop('SIGTERM')).code).toBe(0);
  });

  it('status --json matches the ledger, and the table shows the same', async () => {
    const { socketPath, spawn, stateDir } = await setup();
    const sidecar = spawn();
    await sidecar.ready();
    const client = new SidecarClient({ socketPath });
    cleanups.push(() => client.close());
    await client.report([
      { dimension: 'requests', quantity: 5, tags: { tenant: 'a' } },
      { dimension: 'requests', quantity: 6, tags: { tenant: 'b' } },
      { dimension: 'gb', quantity: 9 },
    ]);

    const json = await cli(['status', '--json'], { METERING_SOCKET: socketPath });
    const table = await cli(['status'], { METERING_SOCKET: socketPath });

    const status = JSON.parse(json.stdout) as {
      ready: boolean;
      openHours: { hourStart: string; dimension: string; quantity: number; tagSets: number }[];
      records: Record<string, number>;
      entitlement: { state: string };
    };
    const db = new Database(join(stateDir, 'ledger.db'), { readonly: true });
    const open = db
      .prepare(
        'SELECT dimension, hour_ms, sum(quantity) AS quantity, count(*) AS tagSets FROM buckets GROUP BY dimension, hour_ms ORDER BY hour_ms, dimension',
      )
      .all() as { dimension: string; hour_ms: number; quantity: number; tagSets: number }[];
    const records = db.prepare('SELECT status, count(*) AS n FROM records GROUP BY status').all() as {
      status: string;
      n: number;
    }[];
    db.close();
    expect(status.ready).toBe(true);
    expect(status.entitlement.state).toBe('entitled');
    expect(status.openHours).toEqual(
      open.map((o) => ({
        hourStart: new Date(o.hour_ms).toISOString(),
        dimension: o.dimension,
        quantity: o.quantity,
        tagSets: o.tagSets,
      })),
    );
    expect(status.records).toEqual({
      pending: 0,
      sent: 0,
      carried: 0,
      failed: 0,
      ...Object.fromEntries(records.map((r) => [r.status, r.n])),
    });
    expect(table.stdout).toContain('entitlement  entitled (register-usage)');
    expect(table.stdout).toMatch(/requests\s+11 {2}\(2 tag sets\)/);
    expect(table.stdout).toMatch(/gb\s+9 {2}\(1 tag sets\)/);
    expect((await sidecar.stop('SIGTERM')).code).toBe(0);
  });

  it('the admin listener is read-only', async () => {
    const { spawn } = await setup();
    const sidecar = spawn();
    await sidecar.ready();
    const port = await sidecar.adminPort();
    for (const path of ['/healthz', '/readyz', '/metrics']) {
      expect((await fetch(`http://127.0.0.1:${port}${path}`, { method: 'POST', body: '{}' })).status).toBe(
        405,
      );
      expect((await fetch(`http://127.0.0.1:${port}${path}`, { method: 'DELETE' })).status).toBe(405);
    }
    const usage = await fetch(`http://127.0.0.1:${port}/v1/usage`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: '{"dimension":"requests","quantity":1}',
    });
    expect(usage.status).toBe(404);
    expect(
      (await fetch(`http://127.0.0.1:${port}/v1/entitlement`, { method: 'POST', body: '{"nonce":"x"}' }))
        .status,
    ).toBe(404);
    expect((await sidecar.stop('SIGTERM')).code).toBe(0);
  });

  // Regression: the admin listener, reachable beyond loopback, served the full status: the RegisterUsage token
  // and its claims, the ledger id ClientTokens derive from, and usage totals.
  it('tells the cluster nothing but health, readiness and metrics on the admin listener', async () => {
    const { socketPath, spawn } = await setup();
    const sidecar = spawn();
    await sidecar.ready();
    const port = await sidecar.adminPort();
    const client = new SidecarClient({ socketPath });
    cleanups.push(() => client.close());
    expect(
      (await client.report({ dimension: 'requests', quantity: 3, tags: { tenant: 'acme' } })).status,
    ).toBe(202);
    const full = (await client.status()).body as {
      ledgerId: string;
      entitlement: { token: string };
    };
    expect(full.entitlement.token.length).toBeGreaterThan(20);

    for (const method of ['GET', 'POST']) {
      expect((await fetch(`http://127.0.0.1:${port}/v1/status`, { method })).status).toBe(404);
    }
    const answers = await Promise.all(
      ['/healthz', '/readyz', '/metrics'].map(async (path) => {
        const res = await fetch(`http://127.0.0.1:${port}${path}`);
        expect(res.status, path).toBe(200);
        return res.text();
      }),
    );
    for (const text of answers) {
      expect(text).not.toContain(full.ledgerId);
      expect(text).not.toContain(full.entitlement.token);
      expect(text).not.toContain('acme');
    }
    expect((await sidecar.stop('SIGTERM')).code).toBe(0);
  });

  it('never logs credentials or tokens, even at trace level', async () => {
    const { socketPath, spawn } = await setup();
    const secret = 'wJalrXUtnFEMI-K7MDENG-bPxRfiCY-SECRET';
    const session = 'FwoGZXIvYXdzEJr-SESSION-TOKEN-VALUE';
    const sidecar = spawn({
      METERING_LOG_LEVEL: 'trace',
      AWS_ACCESS_KEY_ID: 'AKIAIOSFODNN7EXAMPLE',
      AWS_SECRET_ACCESS_KEY: secret,
      AWS_SESSION_TOKEN: session,
    });
    await sidecar.ready();
    const client = new SidecarClient({ socketPath });
    cleanups.push(() => client.close());
    const startup = ((await client.entitlement()).body as { token: string }).token;
    const proof = ((await client.proveEntitlement('app-nonce')).body as { token: string }).token;
    await client.report({ dimension: 'requests', quantity: 1 });
    expect((await sidecar.stop('SIGTERM')).code).toBe(0);

    const output = sidecar.stdout + sidecar.stderr;
    expect(output.length).toBeGreaterThan(1000);
    for (const value of [secret, session, startup, proof, startup.split('.')[2], proof.split('.')[2]]) {
      expect(output).not.toContain(value);
    }
    // The static-keys warning names the problem without the key.
    expect(sidecar.logLines().some((l) => l['code'] === 'ERR_CONFIG_STATIC_CREDENTIALS')).toBe(true);
  });
});
