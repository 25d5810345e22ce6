import { describe, expect, it } from 'vitest';
import { HOUR_MS, hourStart } from '../../src/clock.js';
import { MAX_QUANTITY, MAX_RECORD_AGE_MS } from '../../src/awsLimits.js';
import {
  CARRY_MARGIN_MS,
  bucketTime,
  canonicalTags,
  carryDeadline,
  clientToken,
  maySeal,
  meterUsageRequest,
  seal,
  targetHour,
  recordTimestamp,
} from '../../src/ledger/hours.js';

const H10 = Date.parse('2026-03-01T10:00:00Z');
const H11 = H10 + HOUR_MS;
const H12 = H11 + HOUR_MS;

describe('canonicalTags', () => {
  it('gives equal text for equal tag sets in any key order', () => {
    expect(canonicalTags({ b: '2', a: '1' })).toBe(canonicalTags({ a: '1', b: '2' }));
    expect(canonicalTags({ a: '1', b: '2' })).toBe('{"a":"1","b":"2"}');
  });

  it('writes no tags as {}', () => {
    expect(canonicalTags(undefined)).toBe('{}');
    expect(canonicalTags({})).toBe('{}');
  });

  it('keeps a key named __proto__ as data', () => {
    const tags = JSON.parse('{"__proto__":"x"}') as Record<string, string>;
    expect(canonicalTags(tags)).toBe('{"__proto__":"x"}');
  });
});

describe('targetHour', () => {
  it('counts an arrival in its own UTC hour', () => {
    expect(targetHour(H10 + 59 * 60_000, () => false)).toBe(H10);
    expect(targetHour(H11, () => false)).toBe(H11);
  });

  it('moves late usage for a sealed hour to the next unsealed hour', () => {
    expect(targetHour(H10 + 1000, (h) => h === H10)).toBe(H11);
    expect(targetHour(H10 + 1000, (h) => h === H10 || h === H11)).toBe(H12);
  });
});

describe('bucketTime', () => {
  it('is the arrival when it lies in the bucket hour', () => {
    expect(bucketTime(H10 + 5000, H10)).toBe(H10 + 5000);
  });

  it('is the start of the later hour when usage was moved forward', () => {
    expect(bucketTime(H10 + 5000, H11)).toBe(H11);
  });

  it('never leaves the bucket hour', () => {
    expect(bucketTime(H12 + 5000, H10)).toBe(H11 - 1);
  });
});

describe('maySeal', () => {
  it('seals an hour once it has closed, at HH:00', () => {
    expect(maySeal(H10, H11 - 1, false)).toBe(false);
    expect(maySeal(H10, H11, false)).toBe(true);
  });

  it('seals the open hour only at shutdown', () => {
    expect(maySeal(H10, H10 + 1000, false)).toBe(false);
    expect(maySeal(H10, H10 + 1000, true)).toBe(true);
  });

  it('never seals an hour that has not begun, even at shutdown', () => {
    expect(maySeal(H11, H10 + 1000, true)).toBe(false);
  });
});

describe('seal', () => {
  it('bills the total with one allocation per tag set, summing to it', () => {
    const s = seal([
      { tagsKey: '{"t":"b"}', quantity: 5, firstAtMs: H10 + 300 },
      { tagsKey: '{"t":"a"}', quantity: 7, firstAtMs: H10 + 200 },
      { tagsKey: '{}', quantity: 1, firstAtMs: H10 + 900 },
    ])!;
    expect(s.quantity).toBe(13);
    expect(s.allocations).toEqual([
      { tagsKey: '{"t":"a"}', quantity: 7 },
      { tagsKey: '{"t":"b"}', quantity: 5 },
      { tagsKey: '{}', quantity: 1 },
    ]);
    expect(s.allocations.reduce((sum, a) => sum + a.quantity, 0)).toBe(s.quantity);
    expect(s.excess).toEqual([]);
  });

  it('stamps the record with the first usage in the hour', () => {
    const s = seal([
      { tagsKey: '{"t":"a"}', quantity: 1, firstAtMs: H10 + 900 },
      { tagsKey: '{"t":"b"}', quantity: 1, firstAtMs: H10 + 100 },
    ])!;
    expect(s.timestampMs).toBe(H10 + 100);
  });

  it('ignores zero-quantity tag sets for the timestamp and the allocations', () => {
    const s = seal([
      { tagsKey: '{"t":"a"}', quantity: 0, firstAtMs: H10 + 1 },
      { tagsKey: '{"t":"b"}', quantity: 4, firstAtMs: H10 + 50 },
    ])!;
    expect(s.timestampMs).toBe(H10 + 50);
    expect(s.allocations).toEqual([{ tagsKey: '{"t":"b"}', quantity: 4 }]);
  });

  it('sends nothing for an hour whose total is zero', () => {
    expect(seal([{ tagsKey: '{}', quantity: 0, firstAtMs: H10 }])).toBeUndefined();
    expect(seal([])).toBeUndefined();
  });

  it('caps the total at 2,147,483,647 and keeps the excess per tag set', () => {
    const s = seal([
      { tagsKey: '{"t":"a"}', quantity: MAX_QUANTITY, firstAtMs: H10 },
      { tagsKey: '{"t":"b"}', quantity: 10, firstAtMs: H10 },
    ])!;
    expect(s.quantity).toBe(MAX_QUANTITY);
    expect(s.allocations).toEqual([{ tagsKey: '{"t":"a"}', quantity: MAX_QUANTITY }]);
    expect(s.excess).toEqual([{ tagsKey: '{"t":"b"}', quantity: 10 }]);
  });

  it('splits one tag set across the cap', () => {
    const s = seal([
      { tagsKey: '{}', quantity: MAX_QUANTITY - 5, firstAtMs: H10 },
      { tagsKey: '{"t":"a"}', quantity: 20, firstAtMs: H10 },
    ])!;
    // '{"t":"a"}' sorts before '{}'.
    expect(s.allocations).toEqual([
      { tagsKey: '{"t":"a"}', quantity: 20 },
      { tagsKey: '{}', quantity: MAX_QUANTITY - 20 },
    ]);
    expect(s.quantity).toBe(MAX_QUANTITY);
    expect(s.excess).toEqual([{ tagsKey: '{}', quantity: 15 }]);
  });
});

describe('clientToken', () => {
  it('is deterministic for a ledger, dimension and hour', () => {
    expect(clientToken('ledger-a', 'requests', H10)).toBe(clientToken('ledger-a', 'requests', H10));
  });

  it('differs between ledgers, dimensions and hours', () => {
    const tokens = new Set([
      clientToken('ledger-a', 'requests', H10),
      clientToken('ledger-b', 'requests', H10),
      clientToken('ledger-a', 'gb', H10),
      clientToken('ledger-a', 'requests', H11),
    ]);
    expect(tokens.size).toBe(4);
  });

  it('fits the ClientToken limit of 64 characters, shaped like a UUID', () => {
    expect(clientToken('x', 'y', 0)).toMatch(
      /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/,
    );
  });
});

describe('carryDeadline', () => {
  it('leaves the safety margin before the six-hour window closes', () => {
    expect(carryDeadline(H10)).toBe(H10 + MAX_RECORD_AGE_MS - CARRY_MARGIN_MS);
    expect(MAX_RECORD_AGE_MS).toBe(6 * HOUR_MS);
  });
});

describe('meterUsageRequest', () => {
  const base = { productCode: 'prod', dimension: 'requests', clientToken: 'tok', dryRun: false };

  it('sends a plain total when no usage is tagged', () => {
    const request = meterUsageRequest({
      ...base,
      seal: seal([{ tagsKey: '{}', quantity: 3, firstAtMs: H10 + 1 }])!,
    });
    expect(request).toEqual({
      ProductCode: 'prod',
      TimestampMs: H10 + 1,
      UsageDimension: 'requests',
      UsageQuantity: 3,
      ClientToken: 'tok',
    });
  });

  it('sends allocations with tags, the untagged one without Tags', () => {
    const request = meterUsageRequest({
      ...base,
      seal: seal([
        { tagsKey: '{"tenant":"acme","tier":"gold"}', quantity: 2, firstAtMs: H10 },
        { tagsKey: '{}', quantity: 1, firstAtMs: H10 },
      ])!,
    });
    expect(request.UsageAllocations).toEqual([
      {
        AllocatedUsageQuantity: 2,
        Tags: [
          { Key: 'tenant', Value: 'acme' },
          { Key: 'tier', Value: 'gold' },
        ],
      },
      { AllocatedUsageQuantity: 1 },
    ]);
  });

  it('marks the request DryRun when dry-run is on', () => {
    const request = meterUsageRequest({
      ...base,
      dryRun: true,
      seal: seal([{ tagsKey: '{}', quantity: 3, firstAtMs: H10 }])!,
    });
    expect(request.DryRun).toBe(true);
  });
});

describe('hourStart', () => {
  it('floors to the UTC hour', () => {
    expect(hourStart(H10 + 3_599_999)).toBe(H10);
  });
});

describe('recordTimestamp', () => {
  const H = Date.parse('2026-03-01T12:00:00Z');
  it.each([
    ['the first usage, when the clock is past it', H + 50 * 60_000, H + 2 * 3_600_000, H + 50 * 60_000],
    [
      'the clock, when the first usage is ahead of it (the clock stepped back)',
      H + 50 * 60_000,
      H + 5 * 60_000,
      H + 5 * 60_000,
    ],
    ['the start of the hour, at the earliest', H - 1, H + 5 * 60_000, H],
    ['the last instant of the hour, at the latest', H + 3_600_000, H + 2 * 3_600_000, H + 3_600_000 - 1],
  ])('is %s', (_name, firstAtMs, clockMs, expected) => {
    expect(recordTimestamp(firstAtMs, H, clockMs)).toBe(expected);
  });
});
