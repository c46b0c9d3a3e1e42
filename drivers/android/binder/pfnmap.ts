/**
 * drivers/android/binder/pfnmap.ts — the `pfnmap` design: the `fault` design (fault.ts) with
 * special PFN entries. binder_mmap makes the VMA VM_PFNMAP | VM_IO | VM_DONTEXPAND | VM_DONTDUMP
 * (and VM_DONTCOPY, VM_MAYWRITE cleared), and ->fault installs pages[pgoff] with vmf_insert_pfn.
 *
 * What it buys: the PTEs are special and take no page references, so GUP-fast stops at them, the
 * GUP slow path refuses VM_IO/VM_PFNMAP, and vmsplice cannot put a binder page in a pipe: once
 * reclaim has unmapped a page, user space has truly lost access to it. This is the "no extra
 * references" mode the review wished for.
 *
 * What it costs: the driver alone owns each page's lifetime, so it must never free a page before
 * the TLB flush that removes its last PTE — unmap_mapping_range_tree flushes before returning,
 * and reclaim frees only after it (a variant that skips the flush is security scenario 3). Faults
 * are the same as in `fault`.
 */

import type { Kernel } from '../../../kernel/kernel.ts';
import { VM_DONTCOPY, VM_DONTDUMP, VM_DONTEXPAND, VM_IO, VM_MAYWRITE, VM_PFNMAP, type VmArea, type VmFault } from '../../../kernel/mm/mm_types.ts';
import type { File } from '../../../kernel/fs/file.ts';
import { vmf_insert_pfn } from '../../../kernel/mm/memory.ts';
import { registerDesign, type DesignOptions } from './page_mapping.ts';
import type { BinderAlloc } from './binder_alloc.ts';
import { FaultMapping } from './fault.ts';

class PfnmapMapping extends FaultMapping {
  constructor(opts: DesignOptions) {
    super('pfnmap', opts);
  }

  override setupVma(alloc: BinderAlloc, vma: VmArea, _file: File): number {
    vma.vm_flags = ((vma.vm_flags | VM_PFNMAP | VM_IO | VM_DONTEXPAND | VM_DONTDUMP | VM_DONTCOPY) & ~VM_MAYWRITE) >>> 0;
    vma.vm_ops = this.vmOps;
    vma.vm_private_data = alloc;
    return 0;
  }

  protected override insert(k: Kernel, vmf: VmFault, pfn: number): number {
    return vmf_insert_pfn(k, vmf.vma, vmf.address, pfn);
  }
}

registerDesign('pfnmap', (opts) => new PfnmapMapping(opts));
