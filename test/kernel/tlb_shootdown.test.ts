// TLB shootdown (kernel/arch/x86/tlb.ts) against arch/x86/mm/tlb.c: once flush_tlb_mm_range
// returns no CPU can use the old translation (checked with the TLB inspector and by real
// accesses from the remote CPUs); lazy CPUs are skipped unless page tables were freed and catch
// up through tlb_gen when they switch back; IPIs go only to non-lazy CPUs of mm_cpumask (and a
// CPU that switched away leaves the mask when a freed-tables IPI reaches it); the 33-page
// ceiling; the stride of huge pages; the initiator flushes locally and waits for every
// acknowledgement; the generation rules of flush_tlb_func. Every scenario that expects a clean
// shootdown has a planted-bug twin (skipFlush) showing that the checks catch a missing one.
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { Kernel } from '../../kernel/kernel.ts';
import { MAP_ANONYMOUS, MAP_FIXED, MAP_HUGETLB, MAP_PRIVATE, PROT_READ, PROT_WRITE } from '../../kernel/mm/mmap.ts';
import { MADV_DONTNEED } from '../../kernel/mm/madvise.ts';
import { SignalError } from '../../kernel/signal.ts';
import { TLB_FLUSH_ALL, type FlushTlbInfo } from '../../kernel/arch/x86/tlb.ts';
import { tlbEntries } from '../../hw/inspect.ts';
import type { User } from '../../kernel/uapi.ts';
import type { KGen } from '../../kernel/sched/core.ts';
import type { MmStruct } from '../../kernel/mm/mm_types.ts';
import { PAGE, asidOf, cached, mmCountMismatches, tlbIncoherence } from './tlb-helpers.ts';

const RW = PROT_READ | PROT_WRITE;
const ANON = MAP_PRIVATE | MAP_ANONYMOUS;

function kernel(cpus: number, extra: { trace?: boolean; seed?: number; pcid?: boolean } = {}): Kernel {
  const k = new Kernel({ cpus, memoryBytes: 32 << 20, ...extra });
  // Every scenario ends by itself well before this; a bound turns a hang into a failure.
  const run = k.run.bind(k);
  k.run = (limits = {}) => {
    const r = run({ maxSteps: 200_000, ...limits });
    if (r.reason !== 'done' || k.liveTasks() !== 0) throw new Error(`scenario still running after ${r.steps} steps: ${[...k.tasks.values()].map((t) => `${t.comm}/${t.pid} ${t.state} ${t.waitingFor}`).join(', ')}`);
    return r;
  };
  return k;
}

/** What a worker thread got from its access after the change: a value, or the signal. */
type Outcome = number | 'SIGSEGV' | 'SIGBUS';

function* attempt(f: () => KGen<number | void>): KGen<Outcome> {
  try {
    const v = yield* f();
    return typeof v === 'number' ? v : 0;
  } catch (e) {
    if (e instanceof SignalError) return e.signo === 11 ? 'SIGSEGV' : 'SIGBUS';
    throw e;
  }
}

interface ShootdownResult {
  k: Kernel;
  /** Per remote CPU: translations of the changed range it cached just before / right after. */
  before: number[];
  after: number[];
  outcomes: Outcome[];
  incoherence: string[];
  /** IPIs the change sent. */
  ipis: number;
}

/**
 * A process whose main thread (CPU 0) changes [a, a + 8 pages) of a 16-page mapping while
 * worker threads on CPUs 1..n keep running in the mm (touching the last page) with the whole
 * mapping in their TLBs. After the change returns, the workers access page 0 the way `access`
 * says.
 */
function shootdown(change: 'munmap' | 'mprotect' | 'madvise', opts: { workers?: number; skipFlush?: boolean } = {}): ShootdownResult {
  const n = opts.workers ?? 2;
  const k = kernel(n + 1);
  if (opts.skipFlush) k.tlb.skipFlush = () => true;
  const st = { ready: 0, changed: false, done: 0 };
  const res: ShootdownResult = { k, before: [], after: [], outcomes: [], incoherence: [], ipis: -1 };
  k.spawn(function* (u: User) {
    const a = yield* u.mmap(0, 16 * PAGE, RW, ANON);
    for (let i = 0; i < 16; i++) yield* u.store32(a + i * PAGE, 0x1000 + i);
    const mm = u.task.mm!;
    for (let c = 1; c <= n; c++) {
      yield* u.clone(function* (w: User) {
        for (let i = 0; i < 16; i++) yield* w.load32(a + i * PAGE);
        st.ready++;
        while (!st.changed) yield* w.load32(a + 15 * PAGE);
        res.outcomes[c - 1] = change === 'mprotect' ? yield* attempt(() => w.store32(a, 7)) : yield* attempt(() => w.load32(a));
        st.done++;
      }, { cpu: c });
    }
    while (st.ready < n) yield* u.sleep(5_000);
    for (let c = 1; c <= n; c++) res.before.push(cached(k, c, mm, a, a + 8 * PAGE).filter((e) => change !== 'mprotect' || e.writable).length);
    const ipis0 = k.tlb.stats.ipis;
    if (change === 'munmap') yield* u.munmap(a, 8 * PAGE);
    else if (change === 'mprotect') yield* u.mprotect(a, 8 * PAGE, PROT_READ);
    else yield* u.madvise(a, 8 * PAGE, MADV_DONTNEED);
    // Right after the call returned: what do the others still cache?
    for (let c = 1; c <= n; c++) res.after.push(cached(k, c, mm, a, a + 8 * PAGE).filter((e) => change !== 'mprotect' || e.writable).length);
    res.incoherence = tlbIncoherence(k);
    res.ipis = k.tlb.stats.ipis - ipis0;
    st.changed = true;
    while (st.done < n) yield* u.sleep(5_000);
  }, { cpu: 0 });
  k.run();
  return res;
}

describe('after the flush returns no CPU can use the old translation', () => {
  it('munmap: the remote TLBs are clean and a remote access faults', () => {
    const r = shootdown('munmap');
    expect(r.before.every((x) => x > 0)).toBe(true);
    expect(r.after).toEqual([0, 0]);
    expect(r.incoherence).toEqual([]);
    expect(r.outcomes).toEqual(['SIGSEGV', 'SIGSEGV']);
    expect(r.k.reports.count('KASAN')).toBe(0);
    expect(r.ipis).toBe(2);
  });

  it('mprotect: no CPU keeps a writable entry and a remote store faults', () => {
    const r = shootdown('mprotect');
    expect(r.before.every((x) => x > 0)).toBe(true);
    expect(r.after).toEqual([0, 0]);
    expect(r.incoherence).toEqual([]);
    expect(r.outcomes).toEqual(['SIGSEGV', 'SIGSEGV']);
  });

  it('madvise(MADV_DONTNEED): a remote read sees a fresh zero page, not the old data', () => {
    const r = shootdown('madvise');
    expect(r.after).toEqual([0, 0]);
    expect(r.incoherence).toEqual([]);
    expect(r.outcomes).toEqual([0, 0]);
    expect(r.k.reports.reports).toEqual([]);
  });

  it('the same checks catch a missing shootdown (planted: skipFlush)', () => {
    const m = shootdown('munmap', { skipFlush: true });
    expect(m.after.every((x) => x > 0)).toBe(true);
    expect(m.incoherence.length).toBeGreaterThan(0);
    // Read through the stale entry: the freed page, poisoned by the allocator.
    expect(m.outcomes).toEqual([0xaaaaaaaa, 0xaaaaaaaa]);
    expect(m.k.reports.count('KASAN')).toBeGreaterThan(0); // … of a freed page
    const p = shootdown('mprotect', { skipFlush: true });
    expect(p.after.every((x) => x > 0)).toBe(true);
    expect(p.outcomes).toEqual([0, 0]); // the store went through
    const d = shootdown('madvise', { skipFlush: true });
    expect(d.outcomes.every((o) => typeof o === 'number' && o !== 0)).toBe(true);
  });
});

// ------------------------------------------------------------------------------------------------

interface LazyResult {
  k: Kernel;
  mm: MmStruct;
  /** While the worker was away. */
  lazy: boolean;
  cachedWhileLazy: number;
  genBehind: boolean;
  loadedAfterChange: number;
  /** After the worker came back on CPU 1. */
  cachedAfterReturn: number;
  outcome: Outcome;
  ipisToCpu1: number;
}

/**
 * A worker on CPU 1 fills its TLB from a 16-page mapping, then leaves the CPU — sleeping (idle
 * is lazy) or behind a kernel thread — while the main thread unmaps `pages` pages of it (or the
 * whole mapping, freeing page tables). Then the worker comes back and reads page 0.
 */
function lazyScenario(away: 'sleep' | 'kthread', pages: number): LazyResult {
  const k = kernel(2);
  const r = { k, lazy: false, cachedWhileLazy: -1, genBehind: false, loadedAfterChange: -1, cachedAfterReturn: -1, outcome: 0, ipisToCpu1: -1 } as LazyResult;
  const st = { ready: false, changed: false };
  k.spawn(function* (u: User) {
    const a = yield* u.mmap(0, 16 * PAGE, RW, ANON);
    for (let i = 0; i < 16; i++) yield* u.store32(a + i * PAGE, 0x1000 + i);
    const mm = u.task.mm!;
    r.mm = mm;
    yield* u.clone(function* (w: User) {
      for (let i = 0; i < 16; i++) yield* w.load32(a + i * PAGE);
      if (away === 'kthread') {
        k.kthread('kworker', function* () {
          st.ready = true;
          while (!st.changed) {
            k.charge(2_000);
            yield { kind: 'preempt' } as const;
          }
        }, 1);
      } else st.ready = true;
      // Away for long enough that the change happens meanwhile (one sleep: a wake-up in between
      // would end lazy mode).
      yield* w.sleep(400_000);
      if (!st.changed) throw new Error('the change did not happen while the worker was away');
      r.cachedAfterReturn = cached(k, 1, mm, a, a + pages * PAGE).length;
      r.outcome = yield* attempt(() => w.load32(a));
    }, { cpu: 1 });
    while (!st.ready) yield* u.sleep(5_000);
    yield* u.sleep(5_000);
    const ipis = k.machine.cpu(1).counters().ipisDelivered!;
    r.lazy = k.tlb.cpuState[1]!.is_lazy && k.tlb.cpuState[1]!.loaded_mm === mm;
    yield* u.munmap(a, pages * PAGE);
    r.ipisToCpu1 = k.machine.cpu(1).counters().ipisDelivered! - ipis;
    r.cachedWhileLazy = cached(k, 1, mm, a, a + pages * PAGE).length;
    const asid = asidOf(k, 1, mm);
    r.genBehind = asid >= 0 && k.tlb.cpuState[1]!.ctxs[asid]!.tlb_gen < mm.tlb_gen;
    r.loadedAfterChange = k.tlb.cpuState[1]!.loaded_mm.ctx_id;
    st.changed = true;
    yield* u.sleep(600_000);
  }, { cpu: 0 });
  k.run();
  expect(k.reports.reports.filter((x) => x.kind === 'signal')).toEqual([]);
  return r;
}

describe('lazy TLB CPUs', () => {
  for (const away of ['sleep', 'kthread'] as const) {
    it(`a CPU lazy behind ${away === 'sleep' ? 'the idle task' : 'a kernel thread'} is skipped, then flushes when its task comes back`, () => {
      const r = lazyScenario(away, 4);
      expect(r.lazy).toBe(true);
      expect(r.ipisToCpu1).toBe(0);
      expect(r.k.tlb.stats.lazySkipped).toBe(1);
      // It may keep the stale entries meanwhile: its ASID slot is behind the mm's tlb_gen.
      expect(r.cachedWhileLazy).toBeGreaterThan(0);
      expect(r.genBehind).toBe(true);
      // switch_mm_irqs_off from lazy mode on the same mm: full flush because tlb_gen moved.
      expect(r.cachedAfterReturn).toBe(0);
      expect(r.outcome).toBe('SIGSEGV');
      expect(r.k.reports.count('KASAN')).toBe(0);
    });
  }

  it('a flush that frees page tables reaches lazy CPUs too, which drop the mm (and their reference)', () => {
    const r = lazyScenario('sleep', 16); // the whole mapping: its page tables go
    expect(r.lazy).toBe(true);
    expect(r.ipisToCpu1).toBe(1);
    expect(r.loadedAfterChange).toBe(r.k.init_mm.ctx_id);
    // Entries tagged with the mm's old PCID may stay (no walk uses them under init_mm's PCID);
    // the slot is behind, so switching back flushes it.
    expect(r.genBehind).toBe(true);
    expect(r.cachedAfterReturn).toBe(0);
    expect(r.outcome).toBe('SIGSEGV');
    expect(mmCountMismatches(r.k)).toEqual([]);
    expect(r.k.reports.reports).toEqual([]);
  });

  it('the lazy reference is dropped with the mm: nothing leaks once every task is gone', () => {
    const r = lazyScenario('sleep', 16);
    // One CPU may still hold its last mm lazily; no mm is held by anything else.
    expect(mmCountMismatches(r.k)).toEqual([]);
    for (const mm of r.k.mms) if (mm !== r.k.init_mm) expect(mm.mm_users).toBe(0);
  });
});

// ------------------------------------------------------------------------------------------------

describe('who gets an IPI (native_flush_tlb_multi)', () => {
  it('only the CPUs of mm_cpumask that run the mm, not lazy ones and not CPUs that never ran it', () => {
    const k = kernel(4);
    const st = { ready: 0, changed: false, delivered: [] as number[] };
    let mask: number[] = [];
    k.spawn(function* busy(u: User) {
      // Another process keeps CPU 3.
      const b = yield* u.mmap(0, PAGE, RW, ANON);
      while (!st.changed) yield* u.store32(b, 1);
    }, { cpu: 3 });
    k.spawn(function* (u: User) {
      const a = yield* u.mmap(0, 16 * PAGE, RW, ANON);
      for (let i = 0; i < 16; i++) yield* u.store32(a + i * PAGE, i);
      yield* u.clone(function* (w: User) {
        yield* w.load32(a);
        st.ready++;
        while (!st.changed) yield* w.load32(a + PAGE);
      }, { cpu: 1 });
      yield* u.clone(function* (w: User) {
        yield* w.load32(a);
        st.ready++;
        while (!st.changed) yield* w.sleep(20_000); // lazy
      }, { cpu: 2 });
      while (st.ready < 2) yield* u.sleep(5_000);
      yield* u.sleep(10_000);
      mask = [...u.task.mm!.cpumask].sort();
      const before = [0, 1, 2, 3].map((c) => k.machine.cpu(c).counters().ipisDelivered!);
      yield* u.munmap(a, 2 * PAGE);
      st.delivered = [0, 1, 2, 3].map((c) => k.machine.cpu(c).counters().ipisDelivered! - before[c]!);
      st.changed = true;
    }, { cpu: 0 });
    k.run();
    expect(mask).toEqual([0, 1, 2]);
    expect(st.delivered).toEqual([0, 1, 0, 0]);
    expect(k.tlb.stats.lazySkipped).toBe(1);
  });

  it('a CPU that switched to another mm keeps its mask bit; no IPI unless tables are freed, which clears the bit (TLB_REMOTE_WRONG_CPU)', () => {
    const k = kernel(2, { trace: true });
    const st = { phase: 0 };
    const out = { maskAfterSwitch: [] as number[], ipisSmall: -1, ipisTables: -1, maskAfterTables: [] as number[] };
    k.spawn(function* (u: User) {
      const a = yield* u.mmap(0, 16 * PAGE, RW, ANON);
      // Alone in its 2 MiB (and 1 GiB) region, so unmapping it frees its page tables.
      const b = yield* u.mmap(0x40000000, 16 * PAGE, RW, ANON | MAP_FIXED);
      yield* u.store32(a, 1);
      yield* u.store32(b, 1);
      yield* u.clone(function* (w: User) {
        yield* w.load32(a);
        st.phase = 1;
      }, { cpu: 1 });
      while (st.phase < 1) yield* u.sleep(5_000);
      // CPU 1 now runs another process (it switches mm; its bit in our mask stays).
      k.spawn(function* other(v: User) {
        const c = yield* v.mmap(0, PAGE, RW, ANON);
        while (st.phase < 3) yield* v.store32(c, 2);
      }, { cpu: 1 });
      yield* u.sleep(50_000);
      const mm = u.task.mm!;
      out.maskAfterSwitch = [...mm.cpumask].sort();
      const i0 = k.machine.cpu(1).counters().ipisDelivered!;
      yield* u.munmap(a, 2 * PAGE); // no tables freed
      out.ipisSmall = k.machine.cpu(1).counters().ipisDelivered! - i0;
      const i1 = k.machine.cpu(1).counters().ipisDelivered!;
      yield* u.munmap(b, 16 * PAGE); // a whole mapping: tables freed
      out.ipisTables = k.machine.cpu(1).counters().ipisDelivered! - i1;
      out.maskAfterTables = [...mm.cpumask].sort();
      st.phase = 3;
    }, { cpu: 0 });
    k.run();
    expect(out.maskAfterSwitch).toEqual([0, 1]);
    expect(out.ipisSmall).toBe(0);
    expect(out.ipisTables).toBe(1);
    expect(out.maskAfterTables).toEqual([0]);
    const wrong = k.trace.events.filter((e) => e.name === 'tlb:tlb_flush' && e.cpu === 1 && e.fields.reason === 5);
    expect(wrong).toHaveLength(1);
  });
});

// ------------------------------------------------------------------------------------------------

/**
 * CPU 1 keeps running the mm while CPU 0 changes the protection of `pages` pages; returns how
 * the TLB statistics moved during that mprotect.
 */
function protectRun(pages: number, setup?: (k: Kernel) => void): Record<string, number> {
  const k = kernel(2);
  setup?.(k);
  const st = { ready: false, done: false };
  let delta: Record<string, number> = {};
  k.spawn(function* (u: User) {
    const a = yield* u.mmap(0, 64 * PAGE, RW, ANON);
    for (let i = 0; i < 64; i++) yield* u.store32(a + i * PAGE, i);
    yield* u.clone(function* (w: User) {
      for (let i = 0; i < 64; i++) yield* w.load32(a + i * PAGE);
      st.ready = true;
      while (!st.done) yield* w.load32(a + 63 * PAGE);
    }, { cpu: 1 });
    while (!st.ready) yield* u.sleep(5_000);
    const s0: Record<string, number> = { ...k.tlb.stats };
    yield* u.mprotect(a, pages * PAGE, PROT_READ);
    delta = Object.fromEntries(Object.entries(k.tlb.stats).map(([key, v]) => [key, v - s0[key]!]));
    st.done = true;
  }, { cpu: 0 });
  k.run();
  return delta;
}

describe('tlb_single_page_flush_ceiling', () => {
  it('33 pages are flushed page by page on every CPU', () => {
    const d = protectRun(33);
    expect(d).toMatchObject({ flushes: 1, fullByCeiling: 0, partialFlushes: 2, fullFlushes: 0, invlpgs: 66, ipis: 1 });
  });

  it('34 pages become a full flush', () => {
    const d = protectRun(34);
    expect(d).toMatchObject({ flushes: 1, fullByCeiling: 1, partialFlushes: 0, fullFlushes: 2, invlpgs: 0, ipis: 1 });
  });

  it('the ceiling is tunable (debugfs tlb_single_page_flush_ceiling)', () => {
    const d = protectRun(11, (k) => (k.tlb.policy = { name: 'linux', ceiling: () => 10 }));
    expect(d).toMatchObject({ fullByCeiling: 1, fullFlushes: 2 });
    const e = protectRun(10, (k) => (k.tlb.policy = { name: 'linux', ceiling: () => 10 }));
    expect(e).toMatchObject({ fullByCeiling: 0, partialFlushes: 2, invlpgs: 20 });
  });
});

describe('huge pages: the stride follows the level that was cleared', () => {
  it('unmapping two 2 MiB pages invalidates two addresses per CPU, and no 2 MiB entry survives', () => {
    const k = kernel(2);
    const st = { ready: false, done: false };
    const out = { flushes: [] as FlushTlbInfo[], before: -1, after: [-1, -1], invlpgs: -1 };
    const seen: FlushTlbInfo[] = [];
    const orig = k.tlb.flush_tlb_mm_range.bind(k.tlb);
    k.tlb.flush_tlb_mm_range = function* (mm, start, end, stride, freed) {
      seen.push({ id: 0, mm, start, end, stride_shift: stride, freed_tables: freed, new_tlb_gen: 0, initiator: 0 });
      yield* orig(mm, start, end, stride, freed);
    };
    k.spawn(function* (u: User) {
      const h = yield* u.mmap(0, 4 << 20, RW, MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB);
      const spin = yield* u.mmap(0, PAGE, RW, ANON);
      yield* u.store32(h, 1);
      yield* u.store32(h + (2 << 20), 2);
      yield* u.clone(function* (w: User) {
        yield* w.load32(h);
        yield* w.load32(h + (2 << 20));
        st.ready = true;
        while (!st.done) yield* w.load32(spin); // stays in the mm, away from what is unmapped
      }, { cpu: 1 });
      while (!st.ready) yield* u.sleep(5_000);
      const mm = u.task.mm!;
      out.before = cached(k, 1, mm, h, h + (4 << 20)).filter((e) => e.pageSize === 2 << 20).length;
      seen.length = 0;
      const i0 = k.tlb.stats.invlpgs;
      yield* u.munmap(h, 4 << 20);
      out.invlpgs = k.tlb.stats.invlpgs - i0;
      out.flushes = seen.slice();
      out.after = [0, 1].map((c) => cached(k, c, mm, h, h + (4 << 20)).length);
      st.done = true;
    }, { cpu: 0 });
    k.run();
    expect(out.before).toBeGreaterThan(0);
    // tlb_end_vma flushes the cleared leaves (the PMD table stays: the other page shares it).
    expect(out.flushes.map((f) => [f.end - f.start, f.stride_shift, f.freed_tables])).toEqual([[4 << 20, 21, false]]);
    // (4 MiB >> 21) = 2 INVLPGs on each of the 2 CPUs.
    expect(out.invlpgs).toBe(4);
    expect(out.after).toEqual([0, 0]);
  });
});

// ------------------------------------------------------------------------------------------------

describe('flush_tlb_mm_range: local flush and waiting for acknowledgements', () => {
  it('flushes the initiator and every remote CPU, and returns only after all acknowledged', () => {
    const k = kernel(3);
    const st = { ready: 0, done: false };
    const out = { elapsed: 0, cachedAfter: [-1, -1, -1], gensCurrent: [] as boolean[], wait: 0 };
    k.spawn(function* (u: User) {
      const a = yield* u.mmap(0, 8 * PAGE, RW, ANON);
      for (let i = 0; i < 8; i++) yield* u.store32(a + i * PAGE, i);
      for (const c of [1, 2]) {
        yield* u.clone(function* (w: User) {
          for (let i = 0; i < 8; i++) yield* w.load32(a + i * PAGE);
          st.ready++;
          while (!st.done) yield* w.load32(a + 7 * PAGE);
        }, { cpu: c });
      }
      while (st.ready < 2) yield* u.sleep(5_000);
      for (let i = 0; i < 8; i++) yield* u.load32(a + i * PAGE);
      yield* u.call('flush', function* (kk, t) {
        const mm = t.mm!;
        const t0 = kk.now();
        const w0 = kk.tlb.stats.waitCycles;
        yield* kk.tlb.flush_tlb_mm_range(mm, a, a + 4 * PAGE, 12, false);
        out.elapsed = kk.now() - t0;
        out.wait = kk.tlb.stats.waitCycles - w0;
        // Same engine step as the return: nothing else ran in between.
        out.cachedAfter = [0, 1, 2].map((c) => cached(kk, c, mm, a, a + 4 * PAGE).length);
        out.gensCurrent = [0, 1, 2].map((c) => kk.tlb.cpuState[c]!.ctxs[asidOf(kk, c, mm)]!.tlb_gen === mm.tlb_gen);
        return 0;
      });
      st.done = true;
    }, { cpu: 0 });
    k.run();
    const cost = k.machine.cpu(0).cost;
    expect(out.cachedAfter).toEqual([0, 0, 0]);
    expect(out.gensCurrent).toEqual([true, true, true]);
    expect(out.elapsed).toBeGreaterThanOrEqual(cost.ipiLatency + cost.ipiHandlerEntry);
    expect(out.wait).toBeGreaterThan(0);
  });
});

describe('concurrent shootdowns', () => {
  it('two CPUs flushing at once each take the other\'s IPI while they wait, and both complete', () => {
    const k = kernel(3);
    const st = { ready: 0, done: 0 };
    const out = { overlaps: 0, incoherence: [] as string[] };
    k.spawn(function* (u: User) {
      const a = yield* u.mmap(0, 32 * PAGE, RW, ANON);
      for (let i = 0; i < 32; i++) yield* u.store32(a + i * PAGE, i);
      const zapper = (half: number) =>
        function* (w: User) {
          st.ready++;
          while (st.ready < 3) yield* w.sleep(1_000);
          for (let r = 0; r < 5; r++) {
            const s = a + (half * 16 + r * 2) * PAGE;
            yield* w.store32(s, r);
            yield* w.madvise(s, 2 * PAGE, MADV_DONTNEED); // mmap read lock: both run at once
          }
          st.done++;
        };
      yield* u.clone(zapper(0), { cpu: 1 });
      yield* u.clone(zapper(1), { cpu: 2 });
      st.ready++;
      while (st.done < 2) {
        // Count moments where both zappers' CPUs spin on a shootdown at the same time.
        if (k.sched[1]!.describe().startsWith('spinning') && k.sched[2]!.describe().startsWith('spinning')) out.overlaps++;
        yield* u.load32(a + 31 * PAGE);
      }
      out.incoherence = tlbIncoherence(k);
    }, { cpu: 0 });
    k.run();
    expect(out.overlaps).toBeGreaterThan(0); // the two shootdowns did overlap
    expect(out.incoherence).toEqual([]);
    expect(k.tlb.stats.flushes).toBeGreaterThanOrEqual(10);
    expect(k.reports.reports).toEqual([]);
  });
});

describe('flush_tlb_func: the tlb_gen rules', () => {
  it('partial only when this request is the one missing and the latest; full otherwise; stale requests do nothing', () => {
    const k = kernel(1);
    const steps: { kind: string; local: number; mm: number }[] = [];
    k.spawn(function* (u: User) {
      const a = yield* u.mmap(0, 4 * PAGE, RW, ANON);
      for (let i = 0; i < 4; i++) yield* u.store32(a + i * PAGE, i);
      yield* u.call('gen', function* (kk, t) {
        const mm = t.mm!;
        const cpu = kk.thisCpu();
        const ctx = kk.tlb.cpuState[cpu]!.ctxs[asidOf(kk, cpu, mm)]!;
        const g0 = mm.tlb_gen;
        expect(ctx.tlb_gen).toBe(g0);
        const apply = (gen: number, end: number): void => {
          const s0 = { ...kk.tlb.stats };
          kk.tlb.flush_tlb_func(cpu, { id: 0, mm, start: a, end, stride_shift: 12, freed_tables: false, new_tlb_gen: gen, initiator: cpu }, true);
          const s = kk.tlb.stats;
          const kind = s.partialFlushes > s0.partialFlushes ? 'partial' : s.fullFlushes > s0.fullFlushes ? 'full' : s.noopFlushes > s0.noopFlushes ? 'nothing' : '?';
          steps.push({ kind, local: ctx.tlb_gen - g0, mm: mm.tlb_gen - g0 });
        };
        // Two requests were made (g0+1 and g0+2, both ranges); this CPU handles g0+1 first. It
        // is not the latest, so it flushes everything and catches up to g0+2.
        mm.tlb_gen = g0 + 2;
        apply(g0 + 1, a + PAGE);
        // The g0+2 request arrives late: already done.
        apply(g0 + 2, a + PAGE);
        // One more request, the only one missing and the latest: a partial flush.
        mm.tlb_gen = g0 + 3;
        apply(g0 + 3, a + PAGE);
        // A full-range request is never partial.
        mm.tlb_gen = g0 + 4;
        apply(g0 + 4, TLB_FLUSH_ALL);
        return 0;
      });
    });
    k.run();
    expect(steps).toEqual([
      { kind: 'full', local: 2, mm: 2 },
      { kind: 'nothing', local: 2, mm: 2 },
      { kind: 'partial', local: 3, mm: 3 },
      { kind: 'full', local: 4, mm: 4 },
    ]);
  });
});

// ------------------------------------------------------------------------------------------------

describe('property: the tlb_gen rule holds after every address-space change', () => {
  it('with threads touching pages on other CPUs while the main thread maps, unmaps, protects and zaps', () => {
    const op = fc.record({
      kind: fc.constantFrom('munmap', 'mprotect-ro', 'mprotect-rw', 'dontneed', 'remap'),
      first: fc.integer({ min: 0, max: 15 }),
      count: fc.integer({ min: 1, max: 16 }),
    });
    fc.assert(
      fc.property(fc.array(op, { minLength: 1, maxLength: 8 }), fc.integer({ min: 1, max: 1 << 20 }), (ops, seed) => {
        const k = kernel(3, { seed });
        const problems: string[] = [];
        const st = { done: false, ready: 0 };
        k.spawn(function* (u: User) {
          const a = yield* u.mmap(0, 16 * PAGE, RW, ANON);
          for (let i = 0; i < 16; i++) yield* u.store32(a + i * PAGE, 0x100 + i);
          for (const c of [1, 2]) {
            yield* u.clone(function* (w: User) {
              st.ready++;
              let i = c;
              while (!st.done) {
                i = (i * 7 + 3) % 16;
                yield* attempt(() => (i % 3 ? w.load32(a + i * PAGE) : w.store32(a + i * PAGE, 0x200 + i)));
                yield* w.yield(); // a faulting access does not pace itself
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
              else yield* u.mmap(s, len, RW, ANON | MAP_FIXED);
            } catch {
              // ENOMEM on a hole etc.: fine, the check still applies.
            }
            problems.push(...tlbIncoherence(k).map((p) => `after ${o.kind} ${o.first}+${o.count}: ${p}`));
            yield* u.sleep(3_000);
          }
          st.done = true;
        }, { cpu: 0 });
        k.run();
        expect(problems).toEqual([]);
        expect(k.reports.reports.filter((r) => r.kind !== 'signal')).toEqual([]);
        expect(mmCountMismatches(k)).toEqual([]);
      }),
      { numRuns: 12 },
    );
  });
});

describe('the inspector sees what a CPU caches', () => {
  it('a remote CPU running the mm caches its translations under the PCID of its ASID slot', () => {
    const k = kernel(2);
    let seen = 0;
    k.spawn(function* (u: User) {
      const a = yield* u.mmap(0, PAGE, RW, ANON);
      yield* u.store32(a, 1);
      const mm = u.task.mm!;
      seen = cached(k, 0, mm, a, a + PAGE).length;
      expect(tlbEntries(k.machine.cpu(0)).some((e) => e.va === BigInt(a) && e.pcid === asidOf(k, 0, mm) + 1)).toBe(true);
    });
    k.run();
    expect(seen).toBeGreaterThan(0);
  });
});
