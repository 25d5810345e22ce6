/**
 * One process per state directory. Two sidecars on one ledger would present the same ClientTokens from two
 * identities and fail each other's seals, so the first to start holds an exclusive lock on
 * `METERING_STATE_DIR/ledger.lock` for its whole life and a second one refuses to start. The lock is the
 * operating system's (an fcntl lock, taken through SQLite's locking on a small database file of its own, so no
 * native code is added): it dies with the process, so even a SIGKILL never leaves a stale lock behind.
 */
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { StateLockedError, StorageUnavailableError } from '../errors.js';

/** File of the lock inside the state directory. */
export const LOCK_FILE = 'ledger.lock';

/** A held lock; {@link StateLock.release} gives it up (closing the process does too). */
export interface StateLock {
  release(): void;
}

/**
 * Takes the lock of `stateDir`, which must exist.
 * @throws StateLockedError when another process (or another ledger in this one) holds it.
 * @throws StorageUnavailableError when the lock file cannot be created.
 */
export function lockStateDir(stateDir: string): StateLock {
  const path = join(stateDir, LOCK_FILE);
  let db: Database.Database;
  try {
    db = new Database(path, { timeout: 0 });
  } catch (err) {
    throw new StorageUnavailableError(
      `cannot create the lock file ${path} (${(err as Error).message}): check that METERING_STATE_DIR is a writable volume`,
      { cause: err },
    );
  }
  try {
    // No journal: the lock file holds nothing to roll back. In exclusive locking mode SQLite keeps the lock
    // of its first write transaction until the connection closes.
    db.pragma('journal_mode = OFF');
    db.pragma('locking_mode = EXCLUSIVE');
    db.exec('BEGIN EXCLUSIVE; COMMIT');
  } catch (err) {
    db.close();
    if ((err as { code?: unknown }).code === 'SQLITE_BUSY') {
      throw new StateLockedError(
        `another sidecar is running on METERING_STATE_DIR=${stateDir} (it holds ${path}): give each sidecar its own state directory, one per task or pod`,
        { cause: err },
      );
    }
    throw new StorageUnavailableError(`cannot lock ${path} (${(err as Error).message})`, { cause: err });
  }
  return {
    release: () => {
      if (db.open) db.close();
    },
  };
}
