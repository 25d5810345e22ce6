/**
 * A local AWS Marketplace Metering Service that the real `MarketplaceMeteringClient` talks to unchanged
 * (endpoint override). It speaks AWS JSON 1.1 on `POST /`, enforces the MeterUsage and RegisterUsage rules
 * AWS enforces (pure functions in `meterUsageRules.ts` and `registerUsage.ts`), records what would be
 * billed, answers RegisterUsage with a PS256 token signed by its own RSA key, serves the SaaS operations
 * (BatchMeterUsage for customers that ResolveCustomer resolves from registration tokens it grants), and can
 * inject faults (AWS errors, connection resets, hung requests, tampered tokens, unprocessed batch records). Tests drive it in-process through
 * `MeteringEmulator`; standalone users (the CLI's `emulator` command, sellers' own tests) use the JSON
 * control surface under `/emulator/` on the same port. Only the SigV4 credential scope is read; request
 * signatures are not verified.
 *
 * Request path: read body (413 over {@link MAX_REQUEST_BODY_BYTES}) -> `x-amz-target` -> injected fault? ->
 * authenticate -> content type -> operation (dispatch table) -> signing Region -> quota -> decode JSON ->
 * operation handler -> answer -> `calls` + `onCall`.
 *
 * Files: this one is the HTTP shell and the public API; `service.ts` holds the service's state and its
 * operations, `options.ts` the options and their checks, `faults.ts` the fault queues, `control.ts` the
 * control surface, `awsJson.ts` and `wire.ts` the wire format. The AWS limits here are the emulator's own
 * copies, on purpose: it is an independent oracle for the sidecar's limits in src/awsLimits.ts.
 *
 * References: `§` numbers are sections of docs/aws-rules.md, the AWS rules with their public sources.
 * @see docs/aws-rules.md §1.3-1.6 (wire format), §2.2 (MeterUsage), §3.1-3.4 (semantics),
 *   §2.1, §3.6-3.7 (RegisterUsage and its token), §2.3-2.4 (BatchMeterUsage, ResolveCustomer)
 */
import { createServer } from 'node:http';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

import {
  JSON_CONTENT_TYPE,
  authenticate,
  decodeJson,
  identityForLog,
  parseTarget,
  regionError,
  unknownOperation,
} from './awsJson.js';
import { MAX_BATCH_BODY_BYTES } from './batchMeterUsage.js';
import { CONTROL_PREFIX, handleControl } from './control.js';
import { FaultQueues, faultProblem } from './faults.js';
import { checkQuota, emulatorSettings } from './options.js';
import { AccountQuota, THROTTLED_MESSAGE, type QuotaRates } from './quota.js';
import type { EmulatorOptions, EmulatorSettings } from './options.js';
import type { EmulatorEntitlement } from './registerUsage.js';
import { MeteringService } from './service.js';
import type { BatchMeteredRecord, MeteredRecord, OperationOutcome } from './service.js';
import type { RegistrationTokenGrant, RegistrationTokenSpec, SaasCustomer } from './saas.js';
import { header, sendAws, sendAwsError } from './wire.js';
import { CODES } from '../errors.js';
import { type Body, closeServer, readBody, sendJson } from '../http.js';
import { isObject } from '../json.js';

export type { EmulatorEntitlement } from './registerUsage.js';
export type { EmulatorOptions } from './options.js';
export type { BatchMeteredRecord, MeteredRecord } from './service.js';
export type { RegistrationTokenGrant, RegistrationTokenSpec, SaasCustomer } from './saas.js';

/**
 * Largest request body accepted on the AWS path; larger bodies get 413 `RequestEntityTooLargeException`. It
 * admits every request the API model allows: the largest, a MeterUsage of 2,500 allocations with 5 tags of
 * 100-character keys and 256-character values, every character one JSON escapes, is about 9.3 MB as compact
 * JSON (a test builds it). The bound keeps a misbehaving client from growing the emulator's memory without
 * end. BatchMeterUsage has AWS's own, smaller limit ({@link MAX_BATCH_BODY_BYTES}).
 * @see docs/aws-rules.md §2.3, §2.5
 */
export const MAX_REQUEST_BODY_BYTES = 16 * 1024 * 1024;

/** Largest request body accepted on the control surface; larger bodies get 413. */
export const MAX_CONTROL_BODY_BYTES = 1024 * 1024;

/** Allocations of a MeterUsage input that a log line shows; the rest are counted. */
export const LOGGED_ALLOCATIONS = 10;

/**
 * A call's input as a log line shows it: a MeterUsage input with more than {@link LOGGED_ALLOCATIONS}
 * UsageAllocations keeps the first ones and says how many there were (`UsageAllocationsCount`), so that an hour
 * of 2,500 tag sets logs one readable line instead of 150 KB. `GET /emulator/calls` keeps every input whole.
 */
export function loggedInput(input: unknown): unknown {
  if (typeof input !== 'object' || input === null || !('UsageAllocations' in input)) return input;
  const allocations = input.UsageAllocations;
  if (!Array.isArray(allocations) || allocations.length <= LOGGED_ALLOCATIONS) return input;
  return {
    ...input,
    UsageAllocations: allocations.slice(0, LOGGED_ALLOCATIONS),
    UsageAllocationsCount: allocations.length,
  };
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

/** An emulated operation: identity is authenticated, input is a JSON object. */
type OperationHandler = (identity: string, input: Readonly<Record<string, unknown>>) => OperationOutcome;

/** A body that was received (whole, or refused as too large). */
type ReceivedBody = Exclude<Body, { readonly kind: 'aborted' }>;

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
  readonly #settings: EmulatorSettings;
  readonly #service: MeteringService;
  /** Dispatch table: one entry per operation. */
  readonly #operations: ReadonlyMap<string, OperationHandler>;
  readonly #faults = new FaultQueues();
  /** The account's quota; real time, whatever the emulator's clock, since it paces real requests. */
  readonly #quota = new AccountQuota(() => performance.now());

  #server: Server | undefined;
  #url: string | undefined;
  #calls: EmulatorCall[] = [];

  /**
   * Creates a stopped emulator. Throws `TypeError` when `productCode` is not a string, `dimensions`
   * is given but empty (no call could ever succeed), `publicKeyVersion` is not an integer 1..2^31-1,
   * `entitlement` is not an {@link EmulatorEntitlement}, `publicKeyRotatedAtMs` is not a finite number,
   * or `signingKey` is not a private RSA key that can sign PS256.
   */
  constructor(options: EmulatorOptions) {
    this.#settings = emulatorSettings(options);
    const service = new MeteringService(this.#settings);
    this.#service = service;
    this.#operations = new Map<string, OperationHandler>([
      ['MeterUsage', (identity, input) => service.meterUsage(identity, input)],
      ['RegisterUsage', (_identity, input) => service.registerUsage(input)],
      ['BatchMeterUsage', (identity, input) => service.batchMeterUsage(identity, input)],
      ['ResolveCustomer', (_identity, input) => service.resolveCustomer(input)],
    ]);
    this.#quota.set(this.#settings.quota);
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
    return this.#service.records;
  }

  /** Usage records BatchMeterUsage honored, in recording order (a snapshot; entries are frozen). */
  get batchRecords(): readonly BatchMeteredRecord[] {
    return this.#service.batchRecords;
  }

  /** The SaaS customers that registration tokens were granted for, in the order they were first granted. */
  get customers(): readonly SaasCustomer[] {
    return this.#service.customers;
  }

  /** The Region the emulator stands for; requests signed for another are refused (see `EmulatorOptions.region`). */
  get region(): string {
    return this.#settings.region;
  }

  /**
   * Grants a registration token, as AWS does when a buyer subscribes to a SaaS listing and is sent to the
   * seller's registration page: ResolveCustomer redeems it once, before it expires, for the customer's
   * `CustomerAWSAccountId`, `LicenseArn` and `ProductCode` (and `CustomerIdentifier` when `spec` gives one, an
   * integration from before Concurrent Agreements). The customer is made on first use and known by its license
   * ARN; BatchMeterUsage then meters for it. Throws `TypeError` for a bad spec (see {@link RegistrationTokenSpec}),
   * or one that names a known license or customer identifier with other details. Cleared by `reset()`.
   * @see docs/aws-rules.md §2.3, §2.4
   */
  createRegistrationToken(spec: RegistrationTokenSpec = {}): RegistrationTokenGrant {
    return this.#service.createRegistrationToken(spec);
  }

  /**
   * Leaves the next `count` usage records of BatchMeterUsage calls that pass the request's checks unprocessed:
   * they are answered in `UnprocessedRecords`, for the caller to send again, and record nothing (AWS: "errors on
   * the service side that should be retried"). Throws `TypeError` for a count that is not an integer
   * 1..`MAX_FAULT_COUNT`. Cleared by `reset()`.
   * @see docs/aws-rules.md §2.3
   */
  leaveUnprocessed(count: number): void {
    this.#service.leaveUnprocessed(count);
  }

  /** The operations the emulator serves, in the order it lists them. */
  get operations(): readonly string[] {
    return [...this.#operations.keys()];
  }

  /**
   * Queues `count` faults for `operation`; the next `count` calls of it are answered with the fault
   * before any validation, are logged in `calls`, and record nothing. `errorName` is an AWS error name
   * (answered 500 for `InternalServiceErrorException`, 403 for authentication errors, 400 otherwise) or
   * `'ConnectionReset'` (socket reset without an answer), `'ResetAfterProcessing'` (the call takes effect,
   * then the socket is reset: the client cannot tell it was recorded) or `'Timeout'` (no answer until the
   * client gives up or `stop()`). Throws `TypeError` for an operation the emulator does not serve, an error
   * name that is not a plain identifier, or a count that is not an integer 1..`MAX_FAULT_COUNT` (faults.ts).
   */
  failNext(operation: string, errorName: string, count = 1): void {
    const problem = faultProblem(this.operations, operation, errorName, count);
    if (problem !== undefined) throw new TypeError(problem);
    this.#faults.push(operation, errorName, count);
  }

  /** Metered quantity per dimension, summed over all MeterUsage records (all identities and hours). */
  totals(): Map<string, number> {
    return this.#service.totals();
  }

  /**
   * The public half of the RegisterUsage signing key as SPKI PEM (`-----BEGIN PUBLIC KEY-----`), what a
   * sidecar is configured with to verify tokens. Stable for the emulator's lifetime (kept by `reset()`).
   * The first read generates the key when no `signingKey` was given (about 0.1-0.5 s, synchronous).
   */
  get publicKeyPem(): string {
    return this.#service.publicKeyPem;
  }

  /** The entitlement state the next RegisterUsage calls get. */
  get entitlement(): EmulatorEntitlement {
    return this.#service.entitlement;
  }

  /**
   * Changes what the next RegisterUsage calls get after their request passed validation, product code
   * and key version: a token (`'entitled'`) or the named error. Takes effect for the next call; kept by
   * `reset()`. Throws `TypeError` for any other state.
   * @see docs/aws-rules.md §3.6
   */
  setEntitlement(state: EmulatorEntitlement): void {
    this.#service.entitlement = state;
  }

  /**
   * Queues `claims` for the next `count` successful RegisterUsage tokens: each of those tokens has these
   * claims merged over its real payload (e.g. `{ Nonce: 'other' }`, `{ ProductCode: 'x' }`; a claim set
   * to `undefined` is removed) and is then signed normally, so the signature verifies but the claims do
   * not match the request. Queued entries are consumed in FIFO order, one per successful call; failed
   * and faulted calls consume none. `claims` is copied when queued. Throws `TypeError` when `claims` is
   * not a plain object that serializes as JSON, or `count` is not an integer 1..`MAX_FAULT_COUNT`.
   */
  tamperNextToken(claims: Record<string, unknown>, count = 1): void {
    this.#service.tamper(claims, count);
  }

  /** The account's quota in force, in calls per second per operation; `{}` when nothing is limited. */
  get quota(): QuotaRates {
    return this.#quota.rates;
  }

  /**
   * Sets the account's quota (e.g. `AWS_QUOTAS`, `{ MeterUsage: 1 }`, or `{}` for none); every bucket starts
   * full. A throttled call is answered `ThrottlingException` (400) after authentication, before any
   * validation, is logged in `calls` and takes no effect. Kept by `reset()`. Throws `TypeError` for an
   * operation AWS does not have or a rate that is not a positive number.
   * @see docs/aws-rules.md §3.5
   */
  setQuota(rates: QuotaRates): void {
    this.#quota.set(checkQuota(rates, 'setQuota(rates)'));
  }

  /** Drops every queued fault, keeping calls, records and tokens: AWS recovers from an outage. */
  clearFaults(): void {
    this.#faults.clear();
  }

  /**
   * Forgets calls, records, ClientTokens, once-per-hour keys, queued faults and queued token tampering, SaaS
   * customers and registration tokens, and batch records queued to be left unprocessed. Keeps listening, the
   * signing key and the entitlement state.
   */
  reset(): void {
    this.#calls = [];
    this.#service.reset();
    this.#faults.clear();
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
    await closeServer(server);
  }

  // ---- HTTP ----------------------------------------------------------------------------------------

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    try {
      const path = new URL(req.url ?? '/', 'http://emulator.invalid').pathname;
      const control = path.startsWith(CONTROL_PREFIX);
      const body = await readBody(req, control ? MAX_CONTROL_BODY_BYTES : MAX_REQUEST_BODY_BYTES);
      if (body.kind === 'aborted') return;
      if (control) {
        const control = { method: req.method ?? '', path, body, limitBytes: MAX_CONTROL_BODY_BYTES };
        handleControl(this, control, res);
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
    const atMs = this.#settings.now();
    const target = parseTarget(header(req, 'x-amz-target'));
    const operation = target.operation;
    // Known before authentication, so that rejected and faulted calls can still be attributed.
    const logIdentity = identityForLog(header(req, 'authorization'));
    const limit = operation === 'BatchMeterUsage' ? MAX_BATCH_BODY_BYTES : MAX_REQUEST_BODY_BYTES;
    if (body.kind === 'tooLarge' || Buffer.byteLength(body.text) > limit) {
      this.#answer(
        res,
        { operation, identity: logIdentity, input: undefined, atMs },
        {
          kind: 'error',
          error: {
            name: 'RequestEntityTooLargeException',
            message:
              operation === 'BatchMeterUsage'
                ? `Request body exceeds ${limit} bytes; each BatchMeterUsage request must be less than 1 MB.`
                : `Request body exceeds ${limit} bytes.`,
          },
        },
      );
      return;
    }
    const input = decodeJson(body.text);
    if (target.kind === 'error') {
      this.#answer(res, { operation, identity: logIdentity, input, atMs }, target);
      return;
    }

    const fault = this.#faults.take(operation);
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
    const contentType = contentTypeError(header(req, 'content-type'));
    if (contentType !== undefined) {
      this.#answer(res, base, { kind: 'error', error: contentType }, lose);
      return;
    }
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
    const wrongRegion = regionError(operation, auth.region, this.#settings.region);
    if (wrongRegion !== undefined) {
      this.#answer(res, base, { kind: 'error', error: wrongRegion }, lose);
      return;
    }
    if (!this.#quota.admit(operation)) {
      const throttled = { name: 'ThrottlingException', message: THROTTLED_MESSAGE };
      this.#answer(res, base, { kind: 'error', error: throttled }, lose);
      return;
    }
    if (!isObject(input)) {
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
      // Deliberately never answered: the client's timeout or stop() (which closes every connection) ends the socket.
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
    const onCall = this.#settings.onCall;
    if (onCall === undefined) return;
    try {
      onCall(frozen);
    } catch (error) {
      // The callback belongs to the embedding program; its bug must not take the emulator down.
      process.emitWarning(`MeteringEmulator onCall callback threw: ${String(error)}`, {
        code: CODES.emulatorOnCall,
      });
    }
  }
}

/**
 * `UnknownOperationException` for a request whose content type is not AWS JSON 1.1, as AWS answers one (a JSON
 * protocol service reads the operation only from a request of its own content type); parameters such as
 * `charset` are allowed.
 * @see docs/aws-rules.md §1.3
 */
function contentTypeError(value: string | undefined): { name: string; message: string } | undefined {
  const mediaType = (value ?? '').split(';')[0]?.trim().toLowerCase();
  if (mediaType === JSON_CONTENT_TYPE) return undefined;
  return {
    name: 'UnknownOperationException',
    message: `Content-Type must be ${JSON_CONTENT_TYPE} (got ${value === undefined ? 'none' : JSON.stringify(value)}).`,
  };
}
