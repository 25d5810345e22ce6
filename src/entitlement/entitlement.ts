/**
 * Entitlement as the sidecar lives it: established once at startup (RegisterUsage with a verified token, a
 * MeterUsage DryRun per dimension, or nothing), then read by intake (whether usage is admitted), readiness, the
 * status view, and an app asking for proof. Everything is answered as values; intake maps them to HTTP.
 * @see docs/entitlement.md
 */
import type { MarketplaceMeteringClient } from '@aws-sdk/client-marketplace-metering';
import type { Clock } from '../clock.js';
import type { Config } from '../config.js';
import { CODES, NotEntitledError } from '../errors.js';
import type { Logger } from '../log.js';
import {
  DryRunCheck,
  RegisterUsageCheck,
  awaitEntitlement,
  type EntitlementCheck,
  type EntitlementProof,
} from './check.js';

/** Shortest interval between two app-requested entitlement proofs (RegisterUsage calls). */
export const PROOF_INTERVAL_MS = 5_000;

/** Entitlement as the app and operators see it. */
export type EntitlementState = 'pending' | 'entitled' | 'not-entitled' | 'disabled';

/** Whether usage may be accepted now. */
export type Admission = { readonly admitted: true } | { readonly admitted: false; readonly message: string };

/** The pending admission's message, before the check has started and while it runs. */
const PENDING_MESSAGE = 'the entitlement check has not finished; retry shortly';

/** What entitlement answers before its policy is built (the agent builds it once the SDK clients exist). */
export const NOT_STARTED = Object.freeze({
  state: 'pending',
  readiness: Object.freeze({ ok: false, reason: 'pending: the entitlement check has not started' }),
  admission: Object.freeze({ admitted: false, message: PENDING_MESSAGE }),
  view: (mode: string): Record<string, unknown> => ({ state: 'pending', mode }),
});

/** The answer to an app's request for proof (`POST /v1/entitlement`). */
export type ProofResult =
  | {
      readonly kind: 'proved';
      readonly token: string;
      readonly claims: unknown;
      readonly verified: boolean;
      readonly nonce: string;
      readonly checkedAt: string;
    }
  /** The mode is not `register-usage`: there is no token to give. */
  | { readonly kind: 'notApplicable'; readonly message: string }
  /** Entitlement is not established (yet, or at all). */
  | { readonly kind: 'notEntitled'; readonly message: string }
  /** Another proof was made too recently: RegisterUsage's quota is shared by the whole account. */
  | { readonly kind: 'tooSoon'; readonly message: string }
  /** AWS could not be reached; retry later. */
  | { readonly kind: 'unavailable'; readonly message: string }
  /** RegisterUsage refused, or its token did not verify. */
  | { readonly kind: 'refused'; readonly message: string };

/** Options of {@link Entitlement}. */
export interface EntitlementOptions {
  readonly config: Pick<
    Config,
    | 'entitlement'
    | 'productCode'
    | 'publicKeyVersion'
    | 'publicKeyPem'
    | 'dimensions'
    | 'entitlementRetrySeconds'
  >;
  /** The client for entitlement calls (SDK retries allowed). */
  readonly client: MarketplaceMeteringClient;
  readonly clock: Clock;
  readonly logger: Logger;
  /** The embedded emulator's key in local mode, asked for only when RegisterUsage is checked. */
  readonly localPublicKeyPem: () => string | undefined;
}

/** The entitlement of this task or pod; see the module comment. */
export class Entitlement {
  readonly #options: EntitlementOptions;
  #state: EntitlementState = 'pending';
  #reason = 'the entitlement check has not started';
  #checkedAtMs: number | undefined;
  #proof: EntitlementProof | undefined;
  #registerUsage: RegisterUsageCheck | undefined;
  #proving = false;
  #lastProofAtMs = -Infinity;

  constructor(options: EntitlementOptions) {
    this.#options = options;
  }

  /** Where entitlement stands. */
  get state(): EntitlementState {
    return this.#state;
  }

  /** Established (or not required). */
  get established(): boolean {
    return this.#state === 'entitled' || this.#state === 'disabled';
  }

  /** For readiness: established, or why not. */
  readiness(): { ok: boolean; reason?: string } {
    return this.established ? { ok: true } : { ok: false, reason: `${this.#state}: ${this.#reason}` };
  }

  /** Whether intake may accept usage as far as entitlement goes. */
  admission(): Admission {
    if (this.established) return { admitted: true };
    return {
      admitted: false,
      message: this.#state === 'pending' ? PENDING_MESSAGE : 'the buyer is not entitled to this product',
    };
  }

  /** What `GET /v1/entitlement` and the status show: the state, and the token once there is one. */
  view(): Record<string, unknown> {
    const proof = this.#proof;
    return {
      state: this.#state,
      mode: this.#options.config.entitlement,
      checkedAt: this.#checkedAtMs === undefined ? null : new Date(this.#checkedAtMs).toISOString(),
      ...(this.#state === 'pending' || this.#state === 'not-entitled' ? { reason: this.#reason } : {}),
      ...(proof !== undefined
        ? {
            token: proof.token,
            claims: proof.claims,
            verified: proof.verified,
            ...(proof.keyRotatedAt ? { keyRotatedAt: proof.keyRotatedAt.toISOString() } : {}),
          }
        : {}),
    };
  }

  /**
   * The entitlement step of startup: `register-usage` and `dry-run` retry throttling, 5xx and network errors
   * within METERING_ENTITLEMENT_RETRY_SECONDS, stopping early at `signal`.
   * @throws NotEntitledError on any other answer (exit 77).
   * @throws AwsUnavailableError when the budget runs out or `signal` aborts (exit 69).
   */
  async establish(signal: AbortSignal): Promise<void> {
    const { config, clock } = this.#options;
    const log = this.#options.logger;
    if (config.entitlement === 'none') {
      this.#settle('disabled');
      log.info({ mode: 'none' }, 'entitlement check disabled (METERING_ENTITLEMENT=none)');
      return;
    }
    const check = this.#check();
    this.#reason = `waiting for ${config.entitlement === 'register-usage' ? 'RegisterUsage' : 'MeterUsage DryRun'}`;
    try {
      const result = await awaitEntitlement(check, {
        clock,
        budgetMs: config.entitlementRetrySeconds * 1000,
        signal,
        onRetry: (failure, attempt, nextAtMs) => {
          this.#reason = `AWS unavailable (${failure.code}) on attempt ${attempt}; retrying at ${new Date(nextAtMs).toISOString()}`;
          log.warn(
            { code: failure.code, attempt, retryAt: new Date(nextAtMs).toISOString() },
            'entitlement check failed for now; retrying',
          );
        },
      });
      this.#proof = result.proof;
      this.#settle('entitled');
      log.info({ mode: config.entitlement, verified: result.proof?.verified }, 'entitled');
      if (result.proof?.keyRotatedAt !== undefined) {
        log.warn(
          { code: CODES.publicKeyRotated, keyRotatedAt: result.proof.keyRotatedAt.toISOString() },
          `public key version ${config.publicKeyVersion} has expired: get the new key and version from the AWS Marketplace Management Portal and update METERING_PUBLIC_KEY_VERSION and the key`,
        );
      }
    } catch (err) {
      if (err instanceof NotEntitledError) this.#settle('not-entitled', err.message);
      throw err;
    }
  }

  /**
   * A fresh RegisterUsage with the app's nonce, so the app can verify the token itself: at most one every
   * {@link PROOF_INTERVAL_MS}, since RegisterUsage's 5 requests/s quota (docs/aws-rules.md §3.5) is shared by
   * every task of the buyer's account and a looping app must not starve other startups.
   */
  async prove(nonce: string, signal: AbortSignal): Promise<ProofResult> {
    if (this.#registerUsage === undefined) {
      return {
        kind: 'notApplicable',
        message: `the sidecar runs with METERING_ENTITLEMENT=${this.#options.config.entitlement}; proof comes from RegisterUsage (register-usage)`,
      };
    }
    if (this.#state !== 'entitled') return { kind: 'notEntitled', message: this.#reason };
    const nowMs = this.#options.clock.monotonicMs(); // a wall clock stepping back must not block proofs
    if (this.#proving || nowMs - this.#lastProofAtMs < PROOF_INTERVAL_MS) {
      return {
        kind: 'tooSoon',
        message: `at most one entitlement proof every ${PROOF_INTERVAL_MS / 1000} s; retry later`,
      };
    }
    this.#proving = true;
    this.#lastProofAtMs = nowMs;
    try {
      const result = await this.#registerUsage.prove(nonce, signal);
      if (result.kind === 'entitled' && result.proof !== undefined) {
        const { token, claims, verified } = result.proof;
        const checkedAt = new Date(this.#options.clock.now()).toISOString();
        return { kind: 'proved', token, claims, verified, nonce, checkedAt };
      }
      const failure =
        result.kind === 'entitled'
          ? { kind: 'notEntitled', code: CODES.tokenMissing, message: 'no token' }
          : result;
      this.#options.logger.error({ code: failure.code }, `entitlement proof failed: ${failure.message}`);
      return failure.kind === 'unavailable'
        ? { kind: 'unavailable', message: `AWS unavailable (${failure.code}); retry later` }
        : { kind: 'refused', message: `RegisterUsage refused (${failure.code}): ${failure.message}` };
    } finally {
      this.#proving = false;
    }
  }

  /** The check of the configured mode (not `none`). */
  #check(): EntitlementCheck {
    const { config, client, clock } = this.#options;
    if (config.entitlement === 'dry-run') {
      return new DryRunCheck(client, {
        productCode: config.productCode,
        dimensions: config.dimensions ?? [],
        clock,
      });
    }
    // The emulator makes its signing key on first use: only ask for it when RegisterUsage will be checked.
    const publicKeyPem = config.publicKeyPem ?? this.#options.localPublicKeyPem();
    if (publicKeyPem === undefined) {
      this.#options.logger.warn(
        { code: CODES.publicKeyMissing },
        'no product public key configured (METERING_PUBLIC_KEY or METERING_PUBLIC_KEY_FILE): the RegisterUsage token is accepted without verifying its signature',
      );
    }
    this.#registerUsage = new RegisterUsageCheck(client, {
      productCode: config.productCode,
      publicKeyVersion: config.publicKeyVersion,
      publicKeyPem,
    });
    return this.#registerUsage;
  }

  #settle(state: EntitlementState, reason?: string): void {
    this.#state = state;
    this.#checkedAtMs = this.#options.clock.now();
    if (reason !== undefined) this.#reason = reason;
  }
}
