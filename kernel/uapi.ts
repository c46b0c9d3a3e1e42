/**
 * kernel/uapi.ts — what an emulated program sees: loads and stores of 1 to 8 bytes and bulk
 * copies at virtual addresses, performed by its CPU's MMU at CPL 3, and system calls.
 *
 * A program is a generator function `function* (u: User) { … }`. Memory accesses and system
 * calls are generators too, called with `yield*`, because either may have to wait (a page fault
 * that needs the mmap lock, a syscall that sleeps). Inside them the common case is plain code:
 * a translation that succeeds, a fault the kernel resolves without sleeping, and a preemption
 * point at which the scheduler has nothing to do (need_resched() false) cost no further
 * generator and no yield; the yield happens exactly when the scheduler would act on it.
 *
 * An access that the MMU refuses enters the kernel's page-fault handler (do_user_addr_fault) at
 * CPL 0 and is retried, as the hardware re-executes a faulting instruction; a fault the kernel
 * cannot resolve throws a SignalError (SIGSEGV/SIGBUS with the address and code) into the
 * program at that access — catching it is handling the signal; not catching it kills the process
 * with Linux's log line. A failing system call throws SyscallError (errno name in `.code`), as
 * libc returns -1 with errno.
 *
 * Deviation: fork cannot resume a copy of the caller's JavaScript stack, so `fork(child)` takes
 * the program the child runs; the child starts in a copy of the parent's address space and file
 * table, exactly as after fork returned 0.
 */

import type { Kernel } from './kernel.ts';
import { PREEMPT, type KGen, type SchedYield, type Task } from './sched/core.ts';
import { K_FETCH, K_READ, K_WRITE } from '../hw/walk.ts';
import { accessStream, type AccessStream } from '../hw/engine.ts';
import type { AccessKind } from '../hw/cpu.ts';
import { VEC_MC, VEC_PF } from '../hw/control-registers.ts';
import { EXIT_FAULT } from '../hw/remote.ts';
import { SyscallError, EBADF, EINVAL, ECHILD, ENOENT, ENOMEM, EFAULT } from './errno.ts';
import { SignalError, signalFromFault } from './signal.ts';
import { BUS_ADRERR, SEGV_MAPERR, SIGBUS, SIGSEGV, do_user_addr_fault_nowait, isFaultWait, type FaultOutcome, type SignalInfo } from './arch/x86/fault.ts';
import { do_mmap, do_vmi_munmap } from './mm/mmap.ts';
import { mm_populate } from './mm/gup.ts';
import { do_mprotect_pkey } from './mm/mprotect.ts';
import { do_mremap } from './mm/mremap.ts';
import { do_madvise } from './mm/madvise.ts';
import { dup_mm, mmget } from './fork.ts';
import { do_exit, groupOf, ThreadGroup, FdTable } from './exit.ts';
import { kasanState, type KasanState } from './mm/kasan.ts';
import type { MmStruct } from './mm/mm_types.ts';
import { O_NONBLOCK, create_pipe_files, get_pipe_info, isPipeWriter } from './fs/pipe.ts';
import { new_userfaultfd } from './fs/userfaultfd.ts';

export type Program = (u: User) => Generator<SchedYield, number | void, unknown>;

/** Thrown by User.exit to unwind the program. */
export class ExitRequest {
  constructor(readonly code: number) {}
}

const KIND_OF = { read: K_READ, write: K_WRITE, fetch: K_FETCH } as const;

export class User {
  /** Accesses since the last preemption point. */
  private budget = 0;
  /** The use-after-free detector's state (told the size of each access before it is made). */
  private readonly kasan: KasanState;

  constructor(
    readonly k: Kernel,
    readonly task: Task,
  ) {
    this.kasan = kasanState(k);
  }

  get pid(): number {
    return this.task.tgid;
  }

  get tid(): number {
    return this.task.pid;
  }

  // ==============================================================================================
  // Memory
  // ==============================================================================================

  /**
   * One translation of `va` for `kind` at CPL 3 on this task's CPU, as the MMU performs it:
   * the physical address, or -1 when it raised an exception (described by the CPU's fault
   * registers; the kernel has not seen it yet). Plain code, so an access whose translation
   * succeeds costs no generator; see translate() for what follows a fault.
   */
  private tryTranslate(va: number, kind: number, size: number): number {
    if (!Number.isSafeInteger(va)) throw new SignalError(SIGSEGV, SEGV_MAPERR, 0, `address ${String(va)} is not an integer`);
    const cpu = this.k.machine.cpu(this.task.cpu);
    this.kasan.accessSize = size;
    if (cpu.translate(Math.floor(va / 4294967296) | 0, va | 0, kind, false, false) === 0) return cpu.pa;
    return -1;
  }

  /**
   * Translate `va` for `kind` at CPL 3, taking page faults as the hardware would (the kernel
   * handles them; an unresolved one throws a SignalError). Returns the physical address.
   */
  private *translate(va: number, kind: number, size: number): KGen<number> {
    const pa = this.tryTranslate(va, kind, size);
    return pa >= 0 ? pa : yield* this.translateAfterFault(va, kind, size);
  }

  /**
   * The rest of translate() once the first attempt has faulted: the exception goes to the
   * kernel, then the access is retried (with a new exception per failed retry).
   */
  private *translateAfterFault(va: number, kind: number, size: number): KGen<number> {
    for (let attempt = 0; ; attempt++) {
      const wait = this.exception(va, attempt);
      if (wait !== null) yield* wait;
      const pa = this.tryTranslate(va, kind, size);
      if (pa >= 0) return pa;
    }
  }

  /**
   * The exception the last translation on this task's CPU raised at `va`: a #PF goes to the
   * kernel's fault handler (an unresolved one throws a SignalError); anything else is a signal.
   * `attempt` counts retries of the same access. Returns null when the access can be retried
   * now, or a generator that finishes the exception first (a fault that has to wait, or a return
   * to user mode at which the scheduler has work); the caller runs it, then retries. Most faults
   * take neither, and cost no generator.
   */
  private exception(va: number, attempt: number): KGen | null {
    const k = this.k;
    const t = this.task;
    const cpu = k.machine.cpu(t.cpu);
    if (cpu.faultVector === VEC_PF) {
      const err = cpu.faultError;
      t.inKernel++;
      cpu.setCpl(0);
      let r: FaultOutcome;
      try {
        r = do_user_addr_fault_nowait(k, t, va, err);
      } catch (e) {
        this.leaveFault();
        throw e;
      }
      if (isFaultWait(r)) return this.faultWait(r, va, err, attempt);
      this.leaveFault();
      return this.returnFromFault(r, va, err, attempt);
    }
    if (cpu.faultVector === VEC_MC) throw new SignalError(SIGBUS, BUS_ADRERR, va, `machine check: ${cpu.faultReason}`);
    throw new SignalError(SIGSEGV, 0x80 /* SI_KERNEL */, va, `general protection fault (${cpu.faultReason || 'vector ' + cpu.faultVector})`);
  }

  /** The end of the fault handler: back to CPL 3. */
  private leaveFault(): void {
    const t = this.task;
    t.inKernel--;
    this.k.machine.cpu(t.cpu).setCpl(3);
  }

  /** A fault that has to wait: run the rest of it, then return to user mode. */
  private *faultWait(rest: KGen<SignalInfo | null>, va: number, err: number, attempt: number): KGen {
    let sig: SignalInfo | null;
    try {
      sig = yield* rest;
    } finally {
      this.leaveFault();
    }
    const wait = this.returnFromFault(sig, va, err, attempt);
    if (wait !== null) yield* wait;
  }

  /**
   * The return to user mode after an exception is a preemption point (exit_to_user_mode checks
   * need_resched), so a thread that keeps faulting cannot starve the others; then the signal of
   * a fault the kernel could not resolve. Null when nothing had to wait.
   */
  private returnFromFault(sig: SignalInfo | null, va: number, err: number, attempt: number): KGen | null {
    this.budget = 0;
    if (this.k.sched[this.task.cpu]!.need_resched(this.task)) return this.preemptThenSignal(sig, va, err, attempt);
    this.raiseFaultSignal(sig, va, err, attempt);
    return null;
  }

  private *preemptThenSignal(sig: SignalInfo | null, va: number, err: number, attempt: number): KGen {
    yield PREEMPT;
    this.raiseFaultSignal(sig, va, err, attempt);
  }

  /** Deliver the signal of an unresolved fault (or of one that keeps recurring), if any. */
  private raiseFaultSignal(sig: SignalInfo | null, va: number, err: number, attempt: number): void {
    if (sig) throw signalFromFault(sig, err);
    if (attempt > 64) throw new SignalError(SIGBUS, BUS_ADRERR, va, 'the fault keeps recurring');
  }

  /**
   * Count one access towards the next preemption point (every 64 accesses); true when the
   * caller must yield PREEMPT there (the scheduler has work, see need_resched).
   */
  private pace(): boolean {
    if (++this.budget >= 64) {
      this.budget = 0;
      return this.k.sched[this.task.cpu]!.need_resched(this.task);
    }
    return false;
  }

  /** Physical address of byte `i` of an access that may cross a page. */
  private *bytesPa(va: number, size: number, kind: number): KGen<number[]> {
    const out: number[] = [];
    for (let i = 0; i < size; i++) {
      if (i === 0 || (va + i) % 4096 === 0) out.push(yield* this.translate(va + i, kind, size));
      else out.push(out[i - 1]! + 1);
    }
    return out;
  }

  private checkPa(pa: number, size: number, va: number): void {
    if (pa + size > this.k.machine.phys.size) throw new SignalError(SIGBUS, BUS_ADRERR, va, `physical address 0x${pa.toString(16)} is beyond installed memory (machine check)`);
  }

  /** Load `size` (1, 2, 4) bytes, little endian, unsigned. */
  *load(va: number, size: 1 | 2 | 4): KGen<number> {
    const phys = this.k.machine.phys;
    let v: number;
    if ((va & 4095) + size <= 4096) {
      // translate(), written out: an access costs no generator but its own.
      let pa = this.tryTranslate(va, K_READ, size);
      for (let attempt = 0; pa < 0; attempt++) {
        const wait = this.exception(va, attempt);
        if (wait !== null) yield* wait;
        pa = this.tryTranslate(va, K_READ, size);
      }
      this.checkPa(pa, size, va);
      v = size === 4 && (pa & 3) === 0 ? phys.i32[pa >>> 2]! >>> 0 : phys.readN(pa, size);
    } else {
      const pas = yield* this.bytesPa(va, size, K_READ);
      v = 0;
      for (let i = size - 1; i >= 0; i--) {
        this.checkPa(pas[i]!, 1, va);
        v = v * 256 + phys.u8[pas[i]!]!;
      }
    }
    if (this.pace()) yield PREEMPT;
    return v;
  }

  /** Store `size` (1, 2, 4) bytes, little endian. Both pages of a crossing store are checked first. */
  *store(va: number, size: 1 | 2 | 4, value: number): KGen {
    const phys = this.k.machine.phys;
    if ((va & 4095) + size <= 4096) {
      // translate(), written out: an access costs no generator but its own.
      let pa = this.tryTranslate(va, K_WRITE, size);
      for (let attempt = 0; pa < 0; attempt++) {
        const wait = this.exception(va, attempt);
        if (wait !== null) yield* wait;
        pa = this.tryTranslate(va, K_WRITE, size);
      }
      this.checkPa(pa, size, va);
      // checkPa has bounded the access; an aligned word is one store (what writeN does for it).
      if (size === 4 && pa % 4 === 0) phys.i32[pa / 4] = value | 0;
      else phys.writeN(pa, size, value);
    } else {
      const pas = yield* this.bytesPa(va, size, K_WRITE);
      let v = value >>> 0;
      for (let i = 0; i < size; i++) {
        this.checkPa(pas[i]!, 1, va);
        phys.u8[pas[i]!] = v & 0xff;
        v >>>= 8;
      }
    }
    if (this.pace()) yield PREEMPT;
  }

  // The sized forms hand back load()'s or store()'s own generator rather than wrapping it in
  // another one: `yield* u.load32(a)` runs exactly load(a, 4), one generator layer fewer.

  load8(va: number): KGen<number> {
    return this.load(va, 1);
  }

  load16(va: number): KGen<number> {
    return this.load(va, 2);
  }

  load32(va: number): KGen<number> {
    return this.load(va, 4);
  }

  *load64(va: number): KGen<bigint> {
    const b = yield* this.read(va, 8);
    return new DataView(b.buffer, b.byteOffset, 8).getBigUint64(0, true);
  }

  store8(va: number, v: number): KGen {
    return this.store(va, 1, v);
  }

  store16(va: number, v: number): KGen {
    return this.store(va, 2, v);
  }

  store32(va: number, v: number): KGen {
    return this.store(va, 4, v);
  }

  *store64(va: number, v: bigint): KGen {
    const b = new Uint8Array(8);
    new DataView(b.buffer).setBigUint64(0, BigInt.asUintN(64, v), true);
    yield* this.write(va, b);
  }

  /** Touch one address (an access without data): 'read', 'write' or 'fetch'. */
  *touch(va: number, kind: keyof typeof KIND_OF = 'read'): KGen {
    const code = KIND_OF[kind];
    if (code === undefined) throw new TypeError(`touch: kind must be read, write or fetch, got ${String(kind)}`);
    yield* this.translate(va, code, 1);
    if (this.pace()) yield PREEMPT;
  }

  /**
   * Touch one address per page of [start, end) — `start` and every page boundary after it — as
   * `touch` would, one after the other: the pages' translations end up in the TLBs. Faults are
   * taken as by any access. One generator for the whole range (a loop of touch() is two per page).
   */
  *touchPages(start: number, end: number, kind: keyof typeof KIND_OF = 'read'): KGen {
    const code = KIND_OF[kind];
    if (code === undefined) throw new TypeError(`touchPages: kind must be read, write or fetch, got ${String(kind)}`);
    // On the parallel engine the touches are an access stream run on a worker, as run() runs any.
    if (this.k.remote !== null) {
      const stream = this.pageStream(start, end, kind);
      if (stream !== null) {
        yield* this.runRemote(stream);
        return;
      }
    }
    for (let va = start; va < end; va = (va - (va % 4096)) + 4096) {
      if (this.tryTranslate(va, code, 1) < 0) yield* this.translateAfterFault(va, code, 1);
      if (this.pace()) yield PREEMPT;
    }
  }

  /** touchPages' ranges as access streams, for the parallel engine (a few, reused by loops). */
  private pageStreams: Map<string, AccessStream> | null = null;

  /**
   * The access stream of touchPages(start, end, kind), or null for a range it does not take
   * (addresses outside the canonical lower half, or over a million pages: touchPages itself then
   * runs, and reports a bad address as any access does).
   */
  private pageStream(start: number, end: number, kind: keyof typeof KIND_OF): AccessStream | null {
    if (!Number.isSafeInteger(start) || !Number.isSafeInteger(end) || start < 0 || end > 2 ** 47) return null;
    const first = start - (start % 4096);
    const n = Math.max(0, Math.ceil((end - first) / 4096));
    if (n > 1 << 20) return null;
    const key = `${start}:${end}:${kind}`;
    const cache = (this.pageStreams ??= new Map());
    let s = cache.get(key);
    if (s === undefined) {
      s = accessStream(Array.from({ length: end > start ? n : 0 }, (_, i): [bigint, AccessKind] => [BigInt(i === 0 ? start : first + i * 4096), kind]));
      if (cache.size >= 16) cache.clear();
      cache.set(key, s);
    }
    return s;
  }

  /** Copy `len` bytes of user memory out (each page translated once). */
  *read(va: number, len: number): KGen<Uint8Array> {
    if (!Number.isSafeInteger(len) || len < 0) throw new RangeError(`read length must be a non-negative integer, got ${String(len)}`);
    const out = new Uint8Array(len);
    const phys = this.k.machine.phys;
    let done = 0;
    while (done < len) {
      const a = va + done;
      const n = Math.min(len - done, 4096 - (a & 4095));
      const pa = yield* this.translate(a, K_READ, n);
      this.checkPa(pa, n, a);
      out.set(phys.u8.subarray(pa, pa + n), done);
      done += n;
      this.k.charge(n * this.k.costs.copyPerByte);
    }
    if (this.pace()) yield PREEMPT;
    return out;
  }

  /** Copy bytes into user memory. Every page is translated (and faulted in) before its bytes move. */
  *write(va: number, data: Uint8Array): KGen {
    const phys = this.k.machine.phys;
    let done = 0;
    while (done < data.length) {
      const a = va + done;
      const n = Math.min(data.length - done, 4096 - (a & 4095));
      const pa = yield* this.translate(a, K_WRITE, n);
      this.checkPa(pa, n, a);
      // The whole array when it fits one page: a subarray of a small array costs more than the copy.
      phys.u8.set(n === data.length ? data : data.subarray(done, done + n), pa);
      done += n;
      this.k.charge(n * this.k.costs.copyPerByte);
    }
    if (this.pace()) yield PREEMPT;
  }

  /** Fill `len` bytes with `byte`. */
  *fill(va: number, len: number, byte: number): KGen {
    const chunk = new Uint8Array(Math.min(len, 4096)).fill(byte & 0xff);
    for (let off = 0; off < len; off += 4096) yield* this.write(va + off, chunk.subarray(0, Math.min(4096, len - off)));
  }

  /**
   * Run an access stream (the fast path for workloads and traces): TLB hits are taken in a tight
   * loop; faults go through the kernel as for single accesses. Returns the number of accesses.
   */
  run(stream: AccessStream): KGen<number> {
    // The chosen loop's own generator, not a wrapper around it (as the sized loads do).
    return this.k.remote !== null ? this.runRemote(stream) : this.runHere(stream, 0);
  }

  /** run() on this thread, from access `from` on. */
  private *runHere(stream: AccessStream, from: number): KGen<number> {
    const k = this.k;
    const t = this.task;
    const { his, los, kinds, length } = stream;
    let i = from;
    let attempt = 0;
    while (i < length) {
      const cpu = k.machine.cpu(t.cpu);
      const end = Math.min(length, i + 256);
      const first = i;
      for (; i < end; i++) {
        if (cpu.translate(his[i]!, los[i]!, kinds[i]!, false, false) !== 0) break;
      }
      if (i > first) attempt = 0;
      if (i < end) {
        // Handle the exception of the access that failed, then retry it (as the CPU re-executes
        // the faulting instruction): one #PF per fault, not one per look.
        const va = his[i]! * 4294967296 + (los[i]! >>> 0);
        const wait = this.exception(va, attempt++);
        if (wait !== null) yield* wait;
        continue;
      }
      if (k.sched[t.cpu]!.need_resched(t)) yield PREEMPT;
    }
    return length;
  }

  /**
   * run() on the parallel engine: the stream runs on a worker thread (hw/remote.ts) in stretches
   * that end where the kernel is needed — a fault (handled here, as run() handles it, then the
   * access is retried), an IPI for the kernel (the scheduler loop takes it when the CPU is back),
   * the scheduler's next preemption point by time, or an access to a watched frame (reported here,
   * in the task's context, as the CPU's watch hook would have).
   */
  private *runRemote(stream: AccessStream): KGen<number> {
    const k = this.k;
    const t = this.task;
    const remote = k.remote!;
    const { his, los, kinds, length } = stream;
    let i = 0;
    let attempt = 0;
    while (i < length) {
      // The run ended with this stream unfinished: the rest runs on whatever runs the kernel now.
      if (k.remote !== remote) return yield* this.runHere(stream, i);
      if (k.sched[t.cpu]!.need_resched(t)) {
        yield PREEMPT;
        continue;
      }
      const cpu = k.machine.cpu(t.cpu);
      const index = cpu.index;
      const watched = cpu.watchCount();
      remote.ship(cpu, stream, i, k.sched[index]!.userUntil());
      yield { kind: 'remote', back: () => remote.back(index) };
      const x = remote.result(index);
      if (x.at > i) attempt = 0;
      i = x.at;
      if (cpu.watchCount() !== watched) cpu.replayWatch(watched);
      if (x.reason === EXIT_FAULT) {
        const va = his[i]! * 4294967296 + (los[i]! >>> 0);
        if (x.vector === VEC_PF) {
          cpu.faultVector = x.vector;
          cpu.faultError = x.error;
        } else if (cpu.translate(his[i]!, los[i]!, kinds[i]!, false, false) === 0) {
          // Any other exception is taken again here for its details (a fatal path): it no longer
          // happens if another CPU changed the paging structures meanwhile.
          continue;
        }
        const wait = this.exception(va, attempt++);
        if (wait !== null) yield* wait;
      }
    }
    return length;
  }

  // ==============================================================================================
  // System calls
  // ==============================================================================================

  /**
   * Enter the kernel, run `body`, leave it; a negative small result becomes SyscallError.
   *
   * `body` is normally a generator object that has not started yet, made by one of the `sys_*`
   * methods below: a generator runs nothing until it is first resumed, so all of it runs inside
   * the kernel, after the entry accounting, exactly as a body called from here would. (A fresh
   * generator function per call would cost far more than the syscall itself: each one is a new
   * function with its own prototype.) A function returning the body is accepted too, and called
   * here, after the entry — for bodies that do work before they return their generator.
   */
  *syscall<T>(name: string, body: KGen<T> | (() => KGen<T>)): KGen<T> {
    const k = this.k;
    const t = this.task;
    t.inKernel++;
    k.machine.cpu(t.cpu).setCpl(0);
    k.charge(k.costs.syscall);
    let r: T;
    try {
      r = yield* typeof body === 'function' ? body() : body;
    } finally {
      t.inKernel--;
      if (t.inKernel === 0) k.machine.cpu(t.cpu).setCpl(3);
    }
    // The return to user mode: a preemption point.
    if (k.sched[t.cpu]!.need_resched(t)) yield PREEMPT;
    if (typeof r === 'number' && r < 0 && r > -4096) throw new SyscallError(name, -r);
    return r;
  }

  private get mm() {
    const mm = this.task.mm;
    if (!mm) throw new SyscallError('mm', EFAULT);
    return mm;
  }

  private get files(): FdTable {
    return groupOf(this.task)!.files;
  }

  // Each system call below is a user-facing method that enters the kernel with syscall() and,
  // mostly, a private `sys_*` generator method holding the kernel side. A method with nothing to
  // do before entering hands back syscall()'s own generator (one generator layer fewer, as the
  // sized loads do); one that reads something first (the mm, say) is a generator itself, so the
  // read still happens when the caller starts it, before the kernel is entered.

  getpid(): KGen<number> {
    return this.syscall('getpid', this.sys_getpid());
  }

  private *sys_getpid(): KGen<number> {
    return this.task.tgid;
  }

  /** mmap(addr, len, prot, flags, fd, offset). Returns the address. */
  *mmap(addr: number, len: number, prot: number, flags: number, fd = -1, offset = 0): KGen<number> {
    const mm = this.mm;
    return yield* this.syscall('mmap', this.sys_mmap(mm, addr, len, prot, flags, fd, offset));
  }

  private *sys_mmap(mm: MmStruct, addr: number, len: number, prot: number, flags: number, fd: number, offset: number): KGen<number> {
    const k = this.k;
    if (!Number.isSafeInteger(offset) || offset < 0) return -EINVAL;
    if (offset % 4096) return -EINVAL;
    let file = null;
    if (!(flags & 0x20 /* MAP_ANONYMOUS */)) {
      file = this.files.get(fd);
      if (!file) return -EBADF;
    }
    // vm_mmap_pgoff: do_mmap under the write lock, then (MAP_POPULATE, VM_LOCKED) mm_populate
    // with the lock dropped, whose errors mmap(2) does not report.
    const populate = { len: 0 };
    let ret: number;
    yield* k.locks.mmap_write_lock(mm, 'vm_mmap_pgoff');
    try {
      ret = yield* do_mmap(k, mm, file, addr, len, prot, flags, offset / 4096, populate);
    } finally {
      k.locks.mmap_write_unlock(mm);
    }
    if (populate.len) yield* mm_populate(k, mm, ret, populate.len);
    return ret;
  }

  *munmap(addr: number, len: number): KGen<number> {
    const mm = this.mm;
    return yield* this.syscall('munmap', sys_munmap(this.k, mm, addr, len));
  }

  *mprotect(addr: number, len: number, prot: number): KGen<number> {
    const mm = this.mm;
    return yield* this.syscall('mprotect', do_mprotect_pkey(this.k, mm, addr, len, prot));
  }

  *mremap(addr: number, oldLen: number, newLen: number, flags: number, newAddr = 0): KGen<number> {
    const mm = this.mm;
    return yield* this.syscall('mremap', do_mremap(this.k, mm, addr, oldLen, newLen, flags, newAddr));
  }

  *madvise(addr: number, len: number, advice: number): KGen<number> {
    const mm = this.mm;
    return yield* this.syscall('madvise', do_madvise(this.k, mm, addr, len, advice));
  }

  /** fork: the child runs `child` in a copy of this process; returns the child's pid. */
  fork(child: Program, comm?: string): KGen<number> {
    return this.syscall('fork', this.sys_fork(child, comm));
  }

  private *sys_fork(child: Program, comm: string | undefined): KGen<number> {
    const k = this.k;
    const t = this.task;
    const mm = yield* dup_mm(k, this.mm);
    if (typeof mm === 'number') return mm;
    const g = groupOf(t)!;
    const c = k.startProcess(child, { comm: comm ?? t.comm, mm, files: g.files.dup(), parent: g.tgid, cpu: undefined, allowed: t.allowed });
    return c.pid;
  }

  /** A thread of this process running `body`; returns its tid. */
  clone(body: Program, opts: { comm?: string; cpu?: number } = {}): KGen<number> {
    return this.syscall('clone', this.sys_clone(body, opts));
  }

  private *sys_clone(body: Program, opts: { comm?: string; cpu?: number }): KGen<number> {
    const t = this.task;
    const mm = this.mm;
    mmget(mm);
    const g = groupOf(t)!;
    const th = this.k.startThread(g, body, { comm: opts.comm ?? t.comm, mm, cpu: opts.cpu });
    return th.pid;
  }

  /** exit: never returns. */
  *exit(code = 0): KGen<never> {
    throw new ExitRequest(code);
  }

  /** waitpid for a child process; returns its exit code. */
  *wait(pid: number): KGen<number> {
    const g = groupOf(this.task)!;
    return yield* this.syscall('wait4', sys_wait4(this.k, g, pid));
  }

  /** open a device or file by path; returns the fd. */
  open(path: string): KGen<number> {
    return this.syscall('open', this.sys_open(path));
  }

  private *sys_open(path: string): KGen<number> {
    const dev = this.k.devices.get(path);
    if (!dev) return -ENOENT;
    const r = dev.open(this.task);
    const f = typeof r === 'object' && r !== null && 'next' in r ? yield* r : r;
    if (typeof f === 'number') return f;
    return this.files.install(f);
  }

  close(fd: number): KGen<number> {
    return this.syscall('close', this.sys_close(fd));
  }

  private *sys_close(fd: number): KGen<number> {
    return this.files.close(fd);
  }

  /** ioctl(fd, cmd, arg): the driver's unlocked_ioctl. */
  ioctl(fd: number, cmd: number, arg?: unknown): KGen<number> {
    return this.syscall('ioctl', this.sys_ioctl(fd, cmd, arg));
  }

  private *sys_ioctl(fd: number, cmd: number, arg: unknown): KGen<number> {
    const f = this.files.get(fd);
    if (!f) return -EBADF;
    if (!f.f_op.ioctl) return -25; // ENOTTY
    const r = f.f_op.ioctl(f, cmd, arg);
    return typeof r === 'number' ? r : yield* r;
  }

  /** Read from a file descriptor (pipes). */
  readFd(fd: number, len: number): KGen<Uint8Array> {
    return this.syscall('read', this.sys_read(fd, len)) as KGen<Uint8Array>;
  }

  private *sys_read(fd: number, len: number): KGen<Uint8Array | number> {
    const f = this.files.get(fd);
    if (!f) return -EBADF;
    if (!f.f_op.read) return -EINVAL;
    const x = f.f_op.read(f, len);
    return x instanceof Uint8Array || typeof x === 'number' ? x : yield* x;
  }

  /** Write to a file descriptor (pipes). */
  writeFd(fd: number, data: Uint8Array): KGen<number> {
    return this.syscall('write', this.sys_write(fd, data));
  }

  private *sys_write(fd: number, data: Uint8Array): KGen<number> {
    const f = this.files.get(fd);
    if (!f) return -EBADF;
    if (!f.f_op.write) return -EINVAL;
    const x = f.f_op.write(f, data);
    return typeof x === 'number' ? x : yield* x;
  }

  /** pipe2: returns [read fd, write fd]. */
  pipe(flags = 0): KGen<[number, number]> {
    return this.syscall('pipe2', this.sys_pipe2(flags)) as KGen<[number, number]>;
  }

  private *sys_pipe2(flags: number): KGen<[number, number] | number> {
    if (flags & ~O_NONBLOCK) return -EINVAL;
    const [rf, wf] = create_pipe_files(this.k, flags);
    const rfd = this.files.install(rf);
    if (rfd < 0) {
      rf.put();
      wf.put();
      return rfd;
    }
    const wfd = this.files.install(wf);
    if (wfd < 0) {
      this.files.close(rfd);
      wf.put();
      return wfd;
    }
    return [rfd, wfd] as [number, number];
  }

  /** vmsplice(fd, iov, flags): queue user pages into a pipe without copying; returns bytes. */
  vmsplice(fd: number, iov: readonly { base: number; len: number }[], flags = 0): KGen<number> {
    return this.syscall('vmsplice', this.sys_vmsplice(fd, iov, flags));
  }

  private *sys_vmsplice(fd: number, iov: readonly { base: number; len: number }[], flags: number): KGen<number> {
    const f = this.files.get(fd);
    if (!f) return -EBADF;
    const pipe = get_pipe_info(f);
    if (!pipe || !isPipeWriter(f)) return -EBADF;
    if (!Array.isArray(iov)) return -EFAULT;
    return yield* pipe.vmsplice(iov, flags);
  }

  /** userfaultfd(flags): returns the fd of a new context for this process's mm. */
  userfaultfd(flags = 0): KGen<number> {
    return this.syscall('userfaultfd', this.sys_userfaultfd(flags));
  }

  private *sys_userfaultfd(flags: number): KGen<number> {
    const f = new_userfaultfd(this.k, this.task, flags);
    if (typeof f === 'number') return f;
    const fd = this.files.install(f);
    if (fd < 0) f.put();
    return fd;
  }

  /** sched_yield. */
  *yield(): KGen {
    yield PREEMPT;
  }

  /**
   * Compute for `cycles` of virtual time without touching memory (work in registers and caches):
   * the CPU stays busy in this mm, taking interrupts and ticks, and may be preempted.
   */
  *compute(cycles: number): KGen {
    if (!Number.isFinite(cycles) || cycles < 0) throw new RangeError(`compute: cycles must be a finite number >= 0, got ${String(cycles)}`);
    yield { kind: 'busy', until: this.k.machine.cpu(this.task.cpu).cycles + cycles };
  }

  /** Sleep `cycles` of virtual time (nanosleep). */
  *sleep(cycles: number): KGen {
    yield* this.syscall('nanosleep', sys_nanosleep(this.k, cycles));
  }

  /**
   * Give the kernel an arbitrary generator to run as a syscall (for drivers' extra entry points).
   * `body` is called inside the kernel, after the entry: it may be a plain function that does
   * work before it returns its generator.
   */
  *call<T>(name: string, body: (k: Kernel, t: Task) => KGen<T>): KGen<T> {
    const k = this.k;
    const t = this.task;
    return yield* this.syscall(name, () => body(k, t));
  }
}

// System call bodies that need nothing of the calling User but what they are given.

function* sys_munmap(k: Kernel, mm: MmStruct, addr: number, len: number): KGen<number> {
  yield* k.locks.mmap_write_lock(mm, '__vm_munmap');
  // munmap downgrades to a read lock while zapping; release whichever it holds at the end.
  const r = yield* do_vmi_munmap(k, mm, addr, len, true);
  if (mm.mmap_lock.heldBy(k.current, 'write')) k.locks.mmap_write_unlock(mm);
  else k.locks.mmap_read_unlock(mm);
  return r;
}

function* sys_wait4(k: Kernel, g: ThreadGroup, pid: number): KGen<number> {
  if (!g.children.has(pid)) return -ECHILD;
  yield* g.exited.waitEvent(k, () => g.zombies.has(pid), `wait4(${pid})`);
  const code = g.zombies.get(pid)!;
  g.zombies.delete(pid);
  g.children.delete(pid);
  return code;
}

function* sys_nanosleep(k: Kernel, cycles: number): KGen<number> {
  yield* k.sleepFor(cycles);
  return 0;
}

export { ENOMEM, ThreadGroup, do_exit };
