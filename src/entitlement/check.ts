/**
 * Entitlement at startup. A paid container product must not run for a buyer who is not subscribed
 * (docs/aws-rules.md §3.10: terminate on any startup error other than throttling). Three modes:
 * `register-usage` calls RegisterUsage with a fresh random nonce and verifies the signed token;
 * `dry-run` calls MeterUsage with DryRun=true for every configured dimension; `none` does nothing.
 * Checks return an {@link EntitlementResult} value; {@link awaitEntitlement} retries the transient ones.
 */
import { randomUUID } from 'node:crypto';
import {
  MeterUsageCommand,
  RegisterUsageCommand,
  type MarketplaceMeteringClient,
} from '@aws-sdk/client-marketplace-metering';
import { sleepUntil, type Clock } from '../clock.js';
import { AwsUnavailableError, CODES, NotEntitledError, tokenErrorCode } from '../errors.js';
import { classifyStartupError, isDryRunPass, type StartupFailure } from '../send/awsErrors.js';
import {
  decodeEntitlementToken,
  checkClaims,
  verifyEntitlementToken,
  type ExpectedClaims,
  type TokenClaims,
  type TokenVerification,
} from './token.js';

/** Proof of entitlement from RegisterUsage. */
export interface EntitlementProof {
  /** The signed token as AWS returned it. */
  readonly token: string;
  readonly claims: TokenClaims;
  /** True when the signature was verified with the configured public key. */
  readonly verified: boolean;
  readonly nonce: string;
  /** Set when AWS reports that the public key version has expired. */
  readonly keyRotatedAt: Date | undefined;
}

/** The outcome of one entitlement check. */
export type EntitlementResult =
  | { readonly kind: 'entitled'; readonly proof: EntitlementProof | undefined }
  /** Terminate (`notEntitled`: not entitled, or the answer cannot be trusted) or retry (`unavailable`). */
  | StartupFailure;

/** One entitlement check; never throws for AWS or network errors. */
export interface EntitlementCheck {
  check(signal?: AbortSignal): Promise<EntitlementResult>;
}

/** What the operator should check when entitlement is refused. */
export const OPERATOR_HINT =
  "check the buyer's subscription, the IAM task role (ECS) or IRSA role (EKS) allowing aws-marketplace:RegisterUsage and aws-marketplace:MeterUsage, AWS_REGION, METERING_PRODUCT_CODE and the public key";

/** RegisterUsage with a fresh nonce, and verification of the returned token. */
export class RegisterUsageCheck implements EntitlementCheck {
  readonly #client: MarketplaceMeteringClient;
  readonly #productCode: string;
  readonly #publicKeyVersion: number;
  readonly #publicKeyPem: string | undefined;

  constructor(
    client: MarketplaceMeteringClient,
    options: { productCode: string; publicKeyVersion: number; publicKeyPem: string | undefined },
  ) {
    this.#client = client;
    this.#productCode = options.productCode;
    this.#publicKeyVersion = options.publicKeyVersion;
    this.#publicKeyPem = options.publicKeyPem;
  }

  /** Checks with a cryptographically random nonce. */
  check(signal?: AbortSignal): Promise<EntitlementResult> {
    return this.prove(randomUUID(), signal);
  }

  /**
   * Calls RegisterUsage with `nonce` and verifies the token against the configured key: signature, product
   * code, key version and nonce. Without a key, only the claims are checked (the caller warns once).
   */
  async prove(nonce: string, signal?: AbortSignal): Promise<EntitlementResult> {
    let output;
    try {
      output = await this.#client.send(
        new RegisterUsageCommand({
          ProductCode: this.#productCode,
          PublicKeyVersion: this.#publicKeyVersion,
          Nonce: nonce,
        }),
        signal ? { abortSignal: signal } : {},
      );
    } catch (err) {
      return classifyStartupError(err);
    }
    const token = output.Signature;
    if (typeof token !== 'string' || token === '') {
      return {
        kind: 'notEntitled',
        code: CODES.tokenMissing,
        message: 'RegisterUsage returned no signature',
      };
    }
    const expected: ExpectedClaims = {
      productCode: this.#productCode,
      publicKeyVersion: this.#publicKeyVersion,
      nonce,
    };
    // With the product key: signature and claims. Without it (a warning was logged): the claims only.
    const verification =
      this.#publicKeyPem !== undefined
        ? verifyEntitlementToken(token, this.#publicKeyPem, expected)
        : verifyClaimsOnly(token, expected);
    if (!verification.valid) {
      return {
        kind: 'notEntitled',
        code: tokenErrorCode(verification.problem),
        message: `the RegisterUsage token is not valid: ${verification.message}`,
      };
    }
    const claims = verification.claims;
    return {
      kind: 'entitled',
      proof: {
        token,
        claims,
        verified: this.#publicKeyPem !== undefined,
        nonce,
        keyRotatedAt: output.PublicKeyRotationTimestamp,
      },
    };
  }
}

/** Decodes a token and checks its claims, without a key to verify the signature with. */
function verifyClaimsOnly(token: string, expected: ExpectedClaims): TokenVerification {
  const decoded = decodeEntitlementToken(token);
  return decoded.valid ? checkClaims(decoded.claims, expected) : decoded;
}

/**
 * MeterUsage with DryRun=true for every dimension (custom-metering products). Success, a `DryRunOperation`
 * error, or a `DuplicateRequestException` (the hour already has a record: the request was authorised) all
 * count as entitled. @see docs/aws-rules.md §3.4
 */
export class DryRunCheck implements EntitlementCheck {
  readonly #client: MarketplaceMeteringClient;
  readonly #productCode: string;
  readonly #dimensions: readonly string[];
  readonly #clock: Clock;

  constructor(
    client: MarketplaceMeteringClient,
    options: { productCode: string; dimensions: readonly string[]; clock: Clock },
  ) {
    this.#client = client;
    this.#productCode = options.productCode;
    this.#dimensions = options.dimensions;
    this.#clock = options.clock;
  }

  async check(signal?: AbortSignal): Promise<EntitlementResult> {
    for (const dimension of this.#dimensions) {
      try {
        await this.#client.send(
          new MeterUsageCommand({
            ProductCode: this.#productCode,
            Timestamp: new Date(this.#clock.now()),
            UsageDimension: dimension,
            UsageQuantity: 0,
            DryRun: true,
          }),
          signal ? { abortSignal: signal } : {},
        );
      } catch (err) {
        if (isDryRunPass(err)) continue;
        const result = classifyStartupError(err);
        return { ...result, message: `dimension ${JSON.stringify(dimension)}: ${result.message}` };
      }
    }
    return { kind: 'entitled', proof: undefined };
  }
}

/** First delay of the startup retries; each retry doubles the ceiling, with full jitter. */
export const ENTITLEMENT_RETRY_BASE_MS = 1_000;

/** Largest delay between startup retries. */
export const ENTITLEMENT_RETRY_MAX_MS = 60_000;

/** Options of {@link awaitEntitlement}. */
export interface AwaitOptions {
  readonly clock: Clock;
  /** Give up when the next attempt would start after this long (AWS recommends 30 minutes). */
  readonly budgetMs: number;
  readonly random?: () => number;
  readonly signal?: AbortSignal;
  /** Told about each transient failure and when the next attempt is. */
  readonly onRetry?: (
    result: Extract<EntitlementResult, { kind: 'unavailable' }>,
    attempt: number,
    nextAtMs: number,
  ) => void;
}

/**
 * Runs `check` until it is conclusive: retries `unavailable` with exponential backoff and full jitter within
 * the budget. Resolves with the entitled result.
 * @throws NotEntitledError on `notEntitled` (exit 77).
 * @throws AwsUnavailableError when the budget runs out (exit 69), or when `signal` aborts.
 */
export async function awaitEntitlement(
  check: EntitlementCheck,
  options: AwaitOptions,
): Promise<Extract<EntitlementResult, { kind: 'entitled' }>> {
  const { clock, signal } = options;
  const random = options.random ?? Math.random;
  const deadlineMs = clock.now() + options.budgetMs;
  for (let attempt = 1; ; attempt++) {
    if (signal?.aborted)
      throw new AwsUnavailableError('startup was interrupted before entitlement was established');
    const result = await check.check(signal);
    if (result.kind === 'entitled') return result;
    // An abort during the check surfaces as a network error: stop here rather than wait out a backoff.
    if (signal?.aborted)
      throw new AwsUnavailableError('startup was interrupted before entitlement was established');
    if (result.kind === 'notEntitled') {
      throw new NotEntitledError(`entitlement refused (${result.code}): ${result.message}; ${OPERATOR_HINT}`);
    }
    const ceilingMs = Math.min(ENTITLEMENT_RETRY_MAX_MS, ENTITLEMENT_RETRY_BASE_MS * 2 ** (attempt - 1));
    const nextAtMs = clock.now() + Math.floor(random() * ceilingMs);
    if (nextAtMs > deadlineMs) {
      throw new AwsUnavailableError(
        `AWS Marketplace Metering was unreachable for ${Math.round(options.budgetMs / 1000)} s (last error ${result.code}: ${result.message}); check network access to the Region's metering endpoint and AWS_REGION`,
      );
    }
    options.onRetry?.(result, attempt, nextAtMs);
    await sleepUntil(clock, nextAtMs, signal);
  }
}
