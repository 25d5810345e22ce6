/**
 * Opening the ledger's database: the state directory and its lock, the file in WAL mode (synchronous=NORMAL:
 * the ledger syncs the log itself after each commit, see ./walSync.ts),
 * its integrity checked and its schema migrated, every failure named for what it says about the volume or
 * the file. An unreadable or newer-schema database raises {@link LedgerCorruptError}; it is never reset.
 */
import { closeSync, fsyncSync, mkdirSync, openSync, unlinkSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { LedgerCorruptError, StorageUnavailableError, describeError } from '../errors.js';
import { migrate } from './schema.js';
import { lockStateDir, type StateLock } from './stateLock.js';

/** Size of the write probe: a volume with less free space than this is treated as full. */
const WRITE_PROBE_BYTES = 64 * 1024;

/** Database file name inside the state directory. */
export const LEDGER_FILE = 'ledger.db';

/**
 * Opens (or creates) the ledger in `stateDir`, holding the directory's lock; `nowMs` is the creation time of a
 * new ledger. The caller closes the database and releases the lock.
 * @throws StateLockedError when another sidecar holds the state directory.
 * @throws LedgerCorruptError when the file is not a readable ledger of this or an older schema.
 * @throws StorageUnavailableError when the directory or file cannot be created or written.
 */
export function openDatabase(
  stateDir: string,
  nowMs: number,
): { db: Database.Database; lock: StateLock; ledgerId: string } {
  const path = join(stateDir, LEDGER_FILE);
  try {
    mkdirSync(stateDir, { recursive: true });
  } catch (err) {
    throw new StorageUnavailableError(
      `cannot create the state directory ${stateDir} (${describeError(err)}): check that METERING_STATE_DIR is a writable volume`,
      { cause: err },
    );
  }
  const lock = lockStateDir(stateDir);
  let db: Database.Database;
  try {
    db = new Database(path);
  } catch (err) {
    lock.release();
    throw new StorageUnavailableError(
      `cannot open the ledger at ${path} (${describeError(err)}): check that METERING_STATE_DIR is a writable volume`,
      { cause: err },
    );
  }
  try {
    const check = db.pragma('quick_check', { simple: true }) as string;
    if (check !== 'ok')
      throw new LedgerCorruptError(`the ledger at ${path} failed its integrity check: ${check}`);
    db.pragma('journal_mode = WAL');
    // No fsync inside a commit: ./walSync.ts syncs the log after it, off the event loop, before any answer.
    db.pragma('synchronous = NORMAL');
    db.pragma('busy_timeout = 5000');
    migrate(db, path, { nowMs });
    const row = db.prepare("SELECT value FROM meta WHERE key = 'ledger_id'").get() as
      { value: string } | undefined;
    if (row === undefined) throw new LedgerCorruptError(`the ledger at ${path} has no ledger id`);
    const ledgerId = row.value;
    return { db, lock, ledgerId };
  } catch (err) {
    db.close();
    lock.release();
    if (err instanceof LedgerCorruptError) throw err;
    if (isCorruption(err)) {
      throw new LedgerCorruptError(
        `the ledger at ${path} is not a readable database (${describeError(err)}); it is kept as it is: restore it or move it aside only after checking what it held`,
        { cause: err },
      );
    }
    throw new StorageUnavailableError(`cannot open the ledger at ${path} (${describeError(err)})`, {
      cause: err,
    });
  }
}

function isCorruption(err: unknown): boolean {
  const code = (err as { code?: unknown }).code;
  return code === 'SQLITE_NOTADB' || code === 'SQLITE_CORRUPT' || code === 'SQLITE_CORRUPT_VTAB';
}

/**
 * Whether the state directory can take a write right now: writes and syncs a probe file of a useful size, then
 * runs `commit` (a one-row write transaction), so a read-only or full volume shows before usage is refused.
 * Used by readiness; never throws.
 */
export function probeWritable(
  stateDir: string,
  commit: () => void,
): { ok: true } | { ok: false; reason: string } {
  // SQLite reuses space in its write-ahead log, so a small commit can succeed on a full disk: also write
  // and sync a probe file of a useful size next to the database.
  const probe = join(stateDir, '.write-probe');
  try {
    const fd = openSync(probe, 'w');
    try {
      writeSync(fd, Buffer.alloc(WRITE_PROBE_BYTES));
      fsyncSync(fd);
    } finally {
      closeSync(fd);
      unlinkSync(probe);
    }
    commit();
    return { ok: true };
  } catch (err) {
    return { ok: false, reason: `the state directory or ledger cannot be written (${describeError(err)})` };
  }
}
