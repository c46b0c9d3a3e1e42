/**
 * hw/walk.ts — the fast page walker: IA-32e 4-level and 5-level paging (Intel SDM Vol. 3A §4.5),
 * access rights (§4.6), protection keys (§4.6.2), accessed and dirty flags (§4.8) and the
 * page-fault error code (§4.7).
 *
 * The walk reads each entry's low half, then its high half (writers use Linux's PAE order, see
 * hw/phys.ts). Per level: P first, then the reserved bits (so RSVD always comes with P=1), then
 * the rights are accumulated: U/S and R/W ANDed, XD ORed. Rights are checked only once a leaf is
 * reached. A and D are set only when the access is known to succeed (as Bochs and KVM do), each
 * with a 32-bit compare-and-exchange on the entry's low half — the hardware's locked cycle. If
 * the entry changed since it was read, the whole walk restarts, so an update by another thread
 * is never overwritten and a fault never modifies any entry.
 *
 * This file is the hot path. Its straightforward twin, written from the SDM text for the tests to
 * compare against, is hw/walk-reference.ts.
 *
 * Deviation: a paging-structure entry whose address lies beyond installed memory cannot be read;
 * real machines return all-ones from unbacked addresses. mmulab reports a machine check
 * (vector 18) instead, so a corrupt table is never silently misread.
 */

import type { Cpu } from './cpu.ts';
const C_AD_UPDATES=12, C_WALK_REFS=7, C_WALK_RESTARTS=13, C_WALKS=6;
const PTE_A=32, PTE_D=64, PTE_G=256, PTE_P=1, PTE_PAT=128, PTE_PAT_LARGE=4096, PTE_PCD=16, PTE_PS=128, PTE_PWT=8, PTE_RW=2, PTE_US=4, PTE_HI_PK_SHIFT=27;
const W3_D=2048, W3_MT_SHIFT=16, W3_PK_SHIFT=12, W3_XD=1024;

/** walk() results below zero. */
export const WALK_PF_RESULT = -1;
export const WALK_MC_RESULT = -2;
/** walkFast() could not handle this walk: run walkGeneral from the same start. */
export const WALK_SLOW = -3;

/** #PF error-code bits (SDM §4.7; Linux's X86_PF_*). */
export const PF_P = 1 << 0;
export const PF_W = 1 << 1;
export const PF_U = 1 << 2;
export const PF_RSVD = 1 << 3;
export const PF_ID = 1 << 4;
export const PF_PK = 1 << 5;

export const K_READ = 0;
export const K_WRITE = 1;
export const K_FETCH = 2;

/**
 * Index into the permission table: supervisor explicit 0..2, user 3..5, supervisor implicit 6..8,
 * plus the access kind.
 */
export function accessIndex(kind: number, user: boolean, implicit: boolean): number {
  return user ? 3 + kind : implicit ? 6 + kind : kind;
}

/**
 * Fill `table` (72 entries) so that table[ai * 8 + rights] is 1 when an access of class `ai` to a
 * translation whose combined rights are `rights` (bit 0 U, bit 1 W, bit 2 XD) violates SDM §4.6,
 * protection keys aside. This is KVM's update_permission_bitmask idea: the rules are evaluated
 * once per control-register change instead of on every access.
 */
export function computePermissionTable(table: Uint8Array, wp: boolean, smep: boolean, smap: boolean, ac: boolean, nxe: boolean): void {
  for (let ai = 0; ai < 9; ai++) {
    const kind = ai % 3;
    const user = ai >= 3 && ai < 6;
    const implicit = ai >= 6;
    for (let r = 0; r < 8; r++) {
      const U = (r & 1) !== 0;
      const W = (r & 2) !== 0;
      const XD = (r & 4) !== 0 && nxe;
      let fault = false;
      if (user) {
        if (!U) fault = true;
        else if (kind === K_WRITE && !W) fault = true;
        else if (kind === K_FETCH && XD) fault = true;
      } else if (U) {
        // supervisor-mode access to a user-mode address
        if (kind === K_FETCH) fault = smep || XD;
        else {
          if (smap && (!ac || implicit)) fault = true;
          if (kind === K_WRITE && wp && !W) fault = true;
        }
      } else {
        if (kind === K_FETCH) fault = XD;
        else if (kind === K_WRITE) fault = wp && !W;
      }
      table[ai * 8 + r] = fault ? 1 : 0;
    }
  }
}

/**
 * Does the protection-key rule (SDM §4.6.2) deny this access? Only data accesses to user-mode
 * addresses with CR4.PKE=1 are subject to it.
 */
export function pkeyDenies(pkru: number, pk: number, kind: number, user: boolean, wp: boolean): boolean {
  if (kind === K_FETCH) return false;
  if ((pkru >>> (2 * pk)) & 1) return true; // AD
  return kind === K_WRITE && ((pkru >>> (2 * pk + 1)) & 1) === 1 && (user || wp); // WD
}

/**
 * The fast walkers: the common cases only, as straight-line code with every index, mask slot and
 * leaf rule fixed (V8 runs this two to three times faster than the general walker's loop). They
 * handle a walk that succeeds with A already set on every entry (and D on the leaf for a write),
 * reads no watched frame, and leaves nothing to cache in the paging-structure caches. Anything
 * else — faults, A/D updates, machine checks, watch hits, cache fills — returns WALK_SLOW before
 * any state changes, and the caller runs walkGeneral from the same starting point. Both walkers
 * are checked against the SDM reference by the same exhaustive tables.
 *
 * walkFast4: a 4-level walk from CR3 (no paging-structure-cache help, or caches disabled).
 */
export function walkFast4(cpu: Cpu, vaHi: number, vaLo: number, kind: number, ai: number, user: boolean): number {
  const m = cpu.m;
  const memSize = cpu.memSize;
  const rl = cpu.rsvdLo;
  const rh = cpu.rsvdHi;
  const watch = cpu.watchWalks ? cpu.watch : cpu.noWatch;
  // A next-table address with bits above 31 set lies beyond installed memory (at most 4 GiB):
  // adding the address bits to the reserved mask of non-leaf entries sends it to the slow path.
  const nlHi = cpu.addrHi;
  let tLo = cpu.cr3Lo;
  if (cpu.cr3Hi !== 0 || tLo >>> 0 >= memSize) return WALK_SLOW;
  // PML4E
  let wi = (tLo >>> 2) + ((vaHi >>> 7) & 0x1ff) * 2;
  let lo = m[wi]!;
  let hi = m[wi + 1]!;
  if ((lo & PTE_P) === 0 || (lo & rl[8]!) | (hi & (rh[8]! | nlHi)) || watch[wi >>> 10] !== 0) return WALK_SLOW;
  let rw = lo;
  let xd = hi;
  let andA = lo;
  tLo = lo & 0xfffff000;
  if (tLo >>> 0 >= memSize) return WALK_SLOW;
  // PDPTE
  wi = (tLo >>> 2) + (((vaLo >>> 30) | (vaHi << 2)) & 0x1ff) * 2;
  lo = m[wi]!;
  hi = m[wi + 1]!;
  if ((lo & PTE_P) === 0 || watch[wi >>> 10] !== 0) return WALK_SLOW;
  let leafLevel = 3;
  if ((lo & PTE_PS) !== 0) {
    if ((lo & rl[7]!) | (hi & rh[7]!)) return WALK_SLOW;
  } else {
    if ((lo & rl[6]!) | (hi & (rh[6]! | nlHi))) return WALK_SLOW;
    rw &= lo;
    xd |= hi;
    andA &= lo;
    tLo = lo & 0xfffff000;
    if (tLo >>> 0 >= memSize) return WALK_SLOW;
    // PDE
    wi = (tLo >>> 2) + ((vaLo >>> 21) & 0x1ff) * 2;
    lo = m[wi]!;
    hi = m[wi + 1]!;
    if ((lo & PTE_P) === 0 || watch[wi >>> 10] !== 0) return WALK_SLOW;
    leafLevel = 2;
    if ((lo & PTE_PS) !== 0) {
      if ((lo & rl[5]!) | (hi & rh[5]!)) return WALK_SLOW;
    } else {
      if ((lo & rl[4]!) | (hi & (rh[4]! | nlHi))) return WALK_SLOW;
      rw &= lo;
      xd |= hi;
      andA &= lo;
      tLo = lo & 0xfffff000;
      if (tLo >>> 0 >= memSize) return WALK_SLOW;
      // PTE
      wi = (tLo >>> 2) + ((vaLo >>> 12) & 0x1ff) * 2;
      lo = m[wi]!;
      hi = m[wi + 1]!;
      if ((lo & PTE_P) === 0 || (lo & rl[3]!) | (hi & rh[3]!) || watch[wi >>> 10] !== 0) return WALK_SLOW;
      leafLevel = 1;
    }
  }
  rw &= lo;
  xd |= hi;
  andA &= lo;
  if ((andA & PTE_A) === 0 || (kind === K_WRITE && (lo & PTE_D) === 0)) return WALK_SLOW;
  const U = (rw >>> 2) & 1;
  if (cpu.perm[ai * 8 + (U | (rw & PTE_RW) | ((xd >>> 29) & 4))] !== 0) return WALK_SLOW;
  if (U !== 0 && cpu.pke && pkeyDenies(cpu.pkru, (hi >>> PTE_HI_PK_SHIFT) & 0xf, kind, user, cpu.wp)) return WALK_SLOW;
  const c = cpu.c;
  c[C_WALKS]!++;
  c[C_WALK_REFS]! += 5 - leafLevel;
  cpu.wN = 0;
  return translation(cpu, vaLo, lo, hi, leafLevel, rw, xd);
}

/** walkFastPte: the walk that starts at a page table found in the PDE cache (one reference). */
export function walkFastPte(cpu: Cpu, vaLo: number, kind: number, ai: number, user: boolean, tLo: number, tHi: number, rw: number, xd: number): number {
  if (tHi !== 0 || tLo >>> 0 >= cpu.memSize) return WALK_SLOW;
  const wi = (tLo >>> 2) + ((vaLo >>> 12) & 0x1ff) * 2;
  const lo = cpu.m[wi]!;
  const hi = cpu.m[wi + 1]!;
  if ((lo & PTE_P) === 0 || (lo & cpu.rsvdLo[3]!) | (hi & cpu.rsvdHi[3]!) || (lo & PTE_A) === 0 || (kind === K_WRITE && (lo & PTE_D) === 0)) return WALK_SLOW;
  if (cpu.watchWalks && cpu.watch[wi >>> 10] !== 0) return WALK_SLOW;
  rw &= lo;
  xd |= hi;
  const U = (rw >>> 2) & 1;
  if (cpu.perm[ai * 8 + (U | (rw & PTE_RW) | ((xd >>> 29) & 4))] !== 0) return WALK_SLOW;
  if (U !== 0 && cpu.pke && pkeyDenies(cpu.pkru, (hi >>> PTE_HI_PK_SHIFT) & 0xf, kind, user, cpu.wp)) return WALK_SLOW;
  const c = cpu.c;
  c[C_WALKS]!++;
  c[C_WALK_REFS]!++;
  cpu.wN = 0;
  return translation(cpu, vaLo, lo, hi, 1, rw, xd);
}

/** Bits of cpu.wW3 above the TLB entry's word 3: the translation's size and global flag. */
export const WOUT_SIZE_SHIFT = 20;
export const WOUT_GLOBAL = 1 << 22;
export const WOUT_W3_MASK = (1 << WOUT_SIZE_SHIFT) - 1;

/**
 * The translation a successful walk produces: the TLB-entry words (wPfnLo, and wW3 which also
 * carries the size and the global flag above WOUT_W3_MASK), and the physical address of the
 * access (returned).
 */
function translation(cpu: Cpu, vaLo: number, lo: number, hi: number, leafLevel: number, rw: number, xd: number): number {
  const ah = hi & cpu.addrHi;
  let pfnLo: number;
  let off: number;
  let pat: number;
  if (leafLevel === 1) {
    pfnLo = (lo >>> 12) | (ah << 20);
    off = vaLo & 0xfff;
    pat = lo & PTE_PAT ? 4 : 0;
  } else if (leafLevel === 2) {
    pfnLo = ((lo & 0xffe00000) >>> 12) | (ah << 20);
    off = vaLo & 0x1fffff;
    pat = lo & PTE_PAT_LARGE ? 4 : 0;
  } else {
    pfnLo = ((lo & 0xc0000000) >>> 12) | (ah << 20);
    off = vaLo & 0x3fffffff;
    pat = lo & PTE_PAT_LARGE ? 4 : 0;
  }
  const pfnHi = ah >>> 12;
  cpu.wPfnLo = pfnLo;
  cpu.wW3 =
    ((leafLevel - 1) << WOUT_SIZE_SHIFT) | // SIZE_4K, SIZE_2M, SIZE_1G
    (cpu.pge && (lo & PTE_G) !== 0 ? WOUT_GLOBAL : 0) |
    pfnHi |
    (((rw >>> 2) & 1) << 8) |
    ((rw & PTE_RW) << 8) |
    ((xd >>> 21) & W3_XD) |
    (lo & PTE_D ? W3_D : 0) |
    (((hi >>> PTE_HI_PK_SHIFT) & 0xf) << W3_PK_SHIFT) |
    ((pat | (lo & PTE_PCD ? 2 : 0) | (lo & PTE_PWT ? 1 : 0)) << W3_MT_SHIFT);
  return (pfnHi * 0x100000000 + (pfnLo >>> 0)) * 4096 + off;
}

/**
 * Walk vaHi:vaLo from the root, or below a paging-structure-cache hit when `usePsc`: a fast
 * walker when one applies, else the general walker. Returns the physical address,
 * WALK_PF_RESULT or WALK_MC_RESULT (see walkGeneral).
 */
export function walk(cpu: Cpu, vaHi: number, vaLo: number, kind: number, ai: number, user: boolean, usePsc: boolean): number {
  if (usePsc && cpu.pscOn) return walkWithPsc(cpu, vaHi, vaLo, kind, ai, user);
  if (cpu.levels === 4) {
    const pa = walkFast4(cpu, vaHi, vaLo, kind, ai, user);
    if (pa !== WALK_SLOW) return pa;
  }
  return walkGeneral(cpu, vaHi, vaLo, kind, ai, user, cpu.levels, cpu.cr3Lo, cpu.cr3Hi, PTE_RW | PTE_US, 0);
}

function walkWithPsc(cpu: Cpu, vaHi: number, vaLo: number, kind: number, ai: number, user: boolean): number {
  if (cpu.pscLookup(vaHi, vaLo)) {
    if (cpu.pLevel === 1) {
      const pa = walkFastPte(cpu, vaLo, kind, ai, user, cpu.pTLo, cpu.pTHi, cpu.pRw, cpu.pXd);
      if (pa !== WALK_SLOW) return pa;
    }
    return walkGeneral(cpu, vaHi, vaLo, kind, ai, user, cpu.pLevel, cpu.pTLo, cpu.pTHi, cpu.pRw, cpu.pXd);
  }
  // A miss in every paging-structure cache: the general walker reads and caches the upper levels.
  return walkGeneral(cpu, vaHi, vaLo, kind, ai, user, cpu.levels, cpu.cr3Lo, cpu.cr3Hi, PTE_RW | PTE_US, 0);
}

/**
 * The general walker: every case, one level per loop iteration. It records each entry it reads
 * (for the A/D updates and for filling the paging-structure caches), sets A/D with a locked
 * compare-and-exchange and restarts if an entry changed under it. Returns the physical address
 * (>= 0), WALK_PF_RESULT with `cpu.faultError` set, or WALK_MC_RESULT. On success the walk
 * outputs (wPfnLo, wW3, ei/elo/wN/wStartLevel/wStartRw/wStartXd) describe the
 * translation; `start`, `tLo`, `tHi`, `rw`, `xd` say where the walk begins (the root, or below
 * a paging-structure-cache hit) and what rights the skipped levels contributed.
 */
export function walkGeneral(cpu: Cpu, vaHi: number, vaLo: number, kind: number, ai: number, user: boolean, start: number, startLo: number, startHi: number, startRw: number, startXd: number): number {
  const m = cpu.m;
  const c = cpu.c;
  const memSize = cpu.memSize;
  const rsvdLo = cpu.rsvdLo;
  const rsvdHi = cpu.rsvdHi;
  const addrHi = cpu.addrHi;
  const ei = cpu.ei;
  const elo = cpu.elo;
  c[C_WALKS]!++;
  for (let attempt = 0; ; attempt++) {
    let level = start;
    let tLo = startLo; // next table, low 32 bits
    let tHi = startHi; // next table, bits 51:32
    let rw = startRw; // AND of R/W and U/S so far
    let xd = startXd; // OR of the high words so far: bit 31 is XD
    let n = 0;
    let lo = 0;
    let hi = 0;
    let leaf = false;
    for (;;) {
      let idx: number;
      switch (level) {
        case 1: idx = (vaLo >>> 12) & 0x1ff; break;
        case 2: idx = (vaLo >>> 21) & 0x1ff; break;
        case 3: idx = ((vaLo >>> 30) | (vaHi << 2)) & 0x1ff; break;
        case 4: idx = (vaHi >>> 7) & 0x1ff; break;
        default: idx = (vaHi >>> 16) & 0x1ff; break;
      }
      // Entry address = table | idx * 8. The table is 4 KiB aligned, so the low half cannot carry.
      if (tHi !== 0 || (tLo >>> 0) + idx * 8 + 8 > memSize) {
        c[C_WALK_REFS]! += n;
        cpu.mcAddress = tHi * 0x100000000 + (tLo >>> 0) + idx * 8;
        return WALK_MC_RESULT;
      }
      const wi = ((tLo >>> 2) | 0) + idx * 2;
      lo = m[wi]!;
      hi = m[wi + 1]!;
      ei[n] = wi;
      elo[n] = lo;
      n++;
      if (cpu.watchWalks && cpu.watch[wi >>> 10] !== 0) cpu.watchTable(wi, vaHi, vaLo);
      if ((lo & PTE_P) === 0) {
        c[C_WALK_REFS]! += n;
        cpu.faultError = errorBits(cpu, kind, user);
        return WALK_PF_RESULT;
      }
      leaf = level === 1 || ((lo & PTE_PS) !== 0 && level <= 3);
      const ri = level * 2 + (leaf ? 1 : 0);
      if ((lo & rsvdLo[ri]!) | (hi & rsvdHi[ri]!)) {
        c[C_WALK_REFS]! += n;
        cpu.faultError = PF_P | PF_RSVD | errorBits(cpu, kind, user);
        return WALK_PF_RESULT;
      }
      rw &= lo;
      xd |= hi;
      if (leaf) break;
      tLo = lo & 0xfffff000;
      tHi = hi & addrHi;
      level--;
    }
    c[C_WALK_REFS]! += n;
    // ---- rights (SDM §4.6) --------------------------------------------------------------------
    const U = (rw >>> 2) & 1;
    const rights = U | (rw & PTE_RW) | ((xd >>> 29) & 4);
    const pk = (hi >>> PTE_HI_PK_SHIFT) & 0xf;
    let denied = cpu.perm[ai * 8 + rights] !== 0;
    let pkDenied = false;
    if (cpu.pke && U !== 0 && pkeyDenies(cpu.pkru, pk, kind, user, cpu.wp)) {
      pkDenied = true;
      denied = true;
    }
    if (denied) {
      cpu.faultError = PF_P | errorBits(cpu, kind, user) | (pkDenied ? PF_PK : 0);
      return WALK_PF_RESULT;
    }
    // ---- accessed / dirty (SDM §4.8): set only now that the access is permitted --------------
    let restart = false;
    for (let k = 0; k < n; k++) {
      const old = elo[k]!;
      const want = k === n - 1 && kind === K_WRITE ? PTE_A | PTE_D : PTE_A;
      if ((old & want) !== want) {
        c[C_AD_UPDATES]!++;
        cpu.chargeAd();
        if (cpu.mem.cmpxchgLo(ei[k]!, old, old | want) !== old) {
          restart = true;
          break;
        }
        elo[k] = old | want;
      }
    }
    if (restart) {
      c[C_WALK_RESTARTS]!++;
      if (attempt > 1_000_000) throw new Error('page walk restarted a million times: paging-structure entries keep changing under the walker');
      continue;
    }
    lo = elo[n - 1]!;
    cpu.wN = n;
    cpu.wStartLevel = start;
    cpu.wStartRw = startRw;
    cpu.wStartXd = startXd;
    // ---- the translation ---------------------------------------------------------------------
    return translation(cpu, vaLo, lo, hi, level, rw, xd);
  }
}


/** W/R, U/S and I/D bits of the error code: they describe the access, not the page. */
function errorBits(cpu: Cpu, kind: number, user: boolean): number {
  let e = 0;
  if (kind === K_WRITE) e |= PF_W;
  if (user) e |= PF_U;
  if (kind === K_FETCH && (cpu.nxe || cpu.smep)) e |= PF_ID;
  return e;
}
