/**
 * The hour rules, as pure functions (no I/O, no timers). AWS accepts one MeterUsage record per (task or pod,
 * dimension, UTC hour); these functions decide which hour an arrival is counted in, when an hour may be sealed,
 * what the sealed record says (timestamp, allocations, ClientToken), what is capped, and when an unsent record
 * must be carried. The SQLite ledger applies them; tests exercise them with explicit instants.
 * @see docs/metering.md "Hour rules" and docs/aws-rules.md §3.1–3.3
 */
import { createHash } from 'node:crypto';
import { MAX_QUANTITY, MAX_RECORD_AGE_MS } from '../awsLimits.js';
import { HOUR_MS, hourStart } from '../clock.js';

/**
 * A record still unsent this close to the end of its six-hour window is carried instead of sent: the margin
 * leaves room for the send itself, retries and clock skew between the task and AWS.
 */
export const CARRY_MARGIN_MS = 15 * 60_000;

/**
 * Time a record's window must still hold when it is first sent, for retries through throttling and outages
 * before the carry deadline.
 */
export const RETRY_ROOM_MS = HOUR_MS;

/**
 * The longest gap between two scheduled ticks that still gets every hour out inside AWS's window with a send
 * jitter of up to `jitterMs`: usage stamped at the start of an hour is sealed at the first tick after the hour
 * closes (at most one gap later), sent after the jitter, and must then leave {@link RETRY_ROOM_MS} before
 * {@link carryDeadline}. A slower schedule would let usage age out, be carried, and age out again, for ever.
 * With the default jitter of 3000 s: 2 h 55 min.
 */
export function maxTickGapMs(jitterMs: number): number {
  return MAX_RECORD_AGE_MS - CARRY_MARGIN_MS - HOUR_MS - RETRY_ROOM_MS - jitterMs;
}

/** Tags of one usage report; a key/value map. */
export type Tags = Readonly<Record<string, string>>;

/** The canonical text of a tag set: JSON with keys sorted; `{}` for no tags. Equal sets give equal text. */
export function canonicalTags(tags: Tags | undefined): string {
  if (tags === undefined) return '{}';
  // Hot path (every usage report): build the text directly instead of sorting entries into a new object.
  // Keys are compared by code unit, as Array.prototype.sort does; own keys only, so even "__proto__" is data.
  const keys = Object.keys(tags);
  if (keys.length === 0) return '{}';
  if (keys.length > 1) keys.sort();
  let text = '{';
  for (let i = 0; i < keys.length; i++) {
    const key = keys[i];
    text += `${i === 0 ? '' : ','}${JSON.stringify(key)}:${JSON.stringify(tags[key])}`;
  }
  return `${text}}`;
}

/**
 * The hour an arrival at `arrivalMs` is counted in: its own UTC hour, unless that (dimension, hour) is already
 * sealed (after a shutdown flush and a restart in the same hour), in which case the next hour not yet sealed.
 */
export function targetHour(arrivalMs: number, isSealed: (hourStartMs: number) => boolean): number {
  let hourMs = hourStart(arrivalMs);
  while (isSealed(hourMs)) hourMs += HOUR_MS;
  return hourMs;
}

/**
 * The time recorded for an arrival in a bucket of `hourStartMs`: the arrival itself, or the start of the hour
 * when the arrival was moved to a later hour. Always inside the bucket's hour and never before the arrival, so
 * never before the software started.
 */
export function bucketTime(arrivalMs: number, hourStartMs: number): number {
  return Math.min(Math.max(arrivalMs, hourStartMs), hourStartMs + HOUR_MS - 1);
}

/**
 * Whether the hour starting at `hourStartMs` may be sealed at `nowMs`: once it has closed, or at shutdown
 * (`includeOpen`) also the open hour. An hour that has not begun is never sealed: a record for it would carry
 * a future timestamp.
 */
export function maySeal(hourStartMs: number, nowMs: number, includeOpen: boolean): boolean {
  const currentHourMs = hourStart(nowMs);
  return includeOpen ? hourStartMs <= currentHourMs : hourStartMs < currentHourMs;
}

/**
 * The Timestamp of the record for the hour starting at `hourStartMs`, sealed at `clockMs`: the first usage in
 * the hour, but never after the clock that seals it, and always inside the hour. After the clock steps back
 * (12:50 to 12:05) usage already stamped 12:50 would otherwise go out with a timestamp AWS sees as the future
 * and refuses. The clock at sealing wins over the earlier reading: AWS judges by its own clock, and a clock that
 * was just corrected is the better estimate of it. `clockMs` is never before the hour: an hour that has not
 * begun is not sealed ({@link maySeal}).
 */
export function recordTimestamp(firstAtMs: number, hourStartMs: number, clockMs: number): number {
  return Math.max(hourStartMs, Math.min(firstAtMs, clockMs, hourStartMs + HOUR_MS - 1));
}

/**
 * How many hours back zero reporting looks: a zero record older than this could not be sent before its carry
 * deadline with room for retries, and a running sidecar seals every hour within the hour after it closes.
 */
export const ZERO_USAGE_LOOKBACK_HOURS = 4;

/**
 * The hours zero reporting may seal at `clockMs` for a sidecar that started at `fromMs`: from the hour it started
 * in (never an hour before) or {@link ZERO_USAGE_LOOKBACK_HOURS} back, whichever is later, to the last hour that
 * may be sealed ({@link maySeal}: the open one too at shutdown).
 */
export function zeroUsageHours(fromMs: number, clockMs: number, includeOpen: boolean): number[] {
  const lastMs = hourStart(clockMs) - (includeOpen ? 0 : HOUR_MS);
  const firstMs = Math.max(hourStart(fromMs), hourStart(clockMs) - ZERO_USAGE_LOOKBACK_HOURS * HOUR_MS);
  const hours: number[] = [];
  for (let hourMs = firstMs; hourMs <= lastMs; hourMs += HOUR_MS) hours.push(hourMs);
  return hours;
}

/** Usage of one tag set in one (dimension, hour). */
export interface Bucket {
  readonly tagsKey: string;
  readonly quantity: number;
  readonly firstAtMs: number;
}

/** One UsageAllocation of a sealed record. */
export interface Allocation {
  readonly tagsKey: string;
  readonly quantity: number;
}

/** The outcome of sealing one (dimension, hour). */
export interface Seal {
  /** Total to bill for the hour, at most {@link MAX_QUANTITY}. */
  readonly quantity: number;
  /** The record's Timestamp: the first usage in the hour's buckets. */
  readonly timestampMs: number;
  /** One allocation per tag set, summing to `quantity`; sorted by tag set. */
  readonly allocations: readonly Allocation[];
  /** Usage over the cap, per tag set, to be carried into the next hour. */
  readonly excess: readonly Allocation[];
}

/**
 * Seals the buckets of one (dimension, hour) into a record. Returns undefined when the hour's total is zero:
 * zero-usage hours send nothing (and do not lock the hour). A total over {@link MAX_QUANTITY} is capped; the
 * excess stays with its tag sets in `excess`, filled in tag-set order so the result is deterministic.
 */
export function seal(buckets: readonly Bucket[]): Seal | undefined {
  const sorted = [...buckets].sort((a, b) => (a.tagsKey < b.tagsKey ? -1 : a.tagsKey > b.tagsKey ? 1 : 0));
  const total = sorted.reduce((sum, b) => sum + b.quantity, 0);
  if (total === 0) return undefined;
  const allocations: Allocation[] = [];
  const excess: Allocation[] = [];
  let room = MAX_QUANTITY;
  for (const bucket of sorted) {
    const billed = Math.min(bucket.quantity, room);
    room -= billed;
    if (billed > 0) allocations.push({ tagsKey: bucket.tagsKey, quantity: billed });
    if (bucket.quantity > billed)
      excess.push({ tagsKey: bucket.tagsKey, quantity: bucket.quantity - billed });
  }
  const timestampMs = Math.min(...sorted.filter((b) => b.quantity > 0).map((b) => b.firstAtMs));
  return {
    quantity: total - excess.reduce((sum, e) => sum + e.quantity, 0),
    timestampMs,
    allocations,
    excess,
  };
}

/**
 * The ClientToken of the record for (dimension, hour) in the ledger `ledgerId`: a UUID-shaped SHA-256 digest.
 * Deterministic, so a resend after a crash carries the same token; unique to the ledger, whose id is random, so
 * two tasks of one buyer never present the same token (AWS could take the second for a retry of the first).
 * @see docs/aws-rules.md §2.2 (ClientToken len 1..64)
 */
export function clientToken(ledgerId: string, dimension: string, hourStartMs: number): string {
  const hex = createHash('sha256').update(`${ledgerId}\n${dimension}\n${hourStartMs}`).digest('hex');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20, 32)}`;
}

/** The instant AWS's window closes for a record with this Timestamp (by the sidecar's clock). */
export function windowEnd(timestampMs: number): number {
  return timestampMs + MAX_RECORD_AGE_MS;
}

/** The instant after which a record with this Timestamp is carried instead of sent. */
export function carryDeadline(timestampMs: number): number {
  return timestampMs + MAX_RECORD_AGE_MS - CARRY_MARGIN_MS;
}

/** One tag of a UsageAllocation. */
export interface Tag {
  readonly Key: string;
  readonly Value: string;
}

/** The MeterUsage request of a sealed record, as stored in the ledger and resent byte-identical. */
export interface MeterUsageRequest {
  readonly ProductCode: string;
  /** Epoch milliseconds; converted to a Date when sent. */
  readonly TimestampMs: number;
  readonly UsageDimension: string;
  readonly UsageQuantity: number;
  readonly UsageAllocations?: readonly {
    readonly AllocatedUsageQuantity: number;
    readonly Tags?: readonly Tag[];
  }[];
  readonly ClientToken: string;
  readonly DryRun?: boolean;
}

/**
 * Builds the request for a sealed record. UsageAllocations are sent only when some usage is tagged; an hour of
 * untagged usage sends the plain total. Every allocation carries its tags, at most one carries none.
 */
export function meterUsageRequest(options: {
  productCode: string;
  dimension: string;
  seal: Seal;
  clientToken: string;
  dryRun: boolean;
  /** Tags already built per tag set, shared by the records of one seal (dimensions often share tag sets). */
  tagsCache?: Map<string, readonly Tag[]>;
}): MeterUsageRequest {
  const { seal: s, tagsCache = new Map<string, readonly Tag[]>() } = options;
  const tagged = s.allocations.some((a) => a.tagsKey !== '{}');
  return {
    ProductCode: options.productCode,
    TimestampMs: s.timestampMs,
    UsageDimension: options.dimension,
    UsageQuantity: s.quantity,
    ...(tagged
      ? {
          UsageAllocations: s.allocations.map((a) => {
            let tags = tagsCache.get(a.tagsKey);
            if (tags === undefined) {
              const entries = Object.entries(JSON.parse(a.tagsKey) as Record<string, string>);
              tags = entries.map(([Key, Value]) => ({ Key, Value }));
              tagsCache.set(a.tagsKey, tags);
            }
            return { AllocatedUsageQuantity: a.quantity, ...(tags.length > 0 ? { Tags: tags } : {}) };
          }),
        }
      : {}),
    ClientToken: options.clientToken,
    ...(options.dryRun ? { DryRun: true } : {}),
  };
}

/** The usage of a stored request per tag set, as it is carried: its allocations, or its total untagged. */
export function allocationsOf(request: MeterUsageRequest): { tagsKey: string; quantity: number }[] {
  return (request.UsageAllocations ?? [{ AllocatedUsageQuantity: request.UsageQuantity }]).map((a) => ({
    tagsKey: canonicalTags(Object.fromEntries((a.Tags ?? []).map((t) => [t.Key, t.Value]))),
    quantity: a.AllocatedUsageQuantity,
  }));
}
