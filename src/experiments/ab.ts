/**
 * src/experiments/ab.ts — `mmulab ab`: the same binder workload on two or more page-mapping
 * designs (and identity variants), across seeds, with everything an mm engineer asks of a
 * driver design measured on the emulated machine: throughput and latency in virtual time, who
 * took the receiver's mmap_lock and who waited for it, per-VMA lock successes and fallbacks,
 * receiver page faults, PTE installs and zaps, TLB shootdowns, IPIs and flushed entries,
 * frames in use and checker reports. Differences between designs are paired by seed and come
 * with a 95% confidence interval.
 *
 * Workloads (all built on src/workloads/binder_throughput.ts):
 *   sync-0, sync-4k, sync-64k  binderThroughputTest: 2 workers, synchronous, that payload size;
 *                              each service reads the payload out of its mapping
 *   nop-64k                    sync-64k with services that never read it, as the original
 *                              test's BINDER_NOP handler: the receivers touch no payload page
 *   oneway                     a oneway flood (TF_ONE_WAY, 2 KiB) into a single binder thread
 *   pressure                   sync-4k while a shrinker task reclaims the whole binder LRU
 *                              every 20 µs (pages are zapped and installed again and again)
 *   mmap-contention            sync-4k plus, in every receiver, two threads that mmap, touch
 *                              and munmap anonymous memory, with the shrinker running
 *   spread                     sync-4k with each receiver's extra threads spread over every
 *                              CPU touching their memory, so each reclaim shoots down TLBs
 *
 * Attribution of mmap_lock traffic: an acquisition whose caller label belongs to the driver
 * (DRIVER_CALLER) is "caused by the driver"; waits of the receiver's own threads are counted
 * by pid. Virtual time is converted with the cost model's clock.
 */

import { Kernel, type KernelEngine, type KernelOptions } from '../../kernel/kernel.ts';
import type { User } from '../../kernel/uapi.ts';
import type { KGen } from '../../kernel/sched/core.ts';
import { BinderDevice } from '../../drivers/android/binder/binder.ts';
import { DESIGNS, IDENTITY_VARIANTS, type DesignName, type DesignOptions, type IdentityVariant } from '../../drivers/android/binder/page_mapping.ts';
import { insertCounters, zapCounters } from '../../kernel/mm/memory.ts';
import { check_vm_invariants } from '../../kernel/mm/debug_vm.ts';
import { binder_check_device } from '../../drivers/android/binder/binder_alloc_debug.ts';
import { MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE } from '../../kernel/mm/mmap.ts';
import { C_ENTRIES_FLUSHED } from '../../hw/layout.ts';
import { spawnThroughput, type ThroughputOptions } from '../workloads/binder_throughput.ts';
import { confidence, pairedDifference, percentile, significant, type Interval } from './stats.ts';
import { effectiveCostModel, type EffectiveCostModel } from './cost_model.ts';
import { ATTACK_MIN_CPUS } from './attack.ts';

export const WORKLOADS = ['sync-0', 'sync-4k', 'sync-64k', 'nop-64k', 'oneway', 'pressure', 'mmap-contention', 'spread'] as const;
export type WorkloadName = (typeof WORKLOADS)[number];

export const WORKLOAD_HELP: Record<WorkloadName, string> = {
  'sync-0': 'binderThroughputTest shape: 2 workers, synchronous, 0-byte payload',
  'sync-4k': 'the same with 4 KiB payloads',
  'sync-64k': 'the same with 64 KiB payloads',
  'nop-64k': "sync-64k with services that never read the payload (binderThroughputTest's own BINDER_NOP handler)",
  oneway: 'a oneway flood of 2 KiB transactions into one binder thread',
  pressure: 'sync-4k while the shrinker reclaims the binder LRU every 20 µs',
  'mmap-contention': 'sync-4k, shrinker, and receiver threads that mmap, touch and munmap',
  spread: 'sync-4k with receiver threads spread over every CPU; reclaim shoots down TLBs',
};

/** A design as the A/B compares it: a design and, for the eager designs, its identity check. */
export interface AbConfig {
  label: string;
  design: DesignOptions;
}

const EAGER: readonly DesignName[] = ['eager', 'eager-writelock', 'eager-deferred'];

/** Parse `eager`, `eager:vm_ops`, `fault` … into configs; throws naming the bad part. */
export function parseConfig(spec: string): AbConfig {
  const [name, variant, extra] = spec.split(':');
  if (extra !== undefined) throw new RangeError(`design "${spec}" has more than one ':'`);
  if (!(DESIGNS as readonly string[]).includes(name!)) throw new RangeError(`unknown design "${name}" (known: ${DESIGNS.join(', ')})`);
  const design = name as DesignName;
  if (variant === undefined) return { label: design, design: { design } };
  if (!EAGER.includes(design)) throw new RangeError(`design "${design}" has no identity variants (only ${EAGER.join(', ')} do)`);
  if (!(IDENTITY_VARIANTS as readonly string[]).includes(variant)) throw new RangeError(`unknown identity variant "${variant}" (known: ${IDENTITY_VARIANTS.join(', ')})`);
  return { label: `${design}:${variant}`, design: { design, identity: variant as IdentityVariant } };
}

/** Every design with its default identity check. */
export function defaultConfigs(): AbConfig[] {
  return DESIGNS.map((d) => parseConfig(d));
}

/** Labels of driver code in lock statistics (caller labels the binder designs pass). */
export const DRIVER_CALLER = /^(binder|use_page|rust_shrink|MmWithUser|VmaRef|VmaMixedMap)/;

export interface AbRunOptions {
  config: AbConfig;
  workload: WorkloadName;
  seed: number;
  cpus: number;
  /** Iterations per worker. */
  iterations: number;
  kernel?: KernelOptions;
  /** The engine the kernel runs on (default deterministic). */
  engine?: KernelEngine;
}

/** What one run measured. */
export interface AbMetrics {
  transactions: number;
  failures: number;
  failuresByKind: Record<string, number>;
  txPerSec: number;
  latencyUs: { p50: number; p90: number; p99: number; max: number };
  /** Latency samples in µs (for charts); at most 2,000, evenly picked. */
  latencySampleUs: number[];
  mmapLock: { driverAcquisitions: number; driverContended: number; driverWaitUs: number; ownAcquisitions: number; ownContended: number; receiverWaitUs: number; receiverWaitBehindDriverUs: number };
  vmaLock: { success: number; fallback: number; driverSuccess: number; driverFallback: number };
  receiverFaults: number;
  pteInstalls: number;
  pteZaps: number;
  shootdowns: number;
  ipis: number;
  flushedEntries: number;
  peakFrames: number;
  reclaimed: number;
  reports: string[];
  virtualUs: number;
}

function workloadShape(w: WorkloadName, cpus: number): { t: Partial<ThroughputOptions>; shrinkEvery: number; churn: boolean; spread: boolean } {
  switch (w) {
    case 'sync-0':
      return { t: { payload: 0 }, shrinkEvery: 0, churn: false, spread: false };
    case 'sync-4k':
      return { t: { payload: 4096 }, shrinkEvery: 0, churn: false, spread: false };
    case 'sync-64k':
      return { t: { payload: 65536 }, shrinkEvery: 0, churn: false, spread: false };
    case 'nop-64k':
      return { t: { payload: 65536, receiverReads: false }, shrinkEvery: 0, churn: false, spread: false };
    case 'oneway':
      return { t: { payload: 2048, oneway: true }, shrinkEvery: 0, churn: false, spread: false };
    case 'pressure':
      return { t: { payload: 4096 }, shrinkEvery: 60_000, churn: false, spread: false };
    case 'mmap-contention':
      return { t: { payload: 4096 }, shrinkEvery: 60_000, churn: true, spread: false };
    case 'spread':
      return { t: { payload: 4096 }, shrinkEvery: 60_000, churn: false, spread: cpus > 2 };
  }
}

/** A thread that keeps mapping, touching and unmapping anonymous memory (mmap_lock writers). */
function* churn(t: User, _w: number, stop: () => boolean): KGen {
  while (!stop()) {
    const a = yield* t.mmap(0, 4 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
    for (let i = 0; i < 4; i++) yield* t.store32(a + i * 4096, i);
    yield* t.munmap(a, 4 * 4096);
    yield* t.sleep(5_000);
  }
}

/** A thread that keeps its working set hot on its CPU (the mm stays in that CPU's TLB). */
function* toucher(t: User, _w: number, stop: () => boolean): KGen {
  const a = yield* t.mmap(0, 8 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
  while (!stop()) {
    for (let i = 0; i < 8; i++) yield* t.load32(a + i * 4096);
    yield* t.sleep(10_000);
  }
}

/** Run one (design, workload, seed) on a fresh kernel. */
export function runAbCase(o: AbRunOptions): AbMetrics {
  const k = new Kernel({ memoryBytes: 128 << 20, ...o.kernel, cpus: o.cpus, seed: o.seed });
  const dev = new BinderDevice(k, { design: o.config.design });
  const shape = workloadShape(o.workload, o.cpus);
  const extra: ThroughputOptions['extraThreads'] = [];
  if (shape.churn) for (let i = 0; i < 2; i++) extra.push({ body: churn });
  if (shape.spread) for (let c = 0; c < o.cpus; c++) extra.push({ body: toucher, cpu: () => c });
  const res = spawnThroughput(k, { workers: 2, iterations: o.iterations, payload: 0, seed: o.seed, thinkCycles: 3_000, extraThreads: extra, ...shape.t });
  let reclaimed = 0;
  if (shape.shrinkEvery) {
    res.extraRunning++;
    k.spawn(
      function* kswapd(u: User) {
        while (res.finished < 2) {
          yield* u.sleep(shape.shrinkEvery);
          const [n] = yield* u.call('binder_shrink', (kk) => wrap(dev.shrink(1 << 20), kk));
          reclaimed += n!;
        }
        res.extraRunning--;
      },
      { comm: 'kswapd0' },
    );
  }
  // Snapshot the receivers' lock statistics while their processes are alive.
  const problems: string[] = [];
  let lockSnap: AbMetrics['mmapLock'] = { driverAcquisitions: 0, driverContended: 0, driverWaitUs: 0, ownAcquisitions: 0, ownContended: 0, receiverWaitUs: 0, receiverWaitBehindDriverUs: 0 };
  res.onAllSent = () => {
    const inv = check_vm_invariants(k);
    if (!inv.ok) problems.push(...inv.problems);
    let dA = 0, dC = 0, dW = 0, oA = 0, oC = 0, rW = 0, rB = 0;
    for (const pid of res.workerPids) {
      const task = k.tasks.get(pid);
      const mm = task?.mm;
      if (!mm) continue;
      const st = mm.mmap_lock.stats;
      for (const [caller, s] of st.byCaller) {
        if (DRIVER_CALLER.test(caller)) {
          dA += s.acquisitions;
          dC += s.contended;
          dW += s.waitCycles;
        } else {
          oA += s.acquisitions;
          oC += s.contended;
        }
      }
      for (const [wpid, cyc] of st.waitByPid) if (res.receiverTids.has(wpid)) rW += cyc;
      for (const [holder, cyc] of st.blockedBy) if (DRIVER_CALLER.test(holder)) rB += cyc;
    }
    lockSnap = { driverAcquisitions: dA, driverContended: dC, driverWaitUs: k.micros(dW), ownAcquisitions: oA, ownContended: oC, receiverWaitUs: k.micros(rW), receiverWaitBehindDriverUs: k.micros(rB) };
  };
  const r = k.runOn(o.engine ?? 'deterministic', { maxSteps: 200_000_000 });
  if (r.reason !== 'done') throw new Error(`${o.config.label}/${o.workload}/seed ${o.seed}: the run ended with "${r.reason}" instead of finishing`);
  // At the end, with every process gone: the mm books again, and binder's (no allocator, page or
  // LRU entry may outlive its process).
  problems.push(...check_vm_invariants(k).problems, ...binder_check_device(dev));
  const lat = res.latencies.map((c) => k.micros(c)).sort((a, b) => a - b);
  let driverSuccess = 0, driverFallback = 0;
  for (const [caller, s] of k.locks.vmaStats.byCaller) {
    if (!DRIVER_CALLER.test(caller)) continue;
    driverSuccess += s.success;
    driverFallback += s.fail;
  }
  const ins = insertCounters(k);
  const sample: number[] = [];
  const step = Math.max(1, Math.ceil(lat.length / 2000));
  for (let i = 0; i < lat.length; i += step) sample.push(lat[i]!);
  const virtualSeconds = k.micros(res.elapsedCycles) / 1e6;
  return {
    transactions: res.transactions,
    failures: res.failures,
    failuresByKind: res.failuresByKind,
    txPerSec: virtualSeconds > 0 ? res.transactions / virtualSeconds : 0,
    latencyUs: { p50: percentile(lat, 50), p90: percentile(lat, 90), p99: percentile(lat, 99), max: lat.length ? lat[lat.length - 1]! : NaN },
    latencySampleUs: sample,
    mmapLock: lockSnap,
    vmaLock: { success: k.locks.vmaStats.success, fallback: k.locks.vmaStats.abort + k.locks.vmaStats.miss, driverSuccess, driverFallback },
    receiverFaults: res.receiverFaults,
    pteInstalls: ins.inserted + ins.pfn,
    pteZaps: zapCounters(k).ptes,
    shootdowns: k.tlb.stats.flushes,
    ipis: k.tlb.stats.ipis,
    flushedEntries: k.machine.cpus.reduce((s, c) => s + c.c[C_ENTRIES_FLUSHED]!, 0),
    peakFrames: res.peakFrames,
    reclaimed,
    reports: [...problems.map((p) => `invariant: ${p}`), ...k.reports.reports.map((x) => x.title)],
    virtualUs: k.micros(res.elapsedCycles),
  };
}

/** Adapt a kernel generator returning a number into u.call's result shape. */
function* wrap(g: KGen<number>, _k: Kernel): KGen<number[]> {
  return [yield* g];
}

// ---- the whole comparison ------------------------------------------------------------------

export interface AbOptions {
  configs: AbConfig[];
  workloads: WorkloadName[];
  seeds: number[];
  cpus: number;
  iterations: number;
  kernel?: KernelOptions;
  engine?: KernelEngine;
}

export interface AbCaseResult {
  config: string;
  workload: WorkloadName;
  seed: number;
  metrics: AbMetrics;
}

/** Scalar metrics summarised per design (name → getter), in report order. */
export const SUMMARY_METRICS: { key: string; label: string; unit: string; get: (m: AbMetrics) => number; better: 'higher' | 'lower' }[] = [
  { key: 'txPerSec', label: 'tx/s (virtual)', unit: 'tx/s', get: (m) => m.txPerSec, better: 'higher' },
  { key: 'p50', label: 'p50 latency', unit: 'µs', get: (m) => m.latencyUs.p50, better: 'lower' },
  { key: 'p90', label: 'p90 latency', unit: 'µs', get: (m) => m.latencyUs.p90, better: 'lower' },
  { key: 'p99', label: 'p99 latency', unit: 'µs', get: (m) => m.latencyUs.p99, better: 'lower' },
  { key: 'max', label: 'max latency', unit: 'µs', get: (m) => m.latencyUs.max, better: 'lower' },
  { key: 'driverLock', label: 'mmap_lock by driver', unit: 'acq', get: (m) => m.mmapLock.driverAcquisitions, better: 'lower' },
  { key: 'driverContended', label: 'driver contended', unit: 'acq', get: (m) => m.mmapLock.driverContended, better: 'lower' },
  { key: 'driverWait', label: 'driver waited', unit: 'µs', get: (m) => m.mmapLock.driverWaitUs, better: 'lower' },
  { key: 'ownContended', label: 'receiver contended', unit: 'acq', get: (m) => m.mmapLock.ownContended, better: 'lower' },
  { key: 'receiverWait', label: 'receiver waited', unit: 'µs', get: (m) => m.mmapLock.receiverWaitUs, better: 'lower' },
  { key: 'waitBehindDriver', label: 'waited behind the driver', unit: 'µs', get: (m) => m.mmapLock.receiverWaitBehindDriverUs, better: 'lower' },
  { key: 'vmaSuccess', label: 'VMA lock ok (driver)', unit: '', get: (m) => m.vmaLock.driverSuccess, better: 'higher' },
  { key: 'vmaFallback', label: 'VMA lock fallback (driver)', unit: '', get: (m) => m.vmaLock.driverFallback, better: 'lower' },
  { key: 'faults', label: 'receiver faults', unit: '', get: (m) => m.receiverFaults, better: 'lower' },
  { key: 'installs', label: 'PTE installs', unit: '', get: (m) => m.pteInstalls, better: 'lower' },
  { key: 'zaps', label: 'PTE zaps', unit: '', get: (m) => m.pteZaps, better: 'lower' },
  { key: 'shootdowns', label: 'TLB flushes', unit: '', get: (m) => m.shootdowns, better: 'lower' },
  { key: 'ipis', label: 'IPIs', unit: '', get: (m) => m.ipis, better: 'lower' },
  { key: 'flushed', label: 'entries flushed', unit: '', get: (m) => m.flushedEntries, better: 'lower' },
  { key: 'frames', label: 'peak frames', unit: '', get: (m) => m.peakFrames, better: 'lower' },
  { key: 'reports', label: 'checker reports', unit: '', get: (m) => m.reports.length, better: 'lower' },
];

export interface AbSummaryRow {
  config: string;
  workload: WorkloadName;
  metrics: Record<string, Interval>;
  /** Paired difference against the first config, per metric (absent for the first config). */
  vsBaseline?: Record<string, Interval & { significant: boolean }>;
  reports: string[];
}

/** A security scenario's verdict for one compared design (from src/experiments/attack.ts). */
export interface AbVerdict {
  config: string;
  scenario: string;
  title: string;
  verdict: 'vulnerable' | 'immune' | 'not-applicable';
  summary: string;
}

export interface AbResult {
  schema: 'mmulab.ab/1';
  options: {
    configs: string[];
    workloads: WorkloadName[];
    seeds: number[];
    cpus: number;
    iterations: number;
    /** The --cost-model file (absent: the built-in costs). */
    costModel?: string;
    /** Every cost the run's machines used (merge refuses shards whose costs differ). */
    costs: EffectiveCostModel;
    /** Whether the run includes the security scenarios (false with --no-attack); shard 1 holds them. */
    attack: boolean;
    /** Present when the kernel ran on the parallel engine (not reproducible by seed). */
    engine?: 'parallel';
  };
  cases: AbCaseResult[];
  summary: AbSummaryRow[];
  /** CPUs of each security scenario's machine: options.cpus, at least ATTACK_MIN_CPUS (with `attack`). */
  attackCpus?: number;
  /** The security scenarios run against each compared design (absent with --no-attack). */
  attack?: AbVerdict[];
}

/** CPUs of the security scenarios' machine in an ab run on `cpus` CPUs: as many, but at least ATTACK_MIN_CPUS. */
export function attackCpusFor(cpus: number): number {
  return Math.max(ATTACK_MIN_CPUS, cpus);
}

/** Where the security scenarios ran, for the table and the HTML report: "on 4 CPUs", and why when --cpus was raised. */
export function attackMachineText(r: Pick<AbResult, 'options' | 'attackCpus'>): string {
  const cpus = r.attackCpus ?? attackCpusFor(r.options.cpus);
  const raised = cpus !== r.options.cpus ? ` (--cpus ${r.options.cpus} raised to ${cpus}: the scenarios need at least ${ATTACK_MIN_CPUS}, scenario 3's reader runs on CPU 1)` : '';
  return `on ${cpus} CPU${cpus === 1 ? '' : 's'}${raised}`;
}

/** The attack target a compared design stands for: eager designs default to the `mapped` check. */
export function attackTargetOf(c: AbConfig): { design: DesignName; variant: IdentityVariant | null } {
  if (!EAGER.includes(c.design.design)) return { design: c.design.design, variant: null };
  return { design: c.design.design, variant: c.design.identity ?? 'mapped' };
}

/** The cases of a comparison, in a fixed order (workload, config, seed). */
export function abCases(o: AbOptions): AbRunOptions[] {
  const out: AbRunOptions[] = [];
  for (const workload of o.workloads) for (const config of o.configs) for (const seed of o.seeds) out.push({ config, workload, seed, cpus: o.cpus, iterations: o.iterations, kernel: o.kernel, ...(o.engine ? { engine: o.engine } : {}) });
  return out;
}

/** Summarise finished cases (from one process or merged from shards). */
export function summarise(options: AbResult['options'], cases: AbCaseResult[]): AbResult {
  const summary: AbSummaryRow[] = [];
  for (const workload of options.workloads) {
    const base = options.configs[0]!;
    const bySeed = (config: string) => options.seeds.map((s) => cases.find((c) => c.config === config && c.workload === workload && c.seed === s));
    const baseCases = bySeed(base);
    for (const config of options.configs) {
      const cs = bySeed(config);
      if (cs.some((c) => !c)) continue; // not all seeds present (a partial shard)
      const ms = cs.map((c) => c!.metrics);
      const row: AbSummaryRow = { config, workload, metrics: {}, reports: [...new Set(ms.flatMap((m) => m.reports))] };
      for (const sm of SUMMARY_METRICS) row.metrics[sm.key] = confidence(ms.map(sm.get));
      if (config !== base && baseCases.every((c) => c)) {
        row.vsBaseline = {};
        for (const sm of SUMMARY_METRICS) {
          const d = pairedDifference(baseCases.map((c) => sm.get(c!.metrics)), ms.map(sm.get));
          row.vsBaseline[sm.key] = { ...d, significant: significant(d) };
        }
      }
      summary.push(row);
    }
  }
  return { schema: 'mmulab.ab/1', options, cases, summary };
}

/** Run every case here, in order, calling `tick` after each (no security scenarios: see mmulab ab). */
export function runAb(o: AbOptions, tick: () => void = () => {}): AbResult {
  const cases: AbCaseResult[] = [];
  for (const c of abCases(o)) {
    cases.push({ config: c.config.label, workload: c.workload, seed: c.seed, metrics: runAbCase(c) });
    tick();
  }
  return summarise({ configs: o.configs.map((c) => c.label), workloads: o.workloads, seeds: o.seeds, cpus: o.cpus, iterations: o.iterations, costs: effectiveCostModel(o.kernel), attack: false, ...(o.engine === 'parallel' ? { engine: 'parallel' as const } : {}) }, cases);
}
