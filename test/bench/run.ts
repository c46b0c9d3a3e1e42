/**
 * test/bench/run.ts — `npm run bench`: runs mmulab's benchmarks with tinybench and prints a
 * table; `--write` also rewrites BENCHMARKS.md with the machine, the date and the command.
 *
 *   npm run bench                      all benchmarks
 *   npm run bench -- --filter walk     only those whose name contains "walk"
 *   npm run bench -- --write           and record the results in BENCHMARKS.md
 *   npm run bench -- --json out.json   and write the results as JSON
 */

import { Bench } from 'tinybench';
import { writeFileSync } from 'node:fs';
import { cpus, totalmem } from 'node:os';
import type { BenchDef, BenchResult } from './harness.ts';
import { hwBenchmarks } from './hw.bench.ts';
import { binderBenchmarks } from './binder.bench.ts';
import { kernelBenchmarks } from './kernel.bench.ts';
import { shootdownBenchmarks } from './shootdown.bench.ts';

const argv = process.argv.slice(2);
const flag = (name: string) => argv.includes(name);
const opt = (name: string) => {
  const i = argv.indexOf(name);
  return i >= 0 ? argv[i + 1] : undefined;
};
const filter = opt('--filter');

function fmt(v: number, unit: string): string {
  if (unit.endsWith('/s')) {
    if (v >= 1e6) return `${(v / 1e6).toFixed(1)} M ${unit}`;
    if (v >= 1e3) return `${(v / 1e3).toFixed(1)} k ${unit}`;
    return `${v.toFixed(0)} ${unit}`;
  }
  return `${v.toFixed(v < 10 ? 2 : 1)} ${unit}`;
}

/** Rounds of each micro benchmark; the best round's median is reported (see benchmarksMd). */
const MICRO_ROUNDS = 5;

async function runMicro(def: Extract<BenchDef, { kind: 'micro' }>): Promise<BenchResult> {
  let best: BenchResult | null = null;
  const rounds: string[] = [];
  for (let round = 0; round < MICRO_ROUNDS; round++) {
    const bench = new Bench({ time: 1500, warmupTime: 300, warmupIterations: 5 });
    bench.add(def.name, def.fn);
    await bench.run();
    const r = bench.tasks[0]!.result;
    if (r.state !== 'completed') throw new Error(`benchmark "${def.name}" did not complete: ${r.state === 'errored' ? String(r.error) : r.state}`);
    const value = def.batch / (r.latency.p50 / 1000);
    rounds.push(fmt(value, def.unit));
    if (!best || value > best.value) best = { group: def.group, name: def.name, value, unit: def.unit, rme: r.latency.rme };
  }
  return { ...best!, detail: `best of ${MICRO_ROUNDS} rounds: ${rounds.join(', ')}` };
}

async function main(): Promise<void> {
  const defs: BenchDef[] = [...hwBenchmarks(), ...kernelBenchmarks(), ...binderBenchmarks(), ...shootdownBenchmarks()].filter((d) => !filter || d.name.includes(filter) || d.group === filter);
  const results: BenchResult[] = [];
  for (const d of defs) {
    process.stderr.write(`running: ${d.name}\n`);
    const res: BenchResult = d.kind === 'micro' ? await runMicro(d) : { group: d.group, name: d.name, unit: d.unit, ...(await d.run()) };
    if (d.target) {
      res.target = d.target;
      res.met = (d.target.atLeast === undefined || res.value >= d.target.atLeast) && (d.target.atMost === undefined || res.value <= d.target.atMost);
    }
    results.push(res);
    process.stderr.write(`  ${fmt(res.value, res.unit)}${res.detail ? `  (${res.detail})` : ''}${res.target ? `  target ${targetText(res)}: ${res.met ? 'met' : 'NOT met'}` : ''}\n`);
  }
  const table = markdownTable(results);
  process.stdout.write(table + '\n');
  const json = opt('--json');
  if (json) writeFileSync(json, JSON.stringify({ machine: machine(), date: new Date().toISOString(), results }, null, 2));
  if (flag('--write')) writeFileSync(new URL('../../BENCHMARKS.md', import.meta.url), benchmarksMd(results));
}

function targetText(r: BenchResult): string {
  const t = r.target!;
  return [t.atLeast !== undefined ? `≥ ${fmt(t.atLeast, r.unit)}` : '', t.atMost !== undefined ? `≤ ${fmt(t.atMost, r.unit)}` : ''].filter(Boolean).join(' and ');
}

function machine(): string {
  const c = cpus();
  return `${c[0]?.model ?? 'unknown CPU'}, ${c.length} logical CPUs, ${(totalmem() / 2 ** 30).toFixed(0)} GiB, Node.js ${process.version}, ${process.platform} ${process.arch}`;
}

function markdownTable(results: BenchResult[]): string {
  const rows = results.map((r) => {
    const target = r.target ? `${targetText(r)} (${r.target.source}): **${r.met ? 'met' : 'not met'}**` : '—';
    return `| ${r.group} | ${r.name} | ${fmt(r.value, r.unit)}${r.rme !== undefined ? ` ±${r.rme.toFixed(1)}%` : ''} | ${target} | ${r.detail ?? ''} |`;
  });
  return ['| group | benchmark | result | target | notes |', '|---|---|---|---|---|', ...rows].join('\n');
}

function benchmarksMd(results: BenchResult[]): string {
  return `# Benchmarks

Produced by \`npm run bench -- --write\` (tinybench; micro benchmarks run ${MICRO_ROUNDS} rounds of
1.5 s and report operations per second at the median batch time of the best round, with the
relative margin of error of that round's batch times; the notes list every round).

- Machine: ${machine()}
- Date: ${new Date().toISOString().slice(0, 10)}
- Command: \`npm run bench -- --write\`

The machines these run on are shared 2-core virtual machines: with the other virtual CPU busy
a single-threaded figure can drop to about half (the two evidently share physical resources),
and figures vary by ±20% or more between runs. Whole runs have also been seen to come out about a
third lower for several minutes at a time (every single-threaded figure at once: a slower period
of the host), so a figure near its target should be judged over several runs. The best round is
the one least disturbed.
Targets come from the issues named in the table.

${markdownTable(results)}
`;
}

main().catch((e: unknown) => {
  process.stderr.write(`benchmark run failed: ${(e as Error).stack ?? String(e)}\n`);
  process.exitCode = 1;
});
