/**
 * What an operator is told when the idempotency-key store reaches METERING_IDEMPOTENCY_KEYS_MAX and forgets its
 * oldest keys: a counter on every eviction, and a warning at most once an hour saying how far back a resend is
 * still recognised (docs/operations.md, "Runbook: idempotency keys evicted").
 */
import type { Clock } from '../clock.js';
import { CODES } from '../errors.js';
import type { Logger } from '../log.js';
import type { Metrics } from './metrics.js';

/** Shortest interval between two warnings that the idempotency-key store is full. */
const WARNING_INTERVAL_MS = 3_600_000;

/** The ledger's `onKeysEvicted` callback for a store bounded at `keysMax`. */
export function keyEvictionReporter(options: {
  metrics: Metrics;
  logger: Logger;
  clock: Clock;
  keysMax: number;
}): (evicted: number, oldestKeptAtMs: number | undefined) => void {
  const { metrics, logger, clock, keysMax } = options;
  let warnedAtMs = -Infinity;
  return (evicted, oldestKeptAtMs) => {
    metrics.idempotencyKeysEvicted.inc(evicted);
    const atMs = clock.monotonicMs();
    if (atMs - warnedAtMs < WARNING_INTERVAL_MS) return;
    warnedAtMs = atMs;
    const windowMinutes =
      oldestKeptAtMs === undefined ? 0 : Math.max(0, Math.floor((clock.now() - oldestKeptAtMs) / 60_000));
    logger.warn(
      { code: CODES.idempotencyKeysFull, evicted, keysMax, windowMinutes },
      `the idempotency-key store is full (METERING_IDEMPOTENCY_KEYS_MAX=${keysMax}); the oldest keys are forgotten, so a resend is recognised only within the last ${windowMinutes} minutes instead of 24 hours: raise the bound (and the state volume), or send fewer keyed reports (batch them)`,
    );
  };
}
