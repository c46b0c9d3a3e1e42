/**
 * kernel/mm/rmap.ts — mapcount and reference bookkeeping of mapped pages (mm/rmap.c,
 * include/linux/rmap.h), reduced to order-0 pages and hugetlb heads.
 *
 * The law (from __wp_can_reuse_large_anon_folio): every mapcount is paired with one reference;
 * take the reference before raising the mapcount when mapping, drop it after lowering the
 * mapcount when unmapping (and, for PTE references, only after the TLB flush). mmulab has no
 * reverse-map walks of its own: reclaim of anonymous memory is not modelled, and file/driver
 * mappings are found through their address_space's i_mmap tree.
 */

import type { Kernel } from '../kernel.ts';
import { AnonVma, type VmArea } from './mm_types.ts';
import { PG_anon, PG_anon_exclusive, PG_swapbacked, PG_zero } from './page_alloc.ts';

/** anon_vma_prepare: give a private VMA its anon_vma if it has none (the caller holds a lock that allows it). */
export function anon_vma_prepare(vma: VmArea): void {
  if (!vma.anon_vma) vma.anon_vma = new AnonVma(vma.vm_mm.kernel);
}

/** folio_add_new_anon_rmap: a freshly allocated anonymous page mapped once, exclusively. */
export function folio_add_new_anon_rmap(k: Kernel, pfn: number, vma: VmArea, addr: number): void {
  const p = k.pages;
  p.flags[pfn] |= PG_anon | PG_anon_exclusive;
  p.mapping[pfn] = vma.anon_vma ? vma.anon_vma.id : 0;
  p.index[pfn] = vma.pgoffOf(addr) >>> 0;
  p.mapcount[pfn] = 1;
}

/** folio_add_anon_rmap_pte: another mapping of an existing anonymous page (fork). */
export function folio_dup_anon_rmap_pte(k: Kernel, pfn: number): void {
  k.pages.mapcount[pfn]!++;
  k.pages.flags[pfn] &= ~PG_anon_exclusive;
}

/** folio_add_file_rmap_pte: a file or driver page mapped by one more PTE. */
export function folio_add_file_rmap_pte(k: Kernel, pfn: number): void {
  k.pages.mapcount[pfn]!++;
}

/** folio_remove_rmap_pte: one PTE mapping fewer. Reports a negative mapcount. */
export function folio_remove_rmap_pte(k: Kernel, pfn: number): void {
  const p = k.pages;
  if (p.flags[pfn]! & PG_zero) return;
  if (--p.mapcount[pfn]! < 0) {
    p.mapcount[pfn] = 0;
    k.report({ kind: 'bad-page', title: `BUG: Bad page map: pfn:${pfn.toString(16)} mapcount went negative`, text: `BUG: Bad page map in process ${k.current?.comm ?? 'swapper'}  pfn:${pfn.toString(16)}: mapcount < 0`, data: { pfn } });
  }
}

export function isAnon(k: Kernel, pfn: number): boolean {
  return (k.pages.flags[pfn]! & PG_anon) !== 0;
}

/** mm_counter_file: which RSS counter a mapped non-anonymous page counts in (shmem or file). */
export function mm_counter_file(k: Kernel, pfn: number): 'shmem' | 'file' {
  return (k.pages.flags[pfn]! & PG_swapbacked) !== 0 ? 'shmem' : 'file';
}
