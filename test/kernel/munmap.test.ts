// munmap(2): argument checks (do_vmi_munmap), unmapping nothing, the head, the tail or the middle
// of a VMA, a range spanning several VMAs and holes, freeing pages and page tables, shared
// anonymous memory, the map_count rule for splits, and the TLB: a thread on another CPU that had
// the page in its TLB faults afterwards instead of reaching the freed frame.
import { describe, expect, it } from 'vitest';
import { MAP_ANONYMOUS, MAP_FIXED, MAP_PRIVATE, MAP_SHARED, PROT_EXEC, PROT_READ, PROT_WRITE } from '../../kernel/mm/mmap.ts';
import { TASK_SIZE } from '../../kernel/mm/mm_types.ts';
import { PAGE, boot, errno, expectClean, pfnAt, ranges, run, signalOf } from './util.ts';

const RW = PROT_READ | PROT_WRITE;
const ANON = MAP_PRIVATE | MAP_ANONYMOUS;
const A = 0x40000000;

describe('munmap argument checks', () => {
  it('EINVAL for an unaligned start, a zero length, or a range beyond TASK_SIZE', () => {
    const k = boot();
    run(k, function* (u) {
      yield* u.mmap(A, 4 * PAGE, RW, ANON | MAP_FIXED);
      expect(yield* errno(u.munmap(A + 1, PAGE))).toBe('EINVAL');
      expect(yield* errno(u.munmap(A, 0))).toBe('EINVAL');
      expect(yield* errno(u.munmap(TASK_SIZE + PAGE, PAGE))).toBe('EINVAL');
      expect(yield* errno(u.munmap(TASK_SIZE - PAGE, 2 * PAGE))).toBe('EINVAL');
      expect(yield* errno(u.munmap(A, TASK_SIZE))).toBe('EINVAL');
      expect(ranges(u.task.mm!)).toEqual([[A, A + 4 * PAGE]]);
      // The last page below TASK_SIZE, and TASK_SIZE itself with a zero-size remainder, are fine.
      expect(yield* errno(u.munmap(TASK_SIZE - PAGE, PAGE))).toBe('OK');
      expect(yield* errno(u.munmap(TASK_SIZE, 0))).toBe('EINVAL');
    });
    expectClean(k);
  });

  it('succeeds on a range with no mapping, changing nothing', () => {
    const k = boot();
    run(k, function* (u) {
      yield* u.mmap(A, PAGE, RW, ANON | MAP_FIXED);
      expect(yield* errno(u.munmap(A + 16 * PAGE, 8 * PAGE))).toBe('OK');
      expect(yield* errno(u.munmap(0x10000, PAGE))).toBe('OK');
      expect(ranges(u.task.mm!)).toEqual([[A, A + PAGE]]);
    });
    expectClean(k);
  });
});

describe('munmap of parts of VMAs', () => {
  it('unmaps the head, the tail and the middle, keeping the data of what remains', () => {
    const k = boot();
    run(k, function* (u) {
      const mm = u.task.mm!;
      yield* u.mmap(A, 10 * PAGE, RW, ANON | MAP_FIXED);
      for (let i = 0; i < 10; i++) yield* u.store32(A + i * PAGE, 1000 + i);
      yield* u.munmap(A, PAGE); // head
      yield* u.munmap(A + 9 * PAGE, PAGE); // tail
      yield* u.munmap(A + 4 * PAGE, 2 * PAGE - 100); // middle; the length rounds up to 2 pages
      expect(ranges(mm)).toEqual([[A + PAGE, A + 4 * PAGE], [A + 6 * PAGE, A + 9 * PAGE]]);
      for (const i of [1, 2, 3, 6, 7, 8]) expect(yield* u.load32(A + i * PAGE)).toBe(1000 + i);
      for (const i of [0, 4, 5, 9]) {
        const e = yield* signalOf(u.load32(A + i * PAGE + 8));
        expect([e.signame, e.codename, e.addr]).toEqual(['SIGSEGV', 'SEGV_MAPERR', A + i * PAGE + 8]);
      }
      // The pieces keep their page offsets (anonymous: address >> 12).
      expect(mm.vmas().map((v) => v.vm_pgoff)).toEqual([(A + PAGE) / PAGE, (A + 6 * PAGE) / PAGE]);
      expect(mm.rss.anon).toBe(6);
    });
    expectClean(k);
  });

  it('removes every VMA a range spans, across holes and different protections', () => {
    const k = boot();
    const before = k.pages.usedFrames;
    run(k, function* (u) {
      const mm = u.task.mm!;
      yield* u.mmap(A, 2 * PAGE, RW, ANON | MAP_FIXED);
      yield* u.mmap(A + 3 * PAGE, 2 * PAGE, PROT_READ, ANON | MAP_FIXED);
      yield* u.mmap(A + 5 * PAGE, 2 * PAGE, PROT_READ | PROT_EXEC, ANON | MAP_FIXED);
      yield* u.store32(A, 1);
      yield* u.store32(A + PAGE, 2);
      yield* u.load32(A + 3 * PAGE);
      yield* u.load32(A + 6 * PAGE);
      expect(mm.map_count).toBe(3);
      yield* u.munmap(A + PAGE, 5 * PAGE);
      expect(ranges(mm)).toEqual([[A, A + PAGE], [A + 6 * PAGE, A + 7 * PAGE]]);
      expect(yield* u.load32(A)).toBe(1);
      expect(mm.rss.anon).toBe(1);
      yield* u.munmap(A, 7 * PAGE);
      expect(mm.map_count).toBe(0);
      expect(mm.rss.anon).toBe(0);
      // Every page table under the range went too (only the PGD is left).
      expect(mm.pgtables_bytes).toBe(PAGE);
    });
    expectClean(k);
    expect(k.pages.usedFrames).toBe(before);
  });

  it('frees pages and page tables as the last mapping of them goes', () => {
    const k = boot();
    run(k, function* (u) {
      const mm = u.task.mm!;
      const base = k.pages.usedFrames;
      const tables = mm.pgtables_bytes;
      yield* u.mmap(A, 8 * PAGE, RW, ANON | MAP_FIXED);
      for (let i = 0; i < 8; i++) yield* u.store32(A + i * PAGE, i);
      const pfn3 = pfnAt(k, mm, A + 3 * PAGE);
      expect(k.pages.refcount[pfn3]).toBe(1);
      // PUD, PMD and PTE tables plus 8 pages.
      expect(k.pages.usedFrames).toBe(base + 3 + 8);
      yield* u.munmap(A + 2 * PAGE, 4 * PAGE);
      expect(k.pages.usedFrames).toBe(base + 3 + 4);
      expect(k.pages.refcount[pfn3]).toBe(0);
      yield* u.munmap(A, 8 * PAGE);
      expect(k.pages.usedFrames).toBe(base);
      expect(mm.pgtables_bytes).toBe(tables);
    });
    expectClean(k);
  });

  it('shared anonymous memory: a part can go while the rest keeps the data; the object goes with the last mapping', () => {
    const k = boot();
    const before = k.pages.usedFrames;
    run(k, function* (u) {
      yield* u.mmap(A, 4 * PAGE, RW, MAP_SHARED | MAP_ANONYMOUS | MAP_FIXED);
      for (let i = 0; i < 4; i++) yield* u.store32(A + i * PAGE, 50 + i);
      yield* u.munmap(A + PAGE, PAGE);
      expect(yield* u.load32(A)).toBe(50);
      expect(yield* u.load32(A + 2 * PAGE)).toBe(52);
      expect(yield* u.load32(A + 3 * PAGE)).toBe(53);
      // Both pieces refer to the same object (pgoffs 0 and 2).
      const mm = u.task.mm!;
      const [v1, v2] = mm.vmas();
      expect(v1!.vm_file).toBe(v2!.vm_file);
      expect([v1!.vm_pgoff, v2!.vm_pgoff]).toEqual([0, 2]);
      yield* u.munmap(A, 4 * PAGE);
    });
    expectClean(k);
    expect(k.pages.usedFrames).toBe(before);
  });

  it('refuses with ENOMEM to split a VMA in the middle when map_count is at the limit; the head or tail is fine', () => {
    const k = boot();
    run(k, function* (u) {
      const mm = u.task.mm!;
      yield* u.mmap(A, 4 * PAGE, RW, ANON | MAP_FIXED);
      yield* u.mmap(A + 8 * PAGE, 4 * PAGE, PROT_READ, ANON | MAP_FIXED);
      k.vmaOps.max_map_count = mm.map_count;
      expect(yield* errno(u.munmap(A + PAGE, PAGE))).toBe('ENOMEM');
      expect(ranges(mm)).toEqual([[A, A + 4 * PAGE], [A + 8 * PAGE, A + 12 * PAGE]]);
      expect(yield* errno(u.munmap(A, PAGE))).toBe('OK');
      expect(yield* errno(u.munmap(A + 11 * PAGE, PAGE))).toBe('OK');
      // A range from inside one VMA to inside the next splits two VMAs but adds none.
      expect(yield* errno(u.munmap(A + 3 * PAGE, 6 * PAGE))).toBe('OK');
      expect(ranges(mm)).toEqual([[A + PAGE, A + 3 * PAGE], [A + 9 * PAGE, A + 11 * PAGE]]);
    });
    expectClean(k);
  });
});

describe('munmap and the TLB', () => {
  it('a thread on another CPU that cached the translation faults (SEGV_MAPERR) afterwards; the freed frame is never touched', () => {
    const k = boot();
    const before = k.pages.usedFrames;
    const seen: string[] = [];
    run(k, function* (u) {
      const a = yield* u.mmap(A, PAGE, RW, ANON | MAP_FIXED);
      const flag = yield* u.mmap(A + 16 * PAGE, PAGE, RW, ANON | MAP_FIXED);
      yield* u.store32(a, 77);
      yield* u.clone(
        function* (t) {
          // Fill this CPU's TLB with the translation, then tell the main thread.
          seen.push(`read ${yield* t.load32(a)} on cpu ${t.task.cpu}`);
          yield* t.store32(flag, 1);
          while ((yield* t.load32(flag)) !== 2) yield* t.sleep(1000);
          const e = yield* signalOf(t.load32(a));
          seen.push(`${e.signame} ${e.codename}`);
          yield* t.store32(flag, 3);
        },
        { cpu: 1 },
      );
      expect(u.task.cpu).toBe(0);
      while ((yield* u.load32(flag)) !== 1) yield* u.sleep(1000);
      yield* u.munmap(a, PAGE);
      yield* u.store32(flag, 2);
      while ((yield* u.load32(flag)) !== 3) yield* u.sleep(1000);
    });
    expect(seen).toEqual(['read 77 on cpu 1', 'SIGSEGV SEGV_MAPERR']);
    expectClean(k);
    expect(k.pages.usedFrames).toBe(before);
  });
});
