/**
 * kernel/fs/file.ts — struct file, struct inode, struct address_space and file_operations
 * (include/linux/fs.h), reduced to what memory mapping needs: an inode owns an address_space
 * whose i_mmap interval tree lists every VMA mapping it (keyed by page-offset range) and whose
 * i_pages holds its cached pages; a file points at an inode and at the address_space its
 * mappings use (f_mapping, which a driver may replace, as DRM and the binder fault design do).
 *
 * i_mmap_rwsem protects i_mmap. Files are reference counted (get_file/fput); the last fput
 * calls ->release.
 */

import type { Kernel } from '../kernel.ts';
import type { KGen } from '../sched/core.ts';
import type { VmArea } from '../mm/mm_types.ts';
import { IntervalTree } from '../lib/interval_tree.ts';
import { RwSemaphore } from '../locking/rwsem.ts';

export const I_MMAP_CLASS = '&mapping->i_mmap_rwsem';

export class AddressSpace {
  readonly id: number;
  /** VMAs mapping this object, keyed by [vm_pgoff, last pgoff]. */
  readonly i_mmap = new IntervalTree<VmArea>();
  readonly i_mmap_rwsem: RwSemaphore;
  /** The page cache: page offset → pfn (each holds one reference). */
  readonly i_pages = new Map<number, number>();
  nrpages = 0;

  constructor(
    k: Kernel,
    readonly host: Inode,
  ) {
    this.id = k.ids.mapping++;
    this.i_mmap_rwsem = new RwSemaphore(k, I_MMAP_CLASS, k.lockdep);
    k.pageRefHolders.add(this);
  }

  get holderName(): string {
    return `page cache of inode ${this.host.i_ino} (${this.host.kind})`;
  }

  /** The page cache holds one reference per cached page (for the invariant checker). */
  forEachPageRef(emit: (pfn: number) => void): void {
    for (const pfn of this.i_pages.values()) emit(pfn);
  }
}

export class Inode {
  readonly i_ino: number;
  readonly i_mapping: AddressSpace;
  i_size = 0;
  /** Open files on this inode (iput evicts at zero). */
  i_count = 0;
  constructor(
    readonly k: Kernel,
    /** "anon_inode", "chr", "shmem", "pipe", "reg" (for /proc/PID/maps' dev column and names). */
    readonly kind: string,
    /** Device numbers shown in /proc/PID/maps (major, minor). */
    readonly dev: [number, number] = [0, 0],
  ) {
    this.i_ino = k.ids.ino++;
    this.i_mapping = new AddressSpace(k, this);
  }

  /** iput: drop a reference; the last one evicts the inode. */
  iput(): void {
    if (this.i_count <= 0) {
      this.k.warn('WARNING: iput on an inode with no references', `iput: inode ${this.i_ino} (${this.kind}) i_count is already ${this.i_count}`, { ino: this.i_ino });
      return;
    }
    if (--this.i_count === 0) this.evict();
  }

  /** evict: the last file went; a page cache still holding pages here is a leak. */
  evict(): void {
    const m = this.i_mapping;
    if (m.i_pages.size > 0) {
      this.k.report({ kind: 'bad-page', title: `BUG: inode ${this.i_ino} evicted with ${m.i_pages.size} cached pages`, text: `BUG: inode ${this.i_ino} (${this.kind}) evicted while its page cache still holds ${m.i_pages.size} pages`, data: { ino: this.i_ino, pages: m.i_pages.size } });
    }
    this.k.pageRefHolders.delete(m);
  }
}

export interface FileOperations {
  readonly name: string;
  /** ->mmap: called with the new VMA (not yet visible); returns 0 or -errno. May sleep. */
  mmap?(file: File, vma: VmArea): KGen<number> | number;
  /** ->release: the last reference went away. */
  release?(file: File): void;
  /** ->unlocked_ioctl. */
  ioctl?(file: File, cmd: number, arg: unknown): KGen<number> | number;
  read?(file: File, len: number): KGen<Uint8Array | number> | Uint8Array | number;
  write?(file: File, data: Uint8Array): KGen<number> | number;
}

export class File {
  readonly id: number;
  f_count = 1;
  /** The address_space its mappings use (defaults to the inode's). */
  f_mapping: AddressSpace;
  private_data: unknown = null;
  /** Open flags (O_RDWR …). */
  f_flags = 0;
  released = false;

  constructor(
    readonly k: Kernel,
    readonly f_inode: Inode,
    readonly f_op: FileOperations,
    /** The path shown in /proc/PID/maps. */
    readonly path: string,
  ) {
    this.id = k.ids.file++;
    this.f_mapping = f_inode.i_mapping;
    f_inode.i_count++;
  }

  /** get_file. */
  get(): File {
    this.f_count++;
    return this;
  }

  /** fput: the last reference calls ->release. */
  put(): void {
    if (--this.f_count > 0) return;
    if (this.f_count < 0) {
      this.k.warn('WARNING: fput on a file with no references', `fput: ${this.path} f_count went negative`, {});
      this.f_count = 0;
      return;
    }
    this.released = true;
    if (this.f_op.release) this.f_op.release(this);
    this.f_inode.iput();
  }
}
