/**
 * hw/machine.ts — the machine in one SharedArrayBuffer: the layout, CPU lookup and totals;
 * Machine.attach(sab) on the same thread sees the same memory, registers, TLBs, counters and
 * mailboxes, and rejects a buffer that does not hold a machine (not shared, too small, bad magic,
 * other layout version, wrong size); a 4 GiB machine can be built and resident memory grows only
 * with the frames touched.
 */

import { describe, expect, it } from 'vitest';
import { ConfigError, Machine, PageTableBuilder } from '../../hw/index.ts';
import { tlbEntries } from '../../hw/inspect.ts';
import { H_VERSION, HEADER_BYTES, LAYOUT_VERSION } from '../../hw/layout.ts';

const MB = 1 << 20;

function small(cpus = 2): { m: Machine; b: PageTableBuilder } {
  const m = new Machine({ memoryBytes: 4 * MB, cpus, tlb: { replacement: 'fifo' }, seed: 99 });
  const b = new PageTableBuilder(m, 0x100000, 0x140000);
  b.map(0x400000, 0x200000, { A: true, D: true });
  return { m, b };
}

describe('layout and CPUs', () => {
  it('places the header, 4 KiB-aligned CPU blocks and physical memory in one buffer', () => {
    const { m } = small(3);
    const l = m.layout;
    expect(l.cpuBase).toBe(HEADER_BYTES);
    expect(l.cpu.blockBytes % 4096).toBe(0);
    expect(l.watchBase).toBe(l.cpuBase + 3 * l.cpu.blockBytes);
    expect(l.physBase % 4096).toBe(0);
    expect(l.physBase).toBeGreaterThanOrEqual(l.watchBase + m.phys.frames);
    expect(m.sab.byteLength).toBe(l.totalBytes);
    expect(l.totalBytes).toBe(l.physBase + 4 * MB);
    expect(m.phys.size).toBe(4 * MB);
  });

  it('cpu(i) returns CPU i and rejects other indices; totals() sums the counters', () => {
    const { m, b } = small(3);
    expect(m.cpuCount).toBe(3);
    expect(m.cpus.map((c) => c.index)).toEqual([0, 1, 2]);
    expect(m.cpu(2)).toBe(m.cpus[2]);
    expect(() => m.cpu(3)).toThrow(new RangeError('CPU 3 does not exist (this machine has CPUs 0..2)'));
    expect(() => m.cpu(-1)).toThrow(RangeError);
    for (const c of m.cpus) c.writeCr3(BigInt(b.root));
    m.cpu(0).access(0x400000, 'read');
    m.cpu(2).access(0x400000, 'read');
    m.cpu(2).access(0x400000, 'read');
    expect(m.totals()).toMatchObject({ accesses: 3, walks: 2, l1Hits: 1, cr3Writes: 3 });
  });
});

describe('Machine.attach on the same thread', () => {
  it('sees the same configuration, memory, registers, TLBs and counters', () => {
    const { m, b } = small();
    const v = Machine.attach(m.sab);
    expect(v.sab).toBe(m.sab);
    expect(v.config).toEqual(m.config);
    expect(v.layout).toEqual(m.layout);
    // Memory, both ways.
    m.phys.write64(0x3000, 0x1122334455667788n);
    expect(v.phys.read64(0x3000)).toBe(0x1122334455667788n);
    v.phys.write8(0x3001, 0xff);
    expect(m.phys.read64(0x3000)).toBe(0x112233445566ff88n);
    // Registers: written through one view, used by the other.
    expect(m.cpu(0).writeCr3(BigInt(b.root))).toEqual({ ok: true });
    expect(v.cpu(0).readCr3()).toBe(BigInt(b.root));
    expect(v.cpu(0).access(0x400010, 'read')).toEqual({ ok: true, pa: 0x200010 });
    // The TLB filled through the view is the one the original sees.
    expect(tlbEntries(m.cpu(0)).map((e) => e.va)).toContain(0x400000n);
    expect(tlbEntries(m.cpu(0))).toEqual(tlbEntries(v.cpu(0)));
    // Counters (each view folds its pending hits in when read).
    expect(m.cpu(0).access(0x400018, 'read')).toEqual({ ok: true, pa: 0x200018 });
    const a = m.cpu(0).counters();
    expect(a).toMatchObject({ walks: 1, accesses: 2, cr3Writes: 1 });
    expect(v.cpu(0).counters()).toEqual(a);
    // A control-register change made through the view reaches the original's derived state.
    expect(v.cpu(0).writeCr0(v.cpu(0).readCr0() & ~(1n << 31n))).toEqual({ ok: true });
    expect(m.cpu(0).access(0x400010, 'read')).toEqual({ ok: true, pa: 0x400010 });
  });

  it('shares the mailboxes: an IPI sent through one view is delivered and acknowledged through the other', () => {
    const { m } = small();
    const v = Machine.attach(m.sab);
    const got: number[] = [];
    m.apic.on(0x50, (_cpu, msg) => got.push(msg.payload[0]!));
    const t = v.apic.send(v.cpu(1), 0, 0x50, [77]);
    expect(m.apic.pending(m.cpu(0))).toBe(1);
    expect(m.apic.deliver(m.cpu(0), false)).toBe(1);
    expect(got).toEqual([77]);
    expect(v.apic.acked(t)).toBe(true);
    expect(v.cpu(1).counters().ipisSent).toBe(1);
  });

  it('rejects a buffer that does not hold a machine', () => {
    const { m } = small(1);
    const copy = (extra = 0): SharedArrayBuffer => {
      const s = new SharedArrayBuffer(m.sab.byteLength + extra);
      new Uint8Array(s).set(new Uint8Array(m.sab));
      return s;
    };
    expect(() => Machine.attach(new ArrayBuffer(1 << 17) as unknown as SharedArrayBuffer)).toThrow(new TypeError('Machine.attach takes the SharedArrayBuffer of a machine'));
    expect(() => Machine.attach({} as SharedArrayBuffer)).toThrow(TypeError);
    expect(() => Machine.attach(new SharedArrayBuffer(100))).toThrow(new ConfigError('this SharedArrayBuffer is too small to hold a machine'));
    expect(() => Machine.attach(new SharedArrayBuffer(1 << 17))).toThrow(/does not hold an mmulab machine \(bad magic number\)/);
    const other = copy();
    new Int32Array(other)[H_VERSION] = LAYOUT_VERSION + 1;
    expect(() => Machine.attach(other)).toThrow(new ConfigError(`machine layout version ${LAYOUT_VERSION + 1} is not the version this mmulab reads (${LAYOUT_VERSION})`));
    expect(() => Machine.attach(copy(4096))).toThrow(new ConfigError(`machine header describes ${m.sab.byteLength} bytes but the buffer has ${m.sab.byteLength + 4096}`));
    expect(Machine.attach(copy()).config).toEqual(m.config); // an exact copy is a machine
  });
});

describe('PageTableBuilder', () => {
  it('rejects a missing, unaligned, empty or out-of-memory table range with an error naming it', () => {
    const m = new Machine({ memoryBytes: 4 << 20, cpus: 1 });
    const untyped = PageTableBuilder as unknown as new (m: Machine, ...a: unknown[]) => PageTableBuilder;
    expect(() => new untyped(m)).toThrow(/table range must be two integer physical addresses, got undefined and undefined/);
    expect(() => new untyped(m, '0x1000', 0x2000)).toThrow(/two integer physical addresses/);
    expect(() => new PageTableBuilder(m, 0x1001, 0x4000)).toThrow(/0x1001\.\.0x4000 must be 4 KiB aligned/);
    expect(() => new PageTableBuilder(m, 0x4000, 0x4000)).toThrow(/must be 4 KiB aligned and inside installed memory/);
    expect(() => new PageTableBuilder(m, 0x1000, 8 << 20)).toThrow(/inside installed memory/);
    expect(new PageTableBuilder(m, 0x1000, 0x4000).root).toBe(0x1000);
  });
});

describe('a 4 GiB machine', () => {
  it('can be built; touching a few frames grows resident memory by well under 100 MiB', () => {
    const before = process.memoryUsage().rss;
    const m = new Machine({ memoryBytes: 4 * 1024 ** 3, cpus: 2 });
    expect(m.phys.size).toBe(2 ** 32);
    expect(m.phys.frames).toBe(2 ** 20);
    // Page tables near the top of memory, data frames spread over the whole range.
    const top = 2 ** 32;
    const b = new PageTableBuilder(m, top - 64 * 4096, top);
    const frames = [0, 1, 0x12345, 0x80000, 0xabcde, 0xfffff];
    frames.forEach((f, i) => b.map(0x10000000 + i * 4096, f * 4096, { A: true, D: true }));
    const cpu = m.cpu(1);
    expect(cpu.writeCr3(BigInt(b.root))).toEqual({ ok: true });
    frames.forEach((f, i) => {
      const r = cpu.access(0x10000000 + i * 4096 + 8, 'write');
      expect(r).toEqual({ ok: true, pa: f * 4096 + 8 });
      m.phys.write64(f * 4096 + 8, BigInt(i + 1));
    });
    expect(frames.map((f) => m.phys.read64(f * 4096 + 8))).toEqual([1n, 2n, 3n, 4n, 5n, 6n]);
    expect(m.phys.read64(top - 8)).toBe(0n);
    expect(() => m.phys.read64(top)).toThrow(/beyond installed memory/);
    const grown = process.memoryUsage().rss - before;
    expect(grown).toBeLessThan(100 * MB);
  });
});
