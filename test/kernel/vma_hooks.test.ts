// The vm_ops hooks around splits, unmaps and failed mappings, as Linux calls them: ->mmap sees a
// VMA that is not yet visible; a split calls ->open on the new piece only; munmap calls ->close
// once per removed piece, after its PTEs are gone, the TLBs flushed and the page references
// dropped; ->may_split can veto; a failing ->mmap undoes what it inserted without ->close; exit
// closes every VMA once; and over a process's life opens + mmaps balance closes.
import { describe, expect, it } from 'vitest';
import { MAP_ANONYMOUS, MAP_FIXED, MAP_PRIVATE, MAP_SHARED, PROT_READ, PROT_WRITE } from '../../kernel/mm/mmap.ts';
import { VM_MIXEDMAP, type VmArea } from '../../kernel/mm/mm_types.ts';
import { vm_insert_page } from '../../kernel/mm/memory.ts';
import { EINVAL, EIO } from '../../kernel/errno.ts';
import { tlbEntries } from '../../hw/inspect.ts';
import { PAGE, PagePool, boot, errno, eventsOf, expectClean, fakeDevice, pfnAt, ranges, run, type FakeDevice } from './util.ts';

const RW = PROT_READ | PROT_WRITE;
const A = 0x40000000;

/** A VM_MIXEDMAP device that inserts a pool page for every page of each new mapping. */
function insertingDevice(k: ReturnType<typeof boot>, name: string, pool: PagePool, extra: Parameters<typeof fakeDevice>[2] = {}): FakeDevice {
  return fakeDevice(k, name, {
    ...extra,
    mmap(vma: VmArea) {
      vma.vm_flags |= VM_MIXEDMAP;
      for (let i = 0; i < vma.pages; i++) {
        const r = vm_insert_page(k, vma, vma.vm_start + i * PAGE, pool.page(vma.vm_pgoff + i));
        if (r) return r;
      }
      return 0;
    },
  });
}

describe('->mmap', () => {
  it('sees a VMA that is not in the tree yet (the VmaNew window), with its final range and page offset', () => {
    const k = boot();
    const seen: string[] = [];
    const dev = fakeDevice(k, 'new', {
      mmap(vma) {
        seen.push(`lookup=${vma.vm_mm.vma_lookup(vma.vm_start) === null} window=${k.vmaNewWindow.isOpen(vma)} ${vma.vm_start.toString(16)}-${vma.vm_end.toString(16)} pgoff=${vma.vm_pgoff}`);
        return 0;
      },
    });
    run(k, function* (u) {
      const fd = yield* u.open(dev.path);
      yield* u.mmap(A, 2 * PAGE, RW, MAP_SHARED | MAP_FIXED, fd, 3 * PAGE);
      expect(k.vmaNewWindow.isOpen(dev.mmapped[0]!)).toBe(false);
      expect(u.task.mm!.vma_lookup(A)).toBe(dev.mmapped[0]);
    });
    expect(seen).toEqual(['lookup=true window=true 40000000-40002000 pgoff=3']);
    expectClean(k);
  });

  it('a failing ->mmap undoes the mapping: no VMA, the pages it inserted are unmapped again, no ->open or ->close', () => {
    const k = boot();
    const pool = new PagePool(k, 'fail');
    const dev = fakeDevice(k, 'fail', {
      mmap(vma) {
        vma.vm_flags |= VM_MIXEDMAP;
        expect(vm_insert_page(k, vma, vma.vm_start, pool.page(0))).toBe(0);
        expect(vm_insert_page(k, vma, vma.vm_start + PAGE, pool.page(1))).toBe(0);
        return -EIO;
      },
    });
    run(k, function* (u) {
      const mm = u.task.mm!;
      const fd = yield* u.open(dev.path);
      yield* u.mmap(A - PAGE, PAGE, RW, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED);
      expect(yield* errno(u.mmap(A, 2 * PAGE, RW, MAP_SHARED | MAP_FIXED, fd))).toBe('EIO');
      expect(ranges(mm)).toEqual([[A - PAGE, A]]);
      expect(pfnAt(k, mm, A)).toBe(-1);
      for (const p of pool.pfns) expect([k.pages.refcount[p], k.pages.mapcount[p]]).toEqual([1, 0]);
      expect(mm.rss.file).toBe(0);
      expect(dev.events.map((e) => e.ev)).toEqual(['mmap']);
      // The VMA's file reference went too: closing the fd releases the file.
      yield* u.close(fd);
      expect(dev.events.map((e) => e.ev)).toEqual(['mmap', 'release']);
    });
    pool.release();
    expectClean(k);
  });
});

describe('split, ->open and ->close', () => {
  it('munmap of the middle: two splits open the outer pieces, the original VMA (the middle) is closed once, after its pages are gone and every TLB is flushed', () => {
    const k = boot();
    const pool = new PagePool(k, 'mid');
    const checks: string[] = [];
    const dev = insertingDevice(k, 'mid', pool, {
      ops: {
        close(vma: VmArea) {
          const mm = vma.vm_mm;
          const tlbs = k.machine.cpus.flatMap((c) => tlbEntries(c)).filter((e) => Number(e.va) >= vma.vm_start && Number(e.va) < vma.vm_end);
          checks.push(
            `close ${vma.vm_start.toString(16)}-${vma.vm_end.toString(16)} inTree=${mm.inTree(vma)} ptes=${[0, 1].map((i) => pfnAt(k, mm, vma.vm_start + i * PAGE)).join(',')} refs=${[2, 3].map((i) => k.pages.refcount[pool.pfns[i]!]).join(',')} tlb=${tlbs.length}`,
          );
        },
      },
    });
    run(k, function* (u) {
      const fd = yield* u.open(dev.path);
      const a = yield* u.mmap(A, 6 * PAGE, RW, MAP_SHARED | MAP_FIXED, fd);
      const orig = dev.mmapped[0]!.id;
      // A second thread on the other CPU caches the translations of the middle and keeps
      // running (busy, so its CPU is not lazy and must take the shootdown).
      let done = false;
      let release = false;
      yield* u.clone(
        function* (t) {
          for (let i = 0; i < 6; i++) yield* t.load32(a + i * PAGE);
          done = true;
          // Busy (an access, so virtual time passes; sched_yield alone would not advance it).
          while (!release) yield* t.load32(a);
        },
        { cpu: 1 },
      );
      while (!done) yield* u.load32(a);
      yield* u.munmap(a + 2 * PAGE, 2 * PAGE);
      release = true;
      const opens = eventsOf(dev, 'open');
      expect(opens.map((o) => o.slice(1))).toEqual([
        [a, a + 2 * PAGE],
        [a + 4 * PAGE, a + 6 * PAGE],
      ]);
      expect(opens.every((o) => o[0] !== orig)).toBe(true);
      expect(eventsOf(dev, 'close')).toEqual([[orig, a + 2 * PAGE, a + 4 * PAGE]]);
      expect(ranges(u.task.mm!)).toEqual([[a, a + 2 * PAGE], [a + 4 * PAGE, a + 6 * PAGE]]);
      expect(yield* u.load32(a + 5 * PAGE)).toBe(0);
      yield* u.munmap(a, 6 * PAGE);
    });
    expect(checks[0]).toBe(`close ${(A + 2 * PAGE).toString(16)}-${(A + 4 * PAGE).toString(16)} inTree=false ptes=-1,-1 refs=1,1 tlb=0`);
    expect(checks.length).toBe(3);
    pool.release();
    expectClean(k);
  });

  it('munmap spanning several VMAs closes each removed piece once; exit closes the rest; opens + mmaps equal closes', () => {
    const k = boot();
    const pool = new PagePool(k, 'span');
    const dev = insertingDevice(k, 'span', pool);
    run(k, function* (u) {
      const fd = yield* u.open(dev.path);
      yield* u.mmap(A, 2 * PAGE, RW, MAP_SHARED | MAP_FIXED, fd, 0);
      yield* u.mmap(A + 2 * PAGE, 2 * PAGE, RW, MAP_SHARED | MAP_FIXED, fd, 2 * PAGE);
      yield* u.mmap(A + 4 * PAGE, 2 * PAGE, RW, MAP_SHARED | MAP_FIXED, fd, 4 * PAGE);
      expect(u.task.mm!.map_count).toBe(3); // VM_MIXEDMAP: never merged
      const ids = dev.mmapped.map((v) => v.id);
      yield* u.munmap(A + PAGE, 4 * PAGE);
      // First and last pieces were split (->open on the kept outer parts), all three originals closed.
      expect(eventsOf(dev, 'open').map((o) => o.slice(1))).toEqual([[A, A + PAGE], [A + 5 * PAGE, A + 6 * PAGE]]);
      expect(eventsOf(dev, 'close')).toEqual([
        [ids[0]!, A + PAGE, A + 2 * PAGE],
        [ids[1]!, A + 2 * PAGE, A + 4 * PAGE],
        [ids[2]!, A + 4 * PAGE, A + 5 * PAGE],
      ]);
    });
    const n = (ev: string) => dev.events.filter((e) => e.ev === ev).length;
    expect(n('close')).toBe(5);
    expect(n('open') + n('mmap')).toBe(n('close'));
    expect(new Set(eventsOf(dev, 'close').map((c) => c[0])).size).toBe(5);
    pool.release();
    expectClean(k);
  });

  it('mprotect splits call ->open on the new pieces and never ->mmap', () => {
    const k = boot();
    const dev = fakeDevice(k, 'prot');
    run(k, function* (u) {
      const fd = yield* u.open(dev.path);
      yield* u.mmap(A, 3 * PAGE, RW, MAP_SHARED | MAP_FIXED, fd);
      yield* u.mprotect(A + PAGE, PAGE, PROT_READ);
      expect(dev.events.map((e) => e.ev)).toEqual(['mmap', 'open', 'open']);
      expect(eventsOf(dev, 'open').map((o) => o.slice(1))).toEqual([[A, A + PAGE], [A + 2 * PAGE, A + 3 * PAGE]]);
      expect(u.task.mm!.vma_lookup(A + PAGE)).toBe(dev.mmapped[0]);
    });
    expectClean(k);
  });

  it('->may_split can veto a split: the munmap or mprotect fails with its error and nothing changes', () => {
    const k = boot();
    const dev = fakeDevice(k, 'nosplit', { ops: { may_split: () => -EINVAL } });
    run(k, function* (u) {
      const mm = u.task.mm!;
      const fd = yield* u.open(dev.path);
      yield* u.mmap(A, 3 * PAGE, RW, MAP_SHARED | MAP_FIXED, fd);
      expect(yield* errno(u.munmap(A + PAGE, PAGE))).toBe('EINVAL');
      expect(yield* errno(u.mprotect(A, PAGE, PROT_READ))).toBe('EINVAL');
      expect(ranges(mm)).toEqual([[A, A + 3 * PAGE]]);
      expect(eventsOf(dev, 'may_split').length).toBe(2);
      expect(eventsOf(dev, 'open')).toEqual([]);
      // The whole VMA needs no split.
      expect(yield* errno(u.munmap(A, 3 * PAGE))).toBe('OK');
      expect(eventsOf(dev, 'close').length).toBe(1);
    });
    expect(EINVAL).toBe(22);
    expectClean(k);
  });
});
