/**
 * kernel/mm/mremap.ts — mremap (mm/mremap.c), in the structure of Linux's: check_mremap_params,
 * then under the mmap write lock either mremap_at (no resize; shrink = unmap the tail; expand in
 * place when the VMA ends at the range's end and the space after it is free, else move with
 * MREMAP_MAYMOVE) or mremap_to (MREMAP_FIXED / MREMAP_DONTUNMAP: unmap the destination first,
 * shrink, then move).
 *
 * Expanding in place is a merge of the new tail with the VMA (vma_merge_extend), which also
 * swallows the next VMA when they meet and are compatible; a VMA that cannot merge (VM_SPECIAL)
 * gets ENOMEM even with MREMAP_MAYMOVE, as in Linux. VM_DONTEXPAND and VM_PFNMAP VMAs cannot
 * grow (EFAULT) and refuse MREMAP_DONTUNMAP (EINVAL); hugetlb VMAs need 2 MiB aligned addresses
 * and cannot grow (EINVAL).
 *
 * move_vma: ->may_split is asked first; copy_vma makes the new VMA — merged into a compatible
 * neighbour at the destination if possible, else a duplicate with ->open called on it (an
 * anonymous VMA without pages takes the new address as page offset, one with pages keeps its
 * offsets); the page-table entries move (the old range is flushed); ->mremap is told, and if it
 * refuses, the entries move back and the new VMA is unmapped instead; finally the old range is
 * unmapped (splits with ->open, ->close on the removed piece). With MREMAP_DONTUNMAP the old VMA
 * stays, empty, and loses VM_LOCKED/VM_ACCOUNT (and its anon_vma if it moved whole).
 *
 * A VM_LOCKED mapping that grew (in place or moved) has the new part faulted in once the lock is
 * dropped (mm_populate), as sys_mremap does; locked_vm follows the VMAs (MmStruct.locked_vm).
 *
 * Deviations: no RLIMIT_MEMLOCK or commit limit (EAGAIN/ENOMEM from those limits never happen),
 * no userfaultfd events, no PMD-level moves (entries move one by one).
 */

import type { Kernel } from '../kernel.ts';
import type { KGen } from '../sched/core.ts';
import { PAGE_SIZE, TASK_SIZE, VM_ACCOUNT, VM_DONTEXPAND, VM_HUGETLB, VM_LOCKED, VM_LOCKED_MASK, VM_MAYSHARE, VM_PFNMAP, VM_SHARED, type MmStruct, type VmArea } from './mm_types.ts';
import { EFAULT, EINVAL, ENOMEM } from '../errno.ts';
import { do_vmi_munmap, get_unmapped_area, MAP_FIXED } from './mmap.ts';
import { _PAGE_PRESENT, PMD_SIZE } from '../arch/x86/pgtable.ts';
import { mm_populate } from './gup.ts';

export const MREMAP_MAYMOVE = 1;
export const MREMAP_FIXED = 2;
export const MREMAP_DONTUNMAP = 4;

interface Remap {
  addr: number;
  old_len: number;
  new_len: number;
  flags: number;
  new_addr: number;
  vma: VmArea;
}

function page_align(n: number): number {
  return Math.ceil(n / PAGE_SIZE) * PAGE_SIZE;
}

export function* do_mremap(k: Kernel, mm: MmStruct, addr: number, old_len: number, new_len: number, flags: number, new_addr: number): KGen<number> {
  // check_mremap_params
  if (flags & ~(MREMAP_MAYMOVE | MREMAP_FIXED | MREMAP_DONTUNMAP)) return -EINVAL;
  if (!Number.isSafeInteger(addr) || addr < 0 || addr % PAGE_SIZE) return -EINVAL;
  if (!Number.isSafeInteger(old_len) || !Number.isSafeInteger(new_len) || old_len < 0 || new_len < 0) return -EINVAL;
  if (page_align(new_len) === 0) return -EINVAL; // a zero old_len is legal (duplicating a shared mapping)
  const impliesNewAddr = (flags & (MREMAP_FIXED | MREMAP_DONTUNMAP)) !== 0;
  if (impliesNewAddr) {
    if (!Number.isSafeInteger(new_addr) || new_addr < 0 || new_addr % PAGE_SIZE) return -EINVAL;
    if (!(flags & MREMAP_MAYMOVE)) return -EINVAL; // a new address implies a move
    if (flags & MREMAP_DONTUNMAP && old_len !== new_len) return -EINVAL;
    // move_vma may split both ranges: stay clear of the map_count limit before unmapping anything.
    if (mm.map_count + 2 >= k.vmaOps.max_map_count - 3) return -ENOMEM;
  }
  old_len = page_align(old_len);
  new_len = page_align(new_len);
  let locked = false;
  let ret: number;
  yield* k.locks.mmap_write_lock(mm, 'mremap');
  try {
    ret = yield* mremap_locked(k, mm, addr, old_len, new_len, flags, new_addr, impliesNewAddr, (l) => (locked = l));
  } finally {
    k.locks.mmap_write_unlock(mm);
  }
  // A VM_LOCKED mapping that grew has its new part populated, with the lock dropped (mm_populate).
  if (ret >= 0 && locked && new_len > old_len) yield* mm_populate(k, mm, ret + old_len, new_len - old_len);
  return ret;
}

/** The part of do_mremap under the mmap write lock; `setLocked` learns whether the VMA is VM_LOCKED. */
function* mremap_locked(k: Kernel, mm: MmStruct, addr: number, old_len: number, new_len: number, flags: number, new_addr: number, impliesNewAddr: boolean, setLocked: (l: boolean) => void): KGen<number> {
  const vma = mm.vma_lookup(addr);
  if (!vma) return -EFAULT;
  setLocked((vma.vm_flags & VM_LOCKED) !== 0);
  if (vma.vm_flags & VM_HUGETLB) {
    // align_hugetlb: lengths round up to the huge page size; addresses must be aligned; no growing.
    old_len = Math.ceil(old_len / PMD_SIZE) * PMD_SIZE;
    new_len = Math.ceil(new_len / PMD_SIZE) * PMD_SIZE;
    if (addr % PMD_SIZE || (impliesNewAddr && new_addr % PMD_SIZE) || new_len > old_len) return -EINVAL;
  }
  const vrm: Remap = { addr, old_len, new_len, flags, new_addr, vma };
  return impliesNewAddr ? yield* mremap_to(k, mm, vrm) : yield* mremap_at(k, mm, vrm);
}

/** remap_is_valid: may this VMA be moved or resized this way? 0 or -errno. */
function remap_is_valid(vrm: Remap): number {
  const vma = vrm.vma;
  // Duplicating a private mapping (old_len 0) makes no sense.
  if (vrm.old_len === 0 && !(vma.vm_flags & (VM_SHARED | VM_MAYSHARE))) return -EINVAL;
  if (vrm.flags & MREMAP_DONTUNMAP && vma.vm_flags & (VM_DONTEXPAND | VM_PFNMAP)) return -EINVAL;
  // No remapping across the end of the VMA.
  if (vrm.old_len > vma.vm_end - vrm.addr) return -EFAULT;
  if (vrm.new_len === vrm.old_len) return 0;
  if (vma.vm_flags & (VM_DONTEXPAND | VM_PFNMAP)) return -EFAULT;
  return 0;
}

/** shrink_vma: unmap [addr + new_len, addr + old_len); reloads the VMA. */
function* shrink_vma(k: Kernel, mm: MmStruct, vrm: Remap): KGen<number> {
  const r = yield* do_vmi_munmap(k, mm, vrm.addr + vrm.new_len, vrm.old_len - vrm.new_len, false);
  if (r) return r;
  const vma = mm.vma_lookup(vrm.addr);
  if (!vma) return -EFAULT;
  vrm.vma = vma;
  return 0;
}

/** mremap_at: resize in place, or move to an address of the kernel's choosing. */
function* mremap_at(k: Kernel, mm: MmStruct, vrm: Remap): KGen<number> {
  if (vrm.new_len === vrm.old_len) return vrm.addr;
  // Shrinking can always be done in place, across VMAs too: it is an unmap of the tail.
  if (vrm.new_len < vrm.old_len) {
    const r = yield* shrink_vma(k, mm, vrm);
    return r || vrm.addr;
  }
  const err = remap_is_valid(vrm);
  if (err) return err;
  const vma = vrm.vma;
  const delta = vrm.new_len - vrm.old_len;
  // vrm_can_expand_in_place: the range ends at the VMA's end and the space after it is free.
  const after = mm.find_vma(vma.vm_end);
  if (vma.vm_end - vrm.addr === vrm.old_len && vma.vm_end + delta <= TASK_SIZE && (!after || after.vm_start >= vma.vm_end + delta)) {
    // vma_merge_extend: fails for VMAs that never merge (VM_SPECIAL), and then it is ENOMEM.
    const merged = yield* k.vmaOps.mergeNew(mm, vma.vm_end, vma.vm_end + delta, { flags: vma.vm_flags, file: vma.vm_file, pgoff: vma.pgoffOf(vma.vm_end), anon_vma: vma.anon_vma, uffd: vma.vm_userfaultfd_ctx, anon_name: vma.anon_name });
    if (merged !== vma) return -ENOMEM;
    return vrm.addr;
  }
  if (!(vrm.flags & MREMAP_MAYMOVE)) return -ENOMEM;
  const dst = vrm_set_new_addr(mm, vrm);
  if (dst < 0) return dst;
  vrm.new_addr = dst;
  return yield* move_vma(k, mm, vrm);
}

/** mremap_to: MREMAP_FIXED or MREMAP_DONTUNMAP. */
function* mremap_to(k: Kernel, mm: MmStruct, vrm: Remap): KGen<number> {
  if (vrm.new_len > TASK_SIZE || vrm.new_addr > TASK_SIZE - vrm.new_len) return -EINVAL;
  // The old and new ranges may not overlap.
  if (vrm.addr + vrm.old_len > vrm.new_addr && vrm.new_addr + vrm.new_len > vrm.addr) return -EINVAL;
  if (vrm.flags & MREMAP_FIXED) {
    // The destination goes first (its ->close runs now); the old VMA may have changed.
    const r = yield* do_vmi_munmap(k, mm, vrm.new_addr, vrm.new_len, false);
    if (r) return r;
    const vma = mm.vma_lookup(vrm.addr);
    if (!vma) return -EFAULT;
    vrm.vma = vma;
  }
  if (vrm.new_len < vrm.old_len) {
    const r = yield* shrink_vma(k, mm, vrm);
    if (r) return r;
    vrm.old_len = vrm.new_len;
  }
  const err = remap_is_valid(vrm);
  if (err) return err;
  const dst = vrm_set_new_addr(mm, vrm);
  if (dst < 0) return dst;
  vrm.new_addr = dst;
  return yield* move_vma(k, mm, vrm);
}

/** vrm_set_new_addr: MREMAP_FIXED is MAP_FIXED, MREMAP_DONTUNMAP alone a hint, else anywhere. */
function vrm_set_new_addr(mm: MmStruct, vrm: Remap): number {
  const hint = vrm.flags & (MREMAP_FIXED | MREMAP_DONTUNMAP) ? vrm.new_addr : 0;
  const align = vrm.vma.vm_flags & VM_HUGETLB ? PMD_SIZE : PAGE_SIZE;
  return get_unmapped_area(mm, hint, vrm.new_len, vrm.flags & MREMAP_FIXED ? MAP_FIXED : 0, align);
}

/**
 * move_page_tables: move the present entries of [from, from + len) to `to` (PTEs, and PMD
 * leaves of hugetlb), flushing the old range if anything moved. Returns the bytes moved or -ENOMEM.
 */
function* move_page_tables(k: Kernel, mm: MmStruct, from: number, to: number, len: number): KGen<number> {
  const pt = k.pt;
  let moved = 0;
  const leaves: [number, number, number][] = [];
  pt.forEachLeaf(mm, from, from + len, (a, e, level) => leaves.push([a, e, level]));
  for (const [a, e, level] of leaves) {
    const np = pt.alloc(mm, to + (a - from), level, 'pte_alloc <- move_ptes');
    if (np < 0) {
      if (moved) yield* k.tlb.flush_tlb_mm_range(mm, from, from + len, 12, false);
      return -ENOMEM;
    }
    const [lo, hi] = pt.get_and_clear(e);
    if (!(lo & _PAGE_PRESENT)) continue;
    pt.set_pte(np, lo, hi);
    moved++;
  }
  if (moved) yield* k.tlb.flush_tlb_mm_range(mm, from, from + len, 12, false);
  return len;
}

/** move_vma: move vrm.vma's [addr, addr + old_len) to new_addr (new_len long). */
function* move_vma(k: Kernel, mm: MmStruct, vrm: Remap): KGen<number> {
  let vma = vrm.vma;
  // prep_move_vma: the unmap at the end may split the VMA in three; ask ->may_split now.
  if (mm.map_count >= k.vmaOps.max_map_count - 3) return -ENOMEM;
  if (vma.vm_ops?.may_split) {
    let err = 0;
    if (vma.vm_start !== vrm.addr) err = vma.vm_ops.may_split(vma, vrm.addr);
    if (!err && vma.vm_end !== vrm.addr + vrm.old_len) err = vma.vm_ops.may_split(vma, vrm.addr + vrm.old_len);
    if (err) return err;
  }
  yield* k.locks.vma_start_write(vma, 'move_vma');
  // copy_vma: an anonymous VMA that never had pages can take the new address as page offset
  // (so it may merge there); one with pages keeps its offsets.
  let pgoff = vma.pgoffOf(vrm.addr);
  if (vma.isAnonymous() && !vma.anon_vma) pgoff = vrm.new_addr / PAGE_SIZE;
  let nv = yield* k.vmaOps.mergeNew(mm, vrm.new_addr, vrm.new_addr + vrm.new_len, { flags: vma.vm_flags, file: vma.vm_file, pgoff, anon_vma: vma.anon_vma, uffd: vma.vm_userfaultfd_ctx, anon_name: vma.anon_name });
  if (nv) {
    // The source may have been merged into the destination's VMA (moving next to itself).
    if (nv.vm_start <= vrm.addr && vrm.addr < nv.vm_end) vma = nv;
  } else {
    nv = k.vmaOps.dup(vma);
    nv.vm_start = vrm.new_addr;
    nv.vm_end = vrm.new_addr + vrm.new_len;
    nv.vm_pgoff = pgoff;
    if (nv.vm_file) nv.vm_file.get();
    yield* k.vmaOps.link(nv);
    if (nv.vm_ops?.open) {
      k.vmaOps.counters.opens++;
      nv.vm_ops.open(nv);
    }
  }
  let moved = yield* move_page_tables(k, mm, vrm.addr, vrm.new_addr, vrm.old_len);
  let err = moved < 0 ? moved : 0;
  if (!err && vma.vm_ops?.mremap) err = vma.vm_ops.mremap(nv);
  if (err) {
    // Move the entries back and unmap the new range instead of the old one.
    if (moved > 0) yield* move_page_tables(k, mm, vrm.new_addr, vrm.addr, moved);
    moved = 0;
    yield* do_vmi_munmap(k, mm, vrm.new_addr, vrm.new_len, false);
    return err;
  }
  if (vrm.flags & MREMAP_DONTUNMAP) {
    // dontunmap_complete: the old VMA stays, empty, neither locked nor accounted; if it moved
    // whole, its anonymous pages now belong to the new VMA alone.
    k.vmaOps.vm_flags_clear(vma, VM_LOCKED_MASK | VM_ACCOUNT, 'dontunmap_complete');
    if (nv !== vma && vrm.addr === vma.vm_start && vrm.addr + vrm.old_len === vma.vm_end) vma.anon_vma = null;
    return vrm.new_addr;
  }
  if (vrm.old_len) yield* do_vmi_munmap(k, mm, vrm.addr, vrm.old_len, false);
  return vrm.new_addr;
}

export { MAP_FIXED };
