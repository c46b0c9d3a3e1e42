// fork(2) and copy-on-write: parent and child each see their own writes; reference and map
// counts right after fork, after each copy-on-write break and after either side exits; reuse of
// a page that became exclusive again; shared mappings stay shared; VM_DONTCOPY (MADV_DONTFORK)
// VMAs are absent in the child and VM_WIPEONFORK ones arrive empty; the zero page; VM_LOCKED is
// not inherited; driver VMAs get ->open and keep their pages (VM_MIXEDMAP, VM_PFNMAP); nested
// forks with either exit order; and no frame leaks once everything has exited.
import { describe, expect, it } from 'vitest';
import { MAP_ANONYMOUS, MAP_FIXED, MAP_LOCKED, MAP_PRIVATE, MAP_SHARED, PROT_READ, PROT_WRITE } from '../../kernel/mm/mmap.ts';
import { MADV_DONTFORK, MADV_WIPEONFORK } from '../../kernel/mm/madvise.ts';
import { VM_DONTCOPY, VM_MIXEDMAP, vmFlagNames } from '../../kernel/mm/mm_types.ts';
import { faultCounters, remap_pfn_range, vm_insert_page } from '../../kernel/mm/memory.ts';
import { _PAGE_RW } from '../../kernel/arch/x86/pgtable.ts';
import { PAGE, PagePool, boot, eventsOf, expectClean, fakeDevice, pfnAt, pteAt, ranges, run, signalOf } from './util.ts';
import { SyscallError } from '../../kernel/errno.ts';

const RW = PROT_READ | PROT_WRITE;
const ANON = MAP_PRIVATE | MAP_ANONYMOUS;
const A = 0x40000000;

describe('fork and copy-on-write', () => {
  it('parent and child each see their own writes after fork', () => {
    const k = boot();
    const before = k.pages.usedFrames;
    const log: string[] = [];
    run(k, function* (u) {
      yield* u.mmap(A, 2 * PAGE, RW, ANON | MAP_FIXED);
      yield* u.store32(A, 1);
      yield* u.store32(A + PAGE, 10);
      const child = yield* u.fork(function* (c) {
        log.push(`child reads ${yield* c.load32(A)} ${yield* c.load32(A + PAGE)}`);
        yield* c.store32(A, 2);
        log.push(`child wrote, reads ${yield* c.load32(A)}`);
        yield* c.sleep(2_000_000);
        log.push(`child still reads ${yield* c.load32(A)} ${yield* c.load32(A + PAGE)}`);
      });
      yield* u.sleep(1_000_000);
      log.push(`parent reads ${yield* u.load32(A)}`);
      yield* u.store32(A + PAGE, 11);
      yield* u.wait(child);
      log.push(`parent reads ${yield* u.load32(A)} ${yield* u.load32(A + PAGE)}`);
    });
    expect(log).toEqual(['child reads 1 10', 'child wrote, reads 2', 'parent reads 1', 'child still reads 2 10', 'parent reads 1 11']);
    expectClean(k);
    expect(k.pages.usedFrames).toBe(before);
  });

  it('shares every anonymous page read-only (refcount 2, mapcount 2); a COW break moves one mapping to a copy', () => {
    const k = boot();
    run(k, function* (u) {
      const mm = u.task.mm!;
      yield* u.mmap(A, 2 * PAGE, RW, ANON | MAP_FIXED);
      yield* u.store32(A, 1);
      yield* u.store32(A + PAGE, 2);
      const [p0, p1] = [pfnAt(k, mm, A), pfnAt(k, mm, A + PAGE)];
      expect([k.pages.refcount[p0], k.pages.mapcount[p0]]).toEqual([1, 1]);
      let childPfn = -1;
      const child = yield* u.fork(function* (c) {
        const cm = c.task.mm!;
        // Same pages, read-only in the child too.
        expect([pfnAt(k, cm, A), pfnAt(k, cm, A + PAGE)]).toEqual([p0, p1]);
        expect(pteAt(k, cm, A)![0] & _PAGE_RW).toBe(0);
        yield* c.store32(A, 3);
        childPfn = pfnAt(k, cm, A);
        expect(childPfn).not.toBe(p0);
        expect([k.pages.refcount[childPfn], k.pages.mapcount[childPfn]]).toEqual([1, 1]);
        expect([k.pages.refcount[p0], k.pages.mapcount[p0]]).toEqual([1, 1]);
        expect(cm.rss.anon).toBe(2);
        yield* c.sleep(2_000_000);
      });
      expect([k.pages.refcount[p0], k.pages.mapcount[p0]]).toEqual([2, 2]);
      expect([k.pages.refcount[p1], k.pages.mapcount[p1]]).toEqual([2, 2]);
      expect(pteAt(k, mm, A)![0] & _PAGE_RW).toBe(0);
      expect(pteAt(k, mm, A + PAGE)![0] & _PAGE_RW).toBe(0);
      yield* u.sleep(1_000_000); // the child broke COW on A meanwhile
      expect(childPfn).toBeGreaterThan(0);
      // The parent's A is its own again (mapcount 1, refcount 1): a write reuses it, no copy.
      const reuse = faultCounters(k).reuse;
      yield* u.store32(A, 4);
      expect(pfnAt(k, mm, A)).toBe(p0);
      expect(faultCounters(k).reuse).toBe(reuse + 1);
      expect([k.pages.refcount[p1], k.pages.mapcount[p1]]).toEqual([2, 2]);
      yield* u.wait(child);
      // The child is gone: A+PAGE is the parent's alone.
      expect([k.pages.refcount[p1], k.pages.mapcount[p1]]).toEqual([1, 1]);
      expect(k.pages.refcount[childPfn]).toBe(0);
      yield* u.store32(A + PAGE, 5);
      expect(pfnAt(k, mm, A + PAGE)).toBe(p1);
    });
    expectClean(k);
  });

  it('when the parent exits first the child keeps the pages, then frees them', () => {
    const k = boot();
    const before = k.pages.usedFrames;
    let pfn = -1;
    run(k, function* (u) {
      yield* u.mmap(A, PAGE, RW, ANON | MAP_FIXED);
      yield* u.store32(A, 0x1234);
      pfn = pfnAt(k, u.task.mm!, A);
      yield* u.fork(function* (c) {
        yield* c.sleep(3_000_000);
        expect(k.pages.mapcount[pfn]).toBe(1);
        expect(yield* c.load32(A)).toBe(0x1234);
        yield* c.store32(A, 1); // exclusive now: reused in place
        expect(pfnAt(k, c.task.mm!, A)).toBe(pfn);
      });
    });
    expect(k.pages.refcount[pfn]).toBe(0);
    expectClean(k);
    expect(k.pages.usedFrames).toBe(before);
  });

  it('grandchildren: three generations share a page until each writes', () => {
    const k = boot();
    const before = k.pages.usedFrames;
    const seen: number[] = [];
    run(k, function* (u) {
      yield* u.mmap(A, PAGE, RW, ANON | MAP_FIXED);
      yield* u.store32(A, 1);
      const pfn = pfnAt(k, u.task.mm!, A);
      const c = yield* u.fork(function* (c1) {
        const g = yield* c1.fork(function* (c2) {
          expect(k.pages.mapcount[pfn]).toBe(3);
          yield* c2.store32(A, 3);
          seen.push(yield* c2.load32(A));
        });
        yield* c1.wait(g);
        seen.push(yield* c1.load32(A));
        yield* c1.store32(A, 2);
        seen.push(yield* c1.load32(A));
      });
      yield* u.wait(c);
      seen.push(yield* u.load32(A));
      expect([k.pages.refcount[pfn], k.pages.mapcount[pfn]]).toEqual([1, 1]);
    });
    expect(seen).toEqual([3, 1, 2, 1]);
    expectClean(k);
    expect(k.pages.usedFrames).toBe(before);
  });
});

describe('fork and the kinds of VMAs', () => {
  it('MAP_SHARED anonymous memory stays shared between parent and child', () => {
    const k = boot();
    const before = k.pages.usedFrames;
    run(k, function* (u) {
      yield* u.mmap(A, 2 * PAGE, RW, MAP_SHARED | MAP_ANONYMOUS | MAP_FIXED);
      yield* u.store32(A, 1);
      const child = yield* u.fork(function* (c) {
        expect(yield* c.load32(A)).toBe(1);
        yield* c.store32(A, 2);
        yield* c.store32(A + PAGE, 20);
      });
      yield* u.wait(child);
      expect(yield* u.load32(A)).toBe(2);
      expect(yield* u.load32(A + PAGE)).toBe(20);
    });
    expectClean(k);
    expect(k.pages.usedFrames).toBe(before);
  });

  it('MADV_DONTFORK: the VMA is absent in the child (SEGV_MAPERR) and its pages are not shared', () => {
    const k = boot();
    run(k, function* (u) {
      yield* u.mmap(A, 3 * PAGE, RW, ANON | MAP_FIXED);
      for (let i = 0; i < 3; i++) yield* u.store32(A + i * PAGE, i + 1);
      yield* u.madvise(A + PAGE, PAGE, MADV_DONTFORK);
      const mid = pfnAt(k, u.task.mm!, A + PAGE);
      const child = yield* u.fork(function* (c) {
        expect(ranges(c.task.mm!)).toEqual([[A, A + PAGE], [A + 2 * PAGE, A + 3 * PAGE]]);
        const e = yield* signalOf(c.load32(A + PAGE));
        expect([e.signame, e.codename, e.addr]).toEqual(['SIGSEGV', 'SEGV_MAPERR', A + PAGE]);
        expect(yield* c.load32(A + 2 * PAGE)).toBe(3);
      });
      expect(k.pages.mapcount[mid]).toBe(1);
      // Writable still in the parent: no COW set up for it.
      expect(pteAt(k, u.task.mm!, A + PAGE)![0] & _PAGE_RW).toBe(_PAGE_RW);
      yield* u.wait(child);
    });
    expectClean(k);
  });

  it('MADV_WIPEONFORK: the child gets the VMA empty (zeroes), the parent keeps its data', () => {
    const k = boot();
    run(k, function* (u) {
      yield* u.mmap(A, 2 * PAGE, RW, ANON | MAP_FIXED);
      yield* u.store32(A, 0xaa);
      yield* u.store32(A + PAGE, 0xbb);
      yield* u.madvise(A, 2 * PAGE, MADV_WIPEONFORK);
      const child = yield* u.fork(function* (c) {
        const cm = c.task.mm!;
        expect(vmFlagNames(cm.vma_lookup(A)!.vm_flags)).toContain('wf');
        expect(pfnAt(k, cm, A)).toBe(-1);
        expect(cm.vma_lookup(A)!.anon_vma).toBeNull();
        expect(yield* c.load32(A)).toBe(0);
        yield* c.store32(A + PAGE, 1);
        expect(yield* c.load32(A + PAGE)).toBe(1);
      });
      yield* u.wait(child);
      expect(yield* u.load32(A)).toBe(0xaa);
      expect(yield* u.load32(A + PAGE)).toBe(0xbb);
    });
    expectClean(k);
  });

  it('reads of never-written memory map the zero page, in the parent and in the child, without counting it', () => {
    const k = boot();
    const z = k.pages.zeroPfn;
    const zref = k.pages.refcount[z];
    run(k, function* (u) {
      const mm = u.task.mm!;
      yield* u.mmap(A, 2 * PAGE, RW, ANON | MAP_FIXED);
      yield* u.store32(A, 1); // gives the VMA an anon_vma, so fork copies its page tables
      expect(yield* u.load32(A + PAGE)).toBe(0);
      expect(pfnAt(k, mm, A + PAGE)).toBe(z);
      expect(mm.rss.anon).toBe(1);
      const child = yield* u.fork(function* (c) {
        expect(pfnAt(k, c.task.mm!, A + PAGE)).toBe(z);
        expect(yield* c.load32(A + PAGE)).toBe(0);
        yield* c.store32(A + PAGE, 5);
        expect(pfnAt(k, c.task.mm!, A + PAGE)).not.toBe(z);
        expect(c.task.mm!.rss.anon).toBe(2);
      });
      yield* u.wait(child);
      expect(pfnAt(k, mm, A + PAGE)).toBe(z);
      expect(k.pages.refcount[z]).toBe(zref);
      expect(k.pages.mapcount[z]).toBe(0);
    });
    expectClean(k);
  });

  it('VM_LOCKED is not inherited', () => {
    const k = boot();
    run(k, function* (u) {
      yield* u.mmap(A, PAGE, RW, ANON | MAP_FIXED | MAP_LOCKED);
      expect(vmFlagNames(u.task.mm!.vma_lookup(A)!.vm_flags)).toContain('lo');
      const child = yield* u.fork(function* (c) {
        expect(vmFlagNames(c.task.mm!.vma_lookup(A)!.vm_flags)).not.toContain('lo');
      });
      yield* u.wait(child);
    });
    expectClean(k);
  });

  it('driver VMAs: ->open on the child copy, VM_MIXEDMAP pages shared (+1 reference, +1 mapcount), VM_DONTCOPY ones left out', () => {
    const k = boot();
    const pool = new PagePool(k, 'fk');
    const dev = fakeDevice(k, 'fk', {
      mmap(vma) {
        vma.vm_flags |= VM_MIXEDMAP;
        if (vma.vm_pgoff === 8) vma.vm_flags |= VM_DONTCOPY;
        return vm_insert_page(k, vma, vma.vm_start, pool.page(vma.vm_pgoff));
      },
    });
    run(k, function* (u) {
      const fd = yield* u.open(dev.path);
      const a = yield* u.mmap(A, PAGE, RW, MAP_SHARED | MAP_FIXED, fd, 0);
      yield* u.mmap(A + 16 * PAGE, PAGE, RW, MAP_SHARED | MAP_FIXED, fd, 8 * PAGE);
      const pfn = pool.pfns[0]!;
      yield* u.store32(a, 42);
      expect([k.pages.refcount[pfn], k.pages.mapcount[pfn]]).toEqual([2, 1]);
      const child = yield* u.fork(function* (c) {
        const cm = c.task.mm!;
        expect(pfnAt(k, cm, A)).toBe(pfn);
        expect(yield* c.load32(A)).toBe(42);
        expect([k.pages.refcount[pfn], k.pages.mapcount[pfn]]).toEqual([3, 2]);
        expect(cm.vma_lookup(A + 16 * PAGE)).toBeNull();
      });
      const opens = eventsOf(dev, 'open');
      expect(opens.length).toBe(1);
      expect(opens[0]!.slice(1)).toEqual([A, A + PAGE]);
      yield* u.wait(child);
      expect([k.pages.refcount[pfn], k.pages.mapcount[pfn]]).toEqual([2, 1]);
      // The child's copy was closed when it exited.
      expect(eventsOf(dev, 'close').map((e) => e[0])).toEqual([opens[0]![0]]);
    });
    pool.release();
    expectClean(k);
  });

  it('VM_PFNMAP: the child maps the same raw PFNs (special entries, nothing counted)', () => {
    const k = boot();
    const pool = new PagePool(k, 'fpfn');
    const dev = fakeDevice(k, 'fpfn', {
      *mmap(vma) {
        return yield* remap_pfn_range(k, vma, vma.vm_start, pool.page(0), PAGE);
      },
    });
    run(k, function* (u) {
      const fd = yield* u.open(dev.path);
      const a = yield* u.mmap(A, PAGE, RW, MAP_SHARED | MAP_FIXED, fd);
      yield* u.store32(a, 7);
      const pfn = pool.pfns[0]!;
      const child = yield* u.fork(function* (c) {
        expect(pfnAt(k, c.task.mm!, A)).toBe(pfn);
        expect(yield* c.load32(A)).toBe(7);
        yield* c.store32(A, 8);
      });
      yield* u.wait(child);
      expect(yield* u.load32(a)).toBe(8);
      expect([k.pages.refcount[pfn], k.pages.mapcount[pfn]]).toEqual([1, 0]);
      yield* u.munmap(a, PAGE);
    });
    pool.release();
    expectClean(k);
  });
});

describe('a new address space without memory', () => {
  it('spawn fails with ENOMEM as fork would, and leaves no half-made mm behind', () => {
    const k = boot();
    const mmsBefore = k.mms.size;
    // Take every free frame, so pgd_alloc fails.
    const taken: number[] = [];
    for (;;) {
      const pfn = k.pages.allocPages(0, 0, 'test');
      if (pfn < 0) break;
      taken.push(pfn);
    }
    expect(taken.length).toBeGreaterThan(0);
    let err: unknown = null;
    try {
      k.spawn(function* idle() {});
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(SyscallError);
    expect((err as SyscallError).code).toBe('ENOMEM');
    expect(k.mms.size).toBe(mmsBefore);
    for (const pfn of taken) k.pages.putPage(pfn, 'test');
    // With memory back, the same call works.
    run(k, function* () {});
    expect(k.mms.size).toBe(mmsBefore);
    expectClean(k);
  });
});

describe('the lazy-TLB reference of an idle CPU', () => {
  it('an idle CPU keeps the dead mm it last ran until its next switch; dropDeadLazyMms is that switch', () => {
    const k = boot();
    const framesAtBoot = k.pages.usedFrames;
    const mmsAtBoot = k.mms.size;
    let go = false;
    run(k, function* (u) {
      const a = yield* u.mmap(0, 4 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
      yield* u.store32(a, 1);
      yield* u.clone(
        function* (t) {
          while (!go) yield* t.sleep(1000);
        },
        { cpu: 1 },
      );
      // Everything unmapped (page tables freed, CPU 1 flushed while it still runs the thread),
      // then the thread leaves CPU 1, which idles lazily with this mm loaded; the exit frees no
      // page table, so no IPI makes CPU 1 let go of it.
      yield* u.munmap(0, 0x7ffffffff000);
      go = true;
      yield* u.sleep(50_000);
    });
    const dead = [...k.mms].filter((m) => m !== k.init_mm);
    expect(dead).toHaveLength(1);
    expect(dead[0]!.mm_users).toBe(0);
    expect(k.tlb.cpuState[1]!.loaded_mm).toBe(dead[0]);
    expect(k.dropDeadLazyMms()).toBe(1);
    expect(k.mms.size).toBe(mmsAtBoot);
    expect(k.pages.usedFrames).toBe(framesAtBoot);
    expect(k.dropDeadLazyMms()).toBe(0);
    expectClean(k);
  });
});
