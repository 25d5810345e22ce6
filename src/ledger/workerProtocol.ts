/**
 * The messages between {@link WorkerLedger} (./workerLedger.ts, on the event loop's thread) and the ledger's
 * worker thread (./ledgerWorker.ts), which owns the SQLite connection. Plain data only: every message crosses
 * by structured clone. Each call carries the caller's clock readings, so the ledger stamps usage with the time
 * it arrived, read on the caller's clock (an injected one in tests), exactly as it would in one thread.
 */
import {
  LedgerCorruptError,
  StateLockedError,
  StorageUnavailableError,
  describeError,
  errorCode,
} from '../errors.js';
import type { Ledger } from './ledger.js';

/** The operations of a {@link Ledger} the worker answers: every method but `close`, which ends the worker. */
export type LedgerOperation = {
  [K in keyof Ledger]: Ledger[K] extends (...args: never[]) => Promise<unknown> ? K : never;
}[keyof Ledger];

/** What opens the worker's ledger (`workerData`): the ledger's options, without the clock and callbacks. */
export interface WorkerInit {
  readonly stateDir: string;
  readonly productCode: string;
  readonly dryRun: boolean;
  readonly idempotencyKeysMax: number | undefined;
  readonly nowMs: number;
  readonly monotonicMs: number;
}

/** One call of an operation, with the caller's clock readings at the moment it was made. */
export interface LedgerCall {
  readonly id: number;
  readonly op: LedgerOperation;
  readonly args: readonly unknown[];
  readonly nowMs: number;
  readonly monotonicMs: number;
}

/** An error as it crosses threads: its class name, code and message. */
export interface WireError {
  readonly name: string;
  readonly code: string | undefined;
  readonly message: string;
}

/** A call's outcome. */
export type LedgerReply =
  | { readonly id: number; readonly ok: true; readonly value: unknown }
  | { readonly id: number; readonly ok: false; readonly error: WireError };

/** Messages from the worker. */
export type WorkerMessage =
  | { readonly kind: 'opened'; readonly ledgerId: string; readonly files: readonly string[] }
  | { readonly kind: 'openFailed'; readonly error: WireError }
  | { readonly kind: 'replies'; readonly replies: readonly LedgerReply[] }
  | { readonly kind: 'keysEvicted'; readonly evicted: number; readonly oldestKeptAtMs: number | undefined }
  | { readonly kind: 'closed' };

/** Messages to the worker: a batch of calls, or the request to close. */
export type CallerMessage =
  { readonly kind: 'calls'; readonly calls: readonly LedgerCall[] } | { readonly kind: 'close' };

/** An error, ready to cross. */
export function toWire(err: unknown): WireError {
  return {
    name: err instanceof Error ? err.name : 'Error',
    code: errorCode(err),
    message: err instanceof Error ? err.message : describeError(err),
  };
}

/** The error a {@link WireError} stands for, of the same class for the errors the ledger raises. */
export function fromWire(wire: WireError): Error {
  switch (wire.name) {
    case 'StorageUnavailableError':
      return new StorageUnavailableError(wire.message);
    case 'LedgerCorruptError':
      return new LedgerCorruptError(wire.message);
    case 'StateLockedError':
      return new StateLockedError(wire.message);
    default: {
      const err = new Error(wire.message) as Error & { code?: string };
      err.name = wire.name;
      if (wire.code !== undefined) err.code = wire.code;
      return err;
    }
  }
}
