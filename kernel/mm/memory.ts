/**
 * kernel/mm/memory.ts — page faults, copy-on-write, zapping and the page-insertion API drivers
 * use (mm/memory.c).
 *
 * Faults: handle_mm_fault → __handle_mm_fault → do_anonymous_page / do_fault (read, COW or
 * shared) / do_wp_page, as in Linux; a driver's ->fault returns a referenced page in vmf.page
 * (the PTE consumes that reference) or VM_FAULT_NOPAGE after inserting one itself. Under the
 * per-VMA lock, faults that need the mmap lock (a missing anon_vma without a trylock, a driver
 * ->fault without ->map_pages) drop the VMA lock and return VM_FAULT_RETRY. The fault path is
 * written sync-first (handle_mm_fault_nowait): it returns the result when nothing had to wait,
 * or a generator that continues from the point that may sleep; handle_mm_fault runs either.
 *
 * Zapping clears leaf entries, drops each page's mapcount at once and hands its PTE reference
 * to an mmu_gather, which drops it only after the TLB flush (mm/mmu_gather.c's rule).
 *
 * Driver API: vm_insert_page (every check and errno of Linux, and the VM_MIXEDMAP rule: set it
 * only under the mmap write lock, BUG otherwise), vmf_insert_page, vm_insert_pages,
 * vmf_insert_pfn, vmf_insert_mixed, remap_pfn_range (special PTEs, no reference counting),
 * vm_normal_page, zap_page_range_single (zap_vma_range) and zap_vma_ptes.
 *
 * Simplifications: no swap, no THP (2 MiB pages only through hugetlb), no fault-around, no
 * NUMA hinting. The PTE lock is modelled only where Linux holds it across a wait: kernel code
 * between two scheduler yields is atomic in the simulation, which is what the PTE lock
 * guarantees elsewhere, but wp_page_copy's ptep_clear_flush waits for the other CPUs' TLB
 * flush with the lock held, and faults and zaps of that page table spin on it meanwhile.
 */

import type { Kernel } from '../kernel.ts';
import type { KGen } from '../sched/core.ts';
import {
  FAULT_FLAG_UNSHARE, FAULT_FLAG_VMA_LOCK, FAULT_FLAG_WRITE, VM_FAULT_DONE_COW, VM_FAULT_ERROR, VM_FAULT_NOPAGE, VM_FAULT_OOM, VM_FAULT_RETRY,
  VM_FAULT_SIGBUS, VM_FAULT_SIGSEGV, VM_HUGETLB, VM_IO, VM_MAYSHARE, VM_MAYWRITE, VM_MIXEDMAP, VM_PFNMAP, VM_REMAP_FLAGS, VM_SHARED, VM_WRITE,
  PAGE_SIZE, is_cow_mapping, type MmStruct, type VmArea, type VmFault,
} from './mm_types.ts';
import { GFP_HIGHUSER_MOVABLE, PG_anon, PG_anon_exclusive, PG_buddy, PG_dirty, PG_referenced, PG_slab, PG_table, PG_zero, __GFP_ZERO } from './page_alloc.ts';
import { anon_vma_prepare, folio_add_file_rmap_pte, folio_add_new_anon_rmap, folio_remove_rmap_pte, isAnon, mm_counter_file } from './rmap.ts';
import { MmuGather } from './mmu_gather.ts';
import { PMD_SIZE, _PAGE_ACCESSED, _PAGE_DIRTY, _PAGE_NX_HI, _PAGE_PRESENT, _PAGE_PSE, _PAGE_RW, _PAGE_SPECIAL, _PAGE_USER, ptePfn, vm_get_page_prot, type PgProt } from '../arch/x86/pgtable.ts';
import { EBUSY, EFAULT, EINVAL, ENOMEM, EAGAIN } from '../errno.ts';
import type { AddressSpace } from '../fs/file.ts';

// ==============================================================================================
// PTE helpers
// ==============================================================================================

/** mk_pte(pfn, prot) → [lo, hi]. */
export function mk_pte(pfn: number, prot: PgProt): [number, number] {
  return [((pfn & 0xfffff) << 12) | prot.lo, Math.floor(pfn / 0x100000) | prot.hi];
}

/** Does the user have write permission in this PTE? */
export function pte_write(lo: number): boolean {
  return (lo & _PAGE_RW) !== 0;
}

/**
 * vm_normal_page (x86 has pte_special): the page behind a present PTE, or -1 for special PTEs
 * (PFN maps, the zero page). A special PTE in a VMA that should not have one, or a PFN beyond
 * memory, is a "bad page map".
 */
export function vm_normal_page(k: Kernel, vma: VmArea, addr: number, lo: number, hi: number): number {
  const pfn = ptePfn(lo, hi);
  if (lo & _PAGE_SPECIAL) {
    if (pfn === k.pages.zeroPfn) return -1;
    if (vma.vm_flags & (VM_PFNMAP | VM_MIXEDMAP)) return -1;
    print_bad_pte(k, vma, addr, lo, hi, 'special PTE in a normal VMA');
    return -1;
  }
  if (pfn >= k.pages.nframes) {
    print_bad_pte(k, vma, addr, lo, hi, 'PFN beyond memory');
    return -1;
  }
  return pfn;
}

export function print_bad_pte(k: Kernel, vma: VmArea, addr: number, lo: number, hi: number, why: string): void {
  const t = k.current;
  const val = ((BigInt(hi >>> 0) << 32n) | BigInt(lo >>> 0)).toString(16).padStart(16, '0');
  const title = `BUG: Bad page map in process ${t?.comm ?? 'swapper'}  pte:${val}`;
  k.report({ kind: 'bad-page', title, text: `${title} pmd:0\naddr:${addr.toString(16).padStart(16, '0')} vm_flags:${vma.vm_flags.toString(16).padStart(8, '0')} (${why})`, data: { addr, why, vma: vma.id } });
}

function pgtableOf(k: Kernel) {
  return k.pt;
}

// ==============================================================================================
// Faults
// ==============================================================================================

export interface FaultCounters {
  anon: number;
  zeroPage: number;
  file: number;
  cow: number;
  reuse: number;
  shared: number;
  spurious: number;
  driver: number;
  retries: number;
  sigbus: number;
  sigsegv: number;
  oom: number;
}

/** The kernel whose fault counters were fetched last, and those counters (a one-entry cache). */
let countersOf: Kernel | null = null;
let lastCounters: FaultCounters | null = null;

export function faultCounters(k: Kernel): FaultCounters {
  if (k === countersOf) return lastCounters!;
  let c = k.subsystems.get('faults') as FaultCounters | undefined;
  if (!c) {
    c = { anon: 0, zeroPage: 0, file: 0, cow: 0, reuse: 0, shared: 0, spurious: 0, driver: 0, retries: 0, sigbus: 0, sigsegv: 0, oom: 0 };
    k.subsystems.set('faults', c);
  }
  countersOf = k;
  lastCounters = c;
  return c;
}

/**
 * handle_mm_fault: resolve a fault at `addr` in `vma`. Returns VM_FAULT_* (0 when the access can
 * be retried by the hardware). With FAULT_FLAG_VMA_LOCK, a VM_FAULT_RETRY return means the VMA
 * read lock was dropped.
 */
export function* handle_mm_fault(k: Kernel, vma: VmArea, addr: number, flags: number): KGen<number> {
  const r = handle_mm_fault_nowait(k, vma, addr, flags);
  return typeof r === 'number' ? r : yield* r;
}

/**
 * handle_mm_fault as plain code as far as it can go: the VM_FAULT_* result of a fault resolved
 * without sleeping (an anonymous page, the zero page, a spurious fault), or a generator that
 * runs the rest of one that may sleep (PTE lock held by a waiter, userfaultfd, ->fault, COW,
 * hugetlb), from exactly that point. handle_mm_fault runs either; the steps are the same.
 */
export function handle_mm_fault_nowait(k: Kernel, vma: VmArea, addr: number, flags: number): number | KGen<number> {
  // sanitize_fault_flags
  if (flags & FAULT_FLAG_WRITE) {
    if (!(vma.vm_flags & VM_MAYWRITE)) return VM_FAULT_SIGSEGV;
    if (!(vma.vm_flags & VM_WRITE) && !is_cow_mapping(vma.vm_flags)) return VM_FAULT_SIGSEGV;
  }
  k.charge(k.costs.faultHandler);
  const address = addr - (addr % PAGE_SIZE);
  const vmf: VmFault = { vma, address, pgoff: vma.pgoffOf(address), flags, page: -1 };
  if (vma.vm_flags & VM_HUGETLB) return hugetlb_fault(k, vmf);
  return handle_pte_fault(k, vmf);
}

function handle_pte_fault(k: Kernel, vmf: VmFault): number | KGen<number> {
  const mm = vmf.vma.vm_mm;
  const ptep = pgtableOf(k).pte_alloc(mm, vmf.address, 'pte_alloc <- __handle_mm_fault');
  if (ptep < 0) return VM_FAULT_OOM;
  // pte_offset_map_lock: spin while another CPU holds this PTE table's lock across a wait.
  if (ptlBusy(k, mm, vmf.address, vmf.address + 1)) return handle_pte_fault_after_wait(k, vmf, ptep);
  return handle_pte_fault_locked(k, vmf, ptep);
}

function* handle_pte_fault_after_wait(k: Kernel, vmf: VmFault, ptep: number): KGen<number> {
  yield* pte_lock_wait(k, vmf.vma.vm_mm, vmf.address);
  const r = handle_pte_fault_locked(k, vmf, ptep);
  return typeof r === 'number' ? r : yield* r;
}

/** The part of handle_pte_fault that runs with the PTE table's lock (see the file header). */
function handle_pte_fault_locked(k: Kernel, vmf: VmFault, ptep: number): number | KGen<number> {
  const vma = vmf.vma;
  const pt = pgtableOf(k);
  const lo = pt.lo(ptep);
  if ((lo & _PAGE_PRESENT) === 0) {
    // uffd-registered VMAs: missing faults go to the userfaultfd handler.
    if (vma.vm_userfaultfd_ctx && k.subsystems.has('userfaultfd')) {
      const uffd = k.subsystem<{ handleMissing(k: Kernel, vmf: VmFault): KGen<number> }>('userfaultfd');
      return uffd.handleMissing(k, vmf);
    }
    if (vma.isAnonymous()) return do_anonymous_page(k, vmf, ptep);
    return do_fault(k, vmf, ptep);
  }
  if (vmf.flags & (FAULT_FLAG_WRITE | FAULT_FLAG_UNSHARE) && !pte_write(lo)) return do_wp_page(k, vmf, ptep);
  // The entry already allows the access (another thread fixed it, or the TLB entry was stale and
  // stricter): mark it young/dirty as the access would, and return (a spurious fault).
  pt.set_bits(ptep, _PAGE_ACCESSED | (vmf.flags & FAULT_FLAG_WRITE ? _PAGE_DIRTY : 0));
  faultCounters(k).spurious++;
  return 0;
}

// ---- the PTE lock held across a wait ---------------------------------------------------------

/** A PTE table whose lock is held across a scheduler yield: its mm and the 2 MiB it maps. */
interface PtlHold {
  mm: MmStruct;
  base: number;
}

/** The kernel whose PTE-lock holds were fetched last, and those holds (a one-entry cache). */
let holdsOf: Kernel | null = null;
let lastHolds: Set<PtlHold> | null = null;

function ptlHolds(k: Kernel): Set<PtlHold> {
  if (k === holdsOf) return lastHolds!;
  let s = k.subsystems.get('ptl') as Set<PtlHold> | undefined;
  if (!s) {
    s = new Set();
    k.subsystems.set('ptl', s);
  }
  holdsOf = k;
  lastHolds = s;
  return s;
}

/** pte_offset_map_lock for a section that yields: returns the unlock. */
function pte_lock(k: Kernel, mm: MmStruct, addr: number): () => void {
  const h: PtlHold = { mm, base: addr - (addr % PMD_SPAN) };
  const holds = ptlHolds(k);
  holds.add(h);
  return () => {
    holds.delete(h);
  };
}

const PMD_SPAN = 2 << 20;

function ptlBusy(k: Kernel, mm: MmStruct, start: number, end: number): boolean {
  const holds = ptlHolds(k);
  if (holds.size === 0) return false;
  for (const h of holds) if (h.mm === mm && h.base < end && h.base + PMD_SPAN > start) return true;
  return false;
}

/** Spin (as on the PTE spinlock) while a PTE table covering [start, end) is held by someone. */
function* pte_lock_wait(k: Kernel, mm: MmStruct, start: number, end = start + 1): KGen {
  if (!ptlBusy(k, mm, start, end)) return;
  yield { kind: 'spin', reason: `PTE lock of ${start.toString(16)} in mm ${mm.ctx_id}`, until: () => !ptlBusy(k, mm, start, end) };
}

/**
 * anon_vma_prepare: give a private VMA its anon_vma. Under the VMA lock alone that needs the
 * mmap lock, taken by trylock; if that fails the fault is retried under the mmap lock.
 */
function vmf_anon_prepare(k: Kernel, vmf: VmFault): number {
  const vma = vmf.vma;
  if (vma.anon_vma) return 0;
  if (vmf.flags & FAULT_FLAG_VMA_LOCK) {
    if (!k.locks.mmap_read_trylock(vma.vm_mm, 'vmf_anon_prepare')) {
      k.locks.vma_end_read(vma);
      return VM_FAULT_RETRY;
    }
    anon_vma_prepare(vma);
    k.locks.mmap_read_unlock(vma.vm_mm);
    return 0;
  }
  anon_vma_prepare(vma);
  return 0;
}

/** do_anonymous_page: first touch of a private anonymous page. */
function do_anonymous_page(k: Kernel, vmf: VmFault, ptep: number): number {
  const vma = vmf.vma;
  const mm = vma.vm_mm;
  const pt = pgtableOf(k);
  const prot = vm_get_page_prot(vma.vm_flags);
  if (vma.vm_flags & VM_SHARED) return VM_FAULT_SIGBUS; // shared anonymous memory is shmem-backed
  if (!(vmf.flags & FAULT_FLAG_WRITE)) {
    // Read fault: map the shared zero page, special and read-only.
    const [lo, hi] = mk_pte(k.pages.zeroPfn, prot);
    pt.set_pte(ptep, (lo & ~_PAGE_RW) | _PAGE_SPECIAL, hi);
    faultCounters(k).zeroPage++;
    return 0;
  }
  const ret = vmf_anon_prepare(k, vmf);
  if (ret) return ret;
  const pfn = k.pages.allocPages(GFP_HIGHUSER_MOVABLE | __GFP_ZERO, 0, 'alloc_anon_folio <- do_anonymous_page');
  if (pfn < 0) {
    faultCounters(k).oom++;
    return VM_FAULT_OOM;
  }
  k.charge(k.costs.pageAlloc + PAGE_SIZE * k.costs.copyPerByte);
  // mk_pte, spelled out (no pair to allocate on this path).
  let lo = ((pfn & 0xfffff) << 12) | prot.lo | _PAGE_ACCESSED;
  const hi = Math.floor(pfn / 0x100000) | prot.hi;
  if (vma.vm_flags & VM_WRITE) lo |= _PAGE_RW | _PAGE_DIRTY;
  folio_add_new_anon_rmap(k, pfn, vma, vmf.address);
  mm.rss.anon++;
  updateHiwater(mm);
  pt.set_pte(ptep, lo, hi);
  faultCounters(k).anon++;
  return 0;
}

function updateHiwater(mm: MmStruct): void {
  const rss = mm.rssPages;
  if (rss > mm.hiwater_rss) mm.hiwater_rss = rss;
}

/** do_fault: a file or driver VMA. */
function* do_fault(k: Kernel, vmf: VmFault, ptep: number): KGen<number> {
  const vma = vmf.vma;
  const ops = vma.vm_ops;
  if (!ops || !ops.fault) {
    // No ->fault: a driver VMA not fully populated at mmap time.
    return (pgtableOf(k).lo(ptep) & _PAGE_PRESENT) === 0 ? VM_FAULT_SIGBUS : VM_FAULT_NOPAGE;
  }
  // vmf_can_call_fault: ->fault runs under the VMA lock only if the driver offers ->map_pages.
  if (vmf.flags & FAULT_FLAG_VMA_LOCK && !ops.map_pages) {
    k.locks.vma_end_read(vma);
    return VM_FAULT_RETRY;
  }
  faultCounters(k).driver++;
  if (!(vmf.flags & FAULT_FLAG_WRITE)) return yield* do_read_fault(k, vmf, ptep);
  if (!(vma.vm_flags & VM_SHARED)) return yield* do_cow_fault(k, vmf, ptep);
  return yield* do_shared_fault(k, vmf, ptep);
}

/** __do_fault: call ->fault. */
function* __do_fault(k: Kernel, vmf: VmFault): KGen<number> {
  const r = vmf.vma.vm_ops!.fault!(vmf);
  const ret = typeof r === 'number' ? r : yield* r;
  if (ret & (VM_FAULT_ERROR | VM_FAULT_NOPAGE | VM_FAULT_RETRY | VM_FAULT_DONE_COW)) return ret;
  if (vmf.page < 0) {
    k.warn('WARNING: ->fault returned 0 without a page', `__do_fault: ${vmf.vma.vm_ops?.name ?? 'vm_ops'}->fault returned 0 but set no vmf->page`, {});
    return VM_FAULT_SIGBUS;
  }
  return ret;
}

/** finish_fault: map vmf.page (its reference becomes the PTE's). */
function finish_fault(k: Kernel, vmf: VmFault, ptep: number, write: boolean, cow: boolean): number {
  const vma = vmf.vma;
  const pt = pgtableOf(k);
  const pfn = vmf.page;
  if (pt.lo(ptep) & _PAGE_PRESENT) {
    k.pages.putPage(pfn, 'finish_fault (raced)');
    return VM_FAULT_NOPAGE;
  }
  const prot = vm_get_page_prot(vma.vm_flags);
  let [lo, hi] = mk_pte(pfn, prot);
  lo |= _PAGE_ACCESSED;
  if (write) lo |= _PAGE_RW | _PAGE_DIRTY;
  if (cow) {
    folio_add_new_anon_rmap(k, pfn, vma, vmf.address);
    vma.vm_mm.rss.anon++;
  } else {
    folio_add_file_rmap_pte(k, pfn);
    vma.vm_mm.rss[mm_counter_file(k, pfn)]++;
  }
  updateHiwater(vma.vm_mm);
  pt.set_pte(ptep, lo, hi);
  return 0;
}

function* do_read_fault(k: Kernel, vmf: VmFault, ptep: number): KGen<number> {
  const ret = yield* __do_fault(k, vmf);
  if (ret & (VM_FAULT_ERROR | VM_FAULT_NOPAGE | VM_FAULT_RETRY)) return ret;
  faultCounters(k).file++;
  return finish_fault(k, vmf, ptep, false, false) | ret;
}

function* do_cow_fault(k: Kernel, vmf: VmFault, ptep: number): KGen<number> {
  const r = vmf_anon_prepare(k, vmf);
  if (r) return r;
  const copy = k.pages.allocPages(GFP_HIGHUSER_MOVABLE, 0, 'alloc_page_vma <- do_cow_fault');
  if (copy < 0) return VM_FAULT_OOM;
  const ret = yield* __do_fault(k, vmf);
  if (ret & (VM_FAULT_ERROR | VM_FAULT_NOPAGE | VM_FAULT_RETRY)) {
    k.pages.putPage(copy, 'do_cow_fault (error)');
    return ret;
  }
  k.pages.copy_highpage(copy, vmf.page);
  k.charge(k.costs.pageAlloc + PAGE_SIZE * k.costs.copyPerByte);
  k.pages.putPage(vmf.page, 'do_cow_fault');
  vmf.page = copy;
  faultCounters(k).cow++;
  return finish_fault(k, vmf, ptep, true, true) | ret;
}

function* do_shared_fault(k: Kernel, vmf: VmFault, ptep: number): KGen<number> {
  const ret = yield* __do_fault(k, vmf);
  if (ret & (VM_FAULT_ERROR | VM_FAULT_NOPAGE | VM_FAULT_RETRY)) return ret;
  k.pages.flags[vmf.page] |= PG_dirty;
  faultCounters(k).shared++;
  return finish_fault(k, vmf, ptep, true, false) | ret;
}

/**
 * do_wp_page: a write to a present read-only PTE. Shared mappings are made writable; private
 * ones reuse an exclusive anonymous page or copy it (wp_page_copy), which clears the old PTE and
 * flushes it from every TLB before the new one is installed, and drops the old page's reference
 * only after that.
 */
function* do_wp_page(k: Kernel, vmf: VmFault, ptep: number): KGen<number> {
  const vma = vmf.vma;
  const mm = vma.vm_mm;
  const pt = pgtableOf(k);
  const lo = pt.lo(ptep);
  const hi = pt.hi(ptep);
  const pfn = vm_normal_page(k, vma, vmf.address, lo, hi);
  if (vma.vm_flags & (VM_SHARED | VM_MAYSHARE)) {
    if (!(vmf.flags & FAULT_FLAG_WRITE)) return 0; // unshare applies to private anonymous pages only
    if (!(vma.vm_flags & VM_WRITE)) return VM_FAULT_SIGSEGV;
    pt.set_bits(ptep, _PAGE_RW | _PAGE_DIRTY | _PAGE_ACCESSED);
    if (pfn >= 0) k.pages.flags[pfn] |= PG_dirty;
    faultCounters(k).shared++;
    return 0;
  }
  const p = k.pages;
  if (pfn >= 0 && isAnon(k, pfn) && (p.flags[pfn]! & PG_anon_exclusive || (p.refcount[pfn] === 1 && p.mapcount[pfn] === 1))) {
    // Reuse: the only mapping of an anonymous page (maybe_mkwrite: RW only with VM_WRITE, as
    // a FOLL_FORCE write through GUP reaches here on a read-only VMA).
    p.flags[pfn] |= PG_anon_exclusive;
    if (vmf.flags & FAULT_FLAG_UNSHARE && !(vmf.flags & FAULT_FLAG_WRITE)) return 0; // unsharing an exclusive page: nothing to do
    pt.set_bits(ptep, (vma.vm_flags & VM_WRITE ? _PAGE_RW : 0) | _PAGE_DIRTY | _PAGE_ACCESSED);
    faultCounters(k).reuse++;
    return 0;
  }
  // wp_page_copy
  const r = vmf_anon_prepare(k, vmf);
  if (r) return r;
  const src = pfn >= 0 ? pfn : ptePfn(lo, hi);
  const isZero = src === p.zeroPfn;
  const copy = p.allocPages(GFP_HIGHUSER_MOVABLE | (isZero ? __GFP_ZERO : 0), 0, 'alloc_page_vma <- wp_page_copy');
  if (copy < 0) return VM_FAULT_OOM;
  if (!isZero && src < p.nframes) p.copy_highpage(copy, src);
  k.charge(k.costs.pageAlloc + PAGE_SIZE * k.costs.copyPerByte);
  // ptep_clear_flush: clear, and make sure no TLB still maps the old page. The PTE lock stays
  // held while the flush waits for the other CPUs, so nobody refaults the empty entry meanwhile.
  const unlock = pte_lock(k, mm, vmf.address);
  pt.get_and_clear(ptep);
  try {
    yield* k.tlb.flush_tlb_page(mm, vmf.address);
  } catch (e) {
    unlock();
    throw e;
  }
  const prot = vm_get_page_prot(vma.vm_flags);
  let [nlo, nhi] = mk_pte(copy, prot);
  // FAULT_FLAG_UNSHARE (a read-only GUP pin of a shared anonymous page) gets an exclusive copy
  // that stays read-only.
  const unshare = (vmf.flags & FAULT_FLAG_UNSHARE) !== 0 && (vmf.flags & FAULT_FLAG_WRITE) === 0;
  nlo |= (unshare ? 0 : _PAGE_DIRTY | (vma.vm_flags & VM_WRITE ? _PAGE_RW : 0)) | _PAGE_ACCESSED;
  folio_add_new_anon_rmap(k, copy, vma, vmf.address);
  pt.set_pte(ptep, nlo, nhi);
  unlock();
  if (pfn >= 0) {
    if (!isAnon(k, pfn)) {
      mm.rss[mm_counter_file(k, pfn)]--;
      mm.rss.anon++;
    }
    folio_remove_rmap_pte(k, pfn);
    p.putPage(pfn, 'wp_page_copy');
  } else {
    mm.rss.anon++;
  }
  updateHiwater(mm);
  faultCounters(k).cow++;
  return 0;
}

/** hugetlb_fault: 2 MiB pages (MAP_HUGETLB), anonymous, mapped by a PS=1 PDE. */
function* hugetlb_fault(k: Kernel, vmf: VmFault): KGen<number> {
  const vma = vmf.vma;
  const mm = vma.vm_mm;
  const pt = pgtableOf(k);
  const base = vmf.address - (vmf.address % (2 << 20));
  const pmdp = pt.alloc(mm, base, 2, 'huge_pte_alloc <- hugetlb_fault');
  if (pmdp < 0) return VM_FAULT_OOM;
  const lo0 = pt.lo(pmdp);
  if (lo0 & _PAGE_PRESENT) {
    if (vmf.flags & FAULT_FLAG_WRITE && !(lo0 & _PAGE_RW)) {
      if (!(vma.vm_flags & VM_WRITE)) return VM_FAULT_SIGSEGV;
      pt.set_bits(pmdp, _PAGE_RW | _PAGE_DIRTY);
    } else pt.set_bits(pmdp, _PAGE_ACCESSED | (vmf.flags & FAULT_FLAG_WRITE ? _PAGE_DIRTY : 0));
    return 0;
  }
  const head = k.pages.allocPages(GFP_HIGHUSER_MOVABLE | __GFP_ZERO | 4 /* __GFP_COMP */, 9, 'alloc_hugetlb_folio <- hugetlb_no_page');
  if (head < 0) return VM_FAULT_OOM;
  k.charge(k.costs.pageAlloc + (2 << 20) * k.costs.copyPerByte);
  const prot = vm_get_page_prot(vma.vm_flags);
  let [lo, hi] = mk_pte(head, prot);
  lo |= _PAGE_PSE | _PAGE_ACCESSED;
  if (vma.vm_flags & VM_WRITE && (vma.vm_flags & VM_SHARED || vmf.flags & FAULT_FLAG_WRITE)) lo |= _PAGE_RW | _PAGE_DIRTY;
  anon_vma_prepare(vma);
  folio_add_new_anon_rmap(k, head, vma, base);
  // Hugetlb pages are not RSS: they count in hugetlb_usage (hugetlb_count_add).
  mm.hugetlb_usage += 512;
  updateHiwater(mm);
  pt.set_pte(pmdp, lo, hi);
  return 0;
}

// ==============================================================================================
// Zapping
// ==============================================================================================

export interface ZapDetails {
  /** Leave private COWed anonymous pages alone (unmap_mapping_range without even_cows). */
  skip_cows?: boolean;
  /** Only this page (unmap_mapping_folio). */
  single_pfn?: number;
}

export interface ZapCounters {
  ptes: number;
  pages: number;
  special: number;
}

export function zapCounters(k: Kernel): ZapCounters {
  let c = k.subsystems.get('zap') as ZapCounters | undefined;
  if (!c) {
    c = { ptes: 0, pages: 0, special: 0 };
    k.subsystems.set('zap', c);
  }
  return c;
}

/**
 * zap_pte_range over [start, end) of `vma` into `tlb`: clear leaf entries, drop mapcounts now,
 * queue PTE references for after the flush (flushing early when the batch fills).
 */
export function* zap_range(k: Kernel, tlb: MmuGather, vma: VmArea, start: number, end: number, details: ZapDetails = {}): KGen {
  const mm = vma.vm_mm;
  const pt = pgtableOf(k);
  // The leaves as (address, entry, level) triples, flat.
  const leaves: number[] = [];
  yield* pte_lock_wait(k, mm, Math.max(start, vma.vm_start), Math.min(end, vma.vm_end));
  pt.forEachLeaf(mm, Math.max(start, vma.vm_start), Math.min(end, vma.vm_end), (addr, ptep, level) => {
    leaves.push(addr, ptep, level);
  });
  const zc = zapCounters(k);
  for (let j = 0; j < leaves.length; j += 3) {
    const addr = leaves[j]!;
    const ptep = leaves[j + 1]!;
    const level = leaves[j + 2]!;
    const lo = pt.lo(ptep);
    const hi = pt.hi(ptep);
    if ((lo & _PAGE_PRESENT) === 0) continue;
    const pfn = level === 1 ? vm_normal_page(k, vma, addr, lo, hi) : k.pages.head(ptePfn(lo, hi));
    if (pfn >= 0 && details.single_pfn !== undefined && pfn !== details.single_pfn) continue;
    if (pfn >= 0 && details.skip_cows && isAnon(k, pfn)) continue;
    const olo = pt.get_and_clear_lo(ptep);
    tlb.removeTlbEntry(addr, level === 1 ? 12 : level === 2 ? 21 : 30);
    zc.ptes++;
    if (pfn < 0) {
      zc.special++;
      continue;
    }
    const p = k.pages;
    if (level > 1) mm.hugetlb_usage -= 512;
    else if (isAnon(k, pfn)) mm.rss.anon--;
    else {
      mm.rss[mm_counter_file(k, pfn)]--;
      if (olo & _PAGE_DIRTY) p.flags[pfn] |= PG_dirty;
    }
    if (olo & _PAGE_ACCESSED) p.flags[pfn] |= PG_referenced;
    folio_remove_rmap_pte(k, pfn);
    zc.pages++;
    if (tlb.removePage(pfn)) yield* tlb.flush();
  }
}

/**
 * zap_page_range_single (newer kernels: zap_vma_range): zap [addr, addr + size) of one VMA with
 * its own gather; the caller only needs the VMA stable (mmap lock, VMA lock or i_mmap lock).
 */
export function* zap_page_range_single(k: Kernel, vma: VmArea, addr: number, size: number, details: ZapDetails = {}): KGen {
  if (size === 0) return;
  const end = addr + size;
  if (addr < vma.vm_start || end > vma.vm_end) {
    k.warn('WARNING: zap_page_range_single outside the VMA', `VM_WARN_ON_ONCE: zap of ${addr.toString(16)}-${end.toString(16)} outside ${vma}`, { vma: vma.id });
  }
  // unmap_single_vma → __unmap_hugepage_range: a hugetlb range must start and end on huge page
  // boundaries (BUG_ON in Linux); without the check a 4 KiB zap would drop a whole 2 MiB page.
  if (vma.vm_flags & VM_HUGETLB && (addr % PMD_SIZE || end % PMD_SIZE)) {
    k.bug('kernel BUG at mm/hugetlb.c: __unmap_hugepage_range', `BUG_ON(start & ~huge_page_mask(h)): zap of ${addr.toString(16)}-${end.toString(16)} in hugetlb ${vma}`, { vma: vma.id, contract: 'hugetlb-zap-alignment' });
  }
  // The VMA must be stable: the mmap lock, its VMA lock, or (rmap walkers) its file's i_mmap_rwsem.
  if (!k.locks.vmaIsStable(vma) && !vma.vm_file?.f_mapping.i_mmap_rwsem.heldBy(k.current)) {
    k.locks.vma_assert_locked(vma, 'zap_page_range_single');
  }
  const tlb = new MmuGather(k, vma.vm_mm, false, k.tlb, k.pt, 'tlb_finish_mmu <- zap_page_range_single');
  yield* zap_range(k, tlb, vma, addr, end, details);
  yield* tlb.finish();
}

/** zap_vma_ptes: the exported helper; silently ignores ranges outside the VMA and non-PFNMAP VMAs. */
export function* zap_vma_ptes(k: Kernel, vma: VmArea, addr: number, size: number): KGen {
  if (!(vma.vm_flags & VM_PFNMAP) || addr < vma.vm_start || addr + size > vma.vm_end) return;
  yield* zap_page_range_single(k, vma, addr, size);
}

/**
 * unmap_mapping_pages: zap the pages [start, start + nr) of `mapping` from every VMA of every
 * process mapping them, under i_mmap_rwsem (read), each VMA with its own gather.
 */
export function* unmap_mapping_pages(k: Kernel, mapping: AddressSpace, start: number, nr: number, even_cows: boolean): KGen {
  const last = nr === 0 ? Number.MAX_SAFE_INTEGER : start + nr - 1;
  yield* mapping.i_mmap_rwsem.down_read('unmap_mapping_pages');
  try {
    yield* unmap_mapping_range_tree(k, mapping, start, last, even_cows);
  } finally {
    mapping.i_mmap_rwsem.up_read();
  }
}

/**
 * unmap_mapping_range_tree: the work of unmap_mapping_pages for page offsets [first, last], with
 * i_mmap_rwsem already held by the caller (asserted). Each VMA gets its own gather, so every
 * range is flushed from all TLBs before its pages' references drop.
 */
export function* unmap_mapping_range_tree(k: Kernel, mapping: AddressSpace, first: number, last: number, even_cows: boolean): KGen {
  if (!mapping.i_mmap_rwsem.heldBy(k.current)) k.lockdep.assertHeld(mapping.i_mmap_rwsem, '&mapping->i_mmap_rwsem', 'any', 'unmap_mapping_range_tree');
  for (const vma of mapping.i_mmap.query(first, last)) {
    const vfirst = Math.max(first, vma.vm_pgoff);
    const vlast = Math.min(last, vma.lastPgoff);
    if (vfirst > vlast) continue;
    const a = vma.vm_start + (vfirst - vma.vm_pgoff) * PAGE_SIZE;
    const b = vma.vm_start + (vlast - vma.vm_pgoff + 1) * PAGE_SIZE;
    const tlb = new MmuGather(k, vma.vm_mm, false, k.tlb, k.pt, 'tlb_finish_mmu <- unmap_mapping_pages');
    yield* zap_range(k, tlb, vma, a, b, { skip_cows: !even_cows });
    yield* tlb.finish();
  }
}

/** unmap_mapping_range: byte offsets (holelen 0 = to the end). */
export function* unmap_mapping_range(k: Kernel, mapping: AddressSpace, holebegin: number, holelen: number, even_cows: boolean): KGen {
  const start = Math.floor(holebegin / PAGE_SIZE);
  let nr = 0;
  if (holelen > 0) nr = Math.floor((holebegin + holelen + PAGE_SIZE - 1) / PAGE_SIZE) - start;
  yield* unmap_mapping_pages(k, mapping, start, nr, even_cows);
}

// ==============================================================================================
// Driver page insertion
// ==============================================================================================

/** Why a page cannot be inserted (validate_page_before_insert), or 0. */
function validate_page_before_insert(k: Kernel, vma: VmArea, pfn: number): number {
  const p = k.pages;
  if (pfn <= 0 || pfn >= p.nframes) return -EINVAL;
  if (p.flags[pfn]! & PG_zero) return vma.vm_flags & (VM_WRITE | VM_MAYWRITE) && !is_cow_mapping(vma.vm_flags) ? -EINVAL : 0;
  if (p.refcount[k.pages.head(pfn)] === 0) return -EINVAL;
  if (p.flags[pfn]! & (PG_anon | PG_buddy | PG_table | PG_slab)) return -EINVAL;
  return 0;
}

export interface InsertCounters {
  inserted: number;
  busy: number;
  errors: number;
  pfn: number;
}

export function insertCounters(k: Kernel): InsertCounters {
  let c = k.subsystems.get('insert') as InsertCounters | undefined;
  if (!c) {
    c = { inserted: 0, busy: 0, errors: 0, pfn: 0 };
    k.subsystems.set('insert', c);
  }
  return c;
}

/** insert_page: the locked part of vm_insert_page. */
function insert_page(k: Kernel, vma: VmArea, addr: number, pfn: number, prot: PgProt): number {
  const r = validate_page_before_insert(k, vma, pfn);
  if (r) return r;
  const pt = pgtableOf(k);
  const ptep = pt.pte_alloc(vma.vm_mm, addr, 'pte_alloc <- insert_page');
  if (ptep < 0) return -ENOMEM;
  if (pt.lo(ptep) & _PAGE_PRESENT || pt.hi(ptep) !== 0) {
    insertCounters(k).busy++;
    return -EBUSY;
  }
  let [lo, hi] = mk_pte(pfn, prot);
  if (k.pages.flags[pfn]! & PG_zero) {
    pt.set_pte(ptep, lo | _PAGE_SPECIAL, hi);
    return 0;
  }
  k.pages.getPage(pfn);
  folio_add_file_rmap_pte(k, pfn);
  vma.vm_mm.rss[mm_counter_file(k, pfn)]++;
  updateHiwater(vma.vm_mm);
  pt.set_pte(ptep, lo, hi);
  insertCounters(k).inserted++;
  return 0;
}

/**
 * vm_insert_page: insert a driver page into a user VMA. Checks in Linux's order: the address in
 * the VMA (-EFAULT); VM_MIXEDMAP — if missing, the caller must hold the mmap lock for write
 * (BUG_ON(mmap_read_trylock(mm))) and the VMA must not be VM_PFNMAP (BUG), then VM_MIXEDMAP is
 * set; then the page checks (-EINVAL), page-table allocation (-ENOMEM), an existing PTE (-EBUSY).
 * Success adds one reference and one mapcount and installs a normal (not special) PTE.
 */
export function vm_insert_page(k: Kernel, vma: VmArea, addr: number, pfn: number, caller = 'vm_insert_page'): number {
  if (addr < vma.vm_start || addr >= vma.vm_end) return -EFAULT;
  if (vma.freed) k.bug('BUG: KASAN: use-after-free in vm_insert_page', `vm_insert_page on a freed VMA (${vma}) called from ${caller}`, { vma: vma.id, caller });
  if (!(vma.vm_flags & VM_MIXEDMAP)) {
    const mm = vma.vm_mm;
    // BUG_ON(mmap_read_trylock(vma->vm_mm)): only legal with the mmap lock held for write.
    if (!mm.mmap_lock.heldBy(k.current, 'write')) {
      k.bug(
        'kernel BUG at mm/memory.c: vm_insert_page',
        [
          '------------[ cut here ]------------',
          'kernel BUG at mm/memory.c:2425!',
          `vm_insert_page: VMA without VM_MIXEDMAP (${vma}) and the mmap lock is not held for write (caller ${caller})`,
          'BUG_ON(mmap_read_trylock(vma->vm_mm))',
        ].join('\n'),
        { vma: vma.id, caller, contract: 'vm_insert_page-mixedmap' },
      );
    }
    if (vma.vm_flags & VM_PFNMAP) k.bug('kernel BUG at mm/memory.c: vm_insert_page', `BUG_ON(vma->vm_flags & VM_PFNMAP) in vm_insert_page (caller ${caller})`, { vma: vma.id, caller });
    // The November 2024 review: VM_MIXEDMAP may be set only while the VMA is being set up in
    // ->mmap; setting it on a VMA in use allows states Linux never creates (a userfaultfd
    // context on a VM_MIXEDMAP VMA). Linux permits the call under the write lock; mmulab warns.
    if (!k.vmaNewWindow.isOpen(vma) && mm.inTree(vma)) {
      const uffd = vma.vm_userfaultfd_ctx ? ' that has a userfaultfd context' : '';
      k.warn(
        'WARNING: VM_MIXEDMAP set on a VMA in use',
        `vm_insert_page: ${caller} sets VM_MIXEDMAP on ${vma}${uffd} outside its ->mmap hook (legal contexts: ->mmap, or a VMA that already has VM_MIXEDMAP)`,
        { vma: vma.id, caller, contract: 'mixedmap-change', uffd: vma.vm_userfaultfd_ctx !== null },
      );
    }
    k.vmaOps.vm_flags_set(vma, VM_MIXEDMAP, caller);
  } else if (!k.vmaNewWindow.isOpen(vma) && !k.locks.vmaIsStable(vma)) {
    // Context (1) of the review: an existing VM_MIXEDMAP VMA under the mmap or VMA read lock.
    k.warn(
      'WARNING: vm_insert_page without the mmap lock or the VMA lock',
      `vm_insert_page: ${caller} inserts into ${vma} holding neither the mmap lock nor the VMA read lock (the VMA may be freed or replaced under it)`,
      { vma: vma.id, caller, contract: 'vm_insert_page-lock' },
    );
  }
  const r = insert_page(k, vma, addr, pfn, vm_get_page_prot(vma.vm_flags));
  if (r && r !== -EBUSY) insertCounters(k).errors++;
  return r;
}

/** vmf_insert_page_mkwrite / vmf_insert_page: the fault-handler form, returning VM_FAULT_*. */
export function vmf_insert_page(k: Kernel, vmf: VmFault, pfn: number): number {
  const r = vm_insert_page(k, vmf.vma, vmf.address, pfn, 'vmf_insert_page');
  if (r === -ENOMEM) return VM_FAULT_OOM;
  if (r && r !== -EBUSY) return VM_FAULT_SIGBUS;
  return VM_FAULT_NOPAGE;
}

/**
 * vm_insert_pages: insert `pfns` at consecutive pages from `addr`. Returns [errno, not mapped]
 * like Linux (*num = pages not mapped); partial success stays in place.
 */
export function vm_insert_pages(k: Kernel, vma: VmArea, addr: number, pfns: readonly number[]): [number, number] {
  const end = addr + pfns.length * PAGE_SIZE;
  if (addr < vma.vm_start || end > vma.vm_end || end < addr) return [-EFAULT, pfns.length];
  for (let i = 0; i < pfns.length; i++) {
    const r = vm_insert_page(k, vma, addr + i * PAGE_SIZE, pfns[i]!, 'vm_insert_pages');
    if (r) return [r, pfns.length - i];
  }
  return [0, 0];
}

/** insert_pfn: a special PTE, no reference or mapcount. Existing PTE → left alone (NOPAGE). */
function insert_pfn(k: Kernel, vma: VmArea, addr: number, pfn: number, prot: PgProt): number {
  const pt = pgtableOf(k);
  const ptep = pt.pte_alloc(vma.vm_mm, addr, 'pte_alloc <- insert_pfn');
  if (ptep < 0) return VM_FAULT_OOM;
  if (pt.lo(ptep) & _PAGE_PRESENT) return VM_FAULT_NOPAGE;
  const [lo, hi] = mk_pte(pfn, prot);
  pt.set_pte(ptep, lo | _PAGE_SPECIAL, hi);
  insertCounters(k).pfn++;
  return VM_FAULT_NOPAGE;
}

/**
 * vmf_insert_pfn: from a fault handler of a VM_PFNMAP (or VM_MIXEDMAP) VMA. BUG if neither or
 * both, if PFNMAP on a COW mapping, or MIXEDMAP with a pfn that has a struct page.
 */
export function vmf_insert_pfn(k: Kernel, vma: VmArea, addr: number, pfn: number): number {
  const f = vma.vm_flags;
  if (!(f & (VM_PFNMAP | VM_MIXEDMAP))) k.bug('kernel BUG at mm/memory.c: vmf_insert_pfn_prot', `BUG_ON(!(vma->vm_flags & (VM_PFNMAP|VM_MIXEDMAP))) for ${vma}`, { vma: vma.id });
  if ((f & (VM_PFNMAP | VM_MIXEDMAP)) === (VM_PFNMAP | VM_MIXEDMAP)) k.bug('kernel BUG at mm/memory.c: vmf_insert_pfn_prot', `BUG_ON(VM_PFNMAP and VM_MIXEDMAP both set) for ${vma}`, { vma: vma.id });
  if (f & VM_PFNMAP && is_cow_mapping(f)) k.bug('kernel BUG at mm/memory.c: vmf_insert_pfn_prot', `BUG_ON(VM_PFNMAP on a COW mapping) for ${vma}`, { vma: vma.id });
  if (f & VM_MIXEDMAP && pfn > 0 && pfn < k.pages.nframes && !(k.pages.flags[pfn]! & PG_zero) && k.pages.refcount[pfn]! > 0) {
    k.bug('kernel BUG at mm/memory.c: vmf_insert_pfn_prot', `BUG_ON(vma->vm_flags & VM_MIXEDMAP && pfn_valid(pfn)) for ${vma}: use vmf_insert_page`, { vma: vma.id });
  }
  if (addr < vma.vm_start || addr >= vma.vm_end) return VM_FAULT_SIGBUS;
  return insert_pfn(k, vma, addr, pfn, vm_get_page_prot(f));
}

/**
 * vmf_insert_mixed: on x86 (ARCH_HAS_PTE_SPECIAL) always a special PTE without references, even
 * for pages with a struct page. Requires VM_MIXEDMAP.
 */
export function vmf_insert_mixed(k: Kernel, vma: VmArea, addr: number, pfn: number): number {
  if (!(vma.vm_flags & VM_MIXEDMAP) && pfn !== k.pages.zeroPfn) return VM_FAULT_SIGBUS;
  if (addr < vma.vm_start || addr >= vma.vm_end) return VM_FAULT_SIGBUS;
  return insert_pfn(k, vma, addr, pfn, vm_get_page_prot(vma.vm_flags));
}

/**
 * remap_pfn_range: map a physical range with special PTEs. For a COW mapping the range must be
 * the whole VMA (vm_pgoff becomes the pfn). Sets VM_IO|VM_PFNMAP|VM_DONTEXPAND|VM_DONTDUMP.
 * Every PTE must be none (BUG otherwise); on failure the partial range is zapped.
 */
export function* remap_pfn_range(k: Kernel, vma: VmArea, addr: number, pfn: number, size: number, prot?: PgProt): KGen<number> {
  if (size <= 0 || size % PAGE_SIZE || addr % PAGE_SIZE) return -EINVAL;
  const end = addr + size;
  if (addr < vma.vm_start || end > vma.vm_end) return -EINVAL;
  if (is_cow_mapping(vma.vm_flags)) {
    if (addr !== vma.vm_start || end !== vma.vm_end) return -EINVAL;
    vma.vm_pgoff = pfn;
  }
  vma.vm_flags |= VM_REMAP_FLAGS;
  const pr = prot ?? vm_get_page_prot(vma.vm_flags);
  const pt = pgtableOf(k);
  for (let a = addr, p = pfn; a < end; a += PAGE_SIZE, p++) {
    const ptep = pt.pte_alloc(vma.vm_mm, a, 'pte_alloc <- remap_pfn_range');
    if (ptep < 0) {
      yield* zap_page_range_single(k, vma, addr, a - addr);
      return -ENOMEM;
    }
    if (pt.lo(ptep) & _PAGE_PRESENT) k.bug('kernel BUG at mm/memory.c: remap_pte_range', `BUG_ON(!pte_none(ptep_get(pte))) at ${a.toString(16)}`, { vma: vma.id });
    const [lo, hi] = mk_pte(p, pr);
    pt.set_pte(ptep, lo | _PAGE_SPECIAL, hi);
  }
  return 0;
}

// ==============================================================================================
// fork: copy_page_range
// ==============================================================================================

/** vma_needs_copy: only VMAs whose pages cannot simply be refaulted get their tables copied. */
export function vma_needs_copy(dst: VmArea, src: VmArea): boolean {
  if (dst.vm_flags & (VM_PFNMAP | VM_MIXEDMAP | 0x1000 /* VM_UFFD_WP */ | 0x800 /* VM_MAYBE_GUARD */)) return true;
  return src.anon_vma !== null;
}

/**
 * copy_page_range: share `src`'s pages with the child VMA `dst`. Anonymous pages in COW
 * mappings become read-only in both (reference and mapcount +1); a page that may be pinned
 * (FOLL_PIN) is copied for the child at once instead. File and driver pages get a reference
 * and mapcount; special PTEs are copied as is.
 */
export function copy_page_range(k: Kernel, dst: VmArea, src: VmArea): number {
  if (!vma_needs_copy(dst, src)) return 0;
  const pt = pgtableOf(k);
  const smm = src.vm_mm;
  const dmm = dst.vm_mm;
  const cow = is_cow_mapping(src.vm_flags);
  const p = k.pages;
  let err = 0;
  const leaves: [number, number, number][] = [];
  pt.forEachLeaf(smm, src.vm_start, src.vm_end, (a, e, l) => leaves.push([a, e, l]));
  for (const [addr, sptep, level] of leaves) {
    let lo = pt.lo(sptep);
    const hi = pt.hi(sptep);
    if (!(lo & _PAGE_PRESENT)) continue;
    const dptep = pt.alloc(dmm, addr, level, 'pte_alloc <- copy_pte_range');
    if (dptep < 0) {
      err = -ENOMEM;
      break;
    }
    if (level > 1) {
      // hugetlb: share the huge page (copy_hugetlb_page_range), write-protected for COW.
      const head = p.head(ptePfn(lo, hi));
      p.getPage(head);
      p.mapcount[head]!++;
      if (cow && lo & _PAGE_RW) {
        pt.clear_bits(sptep, _PAGE_RW);
        lo &= ~_PAGE_RW;
      }
      pt.set_pte(dptep, lo, hi);
      dmm.hugetlb_usage += 512;
      continue;
    }
    const pfn = vm_normal_page(k, src, addr, lo, hi);
    if (pfn < 0) {
      pt.set_pte(dptep, childPte(src, lo), hi);
      continue;
    }
    if (isAnon(k, pfn)) {
      if (p.refcount[pfn]! >= 1024) {
        // folio_try_dup_anon_rmap_pte failed (maybe pinned): copy now.
        const copy = p.allocPages(GFP_HIGHUSER_MOVABLE, 0, 'copy_present_page');
        if (copy < 0) {
          err = -ENOMEM;
          break;
        }
        p.copy_highpage(copy, pfn);
        folio_add_new_anon_rmap(k, copy, dst, addr);
        // copy_present_page: maybe_mkwrite(pte_mkdirty(mk_pte(new page))).
        const [nlo, nhi] = mk_pte(copy, vm_get_page_prot(dst.vm_flags));
        pt.set_pte(dptep, nlo | _PAGE_DIRTY | (dst.vm_flags & VM_WRITE ? _PAGE_RW : 0), nhi);
        dmm.rss.anon++;
        continue;
      }
      p.getPage(pfn);
      p.mapcount[pfn]!++;
      p.flags[pfn] &= ~PG_anon_exclusive;
      if (cow && lo & _PAGE_RW) {
        pt.clear_bits(sptep, _PAGE_RW);
        lo &= ~_PAGE_RW;
      }
      pt.set_pte(dptep, childPte(src, lo), hi);
      dmm.rss.anon++;
    } else {
      p.getPage(pfn);
      folio_add_file_rmap_pte(k, pfn);
      if (cow && lo & _PAGE_RW) {
        pt.clear_bits(sptep, _PAGE_RW);
        lo &= ~_PAGE_RW;
      }
      pt.set_pte(dptep, childPte(src, lo), hi);
      dmm.rss[mm_counter_file(k, pfn)]++;
    }
  }
  updateHiwater(dmm);
  return err;
}

/** __copy_present_ptes: the child's entry is old, and clean if the mapping is shared. */
function childPte(src: VmArea, lo: number): number {
  let c = lo & ~_PAGE_ACCESSED;
  if (src.vm_flags & VM_SHARED) c &= ~_PAGE_DIRTY;
  return c;
}

export { EAGAIN, VM_IO };
