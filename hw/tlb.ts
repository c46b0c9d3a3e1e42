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
 *
 * Two pieces of bookkeeping make the searches cheaper without changing any result. The CPU
 * block's R_HELD word has a bit per array (two for the mixed STLB: 4 KiB and 2 MiB entries) that
 * every fill sets and only an invalidation that leaves the array without such an entry clears;
 * lookups and invalidations skip an array whose bit is clear. And a lookup that misses remembers
 * its key, so the fill that usually follows need not search the set again for an entry with the
 * same tag (unless something changed the array in between).
 */

import type { ArrayPlacement } from './layout.ts';
import * as layoutConsts from './layout.ts';
import type { Replacement } from './config.ts';

/**
 * Module-local copies of the layout constants: the sweeps below read them once per entry, and an
 * imported binding is reloaded from its module cell at every use (under the test runner's module
 * loader it is even a getter call: INVLPG went from ~6 µs to well under 1 µs with local constants).
 */
const { ENTRY_WORDS, R_HELD, R_RNG } = layoutConsts;

// The fields of words 1 and 3. This file's code uses the private names; the exported W1_/W3_/SIZE_
// names are for other modules (inside its own module an exported binding still lives in a module
// cell, reloaded with a hole check at every use in optimized code; a private const folds).
const VPNHI_MASK = 0x1fff;
const PCID_SHIFT = 13;
const PCID_MASK = 0xfff << PCID_SHIFT;
const VALID = 1 << 25;
const GLOBAL = 1 << 26;
const SIZE_SHIFT = 27;
const SIZE_MASK = 3 << SIZE_SHIFT;
const PIECE_SHIFT = 20;
const PIECE_MASK = 3 << PIECE_SHIFT;
const S4K = 0;
const S2M = 1;
const S1G = 2;
const SHIFTS = [12, 21, 30] as const;

export const W1_VPNHI_MASK = VPNHI_MASK;
export const W1_PCID_SHIFT = PCID_SHIFT;
export const W1_PCID_MASK = PCID_MASK;
export const W1_VALID = VALID;
export const W1_GLOBAL = GLOBAL;
export const W1_SIZE_SHIFT = SIZE_SHIFT;
export const W1_SIZE_MASK = SIZE_MASK;

export const W3_PFNHI_MASK = 0xff;
export const W3_U = 1 << 8;
export const W3_W = 1 << 9;
export const W3_XD = 1 << 10;
export const W3_D = 1 << 11;
export const W3_PK_SHIFT = 12;
export const W3_MT_SHIFT = 16;
/** Size code of the larger page a splintered first-level entry is a piece of (0: a whole translation). */
export const W3_PIECE_SHIFT = PIECE_SHIFT;
export const W3_PIECE_MASK = PIECE_MASK;
/** The three rights bits, shifted down, form a 3-bit index: U=1, W=2, XD=4. */
export const W3_RIGHTS_SHIFT = 8;

export const SIZE_4K = S4K;
export const SIZE_2M = S2M;
export const SIZE_1G = S1G;
export const SIZE_SHIFTS = SHIFTS;

/** Identifies an array for reports. */
export type ArrayName = 'l1d4k' | 'l1d2m' | 'l1d1g' | 'l1i4k' | 'l1i2m' | 'l1i1g' | 'stlb' | 'stlb1g' | 'pml5e' | 'pml4e' | 'pdpte' | 'pde';

/** Each array's bit in R_HELD (the second-level TLB also has the next bit, for 2 MiB entries). */
const HELD_BITS: Record<ArrayName, number> = {
  l1d4k: 1 << 0, l1d2m: 1 << 1, l1d1g: 1 << 2, l1i4k: 1 << 3, l1i2m: 1 << 4, l1i1g: 1 << 5,
  stlb: 1 << 6, stlb1g: 1 << 8, pml5e: 1 << 9, pml4e: 1 << 10, pdpte: 1 << 11, pde: 1 << 12,
};

/**
 * One set-associative array. `shift` is the page shift used for the tag (for the mixed STLB it is
 * the shift of the probe in progress, passed explicitly).
 */
export class TlbArray {
  // Fields are `declare`d and set once by the constructor, so V8 keeps their representation and
  // treats them as constants (see hw/cpu.ts).
  declare readonly name: ArrayName;
  declare readonly r: Int32Array;
  declare readonly replacement: Replacement;
  /** Size code stored in entries (for the STLB: the default for fixed-size use). */
  declare readonly sizeCode: number;
  /** Page shift of tags; for paging-structure caches, the shift of the covered region. */
  declare readonly shift: number;
  /** True for paging-structure caches (no global entries, no D/PK). */
  declare readonly psc: boolean;
  declare readonly sets: number;
  declare readonly ways: number;
  declare readonly setMask: number;
  /** Words per set (ways × ENTRY_WORDS). */
  declare readonly setWords: number;
  /** First word of entry 0 inside the CPU block. */
  declare readonly base: number;
  declare readonly stamps: number;
  declare readonly count: number;
  declare readonly lru: boolean;
  /**
   * This array's bits in the CPU block's R_HELD word, indexed by size code: set by insert(),
   * cleared by a sweep that leaves no entry of that size. While a bit is clear the array holds
   * no entry of that size and lookup() answers without searching. Every entry is created by
   * insert() and the word lives in the shared buffer, so the summary holds for every view.
   */
  declare readonly heldBits: readonly number[];
  /** The OR of heldBits. */
  declare readonly heldAll: number;
  /** heldBits[0] and heldBits[1] (= heldBits[2]) as plain fields, for the hot paths. */
  declare readonly heldSmall: number;
  declare readonly heldLarge: number;
  /** This array may hold pieces of larger pages (set by the CPU when the larger array is absent). */
  holdsPieces = false;
  /**
   * The key of the last lookup() that missed, and whether its set held an entry for the same page
   * and size under another PCID (a "clash", which insert() may have to replace). `mods` counts
   * changes to this array's entries (through this view), so insert() can tell that nothing
   * changed since that lookup and skip its search for a same-tag slot. Per view, which is enough:
   * a lookup and the fill that follows it run on one thread within one access.
   */
  private mods = 0;
  private missMods = -1;
  private missLo = 0;
  private missHi = 0;
  private missSize = -1;
  private missClash = false;
  /** The size codes holdsSize() accepts (filled on first use: they depend only on the geometry). */
  private sizeCodes: number[] | null = null;

  constructor(name: ArrayName, r: Int32Array, p: ArrayPlacement, replacement: Replacement, sizeCode: number, shift: number, psc = false) {
    this.name = name;
    this.r = r;
    this.replacement = replacement;
    this.sizeCode = sizeCode;
    this.shift = shift;
    this.psc = psc;
    this.sets = p.sets;
    this.ways = p.ways;
    this.setMask = p.sets - 1;
    this.setWords = p.ways * ENTRY_WORDS;
    this.base = p.entries;
    this.stamps = p.stamps;
    this.count = p.sets * p.ways;
    this.lru = replacement === 'lru';
    const bit = HELD_BITS[name];
    this.heldBits = name === 'stlb' ? [bit, bit << 1, bit << 1] : [bit, bit, bit];
    this.heldSmall = this.heldBits[0]!;
    this.heldLarge = this.heldBits[1]!;
    this.heldAll = this.heldSmall | this.heldLarge;
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
    let clash = false;
    if ((r[R_HELD]! & (size === 0 ? this.heldSmall : this.heldLarge)) !== 0) {
      const tagBase = vpnHi | VALID | (size << SIZE_SHIFT);
      let e = (this.base + Math.imul(vpnLo & this.setMask, this.setWords)) | 0;
      const end = (e + this.setWords) | 0;
      for (;;) {
        // The inner loop only compares word 0, so it stays small; the rest of the tag is checked
        // for the ways whose word 0 matches.
        while (e < end && r[e] !== vpnLo) e = (e + ENTRY_WORDS) | 0;
        if (e >= end) break;
        const w1 = r[e + 1]!;
        if (w1 === (tagBase | (pcid << PCID_SHIFT)) || (w1 & ~PCID_MASK) === (tagBase | GLOBAL)) return e;
        if ((w1 & ~(PCID_MASK | GLOBAL)) === tagBase) clash = true;
        e = (e + ENTRY_WORDS) | 0;
      }
    }
    this.missMods = this.mods;
    this.missLo = vpnLo;
    this.missHi = vpnHi;
    this.missSize = size;
    this.missClash = clash;
    return -1;
  }

  /** Record a use of entry `e` for LRU. */
  touch(e: number, stampClock: number): void {
    if (this.lru === true) this.r[this.stamps + ((e - this.base) >> 2)] = stampClock;
  }

  /**
   * Insert an entry, replacing an existing entry with the same tag (so a refill after a rights
   * re-walk or a D update does not leave two copies), else an invalid way, else a victim chosen
   * by the replacement policy. `stamp` is the CPU's LRU clock now. Returns the entry's first
   * word index.
   */
  insert(vpnLo: number, vpnHi: number, pcid: number, size: number, global: boolean, w2: number, w3: number, stamp: number): number {
    const r = this.r;
    const set = vpnLo & this.setMask;
    const first = (this.base + Math.imul(set, this.setWords)) | 0;
    const end = (first + this.setWords) | 0;
    const tagBase = vpnHi | VALID | (size << SIZE_SHIFT);
    const lru = this.lru;
    // Right after a lookup of this key that missed without a clash (and with no change since),
    // no entry has the same tag: only an invalid way or the policy's victim remain to be found.
    const fresh = this.missMods === this.mods && this.missClash === false && this.missLo === vpnLo && this.missHi === vpnHi && this.missSize === size;
    this.missMods = -1;
    this.mods = (this.mods + 1) & 0x3fffffff;
    let victim = -1;
    // With LRU the oldest way is found in the same pass; it is used only if every way is valid
    // and none has the same tag. Ages are compared as unsigned 32-bit numbers (wrap-safe), in
    // int32 arithmetic: x ^ 0x80000000 maps unsigned order onto signed order. Ties go to the
    // lowest way, as in chooseVictim.
    let oldest = -1;
    let oldestKey = 0;
    let si = (this.stamps + ((first - this.base) >> 2)) | 0;
    if (fresh === true && lru === true) {
      // The common fill: only the first invalid way or the oldest way is wanted.
      for (let e = first; e < end; e = (e + ENTRY_WORDS) | 0, si = (si + 1) | 0) {
        if ((r[(e + 1) | 0]! & VALID) === 0) {
          victim = e;
          break;
        }
        const key = ((stamp - r[si]!) ^ 0x80000000) | 0;
        if (key > oldestKey || oldest < 0) {
          oldestKey = key;
          oldest = e;
        }
      }
    } else {
      for (let e = first; e < end; e = (e + ENTRY_WORDS) | 0, si = (si + 1) | 0) {
        const w1 = r[(e + 1) | 0]!;
        if ((w1 & VALID) === 0) {
          if (victim < 0) victim = e;
          if (fresh === true) break; // no same-tag entry to look for
          continue;
        }
        // Same page, same size, and the same PCID (or either side global): this is the slot.
        if (fresh === false && r[e] === vpnLo && (w1 & ~(PCID_MASK | GLOBAL)) === tagBase && (global === true || (w1 & GLOBAL) !== 0 || ((w1 & PCID_MASK) >>> PCID_SHIFT) === pcid)) {
          victim = e;
          break;
        }
        if (lru === true) {
          const key = ((stamp - r[si]!) ^ 0x80000000) | 0;
          if (key > oldestKey || oldest < 0) {
            oldestKey = key;
            oldest = e;
          }
        }
      }
    }
    if (victim < 0) victim = lru === true ? oldest : this.chooseVictim(first, set, stamp);
    r[victim] = vpnLo;
    r[(victim + 1) | 0] = tagBase | (pcid << PCID_SHIFT) | (global === true ? GLOBAL : 0);
    r[(victim + 2) | 0] = w2 | 0;
    r[(victim + 3) | 0] = w3 | 0;
    r[R_HELD] = r[R_HELD]! | (size === 0 ? this.heldSmall : this.heldLarge);
    if (lru === true) r[(this.stamps + ((victim - this.base) >> 2)) | 0] = stamp | 0;
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
    this.mods = (this.mods + 1) & 0x3fffffff;
    this.r[e + 1] = 0;
  }

  /**
   * Invalidate every entry matched by `pred` (entry index, w1) and return how many valid entries
   * were removed. Used by every invalidation rule; each passes the rule as a predicate.
   */
  sweep(pred: (e: number, w1: number) => boolean): number {
    if (this.count === 0) return 0;
    const r = this.r;
    if ((r[R_HELD]! & this.heldAll) === 0) return 0;
    this.mods = (this.mods + 1) & 0x3fffffff;
    let n = 0;
    let kept = 0;
    const end = this.base + this.count * ENTRY_WORDS;
    for (let e = this.base; e < end; e += ENTRY_WORDS) {
      const w1 = r[e + 1]!;
      if (!(w1 & VALID)) continue;
      if (pred(e, w1)) {
        r[e + 1] = 0;
        n++;
      } else kept |= (w1 & SIZE_MASK) === 0 ? this.heldSmall : this.heldLarge;
    }
    this.keepHeld(kept);
    return n;
  }

  /** After a sweep: clear this array's R_HELD bits for the sizes of which no entry is left. */
  private keepHeld(kept: number): void {
    const r = this.r;
    r[R_HELD] = (r[R_HELD]! & ~this.heldAll) | kept;
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
    if ((r[R_HELD]! & this.heldAll) === 0) return 0;
    this.mods = (this.mods + 1) & 0x3fffffff;
    let n = 0;
    let kept = 0;
    const end = this.base + this.count * ENTRY_WORDS;
    for (let e = this.base; e < end; e += ENTRY_WORDS) {
      const w1 = r[e + 1]!;
      if (!(w1 & VALID)) continue;
      if (((w1 & PCID_MASK) >>> PCID_SHIFT) === pcid && (includeGlobal || !(w1 & GLOBAL))) {
        r[e + 1] = 0;
        n++;
      } else kept |= (w1 & SIZE_MASK) === 0 ? this.heldSmall : this.heldLarge;
    }
    this.keepHeld(kept);
    return n;
  }

  /** Remove all non-global entries of every PCID. */
  clearNonGlobal(): number {
    return this.sweep((_e, w1) => !(w1 & GLOBAL));
  }

  /**
   * Remove the entries that translate linear address (vaHi:vaLo) under `pcid`, and, if
   * `includeGlobal`, global entries for it whatever their PCID. Every size held in this array is
   * checked (the STLB holds two).
   */
  clearAddress(vaHi: number, vaLo: number, pcid: number, includeGlobal: boolean): number {
    if (this.count === 0) return 0;
    const heldNow = this.r[R_HELD]!;
    if ((heldNow & this.heldAll) === 0) return 0;
    this.mods = (this.mods + 1) & 0x3fffffff;
    let n = 0;
    // holdsSize() for each size code, computed once (INVLPG calls this for every array).
    let sizes = this.sizeCodes;
    if (sizes === null) sizes = this.sizeCodes = [0, 1, 2].filter((z) => this.holdsSize(z));
    for (let h = 0; h < sizes.length; h++) {
      const size = sizes[h]!;
      if ((heldNow & (size === 0 ? this.heldSmall : this.heldLarge)) === 0) continue;
      const shift = SHIFTS[size]!;
      const lo = vpnLo(vaHi, vaLo, shift);
      const hi = vpnHi(vaHi, shift);
      const r = this.r;
      let e = this.base + (lo & this.setMask) * this.ways * ENTRY_WORDS;
      for (let w = 0; w < this.ways; w++, e += ENTRY_WORDS) {
        const w1 = r[e + 1]!;
        if (!(w1 & VALID) || r[e] !== lo || (w1 & VPNHI_MASK) !== hi || ((w1 & SIZE_MASK) >>> SIZE_SHIFT) !== size) continue;
        const g = (w1 & GLOBAL) !== 0;
        if ((g && includeGlobal) || (!g && ((w1 & PCID_MASK) >>> PCID_SHIFT) === pcid)) {
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
      const piece = (r[e + 3]! & PIECE_MASK) >>> PIECE_SHIFT;
      if (!(w1 & VALID) || piece === 0) continue;
      const shift = SHIFTS[(w1 & SIZE_MASK) >>> SIZE_SHIFT]!;
      const d = SHIFTS[piece]! - shift; // 9 or 18: the piece's page number bits inside the large page
      if ((w1 & VPNHI_MASK) !== vpnHi(vaHi, shift) || r[e]! >>> d !== vpnLo(vaHi, vaLo, shift) >>> d) continue;
      const g = (w1 & GLOBAL) !== 0;
      if ((g && includeGlobal) || (!g && ((w1 & PCID_MASK) >>> PCID_SHIFT) === pcid)) {
        r[e + 1] = 0;
        n++;
      }
    }
    return n;
  }

  /** Does this array ever hold translations of size code `size`? */
  holdsSize(size: number): boolean {
    if (this.psc) return size === 0;
    if (this.name === 'stlb') return size === S4K || size === S2M;
    return this.sizeCode === size;
  }

  /** Valid entries, for inspectors. */
  *entries(): Generator<{ e: number; w0: number; w1: number; w2: number; w3: number }> {
    const r = this.r;
    const end = this.base + this.count * ENTRY_WORDS;
    for (let e = this.base; e < end; e += ENTRY_WORDS) {
      const w1 = r[e + 1]!;
      if (w1 & VALID) yield { e, w0: r[e]!, w1, w2: r[e + 2]!, w3: r[e + 3]! };
    }
  }

  validCount(): number {
    let n = 0;
    const end = this.base + this.count * ENTRY_WORDS;
    for (let e = this.base; e < end; e += ENTRY_WORDS) if (this.r[e + 1]! & VALID) n++;
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
