/**
 * kernel/arch/x86/fault.ts — the user page-fault path (arch/x86/mm/fault.c do_user_addr_fault):
 * decode the error code, try the per-VMA lock first, fall back to the mmap read lock
 * (lock_mm_and_find_vma, which grows a VM_GROWSDOWN stack down to the address under the mmap
 * write lock), check the access against the VMA (access_error), call handle_mm_fault,
 * retry under the mmap lock when the VMA-lock attempt says VM_FAULT_RETRY, and turn what cannot
 * be resolved into a signal: SIGSEGV (SEGV_MAPERR without a VMA, SEGV_ACCERR for a forbidden
 * access, SEGV_PKUERR for a protection-key fault) or SIGBUS (BUS_ADRERR), or kill on OOM.
 * do_user_addr_fault_nowait is the same path as plain code: a fault that needs no wait (the usual
 * VMA-locked anonymous fault) is resolved without creating a generator, and the part that may
 * sleep is handed back as one, to be run from exactly where the plain code stopped.
 */

import type { Kernel } from '../../kernel.ts';
import type { KGen, Task } from '../../sched/core.ts';
import { PF_ID, PF_P, PF_PK, PF_RSVD, PF_U, PF_W } from '../../../hw/walk.ts';
import {
  FAULT_FLAG_ALLOW_RETRY, FAULT_FLAG_INSTRUCTION, FAULT_FLAG_INTERRUPTIBLE, FAULT_FLAG_KILLABLE, FAULT_FLAG_TRIED, FAULT_FLAG_USER, FAULT_FLAG_VMA_LOCK, FAULT_FLAG_WRITE, VM_EXEC, VM_FAULT_COMPLETED, VM_FAULT_OOM, VM_FAULT_RETRY,
  VM_FAULT_SIGBUS, VM_FAULT_SIGSEGV, VM_GROWSDOWN, VM_READ, VM_WRITE, type MmStruct, type VmArea,
} from '../../mm/mm_types.ts';
import { faultCounters, handle_mm_fault_nowait } from '../../mm/memory.ts';

export const SIGBUS = 7;
export const SIGKILL = 9;
export const SIGSEGV = 11;
export const SEGV_MAPERR = 1;
export const SEGV_ACCERR = 2;
export const SEGV_PKUERR = 4;
export const BUS_ADRERR = 2;

export interface SignalInfo {
  signo: number;
  code: number;
  addr: number;
  /** Why, in words (for reports). */
  why: string;
}

/** access_error: may this access go ahead in this VMA at all? */
export function access_error(error_code: number, vma: VmArea): boolean {
  if (error_code & PF_PK) return true;
  if (error_code & PF_W) return !(vma.vm_flags & VM_WRITE);
  if (error_code & PF_P) return true; // read of a present page: a protection fault
  return !(vma.vm_flags & (VM_READ | VM_WRITE | VM_EXEC));
}

/**
 * do_user_addr_fault: resolve a #PF raised by `task` in user mode at `address`. Returns null
 * when the access can be retried, or the signal to deliver.
 */
export function* do_user_addr_fault(k: Kernel, task: Task, address: number, error_code: number): KGen<SignalInfo | null> {
  const r = do_user_addr_fault_nowait(k, task, address, error_code);
  return isFaultWait(r) ? yield* r : r;
}

/** The outcome of do_user_addr_fault_nowait: the result, or the rest of the fault to run. */
export type FaultOutcome = SignalInfo | null | KGen<SignalInfo | null>;

/** Is `r` the rest of a fault that may sleep (a generator) rather than its result? */
export function isFaultWait(r: FaultOutcome): r is KGen<SignalInfo | null> {
  return r !== null && !('signo' in r);
}

/**
 * do_user_addr_fault as plain code as far as it can go: a fault resolved without sleeping (the
 * common case: the VMA lock taken, an anonymous page installed) returns its result directly;
 * one that has to wait returns a generator that continues it from that point (do_user_addr_fault
 * runs it). Both shapes run the same steps in the same order.
 */
export function do_user_addr_fault_nowait(k: Kernel, task: Task, address: number, error_code: number): FaultOutcome {
  const mm = task.mm;
  k.charge(k.costs.faultEntry);
  // perf's page-faults software event, counted per task before anything can fail.
  task.stats.faults++;
  if (k.trace.enabled) {
    k.trace.emit(error_code & PF_U ? 'exceptions:page_fault_user' : 'exceptions:page_fault_kernel', { address, ip: 0, error_code }, `address=0x${address.toString(16)} ip=0x0 error_code=0x${error_code.toString(16)}`);
  }
  const fc = faultCounters(k);
  if (!mm) return { signo: SIGSEGV, code: SEGV_MAPERR, addr: address, why: 'no address space' };
  if (error_code & PF_RSVD) {
    // pgtable_bad: a reserved bit in a user page table is corruption.
    k.report({ kind: 'oops', title: `${task.comm}[${task.pid}]: corrupted page table at address ${address.toString(16)}`, text: `${task.comm}: Corrupted page table at address ${address.toString(16)}\nBad pagetable: 0x${error_code.toString(16)} [#1] PREEMPT SMP`, data: { address, error_code } });
    return { signo: SIGKILL, code: 0, addr: address, why: 'corrupted page table' };
  }
  // FAULT_FLAG_DEFAULT, plus USER for faults raised in user mode (a kernel access to user memory
  // through copy_from_user and friends arrives here too, without PF_U).
  let flags = FAULT_FLAG_ALLOW_RETRY | FAULT_FLAG_KILLABLE | FAULT_FLAG_INTERRUPTIBLE;
  if (error_code & PF_U) flags |= FAULT_FLAG_USER;
  if (error_code & PF_W) flags |= FAULT_FLAG_WRITE;
  if (error_code & PF_ID) flags |= FAULT_FLAG_INSTRUCTION;
  // The per-VMA lock first.
  const vma0 = k.locks.lock_vma_under_rcu(mm, address, 'do_user_addr_fault');
  if (vma0) {
    if (access_error(error_code, vma0)) {
      k.locks.vma_end_read(vma0);
      fc.sigsegv++;
      return { signo: SIGSEGV, code: error_code & PF_PK ? SEGV_PKUERR : SEGV_ACCERR, addr: address, why: 'access not allowed by the VMA' };
    }
    const f = handle_mm_fault_nowait(k, vma0, address, flags | FAULT_FLAG_VMA_LOCK);
    if (typeof f !== 'number') return vma_locked_fault_wait(k, task, address, error_code, flags, vma0, f);
    if (!vma_locked_fault_done(k, vma0, f)) return faultResult(k, f, address);
  }
  return lock_mm_and_fault(k, task, address, error_code, flags);
}

/**
 * After handle_mm_fault under the VMA lock: release the lock unless the handler did, and say
 * whether the fault must be retried under the mmap lock (VM_FAULT_RETRY).
 */
function vma_locked_fault_done(k: Kernel, vma: VmArea, fault: number): boolean {
  if (!(fault & (VM_FAULT_RETRY | VM_FAULT_COMPLETED))) k.locks.vma_end_read(vma);
  if (!(fault & VM_FAULT_RETRY)) return false;
  k.locks.vmaStats.retry++;
  faultCounters(k).retries++;
  return true;
}

/** The VMA-locked handle_mm_fault had to wait: finish it, then as do_user_addr_fault_nowait. */
function* vma_locked_fault_wait(k: Kernel, task: Task, address: number, error_code: number, flags: number, vma: VmArea, rest: KGen<number>): KGen<SignalInfo | null> {
  const fault = yield* rest;
  if (!vma_locked_fault_done(k, vma, fault)) return faultResult(k, fault, address);
  return yield* lock_mm_and_fault(k, task, address, error_code, flags);
}

/** lock_mm_and_find_vma and the fault under the mmap read lock, retried while it says so. */
function* lock_mm_and_fault(k: Kernel, task: Task, address: number, error_code: number, flags: number): KGen<SignalInfo | null> {
  const mm = task.mm!;
  const fc = faultCounters(k);
  for (let tries = 0; ; tries++) {
    const vma = yield* lock_mm_and_find_vma(k, mm, address);
    if (!vma) {
      fc.sigsegv++;
      return { signo: SIGSEGV, code: SEGV_MAPERR, addr: address, why: 'no VMA at this address' };
    }
    if (access_error(error_code, vma)) {
      k.locks.mmap_read_unlock(mm);
      fc.sigsegv++;
      return { signo: SIGSEGV, code: error_code & PF_PK ? SEGV_PKUERR : SEGV_ACCERR, addr: address, why: 'access not allowed by the VMA' };
    }
    const f = handle_mm_fault_nowait(k, vma, address, flags | (tries > 0 ? FAULT_FLAG_TRIED : 0));
    const fault = typeof f === 'number' ? f : yield* f;
    if (fault & VM_FAULT_RETRY) {
      // The handler dropped the lock (it may not have; Linux's contract is that it did).
      if (mm.mmap_lock.heldBy(k.current)) k.locks.mmap_read_unlock(mm);
      if (tries > 16) return { signo: SIGBUS, code: BUS_ADRERR, addr: address, why: 'fault retried too often' };
      continue;
    }
    if (!(fault & VM_FAULT_COMPLETED)) k.locks.mmap_read_unlock(mm);
    return faultResult(k, fault, address);
  }
}

/**
 * lock_mm_and_find_vma (mm/mmap_lock.c): the mmap read lock and the VMA at `addr`, or null with
 * no lock held. An address below a VM_GROWSDOWN VMA (and above the one before it) grows that
 * stack: the read lock is dropped for the write lock (the kernel has no atomic upgrade), the VMA
 * is looked up again, expand_stack_locked grows it, and the lock is downgraded back to read.
 */
export function* lock_mm_and_find_vma(k: Kernel, mm: MmStruct, addr: number): KGen<VmArea | null> {
  yield* k.locks.mmap_read_lock(mm, 'do_user_addr_fault');
  let vma = mm.find_vma(addr);
  if (vma && vma.vm_start <= addr) return vma;
  if (!vma || !(vma.vm_flags & VM_GROWSDOWN)) {
    k.locks.mmap_read_unlock(mm);
    return null;
  }
  // upgrade_mmap_lock_carefully, then everything again: the mm may have changed meanwhile.
  k.locks.mmap_read_unlock(mm);
  yield* k.locks.mmap_write_lock(mm, 'lock_mm_and_find_vma');
  vma = mm.find_vma(addr);
  if (vma && vma.vm_start > addr) {
    // expand_stack_locked (x86 stacks grow down).
    if (!(vma.vm_flags & VM_GROWSDOWN) || (yield* k.vmaOps.expand_downwards(vma, addr)) !== 0) vma = null;
  }
  if (!vma) {
    k.locks.mmap_write_unlock(mm);
    return null;
  }
  k.locks.mmap_write_downgrade(mm);
  return vma;
}

function faultResult(k: Kernel, fault: number, address: number): SignalInfo | null {
  const fc = faultCounters(k);
  if (fault & VM_FAULT_OOM) {
    fc.oom++;
    return { signo: SIGKILL, code: 0, addr: address, why: 'out of memory' };
  }
  if (fault & VM_FAULT_SIGBUS) {
    fc.sigbus++;
    return { signo: SIGBUS, code: BUS_ADRERR, addr: address, why: 'the mapping has no page here' };
  }
  if (fault & VM_FAULT_SIGSEGV) {
    // mm_fault_error → bad_area_nosemaphore: SEGV_MAPERR, as if there were no mapping.
    fc.sigsegv++;
    return { signo: SIGSEGV, code: SEGV_MAPERR, addr: address, why: 'the fault handler refused' };
  }
  return null;
}
