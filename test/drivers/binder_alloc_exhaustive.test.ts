// The exhaustive binder_alloc test's own tests: its enumeration is the kernel's, KUnit's mapping
// geometry passes too, and every kind of check it makes fails when the allocator or a design is
// broken on purpose. The full 750,000-run test of each design is in
// binder_alloc_exhaustive_<design>.test.ts.
import { describe, expect, it } from 'vitest';
import type { KGen } from '../../kernel/sched/core.ts';
import type { Kernel } from '../../kernel/kernel.ts';
import { handle_mm_fault } from '../../kernel/mm/memory.ts';
import { DESIGNS, type LruStatus } from '../../drivers/android/binder/page_mapping.ts';
import type { BinderAlloc } from '../../drivers/android/binder/binder_alloc.ts';
import { BUFFER_MIN_SIZE, BUFFER_NUM, KUNIT_MMAP_SIZE, TOTAL_EXHAUSTIVE_CASES, genBufOffsets, genFreeOrders, layouts, runExhaustive } from './binder_alloc_exhaustive.ts';

describe('enumeration (binder_alloc_kunit.c: gen_buf_offsets, gen_buf_sizes, permute_frees)', () => {
  it('5^5 end-offset vectors, 120 free orders, 750,000 runs', () => {
    const v = genBufOffsets();
    const o = genFreeOrders();
    expect(v.length).toBe(3125);
    expect(new Set(v.map((x) => x.end.join(','))).size).toBe(3125);
    expect(o.length).toBe(120);
    expect(new Set(o.map((x) => x.join(','))).size).toBe(120);
    for (const s of o) expect([...s].sort()).toEqual([0, 1, 2, 3, 4]);
    expect(v.length * 2 * o.length).toBe(TOTAL_EXHAUSTIVE_CASES);
    expect(BUFFER_NUM).toBe(5);
    expect(BUFFER_MIN_SIZE).toBe(512);
  });

  it('the buffer sizes and extents are those of binder.md §5.2', () => {
    const sizes = new Set<number>();
    let lo = Infinity;
    let hi = 0;
    for (const v of genBufOffsets()) {
      const l = layouts(v, 48 * 1024);
      for (const s of l.front) sizes.add(s);
      lo = Math.min(lo, l.frontEnd);
      hi = Math.max(hi, l.frontEnd);
      expect(l.back.slice(1)).toEqual([...l.front].reverse().slice(1));
      expect(l.back.reduce((a, b) => a + b, 0)).toBe(48 * 1024);
    }
    expect([...sizes].sort((a, b) => a - b)).toEqual([512, 2048, 2560, 3072, 3584, 4096, 4608, 6144, 6656, 7168, 7680, 8192, 8704]);
    expect([lo, hi]).toEqual([2560, 41472]);
  });

  it('the five alignment types of buffer 0: prev+m, the next boundary, that+m, the following boundary, that+m', () => {
    const firsts = [...new Set(genBufOffsets().map((x) => x.end[0]))];
    expect(firsts).toEqual([512, 4096, 4608, 8192, 8704]);
  });
});

describe("KUnit's geometry (128 KiB mapping), first offset vectors", () => {
  for (const design of DESIGNS) {
    it(design, () => {
      const r = runExhaustive({ design, vectors: 4, mmapSize: KUNIT_MMAP_SIZE });
      expect(r.messages).toEqual([]);
      expect(r.runs).toBe(4 * 240);
      expect(r.failedRuns + r.auditFailures).toBe(0);
      expect(r.reports).toEqual([]);
      expect(r.leakedFrames).toBe(0);
      // The back layout installs the whole mapping every run.
      expect(r.pagesInstalled).toBeGreaterThan(4 * 120 * 32);
    });
  }
});

/** Run a few vectors with a planted fault; the test must notice. */
function sabotaged(design: (typeof DESIGNS)[number], sabotage: (alloc: BinderAlloc, k: Kernel) => void) {
  return runExhaustive({ design, vectors: 2, sabotage, stopAfterFailures: 20, keepMessages: 60 });
}

describe('the test fails when something is broken', () => {
  it('a page not put on the LRU at free (I2, then I4)', () => {
    for (const design of DESIGNS) {
      const r = sabotaged(design, (alloc) => {
        const add = alloc.lru.add.bind(alloc.lru);
        alloc.lru.add = (a, i) => (i === 1 ? true : add(a, i));
      });
      expect(r.failedRuns).toBeGreaterThan(0);
      expect(r.messages.some((m) => m.includes('expect lru but is alloc at page index 1'))).toBe(true);
      expect(r.messages.some((m) => m.includes('expect free but is alloc at page index 1'))).toBe(true);
    }
  });

  it('an eager design that installs a frame without mapping it (I1 as the design defines it)', () => {
    for (const design of ['eager', 'eager-writelock'] as const) {
      const r = sabotaged(design, (alloc) => {
        alloc.mapping.installSinglePage = function* (a: BinderAlloc, index: number): KGen<number> {
          const pfn = a.allocFrame('sabotage');
          a.setInstalledPage(index, pfn);
          return 0;
        };
      });
      expect(r.failedRuns).toBeGreaterThan(0);
      expect(r.messages.some((m) => /user PTE maps nothing/.test(m))).toBe(true);
    }
  });

  it('a lazy design whose allocation maps the page after all', () => {
    for (const design of ['eager-deferred', 'fault', 'pfnmap'] as const) {
      const r = sabotaged(design, (alloc) => {
        const install = alloc.mapping.installSinglePage.bind(alloc.mapping);
        const deliver = alloc.mapping.beforeDeliver.bind(alloc.mapping);
        alloc.mapping.installSinglePage = function* (a: BinderAlloc, index: number, addr: number): KGen<number> {
          const r = yield* install(a, index, addr);
          // The receiver-side path (eager-deferred) or a fault-in (fault designs), run at allocation.
          if (design === 'eager-deferred') {
            const b = [...a.allocated.values()].find((x) => x.user_data <= addr + 4095 && x.user_data + a.bufferSize(x) > addr);
            if (b) yield* deliver(a, b);
          } else {
            // A fault-in, as if the receiver touched the page.
            yield* a.k.locks.mmap_read_lock(a.mm!, 'sabotage');
            yield* handle_mm_fault(a.k, a.mm!.vma_lookup(addr)!, addr, 0);
            a.k.locks.mmap_read_unlock(a.mm!);
          }
          return r;
        };
      });
      expect(r.failedRuns).toBeGreaterThan(0);
      expect(r.messages.some((m) => /has a user PTE/.test(m))).toBe(true);
    }
  });

  it('an eager reclaim that frees the page without zapping its PTE', () => {
    const r = sabotaged('eager', (alloc) => {
      alloc.mapping.freePage = function* (a: BinderAlloc, index: number): KGen<LruStatus> {
        if (!a.mutex.trylock('sabotage')) return 'skip';
        const pfn = a.pages[index]!;
        a.pages[index] = -1;
        a.isolate(index);
        a.stats.pagesReclaimed++;
        a.k.pages.putPage(pfn, 'sabotage');
        a.mutex.unlock();
        return 'removed';
      };
    });
    expect(r.failedRuns).toBeGreaterThan(0);
    expect(r.messages.some((m) => /a user PTE is left at page index/.test(m))).toBe(true);
    expect(r.auditMessages.some((m) => /PTE .* left at 0x/.test(m))).toBe(true);
  });

  it('a reclaim that leaks the frame', () => {
    for (const design of DESIGNS) {
      const r = sabotaged(design, (_alloc, k) => {
        const put = k.pages.putPage.bind(k.pages);
        let n = 0;
        k.pages.putPage = (pfn: number, site: string) => (site.includes('binder_free_page') || site.includes('rust_shrink_free_page')) && n++ % 7 === 3 ? false : put(pfn, site);
      });
      expect(r.failedRuns).toBeGreaterThan(0);
      expect(r.messages.some((m) => /frames: \d+ more in use/.test(m))).toBe(true);
      expect(r.leakedFrames).toBeGreaterThan(0);
    }
  });

  it('a reuse that drops the page instead of taking it off the LRU (I3)', () => {
    for (const design of DESIGNS) {
      const r = sabotaged(design, (alloc) => {
        const del = alloc.lru.del.bind(alloc.lru);
        alloc.lru.del = (a, i) => {
          const was = del(a, i);
          // A broken reuse path: the page is thrown away and must be installed again.
          if (was && a.mapping.design !== 'eager' && a.mapping.design !== 'eager-writelock') a.freeInstalledPage(i, 'sabotage');
          else if (was) a.pages[i] = -1;
          return was;
        };
      });
      expect(r.failedRuns).toBeGreaterThan(0);
      expect(r.messages.some((m) => /Reallocation installed \d+ new pages|Reallocation failed|Reallocation buffer/.test(m))).toBe(true);
    }
  });
});

