/**
 * Time, injected. Everything that decides which hour usage belongs to, when an hour may be sealed or when a
 * record must be carried reads time through a {@link Clock}, so tests can move it to absolute instants.
 */

/** Cancels a timer created by {@link Clock.setTimer}. Idempotent. */
export type CancelTimer = () => void;

/** A source of wall-clock time and timers at absolute instants (epoch milliseconds, UTC). */
export interface Clock {
  /** Current time in epoch milliseconds. */
  now(): number;
  /**
   * Milliseconds elapsed on a clock that never jumps (an arbitrary origin): for durations that a wall clock
   * stepping back or forward must not shorten or stretch, such as rate limits and how fast stored keys age.
   */
  monotonicMs(): number;
  /** Calls `fn` once at or after `atMs`. A pending timer keeps the process alive, as a retry must happen. */
  setTimer(atMs: number, fn: () => void): CancelTimer;
}

/** Longest delay Node.js timers accept (2^31-1 ms, about 24.8 days). */
const MAX_TIMEOUT_MS = 2_147_483_647;

/** The real clock. */
export const systemClock: Clock = {
  now: () => Date.now(),
  monotonicMs: () => performance.now(),
  setTimer(atMs, fn) {
    let handle: NodeJS.Timeout | undefined;
    const arm = (): void => {
      const delayMs = Math.max(0, atMs - Date.now());
      handle = setTimeout(delayMs > MAX_TIMEOUT_MS ? arm : fn, Math.min(delayMs, MAX_TIMEOUT_MS));
    };
    arm();
    return () => clearTimeout(handle);
  },
};

/** One hour in milliseconds. */
export const HOUR_MS = 3_600_000;

/** Start of the UTC hour that contains `ms`. */
export function hourStart(ms: number): number {
  return Math.floor(ms / HOUR_MS) * HOUR_MS;
}

/** Resolves at `atMs` on `clock`, or as soon as `signal` aborts (at once if it already has). Never rejects. */
export function sleepUntil(clock: Clock, atMs: number, signal?: AbortSignal): Promise<void> {
  return new Promise<void>((resolve) => {
    if (signal?.aborted) return resolve();
    const onAbort = (): void => {
      cancel();
      resolve();
    };
    const cancel = clock.setTimer(atMs, () => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    });
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}
