// mprotect(2): argument checks in do_mprotect_pkey's order, PROT_GROWSDOWN/PROT_GROWSUP, holes
// (ENOMEM, after changing what came before), EACCES when a requested permission's VM_MAY* bit is
// clear, splitting at each boundary and merging back, PROT_NONE, copy-on-write pages staying
// read-only after a write upgrade, execute permission, the map_count limit, the TLB flush a
// narrowing change needs on other CPUs, and what is flushed at all: only entries whose change
// x86's pte_needs_flush flags, per VMA piece from the first to the last of them (nothing over a
// range never faulted in), hugetlb entries in a gather of their own, and a private VM_LOCKED VMA
// made writable being populated at once.
import { describe, expect, it } from 'vitest';
import {
  MAP_ANONYMOUS, MAP_FIXED, MAP_GROWSDOWN, MAP_HUGETLB, MAP_LOCKED, MAP_PRIVATE, MAP_SHARED, PROT_EXEC, PROT_GROWSDOWN, PROT_GROWSUP, PROT_NONE, PROT_READ, PROT_SEM,
  PROT_WRITE,
} from '../../kernel/mm/mmap.ts';
import { TASK_SIZE, VM_MAYEXEC, VM_MAYWRITE } from '../../kernel/mm/mm_types.ts';
import { _PAGE_DIRTY, _PAGE_PRESENT, _PAGE_RW } from '../../kernel/arch/x86/pgtable.ts';
import { TLB_FLUSH_ALL, type TlbStats } from '../../kernel/arch/x86/tlb.ts';
import type { Kernel } from '../../kernel/kernel.ts';
import type { KGen } from '../../kernel/sched/core.ts';
import type { User } from '../../kernel/uapi.ts';
import { MB2, PAGE, boot, errno, expectClean, fakeDevice, pfnAt, pteAt, ranges, run, signalOf, vmaList } from './util.ts';

const RW = PROT_READ | PROT_WRITE;
const ANON = MAP_PRIVATE | MAP_ANONYMOUS;
const A = 0x40000000;

describe('mprotect argument checks', () => {
  it('EINVAL for an unaligned start, unknown prot bits, or both GROWS flags; a zero length is a no-op', () => {
    const k = boot();
    run(k, function* (u) {
      yield* u.mmap(A, 2 * PAGE, RW, ANON | MAP_FIXED);
      expect(yield* errno(u.mprotect(A + 8, PAGE, PROT_READ))).toBe('EINVAL');
      expect(yield* errno(u.mprotect(A, PAGE, PROT_READ | 0x10))).toBe('EINVAL');
      expect(yield* errno(u.mprotect(A, PAGE, PROT_READ | PROT_GROWSDOWN | PROT_GROWSUP))).toBe('EINVAL');
      // "can't be both" is checked before anything else, even a zero length.
      expect(yield* errno(u.mprotect(A, 0, PROT_READ | PROT_GROWSDOWN | PROT_GROWSUP))).toBe('EINVAL');
      // A zero length returns 0 before the range or prot is looked at.
      expect(yield* errno(u.mprotect(0x7000000000, 0, PROT_READ))).toBe('OK');
      expect(yield* errno(u.mprotect(A, 0, 0x10))).toBe('OK');
      // PROT_SEM is accepted (and means nothing on x86).
      expect(yield* errno(u.mprotect(A, PAGE, PROT_READ | PROT_SEM))).toBe('OK');
      // Never faulted in (no anon_vma): turning read-only also drops VM_ACCOUNT.
      expect(vmaList(u.task.mm!)[0]![2]).toBe('rd mr mw me');
    });
    expectClean(k);
  });

  it('ENOMEM for a range starting in a hole, beyond TASK_SIZE, or running past the last VMA', () => {
    const k = boot();
    run(k, function* (u) {
      const mm = u.task.mm!;
      yield* u.mmap(A, 2 * PAGE, RW, ANON | MAP_FIXED);
      expect(yield* errno(u.mprotect(A - PAGE, 2 * PAGE, PROT_READ))).toBe('ENOMEM');
      expect(yield* errno(u.mprotect(TASK_SIZE, PAGE, PROT_READ))).toBe('ENOMEM');
      expect(yield* errno(u.mprotect(TASK_SIZE - PAGE, 4 * PAGE, PROT_READ))).toBe('ENOMEM');
      expect(vmaList(mm)).toEqual([[A, A + 2 * PAGE, 'rd wr mr mw me ac']]);
      // Past the end: the VMA part is changed, then ENOMEM.
      expect(yield* errno(u.mprotect(A + PAGE, 2 * PAGE, PROT_READ))).toBe('ENOMEM');
      expect(vmaList(mm)).toEqual([
        [A, A + PAGE, 'rd wr mr mw me ac'],
        [A + PAGE, A + 2 * PAGE, 'rd mr mw me'],
      ]);
    });
    expectClean(k);
  });

  it('a hole in the middle: VMAs before it are changed, the ones after are not, and the result is ENOMEM', () => {
    const k = boot();
    run(k, function* (u) {
      const mm = u.task.mm!;
      yield* u.mmap(A, 2 * PAGE, RW, ANON | MAP_FIXED);
      yield* u.mmap(A + 3 * PAGE, 2 * PAGE, RW, ANON | MAP_FIXED);
      expect(yield* errno(u.mprotect(A, 5 * PAGE, PROT_READ))).toBe('ENOMEM');
      expect(vmaList(mm)).toEqual([
        [A, A + 2 * PAGE, 'rd mr mw me'],
        [A + 3 * PAGE, A + 5 * PAGE, 'rd wr mr mw me ac'],
      ]);
    });
    expectClean(k);
  });

  it('PROT_GROWSUP is EINVAL on x86 (no VM_GROWSUP); PROT_GROWSDOWN needs a VM_GROWSDOWN VMA and extends the range down to its start', () => {
    const k = boot();
    run(k, function* (u) {
      const mm = u.task.mm!;
      yield* u.mmap(A, 4 * PAGE, RW, ANON | MAP_FIXED);
      expect(yield* errno(u.mprotect(A, PAGE, PROT_READ | PROT_GROWSUP))).toBe('EINVAL');
      expect(yield* errno(u.mprotect(A + PAGE, PAGE, PROT_READ | PROT_GROWSDOWN))).toBe('EINVAL');
      expect(vmaList(mm)).toEqual([[A, A + 4 * PAGE, 'rd wr mr mw me ac']]);
      const g = 0x50000000;
      yield* u.mmap(g, 4 * PAGE, RW, ANON | MAP_FIXED | MAP_GROWSDOWN);
      yield* u.mprotect(g + 2 * PAGE, PAGE, PROT_READ | PROT_GROWSDOWN);
      expect(vmaList(mm).slice(1)).toEqual([
        [g, g + 3 * PAGE, 'rd mr mw me gd'],
        [g + 3 * PAGE, g + 4 * PAGE, 'rd wr mr mw me gd ac'],
      ]);
    });
    expectClean(k);
  });
});

describe('mprotect and VM_MAY*', () => {
  it('EACCES when a driver cleared VM_MAYWRITE (or VM_MAYEXEC); what the VM_MAY* bits allow still works', () => {
    const k = boot();
    const dev = fakeDevice(k, 'ro', {
      mmap(vma) {
        vma.vm_flags &= ~(VM_MAYWRITE | VM_MAYEXEC);
        return 0;
      },
    });
    run(k, function* (u) {
      const mm = u.task.mm!;
      const fd = yield* u.open(dev.path);
      const a = yield* u.mmap(0, 2 * PAGE, PROT_READ, MAP_SHARED, fd);
      expect(yield* errno(u.mprotect(a, PAGE, RW))).toBe('EACCES');
      expect(yield* errno(u.mprotect(a, PAGE, PROT_READ | PROT_EXEC))).toBe('EACCES');
      expect(yield* errno(u.mprotect(a, PAGE, PROT_NONE))).toBe('OK');
      expect(yield* errno(u.mprotect(a, PAGE, PROT_READ))).toBe('OK');
      expect(vmaList(mm).map((x) => x[2])).toEqual(['rd sh mr ms', 'rd sh mr ms']);
    });
    expectClean(k);
  });

  it('stops at the first VMA without the VM_MAY* bit: the VMAs before it keep the new protection', () => {
    const k = boot();
    const dev = fakeDevice(k, 'ro2', {
      mmap(vma) {
        vma.vm_flags &= ~VM_MAYWRITE;
        return 0;
      },
    });
    run(k, function* (u) {
      const mm = u.task.mm!;
      yield* u.mmap(A, PAGE, PROT_READ, ANON | MAP_FIXED);
      const fd = yield* u.open(dev.path);
      yield* u.mmap(A + PAGE, PAGE, PROT_READ, MAP_SHARED | MAP_FIXED, fd);
      yield* u.mmap(A + 2 * PAGE, PAGE, PROT_READ, ANON | MAP_FIXED);
      expect(yield* errno(u.mprotect(A, 3 * PAGE, RW))).toBe('EACCES');
      expect(vmaList(mm).map((x) => x[2])).toEqual(['rd wr mr mw me ac', 'rd sh mr me ms', 'rd mr mw me']);
    });
    expectClean(k);
  });
});

describe('mprotect splits and merges', () => {
  it('splits at each boundary (page offsets follow), refuses the write, and merges back into one VMA', () => {
    const k = boot();
    run(k, function* (u) {
      const mm = u.task.mm!;
      yield* u.mmap(A, 3 * PAGE, RW, ANON | MAP_FIXED);
      for (let i = 0; i < 3; i++) yield* u.store32(A + i * PAGE, 10 + i);
      const first = mm.vma_lookup(A)!;
      yield* u.mprotect(A + PAGE, PAGE, PROT_READ);
      expect(vmaList(mm)).toEqual([
        [A, A + PAGE, 'rd wr mr mw me ac'],
        [A + PAGE, A + 2 * PAGE, 'rd mr mw me ac'],
        [A + 2 * PAGE, A + 3 * PAGE, 'rd wr mr mw me ac'],
      ]);
      expect(mm.vmas().map((v) => v.vm_pgoff)).toEqual([A / PAGE, A / PAGE + 1, A / PAGE + 2]);
      // vma_modify keeps the original VMA object for the modified piece.
      expect(mm.vma_lookup(A + PAGE)).toBe(first);
      const e = yield* signalOf(u.store32(A + PAGE + 12, 0));
      expect([e.signame, e.codename, e.addr]).toEqual(['SIGSEGV', 'SEGV_ACCERR', A + PAGE + 12]);
      expect(yield* u.load32(A + PAGE)).toBe(11);
      yield* u.mprotect(A + PAGE, PAGE, RW);
      expect(ranges(mm)).toEqual([[A, A + 3 * PAGE]]);
      yield* u.store32(A + PAGE, 21);
      for (let i = 0; i < 3; i++) expect(yield* u.load32(A + i * PAGE)).toBe(i === 1 ? 21 : 10 + i);
    });
    expectClean(k);
  });

  it('changing a whole run of VMAs to the protection of a neighbour merges them all', () => {
    const k = boot();
    run(k, function* (u) {
      const mm = u.task.mm!;
      yield* u.mmap(A, 6 * PAGE, RW, ANON | MAP_FIXED);
      yield* u.mprotect(A + PAGE, PAGE, PROT_READ);
      yield* u.mprotect(A + 3 * PAGE, PAGE, PROT_NONE);
      expect(mm.map_count).toBe(5);
      yield* u.mprotect(A + PAGE, 4 * PAGE, RW);
      expect(ranges(mm)).toEqual([[A, A + 6 * PAGE]]);
    });
    expectClean(k);
  });

  it('ENOMEM when a split would exceed max_map_count', () => {
    const k = boot();
    run(k, function* (u) {
      const mm = u.task.mm!;
      yield* u.mmap(A, 4 * PAGE, RW, ANON | MAP_FIXED);
      k.vmaOps.max_map_count = 2;
      yield* u.mprotect(A, PAGE, PROT_READ); // one split: 2 VMAs
      expect(yield* errno(u.mprotect(A + 2 * PAGE, PAGE, PROT_READ))).toBe('ENOMEM');
      expect(mm.map_count).toBe(2);
    });
    expectClean(k);
  });
});

describe('mprotect and the page tables', () => {
  it('PROT_NONE: every access is SEGV_ACCERR, the page stays mapped, and the data is back with PROT_READ', () => {
    const k = boot();
    run(k, function* (u) {
      const mm = u.task.mm!;
      yield* u.mmap(A, PAGE, RW, ANON | MAP_FIXED);
      yield* u.store32(A, 0x5a5a);
      const pfn = pfnAt(k, mm, A);
      yield* u.mprotect(A, PAGE, PROT_NONE);
      for (const g of [u.load32(A), u.store32(A, 1), u.touch(A, 'fetch')]) {
        const e = yield* signalOf(g);
        expect([e.signame, e.codename, e.addr]).toEqual(['SIGSEGV', 'SEGV_ACCERR', A]);
      }
      expect(mm.rss.anon).toBe(1);
      yield* u.mprotect(A, PAGE, PROT_READ);
      expect(yield* u.load32(A)).toBe(0x5a5a);
      expect(pfnAt(k, mm, A)).toBe(pfn);
    });
    expectClean(k);
  });

  it('PROT_EXEC: instruction fetches fault without it and succeed with it', () => {
    const k = boot();
    run(k, function* (u) {
      yield* u.mmap(A, PAGE, RW, ANON | MAP_FIXED);
      yield* u.store32(A, 0x90909090);
      const e = yield* signalOf(u.touch(A, 'fetch'));
      expect(e.codename).toBe('SEGV_ACCERR');
      yield* u.mprotect(A, PAGE, PROT_READ | PROT_EXEC);
      yield* u.touch(A, 'fetch');
      expect(vmaList(u.task.mm!)[0]![2]).toBe('rd ex mr mw me ac');
    });
    expectClean(k);
  });

  it('making a private page writable again keeps a copy-on-write page read-only, an exclusive one writable', () => {
    const k = boot();
    run(k, function* (u) {
      const mm = u.task.mm!;
      yield* u.mmap(A, 2 * PAGE, RW, ANON | MAP_FIXED);
      yield* u.store32(A, 1);
      yield* u.store32(A + PAGE, 2);
      const c2 = yield* u.fork(function* (c) {
        yield* c.sleep(2_000_000);
        expect(yield* c.load32(A)).toBe(1);
        expect(yield* c.load32(A + PAGE)).toBe(2);
      });
      // A is shared with c2 now; A+PAGE too. Write A+PAGE: copy for the parent, exclusive again.
      yield* u.store32(A + PAGE, 4);
      const shared = pfnAt(k, mm, A);
      expect(k.pages.mapcount[shared]).toBe(2);
      yield* u.mprotect(A, 2 * PAGE, PROT_READ);
      yield* u.mprotect(A, 2 * PAGE, RW);
      // can_change_pte_writable: only the exclusive anonymous page gets its write bit back.
      expect(pteAt(k, mm, A)![0] & _PAGE_RW).toBe(0);
      expect(pteAt(k, mm, A + PAGE)![0] & _PAGE_RW).toBe(_PAGE_RW);
      yield* u.store32(A, 9);
      expect(pfnAt(k, mm, A)).not.toBe(shared);
      expect(k.pages.mapcount[shared]).toBe(1);
      yield* u.wait(c2);
    });
    expectClean(k);
  });

  it('a narrowing change is flushed from the other CPUs: a thread that had a writable translation faults', () => {
    const k = boot();
    const seen: string[] = [];
    run(k, function* (u) {
      yield* u.mmap(A, PAGE, RW, ANON | MAP_FIXED);
      const flag = A + 16 * PAGE;
      yield* u.mmap(flag, PAGE, RW, ANON | MAP_FIXED);
      yield* u.store32(A, 1);
      yield* u.store32(flag, 0);
      yield* u.clone(
        function* (t) {
          yield* t.store32(A, 2); // a writable TLB entry on CPU 1
          yield* t.store32(flag, 1);
          while ((yield* t.load32(flag)) !== 2) yield* t.sleep(1000);
          const e = yield* signalOf(t.store32(A, 3));
          seen.push(`${e.signame} ${e.codename}`);
          yield* t.store32(flag, 3);
        },
        { cpu: 1 },
      );
      while ((yield* u.load32(flag)) !== 1) yield* u.sleep(1000);
      yield* u.mprotect(A, PAGE, PROT_READ);
      yield* u.store32(flag, 2);
      while ((yield* u.load32(flag)) !== 3) yield* u.sleep(1000);
      expect(yield* u.load32(A)).toBe(2);
    });
    expect(seen).toEqual(['SIGSEGV SEGV_ACCERR']);
    expectClean(k);
  });
});

// ------------------------------------------------------------------------------------------------

/** A flush_tlb_mm_range request: [start, end) (end Infinity = TLB_FLUSH_ALL), stride, freed_tables. */
type Flush = [number, number, number, boolean];

interface Observed {
  /** What flush_tlb_mm_range was asked for during `change`. */
  flushes: Flush[];
  /** TLB statistics moved during `change`. */
  stats: Partial<Record<keyof TlbStats, number>>;
  /** The tlb:tlb_flush and ipi:* events during `change`, as "cpu text". */
  events: string[];
}

/**
 * A process with a thread on CPU 1 that runs its mm throughout (it reads `base + p * PAGE` for each
 * p in `read`, then spins on a page of its own) while CPU 0 maps with `setup`, writes `write`
 * pages, and runs `change`; records what the change flushed.
 */
function observe(setup: (u: User) => KGen<number>, write: number[], read: number[], change: (u: User, base: number) => KGen<unknown>): { k: Kernel; o: Observed } {
  const k = boot({ trace: true });
  const o: Observed = { flushes: [], stats: {}, events: [] };
  let recording = false;
  const orig = k.tlb.flush_tlb_mm_range.bind(k.tlb);
  k.tlb.flush_tlb_mm_range = function* (mm, start, end, stride, freed, lazy) {
    if (recording) o.flushes.push([start, end, stride, freed]);
    yield* orig(mm, start, end, stride, freed, lazy);
  };
  const st = { ready: false, done: false };
  run(k, function* (u) {
    const base = yield* setup(u);
    const spin = yield* u.mmap(0, PAGE, PROT_READ | PROT_WRITE, ANON);
    yield* u.store32(spin, 0);
    for (const p of write) yield* u.store32(base + p * PAGE, p);
    yield* u.clone(function* (w: User) {
      for (const p of read) yield* w.load32(base + p * PAGE);
      st.ready = true;
      while (!st.done) yield* w.load32(spin);
    }, { cpu: 1 });
    while (!st.ready) yield* u.sleep(5_000);
    const s0 = { ...k.tlb.stats };
    const e0 = k.trace.events.length;
    recording = true;
    yield* change(u, base);
    recording = false;
    for (const key of Object.keys(s0) as (keyof TlbStats)[]) o.stats[key] = k.tlb.stats[key] - s0[key];
    o.events = k.trace.events.slice(e0).filter((e) => e.name === 'tlb:tlb_flush' || e.name.startsWith('ipi:')).map((e) => `${e.cpu} ${e.text}`);
    st.done = true;
  });
  return { k, o };
}

const anon16 = (u: User) => u.mmap(A, 16 * PAGE, RW, ANON | MAP_FIXED);

describe('what mprotect flushes (change_pte_range: tlb_flush_pte_range where pte_needs_flush, tlb_end_vma per VMA)', () => {
  it('over a range nothing was ever faulted into: no flush at all, no IPI, no tlb_flush event', () => {
    const { k, o } = observe(anon16, [], [], (u, a) => u.mprotect(a, 16 * PAGE, PROT_READ));
    expect(o.flushes).toEqual([]);
    expect(o.stats).toMatchObject({ flushes: 0, ipis: 0, invlpgs: 0 });
    expect(o.events).toEqual([]);
    expectClean(k);
  });

  it('over a partly populated range: one flush of the changed span only, on both CPUs', () => {
    const { k, o } = observe(anon16, [5, 6, 7, 8], [5, 6, 7, 8], (u, a) => u.mprotect(a, 16 * PAGE, PROT_READ));
    expect(o.flushes).toEqual([[A + 5 * PAGE, A + 9 * PAGE, 12, false]]);
    expect(o.stats).toMatchObject({ flushes: 1, ipis: 1, partialFlushes: 2, fullFlushes: 0, invlpgs: 8 });
    expect(o.events).toEqual(['0 cpu=1 callsite=smp_call_function_many_cond callback=generic_smp_call_function_single_interrupt', '0 pages:4 reason:local mm shootdown (3)', '1 pages:4 reason:remote shootdown (1)']);
    expectClean(k);
  });

  it('the span runs from the first to the last entry that needed it, holes included; each VMA piece is flushed on its own', () => {
    // Pages 1 and 14 of one VMA: 14 pages, still page by page (under the ceiling of 33), on
    // both CPUs.
    const one = observe(anon16, [1, 14], [], (u, a) => u.mprotect(a, 16 * PAGE, PROT_READ));
    expect(one.o.flushes).toEqual([[A + PAGE, A + 15 * PAGE, 12, false]]);
    expect(one.o.stats).toMatchObject({ flushes: 1, ipis: 1, invlpgs: 28 });
    expectClean(one.k);
    // Two VMAs (the second executable), a page written in each: two flushes, one per VMA.
    const two = observe(
      function* (u) {
        yield* u.mmap(A, 8 * PAGE, RW, ANON | MAP_FIXED);
        yield* u.mmap(A + 8 * PAGE, 8 * PAGE, RW | PROT_EXEC, ANON | MAP_FIXED);
        return A;
      },
      [3, 12],
      [],
      (u, a) => u.mprotect(a, 16 * PAGE, PROT_READ),
    );
    expect(two.o.flushes).toEqual([
      [A + 3 * PAGE, A + 4 * PAGE, 12, false],
      [A + 12 * PAGE, A + 13 * PAGE, 12, false],
    ]);
    expectClean(two.k);
  });

  it('a relaxing change is flushed too (x86: RW and NX are in flush_on_change); leaving PROT_NONE is not (the entry was not present)', () => {
    const k = boot();
    run(k, function* (u) {
      const mm = u.task.mm!;
      yield* u.mmap(A, 4 * PAGE, RW, ANON | MAP_FIXED);
      for (let i = 0; i < 4; i++) yield* u.store32(A + i * PAGE, i);
      const flushes = function* (prot: number) {
        const f0 = k.tlb.stats.flushes;
        yield* u.mprotect(A, 4 * PAGE, prot);
        return k.tlb.stats.flushes - f0;
      };
      expect(yield* flushes(PROT_READ)).toBe(1); // RW cleared
      expect(yield* flushes(RW)).toBe(1); // RW set again (exclusive pages)
      expect(pteAt(k, mm, A)![0] & _PAGE_RW).toBe(_PAGE_RW);
      expect(yield* flushes(RW | PROT_EXEC)).toBe(1); // NX cleared
      expect(yield* flushes(RW | PROT_EXEC)).toBe(0); // no change: no fixup at all
      expect(yield* flushes(PROT_NONE)).toBe(1); // PRESENT cleared in Linux (U/S here)
      expect(yield* flushes(RW)).toBe(0); // from PROT_NONE: pte_needs_flush is false
      for (let i = 0; i < 4; i++) expect(yield* u.load32(A + i * PAGE)).toBe(i);
      yield* u.store32(A, 7);
      expect(yield* u.load32(A)).toBe(7);
    });
    expectClean(k);
  });

  it('a hugetlb VMA: each present huge entry at 2 MiB stride in its own gather, then the whole mm, as mprotect\'s gather is in flight (mm_tlb_flush_nested)', () => {
    const huge = (u: User) => u.mmap(A, 2 * MB2, RW, ANON | MAP_HUGETLB | MAP_FIXED);
    const touched = observe(huge, [0], [0], (u, a) => u.mprotect(a, 2 * MB2, PROT_READ));
    expect(touched.o.flushes).toEqual([
      [A, A + MB2, 21, false],
      [0, TLB_FLUSH_ALL, 12, true],
    ]);
    expectClean(touched.k);
    const untouched = observe(huge, [], [], (u, a) => u.mprotect(a, 2 * MB2, PROT_READ));
    expect(untouched.o.flushes).toEqual([[0, TLB_FLUSH_ALL, 12, true]]);
    expectClean(untouched.k);
  });
});

describe('mprotect of a VM_LOCKED VMA', () => {
  it('a private locked VMA made writable is populated at once: copy-on-write is broken now, not on access', () => {
    const k = boot();
    run(k, function* (u) {
      const mm = u.task.mm!;
      const a = yield* u.mmap(0, 3 * PAGE, PROT_READ, ANON | MAP_LOCKED);
      for (let i = 0; i < 3; i++) expect(pfnAt(k, mm, a + i * PAGE)).toBe(k.pages.zeroPfn);
      expect(mm.rss.anon).toBe(0);
      yield* u.mprotect(a, 3 * PAGE, RW);
      expect(mm.rss.anon).toBe(3);
      for (let i = 0; i < 3; i++) {
        expect(pfnAt(k, mm, a + i * PAGE)).not.toBe(k.pages.zeroPfn);
        expect(pteAt(k, mm, a + i * PAGE)![0] & _PAGE_RW).toBe(_PAGE_RW);
      }
      // Not locked: the write faults come on access, as before.
      const b = yield* u.mmap(0, PAGE, PROT_READ, ANON);
      yield* u.load32(b);
      yield* u.mprotect(b, PAGE, RW);
      expect(pfnAt(k, mm, b)).toBe(k.pages.zeroPfn);
      expect(mm.rss.anon).toBe(3);
    });
    expectClean(k);
  });
});

describe('mprotect against concurrent Accessed/Dirty updates', () => {
  // On the parallel engine a CPU running user code on a worker can set D in an entry while the
  // kernel rewrites it. The kernel must not lose that bit: Linux takes the entry out with an
  // atomic exchange (ptep_modify_prot_start) and rewrites what it got. Here a simulated CPU sets
  // D (with the locked update the hardware uses) right after every plain kernel read of the
  // entry, i.e. in the window between a read and a later write; if the entry was no longer
  // present then, the CPU would have faulted instead and sets nothing.
  it('keeps a D bit the hardware set while the entry was being rewritten', () => {
    const k = boot();
    let ptep = -1;
    let hwSetD = 0;
    run(k, function* (u) {
      const mm = u.task.mm!;
      yield* u.mmap(A, 2 * PAGE, RW, ANON | MAP_FIXED);
      yield* u.store32(A, 1);
      ptep = k.pt.pte_offset(mm, A);
      // Clean the page (as writeback would): D clear, no TLB entry left with D.
      k.pt.clear_bits(ptep, _PAGE_DIRTY);
      k.machine.cpu(u.task.cpu).flushEverything();
      const plainLo = k.pt.lo.bind(k.pt);
      k.pt.lo = (p: number): number => {
        const v = plainLo(p);
        if (p === ptep && (v & _PAGE_PRESENT) !== 0) {
          k.pt.set_bits(p, _PAGE_DIRTY);
          hwSetD++;
        }
        return v;
      };
      try {
        yield* u.mprotect(A, 2 * PAGE, PROT_READ);
      } finally {
        k.pt.lo = plainLo;
      }
      // Checked before the process exits (exit unmaps everything).
      expect(hwSetD).toBeGreaterThan(0);
      const e = k.pt.lo(ptep);
      expect(e & _PAGE_PRESENT).toBe(_PAGE_PRESENT);
      expect(e & _PAGE_RW).toBe(0);
      expect(e & _PAGE_DIRTY).toBe(_PAGE_DIRTY);
    });
    expectClean(k);
  });
});
