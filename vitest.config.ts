import { defineConfig } from 'vitest/config';

// .ci/run sets VITEST_JSON_REPORT so that it can print the plain "N passed, N failed" line.
const jsonReport = process.env['VITEST_JSON_REPORT'];

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 30_000,
    hookTimeout: 30_000,
    pool: 'forks',
    reporters: jsonReport ? ['default', 'json'] : ['default'],
    ...(jsonReport ? { outputFile: { json: jsonReport } } : {}),
    coverage: {
      provider: 'v8',
      include: ['src/**'],
    },
  },
});
