/**
 * src/commands/fuzz.ts — `mmulab fuzz`: random system-call sequences across processes, threads and
 * CPUs, with the bad inputs a kernel fuzzer uses, run with the invariant checkers on (src/fuzz/).
 * Runs until an operation count (--ops) or a time budget (--time) is used up; on the first failure
 * it shrinks the case to a minimal sequence, prints it with its seed and the one-line command that
 * replays it, and exits 1. `--replay SEED:PATH` runs exactly that case again. Of the shared
 * options, --cpus fixes every case's CPU count and --cost-model its kernel's costs, --engine its
 * engine (all three become part of the replay line). On the parallel engine a case's interleaving
 * is one CPU's turn at a time rather than the seeded scheduler's; the fuzz operations are system
 * calls and single accesses, made with the kernel on the main thread, so a case still replays, but
 * only the deterministic engine promises it; --debug-vm needs the deterministic engine.
 *
 * --json prints a run's summary, or the replayed case and its result (docs/schemas/fuzz.schema.json).
 *
 * Exit codes: 0 nothing found (or a replayed case passed), 1 a failure, 2 bad usage.
 */

import { randomInt } from 'node:crypto';
import { InvalidArgumentError, type Command } from 'commander';
import { COST_MODEL_HELP, engineOption, EXIT_FINDING, loadCosts, parseCpus, parseIntOption, parseSeed, progressBar, UsageError, type EngineName, type Io } from './common.ts';
import { PLANTS, PLANT_HELP, type Plant } from '../fuzz/executor.ts';
import { fuzz, fuzzParallel, formatCounterexample, replay, type FuzzSummary } from '../fuzz/runner.ts';
import { defaultJobs } from '../jobs/pool.ts';
import { DEFAULT_SHAPE, isPlant, parseReplay, replayCommand, type CaseShape, type ReplayToken } from '../fuzz/replay.ts';
import { fmtScenario } from '../fuzz/ops.ts';

/** The "schema" of fuzz --json (docs/schemas/fuzz.schema.json): a run's summary, or a replayed case. */
const FUZZ_SCHEMA = 'mmulab.fuzz/1';

interface FuzzCliOptions {
  time?: number;
  debugVm?: boolean;
  seed?: number;
  ops?: number;
  replay?: ReplayToken;
  opsPerRun: number;
  roundOps: number;
  checkEvery: number;
  plant?: Plant;
  shrinkTime: number;
  jobs: number;
  json: boolean;
  cpus?: number;
  engine: EngineName;
  costModel?: string;
}

function replayOption(v: string): ReplayToken {
  try {
    return parseReplay(v);
  } catch (e) {
    throw new InvalidArgumentError((e as Error).message);
  }
}

function plantOption(v: string): Plant {
  if (!isPlant(v)) throw new InvalidArgumentError(`unknown bug "${v}" (known: ${PLANTS.join(', ')})`);
  return v;
}

export function register(program: Command, io: Io): void {
  program
    .command('fuzz')
    .description('fuzz the kernel and the binder designs with random system calls and bad inputs, checking every invariant; shrink and print a replay line on failure')
    .option('--time <seconds>', 'time budget (default: 60 s unless --ops is given)', parseIntOption('--time', 1, 7 * 24 * 3600))
    .option('--seed <n>', 'first seed (default: random, printed)', parseSeed)
    .option('--cpus <n>', 'CPUs of every case, 1 to 64 (default: each case draws 2 to 4; part of the replay line)', parseCpus(1))
    .addOption(engineOption('deterministic (default: a failure replays exactly from its seed and path) or parallel (the kernel on the main thread, one CPU\'s turn at a time; part of the replay line; not with --debug-vm)'))
    .option('--cost-model <file>', `${COST_MODEL_HELP}: it changes the timing and with it the interleavings (part of the replay line)`)
    .option('--ops <n>', 'stop after this many operations', parseIntOption('--ops', 1, 1e12))
    .option('--replay <seed:path>', 'run the case a failure printed (SEED:PATH, e.g. 1234:5:2:1) and nothing else', replayOption)
    .option('--ops-per-run <n>', 'longest operation sequence of one case', parseIntOption('--ops-per-run', 1, 100_000), DEFAULT_SHAPE.opsPerRun)
    .option('--round-ops <n>', 'operations handed to the processes per round (they run concurrently within a round)', parseIntOption('--round-ops', 1, 10_000), DEFAULT_SHAPE.roundOps)
    .option('--check-every <n>', 'run the invariant checkers after this many operations', parseIntOption('--check-every', 1, 1_000_000), DEFAULT_SHAPE.checkEvery)
    .option('--debug-vm', 'checking mode: also audit the mm invariants after every scheduling step, inside the rounds (slow)')
    .option('--plant <bug>', `plant a bug to see the fuzzer catch it (${PLANTS.join(', ')})`, plantOption)
    .option('--shrink-time <seconds>', 'time limit for shrinking a failure', parseIntOption('--shrink-time', 1, 24 * 3600), 60)
    .option('--jobs <n>', 'worker processes, each fuzzing its own seeds (seed + i, seed + i + n, …) with a share of --ops', parseIntOption('--jobs', 1, 256), defaultJobs())
    .option('--json', 'print the result as JSON', false)
    .addHelpText(
      'after',
      `
Planted bugs:
${PLANTS.map((p) => `  ${p.padEnd(18)} ${PLANT_HELP[p]}`).join('\n')}

Examples:
  mmulab fuzz --time 600                  ten minutes from a random seed, on every core
  mmulab fuzz --seed 42 --ops 200000      a fixed amount of work, reproducibly
  mmulab fuzz --plant zap-without-flush   watch it find, shrink and print a planted bug
  mmulab fuzz --replay 1234:5:2:1         run one printed failure again
  mmulab fuzz --cpus 8 --cost-model slow-ipi.json --ops 50000    every case on 8 CPUs, other costs`,
    )
    .action(async (o: FuzzCliOptions) => {
      if (o.engine === 'parallel' && o.debugVm) throw new UsageError('--debug-vm audits the mm after every step of the deterministic engine; it does not run with --engine parallel');
      const costs = loadCosts(o.costModel);
      const shape: CaseShape = {
        opsPerRun: o.opsPerRun,
        roundOps: o.roundOps,
        checkEvery: o.checkEvery,
        plant: o.plant ?? null,
        cpus: o.cpus ?? null,
        ...(o.debugVm ? { debugVm: true } : {}),
        ...(o.engine === 'parallel' ? { engine: 'parallel' as const } : {}),
        costs: costs && o.costModel ? { file: o.costModel, kernel: { hwCosts: costs.model.hw, clockGhz: costs.model.clockGhz, costs: costs.kernel } } : null,
      };
      if (o.replay) {
        if (o.time !== undefined || o.ops !== undefined || o.seed !== undefined) throw new UsageError('--replay runs one case: it takes no --time, --ops or --seed');
        const { scenario, result } = replay(o.replay, shape);
        const cmd = replayCommand(o.replay, shape);
        if (o.json) io.out(JSON.stringify({ schema: FUZZ_SCHEMA, replay: cmd, scenario, result }, null, 2) + '\n');
        else {
          io.out(`${fmtScenario(scenario)}\n\n`);
          if (result.failure) io.out(`FAILURE (${result.failure.kind})${result.failure.op !== null ? ` at op ${result.failure.op}` : ''}: ${result.failure.message}\n\nreplay: ${cmd}\n`);
          else io.out(`the case passed: ${result.executed} operations, ${result.checks} checks\n`);
        }
        if (result.failure) io.exitCode = EXIT_FINDING;
        return;
      }
      const seed = o.seed ?? randomInt(0, 2 ** 31);
      const timeMs = o.time !== undefined ? o.time * 1000 : o.ops === undefined ? 60_000 : undefined;
      io.err(`mmulab fuzz: seed ${seed}${timeMs !== undefined ? `, ${timeMs / 1000} s` : ''}${o.ops !== undefined ? `, ${o.ops} operations` : ''}${o.jobs > 1 ? `, ${o.jobs} jobs` : ''}${shape.plant ? `, planted bug ${shape.plant}` : ''}${shape.cpus ? `, ${shape.cpus} CPUs` : ''}${o.costModel ? `, cost model ${o.costModel}` : ''}${shape.engine === 'parallel' ? ', parallel engine' : ''}\n`);
      let summary: FuzzSummary;
      if (o.jobs > 1) {
        summary = await fuzzParallel({ seed, shape, ops: o.ops, timeMs, shrinkMs: o.shrinkTime * 1000, jobs: o.jobs });
        report(io, seed, summary, o.json, settings(o, shape));
        return;
      }
      const bar = await progressBar(io, o.ops ?? Math.round((timeMs ?? 0) / 1000), 'fuzz');
      let shown = 0;
      try {
        summary = fuzz({
          seed,
          shape,
          ops: o.ops,
          timeMs,
          shrinkMs: o.shrinkTime * 1000,
          progress: (p) => {
            const now = o.ops !== undefined ? p.ops : Math.floor(p.ms / 1000);
            if (now > shown) {
              bar.tick(now - shown);
              shown = now;
            }
          },
        });
      } finally {
        bar.stop();
      }
      report(io, seed, summary, o.json, settings(o, shape));
    });
}

/** What the run was asked to do, as its --json records it (with the seed, enough to run it again). */
function settings(o: FuzzCliOptions, shape: CaseShape): Record<string, unknown> {
  return {
    ...(o.ops !== undefined ? { ops: o.ops } : {}),
    ...(o.time !== undefined || o.ops === undefined ? { timeSeconds: o.time ?? 60 } : {}),
    jobs: o.jobs,
    opsPerRun: shape.opsPerRun,
    roundOps: shape.roundOps,
    checkEvery: shape.checkEvery,
    plant: shape.plant,
    cpus: shape.cpus ?? null,
    costModel: o.costModel ?? null,
    debugVm: shape.debugVm === true,
    ...(shape.engine === 'parallel' ? { engine: 'parallel' } : {}),
  };
}

function report(io: Io, seed: number, summary: FuzzSummary, json: boolean, runSettings: Record<string, unknown>): void {
  const c = summary.counterexample;
  if (json) {
    io.out(JSON.stringify({ schema: FUZZ_SCHEMA, seed, settings: runSettings, ...summary, opsPerSecond: Math.round(summary.ops / Math.max(summary.ms / 1000, 1e-9)), counterexample: c ? { ...c, token: `${c.token.seed}:${c.token.path}` } : null }, null, 2) + '\n');
  } else {
    io.out(formatSummary(seed, summary) + '\n');
    if (c) io.out('\n' + formatCounterexample(c) + '\n');
  }
  if (c) io.exitCode = EXIT_FINDING;
}

function top(m: Record<string, number>, n = 8): string {
  const e = Object.entries(m).sort((a, b) => b[1] - a[1]);
  return e.length ? e.slice(0, n).map(([k, v]) => `${k} ${v}`).join(', ') + (e.length > n ? ', …' : '') : 'none';
}

export function formatSummary(seed: number, s: FuzzSummary): string {
  const rate = Math.round(s.ops / Math.max(s.ms / 1000, 1e-9));
  return [
    `seed ${seed}: ${s.cases} cases, ${s.ops} operations (${s.skipped} skipped) in ${(s.ms / 1000).toFixed(1)} s (${rate} ops/s), ${s.checks} invariant checks`,
    `  operations: ${top(s.byOp as Record<string, number>, 24)}`,
    `  expected outcomes: errno ${top(s.outcomes.errnos)}; signals ${top(s.outcomes.signals)}; binder user errors ${s.outcomes.binderUserErrors}; binder returns ${top(s.outcomes.binderReturns)}`,
    s.counterexample ? '  result: FAILURE (see below)' : '  result: no invariant violation, no unexpected report',
  ].join('\n');
}
