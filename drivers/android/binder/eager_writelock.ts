/**
 * drivers/android/binder/eager_writelock.ts — the `eager-writelock` design: Linux v6.8 to v6.13.
 * Pages are installed outside the allocator lock as in `eager`, but each page takes the
 * receiver's mmap lock for write (mmget_not_zero, mmap_write_lock, re-check that no other thread
 * installed it meanwhile, vm_insert_page, unlock, mmput_async), so installers of one process
 * serialise on the receiver's mmap lock and every fault and mmap of the receiver waits for them.
 * Reclaim takes the mmap lock by read-trylock only (no per-VMA lock in that era).
 *
 * Deviation: v6.8–v6.13 used a pointer to the VMA cached at mmap time (alloc->vma, cleared in
 * ->close) instead of a lookup. mmulab looks the VMA up by address and applies the identity
 * variant, so the variants can be compared across all eager designs; with `mapped` this is
 * equivalent to the cached pointer (the pointer was non-NULL exactly while `mapped` is true, and
 * the write lock excludes ->close).
 */

import type { KGen } from '../../../kernel/sched/core.ts';
import { registerDesign, type LruStatus } from './page_mapping.ts';
import type { BinderAlloc } from './binder_alloc.ts';
import { EagerMappingBase, freePageC, freePageRust, installC } from './eager_common.ts';

class EagerWritelockMapping extends EagerMappingBase {
  readonly design = 'eager-writelock' as const;

  installSinglePage(alloc: BinderAlloc, index: number, addr: number): KGen<number> {
    // The typed Rust API has no mmap write lock; the vm_ops check is applied on the C path here.
    return installC(alloc.k, alloc, index, addr, this.identity, this.bugs, 'mmap-write');
  }

  freePage(alloc: BinderAlloc, index: number): KGen<LruStatus> {
    if (this.identity === 'vm_ops') return freePageRust(alloc.k, alloc, index, this.bugs);
    return freePageC(alloc.k, alloc, index, this.identity, this.bugs, 'mmap-trylock');
  }
}

registerDesign('eager-writelock', (opts) => new EagerWritelockMapping(opts));
