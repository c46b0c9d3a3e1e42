/**
 * src/workloads/libbinder.ts — a client library for emulated programs, in the spirit of Android's
 * libbinder (ProcessState, IPCThreadState, Parcel) and servicemanager, speaking the real binder
 * ABI through the emulated MMU: commands and returns are encoded in the thread's own user
 * memory, payloads are written there before a transaction and read from the binder mapping
 * after one (so a receiver's reads take TLB misses and, in the fault designs, page faults), or,
 * for a service that never looks at its data (IPCThreadState.readPayloads = false), not at all.
 *
 *   ProcessState.open(u)          open /dev/binder and map BINDER_VM_SIZE, read-only, as libbinder
 *   new IPCThreadState(u, ps)     per-thread: a scratch area for bwr, command and return streams
 *   ipc.transact(handle, code, parcel, flags)  BC_TRANSACTION, then wait for BR_REPLY (or only
 *                                 BR_TRANSACTION_COMPLETE for TF_ONE_WAY); the reply buffer's
 *                                 BC_FREE_BUFFER is queued and sent with the next command, as
 *                                 libbinder frees a Parcel when it is destroyed
 *   ipc.joinThreadPool(handler)   BC_ENTER_LOOPER and serve: BR_TRANSACTION → handler → BC_REPLY,
 *                                 then BC_FREE_BUFFER of the request
 *   runServiceManager / addService / getService   a context manager keeping name → handle
 *
 * Everything is a generator used with `yield*` inside a program (kernel/uapi.ts).
 */

import type { User } from '../../kernel/uapi.ts';
import type { KGen } from '../../kernel/sched/core.ts';
import { MAP_ANONYMOUS, MAP_NORESERVE, MAP_PRIVATE, PROT_READ, PROT_WRITE } from '../../kernel/mm/mmap.ts';
import {
  BC_ENTER_LOOPER, BC_FREE_BUFFER, BC_REPLY, BC_TRANSACTION, BINDER_ENABLE_ONEWAY_SPAM_DETECTION, BINDER_SET_CONTEXT_MGR, BINDER_TYPE_BINDER,
  BINDER_TYPE_HANDLE, BINDER_WRITE_READ, BR_DEAD_REPLY, BR_FAILED_REPLY, BR_NOOP, BR_ONEWAY_SPAM_SUSPECT, BR_REPLY, BR_TRANSACTION,
  BR_TRANSACTION_COMPLETE, BTD_SIZE, BWR_SIZE, FLAT_BINDER_OBJECT_SIZE, TF_ONE_WAY, decodeFlatBinderObject, decodeTransactionData,
  encodeFlatBinderObject, getU64, setU64, type TransactionData,
} from '../../drivers/android/binder/uapi.ts';

/** libbinder's mapping size: 1 MiB minus two pages. */
export const BINDER_VM_SIZE = (1 << 20) - 2 * 4096;
/** FIRST_CALL_TRANSACTION and the ping code. */
export const FIRST_CALL_TRANSACTION = 0x00000001;
export const PING_TRANSACTION = 0x5f504e47;
/** servicemanager's codes. */
export const SVC_MGR_GET_SERVICE = 1;
export const SVC_MGR_ADD_SERVICE = 3;

/** A flattened payload plus the positions of the binder objects in it. */
export class Parcel {
  private bytes = new Uint8Array(64);
  length = 0;
  readonly objects: number[] = [];

  static from(data: Uint8Array): Parcel {
    const p = new Parcel();
    p.writeBytes(data);
    return p;
  }

  private grow(n: number): void {
    if (this.length + n <= this.bytes.length) return;
    const b = new Uint8Array(Math.max(this.bytes.length * 2, this.length + n));
    b.set(this.bytes.subarray(0, this.length));
    this.bytes = b;
  }

  writeInt32(v: number): this {
    this.grow(4);
    new DataView(this.bytes.buffer).setInt32(this.length, v | 0, true);
    this.length += 4;
    return this;
  }

  writeBytes(b: Uint8Array): this {
    this.grow(b.length);
    this.bytes.set(b, this.length);
    this.length += b.length;
    return this;
  }

  /** A string as a length-prefixed, 4-byte padded UTF-8 field. */
  writeString(s: string): this {
    const b = new TextEncoder().encode(s);
    this.writeInt32(b.length);
    this.writeBytes(b);
    this.grow(3);
    this.length = Math.ceil(this.length / 4) * 4;
    return this;
  }

  /** A local binder object (becomes a handle in the receiver). */
  writeStrongBinder(ptr: number, cookie = 0): this {
    this.length = Math.ceil(this.length / 8) * 8;
    this.objects.push(this.length);
    this.grow(FLAT_BINDER_OBJECT_SIZE);
    encodeFlatBinderObject({ type: BINDER_TYPE_BINDER, flags: 0, binder: ptr, cookie }, this.bytes, this.length);
    this.length += FLAT_BINDER_OBJECT_SIZE;
    return this;
  }

  /** A handle (a remote binder) to pass on. */
  writeStrongHandle(handle: number): this {
    this.length = Math.ceil(this.length / 8) * 8;
    this.objects.push(this.length);
    this.grow(FLAT_BINDER_OBJECT_SIZE);
    encodeFlatBinderObject({ type: BINDER_TYPE_HANDLE, flags: 0, binder: handle, cookie: 0 }, this.bytes, this.length);
    this.length += FLAT_BINDER_OBJECT_SIZE;
    return this;
  }

  data(): Uint8Array {
    return this.bytes.subarray(0, this.length);
  }
}

/** A received payload (request or reply), read from the binder mapping. */
export interface Received {
  code: number;
  flags: number;
  senderPid: number;
  /** Node ptr the transaction was sent to (0 for replies and the context manager). */
  target: number;
  cookie: number;
  /** The payload as read from the mapping (empty when the thread does not read payloads). */
  data: Uint8Array;
  /** Bytes of payload the sender sent. */
  dataSize: number;
  /** The binder objects, decoded: handles for remote binders, ptrs for our own. */
  objects: { type: number; value: number; cookie: number }[];
  /** Address of the buffer in the mapping. */
  buffer: number;
}

export type TransactStatus = 'ok' | 'dead' | 'failed';

export interface TransactResult {
  status: TransactStatus;
  reply: Received | null;
  /** BR_ONEWAY_SPAM_SUSPECT was returned instead of BR_TRANSACTION_COMPLETE. */
  spamSuspect: boolean;
}

/** Per process: the binder fd and mapping. */
export class ProcessState {
  private constructor(
    readonly fd: number,
    readonly mapBase: number,
    readonly mapSize: number,
  ) {}

  static *open(u: User, opts: { vmSize?: number; path?: string; spamDetection?: boolean } = {}): KGen<ProcessState> {
    const fd = yield* u.open(opts.path ?? '/dev/binder');
    const size = opts.vmSize ?? BINDER_VM_SIZE;
    const base = yield* u.mmap(0, size, PROT_READ, MAP_PRIVATE | MAP_NORESERVE, fd, 0);
    if (opts.spamDetection) yield* u.ioctl(fd, BINDER_ENABLE_ONEWAY_SPAM_DETECTION, 1);
    return new ProcessState(fd, base, size);
  }

  *becomeContextManager(u: User): KGen {
    yield* u.ioctl(this.fd, BINDER_SET_CONTEXT_MGR, 0);
  }
}

const SCRATCH = 256 * 1024;
const OUT_CAP = 4096;
const IN_CAP = 4096;
/** Size of a BC_TRANSACTION / BC_REPLY command: the code and its binder_transaction_data. */
const TXN_CMD_SIZE = 4 + BTD_SIZE;
const EMPTY = new Uint8Array(0);

/** The u64 at byte `o` of `b`, as a Number (as decodeBwr reads it). */
function u64At(b: Uint8Array, o: number): number {
  const lo = (b[o]! | (b[o + 1]! << 8) | (b[o + 2]! << 16) | (b[o + 3]! << 24)) >>> 0;
  const hi = (b[o + 4]! | (b[o + 5]! << 8) | (b[o + 6]! << 16) | (b[o + 7]! << 24)) >>> 0;
  return hi * 4294967296 + lo;
}

/** Per thread: the command/return streams and the payload area, in this thread's user memory. */
export class IPCThreadState {
  private scratch = 0;
  private readonly pendingFrees: number[] = [];
  private readonly inQueue: Uint8Array[] = [];
  private inBytes: Uint8Array = EMPTY;
  private inPos = 0;
  /** Where the payload of the return nextReturn() gave last starts in inBytes. */
  private retAt = 0;
  /**
   * The command stream and struct binder_write_read as built before they are written to user
   * memory, reused from one command to the next (the bytes are copied out at once), with a view
   * of each length used so far.
   */
  private readonly outBuf = new Uint8Array(OUT_CAP);
  private readonly outView = new DataView(this.outBuf.buffer);
  private readonly outViews: Uint8Array[] = [];
  private readonly bwrBuf = new Uint8Array(BWR_SIZE);
  private readonly bwrView = new DataView(this.bwrBuf.buffer);
  /** The last BC_TRANSACTION / BC_REPLY built by transactionCommand. */
  private readonly cmdBuf = new Uint8Array(TXN_CMD_SIZE);
  private readonly cmdView = new DataView(this.cmdBuf.buffer);
  /** Transactions served by joinThreadPool. */
  served = 0;
  stop = false;
  /**
   * Read each received payload out of the mapping (default). False models a service that never
   * looks at its data, as binderThroughputTest's BINDER_NOP handler: a received Parcel only
   * references the mapping (Parcel::ipcSetDataReference), so nothing of the payload is touched;
   * the offsets and the binder objects they name are still read. Received.data is then empty.
   */
  readPayloads = true;

  constructor(
    readonly u: User,
    readonly ps: ProcessState,
  ) {}

  private *area(): KGen<number> {
    if (!this.scratch) this.scratch = yield* this.u.mmap(0, SCRATCH, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
    return this.scratch;
  }

  /** Queue BC_FREE_BUFFER for `buffer` (sent with the next command, as libbinder's freeBuffer). */
  freeBuffer(buffer: number): void {
    this.pendingFrees.push(buffer);
  }

  /** The first `len` bytes of outBuf, as a view kept for the next time. */
  private outPrefix(len: number): Uint8Array {
    return (this.outViews[len] ??= this.outBuf.subarray(0, len));
  }

  /** One BINDER_WRITE_READ: send `cmd` (after queued frees), receive into the return stream. */
  private *talk(cmd: Uint8Array | null, receive: boolean): KGen {
    const u = this.u;
    const base = this.scratch || (yield* this.area());
    const outAddr = base + BWR_SIZE;
    const inAddr = outAddr + OUT_CAP;
    const frees = this.pendingFrees;
    const len = frees.length * 12 + (cmd ? cmd.length : 0);
    // An oversized stream is still built (as the frees are consumed) before it is refused.
    const w = len <= OUT_CAP ? this.outBuf : new Uint8Array(len);
    const v = len <= OUT_CAP ? this.outView : new DataView(w.buffer);
    let p = 0;
    for (let i = 0; i < frees.length; i++) {
      v.setUint32(p, BC_FREE_BUFFER, true);
      setU64(v, p + 4, frees[i]!);
      p += 12;
    }
    frees.length = 0;
    if (cmd) w.set(cmd, p);
    if (len > OUT_CAP) throw new RangeError(`binder command stream of ${len} bytes exceeds the ${OUT_CAP}-byte buffer`);
    if (len) yield* u.write(outAddr, this.outPrefix(len));
    const bv = this.bwrView;
    setU64(bv, 0, len);
    setU64(bv, 8, 0);
    setU64(bv, 16, outAddr);
    setU64(bv, 24, receive ? IN_CAP : 0);
    setU64(bv, 32, 0);
    setU64(bv, 40, inAddr);
    yield* u.write(base, this.bwrBuf);
    yield* u.ioctl(this.ps.fd, BINDER_WRITE_READ, base);
    const readConsumed = u64At(yield* u.read(base, BWR_SIZE), 32);
    if (readConsumed > 0) this.inQueue.push(yield* u.read(inAddr, readConsumed));
  }

  /**
   * The next return command in the stream, its payload at `retAt`; -1 when the stream is used up
   * (the caller talks to the driver and asks again).
   */
  private nextReturn(): number {
    for (;;) {
      const b = this.inBytes;
      const at = this.inPos;
      if (at + 4 <= b.length) {
        const cmd = (b[at]! | (b[at + 1]! << 8) | (b[at + 2]! << 16) | (b[at + 3]! << 24)) >>> 0;
        this.retAt = at + 4;
        this.inPos = at + 4 + ((cmd >>> 16) & 0x3fff);
        return cmd;
      }
      const next = this.inQueue.shift();
      if (!next) return -1;
      this.inBytes = next;
      this.inPos = 0;
    }
  }

  /** The binder_transaction_data of the BR_TRANSACTION / BR_REPLY nextReturn() gave last. */
  private returnedTransaction(): TransactionData {
    return decodeTransactionData(this.inBytes, this.retAt);
  }

  /** Read a BR_TRANSACTION / BR_REPLY payload out of the mapping (its objects only, see readPayloads). */
  private *receive(tr: TransactionData): KGen<Received> {
    const whole = this.readPayloads;
    const data = tr.data_size && whole ? yield* this.u.read(tr.buffer, tr.data_size) : new Uint8Array(0);
    const objects: Received['objects'] = [];
    if (tr.offsets_size) {
      const offs = yield* this.u.read(tr.offsets, tr.offsets_size);
      const ov = new DataView(offs.buffer, offs.byteOffset, offs.length);
      for (let i = 0; i + 8 <= offs.length; i += 8) {
        const at = getU64(ov, i);
        const o = whole ? decodeFlatBinderObject(data, at) : decodeFlatBinderObject(yield* this.u.read(tr.buffer + at, FLAT_BINDER_OBJECT_SIZE), 0);
        objects.push({ type: o.type, value: o.binder, cookie: o.cookie });
      }
    }
    return received(tr, data, objects);
  }

  /** Write the parcel to the payload area (bytes, then object offsets) and build its command. */
  private *transactionCommand(cmd: number, handle: number, code: number, parcel: Parcel, flags: number): KGen<Uint8Array> {
    const base = this.scratch || (yield* this.area());
    const payload = base + BWR_SIZE + OUT_CAP + IN_CAP;
    const data = parcel.data();
    const nobj = parcel.objects.length;
    if (data.length + nobj * 8 > SCRATCH - (payload - base)) throw new RangeError(`parcel of ${data.length} bytes is larger than the thread's transaction area`);
    if (data.length) yield* this.u.write(payload, data);
    if (nobj) {
      const o = new Uint8Array(nobj * 8);
      const ov = new DataView(o.buffer);
      for (let i = 0; i < nobj; i++) setU64(ov, i * 8, parcel.objects[i]!);
      yield* this.u.write(payload + Math.ceil(data.length / 8) * 8, o);
    }
    return this.command(cmd, handle, code, data.length, nobj, flags);
  }

  /**
   * The command for a parcel already in the payload area: the BC_* code, then struct
   * binder_transaction_data field by field (see encodeTransactionData), in cmdBuf. An empty
   * parcel needs nothing else, so its command is built without transactionCommand.
   */
  private command(cmd: number, handle: number, code: number, dataLen: number, nobj: number, flags: number): Uint8Array {
    const payload = this.scratch + BWR_SIZE + OUT_CAP + IN_CAP;
    const c = this.cmdView;
    c.setUint32(0, cmd, true);
    setU64(c, 4, handle);
    setU64(c, 12, 0);
    c.setUint32(20, code >>> 0, true);
    c.setUint32(24, flags >>> 0, true);
    c.setInt32(28, 0, true);
    c.setUint32(32, 0, true);
    setU64(c, 36, dataLen);
    setU64(c, 44, nobj * 8);
    setU64(c, 52, payload);
    setU64(c, 60, payload + Math.ceil(dataLen / 8) * 8);
    return this.cmdBuf;
  }

  /** Is `parcel` empty (no bytes to write), with this thread's area already mapped? */
  private emptyParcel(parcel: Parcel): boolean {
    return this.scratch !== 0 && parcel.length === 0 && parcel.objects.length === 0;
  }

  /** Send a transaction to `handle` and wait for its reply (or completion, for TF_ONE_WAY). */
  *transact(handle: number, code: number, parcel: Parcel = new Parcel(), flags = 0): KGen<TransactResult> {
    const cmd = this.emptyParcel(parcel) ? this.command(BC_TRANSACTION, handle, code, 0, 0, flags) : yield* this.transactionCommand(BC_TRANSACTION, handle, code, parcel, flags);
    yield* this.talk(cmd, true);
    let spamSuspect = false;
    for (;;) {
      const br = this.nextReturn();
      switch (br) {
        case -1:
          yield* this.talk(null, true);
          continue;
        case BR_NOOP:
          continue;
        case BR_TRANSACTION_COMPLETE:
        case BR_ONEWAY_SPAM_SUSPECT:
          if (br === BR_ONEWAY_SPAM_SUSPECT) spamSuspect = true;
          if (flags & TF_ONE_WAY) return { status: 'ok', reply: null, spamSuspect };
          continue;
        case BR_REPLY: {
          const tr = this.returnedTransaction();
          const reply = tr.data_size || tr.offsets_size ? yield* this.receive(tr) : received(tr, new Uint8Array(0), []);
          this.freeBuffer(tr.buffer);
          return { status: 'ok', reply, spamSuspect };
        }
        case BR_DEAD_REPLY:
          return { status: 'dead', reply: null, spamSuspect };
        case BR_FAILED_REPLY:
          return { status: 'failed', reply: null, spamSuspect };
        default:
          throw new Error(`libbinder: unexpected return 0x${br.toString(16)} while waiting for a reply`);
      }
    }
  }

  /** Send queued frees now (the driver may otherwise keep buffers until the next command). */
  *flush(): KGen {
    if (this.pendingFrees.length) yield* this.talk(null, false);
  }

  /**
   * BC_ENTER_LOOPER and serve transactions until `stop` is set or `maxTransactions` were served.
   * The handler returns the reply parcel (ignored for oneway transactions).
   */
  *joinThreadPool(handler: (t: Received) => KGen<Parcel | null>, maxTransactions = Infinity): KGen {
    const enter = new Uint8Array(4);
    new DataView(enter.buffer).setUint32(0, BC_ENTER_LOOPER, true);
    yield* this.talk(enter, false);
    while (!this.stop && this.served < maxTransactions) {
      const br = this.nextReturn();
      if (br === -1) {
        yield* this.talk(null, true);
        continue;
      }
      if (br === BR_NOOP || br === BR_TRANSACTION_COMPLETE) continue;
      if (br !== BR_TRANSACTION) throw new Error(`libbinder: unexpected return 0x${br.toString(16)} in the thread pool`);
      const tr = this.returnedTransaction();
      const req = tr.data_size || tr.offsets_size ? yield* this.receive(tr) : received(tr, new Uint8Array(0), []);
      const reply = yield* handler(req);
      this.served++;
      if (tr.flags & TF_ONE_WAY) {
        this.freeBuffer(tr.buffer);
        continue;
      }
      const rp = reply ?? new Parcel();
      const cmd = this.emptyParcel(rp) ? this.command(BC_REPLY, 0, 0, 0, 0, 0) : yield* this.transactionCommand(BC_REPLY, 0, 0, rp, 0);
      yield* this.talk(cmd, false);
      // The request Parcel dies after the reply went out: its buffer is freed with the next command.
      this.freeBuffer(tr.buffer);
    }
  }
}

/** What receive() returns, from the transaction data and what was read. */
function received(tr: TransactionData, data: Uint8Array, objects: Received['objects']): Received {
  return { code: tr.code, flags: tr.flags, senderPid: tr.sender_pid, target: tr.target, cookie: tr.cookie, data, dataSize: tr.data_size, objects, buffer: tr.buffer };
}

// ---- servicemanager ----------------------------------------------------------------------------

function readString(data: Uint8Array, at: number): [string, number] {
  const n = new DataView(data.buffer, data.byteOffset, data.length).getInt32(at, true);
  const s = new TextDecoder().decode(data.subarray(at + 4, at + 4 + n));
  return [s, Math.ceil((at + 4 + n) / 4) * 4];
}

/** A context manager program body: keeps name → handle until `maxRequests` were served. */
export function* runServiceManager(u: User, opts: { maxRequests?: number } = {}): KGen<IPCThreadState> {
  const ps = yield* ProcessState.open(u, { vmSize: 128 * 1024 });
  yield* ps.becomeContextManager(u);
  const ipc = new IPCThreadState(u, ps);
  const services = new Map<string, number>();
  yield* ipc.joinThreadPool(function* (t) {
    const reply = new Parcel();
    const [name] = readString(t.data, 0);
    if (t.code === SVC_MGR_ADD_SERVICE) {
      const h = t.objects.find((o) => o.type === BINDER_TYPE_HANDLE);
      if (h) services.set(name, h.value);
      reply.writeInt32(h ? 0 : -1);
    } else if (t.code === SVC_MGR_GET_SERVICE) {
      const h = services.get(name);
      if (h === undefined) reply.writeInt32(-1);
      else reply.writeInt32(0).writeStrongHandle(h);
    } else reply.writeInt32(-1);
    return reply;
  }, opts.maxRequests ?? Infinity);
  return ipc;
}

/** Register a local binder `ptr` under `name` with the context manager (handle 0). */
export function* addService(ipc: IPCThreadState, name: string, ptr: number): KGen<boolean> {
  const p = new Parcel().writeString(name).writeStrongBinder(ptr);
  const r = yield* ipc.transact(0, SVC_MGR_ADD_SERVICE, p);
  return r.status === 'ok' && r.reply !== null && new DataView(r.reply.data.buffer, r.reply.data.byteOffset).getInt32(0, true) === 0;
}

/** Look a service up; its handle in this process, or -1. */
export function* getService(ipc: IPCThreadState, name: string): KGen<number> {
  const r = yield* ipc.transact(0, SVC_MGR_GET_SERVICE, new Parcel().writeString(name));
  if (r.status !== 'ok' || !r.reply) return -1;
  const h = r.reply.objects.find((o) => o.type === BINDER_TYPE_HANDLE);
  return h ? h.value : -1;
}
