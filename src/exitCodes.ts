/**
 * The process exit codes (docs/metering.md "Exit codes"). `main.ts` is the only caller of `process.exit`; the
 * agent names the outcome of its shutdown with these too.
 */
export const EXIT = Object.freeze({
  /** Clean shutdown with nothing left unsent. */
  ok: 0,
  /** Anything unexpected: an unreadable ledger, a socket that cannot be opened, a bug. */
  unexpected: 1,
  /** Wrong command-line usage (EX_USAGE). */
  usage: 64,
  /** AWS unreachable within the startup retry budget (EX_UNAVAILABLE). */
  unavailable: 69,
  /** Shutdown with records left in the ledger, sent at the next start on the same state directory (EX_TEMPFAIL). */
  leftInLedger: 75,
  /** Not entitled, or the entitlement proof did not verify (EX_NOPERM). */
  notEntitled: 77,
  /** Bad configuration, or a state directory another sidecar holds (EX_CONFIG). */
  config: 78,
} as const);
