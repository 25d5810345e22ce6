/**
 * Seeds for the randomised tests: each run prints its seed, and setting the named environment variable to a
 * printed seed replays the same random choices (timing-dependent scenarios may still differ).
 */

/** The seed to use: `process.env[variable]` when set, otherwise a fresh one. Prints it with how to replay. */
export function testSeed(label: string, variable: string): number {
  const given = process.env[variable];
  const seed = given !== undefined && /^\d+$/.test(given) ? Number(given) : Date.now() % 2 ** 31;
  console.log(`${label}: seed ${seed} (replay with ${variable}=${seed})`);
  return seed;
}

/** A small, fast deterministic generator (mulberry32) of numbers in [0, 1). */
export function seededRandom(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
