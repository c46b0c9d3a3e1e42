/**
 * Inter-processor interrupts (hw/apic.ts): sending to one CPU and to a set, delivery at the
 * target's access boundary (never before the message is visible: send time + ipiLatency),
 * handlers running on the target with the payload, the acknowledgement bookkeeping (ipisSent,
 * ipisDelivered, ipisAcked, acked(ticket), settle() moving the sender's clock to the latest
 * acknowledgement), the built-in VEC_INVALIDATE operations (INV_PAGES, INV_PCID, INV_ALL), and the
 * IpiError cases (bad vector, bad target, long payload, full mailbox, unknown operation, timeout).
 * Both directly and inside the DeterministicEngine with ScriptAgent and StreamAgent.
 */

import { describe, expect, it } from 'vitest';
import { INV_ALL, INV_PAGES, INV_PCID, IpiError, Machine, PageTableBuilder, VEC_INVALIDATE, invalidatePagesPayload, toVa, type IpiMessage } from '../../hw/index.ts';
import type { Cpu } from '../../hw/cpu.ts';
import { DeterministicEngine, ScriptAgent, StreamAgent, accessStream } from '../../hw/engine.ts';
import { RING_CAPACITY } from '../../hw/layout.ts';
import { V1G, V2M, V2M_G, V4K_0, V4K_1, V4K_G, VK, World, ok, tlbKeys, keyString, type Key } from './tlb-world.ts';

const VEC = 0x41;

interface Seen {
  cpu: number;
  clock: number;
  sender: number;
  vector: number;
  seq: number;
  sendTime: number;
  payload: number[];
}

function machine(cpus = 3): { m: Machine; seen: Seen[] } {
  const m = new Machine({ memoryBytes: 4 << 20, cpus });
  const b = new PageTableBuilder(m, 0x100000, 0x140000);
  b.map(0x400000, 0x200000, { A: true, D: true });
  for (const c of m.cpus) {
    ok(c.writeCr3(BigInt(b.root)));
    c.cycles = 0; // forget the MOV to CR3, so the expected times below are plain sums of costs
  }
  const seen: Seen[] = [];
  m.apic.on(VEC, (cpu: Cpu, msg: IpiMessage) => {
    seen.push({ cpu: cpu.index, clock: cpu.cycles, sender: msg.sender, vector: msg.vector, seq: msg.seq, sendTime: msg.sendTime, payload: [...msg.payload] });
  });
  return { m, seen };
}

describe('IPIs sent and delivered directly (no engine)', () => {
  it('one target: delivered at its next access boundary with the payload; acks, counters and settle', () => {
    const { m, seen } = machine();
    const hw = m.config.cost.hw;
    const [c0, c1] = [m.cpu(0), m.cpu(1)];
    c0.cycles = 1000;
    const t = m.apic.send(c0, 1, VEC, [7, 8, -9]);
    expect(t).toEqual({ sender: 0, token: 1, targets: [1] });
    expect(c0.cycles).toBe(1000 + hw.ipiSend);
    expect(m.apic.acked(t)).toBe(false);
    expect(m.apic.pending(c1)).toBe(1);
    expect(m.apic.nextVisible(c1)).toBe(1000 + hw.ipiSend + hw.ipiLatency);
    expect(seen).toEqual([]); // nothing runs until the target reaches an access boundary
    expect(c1.access(0x400010, 'read')).toEqual({ ok: true, pa: 0x200010 });
    const sendTime = 1000 + hw.ipiSend;
    const handlerClock = sendTime + hw.ipiLatency + hw.ipiHandlerEntry;
    expect(seen).toEqual([{ cpu: 1, clock: handlerClock, sender: 0, vector: VEC, seq: 0, sendTime, payload: [7, 8, -9, 0, 0, 0, 0, 0] }]);
    expect(m.apic.acked(t)).toBe(true);
    expect(m.apic.pending(c1)).toBe(0);
    expect(c0.counters()).toMatchObject({ ipisSent: 1, ipisDelivered: 0, ipisAcked: 0 });
    expect(c1.counters()).toMatchObject({ ipisSent: 0, ipisDelivered: 1, ipisAcked: 1 });
    m.apic.settle(t);
    expect(c0.cycles).toBe(handlerClock + hw.ipiAck);
    expect(c0.counters().ipiWaitCycles).toBe(handlerClock + hw.ipiAck - sendTime);
    // A second access delivers nothing more.
    c1.access(0x400010, 'read');
    expect(seen).toHaveLength(1);
  });

  it('a set of targets: one message each, acked only when every target has taken it', () => {
    const { m, seen } = machine(4);
    const hw = m.config.cost.hw;
    const c0 = m.cpu(0);
    const t = m.apic.send(c0, new Set([3, 1]), VEC, [5]);
    expect(t).toEqual({ sender: 0, token: 2, targets: [3, 1] });
    expect(c0.cycles).toBe(2 * hw.ipiSend);
    m.cpu(1).cycles = 1_000_000; // already past the visible time: the clock is not moved back
    m.cpu(1).access(0x400000, 'write');
    expect(m.apic.acked(t)).toBe(false);
    expect(m.apic.pending(m.cpu(2))).toBe(0);
    m.cpu(3).access(0x400000, 'read');
    expect(m.apic.acked(t)).toBe(true);
    expect(seen.map((s) => [s.cpu, s.seq, s.sendTime, s.clock])).toEqual([
      [1, 0, 2 * hw.ipiSend, 1_000_000 + hw.ipiHandlerEntry],
      [3, 0, hw.ipiSend, hw.ipiSend + hw.ipiLatency + hw.ipiHandlerEntry],
    ]);
    m.apic.settle(t);
    expect(c0.cycles).toBe(1_000_000 + hw.ipiHandlerEntry + hw.ipiAck);
    expect(m.totals()).toMatchObject({ ipisSent: 2, ipisDelivered: 2, ipisAcked: 2 });
  });

  it('messages are taken in order; settle never moves the clock backwards', () => {
    const { m, seen } = machine(2);
    const [c0, c1] = [m.cpu(0), m.cpu(1)];
    const tickets = [1, 2, 3].map((k) => m.apic.send(c0, 1, VEC, [k]));
    expect(tickets.map((t) => t.token)).toEqual([1, 2, 3]);
    expect(m.apic.deliver(c1, false)).toBe(3);
    expect(seen.map((s) => [s.seq, s.payload[0]])).toEqual([[0, 1], [1, 2], [2, 3]]);
    expect(tickets.every((t) => m.apic.acked(t))).toBe(true);
    c0.cycles = 1e9;
    m.apic.settle(tickets[2]!);
    expect(c0.cycles).toBe(1e9);
  });

  it('in timed mode (the deterministic engine) a message is not taken before it is visible, unless forced', () => {
    const { m, seen } = machine(2);
    const hw = m.config.cost.hw;
    m.apic.timed = true;
    const [c0, c1] = [m.cpu(0), m.cpu(1)];
    m.apic.send(c0, 1, VEC);
    const visible = hw.ipiSend + hw.ipiLatency;
    c1.cycles = visible - 1;
    expect(m.apic.deliver(c1, false)).toBe(0);
    expect(seen).toEqual([]);
    c1.cycles = visible;
    expect(m.apic.deliver(c1, false)).toBe(1);
    expect(seen[0]!.clock).toBe(visible + hw.ipiHandlerEntry);
    m.apic.send(c0, 1, VEC);
    c1.cycles = 0;
    expect(m.apic.deliver(c1, true)).toBe(1); // an idle CPU is advanced to the visible time
    expect(seen[1]!.clock).toBe(2 * hw.ipiSend + hw.ipiLatency + hw.ipiHandlerEntry);
  });

  it('a vector without a handler is still delivered and acknowledged (counted as spurious)', () => {
    const { m, seen } = machine(2);
    const t = m.apic.send(m.cpu(0), 1, 0x42);
    m.apic.deliver(m.cpu(1), false);
    expect(m.apic.acked(t)).toBe(true);
    expect(m.apic.spurious).toBe(1);
    expect(seen).toEqual([]);
  });

  it('waitSpin takes the sender’s own messages (a self-IPI) and times out with an IpiError', () => {
    const { m, seen } = machine(2);
    const c0 = m.cpu(0);
    const self = m.apic.send(c0, 0, VEC, [1]);
    m.apic.waitSpin(self);
    expect(seen.map((s) => s.cpu)).toEqual([0]);
    const t = m.apic.send(c0, 1, VEC);
    expect(() => m.apic.waitSpin(t, 20)).toThrow(IpiError);
    expect(() => m.apic.waitSpin(t, 20)).toThrow(/waited 20 ms for IPI acknowledgements from CPUs 1/);
  });
});

describe('IPI errors', () => {
  it.each([
    { what: 'vector 31 (an exception vector)', fn: (m: Machine) => m.apic.send(m.cpu(0), 1, 31), msg: /vector must be an integer from 32 to 255.*got 31/ },
    { what: 'vector 256', fn: (m: Machine) => m.apic.send(m.cpu(0), 1, 256), msg: /32 to 255.*got 256/ },
    { what: 'vector 40.5', fn: (m: Machine) => m.apic.send(m.cpu(0), 1, 40.5), msg: /got 40.5/ },
    { what: 'handler for vector 0', fn: (m: Machine) => m.apic.on(0, () => {}), msg: /got 0/ },
    { what: 'target 3 of a 3-CPU machine', fn: (m: Machine) => m.apic.send(m.cpu(0), 3, VEC), msg: /IPI target 3 is not a CPU of this machine \(0\.\.2\)/ },
    { what: 'target -1 in a set', fn: (m: Machine) => m.apic.send(m.cpu(0), [1, -1], VEC), msg: /IPI target -1 is not a CPU/ },
    { what: 'target 1.5', fn: (m: Machine) => m.apic.send(m.cpu(0), 1.5, VEC), msg: /IPI target 1.5/ },
    { what: 'a 9-word payload', fn: (m: Machine) => m.apic.send(m.cpu(0), 1, VEC, [1, 2, 3, 4, 5, 6, 7, 8, 9]), msg: /IPI payload holds at most 8 words, got 9/ },
  ])('$what raises an IpiError naming the problem, and sends nothing', ({ fn, msg }) => {
    const { m } = machine(3);
    expect(() => fn(m)).toThrow(IpiError);
    expect(() => fn(m)).toThrow(msg);
    expect(m.totals().ipisSent).toBe(0);
    expect(m.cpus.map((c) => m.apic.pending(c))).toEqual([0, 0, 0]);
  });

  it('a handler that is not a function is a TypeError', () => {
    const { m } = machine(2);
    expect(() => m.apic.on(VEC, 'nope' as unknown as () => void)).toThrow(TypeError);
  });

  it(`a full mailbox (${RING_CAPACITY} undelivered messages) raises an IpiError and keeps the ring consistent`, () => {
    const { m, seen } = machine(2);
    const [c0, c1] = [m.cpu(0), m.cpu(1)];
    for (let k = 0; k < RING_CAPACITY; k++) m.apic.send(c0, 1, VEC, [k]);
    expect(() => m.apic.send(c0, 1, VEC, [-1])).toThrow(new IpiError(`APIC mailbox of CPU 1 is full (${RING_CAPACITY} undelivered IPIs)`));
    expect(m.apic.pending(c1)).toBe(RING_CAPACITY);
    expect(c0.counters().ipisSent).toBe(RING_CAPACITY);
    expect(m.apic.deliver(c1, false)).toBe(RING_CAPACITY);
    expect(seen.map((s) => s.payload[0])).toEqual(Array.from({ length: RING_CAPACITY }, (_v, k) => k));
    // Room again.
    const t = m.apic.send(c0, 1, VEC, [42]);
    m.apic.deliver(c1, false);
    expect(m.apic.acked(t)).toBe(true);
  });

  it('a send that fails part-way (second target full) keeps later tickets exact', () => {
    const { m, seen } = machine(4);
    const [c0, c1, , c3] = m.cpus as [Cpu, Cpu, Cpu, Cpu];
    for (let k = 0; k < RING_CAPACITY; k++) m.apic.send(c0, 2, VEC);
    // CPU 1 gets its message, CPU 2's mailbox is full.
    expect(() => m.apic.send(c3, [1, 2], VEC, [1])).toThrow(/APIC mailbox of CPU 2 is full/);
    expect(m.apic.pending(c1)).toBe(1);
    expect(c3.counters().ipisSent).toBe(1);
    m.apic.deliver(c1, false); // acknowledges the message that did go out
    const t = m.apic.send(c3, 1, VEC, [2]);
    expect(m.apic.acked(t)).toBe(false); // the earlier acknowledgement must not count for this ticket
    m.apic.deliver(c1, false);
    expect(m.apic.acked(t)).toBe(true);
    expect(seen.filter((s) => s.cpu === 1).map((s) => s.payload[0])).toEqual([1, 2]);
  });

  it('VEC_INVALIDATE with an unknown operation raises an IpiError on the target', () => {
    const { m } = machine(2);
    m.apic.send(m.cpu(0), 1, VEC_INVALIDATE, [99]);
    expect(() => m.apic.deliver(m.cpu(1), false)).toThrow(/VEC_INVALIDATE with unknown operation 99/);
  });
});

describe('VEC_INVALIDATE performs the invalidation on the target', () => {
  /** CPU 1 filled with both address spaces (PCIDs 1 and 2); CPU 0 sends. */
  function filled(): { w: World; before: Key[] } {
    const w = new World();
    w.enablePcid(w.cpu(1));
    w.fillBoth(w.cpu(1));
    w.enablePcid(w.cpu(0));
    w.fillBoth(w.cpu(0));
    return { w, before: tlbKeys(w.cpu(1)) };
  }

  function sendAndDeliver(w: World, payload: number[]): void {
    const t = w.m.apic.send(w.cpu(0), 1, VEC_INVALIDATE, payload);
    expect(w.m.apic.deliver(w.cpu(1), false)).toBe(1);
    expect(w.m.apic.acked(t)).toBe(true);
  }

  const strings = (keys: Key[]) => keys.map(keyString).sort();

  it('INV_PAGES: INVLPG of each page of the range on the target (current PCID and globals)', () => {
    const { w, before } = filled();
    const sender = strings(tlbKeys(w.cpu(0)));
    sendAndDeliver(w, invalidatePagesPayload(V4K_0, 3)); // V4K_0, V4K_1, V4K_G
    const gone = (k: Key) => [V4K_0, V4K_1, V4K_G].includes(k.va) && (k.global || k.pcid === 1);
    expect(strings(tlbKeys(w.cpu(1)))).toEqual(strings(before.filter((k) => !gone(k))));
    expect(w.cpu(1).counters().invlpg).toBe(3);
    expect(strings(tlbKeys(w.cpu(0)))).toEqual(sender); // the sender is not invalidated
  });

  it('INV_PAGES with a 2 MiB stride and an upper-half start', () => {
    const { w, before } = filled();
    sendAndDeliver(w, invalidatePagesPayload(V2M, 2, 21)); // V2M and V2M_G
    sendAndDeliver(w, invalidatePagesPayload(VK, 1));
    expect(invalidatePagesPayload(VK, 1)).toEqual([INV_PAGES, ...toVa(VK), 1, 12]);
    const gone = (k: Key) => [V2M, V2M_G, VK].includes(k.va) && (k.global || k.pcid === 1);
    expect(strings(tlbKeys(w.cpu(1)))).toEqual(strings(before.filter((k) => !gone(k))));
  });

  it('INV_PCID: INVPCID type 1 for PCID 2 and type 0 for one address of PCID 1', () => {
    const { w, before } = filled();
    sendAndDeliver(w, [INV_PCID, 1, 2, 0, 0]);
    sendAndDeliver(w, [INV_PCID, 0, 1, ...toVa(V1G + 0x1000n)]);
    const gone = (k: Key) => (k.pcid === 2 && !k.global) || (k.pcid === 1 && k.va === V1G);
    expect(strings(tlbKeys(w.cpu(1)))).toEqual(strings(before.filter((k) => !gone(k))));
    expect(w.cpu(1).counters().invpcid).toBe(2);
  });

  it('INV_ALL: everything, globals included', () => {
    const { w } = filled();
    sendAndDeliver(w, [INV_ALL]);
    expect(tlbKeys(w.cpu(1))).toEqual([]);
    expect(w.cpu(1).counters().fullFlushes).toBeGreaterThanOrEqual(1);
  });

  it('a shootdown makes the target see a changed PTE (stale before, fresh after)', () => {
    const { w } = filled();
    const t1 = w.cpu(1);
    w.loadA(t1);
    w.map('a', { name: 'V4K_0', va: V4K_0, size: 4096 }, { pa: 0x01234000 });
    expect(t1.access(V4K_0, 'read')).toEqual({ ok: true, pa: 0x01000000 });
    w.m.apic.send(w.cpu(0), 1, VEC_INVALIDATE, invalidatePagesPayload(V4K_0, 1));
    // The access boundary takes the IPI before translating.
    expect(t1.access(V4K_0, 'read')).toEqual({ ok: true, pa: 0x01234000 });
  });
});

describe('IPIs in the DeterministicEngine', () => {
  it('delivery waits for the visible time, happens at the first access boundary after it, and settle() takes the latest ack', () => {
    const { m, seen } = machine(3);
    const hw = m.config.cost.hw;
    const stream = () => accessStream(Array.from({ length: 60_000 }, (_v, i) => [0x400000 + (i % 512) * 8, 'read'] as [number, 'read']));
    const log: string[] = [];
    let settledAt = -1;
    const sender = new ScriptAgent(function* (cpu, agent) {
      cpu.charge(50_000);
      yield 'run';
      const t = m.apic.send(cpu, [1, 2], VEC, [1, 2, 3]);
      log.push(`sent at ${cpu.cycles}, acked=${m.apic.acked(t)}`);
      agent.readyWhen = () => m.apic.acked(t);
      yield 'wait';
      log.push(`acked=${m.apic.acked(t)}`);
      m.apic.settle(t);
      settledAt = cpu.cycles;
    });
    const e = new DeterministicEngine(m, { seed: 3, quantum: 5000 });
    e.attach(0, sender);
    e.attach(1, new StreamAgent(stream()));
    e.attach(2, new StreamAgent(stream()));
    expect(e.run()).toMatchObject({ reason: 'done' });
    expect(log).toEqual([`sent at ${50_000 + 2 * hw.ipiSend}, acked=false`, 'acked=true']);
    expect(seen.map((s) => [s.cpu, s.sendTime, s.payload.slice(0, 3)]).sort()).toEqual([
      [1, 50_000 + hw.ipiSend, [1, 2, 3]],
      [2, 50_000 + 2 * hw.ipiSend, [1, 2, 3]],
    ]);
    for (const s of seen) {
      const visible = s.sendTime + hw.ipiLatency;
      const arrival = s.clock - hw.ipiHandlerEntry;
      expect(arrival).toBeGreaterThanOrEqual(visible);
      // The stream only hits the TLB (4 cycles an access): the next boundary is at most one access late.
      expect(arrival - visible).toBeLessThan(hw.access + hw.tlbL1Hit + 1);
    }
    expect(settledAt).toBe(Math.max(...seen.map((s) => s.clock)) + hw.ipiAck);
    expect(m.cpu(0).counters()).toMatchObject({ ipisSent: 2 });
    expect([1, 2].map((i) => m.cpu(i).counters())).toMatchObject([{ ipisDelivered: 1, ipisAcked: 1 }, { ipisDelivered: 1, ipisAcked: 1 }]);
    expect(e.finished).toBe(true);
  });

  it('an idle (finished) target takes the IPI when it becomes visible and the sender proceeds', () => {
    const { m, seen } = machine(2);
    const hw = m.config.cost.hw;
    let settledAt = -1;
    const e = new DeterministicEngine(m, { seed: 1 });
    e.attach(0, new ScriptAgent(function* (cpu, agent) {
      const t = m.apic.send(cpu, 1, VEC);
      agent.readyWhen = () => m.apic.acked(t);
      yield 'wait';
      m.apic.settle(t);
      settledAt = cpu.cycles;
    }));
    expect(e.run().reason).toBe('done');
    expect(seen).toEqual([expect.objectContaining({ cpu: 1, clock: hw.ipiSend + hw.ipiLatency + hw.ipiHandlerEntry })]);
    expect(settledAt).toBe(hw.ipiSend + hw.ipiLatency + hw.ipiHandlerEntry + hw.ipiAck);
  });
});
