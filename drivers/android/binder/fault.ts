/**
 * drivers/android/binder/fault.ts — the `fault` design proposed in the November 2024 linux-mm
 * review: binder's pages reach user space through the VMA's ->fault handler, and reclaim
 * removes them through the binder file's own address_space.
 *
 *  - binder_open gives each open file its own anonymous inode and address_space (as
 *    anon_inode_getfile / DRM's per-file inode) and makes it the file's f_mapping, so the
 *    mapping's i_mmap tree lists exactly this file's VMAs, in every process, however they were
 *    split or moved.
 *  - Allocation (sender context) gives new pages a frame and publishes them in alloc.pages; the
 *    kernel copies the payload through them. No PTE is installed.
 *  - ->fault (receiver context, mmap read lock held) takes the allocator mutex, looks up
 *    pages[pgoff] and maps it with vmf_insert_page (VM_MIXEDMAP is set at mmap), or returns
 *    VM_FAULT_SIGBUS when there is no page. One extra minor fault per page the receiver touches
 *    after the page was installed or reclaimed.
 *  - Reclaim: (i) unpublish the page under the allocator mutex, (ii) unmap it from every VMA of
 *    the address_space, (iii) drop the reference. The fault handler holds the mutex across its
 *    lookup and insert, so no PTE to a page binder has forgotten survives.
 *  - The driver never takes an mm reference, the mmap lock or vma_lookup: no VMA identity can go
 *    wrong, and an impostor VMA at the old address is never touched.
 *
 * The shrinker's sleeping-lock problem: unmap_mapping_range takes i_mmap_rwsem, a sleeping lock,
 * and the shrinker callback runs with the LRU spinlock held (and may be invoked from reclaim
 * inside any allocation, with arbitrary locks held). Solution here: every lock the callback
 * needs is taken by trylock while the LRU lock is held — the allocator mutex, then
 * i_mmap_rwsem for read (a trylock form of unmap_mapping_pages) — and a page whose locks are
 * busy is skipped (LRU_SKIP) and retried on a later scan. Only after the page is isolated and
 * the LRU lock dropped does the callback zap, under i_mmap_rwsem it already holds
 * (unmap_mapping_range_tree), so it never sleeps on a lock.
 */

import type { Kernel } from '../../../kernel/kernel.ts';
import type { KGen } from '../../../kernel/sched/core.ts';
import { VM_DONTCOPY, VM_FAULT_SIGBUS, VM_MAYWRITE, VM_MIXEDMAP, type VmArea, type VmFault, type VmOperations } from '../../../kernel/mm/mm_types.ts';
import { File, type AddressSpace } from '../../../kernel/fs/file.ts';
import { alloc_anon_inode } from '../../../kernel/fs/anon_inodes.ts';
import { unmap_mapping_range_tree, vmf_insert_page } from '../../../kernel/mm/memory.ts';
import { faultingVmOps, nothingBeforeDeliver, registerDesign, type DesignName, type DesignOptions, type LruStatus, type PageMapping, type PlantedBugs } from './page_mapping.ts';
import type { BinderAlloc } from './binder_alloc.ts';
import { zapPteWithoutFlush } from './eager_common.ts';
import { traceLruPage } from './binder_trace.ts';

export interface FaultCounters {
  /** Faults that mapped a page. */
  faults: number;
  /** Faults on pages binder does not have (SIGBUS). */
  sigbus: number;
  /** Reclaims skipped because a trylock failed. */
  trylockSkips: number;
  /** Pages unmapped by reclaim. */
  reclaimUnmaps: number;
}

interface FaultState {
  /** The per-open address_space (the file's f_mapping). */
  mapping: AddressSpace;
  counters: FaultCounters;
}

export function faultState(alloc: BinderAlloc): FaultState {
  const s = alloc.designState as FaultState | null;
  if (!s) throw new Error(`binder alloc of pid ${alloc.pid}: the ${alloc.mapping.design} design has no per-open address_space (binder_open did not run)`);
  return s;
}

/** The fault designs' shared parts; `insert` maps one page from ->fault. */
export class FaultMapping implements PageMapping {
  readonly identity = null;
  protected readonly bugs: PlantedBugs;
  protected readonly vmOps: VmOperations;

  constructor(
    readonly design: DesignName,
    opts: DesignOptions,
  ) {
    this.bugs = opts.bugs ?? {};
    this.vmOps = faultingVmOps(`binder_vm_ops (${design})`, (vmf) => this.binder_vm_fault(vmf));
  }

  /** binder_open: a fresh anonymous inode whose address_space becomes this file's f_mapping. */
  open(alloc: BinderAlloc, file: File): void {
    const inode = alloc_anon_inode(alloc.k);
    file.f_mapping = inode.i_mapping;
    alloc.designState = { mapping: inode.i_mapping, counters: { faults: 0, sigbus: 0, trylockSkips: 0, reclaimUnmaps: 0 } } satisfies FaultState;
  }

  setupVma(alloc: BinderAlloc, vma: VmArea, _file: File): number {
    vma.vm_flags = ((vma.vm_flags | VM_DONTCOPY | VM_MIXEDMAP) & ~VM_MAYWRITE) >>> 0;
    vma.vm_ops = this.vmOps;
    vma.vm_private_data = alloc;
    return 0;
  }

  /** Allocation only gives the page a frame (the kernel writes through it); no PTE. */
  *installSinglePage(alloc: BinderAlloc, index: number, _addr: number): KGen<number> {
    const pfn = alloc.allocFrame('binder_page_alloc');
    if (pfn < 0) return -12;
    alloc.setInstalledPage(index, pfn);
    return 0;
  }

  beforeDeliver = nothingBeforeDeliver;

  /** Map `pfn` for this fault (returns VM_FAULT_*). */
  protected insert(k: Kernel, vmf: VmFault, pfn: number): number {
    return vmf_insert_page(k, vmf, pfn);
  }

  /** binder_vm_fault: pages[pgoff] under the allocator mutex, or SIGBUS. */
  *binder_vm_fault(vmf: VmFault): KGen<number> {
    const alloc = vmf.vma.vm_private_data as BinderAlloc;
    const k = alloc.k;
    const c = faultState(alloc).counters;
    yield* alloc.mutex.lock('binder_vm_fault');
    try {
      const index = vmf.pgoff;
      const pfn = index >= 0 && index < alloc.pages.length ? alloc.pages[index]! : -1;
      if (pfn < 0) {
        c.sigbus++;
        return VM_FAULT_SIGBUS;
      }
      c.faults++;
      return this.insert(k, vmf, pfn);
    } finally {
      alloc.mutex.unlock();
    }
  }

  /**
   * The shrinker callback: trylock the allocator mutex and i_mmap_rwsem (read), unpublish,
   * isolate (dropping the LRU lock), unmap from every VMA of the address_space, free.
   */
  *freePage(alloc: BinderAlloc, index: number): KGen<LruStatus> {
    const k = alloc.k;
    const st = faultState(alloc);
    if (!alloc.mutex.trylock('binder_alloc_free_page')) {
      st.counters.trylockSkips++;
      return 'skip';
    }
    try {
      const m = st.mapping;
      if (!m.i_mmap_rwsem.down_read_trylock('binder_alloc_free_page')) {
        st.counters.trylockSkips++;
        return 'skip';
      }
      let pfn: number;
      try {
        traceLruPage(k, 'binder_unmap_kernel_start', alloc.pid, index);
        pfn = alloc.pages[index]!;
        alloc.pages[index] = -1;
        traceLruPage(k, 'binder_unmap_kernel_end', alloc.pid, index);
        alloc.isolate(index);
        traceLruPage(k, 'binder_unmap_user_start', alloc.pid, index);
        if (this.bugs.zapWithoutFlush) {
          for (const vma of m.i_mmap.query(index, index)) zapPteWithoutFlush(k, vma, vma.vm_start + (index - vma.vm_pgoff) * 4096);
        } else {
          yield* unmap_mapping_range_tree(k, m, index, index, true);
        }
        traceLruPage(k, 'binder_unmap_user_end', alloc.pid, index);
        st.counters.reclaimUnmaps++;
      } finally {
        m.i_mmap_rwsem.up_read();
      }
      alloc.stats.pagesReclaimed++;
      k.pages.putPage(pfn, 'binder_free_page <- binder_alloc_free_page');
      return 'removed';
    } finally {
      alloc.mutex.unlock();
    }
  }

  release(alloc: BinderAlloc): void {
    const s = alloc.designState as FaultState | null;
    if (s) s.mapping.host.iput();
  }
}

registerDesign('fault', (opts) => new FaultMapping('fault', opts));

