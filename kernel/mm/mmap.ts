/**
 * kernel/mm/mmap.ts — mmap, munmap and address-space teardown (mm/mmap.c, the mapping half of
 * mm/vma.c: __mmap_region, do_vmi_munmap, unmap_region, exit_mmap).
 *
 * mmap: argument checks with Linux's errno, in do_mmap's order; flags → VM_* (calc_vm_prot_bits,
 * calc_vm_flag_bits); get_unmapped_area (top down from mmap_base, hints masked to their page,
 * raised to mmap_min_addr and honoured when free, both keeping out of the stack_guard_gap below
 * a VM_GROWSDOWN VMA (vm_start_gap), MAP_FIXED replacing what was there,
 * MAP_FIXED_NOREPLACE refusing with EEXIST); the mapping type (MAP_SHARED_VALIDATE accepts only
 * LEGACY_MAP_MASK on a file, EOPNOTSUPP otherwise, and is EINVAL for anonymous memory); a merge with a
 * neighbour is tried before any ->mmap hook runs (so a merged mapping never sees ->mmap); a new
 * VMA is handed to the file's ->mmap before it is visible (the Rust API's VmaNew), and a failing
 * hook undoes the mapping; MAP_HUGETLB maps 2 MiB pages.
 *
 * Accounting and locking, as __mmap_prepare and __mmap_complete (mm/vma.c) do them: a private
 * writable mapping without VM_NORESERVE gets VM_ACCOUNT (accountable_mapping) — but never a
 * hugetlb one, whose memory hugetlbfs reserves itself. MAP_LOCKED sets VM_LOCKED; once the VMA is
 * in place, VM_LOCKED_MASK is cleared again if the VMA is VM_SPECIAL (VM_IO, VM_DONTEXPAND,
 * VM_PFNMAP, VM_MIXEDMAP, whether from the flags or from the driver's ->mmap) or hugetlb, and
 * otherwise its pages count in mm->locked_vm (MmStruct.locked_vm, VmLck). do_mmap then asks for
 * the range to be populated when the mapping was requested VM_LOCKED (even if that was cleared
 * again) or with MAP_POPULATE without MAP_NONBLOCK; the caller (vm_mmap_pgoff, kernel/uapi.ts)
 * drops the mmap write lock first and runs mm_populate (kernel/mm/gup.ts) under the read lock.
 *
 * Deviations: MAP_HUGETLB maps anonymous memory only (no hugetlbfs files: VM_HUGETLB stands for
 * "the file is hugetlbfs" where Linux asks is_file_hugepages); no file has FOP_MMAP_SYNC, so
 * MAP_SYNC is always refused by MAP_SHARED_VALIDATE; no overcommit accounting (VM_ACCOUNT is
 * set and kept as Linux keeps it, but no vm_committed_as is charged, so security_vm_enough_memory
 * never fails); no RLIMIT_MEMLOCK (can_do_mlock and mlock_future_ok pass, as for a task with
 * CAP_IPC_LOCK), and no PG_mlocked/unevictable state on the pages of a VM_LOCKED VMA. The
 * kernel is configured without CONFIG_MEM_SOFT_DIRTY (mm/Kconfig: default n; VM_SOFTDIRTY is then
 * 0 in Linux): new VMAs get no VM_SOFTDIRTY and PTEs no _PAGE_SOFT_DIRTY, so smaps shows no "sd"
 * and pagemap no bit 55 (task_mmu.ts still reads both, as Linux's pagemap code does).
 *
 * munmap: the first and last VMAs are split, the VMAs in range detached, the mmap lock
 * downgraded to read (as the munmap syscall does), the PTEs zapped and empty page tables freed
 * through one mmu_gather, the TLB flushed, and only then each removed VMA's ->close runs, once.
 */

import type { Kernel } from '../kernel.ts';
import type { KGen } from '../sched/core.ts';
import {
  MMAP_MIN_ADDR, PAGE_SIZE, TASK_SIZE, VM_ACCOUNT, VM_DONTEXPAND, VM_EXEC, VM_GROWSDOWN, VM_HUGETLB, VM_LOCKED, VM_LOCKED_MASK, VM_MAYEXEC, VM_MAYREAD,
  VM_MAYSHARE, VM_MAYWRITE, VM_NORESERVE, VM_READ, VM_SHARED, VM_SPECIAL, VM_WRITE, VmArea, vm_start_gap, type MmStruct,
} from './mm_types.ts';
import { EEXIST, EINVAL, ENODEV, ENOMEM, EOPNOTSUPP, EOVERFLOW, EPERM } from '../errno.ts';
import { MmuGather } from './mmu_gather.ts';
import { zap_range } from './memory.ts';
import type { File } from '../fs/file.ts';
import { shmem_zero_setup } from './shmem.ts';

export const PROT_NONE = 0x0;
export const PROT_READ = 0x1;
export const PROT_WRITE = 0x2;
export const PROT_EXEC = 0x4;
export const PROT_SEM = 0x8;
export const PROT_GROWSDOWN = 0x01000000;
export const PROT_GROWSUP = 0x02000000;

export const MAP_SHARED = 0x01;
export const MAP_PRIVATE = 0x02;
export const MAP_SHARED_VALIDATE = 0x03;
export const MAP_TYPE = 0x0f;
export const MAP_FIXED = 0x10;
export const MAP_ANONYMOUS = 0x20;
export const MAP_GROWSDOWN = 0x0100;
export const MAP_DENYWRITE = 0x0800;
export const MAP_EXECUTABLE = 0x1000;
export const MAP_LOCKED = 0x2000;
export const MAP_NORESERVE = 0x4000;
export const MAP_POPULATE = 0x8000;
export const MAP_NONBLOCK = 0x10000;
export const MAP_STACK = 0x20000;
export const MAP_HUGETLB = 0x40000;
export const MAP_SYNC = 0x80000;
export const MAP_FIXED_NOREPLACE = 0x100000;
/** Flags MAP_SHARED_VALIDATE accepts (LEGACY_MAP_MASK | MAP_SYNC … in Linux). */
const LEGACY_MAP_MASK = MAP_SHARED | MAP_PRIVATE | MAP_FIXED | MAP_ANONYMOUS | MAP_DENYWRITE | MAP_EXECUTABLE | MAP_UNINITIALIZED_() | MAP_GROWSDOWN | MAP_LOCKED | MAP_NORESERVE | MAP_POPULATE | MAP_NONBLOCK | MAP_STACK | MAP_HUGETLB;
function MAP_UNINITIALIZED_(): number {
  return 0x4000000;
}

export const HPAGE_SIZE = 2 << 20;

export interface MmapCounters {
  mmaps: number;
  munmaps: number;
  merged: number;
  hookErrors: number;
}

export function mmapCounters(k: Kernel): MmapCounters {
  let c = k.subsystems.get('mmap') as MmapCounters | undefined;
  if (!c) {
    c = { mmaps: 0, munmaps: 0, merged: 0, hookErrors: 0 };
    k.subsystems.set('mmap', c);
  }
  return c;
}

export function page_align(n: number): number {
  return Math.ceil(n / PAGE_SIZE) * PAGE_SIZE;
}

/** calc_vm_prot_bits | calc_vm_flag_bits | the VM_MAY* defaults of do_mmap. */
export function calc_vm_flags(prot: number, flags: number, file: File | null): number {
  let vm = 0;
  if (prot & PROT_READ) vm |= VM_READ;
  if (prot & PROT_WRITE) vm |= VM_WRITE;
  if (prot & PROT_EXEC) vm |= VM_EXEC;
  vm |= VM_MAYREAD | VM_MAYWRITE | VM_MAYEXEC;
  if (flags & MAP_GROWSDOWN) vm |= VM_GROWSDOWN;
  if (flags & MAP_LOCKED) vm |= VM_LOCKED;
  if ((flags & MAP_TYPE) === MAP_SHARED || (flags & MAP_TYPE) === MAP_SHARED_VALIDATE) vm |= VM_SHARED | VM_MAYSHARE;
  if (flags & MAP_NORESERVE) vm |= VM_NORESERVE;
  if (flags & MAP_HUGETLB) vm |= VM_HUGETLB | VM_DONTEXPAND;
  void file;
  return vm >>> 0;
}

/**
 * accountable_mapping: is the mapping charged to the committed memory (VM_ACCOUNT)? A private
 * writable one without VM_NORESERVE — unless it is hugetlb, which has its own reservation
 * accounting (Linux checks is_file_hugepages(file) there, VM_HUGETLB not being set yet; mmulab's
 * hugetlb mappings have no file, and carry VM_HUGETLB from the start).
 */
export function accountable_mapping(file: File | null, vmFlags: number): boolean {
  if (vmFlags & VM_HUGETLB) return false;
  void file;
  return (vmFlags & (VM_NORESERVE | VM_SHARED | VM_WRITE)) === VM_WRITE;
}

/**
 * get_unmapped_area (__get_unmapped_area with the x86-64 top-down allocator): a free range of
 * `len` bytes. A hint is used when free; MAP_FIXED takes the address as is. Then, as Linux checks
 * whatever address came back: beyond TASK_SIZE → ENOMEM, unaligned → EINVAL, below mmap_min_addr
 * → EPERM (security_mmap_addr for an unprivileged task). With `align` (hugetlb) a fixed address
 * must be aligned (EINVAL) and a hint is rounded up. Returns the address or -errno.
 */
export function get_unmapped_area(mm: MmStruct, addr: number, len: number, flags: number, align = PAGE_SIZE): number {
  if (len > TASK_SIZE - MMAP_MIN_ADDR) return -ENOMEM;
  if (align > PAGE_SIZE && flags & MAP_FIXED && addr % align) return -EINVAL;
  let a = -ENOMEM;
  if (flags & MAP_FIXED) a = addr;
  else {
    if (addr) {
      addr = Math.ceil(addr / align) * align;
      if (addr >= MMAP_MIN_ADDR && addr <= TASK_SIZE - len) {
        const v = mm.find_vma(addr);
        if (!v || addr + len <= vm_start_gap(v)) a = addr;
      }
    }
    // Top down from mmap_base, aligned.
    let high = mm.mmap_base;
    for (let tries = 0; a < 0 && tries < 64; tries++) {
      const g = mm.findGapTopDown(len + align - PAGE_SIZE, MMAP_MIN_ADDR, high);
      if (g < 0) return -ENOMEM;
      const aligned = Math.floor((g + align - PAGE_SIZE) / align) * align;
      const v = mm.find_vma(aligned);
      if (aligned >= MMAP_MIN_ADDR && (!v || aligned + len <= vm_start_gap(v))) a = aligned;
      else high = g;
    }
    if (a < 0) return -ENOMEM;
  }
  if (a > TASK_SIZE - len) return -ENOMEM;
  if (a % PAGE_SIZE) return -EINVAL;
  if (a < MMAP_MIN_ADDR) return -EPERM;
  return a;
}

/**
 * do_mmap: map `len` bytes. `file` null means anonymous. Requires the mmap write lock. Returns
 * the address or -errno. `populate` (do_mmap's *populate) receives the length the caller must
 * fault in with mm_populate once it has dropped the lock (0: nothing to do).
 */
export function* do_mmap(k: Kernel, mm: MmStruct, file: File | null, addr: number, len: number, prot: number, flags: number, pgoff: number, populate?: { len: number }): KGen<number> {
  if (populate) populate.len = 0;
  k.locks.mmap_assert_write_locked(mm, 'do_mmap');
  if (len === 0) return -EINVAL;
  if (!Number.isSafeInteger(len) || len < 0 || !Number.isSafeInteger(addr) || addr < 0) return -EINVAL;
  // ksys_mmap_pgoff: MAP_HUGETLB is for anonymous memory (or hugetlbfs files, not modelled); its
  // length is rounded to the huge page size.
  const hugetlb = (flags & MAP_HUGETLB) !== 0;
  if (hugetlb && file) return -EINVAL;
  const unit = hugetlb ? HPAGE_SIZE : PAGE_SIZE;
  if (flags & MAP_FIXED_NOREPLACE) flags |= MAP_FIXED;
  // round_hint_to_min: a hint is masked to its page and raised to mmap_min_addr.
  if (!(flags & MAP_FIXED) && addr) addr = Math.max(addr - (addr % PAGE_SIZE), MMAP_MIN_ADDR);
  len = Math.ceil(len / unit) * unit;
  if (pgoff + len / PAGE_SIZE > Number.MAX_SAFE_INTEGER) return -EOVERFLOW;
  if (mm.map_count > k.vmaOps.max_map_count) return -ENOMEM;
  const vmFlags = calc_vm_flags(prot, flags, file);
  const a = get_unmapped_area(mm, addr, len, flags, unit);
  if (a < 0) return a;
  if (flags & MAP_FIXED_NOREPLACE) {
    const v = mm.find_vma(a);
    if (v && v.vm_start < a + len) return -EEXIST;
  }
  // The mapping type, as do_mmap's two switches check it (a hugetlb mapping is a hugetlbfs file
  // there). MAP_SHARED_VALIDATE accepts only LEGACY_MAP_MASK (MAP_SYNC needs FOP_MMAP_SYNC, which
  // no mmulab file has, and MAP_FIXED_NOREPLACE is not a legacy flag); plain MAP_SHARED ignores
  // the rest.
  const type = flags & MAP_TYPE;
  if (file || hugetlb) {
    if (type === MAP_SHARED) flags &= LEGACY_MAP_MASK;
    if (type === MAP_SHARED || type === MAP_SHARED_VALIDATE) {
      if (flags & ~LEGACY_MAP_MASK) return -EOPNOTSUPP;
    } else if (type !== MAP_PRIVATE) return -EINVAL;
    if (file && !file.f_op.mmap) return -ENODEV;
    if (vmFlags & VM_GROWSDOWN) return -EINVAL;
  } else if (type === MAP_SHARED) {
    if (vmFlags & VM_GROWSDOWN) return -EINVAL;
  } else if (type !== MAP_PRIVATE) return -EINVAL;
  // Anonymous private mappings use the address as page offset (so neighbours merge); shared
  // anonymous memory is a shmem object starting at offset 0.
  if (!file) pgoff = type === MAP_PRIVATE ? a / PAGE_SIZE : 0;
  const r = yield* mmap_region(k, mm, file, a, len, vmFlags, pgoff, flags);
  // The requested flags decide, not the VMA's: a MAP_LOCKED hugetlb or VM_SPECIAL mapping lost
  // VM_LOCKED in __mmap_complete, and is populated all the same.
  if (r >= 0 && populate && (vmFlags & VM_LOCKED || (flags & (MAP_POPULATE | MAP_NONBLOCK)) === MAP_POPULATE)) populate.len = len;
  return r;
}

/** mmap_region: create (or merge) the VMA for [addr, addr + len). */
export function* mmap_region(k: Kernel, mm: MmStruct, file: File | null, addr: number, len: number, vmFlags: number, pgoff: number, mapFlags: number): KGen<number> {
  const end = addr + len;
  // __mmap_prepare: a private writable mapping is charged (no commit limit here, see the header).
  if (accountable_mapping(file, vmFlags)) vmFlags = (vmFlags | VM_ACCOUNT) >>> 0;
  // MAP_FIXED over existing mappings: they go first (their ->close runs now).
  if ((mm.find_vma(addr)?.vm_start ?? Infinity) < end) {
    const err = yield* do_vmi_munmap(k, mm, addr, len, false);
    if (err) return err;
  }
  const shared = (vmFlags & VM_SHARED) !== 0;
  const anonShared = !file && shared;
  // Try to extend a neighbour first (before any ->mmap hook).
  if (!anonShared) {
    const merged = yield* k.vmaOps.mergeNew(mm, addr, end, { flags: vmFlags, file, pgoff, anon_vma: null, uffd: null, anon_name: null });
    if (merged) {
      __mmap_complete(k, merged);
      mmapCounters(k).mmaps++;
      mmapCounters(k).merged++;
      return addr;
    }
  }
  const vma = new VmArea(mm, addr, end, vmFlags);
  vma.vm_pgoff = pgoff;
  k.charge(k.costs.vmaOp);
  if (file) {
    vma.vm_file = file.get();
    const before = { start: vma.vm_start, end: vma.vm_end, mayWrite: (vma.vm_flags & VM_MAYWRITE) !== 0 };
    k.vmaNewWindow.open(vma);
    let err: number;
    try {
      const hook = file.f_op.mmap!(file, vma);
      err = typeof hook === 'number' ? hook : yield* hook;
    } finally {
      k.vmaNewWindow.close(vma);
    }
    if (vma.vm_start !== before.start || vma.vm_end !== before.end) {
      k.warn('WARNING: ->mmap changed the VMA bounds', `WARN_ON(addr != vma->vm_start) in __mmap_new_file_vma: ${file.f_op.name}->mmap moved ${before.start.toString(16)}-${before.end.toString(16)}`, { file: file.path });
    }
    if (!before.mayWrite && vma.vm_flags & VM_MAYWRITE) {
      k.warn('WARNING: ->mmap set VM_MAYWRITE', `VM_WARN_ON_ONCE: ${file.f_op.name}->mmap turned on VM_MAYWRITE`, { file: file.path });
    }
    if (err) {
      mmapCounters(k).hookErrors++;
      // Undo: anything the hook inserted goes (unmap_region), then the file reference.
      yield* unmapDetached(k, mm, [vma], 'mmap_region (->mmap failed)');
      vma.vm_file = null;
      file.put();
      vma.freed = true;
      return err;
    }
  } else if (anonShared) {
    const e = shmem_zero_setup(k, vma);
    if (e) return e;
  }
  yield* k.vmaOps.link(vma);
  k.checkVmaFlags(vma, 'mmap_region');
  __mmap_complete(k, vma);
  mmapCounters(k).mmaps++;
  void mapFlags;
  return addr;
}

/**
 * __mmap_complete's locking part, for the new or merged VMA: VM_LOCKED does not stay on a
 * VM_SPECIAL or hugetlb VMA (nor on a DAX one or the gate VMA, which mmulab does not have), and
 * is not counted in locked_vm there; elsewhere mm->locked_vm grows by the mapping's pages, which
 * MmStruct.locked_vm derives from the VM_LOCKED VMAs.
 */
function __mmap_complete(k: Kernel, vma: VmArea): void {
  if (!(vma.vm_flags & VM_LOCKED)) return;
  if (vma.vm_flags & (VM_SPECIAL | VM_HUGETLB)) k.vmaOps.vm_flags_clear(vma, VM_LOCKED_MASK, '__mmap_complete');
}

/**
 * Zap and free the tables of VMAs that are no longer linked (unmap_region). `lazyFree`: nothing
 * will reuse the range before the flush policy allows it (munmap), see MmuGather.lazy_free.
 */
export function* unmapDetached(k: Kernel, mm: MmStruct, vmas: VmArea[], site: string, floor?: number, ceiling?: number, lazyFree = false): KGen {
  if (vmas.length === 0) return;
  const tlb = new MmuGather(k, mm, false, k.tlb, k.pt, `tlb_finish_mmu <- ${site}`);
  tlb.lazy_free = lazyFree;
  for (const v of vmas) {
    yield* zap_range(k, tlb, v, v.vm_start, v.vm_end);
    yield* tlb.endVma();
  }
  const start = vmas[0]!.vm_start;
  const end = vmas[vmas.length - 1]!.vm_end;
  const prev = mm.find_vma(start) ? mm.prevVma(mm.find_vma(start)!) : mm.mm_mt.last()?.value ?? null;
  const lo = floor ?? (prev && prev.vm_end <= start ? prev.vm_end : 0);
  const nextV = mm.find_vma(start);
  const hi = ceiling ?? (nextV ? nextV.vm_start : TASK_SIZE + PAGE_SIZE);
  k.pt.free_pgd_range(mm, start, end, Math.min(lo, start), Math.max(hi, end), (t) => tlb.removeTable(t, start, 12));
  yield* tlb.finish();
}

/**
 * do_vmi_munmap: unmap [start, start + len). With `downgrade` the mmap write lock is downgraded
 * to read before the PTEs are zapped (the caller then holds it for read). Returns 0 or -errno.
 */
export function* do_vmi_munmap(k: Kernel, mm: MmStruct, start: number, len: number, downgrade: boolean): KGen<number> {
  k.locks.mmap_assert_write_locked(mm, 'do_vmi_munmap');
  if (start % PAGE_SIZE || !Number.isSafeInteger(start) || start < 0) return -EINVAL;
  if (!Number.isSafeInteger(len) || len < 0) return -EINVAL;
  len = page_align(len);
  if (len === 0 || start > TASK_SIZE || len > TASK_SIZE - start) return -EINVAL;
  const end = start + len;
  let vma = mm.find_vma(start);
  if (!vma || vma.vm_start >= end) {
    if (downgrade) k.locks.mmap_write_downgrade(mm);
    return 0;
  }
  // Splitting a VMA in the middle needs one more map entry.
  if (vma.vm_start < start && end < vma.vm_end && mm.map_count >= k.vmaOps.max_map_count) return -ENOMEM;
  if (vma.vm_start < start) {
    const r = yield* k.vmaOps.split(vma, start, true, false);
    if (typeof r === 'number') return r;
  }
  const last = mm.find_vma(end - 1);
  if (last && last.vm_start < end && end < last.vm_end) {
    const r = yield* k.vmaOps.split(last, end, false, false);
    if (typeof r === 'number') return r;
  }
  const victims = mm.vmasIn(start, end);
  const floorVma = victims.length ? mm.prevVma(victims[0]!) : null;
  const ceilVma = victims.length ? mm.nextVma(victims[victims.length - 1]!) : null;
  const floor = floorVma ? floorVma.vm_end : 0;
  const ceiling = ceilVma ? ceilVma.vm_start : TASK_SIZE + PAGE_SIZE;
  for (const v of victims) yield* k.vmaOps.detach(v);
  mmapCounters(k).munmaps++;
  if (downgrade) k.locks.mmap_write_downgrade(mm);
  // `downgrade` marks munmap(2) itself (__vm_munmap); its range may be flushed lazily by a policy
  // that holds the pages and the range until every CPU caught up (LATR's munmap_inprogress).
  yield* unmapDetached(k, mm, victims, 'do_vmi_munmap', floor, ceiling, downgrade);
  // Only now, with the PTEs gone and the TLBs flushed, do the ->close hooks run.
  for (const v of victims) k.vmaOps.remove(v);
  return 0;
}

/** exit_mmap: tear the whole address space down (the last mmput). */
export function* exit_mmap(k: Kernel, mm: MmStruct): KGen {
  const vmas = mm.vmas();
  const tlb = new MmuGather(k, mm, true, k.tlb, k.pt, 'tlb_finish_mmu <- exit_mmap');
  for (const v of vmas) yield* zap_range(k, tlb, v, v.vm_start, v.vm_end);
  k.pt.free_pgd_range(mm, 0, TASK_SIZE + PAGE_SIZE, 0, TASK_SIZE + PAGE_SIZE, (t) => tlb.removeTable(t, 0, 12));
  yield* tlb.finish();
  for (const v of vmas) {
    mm.treeRemove(v);
    k.locks.vma_mark_detached(v);
    if (v.vm_file) {
      const m = v.vm_file.f_mapping;
      yield* m.i_mmap_rwsem.down_write('exit_mmap');
      m.i_mmap.remove(v);
      m.i_mmap_rwsem.up_write();
    }
    k.vmaOps.remove(v);
  }
  mm.dead = true;
}

export { VM_MAYSHARE };
