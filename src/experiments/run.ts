/**
 * src/experiments/run.ts — `mmulab run`: run a scenario (src/experiments/scenario.ts) to the end
 * and report what the MMU and the kernel did: TLB lookups, hits, misses and hit rates of the L1
 * data TLB, the L1 instruction TLB, both L1 TLBs together and the second-level TLB; page walks
 * and their memory references; page faults (per process, and by how the kernel resolved them);
 * each process's RSS when its program ended; and virtual time. As a table or as JSON
 * (schema "mmulab.run/1", described on RunResult below).
 *
 * Where each number comes from: L1, STLB, walk and #PF counts are the CPUs' hardware counters
 * (hw/cpu.ts counters(), summed over CPUs); the L1 dTLB/iTLB split comes from the instruction
 * side's own counters (fetchLookups, fetchL1Misses, …: every translated fetch is one lookup of
 * the instruction TLB, ending in one L1 hit or one L1 miss), the data side being the rest, so the
 * two sides add up to the L1 counters exactly. A hit rate is hits / lookups,
 * null (printed "-") when there were no lookups. Page faults are perf's page-faults event of
 * each thread (Task.stats.faults: one per #PF that reached do_user_addr_fault), and `byKind` is
 * the kernel's own tally of resolved faults (kernel/mm/memory.ts faultCounters). The hardware #PF
 * count is higher: an access retried after its fault is handled counts again if the handler left
 * it faulting (a retry, a spurious fault), and the access-stream fast path translates a faulting
 * access once more before entering the kernel.
 *
 * A run that finishes ends with the invariant checkers (kernel/mm/debug_vm.ts, and binder's books
 * for the binder workload); a violation is a BUG report, and so a finding. `--debug-vm` also
 * audits the mm after every engine step (KernelOptions.debugVm).
 */

import type { CpuCounters } from '../../hw/cpu.ts';
import { faultCounters, type FaultCounters } from '../../kernel/mm/memory.ts';
import { percentile } from './stats.ts';
import type { RunOutcome, Scenario, WorkloadName } from './scenario.ts';
import { check_vm_invariants } from '../../kernel/mm/debug_vm.ts';
import { binder_check_device } from '../../drivers/android/binder/binder_alloc_debug.ts';

/** Lookups, hits, misses and the hit rate (null without lookups) of one TLB level. */
export interface TlbLevel {
  lookups: number;
  hits: number;
  misses: number;
  hitRate: number | null;
}

export interface RunProcess {
  pid: number;
  comm: string;
  threads: number;
  faults: number;
  /** RSS when its last thread's program ended. */
  rssKb: number;
  runCycles: number;
  error?: string;
}

/** The result of `mmulab run --json`. */
export interface RunResult {
  schema: 'mmulab.run/1';
  workload: WorkloadName;
  description: string;
  options: Record<string, unknown>;
  /** How the run ended (always "done" unless it was stopped at --max-steps). */
  outcome: RunOutcome;
  tlb: {
    /** L1 data TLB (loads, stores, and the kernel's accesses to user memory). */
    l1d: TlbLevel;
    /** L1 instruction TLB (fetches). */
    l1i: TlbLevel;
    /** Both L1 TLBs (the CPUs' l1Hits and l1Misses counters). */
    l1: TlbLevel;
    /** Second-level TLB (looked up on an L1 miss). */
    stlb: TlbLevel;
    /** The STLB lookups of each side. */
    stlbBySide: { data: TlbLevel; inst: TlbLevel };
    walks: number;
    walksBySide: { data: number; inst: number };
    walkMemRefs: number;
    /** Paging-structure cache hits (a walk that skipped levels). */
    pscHits: number;
  };
  faults: {
    /** perf page-faults of the workload's threads. */
    total: number;
    /** #PF exceptions the CPUs raised (see the file header). */
    hardware: number;
    byKind: FaultCounters;
  };
  rss: { kb: number; anonKb: number; fileKb: number; shmemKb: number };
  cycles: { elapsed: number; elapsedUs: number; clockGhz: number; perCpu: number[] };
  processes: RunProcess[];
  perCpu: CpuCounters[];
  binder?: { transactions: number; failures: number; latencyUs: { p50: number; p99: number; max: number } };
  lackey?: { lines: number; fetches: number; loads: number; stores: number; modifies: number; bytes: Record<string, number>; pages: number; mappings: number; translations: number };
  trace?: { file: string; format: 'ftrace' | 'json'; events: number };
  /** Titles of the checker reports (KASAN, lockdep, WARN/BUG, killed programs). */
  reports: string[];
}

function level(lookups: number, misses: number): TlbLevel {
  const hits = lookups - misses;
  return { lookups, hits, misses, hitRate: lookups > 0 ? hits / lookups : null };
}

function stlbLevel(hits: number, misses: number): TlbLevel {
  const lookups = hits + misses;
  return { lookups, hits, misses, hitRate: lookups > 0 ? hits / lookups : null };
}

/** One L1 TLB side's share of the translation counters. */
export interface TlbSide {
  /** Translations that looked this side's L1 TLB up. */
  lookups: number;
  l1Misses: number;
  stlbHits: number;
  stlbMisses: number;
  walks: number;
}

/** The two sides' shares: the instruction side's from its own counters, the data side's the rest. */
function tlbSides(sum: (name: string) => number): { data: TlbSide; inst: TlbSide } {
  const inst: TlbSide = { lookups: sum('fetchLookups'), l1Misses: sum('fetchL1Misses'), stlbHits: sum('fetchStlbHits'), stlbMisses: sum('fetchStlbMisses'), walks: sum('fetchWalks') };
  const data: TlbSide = {
    lookups: sum('l1Hits') + sum('l1Misses') - inst.lookups,
    l1Misses: sum('l1Misses') - inst.l1Misses,
    stlbHits: sum('stlbHits') - inst.stlbHits,
    stlbMisses: sum('stlbMisses') - inst.stlbMisses,
    walks: sum('walks') - inst.walks,
  };
  return { data, inst };
}

function sideStlb(s: TlbSide): TlbLevel {
  return stlbLevel(s.stlbHits, s.stlbMisses);
}

/**
 * The invariant checkers at the end of a run that finished (every program ended, so no kernel
 * operation is half done): the mm audit, binder's books when the workload used it, and every
 * frame back (as many in use as when the kernel booted). Problems are filed as one BUG report,
 * which makes the run a finding.
 */
function endOfRunCheck(s: Scenario): void {
  const k = s.k;
  // An idle CPU may still hold a dead process's mm lazily (Linux drops it at that CPU's next
  // switch): let it go first, or its page tables would count as frames still in use.
  if (k.liveTasks() === 0) k.dropDeadLazyMms();
  const problems = check_vm_invariants(k, { limit: 20 }).problems;
  if (s.binder) problems.push(...binder_check_device(s.binder.device, 20));
  const leaked = k.pages.usedFrames - s.bootFrames;
  if (k.liveTasks() === 0 && leaked !== 0) problems.push(`${leaked} frames still in use after every process exited (${k.pages.usedFrames} in use, ${s.bootFrames} at boot)`);
  if (!problems.length) return;
  k.reports.add({ kind: 'BUG', title: `BUG: invariants violated at the end of the run: ${problems[0]}`, text: problems.map((p) => `  ${p}`).join('\n'), cpu: 0, cycles: k.machine.cpu(0).cycles, data: { check: 'end of run', problems } });
}

/** Measure a finished scenario. */
export function measure(s: Scenario, outcome: RunOutcome, options: Record<string, unknown>): RunResult {
  const k = s.k;
  const perCpu = k.machine.cpus.map((c) => c.counters());
  const sum = (name: string) => perCpu.reduce((a, c) => a + (c[name] ?? 0), 0);
  const l1Hits = sum('l1Hits');
  const l1Misses = sum('l1Misses');
  const { data, inst } = tlbSides(sum);
  const processes: RunProcess[] = [...s.monitor.processes.values()].map((p) => ({
    pid: p.pid,
    comm: p.comm,
    threads: p.threads,
    faults: p.faults,
    rssKb: (p.rss.anon + p.rss.file + p.rss.shmem) * 4,
    runCycles: p.runCycles,
    ...(p.error !== undefined ? { error: p.error } : {}),
  }));
  const rss = { anon: 0, file: 0, shmem: 0 };
  for (const p of s.monitor.processes.values()) {
    rss.anon += p.rss.anon;
    rss.file += p.rss.file;
    rss.shmem += p.rss.shmem;
  }
  const clockGhz = k.machine.config.cost.clockGhz;
  const elapsed = Math.max(...perCpu.map((c) => c.cycles!));
  const result: RunResult = {
    schema: 'mmulab.run/1',
    workload: s.options.workload,
    description: s.description,
    options,
    outcome,
    tlb: {
      l1d: level(data.lookups, data.l1Misses),
      l1i: level(inst.lookups, inst.l1Misses),
      l1: level(l1Hits + l1Misses, l1Misses),
      stlb: stlbLevel(sum('stlbHits'), sum('stlbMisses')),
      stlbBySide: { data: sideStlb(data), inst: sideStlb(inst) },
      walks: sum('walks'),
      walksBySide: { data: data.walks, inst: inst.walks },
      walkMemRefs: sum('walkMemRefs'),
      pscHits: sum('pscHitsPml5e') + sum('pscHitsPml4e') + sum('pscHitsPdpte') + sum('pscHitsPde'),
    },
    faults: { total: processes.reduce((a, p) => a + p.faults, 0), hardware: sum('pageFaults'), byKind: { ...faultCounters(k) } },
    rss: { kb: (rss.anon + rss.file + rss.shmem) * 4, anonKb: rss.anon * 4, fileKb: rss.file * 4, shmemKb: rss.shmem * 4 },
    cycles: { elapsed, elapsedUs: elapsed / (clockGhz * 1000), clockGhz, perCpu: perCpu.map((c) => c.cycles!) },
    processes,
    perCpu,
    reports: [],
  };
  if (outcome.reason === 'done') endOfRunCheck(s);
  result.reports = k.reports.reports.map((r) => r.title);
  if (s.binder) {
    const lat = s.binder.latencies.map((c) => k.micros(c)).sort((a, b) => a - b);
    result.binder = { transactions: s.binder.transactions, failures: s.binder.failures, latencyUs: { p50: percentile(lat, 50), p99: percentile(lat, 99), max: lat.length ? lat[lat.length - 1]! : NaN } };
  }
  const t = s.options.lackey;
  if (t) {
    result.lackey = { lines: t.lines, ...t.counts, bytes: { ...t.bytes }, pages: t.pages, mappings: t.ranges.length, translations: t.stream.length };
  }
  return result;
}

// ---- the terminal table ----------------------------------------------------------------------

function n(x: number): string {
  return Math.round(x).toLocaleString('en-US');
}

function pct(x: number | null): string {
  return x === null ? '-' : `${(x * 100).toFixed(2)}%`;
}

function table(head: string[], rows: string[][], leftCols = 1): string[] {
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (r: string[]) => r.map((x, i) => (i < leftCols ? x.padEnd(widths[i]!) : x.padStart(widths[i]!))).join('  ').trimEnd();
  return [line(head), ...rows.map(line)];
}

export function runTable(r: RunResult): string {
  const o = r.options;
  const lines: string[] = [];
  lines.push(`mmulab run: ${r.description}`);
  const engine = o.engine === 'parallel' ? ', parallel engine (not reproducible by seed)' : '';
  lines.push(`${o.cpus} CPU${o.cpus === 1 ? '' : 's'}, seed ${o.seed}${engine}; virtual time ${n(r.cycles.elapsed)} cycles (${r.cycles.elapsedUs.toFixed(1)} µs at ${r.cycles.clockGhz} GHz)`);
  if (r.outcome.reason === 'maxSteps') lines.push(`stopped after ${n(r.outcome.steps)} scheduling steps (--max-steps) before the workload finished`);
  lines.push('');
  const lv = (name: string, l: TlbLevel) => [name, n(l.lookups), n(l.hits), n(l.misses), pct(l.hitRate)];
  lines.push(...table(['TLB', 'lookups', 'hits', 'misses', 'hit rate'], [lv('L1 dTLB', r.tlb.l1d), lv('L1 iTLB', r.tlb.l1i), lv('L1 (both)', r.tlb.l1), lv('STLB', r.tlb.stlb)]));
  lines.push(`page walks: ${n(r.tlb.walks)} (data ${n(r.tlb.walksBySide.data)}, instruction ${n(r.tlb.walksBySide.inst)}; ${n(r.tlb.walkMemRefs)} memory references, ${n(r.tlb.pscHits)} paging-structure cache hits)`);
  const kinds = Object.entries(r.faults.byKind).filter(([, v]) => v > 0).map(([kk, v]) => `${kk} ${n(v)}`);
  lines.push(`page faults: ${n(r.faults.total)}${kinds.length ? ` (resolved: ${kinds.join(', ')})` : ''}; #PF exceptions: ${n(r.faults.hardware)}`);
  lines.push(`RSS at exit: ${n(r.rss.kb)} kB (anon ${n(r.rss.anonKb)}, file ${n(r.rss.fileKb)}, shmem ${n(r.rss.shmemKb)})`);
  if (r.binder) {
    const b = r.binder;
    lines.push(`binder: ${n(b.transactions)} transactions, ${n(b.failures)} failed; round trip p50 ${b.latencyUs.p50.toFixed(2)} µs, p99 ${b.latencyUs.p99.toFixed(2)} µs, max ${b.latencyUs.max.toFixed(2)} µs`);
  }
  if (r.lackey) {
    const t = r.lackey;
    lines.push(`lackey: ${n(t.lines)} lines: ${n(t.fetches)} fetches, ${n(t.loads)} loads, ${n(t.stores)} stores, ${n(t.modifies)} modifies over ${n(t.pages)} pages in ${n(t.mappings)} mappings`);
  }
  lines.push('');
  lines.push(...table(['process', 'pid', 'threads', 'faults', 'RSS kB', 'run cycles'], r.processes.map((p) => [p.comm, String(p.pid), String(p.threads), n(p.faults), n(p.rssKb), n(p.runCycles)])));
  for (const p of r.processes) if (p.error) lines.push(`  ${p.comm}[${p.pid}]: ${p.error}`);
  if (r.trace) lines.push('', `trace: ${n(r.trace.events)} events written to ${r.trace.file} (${r.trace.format === 'json' ? 'Perfetto/Chrome JSON' : 'ftrace text'})`);
  if (r.reports.length) lines.push('', 'checker reports:', ...r.reports.map((t) => `  ${t}`));
  return lines.join('\n') + '\n';
}
