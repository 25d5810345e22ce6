/**
 * HTTP helpers the sidecar's two servers share (the app API of ./intake and the admin listener of ./observe):
 * listening with a clear error, and JSON replies.
 */
import type { Server, ServerResponse } from 'node:http';
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
