/**
 * src/experiments/stats.ts — the statistics experiments report: percentiles (nearest-rank, as
 * perf and most latency tools report them), means with Student-t 95% confidence intervals
 * across seeds, and paired differences (design B − design A on the same seed), whose interval
 * says whether a difference is more than seed-to-seed noise.
 */

/** Nearest-rank percentile of an ascending-sorted array (p in [0, 100]); NaN when empty. */
export function percentile(sorted: readonly number[], p: number): number {
  if (!sorted.length) return NaN;
  if (p <= 0) return sorted[0]!;
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1]!;
}

export function mean(xs: readonly number[]): number {
  if (!xs.length) return NaN;
  let s = 0;
  for (const x of xs) s += x;
  return s / xs.length;
}

/** Sample standard deviation (n − 1). 0 for fewer than two values. */
export function stddev(xs: readonly number[]): number {
  if (xs.length < 2) return 0;
  const m = mean(xs);
  let s = 0;
  for (const x of xs) s += (x - m) * (x - m);
  return Math.sqrt(s / (xs.length - 1));
}

/** Two-sided 97.5% quantiles of Student's t for 1..30 degrees of freedom; 1.96 beyond. */
const T975 = [
  NaN, 12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.16, 2.145, 2.131, 2.12, 2.11, 2.101, 2.093, 2.086, 2.08, 2.074,
  2.069, 2.064, 2.06, 2.056, 2.052, 2.048, 2.045, 2.042,
];

export function tQuantile975(df: number): number {
  if (df < 1) return NaN;
  return df < T975.length ? T975[df]! : 1.96;
}

export interface Interval {
  mean: number;
  /** Half-width of the 95% confidence interval (NaN with a single sample). */
  half: number;
  n: number;
}

/** Mean and 95% confidence half-width of `xs` (treated as independent samples). */
export function confidence(xs: readonly number[]): Interval {
  const n = xs.length;
  const m = mean(xs);
  if (n < 2) return { mean: m, half: NaN, n };
  return { mean: m, half: (tQuantile975(n - 1) * stddev(xs)) / Math.sqrt(n), n };
}

/** Paired difference b[i] − a[i] (same seed), as a confidence interval. */
export function pairedDifference(a: readonly number[], b: readonly number[]): Interval {
  if (a.length !== b.length) throw new RangeError(`paired samples differ in length: ${a.length} vs ${b.length}`);
  return confidence(a.map((x, i) => b[i]! - x));
}

/** True when the interval excludes zero (the difference is more than noise at 95%). */
export function significant(iv: Interval): boolean {
  return Number.isFinite(iv.half) && Math.abs(iv.mean) > iv.half;
}
