import { createServer, request, type IncomingMessage } from 'node:http';
import type { AddressInfo } from 'node:net';
import { describe, expect, it } from 'vitest';
import { readBody, type Body } from '../../src/http.js';

describe('readBody', () => {
  // Regression: a handler that awaited something before reading (the admission gate, a worker round trip)
  // missed the 'close' of a client that had hung up meanwhile, and waited for ever; shutdown then never ended.
  it('gives up a request whose client hung up before its body was read', async () => {
    let closed: (req: IncomingMessage) => void = () => undefined;
    const arrived = new Promise<IncomingMessage>((resolve) => (closed = resolve));
    const server = createServer((req) => req.once('close', () => closed(req)));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const { port } = server.address() as AddressInfo;
    const client = request({ port, method: 'POST', headers: { 'content-length': '100' } });
    client.on('error', () => undefined);
    client.write('{"dimension":');
    setTimeout(() => client.destroy(), 50);
    const req = await arrived;
    const body: Body = await readBody(req, 1024);
    expect(body).toEqual({ kind: 'aborted' });
    server.close();
  });
});
