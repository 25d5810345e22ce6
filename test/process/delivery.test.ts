/**
 * Sends that never reached AWS, with the built CLI: a DNS lookup that times out (the sidecar in a private mount
 * namespace whose resolv.conf names a dead resolver) and an STS outage while IRSA credentials are fetched (a
 * loopback STS through AWS_ENDPOINT_URL_STS). Neither may mark the record as possibly delivered: when its
 * six-hour window closes it must be carried and billed, not failed and lost.
 */
import { writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { connect, type AddressInfo } from 'node:net';
import { createServer as createTlsServer } from 'node:tls';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { SidecarClient } from '../../src/client/client.js';
import { HOUR_MS } from '../../src/clock.js';
import { CODES } from '../../src/errors.js';
import { sidecarFixture, type Cleanups } from '../helpers/fixture.js';
import { startStsServer } from '../helpers/sts.js';
import { selfSignedCertificate } from '../helpers/tls.js';

const cleanups: Cleanups = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

/** How a fault is set up: the environment and wrapper of the failing run, and the environment once healed. */
interface Fault {
  readonly failing: Record<string, string>;
  readonly wrap: readonly string[];
  readonly healed: Record<string, string>;
  /** The error code the failing sends are logged with. */
  readonly code: string;
  /** The identity the emulator sees once healed. */
  readonly identity: string;
}

type FaultSetup = (fixture: { dir: string; url: string }) => Promise<Fault>;

const deadResolver: FaultSetup = ({ dir, url }) => {
  const resolv = join(dir, 'resolv.conf');
  writeFileSync(resolv, 'nameserver 127.0.0.9\noptions timeout:1 attempts:1\n');
  const port = new URL(url).port;
  return Promise.resolve({
    failing: { AWS_ENDPOINT_URL_MARKETPLACE_METERING: `http://metering.sidecar.test:${port}` },
    // A private mount namespace: only this process sees the dead resolver. `exec` keeps signals going to node.
    wrap: ['unshare', '-m', 'sh', '-c', 'mount --bind "$0" /etc/resolv.conf && exec "$@"', resolv],
    healed: {},
    code: 'EAI_AGAIN',
    identity: 'ASIATASKDELIVERY',
  });
};

const stsOutage: FaultSetup = async ({ dir }) => {
  const sts = await startStsServer('ASIAIRSAPOD');
  cleanups.push(() => sts.close());
  sts.state.failing = true;
  const env = sts.env(dir);
  return {
    failing: env,
    wrap: [],
    get healed() {
      sts.state.failing = false;
      return env;
    },
    code: 'InternalFailure',
    identity: 'ASIAIRSAPOD',
  };
};

describe('sends that never reached AWS (built CLI)', () => {
  // Regression: both were classified "maybe delivered", so the record was failed, never billed.
  it.each([
    ['a DNS lookup that times out (EAI_AGAIN)', deadResolver],
    ['an STS 500 while IRSA credentials are fetched', stsOutage],
  ])(
    'after %s, the record is carried and billed once its window closes',
    async (_name, setup) => {
      // Prepare
      let offsetMs = 0;
      const fixture = await sidecarFixture(cleanups, {
        name: 'delivery',
        emulator: { dimensions: ['gb'] },
        clockOffsetMs: () => offsetMs,
        env: {
          METERING_ENTITLEMENT: 'none',
          METERING_DIMENSIONS: 'gb',
          METERING_SHUTDOWN_TIMEOUT_SECONDS: '2',
        },
      });
      const fault = await setup(fixture);
      const first = fixture.spawn(fault.failing, fault.wrap);
      await first.ready();
      const client = new SidecarClient({ socketPath: fixture.socketPath });
      expect((await client.report({ dimension: 'gb', quantity: 7 })).status).toBe(202);
      client.close();

      // Act 1: the shutdown flush cannot get the record out.
      const exit = await first.stop('SIGTERM');
      expect(exit.code, first.stdout).toBe(75);
      const failures = first.logLines().filter((l) => l['msg'] === 'MeterUsage failed for now; will retry');
      expect(failures.length).toBeGreaterThan(0);
      expect(failures.map((l) => l['code'])).toContain(fault.code);
      expect(fixture.emulator.records).toEqual([]);

      // Act 2: the next start comes after the record's six-hour window has closed, with the fault gone.
      offsetMs = 6 * HOUR_MS + 60_000;
      const second = fixture.spawn(fault.healed);
      await second.ready();
      const status = (await new SidecarClient({ socketPath: fixture.socketPath }).status()).body as {
        records: Record<string, number>;
      };
      const stopped = await second.stop('SIGTERM');

      // Assess: carried into the open hour and billed there, once; nothing failed.
      expect(status.records).toMatchObject({ carried: 1, failed: 0 });
      expect(stopped.code, second.stdout).toBe(0);
      expect(fixture.emulator.records.map((r) => [r.identity, r.dimension, r.quantity])).toEqual([
        [fault.identity, 'gb', 7],
      ]);
    },
    60_000,
  );

  // Regression: the record was marked in flight before its credentials were fetched, so a SIGKILL during a
  // slow credential fetch made it "maybe delivered" for good: failed, never billed, although nothing was sent.
  it('a SIGKILL while credentials are still being fetched leaves the record billable', async () => {
    // Prepare: usage acknowledged in one hour; a credentials endpoint that never answers.
    let offsetMs = 0;
    const fixture = await sidecarFixture(cleanups, {
      name: 'delivery',
      emulator: { dimensions: ['gb'] },
      clockOffsetMs: () => offsetMs,
      env: { METERING_ENTITLEMENT: 'none', METERING_DIMENSIONS: 'gb' },
    });
    let credentialRequests = 0;
    const stalled = createServer(() => credentialRequests++); // accepts, never answers
    await new Promise<void>((resolve) => stalled.listen(0, '127.0.0.1', resolve));
    cleanups.push(
      () =>
        new Promise<void>((resolve) => {
          stalled.close(() => resolve());
          stalled.closeAllConnections();
        }),
    );
    const stalledUrl = `http://127.0.0.1:${(stalled.address() as AddressInfo).port}/creds`;
    const first = fixture.spawn();
    await first.ready();
    const client = new SidecarClient({ socketPath: fixture.socketPath });
    expect((await client.report({ dimension: 'gb', quantity: 7 })).status).toBe(202);
    client.close();
    await first.stop('SIGKILL');

    // Act 1: the next start, an hour on, seals the hour and waits for credentials; it is killed meanwhile.
    offsetMs = HOUR_MS + 60_000;
    const second = fixture.spawn({ AWS_CONTAINER_CREDENTIALS_FULL_URI: stalledUrl });
    await second.ready();
    while (credentialRequests === 0) await new Promise((resolve) => setTimeout(resolve, 10));
    await second.stop('SIGKILL');
    expect(fixture.emulator.calls.filter((c) => c.operation === 'MeterUsage')).toEqual([]);

    // Act 2: the start after that comes once the record's window is closing.
    offsetMs = 6 * HOUR_MS;
    const third = fixture.spawn();
    await third.ready();
    const status = (await new SidecarClient({ socketPath: fixture.socketPath }).status()).body as {
      records: Record<string, number>;
    };
    const stopped = await third.stop('SIGTERM');

    // Assess: carried and billed, not failed as possibly delivered.
    expect(status.records).toMatchObject({ carried: 1, failed: 0 });
    expect(stopped.code, third.stdout).toBe(0);
    expect(fixture.emulator.records.map((r) => [r.dimension, r.quantity])).toEqual([['gb', 7]]);
  }, 60_000);
});

describe('sends over TLS (built CLI)', () => {
  // AWS is only reached over HTTPS: the send client's TLS agent must report its connections too, or a send
  // that succeeds looks like one without evidence, and from then on every failure counts as possibly delivered.
  it('delivers over HTTPS through a trusted certificate, with the connection reported', async () => {
    // Prepare: the emulator behind a TLS terminator whose certificate the sidecar trusts (NODE_EXTRA_CA_CERTS).
    const fixture = await sidecarFixture(cleanups, {
      name: 'delivery',
      emulator: { dimensions: ['gb'] },
      env: { METERING_ENTITLEMENT: 'none', METERING_DIMENSIONS: 'gb' },
    });
    const tls = selfSignedCertificate(fixture.dir);
    const upstreamPort = Number(new URL(fixture.url).port);
    let tlsConnections = 0;
    const terminator = createTlsServer({ key: tls.key, cert: tls.cert }, (socket) => {
      tlsConnections++;
      const upstream = connect(upstreamPort, '127.0.0.1');
      socket.pipe(upstream).pipe(socket);
      socket.on('error', () => upstream.destroy());
      upstream.on('error', () => socket.destroy());
    });
    await new Promise<void>((resolve) => terminator.listen(0, '127.0.0.1', resolve));
    cleanups.push(() => new Promise<void>((resolve) => terminator.close(() => resolve())));
    const port = (terminator.address() as AddressInfo).port;
    const sidecar = fixture.spawn({
      AWS_ENDPOINT_URL_MARKETPLACE_METERING: `https://localhost:${port}`,
      NODE_EXTRA_CA_CERTS: tls.certPath,
    });
    await sidecar.ready();
    const client = new SidecarClient({ socketPath: fixture.socketPath });
    expect((await client.report({ dimension: 'gb', quantity: 7 })).status).toBe(202);
    client.close();

    // Act
    const exit = await sidecar.stop('SIGTERM');

    // Assess: billed once, over TLS, and no send succeeded without a reported connection.
    expect(exit.code, sidecar.stdout).toBe(0);
    expect(tlsConnections).toBeGreaterThan(0);
    expect(fixture.emulator.records.map((r) => [r.dimension, r.quantity])).toEqual([['gb', 7]]);
    expect(sidecar.logLines().filter((l) => l['code'] === CODES.sendEvidence)).toEqual([]);
  }, 30_000);
});
