/**
 * hw/control-registers.ts — CR0, CR3, CR4, IA32_EFER: bit names, the checks that make a write
 * raise #GP(0), and which TLB / paging-structure-cache invalidation each write implies.
 * Models Intel SDM Vol. 3A §2.5 (control registers), §2.2.1 (EFER), §4.1.1–4.1.3 (paging-mode
 * enabling) and §4.10.4.1 (operations that invalidate TLBs and paging-structure caches), with
 * the #GP list of the MOV CR instruction page (Vol. 2).
 *
 * The functions here decide; hw/cpu.ts applies. A decision is either a #GP with the reason, or
 * the new register value and the invalidation to perform.
 *
 * Deviations, each on purpose:
 *  - Code segments are not modelled. With IA-32e mode active the CPU behaves as in 64-bit mode,
 *    except that clearing CR0.PG is permitted (as from compatibility mode) so that the "CR0.PG
 *    1→0 invalidates everything" rule can be exercised; it leaves IA-32e mode (EFER.LMA=0).
 *  - Only IA-32e paging is modelled: enabling paging with EFER.LME=0 (32-bit or PAE paging) is
 *    rejected with an UnsupportedModeError instead of being emulated.
 *  - Reserved bits 31:0 of CR0 are ignored and ET reads as 1 (as KVM's kvm_set_cr0 does);
 *    bits 63:32 of CR0 raise #GP.
 *  - A change of EFER.NXE invalidates every TLB entry. The SDM does not require it, but cached
 *    entries hold XD as seen under the old NXE, and flushing is the simple safe choice.
 *  - CR4.SMEP 0→1 and CR4.PAE changes invalidate every entry tagged with the current PCID,
 *    global ones included (the SDM says "all TLB entries … for the current PCID").
 */

// ---- CR0 ---------------------------------------------------------------------------------------
export const CR0_PE = 1 << 0;
export const CR0_MP = 1 << 1;
export const CR0_EM = 1 << 2;
export const CR0_TS = 1 << 3;
export const CR0_ET = 1 << 4;
export const CR0_NE = 1 << 5;
export const CR0_WP = 1 << 16;
export const CR0_AM = 1 << 18;
export const CR0_NW = 1 << 29;
export const CR0_CD = 1 << 30;
export const CR0_PG = 1 << 31;
const CR0_DEFINED = CR0_PE | CR0_MP | CR0_EM | CR0_TS | CR0_ET | CR0_NE | CR0_WP | CR0_AM | CR0_NW | CR0_CD | CR0_PG;

// ---- CR3 ---------------------------------------------------------------------------------------
export const CR3_PWT = 1 << 3;
export const CR3_PCD = 1 << 4;
export const CR3_PCID_MASK = 0xfff;
/** Bit 63 of the MOV-to-CR3 source with CR4.PCIDE=1: "do not flush"; never stored. */
export const CR3_NOFLUSH = 1n << 63n;

// ---- CR4 ---------------------------------------------------------------------------------------
export const CR4_VME = 1 << 0;
export const CR4_PVI = 1 << 1;
export const CR4_TSD = 1 << 2;
export const CR4_DE = 1 << 3;
export const CR4_PSE = 1 << 4;
export const CR4_PAE = 1 << 5;
export const CR4_MCE = 1 << 6;
export const CR4_PGE = 1 << 7;
export const CR4_PCE = 1 << 8;
export const CR4_OSFXSR = 1 << 9;
export const CR4_OSXMMEXCPT = 1 << 10;
export const CR4_UMIP = 1 << 11;
export const CR4_LA57 = 1 << 12;
export const CR4_VMXE = 1 << 13;
export const CR4_SMXE = 1 << 14;
export const CR4_FSGSBASE = 1 << 16;
export const CR4_PCIDE = 1 << 17;
export const CR4_OSXSAVE = 1 << 18;
export const CR4_SMEP = 1 << 20;
export const CR4_SMAP = 1 << 21;
export const CR4_PKE = 1 << 22;

// ---- IA32_EFER (MSR C000_0080H) -------------------------------------------------------------------
export const EFER_SCE = 1 << 0;
export const EFER_LME = 1 << 8;
export const EFER_LMA = 1 << 10;
export const EFER_NXE = 1 << 11;

// ---- RFLAGS ----------------------------------------------------------------------------------------
export const RFLAGS_AC = 1 << 18;

/** Architectural exception vectors mmulab raises. */
export const VEC_UD = 6;
export const VEC_SS = 12;
export const VEC_GP = 13;
export const VEC_PF = 14;
export const VEC_MC = 18;

/** What a register write must invalidate. */
export const enum Flush {
  None = 0,
  /** Non-global entries of one PCID plus that PCID's paging-structure-cache entries. */
  PcidNonGlobal = 1,
  /** Every entry tagged with one PCID (global ones too) and its paging-structure-cache entries. */
  PcidAll = 2,
  /** Everything: all PCIDs, global entries, all paging-structure caches. */
  All = 3,
}

export interface RegState {
  cr0: number;
  cr3: bigint;
  cr4: number;
  efer: number;
}

export interface Features {
  maxPhyAddr: number;
  la57: boolean;
  pku: boolean;
  pcid: boolean;
}

export type WriteDecision<T> = { ok: true; value: T; flush: Flush; flushPcid: number } | { ok: false; reason: string };

export class UnsupportedModeError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UnsupportedModeError';
  }
}

function gp<T>(reason: string): WriteDecision<T> {
  return { ok: false, reason };
}

export function currentPcid(s: RegState): number {
  return s.cr4 & CR4_PCIDE ? Number(s.cr3 & 0xfffn) : 0;
}

/** MOV to CR0. */
export function decideCr0(s: RegState, value: bigint): WriteDecision<number> {
  if (value >> 32n !== 0n) return gp('MOV to CR0 sets reserved bits 63:32');
  let v = Number(value) | 0;
  v = (v & CR0_DEFINED) | CR0_ET;
  if (v & CR0_NW && !(v & CR0_CD)) return gp('MOV to CR0 sets NW with CD clear');
  if (v & CR0_PG && !(v & CR0_PE)) return gp('MOV to CR0 sets PG with PE clear');
  const pgWas = (s.cr0 & CR0_PG) !== 0;
  const pgNow = (v & CR0_PG) !== 0;
  if (!pgNow && pgWas && s.cr4 & CR4_PCIDE) return gp('MOV to CR0 clears PG while CR4.PCIDE=1');
  if (pgNow && !pgWas) {
    if (!(s.efer & EFER_LME)) throw new UnsupportedModeError('enabling paging with EFER.LME=0 selects 32-bit or PAE paging, which mmulab does not model; set EFER.LME first');
    if (!(s.cr4 & CR4_PAE)) return gp('MOV to CR0 sets PG with EFER.LME=1 and CR4.PAE=0');
  }
  return { ok: true, value: v, flush: pgWas && !pgNow ? Flush.All : Flush.None, flushPcid: 0 };
}

/** MOV to CR3. `value` is the full 64-bit source operand. */
export function decideCr3(s: RegState, value: bigint, f: Features): WriteDecision<bigint> {
  let v = BigInt.asUintN(64, value);
  const pcide = (s.cr4 & CR4_PCIDE) !== 0;
  let noflush = false;
  if (pcide && v & CR3_NOFLUSH) {
    noflush = true;
    v &= ~CR3_NOFLUSH;
  }
  if (v >> BigInt(f.maxPhyAddr) !== 0n) return gp(`MOV to CR3 sets reserved bits 63:${f.maxPhyAddr} (MAXPHYADDR is ${f.maxPhyAddr})`);
  if (!pcide) return { ok: true, value: v, flush: Flush.PcidNonGlobal, flushPcid: 0 };
  const pcid = Number(v & 0xfffn);
  return { ok: true, value: v, flush: noflush ? Flush.None : Flush.PcidNonGlobal, flushPcid: pcid };
}

/** Bits of CR4 this CPU implements. */
export function cr4Supported(f: Features): number {
  let m = CR4_VME | CR4_PVI | CR4_TSD | CR4_DE | CR4_PSE | CR4_PAE | CR4_MCE | CR4_PGE | CR4_PCE | CR4_OSFXSR | CR4_OSXMMEXCPT | CR4_UMIP | CR4_FSGSBASE | CR4_OSXSAVE | CR4_SMEP | CR4_SMAP;
  if (f.la57) m |= CR4_LA57;
  if (f.pcid) m |= CR4_PCIDE;
  if (f.pku) m |= CR4_PKE;
  return m;
}

/** MOV to CR4. */
export function decideCr4(s: RegState, value: bigint, f: Features): WriteDecision<number> {
  if (value >> 32n !== 0n) return gp('MOV to CR4 sets reserved bits 63:32');
  const v = Number(value) | 0;
  const unsupported = v & ~cr4Supported(f);
  if (unsupported) return gp(`MOV to CR4 sets reserved or unsupported bits 0x${(unsupported >>> 0).toString(16)}`);
  const lma = (s.efer & EFER_LMA) !== 0;
  const changed = v ^ s.cr4;
  if (lma && !(v & CR4_PAE)) return gp('MOV to CR4 clears PAE while IA-32e mode is active');
  if (lma && changed & CR4_LA57) return gp('MOV to CR4 changes LA57 while IA-32e mode is active');
  if (v & CR4_PCIDE && !(s.cr4 & CR4_PCIDE)) {
    if (!lma) return gp('MOV to CR4 sets PCIDE outside IA-32e mode');
    if ((s.cr3 & 0xfffn) !== 0n) return gp('MOV to CR4 sets PCIDE while CR3[11:0] is not 0');
  }
  let flush = Flush.None;
  if (changed & CR4_PGE || (s.cr4 & CR4_PCIDE && !(v & CR4_PCIDE))) flush = Flush.All;
  else if (changed & CR4_PAE || (v & CR4_SMEP && !(s.cr4 & CR4_SMEP))) flush = Flush.PcidAll;
  return { ok: true, value: v, flush, flushPcid: currentPcid(s) };
}

/** WRMSR to IA32_EFER. LMA is read-only: the written value is ignored and recomputed. */
export function decideEfer(s: RegState, value: bigint): WriteDecision<number> {
  if (value >> 32n !== 0n) return gp('WRMSR to IA32_EFER sets reserved bits 63:32');
  const v = Number(value) | 0;
  const reserved = v & ~(EFER_SCE | EFER_LME | EFER_LMA | EFER_NXE);
  if (reserved) return gp(`WRMSR to IA32_EFER sets reserved or unsupported bits 0x${(reserved >>> 0).toString(16)}`);
  const pg = (s.cr0 & CR0_PG) !== 0;
  if (pg && (v ^ s.efer) & EFER_LME) return gp('WRMSR to IA32_EFER changes LME while paging is enabled');
  const next = (v & ~EFER_LMA) | (s.efer & EFER_LMA);
  return { ok: true, value: next, flush: (v ^ s.efer) & EFER_NXE ? Flush.All : Flush.None, flushPcid: 0 };
}

/** The state every CPU leaves `new Machine()` in: IA-32e mode, paging on, CR3 = 0. */
export const RESET_LONG_MODE: Readonly<RegState> = Object.freeze({
  cr0: CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG,
  cr3: 0n,
  cr4: CR4_PAE,
  efer: EFER_SCE | EFER_LME | EFER_LMA | EFER_NXE,
});
