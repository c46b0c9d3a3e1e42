/**
 * hw/inspect.ts — inspectors for experiments: what a CPU's TLBs and paging-structure caches hold,
 * how many entries each PCID has, and which cached entries no longer match the page tables.
 *
 * Stale translations are architecturally legal until invalidated (SDM §4.10.4.3); measuring what
 * a missing or late flush leaves behind is the point of these tools. An entry is compared with
 * what the tables rooted at its PCID's last CR3 say now (global entries with the current CR3),
 * read by the reference walker without setting any flag. This is tooling, not hardware: nothing
 * here changes machine state.
 */

import type { Cpu } from './cpu.ts';
import { SIZE_SHIFTS, W1_GLOBAL, W1_PCID_MASK, W1_PCID_SHIFT, W1_SIZE_MASK, W1_SIZE_SHIFT, W3_D, W3_PK_SHIFT, W3_U, W3_W, W3_XD, entryVa, type ArrayName, type TlbArray } from './tlb.ts';
import { referenceMapping, type RefMapping, type RefMemory } from './walk-reference.ts';

export interface CachedTranslation {
  cpu: number;
  array: ArrayName;
  /** Linear address of the page (canonical, unsigned). */
  va: bigint;
  pcid: number;
  global: boolean;
  pageSize: number;
  /** Physical frame number of the page base. */
  frame: bigint;
  user: boolean;
  writable: boolean;
  executeDisable: boolean;
  dirty: boolean;
  pkey: number;
}

export interface CachedPagingEntry {
  cpu: number;
  array: ArrayName;
  /** Linear address of the start of the region this entry maps a table for. */
  va: bigint;
  pcid: number;
  /** Physical address of the next table it points to. */
  table: bigint;
  user: boolean;
  writable: boolean;
  executeDisable: boolean;
}

export type StaleReason = 'unmapped' | 'other-frame' | 'other-size' | 'more-rights' | 'fewer-rights' | 'other-pkey' | 'other-table';

export interface StaleEntry {
  entry: CachedTranslation | CachedPagingEntry;
  reason: StaleReason;
  /** What the tables say now. */
  now: RefMapping | { table: bigint | null };
}

function translationOf(cpu: Cpu, t: TlbArray, w0: number, w1: number, w2: number, w3: number): CachedTranslation {
  const size = (w1 & W1_SIZE_MASK) >>> W1_SIZE_SHIFT;
  const shift = SIZE_SHIFTS[size]!;
  return {
    cpu: cpu.index,
    array: t.name,
    va: entryVa(w0, w1, shift),
    pcid: (w1 & W1_PCID_MASK) >>> W1_PCID_SHIFT,
    global: (w1 & W1_GLOBAL) !== 0,
    pageSize: 2 ** shift,
    frame: (BigInt(w3 & 0xff) << 32n) | BigInt(w2 >>> 0),
    user: (w3 & W3_U) !== 0,
    writable: (w3 & W3_W) !== 0,
    executeDisable: (w3 & W3_XD) !== 0,
    dirty: (w3 & W3_D) !== 0,
    pkey: (w3 >>> W3_PK_SHIFT) & 0xf,
  };
}

/** Every valid TLB entry of `cpu` (all arrays, both sides and the second level). */
export function tlbEntries(cpu: Cpu): CachedTranslation[] {
  const out: CachedTranslation[] = [];
  for (const t of cpu.tlbArrays) for (const { w0, w1, w2, w3 } of t.entries()) out.push(translationOf(cpu, t, w0, w1, w2, w3));
  return out;
}

/** Every valid paging-structure-cache entry of `cpu`. */
export function pagingCacheEntries(cpu: Cpu): CachedPagingEntry[] {
  const out: CachedPagingEntry[] = [];
  for (const t of cpu.pscArrays) {
    for (const { w0, w1, w2, w3 } of t.entries()) {
      out.push({
        cpu: cpu.index,
        array: t.name,
        va: entryVa(w0, w1, t.shift),
        pcid: (w1 & W1_PCID_MASK) >>> W1_PCID_SHIFT,
        table: ((BigInt(w3 & 0xff) << 32n) | BigInt(w2 >>> 0)) << 12n,
        user: (w3 & W3_U) !== 0,
        writable: (w3 & W3_W) !== 0,
        executeDisable: (w3 & W3_XD) !== 0,
      });
    }
  }
  return out;
}

/** Valid TLB entries per PCID (global entries under their creating PCID and counted apart). */
export function entriesPerPcid(cpu: Cpu): { byPcid: Map<number, number>; global: number } {
  const byPcid = new Map<number, number>();
  let global = 0;
  for (const e of tlbEntries(cpu)) {
    if (e.global) global++;
    else byPcid.set(e.pcid, (byPcid.get(e.pcid) ?? 0) + 1);
  }
  return { byPcid, global };
}

function memOf(cpu: Cpu): RefMemory {
  return { read64: (pa) => cpu.mem.read64(pa), write64: () => { throw new Error('inspection never writes'); }, size: BigInt(cpu.mem.size) };
}

/**
 * Cached entries of `cpu` that no longer match the page tables. `rootFor(pcid)` gives the root
 * table to compare an entry with; by default the CR3 most recently loaded with that PCID on this
 * CPU (the current CR3 for global entries). `only`, if given, limits the check to the entries it
 * accepts (the reference walk per entry is the expensive part).
 */
export function staleEntries(cpu: Cpu, rootFor?: (pcid: number) => bigint, only?: (e: CachedTranslation | CachedPagingEntry) => boolean): StaleEntry[] {
  cpu.refresh();
  const mem = memOf(cpu);
  const f = { maxPhyAddr: cpu.features.maxPhyAddr, gbPages: cpu.stlb1gAllowed, nxe: cpu.nxe, la57: cpu.la57 };
  const root = (pcid: number, global: boolean): bigint => {
    if (global) return BigInt(cpu.cr3Hi >>> 0) * 0x100000000n + BigInt(cpu.cr3Lo >>> 0);
    if (rootFor) return rootFor(pcid);
    return BigInt(cpu.pcidRoot(pcid));
  };
  const out: StaleEntry[] = [];
  for (const e of tlbEntries(cpu)) {
    if (only && !only(e)) continue;
    const now = referenceMapping(mem, root(e.pcid, e.global), e.va, f);
    let reason: StaleReason | null = null;
    if (!now.present) reason = 'unmapped';
    else if (Number(now.pageSize) < e.pageSize) reason = 'other-size';
    else {
      // A cached 4 KiB piece of a large page is fine if it names the right piece.
      const pieceFrame = now.frame + ((BigInt.asUintN(64, e.va) & (now.pageSize - 1n)) >> 12n);
      if (pieceFrame !== e.frame) reason = 'other-frame';
      else if ((e.user && !now.user) || (e.writable && !now.writable) || (!e.executeDisable && now.executeDisable)) reason = 'more-rights';
      else if (e.pkey !== now.pkey) reason = 'other-pkey';
      else if ((!e.user && now.user) || (!e.writable && now.writable) || (e.executeDisable && !now.executeDisable)) reason = 'fewer-rights';
    }
    if (reason) out.push({ entry: e, reason, now });
  }
  for (const e of pagingCacheEntries(cpu)) {
    if (only && !only(e)) continue;
    const table = pagingTableNow(mem, root(e.pcid, false), e, f);
    if (table === null || table !== e.table) out.push({ entry: e, reason: table === null ? 'unmapped' : 'other-table', now: { table } });
  }
  return out;
}

/** The next-table address the tables hold now for a paging-structure-cache entry. */
function pagingTableNow(mem: RefMemory, root: bigint, e: CachedPagingEntry, f: { maxPhyAddr: number; la57: boolean }): bigint | null {
  const level = e.array === 'pml5e' ? 5 : e.array === 'pml4e' ? 4 : e.array === 'pdpte' ? 3 : 2;
  const M = BigInt(f.maxPhyAddr);
  const addrMask = ((1n << M) - 1n) & ~0xfffn;
  let table = root & addrMask;
  for (let l = f.la57 ? 5 : 4; l >= level; l--) {
    const addr = table + ((e.va >> BigInt(12 + 9 * (l - 1))) & 0x1ffn) * 8n;
    if (addr + 8n > mem.size) return null;
    const v = mem.read64(addr);
    if ((v & 1n) === 0n || (l <= 3 && (v & 0x80n) !== 0n)) return null;
    table = v & addrMask;
  }
  return table;
}
