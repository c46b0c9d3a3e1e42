/**
 * src/commands/shootdown.ts — `mmulab shootdown`: TLB shootdown experiments
 * (src/experiments/shootdown.ts). Sweeps CPUs, pages per flush, flush policy (Linux, always
 * full, always per page, LATR), lazy TLB, PCIDs, batching and the operation, and prints a table
 * (or --json, docs/schemas/shootdown.schema.json), with --csv and --html files. Points run on
 * local worker processes (--jobs) and can be split across machines (--shard i/n; `mmulab merge`,
 * src/commands/merge.ts, joins the shards and reports them with emitShootdown). Exit code 1 when a
 * correctness check fails (a usable stale entry after a synchronous flush, a page LATR released
 * while still reachable, a KASAN report, a broken mm invariant); 2 for bad usage. The former
 * `shootdown --merge` is refused with a pointer to `mmulab merge`.
 */

import { InvalidArgumentError, Option, type Command } from 'commander';
import { addCommonOptions, checkWritable, EXIT_FINDING, listOption, loadCosts, parseIntOption, parseShard, progressBar, shardSlice, writeOutput, type CommonOptions, type Io, type Shard } from './common.ts';
import { defaultJobs, runJobs } from '../jobs/pool.ts';
import type { ShootdownJobArgs } from '../jobs/registry.ts';
import { DEFAULT_CONFIG, OPS, POLICIES, POLICY_DESCRIPTIONS, sweepPoints, summarise, type OpName, type PointResult, type PolicyName, type ShootdownConfig, type ShootdownGrid, type ShootdownReport } from '../experiments/shootdown.ts';
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
}

/** Print a report (table or JSON), write its CSV and HTML files, and set the exit code (also for mmulab merge). */
export function emitShootdown(io: Io, report: ShootdownReport, o: { json: boolean; csv?: string; html?: string; command: string }): void {
  if (o.csv) writeOutput(o.csv, toCsv(report.points), '--csv');
  if (o.html) writeOutput(o.html, toHtml(report, o.command), '--html');
  io.out(o.json ? JSON.stringify(report, null, 2) + '\n' : formatTable(report));
  const problems = checkProblems(report);
  if (problems.length) {
    io.err(`mmulab: shootdown checks failed: ${problems.join('; ')}\n`);
    io.exitCode = EXIT_FINDING;
  }
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
  addCommonOptions(cmd, {
    cpusHelp: 'run only this CPU count, 1 to 64 (the same as --cpus-list N)',
    cpusDefaultText: 'the --cpus-list sweep',
    engineHelp: 'deterministic (default: each point reproducible by seed) or parallel (the remote threads\' passes run on worker threads while the initiator flushes; each point is one run\'s); --jobs runs points in parallel either way',
  })
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
    .option('--jobs <n>', 'worker processes', parseIntOption('--jobs', 1, 256), defaultJobs())
    .option('--shard <i/n>', 'run only every n-th point starting at the i-th (for batch schedulers); join the --json outputs with mmulab merge', parseShard)
    .addOption(
      new Option('--merge <files...>').hideHelp().argParser(() => {
        throw new InvalidArgumentError('shootdown --merge is gone: join shards with mmulab merge FILES (it takes --json, --csv and --html)');
      }),
    )
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
  mmulab shootdown --json --shard 1/4 > part1.json   (then: mmulab merge part*.json --html r.html)`,
    )
    .action(async (o: ShootdownCliOptions) => {
      if (o.csv) checkWritable(o.csv, '--csv');
      if (o.html) checkWritable(o.html, '--html');
      const command = commandLine(cmd, o as unknown as Record<string, unknown>);
      const costs = loadCosts(o.costModel);
      const grid: ShootdownGrid = {
        ops: o.op ?? DEFAULTS.ops,
        cpus: o.cpusList ?? (cmd.getOptionValueSource('cpus') === 'cli' ? [o.cpus] : DEFAULTS.cpus),
        pages: o.pages ?? DEFAULTS.pages,
        policies: o.policy ?? DEFAULTS.policies,
        lazy: (o.lazy ?? DEFAULTS.lazy).map((v) => v === 'on'),
        pcid: (o.pcid ?? DEFAULTS.pcid).map((v) => v === 'on'),
        batch: o.batch ?? DEFAULTS.batch,
      };
      const points = shardSlice(sweepPoints(grid), o.shard);
      const config: ShootdownConfig = {
        seed: o.seed,
        rounds: o.rounds,
        workingSet: o.workingSet,
        hz: o.hz,
        ...(o.engine === 'parallel' ? { engine: 'parallel' as const } : {}),
        ...(costs ? { kernel: { hwCosts: costs.model.hw, clockGhz: costs.model.clockGhz, costs: costs.kernel }, costModel: o.costModel } : {}),
      };
      const bar = await progressBar(io, points.length, 'shootdown');
      let results: PointResult[];
      try {
        // A point's run time grows with its CPUs and with the pages every CPU reads.
        results = await runJobs<PointResult>(points.map((point) => ({ kind: 'shootdown', args: { point, config } satisfies ShootdownJobArgs, cost: point.cpus * (64 + point.pages * point.batch) })), o.jobs, () => bar.tick());
      } finally {
        bar.stop();
      }
      emitShootdown(io, summarise(results, config, grid, o.shard), { json: o.json, csv: o.csv, html: o.html, command });
    });
}
