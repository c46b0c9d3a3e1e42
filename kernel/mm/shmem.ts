/**
 * kernel/mm/shmem.ts — shared anonymous memory (mm/shmem.c's shmem_zero_setup, reduced): a
 * MAP_SHARED|MAP_ANONYMOUS mapping is backed by a private shmem object whose page cache holds its
 * pages, so a fork child and its parent see the same pages. Faults look the page up in the
 * object's i_pages and allocate it (zeroed) when absent; the page cache holds one reference. The
 * object is as big as the mapping was when created: a fault beyond that (after mremap grew the
 * mapping) is SIGBUS, as shmem_fault gives.
 * Deviation: no swap, no truncation, no huge pages.
 */

import type { Kernel } from '../kernel.ts';
import { File, Inode, type FileOperations } from '../fs/file.ts';
import { VM_FAULT_OOM, VM_FAULT_SIGBUS, PAGE_SIZE, type VmArea, type VmFault, type VmOperations } from './mm_types.ts';
import { GFP_HIGHUSER_MOVABLE, PG_swapbacked, __GFP_ZERO } from './page_alloc.ts';

const shmemFops: FileOperations = {
  name: 'shmem',
  release(file: File): void {
    // The object goes with its last mapping: drop the page cache.
    const m = file.f_mapping;
    for (const pfn of m.i_pages.values()) file.k.pages.putPage(pfn, 'shmem_evict_inode');
    m.i_pages.clear();
    m.nrpages = 0;
  },
};

function shmemVmOps(k: Kernel): VmOperations {
  return {
    name: 'shmem',
    // shmem offers map_pages (filemap_map_pages), so its faults run under the per-VMA lock.
    map_pages: true,
    fault(vmf: VmFault): number {
      const m = vmf.vma.vm_file!.f_mapping;
      // shmem_get_folio_gfp: no page beyond the object's size (a mapping mremap grew past it).
      if (vmf.pgoff * PAGE_SIZE >= m.host.i_size) return VM_FAULT_SIGBUS;
      let pfn = m.i_pages.get(vmf.pgoff);
      if (pfn === undefined) {
        pfn = k.pages.allocPages(GFP_HIGHUSER_MOVABLE | __GFP_ZERO, 0, 'shmem_alloc_folio <- shmem_fault');
        if (pfn < 0) return VM_FAULT_OOM;
        k.charge(k.costs.pageAlloc + PAGE_SIZE * k.costs.copyPerByte);
        k.pages.flags[pfn] |= PG_swapbacked;
        k.pages.mapping[pfn] = m.id;
        k.pages.index[pfn] = vmf.pgoff >>> 0;
        m.i_pages.set(vmf.pgoff, pfn);
        m.nrpages++;
      }
      k.pages.getPage(pfn);
      vmf.page = pfn;
      return 0;
    },
    nameOf(vma: VmArea): string | null {
      return vma.anon_name ? `[anon_shmem:${vma.anon_name}]` : '/dev/zero (deleted)';
    },
  };
}

/** shmem_zero_setup: give a shared anonymous VMA its shmem object. Returns 0 or -errno. */
export function shmem_zero_setup(k: Kernel, vma: VmArea): number {
  const inode = new Inode(k, 'shmem', [0, 1]);
  inode.i_size = vma.vm_end - vma.vm_start;
  const file = new File(k, inode, shmemFops, '/dev/zero (deleted)');
  vma.vm_file = file;
  vma.vm_ops = shmemVmOps(k);
  return 0;
}
