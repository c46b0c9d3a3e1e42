/**
 * A seeded fast-check property test of the TLBs and paging-structure caches (hw/cpu.ts,
 * hw/tlb.ts, hw/walk.ts) against a model of what Intel SDM Vol. 3A §4.10 permits.
 *
 * The world: a few of eight candidate pages (one page table, neighbouring 2 MiB regions, another
 * 1 GiB region, another PML4 slot, the upper half) in two address spaces, roots A and B (PCIDs 1
 * and 2 when CR4.PCIDE=1), plus a spare tree C that is never loaded but maps every candidate page,
 * so that every level has other tables to point at. Random steps, all written without
 * invalidation:
 *  - leaf changes (map, unmap, other frame, other rights, G, with A and D set or clear);
 *  - changes to higher-level entries (PML4E, PDPTE, PDE): not present, pointing at another table
 *    of the same level (another root's, C's, or the original), other R/W, U/S, XD and A (with the
 *    ignored bits D and G set at random), a PDE turned into a 2 MiB page or a PDPTE into a 1 GiB
 *    page (and, by a later change, back into a table pointer), and reserved bits (bit 51 above
 *    MAXPHYADDR, or PS in a PML4E);
 *  - accesses (read, write, fetch at CPL 0 or 3), invalidations (INVLPG, also of a non-canonical
 *    address or of an address no access uses, MOV to CR3 with and without the no-flush bit,
 *    sometimes loading a root with the other root's PCID, INVPCID types 0–3, full flushes) and
 *    CR0.WP changes.
 * Each change hits the entry the root's tables reach now (shared tables included), or the root's
 * original entry when the path to it is broken. The caches run enabled and disabled
 * (`psc: { enabled }`) with several TLB and paging-structure-cache geometries, so entries are also
 * evicted and large pages splintered.
 *
 * The model, written from the SDM and sharing nothing with hw/ but the memory it reads, keeps what
 * the processor may have cached since the last invalidation that covers it:
 *  - TLB: translations (linear page base and size, frame, R/W and U/S ANDed and XD ORed over the
 *    levels used, the leaf's D), each associated with the PCID current when it was made, and
 *    global (usable under every PCID) when the leaf has G=1 with CR4.PGE=1 (§4.10.2);
 *  - paging-structure caches, per PCID: PML4E-, PDPTE- and PDE-cache entries (the region of
 *    linear addresses they serve, the next table's address, the rights combined over that level
 *    and the levels above it) (§4.10.3.1). Not kept when the machine has no such caches.
 * Both are filled only by a successful access, with the translation and the non-leaf entries of
 * every walk that explains the access (below): a superset of what the emulator can have cached.
 * They are emptied as §4.10.4.1 says: INVLPG drops the page's translations of the current PCID,
 * every global translation of it, and every paging-structure-cache entry of the current PCID;
 * MOV to CR3 without the no-flush bit drops the new PCID's non-global translations and all its
 * paging-structure-cache entries; INVPCID type 0 drops the address's non-global translations of
 * that PCID and that PCID's paging-structure-cache entries that would be used for the address
 * (its "mappings for the linear address"; dropping more, as hw/cpu.ts does, is also legal);
 * type 1 the PCID's non-global translations and all its cache entries; type 2 everything; type 3
 * all but global translations; a #PF the faulting page's translations associated with the
 * current PCID (global ones made under it included) and the current PCID's cache entries that
 * would be used for the address. (The reference note's §6 says a #PF invalidates "the TLB
 * entries for the faulting page"; the SDM limits that to entries associated with the current
 * PCID, so a global entry made under another PCID may survive: the model follows the SDM, and
 * hw/cpu.ts, which drops every global entry of the page, does more than required.) The G flag
 * never applies to paging-structure-cache entries. A translation of a large page covers every
 * address in it, so an invalidation anywhere in the page drops it.
 *
 * An access may then do what any of these does (§4.10.3.2):
 *  - a cached translation of the PCID (or a global one) whose rights allow the access now (and
 *    with D=1 for a write): its frame, and no change in memory;
 *  - a walk of the current tables from CR3;
 *  - a walk that starts below a cached PML4E, PDPTE or PDE entry of the PCID for that address,
 *    with the entry's table and rights, "as if it had traversed" the cached entries. An entry made
 *    from a walk that itself started below a cached entry carries that entry's rights: the SDM
 *    lets the rest of the walk proceed as if the cached entries were the ones in memory, so the
 *    model lets such combinations chain (the SDM's "in the PML4E and the PDPTE in memory" in the
 *    rules for creating entries is read as the entries the walk used).
 * The walks are computed by a small walker in this file, checked at every access against the
 * reference translator (hw/walk-reference.ts) on the walk from CR3. A successful walk sets A in
 * every entry it reads from memory (entries taken from a cache are not read) and D in the leaf for
 * a write, and nothing else; a faulting walk changes nothing (hw/walk.ts sets A/D only once the
 * access is allowed, as Bochs and KVM do; the SDM would tolerate upper-level A bits set early).
 *
 * Properties checked at every step:
 *  - the access's result (physical address, or #PF with error code and CR2) together with every
 *    change to the entries any candidate walk reads is exactly that of one candidate above: with
 *    nothing cached this is exactly the walk of the current tables;
 *  - a #PF comes from a walk, never from a cached translation (hw/cpu.ts re-walks a cached entry
 *    with too few rights first; the SDM would also allow a spurious fault there);
 *  - every page-table word of the world not read by a candidate walk is unchanged (checked
 *    against a shadow copy every few steps and at the end);
 *  - every TLB entry and every paging-structure-cache entry the inspector (hw/inspect.ts)
 *    reports is one the model allows (a piece of a large page must be the right piece);
 *  - the arrays' occupancy summary (R_HELD, see hw/tlb.ts) has the bit of every entry present.
 */

import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { CR0_WP, CR3_NOFLUSH, CR4_PAE, CR4_PCIDE, CR4_PGE, LEVEL_PTE, Machine, PageTableBuilder, encodeEntry, hex64, type AccessKind, type PscGeometry } from '../../hw/index.ts';
import type { Cpu } from '../../hw/cpu.ts';
import { pagingCacheEntries, tlbEntries } from '../../hw/inspect.ts';
import { referenceTranslate, type RefMemory } from '../../hw/walk-reference.ts';
import { R_HELD } from '../../hw/layout.ts';
import { TlbArray, W1_SIZE_MASK, W1_SIZE_SHIFT } from '../../hw/tlb.ts';
import { ROOMY_PSC } from './tlb-world.ts';

const CANDIDATE_VAS = [0x400000n, 0x401000n, 0x402000n, 0x410000n, 0x600000n, 0x40000000n, 0x7f0000001000n, 0xffff800000002000n];
const FRAMES = [0x200000, 0x201000, 0x202000, 0x203000];
const FRAMES_2M = [0x0c000000, 0x0c200000, 0x0e000000];
const FRAMES_1G = [0x40000000, 0x80000000, 0xc0000000];
/** The spare tree C maps candidate page i to SPARE_FRAME + i pages. */
const SPARE_FRAME = 0x300000;
const GEOMETRIES = {
  tiny: { l1d4k: { sets: 1, ways: 2 }, l1i4k: { sets: 1, ways: 2 }, stlb: { sets: 1, ways: 2 }, replacement: 'random' as const },
  small: { l1d4k: { sets: 2, ways: 2 }, l1i4k: { sets: 2, ways: 1 }, stlb: { sets: 4, ways: 2 }, replacement: 'fifo' as const },
  skylake: {},
  /** No second-level TLB: the instruction and data sides keep separate copies of a translation. */
  split: { l1d4k: { sets: 2, ways: 2 }, l1i4k: { sets: 1, ways: 2 }, stlb: { sets: 0, ways: 0 } },
  /** One first-level TLB for instructions and data. */
  unified: { unified: true, l1d4k: { sets: 2, ways: 2 }, stlb: { sets: 2, ways: 4 } },
  /** No large-page arrays at all: 2 MiB and 1 GiB pages are cached as 4 KiB pieces. */
  flat: { l1d4k: { sets: 2, ways: 2 }, l1d2m: { sets: 0, ways: 0 }, l1d1g: { sets: 0, ways: 0 }, l1i4k: { sets: 1, ways: 2 }, l1i2m: { sets: 0, ways: 0 }, stlb: { sets: 2, ways: 2 }, stlb1g: { sets: 0, ways: 0 } },
};
const PSC_GEOMETRIES: Record<string, Partial<PscGeometry>> = {
  /** One entry per level: every new walk evicts. */
  tiny: { pml4e: { sets: 1, ways: 1 }, pdpte: { sets: 1, ways: 1 }, pde: { sets: 1, ways: 1 } },
  default: {},
  roomy: ROOMY_PSC,
};

// Entry bits (SDM Table 4-15 to 4-19): P 0, R/W 1, U/S 2, A 5, D 6 (ignored in a non-leaf
// entry), PS 7, G 8 (ignored in a non-leaf entry), address 45:12 with MAXPHYADDR = 46, bits 51:46
// reserved, XD 63 (EFER.NXE = 1 in this world).
const P = 1n;
const RW = 1n << 1n;
const US = 1n << 2n;
const A = 1n << 5n;
const D = 1n << 6n;
const PS = 1n << 7n;
const G = 1n << 8n;
const XD = 1n << 63n;
const MAXPHYADDR = 46n;
const ADDR = ((1n << MAXPHYADDR) - 1n) & ~0xfffn;
const RSVD_HIGH = ((1n << 52n) - 1n) & ~((1n << MAXPHYADDR) - 1n);
/** Shift of the linear-address region one entry of each level covers (the region a cache entry serves). */
const REGION_SHIFT: Record<number, bigint> = { 4: 39n, 3: 30n, 2: 21n, 1: 12n };
const LEVEL_NAME: Record<number, string> = { 4: 'PML4E', 3: 'PDPTE', 2: 'PDE', 1: 'PTE' };
const PSC_LEVEL: Record<string, number> = { pml4e: 4, pdpte: 3, pde: 2 };

interface Leaf {
  frame: number;
  rw: boolean;
  us: boolean;
  xd: boolean;
  g: boolean;
  a: boolean;
  d: boolean;
}

/** Flags of a rewritten higher-level entry (d and g are ignored in a non-leaf entry). */
interface UpperFlags {
  rw: boolean;
  us: boolean;
  xd: boolean;
  a: boolean;
  d: boolean;
  g: boolean;
}

type UpperChange =
  | { k: 'np'; junk: boolean }
  /** target 0: the table the entry pointed at originally; else one of the level's tables. */
  | { k: 'table'; target: number; f: UpperFlags }
  /** A PDE → 2 MiB page, a PDPTE → 1 GiB page; a PML4E with PS=1 (a reserved bit). */
  | { k: 'large'; frame: number; f: UpperFlags }
  | { k: 'rsvd' };

type Op =
  | { t: 'access'; page: number; kind: AccessKind; cpl: 0 | 3; off: number }
  | { t: 'set'; root: number; page: number; leaf: Leaf | null }
  | { t: 'upper'; root: number; page: number; level: 2 | 3 | 4; change: UpperChange }
  | { t: 'invlpg'; page: number; nonCanonical: boolean }
  /** With CR4.PCIDE=1 a root is loaded with its own PCID, or (swap) with the other root's. */
  | { t: 'cr3'; root: number; noflush: boolean; swap: boolean }
  | { t: 'invpcid'; type: number; pcid: number; page: number }
  | { t: 'flush' }
  | { t: 'wp'; on: boolean };

const likely = fc.nat(3).map((n) => n !== 0);
const unlikely = fc.nat(3).map((n) => n === 0);
const arbLeaf: fc.Arbitrary<Leaf> = fc.record({ frame: fc.nat(FRAMES.length - 1), rw: likely, us: likely, xd: unlikely, g: unlikely, a: fc.boolean(), d: fc.boolean() });
/** Mostly permissive (leaves too), so that walks through rewritten entries often get to the leaf. */
const arbUpperFlags: fc.Arbitrary<UpperFlags> = fc.record({ rw: likely, us: likely, xd: unlikely, a: fc.boolean(), d: fc.boolean(), g: fc.boolean() });
const arbUpperChange: fc.Arbitrary<UpperChange> = fc.oneof(
  { weight: 1, arbitrary: fc.record({ k: fc.constant('np' as const), junk: fc.boolean() }) },
  { weight: 8, arbitrary: fc.record({ k: fc.constant('table' as const), target: fc.nat(6), f: arbUpperFlags }) },
  { weight: 3, arbitrary: fc.record({ k: fc.constant('large' as const), frame: fc.nat(2), f: arbUpperFlags }) },
  { weight: 1, arbitrary: fc.constant({ k: 'rsvd' as const }) },
);
const arbPage = fc.nat(7);
const arbOp: fc.Arbitrary<Op> = fc.oneof(
  { weight: 10, arbitrary: fc.record({ t: fc.constant('access' as const), page: arbPage, kind: fc.constantFrom<AccessKind>('read', 'write', 'fetch'), cpl: fc.constantFrom<0 | 3>(0, 3), off: fc.nat(0xfff) }) },
  { weight: 3, arbitrary: fc.record({ t: fc.constant('set' as const), root: fc.nat(1), page: arbPage, leaf: fc.option(arbLeaf, { nil: null, freq: 6 }) }) },
  { weight: 3, arbitrary: fc.record({ t: fc.constant('upper' as const), root: fc.nat(1), page: arbPage, level: fc.constantFrom<2 | 3 | 4>(2, 2, 2, 3, 4), change: arbUpperChange }) },
  { weight: 2, arbitrary: fc.record({ t: fc.constant('invlpg' as const), page: fc.nat(8), nonCanonical: fc.boolean() }) },
  { weight: 2, arbitrary: fc.record({ t: fc.constant('cr3' as const), root: fc.nat(1), noflush: fc.boolean(), swap: unlikely }) },
  { weight: 2, arbitrary: fc.record({ t: fc.constant('invpcid' as const), type: fc.nat(3), pcid: fc.nat(2), page: arbPage }) },
  { weight: 1, arbitrary: fc.constant({ t: 'flush' as const }) },
  { weight: 1, arbitrary: fc.record({ t: fc.constant('wp' as const), on: fc.boolean() }) },
);

function arbScenario(psc: boolean) {
  return fc.record({
    psc: fc.constant(psc),
    pcide: fc.boolean(),
    geometry: fc.constantFrom<keyof typeof GEOMETRIES>('tiny', 'small', 'skylake', 'split', 'unified', 'flat'),
    pscGeometry: fc.constantFrom('tiny', 'default', 'roomy'),
    slots: fc.uniqueArray(fc.nat(CANDIDATE_VAS.length - 1), { minLength: 2, maxLength: 5 }),
    ops: fc.array(arbOp, { minLength: 20, maxLength: 120, size: 'max' }),
  });
}

type Scenario = ReturnType<typeof arbScenario> extends fc.Arbitrary<infer T> ? T : never;

// ================================================================================================
// The model
// ================================================================================================

/** Access rights combined over the levels used: R/W and U/S ANDed, XD ORed (SDM §4.6, §4.10.2.2). */
interface Rights {
  rw: boolean;
  us: boolean;
  xd: boolean;
}

const ALL_RIGHTS: Rights = { rw: true, us: true, xd: false };

/** A translation as a TLB may hold it. */
interface Translation extends Rights {
  /** Linear address of the page, and its size. */
  base: bigint;
  size: bigint;
  /** Physical address of the page. */
  frame: bigint;
  /** The leaf's dirty flag as the walk left it. */
  d: boolean;
}

/** A paging-structure-cache entry: a non-leaf entry at `level` with the rights down to it. */
interface PscEntry extends Rights {
  level: number;
  /** The linear addresses it serves: those whose bits 47:REGION_SHIFT[level] are `region`. */
  region: bigint;
  /** Physical address of the table it points to. */
  table: bigint;
}

function sameRights(a: Rights, b: Rights): boolean {
  return a.rw === b.rw && a.us === b.us && a.xd === b.xd;
}

function covers(t: Translation, va: bigint): boolean {
  return va >= t.base && va < t.base + t.size;
}

function serves(e: PscEntry, va: bigint): boolean {
  return va >> REGION_SHIFT[e.level]! === e.region;
}

/** SDM §4.6.1 with EFER.NXE=1, CR4.SMEP=SMAP=PKE=0: may an access with these combined rights happen? */
function rightsAllow(r: Rights, kind: AccessKind, user: boolean, wp: boolean): boolean {
  if (user && !r.us) return false;
  if (kind === 'fetch') return !r.xd;
  if (kind === 'write') return r.rw || (!user && !wp);
  return true;
}

/** May a cached translation serve this access without a walk? (A write needs D=1 in it.) */
function permits(t: Translation, kind: AccessKind, user: boolean, wp: boolean): boolean {
  return rightsAllow(t, kind, user, wp) && (kind !== 'write' || t.d);
}

/**
 * A TLB entry is associated with the PCID current when it was made, global or not; a global one
 * may also be used under any other PCID (SDM §4.10.2.4).
 */
interface Tagged {
  pcid: number;
  global: boolean;
  t: Translation;
}

class Model {
  readonly tlb: Tagged[] = [];
  readonly psc: { pcid: number; e: PscEntry }[] = [];

  constructor(readonly hasPsc: boolean) {}

  /** Cached translations usable under `pcid` for `va`. */
  translations(pcid: number, va: bigint): Translation[] {
    return this.tlb.filter((x) => (x.pcid === pcid || x.global) && covers(x.t, va)).map((x) => x.t);
  }

  /** Paging-structure-cache entries of `pcid` that serve `va`, every level. */
  pagingEntries(pcid: number, va: bigint): PscEntry[] {
    return this.psc.filter((x) => x.pcid === pcid && serves(x.e, va)).map((x) => x.e);
  }

  addTranslation(pcid: number, global: boolean, t: Translation): void {
    if (!this.tlb.some((x) => x.pcid === pcid && x.global === global && x.t.base === t.base && x.t.size === t.size && x.t.frame === t.frame && x.t.d === t.d && sameRights(x.t, t))) {
      this.tlb.push({ pcid, global, t });
    }
  }

  addPagingEntry(pcid: number, e: PscEntry): void {
    if (!this.hasPsc) return;
    if (!this.psc.some((x) => x.pcid === pcid && x.e.level === e.level && x.e.region === e.region && x.e.table === e.table && sameRights(x.e, e))) this.psc.push({ pcid, e });
  }

  dropTranslations(pred: (x: Tagged) => boolean): void {
    for (let i = this.tlb.length - 1; i >= 0; i--) if (pred(this.tlb[i]!)) this.tlb.splice(i, 1);
  }

  dropPagingEntries(pred: (pcid: number, e: PscEntry) => boolean): void {
    for (let i = this.psc.length - 1; i >= 0; i--) if (pred(this.psc[i]!.pcid, this.psc[i]!.e)) this.psc.splice(i, 1);
  }

}

// ================================================================================================
// The walker of this test (SDM §4.5, §4.6, §4.7, §4.8), starting at CR3 or below a cached entry
// ================================================================================================

interface Start {
  /** For messages. */
  from: string;
  /** Level of the first entry read from memory (4 at CR3). */
  level: number;
  table: bigint;
  rights: Rights;
}

type Outcome =
  | {
      ok: true;
      from: string;
      /** Addresses of the entries read from memory. */
      read: bigint[];
      pa: bigint;
      /** New values of the entries whose A (or D) the walk sets. */
      writes: Map<bigint, bigint>;
      translation: Translation;
      global: boolean;
      /** Non-leaf entries read, as paging-structure-cache entries. */
      pagingEntries: PscEntry[];
    }
  | { ok: false; from: string; read: bigint[]; errorCode: number };

function walkFrom(read: (pa: bigint) => bigint, va: bigint, start: Start, kind: AccessKind, user: boolean, wp: boolean): Outcome {
  // #PF error code: W/R, U/S and I/D describe the access (I/D because NXE=1), P and RSVD the cause.
  const accessBits = (kind === 'write' ? 2 : 0) | (user ? 4 : 0) | (kind === 'fetch' ? 16 : 0);
  const readAddrs: bigint[] = [];
  const used: { addr: bigint; value: bigint; leaf: boolean }[] = [];
  const pagingEntries: PscEntry[] = [];
  let rights = { ...start.rights };
  let table = start.table;
  let level = start.level;
  for (;; level--) {
    const addr = table + ((va >> (12n + 9n * BigInt(level - 1))) & 0x1ffn) * 8n;
    const e = read(addr);
    readAddrs.push(addr);
    if ((e & P) === 0n) return { ok: false, from: start.from, read: readAddrs, errorCode: accessBits };
    const ps = (e & PS) !== 0n;
    const leaf = level === 1 || (ps && (level === 2 || level === 3));
    const reserved =
      (e & RSVD_HIGH) !== 0n || (level === 4 && ps) || (leaf && level === 3 && (e & 0x3fffe000n) !== 0n) || (leaf && level === 2 && (e & 0x1fe000n) !== 0n);
    if (reserved) return { ok: false, from: start.from, read: readAddrs, errorCode: accessBits | 1 | 8 };
    rights = { rw: rights.rw && (e & RW) !== 0n, us: rights.us && (e & US) !== 0n, xd: rights.xd || (e & XD) !== 0n };
    used.push({ addr, value: e, leaf });
    if (leaf) break;
    table = e & ADDR;
    pagingEntries.push({ level, region: va >> REGION_SHIFT[level]!, table, ...rights });
  }
  if (!rightsAllow(rights, kind, user, wp)) return { ok: false, from: start.from, read: readAddrs, errorCode: accessBits | 1 };
  const writes = new Map<bigint, bigint>();
  for (const u of used) {
    const want = u.leaf && kind === 'write' ? A | D : A;
    if ((u.value & want) !== want) writes.set(u.addr, u.value | want);
  }
  const leafValue = used.at(-1)!.value;
  const size = 1n << REGION_SHIFT[level]!;
  const frame = leafValue & ADDR & ~(size - 1n);
  return {
    ok: true,
    from: start.from,
    read: readAddrs,
    pa: frame | (va & (size - 1n)),
    writes,
    translation: { base: va & ~(size - 1n), size, frame, d: (leafValue & D) !== 0n || kind === 'write', ...rights },
    global: (leafValue & G) !== 0n, // CR4.PGE=1 throughout
    pagingEntries,
  };
}

function describeOutcome(o: Outcome): string {
  return o.ok ? `${o.from}: pa 0x${o.pa.toString(16)}${o.writes.size ? ` writing ${[...o.writes].map(([a, v]) => `[0x${a.toString(16)}]=0x${v.toString(16)}`).join(' ')}` : ''}` : `${o.from}: #PF 0x${o.errorCode.toString(16)}`;
}

function leafValue(l: Leaf): bigint {
  return encodeEntry(LEVEL_PTE, { address: FRAMES[l.frame]!, P: true, RW: l.rw, US: l.us, XD: l.xd, G: l.g, A: l.a, D: l.d });
}

function upperFlagBits(f: UpperFlags): bigint {
  return P | (f.rw ? RW : 0n) | (f.us ? US : 0n) | (f.xd ? XD : 0n) | (f.a ? A : 0n) | (f.d ? D : 0n) | (f.g ? G : 0n);
}

// ================================================================================================
// One scenario
// ================================================================================================

/** Run one scenario, throwing at the first step the model rejects; returns the CPU for inspection. */
function runScenario(s: Scenario): Cpu {
  const m = new Machine({ memoryBytes: 4 << 20, tlb: GEOMETRIES[s.geometry], psc: { enabled: s.psc, ...PSC_GEOMETRIES[s.pscGeometry] } });
  const cpu = m.cpu(0);
  const read = (pa: bigint): bigint => m.phys.read64(pa);
  const builders = [new PageTableBuilder(m, 0x100000, 0x140000), new PageTableBuilder(m, 0x140000, 0x180000), new PageTableBuilder(m, 0x180000, 0x1c0000)];
  const pages = s.slots.map((i) => CANDIDATE_VAS[i]!);
  const extraVa = 0x403000n; // never accessed
  const mem: RefMemory = { read64: (pa) => m.phys.read64(pa), write64: (pa, v) => m.phys.write64(pa, v), size: BigInt(m.phys.size) };
  const model = new Model(s.psc);
  let root = 0;
  let wp = true;

  // Roots A and B map the chosen pages (user, writable; A set in root A only, D clear), C every
  // candidate page.
  for (const r of [0, 1]) pages.forEach((va, i) => builders[r]!.map(va, FRAMES[(i + r) % FRAMES.length]!, { RW: true, US: true, A: r === 0 }));
  CANDIDATE_VAS.forEach((va, i) => builders[2]!.map(va, SPARE_FRAME + i * 4096, { RW: true, US: true }));

  /** The entries and tables on the path of `va` from `rootTable`, as far as the path goes. */
  const pathOf = (rootTable: bigint, va: bigint): { entry: Map<number, bigint>; table: Map<number, bigint> } => {
    const entry = new Map<number, bigint>();
    const table = new Map<number, bigint>([[4, rootTable]]); // table[l]: the table holding the level-l entry
    let t = rootTable;
    for (let l = 4; l >= 1; l--) {
      const addr = t + ((va >> (12n + 9n * BigInt(l - 1))) & 0x1ffn) * 8n;
      entry.set(l, addr);
      if (l === 1) break;
      const e = read(addr);
      if ((e & P) === 0n || (e & RSVD_HIGH) !== 0n || (e & PS) !== 0n) break;
      t = e & ADDR;
      table.set(l - 1, t);
    }
    return { entry, table };
  };
  const rootTable = (r: number): bigint => BigInt(builders[r]!.root);
  // The original paths of roots A and B, and the tables of every level (targets of 'table' changes).
  const original = [0, 1].map((r) => pages.map((va) => pathOf(rootTable(r), va)));
  const pool = new Map<number, bigint[]>([[4, []], [3, []], [2, []]]); // level-L entry → tables of level L-1
  const allTables = new Set<bigint>();
  for (const [r, vas] of [[0, pages], [1, pages], [2, CANDIDATE_VAS]] as const) {
    for (const va of vas) {
      const { table } = pathOf(rootTable(r), va);
      for (const [l, t] of table) {
        allTables.add(t);
        if (l < 4 && !pool.get(l + 1)!.includes(t)) pool.get(l + 1)!.push(t);
      }
    }
  }

  // A shadow copy of every page-table word of the world: what memory must hold.
  const shadow = new Map<bigint, Int32Array>();
  for (const t of allTables) shadow.set(t, m.phys.i32.slice(Number(t) / 4, Number(t) / 4 + 1024));
  const shadowWrite = (pa: bigint, v: bigint): void => {
    const words = shadow.get(pa & ~0xfffn);
    if (!words) return;
    const i = Number(pa & 0xfffn) / 4;
    words[i] = Number(v & 0xffffffffn) | 0;
    words[i + 1] = Number(v >> 32n) | 0;
  };
  const write = (pa: bigint, v: bigint): void => {
    m.phys.write64(pa, v);
    shadowWrite(pa, v);
  };
  const checkShadow = (where: string): void => {
    for (const [t, words] of shadow) {
      const base = Number(t) / 4;
      for (let i = 0; i < 1024; i++) {
        if (m.phys.i32[base + i] !== words[i]) {
          const pa = t + BigInt((i & ~1) * 4);
          throw new Error(`${where}: page-table word at 0x${pa.toString(16)} is 0x${read(pa).toString(16)}, but no candidate walk wrote it (expected 0x${(BigInt(words[i & ~1]! >>> 0) | (BigInt(words[i | 1]! >>> 0) << 32n)).toString(16)})`);
        }
      }
    }
  };

  /** Address of the level-`level` entry of `va` that root `r` reaches now, else the original one. */
  const liveEntry = (r: number, page: number, level: number): bigint => {
    const now = pathOf(rootTable(r), pages[page]!);
    return now.table.has(level) ? now.entry.get(level)! : original[r]![page]!.entry.get(level)!;
  };

  expect(cpu.writeCr4(BigInt(CR4_PAE | CR4_PGE))).toEqual({ ok: true });
  if (s.pcide) expect(cpu.writeCr4(BigInt(CR4_PAE | CR4_PGE | CR4_PCIDE))).toEqual({ ok: true });
  const pcidOf = (r: number) => (s.pcide ? r + 1 : 0);
  let pcidNow = pcidOf(0);
  expect(cpu.writeCr3(BigInt(builders[0]!.root | pcidNow))).toEqual({ ok: true });

  const checkInspector = (where: string): void => {
    // The occupancy summary (R_HELD) never calls an array empty while it holds an entry.
    const held = cpu.r[R_HELD]!;
    for (const t of [...cpu.tlbArrays, ...cpu.pscArrays]) {
      for (const x of t.entries()) {
        const size = (x.w1 & W1_SIZE_MASK) >>> W1_SIZE_SHIFT;
        if ((held & t.heldBits[size]!) === 0) throw new Error(`${where}: R_HELD says ${t.name} holds no entry of size code ${size}, but it holds one`);
      }
    }
    for (const e of tlbEntries(cpu)) {
      // A whole translation, or a piece of a larger one (the piece that the entry's address names).
      const size = BigInt(e.pageSize);
      const frame = e.frame * 4096n;
      const r: Rights = { rw: e.writable, us: e.user, xd: e.executeDisable };
      const allowed = model.tlb.some(
        (x) => x.pcid === e.pcid && x.global === e.global && x.t.size >= size && covers(x.t, e.va) && x.t.frame + (e.va - x.t.base) === frame && x.t.d === e.dirty && sameRights(x.t, r),
      );
      if (!allowed) {
        throw new Error(`${where}: the ${e.array} entry ${hex64(e.va)} (${e.pageSize} bytes) pcid ${e.pcid}${e.global ? ' global' : ''} → 0x${frame.toString(16)} ${JSON.stringify({ ...r, d: e.dirty })} is not a translation the model allows`);
      }
    }
    for (const e of pagingCacheEntries(cpu)) {
      const level = PSC_LEVEL[e.array];
      const r: Rights = { rw: e.writable, us: e.user, xd: e.executeDisable };
      const allowed = level !== undefined && model.psc.some((x) => x.pcid === e.pcid && x.e.level === level && x.e.region === e.va >> REGION_SHIFT[level]! && x.e.table === e.table && sameRights(x.e, r));
      if (!allowed) {
        throw new Error(`${where}: the ${e.array} entry ${hex64(e.va)} pcid ${e.pcid} → table 0x${e.table.toString(16)} ${JSON.stringify(r)} is not a paging-structure-cache entry the model allows`);
      }
    }
  };

  s.ops.forEach((op, step) => {
    const where = `step ${step} ${JSON.stringify(op)}`;
    const pcid = pcidNow;
    switch (op.t) {
      case 'set': {
        const page = op.page % pages.length;
        write(liveEntry(op.root, page, 1), op.leaf ? leafValue(op.leaf) : 0n);
        break;
      }
      case 'upper': {
        const page = op.page % pages.length;
        const addr = liveEntry(op.root, page, op.level);
        const origTable = original[op.root]![page]!.table.get(op.level - 1)!;
        const c = op.change;
        let v: bigint;
        if (c.k === 'np') v = c.junk ? origTable | RW | US | A : 0n;
        else if (c.k === 'table') v = (c.target === 0 ? origTable : pool.get(op.level)![(c.target - 1) % pool.get(op.level)!.length]!) | upperFlagBits(c.f);
        else if (c.k === 'large') {
          const frame = op.level === 2 ? FRAMES_2M[c.frame]! : op.level === 3 ? FRAMES_1G[c.frame]! : Number(origTable);
          v = BigInt(frame) | PS | upperFlagBits(c.f);
        } else v = origTable | P | RW | US | A | (1n << 51n);
        write(addr, v);
        break;
      }
      case 'access': {
        const page = op.page % pages.length;
        const va = pages[page]! + BigInt(op.off);
        const user = op.cpl === 3;
        cpu.setCpl(op.cpl);
        // Every result the SDM allows: cached translations, and walks from CR3 or below a cached entry.
        const cached = model.translations(pcid, va).filter((t) => permits(t, op.kind, user, wp));
        const starts: Start[] = [
          { from: 'CR3', level: 4, table: rootTable(root), rights: ALL_RIGHTS },
          ...model.pagingEntries(pcid, va).map((e) => ({ from: `cached ${LEVEL_NAME[e.level]} → 0x${e.table.toString(16)} ${JSON.stringify({ rw: e.rw, us: e.us, xd: e.xd })}`, level: e.level - 1, table: e.table, rights: e })),
        ];
        const walks = starts.map((st) => walkFrom(read, va, st, op.kind, user, wp));
        // This file's walker agrees with the reference translator on the current tables.
        const state = { cr0: cpu.readCr0(), cr3: cpu.readCr3(), cr4: cpu.readCr4(), efer: cpu.readEfer(), pkru: 0, cpl: op.cpl, ac: false };
        const ref = referenceTranslate(mem, state, { va, kind: op.kind }, { maxPhyAddr: Number(MAXPHYADDR), gbPages: true }, false);
        const fresh = walks[0]!;
        if (ref.ok !== fresh.ok || (ref.ok && fresh.ok && ref.pa !== fresh.pa) || (!ref.ok && !fresh.ok && (ref.vector !== 14 || ref.errorCode !== fresh.errorCode))) {
          throw new Error(`${where}: the test's walker says ${describeOutcome(fresh)}, the reference translator ${JSON.stringify(ref, (_k, x) => (typeof x === 'bigint' ? `0x${x.toString(16)}` : x))}`);
        }
        const watched = [...new Set(walks.flatMap((w) => w.read))];
        const before = watched.map(read);
        const r = cpu.access(va, op.kind);
        const after = watched.map(read);
        const unchanged = watched.every((_a, i) => after[i] === before[i]);
        const memoryAsAfter = (w: Outcome): boolean => watched.every((a, i) => after[i] === (w.ok ? (w.writes.get(a) ?? before[i]) : before[i]));
        const explain = (): string =>
          `cached translations ${JSON.stringify(model.translations(pcid, va), (_k, x) => (typeof x === 'bigint' ? `0x${x.toString(16)}` : x))}; walks: ${walks.map(describeOutcome).join('; ')}; ` +
          `memory: ${watched.map((a, i) => `[0x${a.toString(16)}] 0x${before[i]!.toString(16)}${after[i] !== before[i] ? ` → 0x${after[i]!.toString(16)}` : ''}`).join(' ')}`;
        if (r.ok) {
          const pa = BigInt(r.pa);
          const viaCache = unchanged && cached.some((t) => t.frame + (va - t.base) === pa);
          const viaWalk = walks.filter((w) => w.ok && w.pa === pa && memoryAsAfter(w));
          if (!viaCache && viaWalk.length === 0) throw new Error(`${where}: pa 0x${pa.toString(16)} (with the memory changes below) is neither a usable cached translation nor a walk the SDM allows; ${explain()}`);
          for (const w of viaWalk) {
            if (!w.ok) continue;
            model.addTranslation(pcid, w.global, w.translation);
            for (const e of w.pagingEntries) model.addPagingEntry(pcid, e);
          }
        } else {
          const viaWalk = walks.some((w) => !w.ok && r.vector === 14 && r.errorCode === w.errorCode && r.cr2 === va);
          if (!viaWalk || !unchanged) throw new Error(`${where}: fault ${r.vector} error 0x${r.errorCode.toString(16)} cr2 ${hex64(r.cr2)}${unchanged ? '' : ' (with memory changes)'} is not a fault of a walk the SDM allows; ${explain()}`);
          // #PF (SDM §4.10.4.1): the translations for the page "associated with the current PCID"
          // (global ones made under another PCID may stay) and the current PCID's cache entries that
          // would be used for the address.
          model.dropTranslations((x) => x.pcid === pcid && covers(x.t, va));
          model.dropPagingEntries((p, e) => p === pcid && serves(e, va));
        }
        watched.forEach((a, i) => shadowWrite(a, after[i]!));
        break;
      }
      case 'invlpg': {
        const index = op.page % (pages.length + 1);
        const va = index === pages.length ? extraVa : pages[index]!;
        if (op.nonCanonical) {
          // Break the sign extension: a no-op.
          cpu.invlpg(va >= 0xffff800000000000n ? va & ~(1n << 63n) : va | (1n << 62n));
          break;
        }
        cpu.invlpg(va + 0x7ffn);
        model.dropTranslations((x) => (x.pcid === pcid || x.global) && covers(x.t, va));
        model.dropPagingEntries((p) => p === pcid);
        break;
      }
      case 'cr3': {
        const newPcid = pcidOf(op.swap ? 1 - op.root : op.root);
        const r = cpu.writeCr3(BigInt(builders[op.root]!.root | newPcid) | (op.noflush ? CR3_NOFLUSH : 0n));
        if (!s.pcide && op.noflush) {
          expect(r, where).toMatchObject({ ok: false, vector: 13 });
          break;
        }
        expect(r, where).toEqual({ ok: true });
        root = op.root;
        pcidNow = newPcid;
        if (!op.noflush) {
          model.dropTranslations((x) => x.pcid === newPcid && !x.global);
          model.dropPagingEntries((p) => p === newPcid);
        }
        break;
      }
      case 'invpcid': {
        const va = pages[op.page % pages.length]!;
        const r = cpu.invpcid(op.type, op.pcid, va);
        if (!s.pcide && op.type <= 1 && op.pcid !== 0) {
          expect(r, where).toMatchObject({ ok: false, vector: 13 });
          break;
        }
        expect(r, where).toEqual({ ok: true });
        if (op.type === 0) {
          model.dropTranslations((x) => x.pcid === op.pcid && !x.global && covers(x.t, va));
          model.dropPagingEntries((p, e) => p === op.pcid && serves(e, va));
        } else if (op.type === 1) {
          model.dropTranslations((x) => x.pcid === op.pcid && !x.global);
          model.dropPagingEntries((p) => p === op.pcid);
        } else {
          model.dropTranslations((x) => op.type === 2 || !x.global);
          model.dropPagingEntries(() => true);
        }
        break;
      }
      case 'flush':
        cpu.flushEverything();
        model.dropTranslations(() => true);
        model.dropPagingEntries(() => true);
        break;
      case 'wp': {
        const cr0 = cpu.readCr0();
        expect(cpu.writeCr0(op.on ? cr0 | BigInt(CR0_WP) : cr0 & ~BigInt(CR0_WP))).toEqual({ ok: true });
        wp = op.on;
        break;
      }
    }
    checkInspector(where);
    if (step % 8 === 7) checkShadow(where);
  });
  checkInspector('end');
  checkShadow('end');
  return cpu;
}

// ================================================================================================
// The properties
// ================================================================================================

/** A leaf mapping FRAMES[frame] with every right, A and D set. */
const RWX: Omit<Leaf, 'frame'> = { rw: true, us: true, xd: false, g: false, a: true, d: true };
const TABLE_RWX: UpperFlags = { rw: true, us: true, xd: false, a: true, d: false, g: false };

/** Run `body` with `method` of `proto` replaced, restoring it afterwards. */
function withPatched<T extends object>(proto: T, method: keyof T & string, replacement: unknown, body: () => void): void {
  const original = Object.getOwnPropertyDescriptor(proto, method)!;
  Object.defineProperty(proto, method, { ...original, value: replacement });
  try {
    body();
  } finally {
    Object.defineProperty(proto, method, original);
  }
}

describe('TLB and paging-structure-cache differential property (seeded fast-check)', () => {
  it('with paging-structure caches: every access agrees with the SDM model of cached translations, cached upper-level entries and fresh walks', () => {
    fc.assert(fc.property(arbScenario(true), (s) => void runScenario(s)), { seed: 0x5d1ff, numRuns: 700, endOnFailure: true });
  }, 60_000);

  it('without paging-structure caches: the same model with no cached upper-level entries', () => {
    fc.assert(fc.property(arbScenario(false), (s) => void runScenario(s)), { seed: 0x7ab1e, numRuns: 400, endOnFailure: true });
  }, 60_000);

  /** A hand-written scenario on the default geometry, paging-structure caches on, no PCIDs. */
  const fixedScenario = (ops: Op[]): Scenario => ({ psc: true, pcide: false, geometry: 'skylake', pscGeometry: 'default', slots: [0, 1], ops });

  it('the model catches a TLB that ignores an invalidation (the property can fail)', () => {
    // Sanity check of the harness: a scenario that needs INVLPG, run against a CPU whose INVLPG
    // is disabled, must be rejected.
    const s = fixedScenario([
      { t: 'set', root: 0, page: 0, leaf: { frame: 0, ...RWX } },
      { t: 'access', page: 0, kind: 'read', cpl: 0, off: 0 },
      { t: 'set', root: 0, page: 0, leaf: { frame: 1, ...RWX } },
      { t: 'invlpg', page: 0, nonCanonical: false },
      { t: 'access', page: 0, kind: 'read', cpl: 0, off: 0 },
    ]);
    expect(() => runScenario(s)).not.toThrow();
    const proto = Object.getPrototypeOf(new Machine({ memoryBytes: 1 << 20 }).cpu(0)) as Cpu;
    withPatched(proto, 'invlpg', function (this: Cpu) {
      /* a broken INVLPG */
    }, () => {
      expect(() => runScenario(s)).toThrow(/step 3 .*invlpg.*not a translation the model allows/);
    });
  });

  it('the model allows a stale cached PDE until an invalidation and catches caches that survive one (the property can fail)', () => {
    // Page 0 (0x400000) is read, which caches its PML4E, PDPTE and PDE. The PDE is then pointed at
    // the spare tree's page table (where 0x401000 maps SPARE_FRAME + 4 KiB), without invalidation:
    // page 1 (0x401000, same PDE, nothing in the TLB) may still be translated through the cached
    // PDE. After INVLPG of another address, MOV to CR3, or INVPCID type 1 or 3, every
    // paging-structure-cache entry of the PCID is gone and page 1 must walk the new page table;
    // with those operations made to leave the caches alone, the run must be rejected.
    const via: Op[] = [
      { t: 'invlpg', page: 2, nonCanonical: false },
      { t: 'cr3', root: 0, noflush: false, swap: false },
      { t: 'invpcid', type: 1, pcid: 0, page: 0 },
      { t: 'invpcid', type: 3, pcid: 0, page: 0 },
    ];
    const scenario = (inv: Op): Scenario =>
      fixedScenario([
        { t: 'set', root: 0, page: 0, leaf: { frame: 0, ...RWX } },
        { t: 'set', root: 0, page: 1, leaf: { frame: 1, ...RWX } },
        { t: 'access', page: 0, kind: 'read', cpl: 0, off: 0 },
        // pool(PDE) lists root A's page table, then root B's, then the spare tree's.
        { t: 'upper', root: 0, page: 0, level: 2, change: { k: 'table', target: 3, f: TABLE_RWX } },
        inv,
        { t: 'access', page: 1, kind: 'read', cpl: 0, off: 0 },
      ]);
    for (const inv of via) expect(() => runScenario(scenario(inv))).not.toThrow();
    // Without the invalidation the stale PDE-cache entry may be used, and is: page 1 still
    // translates through the old page table.
    const stale = scenario({ t: 'wp', on: true });
    const cpu = runScenario(stale);
    expect(cpu.counters().pscHitsPde).toBeGreaterThan(0);
    expect(cpu.access(0x401000n, 'read')).toEqual({ ok: true, pa: FRAMES[1] });
    const original = TlbArray.prototype.clearPcid;
    const originalClear = TlbArray.prototype.clear;
    withPatched(TlbArray.prototype, 'clearPcid', function (this: TlbArray, pcid: number, includeGlobal: boolean) {
      return this.psc ? 0 : original.call(this, pcid, includeGlobal);
    }, () => {
      withPatched(TlbArray.prototype, 'clear', function (this: TlbArray) {
        return this.psc ? 0 : originalClear.call(this);
      }, () => {
        for (const inv of via) expect(() => runScenario(scenario(inv)), JSON.stringify(inv)).toThrow(/step 5 .*neither a usable cached translation nor a walk the SDM allows|step 4 .*not a paging-structure-cache entry the model allows/);
      });
    });
  });
});
