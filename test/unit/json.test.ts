import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { parseJson } from '../../src/json.js';
import { testSeed } from '../helpers/seed.js';

describe('parseJson', () => {
  // Regression: {"quantity":1,"quantity":2} was acknowledged; which quantity was billed was up to the parser.
  it.each([
    ['{"quantity":1,"quantity":2}', 'quantity'],
    ['{"dimension":"a","tags":{"t":"x","t":"y"},"quantity":1}', 't'],
    ['{"records":[{"dimension":"a","quantity":1,"dimension":"b"}]}', 'dimension'],
    // The same name written two ways is the same member.
    ['{"quantity":1,"\\u0071uantity":2}', 'quantity'],
    ['{"a:b":"c:d","x":{"\\"q\\\\":1,"\\"q\\\\":2}}', '"q\\'],
  ])('refuses %s, naming %s', (text, name) => {
    const result = parseJson(text);
    expect(result).toMatchObject({ ok: false });
    expect(!result.ok && result.message).toContain(`member ${JSON.stringify(name)}`);
  });

  it.each([
    '{"a":1,"b":{"a":2}}',
    '[{"a":1},{"a":2}]',
    '{"k":"va:lue with \\" quote and : colon","k2":"\\\\"}',
    '{"records":[]}',
    '"just a string: with a colon"',
    '{}',
  ])('accepts %s, where no object repeats a member', (text) => {
    expect(parseJson(text)).toEqual({ ok: true, value: JSON.parse(text) as unknown });
  });

  it('passes on the parser error for text that is not JSON', () => {
    expect(parseJson('{"a":')).toMatchObject({
      ok: false,
      message: expect.stringMatching(/not valid JSON/) as unknown,
    });
  });

  it('accepts every JSON text without repeated members, and refuses it with one added (property)', () => {
    const seed = testSeed('parseJson property', 'JSON_SEED');
    fc.assert(
      fc.property(fc.jsonValue(), fc.string(), (value, name) => {
        const text = JSON.stringify(value);
        expect(parseJson(text)).toEqual({ ok: true, value: JSON.parse(text) as unknown });
        const doubled = `{${JSON.stringify(name)}:1,${JSON.stringify(name)}:${text}}`;
        expect(parseJson(doubled)).toMatchObject({ ok: false });
      }),
      { seed, numRuns: 500 },
    );
  });
});
