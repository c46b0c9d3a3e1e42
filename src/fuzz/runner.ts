/**
 * src/fuzz/runner.ts — the fuzzing loop: fast-check generates scenarios (src/fuzz/ops.ts), the
 * executor runs and judges each (src/fuzz/executor.ts), and on the first failure fast-check
 * shrinks the scenario to a minimal one that still fails. The loop runs in chunks of a few cases,
 * each chunk with its own seed (seed, seed + 1, …), until an operation count or a time budget is
 * reached, so a long run can stop at any chunk boundary and every failure is named by one seed
 * and path (src/fuzz/replay.ts).
 *
 * Counting is honest: only operations the executor ran count (not generated ones, not the
 * re-runs fast-check makes while shrinking).
 */

import fc from 'fast-check';
import { arbScenario, fmtScenario, type OpName, type Scenario } from './ops.ts';
import { executeScenario, type ExecOptions, type ExecResult, type FuzzFailure } from './executor.ts';
import { mergeOutcomes, emptyOutcomes, bump, type ExpectedOutcomes } from './classify.ts';
import { DEFAULT_SHAPE, replayCommand, type CaseShape, type ReplayToken } from './replay.ts';

export interface FuzzOptions {
  seed: number;
  /** Chunk i uses seed `seed + i * seedStride` (default 1; parallel lanes interleave their seeds). */
  seedStride?: number;
  shape?: Partial<CaseShape>;
  /** Stop once at least this many operations ran. */
  ops?: number;
  /** Stop starting new chunks after this many milliseconds. */
  timeMs?: number;
  /** Cases per chunk (one fast-check run each; default 4). */
  chunk?: number;
  /**
   * Stop shrinking after this many milliseconds (default 60 s): the candidates fast-check offers
   * after that are passed over unrun, so it settles on the smallest failing case found so far.
   */
  shrinkMs?: number;
  /** Called after every case. */
  progress?: (p: FuzzProgress) => void;
}

export interface FuzzProgress {
  cases: number;
  ops: number;
  ms: number;
}

export interface Counterexample {
  token: ReplayToken;
  scenario: Scenario;
  failure: FuzzFailure;
  /** The one-line command that replays it. */
  replay: string;
  /** Cases fast-check ran while shrinking. */
  shrinkRuns: number;
}

export interface FuzzSummary {
  cases: number;
  ops: number;
  skipped: number;
  checks: number;
  ms: number;
  byOp: Partial<Record<OpName, number>>;
  outcomes: ExpectedOutcomes;
  counterexample: Counterexample | null;
}

class CaseFailed extends Error {
  constructor(readonly result: ExecResult) {
    super(`${result.failure!.kind}: ${result.failure!.message}`);
  }
}

export function execOptions(shape: CaseShape): ExecOptions {
  const kernel = { ...shape.costs?.kernel, ...(shape.debugVm ? { debugVm: true } : {}) };
  return { roundOps: shape.roundOps, checkEvery: shape.checkEvery, plant: shape.plant, ...(Object.keys(kernel).length ? { kernel } : {}), ...(shape.engine === 'parallel' ? { engine: 'parallel' as const } : {}) };
}

/** The property every generated scenario must satisfy (`skip()` true: pass without running). */
function property(shape: CaseShape, onCase: (r: ExecResult) => void, skip: () => boolean): fc.IProperty<[Scenario]> {
  const exec = execOptions(shape);
  return fc.property(arbScenario({ ops: shape.opsPerRun, cpus: shape.cpus }), (s) => {
    if (skip()) return;
    const r = executeScenario(s, exec);
    onCase(r);
    if (r.failure) throw new CaseFailed(r);
  });
}

/** fast-check parameters shared by runs and replays (they shape generation). */
function params(seed: number): fc.Parameters<[Scenario]> {
  return { seed, unbiased: true };
}

/** Fuzz until `ops` operations ran or `timeMs` passed, or a failure was found and shrunk. */
export function fuzz(o: FuzzOptions): FuzzSummary {
  const shape: CaseShape = { ...DEFAULT_SHAPE, ...o.shape };
  const t0 = performance.now();
  const sum: FuzzSummary = { cases: 0, ops: 0, skipped: 0, checks: 0, ms: 0, byOp: {}, outcomes: emptyOutcomes(), counterexample: null };
  const chunk = o.chunk ?? 4;
  let shrinking = false;
  let shrinkRuns = 0;
  let shrinkStart = 0;
  const shrinkMs = o.shrinkMs ?? 60_000;
  const skip = (): boolean => shrinking && performance.now() - shrinkStart > shrinkMs;
  const onCase = (r: ExecResult): void => {
    if (shrinking) {
      shrinkRuns++;
      return;
    }
    sum.cases++;
    sum.ops += r.executed;
    sum.skipped += r.skipped;
    sum.checks += r.checks;
    for (const [k, v] of Object.entries(r.byOp)) bump(sum.byOp as Record<string, number>, k, v);
    mergeOutcomes(sum.outcomes, r.outcomes);
    // The first failure: whatever runs next is fast-check shrinking it.
    if (r.failure) {
      shrinking = true;
      shrinkStart = performance.now();
    }
    o.progress?.({ cases: sum.cases, ops: sum.ops, ms: performance.now() - t0 });
  };
  for (let i = 0; ; i++) {
    if (o.ops !== undefined && sum.ops >= o.ops) break;
    if (o.timeMs !== undefined && performance.now() - t0 >= o.timeMs) break;
    if (o.ops === undefined && o.timeMs === undefined && i > 0) break;
    const seed = (o.seed + i * (o.seedStride ?? 1)) >>> 0;
    const details = fc.check(property(shape, onCase, skip), { ...params(seed), numRuns: chunk });
    if (details.failed && details.counterexample && details.counterexamplePath !== null) {
      const token = { seed, path: details.counterexamplePath };
      const scenario = details.counterexample[0];
      // Run the minimal case once more, with JavaScript stacks on, for the report.
      const again = executeScenario(scenario, { ...execOptions(shape), stacks: true });
      const failure = again.failure ?? (details.errorInstance instanceof CaseFailed ? details.errorInstance.result.failure! : { kind: 'crash' as const, message: String(details.errorInstance), op: null });
      sum.counterexample = { token, scenario, failure, replay: replayCommand(token, shape), shrinkRuns };
      break;
    }
    if (details.failed) throw new Error(`fast-check failed without a counterexample: ${String(details.errorInstance)}`);
  }
  sum.ms = performance.now() - t0;
  return sum;
}

/** What a job-pool worker runs (src/jobs/registry.ts): fuzz() without the progress callback. */
export type FuzzJobArgs = Omit<FuzzOptions, 'progress'>;

/**
 * fuzz() in `jobs` worker processes (src/jobs/pool.ts), each a lane with its own seeds (lane j of J
 * runs seeds seed + j, seed + j + J, …) and an equal share of the operations; the summaries are
 * added up and the first lane's counterexample (in lane order) is reported. With one job, fuzz()
 * itself.
 */
export async function fuzzParallel(o: FuzzJobArgs & { jobs: number }): Promise<FuzzSummary> {
  const jobs = Math.max(1, Math.floor(o.jobs));
  if (jobs === 1) return fuzz(o);
  const { runJobs } = await import('../jobs/pool.ts');
  const stride = (o.seedStride ?? 1) * jobs;
  const lanes: FuzzJobArgs[] = Array.from({ length: jobs }, (_, j) => ({
    ...o,
    seed: (o.seed + j * (o.seedStride ?? 1)) >>> 0,
    seedStride: stride,
    ops: o.ops === undefined ? undefined : Math.ceil(o.ops / jobs),
  }));
  const t0 = performance.now();
  const parts = await runJobs<FuzzSummary>(lanes.map((args) => ({ kind: 'fuzz', args })), jobs);
  const sum: FuzzSummary = { cases: 0, ops: 0, skipped: 0, checks: 0, ms: performance.now() - t0, byOp: {}, outcomes: emptyOutcomes(), counterexample: null };
  for (const p of parts) {
    sum.cases += p.cases;
    sum.ops += p.ops;
    sum.skipped += p.skipped;
    sum.checks += p.checks;
    for (const [k, v] of Object.entries(p.byOp)) bump(sum.byOp as Record<string, number>, k, v);
    mergeOutcomes(sum.outcomes, p.outcomes);
    sum.counterexample ??= p.counterexample;
  }
  return sum;
}

export interface ReplayResult {
  scenario: Scenario;
  result: ExecResult;
}

/** Regenerate the case `token` names and run it once (no shrinking). */
export function replay(token: ReplayToken, shapeIn: Partial<CaseShape> = {}): ReplayResult {
  const shape: CaseShape = { ...DEFAULT_SHAPE, ...shapeIn };
  let found: Scenario | null = null;
  const prop = fc.property(arbScenario({ ops: shape.opsPerRun, cpus: shape.cpus }), (s) => {
    found = s;
    return false; // fail at once: the path's first step names the case itself
  });
  const d = fc.check(prop, { ...params(token.seed), path: token.path, endOnFailure: true });
  const scenario = (d.counterexample?.[0] ?? found) as Scenario | null;
  if (!scenario) throw new RangeError(`replay ${token.seed}:${token.path}: the path names no case`);
  const result = executeScenario(scenario, { ...execOptions(shape), stacks: true });
  return { scenario, result };
}

/** The human-readable failure report `mmulab fuzz` prints. */
export function formatCounterexample(c: Counterexample): string {
  const f = c.failure;
  return [
    `FAILURE (${f.kind})${f.op !== null ? ` at op ${f.op}` : ''}: ${f.message}`,
    '',
    `seed ${c.token.seed}, path ${c.token.path} (shrunk in ${c.shrinkRuns} runs) — the minimal case:`,
    fmtScenario(c.scenario),
    '',
    `replay: ${c.replay}`,
  ].join('\n');
}
