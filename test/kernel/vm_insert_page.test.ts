/**
 * vm_insert_page, case by case against mm/memory.c: every errno (EFAULT outside the VMA; EINVAL
 * for an anonymous page, a page with refcount 0, a typed page; EBUSY over a present PTE; ENOMEM
 * when no page table can be allocated), what success leaves behind (one reference, one mapcount,
 * a normal PTE, VM_MIXEDMAP set, file RSS), and the contexts: inside ->mmap, under the mmap write
 * lock, under the mmap or VMA read lock, and with no lock at all — each with the report Linux (or,
 * for the November 2024 review's contracts, mmulab) files. Every errno case also checks that
 * nothing was half-done: no reference, no PTE, no mapcount.
 */

import { describe, expect, it } from 'vitest';
import type { Kernel } from '../../kernel/kernel.ts';
import type { KGen } from '../../kernel/sched/core.ts';
import type { User } from '../../kernel/uapi.ts';
import { EBUSY, EFAULT, EINVAL, ENOMEM } from '../../kernel/errno.ts';
import { MAP_ANONYMOUS, MAP_PRIVATE, MAP_SHARED, PROT_READ, PROT_WRITE } from '../../kernel/mm/mmap.ts';
import { vm_insert_page, vm_normal_page } from '../../kernel/mm/memory.ts';
import { GFP_KERNEL, PG_anon, PG_driver, PG_slab, PG_table, __GFP_ZERO } from '../../kernel/mm/page_alloc.ts';
import { VM_MIXEDMAP, VM_PFNMAP, type MmStruct, type VmArea } from '../../kernel/mm/mm_types.ts';
import { _PAGE_PRESENT, _PAGE_RW, _PAGE_SPECIAL, ptePfn } from '../../kernel/arch/x86/pgtable.ts';
import { PageRefs } from '../../kernel/mm/page_ref.ts';
import { boot, expectClean, fakeDevice, pfnAt, pteAt, run, PAGE } from './util.ts';

/** Mapping size: two page tables' worth, so the second half needs a page table of its own. */
const LEN = 4 << 20;

interface World {
  k: Kernel;
  /** A driver page: allocated, refcount 1, owned by `refs`. */
  page: number;
  refs: PageRefs;
  /** The device VMA (set by ->mmap). */
  vma: () => VmArea;
}

/**
 * A kernel with /dev/ins: ->mmap runs `inMmap` (the legal setup context) and does nothing
 * else, so the VMA starts without VM_MIXEDMAP unless `inMmap` sets it.
 */
function world(inMmap?: (w: World, vma: VmArea) => number): World {
  const k = boot({ memoryBytes: 32 << 20 });
  const refs = new PageRefs(k, 'ins pages');
  const page = k.pages.allocPages(GFP_KERNEL | __GFP_ZERO, 0, 'ins alloc');
  k.pages.flags[page] |= PG_driver;
  refs.noteGet(page);
  let vma: VmArea | null = null;
  const w: World = { k, page, refs, vma: () => vma ?? expect.fail('->mmap was not called') };
  fakeDevice(k, 'ins', {
    mmap: (v) => {
      vma = v;
      return inMmap ? inMmap(w, v) : 0;
    },
  });
  return w;
}

/** Open and map /dev/ins (shared, read-only, LEN bytes); returns the address. */
function* mapIns(u: User): KGen<number> {
  const fd = yield* u.open('/dev/ins');
  return yield* u.mmap(0, LEN, PROT_READ, MAP_SHARED, fd, 0);
}

/** The page's counts, the PTE at `va` and the VMA's MIXEDMAP bit, for "nothing changed" checks. */
function snapshot(w: World, mm: MmStruct, va: number) {
  return {
    refcount: w.k.pages.refcount[w.page],
    mapcount: w.k.pages.mapcount[w.page],
    pte: pteAt(w.k, mm, va),
    fileRss: mm.rss.file,
  };
}

describe('vm_insert_page: errno cases (inside ->mmap, the legal setup context)', () => {
  const outside: [string, (v: VmArea) => number][] = [
    ['one page below vm_start', (v) => v.vm_start - PAGE],
    ['at vm_end', (v) => v.vm_end],
    ['far beyond vm_end', (v) => v.vm_end + 64 * PAGE],
  ];
  for (const [what, at] of outside) {
    it(`-EFAULT ${what}, before any other check: VM_MIXEDMAP stays clear, no reference taken`, () => {
      let r = 0;
      let ref0 = 0;
      const w = world((w, v) => {
        ref0 = w.k.pages.refcount[w.page]!;
        r = vm_insert_page(w.k, v, at(v), w.page, 'test');
        return 0;
      });
      run(w.k, function* (u) {
        yield* mapIns(u);
      });
      expect(r).toBe(-EFAULT);
      expect(w.vma().vm_flags & VM_MIXEDMAP).toBe(0);
      expect(w.k.pages.refcount[w.page]).toBe(ref0);
      expectClean(w.k);
    });
  }

  /** Each bad page: how the test obtains it, run inside the process before the device mmap. */
  const badPages: [string, (k: Kernel, u: User) => KGen<number>][] = [
    [
      'an anonymous page (PG_anon)',
      function* (k, u) {
        const a = yield* u.mmap(0, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        yield* u.store8(a, 1);
        const pfn = pfnAt(k, u.task.mm!, a);
        expect(k.pages.flags[pfn]! & PG_anon).not.toBe(0);
        return pfn;
      },
    ],
    [
      'a free frame (refcount 0)',
      function* (k) {
        const pfn = k.pages.allocPages(GFP_KERNEL, 0, 'test');
        k.pages.putPage(pfn, 'test');
        expect(k.pages.refcount[pfn]).toBe(0);
        return pfn;
      },
    ],
    [
      'a page-table page (page_has_type: PG_table)',
      function* (k, u) {
        const a = yield* u.mmap(0, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        yield* u.store8(a, 1);
        const pmdp = k.pt.pmd_offset(u.task.mm!, a);
        const pfn = ptePfn(k.pt.lo(pmdp), k.pt.hi(pmdp));
        expect(k.pages.flags[pfn]! & PG_table).not.toBe(0);
        return pfn;
      },
    ],
    [
      'a slab page (page_has_type: PG_slab)',
      function* (k) {
        // mmulab has no slab allocator; a kernel page marked the way kmalloc's backing pages are.
        const pfn = k.pages.allocPages(GFP_KERNEL, 0, 'kmalloc');
        k.pages.flags[pfn] |= PG_slab;
        return pfn;
      },
    ],
  ];
  for (const [what, obtain] of badPages) {
    it(`-EINVAL for ${what}: no PTE, reference or mapcount; VM_MIXEDMAP was already set (Linux sets it before the page checks)`, () => {
      let bad = -1;
      let r = 0;
      let before: [number, number] = [0, 0];
      let after: [number, number] = [-1, -1];
      const w = world((w, v) => {
        before = [w.k.pages.refcount[bad]!, w.k.pages.mapcount[bad]!];
        r = vm_insert_page(w.k, v, v.vm_start, bad, 'test');
        after = [w.k.pages.refcount[bad]!, w.k.pages.mapcount[bad]!];
        return 0;
      });
      run(w.k, function* (u) {
        bad = yield* obtain(w.k, u);
        const b = yield* mapIns(u);
        expect(pteAt(w.k, u.task.mm!, b)?.[0] ?? 0).toBe(0);
      });
      expect(r).toBe(-EINVAL);
      expect(after).toEqual(before);
      expect(w.vma().vm_flags & VM_MIXEDMAP).not.toBe(0);
      expect(w.k.reports.reports).toEqual([]);
    });
  }

  it('-EINVAL for a pfn beyond installed memory and for pfn 0', () => {
    const rs: number[] = [];
    const w = world((w, v) => {
      rs.push(vm_insert_page(w.k, v, v.vm_start, w.k.pages.nframes + 5, 'test'));
      rs.push(vm_insert_page(w.k, v, v.vm_start, 0, 'test'));
      return 0;
    });
    run(w.k, function* (u) {
      yield* mapIns(u);
    });
    expect(rs).toEqual([-EINVAL, -EINVAL]);
  });

  it('-EBUSY over a present PTE: the first insert stays, the second takes nothing', () => {
    const rs: number[] = [];
    let other = -1;
    const w = world((w, v) => {
      other = w.k.pages.allocPages(GFP_KERNEL | __GFP_ZERO, 0, 'ins alloc 2');
      w.refs.noteGet(other);
      rs.push(vm_insert_page(w.k, v, v.vm_start + PAGE, w.page, 'test'));
      rs.push(vm_insert_page(w.k, v, v.vm_start + PAGE, other, 'test'));
      rs.push(vm_insert_page(w.k, v, v.vm_start + PAGE, w.page, 'test'));
      return 0;
    });
    run(w.k, function* (u) {
      const b = yield* mapIns(u);
      expect(pfnAt(w.k, u.task.mm!, b + PAGE)).toBe(w.page);
      expect([w.k.pages.refcount[w.page], w.k.pages.mapcount[w.page]]).toEqual([2, 1]);
      expect([w.k.pages.refcount[other], w.k.pages.mapcount[other]]).toEqual([1, 0]);
    });
    expect(rs).toEqual([0, -EBUSY, -EBUSY]);
  });

  it('-ENOMEM when the page table cannot be allocated; the next insert after memory returns succeeds', () => {
    const rs: number[] = [];
    let snap: ReturnType<typeof snapshot> | null = null;
    const w = world((w, v) => {
      const k = w.k;
      // The second half of the mapping lies under a PMD entry with no page table yet.
      const va = v.vm_start + LEN / 2;
      expect(k.pt.pte_offset(v.vm_mm, va)).toBeLessThan(0);
      const hoard: number[] = [];
      for (let p = k.pages.allocPages(GFP_KERNEL, 0, 'hoard'); p >= 0; p = k.pages.allocPages(GFP_KERNEL, 0, 'hoard')) hoard.push(p);
      snap = snapshot(w, v.vm_mm, va);
      rs.push(vm_insert_page(k, v, va, w.page, 'test'));
      expect(snapshot(w, v.vm_mm, va)).toEqual(snap);
      for (const p of hoard) k.pages.putPage(p, 'hoard');
      rs.push(vm_insert_page(k, v, va, w.page, 'test'));
      return 0;
    });
    run(w.k, function* (u) {
      const b = yield* mapIns(u);
      expect(pfnAt(w.k, u.task.mm!, b + LEN / 2)).toBe(w.page);
    });
    expect(snap).not.toBeNull();
    expect(rs).toEqual([-ENOMEM, 0]);
  });
});

describe('vm_insert_page: what success leaves', () => {
  it('one reference, one mapcount, a present read-only normal PTE (bit 9 clear), file RSS, VM_MIXEDMAP; vm_normal_page finds the page', () => {
    let before: [number, number] = [0, 0];
    let r = -1;
    const w = world((w, v) => {
      before = [w.k.pages.refcount[w.page]!, w.k.pages.mapcount[w.page]!];
      r = vm_insert_page(w.k, v, v.vm_start + 3 * PAGE, w.page, 'test');
      return 0;
    });
    run(w.k, function* (u) {
      const b = yield* mapIns(u);
      const mm = u.task.mm!;
      const [lo, hi] = pteAt(w.k, mm, b + 3 * PAGE)!;
      expect(lo & _PAGE_PRESENT).not.toBe(0);
      expect(lo & _PAGE_SPECIAL).toBe(0);
      expect(lo & _PAGE_RW).toBe(0);
      expect(ptePfn(lo, hi)).toBe(w.page);
      expect(vm_normal_page(w.k, w.vma(), b + 3 * PAGE, lo, hi)).toBe(w.page);
      expect(mm.rss.file).toBe(1);
      // The user reads the driver's page through it.
      w.k.machine.phys.u8[w.page * PAGE + 7] = 0x5a;
      expect(yield* u.load8(b + 3 * PAGE + 7)).toBe(0x5a);
      expect([w.k.pages.refcount[w.page]! - before[0], w.k.pages.mapcount[w.page]! - before[1]]).toEqual([1, 1]);
    });
    expect(r).toBe(0);
    expect(w.vma().vm_flags & VM_MIXEDMAP).not.toBe(0);
    expectClean(w.k);
  });

  it('munmap gives the reference and the mapcount back; the driver still owns its page', () => {
    const w = world((w, v) => vm_insert_page(w.k, v, v.vm_start, w.page, 'test'));
    run(w.k, function* (u) {
      const b = yield* mapIns(u);
      expect([w.k.pages.refcount[w.page], w.k.pages.mapcount[w.page]]).toEqual([2, 1]);
      yield* u.munmap(b, LEN);
      expect([w.k.pages.refcount[w.page], w.k.pages.mapcount[w.page]]).toEqual([1, 0]);
    });
    expectClean(w.k);
  });
});

describe('vm_insert_page: calling contexts', () => {
  /** Map /dev/ins, optionally give the VMA VM_MIXEDMAP in ->mmap, then run `body` in kernel context. */
  function context(mixed: boolean, body: (k: Kernel, w: World, mm: MmStruct, base: number) => KGen<number>): { w: World; r: number | null } {
    const w = world((_w, v) => {
      if (mixed) v.vm_flags |= VM_MIXEDMAP;
      return 0;
    });
    let r: number | null = null;
    w.k.spawn(function* (u: User) {
      const b = yield* mapIns(u);
      r = yield* u.call('ins_test', (k) => body(k, w, u.task.mm!, b));
    });
    w.k.run({ maxSteps: 1_000_000 });
    return { w, r };
  }
  const titles = (w: World, kind: string) => w.k.reports.reports.filter((x) => x.kind === kind).map((x) => x.title);

  it('a VMA without VM_MIXEDMAP under only the mmap read lock (a fault handler) is the BUG of mm/memory.c; the task dies, nothing is inserted', () => {
    const { w, r } = context(false, function* (k, w, mm, b) {
      yield* k.locks.mmap_read_lock(mm, 'test');
      return vm_insert_page(k, w.vma(), b, w.page, 'test_fault_handler');
    });
    expect(r).toBeNull();
    expect(titles(w, 'BUG')).toEqual(['kernel BUG at mm/memory.c: vm_insert_page']);
    expect(w.k.reports.reports[0]!.text).toMatch(/BUG_ON\(mmap_read_trylock\(vma->vm_mm\)\)/);
    expect(w.k.reports.reports[0]!.text).toMatch(/test_fault_handler/);
    expect(w.k.pages.mapcount[w.page]).toBe(0);
  });

  it('a VM_PFNMAP VMA is the BUG of mm/memory.c even under the mmap write lock', () => {
    const { w, r } = context(false, function* (k, w, mm, b) {
      yield* k.locks.mmap_write_lock(mm, 'test');
      w.vma().vm_flags |= VM_PFNMAP;
      return vm_insert_page(k, w.vma(), b, w.page, 'test');
    });
    expect(r).toBeNull();
    expect(titles(w, 'BUG')).toEqual(['kernel BUG at mm/memory.c: vm_insert_page']);
    expect(w.k.reports.reports[0]!.text).toMatch(/VM_PFNMAP/);
    expect(w.k.pages.mapcount[w.page]).toBe(0);
  });

  it('under the mmap write lock on a VMA already in use: inserted (Linux allows it) and warned (the review: VM_MIXEDMAP must not change on a live VMA)', () => {
    const { w, r } = context(false, function* (k, w, mm, b) {
      yield* k.locks.mmap_write_lock(mm, 'test');
      try {
        return vm_insert_page(k, w.vma(), b, w.page, 'late_insert');
      } finally {
        k.locks.mmap_write_unlock(mm);
      }
    });
    expect(r).toBe(0);
    expect(titles(w, 'WARN')).toEqual(['WARNING: VM_MIXEDMAP set on a VMA in use']);
    expect(w.k.reports.reports[0]!.data).toMatchObject({ contract: 'mixedmap-change', caller: 'late_insert' });
    expect(w.vma().vm_flags & VM_MIXEDMAP).not.toBe(0);
  });

  it('a VM_MIXEDMAP VMA under the mmap read lock or the VMA read lock: the legal fault-time contexts, no report', () => {
    const { w, r } = context(true, function* (k, w, mm, b) {
      yield* k.locks.mmap_read_lock(mm, 'test');
      const r1 = vm_insert_page(k, w.vma(), b, w.page, 'test');
      k.locks.mmap_read_unlock(mm);
      const vma = k.locks.lock_vma_under_rcu(mm, b + PAGE, 'test');
      expect(vma).toBe(w.vma());
      const r2 = vm_insert_page(k, vma!, b + PAGE, w.page, 'test');
      k.locks.vma_end_read(vma!);
      expect([k.pages.refcount[w.page], k.pages.mapcount[w.page]]).toEqual([3, 2]);
      return r1 | r2;
    });
    expect(r).toBe(0);
    expect(w.k.reports.reports).toEqual([]);
  });

  it('a VM_MIXEDMAP VMA with no lock at all: inserted, and warned (the VMA could be freed under the caller)', () => {
    const { w, r } = context(true, function* (k, w, _mm, b) {
      return vm_insert_page(k, w.vma(), b, w.page, 'unlocked_insert');
    });
    expect(r).toBe(0);
    expect(titles(w, 'WARN')).toEqual(['WARNING: vm_insert_page without the mmap lock or the VMA lock']);
    expect(w.k.reports.reports[0]!.data).toMatchObject({ contract: 'vm_insert_page-lock', caller: 'unlocked_insert' });
  });
});
