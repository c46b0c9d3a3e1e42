/**
 * hw/pte.ts — the IA-32e paging-structure entry codec (Intel SDM Vol. 3A §4.5, tables 4-14 to 4-20).
 *
 * Every entry is a 64-bit little-endian word. mmulab stores it as two 32-bit halves, the low half
 * at the lower address, and this file names every bit by its SDM name. Hot paths work on the two
 * halves as plain numbers (`lo`, `hi`); the bigint helpers at the end are for tools and tests.
 *
 * Bit layout, in words (bit 0 is the least significant; "leaf" is the entry that maps the page):
 *
 *   bit 0      P     Present. With P=0 the processor ignores every other bit of the entry.
 *   bit 1      R/W   Read/write. 0 forbids writes through this entry (always for user-mode
 *                    accesses, for supervisor accesses only when CR0.WP=1). ANDed over levels.
 *   bit 2      U/S   User/supervisor. An address is a user-mode address only when U/S=1 at every
 *                    level. ANDed over levels.
 *   bit 3      PWT   Page-level write-through; in a non-leaf entry it applies to the next table.
 *   bit 4      PCD   Page-level cache disable; same rule as PWT.
 *   bit 5      A     Accessed. Set by the processor on every entry it uses, at every level.
 *   bit 6      D     Dirty. Only in a leaf: set by the processor on the first permitted write.
 *                    Ignored (and never touched) in non-leaf entries, where Linux pre-sets it.
 *   bit 7      PS    Page size, in a PDPTE (1 GiB leaf) or a PDE (2 MiB leaf). Reserved (must be
 *                    0) in a PML5E/PML4E, and in a PDPTE when the CPU has no 1 GiB pages.
 *              PAT   In a PTE, bit 7 is the PAT bit instead.
 *   bit 8      G     Global, only in a leaf and only when CR4.PGE=1: the translation survives
 *                    MOV to CR3 and is shared by every PCID. Ignored in non-leaf entries.
 *   bits 11:9        Ignored by the hardware; Linux uses them (see below).
 *   bit 12     PAT   In a 2 MiB or 1 GiB leaf, the PAT bit sits at bit 12.
 *   bits M-1:12      Physical address of the next table or of a 4 KiB page (M = MAXPHYADDR).
 *   bits M-1:21      Physical address of a 2 MiB page; bits 20:13 of such a leaf are reserved.
 *   bits M-1:30      Physical address of a 1 GiB page; bits 29:13 of such a leaf are reserved.
 *   bits 51:M        Reserved: a present entry with any of them set is a reserved-bit fault.
 *   bits 58:52       Ignored by the hardware (Linux uses 57 and 58).
 *   bits 62:59 PK    Protection key of a leaf when CR4.PKE=1 (ignored in non-leaf entries).
 *   bit 63     XD    Execute-disable when EFER.NXE=1 (ORed over levels); reserved when NXE=0.
 *
 * Linux's software bits (arch/x86/include/asm/pgtable_types.h):
 *   bit 9  _PAGE_BIT_SOFTW1 = _PAGE_SPECIAL  (pte_special: no struct page refcounting)
 *   bit 10 _PAGE_BIT_SOFTW2 = _PAGE_UFFD_WP  (userfaultfd write-protect)
 *   bit 11 _PAGE_BIT_SOFTW3 = _PAGE_SOFT_DIRTY
 *   bit 57 _PAGE_BIT_SOFTW4 (held _PAGE_DEVMAP until the 2025 devmap removal)
 *   bit 58 _PAGE_BIT_SOFTW5 = _PAGE_SAVED_DIRTY
 *
 * Deviation: the AMD rule that also reserves bit 8 of non-leaf PML4Es/PDPTEs is not modelled;
 * mmulab's CPU is an Intel part.
 */

/** Paging-structure levels, numbered as the SDM counts them from the bottom. */
export const LEVEL_PTE = 1;
export const LEVEL_PDE = 2;
export const LEVEL_PDPTE = 3;
export const LEVEL_PML4E = 4;
export const LEVEL_PML5E = 5;

export const LEVEL_NAMES = ['', 'PTE', 'PDE', 'PDPTE', 'PML4E', 'PML5E'] as const;

// ---- Bits of the low half (bits 31:0) --------------------------------------------------------
export const PTE_P = 1 << 0;
export const PTE_RW = 1 << 1;
export const PTE_US = 1 << 2;
export const PTE_PWT = 1 << 3;
export const PTE_PCD = 1 << 4;
export const PTE_A = 1 << 5;
export const PTE_D = 1 << 6;
export const PTE_PS = 1 << 7;
export const PTE_PAT = 1 << 7;
export const PTE_G = 1 << 8;
export const PTE_PAT_LARGE = 1 << 12;

/** Linux software bits in the low half. */
export const _PAGE_BIT_SOFTW1 = 9;
export const _PAGE_BIT_SOFTW2 = 10;
export const _PAGE_BIT_SOFTW3 = 11;
export const _PAGE_SPECIAL = 1 << _PAGE_BIT_SOFTW1;
export const _PAGE_UFFD_WP = 1 << _PAGE_BIT_SOFTW2;
export const _PAGE_SOFT_DIRTY = 1 << _PAGE_BIT_SOFTW3;

// ---- Bits of the high half (bits 63:32), as masks on the high word ---------------------------
/** Bit 63, XD. */
export const PTE_HI_XD = 1 << 31;
/** Bits 62:59, the protection key, start at bit 27 of the high word. */
export const PTE_HI_PK_SHIFT = 27;
export const PTE_HI_PK_MASK = 0xf << PTE_HI_PK_SHIFT;
/** Linux software bits 57 and 58 in the high word. */
export const _PAGE_BIT_SOFTW4 = 57;
export const _PAGE_BIT_SOFTW5 = 58;
export const PTE_HI_SOFTW4 = 1 << (_PAGE_BIT_SOFTW4 - 32);
export const PTE_HI_SOFTW5 = 1 << (_PAGE_BIT_SOFTW5 - 32);
export const _PAGE_SAVED_DIRTY_HI = PTE_HI_SOFTW5;

// ---- Whole-word (bigint) names, for tools and tests -----------------------------------------
export const PTE64_P = 1n << 0n;
export const PTE64_RW = 1n << 1n;
export const PTE64_US = 1n << 2n;
export const PTE64_PWT = 1n << 3n;
export const PTE64_PCD = 1n << 4n;
export const PTE64_A = 1n << 5n;
export const PTE64_D = 1n << 6n;
export const PTE64_PS = 1n << 7n;
export const PTE64_PAT = 1n << 7n;
export const PTE64_G = 1n << 8n;
export const PTE64_SPECIAL = 1n << 9n;
export const PTE64_UFFD_WP = 1n << 10n;
export const PTE64_SOFT_DIRTY = 1n << 11n;
export const PTE64_PAT_LARGE = 1n << 12n;
export const PTE64_SOFTW4 = 1n << 57n;
export const PTE64_SAVED_DIRTY = 1n << 58n;
export const PTE64_PK_SHIFT = 59n;
export const PTE64_XD = 1n << 63n;

/** Low-half masks of the page-frame field below bit 32, per mapping size. */
export const ADDR_LO_4K = 0xfffff000 | 0;
export const ADDR_LO_2M = 0xffe00000 | 0;
export const ADDR_LO_1G = 0xc0000000 | 0;

/** Low-half reserved bits of large leaves: the alignment field between PAT (bit 12) and the address. */
export const RSVD_LO_2M = 0x001fe000; // bits 20:13
export const RSVD_LO_1G = 0x3fffe000; // bits 29:13

export const PAGE_SHIFT_4K = 12;
export const PAGE_SHIFT_2M = 21;
export const PAGE_SHIFT_1G = 30;
export const PAGE_SIZE_4K = 1 << 12;
export const PAGE_SIZE_2M = 1 << 21;
export const PAGE_SIZE_1G = 1 << 30;

/** The processor features that change which bits are reserved. */
export interface PagingFeatures {
  /** MAXPHYADDR, CPUID.80000008H:EAX[7:0]; 36 to 52. */
  maxPhyAddr: number;
  /** EFER.NXE: when clear, bit 63 is reserved at every level. */
  nxe: boolean;
  /** CPUID.80000001H:EDX.Page1GB: when clear, PS=1 in a PDPTE is a reserved-bit violation. */
  gbPages: boolean;
}

/** High-word mask of the address bits M-1:32. */
export function addrHiMask(maxPhyAddr: number): number {
  return maxPhyAddr >= 52 ? 0xfffff : (1 << (maxPhyAddr - 32)) - 1;
}

/** High-word mask of the reserved address bits 51:M. */
export function rsvdHiAddrMask(maxPhyAddr: number): number {
  return 0xfffff & ~addrHiMask(maxPhyAddr);
}

/**
 * Reserved-bit masks for one kind of entry, as [low-word mask, high-word mask].
 * `leaf` matters only for PDPTEs and PDEs (PS=1); PML5E/PML4E are never leaves and PTEs always are.
 */
export function reservedMasks(level: number, leaf: boolean, f: PagingFeatures): [number, number] {
  let lo = 0;
  let hi = rsvdHiAddrMask(f.maxPhyAddr);
  if (!f.nxe) hi |= PTE_HI_XD;
  switch (level) {
    case LEVEL_PML5E:
    case LEVEL_PML4E:
      lo |= PTE_PS; // PS must be 0 above the PDPTE
      break;
    case LEVEL_PDPTE:
      if (leaf) lo |= f.gbPages ? RSVD_LO_1G : PTE_PS;
      break;
    case LEVEL_PDE:
      if (leaf) lo |= RSVD_LO_2M;
      break;
    case LEVEL_PTE:
      break;
    default:
      throw new RangeError(`paging level ${level} does not exist (1 = PTE … 5 = PML5E)`);
  }
  return [lo | 0, hi | 0];
}

/** Page shift of a leaf at `level` (12, 21 or 30). */
export function leafShift(level: number): number {
  return level === LEVEL_PTE ? PAGE_SHIFT_4K : level === LEVEL_PDE ? PAGE_SHIFT_2M : PAGE_SHIFT_1G;
}

/**
 * The physical address held by an entry, as a number. For a leaf at `level` the low bits below
 * the page size are cleared; for a non-leaf entry the result is the next table's base.
 */
export function entryAddress(lo: number, hi: number, level: number, leaf: boolean, maxPhyAddr: number): number {
  const mask = !leaf || level === LEVEL_PTE ? ADDR_LO_4K : level === LEVEL_PDE ? ADDR_LO_2M : ADDR_LO_1G;
  return (hi & addrHiMask(maxPhyAddr)) * 0x100000000 + ((lo & mask) >>> 0);
}

/** A decoded entry, every field named after the SDM. */
export interface DecodedEntry {
  level: number;
  levelName: string;
  raw: bigint;
  P: boolean;
  RW: boolean;
  US: boolean;
  PWT: boolean;
  PCD: boolean;
  A: boolean;
  /** Meaningful in leaves only. */
  D: boolean;
  /** PS for PDPTE/PDE; always false for PTEs (whose bit 7 is PAT). */
  PS: boolean;
  leaf: boolean;
  PAT: boolean;
  G: boolean;
  XD: boolean;
  /** Protection key (leaves only). */
  PK: number;
  /** Physical address of the next table or of the page. */
  address: number;
  /** Page size in bytes if leaf, else 0. */
  pageSize: number;
  /** Linux software bits. */
  special: boolean;
  uffdWp: boolean;
  softDirty: boolean;
  softw4: boolean;
  savedDirty: boolean;
}

/** Split a 64-bit bigint into [lo, hi] 32-bit signed halves. */
export function splitWord(v: bigint): [number, number] {
  const u = BigInt.asUintN(64, v);
  return [Number(u & 0xffffffffn) | 0, Number(u >> 32n) | 0];
}

/** Join two 32-bit halves into an unsigned 64-bit bigint. */
export function joinWord(lo: number, hi: number): bigint {
  return (BigInt(hi >>> 0) << 32n) | BigInt(lo >>> 0);
}

export function decodeEntry(raw: bigint, level: number, maxPhyAddr = 46): DecodedEntry {
  const [lo, hi] = splitWord(raw);
  const psCapable = level === LEVEL_PDE || level === LEVEL_PDPTE;
  const leaf = level === LEVEL_PTE || (psCapable && (lo & PTE_PS) !== 0);
  const large = leaf && level !== LEVEL_PTE;
  return {
    level,
    levelName: LEVEL_NAMES[level] ?? `L${level}`,
    raw: BigInt.asUintN(64, raw),
    P: (lo & PTE_P) !== 0,
    RW: (lo & PTE_RW) !== 0,
    US: (lo & PTE_US) !== 0,
    PWT: (lo & PTE_PWT) !== 0,
    PCD: (lo & PTE_PCD) !== 0,
    A: (lo & PTE_A) !== 0,
    D: leaf && (lo & PTE_D) !== 0,
    PS: psCapable && (lo & PTE_PS) !== 0,
    leaf,
    PAT: leaf && (large ? (lo & PTE_PAT_LARGE) !== 0 : (lo & PTE_PAT) !== 0),
    G: leaf && (lo & PTE_G) !== 0,
    XD: (hi & PTE_HI_XD) !== 0,
    PK: leaf ? (hi >>> PTE_HI_PK_SHIFT) & 0xf : 0,
    address: entryAddress(lo, hi, level, leaf, maxPhyAddr),
    pageSize: leaf ? 2 ** leafShift(level) : 0,
    special: (lo & _PAGE_SPECIAL) !== 0,
    uffdWp: (lo & _PAGE_UFFD_WP) !== 0,
    softDirty: (lo & _PAGE_SOFT_DIRTY) !== 0,
    softw4: (hi & PTE_HI_SOFTW4) !== 0,
    savedDirty: (hi & PTE_HI_SOFTW5) !== 0,
  };
}

/** Fields accepted by `encodeEntry`; omitted flags are 0. */
export interface EntryFields {
  address: number | bigint;
  P?: boolean;
  RW?: boolean;
  US?: boolean;
  PWT?: boolean;
  PCD?: boolean;
  A?: boolean;
  D?: boolean;
  /** Set PS (PDPTE/PDE leaves). */
  PS?: boolean;
  /** PAT: placed at bit 7 for a PTE and at bit 12 for a large leaf; other entries have no PAT bit. */
  PAT?: boolean;
  G?: boolean;
  XD?: boolean;
  PK?: number;
  special?: boolean;
  uffdWp?: boolean;
  softDirty?: boolean;
  savedDirty?: boolean;
}

/**
 * Build an entry for `level`. The address must be aligned to the size it maps and fit below
 * bit 52; the entry is not checked against MAXPHYADDR (callers may want reserved-bit entries).
 */
export function encodeEntry(level: number, f: EntryFields): bigint {
  if (level < LEVEL_PTE || level > LEVEL_PML5E) throw new RangeError(`paging level ${level} does not exist`);
  const addr = BigInt(f.address);
  const large = !!f.PS && (level === LEVEL_PDE || level === LEVEL_PDPTE);
  const align = large ? (level === LEVEL_PDE ? 1n << 21n : 1n << 30n) : 1n << 12n;
  if (addr < 0n || addr >= 1n << 52n || addr % align !== 0n) {
    throw new RangeError(`entry address 0x${addr.toString(16)} is not a ${align >> 10n} KiB-aligned address below 2^52`);
  }
  const pk = f.PK ?? 0;
  if (!Number.isInteger(pk) || pk < 0 || pk > 15) throw new RangeError(`protection key ${pk} is not 0..15`);
  let v = addr;
  if (f.P) v |= PTE64_P;
  if (f.RW) v |= PTE64_RW;
  if (f.US) v |= PTE64_US;
  if (f.PWT) v |= PTE64_PWT;
  if (f.PCD) v |= PTE64_PCD;
  if (f.A) v |= PTE64_A;
  if (f.D) v |= PTE64_D;
  if (f.PS) v |= PTE64_PS;
  if (f.PAT) {
    // Bit 12 of a non-leaf entry is an address bit: PAT there would move the next table.
    if (level !== LEVEL_PTE && !large) throw new RangeError(`a ${LEVEL_NAMES[level]} without PS=1 maps no page and has no PAT bit`);
    v |= level === LEVEL_PTE ? PTE64_PAT : PTE64_PAT_LARGE;
  }
  if (f.G) v |= PTE64_G;
  if (f.XD) v |= PTE64_XD;
  if (f.special) v |= PTE64_SPECIAL;
  if (f.uffdWp) v |= PTE64_UFFD_WP;
  if (f.softDirty) v |= PTE64_SOFT_DIRTY;
  if (f.savedDirty) v |= PTE64_SAVED_DIRTY;
  v |= BigInt(pk) << PTE64_PK_SHIFT;
  return v;
}

/** Index of the entry for a linear address at `level` (9 bits per level above the 12-bit offset). */
export function levelIndex(va: bigint, level: number): number {
  return Number((BigInt.asUintN(64, va) >> BigInt(12 + 9 * (level - 1))) & 0x1ffn);
}
