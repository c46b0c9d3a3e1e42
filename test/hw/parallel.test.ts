/**
 * hw/parallel.ts with real worker_threads (agents from test/hw/agents.ts, loaded by URL):
 *
 *  (a) A/D race: two workers re-walk the same 1,024 PTEs again and again (INVLPG, read, write:
 *      the walks set A and then D with compare-and-exchange) while a third worker keeps
 *      incrementing a counter in the PTEs' software bits 11:9 with its own CAS loops. After every
 *      round no A or D bit that the (successful) writes had to set is missing, and at the end none
 *      of the other writer's updates was lost.
 *  (b) Shootdown stress: two workers read one page through their TLBs as fast as they can while a
 *      third changes the PTE and shoots the page down with VEC_INVALIDATE IPIs (apic.send +
 *      waitSpin), publishing an epoch after the last acknowledgement; no read that starts after an
 *      epoch is published returns an older frame.
 *
 * The agents coordinate through words of the machine's physical memory (agent arguments must be
 * JSON). Interleavings are the host's, so the properties checked hold for every interleaving.
 */

import { describe, expect, it } from 'vitest';
import { LEVEL_PTE, Machine, PageTableBuilder } from '../../hw/index.ts';
import { ParallelEngine } from '../../hw/parallel.ts';
import { AD, FLOOD, SD, SDH } from './agents.ts';

const AGENTS = new URL('./agents.ts', import.meta.url).href;

describe('parallel engine (worker threads)', () => {
  it('keeps the counts and clocks of work done on this thread before and after the run', async () => {
    const m = new Machine({ memoryBytes: 8 << 20, cpus: 2 });
    const b = new PageTableBuilder(m, 0x100000, 0x200000);
    for (let i = 0; i < 8; i++) b.map(0x400000 + i * 4096, 0x300000 + i * 4096, { A: true, D: true });
    const cpu = m.cpu(0);
    cpu.writeCr3(BigInt(b.root));
    /** Cycles charged for one walk of 0x400000 (the entry dropped first). */
    const walkCycles = () => {
      cpu.invlpg(0x400000);
      const before = cpu.counters();
      expect(cpu.access(0x400000, 'read').ok).toBe(true);
      const after = cpu.counters();
      expect(after.walks! - before.walks!).toBe(1);
      return after.cycles! - before.cycles!;
    };
    walkCycles(); // the first walk fills the paging-structure caches
    const oneWalk = walkCycles();
    // L1 hits on this thread, on a CPU no worker drives: counted lazily until something reads
    // the counters, and not lost by the run.
    const other = m.cpu(1);
    other.writeCr3(BigInt(b.root));
    for (let i = 0; i < 100; i++) expect(other.access(0x400000 + i * 8, 'read').ok).toBe(true);
    const e = new ParallelEngine(m, { workers: 1, timeoutMs: 60_000 });
    // The worker drives CPU 0 too: its walks are charged there, not again on this thread.
    e.assign(0, { module: AGENTS, export: 'hotStream', args: { base: '0x400000', pages: 8, count: 1000, seed: 1, cr3: String(b.root) } });
    await e.run();
    expect(other.counters()).toMatchObject({ l1Hits: 99, walks: 1 });
    expect(cpu.counters().walks).toBeGreaterThan(2);
    expect(walkCycles()).toBe(oneWalk);
  });

  it('starts no CPU before every worker has built its agents', async () => {
    const m = new Machine({ memoryBytes: 8 << 20, cpus: 2 });
    const flag = 0x3ff000;
    const e = new ParallelEngine(m, { workers: 2, timeoutMs: 60_000 });
    e.assign(0, { module: AGENTS, export: 'lateStarter', args: { flag, ms: 0 } });
    e.assign(1, { module: AGENTS, export: 'lateStarter', args: { flag, slow: true, ms: 300 } });
    await e.run();
    // CPU 0's first step came after CPU 1's factory returned, 300 ms after CPU 0's.
    expect([1, 2].map((w) => Atomics.load(m.phys.i32, (flag >>> 2) + w))).toEqual([1, 1]);
  });

  it('hotLoop makes exactly `count` accesses, repeating a stream of `distinct`', async () => {
    const m = new Machine({ memoryBytes: 8 << 20, cpus: 1 });
    const b = new PageTableBuilder(m, 0x100000, 0x200000);
    for (let i = 0; i < 8; i++) b.map(0x400000 + i * 4096, 0x300000 + i * 4096, { A: true, D: true });
    const e = new ParallelEngine(m, { workers: 1, timeoutMs: 60_000, quantum: 500 });
    e.assign(0, { module: AGENTS, export: 'hotLoop', args: { base: '0x400000', pages: 8, count: 100_003, distinct: 1000, seed: 1, cr3: String(b.root) } });
    await e.run();
    const c = m.cpu(0).counters();
    expect(c.accesses).toBe(100_003);
    expect(c.walks).toBe(8);
  });

  it('two senders flooding one mailbox past full lose no IPI, and each one arrives once, in order', async () => {
    const m = new Machine({ memoryBytes: 8 << 20, cpus: 3 });
    const ctrl = 0x3ff000;
    const count = 40_000;
    const e = new ParallelEngine(m, { workers: 3, timeoutMs: 60_000 });
    e.assign(0, { module: AGENTS, export: 'flooder', args: { ctrl, target: 2, count } });
    e.assign(1, { module: AGENTS, export: 'flooder', args: { ctrl, target: 2, count } });
    e.assign(2, { module: AGENTS, export: 'drainer', args: { ctrl, expected: 2 * count, senders: 2 } });
    await e.run();
    const word = (i: number) => Atomics.load(m.phys.i32, (ctrl >>> 2) + i);
    expect(word(FLOOD.RECEIVED)).toBe(2 * count);
    expect(word(FLOOD.OUT_OF_ORDER)).toBe(0);
    expect(word(FLOOD.DONE_SENDERS)).toBe(2);
    // The mailbox was full again and again (the case the senders race on).
    expect(word(FLOOD.FULL)).toBeGreaterThan(0);
    expect(m.totals().ipisSent).toBe(2 * count);
  }, 90_000);

  it('(a) concurrent A/D updates on the same PTEs never lose a bit, theirs or another writer’s', async () => {
    const m = new Machine({ memoryBytes: 8 << 20, cpus: 3 });
    const b = new PageTableBuilder(m, 0x100000, 0x200000);
    const base = 0x40000000;
    const pages = 1024;
    const rounds = 12;
    const ptes: number[] = [];
    for (let i = 0; i < pages; i++) ptes.push(b.map(base + i * 4096, 0x400000 + (i % 64) * 4096, { A: false, D: false }));
    const ctrl = 0x3ff000;
    const args = { ctrl, cr3: String(b.root), base: String(base), pages, rounds, parties: 3, hammers: 2 };
    const e = new ParallelEngine(m, { workers: 3, timeoutMs: 60_000 });
    e.assign(0, { module: AGENTS, export: 'adHammer', args });
    e.assign(1, { module: AGENTS, export: 'adHammer', args });
    e.assign(2, { module: AGENTS, export: 'adToggler', args: { ...args, ptes } });
    const r = await e.run();
    expect(r.workers).toBe(3);
    const word = (i: number) => Atomics.load(m.phys.i32, (ctrl >>> 2) + i);
    expect(word(AD.FINISHED)).toBe(1);
    expect(word(AD.ROUNDS_CHECKED)).toBe(rounds);
    expect(word(AD.ACCESS_FAULTS)).toBe(0);
    expect(word(AD.MISSING_AD)).toBe(0);
    expect(word(AD.COUNTER_LOST)).toBe(0);
    expect(word(AD.INCREMENTS)).toBeGreaterThan(0);
    // Every PTE: A and D set by the last round, the frame and rights untouched.
    for (let i = 0; i < pages; i++) {
      const v = m.phys.read64(ptes[i]!);
      expect(v & 0x000ffffffffff067n).toBe(BigInt(0x400000 + (i % 64) * 4096) | 0x67n);
    }
    const t = m.totals();
    // Each hammer walks every page at least once a round (after its INVLPG); the first write of a
    // round to a page always finds D clear and re-walks, a later one may find D already set.
    expect(t.walks).toBeGreaterThanOrEqual(2 * rounds * pages);
    expect(t.dirtyRewalks).toBeGreaterThanOrEqual(rounds * pages);
    expect(t.dirtyRewalks).toBeLessThanOrEqual(2 * rounds * pages);
    expect(t.pageFaults).toBe(0);
  }, 120_000);

  it('(b) after the last acknowledgement of a shootdown no CPU returns the old translation', async () => {
    const m = new Machine({ memoryBytes: 8 << 20, cpus: 3 });
    const b = new PageTableBuilder(m, 0x100000, 0x200000);
    const va = 0x7f0000000000;
    const firstFrame = 0x400000;
    b.map(va, firstFrame, { A: true, D: true });
    const pte = b.entryAddress(va, LEVEL_PTE);
    const ctrl = 0x3ff000;
    const rounds = 150;
    const args = { ctrl, cr3: String(b.root), va: String(va), pte, firstFrame, rounds, hammers: [0, 1] };
    const e = new ParallelEngine(m, { workers: 3, timeoutMs: 60_000 });
    e.assign(0, { module: AGENTS, export: 'shootHammer', args: { ...args, index: 0 } });
    e.assign(1, { module: AGENTS, export: 'shootHammer', args: { ...args, index: 1 } });
    e.assign(2, { module: AGENTS, export: 'shooter', args });
    await e.run();
    const word = (i: number) => Atomics.load(m.phys.i32, (ctrl >>> 2) + i);
    expect(word(SD.EPOCH)).toBe(rounds);
    expect(word(SD.DONE)).toBe(1);
    for (const h of [0, 1]) {
      const at = (i: number) => word(SD.HAMMER + 8 * h + i);
      const report = `hammer ${h}: first violation saw epoch ${at(SDH.FIRST_BAD_SEEN)} after epoch ${at(SDH.FIRST_BAD_EPOCH)} was published`;
      expect(at(SDH.VIOLATIONS), report).toBe(0);
      expect(at(SDH.FAULTS)).toBe(0);
      expect(at(SDH.ACCESSES)).toBeGreaterThan(1000);
      expect(at(SDH.MAX_SEEN)).toBe(rounds); // it saw the final frame
      expect(at(SDH.EPOCHS_SEEN)).toBeGreaterThan(1);
    }
    expect(m.cpu(2).counters().ipisSent).toBe(2 * rounds);
    expect(m.cpu(0).counters().ipisAcked + m.cpu(1).counters().ipisAcked).toBe(2 * rounds);
    expect(m.phys.read64(pte)).toBe(BigInt(firstFrame + rounds * 4096) | 0x67n);
  }, 120_000);
});
