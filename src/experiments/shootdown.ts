/**
 * src/experiments/shootdown.ts — TLB shootdown experiments: what a change to the page tables
 * costs the CPU that makes it and the CPUs that run the same mm, under Linux's flush protocol
 * (arch/x86/mm/tlb.c with tlb_single_page_flush_ceiling = 33), two fixed policies (always a full
 * flush, always per page) and LATR's lazy invalidation (kernel/arch/x86/tlb_latr.ts), across
 * CPUs, pages per flush, lazy TLB, PCIDs and batching.
 *
 * The workload, one run of the kernel per point (on the deterministic engine unless
 * ShootdownConfig.engine says parallel: then the passes below run on worker threads). A process
 * has a thread on every CPU. The threads on CPUs 1..N-1 keep a working set of `workingSet` pages
 * in their TLBs: a pass over it, then compute (odd CPUs) or a sleep (even CPUs, which therefore
 * sit idle — lazy — much of the time), each pass an eighth of a scheduler tick. The main thread on
 * CPU 0, the initiator, runs `rounds` rounds. Each round it maps `batch` ranges of `pages` pages,
 * each between two one-page read-only anchor mappings (so unmapping a range frees no page table
 * unless it covers a whole 2 MiB region: then every policy flushes synchronously), and writes
 * them; every other thread reads them once (so every TLB holds them); a pre-window of half a tick
 * passes; then it changes all ranges in one call — munmap, madvise(MADV_DONTNEED) or
 * mprotect(PROT_READ) — and a post-window of 1.5 ticks passes. With batch > 1 the one call is
 * munmap or mprotect over the span of the ranges, or for MADV_DONTNEED one mmu_gather over all
 * ranges (as SeongJae Park's 2025 series batches process_madvise); munmap still flushes at every
 * VMA end (x86 has no MMU_GATHER_MERGE_VMAS, so tlb_end_vma flushes) and this kernel's mprotect at
 * every VMA.
 *
 * Per point, per changed range (averaged over rounds):
 * - latency: the initiator's system call, cycles → µs at the cost model's clock; flushUs is the
 *   part spent in flush_tlb_mm_range (local flush, IPIs, waiting for the acknowledgements);
 * - flushes, IPIs sent, INVLPGs and TLB entries actually dropped (all CPUs, op + post-window);
 * - refill walks: the page walks the flush caused afterwards on CPUs 1..N-1, at once or lazily:
 *   each thread counts the walks of each of its passes over its working set; a pass after the
 *   change counts what it walks beyond the median pass of the pre-window (which covers walks
 *   that have nothing to do with the change, such as the full flushes of a CR3 switch without
 *   PCIDs);
 * - stale: translations of the changed ranges that some CPU could still use right after the call
 *   returned (hw/inspect.ts via TlbFlusher.usableStale). Must be 0 for synchronous policies.
 *   LATR leaves them by design until each CPU's next tick: the lazy window is reported
 *   (windowUs) and, at every release of held pages, the same inspector checks that no CPU can
 *   still reach them (releaseViolations, must be 0); KASAN reports and the mm invariant checker
 *   run too.
 *
 * Everything is computed from the run; the same point and seed give the same numbers.
 */

import { MAX_CPUS } from '../../hw/config.ts';
import { C_ENTRIES_FLUSHED, C_WALKS } from '../../hw/layout.ts';
import { Kernel, type KernelEngine, type KernelOptions } from '../../kernel/kernel.ts';
import { FULL_POLICY, LINUX_POLICY, PAGES_POLICY } from '../../kernel/arch/x86/tlb.ts';
import { LatrPolicy } from '../../kernel/arch/x86/tlb_latr.ts';
import { MAP_ANONYMOUS, MAP_FIXED, MAP_PRIVATE, PROT_READ, PROT_WRITE } from '../../kernel/mm/mmap.ts';
import { MADV_DONTNEED } from '../../kernel/mm/madvise.ts';
import { MmuGather } from '../../kernel/mm/mmu_gather.ts';
import { zap_range } from '../../kernel/mm/memory.ts';
import { check_vm_invariants } from '../../kernel/mm/debug_vm.ts';
import type { User } from '../../kernel/uapi.ts';
import type { KGen } from '../../kernel/sched/core.ts';
import { effectiveCostModel, type EffectiveCostModel } from './cost_model.ts';

export const POLICIES = ['linux', 'full', 'per-page', 'latr'] as const;
export type PolicyName = (typeof POLICIES)[number];
export const OPS = ['munmap', 'dontneed', 'mprotect'] as const;
export type OpName = (typeof OPS)[number];

/** Policies that must leave no usable stale entry behind when the call returns. */
export const SYNCHRONOUS_POLICIES: readonly PolicyName[] = ['linux', 'full', 'per-page'];

export const POLICY_DESCRIPTIONS: Record<PolicyName, string> = {
  linux: "Linux: INVLPG per page up to tlb_single_page_flush_ceiling (33), else a full flush; IPIs to CPUs running the mm",
  full: 'always a full flush (CR3 reload), IPIs as Linux',
  'per-page': 'always INVLPG per page, whatever the range, IPIs as Linux',
  latr: 'LATR (Kumar et al., ASPLOS 2018): munmap flushes lazily at each CPU\'s next tick or context switch, pages held until all caught up',
};

/** One point of the sweep. */
export interface ShootdownPoint {
  op: OpName;
  cpus: number;
  pages: number;
  policy: PolicyName;
  lazy: boolean;
  pcid: boolean;
  batch: number;
}

export interface ShootdownConfig {
  seed: number;
  /** Rounds per point (samples of the initiator latency). */
  rounds: number;
  /** Pages each remote thread keeps touching. */
  workingSet: number;
  /** Scheduler ticks per second (LATR's invalidations wait for a tick). */
  hz: number;
  /** Cost-model overrides for the kernel and machine. */
  kernel?: Pick<KernelOptions, 'hwCosts' | 'clockGhz' | 'costs'>;
  /** The --cost-model file `kernel` came from (recorded in the report, nothing more). */
  costModel?: string;
  /**
   * The engine each point's kernel runs on (default deterministic). On the parallel engine the
   * remote threads' passes over their working sets (touchPages) run on worker threads, so the
   * shootdown IPIs reach CPUs whose user code is running; a point is then one run's measurement.
   */
  engine?: KernelEngine;
}

export const DEFAULT_CONFIG: ShootdownConfig = { seed: 1, rounds: 3, workingSet: 32, hz: 1000 };

/** What one point measured, per changed range (averages over rounds unless named otherwise). */
export interface PointResult extends ShootdownPoint {
  /** Initiator latency of the call, µs: mean, median and maximum over rounds. */
  latencyUs: number;
  latencyUsP50: number;
  latencyUsMax: number;
  /** Initiator time inside flush_tlb_mm_range, µs. */
  flushUs: number;
  flushes: number;
  ipis: number;
  invlpgs: number;
  /** flush_tlb_func full flushes (CR3 reloads) on all CPUs, including catch-up flushes at switch. */
  fullFlushes: number;
  entriesFlushed: number;
  refillWalks: number;
  /** Largest number of usable stale translations of the changed ranges right after a call. */
  staleAfter: number;
  /** Flushes whose remote part was deferred (LATR). */
  deferred: number;
  /** LATR: the lazy window from recording a state to its completion, µs (0 for other policies). */
  windowUsMean: number;
  windowUsMax: number;
  /** LATR: pages held past their flush; usable translations found at their release (must be 0). */
  heldPages: number;
  releaseViolations: number;
  /** KASAN reports, all reports, and problems the mm invariant checker found at the end. */
  kasan: number;
  reports: number;
  invariantProblems: number;
  /** Per round: the initiator's latency per range, µs (for distributions). */
  samplesUs: number[];
}

/** The values a sweep takes in each dimension; its points are their product (sweepPoints). */
export interface ShootdownGrid {
  ops: OpName[];
  cpus: number[];
  pages: number[];
  policies: PolicyName[];
  lazy: boolean[];
  pcid: boolean[];
  batch: number[];
}

/** Every point of a grid, in the fixed order sweeps, shards and merged results use. */
export function sweepPoints(dims: { readonly [K in keyof ShootdownGrid]: readonly ShootdownGrid[K][number][] }): ShootdownPoint[] {
  const out: ShootdownPoint[] = [];
  for (const op of dims.ops)
    for (const batch of dims.batch)
      for (const pcid of dims.pcid)
        for (const lazy of dims.lazy)
          for (const cpus of dims.cpus)
            for (const pages of dims.pages)
              for (const policy of dims.policies) out.push({ op, cpus, pages, policy, lazy, pcid, batch });
  return out;
}

export function pointLabel(p: ShootdownPoint): string {
  return `${p.op} cpus=${p.cpus} pages=${p.pages} policy=${p.policy} lazy=${p.lazy ? 'on' : 'off'} pcid=${p.pcid ? 'on' : 'off'} batch=${p.batch}`;
}

const PAGE = 4096;
/** Where the ranges go: 1 page past a 2 MiB boundary, far from mmap_base. */
const RANGE_BASE = 0x10000000000 + PAGE;

function percentile(sorted: readonly number[], q: number): number {
  if (sorted.length === 0) return 0;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return sorted[i]!;
}

function mean(xs: readonly number[]): number {
  return xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : 0;
}

/** Run one point. */
export function runPoint(point: ShootdownPoint, config: ShootdownConfig = DEFAULT_CONFIG): PointResult {
  validatePoint(point, config);
  const { cpus, pages, batch, op } = point;
  const rounds = config.rounds;
  const ws = config.workingSet;
  // Frames: the working set, the ranges of every round (mprotect keeps them), tables, slack.
  const frames = ws + (op === 'mprotect' ? rounds : 2) * batch * (pages + 2) + 64 * cpus + 2048;
  const memoryBytes = Math.max(16 << 20, Math.ceil((frames * PAGE * 1.25) / (1 << 20)) << 20);
  const k = new Kernel({ cpus, seed: config.seed, pcid: point.pcid, memoryBytes, hz: config.hz, ...config.kernel });
  let latr: LatrPolicy | null = null;
  if (point.policy === 'latr') {
    latr = LatrPolicy.install(k);
    latr.checkOnRelease = true;
  } else k.tlb.policy = point.policy === 'full' ? FULL_POLICY : point.policy === 'per-page' ? PAGES_POLICY : LINUX_POLICY;
  k.tlb.lazyTlb = point.lazy;

  const tick = k.tickCycles;
  const pass = Math.max(1, Math.floor(tick / 8));
  // After the change: long enough for every CPU to take a tick (LATR applies states there) and
  // pass over its working set after it. Before it: a few passes for the baseline.
  const window = 12 * pass;
  const preWindow = 4 * pass;
  const remotes = cpus - 1;
  const st = { round: -1, stage: 'setup' as 'setup' | 'prime' | 'pre' | 'post' | 'stop', ranges: [] as [number, number][], primed: 0, done: 0 };
  /** Per remote CPU: walks of each pre-window pass of this round, and of the post-window passes. */
  const prePasses: number[][] = Array.from({ length: cpus }, () => []);
  const postPasses: number[][] = Array.from({ length: cpus }, () => []);
  const samples: number[] = [];
  const acc = { flushCycles: 0, flushes: 0, ipis: 0, invlpgs: 0, fullFlushes: 0, entries: 0, refills: 0, stale: 0, deferred: 0 };

  // The raw counters: counters() builds a whole record, and workers ask after every pass.
  const walksOf = (c: number): number => k.machine.cpu(c).c[C_WALKS]!;
  const snapEntries = (): number => {
    let s = 0;
    for (let c = 0; c < cpus; c++) s += k.machine.cpu(c).c[C_ENTRIES_FLUSHED]!;
    return s;
  };

  k.spawn(function* initiator(u: User) {
    const wsBase = yield* u.mmap(0, ws * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
    for (let i = 0; i < ws; i++) yield* u.store32(wsBase + i * PAGE, i);
    for (let c = 1; c < cpus; c++) {
      const sleepy = c % 2 === 0;
      yield* u.clone(function* worker(w: User) {
        let primedRound = -1;
        for (;;) {
          if (st.stage === 'stop') break;
          if (st.stage === 'prime' && primedRound !== st.round) {
            for (const [s, e] of st.ranges) yield* w.touchPages(s, e, 'read');
            primedRound = st.round;
            st.primed++;
          }
          const stage = st.stage;
          const before = walksOf(c);
          yield* w.touchPages(wsBase, wsBase + ws * PAGE, 'read');
          // A pass that began in the pre-window counts there, one that ended after it in the post-window.
          if (stage === 'pre' && st.stage === 'pre') prePasses[c]!.push(walksOf(c) - before);
          else if (st.stage === 'post') postPasses[c]!.push(walksOf(c) - before);
          if (sleepy) yield* w.sleep(pass);
          else yield* w.compute(pass);
        }
        st.done++;
      }, { cpu: c });
    }
    let cursor = RANGE_BASE;
    for (let r = 0; r < rounds; r++) {
      // Layout: [anchor][range][anchor][range]…[anchor], from one page past a 2 MiB boundary, in
      // page tables no earlier round used; anchors are read-only, so nothing merges.
      cursor = Math.ceil(cursor / (2 << 20)) * (2 << 20) + PAGE;
      const ranges: [number, number][] = [];
      yield* u.mmap(cursor, PAGE, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED);
      cursor += PAGE;
      for (let j = 0; j < batch; j++) {
        yield* u.mmap(cursor, pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED);
        ranges.push([cursor, cursor + pages * PAGE]);
        cursor += pages * PAGE;
        yield* u.mmap(cursor, PAGE, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED);
        cursor += PAGE;
      }
      for (const [s, e] of ranges) for (let a = s; a < e; a += PAGE) yield* u.store32(a, r);
      st.ranges = ranges;
      st.primed = 0;
      st.round = r;
      st.stage = 'prime';
      while (st.primed < remotes) yield* u.sleep(20_000);
      for (let c = 1; c < cpus; c++) {
        prePasses[c]!.length = 0;
        postPasses[c]!.length = 0;
      }
      st.stage = 'pre';
      yield* u.sleep(preWindow);
      const e1 = snapEntries();
      const s1 = { ...k.tlb.stats };

      const t0 = k.now();
      yield* change(u, op, ranges);
      const t1 = k.now();
      // Same engine step as the return: nothing ran in between.
      const lo = ranges[0]![0];
      const hi = ranges[ranges.length - 1]![1];
      const stale = k.tlb.usableStale((e) => e.va >= BigInt(lo) && e.va < BigInt(hi)).length;
      const s2 = { ...k.tlb.stats };
      st.stage = 'post';
      yield* u.sleep(window);
      st.stage = 'setup';
      const e3 = snapEntries();
      const s3 = k.tlb.stats;

      samples.push(k.micros(t1 - t0) / batch);
      acc.flushCycles += s2.initiatorCycles - s1.initiatorCycles;
      acc.flushes += s2.flushes - s1.flushes;
      acc.deferred += s2.deferred - s1.deferred;
      acc.ipis += s3.ipis - s1.ipis;
      acc.invlpgs += s3.invlpgs - s1.invlpgs;
      acc.fullFlushes += s3.fullFlushes + s3.switchFlushes - s1.fullFlushes - s1.switchFlushes;
      acc.entries += e3 - e1;
      for (let c = 1; c < cpus; c++) {
        const pre = prePasses[c]!.slice().sort((x, y) => x - y);
        const base = pre.length ? pre[(pre.length - 1) >> 1]! : 0;
        for (const x of postPasses[c]!) acc.refills += Math.max(0, x - base);
      }
      acc.stale = Math.max(acc.stale, stale);
    }
    st.stage = 'stop';
    while (st.done < remotes) yield* u.sleep(20_000);
  }, { cpu: 0 });

  const res = k.runOn(config.engine ?? 'deterministic', { maxSteps: 50_000_000 });
  if (res.reason !== 'done' || k.liveTasks() !== 0) throw new Error(`shootdown point ${pointLabel(point)} did not finish (${res.reason} after ${res.steps} steps)`);
  const n = rounds * batch;
  const sorted = samples.slice().sort((a, b) => a - b);
  const windows = latr ? latr.stats.windowCycles.map((c) => k.micros(c)) : [];
  const inv = check_vm_invariants(k, { limit: 20 });
  return {
    ...point,
    latencyUs: mean(samples),
    latencyUsP50: percentile(sorted, 0.5),
    latencyUsMax: sorted.length ? sorted[sorted.length - 1]! : 0,
    flushUs: k.micros(acc.flushCycles) / n,
    flushes: acc.flushes / n,
    ipis: acc.ipis / n,
    invlpgs: acc.invlpgs / n,
    fullFlushes: acc.fullFlushes / n,
    entriesFlushed: acc.entries / n,
    refillWalks: acc.refills / n,
    staleAfter: acc.stale,
    deferred: acc.deferred / n,
    windowUsMean: mean(windows),
    windowUsMax: windows.length ? Math.max(...windows) : 0,
    heldPages: latr ? latr.stats.heldPages : 0,
    releaseViolations: latr ? latr.releaseViolations.length : 0,
    kasan: k.reports.count('KASAN'),
    reports: k.reports.count(),
    invariantProblems: inv.problems.length,
    samplesUs: samples,
  };
}

/** The change itself, on all ranges, in one call. */
function* change(u: User, op: OpName, ranges: readonly [number, number][]): KGen {
  const lo = ranges[0]![0];
  const hi = ranges[ranges.length - 1]![1];
  if (op === 'munmap') {
    yield* u.munmap(lo, hi - lo);
  } else if (op === 'mprotect') {
    yield* u.mprotect(lo, hi - lo, PROT_READ);
  } else if (ranges.length === 1) {
    yield* u.madvise(lo, hi - lo, MADV_DONTNEED);
  } else {
    // MADV_DONTNEED over several ranges with one mmu_gather (process_madvise batching).
    yield* u.call('process_madvise', function* (k, t) {
      const mm = t.mm!;
      yield* k.locks.mmap_read_lock(mm, 'do_madvise');
      try {
        const tlb = new MmuGather(k, mm, false, k.tlb, k.pt, 'tlb_finish_mmu <- process_madvise');
        for (const [s, e] of ranges) {
          const vma = mm.vma_lookup(s);
          if (vma) yield* zap_range(k, tlb, vma, s, e);
        }
        yield* tlb.finish();
      } finally {
        k.locks.mmap_read_unlock(mm);
      }
      return 0;
    });
  }
}

/** Throws a RangeError naming the first field of a point the experiment cannot run. */
export function validatePoint(p: ShootdownPoint, config: ShootdownConfig): void {
  if (!(OPS as readonly string[]).includes(p.op)) throw new RangeError(`unknown op "${p.op}"`);
  if (!(POLICIES as readonly string[]).includes(p.policy)) throw new RangeError(`unknown policy "${p.policy}"`);
  if (!Number.isInteger(p.cpus) || p.cpus < 1 || p.cpus > MAX_CPUS) throw new RangeError(`cpus must be 1..${MAX_CPUS}, got ${p.cpus}`);
  if (!Number.isInteger(p.pages) || p.pages < 1 || p.pages > 4096) throw new RangeError(`pages must be 1..4096, got ${p.pages}`);
  if (!Number.isInteger(p.batch) || p.batch < 1 || p.batch > 64) throw new RangeError(`batch must be 1..64, got ${p.batch}`);
  if (!Number.isInteger(config.rounds) || config.rounds < 1) throw new RangeError(`rounds must be at least 1, got ${config.rounds}`);
  if (!Number.isInteger(config.workingSet) || config.workingSet < 1) throw new RangeError(`working set must be at least 1 page, got ${config.workingSet}`);
}

/** The result of a sweep, as `--json` prints it (JSON Schema in shootdown-report.ts). */
export interface ShootdownReport {
  schema: 'mmulab.shootdown/1';
  config: {
    seed: number;
    rounds: number;
    workingSet: number;
    hz: number;
    clockGhz: number;
    tickUs: number;
    /** The --cost-model file (absent: the built-in costs). */
    costModel?: string;
    /** Every cost the sweep's machines used (merge refuses shards whose costs differ). */
    costs: EffectiveCostModel;
    /** Present when the points ran on the parallel engine (each one run's measurement, not reproducible by seed). */
    engine?: 'parallel';
  };
  /** The whole sweep's grid (also in a shard, which holds only some of its points). */
  grid: ShootdownGrid;
  /** Present when this report holds one shard of the grid: every count-th point from the index-th (1-based). */
  shard?: { index: number; count: number };
  points: PointResult[];
  /** Correctness summary: counts over all points (every one must be 0). */
  checks: { staleAfterSynchronous: number; releaseViolations: number; kasan: number; invariantProblems: number };
}

/** The report of a sweep's points: all of `grid`'s, or with `shard` that shard's. */
export function summarise(points: PointResult[], config: ShootdownConfig, grid: ShootdownGrid, shard?: { index: number; count: number }): ShootdownReport {
  const probe = new Kernel({ cpus: 1, memoryBytes: 1 << 20, hz: config.hz, ...config.kernel });
  return {
    schema: 'mmulab.shootdown/1',
    config: {
      seed: config.seed,
      rounds: config.rounds,
      workingSet: config.workingSet,
      hz: config.hz,
      clockGhz: probe.machine.config.cost.clockGhz,
      tickUs: probe.micros(probe.tickCycles),
      ...(config.costModel ? { costModel: config.costModel } : {}),
      costs: effectiveCostModel(config.kernel),
      ...(config.engine === 'parallel' ? { engine: 'parallel' as const } : {}),
    },
    grid,
    ...(shard ? { shard } : {}),
    points,
    checks: checksOf(points),
  };
}

/** The correctness counts over `points` (each must be 0). */
export function checksOf(points: readonly PointResult[]): ShootdownReport['checks'] {
  return {
    staleAfterSynchronous: points.filter((p) => SYNCHRONOUS_POLICIES.includes(p.policy)).reduce((a, p) => a + p.staleAfter, 0),
    releaseViolations: points.reduce((a, p) => a + p.releaseViolations, 0),
    kasan: points.reduce((a, p) => a + p.kasan, 0),
    invariantProblems: points.reduce((a, p) => a + p.invariantProblems, 0),
  };
}
