/**
 * drivers/android/binder/binder_alloc.ts — binder's buffer allocator (drivers/android/binder_alloc.c,
 * Linux v6.14+ structure): one per binder open file, carving transaction buffers out of the
 * receiver's read-only binder mapping, with the kernel writing payloads through its own array of
 * pages, never through the user mapping.
 *
 * Buffers: an address-ordered list of all buffers (free and used; a buffer's extent reaches to
 * the next one), a size-ordered tree of free ones (best fit), and the allocated ones by address.
 * Sizes are ALIGN(data, 8) + ALIGN(offsets, 8) + ALIGN(extra, 8), at least 8 (so a 0-byte
 * transaction still gets a unique address). A chunk larger than needed is split; a freed buffer
 * coalesces with free neighbours. Oneway (async) buffers may use only half the space, and a
 * sender that holds most of the async space is flagged as a spam suspect.
 *
 * Pages: `pages[i]` is the frame behind page i of the mapping, or -1. A page is FREE (no frame),
 * ACTIVE (frame, used by a live buffer) or on the LRU (frame, no live buffer: kept for reuse,
 * reclaimable). Freeing a buffer never frees pages; it puts the pages it alone covered on the
 * global LRU, from which a later allocation takes them back for free and the shrinker reclaims
 * them. How a page reaches the receiver's page tables, and how reclaim removes it, is the page
 * mapping design's business (page_mapping.ts).
 *
 * Deviations: the free tree orders equal sizes by address (Linux's tie order depends on insertion
 * history); the allocated-buffer index is a map keyed by address (Linux: an rbtree) — lookups are
 * by exact address in both. Buffer metadata does not consume simulated memory.
 */

import type { Kernel } from '../../../kernel/kernel.ts';
import { PREEMPT, type KGen } from '../../../kernel/sched/core.ts';
import type { MmStruct, VmArea } from '../../../kernel/mm/mm_types.ts';
import { RbTree, type RbNode } from '../../../kernel/lib/rbtree.ts';
import { Mutex, SpinLock } from '../../../kernel/locking/mutex.ts';
import { GFP_KERNEL, PG_driver, __GFP_HIGHMEM, __GFP_ZERO, type PageRefHolder } from '../../../kernel/mm/page_alloc.ts';
import { kasanCheck } from '../../../kernel/mm/kasan.ts';
import { copy_from_user } from '../../../kernel/arch/x86/uaccess.ts';
import { EBUSY, EINVAL, ENOSPC, EPERM, ESRCH } from '../../../kernel/errno.ts';
import type { LruStatus, PageMapping } from './page_mapping.ts';
import { traceLruPage, traceUpdatePageRange } from './binder_trace.ts';

export const PAGE_SIZE = 4096;
export const SZ_4M = 4 << 20;
const PTR = 8;

const align = (n: number, a: number): number => Math.ceil(n / a) * a;
const pageAlign = (n: number): number => Math.ceil(n / PAGE_SIZE) * PAGE_SIZE;
const pageMask = (n: number): number => n - (n % PAGE_SIZE);
const isSize = (x: number): boolean => Number.isSafeInteger(x) && x >= 0;

export class BinderBuffer {
  /** The debug id of the transaction it was last allocated for (binder_transaction sets it); 0 before. */
  debug_id = 0;
  free = true;
  /** The receiver may free it (set when delivered, cleared by prepare_to_free). */
  allow_user_free = false;
  async_transaction = false;
  oneway_spam_suspect = false;
  /** TF_CLEAR_BUF: zero it when freed. */
  clear_on_free = false;
  data_size = 0;
  offsets_size = 0;
  extra_buffers_size = 0;
  /** tgid of the process that allocated it (the sender). */
  pid = 0;
  /** The transaction it carries (binder.ts), null once freed by the receiver. */
  transaction: unknown = null;
  /** The node an async buffer was sent to (its async_todo ordering). */
  target_node: unknown = null;
  prev: BinderBuffer | null = null;
  next: BinderBuffer | null = null;
  freeNode: RbNode<number, BinderBuffer> | null = null;

  constructor(public user_data: number) {}
}

/** One entry of the global LRU: page `index` of `alloc`. */
interface LruEntry {
  alloc: BinderAlloc;
  index: number;
}

/**
 * binder_freelist: the global list_lru of reclaimable binder pages (least recently freed first)
 * and its spinlock. The shrinker walks it; allocations take pages back off it.
 */
export class BinderLru {
  private readonly entries = new Map<number, LruEntry>();
  readonly lock: SpinLock;
  /** Pages reclaimed by walks. */
  reclaimed = 0;
  skipped = 0;

  constructor(readonly k: Kernel) {
    this.lock = new SpinLock(k, '&l->lock (binder_freelist)', k.lockdep);
  }

  private static key(alloc: BinderAlloc, index: number): number {
    return alloc.id * 2 ** 22 + index;
  }

  get count(): number {
    return this.entries.size;
  }

  has(alloc: BinderAlloc, index: number): boolean {
    return this.entries.has(BinderLru.key(alloc, index));
  }

  /** list_lru_add: at the tail; false if already there. */
  add(alloc: BinderAlloc, index: number): boolean {
    const key = BinderLru.key(alloc, index);
    if (this.entries.has(key)) return false;
    this.entries.set(key, { alloc, index });
    return true;
  }

  /** list_lru_del: false if it was not there. */
  del(alloc: BinderAlloc, index: number): boolean {
    return this.entries.delete(BinderLru.key(alloc, index));
  }

  /** Pages of `alloc` on the list (for tests and deferred release). */
  countOf(alloc: BinderAlloc): number {
    let n = 0;
    for (const e of this.entries.values()) if (e.alloc === alloc) n++;
    return n;
  }

  /**
   * list_lru_walk: visit up to `nr` entries from the head with the LRU lock held, calling the
   * owner's design callback; a removed entry restarts the walk from the head (LRU_REMOVED_RETRY,
   * the callback dropped the lock). Returns the number removed.
   */
  *walk(nr: number): KGen<number> {
    let left = nr;
    let removed = 0;
    this.lock.lock('list_lru_walk');
    try {
      restart: for (;;) {
        for (const e of this.entries.values()) {
          if (left <= 0) break restart;
          left--;
          const r: LruStatus = yield* e.alloc.mapping.freePage(e.alloc, e.index);
          if (r === 'removed') {
            removed++;
            this.reclaimed++;
            if (!this.lock.owner) this.lock.lock('list_lru_walk (retry)');
            continue restart;
          }
          this.skipped++;
        }
        break;
      }
    } finally {
      if (this.lock.owner) this.lock.unlock();
    }
    return removed;
  }
}

export function binderLru(k: Kernel): BinderLru {
  let l = k.subsystems.get('binder_freelist') as BinderLru | undefined;
  if (!l) {
    l = new BinderLru(k);
    k.subsystems.set('binder_freelist', l);
  }
  return l;
}

export interface BinderAllocStats {
  /** Pages given a frame (binder_alloc_page_start/end pairs). */
  pagesInstalled: number;
  /** Pages taken back off the LRU by an allocation. */
  lruReuses: number;
  /** Pages reclaimed by the shrinker. */
  pagesReclaimed: number;
  allocations: number;
  frees: number;
  /** new_buf failures by errno name. */
  failures: Record<string, number>;
}

/** The global binder_alloc_mmap_lock: serialises the "already mapped" check of every alloc. */
function mmapLock(k: Kernel): Mutex {
  let m = k.subsystems.get('binder_alloc_mmap_lock') as Mutex | undefined;
  if (!m) {
    m = new Mutex(k, 'binder_alloc_mmap_lock', k.lockdep);
    k.subsystems.set('binder_alloc_mmap_lock', m);
  }
  return m;
}

export class BinderAlloc implements PageRefHolder {
  readonly id: number;
  vm_start = 0;
  buffer_size = 0;
  /** Frame of each page of the mapping, -1 when none. */
  pages = new Int32Array(0);
  /** Pages the allocator ever needed (statistics). */
  pages_high = 0;
  /** binder_alloc_is_mapped: set by a successful mmap, cleared by ->close of any piece of it. */
  mapped = false;
  free_async_space = 0;
  oneway_spam_detected = false;
  readonly mutex: Mutex;
  /** First buffer of the address-ordered list. */
  head: BinderBuffer | null = null;
  readonly freeTree = new RbTree<number, BinderBuffer>((a, b) => a - b);
  readonly allocated = new Map<number, BinderBuffer>();
  readonly lru: BinderLru;
  readonly stats: BinderAllocStats = { pagesInstalled: 0, lruReuses: 0, pagesReclaimed: 0, allocations: 0, frees: 0, failures: {} };
  /** The design's private state (e.g. the fault designs' address_space). */
  designState: unknown = null;

  constructor(
    readonly k: Kernel,
    /** tgid of the process that opened the device. */
    readonly pid: number,
    /** The opener's mm, mmgrab'd by binder_open (binder_alloc_init). */
    public mm: MmStruct | null,
    readonly mapping: PageMapping,
  ) {
    this.id = k.ids.next('binder_alloc');
    this.mutex = new Mutex(k, '&alloc->mutex', k.lockdep);
    this.lru = binderLru(k);
  }

  get holderName(): string {
    return `binder_alloc of pid ${this.pid} (${this.mapping.design})`;
  }

  /** Each installed page holds the reference its allocation took. */
  forEachPageRef(emit: (pfn: number, refs?: number) => void): void {
    const p = this.pages;
    for (let i = 0; i < p.length; i++) if (p[i]! >= 0) emit(p[i]!);
  }

  // ---- page state ---------------------------------------------------------------------------

  /** binder_get_installed_page: the frame of page `index`, or -1. */
  installedPage(index: number): number {
    return this.pages[index] ?? -1;
  }

  pageState(index: number): 'free' | 'lru' | 'active' {
    if (this.pages[index]! < 0) return 'free';
    return this.lru.has(this, index) ? 'lru' : 'active';
  }

  /** binder_page_alloc: a zeroed frame for the buffer area, owned by the driver. */
  allocFrame(site: string): number {
    const k = this.k;
    const pfn = k.pages.allocPages(GFP_KERNEL | __GFP_HIGHMEM | __GFP_ZERO, 0, site);
    if (pfn < 0) return -1;
    k.pages.flags[pfn] |= PG_driver;
    k.charge(k.costs.pageAlloc + PAGE_SIZE * k.costs.copyPerByte);
    return pfn;
  }

  /** binder_set_installed_page (a release store): the page is now usable by the kernel. */
  setInstalledPage(index: number, pfn: number): void {
    this.pages[index] = pfn;
    if (this.pages.length > 0) this.k.pageRefHolders.add(this);
  }

  /** Unpublish page `index` and drop the allocator's reference (binder_free_page). */
  freeInstalledPage(index: number, site: string): void {
    const pfn = this.pages[index]!;
    if (pfn < 0) return;
    this.pages[index] = -1;
    this.k.pages.putPage(pfn, site);
  }

  /** Drop a frame that was never published (install failed). */
  dropFrame(pfn: number, site: string): void {
    this.k.pages.putPage(pfn, site);
  }

  /** The size of `b`: up to the next buffer, or to the end of the mapping. */
  bufferSize(b: BinderBuffer): number {
    return (b.next ? b.next.user_data : this.vm_start + this.buffer_size) - b.user_data;
  }

  private freeKey(b: BinderBuffer): number {
    return this.bufferSize(b) * 2 ** 23 + (b.user_data - this.vm_start);
  }

  private insertFree(b: BinderBuffer): void {
    b.free = true;
    b.freeNode = this.freeTree.insert(this.freeKey(b), b);
  }

  private eraseFree(b: BinderBuffer): void {
    if (b.freeNode) this.freeTree.erase(b.freeNode);
    b.freeNode = null;
  }

  /** Every buffer in address order (for tests and /proc-style dumps). */
  buffers(): BinderBuffer[] {
    const out: BinderBuffer[] = [];
    for (let b = this.head; b; b = b.next) out.push(b);
    return out;
  }

  // ---- mmap and close ---------------------------------------------------------------------------

  /** binder_alloc_mmap_handler. 0 or -errno. */
  *mmap_handler(vma: VmArea): KGen<number> {
    const k = this.k;
    if (vma.vm_mm !== this.mm) return -EINVAL;
    const lock = mmapLock(k);
    yield* lock.lock('binder_alloc_mmap_handler');
    try {
      if (this.buffer_size) return -EBUSY;
      this.buffer_size = Math.min(vma.vm_end - vma.vm_start, SZ_4M);
      this.vm_start = vma.vm_start;
      this.pages = new Int32Array(this.buffer_size / PAGE_SIZE).fill(-1);
      const b = new BinderBuffer(vma.vm_start);
      this.head = b;
      this.insertFree(b);
      this.free_async_space = this.buffer_size / 2;
      this.mapped = true;
      return 0;
    } finally {
      lock.unlock();
    }
  }

  /** binder_alloc_vma_close: any piece of the mapping going away disables allocation. */
  vma_close(): void {
    this.mapped = false;
  }

  // ---- allocation ---------------------------------------------------------------------------

  /** sanitized_size: 0 when the sizes overflow. */
  static sanitizedSize(data_size: number, offsets_size: number, extra: number): number {
    if (!isSize(data_size) || !isSize(offsets_size) || !isSize(extra)) return 0;
    const total = align(data_size, PTR) + align(offsets_size, PTR) + align(extra, PTR);
    if (total >= 2 ** 53 - 8) return 0;
    return Math.max(total, PTR);
  }

  /**
   * binder_alloc_new_buf: a buffer for a transaction of these sizes, its pages installed. -ESRCH
   * when not mapped (the receiver is going away), -EINVAL for impossible sizes, -ENOSPC when no
   * free chunk (or async space) is large enough, or the design's error.
   */
  *new_buf(data_size: number, offsets_size: number, extra_buffers_size: number, is_async: boolean): KGen<BinderBuffer | number> {
    if (!this.mapped) return this.failed(-ESRCH);
    const size = BinderAlloc.sanitizedSize(data_size, offsets_size, extra_buffers_size);
    if (size === 0) return this.failed(-EINVAL);
    yield* this.mutex.lock('binder_alloc_new_buf');
    let buffer: BinderBuffer | number;
    try {
      buffer = this.new_buf_locked(size, is_async);
      if (typeof buffer !== 'number') {
        buffer.data_size = data_size;
        buffer.offsets_size = offsets_size;
        buffer.extra_buffers_size = extra_buffers_size;
        buffer.pid = this.k.current?.tgid ?? 0;
      }
    } finally {
      this.mutex.unlock();
    }
    if (typeof buffer === 'number') return this.failed(buffer);
    // Most buffers reuse pages installed earlier: the installer only runs when one is missing.
    const r = this.hasAllPages(buffer, size) ? 0 : yield* this.install_buffer_pages(buffer, size);
    if (r) {
      yield* this.free_buf(buffer);
      return this.failed(r);
    }
    this.stats.allocations++;
    return buffer;
  }

  /** A new_buf failure: counted by errno name, returned. */
  private failed(e: number): number {
    const name = e === -ESRCH ? 'ESRCH' : e === -EINVAL ? 'EINVAL' : e === -ENOSPC ? 'ENOSPC' : `errno ${-e}`;
    this.stats.failures[name] = (this.stats.failures[name] ?? 0) + 1;
    return e;
  }

  private new_buf_locked(size: number, is_async: boolean): BinderBuffer | number {
    if (is_async && this.free_async_space < size) return -ENOSPC;
    const n = this.freeTree.lowerBound(size * 2 ** 23);
    if (!n) return -ENOSPC;
    const buffer = n.value;
    const buffer_size = this.bufferSize(buffer);
    // The pages this buffer now owns alone leave the LRU; the first page may be shared with the
    // previous (used) buffer and the last with the next one.
    const next_used_page = pageMask(buffer.user_data + buffer_size);
    const curr_last_page = pageAlign(buffer.user_data + size);
    this.lru_freelist_del(pageAlign(buffer.user_data), Math.min(next_used_page, curr_last_page));
    this.eraseFree(buffer);
    buffer.free = false;
    buffer.allow_user_free = false;
    this.allocated.set(buffer.user_data, buffer);
    if (buffer_size !== size) {
      const nb = new BinderBuffer(buffer.user_data + size);
      nb.prev = buffer;
      nb.next = buffer.next;
      if (buffer.next) buffer.next.prev = nb;
      buffer.next = nb;
      this.insertFree(nb);
    }
    buffer.async_transaction = is_async;
    buffer.oneway_spam_suspect = false;
    if (is_async) {
      this.free_async_space -= size;
      if (this.free_async_space < this.buffer_size / 10) buffer.oneway_spam_suspect = this.debug_low_async_space_locked();
      else this.oneway_spam_detected = false;
    }
    return buffer;
  }

  /**
   * debug_low_async_space_locked: is the current sender hogging the async space (more than 50
   * buffers or a quarter of the mapping)? Reported once until space recovers.
   */
  private debug_low_async_space_locked(): boolean {
    const pid = this.k.current?.tgid ?? 0;
    let count = 0;
    let bytes = 0;
    for (const b of this.allocated.values()) {
      if (!b.async_transaction || b.pid !== pid) continue;
      count++;
      bytes += this.bufferSize(b);
    }
    if (count > 50 || bytes > this.buffer_size / 4) {
      if (!this.oneway_spam_detected) {
        this.oneway_spam_detected = true;
        return true;
      }
    }
    return false;
  }

  /** binder_lru_freelist_del over [start, end). */
  private lru_freelist_del(start: number, end: number): void {
    if (end > start) traceUpdatePageRange(this.k, this.pid, true, start - this.vm_start, end - start);
    for (let a = start; a < end; a += PAGE_SIZE) {
      const index = (a - this.vm_start) / PAGE_SIZE;
      if (this.pages[index]! >= 0) {
        traceLruPage(this.k, 'binder_alloc_lru_start', this.pid, index);
        const was = this.lru.del(this, index);
        if (!was) this.k.warn('WARNING: binder page not on the LRU', `binder_lru_freelist_del: page ${index} of pid ${this.pid} is installed but was not on the LRU`, { index });
        else this.stats.lruReuses++;
        traceLruPage(this.k, 'binder_alloc_lru_end', this.pid, index);
        continue;
      }
      if (index + 1 > this.pages_high) this.pages_high = index + 1;
    }
  }

  /** Would install_buffer_pages find a frame for every page of the buffer's first `size` bytes? */
  private hasAllPages(buffer: BinderBuffer, size: number): boolean {
    const final = pageAlign(buffer.user_data + size);
    for (let a = pageMask(buffer.user_data); a < final; a += PAGE_SIZE) {
      if (!(this.pages[(a - this.vm_start) / PAGE_SIZE]! >= 0)) return false;
    }
    return true;
  }

  /** binder_install_buffer_pages: give every page of the buffer a frame (the design may map it). */
  *install_buffer_pages(buffer: BinderBuffer, size: number): KGen<number> {
    const start = pageMask(buffer.user_data);
    const final = pageAlign(buffer.user_data + size);
    for (let a = start; a < final; a += PAGE_SIZE) {
      const index = (a - this.vm_start) / PAGE_SIZE;
      if (this.pages[index]! >= 0) continue;
      traceLruPage(this.k, 'binder_alloc_page_start', this.pid, index);
      const r = yield* this.mapping.installSinglePage(this, index, a);
      if (r) return r;
      this.stats.pagesInstalled++;
      traceLruPage(this.k, 'binder_alloc_page_end', this.pid, index);
      // A preemptible kernel may switch here (no lock of the loop is held between pages), and on
      // a real SMP machine the receiver runs meanwhile: let the engine interleave other CPUs, so
      // a half-installed buffer can be observed as on hardware.
      yield PREEMPT;
    }
    return 0;
  }

  // ---- freeing ------------------------------------------------------------------------------

  /**
   * binder_alloc_prepare_to_free: the allocated buffer at exactly `user_ptr` that the receiver
   * may free, or null (no such buffer) / -EPERM (not delivered yet, or already being freed).
   */
  *prepare_to_free(user_ptr: number): KGen<BinderBuffer | number | null> {
    yield* this.mutex.lock('binder_alloc_prepare_to_free');
    try {
      const b = this.allocated.get(user_ptr);
      if (!b) return null;
      if (!b.allow_user_free) return -EPERM;
      b.allow_user_free = false;
      return b;
    } finally {
      this.mutex.unlock();
    }
  }

  /** binder_alloc_free_buf: zero it if asked (outside the lock), then free it. */
  *free_buf(buffer: BinderBuffer): KGen {
    if (buffer.clear_on_free) {
      this.clear_buf(buffer);
      buffer.clear_on_free = false;
    }
    yield* this.mutex.lock('binder_alloc_free_buf');
    try {
      this.free_buf_locked(buffer);
    } finally {
      this.mutex.unlock();
    }
  }

  private free_buf_locked(buffer: BinderBuffer): void {
    const buffer_size = this.bufferSize(buffer);
    const size = align(buffer.data_size, PTR) + align(buffer.offsets_size, PTR) + align(buffer.extra_buffers_size, PTR);
    if (buffer.free) return this.freeBug(buffer, 'buffer->free');
    if (size > buffer_size) this.freeBug(buffer, 'size > buffer_size');
    if (buffer.transaction !== null) this.freeBug(buffer, 'buffer->transaction != NULL');
    if (buffer.async_transaction) this.free_async_space += buffer_size;
    this.lru_freelist_add(pageAlign(buffer.user_data), pageMask(buffer.user_data + buffer_size));
    this.allocated.delete(buffer.user_data);
    buffer.free = true;
    let b = buffer;
    const next = b.next;
    if (next && next.free) {
      this.eraseFree(next);
      this.delete_free_buffer(next);
    }
    const prev = b.prev;
    if (prev && prev.free) {
      this.delete_free_buffer(b);
      this.eraseFree(prev);
      b = prev;
    }
    this.insertFree(b);
    this.stats.frees++;
  }

  /** A BUG_ON of binder_free_buf_locked. */
  private freeBug(buffer: BinderBuffer, cond: string): void {
    this.k.report({ kind: 'BUG', title: `kernel BUG at drivers/android/binder_alloc.c: binder_free_buf_locked`, text: `kernel BUG at drivers/android/binder_alloc.c: BUG_ON(${cond}) for buffer ${buffer.debug_id} of pid ${this.pid}`, data: { cond, buffer: buffer.debug_id } });
  }

  /**
   * binder_delete_free_buffer: unlink a free buffer merged into its predecessor; its first page
   * goes to the LRU unless a neighbour still covers it.
   */
  private delete_free_buffer(buffer: BinderBuffer): void {
    const startPage = pageMask(buffer.user_data);
    let skip = buffer.user_data % PAGE_SIZE === 0;
    if (!skip) {
      const prev = buffer.prev!;
      // The byte before prev on this page means prev's (used) predecessor shares it.
      if (pageMask(prev.user_data - 1) === startPage) skip = true;
      else if (buffer.next && pageMask(buffer.next.user_data) === startPage) skip = true;
    }
    if (!skip) this.lru_freelist_add(startPage, startPage + PAGE_SIZE);
    if (buffer.prev) buffer.prev.next = buffer.next;
    else this.head = buffer.next;
    if (buffer.next) buffer.next.prev = buffer.prev;
    buffer.prev = buffer.next = null;
  }

  /** binder_lru_freelist_add over [start, end): installed pages go on the LRU. */
  private lru_freelist_add(start: number, end: number): void {
    if (end > start) traceUpdatePageRange(this.k, this.pid, false, start - this.vm_start, end - start);
    for (let a = start; a < end; a += PAGE_SIZE) {
      const index = (a - this.vm_start) / PAGE_SIZE;
      if (this.pages[index]! < 0) continue;
      traceLruPage(this.k, 'binder_free_lru_start', this.pid, index);
      if (!this.lru.add(this, index)) this.k.warn('WARNING: binder page already on the LRU', `binder_lru_freelist_add: page ${index} of pid ${this.pid} was already on the LRU`, { index });
      traceLruPage(this.k, 'binder_free_lru_end', this.pid, index);
    }
  }

  /** Zero the buffer's bytes through the page array (TF_CLEAR_BUF). */
  clear_buf(buffer: BinderBuffer): void {
    const size = this.bufferSize(buffer);
    let off = 0;
    while (off < size) {
      const a = buffer.user_data + off;
      const n = Math.min(size - off, PAGE_SIZE - (a % PAGE_SIZE));
      const pfn = this.pages[(pageMask(a) - this.vm_start) / PAGE_SIZE]!;
      if (pfn >= 0) {
        const pa = pfn * PAGE_SIZE + (a % PAGE_SIZE);
        kasanCheck(this.k, pa, n, true, 'binder_alloc_clear_buf');
        this.k.machine.phys.u8.fill(0, pa, pa + n);
      }
      off += n;
    }
    this.k.charge(size * this.k.costs.copyPerByte);
  }

  // ---- kernel access to buffer contents -----------------------------------------------------

  /** check_buffer: may the kernel access [offset, offset + bytes) of this buffer now? */
  check_buffer(buffer: BinderBuffer, offset: number, bytes: number): boolean {
    const size = this.bufferSize(buffer);
    return size >= bytes && offset <= size - bytes && offset % 4 === 0 && !buffer.free && (!buffer.allow_user_free || !buffer.transaction);
  }

  /**
   * binder_alloc_copy_user_to_buffer: copy `bytes` from the current task's memory at `from`
   * into the buffer through its pages. Returns the number of bytes NOT copied (0 on success).
   */
  *copy_user_to_buffer(buffer: BinderBuffer, offset: number, from: number, bytes: number): KGen<number> {
    if (!this.check_buffer(buffer, offset, bytes)) return bytes;
    if (bytes === 0) return 0;
    const data = yield* copy_from_user(this.k, from, bytes);
    if (typeof data === 'number') return bytes;
    return this.copy_to_buffer(buffer, offset, data) ? 0 : bytes;
  }

  /** The physical address behind user address `a` of the mapping (through `pages`), -1 if no frame. */
  private bufferPa(a: number): number {
    const pfn = this.pages[(pageMask(a) - this.vm_start) / PAGE_SIZE]!;
    return pfn < 0 ? -1 : pfn * PAGE_SIZE + (a % PAGE_SIZE);
  }

  /** binder_alloc_copy_to_buffer: kernel bytes in. False if the range is not accessible. */
  copy_to_buffer(buffer: BinderBuffer, offset: number, data: Uint8Array): boolean {
    if (!this.check_buffer(buffer, offset, data.length)) return false;
    const phys = this.k.machine.phys;
    const len = data.length;
    for (let done = 0; done < len; ) {
      const a = buffer.user_data + offset + done;
      const n = Math.min(len - done, PAGE_SIZE - (a % PAGE_SIZE));
      const pa = this.bufferPa(a);
      if (pa < 0) return false;
      kasanCheck(this.k, pa, n, true, 'binder_alloc_copy_to_buffer');
      phys.u8.set(n === len ? data : data.subarray(done, done + n), pa);
      done += n;
    }
    return true;
  }

  /** binder_alloc_copy_from_buffer: kernel bytes out, or null if not accessible. */
  copy_from_buffer(buffer: BinderBuffer, offset: number, len: number): Uint8Array | null {
    if (!this.check_buffer(buffer, offset, len)) return null;
    const out = new Uint8Array(len);
    const phys = this.k.machine.phys;
    for (let done = 0; done < len; ) {
      const a = buffer.user_data + offset + done;
      const n = Math.min(len - done, PAGE_SIZE - (a % PAGE_SIZE));
      const pa = this.bufferPa(a);
      if (pa < 0) return null;
      kasanCheck(this.k, pa, n, false, 'binder_alloc_copy_from_buffer');
      out.set(phys.u8.subarray(pa, pa + n), done);
      done += n;
    }
    return out;
  }

  // ---- reclaim and release ------------------------------------------------------------------

  /**
   * list_lru_isolate for page `index` from inside the shrinker callback, then drop the LRU lock
   * (the callback returns LRU_REMOVED_RETRY).
   */
  isolate(index: number): void {
    this.lru.del(this, index);
    if (this.lru.lock.owner) this.lru.lock.unlock();
  }

  /** The user address of page `index`. */
  pageAddr(index: number): number {
    return this.vm_start + index * PAGE_SIZE;
  }

  /**
   * binder_alloc_deferred_release: after the file's last reference went (the VMA is gone), free
   * every buffer and every page. BUG if still mapped.
   */
  *deferred_release(): KGen {
    const k = this.k;
    yield* this.mutex.lock('binder_alloc_deferred_release');
    try {
      if (this.mapped) k.report({ kind: 'BUG', title: 'kernel BUG at drivers/android/binder_alloc.c: binder_alloc_deferred_release', text: `BUG_ON(alloc->mapped) in binder_alloc_deferred_release for pid ${this.pid}`, data: {} });
      for (const b of [...this.allocated.values()]) {
        if (b.clear_on_free) {
          this.clear_buf(b);
          b.clear_on_free = false;
        }
        b.transaction = null;
        this.free_buf_locked(b);
      }
      this.head = null;
      for (let i = 0; i < this.pages.length; i++) {
        if (this.pages[i]! < 0) continue;
        this.lru.del(this, i);
        this.freeInstalledPage(i, 'binder_free_page <- binder_alloc_deferred_release');
      }
      k.pageRefHolders.delete(this);
    } finally {
      this.mutex.unlock();
    }
  }
}
