/**
 * Reading an error from the AWS SDK: its name (the AWS error name, or the Node.js network code such as
 * `ECONNRESET` when there was no HTTP answer) and its HTTP status. Shared by every classifier.
 */

/** The AWS error name, or the network error code (`ECONNREFUSED`, ...) when the request got no answer. */
export function errorName(err: unknown): string {
  const e = err as { name?: unknown; code?: unknown } | null | undefined;
  if (typeof e?.code === 'string' && /^E[A-Z]+$/.test(e.code)) return e.code;
  return typeof e?.name === 'string' ? e.name : 'UnknownError';
}

/** The HTTP status AWS answered with; undefined when no answer came. */
export function httpStatusOf(err: unknown): number | undefined {
  return (err as { $metadata?: { httpStatusCode?: number } } | null | undefined)?.$metadata?.httpStatusCode;
}

/** The error's message. */
export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
