/**
 * The emulated service's state and its four operations, without any HTTP: what was billed (`records` for
 * MeterUsage, `batchRecords` for BatchMeterUsage), what each ClientToken and each (identity, product, dimension,
 * hour) was first used for, the SaaS customers and their registration tokens, the entitlement the next
 * RegisterUsage gets, and the signing key. `MeteringEmulator` (emulator.ts) puts it on the wire, adds
 * faults and the call log, and exposes it to tests and the control surface.
 *
 * References: `§` numbers are sections of docs/aws-rules.md, the AWS rules with their public sources.
 * @see docs/aws-rules.md §2.1-2.4 (the operations), §3.1-3.4 (MeterUsage semantics), §3.6-3.7 (tokens)
 */
import { randomUUID } from 'node:crypto';

import type { ServiceError } from './awsJson.js';
import { acceptBatch, batchHourKey, decodeBatchMeterUsage, recordStatus } from './batchMeterUsage.js';
import type { BatchHourEntry, BatchUsageRecord } from './batchMeterUsage.js';
import { countProblem } from './faults.js';
import { decideMeterUsage, hourStartMs, requestFingerprint } from './meterUsageIdempotency.js';
import type { HourEntry, TokenEntry } from './meterUsageIdempotency.js';
import { validateMeterUsage } from './meterUsageRules.js';
import type { MeterUsageRequest } from './meterUsageRules.js';
import { checkEntitlement, makeSigner } from './options.js';
import type { EmulatorSettings, Signer } from './options.js';
import { registerUsageClaims, signJwt, validateRegisterUsage } from './registerUsage.js';
import type { EmulatorEntitlement, RegisterUsageClaims } from './registerUsage.js';
import { SaasDirectory } from './saas.js';
import type { RegistrationTokenGrant, RegistrationTokenSpec, SaasCustomer } from './saas.js';
import { isObject } from '../json.js';

/** Message AWS gives for a DryRun that would have succeeded (EC2-style `DryRunOperation`). */
const DRY_RUN_MESSAGE = 'Request would have succeeded, but DryRun flag is set.';

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

/**
 * A usage record BatchMeterUsage honored: at most one per (product, customer, dimension, hourStartMs); repeats
 * with the same quantity answer the same `meteringRecordId` and add nothing. The customer is named by its
 * account and license, and by `customerIdentifier` when the record named it that way.
 */
export interface BatchMeteredRecord {
  identity: string;
  productCode: string;
  customerAWSAccountId: string;
  licenseArn: string;
  customerIdentifier: string | undefined;
  dimension: string;
  hourStartMs: number;
  timestampMs: number;
  quantity: number;
  allocations: { quantity: number; tags: Record<string, string> }[];
  meteringRecordId: string;
}

/** What an operation answers: a 200 body, or an AWS error. */
export type OperationOutcome =
  | { readonly kind: 'success'; readonly body: Readonly<Record<string, unknown>> }
  | { readonly kind: 'error'; readonly error: ServiceError };

/** The emulated Marketplace Metering Service's state and operations. */
export class MeteringService {
  readonly #settings: EmulatorSettings;
  /** RegisterUsage signing key and its public PEM: from the `signingKey` option, or made on first use. */
  #signer: Signer | undefined;
  #entitlement: EmulatorEntitlement;
  #records: MeteredRecord[] = [];
  /** ClientToken -> what it was first used for (account-wide). */
  #tokens = new Map<string, TokenEntry>();
  /** once-per-hour key -> the record it produced. */
  #hours = new Map<string, HourEntry>();
  /** Claims to merge into the next successful RegisterUsage tokens, consumed from the front. */
  #tampering: RegisterUsageClaims[] = [];
  readonly #saas = new SaasDirectory();
  #batchRecords: BatchMeteredRecord[] = [];
  /** BatchMeterUsage's once-per-hour key -> the record it produced. */
  #batchHours = new Map<string, BatchHourEntry>();
  /** How many of the next accepted usage records BatchMeterUsage leaves unprocessed. */
  #unprocessed = 0;

  constructor(settings: EmulatorSettings) {
    this.#settings = settings;
    this.#entitlement = settings.entitlement;
    this.#signer = settings.signingKey === undefined ? undefined : makeSigner(settings.signingKey);
  }

  /** Billable records in recording order (a snapshot; entries are frozen). */
  get records(): readonly MeteredRecord[] {
    return [...this.#records];
  }

  /** Usage records BatchMeterUsage honored, in recording order (a snapshot; entries are frozen). */
  get batchRecords(): readonly BatchMeteredRecord[] {
    return [...this.#batchRecords];
  }

  /** The SaaS customers, in the order they were first granted a registration token. */
  get customers(): readonly SaasCustomer[] {
    return this.#saas.customers;
  }

  /** A registration token for the customer `spec` describes; see `MeteringEmulator.createRegistrationToken`. */
  createRegistrationToken(spec: RegistrationTokenSpec): RegistrationTokenGrant {
    return this.#saas.grant(spec, this.#settings.productCode, this.#settings.now());
  }

  /** Leaves the next `count` accepted usage records of BatchMeterUsage calls unprocessed. */
  leaveUnprocessed(count: number): void {
    const problem = countProblem('leaveUnprocessed count', count);
    if (problem !== undefined) throw new TypeError(problem);
    this.#unprocessed += count;
  }

  /** Metered quantity per dimension, summed over all MeterUsage records (all identities and hours). */
  totals(): Map<string, number> {
    const totals = new Map<string, number>();
    for (const record of this.#records) {
      totals.set(record.dimension, (totals.get(record.dimension) ?? 0) + record.quantity);
    }
    return totals;
  }

  /** The public half of the signing key as SPKI PEM; the first read may generate the key. */
  get publicKeyPem(): string {
    return this.#signerOnce().publicKeyPem;
  }

  get entitlement(): EmulatorEntitlement {
    return this.#entitlement;
  }

  set entitlement(state: EmulatorEntitlement) {
    this.#entitlement = checkEntitlement(state, 'setEntitlement(state)');
  }

  /**
   * Queues `claims` for the next `count` successful RegisterUsage tokens (see
   * `MeteringEmulator.tamperNextToken`). Throws `TypeError` for claims that are not a JSON object or a count
   * outside 1..`MAX_FAULT_COUNT`.
   */
  tamper(claims: Record<string, unknown>, count: number): void {
    if (!isObject(claims)) {
      throw new TypeError('tamperNextToken(claims) needs an object of claims, e.g. { Nonce: "other" }');
    }
    const copy: RegisterUsageClaims = Object.freeze({ ...claims });
    try {
      JSON.stringify(copy);
    } catch (error) {
      throw new TypeError('tamperNextToken(claims) needs claims that serialize as JSON', { cause: error });
    }
    const problem = countProblem('tamperNextToken count', count);
    if (problem !== undefined) throw new TypeError(problem);
    for (let i = 0; i < count; i += 1) this.#tampering.push(copy);
  }

  /**
   * Forgets records, ClientTokens, once-per-hour keys, queued tampering, SaaS customers and their tokens, and
   * records queued to be left unprocessed; keeps the key and entitlement.
   */
  reset(): void {
    this.#records = [];
    this.#tokens = new Map();
    this.#hours = new Map();
    this.#tampering = [];
    this.#saas.reset();
    this.#batchRecords = [];
    this.#batchHours = new Map();
    this.#unprocessed = 0;
  }

  /**
   * MeterUsage: validate (pure rules), then ClientToken and once-per-hour idempotency, then DryRun,
   * then record.
   * @see docs/aws-rules.md §2.2, §3.1-3.4
   */
  meterUsage(identity: string, input: Readonly<Record<string, unknown>>): OperationOutcome {
    const validation = validateMeterUsage(input, {
      productCode: this.#settings.productCode,
      dimensions: this.#settings.dimensions,
      nowMs: this.#settings.now(),
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
      return this.#settings.dryRunResponse === 'success'
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
  registerUsage(input: Readonly<Record<string, unknown>>): OperationOutcome {
    const validation = validateRegisterUsage(input, {
      productCode: this.#settings.productCode,
      publicKeyVersion: this.#settings.publicKeyVersion,
      entitlement: this.#entitlement,
    });
    if (validation.kind === 'invalid') return { kind: 'error', error: validation.error };
    const claims = registerUsageClaims(validation.request, this.#settings.now());
    const tampered = this.#tampering.shift();
    const signature = signJwt(
      tampered === undefined ? claims : { ...claims, ...tampered },
      this.#signerOnce().privateKey,
    );
    // Omitted rather than null for a current key: AWS includes it only once the version has expired (§1.4).
    const rotatedAtMs = this.#settings.publicKeyRotatedAtMs;
    const rotation = rotatedAtMs === undefined ? {} : { PublicKeyRotationTimestamp: rotatedAtMs / 1000 };
    return { kind: 'success', body: { Signature: signature, ...rotation } };
  }

  /**
   * BatchMeterUsage: decode, then the request-level rules (any refuses the whole batch), then each record in
   * order: left unprocessed if so queued (`UnprocessedRecords`), else its status (`Success`, a replay's or a
   * new record's id; `CustomerNotSubscribed`; `DuplicateRecord`). A record that is not `Success` records nothing.
   * @see docs/aws-rules.md §2.3, §2.5
   */
  batchMeterUsage(identity: string, input: Readonly<Record<string, unknown>>): OperationOutcome {
    const decoded = decodeBatchMeterUsage(input);
    if (!decoded.ok) return { kind: 'error', error: decoded.error };
    const accepted = acceptBatch(decoded.value, {
      dimensions: this.#settings.dimensions,
      nowMs: this.#settings.now(),
      productCode: this.#settings.productCode,
      directory: this.#saas,
    });
    if ('name' in accepted) return { kind: 'error', error: accepted };
    const results: Record<string, unknown>[] = [];
    const unprocessed: Readonly<Record<string, unknown>>[] = [];
    for (const { record, customer } of accepted.records) {
      if (this.#unprocessed > 0) {
        this.#unprocessed -= 1;
        unprocessed.push(record.echo);
        continue;
      }
      const key = customer === undefined ? undefined : batchHourKey(accepted.productCode, customer, record);
      const status = recordStatus(
        record,
        customer,
        key === undefined ? undefined : this.#batchHours.get(key),
      );
      if (status.status !== 'Success' || customer === undefined || key === undefined) {
        results.push({ UsageRecord: record.echo, Status: status.status });
        continue;
      }
      const meteringRecordId =
        status.replayOf ?? this.#recordBatch(identity, accepted.productCode, customer, record, key);
      results.push({ UsageRecord: record.echo, MeteringRecordId: meteringRecordId, Status: 'Success' });
    }
    return { kind: 'success', body: { Results: results, UnprocessedRecords: unprocessed } };
  }

  /**
   * ResolveCustomer: a registration token, redeemed once before it expires, answers its customer.
   * @see docs/aws-rules.md §2.4
   */
  resolveCustomer(input: Readonly<Record<string, unknown>>): OperationOutcome {
    const resolved = this.#saas.resolve(input, this.#settings.now());
    return resolved.kind === 'resolved'
      ? { kind: 'success', body: resolved.body }
      : { kind: 'error', error: resolved.error };
  }

  #recordBatch(
    identity: string,
    productCode: string,
    customer: SaasCustomer,
    record: BatchUsageRecord,
    key: string,
  ): string {
    const meteringRecordId = randomUUID();
    this.#batchRecords.push(
      Object.freeze({
        identity,
        productCode,
        customerAWSAccountId: customer.customerAWSAccountId,
        licenseArn: customer.licenseArn,
        customerIdentifier: record.customerIdentifier,
        dimension: record.dimension,
        hourStartMs: hourStartMs(record.timestampMs),
        timestampMs: record.timestampMs,
        quantity: record.quantity,
        allocations: allocationsOf(record.allocations),
        meteringRecordId,
      }),
    );
    this.#batchHours.set(key, { quantity: record.quantity, meteringRecordId });
    return meteringRecordId;
  }

  /**
   * The signing key, generated on first use when none was given. Lazy because generating a 2048-bit RSA
   * key takes 0.1-0.5 s of CPU, and most emulators (MeterUsage tests, local mode) never sign a token.
   */
  #signerOnce(): Signer {
    this.#signer ??= makeSigner(undefined);
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
      allocations: allocationsOf(request.allocations),
      clientToken: request.clientToken,
      meteringRecordId,
    };
    this.#records.push(Object.freeze(record));
    this.#hours.set(hourKey, { quantity: request.quantity, meteringRecordId });
    return meteringRecordId;
  }
}

/** Allocations as a record keeps them: tags as an object; `[]` when the request had none. */
function allocationsOf(
  allocations: MeterUsageRequest['allocations'],
): { quantity: number; tags: Record<string, string> }[] {
  return (allocations ?? []).map((allocation) => ({
    quantity: allocation.quantity,
    tags: Object.fromEntries(allocation.tags.map((tag) => [tag.key, tag.value])),
  }));
}
