/**
 * Every error the sidecar throws on purpose. Expected outcomes (a rejected request, an AWS error on send) are
 * values, not errors; these classes are for misuse, I/O failures and fatal startup conditions. Each one has a
 * stable `code` that logs, metrics and exit-code mapping key on; never parse `message`.
 */

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
    super('ERR_STATE_UNAVAILABLE', message, options);
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
