/**
 * The app API's request model: parsing and validating `POST /v1/usage` bodies with pure functions, and the
 * error replies every layer of intake shares. A body is accepted whole or rejected whole with the first problem.
 * @see docs/api.md
 */
import {
  DIMENSION_PATTERN,
  MAX_QUANTITY,
  MAX_TAG_KEYS,
  MAX_TAG_KEY_LENGTH,
  MAX_TAG_VALUE_LENGTH,
  TAG_PATTERN,
} from '../awsLimits.js';
import { canonicalTags, type Tags } from '../ledger/hours.js';
import { UsageBatchBuilder, type UsageBatch } from '../ledger/usageBatch.js';
import { isObject, memberCount, parseJsonAllowingRepeats, repeatedMemberProblem } from '../json.js';

/** Most records one request may carry. */
export const MAX_BATCH_RECORDS = 10_000;

/** Largest request body, in bytes; a larger body is cut off without being buffered whole. */
export const MAX_BODY_BYTES = 1024 * 1024;

/** Longest idempotency key. */
export const MAX_ID_LENGTH = 256;

/** Every error code of the app API. */
export type ErrorCode =
  | 'InvalidJson'
  | 'InvalidRequest'
  | 'TooLarge'
  | 'UnsupportedMediaType'
  | 'NotFound'
  | 'MethodNotAllowed'
  | 'UnknownDimension'
  | 'InvalidQuantity'
  | 'InvalidTags'
  | 'TooManyTagSets'
  | 'UnknownUsageId'
  | 'HourSealed'
  | 'NotCancellable'
  | 'NotEntitled'
  | 'StorageUnavailable'
  | 'TooManyRequests'
  | 'EntitlementNotApplicable'
  | 'EntitlementUnavailable'
  | 'EntitlementRefused'
  | 'ForbiddenHost'
  | 'Internal';

/** HTTP status of each error code. */
export const ERROR_STATUS: Readonly<Record<ErrorCode, number>> = {
  InvalidJson: 400,
  InvalidRequest: 400,
  TooLarge: 413,
  UnsupportedMediaType: 415,
  NotFound: 404,
  MethodNotAllowed: 405,
  UnknownDimension: 422,
  InvalidQuantity: 422,
  InvalidTags: 422,
  TooManyTagSets: 422,
  UnknownUsageId: 404,
  HourSealed: 409,
  NotCancellable: 409,
  NotEntitled: 503,
  StorageUnavailable: 503,
  TooManyRequests: 429,
  EntitlementNotApplicable: 409,
  EntitlementUnavailable: 503,
  EntitlementRefused: 502,
  ForbiddenHost: 403,
  Internal: 500,
};

/** A request refused; `index` names the record of a batch at fault. Nothing of a rejected request is stored. */
export interface Rejection {
  readonly kind: 'rejection';
  readonly code: ErrorCode;
  readonly message: string;
  readonly index?: number;
}

/** Builds a {@link Rejection}. */
export function rejection(code: ErrorCode, message: string, index?: number): Rejection {
  return index === undefined
    ? { kind: 'rejection', code, message }
    : { kind: 'rejection', code, message, index };
}

/** A lone UTF-16 surrogate: SQLite would store it as U+FFFD, so the key would not match itself later. */
const LONE_SURROGATE = /\p{Cs}/u;

/** Most tag sets the parser remembers as valid, with their canonical text; past it, it starts afresh. */
const TAG_SET_CACHE_MAX = 4096;

/**
 * A step of the tag-set cache: tag sets already validated, as a trie over their keys and values in the order
 * the body names them (key, value, key, value, ...). A tag set met before is recognised without allocating.
 */
interface TagStep {
  next: Map<string, TagStep> | undefined;
  /** The canonical text of the tag set that ends here. */
  text: string | undefined;
}

/**
 * Parses `POST /v1/usage` bodies for one allow-list of dimensions. Validates each record as it sums it into a
 * {@link UsageBatch}, without building an object per record: dimension names and tag sets already seen are
 * remembered as valid. One instance per intake server; not shared across threads.
 */
export class UsageParser {
  readonly #allowed: ReadonlySet<string> | undefined;
  /** Unit divisors of the scaled dimensions, whose reports count a finer unit and may be larger. */
  readonly #divisors: Readonly<Record<string, number>>;
  readonly #allowedText: string;
  /** Dimension names already validated (and allowed). */
  readonly #dimensions = new Set<string>();
  #tagSets: TagStep = { next: undefined, text: undefined };
  #tagSetCount = 0;
  /** Members of the body's objects walked so far (see `repeatedMemberProblem` in ../json.ts). */
  #members = 0;

  constructor(dimensions: readonly string[] | undefined, divisors: Readonly<Record<string, number>> = {}) {
    this.#allowed = dimensions === undefined ? undefined : new Set(dimensions);
    this.#divisors = divisors;
    this.#allowedText = dimensions?.join(', ') ?? '';
  }

  /**
   * Parses a body: one record, or `{"records":[...]}` with 1..10,000 records. Returns the validated batch, or
   * the first problem found.
   */
  parse(body: string): UsageBatch | Rejection {
    const parsed = parseJsonAllowingRepeats(body);
    if (!parsed.ok) return rejection('InvalidJson', parsed.message);
    this.#members = 0;
    const result = this.#read(parsed.value);
    // A repeated member is the first problem of a body, whatever else is wrong with it.
    const members = 'kind' in result ? memberCount(parsed.value) : this.#members;
    const repeated = repeatedMemberProblem(body, members);
    if (repeated !== undefined) return rejection('InvalidJson', repeated);
    return result;
  }

  #read(value: unknown): UsageBatch | Rejection {
    if (!isObject(value))
      return rejection('InvalidRequest', 'body must be a JSON object: a record or {"records":[...]}');
    const batch = new UsageBatchBuilder();
    if (!('records' in value)) {
      const problem = this.#record(value, undefined, batch);
      return problem ?? batch.build();
    }
    if (Object.keys(value).length !== 1) {
      return rejection('InvalidRequest', 'a batch body has only the field "records"');
    }
    this.#members++;
    const records = value['records'];
    if (!Array.isArray(records)) return rejection('InvalidRequest', '"records" must be an array');
    if (records.length === 0) return rejection('InvalidRequest', '"records" must hold at least one record');
    if (records.length > MAX_BATCH_RECORDS) {
      return rejection(
        'TooLarge',
        `a batch holds at most ${MAX_BATCH_RECORDS} records, got ${records.length}`,
      );
    }
    for (let index = 0; index < records.length; index++) {
      const problem = this.#record(records[index], index, batch);
      if (problem !== undefined) return problem;
    }
    return batch.build();
  }

  /** Validates one record and adds it to `batch`; returns the problem instead when it is invalid. */
  #record(value: unknown, index: number | undefined, batch: UsageBatchBuilder): Rejection | undefined {
    const at = index === undefined ? '' : ` (record ${index})`;
    if (!isObject(value)) return rejection('InvalidRequest', `a record must be a JSON object${at}`, index);
    for (const field in value) {
      this.#members++;
      if (field !== 'dimension' && field !== 'quantity' && field !== 'tags' && field !== 'id') {
        return rejection(
          'InvalidRequest',
          `unknown field ${JSON.stringify(field)}${at}; a record has dimension, quantity, tags and id`,
          index,
        );
      }
    }

    const dimension = value['dimension'];
    if (typeof dimension !== 'string' || !this.#dimensions.has(dimension)) {
      const problem = this.#dimensionProblem(dimension, at, index);
      if (problem !== undefined) return problem;
    }

    const quantity = value['quantity'];
    // A scaled dimension counts a fine unit (bytes for GB): one report may hold as much as one record bills
    // (2,147,483,647 units) in it, at most 2^53 - 1 (exact integers).
    const divisor = Object.hasOwn(this.#divisors, dimension as string)
      ? this.#divisors[dimension as string]
      : 1;
    const max = Math.min(Number.MAX_SAFE_INTEGER, MAX_QUANTITY * divisor);
    if (typeof quantity !== 'number' || !Number.isInteger(quantity) || quantity < 0 || quantity > max) {
      return rejection('InvalidQuantity', `"quantity" must be an integer from 0 to ${max}${at}`, index);
    }

    const tags = value['tags'];
    let tagsKey = '{}';
    if (tags !== undefined) {
      const known = this.#knownTagSet(tags);
      if (known !== undefined) tagsKey = known;
      else {
        const problem = tagsProblem(tags);
        if (problem !== undefined) return rejection('InvalidTags', `${problem}${at}`, index);
        tagsKey = canonicalTags(tags as Tags);
        this.#rememberTagSet(tags as Tags, tagsKey);
        this.#members += Object.keys(tags as Tags).length;
      }
    }

    const id = value['id'];
    const badId = id === undefined ? undefined : idProblem(id);
    if (badId !== undefined) return rejection('InvalidRequest', `${badId}${at}`, index);

    batch.add(dimension as string, tagsKey, quantity, id as string | undefined);
    return undefined;
  }

  /** What is wrong with a dimension name not yet seen; remembers it when it is valid. */
  #dimensionProblem(dimension: unknown, at: string, index: number | undefined): Rejection | undefined {
    if (typeof dimension !== 'string' || !DIMENSION_PATTERN.test(dimension)) {
      return rejection(
        'UnknownDimension',
        `"dimension" must be a name of 1-255 printable characters${at}`,
        index,
      );
    }
    if (this.#allowed !== undefined && !this.#allowed.has(dimension)) {
      return rejection(
        'UnknownDimension',
        `dimension ${JSON.stringify(dimension)} is not one of ${this.#allowedText}${at}`,
        index,
      );
    }
    // Without an allow-list any valid name is accepted; remembering a bounded number of them is enough.
    if (this.#allowed !== undefined || this.#dimensions.size < TAG_SET_CACHE_MAX)
      this.#dimensions.add(dimension);
    return undefined;
  }

  /** The canonical text of a tag set validated before (counting its members), or undefined. */
  #knownTagSet(tags: unknown): string | undefined {
    if (typeof tags !== 'object' || tags === null || Array.isArray(tags)) return undefined;
    let step: TagStep | undefined = this.#tagSets;
    let members = 0;
    for (const key in tags) {
      const tagValue = (tags as Record<string, unknown>)[key];
      if (typeof tagValue !== 'string') return undefined;
      step = step.next?.get(key)?.next?.get(tagValue);
      if (step === undefined) return undefined;
      members++;
    }
    if (step.text === undefined) return undefined;
    this.#members += members;
    return step.text;
  }

  #rememberTagSet(tags: Tags, text: string): void {
    if (this.#tagSetCount >= TAG_SET_CACHE_MAX) {
      this.#tagSets = { next: undefined, text: undefined };
      this.#tagSetCount = 0;
    }
    let step = this.#tagSets;
    for (const key in tags) {
      step = stepTo(stepTo(step, key), tags[key]);
    }
    if (step.text === undefined) this.#tagSetCount++;
    step.text = text;
  }
}

function stepTo(step: TagStep, part: string): TagStep {
  step.next ??= new Map<string, TagStep>();
  let next = step.next.get(part);
  if (next === undefined) {
    next = { next: undefined, text: undefined };
    step.next.set(part, next);
  }
  return next;
}

/** Parses one body with a parser of its own (see {@link UsageParser}). */
export function parseUsage(
  body: string,
  dimensions: readonly string[] | undefined,
  divisors: Readonly<Record<string, number>> = {},
): UsageBatch | Rejection {
  return new UsageParser(dimensions, divisors).parse(body);
}

/** What is wrong with an idempotency key (`id` of a report, or of `DELETE /v1/usage/{id}`); undefined when valid. */
export function idProblem(id: unknown): string | undefined {
  if (typeof id === 'string' && id.length > 0 && id.length <= MAX_ID_LENGTH && !LONE_SURROGATE.test(id))
    return undefined;
  return `"id" must be a string of 1-${MAX_ID_LENGTH} characters`;
}

/** What is wrong with a tag set, or undefined when it is valid. */
function tagsProblem(tags: unknown): string | undefined {
  if (!isObject(tags)) return '"tags" must be an object of string values';
  const entries = Object.entries(tags);
  if (entries.length > MAX_TAG_KEYS) return `at most ${MAX_TAG_KEYS} tags per record, got ${entries.length}`;
  for (const [key, tagValue] of entries) {
    if (key.length > MAX_TAG_KEY_LENGTH || !TAG_PATTERN.test(key)) {
      return `tag key ${JSON.stringify(key)} must be 1-${MAX_TAG_KEY_LENGTH} characters of a-z A-Z 0-9 + - = . _ : / @ and space`;
    }
    if (
      typeof tagValue !== 'string' ||
      tagValue.length > MAX_TAG_VALUE_LENGTH ||
      !TAG_PATTERN.test(tagValue)
    ) {
      return `tag ${JSON.stringify(key)} must have a string value of 1-${MAX_TAG_VALUE_LENGTH} characters of a-z A-Z 0-9 + - = . _ : / @ and space`;
    }
  }
  return undefined;
}
