/**
 * The PFN side of driver page insertion and the VMA-flag contracts around it: remap_pfn_range
 * (its errno cases, the flags it sets, the whole-VMA rule of COW mappings, the BUG over a present
 * PTE), vmf_insert_pfn's BUG_ONs, vmf_insert_mixed's special PTEs, and the flag invariants
 * checked wherever flags change (VM_MIXEDMAP with VM_PFNMAP is a BUG, VM_WRITE without
 * VM_MAYWRITE a WARN).
 */

import { describe, expect, it } from 'vitest';
import type { Kernel } from '../../kernel/kernel.ts';
import type { KGen } from '../../kernel/sched/core.ts';
import type { User } from '../../kernel/uapi.ts';
import { EINVAL, SyscallError } from '../../kernel/errno.ts';
import { MAP_PRIVATE, MAP_SHARED, PROT_READ, PROT_WRITE } from '../../kernel/mm/mmap.ts';
import { remap_pfn_range, vm_normal_page, vmf_insert_mixed, vmf_insert_pfn } from '../../kernel/mm/memory.ts';
import { GFP_KERNEL, __GFP_ZERO } from '../../kernel/mm/page_alloc.ts';
import { VM_DONTDUMP, VM_DONTEXPAND, VM_FAULT_NOPAGE, VM_FAULT_SIGBUS, VM_IO, VM_MAYWRITE, VM_MIXEDMAP, VM_PFNMAP, VM_REMAP_FLAGS, type VmArea } from '../../kernel/mm/mm_types.ts';
import { _PAGE_PRESENT, _PAGE_SPECIAL, ptePfn } from '../../kernel/arch/x86/pgtable.ts';
import { boot, expectClean, fakeDevice, pteAt, PAGE } from './util.ts';

/**
 * Map /dev/pfn (LEN bytes with `prot` and `flags`), running `inMmap` inside ->mmap, then `after`
 * in the process. Returns the kernel, the VMA, the mmap result (address or errno name) and
 * whether the process finished (a BUG kills it).
 */
function mapDev(opts: {
  len?: number;
  prot?: number;
  flags?: number;
  inMmap?: (k: Kernel, vma: VmArea) => number | KGen<number>;
  after?: (k: Kernel, u: User, base: number, vma: VmArea) => KGen<void>;
}) {
  const k = boot({ memoryBytes: 32 << 20 });
  let vma: VmArea | null = null;
  fakeDevice(k, 'pfn', {
    mmap: (v) => {
      vma = v;
      return opts.inMmap ? opts.inMmap(k, v) : 0;
    },
  });
  let result: number | string = 'not run';
  let finished = false;
  k.spawn(function* (u: User) {
    const fd = yield* u.open('/dev/pfn');
    try {
      result = yield* u.mmap(0, opts.len ?? 4 * PAGE, opts.prot ?? PROT_READ, opts.flags ?? MAP_SHARED, fd, 0);
    } catch (e) {
      if (!(e instanceof SyscallError)) throw e;
      result = e.code;
    }
    if (typeof result === 'number' && opts.after) yield* opts.after(k, u, result, vma!);
    finished = true;
  });
  k.run({ maxSteps: 1_000_000 });
  return { k, vma: vma as VmArea | null, result, finished };
}

function frames(k: Kernel, n: number): number {
  // Physically contiguous: order-2 block for up to four pages.
  const order = Math.ceil(Math.log2(n));
  const pfn = k.pages.allocPages(GFP_KERNEL | __GFP_ZERO, order, 'pfn test');
  if (pfn < 0) throw new Error('out of memory');
  return pfn;
}

describe('remap_pfn_range', () => {
  it('maps special PTEs (bit 9) without references, sets VM_IO|VM_PFNMAP|VM_DONTEXPAND|VM_DONTDUMP, vm_normal_page finds no page', () => {
    let pfn = -1;
    let refs: number[] = [];
    const { k, vma, result, finished } = mapDev({
      inMmap: function* (k, v) {
        pfn = frames(k, 4);
        refs = [0, 1, 2, 3].map((i) => k.pages.refcount[k.pages.head(pfn + i)]!);
        return yield* remap_pfn_range(k, v, v.vm_start, pfn, 4 * PAGE);
      },
      after: function* (k, u, b, v) {
        for (let i = 0; i < 4; i++) {
          const [lo, hi] = pteAt(k, u.task.mm!, b + i * PAGE)!;
          expect(lo & (_PAGE_PRESENT | _PAGE_SPECIAL)).toBe(_PAGE_PRESENT | _PAGE_SPECIAL);
          expect(ptePfn(lo, hi)).toBe(pfn + i);
          expect(vm_normal_page(k, v, b + i * PAGE, lo, hi)).toBe(-1);
        }
        expect([0, 1, 2, 3].map((i) => k.pages.refcount[k.pages.head(pfn + i)]!)).toEqual(refs);
        expect(u.task.mm!.rss.file).toBe(0);
        k.machine.phys.u8[(pfn + 2) * PAGE + 5] = 0x77;
        expect(yield* u.load8(b + 2 * PAGE + 5)).toBe(0x77);
      },
    });
    expect(finished).toBe(true);
    expect(typeof result).toBe('number');
    expect(vma!.vm_flags & VM_REMAP_FLAGS).toBe(VM_IO | VM_PFNMAP | VM_DONTEXPAND | VM_DONTDUMP);
    expect(vma!.vm_flags & VM_MIXEDMAP).toBe(0);
    expectClean(k);
  });

  const einval: [string, (v: VmArea) => [number, number]][] = [
    ['a size that is not a page multiple', (v) => [v.vm_start, PAGE + 1]],
    ['an unaligned address', (v) => [v.vm_start + 8, PAGE]],
    ['a zero size', (v) => [v.vm_start, 0]],
    ['a range past vm_end', (v) => [v.vm_start + 3 * PAGE, 2 * PAGE]],
    ['a range below vm_start', (v) => [v.vm_start - PAGE, 2 * PAGE]],
  ];
  for (const [what, range] of einval) {
    it(`-EINVAL for ${what}: no flag set, no PTE`, () => {
      let r = 0;
      let flags = 0;
      const { k, vma } = mapDev({
        inMmap: function* (k, v) {
          const [a, n] = range(v);
          r = yield* remap_pfn_range(k, v, a, frames(k, 4), n);
          flags = v.vm_flags;
          return 0;
        },
      });
      expect(r).toBe(-EINVAL);
      expect(flags & VM_PFNMAP).toBe(0);
      let present = 0;
      k.pt.forEachLeaf(vma!.vm_mm, vma!.vm_start, vma!.vm_end, () => present++);
      expect(present).toBe(0);
    });
  }

  it('a private (COW) mapping must be remapped whole: part of it is -EINVAL, the whole sets vm_pgoff to the pfn', () => {
    let part = 0;
    let whole = -1;
    let pfn = -1;
    const { vma } = mapDev({
      flags: MAP_PRIVATE,
      inMmap: function* (k, v) {
        pfn = frames(k, 4);
        part = yield* remap_pfn_range(k, v, v.vm_start, pfn, 2 * PAGE);
        whole = yield* remap_pfn_range(k, v, v.vm_start, pfn, 4 * PAGE);
        return 0;
      },
    });
    expect([part, whole]).toEqual([-EINVAL, 0]);
    expect(vma!.vm_pgoff).toBe(pfn);
  });

  it('remapping over a present PTE is the BUG of remap_pte_range (the mmap fails, the task dies)', () => {
    const { k, finished } = mapDev({
      inMmap: function* (k, v) {
        const pfn = frames(k, 4);
        yield* remap_pfn_range(k, v, v.vm_start, pfn, 2 * PAGE);
        return yield* remap_pfn_range(k, v, v.vm_start + PAGE, pfn, 2 * PAGE);
      },
    });
    expect(finished).toBe(false);
    expect(k.reports.reports.map((r) => r.title)).toEqual(['kernel BUG at mm/memory.c: remap_pte_range']);
  });
});

describe('vmf_insert_pfn and vmf_insert_mixed', () => {
  /** Run `call` from the device's ->fault on a read of the first page; the VMA gets `flags` in ->mmap. */
  function faultWith(flags: number, call: (k: Kernel, v: VmArea, addr: number) => number, mapFlags = MAP_SHARED) {
    const k = boot({ memoryBytes: 32 << 20 });
    const pfn = k.pages.allocPages(GFP_KERNEL | __GFP_ZERO, 0, 'pfn test');
    let ret: number | null = null;
    fakeDevice(k, 'pf', {
      mmap: (v) => {
        v.vm_flags |= flags;
        return 0;
      },
      ops: {
        fault: (vmf) => {
          ret = call(k, vmf.vma, vmf.address);
          return ret;
        },
      },
    });
    let finished = false;
    k.spawn(function* (u: User) {
      const fd = yield* u.open('/dev/pf');
      const base = yield* u.mmap(0, 4 * PAGE, PROT_READ, mapFlags, fd, 0);
      yield* u.load8(base);
      finished = true;
    });
    k.run({ maxSteps: 1_000_000 });
    return { k, pfn, ret, finished, bugs: k.reports.reports.filter((r) => r.kind === 'BUG').map((r) => r.text) };
  }

  it('on a VM_PFNMAP VMA: a special PTE, no reference, VM_FAULT_NOPAGE', () => {
    let pfn = -1;
    const r = faultWith(VM_PFNMAP | VM_IO, (k, v, a) => vmf_insert_pfn(k, v, a, (pfn = k.pages.allocPages(GFP_KERNEL | __GFP_ZERO, 0, 'x'))));
    expect(r.finished).toBe(true);
    expect(r.ret).toBe(VM_FAULT_NOPAGE);
    expect(r.k.pages.refcount[pfn]).toBe(1);
    expect(r.bugs).toEqual([]);
  });

  const bugs: [string, number, number, RegExp][] = [
    ['neither VM_PFNMAP nor VM_MIXEDMAP', 0, MAP_SHARED, /!\(vma->vm_flags & \(VM_PFNMAP\|VM_MIXEDMAP\)\)/],
    ['VM_PFNMAP on a COW mapping', VM_PFNMAP, MAP_PRIVATE, /VM_PFNMAP on a COW mapping/],
  ];
  for (const [what, flags, mapFlags, text] of bugs) {
    it(`BUG for ${what}: the faulting task dies, no PTE`, () => {
      const r = faultWith(flags, (k, v, a) => vmf_insert_pfn(k, v, a, r0(k)), mapFlags);
      expect(r.finished).toBe(false);
      expect(r.bugs).toHaveLength(1);
      expect(r.bugs[0]).toMatch(text);
    });
  }

  it('BUG for a VM_MIXEDMAP VMA and a pfn with a struct page (vmf_insert_page is the call for that)', () => {
    const r = faultWith(VM_MIXEDMAP, (k, v, a) => vmf_insert_pfn(k, v, a, r0(k)));
    expect(r.finished).toBe(false);
    expect(r.bugs[0]).toMatch(/VM_MIXEDMAP && pfn_valid/);
  });

  it('vmf_insert_mixed on a VM_MIXEDMAP VMA installs a special PTE even for a page with a struct page (x86 has pte_special), without a reference', () => {
    let pfn = -1;
    const r = faultWith(VM_MIXEDMAP, (k, v, a) => vmf_insert_mixed(k, v, a, (pfn = r0(k))));
    expect(r.finished).toBe(true);
    expect(r.ret).toBe(VM_FAULT_NOPAGE);
    expect(r.k.pages.refcount[pfn]).toBe(1);
    expect(r.k.pages.mapcount[pfn]).toBe(0);
  });

  it('vmf_insert_mixed without VM_MIXEDMAP is VM_FAULT_SIGBUS (the read gets SIGBUS)', () => {
    const r = faultWith(VM_PFNMAP, (k, v, a) => vmf_insert_mixed(k, v, a, r0(k)));
    expect(r.ret).toBe(VM_FAULT_SIGBUS);
    expect(r.finished).toBe(false);
    expect(r.k.reports.reports.some((x) => x.kind === 'signal' && /SIGBUS/.test(x.text + x.title))).toBe(true);
  });
});

/** A fresh zeroed kernel page (refcount 1). */
function r0(k: Kernel): number {
  return k.pages.allocPages(GFP_KERNEL | __GFP_ZERO, 0, 'pfn test');
}

describe('VMA flag contracts, checked wherever flags change', () => {
  it('VM_MIXEDMAP together with VM_PFNMAP is a BUG (VM_BUG_ON_VMA), here set by ->mmap', () => {
    const { k, finished } = mapDev({
      inMmap: (_k, v) => {
        v.vm_flags |= VM_MIXEDMAP | VM_PFNMAP;
        return 0;
      },
    });
    expect(finished).toBe(false);
    const r = k.reports.reports.find((x) => x.kind === 'BUG')!;
    expect(r.title).toBe('kernel BUG: VM_MIXEDMAP and VM_PFNMAP both set');
    expect(r.data).toMatchObject({ contract: 'mixedmap-pfnmap', caller: 'mmap_region' });
  });

  it('VM_WRITE without VM_MAYWRITE is a WARN (a driver that cleared VM_MAYWRITE on a writable mapping instead of refusing it)', () => {
    const { k, finished } = mapDev({
      prot: PROT_READ | PROT_WRITE,
      inMmap: (_k, v) => {
        v.vm_flags &= ~VM_MAYWRITE;
        return 0;
      },
    });
    expect(finished).toBe(true);
    const w = k.reports.reports.filter((x) => x.kind === 'WARN');
    expect(w.map((x) => x.title)).toEqual(['WARNING: VM_WRITE without VM_MAYWRITE']);
    expect(w[0]!.data).toMatchObject({ contract: 'write-maywrite' });
  });

  it('vm_flags_set on a published VMA without the mmap write lock is a lockdep report', () => {
    const { k } = mapDev({
      after: function* (_k, u, _b, v) {
        yield* u.call('flags_test', function* (k) {
          yield* k.locks.mmap_read_lock(v.vm_mm, 'flags_test');
          k.vmaOps.vm_flags_set(v, VM_DONTDUMP, 'flags_test');
          k.locks.mmap_read_unlock(v.vm_mm);
        });
      },
    });
    expect(k.reports.reports.some((r) => r.kind === 'lockdep' && /vm_flags_set <- flags_test/.test(r.text))).toBe(true);
  });
});
