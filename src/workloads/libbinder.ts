/**
 * src/workloads/libbinder.ts — a client library for emulated programs, in the spirit of Android's
 * libbinder (ProcessState, IPCThreadState, Parcel) and servicemanager, speaking the real binder
 * ABI through the emulated MMU: commands and returns are encoded in the thread's own user
 * memory, payloads are written there before a transaction and read from the binder mapping
 * after one (so a receiver's reads take TLB misses and, in the fault designs, page faults).
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
  BR_TRANSACTION_COMPLETE, BTD_SIZE, BWR_SIZE, FLAT_BINDER_OBJECT_SIZE, TF_ONE_WAY, decodeBwr, decodeFlatBinderObject, decodeTransactionData,
  encodeBwr, encodeFlatBinderObject, encodeTransactionData, type TransactionData,
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
  data: Uint8Array;
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

/** Per thread: the command/return streams and the payload area, in this thread's user memory. */
export class IPCThreadState {
  private scratch = 0;
  private readonly pendingFrees: number[] = [];
  private readonly inQueue: Uint8Array[] = [];
  private inBytes: Uint8Array = new Uint8Array(0);
  private inPos = 0;
  /** Transactions served by joinThreadPool. */
  served = 0;
  stop = false;

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

  /** One BINDER_WRITE_READ: send `out` (after queued frees), receive into the return stream. */
  private *talk(out: Uint8Array[], receive: boolean): KGen {
    const u = this.u;
    const base = yield* this.area();
    const outAddr = base + BWR_SIZE;
    const inAddr = outAddr + OUT_CAP;
    let len = this.pendingFrees.length * 12;
    for (const c of out) len += c.length;
    const w = new Uint8Array(len);
    const v = new DataView(w.buffer);
    let p = 0;
    for (const f of this.pendingFrees) {
      v.setUint32(p, BC_FREE_BUFFER, true);
      v.setBigUint64(p + 4, BigInt(f), true);
      p += 12;
    }
    this.pendingFrees.length = 0;
    for (const c of out) {
      w.set(c, p);
      p += c.length;
    }
    if (len > OUT_CAP) throw new RangeError(`binder command stream of ${len} bytes exceeds the ${OUT_CAP}-byte buffer`);
    if (len) yield* u.write(outAddr, w);
    yield* u.write(base, encodeBwr({ write_size: len, write_consumed: 0, write_buffer: outAddr, read_size: receive ? IN_CAP : 0, read_consumed: 0, read_buffer: inAddr }));
    yield* u.ioctl(this.ps.fd, BINDER_WRITE_READ, base);
    const bwr = decodeBwr(yield* u.read(base, BWR_SIZE));
    if (bwr.read_consumed > 0) this.inQueue.push(yield* u.read(inAddr, bwr.read_consumed));
  }

  /** The next return command and its payload, talking to the driver when the stream is empty. */
  private *nextReturn(): KGen<[number, Uint8Array]> {
    for (;;) {
      if (this.inPos + 4 <= this.inBytes.length) {
        const v = new DataView(this.inBytes.buffer, this.inBytes.byteOffset, this.inBytes.length);
        const cmd = v.getUint32(this.inPos, true);
        const n = (cmd >>> 16) & 0x3fff;
        const payload = this.inBytes.subarray(this.inPos + 4, this.inPos + 4 + n);
        this.inPos += 4 + n;
        return [cmd, payload];
      }
      const next = this.inQueue.shift();
      if (next) {
        this.inBytes = next;
        this.inPos = 0;
        continue;
      }
      yield* this.talk([], true);
    }
  }

  /** Read a BR_TRANSACTION / BR_REPLY payload out of the mapping. */
  private *receive(tr: TransactionData): KGen<Received> {
    const data = tr.data_size ? yield* this.u.read(tr.buffer, tr.data_size) : new Uint8Array(0);
    const objects: Received['objects'] = [];
    if (tr.offsets_size) {
      const offs = yield* this.u.read(tr.offsets, tr.offsets_size);
      const ov = new DataView(offs.buffer, offs.byteOffset, offs.length);
      for (let i = 0; i + 8 <= offs.length; i += 8) {
        const o = decodeFlatBinderObject(data, Number(ov.getBigUint64(i, true)));
        objects.push({ type: o.type, value: o.binder, cookie: o.cookie });
      }
    }
    return { code: tr.code, flags: tr.flags, senderPid: tr.sender_pid, target: tr.target, cookie: tr.cookie, data, objects, buffer: tr.buffer };
  }

  private *transactionCommand(cmd: number, handle: number, code: number, parcel: Parcel, flags: number): KGen<Uint8Array> {
    const base = yield* this.area();
    const payload = base + BWR_SIZE + OUT_CAP + IN_CAP;
    const data = parcel.data();
    if (data.length + parcel.objects.length * 8 > SCRATCH - (payload - base)) throw new RangeError(`parcel of ${data.length} bytes is larger than the thread's transaction area`);
    if (data.length) yield* this.u.write(payload, data);
    const offsAddr = payload + Math.ceil(data.length / 8) * 8;
    if (parcel.objects.length) {
      const o = new Uint8Array(parcel.objects.length * 8);
      const ov = new DataView(o.buffer);
      parcel.objects.forEach((x, i) => ov.setBigUint64(i * 8, BigInt(x), true));
      yield* this.u.write(offsAddr, o);
    }
    const c = new Uint8Array(4 + BTD_SIZE);
    new DataView(c.buffer).setUint32(0, cmd, true);
    encodeTransactionData({ target: handle, cookie: 0, code, flags, sender_pid: 0, sender_euid: 0, data_size: data.length, offsets_size: parcel.objects.length * 8, buffer: payload, offsets: offsAddr }, c, 4);
    return c;
  }

  /** Send a transaction to `handle` and wait for its reply (or completion, for TF_ONE_WAY). */
  *transact(handle: number, code: number, parcel: Parcel = new Parcel(), flags = 0): KGen<TransactResult> {
    const cmd = yield* this.transactionCommand(BC_TRANSACTION, handle, code, parcel, flags);
    yield* this.talk([cmd], true);
    let spamSuspect = false;
    for (;;) {
      const [br, payload] = yield* this.nextReturn();
      switch (br) {
        case BR_NOOP:
          continue;
        case BR_TRANSACTION_COMPLETE:
        case BR_ONEWAY_SPAM_SUSPECT:
          if (br === BR_ONEWAY_SPAM_SUSPECT) spamSuspect = true;
          if (flags & TF_ONE_WAY) return { status: 'ok', reply: null, spamSuspect };
          continue;
        case BR_REPLY: {
          const tr = decodeTransactionData(payload);
          const reply = yield* this.receive(tr);
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
    if (this.pendingFrees.length) yield* this.talk([], false);
  }

  /**
   * BC_ENTER_LOOPER and serve transactions until `stop` is set or `maxTransactions` were served.
   * The handler returns the reply parcel (ignored for oneway transactions).
   */
  *joinThreadPool(handler: (t: Received) => KGen<Parcel | null>, maxTransactions = Infinity): KGen {
    const enter = new Uint8Array(4);
    new DataView(enter.buffer).setUint32(0, BC_ENTER_LOOPER, true);
    yield* this.talk([enter], false);
    while (!this.stop && this.served < maxTransactions) {
      const [br, payload] = yield* this.nextReturn();
      if (br === BR_NOOP || br === BR_TRANSACTION_COMPLETE) continue;
      if (br !== BR_TRANSACTION) throw new Error(`libbinder: unexpected return 0x${br.toString(16)} in the thread pool`);
      const tr = decodeTransactionData(payload);
      const req = yield* this.receive(tr);
      const reply = yield* handler(req);
      this.served++;
      if (tr.flags & TF_ONE_WAY) {
        this.freeBuffer(tr.buffer);
        continue;
      }
      const cmd = yield* this.transactionCommand(BC_REPLY, 0, 0, reply ?? new Parcel(), 0);
      yield* this.talk([cmd], false);
      // The request Parcel dies after the reply went out: its buffer is freed with the next command.
      this.freeBuffer(tr.buffer);
    }
  }
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
