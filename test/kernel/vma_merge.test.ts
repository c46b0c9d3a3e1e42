// VMA merging, driven through mmap/mprotect as a program would, with the cases of Linux's
// tools/testing/vma (merge.c, mmap.c): a new range merging with prev, next or both (the original
// VMA objects survive, page offsets follow, an anon_vma is taken over); no merge for VM_SPECIAL
// flags, different anon_vmas, different files or page offsets, or different flags; a VMA with
// ->close may be extended but never deleted by a merge (new and existing ranges, the
// prev/middle/next variants); modifying part of a VMA merges the part into a neighbour; sticky
// flags survive a merge; merges call no hooks; and filling a hole merges the two sides.
import { describe, expect, it } from 'vitest';
import { MAP_ANONYMOUS, MAP_FIXED, MAP_PRIVATE, MAP_SHARED, PROT_EXEC, PROT_READ, PROT_WRITE } from '../../kernel/mm/mmap.ts';
import { VM_DONTEXPAND, VM_IO, VM_MIXEDMAP, VM_PFNMAP, VM_SOFTDIRTY, VM_SPECIAL, vmFlagNames, type VmArea, type VmOperations } from '../../kernel/mm/mm_types.ts';
import { PAGE, boot, eventsOf, expectClean, fakeDevice, ranges, run, vmaList } from './util.ts';

const RW = PROT_READ | PROT_WRITE;
const ANON = MAP_PRIVATE | MAP_ANONYMOUS;
/** Base of the test window; page n of the window is at B + n * PAGE (the "0123456789abc" rulers). */
const B = 0x40000000;
const at = (n: number) => B + n * PAGE;

describe('merging a new range (vma_merge_new_range)', () => {
  it('runs the merge_new sequence: no merge, both sides, prev, next, both, next, both', () => {
    const k = boot();
    run(k, function* (u) {
      const mm = u.task.mm!;
      const map = function* (s: number, e: number) {
        return yield* u.mmap(at(s), (e - s) * PAGE, RW, ANON | MAP_FIXED);
      };
      // 0123456789abc
      // AA B       CC
      yield* map(0, 2);
      yield* map(3, 4);
      yield* map(0xb, 0xc);
      const [va, vb, vc] = mm.vmas();
      // B has pages (an anon_vma); A has none yet.
      yield* u.store32(at(3), 1);
      const avB = vb!.anon_vma;
      expect(avB).not.toBeNull();
      // AA B   **  CC: no neighbour, no merge.
      yield* map(7, 9);
      expect(mm.map_count).toBe(4);
      const vd = mm.vma_lookup(at(7))!;
      // AA*B   DD  CC: merge both, A extended (takes B's anon_vma), B deleted.
      yield* map(2, 3);
      expect(mm.vma_lookup(at(0))).toBe(va);
      expect(vb!.freed).toBe(true);
      expect([va!.vm_start, va!.vm_end, va!.vm_pgoff]).toEqual([at(0), at(4), B / PAGE]);
      expect(va!.anon_vma).toBe(avB);
      expect(mm.map_count).toBe(3);
      expect(yield* u.load32(at(3))).toBe(1);
      // AAAA*  DD  CC: merge prev.
      yield* map(4, 5);
      expect([va!.vm_start, va!.vm_end]).toEqual([at(0), at(5)]);
      expect(mm.map_count).toBe(3);
      // AAAAA *DD  CC: merge next (D prepended, page offset moves down).
      yield* map(6, 7);
      expect(mm.vma_lookup(at(6))).toBe(vd);
      expect([vd.vm_start, vd.vm_end, vd.vm_pgoff]).toEqual([at(6), at(9), at(6) / PAGE]);
      expect(mm.map_count).toBe(3);
      // AAAAA*DDD  CC: merge both, D deleted.
      yield* map(5, 6);
      expect([va!.vm_start, va!.vm_end]).toEqual([at(0), at(9)]);
      expect(vd.freed).toBe(true);
      expect(mm.map_count).toBe(2);
      // AAAAAAAAA *CC: merge next.
      yield* map(0xa, 0xb);
      expect([vc!.vm_start, vc!.vm_end, vc!.vm_pgoff]).toEqual([at(0xa), at(0xc), at(0xa) / PAGE]);
      // AAAAAAAAA*CCC: merge both, one VMA left.
      yield* map(9, 0xa);
      expect(mm.vmas()).toEqual([va]);
      expect([va!.vm_start, va!.vm_end, va!.vm_pgoff]).toEqual([at(0), at(0xc), B / PAGE]);
    });
    expectClean(k);
  });

  it('filling a hole between two identical mappings leaves one VMA; a flag mismatch (exec) leaves three', () => {
    const k = boot();
    run(k, function* (u) {
      const mm = u.task.mm!;
      yield* u.mmap(at(0), 2 * PAGE, RW, ANON | MAP_FIXED);
      yield* u.mmap(at(3), 2 * PAGE, RW, ANON | MAP_FIXED);
      yield* u.mmap(at(2), PAGE, RW, ANON | MAP_FIXED);
      expect(ranges(mm)).toEqual([[at(0), at(5)]]);
      for (let a = at(0); a < at(5); a += PAGE) expect(mm.vma_lookup(a)).toBe(mm.vmas()[0]);
      yield* u.mmap(at(8), 2 * PAGE, RW, ANON | MAP_FIXED);
      yield* u.mmap(at(11), 2 * PAGE, RW, ANON | MAP_FIXED);
      yield* u.mmap(at(10), PAGE, RW | PROT_EXEC, ANON | MAP_FIXED);
      expect(mm.map_count).toBe(4);
    });
    expectClean(k);
  });

  it('different anon_vmas on both sides: the new range merges with prev only', () => {
    const k = boot();
    run(k, function* (u) {
      const mm = u.task.mm!;
      yield* u.mmap(at(0), 3 * PAGE, RW, ANON | MAP_FIXED);
      yield* u.mmap(at(7), 2 * PAGE, RW, ANON | MAP_FIXED);
      yield* u.store32(at(0), 1);
      yield* u.store32(at(7), 2);
      const [p, n] = mm.vmas();
      expect(p!.anon_vma).not.toBe(n!.anon_vma);
      yield* u.mmap(at(3), 4 * PAGE, RW, ANON | MAP_FIXED);
      expect(ranges(mm)).toEqual([[at(0), at(7)], [at(7), at(9)]]);
      expect(mm.vma_lookup(at(3))).toBe(p);
    });
    expectClean(k);
  });

  it('a file mapping merges only with the same file at contiguous page offsets, before ->mmap is called', () => {
    const k = boot();
    const dev = fakeDevice(k, 'plain');
    run(k, function* (u) {
      const mm = u.task.mm!;
      const fd = yield* u.open(dev.path);
      const fd2 = yield* u.open(dev.path);
      yield* u.mmap(at(0), 2 * PAGE, RW, MAP_SHARED | MAP_FIXED, fd, 0);
      // Contiguous offset, same file: merged, and ->mmap never sees this range.
      yield* u.mmap(at(2), 2 * PAGE, RW, MAP_SHARED | MAP_FIXED, fd, 2 * PAGE);
      expect(ranges(mm)).toEqual([[at(0), at(4)]]);
      expect(eventsOf(dev, 'mmap').length).toBe(1);
      // Wrong offset: no merge.
      yield* u.mmap(at(4), PAGE, RW, MAP_SHARED | MAP_FIXED, fd, 9 * PAGE);
      // Same device, another open file: no merge.
      yield* u.mmap(at(5), PAGE, RW, MAP_SHARED | MAP_FIXED, fd2, 10 * PAGE);
      expect(ranges(mm)).toEqual([[at(0), at(4)], [at(4), at(5)], [at(5), at(6)]]);
      expect(eventsOf(dev, 'mmap').length).toBe(3);
      // Merges run no hooks.
      expect(eventsOf(dev, 'open')).toEqual([]);
      expect(eventsOf(dev, 'close')).toEqual([]);
    });
    expectClean(k);
  });

  it('sticky flags (VM_SOFTDIRTY) do not prevent a merge and survive it', () => {
    const k = boot();
    run(k, function* (u) {
      const mm = u.task.mm!;
      yield* u.mmap(at(0), 2 * PAGE, RW, ANON | MAP_FIXED);
      mm.vmas()[0]!.vm_flags |= VM_SOFTDIRTY;
      yield* u.mmap(at(2), 2 * PAGE, RW, ANON | MAP_FIXED);
      expect(ranges(mm)).toEqual([[at(0), at(4)]]);
      expect(vmFlagNames(mm.vmas()[0]!.vm_flags)).toContain('sd');
    });
    expectClean(k);
  });
});

describe('VM_SPECIAL never merges', () => {
  it('is exactly VM_IO | VM_DONTEXPAND | VM_PFNMAP | VM_MIXEDMAP', () => {
    expect(VM_SPECIAL).toBe(VM_IO | VM_DONTEXPAND | VM_PFNMAP | VM_MIXEDMAP);
  });

  for (const [name, flag] of [['VM_IO', VM_IO], ['VM_DONTEXPAND', VM_DONTEXPAND], ['VM_PFNMAP', VM_PFNMAP], ['VM_MIXEDMAP', VM_MIXEDMAP]] as const) {
    it(`${name}: adjacent mappings of the same file at contiguous offsets stay apart, also when made identical by mprotect`, () => {
      const k = boot();
      const dev = fakeDevice(k, `sp${flag}`, {
        mmap(vma) {
          vma.vm_flags |= flag;
          return 0;
        },
      });
      run(k, function* (u) {
        const mm = u.task.mm!;
        const fd = yield* u.open(dev.path);
        yield* u.mmap(at(0), 2 * PAGE, RW, MAP_SHARED | MAP_FIXED, fd, 0);
        yield* u.mmap(at(2), 2 * PAGE, RW, MAP_SHARED | MAP_FIXED, fd, 2 * PAGE);
        expect(mm.map_count).toBe(2);
        expect(mm.vmas()[0]!.vm_flags).toBe(mm.vmas()[1]!.vm_flags);
        yield* u.mprotect(at(2), 2 * PAGE, PROT_READ);
        yield* u.mprotect(at(2), 2 * PAGE, RW);
        expect(ranges(mm)).toEqual([[at(0), at(2)], [at(2), at(4)]]);
        expect(eventsOf(dev, 'mmap').length).toBe(2);
      });
      expectClean(k);
    });
  }
});

/**
 * One device whose VMAs get vm_ops with or without ->close, chosen per mapping by its page offset
 * (as tools/testing/vma sets vm_ops per VMA): offsets in `closable` get ->close.
 */
function closeDevice(k: ReturnType<typeof boot>, closable: (pgoff: number) => boolean) {
  const closes: number[] = [];
  const withClose: VmOperations = { name: 'with-close', close: (v: VmArea) => void closes.push(v.id) };
  const without: VmOperations = { name: 'no-close' };
  const dev = fakeDevice(k, `close${closeDevice.n++}`, {
    mmap(vma) {
      vma.vm_ops = closable(vma.vm_pgoff) ? withClose : without;
      return 0;
    },
  });
  return { dev, closes };
}
closeDevice.n = 0;

describe('VMAs with ->close are never deleted by a merge', () => {
  it('new range between prev and a closable next: only prev is extended (PPP**NNNN → PPPPPNNNN)', () => {
    const k = boot();
    const { dev, closes } = closeDevice(k, (pg) => pg >= 5);
    run(k, function* (u) {
      const mm = u.task.mm!;
      const fd = yield* u.open(dev.path);
      yield* u.mmap(at(0), 3 * PAGE, RW, MAP_SHARED | MAP_FIXED, fd, 0);
      yield* u.mmap(at(5), 4 * PAGE, RW, MAP_SHARED | MAP_FIXED, fd, 5 * PAGE);
      const [p, n] = mm.vmas();
      yield* u.mmap(at(3), 2 * PAGE, RW, MAP_SHARED | MAP_FIXED, fd, 3 * PAGE);
      expect(mm.vmas()).toEqual([p, n]);
      expect([p!.vm_start, p!.vm_end, p!.vm_pgoff]).toEqual([at(0), at(5), 0]);
      expect([n!.vm_start, n!.vm_end]).toEqual([at(5), at(9)]);
      expect(closes).toEqual([]);
    });
    expectClean(k);
  });

  it('new range between two closable VMAs: prev is extended, next stays (vma_merge_new_with_close)', () => {
    const k = boot();
    const { closes, dev } = closeDevice(k, () => true);
    run(k, function* (u) {
      const mm = u.task.mm!;
      const fd = yield* u.open(dev.path);
      yield* u.mmap(at(0), 2 * PAGE, RW, MAP_SHARED | MAP_FIXED, fd, 0);
      yield* u.mmap(at(5), 2 * PAGE, RW, MAP_SHARED | MAP_FIXED, fd, 5 * PAGE);
      yield* u.mmap(at(2), 3 * PAGE, RW, MAP_SHARED | MAP_FIXED, fd, 2 * PAGE);
      expect(ranges(mm)).toEqual([[at(0), at(5)], [at(5), at(7)]]);
      expect(mm.vmas()[0]!.vm_ops!.close).toBeDefined();
      expect(closes).toEqual([]);
    });
    expectClean(k);
  });

  it('modifying a closable VMA so it would be deleted: no merge with prev (PPPVV), next (VVNNNN) or both (PPPVVNNNN)', () => {
    const k = boot();
    const { closes, dev } = closeDevice(k, (pg) => pg >= 3 && pg < 5);
    run(k, function* (u) {
      const mm = u.task.mm!;
      const fd = yield* u.open(dev.path);
      // PPPVVNNNN, V read-only so nothing merges yet.
      yield* u.mmap(at(0), 3 * PAGE, RW, MAP_SHARED | MAP_FIXED, fd, 0);
      yield* u.mmap(at(3), 2 * PAGE, PROT_READ, MAP_SHARED | MAP_FIXED, fd, 3 * PAGE);
      yield* u.mmap(at(5), 4 * PAGE, RW, MAP_SHARED | MAP_FIXED, fd, 5 * PAGE);
      expect(mm.map_count).toBe(3);
      yield* u.mprotect(at(3), 2 * PAGE, RW);
      expect(ranges(mm)).toEqual([[at(0), at(3)], [at(3), at(5)], [at(5), at(9)]]);
      expect(vmaList(mm).every((v) => v[2] === vmaList(mm)[0]![2])).toBe(true);
      // Only prev (VVNNNN without P): unmap P, make V read-only and back.
      yield* u.munmap(at(0), 3 * PAGE);
      yield* u.mprotect(at(3), 2 * PAGE, PROT_READ);
      yield* u.mprotect(at(3), 2 * PAGE, RW);
      expect(ranges(mm)).toEqual([[at(3), at(5)], [at(5), at(9)]]);
      // Only next (PPPVV): unmap N, remap P.
      yield* u.munmap(at(5), 4 * PAGE);
      yield* u.mmap(at(0), 3 * PAGE, RW, MAP_SHARED | MAP_FIXED, fd, 0);
      yield* u.mprotect(at(3), 2 * PAGE, PROT_READ);
      yield* u.mprotect(at(3), 2 * PAGE, RW);
      expect(ranges(mm)).toEqual([[at(0), at(3)], [at(3), at(5)]]);
      expect(closes).toEqual([]);
    });
    expectClean(k);
  });

  it('modifying a VMA between prev and a closable next: reduced to a merge of prev and the VMA (PPPVVNNNN → PPPPPNNNN)', () => {
    const k = boot();
    const { closes, dev } = closeDevice(k, (pg) => pg >= 5);
    run(k, function* (u) {
      const mm = u.task.mm!;
      const fd = yield* u.open(dev.path);
      yield* u.mmap(at(0), 3 * PAGE, RW, MAP_SHARED | MAP_FIXED, fd, 0);
      yield* u.mmap(at(3), 2 * PAGE, PROT_READ, MAP_SHARED | MAP_FIXED, fd, 3 * PAGE);
      yield* u.mmap(at(5), 4 * PAGE, RW, MAP_SHARED | MAP_FIXED, fd, 5 * PAGE);
      const [p, v, n] = mm.vmas();
      yield* u.mprotect(at(3), 2 * PAGE, RW);
      expect(mm.vmas()).toEqual([p, n]);
      expect(v!.freed).toBe(true);
      expect([p!.vm_start, p!.vm_end, p!.vm_pgoff]).toEqual([at(0), at(5), 0]);
      // Merges call no hooks, not even ->close of the VMA they delete (it had none).
      expect(closes).toEqual([]);
      expect(eventsOf(dev, 'open')).toEqual([]);
    });
    expectClean(k);
  });

  it('a closable VMA may still shrink or grow in a merge: partial spans merge into a closable neighbour', () => {
    const k = boot();
    const { dev } = closeDevice(k, () => true);
    run(k, function* (u) {
      const mm = u.task.mm!;
      const fd = yield* u.open(dev.path);
      //   VVVVNNN → VNNNNNN (merge right, partial span)
      yield* u.mmap(at(2), 4 * PAGE, PROT_READ, MAP_SHARED | MAP_FIXED, fd, 2 * PAGE);
      yield* u.mmap(at(6), 3 * PAGE, RW, MAP_SHARED | MAP_FIXED, fd, 6 * PAGE);
      const [v, n] = mm.vmas();
      yield* u.mprotect(at(3), 3 * PAGE, RW);
      expect(mm.vmas()).toEqual([v, n]);
      expect([v!.vm_start, v!.vm_end, v!.vm_pgoff]).toEqual([at(2), at(3), 2]);
      expect([n!.vm_start, n!.vm_end, n!.vm_pgoff]).toEqual([at(3), at(9), 3]);
      // PPPVVVV → PPPPPPV (merge left, partial span), further up.
      yield* u.mmap(at(0x10), 3 * PAGE, RW, MAP_SHARED | MAP_FIXED, fd, 0x10 * PAGE);
      yield* u.mmap(at(0x13), 4 * PAGE, PROT_READ, MAP_SHARED | MAP_FIXED, fd, 0x13 * PAGE);
      const p = mm.vma_lookup(at(0x10))!;
      const w = mm.vma_lookup(at(0x13))!;
      yield* u.mprotect(at(0x13), 3 * PAGE, RW);
      expect([p.vm_start, p.vm_end, p.vm_pgoff]).toEqual([at(0x10), at(0x16), 0x10]);
      expect([w.vm_start, w.vm_end, w.vm_pgoff]).toEqual([at(0x16), at(0x17), 0x16]);
      expect(eventsOf(dev, 'close')).toEqual([]);
    });
    expectClean(k);
  });
});

describe('merging a modified range (vma_merge_existing_range) of anonymous memory', () => {
  it('full span merges delete the modified VMA; different anon_vmas on both sides reduce to prev + middle', () => {
    const k = boot();
    run(k, function* (u) {
      const mm = u.task.mm!;
      // PPPVVVVNNN, P and N with pages (different anon_vmas), V without.
      yield* u.mmap(at(0), 3 * PAGE, RW, ANON | MAP_FIXED);
      yield* u.mmap(at(3), 4 * PAGE, PROT_READ, ANON | MAP_FIXED);
      yield* u.mmap(at(7), 3 * PAGE, RW, ANON | MAP_FIXED);
      yield* u.store32(at(0), 1);
      yield* u.store32(at(7), 2);
      const [p, v, n] = mm.vmas();
      yield* u.mprotect(at(3), 4 * PAGE, RW);
      expect(mm.vmas()).toEqual([p, n]);
      expect(v!.freed).toBe(true);
      expect([p!.vm_start, p!.vm_end]).toEqual([at(0), at(7)]);
      expect(yield* u.load32(at(7))).toBe(2);
    });
    expectClean(k);
  });

  it('expanding a VMA without anon_vma over a neighbour that has one takes the anon_vma over (dup_anon_vma)', () => {
    const k = boot();
    run(k, function* (u) {
      const mm = u.task.mm!;
      yield* u.mmap(at(0), 2 * PAGE, RW, ANON | MAP_FIXED);
      yield* u.mmap(at(2), 2 * PAGE, PROT_READ, ANON | MAP_FIXED);
      yield* u.mprotect(at(2), 2 * PAGE, RW);
      yield* u.store32(at(2), 9);
      // Split it off again, then merge back: prev (no pages) absorbs the piece with pages.
      yield* u.mprotect(at(2), 2 * PAGE, PROT_READ);
      const [p, v] = mm.vmas();
      const av = v!.anon_vma;
      expect(p!.anon_vma).toBe(av); // the first merge already shared it
      yield* u.munmap(at(0), 2 * PAGE);
      yield* u.mmap(at(0), 2 * PAGE, RW, ANON | MAP_FIXED);
      const q = mm.vma_lookup(at(0))!;
      expect(q.anon_vma).toBeNull();
      yield* u.mprotect(at(2), 2 * PAGE, RW);
      expect(mm.vmas()).toEqual([q]);
      expect(q.anon_vma).toBe(av);
      expect(yield* u.load32(at(2))).toBe(9);
    });
    expectClean(k);
  });

  it('ranges strictly inside a VMA never merge: they split', () => {
    const k = boot();
    run(k, function* (u) {
      const mm = u.task.mm!;
      yield* u.mmap(at(0), 3 * PAGE, RW, ANON | MAP_FIXED);
      yield* u.mmap(at(3), 5 * PAGE, PROT_READ, ANON | MAP_FIXED);
      yield* u.mmap(at(8), 3 * PAGE, RW, ANON | MAP_FIXED);
      yield* u.mprotect(at(4), 2 * PAGE, RW);
      expect(ranges(mm)).toEqual([[at(0), at(3)], [at(3), at(4)], [at(4), at(6)], [at(6), at(8)], [at(8), at(11)]]);
    });
    expectClean(k);
  });
});
