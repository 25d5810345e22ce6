/**
 * What AWS does with a valid MeterUsage request given what it recorded before: the once-per-hour bucket,
 * the ClientToken fingerprint and the replay-or-reject decision. Pure functions; the emulator's service
 * state (`service.ts`) keeps the records they are given.
 *
 * References: `§` numbers are sections of docs/aws-rules.md, the AWS rules with their public sources.
 * @see docs/aws-rules.md §2.2 (ClientToken), §2.6 (DuplicateRequestException), §3.1 (once per hour)
 */
import type { ServiceError } from './awsJson.js';
import { HOUR_MS, describeInstant, tagSetKey } from './meterUsageRules.js';
import type { MeterUsageRequest } from './meterUsageRules.js';

/**
 * Start of the UTC hour containing `timestampMs` (the once-per-hour bucket).
 * @see docs/aws-rules.md §3.1
 */
export function hourStartMs(timestampMs: number): number {
  return Math.floor(timestampMs / HOUR_MS) * HOUR_MS;
}

/**
 * Canonical text of the parameters a `ClientToken` binds: product, exact timestamp, dimension, quantity
 * and allocations (in request order; tags order-insensitive). `DryRun` and the token itself are excluded.
 * Two requests with the same token must have equal fingerprints, else `IdempotencyConflictException`.
 * @see docs/aws-rules.md §2.2 (ClientToken)
 */
export function requestFingerprint(request: MeterUsageRequest): string {
  return JSON.stringify([
    request.productCode,
    request.timestampMs,
    request.dimension,
    request.quantity,
    request.allocations?.map((allocation) => [allocation.quantity, tagSetKey(allocation.tags)]) ?? null,
  ]);
}

/** What was already recorded under the request's `ClientToken` (account-wide). */
export interface TokenEntry {
  readonly fingerprint: string;
  readonly meteringRecordId: string;
}

/** What was already recorded for the request's (identity, product, dimension, hour). */
export interface HourEntry {
  readonly quantity: number;
  readonly meteringRecordId: string;
}

/** Outcome of {@link decideMeterUsage}. */
export type MeterUsageDecision =
  | { readonly kind: 'record' }
  | { readonly kind: 'replay'; readonly meteringRecordId: string }
  | { readonly kind: 'reject'; readonly error: ServiceError };

/**
 * Applies the idempotency rules to a valid request, given what was recorded before:
 *
 * - `byToken` (same `ClientToken`, any identity): equal fingerprint -> `replay` its record id;
 *   different -> `IdempotencyConflictException`. The token check comes first.
 * - `byHour` (same identity, product, dimension and UTC hour): same quantity -> `replay` its record id
 *   (allocation differences are ignored); different quantity -> `DuplicateRequestException`.
 * - neither -> `record`.
 *
 * `replay` and `record` mean success; the caller records only on `record` and never for a DryRun.
 * @see docs/aws-rules.md §3.1, §2.2 (ClientToken), §2.6 (DuplicateRequestException)
 */
export function decideMeterUsage(
  request: MeterUsageRequest,
  byToken: TokenEntry | undefined,
  byHour: HourEntry | undefined,
): MeterUsageDecision {
  if (byToken !== undefined) {
    if (byToken.fingerprint === requestFingerprint(request)) {
      return { kind: 'replay', meteringRecordId: byToken.meteringRecordId };
    }
    return {
      kind: 'reject',
      error: {
        name: 'IdempotencyConflictException',
        message: `ClientToken ${JSON.stringify(request.clientToken)} was already used with different parameters; use a new token for a new request.`,
      },
    };
  }
  if (byHour !== undefined) {
    if (byHour.quantity === request.quantity)
      return { kind: 'replay', meteringRecordId: byHour.meteringRecordId };
    return {
      kind: 'reject',
      error: {
        name: 'DuplicateRequestException',
        message: `Usage for dimension ${JSON.stringify(request.dimension)} in the hour starting ${describeInstant(hourStartMs(request.timestampMs))} was already recorded with quantity ${byHour.quantity}; it cannot be changed to ${request.quantity}.`,
      },
    };
  }
  return { kind: 'record' };
}
