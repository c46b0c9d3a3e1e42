/**
 * hw/phys.ts — physical memory: 4 KiB frames inside the machine's SharedArrayBuffer.
 *
 * 64-bit words are stored little-endian as two 32-bit halves (low half at the lower address), so
 * every paging-structure entry has all of P, A and D in its low half and the processor can set
 * A/D with one 32-bit atomic read-modify-write, as the hardware's locked cycle does (SDM Vol. 3A
 * §8.1.2.1). Whole-entry writes follow Linux's PAE order (arch/x86/include/asm/pgtable-3level.h):
 * the high half first when the new entry is present, the low half first otherwise, so a walker
 * that reads the low half first never combines a present low half with a stale high half.
 *
 * The frame watch map (one byte per frame, also in the shared buffer) lets software mark frames
 * it has freed; the CPUs report any access to a marked frame (see hw/cpu.ts). The hardware does
 * not know why a frame is marked: that policy belongs to the kernel.
 *
 * An address outside installed memory is an error (PhysAddressError), never a wrap.
 *
 * Whole-frame fills and copies are the kernel's most frequent bulk operations (zeroing on
 * allocation, poisoning on free, copy-on-write). Typed-array set/fill/copyWithin on a
 * SharedArrayBuffer copy word by word with relaxed atomic stores; WebAssembly's memory.fill and
 * memory.copy run as plain memset/memmove and are two to three times faster. So the machine's
 * buffer is, when it can be, the buffer of a shared WebAssembly.Memory (allocateMachineBuffer),
 * and frame fills and copies go through a four-instruction module bound to it. The bytes written
 * are the same either way; a buffer without that module (another thread's view, a size that is
 * not whole 64 KiB wasm pages, a host that refuses the memory) uses the typed-array path.
 */

export class PhysAddressError extends RangeError {
  constructor(message: string) {
    super(message);
    this.name = 'PhysAddressError';
  }
}

export const FRAME_SHIFT = 12;
export const FRAME_SIZE = 4096;

/** WebAssembly's page size: a wasm memory's byte length is a multiple of it. */
export const WASM_PAGE_BYTES = 65536;

/** The exports of the bulk-operation module: byte addresses are offsets into the whole buffer. */
interface BulkOps {
  /** memory.fill: `len` bytes at `dst` set to the byte `value`. */
  fill(dst: number, value: number, len: number): void;
  /** memory.copy: `len` bytes from `src` to `dst` (memmove semantics). */
  copy(dst: number, src: number, len: number): void;
}

/**
 * The module, hand-assembled: it imports a shared memory "m"."m" (0 to 65536 pages) and exports
 * fill(dst, value, len) = memory.fill and copy(dst, src, len) = memory.copy.
 */
const BULK_WASM = new Uint8Array([
  0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version 1
  0x01, 0x07, 0x01, 0x60, 0x03, 0x7f, 0x7f, 0x7f, 0x00, // type section: (i32, i32, i32) -> ()
  0x02, 0x0b, 0x01, 0x01, 0x6d, 0x01, 0x6d, 0x02, 0x03, 0x00, 0x80, 0x80, 0x04, // import "m" "m": shared memory, min 0, max 65536
  0x03, 0x03, 0x02, 0x00, 0x00, // function section: two functions of type 0
  0x07, 0x0f, 0x02, 0x04, 0x66, 0x69, 0x6c, 0x6c, 0x00, 0x00, 0x04, 0x63, 0x6f, 0x70, 0x79, 0x00, 0x01, // export "fill" = 0, "copy" = 1
  0x0a, 0x1a, 0x02, // code section, two bodies
  0x0b, 0x00, 0x20, 0x00, 0x20, 0x01, 0x20, 0x02, 0xfc, 0x0b, 0x00, 0x0b, // fill: local.get 0, 1, 2; memory.fill 0
  0x0c, 0x00, 0x20, 0x00, 0x20, 0x01, 0x20, 0x02, 0xfc, 0x0a, 0x00, 0x00, 0x0b, // copy: local.get 0, 1, 2; memory.copy 0 0
]);

/** The part of the WebAssembly JS API used here (the project's TypeScript libraries do not declare it). */
interface WasmApi {
  Module: new (bytes: Uint8Array) => object;
  Memory: new (descriptor: { initial: number; maximum: number; shared: boolean }) => { readonly buffer: ArrayBufferLike };
  Instance: new (module: object, imports: object) => { readonly exports: unknown };
}
const wasmApi = (globalThis as unknown as { WebAssembly?: WasmApi }).WebAssembly;

/** The compiled module: undefined until first needed, null if this host cannot use it. */
let bulkModule: object | null | undefined;
/** Bulk operations of each buffer allocated by allocateMachineBuffer in this thread. */
const bulkOpsOf = new WeakMap<SharedArrayBuffer, BulkOps>();

/**
 * A zeroed shared buffer of `bytes` bytes for a machine: a shared WebAssembly.Memory's buffer with
 * the bulk module bound to it when `bytes` is a whole number of wasm pages (at most 4 GiB) and the
 * host allows it, otherwise a plain SharedArrayBuffer. Either is a SharedArrayBuffer of exactly
 * `bytes` bytes; only the speed of fillFrame and copyFrame differs.
 */
export function allocateMachineBuffer(bytes: number): SharedArrayBuffer {
  const pages = bytes / WASM_PAGE_BYTES;
  if (wasmApi !== undefined && Number.isInteger(pages) && pages > 0 && pages <= 65536) {
    try {
      if (bulkModule === undefined) bulkModule = new wasmApi.Module(BULK_WASM);
      if (bulkModule !== null) {
        const memory = new wasmApi.Memory({ initial: pages, maximum: pages, shared: true });
        const instance = new wasmApi.Instance(bulkModule, { m: { m: memory } });
        // A shared memory that cannot grow keeps one buffer object for its whole life.
        const sab = memory.buffer;
        if (sab instanceof SharedArrayBuffer && sab.byteLength === bytes) {
          bulkOpsOf.set(sab, instance.exports as BulkOps);
          return sab;
        }
      }
    } catch {
      // No usable wasm memory here (module rejected, or the memory could not be reserved).
      if (bulkModule === undefined) bulkModule = null;
    }
  }
  return new SharedArrayBuffer(bytes);
}

export class PhysicalMemory {
  /** Installed bytes. */
  readonly size: number;
  readonly frames: number;
  /** Physical memory as 32-bit words: word i covers bytes 4i..4i+3. */
  readonly i32: Int32Array;
  readonly u8: Uint8Array;
  /** One byte per frame: non-zero marks a watched frame. */
  readonly watch: Uint8Array;
  /**
   * A watch map in which no frame is watched (private to this thread, never written): the fast
   * walkers read it instead of `watch` when a CPU's walks are not watched, to keep one code path.
   */
  readonly noWatch: Uint8Array;
  /** The wasm bulk operations bound to the buffer, or null (typed-array fills and copies). */
  private readonly bulk: BulkOps | null;
  /** Byte offset of physical address 0 in the buffer (the bulk operations address the buffer). */
  private readonly physBase: number;

  constructor(sab: SharedArrayBuffer, physBase: number, size: number, watchBase: number) {
    this.size = size;
    this.physBase = physBase;
    this.bulk = bulkOpsOf.get(sab) ?? null;
    this.frames = size / FRAME_SIZE;
    this.i32 = new Int32Array(sab, physBase, size / 4);
    this.u8 = new Uint8Array(sab, physBase, size);
    this.watch = new Uint8Array(sab, watchBase, this.frames);
    this.noWatch = new Uint8Array(this.frames);
  }

  /** Validate a physical address for an access of `bytes` bytes and return it as a number. */
  check(pa: number | bigint, bytes: number, align = 1, what = 'physical address'): number {
    let n: number;
    if (typeof pa === 'bigint') {
      if (pa < 0n || pa > BigInt(Number.MAX_SAFE_INTEGER)) throw new PhysAddressError(`${what} 0x${pa.toString(16)} is outside installed memory (0..0x${this.size.toString(16)})`);
      n = Number(pa);
    } else if (typeof pa === 'number' && Number.isSafeInteger(pa) && pa >= 0) {
      n = pa;
    } else {
      throw new PhysAddressError(`${what} must be a non-negative integer (number or bigint), got ${String(pa)}`);
    }
    if (n + bytes > this.size) {
      throw new PhysAddressError(`${what} 0x${n.toString(16)} (+${bytes} bytes) is beyond installed memory of 0x${this.size.toString(16)} bytes`);
    }
    if (n % align !== 0) throw new PhysAddressError(`${what} 0x${n.toString(16)} is not ${align}-byte aligned`);
    return n;
  }

  // ---- The bigint convenience API -------------------------------------------------------------

  /** Read the 64-bit little-endian word at `pa` (8-byte aligned). */
  read64(pa: number | bigint): bigint {
    const i = this.check(pa, 8, 8) >>> 2;
    return (BigInt(this.i32[i + 1]! >>> 0) << 32n) | BigInt(this.i32[i]! >>> 0);
  }

  /**
   * Write the 64-bit word at `pa` (8-byte aligned), in Linux's PAE order: high half first if the
   * new value has bit 0 set, low half first otherwise.
   */
  write64(pa: number | bigint, value: bigint): void {
    if (typeof value !== 'bigint') throw new TypeError(`write64 value must be a bigint, got ${typeof value}`);
    if (value < -(1n << 63n) || value >= 1n << 64n) throw new RangeError(`write64 value 0x${value.toString(16)} does not fit in 64 bits`);
    const i = this.check(pa, 8, 8) >>> 2;
    const u = BigInt.asUintN(64, value);
    this.writeWordPair(i, Number(u & 0xffffffffn) | 0, Number(u >> 32n) | 0);
  }

  // ---- Fast paths on 32-bit halves (word indices, no validation) ------------------------------

  /** Low half of the 64-bit word at word index `i` (i = pa >> 2). */
  lo(i: number): number {
    return this.i32[i]!;
  }

  hi(i: number): number {
    return this.i32[i + 1]!;
  }

  /** Store both halves at word index `i` in the PAE order described above. */
  writeWordPair(i: number, lo: number, hi: number): void {
    if (lo & 1) {
      this.i32[i + 1] = hi;
      Atomics.store(this.i32, i, lo);
    } else {
      Atomics.store(this.i32, i, lo);
      this.i32[i + 1] = hi;
    }
  }

  /** Atomically replace the low half at `i` if it still equals `expect`; returns the old value. */
  cmpxchgLo(i: number, expect: number, replacement: number): number {
    return Atomics.compareExchange(this.i32, i, expect, replacement);
  }

  /** Atomically exchange the low half (ptep_get_and_clear's first step); returns the old value. */
  xchgLo(i: number, value: number): number {
    return Atomics.exchange(this.i32, i, value);
  }

  /** Atomically clear bits in the low half; returns the old value. */
  andLo(i: number, mask: number): number {
    return Atomics.and(this.i32, i, mask);
  }

  // ---- Byte-granular access (kernel copies, program loads and stores) ------------------------

  read8(pa: number): number {
    return this.u8[this.check(pa, 1)]!;
  }

  write8(pa: number, v: number): void {
    this.u8[this.check(pa, 1)] = v;
  }

  /** Read `size` (1, 2, 4) bytes little-endian at `pa`; unaligned reads are assembled bytewise. */
  readN(pa: number, size: 1 | 2 | 4): number {
    const p = this.check(pa, size);
    if (size === 4 && (p & 3) === 0) return this.i32[p >>> 2]! >>> 0;
    let v = 0;
    for (let k = size - 1; k >= 0; k--) v = v * 256 + this.u8[p + k]!;
    return v;
  }

  writeN(pa: number, size: 1 | 2 | 4, value: number): void {
    const p = this.check(pa, size);
    if (size === 4 && (p & 3) === 0) {
      this.i32[p >>> 2] = value | 0;
      return;
    }
    let v = value >>> 0;
    for (let k = 0; k < size; k++) {
      this.u8[p + k] = v & 0xff;
      v >>>= 8;
    }
  }

  /** Copy `len` bytes starting at `pa` into a new array. */
  readBytes(pa: number, len: number): Uint8Array {
    const p = this.check(pa, len);
    return this.u8.slice(p, p + len);
  }

  writeBytes(pa: number, data: Uint8Array): void {
    const p = this.check(pa, data.length);
    this.u8.set(data, p);
  }

  /** Fill a whole frame with a 32-bit pattern (0 for zeroing, a poison pattern after free). */
  fillFrame(pfn: number, pattern: number): void {
    if (!Number.isInteger(pfn) || pfn < 0 || pfn >= this.frames) throw new PhysAddressError(`frame ${pfn} is beyond installed memory (${this.frames} frames)`);
    const bulk = this.bulk;
    // memory.fill sets bytes: usable when the four bytes of the pattern are equal (0, poison).
    if (bulk !== null && (pattern & 0xff) * 0x01010101 === (pattern >>> 0)) {
      bulk.fill(this.physBase + pfn * FRAME_SIZE, pattern & 0xff, FRAME_SIZE);
      return;
    }
    const i = pfn << 10;
    // Copying a private frame-sized pattern is about twice as fast as fill() on a shared buffer.
    let src = this.patterns.get(pattern | 0);
    if (!src) {
      src = new Int32Array(1024).fill(pattern);
      if (this.patterns.size < 8) this.patterns.set(pattern | 0, src);
    }
    this.i32.set(src, i);
  }

  /** Frame-sized pattern pages for fillFrame (a few patterns are used: zero, poison). */
  private readonly patterns = new Map<number, Int32Array>();

  /** Copy one frame onto another. */
  copyFrame(dstPfn: number, srcPfn: number): void {
    if (dstPfn < 0 || dstPfn >= this.frames || srcPfn < 0 || srcPfn >= this.frames) throw new PhysAddressError(`frame copy ${srcPfn}→${dstPfn} is beyond installed memory`);
    if (this.bulk !== null) {
      this.bulk.copy(this.physBase + dstPfn * FRAME_SIZE, this.physBase + srcPfn * FRAME_SIZE, FRAME_SIZE);
      return;
    }
    this.i32.copyWithin(dstPfn << 10, srcPfn << 10, (srcPfn << 10) + 1024);
  }

  // ---- Frame watch map ------------------------------------------------------------------------

  setWatch(pfn: number, on: boolean): void {
    if (!Number.isInteger(pfn) || pfn < 0 || pfn >= this.frames) throw new PhysAddressError(`frame ${pfn} is beyond installed memory (${this.frames} frames)`);
    this.watch[pfn] = on ? 1 : 0;
  }

  isWatched(pfn: number): boolean {
    return this.watch[pfn] !== 0;
  }
}
