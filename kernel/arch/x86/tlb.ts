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
 * (never), or hand in their own FlushPolicy (e.g. LATR-style lazy invalidation, see
 * src/shootdown-policies.ts). The default is Linux.
 */

import type { Kernel } from '../../kernel.ts';
import { CALL_FUNCTION_VECTOR } from '../../kernel.ts';
import type { MmStruct } from '../../mm/mm_types.ts';
import type { KGen, Task } from '../../sched/core.ts';
import { CR3_NOFLUSH } from '../../../hw/control-registers.ts';
import { toVa } from '../../../hw/address.ts';
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
}

/** A flush policy: how big a range is flushed page by page, and which CPUs get an IPI. */
export interface FlushPolicy {
  readonly name: string;
  /** Flush this many pages at most one by one; above it, a full flush. */
  ceiling(info: FlushTlbInfo): number;
  /** Should CPU `cpu` (not the initiator) get an IPI for `info`? Default: Linux's rule. */
  shouldIpi?(k: Kernel, tlb: TlbFlusher, cpu: number, info: FlushTlbInfo): boolean;
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
  asidSwitches: number;
  switchFlushes: number;
}

export class TlbFlusher {
  readonly cpuState: CpuTlbState[];
  readonly stats: TlbStats = { flushes: 0, fullByCeiling: 0, ipis: 0, lazySkipped: 0, partialFlushes: 0, fullFlushes: 0, noopFlushes: 0, invlpgs: 0, waitCycles: 0, asidSwitches: 0, switchFlushes: 0 };
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
   * switch_mm_irqs_off: make `next` the loaded mm of `cpu`. `task` is the task being switched
   * to (for the trace).
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

  /** enter_lazy_tlb: a kernel thread keeps the previous mm loaded, marked lazy. */
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
   * (a scheduler 'spin' yield) until the remote CPUs have acknowledged.
   */
  *flush_tlb_mm_range(mm: MmStruct, start: number, end: number, stride_shift: number, freed_tables: boolean): KGen {
    const k = this.k;
    const me = k.thisCpu();
    const info: FlushTlbInfo = { id: this.nextInfo++, mm, start, end, stride_shift, freed_tables, new_tlb_gen: ++mm.tlb_gen, initiator: me };
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
