import { defineConfig } from 'vitest/config';

// The image test (test/image) builds and runs the container: it runs on its own, after the rest, when
// TEST_IMAGE is set, so its build load never competes with the timing-sensitive process tests.
const image = process.env['TEST_IMAGE'] !== undefined;
// .ci/run sets VITEST_JSON_REPORT so that it can print the plain "N passed, N failed" line.
const jsonReport = process.env['VITEST_JSON_REPORT'];

export default defineConfig({
  test: {
    include: image ? ['test/image/**/*.test.ts'] : ['test/**/*.test.ts'],
    exclude: image ? [] : ['test/image/**', 'node_modules/**'],
    testTimeout: 30_000,
    hookTimeout: 200_000,
    pool: 'forks',
    reporters: jsonReport ? ['default', 'json'] : ['default'],
    ...(jsonReport
      ? { outputFile: { json: image ? jsonReport.replace(/\.json$/, '-image.json') : jsonReport } }
      : {}),
    coverage: {
      provider: 'v8',
      include: ['src/**'],
    },
  },
});
