// Benchmark harness (npm run bench; not part of npm test). Every figure is printed beside its baseline from
// the same run, and as a ratio, because absolute numbers on a shared 2-core machine drift. Load generator:
// autocannon (programmatic), 32 keep-alive connections unless noted. Results also go to bench/results/*.json.
//
//   node bench/run.mjs [--duration SECONDS] [--profile]
//
// 1. intake, single records: sidecar vs a bare node:http server answering 202, unix socket and loopback TCP
// 2. intake, batches of 1,000 and 10,000 records (records/s), same baseline
// 3. idempotency keys on every record, as a ratio to the same load without
// 4. sealing and sending one hour of 24 dimensions x 2,500 tag sets, vs the same 24 MeterUsage calls made
//    directly with the SDK
// 5. footprint: RSS idle and under load 1, cold start to ready with --local, vs a bare node:http process
import { spawn } from 'node:child_process';
import { performance } from 'node:perf_hooks';
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { cpus, tmpdir, totalmem } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import autocannon from 'autocannon';
import { MarketplaceMeteringClient, MeterUsageCommand } from '@aws-sdk/client-marketplace-metering';
import { MeteringEmulator } from '../dist/emulator/emulator.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const arg = (name) => {
  const i = process.argv.indexOf(name);
  return i > 0 ? process.argv[i + 1] : undefined;
};
const DURATION_S = Number(arg('--duration') ?? 8);
const PROFILE = process.argv.includes('--profile');
const CONNECTIONS = 32;
const dir = mkdtempSync(join(tmpdir(), 'metering-bench-'));
const results = {
  machine: {},
  tool: `autocannon, ${CONNECTIONS} keep-alive connections, ${DURATION_S} s per run`,
  figures: [],
};

const BARE_SERVER = `
const http = require('node:http');
const body = '{"accepted":1,"duplicates":0}';
const server = http.createServer((req, res) => {
  req.resume();
  req.on('end', () => { res.writeHead(202, { 'content-type': 'application/json', 'content-length': body.length }); res.end(body); });
});
const [socket, port] = process.argv.slice(1);
let pending = 2;
const ready = () => { if (--pending === 0) console.log('ready'); };
server.listen(socket, ready);
http.createServer(server.listeners('request')[0]).listen(Number(port), '127.0.0.1', ready);
`;

function rssMb(pid) {
  return Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))[1]) / 1024;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function canConnect(path) {
  return new Promise((resolve) => {
    const s = connect(path);
    s.once('connect', () => (s.destroy(), resolve(true)));
    s.once('error', () => resolve(false));
  });
}

function startChild(args, env, readyText) {
  const startedAt = performance.now();
  const child = spawn(process.execPath, args, {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout.on('data', (c) => (out = (out + c).slice(-20000)));
  child.stderr.on('data', (c) => (out = (out + c).slice(-20000)));
  return new Promise((resolve, reject) => {
    const timer = setInterval(() => {
      if (out.includes(readyText)) {
        clearInterval(timer);
        resolve({ child, readyMs: performance.now() - startedAt, output: () => out });
      }
    }, 2);
    child.once('exit', (code) => (clearInterval(timer), reject(new Error(`exited ${code}: ${out}`))));
  });
}

function stop(child, signal = 'SIGTERM') {
  return new Promise((resolve) => {
    if (child.exitCode !== null) return resolve(child.exitCode);
    child.once('exit', (code) => resolve(code));
    child.kill(signal);
  });
}

async function load(target, body, pid, connections = CONNECTIONS) {
  let peak = 0;
  const sampler = setInterval(() => (peak = Math.max(peak, rssMb(pid))), 100);
  // A function body is called for every request (fresh idempotency keys); a string is sent as is.
  const request =
    typeof body === 'function'
      ? { requests: [{ method: 'POST', setupRequest: (req) => ({ ...req, body: body() }) }] }
      : { body };
  const result = await autocannon({
    url: target.socketPath ? 'http://localhost/v1/usage' : `http://127.0.0.1:${target.port}/v1/usage`,
    ...(target.socketPath ? { socketPath: target.socketPath } : {}),
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    ...request,
    connections,
    duration: DURATION_S,
  });
  clearInterval(sampler);
  if (result.non2xx + result.errors > 0) throw new Error(`${result.non2xx} non-2xx, ${result.errors} errors`);
  return { rps: result.requests.average, p50: result.latency.p50, p99: result.latency.p99, peakRssMb: peak };
}

function figure(group, measure, baseline, ours, unit, better = 'higher') {
  const ratio = ours / baseline;
  results.figures.push({ group, measure, baseline, ours, unit, ratio });
  const fmt = (v) => (v >= 100 ? Math.round(v).toLocaleString('en-US') : v.toFixed(v >= 10 ? 1 : 2));
  console.log(
    `| ${group} | ${measure} | ${fmt(baseline)} ${unit} | ${fmt(ours)} ${unit} | ${ratio.toFixed(2)}${better === 'lower' ? ' (lower is better)' : ''} |`,
  );
}

let nextId = 0;
const record = (i, withId = false) =>
  JSON.stringify({
    dimension: 'requests',
    quantity: 1,
    tags: { tenant: `t${i % 50}` },
    ...(withId ? { id: `k${nextId++}` } : {}),
  });
const batch = (n, withId = false) =>
  `{"records":[${Array.from({ length: n }, (_, i) => record(i, withId)).join(',')}]}`;
/** Bodies with a fresh idempotency key on every record of every request. */
const withIds = (n) => () => (n === 1 ? record(0, true) : batch(n, true));

function sidecarEnv(state, socket, port) {
  return {
    METERING_ENTITLEMENT: 'none',
    METERING_STATE_DIR: state,
    METERING_SOCKET: socket,
    METERING_LISTEN: `127.0.0.1:${port}`,
    METERING_ADMIN_LISTEN: 'off',
    METERING_LOG_LEVEL: 'warn',
    AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true',
  };
}

async function startSidecar(name, extraArgs = []) {
  const socket = join(dir, `${name}.sock`);
  const port = 30000 + Math.floor(Math.random() * 20000);
  const env = sidecarEnv(join(dir, `${name}-state`), socket, port);
  const started = performance.now();
  const child = spawn(process.execPath, [...extraArgs, join(ROOT, 'dist/main.js'), 'run', '--local'], {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  child.stdout.resume();
  child.stderr.resume();
  while (!(await canConnect(socket))) await sleep(2);
  return { child, socket, port, readyMs: performance.now() - started };
}

try {
  results.machine = {
    cores: cpus().length,
    cpu: cpus()[0]?.model,
    memoryGiB: Math.round(totalmem() / 2 ** 30),
    node: process.version,
  };
  console.log(`\nmetering-sidecar benchmarks — ${results.tool}`);
  console.log(
    `machine: ${results.machine.cores} cores (${results.machine.cpu}), ${results.machine.memoryGiB} GiB, Node ${process.version}\n`,
  );
  console.log('| group | measure | baseline | metering-sidecar | ratio |');
  console.log('|---|---|---:|---:|---:|');

  // Baselines: a bare node:http server on a unix socket and on loopback TCP.
  const bareSocket = join(dir, 'bare.sock');
  const barePort = 30000 + Math.floor(Math.random() * 20000);
  const bareStart = performance.now();
  const bare = await startChild(['-e', BARE_SERVER, bareSocket, String(barePort)], {}, 'ready');
  const bareReadyMs = performance.now() - bareStart;
  const bareIdle = rssMb(bare.child.pid);
  const bareSingleSock = await load({ socketPath: bareSocket }, record(0), bare.child.pid);
  const bareSingleTcp = await load({ port: barePort }, record(0), bare.child.pid);
  const bareBatch1k = await load({ socketPath: bareSocket }, batch(1000), bare.child.pid);
  const bareBatch10k = await load({ socketPath: bareSocket }, batch(10000), bare.child.pid, 8);
  await stop(bare.child);

  const profileArgs = PROFILE ? ['--cpu-prof', `--cpu-prof-dir=${join(ROOT, 'bench/results/profiles')}`] : [];
  const sc = await startSidecar('main', profileArgs);
  await sleep(300);
  const idle = rssMb(sc.child.pid);
  const singleSock = await load({ socketPath: sc.socket }, record(0), sc.child.pid);
  const singleTcp = await load({ port: sc.port }, record(0), sc.child.pid);
  const batch1k = await load({ socketPath: sc.socket }, batch(1000), sc.child.pid);
  const batch10k = await load({ socketPath: sc.socket }, batch(10000), sc.child.pid, 8);
  // Idempotency keys: a fresh key on every record of every request, each looked up and stored.
  const batch1kIds = await load({ socketPath: sc.socket }, withIds(1000), sc.child.pid);
  const singleIds = await load({ socketPath: sc.socket }, withIds(1), sc.child.pid);
  const exit = await stop(sc.child);

  figure('1 intake, single records', 'unix socket req/s', bareSingleSock.rps, singleSock.rps, 'req/s');
  figure(
    '1 intake, single records',
    'unix socket p50 latency',
    Math.max(bareSingleSock.p50, 0.5),
    Math.max(singleSock.p50, 0.5),
    'ms',
    'lower',
  );
  figure(
    '1 intake, single records',
    'unix socket p99 latency',
    bareSingleSock.p99,
    singleSock.p99,
    'ms',
    'lower',
  );
  figure('1 intake, single records', 'loopback TCP req/s', bareSingleTcp.rps, singleTcp.rps, 'req/s');
  figure(
    '1 intake, single records',
    'loopback TCP p99 latency',
    bareSingleTcp.p99,
    singleTcp.p99,
    'ms',
    'lower',
  );
  figure(
    '2 intake, batches',
    '1,000-record batches, records/s',
    bareBatch1k.rps * 1000,
    batch1k.rps * 1000,
    'rec/s',
  );
  figure(
    '2 intake, batches',
    '10,000-record batches (8 connections), records/s',
    bareBatch10k.rps * 10000,
    batch10k.rps * 10000,
    'rec/s',
  );
  figure(
    '3 idempotency keys',
    'single records with id vs without, req/s',
    singleSock.rps,
    singleIds.rps,
    'req/s',
  );
  figure(
    '3 idempotency keys',
    '1,000-record batches with ids vs without, records/s',
    batch1k.rps * 1000,
    batch1kIds.rps * 1000,
    'rec/s',
  );

  // 4. Seal and send one hour of 24 dimensions x 2,500 tag sets.
  const emulator = new MeteringEmulator({ productCode: 'local-product' });
  const url = await emulator.start();
  const direct = new MarketplaceMeteringClient({
    region: 'us-east-1',
    endpoint: url,
    credentials: { accessKeyId: 'BASE', secretAccessKey: 'x' },
    maxAttempts: 1,
  });
  const allocations = Array.from({ length: 2500 }, (_, i) => ({
    AllocatedUsageQuantity: 1,
    Tags: [{ Key: 'tenant', Value: `t${i}` }],
  }));
  const directStart = performance.now();
  for (let d = 0; d < 24; d++) {
    await direct.send(
      new MeterUsageCommand({
        ProductCode: 'local-product',
        Timestamp: new Date(),
        UsageDimension: `dim${d}`,
        UsageQuantity: 2500,
        UsageAllocations: allocations,
      }),
    );
  }
  const directMs = performance.now() - directStart;
  direct.destroy();
  await emulator.stop();

  const seal = await startSidecar('seal');
  const client = { socketPath: seal.socket };
  for (let d = 0; d < 24; d++) {
    const body = `{"records":[${Array.from({ length: 2500 }, (_, i) => `{"dimension":"dim${d}","quantity":1,"tags":{"tenant":"t${i}"}}`).join(',')}]}`;
    const r = await autocannon({
      url: 'http://localhost/v1/usage',
      socketPath: client.socketPath,
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body,
      amount: 1,
      connections: 1,
    });
    if (r.non2xx + r.errors > 0) throw new Error('seal load failed');
  }
  let sealPeak = 0;
  const sampler = setInterval(() => {
    try {
      sealPeak = Math.max(sealPeak, rssMb(seal.child.pid));
    } catch {
      // the process has exited
    }
  }, 20);
  const sealStart = performance.now();
  const sealExit = await stop(seal.child); // SIGTERM: seal the open hour (24 records x 2,500 allocations) and send
  const sealMs = performance.now() - sealStart;
  clearInterval(sampler);
  figure(
    '4 seal and send',
    '24 dims x 2,500 tag sets: time (baseline: the 24 calls alone)',
    directMs,
    sealMs,
    'ms',
    'lower',
  );
  figure(
    '4 seal and send',
    'peak RSS while sealing and sending (baseline: idle)',
    idle,
    sealPeak,
    'MB',
    'lower',
  );

  // 5. Footprint and cold start (median of 5).
  const starts = [];
  const bareStarts = [];
  for (let i = 0; i < 5; i++) {
    const s = await startSidecar(`cold${i}`);
    starts.push(s.readyMs);
    await stop(s.child);
    const b = performance.now();
    const bb = await startChild(
      ['-e', BARE_SERVER, join(dir, `bare${i}.sock`), String(30000 + Math.floor(Math.random() * 20000))],
      {},
      'ready',
    );
    bareStarts.push(performance.now() - b);
    await stop(bb.child);
  }
  const median = (a) => a.sort((x, y) => x - y)[Math.floor(a.length / 2)];
  figure('5 footprint', 'RSS idle', bareIdle, idle, 'MB', 'lower');
  figure(
    '5 footprint',
    'peak RSS under single-record load',
    bareSingleSock.peakRssMb,
    singleSock.peakRssMb,
    'MB',
    'lower',
  );
  figure(
    '5 footprint',
    'cold start to ready, --local (median of 5)',
    median(bareStarts),
    median(starts),
    'ms',
    'lower',
  );
  console.log(
    `\nexit codes: sidecar ${exit}, seal-and-send ${sealExit}; bare server ready in ${bareReadyMs.toFixed(0)} ms`,
  );

  mkdirSync(join(ROOT, 'bench/results'), { recursive: true });
  const file = join(ROOT, 'bench/results', `bench-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
  writeFileSync(file, JSON.stringify(results, null, 2));
  console.log(`results written to ${file.replace(ROOT, '')}`);
  if (PROFILE) {
    const profiles = readdirSync(join(ROOT, 'bench/results/profiles')).filter((f) =>
      f.endsWith('.cpuprofile'),
    );
    console.log(
      `CPU profile of the sidecar: bench/results/profiles/${profiles.at(-1)} (node bench/profile.mjs FILE summarises it)`,
    );
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}
