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
import { MeteringEmulator } from './emulator/emulator.js';
import {
  DryRunCheck,
  RegisterUsageCheck,
  awaitEntitlement,
  type EntitlementCheck,
  type EntitlementProof,
} from './entitlement/check.js';
import { CODES, NotEntitledError } from './errors.js';
import { EXIT } from './exitCodes.js';
import { IntakeServer, MAX_DRAIN_MS } from './intake/server.js';
import { ERROR_STATUS, rejection, type ErrorCode, type Rejection } from './intake/usage.js';
import { AdminServer, type ReadinessCheck } from './observe/adminServer.js';
import { Metrics } from './observe/metrics.js';
import { InProcessLedger } from './ledger/inProcessLedger.js';
import type { Ledger, LedgerStatus } from './ledger/ledger.js';
import { SqliteLedger } from './ledger/sqliteLedger.js';
import type { Logger } from './log.js';
import { Scheduler } from './schedule/scheduler.js';
import { createMeteringClient, createSendClient, observeClient } from './send/client.js';
import { MeteringSender } from './send/sender.js';

/** Shortest interval between two app-requested entitlement proofs (RegisterUsage calls). */
const PROOF_INTERVAL_MS = 5_000;

/** Shortest interval between two warnings that the idempotency-key store is full. */
const KEYS_WARNING_INTERVAL_MS = 3_600_000;

/** Share of the shutdown budget that draining requests in flight may take (at most MAX_DRAIN_MS). */
const DRAIN_SHARE = 0.2;

/** Credentials the client signs with in local mode; the embedded emulator takes them as the task identity. */
const LOCAL_CREDENTIALS = { accessKeyId: 'LOCALTASK', secretAccessKey: 'local-only' } as const;

/** Entitlement as the app and operators see it. */
export type EntitlementState = 'pending' | 'entitled' | 'not-entitled' | 'disabled';

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
}

/** Runs the sidecar; see the module comment for the lifecycle. */
export class Agent {
  readonly #config: Config;
  readonly #logger: Logger;
  readonly #clock: Clock;
  #emulator: MeteringEmulator | undefined;
  #ledger: Ledger | undefined;
  #client: MarketplaceMeteringClient | undefined;
  #sendClient: MarketplaceMeteringClient | undefined;
  #lastProofAtMs = -Infinity;
  #intake: IntakeServer | undefined;
  #admin: AdminServer | undefined;
  #scheduler: Scheduler | undefined;
  #entitlement: EntitlementState = 'pending';
  #entitlementReason = 'the entitlement check has not started';
  #entitlementCheckedAtMs: number | undefined;
  #proof: EntitlementProof | undefined;
  #registerUsage: RegisterUsageCheck | undefined;
  #proving = false;
  #starting: Promise<void> | undefined;
  readonly #abort = new AbortController();
  #stopping: Promise<StopOutcome> | undefined;
  readonly #metrics: Metrics;
  #writable: { atMs: number; check: ReadinessCheck } | undefined;
  #keysWarnedAtMs = -Infinity;

  constructor(config: Config, deps: AgentDeps) {
    this.#config = config;
    this.#logger = deps.logger;
    this.#clock = deps.clock;
    this.#metrics = new Metrics({
      ledger: async () => {
        const ledger = this.#ledger;
        if (ledger === undefined || this.#stopping !== undefined) return undefined;
        return ledger.status(this.#clock.now());
      },
      entitlementState: () => this.#entitlement,
      ledgerFiles: () => this.#ledger?.files ?? [],
      idempotencyKeys: async () => {
        const ledger = this.#ledger;
        if (ledger === undefined || this.#stopping !== undefined) return undefined;
        const { count, oldestAtMs } = await ledger.keyStats();
        return {
          count,
          oldestAgeSeconds:
            oldestAtMs === undefined
              ? null
              : Math.max(0, Math.floor((this.#clock.now() - oldestAtMs) / 1000)),
        };
      },
    });
  }

  /** The agent's metrics registry. */
  get metrics(): Metrics {
    return this.#metrics;
  }

  /** The app API's TCP address once started (its port resolved when configured as 0). */
  get tcpAddress(): { host: string; port: number } | undefined {
    return this.#intake?.tcpAddress;
  }

  /** The admin listener's port once started. */
  get adminPort(): number | undefined {
    return this.#admin?.port;
  }

  /** The embedded emulator in local mode. */
  get emulator(): MeteringEmulator | undefined {
    return this.#emulator;
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
          { code: CODES.staticCredentials },
          'AWS_ACCESS_KEY_ID is set: AWS Marketplace accepts only the ECS task role or IRSA for metering; remove static keys from the task or pod',
        );
      }

      this.#ledger = new InProcessLedger(
        SqliteLedger.open({
          stateDir: config.stateDir,
          productCode: config.productCode,
          dryRun: config.dryRun,
          clock: this.#clock,
          idempotencyKeysMax: config.idempotencyKeysMax,
          onKeysEvicted: (evicted, oldestKeptAtMs) => this.#keysEvicted(evicted, oldestKeptAtMs),
        }),
      );
      this.#logger.info({ stateDir: config.stateDir, ledgerId: this.#ledger.ledgerId }, 'ledger open');

      const clientOptions = {
        region: config.region,
        endpoint,
        ...(config.local ? { credentials: LOCAL_CREDENTIALS } : {}),
      };
      // Entitlement lets the SDK retry; sends make one attempt each, so every attempt's outcome is known and
      // a record an earlier attempt may have delivered is never mistaken for one AWS refused.
      this.#client = createMeteringClient(clientOptions);
      this.#sendClient = createSendClient(clientOptions);
      observeClient(this.#client, this.#metrics);
      observeClient(this.#sendClient, this.#metrics);
      this.#scheduler = new Scheduler({
        ledger: this.#ledger,
        sender: new MeteringSender(this.#sendClient, () =>
          this.#logger.error(
            { code: CODES.sendEvidence },
            'MeterUsage succeeded without a reported connection; failed sends are now all treated as possibly delivered',
          ),
        ),
        clock: this.#clock,
        logger: this.#logger.child({ component: 'scheduler' }),
        schedule: config.schedule,
        jitterSeconds: config.sendJitterSeconds,
        metrics: this.#metrics,
      });

      this.#intake = new IntakeServer({
        socketPath: config.socketPath,
        listen: config.listen,
        dimensions: config.dimensions,
        ledger: this.#ledger,
        logger: this.#logger.child({ component: 'intake' }),
        gate: () => this.#gate(),
        status: () => this.status(),
        entitlement: () => this.#entitlementView(),
        proveEntitlement: (nonce) => this.#proveEntitlement(nonce),
        metrics: this.#metrics,
      });
      await this.#intake.start();

      if (config.adminListen !== undefined) {
        this.#admin = new AdminServer({
          listen: config.adminListen,
          logger: this.#logger.child({ component: 'admin' }),
          readiness: () => this.readiness(),
          metrics: () => this.#metrics.text(),
        });
        await this.#admin.start();
      }

      try {
        await this.#checkEntitlement(() => this.#emulator?.publicKeyPem);
      } catch (err) {
        await this.#flushBeforeExit();
        throw err;
      }
      await this.#scheduler.start();
      this.#logger.info(
        { host: hostname(), dryRun: config.dryRun, local: config.local, schedule: config.schedule },
        'metering sidecar ready',
      );
    } catch (err) {
      // When a signal interrupted startup, stop() releases everything after reading the ledger's state.
      if (this.#stopping === undefined) await this.#release();
      throw err;
    }
  }

  /**
   * The entitlement step of startup: intake answers 503 NotEntitled and `/readyz` is not ready until it passes.
   * `register-usage` and `dry-run` retry throttling, 5xx and network errors within
   * METERING_ENTITLEMENT_RETRY_SECONDS; any other answer throws {@link NotEntitledError}.
   */
  async #checkEntitlement(localPublicKeyPem: () => string | undefined): Promise<void> {
    const config = this.#config;
    const log = this.#logger.child({ component: 'entitlement' });
    if (config.entitlement === 'none') {
      this.#entitlement = 'disabled';
      this.#entitlementCheckedAtMs = this.#clock.now();
      log.info({ mode: 'none' }, 'entitlement check disabled (METERING_ENTITLEMENT=none)');
      return;
    }
    let check: EntitlementCheck;
    if (config.entitlement === 'register-usage') {
      // The emulator makes its signing key on first use: only ask for it when RegisterUsage will be checked.
      const publicKeyPem = config.publicKeyPem ?? localPublicKeyPem();
      if (publicKeyPem === undefined) {
        log.warn(
          { code: CODES.publicKeyMissing },
          'no product public key configured (METERING_PUBLIC_KEY or METERING_PUBLIC_KEY_FILE): the RegisterUsage token is accepted without verifying its signature',
        );
      }
      check = this.#registerUsage = new RegisterUsageCheck(this.#client!, {
        productCode: config.productCode,
        publicKeyVersion: config.publicKeyVersion,
        publicKeyPem,
      });
    } else {
      check = new DryRunCheck(this.#client!, {
        productCode: config.productCode,
        dimensions: config.dimensions ?? [],
        clock: this.#clock,
      });
    }
    this.#entitlementReason = `waiting for ${config.entitlement === 'register-usage' ? 'RegisterUsage' : 'MeterUsage DryRun'}`;
    try {
      const result = await awaitEntitlement(check, {
        clock: this.#clock,
        budgetMs: config.entitlementRetrySeconds * 1000,
        signal: this.#abort.signal,
        onRetry: (failure, attempt, nextAtMs) => {
          this.#entitlementReason = `AWS unavailable (${failure.code}) on attempt ${attempt}; retrying at ${new Date(nextAtMs).toISOString()}`;
          log.warn(
            { code: failure.code, attempt, retryAt: new Date(nextAtMs).toISOString() },
            'entitlement check failed for now; retrying',
          );
        },
      });
      this.#proof = result.proof;
      this.#entitlement = 'entitled';
      this.#entitlementCheckedAtMs = this.#clock.now();
      log.info({ mode: config.entitlement, verified: result.proof?.verified }, 'entitled');
      if (result.proof?.keyRotatedAt !== undefined) {
        log.warn(
          { code: CODES.publicKeyRotated, keyRotatedAt: result.proof.keyRotatedAt.toISOString() },
          `public key version ${config.publicKeyVersion} has expired: get the new key and version from the AWS Marketplace Management Portal and update METERING_PUBLIC_KEY_VERSION and the key`,
        );
      }
    } catch (err) {
      if (err instanceof NotEntitledError) {
        this.#entitlement = 'not-entitled';
        this.#entitlementCheckedAtMs = this.#clock.now();
        this.#entitlementReason = err.message;
      }
      throw err;
    }
  }

  /**
   * When startup ends without entitlement, usage a previous run of this task acknowledged may still be in the
   * ledger: send it (AWS keeps accepting a running task's records) before exiting, within the shutdown timeout.
   */
  async #flushBeforeExit(): Promise<void> {
    if (this.#stopping !== undefined || this.#scheduler === undefined) return;
    const status = await this.#ledger?.status(this.#clock.now());
    if (status === undefined || (status.records.pending === 0 && status.open.length === 0)) return;
    this.#logger.warn(
      { pending: status.records.pending, openHours: status.open.length },
      'startup failed with usage of a previous run in the ledger; sending it before exiting',
    );
    try {
      const summary = await this.#scheduler.flush(
        this.#clock.now() + this.#config.shutdownTimeoutSeconds * 1000,
      );
      this.#logger.info(summary, 'flush before exit finished');
    } catch (err) {
      this.#logger.error(
        { err, code: (err as { code?: string }).code },
        'flush before exit failed; usage stays in the ledger',
      );
    }
  }

  /**
   * The key store reached METERING_IDEMPOTENCY_KEYS_MAX and forgot its oldest keys: counted, and a warning at
   * most once an hour saying how far back a resend is still recognised.
   */
  #keysEvicted(evicted: number, oldestKeptAtMs: number | undefined): void {
    this.#metrics.idempotencyKeysEvicted.inc(evicted);
    const atMs = this.#clock.monotonicMs();
    if (atMs - this.#keysWarnedAtMs < KEYS_WARNING_INTERVAL_MS) return;
    this.#keysWarnedAtMs = atMs;
    const windowMinutes =
      oldestKeptAtMs === undefined
        ? 0
        : Math.max(0, Math.floor((this.#clock.now() - oldestKeptAtMs) / 60_000));
    this.#logger.warn(
      {
        code: CODES.idempotencyKeysFull,
        evicted,
        keysMax: this.#config.idempotencyKeysMax,
        windowMinutes,
      },
      `the idempotency-key store is full (METERING_IDEMPOTENCY_KEYS_MAX=${this.#config.idempotencyKeysMax}); the oldest keys are forgotten, so a resend is recognised only within the last ${windowMinutes} minutes instead of 24 hours: raise the bound (and the state volume), or send fewer keyed reports (batch them)`,
    );
  }

  /** `POST /v1/entitlement`: a fresh RegisterUsage with the app's nonce, so the app can verify the token itself. */
  async #proveEntitlement(nonce: string): Promise<{ status: number; body: unknown }> {
    const error = (code: ErrorCode, message: string): { status: number; body: unknown } => ({
      status: ERROR_STATUS[code],
      body: { error: { code, message } },
    });
    if (this.#registerUsage === undefined) {
      return error(
        'EntitlementNotApplicable',
        `the sidecar runs with METERING_ENTITLEMENT=${this.#config.entitlement}; proof comes from RegisterUsage (register-usage)`,
      );
    }
    if (this.#entitlement !== 'entitled') return error('NotEntitled', this.#entitlementReason);
    // RegisterUsage's 5 requests/s quota (docs/aws-rules.md §3.5) is shared by every task of the buyer's
    // account: one proof per PROOF_INTERVAL_MS per task keeps a looping app from starving other startups.
    const nowMs = this.#clock.monotonicMs(); // a wall clock stepping back must not block proofs
    if (this.#proving || nowMs - this.#lastProofAtMs < PROOF_INTERVAL_MS) {
      return error(
        'TooManyRequests',
        `at most one entitlement proof every ${PROOF_INTERVAL_MS / 1000} s; retry later`,
      );
    }
    this.#proving = true;
    this.#lastProofAtMs = nowMs;
    try {
      const result = await this.#registerUsage.prove(nonce, this.#abort.signal);
      if (result.kind === 'entitled' && result.proof !== undefined) {
        const proof = result.proof;
        return {
          status: 200,
          body: {
            token: proof.token,
            claims: proof.claims,
            verified: proof.verified,
            nonce,
            checkedAt: new Date(this.#clock.now()).toISOString(),
          },
        };
      }
      const failure =
        result.kind === 'entitled'
          ? { kind: 'notEntitled', code: CODES.tokenMissing, message: 'no token' }
          : result;
      this.#logger
        .child({ component: 'entitlement' })
        .error({ code: failure.code }, `entitlement proof failed: ${failure.message}`);
      return failure.kind === 'unavailable'
        ? error('EntitlementUnavailable', `AWS unavailable (${failure.code}); retry later`)
        : error('EntitlementRefused', `RegisterUsage refused (${failure.code}): ${failure.message}`);
    } finally {
      this.#proving = false;
    }
  }

  /** The readiness checks of `/readyz`: entitlement established, the ledger writable, the app API listening. */
  async readiness(): Promise<Record<string, ReadinessCheck>> {
    const entitled = this.#entitlement === 'entitled' || this.#entitlement === 'disabled';
    return {
      entitlement: entitled
        ? { ok: true }
        : { ok: false, reason: `${this.#entitlement}: ${this.#entitlementReason}` },
      ledger: await this.#ledgerWritable(),
      intake:
        this.#intake?.listening === true
          ? { ok: true }
          : { ok: false, reason: 'the app API is not listening' },
    };
  }

  /** A write probe of the ledger, at most once a second however often readiness is asked. */
  async #ledgerWritable(): Promise<ReadinessCheck> {
    const nowMs = this.#clock.now();
    // Cached by the monotonic clock: a wall clock stepping back must not freeze the cache.
    const atMs = this.#clock.monotonicMs();
    if (this.#writable !== undefined && atMs - this.#writable.atMs < 1000) return this.#writable.check;
    const ledger = this.#ledger;
    const check: ReadinessCheck =
      ledger === undefined || this.#stopping !== undefined
        ? { ok: false, reason: 'the ledger is not open' }
        : await ledger.writable(nowMs);
    if (!check.ok && this.#writable?.check.ok !== false) {
      this.#metrics.errors.inc({ code: CODES.stateUnavailable });
      this.#logger.error(
        { code: CODES.stateUnavailable, reason: check.reason },
        'the ledger is not writable; usage is refused until it is',
      );
    }
    if (check.ok && this.#writable?.check.ok === false) {
      this.#logger.info({ code: CODES.stateUnavailable }, 'the ledger is writable again; usage is accepted');
    }
    this.#writable = { atMs, check };
    return check;
  }

  async #gate(): Promise<Rejection | undefined> {
    if (this.#entitlement === 'entitled' || this.#entitlement === 'disabled') {
      const storage = await this.#ledgerWritable();
      if (storage.ok) return undefined;
      return rejection(
        'StorageUnavailable',
        `the sidecar cannot store usage right now (${storage.reason}); retry later`,
      );
    }
    return rejection(
      'NotEntitled',
      this.#entitlement === 'pending'
        ? 'the entitlement check has not finished; retry shortly'
        : 'the buyer is not entitled to this product',
    );
  }

  #entitlementView(): unknown {
    const proof = this.#proof;
    return {
      state: this.#entitlement,
      mode: this.#config.entitlement,
      checkedAt:
        this.#entitlementCheckedAtMs === undefined
          ? null
          : new Date(this.#entitlementCheckedAtMs).toISOString(),
      ...(this.#entitlement === 'pending' || this.#entitlement === 'not-entitled'
        ? { reason: this.#entitlementReason }
        : {}),
      ...(proof !== undefined
        ? {
            token: proof.token,
            claims: proof.claims,
            verified: proof.verified,
            ...(proof.keyRotatedAt ? { keyRotatedAt: proof.keyRotatedAt.toISOString() } : {}),
          }
        : {}),
    };
  }

  /** The body of `GET /v1/status`. */
  async status(): Promise<unknown> {
    const checks = await this.readiness();
    const ready = Object.values(checks).every((c) => c.ok);
    const ledger = this.#ledger;
    if (ledger === undefined) return { ready, checks, entitlement: this.#entitlementView() };
    return {
      ready,
      checks,
      ...formatStatus(await ledger.status(this.#clock.now()), this.#entitlementView(), this.#config),
    };
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
    // A signal during startup ends the entitlement retries; wait for start() to give up.
    this.#abort.abort();
    await this.#starting?.catch(() => undefined);
    this.#logger.info(
      { timeoutSeconds: this.#config.shutdownTimeoutSeconds },
      'shutting down: final seal and send',
    );
    try {
      // Draining gets a bounded share of the budget, so a stalled upload cannot eat the final send's time.
      await this.#intake?.stop(
        Math.min(MAX_DRAIN_MS, this.#config.shutdownTimeoutSeconds * 1000 * DRAIN_SHARE),
      );
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
    let outcome: StopOutcome = { exitCode: EXIT.leftInLedger, unsentRecords: 0, unsealedHours: 0 };
    try {
      const status = await this.#ledger?.status(this.#clock.now());
      if (status !== undefined) {
        const unsentRecords = status.records.pending;
        // An hour whose usage adds up to zero sends nothing, so it does not count as left behind.
        const unsealedHours = status.open.filter((o) => o.quantity > 0).length;
        outcome = {
          exitCode: unsentRecords + unsealedHours === 0 ? EXIT.ok : EXIT.leftInLedger,
          unsentRecords,
          unsealedHours,
        };
      } else {
        outcome = { exitCode: EXIT.ok, unsentRecords: 0, unsealedHours: 0 };
      }
    } catch (err) {
      this.#logger.error(
        { err, code: (err as { code?: string }).code },
        'could not read the ledger at shutdown',
      );
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
    await this.#scheduler?.stop();
    await this.#intake?.stop();
    await this.#admin?.stop();
    await this.#ledger?.close();
    this.#client?.destroy();
    this.#sendClient?.destroy();
    await this.#emulator?.stop();
  }
}

function formatStatus(status: LedgerStatus, entitlement: unknown, config: Config): Record<string, unknown> {
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
