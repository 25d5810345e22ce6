/**
 * The {@link Ledger} interfaces over a {@link SqliteLedger}: the one the agent runs. SQLite's statements are
 * synchronous and cheap; what takes time is the disk, so every write is answered only once it is durable
 * ({@link SqliteLedger.durable}: the write-ahead log synced on libuv's thread pool), and the event loop goes on
 * meanwhile. A failed sync rejects the write with StorageUnavailableError.
 */
import type { HandoffEntry, HandoffSnapshot } from './handoffStore.js';
import type {
  CancelResult,
  Ledger,
  LedgerRejection,
  LedgerStatus,
  RecordResult,
  StoredRecord,
} from './ledger.js';
import type { UsageBatch } from './usageBatch.js';
import type { SqliteLedger } from './sqliteLedger.js';

/** A {@link Ledger} backed by a {@link SqliteLedger} on the event loop's thread. */
export class InProcessLedger implements Ledger {
  readonly #ledger: SqliteLedger;

  constructor(ledger: SqliteLedger) {
    this.#ledger = ledger;
  }

  get ledgerId(): string {
    return this.#ledger.ledgerId;
  }

  get files(): readonly string[] {
    return this.#ledger.files;
  }

  record(batch: UsageBatch): Promise<RecordResult | LedgerRejection> {
    return this.#ledger.record(batch);
  }

  cancel(id: string): Promise<CancelResult> {
    return this.#ledger.cancel(id);
  }

  seal(clockMs: number, includeOpen: boolean, limit?: number): Promise<StoredRecord[]> {
    return this.#durably(() => this.#ledger.seal(clockMs, includeOpen, limit));
  }

  due(nowMs: number): Promise<StoredRecord[]> {
    return settle(() => this.#ledger.due(nowMs));
  }

  expiring(clockMs: number): Promise<StoredRecord[]> {
    return settle(() => this.#ledger.expiring(clockMs));
  }

  nextAttemptMs(): Promise<number | undefined> {
    return settle(() => this.#ledger.nextAttemptMs());
  }

  pendingCount(): Promise<number> {
    return settle(() => this.#ledger.pending().length);
  }

  handoffSnapshot(): Promise<HandoffSnapshot> {
    // A snapshot is published to other sidecars: only once everything in it is on disk.
    return this.#durably(() => this.#ledger.handoffs.snapshot());
  }

  completeHandoff(entry: HandoffEntry, clockMs: number): Promise<boolean> {
    return this.#durably(() => this.#ledger.handoffs.complete(entry, clockMs));
  }

  adoptHandoff(entry: HandoffEntry, clockMs: number): Promise<boolean> {
    return this.#durably(() => this.#ledger.handoffs.adopt(entry, clockMs));
  }

  handoffIds(): Promise<{ written: Set<string>; adopted: Set<string> }> {
    return settle(() => this.#ledger.handoffs.ids());
  }

  dueAt(id: number, atMs: number): Promise<void> {
    return this.#durably(() => this.#ledger.dueAt(id, atMs));
  }

  retryAllNow(nowMs: number): Promise<void> {
    return this.#durably(() => this.#ledger.retryAllNow(nowMs));
  }

  markInFlight(id: number): Promise<void> {
    return this.#durably(() => this.#ledger.markInFlight(id));
  }

  markSent(id: number, meteringRecordId: string, nowMs: number): Promise<void> {
    return this.#durably(() => this.#ledger.markSent(id, meteringRecordId, nowMs));
  }

  markRetry(id: number, error: string, nextAttemptMs: number, maybeDelivered: boolean): Promise<void> {
    return this.#durably(() => this.#ledger.markRetry(id, error, nextAttemptMs, maybeDelivered));
  }

  markFailed(id: number, error: string, nowMs: number, attempted?: boolean): Promise<void> {
    return this.#durably(() => this.#ledger.markFailed(id, error, nowMs, attempted));
  }

  carry(id: number, clockMs: number, reason: string): Promise<number | undefined> {
    return this.#durably(() => this.#ledger.carry(id, clockMs, reason));
  }

  prune(nowMs: number): Promise<void> {
    return this.#durably(() => this.#ledger.prune(nowMs));
  }

  status(nowMs: number): Promise<LedgerStatus> {
    return settle(() => this.#ledger.status(nowMs));
  }

  writable(nowMs: number): Promise<{ ok: true } | { ok: false; reason: string }> {
    return settle(() => this.#ledger.writable(nowMs));
  }

  keyStats(): Promise<{ count: number; oldestAtMs: number | undefined }> {
    return settle(() => this.#ledger.keyStats());
  }

  close(): Promise<void> {
    return settle(() => this.#ledger.close());
  }

  /** Runs a write, then answers once it is on disk. */
  #durably<T>(write: () => T): Promise<T> {
    return settle(write).then(async (value) => {
      await this.#ledger.durable();
      return value;
    });
  }
}

/** `fn`'s answer as a promise, or its exception as a rejection (never thrown synchronously). */
function settle<T>(fn: () => T): Promise<T> {
  try {
    return Promise.resolve(fn());
  } catch (err) {
    return Promise.reject(err instanceof Error ? err : new Error(String(err)));
  }
}
