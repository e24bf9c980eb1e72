/**
 * Seeded pseudo-random numbers for the benchmarks: every figure in
 * BENCHMARKS.md must come out the same on every run, so nothing here reads
 * Math.random or the clock.
 */

// The same seeded generator as the unit tests' random cases.
export { prng } from "../test/unit/helpers.js";

/** Log-uniform in [lo, hi): sizes and rates spread over orders of magnitude, as real datasets do. */
export function logUniform(rand: () => number, lo: number, hi: number): number {
  return lo * Math.exp(rand() * Math.log(hi / lo));
}

/** Exponential with the given mean: inter-arrival times of a Poisson process. */
export function exponential(rand: () => number, mean: number): number {
  return -mean * Math.log(1 - rand());
}

/** Fisher-Yates, in place. */
export function shuffle<T>(rand: () => number, xs: T[]): T[] {
  for (let i = xs.length - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    const tmp = xs[i] as T;
    xs[i] = xs[j] as T;
    xs[j] = tmp;
  }
  return xs;
}

/** Draws ranks 0..n-1 with P(k) proportional to 1/(k+1)^s: a few datasets get most jobs. */
export function zipf(n: number, s: number): (rand: () => number) => number {
  const cdf = new Float64Array(n);
  let total = 0;
  for (let k = 0; k < n; k++) {
    total += 1 / Math.pow(k + 1, s);
    cdf[k] = total;
  }
  for (let k = 0; k < n; k++) cdf[k] = (cdf[k] as number) / total;
  return (rand) => {
    const u = rand();
    let lo = 0;
    let hi = n - 1;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if ((cdf[mid] as number) < u) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  };
}
