// madvise(2): argument checks (advice first, then alignment, zero length), holes (ENOMEM after
// the rest was done), MADV_DONTNEED on private, shared, copy-on-write, locked, PFN-mapped and
// hugetlb memory, MADV_DONTNEED_LOCKED, MADV_FREE, MADV_COLD/PAGEOUT, the fork flags
// (DONTFORK/DOFORK/WIPEONFORK/KEEPONFORK) with their splits, merges and refusals, EAGAIN for a
// split beyond max_map_count, and MADV_POPULATE_READ/WRITE.
import { describe, expect, it } from 'vitest';
import { MAP_ANONYMOUS, MAP_FIXED, MAP_HUGETLB, MAP_LOCKED, MAP_PRIVATE, MAP_SHARED, PROT_READ, PROT_WRITE } from '../../kernel/mm/mmap.ts';
import {
  MADV_COLD, MADV_DODUMP, MADV_DOFORK, MADV_DONTDUMP, MADV_DONTFORK, MADV_DONTNEED, MADV_DONTNEED_LOCKED, MADV_FREE, MADV_KEEPONFORK, MADV_NORMAL,
  MADV_PAGEOUT, MADV_POPULATE_READ, MADV_POPULATE_WRITE, MADV_RANDOM, MADV_SEQUENTIAL, MADV_WIPEONFORK,
} from '../../kernel/mm/madvise.ts';
import { TASK_SIZE, VM_MIXEDMAP } from '../../kernel/mm/mm_types.ts';
import { remap_pfn_range, vm_insert_page } from '../../kernel/mm/memory.ts';
import { MB2, PAGE, PagePool, boot, errno, expectClean, fakeDevice, pfnAt, ranges, run, vmaList } from './util.ts';

const RW = PROT_READ | PROT_WRITE;
const ANON = MAP_PRIVATE | MAP_ANONYMOUS;
const A = 0x40000000;

describe('madvise argument checks', () => {
  it('unknown advice is EINVAL, checked first; then alignment (EINVAL); a zero length does nothing', () => {
    const k = boot();
    run(k, function* (u) {
      yield* u.mmap(A, 2 * PAGE, RW, ANON | MAP_FIXED);
      for (const bad of [5, 6, 7, 1000, -1]) expect(yield* errno(u.madvise(A, PAGE, bad))).toBe('EINVAL');
      expect(yield* errno(u.madvise(A, 0, 5))).toBe('EINVAL');
      expect(yield* errno(u.madvise(A + 4, PAGE, MADV_DONTNEED))).toBe('EINVAL');
      expect(yield* errno(u.madvise(0x7000000000, 0, MADV_DONTNEED))).toBe('OK');
      for (const ok of [MADV_NORMAL, MADV_RANDOM, MADV_SEQUENTIAL, MADV_COLD, MADV_PAGEOUT, MADV_DONTDUMP, MADV_DODUMP]) expect(yield* errno(u.madvise(A, PAGE, ok))).toBe('OK');
    });
    expectClean(k);
  });

  it('ENOMEM for unmapped ranges, beyond TASK_SIZE too; with a hole, the VMAs after it are still handled', () => {
    const k = boot();
    run(k, function* (u) {
      const mm = u.task.mm!;
      expect(yield* errno(u.madvise(A, PAGE, MADV_DONTNEED))).toBe('ENOMEM');
      expect(yield* errno(u.madvise(TASK_SIZE, PAGE, MADV_DONTNEED))).toBe('ENOMEM');
      expect(yield* errno(u.madvise(0x800000000000, PAGE, MADV_DONTNEED))).toBe('ENOMEM');
      yield* u.mmap(A, PAGE, RW, ANON | MAP_FIXED);
      yield* u.mmap(A + 2 * PAGE, PAGE, RW, ANON | MAP_FIXED);
      yield* u.store32(A, 1);
      yield* u.store32(A + 2 * PAGE, 2);
      expect(yield* errno(u.madvise(A, 3 * PAGE, MADV_DONTNEED))).toBe('ENOMEM');
      expect(mm.rss.anon).toBe(0);
      expect(yield* errno(u.madvise(A, 3 * PAGE, MADV_DONTFORK))).toBe('ENOMEM');
      expect(vmaList(mm).map((v) => v[2])).toEqual(['rd wr mr mw me dc ac', 'rd wr mr mw me dc ac']);
    });
    expectClean(k);
  });
});

describe('MADV_DONTNEED', () => {
  it('private anonymous memory: the pages are freed and read as zero afterwards; the VMA stays', () => {
    const k = boot();
    run(k, function* (u) {
      const mm = u.task.mm!;
      yield* u.mmap(A, 4 * PAGE, RW, ANON | MAP_FIXED);
      for (let i = 0; i < 4; i++) yield* u.store32(A + i * PAGE, 10 + i);
      const used = k.pages.usedFrames;
      yield* u.madvise(A + PAGE, 2 * PAGE - 1, MADV_DONTNEED);
      expect(k.pages.usedFrames).toBe(used - 2);
      expect(mm.rss.anon).toBe(2);
      expect(ranges(mm)).toEqual([[A, A + 4 * PAGE]]);
      expect([0, 1, 2, 3].map((i) => pfnAt(k, mm, A + i * PAGE) >= 0)).toEqual([true, false, false, true]);
      for (let i = 0; i < 4; i++) expect(yield* u.load32(A + i * PAGE)).toBe(i === 1 || i === 2 ? 0 : 10 + i);
    });
    expectClean(k);
  });

  it('shared anonymous memory: only the mappings go, the data stays in the object', () => {
    const k = boot();
    run(k, function* (u) {
      const mm = u.task.mm!;
      yield* u.mmap(A, 2 * PAGE, RW, MAP_SHARED | MAP_ANONYMOUS | MAP_FIXED);
      yield* u.store32(A, 0x51);
      const pfn = pfnAt(k, mm, A);
      yield* u.madvise(A, 2 * PAGE, MADV_DONTNEED);
      expect(pfnAt(k, mm, A)).toBe(-1);
      expect(mm.rss.shmem).toBe(0);
      expect(k.pages.refcount[pfn]).toBe(1); // the page cache's reference
      expect(yield* u.load32(A)).toBe(0x51);
      expect(pfnAt(k, mm, A)).toBe(pfn);
    });
    expectClean(k);
  });

  it('a copy-on-write page: the parent drops its mapping, the child keeps the data', () => {
    const k = boot();
    run(k, function* (u) {
      const mm = u.task.mm!;
      yield* u.mmap(A, PAGE, RW, ANON | MAP_FIXED);
      yield* u.store32(A, 0x99);
      const pfn = pfnAt(k, mm, A);
      const child = yield* u.fork(function* (c) {
        yield* c.sleep(1_000_000);
        expect(yield* c.load32(A)).toBe(0x99);
        expect(pfnAt(k, c.task.mm!, A)).toBe(pfn);
        expect(k.pages.mapcount[pfn]).toBe(1);
      });
      expect(k.pages.mapcount[pfn]).toBe(2);
      yield* u.madvise(A, PAGE, MADV_DONTNEED);
      expect(k.pages.mapcount[pfn]).toBe(1);
      expect(k.pages.refcount[pfn]).toBe(1);
      expect(yield* u.load32(A)).toBe(0);
      yield* u.wait(child);
    });
    expectClean(k);
  });

  it('EINVAL on VM_LOCKED (MADV_DONTNEED_LOCKED works there) and on VM_PFNMAP', () => {
    const k = boot();
    const pool = new PagePool(k, 'pfnmap');
    const dev = fakeDevice(k, 'pfnmap', {
      *mmap(vma) {
        return yield* remap_pfn_range(k, vma, vma.vm_start, pool.page(0), PAGE);
      },
    });
    run(k, function* (u) {
      const mm = u.task.mm!;
      yield* u.mmap(A, PAGE, RW, ANON | MAP_FIXED | MAP_LOCKED);
      yield* u.store32(A, 1);
      expect(yield* errno(u.madvise(A, PAGE, MADV_DONTNEED))).toBe('EINVAL');
      expect(yield* errno(u.madvise(A, PAGE, MADV_FREE))).toBe('EINVAL');
      expect(yield* errno(u.madvise(A, PAGE, MADV_COLD))).toBe('EINVAL');
      expect(yield* u.load32(A)).toBe(1);
      yield* u.madvise(A, PAGE, MADV_DONTNEED_LOCKED);
      expect(yield* u.load32(A)).toBe(0);
      const fd = yield* u.open(dev.path);
      const p = yield* u.mmap(0, PAGE, RW, MAP_SHARED, fd);
      expect(yield* errno(u.madvise(p, PAGE, MADV_DONTNEED))).toBe('EINVAL');
      expect(yield* errno(u.madvise(p, PAGE, MADV_DONTNEED_LOCKED))).toBe('EINVAL');
      expect(yield* errno(u.madvise(p, PAGE, MADV_POPULATE_READ))).toBe('EINVAL');
      expect(pfnAt(k, mm, p)).toBe(pool.pfns[0]);
      yield* u.munmap(p, PAGE);
    });
    pool.release();
    expectClean(k);
  });

  it('hugetlb: drops whole huge pages from an aligned start, rounding the end down; an unaligned start is EINVAL, MADV_FREE too', () => {
    const k = boot();
    run(k, function* (u) {
      const mm = u.task.mm!;
      const h = yield* u.mmap(A, 2 * MB2, RW, ANON | MAP_HUGETLB | MAP_FIXED);
      yield* u.store32(h, 1);
      yield* u.store32(h + MB2, 2);
      expect(mm.hugetlb_usage).toBe(1024);
      expect(yield* errno(u.madvise(h + PAGE, MB2, MADV_DONTNEED))).toBe('EINVAL');
      expect(yield* errno(u.madvise(h, MB2, MADV_FREE))).toBe('EINVAL');
      // Less than a huge page: rounded down to nothing.
      expect(yield* errno(u.madvise(h, MB2 - PAGE, MADV_DONTNEED))).toBe('OK');
      expect(mm.hugetlb_usage).toBe(1024);
      // A huge page and a half: the first one goes.
      expect(yield* errno(u.madvise(h, MB2 + MB2 / 2, MADV_DONTNEED))).toBe('OK');
      expect(mm.hugetlb_usage).toBe(512);
      expect(yield* u.load32(h)).toBe(0);
      expect(yield* u.load32(h + MB2)).toBe(2);
    });
    expectClean(k);
  });
});

describe('MADV_FREE', () => {
  it('works on private anonymous memory only (shared anonymous memory is EINVAL)', () => {
    const k = boot();
    run(k, function* (u) {
      yield* u.mmap(A, PAGE, RW, ANON | MAP_FIXED);
      yield* u.store32(A, 3);
      expect(yield* errno(u.madvise(A, PAGE, MADV_FREE))).toBe('OK');
      yield* u.store32(A, 4);
      expect(yield* u.load32(A)).toBe(4);
      yield* u.mmap(A + PAGE, PAGE, RW, MAP_SHARED | MAP_ANONYMOUS | MAP_FIXED);
      expect(yield* errno(u.madvise(A + PAGE, PAGE, MADV_FREE))).toBe('EINVAL');
    });
    expectClean(k);
  });
});

describe('madvise fork flags', () => {
  it('MADV_DONTFORK / MADV_DOFORK split the VMA and merge it back', () => {
    const k = boot();
    run(k, function* (u) {
      const mm = u.task.mm!;
      yield* u.mmap(A, 4 * PAGE, RW, ANON | MAP_FIXED);
      yield* u.madvise(A + PAGE, 2 * PAGE, MADV_DONTFORK);
      expect(vmaList(mm)).toEqual([
        [A, A + PAGE, 'rd wr mr mw me ac'],
        [A + PAGE, A + 3 * PAGE, 'rd wr mr mw me dc ac'],
        [A + 3 * PAGE, A + 4 * PAGE, 'rd wr mr mw me ac'],
      ]);
      yield* u.madvise(A, 4 * PAGE, MADV_DOFORK);
      expect(ranges(mm)).toEqual([[A, A + 4 * PAGE]]);
    });
    expectClean(k);
  });

  it('MADV_DOFORK is refused on VM_SPECIAL VMAs; MADV_WIPEONFORK on shared or file mappings', () => {
    const k = boot();
    const pool = new PagePool(k, 'mixed');
    const dev = fakeDevice(k, 'mixed', {
      mmap(vma) {
        vma.vm_flags |= VM_MIXEDMAP;
        return vm_insert_page(k, vma, vma.vm_start, pool.page(0));
      },
    });
    run(k, function* (u) {
      const mm = u.task.mm!;
      const fd = yield* u.open(dev.path);
      const d = yield* u.mmap(0, PAGE, RW, MAP_SHARED, fd);
      expect(yield* errno(u.madvise(d, PAGE, MADV_DONTFORK))).toBe('OK');
      expect(yield* errno(u.madvise(d, PAGE, MADV_DOFORK))).toBe('EINVAL');
      expect(yield* errno(u.madvise(d, PAGE, MADV_WIPEONFORK))).toBe('EINVAL');
      const s = yield* u.mmap(0, PAGE, RW, MAP_SHARED | MAP_ANONYMOUS);
      expect(yield* errno(u.madvise(s, PAGE, MADV_WIPEONFORK))).toBe('EINVAL');
      const p = yield* u.mmap(A, 2 * PAGE, RW, ANON | MAP_FIXED);
      expect(yield* errno(u.madvise(p, PAGE, MADV_WIPEONFORK))).toBe('OK');
      expect(vmaList(mm).find((v) => v[0] === A)![2]).toBe('rd wr mr mw me ac wf');
      yield* u.madvise(p, PAGE, MADV_KEEPONFORK);
      expect(mm.vma_lookup(A)!.vm_end).toBe(A + 2 * PAGE);
      yield* u.munmap(d, PAGE);
    });
    pool.release();
    expectClean(k);
  });

  it('a split beyond max_map_count is EAGAIN for madvise (ENOMEM turned into "try again")', () => {
    const k = boot();
    run(k, function* (u) {
      const mm = u.task.mm!;
      yield* u.mmap(A, 4 * PAGE, RW, ANON | MAP_FIXED);
      k.vmaOps.max_map_count = 1;
      expect(yield* errno(u.madvise(A + PAGE, PAGE, MADV_DONTFORK))).toBe('EAGAIN');
      expect(vmaList(mm)).toEqual([[A, A + 4 * PAGE, 'rd wr mr mw me ac']]);
      // The whole VMA needs no split.
      expect(yield* errno(u.madvise(A, 4 * PAGE, MADV_DONTFORK))).toBe('OK');
    });
    expectClean(k);
  });
});

describe('MADV_POPULATE', () => {
  it('READ maps the zero page, WRITE private pages; WRITE on a read-only VMA is EFAULT; a hole is ENOMEM', () => {
    const k = boot();
    run(k, function* (u) {
      const mm = u.task.mm!;
      yield* u.mmap(A, 2 * PAGE, RW, ANON | MAP_FIXED);
      yield* u.madvise(A, 2 * PAGE, MADV_POPULATE_READ);
      expect(pfnAt(k, mm, A)).toBe(k.pages.zeroPfn);
      expect(mm.rss.anon).toBe(0);
      yield* u.madvise(A, 2 * PAGE, MADV_POPULATE_WRITE);
      expect(mm.rss.anon).toBe(2);
      expect(pfnAt(k, mm, A)).not.toBe(k.pages.zeroPfn);
      yield* u.mmap(A + 2 * PAGE, PAGE, PROT_READ, ANON | MAP_FIXED);
      expect(yield* errno(u.madvise(A + 2 * PAGE, PAGE, MADV_POPULATE_WRITE))).toBe('EFAULT');
      yield* u.mmap(A + 4 * PAGE, PAGE, RW, ANON | MAP_FIXED);
      expect(yield* errno(u.madvise(A + 2 * PAGE, 3 * PAGE, MADV_POPULATE_READ))).toBe('ENOMEM');
      // It stopped at the hole: the VMA after it was not populated.
      expect(pfnAt(k, mm, A + 4 * PAGE)).toBe(-1);
    });
    expectClean(k);
  });
});
