// Intake benchmark: single-record requests and 1,000-record batches over the unix socket, against the built
// sidecar (local mode, durable acks: every 202 follows a committed SQLite transaction with synchronous=FULL),
// beside a bare node:http server on a unix socket that answers 202 without doing anything (the ceiling for
// Node.js on this machine). Load generator: autocannon, 32 keep-alive connections.
//
// Usage: npm run bench   (or: node bench/intake.mjs [--duration SECONDS])
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, mkdirSync } from 'node:fs';
import { cpus, tmpdir, totalmem } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import autocannon from 'autocannon';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const durationArg = process.argv.indexOf('--duration');
const DURATION_S = durationArg > 0 ? Number(process.argv[durationArg + 1]) : 10;
const CONNECTIONS = 32;

const BARE_SERVER = `
const http = require('node:http');
const body = '{"accepted":1,"duplicates":0}';
http.createServer((req, res) => {
  req.resume();
  req.on('end', () => { res.writeHead(202, { 'content-type': 'application/json', 'content-length': body.length }); res.end(body); });
}).listen(process.argv[1], () => console.log('ready'));
`;

function startProcess(args, env, readyText) {
  const child = spawn(process.execPath, args, {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout.on('data', (c) => (out += c));
  child.stderr.on('data', (c) => (out += c));
  return new Promise((resolve, reject) => {
    const timer = setInterval(() => {
      if (out.includes(readyText)) {
        clearInterval(timer);
        resolve(child);
      }
    }, 20);
    child.once('exit', (code) => {
      clearInterval(timer);
      reject(new Error(`exited ${code}: ${out}`));
    });
  });
}

function rssMb(pid) {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  return Number(/VmRSS:\s+(\d+) kB/.exec(status)[1]) / 1024;
}

async function load(socketPath, body, pid) {
  let peakRss = 0;
  const sampler = setInterval(() => (peakRss = Math.max(peakRss, rssMb(pid))), 100);
  const result = await autocannon({
    url: 'http://localhost/v1/usage',
    socketPath,
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body,
    connections: CONNECTIONS,
    duration: DURATION_S,
  });
  clearInterval(sampler);
  const non2xx = result.non2xx + result.errors;
  return {
    requestsPerSecond: result.requests.average,
    p50Ms: result.latency.p50,
    p99Ms: result.latency.p99,
    non2xx,
    peakRssMb: Math.round(peakRss * 10) / 10,
  };
}

function stop(child, signal = 'SIGTERM') {
  let tail = '';
  child.stdout.on('data', (c) => (tail = (tail + c).slice(-4000)));
  return new Promise((resolve) => {
    child.once('exit', (code) => {
      if (code !== 0) console.error(`sidecar exited ${code}; its last output:\n${tail}`);
      resolve(code);
    });
    child.kill(signal);
  });
}

const dir = mkdtempSync(join(tmpdir(), 'metering-bench-'));
try {
  const single = JSON.stringify({ dimension: 'requests', quantity: 1, tags: { tenant: 'acme' } });
  const batch = JSON.stringify({
    records: Array.from({ length: 1000 }, (_, i) => ({
      dimension: 'requests',
      quantity: 1,
      tags: { tenant: `t${i % 50}` },
    })),
  });

  const bareSocket = join(dir, 'bare.sock');
  const bare = await startProcess(['-e', BARE_SERVER, bareSocket], {}, 'ready');
  const bareSingle = await load(bareSocket, single, bare.pid);
  const bareBatch = await load(bareSocket, batch, bare.pid);
  await stop(bare);

  const socket = join(dir, 'metering.sock');
  const sidecar = await startProcess(
    [join(ROOT, 'dist/main.js'), 'run', '--local'],
    {
      METERING_ENTITLEMENT: 'none',
      METERING_STATE_DIR: join(dir, 'state'),
      METERING_SOCKET: socket,
      METERING_LISTEN: 'off',
      METERING_ADMIN_LISTEN: 'off',
      METERING_LOG_LEVEL: process.env.BENCH_LOG_LEVEL ?? 'warn',
      AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true',
    },
    '',
  );
  // Wait until the socket accepts.
  for (let i = 0; i < 200; i++) {
    try {
      readFileSync(`/proc/${sidecar.pid}/status`);
      const { connect } = await import('node:net');
      const ok = await new Promise((r) => {
        const s = connect(socket);
        s.once('connect', () => (s.destroy(), r(true)));
        s.once('error', () => r(false));
      });
      if (ok) break;
    } catch {
      // not yet
    }
    await new Promise((r) => setTimeout(r, 25));
  }
  const idleRssMb = Math.round(rssMb(sidecar.pid) * 10) / 10;
  const sidecarSingle = await load(socket, single, sidecar.pid);
  const sidecarBatch = await load(socket, batch, sidecar.pid);
  const exitCode = await stop(sidecar);

  const rows = [
    ['single record, req/s', bareSingle.requestsPerSecond, sidecarSingle.requestsPerSecond],
    ['single record, p50 ms', bareSingle.p50Ms, sidecarSingle.p50Ms],
    ['single record, p99 ms', bareSingle.p99Ms, sidecarSingle.p99Ms],
    [
      '1,000-record batches, records/s',
      bareBatch.requestsPerSecond * 1000,
      sidecarBatch.requestsPerSecond * 1000,
    ],
    ['1,000-record batches, p99 ms', bareBatch.p99Ms, sidecarBatch.p99Ms],
  ];
  console.log(
    `\nIntake over a unix socket — autocannon ${CONNECTIONS} keep-alive connections, ${DURATION_S} s per run`,
  );
  console.log(
    `machine: ${cpus().length} cores (${cpus()[0]?.model}), ${Math.round(totalmem() / 2 ** 30)} GiB, Node ${process.version}\n`,
  );
  console.log('| measure | bare node:http (baseline) | metering-sidecar | ratio |');
  console.log('|---|---:|---:|---:|');
  for (const [name, base, ours] of rows) {
    console.log(`| ${name} | ${Math.round(base)} | ${Math.round(ours)} | ${(ours / base).toFixed(2)} |`);
  }
  console.log(
    `\nsidecar RSS: idle ${idleRssMb} MB, peak under single-record load ${sidecarSingle.peakRssMb} MB, under batches ${sidecarBatch.peakRssMb} MB`,
  );
  console.log(
    `non-2xx or errors: sidecar single ${sidecarSingle.non2xx}, batches ${sidecarBatch.non2xx}; sidecar exit code ${exitCode}`,
  );

  mkdirSync(join(ROOT, 'bench/results'), { recursive: true });
  const file = join(ROOT, 'bench/results', `intake-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
  writeFileSync(
    file,
    JSON.stringify(
      {
        tool: `autocannon, ${CONNECTIONS} connections, ${DURATION_S} s`,
        node: process.version,
        bareSingle,
        bareBatch,
        sidecarSingle,
        sidecarBatch,
        idleRssMb,
        exitCode,
      },
      null,
      2,
    ),
  );
  console.log(`results written to ${file.replace(ROOT, '')}`);
} finally {
  rmSync(dir, { recursive: true, force: true });
}
