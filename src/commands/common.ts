/**
 * src/commands/common.ts — what every mmulab command shares: the common options (--seed, --cpus,
 * --engine, --cost-model, --json), their validation into one clear line naming the option, the
 * kernel options they turn into, the I/O surface commands write to (stdout for results, stderr
 * for diagnostics and the progress bar), and the progress bar itself (only on a terminal).
 *
 * Each command lives in its own file under src/commands/ and exports `register(program, io)`;
 * src/cli.ts wires them together.
 */

import { InvalidArgumentError, Option, type Command } from 'commander';
import { CostModelError, loadCostModelFile, type CostModel } from '../../hw/cost.ts';
import { parseKernelCosts, type KernelCostModel } from '../../kernel/cost.ts';
import type { KernelOptions } from '../../kernel/kernel.ts';

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

export const ENGINES = ['deterministic', 'parallel'] as const;
export type EngineName = (typeof ENGINES)[number];

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

/** Add --seed, --cpus, --engine, --cost-model and --json to a command. */
export function addCommonOptions(cmd: Command, defaults: { cpus?: number } = {}): Command {
  return cmd
    .option('--seed <n>', 'seed of every random choice (same seed, same bytes)', parseIntOption('--seed', 0, 2 ** 32 - 1), 1)
    .option('--cpus <n>', 'number of emulated CPUs', parseIntOption('--cpus', 1, 64), defaults.cpus ?? 2)
    .addOption(new Option('--engine <name>', 'engine: deterministic or parallel').choices(ENGINES as unknown as string[]).default('deterministic'))
    .option('--cost-model <file>', 'JSON cost model (sections clockGhz, hw, kernel) replacing the built-in costs')
    .option('--json', 'print the result as JSON', false);
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
    if (e instanceof CostModelError) throw new UsageError(e.message.startsWith(path) ? e.message : `${path}: ${e.message}`);
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
