/**
 * vm_insert_pages (a batch of vm_insert_page with Linux's "pages not mapped" count and partial
 * success left in place), zap_vma_ptes (only on VM_PFNMAP VMAs, only inside the VMA) and
 * vm_normal_page (no struct page behind a special PTE).
 */

import { describe, expect, it } from 'vitest';
import { Kernel } from '../../kernel/kernel.ts';
import type { User } from '../../kernel/uapi.ts';
import { File, Inode, type FileOperations } from '../../kernel/fs/file.ts';
import { MAP_SHARED, PROT_READ } from '../../kernel/mm/mmap.ts';
import { vm_insert_pages, vm_normal_page, zap_vma_ptes } from '../../kernel/mm/memory.ts';
import { GFP_KERNEL, __GFP_ZERO } from '../../kernel/mm/page_alloc.ts';
import { VM_MIXEDMAP, type VmArea } from '../../kernel/mm/mm_types.ts';
import { EBUSY, EFAULT } from '../../kernel/errno.ts';
import { check_vm_invariants } from '../../kernel/mm/debug_vm.ts';
import { fakeDevice } from './fake-devices.ts';

const P = 4096;

function presentCount(k: Kernel, vma: VmArea): number {
  let n = 0;
  k.pt.forEachLeaf(vma.vm_mm, vma.vm_start, vma.vm_end, () => n++);
  return n;
}

describe('vm_insert_pages', () => {
  it('maps a batch, takes a reference per page, and reports how many were not mapped', () => {
    const k = new Kernel({ cpus: 1, memoryBytes: 16 << 20 });
    const pfns: number[] = [];
    for (let i = 0; i < 4; i++) pfns.push(k.pages.allocPages(GFP_KERNEL | __GFP_ZERO, 0, 'test'));
    const results: [number, number][] = [];
    let refsAfter: number[] = [];
    let vmaSeen: VmArea | null = null;
    const fops: FileOperations = {
      name: 'batch',
      *mmap(_f: File, vma: VmArea) {
        vma.vm_flags |= VM_MIXEDMAP;
        vmaSeen = vma;
        results.push(vm_insert_pages(k, vma, vma.vm_start + 6 * P, pfns)); // runs past the end
        results.push(vm_insert_pages(k, vma, vma.vm_start, pfns.slice(0, 2)));
        results.push(vm_insert_pages(k, vma, vma.vm_start + P, pfns.slice(1, 4))); // page 1 is taken
        refsAfter = pfns.map((p) => k.pages.refcount[p]!);
        return 0;
      },
    };
    k.devices.set('/dev/batch', { open: () => new File(k, new Inode(k, 'chr', [10, 61]), fops, '/dev/batch') });
    let mapped = 0;
    k.spawn(function* user(u: User) {
      const fd = yield* u.open('/dev/batch');
      yield* u.mmap(0, 8 * P, PROT_READ, MAP_SHARED, fd, 0);
      mapped = presentCount(k, vmaSeen!);
    });
    expect(k.run().reason).toBe('done');
    expect(results).toEqual([
      [-EFAULT, 4],
      [0, 0],
      [-EBUSY, 3],
    ]);
    expect(mapped).toBe(2);
    // One reference each for the two mapped pages (plus the allocation's own).
    expect(refsAfter).toEqual([2, 2, 1, 1]);
    expect(k.reports.reports).toEqual([]);
  });
});

describe('zap_vma_ptes and vm_normal_page', () => {
  it('zaps special PTEs of a VM_PFNMAP VMA, ignores other VMAs and ranges outside, and finds no struct page behind them', () => {
    const k = new Kernel({ cpus: 1, memoryBytes: 16 << 20 });
    const dev = fakeDevice(k, '/dev/zvp', 4, 'pfnmap');
    const mixed = fakeDevice(k, '/dev/zvm', 4, 'insert-in-mmap');
    const counts: number[] = [];
    let normal: number[] = [];
    k.spawn(function* user(u: User) {
      const fd = yield* u.open('/dev/zvp');
      yield* u.mmap(0, 4 * P, PROT_READ, MAP_SHARED, fd, 0);
      const fd2 = yield* u.open('/dev/zvm');
      yield* u.mmap(0, 4 * P, PROT_READ, MAP_SHARED, fd2, 0);
      const v = dev.vmas[0]!;
      const m = mixed.vmas[0]!;
      yield* u.call('zap', function* (kk) {
        yield* kk.locks.mmap_read_lock(v.vm_mm, 'test');
        normal = [];
        kk.pt.forEachLeaf(v.vm_mm, v.vm_start, v.vm_end, (addr, ptep) => normal.push(vm_normal_page(kk, v, addr, kk.pt.lo(ptep), kk.pt.hi(ptep))));
        counts.push(presentCount(kk, v), presentCount(kk, m));
        yield* zap_vma_ptes(kk, v, v.vm_start + P, 2 * P);
        counts.push(presentCount(kk, v));
        yield* zap_vma_ptes(kk, v, v.vm_start + 2 * P, 4 * P); // runs past the VMA: ignored
        counts.push(presentCount(kk, v));
        yield* zap_vma_ptes(kk, m, m.vm_start, 4 * P); // not VM_PFNMAP: ignored
        counts.push(presentCount(kk, m));
        kk.locks.mmap_read_unlock(v.vm_mm);
        return 0;
      });
    });
    expect(k.run().reason).toBe('done');
    expect(counts).toEqual([4, 4, 2, 2, 4]);
    expect(normal).toEqual([-1, -1, -1, -1]);
    expect(k.reports.reports.map((r) => r.title)).toEqual([]);
    expect(check_vm_invariants(k).problems).toEqual([]);
  });
});
