/**
 * Shared harness for the walker tests: a machine with a fixed table layout, a way to write one
 * case's entries and control registers, and side-by-side runs of the fast path (cpu.access) and
 * the reference translator, comparing result, error code, CR2 and every entry afterwards.
 */

import { Machine } from '../../hw/machine.ts';
import { referenceTranslate, type RefCpuState, type RefMemory, type RefResult } from '../../hw/walk-reference.ts';
import type { AccessKind, AccessResult } from '../../hw/cpu.ts';
import { CR0_PE, CR0_PG, CR0_WP, CR0_ET, CR4_LA57, CR4_PAE, CR4_PKE, CR4_SMAP, CR4_SMEP, EFER_LMA, EFER_LME, EFER_NXE } from '../../hw/control-registers.ts';

export const ROOT = 0x10000;
/** Table frames used for the levels below the root, top-down. */
export const TABLES = [0x11000, 0x12000, 0x13000, 0x14000];
/** The address every case translates: every index is non-zero. */
export const VA = 0x00007f1234567abcn;
export const VA57 = 0x00ab7f1234567abcn;
export const DATA_4K = 0x200000;
export const DATA_2M = 0x400000;
export const DATA_1G = 0x40000000;

export interface EntryFlags {
  P: boolean;
  RW: boolean;
  US: boolean;
  A: boolean;
  D: boolean;
  XD: boolean;
  /** 0 none, 1 an address bit above MAXPHYADDR, 2 the level's own reserved bit. */
  rsvd: 0 | 1 | 2;
  pk?: number;
  G?: boolean;
}

export interface Controls {
  kind: AccessKind;
  cpl: 0 | 3;
  implicit: boolean;
  wp: boolean;
  nxe: boolean;
  smep: boolean;
  smap: boolean;
  ac: boolean;
  pke: boolean;
  pkru: number;
}

export const PERMISSIVE: EntryFlags = { P: true, RW: true, US: true, A: true, D: false, XD: false, rsvd: 0 };

/** Bits of one entry. `level` 5..1, `leaf` whether it maps the page. */
export function entryValue(level: number, leaf: boolean, next: number, f: EntryFlags, maxPhyAddr: number): bigint {
  let v = BigInt(next);
  if (f.P) v |= 1n;
  if (f.RW) v |= 2n;
  if (f.US) v |= 4n;
  if (f.A) v |= 1n << 5n;
  if (leaf && f.D) v |= 1n << 6n;
  if (leaf && level > 1) v |= 1n << 7n; // PS
  if (leaf && f.G) v |= 1n << 8n;
  if (f.XD) v |= 1n << 63n;
  if (leaf && f.pk) v |= BigInt(f.pk) << 59n;
  if (f.rsvd === 1) v |= 1n << BigInt(Math.min(51, maxPhyAddr + 1));
  if (f.rsvd === 2) {
    if (level >= 4) v |= 1n << 7n; // PS in a PML4E/PML5E
    else if (leaf && level > 1) v |= 1n << 13n; // alignment field of a large leaf
    else v |= 1n << BigInt(maxPhyAddr); // lowest reserved address bit
  }
  return v;
}

export class WalkHarness {
  readonly m: Machine;
  readonly mem: RefMemory;
  constructor(opts: { la57?: boolean; gbPages?: boolean; maxPhyAddr?: number; psc?: boolean } = {}) {
    this.m = new Machine({
      memoryBytes: 8 << 20,
      cpus: 1,
      la57: opts.la57 ?? false,
      gbPages: opts.gbPages ?? true,
      maxPhyAddr: opts.maxPhyAddr ?? 46,
      psc: { enabled: opts.psc ?? true },
      tlb: { l1d4k: { sets: 1, ways: 1 }, l1d2m: { sets: 1, ways: 1 }, l1d1g: { sets: 1, ways: 1 }, l1i4k: { sets: 1, ways: 1 }, l1i2m: { sets: 1, ways: 1 }, stlb: { sets: 1, ways: 2 }, stlb1g: { sets: 1, ways: 1 } },
    });
    const phys = this.m.phys;
    this.mem = { read64: (pa) => phys.read64(pa), write64: (pa, v) => phys.write64(pa, v), size: BigInt(phys.size) };
  }

  get cpu() {
    return this.m.cpu(0);
  }

  /**
   * Write the path for a page of `size` (4096, 2 MiB, 1 GiB): flags[0] is the top-level entry.
   * Returns the entry addresses top-down.
   */
  writePath(va: bigint, size: number, flags: EntryFlags[], la57 = false): number[] {
    const levels = la57 ? 5 : 4;
    const leafLevel = size === 4096 ? 1 : size === 2 << 20 ? 2 : 3;
    const addrs: number[] = [];
    let table = ROOT;
    let k = 0;
    for (let level = levels; level >= leafLevel; level--, k++) {
      const idx = Number((va >> BigInt(12 + 9 * (level - 1))) & 0x1ffn);
      const ea = table + idx * 8;
      const leaf = level === leafLevel;
      const next = leaf ? (size === 4096 ? DATA_4K : size === 2 << 20 ? DATA_2M : DATA_1G) : TABLES[k]!;
      this.m.phys.write64(ea, entryValue(level, leaf, next, flags[k]!, this.m.config.maxPhyAddr));
      addrs.push(ea);
      table = next;
    }
    return addrs;
  }

  state(c: Controls, la57 = false): RefCpuState {
    return {
      cr0: BigInt(CR0_PE | CR0_ET | CR0_PG | (c.wp ? CR0_WP : 0)) & 0xffffffffn,
      cr3: BigInt(ROOT),
      cr4: BigInt(CR4_PAE | (c.smep ? CR4_SMEP : 0) | (c.smap ? CR4_SMAP : 0) | (c.pke ? CR4_PKE : 0) | (la57 ? CR4_LA57 : 0)),
      efer: BigInt(EFER_LME | EFER_LMA | (c.nxe ? EFER_NXE : 0)),
      pkru: c.pkru,
      cpl: c.cpl,
      ac: c.ac,
    };
  }

  load(c: Controls, la57 = false): void {
    const s = this.state(c, la57);
    this.cpu.loadRegisters({ cr0: Number(s.cr0) | 0, cr3: s.cr3, cr4: Number(s.cr4), efer: Number(s.efer), pkru: s.pkru, cpl: s.cpl, ac: s.ac });
  }

  /**
   * Run one case on both translators from identical memory. Returns a description of the first
   * difference, or null when they agree on everything.
   */
  compare(va: bigint, addrs: number[], c: Controls, la57 = false): string | null {
    const phys = this.m.phys;
    const before = addrs.map((a) => phys.read64(a));
    this.load(c, la57);
    this.cpu.flushEverything();
    const fast = this.cpu.access(va, c.kind, { implicit: c.implicit });
    const cr2 = this.cpu.readCr2();
    const fastAfter = addrs.map((a) => phys.read64(a));
    addrs.forEach((a, i) => phys.write64(a, before[i]!));
    const ref = referenceTranslate(this.mem, this.state(c, la57), { va, kind: c.kind, implicit: c.implicit }, { maxPhyAddr: this.m.config.maxPhyAddr, gbPages: this.m.config.gbPages });
    const refAfter = addrs.map((a) => phys.read64(a));
    return diff(fast, cr2, fastAfter, ref, refAfter);
  }
}

function diff(fast: AccessResult<bigint>, cr2: bigint, fastAfter: bigint[], ref: RefResult, refAfter: bigint[]): string | null {
  if (fast.ok !== ref.ok) return `fast ${JSON.stringify(show(fast))} vs reference ${JSON.stringify(show(ref))}`;
  if (fast.ok && ref.ok) {
    if (BigInt(fast.pa) !== ref.pa) return `pa 0x${fast.pa.toString(16)} vs 0x${ref.pa.toString(16)}`;
  } else if (!fast.ok && !ref.ok) {
    if (fast.vector !== ref.vector) return `vector ${fast.vector} vs ${ref.vector}`;
    if (fast.errorCode !== ref.errorCode) return `error code 0x${fast.errorCode.toString(16)} vs 0x${ref.errorCode.toString(16)}`;
    if (ref.cr2 !== null && cr2 !== ref.cr2) return `CR2 0x${cr2.toString(16)} vs 0x${ref.cr2.toString(16)}`;
  }
  for (let i = 0; i < fastAfter.length; i++) {
    if (fastAfter[i] !== refAfter[i]) return `entry ${i} after: 0x${fastAfter[i]!.toString(16)} vs 0x${refAfter[i]!.toString(16)}`;
  }
  return null;
}

function show(r: AccessResult<bigint> | RefResult): unknown {
  return JSON.parse(JSON.stringify(r, (_k, v) => (typeof v === 'bigint' ? '0x' + v.toString(16) : v)));
}

/** Every combination of the boolean fields named, in a fixed order. */
export function* booleanProduct<K extends string>(names: readonly K[]): Generator<Record<K, boolean>> {
  const n = names.length;
  for (let i = 0; i < 1 << n; i++) {
    const o = {} as Record<K, boolean>;
    names.forEach((name, b) => (o[name] = ((i >> b) & 1) === 1));
    yield o;
  }
}

export const KINDS: AccessKind[] = ['read', 'write', 'fetch'];
