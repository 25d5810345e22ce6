/**
 * Readiness (`/readyz`, the healthcheck command, intake's admission): entitlement established, the ledger
 * writable, the app API listening. The ledger check is a real write, made at most once a second however often
 * readiness is asked, and a change of its answer is logged once.
 */
import type { Clock } from '../clock.js';
import { CODES } from '../errors.js';
import type { LedgerReader } from '../ledger/ledger.js';
import type { Logger } from '../log.js';
import type { Metrics } from './metrics.js';

/** One readiness check: `ok`, or why not. */
export interface ReadinessCheck {
  readonly ok: boolean;
  readonly reason?: string;
  /**
   * Beside a failed entitlement check: what the environment shows would stop metering (../doctor.ts), each as a
   * named reason with its fix.
   */
  readonly findings?: readonly { readonly code: string; readonly problem: string; readonly fix: string }[];
}

/** How long one write probe's answer is reused. */
const PROBE_CACHE_MS = 1000;

/** Options of {@link Readiness}. */
export interface ReadinessOptions {
  /** The ledger while it may be written; undefined before it opens and once shutdown has begun. */
  readonly ledger: () => LedgerReader | undefined;
  readonly entitlement: () => ReadinessCheck;
  readonly intakeListening: () => boolean;
  readonly clock: Clock;
  readonly logger: Logger;
  readonly metrics: Metrics;
}

/** The sidecar's readiness; see the module comment. */
export class Readiness {
  readonly #options: ReadinessOptions;
  #storage: { atMs: number; check: Promise<ReadinessCheck> } | undefined;
  #lastStorageOk: boolean | undefined;

  constructor(options: ReadinessOptions) {
    this.#options = options;
  }

  /** Every check by name; ready when all are ok. */
  async checks(): Promise<Record<string, ReadinessCheck>> {
    return {
      entitlement: this.#options.entitlement(),
      ledger: await this.storage(),
      intake: this.#options.intakeListening()
        ? { ok: true }
        : { ok: false, reason: 'the app API is not listening' },
    };
  }

  /** Whether the ledger can take a write now (a cached write probe). Never rejects. */
  storage(): Promise<ReadinessCheck> {
    // Cached by the monotonic clock: a wall clock stepping back must not freeze the cache.
    const atMs = this.#options.clock.monotonicMs();
    if (this.#storage !== undefined && atMs - this.#storage.atMs < PROBE_CACHE_MS) return this.#storage.check;
    const check = this.#probe();
    this.#storage = { atMs, check };
    return check;
  }

  async #probe(): Promise<ReadinessCheck> {
    const ledger = this.#options.ledger();
    const check: ReadinessCheck =
      ledger === undefined
        ? { ok: false, reason: 'the ledger is not open' }
        : await ledger.writable(this.#options.clock.now());
    const { logger, metrics } = this.#options;
    if (!check.ok && this.#lastStorageOk !== false) {
      metrics.errors.inc({ code: CODES.stateUnavailable });
      logger.error(
        { code: CODES.stateUnavailable, reason: check.reason },
        'the ledger is not writable; usage is refused until it is',
      );
    }
    if (check.ok && this.#lastStorageOk === false) {
      logger.info({ code: CODES.stateUnavailable }, 'the ledger is writable again; usage is accepted');
    }
    this.#lastStorageOk = check.ok;
    return check;
  }
}
