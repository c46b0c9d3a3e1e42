/**
 * Anonymous inodes (kernel/fs/anon_inodes.ts): anon_inode_getfile files share one inode and so
 * one address_space, and unmap_mapping_range through one of them reaches the mappings of all;
 * anon_inode_create_getfile and alloc_anon_inode give each file an address_space of its own, so
 * it reaches only that file's VMAs — in every process, as the linux-mm review wanted for binder.
 * Also the inode's lifetime: iput evicts at the last reference, and one more is a WARN.
 */

import { describe, expect, it } from 'vitest';
import type { Kernel } from '../../kernel/kernel.ts';
import type { User } from '../../kernel/uapi.ts';
import { File, Inode, type FileOperations } from '../../kernel/fs/file.ts';
import { alloc_anon_inode, anon_inode_create_getfile, anon_inode_getfile } from '../../kernel/fs/anon_inodes.ts';
import { MAP_SHARED, PROT_READ } from '../../kernel/mm/mmap.ts';
import { unmap_mapping_range, vmf_insert_page } from '../../kernel/mm/memory.ts';
import { GFP_KERNEL, PG_driver, __GFP_ZERO } from '../../kernel/mm/page_alloc.ts';
import { PageRefs } from '../../kernel/mm/page_ref.ts';
import { VM_MIXEDMAP, type VmArea, type VmOperations } from '../../kernel/mm/mm_types.ts';
import { boot, expectClean, pfnAt, run, PAGE } from './util.ts';

const LEN = 4 * PAGE;

/** File operations whose mappings fault in `pages` by page offset (vmf_insert_page). */
function faultingFops(k: Kernel, name: string, pages: number[]): FileOperations {
  const vmOps: VmOperations = { name, fault: (vmf) => vmf_insert_page(k, vmf, pages[vmf.pgoff]!) };
  return {
    name,
    mmap(_f: File, vma: VmArea) {
      vma.vm_flags |= VM_MIXEDMAP;
      vma.vm_ops = vmOps;
      return 0;
    },
  };
}

function driverPages(k: Kernel, n: number): { pages: number[]; refs: PageRefs } {
  const refs = new PageRefs(k, 'anon test pages');
  const pages: number[] = [];
  for (let i = 0; i < n; i++) {
    const p = k.pages.allocPages(GFP_KERNEL | __GFP_ZERO, 0, 'anon test');
    k.pages.flags[p] |= PG_driver;
    refs.noteGet(p);
    pages.push(p);
  }
  return { pages, refs };
}

/**
 * Open `path` twice, map and touch both files, then unmap_mapping_range the whole range through
 * the first file's f_mapping. Returns, for each of the two mappings, whether its first page is
 * still mapped afterwards.
 */
function unmapThroughFirst(k: Kernel, path: string, files: File[]): [boolean, boolean] {
  const out: [boolean, boolean] = [false, false];
  run(k, function* (u: User) {
    const a = yield* u.mmap(0, LEN, PROT_READ, MAP_SHARED, yield* u.open(path), 0);
    const b = yield* u.mmap(0, LEN, PROT_READ, MAP_SHARED, yield* u.open(path), 0);
    yield* u.load8(a);
    yield* u.load8(b);
    const mm = u.task.mm!;
    expect([pfnAt(k, mm, a), pfnAt(k, mm, b)].every((p) => p > 0)).toBe(true);
    yield* u.call('unmap_mapping_range', (kk) => unmap_mapping_range(kk, files[0]!.f_mapping, 0, LEN, false));
    out[0] = pfnAt(k, mm, a) > 0;
    out[1] = pfnAt(k, mm, b) > 0;
  });
  return out;
}

describe('anonymous inodes', () => {
  it('anon_inode_getfile: every file shares one inode and address_space; unmapping through one file reaches the other file\'s VMA', () => {
    const k = boot();
    const { pages } = driverPages(k, 4);
    const fops = faultingFops(k, 'shared', pages);
    const files: File[] = [];
    k.devices.set('/dev/anon-shared', { open: () => files[files.push(anon_inode_getfile(k, 'shared', fops, null)) - 1]! });
    expect(unmapThroughFirst(k, '/dev/anon-shared', files)).toEqual([false, false]);
    expect(files[0]!.f_inode).toBe(files[1]!.f_inode);
    expect(files[0]!.f_mapping).toBe(files[1]!.f_mapping);
    expect(files[0]!.path).toBe('anon_inode:shared');
    expectClean(k);
  });

  it('anon_inode_create_getfile: an inode per file; unmapping through one file leaves the other mapped', () => {
    const k = boot();
    const { pages } = driverPages(k, 4);
    const fops = faultingFops(k, 'own', pages);
    const files: File[] = [];
    k.devices.set('/dev/anon-own', { open: () => files[files.push(anon_inode_create_getfile(k, 'own', fops, null)) - 1]! });
    expect(unmapThroughFirst(k, '/dev/anon-own', files)).toEqual([false, true]);
    expect(files[0]!.f_mapping).not.toBe(files[1]!.f_mapping);
    expectClean(k);
  });

  it('alloc_anon_inode as f_mapping of a device file (DRM, the binder fault design): VMAs go into its i_mmap, not the device inode\'s', () => {
    const k = boot();
    const { pages } = driverPages(k, 4);
    const dev = new Inode(k, 'chr', [10, 99]);
    const fops = faultingFops(k, 'perfile', pages);
    const files: File[] = [];
    const inodes: Inode[] = [];
    const release = (f: File) => (f.f_mapping.host as Inode).iput();
    k.devices.set('/dev/perfile', {
      open: () => {
        const f = new File(k, dev, { ...fops, release }, '/dev/perfile');
        const inode = alloc_anon_inode(k);
        inodes.push(inode);
        f.f_mapping = inode.i_mapping;
        files.push(f);
        return f;
      },
    });
    expect(unmapThroughFirst(k, '/dev/perfile', files)).toEqual([false, true]);
    // The process exited: both files were released, each dropping its inode.
    expect(dev.i_mapping.i_mmap.size).toBe(0);
    expect(inodes.map((i) => i.i_count)).toEqual([0, 0]);
    expect(k.pageRefHolders.has(inodes[0]!.i_mapping)).toBe(false);
    expectClean(k);
    inodes[0]!.iput();
    expect(k.reports.reports.map((r) => r.title)).toEqual(['WARNING: iput on an inode with no references']);
  });

  it('while mapped, the per-file address_space lists the VMA in i_mmap and the device inode does not', () => {
    const k = boot();
    const { pages } = driverPages(k, 4);
    const dev = new Inode(k, 'chr', [10, 98]);
    let own: Inode | null = null;
    k.devices.set('/dev/perfile2', {
      open: () => {
        const f = new File(k, dev, faultingFops(k, 'perfile2', pages), '/dev/perfile2');
        own = alloc_anon_inode(k);
        f.f_mapping = own.i_mapping;
        return f;
      },
    });
    run(k, function* (u: User) {
      const a = yield* u.mmap(0, LEN, PROT_READ, MAP_SHARED, yield* u.open('/dev/perfile2'), 0);
      expect(own!.i_mapping.i_mmap.query(0, 3).map((v) => v.vm_start)).toEqual([a]);
      expect(dev.i_mapping.i_mmap.size).toBe(0);
    });
  });
});
