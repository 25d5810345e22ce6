import { describe, expect, it } from 'vitest';

import { AWS_QUOTAS, AccountQuota, TokenBucket, parseQuota, quotaProblem } from '../../src/emulator/quota.js';

describe('TokenBucket', () => {
  it('holds one second of calls, then admits at its rate', () => {
    let nowMs = 0;
    const bucket = new TokenBucket(2, () => nowMs);

    const burst = [bucket.take(), bucket.take(), bucket.take()];
    nowMs = 499;
    const early = bucket.take();
    nowMs = 500;
    const onTime = bucket.take();
    nowMs = 10_000;
    const afterIdle = [bucket.take(), bucket.take(), bucket.take()];

    expect(burst).toEqual([true, true, false]);
    expect(early).toBe(false);
    expect(onTime).toBe(true);
    expect(afterIdle).toEqual([true, true, false]); // idle time refills one second's worth, no more
  });

  it('admits one call at a time below one call a second', () => {
    let nowMs = 0;
    const bucket = new TokenBucket(0.5, () => nowMs);

    const first = [bucket.take(), bucket.take()];
    nowMs = 1_999;
    const early = bucket.take();
    nowMs = 2_000;
    const onTime = bucket.take();

    expect(first).toEqual([true, false]);
    expect(early).toBe(false);
    expect(onTime).toBe(true);
  });

  it('never refills on a clock that goes back', () => {
    let nowMs = 5_000;
    const bucket = new TokenBucket(1, () => nowMs);
    bucket.take();
    nowMs = 1_000;

    expect(bucket.take()).toBe(false);
  });
});

describe('AccountQuota', () => {
  it('limits only the operations given, one bucket for the whole account', () => {
    const quota = new AccountQuota(() => 0);
    quota.set({ MeterUsage: 1 });

    expect([quota.admit('MeterUsage'), quota.admit('MeterUsage')]).toEqual([true, false]);
    expect([quota.admit('RegisterUsage'), quota.admit('RegisterUsage')]).toEqual([true, true]);
    expect(quota.rates).toEqual({ MeterUsage: 1 });
  });

  it('starts every bucket full when the rates change, and limits nothing once cleared', () => {
    const quota = new AccountQuota(() => 0);
    quota.set({ MeterUsage: 1 });
    quota.admit('MeterUsage');

    quota.set({ MeterUsage: 1 });
    const refilled = quota.admit('MeterUsage');
    quota.set({});

    expect(refilled).toBe(true);
    expect([quota.admit('MeterUsage'), quota.admit('MeterUsage')]).toEqual([true, true]);
  });
});

describe('quotaProblem and parseQuota', () => {
  it("knows AWS's published rates", () => {
    expect(AWS_QUOTAS).toEqual({ MeterUsage: 10, RegisterUsage: 5, BatchMeterUsage: 10 });
    expect(parseQuota('aws')).toEqual({ rates: AWS_QUOTAS });
    expect(parseQuota('off')).toEqual({ rates: {} });
  });

  it('reads Operation=rate pairs', () => {
    expect(parseQuota('MeterUsage=1, RegisterUsage=0.5')).toEqual({
      rates: { MeterUsage: 1, RegisterUsage: 0.5 },
    });
  });

  it.each([
    ['MeterUsage', '--quota takes aws, off or Operation=rate pairs'],
    ['MeterUsage=', '--quota takes aws, off or Operation=rate pairs'],
    ['PutObject=1', 'Unknown operation "PutObject"'],
    ['MeterUsage=0', 'above 0'],
    ['MeterUsage=1.2.3', 'above 0'],
    ['MeterUsage=1000000', 'at most 100000'],
  ])('refuses %s with a clear message', (text, expected) => {
    const parsed = parseQuota(text);

    expect('problem' in parsed ? parsed.problem : undefined).toContain(expected);
  });

  it.each([[null], [[1]], ['aws'], [{ MeterUsage: '1' }], [{ MeterUsage: Number.NaN }]])(
    'refuses %j as a quota',
    (rates) => {
      expect(quotaProblem(rates, Object.keys(AWS_QUOTAS))).toBeDefined();
    },
  );
});
