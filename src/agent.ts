/**
 * The composition root. It builds every component from the {@link Config} and runs them in order:
 *
 * ```
 *  app ──HTTP over unix socket / 127.0.0.1──▶ intake ──▶ ledger (SQLite, fsync) ──▶ sender ──MeterUsage──▶ AWS
 *                                              │            ▲   hour buckets            ▲
 *                                              │            │   sealed records          │
 *  startup: entitlement check                  │        scheduler (node-cron, hourly + jitter; final flush on SIGTERM)
 * ```
 *
 * Lifecycle. `start()`: (1) in local mode, the embedded emulator; (2) the ledger, refusing a corrupt one;
 * (3) the SDK client and sender; (4) intake, answering 503 NotEntitled until (5) the entitlement check passes;
 * (6) the scheduler, whose first run sends what a previous run left pending. `stop()` runs in reverse: intake
 * stops accepting and drains in-flight requests, the scheduler seals everything including the open hour and
 * sends until the shutdown deadline, then the ledger and the client close. `stop()` is idempotent.
 */
import { hostname } from 'node:os';
import type { MarketplaceMeteringClient } from '@aws-sdk/client-marketplace-metering';
import type { Clock } from './clock.js';
import type { Config } from './config.js';
import { ConfigError } from './errors.js';
import { MeteringEmulator } from './emulator/emulator.js';
import { IntakeServer } from './intake/server.js';
import { rejection, type Rejection } from './intake/usage.js';
import { SqliteLedger, type LedgerStatus } from './ledger/ledger.js';
import type { Logger } from './log.js';
import { Scheduler } from './schedule/scheduler.js';
import { createMeteringClient } from './send/client.js';
import { MeteringSender } from './send/sender.js';

/** Credentials the client signs with in local mode; the embedded emulator takes them as the task identity. */
const LOCAL_CREDENTIALS = { accessKeyId: 'LOCALTASK', secretAccessKey: 'local-only' } as const;

/** Entitlement as the app and operators see it. */
export type EntitlementState = 'pending' | 'entitled' | 'not-entitled' | 'disabled';

/** How the agent ended: 0 when nothing is left to send, 75 when records stay in the ledger for the next start. */
export interface StopOutcome {
  readonly exitCode: 0 | 75;
  readonly unsentRecords: number;
  readonly unsealedHours: number;
}

/** Dependencies the agent does not build itself. */
export interface AgentDeps {
  readonly logger: Logger;
  readonly clock: Clock;
}

/** Runs the sidecar; see the module comment for the lifecycle. */
export class Agent {
  readonly #config: Config;
  readonly #logger: Logger;
  readonly #clock: Clock;
  #emulator: MeteringEmulator | undefined;
  #ledger: SqliteLedger | undefined;
  #client: MarketplaceMeteringClient | undefined;
  #intake: IntakeServer | undefined;
  #scheduler: Scheduler | undefined;
  #entitlement: EntitlementState = 'pending';
  #entitlementCheckedAtMs: number | undefined;
  #stopping: Promise<StopOutcome> | undefined;

  constructor(config: Config, deps: AgentDeps) {
    this.#config = config;
    this.#logger = deps.logger;
    this.#clock = deps.clock;
  }

  /** The app API's TCP address once started (its port resolved when configured as 0). */
  get tcpAddress(): { host: string; port: number } | undefined {
    return this.#intake?.tcpAddress;
  }

  /** The embedded emulator in local mode. */
  get emulator(): MeteringEmulator | undefined {
    return this.#emulator;
  }

  /**
   * Starts every component in order. On failure, whatever was started is stopped again before the error is
   * rethrown for `main` to map to an exit code.
   */
  async start(): Promise<void> {
    const config = this.#config;
    try {
      let endpoint = config.endpoint;
      if (config.local) {
        const log = this.#logger.child({ component: 'emulator' });
        this.#emulator = new MeteringEmulator({
          productCode: config.productCode,
          ...(config.dimensions ? { dimensions: config.dimensions } : {}),
          onCall: (call) =>
            log.info(
              { operation: call.operation, status: call.status, error: call.error, input: call.input },
              'emulator call',
            ),
        });
        endpoint = await this.#emulator.start();
        this.#logger.info(
          { endpoint },
          'local mode: embedded Marketplace Metering emulator started; nothing is billed',
        );
      } else if (config.staticCredentials) {
        this.#logger.warn(
          { code: 'ERR_CONFIG_STATIC_CREDENTIALS' },
          'AWS_ACCESS_KEY_ID is set: AWS Marketplace accepts only the ECS task role or IRSA for metering; remove static keys from the task or pod',
        );
      }

      this.#ledger = SqliteLedger.open({
        stateDir: config.stateDir,
        productCode: config.productCode,
        dryRun: config.dryRun,
        clock: this.#clock,
      });
      this.#logger.info({ stateDir: config.stateDir, ledgerId: this.#ledger.ledgerId }, 'ledger open');

      this.#client = createMeteringClient({
        region: config.region,
        endpoint,
        ...(config.local ? { credentials: LOCAL_CREDENTIALS } : {}),
      });
      const sender = new MeteringSender(this.#client);

      this.#intake = new IntakeServer({
        socketPath: config.socketPath,
        listen: config.listen,
        dimensions: config.dimensions,
        ledger: this.#ledger,
        logger: this.#logger.child({ component: 'intake' }),
        gate: () => this.#gate(),
        status: () => this.status(),
        entitlement: () => this.#entitlementView(),
      });
      await this.#intake.start();

      await this.#checkEntitlement();

      this.#scheduler = new Scheduler({
        ledger: this.#ledger,
        sender,
        clock: this.#clock,
        logger: this.#logger.child({ component: 'scheduler' }),
        schedule: config.schedule,
        jitterSeconds: config.sendJitterSeconds,
      });
      await this.#scheduler.start();
      this.#logger.info(
        { host: hostname(), dryRun: config.dryRun, local: config.local, schedule: config.schedule },
        'metering sidecar ready',
      );
    } catch (err) {
      await this.#release();
      throw err;
    }
  }

  /**
   * The entitlement step of startup. `none` marks entitlement disabled and opens intake.
   * TODO(#3): `register-usage` (RegisterUsage with a verified signed token) and `dry-run`; until then they are
   * refused at startup rather than silently skipped.
   */
  // eslint-disable-next-line @typescript-eslint/require-await -- becomes asynchronous with RegisterUsage (#3)
  async #checkEntitlement(): Promise<void> {
    if (this.#config.entitlement !== 'none') {
      throw new ConfigError([
        {
          variable: 'METERING_ENTITLEMENT',
          value: this.#config.entitlement,
          expected: 'none (this version does not check entitlement yet)',
        },
      ]);
    }
    this.#entitlementCheckedAtMs = this.#clock.now();
    this.#entitlement = 'disabled';
  }

  #gate(): Rejection | undefined {
    if (this.#entitlement === 'entitled' || this.#entitlement === 'disabled') return undefined;
    return rejection(
      'NotEntitled',
      this.#entitlement === 'pending'
        ? 'the entitlement check has not finished; retry shortly'
        : 'the buyer is not entitled to this product',
    );
  }

  #entitlementView(): unknown {
    return {
      state: this.#entitlement,
      mode: this.#config.entitlement,
      checkedAt:
        this.#entitlementCheckedAtMs === undefined
          ? null
          : new Date(this.#entitlementCheckedAtMs).toISOString(),
    };
  }

  /** The body of `GET /v1/status`. */
  status(): unknown {
    const ledger = this.#ledger;
    if (ledger === undefined) return { entitlement: this.#entitlementView() };
    return formatStatus(ledger.status(this.#clock.now()), this.#entitlementView(), this.#config);
  }

  /**
   * Shuts down (see the module comment) within METERING_SHUTDOWN_TIMEOUT_SECONDS and tells what is left.
   * Idempotent: later calls return the first call's outcome.
   */
  stop(): Promise<StopOutcome> {
    this.#stopping ??= this.#stop();
    return this.#stopping;
  }

  async #stop(): Promise<StopOutcome> {
    const deadlineMs = this.#clock.now() + this.#config.shutdownTimeoutSeconds * 1000;
    this.#logger.info(
      { timeoutSeconds: this.#config.shutdownTimeoutSeconds },
      'shutting down: final seal and send',
    );
    try {
      await this.#intake?.stop();
      if (this.#scheduler !== undefined) {
        const summary = await this.#scheduler.flush(deadlineMs);
        this.#logger.info(summary, 'final flush finished');
      }
    } catch (err) {
      this.#logger.error(
        { err, code: (err as { code?: string }).code },
        'final flush failed; records stay in the ledger',
      );
    }
    let outcome: StopOutcome = { exitCode: 75, unsentRecords: 0, unsealedHours: 0 };
    try {
      const status = this.#ledger?.status(this.#clock.now());
      if (status !== undefined) {
        const unsentRecords = status.records.pending;
        const unsealedHours = status.open.length;
        outcome = { exitCode: unsentRecords + unsealedHours === 0 ? 0 : 75, unsentRecords, unsealedHours };
      } else {
        outcome = { exitCode: 0, unsentRecords: 0, unsealedHours: 0 };
      }
    } catch (err) {
      this.#logger.error(
        { err, code: (err as { code?: string }).code },
        'could not read the ledger at shutdown',
      );
    }
    await this.#release();
    if (outcome.exitCode === 75) {
      this.#logger.warn(
        { unsentRecords: outcome.unsentRecords, unsealedHours: outcome.unsealedHours },
        'usage left in the ledger; it is sent at the next start with the same state directory',
      );
    }
    return outcome;
  }

  /** Closes whatever was opened, in reverse order. Safe to call on a partly started agent. */
  async #release(): Promise<void> {
    await this.#scheduler?.stop();
    await this.#intake?.stop();
    this.#ledger?.close();
    this.#client?.destroy();
    await this.#emulator?.stop();
  }
}

function formatStatus(status: LedgerStatus, entitlement: unknown, config: Config): unknown {
  return {
    entitlement,
    productCode: config.productCode,
    dryRun: config.dryRun,
    ledgerId: status.ledgerId,
    openHours: status.open.map((o) => ({
      hourStart: new Date(o.hourStartMs).toISOString(),
      dimension: o.dimension,
      quantity: o.quantity,
      tagSets: o.tagSets,
    })),
    records: status.records,
    oldestUnsentAgeSeconds: status.oldestUnsentAgeSeconds,
    failed: status.failed.map((f) => ({
      hourStart: new Date(f.hourStartMs).toISOString(),
      dimension: f.dimension,
      quantity: f.quantity,
      error: f.error,
    })),
  };
}
