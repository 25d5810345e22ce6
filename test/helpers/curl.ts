import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const TOOLS = fileURLToPath(new URL('../../.tools/curl', import.meta.url));
const ROOT = join(TOOLS, 'root');

/**
 * The environment a child process finds curl in: the machine's own when it has one, else Debian's curl and
 * libcurl4 unpacked under .tools (nothing installed system-wide; their own dependencies are in a Debian base
 * system), put first on PATH with the library beside it. `fetch: true` takes the unpacked one even when the
 * machine has curl, to check that path.
 */
export function curlEnv(options: { fetch?: boolean } = {}): Record<string, string> {
  const path = process.env['PATH'] ?? '';
  if (options.fetch !== true && onPath('curl')) return { PATH: path };
  const bin = join(ROOT, 'usr/bin');
  if (!existsSync(join(bin, 'curl'))) {
    mkdirSync(TOOLS, { recursive: true });
    const policy = execFileSync('apt-cache', ['policy', 'curl'], { encoding: 'utf8' });
    if (!/Candidate: \d/.test(policy)) execFileSync('apt-get', ['update', '-qq'], { stdio: 'ignore' });
    execFileSync('apt-get', ['download', '-qq', 'curl', 'libcurl4'], { cwd: TOOLS, stdio: 'ignore' });
    for (const deb of readdirSync(TOOLS).filter((f) => f.endsWith('.deb')))
      execFileSync('dpkg', ['-x', join(TOOLS, deb), ROOT]);
    if (!existsSync(join(bin, 'curl'))) throw new Error(`curl not found under ${ROOT}`);
  }
  return { PATH: `${bin}:${path}`, LD_LIBRARY_PATH: join(ROOT, 'usr/lib/x86_64-linux-gnu') };
}

function onPath(command: string): boolean {
  try {
    execFileSync('sh', ['-c', `command -v ${command}`], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}
