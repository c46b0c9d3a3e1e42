// ASIDs (kernel/arch/x86/tlb.ts, choose_new_asid in arch/x86/mm/tlb.c): 6 dynamic ASIDs per
// CPU (TLB_NR_DYN_ASIDS), kPCID = ASID + 1, round-robin reuse with a flush, no flush when an mm
// finds its own up-to-date slot again. More mms than slots take turns on one CPU, all mapping
// different frames at the same virtual addresses: none may ever read another's data, and the
// TLB inspector must never show a translation of the current PCID that the running mm's page
// tables do not have. A planted bug (CR3 loads that never flush) shows the checks can fail.
import { describe, expect, it } from 'vitest';
import { Kernel } from '../../kernel/kernel.ts';
import { MAP_ANONYMOUS, MAP_FIXED, MAP_PRIVATE, PROT_READ, PROT_WRITE } from '../../kernel/mm/mmap.ts';
import { TLB_NR_DYN_ASIDS } from '../../kernel/arch/x86/tlb.ts';
import { entriesPerPcid } from '../../hw/inspect.ts';
import type { User } from '../../kernel/uapi.ts';
import type { MmStruct } from '../../kernel/mm/mm_types.ts';
import { PAGE, cached, tlbIncoherence } from './tlb-helpers.ts';

const X = 0x40000000; // every process maps its own pages here
const PAGES = 4;

interface AsidRun {
  k: Kernel;
  /** Reads that returned another process's marker (or anything unexpected). */
  wrong: string[];
  incoherent: string[];
  pcidsSeen: Set<number>;
  /** tlb stats at the end of each round (after every process ran once more). */
  flushesPerRound: number[];
  mms: MmStruct[];
  /** Per round after the first: translations of X the process still found cached on waking. */
  cachedAtWake: number[];
}

/** `n` processes on CPU 0 take turns `rounds` times; each checks its own data after every switch. */
function takeTurns(n: number, rounds: number, opts: { pcid?: boolean; plant?: (k: Kernel) => void } = {}): AsidRun {
  const k = new Kernel({ cpus: 1, memoryBytes: 32 << 20, pcid: opts.pcid ?? true });
  opts.plant?.(k);
  const r: AsidRun = { k, wrong: [], incoherent: [], pcidsSeen: new Set(), flushesPerRound: [], mms: [], cachedAtWake: [] };
  const finished = new Array<number>(rounds).fill(0);
  for (let p = 0; p < n; p++) {
    k.spawn(function* (u: User) {
      yield* u.mmap(X, PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED);
      for (let i = 0; i < PAGES; i++) yield* u.store32(X + i * PAGE, (p + 1) * 0x100 + i);
      r.mms[p] = u.task.mm!;
      for (let round = 0; round < rounds; round++) {
        yield* u.sleep(1_000); // everyone else runs meanwhile
        r.incoherent.push(...tlbIncoherence(k));
        for (const pcid of entriesPerPcid(k.machine.cpu(0)).byPcid.keys()) r.pcidsSeen.add(pcid);
        if (round > 0) r.cachedAtWake.push(cached(k, 0, u.task.mm!, X, X + PAGES * PAGE).length);
        for (let i = 0; i < PAGES; i++) {
          const v = yield* u.load32(X + i * PAGE);
          if (v !== (p + 1) * 0x100 + i) r.wrong.push(`process ${p} round ${round} page ${i}: read ${v.toString(16)}`);
        }
        if (++finished[round]! === n) r.flushesPerRound.push(k.tlb.stats.switchFlushes);
      }
    }, { cpu: 0 });
  }
  k.run({ maxSteps: 100_000 });
  expect(k.liveTasks()).toBe(0);
  return r;
}

const perRound = (r: AsidRun): number[] => r.flushesPerRound.map((v, i) => (i === 0 ? v : v - r.flushesPerRound[i - 1]!));

describe('choose_new_asid', () => {
  it('more mms than ASIDs on one CPU: reuse flushes, and no mm ever sees another mm\'s translation', () => {
    const r = takeTurns(8, 4);
    expect(r.wrong).toEqual([]);
    expect(r.incoherent).toEqual([]);
    // Only the 6 dynamic ASIDs' PCIDs (1..6) are ever used.
    for (const pcid of r.pcidsSeen) {
      expect(pcid).toBeGreaterThanOrEqual(1);
      expect(pcid).toBeLessThanOrEqual(TLB_NR_DYN_ASIDS);
    }
    expect(r.pcidsSeen.size).toBe(TLB_NR_DYN_ASIDS);
    // 8 mms cycling through 6 slots round-robin: every switch finds its slot taken and flushes.
    expect(perRound(r).slice(1)).toEqual([8, 8, 8]);
    expect(r.cachedAtWake.every((c) => c === 0)).toBe(true);
    expect(r.k.reports.reports).toEqual([]);
  });

  it('an mm that finds its up-to-date slot again switches without a flush, keeping its TLB entries', () => {
    const r = takeTurns(5, 4);
    expect(r.wrong).toEqual([]);
    expect(r.incoherent).toEqual([]);
    // After the first round every mm owns a slot: later rounds switch with CR3_NOFLUSH.
    expect(perRound(r).slice(1)).toEqual([0, 0, 0]);
    expect(r.cachedAtWake.every((c) => c > 0)).toBe(true);
  });

  it('slots are handed out round robin from ASID 1 (ASID 0 starts with init_mm), wrapping to 0', () => {
    const k = new Kernel({ cpus: 1, memoryBytes: 32 << 20 });
    const order: number[] = [];
    for (let p = 0; p < 8; p++) {
      k.spawn(function* (u: User) {
        yield* u.mmap(X, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED);
        order.push(k.tlb.cpuState[0]!.loaded_mm_asid);
        yield* u.sleep(100_000); // keep every mm alive until all have run
      }, { cpu: 0 });
    }
    k.run({ maxSteps: 100_000 });
    expect(order).toEqual([1, 2, 3, 4, 5, 0, 1, 2]);
  });

  it('without PCIDs every switch between mms flushes, and nothing leaks across', () => {
    const r = takeTurns(3, 3, { pcid: false });
    expect(r.wrong).toEqual([]);
    expect(r.incoherent).toEqual([]);
    expect(perRound(r).slice(1)).toEqual([3, 3]);
    expect([...r.pcidsSeen].every((p) => p === 0)).toBe(true);
    expect(r.cachedAtWake.every((c) => c === 0)).toBe(true);
  });

  it('the checks catch an ASID reused without a flush (planted: CR3 loads never flush)', () => {
    const r = takeTurns(8, 2, {
      plant: (k) => {
        const t = k.tlb as unknown as { loadCr3(cpu: number, mm: MmStruct, asid: number, flush: boolean): void };
        const load = t.loadCr3.bind(k.tlb);
        t.loadCr3 = (cpu, mm, asid) => load(cpu, mm, asid, false);
      },
    });
    expect(r.wrong.length).toBeGreaterThan(0);
    expect(r.incoherent.length).toBeGreaterThan(0);
  });
});
