/**
 * drivers/android/binder/eager_deferred.ts — the `eager-deferred` design (Alice Ryhl's variant
 * discussed in the November 2024 review): the sender allocates the buffer's pages as in `eager`
 * and the kernel copies the payload through them, but no PTE is installed then. The receiver
 * installs the PTEs itself, in binder_thread_read just before the buffer's address is returned
 * to it: in its own mm (current->mm, so no mmget_not_zero), under its own per-VMA or mmap read
 * lock, with the same identity check and vm_insert_page. Fewer threads contend on the
 * receiver's mm locks; the locking complexity is otherwise the same.
 *
 * A page keeps its PTE while it sits on the LRU (as in `eager`); `userMapped` remembers which
 * pages have one, so reclaim zaps only those. The `vm_ops` identity variant is checked on the C
 * path here (there is no Rust counterpart of this design).
 */

import type { KGen } from '../../../kernel/sched/core.ts';
import { EBUSY } from '../../../kernel/errno.ts';
import { registerDesign, type LruStatus } from './page_mapping.ts';
import { PAGE_SIZE, type BinderAlloc, type BinderBuffer } from './binder_alloc.ts';
import { EagerMappingBase, freePageC, insertC } from './eager_common.ts';
import { traceLruPage } from './binder_trace.ts';

export interface DeferredCounters {
  /** PTEs installed by receivers. */
  receiverInserts: number;
  /** Deliveries whose pages could not all be mapped (the receiver will fault on them). */
  deliverFailures: number;
}

interface DeferredState {
  userMapped: Uint8Array;
  counters: DeferredCounters;
}

function state(alloc: BinderAlloc): DeferredState {
  const s = alloc.designState as { deferred?: DeferredState } | null;
  if (s && s.deferred && s.deferred.userMapped.length === alloc.pages.length) return s.deferred;
  const d: DeferredState = { userMapped: new Uint8Array(alloc.pages.length), counters: s?.deferred?.counters ?? { receiverInserts: 0, deliverFailures: 0 } };
  alloc.designState = { ...(s ?? {}), deferred: d };
  return d;
}

export function deferredCounters(alloc: BinderAlloc): DeferredCounters {
  return state(alloc).counters;
}

class EagerDeferredMapping extends EagerMappingBase {
  readonly design = 'eager-deferred' as const;
  /** In the receiver, just before the buffer's address is returned to it: receiverInstall. */
  override beforeDeliver = (alloc: BinderAlloc, buffer: BinderBuffer): KGen<number> => this.receiverInstall(alloc, buffer);

  /** The sender only gives the page a frame; the PTE waits for the receiver. */
  *installSinglePage(alloc: BinderAlloc, index: number, _addr: number): KGen<number> {
    const pfn = alloc.allocFrame('binder_page_alloc');
    if (pfn < 0) return -12;
    alloc.setInstalledPage(index, pfn);
    return 0;
  }

  /** In the receiver: map every page of the buffer that has no PTE yet. */
  private *receiverInstall(alloc: BinderAlloc, buffer: BinderBuffer): KGen<number> {
    const k = alloc.k;
    const mm = k.current?.mm;
    const st = state(alloc);
    if (!mm || mm !== alloc.mm) return 0;
    const size = alloc.bufferSize(buffer);
    const first = Math.floor((buffer.user_data - alloc.vm_start) / PAGE_SIZE);
    const last = Math.floor((buffer.user_data + size - 1 - alloc.vm_start) / PAGE_SIZE);
    let err = 0;
    for (let i = first; i <= last && i < alloc.pages.length; i++) {
      const pfn = alloc.pages[i]!;
      if (pfn < 0 || st.userMapped[i]) continue;
      const r = yield* insertC(k, alloc, mm, alloc.pageAddr(i), pfn, this.identity, this.bugs, 'vma-lock');
      if (r === 0 || r === -EBUSY) {
        st.userMapped[i] = 1;
        if (r === 0) st.counters.receiverInserts++;
      } else err = r;
    }
    if (err) st.counters.deliverFailures++;
    return err;
  }

  *freePage(alloc: BinderAlloc, index: number): KGen<LruStatus> {
    const k = alloc.k;
    const st = state(alloc);
    if (st.userMapped[index]) {
      const r = yield* freePageC(k, alloc, index, this.identity, this.bugs, 'vma-lock');
      if (r === 'removed') st.userMapped[index] = 0;
      return r;
    }
    // Never mapped into the receiver: only the kernel's reference to drop.
    if (!alloc.mutex.trylock('binder_alloc_free_page')) return 'skip';
    try {
      traceLruPage(k, 'binder_unmap_kernel_start', alloc.pid, index);
      const pfn = alloc.pages[index]!;
      alloc.pages[index] = -1;
      traceLruPage(k, 'binder_unmap_kernel_end', alloc.pid, index);
      alloc.isolate(index);
      alloc.stats.pagesReclaimed++;
      k.pages.putPage(pfn, 'binder_free_page <- binder_alloc_free_page');
      return 'removed';
    } finally {
      alloc.mutex.unlock();
    }
  }
}

registerDesign('eager-deferred', (opts) => new EagerDeferredMapping(opts));
