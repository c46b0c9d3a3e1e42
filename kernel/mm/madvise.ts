/**
 * kernel/mm/madvise.ts — madvise (mm/madvise.c) for the advice memory experiments use:
 * MADV_DONTNEED and MADV_DONTNEED_LOCKED (zap the range under the mmap read lock; EINVAL for
 * VM_PFNMAP, and VM_LOCKED unless _LOCKED; hugetlb only from a huge page boundary, the end
 * rounded down to one), MADV_FREE (the same here — no lazy freeing — for private anonymous VMAs),
 * MADV_COLD/PAGEOUT (checked, otherwise no-ops: there is no reclaim), MADV_DONTFORK/DOFORK
 * (VM_DONTCOPY; DOFORK refused on VM_SPECIAL), MADV_WIPEONFORK/KEEPONFORK (private anonymous
 * only), MADV_NORMAL/RANDOM/SEQUENTIAL, MADV_DONTDUMP/DODUMP and MADV_POPULATE_READ/WRITE. Flag
 * changes split or merge VMAs through vma_modify; a split refused for lack of resources is
 * EAGAIN. Unknown advice is EINVAL; holes in the range give ENOMEM after the rest was handled
 * (MADV_POPULATE_* stop at the hole).
 *
 * Deviations: MADV_REMOVE, MADV_MERGEABLE/UNMERGEABLE, MADV_HUGEPAGE/NOHUGEPAGE/COLLAPSE,
 * MADV_GUARD_INSTALL/REMOVE and the memory-failure advice are not modelled (EINVAL).
 */

import type { Kernel } from '../kernel.ts';
import type { KGen } from '../sched/core.ts';
import {
  FAULT_FLAG_WRITE, PAGE_SIZE, VM_DONTCOPY, VM_DONTDUMP, VM_FAULT_ERROR, VM_HUGETLB, VM_IO, VM_LOCKED, VM_PFNMAP, VM_RAND_READ, VM_SEQ_READ,
  VM_SHARED, VM_SPECIAL, VM_WIPEONFORK, VM_WRITE, type MmStruct, type VmArea,
} from './mm_types.ts';
import { EAGAIN, EFAULT, EINVAL, ENOMEM } from '../errno.ts';
import { PMD_SIZE } from '../arch/x86/pgtable.ts';
import { handle_mm_fault, zap_page_range_single } from './memory.ts';

export const MADV_NORMAL = 0;
export const MADV_RANDOM = 1;
export const MADV_SEQUENTIAL = 2;
export const MADV_WILLNEED = 3;
export const MADV_DONTNEED = 4;
export const MADV_FREE = 8;
export const MADV_REMOVE = 9;
export const MADV_DONTFORK = 10;
export const MADV_DOFORK = 11;
export const MADV_DONTDUMP = 16;
export const MADV_DODUMP = 17;
export const MADV_WIPEONFORK = 18;
export const MADV_KEEPONFORK = 19;
export const MADV_POPULATE_READ = 22;
export const MADV_POPULATE_WRITE = 23;
export const MADV_COLD = 20;
export const MADV_PAGEOUT = 21;
export const MADV_DONTNEED_LOCKED = 24;

const KNOWN = new Set([MADV_NORMAL, MADV_RANDOM, MADV_SEQUENTIAL, MADV_WILLNEED, MADV_DONTNEED, MADV_DONTNEED_LOCKED, MADV_FREE, MADV_COLD, MADV_PAGEOUT, MADV_DONTFORK, MADV_DOFORK, MADV_DONTDUMP, MADV_DODUMP, MADV_WIPEONFORK, MADV_KEEPONFORK, MADV_POPULATE_READ, MADV_POPULATE_WRITE]);

/** Does `behavior` only read the address space (mmap read lock) or change VMAs (write lock)? */
function needsWriteLock(behavior: number): boolean {
  return !(behavior === MADV_DONTNEED || behavior === MADV_DONTNEED_LOCKED || behavior === MADV_FREE || behavior === MADV_WILLNEED || behavior === MADV_COLD || behavior === MADV_PAGEOUT || behavior === MADV_POPULATE_READ || behavior === MADV_POPULATE_WRITE);
}

function newFlagsFor(vma: VmArea, behavior: number): number | null {
  const f = vma.vm_flags;
  switch (behavior) {
    case MADV_NORMAL:
      return f & ~(VM_RAND_READ | VM_SEQ_READ);
    case MADV_RANDOM:
      return (f & ~VM_SEQ_READ) | VM_RAND_READ;
    case MADV_SEQUENTIAL:
      return (f & ~VM_RAND_READ) | VM_SEQ_READ;
    case MADV_DONTFORK:
      return f | VM_DONTCOPY;
    case MADV_DOFORK:
      return f & VM_SPECIAL ? null : f & ~VM_DONTCOPY;
    case MADV_WIPEONFORK:
      return f & VM_SHARED || vma.vm_file || f & VM_SPECIAL ? null : f | VM_WIPEONFORK;
    case MADV_KEEPONFORK:
      return f & ~VM_WIPEONFORK;
    case MADV_DONTDUMP:
      return f | VM_DONTDUMP;
    case MADV_DODUMP:
      return f & VM_SPECIAL && !(f & VM_HUGETLB) ? null : f & ~VM_DONTDUMP;
  }
  return f;
}

export function* do_madvise(k: Kernel, mm: MmStruct, start: number, len_in: number, behavior: number): KGen<number> {
  if (!KNOWN.has(behavior)) return -EINVAL;
  if (!Number.isSafeInteger(start) || start < 0 || start % PAGE_SIZE) return -EINVAL;
  if (!Number.isSafeInteger(len_in) || len_in < 0) return -EINVAL;
  const len = Math.ceil(len_in / PAGE_SIZE) * PAGE_SIZE;
  const end = start + len;
  if (end < start) return -EINVAL;
  if (len === 0) return 0;
  const write = needsWriteLock(behavior);
  if (write) yield* k.locks.mmap_write_lock(mm, 'madvise');
  else yield* k.locks.mmap_read_lock(mm, 'madvise');
  let unmappedError = 0;
  try {
    let addr = start;
    while (addr < end) {
      const vma = mm.find_vma(addr);
      if (!vma || vma.vm_start >= end) {
        unmappedError = -ENOMEM;
        break;
      }
      if (vma.vm_start > addr) {
        if (behavior === MADV_POPULATE_READ || behavior === MADV_POPULATE_WRITE) return -ENOMEM;
        unmappedError = -ENOMEM;
        addr = vma.vm_start;
      }
      const s = Math.max(addr, vma.vm_start);
      const e = Math.min(end, vma.vm_end);
      const r = yield* applyOne(k, vma, s, e, behavior);
      if (r) return r;
      addr = e;
    }
    return unmappedError;
  } finally {
    if (write) k.locks.mmap_write_unlock(mm);
    else k.locks.mmap_read_unlock(mm);
  }
}

function* applyOne(k: Kernel, vma: VmArea, s: number, e: number, behavior: number): KGen<number> {
  switch (behavior) {
    case MADV_DONTNEED:
    case MADV_DONTNEED_LOCKED:
    case MADV_FREE:
      // madvise_dontneed_free_valid_vma: hugetlb takes only MADV_DONTNEED(_LOCKED), from a huge
      // page boundary, and the end is rounded down so no huge page is dropped by surprise.
      if (vma.vm_flags & VM_HUGETLB) {
        if (behavior === MADV_FREE || s % PMD_SIZE) return -EINVAL;
        e -= e % PMD_SIZE;
      } else if (vma.vm_flags & (VM_PFNMAP | (behavior === MADV_DONTNEED_LOCKED ? 0 : VM_LOCKED))) return -EINVAL;
      if (behavior === MADV_FREE && !vma.isAnonymous()) return -EINVAL;
      if (e > s) yield* zap_page_range_single(k, vma, s, e - s);
      return 0;
    case MADV_COLD:
    case MADV_PAGEOUT:
      // can_madv_lru_vma; there is no reclaim to hint, so nothing else happens.
      return vma.vm_flags & (VM_LOCKED | VM_PFNMAP | VM_HUGETLB) ? -EINVAL : 0;
    case MADV_WILLNEED:
      return 0;
    case MADV_POPULATE_READ:
    case MADV_POPULATE_WRITE: {
      if (vma.vm_flags & (VM_PFNMAP | VM_IO)) return -EINVAL;
      const w = behavior === MADV_POPULATE_WRITE;
      if (w && !(vma.vm_flags & VM_WRITE)) return -EFAULT;
      for (let a = s; a < e; a += PAGE_SIZE) {
        const r = yield* handle_mm_fault(k, vma, a, w ? FAULT_FLAG_WRITE : 0);
        if (r & VM_FAULT_ERROR) return -EFAULT;
      }
      return 0;
    }
  }
  const nf = newFlagsFor(vma, behavior);
  if (nf === null) return -EINVAL;
  if (nf >>> 0 === vma.vm_flags) return 0;
  const r = yield* k.vmaOps.modify(vma, s, e, nf >>> 0);
  // madvise_vma_behavior: a split that ran out of resources is "try again" to the caller.
  if (r === -ENOMEM) return -EAGAIN;
  return typeof r === 'number' ? r : 0;
}
