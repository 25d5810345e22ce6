import { describe, expect, it } from 'vitest';
import { MAX_BATCH_RECORDS, UsageParser, parseUsage, type Rejection } from '../../src/intake/usage.js';
import type { UsageReport } from '../../src/ledger/ledger.js';
import type { UsageColumns } from '../../src/ledger/usageBatch.js';

function rejected(body: string, dimensions?: readonly string[]): Rejection {
  const result = parseUsage(body, dimensions);
  if (!('kind' in result)) throw new Error(`expected a rejection, got ${JSON.stringify(result)}`);
  return result;
}

/** The accepted reports, in request order: a batch's rows (summed per tag set, or keyed) by first index. */
function accepted(body: string, dimensions?: readonly string[]): UsageReport[] {
  const result = parseUsage(body, dimensions);
  if ('kind' in result) throw new Error(`expected reports, got ${JSON.stringify(result)}`);
  const rows = (c: UsageColumns, id?: readonly string[]) =>
    c.dimension.map((dimension, i) => ({
      at: c.index[i],
      report: { dimension, quantity: c.quantity[i], tagsKey: c.tagsKey[i], id: id?.[i] },
    }));
  return [...rows(result.sums), ...rows(result.keyed, result.keyed.id)]
    .sort((a, b) => a.at - b.at)
    .map((r) => r.report);
}

describe('parseUsage', () => {
  it('parses one record', () => {
    expect(accepted('{"dimension":"requests","quantity":3,"tags":{"tenant":"acme"},"id":"k1"}')).toEqual([
      { dimension: 'requests', quantity: 3, tagsKey: '{"tenant":"acme"}', id: 'k1' },
    ]);
  });

  it('parses a batch', () => {
    const reports = accepted('{"records":[{"dimension":"a","quantity":1},{"dimension":"b","quantity":0}]}');
    expect(reports.map((r) => [r.dimension, r.quantity, r.tagsKey, r.id])).toEqual([
      ['a', 1, '{}', undefined],
      ['b', 0, '{}', undefined],
    ]);
  });

  it('accepts the largest quantity AWS takes', () => {
    expect(accepted('{"dimension":"a","quantity":2147483647}')[0].quantity).toBe(2147483647);
  });

  it.each([
    ['not json', 'InvalidJson'],
    ['', 'InvalidJson'],
    ['{"dimension":"a","quantity":1', 'InvalidJson'],
    ['[]', 'InvalidRequest'],
    ['null', 'InvalidRequest'],
    ['"text"', 'InvalidRequest'],
    ['{"records":{}}', 'InvalidRequest'],
    ['{"records":[]}', 'InvalidRequest'],
    ['{"records":[1]}', 'InvalidRequest'],
    ['{"records":[],"extra":1}', 'InvalidRequest'],
    ['{"dimension":"a","quantity":1,"quanity":2}', 'InvalidRequest'],
    ['{"dimension":"a","quantity":1,"id":""}', 'InvalidRequest'],
    ['{"dimension":"a","quantity":1,"id":5}', 'InvalidRequest'],
    [`{"dimension":"a","quantity":1,"id":"${'k'.repeat(257)}"}`, 'InvalidRequest'],
    ['{"quantity":1}', 'UnknownDimension'],
    ['{"dimension":"","quantity":1}', 'UnknownDimension'],
    ['{"dimension":7,"quantity":1}', 'UnknownDimension'],
    ['{"dimension":"a\\u0000b","quantity":1}', 'UnknownDimension'],
    [`{"dimension":"${'d'.repeat(256)}","quantity":1}`, 'UnknownDimension'],
    ['{"dimension":"a\\ud800","quantity":1}', 'UnknownDimension'],
    ['{"dimension":"a","quantity":1,"id":"k\\udc00"}', 'InvalidRequest'],
    ['{"dimension":"a"}', 'InvalidQuantity'],
    ['{"dimension":"a","quantity":-1}', 'InvalidQuantity'],
    ['{"dimension":"a","quantity":1.5}', 'InvalidQuantity'],
    ['{"dimension":"a","quantity":"3"}', 'InvalidQuantity'],
    ['{"dimension":"a","quantity":2147483648}', 'InvalidQuantity'],
    ['{"dimension":"a","quantity":1e400}', 'InvalidQuantity'],
    ['{"dimension":"a","quantity":null}', 'InvalidQuantity'],
    ['{"dimension":"a","quantity":1,"tags":[]}', 'InvalidTags'],
    ['{"dimension":"a","quantity":1,"tags":"x"}', 'InvalidTags'],
    ['{"dimension":"a","quantity":1,"tags":{"k":1}}', 'InvalidTags'],
    ['{"dimension":"a","quantity":1,"tags":{"k":""}}', 'InvalidTags'],
    ['{"dimension":"a","quantity":1,"tags":{"":"v"}}', 'InvalidTags'],
    ['{"dimension":"a","quantity":1,"tags":{"k":"a,b"}}', 'InvalidTags'],
    ['{"dimension":"a","quantity":1,"tags":{"k":"ünïcode"}}', 'InvalidTags'],
    ['{"dimension":"a","quantity":1,"tags":{"k\\n":"v"}}', 'InvalidTags'],
    [
      '{"dimension":"a","quantity":1,"tags":{"a":"1","b":"1","c":"1","d":"1","e":"1","f":"1"}}',
      'InvalidTags',
    ],
    [`{"dimension":"a","quantity":1,"tags":{"${'k'.repeat(101)}":"v"}}`, 'InvalidTags'],
    [`{"dimension":"a","quantity":1,"tags":{"k":"${'v'.repeat(257)}"}}`, 'InvalidTags'],
  ])('rejects %s with %s', (body, code) => {
    expect(rejected(body).code).toBe(code);
  });

  it('takes any exact integer for a dimension with a unit divisor, and only for it', () => {
    const divisors = { bytes_gb: 1_000_000_000 };
    const big = `{"dimension":"bytes_gb","quantity":${Number.MAX_SAFE_INTEGER}}`;
    const batch = parseUsage(big, ['bytes_gb', 'a'], divisors);
    expect('kind' in batch).toBe(false);
    expect(parseUsage(`{"dimension":"bytes_gb","quantity":${2 ** 53}}`, undefined, divisors)).toMatchObject({
      kind: 'rejection',
      code: 'InvalidQuantity',
      message: `"quantity" must be an integer from 0 to ${Number.MAX_SAFE_INTEGER}`,
    });
    expect(parseUsage('{"dimension":"a","quantity":2147483648}', undefined, divisors)).toMatchObject({
      code: 'InvalidQuantity',
    });
    // A small divisor: one report holds at most what one record bills, 2,147,483,647 units of it.
    const small = { tenths: 10 };
    expect('kind' in parseUsage('{"dimension":"tenths","quantity":21474836470}', undefined, small)).toBe(
      false,
    );
    expect(parseUsage('{"dimension":"tenths","quantity":21474836471}', undefined, small)).toMatchObject({
      code: 'InvalidQuantity',
      message: '"quantity" must be an integer from 0 to 21474836470',
    });
  });

  it('accepts every documented tag character and the longest key and value', () => {
    const tags = { 'aZ09+ -=._:/@': 'aZ09+ -=._:/@', ['k'.repeat(100)]: 'v'.repeat(256) };
    expect(accepted(JSON.stringify({ dimension: 'a', quantity: 1, tags }))).toHaveLength(1);
  });

  it('rejects a dimension outside the allow-list', () => {
    const problem = rejected('{"dimension":"other","quantity":1}', ['requests', 'gb']);
    expect(problem.code).toBe('UnknownDimension');
    expect(problem.message).toContain('requests, gb');
  });

  it('names the index of the first bad record in a batch', () => {
    const problem = rejected('{"records":[{"dimension":"a","quantity":1},{"dimension":"a","quantity":-2}]}');
    expect(problem).toMatchObject({ code: 'InvalidQuantity', index: 1 });
  });

  it(`takes at most ${MAX_BATCH_RECORDS} records`, () => {
    const records = Array.from({ length: MAX_BATCH_RECORDS + 1 }, () => ({ dimension: 'a', quantity: 1 }));
    expect(rejected(JSON.stringify({ records })).code).toBe('TooLarge');
    const batch = parseUsage(JSON.stringify({ records: records.slice(1) }), undefined);
    if ('kind' in batch) throw new Error(batch.message);
    expect(batch.size).toBe(MAX_BATCH_RECORDS);
    // Reports of one dimension and tag set arrive summed: one row holding all of them.
    expect(batch.sums).toEqual({
      dimension: ['a'],
      tagsKey: ['{}'],
      quantity: [MAX_BATCH_RECORDS],
      index: [0],
    });
  });

  it('sums reports without a key per dimension and tag set, and lists keyed ones one by one', () => {
    const body = JSON.stringify({
      records: [
        { dimension: 'a', quantity: 1, tags: { t: 'x' } },
        { dimension: 'b', quantity: 2 },
        { dimension: 'a', quantity: 3, tags: { t: 'x' }, id: 'k1' },
        { dimension: 'a', quantity: 4, tags: { t: 'x' } },
        { dimension: 'a', quantity: 5, tags: { t: 'y' } },
        { dimension: 'a', quantity: 6, tags: { t: 'x' }, id: 'k1' },
      ],
    });
    const batch = parseUsage(body, undefined);
    if ('kind' in batch) throw new Error(batch.message);
    expect(batch.size).toBe(6);
    expect(batch.sums).toEqual({
      dimension: ['a', 'b', 'a'],
      tagsKey: ['{"t":"x"}', '{}', '{"t":"y"}'],
      quantity: [5, 2, 5],
      index: [0, 1, 4],
    });
    expect(batch.keyed).toEqual({
      dimension: ['a', 'a'],
      tagsKey: ['{"t":"x"}', '{"t":"x"}'],
      quantity: [3, 6],
      index: [2, 5],
      id: ['k1', 'k1'],
    });
  });

  it('remembers valid tag sets and dimensions without accepting what it would refuse', () => {
    const parser = new UsageParser(['a']);
    const ok = '{"dimension":"a","quantity":1,"tags":{"t":"x","u":"y"}}';
    for (let i = 0; i < 3; i++) expect('kind' in parser.parse(ok)).toBe(false);
    // The same keys in another order are the same tag set; a prefix, a longer set or another value is new.
    const reordered = parser.parse('{"dimension":"a","quantity":1,"tags":{"u":"y","t":"x"}}');
    expect('kind' in reordered ? reordered : reordered.sums.tagsKey).toEqual(['{"t":"x","u":"y"}']);
    expect(
      parser.parse('{"dimension":"a","quantity":1,"tags":{"t":"x","u":"y","v":"bad\\u0000"}}'),
    ).toMatchObject({
      code: 'InvalidTags',
    });
    expect(parser.parse('{"dimension":"a","quantity":1,"tags":{"t":"x","u":7}}')).toMatchObject({
      code: 'InvalidTags',
    });
    // A repeated member is refused even inside a tag set the parser knows.
    expect(parser.parse('{"dimension":"a","quantity":1,"tags":{"t":"x","u":"y","u":"y"}}')).toMatchObject({
      code: 'InvalidJson',
    });
    expect(parser.parse('{"dimension":"b","quantity":1}')).toMatchObject({ code: 'UnknownDimension' });
    // Past its bound the cache starts afresh; every tag set is still validated and canonical.
    for (let i = 0; i < 5000; i++) {
      const batch = parser.parse(`{"dimension":"a","quantity":1,"tags":{"n":"v${i}"}}`);
      if ('kind' in batch) throw new Error(batch.message);
      expect(batch.sums.tagsKey[0]).toBe(`{"n":"v${i}"}`);
    }
    expect(parser.parse('{"dimension":"a","quantity":1,"tags":{"n":"v1","n":"v2"}}')).toMatchObject({
      code: 'InvalidJson',
    });
  });
});
