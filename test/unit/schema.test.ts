/**
 * Ledger migrations, from a fixture ledger of every earlier schema (test/fixtures/ledger-v*.sql, the DDL of
 * those builds verbatim): the file is brought to the current version, keeps everything it held, and ends up
 * with the same tables, columns and indexes as a new ledger.
 */
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, describe, expect, it } from 'vitest';
import { LedgerCorruptError } from '../../src/errors.js';
import { SqliteLedger } from '../../src/ledger/sqliteLedger.js';
import { LEDGER_FILE } from '../../src/ledger/database.js';
import { SCHEMA_VERSION } from '../../src/ledger/schema.js';
import { fixtureLedger } from '../helpers/ledgerFixture.js';
import { ManualClock } from '../helpers/manualClock.js';
import { TempDirs } from '../helpers/tmp.js';
import { usageBatch } from '../../src/ledger/usageBatch.js';

const H9 = Date.parse('2026-03-01T09:00:00Z');
const H10 = H9 + 3_600_000;

const dirs = new TempDirs();
const open: SqliteLedger[] = [];
afterEach(() => {
  for (const ledger of open.splice(0)) ledger.close();
  dirs.cleanup();
});

function openLedger(dir: string): SqliteLedger {
  const ledger = SqliteLedger.open({
    stateDir: dir,
    productCode: 'prod-migrate',
    dryRun: false,
    clock: new ManualClock(H10 + 30 * 60_000),
  });
  open.push(ledger);
  return ledger;
}

/** Tables with their columns, and indexes, as SQLite describes them (column order aside). */
function shape(path: string): Record<string, unknown> {
  const db = new Database(path, { readonly: true });
  const tables = db
    .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
    .pluck()
    .all() as string[];
  const result: Record<string, unknown> = {};
  for (const table of tables) {
    result[table] = {
      columns: (db.pragma(`table_info(${table})`) as { name: string }[])
        .map((c) => JSON.stringify(c, ['name', 'type', 'notnull', 'dflt_value', 'pk']))
        .sort(),
      indexes: (db.pragma(`index_list(${table})`) as { name: string; unique: number }[])
        .map(
          (i) =>
            `${i.name}:${i.unique}:${(db.pragma(`index_info(${i.name})`) as { name: string }[]).map((c) => c.name).join(',')}`,
        )
        .sort(),
    };
  }
  result['user_version'] = db.pragma('user_version', { simple: true });
  db.close();
  return result;
}

describe('ledger migrations', () => {
  // Regression: a ledger written before records.in_flight existed crash-looped with "no such column".
  it.each(['ledger-v1.sql', 'ledger-v1-in-flight.sql'])(
    'brings %s to the current version, keeping every record, bucket and key',
    async (fixture) => {
      // Prepare
      const dir = fixtureLedger(dirs.make(), fixture);

      // Act
      const ledger = openLedger(dir);

      // Assess
      const status = ledger.status(H10 + 30 * 60_000);
      expect(status.ledgerId).toBe('3f0c2a9e-6b1d-4c7e-9a55-0d2f8e71b4c6');
      expect(status.records).toEqual({ pending: 1, sent: 1, carried: 0, failed: 0 });
      expect(status.open).toEqual([{ dimension: 'requests', hourStartMs: H10, quantity: 7, tagSets: 2 }]);
      const [pending] = ledger.pending();
      expect(pending).toMatchObject({
        dimension: 'gb',
        hourStartMs: H9,
        quantity: 12,
        attempts: 2,
        clientToken: '2efbca87-7e6d-7adf-80e8-e836ff5e81fc',
        // A record the earlier build was sending when it died may have been delivered.
        maybeDelivered: fixture === 'ledger-v1-in-flight.sql',
      });
      expect(pending.request.ClientToken).toBe(pending.clientToken);
      // The idempotency key is still known: a repeat is a duplicate, not counted again.
      expect(
        await ledger.record(
          usageBatch([{ dimension: 'requests', quantity: 4, tagsKey: '{}', id: 'report-1' }]),
        ),
      ).toMatchObject({ accepted: 0, duplicates: 1 });
      // The sealed hour stays sealed: late usage for it goes to the next hour.
      expect(ledger.seal(H10 + 30 * 60_000, true).map((r) => [r.dimension, r.hourStartMs])).toEqual([
        ['requests', H10],
      ]);
      ledger.close();
      expect(shape(join(dir, LEDGER_FILE))['user_version']).toBe(SCHEMA_VERSION);
    },
  );

  it.each(['ledger-v1.sql', 'ledger-v1-in-flight.sql'])(
    'gives %s, migrated, the tables, columns and indexes of a new ledger',
    (fixture) => {
      const migrated = fixtureLedger(dirs.make(), fixture);
      openLedger(migrated).close();
      const fresh = dirs.make();
      openLedger(fresh).close();
      expect(shape(join(migrated, LEDGER_FILE))).toEqual(shape(join(fresh, LEDGER_FILE)));
    },
  );

  it('keeps the idempotency keys in their arrival order when they move to a table ordered by it', async () => {
    const dir = fixtureLedger(dirs.make(), 'ledger-v1.sql');
    const db = new Database(join(dir, LEDGER_FILE));
    // Version 1 kept no arrival order: its keys are ordered by arrival time.
    db.exec(
      `INSERT INTO idempotency_keys (id, at_ms) VALUES ('c', ${H10 + 3}), ('a', ${H10 + 1}), ('b', ${H10 + 2})`,
    );
    db.close();
    const ledger = openLedger(dir);
    await ledger.record(usageBatch([{ dimension: 'requests', quantity: 1, tagsKey: '{}', id: 'd' }]));
    ledger.close();
    const after = new Database(join(dir, LEDGER_FILE), { readonly: true });
    const ids = after.prepare('SELECT id FROM idempotency_keys ORDER BY seq').pluck().all();
    after.close();
    expect(ids).toEqual(['a', 'b', 'c', 'report-1', 'd']); // report-1 arrived at 10:03
  });

  it('runs each step in one transaction: a step that fails leaves the file at its previous version', () => {
    // Prepare: a version-1 file on which step 2 fails half-way: it adds records.in_flight, then cannot add
    // buckets.carried_quantity (a view stands where the table should be).
    const dir = fixtureLedger(dirs.make(), 'ledger-v1.sql');
    const db = new Database(join(dir, LEDGER_FILE));
    db.exec('ALTER TABLE buckets RENAME TO buckets_v1; CREATE VIEW buckets AS SELECT * FROM buckets_v1');
    db.close();

    // Act
    expect(() => openLedger(dir)).toThrow(LedgerCorruptError);
    expect(() => openLedger(dir)).toThrow(/could not be migrated from schema 1 to 2/);

    // Assess: still version 1, and the column step 2 had already added was rolled back with it.
    const after = shape(join(dir, LEDGER_FILE));
    expect(after['user_version']).toBe(1);
    expect(JSON.stringify(after['records'])).not.toContain('in_flight');
  });
});
