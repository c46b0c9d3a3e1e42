/**
 * test/bench/harness.ts — the shape of mmulab's benchmarks. A micro benchmark is a batch
 * function run by tinybench; its figure is operations per second at the median batch time. A
 * measured benchmark runs once or a few times under its own control (worker threads, whole
 * workloads) and reports its figure directly. Either may carry a target from an issue; the
 * runner shows whether the figure meets it.
 */

import { readFileSync } from 'node:fs';

export interface Target {
  /** The figure must be at least this… */
  atLeast?: number;
  /** …or at most this (costs and ratios of costs). */
  atMost?: number;
  /** Where the target comes from, e.g. "issue 2 §7". */
  source: string;
}

export interface MicroBench {
  kind: 'micro';
  group: string;
  name: string;
  /** Operations one call of `fn` performs. */
  batch: number;
  unit: string;
  fn: () => void;
  target?: Target;
}

export interface MeasuredBench {
  kind: 'measured';
  group: string;
  name: string;
  unit: string;
  run: () => Promise<{ value: number; detail?: string }>;
  target?: Target;
}

export type BenchDef = MicroBench | MeasuredBench;

export interface BenchResult {
  group: string;
  name: string;
  value: number;
  unit: string;
  /** Relative margin of error (micro benchmarks), percent. */
  rme?: number;
  detail?: string;
  target?: Target;
  met?: boolean;
}

/**
 * CPU seconds used so far by this process and by its children that have ended (the job pool's
 * worker processes): user + system. Children's time comes from /proc/self/stat (Linux, in clock
 * ticks of 1/100 s); elsewhere only this process's own time is counted.
 */
export function cpuSecondsWithChildren(): number {
  const own = process.cpuUsage();
  let children = 0;
  try {
    const stat = readFileSync('/proc/self/stat', 'utf8');
    // Fields after the command name (which may hold spaces, so split after its closing paren):
    // cutime and cstime are fields 16 and 17 of the whole line, 14 and 15 after "pid (comm)".
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    children = (Number(rest[13]) + Number(rest[14])) / 100;
    if (!Number.isFinite(children)) children = 0;
  } catch {
    children = 0;
  }
  return (own.user + own.system) / 1e6 + children;
}
