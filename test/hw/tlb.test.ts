/**
 * TLB and paging-structure-cache behaviour of hw/cpu.ts and hw/tlb.ts against Intel SDM Vol. 3A
 * §4.10 (see /work/shared/reference/x86-paging.md §6):
 *
 *  - every invalidation rule of §4.10.4.1, table-driven: INVLPG, INVPCID types 0–3, MOV to CR3
 *    (PCIDE 0/1, no-flush bit 63), MOV to CR4 (PGE, PCIDE 1→0, SMEP, other bits), MOV to CR0 (PG
 *    1→0, WP), WRMSR EFER.NXE, flushEverything. Each row fills the caches by accesses, makes every
 *    cached translation stale by rewriting the leaves in memory (stale translations must still be
 *    served), performs the operation, then checks exactly which TLB and paging-structure-cache
 *    entries remain (hw/inspect.ts) and that each page now translates to its old frame (entry
 *    kept) or to the new frame / a #PF (entry gone);
 *  - INVPCID's #GP and #UD cases;
 *  - the #PF invalidation, the D re-walk, the rights re-walk, CR0.WP at use time, global entries
 *    shared across PCIDs, per-CPU isolation;
 *  - LRU, FIFO and seeded random replacement in a tiny array, exactly as hw/tlb.ts documents;
 *  - large pages cached as smaller pieces (splintering) and their invalidation;
 *  - the stale-entry inspector's reasons;
 *  - the arrays' occupancy summary (R_HELD).
 */

import { describe, expect, it } from 'vitest';
import {
  CR0_PG, CR0_WP, CR3_NOFLUSH, CR4_OSFXSR, CR4_PAE, CR4_PCIDE, CR4_PGE, CR4_SMEP, EFER_NXE, LEVEL_PDE, LEVEL_PTE, Machine, PageTableBuilder, PTE64_D, PTE64_RW, encodeEntry,
  type LinearAddress,
} from '../../hw/index.ts';
import type { Cpu } from '../../hw/cpu.ts';
import { entriesPerPcid, staleEntries, tlbEntries, type CachedTranslation } from '../../hw/inspect.ts';
import { R_HELD, R_RNG } from '../../hw/layout.ts';
import {
  GB1, KB4, MB2, MOVED, PAGES, PCID_A, PCID_B, V1G, V2M, V2M_G, V4K_0, V4K_1, V4K_G, V4K_GB, VK, World, expectOk, keyString, ok, probeOffset, pscKeyStrings, pscKeys,
  tlbKeyStrings, tlbKeys, type Key, type PageSpec, type PscKey,
} from './tlb-world.ts';

// ================================================================================================
// The table of invalidation rules
// ================================================================================================

const L1_ARRAY: Record<number, string> = { [KB4]: 'l1d4k', [MB2]: 'l1d2m', [GB1]: 'l1d1g' };
const L2_ARRAY: Record<number, string> = { [KB4]: 'stlb', [MB2]: 'stlb', [GB1]: 'stlb1g' };

function page(name: string): PageSpec {
  const p = PAGES.find((x) => x.name === name);
  if (!p) throw new Error(name);
  return p;
}

/** The root a cached entry was filled from: PCID 2 is root B, PCIDs 0 and 1 root A. */
function rootOfPcid(pcid: number): 'a' | 'b' {
  return pcid === PCID_B ? 'b' : 'a';
}

/** The two entries (first-level and second-level TLB) a read of page `name` leaves under `tag`. */
function cached(name: string, tag: 'p0' | 'p1' | 'p2' | 'Gp0' | 'Gp1' | 'Gp2'): Key[] {
  const p = page(name);
  const global = tag.startsWith('G');
  const pcid = Number(tag.at(-1));
  const m = p[rootOfPcid(pcid)]!;
  const frame = BigInt(m.pa / 4096);
  return [L1_ARRAY[p.size]!, L2_ARRAY[p.size]!].map((array) => ({ array, va: p.va, size: p.size, pcid, global, frame }));
}

function psc(array: string, va: bigint, pcid: number): PscKey {
  return { array, va, pcid };
}

/** What fillBoth() leaves with CR4.PCIDE=1: PCID 1 reads root A, then PCID 2 reads root B. */
const BEFORE_PCID: Key[] = [
  ...cached('V4K_0', 'p1'), ...cached('V4K_1', 'p1'), ...cached('V4K_G', 'Gp1'), ...cached('V2M', 'p1'), ...cached('V2M_G', 'Gp1'), ...cached('V1G', 'p1'), ...cached('VK', 'Gp1'),
  // PCID 2 reads V4K_G, V2M_G and VK through PCID 1's global entries: nothing new for them.
  ...cached('V4K_0', 'p2'), ...cached('V4K_1', 'p2'), ...cached('V4K_GB', 'Gp2'), ...cached('V2M', 'p2'), ...cached('V1G', 'p2'),
];
/** Non-leaf entries of the walks: a 2 MiB leaf leaves PML4E and PDPTE, a 1 GiB leaf the PML4E. */
const BEFORE_PSC_PCID: PscKey[] = [
  psc('pml4e', 0n, 1), psc('pdpte', 0n, 1), psc('pde', V4K_0, 1), psc('pml4e', VK, 1), psc('pdpte', VK, 1), psc('pde', VK, 1),
  psc('pml4e', 0n, 2), psc('pdpte', 0n, 2), psc('pde', V4K_0, 2),
];

/** What fillA() leaves with CR4.PCIDE=0, PGE=1. */
const BEFORE_NOPCID: Key[] = [
  ...cached('V4K_0', 'p0'), ...cached('V4K_1', 'p0'), ...cached('V4K_G', 'Gp0'), ...cached('V2M', 'p0'), ...cached('V2M_G', 'Gp0'), ...cached('V1G', 'p0'), ...cached('VK', 'Gp0'),
];
const BEFORE_PSC_NOPCID: PscKey[] = [psc('pml4e', 0n, 0), psc('pdpte', 0n, 0), psc('pde', V4K_0, 0), psc('pml4e', VK, 0), psc('pdpte', VK, 0), psc('pde', VK, 0)];

interface Row {
  name: string;
  /** Runs before the caches are filled. */
  prepare?: (w: World, cpu: Cpu) => void;
  op: (w: World, cpu: Cpu) => void;
  keep: (k: Key) => boolean;
  keepPsc: (k: PscKey) => boolean;
  /** Runs after the inspection, before the behavioural check (e.g. to turn paging back on). */
  after?: (w: World, cpu: Cpu) => void;
  /** Root and PCID in force for the behavioural check (default root A, PCID 1 / 0). */
  root?: 'a' | 'b';
  pcid?: number;
}

const all = (): boolean => true;
const none = (): boolean => false;

/** Is `k` an entry that an access with `pcid` could use for page `va`? */
const usableBy = (k: Key, va: bigint, pcid: number): boolean => k.va === va && (k.global || k.pcid === pcid);

const ROWS_PCID: Row[] = [
  { name: 'INVLPG of a non-global 4 KiB page: that page for the current PCID; other PCIDs keep theirs; all PSC entries of the current PCID', op: (_w, c) => c.invlpg(V4K_0 + 0x123n), keep: (k) => !usableBy(k, V4K_0, 1), keepPsc: (k) => k.pcid !== 1 },
  { name: 'INVLPG of a global 4 KiB page removes the global entry', op: (_w, c) => c.invlpg(V4K_G), keep: (k) => !usableBy(k, V4K_G, 1), keepPsc: (k) => k.pcid !== 1 },
  { name: 'INVLPG removes a global entry that was created under another PCID', op: (_w, c) => c.invlpg(V4K_GB + 0xfffn), keep: (k) => !(k.va === V4K_GB), keepPsc: (k) => k.pcid !== 1 },
  { name: 'INVLPG of any address inside a 2 MiB page removes the 2 MiB entry', op: (_w, c) => c.invlpg(V2M + 0x1ff000n), keep: (k) => !usableBy(k, V2M, 1), keepPsc: (k) => k.pcid !== 1 },
  { name: 'INVLPG of any address inside a global 2 MiB page removes it', op: (_w, c) => c.invlpg(V2M_G + 0x100000n), keep: (k) => !usableBy(k, V2M_G, 1), keepPsc: (k) => k.pcid !== 1 },
  { name: 'INVLPG of any address inside a 1 GiB page removes the 1 GiB entry', op: (_w, c) => c.invlpg(V1G + 0x3fe00000n), keep: (k) => !usableBy(k, V1G, 1), keepPsc: (k) => k.pcid !== 1 },
  { name: 'INVLPG of an upper-half global page given as a negative number', op: (_w, c) => c.invlpg(Number(BigInt.asIntN(64, VK + 0x800n))), keep: (k) => !usableBy(k, VK, 1), keepPsc: (k) => k.pcid !== 1 },
  { name: 'INVLPG of a canonical unmapped address: no TLB entry, but every PSC entry of the current PCID', op: (_w, c) => c.invlpg(0x70000000n), keep: all, keepPsc: (k) => k.pcid !== 1 },
  { name: 'INVLPG of a non-canonical address is a no-op', op: (_w, c) => c.invlpg(0x0000800000000000n + V4K_0), keep: all, keepPsc: all },
  { name: 'INVPCID type 0 (PCID 2, V4K_0): that page of PCID 2 only', op: (_w, c) => ok(c.invpcid(0, PCID_B, V4K_0)), keep: (k) => !(k.va === V4K_0 && k.pcid === 2 && !k.global), keepPsc: (k) => k.pcid !== 2, root: 'a', pcid: 1 },
  { name: 'INVPCID type 0 of the current PCID', op: (_w, c) => ok(c.invpcid(0, PCID_A, V2M + 0x5000n)), keep: (k) => !(k.va === V2M && k.pcid === 1 && !k.global), keepPsc: (k) => k.pcid !== 1 },
  { name: 'INVPCID type 0 never removes a global translation', op: (_w, c) => ok(c.invpcid(0, PCID_A, V4K_G)), keep: all, keepPsc: (k) => k.pcid !== 1 },
  { name: 'INVPCID type 1 (PCID 2): every non-global entry of PCID 2, globals kept', op: (_w, c) => ok(c.invpcid(1, PCID_B)), keep: (k) => !(k.pcid === 2 && !k.global), keepPsc: (k) => k.pcid !== 2 },
  { name: 'INVPCID type 1 (PCID 1, the current one)', op: (_w, c) => ok(c.invpcid(1, PCID_A)), keep: (k) => !(k.pcid === 1 && !k.global), keepPsc: (k) => k.pcid !== 1 },
  { name: 'INVPCID type 2: everything, globals included', op: (_w, c) => ok(c.invpcid(2, 0)), keep: none, keepPsc: none },
  { name: 'INVPCID type 3: every non-global entry of every PCID, globals kept', op: (_w, c) => ok(c.invpcid(3, 0)), keep: (k) => k.global, keepPsc: none },
  { name: 'MOV to CR3 (PCIDE=1) reloading PCID 1: its non-global entries and PSC entries', op: (w, c) => w.loadA(c, false), keep: (k) => !(k.pcid === 1 && !k.global), keepPsc: (k) => k.pcid !== 1 },
  { name: 'MOV to CR3 (PCIDE=1) switching to PCID 2: only PCID 2 is flushed', op: (w, c) => w.loadB(c, false), keep: (k) => !(k.pcid === 2 && !k.global), keepPsc: (k) => k.pcid !== 2, root: 'b', pcid: 2 },
  {
    name: 'MOV to CR3 with bit 63 set flushes nothing and does not store bit 63',
    op: (w, c) => {
      const before = c.counters().cr3NoFlushWrites!;
      w.loadB(c, true);
      expect(c.readCr3()).toBe(BigInt(w.b.root | PCID_B));
      expect(c.counters().cr3NoFlushWrites).toBe(before + 1);
    },
    keep: all,
    keepPsc: all,
    root: 'b',
    pcid: 2,
  },
  { name: 'CR4.PGE 1→0: everything, globals and every PCID', op: (_w, c) => ok(c.writeCr4(BigInt(CR4_PAE | CR4_PCIDE))), keep: none, keepPsc: none },
  { name: 'CR4.PCIDE 1→0: everything', op: (_w, c) => ok(c.writeCr4(BigInt(CR4_PAE | CR4_PGE))), keep: none, keepPsc: none, pcid: 0 },
  {
    name: 'CR4.SMEP 0→1: every entry of the current PCID (its globals too); other PCIDs and their globals kept',
    op: (_w, c) => ok(c.writeCr4(BigInt(CR4_PAE | CR4_PGE | CR4_PCIDE | CR4_SMEP))),
    keep: (k) => k.pcid !== 1,
    keepPsc: (k) => k.pcid !== 1,
  },
  { name: 'CR4.SMEP 1→0: nothing', prepare: (_w, c) => ok(c.writeCr4(BigInt(CR4_PAE | CR4_PGE | CR4_PCIDE | CR4_SMEP))), op: (_w, c) => ok(c.writeCr4(BigInt(CR4_PAE | CR4_PGE | CR4_PCIDE))), keep: all, keepPsc: all },
  { name: 'CR4.OSFXSR 0→1 (a bit with no invalidation rule): nothing', op: (_w, c) => ok(c.writeCr4(BigInt(CR4_PAE | CR4_PGE | CR4_PCIDE | CR4_OSFXSR))), keep: all, keepPsc: all },
  { name: 'CR0.WP 1→0: nothing (WP is applied at use time)', op: (_w, c) => ok(c.writeCr0(c.readCr0() & ~BigInt(CR0_WP))), keep: all, keepPsc: all },
  { name: 'EFER.NXE 1→0: everything', op: (_w, c) => ok(c.writeEfer(c.readEfer() & ~BigInt(EFER_NXE))), keep: none, keepPsc: none },
  { name: 'flushEverything(): everything', op: (_w, c) => c.flushEverything(), keep: none, keepPsc: none },
];

const ROWS_NOPCID: Row[] = [
  { name: 'MOV to CR3 (PCIDE=0) reloading the same root: non-global entries and all PSC entries; globals kept', op: (w, c) => ok(c.writeCr3(BigInt(w.a.root))), keep: (k) => k.global, keepPsc: none, pcid: 0 },
  { name: 'MOV to CR3 (PCIDE=0) loading another root: globals keep translating through the old mapping', op: (w, c) => ok(c.writeCr3(BigInt(w.b.root))), keep: (k) => k.global, keepPsc: none, root: 'b', pcid: 0 },
  {
    name: 'CR0.PG 1→0: everything (checked again after paging is turned back on)',
    op: (_w, c) => {
      ok(c.writeCr0(c.readCr0() & ~BigInt(CR0_PG >>> 0)));
      // With paging off the linear address is the physical address.
      expect(c.access(0x123456, 'write')).toEqual({ ok: true, pa: 0x123456 });
    },
    keep: none,
    keepPsc: none,
    after: (_w, c) => ok(c.writeCr0(c.readCr0() | BigInt(CR0_PG >>> 0))),
    pcid: 0,
  },
  { name: 'INVLPG with PCIDE=0', op: (_w, c) => c.invlpg(V4K_1), keep: (k) => k.va !== V4K_1, keepPsc: none, pcid: 0 },
  { name: 'INVPCID type 0 with PCID 0 while PCIDE=0', op: (_w, c) => ok(c.invpcid(0, 0, V2M_G)), keep: all, keepPsc: none, pcid: 0 },
  { name: 'INVPCID type 1 with PCID 0 while PCIDE=0', op: (_w, c) => ok(c.invpcid(1, 0)), keep: (k) => k.global, keepPsc: none, pcid: 0 },
  { name: 'CR4.PGE 1→0 with PCIDE=0', op: (_w, c) => ok(c.writeCr4(BigInt(CR4_PAE))), keep: none, keepPsc: none, pcid: 0 },
];

/** Rewrite every leaf of both roots without invalidating: V4K_1 becomes not present, every other page moves up by 4 GiB. */
function makeEverythingStale(w: World): void {
  for (const p of PAGES) {
    for (const root of ['a', 'b'] as const) {
      const m = p[root];
      if (!m) continue;
      w.map(root, p, p.name === 'V4K_1' ? null : { ...m, pa: m.pa + MOVED });
    }
  }
}

/** The physical address of a probe through cached entry `k` (made before the leaves moved). */
function oldPa(p: PageSpec, k: Key): number {
  expect(k.frame).toBe(BigInt(p[rootOfPcid(k.pcid)]!.pa / 4096));
  return p[rootOfPcid(k.pcid)]!.pa + Number(probeOffset(p.size));
}

/**
 * Read every page under `pcid` with `root` loaded: a page with a usable entry among `kept` must
 * give its old frame; any other page must translate through the current (moved) tables.
 */
function checkBehaviour(cpu: Cpu, kept: Key[], root: 'a' | 'b', pcid: number): void {
  for (const p of PAGES) {
    const va = p.va + probeOffset(p.size);
    const k = kept.find((x) => usableBy(x, p.va, pcid));
    const r = cpu.access(va, 'read');
    const m = p[root];
    let want: unknown;
    if (k) want = { ok: true, pa: oldPa(p, k) };
    else if (!m || p.name === 'V4K_1') want = { ok: false, vector: 14, errorCode: 0, cr2: va };
    else want = { ok: true, pa: m.pa + MOVED + Number(probeOffset(p.size)) };
    expect(r, `${p.name} with PCID ${pcid} after the operation`).toEqual(want);
  }
}

function runRow(row: Row, pcide: boolean): void {
  const w = new World();
  const cpu = w.cpu();
  if (pcide) w.enablePcid(cpu);
  else w.enableGlobalOnly(cpu);
  row.prepare?.(w, cpu);
  if (pcide) w.fillBoth(cpu);
  else w.fillA(cpu);
  const before = tlbKeys(cpu);
  const beforePsc = pscKeys(cpu);
  expect(before.map(keyString).sort()).toEqual((pcide ? BEFORE_PCID : BEFORE_NOPCID).map(keyString).sort());
  expect(beforePsc.map(keyString).sort()).toEqual((pcide ? BEFORE_PSC_PCID : BEFORE_PSC_NOPCID).map(keyString).sort());

  // Stale translations are served until invalidated.
  makeEverythingStale(w);
  const activePcid = pcide ? PCID_A : 0;
  for (const p of PAGES) {
    const k = before.find((x) => usableBy(x, p.va, activePcid));
    if (k) expect(cpu.access(p.va + probeOffset(p.size), 'read'), `${p.name} is stale before the operation`).toEqual({ ok: true, pa: oldPa(p, k) });
  }
  expect(tlbKeyStrings(cpu)).toEqual(before.map(keyString).sort());

  row.op(w, cpu);
  const kept = before.filter(row.keep);
  expect(tlbKeyStrings(cpu)).toEqual(kept.map(keyString).sort());
  expect(pscKeyStrings(cpu)).toEqual(beforePsc.filter(row.keepPsc).map(keyString).sort());
  row.after?.(w, cpu);
  checkBehaviour(cpu, kept, row.root ?? 'a', row.pcid ?? (pcide ? PCID_A : 0));
}

describe('SDM §4.10.4.1 invalidation rules with CR4.PCIDE=1 (PCID 1 = root A, PCID 2 = root B, CR4.PGE=1)', () => {
  it('the fill leaves one L1 and one second-level entry per translation, globals shared', () => {
    const w = new World();
    const cpu = w.cpu();
    w.enablePcid(cpu);
    w.fillBoth(cpu);
    expect(tlbKeyStrings(cpu)).toEqual(BEFORE_PCID.map(keyString).sort());
    const per = entriesPerPcid(cpu);
    expect(Object.fromEntries(per.byPcid)).toEqual({ 1: 8, 2: 8 });
    expect(per.global).toBe(8);
  });

  it.each(ROWS_PCID)('$name', (row) => runRow(row, true));
});

describe('SDM §4.10.4.1 invalidation rules with CR4.PCIDE=0 (CR4.PGE=1)', () => {
  it.each(ROWS_NOPCID)('$name', (row) => runRow(row, false));

  it('CR4.PGE 0→1 flushes everything; with PGE=0 the G bit makes nothing global', () => {
    const w = new World();
    const cpu = w.cpu();
    ok(cpu.writeCr3(BigInt(w.a.root)));
    w.fillA(cpu);
    const keys = tlbKeys(cpu);
    expect(keys).toHaveLength(14);
    expect(keys.filter((k) => k.global)).toEqual([]);
    makeEverythingStale(w);
    expect(cpu.access(V4K_G, 'read')).toEqual({ ok: true, pa: page('V4K_G').a!.pa });
    ok(cpu.writeCr4(BigInt(CR4_PAE | CR4_PGE)));
    expect(tlbKeys(cpu)).toEqual([]);
    checkBehaviour(cpu, [], 'a', 0);
  });

  it('MOV to CR3 with bit 63 set is a #GP when PCIDE=0 (bit 63 is reserved) and flushes nothing', () => {
    const w = new World();
    const cpu = w.cpu();
    w.enableGlobalOnly(cpu);
    w.fillA(cpu);
    const before = tlbKeyStrings(cpu);
    const r = cpu.writeCr3(BigInt(w.a.root) | CR3_NOFLUSH);
    expect(r).toMatchObject({ ok: false, vector: 13, errorCode: 0 });
    expect(tlbKeyStrings(cpu)).toEqual(before);
    expect(cpu.readCr3()).toBe(BigInt(w.a.root));
  });
});

describe('INVPCID faults', () => {
  function filled(opts = {}): { w: World; cpu: Cpu; before: string[] } {
    const w = new World(opts);
    const cpu = w.cpu();
    w.enablePcid(cpu);
    w.fillBoth(cpu);
    return { w, cpu, before: tlbKeyStrings(cpu) };
  }

  it.each([
    { name: 'type 4 is undefined', type: 4, pcid: 1 as number | bigint, va: 0n as LinearAddress, reason: /type 4/ },
    { name: 'type 255', type: 255, pcid: 0, va: 0n, reason: /type 255/ },
    { name: 'descriptor bit 12 set', type: 1, pcid: 0x1000, va: 0n, reason: /63:12/ },
    { name: 'descriptor bit 63 set', type: 2, pcid: 1n << 63n, va: 0n, reason: /63:12/ },
    { name: 'negative descriptor', type: 3, pcid: -1, va: 0n, reason: /63:12/ },
    { name: 'type 0 with a non-canonical address', type: 0, pcid: 1, va: 0x0000800000000000n, reason: /non-canonical/ },
    { name: 'type 0 with a non-canonical negative number', type: 0, pcid: 1, va: -0x800000000001, reason: /non-canonical/ },
  ])('#GP(0): $name, and nothing is invalidated', ({ type, pcid, va, reason }) => {
    const { cpu, before } = filled();
    const gp = cpu.counters().gpFaults!;
    const r = cpu.invpcid(type, pcid, va);
    expect(r).toMatchObject({ ok: false, vector: 13, errorCode: 0 });
    expect(r.ok ? '' : r.reason).toMatch(reason);
    expect(tlbKeyStrings(cpu)).toEqual(before);
    expect(cpu.counters().gpFaults).toBe(gp + 1);
    expect(cpu.counters().invpcid).toBe(0);
  });

  it('type 1 ignores a non-canonical address in the descriptor', () => {
    const { cpu } = filled();
    expect(cpu.invpcid(1, 2, 0x0000800000000000n)).toEqual({ ok: true });
    expect(cpu.counters().invpcid).toBe(1);
  });

  it('#GP(0) for PCID ≠ 0 with CR4.PCIDE=0 in types 0 and 1, but not in types 2 and 3', () => {
    const w = new World();
    const cpu = w.cpu();
    w.enableGlobalOnly(cpu);
    w.fillA(cpu);
    const before = tlbKeyStrings(cpu);
    for (const type of [0, 1]) {
      const r = cpu.invpcid(type, 1, V4K_0);
      expect(r).toMatchObject({ ok: false, vector: 13, errorCode: 0, reason: expect.stringMatching(/PCIDE=0/) });
    }
    expect(tlbKeyStrings(cpu)).toEqual(before);
    expect(cpu.invpcid(3, 5)).toEqual({ ok: true });
    expect(tlbKeys(cpu).every((k) => k.global)).toBe(true);
    expect(cpu.invpcid(2, 7)).toEqual({ ok: true });
    expect(tlbKeys(cpu)).toEqual([]);
  });

  it('#UD when the CPU has no INVPCID (invpcid: false), nothing invalidated', () => {
    const { cpu, before } = filled({ invpcid: false });
    for (const type of [0, 1, 2, 3, 4]) {
      expect(cpu.invpcid(type, 0)).toEqual({ ok: false, vector: 6, errorCode: 0, reason: 'INVPCID is not supported by this CPU' });
    }
    expect(tlbKeyStrings(cpu)).toEqual(before);
  });

  it('a non-integer or negative type is API misuse (RangeError), not a #GP', () => {
    const { cpu } = filled();
    expect(() => cpu.invpcid(1.5, 0)).toThrow(RangeError);
    expect(() => cpu.invpcid(-1, 0)).toThrow(RangeError);
  });
});

// ================================================================================================
// Other TLB behaviour
// ================================================================================================

describe('global translations', () => {
  it('a global entry filled under PCID 1 serves PCID 2 until INVLPG removes it', () => {
    const w = new World();
    const cpu = w.cpu();
    w.enablePcid(cpu);
    expect(cpu.access(V4K_G + 0x10n, 'read')).toEqual({ ok: true, pa: 0x01002010 });
    w.loadB(cpu, false);
    // Root B maps V4K_G to 0x0200_2000, but the global entry from PCID 1 matches any PCID.
    expect(cpu.access(V4K_G + 0x10n, 'read')).toEqual({ ok: true, pa: 0x01002010 });
    expect(tlbKeyStrings(cpu)).toEqual(cached('V4K_G', 'Gp1').map(keyString).sort());
    cpu.invlpg(V4K_G);
    expect(cpu.access(V4K_G + 0x10n, 'read')).toEqual({ ok: true, pa: 0x02002010 });
    expect(tlbKeyStrings(cpu)).toEqual(cached('V4K_G', 'p2').map(keyString).sort());
    expect(entriesPerPcid(cpu).global).toBe(0);
  });
});

describe('#PF invalidation (SDM §4.10.4.1: the faulting page and the PSC entries on its path)', () => {
  it('a #PF removes the page from every TLB array (the other side too) and only the PSC entries it would use', () => {
    // No second-level TLB, so a data read misses even though the instruction side holds the page.
    const w = new World({ tlb: { stlb: { sets: 0, ways: 0 } } });
    const cpu = w.cpu();
    ok(cpu.writeCr3(BigInt(w.a.root)));
    expect(cpu.access(V4K_0, 'fetch')).toEqual({ ok: true, pa: 0x01000000 });
    expectOk(cpu.access(V4K_1, 'read'));
    expectOk(cpu.access(VK, 'read'));
    expect(tlbKeyStrings(cpu)).toEqual([
      'l1d4k 0x0000000010001000 4K p0 → 0x1001',
      'l1d4k 0xffff800000000000 4K p0 → 0x3000',
      'l1i4k 0x0000000010000000 4K p0 → 0x1000',
    ]);
    expect(pscKeyStrings(cpu)).toEqual(BEFORE_PSC_NOPCID.map(keyString).sort());
    w.map('a', page('V4K_0'), null);
    // The instruction side still holds the stale translation.
    expect(cpu.access(V4K_0, 'fetch')).toEqual({ ok: true, pa: 0x01000000 });
    const cr2Before = cpu.readCr2();
    expect(cr2Before).toBe(0n);
    expect(cpu.access(V4K_0 + 0x44n, 'read')).toEqual({ ok: false, vector: 14, errorCode: 0, cr2: V4K_0 + 0x44n });
    expect(cpu.readCr2()).toBe(V4K_0 + 0x44n);
    expect(tlbKeyStrings(cpu)).toEqual(['l1d4k 0x0000000010001000 4K p0 → 0x1001', 'l1d4k 0xffff800000000000 4K p0 → 0x3000']);
    // The PML4E, PDPTE and PDE entries that would translate V4K_0 are gone; VK's path is not.
    expect(pscKeyStrings(cpu)).toEqual([psc('pde', VK, 0), psc('pdpte', VK, 0), psc('pml4e', VK, 0)].map(keyString).sort());
    expect(cpu.access(V4K_0, 'fetch')).toEqual({ ok: false, vector: 14, errorCode: 0x10, cr2: V4K_0 });
    expect(cpu.counters().pageFaults).toBe(2);
  });
});

describe('accessed/dirty and rights re-walks (SDM §4.8, §4.10.4.3)', () => {
  function oneCpu(opts: { RW?: boolean; D?: boolean; user?: boolean } = {}): { w: World; cpu: Cpu; pte: number } {
    const w = new World();
    const cpu = w.cpu();
    ok(cpu.writeCr3(BigInt(w.a.root)));
    const pte = w.map('a', page('V4K_0'), { pa: 0x01000000, user: opts.user ?? true }, { RW: opts.RW ?? true, D: opts.D ?? false });
    return { w, cpu, pte };
  }

  it('the first write through an entry filled by a read re-walks once and sets D in the PTE', () => {
    const { w, cpu, pte } = oneCpu();
    expect(cpu.access(V4K_0 + 8n, 'read')).toEqual({ ok: true, pa: 0x01000008 });
    expect(tlbEntries(cpu).map((e) => e.dirty)).toEqual([false, false]);
    expect(w.m.phys.read64(pte) & PTE64_D).toBe(0n);
    const walks = cpu.counters().walks!;
    expect(cpu.access(V4K_0 + 8n, 'write')).toEqual({ ok: true, pa: 0x01000008 });
    let c = cpu.counters();
    expect(c.dirtyRewalks).toBe(1);
    expect(c.rightsRewalks).toBe(0);
    expect(c.walks).toBe(walks + 1);
    expect(w.m.phys.read64(pte) & PTE64_D).toBe(PTE64_D);
    expect(tlbEntries(cpu).map((e) => e.dirty)).toEqual([true, true]);
    // Further writes hit.
    expect(cpu.access(V4K_0 + 16n, 'write')).toEqual({ ok: true, pa: 0x01000010 });
    c = cpu.counters();
    expect(c.dirtyRewalks).toBe(1);
    expect(c.walks).toBe(walks + 1);
  });

  it.each([
    { cpl: 0 as const, errorCode: 0x3 },
    { cpl: 3 as const, errorCode: 0x7 },
  ])('if the PTE became read-only meanwhile, the D re-walk faults (CPL $cpl) and D stays clear', ({ cpl, errorCode }) => {
    const { w, cpu, pte } = oneCpu();
    cpu.setCpl(cpl);
    expectOk(cpu.access(V4K_0, 'read'));
    w.map('a', page('V4K_0'), { pa: 0x01000000 }, { RW: false, D: false });
    expect(cpu.access(V4K_0, 'write')).toEqual({ ok: false, vector: 14, errorCode, cr2: V4K_0 });
    expect(cpu.counters().dirtyRewalks).toBe(1);
    expect(w.m.phys.read64(pte) & (PTE64_D | PTE64_RW)).toBe(0n);
    expect(tlbEntries(cpu)).toEqual([]);
  });

  it('a cached entry with fewer rights than the tables now grant re-walks instead of faulting', () => {
    const { w, cpu } = oneCpu({ RW: false, D: true });
    cpu.setCpl(3);
    expectOk(cpu.access(V4K_0, 'read'));
    expect(tlbEntries(cpu).map((e) => e.writable)).toEqual([false, false]);
    w.map('a', page('V4K_0'), { pa: 0x01000000 }, { RW: true, D: true });
    expect(cpu.access(V4K_0, 'write')).toEqual({ ok: true, pa: 0x01000000 });
    const c = cpu.counters();
    expect(c.rightsRewalks).toBe(1);
    expect(c.pageFaults).toBe(0);
    expect(tlbEntries(cpu).map((e) => e.writable)).toEqual([true, true]);
  });

  it('a supervisor-only cached entry re-walks for a user access once the tables allow it', () => {
    const { w, cpu } = oneCpu({ user: false, D: true });
    expectOk(cpu.access(V4K_0, 'read'));
    w.map('a', page('V4K_0'), { pa: 0x01000000, user: true });
    cpu.setCpl(3);
    expect(cpu.access(V4K_0, 'read')).toEqual({ ok: true, pa: 0x01000000 });
    expect(cpu.counters().rightsRewalks).toBe(1);
    expect(cpu.counters().pageFaults).toBe(0);
  });

  it('a cached entry with more rights than the tables now grant is still used (stale rights are legal)', () => {
    const { w, cpu } = oneCpu({ D: true });
    cpu.setCpl(3);
    expectOk(cpu.access(V4K_0, 'write'));
    w.map('a', page('V4K_0'), { pa: 0x01000000 }, { RW: false, D: true });
    const walks = cpu.counters().walks;
    expect(cpu.access(V4K_0, 'write')).toEqual({ ok: true, pa: 0x01000000 });
    expect(cpu.counters().walks).toBe(walks);
    cpu.invlpg(V4K_0);
    expect(cpu.access(V4K_0, 'write')).toEqual({ ok: false, vector: 14, errorCode: 0x7, cr2: V4K_0 });
  });
});

describe('CR0.WP is applied at use time (no invalidation)', () => {
  it('clearing WP lets a supervisor write through a cached read-only entry at once, setting WP forbids it again', () => {
    const w = new World();
    const cpu = w.cpu();
    ok(cpu.writeCr3(BigInt(w.a.root)));
    w.map('a', page('V4K_0'), { pa: 0x01000000 }, { RW: false, D: true });
    expect(cpu.access(V4K_0, 'write')).toMatchObject({ ok: false, errorCode: 0x3 });
    expectOk(cpu.access(V4K_0, 'read'));
    const entries = tlbKeyStrings(cpu);
    expect(entries).toHaveLength(2);
    ok(cpu.writeCr0(cpu.readCr0() & ~BigInt(CR0_WP)));
    expect(tlbKeyStrings(cpu)).toEqual(entries);
    // Prove the write is served by the cached entry: move the page in memory without invalidating.
    w.map('a', page('V4K_0'), { pa: 0x01008000 }, { RW: false, D: true });
    const walks = cpu.counters().walks;
    expect(cpu.access(V4K_0 + 4n, 'write')).toEqual({ ok: true, pa: 0x01000004 });
    expect(cpu.counters().walks).toBe(walks);
    ok(cpu.writeCr0(cpu.readCr0() | BigInt(CR0_WP)));
    expect(tlbKeyStrings(cpu)).toEqual(entries);
    // The cached entry no longer allows the write: re-walk (the new tables), then #PF.
    expect(cpu.access(V4K_0 + 4n, 'write')).toEqual({ ok: false, vector: 14, errorCode: 0x3, cr2: V4K_0 + 4n });
    expect(cpu.counters().rightsRewalks).toBe(1);
  });
});

describe('per-CPU isolation', () => {
  it('filling and flushing CPU 0 never touches CPU 1', () => {
    const w = new World();
    const [c0, c1] = [w.cpu(0), w.cpu(1)];
    w.enablePcid(c0);
    w.fillBoth(c0);
    expect(tlbKeys(c1)).toEqual([]);
    expect(pscKeys(c1)).toEqual([]);
    w.enablePcid(c1);
    w.fillBoth(c1);
    const c1Before = tlbKeyStrings(c1);
    const c1Psc = pscKeyStrings(c1);
    expect(c1Before).toEqual(BEFORE_PCID.map((k) => keyString({ ...k })).sort());
    c0.flushEverything();
    c0.invlpg(V4K_G);
    ok(c0.invpcid(2, 0));
    ok(c0.writeCr4(BigInt(CR4_PAE)));
    expect(tlbKeys(c0)).toEqual([]);
    expect(tlbKeyStrings(c1)).toEqual(c1Before);
    expect(pscKeyStrings(c1)).toEqual(c1Psc);
    expect(c1.counters().entriesFlushed).toBe(0);
  });
});

// ================================================================================================
// Replacement
// ================================================================================================

describe('replacement in a 1-set, 2-way first-level array', () => {
  const BASE = 0x400000;
  function tiny(replacement: 'lru' | 'fifo' | 'random', seed?: number): { cpu: Cpu; l1: () => number[]; read: (i: number) => void } {
    const m = new Machine({ memoryBytes: 4 << 20, tlb: { l1d4k: { sets: 1, ways: 2 }, stlb: { sets: 0, ways: 0 }, replacement }, ...(seed !== undefined ? { seed } : {}) });
    const b = new PageTableBuilder(m, 0x100000, 0x140000);
    for (let i = 0; i < 8; i++) b.map(BASE + i * 4096, 0x200000 + i * 4096, { A: true, D: true });
    const cpu = m.cpu(0);
    ok(cpu.writeCr3(BigInt(b.root)));
    // Way order: the inspector lists entries in array order.
    const l1 = () => tlbEntries(cpu).filter((e) => e.array === 'l1d4k').map((e) => (Number(e.va) - BASE) / 4096);
    const read = (i: number) => expect(cpu.access(BASE + i * 4096, 'read')).toEqual({ ok: true, pa: 0x200000 + i * 4096 });
    return { cpu, l1, read };
  }

  it('LRU evicts the least recently used way (hits refresh the stamp)', () => {
    const { l1, read } = tiny('lru');
    read(0);
    read(1);
    expect(l1()).toEqual([0, 1]);
    read(0); // hit: 1 is now least recently used
    read(2);
    expect(l1()).toEqual([0, 2]);
    read(0);
    read(3);
    expect(l1()).toEqual([0, 3]);
    read(3);
    read(4);
    expect(l1()).toEqual([4, 3]);
  });

  it('FIFO evicts in insertion order whatever the hits', () => {
    const { l1, read } = tiny('fifo');
    read(0);
    read(1);
    read(0); // a hit does not protect way 0
    read(0);
    read(2);
    expect(l1()).toEqual([2, 1]);
    read(3);
    expect(l1()).toEqual([2, 3]);
    read(2);
    read(4);
    expect(l1()).toEqual([4, 3]);
  });

  /** The documented generator: xorshift32 (13, 17, 5) on the CPU's R_RNG word, victim = x mod ways. */
  function predictVictim(state: number): { way: number; next: number } {
    let x = state || 0x9e3779b9;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return { way: (x >>> 0) % 2, next: x };
  }

  function randomRun(seed: number): number[] {
    const { cpu, l1, read } = tiny('random', seed);
    read(0);
    read(1);
    const victims: number[] = [];
    for (let k = 0; k < 40; k++) {
      const before = l1();
      const { way, next } = predictVictim(cpu.r[R_RNG]!);
      const incoming = (k + 2) % 8;
      if (before.includes(incoming)) continue;
      read(incoming);
      expect(cpu.r[R_RNG]).toBe(next);
      const after = before.slice();
      after[way] = incoming;
      expect(l1()).toEqual(after);
      victims.push(way);
    }
    return victims;
  }

  it('random replacement picks the way the seeded xorshift generator names, reproducibly', () => {
    const a = randomRun(7);
    expect(a.length).toBeGreaterThan(30);
    expect(new Set(a)).toEqual(new Set([0, 1]));
    expect(randomRun(7)).toEqual(a);
  });

  it('the machine seed option seeds the hardware generator (different seeds, different victims)', () => {
    const a = randomRun(7);
    const others = [8, 9, 1234].map(randomRun);
    expect(others.some((o) => o.join() !== a.join())).toBe(true);
  });
});

// ================================================================================================
// Large pages cached as smaller pieces
// ================================================================================================

describe('splintering: large pages cached as smaller pieces (SDM §4.10.2.3)', () => {
  function splinterMachine(tlb: object): { m: Machine; cpu: Cpu; b: PageTableBuilder } {
    const m = new Machine({ memoryBytes: 4 << 20, tlb });
    const b = new PageTableBuilder(m, 0x100000, 0x140000);
    const cpu = m.cpu(0);
    ok(cpu.writeCr3(BigInt(b.root)));
    return { m, cpu, b };
  }
  const L1_ONLY = (t: { array: string }) => t.array.startsWith('l1');

  it('without a 2 MiB L1 array a 2 MiB page is cached as 4 KiB pieces, and INVLPG anywhere in it removes them all', () => {
    const { cpu, b } = splinterMachine({ l1d2m: { sets: 0, ways: 0 } });
    b.map(0x200000, 0x600000, { A: true, D: true }, MB2);
    expect(cpu.access(0x201008, 'read')).toEqual({ ok: true, pa: 0x601008 });
    expect(cpu.access(0x305010, 'read')).toEqual({ ok: true, pa: 0x705010 });
    expect(tlbEntries(cpu).filter(L1_ONLY).map((e) => [e.array, e.va, e.pageSize, e.frame])).toEqual([
      ['l1d4k', 0x201000n, 4096, 0x601n],
      ['l1d4k', 0x305000n, 4096, 0x705n],
    ]);
    expect(tlbKeyStrings(cpu)).toContain('stlb 0x0000000000200000 2M p0 → 0x600');
    // Move the page without invalidating: both pieces are stale.
    b.map(0x200000, 0x800000, { A: true, D: true }, MB2);
    expect(cpu.access(0x201008, 'read')).toEqual({ ok: true, pa: 0x601008 });
    expect(cpu.access(0x305010, 'read')).toEqual({ ok: true, pa: 0x705010 });
    cpu.invlpg(0x3ff000); // a third 4 KiB page of the same 2 MiB page
    expect(tlbEntries(cpu)).toEqual([]);
    expect(cpu.access(0x201008, 'read')).toEqual({ ok: true, pa: 0x801008 });
    expect(cpu.access(0x305010, 'read')).toEqual({ ok: true, pa: 0x905010 });
  });

  it('pieces are removed by INVPCID type 0 and by a #PF anywhere in the large page, and kept for other pages', () => {
    const { cpu, b } = splinterMachine({ l1d2m: { sets: 0, ways: 0 }, stlb: { sets: 0, ways: 0 } });
    b.map(0x200000, 0x600000, { A: true, D: true }, MB2);
    b.map(0x400000, 0xa00000, { A: true, D: true }, MB2);
    for (const va of [0x201000, 0x3ff000, 0x400000, 0x5ff000]) expectOk(cpu.access(va, 'read'));
    const vas = () => tlbEntries(cpu).map((e) => Number(e.va)).sort((x, y) => x - y);
    expect(vas()).toEqual([0x201000, 0x3ff000, 0x400000, 0x5ff000]);
    expect(tlbEntries(cpu).every((e) => e.array === 'l1d4k' && e.pageSize === KB4)).toBe(true);
    ok(cpu.invpcid(0, 0, 0x250000));
    expect(vas()).toEqual([0x400000, 0x5ff000]);
    // Unmap the second 2 MiB page; a read of an uncached address in it faults, dropping both pieces.
    b.setEntry(0x400000, LEVEL_PDE, 0n);
    expect(cpu.access(0x480010, 'read')).toEqual({ ok: false, vector: 14, errorCode: 0, cr2: 0x480010 });
    expect(tlbEntries(cpu)).toEqual([]);
  });

  it('without a 1 GiB instruction array (the default geometry) 1 GiB code pages are cached as 2 MiB pieces; INVLPG removes them all', () => {
    const { m, cpu, b } = splinterMachine({});
    expect(m.config.tlb.l1i1g).toEqual({ sets: 0, ways: 0 });
    b.map(0x40000000, 0x40000000, { A: true, D: true }, GB1);
    expect(cpu.access(0x40000010, 'fetch')).toEqual({ ok: true, pa: 0x40000010 });
    expect(cpu.access(0x40612345, 'fetch')).toEqual({ ok: true, pa: 0x40612345 });
    expect(tlbEntries(cpu).filter(L1_ONLY).map((e) => [e.array, e.va, e.pageSize, e.frame])).toEqual([
      ['l1i2m', 0x40000000n, MB2, 0x40000n],
      ['l1i2m', 0x40600000n, MB2, 0x40600n],
    ]);
    b.map(0x40000000, 0x80000000, { A: true, D: true }, GB1);
    cpu.invlpg(0x7fe00000);
    expect(tlbEntries(cpu)).toEqual([]);
    expect(cpu.access(0x40612345, 'fetch')).toEqual({ ok: true, pa: 0x80612345 });
  });

  it('with neither a 2 MiB nor a 1 GiB data array a 1 GiB page is cached as 4 KiB pieces with the right frames', () => {
    const { cpu, b } = splinterMachine({ l1d2m: { sets: 0, ways: 0 }, l1d1g: { sets: 0, ways: 0 }, stlb1g: { sets: 0, ways: 0 } });
    b.map(0x40000000, 0x40000000, { A: true, D: true }, GB1);
    expect(cpu.access(0x40000000 + 0x12345678, 'read')).toEqual({ ok: true, pa: 0x52345678 });
    expect(tlbEntries(cpu).map((e) => [e.array, e.va, e.pageSize, e.frame])).toEqual([['l1d4k', 0x52345000n, 4096, 0x52345n]]);
    cpu.invlpg(0x40000000);
    expect(tlbEntries(cpu)).toEqual([]);
  });
});

// ================================================================================================
// Stale-entry inspector
// ================================================================================================

describe('staleEntries() (hw/inspect.ts)', () => {
  it('reports exactly the entries whose translation changed, with the reason, and nothing after the right invalidations', () => {
    const w = new World();
    const cpu = w.cpu();
    // Global entries are compared with the current CR3 (root A): give A the same global V4K_GB.
    w.map('a', page('V4K_GB'), page('V4K_GB').b!);
    w.enablePcid(cpu);
    w.fillBoth(cpu);
    expect(staleEntries(cpu)).toEqual([]);
    w.map('a', page('V4K_0'), null); // unmapped
    w.map('a', page('V4K_1'), { pa: 0x01009000 }); // other-frame
    w.map('a', page('V4K_G'), { pa: 0x01002000, global: true }, { RW: false }); // more-rights (cached entry is writable)
    w.map('a', page('V2M'), { pa: 0x04000000 }, { PK: 5 }); // other-pkey
    w.map('a', page('VK'), { pa: 0x03000000, global: true, user: true }); // fewer-rights (cached entry is supervisor)
    // other-size: the global 2 MiB page becomes a page table of 4 KiB pages (same frames).
    w.a.setEntry(V2M_G, LEVEL_PDE, 0n);
    w.a.map(V2M_G, 0x04200000, { A: true, D: true });
    w.map('b', page('V4K_0'), { pa: 0x02009000 }); // other-frame in PCID 2
    const got = staleEntries(cpu).map((s) => `${keyString({ ...(s.entry as CachedTranslation), size: (s.entry as CachedTranslation).pageSize })}: ${s.reason}`).sort();
    const want = [
      ...cached('V4K_0', 'p1').map((k) => `${keyString(k)}: unmapped`),
      ...cached('V4K_1', 'p1').map((k) => `${keyString(k)}: other-frame`),
      ...cached('V4K_G', 'Gp1').map((k) => `${keyString(k)}: more-rights`),
      ...cached('V2M', 'p1').map((k) => `${keyString(k)}: other-pkey`),
      ...cached('VK', 'Gp1').map((k) => `${keyString(k)}: fewer-rights`),
      ...cached('V2M_G', 'Gp1').map((k) => `${keyString(k)}: other-size`),
      ...cached('V4K_0', 'p2').map((k) => `${keyString(k)}: other-frame`),
    ].sort();
    expect(got).toEqual(want);
    const unmapped = staleEntries(cpu).find((s) => s.reason === 'unmapped')!;
    expect(unmapped.now).toEqual({ present: false, level: 1, reason: 'not-present' });
    // INVLPG in PCID 1 of each changed page; INVPCID for PCID 2's page.
    for (const va of [V4K_0, V4K_1, V4K_G, V2M + 0x1000n, VK, V2M_G]) {
      cpu.invlpg(va);
      expect(staleEntries(cpu).some((s) => s.entry.va === va && s.entry.pcid === 1)).toBe(false);
    }
    expect(staleEntries(cpu).map((s) => s.reason)).toEqual(['other-frame', 'other-frame']);
    ok(cpu.invpcid(0, PCID_B, V4K_0));
    expect(staleEntries(cpu)).toEqual([]);
  });

  it('reports a paging-structure-cache entry whose next table changed as other-table, and unmapped ones', () => {
    const w = new World();
    const cpu = w.cpu();
    ok(cpu.writeCr3(BigInt(w.a.root)));
    w.fillA(cpu);
    expect(staleEntries(cpu)).toEqual([]);
    // Copy the page table of the 0x1000_0000 region and point the PDE at the copy.
    const pde = w.a.entryAddress(V4K_0, LEVEL_PDE);
    const oldPt = Number(w.m.phys.read64(pde) & 0x000ffffffffff000n);
    const newPt = w.a.allocTable();
    w.m.phys.copyFrame(newPt / 4096, oldPt / 4096);
    w.m.phys.write64(pde, (w.m.phys.read64(pde) & ~0x000ffffffffff000n) | BigInt(newPt));
    const stale = staleEntries(cpu);
    expect(stale.map((s) => [s.entry.array, s.entry.va, s.reason, s.now])).toEqual([['pde', V4K_0, 'other-table', { table: BigInt(newPt) }]]);
    // The kernel-half PML4E is removed: its cached entries become unmapped.
    w.a.setEntry(VK, 4, 0n);
    expect(staleEntries(cpu).map((s) => `${s.entry.array} ${s.reason}`).sort()).toEqual([
      'l1d4k unmapped', 'pde other-table', 'pde unmapped', 'pdpte unmapped', 'pml4e unmapped', 'stlb unmapped',
    ]);
    cpu.invlpg(VK);
    expect(staleEntries(cpu)).toEqual([]);
  });
});

describe('entry bookkeeping', () => {
  it('TLB entries record the leaf attributes they were filled with', () => {
    const w = new World();
    const cpu = w.cpu();
    ok(cpu.writeCr3(BigInt(w.a.root)));
    w.map('a', page('V4K_0'), { pa: 0x01000000, user: false }, { RW: false, XD: true, PK: 9, D: false });
    expectOk(cpu.access(V4K_0, 'read'));
    const e = tlbEntries(cpu).find((x) => x.array === 'l1d4k')!;
    expect(e).toEqual({ cpu: 0, array: 'l1d4k', va: V4K_0, pcid: 0, global: false, pageSize: 4096, frame: 0x1000n, user: false, writable: false, executeDisable: true, dirty: false, pkey: 9 });
    expect(w.m.phys.read64(w.a.entryAddress(V4K_0, LEVEL_PTE))).toBe(encodeEntry(LEVEL_PTE, { address: 0x01000000, P: true, A: true, XD: true, PK: 9 }));
  });
});

describe('occupancy summary (R_HELD, hw/tlb.ts)', () => {
  it('marks the arrays a fill uses, keeps the marks through INVLPG, and clears them when a flush empties the arrays', () => {
    const w = new World();
    const cpu = w.cpu();
    ok(cpu.writeCr3(BigInt(w.a.root)));
    cpu.flushEverything();
    expect(cpu.r[R_HELD]).toBe(0);
    expectOk(cpu.access(V4K_0, 'read'));
    const held = cpu.r[R_HELD]!;
    for (const t of [cpu.d4k, cpu.stlb]) expect(held & t.heldBits[0]!).not.toBe(0);
    for (const t of [cpu.d2m, cpu.d1g, cpu.stlb1g]) expect(held & t.heldAll).toBe(0);
    expect(held & cpu.stlb.heldBits[1]!).toBe(0); // no 2 MiB translation in the second-level TLB
    // INVLPG removes the page's TLB entries but leaves their marks (a mark only has to be set
    // while an entry is); it empties the paging-structure caches, which lose theirs.
    cpu.invlpg(V4K_0);
    expect(tlbEntries(cpu).filter((e) => e.va === V4K_0)).toEqual([]);
    const tlbMarks = cpu.d4k.heldAll | cpu.stlb.heldAll;
    expect(cpu.r[R_HELD]! & tlbMarks).toBe(held & tlbMarks);
    for (const t of cpu.pscArrays) expect(cpu.r[R_HELD]! & t.heldAll).toBe(0);
    // The page translates again from the tables, and a full flush leaves nothing marked.
    expectOk(cpu.access(V4K_0, 'read'));
    cpu.flushEverything();
    expect(cpu.r[R_HELD]).toBe(0);
    expect(tlbEntries(cpu)).toEqual([]);
  });

  it('a 2 MiB translation in the second-level TLB has its own mark', () => {
    const w = new World();
    const cpu = w.cpu();
    ok(cpu.writeCr3(BigInt(w.a.root)));
    cpu.flushEverything();
    expectOk(cpu.access(V2M, 'read'));
    expect(cpu.r[R_HELD]! & cpu.stlb.heldBits[1]!).not.toBe(0);
    expect(cpu.r[R_HELD]! & cpu.d2m.heldAll).not.toBe(0);
  });
});
