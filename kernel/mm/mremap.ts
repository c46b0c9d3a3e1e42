/**
 * kernel/mm/mremap.ts — mremap (mm/mremap.c): shrink (unmap the tail), grow in place when the
 * space after the VMA is free, or move (MREMAP_MAYMOVE / MREMAP_FIXED): copy_vma makes the new
 * VMA (->open on it), the page-table entries move to the new range (flushing the old range), the
 * ->mremap hook is told, and the old range is unmapped (->close on the old piece).
 * VM_DONTEXPAND and VM_PFNMAP VMAs cannot grow (EFAULT); MREMAP_DONTUNMAP is refused for them.
 */

import type { Kernel } from '../kernel.ts';
import type { KGen } from '../sched/core.ts';
import { PAGE_SIZE, TASK_SIZE, VM_DONTEXPAND, VM_PFNMAP, VM_ACCOUNT, type MmStruct } from './mm_types.ts';
import { EFAULT, EINVAL, ENOMEM } from '../errno.ts';
import { do_vmi_munmap, get_unmapped_area, MAP_FIXED } from './mmap.ts';
import { _PAGE_PRESENT } from '../arch/x86/pgtable.ts';

export const MREMAP_MAYMOVE = 1;
export const MREMAP_FIXED = 2;
export const MREMAP_DONTUNMAP = 4;

export function* do_mremap(k: Kernel, mm: MmStruct, addr: number, old_len: number, new_len: number, flags: number, new_addr: number): KGen<number> {
  if (flags & ~(MREMAP_MAYMOVE | MREMAP_FIXED | MREMAP_DONTUNMAP)) return -EINVAL;
  if (flags & MREMAP_FIXED && !(flags & MREMAP_MAYMOVE)) return -EINVAL;
  if (flags & MREMAP_DONTUNMAP && (!(flags & MREMAP_MAYMOVE) || old_len !== new_len)) return -EINVAL;
  if (!Number.isSafeInteger(addr) || addr < 0 || addr % PAGE_SIZE) return -EINVAL;
  if (!Number.isSafeInteger(old_len) || !Number.isSafeInteger(new_len) || old_len < 0 || new_len < 0) return -EINVAL;
  old_len = Math.ceil(old_len / PAGE_SIZE) * PAGE_SIZE;
  new_len = Math.ceil(new_len / PAGE_SIZE) * PAGE_SIZE;
  if (new_len === 0 || new_len > TASK_SIZE || addr > TASK_SIZE - old_len) return -EINVAL;
  if (flags & MREMAP_FIXED && (new_addr % PAGE_SIZE || new_addr > TASK_SIZE - new_len)) return -EINVAL;
  yield* k.locks.mmap_write_lock(mm, 'mremap');
  try {
    if (flags & MREMAP_FIXED) {
      // The old and new ranges may not overlap.
      if (addr + old_len > new_addr && new_addr + new_len > addr) return -EINVAL;
    }
    const vma = mm.vma_lookup(addr);
    if (!vma) return -EFAULT;
    if (old_len === 0) return -EINVAL; // duplicating shared mappings with old_len 0 is not modelled
    if (addr + old_len > vma.vm_end) return -EFAULT;
    if (new_len > old_len && vma.vm_flags & (VM_DONTEXPAND | VM_PFNMAP)) return -EFAULT;
    if (flags & MREMAP_DONTUNMAP && vma.vm_flags & (VM_DONTEXPAND | VM_PFNMAP)) return -EINVAL;
    if (!(flags & MREMAP_FIXED)) {
      if (new_len <= old_len) {
        if (new_len < old_len) {
          const r = yield* do_vmi_munmap(k, mm, addr + new_len, old_len - new_len, false);
          if (r) return r;
        }
        return addr;
      }
      // Grow in place if the VMA ends here and the space after it is free.
      if (addr + old_len === vma.vm_end) {
        const next = mm.nextVma(vma);
        if ((!next || next.vm_start >= addr + new_len) && addr + new_len <= TASK_SIZE) {
          const merged = yield* k.vmaOps.mergeNew(mm, vma.vm_end, addr + new_len, { flags: vma.vm_flags, file: vma.vm_file, pgoff: vma.pgoffOf(vma.vm_end), anon_vma: vma.anon_vma, uffd: vma.vm_userfaultfd_ctx, anon_name: vma.anon_name });
          if (merged === vma) return addr;
          // Could not extend (e.g. VM_SPECIAL): fall through to a move.
          if (merged) return -ENOMEM;
        }
      }
      if (!(flags & MREMAP_MAYMOVE)) return -ENOMEM;
    }
    let dst = new_addr;
    if (flags & MREMAP_FIXED) {
      const r = yield* do_vmi_munmap(k, mm, dst, new_len, false);
      if (r) return r;
    } else {
      dst = get_unmapped_area(mm, 0, new_len, 0);
      if (dst < 0) return dst;
    }
    return yield* move_vma(k, mm, addr, old_len, new_len, dst, (flags & MREMAP_DONTUNMAP) !== 0);
  } finally {
    k.locks.mmap_write_unlock(mm);
  }
}

/** move_vma: the VMA piece [addr, addr + old_len) moves to `dst` (new_len long). */
function* move_vma(k: Kernel, mm: MmStruct, addr: number, old_len: number, new_len: number, dst: number, dontunmap: boolean): KGen<number> {
  let vma = mm.vma_lookup(addr)!;
  // Isolate the piece being moved.
  if (vma.vm_start < addr) {
    const r = yield* k.vmaOps.split(vma, addr, true, true);
    if (typeof r === 'number') return r;
  }
  vma = mm.vma_lookup(addr)!;
  if (vma.vm_end > addr + old_len) {
    const r = yield* k.vmaOps.split(vma, addr + old_len, false, true);
    if (typeof r === 'number') return r;
  }
  // copy_vma: the new VMA (->open on it); its range is new_len.
  const nv = k.vmaOps.dup(vma);
  nv.vm_start = dst;
  nv.vm_end = dst + new_len;
  if (nv.vm_file) nv.vm_file.get();
  else nv.vm_pgoff = dst / PAGE_SIZE;
  yield* k.vmaOps.link(nv);
  if (nv.vm_ops?.open) {
    k.vmaOps.counters.opens++;
    nv.vm_ops.open(nv);
  }
  // move_page_tables: entries move one by one; the old range is flushed afterwards.
  const pt = k.pt;
  let moved = 0;
  const leaves: [number, number][] = [];
  pt.forEachLeaf(mm, addr, addr + Math.min(old_len, new_len), (a, e, level) => {
    if (level === 1) leaves.push([a, e]);
  });
  for (const [a, e] of leaves) {
    const [lo, hi] = pt.get_and_clear(e);
    if (!(lo & _PAGE_PRESENT)) continue;
    const np = pt.pte_alloc(mm, dst + (a - addr), 'pte_alloc <- move_ptes');
    if (np < 0) return -ENOMEM;
    pt.set_pte(np, lo, hi);
    moved++;
  }
  if (moved) yield* k.tlb.flush_tlb_mm_range(mm, addr, addr + old_len, 12, false);
  if (nv.vm_ops?.mremap) {
    const err = nv.vm_ops.mremap(nv);
    if (err) return err;
  }
  if (dontunmap) {
    // The old VMA stays, empty; accounting moves with the pages.
    vma.vm_flags &= ~VM_ACCOUNT;
    return dst;
  }
  const r = yield* do_vmi_munmap(k, mm, addr, old_len, false);
  if (r) return r;
  return dst;
}

export { MAP_FIXED };
