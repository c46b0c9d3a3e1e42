/**
 * kernel/arch/x86/tlb_latr.ts — LATR, lazy translation coherence, as a flush policy of
 * arch/x86/mm/tlb.c. Paper: Mohan Kumar, Steffen Maass, Sanidhya Kashyap, Ján Veselý, Zi Yan,
 * Taesoo Kim, Abhishek Bhattacharjee, Tushar Krishna, "LATR: Lazy Translation Coherence",
 * ASPLOS 2018 (doi 10.1145/3173162.3173198); code: github.com/sslab-gatech/latr (Linux 4.10,
 * CONFIG_LAZY_TLB_SHOOTDOWN). The paper reports munmap() latency 70.8% lower than Linux on a
 * 2-socket machine.
 *
 * What it models. munmap's flush interrupts nobody: the initiator flushes its own TLB and
 * records a LATR state {mm, range, cpumask of the CPUs that still have to flush} in its per-CPU
 * ring of LAZY_TLB_NUM_ENTRIES (native_flush_save_state), then returns. Every CPU, at each
 * scheduler tick and at each pass through __schedule, scans every CPU's ring
 * (native_flush_saved_states); for each state with its bit set it flushes the range locally
 * (flush_tlb_func) and clears its bit. The pages the munmap freed, and its virtual range, are
 * not reused until every bit is clear. A full ring falls back to IPIs. Only munmap is lazy
 * (mm->munmap_inprogress in the patch): mprotect, madvise(MADV_DONTNEED), COW breaks and every
 * flush that frees page tables stay synchronous, since a permission change or a zapped page
 * that stays mapped must take effect at once.
 *
 * The lazy window. Between munmap's return and a remote CPU's next tick, that CPU may still use
 * the old translations: a thread touching memory that was just unmapped (a program bug) reads
 * the old page instead of faulting. That is LATR's semantics; the window is measured
 * (stats.windowCycles) and stale entries are visible to the inspector meanwhile. What must never
 * happen is such an entry reaching a page or an address that was reused: the pages are held here
 * (a page-reference holder, so the invariant checker sees them) until every CPU of the state
 * caught up, and a new mapping over a held range first completes the states covering it
 * (beforeMapRange, a synchronous flush). With `checkOnRelease` each release is checked with the
 * stale-entry inspector: no CPU may hold a usable translation to a page being released.
 *
 * Deviations from the LATR patch:
 * - Pages are released when the state's cpumask is empty, not 2*HZ jiffies (two seconds) after
 *   munmap as its LAZY_MEM_FREE does (and that option is off in its Kconfig, which frees pages at
 *   once; `holdPages = false` models that, for tests that show what it breaks).
 * - A CPU also counts as caught up when the tlb_gen protocol guarantees a flush before it uses
 *   the mm again: it runs another mm or is lazy when it processes the state, or a synchronous
 *   flush of the mm completed after the state (tlb.ts). The patch's background thread, which
 *   IPIs the CPUs of states older than two ticks of its 1-second timer, is not modelled: every
 *   CPU in a state's mask was running the mm, so it ticks or schedules within one tick.
 * - The virtual range is held by completing the covering states when it is mapped again (IPIs
 *   to the CPUs running the mm) instead of keeping the VMAs on a lazy list.
 * - Costs: recording a state is one cache-line transfer (hw ipiAck); a scan reads one line per
 *   ring that holds states and one per state handled (ipiAck each); the invalidation itself is
 *   flush_tlb_func's (INVLPG per page up to the ceiling, else a CR3 reload), charged by the
 *   hardware model.
 */

import type { Kernel } from '../../kernel.ts';
import type { MmStruct } from '../../mm/mm_types.ts';
import type { KGen } from '../../sched/core.ts';
import type { PageRefHolder } from '../../mm/page_alloc.ts';
import { TLB_SINGLE_PAGE_FLUSH_CEILING, type FlushPolicy, type FlushTlbInfo } from './tlb.ts';

/** Entries of each CPU's state ring (LAZY_TLB_NUM_ENTRIES in the patch's tlbflush.h). */
export const LAZY_TLB_NUM_ENTRIES = 256;

/** One deferred flush (lazytlb_shootdown_t). */
export interface LatrState {
  readonly id: number;
  /** The CPU whose ring holds it (the initiator). */
  readonly owner: number;
  readonly mm: MmStruct;
  readonly start: number;
  readonly end: number;
  readonly stride_shift: number;
  /** The mm's tlb_gen this flush was requested as. */
  readonly gen: number;
  /** CPUs that have not processed it yet. */
  readonly mask: Set<number>;
  /** The initiator's clock when it was recorded. */
  readonly createdAt: number;
  /** Clock of the CPU that completed it, or -1 while live. */
  doneAt: number;
}

/** Pages whose references drop once the states they wait for are complete. */
interface HeldPages {
  readonly mm: MmStruct;
  readonly pages: readonly number[];
  readonly waitFor: Set<LatrState>;
  readonly release: () => void;
  readonly heldAt: number;
}

export interface LatrStats {
  /** States recorded (flushes deferred). */
  saved: number;
  /** Deferrals refused because the initiator's ring was full (IPIs sent instead). */
  ringFull: number;
  /** (CPU, state) pairs processed with a local flush_tlb_func. */
  applied: number;
  /** (CPU, state) pairs processed without a flush: the CPU no longer ran the mm (tlb_gen covers it). */
  skipped: number;
  /** Scans that found work, at a tick / at __schedule. */
  scansOnTick: number;
  scansOnSchedule: number;
  /** States completed by their last CPU, and by a synchronous flush of their mm. */
  completed: number;
  completedBySync: number;
  /** Synchronous flushes forced by a new mapping over a held range. */
  drains: number;
  /** Pages held past their flush, and released after their states completed. */
  heldPages: number;
  releasedPages: number;
  /** Per completed state: cycles from recording to completion (the lazy window). */
  readonly windowCycles: number[];
  /** Per release: cycles the pages were held. */
  readonly holdCycles: number[];
}

export class LatrPolicy implements FlushPolicy, PageRefHolder {
  readonly name = 'latr';
  /** Per-CPU rings of live states (shootdown_entries_t). */
  readonly rings: LatrState[][];
  readonly held: HeldPages[] = [];
  readonly stats: LatrStats = { saved: 0, ringFull: 0, applied: 0, skipped: 0, scansOnTick: 0, scansOnSchedule: 0, completed: 0, completedBySync: 0, drains: 0, heldPages: 0, releasedPages: 0, windowCycles: [], holdCycles: [] };
  /** Hold freed pages until every CPU caught up. False is the artifact's LAZY_MEM_FREE=n: a bug. */
  holdPages = true;
  /** Debug: at each release, look for usable translations to the released pages. */
  checkOnRelease = false;
  /** What the release check found (must stay empty). */
  readonly releaseViolations: string[] = [];
  private nextId = 1;

  constructor(private readonly k: Kernel) {
    this.rings = Array.from({ length: k.machine.cpuCount }, () => []);
    k.tickHooks.push((cpu) => {
      if (this.active) this.native_flush_saved_states(cpu, true);
    });
    k.scheduleHooks.push((cpu) => {
      if (this.active) this.native_flush_saved_states(cpu, false);
    });
    k.pageRefHolders.add(this);
  }

  /** Make LATR the flush policy of `k` and return it. */
  static install(k: Kernel): LatrPolicy {
    const p = new LatrPolicy(k);
    k.tlb.policy = p;
    return p;
  }

  private get active(): boolean {
    return this.k.tlb.policy === this;
  }

  get holderName(): string {
    return 'LATR lazily freed pages';
  }

  forEachPageRef(emit: (pfn: number) => void): void {
    for (const h of this.held) for (const pfn of h.pages) emit(pfn);
  }

  /** Linux's ceiling decides per-page against full flushes, locally and when a state is applied. */
  ceiling(): number {
    return TLB_SINGLE_PAGE_FLUSH_CEILING;
  }

  /** Live states, all rings. */
  liveStates(mm?: MmStruct): LatrState[] {
    const out: LatrState[] = [];
    for (const r of this.rings) for (const s of r) if (!mm || s.mm === mm) out.push(s);
    return out;
  }

  /** native_flush_save_state: record the flush instead of sending IPIs to `targets`. */
  defer(info: FlushTlbInfo, targets: readonly number[]): boolean {
    if (!info.mm) return false;
    const ring = this.rings[info.initiator]!;
    if (ring.length >= LAZY_TLB_NUM_ENTRIES) {
      this.stats.ringFull++;
      return false;
    }
    const cpu = this.k.machine.cpu(info.initiator);
    cpu.charge(cpu.cost.ipiAck);
    ring.push({ id: this.nextId++, owner: info.initiator, mm: info.mm, start: info.start, end: info.end, stride_shift: info.stride_shift, gen: info.new_tlb_gen, mask: new Set(targets), createdAt: cpu.cycles, doneAt: -1 });
    this.stats.saved++;
    return true;
  }

  /** A synchronous flush of `mm` reached every CPU: earlier states of `mm` are done. */
  flushed(mm: MmStruct, gen: number): void {
    for (const s of this.liveStates(mm)) {
      if (s.gen >= gen) continue;
      s.mask.clear();
      this.stats.completedBySync++;
      this.complete(s, this.k.now());
    }
  }

  releaseAfterFlush(mm: MmStruct, pages: readonly number[], release: () => void): void {
    const pending = this.liveStates(mm);
    const h: HeldPages = { mm, pages: pages.slice(), waitFor: new Set(pending), release, heldAt: this.k.now() };
    if (!this.holdPages || pending.length === 0) {
      this.releaseHeld(h, h.heldAt, false);
      return;
    }
    this.held.push(h);
    this.stats.heldPages += pages.length;
  }

  *beforeMapRange(mm: MmStruct, start: number, end: number): KGen {
    const overlapping = this.liveStates(mm).some((s) => s.start < end && start < s.end);
    if (!overlapping) return;
    this.stats.drains++;
    // A synchronous flush of the range: every CPU running the mm gets the IPI, and having missed
    // the deferred generation flushes its whole ASID; flushed() then completes the states.
    yield* this.k.tlb.flush_tlb_mm_range(mm, start, end, 12, false);
  }

  /**
   * native_flush_saved_states: CPU `cpu` processes every state, in any ring, that still has its
   * bit — at a scheduler tick (`tick`) or in __schedule.
   */
  native_flush_saved_states(cpu: number, tick: boolean): void {
    const hw = this.k.machine.cpu(cpu);
    const mine: LatrState[] = [];
    for (const ring of this.rings) {
      if (ring.length === 0) continue;
      hw.charge(hw.cost.ipiAck); // read the ring's line
      for (const s of ring) if (s.mask.has(cpu)) mine.push(s);
    }
    if (mine.length === 0) return;
    if (tick) this.stats.scansOnTick++;
    else this.stats.scansOnSchedule++;
    // Oldest generation first per mm, so each can be the one flush this CPU is missing.
    mine.sort((a, b) => a.mm.ctx_id - b.mm.ctx_id || a.gen - b.gen);
    const tlb = this.k.tlb;
    const st = tlb.cpuState[cpu]!;
    for (const s of mine) {
      hw.charge(hw.cost.ipiAck); // clear our bit in the owner's state
      if (st.loaded_mm === s.mm && !st.is_lazy) {
        tlb.flush_tlb_func(cpu, { id: 0, mm: s.mm, start: s.start, end: s.end, stride_shift: s.stride_shift, freed_tables: false, new_tlb_gen: s.gen, initiator: s.owner }, false);
        this.stats.applied++;
      } else {
        // Lazy, or running another mm: switch_mm flushes this ASID before the mm runs here again.
        this.stats.skipped++;
      }
      s.mask.delete(cpu);
      if (s.mask.size === 0) this.complete(s, hw.cycles);
    }
  }

  private complete(s: LatrState, at: number): void {
    const ring = this.rings[s.owner]!;
    const i = ring.indexOf(s);
    if (i < 0) return;
    ring.splice(i, 1);
    s.doneAt = at;
    this.stats.completed++;
    this.stats.windowCycles.push(Math.max(0, at - s.createdAt));
    for (let j = 0; j < this.held.length; ) {
      const h = this.held[j]!;
      h.waitFor.delete(s);
      if (h.waitFor.size === 0) {
        this.held.splice(j, 1);
        this.releaseHeld(h, at, true);
      } else j++;
    }
  }

  /** Drop the references of `h` (checking first, if asked, that no CPU can still reach them). */
  private releaseHeld(h: HeldPages, at: number, wasHeld: boolean): void {
    if (this.checkOnRelease) {
      const frames = new Set(h.pages.map((p) => BigInt(p)));
      for (const e of this.k.tlb.usableStale((e) => 'frame' in e && frames.has(e.frame))) {
        this.releaseViolations.push(`CPU ${e.cpu} PCID ${e.pcid} (mm ${e.mm}) still maps ${e.va.toString(16)} to released frame 0x${e.frame!.toString(16)} (${e.reason})`);
      }
    }
    h.release();
    if (!wasHeld) return;
    this.stats.holdCycles.push(Math.max(0, at - h.heldAt));
    this.stats.releasedPages += h.pages.length;
  }
}
