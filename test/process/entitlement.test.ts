/**
 * Entitlement at startup with the built CLI against the emulator through the real SDK: exit codes, readiness
 * while pending, and the app-facing proof.
 */
import { generateKeyPairSync } from 'node:crypto';
import { afterEach, describe, expect, it } from 'vitest';
import { SidecarClient } from '../../src/client/client.js';
import type { EmulatorOptions } from '../../src/emulator/emulator.js';
import { verifyEntitlementToken } from '../../src/entitlement/token.js';
import { systemClock } from '../../src/clock.js';
import { SqliteLedger } from '../../src/ledger/sqliteLedger.js';
import { sidecarFixture, type Cleanups } from '../helpers/fixture.js';
import { usageBatch } from '../../src/ledger/usageBatch.js';

const cleanups: Cleanups = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function setup(emulatorOptions: Partial<EmulatorOptions> = {}) {
  return sidecarFixture(cleanups, {
    name: 'ent',
    emulator: { dimensions: ['requests', 'gb'], ...emulatorOptions },
    env: { METERING_ADMIN_LISTEN: '127.0.0.1:0' },
  });
}

describe('entitlement at startup (built CLI against the emulator)', () => {
  it('becomes ready when entitled, with the verified token available to the app', async () => {
    const { emulator, socketPath, spawn } = await setup();
    const sidecar = spawn();
    await sidecar.ready();

    const port = await sidecar.adminPort();
    const readyz = await fetch(`http://127.0.0.1:${port}/readyz`);
    expect(readyz.status).toBe(200);
    const client = new SidecarClient({ socketPath });
    const view = (await client.entitlement()).body as Record<string, unknown>;
    expect(view).toMatchObject({ state: 'entitled', mode: 'register-usage', verified: true });
    expect((view['claims'] as Record<string, unknown>)['ProductCode']).toBe('prod-ent');
    expect((await client.report({ dimension: 'requests', quantity: 2 })).status).toBe(202);
    client.close();
    const call = emulator.calls.find((c) => c.operation === 'RegisterUsage')!;
    expect(call.identity).toBe('ASIATASKENT');
    expect((call.input as { Nonce: string }).Nonce).toMatch(/^[0-9a-f-]{36}$/);
    expect((await sidecar.stop('SIGTERM')).code).toBe(0);
  });

  it.each([
    [
      'not entitled',
      { entitlement: 'CustomerNotEntitledException' as const },
      {},
      'CustomerNotEntitledException',
    ],
    [
      'an unsupported platform',
      { entitlement: 'PlatformNotSupportedException' as const },
      {},
      'PlatformNotSupportedException',
    ],
    ['a wrong product code', {}, { METERING_PRODUCT_CODE: 'other-product' }, 'InvalidProductCodeException'],
    ['an unknown key version', {}, { METERING_PUBLIC_KEY_VERSION: '7' }, 'InvalidPublicKeyVersionException'],
  ])('exits 77 with %s', async (_name, emulatorOptions, env, code) => {
    const { spawn } = await setup(emulatorOptions);
    const sidecar = spawn(env);
    const exit = await sidecar.exited;
    expect(exit.code).toBe(77);
    const fatal = sidecar.fatal();
    expect(fatal['code']).toBe('ERR_NOT_ENTITLED');
    expect(fatal['msg']).toContain(code);
    expect(fatal['msg']).toMatch(/subscription.*IRSA.*AWS_REGION.*METERING_PRODUCT_CODE.*public key/);
  });

  it('exits 77 when the token is signed by another key', async () => {
    const { spawn } = await setup();
    const other = generateKeyPairSync('rsa', { modulusLength: 2048 })
      .publicKey.export({ type: 'spki', format: 'pem' })
      .toString();
    const sidecar = spawn({ METERING_PUBLIC_KEY: other });
    expect((await sidecar.exited).code).toBe(77);
    expect(sidecar.fatal()['msg']).toContain('signature does not match');
  });

  it.each([
    ['nonce', { Nonce: 'replayed-nonce' }, 'nonce is not the one sent'],
    ['product code', { ProductCode: 'free-product' }, 'product code'],
  ])('exits 77 when the token carries another %s', async (_name, claims, message) => {
    const { emulator, spawn } = await setup();
    emulator.tamperNextToken(claims);
    const sidecar = spawn();
    expect((await sidecar.exited).code).toBe(77);
    expect(sidecar.fatal()['msg']).toContain(message);
  });

  it('retries throttling and becomes ready', async () => {
    const { emulator, spawn } = await setup();
    emulator.failNext('RegisterUsage', 'ThrottlingException', 2);
    const sidecar = spawn();
    await sidecar.ready();
    expect(
      emulator.calls.filter((c) => c.operation === 'RegisterUsage').map((c) => c.error ?? c.status),
    ).toEqual(['ThrottlingException', 'ThrottlingException', 200]);
    expect((await sidecar.stop('SIGTERM')).code).toBe(0);
  });

  it('answers 503 NotEntitled and is not ready while entitlement is pending, then becomes ready', async () => {
    const { emulator, socketPath, spawn } = await setup();
    emulator.failNext('RegisterUsage', 'InternalServiceErrorException', 10_000);
    const sidecar = spawn();
    const port = await sidecar.adminPort();
    // Wait for the first failed attempt.
    while (!sidecar.stdout.includes('entitlement check failed for now'))
      await new Promise((r) => setTimeout(r, 10));

    const readyz = await fetch(`http://127.0.0.1:${port}/readyz`);
    expect(readyz.status).toBe(503);
    const body = (await readyz.json()) as {
      ready: boolean;
      checks: { entitlement: { ok: boolean; reason: string } };
    };
    expect(body.ready).toBe(false);
    expect(body.checks.entitlement.reason).toContain('InternalServiceErrorException');
    expect((await fetch(`http://127.0.0.1:${port}/healthz`)).status).toBe(200);
    const client = new SidecarClient({ socketPath });
    const refused = await client.report({ dimension: 'requests', quantity: 1 });
    expect(refused).toMatchObject({ status: 503, body: { error: { code: 'NotEntitled' } } });
    expect(((await client.entitlement()).body as { state: string }).state).toBe('pending');

    emulator.reset(); // AWS recovers
    await sidecar.ready(30_000);
    const ready = await fetch(`http://127.0.0.1:${port}/readyz`);
    expect(ready.status).toBe(200);
    expect(((await ready.json()) as { checks: { entitlement: object } }).checks.entitlement).toEqual({
      ok: true,
    });
    expect((await client.report({ dimension: 'requests', quantity: 1 })).status).toBe(202);
    client.close();
    expect((await sidecar.stop('SIGTERM')).code).toBe(0);
    // The refused report was never counted.
    expect(emulator.totals().get('requests')).toBe(1);
  });

  it('sends usage a previous run left in the ledger before exiting 77 on a restart that is not entitled', async () => {
    // Regression: a restarted container that failed entitlement never sent the acknowledged usage it found.
    const { emulator, socketPath, spawn } = await setup();
    const first = spawn();
    await first.ready();
    const client = new SidecarClient({ socketPath });
    expect((await client.report({ dimension: 'gb', quantity: 12 })).status).toBe(202);
    client.close();
    await first.stop('SIGKILL');

    emulator.setEntitlement('CustomerNotEntitledException');
    const second = spawn();
    expect((await second.exited).code).toBe(77);
    expect(Object.fromEntries(emulator.totals())).toEqual({ gb: 12 });
  });

  it('before exiting 77, also sends a record a previous run left waiting out a long backoff', async () => {
    // Regression: the flush before exit only sent records already due, so a record whose next retry was a
    // minute away stayed unsent, and on ECS or EKS its volume then died with the task.
    const { emulator, stateDir, productCode, spawn } = await setup();
    const ledger = SqliteLedger.open({ stateDir, productCode, dryRun: false, clock: systemClock });
    await ledger.record(usageBatch([{ dimension: 'gb', quantity: 9, tagsKey: '{}', id: undefined }]));
    const [record] = ledger.seal(Date.now(), true);
    for (let attempt = 1; attempt <= 5; attempt++) {
      ledger.markRetry(record.id, 'ThrottlingException: Rate exceeded', Date.now() + 58_000, false);
    }
    ledger.close();

    emulator.setEntitlement('CustomerNotEntitledException');
    const sidecar = spawn();
    expect((await sidecar.exited).code).toBe(77);
    expect(Object.fromEntries(emulator.totals())).toEqual({ gb: 9 });
  });

  it('exits 69 when AWS stays unavailable for the whole retry budget', async () => {
    const { emulator, spawn } = await setup();
    emulator.failNext('RegisterUsage', 'ThrottlingException', 10_000);
    const sidecar = spawn({ METERING_ENTITLEMENT_RETRY_SECONDS: '2' });
    const exit = await sidecar.exited;
    expect(exit.code).toBe(69);
    expect(sidecar.fatal()['code']).toBe('ERR_AWS_UNAVAILABLE');
  });

  it('logs the doctor’s findings, each with its fix, beside the failure when it exits 69', async () => {
    const { emulator, spawn } = await setup();
    emulator.failNext('RegisterUsage', 'ThrottlingException', 10_000);
    const sidecar = spawn({
      METERING_ENTITLEMENT_RETRY_SECONDS: '1',
      AWS_ACCESS_KEY_ID: 'AKIAEXAMPLE',
      AWS_SECRET_ACCESS_KEY: 'secret',
    });
    expect((await sidecar.exited).code).toBe(69);
    const doctor = sidecar.logLines().filter((l) => String(l['msg']).startsWith('doctor: '));
    expect(doctor.map((l) => l['code'])).toEqual(
      expect.arrayContaining(['DOCTOR_STATIC_KEYS', 'DOCTOR_ENDPOINT_OVERRIDE']),
    );
    // Errors at error level, warnings (the emulator's endpoint override) at warn; each with its fix.
    const levels = new Map(doctor.map((l) => [l['code'], l['level']]));
    expect(levels.get('DOCTOR_STATIC_KEYS')).toBe('error');
    expect(levels.get('DOCTOR_ENDPOINT_OVERRIDE')).toBe('warn');
    for (const line of doctor) expect(line['fix']).toEqual(expect.any(String));
  });

  it('names what the environment gets wrong beside the entitlement check of /readyz while it fails', async () => {
    const { emulator, spawn } = await setup();
    emulator.failNext('RegisterUsage', 'InternalServiceErrorException', 10_000);
    // Long-term keys: the emulator takes them, AWS Marketplace would not.
    const sidecar = spawn({ AWS_ACCESS_KEY_ID: 'AKIAEXAMPLE', AWS_SECRET_ACCESS_KEY: 'secret' });
    const port = await sidecar.adminPort();
    while (!sidecar.stdout.includes('entitlement check failed for now'))
      await new Promise((r) => setTimeout(r, 10));
    const body = (await (await fetch(`http://127.0.0.1:${port}/readyz`)).json()) as {
      checks: { entitlement: { ok: boolean; findings?: { code: string; fix: string }[] } };
    };
    expect(body.checks.entitlement.ok).toBe(false);
    expect(body.checks.entitlement.findings).toEqual([
      expect.objectContaining({
        code: 'DOCTOR_STATIC_KEYS',
        fix: expect.stringContaining('remove AWS_ACCESS_KEY_ID') as unknown,
      }),
    ]);
    sidecar.child.kill('SIGKILL');
  });

  it('stops cleanly on SIGTERM while entitlement is being retried', async () => {
    const { emulator, spawn } = await setup();
    emulator.failNext('RegisterUsage', 'ThrottlingException', 10_000);
    const sidecar = spawn();
    while (!sidecar.stdout.includes('entitlement check failed for now'))
      await new Promise((r) => setTimeout(r, 10));
    expect((await sidecar.stop('SIGTERM')).code).toBe(0);
  });

  it('with dry-run, calls MeterUsage DryRun per dimension and becomes ready; an unknown dimension exits 77', async () => {
    const { emulator, spawn } = await setup();
    const sidecar = spawn({ METERING_ENTITLEMENT: 'dry-run', METERING_DIMENSIONS: 'requests,gb' });
    await sidecar.ready();
    expect(
      emulator.calls.map((c) => [
        c.operation,
        (c.input as { UsageDimension?: string }).UsageDimension,
        (c.input as { DryRun?: boolean }).DryRun,
      ]),
    ).toEqual([
      ['MeterUsage', 'requests', true],
      ['MeterUsage', 'gb', true],
    ]);
    expect(emulator.records).toEqual([]);
    expect((await sidecar.stop('SIGTERM')).code).toBe(0);

    const unknown = spawn({ METERING_ENTITLEMENT: 'dry-run', METERING_DIMENSIONS: 'requests,cpu_hours' });
    expect((await unknown.exited).code).toBe(77);
    expect(unknown.fatal()['msg']).toContain('InvalidUsageDimensionException');
  });

  it('proves entitlement to the app with its own nonce', async () => {
    const { emulator, socketPath, spawn } = await setup();
    const sidecar = spawn();
    await sidecar.ready();
    const client = new SidecarClient({ socketPath });

    const reply = await client.proveEntitlement('app-nonce-42');

    expect(reply.status).toBe(200);
    const token = (reply.body as { token: string }).token;
    const expected = { productCode: 'prod-ent', publicKeyVersion: 1, nonce: 'app-nonce-42' };
    expect(verifyEntitlementToken(token, emulator.publicKeyPem, expected).valid).toBe(true);
    expect(
      verifyEntitlementToken(token, emulator.publicKeyPem, { ...expected, nonce: 'another' }),
    ).toMatchObject({
      valid: false,
      problem: 'nonce',
    });
    // One proof per 5 s per task: RegisterUsage's quota is shared by the whole account.
    expect(await client.proveEntitlement('app-nonce-43')).toMatchObject({
      status: 429,
      body: { error: { code: 'TooManyRequests' } },
    });
    const bad = await client.call('POST', '/v1/entitlement', { nonce: '' });
    expect(bad).toMatchObject({ status: 400, body: { error: { code: 'InvalidRequest' } } });
    const tooLong = await client.call('POST', '/v1/entitlement', { nonce: 'n'.repeat(256) });
    expect(tooLong.status).toBe(400);
    client.close();
    expect((await sidecar.stop('SIGTERM')).code).toBe(0);
  });

  it('answers 409 to a proof request when RegisterUsage is not the mode', async () => {
    const { socketPath, spawn } = await setup();
    const sidecar = spawn({ METERING_ENTITLEMENT: 'none' });
    await sidecar.ready();
    const client = new SidecarClient({ socketPath });
    expect(await client.proveEntitlement('n')).toMatchObject({
      status: 409,
      body: { error: { code: 'EntitlementNotApplicable' } },
    });
    expect(((await client.entitlement()).body as { state: string }).state).toBe('disabled');
    client.close();
    expect((await sidecar.stop('SIGTERM')).code).toBe(0);
  });

  it('warns once and accepts the token unverified without a public key; warns about static keys', async () => {
    const { spawn } = await setup();
    const sidecar = spawn({
      METERING_PUBLIC_KEY: '',
      AWS_ACCESS_KEY_ID: 'AKIASTATIC',
      AWS_SECRET_ACCESS_KEY: 'static-secret',
    });
    await sidecar.ready();
    const lines = sidecar.logLines();
    expect(lines.filter((l) => l['code'] === 'ERR_PUBLIC_KEY_MISSING')).toHaveLength(1);
    expect(lines.some((l) => l['code'] === 'ERR_CONFIG_STATIC_CREDENTIALS')).toBe(true);
    expect(sidecar.stdout).not.toContain('static-secret');
    expect((await sidecar.stop('SIGTERM')).code).toBe(0);
  });

  it('warns when AWS reports the public key version as expired', async () => {
    const { spawn } = await setup({ publicKeyRotatedAtMs: Date.now() - 3600_000 });
    const sidecar = spawn();
    await sidecar.ready();
    expect(sidecar.logLines().some((l) => l['code'] === 'ERR_PUBLIC_KEY_ROTATED')).toBe(true);
    expect((await sidecar.stop('SIGTERM')).code).toBe(0);
  });
});
