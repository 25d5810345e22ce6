// Fleet benchmark (npm run bench:fleet; not part of npm test): the shipped scheduler, dispatcher, pacer, SQLite
// ledger and handoff code of every pod of a simulated fleet, driven on one simulated clock, against a simulated
// MeterUsage endpoint that enforces the account's shared quota with the emulator's own token bucket. Every pod
// reports usage for each of its dimensions every hour; the whole fleet is replaced at once in the middle (a
// rollout), the replacements start on fresh state directories and adopt what was handed off.
//
//   node bench/fleet.mjs [--quick] [--hours N] [--fleet PODSxDIMS,...] [--spread SECONDS] [--seed N]
//
// Printed per fleet: calls an hour against the capacity, time to deliver each hour (from the hour's end to its
// last record accepted), throttled calls per delivered record, peak backlog (records sealed and not yet
// accepted, fleet-wide), usage lost (must be 0), and what is left when the simulation ends. Each fleet runs twice
// in the same process: with the shipped default spread, and with 300 s (the spread of earlier versions) as the
// baseline. docs/benchmarks.md explains the model and its assumptions. Results also go to bench/results/.
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { setImmediate } from 'node:timers';
import { fileURLToPath } from 'node:url';
import { HOUR_MS } from '../dist/clock.js';
import { DEFAULTS } from '../dist/config.js';
import { TokenBucket } from '../dist/emulator/quota.js';
import { HandoffDirectory } from '../dist/handoff/directory.js';
import { Handoffs } from '../dist/handoff/handoffs.js';
import { canonicalTags } from '../dist/ledger/hours.js';
import { InProcessLedger } from '../dist/ledger/inProcessLedger.js';
import { SqliteLedger } from '../dist/ledger/sqliteLedger.js';
import { usageBatch } from '../dist/ledger/usageBatch.js';
import { createLogger } from '../dist/log.js';
import { Scheduler, flushPlan } from '../dist/schedule/scheduler.js';
import { SendPacer } from '../dist/send/pacing.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const arg = (name) => {
  const i = process.argv.indexOf(name);
  return i > 0 ? process.argv[i + 1] : undefined;
};
const QUICK = process.argv.includes('--quick');
const HOURS = Number(arg('--hours') ?? (QUICK ? 3 : 4));
/** AWS's MeterUsage quota per account and Region, calls per second (docs/aws-rules.md §3.5). */
const QUOTA = 10;
/** The capacity rule: calls an hour the quota allows. */
const CAPACITY = QUOTA * 3600;
const SHUTDOWN_TIMEOUT_S = Number(DEFAULTS.shutdownTimeoutSeconds);
const SPREAD_S = Number(arg('--spread') ?? DEFAULTS.sendJitterSeconds);
const BASELINE_SPREAD_S = 300;
const FLEETS = (arg('--fleet') ?? (QUICK ? '100x24,1000x24' : '100x24,1000x24,1500x24,2000x24,3800x1,3800x6'))
  .split(',')
  .map((f) => f.split('x').map(Number));
/**
 * Each simulated pod holds five open files (its ledger with its WAL and shared-memory files, and the
 * state-directory lock with its journal), all in this one process: the largest fleet must fit the open-file limit.
 */
const FILES_PER_POD = 5;
const openFileLimit = (() => {
  try {
    const line = readFileSync('/proc/self/limits', 'utf8')
      .split('\n')
      .find((l) => l.startsWith('Max open files'));
    return Number(line?.split(/\s+/)[3]);
  } catch {
    return Number.NaN;
  }
})();
for (const [pods] of FLEETS) {
  if (pods * FILES_PER_POD + 200 > openFileLimit) {
    console.error(
      `${pods} pods need about ${pods * FILES_PER_POD + 200} open files; this process may open ${openFileLimit} ` +
        `(ulimit -n). Raise the limit or pass a smaller --fleet.`,
    );
    process.exit(2);
  }
}
const SEED = Number(arg('--seed') ?? Math.floor(Math.random() * 2 ** 31));
const START = Date.parse('2026-03-02T00:00:00Z');
const PRODUCT = 'prod-fleet';
const silent = createLogger('silent');

/** A deterministic random source (Park-Miller), so that a run can be repeated with its seed. */
function seeded(seed) {
  let state = seed % 2147483647 || 1;
  return () => (state = (state * 48271) % 2147483647) / 2147483647;
}

/** A manual clock with a heap of timers: one clock for the whole fleet, moved by {@link Simulation.runUntil}. */
class SimClock {
  #nowMs;
  #heap = [];
  #seq = 0;
  constructor(startMs) {
    this.#nowMs = startMs;
    this.startMs = startMs;
  }
  now() {
    return this.#nowMs;
  }
  monotonicMs() {
    return this.#nowMs - this.startMs;
  }
  setTimer(atMs, fn) {
    const timer = { atMs: Math.max(atMs, this.#nowMs), seq: this.#seq++, fn, live: true };
    this.#push(timer);
    return () => {
      timer.live = false;
    };
  }
  /** Instant of the next live timer, or undefined. */
  next() {
    while (this.#heap.length > 0 && !this.#heap[0].live) this.#pop();
    return this.#heap[0]?.atMs;
  }
  /** Moves to `atMs` and fires every live timer due then, in order. */
  fireAt(atMs) {
    this.#nowMs = Math.max(this.#nowMs, atMs);
    while (this.#heap.length > 0 && this.#heap[0].atMs <= this.#nowMs) {
      const timer = this.#pop();
      if (timer.live) timer.fn();
    }
  }
  #less(a, b) {
    return a.atMs < b.atMs || (a.atMs === b.atMs && a.seq < b.seq);
  }
  #push(timer) {
    const h = this.#heap;
    h.push(timer);
    for (let i = h.length - 1; i > 0;) {
      const parent = (i - 1) >> 1;
      if (!this.#less(h[i], h[parent])) break;
      [h[i], h[parent]] = [h[parent], h[i]];
      i = parent;
    }
  }
  #pop() {
    const h = this.#heap;
    const top = h[0];
    const last = h.pop();
    if (h.length > 0) {
      h[0] = last;
      for (let i = 0; ;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < h.length && this.#less(h[l], h[m])) m = l;
        if (r < h.length && this.#less(h[r], h[m])) m = r;
        if (m === i) break;
        [h[i], h[m]] = [h[m], h[i]];
        i = m;
      }
    }
    return top;
  }
}

/**
 * The account's MeterUsage endpoint: the emulator's token bucket for the quota, AWS's once-per-hour rule per
 * identity, dimension and hour (a resend with the same quantity is answered again, not counted), and the
 * six-hour window. Answers at once (no network latency).
 */
class SimulatedMetering {
  constructor(clock) {
    this.clock = clock;
    this.bucket = new TokenBucket(QUOTA, () => clock.now());
    this.records = new Map();
    this.delivered = 0;
    this.quantity = 0;
    this.throttled = 0;
    this.calls = 0;
    this.lastAcceptedByHour = new Map();
  }
  sender(identity) {
    return {
      send: async (request, options = {}) => {
        await options.onRequest?.();
        this.calls++;
        if (!this.bucket.take()) {
          this.throttled++;
          const error = { name: 'ThrottlingException', message: 'Rate exceeded', httpStatus: 400 };
          return { status: 'retryable', error, maybeDelivered: false };
        }
        const nowMs = this.clock.now();
        if (request.TimestampMs < nowMs - 6 * HOUR_MS) {
          const error = { name: 'InvalidUsageTimestampException', message: 'too old', httpStatus: 400 };
          return { status: 'expired', error };
        }
        const hourMs = Math.floor(request.TimestampMs / HOUR_MS) * HOUR_MS;
        const key = `${identity}|${request.UsageDimension}|${hourMs}`;
        const held = this.records.get(key);
        if (held !== undefined) {
          if (held === request.UsageQuantity) return { status: 'accepted', meteringRecordId: key };
          const error = { name: 'DuplicateRequestException', message: 'another quantity', httpStatus: 400 };
          return { status: 'duplicate', error };
        }
        this.records.set(key, request.UsageQuantity);
        this.delivered++;
        this.quantity += request.UsageQuantity;
        this.lastAcceptedByHour.set(hourMs, Math.max(this.lastAcceptedByHour.get(hourMs) ?? 0, nowMs));
        return { status: 'accepted', meteringRecordId: key };
      },
    };
  }
}

/** One pod: its own ledger, pacer, scheduler and handoffs, as the agent wires them (src/agent.ts). */
class Pod {
  constructor(sim, name) {
    this.sim = sim;
    this.name = name;
    this.stateDir = join(sim.dir, 'state', name);
  }
  async start() {
    const { sim } = this;
    mkdirSync(this.stateDir, { recursive: true });
    this.store = SqliteLedger.open({
      stateDir: this.stateDir,
      productCode: PRODUCT,
      dryRun: false,
      clock: sim.clock,
    });
    this.ledger = new InProcessLedger(this.store);
    this.scheduler = new Scheduler({
      ledger: this.ledger,
      sender: sim.metering.sender(this.name),
      clock: sim.clock,
      logger: silent,
      schedule: undefined,
      jitterSeconds: sim.spreadS,
      metrics: sim.observer,
      pacer: new SendPacer(sim.clock, sim.random),
      random: sim.random,
    });
    this.handoffs = new Handoffs({
      directory: sim.handoffDirectory,
      ledger: this.ledger,
      productCode: PRODUCT,
      dimensions: sim.dimensions,
      host: this.name,
      clock: sim.clock,
      logger: silent,
    });
    await this.handoffs.recover();
    await this.scheduler.start();
    sim.adopted += await this.handoffs.adoptAll();
  }
  async report() {
    const { sim } = this;
    if (this.stopped) return; // the app stopped with its pod
    const reports = sim.dimensions.map((dimension) => ({
      dimension,
      quantity: 1 + Math.floor(sim.random() * 100),
      tagsKey: canonicalTags({}),
      id: undefined,
    }));
    const result = await this.ledger.record(usageBatch(reports));
    if (result.kind === 'rejection') throw new Error(result.message);
    for (const r of reports) sim.acknowledged += r.quantity;
  }
  /** SIGTERM: the agent's shutdown flush and handoff (src/agent.ts), on the simulated clock. */
  async stop() {
    this.stopped = true;
    await this.handoffs.stop();
    const { sendUntilMs, options } = flushPlan(this.sim.clock.now(), SHUTDOWN_TIMEOUT_S * 1000, true);
    const yieldWhen = await this.handoffs.peerSignal();
    await this.scheduler.flush(sendUntilMs, { ...options, yieldWhen });
    const written = await this.handoffs.handOff();
    if (written !== undefined) this.sim.handedOff++;
    await this.ledger.close();
    rmSync(this.stateDir, { recursive: true, force: true }); // the volume dies with the pod
  }
  async leftOver() {
    const status = await this.ledger.status(this.sim.clock.now());
    let quantity = 0;
    for (const o of status.open) quantity += o.quantity;
    for (const q of status.pendingByDimension.values()) quantity += q;
    return { quantity, records: status.records.pending };
  }
}

class Simulation {
  constructor(pods, dims, spreadS, seed) {
    // Memory-backed when there is one: the figures are the fleet's behaviour, not this machine's fsync.
    const base = existsSync('/dev/shm') ? '/dev/shm' : tmpdir();
    this.dir = mkdtempSync(join(base, 'metering-fleet-bench-'));
    mkdirSync(join(this.dir, 'handoff'));
    this.handoffDirectory = new HandoffDirectory(join(this.dir, 'handoff'));
    this.clock = new SimClock(START);
    this.metering = new SimulatedMetering(this.clock);
    this.random = seeded(seed);
    this.spreadS = spreadS;
    this.podCount = pods;
    this.dimensions = Array.from({ length: dims }, (_, i) => `dim${String(i).padStart(2, '0')}`);
    this.acknowledged = 0;
    this.adopted = 0;
    this.handedOff = 0;
    this.sealed = 0;
    this.settled = 0;
    this.peakBacklog = 0;
    this.observer = {
      recordEvent: (event) => {
        if (event === 'sealed') this.sealed++;
        else this.settled++;
        this.peakBacklog = Math.max(this.peakBacklog, this.sealed - this.settled);
      },
      backgroundError: (code) => {
        throw new Error(`a send pass failed: ${code}`);
      },
    };
  }
  /** Lets every pod's work run until it waits for the clock again (the ledger is synchronous underneath). */
  async settle() {
    for (let i = 0; i < 3; i++) await new Promise((resolve) => setImmediate(resolve));
  }
  async runUntil(untilMs) {
    for (;;) {
      await this.settle();
      const next = this.clock.next();
      if (next === undefined || next > untilMs) break;
      this.clock.fireAt(next);
    }
    this.clock.fireAt(untilMs);
    await this.settle();
  }
  /**
   * Runs `work` (promises waiting on the clock, and on real file I/O for handoffs) while moving the clock, up to
   * `untilMs` at most: past it, only I/O is waited for.
   */
  async during(work, untilMs) {
    let done = false;
    const all = Promise.all(work).finally(() => (done = true));
    const giveUpAt = performance.now() + 120_000;
    while (!done) {
      await this.settle();
      const next = this.clock.next();
      if (done) break;
      if (next !== undefined && next <= untilMs) this.clock.fireAt(next);
      else if (performance.now() > giveUpAt) throw new Error('work waits past its deadline');
      else await new Promise((resolve) => setTimeout(resolve, 1));
    }
    return all;
  }
  /** Hourly: each pod reports at a random minute of the hour; every pod's cron ticks at the hour. */
  planHour(hourMs, pods) {
    for (const pod of pods) {
      this.clock.setTimer(hourMs + Math.floor(this.random() * (HOUR_MS - 60_000)), () =>
        this.track(pod.report()),
      );
    }
    this.clock.setTimer(hourMs + HOUR_MS, () => {
      for (const pod of this.live) pod.scheduler.tick();
    });
  }
  track(promise) {
    promise.catch((err) => {
      console.error(err);
      process.exit(1);
    });
  }
  async run(hours) {
    const t0 = performance.now();
    let generation = 0;
    const spawn = async (count) => {
      const pods = Array.from({ length: count }, (_, i) => new Pod(this, `g${generation}p${i}`));
      generation++;
      for (const pod of pods) await pod.start();
      return pods;
    };
    this.live = await spawn(this.podCount);
    const rolloutHour = Math.floor(hours / 2);
    let rollout;
    for (let h = 0; h < hours; h++) {
      const hourMs = START + h * HOUR_MS;
      if (h === rolloutHour) {
        // The usage of the first 10 minutes, then the whole fleet replaced at once.
        this.planHour(hourMs, this.live);
        await this.runUntil(hourMs + 10 * 60_000);
        const stopping = this.live;
        this.live = [];
        const startedMs = this.clock.now();
        const before = this.metering.delivered;
        await this.during(
          stopping.map((pod) => pod.stop()),
          startedMs + SHUTDOWN_TIMEOUT_S * 1000,
        );
        rollout = {
          seconds: (this.clock.now() - startedMs) / 1000,
          deliveredAtStop: this.metering.delivered - before,
          handedOff: this.handedOff,
        };
        this.live = await spawn(this.podCount);
        rollout.adopted = this.adopted;
        // The replacements report for the rest of the hour.
        for (const pod of this.live) {
          const atMs =
            this.clock.now() + Math.floor(this.random() * (hourMs + HOUR_MS - this.clock.now() - 60_000));
          this.clock.setTimer(atMs, () => this.track(pod.report()));
        }
        this.clock.setTimer(hourMs + HOUR_MS, () => {
          for (const pod of this.live) pod.scheduler.tick();
        });
        await this.runUntil(hourMs + HOUR_MS);
        continue;
      }
      this.planHour(hourMs, this.live);
      await this.runUntil(hourMs + HOUR_MS);
    }
    // No more usage: let the fleet deliver what is left, for up to six hours (AWS's window).
    const endOfUsageMs = START + hours * HOUR_MS;
    await this.runUntil(endOfUsageMs + 6 * HOUR_MS);
    let leftQuantity = 0;
    let leftRecords = 0;
    for (const pod of this.live) {
      const left = await pod.leftOver();
      leftQuantity += left.quantity;
      leftRecords += left.records;
    }
    const handoffsLeft = readdirSync(join(this.dir, 'handoff')).filter((f) =>
      f.startsWith('handoff-'),
    ).length;
    for (const pod of this.live) await pod.ledger.close();
    rmSync(this.dir, { recursive: true, force: true });
    const m = this.metering;
    const deliverMinutes = [];
    for (let h = 0; h < hours; h++) {
      const hourMs = START + h * HOUR_MS;
      const last = m.lastAcceptedByHour.get(hourMs);
      deliverMinutes.push(last === undefined ? null : (last - hourMs - HOUR_MS) / 60_000);
    }
    return {
      pods: this.podCount,
      dims: this.dimensions.length,
      spreadS: this.spreadS,
      callsPerHour: this.podCount * this.dimensions.length,
      deliverMinutes,
      delivered: m.delivered,
      throttled: m.throttled,
      throttledPerDelivered: m.throttled / Math.max(1, m.delivered),
      peakBacklog: this.peakBacklog,
      acknowledged: this.acknowledged,
      billed: m.quantity,
      leftQuantity,
      leftRecords,
      handoffsLeft,
      lost: this.acknowledged - m.quantity - leftQuantity,
      rollout,
      wallSeconds: (performance.now() - t0) / 1000,
    };
  }
}

const fmt = (n) => n.toLocaleString('en-US');
const minutes = (list) =>
  list.map((m) => (m === null ? '—' : m < 0 ? 'in the hour' : `${m.toFixed(0)}`)).join(' / ');

console.log(
  `fleet benchmark: quota ${QUOTA} MeterUsage/s (capacity ${fmt(CAPACITY)} calls an hour), ${HOURS} h of usage with a ` +
    `rollout at hour ${Math.floor(HOURS / 2)} + 10 min, shutdown timeout ${SHUTDOWN_TIMEOUT_S} s, seed ${SEED}`,
);
const results = { seed: SEED, quota: QUOTA, hours: HOURS, fleets: [] };
for (const [pods, dims] of FLEETS) {
  for (const spreadS of SPREAD_S === BASELINE_SPREAD_S ? [SPREAD_S] : [SPREAD_S, BASELINE_SPREAD_S]) {
    const r = await new Simulation(pods, dims, spreadS, SEED).run(HOURS);
    results.fleets.push(r);
    const load = r.callsPerHour / CAPACITY;
    console.log(
      `\n${fmt(pods)} pods × ${dims} dimensions = ${fmt(r.callsPerHour)} calls/h (${(100 * load).toFixed(0)}% of capacity), ` +
        `spread ${spreadS} s${spreadS === BASELINE_SPREAD_S && SPREAD_S !== BASELINE_SPREAD_S ? ' (baseline)' : ''}`,
    );
    console.log(`  minutes after each hour's end to its last record: ${minutes(r.deliverMinutes)}`);
    console.log(
      `  throttled ${fmt(r.throttled)} for ${fmt(r.delivered)} delivered (${r.throttledPerDelivered.toFixed(2)} per record); ` +
        `peak backlog ${fmt(r.peakBacklog)} records`,
    );
    console.log(
      `  rollout: stopped in ${r.rollout.seconds.toFixed(1)} s, ${fmt(r.rollout.deliveredAtStop)} delivered while stopping, ` +
        `${fmt(r.rollout.handedOff)} handoffs, ${fmt(r.rollout.adopted)} adopted`,
    );
    console.log(
      `  acknowledged ${fmt(r.acknowledged)} units, billed ${fmt(r.billed)}, still pending ${fmt(r.leftQuantity)} ` +
        `(${fmt(r.leftRecords)} records, ${r.handoffsLeft} handoffs) 6 h after the last usage; lost ${fmt(r.lost)}` +
        `  [${r.wallSeconds.toFixed(0)} s]`,
    );
    if (r.lost !== 0 || r.handoffsLeft !== 0) {
      console.error('  USAGE LOST OR STRANDED');
      process.exitCode = 1;
    }
  }
}
mkdirSync(join(ROOT, 'bench', 'results'), { recursive: true });
writeFileSync(join(ROOT, 'bench', 'results', 'fleet.json'), `${JSON.stringify(results, null, 2)}\n`);
