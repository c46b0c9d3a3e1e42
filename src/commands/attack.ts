/**
 * src/commands/attack.ts — `mmulab attack`: the binder security scenarios (src/experiments/attack.ts)
 * against each page-mapping design and identity variant, with a verdict per design and scenario
 * and the evidence the emulator saw (which page, which VMA, which report). `--expect-safe` turns
 * a vulnerable verdict for the named designs into exit code 1, for CI. JSON output follows
 * docs/schemas/attack.schema.json. The shared options set the seed, the CPUs and the cost model of
 * every scenario's machine, and the engine they run on (verdicts are reproducible by seed on the
 * deterministic engine only).
 */

import { InvalidArgumentError, type Command } from 'commander';
import { DESIGNS, IDENTITY_VARIANTS, type IdentityVariant } from '../../drivers/android/binder/page_mapping.ts';
import {
  ATTACK_MIN_CPUS, SCENARIOS, SCENARIO_TITLES, attackTargets, expandScenario, parseTarget, runAttackMatrix, targetLabel, targetMatches, type AttackMatrix, type AttackTarget,
  type ScenarioId, type ScenarioResult,
} from '../experiments/attack.ts';
import { effectiveCostModel } from '../experiments/cost_model.ts';
import { addCommonOptions, EXIT_FINDING, listOption, loadCosts, progressBar, UsageError, type CommonOptions, type Io } from './common.ts';

const SCENARIO_NAMES = ['1', ...SCENARIOS] as const;

/** --design: a design or design:variant (design/variant), comma- or repeat-separated. */
function targetListOption(v: string, prev: string[] | undefined): string[] {
  const out = [...(prev ?? [])];
  for (const part of v.split(',').map((s) => s.trim()).filter(Boolean)) {
    try {
      parseTarget(part);
    } catch (e) {
      throw new InvalidArgumentError((e as Error).message);
    }
    if (!out.includes(part)) out.push(part);
  }
  return out;
}

interface AttackCliOptions extends CommonOptions {
  design?: string[];
  variant?: IdentityVariant[];
  scenario?: string[];
  expectSafe?: string[];
  plant: boolean;
}

/** The targets the options name: --design entries, bare eager designs expanded by --variant. */
export function selectTargets(designs: readonly string[] | undefined, variants: readonly IdentityVariant[] | undefined, expectSafe: readonly string[] = []): AttackTarget[] {
  const out: AttackTarget[] = [];
  const add = (t: AttackTarget): void => {
    if (!out.some((x) => targetLabel(x) === targetLabel(t))) out.push(t);
  };
  if (!designs || designs.length === 0) {
    for (const t of attackTargets(DESIGNS, variants ?? IDENTITY_VARIANTS)) add(t);
  } else {
    for (const spec of designs) {
      const p = parseTarget(spec);
      if (p.variant) add(p);
      else for (const t of attackTargets([p.design], variants ?? IDENTITY_VARIANTS)) add(t);
    }
    if (variants && !designs.some((d) => parseTarget(d).design.startsWith('eager'))) {
      throw new UsageError(`--variant applies to the eager designs only, and --design names none (${designs.join(', ')})`);
    }
  }
  // A design someone expects to be safe is always examined.
  for (const spec of expectSafe) for (const t of attackTargets([parseTarget(spec).design])) if (targetMatches(spec, t)) add(t);
  return out;
}

const VERDICT_TEXT: Record<string, string> = { vulnerable: 'VULNERABLE', immune: 'immune', 'not-applicable': 'n/a' };

function table(m: AttackMatrix): string {
  const w0 = Math.max(6, ...m.targets.map((t) => t.length)) + 2;
  const cell = 12;
  const lines = [`${'design'.padEnd(w0)}${m.scenarios.map((s) => s.padEnd(cell)).join('')}`.trimEnd()];
  for (const t of m.targets) {
    const row = m.scenarios.map((s) => VERDICT_TEXT[m.results.find((r) => r.target === t && r.scenario === s)?.verdict ?? ''] ?? '?');
    lines.push(`${t.padEnd(w0)}${row.map((v) => v.padEnd(cell)).join('')}`.trimEnd());
  }
  return lines.join('\n');
}

function evidenceLines(r: ScenarioResult): string[] {
  const out = [`  ${r.scenario.padEnd(3)} ${VERDICT_TEXT[r.verdict]!.padEnd(11)}${r.summary}`];
  if (r.verdict !== 'vulnerable') return out;
  const e = r.evidence;
  out.push(`        findings: ${e.findings.join(', ')}`);
  for (const p of e.pages.slice(0, 3)) out.push(`        page   pfn ${p.pfn}${p.addr ? ` at ${p.addr}` : ''}: ${p.what}`);
  for (const v of e.vmas.slice(0, 2)) out.push(`        vma    ${v.start}-${v.end} ${v.role} [${v.flags}]${v.ops ? ` ops ${v.ops}` : ''}`);
  for (const rep of e.reports.slice(0, 3)) out.push(`        report ${rep.title}${rep.contract ? ` (${rep.contract})` : ''}${rep.comm ? ` in ${rep.comm}` : ''}`);
  return out;
}

function text(m: AttackMatrix, violated: Map<string, string[]>, costModel: string | undefined): string {
  const machine = `${m.cpus !== ATTACK_MIN_CPUS ? `, ${m.cpus} CPUs` : ''}${costModel ? `, cost model ${costModel}` : ''}`;
  const lines = [`mmulab attack: binder security scenarios, seed ${m.seed}${machine}${m.engine === 'parallel' ? ', parallel engine (not reproducible by seed)' : ''}${m.planted ? ', judging the planted bugs of scenarios 3 and 5' : ''}`, '', table(m), ''];
  lines.push('Scenarios:');
  for (const s of m.scenarios) lines.push(`  ${s.padEnd(3)} ${SCENARIO_TITLES[s]}`);
  lines.push('', 'Evidence:');
  for (const t of m.targets) {
    lines.push(t);
    for (const r of m.results.filter((x) => x.target === t)) lines.push(...evidenceLines(r));
  }
  if (violated.size) {
    lines.push('');
    for (const [t, ss] of violated) lines.push(`expected safe, but vulnerable: ${t} (scenario ${ss.join(', ')})`);
  }
  return lines.join('\n') + '\n';
}

export function register(program: Command, io: Io): void {
  const cmd = program
    .command('attack')
    .description('run the binder security scenarios against the page-mapping designs and print a verdict per design and scenario, with the evidence');
  addCommonOptions(cmd, {
    cpus: ATTACK_MIN_CPUS,
    minCpus: ATTACK_MIN_CPUS,
    seedHelp: 'seed of the scheduler (same seed, same result)',
    cpusHelp: `CPUs of each scenario's emulated machine, ${ATTACK_MIN_CPUS} to 64 (scenario 3's reader runs on CPU 1)`,
    engineHelp: 'deterministic (default: each verdict reproducible by seed) or parallel (the kernel on the main thread, user-mode access streams on worker threads; a verdict is that run\'s)',
  })
    .option('--design <names>', `designs to attack (${DESIGNS.join(', ')}); an eager design may name one variant, e.g. eager:vm_ops; default: all`, targetListOption)
    .option('--variant <names>', `identity variants of the eager designs (${IDENTITY_VARIANTS.join(', ')}); default: all`, listOption('variant', IDENTITY_VARIANTS))
    .option('--scenario <ids>', `scenarios (${SCENARIO_NAMES.join(', ')}; 1 = 1a,1b,1c); default: all`, listOption('scenario', SCENARIO_NAMES))
    .option('--expect-safe <names>', 'exit 1 if any of these designs (or design:variant) is vulnerable', targetListOption)
    .option('--plant', 'judge scenarios 3 and 5 with their planted driver bug (shows what the checkers catch)', false)
    .addHelpText(
      'after',
      `
Scenarios:
${SCENARIOS.map((s) => `  ${s.padEnd(3)} ${SCENARIO_TITLES[s]}`).join('\n')}

Verdicts are computed from what the emulator observes (page tables, frames, TLBs, checker
reports): vulnerable, immune, or n/a when the scenario has nothing to act on in that design.

Examples:
  mmulab attack                                   every design and variant, every scenario
  mmulab attack --design fault,eager:none --scenario 1
  mmulab attack --design eager --variant none,vm_ops --scenario 1a,4
  mmulab attack --expect-safe fault --expect-safe eager:vm_ops    (CI: exit 1 if either is vulnerable)
  mmulab attack --scenario 3,5 --plant --json
  mmulab attack --design fault --cpus 4 --cost-model costs.json --seed 7`,
    )
    .action(async (o: AttackCliOptions) => {
      const costs = loadCosts(o.costModel);
      const kernel = costs ? { hwCosts: costs.model.hw, clockGhz: costs.model.clockGhz, costs: costs.kernel } : undefined;
      const targets = selectTargets(o.design, o.variant, o.expectSafe ?? []);
      const scenarios: ScenarioId[] = [];
      for (const s of o.scenario ?? SCENARIOS) for (const id of expandScenario(s)) if (!scenarios.includes(id)) scenarios.push(id);
      const bar = await progressBar(io, targets.length * scenarios.length, 'attack');
      let m: AttackMatrix;
      try {
        m = runAttackMatrix({ targets, scenarios, seed: o.seed, cpus: o.cpus, kernel, plant: o.plant, engine: o.engine, onResult: () => bar.tick() });
      } finally {
        bar.stop();
      }
      const violated = new Map<string, string[]>();
      for (const spec of o.expectSafe ?? []) {
        for (const r of m.results) {
          if (r.verdict !== 'vulnerable' || !targetMatches(spec, r)) continue;
          const l = violated.get(r.target) ?? [];
          if (!l.includes(r.scenario)) l.push(r.scenario);
          violated.set(r.target, l);
        }
      }
      if (o.json) {
        const doc = {
          schema: 'mmulab.attack/1',
          seed: m.seed,
          cpus: m.cpus,
          ...(o.costModel ? { costModel: o.costModel } : {}),
          costs: effectiveCostModel(kernel),
          planted: m.planted,
          ...(m.engine ? { engine: m.engine } : {}),
          targets: m.targets,
          scenarios: m.scenarios,
          results: m.results,
          vulnerable: [...new Set(m.results.filter((r) => r.verdict === 'vulnerable').map((r) => r.target))],
          expectSafe: { names: o.expectSafe ?? [], violated: [...violated].map(([target, scenarios]) => ({ target, scenarios })) },
        };
        io.out(JSON.stringify(doc, null, 2) + '\n');
      } else {
        io.out(text(m, violated, o.costModel));
      }
      if (violated.size) {
        io.err(`mmulab attack: expected safe, but vulnerable: ${[...violated].map(([t, ss]) => `${t} (${ss.join(', ')})`).join('; ')}\n`);
        io.exitCode = EXIT_FINDING;
      }
    });
}
