/**
 * `run --local` on a terminal, as `npm run local` runs for a developer: readable pino-pretty lines. The terminal
 * is a real pseudo-terminal from util-linux's `script`, so the sidecar sees `process.stdout.isTTY` as it would.
 */
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { processTestScope } from '../helpers/scope.js';
import { MAIN, NODE } from '../helpers/sidecarProcess.js';

const { cleanups, tempDir } = processTestScope('metering-locallogs-');

/** Runs `run --local` under a pseudo-terminal until its output holds `until`, then stops it; resolves the output. */
function onTerminal(dir: string, env: Record<string, string>, until: RegExp): Promise<string> {
  const command = `exec ${JSON.stringify(NODE)} ${JSON.stringify(MAIN)} run --local`;
  const child = spawn('script', ['-qfec', command, '/dev/null'], {
    env: {
      ...process.env,
      METERING_STATE_DIR: join(dir, 'state'),
      METERING_SOCKET: join(dir, 'metering.sock'),
      METERING_LISTEN: 'off',
      METERING_ADMIN_LISTEN: 'off',
      METERING_ENTITLEMENT: 'none',
      ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  cleanups.push(() => {
    child.kill('SIGKILL');
  });
  let out = '';
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no match in time:\n${out}`)), 15_000);
    child.stdout.on('data', (chunk: Buffer) => {
      out += chunk.toString('utf8');
      if (until.test(out)) {
        clearTimeout(timer);
        child.kill('SIGTERM');
        resolve(out);
      }
    });
    child.once('exit', () => {
      clearTimeout(timer);
      if (!until.test(out)) reject(new Error(`exited before a match:\n${out}`));
    });
  });
}

describe('local logs on a terminal', () => {
  it('prints readable lines, not JSON', async () => {
    const out = await onTerminal(tempDir(), {}, /metering sidecar ready/);
    // pino-pretty's shape: [time] LEVEL (component): message, with colours on a terminal.
    const plain = out.replace(new RegExp(`${String.fromCharCode(27)}\\[[0-9;]*m`, 'g'), '');
    expect(plain).toMatch(/\[\d{2}:\d{2}:\d{2}\.\d{3}\] INFO.*: metering sidecar ready/);
    expect(plain).not.toContain('"msg":"metering sidecar ready"');
  });

  it('keeps JSON lines on a terminal when METERING_LOG_FORMAT=json says so', async () => {
    const out = await onTerminal(
      tempDir(),
      { METERING_LOG_FORMAT: 'json' },
      /"msg":"metering sidecar ready"/,
    );
    expect(out).toContain('"level":"info"');
  });
});
