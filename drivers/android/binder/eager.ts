/**
 * drivers/android/binder/eager.ts — the `eager` design: Linux since v6.14 ("binder: faster page
 * installations"). The sender installs each new page of the buffer into the receiver's mapping
 * right after allocating it: mmget_not_zero on the receiver's mm, the per-VMA read lock
 * (lock_vma_under_rcu) or, if that fails, mmap_read_lock + vma_lookup, the identity check, then
 * vm_insert_page (legal under a read lock because binder_mmap set VM_MIXEDMAP). Concurrent
 * installers of one page are resolved by the PTE: the loser gets EBUSY and adopts the winner's
 * page through get_user_pages_remote(FOLL_NOFAULT). The mm reference is dropped with
 * mmput_async. Reclaim (the shrinker) takes the VMA lock or the mmap read lock by trylock, the
 * allocator mutex by trylock, unpublishes the page, and zaps it with zap_page_range_single.
 *
 * The identity variant chooses the check: `mapped` (C binder), `none`, or `vm_ops` (Rust
 * binder's check_vma, through the typed Rust API; see eager_common.ts).
 */

import type { KGen } from '../../../kernel/sched/core.ts';
import { registerDesign, type LruStatus } from './page_mapping.ts';
import type { BinderAlloc } from './binder_alloc.ts';
import { EagerMappingBase, freePageC, freePageRust, installC, installRust } from './eager_common.ts';

class EagerMapping extends EagerMappingBase {
  readonly design = 'eager' as const;

  installSinglePage(alloc: BinderAlloc, index: number, addr: number): KGen<number> {
    if (this.identity === 'vm_ops') return installRust(alloc.k, alloc, index, addr, this.bugs);
    return installC(alloc.k, alloc, index, addr, this.identity, this.bugs, 'vma-lock');
  }

  freePage(alloc: BinderAlloc, index: number): KGen<LruStatus> {
    if (this.identity === 'vm_ops') return freePageRust(alloc.k, alloc, index, this.bugs);
    return freePageC(alloc.k, alloc, index, this.identity, this.bugs, 'vma-lock');
  }
}

registerDesign('eager', (opts) => new EagerMapping(opts));
