/**
 * Addresses the sidecar listens on and the loopback rule: the app API is only ever reachable from the host
 * (or the pod) itself. `config.ts` parses the listen variables with these; intake checks Host headers.
 */
import { isIP } from 'node:net';

/** A TCP address to listen on. */
export interface ListenAddress {
  readonly host: string;
  readonly port: number;
}

/**
 * Parses `HOST:PORT` (IPv6 in brackets) or `off` (`address` undefined). With `loopbackOnly`, a host that is not
 * loopback is refused. On failure, `expected` says what the value should have been.
 */
export function parseListenAddress(
  raw: string,
  loopbackOnly: boolean,
): { ok: true; address: ListenAddress | undefined } | { ok: false; expected: string } {
  if (raw === 'off') return { ok: true, address: undefined };
  const match = /^(?:\[([^\]]+)\]|([^:]+)):(\d{1,5})$/.exec(raw);
  const host = match?.[1] ?? match?.[2];
  const port = match ? Number(match[3]) : NaN;
  if (!match || host === undefined || port > 65535 || (host !== 'localhost' && isIP(host) === 0)) {
    return { ok: false, expected: 'HOST:PORT with an IP address (e.g. 127.0.0.1:8181, [::1]:8181), or off' };
  }
  if (loopbackOnly && !isLoopback(host)) {
    return {
      ok: false,
      expected:
        'a loopback address (127.0.0.0/8, ::1 or localhost): the app API is never exposed off the host',
    };
  }
  return { ok: true, address: Object.freeze({ host, port }) };
}

/** True for 127.0.0.0/8, ::1 and localhost. */
export function isLoopback(host: string): boolean {
  if (host === 'localhost' || host === '::1') return true;
  if (isIP(host) === 4) return host.startsWith('127.');
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(host);
  return mapped !== null && mapped[1].startsWith('127.');
}

/**
 * Whether a Host header names a loopback host (`localhost`, `127.0.0.0/8`, `[::1]`, with or without a port).
 * The loopback listener refuses any other: a web page in a browser on the same machine can reach 127.0.0.1
 * under a name of its own through DNS rebinding, and its requests then carry that name.
 */
export function isLoopbackHost(host: string | undefined): boolean {
  if (host === undefined) return false;
  const match = /^(?:\[([^\]]+)\]|([^:[\]]+))(?::\d{1,5})?$/.exec(host.trim());
  const name = match?.[1] ?? match?.[2];
  return name !== undefined && isLoopback(name.toLowerCase());
}
