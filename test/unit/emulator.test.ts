import { describe, expect, it } from 'vitest';

import {
  authenticate,
  errorBody,
  httpStatusFor,
  parseAuthorization,
  parseTarget,
  readMember,
  validationError,
} from '../../src/emulator/awsJson.js';
import {
  HOUR_MS,
  MAX_ALLOCATIONS,
  MAX_CLIENT_TOKEN_LENGTH,
  MAX_DIMENSION_LENGTH,
  MAX_FUTURE_SKEW_MS,
  MAX_QUANTITY,
  MAX_RECORD_AGE_MS,
  MAX_TAG_KEY_LENGTH,
  MAX_TAG_VALUE_LENGTH,
  validateMeterUsage,
} from '../../src/emulator/meterUsageRules.js';
import {
  decideMeterUsage,
  hourStartMs,
  requestFingerprint,
} from '../../src/emulator/meterUsageIdempotency.js';
import type { MeterUsageLimits, MeterUsageRequest } from '../../src/emulator/meterUsageRules.js';
import { LOGGED_ALLOCATIONS, loggedInput } from '../../src/emulator/emulator.js';

const NOW_MS = Date.UTC(2026, 10, 26, 10, 30);
const LIMITS: MeterUsageLimits = { productCode: 'prod-1', dimensions: undefined, nowMs: NOW_MS };
const AUTHORIZATION =
  'AWS4-HMAC-SHA256 Credential=TASKA/20261126/us-east-1/aws-marketplace/aws4_request, SignedHeaders=host;x-amz-date, Signature=0f';

/** A valid MeterUsage body (as the SDK sends it) with `overrides` merged in. */
function body(overrides: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    ProductCode: 'prod-1',
    Timestamp: NOW_MS / 1000,
    UsageDimension: 'nodes',
    UsageQuantity: 3,
    ...overrides,
  };
}

/** The error name `validateMeterUsage` answers for `input`, or `'valid'`. */
function outcome(input: Record<string, unknown>, limits: MeterUsageLimits = LIMITS): string {
  const result = validateMeterUsage(input, limits);
  return result.kind === 'valid' ? 'valid' : result.error.name;
}

function tags(...pairs: [string, string][]): { Key: string; Value: string }[] {
  return pairs.map(([Key, Value]) => ({ Key, Value }));
}

function validRequest(input: Record<string, unknown>): MeterUsageRequest {
  const result = validateMeterUsage(input, LIMITS);
  if (result.kind !== 'valid') throw new Error(`expected a valid request, got ${result.error.name}`);
  return result.request;
}

describe('parseTarget', () => {
  it('reads the operation after the AWSMPMeteringService prefix', () => {
    expect(parseTarget('AWSMPMeteringService.MeterUsage')).toEqual({
      kind: 'operation',
      operation: 'MeterUsage',
    });
  });

  it.each([
    undefined,
    '',
    'MeterUsage',
    'OtherService.MeterUsage',
    'AWSMPMeteringService.',
    'AWSMPMeteringService.a b',
  ])('answers UnknownOperationException for %j', (header) => {
    const result = parseTarget(header);
    expect(result.kind === 'error' && result.error.name).toBe('UnknownOperationException');
  });
});

describe('authenticate', () => {
  it('takes the identity from the access key id of the credential scope, and its signing Region', () => {
    expect(authenticate(AUTHORIZATION)).toEqual({ kind: 'identity', identity: 'TASKA', region: 'us-east-1' });
  });

  it('answers MissingAuthenticationTokenException when there is no authorization header', () => {
    expect(authenticate(undefined)).toMatchObject({
      kind: 'error',
      error: { name: 'MissingAuthenticationTokenException' },
    });
    expect(authenticate('  ')).toMatchObject({ error: { name: 'MissingAuthenticationTokenException' } });
  });

  it('answers InvalidSignatureException for a scope of another service, keeping the identity for the log', () => {
    expect(authenticate(AUTHORIZATION.replace('/aws-marketplace/', '/execute-api/'))).toMatchObject({
      kind: 'error',
      identity: 'TASKA',
      error: { name: 'InvalidSignatureException' },
    });
  });

  it.each([
    'Bearer abc',
    'AWS4-HMAC-SHA256 Credential=TASKA/us-east-1/aws-marketplace/aws4_request, Signature=0',
  ])('answers IncompleteSignatureException for the malformed header %j', (header) => {
    expect(authenticate(header)).toMatchObject({
      kind: 'error',
      error: { name: 'IncompleteSignatureException' },
    });
  });

  it('parses every part of the credential scope', () => {
    expect(parseAuthorization(AUTHORIZATION)).toEqual({
      kind: 'credential',
      credential: { accessKeyId: 'TASKA', date: '20261126', region: 'us-east-1', service: 'aws-marketplace' },
    });
  });
});

describe('httpStatusFor and errorBody', () => {
  it.each([
    ['InternalServiceErrorException', 500],
    ['ThrottlingException', 400],
    ['DuplicateRequestException', 400],
    ['DryRunOperation', 400],
    ['MissingAuthenticationTokenException', 403],
    ['InvalidSignatureException', 403],
    ['RequestEntityTooLargeException', 413],
  ])('answers %s with HTTP %i', (name, status) => {
    expect(httpStatusFor(name)).toBe(status);
  });

  it('serializes {"__type","message"} as the SDK parses it', () => {
    expect(JSON.parse(errorBody({ name: 'ThrottlingException', message: 'slow down' }))).toEqual({
      __type: 'ThrottlingException',
      message: 'slow down',
    });
  });
});

describe('validationError and readMember', () => {
  it('words a ValidationException as AWS does, showing an absent value as null', () => {
    expect(validationError('usageQuantity', -1, 'Member must be at least 0')).toEqual({
      name: 'ValidationException',
      message:
        "1 validation error detected: Value -1 at 'usageQuantity' failed to satisfy constraint: Member must be at least 0",
    });
    expect(validationError('productCode', undefined, 'Member must not be null').message).toContain(
      "Value null at 'productCode'",
    );
  });

  it('reads JSON null like an absent member and keeps every other value', () => {
    const input = { A: null, B: 0, C: '' };

    expect([readMember(input, 'A'), readMember(input, 'B'), readMember(input, 'C')]).toEqual([
      undefined,
      0,
      '',
    ]);
    expect(readMember(input, 'D')).toBeUndefined();
  });
});

describe('validateMeterUsage', () => {
  it('accepts a minimal request and applies the documented defaults', () => {
    const request = validRequest({
      ProductCode: 'prod-1',
      Timestamp: NOW_MS / 1000,
      UsageDimension: 'nodes',
    });

    expect(request).toEqual({
      productCode: 'prod-1',
      timestampMs: NOW_MS,
      dimension: 'nodes',
      quantity: 0,
      dryRun: false,
      allocations: undefined,
      clientToken: undefined,
    });
  });

  it('converts fractional epoch seconds to milliseconds', () => {
    expect(validRequest(body({ Timestamp: 1795689000.123 })).timestampMs).toBe(1795689000123);
  });

  it('treats JSON null like an absent member', () => {
    expect(validRequest(body({ UsageQuantity: null, DryRun: null, ClientToken: null })).quantity).toBe(0);
  });

  it.each([
    ['a missing ProductCode', { ProductCode: undefined }],
    ['a Timestamp given as text', { Timestamp: '2026-11-26T10:30:00Z' }],
    ['a missing UsageDimension', { UsageDimension: undefined }],
    ['an empty UsageDimension', { UsageDimension: '' }],
    ['a UsageDimension over 255 characters', { UsageDimension: 'd'.repeat(MAX_DIMENSION_LENGTH + 1) }],
    ['a negative UsageQuantity', { UsageQuantity: -1 }],
    ['a fractional UsageQuantity', { UsageQuantity: 1.5 }],
    ['a UsageQuantity over 2^31-1', { UsageQuantity: MAX_QUANTITY + 1 }],
    ['a UsageQuantity given as text', { UsageQuantity: '3' }],
    ['a DryRun that is not a boolean', { DryRun: 'yes' }],
    ['an empty ClientToken', { ClientToken: '' }],
    ['a ClientToken over 64 characters', { ClientToken: 't'.repeat(MAX_CLIENT_TOKEN_LENGTH + 1) }],
    ['UsageAllocations that are not a list', { UsageAllocations: {} }],
    ['an allocation without AllocatedUsageQuantity', { UsageAllocations: [{ Tags: tags(['k', 'v']) }] }],
    ['an allocation that is not an object', { UsageAllocations: [3] }],
    ['a tag without a Value', { UsageAllocations: [{ AllocatedUsageQuantity: 3, Tags: [{ Key: 'k' }] }] }],
  ])('answers ValidationException for %s', (_case, overrides) => {
    expect(outcome(body(overrides))).toBe('ValidationException');
  });

  it('accepts the limits themselves', () => {
    expect(
      outcome(body({ UsageDimension: 'd'.repeat(MAX_DIMENSION_LENGTH), UsageQuantity: MAX_QUANTITY })),
    ).toBe('valid');
    expect(outcome(body({ ClientToken: 't'.repeat(MAX_CLIENT_TOKEN_LENGTH) }))).toBe('valid');
  });

  it('answers InvalidProductCodeException for any other product code', () => {
    expect(outcome(body({ ProductCode: 'prod-2' }))).toBe('InvalidProductCodeException');
  });

  it('answers InvalidUsageDimensionException only when an allow-list is configured and misses the dimension', () => {
    const limits = { ...LIMITS, dimensions: ['nodes', 'gpus'] };

    expect(outcome(body({ UsageDimension: 'gpus' }), limits)).toBe('valid');
    expect(outcome(body({ UsageDimension: 'cpus' }), limits)).toBe('InvalidUsageDimensionException');
    expect(outcome(body({ UsageDimension: 'cpus' }))).toBe('valid');
  });

  it('checks model constraints before the product code and the product code before the dimension', () => {
    const limits = { ...LIMITS, dimensions: ['nodes'] };

    expect(outcome(body({ ProductCode: 'prod-2', UsageQuantity: -1 }), limits)).toBe('ValidationException');
    expect(outcome(body({ ProductCode: 'prod-2', UsageDimension: 'cpus' }), limits)).toBe(
      'InvalidProductCodeException',
    );
  });

  it.each([
    ['exactly 6 hours old', -MAX_RECORD_AGE_MS, 'valid'],
    ['6 hours and 1 ms old', -MAX_RECORD_AGE_MS - 1, 'TimestampOutOfBoundsException'],
    ['7 hours old', -7 * HOUR_MS, 'TimestampOutOfBoundsException'],
    ['5 minutes ahead', MAX_FUTURE_SKEW_MS, 'valid'],
    ['5 minutes and 1 ms ahead', MAX_FUTURE_SKEW_MS + 1, 'TimestampOutOfBoundsException'],
  ])('treats a timestamp %s as %s', (_case, offsetMs, expected) => {
    expect(outcome(body({ Timestamp: (NOW_MS + offsetMs) / 1000 }))).toBe(expected);
  });

  describe('allocations', () => {
    it('accepts allocations summing to UsageQuantity with one untagged bucket', () => {
      const request = validRequest(
        body({
          UsageQuantity: 6,
          UsageAllocations: [
            { AllocatedUsageQuantity: 1, Tags: tags(['team', 'blue'], ['env', 'prod']) },
            { AllocatedUsageQuantity: 2, Tags: tags(['team', 'red']) },
            { AllocatedUsageQuantity: 3 },
          ],
        }),
      );

      expect(request.allocations).toEqual([
        {
          quantity: 1,
          tags: [
            { key: 'team', value: 'blue' },
            { key: 'env', value: 'prod' },
          ],
        },
        { quantity: 2, tags: [{ key: 'team', value: 'red' }] },
        { quantity: 3, tags: [] },
      ]);
    });

    it('answers InvalidUsageAllocationsException for an empty list and for more than 2500 entries', () => {
      const many = (count: number): Record<string, unknown> =>
        body({
          UsageQuantity: count,
          UsageAllocations: Array.from({ length: count }, (_, i) => ({
            AllocatedUsageQuantity: 1,
            Tags: tags(['n', String(i)]),
          })),
        });

      expect(outcome(body({ UsageAllocations: [] }))).toBe('InvalidUsageAllocationsException');
      expect(outcome(many(MAX_ALLOCATIONS))).toBe('valid');
      expect(outcome(many(MAX_ALLOCATIONS + 1))).toBe('InvalidUsageAllocationsException');
    });

    it('answers InvalidUsageAllocationsException when the allocated quantities do not sum to UsageQuantity', () => {
      const result = validateMeterUsage(
        body({ UsageQuantity: 5, UsageAllocations: [{ AllocatedUsageQuantity: 4 }] }),
        LIMITS,
      );

      expect(result).toMatchObject({ kind: 'invalid', error: { name: 'InvalidUsageAllocationsException' } });
    });

    it('answers InvalidUsageAllocationsException for two untagged allocations', () => {
      const allocations = [{ AllocatedUsageQuantity: 1 }, { AllocatedUsageQuantity: 2 }];

      expect(outcome(body({ UsageAllocations: allocations }))).toBe('InvalidUsageAllocationsException');
    });

    it('answers InvalidUsageAllocationsException for the same tag set in a different order', () => {
      const allocations = [
        { AllocatedUsageQuantity: 1, Tags: tags(['a', '1'], ['b', '2']) },
        { AllocatedUsageQuantity: 2, Tags: tags(['b', '2'], ['a', '1']) },
      ];

      expect(outcome(body({ UsageAllocations: allocations }))).toBe('InvalidUsageAllocationsException');
    });

    it.each([
      ['an empty tag list', []],
      ['six tags', tags(['a', '1'], ['b', '1'], ['c', '1'], ['d', '1'], ['e', '1'], ['f', '1'])],
      ['an empty key', tags(['', 'v'])],
      ['an empty value', tags(['k', ''])],
      ['a key over 100 characters', tags(['k'.repeat(MAX_TAG_KEY_LENGTH + 1), 'v'])],
      ['a value over 256 characters', tags(['k', 'v'.repeat(MAX_TAG_VALUE_LENGTH + 1)])],
      ['a # in a value', tags(['k', 'a#b'])],
      ['a ! in a key (allowed by the model regex, not by the documented set)', tags(['k!', 'v'])],
      ['a non-ASCII letter', tags(['k', 'blå'])],
      ['a repeated key', tags(['k', '1'], ['k', '2'])],
    ])('answers InvalidTagException for %s', (_case, tagList) => {
      expect(outcome(body({ UsageAllocations: [{ AllocatedUsageQuantity: 3, Tags: tagList }] }))).toBe(
        'InvalidTagException',
      );
    });

    it('accepts every documented tag character and the maximum lengths', () => {
      const tagList = tags(
        ['azAZ09+ -=._:/@', 'azAZ09+ -=._:/@'],
        ['k'.repeat(MAX_TAG_KEY_LENGTH), 'v'.repeat(MAX_TAG_VALUE_LENGTH)],
      );

      expect(outcome(body({ UsageAllocations: [{ AllocatedUsageQuantity: 3, Tags: tagList }] }))).toBe(
        'valid',
      );
    });

    it('allows 5 distinct tag keys across allocations and refuses a 6th', () => {
      const allocation = (key: string): Record<string, unknown> => ({
        AllocatedUsageQuantity: 1,
        Tags: tags([key, 'v']),
      });

      expect(
        outcome(body({ UsageQuantity: 5, UsageAllocations: ['a', 'b', 'c', 'd', 'e'].map(allocation) })),
      ).toBe('valid');
      expect(
        outcome(body({ UsageQuantity: 6, UsageAllocations: ['a', 'b', 'c', 'd', 'e', 'f'].map(allocation) })),
      ).toBe('InvalidTagException');
    });
  });
});

describe('hourStartMs', () => {
  it('rounds down to the UTC hour', () => {
    const hour = Date.UTC(2026, 10, 26, 10);

    expect(hourStartMs(hour)).toBe(hour);
    expect(hourStartMs(hour + HOUR_MS - 1)).toBe(hour);
    expect(hourStartMs(hour + HOUR_MS)).toBe(hour + HOUR_MS);
  });
});

describe('requestFingerprint', () => {
  const allocated = (tagList: { Key: string; Value: string }[], quantity = 3): Record<string, unknown> =>
    body({
      UsageAllocations: [{ AllocatedUsageQuantity: quantity, Tags: tagList }],
      UsageQuantity: quantity,
    });

  it('ignores DryRun, the ClientToken itself and the order of tags', () => {
    const a = validRequest({ ...allocated(tags(['a', '1'], ['b', '2'])), ClientToken: 'x', DryRun: true });
    const b = validRequest({ ...allocated(tags(['b', '2'], ['a', '1'])), ClientToken: 'y' });

    expect(requestFingerprint(a)).toBe(requestFingerprint(b));
  });

  it('changes with the exact timestamp, the quantity and the tags', () => {
    const base = requestFingerprint(validRequest(allocated(tags(['a', '1']))));

    expect(
      requestFingerprint(validRequest({ ...allocated(tags(['a', '1'])), Timestamp: NOW_MS / 1000 - 1 })),
    ).not.toBe(base);
    expect(requestFingerprint(validRequest(allocated(tags(['a', '1']), 4)))).not.toBe(base);
    expect(requestFingerprint(validRequest(allocated(tags(['a', '2']))))).not.toBe(base);
  });
});

describe('decideMeterUsage', () => {
  const request = validRequest(body({ ClientToken: 'token-1' }));
  const sameToken = { fingerprint: requestFingerprint(request), meteringRecordId: 'rec-token' };

  it('records a request with no prior token or hour', () => {
    expect(decideMeterUsage(request, undefined, undefined)).toEqual({ kind: 'record' });
  });

  it('replays the record of a token reused with identical parameters', () => {
    expect(decideMeterUsage(request, sameToken, undefined)).toEqual({
      kind: 'replay',
      meteringRecordId: 'rec-token',
    });
  });

  it('answers IdempotencyConflictException for a token reused with other parameters, before the hour rule', () => {
    const decision = decideMeterUsage(
      request,
      { fingerprint: 'other', meteringRecordId: 'rec-token' },
      { quantity: request.quantity, meteringRecordId: 'rec-hour' },
    );

    expect(decision).toMatchObject({ kind: 'reject', error: { name: 'IdempotencyConflictException' } });
  });

  it('replays the hour record for the same quantity, whatever the allocations', () => {
    const withAllocations = validRequest(body({ UsageAllocations: [{ AllocatedUsageQuantity: 3 }] }));

    expect(
      decideMeterUsage(withAllocations, undefined, { quantity: 3, meteringRecordId: 'rec-hour' }),
    ).toEqual({
      kind: 'replay',
      meteringRecordId: 'rec-hour',
    });
  });

  it('answers DuplicateRequestException for another quantity in a recorded hour', () => {
    expect(decideMeterUsage(request, undefined, { quantity: 2, meteringRecordId: 'rec-hour' })).toMatchObject(
      {
        kind: 'reject',
        error: { name: 'DuplicateRequestException' },
      },
    );
  });
});

describe('loggedInput', () => {
  const allocation = (i: number) => ({
    AllocatedUsageQuantity: 1,
    Tags: [{ Key: 'tenant', Value: `t${i}` }],
  });

  it('keeps a small input whole, and inputs without allocations as they are', () => {
    const small = { UsageDimension: 'requests', UsageAllocations: [allocation(0)] };
    expect(loggedInput(small)).toBe(small);
    expect(loggedInput({ Nonce: 'n' })).toEqual({ Nonce: 'n' });
    expect(loggedInput(undefined)).toBeUndefined();
    expect(loggedInput('text')).toBe('text');
  });

  it('shows the first allocations of a large input and counts them all, leaving the input unchanged', () => {
    const allocations = Array.from({ length: 2500 }, (_, i) => allocation(i));
    const input = { UsageDimension: 'requests', UsageQuantity: 2500, UsageAllocations: allocations };
    expect(loggedInput(input)).toEqual({
      UsageDimension: 'requests',
      UsageQuantity: 2500,
      UsageAllocations: allocations.slice(0, LOGGED_ALLOCATIONS),
      UsageAllocationsCount: 2500,
    });
    expect(input.UsageAllocations).toHaveLength(2500);
  });
});
