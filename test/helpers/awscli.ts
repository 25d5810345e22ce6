import { execFile, execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const TOOLS = fileURLToPath(new URL('../../.tools/awscli', import.meta.url));
const ROOT = join(TOOLS, 'root');
const AWS = join(ROOT, 'usr/bin/aws');
const SITE = join(ROOT, 'usr/lib/python3/dist-packages');
/** Debian's own Python, the one its awscli and python3-* packages are built for. */
const PYTHON = '/usr/bin/python3';

const run = promisify(execFile);

/**
 * Debian's AWS CLI (package `awscli`), a Metering client nobody here wrote: unpacked under .tools with every
 * package it needs that the machine lacks (nothing is installed system-wide), and run with Debian's Python.
 * Call it from a `beforeAll` (a download on a fresh machine); {@link awsCli} calls it too.
 */
export function installAwsCli(): void {
  if (existsSync(AWS)) return;
  if (!existsSync(PYTHON)) throw new Error(`Debian's awscli needs ${PYTHON} (package python3)`);
  mkdirSync(TOOLS, { recursive: true });
  const policy = execFileSync('apt-cache', ['policy', 'awscli'], { encoding: 'utf8' });
  if (!/Candidate: \d/.test(policy)) execFileSync('apt-get', ['update', '-qq'], { stdio: 'ignore' });
  const depends = execFileSync(
    'apt-cache',
    [
      'depends',
      '--recurse',
      '--no-recommends',
      '--no-suggests',
      '--no-conflicts',
      '--no-breaks',
      '--no-replaces',
      '--no-enhances',
      'awscli',
    ],
    { encoding: 'utf8' },
  );
  const packages = [...new Set(depends.split('\n').filter((line) => /^[a-z0-9]/.test(line)))];
  const missing = packages.filter((name) => {
    try {
      return !execFileSync('dpkg-query', ['-W', '-f=${Status}', name], {
        encoding: 'utf8',
        stdio: ['ignore', 'pipe', 'ignore'],
      }).includes('install ok installed');
    } catch {
      return true;
    }
  });
  execFileSync('apt-get', ['download', '-qq', ...missing], { cwd: TOOLS, stdio: 'ignore' });
  for (const deb of readdirSync(TOOLS).filter((f) => f.endsWith('.deb')))
    execFileSync('dpkg', ['-x', join(TOOLS, deb), ROOT]);
  if (!existsSync(AWS)) throw new Error(`aws not found under ${ROOT}`);
}

/** What one `aws` run printed, and how it ended. */
export interface AwsCliResult {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

/**
 * Runs `aws ARGS` against `endpoint`, signed for `region` with throwaway credentials and no configuration
 * files, profiles or instance metadata of the machine's.
 */
export async function awsCli(
  args: readonly string[],
  options: { endpoint: string; region: string; accessKeyId?: string },
): Promise<AwsCliResult> {
  installAwsCli();
  const env = {
    PATH: process.env['PATH'] ?? '',
    PYTHONPATH: SITE,
    HOME: TOOLS,
    AWS_ACCESS_KEY_ID: options.accessKeyId ?? 'AWSCLITEST',
    AWS_SECRET_ACCESS_KEY: 'x',
    AWS_DEFAULT_REGION: options.region,
    AWS_CONFIG_FILE: '/dev/null',
    AWS_SHARED_CREDENTIALS_FILE: '/dev/null',
    AWS_EC2_METADATA_DISABLED: 'true',
    AWS_PAGER: '',
    AWS_MAX_ATTEMPTS: '1',
  };
  try {
    const { stdout, stderr } = await run(
      PYTHON,
      [AWS, '--endpoint-url', options.endpoint, '--output', 'json', ...args],
      { env, timeout: 60_000 },
    );
    return { code: 0, stdout, stderr };
  } catch (error) {
    const failed = error as { code?: unknown; stdout?: string; stderr?: string };
    if (typeof failed.code !== 'number') throw error;
    return { code: failed.code, stdout: failed.stdout ?? '', stderr: failed.stderr ?? '' };
  }
}
