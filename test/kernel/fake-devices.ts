// Small character devices for tests: a PFN-map device (remap_pfn_range in ->mmap), a mixed-map
// device (vm_insert_page in ->mmap, or vmf_insert_page / vmf_insert_mixed / page return from
// ->fault). Each owns its pages in a PageRefs, as a real driver's page array would.
import type { Kernel } from '../../kernel/kernel.ts';
import { File, Inode, type FileOperations } from '../../kernel/fs/file.ts';
import { PageRefs } from '../../kernel/mm/page_ref.ts';
import { GFP_KERNEL, __GFP_ZERO, PG_driver } from '../../kernel/mm/page_alloc.ts';
import { remap_pfn_range, vm_insert_page, vmf_insert_mixed, vmf_insert_page } from '../../kernel/mm/memory.ts';
import { VM_DONTEXPAND, VM_FAULT_SIGBUS, VM_IO, VM_MIXEDMAP, type VmArea, type VmFault, type VmOperations } from '../../kernel/mm/mm_types.ts';

export type FaultMode = 'insert-in-mmap' | 'vmf_insert_page' | 'vmf_insert_mixed' | 'return-page' | 'pfnmap';

export interface FakeDevice {
  /** The driver's pages, by page offset. */
  pages: number[];
  refs: PageRefs;
  vmas: VmArea[];
  /** Fill page i with byte b (through the direct map). */
  fill(i: number, b: number): void;
}

/** Register a device at `path` with `n` zeroed driver pages mapped by `mode`. */
export function fakeDevice(k: Kernel, path: string, n: number, mode: FaultMode, opts: { io?: boolean } = {}): FakeDevice {
  const refs = new PageRefs(k, `${path} pages`);
  const pages: number[] = [];
  for (let i = 0; i < n; i++) {
    const pfn = k.pages.allocPages(GFP_KERNEL | __GFP_ZERO, 0, `${path} alloc`);
    if (pfn < 0) throw new Error('out of memory');
    k.pages.flags[pfn] |= PG_driver;
    refs.noteGet(pfn);
    pages.push(pfn);
  }
  const dev: FakeDevice = {
    pages,
    refs,
    vmas: [],
    fill(i, b) {
      k.machine.phys.u8.fill(b, pages[i]! * 4096, pages[i]! * 4096 + 4096);
    },
  };
  const vmOps: VmOperations = {
    name: path,
    fault(vmf: VmFault): number {
      const pfn = pages[vmf.pgoff];
      if (pfn === undefined) return VM_FAULT_SIGBUS;
      if (mode === 'vmf_insert_page') return vmf_insert_page(k, vmf, pfn);
      if (mode === 'vmf_insert_mixed') return vmf_insert_mixed(k, vmf.vma, vmf.address, pfn);
      k.pages.getPage(pfn);
      vmf.page = pfn;
      return 0;
    },
  };
  const fops: FileOperations = {
    name: path,
    *mmap(_file: File, vma: VmArea) {
      dev.vmas.push(vma);
      if (opts.io) vma.vm_flags |= VM_IO;
      if (mode === 'pfnmap') {
        // Physically contiguous pages are not guaranteed: map page by page.
        for (let i = 0; i < vma.pages && i < pages.length; i++) {
          const r = yield* remap_pfn_range(k, vma, vma.vm_start + i * 4096, pages[i]!, 4096);
          if (r) return r;
        }
        return 0;
      }
      if (mode === 'insert-in-mmap') {
        for (let i = 0; i < vma.pages && i < pages.length; i++) {
          const r = vm_insert_page(k, vma, vma.vm_start + i * 4096, pages[i]!, `${path} mmap`);
          if (r) return r;
        }
        return 0;
      }
      if (mode === 'vmf_insert_page' || mode === 'vmf_insert_mixed') vma.vm_flags |= VM_MIXEDMAP | VM_DONTEXPAND;
      vma.vm_ops = vmOps;
      return 0;
    },
  };
  k.devices.set(path, { open: () => new File(k, new Inode(k, 'chr', [10, 60]), fops, path) });
  return dev;
}
