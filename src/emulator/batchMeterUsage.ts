/**
 * BatchMeterUsage rules as the Marketplace Metering Service enforces them, as pure functions: decoding the
 * request (at most 25 usage records of one product), naming the buyer of each record (`CustomerIdentifier`, or
 * `CustomerAWSAccountId` with `LicenseArn` or `ProductCode`), the 24-hour window with its month-end grace, and
 * the per-record outcome against what was metered before. The service state (`service.ts`) keeps the customers
 * (`saas.ts`) and the records.
 *
 * References: `§` numbers are sections of docs/aws-rules.md, the AWS rules with their public sources.
 * @see docs/aws-rules.md §2.3 (BatchMeterUsage), §2.5 (shapes), §3.2 (windows), §3.3 (allocations)
 */
import { readMember as member } from './awsJson.js';
import type { ServiceError } from './awsJson.js';
import { hourStartMs } from './meterUsageIdempotency.js';
import {
  MAX_DIMENSION_LENGTH,
  MAX_FUTURE_SKEW_MS,
  MAX_QUANTITY,
  MIN_DIMENSION_LENGTH,
  checkAllocations,
  decodeAllocations,
  decodeString,
  decoded,
  describeInstant,
  dimensionProblem,
  invalidMember,
  isQuantity,
  rejected,
} from './meterUsageRules.js';
import type { Decoded, UsageAllocation } from './meterUsageRules.js';
import { MAX_PRODUCT_CODE_LENGTH, PRODUCT_CODE_PATTERN } from './registerUsage.js';
import {
  ACCOUNT_ID_PATTERN,
  LICENSE_ARN_PATTERN,
  MAX_CUSTOMER_IDENTIFIER_LENGTH,
  type SaasCustomer,
  type SaasDirectory,
} from './saas.js';
import { isObject } from '../json.js';

/**
 * Most `UsageRecords` in one request ("up to 25 UsageRecords at a time"; list length 0..25 in the model).
 * @see docs/aws-rules.md §2.3
 */
export const MAX_USAGE_RECORDS = 25;

/**
 * Largest BatchMeterUsage body: "each request must be less than 1 MB", read as 10^6 bytes (the stricter
 * reading, so that a request the emulator takes is one AWS takes).
 * @see docs/aws-rules.md §2.3
 */
export const MAX_BATCH_BODY_BYTES = 1_000_000;

/**
 * Age at which a usage record is refused: "Usage records aren't accepted 24 hours or more after an event".
 * @see docs/aws-rules.md §2.3, §3.2
 */
export const BATCH_RECORD_MAX_AGE_MS = 24 * 60 * 60 * 1000;

/**
 * Grace for the previous billing month: its records are accepted "until 06:00 UTC on the first day of the next
 * month", and refused after it "regardless of the normal 24-hour submission window".
 * @see docs/aws-rules.md §2.3, §3.2
 */
export const MONTH_END_GRACE_MS = 6 * 60 * 60 * 1000;

/** One usage record of a BatchMeterUsage request, decoded. */
export interface BatchUsageRecord {
  readonly timestampMs: number;
  readonly customerIdentifier: string | undefined;
  readonly customerAWSAccountId: string | undefined;
  readonly licenseArn: string | undefined;
  readonly dimension: string;
  /** `Quantity`, 0 when absent. */
  readonly quantity: number;
  readonly allocations: readonly UsageAllocation[] | undefined;
  /** The record as the answer echoes it (in `Results[].UsageRecord` or `UnprocessedRecords`). */
  readonly echo: Readonly<Record<string, unknown>>;
}

/** A decoded BatchMeterUsage request. */
export interface BatchMeterUsageRequest {
  /** `ProductCode`, `''` when absent (the model's default). */
  readonly productCode: string;
  readonly records: readonly BatchUsageRecord[];
}

/** What a request is checked against. */
export interface BatchLimits {
  readonly dimensions: readonly string[] | undefined;
  readonly nowMs: number;
  /** The container product's code (always a product the emulator serves). */
  readonly productCode: string;
  readonly directory: SaasDirectory;
}

/** A request that passed every request-level rule: its product, and each record's customer if known. */
export interface AcceptedBatch {
  readonly productCode: string;
  readonly records: readonly {
    readonly record: BatchUsageRecord;
    readonly customer: SaasCustomer | undefined;
  }[];
}

function decodeOptionalText(
  value: unknown,
  path: string,
  check: (text: string) => boolean,
  constraint: string,
): Decoded<string | undefined> {
  if (value === undefined) return decoded(undefined);
  return typeof value === 'string' && check(value) ? decoded(value) : invalidMember(path, value, constraint);
}

function decodeRecord(raw: unknown, path: string): Decoded<BatchUsageRecord> {
  if (!isObject(raw)) return invalidMember(path, raw, 'Member must be a UsageRecord object');
  const timestampSeconds = member(raw, 'Timestamp');
  if (typeof timestampSeconds !== 'number' || !Number.isFinite(timestampSeconds)) {
    return invalidMember(
      `${path}.timestamp`,
      timestampSeconds,
      'Member must be epoch seconds (a number) and must not be null',
    );
  }
  const customerIdentifier = decodeOptionalText(
    member(raw, 'CustomerIdentifier'),
    `${path}.customerIdentifier`,
    (text) => text.length <= MAX_CUSTOMER_IDENTIFIER_LENGTH,
    `Member must have length less than or equal to ${MAX_CUSTOMER_IDENTIFIER_LENGTH}`,
  );
  if (!customerIdentifier.ok) return customerIdentifier;
  const dimension = decodeString(member(raw, 'Dimension'), `${path}.dimension`);
  if (!dimension.ok) return dimension;
  if (dimension.value.length < MIN_DIMENSION_LENGTH || dimension.value.length > MAX_DIMENSION_LENGTH) {
    return invalidMember(
      `${path}.dimension`,
      dimension.value,
      `Member must have length between ${MIN_DIMENSION_LENGTH} and ${MAX_DIMENSION_LENGTH}`,
    );
  }
  const quantity = member(raw, 'Quantity') ?? 0;
  if (!isQuantity(quantity)) {
    return invalidMember(`${path}.quantity`, quantity, `Member must be an integer from 0 to ${MAX_QUANTITY}`);
  }
  const allocations = decodeAllocations(member(raw, 'UsageAllocations'), `${path}.usageAllocations`);
  if (!allocations.ok) return allocations;
  const account = decodeOptionalText(
    member(raw, 'CustomerAWSAccountId'),
    `${path}.customerAWSAccountId`,
    (text) => ACCOUNT_ID_PATTERN.test(text),
    'Member must satisfy regular expression pattern: ^[0-9]+$ and have length between 1 and 255',
  );
  if (!account.ok) return account;
  const licenseArn = decodeOptionalText(
    member(raw, 'LicenseArn'),
    `${path}.licenseArn`,
    (text) => LICENSE_ARN_PATTERN.test(text),
    'Member must satisfy the LicenseArn pattern (arn:aws:license-manager::ACCOUNT:license:ID)',
  );
  if (!licenseArn.ok) return licenseArn;
  // CustomerIdentifier defaults to "" in the current model, so an empty one counts as absent.
  const identifier = customerIdentifier.value === '' ? undefined : customerIdentifier.value;
  if (identifier !== undefined && account.value !== undefined) {
    return rejected(
      'ValidationException',
      `${path} names its buyer twice: CustomerIdentifier and CustomerAWSAccountId are mutually exclusive; new integrations use CustomerAWSAccountId with LicenseArn.`,
    );
  }
  if (identifier === undefined && account.value === undefined) {
    return rejected(
      'ValidationException',
      `${path} names no buyer: give CustomerAWSAccountId (with LicenseArn), or CustomerIdentifier for an integration from before Concurrent Agreements.`,
    );
  }
  if (identifier !== undefined && licenseArn.value !== undefined) {
    return rejected(
      'ValidationException',
      `${path} has LicenseArn with CustomerIdentifier; a LicenseArn goes with CustomerAWSAccountId.`,
    );
  }
  const echo: Record<string, unknown> = {
    Timestamp: timestampSeconds,
    ...(identifier === undefined ? {} : { CustomerIdentifier: identifier }),
    Dimension: dimension.value,
    Quantity: quantity,
    ...(allocations.value === undefined ? {} : { UsageAllocations: member(raw, 'UsageAllocations') }),
    ...(account.value === undefined ? {} : { CustomerAWSAccountId: account.value }),
    ...(licenseArn.value === undefined ? {} : { LicenseArn: licenseArn.value }),
  };
  return decoded({
    timestampMs: Math.round(timestampSeconds * 1000),
    customerIdentifier: identifier,
    customerAWSAccountId: account.value,
    licenseArn: licenseArn.value,
    dimension: dimension.value,
    quantity,
    allocations: allocations.value,
    echo: Object.freeze(echo),
  });
}

/**
 * Decodes a BatchMeterUsage body: `UsageRecords` required, at most {@link MAX_USAGE_RECORDS}; `ProductCode`
 * optional (default `''`); each record's members typed and constrained as in the model, with exactly one way of
 * naming its buyer. Any broken member gives `ValidationException` naming it.
 * @see docs/aws-rules.md §2.3, §2.5
 */
export function decodeBatchMeterUsage(
  input: Readonly<Record<string, unknown>>,
): Decoded<BatchMeterUsageRequest> {
  const rawRecords = member(input, 'UsageRecords');
  if (!Array.isArray(rawRecords)) {
    return invalidMember(
      'usageRecords',
      rawRecords,
      'Member must be a list of UsageRecord and must not be null',
    );
  }
  if (rawRecords.length > MAX_USAGE_RECORDS) {
    return invalidMember(
      'usageRecords',
      `${rawRecords.length} records`,
      `Member must have length less than or equal to ${MAX_USAGE_RECORDS}`,
    );
  }
  const productCode = member(input, 'ProductCode') ?? '';
  if (
    typeof productCode !== 'string' ||
    productCode.length > MAX_PRODUCT_CODE_LENGTH ||
    !PRODUCT_CODE_PATTERN.test(productCode)
  ) {
    return invalidMember(
      'productCode',
      productCode,
      'Member must satisfy regular expression pattern: ^[-a-zA-Z0-9/=:_.@]*$ and have length less than or equal to 255',
    );
  }
  const records: BatchUsageRecord[] = [];
  for (const [index, raw] of (rawRecords as unknown[]).entries()) {
    const record = decodeRecord(raw, `usageRecords.${index + 1}`);
    if (!record.ok) return record;
    records.push(record.value);
  }
  return decoded({ productCode, records });
}

/**
 * Why a record's `timestampMs` is outside BatchMeterUsage's window at `nowMs`, or `undefined`: 24 hours or more
 * old, more than {@link MAX_FUTURE_SKEW_MS} ahead, or of an earlier billing month (UTC) once 06:00 UTC on the
 * first day of the month after it has passed.
 * @see docs/aws-rules.md §2.3, §3.2
 */
export function batchWindowProblem(timestampMs: number, nowMs: number): string | undefined {
  if (timestampMs <= nowMs - BATCH_RECORD_MAX_AGE_MS)
    return 'usage records are accepted for less than 24 hours after the event';
  if (timestampMs > nowMs + MAX_FUTURE_SKEW_MS) return 'usage cannot be metered for the future';
  const event = new Date(timestampMs);
  const nextMonthStartMs = Date.UTC(event.getUTCFullYear(), event.getUTCMonth() + 1, 1);
  if (nowMs >= nextMonthStartMs + MONTH_END_GRACE_MS) {
    return `records of a billing month are accepted until 06:00 UTC on the first day of the next month (${describeInstant(nextMonthStartMs + MONTH_END_GRACE_MS)})`;
  }
  return undefined;
}

/**
 * Applies the request-level rules to a decoded request; any broken one refuses the whole batch, in this order:
 *
 * 1. the product: `ProductCode`, when given, must be the container product's or a SaaS listing's with customers,
 *    else `InvalidProductCodeException`; a record's `LicenseArn` must be a known license of the account named
 *    beside it and of that product, else `InvalidLicenseException`; without `ProductCode`, the records' licenses
 *    name the product, which must be one ("one product per request", else `InvalidProductCodeException`), and a
 *    record without a license then has none (`InvalidProductCodeException`);
 * 2. a `CustomerIdentifier` nobody has: `InvalidCustomerIdentifierException`;
 * 3. a dimension outside the allow-list: `InvalidUsageDimensionException`;
 * 4. allocations and tags, as for MeterUsage: `InvalidTagException`, `InvalidUsageAllocationsException`;
 * 5. any record outside the window ({@link batchWindowProblem}): `TimestampOutOfBoundsException` ("if any of
 *    the records are outside of the allowed range, the entire batch is not processed").
 *
 * A known buyer who is not subscribed to this product is not an error here: that record's status is
 * `CustomerNotSubscribed` (see {@link recordStatus}).
 * @see docs/aws-rules.md §2.3, §2.6
 */
export function acceptBatch(
  request: BatchMeterUsageRequest,
  limits: BatchLimits,
): AcceptedBatch | ServiceError {
  const { directory } = limits;
  const licensed = request.records.map((record) =>
    record.licenseArn === undefined ? undefined : directory.byLicense(record.licenseArn),
  );
  for (const [index, record] of request.records.entries()) {
    if (record.licenseArn === undefined) continue;
    const license = licensed[index];
    if (
      license === undefined ||
      license.customerAWSAccountId !== record.customerAWSAccountId ||
      (request.productCode !== '' && license.productCode !== request.productCode)
    ) {
      return {
        name: 'InvalidLicenseException',
        message: `usageRecords.${index + 1}: LicenseArn ${record.licenseArn} is not a license of account ${record.customerAWSAccountId ?? ''} for this product.`,
      };
    }
  }
  let productCode = request.productCode;
  if (productCode === '') {
    const products = new Set(licensed.map((license) => license?.productCode));
    if (products.has(undefined)) {
      return {
        name: 'InvalidProductCodeException',
        message: 'ProductCode is required unless every usage record carries a LicenseArn.',
      };
    }
    if (products.size > 1) {
      return {
        name: 'InvalidProductCodeException',
        message: `The records' licenses are for ${products.size} products; each BatchMeterUsage request is for one product.`,
      };
    }
    productCode = [...products][0] ?? '';
  }
  if (productCode !== limits.productCode && !directory.hasProduct(productCode)) {
    return {
      name: 'InvalidProductCodeException',
      message: `Product code ${JSON.stringify(productCode)} does not match the product code used for publishing the product.`,
    };
  }
  const records: { record: BatchUsageRecord; customer: SaasCustomer | undefined }[] = [];
  for (const [index, record] of request.records.entries()) {
    let customer: SaasCustomer | undefined;
    if (record.customerIdentifier !== undefined) {
      customer = directory.byIdentifier(record.customerIdentifier);
      if (customer === undefined) {
        return {
          name: 'InvalidCustomerIdentifierException',
          message: `usageRecords.${index + 1}: CustomerIdentifier ${JSON.stringify(record.customerIdentifier)} does not exist.`,
        };
      }
    } else {
      customer = licensed[index] ?? directory.byAccount(record.customerAWSAccountId ?? '', productCode);
    }
    records.push({ record, customer: customer?.productCode === productCode ? customer : undefined });
  }
  for (const { record } of records) {
    const problem = dimensionProblem(record.dimension, limits.dimensions);
    if (problem !== undefined) return problem;
  }
  for (const [index, { record }] of records.entries()) {
    if (record.allocations === undefined) continue;
    const problem = checkAllocations(
      record.allocations,
      record.quantity,
      `usageRecords.${index + 1}.usageAllocations`,
    );
    if (problem !== undefined) return problem;
  }
  for (const [index, { record }] of records.entries()) {
    const problem = batchWindowProblem(record.timestampMs, limits.nowMs);
    if (problem !== undefined) {
      return {
        name: 'TimestampOutOfBoundsException',
        message: `usageRecords.${index + 1}: Timestamp ${describeInstant(record.timestampMs)} is out of the allowed range: ${problem} (emulator clock: ${describeInstant(limits.nowMs)}). The batch was not processed.`,
      };
    }
  }
  return { productCode, records };
}

/** What was metered before for a record's (product, customer, dimension, hour). */
export interface BatchHourEntry {
  readonly quantity: number;
  readonly meteringRecordId: string;
}

/** The outcome of one accepted record. */
export type RecordStatus =
  | { readonly status: 'Success'; readonly replayOf: string | undefined }
  | { readonly status: 'CustomerNotSubscribed' }
  | { readonly status: 'DuplicateRecord' };

/**
 * A record's status: `CustomerNotSubscribed` when its buyer is unknown for the product or has no active
 * agreement; for an earlier record of the same customer, dimension and hour, `Success` with its id when the
 * quantity is the same (identical requests are idempotent) and `DuplicateRecord` when it differs; else a new
 * `Success`.
 * @see docs/aws-rules.md §2.3, §2.5 (UsageRecordResult)
 */
export function recordStatus(
  record: BatchUsageRecord,
  customer: SaasCustomer | undefined,
  before: BatchHourEntry | undefined,
): RecordStatus {
  if (customer === undefined || !customer.subscribed) return { status: 'CustomerNotSubscribed' };
  if (before === undefined) return { status: 'Success', replayOf: undefined };
  return before.quantity === record.quantity
    ? { status: 'Success', replayOf: before.meteringRecordId }
    : { status: 'DuplicateRecord' };
}

/** The once-per-hour key of a record: product, customer (by license), dimension, UTC hour. */
export function batchHourKey(productCode: string, customer: SaasCustomer, record: BatchUsageRecord): string {
  return JSON.stringify([
    productCode,
    customer.licenseArn,
    record.dimension,
    hourStartMs(record.timestampMs),
  ]);
}
