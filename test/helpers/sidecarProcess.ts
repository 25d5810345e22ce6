import { spawn, type ChildProcess } from 'node:child_process';
import { createServer, type Server } from 'node:http';
import { connect } from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * The Node.js the sidecar processes run on and the built command, as a seller runs it. Process tests need
 * `npm run build` first (the test script does it). With METERING_TEST_NODE_DIR (what scripts/image-node.sh
 * prints) they run on the Node.js version the image ships instead, with better-sqlite3 built for it.
 */
const NODE_DIR = process.env['METERING_TEST_NODE_DIR'];
export const NODE = NODE_DIR === undefined ? process.execPath : join(NODE_DIR, 'bin', 'node');
export const MAIN =
  NODE_DIR === undefined
    ? fileURLToPath(new URL('../../dist/main.js', import.meta.url))
    : join(NODE_DIR, 'app', 'dist', 'main.js');

/** How a sidecar process ended. */
export interface Exit {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
}

/** The built CLI in a child process, with its output kept for assertions. */
export class SidecarProcess {
  readonly child: ChildProcess;
  readonly exited: Promise<Exit>;
  #stdout = '';
  #stderr = '';

  private constructor(child: ChildProcess) {
    this.child = child;
    child.stdout?.on('data', (chunk: Buffer) => (this.#stdout += chunk.toString('utf8')));
    child.stderr?.on('data', (chunk: Buffer) => (this.#stderr += chunk.toString('utf8')));
    this.exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  }

  /**
   * Starts the built CLI with `env`. `wrap` is a command line the sidecar runs under (for instance `unshare`
   * with a shell script ending in `exec "$@"`): it receives node, the CLI and `args` as its last arguments.
   */
  static spawn(
    env: Record<string, string>,
    args: readonly string[] = ['run'],
    wrap: readonly string[] = [],
  ): SidecarProcess {
    const command = [...wrap, NODE, MAIN, ...args];
    const child = spawn(command[0], command.slice(1), {
      env: {
        PATH: process.env['PATH'] ?? '',
        AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true',
        ...env,
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    return new SidecarProcess(child);
  }

  get stdout(): string {
    return this.#stdout;
  }

  get stderr(): string {
    return this.#stderr;
  }

  /** The JSON log lines printed so far. */
  logLines(): Record<string, unknown>[] {
    return this.#stdout
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as Record<string, unknown>);
  }

  /** Waits for the "ready" log line; rejects if the process exits first. */
  async ready(timeoutMs = 15_000): Promise<void> {
    const start = Date.now();
    let exited = false;
    void this.exited.then(() => (exited = true));
    while (!this.#stdout.includes('"msg":"metering sidecar ready"')) {
      if (exited) throw new Error(`sidecar exited before ready:\n${this.#stdout}\n${this.#stderr}`);
      if (Date.now() - start > timeoutMs)
        throw new Error(`sidecar not ready in time:\n${this.#stdout}\n${this.#stderr}`);
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
  }

  /** The admin listener's port, from the sidecar's own log line (for METERING_ADMIN_LISTEN=...:0). */
  async adminPort(): Promise<number> {
    for (;;) {
      const line = this.logLines().find((l) => l['msg'] === 'admin API listening') as
        { address: { port: number } } | undefined;
      if (line !== undefined) return line.address.port;
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
  }

  /** The first fatal log line, or an empty object. */
  fatal(): Record<string, unknown> {
    return this.logLines().find((l) => l['level'] === 'fatal') ?? {};
  }

  /** Sends a signal and waits for the exit. */
  async stop(signal: NodeJS.Signals): Promise<Exit> {
    this.child.kill(signal);
    return this.exited;
  }
}

/**
 * A loopback stand-in for the ECS task-role credentials endpoint: the sidecar's default credential chain
 * reads it through AWS_CONTAINER_CREDENTIALS_FULL_URI, as on ECS.
 */
export async function startCredentialsServer(
  accessKeyId: string,
): Promise<{ url: string; close: () => Promise<void> }> {
  const server: Server = createServer((_req, res) => {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(
      JSON.stringify({
        AccessKeyId: accessKeyId,
        SecretAccessKey: 'task-secret',
        Token: 'task-session-token',
        // Far ahead: sidecars under test run on clocks shifted hours or days (libfaketime).
        Expiration: new Date(Date.now() + 365 * 24 * 3600_000).toISOString(),
      }),
    );
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  if (address === null || typeof address !== 'object') throw new Error('no address');
  return {
    url: `http://127.0.0.1:${address.port}/creds`,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

/** True once something accepts connections on the unix socket. */
export function socketAccepts(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect(path);
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}
