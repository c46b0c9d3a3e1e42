/**
 * kernel/fs/userfaultfd.ts — a minimal userfaultfd (fs/userfaultfd.c): missing-page faults of a
 * registered range are delivered to a handler program through a file descriptor.
 *
 *   userfaultfd(flags)             a context bound to the caller's mm (an anonymous-inode file).
 *   UFFDIO_API                     must come first (other ioctls and read() give EINVAL before).
 *   UFFDIO_REGISTER                MISSING mode only: every VMA in the range must be one userfaultfd
 *                                  supports — anonymous, shmem or hugetlb (vma_can_userfault; so
 *                                  VM_PFNMAP and VM_MIXEDMAP driver mappings are refused with
 *                                  EINVAL), have VM_MAYWRITE (EPERM) and not belong to another
 *                                  context (EBUSY); VMAs are split at the range ends and marked
 *                                  VM_UFFD_MISSING with vm_userfaultfd_ctx set.
 *   UFFDIO_UNREGISTER, UFFDIO_WAKE, UFFDIO_COPY, UFFDIO_ZEROPAGE (kernel/mm/userfaultfd.ts).
 *   read()                         one 32-byte struct uffd_msg per pending fault (EAGAIN when
 *                                  none and O_NONBLOCK); close() unregisters everything and wakes
 *                                  every waiter.
 *
 * handle_userfault: a missing fault in a registered VMA queues a message, releases the VMA or
 * mmap lock the fault holds, sleeps until UFFDIO_COPY/ZEROPAGE/WAKE covers the address (or the
 * context is released), and returns VM_FAULT_RETRY, so the fault is retried and finds the page.
 * Without FAULT_FLAG_ALLOW_RETRY (e.g. GUP that cannot drop the lock) it is SIGBUS, as in Linux.
 *
 * The state this makes testable (the November 2024 review): a VMA that has a userfaultfd
 * context must never gain VM_MIXEDMAP; vm_insert_page reports it if it would (memory.ts).
 *
 * Deviations: MISSING mode only (no WP/MINOR), no non-cooperative events (fork, remap, remove,
 * unmap), fork drops the context in the child (as without UFFD_FEATURE_EVENT_FORK), no poll();
 * registering and unregistering split VMAs at the range ends but do not merge them with
 * neighbours afterwards (Linux's vma_modify_flags_uffd may).
 */

import type { Kernel } from '../kernel.ts';
import type { KGen, Task } from '../sched/core.ts';
import { File, type FileOperations } from './file.ts';
import { anon_inode_create_getfile } from './anon_inodes.ts';
import { WaitQueue } from '../sched/wait.ts';
import {
  FAULT_FLAG_ALLOW_RETRY, FAULT_FLAG_VMA_LOCK, FAULT_FLAG_WRITE, MMAP_MIN_ADDR, PAGE_SIZE, TASK_SIZE, VM_FAULT_RETRY, VM_FAULT_SIGBUS,
  VM_HUGETLB, VM_MAYWRITE, VM_UFFD_MISSING, VM_UFFD_WP, type MmStruct, type VmArea, type VmFault,
} from '../mm/mm_types.ts';
import { mfill_atomic } from '../mm/userfaultfd.ts';
import { copy_from_user } from '../arch/x86/uaccess.ts';
import { mmget_not_zero, mmgrab, mmdrop, mmput } from '../fork.ts';
import { EAGAIN, EBUSY, EFAULT, EINVAL, ENOMEM, EPERM, ESRCH } from '../errno.ts';

export const UFFD_API = 0xaa;
export const O_CLOEXEC = 0o2000000;
export const O_NONBLOCK = 0o4000;
export const UFFD_USER_MODE_ONLY = 1;
/** ioctl numbers (_IOWR(0xAA, nr, struct)) as in include/uapi/linux/userfaultfd.h. */
export const UFFDIO_API = 0xc018aa3f;
export const UFFDIO_REGISTER = 0xc020aa00;
export const UFFDIO_UNREGISTER = 0x8010aa01;
export const UFFDIO_WAKE = 0x8010aa02;
export const UFFDIO_COPY = 0xc028aa03;
export const UFFDIO_ZEROPAGE = 0xc020aa04;
export const UFFDIO_REGISTER_MODE_MISSING = 1 << 0;
export const UFFDIO_REGISTER_MODE_WP = 1 << 1;
export const UFFDIO_REGISTER_MODE_MINOR = 1 << 2;
export const UFFDIO_COPY_MODE_DONTWAKE = 1 << 0;
export const UFFDIO_ZEROPAGE_MODE_DONTWAKE = 1 << 0;
export const UFFD_EVENT_PAGEFAULT = 0x12;
export const UFFD_PAGEFAULT_FLAG_WRITE = 1 << 0;
export const UFFD_FEATURE_SIGBUS = 1 << 7;
export const UFFD_FEATURE_THREAD_ID = 1 << 8;
export const UFFD_FEATURE_EXACT_ADDRESS = 1 << 11;
/** Features this model offers. */
export const UFFD_API_FEATURES = UFFD_FEATURE_SIGBUS | UFFD_FEATURE_THREAD_ID | UFFD_FEATURE_EXACT_ADDRESS;
/** _UFFDIO_* bits returned in uffdio_api.ioctls and uffdio_register.ioctls. */
export const UFFD_API_IOCTLS = (1 << 0x3f) >>> 0 | (1 << 0x00) | (1 << 0x01);
export const UFFD_API_RANGE_IOCTLS = (1 << 0x02) | (1 << 0x03) | (1 << 0x04);
export const UFFD_API_RANGE_IOCTLS_BASIC = (1 << 0x02) | (1 << 0x03);
/** sizeof(struct uffd_msg). */
export const UFFD_MSG_SIZE = 32;

export interface UffdioRange {
  start: number;
  len: number;
}

interface PendingFault {
  address: number;
  flags: number;
  ptid: number;
  /** Read by the handler already (no longer returned by read()). */
  delivered: boolean;
  woken: boolean;
  readonly wq: WaitQueue;
}

export interface UffdCounters {
  faults: number;
  copies: number;
  zeropages: number;
  wakes: number;
}

/** struct userfaultfd_ctx. */
export class UserfaultfdCtx {
  /** UFFDIO_API done. */
  apiDone = false;
  features = 0;
  released = false;
  readonly pending: PendingFault[] = [];
  readonly fault_pending_wqh = new WaitQueue('userfaultfd_read');
  readonly counters: UffdCounters = { faults: 0, copies: 0, zeropages: 0, wakes: 0 };

  constructor(
    readonly k: Kernel,
    /** The mm it serves (mmgrab'd, as Linux's ctx->mm). */
    readonly mm: MmStruct,
    readonly flags: number,
  ) {}

  /** Wake the faults waiting inside [start, start + len). */
  wakeRange(start: number, len: number): number {
    let n = 0;
    for (let i = 0; i < this.pending.length; ) {
      const f = this.pending[i]!;
      if (f.address >= start && f.address < start + len) {
        f.woken = true;
        f.wq.wakeAll(this.k);
        this.pending.splice(i, 1);
        n++;
      } else i++;
    }
    this.counters.wakes += n;
    return n;
  }
}

function ctxOf(f: File): UserfaultfdCtx {
  return f.private_data as UserfaultfdCtx;
}

/**
 * handle_userfault for a missing page: queue the fault, drop the fault's lock, sleep until the
 * handler fills the page (or the context goes), then ask for a retry.
 */
function* handle_userfault(k: Kernel, vmf: VmFault): KGen<number> {
  const vma = vmf.vma;
  const ctx = vma.vm_userfaultfd_ctx as UserfaultfdCtx;
  if (!(vma.vm_flags & VM_UFFD_MISSING)) return VM_FAULT_SIGBUS;
  if (ctx.released || ctx.features & UFFD_FEATURE_SIGBUS) return VM_FAULT_SIGBUS;
  if (!(vmf.flags & FAULT_FLAG_ALLOW_RETRY)) return VM_FAULT_SIGBUS;
  const t = k.current as Task;
  const f: PendingFault = {
    address: vmf.address,
    flags: vmf.flags & FAULT_FLAG_WRITE ? UFFD_PAGEFAULT_FLAG_WRITE : 0,
    ptid: ctx.features & UFFD_FEATURE_THREAD_ID ? t.pid : 0,
    delivered: false,
    woken: false,
    wq: new WaitQueue('handle_userfault'),
  };
  ctx.pending.push(f);
  ctx.counters.faults++;
  ctx.fault_pending_wqh.wakeAll(k);
  // release_fault_lock
  if (vmf.flags & FAULT_FLAG_VMA_LOCK) k.locks.vma_end_read(vma);
  else k.locks.mmap_read_unlock(vma.vm_mm);
  yield* f.wq.waitEvent(k, () => f.woken || ctx.released, 'handle_userfault');
  return VM_FAULT_RETRY;
}

/** vma_can_userfault: anonymous, shmem or hugetlb VMAs only. */
export function vma_can_userfault(vma: VmArea): boolean {
  const shmem = vma.vm_file?.f_inode.kind === 'shmem';
  return vma.isAnonymous() || (vma.vm_flags & VM_HUGETLB) !== 0 || shmem;
}

/** validate_range. */
function validate_range(start: number, len: number): number {
  if (!Number.isSafeInteger(start) || !Number.isSafeInteger(len)) return -EINVAL;
  if (start % PAGE_SIZE || len % PAGE_SIZE || len <= 0) return -EINVAL;
  if (start < MMAP_MIN_ADDR || start >= TASK_SIZE || len > TASK_SIZE - start) return -EINVAL;
  return 0;
}

function isRange(x: unknown): x is UffdioRange {
  return typeof x === 'object' && x !== null && typeof (x as UffdioRange).start === 'number' && typeof (x as UffdioRange).len === 'number';
}

/** userfaultfd_register: attach `ctx` to the VMAs of [start, start + len). */
function* userfaultfd_register(k: Kernel, ctx: UserfaultfdCtx, arg: { range?: unknown; mode?: unknown; ioctls?: number }): KGen<number> {
  if (!isRange(arg.range) || typeof arg.mode !== 'number') return -EFAULT;
  const mode = arg.mode;
  if (!mode || mode & ~(UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP | UFFDIO_REGISTER_MODE_MINOR)) return -EINVAL;
  if (mode & (UFFDIO_REGISTER_MODE_WP | UFFDIO_REGISTER_MODE_MINOR)) return -EINVAL; // only MISSING is modelled
  const { start, len } = arg.range;
  const bad = validate_range(start, len);
  if (bad) return bad;
  const end = start + len;
  const mm = ctx.mm;
  if (!mmget_not_zero(mm)) return -ENOMEM;
  yield* k.locks.mmap_write_lock(mm, 'userfaultfd_register');
  try {
    const vmas = mm.vmasIn(start, end);
    if (vmas.length === 0) return -EINVAL;
    let hugetlb = false;
    for (const cur of vmas) {
      if (!vma_can_userfault(cur)) return -EINVAL;
      if (!(cur.vm_flags & VM_MAYWRITE)) return -EPERM;
      if (cur.vm_userfaultfd_ctx && cur.vm_userfaultfd_ctx !== ctx) return -EBUSY;
      if (cur.vm_flags & VM_HUGETLB) {
        hugetlb = true;
        if (start % (2 << 20) && cur.vm_start < start) return -EINVAL;
        if (end % (2 << 20) && cur.vm_end > end) return -EINVAL;
      }
    }
    // userfaultfd_register_range: split at the ends, set the flags and the context.
    for (const cur of vmas) {
      if (cur.vm_userfaultfd_ctx === ctx && cur.vm_flags & VM_UFFD_MISSING) continue;
      const r = yield* k.vmaOps.modify(cur, Math.max(start, cur.vm_start), Math.min(end, cur.vm_end), (cur.vm_flags | VM_UFFD_MISSING) >>> 0, (v) => {
        v.vm_userfaultfd_ctx = ctx;
      });
      if (typeof r === 'number') return r;
    }
    arg.ioctls = hugetlb ? UFFD_API_RANGE_IOCTLS_BASIC : UFFD_API_RANGE_IOCTLS;
    return 0;
  } finally {
    k.locks.mmap_write_unlock(mm);
    yield* mmput(k, mm);
  }
}

/** userfaultfd_unregister: detach `ctx` from [start, start + len) and wake its faults there. */
function* userfaultfd_unregister(k: Kernel, ctx: UserfaultfdCtx, arg: unknown): KGen<number> {
  if (!isRange(arg)) return -EFAULT;
  const bad = validate_range(arg.start, arg.len);
  if (bad) return bad;
  const end = arg.start + arg.len;
  const mm = ctx.mm;
  if (!mmget_not_zero(mm)) return -ENOMEM;
  yield* k.locks.mmap_write_lock(mm, 'userfaultfd_unregister');
  try {
    for (const cur of mm.vmasIn(arg.start, end)) {
      if (!vma_can_userfault(cur)) return -EINVAL;
      if (!cur.vm_userfaultfd_ctx) continue;
      const r = yield* k.vmaOps.modify(cur, Math.max(arg.start, cur.vm_start), Math.min(end, cur.vm_end), (cur.vm_flags & ~(VM_UFFD_MISSING | VM_UFFD_WP)) >>> 0, (v) => {
        v.vm_userfaultfd_ctx = null;
      });
      if (typeof r === 'number') return r;
    }
  } finally {
    k.locks.mmap_write_unlock(mm);
    yield* mmput(k, mm);
  }
  ctx.wakeRange(arg.start, arg.len);
  return 0;
}

/** UFFDIO_COPY / UFFDIO_ZEROPAGE. `arg.copy` / `arg.zeropage` receive the bytes filled or -errno. */
function* userfaultfd_fill(k: Kernel, ctx: UserfaultfdCtx, arg: Record<string, unknown>, zero: boolean): KGen<number> {
  const dst = zero ? (arg.range as UffdioRange | undefined)?.start : arg.dst;
  const len = zero ? (arg.range as UffdioRange | undefined)?.len : arg.len;
  const mode = arg.mode ?? 0;
  if (typeof dst !== 'number' || typeof len !== 'number' || typeof mode !== 'number') return -EFAULT;
  const bad = validate_range(dst, len);
  if (bad) return bad;
  if (mode & ~UFFDIO_COPY_MODE_DONTWAKE) return -EINVAL;
  let src: Uint8Array | null = null;
  if (!zero) {
    const from = arg.src;
    if (typeof from !== 'number' || !Number.isSafeInteger(from) || from + len <= from) return -EINVAL;
    const bytes = yield* copy_from_user(k, from, len);
    if (typeof bytes === 'number') return bytes;
    src = bytes;
  }
  if (!mmget_not_zero(ctx.mm)) return -ESRCH;
  let res;
  try {
    res = yield* mfill_atomic(k, ctx.mm, ctx, dst, len, src);
  } finally {
    yield* mmput(k, ctx.mm);
  }
  if (zero) ctx.counters.zeropages += res.done / PAGE_SIZE;
  else ctx.counters.copies += res.done / PAGE_SIZE;
  // As userfaultfd_copy: the count (or the error when nothing was filled) goes back to user
  // space; a partial fill wakes what was filled and returns -EAGAIN.
  arg[zero ? 'zeropage' : 'copy'] = res.done > 0 ? res.done : res.err;
  if (res.done === 0) return res.err;
  if (!(mode & UFFDIO_COPY_MODE_DONTWAKE)) ctx.wakeRange(dst, res.done);
  return res.done === len ? 0 : -EAGAIN;
}

const uffdFops: FileOperations = {
  name: 'userfaultfd_fops',
  release(file: File): void {
    const ctx = ctxOf(file);
    const k = ctx.k;
    ctx.released = true;
    // userfaultfd_release: every VMA of the mm forgets the context, waiters retry normally.
    for (const v of ctx.mm.vmas()) {
      if (v.vm_userfaultfd_ctx === ctx) {
        v.vm_userfaultfd_ctx = null;
        v.vm_flags = (v.vm_flags & ~(VM_UFFD_MISSING | VM_UFFD_WP)) >>> 0;
      }
    }
    for (const f of ctx.pending) {
      f.woken = true;
      f.wq.wakeAll(k);
    }
    ctx.pending.length = 0;
    ctx.fault_pending_wqh.wakeAll(k);
    mmdrop(k, ctx.mm);
  },
  *read(file: File, len: number): KGen<Uint8Array | number> {
    const ctx = ctxOf(file);
    const k = ctx.k;
    if (!ctx.apiDone) return -EINVAL;
    if (len < UFFD_MSG_SIZE) return -EINVAL;
    for (;;) {
      const f = ctx.pending.find((x) => !x.delivered);
      if (f) {
        f.delivered = true;
        return encodeUffdMsg(f.address, f.flags, f.ptid);
      }
      if (file.f_flags & O_NONBLOCK) return -EAGAIN;
      yield* ctx.fault_pending_wqh.sleep(k, 'userfaultfd_read');
    }
  },
  *ioctl(file: File, cmd: number, arg: unknown): KGen<number> {
    const ctx = ctxOf(file);
    const k = ctx.k;
    if (typeof arg !== 'object' || arg === null) return -EFAULT;
    const a = arg as Record<string, unknown>;
    if (cmd === UFFDIO_API) {
      if (ctx.apiDone) return -EINVAL;
      if (a.api !== UFFD_API) return -EINVAL;
      const features = typeof a.features === 'number' ? a.features : 0;
      if (features & ~UFFD_API_FEATURES) {
        a.features = 0;
        a.ioctls = 0;
        return -EINVAL;
      }
      ctx.features = features;
      ctx.apiDone = true;
      a.features = UFFD_API_FEATURES;
      a.ioctls = UFFD_API_IOCTLS;
      return 0;
    }
    if (!ctx.apiDone) return -EINVAL;
    switch (cmd) {
      case UFFDIO_REGISTER:
        return yield* userfaultfd_register(k, ctx, a);
      case UFFDIO_UNREGISTER:
        return yield* userfaultfd_unregister(k, ctx, a);
      case UFFDIO_WAKE: {
        if (!isRange(a)) return -EFAULT;
        const bad = validate_range(a.start, a.len);
        if (bad) return bad;
        ctx.wakeRange(a.start, a.len);
        return 0;
      }
      case UFFDIO_COPY:
        return yield* userfaultfd_fill(k, ctx, a, false);
      case UFFDIO_ZEROPAGE:
        return yield* userfaultfd_fill(k, ctx, a, true);
      default:
        return -EINVAL;
    }
  },
};

/** struct uffd_msg for a page fault: event, then pagefault.{flags, address, feat.ptid}. */
export function encodeUffdMsg(address: number, flags: number, ptid: number): Uint8Array {
  const b = new Uint8Array(UFFD_MSG_SIZE);
  const v = new DataView(b.buffer);
  v.setUint8(0, UFFD_EVENT_PAGEFAULT);
  v.setBigUint64(8, BigInt(flags), true);
  v.setBigUint64(16, BigInt(address), true);
  v.setUint32(24, ptid, true);
  return b;
}

export interface UffdMsg {
  event: number;
  flags: number;
  address: number;
  ptid: number;
}

/** Decode a struct uffd_msg (for handler programs). */
export function parseUffdMsg(b: Uint8Array): UffdMsg {
  if (b.length < UFFD_MSG_SIZE) throw new RangeError(`a uffd_msg is ${UFFD_MSG_SIZE} bytes, got ${b.length}`);
  const v = new DataView(b.buffer, b.byteOffset, b.length);
  return { event: v.getUint8(0), flags: Number(v.getBigUint64(8, true)), address: Number(v.getBigUint64(16, true)), ptid: v.getUint32(24, true) };
}

/** The userfaultfd subsystem: the fault hook memory.ts calls. */
class UserfaultfdSubsystem {
  handleMissing(k: Kernel, vmf: VmFault): KGen<number> {
    return handle_userfault(k, vmf);
  }
}

/** userfaultfd(flags): a new context for `task`'s mm. Returns the file or -errno. */
export function new_userfaultfd(k: Kernel, task: Task, flags: number): File | number {
  if (flags & ~(O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY)) return -EINVAL;
  const mm = task.mm;
  if (!mm) return -EINVAL;
  if (!k.subsystems.has('userfaultfd')) k.subsystems.set('userfaultfd', new UserfaultfdSubsystem());
  const ctx = new UserfaultfdCtx(k, mm, flags);
  mmgrab(mm);
  // Linux 6.7+: anon_inode_create_getfile (an inode per context).
  const f = anon_inode_create_getfile(k, '[userfaultfd]', uffdFops, ctx, flags & O_NONBLOCK);
  return f;
}

/** The context behind a userfaultfd file, or null. */
export function userfaultfdCtx(f: File): UserfaultfdCtx | null {
  return f.f_op === uffdFops ? ctxOf(f) : null;
}
