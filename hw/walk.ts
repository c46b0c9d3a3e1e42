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
import { C_AD_UPDATES, C_WALK_REFS, C_WALK_RESTARTS, C_WALKS } from './layout.ts';
import { PTE_A, PTE_D, PTE_G, PTE_P, PTE_PAT, PTE_PAT_LARGE, PTE_PCD, PTE_PS, PTE_PWT, PTE_RW, PTE_US, PTE_HI_PK_SHIFT } from './pte.ts';
import { SIZE_1G, SIZE_2M, SIZE_4K, W3_D, W3_MT_SHIFT, W3_PK_SHIFT, W3_U, W3_W, W3_XD } from './tlb.ts';

export const WALK_OK = 0;
export const WALK_PF = 1;
export const WALK_MC = 2;

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
 * Walk the paging structures for the linear address vaHi:vaLo (already known canonical).
 * `usePsc` lets the walk start from a paging-structure-cache hit. On success the CPU's walk
 * outputs (wPa, wPfnLo, wPfnHi, wSize, wW3, wGlobal) describe the translation and the caller may
 * cache it; on a #PF, `cpu.faultError` holds the error code.
 */
export function walk(cpu: Cpu, vaHi: number, vaLo: number, kind: number, ai: number, user: boolean, usePsc: boolean): number {
  const m = cpu.m;
  const c = cpu.c;
  const memSize = cpu.memSize;
  const rsvdLo = cpu.rsvdLo;
  const rsvdHi = cpu.rsvdHi;
  const addrHi = cpu.addrHi;
  const ei = cpu.ei;
  const elo = cpu.elo;
  const acc = cpu.wAcc;
  c[C_WALKS]!++;
  for (let attempt = 0; ; attempt++) {
    let level: number;
    let tLo: number; // next table, low 32 bits
    let tHi: number; // next table, bits 51:32
    let rw = PTE_RW | PTE_US; // AND of R/W and U/S so far
    let xd = 0; // OR of XD (high-word bit 31) so far
    if (usePsc && cpu.pscOn) {
      const hit = cpu.pscLookup(vaHi, vaLo);
      level = cpu.pLevel;
      tLo = cpu.pTLo;
      tHi = cpu.pTHi;
      if (hit) {
        rw = cpu.pRw;
        xd = cpu.pXd;
      }
    } else {
      level = cpu.levels;
      tLo = cpu.cr3Lo;
      tHi = cpu.cr3Hi;
    }
    cpu.wStartLevel = level;
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
        cpu.mcAddress = tHi * 0x100000000 + (tLo >>> 0) + idx * 8;
        return WALK_MC;
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
        return WALK_PF;
      }
      leaf = level === 1 || ((lo & PTE_PS) !== 0 && level <= 3);
      const ri = level * 2 + (leaf ? 1 : 0);
      if ((lo & rsvdLo[ri]!) | (hi & rsvdHi[ri]!)) {
        c[C_WALK_REFS]! += n;
        cpu.faultError = PF_P | 8 /* RSVD */ | errorBits(cpu, kind, user);
        return WALK_PF;
      }
      rw &= lo;
      xd |= hi;
      acc[n - 1] = (rw & (PTE_RW | PTE_US)) | (xd & 0x80000000);
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
      return WALK_PF;
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
    // ---- the translation ---------------------------------------------------------------------
    let size: number;
    let pat: number;
    if (level === 1) {
      size = SIZE_4K;
      pat = lo & PTE_PAT ? 4 : 0;
      cpu.wPfnLo = (lo >>> 12) | ((hi & addrHi) << 20);
      cpu.wPfnHi = (hi & addrHi) >>> 12;
    } else if (level === 2) {
      size = SIZE_2M;
      pat = lo & PTE_PAT_LARGE ? 4 : 0;
      cpu.wPfnLo = ((lo & 0xffe00000) >>> 12) | ((hi & addrHi) << 20);
      cpu.wPfnHi = (hi & addrHi) >>> 12;
    } else {
      size = SIZE_1G;
      pat = lo & PTE_PAT_LARGE ? 4 : 0;
      cpu.wPfnLo = ((lo & 0xc0000000) >>> 12) | ((hi & addrHi) << 20);
      cpu.wPfnHi = (hi & addrHi) >>> 12;
    }
    const mt = pat | (lo & PTE_PCD ? 2 : 0) | (lo & PTE_PWT ? 1 : 0);
    cpu.wSize = size;
    cpu.wGlobal = cpu.pge && (lo & PTE_G) !== 0;
    cpu.wW3 =
      (cpu.wPfnHi & 0xff) |
      (U ? W3_U : 0) |
      (rw & PTE_RW ? W3_W : 0) |
      (xd & 0x80000000 ? W3_XD : 0) |
      (lo & PTE_D ? W3_D : 0) |
      (pk << W3_PK_SHIFT) |
      (mt << W3_MT_SHIFT);
    const off = size === SIZE_4K ? vaLo & 0xfff : size === SIZE_2M ? vaLo & 0x1fffff : vaLo & 0x3fffffff;
    cpu.wPa = (cpu.wPfnHi * 0x100000000 + (cpu.wPfnLo >>> 0)) * 4096 + off;
    return WALK_OK;
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
