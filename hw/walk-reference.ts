/**
 * hw/walk-reference.ts — the reference translator: a deliberately plain reading of Intel SDM
 * Vol. 3A §4.5 (IA-32e paging), §4.6 (access rights), §4.6.2 (protection keys), §4.7 (#PF error
 * code) and §4.8 (A/D flags), written with 64-bit bigints and no caching, shared tables or
 * shortcuts. It exists to be obviously right, not fast: tests run it side by side with the fast
 * walker (hw/walk.ts) and the TLB, and the stale-entry inspector uses it (without setting A/D) to
 * decide what the page tables say now.
 *
 * It shares no code with the fast path beyond the memory it reads.
 */

export interface RefMemory {
  read64(pa: bigint): bigint;
  write64(pa: bigint, v: bigint): void;
  /** Installed bytes: an entry beyond this cannot be read (the fast walker raises #MC). */
  size: bigint;
}

export interface RefCpuState {
  cr0: bigint;
  cr3: bigint;
  cr4: bigint;
  efer: bigint;
  pkru: number;
  cpl: 0 | 3;
  ac: boolean;
}

export interface RefFeatures {
  maxPhyAddr: number;
  gbPages: boolean;
}

export interface RefAccess {
  va: bigint;
  kind: 'read' | 'write' | 'fetch';
  implicit?: boolean;
  stack?: boolean;
}

export type RefResult =
  | { ok: true; pa: bigint; pageSize: bigint; user: boolean; writable: boolean; executeDisable: boolean; pkey: number; dirty: boolean; global: boolean; frame: bigint }
  | { ok: false; vector: number; errorCode: number; cr2: bigint | null };

const bit = (v: bigint, n: number): boolean => ((v >> BigInt(n)) & 1n) === 1n;
const bits = (v: bigint, hi: number, lo: number): bigint => (v >> BigInt(lo)) & ((1n << BigInt(hi - lo + 1)) - 1n);

/**
 * Translate one access. With `setAccessedDirty` false the tables are only read (for inspection).
 */
export function referenceTranslate(mem: RefMemory, s: RefCpuState, a: RefAccess, f: RefFeatures, setAccessedDirty = true): RefResult {
  const va = BigInt.asUintN(64, a.va);
  const paging = bit(s.cr0, 31);
  if (!paging) return { ok: true, pa: va, pageSize: 4096n, user: true, writable: true, executeDisable: false, pkey: 0, dirty: true, global: false, frame: va >> 12n };

  const la57 = bit(s.cr4, 12);
  const nxe = bit(s.efer, 11);
  const M = f.maxPhyAddr;

  // §3.3.7.1: a linear address is canonical when bits 63 through (47 or 56) are all equal.
  const topBit = la57 ? 56 : 47;
  const upper = bits(va, 63, topBit);
  const allOnes = (1n << BigInt(64 - topBit)) - 1n;
  if (upper !== 0n && upper !== allOnes) {
    return { ok: false, vector: a.stack ? 12 : 13, errorCode: 0, cr2: null };
  }

  const write = a.kind === 'write';
  const fetch = a.kind === 'fetch';
  // §4.6: supervisor-mode if CPL < 3 or the access is implicit.
  const userMode = s.cpl === 3 && !a.implicit;
  const smep = bit(s.cr4, 20);
  const smap = bit(s.cr4, 21);
  const pke = bit(s.cr4, 22);
  const wp = bit(s.cr0, 16);

  const accessBits = (write ? 2 : 0) | (userMode ? 4 : 0) | (fetch && (nxe || smep) ? 16 : 0);

  const levels = la57 ? 5 : 4;
  let table = bits(s.cr3, M - 1, 12) << 12n;
  const used: { addr: bigint; leaf: boolean }[] = [];
  let allUser = true;
  let allWritable = true;
  let anyXd = false;
  let leafEntry = 0n;
  let leafLevel = 0;

  for (let level = levels; level >= 1; level--) {
    const index = bits(va, 12 + 9 * level - 1, 12 + 9 * (level - 1));
    const addr = table + index * 8n;
    if (addr + 8n > mem.size) return { ok: false, vector: 18, errorCode: 0, cr2: null };
    const e = mem.read64(addr);
    // A not-present entry ends the walk: P=0 in the error code.
    if (!bit(e, 0)) return fault(accessBits, va);
    const ps = bit(e, 7);
    const isLeaf = level === 1 || ((level === 2 || level === 3) && ps);
    // Reserved bits (§4.5, Table 4-14 to 4-20 footnotes):
    let reserved = false;
    if (M < 52 && bits(e, 51, M) !== 0n) reserved = true; // physical-address bits above MAXPHYADDR
    if (!nxe && bit(e, 63)) reserved = true; // XD is reserved when IA32_EFER.NXE = 0
    if ((level === 5 || level === 4) && ps) reserved = true; // PS is reserved in PML5E/PML4E
    if (level === 3 && ps && !f.gbPages) reserved = true; // 1-GByte pages not supported
    if (level === 3 && ps && f.gbPages && bits(e, 29, 13) !== 0n) reserved = true; // 1 GiB alignment
    if (level === 2 && ps && bits(e, 20, 13) !== 0n) reserved = true; // 2 MiB alignment
    if (reserved) return fault(accessBits | 1 | 8, va);
    used.push({ addr, leaf: isLeaf });
    if (!bit(e, 2)) allUser = false;
    if (!bit(e, 1)) allWritable = false;
    if (nxe && bit(e, 63)) anyXd = true;
    if (isLeaf) {
      leafEntry = e;
      leafLevel = level;
      break;
    }
    table = bits(e, M - 1, 12) << 12n;
  }

  // §4.6.1: access rights.
  const userAddress = allUser;
  let denied = false;
  if (userMode) {
    if (!userAddress) denied = true;
    else if (write && !allWritable) denied = true;
    else if (fetch && anyXd) denied = true;
  } else {
    if (fetch) {
      if (userAddress && smep) denied = true;
      if (anyXd) denied = true;
    } else {
      if (userAddress && smap && (!s.ac || a.implicit)) denied = true;
      if (write && wp && !allWritable) denied = true;
    }
  }
  // §4.6.2: protection keys govern data accesses to user-mode addresses.
  const pkey = Number(bits(leafEntry, 62, 59));
  let pkFault = false;
  if (pke && userAddress && !fetch) {
    const ad = ((s.pkru >>> (2 * pkey)) & 1) === 1;
    const wd = ((s.pkru >>> (2 * pkey + 1)) & 1) === 1;
    if (ad) pkFault = true;
    if (write && wd && (userMode || wp)) pkFault = true;
  }
  if (denied || pkFault) return fault(accessBits | 1 | (pkFault ? 32 : 0), va);

  // §4.8: A on every entry used; D on the leaf for a write. Only after the access is allowed.
  if (setAccessedDirty) {
    for (const u of used) {
      let e = mem.read64(u.addr);
      e |= 1n << 5n;
      if (u.leaf && write) e |= 1n << 6n;
      mem.write64(u.addr, e);
    }
  }

  const pageBits = leafLevel === 1 ? 12 : leafLevel === 2 ? 21 : 30;
  const frame = bits(leafEntry, M - 1, pageBits) << BigInt(pageBits);
  const pa = frame | bits(va, pageBits - 1, 0);
  const dirtyNow = bit(leafEntry, 6) || (setAccessedDirty && write);
  return {
    ok: true,
    pa,
    pageSize: 1n << BigInt(pageBits),
    user: allUser,
    writable: allWritable,
    executeDisable: anyXd,
    pkey,
    dirty: dirtyNow,
    global: bit(leafEntry, 8) && bit(s.cr4, 7),
    frame: frame >> 12n,
  };
}

function fault(errorCode: number, va: bigint): RefResult {
  return { ok: false, vector: 14, errorCode, cr2: va };
}

/** What the paging structures say about one address, rights aside. */
export type RefMapping =
  | { present: true; frame: bigint; pageSize: bigint; user: boolean; writable: boolean; executeDisable: boolean; pkey: number; dirty: boolean; global: boolean }
  | { present: false; level: number; reason: 'not-present' | 'reserved' | 'beyond-memory' };

/**
 * Read the translation of `va` from the tables rooted at `root` without checking rights or
 * setting any flag (inspection only). `nxe` decides whether bit 63 is XD or reserved.
 */
export function referenceMapping(mem: RefMemory, root: bigint, va: bigint, f: RefFeatures & { nxe: boolean; la57: boolean }): RefMapping {
  const v = BigInt.asUintN(64, va);
  const M = f.maxPhyAddr;
  let table = bits(root, M - 1, 12) << 12n;
  let allUser = true;
  let allWritable = true;
  let anyXd = false;
  for (let level = f.la57 ? 5 : 4; level >= 1; level--) {
    const addr = table + bits(v, 12 + 9 * level - 1, 12 + 9 * (level - 1)) * 8n;
    if (addr + 8n > mem.size) return { present: false, level, reason: 'beyond-memory' };
    const e = mem.read64(addr);
    if (!bit(e, 0)) return { present: false, level, reason: 'not-present' };
    const ps = bit(e, 7);
    const leaf = level === 1 || ((level === 2 || level === 3) && ps);
    let reserved = (M < 52 && bits(e, 51, M) !== 0n) || (!f.nxe && bit(e, 63)) || ((level >= 4) && ps);
    if (level === 3 && ps) reserved ||= !f.gbPages || bits(e, 29, 13) !== 0n;
    if (level === 2 && ps) reserved ||= bits(e, 20, 13) !== 0n;
    if (reserved) return { present: false, level, reason: 'reserved' };
    if (!bit(e, 2)) allUser = false;
    if (!bit(e, 1)) allWritable = false;
    if (f.nxe && bit(e, 63)) anyXd = true;
    if (leaf) {
      const pageBits = level === 1 ? 12 : level === 2 ? 21 : 30;
      return {
        present: true,
        frame: bits(e, M - 1, pageBits) << BigInt(pageBits - 12),
        pageSize: 1n << BigInt(pageBits),
        user: allUser,
        writable: allWritable,
        executeDisable: anyXd,
        pkey: Number(bits(e, 62, 59)),
        dirty: bit(e, 6),
        global: bit(e, 8),
      };
    }
    table = bits(e, M - 1, 12) << 12n;
  }
  throw new Error('unreachable: a walk always ends at a leaf or a fault');
}
