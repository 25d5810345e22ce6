/**
 * The app API over real sockets: every error code, all-or-nothing batches, idempotency keys, the 1 MiB
 * limit, socket file handling, and hostile input that must leave the totals unchanged.
 */
import { spawnSync } from 'node:child_process';
import { request } from 'node:http';
import { connect } from 'node:net';
import { statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { SidecarClient } from '../../src/client/client.js';
import { ListenError } from '../../src/errors.js';
import { IntakeServer, MAX_CONCURRENT_BODIES, SOCKET_MODE } from '../../src/intake/server.js';
import { rejection } from '../../src/intake/usage.js';
import { startPipeline, type Pipeline } from '../helpers/pipeline.js';
import { memoryLogger } from '../helpers/logger.js';
import { TempDirs } from '../helpers/tmp.js';
import { Tmpfs } from '../helpers/tmpfs.js';
import { InProcessLedger } from '../../src/ledger/inProcessLedger.js';

const H10 = Date.parse('2026-03-01T10:00:00Z');

const dirs = new TempDirs();
const pipelines: Pipeline[] = [];
const mounts: Tmpfs[] = [];

afterEach(async () => {
  for (const p of pipelines.splice(0)) await p.close();
  for (const fs of mounts.splice(0)) fs.unmount();
  dirs.cleanup();
});

async function pipeline(options: Partial<Parameters<typeof startPipeline>[0]> = {}): Promise<Pipeline> {
  const p = await startPipeline({ stateDir: dirs.make(), start: H10 + 60_000, ...options });
  pipelines.push(p);
  return p;
}

interface RawReply {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

/** A raw HTTP request over the unix socket, with full control of method, headers and body. */
function raw(
  socketPath: string,
  options: { method?: string; path?: string; headers?: Record<string, string>; body?: string | Buffer },
): Promise<RawReply> {
  return new Promise((resolve, reject) => {
    const req = request(
      {
        socketPath,
        method: options.method ?? 'POST',
        path: options.path ?? '/v1/usage',
        headers: options.headers ?? { 'content-type': 'application/json' },
        agent: false,
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () =>
          resolve({
            status: res.statusCode ?? 0,
            headers: res.headers,
            body: Buffer.concat(chunks).toString('utf8'),
          }),
        );
      },
    );
    req.on('error', reject);
    req.end(options.body);
  });
}

function errorCode(reply: RawReply): string {
  return (JSON.parse(reply.body) as { error: { code: string } }).error.code;
}

function totals(p: Pipeline): unknown {
  return p.ledger.status(p.clock.now()).open;
}

describe('app API', () => {
  it('answers 202 with counts for a record and a batch, over the socket and over TCP', async () => {
    const p = await pipeline();
    expect(await p.api.report({ dimension: 'a', quantity: 1 })).toEqual({
      status: 202,
      body: { accepted: 1, duplicates: 0 },
    });
    expect(
      await p.tcpApi.report([
        { dimension: 'a', quantity: 2 },
        { dimension: 'b', quantity: 3 },
      ]),
    ).toEqual({
      status: 202,
      body: { accepted: 2, duplicates: 0 },
    });
    expect(totals(p)).toEqual([
      { dimension: 'a', hourStartMs: H10, quantity: 3, tagSets: 1 },
      { dimension: 'b', hourStartMs: H10, quantity: 3, tagSets: 1 },
    ]);
  });

  it('accepts a content type with parameters', async () => {
    const p = await pipeline();
    const reply = await raw(p.socketPath, {
      headers: { 'content-type': 'application/json; charset=utf-8' },
      body: '{"dimension":"a","quantity":1}',
    });
    expect(reply.status).toBe(202);
  });

  it.each([
    [400, 'InvalidJson', { body: '{"dimension":' }],
    [400, 'InvalidRequest', { body: '{"records":"x"}' }],
    [
      413,
      'TooLarge',
      {
        body: JSON.stringify({
          records: Array.from({ length: 10_001 }, () => ({ dimension: 'a', quantity: 1 })),
        }),
      },
    ],
    [
      415,
      'UnsupportedMediaType',
      { headers: { 'content-type': 'text/plain' }, body: '{"dimension":"a","quantity":1}' },
    ],
    [415, 'UnsupportedMediaType', { headers: {}, body: '{"dimension":"a","quantity":1}' }],
    [404, 'NotFound', { path: '/v2/usage', body: '{}' }],
    [405, 'MethodNotAllowed', { method: 'GET' }],
    [405, 'MethodNotAllowed', { method: 'DELETE', path: '/v1/status' }],
    [422, 'UnknownDimension', { body: '{"dimension":"nope","quantity":1}' }],
    [422, 'InvalidQuantity', { body: '{"dimension":"a","quantity":-4}' }],
    [422, 'InvalidTags', { body: '{"dimension":"a","quantity":1,"tags":{"k":"v,w"}}' }],
  ])('answers %i %s', async (status, code, options) => {
    const p = await pipeline({ dimensions: ['a', 'b'] });
    await p.api.report({ dimension: 'a', quantity: 1 });
    const before = totals(p);
    const reply = await raw(p.socketPath, options);
    expect(reply.status).toBe(status);
    expect(errorCode(reply)).toBe(code);
    expect(JSON.parse(reply.body)).toMatchObject({ error: { message: expect.any(String) as string } });
    expect(totals(p)).toEqual(before);
  });

  it('answers 422 TooManyTagSets with the index, and stores nothing of the batch', async () => {
    const p = await pipeline();
    const full = Array.from({ length: 2500 }, (_, i) => ({
      dimension: 'a',
      quantity: 1,
      tags: { n: String(i) },
    }));
    expect((await p.api.report(full)).status).toBe(202);
    const before = totals(p);
    const reply = await p.api.report([
      { dimension: 'b', quantity: 5 },
      { dimension: 'a', quantity: 1, tags: { n: 'more' } },
    ]);
    expect(reply).toMatchObject({ status: 422, body: { error: { code: 'TooManyTagSets', index: 1 } } });
    expect(totals(p)).toEqual(before);
  });

  it('rejects a whole batch with one bad record, naming its index, and stores nothing', async () => {
    const p = await pipeline();
    const reply = await p.api.report([
      { dimension: 'a', quantity: 1 },
      { dimension: 'a', quantity: 1.5 },
      { dimension: 'b', quantity: 1 },
    ]);
    expect(reply).toMatchObject({ status: 422, body: { error: { code: 'InvalidQuantity', index: 1 } } });
    expect(totals(p)).toEqual([]);
  });

  it('answers 503 NotEntitled while entitlement is not established, and stores nothing', async () => {
    const p = await pipeline();
    p.setGate(rejection('NotEntitled', 'the entitlement check has not finished'));
    const reply = await p.api.report({ dimension: 'a', quantity: 1 });
    expect(reply).toMatchObject({ status: 503, body: { error: { code: 'NotEntitled' } } });
    p.setGate(undefined);
    expect((await p.api.report({ dimension: 'a', quantity: 1 })).status).toBe(202);
    expect(totals(p)).toEqual([{ dimension: 'a', hourStartMs: H10, quantity: 1, tagSets: 1 }]);
  });

  it('answers 503 StorageUnavailable when the disk is full, and keeps what was acknowledged', async () => {
    const fs = Tmpfs.mount(2048);
    mounts.push(fs);
    const p = await pipeline({ stateDir: fs.dir });
    expect((await p.api.report({ dimension: 'a', quantity: 7 })).status).toBe(202);
    fs.fill();
    const big = Array.from({ length: 3000 }, (_, i) => ({
      dimension: 'b',
      quantity: 1,
      tags: { n: `${i}-${'x'.repeat(60)}` },
    }));
    const reply = await p.api.report(big.slice(0, 2500));
    expect(reply).toMatchObject({ status: 503, body: { error: { code: 'StorageUnavailable' } } });
    fs.drain();
    expect((await p.api.report({ dimension: 'a', quantity: 1 })).status).toBe(202);
    expect(totals(p)).toEqual([{ dimension: 'a', hourStartMs: H10, quantity: 8, tagSets: 1 }]);
  });

  it('counts a repeated idempotency key once', async () => {
    const p = await pipeline();
    expect((await p.api.report({ dimension: 'a', quantity: 4, id: 'evt-1' })).body).toEqual({
      accepted: 1,
      duplicates: 0,
    });
    expect((await p.api.report({ dimension: 'a', quantity: 4, id: 'evt-1' })).body).toEqual({
      accepted: 0,
      duplicates: 1,
    });
    expect(
      (
        await p.api.report([
          { dimension: 'a', quantity: 4, id: 'evt-1' },
          { dimension: 'a', quantity: 1, id: 'evt-2' },
        ])
      ).body,
    ).toEqual({ accepted: 1, duplicates: 1 });
    expect(totals(p)).toEqual([{ dimension: 'a', hourStartMs: H10, quantity: 5, tagSets: 1 }]);
  });

  it('cuts off a body over 1 MiB before it has been sent whole', async () => {
    const p = await pipeline();
    // Declared 64 MiB, but only 2 MiB are ever written: the answer must come without the rest.
    const declared = await new Promise<RawReply>((resolve, reject) => {
      const req = request(
        {
          socketPath: p.socketPath,
          method: 'POST',
          path: '/v1/usage',
          agent: false,
          headers: { 'content-type': 'application/json', 'content-length': String(64 * 1024 * 1024) },
        },
        (res) => {
          let body = '';
          res.on('data', (c: Buffer) => (body += c.toString()));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
        },
      );
      req.on('error', reject);
      req.write(Buffer.alloc(2 * 1024 * 1024, 0x20));
    });
    expect(declared.status).toBe(413);
    expect(errorCode(declared)).toBe('TooLarge');

    // Chunked, with no declared length: cut off once 1 MiB has arrived, while the client is still sending.
    const chunked = await new Promise<RawReply>((resolve, reject) => {
      const req = request(
        {
          socketPath: p.socketPath,
          method: 'POST',
          path: '/v1/usage',
          agent: false,
          headers: { 'content-type': 'application/json' },
        },
        (res) => {
          let body = '';
          res.on('data', (c: Buffer) => (body += c.toString()));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
        },
      );
      req.on('error', () => undefined); // the server closes the connection after answering
      const chunk = Buffer.alloc(256 * 1024, 0x20);
      let sent = 0;
      const pump = (): void => {
        while (sent < 32 && req.write(chunk)) sent++;
        if (sent < 32 && !req.destroyed) req.once('drain', pump);
      };
      req.on('response', () => req.destroy());
      pump();
      setTimeout(() => reject(new Error('no answer')), 10_000).unref();
    });
    expect(chunked.status).toBe(413);
    expect(totals(p)).toEqual([]);
    // The server is still serving.
    expect((await p.api.report({ dimension: 'a', quantity: 1 })).status).toBe(202);
  });

  it('reads at most 64 bodies at once and answers 429 beyond, so slow clients cannot exhaust memory', async () => {
    // Regression: hundreds of connections each holding a body of almost 1 MiB grew the sidecar by 400 MiB.
    const p = await pipeline();
    const held: import('node:net').Socket[] = [];
    for (let i = 0; i < MAX_CONCURRENT_BODIES; i++) {
      await new Promise<void>((resolve) => {
        const socket = connect(p.socketPath, () => {
          socket.write(
            'POST /v1/usage HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{"dimension"',
            () => resolve(),
          );
        });
        socket.on('error', () => undefined);
        held.push(socket);
      });
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
    const refused = await p.api.report({ dimension: 'a', quantity: 1 });
    for (const socket of held) socket.destroy();
    await new Promise((resolve) => setTimeout(resolve, 50));
    const accepted = await p.api.report({ dimension: 'a', quantity: 1 });

    expect(refused).toMatchObject({ status: 429, body: { error: { code: 'TooManyRequests' } } });
    expect(accepted.status).toBe(202);
    expect(totals(p)).toEqual([{ dimension: 'a', hourStartMs: H10, quantity: 1, tagSets: 1 }]);
  });

  it('accepts a body of just under 1 MiB', async () => {
    const p = await pipeline();
    const records = Array.from({ length: 10_000 }, (_, i) => ({
      dimension: 'a',
      quantity: 1,
      id: `${i}`.padStart(60, '0'),
    }));
    const body = JSON.stringify({ records });
    expect(Buffer.byteLength(body)).toBeLessThan(1024 * 1024);
    expect(Buffer.byteLength(body)).toBeGreaterThan(900 * 1024);
    expect((await raw(p.socketPath, { body })).status).toBe(202);
  });

  it('stops only after batches of clients that hung up are committed', async () => {
    // Regression: a client that went away left its batch queued for commit after stop() had resolved, so the
    // shutdown seal missed it and the sidecar exited 75 with usage unsealed.
    const p = await pipeline();
    const body = JSON.stringify({
      records: Array.from({ length: 500 }, () => ({ dimension: 'a', quantity: 1 })),
    });
    await Promise.all(
      Array.from(
        { length: 20 },
        () =>
          new Promise<void>((resolve) => {
            const socket = connect(p.socketPath, () => {
              socket.write(
                `POST /v1/usage HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
                () => {
                  socket.destroy();
                  resolve();
                },
              );
            });
          }),
      ),
    );
    await p.intake.stop();
    const atStop = JSON.stringify(totals(p));
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(JSON.stringify(totals(p))).toBe(atStop);
  });

  it('serves status and entitlement', async () => {
    const p = await pipeline();
    await p.api.report({ dimension: 'a', quantity: 2 });
    const status = await raw(p.socketPath, { method: 'GET', path: '/v1/status' });
    expect(status.status).toBe(200);
    expect(JSON.parse(status.body)).toMatchObject({ open: [{ dimension: 'a', quantity: 2 }] });
    const entitlement = await raw(p.socketPath, { method: 'GET', path: '/v1/entitlement?x=1' });
    expect(JSON.parse(entitlement.body)).toEqual({ state: 'disabled', mode: 'none' });
  });

  it('creates the socket file writable by the app container user', async () => {
    const p = await pipeline();
    expect(statSync(p.socketPath).mode & 0o777).toBe(SOCKET_MODE);
    expect(SOCKET_MODE).toBe(0o666);
  });

  it('listens on loopback only', async () => {
    const p = await pipeline();
    expect(p.intake.tcpAddress!.host).toBe('127.0.0.1');
  });

  // Regression: {"quantity":1,"quantity":2} was acknowledged, and which quantity counted was the parser's choice.
  it('refuses a body that repeats a member name with 400 InvalidJson, counting nothing', async () => {
    const p = await pipeline({ dimensions: ['a'] });
    for (const body of [
      '{"dimension":"a","quantity":1,"quantity":2}',
      '{"records":[{"dimension":"a","quantity":1}],"records":[{"dimension":"a","quantity":5}]}',
      '{"dimension":"a","quantity":1,"tags":{"t":"x","t":"y"}}',
    ]) {
      const reply = await raw(p.socketPath, { body });
      expect(reply.status, body).toBe(400);
      expect(errorCode(reply)).toBe('InvalidJson');
      expect(reply.body).toContain('repeats the member');
    }
    const proof = await raw(p.socketPath, { path: '/v1/entitlement', body: '{"nonce":"a","nonce":"b"}' });
    expect(proof.status).toBe(400);
    expect(totals(p)).toEqual([]);
  });

  // Regression: the loopback listener answered any Host, so a web page could reach it through DNS rebinding.
  it('answers on loopback TCP only requests addressed to a loopback host name', async () => {
    const p = await pipeline({ dimensions: ['a'] });
    const port = p.intake.tcpAddress!.port;
    const post = (host: string): Promise<RawReply> =>
      new Promise((resolve, reject) => {
        const req = request(
          {
            host: '127.0.0.1',
            port,
            method: 'POST',
            path: '/v1/usage',
            headers: { host, 'content-type': 'application/json' },
            agent: false,
          },
          (res) => {
            let body = '';
            res.on('data', (c: Buffer) => (body += c.toString('utf8')));
            res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
          },
        );
        req.on('error', reject);
        req.end('{"dimension":"a","quantity":1}');
      });

    for (const host of ['attacker.example', 'attacker.example:8181', '10.0.0.5', '127.0.0.1.nip.io']) {
      const reply = await post(host);
      expect(reply.status, host).toBe(403);
      expect(errorCode(reply)).toBe('ForbiddenHost');
    }
    expect(totals(p)).toEqual([]);
    for (const host of [
      'localhost',
      `localhost:${port}`,
      `127.0.0.1:${port}`,
      '127.1.2.3',
      `[::1]:${port}`,
    ]) {
      expect((await post(host)).status, host).toBe(202);
    }
    // The unix socket cannot be reached from a web page: it takes any Host.
    expect(
      (
        await raw(p.socketPath, {
          headers: { host: 'anything', 'content-type': 'application/json' },
          body: '{"dimension":"a","quantity":1}',
        })
      ).status,
    ).toBe(202);
  });

  it('survives hostile and malformed requests with totals unchanged', async () => {
    const p = await pipeline({ dimensions: ['a'] });
    await p.api.report({ dimension: 'a', quantity: 10 });
    const before = totals(p);
    const bodies = [
      '',
      'null',
      '{}',
      '[1,2,3]',
      '{"records":[null]}',
      '{"dimension":"a","quantity":1e308}',
      '{"dimension":"a","quantity":9007199254740993}',
      '{"dimension":"a","quantity":"1"}',
      '{"dimension":"a","quantity":true}',
      '{"dimension":"a","quantity":1,"tags":{"__proto__":{"x":"y"}}}',
      '{"__proto__":{"dimension":"a"},"quantity":1}',
      '{"dimension":"a","quantity":1,"constructor":{}}',
      '{"dimension":"\\u0000","quantity":1}',
      '{"dimension":"a","quantity":1,"tags":{"k":"\\ud800"}}',
      '{"dimension":"a","quantity":1,"tags":{"😀":"v"}}',
      '{"records":[{"dimension":"a","quantity":1}],"records":5}',
      '\u0000\u0001\u0002',
      '{"dimension":"a","quantity":-0.0000001}',
      `{"records":[${'['.repeat(5000)}${']'.repeat(5000)}]}`,
      '{"dimension":"a","quantity":1,"tags":{"a":"1","b":"2","c":"3","d":"4","e":"5","f":"6"}}',
    ];
    const replies = await Promise.all(bodies.map((body) => raw(p.socketPath, { body })));
    for (const reply of replies) {
      expect(reply.status).toBeGreaterThanOrEqual(400);
      expect(reply.status).toBeLessThan(500);
    }
    // Raw garbage on the socket, and a connection closed halfway through a request.
    await new Promise<void>((resolve) => {
      const socket = connect(p.socketPath, () => {
        socket.end('NOT HTTP AT ALL\r\n\r\n');
      });
      socket.on('close', () => resolve());
      socket.on('error', () => resolve());
      socket.resume();
    });
    await new Promise<void>((resolve) => {
      const socket = connect(p.socketPath, () => {
        socket.write(
          'POST /v1/usage HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{"dimension":"a",',
        );
        setTimeout(() => {
          socket.destroy();
          resolve();
        }, 20);
      });
    });
    expect(totals(p)).toEqual(before);
    expect((await p.api.report({ dimension: 'a', quantity: 1 })).status).toBe(202);
  });
});

describe('socket file', () => {
  function intake(socketPath: string, ledgerPipeline: Pipeline): IntakeServer {
    return new IntakeServer({
      socketPath,
      listen: undefined,
      dimensions: undefined,
      ledger: new InProcessLedger(ledgerPipeline.ledger),
      logger: memoryLogger('silent').logger,
      gate: () => Promise.resolve(undefined),
      status: () => Promise.resolve({}),
      entitlement: () => ({}),
      proveEntitlement: () => Promise.resolve({ kind: 'notApplicable', message: 'no entitlement in tests' }),
    });
  }

  it('replaces a stale socket file left by a crash', async () => {
    const p = await pipeline();
    const path = join(dirs.make(), 'stale.sock');
    // A process that listens on the socket and is killed with SIGKILL leaves the file behind.
    const crashed = spawnSync(process.execPath, [
      '-e',
      `require('net').createServer().listen(${JSON.stringify(path)}, () => process.kill(process.pid, 'SIGKILL'))`,
    ]);
    expect(crashed.signal).toBe('SIGKILL');
    expect(statSync(path).isSocket()).toBe(true);

    const server = intake(path, p);
    await server.start();
    const client = new SidecarClient({ socketPath: path });
    expect((await client.report({ dimension: 'a', quantity: 1 })).status).toBe(202);
    client.close();
    await server.stop();
  });

  it('refuses to take over a socket another process is serving', async () => {
    const p = await pipeline();
    await expect(intake(p.socketPath, p).start()).rejects.toThrow(ListenError);
    expect((await p.api.report({ dimension: 'a', quantity: 1 })).status).toBe(202);
  });

  it('refuses to delete a file that is not a socket', async () => {
    const p = await pipeline();
    const path = join(dirs.make(), 'not-a-socket');
    writeFileSync(path, 'data');
    await expect(intake(path, p).start()).rejects.toThrow(/not a socket/);
  });
});
