// The baseline of `npm run bench` group 4, run as its own process like the sidecar: the 24 MeterUsage calls of
// one sealed hour (24 dimensions x 2,500 tag sets), made one after another with the SDK and its default options.
// Prints the milliseconds they took, from the first call to the last answer.
//   node bench/directCalls.mjs ENDPOINT_URL
import { performance } from 'node:perf_hooks';
import { MarketplaceMeteringClient, MeterUsageCommand } from '@aws-sdk/client-marketplace-metering';

const [endpoint] = process.argv.slice(2);
const client = new MarketplaceMeteringClient({
  region: 'us-east-1',
  endpoint,
  credentials: { accessKeyId: 'BASE', secretAccessKey: 'x' },
  maxAttempts: 1,
});
const allocations = Array.from({ length: 2500 }, (_, i) => ({
  AllocatedUsageQuantity: 1,
  Tags: [{ Key: 'tenant', Value: `t${i}` }],
}));
const start = performance.now();
for (let d = 0; d < 24; d++) {
  await client.send(
    new MeterUsageCommand({
      ProductCode: 'local-product',
      Timestamp: new Date(),
      UsageDimension: `dim${d}`,
      UsageQuantity: 2500,
      UsageAllocations: allocations,
    }),
  );
}
console.log(String(performance.now() - start));
client.destroy();
