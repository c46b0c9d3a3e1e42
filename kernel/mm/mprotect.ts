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
 * A private VM_LOCKED VMA made writable is populated at once (populate_vma_page_range), so its
 * copy-on-write faults are taken now rather than on access.
 *
 * The TLB flush follows mm/mprotect.c and mm/hugetlb.c of the 7.0-era mm tree (linux-mm
 * mm/mprotect.c @076d1ab51ae6, mm/hugetlb.c @01af3bb0d66b; v6.15's change_pte_range flushes the
 * same way). do_mprotect_pkey runs one mmu_gather over the whole call. change_pte_range records a
 * page in it (tlb_flush_pte_range) only when pte_needs_flush says the change needs a flush — on
 * x86 (arch/x86/include/asm/tlbflush.h) any change of RW, USER or NX of an entry that was
 * present; an entry that was not present (none, or PROT_NONE, which Linux keeps non-present) is
 * never flushed. tlb_end_vma then flushes, for each VMA piece, the span from the first to the
 * last recorded page — nothing at all if no entry needed it, e.g. over a range nothing was ever
 * faulted into. hugetlb VMAs go through hugetlb_change_protection instead, which gathers in an
 * mmu_gather of its own (tlb_gather_mmu_vma) every present huge entry it rewrote, 2 MiB each with
 * a 2 MiB stride, and flushes them; as mprotect's own gather is still in flight then, its
 * tlb_finish_mmu finds mm_tlb_flush_nested() true and flushes the whole mm with freed_tables set,
 * as the code reads (in v6.15 it was one flush_hugetlb_tlb_range of the whole range instead).
 *
 * Deviation: Linux turns the PTEs of a PROT_NONE range into non-present _PAGE_PROTNONE entries;
 * mmulab keeps them present and clears their U/S bit, which makes every user access fault just
 * the same (access_error then refuses it) while zap, fork and GUP keep seeing the page. For the
 * flush decision such an entry counts as the non-present entry it stands for; a stricter entry
 * left in a TLB when it is made accessible again only costs a spurious fault, as in Linux.
 */

import type { Kernel } from '../kernel.ts';
import type { KGen } from '../sched/core.ts';
import {
  PAGE_SIZE, TASK_SIZE, VM_ACCESS_FLAGS, VM_ACCOUNT, VM_EXEC, VM_GROWSDOWN, VM_HUGETLB, VM_LOCKED, VM_NORESERVE, VM_READ, VM_SHARED, VM_WRITE, type MmStruct, type VmArea,
} from './mm_types.ts';
import { EACCES, EINVAL, ENOMEM } from '../errno.ts';
import { PROT_EXEC, PROT_GROWSDOWN, PROT_GROWSUP, PROT_READ, PROT_SEM, PROT_WRITE } from './mmap.ts';
import { PMD_SHIFT, _PAGE_NX_HI, _PAGE_PRESENT, _PAGE_RW, _PAGE_SPECIAL, _PAGE_USER, ptePfn, vm_get_page_prot } from '../arch/x86/pgtable.ts';
import { PG_anon_exclusive } from './page_alloc.ts';
import { MmuGather } from './mmu_gather.ts';
import { populate_vma_page_range } from './gup.ts';

/**
 * pte_needs_flush (x86) for the bits change_protection rewrites: an entry that was present (in
 * Linux's sense: mmulab's PROT_NONE stand-in, present without U/S, is not) needs a flush when RW,
 * U/S or NX changed (all three are in flush_on_change; PRESENT is in flush_on_clear, and going to
 * PROT_NONE clears U/S here).
 */
function pte_needs_flush(lo: number, hi: number, nlo: number, nhi: number): boolean {
  if (!(lo & _PAGE_PRESENT) || !(lo & _PAGE_USER)) return false;
  return ((lo ^ nlo) & (_PAGE_RW | _PAGE_USER)) !== 0 || ((hi ^ nhi) & _PAGE_NX_HI) !== 0;
}

/**
 * change_protection: rewrite the entries of [start, end) for `vma`'s new flags. Entries whose
 * change needs a flush are recorded in `tlb` and flushed at the end of the VMA (tlb_end_vma);
 * hugetlb VMAs use a gather of their own (hugetlb_change_protection). Returns the number of
 * entries rewritten.
 */
export function* change_protection(k: Kernel, tlb: MmuGather, vma: VmArea, start: number, end: number): KGen<number> {
  if (vma.vm_flags & VM_HUGETLB) return yield* hugetlb_change_protection(k, vma, start, end);
  // change_protection_range: tlb_start_vma … tlb_end_vma.
  const pages = rewrite(k, vma, start, end, (addr) => tlb.flushPteRange(addr, PAGE_SIZE), false);
  yield* tlb.endVma();
  return pages;
}

/**
 * hugetlb_change_protection: every present huge entry is rewritten and recorded (whether or not
 * its bits changed: tlb_remove_huge_tlb_entry), in a gather of this call's own, which is flushed
 * (tlb_flush_mmu_tlbonly) and finished before returning.
 */
function* hugetlb_change_protection(k: Kernel, vma: VmArea, start: number, end: number): KGen<number> {
  const tlb = new MmuGather(k, vma.vm_mm, false, k.tlb, k.pt, 'tlb_finish_mmu <- hugetlb_change_protection');
  const pages = rewrite(k, vma, start, end, (addr) => tlb.removeTlbEntry(addr, PMD_SHIFT), true);
  yield* tlb.flushTlbOnly();
  yield* tlb.finish();
  return pages;
}

/**
 * The entry rewrite of change_pte_range / hugetlb_change_protection: each present entry is taken
 * out atomically (ptep_modify_prot_start, so no A/D bit a CPU sets meanwhile is lost), given the
 * new protection by pte_modify and can_change_pte_writable (a private page becomes writable
 * again only if it is an exclusive anonymous page; shared writable mappings without dirty
 * tracking carry RW in their protection already), and written back (ptep_modify_prot_commit).
 * `flush(addr)` is called for every entry that must be flushed: those pte_needs_flush picks, or
 * with `every` each present one.
 */
function rewrite(k: Kernel, vma: VmArea, start: number, end: number, flush: (addr: number) => void, every: boolean): number {
  const pt = k.pt;
  const prot = vm_get_page_prot(vma.vm_flags);
  let pages = 0;
  pt.forEachLeaf(vma.vm_mm, start, end, (addr, ptep) => {
    if (!(pt.lo(ptep) & _PAGE_PRESENT)) return;
    // ptep_modify_prot_start: the old entry is taken out atomically, with whatever A/D bits the
    // hardware set until then (on the parallel engine a worker's CPU may be setting them now).
    const [lo, hi] = pt.modify_prot_start(ptep);
    const pfn = ptePfn(lo, hi);
    const special = (lo & _PAGE_SPECIAL) !== 0;
    let writable = (vma.vm_flags & VM_WRITE) !== 0 && ((vma.vm_flags & VM_SHARED) !== 0 || (!special && pfn < k.pages.nframes && (k.pages.flags[pfn]! & PG_anon_exclusive) !== 0));
    if (!(vma.vm_flags & (VM_READ | VM_WRITE | VM_EXEC))) writable = false;
    let nlo = writable ? lo | _PAGE_RW : lo & ~_PAGE_RW;
    const nhi = (hi & ~_PAGE_NX_HI) | (prot.hi & _PAGE_NX_HI);
    if ((prot.lo & _PAGE_USER) === 0) {
      // PROT_NONE: Linux keeps the entry as a non-present PROTNONE entry; mmulab clears access
      // by removing the user bit so every access faults (the VMA check refuses it).
      nlo &= ~_PAGE_USER;
    } else nlo |= _PAGE_USER;
    const needsFlush = every || pte_needs_flush(lo, hi, nlo, nhi);
    // ptep_modify_prot_commit: every present entry is written back, changed or not.
    pt.modify_prot_commit(ptep, nlo, nhi, nlo !== lo || nhi !== hi);
    pages++;
    if (needsFlush) flush(addr);
  });
  return pages;
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
    // One mmu_gather for the whole call (tlb_gather_mmu … tlb_finish_mmu), finished on the error
    // paths too.
    const tlb = new MmuGather(k, mm, false, k.tlb, k.pt, 'tlb_finish_mmu <- do_mprotect_pkey');
    let error = 0;
    let nstart = start;
    for (;;) {
      let newflags = ((vma.vm_flags & ~VM_ACCESS_FLAGS) | reqFlags) >>> 0;
      // Every requested permission needs its VM_MAY* bit (VM_MAY* == VM_* << 4).
      if ((newflags & ~(newflags >>> 4)) & VM_ACCESS_FLAGS) {
        error = -EACCES;
        break;
      }
      const tmp = Math.min(vma.vm_end, end);
      // Where the next VMA must start: the end of what the change covered, which is further
      // than tmp when it merged with the VMA after it (that one had the new flags already).
      let covered = tmp;
      if (newflags !== vma.vm_flags) {
        const oldflags = vma.vm_flags;
        // mprotect_fixup's accounting: a private mapping turning writable is charged
        // (VM_ACCOUNT); an anonymous one turning read-only before any page was faulted in
        // (no anon_vma) is uncharged again.
        if (newflags & VM_WRITE) {
          if (!(oldflags & (VM_ACCOUNT | VM_WRITE | VM_HUGETLB | VM_SHARED | VM_NORESERVE))) newflags = (newflags | VM_ACCOUNT) >>> 0;
        } else if (oldflags & VM_ACCOUNT && !vma.vm_ops && !vma.anon_vma) {
          newflags = (newflags & ~VM_ACCOUNT) >>> 0;
        }
        const r = yield* k.vmaOps.modify(vma, nstart, tmp, newflags);
        if (typeof r === 'number') {
          error = r;
          break;
        }
        yield* change_protection(k, tlb, r, nstart, tmp);
        // A private VM_LOCKED VMA becoming writable: break COW now rather than on access.
        if ((oldflags & (VM_WRITE | VM_SHARED | VM_LOCKED)) === VM_LOCKED && newflags & VM_WRITE) {
          yield* populate_vma_page_range(k, r, nstart, tmp, null);
        }
        covered = Math.max(tmp, r.vm_end);
      }
      nstart = covered;
      if (nstart >= end) break;
      const next = mm.find_vma(nstart);
      if (!next || next.vm_start !== nstart) {
        error = -ENOMEM;
        break;
      }
      vma = next;
    }
    yield* tlb.finish();
    return error;
  } finally {
    k.locks.mmap_write_unlock(mm);
  }
}
