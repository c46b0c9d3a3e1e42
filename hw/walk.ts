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
 * A successful walk leaves its leaf entry, the leaf's level and the rights combined over the
 * levels on the CPU (wLeafLo, wLeafHi, wLevel, wRw, wXd) and returns the physical address;
 * tlbEntryWords() turns those into the TLB entry when hw/cpu.ts fills the TLBs.
 *
 * This file is the hot path. Its straightforward twin, written from the SDM text for the tests to
 * compare against, is hw/walk-reference.ts.
 *
 * Deviation: a paging-structure entry whose address lies beyond installed memory cannot be read;
 * real machines return all-ones from unbacked addresses. mmulab reports a machine check
 * (vector 18) instead, so a corrupt table is never silently misread.
 */

import type { Cpu } from './cpu.ts';
import * as layoutConsts from './layout.ts';
import * as pteConsts from './pte.ts';
import * as tlbConsts from './tlb.ts';

// Module-local constants. An imported binding is live, so optimized code reloads it from its
// module cell (with a hole check) at every use; a module-local const folds to its value. For the
// same reason this file's own exports below are used through private twins: inside its module an
// exported binding still lives in a cell.
const { C_AD_UPDATES, C_WALK_REFS, C_WALK_RESTARTS, C_WALKS } = layoutConsts;
const { PTE_A, PTE_D, PTE_G, PTE_P, PTE_PCD, PTE_PS, PTE_PWT, PTE_RW, PTE_US, PTE_HI_PK_SHIFT } = pteConsts;
const { W3_MT_SHIFT, W3_PK_SHIFT, W3_XD } = tlbConsts;
const READ = 0, WRITE = 1, FETCH = 2;
const PF_RESULT = -1, MC_RESULT = -2, SLOW = -3;
const ERR_P = 1, ERR_W = 2, ERR_U = 4, ERR_RSVD = 8, ERR_ID = 16, ERR_PK = 32;
const SIZE_SHIFT = 20, GLOBAL = 1 << 22;

/** walk() results below zero. */
export const WALK_PF_RESULT = PF_RESULT;
export const WALK_MC_RESULT = MC_RESULT;
/** walkFast() could not handle this walk: run walkGeneral from the same start. */
export const WALK_SLOW = SLOW;

/** #PF error-code bits (SDM §4.7; Linux's X86_PF_*). */
export const PF_P = ERR_P;
export const PF_W = ERR_W;
export const PF_U = ERR_U;
export const PF_RSVD = ERR_RSVD;
export const PF_ID = ERR_ID;
export const PF_PK = ERR_PK;

export const K_READ = READ;
export const K_WRITE = WRITE;
export const K_FETCH = FETCH;

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
        else if (kind === WRITE && !W) fault = true;
        else if (kind === FETCH && XD) fault = true;
      } else if (U) {
        // supervisor-mode access to a user-mode address
        if (kind === FETCH) fault = smep || XD;
        else {
          if (smap && (!ac || implicit)) fault = true;
          if (kind === WRITE && wp && !W) fault = true;
        }
      } else {
        if (kind === FETCH) fault = XD;
        else if (kind === WRITE) fault = wp && !W;
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
  if (kind === FETCH) return false;
  if ((pkru >>> (2 * pk)) & 1) return true; // AD
  return kind === WRITE && ((pkru >>> (2 * pk + 1)) & 1) === 1 && (user || wp); // WD
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
 * They read everything that depends only on the control registers from scalar fields of the CPU
 * that Cpu.refresh() precomputes: the reserved-bit masks of each level (for non-leaf entries
 * widened by the address bits above 31, see below) and the installed memory in 32-bit words.
 * Table positions are kept as word indices into physical memory (below 2^30), so every index
 * computation stays in small-integer arithmetic.
 *
 * walkFast4: a 4-level walk from CR3 (no paging-structure-cache help, or caches disabled).
 */
export function walkFast4(cpu: Cpu, vaHi: number, vaLo: number, kind: number, ai: number, user: boolean): number {
  const m = cpu.m;
  const watch = cpu.watchWalks === true ? cpu.watch : cpu.noWatch;
  // A next-table address with bits above 31 set lies beyond installed memory (at most 4 GiB):
  // the non-leaf masks (fw*NlHi) include those address bits, so such an entry takes the slow path.
  // A table below 4 GiB but beyond installed memory needs no test of its own: m holds exactly the
  // installed memory, a read past its end gives undefined, which the bit operations below turn
  // into 0, a not-present entry, so the walk goes to the slow path (which reports the machine
  // check). Per level one test covers P=0, any reserved bit and a watched table frame.
  if (cpu.cr3Hi !== 0) return SLOW;
  let t = cpu.cr3Lo >>> 2; // word index of the table
  // PML4E
  let wi = t + ((vaHi >>> 6) & 0x3fe);
  let lo = m[wi]!;
  let hi = m[wi + 1]!;
  if (((~lo & PTE_P) | (lo & cpu.fw4NlLo) | (hi & cpu.fw4NlHi) | watch[wi >>> 10]!) !== 0) return SLOW;
  let rw = lo; // AND of the low halves: R/W, U/S and A
  let xd = hi; // OR of the high halves: XD
  t = (lo & 0xfffff000) >>> 2;
  // PDPTE
  wi = t + ((((vaLo >>> 30) | (vaHi << 2)) & 0x1ff) << 1);
  lo = m[wi]!;
  hi = m[wi + 1]!;
  let leafLevel = 3;
  if ((lo & PTE_PS) !== 0) {
    if (((~lo & PTE_P) | (lo & cpu.fw3LeafLo) | (hi & cpu.fw3LeafHi) | watch[wi >>> 10]!) !== 0) return SLOW;
  } else {
    if (((~lo & PTE_P) | (lo & cpu.fw3NlLo) | (hi & cpu.fw3NlHi) | watch[wi >>> 10]!) !== 0) return SLOW;
    rw &= lo;
    xd |= hi;
    t = (lo & 0xfffff000) >>> 2;
    // PDE
    wi = t + ((vaLo >>> 20) & 0x3fe);
    lo = m[wi]!;
    hi = m[wi + 1]!;
    leafLevel = 2;
    if ((lo & PTE_PS) !== 0) {
      if (((~lo & PTE_P) | (lo & cpu.fw2LeafLo) | (hi & cpu.fw2LeafHi) | watch[wi >>> 10]!) !== 0) return SLOW;
    } else {
      if (((~lo & PTE_P) | (lo & cpu.fw2NlLo) | (hi & cpu.fw2NlHi) | watch[wi >>> 10]!) !== 0) return SLOW;
      rw &= lo;
      xd |= hi;
      t = (lo & 0xfffff000) >>> 2;
      // PTE
      wi = t + ((vaLo >>> 11) & 0x3fe);
      lo = m[wi]!;
      hi = m[wi + 1]!;
      if (((~lo & PTE_P) | (lo & cpu.fw1Lo) | (hi & cpu.fw1Hi) | watch[wi >>> 10]!) !== 0) return SLOW;
      leafLevel = 1;
    }
  }
  return fastLeaf(cpu, vaLo, kind, ai, user, lo, hi, rw & lo, xd | hi, leafLevel, 5 - leafLevel);
}

/** walkFastPte: the walk that starts at a page table found in the PDE cache (one reference). */
export function walkFastPte(cpu: Cpu, vaLo: number, kind: number, ai: number, user: boolean, tLo: number, tHi: number, rw: number, xd: number): number {
  const t = tLo >>> 2;
  if (tHi !== 0 || t >= cpu.memWords) return SLOW;
  const wi = t + ((vaLo >>> 11) & 0x3fe);
  const lo = cpu.m[wi]!;
  const hi = cpu.m[wi + 1]!;
  if (((~lo & PTE_P) | (lo & cpu.fw1Lo) | (hi & cpu.fw1Hi)) !== 0) return SLOW;
  if (cpu.watchWalks === true && cpu.watch[wi >>> 10] !== 0) return SLOW;
  // The cached rights carry no A bit (the cached entries had A set): only the leaf's A counts.
  return fastLeaf(cpu, vaLo, kind, ai, user, lo, hi, (rw | PTE_A) & lo, xd | hi, 1, 1);
}

/**
 * The end of a fast walk, once the leaf (lo, hi) at `leafLevel` is found with every entry present
 * and free of reserved bits: `rw` is the AND of the low halves of the entries read (R/W and U/S
 * combined as the SDM combines them, and A, which must be set in all of them), `xd` the OR of
 * the high halves. Checks A, D and the rights, counts the walk and its `refs` memory references,
 * and produces the translation; or returns WALK_SLOW, having changed nothing.
 */
function fastLeaf(cpu: Cpu, vaLo: number, kind: number, ai: number, user: boolean, lo: number, hi: number, rw: number, xd: number, leafLevel: number, refs: number): number {
  if ((rw & PTE_A) === 0 || (kind === WRITE && (lo & PTE_D) === 0)) return SLOW;
  const U = (rw >>> 2) & 1;
  if (cpu.perm[(ai << 3) | U | (rw & PTE_RW) | ((xd >>> 29) & 4)] !== 0) return SLOW;
  if (U !== 0 && cpu.pke === true && pkeyDenies(cpu.pkru, (hi >>> PTE_HI_PK_SHIFT) & 0xf, kind, user, cpu.wp)) return SLOW;
  const c = cpu.c;
  c[C_WALKS]!++;
  c[C_WALK_REFS]! += refs;
  cpu.wN = 0;
  return translation(cpu, vaLo, lo, hi, leafLevel, rw, xd);
}

/** Bits of cpu.wW3 above the TLB entry's word 3: the translation's size and global flag. */
export const WOUT_SIZE_SHIFT = SIZE_SHIFT;
export const WOUT_GLOBAL = GLOBAL;
export const WOUT_W3_MASK = (1 << SIZE_SHIFT) - 1;

/**
 * The end of every successful walk: record the leaf and the rights combined over the levels
 * (wLeafLo/wLeafHi/wLevel/wRw/wXd, which tlbEntryWords() encodes for the TLB fill) and return
 * the physical address of the access.
 */
function translation(cpu: Cpu, vaLo: number, lo: number, hi: number, leafLevel: number, rw: number, xd: number): number {
  cpu.wLeafLo = lo;
  cpu.wLeafHi = hi;
  cpu.wLevel = leafLevel;
  cpu.wRw = rw;
  cpu.wXd = xd;
  const ah = hi & cpu.addrHi; // physical-address bits 51:32
  // Physical-address bits 31:0: the page's base bits from the leaf, the offset from the address.
  const low = (leafLevel === 1 ? (lo & 0xfffff000) | (vaLo & 0xfff) : leafLevel === 2 ? (lo & 0xffe00000) | (vaLo & 0x1fffff) : (lo & 0xc0000000) | (vaLo & 0x3fffffff)) >>> 0;
  return ah === 0 ? low : ah * 0x100000000 + low;
}

/**
 * The TLB-entry words of the last successful walk's translation: wPfnLo (frame number bits 31:0)
 * and wW3, which is word 3 of the entry with the size and the global flag above WOUT_W3_MASK.
 */
export function tlbEntryWords(cpu: Cpu): void {
  const lo = cpu.wLeafLo;
  const hi = cpu.wLeafHi;
  const leafLevel = cpu.wLevel;
  const rw = cpu.wRw;
  const ah = hi & cpu.addrHi;
  const base = leafLevel === 1 ? lo & 0xfffff000 : leafLevel === 2 ? lo & 0xffe00000 : lo & 0xc0000000;
  const pat = leafLevel === 1 ? (lo >>> 5) & 4 : (lo >>> 10) & 4; // the PAT bit (7, or 12 in a large leaf)
  cpu.wPfnLo = (base >>> 12) | (ah << 20);
  cpu.wW3 =
    ((leafLevel - 1) << SIZE_SHIFT) | // SIZE_4K, SIZE_2M, SIZE_1G
    (cpu.pge === true && (lo & PTE_G) !== 0 ? GLOBAL : 0) |
    (ah >>> 12) |
    ((rw & PTE_US) << 6) | // W3_U
    ((rw & PTE_RW) << 8) | // W3_W
    ((cpu.wXd >>> 21) & W3_XD) |
    ((lo & PTE_D) << 5) | // W3_D
    (((hi >>> PTE_HI_PK_SHIFT) & 0xf) << W3_PK_SHIFT) |
    ((pat | ((lo & PTE_PCD) >>> 3) | ((lo & PTE_PWT) >>> 3)) << W3_MT_SHIFT);
}

/**
 * Walk vaHi:vaLo from the root, or below a paging-structure-cache hit when `usePsc`: a fast
 * walker when one applies, else the general walker. Returns the physical address,
 * WALK_PF_RESULT or WALK_MC_RESULT (see walkGeneral).
 */
export function walk(cpu: Cpu, vaHi: number, vaLo: number, kind: number, ai: number, user: boolean, usePsc: boolean): number {
  if (usePsc && cpu.pscOn === true) return walkWithPsc(cpu, vaHi, vaLo, kind, ai, user);
  if (cpu.levels === 4) {
    const pa = walkFast4(cpu, vaHi, vaLo, kind, ai, user);
    if (pa !== SLOW) return pa;
  }
  return walkGeneral(cpu, vaHi, vaLo, kind, ai, user, cpu.levels, cpu.cr3Lo, cpu.cr3Hi, PTE_RW | PTE_US, 0);
}

function walkWithPsc(cpu: Cpu, vaHi: number, vaLo: number, kind: number, ai: number, user: boolean): number {
  if (cpu.pscLookup(vaHi, vaLo)) {
    if (cpu.pLevel === 1) {
      const pa = walkFastPte(cpu, vaLo, kind, ai, user, cpu.pTLo, cpu.pTHi, cpu.pRw, cpu.pXd);
      if (pa !== SLOW) return pa;
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
        return MC_RESULT;
      }
      const wi = ((tLo >>> 2) | 0) + idx * 2;
      // A watched table frame is reported before the entry is read: the observer may still write
      // the frame (the kernel writes a deferred poison there).
      if (cpu.watchWalks && cpu.watch[wi >>> 10] !== 0) cpu.watchTable(wi, vaHi, vaLo);
      lo = m[wi]!;
      hi = m[wi + 1]!;
      ei[n] = wi;
      elo[n] = lo;
      n++;
      if ((lo & PTE_P) === 0) {
        c[C_WALK_REFS]! += n;
        cpu.faultError = errorBits(cpu, kind, user);
        return PF_RESULT;
      }
      leaf = level === 1 || ((lo & PTE_PS) !== 0 && level <= 3);
      const ri = level * 2 + (leaf ? 1 : 0);
      if ((lo & rsvdLo[ri]!) | (hi & rsvdHi[ri]!)) {
        c[C_WALK_REFS]! += n;
        cpu.faultError = ERR_P | ERR_RSVD | errorBits(cpu, kind, user);
        return PF_RESULT;
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
    if (cpu.pke === true && U !== 0 && pkeyDenies(cpu.pkru, pk, kind, user, cpu.wp)) {
      pkDenied = true;
      denied = true;
    }
    if (denied) {
      cpu.faultError = ERR_P | errorBits(cpu, kind, user) | (pkDenied ? ERR_PK : 0);
      return PF_RESULT;
    }
    // ---- accessed / dirty (SDM §4.8): set only now that the access is permitted --------------
    let restart = false;
    for (let k = 0; k < n; k++) {
      const old = elo[k]!;
      const want = k === n - 1 && kind === WRITE ? PTE_A | PTE_D : PTE_A;
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
  if (kind === WRITE) e |= ERR_W;
  if (user) e |= ERR_U;
  if (kind === FETCH && (cpu.nxe || cpu.smep)) e |= ERR_ID;
  return e;
}
