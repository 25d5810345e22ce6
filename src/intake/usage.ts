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
import type { UsageReport } from '../ledger/ledger.js';
import { isObject, parseJson } from '../json.js';

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

const RECORD_FIELDS = new Set(['dimension', 'quantity', 'tags', 'id']);

/** A lone UTF-16 surrogate: SQLite would store it as U+FFFD, so the key would not match itself later. */
const LONE_SURROGATE = /\p{Cs}/u;

/**
 * Parses a `POST /v1/usage` body: one record, or `{"records":[...]}` with 1..10,000 records.
 * Returns the validated reports, or the first problem found.
 */
export function parseUsage(
  body: string,
  dimensions: readonly string[] | undefined,
): UsageReport[] | Rejection {
  const parsed = parseJson(body);
  if (!parsed.ok) return rejection('InvalidJson', parsed.message);
  const value = parsed.value;
  if (!isObject(value))
    return rejection('InvalidRequest', 'body must be a JSON object: a record or {"records":[...]}');
  if (!('records' in value)) {
    const report = parseRecord(value, dimensions, undefined);
    return 'kind' in report ? report : [report];
  }
  if (Object.keys(value).length !== 1) {
    return rejection('InvalidRequest', 'a batch body has only the field "records"');
  }
  const records = value['records'];
  if (!Array.isArray(records)) return rejection('InvalidRequest', '"records" must be an array');
  if (records.length === 0) return rejection('InvalidRequest', '"records" must hold at least one record');
  if (records.length > MAX_BATCH_RECORDS) {
    return rejection('TooLarge', `a batch holds at most ${MAX_BATCH_RECORDS} records, got ${records.length}`);
  }
  const reports: UsageReport[] = [];
  for (let index = 0; index < records.length; index++) {
    const report = parseRecord(records[index], dimensions, index);
    if ('kind' in report) return report;
    reports.push(report);
  }
  return reports;
}

function parseRecord(
  value: unknown,
  dimensions: readonly string[] | undefined,
  index: number | undefined,
): UsageReport | Rejection {
  const at = index === undefined ? '' : ` (record ${index})`;
  if (!isObject(value)) return rejection('InvalidRequest', `a record must be a JSON object${at}`, index);
  for (const field of Object.keys(value)) {
    if (!RECORD_FIELDS.has(field)) {
      return rejection(
        'InvalidRequest',
        `unknown field ${JSON.stringify(field)}${at}; a record has dimension, quantity, tags and id`,
        index,
      );
    }
  }

  const dimension = value['dimension'];
  if (typeof dimension !== 'string' || !DIMENSION_PATTERN.test(dimension)) {
    return rejection(
      'UnknownDimension',
      `"dimension" must be a name of 1-255 printable characters${at}`,
      index,
    );
  }
  if (dimensions !== undefined && !dimensions.includes(dimension)) {
    return rejection(
      'UnknownDimension',
      `dimension ${JSON.stringify(dimension)} is not one of ${dimensions.join(', ')}${at}`,
      index,
    );
  }

  const quantity = value['quantity'];
  if (
    typeof quantity !== 'number' ||
    !Number.isInteger(quantity) ||
    quantity < 0 ||
    quantity > MAX_QUANTITY
  ) {
    return rejection(
      'InvalidQuantity',
      `"quantity" must be an integer from 0 to ${MAX_QUANTITY}${at}`,
      index,
    );
  }

  const tags = value['tags'];
  let tagsKey = '{}';
  if (tags !== undefined) {
    const problem = tagsProblem(tags);
    if (problem !== undefined) return rejection('InvalidTags', `${problem}${at}`, index);
    tagsKey = canonicalTags(tags as Tags);
  }

  const id = value['id'];
  if (
    id !== undefined &&
    (typeof id !== 'string' || id.length === 0 || id.length > MAX_ID_LENGTH || LONE_SURROGATE.test(id))
  ) {
    return rejection('InvalidRequest', `"id" must be a string of 1-${MAX_ID_LENGTH} characters${at}`, index);
  }

  return { dimension, quantity, tagsKey, id };
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
