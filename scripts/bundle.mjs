// Bundles the `metering-sidecar` command into dist/main.js, after `tsc` has built dist/ (`npm run build`).
//
// Why: Node.js resolves, reads and compiles every module file a process imports, and the sidecar with its
// libraries imports about 190 (120 of them the AWS SDK's, prom-client's and pino's CommonJS files). One file for
// the command, and one per part it loads only when needed (the agent with the AWS SDK, the embedded emulator, the
// doctor, the export), starts the sidecar about 45 ms sooner and holds about 7 MB less when idle
// (docs/benchmarks.md, "Cold start" and "Footprint"). The code is the same: nothing is minified, and the parts
// loaded later stay separate files under dist/chunks/, so a command still loads only what it runs. Names are not
// pinned (`keepNames`): that wraps every function created, per request too, and cost 15% more CPU per record;
// the sidecar's classes keep their names all the same (a class assigned to a name is named by it), which the
// process tests check through a logged error's type.
//
// What stays outside the bundle: better-sqlite3 (a native addon, found in node_modules at run time) and pino-pretty
// (required only for METERING_LOG_FORMAT=pretty). The rest of dist/ is tsc's output, unchanged: the library that
// package.json exports, its type declarations, and the modules the benchmarks import.
import { rmSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const root = fileURLToPath(new URL('..', import.meta.url));

rmSync(`${root}dist/chunks`, { recursive: true, force: true });
await build({
  absWorkingDir: root,
  entryPoints: { main: 'src/main.ts' },
  outdir: 'dist',
  chunkNames: 'chunks/[name]-[hash]',
  bundle: true,
  splitting: true,
  format: 'esm',
  platform: 'node',
  target: 'node20',
  external: ['better-sqlite3', 'pino-pretty'],
  sourcemap: 'linked',
  sourcesContent: false,
  legalComments: 'eof',
  // The bundled CommonJS libraries call require() for Node.js's own modules; an ES module has none of its own.
  banner: {
    js: "import { createRequire as __metering_createRequire } from 'node:module';\nconst require = __metering_createRequire(import.meta.url);",
  },
  logLevel: 'warning',
});
