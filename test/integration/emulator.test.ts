import { constants, createPublicKey, generateKeyPairSync, verify } from 'node:crypto';

import {
  BatchMeterUsageCommand,
  CustomerNotEntitledException,
  ExpiredTokenException,
  InvalidCustomerIdentifierException,
  InvalidEndpointRegionException,
  InvalidLicenseException,
  InvalidRegionException,
  InvalidTokenException,
  ResolveCustomerCommand,
  DuplicateRequestException,
  IdempotencyConflictException,
  InternalServiceErrorException,
  InvalidProductCodeException,
  InvalidPublicKeyVersionException,
  InvalidTagException,
  InvalidUsageAllocationsException,
  InvalidUsageDimensionException,
  MarketplaceMeteringClient,
  MarketplaceMeteringServiceException,
  MeterUsageCommand,
  PlatformNotSupportedException,
  RegisterUsageCommand,
  ThrottlingException,
  TimestampOutOfBoundsException,
} from '@aws-sdk/client-marketplace-metering';
import type {
  MarketplaceMeteringClientConfig,
  MeterUsageCommandInput,
  RegisterUsageCommandInput,
  UsageRecord,
} from '@aws-sdk/client-marketplace-metering';
import { afterEach, describe, expect, it } from 'vitest';

import {
  MAX_CONTROL_BODY_BYTES,
  MAX_REQUEST_BODY_BYTES,
  MeteringEmulator,
} from '../../src/emulator/emulator.js';
import type { EmulatorCall, EmulatorOptions } from '../../src/emulator/emulator.js';

const PRODUCT_CODE = 'prod-abc123';
/** Emulator clock: 2026-11-26T10:30:00Z. The SDK signs with real time; the emulator does not check it. */
const NOW_MS = Date.UTC(2026, 10, 26, 10, 30);
const HOUR_START_MS = Date.UTC(2026, 10, 26, 10);
const HOUR_MS = 3_600_000;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
/** A syntactically valid SigV4 header for raw requests (the signature is not verified). */
const RAW_AUTHORIZATION =
  'AWS4-HMAC-SHA256 Credential=RAWKEY/20261126/us-east-1/aws-marketplace/aws4_request, SignedHeaders=host, Signature=abc';

const NONCE = '2ead20e4-3e6d-42cd-8f56-24f02d1cc4e1';
/**
 * A signing key shared by the RegisterUsage tests that do not test the emulator's own key: generating a
 * 2048-bit RSA key takes 0.1-0.5 s, once per file instead of once per test.
 */
const SIGNING_KEY = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;
const SIGNING_PUBLIC_KEY_PEM = createPublicKey(SIGNING_KEY)
  .export({ type: 'spki', format: 'pem' })
  .toString();

const emulators: MeteringEmulator[] = [];
const clients: MarketplaceMeteringClient[] = [];

afterEach(async () => {
  for (const client of clients.splice(0)) client.destroy();
  await Promise.all(emulators.splice(0).map((emulator) => emulator.stop()));
});

async function startEmulator(options: Partial<EmulatorOptions> = {}): Promise<MeteringEmulator> {
  const emulator = new MeteringEmulator({ productCode: PRODUCT_CODE, now: () => NOW_MS, ...options });
  emulators.push(emulator);
  await emulator.start();
  return emulator;
}

function sdkClient(
  emulator: MeteringEmulator,
  accessKeyId = 'TASKA',
  config: Partial<MarketplaceMeteringClientConfig> = {},
): MarketplaceMeteringClient {
  const client = new MarketplaceMeteringClient({
    region: 'us-east-1',
    endpoint: emulator.url,
    credentials: { accessKeyId, secretAccessKey: 'x' },
    maxAttempts: 1,
    ...config,
  });
  clients.push(client);
  return client;
}

function meterUsage(overrides: Partial<MeterUsageCommandInput> = {}): MeterUsageCommand {
  return new MeterUsageCommand({
    ProductCode: PRODUCT_CODE,
    Timestamp: new Date(NOW_MS - 60_000),
    UsageDimension: 'nodes',
    UsageQuantity: 3,
    ...overrides,
  });
}

function registerUsage(overrides: Partial<RegisterUsageCommandInput> = {}): RegisterUsageCommand {
  return new RegisterUsageCommand({
    ProductCode: PRODUCT_CODE,
    PublicKeyVersion: 1,
    Nonce: NONCE,
    ...overrides,
  });
}

/** A RegisterUsage token split into its decoded header and payload, and whether its PS256 signature verifies. */
function readToken(
  token: string | undefined,
  publicKeyPem: string,
): { sections: number; header: unknown; payload: Record<string, unknown>; verified: boolean } {
  const sections = (token ?? '').split('.');
  const [header = '', payload = '', signature = ''] = sections;
  return {
    sections: sections.length,
    header: JSON.parse(Buffer.from(header, 'base64url').toString('utf8')),
    payload: JSON.parse(Buffer.from(payload, 'base64url').toString('utf8')) as Record<string, unknown>,
    verified: verify(
      'sha256',
      Buffer.from(`${header}.${payload}`, 'ascii'),
      { key: publicKeyPem, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 },
      Buffer.from(signature, 'base64url'),
    ),
  };
}

/** The rejection of `promise` (fails the test if it resolves). */
async function rejectionOf(promise: Promise<unknown>): Promise<unknown> {
  return promise.then(
    (value) => {
      throw new Error(`expected a rejection, got ${JSON.stringify(value)}`);
    },
    (error: unknown) => error,
  );
}

/** Resolves with the first call reported to onCall that matches. */
function nextCall(predicate: (call: EmulatorCall) => boolean): {
  onCall: (call: EmulatorCall) => void;
  seen: Promise<EmulatorCall>;
} {
  let resolveSeen: (call: EmulatorCall) => void = () => undefined;
  const seen = new Promise<EmulatorCall>((resolve) => {
    resolveSeen = resolve;
  });
  return {
    onCall: (call) => {
      if (predicate(call)) resolveSeen(call);
    },
    seen,
  };
}

function rawMeterUsage(
  emulator: MeteringEmulator,
  body: string,
  headers: Record<string, string> = {},
): Promise<Response> {
  return fetch(`${emulator.url}/`, {
    method: 'POST',
    headers: {
      'content-type': 'application/x-amz-json-1.1',
      'x-amz-target': 'AWSMPMeteringService.MeterUsage',
      authorization: RAW_AUTHORIZATION,
      ...headers,
    },
    body,
  });
}

describe('MeteringEmulator with the real SDK client', () => {
  it('records an accepted MeterUsage and answers with its MeteringRecordId', async () => {
    // Prepare
    const emulator = await startEmulator();
    const client = sdkClient(emulator);

    // Act
    const output = await client.send(meterUsage());

    // Assess
    expect(output.MeteringRecordId).toMatch(UUID);
    expect(output.$metadata.httpStatusCode).toBe(200);
    expect(output.$metadata.requestId).toMatch(UUID);
    expect(emulator.records).toEqual([
      {
        identity: 'TASKA',
        productCode: PRODUCT_CODE,
        dimension: 'nodes',
        hourStartMs: HOUR_START_MS,
        timestampMs: NOW_MS - 60_000,
        quantity: 3,
        allocations: [],
        clientToken: expect.stringMatching(UUID) as unknown,
        meteringRecordId: output.MeteringRecordId,
      },
    ]);
    expect(emulator.calls).toMatchObject([
      { operation: 'MeterUsage', identity: 'TASKA', status: 200, atMs: NOW_MS },
    ]);
    expect(emulator.totals()).toEqual(new Map([['nodes', 3]]));
  });

  it('answers an identical resend in the same hour with the same MeteringRecordId and records once', async () => {
    const emulator = await startEmulator();
    const client = sdkClient(emulator);

    const first = await client.send(meterUsage());
    // A fresh send() carries a new auto-generated ClientToken and a later timestamp in the same hour.
    const second = await client.send(meterUsage({ Timestamp: new Date(NOW_MS) }));

    expect(second.MeteringRecordId).toBe(first.MeteringRecordId);
    expect(emulator.records).toHaveLength(1);
    expect(emulator.calls.map((call) => call.status)).toEqual([200, 200]);
  });

  it('rejects a different quantity for the same identity, dimension and hour with DuplicateRequestException', async () => {
    const emulator = await startEmulator();
    const client = sdkClient(emulator);
    await client.send(meterUsage({ UsageQuantity: 3 }));

    const error = await rejectionOf(
      client.send(meterUsage({ UsageQuantity: 4, Timestamp: new Date(HOUR_START_MS) })),
    );

    expect(error).toBeInstanceOf(DuplicateRequestException);
    expect((error as DuplicateRequestException).$metadata.httpStatusCode).toBe(400);
    expect(emulator.records.map((record) => record.quantity)).toEqual([3]);
    expect(emulator.calls.at(-1)).toMatchObject({ status: 400, error: 'DuplicateRequestException' });
  });

  it('records the same dimension and hour once per identity (ECS task / EKS pod)', async () => {
    const emulator = await startEmulator();

    const a = await sdkClient(emulator, 'TASKA').send(meterUsage({ UsageQuantity: 3 }));
    const b = await sdkClient(emulator, 'TASKB').send(meterUsage({ UsageQuantity: 5 }));

    expect(a.MeteringRecordId).not.toBe(b.MeteringRecordId);
    expect(emulator.records.map((record) => [record.identity, record.quantity])).toEqual([
      ['TASKA', 3],
      ['TASKB', 5],
    ]);
    expect(emulator.totals().get('nodes')).toBe(8);
  });

  it('records the previous hour separately from the current one', async () => {
    const emulator = await startEmulator();
    const client = sdkClient(emulator);

    await client.send(meterUsage({ Timestamp: new Date(HOUR_START_MS - 1), UsageQuantity: 2 }));
    await client.send(meterUsage({ Timestamp: new Date(HOUR_START_MS), UsageQuantity: 7 }));

    expect(emulator.records.map((record) => [record.hourStartMs, record.quantity])).toEqual([
      [HOUR_START_MS - HOUR_MS, 2],
      [HOUR_START_MS, 7],
    ]);
  });

  it('replays a reused ClientToken with identical parameters and rejects it with different ones, account-wide', async () => {
    // Prepare
    const emulator = await startEmulator();
    const first = await sdkClient(emulator, 'TASKA').send(meterUsage({ ClientToken: 'token-1' }));

    // Act
    const replay = await sdkClient(emulator, 'TASKA').send(meterUsage({ ClientToken: 'token-1' }));
    const changed = await rejectionOf(
      sdkClient(emulator, 'TASKA').send(
        meterUsage({ ClientToken: 'token-1', Timestamp: new Date(HOUR_START_MS - HOUR_MS) }),
      ),
    );
    const otherTask = await rejectionOf(
      sdkClient(emulator, 'TASKB').send(meterUsage({ ClientToken: 'token-1', UsageQuantity: 9 })),
    );

    // Assess
    expect(replay.MeteringRecordId).toBe(first.MeteringRecordId);
    expect(changed).toBeInstanceOf(IdempotencyConflictException);
    expect(otherTask).toBeInstanceOf(IdempotencyConflictException);
    expect(emulator.records).toHaveLength(1);
  });

  it('rejects a product code other than the configured one', async () => {
    const emulator = await startEmulator();

    const error = await rejectionOf(sdkClient(emulator).send(meterUsage({ ProductCode: 'someone-else' })));

    expect(error).toBeInstanceOf(InvalidProductCodeException);
    expect(emulator.records).toEqual([]);
  });

  it('rejects a dimension outside the allow-list and accepts one in it', async () => {
    const emulator = await startEmulator({ dimensions: ['nodes', 'gpus'] });
    const client = sdkClient(emulator);

    const error = await rejectionOf(client.send(meterUsage({ UsageDimension: 'cpus' })));
    await client.send(meterUsage({ UsageDimension: 'gpus' }));

    expect(error).toBeInstanceOf(InvalidUsageDimensionException);
    expect(emulator.records.map((record) => record.dimension)).toEqual(['gpus']);
  });

  it('rejects a timestamp 7 hours old with TimestampOutOfBoundsException', async () => {
    const emulator = await startEmulator();

    const error = await rejectionOf(
      sdkClient(emulator).send(meterUsage({ Timestamp: new Date(NOW_MS - 7 * HOUR_MS) })),
    );

    expect(error).toBeInstanceOf(TimestampOutOfBoundsException);
    expect(emulator.records).toEqual([]);
  });

  it('records allocations with their tags', async () => {
    const emulator = await startEmulator();

    await sdkClient(emulator).send(
      meterUsage({
        UsageQuantity: 5,
        UsageAllocations: [
          { AllocatedUsageQuantity: 3, Tags: [{ Key: 'team', Value: 'blue' }] },
          { AllocatedUsageQuantity: 2 },
        ],
      }),
    );

    expect(emulator.records[0]?.allocations).toEqual([
      { quantity: 3, tags: { team: 'blue' } },
      { quantity: 2, tags: {} },
    ]);
  });

  it('rejects allocations that do not sum to UsageQuantity', async () => {
    const emulator = await startEmulator();

    const error = await rejectionOf(
      sdkClient(emulator).send(
        meterUsage({
          UsageQuantity: 5,
          UsageAllocations: [
            { AllocatedUsageQuantity: 3, Tags: [{ Key: 'team', Value: 'blue' }] },
            { AllocatedUsageQuantity: 1 },
          ],
        }),
      ),
    );

    expect(error).toBeInstanceOf(InvalidUsageAllocationsException);
    expect((error as Error).message).toContain('(4)');
    expect(emulator.records).toEqual([]);
  });

  it('rejects tag characters outside the documented set', async () => {
    const emulator = await startEmulator();

    const error = await rejectionOf(
      sdkClient(emulator).send(
        meterUsage({
          UsageAllocations: [{ AllocatedUsageQuantity: 3, Tags: [{ Key: 'team', Value: 'blue#1' }] }],
        }),
      ),
    );

    expect(error).toBeInstanceOf(InvalidTagException);
    expect(emulator.records).toEqual([]);
  });

  it('rejects more than 5 distinct tag keys across the allocations of one record', async () => {
    const emulator = await startEmulator();
    const keys = ['a', 'b', 'c', 'd', 'e', 'f'];

    const error = await rejectionOf(
      sdkClient(emulator).send(
        meterUsage({
          UsageQuantity: keys.length,
          UsageAllocations: keys.map((key) => ({
            AllocatedUsageQuantity: 1,
            Tags: [{ Key: key, Value: 'v' }],
          })),
        }),
      ),
    );

    expect(error).toBeInstanceOf(InvalidTagException);
    expect(emulator.records).toEqual([]);
  });

  it('answers a passing DryRun with DryRunOperation by default and records nothing', async () => {
    const emulator = await startEmulator();
    const client = sdkClient(emulator);

    const error = await rejectionOf(client.send(meterUsage({ DryRun: true })));
    // The DryRun did not take the hour: a real call with another quantity still records.
    await client.send(meterUsage({ UsageQuantity: 9 }));

    expect(error).toBeInstanceOf(MarketplaceMeteringServiceException);
    expect(error).toMatchObject({
      name: 'DryRunOperation',
      message: 'Request would have succeeded, but DryRun flag is set.',
      $metadata: { httpStatusCode: 400 },
    });
    expect(emulator.records.map((record) => record.quantity)).toEqual([9]);
  });

  it("answers a passing DryRun with 200 {} when dryRunResponse is 'success', recording nothing", async () => {
    const emulator = await startEmulator({ dryRunResponse: 'success' });

    const output = await sdkClient(emulator).send(meterUsage({ DryRun: true }));

    expect(output.$metadata.httpStatusCode).toBe(200);
    expect(output.MeteringRecordId).toBeUndefined();
    expect(emulator.records).toEqual([]);
    expect(emulator.calls).toMatchObject([{ status: 200 }]);
  });

  it('validates a DryRun like a real call', async () => {
    const emulator = await startEmulator({ dimensions: ['nodes'], dryRunResponse: 'success' });

    const error = await rejectionOf(
      sdkClient(emulator).send(meterUsage({ DryRun: true, UsageDimension: 'cpus' })),
    );

    expect(error).toBeInstanceOf(InvalidUsageDimensionException);
  });

  it('injects a ThrottlingException that the SDK retries until the call succeeds', async () => {
    const emulator = await startEmulator();
    emulator.failNext('MeterUsage', 'ThrottlingException');

    const output = await sdkClient(emulator, 'TASKA', { maxAttempts: 3 }).send(meterUsage());

    expect(output.$metadata.attempts).toBeGreaterThanOrEqual(2);
    expect(emulator.calls.map((call) => [call.status, call.error])).toEqual([
      [400, 'ThrottlingException'],
      [200, undefined],
    ]);
    expect(emulator.records).toHaveLength(1);
  });

  it('injects InternalServiceErrorException as HTTP 500 and then answers normally', async () => {
    const emulator = await startEmulator();
    emulator.failNext('MeterUsage', 'InternalServiceErrorException');
    const client = sdkClient(emulator);

    const error = await rejectionOf(client.send(meterUsage()));
    const next = await client.send(meterUsage());

    expect(error).toBeInstanceOf(InternalServiceErrorException);
    expect(error).toMatchObject({ $fault: 'server', $metadata: { httpStatusCode: 500 } });
    expect(next.MeteringRecordId).toMatch(UUID);
    expect(emulator.records).toHaveLength(1);
  });

  it('injects a connection reset that the SDK reports as a network error, then answers normally', async () => {
    const emulator = await startEmulator();
    emulator.failNext('MeterUsage', 'ConnectionReset');
    const client = sdkClient(emulator);

    const error = await rejectionOf(client.send(meterUsage()));
    const next = await client.send(meterUsage());

    expect(error).toMatchObject({ code: 'ECONNRESET' });
    expect(next.MeteringRecordId).toMatch(UUID);
    expect(emulator.calls.map((call) => [call.status, call.error])).toEqual([
      [0, 'ConnectionReset'],
      [200, undefined],
    ]);
    expect(emulator.records).toHaveLength(1);
  });

  it('injects a hung request that the SDK times out on, then answers normally', async () => {
    const emulator = await startEmulator();
    emulator.failNext('MeterUsage', 'Timeout');
    // throwOnRequestTimeout: with this @smithy/node-http-handler, requestTimeout alone only logs a warning.
    const client = sdkClient(emulator, 'TASKA', {
      requestHandler: { requestTimeout: 300, throwOnRequestTimeout: true },
    });

    const error = await rejectionOf(client.send(meterUsage()));
    const next = await client.send(meterUsage());

    expect(error).toMatchObject({ name: 'TimeoutError' });
    expect(next.MeteringRecordId).toMatch(UUID);
    expect(emulator.calls.map((call) => [call.status, call.error])).toEqual([
      [0, 'Timeout'],
      [200, undefined],
    ]);
    expect(emulator.records).toHaveLength(1);
  });

  it('consumes queued faults in order, one per call', async () => {
    const emulator = await startEmulator();
    emulator.failNext('MeterUsage', 'ThrottlingException', 2);
    emulator.failNext('MeterUsage', 'InternalServiceErrorException');
    const client = sdkClient(emulator);

    const errors = [
      await rejectionOf(client.send(meterUsage())),
      await rejectionOf(client.send(meterUsage())),
      await rejectionOf(client.send(meterUsage())),
    ];
    await client.send(meterUsage());

    expect(errors.map((error) => (error as Error).name)).toEqual([
      'ThrottlingException',
      'ThrottlingException',
      'InternalServiceErrorException',
    ]);
    expect(emulator.records).toHaveLength(1);
  });
});

describe('MeteringEmulator RegisterUsage with the real SDK client', () => {
  it("answers a PS256 token over the request's claims, signed by the emulator's own key", async () => {
    // Prepare
    const emulator = await startEmulator();
    const client = sdkClient(emulator);

    // Act
    const output = await client.send(registerUsage());

    // Assess
    const token = readToken(output.Signature, emulator.publicKeyPem);
    expect(output.$metadata.httpStatusCode).toBe(200);
    expect(emulator.publicKeyPem).toMatch(
      /^-----BEGIN PUBLIC KEY-----\n[\s\S]+\n-----END PUBLIC KEY-----\n$/,
    );
    expect(createPublicKey(emulator.publicKeyPem).asymmetricKeyDetails?.modulusLength).toBe(2048);
    expect(token.sections).toBe(3);
    expect(token.header).toEqual({ alg: 'PS256', typ: 'JWT' });
    expect(token.payload).toEqual({
      ProductCode: PRODUCT_CODE,
      PublicKeyVersion: 1,
      Nonce: NONCE,
      iat: NOW_MS / 1000,
    });
    expect(token.verified).toBe(true);
    expect(output.PublicKeyRotationTimestamp).toBeUndefined();
    expect(emulator.calls).toMatchObject([{ operation: 'RegisterUsage', identity: 'TASKA', status: 200 }]);
    expect(emulator.records).toEqual([]);
  });

  it('keeps the same key for every token and leaves Nonce out when the request has none', async () => {
    const emulator = await startEmulator();
    const client = sdkClient(emulator);
    const pem = emulator.publicKeyPem;

    const first = await client.send(registerUsage({ Nonce: undefined }));
    const second = await client.send(registerUsage({ Nonce: 'n-2' }));

    expect(readToken(first.Signature, pem)).toMatchObject({ verified: true });
    expect(readToken(first.Signature, pem).payload).not.toHaveProperty('Nonce');
    expect(readToken(second.Signature, pem)).toMatchObject({ verified: true, payload: { Nonce: 'n-2' } });
    expect(emulator.publicKeyPem).toBe(pem);
  });

  it('signs with the signingKey option and carries the configured publicKeyVersion', async () => {
    const emulator = await startEmulator({ signingKey: SIGNING_KEY, publicKeyVersion: 3 });
    const client = sdkClient(emulator);

    const output = await client.send(registerUsage({ PublicKeyVersion: 3 }));
    const stale = await rejectionOf(client.send(registerUsage({ PublicKeyVersion: 1 })));

    expect(emulator.publicKeyPem).toBe(SIGNING_PUBLIC_KEY_PEM);
    expect(readToken(output.Signature, SIGNING_PUBLIC_KEY_PEM)).toMatchObject({
      verified: true,
      payload: { PublicKeyVersion: 3 },
    });
    expect(stale).toBeInstanceOf(InvalidPublicKeyVersionException);
  });

  it('answers PublicKeyRotationTimestamp as a Date when publicKeyRotatedAtMs is set', async () => {
    const rotatedAtMs = Date.UTC(2026, 9, 1, 12);
    const emulator = await startEmulator({ signingKey: SIGNING_KEY, publicKeyRotatedAtMs: rotatedAtMs });

    const output = await sdkClient(emulator).send(registerUsage());

    expect(output.PublicKeyRotationTimestamp).toBeInstanceOf(Date);
    expect(output.PublicKeyRotationTimestamp?.getTime()).toBe(rotatedAtMs);
    expect(readToken(output.Signature, SIGNING_PUBLIC_KEY_PEM).verified).toBe(true);
  });

  it('rejects a product code other than the configured one', async () => {
    const emulator = await startEmulator({ signingKey: SIGNING_KEY });

    const error = await rejectionOf(sdkClient(emulator).send(registerUsage({ ProductCode: 'someone-else' })));

    expect(error).toBeInstanceOf(InvalidProductCodeException);
    expect(error).toMatchObject({ $fault: 'client', $metadata: { httpStatusCode: 400 } });
    expect(emulator.calls).toMatchObject([
      { operation: 'RegisterUsage', status: 400, error: 'InvalidProductCodeException' },
    ]);
  });

  it('rejects a public key version the product does not have', async () => {
    const emulator = await startEmulator({ signingKey: SIGNING_KEY });

    const error = await rejectionOf(sdkClient(emulator).send(registerUsage({ PublicKeyVersion: 2 })));

    expect(error).toBeInstanceOf(InvalidPublicKeyVersionException);
    expect((error as InvalidPublicKeyVersionException).$metadata.httpStatusCode).toBe(400);
  });

  it('answers ValidationException for a PublicKeyVersion below 1', async () => {
    const emulator = await startEmulator({ signingKey: SIGNING_KEY });

    const error = await rejectionOf(sdkClient(emulator).send(registerUsage({ PublicKeyVersion: 0 })));

    expect(error).toBeInstanceOf(MarketplaceMeteringServiceException);
    expect(error).toMatchObject({ name: 'ValidationException', $metadata: { httpStatusCode: 400 } });
  });

  it('answers CustomerNotEntitledException when the customer is not entitled', async () => {
    const emulator = await startEmulator({ entitlement: 'CustomerNotEntitledException' });

    const error = await rejectionOf(sdkClient(emulator).send(registerUsage()));

    expect(error).toBeInstanceOf(CustomerNotEntitledException);
    expect(error).toMatchObject({ $fault: 'client', $metadata: { httpStatusCode: 400 } });
    expect(emulator.entitlement).toBe('CustomerNotEntitledException');
  });

  it('answers PlatformNotSupportedException when the platform is not supported', async () => {
    const emulator = await startEmulator({ entitlement: 'PlatformNotSupportedException' });

    const error = await rejectionOf(sdkClient(emulator).send(registerUsage()));

    expect(error).toBeInstanceOf(PlatformNotSupportedException);
    expect((error as PlatformNotSupportedException).$metadata.httpStatusCode).toBe(400);
  });

  it('applies setEntitlement to the next calls', async () => {
    // Prepare
    const emulator = await startEmulator({ signingKey: SIGNING_KEY });
    const client = sdkClient(emulator);

    // Act
    const before = await client.send(registerUsage());
    emulator.setEntitlement('CustomerNotEntitledException');
    const revoked = await rejectionOf(client.send(registerUsage()));
    emulator.setEntitlement('PlatformNotSupportedException');
    const unsupported = await rejectionOf(client.send(registerUsage()));
    emulator.setEntitlement('entitled');
    const after = await client.send(registerUsage());

    // Assess
    expect(readToken(before.Signature, SIGNING_PUBLIC_KEY_PEM).verified).toBe(true);
    expect(revoked).toBeInstanceOf(CustomerNotEntitledException);
    expect(unsupported).toBeInstanceOf(PlatformNotSupportedException);
    expect(readToken(after.Signature, SIGNING_PUBLIC_KEY_PEM).verified).toBe(true);
    expect(() => emulator.setEntitlement('Entitled' as 'entitled')).toThrow(TypeError);
    expect(emulator.entitlement).toBe('entitled');
  });

  it('signs tampered claims into the next tokens only, skipping failed calls', async () => {
    // Prepare
    const emulator = await startEmulator({ signingKey: SIGNING_KEY });
    const client = sdkClient(emulator);
    emulator.tamperNextToken({ Nonce: 'other' });
    emulator.tamperNextToken({ ProductCode: 'x', Extra: true });

    // Act
    const first = await client.send(registerUsage());
    // A failed call gets no token, so it does not consume the queued tampering.
    await rejectionOf(client.send(registerUsage({ PublicKeyVersion: 2 })));
    const second = await client.send(registerUsage());
    const third = await client.send(registerUsage());

    // Assess
    const tokens = [first, second, third].map((output) =>
      readToken(output.Signature, SIGNING_PUBLIC_KEY_PEM),
    );
    expect(tokens.map((token) => token.verified)).toEqual([true, true, true]);
    expect(tokens[0]?.payload).toEqual({
      ProductCode: PRODUCT_CODE,
      PublicKeyVersion: 1,
      Nonce: 'other',
      iat: NOW_MS / 1000,
    });
    expect(tokens[1]?.payload).toMatchObject({ ProductCode: 'x', Nonce: NONCE, Extra: true });
    expect(tokens[2]?.payload).toMatchObject({ ProductCode: PRODUCT_CODE, Nonce: NONCE });
  });

  it('repeats tampering count times and refuses bad arguments', async () => {
    const emulator = await startEmulator({ signingKey: SIGNING_KEY });
    const client = sdkClient(emulator);
    emulator.tamperNextToken({ PublicKeyVersion: 9 }, 2);

    const outputs = [
      await client.send(registerUsage()),
      await client.send(registerUsage()),
      await client.send(registerUsage()),
    ];

    expect(
      outputs.map(
        (output) => readToken(output.Signature, SIGNING_PUBLIC_KEY_PEM).payload['PublicKeyVersion'],
      ),
    ).toEqual([9, 9, 1]);
    expect(() => emulator.tamperNextToken({ Nonce: 'x' }, 0)).toThrow(TypeError);
    expect(() => emulator.tamperNextToken(null as unknown as Record<string, unknown>)).toThrow(TypeError);
    expect(() => emulator.tamperNextToken({ iat: 1n })).toThrow(TypeError);
  });

  it('injects ThrottlingException with failNext, then answers normally', async () => {
    const emulator = await startEmulator({ signingKey: SIGNING_KEY });
    emulator.failNext('RegisterUsage', 'ThrottlingException');
    const client = sdkClient(emulator);

    const error = await rejectionOf(client.send(registerUsage()));
    const next = await client.send(registerUsage());

    expect(error).toBeInstanceOf(ThrottlingException);
    expect((error as ThrottlingException).$metadata.httpStatusCode).toBe(400);
    expect(readToken(next.Signature, SIGNING_PUBLIC_KEY_PEM).verified).toBe(true);
    expect(emulator.calls.map((call) => [call.operation, call.status, call.error])).toEqual([
      ['RegisterUsage', 400, 'ThrottlingException'],
      ['RegisterUsage', 200, undefined],
    ]);
  });

  it.each([
    ['InternalServiceErrorException', { name: 'InternalServiceErrorException', $fault: 'server' }, 500],
    ['ConnectionReset', { code: 'ECONNRESET' }, 0],
    ['Timeout', { name: 'TimeoutError' }, 0],
  ])('injects %s with failNext, then answers normally', async (fault, expected, status) => {
    const emulator = await startEmulator({ signingKey: SIGNING_KEY });
    emulator.failNext('RegisterUsage', fault);
    // throwOnRequestTimeout: with this @smithy/node-http-handler, requestTimeout alone only logs a warning.
    const client = sdkClient(emulator, 'TASKA', {
      requestHandler: { requestTimeout: 300, throwOnRequestTimeout: true },
    });

    const error = await rejectionOf(client.send(registerUsage()));
    const next = await client.send(registerUsage());

    expect(error).toMatchObject(expected);
    expect(readToken(next.Signature, SIGNING_PUBLIC_KEY_PEM).verified).toBe(true);
    expect(emulator.calls.map((call) => [call.status, call.error ?? null])).toEqual([
      [status, status === 500 ? 'InternalServiceErrorException' : fault],
      [200, null],
    ]);
  });

  it('lets a MeterUsage fault leave RegisterUsage alone', async () => {
    const emulator = await startEmulator({ signingKey: SIGNING_KEY });
    emulator.failNext('MeterUsage', 'ThrottlingException');

    const output = await sdkClient(emulator).send(registerUsage());

    expect(output.Signature).toBeDefined();
    expect(emulator.calls).toMatchObject([{ operation: 'RegisterUsage', status: 200 }]);
  });

  it('keeps the key and the entitlement on reset() but forgets calls and queued tampering', async () => {
    // Prepare
    const emulator = await startEmulator();
    const client = sdkClient(emulator);
    const pem = emulator.publicKeyPem;
    await client.send(registerUsage());
    emulator.tamperNextToken({ Nonce: 'other' });
    emulator.setEntitlement('PlatformNotSupportedException');

    // Act
    emulator.reset();
    const stillUnsupported = await rejectionOf(client.send(registerUsage()));
    emulator.setEntitlement('entitled');
    const output = await client.send(registerUsage());

    // Assess
    expect(stillUnsupported).toBeInstanceOf(PlatformNotSupportedException);
    expect(emulator.publicKeyPem).toBe(pem);
    expect(readToken(output.Signature, pem)).toMatchObject({ verified: true, payload: { Nonce: NONCE } });
    expect(emulator.calls.map((call) => call.status)).toEqual([400, 200]);
  });
});

describe('MeteringEmulator wire protocol', () => {
  it('answers success with the AWS JSON 1.1 headers and accepts fractional epoch seconds', async () => {
    const emulator = await startEmulator();
    const timestampSeconds = (NOW_MS - 60_123) / 1000;

    const response = await rawMeterUsage(
      emulator,
      JSON.stringify({ ProductCode: PRODUCT_CODE, Timestamp: timestampSeconds, UsageDimension: 'nodes' }),
    );

    expect(response.status).toBe(200);
    expect(response.headers.get('content-type')).toBe('application/x-amz-json-1.1');
    expect(response.headers.get('x-amzn-requestid')).toMatch(UUID);
    expect(await response.json()).toEqual({ MeteringRecordId: expect.stringMatching(UUID) as unknown });
    expect(emulator.records).toMatchObject([
      { identity: 'RAWKEY', timestampMs: NOW_MS - 60_123, quantity: 0 },
    ]);
  });

  it('answers a missing authorization header with 403 MissingAuthenticationTokenException', async () => {
    const emulator = await startEmulator();

    const response = await fetch(`${emulator.url}/`, {
      method: 'POST',
      headers: { 'x-amz-target': 'AWSMPMeteringService.MeterUsage' },
      body: '{}',
    });

    expect(response.status).toBe(403);
    expect(response.headers.get('x-amzn-errortype')).toBe('MissingAuthenticationTokenException');
    expect(await response.json()).toMatchObject({ __type: 'MissingAuthenticationTokenException' });
    expect(emulator.calls).toMatchObject([{ identity: undefined, status: 403 }]);
  });

  it('answers a credential scoped to another service with 403 InvalidSignatureException', async () => {
    const emulator = await startEmulator();

    const response = await rawMeterUsage(emulator, '{}', {
      authorization: RAW_AUTHORIZATION.replace('/aws-marketplace/', '/marketplace-metering/'),
    });

    expect(response.status).toBe(403);
    expect(response.headers.get('x-amzn-errortype')).toBe('InvalidSignatureException');
  });

  it('answers an unknown target with 400 UnknownOperationException', async () => {
    const emulator = await startEmulator();

    const response = await rawMeterUsage(emulator, '{}', {
      'x-amz-target': 'AWSMPMeteringService.GetEntitlements',
    });

    expect(response.status).toBe(400);
    expect(response.headers.get('x-amzn-errortype')).toBe('UnknownOperationException');
    expect(emulator.calls).toMatchObject([{ operation: 'GetEntitlements', status: 400 }]);
  });

  it('answers a body that is not a JSON object with SerializationException', async () => {
    const emulator = await startEmulator();

    const response = await rawMeterUsage(emulator, 'not json');

    expect(response.status).toBe(400);
    expect(await response.json()).toMatchObject({ __type: 'SerializationException' });
  });

  it('answers a bad quantity with ValidationException', async () => {
    const emulator = await startEmulator();

    const response = await rawMeterUsage(
      emulator,
      JSON.stringify({
        ProductCode: PRODUCT_CODE,
        Timestamp: NOW_MS / 1000,
        UsageDimension: 'n',
        UsageQuantity: -1,
      }),
    );

    expect(response.status).toBe(400);
    expect(response.headers.get('x-amzn-errortype')).toBe('ValidationException');
  });

  it('accepts a custom endpoint path prefix (POST /prefix/)', async () => {
    const emulator = await startEmulator();
    const client = new MarketplaceMeteringClient({
      region: 'us-east-1',
      endpoint: `${emulator.url}/prefix`,
      credentials: { accessKeyId: 'TASKA', secretAccessKey: 'x' },
      maxAttempts: 1,
    });
    clients.push(client);

    const output = await client.send(meterUsage());

    expect(output.MeteringRecordId).toMatch(UUID);
  });

  it('answers RegisterUsage with only Signature when the key is current', async () => {
    const emulator = await startEmulator({ signingKey: SIGNING_KEY });

    const response = await rawMeterUsage(
      emulator,
      JSON.stringify({ ProductCode: PRODUCT_CODE, PublicKeyVersion: 1 }),
      {
        'x-amz-target': 'AWSMPMeteringService.RegisterUsage',
      },
    );

    expect(response.status).toBe(200);
    expect(response.headers.get('content-type')).toBe('application/x-amz-json-1.1');
    expect(Object.keys((await response.json()) as Record<string, unknown>)).toEqual(['Signature']);
  });

  it('answers a RegisterUsage Nonce over 255 characters with ValidationException', async () => {
    const emulator = await startEmulator({ signingKey: SIGNING_KEY });

    const response = await rawMeterUsage(
      emulator,
      JSON.stringify({ ProductCode: PRODUCT_CODE, PublicKeyVersion: 1, Nonce: 'n'.repeat(256) }),
      { 'x-amz-target': 'AWSMPMeteringService.RegisterUsage' },
    );

    expect(response.status).toBe(400);
    expect(response.headers.get('x-amzn-errortype')).toBe('ValidationException');
    expect(await response.json()).toMatchObject({ __type: 'ValidationException' });
  });

  it('answers 413 to a request body over MAX_REQUEST_BODY_BYTES (16 MiB)', async () => {
    const emulator = await startEmulator();

    const response = await rawMeterUsage(emulator, 'x'.repeat(MAX_REQUEST_BODY_BYTES + 1));

    expect(response.status).toBe(413);
    expect(emulator.records).toEqual([]);
  });
});

describe('MeteringEmulator control surface', () => {
  it('lists calls and records with totals over HTTP', async () => {
    const emulator = await startEmulator();
    await sdkClient(emulator).send(meterUsage({ UsageQuantity: 4 }));

    const calls = (await (await fetch(`${emulator.url}/emulator/calls`)).json()) as { calls: EmulatorCall[] };
    const records = (await (await fetch(`${emulator.url}/emulator/records`)).json()) as {
      records: { quantity: number }[];
      totals: Record<string, number>;
    };

    expect(calls.calls).toMatchObject([{ operation: 'MeterUsage', identity: 'TASKA', status: 200 }]);
    expect(records.records).toMatchObject([{ quantity: 4 }]);
    expect(records.totals).toEqual({ nodes: 4 });
  });

  it('queues faults posted to /emulator/faults', async () => {
    const emulator = await startEmulator();

    const response = await fetch(`${emulator.url}/emulator/faults`, {
      method: 'POST',
      body: JSON.stringify({ operation: 'MeterUsage', error: 'ThrottlingException', count: 2 }),
    });
    const client = sdkClient(emulator);
    const first = await rejectionOf(client.send(meterUsage()));
    const second = await rejectionOf(client.send(meterUsage()));
    await client.send(meterUsage());

    expect(response.status).toBe(200);
    expect([(first as Error).name, (second as Error).name]).toEqual([
      'ThrottlingException',
      'ThrottlingException',
    ]);
    expect(emulator.records).toHaveLength(1);
  });

  it.each([
    ['not json', 'JSON object'],
    [JSON.stringify({ operation: 'Nope', error: 'ThrottlingException' }), 'Unknown operation'],
    [JSON.stringify({ operation: 'MeterUsage' }), '"error" must be a string'],
    [JSON.stringify({ operation: 'MeterUsage', error: 'Bad Name!' }), 'must be an AWS error name'],
    [JSON.stringify({ operation: 'MeterUsage', error: 'ThrottlingException', count: 0 }), 'count'],
  ])('refuses the fault body %s with 400 and a clear message', async (body, expected) => {
    const emulator = await startEmulator();

    const response = await fetch(`${emulator.url}/emulator/faults`, { method: 'POST', body });

    expect(response.status).toBe(400);
    expect(((await response.json()) as { error: string }).error).toContain(expected);
  });

  it('forgets calls, records, tokens and faults on POST /emulator/reset', async () => {
    // Prepare
    const emulator = await startEmulator();
    const client = sdkClient(emulator);
    await client.send(meterUsage({ ClientToken: 'token-1', UsageQuantity: 1 }));
    emulator.failNext('MeterUsage', 'ThrottlingException');

    // Act
    const response = await fetch(`${emulator.url}/emulator/reset`, { method: 'POST' });
    // Same hour and token with another quantity: accepted, because both were forgotten.
    await client.send(meterUsage({ ClientToken: 'token-1', UsageQuantity: 2 }));

    // Assess
    expect(response.status).toBe(200);
    expect(emulator.records.map((record) => record.quantity)).toEqual([2]);
    expect(emulator.calls).toMatchObject([{ status: 200 }]);
  });

  it('serves the public key as PEM text on GET /emulator/public-key', async () => {
    const emulator = await startEmulator();

    const response = await fetch(`${emulator.url}/emulator/public-key`);
    const pem = await response.text();
    const output = await sdkClient(emulator).send(registerUsage());

    expect(response.status).toBe(200);
    expect(response.headers.get('content-type')).toMatch(/^text\/plain/);
    expect(pem).toBe(emulator.publicKeyPem);
    expect(pem.startsWith('-----BEGIN PUBLIC KEY-----')).toBe(true);
    expect(readToken(output.Signature, pem).verified).toBe(true);
  });

  it('sets the entitlement on POST /emulator/entitlement and echoes it', async () => {
    const emulator = await startEmulator({ signingKey: SIGNING_KEY });
    const client = sdkClient(emulator);

    const response = await fetch(`${emulator.url}/emulator/entitlement`, {
      method: 'POST',
      body: JSON.stringify({ state: 'CustomerNotEntitledException' }),
    });
    const error = await rejectionOf(client.send(registerUsage()));
    const back = await fetch(`${emulator.url}/emulator/entitlement`, {
      method: 'POST',
      body: JSON.stringify({ state: 'entitled' }),
    });
    const output = await client.send(registerUsage());

    expect(response.status).toBe(200);
    expect(await response.json()).toEqual({ state: 'CustomerNotEntitledException' });
    expect(error).toBeInstanceOf(CustomerNotEntitledException);
    expect(back.status).toBe(200);
    expect(readToken(output.Signature, SIGNING_PUBLIC_KEY_PEM).verified).toBe(true);
  });

  it.each([
    'not json',
    JSON.stringify({}),
    JSON.stringify({ state: 'Entitled' }),
    JSON.stringify({ state: 'ThrottlingException' }),
    JSON.stringify(['entitled']),
  ])('refuses the entitlement body %s with 400 and leaves the state alone', async (body) => {
    const emulator = await startEmulator({ entitlement: 'PlatformNotSupportedException' });

    const response = await fetch(`${emulator.url}/emulator/entitlement`, { method: 'POST', body });

    expect(response.status).toBe(400);
    expect(((await response.json()) as { error: string }).error).toContain('"state" is one of');
    expect(emulator.entitlement).toBe('PlatformNotSupportedException');
  });

  it('answers unknown control routes with 404 and wrong methods with 405', async () => {
    const emulator = await startEmulator();

    const unknown = await fetch(`${emulator.url}/emulator/nope`);
    const wrongMethod = await fetch(`${emulator.url}/emulator/calls`, { method: 'POST' });

    expect(unknown.status).toBe(404);
    expect(wrongMethod.status).toBe(405);
    expect(wrongMethod.headers.get('allow')).toBe('GET');
    const readEntitlement = await fetch(`${emulator.url}/emulator/entitlement`);
    expect(readEntitlement.status).toBe(405);
    expect(readEntitlement.headers.get('allow')).toBe('POST');
  });

  it('answers 413 to a control body over 1 MiB', async () => {
    const emulator = await startEmulator();

    const response = await fetch(`${emulator.url}/emulator/faults`, {
      method: 'POST',
      body: 'x'.repeat(MAX_CONTROL_BODY_BYTES + 1),
    });

    expect(response.status).toBe(413);
  });
});

describe('MeteringEmulator account quota', () => {
  it('throttles the account as a whole: the calls over the bucket get ThrottlingException and record nothing', async () => {
    // Prepare: two calls a second for the account; five tasks call at once.
    const emulator = await startEmulator({ quota: { MeterUsage: 2 } });
    const tasks = ['TASK1', 'TASK2', 'TASK3', 'TASK4', 'TASK5'].map((id) => sdkClient(emulator, id));

    // Act
    const outcomes = await Promise.allSettled(tasks.map((client) => client.send(meterUsage())));

    // Assess
    const rejected = outcomes.flatMap((o) => (o.status === 'rejected' ? [o.reason as Error] : []));
    expect(outcomes.filter((o) => o.status === 'fulfilled')).toHaveLength(2);
    expect(rejected).toHaveLength(3);
    for (const error of rejected) {
      expect(error).toBeInstanceOf(ThrottlingException);
      expect((error as ThrottlingException).$metadata.httpStatusCode).toBe(400);
      expect(error.message).toBe('Rate exceeded');
    }
    expect(emulator.records).toHaveLength(2);
    expect(emulator.calls.filter((c) => c.error === 'ThrottlingException')).toHaveLength(3);
    expect(emulator.calls.filter((c) => c.error === 'ThrottlingException').map((c) => c.status)).toEqual([
      400, 400, 400,
    ]);
  });

  it('refills at its rate in real time', async () => {
    const emulator = await startEmulator({ quota: { MeterUsage: 10 } });
    const client = sdkClient(emulator);
    await Promise.allSettled(
      Array.from({ length: 12 }, (_, i) => client.send(meterUsage({ UsageDimension: `d${i}` }))),
    );

    await new Promise((resolve) => setTimeout(resolve, 250));
    const later = await client.send(meterUsage({ UsageDimension: 'later' }));

    expect(later.MeteringRecordId).toMatch(UUID);
    expect(emulator.records.length).toBeGreaterThanOrEqual(11);
  });

  it('throttles before validating, and limits RegisterUsage on its own bucket', async () => {
    const emulator = await startEmulator({
      quota: { MeterUsage: 1, RegisterUsage: 1 },
      signingKey: SIGNING_KEY,
    });
    const client = sdkClient(emulator);
    await client.send(meterUsage());

    const invalid = await rejectionOf(client.send(meterUsage({ ProductCode: 'other-product' })));
    const register = await client.send(registerUsage());
    const registerAgain = await rejectionOf(client.send(registerUsage()));

    expect(invalid).toBeInstanceOf(ThrottlingException);
    expect(register.Signature).toBeDefined();
    expect(registerAgain).toBeInstanceOf(ThrottlingException);
  });

  it('is off by default, and refuses a quota it cannot apply', async () => {
    const emulator = await startEmulator();
    const client = sdkClient(emulator);

    await Promise.all(
      Array.from({ length: 30 }, (_, i) => client.send(meterUsage({ UsageDimension: `d${i}` }))),
    );

    expect(emulator.quota).toEqual({});
    expect(emulator.records).toHaveLength(30);
    expect(() => emulator.setQuota({ MeterUsage: 0 })).toThrow(/above 0/);
    expect(() => emulator.setQuota({ GetObject: 1 })).toThrow(/Unknown operation/);
    expect(() => new MeteringEmulator({ productCode: PRODUCT_CODE, quota: { MeterUsage: -1 } })).toThrow(
      TypeError,
    );
  });

  it('is set and read on /emulator/quota, refuses a bad body with 400, and survives reset', async () => {
    const emulator = await startEmulator();
    const post = (body: string): Promise<Response> =>
      fetch(`${emulator.url}/emulator/quota`, { method: 'POST', body });

    const set = await post(JSON.stringify({ quota: { MeterUsage: 1 } }));
    const read = await (await fetch(`${emulator.url}/emulator/quota`)).json();
    const bad = await post(JSON.stringify({ quota: { MeterUsage: 'fast' } }));
    await fetch(`${emulator.url}/emulator/reset`, { method: 'POST' });
    const afterReset = emulator.quota;
    const aws = await post(JSON.stringify({ quota: 'aws' }));
    const off = await post(JSON.stringify({ quota: {} }));

    expect(set.status).toBe(200);
    expect(read).toEqual({ quota: { MeterUsage: 1 } });
    expect(bad.status).toBe(400);
    expect(((await bad.json()) as { error: string }).error).toContain('calls per second');
    expect(afterReset).toEqual({ MeterUsage: 1 });
    expect(await aws.json()).toEqual({ quota: { MeterUsage: 10, RegisterUsage: 5, BatchMeterUsage: 10 } });
    expect(await off.json()).toEqual({ quota: {} });
  });
});

describe('MeteringEmulator lifecycle', () => {
  it('stop() resolves while a Timeout fault holds a request open, and the client sees the socket close', async () => {
    // Prepare
    const held = nextCall((call) => call.error === 'Timeout');
    const emulator = await startEmulator({ onCall: held.onCall });
    emulator.failNext('MeterUsage', 'Timeout');
    const pending = rejectionOf(rawMeterUsage(emulator, '{}'));
    await held.seen;

    // Act
    await emulator.stop();

    // Assess
    expect(await pending).toBeInstanceOf(TypeError); // fetch reports a closed socket as TypeError('fetch failed')
    expect(() => emulator.url).toThrow(/not started/);
  });

  it('is idempotent on stop() and can start again on a new port with its state kept', async () => {
    const emulator = await startEmulator();
    await sdkClient(emulator).send(meterUsage());

    await emulator.stop();
    await emulator.stop();
    const url = await emulator.start();

    expect(url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    expect(emulator.records).toHaveLength(1);
  });

  it('refuses to start twice and to expose a URL before start', async () => {
    const emulator = new MeteringEmulator({ productCode: PRODUCT_CODE });
    emulators.push(emulator);

    expect(() => emulator.url).toThrow(/not started/);
    await emulator.start();
    await expect(emulator.start()).rejects.toThrow(/already started/);
  });

  it('refuses faults for unknown operations, malformed names and bad counts', () => {
    const emulator = new MeteringEmulator({ productCode: PRODUCT_CODE });

    expect(() => emulator.failNext('MeterUSage', 'ThrottlingException')).toThrow(TypeError);
    expect(() => emulator.failNext('MeterUsage', 'x-amzn-errortype: evil')).toThrow(TypeError);
    expect(() => emulator.failNext('MeterUsage', 'ThrottlingException', 1.5)).toThrow(TypeError);
  });

  it('refuses invalid RegisterUsage options', () => {
    const make = (options: Partial<EmulatorOptions>) => () =>
      new MeteringEmulator({ productCode: PRODUCT_CODE, ...options });
    const ecKey = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;

    expect(make({ publicKeyVersion: 0 })).toThrow(TypeError);
    expect(make({ publicKeyVersion: 1.5 })).toThrow(TypeError);
    expect(make({ entitlement: 'nope' as 'entitled' })).toThrow(TypeError);
    expect(make({ publicKeyRotatedAtMs: Number.NaN })).toThrow(TypeError);
    expect(make({ signingKey: createPublicKey(SIGNING_KEY) })).toThrow(/private RSA/);
    expect(make({ signingKey: ecKey })).toThrow(/private RSA/);
    expect(make({ signingKey: SIGNING_PUBLIC_KEY_PEM as unknown as EmulatorOptions['signingKey'] })).toThrow(
      /KeyObject/,
    );
    expect(make({ signingKey: SIGNING_KEY, publicKeyVersion: 7 })).not.toThrow();
  });

  it('keeps answering when the onCall callback throws', async () => {
    const emulator = await startEmulator({
      onCall: () => {
        throw new Error('callback bug');
      },
    });
    const warnings: string[] = [];
    const onWarning = (warning: Error): void => {
      warnings.push(warning.message);
    };
    process.on('warning', onWarning);

    try {
      const output = await sdkClient(emulator).send(meterUsage());
      expect(output.MeteringRecordId).toMatch(UUID);
    } finally {
      process.off('warning', onWarning);
    }
    expect(warnings.some((message) => message.includes('callback bug'))).toBe(true);
  });
});

describe('MeteringEmulator SaaS operations with the real SDK client', () => {
  const ACCOUNT = '111122223333';

  function batchMeterUsage(
    records: Partial<UsageRecord>[],
    productCode: string | undefined = undefined,
  ): BatchMeterUsageCommand {
    return new BatchMeterUsageCommand({
      ...(productCode === undefined ? {} : { ProductCode: productCode }),
      UsageRecords: records.map((record) => ({
        Timestamp: new Date(NOW_MS - 60_000),
        Dimension: 'users',
        Quantity: 5,
        ...record,
      })),
    });
  }

  it('redeems a registration token once for the customer it was granted for', async () => {
    // Prepare
    const emulator = await startEmulator();
    const client = sdkClient(emulator);
    const grant = emulator.createRegistrationToken({ customerAWSAccountId: ACCOUNT });
    const legacy = emulator.createRegistrationToken({ customerIdentifier: 'cust-legacy-1' });

    // Act
    const resolved = await client.send(
      new ResolveCustomerCommand({ RegistrationToken: grant.registrationToken }),
    );
    const again = await rejectionOf(
      client.send(new ResolveCustomerCommand({ RegistrationToken: grant.registrationToken })),
    );
    const unknown = await rejectionOf(client.send(new ResolveCustomerCommand({ RegistrationToken: 'nope' })));
    const legacyResolved = await client.send(
      new ResolveCustomerCommand({ RegistrationToken: legacy.registrationToken }),
    );

    // Assess: a new integration gets no CustomerIdentifier; one from before Concurrent Agreements does.
    expect({ ...resolved, $metadata: undefined }).toEqual({
      $metadata: undefined,
      CustomerAWSAccountId: ACCOUNT,
      LicenseArn: grant.customer.licenseArn,
      ProductCode: PRODUCT_CODE,
    });
    expect(grant.customer.licenseArn).toMatch(
      /^arn:aws:license-manager::111122223333:license:l-[0-9a-f]{32}$/,
    );
    expect(again).toBeInstanceOf(ExpiredTokenException);
    expect(unknown).toBeInstanceOf(InvalidTokenException);
    expect(legacyResolved).toMatchObject({ CustomerIdentifier: 'cust-legacy-1', ProductCode: PRODUCT_CODE });
    expect(legacyResolved.CustomerAWSAccountId).toMatch(/^\d{12}$/);
  });

  it('answers ExpiredTokenException for a token redeemed after its lifetime', async () => {
    let now = NOW_MS;
    const emulator = await startEmulator({ now: () => now });
    const grant = emulator.createRegistrationToken({ lifetimeSeconds: 60 });

    now += 60_000;
    const error = await rejectionOf(
      sdkClient(emulator).send(new ResolveCustomerCommand({ RegistrationToken: grant.registrationToken })),
    );

    expect(error).toBeInstanceOf(ExpiredTokenException);
  });

  it('meters a usage record of account and license, apart from the container records', async () => {
    const emulator = await startEmulator();
    const { customer } = emulator.createRegistrationToken({ customerAWSAccountId: ACCOUNT });

    const output = await sdkClient(emulator).send(
      batchMeterUsage([
        {
          CustomerAWSAccountId: ACCOUNT,
          LicenseArn: customer.licenseArn,
          Quantity: 7,
          UsageAllocations: [
            { AllocatedUsageQuantity: 4, Tags: [{ Key: 'team', Value: 'a' }] },
            { AllocatedUsageQuantity: 3 },
          ],
        },
      ]),
    );

    expect(output.UnprocessedRecords).toEqual([]);
    expect(output.Results).toEqual([
      {
        Status: 'Success',
        MeteringRecordId: expect.stringMatching(UUID) as unknown,
        UsageRecord: {
          Timestamp: new Date(NOW_MS - 60_000),
          Dimension: 'users',
          Quantity: 7,
          CustomerAWSAccountId: ACCOUNT,
          LicenseArn: customer.licenseArn,
          UsageAllocations: [
            { AllocatedUsageQuantity: 4, Tags: [{ Key: 'team', Value: 'a' }] },
            { AllocatedUsageQuantity: 3 },
          ],
        },
      },
    ]);
    expect(emulator.batchRecords).toMatchObject([
      {
        identity: 'TASKA',
        productCode: PRODUCT_CODE,
        customerAWSAccountId: ACCOUNT,
        licenseArn: customer.licenseArn,
        dimension: 'users',
        hourStartMs: HOUR_START_MS,
        quantity: 7,
        allocations: [
          { quantity: 4, tags: { team: 'a' } },
          { quantity: 3, tags: {} },
        ],
        meteringRecordId: output.Results?.[0]?.MeteringRecordId,
      },
    ]);
    expect(emulator.records).toEqual([]);
    expect(emulator.totals()).toEqual(new Map());
  });

  it('answers an identical resend with the same id and a different quantity in the same hour with DuplicateRecord', async () => {
    // Prepare
    const emulator = await startEmulator();
    const client = sdkClient(emulator);
    const { customer } = emulator.createRegistrationToken({ customerAWSAccountId: ACCOUNT });
    const record = { CustomerAWSAccountId: ACCOUNT, LicenseArn: customer.licenseArn };
    const first = await client.send(batchMeterUsage([record, { ...record, Dimension: 'storage' }]));

    // Act: a subset of the same records, then the same hour with another quantity (by the legacy identifier too).
    const subset = await client.send(batchMeterUsage([{ ...record, Dimension: 'storage' }]));
    const changed = await client.send(
      batchMeterUsage([{ ...record, Quantity: 6, Timestamp: new Date(HOUR_START_MS + 1000) }]),
    );

    // Assess
    expect(subset.Results?.[0]).toMatchObject({
      Status: 'Success',
      MeteringRecordId: first.Results?.[1]?.MeteringRecordId,
    });
    expect(changed.Results?.[0]?.Status).toBe('DuplicateRecord');
    expect(changed.Results?.[0]?.MeteringRecordId).toBeUndefined();
    expect(emulator.batchRecords.map((r) => [r.dimension, r.quantity])).toEqual([
      ['users', 5],
      ['storage', 5],
    ]);
  });

  it('answers CustomerNotSubscribed for a buyer without an active agreement, recording nothing', async () => {
    const emulator = await startEmulator();
    const { customer } = emulator.createRegistrationToken({
      customerAWSAccountId: ACCOUNT,
      subscribed: false,
    });

    const output = await sdkClient(emulator).send(
      batchMeterUsage(
        [
          { CustomerAWSAccountId: ACCOUNT, LicenseArn: customer.licenseArn },
          { CustomerAWSAccountId: '999988887777' },
        ],
        PRODUCT_CODE,
      ),
    );

    expect(output.Results?.map((result) => result.Status)).toEqual([
      'CustomerNotSubscribed',
      'CustomerNotSubscribed',
    ]);
    expect(emulator.batchRecords).toEqual([]);
  });

  it('meters by CustomerIdentifier for an integration from before Concurrent Agreements, one hour per customer either way', async () => {
    const emulator = await startEmulator();
    const client = sdkClient(emulator);
    const { customer } = emulator.createRegistrationToken({
      customerIdentifier: 'cust-1',
      customerAWSAccountId: ACCOUNT,
    });

    const byIdentifier = await client.send(batchMeterUsage([{ CustomerIdentifier: 'cust-1' }], PRODUCT_CODE));
    const byAccount = await client.send(
      batchMeterUsage([{ CustomerAWSAccountId: ACCOUNT, LicenseArn: customer.licenseArn, Quantity: 9 }]),
    );
    const unknown = await rejectionOf(
      client.send(batchMeterUsage([{ CustomerIdentifier: 'cust-2' }], PRODUCT_CODE)),
    );

    expect(byIdentifier.Results?.[0]).toMatchObject({
      Status: 'Success',
      UsageRecord: { CustomerIdentifier: 'cust-1' },
    });
    expect(byAccount.Results?.[0]?.Status).toBe('DuplicateRecord');
    expect(unknown).toBeInstanceOf(InvalidCustomerIdentifierException);
    expect(emulator.batchRecords).toMatchObject([
      { customerIdentifier: 'cust-1', customerAWSAccountId: ACCOUNT, quantity: 5 },
    ]);
  });

  it.each([
    [
      'both CustomerIdentifier and CustomerAWSAccountId',
      { CustomerIdentifier: 'cust-1', CustomerAWSAccountId: ACCOUNT },
      'mutually exclusive',
    ],
    ['no buyer', {}, 'names no buyer'],
    [
      'an account id that is not digits',
      { CustomerAWSAccountId: 'acct-1' },
      'usageRecords.1.customerAWSAccountId',
    ],
    [
      'a LicenseArn that is not an ARN',
      { CustomerAWSAccountId: ACCOUNT, LicenseArn: 'license-1' },
      'usageRecords.1.licenseArn',
    ],
  ])('refuses a record with %s with ValidationException', async (_name, record, expected) => {
    const emulator = await startEmulator();
    emulator.createRegistrationToken({ customerIdentifier: 'cust-1', customerAWSAccountId: ACCOUNT });

    const error = await rejectionOf(sdkClient(emulator).send(batchMeterUsage([record], PRODUCT_CODE)));

    expect(error).toMatchObject({
      name: 'ValidationException',
      message: expect.stringContaining(expected) as unknown,
    });
    expect(emulator.batchRecords).toEqual([]);
  });

  it('refuses a license of another account, another product, or none, and more than one product per request', async () => {
    const emulator = await startEmulator();
    const client = sdkClient(emulator);
    const { customer } = emulator.createRegistrationToken({ customerAWSAccountId: ACCOUNT });
    const other = emulator.createRegistrationToken({
      productCode: 'saas-other',
      customerAWSAccountId: ACCOUNT,
    });

    const wrongAccount = await rejectionOf(
      client.send(
        batchMeterUsage([{ CustomerAWSAccountId: '999988887777', LicenseArn: customer.licenseArn }]),
      ),
    );
    const wrongProduct = await rejectionOf(
      client.send(
        batchMeterUsage([{ CustomerAWSAccountId: ACCOUNT, LicenseArn: customer.licenseArn }], 'saas-other'),
      ),
    );
    const twoProducts = await rejectionOf(
      client.send(
        batchMeterUsage([
          { CustomerAWSAccountId: ACCOUNT, LicenseArn: customer.licenseArn },
          { CustomerAWSAccountId: ACCOUNT, LicenseArn: other.customer.licenseArn },
        ]),
      ),
    );
    const noProduct = await rejectionOf(client.send(batchMeterUsage([{ CustomerAWSAccountId: ACCOUNT }])));
    const unknownProduct = await rejectionOf(
      client.send(batchMeterUsage([{ CustomerAWSAccountId: ACCOUNT }], 'nope')),
    );
    const otherProduct = await client.send(
      batchMeterUsage([{ CustomerAWSAccountId: ACCOUNT, LicenseArn: other.customer.licenseArn }]),
    );

    expect(wrongAccount).toBeInstanceOf(InvalidLicenseException);
    expect(wrongProduct).toBeInstanceOf(InvalidLicenseException);
    expect(twoProducts).toMatchObject({
      name: 'InvalidProductCodeException',
      message: expect.stringContaining('one product') as unknown,
    });
    expect(noProduct).toBeInstanceOf(InvalidProductCodeException);
    expect(unknownProduct).toBeInstanceOf(InvalidProductCodeException);
    expect(otherProduct.Results?.[0]?.Status).toBe('Success');
    expect(emulator.batchRecords).toMatchObject([{ productCode: 'saas-other' }]);
  });

  it('takes at most 25 records, applies the dimension allow-list and the allocation rules to each', async () => {
    const emulator = await startEmulator({ dimensions: ['nodes', 'users'] });
    const client = sdkClient(emulator);
    emulator.createRegistrationToken({ customerAWSAccountId: ACCOUNT });
    const record = { CustomerAWSAccountId: ACCOUNT };

    const tooMany = await rejectionOf(
      client.send(
        batchMeterUsage(
          Array.from({ length: 26 }, () => record),
          PRODUCT_CODE,
        ),
      ),
    );
    const empty = await client.send(batchMeterUsage([], PRODUCT_CODE));
    const dimension = await rejectionOf(
      client.send(batchMeterUsage([record, { ...record, Dimension: 'gpus' }], PRODUCT_CODE)),
    );
    const allocations = await rejectionOf(
      client.send(
        batchMeterUsage([{ ...record, UsageAllocations: [{ AllocatedUsageQuantity: 4 }] }], PRODUCT_CODE),
      ),
    );
    const full = await client.send(
      batchMeterUsage(
        Array.from({ length: 25 }, (_, index) => ({
          ...record,
          Timestamp: new Date(NOW_MS - index * (HOUR_MS / 2)),
        })),
        PRODUCT_CODE,
      ),
    );

    expect(tooMany).toMatchObject({
      name: 'ValidationException',
      message: expect.stringContaining('less than or equal to 25') as unknown,
    });
    expect(empty).toMatchObject({ Results: [], UnprocessedRecords: [] });
    expect(dimension).toBeInstanceOf(InvalidUsageDimensionException);
    expect(allocations).toBeInstanceOf(InvalidUsageAllocationsException);
    expect(full.Results?.filter((result) => result.Status === 'Success')).toHaveLength(25);
  });

  it('refuses the whole batch when one record is 24 hours old', async () => {
    const emulator = await startEmulator();
    emulator.createRegistrationToken({ customerAWSAccountId: ACCOUNT });
    const client = sdkClient(emulator);
    const record = { CustomerAWSAccountId: ACCOUNT };

    const error = await rejectionOf(
      client.send(
        batchMeterUsage(
          [record, { ...record, Dimension: 'storage', Timestamp: new Date(NOW_MS - 24 * HOUR_MS) }],
          PRODUCT_CODE,
        ),
      ),
    );
    const within = await client.send(
      batchMeterUsage([{ ...record, Timestamp: new Date(NOW_MS - 24 * HOUR_MS + 1000) }], PRODUCT_CODE),
    );

    expect(error).toBeInstanceOf(TimestampOutOfBoundsException);
    expect(within.Results?.[0]?.Status).toBe('Success');
    expect(emulator.batchRecords).toHaveLength(1);
  });

  it("accepts the previous month's records until 06:00 UTC on the first, and refuses them after", async () => {
    let now = Date.UTC(2026, 11, 1, 5, 59);
    const emulator = await startEmulator({ now: () => now });
    emulator.createRegistrationToken({ customerAWSAccountId: ACCOUNT });
    const client = sdkClient(emulator);
    const lastHourOfNovember = {
      CustomerAWSAccountId: ACCOUNT,
      Timestamp: new Date(Date.UTC(2026, 10, 30, 23, 30)),
    };

    const inGrace = await client.send(batchMeterUsage([lastHourOfNovember], PRODUCT_CODE));
    now = Date.UTC(2026, 11, 1, 6, 0);
    const afterGrace = await rejectionOf(
      client.send(batchMeterUsage([{ ...lastHourOfNovember, Dimension: 'storage' }], PRODUCT_CODE)),
    );

    expect(inGrace.Results?.[0]?.Status).toBe('Success');
    expect(afterGrace).toBeInstanceOf(TimestampOutOfBoundsException);
    expect((afterGrace as Error).message).toContain('06:00 UTC on the first day of the next month');
  });

  it('answers records left unprocessed in UnprocessedRecords, which a resend of that list meters', async () => {
    // Prepare
    const emulator = await startEmulator();
    const client = sdkClient(emulator);
    emulator.createRegistrationToken({ customerAWSAccountId: ACCOUNT });
    const records = ['a', 'b', 'c'].map((dimension) => ({
      CustomerAWSAccountId: ACCOUNT,
      Dimension: dimension,
    }));
    emulator.leaveUnprocessed(2);

    // Act
    const first = await client.send(batchMeterUsage(records, PRODUCT_CODE));
    const retry = await client.send(
      new BatchMeterUsageCommand({ ProductCode: PRODUCT_CODE, UsageRecords: first.UnprocessedRecords ?? [] }),
    );

    // Assess
    expect(first.Results?.map((result) => result.UsageRecord?.Dimension)).toEqual(['c']);
    expect(first.UnprocessedRecords?.map((record) => record.Dimension)).toEqual(['a', 'b']);
    expect(retry.Results?.map((result) => [result.UsageRecord?.Dimension, result.Status])).toEqual([
      ['a', 'Success'],
      ['b', 'Success'],
    ]);
    expect(retry.UnprocessedRecords).toEqual([]);
    expect(emulator.batchRecords.map((record) => record.dimension)).toEqual(['c', 'a', 'b']);
  });

  it('answers 413 to a BatchMeterUsage body of 1 MB or more, which MeterUsage would take', async () => {
    const emulator = await startEmulator();
    const body = JSON.stringify({
      ProductCode: PRODUCT_CODE,
      UsageRecords: [],
      Padding: 'x'.repeat(1_000_000),
    });

    const batch = await rawMeterUsage(emulator, body, {
      'x-amz-target': 'AWSMPMeteringService.BatchMeterUsage',
    });
    const meter = await rawMeterUsage(emulator, body);

    expect(batch.status).toBe(413);
    expect(batch.headers.get('x-amzn-errortype')).toBe('RequestEntityTooLargeException');
    expect(meter.status).toBe(400);
    expect(meter.headers.get('x-amzn-errortype')).toBe('ValidationException');
  });

  it('refuses bad registration token specs and a license granted with other details', () => {
    const emulator = new MeteringEmulator({ productCode: PRODUCT_CODE });
    const { customer } = emulator.createRegistrationToken({ customerAWSAccountId: ACCOUNT });

    expect(() => emulator.createRegistrationToken({ customerAWSAccountId: '12ab' })).toThrow(
      /customerAWSAccountId/,
    );
    expect(() => emulator.createRegistrationToken({ lifetimeSeconds: 0 })).toThrow(/lifetimeSeconds/);
    expect(() => emulator.createRegistrationToken({ productCode: 'bad code' })).toThrow(/productCode/);
    expect(() =>
      emulator.createRegistrationToken({
        licenseArn: customer.licenseArn,
        customerAWSAccountId: '999988887777',
      }),
    ).toThrow(/already belongs/);
    expect(emulator.createRegistrationToken({ licenseArn: customer.licenseArn }).customer).toBe(customer);
    expect(emulator.customers).toEqual([customer]);
  });
});

describe('MeteringEmulator Region, content type and request size', () => {
  it("refuses requests signed for another Region with each operation's own error", async () => {
    const emulator = await startEmulator({ signingKey: SIGNING_KEY });
    const client = sdkClient(emulator, 'TASKA', { region: 'eu-west-1' });

    const meter = await rejectionOf(client.send(meterUsage()));
    const register = await rejectionOf(client.send(registerUsage()));
    const batch = await rejectionOf(
      client.send(new BatchMeterUsageCommand({ ProductCode: PRODUCT_CODE, UsageRecords: [] })),
    );

    expect(meter).toBeInstanceOf(InvalidEndpointRegionException);
    expect((meter as Error).message).toContain('signed for eu-west-1, but this endpoint is in us-east-1');
    expect(register).toBeInstanceOf(InvalidRegionException);
    expect(batch).toMatchObject({ name: 'InvalidSignatureException', $metadata: { httpStatusCode: 403 } });
    expect(emulator.records).toEqual([]);
  });

  it('serves the Region it is given', async () => {
    const emulator = await startEmulator({ region: 'eu-west-1' });

    const output = await sdkClient(emulator, 'TASKA', { region: 'eu-west-1' }).send(meterUsage());
    const other = await rejectionOf(sdkClient(emulator).send(meterUsage({ UsageDimension: 'other' })));

    expect(emulator.region).toBe('eu-west-1');
    expect(output.MeteringRecordId).toMatch(UUID);
    expect(other).toBeInstanceOf(InvalidEndpointRegionException);
    expect(() => new MeteringEmulator({ productCode: PRODUCT_CODE, region: 'mars' })).toThrow(/region/);
  });

  it('answers a body that is not AWS JSON 1.1 with UnknownOperationException and takes a charset parameter', async () => {
    const emulator = await startEmulator();
    const body = JSON.stringify({ ProductCode: PRODUCT_CODE, Timestamp: NOW_MS / 1000, UsageDimension: 'n' });

    const json = await rawMeterUsage(emulator, body, { 'content-type': 'application/json' });
    const charset = await rawMeterUsage(emulator, body, {
      'content-type': 'application/x-amz-json-1.1; charset=utf-8',
    });

    expect(json.status).toBe(400);
    expect(json.headers.get('x-amzn-errortype')).toBe('UnknownOperationException');
    expect(((await json.json()) as { message: string }).message).toContain('application/x-amz-json-1.1');
    expect(charset.status).toBe(200);
    expect(emulator.records).toHaveLength(1);
  });

  it('admits the largest request the API model allows', async () => {
    // 2,500 allocations of 5 tags with 100-character keys and 256-character values. With characters JSON
    // escapes ('"' is in the model's pattern, not in the documented set) the body is the largest it can be.
    const emulator = await startEmulator();
    const allocations = (
      fill: string,
    ): { AllocatedUsageQuantity: number; Tags: { Key: string; Value: string }[] }[] =>
      Array.from({ length: 2500 }, (_, index) => ({
        AllocatedUsageQuantity: 1,
        Tags: Array.from({ length: 5 }, (_unused, tag) => ({
          Key: `${tag}`.padEnd(100, fill),
          Value: `${index}`.padEnd(256, fill),
        })),
      }));
    const escaped = JSON.stringify({
      ProductCode: PRODUCT_CODE,
      Timestamp: NOW_MS / 1000,
      UsageDimension: 'n',
      UsageQuantity: 2500,
      UsageAllocations: allocations('"'),
    });

    const largest = await rawMeterUsage(emulator, escaped);
    const output = await sdkClient(emulator).send(
      meterUsage({ UsageQuantity: 2500, UsageAllocations: allocations('k') }),
    );

    expect(Buffer.byteLength(escaped)).toBeGreaterThan(9_000_000);
    expect(largest.status).toBe(400);
    expect(largest.headers.get('x-amzn-errortype')).toBe('InvalidTagException');
    expect(output.MeteringRecordId).toMatch(UUID);
    expect(emulator.records[0]?.allocations).toHaveLength(2500);
  });
});

describe('MeteringEmulator SaaS control surface', () => {
  it('grants registration tokens, lists customers and batch records, leaves records unprocessed, and forgets them on reset', async () => {
    // Prepare
    const emulator = await startEmulator();
    const client = sdkClient(emulator);

    // Act
    const granted = await fetch(`${emulator.url}/emulator/registration-tokens`, {
      method: 'POST',
      body: JSON.stringify({ customerAWSAccountId: '111122223333', productCode: 'saas-1' }),
    });
    const grant = (await granted.json()) as {
      registrationToken: string;
      expiresAt: string;
      customer: { licenseArn: string };
    };
    const resolved = await client.send(
      new ResolveCustomerCommand({ RegistrationToken: grant.registrationToken }),
    );
    const unprocessed = await fetch(`${emulator.url}/emulator/unprocessed`, {
      method: 'POST',
      body: '{"count":1}',
    });
    const first = await client.send(
      new BatchMeterUsageCommand({
        UsageRecords: [
          {
            Timestamp: new Date(NOW_MS),
            Dimension: 'a',
            CustomerAWSAccountId: '111122223333',
            LicenseArn: resolved.LicenseArn,
          },
          {
            Timestamp: new Date(NOW_MS),
            Dimension: 'b',
            CustomerAWSAccountId: '111122223333',
            LicenseArn: resolved.LicenseArn,
          },
        ],
      }),
    );
    const customers = (await (await fetch(`${emulator.url}/emulator/customers`)).json()) as {
      customers: unknown[];
    };
    const records = (await (await fetch(`${emulator.url}/emulator/records`)).json()) as {
      batchRecords: unknown[];
    };
    await fetch(`${emulator.url}/emulator/reset`, { method: 'POST' });

    // Assess
    expect(granted.status).toBe(200);
    expect(grant.expiresAt).toBe(new Date(NOW_MS + 3_600_000).toISOString());
    expect(resolved).toMatchObject({
      ProductCode: 'saas-1',
      CustomerAWSAccountId: '111122223333',
      LicenseArn: grant.customer.licenseArn,
    });
    expect(unprocessed.status).toBe(200);
    expect(first.UnprocessedRecords?.map((record) => record.Dimension)).toEqual(['a']);
    expect(customers.customers).toEqual([
      {
        productCode: 'saas-1',
        customerAWSAccountId: '111122223333',
        licenseArn: grant.customer.licenseArn,
        subscribed: true,
      },
    ]);
    expect(records.batchRecords).toMatchObject([{ dimension: 'b', productCode: 'saas-1' }]);
    expect(emulator.customers).toEqual([]);
    expect(emulator.batchRecords).toEqual([]);
  });

  it.each([
    ['/emulator/registration-tokens', 'not json', 400, 'must be an object'],
    ['/emulator/registration-tokens', '{"customerAWSAccountId":12}', 400, 'customerAWSAccountId'],
    ['/emulator/registration-tokens', '{"accountId":"1"}', 400, 'unknown member'],
    ['/emulator/unprocessed', '{"count":0}', 400, 'count'],
    ['/emulator/unprocessed', '{}', 400, 'count'],
  ])('refuses POST %s with %s', async (path, body, status, expected) => {
    const emulator = await startEmulator();

    const response = await fetch(`${emulator.url}${path}`, { method: 'POST', body });

    expect(response.status).toBe(status);
    expect(((await response.json()) as { error: string }).error).toContain(expected);
    expect(emulator.customers).toEqual([]);
  });

  it('answers 409 to a token for a license granted with other details', async () => {
    const emulator = await startEmulator();
    const { customer } = emulator.createRegistrationToken({ customerAWSAccountId: '111122223333' });

    const response = await fetch(`${emulator.url}/emulator/registration-tokens`, {
      method: 'POST',
      body: JSON.stringify({ licenseArn: customer.licenseArn, subscribed: false }),
    });

    expect(response.status).toBe(409);
    expect(emulator.customers).toEqual([customer]);
  });
});
