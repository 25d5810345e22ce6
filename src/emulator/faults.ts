/**
 * Injected faults: which names may be queued, how many, and the per-operation queues that the next calls
 * consume in FIFO order, before any validation or authentication.
 */
import { isErrorName } from './awsJson.js';

/**
 * Largest `count` accepted by `MeteringEmulator.failNext` and `tamperNextToken`: guards against a typo
 * queueing millions of faults (each is one array entry).
 */
export const MAX_FAULT_COUNT = 10_000;

/** Fault names that are not AWS errors but transport behaviours. */
const TRANSPORT_FAULTS: ReadonlySet<string> = new Set(['ConnectionReset', 'Timeout', 'ResetAfterProcessing']);

/** Why `count` faults `errorName` cannot be queued for `operation`, or `undefined` when they can. */
export function faultProblem(
  operations: readonly string[],
  operation: string,
  errorName: string,
  count: number,
): string | undefined {
  if (!operations.includes(operation)) {
    return `Unknown operation ${JSON.stringify(operation)}; the emulator serves ${operations.join(', ')}.`;
  }
  if (!TRANSPORT_FAULTS.has(errorName) && !isErrorName(errorName)) {
    return `Fault ${JSON.stringify(errorName)} must be an AWS error name (letters and digits, e.g. "ThrottlingException"), "ConnectionReset", "ResetAfterProcessing" or "Timeout".`;
  }
  return countProblem('Fault count', count);
}

/** Why `count` is not an integer 1..{@link MAX_FAULT_COUNT}, naming it `what`; `undefined` when it is. */
export function countProblem(what: string, count: number): string | undefined {
  if (!Number.isInteger(count) || count < 1 || count > MAX_FAULT_COUNT) {
    return `${what} must be an integer from 1 to ${MAX_FAULT_COUNT} (got ${count}).`;
  }
  return undefined;
}

/** Queued fault names per operation. */
export class FaultQueues {
  #queues = new Map<string, string[]>();

  /** Queues `count` faults `errorName` (already checked) for `operation`. */
  push(operation: string, errorName: string, count: number): void {
    const queue = this.#queues.get(operation) ?? [];
    for (let i = 0; i < count; i += 1) queue.push(errorName);
    this.#queues.set(operation, queue);
  }

  /** The next fault for `operation`, consumed; `undefined` when none is queued. */
  take(operation: string): string | undefined {
    return this.#queues.get(operation)?.shift();
  }

  clear(): void {
    this.#queues = new Map();
  }
}
