/**
 * kernel/arch/x86/tlb.ts — TLB flushing and address-space switching (arch/x86/mm/tlb.c).
 *
 * State: every mm has a ctx_id and a tlb_gen (the latest requested flush generation) and an
 * mm_cpumask; every CPU has cpu_tlbstate — the loaded mm and its ASID, is_lazy, and ctxs[6]
 * ({ctx_id, tlb_gen} per dynamic ASID, TLB_NR_DYN_ASIDS = 6). PCID = ASID + 1 (PCID 0 stays for
 * the no-PCID case); there is no PTI, so no user PCIDs.
 *
 * The generation protocol (the comment above flush_tlb_func in tlb.c, restated): a flush request
 * bumps mm->tlb_gen to new_tlb_gen. Each CPU records in ctxs[asid].tlb_gen the generation its
 * TLB is up to date with for that mm. A CPU asked to flush compares: if its local generation is
 * already >= new_tlb_gen, someone flushed for it; if it equals mm->tlb_gen, it is current. Only
 * if new_tlb_gen == local + 1 and new_tlb_gen == mm->tlb_gen — this request is the only one it
 * missed and no newer one is pending — may it flush just the requested range; otherwise it
 * flushes the whole ASID. Either way it then records mm->tlb_gen. A lazy CPU (running a kernel
 * thread on a borrowed mm) is skipped by IPIs unless page tables were freed (it could walk
 * them speculatively); it catches up through tlb_gen when it switches back, or drops the mm at
 * once if an IPI reaches it.
 *
 * flush_tlb_mm_range follows Linux: the 33-page ceiling (tlb_single_page_flush_ceiling,
 * tunable) turns big ranges into full flushes; IPIs go only to CPUs in mm_cpumask that should
 * flush; the initiator sends the IPIs, flushes locally, then spins until every target has
 * acknowledged (smp_call_function_many with wait=1). Costs come from the hardware model (IPI
 * send, delivery, handler, INVLPG, CR3 write, the refills that follow).
 *
 * Policies: besides Linux's, experiments can choose "full" (always a full flush), "pages"
 * (never), or hand in their own FlushPolicy. A policy may also defer the remote part of a flush
 * whose only purpose is freeing (munmap's mmu_gather: `lazy_free`): then it owns the pages the
 * gather would free (release_after_flush) until every CPU it spared has caught up, and must
 * finish its deferred invalidations of a range before a new mapping covers it
 * (before_map_range). LATR (kernel/arch/x86/tlb_latr.ts) is such a policy. The default is Linux,
 * for which all three hooks do nothing.
 *
 * Any synchronous flush of an mm completes every earlier deferred one of that mm: each CPU that
 * runs the mm (not lazily) gets the IPI and, having missed the deferred generation, flushes the
 * whole ASID; every other CPU flushes before it runs the mm again (tlb_gen at switch_mm).
 */

import type { Kernel } from '../../kernel.ts';
import { CALL_FUNCTION_VECTOR } from '../../kernel.ts';
import type { MmStruct } from '../../mm/mm_types.ts';
import type { KGen, Task } from '../../sched/core.ts';
import { CR3_NOFLUSH } from '../../../hw/control-registers.ts';
import { toVa } from '../../../hw/address.ts';
import { staleEntries, type CachedPagingEntry, type CachedTranslation, type StaleReason } from '../../../hw/inspect.ts';
import { TLB_FLUSH_ON_TASK_SWITCH, TLB_LOCAL_MM_SHOOTDOWN, TLB_REMOTE_SHOOTDOWN, TLB_REMOTE_WRONG_CPU } from '../../trace/trace.ts';

export const TLB_NR_DYN_ASIDS = 6;
/** TLB_FLUSH_ALL: end of a full-flush range. */
export const TLB_FLUSH_ALL = Number.POSITIVE_INFINITY;
/**
 * tlb_single_page_flush_ceiling: 33 pages. The tlb.c comment: chosen so that at least 95% of
 * flushes are single-page ones and, at ~100 ns per INVLPG, a ranged flush never costs more than
 * about 3 µs (Dave Hansen's 2014 kernel-compile measurements, linux-mm "x86: mm: set TLB flush
 * tunable to sane value").
 */
export const TLB_SINGLE_PAGE_FLUSH_CEILING = 33;

export interface TlbContext {
  ctx_id: number;
  tlb_gen: number;
}

/** cpu_tlbstate. */
export interface CpuTlbState {
  loaded_mm: MmStruct;
  loaded_mm_asid: number;
  next_asid: number;
  is_lazy: boolean;
  readonly ctxs: TlbContext[];
}

/** struct flush_tlb_info. */
export interface FlushTlbInfo {
  id: number;
  mm: MmStruct | null;
  start: number;
  end: number;
  stride_shift: number;
  freed_tables: boolean;
  new_tlb_gen: number;
  initiator: number;
  /** The flush only precedes freeing (munmap): a policy may defer its remote part. */
  lazy_free?: boolean;
}

/** A flush policy: how big a range is flushed page by page, and which CPUs get an IPI. */
export interface FlushPolicy {
  readonly name: string;
  /** Flush this many pages at most one by one; above it, a full flush. */
  ceiling(info: FlushTlbInfo): number;
  /** Should CPU `cpu` (not the initiator) get an IPI for `info`? Default: Linux's rule. */
  shouldIpi?(k: Kernel, tlb: TlbFlusher, cpu: number, info: FlushTlbInfo): boolean;
  /**
   * Defer the remote part of a `lazy_free` flush instead of sending IPIs to `targets` (the CPUs
   * Linux would interrupt). Return true if the policy took it over; false sends the IPIs.
   */
  defer?(info: FlushTlbInfo, targets: readonly number[]): boolean;
  /** A synchronous flush of `mm` up to generation `gen` has completed on every CPU. */
  flushed?(mm: MmStruct, gen: number): void;
  /**
   * Free `pages` (by calling `release`) once no CPU can use a translation removed by a flush of
   * `mm` so far. Without this hook they are released at once.
   */
  releaseAfterFlush?(mm: MmStruct, pages: readonly number[], release: () => void): void;
  /** A new mapping is about to cover [start, end) of `mm`: finish deferred invalidations there. */
  beforeMapRange?(mm: MmStruct, start: number, end: number): KGen;
}

export const LINUX_POLICY: FlushPolicy = { name: 'linux', ceiling: () => TLB_SINGLE_PAGE_FLUSH_CEILING };
export const FULL_POLICY: FlushPolicy = { name: 'full', ceiling: () => 0 };
export const PAGES_POLICY: FlushPolicy = { name: 'pages', ceiling: () => Number.POSITIVE_INFINITY };

export interface TlbStats {
  /** flush_tlb_mm_range calls. */
  flushes: number;
  /** Calls that became full flushes because of the ceiling. */
  fullByCeiling: number;
  ipis: number;
  /** Targets skipped because they were lazy. */
  lazySkipped: number;
  /** flush_tlb_func runs that flushed a range (INVLPG), a whole ASID, or nothing. */
  partialFlushes: number;
  fullFlushes: number;
  noopFlushes: number;
  invlpgs: number;
  /** Cycles the initiators spent waiting for acknowledgements. */
  waitCycles: number;
  /** Cycles the initiators spent in flush_tlb_mm_range, from entry to return (waiting included). */
  initiatorCycles: number;
  /** Flushes whose remote part the policy deferred (no IPIs sent). */
  deferred: number;
  asidSwitches: number;
  switchFlushes: number;
}

/** A cached translation some CPU could still use although the page tables no longer allow it. */
export interface UsableStaleEntry {
  cpu: number;
  pcid: number;
  /** ctx_id of the mm whose ASID slot holds it. */
  mm: number;
  array: string;
  va: bigint;
  /** The frame it maps (null for a paging-structure-cache entry). */
  frame: bigint | null;
  reason: StaleReason;
}

export class TlbFlusher {
  readonly cpuState: CpuTlbState[];
  readonly stats: TlbStats = { flushes: 0, fullByCeiling: 0, ipis: 0, lazySkipped: 0, partialFlushes: 0, fullFlushes: 0, noopFlushes: 0, invlpgs: 0, waitCycles: 0, initiatorCycles: 0, deferred: 0, asidSwitches: 0, switchFlushes: 0 };
  policy: FlushPolicy = LINUX_POLICY;
  /** Lazy TLB mode for kernel threads and idle (default on, as Linux). */
  lazyTlb = true;
  private readonly infos = new Map<number, FlushTlbInfo>();
  private nextInfo = 1;
  /** For experiments: skip the flush entirely (a planted bug). */
  skipFlush: ((info: FlushTlbInfo) => boolean) | null = null;

  constructor(
    private readonly k: Kernel,
    readonly init_mm: MmStruct,
  ) {
    const n = k.machine.cpuCount;
    this.cpuState = [];
    for (let i = 0; i < n; i++) {
      this.cpuState.push({ loaded_mm: init_mm, loaded_mm_asid: 0, next_asid: 1, is_lazy: false, ctxs: Array.from({ length: TLB_NR_DYN_ASIDS }, () => ({ ctx_id: 0, tlb_gen: 0 })) });
    }
    // CPUs start on init_mm in ASID 0.
    for (let i = 0; i < n; i++) this.cpuState[i]!.ctxs[0] = { ctx_id: init_mm.ctx_id, tlb_gen: init_mm.tlb_gen };
    k.machine.apic.on(CALL_FUNCTION_VECTOR, (cpu, msg) => {
      k.trace.ipiEntry(cpu.index, msg);
      const info = this.infos.get(msg.payload[0]!);
      if (!info) throw new Error(`CALL_FUNCTION IPI for unknown flush ${msg.payload[0]}`);
      const saved = k.irqCpu;
      k.irqCpu = cpu.index;
      try {
        this.flush_tlb_func(cpu.index, info, false);
      } finally {
        k.trace.ipiExit(cpu.index, msg);
        k.irqCpu = saved;
      }
    });
  }

  get usePcid(): boolean {
    return this.k.options.pcid;
  }

  private pcidOf(asid: number): number {
    return this.usePcid ? asid + 1 : 0;
  }

  /** choose_new_asid: an ASID for `next` on `cpu`, and whether its TLB contents are stale. */
  private choose_new_asid(cpu: number, next: MmStruct, nextTlbGen: number): { asid: number; needFlush: boolean } {
    const st = this.cpuState[cpu]!;
    if (!this.usePcid) return { asid: 0, needFlush: true };
    for (let asid = 0; asid < TLB_NR_DYN_ASIDS; asid++) {
      if (st.ctxs[asid]!.ctx_id !== next.ctx_id) continue;
      return { asid, needFlush: st.ctxs[asid]!.tlb_gen < nextTlbGen };
    }
    let asid = st.next_asid++;
    if (asid >= TLB_NR_DYN_ASIDS) {
      asid = 0;
      st.next_asid = 1;
    }
    return { asid, needFlush: true };
  }

  private loadCr3(cpu: number, mm: MmStruct, asid: number, flush: boolean): void {
    const hw = this.k.machine.cpu(cpu);
    let v = BigInt(mm.pgd) | BigInt(this.pcidOf(asid));
    if (this.usePcid && !flush) v |= CR3_NOFLUSH;
    const r = hw.writeCr3(v);
    if (!r.ok) throw new Error(`switch_mm: CR3 write failed: ${r.reason}`);
  }

  /**
   * switch_mm_irqs_off: make `next` the loaded mm of `cpu`. `task` is the task current on `cpu`
   * meanwhile, for the trace: in a context switch the previous task (switch_to comes after), null
   * for the idle task or outside task context.
   */
  switch_mm_irqs_off(cpu: number, next: MmStruct, task: Task | null): void {
    const st = this.cpuState[cpu]!;
    const prev = st.loaded_mm;
    const wasLazy = st.is_lazy;
    st.is_lazy = false;
    const at = { cpu, ts: this.k.machine.cpu(cpu).cycles, task };
    if (prev === next) {
      if (!wasLazy) return;
      // Back from lazy mode on the same mm: flush if flushes were missed meanwhile.
      const genNow = next.tlb_gen;
      const ctx = st.ctxs[st.loaded_mm_asid]!;
      if (ctx.tlb_gen === genNow) return;
      this.loadCr3(cpu, next, st.loaded_mm_asid, true);
      ctx.tlb_gen = genNow;
      this.stats.switchFlushes++;
      this.k.trace.tlbFlush(TLB_FLUSH_ON_TASK_SWITCH, -1, at);
      return;
    }
    next.cpumask.add(cpu);
    const nextGen = next.tlb_gen;
    const { asid, needFlush } = this.choose_new_asid(cpu, next, nextGen);
    if (needFlush) {
      st.ctxs[asid] = { ctx_id: next.ctx_id, tlb_gen: nextGen };
      this.stats.switchFlushes++;
    }
    this.stats.asidSwitches++;
    this.loadCr3(cpu, next, asid, needFlush);
    this.k.trace.tlbFlush(TLB_FLUSH_ON_TASK_SWITCH, needFlush ? -1 : 0, at);
    st.loaded_mm = next;
    st.loaded_mm_asid = asid;
  }

  /** enter_lazy_tlb: a kernel thread keeps the previous mm loaded, marked lazy (`task`: as for switch_mm_irqs_off). */
  enter_lazy_tlb(cpu: number, task: Task | null): void {
    const st = this.cpuState[cpu]!;
    if (st.loaded_mm === this.init_mm) return;
    if (this.lazyTlb) st.is_lazy = true;
    else this.k.switchLoadedMm(cpu, this.init_mm, task);
  }

  /** leave_mm: drop a (lazily) loaded mm in favour of init_mm. */
  leave_mm(cpu: number): void {
    const st = this.cpuState[cpu]!;
    if (st.loaded_mm === this.init_mm) return;
    this.k.switchLoadedMm(cpu, this.init_mm, null);
  }

  /**
   * flush_tlb_func: bring this CPU's TLB up to date for `f` (runs locally with IRQs off, or on
   * a remote CPU in its IPI handler).
   */
  flush_tlb_func(cpu: number, f: FlushTlbInfo, local: boolean): void {
    const st = this.cpuState[cpu]!;
    const hw = this.k.machine.cpu(cpu);
    const at = { cpu, ts: hw.cycles, task: this.k.current };
    const loaded = st.loaded_mm;
    if (f.mm && f.mm !== loaded) {
      // This CPU switched away: stop getting IPIs for that mm.
      f.mm.cpumask.delete(cpu);
      this.k.trace.tlbFlush(TLB_REMOTE_WRONG_CPU, 0, at);
      this.stats.noopFlushes++;
      return;
    }
    if (loaded === this.init_mm) {
      this.stats.noopFlushes++;
      return;
    }
    if (st.is_lazy) {
      // Only reached when page tables were freed: drop the borrowed mm right away. Through the
      // kernel's switch, so the lazy mm_count reference the CPU held goes with the mm.
      this.k.switchLoadedMm(cpu, this.init_mm, null);
      this.stats.noopFlushes++;
      return;
    }
    const ctx = st.ctxs[st.loaded_mm_asid]!;
    const local_gen = ctx.tlb_gen;
    const mm_gen = loaded.tlb_gen;
    if (f.new_tlb_gen <= local_gen || local_gen === mm_gen) {
      this.stats.noopFlushes++;
      return;
    }
    const reason = local ? TLB_LOCAL_MM_SHOOTDOWN : TLB_REMOTE_SHOOTDOWN;
    if (f.end !== TLB_FLUSH_ALL && f.new_tlb_gen === local_gen + 1 && f.new_tlb_gen === mm_gen) {
      const stride = 2 ** f.stride_shift;
      let n = 0;
      for (let a = f.start; a < f.end; a += stride) {
        const [hi, lo] = toVa(a);
        hw.invlpgHalves(hi, lo);
        n++;
      }
      this.stats.invlpgs += n;
      this.stats.partialFlushes++;
      this.k.trace.tlbFlush(reason, n, at);
    } else {
      // Flush this ASID: rewrite CR3 without the no-flush bit (a reload without PCID).
      this.loadCr3(cpu, loaded, st.loaded_mm_asid, true);
      this.stats.fullFlushes++;
      this.k.trace.tlbFlush(reason, -1, at);
    }
    ctx.tlb_gen = mm_gen;
  }

  /** Linux's should_flush_tlb: does CPU `cpu` need the IPI? */
  private shouldFlush(cpu: number, info: FlushTlbInfo): boolean {
    const st = this.cpuState[cpu]!;
    if (st.is_lazy) return false;
    if (!info.mm) return true;
    return st.loaded_mm === info.mm;
  }

  /**
   * flush_tlb_mm_range: make every CPU stop using translations of [start, end) in `mm`. Spins
   * (a scheduler 'spin' yield) until the remote CPUs have acknowledged. With `lazy_free` (the
   * flush only precedes freeing pages, as munmap's) the policy may defer the remote part.
   */
  *flush_tlb_mm_range(mm: MmStruct, start: number, end: number, stride_shift: number, freed_tables: boolean, lazy_free = false): KGen {
    const k = this.k;
    const me = k.thisCpu();
    const t0 = k.now();
    const info: FlushTlbInfo = { id: this.nextInfo++, mm, start, end, stride_shift, freed_tables, new_tlb_gen: ++mm.tlb_gen, initiator: me, lazy_free };
    this.stats.flushes++;
    if (end !== TLB_FLUSH_ALL && (end - start) / 2 ** stride_shift > this.policy.ceiling(info)) {
      info.start = 0;
      info.end = TLB_FLUSH_ALL;
      this.stats.fullByCeiling++;
    }
    if (this.skipFlush && this.skipFlush(info)) return;
    const targets: number[] = [];
    for (const c of mm.cpumask) {
      if (c === me) continue;
      const ipi = this.policy.shouldIpi ? this.policy.shouldIpi(k, this, c, info) : freed_tables || this.shouldFlush(c, info);
      if (ipi) targets.push(c);
      else if (this.cpuState[c]!.is_lazy) this.stats.lazySkipped++;
    }
    targets.sort((a, b) => a - b);
    // Page tables freed: every CPU must drop its paging-structure caches now, so never deferred.
    const deferred = targets.length > 0 && lazy_free && !freed_tables && this.policy.defer !== undefined && this.policy.defer(info, targets);
    if (deferred) {
      this.stats.deferred++;
      targets.length = 0;
    }
    let ticket = null;
    if (targets.length > 0) {
      this.infos.set(info.id, info);
      k.trace.ipiSend(targets, CALL_FUNCTION_VECTOR, 'smp_call_function_many_cond', 'generic_smp_call_function_single_interrupt');
      ticket = k.machine.apic.send(k.machine.cpu(me), targets, CALL_FUNCTION_VECTOR, [info.id]);
      this.stats.ipis += targets.length;
    }
    // The local flush runs while the IPIs are in flight (flush remote and local TLBs concurrently).
    if (this.cpuState[me]!.loaded_mm === mm) this.flush_tlb_func(me, info, true);
    if (ticket) {
      const t = ticket;
      const apic = k.machine.apic;
      const before = k.now();
      yield {
        kind: 'spin',
        reason: `TLB shootdown of ${mm.ctx_id} waiting for CPUs ${targets.join(',')}`,
        until: () => apic.acked(t),
        after: () => {
          apic.settle(t);
          this.stats.waitCycles += k.machine.cpu(me).cycles - before;
          this.infos.delete(info.id);
        },
      };
    }
    this.stats.initiatorCycles += k.machine.cpu(me).cycles - t0;
    if (!deferred) this.policy.flushed?.(mm, info.new_tlb_gen);
  }

  /**
   * Drop the PTE references `pages` (by calling `release`) once no CPU can still use a
   * translation that a flush of `mm` removed: at once, unless the policy deferred some.
   */
  release_after_flush(mm: MmStruct, pages: readonly number[], release: () => void): void {
    if (this.policy.releaseAfterFlush) this.policy.releaseAfterFlush(mm, pages, release);
    else release();
  }

  /** A new mapping will cover [start, end) of `mm` (vma_link, VMA growth): see the policy hook. */
  *before_map_range(mm: MmStruct, start: number, end: number): KGen {
    if (this.policy.beforeMapRange) yield* this.policy.beforeMapRange(mm, start, end);
  }

  /**
   * Debug check of the tlb_gen rule (in the spirit of v86's re-check of every cached entry):
   * cached translations some CPU could still use although the page tables no longer allow them.
   * An ASID slot counts if its CPU runs the mm right now (loaded, not lazy) or claims to be up to
   * date with it (ctxs[asid].tlb_gen >= mm->tlb_gen); a slot behind the mm's generation is
   * flushed before it is used again, so its entries cannot be used. Fewer rights than the tables
   * give are harmless (a spurious fault) and not reported. `only` limits the check (a reference
   * walk per entry) to some entries, e.g. those of a range or of some frames.
   */
  usableStale(only?: (e: CachedTranslation | CachedPagingEntry) => boolean): UsableStaleEntry[] {
    const k = this.k;
    const out: UsableStaleEntry[] = [];
    const byId = new Map<number, MmStruct>();
    for (const m of k.mms) byId.set(m.ctx_id, m);
    for (let c = 0; c < k.machine.cpuCount; c++) {
      const st = this.cpuState[c]!;
      const roots = new Map<number, MmStruct>();
      for (let a = 0; a < TLB_NR_DYN_ASIDS; a++) {
        const ctx = st.ctxs[a]!;
        const mm = byId.get(ctx.ctx_id);
        if (!mm || mm === this.init_mm || mm.pgd === 0) continue;
        if (!this.usePcid && (a !== 0 || st.loaded_mm !== mm)) continue;
        const running = st.loaded_mm === mm && !st.is_lazy && st.loaded_mm_asid === a;
        if (ctx.tlb_gen < mm.tlb_gen && !running) continue;
        roots.set(this.pcidOf(a), mm);
      }
      if (roots.size === 0) continue;
      const cpu = k.machine.cpu(c);
      const filter = (e: CachedTranslation | CachedPagingEntry): boolean => roots.has(e.pcid) && !('frame' in e && e.global) && (!only || only(e));
      for (const s of staleEntries(cpu, (pcid) => BigInt(roots.get(pcid)?.pgd ?? cpu.pcidRoot(pcid)), filter)) {
        if (s.reason === 'fewer-rights') continue;
        const e = s.entry;
        out.push({ cpu: c, pcid: e.pcid, mm: roots.get(e.pcid)!.ctx_id, array: e.array, va: e.va, frame: 'frame' in e ? e.frame : null, reason: s.reason });
      }
    }
    return out;
  }

  /** flush_tlb_page. */
  *flush_tlb_page(mm: MmStruct, addr: number): KGen {
    yield* this.flush_tlb_mm_range(mm, addr, addr + 4096, 12, false);
  }

  /** flush_tlb_mm: everything of `mm`. */
  *flush_tlb_mm(mm: MmStruct): KGen {
    yield* this.flush_tlb_mm_range(mm, 0, TLB_FLUSH_ALL, 12, false);
  }
}
