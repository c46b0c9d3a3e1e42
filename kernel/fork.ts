/**
 * kernel/fork.ts — address-space lifetime (kernel/fork.c): mm_alloc, dup_mm for fork,
 * mmget/mmget_not_zero/mmput/mmput_async and mmgrab/mmdrop.
 *
 * mm_users counts users of the address space (threads, temporary mmget); mm_count counts
 * references to the struct itself, one of them held on behalf of all users. The last mmput tears
 * the address space down (exit_mmap) and drops that reference; the last mmdrop frees the pgd.
 * A CPU that keeps an mm loaded lazily (a kernel thread or idle after a user task) holds an
 * mm_count reference, so the page tables cannot be freed under it.
 *
 * dup_mm copies every VMA except VM_DONTCOPY ones (VM_WIPEONFORK ones arrive empty), calls
 * ->open on each copy, copies page tables where Linux does (copy_page_range), write-protecting
 * COW pages in parent and child, and flushes the parent's TLB afterwards.
 */

import type { Kernel } from './kernel.ts';
import type { KGen } from './sched/core.ts';
import { AnonVma, MmStruct, VM_DONTCOPY, VM_UFFD_MISSING, VM_UFFD_WP, VM_WIPEONFORK } from './mm/mm_types.ts';
import { copy_page_range } from './mm/memory.ts';
import { exit_mmap } from './mm/mmap.ts';
import { ENOMEM } from './errno.ts';

export interface ForkCounters {
  forks: number;
  vmasCopied: number;
  vmasSkipped: number;
  exits: number;
}

export function forkCounters(k: Kernel): ForkCounters {
  let c = k.subsystems.get('fork') as ForkCounters | undefined;
  if (!c) {
    c = { forks: 0, vmasCopied: 0, vmasSkipped: 0, exits: 0 };
    k.subsystems.set('fork', c);
  }
  return c;
}

/** mm_alloc: a fresh empty address space, or null on ENOMEM. */
export function mm_alloc(k: Kernel): MmStruct | null {
  const mm = new MmStruct(k);
  k.locks.init(mm);
  if (k.pt.pgd_alloc(mm) < 0) {
    // mm_init's failure path: the half-made mm is freed (free_mm), not left among the live ones.
    k.mms.delete(mm);
    return null;
  }
  return mm;
}

/** mmget: one more user (only legal while the caller already holds a user). */
export function mmget(mm: MmStruct): void {
  mm.mm_users++;
}

/** mmget_not_zero: a user reference unless the address space is already going away. */
export function mmget_not_zero(mm: MmStruct): boolean {
  if (mm.mm_users === 0) return false;
  mm.mm_users++;
  return true;
}

export function mmgrab(mm: MmStruct): void {
  mm.mm_count++;
}

/** mmdrop: the last reference frees what is left (the pgd). */
export function mmdrop(k: Kernel, mm: MmStruct): void {
  if (--mm.mm_count > 0) return;
  if (mm.mm_count < 0) {
    k.warn('WARNING: mmdrop of a freed mm', `mm_count of mm ${mm.ctx_id} went negative`, {});
    return;
  }
  if (mm.pgd) {
    k.pt.freeTable(mm, mm.pgd, '__mmdrop <- pgd_free');
    mm.pgd = 0;
  }
  check_mm(k, mm);
  k.mms.delete(mm);
}

const RSS_NAMES = [['file', 'MM_FILEPAGES'], ['anon', 'MM_ANONPAGES'], ['swap', 'MM_SWAPENTS'], ['shmem', 'MM_SHMEMPAGES']] as const;

/** check_mm (kernel/fork.c): counters of a freed mm must all be zero. */
function check_mm(k: Kernel, mm: MmStruct): void {
  for (const [key, name] of RSS_NAMES) {
    const v = mm.rss[key];
    if (v !== 0) k.report({ kind: 'bad-page', title: `BUG: Bad rss-counter state mm:${mm.ctx_id} type:${name} val:${v}`, text: `BUG: Bad rss-counter state mm:${mm.ctx_id} type:${name} val:${v} Comm:${k.current?.comm ?? 'swapper'} Pid:${k.current?.pid ?? 0}`, data: { mm: mm.ctx_id, counter: name, value: v } });
  }
  if (mm.pgtables_bytes !== 0) k.report({ kind: 'bad-page', title: `BUG: non-zero pgtables_bytes on freeing mm: ${mm.pgtables_bytes}`, text: `BUG: non-zero pgtables_bytes on freeing mm: ${mm.pgtables_bytes}`, data: { mm: mm.ctx_id, pgtables_bytes: mm.pgtables_bytes } });
  if (mm.hugetlb_usage !== 0) k.report({ kind: 'bad-page', title: `BUG: non-zero hugetlb_usage on freeing mm: ${mm.hugetlb_usage}`, text: `BUG: non-zero hugetlb_usage on freeing mm: ${mm.hugetlb_usage}`, data: { mm: mm.ctx_id } });
}

/** mmput: drop a user; the last one tears the address space down. */
export function* mmput(k: Kernel, mm: MmStruct): KGen {
  if (mm.mm_users <= 0) {
    k.warn('WARNING: mmput of an mm without users', `mm_users of mm ${mm.ctx_id} is ${mm.mm_users}`, {});
    return;
  }
  if (--mm.mm_users > 0) return;
  yield* exit_mmap(k, mm);
  mmdrop(k, mm);
}

/** mmput_async: like mmput, but a last put is deferred to a worker (safe from atomic context). */
export function mmput_async(k: Kernel, mm: MmStruct): void {
  if (mm.mm_users <= 1) {
    k.workqueue.queue('mmput_async_fn', function* () {
      yield* mmput(k, mm);
    });
    return;
  }
  mm.mm_users--;
}

/** dup_mm: the child's copy of `oldmm`; returns it, or -ENOMEM. */
export function* dup_mm(k: Kernel, oldmm: MmStruct): KGen<MmStruct | number> {
  const mm = mm_alloc(k);
  if (!mm) return -ENOMEM;
  const c = forkCounters(k);
  yield* k.locks.mmap_write_lock(oldmm, 'dup_mmap');
  yield* k.locks.mmap_write_lock(mm, 'dup_mmap');
  let err = 0;
  oldmm.write_protect_seq++;
  for (const vma of oldmm.vmas()) {
    if (vma.vm_flags & VM_DONTCOPY) {
      c.vmasSkipped++;
      continue;
    }
    yield* k.locks.vma_start_write(vma, 'dup_mmap');
    const tmp = k.vmaOps.dup(vma, mm);
    // dup_userfaultfd without UFFD_FEATURE_EVENT_FORK: the child's VMA is not registered.
    if (tmp.vm_userfaultfd_ctx) {
      tmp.vm_userfaultfd_ctx = null;
      tmp.vm_flags = (tmp.vm_flags & ~(VM_UFFD_MISSING | VM_UFFD_WP)) >>> 0;
    }
    if (vma.vm_flags & VM_WIPEONFORK) tmp.anon_vma = null;
    else if (vma.anon_vma) tmp.anon_vma = new AnonVma(k, vma.anon_vma);
    if (tmp.vm_file) tmp.vm_file.get();
    yield* k.vmaOps.link(tmp);
    if (tmp.vm_ops?.open) {
      k.vmaOps.counters.opens++;
      tmp.vm_ops.open(tmp);
    }
    c.vmasCopied++;
    if (!(vma.vm_flags & VM_WIPEONFORK)) {
      err = copy_page_range(k, tmp, vma);
      if (err) break;
    }
  }
  oldmm.write_protect_seq++;
  // The parent's PTEs were write-protected: no TLB may keep a writable copy.
  yield* k.tlb.flush_tlb_mm(oldmm);
  k.locks.mmap_write_unlock(mm);
  k.locks.mmap_write_unlock(oldmm);
  c.forks++;
  if (err) {
    yield* mmput(k, mm);
    return err;
  }
  return mm;
}
