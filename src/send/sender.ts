/**
 * Sending sealed records with MeterUsage. {@link MeteringSender} is the only place that knows AWS error names:
 * {@link classify} maps every outcome to a {@link SendResult} value, so the scheduler decides what happens to
 * the record (sent, retried, carried or failed) without ever seeing an exception for a service error.
 */
import { MeterUsageCommand, type MarketplaceMeteringClient } from '@aws-sdk/client-marketplace-metering';
import type { MeterUsageRequest } from '../ledger/hours.js';
import { errorMessage, errorName, httpStatusOf } from './awsErrors.js';

/** An AWS (or network) error reduced to what the ledger keeps and the logs show. */
export interface SendError {
  /** AWS error name (`ThrottlingException`) or network code (`ECONNRESET`, `TimeoutError`). */
  readonly name: string;
  readonly message: string;
  readonly httpStatus: number | undefined;
}

/** The outcome of one send. */
export type SendResult =
  /** AWS recorded it (or, with DryRun, would have). */
  | { readonly status: 'accepted'; readonly meteringRecordId: string }
  /** AWS already holds a different quantity for this dimension and hour: never resend; alert. */
  | { readonly status: 'duplicate'; readonly error: SendError }
  /** Try again later. `maybeDelivered`: the request may have reached AWS before the failure. */
  | { readonly status: 'retryable'; readonly error: SendError; readonly maybeDelivered: boolean }
  /** The Timestamp is outside the window AWS accepts: carry the quantity into the open hour. */
  | { readonly status: 'expired'; readonly error: SendError }
  /** AWS refused the record for good: keep it as failed with the error for a human. */
  | { readonly status: 'rejected'; readonly error: SendError };

/** Sends one stored request. Never throws for service or network errors; resolves with a {@link SendResult}. */
export interface Sender {
  send(request: MeterUsageRequest, signal?: AbortSignal): Promise<SendResult>;
}

/** Metering record id reported for a DryRun send, which AWS answers without recording anything. */
export const DRY_RUN_RECORD_ID = 'dry-run';

/** {@link Sender} over the real SDK client. */
export class MeteringSender implements Sender {
  readonly #client: MarketplaceMeteringClient;

  constructor(client: MarketplaceMeteringClient) {
    this.#client = client;
  }

  async send(request: MeterUsageRequest, signal?: AbortSignal): Promise<SendResult> {
    const command = new MeterUsageCommand({
      ProductCode: request.ProductCode,
      Timestamp: new Date(request.TimestampMs),
      UsageDimension: request.UsageDimension,
      UsageQuantity: request.UsageQuantity,
      ...(request.UsageAllocations
        ? {
            UsageAllocations: request.UsageAllocations.map((a) => ({
              AllocatedUsageQuantity: a.AllocatedUsageQuantity,
              ...(a.Tags ? { Tags: a.Tags.map((t) => ({ Key: t.Key, Value: t.Value })) } : {}),
            })),
          }
        : {}),
      ClientToken: request.ClientToken,
      ...(request.DryRun ? { DryRun: true } : {}),
    });
    try {
      const output = await this.#client.send(command, signal ? { abortSignal: signal } : {});
      return {
        status: 'accepted',
        meteringRecordId: output.MeteringRecordId ?? (request.DryRun ? DRY_RUN_RECORD_ID : ''),
      };
    } catch (err) {
      return classify(err, request.DryRun === true);
    }
  }
}

/** Network failures that happen before a request is written: AWS cannot have seen it. */
const NOT_DELIVERED_CODES = new Set([
  'ECONNREFUSED',
  'ENOTFOUND',
  'EAI_AGAIN',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENETDOWN',
  'CredentialsProviderError',
]);

/**
 * The SDK's connection timeout: the request never left (each send opens a fresh connection), unlike a
 * request timeout after the connection was made.
 */
const CONNECT_TIMEOUT = /did not establish a connection with the server/;

/**
 * Maps an error from MeterUsage to a {@link SendResult}. Each send is one HTTP attempt (the sender's client
 * makes no SDK retries), so the outcome of every attempt is known. The policy, from aws-metering-api.md §3.10
 * and the hour rules of DESIGN.md:
 *
 * | error                                                                 | result      | record becomes |
 * |-----------------------------------------------------------------------|-------------|----------------|
 * | ThrottlingException, connection refused, DNS, no credentials, any other 4xx not named below (expired or unrecognised credentials, access denied, clock skew) | retryable | pending (backoff) |
 * | InternalServiceErrorException and other 5xx, resets and timeouts after the request was written | retryable, maybe delivered | pending (backoff) |
 * | DuplicateRequestException (AWS holds another quantity for the hour)   | duplicate   | failed + alert |
 * | TimestampOutOfBoundsException                                         | expired     | carried        |
 * | InvalidUsageDimension, InvalidTag, InvalidUsageAllocations, CustomerNotEntitled, InvalidEndpointRegion, InvalidProductCode, IdempotencyConflict | rejected | failed |
 * | DryRunOperation on a DryRun request                                   | accepted    | sent           |
 *
 * `maybeDelivered` is false only when AWS cannot have recorded the request: a throttle or a 4xx refusal, or a
 * failure before the request was written. A record that may have been delivered is never carried.
 */
export function classify(err: unknown, dryRun: boolean): SendResult {
  const error = toSendError(err);
  const name = error.name;
  if (dryRun && name === 'DryRunOperation')
    return { status: 'accepted', meteringRecordId: DRY_RUN_RECORD_ID };
  switch (name) {
    case 'ThrottlingException':
      return { status: 'retryable', error, maybeDelivered: false };
    case 'DuplicateRequestException':
      return { status: 'duplicate', error };
    case 'TimestampOutOfBoundsException':
      return { status: 'expired', error };
    case 'InvalidUsageDimensionException':
    case 'InvalidTagException':
    case 'InvalidUsageAllocationsException':
    case 'CustomerNotEntitledException':
    case 'InvalidEndpointRegionException':
    case 'InvalidProductCodeException':
    case 'IdempotencyConflictException':
      return { status: 'rejected', error };
  }
  if (error.httpStatus !== undefined) {
    // A 4xx is AWS refusing the request whole. A 5xx may come after the record was stored, and a 2xx or 3xx
    // whose body was cut off or unreadable (the SDK then reports the error with that status) was accepted.
    const refused = error.httpStatus >= 400 && error.httpStatus < 500;
    return { status: 'retryable', error, maybeDelivered: !refused };
  }
  if (NOT_DELIVERED_CODES.has(name) || CONNECT_TIMEOUT.test(error.message)) {
    return { status: 'retryable', error, maybeDelivered: false };
  }
  // A reset, timeout or abort, or anything else without an HTTP answer: assume the worst.
  return { status: 'retryable', error, maybeDelivered: true };
}

function toSendError(err: unknown): SendError {
  return { name: errorName(err), message: errorMessage(err), httpStatus: httpStatusOf(err) };
}
