/**
 * Agents of test/hw/parallel_stress.test.ts (loaded by module path in the parallel engine's
 * workers). A "kernel" agent keeps changing a set of user pages at random — mapping a page to a
 * frame from a pool, remapping it to another frame, write-protecting it, unmapping it — and, like
 * Linux, shoots each change down with an IPI to the other CPUs and waits for every
 * acknowledgement before it publishes the change and frees the old frame. "Hammer" agents on the
 * other CPUs read and write the pages through their TLBs as fast as they can. Everything the
 * agents share lives in a control block of physical memory, read and written with Atomics.
 *
 * The checks, run continuously while the race is on:
 *  - no lost A/D bit: when the kernel takes a frame back it atomically clears the PTE, so the
 *    value it gets is final; after the shootdown every write (read) the hammers made through that
 *    frame has been counted, and if there was any, D (A) must be set in that value;
 *  - no stale translation after the acknowledgement: every frame carries a tag (page, generation)
 *    written before its PTE; a hammer reads the page's published generation before an access, and
 *    an access that succeeds must reach a frame of that page tagged with that generation or a
 *    later one (never an old frame), and may not write a page published read-only;
 *  - no use after free: a freed frame is marked in the frame-watch map (the hardware reports any
 *    access to it) and in the pool's state, which a hammer checks after every access;
 *  - no leaked frame: at the end every page is unmapped and every frame back in the pool.
 */

import type { Machine } from '../../hw/machine.ts';
import type { Agent, AgentStatus } from '../../hw/engine.ts';
import type { Cpu } from '../../hw/cpu.ts';
import { Random } from '../../hw/random.ts';
import { toVa } from '../../hw/address.ts';
import { VEC_INVALIDATE, invalidatePagesPayload } from '../../hw/apic.ts';

/** Control-block words (Int32 offsets from `ctrl`). Per-page and per-frame arrays follow. */
export const ST = {
  STARTED: 0,
  DONE: 1,
  KERNEL_OPS: 2,
  SHOOTDOWNS: 3,
  LOST_D: 4,
  LOST_A: 5,
  STALE: 6,
  RO_WRITES: 7,
  UAF: 8,
  WRONG_PAGE: 9,
  ACCESSES: 10,
  WRITES: 11,
  FAULTS: 12,
  FREED: 13,
  /** First violation: [what, page, seen, expected]. */
  FIRST: 16,
  PAGES: 32,
} as const;

export interface StressArgs {
  ctrl: number;
  cr3: string;
  base: string;
  pages: number;
  /** Physical address of the PTE of each page. */
  ptes: number[];
  /** First frame of the pool (physical address) and its size in frames. */
  pool: number;
  frames: number;
  ops: number;
  hammers: number[];
  seed: number;
  /** A broken kernel for the negative test: invalidate locally only, never shoot down. */
  noWait?: boolean;
}

/** Word offsets of the per-page and per-frame arrays. */
export function layout(a: Pick<StressArgs, 'pages' | 'frames'>) {
  const gen = ST.PAGES; // published generation of each page
  const ro = gen + a.pages; // 1 if published read-only
  const frameGen = ro + a.pages; // generation its current frame was assigned at
  const ver = frameGen + a.pages; // a seqlock per page: odd while a change is being made
  const state = ver + a.pages; // per frame: 0 free, 1 in use
  const reads = state + a.frames; // per frame: reads through it since it was assigned
  const writes = reads + a.frames; // per frame: writes through it since it was assigned
  return { gen, ro, frameGen, ver, state, reads, writes, end: writes + a.frames };
}

const PTE_P = 1;
const PTE_RW = 2;
const PTE_US = 4;
const PTE_A = 0x20;
const PTE_D = 0x40;

function violation(w: Int32Array, k: number, what: number, page: number, seen: number, expected: number): void {
  if (Atomics.compareExchange(w, k + ST.FIRST, 0, what) === 0) {
    Atomics.store(w, k + ST.FIRST + 1, page);
    Atomics.store(w, k + ST.FIRST + 2, seen);
    Atomics.store(w, k + ST.FIRST + 3, expected);
  }
}

/** The kernel side: random page-table changes, each shot down before it is published. */
export function stressKernel(args: StressArgs, cpu: number, machine: Machine): Agent {
  const c = machine.cpu(cpu);
  c.writeCr3(BigInt(args.cr3));
  const w = machine.phys.i32;
  const k = args.ctrl >>> 2;
  const L = layout(args);
  const rng = new Random(args.seed);
  const base = BigInt(args.base);
  const frameOf = new Int32Array(args.pages).fill(-1);
  const gens = new Int32Array(args.pages);
  const free: number[] = [];
  for (let f = args.frames - 1; f >= 0; f--) free.push(f);
  let done = 0;

  const allocFrame = (page: number, gen: number): number => {
    if (free.length === 0) return -1;
    const f = free.splice(rng.below(free.length), 1)[0]!;
    const pa = args.pool + f * 4096;
    machine.phys.setWatch(pa >>> 12, false);
    Atomics.store(w, L.reads + f, 0);
    Atomics.store(w, L.writes + f, 0);
    // The tag first, then the frame is in use: a hammer that reaches it sees both.
    Atomics.store(w, pa >>> 2, page);
    Atomics.store(w, (pa >>> 2) + 1, gen);
    Atomics.store(w, L.state + f, 1);
    return f;
  };

  /** Take frame f back from `page` after its PTE was cleared to `old` and shot down. */
  const freeFrame = (page: number, f: number, old: number): void => {
    const reads = Atomics.load(w, L.reads + f);
    const writes = Atomics.load(w, L.writes + f);
    if (writes > 0 && !(old & PTE_D)) {
      Atomics.add(w, k + ST.LOST_D, 1);
      violation(w, k, 1, page, old, writes);
    }
    if (reads + writes > 0 && !(old & PTE_A)) {
      Atomics.add(w, k + ST.LOST_A, 1);
      violation(w, k, 2, page, old, reads);
    }
    Atomics.store(w, L.state + f, 0);
    machine.phys.setWatch((args.pool + f * 4096) >>> 12, true);
    free.push(f);
    Atomics.add(w, k + ST.FREED, 1);
  };

  /** INVLPG here, VEC_INVALIDATE to every hammer, wait for all acknowledgements. */
  const shootdown = (cpuObj: Cpu, page: number): void => {
    const va = base + BigInt(page * 4096);
    cpuObj.invlpg(va);
    if (args.noWait) return;
    const t = machine.apic.send(cpuObj, args.hammers, VEC_INVALIDATE, invalidatePagesPayload(va, 1));
    machine.apic.waitSpin(t, 20_000);
    Atomics.add(w, k + ST.SHOOTDOWNS, 1);
  };

  /** A change of `page` begins (the seqlock goes odd). */
  const begin = (page: number): void => {
    Atomics.add(w, L.ver + page, 1);
  };
  /** The change is complete on every CPU: publish it (the seqlock goes even). */
  const publish = (page: number, ro: boolean): void => {
    Atomics.store(w, L.frameGen + page, gens[page]!);
    Atomics.store(w, L.ro + page, ro ? 1 : 0);
    Atomics.store(w, L.gen + page, gens[page]!);
    Atomics.add(w, L.ver + page, 1);
  };

  /** Atomically replace the low half of the PTE (P, RW, A, D live there); returns the old low half. */
  const xchgLo = (page: number, lo: number): number => Atomics.exchange(w, args.ptes[page]! >>> 2, lo);

  const step = (cpuObj: Cpu): void => {
    const p = rng.below(args.pages);
    const f = frameOf[p]!;
    const r = rng.below(4);
    if (f < 0) {
      // Map: a new frame, RW. Not-present entries are never cached, so no shootdown is needed.
      const g = gens[p]! + 1;
      const nf = allocFrame(p, g);
      if (nf < 0) return;
      gens[p] = g;
      begin(p);
      Atomics.store(w, (args.ptes[p]! >>> 2) + 1, 0);
      xchgLo(p, (args.pool + nf * 4096) | PTE_P | PTE_RW | PTE_US);
      frameOf[p] = nf;
      publish(p, false);
      return;
    }
    if (r === 0) {
      // Write-protect (clear RW atomically: the hardware may be setting A/D right now).
      begin(p);
      Atomics.and(w, args.ptes[p]! >>> 2, ~PTE_RW);
      shootdown(cpuObj, p);
      publish(p, true);
      return;
    }
    if (r === 1) {
      // Make it writable again (no shootdown needed for more rights).
      begin(p);
      Atomics.or(w, args.ptes[p]! >>> 2, PTE_RW);
      publish(p, false);
      return;
    }
    // Unmap (r = 2) or remap to a new frame (r = 3).
    begin(p);
    const g = ++gens[p]!;
    const nf = r === 3 ? allocFrame(p, g) : -1;
    const old = xchgLo(p, nf < 0 ? 0 : (args.pool + nf * 4096) | PTE_P | PTE_RW | PTE_US);
    shootdown(cpuObj, p);
    frameOf[p] = nf;
    publish(p, false);
    freeFrame(p, f, old);
  };

  return {
    step(cpuObj: Cpu): AgentStatus {
      if (Atomics.load(w, k + ST.STARTED) < args.hammers.length) return 'run';
      for (let n = 0; n < 16 && done < args.ops; n++, done++) step(cpuObj);
      Atomics.store(w, k + ST.KERNEL_OPS, done);
      if (done < args.ops) return 'run';
      // Tear down: every page unmapped, shot down, its frame back in the pool.
      for (let p = 0; p < args.pages; p++) {
        const f = frameOf[p]!;
        if (f < 0) continue;
        begin(p);
        gens[p]!++;
        const old = xchgLo(p, 0);
        shootdown(cpuObj, p);
        frameOf[p] = -1;
        publish(p, false);
        freeFrame(p, f, old);
      }
      Atomics.store(w, k + ST.DONE, 1);
      return 'done';
    },
  };
}

/** A hammer: random reads and writes of the pages, each checked against what was published. */
export function stressHammer(args: StressArgs & { index: number }, cpu: number, machine: Machine): Agent {
  const c = machine.cpu(cpu);
  c.writeCr3(BigInt(args.cr3));
  const w = machine.phys.i32;
  const k = args.ctrl >>> 2;
  const L = layout(args);
  const rng = new Random(args.seed * 31 + args.index + 1);
  const halves = Array.from({ length: args.pages }, (_, p) => toVa(BigInt(args.base) + BigInt(p * 4096)));
  let started = false;
  let accesses = 0;
  let writes = 0;
  let faults = 0;
  return {
    step(cpuObj: Cpu): AgentStatus {
      if (!started) {
        Atomics.add(w, k + ST.STARTED, 1);
        started = true;
      }
      for (let n = 0; n < 1000; n++) {
        const p = rng.below(args.pages);
        const write = rng.chance(0.4);
        // What is published before the access: the access may use nothing older.
        const v1 = Atomics.load(w, L.ver + p);
        const gen = Atomics.load(w, L.frameGen + p);
        const ro = Atomics.load(w, L.ro + p) === 1;
        const [hi, lo] = halves[p]!;
        if (cpuObj.translate(hi, lo, write ? 1 : 0, false, false) !== 0) {
          faults++;
          continue;
        }
        // Read-only was settled (no change under way before or during the access).
        const settledRo = ro && (v1 & 1) === 0 && Atomics.load(w, L.ver + p) === v1;
        // No IPI is taken until the next access: these checks see the state the access used.
        const pa = cpuObj.pa;
        const f = Math.floor((pa - args.pool) / 4096);
        accesses++;
        if (f < 0 || f >= args.frames) {
          Atomics.add(w, k + ST.WRONG_PAGE, 1);
          violation(w, k, 3, p, pa, -1);
          continue;
        }
        if (Atomics.load(w, L.state + f) !== 1) {
          Atomics.add(w, k + ST.UAF, 1);
          violation(w, k, 4, p, f, -1);
        }
        const tagPage = Atomics.load(w, (args.pool + f * 4096) >>> 2);
        const tagGen = Atomics.load(w, ((args.pool + f * 4096) >>> 2) + 1);
        if (tagPage !== p) {
          Atomics.add(w, k + ST.WRONG_PAGE, 1);
          violation(w, k, 5, p, tagPage, p);
        } else if (tagGen < gen) {
          Atomics.add(w, k + ST.STALE, 1);
          violation(w, k, 6, p, tagGen, gen);
        }
        if (write) {
          writes++;
          if (settledRo) {
            Atomics.add(w, k + ST.RO_WRITES, 1);
            violation(w, k, 7, p, gen, -1);
          }
          Atomics.add(w, L.writes + f, 1);
        } else Atomics.add(w, L.reads + f, 1);
      }
      if (Atomics.load(w, k + ST.DONE) === 0) return 'run';
      Atomics.add(w, k + ST.ACCESSES, accesses);
      Atomics.add(w, k + ST.WRITES, writes);
      Atomics.add(w, k + ST.FAULTS, faults);
      return 'done';
    },
  };
}
