/**
 * Pacing under the account's shared quota. Every task or pod of a buyer's fleet shares AWS's MeterUsage quota
 * of 10 calls per second per account and Region (docs/aws-rules.md §3.5), and no sidecar knows how many others
 * there are. {@link SendPacer} is the one process-wide limiter the send loop follows: it stays out of the way
 * until AWS throttles, then slows down and recovers on success, with the AWS SDK's own adaptive rate limiter
 * (`DefaultRateLimiter`, the CUBIC limiter behind the SDK's `adaptive` retry mode) doing the rate arithmetic.
 *
 * The SDK's limiter reads `Date.now()` and sleeps with `setTimeout`; the sidecar's time is injected (tests and
 * `npm run bench:fleet` run hours of a fleet on a manual clock). So its time source (the one method replaced)
 * is the injected clock, and the limiter is only asked for a token once one is there: its own wait never runs.
 * The waiting is the send loop's, on the injected clock (src/schedule/dispatcher.ts).
 */
import { DefaultRateLimiter } from '@smithy/core/retry';
import type { Clock } from '../clock.js';

/**
 * How hard the limiter slows down on a throttle: the new rate is this share of the rate measured before it.
 * The SDK's 0.7 suits one client that owns its quota; a sidecar shares it with every pod of the fleet.
 */
export const PACING_BETA = 0.5;

/**
 * Slowest the limiter goes after throttles, in calls per second (one call every 50 s; the SDK's is 0.5). A
 * sidecar sends a few records an hour, so its measured rate is near zero and the limiter sits at this floor
 * after a throttle; it is low enough that thousands of throttled pods together stay near the account's 10/s
 * (`npm run bench:fleet`), and each success may double the rate again.
 */
export const PACING_MIN_RATE = 0.02;

/** The limiter's state the pacer reads to plan waits on the injected clock instead of inside the limiter. */
interface LimiterState {
  readonly enabled: boolean;
  readonly availableTokens: number;
  readonly fillRate: number;
  refillTokenBucket(): void;
}

/** The process-wide adaptive pacer of MeterUsage sends; see the module comment. */
export class SendPacer {
  readonly #clock: Clock;
  readonly #random: () => number;
  readonly #limiter: DefaultRateLimiter;
  readonly #state: LimiterState;
  #throttles = 0;
  /** Stretch of every wait since the last throttle, in [1, 1.5): see {@link readyAtMs}. */
  #stretch = 1;

  constructor(clock: Clock, random: () => number = Math.random) {
    this.#clock = clock;
    this.#random = random;
    const Clocked = class extends DefaultRateLimiter {};
    Object.defineProperty(Clocked.prototype, 'getCurrentTimeInSeconds', {
      // Offset by a second: the limiter takes a zero timestamp for "not set yet".
      value: () => 1 + clock.monotonicMs() / 1000,
    });
    this.#limiter = new Clocked({ beta: PACING_BETA, minFillRate: PACING_MIN_RATE });
    this.#state = this.#limiter as unknown as LimiterState;
    // Start the bucket's clock, so that it holds its one token by the time of a first throttle, as it would in
    // a client that has been answered before: the send after a throttle goes at once, the one after waits.
    this.#state.refillTokenBucket();
  }

  /**
   * Epoch ms on the clock from which a send may start: now, or later while the limiter's bucket refills
   * after throttles. The sidecars of a fleet were throttled together, so each stretches its waits by its own
   * random share (drawn at every throttle) instead of all coming back in the same instant; the time only ever
   * comes later than the limiter's own.
   */
  readyAtMs(): number {
    const nowMs = this.#clock.now();
    const missing = this.#missing();
    if (missing === 0) return nowMs;
    // A millisecond more than the arithmetic says: the limiter's seconds are floating point (and a real timer
    // may fire early, which {@link take} answers with `false`).
    return nowMs + Math.ceil((missing / this.#state.fillRate) * 1000 * this.#stretch) + 1;
  }

  /**
   * Epoch ms before which a record AWS just throttled is not tried again: {@link readyAtMs}, and at least one
   * token's time at the slowed rate from now, since other records may take the token that is there now.
   */
  throttledRetryAtMs(): number {
    const nowMs = this.#clock.now();
    if (!this.#state.enabled) return nowMs;
    return Math.max(this.readyAtMs(), nowMs + Math.ceil((1000 / this.#state.fillRate) * this.#stretch));
  }

  /**
   * Takes the token for a send, once {@link readyAtMs} is reached. `false`, taking nothing, when the token is not
   * there yet (a timer that fired a little early): wait for {@link readyAtMs} again.
   */
  async take(): Promise<boolean> {
    if (this.#missing() > 0) return false;
    // A token is there: the limiter returns it without waiting.
    await this.#limiter.getSendToken();
    return true;
  }

  /** How much of a token the limiter lacks now (0 when one is there or it is not limiting). */
  #missing(): number {
    if (!this.#state.enabled) return 0;
    this.#state.refillTokenBucket();
    return Math.max(0, 1 - this.#state.availableTokens);
  }

  /** Tells the limiter how a send that AWS answered ended: throttled, or accepted. */
  answered(throttled: boolean): void {
    if (throttled) {
      this.#throttles++;
      this.#stretch = 1 + this.#random() / 2;
    }
    this.#limiter.updateClientSendingRate(throttled ? { errorType: 'THROTTLING' } : {});
  }

  /** Throttled answers seen so far. */
  get throttles(): number {
    return this.#throttles;
  }

  /** Calls per second the limiter allows now; `undefined` until the first throttle (no limit). */
  get ratePerSecond(): number | undefined {
    return this.#state.enabled ? this.#state.fillRate : undefined;
  }
}
