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
import type { VmArea } from '../../../kernel/mm/mm_types.ts';
import { VM_DONTCOPY, VM_MAYWRITE, VM_MIXEDMAP } from '../../../kernel/mm/mm_types.ts';
import type { File } from '../../../kernel/fs/file.ts';
import { BINDER_VM_OPS, nothingBeforeDeliver, registerDesign, type DesignOptions, type IdentityVariant, type LruStatus, type PageMapping, type PlantedBugs } from './page_mapping.ts';
import type { BinderAlloc } from './binder_alloc.ts';
import { dropMmHandle, freePageC, freePageRust, installC, installRust } from './eager_common.ts';

/** binder_mmap's flags for the eager designs: VM_DONTCOPY | VM_MIXEDMAP set, VM_MAYWRITE cleared. */
export function setupEagerVma(alloc: BinderAlloc, vma: VmArea): number {
  vma.vm_flags = ((vma.vm_flags | VM_DONTCOPY | VM_MIXEDMAP) & ~VM_MAYWRITE) >>> 0;
  vma.vm_ops = BINDER_VM_OPS;
  vma.vm_private_data = alloc;
  return 0;
}

class EagerMapping implements PageMapping {
  readonly design = 'eager' as const;
  readonly identity: IdentityVariant;
  private readonly bugs: PlantedBugs;

  constructor(opts: DesignOptions) {
    this.identity = opts.identity ?? 'mapped';
    this.bugs = opts.bugs ?? {};
  }

  setupVma(alloc: BinderAlloc, vma: VmArea, _file: File): number {
    return setupEagerVma(alloc, vma);
  }

  installSinglePage(alloc: BinderAlloc, index: number, addr: number): KGen<number> {
    if (this.identity === 'vm_ops') return installRust(alloc.k, alloc, index, addr, this.bugs);
    return installC(alloc.k, alloc, index, addr, this.identity, this.bugs, 'vma-lock');
  }

  beforeDeliver = nothingBeforeDeliver;

  freePage(alloc: BinderAlloc, index: number): KGen<LruStatus> {
    if (this.identity === 'vm_ops') return freePageRust(alloc.k, alloc, index, this.bugs);
    return freePageC(alloc.k, alloc, index, this.identity, this.bugs, 'vma-lock');
  }
  release(alloc: BinderAlloc): void {
    dropMmHandle(alloc);
  }
}

registerDesign('eager', (opts) => new EagerMapping(opts));
