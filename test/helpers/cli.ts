import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { MAIN, NODE } from './sidecarProcess.js';

const run = promisify(execFile);

/** Runs the built CLI with `args` and only `env` (and PATH); resolves with its exit code and output. */
export async function cli(
  args: string[],
  env: Record<string, string>,
): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run(NODE, [MAIN, ...args], {
      env: {
        PATH: process.env['PATH'] ?? '',
        AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true',
        ...env,
      },
      maxBuffer: 64 * 1024 * 1024,
    });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

/** The objects of JSON-lines output (`export --format jsonl`), one per non-empty line. */
export function jsonLines(text: string): Record<string, unknown>[] {
  return text
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}
