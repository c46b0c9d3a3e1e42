/**
 * kernel/mm/gup.ts — get_user_pages and friends (mm/gup.c): taking references on the pages
 * behind user addresses, for I/O, pipes and drivers.
 *
 *   get_user_pages_fast / pin_user_pages_fast   lockless walk of current->mm's page tables; no
 *       VMA is looked at, so special PTEs (PFN maps, vmf_insert_pfn/mixed, remap_pfn_range, the
 *       zero page) are its only guard: it stops at the first entry it cannot take (not present,
 *       not user-accessible, not writable for FOLL_WRITE, special, a shared anonymous page a
 *       read-only pin would have to unshare) and hands the rest to the slow path, unless
 *       FOLL_FAST_ONLY. Linux runs this walk with interrupts off so no shootdown IPI and no
 *       table free can overtake it; in mmulab the walk runs without yielding, which gives the
 *       same guarantee.
 *   get_user_pages_remote / get_user_pages / pin_user_pages(_remote)   the slow path
 *       (__get_user_pages): the caller holds the mmap lock; per page the VMA is checked
 *       (check_vma_flags: VM_IO|VM_PFNMAP → -EFAULT, FOLL_WRITE on a read-only VMA needs
 *       FOLL_FORCE and a COW mapping, …), follow_page_pte looks at the entry, and a missing or
 *       insufficient entry is faulted in (faultin_page, refused with -EFAULT under
 *       FOLL_NOFAULT). A special entry gives -EFAULT when a page reference is wanted. An
 *       address below a VM_GROWSDOWN VMA is -EFAULT: as since Linux 6.5 (gup_vma_lookup), GUP
 *       does not grow a stack, only a page fault does (lock_mm_and_find_vma).
 *   put_page / unpin_user_page(s)   release.
 *   __mm_populate / populate_vma_page_range   the slow path without references, to fault a
 *       range in (MAP_POPULATE, MAP_LOCKED, a locked private VMA made writable).
 *
 * References: FOLL_GET adds one; FOLL_PIN adds GUP_PIN_COUNTING_BIAS (order-0) or one (large
 * folio) and sets MMF_HAS_PINNED. Every reference is recorded in the caller's PageRefs (the
 * `pages` array of Linux), which the invariant checker counts. The zero page is returned
 * without a reference (Linux never pins it, and its refcount is irrelevant).
 *
 * Deviations: no FOLL_LONGTERM migration out of movable zones (there are no zones); no
 * fatal-signal checks between pages; hugetlb leaves are returned as the subpage of the folio;
 * gup_vma_lookup's rate-limited "GUP no longer grows the stack" message is not printed.
 */

import type { Kernel } from '../kernel.ts';
import type { KGen } from '../sched/core.ts';
import {
  FAULT_FLAG_ALLOW_RETRY, FAULT_FLAG_KILLABLE, FAULT_FLAG_REMOTE, FAULT_FLAG_RETRY_NOWAIT, FAULT_FLAG_TRIED, FAULT_FLAG_UNSHARE, FAULT_FLAG_WRITE,
  PAGE_SIZE, TASK_SIZE, VM_FAULT_COMPLETED, VM_FAULT_ERROR, VM_FAULT_HWPOISON, VM_FAULT_OOM, VM_FAULT_RETRY, VM_FAULT_SIGBUS, VM_FAULT_SIGSEGV,
  VM_ACCESS_FLAGS, VM_HUGETLB, VM_IO, VM_LOCKONFAULT, VM_MAYREAD, VM_PFNMAP, VM_READ, VM_SHARED, VM_WRITE, is_cow_mapping, type MmStruct, type VmArea,
} from './mm_types.ts';
import { PG_anon, PG_anon_exclusive, PG_dirty, PG_referenced, PG_zero } from './page_alloc.ts';
import { _PAGE_ACCESSED, _PAGE_DIRTY, _PAGE_PRESENT, _PAGE_PSE, _PAGE_RW, _PAGE_SPECIAL, _PAGE_USER, entryTable, index, ptePfn } from '../arch/x86/pgtable.ts';
import { handle_mm_fault } from './memory.ts';
import { EBUSY, EEXIST, EFAULT, EINVAL, ENOMEM, EOVERFLOW } from '../errno.ts';
import { PageRefs } from './page_ref.ts';

// enum in include/linux/mm_types.h (public flags) and mm/internal.h (internal ones).
export const FOLL_WRITE = 1 << 0;
export const FOLL_GET = 1 << 1;
export const FOLL_DUMP = 1 << 2;
export const FOLL_FORCE = 1 << 3;
export const FOLL_NOWAIT = 1 << 4;
export const FOLL_NOFAULT = 1 << 5;
export const FOLL_HWPOISON = 1 << 6;
export const FOLL_ANON = 1 << 7;
export const FOLL_LONGTERM = 1 << 8;
export const FOLL_SPLIT_PMD = 1 << 9;
export const FOLL_PCI_P2PDMA = 1 << 10;
export const FOLL_INTERRUPTIBLE = 1 << 11;
export const FOLL_HONOR_NUMA_FAULT = 1 << 12;
export const FOLL_TOUCH = 1 << 16;
export const FOLL_TRIED = 1 << 17;
export const FOLL_REMOTE = 1 << 18;
export const FOLL_PIN = 1 << 19;
export const FOLL_FAST_ONLY = 1 << 20;
export const FOLL_UNLOCKABLE = 1 << 21;

/** MMF_HAS_PINNED in mm->flags: fork copies possibly pinned anonymous pages eagerly. */
export const MMF_HAS_PINNED = 1 << 27;

const FAST_ALLOWED = FOLL_WRITE | FOLL_LONGTERM | FOLL_FORCE | FOLL_PIN | FOLL_GET | FOLL_FAST_ONLY | FOLL_NOFAULT | FOLL_PCI_P2PDMA | FOLL_HONOR_NUMA_FAULT;

export interface GupCounters {
  /** Pages taken by the lockless walk. */
  fastPages: number;
  /** Lockless walks that stopped early, by reason. */
  fastBail: Record<string, number>;
  /** Pages taken by the slow path. */
  slowPages: number;
  /** Faults the slow path raised. */
  faults: number;
  pins: number;
  unpins: number;
}

export function gupCounters(k: Kernel): GupCounters {
  let c = k.subsystems.get('gup') as GupCounters | undefined;
  if (!c) {
    c = { fastPages: 0, fastBail: {}, slowPages: 0, faults: 0, pins: 0, unpins: 0 };
    k.subsystems.set('gup', c);
  }
  return c;
}

/** A leaf entry: its physical address and level (1 PTE, 2 PMD, 3 PUD), or null if none is present. */
function leafOf(k: Kernel, mm: MmStruct, addr: number): { ptep: number; level: number } | null {
  const pt = k.pt;
  let table = mm.pgd;
  for (let l = pt.levels; l >= 1; l--) {
    const e = table + index(addr, 12 + 9 * (l - 1)) * 8;
    const lo = pt.lo(e);
    if ((lo & _PAGE_PRESENT) === 0) return null;
    if (l === 1 || (l <= 3 && (lo & _PAGE_PSE) !== 0)) return { ptep: e, level: l };
    table = entryTable(lo, pt.hi(e));
  }
  return null;
}

/** The page of `addr` inside a leaf of `level` whose entry maps `pfn`. */
function subpage(pfn: number, addr: number, level: number): number {
  if (level === 1) return pfn;
  const span = level === 2 ? 512 : 512 * 512;
  return pfn + (Math.floor(addr / PAGE_SIZE) % span);
}

/** gup_must_unshare: a read-only pin of an anonymous page that is not exclusive must copy it first. */
function mustUnshare(k: Kernel, flags: number, pfn: number): boolean {
  if (!(flags & FOLL_PIN) || flags & FOLL_WRITE) return false;
  const f = k.pages.flags[k.pages.head(pfn)]!;
  return (f & PG_anon) !== 0 && (f & PG_anon_exclusive) === 0;
}

/** try_grab_folio: take the reference GUP promises (none for the zero page). */
function grab(k: Kernel, pfn: number, flags: number, pages: PageRefs): void {
  const p = k.pages;
  if (p.flags[pfn]! & PG_zero) return;
  const head = p.head(pfn);
  if (flags & FOLL_PIN) {
    const w = pages.pinWeight(pfn);
    p.refcount[head] = p.refcount[head]! + w;
    pages.notePin(pfn);
    gupCounters(k).pins++;
  } else {
    p.getPage(head);
    pages.noteGet(pfn);
  }
}

/** Mark a page used as GUP's FOLL_TOUCH does (young, and dirty for writes). */
function touch(k: Kernel, ptep: number, pfn: number, write: boolean): void {
  k.pt.set_bits(ptep, _PAGE_ACCESSED | (write ? _PAGE_DIRTY : 0));
  const head = k.pages.head(pfn);
  k.pages.flags[head] |= PG_referenced | (write ? PG_dirty : 0);
}

// ==============================================================================================
// GUP-fast
// ==============================================================================================

/**
 * gup_fast: take pages from `start` without locks, stopping at the first one that needs the
 * slow path. Returns the number taken (their pfns appended to `out`).
 */
function gup_fast(k: Kernel, mm: MmStruct, start: number, nr: number, flags: number, pages: PageRefs, out: number[]): number {
  const c = gupCounters(k);
  const bail = (why: string): void => {
    c.fastBail[why] = (c.fastBail[why] ?? 0) + 1;
  };
  // A pin must not race with fork's copy_page_range (write_protect_seq odd).
  if (flags & FOLL_PIN && mm.write_protect_seq & 1) {
    bail('fork in progress');
    return 0;
  }
  const write = (flags & FOLL_WRITE) !== 0;
  let n = 0;
  for (let i = 0; i < nr; i++) {
    const addr = start + i * PAGE_SIZE;
    const leaf = leafOf(k, mm, addr);
    if (!leaf) {
      bail('not present');
      break;
    }
    const lo = k.pt.lo(leaf.ptep);
    const hi = k.pt.hi(leaf.ptep);
    // pte_access_permitted: present, user, and writable when writing (a PROT_NONE entry lacks U/S).
    if (!(lo & _PAGE_USER) || (write && !(lo & _PAGE_RW))) {
      bail('access not permitted');
      break;
    }
    if (lo & _PAGE_SPECIAL) {
      bail('special entry');
      break;
    }
    const pfn = subpage(ptePfn(lo, hi), addr, leaf.level);
    if (pfn >= k.pages.nframes || k.pages.refcount[k.pages.head(pfn)]! <= 0) {
      bail('no reference to take');
      break;
    }
    if (mustUnshare(k, flags, pfn)) {
      bail('must unshare');
      break;
    }
    grab(k, pfn, flags, pages);
    k.pages.flags[k.pages.head(pfn)] |= PG_referenced;
    out.push(pfn);
    n++;
  }
  c.fastPages += n;
  k.charge(k.costs.misc + n * k.costs.lock);
  return n;
}

function checkRange(start: number, nr: number): number {
  if (!Number.isSafeInteger(start) || start < 0 || start % PAGE_SIZE) return -EINVAL;
  if (!Number.isSafeInteger(nr) || nr < 0) return -EINVAL;
  const end = start + nr * PAGE_SIZE;
  if (!Number.isSafeInteger(end)) return -EOVERFLOW;
  if (end > TASK_SIZE) return -EFAULT;
  return 0;
}

/**
 * gup_fast_fallback: the lockless walk, then the slow path under the mmap read lock for the
 * rest (unless FOLL_FAST_ONLY). Returns the number of pages taken (pfns in `out`) or -errno if
 * none could be.
 */
function* gup_fast_fallback(k: Kernel, start: number, nr: number, flags: number, pages: PageRefs, out: number[]): KGen<number> {
  if (flags & ~FAST_ALLOWED) return -EINVAL;
  const mm = k.current?.mm;
  if (!mm) return -EFAULT;
  const bad = checkRange(start, nr);
  if (bad) return bad;
  if (flags & FOLL_PIN) mm.flags |= MMF_HAS_PINNED;
  const got = gup_fast(k, mm, start, nr, flags, pages, out);
  if (got === nr || flags & FOLL_FAST_ONLY) return got;
  const rest = yield* __gup_longterm_unlocked(k, mm, start + got * PAGE_SIZE, nr - got, flags | FOLL_TOUCH | FOLL_UNLOCKABLE, pages, out);
  if (rest < 0) return got > 0 ? got : rest;
  return got + rest;
}

/** get_user_pages_fast: FOLL_GET references on current->mm's pages. */
export function* get_user_pages_fast(k: Kernel, start: number, nr: number, gup_flags: number, pages: PageRefs, out: number[]): KGen<number> {
  if (gup_flags & FOLL_PIN) return -EINVAL;
  return yield* gup_fast_fallback(k, start, nr, gup_flags | FOLL_GET, pages, out);
}

/** get_user_pages_fast_only: the lockless walk alone. */
export function get_user_pages_fast_only(k: Kernel, start: number, nr: number, gup_flags: number, pages: PageRefs, out: number[]): number {
  const mm = k.current?.mm;
  if (!mm || checkRange(start, nr) || gup_flags & FOLL_PIN) return 0;
  return gup_fast(k, mm, start, nr, gup_flags | FOLL_GET | FOLL_FAST_ONLY, pages, out);
}

/** pin_user_pages_fast: FOLL_PIN pins on current->mm's pages. */
export function* pin_user_pages_fast(k: Kernel, start: number, nr: number, gup_flags: number, pages: PageRefs, out: number[]): KGen<number> {
  if (gup_flags & FOLL_GET) return -EINVAL;
  return yield* gup_fast_fallback(k, start, nr, gup_flags | FOLL_PIN, pages, out);
}

// ==============================================================================================
// The slow path
// ==============================================================================================

/** check_vma_flags: may GUP use this VMA at all? 0 or -errno. */
export function check_vma_flags(vma: VmArea, gup_flags: number): number {
  const f = vma.vm_flags;
  const write = (gup_flags & FOLL_WRITE) !== 0;
  if (f & (VM_IO | VM_PFNMAP)) return -EFAULT;
  if (gup_flags & FOLL_ANON && !vma.isAnonymous()) return -EFAULT;
  if (write) {
    if (!(f & VM_WRITE)) {
      if (!(gup_flags & FOLL_FORCE)) return -EFAULT;
      if (f & VM_HUGETLB) return -EFAULT;
      if (!is_cow_mapping(f)) return -EFAULT;
    }
  } else if (!(f & VM_READ)) {
    if (!(gup_flags & FOLL_FORCE)) return -EFAULT;
    if (!(f & VM_MAYREAD)) return -EFAULT;
  }
  return 0;
}

/** What follow_page_pte found: a pfn, 'fault' (fault it in), 'unshare', or -errno. */
type Follow = number | 'fault' | 'unshare';

/** can_follow_write_pte: FOLL_FORCE may write through a read-only PTE of an exclusive COW copy. */
function canFollowWrite(k: Kernel, lo: number, pfn: number, vma: VmArea, flags: number): boolean {
  if (lo & _PAGE_RW) return true;
  if (!(flags & FOLL_FORCE)) return false;
  if (vma.vm_flags & VM_WRITE || !is_cow_mapping(vma.vm_flags)) return false;
  const f = k.pages.flags[pfn]!;
  return (f & PG_anon) !== 0 && (f & PG_anon_exclusive) !== 0;
}

/** follow_page_mask for one address; takes the reference on success. */
function follow_page(k: Kernel, vma: VmArea, addr: number, flags: number, pages: PageRefs): Follow {
  const leaf = leafOf(k, vma.vm_mm, addr);
  if (!leaf) return 'fault';
  const pt = k.pt;
  const lo = pt.lo(leaf.ptep);
  const hi = pt.hi(leaf.ptep);
  // A PROT_NONE entry (no user bit here, _PAGE_PROTNONE in Linux): gup_can_follow_protnone
  // lets GUP read it unless the caller honours NUMA hinting faults (check_vma_flags already
  // required FOLL_FORCE and VM_MAYREAD for a VMA without VM_READ).
  if (!(lo & _PAGE_USER) && flags & FOLL_HONOR_NUMA_FAULT) return -EFAULT;
  const base = ptePfn(lo, hi);
  const write = (flags & FOLL_WRITE) !== 0;
  if (lo & _PAGE_SPECIAL) {
    if (flags & FOLL_DUMP) return -EFAULT;
    if (base === k.pages.zeroPfn) {
      if (write) return 'fault';
      out_touch(k, leaf.ptep, flags, false);
      return base;
    }
    // follow_pfn_pte: no struct page to take a reference on.
    if (flags & (FOLL_GET | FOLL_PIN)) return -EFAULT;
    return -EEXIST;
  }
  const pfn = subpage(base, addr, leaf.level);
  if (pfn >= k.pages.nframes) return -EFAULT;
  if (write && !canFollowWrite(k, lo, k.pages.head(pfn), vma, flags)) return 'fault';
  if (mustUnshare(k, flags, pfn)) return 'unshare';
  if (flags & (FOLL_GET | FOLL_PIN)) grab(k, pfn, flags, pages);
  if (flags & FOLL_TOUCH) touch(k, leaf.ptep, pfn, write);
  return pfn;
}

function out_touch(k: Kernel, ptep: number, flags: number, write: boolean): void {
  if (flags & FOLL_TOUCH) k.pt.set_bits(ptep, _PAGE_ACCESSED | (write ? _PAGE_DIRTY : 0));
}

/** vm_fault_to_errno. */
function vm_fault_to_errno(fault: number): number {
  if (fault & VM_FAULT_OOM) return -ENOMEM;
  if (fault & (VM_FAULT_SIGBUS | VM_FAULT_SIGSEGV | VM_FAULT_HWPOISON)) return -EFAULT;
  return 0;
}

/**
 * faultin_page: 0 to retry the lookup, -EBUSY when the fault dropped the mmap lock (`locked`
 * is then cleared), or -errno.
 */
function* faultin_page(k: Kernel, vma: VmArea, addr: number, flags: number, unshare: boolean, locked: { value: boolean }): KGen<number> {
  if (flags & FOLL_NOFAULT) return -EFAULT;
  let ff = 0;
  if (flags & FOLL_WRITE) ff |= FAULT_FLAG_WRITE;
  if (flags & FOLL_REMOTE) ff |= FAULT_FLAG_REMOTE;
  if (flags & FOLL_UNLOCKABLE) ff |= FAULT_FLAG_ALLOW_RETRY | FAULT_FLAG_KILLABLE;
  if (flags & FOLL_NOWAIT) ff |= FAULT_FLAG_ALLOW_RETRY | FAULT_FLAG_RETRY_NOWAIT;
  if (flags & FOLL_TRIED) ff |= FAULT_FLAG_TRIED;
  if (unshare) ff |= FAULT_FLAG_UNSHARE;
  gupCounters(k).faults++;
  const ret = yield* handle_mm_fault(k, vma, addr, ff);
  if (ret & VM_FAULT_COMPLETED) {
    locked.value = false;
    return -EBUSY;
  }
  if (ret & VM_FAULT_ERROR) {
    const err = vm_fault_to_errno(ret);
    if (err) return err;
  }
  if (ret & VM_FAULT_RETRY) {
    if (!(ff & FAULT_FLAG_RETRY_NOWAIT)) locked.value = false;
    return -EBUSY;
  }
  return 0;
}

/**
 * __get_user_pages: the per-page loop, with the mmap lock held on entry. Returns the number of
 * pages taken, or -errno if none; stops early (returning the count so far) on an error or
 * when a fault dropped the lock (`locked.value` false).
 */
function* __get_user_pages(k: Kernel, mm: MmStruct, start: number, nr: number, flags: number, pages: PageRefs, out: number[], locked: { value: boolean }): KGen<number> {
  let vma: VmArea | null = null;
  let i = 0;
  let ret = 0;
  let faultedAt = -1;
  while (i < nr) {
    const addr = start + i * PAGE_SIZE;
    if (!vma || addr >= vma.vm_end) {
      vma = mm.vma_lookup(addr);
      if (!vma) {
        ret = -EFAULT;
        break;
      }
      ret = check_vma_flags(vma, flags);
      if (ret) break;
    }
    const r = follow_page(k, vma, addr, flags, pages);
    if (r === 'fault' || r === 'unshare') {
      if (faultedAt === addr) {
        // The fault succeeded but the entry still does not allow the access.
        ret = -EFAULT;
        break;
      }
      ret = yield* faultin_page(k, vma, addr, flags, r === 'unshare', locked);
      faultedAt = addr;
      if (ret === 0) continue; // look again
      if (ret === -EBUSY) ret = 0;
      break;
    }
    if (r === -EEXIST) {
      // An entry without a struct page: an error only if the caller wanted the page.
      if (flags & (FOLL_GET | FOLL_PIN)) {
        ret = -EEXIST;
        break;
      }
      out.push(-1);
      i++;
      continue;
    }
    if (r < 0) {
      ret = r;
      break;
    }
    out.push(r);
    i++;
  }
  gupCounters(k).slowPages += i;
  k.charge(k.costs.misc + i * (k.costs.lock + k.costs.faultHandler / 4));
  return i > 0 ? i : ret;
}

/**
 * __get_user_pages_locked: __get_user_pages, re-taking the mmap lock and retrying (FOLL_TRIED)
 * where a fault dropped it. `locked.value` says whether the caller holds the lock, before and
 * after.
 */
function* __get_user_pages_locked(k: Kernel, mm: MmStruct, start: number, nr: number, flags: number, pages: PageRefs, out: number[], locked: { value: boolean }): KGen<number> {
  let mustUnlock = false;
  if (!locked.value) {
    yield* k.locks.mmap_read_lock(mm, '__get_user_pages_locked');
    locked.value = true;
    mustUnlock = true;
  }
  if (flags & FOLL_PIN) mm.flags |= MMF_HAS_PINNED;
  let done = 0;
  let result = 0;
  for (let tries = 0; done < nr; tries++) {
    const r = yield* __get_user_pages(k, mm, start + done * PAGE_SIZE, nr - done, flags | (tries > 0 ? FOLL_TRIED : 0), pages, out, locked);
    if (r < 0) {
      result = r;
      break;
    }
    done += r;
    if (locked.value) {
      if (r === 0) break;
      continue;
    }
    // The lock was dropped by a fault: only callers that allow it get here (FOLL_UNLOCKABLE).
    if (!(flags & FOLL_UNLOCKABLE) || tries > 64) break;
    yield* k.locks.mmap_read_lock(mm, '__get_user_pages_locked (retry)');
    locked.value = true;
  }
  if (mustUnlock && locked.value) {
    k.locks.mmap_read_unlock(mm);
    locked.value = false;
  }
  if (done === 0 && result === 0) {
    // 0 pages and no error is a bug in Linux too (WARN in __get_user_pages_locked).
    return -EFAULT;
  }
  return done > 0 ? done : result;
}

/** The slow path for gup_fast_fallback: take the lock ourselves. */
function* __gup_longterm_unlocked(k: Kernel, mm: MmStruct, start: number, nr: number, flags: number, pages: PageRefs, out: number[]): KGen<number> {
  const locked = { value: false };
  return yield* __get_user_pages_locked(k, mm, start, nr, flags, pages, out, locked);
}

function assertGupArgs(k: Kernel, flags: number, caller: string): boolean {
  // is_valid_gup_args: FOLL_GET and FOLL_PIN are exclusive; FOLL_LONGTERM needs FOLL_PIN.
  if ((flags & (FOLL_GET | FOLL_PIN)) === (FOLL_GET | FOLL_PIN) || (flags & FOLL_LONGTERM && !(flags & FOLL_PIN))) {
    k.warn('WARNING: invalid GUP flags', `${caller}: is_valid_gup_args refused gup_flags 0x${flags.toString(16)}`, { flags, caller });
    return false;
  }
  return true;
}

/**
 * get_user_pages_remote: pages of `mm` (any process); the caller holds its mmap lock (read or
 * write). With `locked`, the lock may be dropped by a fault (FOLL_UNLOCKABLE) and re-taken;
 * `locked.value` tells the caller whether it still holds it.
 */
export function* get_user_pages_remote(k: Kernel, mm: MmStruct, start: number, nr: number, gup_flags: number, pages: PageRefs, out: number[], locked?: { value: boolean }): KGen<number> {
  if (!assertGupArgs(k, gup_flags | FOLL_GET, 'get_user_pages_remote')) return -EINVAL;
  const bad = checkRange(start, nr);
  if (bad) return bad;
  k.locks.mmap_assert_locked(mm, 'get_user_pages_remote');
  const lk = locked ?? { value: true };
  const flags = gup_flags | FOLL_GET | FOLL_TOUCH | FOLL_REMOTE | (locked ? FOLL_UNLOCKABLE : 0);
  return yield* __get_user_pages_locked(k, mm, start, nr, flags, pages, out, lk);
}

/** get_user_pages: current->mm, the caller holds its mmap lock. */
export function* get_user_pages(k: Kernel, start: number, nr: number, gup_flags: number, pages: PageRefs, out: number[]): KGen<number> {
  const mm = k.current?.mm;
  if (!mm) return -EFAULT;
  if (!assertGupArgs(k, gup_flags | FOLL_GET, 'get_user_pages')) return -EINVAL;
  const bad = checkRange(start, nr);
  if (bad) return bad;
  k.locks.mmap_assert_locked(mm, 'get_user_pages');
  return yield* __get_user_pages_locked(k, mm, start, nr, gup_flags | FOLL_GET | FOLL_TOUCH, pages, out, { value: true });
}

/** pin_user_pages_remote: FOLL_PIN pins in `mm`, the caller holds its mmap lock. */
export function* pin_user_pages_remote(k: Kernel, mm: MmStruct, start: number, nr: number, gup_flags: number, pages: PageRefs, out: number[]): KGen<number> {
  if (!assertGupArgs(k, gup_flags | FOLL_PIN, 'pin_user_pages_remote')) return -EINVAL;
  const bad = checkRange(start, nr);
  if (bad) return bad;
  k.locks.mmap_assert_locked(mm, 'pin_user_pages_remote');
  return yield* __get_user_pages_locked(k, mm, start, nr, gup_flags | FOLL_PIN | FOLL_TOUCH | FOLL_REMOTE, pages, out, { value: true });
}

/** pin_user_pages: current->mm, the caller holds its mmap lock. */
export function* pin_user_pages(k: Kernel, start: number, nr: number, gup_flags: number, pages: PageRefs, out: number[]): KGen<number> {
  const mm = k.current?.mm;
  if (!mm) return -EFAULT;
  if (!assertGupArgs(k, gup_flags | FOLL_PIN, 'pin_user_pages')) return -EINVAL;
  const bad = checkRange(start, nr);
  if (bad) return bad;
  k.locks.mmap_assert_locked(mm, 'pin_user_pages');
  return yield* __get_user_pages_locked(k, mm, start, nr, gup_flags | FOLL_PIN | FOLL_TOUCH, pages, out, { value: true });
}

/** get_user_pages_unlocked: takes and drops the mmap lock itself. */
export function* get_user_pages_unlocked(k: Kernel, start: number, nr: number, gup_flags: number, pages: PageRefs, out: number[]): KGen<number> {
  const mm = k.current?.mm;
  if (!mm) return -EFAULT;
  const bad = checkRange(start, nr);
  if (bad) return bad;
  return yield* __get_user_pages_locked(k, mm, start, nr, gup_flags | FOLL_GET | FOLL_TOUCH | FOLL_UNLOCKABLE, pages, out, { value: false });
}

// ==============================================================================================
// Populating (MAP_POPULATE, MAP_LOCKED, mprotect of a locked private VMA)
// ==============================================================================================

/**
 * populate_vma_page_range: fault [start, end) of `vma` in through __get_user_pages without taking
 * references (Linux passes pages == NULL). A VM_LOCKONFAULT VMA is left alone (reported as done)
 * and an inaccessible one is -EFAULT. Private writable VMAs get write faults, to break COW;
 * anything else read faults with FOLL_FORCE, so a shared mapping is not dirtied for nothing.
 * With `locked` (__mm_populate) a fault may drop the mmap read lock (FOLL_UNLOCKABLE,
 * `locked.value` then false); without it (mprotect_fixup, under the write lock) it may not.
 * Returns the number of pages done or -errno.
 */
export function* populate_vma_page_range(k: Kernel, vma: VmArea, start: number, end: number, locked: { value: boolean } | null): KGen<number> {
  const nr = (end - start) / PAGE_SIZE;
  if (vma.vm_flags & VM_LOCKONFAULT) return nr;
  if (!(vma.vm_flags & VM_ACCESS_FLAGS)) return -EFAULT;
  let flags = FOLL_TOUCH;
  flags |= (vma.vm_flags & (VM_WRITE | VM_SHARED)) === VM_WRITE ? FOLL_WRITE : FOLL_FORCE;
  if (locked) flags |= FOLL_UNLOCKABLE;
  const refs = new PageRefs(k, 'populate_vma_page_range');
  return yield* __get_user_pages(k, vma.vm_mm, start, nr, flags, refs, [], locked ?? { value: true });
}

/**
 * __mm_populate: fault in [start, start + len) of `mm` VMA by VMA under the mmap read lock,
 * which it takes (and takes again when a fault dropped it). VM_IO and VM_PFNMAP VMAs are
 * skipped; with `ignoreErrors` a VMA that fails is skipped too. Returns 0 or -errno.
 */
export function* __mm_populate(k: Kernel, mm: MmStruct, start: number, len: number, ignoreErrors: boolean): KGen<number> {
  const end = start + len;
  const locked = { value: false };
  let vma: VmArea | null = null;
  let ret = 0;
  let nend: number;
  for (let nstart = start; nstart < end; nstart = nend) {
    // find_vma_intersection
    const intersect = (from: number): VmArea | null => {
      const v = mm.find_vma(from);
      return v && v.vm_start < end ? v : null;
    };
    if (!locked.value) {
      yield* k.locks.mmap_read_lock(mm, '__mm_populate');
      locked.value = true;
      vma = intersect(nstart);
    } else if (nstart >= vma!.vm_end) {
      vma = intersect(vma!.vm_end);
    }
    if (!vma) break;
    nend = Math.min(end, vma.vm_end);
    if (vma.vm_flags & (VM_IO | VM_PFNMAP)) continue;
    if (nstart < vma.vm_start) nstart = vma.vm_start;
    const r = yield* populate_vma_page_range(k, vma, nstart, nend, locked);
    if (r < 0) {
      if (ignoreErrors) {
        ret = 0;
        continue; // at the next VMA
      }
      ret = r;
      break;
    }
    nend = nstart + r * PAGE_SIZE;
    ret = 0;
  }
  if (locked.value) k.locks.mmap_read_unlock(mm);
  return ret;
}

/** mm_populate: what mmap(2) runs after dropping the mmap lock for MAP_POPULATE or VM_LOCKED. */
export function* mm_populate(k: Kernel, mm: MmStruct, addr: number, len: number): KGen {
  yield* __mm_populate(k, mm, addr, len, true);
}

// ==============================================================================================
// Release
// ==============================================================================================

/** put_page for a reference recorded in `pages`. A reference the holder does not have is a WARN. */
export function put_page(k: Kernel, pages: PageRefs, pfn: number, site = 'put_page'): void {
  if (pfn >= 0 && pfn < k.pages.nframes && k.pages.flags[pfn]! & PG_zero) return;
  if (!pages.dropGet(pfn)) {
    k.warn('WARNING: put_page of a reference not held', `${site}: ${pages.holderName} holds no reference on pfn 0x${pfn.toString(16)}`, { pfn, holder: pages.holderName });
    return;
  }
  k.pages.putPage(pfn, site);
}

/** unpin_user_page: drop one FOLL_PIN pin. */
export function unpin_user_page(k: Kernel, pages: PageRefs, pfn: number, dirty = false): void {
  const p = k.pages;
  if (pfn >= 0 && pfn < p.nframes && p.flags[pfn]! & PG_zero) return;
  const w = pages.pinWeight(pfn);
  if (!pages.dropPin(pfn)) {
    k.warn('WARNING: unpin of a page that is not pinned', `unpin_user_page: ${pages.holderName} holds no pin on pfn 0x${pfn.toString(16)}`, { pfn, holder: pages.holderName });
    return;
  }
  const head = p.head(pfn);
  if (dirty) p.flags[head] |= PG_dirty;
  gupCounters(k).unpins++;
  // Drop the bias in one step, the last reference through the allocator (which frees).
  p.refcount[head] = p.refcount[head]! - (w - 1);
  p.putPage(head, 'unpin_user_page');
}

/** unpin_user_pages_dirty_lock / unpin_user_pages. */
export function unpin_user_pages(k: Kernel, pages: PageRefs, pfns: readonly number[], dirty = false): void {
  for (const pfn of pfns) unpin_user_page(k, pages, pfn, dirty);
}

/** folio_maybe_dma_pinned: could this page be pinned (refcount at or above the bias)? */
export function folio_maybe_dma_pinned(k: Kernel, pfn: number): boolean {
  const head = k.pages.head(pfn);
  return k.pages.orderOf(head) === 0 ? k.pages.refcount[head]! >= 1024 : false;
}
