/**
 * The account's request quota, as AWS applies it: one token bucket per operation, shared by every task and pod
 * (every signing identity) of the account and Region. A call that finds its bucket empty is answered
 * `ThrottlingException` (400) and takes no effect. Off unless configured, so that existing tests and local
 * runs are never throttled.
 *
 * The rates are the emulator's own copy of AWS's published quotas, kept apart from the sidecar's on purpose:
 * the emulator is an independent oracle.
 * @see docs/aws-rules.md §3.5 (quotas), §2.6 (ThrottlingException)
 */

/** AWS's published rates per account and Region, in calls per second. */
export const AWS_QUOTAS: Readonly<Record<string, number>> = Object.freeze({
  MeterUsage: 10,
  RegisterUsage: 5,
  BatchMeterUsage: 10,
});

/** Largest rate accepted for one operation: far above AWS's, low enough to catch a typo. */
export const MAX_QUOTA_RATE = 100_000;

/** The message AWS answers a throttled call with. */
export const THROTTLED_MESSAGE = 'Rate exceeded';

/** Calls per second per operation; an operation left out is not limited. */
export type QuotaRates = Readonly<Record<string, number>>;

/**
 * A token bucket: `ratePerSecond` tokens a second, holding at most one second's worth (and at least one),
 * full at the start. Time comes from `nowMs`, which must not go back.
 */
export class TokenBucket {
  readonly #ratePerSecond: number;
  readonly #capacity: number;
  readonly #nowMs: () => number;
  #tokens: number;
  #atMs: number;

  constructor(ratePerSecond: number, nowMs: () => number) {
    this.#ratePerSecond = ratePerSecond;
    this.#capacity = Math.max(1, ratePerSecond);
    this.#nowMs = nowMs;
    this.#tokens = this.#capacity;
    this.#atMs = nowMs();
  }

  /** Takes one token if there is one; `false` means the call is throttled. */
  take(): boolean {
    const nowMs = this.#nowMs();
    const elapsedMs = Math.max(0, nowMs - this.#atMs);
    this.#tokens = Math.min(this.#capacity, this.#tokens + (elapsedMs / 1000) * this.#ratePerSecond);
    this.#atMs = nowMs;
    if (this.#tokens < 1) return false;
    this.#tokens -= 1;
    return true;
  }
}

/** Why `rates` cannot be a quota, or `undefined` when it can; `operations` are the ones that may be limited. */
export function quotaProblem(rates: unknown, operations: readonly string[]): string | undefined {
  if (typeof rates !== 'object' || rates === null || Array.isArray(rates)) {
    return 'A quota is an object of calls per second per operation, e.g. {"MeterUsage":1}.';
  }
  for (const [operation, rate] of Object.entries(rates)) {
    if (!operations.includes(operation)) {
      return `Unknown operation ${JSON.stringify(operation)} in the quota; the quota covers ${operations.join(', ')}.`;
    }
    if (typeof rate !== 'number' || !Number.isFinite(rate) || rate <= 0 || rate > MAX_QUOTA_RATE) {
      return `The quota of ${operation} must be a number of calls per second above 0 and at most ${MAX_QUOTA_RATE} (got ${JSON.stringify(rate)}).`;
    }
  }
  return undefined;
}

/** The account's buckets, one per limited operation. */
export class AccountQuota {
  readonly #nowMs: () => number;
  #rates: QuotaRates = {};
  #buckets = new Map<string, TokenBucket>();

  constructor(nowMs: () => number) {
    this.#nowMs = nowMs;
  }

  /** The rates in force; `{}` when nothing is limited. */
  get rates(): QuotaRates {
    return this.#rates;
  }

  /** Replaces the rates (already checked by {@link quotaProblem}); every bucket starts full. */
  set(rates: QuotaRates): void {
    this.#rates = Object.freeze({ ...rates });
    this.#buckets = new Map(
      Object.entries(this.#rates).map(([operation, rate]) => [operation, new TokenBucket(rate, this.#nowMs)]),
    );
  }

  /** Whether a call of `operation` may go ahead now (taking its token), or is throttled. */
  admit(operation: string): boolean {
    return this.#buckets.get(operation)?.take() ?? true;
  }
}

/**
 * Reads a quota as the `emulator` command takes it: `aws` (AWS's published rates), `off`, or
 * `Operation=rate` pairs separated by commas (`MeterUsage=1,RegisterUsage=5`).
 */
export function parseQuota(text: string): { rates: QuotaRates } | { problem: string } {
  const trimmed = text.trim();
  if (trimmed === 'aws') return { rates: AWS_QUOTAS };
  if (trimmed === 'off') return { rates: {} };
  const rates: Record<string, number> = {};
  for (const pair of trimmed.split(',')) {
    const match = /^\s*([A-Za-z]+)\s*=\s*([0-9.]+)\s*$/.exec(pair);
    if (match === null) {
      return {
        problem: `--quota takes aws, off or Operation=rate pairs such as MeterUsage=1 (got ${JSON.stringify(text)})`,
      };
    }
    rates[match[1]] = Number(match[2]);
  }
  const problem = quotaProblem(rates, Object.keys(AWS_QUOTAS));
  return problem === undefined ? { rates } : { problem };
}
