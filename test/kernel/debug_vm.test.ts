// The invariant checker: quiet on healthy systems, loud on each planted inconsistency.
import { describe, expect, it } from 'vitest';
import { Kernel } from '../../kernel/kernel.ts';
import { MAP_ANONYMOUS, MAP_HUGETLB, MAP_PRIVATE, MAP_SHARED, PROT_READ, PROT_WRITE } from '../../kernel/mm/mmap.ts';
import { check_vm_invariants, liveMms } from '../../kernel/mm/debug_vm.ts';
import type { User } from '../../kernel/uapi.ts';
import { _PAGE_RW, ptePfn } from '../../kernel/arch/x86/pgtable.ts';
import { tlbEntries } from '../../hw/inspect.ts';
import { folio_remove_rmap_pte } from '../../kernel/mm/rmap.ts';

/** A process with private, shared and hugetlb memory and a forked child that has exited. */
function healthySystem(): { k: Kernel; stop: () => void } {
  const k = new Kernel({ cpus: 2, memoryBytes: 64 << 20 });
  let release = false;
  k.spawn(function* main(u: User) {
    const a = yield* u.mmap(0, 16 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
    for (let i = 0; i < 16; i++) yield* u.store32(a + i * 4096, i);
    yield* u.load32(a + 4 * 4096); // a read of a written page
    const s = yield* u.mmap(0, 4 * 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS);
    yield* u.store32(s, 7);
    const h = yield* u.mmap(0, 2 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB);
    yield* u.store32(h, 1);
    const r = yield* u.mmap(0, 4 * 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS);
    yield* u.load32(r); // zero page
    const child = yield* u.fork(function* (c: User) {
      yield* c.store32(a, 99); // COW break
      yield* c.load32(s);
    });
    yield* u.wait(child);
    while (!release) yield* u.sleep(100_000);
  });
  k.run({ untilCycles: 20_000_000 });
  return { k, stop: () => { release = true; k.run(); } };
}

describe('check_vm_invariants', () => {
  it('finds nothing wrong in a healthy system and accounts every mapping', () => {
    const { k, stop } = healthySystem();
    const r = check_vm_invariants(k);
    expect(r.problems).toEqual([]);
    expect(r.mms).toBe(1);
    expect(r.leaves).toBe(16 + 1 + 1 + 1); // private, shared, hugetlb, zero page
    stop();
    expect(check_vm_invariants(k).problems).toEqual([]);
    expect(liveMms(k)).toEqual([]);
    expect(k.reports.reports.map((x) => x.title)).toEqual([]);
  });

  const plants: [string, (k: Kernel) => void, RegExp][] = [
    ['a raised mapcount', (k) => { const pfn = someAnonPfn(k); k.pages.mapcount[pfn]!++; }, /mapcount 2 but 1 page-table entries/],
    ['a leaked reference', (k) => { const pfn = someAnonPfn(k); k.pages.refcount[pfn]!++; }, /refcount 2 but 1 mappings/],
    ['a wrong RSS counter', (k) => { liveMms(k)[0]!.rss.anon++; }, /rss anon counter/],
    ['a writable PTE in a read-only VMA', (k) => { const [, ptep] = leafIn(k, PROT_READ); k.pt.set_bits(ptep, _PAGE_RW); }, /writable entry .* without VM_WRITE/],
    ['a VMA shrunk under its PTEs', (k) => { const mm = liveMms(k)[0]!; const v = mm.vmas().find((x) => x.pages === 16)!; const old = v.pages; v.vm_end -= 4096; mm.treeRekey(v, old); }, /outside every VMA/],
    ['a mapped frame on the free list', (k) => { const pfn = someAnonPfn(k); k.pages.mapcount[pfn] = 0; k.pages.refcount[pfn] = 1; k.pages.putPage(pfn, 'test'); }, /maps free frame|free but refcount/],
    ['VM_MIXEDMAP with VM_PFNMAP', (k) => { liveMms(k)[0]!.vmas()[0]!.vm_flags |= 0x10000400; }, /VM_MIXEDMAP and VM_PFNMAP both set/],
    ['a page-table page counted twice', (k) => { liveMms(k)[0]!.pgtables_bytes += 4096; }, /pgtables_bytes/],
  ];
  plants.push(['a stale gap augmentation in the VMA tree', (k) => { liveMms(k)[0]!.mm_mt.root!.aug += 4096; }, /VMA tree broken: stale augmented value/]);
  plants.push(['a VMA the tree cannot find', (k) => { const v = liveMms(k)[0]!.vmas()[0]!; v.vm_start -= 4096; v.gapBefore -= 4096; }, /vma_lookup does not find it/]);
  for (const [what, plant, expected] of plants) {
    it(`detects ${what}`, () => {
      const { k } = healthySystem();
      expect(check_vm_invariants(k).ok).toBe(true);
      plant(k);
      const r = check_vm_invariants(k);
      expect(r.ok).toBe(false);
      expect(r.problems.join('\n')).toMatch(expected);
    });
  }
});

describe('check_vm_invariants: TLBs against freed frames', () => {
  /**
   * Free a user page behind the kernel's back: clear its PTE and drop the references with the
   * books kept right, but without any TLB flush (what a driver that zaps by hand would do).
   * Returns the CPU and va of a TLB entry that still names the frame.
   */
  /** A process that writes 16 private pages and then sleeps, its translations still cached. */
  function cachedSystem(): Kernel {
    const k = new Kernel({ cpus: 2, memoryBytes: 64 << 20 });
    k.spawn(function* main(u: User) {
      const a = yield* u.mmap(0, 16 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
      for (let i = 0; i < 16; i++) yield* u.store32(a + i * 4096, i);
      for (;;) yield* u.sleep(1_000_000);
    });
    k.run({ untilCycles: 5_000_000 });
    return k;
  }

  function freeWithoutFlush(k: Kernel): { cpu: number; va: bigint; pfn: number } {
    const mm = liveMms(k)[0]!;
    for (const cpu of k.machine.cpus) {
      for (const e of tlbEntries(cpu)) {
        if (e.global || e.pageSize !== 4096 || e.va >= 0x800000000000n) continue;
        const va = Number(e.va);
        const v = mm.vma_lookup(va);
        if (!v || v.pages !== 16) continue;
        const ptep = k.pt.pte_offset(mm, va);
        const pfn = ptePfn(k.pt.lo(ptep), k.pt.hi(ptep));
        if (BigInt(pfn) !== e.frame) continue;
        k.pt.get_and_clear(ptep);
        mm.rss.anon--;
        folio_remove_rmap_pte(k, pfn);
        k.pages.putPage(pfn, 'test: freed without a flush');
        return { cpu: cpu.index, va: e.va, pfn };
      }
    }
    throw new Error('no TLB entry of the private mapping found');
  }

  it('finds a cached translation to a frame freed without a flush, and only that', () => {
    const k = cachedSystem();
    expect(check_vm_invariants(k).problems).toEqual([]);
    const { cpu, va, pfn } = freeWithoutFlush(k);
    const r = check_vm_invariants(k);
    expect(r.problems.length).toBeGreaterThan(0);
    for (const p of r.problems) expect(p).toMatch(new RegExp(`^cpu ${cpu}: \\S+ TLB entry 0x${va.toString(16)} .* still translates to free frame 0x${pfn.toString(16)} with no flush pending$`));
    expect(check_vm_invariants(k, { tlb: false }).problems).toEqual([]);
  });

  it('does not count an entry whose ASID slot has a flush pending, nor one that was flushed', () => {
    const k = cachedSystem();
    const { cpu } = freeWithoutFlush(k);
    const mm = liveMms(k)[0]!;
    // A flush requested (tlb_gen bumped) that this CPU has not run yet: the slot is flushed
    // before the mm runs there again, so its entries cannot be used.
    const st = k.tlb.cpuState[cpu]!;
    expect(st.loaded_mm === mm && !st.is_lazy).toBe(false); // the process sleeps: the CPU is lazy
    mm.tlb_gen++;
    expect(check_vm_invariants(k).problems).toEqual([]);
    mm.tlb_gen--;
    expect(check_vm_invariants(k).ok).toBe(false);
    k.machine.cpu(cpu).flushEverything();
    expect(check_vm_invariants(k).problems).toEqual([]);
  });

  it('catches munmap with the TLB flush skipped: stale translations to freed pages and tables', () => {
    const k = new Kernel({ cpus: 2, memoryBytes: 64 << 20 });
    let during: string[] = [];
    let clean: string[] = [];
    k.spawn(function* main(u: User) {
      const a = yield* u.mmap(0, 16 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
      for (let i = 0; i < 16; i++) yield* u.store32(a + i * 4096, i);
      clean = check_vm_invariants(k).problems;
      k.tlb.skipFlush = () => true; // the planted bug
      yield* u.munmap(a, 16 * 4096);
      k.tlb.skipFlush = null;
      during = check_vm_invariants(k, { limit: 100 }).problems; // still running on this CPU
    });
    k.run();
    expect(clean).toEqual([]);
    const vas = new Set(during.filter((p) => /TLB entry .* still translates to free frame/.test(p)).map((p) => /TLB entry (0x[0-9a-f]+)/.exec(p)![1]));
    expect(vas.size).toBe(16);
    expect(during.some((p) => /paging-structure cache entry .* still points to freed page-table page/.test(p))).toBe(true);
    expect(during.every((p) => /TLB entry|paging-structure cache entry/.test(p))).toBe(true);
  });
});

function someAnonPfn(k: Kernel): number {
  const mm = liveMms(k)[0]!;
  const v = mm.vmas().find((x) => x.pages === 16)!;
  const ptep = k.pt.pte_offset(mm, v.vm_start + 4096);
  return ptePfn(k.pt.lo(ptep), k.pt.hi(ptep));
}

function leafIn(k: Kernel, prot: number): [number, number] {
  const mm = liveMms(k)[0]!;
  const v = mm.vmas().find((x) => (x.vm_flags & 7) === prot)!;
  return [v.vm_start, k.pt.pte_offset(mm, v.vm_start)];
}

describe('checking mode (KernelOptions.debugVm): the audit after every engine step', () => {
  /**
   * Two CPUs: a process writes pages, forks a child that breaks copy-on-write while a thread on
   * the other CPU reads half of the pages, then unmaps them all (a TLB shootdown to that CPU).
   */
  function busy(debugVm: boolean, plant?: (k: Kernel, pfn: number) => void): Kernel {
    const k = new Kernel({ cpus: 2, memoryBytes: 64 << 20, seed: 3, debugVm });
    k.spawn(function* main(u: User) {
      const a = yield* u.mmap(0, 32 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
      for (let i = 0; i < 32; i++) yield* u.store32(a + i * 4096, i);
      let done = false;
      yield* u.clone(function* (w: User) {
        for (let r = 0; r < 3; r++) for (let i = 16; i < 32; i++) yield* w.load32(a + i * 4096);
        done = true;
      }, { cpu: 1 });
      const child = yield* u.fork(function* (c: User) {
        for (let i = 0; i < 8; i++) yield* c.store32(a + i * 4096, 100 + i);
      });
      yield* u.wait(child);
      if (plant) {
        const pfn = yield* u.call('plant', function* (kk) {
          const mm = liveMms(kk)[0]!;
          const ptep = kk.pt.pte_offset(mm, a + 20 * 4096);
          return ptePfn(kk.pt.lo(ptep), kk.pt.hi(ptep));
        });
        plant(k, pfn);
        yield* u.sleep(200_000); // several engine steps with the planted fault in place
        k.pages.refcount[pfn]!--;
      }
      while (!done) yield* u.sleep(50_000);
      yield* u.munmap(a, 32 * 4096);
    });
    k.run({ maxSteps: 2_000_000 });
    return k;
  }

  it('files nothing on a healthy run, which ends byte for byte as it does without checking', () => {
    const checked = busy(true);
    const plain = busy(false);
    expect(checked.reports.reports.map((r) => r.title)).toEqual([]);
    expect(checked.liveTasks()).toBe(0);
    expect(checked.engine.steps).toBe(plain.engine.steps);
    expect(Buffer.compare(new Uint8Array(checked.machine.sab), new Uint8Array(plain.machine.sab))).toBe(0);
  });

  it('files a violation once, at the step that made it, naming the problem; without checking nothing is filed', () => {
    const leak = (k: Kernel, pfn: number) => {
      k.pages.refcount[pfn]!++;
    };
    const checked = busy(true, leak);
    const bugs = checked.reports.reports.filter((r) => r.data.check === 'debug_vm');
    expect(bugs).toHaveLength(1);
    expect(bugs[0]!.kind).toBe('BUG');
    expect(bugs[0]!.title).toMatch(/^BUG: mm invariant violated after engine step \d+ \(CPU \d\): .*refcount 2 but 1 mappings/);
    expect(checked.reports.reports).toHaveLength(1);
    expect(busy(false, leak).reports.reports).toEqual([]);
  });

  it('is refused when not a boolean', () => {
    expect(() => new Kernel({ debugVm: 'yes' as unknown as boolean })).toThrow(/kernel option debugVm must be a boolean, got string/);
  });
});
