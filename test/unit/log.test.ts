import { PassThrough } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { createLogger } from '../../src/log.js';

function captured(format: 'json' | 'pretty'): {
  logger: ReturnType<typeof createLogger>;
  text: () => string;
} {
  const stream = new PassThrough();
  const chunks: Buffer[] = [];
  stream.on('data', (c: Buffer) => chunks.push(c));
  return { logger: createLogger('info', stream, format), text: () => Buffer.concat(chunks).toString('utf8') };
}

describe('createLogger', () => {
  it('writes JSON lines by default, with the level as its name and secrets redacted', () => {
    const { logger, text } = captured('json');
    logger.info({ token: 'eyJ-secret', dimension: 'requests' }, 'usage metered');
    const line = JSON.parse(text().trim()) as Record<string, unknown>;
    expect(line).toMatchObject({
      level: 'info',
      msg: 'usage metered',
      token: '[redacted]',
      dimension: 'requests',
    });
  });

  it('writes readable lines with pretty, keeping the fields and the redaction', () => {
    const { logger, text } = captured('pretty');
    logger.warn({ token: 'eyJ-secret', dimension: 'requests' }, 'MeterUsage failed for now; will retry');
    const out = text();
    expect(out).toMatch(/^\[\d{2}:\d{2}:\d{2}\.\d{3}\] WARN: MeterUsage failed for now; will retry\n/);
    expect(out).toContain('dimension: "requests"');
    expect(out).toContain('token: "[redacted]"');
    expect(out).not.toContain('eyJ-secret');
    expect(() => {
      JSON.parse(out);
    }).toThrow();
  });
});
