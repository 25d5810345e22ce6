/**
 * The usage pipeline as one piece, wired once: intake appends to the ledger, the scheduler's passes seal,
 * send through the sender and settle, and the metrics observe all three. The agent builds it from the
 * sidecar's configuration; the integration tests build this same wiring with an injected clock, their own
 * admission gate and a SQLite ledger they can read, so what they exercise is what runs.
 *
 * ```
 *  app ──HTTP──▶ IntakeServer ──append──▶ Ledger ◀──seal / settle── Dispatcher ──▶ MeteringSender ──▶ AWS
 *                                                                      ▲ passes
 *                                                                  Scheduler (cron + jitter, retries, flush)
 * ```
 */
import type { MarketplaceMeteringClient } from '@aws-sdk/client-marketplace-metering';
import type { Clock } from './clock.js';
import type { Config } from './config.js';
import { CODES } from './errors.js';
import { NOT_STARTED, type Admission } from './entitlement/entitlement.js';
import { IntakeServer, type IntakeOptions } from './intake/server.js';
import { rejection, type Rejection } from './intake/usage.js';
import type { Ledger, LedgerStatus } from './ledger/ledger.js';
import type { Logger } from './log.js';
import { Metrics } from './observe/metrics.js';
import type { ReadinessCheck } from './observe/readiness.js';
import { Scheduler } from './schedule/scheduler.js';
import { SendPacer } from './send/pacing.js';
import { MeteringSender } from './send/sender.js';

/** The configuration the pipeline reads. */
export interface PipelineConfig extends Pick<
  Config,
  'sendJitterSeconds' | 'socketPath' | 'listen' | 'dimensions'
> {
  /** node-cron expression; `undefined` runs no cron task (tests drive `Scheduler.runOnce`). */
  readonly schedule: string | undefined;
  /** METERING_UNIT_DIVISORS; none when absent. The ledger must be opened with the same divisors. */
  readonly unitDivisors?: Config['unitDivisors'];
}

/** What intake asks of the rest of the sidecar: admission, the status view, entitlement proofs. */
export type IntakeAccess = Pick<IntakeOptions, 'gate' | 'status' | 'entitlement' | 'proveEntitlement'>;

/** Inputs of {@link buildPipeline}. */
export interface PipelineOptions {
  readonly config: PipelineConfig;
  /** The opened ledger (an `InProcessLedger` over the SQLite ledger); the pipeline owns it from here on. */
  readonly ledger: Ledger;
  /** The client sends go through: one attempt per call (`createSendClient`). */
  readonly sendClient: MarketplaceMeteringClient;
  readonly access: IntakeAccess;
  readonly clock: Clock;
  readonly logger: Logger;
  readonly metrics: Metrics;
  /** Random source for send jitter and retry backoff; injectable for tests. */
  readonly random?: () => number;
}

/** The built pipeline; `intake.start()` and `scheduler.start()` are the caller's to order. */
export interface Pipeline {
  readonly ledger: Ledger;
  readonly scheduler: Scheduler;
  readonly intake: IntakeServer;
}

/** Wires intake, ledger, scheduler and sender; starts nothing. */
export function buildPipeline(options: PipelineOptions): Pipeline {
  const { config, clock, logger, metrics } = options;
  const { ledger } = options;
  const sender = new MeteringSender(options.sendClient, () =>
    logger.error(
      { code: CODES.sendEvidence },
      'MeterUsage succeeded without a reported connection; failed sends are now all treated as possibly delivered',
    ),
  );
  const pacer = new SendPacer(clock, options.random);
  const scheduler = new Scheduler({
    ledger,
    sender,
    clock,
    logger: logger.child({ component: 'scheduler' }),
    schedule: config.schedule,
    jitterSeconds: config.sendJitterSeconds,
    metrics,
    pacer,
    ...(options.random ? { random: options.random } : {}),
  });
  const intake = new IntakeServer({
    socketPath: config.socketPath,
    listen: config.listen,
    dimensions: config.dimensions,
    ...(config.unitDivisors ? { unitDivisors: config.unitDivisors } : {}),
    ledger,
    logger: logger.child({ component: 'intake' }),
    metrics,
    ...options.access,
  });
  return { ledger, scheduler, intake };
}

/**
 * The sidecar's metrics, reading the ledger as observers see it (`undefined` before it opens and once
 * shutdown has begun) and the entitlement state.
 */
export function pipelineMetrics(sources: {
  readonly ledger: () => Ledger | undefined;
  readonly files: () => readonly string[];
  readonly entitlementState: () => string;
  readonly clock: Clock;
  /** What the handoff directory holds at the last scan; undefined without one. */
  readonly handoffDirectory?: () => { pending: number; ignored: number } | undefined;
}): Metrics {
  const { ledger, clock } = sources;
  return new Metrics({
    ledger: async () => ledger()?.status(clock.now()),
    entitlementState: sources.entitlementState,
    ledgerFiles: sources.files,
    handoffs: async () => {
      const directory = sources.handoffDirectory?.();
      if (directory === undefined) return undefined;
      const status = await ledger()?.status(clock.now());
      return { ...directory, uncertain: status?.handoffs.uncertain.length ?? 0 };
    },
    idempotencyKeys: async () => {
      const stats = await ledger()?.keyStats();
      if (stats === undefined) return undefined;
      const { count, oldestAtMs } = stats;
      const ageMs = oldestAtMs === undefined ? undefined : clock.now() - oldestAtMs;
      return {
        count,
        oldestAgeSeconds: ageMs === undefined ? null : Math.max(0, Math.floor(ageMs / 1000)),
      };
    },
  });
}

/**
 * What a ledger still holds for a later start: records not yet accepted and hours not yet sealed. An hour
 * whose usage adds up to zero sends nothing, so it does not count as left behind.
 */
export function leftInLedger(status: LedgerStatus): { unsentRecords: number; unsealedHours: number } {
  return {
    unsentRecords: status.records.pending,
    unsealedHours: status.open.filter((o) => o.quantity > 0).length,
  };
}

/**
 * Intake's gate: usage is accepted once entitlement is established (`admission` is `undefined` before the
 * entitlement policy exists) and while the ledger is writable.
 */
export function admissionGate(
  admission: () => Admission | undefined,
  storage: () => Promise<ReadinessCheck>,
): () => Promise<Rejection | undefined> {
  return async () => {
    const admitted = admission() ?? NOT_STARTED.admission;
    if (!admitted.admitted) return rejection('NotEntitled', admitted.message);
    const writable = await storage();
    if (writable.ok) return undefined;
    return rejection(
      'StorageUnavailable',
      `the sidecar cannot store usage right now (${writable.reason}); retry later`,
    );
  };
}
