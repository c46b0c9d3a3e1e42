/**
 * kernel/fs/pipe.ts — pipes (fs/pipe.c) and vmsplice into a pipe (fs/splice.c).
 *
 * A pipe is a ring of at most PIPE_DEF_BUFFERS (16) buffers, each naming a page, an offset and
 * a length, and holding one reference on its page. write() copies into anonymous pipe pages
 * (merging into the last one while it has room); vmsplice() instead takes references on the
 * caller's own pages with GUP-fast (falling back to the slow path) and queues them as
 * user-page buffers without copying. read() copies out and drops each buffer's reference when
 * it is consumed; closing the last reader or writer releases every buffer.
 *
 * This is the mechanism behind a classic hazard for drivers that hand pages to user space: a
 * page that was unmapped, or that its driver gave up, stays allocated as long as a pipe buffer
 * holds it, and read() returns its *current* contents. Special PTEs (GUP-fast) and VM_IO or
 * VM_PFNMAP (the slow path) are what make vmsplice fail instead.
 *
 * Reads and writes of page contents are kernel accesses through the direct map, checked by
 * KASAN (kasanCheck) like every kernel access to a frame.
 *
 * Deviations: no SIGPIPE (EPIPE is returned), no O_DIRECT packet mode, no splice/tee between
 * pipes and files, no pipe resizing (F_SETPIPE_SZ).
 */

import type { Kernel } from '../kernel.ts';
import type { KGen } from '../sched/core.ts';
import { File, Inode, type FileOperations } from './file.ts';
import { WaitQueue } from '../sched/wait.ts';
import { PageRefs } from '../mm/page_ref.ts';
import { GFP_HIGHUSER_MOVABLE } from '../mm/page_alloc.ts';
import { kasanCheck } from '../mm/kasan.ts';
import { get_user_pages_fast, put_page } from '../mm/gup.ts';
import { EAGAIN, EBADF, EFAULT, EINVAL, ENOMEM, EPIPE } from '../errno.ts';
import { PAGE_SIZE } from '../mm/mm_types.ts';

export const PIPE_DEF_BUFFERS = 16;
export const O_NONBLOCK = 0o4000;
export const O_RDONLY = 0;
export const O_WRONLY = 1;
/** vmsplice flags (include/linux/splice.h). */
export const SPLICE_F_MOVE = 0x01;
export const SPLICE_F_NONBLOCK = 0x02;
export const SPLICE_F_MORE = 0x04;
export const SPLICE_F_GIFT = 0x08;
/** UIO_MAXIOV: the most iovecs one call takes. */
export const UIO_MAXIOV = 1024;

/** anon_pipe_buf_ops or user_page_pipe_buf_ops (the page came from vmsplice). */
export type PipeBufOps = 'anon' | 'user';

export interface PipeBuffer {
  pfn: number;
  offset: number;
  len: number;
  ops: PipeBufOps;
}

export interface PipeCounters {
  writes: number;
  reads: number;
  /** Pages queued by vmsplice. */
  splicedPages: number;
}

/** pipe_inode_info. */
export class PipeInodeInfo {
  readonly id: number;
  readonly bufs: PipeBuffer[] = [];
  readers = 0;
  writers = 0;
  readonly rd_wait = new WaitQueue('pipe_read');
  readonly wr_wait = new WaitQueue('pipe_write');
  /** The references held by the buffers. */
  readonly refs: PageRefs;
  readonly counters: PipeCounters = { writes: 0, reads: 0, splicedPages: 0 };

  constructor(
    private readonly k: Kernel,
    readonly max_usage = PIPE_DEF_BUFFERS,
  ) {
    this.id = k.ids.pipe++;
    this.refs = new PageRefs(k, `pipe:[${this.id}]`);
  }

  get full(): boolean {
    return this.bufs.length >= this.max_usage;
  }

  /** Bytes waiting to be read. */
  get size(): number {
    let n = 0;
    for (const b of this.bufs) n += b.len;
    return n;
  }

  /** pipe_buf_release. */
  release(buf: PipeBuffer): void {
    put_page(this.k, this.refs, buf.pfn, buf.ops === 'user' ? 'page_cache_pipe_buf_release' : 'anon_pipe_buf_release');
  }

  /** free_pipe_info: the last reader and writer are gone. */
  freeAll(): void {
    for (const b of this.bufs) this.release(b);
    this.bufs.length = 0;
  }

  /** Copy `len` bytes of a page out through the direct map (KASAN-checked). */
  private copyOut(pfn: number, offset: number, len: number, into: Uint8Array, at: number): void {
    const pa = pfn * PAGE_SIZE + offset;
    kasanCheck(this.k, pa, len, false, 'copy_page_to_iter <- pipe_read');
    into.set(this.k.machine.phys.u8.subarray(pa, pa + len), at);
    this.k.charge(len * this.k.costs.copyPerByte);
  }

  /** anon_pipe_read: up to `len` bytes; blocks while empty and writers remain (0 = EOF). */
  *read(len: number, nonblock: boolean): KGen<Uint8Array | number> {
    const k = this.k;
    if (!Number.isSafeInteger(len) || len < 0) return -EINVAL;
    if (len === 0) return new Uint8Array(0);
    while (this.bufs.length === 0) {
      if (this.writers === 0) return new Uint8Array(0);
      if (nonblock) return -EAGAIN;
      yield* this.rd_wait.sleep(k, 'pipe_read');
    }
    const out = new Uint8Array(Math.min(len, this.size));
    let done = 0;
    while (done < out.length && this.bufs.length > 0) {
      const b = this.bufs[0]!;
      const n = Math.min(b.len, out.length - done);
      this.copyOut(b.pfn, b.offset, n, out, done);
      done += n;
      b.offset += n;
      b.len -= n;
      if (b.len === 0) {
        this.bufs.shift();
        this.release(b);
      }
    }
    this.counters.reads++;
    this.wr_wait.wakeAll(k);
    return out;
  }

  /** anon_pipe_write: copy `data` in; blocks while full; EPIPE without readers. */
  *write(data: Uint8Array, nonblock: boolean): KGen<number> {
    const k = this.k;
    let done = 0;
    while (done < data.length) {
      if (this.readers === 0) return done > 0 ? done : -EPIPE;
      // Merge into the last anonymous buffer while its page has room.
      const last = this.bufs[this.bufs.length - 1];
      if (last && last.ops === 'anon' && last.offset + last.len < PAGE_SIZE) {
        const n = Math.min(PAGE_SIZE - (last.offset + last.len), data.length - done);
        const pa = last.pfn * PAGE_SIZE + last.offset + last.len;
        kasanCheck(k, pa, n, true, 'copy_page_from_iter <- pipe_write');
        k.machine.phys.u8.set(data.subarray(done, done + n), pa);
        k.charge(n * k.costs.copyPerByte);
        last.len += n;
        done += n;
        continue;
      }
      if (this.full) {
        this.rd_wait.wakeAll(k);
        if (nonblock) return done > 0 ? done : -EAGAIN;
        yield* this.wr_wait.sleep(k, 'pipe_write');
        continue;
      }
      const pfn = k.pages.allocPages(GFP_HIGHUSER_MOVABLE, 0, 'alloc_page <- anon_pipe_write');
      if (pfn < 0) return done > 0 ? done : -ENOMEM;
      k.charge(k.costs.pageAlloc);
      this.refs.noteGet(pfn);
      const n = Math.min(PAGE_SIZE, data.length - done);
      k.machine.phys.u8.set(data.subarray(done, done + n), pfn * PAGE_SIZE);
      k.charge(n * k.costs.copyPerByte);
      this.bufs.push({ pfn, offset: 0, len: n, ops: 'anon' });
      done += n;
    }
    this.counters.writes++;
    this.rd_wait.wakeAll(k);
    return done;
  }

  /**
   * vmsplice_to_pipe: queue the user pages behind `iov` without copying. Each page is taken
   * with GUP-fast (FOLL_GET), falling back to the slow path; returns the bytes queued, or
   * -errno if none could be (e.g. -EFAULT for a VM_IO/VM_PFNMAP mapping or special entries).
   */
  *vmsplice(iov: readonly { base: number; len: number }[], flags: number): KGen<number> {
    const k = this.k;
    if (flags & ~(SPLICE_F_MOVE | SPLICE_F_NONBLOCK | SPLICE_F_MORE | SPLICE_F_GIFT)) return -EINVAL;
    if (iov.length > UIO_MAXIOV) return -EINVAL;
    let done = 0;
    for (const seg of iov) {
      if (!Number.isSafeInteger(seg.base) || !Number.isSafeInteger(seg.len) || seg.len < 0 || seg.base < 0) return done > 0 ? done : -EFAULT;
      let off = 0;
      while (off < seg.len) {
        if (this.readers === 0) return done > 0 ? done : -EPIPE;
        if (this.full) {
          this.rd_wait.wakeAll(k);
          if (flags & SPLICE_F_NONBLOCK) return done > 0 ? done : -EAGAIN;
          yield* this.wr_wait.sleep(k, 'pipe_write (vmsplice)');
          continue;
        }
        const addr = seg.base + off;
        const page = addr - (addr % PAGE_SIZE);
        const pfns: number[] = [];
        const got = yield* get_user_pages_fast(k, page, 1, 0, this.refs, pfns);
        if (got <= 0) return done > 0 ? done : got < 0 ? got : -EFAULT;
        const inPage = addr - page;
        const n = Math.min(PAGE_SIZE - inPage, seg.len - off);
        this.bufs.push({ pfn: pfns[0]!, offset: inPage, len: n, ops: 'user' });
        this.counters.splicedPages++;
        off += n;
        done += n;
      }
    }
    this.rd_wait.wakeAll(k);
    return done;
  }

  /** Pages the pipe holds (for experiments and tests). */
  heldPages(): number[] {
    return this.bufs.map((b) => b.pfn);
  }
}

interface PipeEnd {
  pipe: PipeInodeInfo;
  write: boolean;
}

function endOf(f: File): PipeEnd {
  return f.private_data as PipeEnd;
}

const pipeFops: FileOperations = {
  name: 'pipefifo_fops',
  read(file: File, len: number) {
    const e = endOf(file);
    if (e.write) return -EBADF;
    return e.pipe.read(len, (file.f_flags & O_NONBLOCK) !== 0);
  },
  write(file: File, data: Uint8Array) {
    const e = endOf(file);
    if (!e.write) return -EBADF;
    return e.pipe.write(data, (file.f_flags & O_NONBLOCK) !== 0);
  },
  release(file: File) {
    const e = endOf(file);
    const k = file.k;
    if (e.write) {
      e.pipe.writers--;
      e.pipe.rd_wait.wakeAll(k);
    } else {
      e.pipe.readers--;
      e.pipe.wr_wait.wakeAll(k);
    }
    if (e.pipe.readers === 0 && e.pipe.writers === 0) e.pipe.freeAll();
  },
};

/** create_pipe_files: the read end and the write end of a new pipe. */
export function create_pipe_files(k: Kernel, flags: number): [File, File, PipeInodeInfo] {
  const pipe = new PipeInodeInfo(k);
  const inode = new Inode(k, 'pipe', [0, 14]);
  const path = `pipe:[${inode.i_ino}]`;
  const r = new File(k, inode, pipeFops, path);
  const w = new File(k, inode, pipeFops, path);
  r.private_data = { pipe, write: false } satisfies PipeEnd;
  w.private_data = { pipe, write: true } satisfies PipeEnd;
  r.f_flags = O_RDONLY | (flags & O_NONBLOCK);
  w.f_flags = O_WRONLY | (flags & O_NONBLOCK);
  pipe.readers = 1;
  pipe.writers = 1;
  return [r, w, pipe];
}

/** The pipe behind a file, or null if it is not a pipe. */
export function get_pipe_info(f: File): PipeInodeInfo | null {
  return f.f_op === pipeFops ? endOf(f).pipe : null;
}

/** Whether `f` is the write end of a pipe. */
export function isPipeWriter(f: File): boolean {
  return f.f_op === pipeFops && endOf(f).write;
}

