/**
 * hw/apic.ts — inter-processor interrupts through per-CPU local-APIC mailboxes in the shared
 * buffer (the x2APIC ICR write and interrupt acceptance, SDM Vol. 3A ch. 11, reduced to what
 * shootdown experiments need).
 *
 * Sending: the sender reserves a slot in each target's ring with an atomic add on the target's
 * tail, fills the message (vector, 8 payload words, its clock), then publishes it by storing the
 * slot's state word. Delivery: at its next access boundary the target takes every published
 * message in order, runs the handler registered for the vector (interrupt entry cost included)
 * and acknowledges: it writes its acknowledgement time into the sender's ack-time table and
 * atomically increments the sender's ack counter. A sender waits until its ack counter reaches
 * the ticket it got at send time; its clock then moves to the latest acknowledgement.
 *
 * Handlers are JavaScript functions, so each thread registers its own (`Apic.on`). Vector
 * VEC_INVALIDATE is built in: it performs TLB invalidations described by the payload, so a
 * shootdown works the same whether the target CPU is simulated on this thread or in a worker.
 *
 * Timing: in the deterministic engine (`timed`), a message becomes visible `ipiLatency` cycles
 * after it was sent and is taken only once the target's clock has reached that time; an idle
 * target is advanced to it. In the parallel engine messages are taken as soon as they are seen
 * and the clock is moved forward to the visible time if it is behind.
 */

import type { Cpu } from './cpu.ts';
import {
  A_ACKS, A_HEAD, A_RING, A_SENT, A_TAIL, C_CLOCK, C_IPI_ACKED, C_IPI_DELIVERED, C_IPI_SENT, C_IPI_WAIT_CYCLES, M_PAYLOAD, M_PAYLOAD_WORDS,
  M_SENDER, M_SEQ, M_SEND_TIME_F64, M_STATE, M_VECTOR, MSG_WORDS, R_ATTN, RING_CAPACITY,
} from './layout.ts';
import { toVa } from './address.ts';

export interface IpiMessage {
  sender: number;
  vector: number;
  seq: number;
  payload: Int32Array;
  sendTime: number;
}

export type IpiHandler = (cpu: Cpu, msg: IpiMessage) => void;

export interface IpiTicket {
  sender: number;
  /** The sender's acknowledgement count that means "all of these are done". */
  token: number;
  targets: number[];
}

/** mmulab's built-in invalidation vector (a hardware-level service below Linux's system vectors 0xec–0xff). */
export const VEC_INVALIDATE = 0xe0;
/** Payload operations of VEC_INVALIDATE. */
export const INV_PAGES = 1; // INVLPG each page: [op, vaHi, vaLo, pages, strideShift]
export const INV_PCID = 2; // INVPCID: [op, type, pcid, vaHi, vaLo]
export const INV_ALL = 3; // flush everything (global entries too)

export class IpiError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'IpiError';
  }
}

export class Apic {
  private readonly handlers = new Map<number, IpiHandler>();
  /** Deterministic-engine timing (see the file header). */
  timed = false;
  /** Messages delivered to a vector nobody handles (still acknowledged). */
  spurious = 0;
  /** Called with each target as a message to it is published (the deterministic engine's hook). */
  onSend: ((target: number) => void) | null = null;

  /**
   * Per CPU, a Float64Array over its message ring, for the send times (word M_SEND_TIME_F64 of
   * slot k is element k * MSG_WORDS / 2 + M_SEND_TIME_F64): made once, not per message.
   */
  private readonly rings: Float64Array[];

  constructor(private readonly cpus: readonly Cpu[]) {
    this.rings = cpus.map((c) => new Float64Array(c.r.buffer, c.r.byteOffset + A_RING * 4, (RING_CAPACITY * MSG_WORDS) / 2));
    for (const cpu of cpus) cpu.deliverIpis = (c) => this.deliver(c, false);
    this.on(VEC_INVALIDATE, invalidateHandler);
  }

  /** Register the handler of `vector` (32–255) on this thread. */
  on(vector: number, handler: IpiHandler): void {
    checkVector(vector);
    if (typeof handler !== 'function') throw new TypeError('IPI handler must be a function');
    this.handlers.set(vector, handler);
  }

  /** Send `vector` to one CPU or a set of CPUs. */
  send(from: Cpu, targets: number | Iterable<number>, vector: number, payload?: ArrayLike<number>): IpiTicket {
    checkVector(vector);
    const list = typeof targets === 'number' ? [targets] : [...targets];
    for (const t of list) {
      if (!Number.isInteger(t) || t < 0 || t >= this.cpus.length) throw new IpiError(`IPI target ${String(t)} is not a CPU of this machine (0..${this.cpus.length - 1})`);
    }
    if (payload !== undefined && payload.length > M_PAYLOAD_WORDS) throw new IpiError(`IPI payload holds at most ${M_PAYLOAD_WORDS} words, got ${payload.length}`);
    const fr = from.r;
    let published = 0;
    for (const t of list) {
      const target = this.cpus[t]!;
      const tr = target.r;
      // Reserve slot `seq` only while the ring has room: a compare-and-exchange on the tail, so a
      // full ring is refused without touching it (an add that a refused sender took back could
      // hand its slot to a later sender while another had reserved the next one, losing that
      // message behind a slot nobody publishes).
      let seq = Atomics.load(tr, A_TAIL);
      for (;;) {
        if (seq - Atomics.load(tr, A_HEAD) >= RING_CAPACITY) {
          // The messages already published to earlier targets will be acknowledged: count them
          // as sent, or the acknowledgements would satisfy a later ticket early.
          if (published > 0) Atomics.add(fr, A_SENT, published);
          throw new IpiError(`APIC mailbox of CPU ${t} is full (${RING_CAPACITY} undelivered IPIs)`);
        }
        const seen = Atomics.compareExchange(tr, A_TAIL, seq, seq + 1);
        if (seen === seq) break;
        seq = seen;
      }
      from.charge(from.cost.ipiSend);
      const slot = A_RING + (seq % RING_CAPACITY) * MSG_WORDS;
      tr[slot + M_SENDER] = from.index;
      tr[slot + M_VECTOR] = vector;
      tr[slot + M_SEQ] = seq;
      for (let k = 0; k < M_PAYLOAD_WORDS; k++) tr[slot + M_PAYLOAD + k] = payload && k < payload.length ? payload[k]! | 0 : 0;
      this.rings[t]![sendTimeIndex(seq)] = from.cycles;
      Atomics.store(tr, slot + M_STATE, 1);
      Atomics.add(tr, R_ATTN, 1);
      Atomics.notify(tr, A_TAIL);
      from.c[C_IPI_SENT]!++;
      published++;
      if (this.onSend !== null) this.onSend(t);
    }
    const token = Atomics.add(fr, A_SENT, list.length) + list.length;
    return { sender: from.index, token, targets: list };
  }

  /** Are all acknowledgements of `ticket` in? */
  acked(ticket: IpiTicket): boolean {
    return Atomics.load(this.cpus[ticket.sender]!.r, A_ACKS) >= ticket.token;
  }

  /** Move the sender's clock to its latest acknowledgement (call once `acked` is true). */
  settle(ticket: IpiTicket): void {
    const from = this.cpus[ticket.sender]!;
    const acks = ackTimes(from);
    const now = from.cycles;
    let latest = now;
    for (const t of ticket.targets) if (acks[t]! > latest) latest = acks[t]!;
    if (latest > now) {
      from.c[C_IPI_WAIT_CYCLES]! += latest - now;
      from.cycles = latest;
    }
  }

  /**
   * Spin until `ticket` is acknowledged (parallel engine), taking this CPU's own messages while
   * waiting. Throws IpiError after `timeoutMs` of wall time.
   */
  waitSpin(ticket: IpiTicket, timeoutMs = 10_000): void {
    const from = this.cpus[ticket.sender]!;
    const start = performance.now();
    let spins = 0;
    while (!this.acked(ticket)) {
      this.deliver(from, true);
      // Spin: the acknowledgement usually arrives within microseconds. Check the wall-clock
      // timeout now and then, and yield the CPU briefly only after a long wait.
      if (++spins % 65536 === 0) {
        if (performance.now() - start > timeoutMs) throw new IpiError(`CPU ${from.index} waited ${timeoutMs} ms for IPI acknowledgements from CPUs ${ticket.targets.join(',')}`);
        Atomics.wait(from.r, A_ACKS, Atomics.load(from.r, A_ACKS), 0.05);
      }
    }
    this.settle(ticket);
  }

  /** Earliest visible time of an undelivered message to `cpu`, or Infinity. */
  nextVisible(cpu: Cpu): number {
    const r = cpu.r;
    const head = Atomics.load(r, A_HEAD);
    const tail = Atomics.load(r, A_TAIL);
    const ring = this.rings[cpu.index]!;
    let best = Infinity;
    for (let s = head; s < tail; s++) {
      const slot = A_RING + (s % RING_CAPACITY) * MSG_WORDS;
      if (Atomics.load(r, slot + M_STATE) !== 1) continue;
      const t = ring[sendTimeIndex(s)]! + cpu.cost.ipiLatency;
      if (t < best) best = t;
    }
    return best;
  }

  /**
   * Visible time of the oldest undelivered message to `cpu` (Infinity: none, or not published
   * yet): the earliest time deliver() without force takes anything, since it takes messages in
   * the order they were sent — a later one that is visible sooner waits behind it.
   */
  headVisible(cpu: Cpu): number {
    const r = cpu.r;
    const head = Atomics.load(r, A_HEAD);
    if (head === Atomics.load(r, A_TAIL)) return Infinity;
    const slot = A_RING + (head % RING_CAPACITY) * MSG_WORDS;
    if (Atomics.load(r, slot + M_STATE) !== 1) return Infinity;
    return this.rings[cpu.index]![sendTimeIndex(head)]! + cpu.cost.ipiLatency;
  }

  /**
   * Could this thread take every message waiting for `cpu` (each published, with a handler
   * registered here)? A worker running user code for the kernel (hw/remote.ts) asks before it
   * takes any, and gives the CPU back to the main thread when it could not.
   */
  canTakeAll(cpu: Cpu): boolean {
    const r = cpu.r;
    const tail = Atomics.load(r, A_TAIL);
    for (let s = Atomics.load(r, A_HEAD); s < tail; s++) {
      const slot = A_RING + (s % RING_CAPACITY) * MSG_WORDS;
      if (Atomics.load(r, slot + M_STATE) !== 1 || !this.handlers.has(r[slot + M_VECTOR]!)) return false;
    }
    return true;
  }

  /** Undelivered messages to `cpu`. */
  pending(cpu: Cpu): number {
    return Atomics.load(cpu.r, A_TAIL) - Atomics.load(cpu.r, A_HEAD);
  }

  /**
   * Take the messages waiting for `cpu`. With `force`, a timed CPU is advanced to each message's
   * visible time (it was idle or spinning); without it, only messages already visible are taken.
   */
  deliver(cpu: Cpu, force: boolean): number {
    const r = cpu.r;
    const c = cpu.c;
    cpu.sync();
    let head = Atomics.load(r, A_HEAD);
    const ring = this.rings[cpu.index]!;
    let taken = 0;
    while (head !== Atomics.load(r, A_TAIL)) {
      const slot = A_RING + (head % RING_CAPACITY) * MSG_WORDS;
      let spins = 0;
      while (Atomics.load(r, slot + M_STATE) !== 1) {
        if (++spins > 1e8) throw new IpiError(`IPI slot ${head} of CPU ${cpu.index} was reserved but never published`);
      }
      const sendTime = ring[sendTimeIndex(head)]!;
      const visible = sendTime + cpu.cost.ipiLatency;
      if (this.timed && !force && c[C_CLOCK]! < visible) break;
      const msg: IpiMessage = {
        sender: r[slot + M_SENDER]!,
        vector: r[slot + M_VECTOR]!,
        seq: r[slot + M_SEQ]!,
        payload: r.slice(slot + M_PAYLOAD, slot + M_PAYLOAD + M_PAYLOAD_WORDS),
        sendTime,
      };
      Atomics.store(r, slot + M_STATE, 0);
      head++;
      Atomics.store(r, A_HEAD, head);
      if (c[C_CLOCK]! < visible) c[C_CLOCK] = visible;
      c[C_CLOCK]! += cpu.cost.ipiHandlerEntry;
      c[C_IPI_DELIVERED]!++;
      const h = this.handlers.get(msg.vector);
      if (h) h(cpu, msg);
      else this.spurious++;
      const sender = this.cpus[msg.sender]!;
      ackTimes(sender)[cpu.index] = c[C_CLOCK]! + cpu.cost.ipiAck;
      c[C_IPI_ACKED]!++;
      Atomics.add(sender.r, A_ACKS, 1);
      Atomics.notify(sender.r, A_ACKS);
      taken++;
    }
    return taken;
  }
}

function checkVector(vector: number): void {
  if (!Number.isInteger(vector) || vector < 32 || vector > 255) throw new IpiError(`IPI vector must be an integer from 32 to 255 (0–31 are exceptions), got ${String(vector)}`);
}

const ackViews = new WeakMap<Cpu, Float64Array>();
/** Index of message `seq`'s send time in its target's ring view (Apic.rings). */
function sendTimeIndex(seq: number): number {
  return ((seq % RING_CAPACITY) * MSG_WORDS) / 2 + M_SEND_TIME_F64;
}

function ackTimes(cpu: Cpu): Float64Array {
  let v = ackViews.get(cpu);
  if (!v) {
    v = new Float64Array(cpu.r.buffer, cpu.r.byteOffset + cpu.layout.ackTimesByte, 256);
    ackViews.set(cpu, v);
  }
  return v;
}

/** The built-in VEC_INVALIDATE handler: run the requested invalidation on the target CPU. */
function invalidateHandler(cpu: Cpu, msg: IpiMessage): void {
  const p = msg.payload;
  switch (p[0]) {
    case INV_PAGES: {
      const pages = p[3]!;
      const stride = 2 ** p[4]!;
      const base = (BigInt(p[1]! >>> 0) << 32n) | BigInt(p[2]! >>> 0);
      for (let i = 0; i < pages; i++) {
        const [hi, lo] = toVa(BigInt.asUintN(64, base + BigInt(i * stride)));
        cpu.invlpgHalves(hi, lo);
      }
      break;
    }
    case INV_PCID: {
      const va = (BigInt(p[3]! >>> 0) << 32n) | BigInt(p[4]! >>> 0);
      cpu.invpcid(p[1]!, p[2]!, va);
      break;
    }
    case INV_ALL:
      cpu.flushEverything();
      break;
    default:
      throw new IpiError(`VEC_INVALIDATE with unknown operation ${p[0]}`);
  }
}

/** Payload for INVLPG of `pages` pages from `va` stepping 2^strideShift bytes. */
export function invalidatePagesPayload(va: bigint, pages: number, strideShift = 12): number[] {
  const [hi, lo] = toVa(va);
  return [INV_PAGES, hi, lo, pages, strideShift];
}
