/**
 * The built CLI as an operator and a seller's app use it: exit codes, `report` and `status` over the socket,
 * local mode with the embedded emulator, and the standalone emulator command.
 */
import { execFile } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import { MarketplaceMeteringClient, MeterUsageCommand } from '@aws-sdk/client-marketplace-metering';
import { describe, expect, it } from 'vitest';
import { cli } from '../helpers/cli.js';
import { processTestScope } from '../helpers/scope.js';
import { MAIN, NODE, SidecarProcess } from '../helpers/sidecarProcess.js';

const run = promisify(execFile);

const scope = processTestScope('metering-cli-');
const { cleanups, tempDir } = scope;

describe('metering-sidecar CLI', () => {
  // The process and fault tests run twice in `npm test`: on this Node.js, and on the image's (METERING_TEST_NODE_DIR).
  it('runs on the Node.js the test run asked for, and says which at startup', async () => {
    const { stdout } = await run(NODE, ['--version']);
    const dir = tempDir();
    const { localSidecar } = scope;
    const sidecar = localSidecar(dir);
    await sidecar.ready();
    const ready = sidecar.logLines().find((l) => l['msg'] === 'metering sidecar ready');
    expect(ready?.['node']).toBe(stdout.trim());
    if (process.env['METERING_TEST_NODE_DIR'] !== undefined)
      expect(ready?.['node']).not.toBe(process.version);
    expect((await sidecar.stop('SIGTERM')).code).toBe(0);
  });

  it('runs as its first line says, with the Node.js options it ships with', async () => {
    const first = readFileSync(MAIN, 'utf8').split('\n')[0];
    expect(first).toBe('#!/usr/bin/env -S node --max-semi-space-size=4');
    // As the kernel runs a script: the interpreter, the rest of the line as one argument, then the script.
    const { stdout } = await run('/usr/bin/env', [first.slice('#!/usr/bin/env '.length), MAIN, '--version'], {
      env: { PATH: process.env['PATH'] ?? '' },
    });
    expect(stdout.trim()).toMatch(/^\d+\.\d+\.\d+$/);
  });

  it('is one bundled file, loading the agent, the SDK and the emulator only for the commands that run them', async () => {
    // A module resolution hook (module.register) records every module the process loads as an ES module.
    const dir = tempDir();
    const log = join(dir, 'loaded.txt');
    const hooks = join(dir, 'hooks.mjs');
    writeFileSync(
      hooks,
      `import { appendFileSync } from 'node:fs';
export async function resolve(specifier, context, next) {
  const result = await next(specifier, context);
  appendFileSync(${JSON.stringify(log)}, result.url + '\\n');
  return result;
}
`,
    );
    const register = join(dir, 'register.mjs');
    writeFileSync(
      register,
      `import { register } from 'node:module';\nregister(${JSON.stringify(pathToFileURL(hooks).href)});\n`,
    );
    const nodeOptions = { NODE_OPTIONS: `--import=${pathToFileURL(register).href}` };
    const dist = dirname(MAIN);
    const loaded = (): string[] => {
      const files = existsSync(log) ? readFileSync(log, 'utf8').split('\n') : [];
      writeFileSync(log, '');
      return files
        .filter((url) => url.startsWith('file:') && url !== pathToFileURL(register).href)
        .map((url) => relative(dist, fileURLToPath(url)));
    };

    const check = await cli(['healthcheck'], { ...nodeOptions, METERING_SOCKET: join(dir, 'none.sock') });
    expect(check.code).toBe(1);
    const forCheck = loaded();
    expect(forCheck).toContain('main.js');
    expect(forCheck.filter((f) => f !== 'main.js' && !/^chunks\/chunk-\w+\.js$/.test(f))).toEqual([]);

    const sidecar = scope.localSidecar(dir, nodeOptions);
    await sidecar.ready();
    expect((await sidecar.stop('SIGTERM')).code).toBe(0);
    const forRun = loaded();
    expect(forRun.filter((f) => /^chunks\/agent-\w+\.js$/.test(f))).toHaveLength(1);
    expect(forRun.filter((f) => /^chunks\/emulator-\w+\.js$/.test(f))).toHaveLength(1);
    // From outside the bundle, only the native addon: the SDK, prom-client and pino are in it.
    const outside = forRun.filter((f) => f !== 'main.js' && !f.startsWith('chunks/'));
    expect(outside.length).toBeGreaterThan(0);
    expect(outside.filter((f) => !f.startsWith(join('..', 'node_modules', 'better-sqlite3') + '/'))).toEqual(
      [],
    );
  });

  it('exits 78 listing every configuration problem at once', async () => {
    const result = await cli(['run'], { METERING_LISTEN: '0.0.0.0:8181', METERING_ENTITLEMENT: 'sometimes' });
    expect(result.code).toBe(78);
    expect(result.stderr).toContain('METERING_PRODUCT_CODE=(unset)');
    expect(result.stderr).toContain('METERING_LISTEN="0.0.0.0:8181": expected a loopback address');
    expect(result.stderr).toContain('METERING_ENTITLEMENT="sometimes"');
    expect(result.stderr).toContain('AWS_REGION=(unset)');
  });

  it('exits 78 naming METERING_SCHEDULE when the schedule is too slow for the six-hour window', async () => {
    const result = await cli(['run', '--local'], { METERING_SCHEDULE: '0 */8 * * *' });
    expect(result.code).toBe(78);
    expect(result.stderr).toContain(
      'METERING_SCHEDULE="0 */8 * * *": expected a schedule that ticks at least',
    );
  });

  // Regression: without an allow-list a typo'd dimension was acknowledged and then refused by AWS.
  it('exits 78 naming METERING_DIMENSIONS when it is missing outside local mode', async () => {
    const result = await cli(['run'], { METERING_PRODUCT_CODE: 'prod', AWS_REGION: 'us-east-1' });
    expect(result.code).toBe(78);
    expect(result.stderr).toContain('METERING_DIMENSIONS=(unset): expected the product');
  });

  it('exits 64 on an unknown command and prints help with --help', async () => {
    expect((await cli(['frobnicate'], {})).code).toBe(64);
    const help = await cli(['--help'], {});
    expect(help.code).toBe(0);
    expect(help.stdout).toContain('metering-sidecar report DIMENSION QUANTITY');
    expect((await cli(['--version'], {})).stdout.trim()).toMatch(/^\d+\.\d+\.\d+$/);
  });

  it('exits 1 with a clear message when the ledger is not a database', async () => {
    const dir = tempDir();
    const { writeFileSync, mkdirSync } = await import('node:fs');
    mkdirSync(join(dir, 'state'));
    writeFileSync(join(dir, 'state', 'ledger.db'), 'garbage'.repeat(1000));
    const result = await cli(['run', '--local'], {
      METERING_ENTITLEMENT: 'none',
      METERING_STATE_DIR: join(dir, 'state'),
      METERING_SOCKET: join(dir, 'm.sock'),
      METERING_LISTEN: 'off',
      METERING_ADMIN_LISTEN: 'off',
    });
    expect(result.code).toBe(1);
    expect(result.stdout).toContain('ERR_STATE_CORRUPT');
    expect(result.stdout).toContain('not a readable database');
  });

  it('runs locally with the embedded emulator: report, status, and SIGTERM meters the usage and exits 0', async () => {
    // Prepare
    const dir = tempDir();
    const socket = join(dir, 'metering.sock');
    const env = {
      METERING_ENTITLEMENT: 'none',
      METERING_STATE_DIR: join(dir, 'state'),
      METERING_SOCKET: socket,
      METERING_LISTEN: 'off',
      METERING_ADMIN_LISTEN: 'off',
    };
    const sidecar = SidecarProcess.spawn(env, ['run', '--local']);
    cleanups.push(() => {
      sidecar.child.kill('SIGKILL');
    });
    await sidecar.ready();

    // Act
    const first = await cli(['report', 'requests', '5', '--tag', 'tenant=acme', '--id', 'evt-1'], {
      METERING_SOCKET: socket,
    });
    const again = await cli(['report', 'requests', '5', '--tag', 'tenant=acme', '--id', 'evt-1'], {
      METERING_SOCKET: socket,
    });
    const bad = await cli(['report', 'requests', '5', '--tag', 'tenant=a,b'], { METERING_SOCKET: socket });
    const json = await cli(['status', '--json'], { METERING_SOCKET: socket });
    const table = await cli(['status'], { METERING_SOCKET: socket });
    const exit = await sidecar.stop('SIGTERM');

    // Assess
    expect(first).toMatchObject({ code: 0 });
    expect(JSON.parse(first.stdout)).toEqual({ accepted: 1, duplicates: 0 });
    expect(JSON.parse(again.stdout)).toEqual({ accepted: 0, duplicates: 1 });
    expect(bad.code).toBe(1);
    expect(JSON.parse(bad.stdout)).toMatchObject({ error: { code: 'InvalidTags' } });
    const status = JSON.parse(json.stdout) as {
      openHours: { dimension: string; quantity: number }[];
      entitlement: unknown;
    };
    expect(status.openHours).toMatchObject([{ dimension: 'requests', quantity: 5, tagSets: 1 }]);
    expect(status.entitlement).toMatchObject({ state: 'disabled', mode: 'none' });
    expect(table.stdout).toMatch(/requests\s+5 {2}\(1 tag sets\)/);
    expect(exit.code).toBe(0);
    const metered = sidecar.logLines().find((l) => l['msg'] === 'emulator call') as {
      input: Record<string, unknown>;
    };
    expect(metered.input).toMatchObject({
      ProductCode: 'local-product',
      UsageDimension: 'requests',
      UsageQuantity: 5,
      UsageAllocations: [{ AllocatedUsageQuantity: 5, Tags: [{ Key: 'tenant', Value: 'acme' }] }],
    });
    expect(sidecar.logLines().some((l) => l['msg'] === 'usage metered')).toBe(true);
  });

  it('with METERING_ZERO_USAGE, meters 0 for each listed dimension without usage at shutdown', async () => {
    const dir = tempDir();
    const socket = join(dir, 'metering.sock');
    const sidecar = SidecarProcess.spawn(
      {
        METERING_ENTITLEMENT: 'none',
        METERING_STATE_DIR: join(dir, 'state'),
        METERING_SOCKET: socket,
        METERING_LISTEN: 'off',
        METERING_ADMIN_LISTEN: 'off',
        METERING_DIMENSIONS: 'requests,gb,nodes',
        METERING_ZERO_USAGE: 'true',
      },
      ['run', '--local'],
    );
    cleanups.push(() => {
      sidecar.child.kill('SIGKILL');
    });
    await sidecar.ready();
    expect((await cli(['report', 'requests', '5'], { METERING_SOCKET: socket })).code).toBe(0);
    const exit = await sidecar.stop('SIGTERM');

    expect(exit.code).toBe(0);
    const calls = sidecar
      .logLines()
      .filter((l) => l['msg'] === 'emulator call' && l['operation'] === 'MeterUsage')
      .map((l) => l['input'] as { UsageDimension: string; UsageQuantity: number });
    expect(calls.map((c) => [c.UsageDimension, c.UsageQuantity]).sort()).toEqual([
      ['gb', 0],
      ['nodes', 0],
      ['requests', 5],
    ]);
    expect(sidecar.logLines().filter((l) => l['msg'] === 'usage metered')).toHaveLength(3);
  });

  it('doctor names what keeps metering from working, with the fix, and exits 1', async () => {
    const bad = await cli(['doctor', '--json'], {
      AWS_REGION: 'us-east-1',
      AWS_ACCESS_KEY_ID: 'AKIAEXAMPLE',
      AWS_SECRET_ACCESS_KEY: 'secret',
      AWS_ENDPOINT_URL_MARKETPLACE_METERING: 'http://127.0.0.1:1',
      HOME: tempDir(),
    });
    expect(bad.code).toBe(1);
    const report = JSON.parse(bad.stdout) as {
      credentials: string;
      findings: { code: string; fix: string }[];
    };
    expect(report.credentials).toBe('static-keys');
    expect(report.findings.map((f) => f.code)).toEqual([
      'DOCTOR_STATIC_KEYS',
      'DOCTOR_ENDPOINT_OVERRIDE',
      'DOCTOR_NO_ROUTE',
    ]);
    const text = await cli(['doctor'], {
      AWS_REGION: 'us-east-1',
      AWS_CONTAINER_CREDENTIALS_FULL_URI: 'http://169.254.170.23/v1/credentials',
      AWS_ENDPOINT_URL_MARKETPLACE_METERING: 'http://127.0.0.1:1',
      KUBERNETES_SERVICE_HOST: '10.0.0.1',
      HOME: tempDir(),
    });
    expect(text.code).toBe(1);
    expect(text.stdout).toContain('credentials  eks-pod-identity');
    expect(text.stdout).toMatch(
      /error {4}DOCTOR_POD_IDENTITY: .*\n {9}fix: delete the pod identity association/,
    );
  });

  it('report fails clearly when no sidecar listens', async () => {
    const dir = tempDir();
    const result = await cli(['report', 'requests', '1'], { METERING_SOCKET: join(dir, 'none.sock') });
    expect(result.code).toBe(1);
    expect(result.stdout + result.stderr).toMatch(/ENOENT|ECONNREFUSED/);
  });

  it('runs the emulator under an account quota given by --quota, and refuses a bad one with exit 64', async () => {
    const bad = await cli(['emulator', '--port', '0', '--quota', 'MeterUsage=fast'], {});
    expect(bad.code).toBe(64);
    expect(bad.stderr).toContain('--quota');

    const emulator = SidecarProcess.spawn({}, ['emulator', '--port', '0', '--quota', 'MeterUsage=1']);
    cleanups.push(() => {
      emulator.child.kill('SIGKILL');
    });
    while (!/listening on (http:\/\/\S+)/.test(emulator.stdout)) await new Promise((r) => setTimeout(r, 10));
    const url = /listening on (http:\/\/\S+)/.exec(emulator.stdout)![1];
    const quota = await (await fetch(`${url}/emulator/quota`)).json();
    expect(quota).toEqual({ quota: { MeterUsage: 1 } });
    expect(emulator.stdout).toContain('Account quota: {"MeterUsage":1}');
    expect((await emulator.stop('SIGTERM')).code).toBe(0);
  });

  it('runs the emulator standalone, printing each call it receives', async () => {
    const emulator = SidecarProcess.spawn({}, [
      'emulator',
      '--port',
      '0',
      '--product-code',
      'p1',
      '--dimensions',
      'a,b',
    ]);
    cleanups.push(() => {
      emulator.child.kill('SIGKILL');
    });
    while (!/listening on (http:\/\/\S+)/.test(emulator.stdout)) await new Promise((r) => setTimeout(r, 10));
    const url = /listening on (http:\/\/\S+)/.exec(emulator.stdout)![1];
    const client = new MarketplaceMeteringClient({
      region: 'us-east-1',
      endpoint: url,
      credentials: { accessKeyId: 'SELLERTEST', secretAccessKey: 'x' },
      maxAttempts: 1,
    });
    const out = await client.send(
      new MeterUsageCommand({
        ProductCode: 'p1',
        Timestamp: new Date(),
        UsageDimension: 'a',
        UsageQuantity: 3,
      }),
    );
    client.destroy();
    expect(out.MeteringRecordId).toMatch(/^[0-9a-f-]{36}$/);
    const records = (await (await fetch(`${url}/emulator/records`)).json()) as {
      records: { quantity: number }[];
    };
    expect(records.records).toMatchObject([{ quantity: 3 }]);
    while (!emulator.stdout.includes('"operation":"MeterUsage"')) await new Promise((r) => setTimeout(r, 10));
    expect((await emulator.stop('SIGTERM')).code).toBe(0);
  });
});
