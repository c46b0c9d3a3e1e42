/**
 * kernel/sched/explore.ts — exploration mode: run one scenario under many schedules and report
 * every distinct outcome with a schedule that reproduces it (a stateless model checker in the
 * manner of CHESS: each schedule is a fresh, deterministic run; no state is saved between runs).
 *
 * A scenario is a function that builds a Kernel from the ScheduleSetup it is given (the setup
 * carries the seed and engine quantum and installs the chooser), runs it, and returns an outcome:
 * a string or a JSON-serialisable object. Outcomes are compared by their canonical JSON.
 *
 * Strategies:
 *  - "seeds": K seeds with the engine's own seeded tie-breaking; the schedule is the seed.
 *  - "dfs": systematic depth-first enumeration of the choices at the engine's choice points (a
 *    step where more than one CPU could run: exact clock ties, or with a window every CPU within
 *    the window of the earliest). Past the forced prefix a run keeps the CPU that ran last (or
 *    the earliest one if it cannot run); the preemption bound limits how often a run switches
 *    away from a CPU that could have continued (Musuvathi and Qadeer's context bounding).
 *  - "random": K random walks over the choice points (seeded by run number), within the same
 *    preemption bound.
 * With "dfs" and "random" the schedule is the list of CPUs chosen at each choice point, and
 * replay() forces exactly that list, failing loudly if the run diverges from it.
 *
 * Granularity: with quantum 1 (the default here) every engine turn resumes one task from one
 * scheduler yield to the next, so interleaving happens at the tasks' yields: the PREEMPT at the
 * end of each system call and every 64 user accesses, sched_yield (User.yield), lock and
 * wait-queue sleeps, and TLB-shootdown spins. Kernel code written for a test can add points with
 * `yield PREEMPT`. The default window is ANY_CPU (any CPU that can run may be chosen at every
 * step); virtual time then only orders events loosely (see EngineOptions.window in hw/engine.ts):
 * a CPU that is behind in time may observe what a CPU ahead of it has already done. Schedules are
 * plain JSON (ANY_CPU is a finite number for that reason).
 *
 * Determinism is assumed, not trusted: a replay that meets a choice point whose candidates do
 * not contain the recorded CPU throws ScheduleDivergence.
 */

import { Kernel, type KernelOptions } from '../kernel.ts';
import type { Choice } from '../../hw/engine.ts';
import { Random } from '../../hw/random.ts';

/** A window that admits every CPU that can do something (finite, so schedules survive JSON). */
export const ANY_CPU = Number.MAX_SAFE_INTEGER;

/** Everything needed to reproduce one run. */
export interface Schedule {
  seed: number;
  quantum: number;
  /** The engine's choice window in cycles (ANY_CPU: every CPU that can run). */
  window: number;
  /** The CPU chosen at each choice point; absent: the engine's seeded chooser decides. */
  choices?: number[];
}

export interface ScheduleSetup {
  readonly schedule: Schedule;
  /** Kernel options carrying the schedule's seed and quantum. */
  readonly options: { seed: number; quantum: number };
  /** A new kernel with `opts`, the schedule's seed and quantum, and the schedule attached. */
  kernel(opts?: KernelOptions): Kernel;
  /** Attach the schedule to a kernel built with `options` (once, before it runs). */
  attach(k: Kernel): void;
}

export type Scenario<O> = (setup: ScheduleSetup) => O;

export class ScheduleDivergence extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ScheduleDivergence';
  }
}

/** One choice point as a run met it. */
export interface ChoicePoint {
  /** Candidate CPUs, in CPU order. */
  cpus: number[];
  /** The CPU chosen. */
  chosen: number;
  /** The CPU that ran at the step before (-1 at the first). */
  previous: number;
  /** Preemptions taken before this point. */
  preemptionsBefore: number;
}

export interface ExploreOptions<O = unknown> {
  strategy: 'seeds' | 'dfs' | 'random';
  /** How many runs at most (K). Default 100. */
  schedules?: number;
  /** For "seeds": the seeds (default 1..K). For the others: the kernel seed (default 1). */
  seeds?: number[];
  seed?: number;
  /** Engine quantum in cycles (default 1). */
  quantum?: number;
  /** Choice window in cycles (default ANY_CPU for "dfs"/"random", 0 for "seeds"). */
  window?: number;
  /** "dfs"/"random": at most this many preemptions per run (default 2). */
  preemptionBound?: number;
  /** "dfs": alternatives are tried only at the first this many choice points (default 10,000). */
  maxDepth?: number;
  /** Canonical key of an outcome (default: canonical JSON). */
  key?: (o: O) => string;
}

export interface OutcomeReport<O> {
  key: string;
  outcome: O;
  /** The first schedule that produced it. */
  schedule: Schedule;
  /** How many runs produced it. */
  runs: number;
}

export interface ExploreResult<O> {
  outcomes: OutcomeReport<O>[];
  runs: number;
  /** "dfs": every schedule within the bounds was run. */
  exhausted: boolean;
}

/** Canonical JSON (object keys sorted), the default outcome key. */
export function outcomeKey(o: unknown): string {
  return JSON.stringify(o, (_k, v: unknown) => (v && typeof v === 'object' && !Array.isArray(v) ? Object.fromEntries(Object.entries(v as Record<string, unknown>).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) : v)) ?? String(o);
}

/** How a run chooses: the CPU to run, given the choice and the run so far. */
type Policy = (c: Choice, points: readonly ChoicePoint[], preemptions: number) => number;

interface RunRecord<O> {
  outcome: O;
  points: ChoicePoint[];
}

/** Run `scenario` once under `schedule`, choosing with `policy` (null: the engine's seeded default). */
function runOnce<O>(scenario: Scenario<O>, schedule: Schedule, policy: Policy | null): RunRecord<O> {
  const points: ChoicePoint[] = [];
  let preemptions = 0;
  let attached: Kernel | null = null;
  const options = { seed: schedule.seed, quantum: schedule.quantum };
  const attach = (k: Kernel) => {
    if (attached) throw new Error('explore: a schedule can be attached to one kernel only');
    if (k.engine.quantum !== schedule.quantum) throw new Error(`explore: the kernel's quantum is ${k.engine.quantum}, the schedule's ${schedule.quantum} (build it with setup.options)`);
    if (typeof schedule.window !== 'number' || !(schedule.window >= 0)) throw new RangeError(`explore: schedule window must be a non-negative number, got ${String(schedule.window)}`);
    attached = k;
    k.engine.window = schedule.window;
    if (!policy) return;
    k.engine.chooser = (c: Choice) => {
      const cpu = policy(c, points, preemptions);
      const i = c.cpus.indexOf(cpu);
      if (i < 0) throw new ScheduleDivergence(`choice point ${points.length}: CPU ${cpu} is not among the candidates ${c.cpus.join(',')}`);
      const preempt = c.previous >= 0 && cpu !== c.previous && c.cpus.includes(c.previous);
      points.push({ cpus: c.cpus.slice(), chosen: cpu, previous: c.previous, preemptionsBefore: preemptions });
      if (preempt) preemptions++;
      return i;
    };
  };
  const setup: ScheduleSetup = {
    schedule,
    options,
    attach,
    kernel: (opts: KernelOptions = {}) => {
      const k = new Kernel({ ...opts, seed: schedule.seed, quantum: schedule.quantum });
      attach(k);
      return k;
    },
  };
  const outcome = scenario(setup);
  if (!attached) throw new Error('explore: the scenario did not attach its schedule (use setup.kernel() or setup.attach(k))');
  return { outcome, points };
}

/** Keep running the CPU that ran last if it can, else the earliest candidate (lowest CPU on ties). */
function continuePrevious(c: Choice): number {
  if (c.previous >= 0 && c.cpus.includes(c.previous)) return c.previous;
  if (!c.times) return c.cpus[0]!;
  let best = 0;
  for (let i = 1; i < c.cpus.length; i++) if (c.times[i]! < c.times[best]!) best = i;
  return c.cpus[best]!;
}

/** Would choosing `cpu` at `c` preempt the CPU that ran last? */
function isPreemption(cpus: readonly number[], previous: number, cpu: number): boolean {
  return previous >= 0 && cpu !== previous && cpus.includes(previous);
}

/** Force `prefix`, then continue with `after`. */
function prefixPolicy(prefix: readonly number[], after: Policy): Policy {
  return (c, points, preemptions) => {
    const d = points.length;
    if (d < prefix.length) {
      const cpu = prefix[d]!;
      if (!c.cpus.includes(cpu)) throw new ScheduleDivergence(`choice point ${d}: the recorded CPU ${cpu} is not among the candidates ${c.cpus.join(',')} (the scenario is not deterministic)`);
      return cpu;
    }
    return after(c, points, preemptions);
  };
}

/** Run `scenario` under many schedules; every distinct outcome with the first schedule that gave it. */
export function explore<O>(scenario: Scenario<O>, opts: ExploreOptions<O>): ExploreResult<O> {
  const K = opts.schedules ?? 100;
  if (!Number.isInteger(K) || K < 1) throw new RangeError(`explore: schedules must be a positive integer, got ${String(opts.schedules)}`);
  const quantum = opts.quantum ?? 1;
  const key = opts.key ?? outcomeKey;
  const bound = opts.preemptionBound ?? 2;
  const found = new Map<string, OutcomeReport<O>>();
  const note = (outcome: O, schedule: Schedule) => {
    const kk = key(outcome);
    const r = found.get(kk);
    if (r) r.runs++;
    else found.set(kk, { key: kk, outcome, schedule, runs: 1 });
  };
  let runs = 0;
  let exhausted = false;

  if (opts.strategy === 'seeds') {
    const window = opts.window ?? 0;
    const seeds = opts.seeds ?? Array.from({ length: K }, (_, i) => i + 1);
    for (const seed of seeds.slice(0, K)) {
      const schedule: Schedule = { seed, quantum, window };
      note(runOnce(scenario, schedule, null).outcome, schedule);
      runs++;
    }
    return { outcomes: [...found.values()], runs, exhausted: false };
  }

  const seed = opts.seed ?? 1;
  const window = opts.window ?? ANY_CPU;
  if (opts.strategy === 'random') {
    for (let n = 0; n < K; n++) {
      const rng = new Random(seed * 1_000_003 + n);
      const policy: Policy = (c, _points, preemptions) => {
        const prev = c.previous;
        if (preemptions >= bound && prev >= 0 && c.cpus.includes(prev)) return prev;
        return c.cpus[rng.below(c.cpus.length)]!;
      };
      const r = runOnce(scenario, { seed, quantum, window }, policy);
      note(r.outcome, { seed, quantum, window, choices: r.points.map((p) => p.chosen) });
      runs++;
    }
    return { outcomes: [...found.values()], runs, exhausted: false };
  }

  if (opts.strategy !== 'dfs') throw new RangeError(`explore: unknown strategy ${String(opts.strategy)}`);
  const maxDepth = opts.maxDepth ?? 10_000;
  // The current path: one frame per choice point, with the alternatives already taken there.
  const frames: { point: ChoicePoint; tried: Set<number> }[] = [];
  for (;;) {
    const prefix = frames.map((f) => f.point.chosen);
    const r = runOnce(scenario, { seed, quantum, window }, prefixPolicy(prefix, continuePrevious));
    runs++;
    note(r.outcome, { seed, quantum, window, choices: r.points.map((p) => p.chosen) });
    for (let d = frames.length; d < Math.min(r.points.length, maxDepth); d++) frames.push({ point: r.points[d]!, tried: new Set([r.points[d]!.chosen]) });
    // Backtrack to the deepest point with an untried alternative within the preemption bound.
    let advanced = false;
    while (frames.length > 0 && !advanced) {
      const f = frames[frames.length - 1]!;
      const p = f.point;
      for (const cpu of p.cpus) {
        if (f.tried.has(cpu)) continue;
        if (p.preemptionsBefore + (isPreemption(p.cpus, p.previous, cpu) ? 1 : 0) > bound) continue;
        f.tried.add(cpu);
        f.point = { ...p, chosen: cpu };
        advanced = true;
        break;
      }
      if (!advanced) frames.pop();
    }
    if (!advanced) {
      exhausted = true;
      break;
    }
    if (runs >= K) break;
  }
  return { outcomes: [...found.values()], runs, exhausted };
}

/** Run `scenario` under `schedule` again: the same seed, or exactly the recorded choices. */
export function replay<O>(scenario: Scenario<O>, schedule: Schedule): O {
  if (!schedule.choices) return runOnce(scenario, schedule, null).outcome;
  const choices = schedule.choices;
  const strict: Policy = (c, points) => {
    throw new ScheduleDivergence(`choice point ${points.length}: the run has more choice points than the ${choices.length} recorded (candidates ${c.cpus.join(',')})`);
  };
  const r = runOnce(scenario, schedule, prefixPolicy(choices, strict));
  if (r.points.length !== choices.length) throw new ScheduleDivergence(`the run met ${r.points.length} choice points, the schedule records ${choices.length}`);
  return r.outcome;
}
