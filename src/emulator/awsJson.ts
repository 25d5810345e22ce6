/**
 * AWS JSON 1.1 wire rules for the Marketplace Metering emulator: how a request names its operation
 * (`x-amz-target`), who sent it (the SigV4 credential scope in `authorization`), and how an error is
 * answered (status code, `x-amzn-errortype`, `{"__type","message"}` body). Pure functions only, so the
 * HTTP server in `emulator.ts` stays a thin shell and these rules can be unit-tested without sockets.
 *
 * References: `§` numbers are sections of docs/aws-rules.md, the AWS rules with their public sources.
 * @see docs/aws-rules.md §1.3 (request format), §1.4 (success), §1.5 (errors)
 */

/**
 * JSON target prefix: every operation arrives as `x-amz-target: AWSMPMeteringService.<Operation>`.
 * @see docs/aws-rules.md §1.1, §1.3
 */
export const TARGET_PREFIX = 'AWSMPMeteringService';

/**
 * SigV4 signing name of the service; the credential scope of a genuine request ends in
 * `/<region>/aws-marketplace/aws4_request` (not `marketplace-metering`).
 * @see docs/aws-rules.md §1.1, §1.3 (the authorization header the JS SDK sends)
 */
export const SIGNING_NAME = 'aws-marketplace';

/**
 * Content type of every request and response body.
 * @see docs/aws-rules.md §1.3, §1.4
 */
export const JSON_CONTENT_TYPE = 'application/x-amz-json-1.1';

/** SigV4 algorithm name that opens the `authorization` header. */
const SIGV4_ALGORITHM = 'AWS4-HMAC-SHA256';

/** Error names AWS answers with 403: authentication problems, not request problems. */
const FORBIDDEN_ERRORS: ReadonlySet<string> = new Set([
  'MissingAuthenticationTokenException',
  'IncompleteSignatureException',
  'InvalidSignatureException',
]);

/**
 * An AWS error answer: `name` becomes both `__type` in the body and the `x-amzn-errortype` header.
 * The JS SDK maps `name` to its exported exception class when the name is modeled (§1.5).
 */
export interface ServiceError {
  readonly name: string;
  readonly message: string;
}

/** Outcome of {@link parseTarget}: the operation name, or the error to answer. */
export type TargetResult =
  | { readonly kind: 'operation'; readonly operation: string }
  | { readonly kind: 'error'; readonly operation: string; readonly error: ServiceError };

/**
 * Reads the operation name from an `x-amz-target` header value.
 *
 * Succeeds when the value is `AWSMPMeteringService.<Name>` with a non-empty alphanumeric `<Name>`; whether
 * `<Name>` is an operation the emulator implements is decided by the caller's dispatch table. Any other
 * value (absent, wrong prefix, empty name) yields `UnknownOperationException`, and `operation` carries the
 * raw header value (or `''`) so the call can still be logged.
 */
export function parseTarget(header: string | undefined): TargetResult {
  const raw = header ?? '';
  const prefix = `${TARGET_PREFIX}.`;
  const name = raw.startsWith(prefix) ? raw.slice(prefix.length) : '';
  if (/^[A-Za-z][A-Za-z0-9]*$/.test(name)) return { kind: 'operation', operation: name };
  return { kind: 'error', operation: raw, error: unknownOperation(raw) };
}

/**
 * Error for a target the emulator does not serve (also used by the dispatch table for well-formed
 * targets naming an operation it does not implement).
 */
export function unknownOperation(target: string): ServiceError {
  return {
    name: 'UnknownOperationException',
    message:
      target === ''
        ? `Missing x-amz-target header; expected ${TARGET_PREFIX}.<Operation>.`
        : `Operation ${JSON.stringify(target)} is not served by this emulator; expected ${TARGET_PREFIX}.<Operation>.`,
  };
}

/** The parts of a SigV4 credential scope `<AKID>/<yyyymmdd>/<region>/<service>/aws4_request`. */
export interface SigV4Credential {
  readonly accessKeyId: string;
  readonly date: string;
  readonly region: string;
  readonly service: string;
}

/** Outcome of {@link parseAuthorization}. */
export type AuthorizationResult =
  | { readonly kind: 'credential'; readonly credential: SigV4Credential }
  | { readonly kind: 'error'; readonly error: ServiceError };

/**
 * Extracts the credential scope from a SigV4 `authorization` header without verifying the signature.
 *
 * - absent or empty header: `MissingAuthenticationTokenException`;
 * - not `AWS4-HMAC-SHA256 Credential=<AKID>/<date>/<region>/<service>/aws4_request, ...`:
 *   `IncompleteSignatureException`;
 * - otherwise the parsed scope, whatever its service (see {@link authenticate} for the service check).
 */
export function parseAuthorization(header: string | undefined): AuthorizationResult {
  if (header === undefined || header.trim() === '') {
    return {
      kind: 'error',
      error: {
        name: 'MissingAuthenticationTokenException',
        message: 'Missing Authentication Token: sign the request with SigV4 (any credentials work here).',
      },
    };
  }
  const match =
    /^AWS4-HMAC-SHA256\s+Credential=([^/\s,]+)\/(\d{8})\/([^/\s,]+)\/([^/\s,]+)\/aws4_request\s*,/.exec(
      header.trim(),
    );
  if (match === null) {
    return {
      kind: 'error',
      error: {
        name: 'IncompleteSignatureException',
        message: `Authorization header must look like "${SIGV4_ALGORITHM} Credential=<AKID>/<yyyymmdd>/<region>/${SIGNING_NAME}/aws4_request, SignedHeaders=..., Signature=...".`,
      },
    };
  }
  const [, accessKeyId = '', date = '', region = '', service = ''] = match;
  return { kind: 'credential', credential: { accessKeyId, date, region, service } };
}

/** Outcome of {@link authenticate}: the caller identity (access key id), or the error to answer. */
export type AuthenticationResult =
  | { readonly kind: 'identity'; readonly identity: string; readonly region: string }
  | { readonly kind: 'error'; readonly identity: string | undefined; readonly error: ServiceError };

/**
 * Decides who sent a request. The identity is the access key id of the SigV4 credential scope: AWS
 * deduplicates MeterUsage per ECS task / EKS pod, i.e. per task-role session, and the emulator stands in
 * for that with the key id. A scope whose service is not `aws-marketplace` yields
 * `InvalidSignatureException` (the identity is still reported so the call can be logged).
 * @see docs/aws-rules.md §3.1 (deduplication key), §1.3 (authorization header)
 */
export function authenticate(header: string | undefined): AuthenticationResult {
  const parsed = parseAuthorization(header);
  if (parsed.kind === 'error') return { kind: 'error', identity: undefined, error: parsed.error };
  const { accessKeyId, service, region } = parsed.credential;
  if (service !== SIGNING_NAME) {
    return {
      kind: 'error',
      identity: accessKeyId,
      error: {
        name: 'InvalidSignatureException',
        message: `Credential should be scoped to correct service: '${SIGNING_NAME}', not '${service}'.`,
      },
    };
  }
  return { kind: 'identity', identity: accessKeyId, region };
}

/**
 * The answer to a request signed for `signingRegion` that reaches an emulator standing for `region`, or
 * `undefined` when they are the same. A container that hard-codes a Region gets its operation's modeled error:
 * `InvalidEndpointRegionException` for MeterUsage ("The Region of the Metering Service endpoint and the AWS
 * Region of the resource must match") and `InvalidRegionException` for RegisterUsage ("must be called in the
 * same AWS Region the ECS task was launched in"). The SaaS operations model neither, so a credential scoped to
 * another Region is refused as AWS's front door refuses it, 403 `InvalidSignatureException`.
 * @see docs/aws-rules.md §2.6, §3.9
 */
export function regionError(
  operation: string,
  signingRegion: string,
  region: string,
): ServiceError | undefined {
  if (signingRegion === region) return undefined;
  const why = `the request is signed for ${signingRegion}, but this endpoint is in ${region}`;
  switch (operation) {
    case 'MeterUsage':
      return {
        name: 'InvalidEndpointRegionException',
        message: `The endpoint being called is in a Region different from your ECS task or EKS pod: ${why}. Take the Region from the platform (AWS_REGION), never hard-code it.`,
      };
    case 'RegisterUsage':
      return {
        name: 'InvalidRegionException',
        message: `RegisterUsage must be called in the same Region the ECS task or EKS pod was launched in: ${why}.`,
      };
    default:
      return {
        name: 'InvalidSignatureException',
        message: `Credential should be scoped to a valid region: ${why}.`,
      };
  }
}

/**
 * Best-effort identity for logging a call that is answered before authentication (injected faults).
 * Returns the access key id when the header parses, else `undefined`.
 */
export function identityForLog(header: string | undefined): string | undefined {
  const parsed = parseAuthorization(header);
  return parsed.kind === 'credential' ? parsed.credential.accessKeyId : undefined;
}

/**
 * HTTP status for an error name: 500 for `InternalServiceErrorException` (the only server fault the
 * service models, and a status the SDK retries), 403 for authentication errors, 413 for
 * `RequestEntityTooLargeException`, and 400 for everything else (every modeled client error, including
 * `ThrottlingException`, which the SDK retries by name).
 * @see docs/aws-rules.md §1.5 (status per error), §1.6 (retries), §2.6 (error table)
 */
export function httpStatusFor(errorName: string): number {
  if (errorName === 'InternalServiceErrorException') return 500;
  if (errorName === 'RequestEntityTooLargeException') return 413;
  if (FORBIDDEN_ERRORS.has(errorName)) return 403;
  return 400;
}

/**
 * Serializes an error body exactly as the SDK parses it: `{"__type":"<Name>","message":"..."}`.
 * @see docs/aws-rules.md §1.5
 */
export function errorBody(error: ServiceError): string {
  return JSON.stringify({ __type: error.name, message: error.message });
}

/**
 * A `ValidationException` in AWS's wording ("1 validation error detected: Value ... at 'member' failed to
 * satisfy constraint: ..."), for a request member that breaks a model constraint (type, length, range,
 * pattern). `path` is the member path in AWS's lower-camel form (`productCode`, `usageAllocations.1.tags`);
 * an absent `value` is shown as `null`, as AWS does.
 * @see docs/aws-rules.md §2.5, §2.6 (ValidationException is not modeled but is what AWS answers)
 */
export function validationError(path: string, value: unknown, constraint: string): ServiceError {
  const shown = value === undefined ? 'null' : JSON.stringify(value);
  return {
    name: 'ValidationException',
    message: `1 validation error detected: Value ${shown} at '${path}' failed to satisfy constraint: ${constraint}`,
  };
}

/**
 * Reads a member of a decoded JSON request, treating JSON `null` like an absent member (the SDK omits
 * both, so the service cannot tell them apart).
 */
export function readMember(input: Readonly<Record<string, unknown>>, name: string): unknown {
  const value = input[name];
  return value === null ? undefined : value;
}

/**
 * True when `name` can be sent as an AWS error name: a letter followed by letters and digits (it is
 * copied into the `x-amzn-errortype` header, so nothing else is allowed).
 */
export function isErrorName(name: string): boolean {
  return /^[A-Za-z][A-Za-z0-9]{0,127}$/.test(name);
}

/**
 * The JSON value of a request body, or `undefined` when it is not JSON (the AWS path answers
 * `SerializationException`, the control surface 400). Plain `JSON.parse`: the emulator models the service,
 * not the sidecar's stricter intake.
 */
export function decodeJson(text: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return undefined;
  }
}
