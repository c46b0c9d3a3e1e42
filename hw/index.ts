/**
 * hw/index.ts — the hardware surface of mmulab: the machine in a SharedArrayBuffer, its physical
 * memory, CPUs, TLBs, IPIs, the entry codec and the cost model. Documented in README.md
 * ("Library API"); conformance suites import only from here.
 */

export { Machine } from './machine.ts';
export type { MachineOptions, MachineConfig, TlbGeometry, PscGeometry, ArrayGeometry, Replacement } from './config.ts';
export { ConfigError, SKYLAKE_SP_TLB, DEFAULT_PSC, MIN_MEMORY, MAX_MEMORY, MAX_CPUS } from './config.ts';
export { PhysicalMemory, PhysAddressError, FRAME_SIZE, FRAME_SHIFT } from './phys.ts';
export { Cpu, KIND_CODES } from './cpu.ts';
export type { AccessKind, AccessOptions, AccessResult, RegWriteResult, WatchHit, CpuCounters } from './cpu.ts';
export { Apic, IpiError, VEC_INVALIDATE, INV_ALL, INV_PAGES, INV_PCID, invalidatePagesPayload } from './apic.ts';
export type { IpiHandler, IpiMessage, IpiTicket } from './apic.ts';
export * from './pte.ts';
export * from './control-registers.ts';
export { PF_P, PF_W, PF_U, PF_RSVD, PF_ID, PF_PK, K_READ, K_WRITE, K_FETCH } from './walk.ts';
export { toVa, vaFromHalves, vaNumberFromHalves, hex64, AddressError, type LinearAddress } from './address.ts';
export { DEFAULT_HW_COSTS, DEFAULT_CLOCK_GHZ, defaultCostModel, parseCostModel, loadCostModelFile, cyclesToMicros, CostModelError } from './cost.ts';
export type { CostModel, HwCostModel } from './cost.ts';
export { PageTableBuilder, USER_RW_A } from './builder.ts';
export { COUNTER_NAMES } from './layout.ts';
