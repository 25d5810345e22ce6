/**
 * The send loop's one pass and its rules: what is carried, sealed, pruned and sent, and what each send outcome
 * does to the record (sent, retried, carried, failed). The {@link Scheduler} (./scheduler.ts) decides when a pass
 * runs; this module decides what it does.
 */
import { sleepUntil, type Clock } from '../clock.js';
import { CODES, errorCode } from '../errors.js';
import { windowEnd } from '../ledger/hours.js';
import type { SendLedger, StoredRecord } from '../ledger/ledger.js';
import type { Logger } from '../log.js';
import { isThrottling, type SendError, type SendResult } from '../send/awsErrors.js';
import type { SendPacer } from '../send/pacing.js';
import type { Sender } from '../send/sender.js';

/** What one pass did. */
export interface RunSummary {
  readonly sealed: number;
  readonly sent: number;
  readonly retrying: number;
  readonly carried: number;
  readonly failed: number;
  /**
   * The pass stopped sending before its last due record because of the account's quota: the pacer holds the
   * next send back (until `resumeAtMs`), or AWS throttled a pass that {@link Pacing} `wait` ends there. What was
   * not tried stays due.
   */
  readonly paced: boolean;
  /** With `paced` by the pacer: the epoch ms from which it lets the next send go. */
  readonly resumeAtMs?: number;
}

/**
 * How a pass follows the process-wide pacer (src/send/pacing.ts):
 * - `defer` (the hourly sends): a send the pacer holds back ends the pass; the scheduler runs again when the
 *   pacer lets it go.
 * - `wait` (the shutdown flush with a handoff directory): the due records are spread, each at a random instant
 *   of its own share of the time until `spreadUntilMs` (a fleet stopped at once does not send in one burst, nor
 *   does one sidecar); the pacer is waited for until `untilMs`; the first ThrottlingException ends the pass: the
 *   fleet has used up the account's quota, and what is left is handed off to a sidecar that can send it at a
 *   pace the quota allows. So a stopping sidecar makes at most one throttled call, and none once `yieldWhen`
 *   says a peer stopping with it was throttled and handed off.
 * - `ignore` (the shutdown flush without one): these seconds are the usage's last chance, so nothing holds a
 *   send back; the pacer is still told the answers.
 */
export type Pacing =
  | { readonly kind: 'defer' }
  | {
      readonly kind: 'wait';
      readonly untilMs: number;
      readonly spreadUntilMs: number;
      /** Asked before each send: true ends the pass as a throttle would (peers ran out of quota). */
      readonly yieldWhen?: () => Promise<boolean>;
    }
  | { readonly kind: 'ignore' };

/** What one {@link Dispatcher.pass} does. */
export interface PassOptions {
  /** Seal the open hour too (the shutdown flush). */
  readonly includeOpen: boolean;
  /** No send starts once it aborts. */
  readonly signal: AbortSignal;
  readonly retryAt: RetryPolicy;
  /** Aborts a send in flight; by default `signal`. */
  readonly sendSignal?: AbortSignal;
  /** By default `defer`. */
  readonly pacing?: Pacing;
  /**
   * The hourly spread (METERING_SEND_JITTER_SECONDS, in ms): each record this pass seals is first due at its
   * own random instant within it, so that a fleet's records reach AWS spread over that time, not in bursts.
   */
  readonly spreadMs?: number;
}

/** When a record that failed for now is tried again: the hourly backoff, or the shutdown flush's. */
export type RetryPolicy = (record: StoredRecord, nowMs: number) => number;

/** What happens to a record in a pass. */
export type RecordEvent = 'sealed' | 'sent' | 'carried' | 'failed';

/** What sending reports, for metrics (the sidecar's `Metrics` implements it). */
export interface SendObserver {
  /** A record was sealed, sent, carried or failed; `error` names the AWS error of a failed one. */
  recordEvent(event: RecordEvent, dimension: string, error: string): void;
  /** A send pass failed as a whole (the ledger could not be read or written), with the error's code. */
  backgroundError(code: string): void;
  /** The pacer's rate after an answer: calls per second, `undefined` while no throttle has slowed it. */
  pace?(ratePerSecond: number | undefined): void;
}

/** Options of {@link Dispatcher}. */
export interface DispatcherOptions {
  readonly ledger: SendLedger;
  readonly sender: Sender;
  readonly clock: Clock;
  readonly logger: Logger;
  readonly metrics?: SendObserver;
  /** The process-wide pacer of sends under the account's quota; none sends at once. */
  readonly pacer?: SendPacer;
  /** Random source in [0, 1) for the hourly spread and that of {@link Pacing} `wait`. */
  readonly random?: () => number;
}

/** Runs passes of the send loop; see the module comment. */
export class Dispatcher {
  readonly #options: DispatcherOptions;

  constructor(options: DispatcherOptions) {
    this.#options = options;
  }

  /**
   * One pass: carries the records whose window is closing (resending the possibly delivered ones until it
   * closes), seals what may be sealed (the open hour too with `includeOpen`), prunes, then sends every due
   * record, starting none once `signal` is aborted or the pacer says no (see {@link PassOptions}), and settles
   * each outcome. Rejects only when the ledger cannot be written.
   */
  async pass(options: PassOptions): Promise<RunSummary> {
    const { includeOpen, signal, retryAt, sendSignal = signal, pacing = { kind: 'defer' } } = options;
    const spreadMs = includeOpen ? 0 : (options.spreadMs ?? 0);
    const random = this.#options.random ?? Math.random;
    const { ledger, clock, logger, pacer } = this.#options;
    const counts = { sent: 0, retrying: 0, carried: 0, failed: 0 };
    for (const record of await ledger.expiring(clock.now())) {
      if (record.maybeDelivered && clock.now() < windowEnd(record.timestampMs)) {
        // Never carried (AWS may have it), but a resend with its ClientToken is safe while AWS still takes the
        // record: AWS answers it idempotently if it had it, and records it if not. Try again before the end.
        if (record.nextAttemptMs >= windowEnd(record.timestampMs)) await ledger.dueAt(record.id, clock.now());
        continue;
      }
      if (await this.#expire(record, 'window closing before the record could be sent')) counts.carried++;
      else counts.failed++;
    }
    // Sealing goes one (dimension, hour) at a time, so that with nothing spread the first record goes out at once
    // and each later one is sealed while the record before it is on its way; every pass still seals all it may
    // before it returns. A spread pass (`wait`) shares its time among all the due records: it seals them first.
    const sealClockMs = clock.now();
    const due = await ledger.due(sealClockMs);
    let sealed = 0;
    let sealing = true;
    const sealNext = async (limit = 1): Promise<void> => {
      const records = await ledger.seal(sealClockMs, includeOpen, limit);
      if (records.length < limit) sealing = false;
      for (const record of records) {
        sealed++;
        this.#count('sealed', record);
        // A crash before this leaves the record due at once: sent at the next start, as any left behind.
        const sendAtMs = clock.now() + Math.floor(random() * spreadMs);
        if (sendAtMs > clock.now()) await ledger.dueAt(record.id, sendAtMs);
        else due.push(record);
        logger.info(
          {
            dimension: record.dimension,
            hour: iso(record.hourStartMs),
            quantity: record.quantity,
            sendAt: iso(sendAtMs),
          },
          'hour sealed',
        );
      }
    };
    // What is left in one transaction: nothing is sent meanwhile.
    const sealAll = async (): Promise<void> => {
      if (sealing) await sealNext(Infinity);
    };
    const summary = async (paced: boolean, resumeAtMs?: number): Promise<RunSummary> => {
      // A pass that was stopped (the shutdown's deadline) leaves the rest as it is: usage not yet sealed is as
      // durable as a record, and is sealed by the next pass or handed off.
      if (!signal.aborted) await sealAll();
      await ledger.prune(clock.now());
      return {
        sealed,
        ...counts,
        paced,
        ...(resumeAtMs !== undefined ? { resumeAtMs } : {}),
      };
    };
    if (pacing.kind === 'wait' && !signal.aborted) await sealAll();
    const spreadFromMs = clock.now();
    const spreadCount = due.length;
    for (let index = 0; ; index++) {
      if (signal.aborted) break;
      while (index === due.length && sealing) await sealNext();
      const record = due[index];
      if (record === undefined) break;
      if (signal.aborted) break; // stopped while the record was sealed: no send starts
      if (pacing.kind === 'wait' && pacing.spreadUntilMs > spreadFromMs) {
        const shareMs = (pacing.spreadUntilMs - spreadFromMs) / spreadCount;
        await sleepUntil(clock, Math.round(spreadFromMs + (index + random()) * shareMs), signal);
        if (signal.aborted) break;
      }
      if (pacing.kind === 'wait' && pacing.yieldWhen !== undefined && (await pacing.yieldWhen())) {
        return summary(true);
      }
      if (pacer !== undefined && pacing.kind !== 'ignore') {
        // A timer may fire a little before the token is whole: then look again.
        while (!(await pacer.take())) {
          const readyAtMs = Math.max(pacer.readyAtMs(), clock.now() + 1);
          if (pacing.kind === 'defer' || readyAtMs > pacing.untilMs) {
            return summary(true, readyAtMs);
          }
          await sleepUntil(clock, readyAtMs, signal);
          if (signal.aborted) return summary(false);
        }
      }
      // In flight (durably) only once the request is on its way: a crash while credentials are still being
      // fetched leaves the record plainly pending, so its usage can still be carried if its window closes. Once
      // it is, the next (dimension, hour) is sealed while the answer is awaited; a seal that fails fails the pass
      // once the send is settled.
      let sealedMeanwhile: Promise<{ error: unknown } | undefined> | undefined;
      let sending = true;
      let result: SendResult;
      try {
        result = await this.#options.sender.send(record.request, {
          signal: sendSignal,
          onRequest: () => ledger.markInFlight(record.id),
          onSent: () => {
            if (!sending || !sealing || sealedMeanwhile !== undefined) return;
            sealedMeanwhile = sealNext().then(
              () => undefined,
              (error: unknown) => ({ error }),
            );
          },
        });
      } finally {
        sending = false;
      }
      const throttled = isThrottling(result);
      if (pacer !== undefined && (throttled || result.status === 'accepted')) {
        pacer.answered(throttled);
        this.#options.metrics?.pace?.(pacer.ratePerSecond);
      }
      const followed = pacing.kind === 'ignore' ? undefined : pacer;
      // The seal started meanwhile ends before the pass goes on or fails, whichever way the record settled.
      const settled = await this.#settle(record, result, retryAt, followed).then(
        (kind) => ({ kind }),
        (error: unknown) => ({ error }),
      );
      const sealFailure = await sealedMeanwhile;
      if ('error' in settled) {
        if (sealFailure !== undefined) {
          logger.error(
            { err: sealFailure.error, code: errorCode(sealFailure.error) },
            'the next seal failed too',
          );
        }
        throw settled.error;
      }
      counts[settled.kind]++;
      if (sealFailure !== undefined) throw sealFailure.error;
      if (throttled && pacing.kind === 'wait') return summary(true);
    }
    return summary(false);
  }

  /** Applies a send result to the record's state in the ledger; one to retry also waits for `pacer`. */
  async #settle(
    record: StoredRecord,
    result: SendResult,
    retryAt: RetryPolicy,
    pacer: SendPacer | undefined,
  ): Promise<'sent' | 'retrying' | 'carried' | 'failed'> {
    const { ledger, clock, logger } = this.#options;
    const fields = { dimension: record.dimension, hour: iso(record.hourStartMs), quantity: record.quantity };
    const nowMs = clock.now();
    switch (result.status) {
      case 'accepted':
        await ledger.markSent(record.id, result.meteringRecordId, nowMs);
        this.#count('sent', record);
        logger.info({ ...fields, meteringRecordId: result.meteringRecordId }, 'usage metered');
        return 'sent';
      case 'retryable': {
        // The record waits for the pacer too, so that it is not due before a send may start.
        const backoffMs = retryAt(record, nowMs);
        const pacedMs = isThrottling(result) ? pacer?.throttledRetryAtMs() : pacer?.readyAtMs();
        const nextMs = Math.max(backoffMs, pacedMs ?? backoffMs);
        await ledger.markRetry(record.id, formatError(result.error), nextMs, result.maybeDelivered);
        logger.warn(
          { ...fields, code: result.error.name, attempts: record.attempts + 1, retryAt: iso(nextMs) },
          'MeterUsage failed for now; will retry',
        );
        return 'retrying';
      }
      case 'expired':
        return (await this.#expire(record, formatError(result.error))) ? 'carried' : 'failed';
      case 'duplicate':
        await ledger.markFailed(record.id, formatError(result.error), nowMs);
        this.#count('failed', record, result.error.name);
        logger.error(
          { ...fields, code: result.error.name, alert: true },
          'AWS already holds a different quantity for this dimension and hour; the record is kept as failed and never resent: reconcile by hand (see docs/operations.md)',
        );
        return 'failed';
      case 'rejected':
        await ledger.markFailed(record.id, formatError(result.error), nowMs);
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
  async #expire(record: StoredRecord, reason: string): Promise<boolean> {
    const { ledger, clock, logger } = this.#options;
    const fields = { dimension: record.dimension, hour: iso(record.hourStartMs), quantity: record.quantity };
    if (record.maybeDelivered) {
      await ledger.markFailed(
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
    const toHourMs = await ledger.carry(record.id, clock.now(), reason);
    this.#count('carried', record);
    logger.warn(
      { ...fields, carriedTo: toHourMs === undefined ? undefined : iso(toHourMs), reason },
      'usage carried',
    );
    return true;
  }

  #count(event: RecordEvent, record: StoredRecord, error = ''): void {
    this.#options.metrics?.recordEvent(event, record.dimension, error);
  }
}

function formatError(error: SendError): string {
  return `${error.name}: ${error.message}`;
}

function iso(ms: number): string {
  return new Date(ms).toISOString();
}
