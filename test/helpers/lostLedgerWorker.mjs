// A stand-in for dist/ledger/ledgerWorker.js that opens, then dies on its first call: how WorkerLedger
// behaves when its thread is lost (test/process/workerLedger.test.ts).
import { parentPort } from 'node:worker_threads';

parentPort.postMessage({ kind: 'opened', ledgerId: 'lost-ledger', files: [] });
parentPort.on('message', (message) => {
  if (message.kind === 'calls') throw new Error('the ledger thread died');
});
