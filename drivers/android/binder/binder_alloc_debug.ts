/**
 * drivers/android/binder/binder_alloc_debug.ts — the binder part of the invariant checker: the
 * allocator's books against each other, against the global LRU and against the page tables.
 * kernel/mm/debug_vm.ts audits the memory-management state every driver shares (and counts the
 * allocator's page references through its PageRefHolder); this file audits what only binder
 * knows. Linux has no single equivalent: binder_alloc_selftest.c exercises the allocator's page
 * states, and the BUG_ONs of binder_alloc.c guard pieces of the same rules.
 *
 *   buffers   the address-ordered list covers the mapping from vm_start, contiguously, with
 *             consistent prev/next links; no two free buffers are adjacent (frees coalesce); the
 *             free tree holds exactly the free buffers and `allocated` exactly the used ones, by
 *             their address; free_async_space is half the mapping less the async buffers in use.
 *   pages     a page is ACTIVE (installed, not on the LRU) exactly when a used buffer covers part
 *             of it, on the LRU exactly when it is installed and no used buffer covers it, FREE
 *             (no frame) otherwise; an installed frame is allocated, owned by binder (PG_driver),
 *             and installed at one index only.
 *   PTEs      every present entry in a VMA of this allocator maps the frame binder has installed
 *             for that page — the page the VMA's vm_pgoff says it is (the fault designs look pages
 *             up by pgoff), or for the eager designs, which insert by address, the page at that
 *             address — never a frame binder no longer holds. eager-deferred: an entry exists only
 *             where the design remembers one (userMapped), or reclaim would not zap it.
 *             One exception, by design (found by the fuzzer, and true of Linux's C and Rust
 *             binder alike): the eager designs find the receiver's PTEs by address, so once user
 *             space has moved (a piece of) its binder mapping with mremap, reclaim frees a page
 *             without reaching the moved copy (binder_alloc_free_page finds no VMA at the old
 *             address and frees it anyway). The moved PTE keeps its own page reference, so the
 *             page stays allocated, holding only data that was sent to this process — a page
 *             binder forgot, not a use after free (the mm checker still requires every mapped
 *             frame to be allocated and referenced). The fault designs unmap through the file's
 *             address_space, which follows moved VMAs, so for them there is no exception.
 *   LRU       the global LRU holds as many entries as the live allocators have LRU pages (no
 *             entry for a released allocator or a page without a frame).
 *
 * Run it at quiescent points (no binder operation half done), as the fuzzer and tests do.
 */

import type { Kernel } from '../../../kernel/kernel.ts';
import { liveMms } from '../../../kernel/mm/debug_vm.ts';
import { PG_driver, PG_free } from '../../../kernel/mm/page_alloc.ts';
import { ptePfn } from '../../../kernel/arch/x86/pgtable.ts';
import { PAGE_SIZE, binderLru, type BinderAlloc } from './binder_alloc.ts';
import type { BinderDevice } from './binder.ts';

const PTR = 8;
const align = (n: number, a: number): number => Math.ceil(n / a) * a;

/** Problems found in one allocator (empty when consistent). */
export function binder_alloc_check(alloc: BinderAlloc, limit = 50): string[] {
  const out: string[] = [];
  const bad = (s: string): void => {
    if (out.length < limit) out.push(`binder_alloc of pid ${alloc.pid} (${alloc.mapping.design}): ${s}`);
  };
  const k = alloc.k;
  if (alloc.buffer_size === 0) {
    // Never mapped (or released before): nothing may be allocated or installed.
    if (alloc.allocated.size) bad(`${alloc.allocated.size} buffers allocated without a mapping`);
    for (let i = 0; i < alloc.pages.length; i++) if (alloc.pages[i]! >= 0) bad(`page ${i} installed without a mapping`);
    return out;
  }
  const end = alloc.vm_start + alloc.buffer_size;
  const npages = alloc.pages.length;
  if (npages !== alloc.buffer_size / PAGE_SIZE) bad(`${npages} page slots for a ${alloc.buffer_size}-byte mapping`);

  if (alloc.head === null) {
    // Released (binder_alloc_deferred_release): every page is gone.
    for (let i = 0; i < npages; i++) if (alloc.pages[i]! >= 0) bad(`page ${i} still installed after the release`);
    for (let i = 0; i < npages; i++) if (alloc.lru.has(alloc, i)) bad(`page ${i} still on the LRU after the release`);
    return out;
  }
  // ---- buffers ----
  const buffers = alloc.buffers();
  if (alloc.head.user_data !== alloc.vm_start) bad(`the first buffer starts at 0x${alloc.head.user_data.toString(16)}, not at vm_start 0x${alloc.vm_start.toString(16)}`);
  if (alloc.head.prev !== null) bad('the first buffer has a prev link');
  let freeCount = 0;
  let asyncUsed = 0;
  /** Per page: does a used buffer cover part of it? */
  const used = new Uint8Array(npages);
  for (let i = 0; i < buffers.length; i++) {
    const b = buffers[i]!;
    const at = `buffer ${b.debug_id} at +0x${(b.user_data - alloc.vm_start).toString(16)}`;
    const next = buffers[i + 1] ?? null;
    if (b.next !== next) bad(`${at}: next link broken`);
    if (next && next.prev !== b) bad(`${at}: the next buffer's prev link does not point back`);
    const bEnd = next ? next.user_data : end;
    if (b.user_data < alloc.vm_start || bEnd > end || bEnd <= b.user_data) bad(`${at}: extent [0x${b.user_data.toString(16)}, 0x${bEnd.toString(16)}) outside the mapping or empty`);
    if (b.free) {
      freeCount++;
      if (!b.freeNode) bad(`${at}: free but not in the free tree`);
      if (alloc.allocated.get(b.user_data) === b) bad(`${at}: free but in the allocated index`);
      if (next && next.free) bad(`${at}: two adjacent free buffers (not coalesced)`);
      if (b.allow_user_free) bad(`${at}: free but the receiver may still free it`);
    } else {
      if (b.freeNode) bad(`${at}: used but still in the free tree`);
      if (alloc.allocated.get(b.user_data) !== b) bad(`${at}: used but not in the allocated index`);
      const size = align(b.data_size, PTR) + align(b.offsets_size, PTR) + align(b.extra_buffers_size, PTR);
      if (size > bEnd - b.user_data) bad(`${at}: holds ${size} bytes in a ${bEnd - b.user_data}-byte extent`);
      if (b.async_transaction) asyncUsed += bEnd - b.user_data;
      const first = Math.floor((b.user_data - alloc.vm_start) / PAGE_SIZE);
      const last = Math.floor((bEnd - 1 - alloc.vm_start) / PAGE_SIZE);
      for (let p = Math.max(0, first); p <= last && p < npages; p++) used[p] = 1;
    }
  }
  if (alloc.freeTree.size !== freeCount) bad(`the free tree has ${alloc.freeTree.size} buffers, the list ${freeCount} free ones`);
  const tree = alloc.freeTree.validate();
  if (tree) bad(`free tree broken: ${tree}`);
  const usedCount = buffers.length - freeCount;
  if (alloc.allocated.size !== usedCount) bad(`the allocated index has ${alloc.allocated.size} buffers, the list ${usedCount} used ones`);
  if (alloc.free_async_space !== alloc.buffer_size / 2 - asyncUsed) bad(`free_async_space ${alloc.free_async_space}, expected ${alloc.buffer_size / 2 - asyncUsed} (half the mapping less ${asyncUsed} bytes of async buffers)`);

  // ---- pages ----
  const p = k.pages;
  const index = new Map<number, number>();
  for (let i = 0; i < npages; i++) {
    const pfn = alloc.pages[i]!;
    const onLru = alloc.lru.has(alloc, i);
    if (pfn < 0) {
      if (onLru) bad(`page ${i} is on the LRU without a frame`);
      if (used[i]) bad(`page ${i} is used by a buffer but has no frame`);
      continue;
    }
    if (pfn >= p.nframes) {
      bad(`page ${i}: frame 0x${pfn.toString(16)} beyond memory`);
      continue;
    }
    if (p.flags[pfn]! & PG_free) bad(`page ${i}: frame 0x${pfn.toString(16)} is free`);
    if (!(p.flags[pfn]! & PG_driver)) bad(`page ${i}: frame 0x${pfn.toString(16)} is not a driver page`);
    const dup = index.get(pfn);
    if (dup !== undefined) bad(`frame 0x${pfn.toString(16)} installed at pages ${dup} and ${i}`);
    index.set(pfn, i);
    if (used[i] && onLru) bad(`page ${i} is used by a buffer but on the LRU (reclaim could take it)`);
    if (!used[i] && !onLru) bad(`page ${i} is installed and unused but not on the LRU (never reclaimable)`);
  }

  // ---- PTEs ----
  const eager = alloc.mapping.design.startsWith('eager');
  const st = alloc.designState as { deferred?: { userMapped: Uint8Array } } | null;
  const userMapped = alloc.mapping.design === 'eager-deferred' ? st?.deferred?.userMapped ?? null : null;
  for (const mm of liveMms(k)) {
    for (const v of mm.vmas()) {
      if (v.vm_private_data !== alloc) continue;
      // Moved by mremap: no longer where the allocator's pages are (see the header).
      const moved = v.vm_start - v.vm_pgoff * PAGE_SIZE !== alloc.vm_start;
      k.pt.forEachLeaf(mm, v.vm_start, v.vm_end, (addr, ptep, level) => {
        const at = `PTE 0x${addr.toString(16)} in ${v}`;
        if (level !== 1) {
          bad(`${at}: a large leaf in a binder mapping`);
          return;
        }
        const pfn = ptePfn(k.pt.lo(ptep), k.pt.hi(ptep));
        if (eager && moved) return;
        const byPgoff = v.vm_pgoff + (addr - v.vm_start) / PAGE_SIZE;
        const byAddr = (addr - alloc.vm_start) / PAGE_SIZE;
        const ok = (i: number): boolean => i >= 0 && i < npages && alloc.pages[i] === pfn;
        if (!ok(byPgoff) && !(eager && ok(byAddr))) {
          const held = index.get(pfn);
          bad(`${at}: maps frame 0x${pfn.toString(16)}, ${held === undefined ? 'which binder does not hold' : `which binder holds as page ${held}, not page ${byPgoff}`}`);
        }
        if (userMapped && ok(byAddr) && !userMapped[byAddr]) bad(`${at}: page ${byAddr} is mapped but not marked userMapped (reclaim would not zap it)`);
      });
    }
  }
  return out;
}

/** Every allocator of the device, and the global LRU's size against them. */
export function binder_check_device(dev: BinderDevice, limit = 50): string[] {
  const out: string[] = [];
  let onLru = 0;
  for (const proc of dev.procs) {
    for (const s of binder_alloc_check(proc.alloc, limit - out.length)) out.push(s);
    for (let i = 0; i < proc.alloc.pages.length; i++) if (proc.alloc.lru.has(proc.alloc, i)) onLru++;
  }
  const lru = binderLru(dev.k);
  if (lru.count !== onLru && out.length < limit) out.push(`binder LRU: ${lru.count} entries but the live allocators have ${onLru} pages on it`);
  return out;
}

/** The check for a kernel whose binder devices are `devs` (for callers that have several). */
export function binder_check_all(k: Kernel, devs: readonly BinderDevice[]): string[] {
  const out: string[] = [];
  let onLru = 0;
  for (const dev of devs) {
    for (const proc of dev.procs) {
      out.push(...binder_alloc_check(proc.alloc));
      for (let i = 0; i < proc.alloc.pages.length; i++) if (proc.alloc.lru.has(proc.alloc, i)) onLru++;
    }
  }
  const lru = binderLru(k);
  if (lru.count !== onLru) out.push(`binder LRU: ${lru.count} entries but the live allocators have ${onLru} pages on it`);
  return out;
}
