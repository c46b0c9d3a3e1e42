/**
 * The page allocator's deferred poisoning (kernel/mm/page_alloc.ts, deferPoison): a freed frame
 * must read as poison to every reader, whenever the poison is actually written. The CPU path (a
 * stale TLB entry reading a freed frame) is covered in tlb_shootdown.test.ts; here the kernel's
 * own readers: an allocation without __GFP_ZERO, a kernel access KASAN reports, and the parallel
 * engine, whose workers read frames with no kernel hook in between.
 */

import { describe, expect, it } from 'vitest';
import { Kernel } from '../../kernel/kernel.ts';
import { PAGE_POISON, __GFP_ZERO } from '../../kernel/mm/page_alloc.ts';
import { kasanCheck } from '../../kernel/mm/kasan.ts';

function kernel(): Kernel {
  return new Kernel({ cpus: 1, memoryBytes: 16 << 20 });
}

/** Allocate a frame, fill it with `byte`, and free it; returns its pfn. */
function usedAndFreed(k: Kernel, byte: number): number {
  const pfn = k.pages.allocPages(0, 0, 'test');
  k.machine.phys.u8.fill(byte, pfn * 4096, pfn * 4096 + 4096);
  k.pages.putPage(pfn, 'test');
  expect(k.pages.isFree(pfn)).toBe(true);
  return pfn;
}

const frame = (k: Kernel, pfn: number): Uint8Array => k.machine.phys.u8.subarray(pfn * 4096, pfn * 4096 + 4096);
const allPoison = (b: Uint8Array): boolean => b.every((x) => x === PAGE_POISON);

describe('deferred poisoning of freed frames', () => {
  it('is on by default, and an allocation without __GFP_ZERO hands out the poison', () => {
    const k = kernel();
    expect(k.pages.deferPoison).toBe(true);
    const pfn = usedAndFreed(k, 0x5a);
    // The allocator is LIFO: the same frame comes back.
    expect(k.pages.allocPages(0, 0, 'test again')).toBe(pfn);
    expect(allPoison(frame(k, pfn))).toBe(true);
  });

  it('an allocation with __GFP_ZERO hands out zeroes', () => {
    const k = kernel();
    const pfn = usedAndFreed(k, 0x5a);
    expect(k.pages.allocPages(__GFP_ZERO, 0, 'test again')).toBe(pfn);
    expect(frame(k, pfn).every((x) => x === 0)).toBe(true);
  });

  it('a kernel access to a freed frame is reported and then reads the poison', () => {
    const k = kernel();
    const pfn = usedAndFreed(k, 0x5a);
    expect(kasanCheck(k, pfn * 4096 + 100, 8, false, 'test_read')).toBe(false);
    expect(k.reports.count('KASAN')).toBe(1);
    expect(allPoison(frame(k, pfn))).toBe(true);
  });

  it('reads the same as eager poisoning: the same frames hold the same bytes once read', () => {
    const lazy = kernel();
    const eager = kernel();
    eager.pages.deferPoison = false;
    const a = usedAndFreed(lazy, 0x11);
    const b = usedAndFreed(eager, 0x11);
    expect(a).toBe(b);
    expect(allPoison(frame(eager, b))).toBe(true);
    kasanCheck(lazy, a * 4096, 4096, false, 'test_read');
    kasanCheck(eager, b * 4096, 4096, false, 'test_read');
    expect(frame(lazy, a)).toEqual(frame(eager, b));
  });

  it('the parallel engine writes every deferred poison before its workers run, and defers again after', () => {
    const k = kernel();
    // The process first: spawning allocates (and would reuse the frames freed below).
    k.spawn(function* idle() {});
    const pfns = [usedAndFreed(k, 0x22), usedAndFreed(k, 0x33)];
    expect(k.runParallel().reason).toBe('done');
    for (const pfn of pfns) expect(k.pages.isFree(pfn)).toBe(true);
    for (const pfn of pfns) expect(allPoison(frame(k, pfn))).toBe(true);
    expect(k.pages.deferPoison).toBe(true);
  });
});
