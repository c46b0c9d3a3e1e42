/**
 * hw/config.ts — what a machine is built from: memory size, CPU count, processor features, TLB and
 * paging-structure-cache geometry, the cost model. Validation of every option lives here, so a bad
 * option is rejected before anything is allocated.
 *
 * The default TLB geometry is Intel Skylake-SP (Xeon Scalable), which has the same core TLBs as
 * Skylake client: Intel 64 and IA-32 Architectures Optimization Reference Manual (248966-045,
 * Feb 2022), Table 2-15, as quoted by J. McCalpin (Intel forum, "TLB information provided by cpuid
 * doesn't make sense to me", 2022):
 *   ITLB 4 KiB: 128 entries, 8-way; ITLB 2 MiB: 8 entries per thread (modelled fully associative);
 *   DTLB 4 KiB: 64 entries, 4-way; DTLB 2 MiB: 32 entries, 4-way; DTLB 1 GiB: 4 entries, 4-way;
 *   STLB 4 KiB + 2 MiB: 1,536 entries, 12-way; STLB 1 GiB: 16 entries, 4-way.
 * Note: CPUID leaf 2 on Skylake-SP reports the STLB as "6-way, 1536 entries" (descriptor 0xC3);
 * the manual's table is the primary source and wins here. The ITLB has no 1 GiB array: 1 GiB
 * instruction pages are cached as 2 MiB pieces, which the SDM permits (§4.10.2.3).
 *
 * Intel does not publish the sizes of its paging-structure caches. The defaults (PML4E 2,
 * PDPTE 4, PDE 32 entries) follow the measurements of Barr, Cox and Rixner, "Translation Caching:
 * Skip, Don't Walk (the Page Table)", ISCA 2010, which found small per-level caches of this order;
 * treat them as a plausible default, not a specification.
 */

import { DEFAULT_CLOCK_GHZ, DEFAULT_HW_COSTS, type CostModel, type HwCostModel, CostModelError } from './cost.ts';

/** Sets × ways of one set-associative TLB array; `sets * ways === 0` means the array is absent. */
export interface ArrayGeometry {
  sets: number;
  ways: number;
}

export type Replacement = 'lru' | 'fifo' | 'random';

export interface TlbGeometry {
  /** One L1 TLB for instructions and data (the I-side arrays are then unused). */
  unified: boolean;
  l1d4k: ArrayGeometry;
  l1d2m: ArrayGeometry;
  l1d1g: ArrayGeometry;
  l1i4k: ArrayGeometry;
  l1i2m: ArrayGeometry;
  l1i1g: ArrayGeometry;
  /** Second-level TLB shared by both sides, holding 4 KiB and 2 MiB translations. */
  stlb: ArrayGeometry;
  /** Second-level TLB for 1 GiB translations. */
  stlb1g: ArrayGeometry;
  replacement: Replacement;
}

export interface PscGeometry {
  enabled: boolean;
  pml5e: ArrayGeometry;
  pml4e: ArrayGeometry;
  pdpte: ArrayGeometry;
  pde: ArrayGeometry;
}

export const SKYLAKE_SP_TLB: Readonly<TlbGeometry> = Object.freeze({
  unified: false,
  l1d4k: { sets: 16, ways: 4 },
  l1d2m: { sets: 8, ways: 4 },
  l1d1g: { sets: 1, ways: 4 },
  l1i4k: { sets: 16, ways: 8 },
  l1i2m: { sets: 1, ways: 8 },
  l1i1g: { sets: 0, ways: 0 },
  stlb: { sets: 128, ways: 12 },
  stlb1g: { sets: 4, ways: 4 },
  replacement: 'lru' as Replacement,
});

export const DEFAULT_PSC: Readonly<PscGeometry> = Object.freeze({
  enabled: true,
  pml5e: { sets: 1, ways: 2 },
  pml4e: { sets: 1, ways: 2 },
  pdpte: { sets: 1, ways: 4 },
  pde: { sets: 8, ways: 4 },
});

export interface MachineOptions {
  /** Installed physical memory in bytes: a multiple of 4 KiB from 1 MiB to 4 GiB. */
  memoryBytes: number | bigint;
  /** Logical CPUs, 1 to 256 (default 1). */
  cpus?: number;
  /** MAXPHYADDR, 36 to 52 (default 46). */
  maxPhyAddr?: number;
  /** 5-level paging available (CR4.LA57 may be set). Default false. */
  la57?: boolean;
  /** Protection keys available (CR4.PKE may be set). Default true. */
  pku?: boolean;
  /** 1 GiB pages available. Default true. */
  gbPages?: boolean;
  /** PCIDs available (CR4.PCIDE may be set). Default true. */
  pcid?: boolean;
  /** INVPCID available. Default true. */
  invpcid?: boolean;
  tlb?: Partial<TlbGeometry>;
  psc?: Partial<PscGeometry>;
  /** Clock rate for reporting microseconds (default 3 GHz). */
  clockGhz?: number;
  /** Hardware costs; omitted fields keep their defaults. */
  cost?: Partial<HwCostModel>;
  /** Seed of the hardware's own pseudo-random choices (random TLB replacement). */
  seed?: number;
}

/** The fully resolved configuration; this is what the shared buffer's header records. */
export interface MachineConfig {
  memoryBytes: number;
  cpus: number;
  maxPhyAddr: number;
  la57: boolean;
  pku: boolean;
  gbPages: boolean;
  pcid: boolean;
  invpcid: boolean;
  tlb: TlbGeometry;
  psc: PscGeometry;
  cost: CostModel;
  seed: number;
}

export const MIN_MEMORY = 1 << 20;
export const MAX_MEMORY = 4 * 1024 * 1024 * 1024;
export const MAX_CPUS = 256;

export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConfigError';
  }
}

function intIn(v: unknown, name: string, lo: number, hi: number): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < lo || v > hi) {
    throw new ConfigError(`${name} must be an integer from ${lo} to ${hi}, got ${String(v)}`);
  }
  return v;
}

function bool(v: unknown, name: string, dflt: boolean): boolean {
  if (v === undefined) return dflt;
  if (typeof v !== 'boolean') throw new ConfigError(`${name} must be true or false, got ${String(v)}`);
  return v;
}

function isPow2(n: number): boolean {
  return n > 0 && (n & (n - 1)) === 0;
}

function geometry(v: unknown, name: string, dflt: ArrayGeometry): ArrayGeometry {
  if (v === undefined) return { ...dflt };
  if (typeof v !== 'object' || v === null) throw new ConfigError(`${name} must be { sets, ways }`);
  const g = v as Record<string, unknown>;
  for (const k of Object.keys(g)) if (k !== 'sets' && k !== 'ways') throw new ConfigError(`${name}.${k} is not a geometry field (sets, ways)`);
  const sets = intIn(g.sets ?? dflt.sets, `${name}.sets`, 0, 65536);
  const ways = intIn(g.ways ?? dflt.ways, `${name}.ways`, 0, 64);
  if ((sets === 0) !== (ways === 0)) throw new ConfigError(`${name}: sets and ways must both be 0 (no array) or both positive`);
  if (sets !== 0 && !isPow2(sets)) throw new ConfigError(`${name}.sets must be a power of two, got ${sets}`);
  return { sets, ways };
}

const TLB_ARRAYS = ['l1d4k', 'l1d2m', 'l1d1g', 'l1i4k', 'l1i2m', 'l1i1g', 'stlb', 'stlb1g'] as const;
const PSC_ARRAYS = ['pml5e', 'pml4e', 'pdpte', 'pde'] as const;

/** Resolve and validate options; every error names the option. */
export function resolveConfig(opts: MachineOptions): MachineConfig {
  if (typeof opts !== 'object' || opts === null) throw new ConfigError('machine options must be an object');
  const known = new Set(['memoryBytes', 'cpus', 'maxPhyAddr', 'la57', 'pku', 'gbPages', 'pcid', 'invpcid', 'tlb', 'psc', 'clockGhz', 'cost', 'seed']);
  for (const k of Object.keys(opts)) if (!known.has(k)) throw new ConfigError(`unknown machine option "${k}"`);
  let mem: number;
  if (typeof opts.memoryBytes === 'bigint') {
    if (opts.memoryBytes > BigInt(MAX_MEMORY) || opts.memoryBytes < 0n) throw new ConfigError(`memoryBytes must be from 1 MiB to 4 GiB, got ${opts.memoryBytes}`);
    mem = Number(opts.memoryBytes);
  } else {
    mem = opts.memoryBytes as number;
  }
  if (typeof mem !== 'number' || !Number.isInteger(mem) || mem < MIN_MEMORY || mem > MAX_MEMORY) {
    throw new ConfigError(`memoryBytes must be an integer from 1 MiB (${MIN_MEMORY}) to 4 GiB (${MAX_MEMORY}), got ${String(opts.memoryBytes)}`);
  }
  if (mem % 4096 !== 0) throw new ConfigError(`memoryBytes must be a multiple of 4096 (whole frames), got ${mem}`);
  const cpus = intIn(opts.cpus ?? 1, 'cpus', 1, MAX_CPUS);
  const maxPhyAddr = intIn(opts.maxPhyAddr ?? 46, 'maxPhyAddr', 36, 52);
  const tlbIn = (opts.tlb ?? {}) as Record<string, unknown>;
  if (typeof tlbIn !== 'object') throw new ConfigError('tlb must be an object');
  for (const k of Object.keys(tlbIn)) if (!(TLB_ARRAYS as readonly string[]).includes(k) && k !== 'unified' && k !== 'replacement') throw new ConfigError(`tlb.${k} is not a TLB option`);
  const tlb = { unified: bool(tlbIn.unified, 'tlb.unified', SKYLAKE_SP_TLB.unified) } as TlbGeometry;
  for (const a of TLB_ARRAYS) tlb[a] = geometry(tlbIn[a], `tlb.${a}`, SKYLAKE_SP_TLB[a]);
  const rep = tlbIn.replacement ?? SKYLAKE_SP_TLB.replacement;
  if (rep !== 'lru' && rep !== 'fifo' && rep !== 'random') throw new ConfigError(`tlb.replacement must be "lru", "fifo" or "random", got ${String(rep)}`);
  tlb.replacement = rep;
  const pscIn = (opts.psc ?? {}) as Record<string, unknown>;
  if (typeof pscIn !== 'object') throw new ConfigError('psc must be an object');
  for (const k of Object.keys(pscIn)) if (!(PSC_ARRAYS as readonly string[]).includes(k) && k !== 'enabled') throw new ConfigError(`psc.${k} is not a paging-structure-cache option`);
  const psc = { enabled: bool(pscIn.enabled, 'psc.enabled', DEFAULT_PSC.enabled) } as PscGeometry;
  for (const a of PSC_ARRAYS) psc[a] = geometry(pscIn[a], `psc.${a}`, DEFAULT_PSC[a]);
  const clockGhz = opts.clockGhz ?? DEFAULT_CLOCK_GHZ;
  if (typeof clockGhz !== 'number' || !Number.isFinite(clockGhz) || clockGhz <= 0) throw new ConfigError(`clockGhz must be a positive number, got ${String(clockGhz)}`);
  const hw: HwCostModel = { ...DEFAULT_HW_COSTS };
  if (opts.cost !== undefined) {
    if (typeof opts.cost !== 'object' || opts.cost === null) throw new ConfigError('cost must be an object of hardware costs');
    for (const [k, v] of Object.entries(opts.cost)) {
      if (!(k in DEFAULT_HW_COSTS)) throw new CostModelError(`cost model field "hw.${k}" is not a hardware cost`, `hw.${k}`);
      if (typeof v !== 'number' || !Number.isFinite(v) || v < 0) throw new CostModelError(`cost model field "hw.${k}" must be a finite number >= 0, got ${String(v)}`, `hw.${k}`);
      (hw as unknown as Record<string, number>)[k] = v;
    }
  }
  const seed = opts.seed ?? 1;
  if (typeof seed !== 'number' || !Number.isInteger(seed)) throw new ConfigError(`seed must be an integer, got ${String(seed)}`);
  return {
    memoryBytes: mem,
    cpus,
    maxPhyAddr,
    la57: bool(opts.la57, 'la57', false),
    pku: bool(opts.pku, 'pku', true),
    gbPages: bool(opts.gbPages, 'gbPages', true),
    pcid: bool(opts.pcid, 'pcid', true),
    invpcid: bool(opts.invpcid, 'invpcid', true),
    tlb,
    psc,
    cost: { clockGhz, hw },
    seed: seed >>> 0,
  };
}
