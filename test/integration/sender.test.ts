/**
 * The sender over real sockets and the real SDK: whether a failed MeterUsage may have reached AWS is decided by
 * whether a connection was made for it, which the send client's agents report. Every failure before a
 * connection (refused, TLS handshake or certificate) is "never delivered"; every failure after one is "maybe
 * delivered", so such a record is never carried.
 */
import { createServer as createHttpsServer, type Server as HttpsServer } from 'node:https';
import { createServer as createNetServer, type AddressInfo, type Server as NetServer } from 'node:net';
import type { MarketplaceMeteringClient } from '@aws-sdk/client-marketplace-metering';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { MeteringEmulator } from '../../src/emulator/emulator.js';
import type { MeterUsageRequest } from '../../src/ledger/hours.js';
import { createMeteringClient, createSendClient } from '../../src/send/client.js';
import type { SendResult } from '../../src/send/awsErrors.js';
import { MeteringSender } from '../../src/send/sender.js';
import { selfSignedCertificate } from '../helpers/tls.js';
import { TempDirs } from '../helpers/tmp.js';

const NOW_MS = Date.parse('2026-03-01T10:30:00Z');
const dirs = new TempDirs();
const closers: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const close of closers.splice(0).reverse()) await close();
});

let tls: { key: Buffer; cert: Buffer };
beforeAll(() => {
  // A self-signed certificate the client does not trust, as a TLS-intercepting proxy or a wrong endpoint gives.
  tls = selfSignedCertificate(dirs.make());
  return () => dirs.cleanup();
});

const request: MeterUsageRequest = {
  ProductCode: 'prod',
  TimestampMs: NOW_MS - 60_000,
  UsageDimension: 'requests',
  UsageQuantity: 3,
  ClientToken: '5d9c6f1e-1111-4222-8333-444455556666',
};

function sendClient(endpoint: string): MarketplaceMeteringClient {
  const client = createSendClient({
    region: 'us-east-1',
    endpoint,
    credentials: { accessKeyId: 'TASK1', secretAccessKey: 'secret' },
    requestTimeoutMs: 1_000,
  });
  closers.push(() => client.destroy());
  return client;
}

async function emulator(): Promise<MeteringEmulator> {
  const e = new MeteringEmulator({ productCode: 'prod', now: () => NOW_MS });
  await e.start();
  closers.push(() => e.stop());
  return e;
}

async function listen<T extends NetServer | HttpsServer>(server: T): Promise<number> {
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  closers.push(
    () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        if ('closeAllConnections' in server) server.closeAllConnections();
      }),
  );
  return (server.address() as AddressInfo).port;
}

function send(endpoint: string): Promise<SendResult> {
  return new MeteringSender(sendClient(endpoint)).send(request);
}

describe('MeteringSender over real sockets', () => {
  it('is accepted by AWS over a connection it reports', async () => {
    const e = await emulator();
    let lost = false;
    const result = await new MeteringSender(sendClient(e.url), () => (lost = true)).send(request);
    expect(result).toMatchObject({ status: 'accepted' });
    expect(lost).toBe(false);
  });

  it.each([
    ['a 500 after the request arrived', 'InternalServiceErrorException'],
    ['a reset after the request arrived', 'ConnectionReset'],
    ['an answer lost after AWS recorded it', 'ResetAfterProcessing'],
    ['no answer before the deadline', 'Timeout'],
  ])('takes %s for a possible delivery', async (_name, fault) => {
    const e = await emulator();
    e.failNext('MeterUsage', fault, 1);
    expect(await send(e.url)).toMatchObject({ status: 'retryable', maybeDelivered: true });
  });

  it('takes a refused connection for no delivery', async () => {
    const server = createNetServer();
    const port = await listen(server);
    await new Promise<void>((resolve) => server.close(() => resolve()));
    expect(await send(`http://127.0.0.1:${port}`)).toMatchObject({
      status: 'retryable',
      maybeDelivered: false,
      error: { name: 'ECONNREFUSED' },
    });
  });

  // Regression: a TLS certificate error read as a plain Error and counted as a possible delivery.
  it('takes a certificate that does not verify for no delivery, and the server indeed saw no request', async () => {
    let requests = 0;
    const server = createHttpsServer(tls, (_req, res) => {
      requests++;
      res.end('{}');
    });
    const port = await listen(server);
    expect(await send(`https://localhost:${port}`)).toMatchObject({
      status: 'retryable',
      maybeDelivered: false,
      error: { name: 'DEPTH_ZERO_SELF_SIGNED_CERT' },
    });
    expect(requests).toBe(0);
  });

  it('takes a TLS handshake that fails (a plain-text server) for no delivery', async () => {
    const server = createNetServer((socket) =>
      socket.once('data', () => socket.end('HTTP/1.1 400 Bad Request\r\n\r\n')),
    );
    const port = await listen(server);
    expect(await send(`https://127.0.0.1:${port}`)).toMatchObject({
      status: 'retryable',
      maybeDelivered: false,
    });
  });

  it('trusts no failure as undelivered once a client without connection reports succeeded', async () => {
    const e = await emulator();
    const client = createMeteringClient({
      region: 'us-east-1',
      endpoint: e.url,
      credentials: { accessKeyId: 'TASK1', secretAccessKey: 'secret' },
      maxAttempts: 1,
    });
    closers.push(() => client.destroy());
    let lost = 0;
    const sender = new MeteringSender(client, () => lost++);
    expect(await sender.send(request)).toMatchObject({ status: 'accepted' });
    expect(lost).toBe(1);

    await e.stop();
    // Refused, but the sender can no longer tell a connection was never made: assume the worst.
    expect(await sender.send(request)).toMatchObject({ status: 'retryable', maybeDelivered: true });
    expect(lost).toBe(1);
  });
});
