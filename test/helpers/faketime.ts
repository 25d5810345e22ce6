import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const TOOLS = fileURLToPath(new URL('../../.tools/faketime', import.meta.url));
const LIBRARY = join(TOOLS, 'root/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1');

/**
 * libfaketime from Debian, unpacked under .tools (nothing installed system-wide): preloaded into a child
 * process, it shifts the real clock the process reads, so the unmodified sidecar lives through simulated
 * hours. Returns the library's path.
 */
export function ensureFaketime(): string {
  if (existsSync(LIBRARY)) return LIBRARY;
  mkdirSync(TOOLS, { recursive: true });
  const policy = execFileSync('apt-cache', ['policy', 'libfaketime'], { encoding: 'utf8' });
  if (!/Candidate: \d/.test(policy)) execFileSync('apt-get', ['update', '-qq'], { stdio: 'ignore' });
  execFileSync('apt-get', ['download', '-qq', 'libfaketime'], { cwd: TOOLS, stdio: 'ignore' });
  const deb = readdirSync(TOOLS).find((f) => f.startsWith('libfaketime') && f.endsWith('.deb'));
  if (deb === undefined) throw new Error('apt-get download libfaketime produced no package');
  execFileSync('dpkg', ['-x', join(TOOLS, deb), join(TOOLS, 'root')]);
  if (!existsSync(LIBRARY)) throw new Error(`libfaketime not found at ${LIBRARY}`);
  return LIBRARY;
}

/** Environment that runs a child process `offsetMs` ahead of the real clock (timers stay real). */
export function faketimeEnv(offsetMs: number): Record<string, string> {
  return {
    LD_PRELOAD: ensureFaketime(),
    FAKETIME: `${offsetMs >= 0 ? '+' : '-'}${Math.round(Math.abs(offsetMs) / 1000)}`,
    FAKETIME_DONT_FAKE_MONOTONIC: '1',
    FAKETIME_NO_CACHE: '1',
  };
}
