/**
 * The scheduler: on every node-cron tick (METERING_SCHEDULE, UTC) plus a random delay of up to
 * METERING_SEND_JITTER_SECONDS, seal every closed hour and send every pending record; between ticks, retry
 * pending records when their backoff ends. One run at a time. At shutdown, {@link Scheduler.flush} seals
 * everything including the open hour and sends until a deadline.
 */
import { createTask, type ScheduledTask } from 'node-cron';
import { sleepUntil, type CancelTimer, type Clock } from '../clock.js';
import { windowEnd } from '../ledger/hours.js';
import type { StoredRecord } from '../ledger/ledger.js';
import type { SqliteLedger } from '../ledger/sqliteLedger.js';
import type { Logger } from '../log.js';
import type { Metrics } from '../observe/metrics.js';
import type { SendError, SendResult } from '../send/awsErrors.js';
import type { Sender } from '../send/sender.js';
import { CODES } from '../errors.js';

/** First retry delay after a transient failure. */
export const RETRY_BASE_MS = 5_000;

/** Longest retry delay: retries keep going until the record's window closes, at least this often. */
export const RETRY_MAX_MS = 15 * 60_000;

/**
 * First retry delay during the shutdown flush. The state volume usually dies with the task or pod, so the
 * seconds before the deadline are the last chance to deliver: retries come quickly, not on the hourly backoff.
 */
export const SHUTDOWN_RETRY_BASE_MS = 250;

/** Longest retry delay during the shutdown flush. */
export const SHUTDOWN_RETRY_MAX_MS = 2_000;

/** What one run did. */
export interface RunSummary {
  readonly sealed: number;
  readonly sent: number;
  readonly retrying: number;
  readonly carried: number;
  readonly failed: number;
}

/** Options of {@link Scheduler}. */
export interface SchedulerOptions {
  readonly ledger: SqliteLedger;
  readonly sender: Sender;
  readonly clock: Clock;
  readonly logger: Logger;
  /** node-cron expression; undefined runs no cron task (tests drive {@link Scheduler.runOnce}). */
  readonly schedule: string | undefined;
  readonly jitterSeconds: number;
  /** Random source in [0, 1) for jitter; injectable for tests. */
  readonly random?: () => number;
  readonly metrics?: Metrics;
}

/** Delay before retry number `attempts` (1-based): exponential from 5 s to 15 min, with jitter. */
export function retryDelayMs(attempts: number, random: () => number): number {
  const ceiling = Math.min(RETRY_MAX_MS, RETRY_BASE_MS * 2 ** Math.max(0, attempts - 1));
  return Math.round(ceiling / 2 + (random() * ceiling) / 2);
}

/**
 * Delay before retry number `retry` (1-based) of one record during the shutdown flush: exponential from 250 ms
 * to 2 s with jitter, and never more than a quarter of the `remainingMs` before the deadline, so that several
 * more attempts fit in whatever time is left.
 */
export function shutdownRetryDelayMs(retry: number, remainingMs: number, random: () => number): number {
  const ceiling = Math.min(
    SHUTDOWN_RETRY_MAX_MS,
    SHUTDOWN_RETRY_BASE_MS * 2 ** Math.max(0, retry - 1),
    Math.max(0, remainingMs / 4),
  );
  return Math.round(ceiling / 2 + (random() * ceiling) / 2);
}

/** When a record that failed for now is tried again: the hourly backoff, or the shutdown flush's. */
type RetryPolicy = (record: StoredRecord, nowMs: number) => number;

/** Seals and sends on a schedule; see the module comment. */
export class Scheduler {
  readonly #options: SchedulerOptions;
  readonly #random: () => number;
  #task: ScheduledTask | undefined;
  #current: Promise<RunSummary> | undefined;
  #controller = new AbortController();
  #retryTimer: CancelTimer | undefined;
  #jitterTimer: CancelTimer | undefined;
  #stopped = false;
  /** Consecutive runs that failed; they space out the retries. */
  #failedRuns = 0;

  constructor(options: SchedulerOptions) {
    this.#options = options;
    this.#random = options.random ?? Math.random;
  }

  /** Starts the cron task and runs once at once, so records left by a previous run are sent without delay. */
  async start(): Promise<void> {
    this.#options.ledger.retryAllNow(this.#options.clock.now());
    if (this.#options.schedule !== undefined) {
      this.#task = createTask(this.#options.schedule, () => this.#tick(), {
        timezone: 'UTC',
        name: 'metering',
      });
      await this.#task.start();
    }
    this.#trigger('startup');
  }

  /** A cron tick: wait a random jitter (spreading a fleet under the account's 10/s quota), then run. */
  #tick(): void {
    if (this.#stopped) return;
    const delayMs = Math.floor(this.#random() * this.#options.jitterSeconds * 1000);
    this.#jitterTimer?.();
    this.#jitterTimer = this.#options.clock.setTimer(this.#options.clock.now() + delayMs, () => {
      this.#jitterTimer = undefined;
      this.#trigger('schedule');
    });
  }

  /** Starts a run unless one is in flight. Never rejects: failures are logged once. */
  #trigger(reason: string): void {
    if (this.#stopped || this.#current !== undefined) return;
    const run = this.runOnce({ includeOpen: false });
    run.then(
      (summary) => this.#options.logger.debug({ reason, ...summary }, 'run finished'),
      (err: unknown) => {
        this.#options.metrics?.errors.inc({ code: codeOf(err) ?? CODES.unexpected });
        this.#options.logger.error(
          { err, code: codeOf(err), reason },
          'run failed; retrying at the next tick',
        );
      },
    );
  }

  /**
   * Carries records whose window is closing, seals what may be sealed (the open hour too with `includeOpen`),
   * then sends every due record, stopping at `signal`. Runs are serialised: a call while another run is in
   * flight waits for it. Rejects only when the ledger cannot be written.
   */
  runOnce(options: { includeOpen: boolean; signal?: AbortSignal }): Promise<RunSummary> {
    return this.#runSerialised(
      options.includeOpen,
      options.signal ?? this.#controller.signal,
      (record, nowMs) => nowMs + retryDelayMs(record.attempts + 1, this.#random),
    );
  }

  #runSerialised(includeOpen: boolean, signal: AbortSignal, retryAt: RetryPolicy): Promise<RunSummary> {
    const previous = this.#current ?? Promise.resolve(undefined);
    const run = previous.catch(() => undefined).then(() => this.#run(includeOpen, signal, retryAt));
    const tracked = run
      .then(
        (summary) => {
          this.#failedRuns = 0;
          return summary;
        },
        (err: unknown) => {
          this.#failedRuns++;
          throw err;
        },
      )
      .finally(() => {
        if (this.#current === tracked) this.#current = undefined;
        this.#armRetry();
      });
    this.#current = tracked;
    return tracked;
  }

  async #run(includeOpen: boolean, signal: AbortSignal, retryAt: RetryPolicy): Promise<RunSummary> {
    const { ledger, clock, logger } = this.#options;
    let sent = 0;
    let retrying = 0;
    let carried = 0;
    let failed = 0;
    for (const record of ledger.expiring(clock.now())) {
      if (record.maybeDelivered && clock.now() < windowEnd(record.timestampMs)) {
        // Never carried (AWS may have it), but a resend with its ClientToken is safe while AWS still takes the
        // record: AWS answers it idempotently if it had it, and records it if not. Try again before the end.
        if (record.nextAttemptMs >= windowEnd(record.timestampMs)) ledger.retryNow(record.id, clock.now());
        continue;
      }
      if (this.#expire(record, 'window closing before the record could be sent')) carried++;
      else failed++;
    }
    const sealedRecords = ledger.seal(clock.now(), includeOpen);
    for (const record of sealedRecords) {
      this.#count('sealed', record);
      logger.info(
        { dimension: record.dimension, hour: iso(record.hourStartMs), quantity: record.quantity },
        'hour sealed',
      );
    }
    ledger.prune(clock.now());
    for (const record of ledger.due(clock.now())) {
      if (signal.aborted) break;
      // In flight (durably) only once the request is on its way: a crash while credentials are still being
      // fetched leaves the record plainly pending, so its usage can still be carried if its window closes.
      const result = await this.#options.sender.send(record.request, {
        signal,
        onRequest: () => ledger.markInFlight(record.id),
      });
      switch (this.#settle(record, result, retryAt)) {
        case 'sent':
          sent++;
          break;
        case 'retrying':
          retrying++;
          break;
        case 'carried':
          carried++;
          break;
        case 'failed':
          failed++;
          break;
      }
    }
    return { sealed: sealedRecords.length, sent, retrying, carried, failed };
  }

  /** Applies a send result to the record's state in the ledger. */
  #settle(
    record: StoredRecord,
    result: SendResult,
    retryAt: RetryPolicy,
  ): 'sent' | 'retrying' | 'carried' | 'failed' {
    const { ledger, clock, logger } = this.#options;
    const fields = { dimension: record.dimension, hour: iso(record.hourStartMs), quantity: record.quantity };
    const nowMs = clock.now();
    switch (result.status) {
      case 'accepted':
        ledger.markSent(record.id, result.meteringRecordId, nowMs);
        this.#count('sent', record);
        logger.info({ ...fields, meteringRecordId: result.meteringRecordId }, 'usage metered');
        return 'sent';
      case 'retryable': {
        const nextMs = retryAt(record, nowMs);
        ledger.markRetry(record.id, formatError(result.error), nextMs, result.maybeDelivered);
        logger.warn(
          { ...fields, code: result.error.name, attempts: record.attempts + 1, retryAt: iso(nextMs) },
          'MeterUsage failed for now; will retry',
        );
        return 'retrying';
      }
      case 'expired':
        return this.#expire(record, formatError(result.error)) ? 'carried' : 'failed';
      case 'duplicate':
        ledger.markFailed(record.id, formatError(result.error), nowMs);
        this.#count('failed', record, result.error.name);
        logger.error(
          { ...fields, code: result.error.name, alert: true },
          'AWS already holds a different quantity for this dimension and hour; the record is kept as failed and never resent: reconcile by hand (see docs/operations.md)',
        );
        return 'failed';
      case 'rejected':
        ledger.markFailed(record.id, formatError(result.error), nowMs);
        this.#count('failed', record, result.error.name);
        logger.error(
          { ...fields, code: result.error.name, alert: true },
          'AWS refused the record; it is kept as failed: fix the cause named by the code (see docs/operations.md)',
        );
        return 'failed';
    }
  }

  /**
   * A record that can no longer be sent in its window is carried into the open hour, unless an earlier attempt
   * may have reached AWS: then carrying could bill the usage twice, so, once AWS's window has closed without
   * any answer to its resends, it is kept as failed for a human. Returns true when carried.
   */
  #expire(record: StoredRecord, reason: string): boolean {
    const { ledger, clock, logger } = this.#options;
    const fields = { dimension: record.dimension, hour: iso(record.hourStartMs), quantity: record.quantity };
    if (record.maybeDelivered) {
      ledger.markFailed(
        record.id,
        `window closed after an attempt that may have reached AWS (${reason})`,
        clock.now(),
        false,
      );
      this.#count('failed', record, CODES.sendAmbiguous);
      logger.error(
        { ...fields, code: CODES.sendAmbiguous, alert: true },
        'record window closed after an attempt that may have been recorded by AWS; not carried, to avoid billing twice: check the seller report',
      );
      return false;
    }
    const toHourMs = ledger.carry(record.id, clock.now(), reason);
    this.#count('carried', record);
    logger.warn(
      { ...fields, carriedTo: toHourMs === undefined ? undefined : iso(toHourMs), reason },
      'usage carried',
    );
    return true;
  }

  #count(event: 'sealed' | 'sent' | 'carried' | 'failed', record: StoredRecord, error = ''): void {
    const metrics = this.#options.metrics;
    if (metrics === undefined) return;
    const dimension = metrics.dimension(record.dimension);
    if (event === 'sealed') metrics.recordsSealed.inc({ dimension });
    else if (event === 'sent') metrics.recordsSent.inc({ dimension });
    else if (event === 'carried') metrics.recordsCarried.inc({ dimension });
    else metrics.recordsFailed.inc({ dimension, error });
  }

  /** Arms one timer for the earliest pending retry. */
  #armRetry(): void {
    this.#retryTimer?.();
    this.#retryTimer = undefined;
    if (this.#stopped) return;
    let nextMs: number | undefined;
    try {
      nextMs = this.#options.ledger.nextAttemptMs();
    } catch (err) {
      this.#options.logger.error({ err, code: codeOf(err) }, 'could not read the ledger to plan retries');
      return;
    }
    if (nextMs === undefined) return;
    // After a run that failed (the ledger could not be written), back off instead of retrying at once.
    if (this.#failedRuns > 0) {
      nextMs = Math.max(nextMs, this.#options.clock.now() + retryDelayMs(this.#failedRuns, this.#random));
    }
    this.#retryTimer = this.#options.clock.setTimer(nextMs, () => this.#trigger('retry'));
  }

  /**
   * Shutdown: stop scheduling, let the run in flight finish (aborted at `deadlineMs`), then seal everything
   * including the open hour and try every unsent record at once, whatever backoff it was waiting out: on ECS
   * and EKS the state volume usually dies with the task or pod, so these seconds are the last chance. Transient
   * failures are retried with {@link shutdownRetryDelayMs} until nothing is pending or `deadlineMs` is reached.
   * Resolves with the totals of the final runs.
   */
  async flush(deadlineMs: number): Promise<RunSummary> {
    await this.stop();
    const { clock, ledger } = this.#options;
    const controller = new AbortController();
    const cancelDeadline = clock.setTimer(deadlineMs, () => {
      controller.abort();
      this.#controller.abort();
    });
    const total = { sealed: 0, sent: 0, retrying: 0, carried: 0, failed: 0 };
    // Retries of each record within this flush, for its shutdown backoff.
    const retries = new Map<number, number>();
    const retryAt: RetryPolicy = (record, nowMs) => {
      const retry = (retries.get(record.id) ?? 0) + 1;
      retries.set(record.id, retry);
      return nowMs + shutdownRetryDelayMs(retry, deadlineMs - nowMs, this.#random);
    };
    try {
      // A run in flight (a scheduled tick) finishes first; then nothing unsent waits for its hourly backoff.
      await (this.#current ?? Promise.resolve()).catch(() => undefined);
      ledger.retryAllNow(clock.now());
      for (;;) {
        const summary = await this.#runSerialised(true, controller.signal, retryAt);
        total.sealed += summary.sealed;
        total.sent += summary.sent;
        total.carried += summary.carried;
        total.failed += summary.failed;
        const nextMs = ledger.nextAttemptMs();
        if (nextMs === undefined || nextMs >= deadlineMs || controller.signal.aborted) {
          // What is still waiting for a retry when the flush ends, whatever the last run found due.
          total.retrying = ledger.pending().length;
          return total;
        }
        await sleepUntil(clock, nextMs, controller.signal);
      }
    } finally {
      cancelDeadline();
    }
  }

  /** Stops the cron task and timers. Does not abort a run in flight. Idempotent. */
  async stop(): Promise<void> {
    this.#stopped = true;
    this.#jitterTimer?.();
    this.#retryTimer?.();
    if (this.#task !== undefined) {
      await this.#task.destroy();
      this.#task = undefined;
    }
  }
}

function formatError(error: SendError): string {
  return `${error.name}: ${error.message}`;
}

function iso(ms: number): string {
  return new Date(ms).toISOString();
}

function codeOf(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | undefined)?.code;
  return typeof code === 'string' ? code : undefined;
}
