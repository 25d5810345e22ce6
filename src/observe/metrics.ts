/**
 * Prometheus metrics, on a registry of the sidecar's own (never prom-client's global one): the product's own
 * prefixed `metering_`, prom-client's process metrics under their standard names; counters end in `_total`. Labels stay low-cardinality: dimension (at most 24 distinct values; an
 * app that sends more, without METERING_DIMENSIONS, is folded into `other`), result, error code and AWS
 * error name; never tag values or request data. Gauges that describe the ledger are read from it on scrape.
 * docs/operations.md lists every metric.
 */
import { statSync } from 'node:fs';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { MAX_DIMENSIONS } from '../awsLimits.js';
import type { HandoffObserver } from '../handoff/handoffs.js';
import type { RecordEvent, SendObserver } from '../schedule/dispatcher.js';
import type { CallObserver, CallReport } from '../send/client.js';

/** What the scrape-time gauges read. */
export interface MetricsSources {
  /** Unsealed and pending quantity per dimension, the oldest unsent record's age, and record counts. */
  readonly ledger: () => Promise<
    | {
        open: readonly { dimension: string; quantity: number }[];
        pendingByDimension: ReadonlyMap<string, number>;
        oldestUnsentAgeSeconds: number | null;
      }
    | undefined
  >;
  readonly entitlementState: () => string;
  /** Files whose sizes add up to the ledger size (database, WAL, shared memory). */
  readonly ledgerFiles: () => readonly string[];
  /** Idempotency keys kept, and the age of the oldest in seconds (null when none). */
  readonly idempotencyKeys: () => Promise<{ count: number; oldestAgeSeconds: number | null } | undefined>;
  /**
   * Handoffs waiting in METERING_HANDOFF_DIR, left in place there, and uncertain records adopted handoffs
   * brought; undefined without a handoff directory.
   */
  readonly handoffs?: () => Promise<{ pending: number; ignored: number; uncertain: number } | undefined>;
}

/** Entitlement states exported as an enum-style gauge. */
const ENTITLEMENT_STATES = ['pending', 'entitled', 'not-entitled', 'disabled'];

/** The sidecar's metrics. One instance per agent. */
export class Metrics implements CallObserver, SendObserver, HandoffObserver {
  readonly registry = new Registry();
  readonly #dimensions = new Set<string>();

  readonly usageQuantity = new Counter({
    name: 'metering_usage_quantity_total',
    help: 'Usage quantity acknowledged (202) by the app API, per dimension.',
    labelNames: ['dimension'] as const,
    registers: [this.registry],
  });

  readonly usageCancelled = new Counter({
    name: 'metering_usage_cancelled_quantity_total',
    help: 'Usage quantity cancelled (DELETE /v1/usage/{id}) before its hour was sealed, per dimension.',
    labelNames: ['dimension'] as const,
    registers: [this.registry],
  });

  readonly intakeRequests = new Counter({
    name: 'metering_intake_requests_total',
    help: 'App API usage requests by result (accepted, rejected) and error code.',
    labelNames: ['result', 'code'] as const,
    registers: [this.registry],
  });

  readonly recordsSealed = new Counter({
    name: 'metering_records_sealed_total',
    help: 'Hourly records sealed, per dimension.',
    labelNames: ['dimension'] as const,
    registers: [this.registry],
  });

  readonly recordsSent = new Counter({
    name: 'metering_records_sent_total',
    help: 'Records accepted by MeterUsage, per dimension.',
    labelNames: ['dimension'] as const,
    registers: [this.registry],
  });

  readonly recordsCarried = new Counter({
    name: 'metering_records_carried_total',
    help: 'Records whose quantity was carried into a later hour, per dimension.',
    labelNames: ['dimension'] as const,
    registers: [this.registry],
  });

  readonly recordsFailed = new Counter({
    name: 'metering_records_failed_total',
    help: 'Records kept as failed for a human, per dimension and error.',
    labelNames: ['dimension', 'error'] as const,
    registers: [this.registry],
  });

  readonly awsCalls = new Counter({
    name: 'metering_aws_calls_total',
    help: 'MeterUsage and RegisterUsage calls by operation, outcome (success, error) and AWS error name.',
    labelNames: ['operation', 'outcome', 'error'] as const,
    registers: [this.registry],
  });

  readonly awsCallDuration = new Histogram({
    name: 'metering_aws_call_duration_seconds',
    help: 'Duration of MeterUsage and RegisterUsage calls, SDK retries included.',
    labelNames: ['operation'] as const,
    buckets: [0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
    registers: [this.registry],
  });

  readonly lastSuccess = new Gauge({
    name: 'metering_last_success_timestamp_seconds',
    help: 'Unix time of the last MeterUsage call AWS accepted.',
    registers: [this.registry],
  });

  readonly idempotencyKeysEvicted = new Counter({
    name: 'metering_idempotency_keys_evicted_total',
    help: 'Idempotency keys forgotten before 24 hours to keep the store within METERING_IDEMPOTENCY_KEYS_MAX.',
    registers: [this.registry],
  });

  readonly handoffs = new Counter({
    name: 'metering_handoffs_total',
    help: 'Handoffs written at shutdown (usage taken out of this ledger) and adopted (usage carried into it).',
    labelNames: ['direction'] as const,
    registers: [this.registry],
  });

  readonly handoffQuantity = new Counter({
    name: 'metering_handoff_quantity_total',
    help: 'Billable quantity in handoffs written and adopted.',
    labelNames: ['direction'] as const,
    registers: [this.registry],
  });

  readonly sendRate = new Gauge({
    name: 'metering_send_rate_limit_per_second',
    help: 'MeterUsage calls per second the pacer allows since AWS throttled this sidecar (0: never throttled, no limit).',
    registers: [this.registry],
  });

  readonly errors = new Counter({
    name: 'metering_errors_total',
    help: 'Errors of background work and storage, by code.',
    labelNames: ['code'] as const,
    registers: [this.registry],
  });

  constructor(sources: MetricsSources) {
    const dimensionLabel = (d: string): string => this.dimension(d);
    new Gauge({
      name: 'metering_pending_quantity',
      help: 'Quantity acknowledged but not yet accepted by AWS (open hours plus pending records), per dimension.',
      labelNames: ['dimension'] as const,
      registers: [this.registry],
      async collect() {
        this.reset();
        const ledger = await sources.ledger();
        if (ledger === undefined) return;
        const totals = new Map<string, number>();
        for (const o of ledger.open)
          totals.set(
            dimensionLabel(o.dimension),
            (totals.get(dimensionLabel(o.dimension)) ?? 0) + o.quantity,
          );
        for (const [d, q] of ledger.pendingByDimension)
          totals.set(dimensionLabel(d), (totals.get(dimensionLabel(d)) ?? 0) + q);
        for (const [d, q] of totals) this.set({ dimension: d }, q);
      },
    });
    new Gauge({
      name: 'metering_oldest_unsent_age_seconds',
      help: 'Age of the oldest sealed record not yet accepted by AWS (0 when none).',
      registers: [this.registry],
      async collect() {
        this.set((await sources.ledger())?.oldestUnsentAgeSeconds ?? 0);
      },
    });
    new Gauge({
      name: 'metering_entitlement_state',
      help: 'Entitlement state: 1 for the current state, 0 for the others.',
      labelNames: ['state'] as const,
      registers: [this.registry],
      collect() {
        const current = sources.entitlementState();
        for (const state of ENTITLEMENT_STATES) this.set({ state }, state === current ? 1 : 0);
      },
    });
    new Gauge({
      name: 'metering_ledger_size_bytes',
      help: 'Size of the ledger files (database and write-ahead log).',
      registers: [this.registry],
      collect() {
        let bytes = 0;
        for (const file of sources.ledgerFiles()) {
          try {
            bytes += statSync(file).size;
          } catch {
            // A WAL or shared-memory file exists only while the database is open: a missing one counts zero.
          }
        }
        this.set(bytes);
      },
    });
    new Gauge({
      name: 'metering_idempotency_keys',
      help: 'Idempotency keys kept (a resend with one of them is acknowledged and not counted again).',
      registers: [this.registry],
      async collect() {
        this.set((await sources.idempotencyKeys())?.count ?? 0);
      },
    });
    new Gauge({
      name: 'metering_idempotency_window_seconds',
      help: 'Age of the oldest idempotency key kept: how far back a resend is still recognised (0 when none).',
      registers: [this.registry],
      async collect() {
        this.set((await sources.idempotencyKeys())?.oldestAgeSeconds ?? 0);
      },
    });
    this.#handoffGauges(sources);
    // Standard names (process_cpu_seconds_total, nodejs_heap_size_used_bytes, ...), as stock dashboards query them.
    collectDefaultMetrics({ register: this.registry });
  }

  #handoffGauges(sources: MetricsSources): void {
    const gauges = [
      [
        'metering_handoffs_pending',
        'Handoffs waiting in METERING_HANDOFF_DIR for an adopter, at the last scan.',
        'pending',
      ],
      [
        'metering_handoffs_ignored',
        'Handoffs left in METERING_HANDOFF_DIR: another product or format version, or unreadable.',
        'ignored',
      ],
      [
        'metering_handoff_uncertain_records',
        'Records adopted handoffs brought that may already be billed under their writer; never billed again.',
        'uncertain',
      ],
    ] as const;
    for (const [name, help, field] of gauges) {
      new Gauge({
        name,
        help,
        registers: [this.registry],
        async collect() {
          this.set((await sources.handoffs?.())?.[field] ?? 0);
        },
      });
    }
  }

  /** Counts a handoff written or adopted (the `HandoffObserver` of ../handoff/handoffs.ts). */
  handoff(direction: 'written' | 'adopted', quantity: number): void {
    this.handoffs.inc({ direction });
    this.handoffQuantity.inc({ direction }, quantity);
  }

  /** Counts a record's transition (the {@link SendObserver} of the dispatcher). */
  recordEvent(event: RecordEvent, dimension: string, error: string): void {
    const label = this.dimension(dimension);
    if (event === 'sealed') this.recordsSealed.inc({ dimension: label });
    else if (event === 'sent') this.recordsSent.inc({ dimension: label });
    else if (event === 'carried') this.recordsCarried.inc({ dimension: label });
    else this.recordsFailed.inc({ dimension: label, error });
  }

  /** The pacer's rate (the {@link SendObserver} of the dispatcher). */
  pace(ratePerSecond: number | undefined): void {
    this.sendRate.set(ratePerSecond ?? 0);
  }

  /** Counts a failed background run by its error code. */
  backgroundError(code: string): void {
    this.errors.inc({ code });
  }

  /** Counts one MeterUsage or RegisterUsage call (the {@link CallObserver} of `observeClient`). */
  call({ operation, outcome, error, seconds, dryRun }: CallReport): void {
    this.awsCalls.inc({ operation, outcome, error });
    this.awsCallDuration.observe({ operation }, seconds);
    if (operation === 'MeterUsage' && outcome === 'success' && !dryRun) this.lastSuccess.setToCurrentTime();
  }

  /** The label for a dimension: itself for the first 24 seen, `other` after that. */
  dimension(name: string): string {
    if (this.#dimensions.has(name)) return name;
    if (this.#dimensions.size >= MAX_DIMENSIONS) return 'other';
    this.#dimensions.add(name);
    return name;
  }

  /** The Prometheus text exposition. */
  async text(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }
}
