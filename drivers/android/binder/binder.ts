/**
 * drivers/android/binder/binder.ts — the binder driver (drivers/android/binder.c), reduced to
 * what drives the allocator and its page-mapping designs faithfully: open, mmap, the
 * BINDER_WRITE_READ protocol with transactions, replies and buffer frees, a context manager,
 * nodes and handles so clients reach services, oneway ordering per node, dead processes, and
 * binder's tracepoints.
 *
 *   open("/dev/binder")   a binder_proc with its binder_alloc (the design chosen for this process,
 *                         see BinderDevice.designFor) holding an mmgrab on the opener's mm.
 *   mmap                  only the opening process (EINVAL otherwise); VM_WRITE refused (EPERM);
 *                         the design sets the flags (VM_DONTCOPY, VM_MAYWRITE cleared, …); at most
 *                         4 MiB are used; once per open file, ever (EBUSY, even after munmap).
 *   BINDER_WRITE_READ     commands from the write buffer (BC_TRANSACTION, BC_REPLY,
 *                         BC_FREE_BUFFER, BC_ENTER_LOOPER, …), then returns into the read buffer
 *                         (BR_NOOP, BR_TRANSACTION, BR_REPLY, BR_TRANSACTION_COMPLETE,
 *                         BR_DEAD_REPLY, BR_FAILED_REPLY, BR_ONEWAY_SPAM_SUSPECT). Both buffers
 *                         are in user memory and accessed with copy_from_user/copy_to_user.
 *   transactions          the sender allocates the buffer in the target's binder_alloc, copies
 *                         the payload from its own memory through the target's page array (never
 *                         through the user mapping), translates binder objects (a local binder
 *                         becomes a handle in the target, a handle to the target's own node
 *                         becomes the binder), and queues the work. Allocation failures become
 *                         BR_DEAD_REPLY (-ESRCH: the receiver's mapping is gone) or
 *                         BR_FAILED_REPLY. A oneway transaction to a node that already has one
 *                         in flight waits, with its buffer allocated, in the node's async_todo.
 *   BC_FREE_BUFFER        an exact address the receiver was given; others are user errors
 *                         (counted and logged, the command stream goes on, as in Linux).
 *   release               the proc dies: pending synchronous senders get BR_DEAD_REPLY; the
 *                         deferred release (a workqueue) frees buffers and pages and drops the mm.
 *
 * Deviations: no death notifications, no file-descriptor or scatter-gather objects, no
 * priority inheritance, no freeze; strong/weak reference counting of nodes and refs is not
 * modelled (BC_INCREFS/ACQUIRE/RELEASE/DECREFS are accepted and counted; refs live until the
 * process dies); no BR_SPAWN_LOOPER (looper threads are started by user space).
 */

import type { Kernel } from '../../../kernel/kernel.ts';
import type { KGen, Task } from '../../../kernel/sched/core.ts';
import { File, Inode, type FileOperations } from '../../../kernel/fs/file.ts';
import { WaitQueue } from '../../../kernel/sched/wait.ts';
import { VM_WRITE, type VmArea } from '../../../kernel/mm/mm_types.ts';
import { mmdrop, mmgrab } from '../../../kernel/fork.ts';
import { access_ok, copy_from_user, copy_from_user_into, copy_to_user } from '../../../kernel/arch/x86/uaccess.ts';
import { EAGAIN, EFAULT, EINVAL, EPERM, ESRCH } from '../../../kernel/errno.ts';
import { BinderAlloc, type BinderBuffer } from './binder_alloc.ts';
import { createPageMapping, designLabel, nothingBeforeDeliver, type DesignOptions } from './page_mapping.ts';
import {
  BC_ACQUIRE, BC_DECREFS, BC_ENTER_LOOPER, BC_EXIT_LOOPER, BC_FREE_BUFFER, BC_INCREFS, BC_REGISTER_LOOPER, BC_RELEASE, BC_REPLY, BC_TRANSACTION,
  BINDER_CURRENT_PROTOCOL_VERSION, BINDER_ENABLE_ONEWAY_SPAM_DETECTION, BINDER_SET_CONTEXT_MGR, BINDER_SET_MAX_THREADS, BINDER_THREAD_EXIT,
  BINDER_TYPE_BINDER, BINDER_TYPE_HANDLE, BINDER_TYPE_WEAK_BINDER, BINDER_TYPE_WEAK_HANDLE, BINDER_VERSION, BINDER_WRITE_READ, BR_DEAD_REPLY,
  BR_FAILED_REPLY, BR_NAMES, BR_NOOP, BR_ONEWAY_SPAM_SUSPECT, BR_REPLY, BR_TRANSACTION, BR_TRANSACTION_COMPLETE, BTD_SIZE, BWR_SIZE, FLAT_BINDER_OBJECT_SIZE,
  TF_CLEAR_BUF, TF_ONE_WAY, cmdPayloadSize, getU64, decodeFlatBinderObject, encodeFlatBinderObject, readTransactionData,
  setU64, type TransactionData,
} from './uapi.ts';
import { traceBuffer, traceCommand, traceIoctl, traceReturn, traceTransaction, traceTransactionReceived } from './binder_trace.ts';
// Every design registers itself on import.
import './eager.ts';
import './eager_writelock.ts';
import './eager_deferred.ts';
import './fault.ts';
import './pfnmap.ts';

const BINDER_LOOPER_STATE_REGISTERED = 0x01;
const BINDER_LOOPER_STATE_ENTERED = 0x02;
const BINDER_LOOPER_STATE_EXITED = 0x04;

/** A binder object owned by a process (binder_node). */
export class BinderNode {
  readonly debug_id: number;
  has_async_transaction = false;
  readonly async_todo: BinderWork[] = [];

  constructor(
    readonly proc: BinderProc,
    readonly ptr: number,
    readonly cookie: number,
  ) {
    this.debug_id = binderLastId(proc.device.k);
  }
}

/** A process's handle to a node (binder_ref). */
export interface BinderRef {
  desc: number;
  node: BinderNode;
}

/** binder_transaction. */
export class BinderTransaction {
  readonly debug_id: number;
  buffer: BinderBuffer | null = null;
  /** The sending thread for synchronous transactions (null for oneway and replies). */
  from: BinderThread | null;
  to_proc: BinderProc;
  to_thread: BinderThread | null = null;
  /** Older transaction on the sender's stack (from_parent) / receiver's stack (to_parent). */
  from_parent: BinderTransaction | null = null;
  to_parent: BinderTransaction | null = null;
  need_reply = false;

  constructor(
    from: BinderThread | null,
    to_proc: BinderProc,
    readonly reply: boolean,
    readonly code: number,
    readonly flags: number,
    readonly sender_pid: number,
    readonly sender_euid: number,
    readonly target_node: BinderNode | null,
  ) {
    this.debug_id = binderLastId(to_proc.device.k);
    this.from = from;
    this.to_proc = to_proc;
  }
}

/** binder_last_id: the debug ids of nodes and transactions, one sequence per kernel. */
function binderLastId(k: Kernel): number {
  return k.ids.next('binder_last_id');
}

type BinderWork =
  | { type: 'transaction'; t: BinderTransaction }
  | { type: 'transaction_complete'; spam: boolean }
  | { type: 'return_error'; cmd: number };

/** Buffers up to this size are the thread's own, reused; larger ones are allocated per call. */
const THREAD_BUF_REUSE = 64 * 1024;

/**
 * A byte buffer a binder thread reuses from one ioctl to the next, with a DataView over it and
 * its prefixes as views: a fresh small typed array, a DataView over it, or a subarray of it
 * costs V8 more than the copies they serve.
 */
class ThreadBuffer {
  bytes = new Uint8Array(0);
  view = new DataView(this.bytes.buffer);
  /** bytes' first n bytes, by n (kept until bytes is replaced). */
  private prefixes: Uint8Array[] = [];

  /** The buffer, grown to hold at least n bytes. */
  fit(n: number): Uint8Array {
    if (this.bytes.length < n) {
      this.bytes = new Uint8Array(n);
      this.view = new DataView(this.bytes.buffer);
      this.prefixes = [];
    }
    return this.bytes;
  }

  /** The first n bytes, as a view. */
  prefix(n: number): Uint8Array {
    return (this.prefixes[n] ??= this.bytes.subarray(0, n));
  }
}

/** binder_thread. */
export class BinderThread {
  readonly todo: BinderWork[] = [];
  readonly wait: WaitQueue;
  looper = 0;
  transaction_stack: BinderTransaction | null = null;
  dead = false;
  /**
   * The return stream binder_thread_read builds before copy_to_user, and the struct
   * binder_write_read binder_ioctl writes back: kept per thread and reused (a thread is in at
   * most one ioctl at a time, so nothing else touches them while a copy waits on a fault).
   */
  readonly readBuf = new ThreadBuffer();
  readonly bwrBuf = new Uint8Array(BWR_SIZE);
  readonly bwrView = new DataView(this.bwrBuf.buffer);
  /** The command stream binder_thread_write copies in and parses, reused likewise. */
  readonly writeBuf = new ThreadBuffer();
  /** write_consumed / read_consumed while binder_ioctl runs (reused as bwrBuf is). */
  readonly writeConsumed = { value: 0 };
  readonly readConsumed = { value: 0 };

  constructor(
    readonly proc: BinderProc,
    readonly task: Task,
  ) {
    this.wait = new WaitQueue(`binder_thread ${task.pid}`);
  }

  get pid(): number {
    return this.task.pid;
  }
}

/** binder_proc: one per open of /dev/binder. */
export class BinderProc {
  readonly threads = new Map<number, BinderThread>();
  readonly nodes = new Map<number, BinderNode>();
  readonly refsByDesc = new Map<number, BinderRef>();
  readonly refsByNode = new Map<BinderNode, BinderRef>();
  readonly todo: BinderWork[] = [];
  /** Threads waiting for process work. */
  readonly wait = new WaitQueue('binder_proc');
  max_threads = 0;
  is_dead = false;
  /**
   * tmp_ref: transactions in flight toward this process. The deferred release frees the
   * allocator only once none is left (binder_proc_dec_tmpref → binder_free_proc), since a
   * sender copies into the target's buffer without any lock the release takes.
   */
  tmp_ref = 0;
  /** Released while transactions were in flight: binder_free_proc runs when the last one ends. */
  free_pending = false;
  oneway_spam_detection_enabled = false;
  readonly alloc: BinderAlloc;

  constructor(
    readonly device: BinderDevice,
    /** tgid of the opener. */
    readonly pid: number,
    readonly design: DesignOptions,
    mm: import('../../../kernel/mm/mm_types.ts').MmStruct | null,
  ) {
    this.alloc = new BinderAlloc(device.k, pid, mm, createPageMapping(design));
  }

  /** A ref (handle) in this process for `node`, created if needed (handle 0 is the context manager's). */
  refFor(node: BinderNode): BinderRef {
    let r = this.refsByNode.get(node);
    if (r) return r;
    // get_ref_desc_olocked: 0 is reserved for the context manager, but a desc already in use
    // is never reused (a ref to an earlier context manager keeps 0; the new one gets the next).
    const isMgr = node === this.device.contextManager;
    let desc = isMgr ? 0 : 1;
    while (this.refsByDesc.has(desc)) desc++;
    r = { desc, node };
    this.refsByNode.set(node, r);
    this.refsByDesc.set(desc, r);
    return r;
  }
}

export interface BinderStats {
  transactions: number;
  oneway: number;
  replies: number;
  deadReplies: number;
  failedReplies: number;
  spamSuspects: number;
  userErrors: number;
  /** Commands by name. */
  bc: Record<string, number>;
  br: Record<string, number>;
}

export interface BinderDeviceOptions {
  /** The design for processes without their own choice (default: eager with `mapped`). */
  design?: DesignOptions;
  /** Per-process choices by comm (process name). */
  perProcess?: Record<string, DesignOptions>;
  /** Device path (default /dev/binder). */
  path?: string;
}

/** The binder device: options, the context manager, statistics. */
export class BinderDevice {
  contextManager: BinderNode | null = null;
  readonly procs = new Set<BinderProc>();
  readonly stats: BinderStats = { transactions: 0, oneway: 0, replies: 0, deadReplies: 0, failedReplies: 0, spamSuspects: 0, userErrors: 0, bc: {}, br: {} };
  /** binder_user_error messages (bounded). */
  readonly log: string[] = [];
  readonly defaultDesign: DesignOptions;
  readonly perProcess: Record<string, DesignOptions>;
  readonly path: string;
  private readonly inode: Inode;

  constructor(
    readonly k: Kernel,
    opts: BinderDeviceOptions = {},
  ) {
    if (typeof opts !== 'object' || opts === null) throw new TypeError('binder device options must be an object');
    for (const key of Object.keys(opts)) if (!['design', 'perProcess', 'path'].includes(key)) throw new RangeError(`unknown binder device option "${key}" (known: design, perProcess, path)`);
    const path = opts.path ?? '/dev/binder';
    if (typeof path !== 'string' || !path.startsWith('/dev/')) throw new RangeError(`binder device path must be a string under /dev/, got ${JSON.stringify(path)}`);
    if (k.devices.has(path)) throw new RangeError(`a device is already registered at ${path}`);
    this.defaultDesign = opts.design ?? { design: 'eager', identity: 'mapped' };
    // Validate every design now (a bad name fails here, not at the first open).
    createPageMapping(this.defaultDesign);
    this.perProcess = { ...opts.perProcess };
    for (const d of Object.values(this.perProcess)) createPageMapping(d);
    this.path = path;
    this.inode = new Inode(k, 'chr', [10, 58]);
    k.devices.set(this.path, { open: (t) => this.open(t) });
  }

  /** The design a process gets: its own choice by comm, else the device default. */
  designFor(t: Task): DesignOptions {
    return this.perProcess[t.comm] ?? this.defaultDesign;
  }

  userError(msg: string): void {
    this.stats.userErrors++;
    if (this.log.length < 1000) this.log.push(`binder: ${msg}`);
  }

  /** binder_open. */
  open(t: Task): File | number {
    const k = this.k;
    const mm = t.mm;
    if (mm) mmgrab(mm);
    const proc = new BinderProc(this, t.tgid, this.designFor(t), mm);
    this.procs.add(proc);
    const f = new File(k, this.inode, binderFops, this.path);
    f.private_data = proc;
    proc.alloc.mapping.open?.(proc.alloc, f);
    return f;
  }

  /** Procs by tgid (for experiments). */
  procOf(pid: number): BinderProc | null {
    for (const p of this.procs) if (p.pid === pid && !p.is_dead) return p;
    return null;
  }

  /** The shrinker: reclaim up to `nr` LRU pages (binder_shrink_scan). Returns pages freed. */
  *shrink(nr: number): KGen<number> {
    const lru = this.procs.values().next().value?.alloc.lru;
    if (!lru) return 0;
    return yield* lru.walk(nr);
  }
}

function procOf(f: File): BinderProc {
  return f.private_data as BinderProc;
}

/** binder_get_thread: the calling task's binder_thread, created on first use. */
function getThread(proc: BinderProc, t: Task): BinderThread {
  let th = proc.threads.get(t.pid);
  if (!th) {
    th = new BinderThread(proc, t);
    proc.threads.set(t.pid, th);
  }
  return th;
}

// ==============================================================================================
// mmap
// ==============================================================================================

function* binder_mmap(file: File, vma: VmArea): KGen<number> {
  const proc = procOf(file);
  const k = proc.device.k;
  if (k.current?.tgid !== proc.pid) return -EINVAL;
  if (vma.vm_flags & VM_WRITE) {
    proc.device.userError(`${proc.pid} binder_mmap: ${vma.vm_start.toString(16)}-${vma.vm_end.toString(16)} bad vm_flags failed -1`);
    return -EPERM;
  }
  const r = proc.alloc.mapping.setupVma(proc.alloc, vma, file);
  if (r) return r;
  return yield* proc.alloc.mmap_handler(vma);
}

// ==============================================================================================
// Writing: commands
// ==============================================================================================

function* binder_thread_write(proc: BinderProc, thread: BinderThread, buf: number, size: number, consumed: { value: number }): KGen<number> {
  const k = proc.device.k;
  const st = proc.device.stats;
  if (consumed.value >= size) return 0;
  const len = size - consumed.value;
  if (!access_ok(buf + consumed.value, len)) return -EFAULT;
  const wb = thread.writeBuf;
  const bytes = len <= THREAD_BUF_REUSE ? wb.fit(len) : new Uint8Array(len);
  const v = bytes === wb.bytes ? wb.view : new DataView(bytes.buffer);
  if ((yield* copy_from_user_into(k, bytes, buf + consumed.value, len)) < 0) return -EFAULT;
  let p = 0;
  while (p + 4 <= len) {
    const cmd = v.getUint32(p, true);
    const need = cmdPayloadSize(cmd);
    if (p + 4 + need > len) return -EFAULT;
    traceCommand(k, cmd);
    switch (cmd) {
      case BC_TRANSACTION:
      case BC_REPLY: {
        const tr = readTransactionData(v, p + 4);
        p += 4 + BTD_SIZE;
        consumed.value += 4 + BTD_SIZE;
        if (cmd === BC_REPLY) st.bc.BC_REPLY = (st.bc.BC_REPLY ?? 0) + 1;
        else st.bc.BC_TRANSACTION = (st.bc.BC_TRANSACTION ?? 0) + 1;
        yield* binder_transaction(proc, thread, tr, cmd === BC_REPLY);
        break;
      }
      case BC_FREE_BUFFER: {
        const ptr = getU64(v, p + 4);
        p += 12;
        consumed.value += 12;
        st.bc.BC_FREE_BUFFER = (st.bc.BC_FREE_BUFFER ?? 0) + 1;
        const buffer = yield* proc.alloc.prepare_to_free(ptr);
        if (buffer === null) {
          proc.device.userError(`${proc.pid}:${thread.pid} BC_FREE_BUFFER u${ptr.toString(16).padStart(16, '0')} no match`);
          break;
        }
        if (typeof buffer === 'number') {
          proc.device.userError(`${proc.pid}:${thread.pid} BC_FREE_BUFFER u${ptr.toString(16).padStart(16, '0')} matched unreturned or currently freeing buffer`);
          break;
        }
        yield* binder_free_buf(proc, buffer);
        break;
      }
      case BC_INCREFS:
      case BC_ACQUIRE:
      case BC_RELEASE:
      case BC_DECREFS: {
        p += 8;
        consumed.value += 8;
        st.bc.refcount = (st.bc.refcount ?? 0) + 1;
        break;
      }
      case BC_REGISTER_LOOPER:
        thread.looper |= BINDER_LOOPER_STATE_REGISTERED;
        p += 4;
        consumed.value += 4;
        break;
      case BC_ENTER_LOOPER:
        thread.looper |= BINDER_LOOPER_STATE_ENTERED;
        p += 4;
        consumed.value += 4;
        break;
      case BC_EXIT_LOOPER:
        thread.looper |= BINDER_LOOPER_STATE_EXITED;
        p += 4;
        consumed.value += 4;
        break;
      default:
        proc.device.userError(`${proc.pid}:${thread.pid} unknown command 0x${cmd.toString(16)}`);
        return -EINVAL;
    }
  }
  return 0;
}

/** binder_free_buf: release a buffer the receiver is done with. */
function* binder_free_buf(proc: BinderProc, buffer: BinderBuffer): KGen {
  const k = proc.device.k;
  const t = buffer.transaction as BinderTransaction | null;
  if (t) {
    t.buffer = null;
    buffer.transaction = null;
  }
  // The next oneway transaction of the node may now be delivered.
  const node = buffer.target_node as BinderNode | null;
  if (buffer.async_transaction && node) {
    const w = node.async_todo.shift();
    if (!w) node.has_async_transaction = false;
    else {
      proc.todo.push(w);
      proc.wait.wakeOne(k);
    }
  }
  traceBuffer(k, 'binder_transaction_buffer_release', buffer.debug_id, buffer.data_size, buffer.offsets_size, buffer.extra_buffers_size);
  yield* proc.alloc.free_buf(buffer);
}

/** Queue an error for the sending thread (thread->return_error). */
function returnError(thread: BinderThread, cmd: number): void {
  const st = thread.proc.device.stats;
  if (cmd === BR_DEAD_REPLY) st.deadReplies++;
  else st.failedReplies++;
  thread.todo.push({ type: 'return_error', cmd });
  thread.wait.wakeAll(thread.proc.device.k);
}

/** binder_translate_binder / binder_translate_handle for every object in the new buffer. */
function translateObjects(proc: BinderProc, target: BinderProc, buffer: BinderBuffer, dataSize: number, offsetsSize: number): boolean {
  const alloc = target.alloc;
  const offStart = Math.ceil(dataSize / 8) * 8;
  const offs = alloc.copy_from_buffer(buffer, offStart, offsetsSize);
  if (!offs) return false;
  const ov = new DataView(offs.buffer, offs.byteOffset, offs.length);
  let lastEnd = 0;
  for (let i = 0; i + 8 <= offsetsSize; i += 8) {
    const off = getU64(ov, i);
    if (off < lastEnd || off + FLAT_BINDER_OBJECT_SIZE > dataSize || off % 4) return false;
    lastEnd = off + FLAT_BINDER_OBJECT_SIZE;
    const raw = alloc.copy_from_buffer(buffer, off, FLAT_BINDER_OBJECT_SIZE);
    if (!raw) return false;
    const o = decodeFlatBinderObject(raw);
    if (o.type === BINDER_TYPE_BINDER || o.type === BINDER_TYPE_WEAK_BINDER) {
      let node = proc.nodes.get(o.binder);
      if (!node) {
        node = new BinderNode(proc, o.binder, o.cookie);
        proc.nodes.set(o.binder, node);
      }
      const ref = target.refFor(node);
      const out = encodeFlatBinderObject({ type: o.type === BINDER_TYPE_BINDER ? BINDER_TYPE_HANDLE : BINDER_TYPE_WEAK_HANDLE, flags: o.flags, binder: ref.desc, cookie: 0 });
      if (!alloc.copy_to_buffer(buffer, off, out)) return false;
    } else if (o.type === BINDER_TYPE_HANDLE || o.type === BINDER_TYPE_WEAK_HANDLE) {
      const ref = proc.refsByDesc.get(o.binder);
      if (!ref) return false;
      let out: Uint8Array;
      if (ref.node.proc === target) {
        out = encodeFlatBinderObject({ type: o.type === BINDER_TYPE_HANDLE ? BINDER_TYPE_BINDER : BINDER_TYPE_WEAK_BINDER, flags: o.flags, binder: ref.node.ptr, cookie: ref.node.cookie });
      } else {
        const r2 = target.refFor(ref.node);
        out = encodeFlatBinderObject({ type: o.type, flags: o.flags, binder: r2.desc, cookie: 0 });
      }
      if (!alloc.copy_to_buffer(buffer, off, out)) return false;
    } else {
      return false; // fds and scatter-gather objects are not modelled
    }
  }
  return true;
}

/** binder_transaction: BC_TRANSACTION and BC_REPLY. */
function* binder_transaction(proc: BinderProc, thread: BinderThread, tr: TransactionData, reply: boolean): KGen {
  const k = proc.device.k;
  const dev = proc.device;
  let target_proc: BinderProc;
  let target_thread: BinderThread | null = null;
  let target_node: BinderNode | null = null;
  let in_reply_to: BinderTransaction | null = null;
  if (reply) {
    in_reply_to = thread.transaction_stack;
    if (!in_reply_to || in_reply_to.to_thread !== thread) {
      dev.userError(`${proc.pid}:${thread.pid} got reply transaction with no transaction stack`);
      return returnError(thread, BR_FAILED_REPLY);
    }
    thread.transaction_stack = in_reply_to.to_parent;
    target_thread = in_reply_to.from;
    if (!target_thread || target_thread.dead) return returnError(thread, BR_DEAD_REPLY);
    if (target_thread.transaction_stack !== in_reply_to) {
      dev.userError(`${proc.pid}:${thread.pid} got reply transaction with bad target transaction stack`);
      return returnError(thread, BR_FAILED_REPLY);
    }
    target_thread.transaction_stack = in_reply_to.from_parent;
    target_proc = target_thread.proc;
  } else {
    if (tr.target === 0) {
      target_node = dev.contextManager;
      if (!target_node) return returnError(thread, BR_DEAD_REPLY);
      // binder.c compares pids: no binder file of the context manager's own process may call it.
      if (target_node.proc.pid === proc.pid) {
        dev.userError(`${proc.pid}:${thread.pid} got transaction to context manager from process owning it`);
        return returnError(thread, BR_FAILED_REPLY);
      }
    } else {
      const ref = proc.refsByDesc.get(tr.target);
      if (!ref) {
        dev.userError(`${proc.pid}:${thread.pid} got transaction to invalid handle ${tr.target}`);
        return returnError(thread, BR_FAILED_REPLY);
      }
      target_node = ref.node;
    }
    target_proc = target_node.proc;
    // A process never holds a ref to its own node (the check above keeps it from sending itself
    // one), so this cannot happen: binder.c WARNs and refuses.
    if (target_proc === proc) {
      k.warn('WARNING: binder self transaction', `WARN_ON(proc == target_proc) in binder_transaction: ${proc.pid}:${thread.pid} self transactions not allowed`, { pid: proc.pid });
      return returnError(thread, BR_FAILED_REPLY);
    }
  }
  if (target_proc.is_dead) {
    if (in_reply_to) in_reply_to.to_thread = null;
    return returnError(thread, BR_DEAD_REPLY);
  }
  // binder_get_node_refs_for_txn / binder_get_txn_from_and_acq_inner: the target process stays
  // until this transaction is done with its buffer, even if it dies meanwhile.
  target_proc.tmp_ref++;
  try {
    yield* binder_transaction_to(proc, thread, tr, reply, target_proc, target_thread, target_node);
  } finally {
    binder_proc_dec_tmpref(target_proc);
  }
}

/** The part of binder_transaction that holds a tmp_ref on the target process. */
function* binder_transaction_to(proc: BinderProc, thread: BinderThread, tr: TransactionData, reply: boolean, target_proc: BinderProc, target_thread: BinderThread | null, target_node: BinderNode | null): KGen {
  const k = proc.device.k;
  const dev = proc.device;
  const st = dev.stats;
  const oneway = !reply && (tr.flags & TF_ONE_WAY) !== 0;
  const t = new BinderTransaction(reply || oneway ? null : thread, target_proc, reply, tr.code, tr.flags, proc.pid, 0, target_node);
  if (k.trace.enabled) traceTransaction(k, { debug_id: t.debug_id, target_node: target_node?.debug_id ?? 0, to_proc: target_proc.pid, to_thread: target_thread?.pid ?? 0, reply, code: tr.code, flags: tr.flags });
  const buf = yield* target_proc.alloc.new_buf(tr.data_size, tr.offsets_size, 0, oneway);
  if (typeof buf === 'number') {
    if (reply && target_thread) returnError(target_thread, buf === -ESRCH ? BR_DEAD_REPLY : BR_FAILED_REPLY);
    return returnError(thread, buf === -ESRCH ? BR_DEAD_REPLY : BR_FAILED_REPLY);
  }
  buf.debug_id = t.debug_id;
  buf.transaction = t;
  buf.target_node = target_node;
  buf.clear_on_free = (tr.flags & TF_CLEAR_BUF) !== 0;
  t.buffer = buf;
  traceBuffer(k, 'binder_transaction_alloc_buf', buf.debug_id, tr.data_size, tr.offsets_size, 0);
  const alloc = target_proc.alloc;
  // An empty payload copies nothing and cannot fail (copy_user_to_buffer returns 0 at once).
  let ok = tr.data_size === 0 || (yield* alloc.copy_user_to_buffer(buf, 0, tr.buffer, tr.data_size)) === 0;
  if (ok && tr.offsets_size) ok = (yield* alloc.copy_user_to_buffer(buf, Math.ceil(tr.data_size / 8) * 8, tr.offsets, tr.offsets_size)) === 0;
  if (ok && tr.offsets_size) ok = translateObjects(proc, target_proc, buf, tr.data_size, tr.offsets_size);
  if (!ok) {
    dev.userError(`${proc.pid}:${thread.pid} got transaction with invalid data or objects`);
    buf.transaction = null;
    traceBuffer(k, 'binder_transaction_failed_buffer_release', buf.debug_id, tr.data_size, tr.offsets_size, 0);
    yield* alloc.free_buf(buf);
    if (reply && target_thread) returnError(target_thread, BR_FAILED_REPLY);
    return returnError(thread, BR_FAILED_REPLY);
  }
  if (target_proc.is_dead || (target_thread && target_thread.dead)) {
    // binder_proc_transaction found the target dead (it died while the payload was copied):
    // err_dead_proc_or_thread frees the buffer.
    buf.transaction = null;
    traceBuffer(k, 'binder_transaction_failed_buffer_release', buf.debug_id, tr.data_size, tr.offsets_size, 0);
    yield* alloc.free_buf(buf);
    return returnError(thread, BR_DEAD_REPLY);
  }
  const spam = oneway && buf.oneway_spam_suspect && proc.oneway_spam_detection_enabled;
  if (spam) st.spamSuspects++;
  thread.todo.push({ type: 'transaction_complete', spam });
  if (reply) {
    st.replies++;
    target_thread!.todo.push({ type: 'transaction', t });
    target_thread!.wait.wakeAll(k);
  } else if (!oneway) {
    st.transactions++;
    t.need_reply = true;
    t.from_parent = thread.transaction_stack;
    thread.transaction_stack = t;
    binder_proc_transaction(target_proc, { type: 'transaction', t });
  } else {
    st.oneway++;
    const w: BinderWork = { type: 'transaction', t };
    if (target_node!.has_async_transaction) target_node!.async_todo.push(w);
    else {
      target_node!.has_async_transaction = true;
      binder_proc_transaction(target_proc, w);
    }
  }
}

/** binder_proc_transaction: queue work for the process and wake a thread waiting for it. */
function binder_proc_transaction(proc: BinderProc, w: BinderWork): void {
  proc.todo.push(w);
  proc.wait.wakeOne(proc.device.k);
}

// ==============================================================================================
// Reading: returns
// ==============================================================================================

function availableForProcWork(thread: BinderThread): boolean {
  return thread.transaction_stack === null && thread.todo.length === 0 && (thread.looper & (BINDER_LOOPER_STATE_ENTERED | BINDER_LOOPER_STATE_REGISTERED)) !== 0;
}

/** Room for `n` bytes of returns in the thread's read buffer (grown, never shrunk). */

/** Put one BR_* return command at `p` of the read buffer: counted, traced; the next position. */
function putReturn(k: Kernel, st: BinderStats, ov: DataView, p: number, cmd: number): number {
  const name = BR_NAMES[cmd] ?? `0x${(cmd >>> 0).toString(16)}`;
  st.br[name] = (st.br[name] ?? 0) + 1;
  ov.setUint32(p, cmd >>> 0, true);
  traceReturn(k, cmd);
  return p + 4;
}

function* binder_thread_read(proc: BinderProc, thread: BinderThread, buf: number, size: number, consumed: { value: number }, nonblock: boolean): KGen<number> {
  const k = proc.device.k;
  const st = proc.device.stats;
  // The space left in the read buffer. Nothing beyond what is written is copied out, so the
  // returns are built in a reused buffer (any larger size allocates as it always did).
  const room = Math.max(0, size - consumed.value);
  const rb = thread.readBuf;
  const out = room <= THREAD_BUF_REUSE ? rb.fit(room) : new Uint8Array(room);
  const ov = out === rb.bytes ? rb.view : new DataView(out.buffer);
  let p = 0;
  if (consumed.value === 0 && room >= 4) {
    ov.setUint32(p, BR_NOOP, true);
    p += 4;
    traceReturn(k, BR_NOOP);
  }
  // Wait for work.
  for (;;) {
    const forProc = availableForProcWork(thread);
    if (thread.todo.length > 0 || (forProc && proc.todo.length > 0)) break;
    if (proc.is_dead) break;
    if (nonblock) {
      if (p > 4) break;
      consumed.value += p;
      yield* copy_to_user(k, buf + consumed.value - p, out.subarray(0, p));
      return -EAGAIN;
    }
    if (forProc) yield* proc.wait.sleep(k, 'binder_wait_for_work (proc)');
    else yield* thread.wait.sleep(k, 'binder_wait_for_work (thread)');
  }
  while (room - p >= 4) {
    let w = thread.todo.shift();
    if (!w && availableForProcWork(thread)) w = proc.todo.shift();
    if (!w) break;
    if (w.type === 'transaction_complete') {
      p = putReturn(k, st, ov, p, w.spam ? BR_ONEWAY_SPAM_SUSPECT : BR_TRANSACTION_COMPLETE);
      continue;
    }
    if (w.type === 'return_error') {
      p = putReturn(k, st, ov, p, w.cmd);
      continue;
    }
    // A transaction or a reply: it needs 4 + 64 bytes.
    if (room - p < 4 + BTD_SIZE) {
      (w === proc.todo[0] ? proc.todo : thread.todo).unshift(w);
      break;
    }
    const t = w.t;
    const b = t.buffer!;
    const mapping = proc.alloc.mapping;
    if (mapping.beforeDeliver !== nothingBeforeDeliver) yield* mapping.beforeDeliver(proc.alloc, b);
    p = putReturn(k, st, ov, p, t.reply ? BR_REPLY : BR_TRANSACTION);
    // struct binder_transaction_data, field by field (see encodeTransactionData).
    const node = t.target_node;
    setU64(ov, p, node ? node.ptr : 0);
    setU64(ov, p + 8, node ? node.cookie : 0);
    ov.setUint32(p + 16, t.code >>> 0, true);
    ov.setUint32(p + 20, t.flags >>> 0, true);
    ov.setInt32(p + 24, t.from ? t.sender_pid | 0 : 0, true);
    ov.setUint32(p + 28, t.sender_euid >>> 0, true);
    setU64(ov, p + 32, b.data_size);
    setU64(ov, p + 40, b.offsets_size);
    setU64(ov, p + 48, b.user_data);
    setU64(ov, p + 56, b.user_data + Math.ceil(b.data_size / 8) * 8);
    p += BTD_SIZE;
    traceTransactionReceived(k, t.debug_id);
    b.allow_user_free = true;
    if (!t.reply && !(t.flags & TF_ONE_WAY)) {
      t.to_parent = thread.transaction_stack;
      t.to_thread = thread;
      thread.transaction_stack = t;
    } else {
      // binder_free_transaction: the buffer stays until BC_FREE_BUFFER.
      b.transaction = null;
      t.buffer = null;
    }
    break; // one transaction per read
  }
  if (p > 0) {
    const r = yield* copy_to_user(k, buf + consumed.value, out === rb.bytes ? rb.prefix(p) : out.subarray(0, p));
    if (r) return -EFAULT;
  }
  consumed.value += p;
  return 0;
}

// ==============================================================================================
// ioctl, release
// ==============================================================================================

function* binder_ioctl(file: File, cmd: number, arg: unknown): KGen<number> {
  const proc = procOf(file);
  const k = proc.device.k;
  const task = k.current!;
  traceIoctl(k, cmd, typeof arg === 'number' ? arg : 0);
  if (proc.is_dead) return -ESRCH;
  const thread = getThread(proc, task);
  switch (cmd) {
    case BINDER_WRITE_READ: {
      if (typeof arg !== 'number') return -EFAULT;
      const raw = yield* copy_from_user(k, arg, BWR_SIZE);
      if (typeof raw === 'number') return -EFAULT;
      // struct binder_write_read, field by field (as decodeBwr / encodeBwr), in the thread's buffer.
      const bv = thread.bwrView;
      thread.bwrBuf.set(raw);
      const write_size = getU64(bv, 0);
      const write_buffer = getU64(bv, 16);
      const read_size = getU64(bv, 24);
      const read_buffer = getU64(bv, 40);
      const wc = thread.writeConsumed;
      const rc = thread.readConsumed;
      wc.value = getU64(bv, 8);
      rc.value = getU64(bv, 32);
      let ret = 0;
      if (write_size > 0) ret = yield* binder_thread_write(proc, thread, write_buffer, write_size, wc);
      if (ret === 0 && read_size > 0) {
        ret = yield* binder_thread_read(proc, thread, read_buffer, read_size, rc, (file.f_flags & 0o4000) !== 0);
        if (proc.todo.length > 0 && proc.wait.length > 0) proc.wait.wakeOne(k);
      }
      setU64(bv, 0, write_size);
      setU64(bv, 8, wc.value);
      setU64(bv, 16, write_buffer);
      setU64(bv, 24, read_size);
      setU64(bv, 32, rc.value);
      setU64(bv, 40, read_buffer);
      const w = yield* copy_to_user(k, arg, thread.bwrBuf);
      if (w) return -EFAULT;
      return ret;
    }
    case BINDER_SET_MAX_THREADS:
      proc.max_threads = typeof arg === 'number' ? arg : 0;
      return 0;
    case BINDER_SET_CONTEXT_MGR: {
      const dev = proc.device;
      if (dev.contextManager && !dev.contextManager.proc.is_dead) {
        dev.userError(`${proc.pid}:${thread.pid} BINDER_SET_CONTEXT_MGR already set`);
        return -16; // EBUSY
      }
      const node = new BinderNode(proc, 0, 0);
      proc.nodes.set(0, node);
      dev.contextManager = node;
      return 0;
    }
    case BINDER_ENABLE_ONEWAY_SPAM_DETECTION:
      proc.oneway_spam_detection_enabled = arg === 1 || arg === true;
      return 0;
    case BINDER_THREAD_EXIT:
      thread.dead = true;
      proc.threads.delete(task.pid);
      return 0;
    case BINDER_VERSION:
      if (typeof arg === 'object' && arg !== null) (arg as { protocol_version?: number }).protocol_version = BINDER_CURRENT_PROTOCOL_VERSION;
      return 0;
    default:
      return -EINVAL;
  }
}

/** binder_release: the last reference to the file went; the rest is deferred to a worker. */
function binder_release(file: File): void {
  const proc = procOf(file);
  const k = proc.device.k;
  proc.is_dead = true;
  if (proc.device.contextManager?.proc === proc) proc.device.contextManager = null;
  // Senders waiting for this process get BR_DEAD_REPLY.
  const pending = [...proc.todo];
  for (const n of proc.nodes.values()) pending.push(...n.async_todo);
  for (const w of pending) if (w.type === 'transaction' && w.t.from) failTransaction(w.t);
  for (const th of proc.threads.values()) {
    th.dead = true;
    for (let t = th.transaction_stack; t; t = t.to_thread === th ? t.to_parent : t.from_parent) {
      if (t.to_thread === th && t.from) failTransaction(t);
    }
    th.wait.wakeAll(k);
  }
  proc.wait.wakeAll(k);
  k.workqueue.queue('binder_deferred_func', function* () {
    yield* binder_deferred_release(proc);
  });
}

/** binder_send_failed_reply: the sender of `t` gets BR_DEAD_REPLY. */
function failTransaction(t: BinderTransaction): void {
  const from = t.from;
  if (!from || from.dead) return;
  if (from.transaction_stack === t) from.transaction_stack = t.from_parent;
  returnError(from, BR_DEAD_REPLY);
}

function* binder_deferred_release(proc: BinderProc): KGen {
  proc.todo.length = 0;
  for (const n of proc.nodes.values()) n.async_todo.length = 0;
  // A sender may still be copying into a buffer of ours: the last one frees the proc.
  if (proc.tmp_ref > 0) {
    proc.free_pending = true;
    return;
  }
  yield* binder_free_proc(proc);
}

/** binder_proc_dec_tmpref: the last in-flight transaction of a released proc frees it. */
function binder_proc_dec_tmpref(proc: BinderProc): void {
  proc.tmp_ref--;
  if (proc.tmp_ref === 0 && proc.free_pending) {
    proc.free_pending = false;
    proc.device.k.workqueue.queue('binder_free_proc', () => binder_free_proc(proc));
  }
}

/** binder_free_proc: free the buffers and pages (binder_alloc_deferred_release) and drop the mm. */
function* binder_free_proc(proc: BinderProc): KGen {
  const k = proc.device.k;
  proc.todo.length = 0;
  for (const n of proc.nodes.values()) n.async_todo.length = 0;
  for (const b of proc.alloc.allocated.values()) b.transaction = null;
  yield* proc.alloc.deferred_release();
  proc.alloc.mapping.release?.(proc.alloc);
  if (proc.alloc.mm) mmdrop(k, proc.alloc.mm);
  proc.alloc.mm = null;
  proc.device.procs.delete(proc);
}

const binderFops: FileOperations = {
  name: 'binder_fops',
  mmap: binder_mmap,
  ioctl: binder_ioctl,
  release: binder_release,
};

/** The design label of a process's binder (for reports). */
export function procDesign(proc: BinderProc): string {
  return designLabel(proc.design);
}
