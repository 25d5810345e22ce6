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
 * Lifecycle. `start()`: (1) in local mode, the embedded emulator; (2) the SDK clients and the entitlement
 * policy; (3) the ledger, refusing a corrupt one, and the pipeline over it (pipeline.ts); (4) intake, answering
 * 503 NotEntitled until (5) the entitlement check passes; (6) the scheduler, whose first run sends what a
 * previous run left pending. `stop()` runs in reverse: intake stops accepting and drains in-flight requests,
 * the scheduler seals everything including the open hour and sends until the shutdown deadline, then the
 * ledger and the clients close. `stop()` is idempotent.
 */
import { homedir, hostname } from 'node:os';
import type { MarketplaceMeteringClient } from '@aws-sdk/client-marketplace-metering';
import { HOUR_MS, type Clock } from './clock.js';
import type { Config } from './config.js';
import type { MeteringEmulator } from './emulator/emulator.js';
import { Entitlement, NOT_STARTED } from './entitlement/entitlement.js';
import { CODES, errorCode } from './errors.js';
import { EXIT } from './exitCodes.js';
import { HandoffDirectory } from './handoff/directory.js';
import { Handoffs } from './handoff/handoffs.js';
import { MAX_DRAIN_MS } from './intake/server.js';
import type { Ledger } from './ledger/ledger.js';
import { InProcessLedger } from './ledger/inProcessLedger.js';
import { SqliteLedger } from './ledger/sqliteLedger.js';
import type { Logger } from './log.js';
import { AdminServer } from './observe/adminServer.js';
import { keyEvictionReporter } from './observe/keyEvictions.js';
import type { Metrics } from './observe/metrics.js';
import { Readiness, type ReadinessCheck } from './observe/readiness.js';
import { statusBody } from './observe/status.js';
import { platformIdentity, type PlatformIdentity } from './platform.js';
import { admissionGate, buildPipeline, leftInLedger, pipelineMetrics, type Pipeline } from './pipeline.js';
import { flushPlan } from './schedule/scheduler.js';
import { createMeteringClient, createSendClient, observeClient } from './send/client.js';

/** Share of the shutdown budget that draining requests in flight may take (at most MAX_DRAIN_MS). */
const DRAIN_SHARE = 0.2;

/** Credentials the client signs with in local mode; the embedded emulator takes them as the task identity. */
const LOCAL_CREDENTIALS = { accessKeyId: 'LOCALTASK', secretAccessKey: 'local-only' } as const;

/** How the agent ended: nothing left to send, or records left in the ledger for the next start. */
export interface StopOutcome {
  readonly exitCode: typeof EXIT.ok | typeof EXIT.leftInLedger;
  readonly unsentRecords: number;
  readonly unsealedHours: number;
}

/** Dependencies the agent does not build itself. */
export interface AgentDeps {
  readonly logger: Logger;
  readonly clock: Clock;
  /** Where the platform's variables are read (ECS task metadata, the pod's identity); `process.env` by default. */
  readonly env?: Readonly<Record<string, string | undefined>>;
}

/** Runs the sidecar; see the module comment for the lifecycle. */
export class Agent {
  readonly #config: Config;
  readonly #logger: Logger;
  readonly #clock: Clock;
  readonly #env: Readonly<Record<string, string | undefined>>;
  /** What the environment shows would stop metering (../doctor.ts), found at startup; none in local mode. */
  #findings: readonly { code: string; problem: string; fix: string }[] = [];
  readonly #metrics: Metrics;
  readonly #readiness: Readiness;
  readonly #abort = new AbortController();
  #emulator: MeteringEmulator | undefined;
  #client: MarketplaceMeteringClient | undefined;
  #sendClient: MarketplaceMeteringClient | undefined;
  #entitlement: Entitlement | undefined;
  #pipeline: Pipeline | undefined;
  #handoffs: Handoffs | undefined;
  #admin: AdminServer | undefined;
  #starting: Promise<void> | undefined;
  #stopping: Promise<StopOutcome> | undefined;
  #failure: ((err: Error) => void) | undefined;
  /** Settles with the error if the sidecar can no longer run (its ledger cannot be synced); see {@link failed}. */
  readonly #failed = new Promise<Error>((resolve) => (this.#failure = resolve));

  constructor(config: Config, deps: AgentDeps) {
    this.#config = config;
    this.#logger = deps.logger;
    this.#clock = deps.clock;
    this.#env = deps.env ?? process.env;
    // The ledger as the observers see it: none before it opens, and none once shutdown has begun.
    const ledger = (): Ledger | undefined => (this.#stopping === undefined ? this.#ledger : undefined);
    this.#metrics = pipelineMetrics({
      ledger,
      files: () => this.#ledger?.files ?? [],
      entitlementState: () => this.#entitlement?.state ?? NOT_STARTED.state,
      handoffDirectory: () => this.#handoffs?.view,
      clock: this.#clock,
    });
    this.#readiness = new Readiness({
      ledger,
      entitlement: () => {
        const check = this.#entitlement?.readiness() ?? NOT_STARTED.readiness;
        // Not entitled (yet): the environment's own problems are the likeliest reasons, named beside it.
        return check.ok || this.#findings.length === 0 ? check : { ...check, findings: this.#findings };
      },
      intakeListening: () => this.#pipeline?.intake.listening === true,
      clock: this.#clock,
      logger: this.#logger,
      metrics: this.#metrics,
    });
  }

  /**
   * Resolves with the error once the running sidecar can no longer trust its ledger (a sync of the write-ahead
   * log failed): `main` then exits at once, unanswered requests with it, as after a crash, and the next start
   * recovers the file as it is. Never resolves otherwise.
   */
  get failed(): Promise<Error> {
    return this.#failed;
  }

  /** `main` logs the error as fatal and exits. */
  #fail(err: Error): void {
    this.#failure?.(err);
  }

  /** The agent's metrics registry. */
  get metrics(): Metrics {
    return this.#metrics;
  }

  /** The app API's TCP address once started (its port resolved when configured as 0). */
  get tcpAddress(): { host: string; port: number } | undefined {
    return this.#pipeline?.intake.tcpAddress;
  }

  /** The admin listener's port once started. */
  get adminPort(): number | undefined {
    return this.#admin?.port;
  }

  /** The embedded emulator in local mode. */
  get emulator(): MeteringEmulator | undefined {
    return this.#emulator;
  }

  get #ledger(): Ledger | undefined {
    return this.#pipeline?.ledger;
  }

  /**
   * Starts every component in order. On failure, whatever was started is stopped again before the error is
   * rethrown for `main` to map to an exit code.
   */
  start(): Promise<void> {
    this.#starting ??= this.#start();
    return this.#starting;
  }

  async #start(): Promise<void> {
    const config = this.#config;
    try {
      const endpoint = await this.#startEmulator();
      this.#buildClients(endpoint);
      const { scheduler } = this.#openPipeline(await this.#platformIdentity());
      await this.#handoffs?.recover();
      await this.#startListeners();
      try {
        await this.#entitlement!.establish(this.#abort.signal);
      } catch (err) {
        await this.#flushBeforeExit();
        throw err;
      }
      await scheduler.start();
      if (this.#handoffs !== undefined) {
        await this.#handoffs.adoptAll();
        this.#handoffs.start(config.handoffScanSeconds * 1000);
      }
      this.#logger.info(
        {
          host: hostname(),
          node: process.version,
          dryRun: config.dryRun,
          local: config.local,
          schedule: config.schedule,
        },
        'metering sidecar ready',
      );
    } catch (err) {
      // When a signal interrupted startup, stop() releases everything after reading the ledger's state.
      if (this.#stopping === undefined) await this.#release();
      throw err;
    }
  }

  /** (1) In local mode, the embedded emulator; returns the endpoint to send to. */
  async #startEmulator(): Promise<string | undefined> {
    const config = this.#config;
    if (!config.local) {
      if (config.staticCredentials) {
        this.#logger.warn(
          { code: CODES.staticCredentials },
          'AWS_ACCESS_KEY_ID is set: AWS Marketplace accepts only the ECS task role or IRSA for metering; remove static keys from the task or pod',
        );
      }
      return config.endpoint;
    }
    const log = this.#logger.child({ component: 'emulator' });
    // Loaded only in local mode: a production sidecar never holds the emulator's code.
    const { MeteringEmulator, loggedInput } = await import('./emulator/emulator.js');
    this.#emulator = new MeteringEmulator({
      productCode: config.productCode,
      region: config.region,
      ...(config.dimensions ? { dimensions: config.dimensions } : {}),
      onCall: (call) =>
        log.info(
          {
            operation: call.operation,
            status: call.status,
            error: call.error,
            input: loggedInput(call.input),
          },
          'emulator call',
        ),
    });
    const endpoint = await this.#emulator.start();
    this.#logger.info(
      { endpoint },
      'local mode: embedded Marketplace Metering emulator started; nothing is billed',
    );
    return endpoint;
  }

  /** (2) The SDK clients and the entitlement built on them. */
  #buildClients(endpoint: string | undefined): void {
    const config = this.#config;
    const clientOptions = {
      region: config.region,
      endpoint,
      ...(config.local ? { credentials: LOCAL_CREDENTIALS } : {}),
    };
    // Entitlement lets the SDK retry; sends make one attempt each, so every attempt's outcome is known and
    // a record an earlier attempt may have delivered is never mistaken for one AWS refused.
    this.#client = createMeteringClient(clientOptions);
    this.#sendClient = createSendClient(clientOptions);
    observeClient(this.#client, this.#metrics, this.#clock);
    observeClient(this.#sendClient, this.#metrics, this.#clock);
    this.#entitlement = new Entitlement({
      config,
      client: this.#client,
      clock: this.#clock,
      logger: this.#logger.child({ component: 'entitlement' }),
      localPublicKeyPem: () => this.#emulator?.publicKeyPem,
    });
  }

  /** Which task or pod this is (../platform.ts), for the records it seals; a platform that does not tell is warned of. */
  async #platformIdentity(): Promise<PlatformIdentity> {
    const { identity, problem } = await platformIdentity(this.#env, this.#config.pod);
    if (problem !== undefined) this.#logger.warn({ code: CODES.platformIdentity }, problem);
    this.#logger.info({ identity }, 'platform identity');
    if (!this.#config.local) {
      const { environmentFindings } = await import('./doctor.js');
      this.#findings = environmentFindings(this.#env, identity, homedir())
        .filter((f) => f.severity === 'error')
        .map(({ code, problem: p, fix }) => ({ code, problem: p, fix }));
    }
    return identity;
  }

  /**
   * (3) The ledger, refusing a corrupt one and a state directory another sidecar holds, and the pipeline over
   * it (intake, scheduler, sender); intake and the scheduler start later.
   */
  #openPipeline(identity: PlatformIdentity): Pipeline {
    const config = this.#config;
    const store = SqliteLedger.open({
      stateDir: config.stateDir,
      productCode: config.productCode,
      dryRun: config.dryRun,
      clock: this.#clock,
      idempotencyKeysMax: config.idempotencyKeysMax,
      retentionMs: config.retentionDays * 24 * HOUR_MS,
      unitDivisors: new Map(Object.entries(config.unitDivisors)),
      onRemaindersPruned: (remainders) =>
        this.#logger.warn(
          { remainders, code: CODES.remainderPruned },
          'unit remainders below one unit untouched for the retention period are given up, never billed',
        ),
      ...(config.zeroUsage && config.dimensions !== undefined
        ? {
            zeroUsage: {
              dimensions: config.dimensions,
              fromMs: this.#clock.now(),
              fromMonotonicMs: this.#clock.monotonicMs(),
            },
          }
        : {}),
      identity: JSON.stringify(identity),
      onKeysEvicted: keyEvictionReporter({
        metrics: this.#metrics,
        logger: this.#logger,
        clock: this.#clock,
        keysMax: config.idempotencyKeysMax,
      }),
      onBroken: (err) => this.#fail(err),
    });
    const ledger = new InProcessLedger(store);
    this.#logger.info({ stateDir: config.stateDir, ledgerId: ledger.ledgerId }, 'ledger open');
    const entitlement = this.#entitlement!;
    this.#pipeline = buildPipeline({
      config,
      ledger,
      sendClient: this.#sendClient!,
      access: {
        gate: admissionGate(
          () => this.#entitlement?.admission(),
          () => this.#readiness.storage(),
        ),
        status: () => this.status(),
        entitlement: () => entitlement.view(),
        proveEntitlement: (nonce) => entitlement.prove(nonce, this.#abort.signal),
      },
      clock: this.#clock,
      logger: this.#logger,
      metrics: this.#metrics,
    });
    if (config.handoffDir !== undefined) {
      this.#handoffs = new Handoffs({
        directory: new HandoffDirectory(config.handoffDir),
        ledger: this.#pipeline.ledger,
        productCode: config.productCode,
        dimensions: config.dimensions,
        host: hostname(),
        clock: this.#clock,
        logger: this.#logger.child({ component: 'handoff' }),
        observer: this.#metrics,
      });
    }
    return this.#pipeline;
  }

  /** (4) Intake, answering 503 NotEntitled until (5) entitlement is established, and the admin listener. */
  async #startListeners(): Promise<void> {
    const config = this.#config;
    await this.#pipeline!.intake.start();
    if (config.adminListen !== undefined) {
      this.#admin = new AdminServer({
        listen: config.adminListen,
        logger: this.#logger.child({ component: 'admin' }),
        readiness: () => this.readiness(),
        metrics: () => this.#metrics.text(),
      });
      await this.#admin.start();
    }
  }

  /**
   * When startup ends without entitlement, usage a previous run of this task acknowledged may still be in the
   * ledger: send it (AWS keeps accepting a running task's records) before exiting, within the shutdown timeout.
   */
  async #flushBeforeExit(): Promise<void> {
    const scheduler = this.#pipeline?.scheduler;
    if (this.#stopping !== undefined || scheduler === undefined) return;
    const status = await this.#ledger?.status(this.#clock.now());
    if (status === undefined || (status.records.pending === 0 && status.open.length === 0)) return;
    this.#logger.warn(
      { pending: status.records.pending, openHours: status.open.length },
      'startup failed with usage of a previous run in the ledger; sending it before exiting',
    );
    try {
      const { sendUntilMs, options } = flushPlan(
        this.#clock.now(),
        this.#config.shutdownTimeoutSeconds * 1000,
        this.#handoffs !== undefined,
      );
      const summary = await scheduler.flush(sendUntilMs, options);
      this.#logger.info(summary, 'flush before exit finished');
    } catch (err) {
      this.#logger.error(
        { err, code: errorCode(err) },
        'flush before exit failed; usage stays in the ledger',
      );
    }
    // Whatever the flush did, what is left goes to the handoff directory (handOff never rejects).
    await this.#handoffs?.handOff();
  }

  /** The readiness checks of `/readyz`: entitlement established, the ledger writable, the app API listening. */
  readiness(): Promise<Record<string, ReadinessCheck>> {
    return this.#readiness.checks();
  }

  /** The body of `GET /v1/status`. */
  async status(): Promise<unknown> {
    const checks = await this.readiness();
    const entitlement = this.#entitlement?.view() ?? NOT_STARTED.view(this.#config.entitlement);
    const context = { ...this.#config, handoffDirectory: this.#handoffs?.view };
    return statusBody(checks, entitlement, await this.#ledger?.status(this.#clock.now()), context);
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
    const startMs = this.#clock.now();
    // A signal during startup ends the entitlement retries; wait for start() to give up.
    this.#abort.abort();
    await this.#starting?.catch(() => undefined);
    this.#logger.info(
      { timeoutSeconds: this.#config.shutdownTimeoutSeconds },
      'shutting down: final seal and send',
    );
    try {
      // Draining gets a bounded share of the budget, so a stalled upload cannot eat the final send's time.
      await this.#pipeline?.intake.stop(
        Math.min(MAX_DRAIN_MS, this.#config.shutdownTimeoutSeconds * 1000 * DRAIN_SHARE),
      );
      // A stopping sidecar adopts nothing more; the directory's changes from here on are its peers'.
      await this.#handoffs?.stop();
      if (this.#pipeline !== undefined) {
        const { sendUntilMs, options } = flushPlan(
          startMs,
          this.#config.shutdownTimeoutSeconds * 1000,
          this.#handoffs !== undefined,
        );
        const yieldWhen = await this.#handoffs?.peerSignal();
        const summary = await this.#pipeline.scheduler.flush(sendUntilMs, {
          ...options,
          ...(yieldWhen !== undefined ? { yieldWhen } : {}),
        });
        this.#logger.info(summary, 'final flush finished');
      }
    } catch (err) {
      this.#logger.error({ err, code: errorCode(err) }, 'final flush failed; records stay in the ledger');
    }
    // Whatever the flush did, what is left goes to the handoff directory (handOff never rejects).
    await this.#handoffs?.handOff();
    let outcome: StopOutcome = { exitCode: EXIT.leftInLedger, unsentRecords: 0, unsealedHours: 0 };
    try {
      const status = await this.#ledger?.status(this.#clock.now());
      const left = status === undefined ? { unsentRecords: 0, unsealedHours: 0 } : leftInLedger(status);
      const exitCode = left.unsentRecords + left.unsealedHours === 0 ? EXIT.ok : EXIT.leftInLedger;
      outcome = { exitCode, ...left };
      if (status !== undefined && status.remainders.length > 0) {
        // Below one billed unit per tag set: never rounded up. A restart on the same state directory goes on
        // from them; if this was the task's last run, they are the usage that is never billed.
        this.#logger.info(
          { remainders: status.remainders },
          'unit remainders below one unit are not billed; they stay in the ledger for a restart on the same state directory',
        );
      }
    } catch (err) {
      this.#logger.error({ err, code: errorCode(err) }, 'could not read the ledger at shutdown');
    }
    await this.#release();
    if (outcome.exitCode === EXIT.leftInLedger) {
      this.#logger.warn(
        { unsentRecords: outcome.unsentRecords, unsealedHours: outcome.unsealedHours },
        'usage left in the ledger; it is sent at the next start with the same state directory',
      );
    }
    return outcome;
  }

  /** Closes whatever was opened, in reverse order. Safe to call on a partly started agent. */
  async #release(): Promise<void> {
    await this.#handoffs?.stop();
    await this.#pipeline?.scheduler.stop();
    await this.#pipeline?.intake.stop();
    await this.#admin?.stop();
    await this.#ledger?.close();
    this.#client?.destroy();
    this.#sendClient?.destroy();
    await this.#emulator?.stop();
  }
}
