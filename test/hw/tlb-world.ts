/**
 * Shared fixture for the TLB tests: a machine with two address spaces (roots A and B, loaded with
 * PCIDs 1 and 2) that map the same linear addresses with 4 KiB, 2 MiB and 1 GiB pages, some of
 * them global, plus helpers that turn the inspectors' output into comparable keys.
 *
 * Root A                                  Root B
 *   V4K_0  4 KiB  → 0x0100_0000             V4K_0  4 KiB  → 0x0200_0000
 *   V4K_1  4 KiB  → 0x0100_1000             V4K_1  4 KiB  → 0x0200_1000
 *   V4K_G  4 KiB  → 0x0100_2000  global     V4K_G  4 KiB  → 0x0200_2000
 *   (unmapped)                              V4K_GB 4 KiB  → 0x0200_3000  global
 *   V2M    2 MiB  → 0x0400_0000             V2M    2 MiB  → 0x0600_0000
 *   V2M_G  2 MiB  → 0x0420_0000  global     V2M_G  2 MiB  → 0x0620_0000
 *   V1G    1 GiB  → 0x4000_0000             V1G    1 GiB  → 0x8000_0000
 *   VK     4 KiB  → 0x0300_0000  global, supervisor (upper half)
 *                                           VK     4 KiB  → 0x0300_1000  supervisor
 *
 * Every leaf has A=1 and D=1, so reads and writes through a filled entry never re-walk unless a
 * test wants them to. Data frames may lie beyond installed memory: only translations are tested.
 */

import { Machine, PageTableBuilder, CR4_PAE, CR4_PCIDE, CR4_PGE, CR3_NOFLUSH, LEVEL_PDE, LEVEL_PDPTE, LEVEL_PTE, encodeEntry, hex64, type MachineOptions } from '../../hw/index.ts';
import type { Cpu, AccessResult } from '../../hw/cpu.ts';
import { pagingCacheEntries, tlbEntries } from '../../hw/inspect.ts';

export const V4K_0 = 0x10000000n;
export const V4K_1 = 0x10001000n;
export const V4K_G = 0x10002000n;
export const V4K_GB = 0x10003000n;
export const V2M = 0x20000000n;
export const V2M_G = 0x20200000n;
export const V1G = 0xc0000000n;
export const VK = 0xffff800000000000n;

export const KB4 = 4096 as const;
export const MB2 = 2097152 as const;
export const GB1 = 1073741824 as const;
export type PageSize = typeof KB4 | typeof MB2 | typeof GB1;

export interface Mapping {
  pa: number;
  global?: boolean;
  user?: boolean;
}

export interface PageSpec {
  name: string;
  va: bigint;
  size: PageSize;
  a?: Mapping;
  b?: Mapping;
}

export const PAGES: readonly PageSpec[] = [
  { name: 'V4K_0', va: V4K_0, size: KB4, a: { pa: 0x01000000 }, b: { pa: 0x02000000 } },
  { name: 'V4K_1', va: V4K_1, size: KB4, a: { pa: 0x01001000 }, b: { pa: 0x02001000 } },
  { name: 'V4K_G', va: V4K_G, size: KB4, a: { pa: 0x01002000, global: true }, b: { pa: 0x02002000 } },
  { name: 'V4K_GB', va: V4K_GB, size: KB4, b: { pa: 0x02003000, global: true } },
  { name: 'V2M', va: V2M, size: MB2, a: { pa: 0x04000000 }, b: { pa: 0x06000000 } },
  { name: 'V2M_G', va: V2M_G, size: MB2, a: { pa: 0x04200000, global: true }, b: { pa: 0x06200000 } },
  { name: 'V1G', va: V1G, size: GB1, a: { pa: 0x40000000 }, b: { pa: 0x80000000 } },
  { name: 'VK', va: VK, size: KB4, a: { pa: 0x03000000, global: true, user: false }, b: { pa: 0x03001000, user: false } },
];

/** Offset inside each page used when probing it (inside the page, different per size). */
export function probeOffset(size: PageSize): bigint {
  return size === KB4 ? 0x123n : size === MB2 ? 0x12345n : 0x2345678n;
}

/** Where every PTE change of a test moves a frame: 4 GiB up keeps every alignment. */
export const MOVED = 0x100000000;

export const ROOT_A_RANGE: [number, number] = [0x100000, 0x180000];
export const ROOT_B_RANGE: [number, number] = [0x180000, 0x200000];

export const PCID_A = 1;
export const PCID_B = 2;

/** Paging-structure caches big enough that nothing a test fills is ever evicted. */
export const ROOMY_PSC = { pml4e: { sets: 1, ways: 8 }, pdpte: { sets: 1, ways: 8 }, pde: { sets: 8, ways: 4 } };

export class World {
  readonly m: Machine;
  readonly a: PageTableBuilder;
  readonly b: PageTableBuilder;

  constructor(opts: Partial<MachineOptions> = {}) {
    this.m = new Machine({ memoryBytes: 16 << 20, cpus: 2, psc: ROOMY_PSC, ...opts });
    this.a = new PageTableBuilder(this.m, ...ROOT_A_RANGE);
    this.b = new PageTableBuilder(this.m, ...ROOT_B_RANGE);
    for (const p of PAGES) {
      if (p.a) this.map('a', p, p.a);
      if (p.b) this.map('b', p, p.b);
    }
  }

  cpu(i = 0): Cpu {
    return this.m.cpu(i);
  }

  builder(root: 'a' | 'b'): PageTableBuilder {
    return root === 'a' ? this.a : this.b;
  }

  /** (Re)write the leaf of page `p` in root `root`; `m` null writes a not-present entry. */
  map(root: 'a' | 'b', p: PageSpec, m: Mapping | null, extra: { RW?: boolean; D?: boolean; XD?: boolean; PK?: number; A?: boolean } = {}): number {
    const level = p.size === KB4 ? LEVEL_PTE : p.size === MB2 ? LEVEL_PDE : LEVEL_PDPTE;
    const value = m === null ? 0n : encodeEntry(level, { address: m.pa, P: true, RW: extra.RW ?? true, US: m.user ?? true, A: extra.A ?? true, D: extra.D ?? true, G: m.global ?? false, PS: level !== LEVEL_PTE, XD: extra.XD ?? false, PK: extra.PK ?? 0 });
    return this.builder(root).setEntry(p.va, level, value);
  }

  /** PCIDE=1, PGE=1, CR3 = root A with PCID 1 (from the reset state). */
  enablePcid(cpu: Cpu = this.cpu()): void {
    ok(cpu.writeCr4(BigInt(CR4_PAE | CR4_PGE)));
    ok(cpu.writeCr4(BigInt(CR4_PAE | CR4_PGE | CR4_PCIDE)));
    ok(cpu.writeCr3(BigInt(this.a.root | PCID_A)));
  }

  /** PCIDE=0, PGE=1, CR3 = root A. */
  enableGlobalOnly(cpu: Cpu = this.cpu()): void {
    ok(cpu.writeCr4(BigInt(CR4_PAE | CR4_PGE)));
    ok(cpu.writeCr3(BigInt(this.a.root)));
  }

  /** Load root A / B with its PCID, with or without the no-flush bit. */
  loadA(cpu: Cpu = this.cpu(), noflush = true): void {
    ok(cpu.writeCr3(BigInt(this.a.root | PCID_A) | (noflush ? CR3_NOFLUSH : 0n)));
  }

  loadB(cpu: Cpu = this.cpu(), noflush = true): void {
    ok(cpu.writeCr3(BigInt(this.b.root | PCID_B) | (noflush ? CR3_NOFLUSH : 0n)));
  }

  /**
   * Fill the caches by reading every page mapped in A under PCID 1, then every page mapped in B
   * under PCID 2, and return to PCID 1 without flushing.
   */
  fillBoth(cpu: Cpu = this.cpu()): void {
    this.loadA(cpu);
    for (const p of PAGES) if (p.a) expectOk(cpu.access(p.va + probeOffset(p.size), 'read'));
    this.loadB(cpu);
    for (const p of PAGES) if (p.b) expectOk(cpu.access(p.va + probeOffset(p.size), 'read'));
    this.loadA(cpu);
  }

  /** Fill with root A only (the PCIDE=0 world). */
  fillA(cpu: Cpu = this.cpu()): void {
    for (const p of PAGES) if (p.a) expectOk(cpu.access(p.va + probeOffset(p.size), 'read'));
  }
}

export function ok(r: { ok: boolean; reason?: string }): void {
  if (!r.ok) throw new Error(`register write unexpectedly failed: ${r.reason}`);
}

export function expectOk(r: AccessResult): number {
  if (!r.ok) throw new Error(`access unexpectedly faulted: vector ${r.vector} error 0x${r.errorCode.toString(16)}`);
  return r.pa;
}

/** A cached translation, reduced to what the invalidation rules look at. */
export interface Key {
  array: string;
  va: bigint;
  size: number;
  pcid: number;
  global: boolean;
  frame: bigint;
}

/** "array va size tag → frame" (size and frame only for TLB entries). */
export function keyString(k: { array: string; va: bigint; size?: number; pcid: number; global?: boolean; frame?: bigint }): string {
  const size = k.size ? ` ${k.size >= GB1 ? '1G' : k.size >= MB2 ? '2M' : '4K'}` : '';
  const frame = k.frame !== undefined ? ` → 0x${k.frame.toString(16)}` : '';
  return `${k.array} ${hex64(k.va)}${size} ${k.global ? 'G' : ''}p${k.pcid}${frame}`;
}

export function tlbKeys(cpu: Cpu): Key[] {
  return tlbEntries(cpu).map((e) => ({ array: e.array, va: e.va, size: e.pageSize, pcid: e.pcid, global: e.global, frame: e.frame }));
}

export function tlbKeyStrings(cpu: Cpu): string[] {
  return tlbKeys(cpu).map(keyString).sort();
}

export interface PscKey {
  array: string;
  va: bigint;
  pcid: number;
}

export function pscKeys(cpu: Cpu): PscKey[] {
  return pagingCacheEntries(cpu).map((e) => ({ array: e.array, va: e.va, pcid: e.pcid }));
}

export function pscKeyStrings(cpu: Cpu): string[] {
  return pscKeys(cpu).map(keyString).sort();
}

/** Name of the page a cached entry belongs to. */
export function pageOf(va: bigint): PageSpec {
  const p = PAGES.find((x) => x.va === va);
  if (!p) throw new Error(`no page at ${hex64(va)}`);
  return p;
}
