/**
 * Limits of the idempotency-key store: how long a key is kept and how many are kept at most. In a module of
 * their own so that configuration can name the defaults without loading the ledger.
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
