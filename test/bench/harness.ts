/**
 * test/bench/harness.ts — the shape of mmulab's benchmarks. A micro benchmark is a batch
 * function run by tinybench; its figure is operations per second at the median batch time. A
 * measured benchmark runs once or a few times under its own control (worker threads, whole
 * workloads) and reports its figure directly. Either may carry a target from an issue; the
 * runner shows whether the figure meets it.
 */

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
