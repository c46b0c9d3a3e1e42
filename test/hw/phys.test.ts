/**
 * hw/phys.ts — physical memory in the shared buffer: 64-bit little-endian words as two 32-bit
 * halves, read64/write64 round trips (number and bigint addresses, two's complement values), the
 * PAE store order of write64 (high half first for a present entry, low half first otherwise,
 * observed through the atomic store of the low half), the atomic helpers on the low half,
 * byte-granular access, frame fill/copy, the watch map, and the errors: misalignment and
 * addresses outside installed memory are PhysAddressErrors with a clear message, never a wrap.
 */

import { afterEach, describe, expect, it, vi } from 'vitest';
import { FRAME_SHIFT, FRAME_SIZE, Machine, PhysAddressError, PhysicalMemory } from '../../hw/index.ts';

const MB = 1 << 20;

function mem(bytes = MB): PhysicalMemory {
  return new Machine({ memoryBytes: bytes }).phys;
}

describe('read64 / write64', () => {
  it.each([0n, 1n, 0xffffffffn, 0x100000000n, 0x8000000000000000n, 0xffffffffffffffffn, 0xdeadbeefcafebabfn, 0x0123456789abcdefn])('round-trips 0x%s', (v) => {
    const p = mem();
    for (const pa of [0, 8, MB - 8]) {
      p.write64(pa, v);
      expect(p.read64(pa)).toBe(v);
      expect(p.read64(BigInt(pa))).toBe(v);
    }
  });

  it('stores little-endian, low half at the lower address', () => {
    const p = mem();
    p.write64(0x1000n, 0x0102030405060708n);
    expect([...p.readBytes(0x1000, 8)]).toEqual([8, 7, 6, 5, 4, 3, 2, 1]);
    expect(p.lo(0x1000 >> 2)).toBe(0x05060708);
    expect(p.hi(0x1000 >> 2)).toBe(0x01020304);
    expect(p.readN(0x1004, 4)).toBe(0x01020304);
  });

  it('a negative bigint value is stored as its two’s complement', () => {
    const p = mem();
    p.write64(16, -1n);
    expect(p.read64(16)).toBe(0xffffffffffffffffn);
    p.write64(16, -(1n << 63n));
    expect(p.read64(16)).toBe(0x8000000000000000n);
  });

  it.each([
    ['an unaligned address', (p: PhysicalMemory) => p.read64(4), /physical address 0x4 is not 8-byte aligned/],
    ['an unaligned write', (p: PhysicalMemory) => p.write64(0x1003, 1n), /0x1003 is not 8-byte aligned/],
    ['the end of memory', (p: PhysicalMemory) => p.read64(MB), /physical address 0x100000 \(\+8 bytes\) is beyond installed memory of 0x100000 bytes/],
    ['a word straddling the end', (p: PhysicalMemory) => p.read64(MB - 4), /beyond installed memory/],
    ['4 GiB + 8 (must not wrap to 8)', (p: PhysicalMemory) => p.write64(2 ** 32 + 8, 1n), /0x100000008 .* beyond installed memory/],
    ['a bigint beyond 2^53', (p: PhysicalMemory) => p.read64(1n << 60n), /0x1000000000000000 is outside installed memory/],
    ['a negative number', (p: PhysicalMemory) => p.read64(-8), /must be a non-negative integer \(number or bigint\), got -8/],
    ['a negative bigint', (p: PhysicalMemory) => p.read64(-8n), /outside installed memory/],
    ['a fraction', (p: PhysicalMemory) => p.read64(8.5), /non-negative integer/],
    ['NaN', (p: PhysicalMemory) => p.write64(NaN, 0n), /got NaN/],
  ] as const)('%s is a PhysAddressError', (_name, fn, msg) => {
    const p = mem();
    p.write64(8, 0x1234n);
    expect(() => fn(p)).toThrow(PhysAddressError);
    expect(() => fn(p)).toThrow(msg);
    expect(p.read64(8)).toBe(0x1234n); // nothing wrapped onto low memory
  });

  it('PhysAddressError is a RangeError', () => {
    expect(new PhysAddressError('x')).toBeInstanceOf(RangeError);
    expect(new PhysAddressError('x').name).toBe('PhysAddressError');
  });

  it.each([
    ['a number value', () => mem().write64(0, 5 as never), TypeError, /write64 value must be a bigint, got number/],
    ['2^64', () => mem().write64(0, 1n << 64n), RangeError, /does not fit in 64 bits/],
    ['-2^63 - 1', () => mem().write64(0, -(1n << 63n) - 1n), RangeError, /does not fit in 64 bits/],
  ] as const)('write64 rejects %s', (_name, fn, type, msg) => {
    expect(fn).toThrow(type);
    expect(fn).toThrow(msg);
  });
});

describe('PAE store order of write64 (Linux pgtable-3level.h)', () => {
  afterEach(() => vi.restoreAllMocks());

  /** Record, for every atomic store into memory, the high half as it was at that moment. */
  function observe(p: PhysicalMemory): { at: number; lo: number; hiAtStore: number }[] {
    const seen: { at: number; lo: number; hiAtStore: number }[] = [];
    const original = Atomics.store;
    vi.spyOn(Atomics, 'store').mockImplementation(((arr: Int32Array, index: number, value: number) => {
      if (arr === p.i32) seen.push({ at: index, lo: value, hiAtStore: arr[index + 1]! });
      return original(arr, index, value);
    }) as typeof Atomics.store);
    return seen;
  }

  it('a present value (bit 0 set): the high half is already in place when the low half is published', () => {
    const p = mem();
    p.write64(0x2000, 0xaaaaaaaa00000000n);
    const seen = observe(p);
    p.write64(0x2000, 0x8000000500003001n);
    expect(seen).toEqual([{ at: 0x2000 >> 2, lo: 0x3001, hiAtStore: 0x80000005 | 0 }]);
    expect(p.read64(0x2000)).toBe(0x8000000500003001n);
  });

  it('a non-present value: the low half (clearing P) is stored first, the high half after', () => {
    const p = mem();
    p.write64(0x2000, 0x8000000500003001n);
    const seen = observe(p);
    p.write64(0x2000, 0x1234567800003000n);
    expect(seen).toEqual([{ at: 0x2000 >> 2, lo: 0x3000, hiAtStore: 0x80000005 | 0 }]);
    expect(p.read64(0x2000)).toBe(0x1234567800003000n);
  });

  it('writeWordPair follows the same order', () => {
    const p = mem();
    const seen = observe(p);
    p.writeWordPair(10, 1, 7);
    p.writeWordPair(10, 0, 9);
    expect(seen).toEqual([
      { at: 10, lo: 1, hiAtStore: 7 },
      { at: 10, lo: 0, hiAtStore: 7 },
    ]);
    expect(p.hi(10)).toBe(9);
  });
});

describe('atomic helpers on the low half', () => {
  it('cmpxchgLo replaces only when the expected value matches and returns the old value', () => {
    const p = mem();
    p.write64(0x3000, 0x00000001_00000021n);
    const i = 0x3000 >> 2;
    expect(p.cmpxchgLo(i, 0x20, 0x61)).toBe(0x21);
    expect(p.read64(0x3000)).toBe(0x00000001_00000021n);
    expect(p.cmpxchgLo(i, 0x21, 0x61)).toBe(0x21);
    expect(p.read64(0x3000)).toBe(0x00000001_00000061n);
    expect(p.xchgLo(i, 0)).toBe(0x61);
    expect(p.lo(i)).toBe(0);
    p.write64(0x3000, 0xfffn);
    expect(p.andLo(i, ~0x60)).toBe(0xfff);
    expect(p.read64(0x3000)).toBe(0xf9fn);
  });
});

describe('byte-granular access, frames and the watch map', () => {
  it('read8/write8, readN/writeN (aligned and unaligned), readBytes/writeBytes', () => {
    const p = mem();
    p.write8(5, 0xab);
    expect(p.read8(5)).toBe(0xab);
    p.writeN(0x101, 4, 0xdeadbeef);
    expect(p.readN(0x101, 4)).toBe(0xdeadbeef);
    expect(p.readN(0x101, 2)).toBe(0xbeef);
    expect(p.readN(0x104, 1)).toBe(0xde);
    p.writeN(0x200, 4, 0xffffffff);
    expect(p.readN(0x200, 4)).toBe(0xffffffff);
    p.writeN(0x301, 2, 0x1234);
    expect([...p.readBytes(0x300, 4)]).toEqual([0, 0x34, 0x12, 0]);
    p.writeBytes(MB - 3, new Uint8Array([1, 2, 3]));
    expect([...p.readBytes(MB - 3, 3)]).toEqual([1, 2, 3]);
    expect(() => p.writeBytes(MB - 2, new Uint8Array([1, 2, 3]))).toThrow(/beyond installed memory/);
    expect(() => p.read8(MB)).toThrow(PhysAddressError);
    expect(() => p.readN(MB - 2, 4)).toThrow(PhysAddressError);
  });

  it('fillFrame, copyFrame and their bounds', () => {
    const p = mem();
    expect(p.frames).toBe(MB / FRAME_SIZE);
    expect([FRAME_SIZE, FRAME_SHIFT]).toEqual([4096, 12]);
    p.fillFrame(3, 0x6b6b6b6b);
    expect(p.read64(3 * 4096 + 4088)).toBe(0x6b6b6b6b6b6b6b6bn);
    expect(p.read64(4 * 4096)).toBe(0n);
    p.copyFrame(7, 3);
    expect(p.read64(7 * 4096 + 8)).toBe(0x6b6b6b6b6b6b6b6bn);
    expect(() => p.fillFrame(p.frames, 0)).toThrow(/frame 256 is beyond installed memory \(256 frames\)/);
    expect(() => p.fillFrame(1.5, 0)).toThrow(PhysAddressError);
    expect(() => p.copyFrame(p.frames, 0)).toThrow(/frame copy 0→256 is beyond installed memory/);
    expect(() => p.copyFrame(0, -1)).toThrow(PhysAddressError);
  });

  it('the watch map marks frames', () => {
    const p = mem();
    expect(p.isWatched(9)).toBe(false);
    p.setWatch(9, true);
    expect(p.isWatched(9)).toBe(true);
    expect(p.watch[9]).toBe(1);
    p.setWatch(9, false);
    expect(p.isWatched(9)).toBe(false);
    expect(() => p.setWatch(p.frames, true)).toThrow(PhysAddressError);
  });

  it('check() returns the address as a number and applies alignment', () => {
    const p = mem();
    expect(p.check(0x1000n, 8, 8)).toBe(0x1000);
    expect(() => p.check(0x1004, 4, 8, 'table')).toThrow(/table 0x1004 is not 8-byte aligned/);
  });
});
