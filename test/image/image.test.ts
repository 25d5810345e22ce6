/**
 * The image, built and run for real (scripts/test-image.sh): a local Docker engine, the multi-stage build,
 * and the container run read-only with all capabilities dropped and no-new-privileges in --local mode. The
 * script asserts health, metered usage and exit code 0 itself; this test runs it and reads its verdict.
 */
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

describe('container image', () => {
  it('builds, runs hardened, meters usage through the socket and exits 0 on SIGTERM', async () => {
    const { code, output } = await new Promise<{ code: number | null; output: string }>((resolve) => {
      const child = spawn('bash', ['scripts/test-image.sh'], {
        cwd: ROOT,
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let output = '';
      child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
      child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
      child.on('exit', (exitCode) => resolve({ code: exitCode, output }));
    });
    // The script's own log, so a failure shows which step failed.
    process.stdout.write(
      output
        .split('\n')
        .filter((l) => l.startsWith('[image]') || l.startsWith('image size'))
        .join('\n') + '\n',
    );
    expect(code, output.slice(-4000)).toBe(0);
    expect(output).toContain('PASS: healthy, usage metered once per dimension, exit code 0');
    expect(output).toMatch(/image size: \d+ MiB/);
  }, 1_200_000);
});
