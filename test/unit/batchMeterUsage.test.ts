import { describe, expect, it } from 'vitest';

import { regionError } from '../../src/emulator/awsJson.js';
import {
  BATCH_RECORD_MAX_AGE_MS,
  MAX_USAGE_RECORDS,
  batchWindowProblem,
  decodeBatchMeterUsage,
  recordStatus,
} from '../../src/emulator/batchMeterUsage.js';
import type { BatchUsageRecord } from '../../src/emulator/batchMeterUsage.js';
import { MAX_FUTURE_SKEW_MS } from '../../src/emulator/meterUsageRules.js';
import { SaasDirectory, registrationTokenSpecProblem } from '../../src/emulator/saas.js';
import type { SaasCustomer } from '../../src/emulator/saas.js';

const NOW_MS = Date.UTC(2026, 10, 26, 10, 30);
const HOUR_MS = 3_600_000;

describe('batchWindowProblem', () => {
  it('takes records younger than 24 hours and up to the clock skew ahead, and refuses the rest', () => {
    expect(batchWindowProblem(NOW_MS - BATCH_RECORD_MAX_AGE_MS + 1, NOW_MS)).toBeUndefined();
    expect(batchWindowProblem(NOW_MS - BATCH_RECORD_MAX_AGE_MS, NOW_MS)).toMatch(/less than 24 hours/);
    expect(batchWindowProblem(NOW_MS + MAX_FUTURE_SKEW_MS, NOW_MS)).toBeUndefined();
    expect(batchWindowProblem(NOW_MS + MAX_FUTURE_SKEW_MS + 1, NOW_MS)).toMatch(/future/);
  });

  it('ends a billing month at 06:00 UTC on the first day of the next, within or beyond 24 hours', () => {
    const lastMinuteOfMarch = Date.UTC(2027, 2, 31, 23, 59);
    const firstOfApril = Date.UTC(2027, 3, 1);

    expect(batchWindowProblem(lastMinuteOfMarch, firstOfApril + 6 * HOUR_MS - 1)).toBeUndefined();
    expect(batchWindowProblem(lastMinuteOfMarch, firstOfApril + 6 * HOUR_MS)).toMatch(/06:00 UTC/);
    // A record of April 1 itself is not held to March's grace.
    expect(batchWindowProblem(firstOfApril, firstOfApril + 7 * HOUR_MS)).toBeUndefined();
    // Across a year's end.
    expect(batchWindowProblem(Date.UTC(2026, 11, 31, 22), Date.UTC(2027, 0, 1, 5))).toBeUndefined();
    expect(batchWindowProblem(Date.UTC(2026, 11, 31, 22), Date.UTC(2027, 0, 1, 6))).toMatch(/06:00 UTC/);
  });
});

describe('decodeBatchMeterUsage', () => {
  const record = { Timestamp: NOW_MS / 1000, Dimension: 'users', CustomerAWSAccountId: '111122223333' };

  it('applies the defaults and echoes each record as a resend takes it', () => {
    const decoded = decodeBatchMeterUsage({ UsageRecords: [record] });

    expect(decoded).toMatchObject({
      ok: true,
      value: {
        productCode: '',
        records: [
          { timestampMs: NOW_MS, quantity: 0, customerIdentifier: undefined, allocations: undefined },
        ],
      },
    });
    expect(decoded.ok && decoded.value.records[0]?.echo).toEqual({ ...record, Quantity: 0 });
  });

  it.each([
    [{}, 'usageRecords'],
    [{ UsageRecords: Array.from({ length: MAX_USAGE_RECORDS + 1 }, () => record) }, 'usageRecords'],
    [{ UsageRecords: [record], ProductCode: 'a b' }, 'productCode'],
    [{ UsageRecords: [{ ...record, Timestamp: 'now' }] }, 'usageRecords.1.timestamp'],
    [{ UsageRecords: [{ ...record, Dimension: '' }] }, 'usageRecords.1.dimension'],
    [{ UsageRecords: [{ ...record, Quantity: 2 ** 31 }] }, 'usageRecords.1.quantity'],
    [
      { UsageRecords: [{ ...record, CustomerIdentifier: 'x'.repeat(256) }] },
      'usageRecords.1.customerIdentifier',
    ],
    [{ UsageRecords: [record, { ...record, UsageAllocations: 'all' }] }, 'usageRecords.2.usageAllocations'],
  ])('refuses %j naming %s', (input, path) => {
    const decoded = decodeBatchMeterUsage(input);

    expect(decoded.ok).toBe(false);
    expect(!decoded.ok && decoded.error).toMatchObject({
      name: 'ValidationException',
      message: expect.stringContaining(`'${path}'`) as unknown,
    });
  });

  it('counts an empty CustomerIdentifier, the model default, as absent', () => {
    const decoded = decodeBatchMeterUsage({ UsageRecords: [{ ...record, CustomerIdentifier: '' }] });

    expect(decoded.ok && decoded.value.records[0]?.customerIdentifier).toBeUndefined();
  });
});

describe('recordStatus', () => {
  const customer: SaasCustomer = {
    productCode: 'p',
    customerAWSAccountId: '1',
    licenseArn: 'arn:aws:license-manager::1:license:l-1',
    customerIdentifier: undefined,
    subscribed: true,
  };
  const record = { quantity: 5 } as BatchUsageRecord;

  it('answers each outcome', () => {
    expect(recordStatus(record, customer, undefined)).toEqual({ status: 'Success', replayOf: undefined });
    expect(recordStatus(record, customer, { quantity: 5, meteringRecordId: 'r1' })).toEqual({
      status: 'Success',
      replayOf: 'r1',
    });
    expect(recordStatus(record, customer, { quantity: 6, meteringRecordId: 'r1' })).toEqual({
      status: 'DuplicateRecord',
    });
    expect(recordStatus(record, { ...customer, subscribed: false }, undefined)).toEqual({
      status: 'CustomerNotSubscribed',
    });
    expect(recordStatus(record, undefined, undefined)).toEqual({ status: 'CustomerNotSubscribed' });
  });
});

describe('SaasDirectory', () => {
  it('redeems a token once, before its lifetime ends', () => {
    const directory = new SaasDirectory();
    const grant = directory.grant({ lifetimeSeconds: 10 }, 'prod-1', NOW_MS);
    const late = directory.grant({ lifetimeSeconds: 10 }, 'prod-1', NOW_MS);
    const token = { RegistrationToken: grant.registrationToken };

    expect(directory.resolve(token, NOW_MS + 9_999)).toMatchObject({
      kind: 'resolved',
      body: { ProductCode: 'prod-1', CustomerAWSAccountId: grant.customer.customerAWSAccountId },
    });
    expect(directory.resolve(token, NOW_MS)).toMatchObject({ error: { name: 'ExpiredTokenException' } });
    expect(directory.resolve({ RegistrationToken: late.registrationToken }, NOW_MS + 10_000)).toMatchObject({
      error: { name: 'ExpiredTokenException' },
    });
    expect(directory.resolve({ RegistrationToken: '' }, NOW_MS)).toMatchObject({
      error: { name: 'ValidationException' },
    });
    expect(directory.resolve({}, NOW_MS)).toMatchObject({ error: { name: 'ValidationException' } });
    expect(grant.registrationToken).not.toBe(late.registrationToken);
  });

  it('finds a customer by license, identifier and account on a product', () => {
    const directory = new SaasDirectory();
    const { customer } = directory.grant(
      { customerAWSAccountId: '42', customerIdentifier: 'c-42' },
      'p',
      NOW_MS,
    );

    expect(directory.byLicense(customer.licenseArn)).toBe(customer);
    expect(directory.byIdentifier('c-42')).toBe(customer);
    expect(directory.byAccount('42', 'p')).toBe(customer);
    expect(directory.byAccount('42', 'q')).toBeUndefined();
    expect(directory.hasProduct('p')).toBe(true);
    expect(directory.hasProduct('q')).toBe(false);
  });

  it.each([
    [[], 'must be an object'],
    [{ customerIdentifier: '' }, 'customerIdentifier'],
    [{ subscribed: 'yes' }, 'subscribed'],
    [{ licenseArn: 'arn:aws:x' }, 'licenseArn'],
    [{ lifetimeSeconds: 86_401 }, 'lifetimeSeconds'],
  ])('refuses the spec %j', (spec, expected) => {
    expect(registrationTokenSpecProblem(spec)).toContain(expected);
  });
});

describe('regionError', () => {
  it("answers each operation's own error for another Region, and nothing for the same", () => {
    expect(regionError('MeterUsage', 'us-east-1', 'us-east-1')).toBeUndefined();
    expect(regionError('MeterUsage', 'eu-west-1', 'us-east-1')?.name).toBe('InvalidEndpointRegionException');
    expect(regionError('RegisterUsage', 'eu-west-1', 'us-east-1')?.name).toBe('InvalidRegionException');
    expect(regionError('BatchMeterUsage', 'eu-west-1', 'us-east-1')?.name).toBe('InvalidSignatureException');
    expect(regionError('ResolveCustomer', 'eu-west-1', 'us-east-1')?.name).toBe('InvalidSignatureException');
  });
});
