// mmu_gather (kernel/mm/mmu_gather.ts) against include/asm-generic/tlb.h and mm/mmu_gather.c:
// unhook → TLB invalidate → free, checked at every page free and every allocation against what
// each CPU's TLB still holds; tlb_finish_mmu's upgrade to a whole-mm flush when another gather of
// the mm is in flight (mm_tlb_flush_nested), shown by the parallel MADV_DONTNEED race it exists
// for; tlb_get_unmap_shift; the batch capacity that forces an early flush.
import { describe, expect, it } from 'vitest';
import { Kernel } from '../../kernel/kernel.ts';
import { MAP_ANONYMOUS, MAP_FIXED, MAP_PRIVATE, PROT_READ, PROT_WRITE } from '../../kernel/mm/mmap.ts';
import { MADV_DONTNEED } from '../../kernel/mm/madvise.ts';
import { MAX_GATHER_BATCH, MAX_GATHER_BATCH_COUNT, MMU_GATHER_BUNDLE, MmuGather } from '../../kernel/mm/mmu_gather.ts';
import { zap_range } from '../../kernel/mm/memory.ts';
import { TLB_FLUSH_ALL, TLB_NR_DYN_ASIDS } from '../../kernel/arch/x86/tlb.ts';
import { tlbEntries } from '../../hw/inspect.ts';
import { check_vm_invariants } from '../../kernel/mm/debug_vm.ts';
import { SignalError } from '../../kernel/signal.ts';
import type { User } from '../../kernel/uapi.ts';
import type { MmStruct } from '../../kernel/mm/mm_types.ts';
import { PAGE } from './tlb-helpers.ts';

const RW = PROT_READ | PROT_WRITE;
const ANON = MAP_PRIVATE | MAP_ANONYMOUS;

/**
 * Frames some CPU could still reach through its TLB without a flush first: entries in an ASID
 * slot that claims to be current for a live mm, or that the CPU runs right now.
 */
function reachable(k: Kernel, pfn: number, frames: number): string[] {
  const out: string[] = [];
  for (let c = 0; c < k.machine.cpuCount; c++) {
    const st = k.tlb.cpuState[c]!;
    const usable = new Set<number>();
    for (let a = 0; a < TLB_NR_DYN_ASIDS; a++) {
      const ctx = st.ctxs[a]!;
      const mm = [...k.mms].find((m) => m.ctx_id === ctx.ctx_id);
      if (!mm || mm === k.init_mm) continue;
      const running = st.loaded_mm === mm && !st.is_lazy && st.loaded_mm_asid === a;
      if (ctx.tlb_gen >= mm.tlb_gen || running) usable.add(k.options.pcid ? a + 1 : 0);
    }
    for (const e of tlbEntries(k.machine.cpu(c))) {
      if (!usable.has(e.pcid)) continue;
      const first = Number(e.frame);
      const last = first + e.pageSize / PAGE - 1;
      if (first <= pfn + frames - 1 && pfn <= last) out.push(`CPU ${c} ${e.array} va ${e.va.toString(16)} pcid ${e.pcid} → pfn ${first.toString(16)}`);
    }
  }
  return out;
}

/** Check every free and every allocation; returns the list of violations (filled as it runs). */
function watchFrees(k: Kernel): string[] {
  const bad: string[] = [];
  const h = k.pages.hooks;
  const onFree = h.onFree;
  const onAlloc = h.onAlloc;
  h.onFree = (pfn, order) => {
    for (const v of reachable(k, pfn, 2 ** order)) bad.push(`free of ${pfn.toString(16)}: ${v}`);
    onFree?.(pfn, order);
  };
  h.onAlloc = (pfn, order, gfp) => {
    for (const v of reachable(k, pfn, 2 ** order)) bad.push(`reuse of ${pfn.toString(16)}: ${v}`);
    onAlloc?.(pfn, order, gfp);
  };
  return bad;
}

/**
 * Three threads of a process keep touching a 32-page mapping (CPUs 1 and 2 read, and rewrite
 * after faults); the main thread repeatedly zaps, unmaps and maps again parts of it, and
 * allocates meanwhile (the freed frames come back at once from the allocator's free lists).
 */
function churn(k: Kernel): void {
  const st = { ready: 0, done: false };
  k.spawn(function* (u: User) {
    const a = yield* u.mmap(0, 32 * PAGE, RW, ANON);
    for (let i = 0; i < 32; i++) yield* u.store32(a + i * PAGE, i + 1);
    for (const c of [1, 2]) {
      yield* u.clone(function* (w: User) {
        st.ready++;
        let i = c;
        while (!st.done) {
          i = (i * 5 + 1) % 32;
          try {
            yield* w.load32(a + i * PAGE);
          } catch (e) {
            if (!(e instanceof SignalError)) throw e;
          }
          yield* w.yield();
        }
      }, { cpu: c });
    }
    while (st.ready < 2) yield* u.sleep(5_000);
    for (let round = 0; round < 4; round++) {
      const s = a + ((round * 7) % 24) * PAGE;
      yield* u.madvise(s, 8 * PAGE, MADV_DONTNEED);
      const b = yield* u.mmap(0, 8 * PAGE, RW, ANON); // reuses the frames just freed
      for (let i = 0; i < 8; i++) yield* u.store32(b + i * PAGE, 0xb0 + i);
      yield* u.munmap(s, 4 * PAGE);
      yield* u.mmap(s, 4 * PAGE, RW, ANON | MAP_FIXED);
      for (let i = 0; i < 4; i++) yield* u.store32(s + i * PAGE, 0xc0 + i);
      yield* u.munmap(b, 8 * PAGE);
      yield* u.sleep(10_000);
    }
    st.done = true;
    yield* u.sleep(50_000);
  }, { cpu: 0 });
}

describe('no page is freed or reused while a CPU could still use a translation to it', () => {
  it('munmap, MADV_DONTNEED and exit with other threads running: every free comes after its flush', () => {
    const k = new Kernel({ cpus: 3, memoryBytes: 32 << 20 });
    const bad = watchFrees(k);
    let frees = 0;
    const f = k.pages.hooks.onFree!;
    k.pages.hooks.onFree = (pfn, order) => {
      frees++;
      f(pfn, order);
    };
    churn(k);
    k.run({ maxSteps: 500_000 });
    expect(k.liveTasks()).toBe(0);
    expect(frees).toBeGreaterThan(50);
    expect(bad).toEqual([]);
    expect(k.reports.reports).toEqual([]);
    expect(check_vm_invariants(k).problems).toEqual([]);
  });

  it('the check catches frees before the flush (planted: skipFlush)', () => {
    const k = new Kernel({ cpus: 3, memoryBytes: 32 << 20 });
    const bad = watchFrees(k);
    k.tlb.skipFlush = () => true;
    churn(k);
    k.run({ maxSteps: 500_000 });
    expect(bad.length).toBeGreaterThan(0);
  });
});

describe('tlb_finish_mmu with another gather of the mm in flight (mm_tlb_flush_nested)', () => {
  it('flushes the whole mm, reaching lazy CPUs, even if it cleared nothing itself', () => {
    const k = new Kernel({ cpus: 1, memoryBytes: 16 << 20 });
    const calls: [number, number, number, boolean][] = [];
    const orig = k.tlb.flush_tlb_mm_range.bind(k.tlb);
    k.tlb.flush_tlb_mm_range = function* (mm, start, end, stride, freed) {
      calls.push([start, end, stride, freed]);
      yield* orig(mm, start, end, stride, freed);
    };
    let pending: number[] = [];
    k.spawn(function* (u: User) {
      yield* u.mmap(0, PAGE, RW, ANON);
      yield* u.call('t', function* (kk, t) {
        const mm = t.mm!;
        const outer = new MmuGather(kk, mm, false, kk.tlb, kk.pt, 'outer');
        const inner = new MmuGather(kk, mm, false, kk.tlb, kk.pt, 'inner');
        pending.push(mm.tlb_flush_pending);
        yield* inner.finish(); // nested: flush everything
        pending.push(mm.tlb_flush_pending);
        yield* outer.finish(); // alone now, nothing cleared: no flush
        pending.push(mm.tlb_flush_pending);
        return 0;
      });
    });
    k.run();
    expect(pending).toEqual([2, 1, 0]);
    expect(calls).toEqual([[0, TLB_FLUSH_ALL, 12, true]]);
  });

  it('parallel MADV_DONTNEED: once the second caller returns, no thread can read the old data', () => {
    // Thread A zapped the page into its gather and has not flushed yet; thread B's MADV_DONTNEED
    // finds the PTE already none. B must not return before the stale TLB entry of thread C is
    // gone (commit "mm: fix MADV_[FREE|DONTNEED] TLB flush miss problem").
    const k = new Kernel({ cpus: 3, memoryBytes: 16 << 20 });
    const st = { warm: false, zapped: false, advised: false };
    let seen: number | string = -1;
    k.spawn(function* (u: User) {
      const p = yield* u.mmap(0, PAGE, RW, ANON);
      const other = yield* u.mmap(0, PAGE, RW, ANON);
      yield* u.store32(p, 0x5555);
      yield* u.store32(other, 1);
      yield* u.clone(function* (c: User) {
        yield* c.load32(p);
        st.warm = true;
        while (!st.advised) yield* c.load32(other);
        try {
          seen = yield* c.load32(p);
        } catch (e) {
          seen = String(e);
        }
      }, { cpu: 2 });
      yield* u.clone(function* (b: User) {
        while (!st.zapped) yield* b.sleep(5_000);
        yield* b.madvise(p, PAGE, MADV_DONTNEED);
        st.advised = true;
      }, { cpu: 1 });
      while (!st.warm) yield* u.sleep(5_000);
      yield* u.call('A', function* (kk, t) {
        const mm: MmStruct = t.mm!;
        yield* kk.locks.mmap_read_lock(mm, 'A');
        const g = new MmuGather(kk, mm, false, kk.tlb, kk.pt, 'tlb_finish_mmu <- A');
        yield* zap_range(kk, g, mm.vma_lookup(p)!, p, p + PAGE);
        st.zapped = true;
        yield* kk.sleepFor(300_000); // a long batch: the flush is still to come
        yield* g.finish();
        kk.locks.mmap_read_unlock(mm);
        return 0;
      });
    }, { cpu: 0 });
    k.run({ maxSteps: 200_000 });
    expect(k.liveTasks()).toBe(0);
    expect(seen).toBe(0); // a fresh zero page, not 0x5555 through C's stale TLB entry
    expect(k.reports.reports).toEqual([]);
  });
});

describe('tlb_get_unmap_shift and the batch', () => {
  /** Run `f` on a gather of a live mm, then drop it without flushing. */
  function withGather(f: (g: MmuGather) => void): void {
    const k = new Kernel({ cpus: 1, memoryBytes: 16 << 20 });
    k.spawn(function* (u: User) {
      yield* u.mmap(0, PAGE, RW, ANON);
      yield* u.call('t', function* (kk, t) {
        const g = new MmuGather(kk, t.mm!, false, kk.tlb, kk.pt, 'unit');
        f(g);
        // Forget the queued (fake) pages and tables without freeing them.
        g.pages.length = 0;
        g.tables.length = 0;
        t.mm!.tlb_flush_pending--;
        kk.pageRefHolders.delete(g);
        return 0;
      });
    });
    k.run();
    expect(k.reports.reports).toEqual([]);
  }

  it('the stride is that of the smallest cleared leaf; freed page tables do not lower it', () => {
    const strides: number[] = [];
    withGather((g) => {
      strides.push(g.stride_shift); // nothing cleared: PAGE_SHIFT
      g.removeTlbEntry(0x40000000, 21);
      g.removeTlbEntry(0x40200000, 21);
      strides.push(g.stride_shift);
      g.removeTable(0x1234000, 0x40000000, 12);
      strides.push(g.stride_shift);
      expect([g.start, g.end, g.freed_tables]).toEqual([0x40000000, 0x40400000, true]);
      g.removeTlbEntry(0x40400000, 12);
      strides.push(g.stride_shift);
    });
    withGather((g) => {
      g.removeTlbEntry(0x80000000, 30);
      strides.push(g.stride_shift);
    });
    expect(strides).toEqual([12, 21, 21, 12, 30]);
  });

  it('a batch is full at MMU_GATHER_BUNDLE + MAX_GATHER_BATCH_COUNT × MAX_GATHER_BATCH pages (8 + 19 × 510)', () => {
    expect([MMU_GATHER_BUNDLE, MAX_GATHER_BATCH, MAX_GATHER_BATCH_COUNT]).toEqual([8, 510, 19]);
    let fullAt = -1;
    withGather((g) => {
      for (let i = 1; i <= 10_000 && fullAt < 0; i++) if (g.removePage(100 + i)) fullAt = i;
    });
    expect(fullAt).toBe(9698);
  });
});
