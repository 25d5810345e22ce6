import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { generateKeyPairSync } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { loadClientConfig, loadConfig, loadStateDir } from '../../src/config.js';
import { ConfigError } from '../../src/errors.js';

const REQUIRED = {
  METERING_PRODUCT_CODE: 'prod-123',
  AWS_REGION: 'us-east-1',
  METERING_DIMENSIONS: 'requests',
};

function problemsOf(
  env: Record<string, string>,
): { variable: string; value: string | undefined; expected: string }[] {
  try {
    loadConfig(env);
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return [...(err as ConfigError).problems];
  }
  throw new Error('expected a ConfigError');
}

describe('loadConfig', () => {
  it('applies the documented defaults', () => {
    const config = loadConfig(REQUIRED);
    expect(config).toMatchObject({
      productCode: 'prod-123',
      entitlement: 'register-usage',
      publicKeyVersion: 1,
      dimensions: ['requests'],
      socketPath: '/run/metering/metering.sock',
      listen: { host: '127.0.0.1', port: 8181 },
      adminListen: { host: '0.0.0.0', port: 9181 },
      stateDir: '/var/lib/metering',
      schedule: '0 * * * *',
      sendJitterSeconds: 3000,
      dryRun: false,
      shutdownTimeoutSeconds: 20,
      idempotencyKeysMax: 200_000,
      logLevel: 'info',
      local: false,
      region: 'us-east-1',
      endpoint: undefined,
      staticCredentials: false,
    });
    expect(Object.isFrozen(config)).toBe(true);
  });

  it('reads every variable', () => {
    const config = loadConfig({
      ...REQUIRED,
      METERING_ENTITLEMENT: 'dry-run',
      METERING_PUBLIC_KEY_VERSION: '3',
      METERING_DIMENSIONS: 'requests, gb ,requests',
      METERING_SOCKET: 'off',
      METERING_LISTEN: '[::1]:9000',
      METERING_ADMIN_LISTEN: 'off',
      METERING_STATE_DIR: '/data/x',
      METERING_SCHEDULE: '*/5 * * * *',
      METERING_SEND_JITTER_SECONDS: '0',
      METERING_DRY_RUN: 'true',
      METERING_SHUTDOWN_TIMEOUT_SECONDS: '45',
      METERING_IDEMPOTENCY_KEYS_MAX: '5000',
      METERING_LOG_LEVEL: 'DEBUG',
      AWS_ENDPOINT_URL_MARKETPLACE_METERING: 'http://127.0.0.1:4599',
      AWS_ACCESS_KEY_ID: 'AKIA',
    });
    expect(config).toMatchObject({
      entitlement: 'dry-run',
      publicKeyVersion: 3,
      dimensions: ['requests', 'gb'],
      socketPath: undefined,
      listen: { host: '::1', port: 9000 },
      adminListen: undefined,
      stateDir: '/data/x',
      schedule: '*/5 * * * *',
      sendJitterSeconds: 0,
      dryRun: true,
      shutdownTimeoutSeconds: 45,
      idempotencyKeysMax: 5000,
      logLevel: 'debug',
      endpoint: 'http://127.0.0.1:4599',
      staticCredentials: true,
    });
  });

  it('reports every problem at once, each with the variable, the value and what is expected', () => {
    const problems = problemsOf({
      METERING_ENTITLEMENT: 'maybe',
      METERING_LISTEN: '10.0.0.5:8181',
      METERING_SCHEDULE: 'hourly',
      METERING_SEND_JITTER_SECONDS: '-1',
      METERING_DRY_RUN: 'perhaps',
      METERING_LOG_LEVEL: 'loud',
      AWS_ENDPOINT_URL_MARKETPLACE_METERING: 'ftp://x',
    });
    expect(problems.map((p) => p.variable).sort()).toEqual(
      [
        'AWS_ENDPOINT_URL_MARKETPLACE_METERING',
        'AWS_REGION',
        'METERING_DIMENSIONS',
        'METERING_DRY_RUN',
        'METERING_ENTITLEMENT',
        'METERING_LISTEN',
        'METERING_LOG_LEVEL',
        'METERING_PRODUCT_CODE',
        'METERING_SCHEDULE',
        'METERING_SEND_JITTER_SECONDS',
      ].sort(),
    );
    const listen = problems.find((p) => p.variable === 'METERING_LISTEN')!;
    expect(listen.value).toBe('10.0.0.5:8181');
    expect(listen.expected).toMatch(/loopback/);
  });

  // Regression: only the cron syntax was checked; with "0 */8 * * *" usage aged out of AWS's window, was
  // carried into the open hour, aged out again, and was never billed.
  it.each([
    ['0 */8 * * *', '300', 'its ticks are up to 8 h apart'],
    ['0 */4 * * *', '300', 'its ticks are up to 4 h apart'],
    ['0 */3 * * *', '3300', 'its ticks are up to 3 h apart'],
    ['0 9-17 * * *', '0', 'its ticks are up to 16 h apart'],
    ['0 * * * 1-5', '0', 'its ticks are up to 49 h apart'],
    ['0 * 29 2 *', '0', 'it hardly ever ticks'],
  ])(
    'refuses METERING_SCHEDULE=%s with jitter %s s: too slow for the six-hour window',
    (schedule, jitter, why) => {
      const problems = problemsOf({
        ...REQUIRED,
        METERING_SCHEDULE: schedule,
        METERING_SEND_JITTER_SECONDS: jitter,
      });
      expect(problems).toHaveLength(1);
      expect(problems[0]).toMatchObject({ variable: 'METERING_SCHEDULE', value: schedule });
      expect(problems[0].expected).toContain(`METERING_SEND_JITTER_SECONDS=${jitter}`);
      expect(problems[0].expected).toContain(why);
    },
  );

  it.each([
    ['0 * * * *', '300'],
    ['30 * * * *', '3300'],
    ['*/10 * * * *', '300'],
    ['0 */3 * * *', '300'],
    ['*/30 * * * * *', '0'],
  ])('accepts METERING_SCHEDULE=%s with jitter %s s', (schedule, jitter) => {
    expect(
      loadConfig({ ...REQUIRED, METERING_SCHEDULE: schedule, METERING_SEND_JITTER_SECONDS: jitter }).schedule,
    ).toBe(schedule);
  });

  it.each(['999', '10000001', 'many'])('refuses METERING_IDEMPOTENCY_KEYS_MAX=%s', (value) => {
    expect(problemsOf({ ...REQUIRED, METERING_IDEMPOTENCY_KEYS_MAX: value })).toEqual([
      {
        variable: 'METERING_IDEMPOTENCY_KEYS_MAX',
        value,
        expected: 'an integer from 1000 to 10000000',
      },
    ]);
  });

  it('keeps settled records 45 days by default, as METERING_RETENTION_DAYS says, from 1 to 3650', () => {
    expect(loadConfig(REQUIRED).retentionDays).toBe(45);
    expect(loadConfig({ ...REQUIRED, METERING_RETENTION_DAYS: '400' }).retentionDays).toBe(400);
    for (const value of ['0', '3651', '30d'])
      expect(problemsOf({ ...REQUIRED, METERING_RETENTION_DAYS: value })).toEqual([
        { variable: 'METERING_RETENTION_DAYS', value, expected: 'an integer from 1 to 3650' },
      ]);
  });

  it('takes METERING_ZERO_USAGE only with the dimensions it sends 0 for', () => {
    expect(loadConfig(REQUIRED).zeroUsage).toBe(false);
    expect(loadConfig({ ...REQUIRED, METERING_ZERO_USAGE: 'true' }).zeroUsage).toBe(true);
    expect(problemsOf({ METERING_LOCAL: 'true', METERING_ZERO_USAGE: 'true' })).toEqual([
      {
        variable: 'METERING_ZERO_USAGE',
        value: 'true',
        expected:
          'false unless METERING_DIMENSIONS is set (zero reporting sends 0 for each dimension listed there)',
      },
    ]);
    expect(problemsOf({ ...REQUIRED, METERING_ZERO_USAGE: 'sometimes' })).toEqual([
      { variable: 'METERING_ZERO_USAGE', value: 'sometimes', expected: 'true or false' },
    ]);
  });

  it('logs JSON unless told otherwise, and readable lines in local mode on a terminal', () => {
    expect(loadConfig(REQUIRED).logFormat).toBe('json');
    expect(loadConfig(REQUIRED, { terminal: true }).logFormat).toBe('json');
    expect(loadConfig({}, { local: true }).logFormat).toBe('json');
    expect(loadConfig({}, { local: true, terminal: true }).logFormat).toBe('pretty');
    expect(loadConfig({ METERING_LOG_FORMAT: 'json' }, { local: true, terminal: true }).logFormat).toBe(
      'json',
    );
    expect(loadConfig({ ...REQUIRED, METERING_LOG_FORMAT: 'Pretty' }).logFormat).toBe('pretty');
    expect(problemsOf({ ...REQUIRED, METERING_LOG_FORMAT: 'text' })).toEqual([
      { variable: 'METERING_LOG_FORMAT', value: 'text', expected: 'one of json, pretty' },
    ]);
  });

  it('reads METERING_UNIT_DIVISORS as dimension=divisor pairs of listed dimensions', () => {
    expect(loadConfig(REQUIRED).unitDivisors).toEqual({});
    const dims = { ...REQUIRED, METERING_DIMENSIONS: 'storage_gb,vcpu_hours,requests' };
    expect(
      loadConfig({ ...dims, METERING_UNIT_DIVISORS: ' storage_gb = 1000000000 , vcpu_hours=3600' })
        .unitDivisors,
    ).toEqual({ storage_gb: 1_000_000_000, vcpu_hours: 3600 });
    const problems = (value: string) =>
      problemsOf({ ...dims, METERING_UNIT_DIVISORS: value }).map((p) => p.expected);
    expect(problems('storage_gb=0')[0]).toContain(
      'each divisor an integer from 2 to 1000000000000000 (a dimension without one counts whole units) (got "storage_gb=0")',
    );
    // 1 would lift the report limit of a dimension that bills exactly what it counts.
    expect(problems('storage_gb=1')[0]).toContain('(got "storage_gb=1")');
    // A dimension named __proto__ is a dimension, not the object's prototype.
    expect(
      loadConfig({ ...REQUIRED, METERING_DIMENSIONS: '__proto__', METERING_UNIT_DIVISORS: '__proto__=1000' })
        .unitDivisors['__proto__'],
    ).toBe(1000);
    expect(problems('storage_gb=1.5')[0]).toContain('(got "storage_gb=1.5")');
    expect(problems('storage_gb')[0]).toContain('(got "storage_gb")');
    expect(problems('storage_gb=1000000000000001')[0]).toContain('from 2 to 1000000000000000');
    expect(problems('storage_tb=1000')).toEqual([
      'dimensions of METERING_DIMENSIONS only ("storage_tb" is not one of storage_gb, vcpu_hours, requests)',
    ]);
    expect(problems('storage_gb=10,storage_gb=20')).toEqual([
      'each dimension once ("storage_gb" is listed twice)',
    ]);
    // Every bad pair is reported at once.
    expect(problems('a=0,b=x')).toHaveLength(2);
  });

  it('reads the pod identity the chart sets from the downward API, each part optional', () => {
    expect(loadConfig(REQUIRED).pod).toEqual({});
    expect(
      loadConfig({
        ...REQUIRED,
        METERING_POD_NAMESPACE: 'shop',
        METERING_POD_NAME: ' app-0 ',
        METERING_POD_UID: '1f2e',
      }).pod,
    ).toEqual({ namespace: 'shop', name: 'app-0', uid: '1f2e' });
  });

  // Regression: without an allow-list a typo'd dimension was acknowledged, refused by AWS, and never billed.
  it('requires METERING_DIMENSIONS outside local mode, and not in it', () => {
    const problems = problemsOf({ METERING_PRODUCT_CODE: 'prod-123', AWS_REGION: 'us-east-1' });
    expect(problems.map((p) => p.variable)).toEqual(['METERING_DIMENSIONS']);
    expect(problems[0].expected).toContain('required outside local mode');
    expect(loadConfig({ METERING_LOCAL: 'true' }).dimensions).toBeUndefined();
    expect(problemsOf({ METERING_LOCAL: 'true', METERING_ENTITLEMENT: 'dry-run' })[0]).toMatchObject({
      variable: 'METERING_DIMENSIONS',
    });
  });

  it('puts every problem into one message', () => {
    try {
      loadConfig({ METERING_ENTITLEMENT: 'maybe' });
      expect.unreachable();
    } catch (err) {
      const message = (err as ConfigError).message;
      expect(message).toContain('METERING_PRODUCT_CODE=(unset)');
      expect(message).toContain(
        'METERING_ENTITLEMENT="maybe": expected one of register-usage, dry-run, none',
      );
      expect(message).toContain('AWS_REGION=(unset)');
      expect((err as ConfigError).code).toBe('ERR_CONFIG_INVALID');
    }
  });

  it.each([
    '0.0.0.0:8181',
    '192.168.1.4:8181',
    '[::]:8181',
    'example.com:80',
    '127.0.0.1',
    '127.0.0.1:99999',
  ])('refuses METERING_LISTEN=%s', (listen) => {
    expect(problemsOf({ ...REQUIRED, METERING_LISTEN: listen }).map((p) => p.variable)).toEqual([
      'METERING_LISTEN',
    ]);
  });

  it('accepts any loopback address for the app API', () => {
    expect(loadConfig({ ...REQUIRED, METERING_LISTEN: '127.9.8.7:0' }).listen).toEqual({
      host: '127.9.8.7',
      port: 0,
    });
    expect(loadConfig({ ...REQUIRED, METERING_LISTEN: 'localhost:8000' }).listen).toEqual({
      host: 'localhost',
      port: 8000,
    });
  });

  it('needs at least one app API listener', () => {
    expect(problemsOf({ ...REQUIRED, METERING_SOCKET: 'off', METERING_LISTEN: 'off' })[0].variable).toBe(
      'METERING_LISTEN',
    );
  });

  it('requires dimensions in dry-run mode', () => {
    expect(
      problemsOf({ ...REQUIRED, METERING_DIMENSIONS: '', METERING_ENTITLEMENT: 'dry-run' })[0].variable,
    ).toBe('METERING_DIMENSIONS');
  });

  it('refuses more than 24 dimensions and unprintable names', () => {
    const many = Array.from({ length: 25 }, (_, i) => `d${i}`).join(',');
    expect(problemsOf({ ...REQUIRED, METERING_DIMENSIONS: many })[0].expected).toMatch(/24/);
    expect(problemsOf({ ...REQUIRED, METERING_DIMENSIONS: 'a,\u0007b' })[0].variable).toBe(
      'METERING_DIMENSIONS',
    );
  });

  it('refuses an invalid product code and region', () => {
    const problems = problemsOf({
      METERING_PRODUCT_CODE: 'has space',
      AWS_REGION: 'mars',
      METERING_DIMENSIONS: 'requests',
    });
    expect(problems.map((p) => p.variable).sort()).toEqual(['AWS_REGION', 'METERING_PRODUCT_CODE']);
  });

  it('fills product code, region, state dir and socket in local mode', () => {
    const config = loadConfig({ METERING_LOCAL: 'true' });
    expect(config.local).toBe(true);
    expect(config.productCode).toBe('local-product');
    expect(config.region).toBe('us-east-1');
    expect(config.stateDir).toMatch(/\.metering-local\/state$/);
    expect(config.socketPath).toMatch(/\.metering-local\/metering\.sock$/);
    expect(loadConfig({}, { local: true }).local).toBe(true);
  });

  it('refuses an endpoint override in local mode', () => {
    expect(
      problemsOf({ METERING_LOCAL: 'true', AWS_ENDPOINT_URL_MARKETPLACE_METERING: 'http://x' })[0].variable,
    ).toBe('AWS_ENDPOINT_URL_MARKETPLACE_METERING');
  });

  it('reads the public key from a file, and refuses one that is not a PEM public key', () => {
    const dir = mkdtempSync(join(tmpdir(), 'config-'));
    const pem = generateKeyPairSync('rsa', { modulusLength: 2048 })
      .publicKey.export({ type: 'spki', format: 'pem' })
      .toString();
    writeFileSync(join(dir, 'key.pem'), pem);
    writeFileSync(join(dir, 'bad.pem'), 'not a key');
    expect(loadConfig({ ...REQUIRED, METERING_PUBLIC_KEY_FILE: join(dir, 'key.pem') }).publicKeyPem).toBe(
      pem.trim(),
    );
    expect(problemsOf({ ...REQUIRED, METERING_PUBLIC_KEY_FILE: join(dir, 'bad.pem') })[0].variable).toBe(
      'METERING_PUBLIC_KEY_FILE',
    );
    expect(
      problemsOf({ ...REQUIRED, METERING_PUBLIC_KEY_FILE: join(dir, 'missing.pem') })[0].expected,
    ).toMatch(/ENOENT/);
    expect(
      problemsOf({
        ...REQUIRED,
        METERING_PUBLIC_KEY: pem,
        METERING_PUBLIC_KEY_FILE: join(dir, 'key.pem'),
      })[0].variable,
    ).toBe('METERING_PUBLIC_KEY_FILE');
  });

  it('refuses a socket path too long for a unix socket', () => {
    expect(problemsOf({ ...REQUIRED, METERING_SOCKET: `/tmp/${'x'.repeat(120)}.sock` })[0].variable).toBe(
      'METERING_SOCKET',
    );
  });
});

describe('ENVIRONMENT_VARIABLES', () => {
  it('lists exactly the variables config.ts reads', async () => {
    const { readFileSync } = await import('node:fs');
    const source = readFileSync(new URL('../../src/config.ts', import.meta.url), 'utf8');
    const listStart = source.indexOf('export const ENVIRONMENT_VARIABLES');
    const listEnd = source.indexOf(']);', listStart);
    const outsideList = source.slice(0, listStart) + source.slice(listEnd);
    const read = new Set([...outsideList.matchAll(/'((?:METERING|AWS)_[A-Z_]+)'/g)].map((m) => m[1]));
    read.delete('AWS_ACCESS_KEY_ID'); // only checked for the static-credentials warning; the SDK reads it
    const { ENVIRONMENT_VARIABLES } = await import('../../src/config.js');
    expect([...ENVIRONMENT_VARIABLES].sort()).toEqual([...read].sort());
  });
});

describe('loadStateDir', () => {
  it('finds the ledger where loadConfig puts it, with the same defaults', () => {
    expect(loadStateDir({})).toBe(loadConfig(REQUIRED).stateDir);
    expect(loadStateDir({ METERING_LOCAL: 'true' })).toBe(loadConfig({ METERING_LOCAL: 'true' }).stateDir);
    expect(loadStateDir({}, { local: true })).toBe(resolve('.metering-local/state'));
    expect(loadStateDir({ METERING_STATE_DIR: '/data/x' })).toBe('/data/x');
    expect(() => loadStateDir({ METERING_LOCAL: 'maybe' })).toThrow(ConfigError);
  });
});

describe('loadClientConfig', () => {
  it('finds the sidecar where loadConfig puts it, with the same defaults', () => {
    expect(loadClientConfig({})).toEqual({
      socketPath: '/run/metering/metering.sock',
      listen: { host: '127.0.0.1', port: 8181 },
      adminListen: { host: '0.0.0.0', port: 9181 },
    });
    const local = loadClientConfig({ METERING_LOCAL: 'true', METERING_ADMIN_LISTEN: 'off' });
    expect(local.socketPath).toBe(loadConfig({ METERING_LOCAL: 'true' }).socketPath);
    expect(local.adminListen).toBeUndefined();
  });

  it('refuses what loadConfig refuses, naming the variable', () => {
    expect(() => loadClientConfig({ METERING_LISTEN: '10.0.0.1:8181' })).toThrow(
      /METERING_LISTEN="10.0.0.1:8181": expected a loopback address/,
    );
    expect(() => loadClientConfig({ METERING_ADMIN_LISTEN: 'nine' })).toThrow(ConfigError);
  });
});
