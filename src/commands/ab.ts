/**
 * src/commands/ab.ts — `mmulab ab`, the default command: binder page-mapping designs compared
 * on the same workloads across seeds (src/experiments/ab.ts), printed as a table, as JSON
 * (docs/schemas/ab.schema.json) or as a self-contained HTML report. Sweeps run on local
 * worker processes (--jobs) and split across machines (--shard i/n); `mmulab merge`
 * (src/commands/merge.ts) joins the shards' JSON into one result. The JSON records the effective
 * cost model (options.costs), which merge compares across shards. The security scenarios of
 * `mmulab attack` run against each design on a machine of --cpus CPUs (at least ATTACK_MIN_CPUS,
 * recorded as attackCpus) with the same cost model.
 */

import { writeFileSync } from 'node:fs';
import { InvalidArgumentError, type Command } from 'commander';
import { abCases, attackCpusFor, attackMachineText, attackTargetOf, defaultConfigs, parseConfig, summarise, SUMMARY_METRICS, WORKLOAD_HELP, WORKLOADS, type AbCaseResult, type AbConfig, type AbMetrics, type AbResult, type AbVerdict, type WorkloadName } from '../experiments/ab.ts';
import { ATTACK_MIN_CPUS, SCENARIOS, type ScenarioOptions, type ScenarioResult } from '../experiments/attack.ts';
import { effectiveCostModel } from '../experiments/cost_model.ts';
import { addCommonOptions, checkWritable, EXIT_FINDING, kernelOptions, listOption, loadCosts, parseIntOption, parseShard, progressBar, shardSlice, UsageError, type CommonOptions, type Io, type Shard } from './common.ts';
import { defaultJobs, runJobs } from '../jobs/pool.ts';
import type { AbJobArgs } from '../jobs/registry.ts';
import { abHtml } from '../report/ab_html.ts';

function configOption(v: string, prev: AbConfig[] | undefined): AbConfig[] {
  const out = [...(prev ?? [])];
  for (const part of v.split(',').map((s) => s.trim()).filter(Boolean)) {
    let c: AbConfig;
    try {
      c = parseConfig(part);
    } catch (e) {
      throw new InvalidArgumentError((e as Error).message);
    }
    if (!out.some((x) => x.label === c.label)) out.push(c);
  }
  return out;
}

interface AbCliOptions extends CommonOptions {
  design?: AbConfig[];
  workload?: WorkloadName[];
  seeds: number;
  iterations: number;
  jobs: number;
  shard?: Shard;
  html?: string;
  attack: boolean;
}

/** A result file as `ab --json` writes it (one shard or all of it). */
export interface AbFile extends AbResult {
  shard?: Shard;
}

export function register(program: Command, io: Io): void {
  const cmd = program
    .command('ab', { isDefault: true })
    .description('compare binder page-mapping designs on the same workloads across seeds (the default command)');
  addCommonOptions(cmd, {
    cpus: 4,
    cpusHelp: `CPUs of each case's emulated machine, 1 to 64; the security scenarios run on as many (at least ${ATTACK_MIN_CPUS})`,
    engineHelp: 'deterministic (default: each case reproducible by seed) or parallel (the kernel on the main thread, user-mode access streams on worker threads; each case is one run\'s); --jobs runs cases in parallel either way',
  })
    .option('--design <names>', `designs to compare, the first is the baseline (${defaultConfigs().map((c) => c.label).join(', ')}; eager designs take :none, :mapped or :vm_ops)`, configOption)
    .option('--workload <names>', `workloads (${WORKLOADS.join(', ')})`, listOption('workload', WORKLOADS))
    .option('--seeds <n>', 'number of seeds, starting at --seed', parseIntOption('--seeds', 1, 1000), 3)
    .option('--iterations <n>', 'transactions per worker per run', parseIntOption('--iterations', 1, 1_000_000), 100)
    .option('--jobs <n>', 'worker processes', parseIntOption('--jobs', 1, 256), defaultJobs())
    .option('--shard <i/n>', 'run only every n-th case starting at the i-th (for batch schedulers); join the --json outputs with mmulab merge', parseShard)
    .option('--html <file>', 'also write a self-contained HTML report')
    .option('--no-attack', 'skip the security scenarios (mmulab attack) run against each design')
    .addHelpText(
      'after',
      `
Workloads:
${WORKLOADS.map((w) => `  ${w.padEnd(16)} ${WORKLOAD_HELP[w]}`).join('\n')}

Examples:
  mmulab ab                                    all designs, all workloads, 3 seeds
  mmulab ab --design eager,fault --workload pressure --seeds 10
  mmulab ab --design eager:none,eager:vm_ops,fault --html report.html
  mmulab ab --json --shard 1/4 > part1.json     (then: mmulab merge part*.json)`,
    )
    .action(async (o: AbCliOptions) => {
      const costs = loadCosts(o.costModel);
      if (o.html) checkWritable(o.html, '--html');
      const configs = o.design ?? defaultConfigs();
      if (configs.length < 2 && !o.design) throw new UsageError('--design needs at least two designs to compare');
      const workloads = o.workload ?? [...WORKLOADS];
      const seeds = Array.from({ length: o.seeds }, (_, i) => o.seed + i);
      const kernel = kernelOptions(o, costs);
      delete kernel.seed;
      delete kernel.cpus;
      const engine = o.engine === 'parallel' ? { engine: 'parallel' as const } : {};
      const cases = shardSlice(abCases({ configs, workloads, seeds, cpus: o.cpus, iterations: o.iterations, kernel, ...engine }), o.shard);
      // The security scenarios once per design (with the first seed), on a machine of --cpus CPUs
      // (at least ATTACK_MIN_CPUS) with the run's cost model; in a sharded run, shard 1 carries them.
      const attackCpus = attackCpusFor(o.cpus);
      const attackCosts = costs ? { hwCosts: costs.model.hw, clockGhz: costs.model.clockGhz, costs: costs.kernel } : undefined;
      const attacks: { config: string; args: ScenarioOptions }[] = [];
      if (o.attack && (!o.shard || o.shard.index === 1)) {
        for (const c of configs) for (const scenario of SCENARIOS) attacks.push({ config: c.label, args: { ...attackTargetOf(c), scenario, seed: o.seed, cpus: attackCpus, ...(attackCosts ? { kernel: attackCosts } : {}), ...engine } });
      }
      const bar = await progressBar(io, cases.length + attacks.length, 'ab');
      let metrics: AbMetrics[];
      let verdicts: ScenarioResult[];
      try {
        metrics = await runJobs<AbMetrics>(
          cases.map((c) => ({ kind: 'ab', args: { config: c.config.label, workload: c.workload, seed: c.seed, cpus: c.cpus, iterations: c.iterations, kernel, ...engine } satisfies AbJobArgs })),
          o.jobs,
          () => bar.tick(),
        );
        verdicts = await runJobs<ScenarioResult>(attacks.map((a) => ({ kind: 'attack', args: a.args })), o.jobs, () => bar.tick());
      } finally {
        bar.stop();
      }
      const results: AbCaseResult[] = cases.map((c, i) => ({ config: c.config.label, workload: c.workload, seed: c.seed, metrics: metrics[i]! }));
      const options: AbFile['options'] = { configs: configs.map((c) => c.label), workloads, seeds, cpus: o.cpus, iterations: o.iterations, ...(o.costModel ? { costModel: o.costModel } : {}), costs: effectiveCostModel(kernel), attack: o.attack, ...engine };
      const result: AbFile = summarise(options, results);
      if (attacks.length) {
        result.attackCpus = attackCpus;
        result.attack = verdicts.map((v, i) => ({ config: attacks[i]!.config, scenario: v.scenario, title: v.title, verdict: v.verdict, summary: v.summary }));
      }
      if (o.shard) result.shard = o.shard;
      emitAb(io, result, o);
    });
}

/** Print a result (table or JSON), write its HTML report, and set the exit code (also for mmulab merge). */
export function emitAb(io: Io, result: AbFile, o: { json: boolean; html?: string }): void {
  if (o.html) {
    try {
      writeFileSync(o.html, abHtml(result));
    } catch (e) {
      throw new UsageError(`cannot write ${o.html}: ${(e as Error).message}`);
    }
  }
  if (o.json) io.out(JSON.stringify(result, null, 2) + '\n');
  else io.out(abTable(result));
  // Checker reports are findings (a vulnerable design is a finding of `mmulab attack
  // --expect-safe`, not of a comparison).
  if (result.cases.some((c) => c.metrics.reports.length)) io.exitCode = EXIT_FINDING;
}

// ---- the terminal table ----------------------------------------------------------------------

const TABLE_COLUMNS: { key: string; head: string; digits: number }[] = [
  { key: 'txPerSec', head: 'tx/s', digits: 0 },
  { key: 'p50', head: 'p50µs', digits: 2 },
  { key: 'p99', head: 'p99µs', digits: 2 },
  { key: 'max', head: 'maxµs', digits: 2 },
  { key: 'driverLock', head: 'drvLock', digits: 0 },
  { key: 'driverContended', head: 'drvCont', digits: 0 },
  { key: 'receiverWait', head: 'rcvWaitµs', digits: 1 },
  { key: 'waitBehindDriver', head: 'behindDrvµs', digits: 1 },
  { key: 'vmaSuccess', head: 'vmaOk', digits: 0 },
  { key: 'vmaFallback', head: 'vmaFb', digits: 0 },
  { key: 'faults', head: 'faults', digits: 0 },
  { key: 'installs', head: 'install', digits: 0 },
  { key: 'zaps', head: 'zap', digits: 0 },
  { key: 'shootdowns', head: 'flushes', digits: 0 },
  { key: 'ipis', head: 'IPIs', digits: 0 },
  { key: 'flushed', head: 'flushed', digits: 0 },
  { key: 'frames', head: 'frames', digits: 0 },
  { key: 'reports', head: 'reports', digits: 0 },
];

function fmt(x: number, digits: number): string {
  if (!Number.isFinite(x)) return '-';
  return x.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

export function abTable(r: AbResult): string {
  const lines: string[] = [];
  const o = r.options;
  lines.push(`mmulab ab: ${o.configs.length} designs × ${o.workloads.length} workloads × ${o.seeds.length} seeds (${o.seeds[0]}…${o.seeds[o.seeds.length - 1]}), ${o.cpus} CPUs, ${o.iterations} transactions per worker${o.costModel ? `, cost model ${o.costModel}` : ''}${o.engine === 'parallel' ? ', parallel engine (not reproducible by seed)' : ''}; means over seeds, virtual time`);
  for (const w of o.workloads) {
    const rows = r.summary.filter((s) => s.workload === w);
    if (!rows.length) continue;
    lines.push('', `== ${w}: ${WORKLOAD_HELP[w]}`);
    const head = ['design', ...TABLE_COLUMNS.map((c) => c.head)];
    const body = rows.map((row) => [row.config, ...TABLE_COLUMNS.map((c) => fmt(row.metrics[c.key]!.mean, c.digits))]);
    const widths = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i]!.length)));
    lines.push(head.map((h, i) => (i === 0 ? h.padEnd(widths[i]!) : h.padStart(widths[i]!))).join('  '));
    for (const b of body) lines.push(b.map((x, i) => (i === 0 ? x.padEnd(widths[i]!) : x.padStart(widths[i]!))).join('  '));
    const base = rows[0]!.config;
    const diffs: string[] = [];
    for (const row of rows.slice(1)) {
      if (!row.vsBaseline) continue;
      for (const m of SUMMARY_METRICS) {
        const d = row.vsBaseline[m.key]!;
        if (!d.significant) continue;
        const baseMean = rows[0]!.metrics[m.key]!.mean;
        const pct = baseMean ? ` (${d.mean > 0 ? '+' : ''}${((d.mean / baseMean) * 100).toFixed(1)}%)` : '';
        diffs.push(`  ${row.config} vs ${base}: ${m.label} ${d.mean > 0 ? '+' : ''}${fmt(d.mean, 2)} ± ${fmt(d.half, 2)}${m.unit ? ' ' + m.unit : ''}${pct}`);
      }
    }
    if (diffs.length) lines.push(`differences beyond seed noise (95% CI, paired by seed):`, ...diffs);
    else if (o.seeds.length > 1) lines.push(`no difference from ${base} beyond seed noise (95% CI, paired by seed)`);
    const reports = rows.flatMap((row) => row.reports.map((t) => `  ${row.config}: ${t}`));
    if (reports.length) lines.push('checker reports:', ...reports);
  }
  if (r.attack?.length) lines.push('', ...verdictTable(r.attack, attackMachineText(r)));
  return lines.join('\n') + '\n';
}

/** Security verdicts: a row per design, a column per scenario. */
function verdictTable(vs: AbVerdict[], machine: string): string[] {
  const configs = [...new Set(vs.map((v) => v.config))];
  const scenarios = [...new Set(vs.map((v) => v.scenario))];
  const short = { vulnerable: 'VULNERABLE', immune: 'immune', 'not-applicable': 'n/a' } as const;
  const head = ['design', ...scenarios];
  const body = configs.map((c) => [c, ...scenarios.map((s) => short[vs.find((v) => v.config === c && v.scenario === s)!.verdict])]);
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i]!.length)));
  const out = [`== security scenarios (mmulab attack): a verdict per design, computed by the emulator ${machine}`];
  out.push(head.map((h, i) => h.padEnd(widths[i]!)).join('  '));
  for (const b of body) out.push(b.map((x, i) => x.padEnd(widths[i]!)).join('  '));
  for (const s of scenarios) out.push(`  ${s}: ${vs.find((v) => v.scenario === s)!.title}`);
  const bad = vs.filter((v) => v.verdict === 'vulnerable');
  if (bad.length) out.push('evidence:', ...bad.map((v) => `  ${v.config} ${v.scenario}: ${v.summary}`));
  return out;
}
