/**
 * hw/layout.ts — where everything lives in the machine's one SharedArrayBuffer.
 *
 *   [header 64 KiB][CPU 0 block][CPU 1 block]…[frame watch map][physical frames]
 *
 * The header holds a magic number, the layout version and the resolved configuration as JSON, so
 * `Machine.attach(sab)` on another thread rebuilds the same views. Each CPU block starts on a
 * 4 KiB boundary (no false sharing between CPUs driven by different threads) and holds the
 * control registers, the local-APIC mailbox, the counters and virtual clock, the TLB and
 * paging-structure-cache arrays, and the PCID→root table used by the stale-entry inspector.
 * The frame watch map has one byte per physical frame (see hw/phys.ts). Physical memory starts
 * on a 64 KiB boundary (a WebAssembly page, see hw/phys.ts), so frame n is at byte offset
 * physBase + n * 4096.
 *
 * All offsets are computed here once; nothing else hard-codes a position.
 */

import type { ArrayGeometry, MachineConfig } from './config.ts';

export const MAGIC = 0x4c554d4d; // "MMUL" little-endian
export const LAYOUT_VERSION = 3;
export const HEADER_BYTES = 65536;
/** Header words (Int32 indices). */
export const H_MAGIC = 0;
export const H_VERSION = 1;
export const H_JSON_LENGTH = 2;
/** Machine-wide generation bumped by every attach-visible reconfiguration (unused for now). */
export const H_GEN = 3;
export const H_JSON_OFFSET = 256; // bytes

// ---- Per-CPU register words (Int32 indices relative to the CPU block) ------------------------
export const R_CR0_LO = 0;
export const R_CR0_HI = 1;
export const R_CR2_LO = 2;
export const R_CR2_HI = 3;
export const R_CR3_LO = 4;
export const R_CR3_HI = 5;
export const R_CR4_LO = 6;
export const R_CR4_HI = 7;
export const R_EFER_LO = 8;
export const R_EFER_HI = 9;
export const R_RFLAGS = 10;
export const R_PKRU = 11;
export const R_CPL = 12;
/** Bumped on every register write, so views on other threads recompute derived state. */
export const R_GEN = 13;
/** LRU stamp clock of this CPU's TLB arrays. */
export const R_STAMP = 14;
/** xorshift state for random replacement. */
export const R_RNG = 15;
/** Set while the CPU is halted/idle (engines use it). */
export const R_IDLE = 16;
/**
 * Attention word: incremented whenever this CPU must look up from its fast path — a register
 * write (with R_GEN) or an IPI posted to its mailbox. The access path compares it with the last
 * value it handled: one load per access instead of one per reason.
 */
export const R_ATTN = 17;
/** Bumped on CPL, RFLAGS.AC and PKRU changes (cheap to apply, unlike R_GEN). */
export const R_MODEGEN = 18;
/**
 * Occupancy summary of the TLB and paging-structure-cache arrays: one bit per array (and per
 * page size for the mixed second-level TLB) that is set by every fill and cleared only when an
 * invalidation leaves the array without an entry of that size. A clear bit means "holds nothing",
 * so a lookup may skip the array (see hw/tlb.ts).
 */
export const R_HELD = 19;

// ---- Local APIC mailbox (Int32 indices relative to the CPU block) -----------------------------
/** Messages ever posted to this CPU (senders reserve slots with Atomics.add). */
export const A_TAIL = 64;
/** Messages this CPU has consumed. */
export const A_HEAD = 65;
/** Acknowledgements this CPU has received for the IPIs it sent. */
export const A_ACKS = 66;
/** IPIs this CPU has sent (targets counted one each). */
export const A_SENT = 67;
/** Ring of messages: MSG_WORDS Int32 words each. */
export const A_RING = 128;
export const RING_CAPACITY = 512;
export const MSG_WORDS = 16;
/** Message words. */
export const M_STATE = 0; // 0 empty, 1 ready
export const M_SENDER = 1;
export const M_VECTOR = 2;
export const M_SEQ = 3;
/** Payload words 4..11 (8 words). */
export const M_PAYLOAD = 4;
export const M_PAYLOAD_WORDS = 8;
/** Float64 index inside a message (message byte offset / 8 + 6): the sender's clock at send. */
export const M_SEND_TIME_F64 = 6;

// ---- Counters (Float64 indices relative to the CPU block's counter area) ---------------------
export const C_CLOCK = 0;
/** Derived in Cpu.counters(); the slot is kept for the layout. */
export const C_ACCESSES = 1;
export const C_L1_HIT = 2;
export const C_L1_MISS = 3;
export const C_STLB_HIT = 4;
export const C_STLB_MISS = 5;
export const C_WALKS = 6;
export const C_WALK_REFS = 7;
export const C_PSC_HIT_PML5E = 8;
export const C_PSC_HIT_PML4E = 9;
export const C_PSC_HIT_PDPTE = 10;
export const C_PSC_HIT_PDE = 11;
export const C_AD_UPDATES = 12;
export const C_WALK_RESTARTS = 13;
export const C_PAGE_FAULTS = 14;
export const C_GP_FAULTS = 15;
export const C_INVLPG = 16;
export const C_INVPCID = 17;
export const C_CR3_WRITES = 18;
export const C_CR3_NOFLUSH = 19;
export const C_FLUSH_ALL = 20;
export const C_FLUSH_PCID = 21;
export const C_ENTRIES_FLUSHED = 22;
export const C_IPI_SENT = 23;
export const C_IPI_DELIVERED = 24;
export const C_IPI_ACKED = 25;
export const C_IPI_WAIT_CYCLES = 26;
export const C_D_REWALKS = 27;
export const C_RIGHTS_REWALKS = 28;
export const C_WATCH_HITS = 29;
/** Derived in Cpu.counters(). */
export const C_L1_HIT_4K = 30;
export const C_L1_HIT_2M = 31;
export const C_L1_HIT_1G = 32;
export const C_MACHINE_CHECKS = 35;
export const C_SS_FAULTS = 36;
/** Accesses that never reached the TLB: paging disabled, or a non-canonical address. */
export const C_UNTRANSLATED = 37;
// The instruction side's share of the translation counters above (as perf's iTLB events): its
// lookups are fetches that reached the TLB; the data side's share is the total minus these.
export const C_FETCH_LOOKUPS = 38;
export const C_FETCH_L1_MISS = 39;
export const C_FETCH_STLB_HIT = 40;
export const C_FETCH_STLB_MISS = 41;
export const C_FETCH_WALKS = 42;
export const N_COUNTERS = 64;

export const COUNTER_NAMES: Record<number, string> = {
  [C_CLOCK]: 'cycles',
  [C_ACCESSES]: 'accesses',
  [C_L1_HIT]: 'l1Hits',
  [C_L1_MISS]: 'l1Misses',
  [C_STLB_HIT]: 'stlbHits',
  [C_STLB_MISS]: 'stlbMisses',
  [C_WALKS]: 'walks',
  [C_WALK_REFS]: 'walkMemRefs',
  [C_PSC_HIT_PML5E]: 'pscHitsPml5e',
  [C_PSC_HIT_PML4E]: 'pscHitsPml4e',
  [C_PSC_HIT_PDPTE]: 'pscHitsPdpte',
  [C_PSC_HIT_PDE]: 'pscHitsPde',
  [C_AD_UPDATES]: 'adUpdates',
  [C_WALK_RESTARTS]: 'walkRestarts',
  [C_PAGE_FAULTS]: 'pageFaults',
  [C_GP_FAULTS]: 'gpFaults',
  [C_INVLPG]: 'invlpg',
  [C_INVPCID]: 'invpcid',
  [C_CR3_WRITES]: 'cr3Writes',
  [C_CR3_NOFLUSH]: 'cr3NoFlushWrites',
  [C_FLUSH_ALL]: 'fullFlushes',
  [C_FLUSH_PCID]: 'pcidFlushes',
  [C_ENTRIES_FLUSHED]: 'entriesFlushed',
  [C_IPI_SENT]: 'ipisSent',
  [C_IPI_DELIVERED]: 'ipisDelivered',
  [C_IPI_ACKED]: 'ipisAcked',
  [C_IPI_WAIT_CYCLES]: 'ipiWaitCycles',
  [C_D_REWALKS]: 'dirtyRewalks',
  [C_RIGHTS_REWALKS]: 'rightsRewalks',
  [C_WATCH_HITS]: 'watchHits',
  [C_L1_HIT_4K]: 'l1Hits4k',
  [C_L1_HIT_2M]: 'l1Hits2m',
  [C_L1_HIT_1G]: 'l1Hits1g',
  [C_MACHINE_CHECKS]: 'machineChecks',
  [C_SS_FAULTS]: 'ssFaults',
  [C_UNTRANSLATED]: 'untranslated',
  [C_FETCH_LOOKUPS]: 'fetchLookups',
  [C_FETCH_L1_MISS]: 'fetchL1Misses',
  [C_FETCH_STLB_HIT]: 'fetchStlbHits',
  [C_FETCH_STLB_MISS]: 'fetchStlbMisses',
  [C_FETCH_WALKS]: 'fetchWalks',
};

/** Words per TLB / PSC entry. */
export const ENTRY_WORDS = 4;

/** Placement of one set-associative array inside a CPU block (Int32 indices, block-relative). */
export interface ArrayPlacement {
  sets: number;
  ways: number;
  /** First word of the entries (sets * ways * ENTRY_WORDS words). */
  entries: number;
  /** First word of the replacement state (one word per entry: LRU stamp; FIFO uses word 0 of each set). */
  stamps: number;
}

export interface CpuLayout {
  /** Bytes per CPU block (multiple of 4096). */
  blockBytes: number;
  /** Block-relative byte offset of the Float64 counters. */
  countersByte: number;
  /** Block-relative byte offset of the Float64 ack-time table (one slot per possible target). */
  ackTimesByte: number;
  /** Block-relative Int32 index of the PCID→root table (2 words per PCID: lo, hi). */
  pcidRoots: number;
  /** Block-relative Int32 index of the watch-hit ring. */
  watchRing: number;
  arrays: {
    l1d4k: ArrayPlacement;
    l1d2m: ArrayPlacement;
    l1d1g: ArrayPlacement;
    l1i4k: ArrayPlacement;
    l1i2m: ArrayPlacement;
    l1i1g: ArrayPlacement;
    stlb: ArrayPlacement;
    stlb1g: ArrayPlacement;
    pml5e: ArrayPlacement;
    pml4e: ArrayPlacement;
    pdpte: ArrayPlacement;
    pde: ArrayPlacement;
  };
}

export interface MachineLayout {
  cpu: CpuLayout;
  /** Byte offset of CPU 0's block. */
  cpuBase: number;
  /** Byte offset of the frame watch map (one byte per frame). */
  watchBase: number;
  /** Byte offset of physical address 0. */
  physBase: number;
  totalBytes: number;
}

/** Words of the watch-hit ring: [count, then WATCH_RECORD_WORDS per record]. */
export const WATCH_RING_RECORDS = 64;
export const WATCH_RECORD_WORDS = 8;

function align(n: number, a: number): number {
  return Math.ceil(n / a) * a;
}

export function computeLayout(cfg: MachineConfig): MachineLayout {
  // Register words and the APIC ring occupy the first words of the block.
  let word = A_RING + RING_CAPACITY * MSG_WORDS;
  const countersByte = align(word * 4, 64);
  const ackTimesByte = countersByte + N_COUNTERS * 8;
  word = (ackTimesByte + 256 * 8) / 4;
  const pcidRoots = word;
  word += 4096 * 2;
  const watchRing = word;
  word += 1 + WATCH_RING_RECORDS * WATCH_RECORD_WORDS;
  word = align(word, 1024); // TLB arrays start on a 4 KiB boundary
  const place = (g: ArrayGeometry, on = true): ArrayPlacement => {
    const n = on ? g.sets * g.ways : 0;
    const p: ArrayPlacement = { sets: on ? g.sets : 0, ways: on ? g.ways : 0, entries: word, stamps: word + n * ENTRY_WORDS };
    word += n * (ENTRY_WORDS + 1);
    word = align(word, 16);
    return p;
  };
  const t = cfg.tlb;
  const p = cfg.psc;
  const arrays = {
    l1d4k: place(t.l1d4k),
    l1d2m: place(t.l1d2m),
    l1d1g: place(t.l1d1g),
    l1i4k: place(t.l1i4k, !t.unified),
    l1i2m: place(t.l1i2m, !t.unified),
    l1i1g: place(t.l1i1g, !t.unified),
    stlb: place(t.stlb),
    stlb1g: place(t.stlb1g),
    pml5e: place(p.pml5e, p.enabled && cfg.la57),
    pml4e: place(p.pml4e, p.enabled),
    pdpte: place(p.pdpte, p.enabled),
    pde: place(p.pde, p.enabled),
  };
  const blockBytes = align(word * 4, 4096);
  const cpuBase = HEADER_BYTES;
  const watchBase = cpuBase + blockBytes * cfg.cpus;
  const frames = cfg.memoryBytes / 4096;
  // Physical memory starts on a 64 KiB boundary, so a machine whose memory is whole 64 KiB pages
  // spans whole WebAssembly pages and can live in a wasm memory (see allocateMachineBuffer).
  const physBase = align(watchBase + frames, 65536);
  return {
    cpu: { blockBytes, countersByte, ackTimesByte, pcidRoots, watchRing, arrays },
    cpuBase,
    watchBase,
    physBase,
    totalBytes: physBase + cfg.memoryBytes,
  };
}
