/**
 * hw/tlb.ts — TLB and paging-structure-cache arrays held in a CPU's block of the shared buffer
 * (Intel SDM Vol. 3A §4.10.2 "TLBs", §4.10.3 "Paging-structure caches", §4.10.4 invalidation).
 *
 * Every array is set-associative (sets × ways; one set = fully associative). An entry is four
 * 32-bit words:
 *
 *   w0  tag: the low 32 bits of the virtual page number (va >> shift)
 *   w1  bits 12:0  the rest of the page number (va bits 56 and below; with 4-level paging the
 *                  canonical rule makes bits 56:48 copies of bit 47, so one tag serves both modes)
 *       bits 24:13 PCID the entry was created under
 *       bit  25    valid
 *       bit  26    global (TLB only: matches any PCID)
 *       bits 28:27 size of the translation: 0 = 4 KiB, 1 = 2 MiB, 2 = 1 GiB
 *   w2  TLB: page frame number (pa >> 12) bits 31:0 of the page (or large-page) base
 *       PSC: frame number of the next table
 *   w3  bits 7:0   frame number bits 39:32
 *       bit  8     U   (U/S ANDed over all levels used)
 *       bit  9     W   (R/W ANDed over all levels used)
 *       bit  10    XD  (XD ORed over all levels used)
 *       bit  11    D   (TLB: the leaf's dirty flag when the entry was filled)
 *       bits 15:12 PK  (TLB: protection key of the leaf)
 *       bits 18:16 PAT index (PAT<<2 | PCD<<1 | PWT) of the leaf
 *       bits 21:20 first-level entries only: 0 for a whole translation, else the size code of the
 *                  larger page this entry caches a piece of (see "splintering" below)
 *
 * Rights are cached raw (combined over levels, SDM §4.10.2.2); CR0.WP, CR4.SMEP/SMAP, RFLAGS.AC
 * and PKRU are applied at use time by hw/cpu.ts, so changing them needs no invalidation.
 *
 * The second-level TLB holds 4 KiB and 2 MiB translations in one array (as Skylake's STLB does):
 * a 4 KiB translation goes to set (va >> 12) mod sets, a 2 MiB one to set (va >> 21) mod sets,
 * and the size bits keep their tags apart.
 *
 * Splintering: when the first-level array for a translation's size is absent, the translation
 * is cached as the piece of the next smaller size that contains the address (SDM §4.10.2.3).
 * INVLPG, INVPCID type 0 and #PF must still invalidate every piece of the large page, so such
 * pieces are marked in word 3 and clearAddress() also removes the pieces of any large page that
 * contains the address.
 *
 * Replacement per array: true LRU by stamps, FIFO, or pseudo-random from a seeded xorshift kept
 * in the CPU block (deterministic). Stale entries are never dropped behind software's back:
 * only replacement and the invalidations of §4.10.4 remove entries, so experiments see exactly
 * what a missing or late flush leaves behind.
 */

import type { ArrayPlacement } from './layout.ts';
import { ENTRY_WORDS as LAYOUT_ENTRY_WORDS, R_RNG } from './layout.ts';
import type { Replacement } from './config.ts';

/**
 * A module-local copy of the entry size: the sweeps below read it once per entry, and under the
 * test runner's module loader every imported binding is a getter call (INVLPG went from ~6 µs to
 * well under 1 µs with local constants).
 */
const ENTRY_WORDS = LAYOUT_ENTRY_WORDS;

export const W1_VPNHI_MASK = 0x1fff;
export const W1_PCID_SHIFT = 13;
export const W1_PCID_MASK = 0xfff << W1_PCID_SHIFT;
export const W1_VALID = 1 << 25;
export const W1_GLOBAL = 1 << 26;
export const W1_SIZE_SHIFT = 27;
export const W1_SIZE_MASK = 3 << W1_SIZE_SHIFT;

export const W3_PFNHI_MASK = 0xff;
export const W3_U = 1 << 8;
export const W3_W = 1 << 9;
export const W3_XD = 1 << 10;
export const W3_D = 1 << 11;
export const W3_PK_SHIFT = 12;
export const W3_MT_SHIFT = 16;
/** Size code of the larger page a splintered first-level entry is a piece of (0: a whole translation). */
export const W3_PIECE_SHIFT = 20;
export const W3_PIECE_MASK = 3 << W3_PIECE_SHIFT;
/** The three rights bits, shifted down, form a 3-bit index: U=1, W=2, XD=4. */
export const W3_RIGHTS_SHIFT = 8;

export const SIZE_4K = 0;
export const SIZE_2M = 1;
export const SIZE_1G = 2;
export const SIZE_SHIFTS = [12, 21, 30] as const;

/** Identifies an array for reports. */
export type ArrayName = 'l1d4k' | 'l1d2m' | 'l1d1g' | 'l1i4k' | 'l1i2m' | 'l1i1g' | 'stlb' | 'stlb1g' | 'pml5e' | 'pml4e' | 'pdpte' | 'pde';

/**
 * One set-associative array. `shift` is the page shift used for the tag (for the mixed STLB it is
 * the shift of the probe in progress, passed explicitly).
 */
export class TlbArray {
  readonly sets: number;
  readonly ways: number;
  readonly setMask: number;
  /** First word of entry 0 inside the CPU block. */
  readonly base: number;
  readonly stamps: number;
  readonly count: number;
  /** This array may hold pieces of larger pages (set by the CPU when the larger array is absent). */
  holdsPieces = false;
  /** The size codes holdsSize() accepts (filled on first use: they depend only on the geometry). */
  private heldSizes: number[] | null = null;

  constructor(
    readonly name: ArrayName,
    readonly r: Int32Array,
    p: ArrayPlacement,
    readonly replacement: Replacement,
    /** Size code stored in entries (for the STLB: the default for fixed-size use). */
    readonly sizeCode: number,
    /** Page shift of tags; for paging-structure caches, the shift of the covered region. */
    readonly shift: number,
    /** True for paging-structure caches (no global entries, no D/PK). */
    readonly psc = false,
  ) {
    this.sets = p.sets;
    this.ways = p.ways;
    this.setMask = p.sets - 1;
    this.base = p.entries;
    this.stamps = p.stamps;
    this.count = p.sets * p.ways;
  }

  get present(): boolean {
    return this.count > 0;
  }

  /**
   * Find the entry for (vpnLo, vpnHi) of size `size` usable under `pcid`: tagged with that PCID,
   * or global. Returns the entry's first word index, or -1.
   */
  lookup(vpnLo: number, vpnHi: number, pcid: number, size: number): number {
    if (this.count === 0) return -1;
    const r = this.r;
    const ways = this.ways;
    const tagNG = vpnHi | (pcid << W1_PCID_SHIFT) | W1_VALID | (size << W1_SIZE_SHIFT);
    const tagG = vpnHi | W1_VALID | W1_GLOBAL | (size << W1_SIZE_SHIFT);
    let e = this.base + (vpnLo & this.setMask) * ways * ENTRY_WORDS;
    for (let w = 0; w < ways; w++, e += ENTRY_WORDS) {
      if (r[e] === vpnLo) {
        const w1 = r[e + 1]!;
        if (w1 === tagNG || (w1 & ~W1_PCID_MASK) === tagG) return e;
      }
    }
    return -1;
  }

  /** Record a use of entry `e` for LRU. */
  touch(e: number, stampClock: number): void {
    if (this.replacement === 'lru') this.r[this.stamps + (e - this.base) / ENTRY_WORDS] = stampClock;
  }

  /**
   * Insert an entry, replacing an existing entry with the same tag (so a refill after a rights
   * re-walk or a D update does not leave two copies), else an invalid way, else a victim chosen
   * by the replacement policy. `stamp` is the CPU's LRU clock now. Returns the entry's first
   * word index.
   */
  insert(vpnLo: number, vpnHi: number, pcid: number, size: number, global: boolean, w2: number, w3: number, stamp: number): number {
    const r = this.r;
    const ways = this.ways;
    const set = vpnLo & this.setMask;
    const first = this.base + set * ways * ENTRY_WORDS;
    const tagBase = vpnHi | W1_VALID | (size << W1_SIZE_SHIFT);
    let victim = -1;
    let e = first;
    for (let w = 0; w < ways; w++, e += ENTRY_WORDS) {
      const w1 = r[e + 1]!;
      if (!(w1 & W1_VALID)) {
        if (victim < 0) victim = e;
        continue;
      }
      // Same page, same size, and the same PCID (or either side global): this is the slot.
      if (r[e] === vpnLo && (w1 & ~(W1_PCID_MASK | W1_GLOBAL)) === tagBase && (global || w1 & W1_GLOBAL || ((w1 & W1_PCID_MASK) >>> W1_PCID_SHIFT) === pcid)) {
        victim = e;
        break;
      }
    }
    if (victim < 0) victim = this.chooseVictim(first, set, stamp);
    r[victim] = vpnLo;
    r[victim + 1] = tagBase | (pcid << W1_PCID_SHIFT) | (global ? W1_GLOBAL : 0);
    r[victim + 2] = w2;
    r[victim + 3] = w3;
    if (this.replacement === 'lru') r[this.stamps + (victim - this.base) / ENTRY_WORDS] = stamp;
    return victim;
  }

  private chooseVictim(first: number, set: number, now: number): number {
    const r = this.r;
    const ways = this.ways;
    if (ways === 1) return first;
    switch (this.replacement) {
      case 'lru': {
        const s0 = this.stamps + set * ways;
        let best = 0;
        let bestAge = -1;
        for (let w = 0; w < ways; w++) {
          const age = (now - r[s0 + w]!) >>> 0; // wrap-safe age
          if (age > bestAge) {
            bestAge = age;
            best = w;
          }
        }
        return first + best * ENTRY_WORDS;
      }
      case 'fifo': {
        const slot = this.stamps + set * ways; // word 0 of the set's stamps: next victim
        const w = (r[slot]! >>> 0) % ways;
        r[slot] = (w + 1) % ways;
        return first + w * ENTRY_WORDS;
      }
      case 'random': {
        let x = r[R_RNG]! || 0x9e3779b9;
        x ^= x << 13;
        x ^= x >>> 17;
        x ^= x << 5;
        r[R_RNG] = x;
        return first + ((x >>> 0) % ways) * ENTRY_WORDS;
      }
    }
  }

  /** Invalidate entry `e`. */
  kill(e: number): void {
    this.r[e + 1] = 0;
  }

  /**
   * Invalidate every entry matched by `pred` (entry index, w1) and return how many valid entries
   * were removed. Used by every invalidation rule; each passes the rule as a predicate.
   */
  sweep(pred: (e: number, w1: number) => boolean): number {
    if (this.count === 0) return 0;
    const r = this.r;
    let n = 0;
    const end = this.base + this.count * ENTRY_WORDS;
    for (let e = this.base; e < end; e += ENTRY_WORDS) {
      const w1 = r[e + 1]!;
      if (w1 & W1_VALID && pred(e, w1)) {
        r[e + 1] = 0;
        n++;
      }
    }
    return n;
  }

  /** Remove everything (all PCIDs, global entries). */
  clear(): number {
    return this.sweep(() => true);
  }

  /** Remove entries tagged with `pcid`; global entries too only if `includeGlobal`. */
  clearPcid(pcid: number, includeGlobal: boolean): number {
    // sweep() with this predicate, written out: INVLPG runs it over every paging-structure cache.
    if (this.count === 0) return 0;
    const r = this.r;
    let n = 0;
    const end = this.base + this.count * ENTRY_WORDS;
    for (let e = this.base; e < end; e += ENTRY_WORDS) {
      const w1 = r[e + 1]!;
      if (w1 & W1_VALID && ((w1 & W1_PCID_MASK) >>> W1_PCID_SHIFT) === pcid && (includeGlobal || !(w1 & W1_GLOBAL))) {
        r[e + 1] = 0;
        n++;
      }
    }
    return n;
  }

  /** Remove all non-global entries of every PCID. */
  clearNonGlobal(): number {
    return this.sweep((_e, w1) => !(w1 & W1_GLOBAL));
  }

  /**
   * Remove the entries that translate linear address (vaHi:vaLo) under `pcid`, and, if
   * `includeGlobal`, global entries for it whatever their PCID. Every size held in this array is
   * checked (the STLB holds two).
   */
  clearAddress(vaHi: number, vaLo: number, pcid: number, includeGlobal: boolean): number {
    if (this.count === 0) return 0;
    let n = 0;
    // holdsSize() for each size code, computed once (INVLPG calls this for every array).
    let held = this.heldSizes;
    if (held === null) held = this.heldSizes = [0, 1, 2].filter((z) => this.holdsSize(z));
    for (let h = 0; h < held.length; h++) {
      const size = held[h]!;
      const shift = SIZE_SHIFTS[size]!;
      const lo = vpnLo(vaHi, vaLo, shift);
      const hi = vpnHi(vaHi, shift);
      const r = this.r;
      let e = this.base + (lo & this.setMask) * this.ways * ENTRY_WORDS;
      for (let w = 0; w < this.ways; w++, e += ENTRY_WORDS) {
        const w1 = r[e + 1]!;
        if (!(w1 & W1_VALID) || r[e] !== lo || (w1 & W1_VPNHI_MASK) !== hi || ((w1 & W1_SIZE_MASK) >>> W1_SIZE_SHIFT) !== size) continue;
        const g = (w1 & W1_GLOBAL) !== 0;
        if ((g && includeGlobal) || (!g && ((w1 & W1_PCID_MASK) >>> W1_PCID_SHIFT) === pcid)) {
          r[e + 1] = 0;
          n++;
        }
      }
    }
    if (this.holdsPieces) n += this.clearPieces(vaHi, vaLo, pcid, includeGlobal);
    return n;
  }

  /**
   * Remove, under the same PCID and global rules as clearAddress, every piece of a larger page
   * that contains (vaHi:vaLo), whichever part of that page the piece caches.
   */
  private clearPieces(vaHi: number, vaLo: number, pcid: number, includeGlobal: boolean): number {
    const r = this.r;
    let n = 0;
    const end = this.base + this.count * ENTRY_WORDS;
    for (let e = this.base; e < end; e += ENTRY_WORDS) {
      const w1 = r[e + 1]!;
      const piece = (r[e + 3]! & W3_PIECE_MASK) >>> W3_PIECE_SHIFT;
      if (!(w1 & W1_VALID) || piece === 0) continue;
      const shift = SIZE_SHIFTS[(w1 & W1_SIZE_MASK) >>> W1_SIZE_SHIFT]!;
      const d = SIZE_SHIFTS[piece]! - shift; // 9 or 18: the piece's page number bits inside the large page
      if ((w1 & W1_VPNHI_MASK) !== vpnHi(vaHi, shift) || r[e]! >>> d !== vpnLo(vaHi, vaLo, shift) >>> d) continue;
      const g = (w1 & W1_GLOBAL) !== 0;
      if ((g && includeGlobal) || (!g && ((w1 & W1_PCID_MASK) >>> W1_PCID_SHIFT) === pcid)) {
        r[e + 1] = 0;
        n++;
      }
    }
    return n;
  }

  /** Does this array ever hold translations of size code `size`? */
  holdsSize(size: number): boolean {
    if (this.psc) return size === 0;
    if (this.name === 'stlb') return size === SIZE_4K || size === SIZE_2M;
    return this.sizeCode === size;
  }

  /** Valid entries, for inspectors. */
  *entries(): Generator<{ e: number; w0: number; w1: number; w2: number; w3: number }> {
    const r = this.r;
    const end = this.base + this.count * ENTRY_WORDS;
    for (let e = this.base; e < end; e += ENTRY_WORDS) {
      const w1 = r[e + 1]!;
      if (w1 & W1_VALID) yield { e, w0: r[e]!, w1, w2: r[e + 2]!, w3: r[e + 3]! };
    }
  }

  validCount(): number {
    let n = 0;
    const end = this.base + this.count * ENTRY_WORDS;
    for (let e = this.base; e < end; e += ENTRY_WORDS) if (this.r[e + 1]! & W1_VALID) n++;
    return n;
  }
}

/**
 * Virtual page number of (vaHi:vaLo) for page shift `shift` (12, 21, 30, 39 or 48), split into
 * [low 32 bits, next 13 bits]. Bits above 56 are dropped (canonical addresses repeat bit 47/56).
 */
export function vpnOf(vaHi: number, vaLo: number, shift: number): [number, number] {
  return [vpnLo(vaHi, vaLo, shift), vpnHi(vaHi, shift)];
}

export function vpnLo(vaHi: number, vaLo: number, shift: number): number {
  if (shift === 12) return (vaLo >>> 12) | (vaHi << 20);
  if (shift === 21) return (vaLo >>> 21) | (vaHi << 11);
  if (shift === 30) return (vaLo >>> 30) | (vaHi << 2);
  return vaHi >>> (shift - 32);
}

export function vpnHi(vaHi: number, shift: number): number {
  // Address bits 56:(shift + 32): 13 bits for 4 KiB pages, 4 bits for 2 MiB pages, none above.
  if (shift === 12) return (vaHi >>> 12) & 0x1fff;
  if (shift === 21) return (vaHi >>> 21) & 0xf;
  return 0;
}

/** Rebuild the linear address (canonical, as a bigint) of an entry's page. */
export function entryVa(w0: number, w1: number, shift: number): bigint {
  const hiBits = shift === 12 ? 13 : shift === 21 ? 4 : 0;
  const vpn = (BigInt(w1 & ((1 << hiBits) - 1)) << 32n) | BigInt(w0 >>> 0);
  const va = vpn << BigInt(shift);
  // sign-extend from bit 56 (bits 56:48 are copies of bit 47 under 4-level paging)
  return BigInt.asUintN(64, BigInt.asIntN(57, va));
}
