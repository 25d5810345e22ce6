#!/usr/bin/env -S node --max-semi-space-size=4
/**
 * The `metering-sidecar` command: parses the command line, loads the configuration, runs the {@link Agent} or a
 * helper command, wires SIGTERM/SIGINT to a clean shutdown, and maps fatal errors to exit codes. This is the
 * only module that calls `process.exit`.
 *
 * The first line is how the command runs (the image's entry point, `npx metering-sidecar`): V8's young
 * generation is kept to 4 MB per semi-space. Its default grows to 16 MB (Node.js 20) or more (Node.js 24) under
 * load, for garbage a request leaves behind in microseconds; capped, the sidecar's peak memory under load is
 * lower at the same throughput (docs/benchmarks.md, "Footprint").
 *
 * Exit codes (docs/metering.md): 0 clean shutdown with nothing unsent; 75 records left in the ledger; 77 not
 * entitled; 78 bad configuration, or a state directory another sidecar holds; 69 AWS unreachable at startup;
 * 64 bad command line; 1 anything unexpected.
 */
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { SidecarClient, type ApiAddress } from './client/client.js';
import { systemClock } from './clock.js';
import { loadClientConfig, loadConfig, loadPodIdentity, loadStateDir } from './config.js';
import {
  AgentError,
  AwsUnavailableError,
  CODES,
  ConfigError,
  LedgerCorruptError,
  NotEntitledError,
  StateLockedError,
  StorageUnavailableError,
  UsageError,
} from './errors.js';
import { EXIT } from './exitCodes.js';
import { createLogger } from './log.js';

// Each command loads only what it runs: `healthcheck` (every 15 s in the image) and `status` need the client
// alone, not the SDK, the ledger or the emulator (docs/benchmarks.md, "Footprint").

const HELP = `metering-sidecar — AWS Marketplace metering for container products

Usage:
  metering-sidecar [run] [--local]                 run the sidecar (--local: with the embedded emulator)
  metering-sidecar emulator [--port N] [--host H] [--product-code C] [--dimensions a,b] [--quota aws|off|Op=rate,...]
                           [--region R] [--dry-run-response error|success]
                                                   run the Marketplace Metering emulator standalone (all four
                                                   operations; requests must be signed for --region)
  metering-sidecar report DIMENSION QUANTITY [--tag k=v]... [--id KEY]
                                                   report usage through the app API
  metering-sidecar cancel ID                        cancel the report sent with idempotency key ID, while its
                                                   hour is not sealed
  metering-sidecar status [--json]                 show what the sidecar holds
  metering-sidecar export [--since T] [--until T] [--format csv|jsonl] [--daily | --cancellations | --remainders] [--state-dir DIR]
                                                   print the ledger's records (or their daily rollup, the
                                                   cancelled reports, the unit remainders) for
                                                   reconciliation; T is an ISO 8601 date or UTC time
  metering-sidecar doctor [--json]                 check the platform: credentials, Region, endpoint, route,
                                                   clock; exit 1 when metering cannot work as it is
  metering-sidecar healthcheck                     exit 0 when ready, 1 otherwise (for Docker and ECS)
  metering-sidecar --version | --help

Configuration comes from METERING_* and AWS_* environment variables (docs/configuration.md).`;

async function main(argv: readonly string[]): Promise<number> {
  const [command = 'run', ...rest] = argv[0]?.startsWith('-') && argv[0] !== '--local' ? ['', ...argv] : argv;
  switch (command) {
    case '':
      if (rest.includes('--version')) {
        process.stdout.write(`${version()}\n`);
        return EXIT.ok;
      }
      process.stdout.write(`${HELP}\n`);
      return rest.includes('--help') || rest.includes('-h') ? EXIT.ok : EXIT.usage;
    case 'run':
    case '--local':
      return run(command === '--local' ? ['--local', ...rest] : rest);
    case 'emulator':
      return emulator(rest);
    case 'report':
      return report(rest);
    case 'cancel':
      return cancel(rest);
    case 'status':
      return status(rest);
    case 'export':
      return exportRecords(rest);
    case 'healthcheck':
      return healthcheck(rest);
    case 'doctor':
      return doctor(rest);
    case 'help':
      process.stdout.write(`${HELP}\n`);
      return EXIT.ok;
    default:
      throw new UsageError(`unknown command ${JSON.stringify(command)}; see metering-sidecar --help`);
  }
}

async function run(args: readonly string[]): Promise<number> {
  const { values } = parse(args, { local: { type: 'boolean' } });
  const config = loadConfig(process.env, {
    local: values.local === true,
    terminal: process.stdout.isTTY === true,
  });
  const logger = createLogger(config.logLevel, undefined, config.logFormat);
  const { Agent } = await import('./agent.js');
  const agent = new Agent(config, { logger, clock: systemClock });

  let signalled: NodeJS.Signals | undefined;
  const stopped = new Promise<number>((resolve) => {
    const onSignal = (signal: NodeJS.Signals): void => {
      if (signalled !== undefined) {
        logger.warn({ signal }, 'already shutting down; waiting for the final flush');
        return;
      }
      signalled = signal;
      // Until the final flush says otherwise, any exit means records may be left in the ledger.
      process.exitCode = EXIT.leftInLedger;
      logger.info({ signal }, 'signal received');
      agent.stop().then(
        (outcome) => resolve(outcome.exitCode),
        (err: unknown) => {
          logger.error({ err }, 'shutdown failed');
          resolve(EXIT.leftInLedger);
        },
      );
    };
    process.on('SIGTERM', onSignal);
    process.on('SIGINT', onSignal);
  });

  const failed = agent.failed.then((err) => {
    logFatal(logger, err);
    return EXIT.unexpected;
  });
  try {
    // The ledger can break while startup still runs (entitlement may retry for minutes).
    const broken = await Promise.race([agent.start().then(() => undefined), failed]);
    if (broken !== undefined) return broken;
  } catch (err) {
    // A signal during startup (for instance while entitlement is retried) is a shutdown, not a failure.
    if (signalled !== undefined) return stopped;
    logFatal(logger, err);
    if (!config.local && (err instanceof AwsUnavailableError || err instanceof NotEntitledError)) {
      // Why AWS could not be reached or refused: the doctor's findings, as named reasons beside the failure.
      try {
        const { diagnose } = await import('./doctor.js');
        const { findings } = await diagnose(process.env, { pod: config.pod, timeoutMs: 2000 });
        for (const f of findings)
          logger[f.severity === 'error' ? 'error' : 'warn'](
            { code: f.code, fix: f.fix },
            `doctor: ${f.problem}`,
          );
      } catch (doctorErr) {
        logger.warn({ err: doctorErr }, 'the doctor could not run');
      }
    }
    return exitCodeOf(err);
  }
  return Promise.race([stopped, failed]);
}

async function emulator(args: readonly string[]): Promise<number> {
  const { values } = parse(args, {
    port: { type: 'string', default: '4599' },
    host: { type: 'string', default: '127.0.0.1' },
    'product-code': { type: 'string', default: 'local-product' },
    dimensions: { type: 'string' },
    quota: { type: 'string', default: 'off' },
    region: { type: 'string', default: 'us-east-1' },
    'dry-run-response': { type: 'string', default: 'error' },
  });
  const port = Number(values.port);
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new UsageError('--port must be 0-65535');
  const dimensions = values.dimensions
    ?.split(',')
    .map((d) => d.trim())
    .filter((d) => d !== '');
  const [{ MeteringEmulator, loggedInput }, { parseQuota }] = await Promise.all([
    import('./emulator/emulator.js'),
    import('./emulator/quota.js'),
  ]);
  const quota = parseQuota(values.quota ?? 'off');
  if ('problem' in quota) throw new UsageError(quota.problem);
  const dryRunResponse = values['dry-run-response'];
  if (dryRunResponse !== 'error' && dryRunResponse !== 'success') {
    throw new UsageError('--dry-run-response must be error (400 DryRunOperation) or success (200)');
  }
  const region = values.region ?? 'us-east-1';
  if (!/^[a-z]{2}(-[a-z]+)+-\d{1,2}$/.test(region))
    throw new UsageError('--region must be a Region name such as us-east-1');
  const server = new MeteringEmulator({
    productCode: values['product-code'] ?? 'local-product',
    ...(dimensions ? { dimensions } : {}),
    quota: quota.rates,
    region,
    dryRunResponse,
    onCall: (call) =>
      process.stdout.write(
        `${JSON.stringify({ time: new Date(call.atMs).toISOString(), ...call, input: loggedInput(call.input) })}\n`,
      ),
  });
  const url = await server.start({ host: values.host ?? '127.0.0.1', port });
  process.stdout.write(
    `Marketplace Metering emulator listening on ${url}\n` +
      `Point the sidecar at it with AWS_ENDPOINT_URL_MARKETPLACE_METERING=${url}\n` +
      `Inspect: GET ${url}/emulator/records, GET ${url}/emulator/calls; inject faults: POST ${url}/emulator/faults\n` +
      `Region: ${server.region} (sign requests for it); a DryRun that passes answers ${dryRunResponse === 'error' ? '400 DryRunOperation' : '200'}\n` +
      `Account quota: ${JSON.stringify(server.quota)} calls/s (POST ${url}/emulator/quota)\n` +
      `SaaS: POST ${url}/emulator/registration-tokens grants a token for ResolveCustomer; BatchMeterUsage meters its customer\n` +
      `Entitlement: POST ${url}/emulator/entitlement; tokens are signed with this key (GET ${url}/emulator/public-key):\n` +
      `${server.publicKeyPem}\n`,
  );
  await new Promise<void>((resolve) => {
    process.once('SIGTERM', () => resolve());
    process.once('SIGINT', () => resolve());
  });
  await server.stop();
  return EXIT.ok;
}

async function report(args: readonly string[]): Promise<number> {
  const { values, positionals } = parse(
    args,
    { tag: { type: 'string', multiple: true }, id: { type: 'string' } },
    true,
  );
  if (positionals.length !== 2)
    throw new UsageError('usage: metering-sidecar report DIMENSION QUANTITY [--tag k=v]... [--id KEY]');
  const [dimension, quantityText] = positionals as [string, string];
  const quantity = /^\d+$/.test(quantityText) ? Number(quantityText) : NaN;
  if (!Number.isSafeInteger(quantity))
    throw new UsageError(`QUANTITY must be a non-negative integer, got ${JSON.stringify(quantityText)}`);
  const tags: Record<string, string> = {};
  for (const tag of values.tag ?? []) {
    const eq = tag.indexOf('=');
    if (eq <= 0) throw new UsageError(`--tag takes KEY=VALUE, got ${JSON.stringify(tag)}`);
    tags[tag.slice(0, eq)] = tag.slice(eq + 1);
  }
  const reply = await apiClient().report({
    dimension,
    quantity,
    ...(Object.keys(tags).length > 0 ? { tags } : {}),
    ...(values.id !== undefined ? { id: values.id } : {}),
  });
  process.stdout.write(`${JSON.stringify(reply.body)}\n`);
  return reply.status === 202 ? EXIT.ok : EXIT.unexpected;
}

/** `cancel ID`: `DELETE /v1/usage/{id}` through the app API; exit 0 once the cancellation is durable. */
async function cancel(args: readonly string[]): Promise<number> {
  const { positionals } = parse(args, {}, true);
  if (positionals.length !== 1) throw new UsageError('usage: metering-sidecar cancel ID');
  const reply = await apiClient().cancel(positionals[0]);
  process.stdout.write(`${JSON.stringify(reply.body)}\n`);
  return reply.status === 200 ? EXIT.ok : EXIT.unexpected;
}

async function status(args: readonly string[]): Promise<number> {
  const { values } = parse(args, { json: { type: 'boolean' } });
  const reply = await apiClient().status();
  if (values.json === true || reply.status !== 200) {
    process.stdout.write(`${JSON.stringify(reply.body, null, 2)}\n`);
  } else {
    process.stdout.write(formatStatusTable(reply.body as StatusBody));
  }
  return reply.status === 200 ? EXIT.ok : EXIT.unexpected;
}

/**
 * The reconciliation export (docs/operations.md): the ledger of METERING_STATE_DIR (or `--state-dir`), read-only,
 * whether its sidecar runs or not, as CSV or JSON lines on stdout.
 */
async function exportRecords(args: readonly string[]): Promise<number> {
  const { values } = parse(args, {
    since: { type: 'string' },
    until: { type: 'string' },
    format: { type: 'string', default: 'csv' },
    daily: { type: 'boolean' },
    cancellations: { type: 'boolean' },
    remainders: { type: 'boolean' },
    'state-dir': { type: 'string' },
    local: { type: 'boolean' },
  });
  const [{ LedgerExport }, exporting] = await Promise.all([
    import('./ledger/exportReader.js'),
    import('./export.js'),
  ]);
  const { DAILY_COLUMNS, EXPORT_FORMATS, RECORD_COLUMNS, DailyRollup, header, line, recordRow } = exporting;
  const views = (['daily', 'cancellations', 'remainders'] as const).filter((v) => values[v] === true);
  if (views.length > 1)
    throw new UsageError(
      `choose one of --daily, --cancellations and --remainders, not ${views.map((v) => `--${v}`).join(' and ')}`,
    );
  const format = EXPORT_FORMATS.find((f) => f === values.format);
  if (format === undefined)
    throw new UsageError(`--format must be csv or jsonl, got ${JSON.stringify(values.format)}`);
  const sinceMs = values.since === undefined ? undefined : isoTime('--since', values.since);
  const untilMs = values.until === undefined ? undefined : isoTime('--until', values.until);
  if (sinceMs !== undefined && untilMs !== undefined && sinceMs >= untilMs)
    throw new UsageError('--since must be before --until');
  const stateDir = values['state-dir'] ?? loadStateDir(process.env, { local: values.local === true });
  const range = {
    ...(sinceMs !== undefined ? { sinceMs } : {}),
    ...(untilMs !== undefined ? { untilMs } : {}),
  };
  const out = new BufferedStdout();
  try {
    const ledger = LedgerExport.open(resolve(stateDir));
    try {
      if (views[0] === 'cancellations') {
        const { CANCELLATION_COLUMNS, cancellationRow } = exporting;
        out.write(header(CANCELLATION_COLUMNS, format));
        for (const c of ledger.cancellations(range))
          out.write(line(cancellationRow(c), CANCELLATION_COLUMNS, format));
      } else if (views[0] === 'remainders') {
        const { REMAINDER_COLUMNS, remainderRow } = exporting;
        out.write(header(REMAINDER_COLUMNS, format));
        for (const r of ledger.remainders()) out.write(line(remainderRow(r), REMAINDER_COLUMNS, format));
      } else if (values.daily === true) {
        const rollup = new DailyRollup();
        ledger.each(range, (record) => rollup.add(record));
        out.write(header(DAILY_COLUMNS, format));
        for (const row of rollup.rows()) out.write(line(row, DAILY_COLUMNS, format));
      } else {
        // Each record is written as it is read: the export never holds the ledger in memory.
        out.write(header(RECORD_COLUMNS, format));
        ledger.each(range, (record) => out.write(line(recordRow(record), RECORD_COLUMNS, format)));
      }
    } finally {
      ledger.close();
    }
  } catch (err) {
    if (!(err instanceof StorageUnavailableError || err instanceof LedgerCorruptError)) throw err;
    process.stderr.write(`metering-sidecar: ${err.message}\n`);
    return err instanceof StorageUnavailableError ? EXIT.config : EXIT.unexpected;
  }
  out.flush();
  return EXIT.ok;
}

/** An ISO 8601 date (UTC midnight) or a time with its zone, as epoch milliseconds. */
function isoTime(option: string, text: string): number {
  const ms = ISO_TIME.test(text) && realDate(text.slice(0, 10)) ? Date.parse(text) : NaN;
  if (!Number.isFinite(ms))
    throw new UsageError(
      `${option} takes an ISO 8601 date (2026-11-01) or a time with its zone (2026-11-01T10:00:00Z), got ${JSON.stringify(text)}`,
    );
  return ms;
}

/** Whether YYYY-MM-DD names a day of the calendar (2026-02-30 does not). */
function realDate(date: string): boolean {
  const ms = Date.parse(`${date}T00:00:00Z`);
  return Number.isFinite(ms) && new Date(ms).toISOString().startsWith(date);
}

const ISO_TIME = /^\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d{1,3})?)?(Z|[+-]\d{2}:\d{2}))?$/;

/** Lines to stdout in chunks of about 64 KB (an export can hold many thousands of lines). */
class BufferedStdout {
  #chunk: string[] = [];
  #size = 0;

  readonly write = (line: string): void => {
    this.#chunk.push(line);
    this.#size += line.length;
    if (this.#size >= 65_536) this.flush();
  };

  flush(): void {
    if (this.#chunk.length > 0) process.stdout.write(this.#chunk.join(''));
    this.#chunk = [];
    this.#size = 0;
  }
}

/** `doctor` (docs/operations.md, "Doctor"): the platform, and each finding with its fix; exit 1 on an error. */
async function doctor(args: readonly string[]): Promise<number> {
  const { values } = parse(args, { json: { type: 'boolean' } });
  const { diagnose } = await import('./doctor.js');
  const report = await diagnose(process.env, { pod: loadPodIdentity(process.env) });
  const failed = report.findings.some((f) => f.severity === 'error');
  if (values.json === true) {
    process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
    return failed ? EXIT.unexpected : EXIT.ok;
  }
  const p = report.platform;
  const where =
    p.platform === 'ecs'
      ? `ecs${p.launchType ? ` (${p.launchType})` : ''}${p.taskArn ? `, task ${p.taskArn}` : ''}`
      : p.platform === 'kubernetes'
        ? `kubernetes${p.podName ? `, pod ${p.podNamespace ?? ''}/${p.podName}` : ''}`
        : 'other (neither ECS nor Kubernetes)';
  const clock =
    report.clockOffsetMs === undefined
      ? ''
      : `  (clock offset ${(report.clockOffsetMs / 1000).toFixed(1)} s)`;
  const lines = [
    `platform     ${where}`,
    `credentials  ${report.credentials}`,
    `region       ${report.region ?? '(unset)'}`,
    `endpoint     ${report.endpoint ?? '(none)'}${clock}`,
    '',
    ...(report.findings.length === 0
      ? ['no problems found']
      : report.findings.flatMap((f) => [
          `${f.severity.padEnd(8)} ${f.code}: ${f.problem}`,
          `         fix: ${f.fix}`,
        ])),
  ];
  process.stdout.write(`${lines.join('\n')}\n`);
  return failed ? EXIT.unexpected : EXIT.ok;
}

/** Longest a health check may take: Docker and ECS run it often and need a quick answer. */
const HEALTHCHECK_TIMEOUT_MS = 2_000;

/**
 * Exit 0 when the sidecar is ready, 1 otherwise, within 2 seconds: `/readyz` on the admin listener, or the
 * readiness in `/v1/status` over the app socket when the admin listener is off. Needs no curl in the image.
 */
async function healthcheck(args: readonly string[]): Promise<number> {
  parse(args, {});
  const deadline = AbortSignal.timeout(HEALTHCHECK_TIMEOUT_MS);
  const { adminListen } = loadClientConfig(process.env);
  try {
    let ready: boolean;
    let detail: unknown;
    if (adminListen !== undefined) {
      const { host, port } = adminListen;
      // A wildcard address is reached on loopback.
      const target =
        host === '0.0.0.0' ? '127.0.0.1' : host === '::' ? '[::1]' : host.includes(':') ? `[${host}]` : host;
      const response = await fetch(`http://${target}:${port}/readyz`, { signal: deadline });
      detail = await response.json();
      ready = response.status === 200;
    } else {
      const reply = await Promise.race([
        apiClient({ timeoutMs: HEALTHCHECK_TIMEOUT_MS }).status(),
        new Promise<never>((_, reject) =>
          deadline.addEventListener('abort', () => reject(new Error('timed out'))),
        ),
      ]);
      detail = (reply.body as { checks?: unknown }).checks;
      ready = reply.status === 200 && (reply.body as { ready?: unknown }).ready === true;
    }
    process.stdout.write(`${ready ? 'ready' : 'not ready'} ${JSON.stringify(detail)}\n`);
    return ready ? EXIT.ok : EXIT.unexpected;
  } catch (err) {
    if (err instanceof UsageError || err instanceof ConfigError) throw err;
    process.stdout.write(`not ready: ${(err as Error).message}\n`);
    return EXIT.unexpected;
  }
}

interface StatusBody {
  entitlement: { state: string; mode: string };
  openHours: { hourStart: string; dimension: string; quantity: number; tagSets: number }[];
  records: Record<string, number>;
  oldestUnsentAgeSeconds: number | null;
  failed: { hourStart: string; dimension: string; quantity: number; error?: string }[];
  cancellations?: { hourStart: string; dimension: string; reports: number; quantity: number }[];
  unitRemainders?: { dimension: string; divisor: number; quantity: number; tagSets: number }[];
}

function formatStatusTable(body: StatusBody): string {
  const lines = [
    `entitlement  ${body.entitlement.state} (${body.entitlement.mode})`,
    `records      pending ${body.records['pending'] ?? 0}, sent ${body.records['sent'] ?? 0}, carried ${body.records['carried'] ?? 0}, failed ${body.records['failed'] ?? 0}`,
    `oldest unsent ${body.oldestUnsentAgeSeconds === null ? '-' : `${body.oldestUnsentAgeSeconds} s`}`,
    '',
    'open hours',
    ...(body.openHours.length === 0
      ? ['  (none)']
      : body.openHours.map(
          (o) =>
            `  ${o.hourStart}  ${o.dimension.padEnd(24)} ${String(o.quantity).padStart(12)}  (${o.tagSets} tag sets)`,
        )),
  ];
  if (body.failed.length > 0) {
    lines.push('', 'failed records');
    for (const f of body.failed)
      lines.push(`  ${f.hourStart}  ${f.dimension}  ${f.quantity}  ${f.error ?? ''}`);
  }
  if ((body.cancellations ?? []).length > 0) {
    lines.push('', 'cancelled (last 24 hours)');
    for (const c of body.cancellations ?? [])
      lines.push(
        `  ${c.hourStart}  ${c.dimension.padEnd(24)} ${String(c.quantity).padStart(12)}  (${c.reports} reports)`,
      );
  }
  if ((body.unitRemainders ?? []).length > 0) {
    lines.push('', 'unit remainders (below one unit, not billed yet)');
    for (const r of body.unitRemainders ?? [])
      lines.push(
        `  ${r.dimension.padEnd(24)} ${String(r.quantity).padStart(20)} of ${r.divisor} per unit  (${r.tagSets} tag sets)`,
      );
  }
  return `${lines.join('\n')}\n`;
}

/** The app API address from METERING_SOCKET / METERING_LISTEN, as the sidecar reads them. */
function apiClient(options: { timeoutMs?: number } = {}): SidecarClient {
  const { socketPath, listen } = loadClientConfig(process.env);
  if (socketPath !== undefined) return new SidecarClient({ socketPath }, options);
  if (listen === undefined)
    throw new UsageError('METERING_SOCKET and METERING_LISTEN are both off: no app API to talk to');
  const address: ApiAddress = { host: listen.host, port: listen.port };
  return new SidecarClient(address, options);
}

type Options = Parameters<typeof parseArgs>[0] extends infer T
  ? T extends { options?: infer O }
    ? O
    : never
  : never;

function parse<O extends NonNullable<Options>>(
  args: readonly string[],
  options: O,
  allowPositionals = false,
) {
  try {
    return parseArgs({ args: [...args], options, allowPositionals, strict: true });
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
}

function version(): string {
  const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as {
    version: string;
  };
  return pkg.version;
}

function exitCodeOf(err: unknown): number {
  if (err instanceof ConfigError || err instanceof StateLockedError) return EXIT.config;
  if (err instanceof NotEntitledError) return EXIT.notEntitled;
  if (err instanceof AwsUnavailableError) return EXIT.unavailable;
  if (err instanceof UsageError) return EXIT.usage;
  return EXIT.unexpected;
}

function logFatal(logger: { fatal: (obj: object, msg: string) => void }, err: unknown): void {
  const code = err instanceof AgentError ? err.code : CODES.unexpected;
  logger.fatal({ err, code }, err instanceof Error ? err.message : String(err));
}

/**
 * Exits once everything written to stdout and stderr has left the process: on a pipe, a write may still be
 * queued when `process.exit` runs, and what a command printed (an export, say) would be cut off.
 */
function exitWhenFlushed(code: number): void {
  let pending = 2;
  const done = (): void => {
    if (--pending === 0) process.exit(code);
  };
  process.stdout.write('', done);
  process.stderr.write('', done);
}

main(process.argv.slice(2)).then(exitWhenFlushed, (err: unknown) => {
  if (err instanceof ConfigError || err instanceof UsageError) {
    process.stderr.write(`metering-sidecar: ${err.message}\n`);
  } else {
    // Configuration may not be loaded yet: log with the default level.
    logFatal(createLogger('info'), err);
  }
  exitWhenFlushed(exitCodeOf(err));
});
