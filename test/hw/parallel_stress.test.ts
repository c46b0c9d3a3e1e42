/**
 * The parallel engine under stress (hw/parallel.ts, real worker_threads; agents in
 * stress-agents.ts): a kernel agent makes a long random run of page-table changes — map, remap to
 * another frame, write-protect, make writable, unmap — shooting each down with IPIs and waiting
 * for every acknowledgement before publishing it and freeing the old frame, while two hammer
 * agents read and write the pages on other CPUs. Checked all along, under real races:
 *  - no lost A/D bit (the atomically cleared PTE of a frame that was written has D, read has A);
 *  - no stale translation after the acknowledgement (no access reaches a frame older than the
 *    published one, or another page's frame, or writes a page published read-only);
 *  - no use after free (freed frames are watched by the hardware and marked free in the pool);
 *  - no leaked frame (every frame back in the pool, every PTE clear, no TLB entry left that maps
 *    a pool frame once everything was unmapped).
 * test/hw/parallel.test.ts covers fixed patterns (one page's shootdowns, an A/D toggler); this
 * is the random, long-running counterpart.
 */

import { describe, expect, it } from 'vitest';
import { LEVEL_PTE, Machine, PageTableBuilder } from '../../hw/index.ts';
import { ParallelEngine } from '../../hw/parallel.ts';
import { tlbEntries } from '../../hw/inspect.ts';
import { ST, layout, type StressArgs } from './stress-agents.ts';

const AGENTS = new URL('./stress-agents.ts', import.meta.url).href;
const WHAT = ['', 'lost D bit', 'lost A bit', 'access outside the pool', 'use after free', 'frame of another page', 'stale translation', 'write to a read-only page'];

function setup(ops: number, seed: number): { m: Machine; args: StressArgs } {
  const m = new Machine({ memoryBytes: 16 << 20, cpus: 3 });
  const b = new PageTableBuilder(m, 0x100000, 0x200000);
  const base = 0x7f0000000000;
  const pages = 48;
  const ptes: number[] = [];
  for (let i = 0; i < pages; i++) ptes.push(b.entryAddress(base + i * 4096, LEVEL_PTE)); // tables only, no mapping yet
  const args: StressArgs = { ctrl: 0xf00000, cr3: String(b.root), base: String(base), pages, ptes, pool: 0x400000, frames: 96, ops, hammers: [0, 1], seed };
  // The control block must fit in its page range.
  expect(layout(args).end * 4).toBeLessThan(0x10000);
  return { m, args };
}

async function stress(ops: number, seed: number) {
  const { m, args } = setup(ops, seed);
  const e = new ParallelEngine(m, { workers: 3, timeoutMs: 60_000 });
  e.assign(0, { module: AGENTS, export: 'stressHammer', args: { ...args, index: 0 } });
  e.assign(1, { module: AGENTS, export: 'stressHammer', args: { ...args, index: 1 } });
  e.assign(2, { module: AGENTS, export: 'stressKernel', args });
  const run = await e.run();
  const word = (i: number) => Atomics.load(m.phys.i32, (args.ctrl >>> 2) + i);
  const L = layout(args);
  return { m, args, run, word, L };
}

describe('parallel engine under stress (worker threads, random page-table changes)', () => {
  it('loses no A/D bit, uses no stale translation after an acknowledgement, leaks no frame', async () => {
    const ops = 3000;
    const { m, args, run, word, L } = await stress(ops, 7);
    const first = word(ST.FIRST) ? `first: ${WHAT[word(ST.FIRST)]} on page ${word(ST.FIRST + 1)} (saw ${word(ST.FIRST + 2)}, expected ${word(ST.FIRST + 3)})` : '';
    expect(word(ST.DONE)).toBe(1);
    expect(word(ST.KERNEL_OPS)).toBe(ops);
    for (const [name, i] of [['lost D', ST.LOST_D], ['lost A', ST.LOST_A], ['stale', ST.STALE], ['read-only writes', ST.RO_WRITES], ['use after free', ST.UAF], ['wrong page', ST.WRONG_PAGE]] as const) {
      expect(word(i), `${name}; ${first}`).toBe(0);
    }
    // The race was real: many accesses and shootdowns, writes among them, faults on unmapped
    // or read-only pages, frames recycled.
    expect(word(ST.SHOOTDOWNS)).toBeGreaterThan(ops / 2);
    expect(word(ST.ACCESSES)).toBeGreaterThan(100_000);
    expect(word(ST.WRITES)).toBeGreaterThan(10_000);
    expect(word(ST.FAULTS)).toBeGreaterThan(1000);
    expect(word(ST.FREED)).toBeGreaterThan(ops / 4);
    // No access to a freed frame reached memory (the hardware's frame watch).
    expect(m.cpus.reduce((n, c) => n + c.counters().watchHits, 0)).toBe(0);
    // No leak: every frame free, every PTE clear, no TLB entry mapping a pool frame.
    for (let f = 0; f < args.frames; f++) expect(Atomics.load(m.phys.i32, (args.ctrl >>> 2) + L.state + f), `frame ${f}`).toBe(0);
    for (const pte of args.ptes) expect(m.phys.read64(pte) & 1n).toBe(0n);
    for (const c of m.cpus) {
      const stale = tlbEntries(c).filter((e) => e.frame >= BigInt(args.pool / 4096) && e.frame < BigInt(args.pool / 4096 + args.frames));
      expect(stale.map((e) => `cpu ${c.index} ${e.array} 0x${e.va.toString(16)}`)).toEqual([]);
    }
    expect(run.workers).toBe(3);
  }, 60_000);

  it('catches a kernel that frees a frame without waiting for the acknowledgements (the checks can fail)', async () => {
    // The same run with the IPIs not waited for: the hammers keep using stale translations.
    const { m, args } = setup(1500, 11);
    const e = new ParallelEngine(m, { workers: 3, timeoutMs: 60_000 });
    e.assign(0, { module: AGENTS, export: 'stressHammer', args: { ...args, index: 0 } });
    e.assign(1, { module: AGENTS, export: 'stressHammer', args: { ...args, index: 1 } });
    e.assign(2, { module: AGENTS, export: 'stressKernel', args: { ...args, noWait: true } });
    await e.run();
    const word = (i: number) => Atomics.load(m.phys.i32, (args.ctrl >>> 2) + i);
    expect(word(ST.DONE)).toBe(1);
    expect(word(ST.STALE) + word(ST.UAF) + word(ST.WRONG_PAGE) + word(ST.RO_WRITES)).toBeGreaterThan(0);
  }, 60_000);
});
