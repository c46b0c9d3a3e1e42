/**
 * hw/cpu.ts — one logical processor: its control registers, its TLBs and paging-structure caches,
 * its counters and virtual clock, all stored in its block of the shared buffer, and the
 * instructions that use them: memory accesses, INVLPG, INVPCID, MOV to CR0/CR3/CR4, WRMSR EFER.
 *
 * An access runs: IPI delivery (the access boundary is where interrupts are taken), the canonical
 * check (#GP(0), or #SS(0) for stack accesses; no #PF, CR2 untouched), the L1 TLB of its side
 * (4 KiB, 2 MiB, 1 GiB arrays), the second-level TLB, then a page walk that may start from a
 * paging-structure-cache hit (SDM §4.10.3.2). A TLB hit is checked against the current CR0.WP,
 * CR4.SMEP/SMAP, RFLAGS.AC, EFER.NXE and PKRU; a write through an entry filled with D=0, or any
 * rights mismatch, drops the page's cached entries and re-walks before it can fault (§4.8,
 * §4.10.4.3). Every #PF invalidates the faulting page's TLB entries and the paging-structure-cache
 * entries that would be used for it (§4.10.4.1).
 *
 * Registers are written only by the thread that drives the CPU (as only a processor writes its own
 * registers). Views on other threads see the same registers and notice changes through a
 * generation word.
 *
 * Deviations: with CR0.PG=0 the linear address is used as the physical address unchanged (real,
 * protected and 32-bit modes are not modelled); CPL is 0 or 3 only.
 */

import * as layoutConsts from './layout.ts';
import type { CpuLayout } from './layout.ts';
import type { MachineConfig } from './config.ts';
import type { PhysicalMemory } from './phys.ts';
import * as crConsts from './control-registers.ts';
import { Flush, type Features, type RegState, type WriteDecision } from './control-registers.ts';
import * as pteConsts from './pte.ts';
import * as tlbConsts from './tlb.ts';
import { TlbArray } from './tlb.ts';
import * as walkConsts from './walk.ts';
import type { HwCostModel } from './cost.ts';
import { toVa, vaFromHalves, vaNumberFromHalves, type LinearAddress } from './address.ts';

// Every constant and helper this file uses from its sibling modules, bound to module-local
// constants. An imported binding is live, so optimized code reloads it from its module cell (with
// a hole check) at every use; a module-local const is folded to its value, which matters on the
// translation paths below.
const {
  A_HEAD, A_TAIL, C_CLOCK, C_CR3_NOFLUSH, C_CR3_WRITES, C_D_REWALKS, C_ENTRIES_FLUSHED, C_FETCH_L1_MISS, C_FETCH_LOOKUPS,
  C_FETCH_STLB_HIT, C_FETCH_STLB_MISS, C_FETCH_WALKS, C_FLUSH_ALL, C_FLUSH_PCID,
  C_GP_FAULTS, C_INVLPG, C_INVPCID, C_L1_HIT, C_L1_HIT_1G, C_L1_HIT_2M, C_L1_MISS, C_MACHINE_CHECKS, C_PAGE_FAULTS,
  C_PSC_HIT_PDE, C_PSC_HIT_PDPTE, C_PSC_HIT_PML4E, C_PSC_HIT_PML5E, C_RIGHTS_REWALKS, C_SS_FAULTS, C_STLB_HIT, C_STLB_MISS, C_WATCH_HITS,
  C_UNTRANSLATED, C_WALK_REFS, COUNTER_NAMES, ENTRY_WORDS, N_COUNTERS, R_CPL, R_HELD, R_CR0_HI, R_CR0_LO, R_CR2_HI, R_CR2_LO, R_CR3_HI, R_CR3_LO, R_CR4_HI, R_CR4_LO,
  R_ATTN, R_EFER_HI, R_EFER_LO, R_GEN, R_MODEGEN, R_PKRU, R_RFLAGS, R_STAMP, WATCH_RECORD_WORDS, WATCH_RING_RECORDS,
} = layoutConsts;
const {
  CR0_PG, CR0_WP, CR4_LA57, CR4_PCIDE, CR4_PGE, CR4_PKE, CR4_SMAP, CR4_SMEP, EFER_LMA, EFER_NXE, RFLAGS_AC, VEC_GP, VEC_MC, VEC_PF,
  VEC_SS, VEC_UD, decideCr0, decideCr3, decideCr4, decideEfer,
} = crConsts;
const { LEVEL_PDE, LEVEL_PDPTE, LEVEL_PML4E, LEVEL_PML5E, LEVEL_PTE, addrHiMask, reservedMasks } = pteConsts;
const {
  SIZE_1G, SIZE_2M, SIZE_4K, W1_GLOBAL, W1_PCID_MASK, W1_PCID_SHIFT, W1_VALID, W3_D, W3_PIECE_MASK, W3_PIECE_SHIFT, W3_PK_SHIFT, W3_RIGHTS_SHIFT, W3_U,
  vpnHi, vpnLo,
} = tlbConsts;
const { K_FETCH, K_READ, K_WRITE, WALK_MC_RESULT, WOUT_GLOBAL, WOUT_SIZE_SHIFT, WOUT_W3_MASK, computePermissionTable, pkeyDenies, tlbEntryWords, walk } = walkConsts;

export type AccessKind = 'read' | 'write' | 'fetch';

export interface AccessOptions {
  /** An implicit supervisor-mode access (GDT/IDT/TSS reads during event delivery): always supervisor. */
  implicit?: boolean;
  /** A stack (SS-relative) access: a non-canonical address raises #SS(0) instead of #GP(0). */
  stack?: boolean;
}

export type AccessResult<V extends LinearAddress = LinearAddress> =
  | { ok: true; pa: number }
  | { ok: false; vector: number; errorCode: number; cr2: V; reason?: string };

export type RegWriteResult = { ok: true } | { ok: false; vector: 13 | 6; errorCode: 0; reason: string };

/** What a watched-frame access looked like (see PhysicalMemory.watch). */
export interface WatchHit {
  cpu: number;
  /** 'read' | 'write' | 'fetch' | 'walk' (a paging-structure entry read during a walk). */
  kind: AccessKind | 'walk';
  va: bigint;
  pa: number;
  pfn: number;
  /** CPU clock when it happened. */
  cycles: number;
}

export const KIND_CODES: Record<AccessKind, number> = { read: K_READ, write: K_WRITE, fetch: K_FETCH };
const KIND_NAMES: AccessKind[] = ['read', 'write', 'fetch'];

/**
 * Physical address of byte `offset` of frame (w3 bits 7:0 : pfnLo), for frames at or above
 * 2^20, where it no longer fits in 32 bits (doubles hold it exactly: it is below 2^52).
 */
function wideAddress(w3: number, pfnLo: number, offset: number): number {
  return ((w3 & 0xff) * 0x100000000 + (pfnLo >>> 0)) * 4096 + offset;
}

/** Per-CPU statistics, named. */
export type CpuCounters = Record<string, number>;

export class Cpu {
  // The fields assigned in the constructor are `declare`d: a plain field declaration would first
  // define them as undefined, and V8 would then no longer know the kind of object a field holds
  // (every typed-array access on the translation path would recheck it).
  /** Block view: registers, mailbox, TLB arrays (Int32 words). */
  declare readonly r: Int32Array;
  /** Counters and virtual clock. */
  declare readonly c: Float64Array;
  declare readonly m: Int32Array;
  declare readonly watch: Uint8Array;
  /** An all-zero map of the same size, used by the fast walker when watching is off. */
  declare readonly noWatch: Uint8Array;
  declare readonly memSize: number;
  /** Installed memory in 32-bit words (memSize / 4: a small integer even for 4 GiB). */
  declare readonly memWords: number;
  declare readonly features: Features;
  declare readonly cost: HwCostModel;
  declare readonly clockGhz: number;

  declare readonly d4k: TlbArray;
  declare readonly d2m: TlbArray;
  declare readonly d1g: TlbArray;
  declare readonly i4k: TlbArray;
  declare readonly i2m: TlbArray;
  declare readonly i1g: TlbArray;
  declare readonly stlb: TlbArray;
  declare readonly stlb1g: TlbArray;
  declare readonly pscPml5e: TlbArray;
  declare readonly pscPml4e: TlbArray;
  declare readonly pscPdpte: TlbArray;
  declare readonly pscPde: TlbArray;
  declare readonly tlbArrays: TlbArray[];
  declare readonly pscArrays: TlbArray[];

  // ---- derived state, recomputed when R_GEN changes --------------------------------------------
  gen = -1;
  /** Last R_ATTN value handled: the hot path's one check for "registers changed or IPI waiting". */
  attn = -1;
  /** Shift that leaves the bits a canonical address repeats: 15 (4-level) or 24 (5-level). */
  canonShift = 15;
  /** PCID << 13 | valid: the tag word of a non-global L1 entry, minus the page-number bits. */
  pcidTag = 0;
  costHit = 0;
  /**
   * Bit (kind * 16 + (w3 >> 8 & 15)): may translate()'s shortcut serve an access of `kind` (read,
   * write) by the current CPL through an entry whose word 3 carries these U, W, XD, D bits? Clear
   * whenever protection keys could apply, so those cases take the full path. One 32-bit word, so
   * the check is a shift of a field instead of a table load.
   */
  hotBits = 0;
  /**
   * LRU clock of this CPU's TLB arrays, advanced by every L1 hit and every slow-path use or fill;
   * `slowTicks` counts the latter, so ticks − slowTicks are L1 hits not yet in the counters.
   */
  tick = 0;
  slowTicks = 0;
  private syncedTick = 0;
  private syncedSlow = 0;
  // The L1 4 KiB data array's geometry, copied out of its TlbArray for translate()'s shortcut.
  // Each is stored once, by the constructor, so V8 treats them as constant fields and folds them
  // into code that holds a particular CPU (a loop over one CPU's accesses).
  /** The arrays use exact LRU (hits must stamp their entry). */
  declare readonly lru: boolean;
  declare readonly d4kSetWords: number;
  /** Stamp word of entry word e is (e >> 2) + d4kStampDelta. */
  declare readonly d4kStampDelta: number;
  declare readonly d4kBase: number;
  declare readonly d4kMask: number;
  pg = false;
  la57 = false;
  levels = 4;
  pcide = false;
  pge = false;
  wp = false;
  smep = false;
  smap = false;
  pke = false;
  nxe = false;
  ac = false;
  cpl3 = false;
  pcid = 0;
  pkru = 0;
  cr3Lo = 0;
  cr3Hi = 0;
  declare addrHi: number;
  declare pscOn: boolean;
  readonly rsvdLo = new Int32Array(12);
  readonly rsvdHi = new Int32Array(12);
  /**
   * The fast walkers' copies of the reserved-bit masks (hw/walk.ts walkFast4): per level, for a
   * non-leaf entry (Nl, whose high mask also holds the address bits above 31: a next table there
   * is beyond installed memory) and for a leaf.
   */
  fw4NlLo = 0;
  fw4NlHi = 0;
  fw3NlLo = 0;
  fw3NlHi = 0;
  fw3LeafLo = 0;
  fw3LeafHi = 0;
  fw2NlLo = 0;
  fw2NlHi = 0;
  fw2LeafLo = 0;
  fw2LeafHi = 0;
  fw1Lo = 0;
  fw1Hi = 0;
  /** The permission table in force (one of permAc), see hw/walk.ts computePermissionTable. */
  perm = new Uint8Array(72);
  /** Permission tables for RFLAGS.AC = 0 and 1, recomputed when CR0/CR4/EFER change. */
  private readonly permAc = [new Uint8Array(72), new Uint8Array(72)];
  /** hotBits words for [CPL 0, CPL 3] × [AC 0, AC 1]. */
  private readonly hotTables = [0, 0, 0, 0];
  /** Last R_MODEGEN handled (CPL, RFLAGS.AC and PKRU changes: cheap to apply). */
  modegen = -1;

  // ---- walk outputs (hw/walk.ts writes them) ---------------------------------------------------
  readonly ei = new Int32Array(6);
  readonly elo = new Int32Array(6);
  wN = 0;
  wStartLevel = 4;
  wStartRw = 0;
  wStartXd = 0;
  /** The leaf of the last successful walk, its level, and the rights combined over the levels. */
  wLeafLo = 0;
  wLeafHi = 0;
  wLevel = 1;
  wRw = 0;
  wXd = 0;
  /** TLB words of the last walk's translation (filled by hw/walk.ts tlbEntryWords). */
  wPfnLo = 0;
  /** TLB word 3 of the last walk, with its size and global flag above WOUT_W3_MASK. */
  wW3 = 0;
  // paging-structure-cache probe outputs
  pLevel = 4;
  pTLo = 0;
  pTHi = 0;
  pRw = 0;
  pXd = 0;

  // ---- last fault -------------------------------------------------------------------------------
  faultVector = 0;
  faultError = 0;
  mcAddress = 0;
  faultReason = '';

  /** Report a walk that reads a watched table frame (set by the machine when watching is on). */
  watchWalks = true;
  /** Synchronous observer of watched-frame accesses (the kernel's KASAN hook). */
  onWatch: ((hit: WatchHit) => void) | null = null;
  /** Called at access boundaries when the mailbox holds messages (set by hw/apic.ts). */
  deliverIpis: (cpu: Cpu) => void = () => {};

  constructor(
    readonly index: number,
    sab: SharedArrayBuffer,
    blockByte: number,
    readonly layout: CpuLayout,
    cfg: MachineConfig,
    readonly mem: PhysicalMemory,
  ) {
    this.r = new Int32Array(sab, blockByte, layout.blockBytes / 4);
    this.c = new Float64Array(sab, blockByte + layout.countersByte, N_COUNTERS);
    this.m = mem.i32;
    this.watch = mem.watch;
    this.noWatch = mem.noWatch;
    this.memSize = mem.size;
    this.memWords = mem.size / 4;
    this.features = { maxPhyAddr: cfg.maxPhyAddr, la57: cfg.la57, pku: cfg.pku, pcid: cfg.pcid };
    this.cost = cfg.cost.hw;
    this.clockGhz = cfg.cost.clockGhz;
    this.addrHi = addrHiMask(cfg.maxPhyAddr);
    const a = layout.arrays;
    const rep = cfg.tlb.replacement;
    this.d4k = new TlbArray('l1d4k', this.r, a.l1d4k, rep, SIZE_4K, 12);
    this.d2m = new TlbArray('l1d2m', this.r, a.l1d2m, rep, SIZE_2M, 21);
    this.d1g = new TlbArray('l1d1g', this.r, a.l1d1g, rep, SIZE_1G, 30);
    if (cfg.tlb.unified) {
      this.i4k = this.d4k;
      this.i2m = this.d2m;
      this.i1g = this.d1g;
    } else {
      this.i4k = new TlbArray('l1i4k', this.r, a.l1i4k, rep, SIZE_4K, 12);
      this.i2m = new TlbArray('l1i2m', this.r, a.l1i2m, rep, SIZE_2M, 21);
      this.i1g = new TlbArray('l1i1g', this.r, a.l1i1g, rep, SIZE_1G, 30);
    }
    this.stlb = new TlbArray('stlb', this.r, a.stlb, rep, SIZE_4K, 12);
    this.stlb1g = new TlbArray('stlb1g', this.r, a.stlb1g, rep, SIZE_1G, 30);
    this.pscPml5e = new TlbArray('pml5e', this.r, a.pml5e, rep, 0, 48, true);
    this.pscPml4e = new TlbArray('pml4e', this.r, a.pml4e, rep, 0, 39, true);
    this.pscPdpte = new TlbArray('pdpte', this.r, a.pdpte, rep, 0, 30, true);
    this.pscPde = new TlbArray('pde', this.r, a.pde, rep, 0, 21, true);
    // A first-level array receives pieces of larger pages when the array of the larger size is
    // absent (see fillL1): 4 KiB arrays when there is no 2 MiB array, 2 MiB arrays when there is
    // no 1 GiB array.
    for (const [a4k, a2m, a1g] of [[this.d4k, this.d2m, this.d1g], [this.i4k, this.i2m, this.i1g]] as const) {
      a4k.holdsPieces = a2m.count === 0;
      a2m.holdsPieces = a2m.count > 0 && a1g.count === 0;
    }
    const uniq = new Set([this.d4k, this.d2m, this.d1g, this.i4k, this.i2m, this.i1g, this.stlb, this.stlb1g]);
    this.tlbArrays = [...uniq].filter((t) => t.present);
    this.pscArrays = [this.pscPml5e, this.pscPml4e, this.pscPdpte, this.pscPde].filter((t) => t.present);
    this.pscOn = cfg.psc.enabled && this.pscArrays.length > 0;
    this.lru = cfg.tlb.replacement === 'lru';
    this.tick = this.r[R_STAMP]!;
    this.syncedTick = this.tick;
    this.d4kBase = this.d4k.base;
    this.d4kMask = this.d4k.setMask;
    this.d4kSetWords = this.d4k.ways * ENTRY_WORDS;
    this.d4kStampDelta = this.d4k.stamps - (this.d4k.base >> 2);
    this.refresh();
  }

  // ======================================================================================
  // Register state
  // ======================================================================================

  private regState(): RegState {
    const r = this.r;
    return {
      cr0: r[R_CR0_LO]!,
      cr3: (BigInt(r[R_CR3_HI]! >>> 0) << 32n) | BigInt(r[R_CR3_LO]! >>> 0),
      cr4: r[R_CR4_LO]!,
      efer: r[R_EFER_LO]!,
    };
  }

  /** Recompute everything derived from the registers. */
  refresh(): void {
    const r = this.r;
    this.gen = r[R_GEN]!;
    const cr0 = r[R_CR0_LO]!;
    const cr4 = r[R_CR4_LO]!;
    const efer = r[R_EFER_LO]!;
    this.pg = (cr0 & CR0_PG) !== 0;
    this.wp = (cr0 & CR0_WP) !== 0;
    this.la57 = (cr4 & CR4_LA57) !== 0 && (efer & EFER_LMA) !== 0;
    this.levels = this.la57 ? 5 : 4;
    this.pcide = (cr4 & CR4_PCIDE) !== 0;
    this.pge = (cr4 & CR4_PGE) !== 0;
    this.smep = (cr4 & CR4_SMEP) !== 0;
    this.smap = (cr4 & CR4_SMAP) !== 0;
    this.pke = (cr4 & CR4_PKE) !== 0;
    this.nxe = (efer & EFER_NXE) !== 0;
    const cr3Lo = r[R_CR3_LO]!;
    this.pcid = this.pcide ? cr3Lo & 0xfff : 0;
    this.cr3Lo = cr3Lo & 0xfffff000;
    this.cr3Hi = r[R_CR3_HI]! & this.addrHi;
    this.pcidTag = (this.pcid << W1_PCID_SHIFT) | W1_VALID;
    this.costHit = this.cost.access + this.cost.tlbL1Hit;
    // The masks and tables below follow from CR0, CR4 and EFER alone: a CR3 load (every context
    // switch) leaves them as they are.
    const ctl = this.refreshedCtl;
    if (ctl[0] !== cr0 || ctl[1] !== cr4 || ctl[2] !== efer || ctl[3] !== 1) {
      ctl[0] = cr0;
      ctl[1] = cr4;
      ctl[2] = efer;
      ctl[3] = 1;
      this.refreshTables();
    }
    this.refreshMode();
    this.attn = Atomics.load(r, R_ATTN);
  }

  /** CR0, CR4 and EFER (low words) the tables were last computed for, and 1 once they were. */
  private readonly refreshedCtl = new Int32Array(4);

  /** Reserved-bit masks, the fast walkers' copies and the permission tables (see refresh). */
  private refreshTables(): void {
    const f = { maxPhyAddr: this.features.maxPhyAddr, nxe: this.nxe, gbPages: this.gbPages };
    for (let level = LEVEL_PTE; level <= LEVEL_PML5E; level++) {
      for (const leaf of [false, true]) {
        const [lo, hi] = reservedMasks(level, leaf, f);
        this.rsvdLo[level * 2 + (leaf ? 1 : 0)] = lo;
        this.rsvdHi[level * 2 + (leaf ? 1 : 0)] = hi;
      }
    }
    const rl = this.rsvdLo;
    const rh = this.rsvdHi;
    this.fw4NlLo = rl[8]!;
    this.fw4NlHi = rh[8]! | this.addrHi;
    this.fw3NlLo = rl[6]!;
    this.fw3NlHi = rh[6]! | this.addrHi;
    this.fw3LeafLo = rl[7]!;
    this.fw3LeafHi = rh[7]!;
    this.fw2NlLo = rl[4]!;
    this.fw2NlHi = rh[4]! | this.addrHi;
    this.fw2LeafLo = rl[5]!;
    this.fw2LeafHi = rh[5]!;
    this.fw1Lo = rl[3]!;
    this.fw1Hi = rh[3]!;
    for (let ac = 0; ac < 2; ac++) computePermissionTable(this.permAc[ac]!, this.wp, this.smep, this.smap, ac === 1, this.nxe);
    for (let t = 0; t < 4; t++) {
      const cpl3 = t >= 2;
      const perm = this.permAc[t & 1]!;
      let hot = 0;
      for (const kind of [K_READ, K_WRITE]) {
        for (let b = 0; b < 16; b++) {
          const rights = b & 7;
          const dirty = (b & 8) !== 0;
          const ai = (cpl3 ? 3 : 0) + kind;
          const ok = this.pg && perm[ai * 8 + rights] === 0 && (kind !== K_WRITE || dirty) && !(this.pke && (rights & 1) !== 0);
          if (ok) hot |= 1 << (kind * 16 + b);
        }
      }
      this.hotTables[t] = hot;
    }
    this.canonShift = this.la57 ? 24 : 15;
  }

  /** Apply CPL, RFLAGS.AC and PKRU (no table is recomputed: they only select one). */
  private refreshMode(): void {
    const r = this.r;
    this.modegen = r[R_MODEGEN]!;
    this.ac = (r[R_RFLAGS]! & RFLAGS_AC) !== 0;
    this.cpl3 = r[R_CPL] === 3;
    this.pkru = r[R_PKRU]! >>> 0;
    this.perm = this.permAc[this.ac ? 1 : 0]!;
    this.hotBits = this.hotTables[(this.cpl3 ? 2 : 0) + (this.ac ? 1 : 0)]!;
  }

  private get gbPages(): boolean {
    return this.stlb1gAllowed;
  }

  /** Set by the machine from the configuration (1 GiB pages supported). */
  stlb1gAllowed = true;

  private bump(): void {
    this.r[R_GEN] = (this.r[R_GEN]! + 1) | 0;
    Atomics.add(this.r, R_ATTN, 1);
    this.refresh();
  }

  /** A CPL, AC or PKRU change: other views re-read the mode; this one applies it directly. */
  private bumpMode(): void {
    this.r[R_MODEGEN] = (this.r[R_MODEGEN]! + 1) | 0;
    const attn = Atomics.add(this.r, R_ATTN, 1) + 1;
    this.refreshMode();
    if (this.attn === attn - 1) this.attn = attn;
  }

  readCr0(): bigint {
    return BigInt(this.r[R_CR0_LO]! >>> 0) | (BigInt(this.r[R_CR0_HI]! >>> 0) << 32n);
  }

  readCr2(): bigint {
    return BigInt(this.r[R_CR2_LO]! >>> 0) | (BigInt(this.r[R_CR2_HI]! >>> 0) << 32n);
  }

  readCr3(): bigint {
    return BigInt(this.r[R_CR3_LO]! >>> 0) | (BigInt(this.r[R_CR3_HI]! >>> 0) << 32n);
  }

  readCr4(): bigint {
    return BigInt(this.r[R_CR4_LO]! >>> 0) | (BigInt(this.r[R_CR4_HI]! >>> 0) << 32n);
  }

  readEfer(): bigint {
    return BigInt(this.r[R_EFER_LO]! >>> 0) | (BigInt(this.r[R_EFER_HI]! >>> 0) << 32n);
  }

  readPkru(): number {
    return this.r[R_PKRU]! >>> 0;
  }

  readAc(): boolean {
    return (this.r[R_RFLAGS]! & RFLAGS_AC) !== 0;
  }

  readCpl(): 0 | 3 {
    return this.r[R_CPL] === 3 ? 3 : 0;
  }

  /** The PCID translations are currently tagged with (0 unless CR4.PCIDE=1). */
  currentPcid(): number {
    if (this.r[R_GEN] !== this.gen) this.refresh();
    return this.pcid;
  }

  private regArg(v: unknown, what: string): bigint {
    if (typeof v !== 'bigint') throw new TypeError(`${what} value must be a bigint, got ${typeof v}`);
    if (v < 0n || v >= 1n << 64n) throw new RangeError(`${what} value 0x${v.toString(16)} is not a 64-bit unsigned value`);
    return v;
  }

  private applyDecision<T>(d: WriteDecision<T>, cost: number): RegWriteResult {
    this.charge(cost);
    if (!d.ok) {
      this.c[C_GP_FAULTS]!++;
      return { ok: false, vector: VEC_GP, errorCode: 0, reason: d.reason };
    }
    return { ok: true };
  }

  /** MOV to CR0. Returns the #GP as a value when the SDM rejects the write. */
  writeCr0(value: bigint): RegWriteResult {
    const d = decideCr0(this.regState(), this.regArg(value, 'CR0'));
    const res = this.applyDecision(d, this.cost.crWrite);
    if (!d.ok) return res;
    const r = this.r;
    const oldPg = (r[R_CR0_LO]! & CR0_PG) !== 0;
    r[R_CR0_LO] = d.value;
    r[R_CR0_HI] = 0;
    const pgNow = (d.value & CR0_PG) !== 0;
    if (pgNow && !oldPg) r[R_EFER_LO] = r[R_EFER_LO]! | EFER_LMA;
    if (!pgNow && oldPg) r[R_EFER_LO] = r[R_EFER_LO]! & ~EFER_LMA;
    this.bump();
    this.applyFlush(d.flush, d.flushPcid);
    return res;
  }

  /** MOV to CR3; with CR4.PCIDE=1, bit 63 of `value` asks for no flush and is not stored. */
  writeCr3(value: bigint): RegWriteResult {
    const v = this.regArg(value, 'CR3');
    const d = decideCr3(this.regState(), v, this.features);
    const res = this.applyDecision(d, this.cost.cr3Write);
    if (!d.ok) return res;
    const r = this.r;
    r[R_CR3_LO] = Number(d.value & 0xffffffffn) | 0;
    r[R_CR3_HI] = Number(d.value >> 32n) | 0;
    this.c[C_CR3_WRITES]!++;
    if (d.flush === Flush.None) this.c[C_CR3_NOFLUSH]!++;
    this.bump();
    this.recordPcidRoot(d.flushPcid, this.cr3Lo, this.cr3Hi);
    this.applyFlush(d.flush, d.flushPcid);
    return res;
  }

  writeCr4(value: bigint): RegWriteResult {
    const d = decideCr4(this.regState(), this.regArg(value, 'CR4'), this.features);
    const res = this.applyDecision(d, this.cost.crWrite);
    if (!d.ok) return res;
    this.r[R_CR4_LO] = d.value;
    this.r[R_CR4_HI] = 0;
    this.bump();
    this.recordPcidRoot(this.pcid, this.cr3Lo, this.cr3Hi);
    this.applyFlush(d.flush, d.flushPcid);
    return res;
  }

  /** WRMSR IA32_EFER. EFER.LMA is read-only (set by CR0.PG with LME). */
  writeEfer(value: bigint): RegWriteResult {
    const d = decideEfer(this.regState(), this.regArg(value, 'EFER'));
    const res = this.applyDecision(d, this.cost.crWrite);
    if (!d.ok) return res;
    this.r[R_EFER_LO] = d.value;
    this.r[R_EFER_HI] = 0;
    this.bump();
    this.applyFlush(d.flush, d.flushPcid);
    return res;
  }

  /** WRPKRU. Rights are applied at use time, so nothing is flushed. */
  setPkru(value: number): void {
    if (typeof value !== 'number' || !Number.isInteger(value) || value < 0 || value > 0xffffffff) {
      throw new RangeError(`PKRU must be an integer from 0 to 0xffffffff, got ${String(value)}`);
    }
    this.r[R_PKRU] = value | 0;
    this.bumpMode();
  }

  /** STAC/CLAC: set or clear RFLAGS.AC. */
  setAc(on: boolean): void {
    if (typeof on !== 'boolean') throw new TypeError(`setAc takes a boolean, got ${typeof on}`);
    this.r[R_RFLAGS] = on ? this.r[R_RFLAGS]! | RFLAGS_AC : this.r[R_RFLAGS]! & ~RFLAGS_AC;
    this.bumpMode();
  }

  /** Current privilege level: 0 (kernel) or 3 (user). */
  setCpl(cpl: 0 | 3): void {
    if (cpl !== 0 && cpl !== 3) throw new RangeError(`CPL must be 0 or 3, got ${String(cpl)}`);
    this.r[R_CPL] = cpl;
    this.bumpMode();
  }

  /** Load register state without checks or flushes (machine construction and snapshots). */
  loadRegisters(s: RegState & { pkru?: number; cpl?: 0 | 3; ac?: boolean }): void {
    const r = this.r;
    r[R_CR0_LO] = s.cr0;
    r[R_CR0_HI] = 0;
    r[R_CR3_LO] = Number(s.cr3 & 0xffffffffn) | 0;
    r[R_CR3_HI] = Number(s.cr3 >> 32n) | 0;
    r[R_CR4_LO] = s.cr4;
    r[R_CR4_HI] = 0;
    r[R_EFER_LO] = s.efer;
    r[R_EFER_HI] = 0;
    r[R_PKRU] = (s.pkru ?? 0) | 0;
    r[R_CPL] = s.cpl ?? 0;
    r[R_RFLAGS] = s.ac ? RFLAGS_AC : 0;
    this.bump();
    this.recordPcidRoot(this.pcid, this.cr3Lo, this.cr3Hi);
  }

  private recordPcidRoot(pcid: number, lo: number, hi: number): void {
    const i = this.layout.pcidRoots + pcid * 2;
    this.r[i] = lo;
    this.r[i + 1] = hi;
  }

  /** Physical base of the last root table loaded with `pcid` (for inspectors). */
  pcidRoot(pcid: number): number {
    const i = this.layout.pcidRoots + pcid * 2;
    return (this.r[i + 1]! >>> 0) * 0x100000000 + ((this.r[i]! & 0xfffff000) >>> 0);
  }

  // ======================================================================================
  // Invalidation (SDM §4.10.4.1)
  // ======================================================================================

  /**
   * Invalidate every TLB and paging-structure-cache entry, global ones included: what toggling
   * CR4.PGE does, without changing CR4.
   */
  flushEverything(): void {
    this.applyFlush(Flush.All, 0);
  }

  private applyFlush(kind: Flush, pcid: number): void {
    let n = 0;
    switch (kind) {
      case Flush.None:
        return;
      case Flush.PcidNonGlobal:
        for (const t of this.tlbArrays) n += t.clearPcid(pcid, false);
        for (const t of this.pscArrays) t.clearPcid(pcid, true);
        this.c[C_FLUSH_PCID]!++;
        break;
      case Flush.PcidAll:
        for (const t of this.tlbArrays) n += t.clearPcid(pcid, true);
        for (const t of this.pscArrays) t.clearPcid(pcid, true);
        this.c[C_FLUSH_PCID]!++;
        break;
      case Flush.All:
        for (const t of this.tlbArrays) n += t.clear();
        for (const t of this.pscArrays) t.clear();
        this.c[C_FLUSH_ALL]!++;
        this.charge(this.cost.flushAll);
        break;
    }
    this.c[C_ENTRIES_FLUSHED]! += n;
  }

  /**
   * INVLPG: the TLB entries for the page of `va` under the current PCID, global entries for that
   * page whatever their PCID, and every paging-structure-cache entry of the current PCID.
   * A non-canonical address makes INVLPG a no-op.
   */
  invlpg(va: LinearAddress): void {
    const [hi, lo] = toVa(va);
    this.invlpgHalves(hi, lo);
  }

  invlpgHalves(vaHi: number, vaLo: number): void {
    if (this.r[R_GEN] !== this.gen) this.refresh();
    this.c[C_INVLPG]!++;
    this.charge(this.cost.invlpg);
    if (!this.isCanonical(vaHi)) return;
    let n = 0;
    for (const t of this.tlbArrays) n += t.clearAddress(vaHi, vaLo, this.pcid, true);
    for (const t of this.pscArrays) t.clearPcid(this.pcid, true);
    this.c[C_ENTRIES_FLUSHED]! += n;
  }

  /**
   * INVPCID type 0–3 with the descriptor (pcid, va). Returns #UD when the CPU has no INVPCID and
   * #GP(0) for the SDM's cases: type > 3; bits 63:12 of the descriptor's first quadword set; a
   * non-canonical address with type 0; PCID ≠ 0 with CR4.PCIDE = 0 for types 0 and 1.
   */
  invpcid(type: number, pcid: number | bigint, va: LinearAddress = 0n): RegWriteResult {
    if (!Number.isInteger(type) || type < 0) throw new RangeError(`INVPCID type must be a non-negative integer, got ${String(type)}`);
    if (this.r[R_GEN] !== this.gen) this.refresh();
    if (!this.invpcidSupported) return { ok: false, vector: VEC_UD, errorCode: 0, reason: 'INVPCID is not supported by this CPU' };
    const desc = BigInt(pcid);
    if (type > 3) return this.gpFault(`INVPCID type ${type} is not defined`);
    if (desc < 0n || desc >> 12n !== 0n) return this.gpFault('INVPCID descriptor bits 63:12 are reserved and must be 0');
    const p = Number(desc);
    const [hi, lo] = toVa(va);
    if (type === 0 && !this.isCanonical(hi)) return this.gpFault('INVPCID type 0 with a non-canonical linear address');
    if (type <= 1 && p !== 0 && !this.pcide) return this.gpFault('INVPCID type 0/1 with PCID ≠ 0 while CR4.PCIDE=0');
    this.c[C_INVPCID]!++;
    let n = 0;
    switch (type) {
      case 0:
        this.charge(this.cost.invpcidAddr);
        for (const t of this.tlbArrays) n += t.clearAddress(hi, lo, p, false);
        for (const t of this.pscArrays) t.clearPcid(p, true);
        break;
      case 1:
        this.charge(this.cost.invpcidContext);
        for (const t of this.tlbArrays) n += t.clearPcid(p, false);
        for (const t of this.pscArrays) t.clearPcid(p, true);
        break;
      case 2:
        this.charge(this.cost.invpcidContext);
        for (const t of this.tlbArrays) n += t.clear();
        for (const t of this.pscArrays) t.clear();
        break;
      case 3:
        this.charge(this.cost.invpcidContext);
        for (const t of this.tlbArrays) n += t.clearNonGlobal();
        for (const t of this.pscArrays) t.clear();
        break;
    }
    this.c[C_ENTRIES_FLUSHED]! += n;
    return { ok: true };
  }

  /** Set by the machine from the configuration. */
  invpcidSupported = true;

  private gpFault(reason: string): RegWriteResult {
    this.c[C_GP_FAULTS]!++;
    return { ok: false, vector: VEC_GP, errorCode: 0, reason };
  }

  /** The invalidation a #PF performs: the page's TLB entries and the PSC entries on its path. */
  private faultInvalidate(vaHi: number, vaLo: number): void {
    // An array whose R_HELD bits are clear holds nothing to invalidate: skipped without a call
    // (invalidation only clears bits, so one read of the word serves the whole loop).
    const held = this.r[R_HELD]!;
    let n = 0;
    const tlbs = this.tlbArrays;
    for (let i = 0; i < tlbs.length; i++) {
      const t = tlbs[i]!;
      if ((held & t.heldAll) !== 0) n += t.clearAddress(vaHi, vaLo, this.pcid, true);
    }
    if (this.pscOn === true) {
      const pcid = this.pcid;
      const pscs = this.pscArrays;
      for (let i = 0; i < pscs.length; i++) {
        const t = pscs[i]!;
        if ((held & t.heldAll) === 0) continue;
        const e = t.lookup(vpnLo(vaHi, vaLo, t.shift), vpnHi(vaHi, t.shift), pcid, 0);
        if (e >= 0) t.kill(e);
      }
    }
    this.c[C_ENTRIES_FLUSHED]! += n;
  }

  /** Drop every cached translation of this page under the current PCID before a re-walk. */
  private dropPage(vaHi: number, vaLo: number): void {
    for (const t of this.tlbArrays) t.clearAddress(vaHi, vaLo, this.pcid, true);
  }

  isCanonical(vaHi: number): boolean {
    const top = this.la57 ? vaHi >> 24 : vaHi >> 15;
    return top === 0 || top === -1;
  }

  // ======================================================================================
  // Costs and clocks
  // ======================================================================================

  charge(cycles: number): void {
    this.c[C_CLOCK]! += cycles;
  }

  chargeAd(): void {
    this.c[C_CLOCK]! += this.cost.adUpdate;
  }

  /** This CPU's virtual clock, in cycles. */
  get cycles(): number {
    // With no L1 hit since the last sync() there is nothing to fold in (sync() would only
    // rewrite the same values): the engine reads every CPU's clock at every step.
    if (this.tick !== this.syncedTick) this.sync();
    return this.c[C_CLOCK]!;
  }

  set cycles(v: number) {
    this.sync();
    this.c[C_CLOCK] = v;
  }

  get micros(): number {
    return this.cycles / (this.clockGhz * 1000);
  }

  /**
   * The counters by name. Three are derived rather than counted, to keep the TLB-hit path short:
   * accesses = L1 hits + L1 misses + untranslated accesses; l1Hits4k = L1 hits − 2 MiB − 1 GiB hits.
   */
  counters(): CpuCounters {
    this.sync();
    const out: CpuCounters = {};
    for (const [i, name] of Object.entries(COUNTER_NAMES)) out[name] = this.c[Number(i)]!;
    out.accesses = out.l1Hits! + out.l1Misses! + out.untranslated!;
    out.l1Hits4k = out.l1Hits! - out.l1Hits2m! - out.l1Hits1g!;
    return out;
  }

  resetCounters(keepClock = true): void {
    this.sync();
    const clock = this.c[C_CLOCK]!;
    this.c.fill(0);
    this.walkRefsCharged[0] = 0;
    if (keepClock) this.c[C_CLOCK] = clock;
  }

  // ======================================================================================
  // Translation
  // ======================================================================================

  /**
   * The public access: translate `va` for `kind` and report the result the way the hardware
   * would see it. Does not read or write the data.
   */
  access<V extends LinearAddress>(va: V, kind: AccessKind, opts?: AccessOptions): AccessResult<V> {
    const code = KIND_CODES[kind];
    if (code === undefined) throw new TypeError(`access kind must be "read", "write" or "fetch", got ${String(kind)}`);
    if (opts !== undefined && (typeof opts !== 'object' || opts === null)) throw new TypeError('access options must be an object');
    const [hi, lo] = toVa(va);
    if (this.translate(hi, lo, code, opts?.implicit === true, opts?.stack === true) === 0) return { ok: true, pa: this.pa };
    const cr2: LinearAddress = typeof va === 'bigint' ? this.readCr2() : vaNumberFromHalves(this.r[R_CR2_HI]!, this.r[R_CR2_LO]!);
    return { ok: false, vector: this.faultVector, errorCode: this.faultError, cr2: cr2 as V, ...(this.faultReason ? { reason: this.faultReason } : {}) };
  }

  /** Physical address produced by the last successful translate(). */
  pa = 0.5;

  /**
   * Translate vaHi:vaLo for an access of `kind` (0 read, 1 write, 2 fetch). Returns 0 with the
   * physical address in `this.pa`, or -1 with faultVector/faultError set (and CR2 written for
   * #PF). The status/field split keeps the physical address unboxed on this hot path.
   */
  translate(vaHi: number, vaLo: number, kind: number, implicit: boolean, stack: boolean): number {
    // The common case — an L1 hit on a non-global 4 KiB data entry whose cached rights already
    // allow the access — is decided here in few enough bytecodes that V8 inlines this method
    // into its callers; everything else, and every doubtful case, goes to translateFull, which
    // decides the same cases the same way. V8 inlines functions of fewer than 460 bytes of
    // bytecode and this one is just under (452; check with node --print-bytecode after any
    // change). Arithmetic on entry indices is kept in int32 (`| 0`, Math.imul) so the optimized
    // code needs no overflow checks.
    // Canonical: top ∈ {0, -1} ⇔ (top + 1) >>> 1 === 0.
    const r = this.r;
    if (r[R_ATTN] === this.attn && kind !== K_FETCH && !implicit && ((vaHi >> this.canonShift) + 1) >>> 1 === 0) {
      const vLo = (vaLo >>> 12) | (vaHi << 20);
      const tag = ((vaHi >>> 12) & 0x1fff) | this.pcidTag;
      let e = (this.d4kBase + Math.imul(vLo & this.d4kMask, this.d4kSetWords)) | 0;
      for (const end = (e + this.d4kSetWords) | 0; e < end; e = (e + ENTRY_WORDS) | 0) {
        if (r[e] !== vLo || r[e + 1] !== tag) continue;
        const w3 = r[e + 3]!;
        // hotBits: rights allow it, D is set for a write, and no protection key applies.
        if (((this.hotBits >>> ((kind << 4) | ((w3 >>> W3_RIGHTS_SHIFT) & 15))) & 1) === 0) break;
        // Counted lazily: a hit only advances `tick`; sync() turns ticks into hits and cycles.
        const t = (this.tick + 1) | 0;
        this.tick = t;
        if (this.lru === true) r[((e >> 2) + this.d4kStampDelta) | 0] = t;
        // Frame numbers below 2^20 (the first 4 GiB, all that can be installed) give the
        // physical address in uint32 arithmetic; the general form is exact in doubles.
        const pfn = r[e + 2]!;
        const pa = ((pfn >>> 20) | (w3 & 0xff)) === 0 ? ((pfn << 12) | (vaLo & 0xfff)) >>> 0 : wideAddress(w3, pfn, vaLo & 0xfff);
        this.pa = pa;
        // The low word of the frame number indexes the watch map; a frame beyond it is beyond
        // installed memory (undefined here, and watchCheck ignores it).
        if (this.watch[pfn] !== 0) this.watchCheck(pa, vaHi, vaLo, kind);
        return 0;
      }
    }
    return this.translateFull(vaHi, vaLo, kind, implicit, stack);
  }

  /** Every translation case; see translate() for the shortcut in front of it. */
  translateFull(vaHi: number, vaLo: number, kind: number, implicit: boolean, stack: boolean): number {
    const r = this.r;
    if (r[R_ATTN] !== this.attn) this.attention();
    if (this.pg !== true) return this.translateUnpaged(vaHi, vaLo, kind);
    const top = vaHi >> this.canonShift;
    if (top !== 0 && top !== -1) return this.nonCanonical(stack);
    const user = this.cpl3 === true && !implicit;
    const ai = user ? 3 + kind : implicit ? 6 + kind : kind;
    if (kind === K_FETCH) this.c[C_FETCH_LOOKUPS]!++;
    // ---- L1 TLB, 4 KiB array of this side (global entries and every access kind) -------------
    const t = kind === K_FETCH ? this.i4k : this.d4k;
    const e = t.lookup((vaLo >>> 12) | (vaHi << 20), (vaHi >>> 12) & 0x1fff, this.pcid, SIZE_4K);
    if (e >= 0) {
      const w3 = r[e + 3]!;
      if (this.perm[(ai << 3) | ((w3 >>> W3_RIGHTS_SHIFT) & 7)] !== 0 || (kind === K_WRITE && (w3 & W3_D) === 0) || ((w3 & W3_U) !== 0 && this.pke === true && this.pkeyBlocks(w3, kind, user))) {
        return this.rewalk(vaHi, vaLo, kind, ai, user, w3, true);
      }
      const tk = (this.tick + 1) | 0; // counted by sync(), as in translate()
      this.tick = tk;
      if (this.lru === true) r[t.stamps + ((e - t.base) >> 2)] = tk;
      const pfn = r[e + 2]!;
      const pa = ((pfn >>> 20) | (w3 & 0xff)) === 0 ? ((pfn << 12) | (vaLo & 0xfff)) >>> 0 : wideAddress(w3, pfn, vaLo & 0xfff);
      this.pa = pa;
      if (this.watch[pfn] !== 0) this.watchCheck(pa, vaHi, vaLo, kind);
      return 0;
    }
    return this.translateSlow(vaHi, vaLo, kind, ai, user);
  }

  /** Does PKRU deny this data access to a user page (cached entry word 3)? */
  private pkeyBlocks(w3: number, kind: number, user: boolean): boolean {
    return pkeyDenies(this.pkru, (w3 >>> W3_PK_SHIFT) & 0xf, kind, user, this.wp);
  }

  /** Registers changed or an IPI is waiting (the R_ATTN word moved). */
  private attention(): void {
    this.attn = Atomics.load(this.r, R_ATTN);
    if (this.r[R_GEN] !== this.gen) this.refresh();
    else if (this.r[R_MODEGEN] !== this.modegen) this.refreshMode();
    if (this.r[A_TAIL] !== this.r[A_HEAD]) this.deliverIpis(this);
  }

  private translateUnpaged(vaHi: number, vaLo: number, kind: number): number {
    this.c[C_CLOCK]! += this.cost.access;
    this.c[C_UNTRANSLATED]!++;
    const pa = (vaHi >>> 0) * 0x100000000 + (vaLo >>> 0);
    this.pa = pa;
    this.watchCheck(pa, vaHi, vaLo, kind);
    return 0;
  }

  private nonCanonical(stack: boolean): number {
    this.c[C_CLOCK]! += this.cost.access;
    this.c[C_UNTRANSLATED]!++;
    this.faultVector = stack ? VEC_SS : VEC_GP;
    this.faultError = 0;
    this.faultReason = 'non-canonical linear address';
    this.c[stack ? C_SS_FAULTS : C_GP_FAULTS]!++;
    return -1;
  }

  /** May a cached entry with w3 serve this access without a walk? */
  private usable(w3: number, kind: number, ai: number, user: boolean): boolean {
    if (this.perm[ai * 8 + ((w3 >>> W3_RIGHTS_SHIFT) & 7)] !== 0) return false;
    if (kind === K_WRITE && (w3 & W3_D) === 0) return false;
    if (this.pke === true && (w3 & W3_U) !== 0 && pkeyDenies(this.pkru, (w3 >>> W3_PK_SHIFT) & 0xf, kind, user, this.wp)) return false;
    return true;
  }

  /**
   * A cached entry matched but cannot serve this access (a write through D=0, or stricter
   * rights): drop the page's cached entries and walk. `countMiss` is false when the L1 miss was
   * already counted (the entry was found in the second-level TLB).
   */
  private rewalk(vaHi: number, vaLo: number, kind: number, ai: number, user: boolean, w3: number, countMiss: boolean): number {
    this.c[C_CLOCK]! += this.cost.access;
    if (kind === K_WRITE && (w3 & W3_D) === 0 && this.perm[ai * 8 + ((w3 >>> W3_RIGHTS_SHIFT) & 7)] === 0) this.c[C_D_REWALKS]!++;
    else this.c[C_RIGHTS_REWALKS]!++;
    if (countMiss) {
      this.c[C_L1_MISS]!++;
      if (kind === K_FETCH) this.c[C_FETCH_L1_MISS]!++;
    }
    this.dropPage(vaHi, vaLo);
    return this.walkAndFill(vaHi, vaLo, kind, ai, user);
  }

  /** L1 2 MiB / 1 GiB arrays, then the second-level TLB, then the walk. */
  private translateSlow(vaHi: number, vaLo: number, kind: number, ai: number, user: boolean): number {
    const c = this.c;
    const fetch = kind === K_FETCH;
    // An array (or page size) whose R_HELD bit is clear holds nothing: its probe is skipped
    // without a call. Probes only fill (set bits) on their way out, so one read of R_HELD serves.
    const held = this.r[R_HELD]!;
    const l2m = fetch ? this.i2m : this.d2m;
    const l1g = fetch ? this.i1g : this.d1g;
    if (((held & l2m.heldAll) !== 0 && this.probe(l2m, SIZE_2M, 21, C_L1_HIT_2M, vaHi, vaLo, kind, ai, user)) || ((held & l1g.heldAll) !== 0 && this.probe(l1g, SIZE_1G, 30, C_L1_HIT_1G, vaHi, vaLo, kind, ai, user))) {
      return this.probeResult;
    }
    c[C_L1_MISS]!++;
    if (fetch) c[C_FETCH_L1_MISS]!++;
    // ---- second-level TLB ---------------------------------------------------------------------
    const st = this.stlb;
    if (
      ((held & st.heldSmall) !== 0 && this.probe(st, SIZE_4K, 12, -1, vaHi, vaLo, kind, ai, user)) ||
      ((held & st.heldLarge) !== 0 && this.probe(st, SIZE_2M, 21, -1, vaHi, vaLo, kind, ai, user)) ||
      ((held & this.stlb1g.heldAll) !== 0 && this.probe(this.stlb1g, SIZE_1G, 30, -1, vaHi, vaLo, kind, ai, user))
    ) {
      return this.probeResult;
    }
    c[C_STLB_MISS]!++;
    if (fetch) c[C_FETCH_STLB_MISS]!++;
    c[C_CLOCK]! += this.cost.access;
    return this.walkAndFill(vaHi, vaLo, kind, ai, user);
  }

  private probeResult = 0;

  /**
   * Look `t` up for a translation of `size`. On a usable hit set this.pa (and, for the
   * second-level TLB, fill the L1 array) and return true with probeResult 0; on a hit that
   * cannot serve the access, re-walk and return true with the walk's result; on a miss, false.
   * `l1Counter` is the L1 hit counter to bump, or -1 for the second-level TLB.
   */
  private probe(t: TlbArray, size: number, shift: number, l1Counter: number, vaHi: number, vaLo: number, kind: number, ai: number, user: boolean): boolean {
    if (t.count === 0) return false;
    const e = t.lookup(vpnLo(vaHi, vaLo, shift), vpnHi(vaHi, shift), this.pcid, size);
    if (e < 0) return false;
    const r = this.r;
    const w3 = r[e + 3]!;
    if (!this.usable(w3, kind, ai, user)) {
      this.probeResult = this.rewalk(vaHi, vaLo, kind, ai, user, w3, l1Counter >= 0);
      return true;
    }
    t.touch(e, this.nextStamp());
    if (l1Counter >= 0) {
      this.c[C_L1_HIT]!++;
      this.c[l1Counter]!++;
      this.c[C_CLOCK]! += this.cost.access + this.cost.tlbL1Hit;
    } else {
      this.c[C_STLB_HIT]!++;
      if (kind === K_FETCH) this.c[C_FETCH_STLB_HIT]!++;
      this.c[C_CLOCK]! += this.cost.access + this.cost.stlbHit;
      const w1 = r[e + 1]!;
      this.fillL1(vaHi, vaLo, kind === K_FETCH, size, (w1 & W1_GLOBAL) !== 0, r[e + 2]!, w3, (w1 & W1_PCID_MASK) >>> W1_PCID_SHIFT);
    }
    this.probeResult = this.finish(this.paOf(e, size, vaLo), vaHi, vaLo, kind);
    return true;
  }

  /** A stamp for a slow-path TLB use or fill (not an L1 hit; see sync()). */
  private nextStamp(): number {
    this.slowTicks = (this.slowTicks + 1) | 0;
    const t = (this.tick + 1) | 0;
    this.tick = t;
    return t;
  }

  /**
   * Take over this CPU after another thread drove it: reload the LRU clock from the buffer.
   * (The other thread synced its pending hits before letting go.)
   */
  adopt(): void {
    this.tick = this.r[R_STAMP]!;
    this.syncedTick = this.tick;
    this.slowTicks = 0;
    this.syncedSlow = 0;
    // The other thread charged its own walks' references.
    this.walkRefsCharged[0] = this.c[C_WALK_REFS]!;
    this.refresh();
  }

  /**
   * Fold the L1 hits counted only as `tick` advances into the shared counters: each is one L1
   * hit and `costHit` cycles. Every reader of the clock or the counters calls this first.
   */
  sync(): void {
    const hits = ((this.tick - this.syncedTick) - (this.slowTicks - this.syncedSlow)) | 0;
    if (hits !== 0) {
      this.c[C_L1_HIT]! += hits;
      this.c[C_CLOCK]! += hits * this.costHit;
    }
    this.syncedTick = this.tick;
    this.syncedSlow = this.slowTicks;
    this.r[R_STAMP] = this.tick;
  }

  private paOf(e: number, size: number, vaLo: number): number {
    const r = this.r;
    const base = ((r[e + 3]! & 0xff) * 0x100000000 + (r[e + 2]! >>> 0)) * 4096;
    return base + (size === SIZE_4K ? vaLo & 0xfff : size === SIZE_2M ? vaLo & 0x1fffff : vaLo & 0x3fffffff);
  }

  private walkAndFill(vaHi: number, vaLo: number, kind: number, ai: number, user: boolean): number {
    const pa = walk(this, vaHi, vaLo, kind, ai, user, true);
    if (kind === K_FETCH) this.c[C_FETCH_WALKS]!++;
    this.chargeWalk();
    if (pa < 0) {
      if (pa === WALK_MC_RESULT) {
        this.faultVector = VEC_MC;
        this.faultError = 0;
        this.faultReason = `paging-structure entry at physical 0x${this.mcAddress.toString(16)} is beyond installed memory`;
        this.c[C_MACHINE_CHECKS]!++;
        return -1;
      }
      this.faultVector = VEC_PF;
      this.faultReason = '';
      this.r[R_CR2_LO] = vaLo;
      this.r[R_CR2_HI] = vaHi;
      this.c[C_PAGE_FAULTS]!++;
      this.charge(this.cost.pageFault);
      this.faultInvalidate(vaHi, vaLo);
      return -1;
    }
    // Fill: second-level TLB, then the L1 array of this side.
    tlbEntryWords(this);
    const out = this.wW3;
    const size = (out >>> WOUT_SIZE_SHIFT) & 3;
    const g = (out & WOUT_GLOBAL) !== 0;
    const w3 = out & WOUT_W3_MASK;
    const shift = size === SIZE_4K ? 12 : size === SIZE_2M ? 21 : 30;
    const st = size === SIZE_1G ? this.stlb1g : this.stlb;
    if (st.count !== 0) st.insert(vpnLo(vaHi, vaLo, shift), vpnHi(vaHi, shift), this.pcid, size, g, this.wPfnLo, w3, this.nextStamp());
    this.fillL1(vaHi, vaLo, kind === K_FETCH, size, g, this.wPfnLo, w3, this.pcid);
    if (this.pscOn === true && this.wN > 1) this.fillPsc(vaHi, vaLo);
    return this.finish(pa, vaHi, vaLo, kind);
  }

  /**
   * The value of C_WALK_REFS up to which walks have been charged. Kept in a Float64Array rather
   * than a field: the counter is a double, and a field that starts as a small integer and later
   * holds a double changes the Cpu's hidden class, which deoptimizes every hot function that
   * has seen the old one.
   */
  private readonly walkRefsCharged = new Float64Array(1);
  /** Charge the walk's memory references: walk.ts counted them in C_WALK_REFS. */
  private chargeWalk(): void {
    // Charged incrementally from the counter so restarts and PSC hits are priced correctly.
    const now = this.c[C_WALK_REFS]!;
    const refs = now - this.walkRefsCharged[0]!;
    this.walkRefsCharged[0] = now;
    this.c[C_CLOCK]! += refs * this.cost.walkMemRef;
  }

  /**
   * Put a translation into the L1 array of its size on this side. If that array does not exist,
   * the translation is cached as a smaller piece (SDM §4.10.2.3 allows it): 1 GiB → 2 MiB → 4 KiB.
   */
  private fillL1(vaHi: number, vaLo: number, fetch: boolean, size: number, g: boolean, w2: number, w3: number, pcid: number): void {
    let s = size;
    let pfnLo = w2;
    let pfnHiW3 = w3;
    while (s > SIZE_4K && this.l1Array(fetch, s).count === 0) {
      // Splinter: keep only the piece containing va.
      const pieceShift = s === SIZE_1G ? 21 : 12;
      const pieceIndex = s === SIZE_1G ? (vaLo >>> 21) & 0x1ff : (vaLo >>> 12) & 0x1ff;
      const pfn = (w3 & 0xff) * 0x100000000 + (pfnLo >>> 0) + pieceIndex * (pieceShift === 21 ? 512 : 1);
      pfnLo = Number(BigInt(pfn) & 0xffffffffn) | 0;
      pfnHiW3 = (w3 & ~0xff) | Math.floor(pfn / 0x100000000);
      s--;
    }
    // Mark a piece with the size of the whole page, so invalidations find every piece.
    if (s < size) pfnHiW3 = (pfnHiW3 & ~W3_PIECE_MASK) | (size << W3_PIECE_SHIFT);
    const t = this.l1Array(fetch, s);
    if (t.count === 0) return;
    const shift = s === SIZE_4K ? 12 : s === SIZE_2M ? 21 : 30;
    t.insert(vpnLo(vaHi, vaLo, shift), vpnHi(vaHi, shift), pcid, s, g, pfnLo, pfnHiW3, this.nextStamp());
  }

  /** The first-level array of one side for one size code. */
  private l1Array(fetch: boolean, size: number): TlbArray {
    if (size === SIZE_4K) return fetch ? this.i4k : this.d4k;
    if (size === SIZE_2M) return fetch ? this.i2m : this.d2m;
    return fetch ? this.i1g : this.d1g;
  }

  /** Cache the non-leaf entries this walk read (SDM §4.10.3.1: only P=1, no reserved bits, A=1). */
  private fillPsc(vaHi: number, vaLo: number): void {
    const n = this.wN;
    let level = this.wStartLevel;
    let rw = this.wStartRw;
    let xd = this.wStartXd;
    for (let k = 0; k < n - 1; k++, level--) {
      const wi = this.ei[k]!;
      const lo = this.elo[k]!;
      const hi = this.m[wi + 1]!;
      rw &= lo;
      xd |= hi;
      const t = level === LEVEL_PML5E ? this.pscPml5e : level === LEVEL_PML4E ? this.pscPml4e : level === LEVEL_PDPTE ? this.pscPdpte : this.pscPde;
      if (t.count === 0) continue;
      const tableLo = lo & 0xfffff000;
      const tableHi = hi & this.addrHi;
      const w2 = (tableLo >>> 12) | (tableHi << 20);
      const w3 = ((tableHi >>> 12) & 0xff) | (rw & 4 ? W3_U : 0) | (rw & 2 ? 1 << 9 : 0) | (xd & 0x80000000 ? 1 << 10 : 0);
      t.insert(vpnLo(vaHi, vaLo, t.shift), vpnHi(vaHi, t.shift), this.pcid, 0, false, w2, w3, this.nextStamp());
    }
  }

  /**
   * Probe the paging-structure caches from the lowest level up (SDM §4.10.3.2). On a hit the
   * walk starts below the cached entry with its accumulated rights; otherwise at the root.
   */
  pscLookup(vaHi: number, vaLo: number): boolean {
    // A cache whose R_HELD bit is clear holds nothing: its probe is skipped without a call.
    const held = this.r[R_HELD]!;
    if (
      ((held & this.pscPde.heldAll) !== 0 && this.pscProbe(this.pscPde, LEVEL_PTE, C_PSC_HIT_PDE, vaHi, vaLo)) ||
      ((held & this.pscPdpte.heldAll) !== 0 && this.pscProbe(this.pscPdpte, LEVEL_PDE, C_PSC_HIT_PDPTE, vaHi, vaLo)) ||
      ((held & this.pscPml4e.heldAll) !== 0 && this.pscProbe(this.pscPml4e, LEVEL_PDPTE, C_PSC_HIT_PML4E, vaHi, vaLo)) ||
      (this.la57 === true && (held & this.pscPml5e.heldAll) !== 0 && this.pscProbe(this.pscPml5e, LEVEL_PML4E, C_PSC_HIT_PML5E, vaHi, vaLo))
    ) {
      return true;
    }
    this.pLevel = this.levels;
    this.pTLo = this.cr3Lo;
    this.pTHi = this.cr3Hi;
    return false;
  }

  /** One paging-structure cache of pscLookup(): on a hit, set the p* outputs (the walk starts at `next`). */
  private pscProbe(t: TlbArray, next: number, counter: number, vaHi: number, vaLo: number): boolean {
    const e = t.lookup(vpnLo(vaHi, vaLo, t.shift), vpnHi(vaHi, t.shift), this.pcid, 0);
    if (e < 0) return false;
    const r = this.r;
    const w2 = r[e + 2]!;
    const w3 = r[e + 3]!;
    this.pLevel = next;
    this.pTLo = w2 << 12;
    this.pTHi = ((w2 >>> 20) | ((w3 & 0xff) << 12)) & this.addrHi;
    this.pRw = (w3 & W3_U ? 4 : 0) | (w3 & (1 << 9) ? 2 : 0);
    this.pXd = w3 & (1 << 10) ? 0x80000000 | 0 : 0;
    t.touch(e, this.nextStamp());
    this.c[counter]!++;
    this.c[C_CLOCK]! += this.cost.pscHit;
    return true;
  }

  private finish(pa: number, vaHi: number, vaLo: number, kind: number): number {
    this.pa = pa;
    if (pa < this.memSize && this.watch[pa >>> 12] !== 0) this.watchCheck(pa, vaHi, vaLo, kind);
    return 0;
  }

  // ======================================================================================
  // Frame watch (the hardware half of the kernel's use-after-free detector)
  // ======================================================================================

  private watchCheck(pa: number, vaHi: number, vaLo: number, kind: number): void {
    if (pa >= this.memSize) return;
    const pfn = pa >>> 12;
    if (this.watch[pfn] === 0) return;
    this.recordWatch({ cpu: this.index, kind: KIND_NAMES[kind]!, va: vaFromHalves(vaHi, vaLo), pa, pfn, cycles: this.cycles });
  }

  /** A walk read a paging-structure entry from a watched frame. */
  watchTable(wordIndex: number, vaHi: number, vaLo: number): void {
    const pa = wordIndex * 4;
    this.recordWatch({ cpu: this.index, kind: 'walk', va: vaFromHalves(vaHi, vaLo), pa, pfn: pa >>> 12, cycles: this.cycles });
  }

  private recordWatch(hit: WatchHit): void {
    this.c[C_WATCH_HITS]!++;
    // Keep the last records in the shared ring, so another thread can read them.
    const base = this.layout.watchRing;
    const n = this.r[base]!;
    const slot = base + 1 + (n % WATCH_RING_RECORDS) * WATCH_RECORD_WORDS;
    const va = BigInt.asUintN(64, hit.va);
    this.r[slot] = ['read', 'write', 'fetch', 'walk'].indexOf(hit.kind);
    this.r[slot + 1] = Number(va & 0xffffffffn) | 0;
    this.r[slot + 2] = Number(va >> 32n) | 0;
    this.r[slot + 3] = hit.pa >>> 0;
    this.r[slot + 4] = hit.pfn;
    this.r[base] = n + 1;
    if (this.onWatch) this.onWatch(hit);
  }

  /** Watch hits recorded so far (the shared ring's count). */
  watchCount(): number {
    return this.r[this.layout.watchRing]!;
  }

  /**
   * Hand the watch hits recorded since the count was `since` (by another thread driving this CPU,
   * whose hook could not report them) to this thread's onWatch, oldest first; at most the ring's
   * WATCH_RING_RECORDS newest.
   */
  replayWatch(since: number): void {
    const hook = this.onWatch;
    if (hook === null) return;
    const records = this.watchRecords();
    const fresh = records.slice(Math.max(0, records.length - (this.watchCount() - since)));
    for (const h of fresh) hook({ cpu: this.index, kind: h.kind as WatchHit['kind'], va: h.va, pa: h.pa, pfn: h.pfn, cycles: this.cycles });
  }

  /** Watch hits recorded in the shared ring (the newest WATCH_RING_RECORDS). */
  watchRecords(): { kind: string; va: bigint; pa: number; pfn: number }[] {
    const base = this.layout.watchRing;
    const n = this.r[base]!;
    const out = [];
    for (let i = Math.max(0, n - WATCH_RING_RECORDS); i < n; i++) {
      const slot = base + 1 + (i % WATCH_RING_RECORDS) * WATCH_RECORD_WORDS;
      out.push({
        kind: ['read', 'write', 'fetch', 'walk'][this.r[slot]!]!,
        va: (BigInt(this.r[slot + 2]! >>> 0) << 32n) | BigInt(this.r[slot + 1]! >>> 0),
        pa: this.r[slot + 3]! >>> 0,
        pfn: this.r[slot + 4]!,
      });
    }
    return out;
  }
}
