// What each module the sidecar loads adds to its resident memory (npm run bench:modules; not part of npm test).
// Each step runs in a fresh Node.js process that imports the steps before it and then this one, collects
// garbage, and reads VmRSS: a step's share is the difference to the step before, in the order the sidecar
// loads them; the last two are the sidecar's own modules and its ledger, opened.
//
//   node bench/modules.mjs [--runs N] [--image-node]   (median of N runs per step, default 3; --image-node: under
//                                                      the image's Node.js, prepared by scripts/image-node.sh)
import { spawnSync } from 'node:child_process';
import { childNode } from './childNode.mjs';

const runsAt = process.argv.indexOf('--runs');
const runs = runsAt > 0 ? Number(process.argv[runsAt + 1]) : 3;
const { node: NODE, root, version } = childNode();
// Where dist/ and node_modules/ are: this checkout, or the copy built for the image's Node.js.
const ROOT = `${root}/`;

const STEPS = [
  ['node:http, node:net (Node.js itself)', "await import('node:http'); await import('node:net');"],
  ['pino', "await import('pino');"],
  ['prom-client', "await import('prom-client');"],
  [
    'prom-client default collectors',
    "const p = await import('prom-client'); globalThis.keepRegistry = new p.Registry(); p.collectDefaultMetrics({ register: globalThis.keepRegistry });",
  ],
  ['node-cron', "await import('node-cron');"],
  ['@aws-sdk/client-marketplace-metering (module)', "await import('@aws-sdk/client-marketplace-metering');"],
  [
    'a MarketplaceMeteringClient and a resolved credential chain',
    "const m = await import('@aws-sdk/client-marketplace-metering'); const c = new m.MarketplaceMeteringClient({ region: 'us-east-1' }); globalThis.keepClient = c; await c.config.credentials().catch(() => {});",
  ],
  ['the sidecar’s own modules (dist/agent.js)', `await import(${JSON.stringify(`${ROOT}dist/agent.js`)});`],
  [
    'the ledger (better-sqlite3), opened',
    `const { SqliteLedger } = await import(${JSON.stringify(`${ROOT}dist/ledger/sqliteLedger.js`)}); const { mkdtempSync } = await import('node:fs'); const { tmpdir } = await import('node:os'); globalThis.keepLedger = SqliteLedger.open({ stateDir: mkdtempSync(tmpdir() + '/modules-'), productCode: 'p', dryRun: false, clock: { now: Date.now, monotonicMs: () => performance.now(), setTimer() {} } });`,
  ],
];

function rssAfter(code) {
  const script = `${code}\n{ globalThis.gc(); await new Promise((r) => setTimeout(r, 300)); globalThis.gc();\nconst m = /VmRSS:\\s+(\\d+)/.exec((await import('node:fs')).readFileSync('/proc/self/status', 'utf8'));\nconsole.log(Number(m[1]) / 1024); process.exit(0); }`;
  const values = [];
  for (let i = 0; i < runs; i++) {
    const out = spawnSync(NODE, ['--expose-gc', '--input-type=module', '-e', script], {
      cwd: ROOT,
      encoding: 'utf8',
      env: {
        ...process.env,
        AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true',
        AWS_EC2_METADATA_DISABLED: 'true',
      },
    });
    if (out.status !== 0) throw new Error(out.stderr);
    values.push(Number(out.stdout.trim()));
  }
  return values.sort((a, b) => a - b)[Math.floor(values.length / 2)];
}

console.log(`RSS per module, Node ${version}, median of ${runs} runs per step\n`);
console.log('| step | RSS (MB) | added (MB) |');
console.log('|---|---:|---:|');
let code = '';
let before = rssAfter('');
console.log(`| an empty Node.js process | ${before.toFixed(1)} | |`);
for (const [name, step] of STEPS) {
  code += `{ ${step} }\n`;
  const rss = rssAfter(code);
  console.log(`| ${name} | ${rss.toFixed(1)} | ${(rss - before).toFixed(1)} |`);
  before = rss;
}
