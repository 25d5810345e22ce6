import { describe, expect, it } from 'vitest';
import { MAX_BATCH_RECORDS, parseUsage, type Rejection } from '../../src/intake/usage.js';
import type { UsageReport } from '../../src/ledger/ledger.js';

function rejected(body: string, dimensions?: readonly string[]): Rejection {
  const result = parseUsage(body, dimensions);
  if (!('kind' in result)) throw new Error(`expected a rejection, got ${JSON.stringify(result)}`);
  return result;
}

function accepted(body: string, dimensions?: readonly string[]): UsageReport[] {
  const result = parseUsage(body, dimensions);
  if ('kind' in result) throw new Error(`expected reports, got ${JSON.stringify(result)}`);
  return result;
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
    expect(accepted(JSON.stringify({ records: records.slice(1) }))).toHaveLength(MAX_BATCH_RECORDS);
  });
});
