/**
 * kernel/mm/userfaultfd.ts — the page-installing half of userfaultfd (mm/userfaultfd.c):
 * UFFDIO_COPY and UFFDIO_ZEROPAGE fill missing pages of a registered range.
 *
 * mfill_atomic: the destination VMA is found and read-locked with uffd_lock_vma; it must be
 * registered with this context and cover the whole range (else -ENOENT); page by page, an entry
 * that is already present stops the copy with -EEXIST; a fresh anonymous page (or, for shmem, a
 * page-cache page) receives the bytes and is mapped as a fault would map it (writable only with
 * VM_WRITE). The source bytes are copied from the caller's memory before any lock is taken.
 *
 * Deviations: no UFFDIO_COPY_MODE_WP, no hugetlb destinations, no UFFDIO_CONTINUE/POISON/MOVE.
 */

import type { Kernel } from '../kernel.ts';
import type { KGen } from '../sched/core.ts';
import { PAGE_SIZE, VM_HUGETLB, VM_SHARED, VM_WRITE, type MmStruct, type VmArea } from './mm_types.ts';
import { GFP_HIGHUSER_MOVABLE, PG_swapbacked, __GFP_ZERO } from './page_alloc.ts';
import { folio_add_file_rmap_pte, folio_add_new_anon_rmap } from './rmap.ts';
import { _PAGE_ACCESSED, _PAGE_DIRTY, _PAGE_PRESENT, _PAGE_RW, _PAGE_SPECIAL, vm_get_page_prot } from '../arch/x86/pgtable.ts';
import { mk_pte } from './memory.ts';
import { EEXIST, ENOENT, ENOMEM, EINVAL } from '../errno.ts';

/** Install one page at `dst` in `vma` holding `bytes` (a 4 KiB page; null: the zero page). */
function mfill_atomic_pte(k: Kernel, vma: VmArea, dst: number, bytes: Uint8Array | null): number {
  const mm = vma.vm_mm;
  const pt = k.pt;
  const ptep = pt.pte_alloc(mm, dst, 'pte_alloc <- mfill_atomic');
  if (ptep < 0) return -ENOMEM;
  if (pt.lo(ptep) & _PAGE_PRESENT) return -EEXIST;
  const prot = vm_get_page_prot(vma.vm_flags);
  const shared = (vma.vm_flags & VM_SHARED) !== 0;
  if (bytes === null && !shared) {
    // mfill_atomic_pte_zeropage: the zero page, special and read-only.
    const [lo, hi] = mk_pte(k.pages.zeroPfn, prot);
    pt.set_pte(ptep, (lo & ~_PAGE_RW) | _PAGE_SPECIAL, hi);
    return 0;
  }
  let pfn: number;
  if (shared) {
    // shmem_mfill_atomic_pte: the page joins the object's page cache first.
    const m = vma.vm_file!.f_mapping;
    const pgoff = vma.pgoffOf(dst);
    if (m.i_pages.has(pgoff)) return -EEXIST;
    pfn = k.pages.allocPages(GFP_HIGHUSER_MOVABLE | __GFP_ZERO, 0, 'shmem_alloc_folio <- mfill_atomic');
    if (pfn < 0) return -ENOMEM;
    k.pages.flags[pfn] |= PG_swapbacked;
    k.pages.mapping[pfn] = m.id;
    k.pages.index[pfn] = pgoff >>> 0;
    m.i_pages.set(pgoff, pfn);
    m.nrpages++;
    k.pages.getPage(pfn); // the PTE's reference; the page cache keeps the allocation's
  } else {
    pfn = k.pages.allocPages(GFP_HIGHUSER_MOVABLE | __GFP_ZERO, 0, 'alloc_anon_folio <- mfill_atomic_pte_copy');
    if (pfn < 0) return -ENOMEM;
    if (!vma.anon_vma) return -ENOMEM; // uffd_lock_vma prepared it
  }
  if (bytes) k.machine.phys.u8.set(bytes, pfn * PAGE_SIZE);
  k.charge(k.costs.pageAlloc + PAGE_SIZE * k.costs.copyPerByte);
  let [lo, hi] = mk_pte(pfn, prot);
  lo |= _PAGE_ACCESSED | _PAGE_DIRTY;
  if (vma.vm_flags & VM_WRITE) lo |= _PAGE_RW;
  if (shared) {
    folio_add_file_rmap_pte(k, pfn);
    mm.rss.shmem++;
  } else {
    folio_add_new_anon_rmap(k, pfn, vma, dst);
    mm.rss.anon++;
  }
  if (mm.rssPages > mm.hiwater_rss) mm.hiwater_rss = mm.rssPages;
  pt.set_pte(ptep, lo, hi);
  return 0;
}

export interface MfillResult {
  /** Bytes filled before stopping. */
  done: number;
  /** 0, or the -errno that stopped it. */
  err: number;
}

/**
 * mfill_atomic: fill [dst, dst + len) of `mm` (registered with `ctx`) from `src` (null: zero
 * pages). `dst` and `len` are page aligned (the caller validated them).
 */
export function* mfill_atomic(k: Kernel, mm: MmStruct, ctx: unknown, dst: number, len: number, src: Uint8Array | null): KGen<MfillResult> {
  const got = yield* k.locks.uffd_lock_vma(mm, dst, 'uffd_mfill_lock');
  if (typeof got === 'number') return { done: 0, err: got };
  const vma = got;
  let res: MfillResult = { done: 0, err: 0 };
  try {
    // find_dst_vma: the whole range inside one VMA registered with this context.
    if (dst + len > vma.vm_end || vma.vm_userfaultfd_ctx !== ctx) return { done: 0, err: -ENOENT };
    if (vma.vm_flags & VM_HUGETLB) return { done: 0, err: -EINVAL };
    for (let off = 0; off < len; off += PAGE_SIZE) {
      const r = mfill_atomic_pte(k, vma, dst + off, src ? src.subarray(off, off + PAGE_SIZE) : null);
      if (r) {
        res = { done: off, err: r };
        return res;
      }
      res.done = off + PAGE_SIZE;
    }
    return res;
  } finally {
    k.locks.vma_end_read(vma);
  }
}
