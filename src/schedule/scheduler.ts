/**
 * The scheduler decides when the send loop runs: on every node-cron tick (METERING_SCHEDULE, UTC), which seals
 * the hour with each record first due at a random instant of the next METERING_SEND_JITTER_SECONDS, and
 * whenever the earliest record is due and the pacer lets it go (src/send/pacing.ts); one run at a time. At shutdown, {@link Scheduler.flush} runs until a deadline with every unsent record due at once. What a
 * run does (carry, seal, prune, send, settle) is the {@link Dispatcher}'s (./dispatcher.ts).
 */
import { createTask, type ScheduledTask } from 'node-cron';
import { sleepUntil, type CancelTimer, type Clock } from '../clock.js';
import { CODES, errorCode } from '../errors.js';
import type { SendLedger } from '../ledger/ledger.js';
import type { Logger } from '../log.js';
import type { SendPacer } from '../send/pacing.js';
import type { Sender } from '../send/sender.js';
import {
  Dispatcher,
  type Pacing,
  type PassOptions,
  type RetryPolicy,
  type RunSummary,
  type SendObserver,
} from './dispatcher.js';

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

/**
 * Share of a paced shutdown flush (one with a handoff directory) over which its sends are spread: a fleet
 * stopped at once sends over the first half of its shutdown time instead of in one burst, and the rest of it
 * leaves room for retries and the answers of late sends.
 */
export const FLUSH_SPREAD_SHARE = 0.5;

/** Share of the shutdown time kept for handing off what the flush could not send (at most 3 s). */
const HANDOFF_SHARE = 0.2;
const MAX_HANDOFF_RESERVE_MS = 3_000;

/** How a shutdown flush is run: {@link Scheduler.flush}'s deadline and options. */
export interface FlushPlan {
  readonly sendUntilMs: number;
  readonly options: { readonly abortAtMs: number; readonly paced: boolean };
}

/**
 * The shutdown flush that starts at `startMs` with `timeoutMs` to spend: until when it may start sends, and
 * when one still in flight is aborted. With a handoff directory for what is left, the time a handoff needs is
 * kept back, and a send started just before that is given most of the reserve to end with a known outcome (one
 * aborted after its connection was made may have been delivered, and could then only travel as uncertain);
 * the flush is paced, and a throttle ends it: the fleet is over the account's quota, and a sidecar that keeps
 * running sends what is handed off at a pace the quota allows.
 */
export function flushPlan(startMs: number, timeoutMs: number, handoff: boolean): FlushPlan {
  const deadlineMs = startMs + timeoutMs;
  if (!handoff) return { sendUntilMs: deadlineMs, options: { abortAtMs: deadlineMs, paced: false } };
  const reserveMs = Math.min(MAX_HANDOFF_RESERVE_MS, timeoutMs * HANDOFF_SHARE);
  return {
    sendUntilMs: deadlineMs - reserveMs,
    options: { abortAtMs: deadlineMs - reserveMs / 3, paced: true },
  };
}

/** Options of {@link Scheduler}. */
export interface SchedulerOptions {
  readonly ledger: SendLedger;
  readonly sender: Sender;
  readonly clock: Clock;
  readonly logger: Logger;
  /** node-cron expression; undefined runs no cron task (tests drive {@link Scheduler.runOnce}). */
  readonly schedule: string | undefined;
  readonly jitterSeconds: number;
  /** Random source in [0, 1) for the spread and backoff jitter; injectable for tests. */
  readonly random?: () => number;
  readonly metrics?: SendObserver;
  /** The process-wide pacer of sends (src/send/pacing.ts); none sends at once. */
  readonly pacer?: SendPacer;
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

/** Seals and sends on a schedule; see the module comment. */
export class Scheduler {
  readonly #options: SchedulerOptions;
  readonly #random: () => number;
  #task: ScheduledTask | undefined;
  #current: Promise<RunSummary> | undefined;
  #controller = new AbortController();
  #retryTimer: CancelTimer | undefined;
  #stopped = false;
  /** Epoch ms from which the pacer lets the next send go, after a run it ended early. */
  #resumeAtMs: number | undefined;
  /** Consecutive runs that failed; they space out the retries. */
  #failedRuns = 0;
  readonly #dispatcher: Dispatcher;

  constructor(options: SchedulerOptions) {
    this.#options = options;
    this.#random = options.random ?? Math.random;
    this.#dispatcher = new Dispatcher(options);
  }

  /** Starts the cron task and runs once at once, so records left by a previous run are sent without delay. */
  async start(): Promise<void> {
    await this.#options.ledger.retryAllNow(this.#options.clock.now());
    if (this.#options.schedule !== undefined) {
      this.#task = createTask(this.#options.schedule, () => this.tick(), {
        timezone: 'UTC',
        name: 'metering',
      });
      await this.#task.start();
    }
    this.#trigger('startup');
  }

  /**
   * A cron tick (the cron task calls it; `npm run bench:fleet` drives it on its own clock): a run that seals the
   * hour with each record first due at a random instant of the next METERING_SEND_JITTER_SECONDS, spreading a
   * fleet's sends under the account's 10/s quota. Queued behind a run in flight, never skipped.
   */
  tick(): void {
    if (this.#stopped) return;
    const run = this.runOnce({ includeOpen: false, spreadMs: this.#options.jitterSeconds * 1000 });
    this.#report(run, 'schedule');
  }

  /** Starts a run unless one is in flight. Never rejects: failures are logged once. */
  #trigger(reason: string): void {
    if (this.#stopped || this.#current !== undefined) return;
    this.#report(this.runOnce({ includeOpen: false }), reason);
  }

  /** Logs how a background run ended; a failure is logged once and counted. */
  #report(run: Promise<RunSummary>, reason: string): void {
    run.then(
      (summary) => this.#options.logger.debug({ reason, ...summary }, 'run finished'),
      (err: unknown) => {
        this.#options.metrics?.backgroundError(errorCode(err) ?? CODES.unexpected);
        this.#options.logger.error(
          { err, code: errorCode(err), reason },
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
  runOnce(options: { includeOpen: boolean; signal?: AbortSignal; spreadMs?: number }): Promise<RunSummary> {
    return this.#runSerialised({
      includeOpen: options.includeOpen,
      ...(options.spreadMs !== undefined ? { spreadMs: options.spreadMs } : {}),
      signal: options.signal ?? this.#controller.signal,
      retryAt: (record, nowMs) => nowMs + retryDelayMs(record.attempts + 1, this.#random),
    });
  }

  #runSerialised(pass: PassOptions): Promise<RunSummary> {
    const previous = this.#current ?? Promise.resolve(undefined);
    const run = previous.catch(() => undefined).then(() => this.#dispatcher.pass(pass));
    const tracked = run
      .then(
        (summary) => {
          this.#failedRuns = 0;
          this.#resumeAtMs = summary.resumeAtMs;
          return summary;
        },
        (err: unknown) => {
          this.#failedRuns++;
          throw err;
        },
      )
      .finally(() => {
        if (this.#current === tracked) this.#current = undefined;
        return this.#armRetry();
      });
    this.#current = tracked;
    return tracked;
  }

  /** Arms one timer for the earliest pending retry the pacer lets go. Never rejects. */
  async #armRetry(): Promise<void> {
    this.#cancelRetry();
    if (this.#stopped) return;
    let nextMs: number | undefined;
    try {
      nextMs = await this.#options.ledger.nextAttemptMs();
    } catch (err) {
      this.#options.logger.error({ err, code: errorCode(err) }, 'could not read the ledger to plan retries');
      return;
    }
    if (nextMs === undefined || this.#stopped) return;
    // The pacer held back the due records: run again when it lets the next send go.
    if (this.#resumeAtMs !== undefined) nextMs = Math.max(nextMs, this.#resumeAtMs);
    // After a run that failed (the ledger could not be written), back off instead of retrying at once.
    if (this.#failedRuns > 0) {
      nextMs = Math.max(nextMs, this.#options.clock.now() + retryDelayMs(this.#failedRuns, this.#random));
    }
    // Another run may have armed one meanwhile: keep a single timer.
    this.#cancelRetry();
    this.#retryTimer = this.#options.clock.setTimer(nextMs, () => this.#trigger('retry'));
  }

  #cancelRetry(): void {
    this.#retryTimer?.();
    this.#retryTimer = undefined;
  }

  /**
   * Shutdown: stop scheduling, let the run in flight finish (aborted at `deadlineMs`), then seal everything
   * including the open hour and try every unsent record at once, whatever backoff it was waiting out: on ECS
   * and EKS the state volume usually dies with the task or pod, so these seconds are the last chance. Transient
   * failures are retried with {@link shutdownRetryDelayMs} until nothing is pending or `deadlineMs` is reached.
   * No send starts after `deadlineMs`; one in flight then is aborted at `abortAtMs` (default `deadlineMs`), so
   * that a send close to the deadline can still end with a known outcome instead of a possible delivery. With
   * `paced` (there is a handoff directory for what is left), sends are spread over {@link FLUSH_SPREAD_SHARE} of
   * the time and follow the pacer until `deadlineMs`; the first ThrottlingException ends the flush, as does
   * `yieldWhen` answering true before a send (peers stopping with this sidecar were throttled and handed off).
   * Without it, these seconds are the usage's last chance and nothing holds a send back ({@link Pacing}).
   * Resolves with the totals of the final runs.
   */
  async flush(
    deadlineMs: number,
    options: {
      readonly abortAtMs?: number;
      readonly paced?: boolean;
      readonly yieldWhen?: () => Promise<boolean>;
    } = {},
  ): Promise<RunSummary> {
    const { abortAtMs = deadlineMs, paced = false, yieldWhen } = options;
    const startMs = this.#options.clock.now();
    const pacing: Pacing = paced
      ? {
          kind: 'wait',
          untilMs: deadlineMs,
          spreadUntilMs: startMs + (deadlineMs - startMs) * FLUSH_SPREAD_SHARE,
          ...(yieldWhen !== undefined ? { yieldWhen } : {}),
        }
      : { kind: 'ignore' };
    await this.stop();
    const { clock, ledger } = this.#options;
    const controller = new AbortController();
    const sends = new AbortController();
    const cancelDeadline = clock.setTimer(deadlineMs, () => controller.abort());
    const cancelAbort = clock.setTimer(Math.max(deadlineMs, abortAtMs), () => {
      sends.abort();
      this.#controller.abort();
    });
    const total = { sealed: 0, sent: 0, retrying: 0, carried: 0, failed: 0, paced: false };
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
      await ledger.retryAllNow(clock.now());
      for (;;) {
        const summary = await this.#runSerialised({
          includeOpen: true,
          signal: controller.signal,
          retryAt,
          sendSignal: sends.signal,
          pacing,
        });
        total.sealed += summary.sealed;
        total.sent += summary.sent;
        total.carried += summary.carried;
        total.failed += summary.failed;
        total.paced ||= summary.paced;
        const nextMs = await ledger.nextAttemptMs();
        if (summary.paced || nextMs === undefined || nextMs >= deadlineMs || controller.signal.aborted) {
          // What is still waiting for a retry when the flush ends, whatever the last run found due.
          total.retrying = await ledger.pendingCount();
          return total;
        }
        await sleepUntil(clock, nextMs, controller.signal);
      }
    } finally {
      cancelDeadline();
      cancelAbort();
    }
  }

  /** Stops the cron task and timers. Does not abort a run in flight. Idempotent. */
  async stop(): Promise<void> {
    this.#stopped = true;
    this.#retryTimer?.();
    if (this.#task !== undefined) {
      await this.#task.destroy();
      this.#task = undefined;
    }
  }
}
