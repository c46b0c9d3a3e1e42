/**
 * drivers/android/binder/uapi.ts — the binder user ABI (include/uapi/linux/android/binder.h) for
 * 64-bit processes: ioctl numbers, BC_* commands, BR_* returns, transaction flags, object types,
 * and the layouts of the structures exchanged through user memory (little endian, as x86-64).
 *
 * Command and return codes are _IO/_IOR/_IOW encodings (dir << 30 | size << 16 | type << 8 | nr)
 * computed here rather than written out, so a payload size change would show.
 */

const IOC_NONE = 0;
const IOC_WRITE = 1;
const IOC_READ = 2;

function ioc(dir: number, type: string, nr: number, size: number): number {
  return ((dir << 30) | (size << 16) | (type.charCodeAt(0) << 8) | nr) >>> 0;
}
const _IO = (t: string, nr: number): number => ioc(IOC_NONE, t, nr, 0);
const _IOR = (t: string, nr: number, size: number): number => ioc(IOC_READ, t, nr, size);
const _IOW = (t: string, nr: number, size: number): number => ioc(IOC_WRITE, t, nr, size);
const _IOWR = (t: string, nr: number, size: number): number => ioc(IOC_READ | IOC_WRITE, t, nr, size);

/** sizeof(struct binder_write_read). */
export const BWR_SIZE = 48;
/** sizeof(struct binder_transaction_data). */
export const BTD_SIZE = 64;
/** sizeof(struct flat_binder_object). */
export const FLAT_BINDER_OBJECT_SIZE = 24;

export const BINDER_WRITE_READ = _IOWR('b', 1, BWR_SIZE);
export const BINDER_SET_MAX_THREADS = _IOW('b', 5, 4);
export const BINDER_SET_CONTEXT_MGR = _IOW('b', 7, 4);
export const BINDER_THREAD_EXIT = _IOW('b', 8, 4);
export const BINDER_VERSION = _IOWR('b', 9, 4);
export const BINDER_ENABLE_ONEWAY_SPAM_DETECTION = _IOW('b', 16, 4);
/** BINDER_CURRENT_PROTOCOL_VERSION for 64-bit. */
export const BINDER_CURRENT_PROTOCOL_VERSION = 8;

// enum binder_driver_command_protocol
export const BC_TRANSACTION = _IOW('c', 0, BTD_SIZE);
export const BC_REPLY = _IOW('c', 1, BTD_SIZE);
export const BC_FREE_BUFFER = _IOW('c', 3, 8);
export const BC_INCREFS = _IOW('c', 4, 4);
export const BC_ACQUIRE = _IOW('c', 5, 4);
export const BC_RELEASE = _IOW('c', 6, 4);
export const BC_DECREFS = _IOW('c', 7, 4);
export const BC_REGISTER_LOOPER = _IO('c', 11);
export const BC_ENTER_LOOPER = _IO('c', 12);
export const BC_EXIT_LOOPER = _IO('c', 13);

// enum binder_driver_return_protocol
export const BR_ERROR = _IOR('r', 0, 4);
export const BR_OK = _IO('r', 1);
export const BR_TRANSACTION = _IOR('r', 2, BTD_SIZE);
export const BR_REPLY = _IOR('r', 3, BTD_SIZE);
export const BR_DEAD_REPLY = _IO('r', 5);
export const BR_TRANSACTION_COMPLETE = _IO('r', 6);
export const BR_NOOP = _IO('r', 12);
export const BR_SPAWN_LOOPER = _IO('r', 13);
export const BR_FAILED_REPLY = _IO('r', 17);
export const BR_ONEWAY_SPAM_SUSPECT = _IO('r', 19);

/** Size of the payload that follows each command / return code in the stream. */
export function cmdPayloadSize(cmd: number): number {
  return (cmd >>> 16) & 0x3fff;
}

export const BC_NAMES: Record<number, string> = {
  [BC_TRANSACTION]: 'BC_TRANSACTION',
  [BC_REPLY]: 'BC_REPLY',
  [BC_FREE_BUFFER]: 'BC_FREE_BUFFER',
  [BC_INCREFS]: 'BC_INCREFS',
  [BC_ACQUIRE]: 'BC_ACQUIRE',
  [BC_RELEASE]: 'BC_RELEASE',
  [BC_DECREFS]: 'BC_DECREFS',
  [BC_REGISTER_LOOPER]: 'BC_REGISTER_LOOPER',
  [BC_ENTER_LOOPER]: 'BC_ENTER_LOOPER',
  [BC_EXIT_LOOPER]: 'BC_EXIT_LOOPER',
};

export const BR_NAMES: Record<number, string> = {
  [BR_ERROR]: 'BR_ERROR',
  [BR_OK]: 'BR_OK',
  [BR_TRANSACTION]: 'BR_TRANSACTION',
  [BR_REPLY]: 'BR_REPLY',
  [BR_DEAD_REPLY]: 'BR_DEAD_REPLY',
  [BR_TRANSACTION_COMPLETE]: 'BR_TRANSACTION_COMPLETE',
  [BR_NOOP]: 'BR_NOOP',
  [BR_SPAWN_LOOPER]: 'BR_SPAWN_LOOPER',
  [BR_FAILED_REPLY]: 'BR_FAILED_REPLY',
  [BR_ONEWAY_SPAM_SUSPECT]: 'BR_ONEWAY_SPAM_SUSPECT',
};

// enum transaction_flags
export const TF_ONE_WAY = 0x01;
export const TF_ROOT_OBJECT = 0x04;
export const TF_STATUS_CODE = 0x08;
export const TF_ACCEPT_FDS = 0x10;
export const TF_CLEAR_BUF = 0x20;
export const TF_UPDATE_TXN = 0x40;

// Object types: B_PACK_CHARS(c1, c2, c3, B_TYPE_LARGE).
const B_TYPE_LARGE = 0x85;
const pack = (a: string, b: string, c: string): number => ((a.charCodeAt(0) << 24) | (b.charCodeAt(0) << 16) | (c.charCodeAt(0) << 8) | B_TYPE_LARGE) >>> 0;
export const BINDER_TYPE_BINDER = pack('s', 'b', '*');
export const BINDER_TYPE_WEAK_BINDER = pack('w', 'b', '*');
export const BINDER_TYPE_HANDLE = pack('s', 'h', '*');
export const BINDER_TYPE_WEAK_HANDLE = pack('w', 'h', '*');
export const BINDER_TYPE_FD = pack('f', 'd', '*');

/** struct binder_write_read. */
export interface BinderWriteRead {
  write_size: number;
  write_consumed: number;
  write_buffer: number;
  read_size: number;
  read_consumed: number;
  read_buffer: number;
}

// The codecs below read and write 64-bit fields as two 32-bit halves: a value read is
// hi * 2^32 + lo, which rounds exactly as Number() of the 64-bit integer would; a safe integer
// written is split exactly (negative ones in two's complement, as BigInt.asUintN(64, x)). Any
// other number takes the BigInt route, which throws for non-integers as the ABI's u64 does.

const TWO32 = 4294967296;

/** The u64 at byte `o` of `v`, as a Number. */
export function getU64(v: DataView, o: number): number {
  return v.getUint32(o + 4, true) * TWO32 + v.getUint32(o, true);
}

/** Store `x` as the u64 at byte `o` of `v`. */
export function setU64(v: DataView, o: number, x: number): void {
  if (Number.isSafeInteger(x)) {
    const hi = Math.floor(x / TWO32);
    v.setUint32(o, (x - hi * TWO32) >>> 0, true);
    v.setUint32(o + 4, hi >>> 0, true);
  } else v.setBigUint64(o, BigInt(x), true);
}

export function decodeBwr(b: Uint8Array): BinderWriteRead {
  const v = new DataView(b.buffer, b.byteOffset, BWR_SIZE);
  return { write_size: getU64(v, 0), write_consumed: getU64(v, 8), write_buffer: getU64(v, 16), read_size: getU64(v, 24), read_consumed: getU64(v, 32), read_buffer: getU64(v, 40) };
}

export function encodeBwr(w: BinderWriteRead): Uint8Array {
  const b = new Uint8Array(BWR_SIZE);
  const v = new DataView(b.buffer);
  setU64(v, 0, w.write_size);
  setU64(v, 8, w.write_consumed);
  setU64(v, 16, w.write_buffer);
  setU64(v, 24, w.read_size);
  setU64(v, 32, w.read_consumed);
  setU64(v, 40, w.read_buffer);
  return b;
}

/** struct binder_transaction_data. `target` is the handle (commands) or node ptr (returns). */
export interface TransactionData {
  target: number;
  cookie: number;
  code: number;
  flags: number;
  sender_pid: number;
  sender_euid: number;
  data_size: number;
  offsets_size: number;
  /** data.ptr.buffer */
  buffer: number;
  /** data.ptr.offsets */
  offsets: number;
}

export function decodeTransactionData(b: Uint8Array, at = 0): TransactionData {
  return readTransactionData(new DataView(b.buffer, b.byteOffset + at, BTD_SIZE), 0);
}

/** decodeTransactionData from a view already made, at byte `at` of it (the caller checked the bounds). */
export function readTransactionData(v: DataView, at: number): TransactionData {
  return {
    target: getU64(v, at),
    cookie: getU64(v, at + 8),
    code: v.getUint32(at + 16, true),
    flags: v.getUint32(at + 20, true),
    sender_pid: v.getInt32(at + 24, true),
    sender_euid: v.getUint32(at + 28, true),
    data_size: getU64(v, at + 32),
    offsets_size: getU64(v, at + 40),
    buffer: getU64(v, at + 48),
    offsets: getU64(v, at + 56),
  };
}

export function encodeTransactionData(t: TransactionData, into?: Uint8Array, at = 0): Uint8Array {
  const b = into ?? new Uint8Array(BTD_SIZE);
  const v = new DataView(b.buffer, b.byteOffset + at, BTD_SIZE);
  setU64(v, 0, t.target);
  setU64(v, 8, t.cookie);
  v.setUint32(16, t.code >>> 0, true);
  v.setUint32(20, t.flags >>> 0, true);
  v.setInt32(24, t.sender_pid | 0, true);
  v.setUint32(28, t.sender_euid >>> 0, true);
  setU64(v, 32, t.data_size);
  setU64(v, 40, t.offsets_size);
  setU64(v, 48, t.buffer);
  setU64(v, 56, t.offsets);
  return b;
}

/** struct flat_binder_object: type, flags, binder (or handle), cookie. */
export interface FlatBinderObject {
  type: number;
  flags: number;
  /** `binder` pointer for BINDER_TYPE_BINDER, `handle` for BINDER_TYPE_HANDLE. */
  binder: number;
  cookie: number;
}

export function decodeFlatBinderObject(b: Uint8Array, at = 0): FlatBinderObject {
  const v = new DataView(b.buffer, b.byteOffset + at, FLAT_BINDER_OBJECT_SIZE);
  return { type: v.getUint32(0, true), flags: v.getUint32(4, true), binder: getU64(v, 8), cookie: getU64(v, 16) };
}

export function encodeFlatBinderObject(o: FlatBinderObject, into?: Uint8Array, at = 0): Uint8Array {
  const b = into ?? new Uint8Array(FLAT_BINDER_OBJECT_SIZE);
  const v = new DataView(b.buffer, b.byteOffset + at, FLAT_BINDER_OBJECT_SIZE);
  v.setUint32(0, o.type >>> 0, true);
  v.setUint32(4, o.flags >>> 0, true);
  setU64(v, 8, o.binder);
  setU64(v, 16, o.cookie);
  return b;
}
