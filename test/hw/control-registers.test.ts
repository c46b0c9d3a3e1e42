/**
 * hw/control-registers.ts: the decisions for MOV to CR0, CR3, CR4 and WRMSR IA32_EFER — every
 * #GP(0) case the file lists, the invalidation each accepted write implies (SDM §4.10.4.1), EFER.LMA
 * being read-only and following CR0.PG, and UnsupportedModeError for paging with EFER.LME=0 —
 * tested on the pure decision functions and through Cpu.writeCr0/3/4/writeEfer, which return the
 * #GP as a value { ok: false, vector: 13, errorCode: 0, reason } and leave the registers unchanged.
 */

import { describe, expect, it } from 'vitest';
import {
  CR0_CD, CR0_ET, CR0_MP, CR0_NE, CR0_NW, CR0_PE, CR0_PG, CR0_TS, CR0_WP, CR3_NOFLUSH, CR4_DE, CR4_LA57, CR4_OSFXSR, CR4_PAE, CR4_PCIDE, CR4_PGE, CR4_PKE, CR4_PSE, CR4_SMAP,
  CR4_SMEP, EFER_LMA, EFER_LME, EFER_NXE, EFER_SCE, Flush, Machine, RESET_LONG_MODE, UnsupportedModeError, cr4Supported, currentPcid, decideCr0, decideCr3, decideCr4,
  decideEfer, type Features, type RegState,
} from '../../hw/index.ts';
import type { Cpu } from '../../hw/cpu.ts';

const u32 = (n: number) => BigInt(n >>> 0);
const FEATURES: Features = { maxPhyAddr: 46, la57: true, pku: true, pcid: true };
const RESET: RegState = { ...RESET_LONG_MODE };
/** Paging off, IA-32e inactive, LME still set. */
const PAGING_OFF: RegState = { cr0: CR0_PE | CR0_ET, cr3: 0n, cr4: CR4_PAE, efer: EFER_SCE | EFER_LME | EFER_NXE };
const WITH_PCID: RegState = { ...RESET, cr3: 0x5000n | 7n, cr4: CR4_PAE | CR4_PGE | CR4_PCIDE };

describe('the reset state', () => {
  it('is IA-32e mode with paging: CR0 = PE|MP|ET|NE|WP|PG, CR4 = PAE, EFER = SCE|LME|LMA|NXE, CR3 = 0', () => {
    expect(RESET_LONG_MODE).toEqual({ cr0: (CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG) | 0, cr3: 0n, cr4: CR4_PAE, efer: EFER_SCE | EFER_LME | EFER_LMA | EFER_NXE });
    expect(Object.isFrozen(RESET_LONG_MODE)).toBe(true);
    const cpu = new Machine({ memoryBytes: 1 << 20 }).cpu(0);
    expect(cpu.readCr0()).toBe(0x80010033n);
    expect(cpu.readCr3()).toBe(0n);
    expect(cpu.readCr4()).toBe(0x20n);
    expect(cpu.readEfer()).toBe(0xd01n);
    expect(cpu.readCr2()).toBe(0n);
    expect(cpu.readPkru()).toBe(0);
    expect(cpu.readCpl()).toBe(0);
    expect(cpu.readAc()).toBe(false);
    expect(cpu.currentPcid()).toBe(0);
  });

  it('bit names sit at their SDM positions', () => {
    expect([CR0_PE, CR0_MP, CR0_TS, CR0_ET, CR0_NE, CR0_WP, CR0_NW, CR0_CD, CR0_PG >>> 0]).toEqual([1, 2, 8, 16, 32, 1 << 16, 1 << 29, 1 << 30, 2 ** 31]);
    expect([CR4_PSE, CR4_PAE, CR4_PGE, CR4_OSFXSR, CR4_LA57, CR4_PCIDE, CR4_SMEP, CR4_SMAP, CR4_PKE]).toEqual([1 << 4, 1 << 5, 1 << 7, 1 << 9, 1 << 12, 1 << 17, 1 << 20, 1 << 21, 1 << 22]);
    expect([EFER_SCE, EFER_LME, EFER_LMA, EFER_NXE]).toEqual([1, 1 << 8, 1 << 10, 1 << 11]);
    expect(CR3_NOFLUSH).toBe(1n << 63n);
  });
});

// ================================================================================================
// Pure decisions
// ================================================================================================

type GpCase = { name: string; state: RegState; value: bigint; reason: RegExp; features?: Features };

const CR0_GP: GpCase[] = [
  { name: 'bit 32 set', state: RESET, value: u32(RESET.cr0) | (1n << 32n), reason: /reserved bits 63:32/ },
  { name: 'bit 63 set', state: RESET, value: u32(RESET.cr0) | (1n << 63n), reason: /reserved bits 63:32/ },
  { name: 'NW=1 with CD=0', state: RESET, value: u32(RESET.cr0 | CR0_NW), reason: /NW with CD clear/ },
  { name: 'PG=1 with PE=0', state: RESET, value: u32(RESET.cr0 & ~CR0_PE), reason: /PG with PE clear/ },
  { name: 'clearing PG while CR4.PCIDE=1', state: WITH_PCID, value: u32(RESET.cr0 & ~CR0_PG), reason: /clears PG while CR4.PCIDE=1/ },
  { name: 'setting PG with LME=1 and PAE=0', state: { ...PAGING_OFF, cr4: 0 }, value: u32(CR0_PE | CR0_PG), reason: /PG with EFER.LME=1 and CR4.PAE=0/ },
];

const CR3_GP: GpCase[] = [
  { name: 'bit 46 with MAXPHYADDR 46', state: RESET, value: 1n << 46n, reason: /reserved bits 63:46/ },
  { name: 'bit 36 with MAXPHYADDR 36', state: RESET, value: 0x1000n | (1n << 36n), reason: /reserved bits 63:36 \(MAXPHYADDR is 36\)/, features: { ...FEATURES, maxPhyAddr: 36 } },
  { name: 'bit 63 with PCIDE=0 (only a no-flush hint when PCIDE=1)', state: RESET, value: CR3_NOFLUSH | 0x1000n, reason: /reserved bits 63:46/ },
  { name: 'bit 51 with PCIDE=1 and bit 63', state: WITH_PCID, value: CR3_NOFLUSH | (1n << 51n), reason: /reserved bits/ },
];

const CR4_GP: GpCase[] = [
  { name: 'bit 32 set', state: RESET, value: u32(CR4_PAE) | (1n << 32n), reason: /reserved bits 63:32/ },
  { name: 'reserved bit 15', state: RESET, value: u32(CR4_PAE | (1 << 15)), reason: /reserved or unsupported bits 0x8000/ },
  { name: 'VMXE (bit 13, not modelled)', state: RESET, value: u32(CR4_PAE | (1 << 13)), reason: /unsupported bits 0x2000/ },
  { name: 'CET (bit 23, not modelled)', state: RESET, value: u32(CR4_PAE | (1 << 23)), reason: /unsupported bits 0x800000/ },
  { name: 'LA57 on a CPU without 5-level paging', state: PAGING_OFF, value: u32(CR4_PAE | CR4_LA57), reason: /unsupported bits 0x1000/, features: { ...FEATURES, la57: false } },
  { name: 'PCIDE on a CPU without PCIDs', state: RESET, value: u32(CR4_PAE | CR4_PCIDE), reason: /unsupported bits 0x20000/, features: { ...FEATURES, pcid: false } },
  { name: 'PKE on a CPU without protection keys', state: RESET, value: u32(CR4_PAE | CR4_PKE), reason: /unsupported bits 0x400000/, features: { ...FEATURES, pku: false } },
  { name: 'clearing PAE in IA-32e mode', state: RESET, value: 0n, reason: /clears PAE while IA-32e mode is active/ },
  { name: 'setting LA57 in IA-32e mode', state: RESET, value: u32(CR4_PAE | CR4_LA57), reason: /changes LA57 while IA-32e mode is active/ },
  { name: 'clearing LA57 in IA-32e mode', state: { ...RESET, cr4: CR4_PAE | CR4_LA57 }, value: u32(CR4_PAE), reason: /changes LA57/ },
  { name: 'setting PCIDE outside IA-32e mode', state: PAGING_OFF, value: u32(CR4_PAE | CR4_PCIDE), reason: /sets PCIDE outside IA-32e mode/ },
  { name: 'setting PCIDE with CR3[11:0] ≠ 0 (PWT)', state: { ...RESET, cr3: 0x5008n }, value: u32(CR4_PAE | CR4_PCIDE), reason: /CR3\[11:0\] is not 0/ },
];

const EFER_GP: GpCase[] = [
  { name: 'bit 32 set', state: RESET, value: u32(RESET.efer) | (1n << 32n), reason: /reserved bits 63:32/ },
  { name: 'reserved bit 1', state: RESET, value: u32(RESET.efer | 2), reason: /reserved or unsupported bits 0x2/ },
  { name: 'FFXSR (bit 14, not modelled)', state: RESET, value: u32(RESET.efer | (1 << 14)), reason: /unsupported bits 0x4000/ },
  { name: 'clearing LME while paging is on', state: RESET, value: u32(RESET.efer & ~EFER_LME), reason: /changes LME while paging is enabled/ },
  { name: 'setting LME while paging is on', state: { ...RESET, efer: EFER_NXE | EFER_LMA }, value: u32(EFER_NXE | EFER_LME), reason: /changes LME while paging is enabled/ },
];

describe('decide*: every #GP(0) case', () => {
  it.each(CR0_GP)('MOV to CR0: $name', ({ state, value, reason }) => {
    expect(decideCr0(state, value)).toEqual({ ok: false, reason: expect.stringMatching(reason) });
  });
  it.each(CR3_GP)('MOV to CR3: $name', ({ state, value, reason, features }) => {
    expect(decideCr3(state, value, features ?? FEATURES)).toEqual({ ok: false, reason: expect.stringMatching(reason) });
  });
  it.each(CR4_GP)('MOV to CR4: $name', ({ state, value, reason, features }) => {
    expect(decideCr4(state, value, features ?? FEATURES)).toEqual({ ok: false, reason: expect.stringMatching(reason) });
  });
  it.each(EFER_GP)('WRMSR IA32_EFER: $name', ({ state, value, reason }) => {
    expect(decideEfer(state, value)).toEqual({ ok: false, reason: expect.stringMatching(reason) });
  });

  it('MOV to CR0 enabling paging with EFER.LME=0 throws UnsupportedModeError (32-bit/PAE paging is not modelled)', () => {
    const s: RegState = { ...PAGING_OFF, efer: EFER_NXE };
    expect(() => decideCr0(s, u32(CR0_PE | CR0_PG))).toThrow(UnsupportedModeError);
    expect(() => decideCr0(s, u32(CR0_PE | CR0_PG))).toThrow(/EFER.LME=0/);
  });
});

describe('decide*: accepted writes and the invalidation they imply (SDM §4.10.4.1)', () => {
  it.each([
    { name: 'CR0.WP 1→0', state: RESET, value: u32(RESET.cr0 & ~CR0_WP), flush: Flush.None, stored: (RESET.cr0 & ~CR0_WP) | 0 },
    { name: 'CR0.PG 1→0', state: RESET, value: u32(RESET.cr0 & ~CR0_PG), flush: Flush.All, stored: RESET.cr0 & ~CR0_PG },
    { name: 'CR0.PG 0→1', state: PAGING_OFF, value: u32(CR0_PE | CR0_PG), flush: Flush.None, stored: (CR0_PE | CR0_PG | CR0_ET) | 0 },
    { name: 'CR0 with PG and PE both cleared', state: RESET, value: u32(CR0_ET), flush: Flush.All, stored: CR0_ET },
    { name: 'CR0 reserved bits 31:0 ignored, ET reads 1', state: RESET, value: u32((RESET.cr0 & ~CR0_ET) | (1 << 6) | (1 << 20)), flush: Flush.None, stored: RESET.cr0 },
    { name: 'CR0 NW with CD', state: RESET, value: u32(RESET.cr0 | CR0_NW | CR0_CD), flush: Flush.None, stored: RESET.cr0 | CR0_NW | CR0_CD },
  ])('$name', ({ state, value, flush, stored }) => {
    expect(decideCr0(state, value)).toEqual({ ok: true, value: stored, flush, flushPcid: 0 });
  });

  it.each([
    { name: 'PCIDE=0: non-global entries of PCID 0', state: RESET, value: 0x1234018n, want: { value: 0x1234018n, flush: Flush.PcidNonGlobal, flushPcid: 0 } },
    { name: 'PCIDE=1: non-global entries of the new PCID', state: WITH_PCID, value: 0x9000n | 0xabcn, want: { value: 0x9abcn, flush: Flush.PcidNonGlobal, flushPcid: 0xabc } },
    { name: 'PCIDE=1 with bit 63: nothing, and bit 63 is not stored', state: WITH_PCID, value: CR3_NOFLUSH | 0x9000n | 3n, want: { value: 0x9003n, flush: Flush.None, flushPcid: 3 } },
    { name: 'the highest address bit under MAXPHYADDR', state: RESET, value: (1n << 45n) | 0x1000n, want: { value: (1n << 45n) | 0x1000n, flush: Flush.PcidNonGlobal, flushPcid: 0 } },
  ])('MOV to CR3, $name', ({ state, value, want }) => {
    expect(decideCr3(state, value, FEATURES)).toEqual({ ok: true, ...want });
  });

  it.each([
    { name: 'PGE 0→1: everything', state: RESET, value: CR4_PAE | CR4_PGE, flush: Flush.All, pcid: 0 },
    { name: 'PGE 1→0: everything', state: WITH_PCID, value: CR4_PAE | CR4_PCIDE, flush: Flush.All, pcid: 7 },
    { name: 'PCIDE 1→0: everything', state: WITH_PCID, value: CR4_PAE | CR4_PGE, flush: Flush.All, pcid: 7 },
    { name: 'PCIDE 0→1: nothing', state: RESET, value: CR4_PAE | CR4_PCIDE, flush: Flush.None, pcid: 0 },
    { name: 'SMEP 0→1: the current PCID', state: WITH_PCID, value: CR4_PAE | CR4_PGE | CR4_PCIDE | CR4_SMEP, flush: Flush.PcidAll, pcid: 7 },
    { name: 'SMEP 1→0: nothing', state: { ...RESET, cr4: CR4_PAE | CR4_SMEP }, value: CR4_PAE, flush: Flush.None, pcid: 0 },
    { name: 'PAE change outside IA-32e mode: the current PCID', state: PAGING_OFF, value: 0, flush: Flush.PcidAll, pcid: 0 },
    { name: 'SMAP, PKE, PSE, DE: nothing', state: RESET, value: CR4_PAE | CR4_SMAP | CR4_PKE | CR4_PSE | CR4_DE, flush: Flush.None, pcid: 0 },
    { name: 'LA57 set with paging off: nothing', state: PAGING_OFF, value: CR4_PAE | CR4_LA57, flush: Flush.None, pcid: 0 },
  ])('MOV to CR4, $name', ({ state, value, flush, pcid }) => {
    expect(decideCr4(state, u32(value), FEATURES)).toEqual({ ok: true, value: value | 0, flush, flushPcid: pcid });
  });

  it.each([
    { name: 'NXE 1→0: everything', state: RESET, value: RESET.efer & ~EFER_NXE, flush: Flush.All, stored: RESET.efer & ~EFER_NXE },
    { name: 'SCE 1→0: nothing', state: RESET, value: RESET.efer & ~EFER_SCE, flush: Flush.None, stored: RESET.efer & ~EFER_SCE },
    { name: 'LMA written 0 is ignored (read-only)', state: RESET, value: RESET.efer & ~EFER_LMA, flush: Flush.None, stored: RESET.efer },
    { name: 'LMA written 1 with paging off is ignored', state: PAGING_OFF, value: PAGING_OFF.efer | EFER_LMA, flush: Flush.None, stored: PAGING_OFF.efer },
    { name: 'LME 1→0 with paging off', state: PAGING_OFF, value: EFER_NXE, flush: Flush.None, stored: EFER_NXE },
  ])('WRMSR EFER, $name', ({ state, value, flush, stored }) => {
    expect(decideEfer(state, u32(value))).toEqual({ ok: true, value: stored, flush, flushPcid: 0 });
  });

  it('cr4Supported() follows the features; currentPcid() is CR3[11:0] only with PCIDE=1', () => {
    const base = cr4Supported({ ...FEATURES, la57: false, pcid: false, pku: false });
    expect(base & (CR4_LA57 | CR4_PCIDE | CR4_PKE)).toBe(0);
    expect(cr4Supported(FEATURES)).toBe(base | CR4_LA57 | CR4_PCIDE | CR4_PKE);
    expect(currentPcid(WITH_PCID)).toBe(7);
    expect(currentPcid({ ...WITH_PCID, cr4: CR4_PAE })).toBe(0);
  });
});

// ================================================================================================
// Through the CPU
// ================================================================================================

function snapshot(cpu: Cpu): bigint[] {
  return [cpu.readCr0(), cpu.readCr3(), cpu.readCr4(), cpu.readEfer()];
}

function cpuIn(state: RegState, opts: { maxPhyAddr?: number; la57?: boolean; pcid?: boolean; pku?: boolean } = {}): Cpu {
  const cpu = new Machine({ memoryBytes: 1 << 20, la57: true, ...opts }).cpu(0);
  cpu.loadRegisters(state);
  return cpu;
}

describe('Cpu.writeCr0/3/4/writeEfer return #GP(0) as a value and change nothing', () => {
  const all = [
    ...CR0_GP.map((c) => ({ ...c, reg: 'cr0' as const })),
    ...CR3_GP.map((c) => ({ ...c, reg: 'cr3' as const })),
    ...CR4_GP.map((c) => ({ ...c, reg: 'cr4' as const })),
    ...EFER_GP.map((c) => ({ ...c, reg: 'efer' as const })),
  ];
  it.each(all)('$reg: $name', ({ reg, state, value, reason, features }) => {
    const cpu = cpuIn(state, features ?? {});
    const before = snapshot(cpu);
    const gp = cpu.counters().gpFaults;
    const r = reg === 'cr0' ? cpu.writeCr0(value) : reg === 'cr3' ? cpu.writeCr3(value) : reg === 'cr4' ? cpu.writeCr4(value) : cpu.writeEfer(value);
    expect(r).toEqual({ ok: false, vector: 13, errorCode: 0, reason: expect.stringMatching(reason) });
    expect(snapshot(cpu)).toEqual(before);
    expect(cpu.counters().gpFaults).toBe(gp! + 1);
  });

  it('UnsupportedModeError propagates from writeCr0 and leaves CR0 unchanged', () => {
    const cpu = cpuIn({ ...PAGING_OFF, efer: EFER_NXE });
    expect(() => cpu.writeCr0(u32(CR0_PE | CR0_PG))).toThrow(UnsupportedModeError);
    expect(cpu.readCr0()).toBe(u32(CR0_PE | CR0_ET));
  });
});

describe('register readers and EFER.LMA', () => {
  it('EFER.LMA is cleared by CR0.PG 1→0 and set by CR0.PG 0→1 (with LME=1); writing it has no effect', () => {
    const cpu = new Machine({ memoryBytes: 1 << 20 }).cpu(0);
    const efer = cpu.readEfer();
    expect(efer & u32(EFER_LMA)).toBe(u32(EFER_LMA));
    expect(cpu.writeEfer(efer & ~u32(EFER_LMA))).toEqual({ ok: true });
    expect(cpu.readEfer()).toBe(efer);
    expect(cpu.writeCr0(cpu.readCr0() & ~u32(CR0_PG))).toEqual({ ok: true });
    expect(cpu.readEfer()).toBe(efer & ~u32(EFER_LMA));
    expect(cpu.writeEfer(cpu.readEfer() | u32(EFER_LMA))).toEqual({ ok: true });
    expect(cpu.readEfer() & u32(EFER_LMA)).toBe(0n);
    // Outside IA-32e mode CR4.PAE may be cleared; then paging cannot be turned on.
    expect(cpu.writeCr4(0n)).toEqual({ ok: true });
    expect(cpu.writeCr0(cpu.readCr0() | u32(CR0_PG))).toMatchObject({ ok: false, vector: 13 });
    expect(cpu.writeCr4(u32(CR4_PAE))).toEqual({ ok: true });
    expect(cpu.writeCr0(cpu.readCr0() | u32(CR0_PG))).toEqual({ ok: true });
    expect(cpu.readEfer()).toBe(efer);
    // With paging off and LME cleared, enabling paging is the unsupported 32-bit/PAE mode.
    expect(cpu.writeCr0(cpu.readCr0() & ~u32(CR0_PG))).toEqual({ ok: true });
    expect(cpu.writeEfer(u32(EFER_NXE))).toEqual({ ok: true });
    expect(() => cpu.writeCr0(cpu.readCr0() | u32(CR0_PG))).toThrow(UnsupportedModeError);
  });

  it('readers return what was written; CR3 never holds bit 63; the PCID follows CR3 only with PCIDE=1', () => {
    const cpu = new Machine({ memoryBytes: 1 << 20 }).cpu(0);
    expect(cpu.writeCr3(0x3000n | 0x18n)).toEqual({ ok: true });
    expect(cpu.readCr3()).toBe(0x3018n);
    expect(cpu.currentPcid()).toBe(0);
    expect(cpu.writeCr3(0x3000n)).toEqual({ ok: true });
    expect(cpu.writeCr4(u32(CR4_PAE | CR4_PGE | CR4_PCIDE | CR4_SMEP | CR4_SMAP))).toEqual({ ok: true });
    expect(cpu.readCr4()).toBe(u32(CR4_PAE | CR4_PGE | CR4_PCIDE | CR4_SMEP | CR4_SMAP));
    expect(cpu.writeCr3(CR3_NOFLUSH | 0x7000n | 0x2an)).toEqual({ ok: true });
    expect(cpu.readCr3()).toBe(0x702an);
    expect(cpu.currentPcid()).toBe(0x2a);
    expect(cpu.writeCr0(u32(CR0_PE | CR0_PG | CR0_NE))).toEqual({ ok: true });
    expect(cpu.readCr0()).toBe(u32(CR0_PE | CR0_PG | CR0_NE | CR0_ET));
    expect(cpu.writeEfer(u32(EFER_LME | EFER_NXE))).toEqual({ ok: true });
    expect(cpu.readEfer()).toBe(u32(EFER_LME | EFER_NXE | EFER_LMA));
    cpu.setPkru(0xfffffffc);
    expect(cpu.readPkru()).toBe(0xfffffffc);
    cpu.setAc(true);
    expect(cpu.readAc()).toBe(true);
    cpu.setCpl(3);
    expect(cpu.readCpl()).toBe(3);
    expect(cpu.counters().cr3Writes).toBe(3);
    expect(cpu.counters().cr3NoFlushWrites).toBe(1);
  });
});
