/**
 * Agent factories for tests and benchmarks that run in the parallel engine's workers (they are
 * loaded by module path there, so they live in their own module).
 */

import type { Machine } from '../../hw/machine.ts';
import type { Agent, AgentStatus } from '../../hw/engine.ts';
import { StreamAgent, type AccessStream } from '../../hw/engine.ts';
import type { Cpu } from '../../hw/cpu.ts';
import { Random } from '../../hw/random.ts';
import { toVa } from '../../hw/address.ts';
import { IpiError, VEC_INVALIDATE, invalidatePagesPayload, type IpiTicket } from '../../hw/apic.ts';

/** Reads (and optionally writes) `count` accesses over `pages` consecutive pages from `base`. */
export function hotStream(args: { base: string; pages: number; count: number; seed: number; writes?: number; cr3: string }, cpu: number, machine: Machine): Agent {
  const c = machine.cpu(cpu);
  c.writeCr3(BigInt(args.cr3));
  const rng = new Random(args.seed);
  const s: AccessStream = { his: new Int32Array(args.count), los: new Int32Array(args.count), kinds: new Uint8Array(args.count), length: args.count };
  const base = BigInt(args.base);
  for (let i = 0; i < args.count; i++) {
    const [hi, lo] = toVa(base + BigInt(rng.below(args.pages) * 4096 + rng.below(512) * 8));
    s.his[i] = hi;
    s.los[i] = lo;
    s.kinds[i] = args.writes !== undefined && rng.chance(args.writes) ? 1 : 0;
  }
  return new StreamAgent(s);
}

/**
 * hotStream's accesses, `count` in all, made by running a stream of `distinct` accesses over and
 * over: a long run (steady-state throughput, JIT warm-up amortised) without an access array of
 * `count` entries to build and to stream from memory.
 */
export function hotLoop(args: { base: string; pages: number; count: number; distinct: number; seed: number; writes?: number; cr3: string }, cpu: number, machine: Machine): Agent {
  const inner = hotStream({ ...args, count: args.distinct }, cpu, machine) as StreamAgent;
  let left = args.count;
  return {
    step(c: Cpu, until: number): AgentStatus {
      for (;;) {
        const start = inner.pos;
        const status = inner.step(c, until);
        left -= inner.pos - start;
        if (left <= 0) return 'done';
        if (status !== 'done') return status;
        inner.pos = 0;
        inner.stream.length = Math.min(args.distinct, left);
        if (c.cycles >= until) return 'run';
      }
    },
  };
}

/**
 * For the start barrier: the factory of the CPU with `slow` set waits `ms` before it returns and
 * then sets the word at physical `flag`; every agent's first step records that word, at
 * physical `flag` + 4 + 4 × CPU (1: set, 2: not set yet).
 */
export function lateStarter(args: { flag: number; slow?: boolean; ms: number }, cpu: number, machine: Machine): Agent {
  const i32 = machine.phys.i32;
  if (args.slow === true) {
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, args.ms);
    Atomics.store(i32, args.flag >>> 2, 1);
  }
  return {
    step(): AgentStatus {
      Atomics.store(i32, (args.flag >>> 2) + 1 + cpu, Atomics.load(i32, args.flag >>> 2) === 1 ? 1 : 2);
      return 'done';
    },
  };
}

/** Word offsets (Int32) in the control block of the mailbox flood. */
export const FLOOD = { FULL: 0, RECEIVED: 1, OUT_OF_ORDER: 2, DONE_SENDERS: 3 } as const;
const FLOOD_VECTOR = 0x50;

/**
 * Sends `count` IPIs (vector 0x50, payload [its own CPU, sequence number]) to `target` without
 * waiting for acknowledgements; a full mailbox is counted at ctrl FLOOD.FULL and retried.
 */
export function flooder(args: { ctrl: number; target: number; count: number }, cpu: number, machine: Machine): Agent {
  const i32 = machine.phys.i32;
  const w = args.ctrl >>> 2;
  let sent = 0;
  return {
    step(c: Cpu): AgentStatus {
      for (let n = 0; n < 256 && sent < args.count; n++) {
        try {
          machine.apic.send(c, args.target, FLOOD_VECTOR, [cpu, sent]);
          sent++;
        } catch (e) {
          if (!(e instanceof IpiError) || !/is full/.test(e.message)) throw e;
          Atomics.add(i32, w + FLOOD.FULL, 1);
        }
      }
      if (sent < args.count) return 'run';
      Atomics.add(i32, w + FLOOD.DONE_SENDERS, 1);
      return 'done';
    },
  };
}

/**
 * Takes the flood slowly (a short spin per turn, so the mailbox fills up) until `expected`
 * messages have come; checks that each sender's sequence numbers arrive in order, none missing.
 */
export function drainer(args: { ctrl: number; expected: number; senders: number }, _cpu: number, machine: Machine): Agent {
  const i32 = machine.phys.i32;
  const w = args.ctrl >>> 2;
  const next = new Array<number>(args.senders).fill(0);
  let received = 0;
  machine.apic.on(FLOOD_VECTOR, (_c, msg) => {
    const from = msg.payload[0]!;
    if (msg.payload[1] !== next[from]) Atomics.add(i32, w + FLOOD.OUT_OF_ORDER, 1);
    next[from] = msg.payload[1]! + 1;
    received++;
    Atomics.store(i32, w + FLOOD.RECEIVED, received);
  });
  return {
    step(c: Cpu): AgentStatus {
      const until = performance.now() + 0.02;
      while (performance.now() < until);
      machine.apic.deliver(c, true);
      return received >= args.expected ? 'done' : 'run';
    },
  };
}

/** Sends `rounds` invalidation IPIs to `target` and waits for each acknowledgement. */
export function pinger(args: { target: number; rounds: number; cr3: string }, cpu: number, machine: Machine): Agent & { waits: number } {
  const c = machine.cpu(cpu);
  c.writeCr3(BigInt(args.cr3));
  let sent = 0;
  let ticket: IpiTicket | null = null;
  const agent = {
    waits: 0,
    step(cpuObj: Cpu): AgentStatus {
      if (ticket) {
        machine.apic.waitSpin(ticket);
        ticket = null;
      }
      if (sent >= args.rounds) return 'done';
      ticket = machine.apic.send(cpuObj, args.target, VEC_INVALIDATE, invalidatePagesPayload(0x1000n, 1));
      sent++;
      return 'wait';
    },
    ready(): boolean {
      return ticket === null || machine.apic.acked(ticket);
    },
  };
  return agent;
}

/** Does nothing; its worker still answers IPIs until every worker is done. */
export function idle(): Agent {
  return { step: () => 'done' };
}

// ================================================================================================
// Agents of test/hw/parallel.test.ts. They coordinate through words of physical memory at an
// agreed address (`ctrl`), read and written with Atomics through machine.phys.i32, since agent
// arguments must be JSON.
// ================================================================================================

/** Word offsets (Int32) in the control block of the A/D race. */
export const AD = { ARRIVED: 0, PHASE: 1, HAMMERS_DONE: 2, ROUNDS_CHECKED: 3, MISSING_AD: 4, COUNTER_LOST: 5, INCREMENTS: 6, ACCESS_FAULTS: 7, FINISHED: 8 } as const;
/** Bits 11:9 of a PTE (ignored by the hardware) hold the toggler's counter. */
const SOFT_SHIFT = 9;
const SOFT_MASK = 7 << SOFT_SHIFT;
const PTE_A = 1 << 5;
const PTE_D = 1 << 6;

interface AdArgs {
  ctrl: number;
  cr3: string;
  base: string;
  pages: number;
  rounds: number;
  /** Agents taking part (for the start barrier). */
  parties: number;
  /** Hammers taking part. */
  hammers: number;
}

/**
 * A/D race, hammer side: each round (phase 2r+1) INVLPG, read and write every page, so each walk
 * sets A (read) and then D (write, the D re-walk) in the same PTEs the other hammers and the
 * toggler are updating. Counts accesses that fault (none may).
 */
export function adHammer(args: AdArgs, cpu: number, machine: Machine): Agent {
  const c = machine.cpu(cpu);
  c.writeCr3(BigInt(args.cr3));
  const w = machine.phys.i32;
  const k = args.ctrl >>> 2;
  const base = BigInt(args.base);
  let arrived = false;
  let round = 0;
  let page = 0;
  let faults = 0;
  const phase = () => Atomics.load(w, k + AD.PHASE);
  return {
    step(cpuObj: Cpu): AgentStatus {
      if (!arrived) {
        Atomics.add(w, k + AD.ARRIVED, 1);
        arrived = true;
      }
      if (round >= args.rounds) return 'done';
      if (phase() !== 2 * round + 1) return 'wait';
      const end = Math.min(args.pages, page + 64);
      for (; page < end; page++) {
        const [hi, lo] = toVa(base + BigInt(page * 4096));
        cpuObj.invlpgHalves(hi, lo);
        if (cpuObj.translate(hi, lo, 0, false, false) !== 0) faults++;
        if (cpuObj.translate(hi, lo, 1, false, false) !== 0) faults++;
      }
      if (page < args.pages) return 'run';
      page = 0;
      round++;
      Atomics.add(w, k + AD.ACCESS_FAULTS, faults);
      faults = 0;
      Atomics.add(w, k + AD.HAMMERS_DONE, 1);
      return round >= args.rounds ? 'done' : 'wait';
    },
    ready(): boolean {
      return phase() === 2 * round + 1;
    },
  };
}

/**
 * A/D race, the other writer: while the hammers run it keeps incrementing a counter in bits 11:9
 * of every PTE with compare-and-exchange loops on the low half (as an OS updates software bits).
 * Between rounds it checks that every PTE has A and D (the hammers' writes succeeded, so both must
 * be set) and that its counter survived, then clears A and D (keeping its bits) for the next round.
 */
export function adToggler(args: AdArgs & { ptes: number[] }, _cpu: number, machine: Machine): Agent {
  const w = machine.phys.i32;
  const k = args.ctrl >>> 2;
  const counts = new Array<number>(args.ptes.length).fill(0);
  let arrived = false;
  let round = 0;
  let i = 0;
  const check = (): void => {
    let missing = 0;
    let lost = 0;
    args.ptes.forEach((pa, j) => {
      const lo = Atomics.load(w, pa >>> 2);
      if ((lo & (PTE_A | PTE_D)) !== (PTE_A | PTE_D)) missing++;
      if (((lo & SOFT_MASK) >>> SOFT_SHIFT) !== counts[j]! % 8) lost++;
    });
    Atomics.add(w, k + AD.MISSING_AD, missing);
    Atomics.add(w, k + AD.COUNTER_LOST, lost);
    Atomics.add(w, k + AD.ROUNDS_CHECKED, 1);
  };
  return {
    step(): AgentStatus {
      if (!arrived) {
        Atomics.add(w, k + AD.ARRIVED, 1);
        arrived = true;
      }
      const phase = Atomics.load(w, k + AD.PHASE);
      if (phase === 0) {
        if (Atomics.load(w, k + AD.ARRIVED) < args.parties) return 'run';
        Atomics.store(w, k + AD.PHASE, 1);
        return 'run';
      }
      // Hammer phase of `round`: toggle until every hammer has finished the round.
      for (let n = 0; n < 4096; n++, i = (i + 1) % args.ptes.length) {
        const wi = args.ptes[i]! >>> 2;
        for (;;) {
          const old = Atomics.load(w, wi);
          const next = (old & ~SOFT_MASK) | ((((old & SOFT_MASK) >>> SOFT_SHIFT) + 1) & 7) << SOFT_SHIFT;
          if (Atomics.compareExchange(w, wi, old, next) === old) break;
        }
        counts[i]!++;
        Atomics.add(w, k + AD.INCREMENTS, 1);
      }
      if (Atomics.load(w, k + AD.HAMMERS_DONE) < args.hammers * (round + 1)) return 'run';
      check();
      round++;
      if (round >= args.rounds) {
        Atomics.store(w, k + AD.FINISHED, 1);
        return 'done';
      }
      // Clear A and D (keeping the counter) so the next round sets them again.
      for (const pa of args.ptes) {
        const wi = pa >>> 2;
        for (;;) {
          const old = Atomics.load(w, wi);
          if (Atomics.compareExchange(w, wi, old, old & ~(PTE_A | PTE_D)) === old) break;
        }
      }
      Atomics.store(w, k + AD.PHASE, 2 * round + 1);
      return 'run';
    },
  };
}

/** Word offsets (Int32) in the control block of the shootdown stress. */
export const SD = { STARTED: 0, EPOCH: 1, DONE: 2, HAMMER: 8 } as const;
/** Per hammer (8 words from SD.HAMMER + 8 * index): accesses, violations, highest epoch seen, epochs seen, faults, the first violation. */
export const SDH = { ACCESSES: 0, VIOLATIONS: 1, MAX_SEEN: 2, EPOCHS_SEEN: 3, FAULTS: 4, FIRST_BAD_EPOCH: 5, FIRST_BAD_SEEN: 6 } as const;

interface ShootArgs {
  ctrl: number;
  cr3: string;
  va: string;
  pte: number;
  /** Frame of epoch e is firstFrame + e * 4096. */
  firstFrame: number;
  rounds: number;
  hammers: number[];
}

/**
 * Shootdown stress, target side: read the page over and over through the TLB; before each access
 * read the published epoch e. Once epoch e is published (after every acknowledgement of its
 * shootdown), no access may return the frame of an earlier epoch.
 */
export function shootHammer(args: ShootArgs & { index: number }, cpu: number, machine: Machine): Agent {
  const c = machine.cpu(cpu);
  c.writeCr3(BigInt(args.cr3));
  const w = machine.phys.i32;
  const k = args.ctrl >>> 2;
  const h = k + SD.HAMMER + 8 * args.index;
  const [hi, lo] = toVa(BigInt(args.va));
  let started = false;
  let accesses = 0;
  let violations = 0;
  let maxSeen = -1;
  let faults = 0;
  const epochs = new Set<number>();
  return {
    step(cpuObj: Cpu): AgentStatus {
      if (!started) {
        Atomics.add(w, k + SD.STARTED, 1);
        started = true;
      }
      for (let n = 0; n < 2000; n++) {
        const epoch = Atomics.load(w, k + SD.EPOCH);
        if (cpuObj.translate(hi, lo, 0, false, false) !== 0) {
          faults++;
          continue;
        }
        const seen = Math.floor((cpuObj.pa - args.firstFrame) / 4096);
        accesses++;
        epochs.add(seen);
        if (seen > maxSeen) maxSeen = seen;
        if (seen < epoch) {
          if (violations === 0) {
            Atomics.store(w, h + SDH.FIRST_BAD_EPOCH, epoch);
            Atomics.store(w, h + SDH.FIRST_BAD_SEEN, seen);
          }
          violations++;
        }
      }
      if (Atomics.load(w, k + SD.DONE) === 0) return 'run';
      Atomics.store(w, h + SDH.ACCESSES, accesses);
      Atomics.store(w, h + SDH.VIOLATIONS, violations);
      Atomics.store(w, h + SDH.MAX_SEEN, maxSeen);
      Atomics.store(w, h + SDH.EPOCHS_SEEN, epochs.size);
      Atomics.store(w, h + SDH.FAULTS, faults);
      return 'done';
    },
  };
}

/**
 * Shootdown stress, initiator: for each epoch, point the PTE at a new frame, INVLPG locally, send
 * VEC_INVALIDATE for the page to every hammer, spin until all acknowledge, then publish the epoch.
 */
export function shooter(args: ShootArgs, cpu: number, machine: Machine): Agent {
  const c = machine.cpu(cpu);
  c.writeCr3(BigInt(args.cr3));
  const w = machine.phys.i32;
  const k = args.ctrl >>> 2;
  const va = BigInt(args.va);
  let epoch = 0;
  return {
    step(cpuObj: Cpu): AgentStatus {
      if (Atomics.load(w, k + SD.STARTED) < args.hammers.length) return 'run';
      if (epoch >= args.rounds) {
        Atomics.store(w, k + SD.DONE, 1);
        return 'done';
      }
      epoch++;
      // P, RW, US, A, D and the new frame; a plain 64-bit store in the PAE order.
      machine.phys.write64(args.pte, BigInt(args.firstFrame + epoch * 4096) | 0x67n);
      cpuObj.invlpg(va);
      const t = machine.apic.send(cpuObj, args.hammers, VEC_INVALIDATE, invalidatePagesPayload(va, 1));
      machine.apic.waitSpin(t, 20_000);
      Atomics.store(w, k + SD.EPOCH, epoch);
      return 'run';
    },
  };
}
