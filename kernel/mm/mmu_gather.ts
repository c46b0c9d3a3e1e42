/**
 * kernel/mm/mmu_gather.ts — batching of unmap work (include/asm-generic/tlb.h, mm/mmu_gather.c).
 *
 * The rule it enforces: unhook → TLB invalidate → free. Zapping code clears PTEs and records the
 * range (tlb_remove_tlb_entry), drops the mapcount at once, and queues each page's PTE reference
 * here instead of dropping it; page-table pages unlinked by free_pgd_range are queued too and
 * mark the gather freed_tables (so the flush reaches lazy CPUs). tlb_flush_mmu flushes the TLB
 * range on every CPU that may cache it and only then drops the references and frees the tables,
 * so no CPU can still hold a translation to a page when it is freed. A batch that grows past the
 * limit forces a flush early, as Linux does.
 */

import type { Kernel } from '../kernel.ts';
import type { MmStruct } from './mm_types.ts';
import type { KGen } from '../sched/core.ts';
import { TLB_FLUSH_ALL, type TlbFlusher } from '../arch/x86/tlb.ts';
import type { PageTables } from '../arch/x86/pgtable.ts';

/** Pages per batch page (MAX_GATHER_BATCH on x86-64: (4096 - 16) / 8). */
export const MAX_GATHER_BATCH = 510;
/** Batches before a forced flush (MAX_GATHER_BATCH_COUNT = 10000 / MAX_GATHER_BATCH). */
export const MAX_GATHER_BATCH_COUNT = Math.floor(10000 / MAX_GATHER_BATCH);
/** The on-stack bundle before the first batch page (MMU_GATHER_BUNDLE). */
export const MMU_GATHER_BUNDLE = 8;

export class MmuGather {
  start = Number.POSITIVE_INFINITY;
  end = 0;
  /** Smallest page-size shift of the cleared entries (tlb_get_unmap_shift). */
  stride_shift = 30;
  freed_tables = false;
  cleared = false;
  /** Pages whose PTE reference drops after the flush. */
  readonly pages: number[] = [];
  /** Page-table pages to free after the flush. */
  readonly tables: number[] = [];
  /** Flushes this gather performed. */
  flushes = 0;

  constructor(
    private readonly k: Kernel,
    readonly mm: MmStruct,
    readonly fullmm: boolean,
    private readonly tlb: TlbFlusher,
    private readonly pt: PageTables,
    /** Call chain recorded as the freeing site of the pages. */
    readonly site: string,
  ) {
    mm.tlb_flush_pending++;
    k.pageRefHolders.add(this);
  }

  get holderName(): string {
    return `mmu_gather of mm ${this.mm.ctx_id} (${this.site})`;
  }

  forEachPageRef(emit: (pfn: number) => void): void {
    for (const pfn of this.pages) emit(pfn);
  }

  /** tlb_remove_tlb_entry: a leaf entry for [addr, addr + size) was cleared. */
  removeTlbEntry(addr: number, shift: number): void {
    if (addr < this.start) this.start = addr;
    const e = addr + 2 ** shift;
    if (e > this.end) this.end = e;
    if (shift < this.stride_shift) this.stride_shift = shift;
    this.cleared = true;
  }

  /** The batch is full: the caller must flush before continuing (__tlb_remove_page's return). */
  get full(): boolean {
    return this.pages.length >= MMU_GATHER_BUNDLE + MAX_GATHER_BATCH * MAX_GATHER_BATCH_COUNT;
  }

  /** __tlb_remove_page: drop this PTE reference after the flush. Returns true if a flush is due. */
  removePage(pfn: number): boolean {
    this.pages.push(pfn);
    return this.full;
  }

  /** pte_free_tlb and friends: a page-table page unlinked, to be freed after the flush. */
  removeTable(tablePa: number, addr: number, shift: number): void {
    this.tables.push(tablePa);
    this.freed_tables = true;
    this.removeTlbEntry(addr, shift);
  }

  /** tlb_flush_mmu_tlbonly: flush the TLB for what was cleared, nothing freed yet. */
  *flushTlbOnly(): KGen {
    if (!this.cleared && !this.freed_tables) return;
    const start = this.fullmm ? 0 : this.start;
    const end = this.fullmm ? TLB_FLUSH_ALL : this.end;
    yield* this.tlb.flush_tlb_mm_range(this.mm, start, end, this.stride_shift > 21 ? 21 : this.stride_shift, this.freed_tables);
    this.flushes++;
    this.start = Number.POSITIVE_INFINITY;
    this.end = 0;
    this.stride_shift = 30;
    this.cleared = false;
  }

  /** tlb_flush_mmu: flush, then drop the queued references and free the queued tables. */
  *flush(): KGen {
    yield* this.flushTlbOnly();
    this.freeBatched();
  }

  private freeBatched(): void {
    for (const pfn of this.pages) this.k.pages.putPage(pfn, this.site);
    this.pages.length = 0;
    for (const t of this.tables) this.pt.freeTable(this.mm, t, this.site);
    this.tables.length = 0;
    this.freed_tables = false;
  }

  /** tlb_end_vma: flush the TLB (not the pages) at a VMA boundary, unless tearing down the mm. */
  *endVma(): KGen {
    if (this.fullmm) return;
    yield* this.flushTlbOnly();
  }

  /** tlb_finish_mmu. */
  *finish(): KGen {
    // Another gather on this mm in flight may have cleared PTEs we rely on being flushed:
    // upgrade to a full flush (mm_tlb_flush_nested).
    if (this.mm.tlb_flush_pending > 1 && (this.cleared || this.pages.length)) {
      this.start = 0;
      this.end = TLB_FLUSH_ALL;
      this.cleared = true;
    }
    yield* this.flush();
    this.mm.tlb_flush_pending--;
    this.k.pageRefHolders.delete(this);
  }
}
