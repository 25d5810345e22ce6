/**
 * Every error the sidecar throws on purpose. Expected outcomes (a rejected request, an AWS error on send) are
 * values, not errors; these classes are for misuse, I/O failures and fatal startup conditions. Each one has a
 * stable `code` that logs, metrics and exit-code mapping key on; never parse `message`.
 */

/**
 * Codes of conditions that are logged, counted or answered without an error class of their own. Together with
 * the classes below, every `ERR_*` code the sidecar emits is defined in this file.
 */
export const CODES = Object.freeze({
  /** A bug behind a request: answered 500 `Internal`, logged with the stack. */
  internal: 'ERR_INTERNAL',
  /** An error of no known kind (a bug); the process exits 1 when it ends startup. */
  unexpected: 'ERR_UNEXPECTED',
  /** Long-term AWS keys in the environment outside local mode (a warning). */
  staticCredentials: 'ERR_CONFIG_STATIC_CREDENTIALS',
  /** A send succeeded without a reported connection: every failure is then taken as possibly delivered. */
  sendEvidence: 'ERR_SEND_EVIDENCE',
  /** A record's window closed after an attempt that may have reached AWS: failed, not carried. */
  sendAmbiguous: 'ERR_SEND_AMBIGUOUS',
  /** No product public key: the RegisterUsage token is accepted unverified (a warning). */
  publicKeyMissing: 'ERR_PUBLIC_KEY_MISSING',
  /** AWS reports the configured public key version as expired (a warning). */
  publicKeyRotated: 'ERR_PUBLIC_KEY_ROTATED',
  /** The idempotency-key store reached its bound and forgets its oldest keys (a warning). */
  idempotencyKeysFull: 'ERR_IDEMPOTENCY_KEYS_FULL',
  /** RegisterUsage answered without a signature. */
  tokenMissing: 'ERR_TOKEN_MISSING',
  /** The ledger cannot be written (also the code of StorageUnavailableError). */
  stateUnavailable: 'ERR_STATE_UNAVAILABLE',
  /** Handing off at shutdown, or adopting handoffs, failed (the usage stays where it was). */
  handoffFailed: 'ERR_HANDOFF_FAILED',
  /** An adopted handoff holds records that may already be billed; they are not billed again (a warning). */
  handoffUncertain: 'ERR_HANDOFF_UNCERTAIN',
  /** A handoff of another product or version, or not readable, is left in the directory (a warning). */
  handoffIgnored: 'ERR_HANDOFF_IGNORED',
  /** The ECS task metadata endpoint did not answer: records are sealed without the task ARN (a warning). */
  platformIdentity: 'ERR_PLATFORM_IDENTITY',
  /** Unit remainders (below one billed unit) untouched for the retention period were given up (a warning). */
  remainderPruned: 'ERR_UNIT_REMAINDER_PRUNED',
  /** A bug in the emulator behind a request. */
  emulatorInternal: 'ERR_EMULATOR_INTERNAL',
  /** The emulator's onCall callback threw. */
  emulatorOnCall: 'ERR_EMULATOR_ON_CALL',
} as const);

/** The code of a RegisterUsage token that did not verify: `ERR_TOKEN_` and the problem (`ERR_TOKEN_BAD_SIGNATURE`). */
export function tokenErrorCode(problem: string): string {
  return `ERR_TOKEN_${problem.toUpperCase().replace(/-/g, '_')}`;
}

/** Base class: a stable `code` plus the standard `cause`. */
export class AgentError extends Error {
  readonly code: string;

  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'AgentError';
    this.code = code;
  }
}

/** One entry of a {@link ConfigError}: the variable, the value received and what was expected. */
export interface ConfigProblem {
  readonly variable: string;
  readonly value: string | undefined;
  readonly expected: string;
}

/** The environment is invalid. Lists every problem at once; the process exits 78. */
export class ConfigError extends AgentError {
  readonly problems: readonly ConfigProblem[];

  constructor(problems: readonly ConfigProblem[]) {
    const lines = problems.map(
      (p) =>
        `${p.variable}=${p.value === undefined ? '(unset)' : JSON.stringify(p.value)}: expected ${p.expected}`,
    );
    super('ERR_CONFIG_INVALID', `invalid configuration (${problems.length}): ${lines.join('; ')}`);
    this.name = 'ConfigError';
    this.problems = problems;
  }
}

/** The ledger database cannot be read, or was written by a newer schema. Never answered by starting empty. */
export class LedgerCorruptError extends AgentError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_STATE_CORRUPT', message, options);
    this.name = 'LedgerCorruptError';
  }
}

/** The ledger could not commit (disk full, read-only, I/O error). Nothing of the failed batch was stored. */
export class StorageUnavailableError extends AgentError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(CODES.stateUnavailable, message, options);
    this.name = 'StorageUnavailableError';
  }
}

/** Another running sidecar holds the state directory. The process exits 78, as for a configuration mistake. */
export class StateLockedError extends AgentError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_STATE_LOCKED', message, options);
    this.name = 'StateLockedError';
  }
}

/** A listener could not be opened (address in use, socket directory missing, permission denied). */
export class ListenError extends AgentError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_LISTEN_FAILED', message, options);
    this.name = 'ListenError';
  }
}

/** The buyer is not entitled, or the entitlement proof did not verify. The process exits 77. */
export class NotEntitledError extends AgentError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_NOT_ENTITLED', message, options);
    this.name = 'NotEntitledError';
  }
}

/** AWS could not be reached within the startup retry budget. The process exits 69. */
export class AwsUnavailableError extends AgentError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_AWS_UNAVAILABLE', message, options);
    this.name = 'AwsUnavailableError';
  }
}

/** Wrong command-line usage. The process exits 64 (EX_USAGE). */
export class UsageError extends AgentError {
  constructor(message: string) {
    super('ERR_CLI_USAGE', message);
    this.name = 'UsageError';
  }
}

/** The `code` of a thrown value (an Error with a string `code`, as Node and SQLite set), or `undefined`. */
export function errorCode(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null | undefined)?.code;
  return typeof code === 'string' ? code : undefined;
}

/** A thrown value for a message: `CODE: message` when it has a code, else its message. */
export function describeError(err: unknown): string {
  const code = errorCode(err);
  const message = err instanceof Error ? err.message : String(err);
  return code !== undefined ? `${code}: ${message}` : message;
}
