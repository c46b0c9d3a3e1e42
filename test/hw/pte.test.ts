/**
 * hw/pte.ts — the IA-32e paging-structure entry codec. Every named bit is checked against the bit
 * number of the SDM table in the file header (Intel SDM Vol. 3A tables 4-14 to 4-20); decodeEntry is
 * checked bit by bit on random raw values for every level; encodeEntry/decodeEntry round-trip for
 * every level; reservedMasks per level for MAXPHYADDR 36/46/52, NXE on/off and 1 GiB pages on/off
 * against masks written out from the SDM; the small helpers and the encoder's errors.
 */

import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import {
  ADDR_LO_1G, ADDR_LO_2M, ADDR_LO_4K, LEVEL_NAMES, LEVEL_PDE, LEVEL_PDPTE, LEVEL_PML4E, LEVEL_PML5E, LEVEL_PTE, PAGE_SHIFT_1G, PAGE_SHIFT_2M, PAGE_SHIFT_4K, PAGE_SIZE_1G,
  PAGE_SIZE_2M, PAGE_SIZE_4K, PTE64_A, PTE64_D, PTE64_G, PTE64_P, PTE64_PAT, PTE64_PAT_LARGE, PTE64_PCD, PTE64_PK_SHIFT, PTE64_PS, PTE64_PWT, PTE64_RW, PTE64_SAVED_DIRTY,
  PTE64_SOFTW4, PTE64_SOFT_DIRTY, PTE64_SPECIAL, PTE64_UFFD_WP, PTE64_US, PTE64_XD, PTE_A, PTE_D, PTE_G, PTE_HI_PK_MASK, PTE_HI_PK_SHIFT, PTE_HI_SOFTW4, PTE_HI_SOFTW5,
  PTE_HI_XD, PTE_P, PTE_PAT, PTE_PAT_LARGE, PTE_PCD, PTE_PS, PTE_PWT, PTE_RW, PTE_US, RSVD_LO_1G, RSVD_LO_2M, USER_RW_A, _PAGE_BIT_SOFTW1, _PAGE_BIT_SOFTW2, _PAGE_BIT_SOFTW3,
  _PAGE_BIT_SOFTW4, _PAGE_BIT_SOFTW5, _PAGE_SAVED_DIRTY_HI, _PAGE_SOFT_DIRTY, _PAGE_SPECIAL, _PAGE_UFFD_WP, addrHiMask, decodeEntry, encodeEntry, entryAddress, joinWord,
  leafShift, levelIndex, reservedMasks, rsvdHiAddrMask, splitWord, type EntryFields,
} from '../../hw/index.ts';

const bit = (n: number) => 1n << BigInt(n);
/** Bits hi..lo set, as a bigint. */
const bits = (hi: number, lo: number) => ((1n << BigInt(hi - lo + 1)) - 1n) << BigInt(lo);
const isSet = (v: bigint, n: number) => ((v >> BigInt(n)) & 1n) === 1n;
const LEVELS = [LEVEL_PTE, LEVEL_PDE, LEVEL_PDPTE, LEVEL_PML4E, LEVEL_PML5E];

describe('bit positions (SDM tables 4-14 to 4-20, as listed in the hw/pte.ts header)', () => {
  it.each([
    ['P', PTE64_P, PTE_P, 0],
    ['R/W', PTE64_RW, PTE_RW, 1],
    ['U/S', PTE64_US, PTE_US, 2],
    ['PWT', PTE64_PWT, PTE_PWT, 3],
    ['PCD', PTE64_PCD, PTE_PCD, 4],
    ['A', PTE64_A, PTE_A, 5],
    ['D', PTE64_D, PTE_D, 6],
    ['PS', PTE64_PS, PTE_PS, 7],
    ['PAT (4 KiB)', PTE64_PAT, PTE_PAT, 7],
    ['G', PTE64_G, PTE_G, 8],
    ['SOFTW1 / _PAGE_SPECIAL', PTE64_SPECIAL, _PAGE_SPECIAL, 9],
    ['SOFTW2 / _PAGE_UFFD_WP', PTE64_UFFD_WP, _PAGE_UFFD_WP, 10],
    ['SOFTW3 / _PAGE_SOFT_DIRTY', PTE64_SOFT_DIRTY, _PAGE_SOFT_DIRTY, 11],
    ['PAT (large pages)', PTE64_PAT_LARGE, PTE_PAT_LARGE, 12],
  ] as const)('%s is bit %i of the low half', (_name, b64, b32, n) => {
    expect(b64).toBe(bit(n));
    expect(b32).toBe(1 << n);
  });

  it('the high-half bits: XD is bit 63, PK bits 62:59, SOFTW4 bit 57, SOFTW5 (saved dirty) bit 58', () => {
    expect(PTE64_XD).toBe(bit(63));
    expect(PTE_HI_XD >>> 0).toBe(2 ** 31);
    expect(PTE64_PK_SHIFT).toBe(59n);
    expect(PTE_HI_PK_SHIFT + 32).toBe(59);
    expect(BigInt(PTE_HI_PK_MASK >>> 0) << 32n).toBe(bits(62, 59));
    expect(PTE64_SOFTW4).toBe(bit(57));
    expect(PTE64_SAVED_DIRTY).toBe(bit(58));
    expect(BigInt(PTE_HI_SOFTW4) << 32n).toBe(bit(57));
    expect(BigInt(PTE_HI_SOFTW5) << 32n).toBe(bit(58));
    expect(_PAGE_SAVED_DIRTY_HI).toBe(PTE_HI_SOFTW5);
    expect([_PAGE_BIT_SOFTW1, _PAGE_BIT_SOFTW2, _PAGE_BIT_SOFTW3, _PAGE_BIT_SOFTW4, _PAGE_BIT_SOFTW5]).toEqual([9, 10, 11, 57, 58]);
  });

  it('address and reserved-field masks', () => {
    expect(BigInt(ADDR_LO_4K >>> 0)).toBe(bits(31, 12));
    expect(BigInt(ADDR_LO_2M >>> 0)).toBe(bits(31, 21));
    expect(BigInt(ADDR_LO_1G >>> 0)).toBe(bits(31, 30));
    expect(BigInt(RSVD_LO_2M)).toBe(bits(20, 13));
    expect(BigInt(RSVD_LO_1G)).toBe(bits(29, 13));
    expect([PAGE_SHIFT_4K, PAGE_SHIFT_2M, PAGE_SHIFT_1G]).toEqual([12, 21, 30]);
    expect([PAGE_SIZE_4K, PAGE_SIZE_2M, PAGE_SIZE_1G]).toEqual([4096, 2 ** 21, 2 ** 30]);
    expect(USER_RW_A).toBe(bit(0) | bit(1) | bit(2) | bit(5));
    expect(LEVEL_NAMES.slice(1)).toEqual(['PTE', 'PDE', 'PDPTE', 'PML4E', 'PML5E']);
  });
});

describe('decodeEntry, bit by bit on random entries of every level', () => {
  it('every field is the SDM bit for that level', () => {
    fc.assert(
      fc.property(fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }), fc.constantFrom(...LEVELS), fc.constantFrom(36, 46, 52), (raw, level, M) => {
        const d = decodeEntry(raw, level, M);
        const psCapable = level === LEVEL_PDE || level === LEVEL_PDPTE;
        const leaf = level === LEVEL_PTE || (psCapable && isSet(raw, 7));
        const large = leaf && level !== LEVEL_PTE;
        const pageBits = !leaf ? 12 : level === LEVEL_PTE ? 12 : level === LEVEL_PDE ? 21 : 30;
        expect(d).toEqual({
          level,
          levelName: LEVEL_NAMES[level],
          raw,
          P: isSet(raw, 0),
          RW: isSet(raw, 1),
          US: isSet(raw, 2),
          PWT: isSet(raw, 3),
          PCD: isSet(raw, 4),
          A: isSet(raw, 5),
          D: leaf && isSet(raw, 6),
          PS: psCapable && isSet(raw, 7),
          leaf,
          PAT: leaf && isSet(raw, large ? 12 : 7),
          G: leaf && isSet(raw, 8),
          XD: isSet(raw, 63),
          PK: leaf ? Number((raw >> 59n) & 0xfn) : 0,
          address: Number(raw & bits(M - 1, pageBits)),
          pageSize: leaf ? 2 ** pageBits : 0,
          special: isSet(raw, 9),
          uffdWp: isSet(raw, 10),
          softDirty: isSet(raw, 11),
          softw4: isSet(raw, 57),
          savedDirty: isSet(raw, 58),
        });
      }),
      { seed: 4242, numRuns: 2000 },
    );
  });

  it('accepts a negative bigint as its two’s complement', () => {
    expect(decodeEntry(-1n, LEVEL_PTE).raw).toBe((1n << 64n) - 1n);
    expect(decodeEntry(-1n, LEVEL_PTE).XD).toBe(true);
  });
});

describe('encodeEntry / decodeEntry round trip', () => {
  const arbFields = (level: number) =>
    fc.record({
      P: fc.boolean(), RW: fc.boolean(), US: fc.boolean(), PWT: fc.boolean(), PCD: fc.boolean(), A: fc.boolean(), D: fc.boolean(), PS: fc.boolean(), PAT: fc.boolean(), G: fc.boolean(),
      XD: fc.boolean(), PK: fc.nat(15), special: fc.boolean(), uffdWp: fc.boolean(), softDirty: fc.boolean(), savedDirty: fc.boolean(), frame: fc.bigInt({ min: 0n, max: (1n << 40n) - 1n }),
    }).map((f) => {
      const large = f.PS && (level === LEVEL_PDE || level === LEVEL_PDPTE);
      const shift = large ? (level === LEVEL_PDE ? 21n : 30n) : 12n;
      const address = (f.frame << shift) & ((1n << 52n) - 1n);
      const { frame: _frame, ...rest } = f;
      // In a PTE bit 7 is PAT, so PS and PAT are the same bit there: leave PS to PAT. Only leaves have PAT.
      const leaf = level === LEVEL_PTE || large;
      return { ...rest, PS: level === LEVEL_PTE ? false : f.PS, PAT: leaf && f.PAT, address } as EntryFields & { address: bigint };
    });

  it.each(LEVELS)('level %i: every field comes back; the raw value has exactly the bits asked for', (level) => {
    fc.assert(
      fc.property(arbFields(level), (f) => {
        const raw = encodeEntry(level, f);
        const d = decodeEntry(raw, level, 52);
        const psCapable = level === LEVEL_PDE || level === LEVEL_PDPTE;
        const leaf = level === LEVEL_PTE || (psCapable && !!f.PS);
        const large = leaf && level !== LEVEL_PTE;
        expect(d.address).toBe(Number(f.address));
        expect([d.P, d.RW, d.US, d.PWT, d.PCD, d.A, d.XD]).toEqual([f.P, f.RW, f.US, f.PWT, f.PCD, f.A, f.XD]);
        expect([d.special, d.uffdWp, d.softDirty, d.savedDirty]).toEqual([f.special, f.uffdWp, f.softDirty, f.savedDirty]);
        expect(d.leaf).toBe(leaf);
        if (leaf) expect([d.D, d.G, d.PAT, d.PK]).toEqual([f.D, f.G, f.PAT, f.PK]);
        // The raw value, rebuilt from the SDM positions.
        let want = BigInt(f.address);
        const flag = (on: boolean | undefined, n: number) => (on ? bit(n) : 0n);
        want |= flag(f.P, 0) | flag(f.RW, 1) | flag(f.US, 2) | flag(f.PWT, 3) | flag(f.PCD, 4) | flag(f.A, 5) | flag(f.D, 6) | flag(f.PS, 7) | flag(f.G, 8);
        want |= flag(f.PAT, level === LEVEL_PTE ? 7 : 12) | flag(f.special, 9) | flag(f.uffdWp, 10) | flag(f.softDirty, 11) | flag(f.savedDirty, 58) | flag(f.XD, 63);
        want |= BigInt(f.PK ?? 0) << 59n;
        expect(raw).toBe(want);
        expect(d.pageSize).toBe(!leaf ? 0 : !large ? 4096 : level === LEVEL_PDE ? 2 ** 21 : 2 ** 30);
      }),
      { seed: level, numRuns: 300 },
    );
  });

  it.each([
    ['a 2 MiB leaf address not 2 MiB aligned', () => encodeEntry(LEVEL_PDE, { address: 0x1000, PS: true }), /0x1000 is not a 2048 KiB-aligned address below 2\^52/],
    ['a 1 GiB leaf address not 1 GiB aligned', () => encodeEntry(LEVEL_PDPTE, { address: 0x200000, PS: true }), /not a 1048576 KiB-aligned/],
    ['a table address not 4 KiB aligned', () => encodeEntry(LEVEL_PML4E, { address: 0x800 }), /0x800 is not a 4 KiB-aligned/],
    ['an address at 2^52', () => encodeEntry(LEVEL_PTE, { address: 1n << 52n }), /below 2\^52/],
    ['a negative address', () => encodeEntry(LEVEL_PTE, { address: -4096 }), /below 2\^52/],
    ['protection key 16', () => encodeEntry(LEVEL_PTE, { address: 0, PK: 16 }), /protection key 16 is not 0..15/],
    ['protection key 1.5', () => encodeEntry(LEVEL_PTE, { address: 0, PK: 1.5 }), /protection key 1.5/],
    ['PAT in a PML4E (bit 12 would be an address bit)', () => encodeEntry(LEVEL_PML4E, { address: 0x5000, PAT: true }), /a PML4E without PS=1 maps no page and has no PAT bit/],
    ['PAT in a PDE that points to a page table', () => encodeEntry(LEVEL_PDE, { address: 0x5000, PAT: true }), /a PDE without PS=1/],
    ['level 0', () => encodeEntry(0, { address: 0 }), /paging level 0 does not exist/],
    ['level 6', () => encodeEntry(6, { address: 0 }), /paging level 6 does not exist/],
  ] as const)('encodeEntry rejects %s with a RangeError', (_n, fn, msg) => {
    expect(fn).toThrow(RangeError);
    expect(fn).toThrow(msg);
  });

  it('PS is only a page-size bit in PDEs and PDPTEs (a 4 KiB address is fine for a PTE or a PML4E with PS)', () => {
    expect(encodeEntry(LEVEL_PTE, { address: 0x1000, PS: true })).toBe(0x1000n | PTE64_PS);
    expect(encodeEntry(LEVEL_PML4E, { address: 0x1000, PS: true })).toBe(0x1000n | PTE64_PS);
  });
});

describe('reservedMasks (SDM §4.5: bits 51:M, XD without NXE, PS above the PDPTE, the large-page alignment fields)', () => {
  /** The high-word mask of bits 51:M. */
  const HI_ADDR: Record<number, number> = { 36: 0x000ffff0, 46: 0x000fc000, 52: 0 };
  const cases: { level: number; leaf: boolean; M: number; nxe: boolean; gbPages: boolean; lo: number; hi: number }[] = [];
  for (const M of [36, 46, 52]) {
    for (const nxe of [true, false]) {
      for (const gbPages of [true, false]) {
        const hi = (HI_ADDR[M]! | (nxe ? 0 : 0x80000000)) | 0;
        cases.push(
          { level: LEVEL_PML5E, leaf: false, M, nxe, gbPages, lo: 0x80, hi },
          { level: LEVEL_PML4E, leaf: false, M, nxe, gbPages, lo: 0x80, hi },
          { level: LEVEL_PDPTE, leaf: false, M, nxe, gbPages, lo: 0, hi },
          { level: LEVEL_PDPTE, leaf: true, M, nxe, gbPages, lo: gbPages ? 0x3fffe000 : 0x80, hi },
          { level: LEVEL_PDE, leaf: false, M, nxe, gbPages, lo: 0, hi },
          { level: LEVEL_PDE, leaf: true, M, nxe, gbPages, lo: 0x001fe000, hi },
          { level: LEVEL_PTE, leaf: true, M, nxe, gbPages, lo: 0, hi },
          { level: LEVEL_PTE, leaf: false, M, nxe, gbPages, lo: 0, hi },
        );
      }
    }
  }

  it.each(cases)('level $level leaf=$leaf, MAXPHYADDR $M, NXE=$nxe, 1 GiB pages=$gbPages', ({ level, leaf, M, nxe, gbPages, lo, hi }) => {
    expect(reservedMasks(level, leaf, { maxPhyAddr: M, nxe, gbPages })).toEqual([lo, hi]);
  });

  it('an unknown level is a RangeError', () => {
    expect(() => reservedMasks(0, false, { maxPhyAddr: 46, nxe: true, gbPages: true })).toThrow(/paging level 0 does not exist/);
    expect(() => reservedMasks(6, true, { maxPhyAddr: 46, nxe: true, gbPages: true })).toThrow(RangeError);
  });

  it('addrHiMask and rsvdHiAddrMask split bits 51:32 at MAXPHYADDR for every M from 36 to 52', () => {
    for (let M = 36; M <= 52; M++) {
      const addr = Number((bits(M - 1, 32) >> 32n) & 0xfffffn);
      expect(addrHiMask(M), `M=${M}`).toBe(addr);
      expect(rsvdHiAddrMask(M)).toBe(0xfffff & ~addr);
      expect(BigInt(rsvdHiAddrMask(M)) << 32n).toBe(M === 52 ? 0n : bits(51, M));
    }
  });
});

describe('helpers', () => {
  it('splitWord / joinWord round-trip, with signed halves', () => {
    expect(splitWord(0x8000000180000002n)).toEqual([0x80000002 | 0, 0x80000001 | 0]);
    expect(splitWord(-1n)).toEqual([-1, -1]);
    fc.assert(fc.property(fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }), (v) => joinWord(...splitWord(v)) === v), { seed: 7, numRuns: 500 });
  });

  it('levelIndex takes 9 bits per level above the 12-bit offset', () => {
    const va = (0x1abn << 39n) | (0x0cdn << 30n) | (0x1efn << 21n) | (0x123n << 12n) | 0xfffn;
    expect([5, 4, 3, 2, 1].map((l) => levelIndex(va, l))).toEqual([0, 0x1ab, 0x0cd, 0x1ef, 0x123]);
    expect(levelIndex(0xffff800000000000n, 4)).toBe(256);
    expect(levelIndex(-1n, 5)).toBe(511);
  });

  it('leafShift and entryAddress', () => {
    expect([leafShift(LEVEL_PTE), leafShift(LEVEL_PDE), leafShift(LEVEL_PDPTE)]).toEqual([12, 21, 30]);
    const [lo, hi] = splitWord(0x800f_ffff_ffff_ffffn);
    expect(entryAddress(lo, hi, LEVEL_PTE, true, 46)).toBe(Number(bits(45, 12)));
    expect(entryAddress(lo, hi, LEVEL_PDE, true, 46)).toBe(Number(bits(45, 21)));
    expect(entryAddress(lo, hi, LEVEL_PDPTE, true, 36)).toBe(Number(bits(35, 30)));
    expect(entryAddress(lo, hi, LEVEL_PDE, false, 52)).toBe(Number(bits(51, 12)));
  });
});
