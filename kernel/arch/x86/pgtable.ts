/**
 * kernel/arch/x86/pgtable.ts — the kernel's view of x86-64 page tables
 * (arch/x86/include/asm/pgtable*.h, mm/pgtable-generic.c, the table walk of mm/memory.c).
 *
 * An entry is handled as two 32-bit halves (lo, hi), as the hardware stores it; nothing on these
 * paths uses bigint. Entries are written in Linux's PAE order (high half first when the new entry
 * is present, low half first otherwise); clears use an atomic exchange of the low half
 * (ptep_get_and_clear), so a concurrent hardware A/D update either lands before the clear and is
 * returned, or fails its compare-and-exchange and re-walks.
 *
 * Tables come from the page allocator, flagged PG_table and accounted in mm->pgtables_bytes.
 * Levels are named as Linux names them: pgd (PML4, or PML5 with LA57), p4d (folded into the pgd
 * with 4-level paging), pud (PDPT), pmd (PD), pte (PT).
 *
 * Deviation: user page tables only — the kernel half of each pgd is left empty, since kernel code
 * reaches physical memory directly (the direct map) rather than through the MMU.
 */

import type { Kernel } from '../../kernel.ts';
import type { MmStruct } from '../../mm/mm_types.ts';
import { PG_table, __GFP_ZERO, GFP_KERNEL } from '../../mm/page_alloc.ts';
import { PTE_A, PTE_D, PTE_G, PTE_HI_XD, PTE_P, PTE_PS, PTE_RW, PTE_US, _PAGE_SPECIAL, _PAGE_SOFT_DIRTY, _PAGE_UFFD_WP } from '../../../hw/pte.ts';

export const _PAGE_PRESENT = PTE_P;
export const _PAGE_RW = PTE_RW;
export const _PAGE_USER = PTE_US;
export const _PAGE_ACCESSED = PTE_A;
export const _PAGE_DIRTY = PTE_D;
export const _PAGE_PSE = PTE_PS;
export const _PAGE_GLOBAL = PTE_G;
export { _PAGE_SPECIAL, _PAGE_SOFT_DIRTY, _PAGE_UFFD_WP };
/** _PAGE_NX, as a mask on the high half. */
export const _PAGE_NX_HI = PTE_HI_XD;
/** _PAGE_TABLE: what Linux puts in a user non-leaf entry (P|RW|US|A|D). */
export const _PAGE_TABLE = PTE_P | PTE_RW | PTE_US | PTE_A | PTE_D;

/** A page protection (pgprot_t) as the two halves of a leaf entry without its address. */
export interface PgProt {
  lo: number;
  hi: number;
}

/**
 * PAGE_NONE. Linux uses a non-present entry with _PAGE_PROTNONE; mmulab uses a present entry
 * without the user bit (see kernel/mm/mprotect.ts), which every user access faults on just the
 * same while the kernel (zap, fork, GUP with FOLL_FORCE, /proc) still sees the page.
 */
export const PAGE_NONE: PgProt = Object.freeze({ lo: PTE_P | PTE_A, hi: PTE_HI_XD });

/** PTRS_PER_* and the address bits each level covers. */
export const PTE_SHIFT = 12;
export const PMD_SHIFT = 21;
export const PUD_SHIFT = 30;
export const P4D_SHIFT = 39;
export const PMD_SIZE = 1 << PMD_SHIFT;
export const PUD_SIZE = 1 << PUD_SHIFT;

/** Physical address of the table an entry points to (bits 51:12 of the entry). */
export function entryTable(lo: number, hi: number): number {
  return (hi & 0xfffff) * 0x100000000 + ((lo & 0xfffff000) >>> 0);
}

export function ptePfn(lo: number, hi: number): number {
  return (hi & 0xfffff) * 0x100000 + (lo >>> 12);
}

/** 2^-shift for the shifts used by the walks (exact: powers of two). */
const INV_POW2: number[] = Array.from({ length: 64 }, (_, s) => 2 ** -s);

export function index(addr: number, shift: number): number {
  // addr * 2^-shift is exact, and ToInt32 truncates toward zero, which for a non-negative
  // address below 2^57 keeps the low 9 bits of floor(addr / 2^shift).
  return (addr * INV_POW2[shift]!) & 0x1ff;
}

export class PageTables {
  constructor(private readonly k: Kernel) {}

  private get i32(): Int32Array {
    return this.k.machine.phys.i32;
  }

  lo(ptep: number): number {
    return this.i32[ptep / 4]!;
  }

  hi(ptep: number): number {
    return this.i32[ptep / 4 + 1]!;
  }

  /** A zeroed page-table page for `mm` (pte_alloc_one and friends); -1 on ENOMEM. */
  allocTable(mm: MmStruct, site: string): number {
    const pfn = this.k.pages.allocPages(GFP_KERNEL | __GFP_ZERO, 0, site);
    if (pfn < 0) return -1;
    this.k.pages.flags[pfn] |= PG_table;
    mm.pgtables_bytes += 4096;
    this.k.charge(this.k.costs.pageAlloc + 4096 * this.k.costs.copyPerByte);
    return pfn * 4096;
  }

  /** Free a page-table page right away (only when no CPU can be using it). */
  freeTable(mm: MmStruct, tablePa: number, site: string): void {
    const pfn = tablePa / 4096;
    this.k.pages.flags[pfn] &= ~PG_table;
    mm.pgtables_bytes -= 4096;
    this.k.pages.putPage(pfn, site);
  }

  /** pgd_alloc: the root table of a new mm. */
  pgd_alloc(mm: MmStruct): number {
    const pa = this.allocTable(mm, 'pgd_alloc <- mm_alloc_pgd');
    if (pa < 0) return -1;
    mm.pgd = pa;
    return pa;
  }

  /** Number of levels (4, or 5 with LA57). */
  get levels(): number {
    return this.k.machine.cpu(0).levels;
  }

  /**
   * The physical address of the entry for `addr` at level `level` (1 = pte … 4 = pgd with
   * 4-level paging), or -1 if a table on the way is missing. A large leaf on the way also
   * ends the walk: `leafLevel` tells where the walk stopped.
   */
  walk(mm: MmStruct, addr: number, level: number): number {
    let table = mm.pgd;
    for (let l = this.levels; l > level; l--) {
      const e = table + index(addr, 12 + 9 * (l - 1)) * 8;
      const lo = this.lo(e);
      if ((lo & PTE_P) === 0) return -1;
      if (l <= 3 && (lo & PTE_PS) !== 0) return -1;
      table = entryTable(lo, this.hi(e));
    }
    return table + index(addr, 12 + 9 * (level - 1)) * 8;
  }

  /** pte_offset_map: the PTE's physical address, or -1 when there is no page table. */
  pte_offset(mm: MmStruct, addr: number): number {
    return this.walk(mm, addr, 1);
  }

  /** pmd_offset: the PMD entry's physical address, or -1. */
  pmd_offset(mm: MmStruct, addr: number): number {
    return this.walk(mm, addr, 2);
  }

  /**
   * Allocate the tables above level `level` for `addr` (pte_alloc / pmd_alloc / …) and return the
   * entry's address at `level`, or -1 on ENOMEM or when a huge leaf sits where a table should be.
   */
  alloc(mm: MmStruct, addr: number, level: number, site: string): number {
    const i32 = this.i32;
    let table = mm.pgd;
    for (let l = this.levels; l > level; l--) {
      const e = table + index(addr, 12 + 9 * (l - 1)) * 8;
      let lo = i32[e / 4]!;
      if ((lo & PTE_P) === 0) {
        const t = this.allocTable(mm, site);
        if (t < 0) return -1;
        this.k.machine.phys.writeWordPair(e / 4, (t & 0xfffff000) | _PAGE_TABLE, Math.floor(t / 0x100000000));
        lo = this.lo(e);
      } else if (l <= 3 && (lo & PTE_PS) !== 0) {
        // A huge leaf where a table is needed (e.g. vm_insert_page into a faulted hugetlb range):
        // Linux's pte_offset_map_lock finds no PTE table and get_locked_pte fails, which its
        // callers report as -ENOMEM.
        return -1;
      }
      table = entryTable(lo, i32[e / 4 + 1]!);
    }
    return table + index(addr, 12 + 9 * (level - 1)) * 8;
  }

  /** pte_alloc + pte_offset: the PTE for `addr`, allocating tables; -1 on ENOMEM. */
  pte_alloc(mm: MmStruct, addr: number, site = 'pte_alloc'): number {
    return this.alloc(mm, addr, 1, site);
  }

  /** set_pte_at: install a whole entry (PAE order). */
  set_pte(ptep: number, lo: number, hi: number): void {
    this.k.machine.phys.writeWordPair(ptep / 4, lo, hi);
    this.k.charge(this.k.costs.pteWrite);
  }

  /** ptep_get_and_clear: returns the old [lo, hi] (A/D set by hardware up to the clear included). */
  get_and_clear(ptep: number): [number, number] {
    const phys = this.k.machine.phys;
    const oldLo = phys.xchgLo(ptep / 4, 0);
    const oldHi = phys.i32[ptep / 4 + 1]!;
    phys.i32[ptep / 4 + 1] = 0;
    this.k.charge(this.k.costs.pteWrite);
    return [oldLo, oldHi];
  }

  /** ptep_get_and_clear for a caller that needs only the old low half (P, A, D, RW …). */
  get_and_clear_lo(ptep: number): number {
    const phys = this.k.machine.phys;
    const oldLo = phys.xchgLo(ptep / 4, 0);
    phys.i32[ptep / 4 + 1] = 0;
    this.k.charge(this.k.costs.pteWrite);
    return oldLo;
  }

  /**
   * ptep_modify_prot_start: take a present entry out of the page table atomically (the exchange
   * of ptep_get_and_clear) and return its old halves, so an Accessed/Dirty update the hardware
   * makes up to that moment is in the value the caller rewrites, and one it would make after it
   * finds the entry not present (the access faults and waits for the PTE lock). Charged at the
   * commit.
   */
  modify_prot_start(ptep: number): [number, number] {
    const phys = this.k.machine.phys;
    const oldLo = phys.xchgLo(ptep / 4, 0);
    const oldHi = phys.i32[ptep / 4 + 1]!;
    phys.i32[ptep / 4 + 1] = 0;
    return [oldLo, oldHi];
  }

  /**
   * ptep_modify_prot_commit: put the rewritten entry back (PAE order). `changed` says whether it
   * differs from the old one: only a change is charged as a PTE write (the cost model prices
   * an update of an entry, not the take-out and put-back around it).
   */
  modify_prot_commit(ptep: number, lo: number, hi: number, changed: boolean): void {
    this.k.machine.phys.writeWordPair(ptep / 4, lo, hi);
    if (changed) this.k.charge(this.k.costs.pteWrite);
  }

  /** Clear bits in the low half atomically (ptep_set_wrprotect, ptep_test_and_clear_young). */
  clear_bits(ptep: number, mask: number): number {
    this.k.charge(this.k.costs.pteWrite);
    return this.k.machine.phys.andLo(ptep / 4, ~mask);
  }

  /** Set bits in the low half (A/D updates by software: ptep_set_access_flags). */
  set_bits(ptep: number, bits: number): void {
    const phys = this.k.machine.phys;
    for (;;) {
      const old = phys.i32[ptep / 4]!;
      if (phys.cmpxchgLo(ptep / 4, old, old | bits) === old) break;
    }
    this.k.charge(this.k.costs.pteWrite);
  }

  /**
   * Visit every present leaf entry in [start, end) with its address and level (1, 2 or 3).
   * Used by zap, mprotect, fork and the /proc views. The callback may modify the entry.
   */
  forEachLeaf(mm: MmStruct, start: number, end: number, fn: (addr: number, ptep: number, level: number) => void): void {
    if (end > start) this.visitLeaves(mm.pgd, this.levels, 0, start, end, fn);
  }

  /** forEachLeaf below `table` (at `level`, mapping from `base`). */
  private visitLeaves(table: number, level: number, base: number, start: number, end: number, fn: (addr: number, ptep: number, level: number) => void): void {
    const i32 = this.i32;
    const span = 2 ** (12 + 9 * (level - 1));
    const first = Math.max(0, Math.floor((start - base) / span));
    const last = Math.min(511, Math.floor((end - 1 - base) / span));
    for (let i = first; i <= last; i++) {
      const e = table + i * 8;
      const lo = i32[e / 4]!;
      if ((lo & PTE_P) === 0) continue;
      const addr = base + i * span;
      if (level === 1 || (level <= 3 && (lo & PTE_PS) !== 0)) fn(addr, e, level);
      else this.visitLeaves(entryTable(lo, i32[e / 4 + 1]!), level - 1, addr, start, end, fn);
    }
  }

  /** Every present non-leaf entry (table) in the tree, with the level of the table it points to. */
  forEachTable(mm: MmStruct, fn: (tablePa: number, level: number) => void): void {
    const visit = (table: number, level: number): void => {
      fn(table, level);
      if (level === 1) return;
      for (let i = 0; i < 512; i++) {
        const e = table + i * 8;
        const lo = this.lo(e);
        if ((lo & PTE_P) === 0 || (level <= 3 && (lo & PTE_PS) !== 0)) continue;
        visit(entryTable(lo, this.hi(e)), level - 1);
      }
    };
    if (mm.pgd) visit(mm.pgd, this.levels);
  }

  /**
   * free_pgd_range: free the page tables that map only addresses in [floor, ceiling) — the gap
   * between the previous VMA's end and the next VMA's start around an unmapped range — for the
   * part [start, end). Tables are unlinked now and handed to `freeLater` (the mmu_gather frees
   * them after the TLB flush, which then IPIs even lazy CPUs: freed_tables).
   */
  free_pgd_range(mm: MmStruct, start: number, end: number, floor: number, ceiling: number, freeLater: (tablePa: number) => void): void {
    if (end > start) this.freeTables(mm.pgd, this.levels, 0, start, end, floor, ceiling, freeLater);
  }

  /**
   * free_pgd_range below `table` (at `level`, mapping from `base`). Recursive: a table covering
   * [base, base + span*512) may be freed when that whole range lies inside [floor, ceiling) and
   * it is empty after its children were freed. Returns whether `table` is now empty.
   */
  private freeTables(table: number, level: number, base: number, start: number, end: number, floor: number, ceiling: number, freeLater: (tablePa: number) => void): boolean {
    const i32 = this.i32;
    if (level === 1) {
      // A PTE table has no children to free: it is empty unless some entry is present.
      for (let i = 0; i < 512; i++) if ((i32[(table + i * 8) / 4]! & PTE_P) !== 0) return false;
      return true;
    }
    const span = 2 ** (12 + 9 * (level - 1));
    let empty = true;
    for (let i = 0; i < 512; i++) {
      const e = table + i * 8;
      const lo = i32[e / 4]!;
      if ((lo & PTE_P) === 0) continue;
      const a = base + i * span;
      const childCovers = !(level <= 3 && (lo & PTE_PS) !== 0);
      // Go down into every table the unmapped range touches; free one only if it is empty
      // and the whole range it maps lies inside [floor, ceiling) (no other VMA can use it).
      if (childCovers && a + span > start && a < end) {
        const child = entryTable(lo, i32[e / 4 + 1]!);
        if (this.freeTables(child, level - 1, a, start, end, floor, ceiling, freeLater) && a >= floor && a + span <= ceiling) {
          this.k.machine.phys.writeWordPair(e / 4, 0, 0);
          freeLater(child);
          continue;
        }
      }
      empty = false;
    }
    return empty;
  }
}

/**
 * vm_get_page_prot (arch/x86/mm/pgprot.c protection_map): the leaf protection of a VMA's
 * pages. Private writable mappings map read-only (copy on write); A is preset, D is not. Like
 * protection_map, the result depends on VM_READ|VM_WRITE|VM_EXEC|VM_SHARED only, so it comes
 * from a table of shared, frozen values.
 */
export function vm_get_page_prot(flags: number): PgProt {
  return PROTECTION_MAP[flags & 0xf]!;
}

function protectionOf(flags: number): PgProt {
  const VM_READ = 0x1;
  const VM_WRITE = 0x2;
  const VM_EXEC = 0x4;
  const VM_SHARED = 0x8;
  if ((flags & (VM_READ | VM_WRITE | VM_EXEC)) === 0) return PAGE_NONE;
  let lo = PTE_P | PTE_US | PTE_A;
  if (flags & VM_WRITE && flags & VM_SHARED) lo |= PTE_RW;
  const hi = flags & VM_EXEC ? 0 : PTE_HI_XD;
  return Object.freeze({ lo, hi });
}

/** protection_map: the protection for each combination of VM_READ, VM_WRITE, VM_EXEC, VM_SHARED. */
const PROTECTION_MAP: readonly PgProt[] = Array.from({ length: 16 }, (_, f) => protectionOf(f));
