/**
 * HTTP helpers the servers share: listening with a clear error (the app API of ./intake and the admin listener
 * of ./observe), and reading a bounded request body, JSON replies and closing (those two and the emulator).
 */
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import { ListenError } from './errors.js';

/**
 * Starts `server` listening on a unix socket path or a TCP address.
 * @throws ListenError naming `label` when it cannot (address in use, directory missing, permission denied).
 */
export function listen(
  server: Server,
  options: { path: string } | { host: string; port: number },
  label: string,
): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) => {
      reject(new ListenError(`cannot listen on ${label} (${err.code ?? err.message})`, { cause: err }));
    });
    server.listen(options, () => resolve());
  });
}

/**
 * Answers `body` as JSON with `status`. When the connection is not to be kept alive (a body cut off at the size
 * limit is never read to its end), it is closed once the answer is out.
 */
export function sendJson(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
  if (!res.shouldKeepAlive) res.once('finish', () => res.socket?.destroySoon());
}

/** A request body as read: whole, over the limit, or cut off by the connection closing. */
export type Body = { kind: 'text'; text: string } | { kind: 'tooLarge' } | { kind: 'aborted' };

/**
 * Reads a request body up to `limit` bytes. Answers `tooLarge` as soon as the body (or its declared length)
 * exceeds the limit, without buffering the rest, and `aborted` when the connection closes before the end
 * (the client went away, or shutdown cut a stalled upload off).
 */
export function readBody(req: IncomingMessage, limit: number): Promise<Body> {
  const declared = Number(req.headers['content-length']);
  if (Number.isFinite(declared) && declared > limit) {
    req.resume();
    return Promise.resolve({ kind: 'tooLarge' });
  }
  // The connection went away while the request waited to be read (its handler awaited the admission gate):
  // its 'close' has been and gone, so no listener below would ever hear of it.
  if (req.destroyed) return Promise.resolve({ kind: 'aborted' });
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let settled = false;
    const done = (body: Body): void => {
      if (settled) return;
      settled = true;
      req.off('data', onData);
      req.off('end', onEnd);
      req.off('close', onClose);
      req.off('error', onClose);
      resolve(body);
    };
    const onData = (chunk: Buffer): void => {
      size += chunk.length;
      if (size > limit) {
        chunks.length = 0;
        req.resume();
        done({ kind: 'tooLarge' });
        return;
      }
      chunks.push(chunk);
    };
    const onEnd = (): void => done({ kind: 'text', text: Buffer.concat(chunks, size).toString('utf8') });
    // 'close' before 'end' (or an 'error') means the body never arrived whole. A body parsed whole still emits
    // 'end'; should it not, the request is given up unanswered (never acknowledged) rather than left hanging.
    const onClose = (): void => {
      if (!req.complete) done({ kind: 'aborted' });
      else setImmediate(() => done({ kind: 'aborted' }));
    };
    req.on('data', onData);
    req.on('end', onEnd);
    req.on('close', onClose);
    req.on('error', onClose);
  });
}

/**
 * Stops `server` accepting and destroys every connection, idle or busy (a request held open included); resolves
 * once the server has closed.
 */
export function closeServer(server: Server): Promise<void> {
  return new Promise<void>((resolve) => {
    // close() only stops accepting; it resolves once the connections destroyed below are gone.
    server.close(() => resolve());
    server.closeAllConnections();
  });
}
