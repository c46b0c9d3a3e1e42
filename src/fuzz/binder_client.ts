/**
 * src/fuzz/binder_client.ts — a raw binder client for the fuzzer: one BINDER_WRITE_READ per call,
 * with the command stream, the return stream and the payload in a thread's own scratch area of
 * user memory, so every byte the driver reads or writes goes through the emulated MMU. Unlike
 * src/workloads/libbinder.ts it hides nothing: it sends exactly the bytes it is given (bad ones
 * included) and hands back every return code, and its reads do not block (the file is put in
 * O_NONBLOCK mode), so a fuzz step never waits for another process.
 *
 * Scratch layout (SCRATCH_SIZE bytes, mapped read-write by the thread):
 *   [0, 48)          struct binder_write_read
 *   [48, 4096)       the command stream (written together with the bwr: one copy)
 *   [4096, 8192)     the return stream
 *   [8192, end)      transaction payload, then its offsets array
 */

import type { KGen } from '../../kernel/sched/core.ts';
import type { User } from '../../kernel/uapi.ts';
import { groupOf } from '../../kernel/exit.ts';
import {
  BC_FREE_BUFFER, BC_REPLY, BC_TRANSACTION, BINDER_WRITE_READ, BR_NAMES, BTD_SIZE, BWR_SIZE, decodeBwr, decodeTransactionData, encodeBwr,
  encodeTransactionData, type TransactionData,
} from '../../drivers/android/binder/uapi.ts';

export const SCRATCH_SIZE = 64 * 1024;
export const CMD_AT = BWR_SIZE;
export const CMD_CAP = 4096 - CMD_AT;
export const READ_AT = 4096;
export const READ_CAP = 4096;
export const PAYLOAD_AT = 8192;
export const PAYLOAD_CAP = SCRATCH_SIZE - PAYLOAD_AT;

/** A return code and, for BR_TRANSACTION / BR_REPLY, its transaction data. */
export interface BinderReturn {
  cmd: number;
  name: string;
  tr?: TransactionData;
}

/** O_NONBLOCK on an open file, as open(…, O_NONBLOCK) would have set it. */
export function setNonblock(u: User, fd: number): void {
  const f = groupOf(u.task)?.files.get(fd);
  if (f) f.f_flags |= 0o4000;
}

/** Encode BC_TRANSACTION / BC_REPLY. */
export function cmdTransaction(cmd: typeof BC_TRANSACTION | typeof BC_REPLY, tr: TransactionData): Uint8Array {
  const c = new Uint8Array(4 + BTD_SIZE);
  new DataView(c.buffer).setUint32(0, cmd, true);
  encodeTransactionData(tr, c, 4);
  return c;
}

/** Encode BC_FREE_BUFFER(ptr) (ptr as an unsigned 64-bit value). */
export function cmdFree(ptr: number): Uint8Array {
  const c = new Uint8Array(12);
  const v = new DataView(c.buffer);
  v.setUint32(0, BC_FREE_BUFFER, true);
  v.setBigUint64(4, BigInt.asUintN(64, BigInt(Math.trunc(Number.isFinite(ptr) ? ptr : 0))), true);
  return c;
}

/** A bare 32-bit command word (BC_ENTER_LOOPER …, or garbage). */
export function cmdWord(cmd: number, extra = 0): Uint8Array {
  const c = new Uint8Array(4 + extra);
  new DataView(c.buffer).setUint32(0, cmd >>> 0, true);
  return c;
}

export function concat(parts: readonly Uint8Array[]): Uint8Array {
  let n = 0;
  for (const p of parts) n += p.length;
  const out = new Uint8Array(n);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** Split a return stream into its codes. */
export function parseReturns(bytes: Uint8Array): BinderReturn[] {
  const out: BinderReturn[] = [];
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
  let p = 0;
  while (p + 4 <= bytes.length) {
    const cmd = v.getUint32(p, true);
    const n = (cmd >>> 16) & 0x3fff;
    const r: BinderReturn = { cmd, name: BR_NAMES[cmd] ?? `0x${cmd.toString(16)}` };
    if (n === BTD_SIZE && p + 4 + n <= bytes.length) r.tr = decodeTransactionData(bytes, p + 4);
    out.push(r);
    p += 4 + n;
  }
  return out;
}

/**
 * One BINDER_WRITE_READ from `scratch`: write `cmds` (if any), then read up to `readSize` bytes
 * of returns (0: no read). The ioctl's errno propagates as a SyscallError (EAGAIN when a
 * non-blocking read finds nothing); returns the parsed returns and how much was consumed.
 */
export function* writeRead(u: User, fd: number, scratch: number, cmds: Uint8Array | null, readSize: number, bwrAt = scratch, writeAt = scratch + CMD_AT, readAt = scratch + READ_AT): KGen<BinderReturn[]> {
  const len = cmds ? cmds.length : 0;
  const bwr = encodeBwr({ write_size: len, write_consumed: 0, write_buffer: writeAt, read_size: readSize, read_consumed: 0, read_buffer: readAt });
  if (len && writeAt === bwrAt + BWR_SIZE) {
    yield* u.write(bwrAt, concat([bwr, cmds!]));
  } else {
    if (len) yield* u.write(writeAt, cmds!);
    yield* u.write(bwrAt, bwr);
  }
  yield* u.ioctl(fd, BINDER_WRITE_READ, bwrAt);
  if (readSize === 0) return [];
  const consumed = decodeBwr(yield* u.read(bwrAt, BWR_SIZE)).read_consumed;
  return consumed > 0 ? parseReturns(yield* u.read(readAt, Math.min(consumed, READ_CAP))) : [];
}

// ---- payloads -------------------------------------------------------------------------------

/** Pseudo-random bytes the payloads are cut from (xorshift32, fixed seed): 64 KiB plus a window. */
const PATTERN = (() => {
  const b = new Uint8Array(65536 + 4096);
  let x = 0x9e3779b9;
  for (let i = 0; i < b.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    b[i] = x & 0xff;
  }
  return b;
})();

/** The payload of transaction `txid`: [txid u32][size u32], then pattern bytes starting at an offset that depends on txid (truncated to size). */
export function payload(txid: number, size: number): Uint8Array {
  const b = new Uint8Array(size);
  let at = (txid * 131) % 4096;
  for (let done = 0; done < size; ) {
    const n = Math.min(size - done, PATTERN.length - at);
    b.set(PATTERN.subarray(at, at + n), done);
    done += n;
    at = 0;
  }
  const hdr = new Uint8Array(8);
  const v = new DataView(hdr.buffer);
  v.setUint32(0, txid >>> 0, true);
  v.setUint32(4, size >>> 0, true);
  b.set(hdr.subarray(0, Math.min(8, size)));
  return b;
}

/** The first byte at which `got` differs from `payload(txid, size)` outside [skipFrom, skipTo), or -1. */
export function payloadMismatch(got: Uint8Array, txid: number, size: number, skipFrom = 0, skipTo = 0): number {
  const want = payload(txid, size);
  if (got.length !== size) return Math.min(got.length, size);
  for (let j = 0; j < size; j++) {
    if (j >= skipFrom && j < skipTo) continue;
    if (got[j] !== want[j]) return j;
  }
  return -1;
}
