/**
 * Sending sealed records with MeterUsage. {@link MeteringSender} is the only place that knows AWS error names:
 * {@link classify} maps every outcome to a {@link SendResult} value, so the scheduler decides what happens to
 * the record (sent, retried, carried or failed) without ever seeing an exception for a service error.
 */
import { MeterUsageCommand, type MarketplaceMeteringClient } from '@aws-sdk/client-marketplace-metering';
import type { MeterUsageRequest } from '../ledger/hours.js';
import { errorMessage, errorName, httpStatusOf } from './awsErrors.js';
import { withConnectionEvidence } from './connection.js';

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

/** Options of one {@link Sender.send}. */
export interface SendOptions {
  readonly signal?: AbortSignal;
  /**
   * Called synchronously once the request is about to leave for AWS (credentials resolved, request signed),
   * before any byte can reach AWS; not called when the send fails earlier. The scheduler marks the record in
   * flight here. An exception it throws ends the send and is rethrown by `send`.
   */
  readonly onRequest?: () => void;
}

/**
 * Sends one stored request. Never throws for service or network errors; resolves with a {@link SendResult}.
 * Rejects only with what `onRequest` threw.
 */
export interface Sender {
  send(request: MeterUsageRequest, options?: SendOptions): Promise<SendResult>;
}

/** Metering record id reported for a DryRun send, which AWS answers without recording anything. */
export const DRY_RUN_RECORD_ID = 'dry-run';

/**
 * {@link Sender} over the real SDK client. The client must come from `createSendClient`: one HTTP attempt
 * per send on a fresh connection, through agents that report whether the connection was made, which is what
 * {@link classify} needs to tell an undelivered request from one AWS may have recorded.
 */
export class MeteringSender implements Sender {
  readonly #client: MarketplaceMeteringClient;
  readonly #onEvidenceLost: (() => void) | undefined;
  /** False once a send succeeded without a reported connection: then no failure is taken as undelivered. */
  #evidenceTrusted = true;

  /** @param onEvidenceLost Told once if connection reports stop arriving (a client not made for sending). */
  constructor(client: MarketplaceMeteringClient, onEvidenceLost?: () => void) {
    this.#client = client;
    this.#onEvidenceLost = onEvidenceLost;
  }

  async send(request: MeterUsageRequest, options: SendOptions = {}): Promise<SendResult> {
    const { signal, onRequest } = options;
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
    let hookFailure: { error: unknown } | undefined;
    const outcome = await withConnectionEvidence(
      () => this.#client.send(command, signal ? { abortSignal: signal } : {}),
      onRequest &&
        ((): void => {
          try {
            onRequest();
          } catch (error) {
            hookFailure = { error };
            throw error;
          }
        }),
    );
    if (hookFailure !== undefined) throw hookFailure.error;
    if (outcome.ok) {
      if (!outcome.connected) this.#loseEvidence();
      return {
        status: 'accepted',
        meteringRecordId: outcome.value.MeteringRecordId ?? (request.DryRun ? DRY_RUN_RECORD_ID : ''),
      };
    }
    const connected = outcome.connected || !this.#evidenceTrusted;
    return classify(outcome.error, { dryRun: request.DryRun === true, connected });
  }

  #loseEvidence(): void {
    if (!this.#evidenceTrusted) return;
    // A success proves a connection: without its report, a later failure could be a request AWS recorded.
    this.#evidenceTrusted = false;
    this.#onEvidenceLost?.();
  }
}

/** What {@link classify} knows besides the error. */
export interface SendContext {
  /** The request was a DryRun. */
  readonly dryRun: boolean;
  /**
   * A connection to AWS was established for the request (for HTTPS, with a verified TLS handshake). Without
   * one, AWS cannot have seen the request, whatever the error: DNS, a refused or timed-out connect, a TLS
   * failure, or credentials that could not be fetched (from STS, IMDS or the ECS agent) before any request.
   */
  readonly connected: boolean;
}

/**
 * Maps an error from MeterUsage to a {@link SendResult}. Each send is one HTTP attempt (the sender's client
 * makes no SDK retries), so the outcome of every attempt is known. The policy, from docs/aws-rules.md and the
 * hour rules of docs/metering.md:
 *
 * | error                                                                 | result      | record becomes |
 * |-----------------------------------------------------------------------|-------------|----------------|
 * | anything, when no connection was made (DNS, refused or timed-out connect, TLS handshake or certificate, credential lookup, including an STS 5xx) | retryable | pending (backoff) |
 * | ThrottlingException, any other 4xx not named below (expired or unrecognised credentials, access denied, clock skew) | retryable | pending (backoff) |
 * | InternalServiceErrorException and other 5xx, resets and timeouts after the connection was made, a 2xx whose body was cut off | retryable, maybe delivered | pending (backoff) |
 * | DuplicateRequestException (AWS holds another quantity for the hour)   | duplicate   | failed + alert |
 * | TimestampOutOfBoundsException                                         | expired     | carried        |
 * | InvalidUsageDimension, InvalidTag, InvalidUsageAllocations, CustomerNotEntitled, InvalidEndpointRegion, InvalidProductCode, IdempotencyConflict | rejected | failed |
 * | DryRunOperation on a DryRun request                                   | accepted    | sent           |
 *
 * `maybeDelivered` is false only when AWS cannot have recorded the request: no connection was made, or AWS
 * answered with a throttle or a 4xx refusal. A record that may have been delivered is never carried.
 */
export function classify(err: unknown, context: SendContext): SendResult {
  const error = toSendError(err);
  const name = error.name;
  if (!context.connected) return { status: 'retryable', error, maybeDelivered: false };
  if (context.dryRun && name === 'DryRunOperation')
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
  // A reset, timeout or abort after the connection was made, or anything else without an answer: the request
  // may have been written and recorded.
  return { status: 'retryable', error, maybeDelivered: true };
}

function toSendError(err: unknown): SendError {
  return { name: errorName(err), message: errorMessage(err), httpStatus: httpStatusOf(err) };
}
