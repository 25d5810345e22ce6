/**
 * Reading an error from the AWS SDK: its name (the AWS error name, or the Node.js network code such as
 * `ECONNRESET` when there was no HTTP answer) and its HTTP status. Shared by every classifier.
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
