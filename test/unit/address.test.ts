import { describe, expect, it } from 'vitest';

import { isLoopback, isLoopbackHost, parseListenAddress } from '../../src/address.js';

describe('isLoopback', () => {
  it.each([
    ['127.0.0.1', true],
    ['127.255.0.9', true],
    ['::1', true],
    ['localhost', true],
    ['::ffff:127.0.0.1', true],
    ['0.0.0.0', false],
    ['::', false],
    ['10.1.2.3', false],
    ['::ffff:10.0.0.1', false],
  ])('%s → %s', (host, expected) => {
    expect(isLoopback(host)).toBe(expected);
  });
});

describe('isLoopbackHost', () => {
  it.each([
    ['localhost', true],
    ['LOCALHOST:8181', true],
    ['127.0.0.1:8181', true],
    ['[::1]:8181', true],
    ['[::1]', true],
    [' 127.0.0.2 ', true],
    ['evil.example:8181', false],
    ['10.0.0.1', false],
    ['[::]:8181', false],
    ['', false],
    [undefined, false],
  ])('%s → %s', (host, expected) => {
    expect(isLoopbackHost(host)).toBe(expected);
  });
});

describe('parseListenAddress', () => {
  it('reads HOST:PORT, bracketed IPv6 and off', () => {
    expect(parseListenAddress('127.0.0.1:8181', true)).toEqual({
      ok: true,
      address: { host: '127.0.0.1', port: 8181 },
    });
    expect(parseListenAddress('[::1]:0', true)).toEqual({ ok: true, address: { host: '::1', port: 0 } });
    expect(parseListenAddress('off', true)).toEqual({ ok: true, address: undefined });
  });

  it('refuses a host name, a port over 65535 and a missing port', () => {
    for (const raw of ['example.com:80', '127.0.0.1:65536', '127.0.0.1', ':8181']) {
      const parsed = parseListenAddress(raw, false);
      expect(parsed.ok, raw).toBe(false);
      if (!parsed.ok) expect(parsed.expected).toContain('HOST:PORT');
    }
  });

  it('refuses a non-loopback host only when loopback is required', () => {
    expect(parseListenAddress('0.0.0.0:9090', false)).toEqual({
      ok: true,
      address: { host: '0.0.0.0', port: 9090 },
    });
    const parsed = parseListenAddress('0.0.0.0:9090', true);
    expect(parsed.ok).toBe(false);
    if (!parsed.ok) expect(parsed.expected).toContain('loopback');
  });
});
