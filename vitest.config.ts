import { defineConfig } from 'vitest/config';

// The image test (test/image) builds and runs the container: it runs on its own, after the rest, when
// TEST_IMAGE is set, so its build load never competes with the timing-sensitive process tests.
const image = process.env['TEST_IMAGE'] !== undefined;
// .ci/run sets VITEST_JSON_REPORT so that it can print the plain "N passed, N failed" line.
const jsonReport = process.env['VITEST_JSON_REPORT'];
// The process and fault tests run a second time on the image's Node.js (METERING_TEST_NODE_DIR): a report of their own.
const imageNode = process.env['METERING_TEST_NODE_DIR'] !== undefined;
const reportSuffix = image ? '-image' : imageNode ? '-image-node' : '';

export default defineConfig({
  test: {
    include: image ? ['test/image/**/*.test.ts'] : ['test/**/*.test.ts'],
    exclude: image ? [] : ['test/image/**', 'node_modules/**'],
    testTimeout: 30_000,
    hookTimeout: 200_000,
    pool: 'forks',
    reporters: jsonReport ? ['default', 'json'] : ['default'],
    ...(jsonReport ? { outputFile: { json: jsonReport.replace(/\.json$/, `${reportSuffix}.json`) } } : {}),
    coverage: {
      provider: 'v8',
      include: ['src/**'],
      // The level the suite reaches in-process (child processes are not counted): a change may raise it, never
      // lower it. `npm test` runs the main suite with coverage, so CI enforces it.
      thresholds: { statements: 76, branches: 72, functions: 75, lines: 77 },
    },
  },
});
