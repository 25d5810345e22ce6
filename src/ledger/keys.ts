/**
 * Limits of what the ledger keeps: how long an idempotency key is kept and how many at most, and how long a
 * settled record is kept. In a module of their own so that configuration can name the defaults without loading
 * the ledger.
 */
import { HOUR_MS } from '../clock.js';

/** Idempotency keys are kept 24 hours (docs/api.md), aged by the monotonic clock (see `SqliteLedger.prune`). */
export const IDEMPOTENCY_TTL_MS = 24 * HOUR_MS;

/**
 * Most idempotency keys kept by default. A key takes about 108 bytes on disk with a 36-character UUID and up
 * to {@link IDEMPOTENCY_KEY_MAX_BYTES} with the longest allowed (256 characters), so the default bound needs
 * at most 128 MB, half the Helm chart's default 256 Mi state volume (docs/configuration.md).
 */
export const DEFAULT_IDEMPOTENCY_KEYS_MAX = 200_000;

/** Disk taken by one idempotency key of the longest allowed length, as measured (rounded up). */
export const IDEMPOTENCY_KEY_MAX_BYTES = 640;

/**
 * Settled records (sent or carried) are kept this long by default (METERING_RETENTION_DAYS), for the
 * reconciliation export: a whole billing month of 31 days, plus AWS's reporting delay (the daily usage data feed
 * is refreshed every 24 hours and a month's usage is final only after it closes), with two weeks to spare.
 * Failed records are kept until a human has dealt with them.
 */
export const DEFAULT_RETENTION_DAYS = 45;

/** {@link DEFAULT_RETENTION_DAYS} in milliseconds. */
export const DEFAULT_RETENTION_MS = DEFAULT_RETENTION_DAYS * 24 * HOUR_MS;
