/**
 * hw/cpu.ts outside the TLB rules (those are in tlb.test.ts): API misuse (non-bigint or out-of-range
 * register values, setCpl/setPkru/setAc arguments, access() arguments) throws TypeError or
 * RangeError; the canonical-address check for 4-level and 5-level paging gives #GP(0), or #SS(0)
 * for stack accesses, without touching CR2; upper-half addresses as negative numbers and as bigints
 * give the same result, with CR2 reported in the caller's form; paging off; machine checks for
 * tables beyond memory; the frame watch; the counters() names and derived counters; clocks.
 */

import { describe, expect, it } from 'vitest';
import {
  AddressError, COUNTER_NAMES, CR0_PG, CR4_LA57, CR4_PAE, LEVEL_PML4E, Machine, PageTableBuilder, PhysAddressError, encodeEntry, type WatchHit,
} from '../../hw/index.ts';
import type { Cpu } from '../../hw/cpu.ts';

function mapped(opts: { la57?: boolean } = {}): { m: Machine; cpu: Cpu; b: PageTableBuilder } {
  const m = new Machine({ memoryBytes: 4 << 20, la57: opts.la57 ?? false });
  const b = new PageTableBuilder(m, 0x100000, 0x180000, opts.la57 ? 5 : 4);
  b.map(0x400000, 0x200000, { A: true, D: true });
  b.map(0xffff800000001000n, 0x201000, { A: true, D: true, US: false });
  const cpu = m.cpu(0);
  if (opts.la57) {
    // The SDM way: leave IA-32e mode, set LA57, enter it again.
    expect(cpu.writeCr0(cpu.readCr0() & ~BigInt(CR0_PG >>> 0))).toEqual({ ok: true });
    expect(cpu.writeCr4(BigInt(CR4_PAE | CR4_LA57))).toEqual({ ok: true });
    expect(cpu.writeCr3(BigInt(b.root))).toEqual({ ok: true });
    expect(cpu.writeCr0(cpu.readCr0() | BigInt(CR0_PG >>> 0))).toEqual({ ok: true });
  } else {
    expect(cpu.writeCr3(BigInt(b.root))).toEqual({ ok: true });
  }
  return { m, cpu, b };
}

describe('API misuse throws', () => {
  const cpu = new Machine({ memoryBytes: 1 << 20 }).cpu(0);
  const bad = <T>(v: unknown) => v as T;

  it.each([
    ['writeCr0', (c: Cpu) => c.writeCr0(bad(0x80000011)), TypeError, /CR0 value must be a bigint, got number/],
    ['writeCr3', (c: Cpu) => c.writeCr3(bad('0x1000')), TypeError, /CR3 value must be a bigint, got string/],
    ['writeCr4', (c: Cpu) => c.writeCr4(bad(32)), TypeError, /CR4 value must be a bigint/],
    ['writeEfer', (c: Cpu) => c.writeEfer(bad(undefined)), TypeError, /EFER value must be a bigint, got undefined/],
    ['writeCr0 ≥ 2^64', (c: Cpu) => c.writeCr0(1n << 64n), RangeError, /CR0 value 0x10000000000000000 is not a 64-bit unsigned value/],
    ['writeCr3 negative', (c: Cpu) => c.writeCr3(-1n), RangeError, /CR3 value .* is not a 64-bit unsigned value/],
    ['writeCr4 ≥ 2^64', (c: Cpu) => c.writeCr4((1n << 64n) + 32n), RangeError, /CR4/],
    ['writeEfer negative', (c: Cpu) => c.writeEfer(-0xd01n), RangeError, /EFER/],
    ['setCpl(1)', (c: Cpu) => c.setCpl(bad(1)), RangeError, /CPL must be 0 or 3, got 1/],
    ['setCpl("3")', (c: Cpu) => c.setCpl(bad('3')), RangeError, /CPL must be 0 or 3/],
    ['setPkru(-1)', (c: Cpu) => c.setPkru(-1), RangeError, /PKRU must be an integer from 0 to 0xffffffff, got -1/],
    ['setPkru(2^32)', (c: Cpu) => c.setPkru(2 ** 32), RangeError, /PKRU/],
    ['setPkru(1.5)', (c: Cpu) => c.setPkru(1.5), RangeError, /PKRU/],
    ['setPkru(1n)', (c: Cpu) => c.setPkru(bad(1n)), RangeError, /PKRU/],
    ['setAc(1)', (c: Cpu) => c.setAc(bad(1)), TypeError, /setAc takes a boolean, got number/],
    ['invlpg("x")', (c: Cpu) => c.invlpg(bad('x')), AddressError, /must be a number or a bigint, got string/],
    ['invlpg(2^53)', (c: Cpu) => c.invlpg(2 ** 53), AddressError, /not a safe integer/],
  ] as const)('%s', (_name, fn, type, msg) => {
    const before = [cpu.readCr0(), cpu.readCr3(), cpu.readCr4(), cpu.readEfer(), cpu.readCpl(), cpu.readPkru(), cpu.readAc()];
    expect(() => fn(cpu)).toThrow(type);
    expect(() => fn(cpu)).toThrow(msg);
    expect([cpu.readCr0(), cpu.readCr3(), cpu.readCr4(), cpu.readEfer(), cpu.readCpl(), cpu.readPkru(), cpu.readAc()]).toEqual(before);
  });

  it('AddressError is a RangeError', () => {
    expect(new AddressError('x')).toBeInstanceOf(RangeError);
  });
});

describe('access() argument validation', () => {
  const { cpu } = mapped();
  it.each([
    ['kind "exec"', () => cpu.access(0x400000, 'exec' as never), TypeError, /access kind must be "read", "write" or "fetch", got exec/],
    ['kind undefined', () => cpu.access(0x400000, undefined as never), TypeError, /access kind/],
    ['options null', () => cpu.access(0x400000, 'read', null as never), TypeError, /access options must be an object/],
    ['options 5', () => cpu.access(0x400000, 'read', 5 as never), TypeError, /access options must be an object/],
    ['va 2^53 (not a safe integer)', () => cpu.access(2 ** 53, 'read'), AddressError, /linear address 9007199254740992 is not a safe integer/],
    ['va -(2^53)', () => cpu.access(-(2 ** 53), 'read'), AddressError, /not a safe integer/],
    ['va 1.5', () => cpu.access(1.5, 'read'), AddressError, /not a safe integer/],
    ['va NaN', () => cpu.access(NaN, 'read'), AddressError, /NaN is not a safe integer/],
    ['va Infinity', () => cpu.access(Infinity, 'write'), AddressError, /not a safe integer/],
    ['va 2^64 (bigint)', () => cpu.access(1n << 64n, 'read'), AddressError, /linear address 0x10000000000000000 does not fit in 64 bits/],
    ['va -2^63 - 1 (bigint)', () => cpu.access(-(1n << 63n) - 1n, 'read'), AddressError, /does not fit in 64 bits/],
    ['va a string', () => cpu.access('0x400000' as never, 'read'), AddressError, /must be a number or a bigint, got string/],
  ] as const)('%s', (_name, fn, type, msg) => {
    const before = cpu.counters();
    expect(fn).toThrow(type);
    expect(fn).toThrow(msg);
    expect(cpu.counters()).toEqual(before);
  });

  it('the extreme bigint forms are accepted: -2^63 and 2^64-1 (both non-canonical)', () => {
    expect(cpu.access(-(1n << 63n), 'read')).toMatchObject({ ok: false, vector: 13 });
    expect(cpu.access((1n << 64n) - 1n, 'read')).toMatchObject({ ok: false, vector: 14 }); // canonical: all ones
  });
});

describe('the canonical-address check', () => {
  function withCr2(cpu: Cpu): bigint {
    // Leave a known value in CR2 with a #PF.
    expect(cpu.access(0x7000, 'read')).toMatchObject({ ok: false, vector: 14 });
    return cpu.readCr2();
  }

  it.each([
    ['4-level', false, [0x0000800000000000n, 0xffff7fffffffffffn, 0x8000000000000000n, 0x0100000000000000n], [0x00007ffffffff000n, 0xffff800000000000n, 0xfffffffffffff000n]],
    ['5-level (LA57)', true, [0x0100000000000000n, 0xfeffffffffffffffn, 0x7f00000000000000n], [0x0000800000000000n, 0x00ff800000000000n, 0xff00000000000000n, 0xffff7fffffffffffn]],
  ] as const)('%s: non-canonical addresses give #GP(0) or #SS(0), CR2 untouched; canonical ones translate or #PF', (_name, la57, bad, good) => {
    const { cpu } = mapped({ la57 });
    const cr2 = withCr2(cpu);
    for (const va of bad) {
      for (const kind of ['read', 'write', 'fetch'] as const) {
        expect(cpu.access(va, kind), `${va.toString(16)} ${kind}`).toEqual({ ok: false, vector: 13, errorCode: 0, cr2, reason: 'non-canonical linear address' });
        expect(cpu.access(va, kind, { stack: true })).toEqual({ ok: false, vector: 12, errorCode: 0, cr2, reason: 'non-canonical linear address' });
        expect(cpu.access(va, kind, { implicit: true })).toMatchObject({ ok: false, vector: 13 });
      }
      expect(cpu.readCr2()).toBe(cr2);
    }
    const c = cpu.counters();
    expect(c.gpFaults).toBe(bad.length * 6);
    expect(c.ssFaults).toBe(bad.length * 3);
    expect(c.untranslated).toBe(bad.length * 9);
    expect(c.pageFaults).toBe(1);
    for (const va of good) {
      const r = cpu.access(va, 'read');
      // Nothing is mapped there: a #PF with CR2 = va, not a #GP.
      expect(r, va.toString(16)).toEqual({ ok: false, vector: 14, errorCode: 0, cr2: va });
    }
  });

  it('5-level paging translates an address above 2^47 that 4-level paging rejects', () => {
    const { cpu, b } = mapped({ la57: true });
    b.map(0x00ab000000003000n, 0x202000, { A: true, D: true });
    expect(cpu.access(0x00ab000000003008n, 'write')).toEqual({ ok: true, pa: 0x202008 });
    expect(cpu.access(0xffff800000001010n, 'read')).toEqual({ ok: true, pa: 0x201010 });
    const four = mapped().cpu;
    expect(four.access(0x00ab000000003008n, 'write')).toMatchObject({ ok: false, vector: 13 });
  });
});

describe('number and bigint forms of linear addresses', () => {
  it('upper-half addresses as negative numbers give the same translation as bigints', () => {
    const { cpu } = mapped();
    const big = 0xffff800000001234n;
    const num = Number(BigInt.asIntN(64, big));
    expect(num).toBe(-0x7fffffffedcc);
    expect(cpu.access(num, 'read')).toEqual({ ok: true, pa: 0x201234 });
    expect(cpu.access(big, 'read')).toEqual({ ok: true, pa: 0x201234 });
    expect(cpu.access(big - (1n << 64n), 'read')).toEqual({ ok: true, pa: 0x201234 }); // a negative bigint is read modulo 2^64
  });

  it('CR2 comes back in the caller’s form: a negative number or an unsigned bigint', () => {
    const { cpu } = mapped();
    cpu.setCpl(3);
    const big = 0xffff800000001234n;
    const num = Number(BigInt.asIntN(64, big));
    const rn = cpu.access(num, 'write');
    expect(rn).toEqual({ ok: false, vector: 14, errorCode: 0x7, cr2: num });
    const rb = cpu.access(big, 'write');
    expect(rb).toEqual({ ok: false, vector: 14, errorCode: 0x7, cr2: big });
    expect(cpu.readCr2()).toBe(big);
    // Lower-half numbers stay non-negative.
    expect(cpu.access(0x7fff_ffff_f000, 'read')).toEqual({ ok: false, vector: 14, errorCode: 0x4, cr2: 0x7fff_ffff_f000 });
  });
});

describe('other access outcomes', () => {
  it('with CR0.PG=0 the linear address is the physical address', () => {
    const { cpu } = mapped();
    expect(cpu.writeCr0(cpu.readCr0() & ~BigInt(CR0_PG >>> 0))).toEqual({ ok: true });
    expect(cpu.access(0x400123, 'fetch')).toEqual({ ok: true, pa: 0x400123 });
    expect(cpu.access(0x123456789n, 'write')).toEqual({ ok: true, pa: 0x123456789 });
    expect(cpu.counters().untranslated).toBe(2);
  });

  it('a paging-structure entry beyond installed memory is a machine check (vector 18) naming the address', () => {
    const { cpu, m, b } = mapped();
    // Point the PML4E of a new region at a table far beyond the 4 MiB of memory.
    m.phys.write64(b.root + 3 * 8, encodeEntry(LEVEL_PML4E, { address: 0x40000000, P: true, RW: true, US: true, A: true }));
    const r = cpu.access(3n << 39n, 'read');
    expect(r).toEqual({ ok: false, vector: 18, errorCode: 0, cr2: 0n, reason: 'paging-structure entry at physical 0x40000000 is beyond installed memory' });
    expect(cpu.counters().machineChecks).toBe(1);
    expect(cpu.readCr2()).toBe(0n);
  });

  it('watched frames are reported for data accesses and for walks that read a watched table', () => {
    const { cpu, m, b } = mapped();
    const hits: WatchHit[] = [];
    cpu.onWatch = (h) => hits.push(h);
    m.phys.setWatch(0x200, true);
    expect(m.phys.isWatched(0x200)).toBe(true);
    expect(cpu.access(0x400010, 'write')).toEqual({ ok: true, pa: 0x200010 });
    expect(hits).toEqual([{ cpu: 0, kind: 'write', va: 0x400010n, pa: 0x200010, pfn: 0x200, cycles: expect.any(Number) }]);
    m.phys.setWatch(0x200, false);
    m.phys.setWatch(b.root / 4096, true);
    cpu.flushEverything();
    expect(cpu.access(0x400020, 'read')).toEqual({ ok: true, pa: 0x200020 });
    expect(hits[1]).toMatchObject({ kind: 'walk', va: 0x400020n, pfn: b.root / 4096 });
    expect(cpu.counters().watchHits).toBe(2);
    expect(cpu.watchRecords().map((r) => r.kind)).toEqual(['write', 'walk']);
    expect(() => m.phys.setWatch(-1, true)).toThrow(PhysAddressError);
  });
});

describe('counters and clocks', () => {
  it('counters() has exactly the layout names plus the derived ones, and the derived ones add up', () => {
    const { m, cpu, b } = mapped();
    b.map(0x600000, 0x600000, { A: true, D: true }, 2097152);
    for (let i = 0; i < 5; i++) cpu.access(0x400000 + i * 8, 'read');
    for (let i = 0; i < 3; i++) cpu.access(0x600000 + i * 4096, 'read');
    cpu.access(0x0000800000000000n, 'read');
    cpu.access(0x9000, 'read');
    const c = cpu.counters();
    expect(Object.keys(c).sort()).toEqual([...new Set([...Object.values(COUNTER_NAMES), 'accesses', 'l1Hits4k'])].sort());
    expect(Object.values(c).every((v) => typeof v === 'number' && Number.isFinite(v))).toBe(true);
    expect(c.accesses).toBe(10);
    expect(c.accesses).toBe(c.l1Hits! + c.l1Misses! + c.untranslated!);
    expect(c.l1Hits4k).toBe(c.l1Hits! - c.l1Hits2m! - c.l1Hits1g!);
    expect(c).toMatchObject({ l1Hits: 6, l1Hits2m: 2, l1Hits4k: 4, l1Misses: 3, untranslated: 1, pageFaults: 1, gpFaults: 1, walks: 3 });
    expect(m.totals()).toMatchObject({ accesses: 10, l1Hits: 6 });
    cpu.resetCounters();
    const after = cpu.counters();
    expect(after.cycles).toBe(c.cycles);
    expect(after.accesses).toBe(0);
    cpu.resetCounters(false);
    expect(cpu.counters().cycles).toBe(0);
  });

  it('the fetch* counters are the instruction side\'s share of lookups, L1 and STLB misses and walks', () => {
    const { cpu, b } = mapped();
    b.map(0x401000, 0x202000, { A: true, D: true });
    const fetchCounts = () => {
      const c = cpu.counters();
      return { lookups: c.fetchLookups, l1: c.fetchL1Misses, stlbHit: c.fetchStlbHits, stlbMiss: c.fetchStlbMisses, walks: c.fetchWalks };
    };
    // Data accesses leave the instruction side's counters alone.
    expect(cpu.access(0x400000, 'read').ok).toBe(true);
    expect(cpu.access(0x400008, 'write').ok).toBe(true);
    expect(fetchCounts()).toEqual({ lookups: 0, l1: 0, stlbHit: 0, stlbMiss: 0, walks: 0 });
    // A fetch from a page the data side loaded: L1 iTLB miss, second-level TLB hit (it is shared).
    expect(cpu.access(0x400010, 'fetch').ok).toBe(true);
    expect(fetchCounts()).toEqual({ lookups: 1, l1: 1, stlbHit: 1, stlbMiss: 0, walks: 0 });
    // Again: an L1 iTLB hit. A fetch from a new page: misses both and walks.
    expect(cpu.access(0x400020, 'fetch').ok).toBe(true);
    expect(cpu.access(0x401000, 'fetch').ok).toBe(true);
    expect(fetchCounts()).toEqual({ lookups: 3, l1: 2, stlbHit: 1, stlbMiss: 1, walks: 1 });
    // A fetch that faults is a lookup, a miss and a walk; a non-canonical one reaches no TLB.
    expect(cpu.access(0x9000, 'fetch').ok).toBe(false);
    expect(cpu.access(0x0000800000000000n, 'fetch').ok).toBe(false);
    expect(fetchCounts()).toEqual({ lookups: 4, l1: 3, stlbHit: 1, stlbMiss: 2, walks: 2 });
    const c = cpu.counters();
    expect(c).toMatchObject({ l1Misses: 4, stlbHits: 1, stlbMisses: 3, walks: 3 });
    expect(c.l1Hits! + c.l1Misses!).toBe(6);
  });

  it('a walk after resetCounters() charges its own memory references, no more and no less', () => {
    const { cpu } = mapped();
    // Walks before the reset, so the walk-reference counter is well above zero when it is reset.
    for (let i = 0; i < 4; i++) {
      cpu.flushEverything();
      cpu.access(0x400000, 'read');
    }
    const walkCost = () => {
      cpu.flushEverything();
      const before = cpu.counters();
      cpu.access(0x400000, 'read');
      const after = cpu.counters();
      return { cycles: after.cycles! - before.cycles!, refs: after.walkMemRefs! - before.walkMemRefs! };
    };
    const ref = walkCost();
    expect(ref.refs).toBeGreaterThan(0);
    cpu.resetCounters();
    const afterReset = walkCost();
    expect(afterReset.refs).toBe(ref.refs);
    expect(afterReset.cycles).toBe(ref.cycles);
  });

  it('every access costs cycles; micros follows the clock rate', () => {
    const m = new Machine({ memoryBytes: 1 << 20, clockGhz: 2, cost: { access: 5, tlbL1Hit: 1 } });
    const cpu = m.cpu(0);
    expect(cpu.writeCr0(cpu.readCr0() & ~BigInt(CR0_PG >>> 0))).toEqual({ ok: true });
    cpu.cycles = 0;
    for (let i = 0; i < 10; i++) cpu.access(0x1000 + i, 'read');
    expect(cpu.cycles).toBe(50);
    expect(cpu.micros).toBe(50 / 2000);
    cpu.charge(150);
    expect(cpu.cycles).toBe(200);
  });
});
