/**
 * Configuration: the `METERING_*` and `AWS_*` environment variables, read once at startup into a frozen, typed
 * {@link Config}. Every problem is collected and reported in one {@link ConfigError} (exit code 78) naming the
 * variable, the value received and what was expected. The table in docs/configuration.md mirrors this file.
 */
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { validate as validateCron } from 'node-cron';
import { type ListenAddress, parseListenAddress } from './address.js';
import {
  DIMENSION_PATTERN,
  MAX_DIMENSIONS,
  MAX_PUBLIC_KEY_VERSION,
  PRODUCT_CODE_PATTERN,
} from './awsLimits.js';
import { ConfigError, type ConfigProblem } from './errors.js';
import { maxTickGapMs } from './ledger/hours.js';
import { MAX_UNIT_DIVISOR } from './ledger/units.js';
import { DEFAULT_IDEMPOTENCY_KEYS_MAX, DEFAULT_RETENTION_DAYS } from './ledger/keys.js';
import { longestTickGapMs } from './schedule/cadence.js';

export type { ListenAddress } from './address.js';

/** How entitlement is checked at startup. */
export type EntitlementMode = 'register-usage' | 'dry-run' | 'none';

/** The sidecar's configuration. Frozen; created only by {@link loadConfig}. */
export interface Config {
  readonly productCode: string;
  readonly entitlement: EntitlementMode;
  readonly publicKeyVersion: number;
  /** How long startup retries RegisterUsage or DryRun through throttling, 5xx and network errors. */
  readonly entitlementRetrySeconds: number;
  /** PEM of the product public key, from METERING_PUBLIC_KEY or METERING_PUBLIC_KEY_FILE. */
  readonly publicKeyPem: string | undefined;
  /** Allow-list of dimension names; required outside local mode, where undefined accepts any valid name. */
  readonly dimensions: readonly string[] | undefined;
  /**
   * METERING_UNIT_DIVISORS: dimensions that take usage in a finer unit than they bill, with how many fine units
   * make one billed unit (docs/metering.md, "Unit scaling"). Dimensions not listed count whole units.
   */
  readonly unitDivisors: Readonly<Record<string, number>>;
  /** Unix socket path for the app API; undefined when `off`. */
  readonly socketPath: string | undefined;
  /** Loopback TCP address for the app API; undefined when `off`. */
  readonly listen: ListenAddress | undefined;
  /** Admin listener address; undefined when `off`. */
  readonly adminListen: ListenAddress | undefined;
  readonly stateDir: string;
  /**
   * Directory shared by the product's sidecars (METERING_HANDOFF_DIR) where usage that cannot be delivered at
   * shutdown is handed off to another sidecar; undefined: no handoff, usage stays in the state directory.
   */
  readonly handoffDir: string | undefined;
  /** How often running sidecars look for handoffs to adopt (METERING_HANDOFF_SCAN_SECONDS), besides at start. */
  readonly handoffScanSeconds: number;
  readonly schedule: string;
  readonly sendJitterSeconds: number;
  readonly dryRun: boolean;
  /**
   * METERING_ZERO_USAGE: send quantity 0 for every dimension of METERING_DIMENSIONS in each hour without usage
   * while the sidecar runs, so a buyer sees the product metered (and an outage is not taken for zero usage).
   */
  readonly zeroUsage: boolean;
  readonly shutdownTimeoutSeconds: number;
  /** Most idempotency keys kept (METERING_IDEMPOTENCY_KEYS_MAX); the oldest are forgotten beyond it. */
  readonly idempotencyKeysMax: number;
  /** Days a settled record is kept for the reconciliation export (METERING_RETENTION_DAYS). */
  readonly retentionDays: number;
  /** The pod's identity from the downward API (METERING_POD_NAMESPACE, _NAME, _UID; the chart sets them). */
  readonly pod: PodIdentity;
  readonly logLevel: LogLevel;
  /**
   * METERING_LOG_FORMAT: `json` lines (the default, what log collectors read) or `pretty`, pino-pretty's readable
   * lines (the default in local mode on a terminal).
   */
  readonly logFormat: LogFormat;
  readonly local: boolean;
  readonly region: string;
  /** Endpoint override for Marketplace Metering; undefined uses the SDK's regional endpoint. */
  readonly endpoint: string | undefined;
  /** True when long-term keys are in the environment (AWS accepts only the task role or IRSA for metering). */
  readonly staticCredentials: boolean;
}

/** What the downward API tells of the pod; each field absent when not set. */
export interface PodIdentity {
  readonly namespace?: string;
  readonly name?: string;
  readonly uid?: string;
}

export type LogLevel = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';

export type LogFormat = 'json' | 'pretty';
const LOG_FORMATS: readonly LogFormat[] = ['json', 'pretty'];

const LOG_LEVELS: readonly LogLevel[] = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];
const ENTITLEMENT_MODES: readonly EntitlementMode[] = ['register-usage', 'dry-run', 'none'];

/** AWS region names, e.g. `us-east-1`, `us-gov-west-1`, `cn-northwest-1`. */
const REGION_PATTERN = /^[a-z]{2}(-[a-z]+)+-\d+$/;

/** Defaults used with METERING_LOCAL=true, so `npm run local` works without root or an AWS account. */
const LOCAL_DEFAULTS = {
  productCode: 'local-product',
  region: 'us-east-1',
  stateDir: '.metering-local/state',
  socketPath: '.metering-local/metering.sock',
} as const;

export const DEFAULTS = {
  entitlement: 'register-usage',
  publicKeyVersion: '1',
  entitlementRetrySeconds: '1800',
  socket: '/run/metering/metering.sock',
  listen: '127.0.0.1:8181',
  adminListen: '0.0.0.0:9181',
  stateDir: '/var/lib/metering',
  handoffScanSeconds: '300',
  schedule: '0 * * * *',
  sendJitterSeconds: '3000',
  shutdownTimeoutSeconds: '20',
  idempotencyKeysMax: String(DEFAULT_IDEMPOTENCY_KEYS_MAX),
  retentionDays: String(DEFAULT_RETENTION_DAYS),
  logLevel: 'info',
} as const;

/**
 * Every environment variable the sidecar reads, so deployment files (Helm chart, ECS task definitions) can
 * be checked against it. AWS_* variables read by the SDK's credential chain are not listed.
 */
export const ENVIRONMENT_VARIABLES: readonly string[] = Object.freeze([
  'METERING_PRODUCT_CODE',
  'METERING_ENTITLEMENT',
  'METERING_PUBLIC_KEY_VERSION',
  'METERING_PUBLIC_KEY',
  'METERING_PUBLIC_KEY_FILE',
  'METERING_ENTITLEMENT_RETRY_SECONDS',
  'METERING_DIMENSIONS',
  'METERING_UNIT_DIVISORS',
  'METERING_SOCKET',
  'METERING_LISTEN',
  'METERING_ADMIN_LISTEN',
  'METERING_STATE_DIR',
  'METERING_HANDOFF_DIR',
  'METERING_HANDOFF_SCAN_SECONDS',
  'METERING_SCHEDULE',
  'METERING_SEND_JITTER_SECONDS',
  'METERING_DRY_RUN',
  'METERING_ZERO_USAGE',
  'METERING_SHUTDOWN_TIMEOUT_SECONDS',
  'METERING_IDEMPOTENCY_KEYS_MAX',
  'METERING_RETENTION_DAYS',
  'METERING_LOG_LEVEL',
  'METERING_LOG_FORMAT',
  'METERING_LOCAL',
  'METERING_POD_NAMESPACE',
  'METERING_POD_NAME',
  'METERING_POD_UID',
  'AWS_REGION',
  'AWS_ENDPOINT_URL_MARKETPLACE_METERING',
]);

type Env = Readonly<Record<string, string | undefined>>;

/** Options that the command line adds on top of the environment. */
export interface ConfigOverrides {
  /** `run --local`: same as METERING_LOCAL=true. */
  readonly local?: boolean;
  /** Whether stdout is a terminal: local mode then logs readable lines unless METERING_LOG_FORMAT says otherwise. */
  readonly terminal?: boolean;
}

/**
 * Reads the configuration from `env` (normally `process.env`).
 * @throws ConfigError listing every invalid variable.
 */
export function loadConfig(env: Env, overrides: ConfigOverrides = {}): Config {
  const problems: ConfigProblem[] = [];
  const problem = (variable: string, expected: string): void => {
    problems.push({ variable, value: env[variable], expected });
  };
  const get = (variable: string): string | undefined => {
    const value = env[variable];
    return value === undefined || value.trim() === '' ? undefined : value.trim();
  };
  const local = overrides.local === true || parseBoolean(env, 'METERING_LOCAL', false, problem);
  const reader: Reader = { env, local, terminal: overrides.terminal === true, problem, get };
  const product = readProduct(reader);
  const listeners = readListeners(reader);
  const sending = readSending(reader);
  if (sending.zeroUsage && product.dimensions === undefined) {
    problem(
      'METERING_ZERO_USAGE',
      'false unless METERING_DIMENSIONS is set (zero reporting sends 0 for each dimension listed there)',
    );
  }
  const aws = readAws(reader);
  if (problems.length > 0) throw new ConfigError(problems);
  return Object.freeze({ ...product, ...listeners, ...sending, ...aws, local } as Config);
}

/** What the sections of {@link loadConfig} read the environment with. */
interface Reader {
  readonly env: Env;
  readonly local: boolean;
  readonly terminal: boolean;
  readonly problem: Report;
  /** The trimmed value, or undefined when unset or blank. */
  readonly get: (variable: string) => string | undefined;
}

/** The product and its entitlement: code, mode, key, retry budget, dimensions. */
function readProduct(r: Reader) {
  const productCode = r.get('METERING_PRODUCT_CODE') ?? (r.local ? LOCAL_DEFAULTS.productCode : undefined);
  if (productCode === undefined)
    r.problem('METERING_PRODUCT_CODE', 'the product code from the AWS Marketplace portal');
  else if (!PRODUCT_CODE_PATTERN.test(productCode)) {
    r.problem('METERING_PRODUCT_CODE', '1-255 characters of a-z A-Z 0-9 - / = : _ . @');
  }

  const entitlementRaw = r.get('METERING_ENTITLEMENT') ?? DEFAULTS.entitlement;
  const entitlement = ENTITLEMENT_MODES.find((m) => m === entitlementRaw);
  if (entitlement === undefined) r.problem('METERING_ENTITLEMENT', `one of ${ENTITLEMENT_MODES.join(', ')}`);

  const publicKeyVersion = parseInteger(
    r.env,
    'METERING_PUBLIC_KEY_VERSION',
    DEFAULTS.publicKeyVersion,
    1,
    MAX_PUBLIC_KEY_VERSION,
    r.problem,
  );
  const publicKeyPem = readPublicKey(r.env, r.problem);
  const entitlementRetrySeconds = parseInteger(
    r.env,
    'METERING_ENTITLEMENT_RETRY_SECONDS',
    DEFAULTS.entitlementRetrySeconds,
    1,
    86_400,
    r.problem,
  );

  let dimensions: string[] | undefined;
  const dimensionsRaw = r.get('METERING_DIMENSIONS');
  if (dimensionsRaw !== undefined) {
    dimensions = [...new Set(dimensionsRaw.split(',').map((d) => d.trim()))];
    if (dimensions.some((d) => !DIMENSION_PATTERN.test(d))) {
      r.problem(
        'METERING_DIMENSIONS',
        'a comma-separated list of dimension names (1-255 printable characters each)',
      );
    } else if (dimensions.length > MAX_DIMENSIONS) {
      r.problem('METERING_DIMENSIONS', `at most ${MAX_DIMENSIONS} dimensions (the AWS limit per product)`);
    }
  }
  if (dimensions === undefined && (!r.local || entitlement === 'dry-run')) {
    // Without the allow-list a misspelt dimension would be acknowledged, then refused by AWS and never billed.
    r.problem(
      'METERING_DIMENSIONS',
      entitlement === 'dry-run'
        ? 'the product dimensions, comma-separated (required with METERING_ENTITLEMENT=dry-run, which checks each)'
        : "the product's dimension names, comma-separated, exactly as listed in the AWS Marketplace Management Portal (required outside local mode, so a misspelt dimension is refused at intake instead of acknowledged and then refused by AWS)",
    );
  }

  return {
    productCode: productCode!,
    entitlement: entitlement!,
    publicKeyVersion,
    entitlementRetrySeconds,
    publicKeyPem,
    dimensions: dimensions ? Object.freeze(dimensions) : undefined,
    unitDivisors: readUnitDivisors(r, dimensions),
  };
}

/** METERING_UNIT_DIVISORS: `dimension=divisor` pairs, comma-separated, each dimension one of METERING_DIMENSIONS. */
function readUnitDivisors(
  r: Reader,
  dimensions: readonly string[] | undefined,
): Readonly<Record<string, number>> {
  // No prototype: a dimension named __proto__ is data like any other.
  const divisors = Object.create(null) as Record<string, number>;
  const raw = r.get('METERING_UNIT_DIVISORS');
  if (raw === undefined) return Object.freeze(divisors);
  const expected = `comma-separated dimension=divisor pairs, such as storage_gb=1073741824,vcpu_hours=3600, each divisor an integer from 2 to ${MAX_UNIT_DIVISOR} (a dimension without one counts whole units)`;
  for (const entry of raw.split(',')) {
    const match = /^\s*([^=]+?)\s*=\s*(\d+)\s*$/.exec(entry);
    const divisor = match === null ? NaN : Number(match[2]);
    if (match === null || !Number.isSafeInteger(divisor) || divisor < 2 || divisor > MAX_UNIT_DIVISOR) {
      r.problem('METERING_UNIT_DIVISORS', `${expected} (got ${JSON.stringify(entry.trim())})`);
      continue;
    }
    const dimension = match[1];
    if (Object.hasOwn(divisors, dimension)) {
      r.problem(
        'METERING_UNIT_DIVISORS',
        `each dimension once (${JSON.stringify(dimension)} is listed twice)`,
      );
    } else if (dimensions !== undefined && !dimensions.includes(dimension)) {
      r.problem(
        'METERING_UNIT_DIVISORS',
        `dimensions of METERING_DIMENSIONS only (${JSON.stringify(dimension)} is not one of ${dimensions.join(', ')})`,
      );
    } else if (!DIMENSION_PATTERN.test(dimension)) {
      r.problem(
        'METERING_UNIT_DIVISORS',
        `dimension names of 1-255 printable characters (got ${JSON.stringify(dimension)})`,
      );
    } else {
      divisors[dimension] = divisor;
    }
  }
  return Object.freeze(divisors);
}

/** Where the sidecar listens and keeps its ledger. */
function readListeners(r: Reader) {
  const socketPath = parseSocket(r.env, r.local, r.problem);

  const listen = parseListen(r.env, 'METERING_LISTEN', DEFAULTS.listen, true, r.problem);
  const adminListen = parseListen(r.env, 'METERING_ADMIN_LISTEN', DEFAULTS.adminListen, false, r.problem);
  if (socketPath === undefined && listen === undefined) {
    r.problem(
      'METERING_LISTEN',
      'an address while METERING_SOCKET=off (the app API needs at least one listener)',
    );
  }
  if (listen && adminListen && listen.port !== 0 && listen.port === adminListen.port) {
    r.problem('METERING_ADMIN_LISTEN', 'a port different from METERING_LISTEN');
  }

  const stateDir = stateDirOf(r.get('METERING_STATE_DIR'), r.local);

  const handoffRaw = r.get('METERING_HANDOFF_DIR');
  const handoffDir = handoffRaw === undefined ? undefined : resolve(handoffRaw);
  if (handoffDir !== undefined && handoffDir === stateDir) {
    r.problem(
      'METERING_HANDOFF_DIR',
      'a directory shared by the sidecars, other than METERING_STATE_DIR (which belongs to one sidecar)',
    );
  }

  const handoffScanSeconds = parseInteger(
    r.env,
    'METERING_HANDOFF_SCAN_SECONDS',
    DEFAULTS.handoffScanSeconds,
    1,
    3600,
    r.problem,
  );

  return { socketPath, listen, adminListen, stateDir, handoffDir, handoffScanSeconds };
}

/** When and how it sends, shuts down, bounds its keys and logs. */
function readSending(r: Reader) {
  const sendJitterSeconds = parseInteger(
    r.env,
    'METERING_SEND_JITTER_SECONDS',
    DEFAULTS.sendJitterSeconds,
    0,
    3300,
    r.problem,
  );
  const schedule = r.get('METERING_SCHEDULE') ?? DEFAULTS.schedule;
  if (!validateCron(schedule)) r.problem('METERING_SCHEDULE', 'a cron expression such as "0 * * * *"');
  else {
    const gapMs = longestTickGapMs(schedule);
    const allowedMs = maxTickGapMs(sendJitterSeconds * 1000);
    if (gapMs > allowedMs) {
      r.problem(
        'METERING_SCHEDULE',
        `a schedule that ticks at least every ${duration(allowedMs)} with METERING_SEND_JITTER_SECONDS=${sendJitterSeconds}, so every hour is sealed and sent inside AWS's six-hour window (${Number.isFinite(gapMs) ? `its ticks are up to ${duration(gapMs)} apart` : 'it hardly ever ticks'})`,
      );
    }
  }
  const dryRun = parseBoolean(r.env, 'METERING_DRY_RUN', false, r.problem);
  const zeroUsage = parseBoolean(r.env, 'METERING_ZERO_USAGE', false, r.problem);
  const shutdownTimeoutSeconds = parseInteger(
    r.env,
    'METERING_SHUTDOWN_TIMEOUT_SECONDS',
    DEFAULTS.shutdownTimeoutSeconds,
    1,
    3600,
    r.problem,
  );

  const idempotencyKeysMax = parseInteger(
    r.env,
    'METERING_IDEMPOTENCY_KEYS_MAX',
    DEFAULTS.idempotencyKeysMax,
    1000,
    10_000_000,
    r.problem,
  );

  const retentionDays = parseInteger(
    r.env,
    'METERING_RETENTION_DAYS',
    DEFAULTS.retentionDays,
    1,
    3650,
    r.problem,
  );

  const pod = loadPodIdentity(r.env);

  const logLevelRaw = (r.get('METERING_LOG_LEVEL') ?? DEFAULTS.logLevel).toLowerCase();
  const logLevel = LOG_LEVELS.find((l) => l === logLevelRaw);
  if (logLevel === undefined) r.problem('METERING_LOG_LEVEL', `one of ${LOG_LEVELS.join(', ')}`);

  const logFormatRaw = (
    r.get('METERING_LOG_FORMAT') ?? (r.local && r.terminal ? 'pretty' : 'json')
  ).toLowerCase();
  const logFormat = LOG_FORMATS.find((f) => f === logFormatRaw);
  if (logFormat === undefined) r.problem('METERING_LOG_FORMAT', `one of ${LOG_FORMATS.join(', ')}`);

  return {
    schedule,
    sendJitterSeconds,
    dryRun,
    zeroUsage,
    shutdownTimeoutSeconds,
    idempotencyKeysMax,
    retentionDays,
    pod,
    logLevel: logLevel!,
    logFormat: logFormat!,
  };
}

/** The AWS side: Region, endpoint, and whether long-term keys are in the environment. */
function readAws(r: Reader) {
  const region = r.get('AWS_REGION') ?? (r.local ? LOCAL_DEFAULTS.region : undefined);
  if (region === undefined)
    r.problem('AWS_REGION', "the task's or pod's own Region (ECS and the EKS webhook set it)");
  else if (!REGION_PATTERN.test(region)) r.problem('AWS_REGION', 'a Region name such as us-east-1');

  const endpoint = r.get('AWS_ENDPOINT_URL_MARKETPLACE_METERING');
  if (endpoint !== undefined && !isHttpUrl(endpoint)) {
    r.problem('AWS_ENDPOINT_URL_MARKETPLACE_METERING', 'an http:// or https:// URL');
  }
  if (r.local && endpoint !== undefined) {
    r.problem(
      'AWS_ENDPOINT_URL_MARKETPLACE_METERING',
      'unset with METERING_LOCAL=true (local mode runs its own emulator)',
    );
  }

  return { region: region!, endpoint, staticCredentials: r.get('AWS_ACCESS_KEY_ID') !== undefined };
}

/** Where the CLI's client commands (`report`, `status`, `healthcheck`) find a running sidecar. */
export interface ClientConfig {
  /** The app API's unix socket; undefined when `off`. */
  readonly socketPath: string | undefined;
  /** The app API's loopback address; undefined when `off`. */
  readonly listen: ListenAddress | undefined;
  /** The admin listener; undefined when `off`. */
  readonly adminListen: ListenAddress | undefined;
}

/**
 * Reads the addresses a running sidecar listens on from the same variables, defaults and rules as
 * {@link loadConfig}, for the CLI's client commands, which need nothing else (no product code or Region).
 * @throws ConfigError listing every invalid variable.
 */
export function loadClientConfig(env: Env, overrides: ConfigOverrides = {}): ClientConfig {
  const problems: ConfigProblem[] = [];
  const problem = (variable: string, expected: string): void => {
    problems.push({ variable, value: env[variable], expected });
  };
  const local = overrides.local === true || parseBoolean(env, 'METERING_LOCAL', false, problem);
  const socketPath = parseSocket(env, local, problem);
  const listen = parseListen(env, 'METERING_LISTEN', DEFAULTS.listen, true, problem);
  const adminListen = parseListen(env, 'METERING_ADMIN_LISTEN', DEFAULTS.adminListen, false, problem);
  if (problems.length > 0) throw new ConfigError(problems);
  return Object.freeze({ socketPath, listen, adminListen });
}

/**
 * The state directory the CLI's `export` reads, from METERING_STATE_DIR and METERING_LOCAL with the defaults of
 * {@link loadConfig}; nothing else is needed to read a ledger.
 * @throws ConfigError when METERING_LOCAL is not a boolean.
 */
export function loadStateDir(env: Env, overrides: ConfigOverrides = {}): string {
  const problems: ConfigProblem[] = [];
  const problem = (variable: string, expected: string): void => {
    problems.push({ variable, value: env[variable], expected });
  };
  const local = overrides.local === true || parseBoolean(env, 'METERING_LOCAL', false, problem);
  if (problems.length > 0) throw new ConfigError(problems);
  return stateDirOf(env['METERING_STATE_DIR']?.trim() || undefined, local);
}

/** The pod's identity from METERING_POD_NAMESPACE, _NAME and _UID (the downward API); each part optional. */
export function loadPodIdentity(env: Env): PodIdentity {
  const get = (variable: string): string | undefined => env[variable]?.trim() || undefined;
  return {
    ...optional('namespace', get('METERING_POD_NAMESPACE')),
    ...optional('name', get('METERING_POD_NAME')),
    ...optional('uid', get('METERING_POD_UID')),
  };
}

function optional<K extends string>(key: K, value: string | undefined): Partial<Record<K, string>> {
  return value === undefined ? {} : ({ [key]: value } as Record<K, string>);
}

function stateDirOf(raw: string | undefined, local: boolean): string {
  return resolve(raw ?? (local ? LOCAL_DEFAULTS.stateDir : DEFAULTS.stateDir));
}

type Report = (variable: string, expected: string) => void;

/** METERING_SOCKET: a path of at most 107 bytes (the unix socket limit), resolved; undefined when `off`. */
function parseSocket(env: Env, local: boolean, problem: Report): string | undefined {
  const raw = env['METERING_SOCKET']?.trim() || (local ? LOCAL_DEFAULTS.socketPath : DEFAULTS.socket);
  const socketPath = raw === 'off' ? undefined : resolve(raw);
  if (socketPath !== undefined && Buffer.byteLength(socketPath) > 107) {
    problem('METERING_SOCKET', 'a unix socket path of at most 107 bytes, or off');
  }
  return socketPath;
}

function parseBoolean(env: Env, variable: string, fallback: boolean, problem: Report): boolean {
  const raw = env[variable]?.trim().toLowerCase();
  if (raw === undefined || raw === '') return fallback;
  if (raw === 'true' || raw === '1' || raw === 'yes') return true;
  if (raw === 'false' || raw === '0' || raw === 'no') return false;
  problem(variable, 'true or false');
  return fallback;
}

function parseInteger(
  env: Env,
  variable: string,
  fallback: string,
  min: number,
  max: number,
  problem: Report,
): number {
  const raw = env[variable]?.trim() || fallback;
  const value = /^\d+$/.test(raw) ? Number(raw) : NaN;
  if (!Number.isSafeInteger(value) || value < min || value > max) {
    problem(variable, `an integer from ${min} to ${max}`);
    return Number(fallback);
  }
  return value;
}

function parseListen(
  env: Env,
  variable: string,
  fallback: string,
  loopbackOnly: boolean,
  problem: Report,
): ListenAddress | undefined {
  const parsed = parseListenAddress(env[variable]?.trim() || fallback, loopbackOnly);
  if (parsed.ok) return parsed.address;
  problem(variable, parsed.expected);
  return undefined;
}

/** A duration for a message: `3 h 40 min`, `8 h`, `15 min`. */
function duration(ms: number): string {
  const minutes = Math.round(ms / 60_000);
  const h = Math.floor(minutes / 60);
  const m = minutes % 60;
  return [h > 0 ? `${h} h` : '', m > 0 || h === 0 ? `${m} min` : ''].filter((p) => p !== '').join(' ');
}

function isHttpUrl(value: string): boolean {
  try {
    const url = new URL(value);
    return url.protocol === 'http:' || url.protocol === 'https:';
  } catch {
    return false;
  }
}

function readPublicKey(env: Env, problem: Report): string | undefined {
  const inline = env['METERING_PUBLIC_KEY']?.trim();
  const file = env['METERING_PUBLIC_KEY_FILE']?.trim();
  if (inline && file) {
    problem('METERING_PUBLIC_KEY_FILE', 'unset when METERING_PUBLIC_KEY is set (give the key one way)');
    return undefined;
  }
  let pem: string | undefined = inline || undefined;
  if (file) {
    try {
      pem = readFileSync(file, 'utf8').trim();
    } catch (err) {
      problem(
        'METERING_PUBLIC_KEY_FILE',
        `a readable PEM file (${(err as NodeJS.ErrnoException).code ?? 'unreadable'})`,
      );
      return undefined;
    }
  }
  if (pem !== undefined && !/-----BEGIN PUBLIC KEY-----[\s\S]+-----END PUBLIC KEY-----/.test(pem)) {
    problem(
      file ? 'METERING_PUBLIC_KEY_FILE' : 'METERING_PUBLIC_KEY',
      'a PEM public key (-----BEGIN PUBLIC KEY-----)',
    );
    return undefined;
  }
  return pem;
}
