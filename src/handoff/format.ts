/**
 * The handoff file: usage one sidecar could not deliver before it stopped, for another sidecar of the same
 * product to adopt and bill (docs/design.md, "Handoff"). Self-describing JSON with a format name and version,
 * so a reader can tell a handoff it understands from one of another version or of another product, and leave
 * the latter where it is.
 *
 * `usage` is what can be billed: usage AWS has certainly not recorded (never sent, refused before any
 * connection, or throttled), per origin (dimension, hour) with its tag sets. `uncertain` lists records that
 * may already have been delivered under the writer's identity: they travel for the record (status, metrics,
 * alerts) and are never billed again. `recordIds` and `bucketHours` name what the writer removes from its own
 * ledger, so that a writer restarted on the same volume can finish a handoff it published but did not record.
 */
import { MAX_TAG_KEYS, MAX_TAG_KEY_LENGTH, MAX_TAG_VALUE_LENGTH, TAG_PATTERN } from '../awsLimits.js';
import { isObject } from '../json.js';

/** The `format` member every handoff carries. */
export const HANDOFF_FORMAT = 'metering-sidecar/handoff';

/** The version this build writes and reads. */
export const HANDOFF_VERSION = 1;

/** Usage of one origin (dimension, hour): its tag sets with their quantities (`{}` for untagged usage). */
export interface HandoffUsage {
  readonly dimension: string;
  readonly hourMs: number;
  readonly allocations: readonly {
    readonly tags: Readonly<Record<string, string>>;
    readonly quantity: number;
  }[];
}

/** A record that may already be billed under the writer's identity; never billed again. */
export interface HandoffUncertain {
  readonly dimension: string;
  readonly hourMs: number;
  readonly quantity: number;
  readonly clientToken: string;
  readonly error: string | null;
}

/** One handoff. */
export interface Handoff {
  readonly format: typeof HANDOFF_FORMAT;
  readonly version: typeof HANDOFF_VERSION;
  /** Random, unique: the idempotency key of adoption. */
  readonly id: string;
  readonly productCode: string;
  readonly origin: { readonly ledgerId: string; readonly host: string; readonly writtenAtMs: number };
  readonly usage: readonly HandoffUsage[];
  readonly uncertain: readonly HandoffUncertain[];
  /** Writer-local: the pending records this handoff takes over. */
  readonly recordIds: readonly number[];
  /** Writer-local: the (dimension, hour) buckets this handoff takes over. */
  readonly bucketHours: readonly { readonly dimension: string; readonly hourMs: number }[];
}

/** What reading a handoff file gave. */
export type DecodedHandoff =
  | { readonly kind: 'handoff'; readonly handoff: Handoff }
  | { readonly kind: 'foreign'; readonly message: string }
  | { readonly kind: 'invalid'; readonly message: string };

/** The file's text: one JSON document. */
export function encodeHandoff(handoff: Handoff): string {
  return `${JSON.stringify(handoff)}\n`;
}

/**
 * Reads a handoff file's text. `foreign`: a handoff of another format version or another product, which a
 * sidecar of this product and version must leave in place. `invalid`: not a handoff at all, or a damaged one.
 */
export function decodeHandoff(text: string, productCode: string): DecodedHandoff {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return { kind: 'invalid', message: 'not JSON (a partial or damaged file)' };
  }
  if (!isObject(value) || value['format'] !== HANDOFF_FORMAT) {
    return { kind: 'invalid', message: `not a ${HANDOFF_FORMAT} file` };
  }
  if (value['version'] !== HANDOFF_VERSION) {
    return {
      kind: 'foreign',
      message: `format version ${JSON.stringify(value['version'])}; this sidecar reads version ${HANDOFF_VERSION}`,
    };
  }
  if (value['productCode'] !== productCode) {
    return {
      kind: 'foreign',
      message: `product code ${JSON.stringify(value['productCode'])}; this sidecar meters ${productCode}`,
    };
  }
  const problem = handoffProblem(value);
  return problem === undefined
    ? { kind: 'handoff', handoff: value as unknown as Handoff }
    : { kind: 'invalid', message: problem };
}

/** Why a version-1 object is not a well-formed handoff, or `undefined`. */
function handoffProblem(value: Record<string, unknown>): string | undefined {
  const { id, origin, usage, uncertain, recordIds, bucketHours } = value;
  if (typeof id !== 'string' || !/^[A-Za-z0-9-]{1,64}\.[0-9a-f]{8}$/.test(id))
    return 'id is not a handoff id';
  if (
    !isObject(origin) ||
    typeof origin['ledgerId'] !== 'string' ||
    typeof origin['host'] !== 'string' ||
    !isInstant(origin['writtenAtMs'])
  ) {
    return 'origin is not { ledgerId, host, writtenAtMs }';
  }
  if (!Array.isArray(usage) || !usage.every(isUsage))
    return 'usage is not a list of { dimension, hourMs, allocations }';
  if (!Array.isArray(uncertain) || !uncertain.every(isUncertain)) return 'uncertain is not a list of records';
  if (!Array.isArray(recordIds) || !recordIds.every((r) => Number.isSafeInteger(r)))
    return 'recordIds is not a list';
  if (
    !Array.isArray(bucketHours) ||
    !bucketHours.every((b) => isObject(b) && typeof b['dimension'] === 'string' && isInstant(b['hourMs']))
  ) {
    return 'bucketHours is not a list of { dimension, hourMs }';
  }
  return undefined;
}

function isInstant(value: unknown): value is number {
  return typeof value === 'number' && Number.isSafeInteger(value) && value >= 0;
}

function isQuantity(value: unknown): value is number {
  return typeof value === 'number' && Number.isSafeInteger(value) && value >= 0;
}

function isUsage(value: unknown): boolean {
  if (!isObject(value) || typeof value['dimension'] !== 'string' || !isInstant(value['hourMs'])) return false;
  const allocations = value['allocations'];
  return (
    Array.isArray(allocations) &&
    allocations.length > 0 &&
    allocations.every((a) => isObject(a) && isQuantity(a['quantity']) && isTags(a['tags']))
  );
}

/** Tags as intake accepts them (AWS's limits), so that adopted usage can never be refused for its tags. */
function isTags(value: unknown): boolean {
  if (!isObject(value)) return false;
  const entries = Object.entries(value);
  return (
    entries.length <= MAX_TAG_KEYS &&
    entries.every(
      ([key, v]) =>
        typeof v === 'string' &&
        key.length >= 1 &&
        key.length <= MAX_TAG_KEY_LENGTH &&
        v.length >= 1 &&
        v.length <= MAX_TAG_VALUE_LENGTH &&
        TAG_PATTERN.test(key) &&
        TAG_PATTERN.test(v),
    )
  );
}

function isUncertain(value: unknown): boolean {
  return (
    isObject(value) &&
    typeof value['dimension'] === 'string' &&
    isInstant(value['hourMs']) &&
    isQuantity(value['quantity']) &&
    typeof value['clientToken'] === 'string' &&
    (value['error'] === null || typeof value['error'] === 'string')
  );
}
