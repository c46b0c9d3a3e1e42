/**
 * hw/cost.ts — the cycle cost model of the hardware events.
 *
 * Every hardware event charges virtual cycles to the CPU that performs it. The defaults come from
 * published measurements; each constant names its source. Where no measurement was found, the
 * comment says so and says what the value was tied to. A model can be loaded from JSON:
 *
 *   { "clockGhz": 3.0, "hw": { "invlpg": 260, ... }, "kernel": { ... } }
 *
 * Only the `hw` section and `clockGhz` belong to this file; other sections are validated by the
 * layers that own them (callers pass their names in `otherSections`). An unknown field, a
 * non-number or a negative or non-finite number is rejected with a message naming the field.
 *
 * Deviation from hardware: data caches are not modelled. A page-walk memory reference has one
 * fixed cost, and a full flush costs only the instruction: its real price, the refills, shows up
 * as the TLB misses that follow it.
 */

import { readFileSync } from 'node:fs';

export interface HwCostModel {
  /** The data access itself, charged on every load/store/fetch (L1D load-to-use latency). */
  access: number;
  /** Extra cycles of an L1 TLB hit (in parallel with the L1D lookup). */
  tlbL1Hit: number;
  /** An L1 TLB miss that hits the second-level TLB. */
  stlbHit: number;
  /** One memory reference of a page walk (a paging-structure entry read). */
  walkMemRef: number;
  /** A paging-structure-cache hit that replaces one or more walk references. */
  pscHit: number;
  /** One locked read-modify-write that sets A or D in an entry. */
  adUpdate: number;
  /** Raising and delivering a #PF (exception entry, not the OS handler). */
  pageFault: number;
  /** INVLPG. */
  invlpg: number;
  /** INVPCID type 0 (one address). */
  invpcidAddr: number;
  /** INVPCID types 1–3 (whole contexts). */
  invpcidContext: number;
  /** MOV to CR3 (the instruction; any flush cost appears as later misses). */
  cr3Write: number;
  /** MOV to CR0/CR4 and WRMSR to EFER. */
  crWrite: number;
  /** A full TLB flush (CR4.PGE toggle, PCIDE 1→0, CR0.PG 1→0). */
  flushAll: number;
  /** Writing the ICR to send one IPI (sender side, per target). */
  ipiSend: number;
  /** From ICR write to the interrupt being recognised on the target. */
  ipiLatency: number;
  /** Interrupt entry and exit on the target, around the handler's own work. */
  ipiHandlerEntry: number;
  /** The acknowledgement travelling back to the sender (one cache-line transfer). */
  ipiAck: number;
}

export interface CostModel {
  /** Clock rate used to turn cycles into microseconds. */
  clockGhz: number;
  hw: HwCostModel;
}

/** Defaults, each tied to its source (see ../shared/reference/costs-and-style.md §A2). */
export const DEFAULT_HW_COSTS: Readonly<HwCostModel> = Object.freeze({
  // Skylake L1D load-to-use latency is 4 cycles (Intel Optimization Reference Manual, Skylake
  // client cache parameters table: "L1D 32KB/8, fastest latency 4").
  access: 4,
  // An L1 DTLB hit is looked up in parallel with the VIPT L1D and adds nothing (textbook; the
  // costs reference suggests 0).
  tlbL1Hit: 0,
  // STLB hit: 12 cycles on Haswell (4Gamer microbenchmark, 2013; 11 on Ivy Bridge).
  stlbHit: 12,
  // A walk reference that hits the L2 cache: Skylake L2 latency is 12 cycles (same Intel table);
  // write-ups give 20–50 cycles for a whole walk with upper levels cached. 15 per reference puts a
  // PDE-cache-assisted walk at 15 and a cold 4-level walk (L2-resident tables) at 60.
  walkMemRef: 15,
  // A paging-structure-cache hit costs nothing beyond the lookup (costs reference, §A2).
  pscHit: 0,
  // Uncontended locked RMW: about 17 cycles (LLVM btver2 CMPXCHG model, 2019), about 20 on recent
  // Intel cores.
  adUpdate: 20,
  // Exception delivery: no published per-#PF hardware figure was found; the Linux fault path is
  // charged by the kernel's own model. 100 cycles covers the IDT vectoring and stack switch.
  pageFault: 100,
  // INVLPG: 260 cycles (Ingo Molnar's boot-time microbenchmark, linux-mm 2015); the tlb.c comment
  // says "~100 ns".
  invlpg: 260,
  // INVPCID type 0 does the work of INVLPG for another PCID; no separate figure was found, so it
  // is tied to the INVLPG measurement.
  invpcidAddr: 260,
  // A context-wide INVPCID is tied to the CR3-reload flush figure (96 cycles, Molnar 2015).
  invpcidContext: 96,
  // MOV to CR3: 96 cycles for a reload (Molnar 2015). The refills are charged as later misses.
  cr3Write: 96,
  // MOV to CR0/CR4: serialising like CR3; no separate figure was found, tied to the CR3 figure.
  crWrite: 96,
  // A full flush instruction, tied to the CR3-reload figure (96 cycles).
  flushAll: 96,
  // x2APIC ICR write: no bare-metal figure was found; a few hundred cycles for the serialising
  // WRMSR. 300 cycles.
  ipiSend: 300,
  // One-way IPI delivery: about 1.24 µs bare metal (ipi_benchmark, Yury Norov 2017) = 3,720 cycles
  // at 3 GHz.
  ipiLatency: 3720,
  // Interrupt entry and exit around the handler: about 1,000 cycles (costs reference §A2).
  ipiHandlerEntry: 1000,
  // The acknowledgement is one cache-line transfer between cores: 40–42 ns HITM on Broadwell-EP
  // (Intel MLC) ≈ 125 cycles at 3 GHz.
  ipiAck: 125,
});

/** A 3 GHz clock: the rate the IPI figures above were converted at. */
export const DEFAULT_CLOCK_GHZ = 3.0;

export function defaultCostModel(): CostModel {
  return { clockGhz: DEFAULT_CLOCK_GHZ, hw: { ...DEFAULT_HW_COSTS } };
}

/** An error in a cost model, naming the offending field. */
export class CostModelError extends Error {
  constructor(
    message: string,
    readonly field: string,
  ) {
    super(message);
    this.name = 'CostModelError';
  }
}

function checkCost(v: unknown, field: string): number {
  if (typeof v !== 'number' || !Number.isFinite(v) || v < 0) {
    throw new CostModelError(`cost model field "${field}" must be a finite number >= 0, got ${JSON.stringify(v)}`, field);
  }
  return v;
}

/**
 * Validate a parsed cost model object. Omitted fields keep their defaults. `otherSections` are
 * top-level keys that other layers own; they are left for those layers.
 */
export function parseCostModel(obj: unknown, otherSections: readonly string[] = []): CostModel {
  const out = defaultCostModel();
  if (typeof obj !== 'object' || obj === null || Array.isArray(obj)) {
    throw new CostModelError('a cost model must be a JSON object', '(root)');
  }
  for (const [key, value] of Object.entries(obj as Record<string, unknown>)) {
    if (key === 'clockGhz') {
      const ghz = checkCost(value, 'clockGhz');
      if (ghz === 0) throw new CostModelError('cost model field "clockGhz" must be greater than 0', 'clockGhz');
      out.clockGhz = ghz;
    } else if (key === 'hw') {
      if (typeof value !== 'object' || value === null || Array.isArray(value)) {
        throw new CostModelError('cost model field "hw" must be an object', 'hw');
      }
      for (const [k, v] of Object.entries(value as Record<string, unknown>)) {
        if (!(k in DEFAULT_HW_COSTS)) {
          throw new CostModelError(`cost model field "hw.${k}" is not a hardware cost (known: ${Object.keys(DEFAULT_HW_COSTS).join(', ')})`, `hw.${k}`);
        }
        (out.hw as unknown as Record<string, number>)[k] = checkCost(v, `hw.${k}`);
      }
    } else if (key === '$schema' || key === 'description' || otherSections.includes(key)) {
      continue;
    } else {
      throw new CostModelError(`cost model field "${key}" is not known (known: clockGhz, hw${otherSections.map((s) => ', ' + s).join('')})`, key);
    }
  }
  return out;
}

/** Read and validate a cost model file; errors name the file and the field. */
export function loadCostModelFile(path: string, otherSections: readonly string[] = []): { model: CostModel; raw: Record<string, unknown> } {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new CostModelError(`cannot read cost model ${path}: ${(e as Error).message}`, '(file)');
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new CostModelError(`cost model ${path} is not valid JSON: ${(e as Error).message}`, '(file)');
  }
  try {
    return { model: parseCostModel(raw, otherSections), raw: raw as Record<string, unknown> };
  } catch (e) {
    if (e instanceof CostModelError) throw new CostModelError(`${path}: ${e.message}`, e.field);
    throw e;
  }
}

/** Cycles to microseconds at the model's clock rate. */
export function cyclesToMicros(cycles: number, clockGhz: number): number {
  return cycles / (clockGhz * 1000);
}
