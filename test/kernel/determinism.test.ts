// Determinism of the concurrency layer: the same seed gives the same interleaving, so every
// counter (TLB flushes and IPIs, lock contention per caller, VMA-lock outcomes, per-CPU hardware
// counters and clocks, ASID slots) and the whole trace come out identical run after run (mm ids
// compared relative to init_mm: their counter is shared by every kernel in the process).
import { describe, expect, it } from 'vitest';
import { Kernel } from '../../kernel/kernel.ts';
import { MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE } from '../../kernel/mm/mmap.ts';
import { MADV_DONTNEED } from '../../kernel/mm/madvise.ts';
import { SignalError } from '../../kernel/signal.ts';
import type { User } from '../../kernel/uapi.ts';
import { mmHash } from '../../kernel/mm/mmap_lock.ts';
import { PAGE } from './tlb-helpers.ts';

const RW = PROT_READ | PROT_WRITE;
const ANON = MAP_PRIVATE | MAP_ANONYMOUS;

/** Two processes, five threads on three CPUs, changing and touching memory at once. */
function workload(seed: number): Record<string, unknown> {
  const k = new Kernel({ cpus: 3, memoryBytes: 32 << 20, seed, trace: true });
  const lockStats: Record<string, unknown> = {};
  for (let p = 0; p < 2; p++) {
    k.spawn(function* (u: User) {
      const a = yield* u.mmap(0, 32 * PAGE, RW, ANON);
      for (let t = 0; t < 2; t++) {
        yield* u.clone(function* (w: User) {
          let i = t + p;
          for (let n = 0; n < 400; n++) {
            i = (i * 13 + 7) % 32;
            try {
              if (i % 4) yield* w.load32(a + i * PAGE);
              else yield* w.store32(a + i * PAGE, i);
            } catch (e) {
              if (!(e instanceof SignalError)) throw e;
            }
            // Sleep now and then: a running task keeps its CPU for a whole time slice, and the
            // main threads share the CPUs.
            if (n % 20 === 19) yield* w.sleep(3_000);
          }
        });
      }
      for (let r = 0; r < 6; r++) {
        const s = a + ((r * 5) % 24) * PAGE;
        yield* u.madvise(s, 4 * PAGE, MADV_DONTNEED);
        yield* u.mprotect(s, 8 * PAGE, PROT_READ);
        yield* u.mprotect(s, 8 * PAGE, RW);
        yield* u.sleep(7_000);
      }
      lockStats[`p${p}`] = Object.fromEntries([...u.task.mm!.mmap_lock.stats.byCaller].map(([c, v]) => [c, { ...v }]));
      yield* u.sleep(200_000);
    });
  }
  k.run({ maxSteps: 300_000 });
  expect(k.liveTasks()).toBe(0);
  // mm ids (ctx_id, and the mm=%p of the trace made from it) come from a counter shared by all
  // kernels of this JavaScript process: compare them relative to this kernel's init_mm.
  const base = k.init_mm.ctx_id;
  const rel = (text: string): string => text.replace(/mm=([0-9a-f]{16})/g, (_, h: string) => `mm=+${(BigInt('0x' + h) - BigInt('0x' + mmHash(k.init_mm))) / 0x1000n}`);
  return {
    tlb: { ...k.tlb.stats },
    vmaLocks: { ...k.locks.vmaStats, byCaller: Object.fromEntries([...k.locks.vmaStats.byCaller].map(([c, v]) => [c, { ...v }])) },
    mmapLocks: lockStats,
    cpus: k.machine.cpus.map((c) => ({ cycles: c.cycles, ...c.counters() })),
    cpuState: k.tlb.cpuState.map((s) => ({ loaded: s.loaded_mm.ctx_id - base, asid: s.loaded_mm_asid, next: s.next_asid, lazy: s.is_lazy, slots: s.ctxs.map((c) => [c.ctx_id ? c.ctx_id - base : 0, c.tlb_gen]) })),
    pages: { allocs: k.pages.allocs, frees: k.pages.frees, free: k.pages.freeFrames },
    reports: k.reports.reports.map((r) => r.title),
    trace: k.trace.events.map((e) => `${e.ts} ${e.cpu} ${e.pid} ${e.name} ${rel(e.text)}`),
  };
}

describe('determinism', () => {
  it('the same seed gives identical counters, state and trace', () => {
    const a = workload(7);
    const b = workload(7);
    expect((a.trace as string[]).length).toBeGreaterThan(500);
    expect((a.tlb as { ipis: number }).ipis).toBeGreaterThan(0);
    expect(b).toEqual(a);
  });
});
