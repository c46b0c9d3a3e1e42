/**
 * unmap_mapping_range / unmap_mapping_pages reach every VMA of every process that maps a range
 * of a file: in a forked child too, after the VMA was split by mprotect and after part of it was
 * moved by mremap; private COW copies go only with even_cows. Afterwards the driver's ->fault
 * maps the pages again on the next touch.
 */

import { describe, expect, it } from 'vitest';
import { Kernel } from '../../kernel/kernel.ts';
import type { User } from '../../kernel/uapi.ts';
import { MAP_PRIVATE, MAP_SHARED, PROT_READ, PROT_WRITE } from '../../kernel/mm/mmap.ts';
import { MREMAP_FIXED, MREMAP_MAYMOVE } from '../../kernel/mm/mremap.ts';
import { unmap_mapping_pages, unmap_mapping_range } from '../../kernel/mm/memory.ts';
import { check_vm_invariants } from '../../kernel/mm/debug_vm.ts';
import type { MmStruct } from '../../kernel/mm/mm_types.ts';
import { ptePfn } from '../../kernel/arch/x86/pgtable.ts';
import { fakeDevice } from './fake-devices.ts';

const P = 4096;

/** Present user PTEs of `mm` in [start, end): address → pfn. */
function present(k: Kernel, mm: MmStruct, start = 0, end = 2 ** 47): Map<number, number> {
  const out = new Map<number, number>();
  k.pt.forEachLeaf(mm, start, end, (addr, ptep) => out.set(addr, ptePfn(k.pt.lo(ptep), k.pt.hi(ptep))));
  return out;
}

describe('unmap_mapping_range', () => {
  it('removes a file range from a parent and its child, across a split and a moved VMA, and ->fault maps it again', () => {
    const k = new Kernel({ cpus: 2, memoryBytes: 32 << 20 });
    const dev = fakeDevice(k, '/dev/umr', 8, 'vmf_insert_page');
    for (let i = 0; i < 8; i++) dev.fill(i, 0x10 + i);
    const snap: Record<string, Map<number, number>> = {};
    let parentMm: MmStruct | null = null;
    let base = 0;
    let moved = 0;
    const readBack: number[] = [];
    k.spawn(function* parent(u: User) {
      const fd = yield* u.open('/dev/umr');
      base = yield* u.mmap(0, 8 * P, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
      parentMm = u.task.mm;
      for (let i = 0; i < 8; i++) yield* u.load8(base + i * P);
      // Split: pages 2–3 read-only. Move: pages 6–7 to a new address.
      yield* u.mprotect(base + 2 * P, 2 * P, PROT_READ);
      moved = yield* u.mremap(base + 6 * P, 2 * P, 2 * P, MREMAP_MAYMOVE | MREMAP_FIXED, base + 64 * P);
      let childMm: MmStruct | null = null;
      let go = false;
      let done = false;
      yield* u.fork(function* child(c: User) {
        childMm = c.task.mm;
        for (let i = 0; i < 6; i++) yield* c.load8(base + i * P);
        for (let i = 0; i < 2; i++) yield* c.load8(moved + i * P);
        while (!go) yield* c.sleep(10_000);
        done = true;
      });
      while (!childMm) yield* u.sleep(10_000);
      yield* u.sleep(200_000);
      snap.parentBefore = present(k, parentMm!);
      snap.childBefore = present(k, childMm);
      // Offsets 1..6 (pages 1, 2–3 of the split part, 4, 5 and the first moved page).
      yield* u.call('unmap', function* (kk) {
        yield* unmap_mapping_range(kk, dev.vmas[0]!.vm_file!.f_mapping, 1 * P, 6 * P, false);
        return 0;
      });
      snap.parentAfter = present(k, parentMm!);
      snap.childAfter = present(k, childMm);
      go = true;
      while (!done) yield* u.sleep(10_000);
      for (let i = 0; i < 6; i++) readBack.push(yield* u.load8(base + i * P));
      for (let i = 0; i < 2; i++) readBack.push(yield* u.load8(moved + i * P));
    });
    expect(k.run().reason).toBe('done');
    const expectPages = (m: Map<number, number>, addrs: number[]) => expect([...m.keys()].sort((a, b) => a - b)).toEqual(addrs.sort((a, b) => a - b));
    const all = [0, 1, 2, 3, 4, 5].map((i) => base + i * P).concat([moved, moved + P]);
    expectPages(snap.parentBefore!, all);
    expectPages(snap.childBefore!, all);
    // Offset 0 and the second moved page (offset 7) survive in both processes; 1..6 are gone.
    expectPages(snap.parentAfter!, [base, moved + P]);
    expectPages(snap.childAfter!, [base, moved + P]);
    expect(snap.parentAfter!.get(base)).toBe(dev.pages[0]);
    expect(snap.parentAfter!.get(moved + P)).toBe(dev.pages[7]);
    // ->fault maps the driver's pages again, with the driver's data.
    expect(readBack).toEqual([0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17]);
    expect(parentMm).not.toBeNull();
    expect(k.reports.reports.map((r) => r.title)).toEqual([]);
    expect(check_vm_invariants(k).problems).toEqual([]);
  });

  it('keeps private COW copies unless even_cows, and unmap_mapping_pages takes page offsets', () => {
    for (const even_cows of [false, true]) {
      const k = new Kernel({ cpus: 1, memoryBytes: 32 << 20 });
      const dev = fakeDevice(k, '/dev/umc', 4, 'return-page');
      for (let i = 0; i < 4; i++) dev.fill(i, 0x40 + i);
      let before: Map<number, number> | null = null;
      let after: Map<number, number> | null = null;
      let base = 0;
      const values: number[] = [];
      k.spawn(function* priv(u: User) {
        const fd = yield* u.open('/dev/umc');
        base = yield* u.mmap(0, 4 * P, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
        for (let i = 0; i < 4; i++) yield* u.load8(base + i * P);
        yield* u.store8(base + P, 0x99); // page 1 becomes a private anonymous copy
        before = present(k, u.task.mm!);
        yield* u.call('unmap', function* (kk) {
          yield* unmap_mapping_pages(kk, dev.vmas[0]!.vm_file!.f_mapping, 0, 4, even_cows);
          return 0;
        });
        after = present(k, u.task.mm!);
        for (let i = 0; i < 4; i++) values.push(yield* u.load8(base + i * P));
      });
      expect(k.run().reason).toBe('done');
      expect(before!.size).toBe(4);
      expect(before!.get(base + P)).not.toBe(dev.pages[1]);
      if (even_cows) {
        expect(after!.size).toBe(0);
        // The private copy is gone with even_cows: the file's page shows again.
        expect(values).toEqual([0x40, 0x41, 0x42, 0x43]);
      } else {
        expect([...after!.keys()]).toEqual([base + P]);
        expect(values).toEqual([0x40, 0x99, 0x42, 0x43]);
      }
      expect(k.reports.reports.map((r) => r.title)).toEqual([]);
      expect(check_vm_invariants(k).problems).toEqual([]);
    }
  });
});
