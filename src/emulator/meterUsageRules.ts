/**
 * MeterUsage rules as the Marketplace Metering Service enforces them, as pure functions: no I/O, no clock
 * (the caller passes `nowMs`), no state (the caller passes what it already recorded). `validateMeterUsage`
 * turns a decoded JSON body into a typed request or the AWS error for the first broken rule;
 * `meterUsageIdempotency.ts` then applies the ClientToken and once-per-hour rules against prior records.
 * The emulator's service state (`service.ts`) calls these in that order.
 *
 * References: `§` numbers are sections of docs/aws-rules.md, the AWS rules with their public sources.
 * @see docs/aws-rules.md §2.2 (MeterUsage), §2.5 (shapes), §3.1-3.4 (semantics)
 */
import { readMember as member, validationError } from './awsJson.js';
import type { ServiceError } from './awsJson.js';
import { isObject } from '../json.js';

/**
 * Largest `UsageQuantity` / `AllocatedUsageQuantity` (2^31-1, a Java int); the smallest is 0.
 * @see docs/aws-rules.md §2.2, §2.5
 */
export const MAX_QUANTITY = 2_147_483_647;

/**
 * Oldest accepted `Timestamp`: six hours before now ("up to six hours in the past").
 * @see docs/aws-rules.md §3.2, §2.7
 */
export const MAX_RECORD_AGE_MS = 6 * 60 * 60 * 1000;

/**
 * How far in the future a `Timestamp` may be. AWS documents no tolerance (§3.2 marks it unverified);
 * the emulator allows five minutes, a typical clock-skew allowance, so that a sidecar sending
 * "now" from a slightly fast clock is not rejected while a genuinely future hour is.
 * @see docs/aws-rules.md §3.2
 */
export const MAX_FUTURE_SKEW_MS = 5 * 60 * 1000;

/**
 * Length of the once-per-hour bucket: `Timestamp` is rounded down to the UTC hour.
 * @see docs/aws-rules.md §3.1
 */
export const HOUR_MS = 60 * 60 * 1000;

/**
 * Length limits of `UsageDimension` (1..255 characters).
 * @see docs/aws-rules.md §2.2
 */
export const MIN_DIMENSION_LENGTH = 1;
/** @see {@link MIN_DIMENSION_LENGTH}; docs/aws-rules.md §2.2 */
export const MAX_DIMENSION_LENGTH = 255;

/**
 * Length limits of `ClientToken` (1..64 characters, no pattern).
 * @see docs/aws-rules.md §2.2, §2.5
 */
export const MIN_CLIENT_TOKEN_LENGTH = 1;
/** @see {@link MIN_CLIENT_TOKEN_LENGTH}; docs/aws-rules.md §2.2, §2.5 */
export const MAX_CLIENT_TOKEN_LENGTH = 64;

/**
 * Number of entries in `UsageAllocations` when present (1..2500).
 * @see docs/aws-rules.md §2.5, §3.3
 */
export const MIN_ALLOCATIONS = 1;
/** @see {@link MIN_ALLOCATIONS}; docs/aws-rules.md §2.5, §3.3 */
export const MAX_ALLOCATIONS = 2500;

/**
 * Number of tags on one allocation when `Tags` is present (`TagList`, 1..5).
 * @see docs/aws-rules.md §2.5
 */
export const MIN_TAGS_PER_ALLOCATION = 1;
/** @see {@link MIN_TAGS_PER_ALLOCATION}; docs/aws-rules.md §2.5 */
export const MAX_TAGS_PER_ALLOCATION = 5;

/**
 * Distinct tag keys across all allocations of one record ("Maximum tags across UsageAllocation list - 5",
 * read conservatively as distinct keys).
 * @see docs/aws-rules.md §3.3
 */
export const MAX_DISTINCT_TAG_KEYS = 5;

/**
 * Tag key length (`TagKey`, 1..100 characters).
 * @see docs/aws-rules.md §2.5
 */
export const MAX_TAG_KEY_LENGTH = 100;

/**
 * Tag value length (`TagValue`, 1..256 characters; the model's "can be empty" doc contradicts its own
 * minimum of 1, and the emulator enforces the minimum).
 * @see docs/aws-rules.md §2.5
 */
export const MAX_TAG_VALUE_LENGTH = 256;

/**
 * Characters allowed in tag keys and values: the documented set `a-zA-Z0-9+ -=._:/@` (the model's
 * regex accidentally allows the range space..`=`; the emulator enforces the documented set, so a sidecar
 * that passes here also passes on AWS).
 * @see docs/aws-rules.md §2.5 (note on the pattern), §3.3
 */
export const TAG_CHARACTERS = /^[a-zA-Z0-9+ \-=._:/@]+$/;

/** One tag of an allocation, as sent. */
export interface Tag {
  readonly key: string;
  readonly value: string;
}

/** One usage allocation: a quantity and its tags in request order (`[]` for the untagged bucket). */
export interface UsageAllocation {
  readonly quantity: number;
  readonly tags: readonly Tag[];
}

/** A MeterUsage request that passed {@link validateMeterUsage}; defaults applied, timestamp in epoch ms. */
export interface MeterUsageRequest {
  readonly productCode: string;
  /** `Timestamp` converted from epoch seconds (possibly fractional) to epoch ms, rounded to the ms. */
  readonly timestampMs: number;
  readonly dimension: string;
  /** `UsageQuantity`, 0 when absent. */
  readonly quantity: number;
  /** `DryRun`, false when absent. */
  readonly dryRun: boolean;
  /** `UsageAllocations` in request order, or `undefined` when absent. */
  readonly allocations: readonly UsageAllocation[] | undefined;
  readonly clientToken: string | undefined;
}

/** What a MeterUsage request is checked against. */
export interface MeterUsageLimits {
  /** The product code the emulated product was published with. */
  readonly productCode: string;
  /** Dimension allow-list; `undefined` accepts any dimension. */
  readonly dimensions: readonly string[] | undefined;
  /** The emulator clock, epoch ms. */
  readonly nowMs: number;
}

/** Outcome of {@link validateMeterUsage}. */
export type MeterUsageValidation =
  | { readonly kind: 'valid'; readonly request: MeterUsageRequest }
  | { readonly kind: 'invalid'; readonly error: ServiceError };

/** A decoded value, or the error that stopped decoding. */
export type Decoded<T> =
  { readonly ok: true; readonly value: T } | { readonly ok: false; readonly error: ServiceError };

export function decoded<T>(value: T): Decoded<T> {
  return { ok: true, value };
}

export function rejected(
  name: string,
  message: string,
): { readonly ok: false; readonly error: ServiceError } {
  return { ok: false, error: { name, message } };
}

/** AWS-style constraint message ("Value ... at 'member' failed to satisfy constraint: ..."). */
export function invalidMember(
  path: string,
  value: unknown,
  constraint: string,
): { readonly ok: false; readonly error: ServiceError } {
  return { ok: false, error: validationError(path, value, constraint) };
}

export function isQuantity(value: unknown): value is number {
  return typeof value === 'number' && Number.isInteger(value) && value >= 0 && value <= MAX_QUANTITY;
}

export function decodeString(value: unknown, path: string): Decoded<string> {
  return typeof value === 'string'
    ? decoded(value)
    : invalidMember(path, value, 'Member must be a string and must not be null');
}

function decodeTags(raw: unknown, path: string): Decoded<Tag[]> {
  if (raw === undefined) return decoded([]);
  if (!Array.isArray(raw)) return invalidMember(path, raw, 'Member must be a list of Tag');
  if (raw.length < MIN_TAGS_PER_ALLOCATION || raw.length > MAX_TAGS_PER_ALLOCATION) {
    return rejected(
      'InvalidTagException',
      `${path} has ${raw.length} tags; an allocation carries ${MIN_TAGS_PER_ALLOCATION} to ${MAX_TAGS_PER_ALLOCATION} tags, or omits Tags for the untagged bucket.`,
    );
  }
  const tags: Tag[] = [];
  for (const [index, tag] of (raw as unknown[]).entries()) {
    const tagPath = `${path}.${index + 1}`;
    if (!isObject(tag)) return invalidMember(tagPath, tag, 'Member must be a Tag object');
    const key = decodeString(member(tag, 'Key'), `${tagPath}.key`);
    if (!key.ok) return key;
    const value = decodeString(member(tag, 'Value'), `${tagPath}.value`);
    if (!value.ok) return value;
    tags.push({ key: key.value, value: value.value });
  }
  return decoded(tags);
}

/**
 * Decodes a `UsageAllocations` member found at `path` (`usageAllocations` in MeterUsage,
 * `usageRecords.N.usageAllocations` in BatchMeterUsage): `undefined` when absent.
 */
export function decodeAllocations(
  raw: unknown,
  path = 'usageAllocations',
): Decoded<UsageAllocation[] | undefined> {
  if (raw === undefined) return decoded(undefined);
  if (!Array.isArray(raw)) return invalidMember(path, raw, 'Member must be a list of UsageAllocation');
  if (raw.length < MIN_ALLOCATIONS || raw.length > MAX_ALLOCATIONS) {
    return rejected(
      'InvalidUsageAllocationsException',
      `UsageAllocations has ${raw.length} entries; send ${MIN_ALLOCATIONS} to ${MAX_ALLOCATIONS}, or omit it.`,
    );
  }
  const allocations: UsageAllocation[] = [];
  for (const [index, entry] of (raw as unknown[]).entries()) {
    const entryPath = `${path}.${index + 1}`;
    if (!isObject(entry)) return invalidMember(entryPath, entry, 'Member must be a UsageAllocation object');
    const quantity = member(entry, 'AllocatedUsageQuantity');
    if (!isQuantity(quantity)) {
      return invalidMember(
        `${entryPath}.allocatedUsageQuantity`,
        quantity,
        `Member must be an integer from 0 to ${MAX_QUANTITY} and must not be null`,
      );
    }
    const tags = decodeTags(member(entry, 'Tags'), `${entryPath}.tags`);
    if (!tags.ok) return tags;
    allocations.push({ quantity, tags: tags.value });
  }
  return decoded(allocations);
}

/** Decodes every member and checks the model constraints (rule group 1 of {@link validateMeterUsage}). */
function decodeRequest(input: Readonly<Record<string, unknown>>): Decoded<MeterUsageRequest> {
  const productCode = decodeString(member(input, 'ProductCode'), 'productCode');
  if (!productCode.ok) return productCode;
  const timestampSeconds = member(input, 'Timestamp');
  if (typeof timestampSeconds !== 'number' || !Number.isFinite(timestampSeconds)) {
    return invalidMember(
      'timestamp',
      timestampSeconds,
      'Member must be epoch seconds (a number) and must not be null',
    );
  }
  const dimension = decodeString(member(input, 'UsageDimension'), 'usageDimension');
  if (!dimension.ok) return dimension;
  if (dimension.value.length < MIN_DIMENSION_LENGTH || dimension.value.length > MAX_DIMENSION_LENGTH) {
    return invalidMember(
      'usageDimension',
      dimension.value,
      `Member must have length between ${MIN_DIMENSION_LENGTH} and ${MAX_DIMENSION_LENGTH}`,
    );
  }
  const quantity = member(input, 'UsageQuantity') ?? 0;
  if (!isQuantity(quantity)) {
    return invalidMember('usageQuantity', quantity, `Member must be an integer from 0 to ${MAX_QUANTITY}`);
  }
  const dryRun = member(input, 'DryRun') ?? false;
  if (typeof dryRun !== 'boolean') return invalidMember('dryRun', dryRun, 'Member must be a boolean');
  const clientToken = member(input, 'ClientToken');
  if (
    clientToken !== undefined &&
    (typeof clientToken !== 'string' ||
      clientToken.length < MIN_CLIENT_TOKEN_LENGTH ||
      clientToken.length > MAX_CLIENT_TOKEN_LENGTH)
  ) {
    return invalidMember(
      'clientToken',
      clientToken,
      `Member must be a string with length between ${MIN_CLIENT_TOKEN_LENGTH} and ${MAX_CLIENT_TOKEN_LENGTH}`,
    );
  }
  const allocations = decodeAllocations(member(input, 'UsageAllocations'));
  if (!allocations.ok) return allocations;
  return decoded({
    productCode: productCode.value,
    timestampMs: Math.round(timestampSeconds * 1000),
    dimension: dimension.value,
    quantity,
    dryRun,
    allocations: allocations.value,
    clientToken,
  });
}

function checkTagText(text: string, maxLength: number, path: string): ServiceError | undefined {
  if (text.length < 1 || text.length > maxLength) {
    return {
      name: 'InvalidTagException',
      message: `${path} must be 1 to ${maxLength} characters long (got ${text.length}).`,
    };
  }
  if (!TAG_CHARACTERS.test(text)) {
    return {
      name: 'InvalidTagException',
      message: `${path} ${JSON.stringify(text)} contains characters outside the allowed set a-zA-Z0-9+ -=._:/@.`,
    };
  }
  return undefined;
}

/** Canonical text of a tag set, independent of tag order; `'[]'` for the untagged bucket. */
export function tagSetKey(tags: readonly Tag[]): string {
  const pairs = tags
    .map((tag) => [tag.key, tag.value])
    .sort(([a = ''], [b = '']) => (a < b ? -1 : a > b ? 1 : 0));
  return JSON.stringify(pairs);
}

/**
 * Rule group 5 of {@link validateMeterUsage}, also applied to each record of a BatchMeterUsage: tags, then tag
 * sets, then the sum. `at` is the allocations' member path in messages.
 */
export function checkAllocations(
  allocations: readonly UsageAllocation[],
  usageQuantity: number,
  at = 'usageAllocations',
): ServiceError | undefined {
  for (const [index, allocation] of allocations.entries()) {
    const path = `${at}.${index + 1}.tags`;
    const keys = new Set<string>();
    for (const [tagIndex, tag] of allocation.tags.entries()) {
      const problem =
        checkTagText(tag.key, MAX_TAG_KEY_LENGTH, `${path}.${tagIndex + 1}.key`) ??
        checkTagText(tag.value, MAX_TAG_VALUE_LENGTH, `${path}.${tagIndex + 1}.value`);
      if (problem !== undefined) return problem;
      if (keys.has(tag.key)) {
        return {
          name: 'InvalidTagException',
          message: `${path} repeats tag key ${JSON.stringify(tag.key)}; keys must be unique per allocation.`,
        };
      }
      keys.add(tag.key);
    }
  }
  const distinctKeys = new Set(allocations.flatMap((allocation) => allocation.tags.map((tag) => tag.key)));
  if (distinctKeys.size > MAX_DISTINCT_TAG_KEYS) {
    return {
      name: 'InvalidTagException',
      message: `UsageAllocations use ${distinctKeys.size} distinct tag keys (${[...distinctKeys].join(', ')}); at most ${MAX_DISTINCT_TAG_KEYS} are allowed per record.`,
    };
  }
  const seenTagSets = new Set<string>();
  for (const allocation of allocations) {
    const key = tagSetKey(allocation.tags);
    if (seenTagSets.has(key)) {
      return {
        name: 'InvalidUsageAllocationsException',
        message:
          key === '[]'
            ? 'More than one allocation has no tags; merge the untagged quantities into one allocation.'
            : `Two allocations have the same tag set ${key}; merge them into one allocation.`,
      };
    }
    seenTagSets.add(key);
  }
  const sum = allocations.reduce((total, allocation) => total + allocation.quantity, 0);
  if (sum !== usageQuantity) {
    return {
      name: 'InvalidUsageAllocationsException',
      message: `Sum of allocated usage quantities (${sum}) is not equal to the usage quantity (${usageQuantity}).`,
    };
  }
  return undefined;
}

/**
 * Checks a decoded MeterUsage body against every rule AWS enforces on a single request, in this order,
 * and stops at the first broken one:
 *
 * 1. member types and model constraints -> `ValidationException` (missing `ProductCode`/`Timestamp`/
 *    `UsageDimension`; `UsageDimension` not 1..255 characters; `UsageQuantity` or an
 *    `AllocatedUsageQuantity` not an integer 0..2^31-1; `DryRun` not a boolean; `ClientToken` not 1..64
 *    characters; wrongly typed allocations or tags), except that an allocation count outside 1..2500 is
 *    `InvalidUsageAllocationsException` and a tag count outside 1..5 is `InvalidTagException`;
 * 2. `ProductCode` differs from `limits.productCode` -> `InvalidProductCodeException`;
 * 3. `UsageDimension` not in `limits.dimensions` (when given) -> `InvalidUsageDimensionException`;
 * 4. `Timestamp` more than {@link MAX_RECORD_AGE_MS} before or {@link MAX_FUTURE_SKEW_MS} after
 *    `limits.nowMs` -> `TimestampOutOfBoundsException`;
 * 5. tag length, characters, repeated key, more than {@link MAX_DISTINCT_TAG_KEYS} distinct keys ->
 *    `InvalidTagException`; repeated tag sets (at most one untagged) and a sum different from
 *    `UsageQuantity` -> `InvalidUsageAllocationsException`.
 *
 * Unknown members are ignored and JSON `null` counts as absent. Pure: same input, same answer.
 * @see docs/aws-rules.md §2.2, §2.5, §3.2, §3.3
 */
export function validateMeterUsage(
  input: Readonly<Record<string, unknown>>,
  limits: MeterUsageLimits,
): MeterUsageValidation {
  const decodedRequest = decodeRequest(input);
  if (!decodedRequest.ok) return { kind: 'invalid', error: decodedRequest.error };
  const request = decodedRequest.value;
  const error = checkRules(request, limits);
  return error === undefined ? { kind: 'valid', request } : { kind: 'invalid', error };
}

/** Rule groups 2-5 of {@link validateMeterUsage}. */
function checkRules(request: MeterUsageRequest, limits: MeterUsageLimits): ServiceError | undefined {
  if (request.productCode !== limits.productCode) {
    return {
      name: 'InvalidProductCodeException',
      message: `Product code ${JSON.stringify(request.productCode)} does not match the product code used for publishing the product.`,
    };
  }
  const dimensionError = dimensionProblem(request.dimension, limits.dimensions);
  if (dimensionError !== undefined) return dimensionError;
  const { timestampMs, allocations } = request;
  if (timestampMs < limits.nowMs - MAX_RECORD_AGE_MS || timestampMs > limits.nowMs + MAX_FUTURE_SKEW_MS) {
    return {
      name: 'TimestampOutOfBoundsException',
      message: `Timestamp ${describeInstant(timestampMs)} is out of the allowed range: meter usage at most 6 hours in the past and not in the future (emulator clock: ${describeInstant(limits.nowMs)}).`,
    };
  }
  return allocations === undefined ? undefined : checkAllocations(allocations, request.quantity);
}

/**
 * `InvalidUsageDimensionException` when `dimensions` (the allow-list, `undefined` for any) leaves `dimension`
 * out; `undefined` when it is allowed.
 */
export function dimensionProblem(
  dimension: string,
  dimensions: readonly string[] | undefined,
): ServiceError | undefined {
  if (dimensions === undefined || dimensions.includes(dimension)) return undefined;
  return {
    name: 'InvalidUsageDimensionException',
    message: `Usage dimension ${JSON.stringify(dimension)} does not match one of the dimensions of the product (${dimensions.join(', ')}).`,
  };
}

/** ISO text for an instant, or the raw number when it is outside the range `Date` can show. */
export function describeInstant(ms: number): string {
  const date = new Date(ms);
  return Number.isNaN(date.getTime()) ? `${ms} ms` : date.toISOString();
}
