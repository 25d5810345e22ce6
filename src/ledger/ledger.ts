/**
 * The ledger as the rest of the sidecar sees it: the records and reports it holds, and what it answers. The
 * SQLite implementation is ./sqliteLedger.ts, its schema and migrations ./schema.ts, the hour rules it applies
 * ./hours.ts. The ledger sits below intake and sending: it imports neither, and answers in its own vocabulary.
 */
import type { Clock } from '../clock.js';
import type { MeterUsageRequest } from './hours.js';

/** One validated usage report, as intake hands it to the ledger. */
export interface UsageReport {
  readonly dimension: string;
  readonly quantity: number;
  /** Canonical text of the tag set (`canonicalTags` in ./hours.ts). */
  readonly tagsKey: string;
  /** Optional idempotency key: a repeat within 24 hours is acknowledged and not counted again. */
  readonly id: string | undefined;
}

/**
 * A batch the ledger refused because it would break a limit of AWS's or of the ledger's own; nothing of it
 * was stored. `index` names the report at fault in a batch.
 */
export interface LedgerRejection {
  readonly kind: 'rejection';
  readonly code: 'TooManyTagSets' | 'InvalidTags' | 'InvalidQuantity';
  readonly message: string;
  readonly index?: number;
}

/** Builds a {@link LedgerRejection}. */
export function ledgerRejection(
  code: LedgerRejection['code'],
  message: string,
  index?: number,
): LedgerRejection {
  return index === undefined
    ? { kind: 'rejection', code, message }
    : { kind: 'rejection', code, message, index };
}

/** Where a sealed record stands: `pending → sent`, or `carried`, or `failed` with the AWS error kept. */
export type RecordStatus = 'pending' | 'sent' | 'carried' | 'failed';

/** A sealed record as stored. */
export interface StoredRecord {
  readonly id: number;
  readonly dimension: string;
  readonly hourStartMs: number;
  readonly quantity: number;
  readonly timestampMs: number;
  readonly clientToken: string;
  readonly request: MeterUsageRequest;
  readonly status: RecordStatus;
  readonly attempts: number;
  readonly nextAttemptMs: number;
  /** An earlier attempt may have reached AWS (timeout or reset after sending): see {@link SqliteLedger.carry}. */
  readonly maybeDelivered: boolean;
  readonly lastError: string | undefined;
  readonly meteringRecordId: string | undefined;
}

/** Answer to an accepted `record()`. */
export interface RecordResult {
  readonly kind: 'recorded';
  readonly accepted: number;
  readonly duplicates: number;
  /** Quantity counted per dimension (duplicates excluded). */
  readonly counted: ReadonlyMap<string, number>;
}

/** Usage of one dimension in an hour not yet sealed. */
export interface OpenUsage {
  readonly dimension: string;
  readonly hourStartMs: number;
  readonly quantity: number;
  readonly tagSets: number;
}

/** A summary of the ledger for `/v1/status` and the exit code at shutdown. */
export interface LedgerStatus {
  readonly ledgerId: string;
  readonly open: readonly OpenUsage[];
  readonly records: Readonly<Record<RecordStatus, number>>;
  /** Seconds since the Timestamp of the oldest pending record; null when nothing is pending. */
  readonly oldestUnsentAgeSeconds: number | null;
  /** Quantity of pending records per dimension. */
  readonly pendingByDimension: ReadonlyMap<string, number>;
  readonly failed: readonly {
    dimension: string;
    hourStartMs: number;
    quantity: number;
    error: string | undefined;
  }[];
}

/** Options of opening a ledger (`SqliteLedger.open`). */
export interface LedgerOptions {
  readonly stateDir: string;
  readonly productCode: string;
  readonly dryRun: boolean;
  readonly clock: Clock;
  /** Most idempotency keys kept; default `DEFAULT_IDEMPOTENCY_KEYS_MAX` (./keys.ts). */
  readonly idempotencyKeysMax?: number;
  /**
   * Told after a commit that forgot keys to stay within the bound: how many, and the arrival time of the
   * oldest key still kept (the shorter window in which a resend is still recognised).
   */
  readonly onKeysEvicted?: (evicted: number, oldestKeptAtMs: number | undefined) => void;
}
