/**
 * The dependency-free clients of clients/ (Python with the standard library, and a POSIX shell script over
 * curl) against a running sidecar: each waits for a sidecar that is not up yet, resends a report whose answer
 * was lost with the same idempotency key so that it is counted once, and stops at once on a refusal.
 */
import { execFile, execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { cli } from '../helpers/cli.js';
import { processTestScope } from '../helpers/scope.js';
import { curlEnv } from '../helpers/curl.js';

const PYTHON_CLIENT = fileURLToPath(new URL('../../clients/python/metering_client.py', import.meta.url));
const SHELL_CLIENT = fileURLToPath(new URL('../../clients/shell/metering-report.sh', import.meta.url));

const { cleanups, tempDir, localSidecar } = processTestScope('metering-clients-');

/**
 * A socket in front of the sidecar's that passes every connection through, but drops the first connection's
 * answer: the request reaches the sidecar, which stores it, and the client sees the connection close unanswered.
 */
async function losingFirstAnswer(dir: string): Promise<{ path: string; connections: () => number }> {
  const path = join(dir, 'proxy.sock');
  let connections = 0;
  const server: Server = createServer((client: Socket) => {
    const first = connections++ === 0;
    const upstream = createConnection(join(dir, 'metering.sock'));
    client.pipe(upstream);
    upstream.on('data', (chunk) => {
      if (first) client.destroy();
      else client.write(chunk);
    });
    upstream.on('end', () => client.end());
    upstream.on('error', () => client.destroy());
    client.on('error', () => upstream.destroy());
    client.on('close', () => upstream.destroy());
  });
  await new Promise<void>((resolve) => server.listen(path, resolve));
  cleanups.push(() => new Promise<void>((resolve) => server.close(() => resolve())));
  return { path, connections: () => connections };
}

function runClient(
  command: string,
  args: string[],
  env: Record<string, string>,
): Promise<{ code: number; stdout: string; stderr: string; ms: number }> {
  const started = Date.now();
  return new Promise((resolve) => {
    execFile(
      command,
      args,
      { env: { PATH: process.env['PATH'] ?? '', ...env }, timeout: 60_000 },
      (err, stdout, stderr) => {
        const code = err === null ? 0 : typeof err.code === 'number' ? err.code : 1;
        resolve({ code, stdout, stderr, ms: Date.now() - started });
      },
    );
  });
}

const CLIENTS = {
  python: (socket: string, args: string[], env: Record<string, string> = {}) =>
    runClient('python3', [PYTHON_CLIENT, ...args], { METERING_SOCKET: socket, ...env }),
  shell: (socket: string, args: string[], env: Record<string, string> = {}) =>
    runClient(SHELL_CLIENT, args, { ...curlEnv(), METERING_SOCKET: socket, ...env }),
};

/** Args of one report: the Python client takes `--tag` and `--id`, the shell script METERING_TAGS and an id. */
function reportArgs(
  client: keyof typeof CLIENTS,
  quantity: number,
  id?: string,
): { args: string[]; env: Record<string, string> } {
  if (client === 'python') {
    return {
      args: ['requests', String(quantity), '--tag', 'tenant=acme', ...(id ? ['--id', id] : [])],
      env: {},
    };
  }
  return {
    args: ['requests', String(quantity), ...(id ? [id] : [])],
    env: { METERING_TAGS: '{"tenant":"acme"}' },
  };
}

async function openQuantity(dir: string): Promise<number> {
  const status = await cli(['status', '--json'], { METERING_SOCKET: join(dir, 'metering.sock') });
  const body = JSON.parse(status.stdout) as { openHours: { quantity: number }[] };
  return body.openHours.reduce((sum, o) => sum + o.quantity, 0);
}

describe.each(Object.keys(CLIENTS) as (keyof typeof CLIENTS)[])('the %s client', (name) => {
  const client = CLIENTS[name];

  it('waits for a sidecar that is not up yet, then reports once', async () => {
    const dir = tempDir();
    const { args, env } = reportArgs(name, 4);
    const reporting = client(join(dir, 'metering.sock'), args, env);
    await new Promise((resolve) => setTimeout(resolve, 700));
    const sidecar = localSidecar(dir);
    await sidecar.ready();
    const result = await reporting;
    expect(result.code, result.stderr).toBe(0);
    expect(JSON.parse(result.stdout)).toEqual({ accepted: 1, duplicates: 0 });
    expect(await openQuantity(dir)).toBe(4);
  });

  it('resends a report whose answer was lost with the same idempotency key, and it is counted once', async () => {
    const dir = tempDir();
    await localSidecar(dir).ready();
    const proxy = await losingFirstAnswer(dir);
    const { args, env } = reportArgs(name, 5); // no id given: the client makes one before the first attempt
    const result = await client(proxy.path, args, env);
    expect(result.code, result.stderr).toBe(0);
    expect(proxy.connections()).toBe(2);
    // The first attempt was stored; the resend carried its key and was acknowledged as a duplicate.
    expect(JSON.parse(result.stdout)).toEqual({ accepted: 0, duplicates: 1 });
    expect(await openQuantity(dir)).toBe(5);
  });

  it('stops at the first refusal, naming the error, and counts nothing', async () => {
    const dir = tempDir();
    await localSidecar(dir).ready();
    const result = await client(join(dir, 'metering.sock'), ['requests', '-1'], {});
    expect(result.code).toBe(1);
    expect(result.stderr).toMatch(/InvalidRequest|InvalidQuantity/);
    expect(result.ms).toBeLessThan(3000);
    expect(await openQuantity(dir)).toBe(0);
  });
});

// A machine without curl runs the shell client with Debian's, unpacked under .tools by the test helper.
it('finds Debian’s curl for the shell client where the machine has none', () => {
  const env = curlEnv({ fetch: true });
  const bin = env['PATH'].split(':')[0];
  expect(bin).toMatch(/\.tools\/curl\/root\/usr\/bin$/);
  const version = execFileSync(join(bin, 'curl'), ['--version'], {
    env: { ...process.env, ...env },
    encoding: 'utf8',
  });
  expect(version).toMatch(/^curl \d+\.\d+/);
  expect(version).toMatch(/UnixSockets/);
}, 120_000);

// docs/api.md's one-liner, as printed there, against a sidecar whose first answer is lost.
it('counts the usage of docs/api.md’s curl one-liner once when its first answer is lost', async () => {
  const docs = readFileSync(new URL('../../docs/api.md', import.meta.url), 'utf8');
  const block = /```sh\n(id=\$\(cat \/proc\/sys\/kernel\/random\/uuid\); curl[\s\S]*?)```/.exec(docs);
  expect(block).not.toBeNull();
  const dir = tempDir();
  await localSidecar(dir).ready();
  const proxy = await losingFirstAnswer(dir);
  const command = block![1].replace('/run/metering/metering.sock', proxy.path);
  const result = await runClient('sh', ['-c', command], curlEnv());
  expect(result.code, result.stderr).toBe(0);
  expect(proxy.connections()).toBe(2);
  expect(JSON.parse(result.stdout)).toEqual({ accepted: 0, duplicates: 1 });
  expect(await openQuantity(dir)).toBe(3);
});
