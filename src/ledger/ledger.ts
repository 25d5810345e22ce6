/**
 * The ledger as the rest of the sidecar sees it: the records and reports it holds, and what it answers. The
 * SQLite implementation is ./sqliteLedger.ts, its schema and migrations ./schema.ts, the hour rules it applies
 * ./hours.ts. The ledger sits below intake and sending: it imports neither, and answers in its own vocabulary.
 */
import type { Clock } from '../clock.js';
import type { StorageUnavailableError } from '../errors.js';
import type { MeterUsageRequest } from './hours.js';
import type { HandoffEntry, HandoffSnapshot, HandoffSummary } from './handoffStore.js';
import type { UsageBatch } from './usageBatch.js';
import type { SyncFile } from './walSync.js';

/** One validated usage report; intake hands the ledger a batch of them as a {@link UsageBatch}. */
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

/** A report cancelled before its hour was sealed (`DELETE /v1/usage/{id}`). */
export interface Cancellation {
  readonly id: string;
  readonly dimension: string;
  /** The hour whose bucket the report had gone into. */
  readonly hourStartMs: number;
  readonly tagsKey: string;
  /** As reported: in the dimension's fine unit when it has a divisor (`divisor` > 1). */
  readonly quantity: number;
  readonly divisor: number;
  readonly reportedAtMs: number;
  readonly cancelledAtMs: number;
}

/**
 * Answer to `cancel()`: the cancellation (`repeat` when it was cancelled before, which changed nothing now), or
 * why it was refused, which changed nothing either.
 */
export type CancelResult =
  | { readonly kind: 'cancelled'; readonly repeat: boolean; readonly cancellation: Cancellation }
  | {
      readonly kind: 'refused';
      /**
       * `UnknownUsageId`: no report with this id is kept (ids are kept 24 hours). `HourSealed`: its hour is sealed
       * into a record, which never changes. `NotCancellable`: the report cannot be taken back (stored before this
       * version kept what each id counted, its unit changed, or its usage left the ledger in a handoff).
       */
      readonly code: 'UnknownUsageId' | 'HourSealed' | 'NotCancellable';
      readonly message: string;
    };

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
  /** Handoffs written and adopted, and the uncertain records adopted handoffs brought. */
  readonly handoffs: HandoffSummary;
  /** Reports cancelled, per (dimension, hour), for the hours of the last 24 hours. */
  readonly cancellations: readonly {
    dimension: string;
    hourStartMs: number;
    count: number;
    quantity: number;
  }[];
  /**
   * Fine-unit usage below one billed unit, per (dimension, divisor), carried into later hours; what is left of it
   * when the sidecar stops for good is never billed (docs/metering.md, "Unit scaling").
   */
  readonly remainders: readonly { dimension: string; divisor: number; quantity: number; tagSets: number }[];
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
  /**
   * Zero reporting (METERING_ZERO_USAGE): a record of quantity 0 for each of `dimensions` in every hour without
   * usage from `fromMs` (when this sidecar started) on. Undefined: hours without usage send nothing.
   */
  readonly zeroUsage?: {
    readonly dimensions: readonly string[];
    /** The clock, and the monotonic clock, when the sidecar started. */
    readonly fromMs: number;
    readonly fromMonotonicMs: number;
  };
  /**
   * The unit divisor of each dimension that takes usage in a finer unit than it bills (METERING_UNIT_DIVISORS,
   * ./units.ts); dimensions not listed count whole units.
   */
  readonly unitDivisors?: ReadonlyMap<string, number>;
  /**
   * Told after a prune gave up unit remainders untouched for the retention period (never billed: each is below one
   * unit of its tag set), so that the log says so.
   */
  readonly onRemaindersPruned?: (
    remainders: readonly { dimension: string; divisor: number; quantity: number }[],
  ) => void;
  /** How long settled records are kept (METERING_RETENTION_DAYS); default `DEFAULT_RETENTION_MS` (./keys.ts). */
  readonly retentionMs?: number;
  /**
   * The platform identity of this sidecar (`platformIdentity` in ../platform.ts, as JSON), stored with each
   * record it seals for the reconciliation export.
   */
  readonly identity?: string;
  /** How the write-ahead log is synced (`fdatasync` by default, ./walSync.ts); tests inject slow or failing ones. */
  readonly syncFile?: SyncFile;
  /**
   * Told once if a sync of the log fails: the ledger then refuses every write (what was committed may or may not
   * be on disk), and the agent exits so that the next start recovers the file as it is.
   */
  readonly onBroken?: (err: StorageUnavailableError) => void;
}

/** What intake needs of the ledger: appending usage. */
export interface UsageLedger {
  /**
   * Adds a batch of validated reports, all or nothing: resolves once the batch has committed (durably), or with
   * a {@link LedgerRejection} that stored nothing. Reports whose key is known are acknowledged as duplicates.
   * Rejects with StorageUnavailableError when the commit failed; nothing was stored.
   */
  record(batch: UsageBatch): Promise<RecordResult | LedgerRejection>;
  /**
   * Cancels the report with idempotency key `id` while its hour is not sealed: resolves once the cancellation is
   * durable, or with the refusal, which changed nothing. A repeat answers the first cancellation again.
   * Rejects with StorageUnavailableError when the commit failed; nothing changed.
   */
  cancel(id: string): Promise<CancelResult>;
}

/**
 * What sending needs of the ledger: sealing hours into records and settling them. Each call is one durable
 * transaction; a rejection (StorageUnavailableError) means nothing of it changed. Changes to a record apply only
 * while it is pending.
 */
export interface SendLedger {
  /**
   * Seals every (dimension, hour) that may be sealed at `clockMs` (with `includeOpen`, the open hour too), or the
   * first `limit` of them, oldest hour first; the next call goes on with the rest.
   */
  seal(clockMs: number, includeOpen: boolean, limit?: number): Promise<StoredRecord[]>;
  /** Pending records whose next attempt is due at `nowMs`, oldest first. */
  due(nowMs: number): Promise<StoredRecord[]>;
  /** Pending records past their carry deadline at `clockMs`. */
  expiring(clockMs: number): Promise<StoredRecord[]>;
  /** When the earliest pending record is due; undefined when nothing is pending. */
  nextAttemptMs(): Promise<number | undefined>;
  /** How many records are pending. */
  pendingCount(): Promise<number>;
  /** Makes one pending record due at `atMs` (now, or a later instant of the hourly spread). */
  dueAt(id: number, atMs: number): Promise<void>;
  /** Makes every pending record due at `nowMs`. */
  retryAllNow(nowMs: number): Promise<void>;
  /** The record's request is on its way to AWS: from now on it may have been delivered if the outcome is lost. */
  markInFlight(id: number): Promise<void>;
  /** AWS accepted the record. */
  markSent(id: number, meteringRecordId: string, nowMs: number): Promise<void>;
  /** A transient failure: try again at `nextAttemptMs`; `maybeDelivered` is sticky once set. */
  markRetry(id: number, error: string, nextAttemptMs: number, maybeDelivered: boolean): Promise<void>;
  /** AWS refused the record for good (or it became ambiguous): kept for a human, never resent. */
  markFailed(id: number, error: string, nowMs: number, attempted?: boolean): Promise<void>;
  /** Carries a pending record's usage into the open (or next unsealed) hour. Returns the hour it went to. */
  carry(id: number, clockMs: number, reason: string): Promise<number | undefined>;
  /** Forgets old idempotency keys and settled records past retention. */
  prune(nowMs: number): Promise<void>;
}

/** What readiness, metrics and status read of the ledger. */
export interface LedgerReader {
  /** The random id created with the ledger; part of every ClientToken. */
  readonly ledgerId: string;
  /** The files of the database, for its size. */
  readonly files: readonly string[];
  /** A summary for status and for the exit code at shutdown. */
  status(nowMs: number): Promise<LedgerStatus>;
  /** Whether the ledger can commit right now (a real write); never rejects. */
  writable(nowMs: number): Promise<{ ok: true } | { ok: false; reason: string }>;
  /** The idempotency keys kept: how many, and the arrival time of the oldest. */
  keyStats(): Promise<{ count: number; oldestAtMs: number | undefined }>;
}

/**
 * What handing off needs of the ledger (docs/design.md, "Handoff"). Each call is one durable transaction,
 * idempotent by handoff id.
 */
export interface HandoffLedger {
  /** Everything the ledger still holds: billable usage, uncertain records, and what to take out. */
  handoffSnapshot(): Promise<HandoffSnapshot>;
  /** Takes a published handoff's records and buckets out of this ledger. `false`: already done. */
  completeHandoff(entry: HandoffEntry, clockMs: number): Promise<boolean>;
  /** Carries an adopted handoff's usage into the open hour. `false`: already adopted. */
  adoptHandoff(entry: HandoffEntry, clockMs: number): Promise<boolean>;
  /** Ids of the handoffs this ledger wrote and adopted. */
  handoffIds(): Promise<{ written: Set<string>; adopted: Set<string> }>;
}

/** The whole ledger, as the agent holds it. */
export interface Ledger extends UsageLedger, SendLedger, LedgerReader, HandoffLedger {
  /** Commits what is queued, then closes. Idempotent. */
  close(): Promise<void>;
}
