/**
 * kernel/mm/mmu_gather.ts — batching of unmap work (include/asm-generic/tlb.h, mm/mmu_gather.c).
 *
 * The rule it enforces: unhook → TLB invalidate → free. Zapping code clears PTEs and records the
 * range (tlb_remove_tlb_entry), drops the mapcount at once, and queues each page's PTE reference
 * here instead of dropping it; page-table pages unlinked by free_pgd_range are queued too and
 * mark the gather freed_tables (so the flush reaches lazy CPUs). tlb_flush_mmu flushes the TLB
 * range on every CPU that may cache it and only then drops the references and frees the tables,
 * so no CPU can still hold a translation to a page when it is freed. A batch that grows past the
 * limit forces a flush early, as Linux does. The flush stride follows tlb_get_unmap_shift (4 KiB
 * if any PTE was cleared, else 2 MiB, else 1 GiB). tlb_finish_mmu turns into a whole-mm flush that
 * reaches lazy CPUs whenever another gather of the mm is in flight (mm_tlb_flush_nested), even if
 * this one cleared nothing.
 *
 * A gather marked `lazy_free` (munmap: the range has no VMA any more, so nothing may legally use
 * it) lets the flush policy defer the remote part of its flushes; the pages then go to the
 * policy (TlbFlusher.release_after_flush), which drops their references once every CPU caught
 * up. Under Linux's policy that is at once, exactly as before.
 *
 * Deviations: no delayed rmap (dirty file pages lose their mapcount at zap time); the level of a
 * freed table is not known here, so every freed table counts as cleared_pmds; tables are freed
 * right after the flush (x86 defers them further through RCU, tlb_remove_table).
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
  /** Levels whose entries were cleared (cleared_ptes/_pmds/_puds): they set the flush stride. */
  cleared_ptes = false;
  cleared_pmds = false;
  cleared_puds = false;
  freed_tables = false;
  cleared = false;
  /** Pages whose PTE reference drops after the flush. */
  readonly pages: number[] = [];
  /** Page-table pages to free after the flush. */
  readonly tables: number[] = [];
  /** Flushes this gather performed. */
  flushes = 0;
  /** Only freeing follows (munmap): the policy may defer the remote flush (see the header). */
  lazy_free = false;

  constructor(
    private readonly k: Kernel,
    readonly mm: MmStruct,
    /** Tearing down the whole mm (exit), or upgraded to a whole-mm flush by tlb_finish_mmu. */
    public fullmm: boolean,
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

  /** __tlb_adjust_range. */
  private adjustRange(addr: number, size: number): void {
    if (addr < this.start) this.start = addr;
    if (addr + size > this.end) this.end = addr + size;
  }

  /** tlb_remove_tlb_entry (shift 12) / tlb_remove_pmd_tlb_entry (21) / _pud_ (30): a leaf was cleared. */
  removeTlbEntry(addr: number, shift: number): void {
    this.adjustRange(addr, 2 ** shift);
    if (shift <= 12) this.cleared_ptes = true;
    else if (shift <= 21) this.cleared_pmds = true;
    else this.cleared_puds = true;
    this.cleared = true;
  }

  /**
   * tlb_flush_pte_range: PTEs of [addr, addr + size) were changed in place (mprotect), not
   * cleared; the range needs a flush all the same, at 4 KiB stride.
   */
  flushPteRange(addr: number, size: number): void {
    this.adjustRange(addr, size);
    this.cleared_ptes = true;
    this.cleared = true;
  }

  /**
   * tlb_get_unmap_shift: the flush stride is the smallest level whose leaves were cleared; a freed
   * page table counts at the level above it, so it never forces 4 KiB strides on its own.
   */
  get stride_shift(): number {
    if (this.cleared_ptes) return 12;
    if (this.cleared_pmds) return 21;
    if (this.cleared_puds) return 30;
    return 12;
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

  /**
   * pte_free_tlb and friends: a page-table page unlinked, to be freed after the flush. Like
   * pte_free_tlb's tlb_flush_pmd_range(tlb, address, PAGE_SIZE) it widens the range and marks
   * the level above the freed table (at least a PMD) as cleared.
   */
  removeTable(tablePa: number, addr: number, shift: number): void {
    this.tables.push(tablePa);
    this.freed_tables = true;
    this.adjustRange(addr, 2 ** shift);
    this.cleared_pmds = true;
  }

  /** tlb_flush_mmu_tlbonly: flush the TLB for what was cleared, nothing freed yet. */
  *flushTlbOnly(): KGen {
    if (!this.cleared && !this.freed_tables && !this.cleared_pmds) return;
    const start = this.fullmm ? 0 : this.start;
    const end = this.fullmm ? TLB_FLUSH_ALL : this.end;
    yield* this.tlb.flush_tlb_mm_range(this.mm, start, end, this.stride_shift, this.freed_tables, this.lazy_free);
    this.flushes++;
    // __tlb_reset_range.
    this.start = Number.POSITIVE_INFINITY;
    this.end = 0;
    this.cleared_ptes = this.cleared_pmds = this.cleared_puds = false;
    this.cleared = false;
    this.freed_tables = false;
  }

  /** tlb_flush_mmu: flush, then drop the queued references and free the queued tables. */
  *flush(): KGen {
    yield* this.flushTlbOnly();
    this.freeBatched();
  }

  private freeBatched(): void {
    if (this.pages.length > 0) {
      const pages = this.pages.splice(0);
      const site = this.site;
      this.tlb.release_after_flush(this.mm, pages, () => {
        for (const pfn of pages) this.k.pages.putPage(pfn, site);
      });
    }
    // Tables are freed only after a flush that reached every CPU (freed_tables is never deferred).
    for (const t of this.tables) this.pt.freeTable(this.mm, t, this.site);
    this.tables.length = 0;
  }

  /** tlb_end_vma: flush the TLB (not the pages) at a VMA boundary, unless tearing down the mm. */
  *endVma(): KGen {
    if (this.fullmm) return;
    yield* this.flushTlbOnly();
  }

  /** tlb_finish_mmu. */
  *finish(): KGen {
    // mm_tlb_flush_nested: another gather on this mm is in flight, and may have cleared PTEs
    // this one found already none and skipped (parallel MADV_DONTNEED under the mmap read lock),
    // whose flush it has not done yet. Flush the whole mm, as if page tables had been freed,
    // whatever this gather cleared itself (tlb_finish_mmu: fullmm = 1, freed_tables = 1).
    if (this.mm.tlb_flush_pending > 1) {
      this.fullmm = true;
      this.freed_tables = true;
    }
    yield* this.flush();
    this.mm.tlb_flush_pending--;
    this.k.pageRefHolders.delete(this);
  }
}
