// mremap(2): every refusal of check_mremap_params / remap_is_valid with Linux's errno; no-op,
// shrink (also across VMAs), grow in place (merging with the next VMA), grow by moving (page
// tables move, pages are not copied), MREMAP_FIXED, MREMAP_DONTUNMAP, page offsets of moved
// anonymous VMAs and merging at the destination, duplicating shared memory with old_len 0,
// shared anonymous memory growing past its object (SIGBUS), driver VMAs (VM_DONTEXPAND,
// VM_PFNMAP, VM_IO|VM_MIXEDMAP, ->open/->close/->mremap and a refusing ->mremap), hugetlb, and
// a VM_LOCKED mapping that grows (its new part populated, as sys_mremap does with mm_populate).
import { describe, expect, it } from 'vitest';
import { MAP_ANONYMOUS, MAP_FIXED, MAP_HUGETLB, MAP_LOCKED, MAP_PRIVATE, MAP_SHARED, PROT_READ, PROT_WRITE } from '../../kernel/mm/mmap.ts';
import { MREMAP_DONTUNMAP, MREMAP_FIXED, MREMAP_MAYMOVE } from '../../kernel/mm/mremap.ts';
import { TASK_SIZE, VM_DONTEXPAND, VM_IO, VM_MIXEDMAP, type VmFault } from '../../kernel/mm/mm_types.ts';
import { remap_pfn_range, vm_insert_page } from '../../kernel/mm/memory.ts';
import { EINVAL } from '../../kernel/errno.ts';
import { MB2, PAGE, PagePool, boot, errno, eventsOf, expectClean, fakeDevice, pfnAt, ranges, run, signalOf, vmaList } from './util.ts';

const RW = PROT_READ | PROT_WRITE;
const ANON = MAP_PRIVATE | MAP_ANONYMOUS;
const A = 0x40000000;
const B = 0x50000000;

describe('mremap refusals', () => {
  it('checks its parameters as check_mremap_params does (EINVAL) before looking at any VMA', () => {
    const k = boot();
    run(k, function* (u) {
      yield* u.mmap(A, 4 * PAGE, RW, ANON | MAP_FIXED);
      expect(yield* errno(u.mremap(A, PAGE, PAGE, 8))).toBe('EINVAL');
      expect(yield* errno(u.mremap(A + 1, PAGE, 2 * PAGE, MREMAP_MAYMOVE))).toBe('EINVAL');
      expect(yield* errno(u.mremap(A, PAGE, 0, MREMAP_MAYMOVE))).toBe('EINVAL');
      expect(yield* errno(u.mremap(A, PAGE, PAGE, MREMAP_FIXED, B))).toBe('EINVAL');
      expect(yield* errno(u.mremap(A, PAGE, PAGE, MREMAP_DONTUNMAP, B))).toBe('EINVAL');
      expect(yield* errno(u.mremap(A, PAGE, 2 * PAGE, MREMAP_MAYMOVE | MREMAP_DONTUNMAP, B))).toBe('EINVAL');
      expect(yield* errno(u.mremap(A, PAGE, PAGE, MREMAP_MAYMOVE | MREMAP_FIXED, B + 8))).toBe('EINVAL');
      // Checked even with nothing mapped at addr.
      expect(yield* errno(u.mremap(0x60000000, PAGE, PAGE, MREMAP_FIXED, B))).toBe('EINVAL');
      expect(ranges(u.task.mm!)).toEqual([[A, A + 4 * PAGE]]);
    });
    expectClean(k);
  });

  it('EFAULT without a VMA at addr (also beyond TASK_SIZE) or when a resize crosses the VMA end', () => {
    const k = boot();
    run(k, function* (u) {
      yield* u.mmap(A, 2 * PAGE, RW, ANON | MAP_FIXED);
      yield* u.mmap(A + 2 * PAGE, 2 * PAGE, PROT_READ, ANON | MAP_FIXED);
      expect(yield* errno(u.mremap(B, PAGE, 2 * PAGE, MREMAP_MAYMOVE))).toBe('EFAULT');
      expect(yield* errno(u.mremap(TASK_SIZE, PAGE, PAGE, 0))).toBe('EFAULT');
      expect(yield* errno(u.mremap(A, 3 * PAGE, 4 * PAGE, MREMAP_MAYMOVE))).toBe('EFAULT');
      expect(yield* errno(u.mremap(A, 3 * PAGE, 3 * PAGE, MREMAP_MAYMOVE | MREMAP_FIXED, B))).toBe('EFAULT');
    });
    expectClean(k);
  });

  it('EINVAL for overlapping ranges or a destination past TASK_SIZE with MREMAP_FIXED', () => {
    const k = boot();
    run(k, function* (u) {
      yield* u.mmap(A, 4 * PAGE, RW, ANON | MAP_FIXED);
      expect(yield* errno(u.mremap(A, 2 * PAGE, 2 * PAGE, MREMAP_MAYMOVE | MREMAP_FIXED, A + PAGE))).toBe('EINVAL');
      expect(yield* errno(u.mremap(A + 2 * PAGE, 2 * PAGE, 4 * PAGE, MREMAP_MAYMOVE | MREMAP_FIXED, A))).toBe('EINVAL');
      expect(yield* errno(u.mremap(A, PAGE, 2 * PAGE, MREMAP_MAYMOVE | MREMAP_FIXED, TASK_SIZE - PAGE))).toBe('EINVAL');
      expect(ranges(u.task.mm!)).toEqual([[A, A + 4 * PAGE]]);
    });
    expectClean(k);
  });

  it('ENOMEM when growing has no room and MREMAP_MAYMOVE is not given; a private mapping cannot be duplicated (old_len 0: EINVAL)', () => {
    const k = boot();
    run(k, function* (u) {
      yield* u.mmap(A, 2 * PAGE, RW, ANON | MAP_FIXED);
      yield* u.mmap(A + 3 * PAGE, PAGE, PROT_READ, ANON | MAP_FIXED);
      expect(yield* errno(u.mremap(A, 2 * PAGE, 4 * PAGE, 0))).toBe('ENOMEM');
      // Not ending at the VMA's end: never in place.
      expect(yield* errno(u.mremap(A, PAGE, 2 * PAGE, 0))).toBe('ENOMEM');
      expect(yield* errno(u.mremap(A, 0, PAGE, MREMAP_MAYMOVE))).toBe('EINVAL');
      expect(ranges(u.task.mm!)).toEqual([[A, A + 2 * PAGE], [A + 3 * PAGE, A + 4 * PAGE]]);
    });
    expectClean(k);
  });
});

describe('mremap resizing', () => {
  it('same size is a no-op returning addr, even for a range beyond the VMA', () => {
    const k = boot();
    run(k, function* (u) {
      yield* u.mmap(A, 2 * PAGE, RW, ANON | MAP_FIXED);
      expect(yield* u.mremap(A, 2 * PAGE, 2 * PAGE, 0)).toBe(A);
      expect(yield* u.mremap(A, 8 * PAGE, 8 * PAGE, MREMAP_MAYMOVE)).toBe(A);
      expect(ranges(u.task.mm!)).toEqual([[A, A + 2 * PAGE]]);
    });
    expectClean(k);
  });

  it('shrinking unmaps the tail (frees its pages) and keeps the head, also when the old range spans VMAs', () => {
    const k = boot();
    run(k, function* (u) {
      const mm = u.task.mm!;
      yield* u.mmap(A, 4 * PAGE, RW, ANON | MAP_FIXED);
      for (let i = 0; i < 4; i++) yield* u.store32(A + i * PAGE, i + 1);
      expect(yield* u.mremap(A, 4 * PAGE, PAGE + 1, 0)).toBe(A);
      expect(ranges(mm)).toEqual([[A, A + 2 * PAGE]]);
      expect(mm.rss.anon).toBe(2);
      expect(yield* u.load32(A + PAGE)).toBe(2);
      const e = yield* signalOf(u.load32(A + 2 * PAGE));
      expect(e.codename).toBe('SEGV_MAPERR');
      // Shrinking a range that runs into the next VMA unmaps across it (no VMA-end check).
      yield* u.mmap(A + 2 * PAGE, 2 * PAGE, PROT_READ, ANON | MAP_FIXED);
      expect(yield* u.mremap(A, 4 * PAGE, PAGE, 0)).toBe(A);
      expect(ranges(mm)).toEqual([[A, A + PAGE]]);
    });
    expectClean(k);
  });

  it('grows in place when the space after the VMA is free; the new pages read zero', () => {
    const k = boot();
    run(k, function* (u) {
      const mm = u.task.mm!;
      yield* u.mmap(A, 2 * PAGE, RW, ANON | MAP_FIXED);
      yield* u.store32(A, 7);
      const v = mm.vma_lookup(A)!;
      expect(yield* u.mremap(A, 2 * PAGE, 5 * PAGE, 0)).toBe(A);
      expect(mm.vma_lookup(A)).toBe(v);
      expect(ranges(mm)).toEqual([[A, A + 5 * PAGE]]);
      expect(yield* u.load32(A)).toBe(7);
      expect(yield* u.load32(A + 4 * PAGE)).toBe(0);
    });
    expectClean(k);
  });

  it('growing up to the next VMA merges with it when they are compatible (vma_merge_extend), not when they differ', () => {
    const k = boot();
    run(k, function* (u) {
      const mm = u.task.mm!;
      yield* u.mmap(A, 2 * PAGE, RW, ANON | MAP_FIXED);
      yield* u.mmap(A + 4 * PAGE, 2 * PAGE, RW, ANON | MAP_FIXED);
      expect(mm.map_count).toBe(2);
      expect(yield* u.mremap(A, 2 * PAGE, 4 * PAGE, 0)).toBe(A);
      expect(ranges(mm)).toEqual([[A, A + 6 * PAGE]]);
      yield* u.mmap(B, 2 * PAGE, RW, ANON | MAP_FIXED);
      yield* u.mmap(B + 4 * PAGE, 2 * PAGE, PROT_READ, ANON | MAP_FIXED);
      expect(yield* u.mremap(B, 2 * PAGE, 4 * PAGE, 0)).toBe(B);
      expect(ranges(mm).slice(1)).toEqual([[B, B + 4 * PAGE], [B + 4 * PAGE, B + 6 * PAGE]]);
    });
    expectClean(k);
  });

  it('growing where the next VMA is in the way moves the mapping: same pages, the old range is gone', () => {
    const k = boot();
    const before = k.pages.usedFrames;
    run(k, function* (u) {
      const mm = u.task.mm!;
      yield* u.mmap(A, 2 * PAGE, RW, ANON | MAP_FIXED);
      yield* u.mmap(A + 2 * PAGE, PAGE, PROT_READ, ANON | MAP_FIXED);
      yield* u.store32(A, 0x11);
      yield* u.store32(A + PAGE, 0x22);
      const pfns = [pfnAt(k, mm, A), pfnAt(k, mm, A + PAGE)];
      const n = yield* u.mremap(A, 2 * PAGE, 6 * PAGE, MREMAP_MAYMOVE);
      expect(n).not.toBe(A);
      expect([pfnAt(k, mm, n), pfnAt(k, mm, n + PAGE)]).toEqual(pfns);
      expect(mm.rss.anon).toBe(2);
      expect(yield* u.load32(n)).toBe(0x11);
      expect(yield* u.load32(n + PAGE)).toBe(0x22);
      expect(yield* u.load32(n + 5 * PAGE)).toBe(0);
      const e = yield* signalOf(u.load32(A));
      expect([e.codename, e.addr]).toEqual(['SEGV_MAPERR', A]);
      expect(mm.vma_lookup(n)!.vm_end).toBe(n + 6 * PAGE);
    });
    expectClean(k);
    expect(k.pages.usedFrames).toBe(before);
  });

  it('MREMAP_FIXED moves (and shrinks) onto an exact address, replacing what was mapped there', () => {
    const k = boot();
    run(k, function* (u) {
      const mm = u.task.mm!;
      yield* u.mmap(A, 4 * PAGE, RW, ANON | MAP_FIXED);
      for (let i = 0; i < 4; i++) yield* u.store32(A + i * PAGE, 100 + i);
      yield* u.mmap(B, 8 * PAGE, PROT_READ, ANON | MAP_FIXED);
      expect(yield* u.mremap(A + PAGE, 3 * PAGE, 2 * PAGE, MREMAP_MAYMOVE | MREMAP_FIXED, B + 2 * PAGE)).toBe(B + 2 * PAGE);
      expect(vmaList(mm)).toEqual([
        [A, A + PAGE, 'rd wr mr mw me ac'],
        [B, B + 2 * PAGE, 'rd mr mw me'],
        [B + 2 * PAGE, B + 4 * PAGE, 'rd wr mr mw me ac'],
        [B + 4 * PAGE, B + 8 * PAGE, 'rd mr mw me'],
      ]);
      expect(yield* u.load32(B + 2 * PAGE)).toBe(101);
      expect(yield* u.load32(B + 3 * PAGE)).toBe(102);
      expect(yield* u.load32(A)).toBe(100);
      expect(mm.rss.anon).toBe(3);
      // The moved VMA kept its page offsets (it has pages): A/4096 + 1.
      expect(mm.vma_lookup(B + 2 * PAGE)!.vm_pgoff).toBe(A / PAGE + 1);
    });
    expectClean(k);
  });

  it('MREMAP_DONTUNMAP: the pages move, the old VMA stays (no longer accounted) and reads zero', () => {
    const k = boot();
    run(k, function* (u) {
      const mm = u.task.mm!;
      yield* u.mmap(A, 2 * PAGE, RW, ANON | MAP_FIXED);
      yield* u.store32(A, 5);
      const pfn = pfnAt(k, mm, A);
      const n = yield* u.mremap(A, 2 * PAGE, 2 * PAGE, MREMAP_MAYMOVE | MREMAP_DONTUNMAP, B);
      expect(n).toBe(B); // the address is a hint, free here
      expect(pfnAt(k, mm, B)).toBe(pfn);
      expect(pfnAt(k, mm, A)).toBe(-1);
      expect(yield* u.load32(B)).toBe(5);
      expect(yield* u.load32(A)).toBe(0);
      expect(vmaList(mm)).toEqual([
        [A, A + 2 * PAGE, 'rd wr mr mw me'],
        [B, B + 2 * PAGE, 'rd wr mr mw me ac'],
      ]);
      yield* u.store32(A, 6);
      expect(yield* u.load32(B)).toBe(5);
    });
    expectClean(k);
  });

  it('a moved VMA without pages takes the new address as page offset and merges with a compatible neighbour there; one with pages does not', () => {
    const k = boot();
    run(k, function* (u) {
      const mm = u.task.mm!;
      yield* u.mmap(B, 2 * PAGE, RW, ANON | MAP_FIXED);
      // Never touched: merges into the mapping at B (copy_vma's merge).
      yield* u.mmap(A, 2 * PAGE, RW, ANON | MAP_FIXED);
      expect(yield* u.mremap(A, 2 * PAGE, 2 * PAGE, MREMAP_MAYMOVE | MREMAP_FIXED, B + 2 * PAGE)).toBe(B + 2 * PAGE);
      expect(ranges(mm)).toEqual([[B, B + 4 * PAGE]]);
      // Touched: keeps its old offsets, so no merge.
      yield* u.mmap(A, 2 * PAGE, RW, ANON | MAP_FIXED);
      yield* u.store32(A, 1);
      expect(yield* u.mremap(A, 2 * PAGE, 2 * PAGE, MREMAP_MAYMOVE | MREMAP_FIXED, B + 4 * PAGE)).toBe(B + 4 * PAGE);
      expect(ranges(mm)).toEqual([[B, B + 4 * PAGE], [B + 4 * PAGE, B + 6 * PAGE]]);
      expect(yield* u.load32(B + 4 * PAGE)).toBe(1);
      // And a fresh mapping right after the moved one does not merge with it either.
      yield* u.mmap(B + 6 * PAGE, PAGE, RW, ANON | MAP_FIXED);
      expect(mm.map_count).toBe(3);
    });
    expectClean(k);
  });
});

describe('mremap of shared memory', () => {
  it('old_len 0 duplicates a shared mapping: both addresses show the same object', () => {
    const k = boot();
    run(k, function* (u) {
      const mm = u.task.mm!;
      yield* u.mmap(A, 2 * PAGE, RW, MAP_SHARED | MAP_ANONYMOUS | MAP_FIXED);
      yield* u.store32(A + PAGE, 0xd0);
      const d = yield* u.mremap(A, 0, 2 * PAGE, MREMAP_MAYMOVE);
      expect(d).not.toBe(A);
      expect(mm.map_count).toBe(2);
      expect(yield* u.load32(d + PAGE)).toBe(0xd0);
      yield* u.store32(d, 0xd1);
      expect(yield* u.load32(A)).toBe(0xd1);
    });
    expectClean(k);
  });

  it('shared anonymous memory grown past its object raises SIGBUS there (shmem i_size)', () => {
    const k = boot();
    run(k, function* (u) {
      yield* u.mmap(A, 2 * PAGE, RW, MAP_SHARED | MAP_ANONYMOUS | MAP_FIXED);
      expect(yield* u.mremap(A, 2 * PAGE, 4 * PAGE, 0)).toBe(A);
      yield* u.store32(A + PAGE, 1);
      const e = yield* signalOf(u.load32(A + 2 * PAGE));
      expect([e.signame, e.codename, e.addr]).toEqual(['SIGBUS', 'BUS_ADRERR', A + 2 * PAGE]);
    });
    expectClean(k);
  });
});

describe('mremap of driver VMAs', () => {
  it('VM_DONTEXPAND: growing is EFAULT, MREMAP_DONTUNMAP EINVAL; shrinking and moving work with ->open, ->mremap and ->close', () => {
    const k = boot();
    const pool = new PagePool(k, 'dx');
    const dev = fakeDevice(k, 'dx', {
      mmap(vma) {
        vma.vm_flags |= VM_DONTEXPAND;
        return 0;
      },
      ops: {
        map_pages: true,
        fault(vmf: VmFault) {
          vmf.page = pool.page(vmf.pgoff);
          k.pages.getPage(vmf.page);
          return 0;
        },
        mremap: () => 0,
      },
    });
    run(k, function* (u) {
      const mm = u.task.mm!;
      const fd = yield* u.open(dev.path);
      const a = yield* u.mmap(A, 4 * PAGE, RW, MAP_SHARED | MAP_FIXED, fd);
      yield* u.store32(a + 3 * PAGE, 33);
      const id = dev.mmapped[0]!.id;
      expect(yield* errno(u.mremap(a, 4 * PAGE, 8 * PAGE, MREMAP_MAYMOVE))).toBe('EFAULT');
      expect(yield* errno(u.mremap(a, 4 * PAGE, 4 * PAGE, MREMAP_MAYMOVE | MREMAP_DONTUNMAP, B))).toBe('EINVAL');
      expect(yield* u.mremap(a, 4 * PAGE, 3 * PAGE, 0)).toBe(a);
      // The shrink is an munmap of the tail: the split gives the head to a new VMA (->open on
      // it, new_below) and the original VMA, now the tail, is closed.
      const [[head, hs, he]] = eventsOf(dev, 'open');
      expect([hs, he]).toEqual([a, a + 3 * PAGE]);
      expect(eventsOf(dev, 'close')).toEqual([[id, a + 3 * PAGE, a + 4 * PAGE]]);
      yield* u.store32(a + 2 * PAGE, 22);
      dev.events.length = 0;
      expect(yield* u.mremap(a, 3 * PAGE, 3 * PAGE, MREMAP_MAYMOVE | MREMAP_FIXED, B)).toBe(B);
      const opens = eventsOf(dev, 'open');
      expect(opens.length).toBe(1);
      expect(opens[0]!.slice(1)).toEqual([B, B + 3 * PAGE]);
      expect(eventsOf(dev, 'mremap')).toEqual([[opens[0]![0], B, B + 3 * PAGE]]);
      expect(eventsOf(dev, 'close')).toEqual([[head, a, a + 3 * PAGE]]);
      expect(dev.events.map((e) => e.ev)).toEqual(['open', 'mremap', 'close']);
      expect(yield* u.load32(B + 2 * PAGE)).toBe(22);
      expect(mm.vma_lookup(B)!.vm_pgoff).toBe(0);
      yield* u.munmap(B, 3 * PAGE);
    });
    pool.release();
    expectClean(k);
  });

  it('a ->mremap that refuses leaves the mapping where it was, with its pages; the new VMA is opened and closed', () => {
    const k = boot();
    const pool = new PagePool(k, 'nomove');
    const dev = fakeDevice(k, 'nomove', {
      ops: {
        map_pages: true,
        fault(vmf: VmFault) {
          vmf.page = pool.page(vmf.pgoff);
          k.pages.getPage(vmf.page);
          return 0;
        },
        mremap: () => -EINVAL,
      },
    });
    run(k, function* (u) {
      const mm = u.task.mm!;
      const fd = yield* u.open(dev.path);
      const a = yield* u.mmap(A, 2 * PAGE, RW, MAP_SHARED | MAP_FIXED, fd);
      yield* u.store32(a + PAGE, 0x77);
      const pfn = pfnAt(k, mm, a + PAGE);
      expect(yield* errno(u.mremap(a, 2 * PAGE, 2 * PAGE, MREMAP_MAYMOVE | MREMAP_FIXED, B))).toBe('EINVAL');
      expect(ranges(mm)).toEqual([[A, A + 2 * PAGE]]);
      expect(pfnAt(k, mm, a + PAGE)).toBe(pfn);
      expect(pfnAt(k, mm, B + PAGE)).toBe(-1);
      expect(yield* u.load32(a + PAGE)).toBe(0x77);
      const [[nid, ns, ne]] = eventsOf(dev, 'open');
      expect([ns, ne]).toEqual([B, B + 2 * PAGE]);
      expect(eventsOf(dev, 'close')).toEqual([[nid, B, B + 2 * PAGE]]);
      yield* u.munmap(a, 2 * PAGE);
    });
    pool.release();
    expectClean(k);
  });

  it('VM_PFNMAP (remap_pfn_range): growing is EFAULT, DONTUNMAP EINVAL, shrinking and a fixed move keep the raw PFNs', () => {
    const k = boot();
    const pool = new PagePool(k, 'pfn');
    for (let i = 0; i < 4; i++) pool.page(i);
    const base = pool.pfns[0]!;
    const contiguous = pool.pfns.every((p, i) => p === base + i);
    const dev = fakeDevice(k, 'pfn', {
      *mmap(vma) {
        const r = yield* remap_pfn_range(k, vma, vma.vm_start, base, vma.vm_end - vma.vm_start);
        return r;
      },
    });
    expect(contiguous).toBe(true);
    run(k, function* (u) {
      const mm = u.task.mm!;
      const fd = yield* u.open(dev.path);
      const a = yield* u.mmap(A, 4 * PAGE, RW, MAP_SHARED | MAP_FIXED, fd);
      expect(vmaList(mm)[0]![2]).toContain('pf');
      expect(yield* errno(u.mremap(a, 4 * PAGE, 5 * PAGE, MREMAP_MAYMOVE))).toBe('EFAULT');
      expect(yield* errno(u.mremap(a, 4 * PAGE, 4 * PAGE, MREMAP_MAYMOVE | MREMAP_DONTUNMAP, B))).toBe('EINVAL');
      expect(yield* u.mremap(a, 4 * PAGE, 3 * PAGE, 0)).toBe(a);
      expect(yield* u.mremap(a, 3 * PAGE, 3 * PAGE, MREMAP_MAYMOVE | MREMAP_FIXED, B)).toBe(B);
      expect([0, 1, 2].map((i) => pfnAt(k, mm, B + i * PAGE))).toEqual([base, base + 1, base + 2]);
      yield* u.store32(B + 2 * PAGE, 9);
      expect(k.machine.phys.u8[(base + 2) * PAGE]).toBe(9);
      yield* u.munmap(B, 3 * PAGE);
    });
    pool.release();
    expectClean(k);
  });

  it('a VM_SPECIAL VMA without VM_DONTEXPAND cannot grow in place: ENOMEM even with MREMAP_MAYMOVE; with the space taken it moves', () => {
    const k = boot();
    const pool = new PagePool(k, 'io');
    const dev = fakeDevice(k, 'io', {
      mmap(vma) {
        vma.vm_flags |= VM_IO | VM_MIXEDMAP;
        return vm_insert_page(k, vma, vma.vm_start, pool.page(0));
      },
    });
    run(k, function* (u) {
      const mm = u.task.mm!;
      const fd = yield* u.open(dev.path);
      const a = yield* u.mmap(A, PAGE, RW, MAP_SHARED | MAP_FIXED, fd);
      expect(yield* errno(u.mremap(a, PAGE, 2 * PAGE, MREMAP_MAYMOVE))).toBe('ENOMEM');
      yield* u.mmap(a + PAGE, PAGE, PROT_READ, ANON | MAP_FIXED);
      const n = yield* u.mremap(a, PAGE, 2 * PAGE, MREMAP_MAYMOVE);
      expect(n).not.toBe(a);
      expect(pfnAt(k, mm, n)).toBe(pool.pfns[0]);
      expect(k.pages.mapcount[pool.pfns[0]!]).toBe(1);
      yield* u.munmap(n, 2 * PAGE);
    });
    pool.release();
    expectClean(k);
  });
});

describe('mremap of a VM_LOCKED mapping', () => {
  it('growing it, in place or by moving, faults the new part in; locked_vm follows', () => {
    const k = boot();
    run(k, function* (u) {
      const mm = u.task.mm!;
      yield* u.mmap(A, 2 * PAGE, RW, ANON | MAP_FIXED | MAP_LOCKED);
      expect(mm.rss.anon).toBe(2);
      // In place: the two new pages are there at once.
      expect(yield* u.mremap(A, 2 * PAGE, 4 * PAGE, 0)).toBe(A);
      expect(mm.rss.anon).toBe(4);
      expect(pfnAt(k, mm, A + 3 * PAGE)).toBeGreaterThan(0);
      expect(mm.locked_vm).toBe(4);
      // Moved (something is in the way): the old pages move, the two new ones are faulted in.
      yield* u.mmap(A + 4 * PAGE, PAGE, RW, ANON | MAP_FIXED);
      const old = pfnAt(k, mm, A);
      const b = yield* u.mremap(A, 4 * PAGE, 6 * PAGE, MREMAP_MAYMOVE);
      expect(b).not.toBe(A);
      expect(pfnAt(k, mm, b)).toBe(old);
      expect(pfnAt(k, mm, b + 5 * PAGE)).toBeGreaterThan(0);
      expect(mm.rss.anon).toBe(6);
      expect(mm.locked_vm).toBe(6);
      // Shrinking populates nothing and unlocks the tail.
      yield* u.mremap(b, 6 * PAGE, 3 * PAGE, 0);
      expect(mm.rss.anon).toBe(3);
      expect(mm.locked_vm).toBe(3);
    });
    expectClean(k);
  });
});

describe('mremap of hugetlb mappings', () => {
  it('needs 2 MiB aligned addresses and cannot grow (EINVAL); shrinking and moving keep the huge page', () => {
    const k = boot();
    const before = k.pages.usedFrames;
    run(k, function* (u) {
      const mm = u.task.mm!;
      const h = yield* u.mmap(A, 2 * MB2, RW, ANON | MAP_HUGETLB | MAP_FIXED);
      yield* u.store32(h + 100, 0xbeef);
      const head = pfnAt(k, mm, h);
      expect(yield* errno(u.mremap(h, 2 * MB2, 3 * MB2, MREMAP_MAYMOVE))).toBe('EINVAL');
      expect(yield* errno(u.mremap(h, MB2, MB2, MREMAP_MAYMOVE | MREMAP_FIXED, B + PAGE))).toBe('EINVAL');
      // old_len rounds up to 2 MiB: shrinking by one page keeps both huge pages.
      expect(yield* u.mremap(h, 2 * MB2, 2 * MB2 - PAGE, 0)).toBe(h);
      expect(ranges(mm)).toEqual([[h, h + 2 * MB2]]);
      expect(yield* u.mremap(h, 2 * MB2, MB2, 0)).toBe(h);
      expect(ranges(mm)).toEqual([[h, h + MB2]]);
      expect(yield* u.mremap(h, MB2, MB2, MREMAP_MAYMOVE | MREMAP_FIXED, B)).toBe(B);
      expect(pfnAt(k, mm, B)).toBe(head);
      expect(yield* u.load32(B + 100)).toBe(0xbeef);
      expect(mm.hugetlb_usage).toBe(512);
    });
    expectClean(k);
    expect(k.pages.usedFrames).toBe(before);
  });
});
