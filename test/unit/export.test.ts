import { copyFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, describe, expect, it } from 'vitest';
import { HOUR_MS } from '../../src/clock.js';
import { LedgerCorruptError, StorageUnavailableError } from '../../src/errors.js';
import {
  DAILY_COLUMNS,
  RECORD_COLUMNS,
  DailyRollup,
  csvField,
  header,
  line,
  recordRow,
  remainderRow,
  type ExportFormat,
} from '../../src/export.js';
import { LEDGER_FILE } from '../../src/ledger/database.js';
import { LedgerExport, type ExportedRecord } from '../../src/ledger/exportReader.js';
import { canonicalTags } from '../../src/ledger/hours.js';
import { SqliteLedger } from '../../src/ledger/sqliteLedger.js';
import { usageBatch } from '../../src/ledger/usageBatch.js';
import type { PlatformIdentity } from '../../src/platform.js';
import { fixtureLedger } from '../helpers/ledgerFixture.js';
import { ManualClock } from '../helpers/manualClock.js';
import { TempDirs } from '../helpers/tmp.js';

/** The rows of `records` through a {@link DailyRollup}, as the CLI builds them. */
function dailyRollup(records: readonly ExportedRecord[]) {
  const rollup = new DailyRollup();
  for (const r of records) rollup.add(r);
  return rollup.rows();
}

/** `rows` as the CLI writes them: the header (for CSV), then a line each. */
function writeRows(
  rows: readonly Parameters<typeof line>[0][],
  columns: readonly string[],
  format: ExportFormat,
  write: (text: string) => void,
): void {
  const head = header(columns, format);
  if (head !== '') write(head);
  for (const row of rows) write(line(row, columns, format));
}

const H10 = Date.parse('2026-03-01T10:00:00Z');
const H11 = H10 + HOUR_MS;
const POD: PlatformIdentity = {
  platform: 'kubernetes',
  podNamespace: 'shop',
  podName: 'app-7d9f-x2x',
  podUid: '3c1b-uid',
  host: 'app-7d9f-x2x',
};

const dirs = new TempDirs();
const open: { close(): void }[] = [];

afterEach(() => {
  for (const o of open.splice(0)) o.close();
  dirs.cleanup();
});

function report(dimension: string, quantity: number, tags?: Record<string, string>) {
  return { dimension, quantity, tagsKey: canonicalTags(tags), id: undefined };
}

/**
 * A ledger holding one record in each state, all of hour 10: `sent` (tagged and untagged usage), `uncertain`
 * (an attempt that may have reached AWS, then its window closed), `failed` (refused by AWS), `carried` (into
 * hour 11) and `pending`; and one of hour 11, sent.
 */
async function ledgerInEveryState(): Promise<{ dir: string; ledger: SqliteLedger; clock: ManualClock }> {
  const dir = dirs.make();
  const clock = new ManualClock(H10 + 60_000);
  const ledger = SqliteLedger.open({
    stateDir: dir,
    productCode: 'prod',
    dryRun: false,
    clock,
    identity: JSON.stringify(POD),
  });
  open.push(ledger);
  await ledger.record(
    usageBatch([
      report('sent', 3, { tenant: 'acme' }),
      report('sent', 2),
      report('uncertain', 4),
      report('failed', 5, { tenant: 'a,"b"' }),
      report('carried', 6),
      report('pending', 7),
    ]),
  );
  clock.set(H11 + 5 * 60_000);
  const byDimension = new Map(ledger.seal(clock.now(), false).map((r) => [r.dimension, r]));
  ledger.markInFlight(byDimension.get('sent')!.id);
  ledger.markSent(byDimension.get('sent')!.id, 'mrid-sent', clock.now());
  ledger.markRetry(byDimension.get('uncertain')!.id, 'TimeoutError: no answer', clock.now(), true);
  ledger.markFailed(
    byDimension.get('uncertain')!.id,
    'window closed after an attempt that may have reached AWS',
    clock.now(),
    false,
  );
  ledger.markFailed(byDimension.get('failed')!.id, 'InvalidTagException: bad, "tag"', clock.now());
  expect(ledger.carry(byDimension.get('carried')!.id, clock.now(), 'window closing')).toBe(H11);
  await ledger.record(usageBatch([report('later', 1)]));
  clock.set(H11 + 2 * HOUR_MS);
  const later = ledger.seal(clock.now(), false).find((r) => r.dimension === 'later')!;
  ledger.markSent(later.id, 'mrid-later', clock.now());
  await ledger.durable();
  return { dir, ledger, clock };
}

function exportOf(dir: string): LedgerExport {
  const reader = LedgerExport.open(dir);
  open.push(reader);
  return reader;
}

describe('LedgerExport', () => {
  it('reads every record with its state from the ledger of a running sidecar', async () => {
    const { dir, ledger } = await ledgerInEveryState();
    const records = exportOf(dir).records();
    const byDimension = new Map(records.map((r) => [r.dimension, r]));
    expect(records.map((r) => [r.dimension, r.state])).toEqual([
      ['carried', 'carried'],
      ['failed', 'failed'],
      ['pending', 'pending'],
      ['sent', 'sent'],
      ['uncertain', 'uncertain'],
      // Hour 11: the carried usage (sealed, not sent yet) and the later report.
      ['carried', 'pending'],
      ['later', 'sent'],
    ]);
    expect(byDimension.get('sent')).toMatchObject({
      source: 'ledger',
      ledgerId: ledger.ledgerId,
      hourStartMs: H10,
      timestampMs: H10 + 60_000,
      quantity: 5,
      // In the order of the request: by canonical tag set, untagged ('{}') last.
      allocations: [
        { tags: { tenant: 'acme' }, quantity: 3 },
        { tags: {}, quantity: 2 },
      ],
      meteringRecordId: 'mrid-sent',
      attempts: 1,
      maybeDelivered: false,
      sealedBy: POD,
    });
    expect(byDimension.get('sent')!.clientToken).toMatch(/^[0-9a-f]{8}-/);
    expect(records[0]).toMatchObject({ state: 'carried', carriedToHourMs: H11, error: 'window closing' });
    expect(byDimension.get('uncertain')).toMatchObject({ maybeDelivered: true, attempts: 1 });
    expect(byDimension.get('failed')).toMatchObject({ error: 'InvalidTagException: bad, "tag"' });
    expect(byDimension.get('pending')).toMatchObject({ settledAtMs: undefined, meteringRecordId: undefined });
  });

  it('exports the records whose hour starts in [since, until)', async () => {
    const { dir } = await ledgerInEveryState();
    const reader = exportOf(dir);
    expect(reader.records({ sinceMs: H11 }).map((r) => r.dimension)).toEqual(['carried', 'later']);
    expect(reader.records({ untilMs: H11 })).toHaveLength(5);
    expect(reader.records({ sinceMs: H10 + 1, untilMs: H11 })).toEqual([]);
  });

  it('includes the uncertain records adopted with another sidecar’s handoff', async () => {
    const { dir, ledger, clock } = await ledgerInEveryState();
    ledger.handoffs.adopt(
      {
        id: 'handoff-1',
        originLedgerId: 'other-ledger',
        originHost: 'old-pod',
        writtenAtMs: clock.now(),
        usage: [],
        uncertain: [
          { dimension: 'sent', hourMs: H10, quantity: 9, clientToken: 'tok-other', error: 'TimeoutError' },
        ],
        recordIds: [],
        bucketHours: [],
      },
      clock.now(),
    );
    await ledger.durable();
    const adopted = exportOf(dir)
      .records()
      .filter((r) => r.source === 'handoff');
    expect(adopted).toEqual([
      expect.objectContaining({
        ledgerId: 'other-ledger',
        handoffId: 'handoff-1',
        dimension: 'sent',
        hourStartMs: H10,
        quantity: 9,
        state: 'uncertain',
        clientToken: 'tok-other',
        error: 'TimeoutError',
      }),
    ]);
  });

  it('reads a stopped sidecar’s ledger, and one whose sidecar was killed with its log not checkpointed', async () => {
    const { dir, ledger } = await ledgerInEveryState();
    // A copy of the files as a SIGKILL leaves them: the database and its write-ahead log.
    const crashed = dirs.make();
    copyFileSync(join(dir, LEDGER_FILE), join(crashed, LEDGER_FILE));
    copyFileSync(join(dir, `${LEDGER_FILE}-wal`), join(crashed, `${LEDGER_FILE}-wal`));
    expect(exportOf(crashed).records()).toHaveLength(7);
    ledger.close();
    open.splice(open.indexOf(ledger), 1);
    expect(exportOf(dir).records()).toHaveLength(7);
    // A stopped ledger is read as it is: no log or index is left beside it (a read-only volume reads the same).
    expect(existsSync(join(dir, `${LEDGER_FILE}-wal`))).toBe(false);
    expect(existsSync(join(dir, `${LEDGER_FILE}-shm`))).toBe(false);
  });

  it('marks records sent with DryRun, which AWS billed nothing for', async () => {
    const dir = dirs.make();
    const clock = new ManualClock(H10 + 60_000);
    const ledger = SqliteLedger.open({ stateDir: dir, productCode: 'prod', dryRun: true, clock });
    open.push(ledger);
    await ledger.record(usageBatch([report('d', 5)]));
    clock.set(H11 + 60_000);
    const [sealed] = ledger.seal(clock.now(), false);
    ledger.markSent(sealed.id, 'dry-run', clock.now());
    await ledger.durable();
    const [exported] = exportOf(dir).records();
    expect(exported).toMatchObject({ state: 'sent', dryRun: true, quantity: 5 });
    expect(dailyRollup([exported])).toMatchObject([{ usage_quantity: 0, records: 0, dry_run_quantity: 5 }]);
  });

  it('refuses a missing ledger, a newer schema and one older than schema 3, changing nothing', () => {
    const empty = dirs.make();
    expect(() => LedgerExport.open(empty)).toThrow(StorageUnavailableError);
    expect(() => LedgerExport.open(empty)).toThrow(/no ledger at .*METERING_STATE_DIR/);

    const newer = dirs.make();
    const db = new Database(join(newer, LEDGER_FILE));
    db.pragma('user_version = 99');
    db.close();
    expect(() => LedgerExport.open(newer)).toThrow(LedgerCorruptError);
    expect(() => LedgerExport.open(newer)).toThrow(/schema 99, newer/);

    const old = fixtureLedger(dirs.make(), 'ledger-v1.sql');
    expect(() => LedgerExport.open(old)).toThrow(/schema 1: run the sidecar of this version on it once/);
    const check = new Database(join(old, LEDGER_FILE), { readonly: true });
    expect(check.pragma('user_version', { simple: true })).toBe(1);
    check.close();
  });

  it('reads a ledger of schema 4, whose records say nothing of the platform', async () => {
    const { dir, ledger } = await ledgerInEveryState();
    ledger.close();
    open.splice(open.indexOf(ledger), 1);
    const db = new Database(join(dir, LEDGER_FILE));
    db.exec('ALTER TABLE records DROP COLUMN sealed_by');
    db.pragma('user_version = 4');
    db.close();
    const records = exportOf(dir).records();
    expect(records).toHaveLength(7);
    expect(records.every((r) => r.sealedBy === undefined)).toBe(true);
  });
});

describe('export rows', () => {
  it('writes CSV with a header, RFC 4180 quoting and the allocations as JSON', async () => {
    const { dir } = await ledgerInEveryState();
    const records = exportOf(dir).records();
    const lines: string[] = [];
    writeRows(records.map(recordRow), RECORD_COLUMNS, 'csv', (line) => lines.push(line));
    const text = lines.join('');
    const rows = text.split('\r\n').filter((l) => l !== '');
    expect(rows[0]).toBe(RECORD_COLUMNS.join(','));
    expect(rows).toHaveLength(records.length + 1);
    const failed = rows.find((r) => r.includes(',ledger,failed,2026-03-01T10:00:00.000Z,'))!;
    expect(failed).toContain('"InvalidTagException: bad, ""tag"""');
    expect(failed).toContain('"[{""tags"":{""tenant"":""a,\\""b\\""""},""quantity"":5}]"');
    const sent = rows.find((r) => r.includes(',ledger,sent,2026-03-01T10:00:00.000Z,'))!;
    expect(sent).toContain(',kubernetes,,shop,app-7d9f-x2x,3c1b-uid,app-7d9f-x2x,');
    expect(sent).toContain(',mrid-sent,');
  });

  it('writes JSON lines with the same names, null where a column does not apply', async () => {
    const { dir } = await ledgerInEveryState();
    const lines: string[] = [];
    writeRows(exportOf(dir).records().map(recordRow), RECORD_COLUMNS, 'jsonl', (l) => lines.push(l));
    const rows = lines.map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(rows).toHaveLength(7);
    for (const row of rows) expect(Object.keys(row)).toEqual([...RECORD_COLUMNS]);
    expect(rows.find((r) => r['dimension'] === 'pending')).toMatchObject({
      state: 'pending',
      settled_at: null,
      metering_record_id: null,
      hour: '2026-03-01T10:00:00.000Z',
      allocations: [{ tags: {}, quantity: 7 }],
    });
  });

  it('quotes only what needs it', () => {
    expect(csvField('plain')).toBe('plain');
    expect(csvField(12)).toBe('12');
    expect(csvField(null)).toBe('');
    expect(csvField(false)).toBe('false');
    expect(csvField('a\nb')).toBe('"a\nb"');
    expect(csvField({ a: 1 })).toBe('"{""a"":1}"');
  });
});

describe('dailyRollup', () => {
  const record = (over: Partial<ExportedRecord>): ExportedRecord => ({
    source: 'ledger',
    ledgerId: 'l',
    dimension: 'gb',
    hourStartMs: H10,
    timestampMs: H10 + 1000,
    quantity: 1,
    allocations: [],
    state: 'sent',
    dryRun: false,
    maybeDelivered: false,
    carriedToHourMs: undefined,
    handoffId: undefined,
    error: undefined,
    meteringRecordId: 'm',
    clientToken: 't',
    attempts: 1,
    sealedAtMs: H11,
    settledAtMs: H11,
    sealedBy: undefined,
    ...over,
  });

  it('sums what AWS accepted per UTC day and dimension, beside what may be held, what is still to send and dry runs', () => {
    const nextDay = Date.parse('2026-03-02T00:00:00Z');
    const rows = dailyRollup([
      record({ quantity: 5 }),
      record({ quantity: 7, hourStartMs: H11, timestampMs: H11 }),
      record({ quantity: 100, state: 'carried' }),
      record({ quantity: 100, state: 'failed' }),
      record({ quantity: 3, state: 'uncertain' }),
      record({ quantity: 2, state: 'pending' }),
      record({ quantity: 4, source: 'handoff', state: 'uncertain', timestampMs: undefined }),
      record({ quantity: 11, dimension: 'api', hourStartMs: nextDay, timestampMs: nextDay + 59 * 60_000 }),
      record({ quantity: 1, dimension: 'api' }),
      record({ quantity: 50, dimension: 'api', dryRun: true }),
    ]);
    expect(rows).toEqual([
      {
        usage_date: '2026-03-01',
        dimension_key: 'api',
        usage_quantity: 1,
        records: 1,
        uncertain_quantity: 0,
        pending_quantity: 0,
        dry_run_quantity: 50,
      },
      {
        usage_date: '2026-03-01',
        dimension_key: 'gb',
        usage_quantity: 12,
        records: 2,
        uncertain_quantity: 7,
        pending_quantity: 2,
        dry_run_quantity: 0,
      },
      {
        usage_date: '2026-03-02',
        dimension_key: 'api',
        usage_quantity: 11,
        records: 1,
        uncertain_quantity: 0,
        pending_quantity: 0,
        dry_run_quantity: 0,
      },
    ]);
    const lines: string[] = [];
    writeRows(rows, DAILY_COLUMNS, 'csv', (l) => lines.push(l));
    expect(lines).toEqual([
      'usage_date,dimension_key,usage_quantity,records,uncertain_quantity,pending_quantity,dry_run_quantity\r\n',
      '2026-03-01,api,1,1,0,0,50\r\n',
      '2026-03-01,gb,12,2,7,2,0\r\n',
      '2026-03-02,api,11,1,0,0,0\r\n',
    ]);
  });
});

describe('remainderRow', () => {
  it('gives the share of one unit to six places, rounded down, exact for any divisor', () => {
    const row = (quantity: number, divisor: number) =>
      remainderRow({ dimension: 'gb', tags: {}, divisor, quantity, atMs: 0 })['units'];
    expect(row(1, 3)).toBe('0.333333');
    expect(row(2, 3)).toBe('0.666666');
    expect(row(999_999_999_999_999, 1_000_000_000_000_000)).toBe('0.999999');
    expect(row(1, 1_000_000_000_000_000)).toBe('0.000000');
  });
});
