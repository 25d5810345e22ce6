import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { LEDGER_FILE } from '../../src/ledger/database.js';

/**
 * Writes into `stateDir` a ledger built from a fixture of test/fixtures (a ledger as an earlier build wrote it,
 * its DDL verbatim). Returns `stateDir`.
 */
export function fixtureLedger(stateDir: string, fixture: string): string {
  const db = new Database(join(stateDir, LEDGER_FILE));
  db.exec(readFileSync(new URL(`../fixtures/${fixture}`, import.meta.url), 'utf8'));
  db.close();
  return stateDir;
}
