/**
 * src/fuzz/replay.ts — the replay format: how a fuzz failure is named, printed and reproduced.
 *
 * A failing case is named by fast-check's coordinates: the seed of the run it was generated in
 * and the path — the index of the run within that seed, then the shrink steps that led to the
 * minimal case (fast-check's counterexamplePath). Together with the options that shape
 * generation and execution (operations per case, rounds, checking interval, a planted bug) they
 * determine the case and its outcome exactly, since the executor is deterministic. They are
 * written as one token, SEED:PATH — for example 1234:5:2:1 is seed 1234, run 5, then shrink
 * steps 2 and 1 — and printed as the command line that replays it:
 *
 *   mmulab fuzz --replay 1234:5:2:1 [--ops-per-run N] [--plant NAME] [--cpus N] [--cost-model FILE] …
 */

import { PLANTS, type Plant } from './executor.ts';
import type { KernelEngine, KernelOptions } from '../../kernel/kernel.ts';

/** A --cost-model file: its name (for the replay line) and the costs the kernel takes from it. */
export interface CaseCosts {
  file: string;
  kernel: Pick<KernelOptions, 'hwCosts' | 'clockGhz' | 'costs'>;
}

/** What generation and execution depend on, besides the seed and path. */
export interface CaseShape {
  opsPerRun: number;
  roundOps: number;
  checkEvery: number;
  plant: Plant | null;
  /** Every case's CPU count (--cpus); null: each case draws its own (2 to 4). */
  cpus?: number | null;
  /** The cost model of every case's kernel (--cost-model); null: the built-in costs. */
  costs?: CaseCosts | null;
  /** Checking mode (--debug-vm): the mm audit after every scheduling step, besides the rounds' checks. */
  debugVm?: boolean;
  /** The engine of every case (--engine; absent: deterministic). */
  engine?: KernelEngine;
}

export const DEFAULT_SHAPE: CaseShape = { opsPerRun: 1000, roundOps: 16, checkEvery: 64, plant: null, cpus: null, costs: null };

export interface ReplayToken {
  seed: number;
  /** fast-check's counterexample path ("5:2:1"). */
  path: string;
}

/** Parse SEED:PATH ("1234:5:2:1"); throws a RangeError naming the problem. */
export function parseReplay(s: string): ReplayToken {
  const t = s.trim();
  if (!/^\d+(:\d+)+$/.test(t)) throw new RangeError(`--replay must look like SEED:PATH (for example 1234:5:2:1), got "${s}"`);
  const [seed, ...path] = t.split(':');
  const n = Number(seed);
  if (!Number.isSafeInteger(n) || n > 0xffffffff) throw new RangeError(`--replay: the seed ${seed} is not a 32-bit unsigned integer`);
  return { seed: n, path: path.join(':') };
}

export function formatReplay(r: ReplayToken): string {
  return `${r.seed}:${r.path}`;
}

/** The one-line command that replays `r` with `shape`. */
export function replayCommand(r: ReplayToken, shape: CaseShape): string {
  const parts = ['mmulab fuzz', `--replay ${formatReplay(r)}`];
  if (shape.opsPerRun !== DEFAULT_SHAPE.opsPerRun) parts.push(`--ops-per-run ${shape.opsPerRun}`);
  if (shape.roundOps !== DEFAULT_SHAPE.roundOps) parts.push(`--round-ops ${shape.roundOps}`);
  if (shape.checkEvery !== DEFAULT_SHAPE.checkEvery) parts.push(`--check-every ${shape.checkEvery}`);
  if (shape.plant) parts.push(`--plant ${shape.plant}`);
  if (shape.cpus) parts.push(`--cpus ${shape.cpus}`);
  if (shape.debugVm) parts.push('--debug-vm');
  if (shape.engine === 'parallel') parts.push('--engine parallel');
  if (shape.costs) parts.push(`--cost-model ${/^[\w./-]+$/.test(shape.costs.file) ? shape.costs.file : `'${shape.costs.file.replace(/'/g, `'\\''`)}'`}`);
  return parts.join(' ');
}

export function isPlant(s: string): s is Plant {
  return (PLANTS as readonly string[]).includes(s);
}
