/**
 * Making the ledger's commits durable without holding up the event loop. SQLite commits in WAL mode with
 * `synchronous=NORMAL`, which writes a transaction's frames to the write-ahead log and returns without an
 * `fsync`; the ledger then has the log synced here, with `fdatasync` on libuv's thread pool, and answers nothing
 * (no 202, no send to AWS) until a sync that began after the commit has finished. That is the durability of
 * `synchronous=FULL`, where SQLite itself syncs the log inside every commit, but the event loop keeps parsing
 * requests while the disk works, and every commit made during one sync shares the next (group sync).
 *
 * Why it holds (docs/design.md, "Durability"): `fdatasync` flushes the file, whichever descriptor wrote it, so
 * a finished sync covers every frame written before it began. WAL recovery replays frames in order and stops at
 * the first one whose running checksum does not match, so what survives a power loss is a prefix of the commits:
 * a durable commit implies that every earlier one is durable too. Checkpoints are synced by SQLite itself
 * (`synchronous=NORMAL` syncs the log before a checkpoint, the database after it, and the log's header when the
 * log is reused). The state directory is synced once at open, so the log's own directory entry is durable.
 */
import { closeSync, fdatasync, fdatasyncSync, fsyncSync, openSync } from 'node:fs';

/** How a file descriptor is synced; `fdatasync` by default, injectable to test what waits for it. */
export type SyncFile = (fd: number) => Promise<void>;

/** `fdatasync(2)` on the thread pool. */
export const fdatasyncFile: SyncFile = (fd) =>
  new Promise((resolve, reject) => fdatasync(fd, (err) => (err ? reject(err) : resolve())));

/** Group sync of one write-ahead log. */
export class WalSync {
  readonly #fd: number;
  readonly #syncFile: SyncFile;
  /** The sync under way, if any. */
  #running: Promise<void> | undefined;
  /** The sync queued behind it, shared by every commit made while it runs. */
  #queued: Promise<void> | undefined;
  /**
   * The first failure, answered to every later sync: Linux reports a writeback error once per open file, so a
   * later `fdatasync` can succeed although frames before it never reached the disk.
   */
  #failed: Error | undefined;
  #closed = false;

  /**
   * Opens the log at `walPath` (SQLite has created it by the first read of a WAL-mode database), syncs it with
   * what opening the ledger wrote, and syncs the directory it is in, once.
   * @throws when either cannot be opened or synced.
   */
  constructor(walPath: string, directory: string, syncFile: SyncFile = fdatasyncFile) {
    this.#syncFile = syncFile;
    const dirFd = openSync(directory, 'r');
    try {
      fsyncSync(dirFd);
    } finally {
      closeSync(dirFd);
    }
    this.#fd = openSync(walPath, 'r');
    try {
      fdatasyncSync(this.#fd);
    } catch (err) {
      closeSync(this.#fd);
      throw err;
    }
  }

  /**
   * Resolves once everything written to the log before this call is on disk; rejects when a sync fails (the
   * commits it should have covered may or may not be durable).
   */
  sync(): Promise<void> {
    if (this.#failed !== undefined) return Promise.reject(this.#failed);
    if (this.#closed) return Promise.reject(new Error('the write-ahead log is closed'));
    if (this.#running === undefined) return this.#start();
    // The sync under way may have begun before the latest commit: one more, after it, covers it.
    this.#queued ??= this.#running.then(
      () => this.#startQueued(),
      () => this.#startQueued(),
    );
    return this.#queued;
  }

  /**
   * Syncs the log one last time, on this thread, before the database closes; then closes the descriptor once
   * no sync uses it any more. Syncs asked for later are refused.
   * @throws when that last sync fails.
   */
  closeAfterSync(): void {
    this.#closed = true;
    try {
      if (this.#failed === undefined) fdatasyncSync(this.#fd);
    } finally {
      this.#closeFd();
    }
  }

  #closeFd(): void {
    const pending = this.#queued ?? this.#running;
    if (pending === undefined) closeSync(this.#fd);
    else
      void pending.then(
        () => this.#closeFd(),
        () => this.#closeFd(),
      );
  }

  #startQueued(): Promise<void> {
    this.#queued = undefined;
    if (this.#failed !== undefined) return Promise.reject(this.#failed);
    return this.#start();
  }

  #start(): Promise<void> {
    const running = this.#syncFile(this.#fd)
      .catch((err: unknown) => {
        this.#failed ??= err instanceof Error ? err : new Error(String(err));
        throw err;
      })
      .finally(() => {
        if (this.#running === running) this.#running = undefined;
      });
    this.#running = running;
    return running;
  }
}
