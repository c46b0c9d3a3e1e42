// The LATR flush policy (kernel/arch/x86/tlb_latr.ts) against Linux's (kernel/arch/x86/tlb.ts):
// munmap sends no IPI and returns sooner; the other CPUs keep the old translations until their
// next tick (the lazy window, seen by the inspector) and then drop them; the freed pages are held
// until then, so no stale entry can reach a reused page — with a planted twin (holdPages = false,
// the artifact's LAZY_MEM_FREE=n) showing the checks catch it; a new mapping over a held range
// completes the states first; mprotect, MADV_DONTNEED and flushes that free page tables stay
// synchronous; a full ring falls back to IPIs. All figures are computed by the runs.
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { Kernel } from '../../kernel/kernel.ts';
import { LatrPolicy, LAZY_TLB_NUM_ENTRIES } from '../../kernel/arch/x86/tlb_latr.ts';
import { LINUX_POLICY } from '../../kernel/arch/x86/tlb.ts';
import { ptePfn } from '../../kernel/arch/x86/pgtable.ts';
import { MAP_ANONYMOUS, MAP_FIXED, MAP_PRIVATE, PROT_READ, PROT_WRITE } from '../../kernel/mm/mmap.ts';
import { MADV_DONTNEED } from '../../kernel/mm/madvise.ts';
import { PG_free } from '../../kernel/mm/page_alloc.ts';
import { check_vm_invariants } from '../../kernel/mm/debug_vm.ts';
import { SignalError } from '../../kernel/signal.ts';
import type { User } from '../../kernel/uapi.ts';
import type { KGen } from '../../kernel/sched/core.ts';
import { PAGE, cached } from './tlb-helpers.ts';

const RW = PROT_READ | PROT_WRITE;
const ANON = MAP_PRIVATE | MAP_ANONYMOUS;

function kernel(cpus: number, policy: 'linux' | 'latr', hz = 1000): { k: Kernel; latr: LatrPolicy | null } {
  const k = new Kernel({ cpus, memoryBytes: 32 << 20, hz });
  let latr: LatrPolicy | null = null;
  if (policy === 'latr') {
    latr = LatrPolicy.install(k);
    latr.checkOnRelease = true;
  } else k.tlb.policy = LINUX_POLICY;
  return { k, latr };
}

function runToEnd(k: Kernel): void {
  const r = k.run({ maxSteps: 2_000_000 });
  if (r.reason !== 'done' || k.liveTasks() !== 0) throw new Error(`scenario still running after ${r.steps} steps`);
}

type Outcome = number | 'SIGSEGV';

function* attempt(f: () => KGen<number>): KGen<Outcome> {
  try {
    return yield* f();
  } catch (e) {
    if (e instanceof SignalError) return 'SIGSEGV';
    throw e;
  }
}

interface MunmapRun {
  k: Kernel;
  latr: LatrPolicy | null;
  latencyCycles: number;
  ipis: number;
  /** Usable stale translations of the range right after munmap returned. */
  staleAfter: number;
  /** Frames the range had, and whether each was free right after munmap. */
  frames: number[];
  freeAfter: boolean[];
  /** A tick and a bit later. */
  staleLater: number;
  freeLater: boolean[];
  cachedLater: number[];
  /** What each worker read at the old address after the main thread reused memory. */
  reads: Outcome[];
  reportsKasan: number;
  invariantProblems: string[];
}

/**
 * Main thread on CPU 0 maps 16 pages (value 0x1000 + i), workers on CPUs 1..n read the first 8
 * and keep computing in the mm. Main munmaps those 8 (the other 8 keep the page table, so no
 * table is freed); then, if `reuse`, maps and fills fresh memory elsewhere
 * (which takes freed frames first) and lets the workers read the old address once — before
 * their next tick; then waits 1.5 ticks.
 */
function munmapRun(policy: 'linux' | 'latr', opts: { workers?: number; reuse?: boolean; hold?: boolean } = {}): MunmapRun {
  const n = opts.workers ?? 2;
  const { k, latr } = kernel(n + 1, policy);
  if (latr && opts.hold === false) latr.holdPages = false;
  const tick = k.tickCycles;
  const st = { ready: 0, stage: 0, done: 0 };
  const out = { k, latr, reads: [] as Outcome[] } as unknown as MunmapRun;
  k.spawn(function* (u: User) {
    const a = yield* u.mmap(0, 16 * PAGE, RW, ANON);
    for (let i = 0; i < 16; i++) yield* u.store32(a + i * PAGE, 0x1000 + i);
    const mm = u.task.mm!;
    out.frames = [];
    for (let i = 0; i < 8; i++) {
      const ptep = k.pt.pte_offset(mm, a + i * PAGE);
      out.frames.push(ptePfn(k.pt.lo(ptep), k.pt.hi(ptep)));
    }
    for (let c = 1; c <= n; c++) {
      yield* u.clone(function* (w: User) {
        for (let i = 0; i < 8; i++) yield* w.load32(a + i * PAGE);
        st.ready++;
        while (st.stage < 1) yield* w.compute(2_000);
        out.reads[c - 1] = yield* attempt(() => w.load32(a));
        st.done++;
        while (st.stage < 2) yield* w.compute(20_000);
      }, { cpu: c });
    }
    while (st.ready < n) yield* u.sleep(5_000);
    // Start right after a tick of the workers' CPUs, so that none comes before they read.
    yield* u.sleep(tick - (k.now() % tick) + 5_000);
    const ipis0 = k.tlb.stats.ipis;
    const t0 = k.now();
    yield* u.munmap(a, 8 * PAGE);
    out.latencyCycles = k.now() - t0;
    out.ipis = k.tlb.stats.ipis - ipis0;
    out.staleAfter = k.tlb.usableStale((e) => e.va >= BigInt(a) && e.va < BigInt(a + 8 * PAGE)).length;
    out.freeAfter = out.frames.map((f) => (k.pages.flags[f]! & PG_free) !== 0);
    if (opts.reuse) {
      const b = yield* u.mmap(0x20000000, 64 * PAGE, RW, ANON | MAP_FIXED);
      for (let i = 0; i < 64; i++) yield* u.store32(b + i * PAGE, 0xbad0000 + i);
    }
    st.stage = 1;
    while (st.done < n) yield* u.sleep(2_000);
    yield* u.sleep(tick + (tick >> 1));
    out.staleLater = k.tlb.usableStale((e) => e.va >= BigInt(a) && e.va < BigInt(a + 8 * PAGE)).length;
    out.freeLater = out.frames.map((f) => (k.pages.flags[f]! & PG_free) !== 0 || (opts.reuse ?? false));
    out.cachedLater = Array.from({ length: n }, (_, i) => cached(k, i + 1, mm, a, a + 8 * PAGE).length);
    out.invariantProblems = check_vm_invariants(k).problems;
    st.stage = 2;
  }, { cpu: 0 });
  runToEnd(k);
  out.reportsKasan = k.reports.count('KASAN');
  return out;
}

describe('LATR: munmap without IPIs', () => {
  it('sends no IPI and returns sooner than Linux on the same run (the paper: munmap latency −70.8%)', () => {
    const linux = munmapRun('linux', { workers: 3 });
    const latr = munmapRun('latr', { workers: 3 });
    expect(linux.ipis).toBe(3);
    expect(latr.ipis).toBe(0);
    expect(latr.latr!.stats.saved).toBe(1);
    expect(latr.latencyCycles).toBeLessThan(linux.latencyCycles);
    // At least the IPI round trip is saved.
    const cost = linux.k.machine.cpu(0).cost;
    expect(linux.latencyCycles - latr.latencyCycles).toBeGreaterThanOrEqual(cost.ipiLatency + cost.ipiHandlerEntry);
  });

  it('leaves stale entries on the other CPUs until their next tick, then they are gone (the lazy window)', () => {
    const linux = munmapRun('linux');
    expect(linux.staleAfter).toBe(0);
    const r = munmapRun('latr');
    expect(r.staleAfter).toBeGreaterThan(0);
    expect(r.staleLater).toBe(0);
    expect(r.cachedLater).toEqual([0, 0]);
    const s = r.latr!.stats;
    expect(s.completed).toBe(1);
    expect(s.applied).toBe(2);
    expect(s.scansOnTick).toBeGreaterThan(0);
    // The window closes within one tick of the munmap.
    expect(s.windowCycles).toHaveLength(1);
    expect(s.windowCycles[0]!).toBeGreaterThan(0);
    expect(s.windowCycles[0]!).toBeLessThanOrEqual(r.k.tickCycles);
  });

  it('holds the freed pages until every CPU caught up, then frees them (checked by the invariant checker meanwhile)', () => {
    const linux = munmapRun('linux');
    expect(linux.freeAfter.every(Boolean)).toBe(true);
    const r = munmapRun('latr');
    expect(r.freeAfter.some(Boolean)).toBe(false);
    expect(r.latr!.stats.heldPages).toBe(8);
    expect(r.freeLater.every(Boolean)).toBe(true);
    expect(r.latr!.stats.releasedPages).toBe(8);
    expect(r.latr!.held).toEqual([]);
    expect(r.invariantProblems).toEqual([]);
  });
});

describe('LATR: no stale entry reaches a reused page', () => {
  it('a thread reading the unmapped address in the lazy window sees the old page, never the new owner\'s data', () => {
    const r = munmapRun('latr', { reuse: true });
    // LATR's semantics: the old translation still answers (the page is held), or it faults.
    for (const v of r.reads) expect(v === 0x1000 || v === 'SIGSEGV').toBe(true);
    expect(r.reads.some((v) => v === 0x1000)).toBe(true); // the window was really there
    expect(r.latr!.releaseViolations).toEqual([]);
    expect(r.reportsKasan).toBe(0);
    expect(r.invariantProblems).toEqual([]);
  });

  it('under Linux the same read faults at once', () => {
    const r = munmapRun('linux', { reuse: true });
    expect(r.reads).toEqual(['SIGSEGV', 'SIGSEGV']);
  });

  it('planted bug: without holding the pages (LAZY_MEM_FREE=n) the stale entries reach reused pages, and the checks say so', () => {
    const r = munmapRun('latr', { reuse: true, hold: false });
    expect(r.latr!.releaseViolations.length).toBeGreaterThan(0);
    // The workers read whatever the page holds now: another mapping's data or a page table.
    expect(r.reads.some((v) => v !== 0x1000 && v !== 'SIGSEGV')).toBe(true);
  });
});

describe('LATR: what stays synchronous', () => {
  function change(policy: 'linux' | 'latr', what: 'mprotect' | 'dontneed' | 'remap' | 'tables'): { ipis: number; stale: number; deferred: number; drains: number; reads: Outcome[]; k: Kernel } {
    const { k, latr } = kernel(3, policy);
    const st = { ready: 0, changed: false, done: 0 };
    const out = { ipis: -1, stale: -1, deferred: -1, drains: 0, reads: [] as Outcome[], k };
    k.spawn(function* (u: User) {
      // Alone in its page table (2 MiB-aligned, 2 MiB long): unmapping all of it frees the table.
      const a = yield* u.mmap(0x40000000, 512 * PAGE, RW, ANON | MAP_FIXED);
      for (let i = 0; i < 8; i++) yield* u.store32(a + i * PAGE, 0x1000 + i);
      const len = what === 'tables' ? 512 * PAGE : 8 * PAGE;
      for (const c of [1, 2]) {
        yield* u.clone(function* (w: User) {
          for (let i = 0; i < 8; i++) yield* w.load32(a + i * PAGE);
          st.ready++;
          while (!st.changed) yield* w.compute(2_000);
          out.reads[c - 1] = yield* attempt(() => w.load32(a));
          st.done++;
        }, { cpu: c });
      }
      while (st.ready < 2) yield* u.sleep(5_000);
      const i0 = k.tlb.stats.ipis;
      const d0 = k.tlb.stats.deferred;
      if (what === 'mprotect') yield* u.mprotect(a, len, PROT_READ);
      else if (what === 'dontneed') yield* u.madvise(a, len, MADV_DONTNEED);
      else {
        yield* u.munmap(a, len);
        if (what === 'remap') {
          yield* u.mmap(a, len, RW, ANON | MAP_FIXED);
          yield* u.store32(a, 0x5555);
        }
      }
      out.ipis = k.tlb.stats.ipis - i0;
      out.deferred = k.tlb.stats.deferred - d0;
      out.stale = k.tlb.usableStale((e) => e.va >= BigInt(a) && e.va < BigInt(a + len)).length;
      out.drains = latr?.stats.drains ?? 0;
      st.changed = true;
      while (st.done < 2) yield* u.sleep(2_000);
    }, { cpu: 0 });
    runToEnd(k);
    return out;
  }

  for (const what of ['mprotect', 'dontneed'] as const) {
    it(`${what}: IPIs and no stale entry, exactly as Linux`, () => {
      const l = change('linux', what);
      const r = change('latr', what);
      expect(r.deferred).toBe(0);
      expect(r.ipis).toBe(l.ipis);
      expect(r.ipis).toBe(2);
      expect(r.stale).toBe(0);
      expect(r.reads).toEqual(l.reads);
    });
  }

  it('munmap that frees page tables: IPIs to every CPU, nothing left behind', () => {
    const r = change('latr', 'tables');
    expect(r.ipis).toBe(2);
    expect(r.stale).toBe(0);
    expect(r.reads).toEqual(['SIGSEGV', 'SIGSEGV']);
  });

  it('mapping the range again completes its states first (IPIs), so the new mapping is what every CPU sees', () => {
    const r = change('latr', 'remap');
    expect(r.drains).toBe(1);
    expect(r.ipis).toBe(2); // the drain's
    expect(r.stale).toBe(0);
    expect(r.reads).toEqual([0x5555, 0x5555]);
    expect(r.k.reports.count('KASAN')).toBe(0);
  });
});

describe('LATR: a full ring falls back to IPIs', () => {
  it(`more than ${LAZY_TLB_NUM_ENTRIES} munmaps within one tick: the one that finds the ring full sends IPIs`, () => {
    // HZ 100: a tick is 10 ms, time for all the munmaps before the worker's next one.
    const { k, latr } = kernel(2, 'latr', 100);
    const n = LAZY_TLB_NUM_ENTRIES + 8;
    const st = { ready: false, done: false };
    const out = { ipis: 0, stale: -1, saved: 0, elapsed: 0, bySync: 0 };
    k.spawn(function* (u: User) {
      // Every other page, so each munmap is a separate range (the others keep the table).
      const a = yield* u.mmap(0, 2 * n * PAGE, RW, ANON);
      for (let i = 0; i < n; i++) yield* u.store32(a + 2 * i * PAGE, i);
      yield* u.clone(function* (w: User) {
        for (let i = 0; i < n; i++) yield* w.load32(a + 2 * i * PAGE);
        st.ready = true;
        while (!st.done) yield* w.compute(2_000);
      }, { cpu: 1 });
      while (!st.ready) yield* u.sleep(2_000);
      yield* u.sleep(k.tickCycles - (k.now() % k.tickCycles) + 2_000);
      const i0 = k.tlb.stats.ipis;
      const t0 = k.now();
      for (let i = 0; i < n; i++) yield* u.munmap(a + 2 * i * PAGE, PAGE);
      out.elapsed = k.now() - t0;
      out.ipis = k.tlb.stats.ipis - i0;
      out.saved = latr!.stats.saved;
      out.bySync = latr!.stats.completedBySync;
      out.stale = k.tlb.usableStale((e) => e.va >= BigInt(a) && e.va < BigInt(a + 2 * n * PAGE)).length;
      st.done = true;
    }, { cpu: 0 });
    runToEnd(k);
    expect(out.elapsed).toBeLessThan(k.tickCycles);
    // The 257th found the ring full and sent its IPI; being synchronous, that flush completed
    // every earlier state of the mm, which emptied the ring for the rest.
    expect(latr!.stats.ringFull).toBe(1);
    expect(out.ipis).toBe(1);
    expect(out.bySync).toBe(LAZY_TLB_NUM_ENTRIES);
    expect(out.saved).toBe(n - 1);
    // The worker missed a deferred generation when the IPI came, so it flushed its whole ASID:
    // nothing of the range is left, although the last few munmaps were deferred again.
    expect(out.stale).toBe(0);
    expect(latr!.liveStates().length).toBe(0); // all done by the end
  });
});

describe('LATR: property — whatever the address-space changes, nothing reaches a freed or reused page', () => {
  it('with threads touching pages on other CPUs while the main thread (and one worker) map, unmap, protect and zap', () => {
    const op = fc.record({
      kind: fc.constantFrom('munmap', 'mprotect-ro', 'mprotect-rw', 'dontneed', 'remap', 'munmap+remap'),
      first: fc.integer({ min: 0, max: 15 }),
      count: fc.integer({ min: 1, max: 16 }),
      gap: fc.integer({ min: 0, max: 400_000 }),
    });
    const seen = { saved: 0, released: 0, drains: 0 };
    fc.assert(
      fc.property(fc.array(op, { minLength: 1, maxLength: 8 }), fc.integer({ min: 1, max: 1 << 20 }), (ops, seed) => {
        const k = new Kernel({ cpus: 3, memoryBytes: 32 << 20, hz: 1000, seed });
        const latr = LatrPolicy.install(k);
        latr.checkOnRelease = true;
        const st = { done: false, ready: 0 };
        const out = { staleAtEnd: -1, staleAfterRemap: 0 };
        k.spawn(function* (u: User) {
          const a = yield* u.mmap(0, 16 * PAGE, RW, ANON);
          const b = yield* u.mmap(0, 16 * PAGE, RW, ANON);
          for (let i = 0; i < 16; i++) yield* u.store32(a + i * PAGE, 0x100 + i);
          for (const c of [1, 2]) {
            yield* u.clone(function* (w: User) {
              st.ready++;
              let i = c;
              let n = 0;
              while (!st.done) {
                i = (i * 7 + 3) % 16;
                const va = a + i * PAGE;
                if (i % 3) yield* attempt(() => w.load32(va));
                else yield* attempt(function* () {
                  yield* w.store32(va, 0x200 + i);
                  return 0;
                });
                // Worker 2 also unmaps and maps its own region now and then (states in its ring).
                if (c === 2 && ++n % 16 === 0) {
                  try {
                    yield* w.munmap(b + (n % 8) * PAGE, PAGE);
                    yield* w.mmap(b + (n % 8) * PAGE, PAGE, RW, ANON | MAP_FIXED);
                    yield* w.store32(b + (n % 8) * PAGE, n);
                  } catch {
                    // fine
                  }
                }
                yield* w.compute(3_000);
              }
            }, { cpu: c });
          }
          while (st.ready < 2) yield* u.sleep(5_000);
          for (const o of ops) {
            const s = a + o.first * PAGE;
            const len = Math.min(o.count, 16 - o.first) * PAGE;
            try {
              if (o.kind === 'munmap') yield* u.munmap(s, len);
              else if (o.kind === 'mprotect-ro') yield* u.mprotect(s, len, PROT_READ);
              else if (o.kind === 'mprotect-rw') yield* u.mprotect(s, len, RW);
              else if (o.kind === 'dontneed') yield* u.madvise(s, len, MADV_DONTNEED);
              else {
                // munmap+remap: the address is reused at once (within the lazy window).
                if (o.kind === 'munmap+remap') yield* u.munmap(s, len);
                yield* u.mmap(s, len, RW, ANON | MAP_FIXED);
                // A new mapping: no CPU may still see the old one there, lazy window or not.
                out.staleAfterRemap += k.tlb.usableStale((e) => e.va >= BigInt(s) && e.va < BigInt(s + len)).length;
                yield* u.store32(s, 0x300);
              }
            } catch {
              // ENOMEM on a hole etc.
            }
            yield* u.sleep(3_000 + o.gap);
          }
          // Every CPU takes a tick: the lazy window closes.
          yield* u.sleep(2 * k.tickCycles);
          out.staleAtEnd = k.tlb.usableStale().length;
          st.done = true;
        }, { cpu: 0 });
        runToEnd(k);
        expect(latr.releaseViolations).toEqual([]);
        expect(out.staleAfterRemap).toBe(0);
        expect(out.staleAtEnd).toBe(0);
        expect(k.reports.reports.filter((r) => r.kind !== 'signal')).toEqual([]);
        expect(check_vm_invariants(k).problems).toEqual([]);
        expect(latr.held).toEqual([]);
        seen.saved += latr.stats.saved;
        seen.released += latr.stats.releasedPages;
        seen.drains += latr.stats.drains;
      }),
      { numRuns: 8 },
    );
    // The runs did exercise the lazy path: deferred flushes, held pages released, drains.
    expect(seen.saved).toBeGreaterThan(0);
    expect(seen.released).toBeGreaterThan(0);
    expect(seen.drains).toBeGreaterThan(0);
  }, 120_000);
});
