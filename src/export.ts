/**
 * The reconciliation export's output (`metering-sidecar export`, docs/operations.md): the ledger's records as
 * CSV or JSON lines, and the daily rollup in the shape of AWS Marketplace's Daily Usage data feed (usage date,
 * dimension key, quantity), so a seller can join what the sidecar sent to what AWS reports. Times are ISO 8601
 * in UTC. What the rows say comes from ./ledger/exportReader.ts.
 */
import type { ExportedCancellation, ExportedRecord, ExportedRemainder } from './ledger/exportReader.js';

/** Output formats of the export. */
export const EXPORT_FORMATS = ['csv', 'jsonl'] as const;
export type ExportFormat = (typeof EXPORT_FORMATS)[number];

/** The columns of the record export, in order (CSV header; JSON lines use the same names). */
export const RECORD_COLUMNS = [
  'ledger_id',
  'source',
  'dimension',
  'hour',
  'timestamp',
  'quantity',
  'state',
  'dry_run',
  'maybe_delivered',
  'carried_to',
  'handoff_id',
  'error',
  'metering_record_id',
  'client_token',
  'attempts',
  'sealed_at',
  'settled_at',
  'platform',
  'task_arn',
  'pod_namespace',
  'pod_name',
  'pod_uid',
  'host',
  'allocations',
] as const;

/** The columns of the daily rollup, named as in AWS Marketplace's Daily Usage data feed where it has them. */
export const DAILY_COLUMNS = [
  'usage_date',
  'dimension_key',
  'usage_quantity',
  'records',
  'uncertain_quantity',
  'pending_quantity',
  'dry_run_quantity',
] as const;

/** The columns of `--cancellations`: each report cancelled before its hour was sealed. */
export const CANCELLATION_COLUMNS = [
  'id',
  'dimension',
  'hour',
  'tags',
  'quantity',
  'unit_divisor',
  'reported_at',
  'cancelled_at',
] as const;

/** The columns of `--remainders`: fine-unit usage below one billed unit, per tag set, not billed. */
export const REMAINDER_COLUMNS = [
  'dimension',
  'tags',
  'unit_divisor',
  'quantity',
  'units',
  'updated_at',
] as const;

type Row = Readonly<Record<string, string | number | boolean | null | object>>;

/** One cancellation as an export row of {@link CANCELLATION_COLUMNS}. */
export function cancellationRow(c: ExportedCancellation): Row {
  return {
    id: c.id,
    dimension: c.dimension,
    hour: iso(c.hourStartMs),
    tags: c.tags,
    quantity: c.quantity,
    unit_divisor: c.divisor,
    reported_at: iso(c.reportedAtMs),
    cancelled_at: iso(c.cancelledAtMs),
  };
}

/**
 * One remainder as an export row of {@link REMAINDER_COLUMNS}; `units` is the share of one billed unit it makes,
 * as a decimal to 6 places, rounded down (it is never billed as such).
 */
export function remainderRow(r: ExportedRemainder): Row {
  const millionths = (BigInt(r.quantity) * 1_000_000n) / BigInt(r.divisor);
  return {
    dimension: r.dimension,
    tags: r.tags,
    unit_divisor: r.divisor,
    quantity: r.quantity,
    units: `0.${millionths.toString().padStart(6, '0')}`,
    updated_at: iso(r.atMs),
  };
}

/** One record as an export row: every column of {@link RECORD_COLUMNS}, null where it does not apply. */
export function recordRow(record: ExportedRecord): Row {
  const by = record.sealedBy;
  return {
    ledger_id: record.ledgerId,
    source: record.source,
    dimension: record.dimension,
    hour: iso(record.hourStartMs),
    timestamp: iso(record.timestampMs),
    quantity: record.quantity,
    state: record.state,
    dry_run: record.dryRun,
    maybe_delivered: record.maybeDelivered,
    carried_to: iso(record.carriedToHourMs),
    handoff_id: record.handoffId ?? null,
    error: record.error ?? null,
    metering_record_id: record.meteringRecordId ?? null,
    client_token: record.clientToken,
    attempts: record.attempts ?? null,
    sealed_at: iso(record.sealedAtMs),
    settled_at: iso(record.settledAtMs),
    platform: by?.platform ?? null,
    task_arn: by?.taskArn ?? null,
    pod_namespace: by?.podNamespace ?? null,
    pod_name: by?.podName ?? null,
    pod_uid: by?.podUid ?? null,
    host: by?.host ?? null,
    allocations: record.allocations,
  };
}

/**
 * The daily rollup, built as records stream past: per UTC day of the record's Timestamp (of its hour, for a
 * handed-off record) and dimension, the quantity AWS accepted (`usage_quantity`, from sent records, which is what
 * AWS bills), how many records that was, and beside it what AWS may hold (`uncertain_quantity`), what is still to
 * be sent (`pending_quantity`) and what was sent with DryRun (`dry_run_quantity`, billed nothing). Carried and
 * failed records bill nothing themselves: a carried record's usage is in the later hour's record.
 */
export class DailyRollup {
  readonly #days = new Map<
    string,
    { usage: number; records: number; uncertain: number; pending: number; dryRun: number }
  >();

  add(r: ExportedRecord): void {
    if (r.state !== 'sent' && r.state !== 'uncertain' && r.state !== 'pending') return;
    const date = new Date(r.timestampMs ?? r.hourStartMs).toISOString().slice(0, 10);
    const key = `${date}\n${r.dimension}`;
    const day = this.#days.get(key) ?? { usage: 0, records: 0, uncertain: 0, pending: 0, dryRun: 0 };
    if (r.dryRun) day.dryRun += r.quantity;
    else if (r.state === 'sent') {
      day.usage += r.quantity;
      day.records++;
    } else if (r.state === 'uncertain') day.uncertain += r.quantity;
    else day.pending += r.quantity;
    this.#days.set(key, day);
  }

  /** The rows of {@link DAILY_COLUMNS}, by day, then dimension. */
  rows(): Row[] {
    return [...this.#days.entries()]
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
      .map(([key, day]) => {
        const [date, dimension] = key.split('\n') as [string, string];
        return {
          usage_date: date,
          dimension_key: dimension,
          usage_quantity: day.usage,
          records: day.records,
          uncertain_quantity: day.uncertain,
          pending_quantity: day.pending,
          dry_run_quantity: day.dryRun,
        };
      });
  }
}

/** The CSV header line of `columns` (none for JSON lines). */
export function header(columns: readonly string[], format: ExportFormat): string {
  return format === 'csv' ? `${columns.join(',')}\r\n` : '';
}

/** One row as a line of `format`. */
export function line(row: Row, columns: readonly string[], format: ExportFormat): string {
  return format === 'jsonl'
    ? `${JSON.stringify(row)}\n`
    : `${columns.map((c) => csvField(row[c] ?? null)).join(',')}\r\n`;
}

/**
 * One CSV field (RFC 4180): quoted when it holds a comma, a quote or a line break; objects (allocations) as
 * their JSON; null as an empty field. Values are written exactly as the ledger holds them.
 */
export function csvField(value: string | number | boolean | null | object): string {
  if (value === null) return '';
  const text = typeof value === 'object' ? JSON.stringify(value) : String(value);
  return /[",\r\n]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
}

function iso(ms: number | undefined): string | null {
  return ms === undefined ? null : new Date(ms).toISOString();
}
