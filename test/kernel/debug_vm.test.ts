// The invariant checker: quiet on healthy systems, loud on each planted inconsistency.
import { describe, expect, it } from 'vitest';
import { Kernel } from '../../kernel/kernel.ts';
import { MAP_ANONYMOUS, MAP_HUGETLB, MAP_PRIVATE, MAP_SHARED, PROT_READ, PROT_WRITE } from '../../kernel/mm/mmap.ts';
import { check_vm_invariants, liveMms } from '../../kernel/mm/debug_vm.ts';
import type { User } from '../../kernel/uapi.ts';
import { _PAGE_RW, ptePfn } from '../../kernel/arch/x86/pgtable.ts';

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
