/**
 * The ledger's worker thread: owns the SQLite connection (and the state directory's lock) and answers the
 * calls of {@link WorkerLedger} (./workerLedger.ts). Every statement and every `fsync` of a commit runs here,
 * so the event loop that parses the app's requests never waits for the disk. Calls are answered in the order
 * they arrive; `record` calls that arrive while a commit is under way share the next one (group commit, as in
 * ./sqliteLedger.ts), and each is answered only once its transaction has committed with synchronous=FULL.
 *
 * Started by {@link WorkerLedger.open} with a {@link WorkerInit} as `workerData`; not a module to import.
 */
import { parentPort, workerData } from 'node:worker_threads';
import type { Clock } from '../clock.js';
import { InProcessLedger } from './inProcessLedger.js';
import { SqliteLedger } from './sqliteLedger.js';
import {
  toWire,
  type CallerMessage,
  type LedgerCall,
  type LedgerReply,
  type WorkerInit,
  type WorkerMessage,
} from './workerProtocol.js';

const port = parentPort;
if (port === null) throw new Error('ledgerWorker.js runs as a worker thread (see WorkerLedger.open)');
const init = workerData as WorkerInit;
const post = (message: WorkerMessage): void => port.postMessage(message);

/** The caller's clock, as read when the call being handled was made. The ledger sets no timers. */
let reading = { nowMs: init.nowMs, monotonicMs: init.monotonicMs };
const callerClock: Clock = {
  now: () => reading.nowMs,
  monotonicMs: () => reading.monotonicMs,
  setTimer: () => {
    throw new Error('the ledger worker sets no timers');
  },
};

let ledger: InProcessLedger | undefined;
try {
  const store = SqliteLedger.open({
    stateDir: init.stateDir,
    productCode: init.productCode,
    dryRun: init.dryRun,
    clock: callerClock,
    ...(init.idempotencyKeysMax !== undefined ? { idempotencyKeysMax: init.idempotencyKeysMax } : {}),
    onKeysEvicted: (evicted, oldestKeptAtMs) => post({ kind: 'keysEvicted', evicted, oldestKeptAtMs }),
  });
  ledger = new InProcessLedger(store);
  post({ kind: 'opened', ledgerId: store.ledgerId, files: store.files });
} catch (err) {
  post({ kind: 'openFailed', error: toWire(err) });
  port.close();
}

/** Replies waiting to be posted: those settled in one turn go as one message. */
let outbox: LedgerReply[] = [];

function reply(message: LedgerReply): void {
  if (outbox.length === 0) queueMicrotask(postReplies);
  outbox.push(message);
}

function postReplies(): void {
  if (outbox.length === 0) return;
  const replies = outbox;
  outbox = [];
  post({ kind: 'replies', replies });
}

function handle(open: InProcessLedger, call: LedgerCall): void {
  reading = { nowMs: call.nowMs, monotonicMs: call.monotonicMs };
  // A method of the Ledger interface, called on the ledger with the arguments its caller gave.
  const operation = (open[call.op] as (...args: unknown[]) => Promise<unknown>).bind(open);
  operation(...call.args).then(
    (value) => reply({ id: call.id, ok: true, value }),
    (err: unknown) => reply({ id: call.id, ok: false, error: toWire(err) }),
  );
}

if (ledger !== undefined) {
  const open = ledger;
  port.on('message', (message: CallerMessage) => {
    if (message.kind === 'calls') {
      for (const call of message.calls) handle(open, call);
      return;
    }
    // Close commits whatever is queued, then releases the file and the lock before the thread ends.
    void open.close().finally(() => {
      postReplies(); // the last batches' answers, settled by the final commit
      post({ kind: 'closed' });
      port.close();
    });
  });
}
