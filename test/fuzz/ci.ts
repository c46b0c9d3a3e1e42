// The CI share of the fuzzing: each test/fuzz/ci_*.test.ts runs CI_SHARE operations from its own
// seeds in CI_LANES worker processes (src/jobs/pool.ts), so the files together run more than a
// million operations and use every core even when vitest runs one file at a time (its default
// on a 2-core machine: availableParallelism() - 1 workers). A failure prints the shrunk case and
// the command that replays it.
import { expect, it } from 'vitest';
import { fuzzParallel, formatCounterexample } from '../../src/fuzz/runner.ts';
import { formatSummary } from '../../src/commands/fuzz.ts';

/** Files × share ≥ 1,000,000 operations. */
export const CI_FILES = 2;
export const CI_SHARE = Math.ceil(1_000_000 / CI_FILES);
export const CI_LANES = 2;

export function ciFuzz(seed: number): void {
  it(`runs ${CI_SHARE} operations from seed ${seed} on ${CI_LANES} threads with no invariant violation and no unexpected report`, async () => {
    const s = await fuzzParallel({ seed, ops: CI_SHARE, jobs: CI_LANES, shrinkMs: 30_000 });
    const c = s.counterexample;
    if (c) throw new Error(`${formatSummary(seed, s)}\n\n${formatCounterexample(c)}`);
    console.log(formatSummary(seed, s));
    expect(s.ops).toBeGreaterThanOrEqual(CI_SHARE);
    expect(s.checks).toBeGreaterThan(CI_SHARE / 100);
  }, 900_000);
}
