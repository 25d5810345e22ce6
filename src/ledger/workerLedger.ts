/**
 * The {@link Ledger} the agent runs: the SQLite ledger on a worker thread of its own (./ledgerWorker.ts), so
 * its statements and the `fsync` of every commit never hold up the event loop that parses the app's requests.
 * The contract is the in-process ledger's (./sqliteLedger.ts), unchanged: `record` resolves only after its
 * batch has committed with synchronous=FULL, all or nothing; each call carries this thread's clock readings, so
 * usage is stamped with its arrival time. Calls made in one turn of the event loop cross as one message, and
 * their answers come back the same way.
 *
 * If the worker dies (a bug, or memory exhausted), every call still waiting and every later one rejects with
 * StorageUnavailableError, and `writable` answers not ok, so intake refuses usage (503, nothing acknowledged)
 * and readiness fails; what the ledger had committed stays in the file for the next start.
 */
import { Worker } from 'node:worker_threads';
import { StorageUnavailableError, describeError } from '../errors.js';
import type { HandoffEntry, HandoffSnapshot } from './handoffStore.js';
import type {
  Ledger,
  LedgerOptions,
  LedgerRejection,
  LedgerStatus,
  RecordResult,
  StoredRecord,
} from './ledger.js';
import type { UsageBatch } from './usageBatch.js';
import {
  fromWire,
  type CallerMessage,
  type LedgerCall,
  type LedgerOperation,
  type WorkerInit,
  type WorkerMessage,
} from './workerProtocol.js';

/** The worker's script, built next to this module. */
const WORKER_URL = new URL('./ledgerWorker.js', import.meta.url);

/**
 * Heap limits of the worker: it holds prepared statements and one commit's batches, never the app's bodies,
 * so a small young generation is enough and keeps the thread's memory down.
 */
const WORKER_LIMITS = { maxYoungGenerationSizeMb: 4, maxOldGenerationSizeMb: 256 };

/** Options of {@link WorkerLedger.open}: the ledger's own, and where the worker's script is. */
export interface WorkerLedgerOptions extends LedgerOptions {
  /** The built ./ledgerWorker.js; tests that run this module from source point it at the build. */
  readonly workerUrl?: URL;
  /** Told once if the worker dies while the ledger is open (the agent then exits: see src/main.ts). */
  readonly onLost?: (err: StorageUnavailableError) => void;
}

interface Waiting {
  readonly resolve: (value: unknown) => void;
  readonly reject: (err: Error) => void;
}

/** A {@link Ledger} whose SQLite connection lives on a worker thread. Create with {@link WorkerLedger.open}. */
export class WorkerLedger implements Ledger {
  readonly #worker: Worker;
  readonly #options: WorkerLedgerOptions;
  readonly #ledgerId: string;
  readonly #files: readonly string[];
  readonly #waiting = new Map<number, Waiting>();
  #nextId = 1;
  #outbox: LedgerCall[] = [];
  /** Set once the worker is gone: what every call answers from then on. */
  #lost: StorageUnavailableError | undefined;
  #closing: Promise<void> | undefined;
  readonly #exited: Promise<void>;

  private constructor(
    worker: Worker,
    options: WorkerLedgerOptions,
    opened: { ledgerId: string; files: readonly string[] },
  ) {
    this.#worker = worker;
    this.#options = options;
    this.#ledgerId = opened.ledgerId;
    this.#files = opened.files;
    this.#exited = new Promise((resolve) => worker.once('exit', () => resolve()));
    worker.on('message', (message: WorkerMessage) => this.#receive(message));
    worker.on('error', (err) => this.#lose(`the ledger's worker thread failed (${describeError(err)})`));
    worker.once('exit', (code) => this.#lose(`the ledger's worker thread exited (code ${code})`));
  }

  /**
   * Starts the worker and opens (or creates) the ledger in `options.stateDir` there, holding the directory's
   * lock until {@link close}.
   * @throws (as a rejection) StateLockedError, LedgerCorruptError or StorageUnavailableError, as
   * `SqliteLedger.open` does.
   */
  static open(options: WorkerLedgerOptions): Promise<WorkerLedger> {
    const init: WorkerInit = {
      stateDir: options.stateDir,
      productCode: options.productCode,
      dryRun: options.dryRun,
      idempotencyKeysMax: options.idempotencyKeysMax,
      nowMs: options.clock.now(),
      monotonicMs: options.clock.monotonicMs(),
    };
    const worker = new Worker(options.workerUrl ?? WORKER_URL, {
      workerData: init,
      resourceLimits: WORKER_LIMITS,
      // The worker writes nothing to the process's streams; errors come back as messages.
      stdout: false,
      stderr: false,
    });
    return new Promise((resolve, reject) => {
      const failed = (err: Error): void => {
        worker.off('message', first);
        void worker.terminate();
        reject(err);
      };
      const first = (message: WorkerMessage): void => {
        worker.off('error', onError);
        worker.off('exit', onExit);
        if (message.kind === 'opened') resolve(new WorkerLedger(worker, options, message));
        else if (message.kind === 'openFailed') {
          // The worker closes its port after a failed open and ends; the lock was never taken or is released.
          worker.once('exit', () => reject(fromWire(message.error)));
        } else
          failed(new StorageUnavailableError(`the ledger's worker answered ${message.kind} before opening`));
      };
      const onError = (err: Error): void =>
        failed(
          new StorageUnavailableError(`the ledger's worker thread failed to start (${describeError(err)})`),
        );
      const onExit = (code: number): void =>
        failed(
          new StorageUnavailableError(`the ledger's worker thread exited (code ${code}) before opening`),
        );
      worker.once('message', first);
      worker.once('error', onError);
      worker.once('exit', onExit);
    });
  }

  get ledgerId(): string {
    return this.#ledgerId;
  }

  get files(): readonly string[] {
    return this.#files;
  }

  record(batch: UsageBatch): Promise<RecordResult | LedgerRejection> {
    return this.#call('record', [batch]);
  }

  seal(clockMs: number, includeOpen: boolean): Promise<StoredRecord[]> {
    return this.#call('seal', [clockMs, includeOpen]);
  }

  due(nowMs: number): Promise<StoredRecord[]> {
    return this.#call('due', [nowMs]);
  }

  expiring(clockMs: number): Promise<StoredRecord[]> {
    return this.#call('expiring', [clockMs]);
  }

  nextAttemptMs(): Promise<number | undefined> {
    return this.#call('nextAttemptMs', []);
  }

  pendingCount(): Promise<number> {
    return this.#call('pendingCount', []);
  }

  dueAt(id: number, atMs: number): Promise<void> {
    return this.#call('dueAt', [id, atMs]);
  }

  retryAllNow(nowMs: number): Promise<void> {
    return this.#call('retryAllNow', [nowMs]);
  }

  markInFlight(id: number): Promise<void> {
    return this.#call('markInFlight', [id]);
  }

  markSent(id: number, meteringRecordId: string, nowMs: number): Promise<void> {
    return this.#call('markSent', [id, meteringRecordId, nowMs]);
  }

  markRetry(id: number, error: string, nextAttemptMs: number, maybeDelivered: boolean): Promise<void> {
    return this.#call('markRetry', [id, error, nextAttemptMs, maybeDelivered]);
  }

  markFailed(id: number, error: string, nowMs: number, attempted?: boolean): Promise<void> {
    return this.#call(
      'markFailed',
      attempted === undefined ? [id, error, nowMs] : [id, error, nowMs, attempted],
    );
  }

  carry(id: number, clockMs: number, reason: string): Promise<number | undefined> {
    return this.#call('carry', [id, clockMs, reason]);
  }

  prune(nowMs: number): Promise<void> {
    return this.#call('prune', [nowMs]);
  }

  status(nowMs: number): Promise<LedgerStatus> {
    return this.#call('status', [nowMs]);
  }

  writable(nowMs: number): Promise<{ ok: true } | { ok: false; reason: string }> {
    if (this.#lost !== undefined) return Promise.resolve({ ok: false, reason: this.#lost.message });
    return this.#call<{ ok: true } | { ok: false; reason: string }>('writable', [nowMs]).catch(
      (err: unknown) => ({ ok: false, reason: describeError(err) }),
    );
  }

  keyStats(): Promise<{ count: number; oldestAtMs: number | undefined }> {
    return this.#call('keyStats', []);
  }

  handoffSnapshot(): Promise<HandoffSnapshot> {
    return this.#call('handoffSnapshot', []);
  }

  completeHandoff(entry: HandoffEntry, clockMs: number): Promise<boolean> {
    return this.#call('completeHandoff', [entry, clockMs]);
  }

  adoptHandoff(entry: HandoffEntry, clockMs: number): Promise<boolean> {
    return this.#call('adoptHandoff', [entry, clockMs]);
  }

  handoffIds(): Promise<{ written: Set<string>; adopted: Set<string> }> {
    return this.#call('handoffIds', []);
  }

  /**
   * Commits what is queued, closes the database and releases the lock, then ends the worker; resolves once the
   * thread has exited, so the state directory is free for the next ledger. Idempotent.
   */
  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    if (this.#lost === undefined) {
      this.#send();
      const closed = new Promise<void>((resolve) =>
        this.#worker.on('message', (message: WorkerMessage) => {
          if (message.kind === 'closed') resolve();
        }),
      );
      const message: CallerMessage = { kind: 'close' };
      this.#worker.postMessage(message);
      await Promise.race([closed, this.#exited]);
    }
    await this.#exited;
  }

  #call<T>(op: LedgerOperation, args: readonly unknown[]): Promise<T> {
    if (this.#lost !== undefined) return Promise.reject(this.#lost);
    if (this.#closing !== undefined)
      return Promise.reject(new StorageUnavailableError('the ledger is closed'));
    return new Promise<T>((resolve, reject) => {
      const id = this.#nextId++;
      this.#waiting.set(id, { resolve: resolve as (value: unknown) => void, reject });
      // Calls made in one turn of the event loop (the requests parsed together) cross as one message.
      if (this.#outbox.length === 0) setImmediate(() => this.#send());
      const clock = this.#options.clock;
      this.#outbox.push({ id, op, args, nowMs: clock.now(), monotonicMs: clock.monotonicMs() });
    });
  }

  #send(): void {
    if (this.#outbox.length === 0 || this.#lost !== undefined) return;
    const message: CallerMessage = { kind: 'calls', calls: this.#outbox };
    this.#outbox = [];
    this.#worker.postMessage(message);
  }

  #receive(message: WorkerMessage): void {
    if (message.kind === 'replies') {
      for (const reply of message.replies) {
        const waiting = this.#waiting.get(reply.id);
        if (waiting === undefined) continue;
        this.#waiting.delete(reply.id);
        if (reply.ok) waiting.resolve(reply.value);
        else waiting.reject(fromWire(reply.error));
      }
    } else if (message.kind === 'keysEvicted') {
      this.#options.onKeysEvicted?.(message.evicted, message.oldestKeptAtMs);
    }
  }

  /** The worker is gone: whatever waits, and whatever comes, is refused. */
  #lose(reason: string): void {
    if (this.#lost !== undefined) return;
    const closing = this.#closing !== undefined;
    const lost = new StorageUnavailableError(closing ? 'the ledger is closed' : reason);
    this.#lost = lost;
    const waiting = [...this.#waiting.values()];
    this.#waiting.clear();
    this.#outbox = [];
    for (const w of waiting) w.reject(lost);
    if (!closing) this.#options.onLost?.(lost);
  }
}
