/**
 * src/jobs/registry.ts — the jobs a pool worker can run, by name. A job takes plain data
 * (structured-clonable) and returns plain data, so it runs the same in a worker or inline.
 */

import { runAbCase, parseConfig, type AbMetrics, type WorkloadName } from '../experiments/ab.ts';
import type { KernelEngine, KernelOptions } from '../../kernel/kernel.ts';
import { runPoint, type ShootdownConfig, type ShootdownPoint } from '../experiments/shootdown.ts';
import { runScenario, type ScenarioOptions, type ScenarioResult } from '../experiments/attack.ts';
import { fuzz, type FuzzJobArgs, type FuzzSummary } from '../fuzz/runner.ts';

export interface AbJobArgs {
  config: string;
  workload: WorkloadName;
  seed: number;
  cpus: number;
  iterations: number;
  kernel?: KernelOptions;
  engine?: KernelEngine;
}

export interface ShootdownJobArgs {
  point: ShootdownPoint;
  config: ShootdownConfig;
}

export const JOBS: Record<string, (args: never) => unknown> = {
  shootdown: (a: ShootdownJobArgs) => runPoint(a.point, a.config),
  attack: (a: ScenarioOptions): ScenarioResult => runScenario(a),
  fuzz: (a: FuzzJobArgs): FuzzSummary => fuzz(a),
  ab: (a: AbJobArgs): AbMetrics => runAbCase({ config: parseConfig(a.config), workload: a.workload, seed: a.seed, cpus: a.cpus, iterations: a.iterations, kernel: a.kernel, engine: a.engine }),
};
