/**
 * kernel/arch/x86/uaccess.ts — copy_from_user / copy_to_user (arch/x86/include/asm/uaccess.h,
 * arch/x86/lib/copy_user_64.S): the kernel reading and writing the current task's user memory.
 *
 * As on x86, these are ordinary CPU accesses at CPL 0 through the current page tables, bracketed
 * by STAC/CLAC so SMAP lets them touch user pages. A #PF is handled like a user fault
 * (do_user_addr_fault, without PF_U in the error code); a fault the kernel cannot resolve is
 * caught by the exception table and the copy returns -EFAULT instead of signalling the task.
 * Every access therefore costs what the MMU says (TLB hits, walks, faults) and is seen by the
 * use-after-free detector like any CPU access.
 *
 * The caller must not hold the mmap lock (a fault may need it); code that copies under the
 * lock in Linux does so with page faults disabled — callers here copy first, then lock.
 */

import type { Kernel } from '../../kernel.ts';
import type { KGen, Task } from '../../sched/core.ts';
import { K_READ, K_WRITE } from '../../../hw/walk.ts';
import { VEC_PF } from '../../../hw/control-registers.ts';
import { do_user_addr_fault } from './fault.ts';
import { EFAULT } from '../../errno.ts';
import { PAGE_SIZE, TASK_SIZE } from '../../mm/mm_types.ts';

/** access_ok: the range lies below the user address limit. */
export function access_ok(addr: number, len: number): boolean {
  return Number.isSafeInteger(addr) && Number.isSafeInteger(len) && addr >= 0 && len >= 0 && addr + len <= TASK_SIZE + PAGE_SIZE;
}

/**
 * Translate one user address for a kernel access when the MMU allows it as it stands: the
 * physical address, or -1 when the translation faulted (the CPU's fault registers say why; the
 * kernel has not handled it yet). Plain code, so a copy whose pages are present costs no
 * generator.
 */
function tryUserPa(k: Kernel, t: Task, va: number, kind: number): number {
  const cpu = k.machine.cpu(t.cpu);
  if (cpu.translate(Math.floor(va / 4294967296) | 0, va | 0, kind, false, false) === 0) return cpu.pa;
  return -1;
}

/**
 * The rest of a translation whose first attempt (tryUserPa) faulted: handle the fault, retry, up
 * to eight attempts in all; the physical address or -EFAULT.
 */
function* userPaAfterFault(k: Kernel, t: Task, va: number, kind: number): KGen<number> {
  for (let tries = 1; ; tries++) {
    const cpu = k.machine.cpu(t.cpu);
    if (cpu.faultVector !== VEC_PF) return -EFAULT;
    // A kernel-mode fault on a user address: no PF_U in the error code.
    const err = cpu.faultError & ~4;
    cpu.setAc(false);
    const sig = yield* do_user_addr_fault(k, t, va, err);
    k.machine.cpu(t.cpu).setAc(true);
    if (sig) return -EFAULT; // fixup_exception
    if (tries === 8) return -EFAULT;
    const pa = tryUserPa(k, t, va, kind);
    if (pa >= 0) return pa;
  }
}

/** STAC on the current CPU before a user access; the current task. */
function user_access_begin(k: Kernel): Task {
  const t = k.current;
  if (!t) throw new Error('user access outside task context');
  k.machine.cpu(t.cpu).setAc(true);
  return t;
}

/** CLAC on the CPU the task is on now. */
function user_access_end(k: Kernel, t: Task): void {
  k.machine.cpu(t.cpu).setAc(false);
}

/** copy_from_user: `len` bytes at `from`, or -EFAULT. */
export function* copy_from_user(k: Kernel, from: number, len: number): KGen<Uint8Array | number> {
  if (!access_ok(from, len)) return -EFAULT;
  const out = new Uint8Array(len);
  const r = yield* copy_from_user_into(k, out, from, len);
  return r < 0 ? r : out;
}

/**
 * copy_from_user as Linux spells it, copy_from_user(to, from, n): `len` bytes at `from` into
 * `to`; 0 or -EFAULT (bytes before the fault are copied). A `to` shorter than `len` is the
 * caller's bug, reported as hardened usercopy reports it. For callers that reuse a buffer: a
 * fresh small typed array, and a DataView over it, cost more than the copy.
 */
export function* copy_from_user_into(k: Kernel, to: Uint8Array, from: number, len: number): KGen<number> {
  if (Number.isSafeInteger(len) && len > to.length) {
    k.bug('usercopy: Kernel memory overwrite attempt detected', `usercopy: Kernel memory overwrite attempt detected to a ${to.length}-byte buffer (offset 0, size ${len})!`, { size: len, buffer: to.length });
  }
  if (!access_ok(from, len)) return -EFAULT;
  const out = to;
  const phys = k.machine.phys;
  const t = user_access_begin(k);
  let r = 0;
  try {
    let done = 0;
    while (done < len) {
      const va = from + done;
      const n = Math.min(len - done, PAGE_SIZE - (va % PAGE_SIZE));
      let pa = tryUserPa(k, t, va, K_READ);
      if (pa < 0) pa = yield* userPaAfterFault(k, t, va, K_READ);
      if (pa < 0) {
        r = pa;
        break;
      }
      out.set(phys.u8.subarray(pa, pa + n), done);
      done += n;
    }
  } finally {
    user_access_end(k, t);
  }
  k.charge(len * k.costs.copyPerByte);
  return r < 0 ? r : 0;
}

/** copy_to_user: write `data` at `to`; 0 or -EFAULT (bytes before the fault stay written). */
export function* copy_to_user(k: Kernel, to: number, data: Uint8Array): KGen<number> {
  if (!access_ok(to, data.length)) return -EFAULT;
  const phys = k.machine.phys;
  const t = user_access_begin(k);
  let r = 0;
  try {
    let done = 0;
    while (done < data.length) {
      const va = to + done;
      const n = Math.min(data.length - done, PAGE_SIZE - (va % PAGE_SIZE));
      let pa = tryUserPa(k, t, va, K_WRITE);
      if (pa < 0) pa = yield* userPaAfterFault(k, t, va, K_WRITE);
      if (pa < 0) {
        r = pa;
        break;
      }
      // The whole array when it fits one page: a subarray of a small array costs more than the copy.
      phys.u8.set(n === data.length ? data : data.subarray(done, done + n), pa);
      done += n;
    }
  } finally {
    user_access_end(k, t);
  }
  k.charge(data.length * k.costs.copyPerByte);
  return r;
}
