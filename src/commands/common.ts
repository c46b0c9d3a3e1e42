/**
 * src/commands/common.ts — what every mmulab command shares: the common options (--seed, --cpus,
 * --engine, --cost-model, --json), their validation into one clear line naming the option, the
 * refusal (with the reason, also in the help) of those a command cannot use, the kernel options
 * they turn into, shards of a split run (--shard i/n), output files, the I/O surface commands
 * write to (stdout for results, stderr for diagnostics and the progress bar), and the progress
 * bar itself (only on a terminal).
 *
 * Each command lives in its own file under src/commands/ and exports `register(program, io)`;
 * src/cli.ts wires them together.
 */

import { accessSync, constants as fsc, statSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { InvalidArgumentError, Option, type Command } from 'commander';
import { CostModelError, loadCostModelFile, type CostModel } from '../../hw/cost.ts';
import { parseKernelCosts, type KernelCostModel } from '../../kernel/cost.ts';
import { KERNEL_ENGINES, type KernelEngine, type KernelOptions } from '../../kernel/kernel.ts';

/** Exit codes shared by every command. */
export const EXIT_OK = 0;
export const EXIT_FINDING = 1;
export const EXIT_USAGE = 2;

/** An error whose message is meant for the user as is (exit code 2). */
export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

/** Where a command writes. Tests pass their own; the real CLI passes process.stdout/stderr. */
export interface Io {
  out(s: string): unknown;
  err(s: string): unknown;
  /** True when stderr is a terminal (the progress bar is drawn only then). */
  errIsTty: boolean;
  /** Set by a command to report its exit code (0 by default). */
  exitCode: number;
}

export const ENGINES = KERNEL_ENGINES;
export type EngineName = KernelEngine;

/** Options every experiment command accepts. */
export interface CommonOptions {
  seed: number;
  cpus: number;
  engine: EngineName;
  costModel?: string;
  json: boolean;
}

export function parseIntOption(name: string, min: number, max: number): (v: string) => number {
  return (v: string) => {
    if (!/^-?\d+$/.test(v.trim())) throw new InvalidArgumentError(`${name} must be an integer, got "${v}"`);
    const n = Number(v);
    if (!Number.isSafeInteger(n) || n < min || n > max) throw new InvalidArgumentError(`${name} must be between ${min} and ${max}, got ${v}`);
    return n;
  };
}

/** A comma- or repeat-separated list option whose values must come from `allowed`. */
export function listOption<T extends string>(name: string, allowed: readonly T[]): (v: string, prev: T[] | undefined) => T[] {
  return (v: string, prev: T[] | undefined) => {
    const out = [...(prev ?? [])];
    for (const part of v.split(',').map((s) => s.trim()).filter(Boolean)) {
      if (!(allowed as readonly string[]).includes(part)) throw new InvalidArgumentError(`unknown ${name} "${part}" (known: ${allowed.join(', ')})`);
      if (!out.includes(part as T)) out.push(part as T);
    }
    return out;
  };
}

/** How a command words and bounds the shared options (see addCommonOptions). */
export interface CommonOptionSpec {
  /** Default of --cpus (2). */
  cpus?: number;
  /** Fewest CPUs the command can run on (1). */
  minCpus?: number;
  seedHelp?: string;
  cpusHelp?: string;
  /** How the help shows the default of --cpus (default: its value). */
  cpusDefaultText?: string;
  /** What --engine does here; say why when only one engine is meaningful. */
  engineHelp?: string;
}

export const MAX_CLI_CPUS = 64;
export const SEED_MAX = 2 ** 32 - 1;

/** The shared options' parsers, for a command that adds them one by one. */
export const parseSeed = parseIntOption('--seed', 0, SEED_MAX);
export function parseCpus(min = 1): (v: string) => number {
  return parseIntOption('--cpus', min, MAX_CLI_CPUS);
}
export function engineOption(help = 'engine: deterministic or parallel'): Option {
  return new Option('--engine <name>', help).choices(ENGINES as unknown as string[]).default('deterministic');
}
export const COST_MODEL_HELP = 'JSON cost model (sections clockGhz, hw, kernel) replacing the built-in costs';

/** Add --seed, --cpus, --engine, --cost-model and --json to a command. */
export function addCommonOptions(cmd: Command, spec: CommonOptionSpec = {}): Command {
  const minCpus = spec.minCpus ?? 1;
  return cmd
    .option('--seed <n>', spec.seedHelp ?? 'seed of every random choice (same seed, same bytes)', parseSeed, 1)
    .addOption(new Option('--cpus <n>', spec.cpusHelp ?? `number of emulated CPUs, ${minCpus} to ${MAX_CLI_CPUS}`).argParser(parseCpus(minCpus)).default(spec.cpus ?? 2, spec.cpusDefaultText))
    .addOption(engineOption(spec.engineHelp))
    .option('--cost-model <file>', COST_MODEL_HELP)
    .option('--json', 'print the result as JSON', false);
}

/** The shared options, by attribute name and flag. */
const SHARED_FLAGS = { seed: '--seed <n>', cpus: '--cpus <n>', engine: '--engine <name>', costModel: '--cost-model <file>' } as const;
export type SharedOptionName = keyof typeof SHARED_FLAGS;

/**
 * For a command that cannot use some of the shared options: accept them on the command line only
 * to refuse them with the reason (one line, exit 2), and say why in the help.
 */
export function refuseSharedOptions(cmd: Command, reasons: Partial<Record<SharedOptionName, string>>): Command {
  const names = Object.keys(reasons) as SharedOptionName[];
  for (const name of names) {
    const flag = SHARED_FLAGS[name].split(' ')[0]!;
    const opt = new Option(SHARED_FLAGS[name]).hideHelp().argParser(() => {
      throw new InvalidArgumentError(`${cmd.name()} takes no ${flag}: ${reasons[name]}`);
    });
    cmd.addOption(opt);
  }
  const lines = names.map((n) => `  ${SHARED_FLAGS[n].split(' ')[0]!.padEnd(13)} ${reasons[n]}`);
  cmd.addHelpText('after', `
Shared options this command does not take (refused with exit code 2):
${lines.join('\n')}`);
  return cmd;
}

/** One shard of a split run: every count-th unit of work from the index-th (both 1-based). */
export interface Shard {
  index: number;
  count: number;
}

export function parseShard(v: string): Shard {
  const m = /^(\d+)\/(\d+)$/.exec(v.trim());
  if (!m) throw new InvalidArgumentError(`--shard must look like i/n (for example 2/8), got "${v}"`);
  const index = Number(m[1]);
  const count = Number(m[2]);
  if (count < 1 || index < 1 || index > count) throw new InvalidArgumentError(`--shard ${v}: i must be between 1 and n`);
  return { index, count };
}

/** The units of work shard `s` runs, out of all of them in their fixed order. */
export function shardSlice<T>(all: readonly T[], s: Shard | undefined): T[] {
  return s ? all.filter((_, i) => i % s.count === s.index - 1) : [...all];
}

/** Fail early, before a long run, if an output file cannot be written. */
export function checkWritable(path: string, option: string): void {
  try {
    if (statSync(path, { throwIfNoEntry: false })?.isDirectory()) throw new Error('is a directory');
    accessSync(dirname(path) || '.', fsc.W_OK);
  } catch (e) {
    throw new UsageError(`${option} ${path}: cannot write there (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
}

/** Write an output file, turning a failure into a UsageError naming the option. */
export function writeOutput(path: string, text: string, option: string): void {
  try {
    writeFileSync(path, text);
  } catch (e) {
    throw new UsageError(`${option} ${path}: ${(e as Error).message}`);
  }
}

/** A cost model file split into what the machine and the kernel take. */
export interface LoadedCosts {
  model: CostModel;
  kernel: KernelCostModel;
}

/** Load --cost-model, turning any problem into a UsageError naming the file and field. */
export function loadCosts(path: string | undefined): LoadedCosts | undefined {
  if (path === undefined) return undefined;
  try {
    const { model, raw } = loadCostModelFile(path, ['kernel']);
    return { model, kernel: parseKernelCosts(raw.kernel) };
  } catch (e) {
    if (e instanceof CostModelError) {
      const m = e.message.includes(path) ? e.message : `${path}: ${e.message}`;
      throw new UsageError(`--cost-model: ${m.replace(/: ENOENT: no such file or directory.*$/, ': no such file')}`);
    }
    throw e;
  }
}

/** Kernel options for the common options. */
export function kernelOptions(o: Pick<CommonOptions, 'seed' | 'cpus'>, costs: LoadedCosts | undefined, extra: KernelOptions = {}): KernelOptions {
  const out: KernelOptions = { cpus: o.cpus, seed: o.seed, ...extra };
  if (costs) {
    out.hwCosts = costs.model.hw;
    out.clockGhz = costs.model.clockGhz;
    out.costs = costs.kernel;
  }
  return out;
}

/**
 * A progress bar on stderr, drawn only when stderr is a terminal; otherwise every call is a
 * no-op so piped output and CI logs stay clean.
 */
export interface Progress {
  tick(n?: number): void;
  stop(): void;
}

export async function progressBar(io: Io, total: number, label: string): Promise<Progress> {
  if (!io.errIsTty || total <= 1) return { tick() {}, stop() {} };
  const { default: cliProgress } = await import('cli-progress');
  const bar = new cliProgress.SingleBar(
    { format: `${label} [{bar}] {value}/{total} {eta_formatted}`, stream: process.stderr, clearOnComplete: true, hideCursor: true },
    cliProgress.Presets.shades_classic,
  );
  bar.start(total, 0);
  return {
    tick(n = 1) {
      bar.increment(n);
    },
    stop() {
      bar.stop();
    },
  };
}
