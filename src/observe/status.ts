/**
 * The body of `GET /v1/status` (app API only: it carries the token and the ledger id) and what the shutdown
 * reports: readiness, entitlement, and the ledger's summary with times as ISO text.
 */
import type { LedgerStatus } from '../ledger/ledger.js';
import type { ReadinessCheck } from './readiness.js';

/** What the status shows of the configuration. */
export interface StatusContext {
  readonly productCode: string;
  readonly dryRun: boolean;
  /** What the handoff directory held at the last scan; undefined without METERING_HANDOFF_DIR. */
  readonly handoffDirectory?: { readonly pending: number; readonly ignored: number } | undefined;
}

/** The status body. `ledger` is undefined before the ledger opens. */
export function statusBody(
  checks: Readonly<Record<string, ReadinessCheck>>,
  entitlement: unknown,
  ledger: LedgerStatus | undefined,
  context: StatusContext,
): Record<string, unknown> {
  const ready = Object.values(checks).every((c) => c.ok);
  if (ledger === undefined) return { ready, checks, entitlement };
  return {
    ready,
    checks,
    entitlement,
    productCode: context.productCode,
    dryRun: context.dryRun,
    ledgerId: ledger.ledgerId,
    openHours: ledger.open.map((o) => ({
      hourStart: new Date(o.hourStartMs).toISOString(),
      dimension: o.dimension,
      quantity: o.quantity,
      tagSets: o.tagSets,
    })),
    records: ledger.records,
    oldestUnsentAgeSeconds: ledger.oldestUnsentAgeSeconds,
    ...(context.handoffDirectory === undefined
      ? {}
      : {
          handoffs: {
            written: ledger.handoffs.written,
            adopted: ledger.handoffs.adopted,
            pending: context.handoffDirectory.pending,
            ignored: context.handoffDirectory.ignored,
            uncertain: ledger.handoffs.uncertain.map((u) => ({
              hourStart: new Date(u.hourMs).toISOString(),
              dimension: u.dimension,
              quantity: u.quantity,
              clientToken: u.clientToken,
              from: u.originLedgerId,
              error: u.error,
            })),
          },
        }),
    failed: ledger.failed.map((f) => ({
      hourStart: new Date(f.hourStartMs).toISOString(),
      dimension: f.dimension,
      quantity: f.quantity,
      error: f.error,
    })),
    cancellations: ledger.cancellations.map((c) => ({
      hourStart: new Date(c.hourStartMs).toISOString(),
      dimension: c.dimension,
      reports: c.count,
      quantity: c.quantity,
    })),
    unitRemainders: ledger.remainders.map((r) => ({
      dimension: r.dimension,
      divisor: r.divisor,
      quantity: r.quantity,
      tagSets: r.tagSets,
    })),
  };
}
