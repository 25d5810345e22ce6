/**
 * What AWS errors mean, in one place: reading an error from the AWS SDK (its AWS error name, or the Node.js code
 * when there was no HTTP answer, and its HTTP status), and the two classification tables side by side, one for
 * hourly sending ({@link classify}) and one for the entitlement check at startup ({@link classifyStartupError}).
 * Both decide by error name, code and HTTP status, and by whether a connection was made; never by message text.
 * @see docs/aws-rules.md §3.10
 */

/**
 * The AWS error name, or the Node.js error code when the request got no answer: a network code
 * (`ECONNREFUSED`, `EAI_AGAIN`), a TLS one (`DEPTH_ZERO_SELF_SIGNED_CERT`, `ERR_TLS_CERT_ALTNAME_INVALID`).
 */
export function errorName(err: unknown): string {
  const e = err as { name?: unknown; code?: unknown } | null | undefined;
  if (typeof e?.code === 'string' && NODE_ERROR_CODE.test(e.code)) return e.code;
  return typeof e?.name === 'string' ? e.name : 'UnknownError';
}

/** Node.js error codes: upper-case letters, digits and underscores (`EAI_AGAIN`, `ERR_SSL_WRONG_VERSION_NUMBER`). */
const NODE_ERROR_CODE = /^[A-Z][A-Z0-9_]*$/;

/** The HTTP status AWS answered with; undefined when no answer came. */
export function httpStatusOf(err: unknown): number | undefined {
  return (err as { $metadata?: { httpStatusCode?: number } } | null | undefined)?.$metadata?.httpStatusCode;
}

/** The error's message. */
export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

// ---- Sending --------------------------------------------------------------------------------------

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

/** AWS answered that the account's quota is used up (the fleet, not this record, is the cause). */
export function isThrottling(result: SendResult): boolean {
  return result.status === 'retryable' && result.error.name === 'ThrottlingException';
}

/** Metering record id reported for a DryRun send, which AWS answers without recording anything. */
export const DRY_RUN_RECORD_ID = 'dry-run';

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

// ---- Startup --------------------------------------------------------------------------------------

/** A failed entitlement check: terminate (`notEntitled`) or retry with backoff (`unavailable`). */
export type StartupFailure =
  | { readonly kind: 'notEntitled'; readonly code: string; readonly message: string }
  | { readonly kind: 'unavailable'; readonly code: string; readonly message: string };

/**
 * Maps a startup AWS error: throttling, internal errors, 5xx and network failures are `unavailable` (retry);
 * everything else is `notEntitled` (terminate). @see docs/aws-rules.md §3.10
 */
export function classifyStartupError(err: unknown): StartupFailure {
  const code = errorName(err);
  const message = errorMessage(err);
  const status = httpStatusOf(err);
  // No HTTP answer means a network failure, or credentials not (yet) served by the ECS agent or the IRSA
  // token file: both may heal within the budget. AWS's terminate rule is for its answers.
  const transient =
    code === 'ThrottlingException' ||
    code === 'InternalServiceErrorException' ||
    (status !== undefined && status >= 500) ||
    status === undefined;
  return transient ? { kind: 'unavailable', code, message } : { kind: 'notEntitled', code, message };
}

/**
 * Whether a MeterUsage DryRun at startup passed although the SDK threw: AWS answers a permitted DryRun with a
 * `DryRunOperation` error (or a 200), and `DuplicateRequestException` means the hour already holds this task's
 * record, so the request was authorised. @see docs/aws-rules.md §3.4
 */
export function isDryRunPass(err: unknown): boolean {
  const name = errorName(err);
  return name === 'DryRunOperation' || name === 'DuplicateRequestException';
}
