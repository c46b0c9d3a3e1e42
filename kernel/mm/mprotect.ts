/**
 * kernel/mm/mprotect.ts — mprotect (mm/mprotect.c): for each VMA piece in the range, the new
 * access flags are checked against VM_MAY* (EACCES when a requested permission's VM_MAY* bit is
 * clear — so a driver that cleared VM_MAYWRITE can never be made writable), the VMA is split or
 * merged (vma_modify_flags), and the PTEs are changed and flushed (change_protection).
 * Private pages become writable only when they are exclusive anonymous pages (others stay
 * copy-on-write). A hole in the range gives ENOMEM after the VMAs before it were changed.
 * PROT_GROWSDOWN extends the range down to the start of a VM_GROWSDOWN VMA (EINVAL on any
 * other); PROT_GROWSUP is always EINVAL on x86. VM_ACCOUNT follows mprotect_fixup: set when a
 * private mapping becomes writable, cleared when an anonymous one without pages yet (no
 * anon_vma) becomes read-only — which decides what merges afterwards. No commit accounting.
 *
 * Deviation: Linux turns the PTEs of a PROT_NONE range into non-present _PAGE_PROTNONE entries;
 * mmulab keeps them present and clears their U/S bit, which makes every user access fault just
 * the same (access_error then refuses it) while zap, fork and GUP keep seeing the page.
 */

import type { Kernel } from '../kernel.ts';
import type { KGen } from '../sched/core.ts';
import { PAGE_SIZE, TASK_SIZE, VM_ACCESS_FLAGS, VM_ACCOUNT, VM_EXEC, VM_GROWSDOWN, VM_HUGETLB, VM_NORESERVE, VM_READ, VM_SHARED, VM_WRITE, type MmStruct, type VmArea } from './mm_types.ts';
import { EACCES, EINVAL, ENOMEM } from '../errno.ts';
import { PROT_EXEC, PROT_GROWSDOWN, PROT_GROWSUP, PROT_READ, PROT_SEM, PROT_WRITE } from './mmap.ts';
import { _PAGE_NX_HI, _PAGE_PRESENT, _PAGE_RW, _PAGE_SPECIAL, _PAGE_USER, ptePfn, vm_get_page_prot } from '../arch/x86/pgtable.ts';
import { PG_anon_exclusive } from './page_alloc.ts';

/** change_protection: rewrite the PTEs of [start, end) for `vma`'s new flags; flush if any changed. */
export function* change_protection(k: Kernel, vma: VmArea, start: number, end: number): KGen<number> {
  const pt = k.pt;
  const prot = vm_get_page_prot(vma.vm_flags);
  let changed = 0;
  let narrowed = false;
  pt.forEachLeaf(vma.vm_mm, start, end, (addr, ptep) => {
    const lo = pt.lo(ptep);
    const hi = pt.hi(ptep);
    if (!(lo & _PAGE_PRESENT)) return;
    const pfn = ptePfn(lo, hi);
    // pte_modify with the new protection, then can_change_pte_writable: a private page becomes
    // writable again only if it is an exclusive anonymous page (shared writable mappings without
    // dirty tracking carry RW in their protection already).
    const special = (lo & _PAGE_SPECIAL) !== 0;
    let writable = (vma.vm_flags & VM_WRITE) !== 0 && ((vma.vm_flags & VM_SHARED) !== 0 || (!special && pfn < k.pages.nframes && (k.pages.flags[pfn]! & PG_anon_exclusive) !== 0));
    if (!(vma.vm_flags & (VM_READ | VM_WRITE | VM_EXEC))) writable = false;
    let nlo = writable ? lo | _PAGE_RW : lo & ~_PAGE_RW;
    let nhi = (hi & ~_PAGE_NX_HI) | (prot.hi & _PAGE_NX_HI);
    if ((prot.lo & _PAGE_USER) === 0) {
      // PROT_NONE: Linux keeps the entry as a non-present PROTNONE entry; mmulab clears access
      // by removing the user bit so every access faults (the VMA check refuses it).
      nlo &= ~0x4;
    } else nlo |= 0x4;
    if (nlo === lo && nhi === hi) return;
    if ((lo & _PAGE_RW && !(nlo & _PAGE_RW)) || (!(hi & _PAGE_NX_HI) && nhi & _PAGE_NX_HI) || (lo & 0x4 && !(nlo & 0x4))) narrowed = true;
    pt.set_pte(ptep, nlo, nhi);
    changed++;
    void addr;
  });
  // Relaxing needs no flush (a stale stricter entry only causes a spurious fault); narrowing does.
  if (narrowed) yield* k.tlb.flush_tlb_mm_range(vma.vm_mm, start, end, 12, false);
  return changed;
}

export function* do_mprotect_pkey(k: Kernel, mm: MmStruct, start: number, len: number, prot: number): KGen<number> {
  const grows = prot & (PROT_GROWSDOWN | PROT_GROWSUP);
  prot &= ~(PROT_GROWSDOWN | PROT_GROWSUP);
  if (grows === (PROT_GROWSDOWN | PROT_GROWSUP)) return -EINVAL; // can't be both
  if (!Number.isSafeInteger(start) || start < 0 || start % PAGE_SIZE) return -EINVAL;
  if (!Number.isSafeInteger(len) || len < 0) return -EINVAL;
  if (len === 0) return 0;
  len = Math.ceil(len / PAGE_SIZE) * PAGE_SIZE;
  const end = start + len;
  if (end <= start || end > TASK_SIZE) return -ENOMEM;
  // arch_validate_prot
  if (prot & ~(PROT_READ | PROT_WRITE | PROT_EXEC | PROT_SEM)) return -EINVAL;
  const reqFlags = (prot & PROT_READ ? VM_READ : 0) | (prot & PROT_WRITE ? VM_WRITE : 0) | (prot & PROT_EXEC ? VM_EXEC : 0);
  yield* k.locks.mmap_write_lock(mm, 'do_mprotect_pkey');
  try {
    let vma = mm.find_vma(start);
    if (!vma || vma.vm_start >= end) return -ENOMEM;
    if (grows & PROT_GROWSDOWN) {
      // The change reaches down to the start of a stack VMA.
      start = vma.vm_start;
      if (!(vma.vm_flags & VM_GROWSDOWN)) return -EINVAL;
    } else {
      if (vma.vm_start > start) return -ENOMEM;
      if (grows & PROT_GROWSUP) {
        // x86 has no VM_GROWSUP (it is VM_NONE), so no VMA grows up.
        return -EINVAL;
      }
    }
    let nstart = start;
    for (;;) {
      let newflags = ((vma.vm_flags & ~VM_ACCESS_FLAGS) | reqFlags) >>> 0;
      // Every requested permission needs its VM_MAY* bit (VM_MAY* == VM_* << 4).
      if ((newflags & ~(newflags >>> 4)) & VM_ACCESS_FLAGS) return -EACCES;
      const tmp = Math.min(vma.vm_end, end);
      // Where the next VMA must start: the end of what the change covered, which is further
      // than tmp when it merged with the VMA after it (that one had the new flags already).
      let covered = tmp;
      if (newflags !== vma.vm_flags) {
        // mprotect_fixup's accounting: a private mapping turning writable is charged
        // (VM_ACCOUNT); an anonymous one turning read-only before any page was faulted in
        // (no anon_vma) is uncharged again.
        if (newflags & VM_WRITE) {
          if (!(vma.vm_flags & (VM_ACCOUNT | VM_WRITE | VM_HUGETLB | VM_SHARED | VM_NORESERVE))) newflags = (newflags | VM_ACCOUNT) >>> 0;
        } else if (vma.vm_flags & VM_ACCOUNT && !vma.vm_ops && !vma.anon_vma) {
          newflags = (newflags & ~VM_ACCOUNT) >>> 0;
        }
        const r = yield* k.vmaOps.modify(vma, nstart, tmp, newflags);
        if (typeof r === 'number') return r;
        yield* change_protection(k, r, nstart, tmp);
        covered = Math.max(tmp, r.vm_end);
      }
      nstart = covered;
      if (nstart >= end) return 0;
      const next = mm.find_vma(nstart);
      if (!next || next.vm_start !== nstart) return -ENOMEM;
      vma = next;
    }
  } finally {
    k.locks.mmap_write_unlock(mm);
  }
}
