/**
 * src/commands/shootdown.ts — `mmulab shootdown`: TLB shootdown experiments
 * (src/experiments/shootdown.ts). Sweeps CPUs, pages per flush, flush policy (Linux, always
 * full, always per page, LATR), lazy TLB, PCIDs, batching and the operation, and prints a table
 * (or --json), with --csv and --html files. Points run on local worker threads (--jobs) and can
 * be split across machines (--shard i/n, joined again with --merge). Exit code 1 when a
 * correctness check fails (a usable stale entry after a synchronous flush, a page LATR released
 * while still reachable, a KASAN report, a broken mm invariant); 2 for bad usage.
 */

import { readFileSync, statSync, writeFileSync, accessSync, constants as fsc } from 'node:fs';
import { dirname } from 'node:path';
import { InvalidArgumentError, type Command } from 'commander';
import { addCommonOptions, EXIT_FINDING, listOption, loadCosts, parseIntOption, progressBar, UsageError, type CommonOptions, type Io } from './common.ts';
import { parseShard, type Shard } from './ab.ts';
import { defaultJobs, runJobs } from '../jobs/pool.ts';
import type { ShootdownJobArgs } from '../jobs/registry.ts';
import { DEFAULT_CONFIG, mergeReports, OPS, POLICIES, POLICY_DESCRIPTIONS, sweepPoints, summarise, type OpName, type PointResult, type PolicyName, type ShootdownConfig, type ShootdownPoint, type ShootdownReport } from '../experiments/shootdown.ts';
import { checkProblems, formatTable, toCsv, toHtml } from '../experiments/shootdown-report.ts';

/** The default sweep (60 points). */
export const DEFAULTS = {
  cpus: [2, 4, 8],
  pages: [1, 8, 33, 64, 512],
  policies: [...POLICIES] as PolicyName[],
  lazy: ['on'] as ('on' | 'off')[],
  pcid: ['on'] as ('on' | 'off')[],
  batch: [1],
  ops: ['munmap'] as OpName[],
};

/** A comma- or repeat-separated list of integers in [min, max]. */
function intList(name: string, min: number, max: number): (v: string, prev: number[] | undefined) => number[] {
  return (v: string, prev: number[] | undefined) => {
    const out = [...(prev ?? [])];
    const parts = v.split(',').map((s) => s.trim());
    if (parts.some((p) => p === '')) throw new InvalidArgumentError(`${name} must be a comma-separated list of integers, got "${v}"`);
    for (const part of parts) {
      if (!/^\d+$/.test(part)) throw new InvalidArgumentError(`${name} must be a comma-separated list of integers, got "${part}"`);
      const n = Number(part);
      if (n < min || n > max) throw new InvalidArgumentError(`${name} values must be between ${min} and ${max}, got ${part}`);
      if (!out.includes(n)) out.push(n);
    }
    return out;
  };
}

interface ShootdownCliOptions extends CommonOptions {
  cpusList?: number[];
  pages?: number[];
  policy?: PolicyName[];
  lazy?: ('on' | 'off')[];
  pcid?: ('on' | 'off')[];
  batch?: number[];
  op?: OpName[];
  rounds: number;
  workingSet: number;
  hz: number;
  csv?: string;
  html?: string;
  jobs: number;
  shard?: Shard;
  merge?: string[];
}

/** Fail early, before a long sweep, if an output file cannot be written. */
function checkWritable(path: string, option: string): void {
  try {
    if (statSync(path, { throwIfNoEntry: false })?.isDirectory()) throw new Error('is a directory');
    accessSync(dirname(path) || '.', fsc.W_OK);
  } catch (e) {
    throw new UsageError(`${option} ${path}: cannot write there (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
}

function writeOut(path: string, text: string, option: string): void {
  try {
    writeFileSync(path, text);
  } catch (e) {
    throw new UsageError(`${option} ${path}: ${(e as Error).message}`);
  }
}

/** The grid order of a merged report: every dimension's values as a sweep would list them. */
function gridOf(points: readonly PointResult[]): ShootdownPoint[] {
  const uniq = <T>(xs: T[], cmp: (a: T, b: T) => number): T[] => [...new Set(xs)].sort(cmp);
  return sweepPoints({
    ops: uniq(points.map((p) => p.op), (a, b) => OPS.indexOf(a) - OPS.indexOf(b)),
    batch: uniq(points.map((p) => p.batch), (a, b) => a - b),
    pcid: uniq(points.map((p) => p.pcid), (a, b) => Number(b) - Number(a)),
    lazy: uniq(points.map((p) => p.lazy), (a, b) => Number(b) - Number(a)),
    cpus: uniq(points.map((p) => p.cpus), (a, b) => a - b),
    pages: uniq(points.map((p) => p.pages), (a, b) => a - b),
    policies: uniq(points.map((p) => p.policy), (a, b) => POLICIES.indexOf(a) - POLICIES.indexOf(b)),
  });
}

/** The command line, rebuilt from the options given on it (for the report's subtitle). */
function commandLine(cmd: Command, o: Record<string, unknown>): string {
  const parts = ['mmulab', cmd.name()];
  for (const opt of cmd.options) {
    const key = opt.attributeName();
    if (cmd.getOptionValueSource(key) !== 'cli') continue;
    const v = o[key];
    if (v === true) parts.push(opt.long!);
    else if (Array.isArray(v)) parts.push(opt.long!, v.join(opt.variadic ? ' ' : ','));
    else if (v && typeof v === 'object' && 'index' in v) parts.push(opt.long!, `${(v as Shard).index}/${(v as Shard).count}`);
    else if (v !== undefined && v !== false) parts.push(opt.long!, String(v));
  }
  return parts.join(' ');
}

export function register(program: Command, io: Io): void {
  const cmd = program
    .command('shootdown')
    .description('TLB shootdown experiments: initiator latency, IPIs, flushed entries and refill misses under Linux\'s flush policy, always-full, always-per-page and LATR');
  addCommonOptions(cmd)
    .option('--cpus-list <list>', `CPU counts to sweep, each 1..256 (default ${DEFAULTS.cpus.join(',')}; --cpus N alone means just N)`, intList('--cpus-list', 1, 256))
    .option('--pages <list>', `pages changed per flush, each 1..4096 (default ${DEFAULTS.pages.join(',')})`, intList('--pages', 1, 4096))
    .option('--policy <list>', `flush policies (${POLICIES.join(', ')}; default all)`, listOption('policy', POLICIES))
    .option('--lazy <list>', 'lazy TLB mode: on, off or on,off (default on)', listOption('--lazy value', ['on', 'off'] as const))
    .option('--pcid <list>', 'PCIDs: on, off or on,off (default on)', listOption('--pcid value', ['on', 'off'] as const))
    .option('--batch <list>', 'ranges changed per call, each 1..64: one flush for all where the kernel batches (default 1)', intList('--batch', 1, 64))
    .option('--op <list>', `what the initiator does: ${OPS.join(', ')} (default munmap)`, listOption('op', OPS))
    .option('--rounds <n>', 'rounds per point', parseIntOption('--rounds', 1, 1000), DEFAULT_CONFIG.rounds)
    .option('--working-set <n>', 'pages each other thread keeps touching', parseIntOption('--working-set', 1, 1024), DEFAULT_CONFIG.workingSet)
    .option('--hz <n>', 'scheduler ticks per second (LATR flushes at ticks)', parseIntOption('--hz', 10, 10_000), DEFAULT_CONFIG.hz)
    .option('--csv <file>', 'also write one CSV row per point')
    .option('--html <file>', 'also write a self-contained HTML report with charts')
    .option('--jobs <n>', 'worker threads', parseIntOption('--jobs', 1, 256), defaultJobs())
    .option('--shard <i/n>', 'run only every n-th point starting at the i-th (for batch schedulers); join the --json outputs with --merge', parseShard)
    .option('--merge <files...>', 'do not run: join the --json outputs of shards of one sweep and report them')
    .addHelpText(
      'after',
      `
Policies:
${POLICIES.map((p) => `  ${p.padEnd(9)} ${POLICY_DESCRIPTIONS[p]}`).join('\n')}

Each point runs a process with a thread per CPU; the threads on CPUs 1..N-1 keep a working set
in their TLBs, the main thread on CPU 0 maps, touches and then changes ranges of --pages pages.
Reported per changed range: the initiator's latency, IPIs, INVLPGs, TLB entries flushed, page
walks the flush caused on the other CPUs, and stale entries the inspector finds after the call.

Examples:
  mmulab shootdown                                   the default sweep (60 points)
  mmulab shootdown --cpus-list 2,4,8,16 --pages 1,33,34 --policy linux,latr
  mmulab shootdown --op munmap,dontneed,mprotect --lazy on,off --pcid on,off --cpus-list 4
  mmulab shootdown --batch 1,8 --op dontneed --html shootdown.html --csv shootdown.csv
  mmulab shootdown --json --shard 1/4 > part1.json   (then: mmulab shootdown --merge part*.json)`,
    )
    .action(async (o: ShootdownCliOptions) => {
      if (o.csv) checkWritable(o.csv, '--csv');
      if (o.html) checkWritable(o.html, '--html');
      const command = commandLine(cmd, o as unknown as Record<string, unknown>);
      let report: ShootdownReport;
      if (o.merge) {
        const docs = o.merge.map((f) => {
          try {
            return { name: f, report: JSON.parse(readFileSync(f, 'utf8')) as unknown };
          } catch (e) {
            throw new UsageError(`--merge ${f}: ${(e as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (e as Error).message}`);
          }
        });
        try {
          const merged = mergeReports(docs);
          report = mergeReports(docs, gridOf(merged.points));
        } catch (e) {
          throw new UsageError(`--merge ${(e as Error).message}`);
        }
      } else {
        if (o.engine !== 'deterministic') throw new UsageError('--engine parallel: shootdown experiments run on the deterministic engine only, so that each point is reproducible');
        const costs = loadCosts(o.costModel);
        const cpus = o.cpusList ?? (cmd.getOptionValueSource('cpus') === 'cli' ? [o.cpus] : DEFAULTS.cpus);
        const all = sweepPoints({
          ops: o.op ?? DEFAULTS.ops,
          cpus,
          pages: o.pages ?? DEFAULTS.pages,
          policies: o.policy ?? DEFAULTS.policies,
          lazy: (o.lazy ?? DEFAULTS.lazy).map((v) => v === 'on'),
          pcid: (o.pcid ?? DEFAULTS.pcid).map((v) => v === 'on'),
          batch: o.batch ?? DEFAULTS.batch,
        });
        const points = o.shard ? all.filter((_, i) => i % o.shard!.count === o.shard!.index - 1) : all;
        const config: ShootdownConfig = {
          seed: o.seed,
          rounds: o.rounds,
          workingSet: o.workingSet,
          hz: o.hz,
          ...(costs ? { kernel: { hwCosts: costs.model.hw, clockGhz: costs.model.clockGhz, costs: costs.kernel } } : {}),
        };
        const bar = await progressBar(io, points.length, 'shootdown');
        let results: PointResult[];
        try {
          results = await runJobs<PointResult>(points.map((point) => ({ kind: 'shootdown', args: { point, config } satisfies ShootdownJobArgs })), o.jobs, () => bar.tick());
        } finally {
          bar.stop();
        }
        report = summarise(results, config, o.shard);
      }
      if (o.csv) writeOut(o.csv, toCsv(report.points), '--csv');
      if (o.html) writeOut(o.html, toHtml(report, command), '--html');
      io.out(o.json ? JSON.stringify(report, null, 2) + '\n' : formatTable(report));
      const problems = checkProblems(report);
      if (problems.length) {
        io.err(`mmulab: shootdown checks failed: ${problems.join('; ')}\n`);
        io.exitCode = EXIT_FINDING;
      }
    });
}
