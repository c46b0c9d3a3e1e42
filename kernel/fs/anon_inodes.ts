/**
 * kernel/fs/anon_inodes.ts — files and inodes without a path (fs/anon_inodes.c and
 * alloc_anon_inode of fs/libfs.c). Linux offers three things, and mmulab models each:
 *
 *   anon_inode_getfile          every such file shares one inode (anon_inode_inode), hence one
 *                               address_space: two files' f_mapping is the same object, so
 *                               unmap_mapping_range on one reaches the mappings of all.
 *   anon_inode_create_getfile   a new inode for each file ("secure" anonymous inodes; userfaultfd
 *                               since 6.7), so each file has an address_space of its own.
 *   alloc_anon_inode            a bare new inode on a pseudo filesystem, which a driver installs
 *                               as file->f_mapping of an ordinary device file (DRM's
 *                               drm_fs_inode_new, aio_private_file). This is what the November
 *                               2024 linux-mm review proposed for binder: one address_space per
 *                               binder file, so faults and unmap_mapping_range only ever touch
 *                               that file's VMAs. The driver drops it with iput.
 *
 * Deviation: there are no superblocks or mounts; the inode kind "anon_inode" and the device 0:14
 * stand for the anon_inodefs mount in /proc/PID/maps.
 */

import type { Kernel } from '../kernel.ts';
import { File, Inode, type FileOperations } from './file.ts';

/** The device number of anon_inodefs as /proc/PID/maps shows it. */
export const ANON_INODE_DEV: [number, number] = [0, 14];

/** The shared inode of anon_inode_getfile (created on first use, never evicted). */
export function anon_inode_inode(k: Kernel): Inode {
  let inode = k.subsystems.get('anon_inode_inode') as Inode | undefined;
  if (!inode) {
    inode = new Inode(k, 'anon_inode', ANON_INODE_DEV);
    inode.i_count = 1; // the mount's own reference: the shared inode lives as long as the kernel
    k.subsystems.set('anon_inode_inode', inode);
  }
  return inode;
}

/** anon_inode_getfile: a file named `anon_inode:NAME` on the shared anonymous inode. */
export function anon_inode_getfile(k: Kernel, name: string, fops: FileOperations, priv: unknown, flags = 0): File {
  const f = new File(k, anon_inode_inode(k), fops, `anon_inode:${name}`);
  f.private_data = priv;
  f.f_flags = flags;
  return f;
}

/** anon_inode_create_getfile: as anon_inode_getfile, on an inode (and address_space) of its own. */
export function anon_inode_create_getfile(k: Kernel, name: string, fops: FileOperations, priv: unknown, flags = 0): File {
  const f = new File(k, new Inode(k, 'anon_inode', ANON_INODE_DEV), fops, `anon_inode:${name}`);
  f.private_data = priv;
  f.f_flags = flags;
  return f;
}

/** alloc_anon_inode: a new inode holding one reference for the caller (dropped with iput). */
export function alloc_anon_inode(k: Kernel): Inode {
  const inode = new Inode(k, 'anon_inode', ANON_INODE_DEV);
  inode.i_count = 1;
  return inode;
}
