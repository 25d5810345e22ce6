/**
 * A local AWS Marketplace Metering Service that the real `MarketplaceMeteringClient` talks to unchanged
 * (endpoint override). It speaks AWS JSON 1.1 on `POST /`, enforces the MeterUsage and RegisterUsage rules
 * AWS enforces (pure functions in `meterUsageRules.ts` and `registerUsage.ts`), records what would be
 * billed, answers RegisterUsage with a PS256 token signed by its own RSA key, and can inject faults
 * (AWS errors, connection resets, hung requests, tampered tokens). Tests drive it in-process through
 * `MeteringEmulator`; standalone users (the CLI's `emulator` command, sellers' own tests) use the JSON
 * control surface under `/emulator/` on the same port. Only the SigV4 credential scope is read; request
 * signatures are not verified.
 *
 * Request path: read body (413 over 1 MiB) -> `x-amz-target` -> injected fault? -> authenticate ->
 * decode JSON -> operation handler (dispatch table) -> answer -> `calls` + `onCall`.
 *
 * References: `§` numbers are sections of docs/aws-rules.md, the AWS rules with their public sources.
 * @see docs/aws-rules.md §1.3-1.6 (wire format), §2.2 (MeterUsage), §3.1-3.4 (semantics),
 *   §2.1, §3.6-3.7 (RegisterUsage and its token)
 */
import { KeyObject, createPublicKey, generateKeyPairSync, randomUUID } from 'node:crypto';
import { createServer } from 'node:http';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

import {
  JSON_CONTENT_TYPE,
  authenticate,
  errorBody,
  httpStatusFor,
  identityForLog,
  isErrorName,
  parseTarget,
  unknownOperation,
} from './awsJson.js';
import type { ServiceError } from './awsJson.js';
import { decideMeterUsage, hourStartMs, requestFingerprint, validateMeterUsage } from './meterUsageRules.js';
import type { HourEntry, MeterUsageRequest, TokenEntry } from './meterUsageRules.js';
import {
  EMULATOR_ENTITLEMENTS,
  MAX_PUBLIC_KEY_VERSION,
  MIN_PUBLIC_KEY_VERSION,
  isEmulatorEntitlement,
  registerUsageClaims,
  signJwt,
  validateRegisterUsage,
} from './registerUsage.js';
import type { EmulatorEntitlement, RegisterUsageClaims } from './registerUsage.js';
import { CODES } from '../errors.js';

export type { EmulatorEntitlement } from './registerUsage.js';

/**
 * Largest request body accepted, on the AWS path and the control surface alike; larger bodies get 413.
 * Not an AWS MeterUsage limit (a MeterUsage body with 2500 maximal allocations is about 1 MB); it keeps
 * a misbehaving client from growing the emulator's memory. Compare BatchMeterUsage's "under 1 MB".
 * @see docs/aws-rules.md §2.3
 */
export const MAX_REQUEST_BODY_BYTES = 1024 * 1024;

/**
 * Largest `count` accepted by {@link MeteringEmulator.failNext}: guards against a typo queueing millions
 * of faults (each is one array entry).
 */
export const MAX_FAULT_COUNT = 10_000;

/** Message AWS gives for a DryRun that would have succeeded (EC2-style `DryRunOperation`). */
const DRY_RUN_MESSAGE = 'Request would have succeeded, but DryRun flag is set.';

/** Fault names that are not AWS errors but transport behaviours. */
const TRANSPORT_FAULTS: ReadonlySet<string> = new Set(['ConnectionReset', 'Timeout', 'ResetAfterProcessing']);

/** Path prefix of the control surface. */
const CONTROL_PREFIX = '/emulator/';

/**
 * Size of the RSA key the emulator generates when no `signingKey` is given: 2048 bits, the smallest size
 * common JWT libraries (e.g. `jose`) accept for PS256, so a sidecar may verify with any of them.
 * @see docs/aws-rules.md §3.7
 */
const SIGNING_KEY_BITS = 2048;

/** Routes of the control surface, for 404 and 405 answers. */
const CONTROL_ROUTES: readonly string[] = [
  'GET /emulator/calls',
  'GET /emulator/records',
  'GET /emulator/public-key',
  'POST /emulator/entitlement',
  'POST /emulator/faults',
  'POST /emulator/reset',
];

/** Options of {@link MeteringEmulator}. */
export interface EmulatorOptions {
  /** The product code the emulated product was published with; any other gets `InvalidProductCodeException`. */
  productCode: string;
  /** Dimension allow-list; `undefined` accepts any dimension (1..255 characters). */
  dimensions?: readonly string[];
  /** Emulator clock in epoch ms, used for the timestamp window and `atMs`; default `Date.now`. */
  now?: () => number;
  /**
   * How a DryRun that passes every check is answered: `'error'` (default) = 400 `DryRunOperation`,
   * `'success'` = 200 `{}`. AWS's choice is ambiguous (§3.4), so a sidecar must accept both.
   */
  dryRunResponse?: 'error' | 'success';
  /**
   * Called after each AWS-path call is answered (or, for the `'Timeout'` fault, once it has been decided
   * never to answer). Runs synchronously on the server's event-loop turn; if it throws, the error is
   * reported as a process warning and the emulator carries on.
   */
  onCall?: (call: EmulatorCall) => void;
  /**
   * The product's current public key version (an integer 1..2^31-1, default 1). RegisterUsage with any
   * other `PublicKeyVersion` gets `InvalidPublicKeyVersionException`, and tokens carry this version.
   * @see docs/aws-rules.md §2.1, §3.7
   */
  publicKeyVersion?: number;
  /**
   * Entitlement state at start (default `'entitled'`); change it at run time with
   * {@link MeteringEmulator.setEntitlement} or `POST /emulator/entitlement`. Unlike AWS, which throws the
   * entitlement errors only on the first call of a task or pod (§3.6), the emulator applies the current
   * state to every RegisterUsage call, so a test can flip it and call again with the same credentials.
   * @see docs/aws-rules.md §3.6
   */
  entitlement?: EmulatorEntitlement;
  /**
   * When set (epoch ms, finite), every successful RegisterUsage also answers
   * `PublicKeyRotationTimestamp` (epoch seconds on the wire, a `Date` in the SDK), as AWS does once the
   * key version has expired. When unset, the field is omitted, as AWS does for a current key.
   * @see docs/aws-rules.md §2.1, §1.4, §3.7
   */
  publicKeyRotatedAtMs?: number;
  /**
   * Private RSA key (`rsa` or `rsa-pss` `KeyObject`) that signs RegisterUsage tokens, for tests that need
   * a known key pair. When absent, the emulator generates its own {@link SIGNING_KEY_BITS}-bit RSA key on
   * first use (first successful RegisterUsage or first read of `publicKeyPem`) and keeps it for its lifetime.
   * @see docs/aws-rules.md §3.7
   */
  signingKey?: KeyObject;
}

/**
 * One request on the AWS path, as the emulator answered it. `status` is the HTTP status sent, or 0 when
 * no answer was sent (`'ConnectionReset'` and `'Timeout'` faults). `error` is the AWS error name sent
 * (including injected faults and `DryRunOperation`), or the transport fault name. `input` is the decoded
 * JSON body, or `undefined` when the body was not JSON. `identity` is the SigV4 access key id when known.
 */
export interface EmulatorCall {
  operation: string;
  identity: string | undefined;
  input: unknown;
  status: number;
  error?: string;
  atMs: number;
}

/**
 * A billable MeterUsage record: at most one per (identity, productCode, dimension, hourStartMs). Repeats
 * that the service answers idempotently do not add records. `allocations` is `[]` when the request had
 * none; an untagged allocation has `tags: {}`.
 */
export interface MeteredRecord {
  identity: string;
  productCode: string;
  dimension: string;
  hourStartMs: number;
  timestampMs: number;
  quantity: number;
  allocations: { quantity: number; tags: Record<string, string> }[];
  clientToken: string | undefined;
  meteringRecordId: string;
}

/** The RegisterUsage signing key with its public half as SPKI PEM. */
interface Signer {
  readonly privateKey: KeyObject;
  readonly publicKeyPem: string;
}

/** What an operation handler answers: a 200 body, or an AWS error. */
type OperationOutcome =
  | { readonly kind: 'success'; readonly body: Readonly<Record<string, unknown>> }
  | { readonly kind: 'error'; readonly error: ServiceError };

/** An emulated operation: identity is authenticated, input is a JSON object. */
type OperationHandler = (identity: string, input: Readonly<Record<string, unknown>>) => OperationOutcome;

/** Outcome of reading a request body. */
type BodyResult =
  | { readonly kind: 'body'; readonly text: string }
  | { readonly kind: 'tooLarge' }
  | { readonly kind: 'aborted' };

/** A body that was received (whole, or refused as too large). */
type ReceivedBody = Exclude<BodyResult, { readonly kind: 'aborted' }>;

/**
 * In-memory Marketplace Metering Service on a local HTTP port.
 *
 * Contract:
 * - `start()` listens (default `127.0.0.1:0`) and resolves with the base URL to pass as the SDK's
 *   `endpoint`; it rejects if the port cannot be bound and throws if already started.
 * - Every AWS-path request is appended to `calls` in arrival order; successful MeterUsage calls that are
 *   not idempotent repeats append to `records`. DryRun, RegisterUsage and faulted calls never record.
 * - A successful RegisterUsage answers a PS256 token signed with the key behind `publicKeyPem`; the
 *   next tokens queued by `tamperNextToken()` carry altered claims but a valid signature.
 * - `failNext()` faults are consumed in FIFO order by the next calls of that operation, before any
 *   validation or authentication.
 * - `stop()` is idempotent, closes every socket (including ones held by a `'Timeout'` fault) and
 *   resolves when the server is closed; `start()` may be called again afterwards.
 * - State (`calls`, `records`, tokens, faults, token tampering) survives stop/start and is cleared only
 *   by `reset()`. The signing key and the entitlement state are configuration: `reset()` keeps them.
 */
export class MeteringEmulator {
  readonly #productCode: string;
  readonly #dimensions: readonly string[] | undefined;
  readonly #now: () => number;
  readonly #dryRunResponse: 'error' | 'success';
  readonly #onCall: ((call: EmulatorCall) => void) | undefined;
  readonly #publicKeyVersion: number;
  readonly #publicKeyRotatedAtMs: number | undefined;
  /** Dispatch table: one entry + one method per operation. */
  readonly #operations: ReadonlyMap<string, OperationHandler>;

  /** RegisterUsage signing key and its public PEM: from the `signingKey` option, or made on first use. */
  #signer: Signer | undefined;
  #entitlement: EmulatorEntitlement;

  #server: Server | undefined;
  #url: string | undefined;
  #calls: EmulatorCall[] = [];
  #records: MeteredRecord[] = [];
  /** ClientToken -> what it was first used for (account-wide). */
  #tokens = new Map<string, TokenEntry>();
  /** once-per-hour key -> the record it produced. */
  #hours = new Map<string, HourEntry>();
  /** operation -> queued fault names, consumed from the front. */
  #faults = new Map<string, string[]>();
  /** Claims to merge into the next successful RegisterUsage tokens, consumed from the front. */
  #tampering: RegisterUsageClaims[] = [];

  /**
   * Creates a stopped emulator. Throws `TypeError` when `productCode` is not a string, `dimensions`
   * is given but empty (no call could ever succeed), `publicKeyVersion` is not an integer 1..2^31-1,
   * `entitlement` is not an {@link EmulatorEntitlement}, `publicKeyRotatedAtMs` is not a finite number,
   * or `signingKey` is not a private RSA key that can sign PS256.
   */
  constructor(options: EmulatorOptions) {
    if (typeof options.productCode !== 'string')
      throw new TypeError('EmulatorOptions.productCode must be a string');
    if (options.dimensions !== undefined && options.dimensions.length === 0) {
      throw new TypeError(
        'EmulatorOptions.dimensions must list at least one dimension, or be left out to allow any',
      );
    }
    this.#productCode = options.productCode;
    this.#dimensions = options.dimensions === undefined ? undefined : [...options.dimensions];
    this.#now = options.now ?? Date.now;
    this.#dryRunResponse = options.dryRunResponse ?? 'error';
    this.#onCall = options.onCall;
    this.#publicKeyVersion = checkPublicKeyVersion(options.publicKeyVersion ?? MIN_PUBLIC_KEY_VERSION);
    this.#entitlement = checkEntitlement(options.entitlement ?? 'entitled', 'EmulatorOptions.entitlement');
    if (options.publicKeyRotatedAtMs !== undefined && !Number.isFinite(options.publicKeyRotatedAtMs)) {
      throw new TypeError(
        'EmulatorOptions.publicKeyRotatedAtMs must be a finite epoch-ms number, or left out',
      );
    }
    this.#publicKeyRotatedAtMs = options.publicKeyRotatedAtMs;
    this.#signer = options.signingKey === undefined ? undefined : signer(checkSigningKey(options.signingKey));
    this.#operations = new Map<string, OperationHandler>([
      ['MeterUsage', (identity, input) => this.#meterUsage(identity, input)],
      ['RegisterUsage', (_identity, input) => this.#registerUsage(input)],
    ]);
  }

  /**
   * Starts listening and resolves with the base URL (`http://127.0.0.1:PORT`; IPv6 hosts are bracketed).
   * Rejects when the address cannot be bound. Throws if already started.
   */
  async start(options: { host?: string; port?: number } = {}): Promise<string> {
    if (this.#server !== undefined) throw new Error('MeteringEmulator is already started; call stop() first');
    const host = options.host ?? '127.0.0.1';
    const server = createServer((req, res) => {
      // Safe to not await: #handle never rejects (it catches everything and answers 500).
      void this.#handle(req, res);
    });
    this.#server = server;
    try {
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(options.port ?? 0, host, () => {
          server.off('error', reject);
          resolve();
        });
      });
    } catch (error) {
      this.#server = undefined;
      throw new Error(`MeteringEmulator could not listen on ${host}:${options.port ?? 0}`, { cause: error });
    }
    const { port } = server.address() as AddressInfo;
    this.#url = `http://${host.includes(':') ? `[${host}]` : host}:${port}`;
    return this.#url;
  }

  /** Base URL of the running emulator. Throws if it is not started. */
  get url(): string {
    if (this.#url === undefined) throw new Error('MeteringEmulator is not started; call start() first');
    return this.#url;
  }

  /** Every AWS-path call in arrival order (a snapshot; entries are frozen). */
  get calls(): readonly EmulatorCall[] {
    return [...this.#calls];
  }

  /** Billable records actually recorded, in recording order (a snapshot; entries are frozen). */
  get records(): readonly MeteredRecord[] {
    return [...this.#records];
  }

  /**
   * Queues `count` faults for `operation`; the next `count` calls of it are answered with the fault
   * before any validation, are logged in `calls`, and record nothing. `errorName` is an AWS error name
   * (answered 500 for `InternalServiceErrorException`, 403 for authentication errors, 400 otherwise) or
   * `'ConnectionReset'` (socket reset without an answer), `'ResetAfterProcessing'` (the call takes effect,
   * then the socket is reset: the client cannot tell it was recorded) or `'Timeout'` (no answer until the
   * client gives up or `stop()`). Throws `TypeError` for an operation the emulator does not serve, an error name that is
   * not a plain identifier, or a count that is not an integer 1..{@link MAX_FAULT_COUNT}.
   */
  failNext(operation: string, errorName: string, count = 1): void {
    const problem = this.#faultProblem(operation, errorName, count);
    if (problem !== undefined) throw new TypeError(problem);
    const queue = this.#faults.get(operation) ?? [];
    for (let i = 0; i < count; i += 1) queue.push(errorName);
    this.#faults.set(operation, queue);
  }

  /** Metered quantity per dimension, summed over all records (all identities and hours). */
  totals(): Map<string, number> {
    const totals = new Map<string, number>();
    for (const record of this.#records) {
      totals.set(record.dimension, (totals.get(record.dimension) ?? 0) + record.quantity);
    }
    return totals;
  }

  /**
   * The public half of the RegisterUsage signing key as SPKI PEM (`-----BEGIN PUBLIC KEY-----`), what a
   * sidecar is configured with to verify tokens. Stable for the emulator's lifetime (kept by `reset()`).
   * The first read generates the key when no `signingKey` was given (about 0.1-0.5 s, synchronous).
   */
  get publicKeyPem(): string {
    return this.#signerOnce().publicKeyPem;
  }

  /** The entitlement state the next RegisterUsage calls get. */
  get entitlement(): EmulatorEntitlement {
    return this.#entitlement;
  }

  /**
   * Changes what the next RegisterUsage calls get after their request passed validation, product code
   * and key version: a token (`'entitled'`) or the named error. Takes effect for the next call; kept by
   * `reset()`. Throws `TypeError` for any other state.
   * @see docs/aws-rules.md §3.6
   */
  setEntitlement(state: EmulatorEntitlement): void {
    this.#entitlement = checkEntitlement(state, 'setEntitlement(state)');
  }

  /**
   * Queues `claims` for the next `count` successful RegisterUsage tokens: each of those tokens has these
   * claims merged over its real payload (e.g. `{ Nonce: 'other' }`, `{ ProductCode: 'x' }`; a claim set
   * to `undefined` is removed) and is then signed normally, so the signature verifies but the claims do
   * not match the request. Queued entries are consumed in FIFO order, one per successful call; failed
   * and faulted calls consume none. `claims` is copied when queued. Throws `TypeError` when `claims` is
   * not a plain object that serializes as JSON, or `count` is not an integer 1..{@link MAX_FAULT_COUNT}.
   */
  tamperNextToken(claims: Record<string, unknown>, count = 1): void {
    if (typeof claims !== 'object' || claims === null || Array.isArray(claims)) {
      throw new TypeError('tamperNextToken(claims) needs an object of claims, e.g. { Nonce: "other" }');
    }
    const copy: RegisterUsageClaims = Object.freeze({ ...claims });
    try {
      JSON.stringify(copy);
    } catch (error) {
      throw new TypeError('tamperNextToken(claims) needs claims that serialize as JSON', { cause: error });
    }
    if (!Number.isInteger(count) || count < 1 || count > MAX_FAULT_COUNT) {
      throw new TypeError(
        `tamperNextToken count must be an integer from 1 to ${MAX_FAULT_COUNT} (got ${count}).`,
      );
    }
    for (let i = 0; i < count; i += 1) this.#tampering.push(copy);
  }

  /** Drops every queued fault, keeping calls, records and tokens: AWS recovers from an outage. */
  clearFaults(): void {
    this.#faults = new Map();
  }

  /**
   * Forgets calls, records, ClientTokens, once-per-hour keys, queued faults and queued token tampering.
   * Keeps listening, the signing key and the entitlement state.
   */
  reset(): void {
    this.#calls = [];
    this.#records = [];
    this.#tokens = new Map();
    this.#hours = new Map();
    this.#faults = new Map();
    this.#tampering = [];
  }

  /**
   * Stops listening and closes every connection, including idle keep-alive sockets and requests held by
   * a `'Timeout'` fault. Idempotent; resolves when the server has closed.
   */
  async stop(): Promise<void> {
    const server = this.#server;
    if (server === undefined) return;
    this.#server = undefined;
    this.#url = undefined;
    await new Promise<void>((resolve) => {
      // close() only stops accepting; it resolves once the connections destroyed below are gone.
      server.close(() => resolve());
      server.closeAllConnections();
    });
  }

  // ---- HTTP ----------------------------------------------------------------------------------------

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    try {
      const path = new URL(req.url ?? '/', 'http://emulator.invalid').pathname;
      const body = await readBody(req, MAX_REQUEST_BODY_BYTES);
      if (body.kind === 'aborted') return;
      if (path.startsWith(CONTROL_PREFIX)) {
        this.#handleControl(req.method ?? '', path, body, res);
      } else if (req.method === 'POST' && path.endsWith('/')) {
        this.#handleAws(req, body, res);
      } else {
        sendJson(res, 404, {
          error: `No route for ${req.method ?? ''} ${path}: AWS calls are POST /; the control surface is under ${CONTROL_PREFIX}.`,
        });
      }
    } catch (error) {
      // A bug in the emulator, not a client mistake: answer like AWS would and surface it loudly.
      process.emitWarning(`MeteringEmulator internal error: ${String(error)}`, {
        code: CODES.emulatorInternal,
      });
      if (!res.headersSent && !res.destroyed) {
        sendAwsError(res, {
          name: 'InternalServiceErrorException',
          message: 'Internal error in the emulator.',
        });
      }
    }
  }

  #handleAws(req: IncomingMessage, body: ReceivedBody, res: ServerResponse): void {
    const atMs = this.#now();
    const target = parseTarget(header(req, 'x-amz-target'));
    const operation = target.operation;
    // Known before authentication, so that rejected and faulted calls can still be attributed.
    const logIdentity = identityForLog(header(req, 'authorization'));
    if (body.kind === 'tooLarge') {
      this.#answer(
        res,
        { operation, identity: logIdentity, input: undefined, atMs },
        {
          kind: 'error',
          error: {
            name: 'RequestEntityTooLargeException',
            message: `Request body exceeds ${MAX_REQUEST_BODY_BYTES} bytes.`,
          },
        },
      );
      return;
    }
    const input = parseJson(body.text);
    if (target.kind === 'error') {
      this.#answer(res, { operation, identity: logIdentity, input, atMs }, target);
      return;
    }

    const fault = this.#faults.get(operation)?.shift();
    if (fault === 'ResetAfterProcessing') {
      // The call takes effect, then the answer is lost: the client cannot tell whether it was recorded.
      this.#handleAuthenticated(req, res, { operation, input, atMs }, true);
      return;
    }
    if (fault !== undefined) {
      this.#answerFault(req, res, { operation, identity: logIdentity, input, atMs }, fault);
      return;
    }

    this.#handleAuthenticated(req, res, { operation, input, atMs }, false);
  }

  #handleAuthenticated(
    req: IncomingMessage,
    res: ServerResponse,
    call: { operation: string; input: unknown; atMs: number },
    loseAnswer: boolean,
  ): void {
    const lose = loseAnswer ? req : undefined;
    const { operation, input, atMs } = call;
    const auth = authenticate(header(req, 'authorization'));
    if (auth.kind === 'error') {
      this.#answer(res, { operation, identity: auth.identity, input, atMs }, auth, lose);
      return;
    }
    const base = { operation, identity: auth.identity, input, atMs };
    const handler = this.#operations.get(operation);
    if (handler === undefined) {
      this.#answer(
        res,
        base,
        { kind: 'error', error: unknownOperation(header(req, 'x-amz-target') ?? '') },
        lose,
      );
      return;
    }
    if (!isJsonObject(input)) {
      this.#answer(
        res,
        base,
        {
          kind: 'error',
          error: { name: 'SerializationException', message: 'Request body must be a JSON object.' },
        },
        lose,
      );
      return;
    }
    this.#answer(res, base, handler(auth.identity, input), lose);
  }

  #answer(
    res: ServerResponse,
    base: Omit<EmulatorCall, 'status' | 'error'>,
    outcome: OperationOutcome,
    lose?: IncomingMessage,
  ): void {
    if (lose !== undefined) {
      // The 'ResetAfterProcessing' fault: the outcome took effect, but the client never hears of it.
      lose.socket.resetAndDestroy();
      this.#log({ ...base, status: 0, error: 'ResetAfterProcessing' });
      return;
    }
    if (outcome.kind === 'success') {
      sendAws(res, 200, JSON.stringify(outcome.body));
      this.#log({ ...base, status: 200 });
    } else {
      const status = sendAwsError(res, outcome.error);
      this.#log({ ...base, status, error: outcome.error.name });
    }
  }

  #answerFault(
    req: IncomingMessage,
    res: ServerResponse,
    base: Omit<EmulatorCall, 'status' | 'error'>,
    fault: string,
  ): void {
    if (fault === 'ConnectionReset') {
      // RST rather than FIN, so the client sees ECONNRESET as after a real network fault.
      req.socket.resetAndDestroy();
      this.#log({ ...base, status: 0, error: fault });
    } else if (fault === 'Timeout') {
      // Deliberately never answered: the client's timeout or stop() (closeAllConnections) ends the socket.
      this.#log({ ...base, status: 0, error: fault });
    } else {
      this.#answer(res, base, {
        kind: 'error',
        error: { name: fault, message: `Injected fault ${fault} (MeteringEmulator.failNext).` },
      });
    }
  }

  #log(call: EmulatorCall): void {
    const frozen = Object.freeze(call);
    this.#calls.push(frozen);
    if (this.#onCall === undefined) return;
    try {
      this.#onCall(frozen);
    } catch (error) {
      // The callback belongs to the embedding program; its bug must not take the emulator down.
      process.emitWarning(`MeteringEmulator onCall callback threw: ${String(error)}`, {
        code: CODES.emulatorOnCall,
      });
    }
  }

  // ---- Operations ----------------------------------------------------------------------------------

  /**
   * MeterUsage: validate (pure rules), then ClientToken and once-per-hour idempotency, then DryRun,
   * then record.
   * @see docs/aws-rules.md §2.2, §3.1-3.4
   */
  #meterUsage(identity: string, input: Readonly<Record<string, unknown>>): OperationOutcome {
    const validation = validateMeterUsage(input, {
      productCode: this.#productCode,
      dimensions: this.#dimensions,
      nowMs: this.#now(),
    });
    if (validation.kind === 'invalid') return { kind: 'error', error: validation.error };
    const request = validation.request;
    const hourKey = JSON.stringify([
      identity,
      request.productCode,
      request.dimension,
      hourStartMs(request.timestampMs),
    ]);
    const byToken = request.clientToken === undefined ? undefined : this.#tokens.get(request.clientToken);
    const decision = decideMeterUsage(request, byToken, this.#hours.get(hourKey));
    if (decision.kind === 'reject') return { kind: 'error', error: decision.error };
    if (request.dryRun) {
      return this.#dryRunResponse === 'success'
        ? { kind: 'success', body: {} }
        : { kind: 'error', error: { name: 'DryRunOperation', message: DRY_RUN_MESSAGE } };
    }
    const meteringRecordId =
      decision.kind === 'replay' ? decision.meteringRecordId : this.#record(identity, request, hourKey);
    if (request.clientToken !== undefined && byToken === undefined) {
      this.#tokens.set(request.clientToken, { fingerprint: requestFingerprint(request), meteringRecordId });
    }
    return { kind: 'success', body: { MeteringRecordId: meteringRecordId } };
  }

  /**
   * RegisterUsage: validate, product code, key version and entitlement (pure rules), then a PS256 token
   * over the request's claims (tampered if queued), plus `PublicKeyRotationTimestamp` when configured.
   * Records nothing.
   * @see docs/aws-rules.md §2.1, §2.6, §3.6, §3.7
   */
  #registerUsage(input: Readonly<Record<string, unknown>>): OperationOutcome {
    const validation = validateRegisterUsage(input, {
      productCode: this.#productCode,
      publicKeyVersion: this.#publicKeyVersion,
      entitlement: this.#entitlement,
    });
    if (validation.kind === 'invalid') return { kind: 'error', error: validation.error };
    const claims = registerUsageClaims(validation.request, this.#now());
    const tampered = this.#tampering.shift();
    const signature = signJwt(
      tampered === undefined ? claims : { ...claims, ...tampered },
      this.#signerOnce().privateKey,
    );
    // Omitted rather than null for a current key: AWS includes it only once the version has expired (§1.4).
    const rotation =
      this.#publicKeyRotatedAtMs === undefined
        ? {}
        : { PublicKeyRotationTimestamp: this.#publicKeyRotatedAtMs / 1000 };
    return { kind: 'success', body: { Signature: signature, ...rotation } };
  }

  /**
   * The signing key, generated on first use when none was given. Lazy because generating a 2048-bit RSA
   * key takes 0.1-0.5 s of CPU, and most emulators (MeterUsage tests, local mode) never sign a token.
   */
  #signerOnce(): Signer {
    this.#signer ??= signer(generateKeyPairSync('rsa', { modulusLength: SIGNING_KEY_BITS }).privateKey);
    return this.#signer;
  }

  #record(identity: string, request: MeterUsageRequest, hourKey: string): string {
    const meteringRecordId = randomUUID();
    const record: MeteredRecord = {
      identity,
      productCode: request.productCode,
      dimension: request.dimension,
      hourStartMs: hourStartMs(request.timestampMs),
      timestampMs: request.timestampMs,
      quantity: request.quantity,
      allocations: (request.allocations ?? []).map((allocation) => ({
        quantity: allocation.quantity,
        tags: Object.fromEntries(allocation.tags.map((tag) => [tag.key, tag.value])),
      })),
      clientToken: request.clientToken,
      meteringRecordId,
    };
    this.#records.push(Object.freeze(record));
    this.#hours.set(hourKey, { quantity: request.quantity, meteringRecordId });
    return meteringRecordId;
  }

  // ---- Control surface -----------------------------------------------------------------------------

  #handleControl(method: string, path: string, body: ReceivedBody, res: ServerResponse): void {
    const route = `${method} ${path}`;
    if (body.kind === 'tooLarge') {
      sendJson(res, 413, { error: `Request body exceeds ${MAX_REQUEST_BODY_BYTES} bytes.` });
      return;
    }
    switch (route) {
      case 'GET /emulator/calls':
        sendJson(res, 200, { calls: this.#calls });
        return;
      case 'GET /emulator/records':
        sendJson(res, 200, { records: this.#records, totals: Object.fromEntries(this.totals()) });
        return;
      case 'POST /emulator/reset':
        this.reset();
        sendJson(res, 200, { reset: true });
        return;
      case 'POST /emulator/faults':
        this.#controlFaults(body.text, res);
        return;
      case 'GET /emulator/public-key':
        sendText(res, 200, this.publicKeyPem);
        return;
      case 'POST /emulator/entitlement':
        this.#controlEntitlement(body.text, res);
        return;
      default: {
        const samePath = CONTROL_ROUTES.filter((candidate) => candidate.endsWith(` ${path}`));
        if (samePath.length > 0) {
          res.setHeader('allow', samePath.map((candidate) => candidate.split(' ')[0]).join(', '));
          sendJson(res, 405, { error: `${route} is not supported; use ${samePath.join(' or ')}.` });
        } else {
          sendJson(res, 404, {
            error: `Unknown control route ${route}; available: ${CONTROL_ROUTES.join(', ')}.`,
          });
        }
      }
    }
  }

  #controlFaults(text: string, res: ServerResponse): void {
    const input = parseJson(text);
    if (!isJsonObject(input)) {
      sendJson(res, 400, {
        error:
          'Body must be a JSON object like {"operation":"MeterUsage","error":"ThrottlingException","count":2}.',
      });
      return;
    }
    const { operation, error: errorName, count = 1 } = input;
    const problem =
      typeof operation !== 'string'
        ? '"operation" must be a string, e.g. "MeterUsage".'
        : typeof errorName !== 'string'
          ? '"error" must be a string, e.g. "ThrottlingException", "ConnectionReset" or "Timeout".'
          : typeof count !== 'number'
            ? '"count" must be a number (default 1).'
            : this.#faultProblem(operation, errorName, count);
    if (problem !== undefined) {
      sendJson(res, 400, { error: problem });
      return;
    }
    this.failNext(operation as string, errorName as string, count as number);
    sendJson(res, 200, { operation, error: errorName, count });
  }

  #controlEntitlement(text: string, res: ServerResponse): void {
    const input = parseJson(text);
    const state: unknown = isJsonObject(input) ? input['state'] : undefined;
    if (!isEmulatorEntitlement(state)) {
      sendJson(res, 400, {
        error: `Body must be a JSON object like {"state":"CustomerNotEntitledException"}; "state" is one of ${EMULATOR_ENTITLEMENTS.map((name) => JSON.stringify(name)).join(', ')}.`,
      });
      return;
    }
    this.setEntitlement(state);
    sendJson(res, 200, { state });
  }

  /** Why a fault cannot be queued, or `undefined` when it can. */
  #faultProblem(operation: string, errorName: string, count: number): string | undefined {
    if (!this.#operations.has(operation)) {
      return `Unknown operation ${JSON.stringify(operation)}; the emulator serves ${[...this.#operations.keys()].join(', ')}.`;
    }
    if (!TRANSPORT_FAULTS.has(errorName) && !isErrorName(errorName)) {
      return `Fault ${JSON.stringify(errorName)} must be an AWS error name (letters and digits, e.g. "ThrottlingException"), "ConnectionReset", "ResetAfterProcessing" or "Timeout".`;
    }
    if (!Number.isInteger(count) || count < 1 || count > MAX_FAULT_COUNT) {
      return `Fault count must be an integer from 1 to ${MAX_FAULT_COUNT} (got ${count}).`;
    }
    return undefined;
  }
}

// ---- Helpers ---------------------------------------------------------------------------------------

function signer(privateKey: KeyObject): Signer {
  const publicKeyPem = createPublicKey(privateKey).export({ type: 'spki', format: 'pem' }).toString();
  return { privateKey, publicKeyPem };
}

function checkPublicKeyVersion(version: number): number {
  if (!Number.isInteger(version) || version < MIN_PUBLIC_KEY_VERSION || version > MAX_PUBLIC_KEY_VERSION) {
    throw new TypeError(
      `EmulatorOptions.publicKeyVersion must be an integer from ${MIN_PUBLIC_KEY_VERSION} to ${MAX_PUBLIC_KEY_VERSION} (got ${version})`,
    );
  }
  return version;
}

function checkEntitlement(state: unknown, where: string): EmulatorEntitlement {
  if (!isEmulatorEntitlement(state)) {
    throw new TypeError(
      `${where} must be one of ${EMULATOR_ENTITLEMENTS.join(', ')} (got ${JSON.stringify(state)})`,
    );
  }
  return state;
}

/** Accepts a private RSA key that signs PS256 (checked by signing a probe), else throws `TypeError`. */
function checkSigningKey(key: KeyObject): KeyObject {
  if (!(key instanceof KeyObject)) {
    throw new TypeError(
      'EmulatorOptions.signingKey must be a KeyObject, e.g. from crypto.createPrivateKey(pem)',
    );
  }
  const isRsa = key.asymmetricKeyType === 'rsa' || key.asymmetricKeyType === 'rsa-pss';
  if (key.type !== 'private' || !isRsa) {
    throw new TypeError(
      `EmulatorOptions.signingKey must be a private RSA KeyObject (got a ${key.type} ${key.asymmetricKeyType ?? 'secret'} key)`,
    );
  }
  try {
    signJwt({}, key);
  } catch (error) {
    // An rsa-pss key restricted to another hash or a larger salt cannot sign PS256.
    throw new TypeError('EmulatorOptions.signingKey cannot sign PS256 (RSA-PSS, SHA-256, 32-byte salt)', {
      cause: error,
    });
  }
  return key;
}

function header(req: IncomingMessage, name: string): string | undefined {
  const value = req.headers[name];
  return Array.isArray(value) ? value[0] : value;
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch {
    // Not JSON: callers answer SerializationException (AWS path) or 400 (control surface).
    return undefined;
  }
}

function isJsonObject(value: unknown): value is Readonly<Record<string, unknown>> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/**
 * Reads the whole body as UTF-8. Over `limitBytes` (by `content-length` or while streaming) it stops
 * buffering, keeps draining so the 413 answer can be read by the client, and resolves `tooLarge`.
 * Resolves `aborted` if the client goes away first. Never rejects.
 */
function readBody(req: IncomingMessage, limitBytes: number): Promise<BodyResult> {
  return new Promise((resolve) => {
    const declared = Number(header(req, 'content-length'));
    const chunks: Buffer[] = [];
    let size = 0;
    let tooLarge = Number.isFinite(declared) && declared > limitBytes;
    if (tooLarge) {
      resolve({ kind: 'tooLarge' });
      req.resume();
      return;
    }
    req.on('data', (chunk: Buffer) => {
      if (tooLarge) return;
      size += chunk.length;
      if (size > limitBytes) {
        tooLarge = true;
        chunks.length = 0;
        resolve({ kind: 'tooLarge' });
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => resolve({ kind: 'body', text: Buffer.concat(chunks).toString('utf8') }));
    // 'close' before 'end' means the client went away; after 'end' this resolve is a no-op.
    req.on('close', () => resolve({ kind: 'aborted' }));
    req.on('error', () => resolve({ kind: 'aborted' }));
  });
}

function sendAws(
  res: ServerResponse,
  status: number,
  body: string,
  extraHeaders: Record<string, string> = {},
): void {
  res.writeHead(status, {
    'content-type': JSON_CONTENT_TYPE,
    'content-length': Buffer.byteLength(body),
    'x-amzn-RequestId': randomUUID(),
    ...extraHeaders,
  });
  res.end(body);
}

/** Sends an AWS error answer and returns the status used. */
function sendAwsError(res: ServerResponse, error: ServiceError): number {
  const status = httpStatusFor(error.name);
  sendAws(res, status, errorBody(error), {
    'x-amzn-errortype': error.name,
    ...(status === 413 ? { connection: 'close' } : {}),
  });
  return status;
}

function sendText(res: ServerResponse, status: number, text: string): void {
  res.writeHead(status, {
    'content-type': 'text/plain; charset=utf-8',
    'content-length': Buffer.byteLength(text),
  });
  res.end(text);
}

function sendJson(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(text),
    ...(status === 413 ? { connection: 'close' } : {}),
  });
  res.end(text);
}
