/**
 * src/commands/merge.ts — `mmulab merge FILE…`: the one way to join the --json outputs of a run
 * split with --shard i/n (on a cluster, or on several machines) into the result of the whole run,
 * printed as the command itself prints it (a table, or --json) and, where the command has them,
 * with its --html and --csv files. Exit code 1 when the merged result holds a finding (a checker
 * report in ab, a failed check in shootdown), as the command would have exited.
 *
 * Which command wrote a file is read from its "schema" field (mmulab.ab/1, mmulab.shootdown/1);
 * a command that can be sharded registers a ShardKind below. A file without a "shard" field is a
 * whole run, that is shard 1/1. Before merging, every file is checked: the same command, the same
 * effective cost model (every cost, whatever the --cost-model file was called), the same run
 * (options, grid), the same split n, each shard i/n once, all n of them, and each holding
 * exactly its share of the run's units (cases, points). Any problem is one line and exit code 2;
 * nothing is merged from an incomplete, overlapping or mixed set.
 */

import { readFileSync } from 'node:fs';
import type { Command } from 'commander';
import { summarise as summariseAb, type AbCaseResult } from '../experiments/ab.ts';
import { checksOf, pointLabel, sweepPoints, type ShootdownReport } from '../experiments/shootdown.ts';
import { emitAb, type AbFile } from './ab.ts';
import { emitShootdown } from './shootdown.ts';
import { checkWritable, refuseSharedOptions, shardSlice, UsageError, type Io, type Shard } from './common.ts';

/** How merge handles the shards of one command. */
interface ShardKind {
  command: string;
  schema: string;
  /** What the run is made of, singular ("case", "point"). */
  unit: string;
  /** The command writes a CSV file. */
  csv: boolean;
  /** What is wrong with a document of this schema, or null when it has what merging needs. */
  problem(d: Record<string, unknown>): string | null;
  /** What every shard of one run has in common (the cost model's file name aside: see costs). */
  identity(d: never): Record<string, unknown>;
  /** The effective cost model the shard ran with, and where the document holds it. */
  costs(d: never): { field: string; value: unknown };
  /** The keys of every unit of the whole run, in the order the command runs and shards them. */
  plan(d: never): string[];
  /** The keys of the units the document holds. */
  held(d: never): string[];
  /** The whole run's result from its shards (all checked already), units in `plan` order. */
  merge(docs: never[], plan: string[]): unknown;
  /** Print the merged result as the command does, write its files, set the exit code. */
  emit(io: Io, merged: never, o: MergeCliOptions & { command: string }): void;
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
const isArray = (v: unknown): v is unknown[] => Array.isArray(v);

/** The first missing field of `d` among `fields` (checked with `ok`), as a message, or null. */
function missing(d: Record<string, unknown>, fields: Record<string, (v: unknown) => boolean>, prefix = ''): string | null {
  for (const [f, ok] of Object.entries(fields)) if (!ok(d[f])) return `field "${prefix}${f}" is missing or has the wrong type`;
  return null;
}

/**
 * A run's options without the name of its --cost-model file: shards that ran with the same costs
 * from files of other names (on other machines, from other directories) are one run; the costs
 * themselves are compared.
 */
function withoutFileName<T extends { costModel?: string }>(o: T): Omit<T, 'costModel'> {
  const { costModel: _file, ...rest } = o;
  return rest;
}

const abCaseKey = (c: { workload: string; config: string; seed: number }): string => `${c.workload} ${c.config} seed ${c.seed}`;

const AB: ShardKind = {
  command: 'ab',
  schema: 'mmulab.ab/1',
  unit: 'case',
  csv: false,
  problem(d) {
    const top = missing(d, { options: isObject, cases: isArray });
    if (top) return top;
    const o = d.options as Record<string, unknown>;
    const opt = missing(o, { configs: isArray, workloads: isArray, seeds: isArray, cpus: Number.isInteger, iterations: Number.isInteger, costs: isObject, attack: (v) => typeof v === 'boolean' }, 'options.');
    if (opt) return opt;
    if (d.attack !== undefined) {
      const att = missing(d, { attack: isArray, attackCpus: Number.isInteger });
      if (att) return att;
      if (o.attack === false) return 'it holds security verdicts although options.attack is false';
    }
    // The security scenarios run with the first shard (or the whole run).
    const first = !isObject(d.shard) || d.shard.index === 1;
    if (o.attack === true && first && d.attack === undefined) return 'options.attack is true but the security verdicts of its first shard are missing';
    const bad = (d.cases as unknown[]).findIndex((c) => !isObject(c) || typeof c.config !== 'string' || typeof c.workload !== 'string' || !Number.isInteger(c.seed) || !isObject(c.metrics));
    return bad >= 0 ? `cases[${bad}] is not a case (config, workload, seed, metrics)` : null;
  },
  identity: (d: AbFile) => ({ options: withoutFileName(d.options) }),
  costs: (d: AbFile) => ({ field: 'options.costs', value: d.options.costs }),
  plan(d: AbFile) {
    const o = d.options;
    const keys: string[] = [];
    for (const workload of o.workloads) for (const config of o.configs) for (const seed of o.seeds) keys.push(abCaseKey({ workload, config, seed }));
    return keys;
  },
  held: (d: AbFile) => d.cases.map(abCaseKey),
  merge(docs: AbFile[], plan) {
    const byKey = new Map<string, AbCaseResult>();
    for (const d of docs) for (const c of d.cases) byKey.set(abCaseKey(c), c);
    const merged: AbFile = summariseAb(docs[0]!.options, plan.map((k) => byKey.get(k)!));
    // The security scenarios run once per design, with the first shard.
    const withAttack = docs.find((d) => d.attack);
    if (withAttack) {
      merged.attackCpus = withAttack.attackCpus!;
      merged.attack = withAttack.attack!;
    }
    return merged;
  },
  emit: (io, merged: AbFile, o) => emitAb(io, merged, { json: o.json, html: o.html }),
};

const SHOOTDOWN: ShardKind = {
  command: 'shootdown',
  schema: 'mmulab.shootdown/1',
  unit: 'point',
  csv: true,
  problem(d) {
    const top = missing(d, { config: isObject, grid: isObject, points: isArray });
    if (top) return top;
    const c = missing(d.config as Record<string, unknown>, { costs: isObject }, 'config.');
    if (c) return c;
    const g = missing(d.grid as Record<string, unknown>, Object.fromEntries(['ops', 'cpus', 'pages', 'policies', 'lazy', 'pcid', 'batch'].map((f) => [f, isArray])), 'grid.');
    if (g) return g;
    const bad = (d.points as unknown[]).findIndex((p) => !isObject(p) || typeof p.op !== 'string' || typeof p.policy !== 'string' || !Number.isInteger(p.cpus) || !Number.isInteger(p.pages));
    return bad >= 0 ? `points[${bad}] is not a point (op, cpus, pages, policy, …)` : null;
  },
  identity: (d: ShootdownReport) => ({ config: withoutFileName(d.config), grid: d.grid }),
  costs: (d: ShootdownReport) => ({ field: 'config.costs', value: d.config.costs }),
  plan: (d: ShootdownReport) => sweepPoints(d.grid).map(pointLabel),
  held: (d: ShootdownReport) => d.points.map(pointLabel),
  merge(docs: ShootdownReport[], plan) {
    const byKey = new Map(docs.flatMap((d) => d.points.map((p) => [pointLabel(p), p] as const)));
    const points = plan.map((k) => byKey.get(k)!);
    const first = docs[0]!;
    const merged: ShootdownReport = { schema: 'mmulab.shootdown/1', config: first.config, grid: first.grid, points, checks: checksOf(points) };
    return merged;
  },
  emit: (io, merged: ShootdownReport, o) => emitShootdown(io, merged, { json: o.json, csv: o.csv, html: o.html, command: o.command }),
};

/** Every command whose runs can be split with --shard. */
export const SHARD_KINDS: readonly ShardKind[] = [AB, SHOOTDOWN];

/** Results of commands that are never sharded: named, so that merge can say what a file is. */
const UNSHARDED: Record<string, string> = {
  'mmulab.run/1': 'run',
  'mmulab.attack/1': 'attack',
  'mmulab.inspect/1': 'an inspection command (maps, smaps, pagemap, ptdump)',
  'mmulab.fuzz/1': 'fuzz',
  'mmulab.demo/1': 'demo',
};

interface MergeCliOptions {
  json: boolean;
  html?: string;
  csv?: string;
}

/** The path to the first place where a and b differ ("options.seeds"), or null when equal. */
export function firstDifference(a: unknown, b: unknown, path = ''): string | null {
  if (JSON.stringify(a) === JSON.stringify(b)) return null;
  if (isObject(a) && isObject(b)) {
    for (const k of new Set([...Object.keys(a), ...Object.keys(b)])) {
      const d = firstDifference(a[k], b[k], path ? `${path}.${k}` : k);
      if (d) return d;
    }
  }
  return path || '(the whole document)';
}

/** The first leaf where a and b differ, with both values, or null when equal. */
function differingLeaf(a: unknown, b: unknown, path: string): { path: string; a: unknown; b: unknown } | null {
  if (JSON.stringify(a) === JSON.stringify(b)) return null;
  if (isObject(a) && isObject(b)) {
    for (const k of new Set([...Object.keys(a), ...Object.keys(b)])) {
      const d = differingLeaf(a[k], b[k], `${path}.${k}`);
      if (d) return d;
    }
  }
  return { path, a, b };
}

const shown = (v: unknown): string => (v === undefined ? 'missing' : JSON.stringify(v));

interface ShardFile {
  name: string;
  doc: Record<string, unknown>;
  shard: Shard;
}

function readShard(name: string): { name: string; doc: unknown } {
  let text: string;
  try {
    text = readFileSync(name, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new UsageError(`${name}: ${code === 'ENOENT' ? 'no such file' : code === 'EISDIR' ? 'is a directory' : (e as Error).message}`);
  }
  try {
    return { name, doc: JSON.parse(text) as unknown };
  } catch (e) {
    throw new UsageError(`${name}: not JSON (${(e as Error).message})`);
  }
}

function shardOf(name: string, d: Record<string, unknown>): Shard {
  if (d.shard === undefined) return { index: 1, count: 1 };
  const s = d.shard;
  if (!isObject(s) || !Number.isInteger(s.index) || !Number.isInteger(s.count) || (s.count as number) < 1 || (s.index as number) < 1 || (s.index as number) > (s.count as number)) {
    throw new UsageError(`${name}: field "shard" must be {"index": i, "count": n} with 1 <= i <= n, got ${JSON.stringify(s)}`);
  }
  return { index: s.index as number, count: s.count as number };
}

const shardText = (s: Shard): string => `${s.index}/${s.count}`;

/**
 * Check a set of shard files and merge them: the kind and the merged result. Throws a UsageError
 * (one line) naming the first file and field at fault.
 */
export function mergeShardFiles(inputs: readonly { name: string; doc: unknown }[]): { kind: ShardKind; merged: unknown } {
  const known = SHARD_KINDS.map((k) => k.schema).join(', ');
  let kind: ShardKind | null = null;
  let firstName = '';
  const files: ShardFile[] = [];
  for (const { name, doc } of inputs) {
    const schema = isObject(doc) ? doc.schema : undefined;
    const k = SHARD_KINDS.find((x) => x.schema === schema);
    if (!k) {
      if (typeof schema === 'string' && UNSHARDED[schema]) throw new UsageError(`${name}: a result of mmulab ${UNSHARDED[schema]}, which is never sharded (merge takes the --json outputs of ${SHARD_KINDS.map((x) => x.command + ' --shard').join(' and ')})`);
      throw new UsageError(`${name}: not the --json output of a sharded mmulab command (its "schema" is ${schema === undefined ? 'missing' : JSON.stringify(schema)}; merge takes ${known})`);
    }
    if (kind && k !== kind) throw new UsageError(`${name}: written by mmulab ${k.command}, but ${firstName} by mmulab ${kind.command}; merge the shards of one run at a time`);
    if (!kind) {
      kind = k;
      firstName = name;
    }
    const d = doc as Record<string, unknown>;
    const p = k.problem(d);
    if (p) throw new UsageError(`${name}: not a valid ${k.command} result: ${p}`);
    files.push({ name, doc: d, shard: shardOf(name, d) });
  }
  if (!kind || !files.length) throw new UsageError('nothing to merge');
  const k = kind;
  const first = files[0]!;
  const costs = k.costs(first.doc as never);
  for (const f of files.slice(1)) {
    const d = differingLeaf(costs.value, k.costs(f.doc as never).value, costs.field);
    if (d) throw new UsageError(`${f.name}: ${d.path} is ${shown(d.b)}, but ${shown(d.a)} in ${first.name}: the shards ran with different cost models`);
  }
  const identity = k.identity(first.doc as never);
  for (const f of files.slice(1)) {
    const diff = firstDifference(identity, k.identity(f.doc as never));
    if (diff) throw new UsageError(`${f.name}: ${diff} differs from ${first.name}'s; these are shards of different runs`);
  }
  const n = first.shard.count;
  const byIndex = new Map<number, ShardFile>();
  for (const f of files) {
    if (f.shard.count !== n) throw new UsageError(`${f.name}: shard ${shardText(f.shard)}, but ${first.name} is shard ${shardText(first.shard)}: the run was split two ways`);
    const dup = byIndex.get(f.shard.index);
    if (dup) throw new UsageError(`${f.name}: shard ${shardText(f.shard)} again (also ${dup.name}): overlapping shards`);
    byIndex.set(f.shard.index, f);
  }
  const plan = k.plan(first.doc as never);
  const owner = new Map(plan.map((key, i) => [key, (i % n) + 1]));
  for (const f of files) {
    const want = shardSlice(plan, f.shard);
    const held = k.held(f.doc as never);
    const seen = new Set<string>();
    for (const key of held) {
      const o = owner.get(key);
      if (o === undefined) throw new UsageError(`${f.name}: holds ${k.unit} "${key}", which is not part of the run`);
      if (o !== f.shard.index) throw new UsageError(`${f.name}: shard ${shardText(f.shard)} holds ${k.unit} "${key}" of shard ${o}/${n}: overlapping shards`);
      if (seen.has(key)) throw new UsageError(`${f.name}: holds ${k.unit} "${key}" twice`);
      seen.add(key);
    }
    const lacking = want.filter((key) => !seen.has(key));
    if (lacking.length) throw new UsageError(`${f.name}: shard ${shardText(f.shard)} lacks ${lacking.length} of its ${want.length} ${k.unit}s (first: "${lacking[0]}"); was its run cut short?`);
  }
  const absent = Array.from({ length: n }, (_, i) => i + 1).filter((i) => !byIndex.has(i));
  if (absent.length) {
    throw new UsageError(`incomplete: shard${absent.length > 1 ? 's' : ''} ${absent.map((i) => `${i}/${n}`).join(', ')} missing (given: ${[...byIndex.keys()].sort((a, b) => a - b).map((i) => `${i}/${n}`).join(', ')})`);
  }
  const ordered = Array.from({ length: n }, (_, i) => byIndex.get(i + 1)!.doc);
  return { kind: k, merged: k.merge(ordered as never[], plan) };
}

export function register(program: Command, io: Io): void {
  const cmd = program
    .command('merge')
    .description(`join the --json outputs of a run split with --shard i/n (${SHARD_KINDS.map((k) => k.command).join(', ')}) into the whole run's result`)
    .argument('<files...>', 'the shards\' --json outputs, in any order')
    .option('--json', 'print the merged result as JSON (the schema of the command that wrote the shards)', false)
    .option('--html <file>', 'also write the command\'s self-contained HTML report')
    .option('--csv <file>', 'also write the CSV file (shootdown only)');
  refuseSharedOptions(cmd, {
    seed: 'merge runs nothing; the shards carry the seeds they were run with',
    cpus: 'merge runs nothing; the shards carry the CPU counts they were run with',
    engine: 'merge runs nothing, on any engine',
    costModel: 'merge runs nothing; the costs are those the shards were run with',
  });
  cmd
    .addHelpText(
      'after',
      `
The command that wrote the files is read from their "schema" field (${SHARD_KINDS.map((k) => k.schema).join(', ')}).
The set must be one run's shards 1/n to n/n, each once, each complete, all run with the same
costs (the effective cost model each records; the --cost-model file's name may differ); a mixed,
overlapping or incomplete set, or one of several cost models, is refused with exit code 2. A
file without a "shard" field counts as 1/1.
The result is the same as the unsharded run's, byte for byte; exit code 1 when it holds a
finding (ab: a checker report; shootdown: a failed check).

Examples:
  mmulab merge ab1.json ab2.json --html report.html
      (after mmulab ab --json --shard 1/2 > ab1.json and mmulab ab --json --shard 2/2 > ab2.json)
  mmulab merge sd-*.json --json --csv points.csv > shootdown.json
      (the outputs of mmulab shootdown --json --shard i/n, i = 1…n)`,
    )
    .action((names: string[], o: MergeCliOptions) => {
      const { kind, merged } = mergeShardFiles(names.map(readShard));
      if (o.csv && !kind.csv) throw new UsageError(`--csv: mmulab ${kind.command} writes no CSV file`);
      if (o.csv) checkWritable(o.csv, '--csv');
      if (o.html) checkWritable(o.html, '--html');
      kind.emit(io, merged as never, { ...o, command: `mmulab merge ${names.join(' ')}` });
    });
}
