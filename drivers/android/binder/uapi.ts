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

export function decodeBwr(b: Uint8Array): BinderWriteRead {
  const v = new DataView(b.buffer, b.byteOffset, BWR_SIZE);
  const u = (o: number): number => Number(v.getBigUint64(o, true));
  return { write_size: u(0), write_consumed: u(8), write_buffer: u(16), read_size: u(24), read_consumed: u(32), read_buffer: u(40) };
}

export function encodeBwr(w: BinderWriteRead): Uint8Array {
  const b = new Uint8Array(BWR_SIZE);
  const v = new DataView(b.buffer);
  const s = (o: number, x: number): void => v.setBigUint64(o, BigInt(x), true);
  s(0, w.write_size);
  s(8, w.write_consumed);
  s(16, w.write_buffer);
  s(24, w.read_size);
  s(32, w.read_consumed);
  s(40, w.read_buffer);
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
  const v = new DataView(b.buffer, b.byteOffset + at, BTD_SIZE);
  const u64 = (o: number): number => Number(v.getBigUint64(o, true));
  return {
    target: u64(0),
    cookie: u64(8),
    code: v.getUint32(16, true),
    flags: v.getUint32(20, true),
    sender_pid: v.getInt32(24, true),
    sender_euid: v.getUint32(28, true),
    data_size: u64(32),
    offsets_size: u64(40),
    buffer: u64(48),
    offsets: u64(56),
  };
}

export function encodeTransactionData(t: TransactionData, into?: Uint8Array, at = 0): Uint8Array {
  const b = into ?? new Uint8Array(BTD_SIZE);
  const v = new DataView(b.buffer, b.byteOffset + at, BTD_SIZE);
  const s = (o: number, x: number): void => v.setBigUint64(o, BigInt(x), true);
  s(0, t.target);
  s(8, t.cookie);
  v.setUint32(16, t.code >>> 0, true);
  v.setUint32(20, t.flags >>> 0, true);
  v.setInt32(24, t.sender_pid | 0, true);
  v.setUint32(28, t.sender_euid >>> 0, true);
  s(32, t.data_size);
  s(40, t.offsets_size);
  s(48, t.buffer);
  s(56, t.offsets);
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
  return { type: v.getUint32(0, true), flags: v.getUint32(4, true), binder: Number(v.getBigUint64(8, true)), cookie: Number(v.getBigUint64(16, true)) };
}

export function encodeFlatBinderObject(o: FlatBinderObject, into?: Uint8Array, at = 0): Uint8Array {
  const b = into ?? new Uint8Array(FLAT_BINDER_OBJECT_SIZE);
  const v = new DataView(b.buffer, b.byteOffset + at, FLAT_BINDER_OBJECT_SIZE);
  v.setUint32(0, o.type >>> 0, true);
  v.setUint32(4, o.flags >>> 0, true);
  v.setBigUint64(8, BigInt(o.binder), true);
  v.setBigUint64(16, BigInt(o.cookie), true);
  return b;
}
