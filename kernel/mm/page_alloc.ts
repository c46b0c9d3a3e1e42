/**
 * kernel/mm/page_alloc.ts — the buddy page allocator and the per-frame metadata that stands in
 * for struct page (mm/page_alloc.c, include/linux/mm_types.h, include/linux/page-flags.h).
 *
 * struct page is eight parallel typed arrays, 32 bytes per frame (a 4 GiB machine needs 32 MiB):
 *   refcount  _refcount                  mapcount  _mapcount + 1 (0 = not mapped)
 *   flags     page flags, buddy order in bits 28:24
 *   mapping   id of the owner (address_space, anon_vma) — for free blocks, the next free block
 *   index     page offset in its mapping           — for free blocks, the previous free block
 *   priv      page->private (drivers)
 *   allocSite, freeSite   interned call chains of the last allocation and free (for KASAN)
 * As in Linux, a free block's list links reuse the fields an allocated page uses for its owner.
 *
 * Free blocks are kept per order (0 to MAX_ORDER = 10, i.e. 4 MiB) in LIFO lists, so allocation is
 * deterministic. A freed frame is poisoned with PAGE_POISON (0xaa, whose low bit is clear: a stale
 * page-table walk through a freed table sees P=0) and marked in the hardware's frame-watch map, so
 * any CPU access to it — through a page table or a stale TLB entry — is reported (KASAN-style) by
 * the kernel's watch hook; kernel accesses go through kernel/mm/kasan.ts, which checks the same
 * state. The poison is written when the frame is first read while free, or allocated without
 * __GFP_ZERO (deferPoison): the watch hook and kasanCheck run before the access reads, so every
 * reader sees what eager poisoning gives, while the common reuse — an allocation that zeroes the
 * frame — writes it once instead of twice (about 10% more anonymous faults per second).
 *
 * Deviations: one zone, no per-CPU page lists, no watermarks or compaction; allocation failure is
 * -ENOMEM at once (no reclaim inside the allocator — reclaim is explicit, e.g. binder's shrinker).
 */

import type { PhysicalMemory } from '../../hw/phys.ts';

export const MAX_ORDER = 10;

// Page flags (include/linux/page-flags.h names where Linux has them).
export const PG_locked = 1 << 0;
export const PG_referenced = 1 << 1;
export const PG_dirty = 1 << 2;
export const PG_lru = 1 << 3;
export const PG_reserved = 1 << 4;
export const PG_private = 1 << 5;
export const PG_head = 1 << 6;
export const PG_swapbacked = 1 << 7;
/** PageAnon: mapping is an anon_vma (Linux encodes it in the low bit of ->mapping). */
export const PG_anon = 1 << 8;
/** PageAnonExclusive. */
export const PG_anon_exclusive = 1 << 9;
/** Page types (page_has_type): free in the buddy allocator, page table, slab. */
export const PG_buddy = 1 << 10;
export const PG_table = 1 << 11;
export const PG_slab = 1 << 12;
/** Any page of a free block (not only its head): what the use-after-free detector tests. */
export const PG_free = 1 << 13;
/** Compound tail page. */
export const PG_tail = 1 << 14;
export const PG_hugetlb = 1 << 15;
/** The shared zero page. */
export const PG_zero = 1 << 16;
/** Owned by a driver that allocated it (binder's pages); informational. */
export const PG_driver = 1 << 17;
/** Page has a FOLL_PIN (refcount carries GUP_PIN_COUNTING_BIAS). Informational. */
export const PG_pinned = 1 << 18;

export const ORDER_SHIFT = 24;
export const ORDER_MASK = 0x1f << ORDER_SHIFT;

/** Names for dumps (dump_page's flags line). */
export const PAGE_FLAG_NAMES: [number, string][] = [
  [PG_locked, 'locked'],
  [PG_referenced, 'referenced'],
  [PG_dirty, 'dirty'],
  [PG_lru, 'lru'],
  [PG_reserved, 'reserved'],
  [PG_private, 'private'],
  [PG_head, 'head'],
  [PG_swapbacked, 'swapbacked'],
  [PG_anon, 'anon'],
  [PG_anon_exclusive, 'anon_exclusive'],
  [PG_buddy, 'buddy'],
  [PG_table, 'table'],
  [PG_slab, 'slab'],
  [PG_tail, 'tail'],
  [PG_hugetlb, 'hugetlb'],
  [PG_zero, 'zero'],
  [PG_driver, 'driver'],
];

/** GFP flags used by mmulab (include/linux/gfp_types.h names). */
export const __GFP_ZERO = 1 << 0;
export const __GFP_HIGHMEM = 1 << 1;
export const __GFP_COMP = 1 << 2;
export const __GFP_NOWARN = 1 << 3;
export const __GFP_NORETRY = 1 << 4;
export const GFP_KERNEL = 1 << 8;
export const GFP_NOWAIT = 1 << 9;
export const GFP_HIGHUSER_MOVABLE = GFP_KERNEL | __GFP_HIGHMEM | (1 << 10);

export function gfpNames(gfp: number): string {
  const parts: string[] = [];
  if (gfp & GFP_KERNEL) parts.push(gfp & (1 << 10) ? 'GFP_HIGHUSER_MOVABLE' : 'GFP_KERNEL');
  if (gfp & GFP_NOWAIT) parts.push('GFP_NOWAIT');
  if (gfp & __GFP_ZERO) parts.push('__GFP_ZERO');
  if (gfp & __GFP_HIGHMEM && !(gfp & (1 << 10))) parts.push('__GFP_HIGHMEM');
  if (gfp & __GFP_COMP) parts.push('__GFP_COMP');
  if (gfp & __GFP_NOWARN) parts.push('__GFP_NOWARN');
  return parts.length ? parts.join('|') : 'none';
}

/** PAGE_POISON (include/linux/poison.h): what freed pages are filled with. */
/**
 * Anything in the kernel that holds page references outside page tables (page cache, pipe
 * buffers, GUP pins, mmu_gather batches, driver page arrays) registers as a holder, so the
 * invariant checker (kernel/mm/debug_vm.ts) can account for every reference.
 */
export interface PageRefHolder {
  readonly holderName: string;
  /** Emit each page this holder has references on, with how many (default 1). */
  forEachPageRef(emit: (pfn: number, refs?: number) => void): void;
}

export const PAGE_POISON = 0xaa;
const POISON_WORD = 0xaaaaaaaa | 0;
/** The frame-watch value of a freed frame: poisoned, or with its poison still to be written. */
const WATCH_POISONED = 1;
const WATCH_POISON_PENDING = 2;

/** Interned call chains, so each frame stores an id. */
export class SiteTable {
  private readonly ids = new Map<string, number>();
  private readonly names: string[] = [''];
  id(site: string): number {
    let i = this.ids.get(site);
    if (i === undefined) {
      i = this.names.length;
      this.names.push(site);
      this.ids.set(site, i);
    }
    return i;
  }
  name(id: number): string {
    return this.names[id] ?? '';
  }
}

/** Who allocated or freed a frame last: a call chain and the task. */
export interface SiteRecord {
  chain: string;
  pid: number;
}

export interface PageAllocHooks {
  /** Called after an allocation (tracepoint kmem:mm_page_alloc). */
  onAlloc?(pfn: number, order: number, gfp: number): void;
  /** Called after a free (tracepoint kmem:mm_page_free). */
  onFree?(pfn: number, order: number): void;
  /** The pid to record as allocating/freeing task. */
  currentPid?(): number;
  /** A free of a page in a bad state (Linux: "BUG: Bad page state"). */
  badPage?(pfn: number, reason: string): void;
}

export class PageAllocator {
  readonly nframes: number;
  readonly refcount: Int32Array;
  readonly mapcount: Int32Array;
  readonly flags: Uint32Array;
  readonly mapping: Int32Array;
  readonly index: Uint32Array;
  readonly priv: Int32Array;
  readonly allocSite: Int32Array;
  readonly freeSite: Int32Array;
  readonly sites = new SiteTable();
  /** Head of each order's free list, or -1. */
  private readonly freeHead: Int32Array;
  readonly nrFree: Int32Array;
  /** Frames currently free (all orders, counted in frames). */
  freeFrames = 0;
  /** The shared zero page (ZERO_PAGE(0)). */
  readonly zeroPfn: number;
  /** Frames in the reserved range at the bottom (never allocated). */
  readonly reservedFrames: number;
  hooks: PageAllocHooks = {};
  /**
   * Defer the poisoning of freed frames until something reads them (default true). A freed frame
   * is marked in the frame-watch map either way, so every CPU access to it reaches the kernel's
   * hook, which writes the poison before the access reads; an allocation with __GFP_ZERO
   * overwrites it anyway, and one without writes it. What any reader sees is what eager
   * poisoning gives; only the time of the write differs. The parallel engine turns it off while
   * workers run (they read frames with no kernel hook in between).
   */
  deferPoison = true;
  /** Counters. */
  allocs = 0;
  frees = 0;
  failures = 0;

  constructor(
    readonly phys: PhysicalMemory,
    opts: { reservedFrames?: number } = {},
  ) {
    const n = phys.frames;
    this.nframes = n;
    this.refcount = new Int32Array(n);
    this.mapcount = new Int32Array(n);
    this.flags = new Uint32Array(n);
    this.mapping = new Int32Array(n);
    this.index = new Uint32Array(n);
    this.priv = new Int32Array(n);
    this.allocSite = new Int32Array(n);
    this.freeSite = new Int32Array(n);
    this.freeHead = new Int32Array(MAX_ORDER + 1).fill(-1);
    this.nrFree = new Int32Array(MAX_ORDER + 1);
    this.reservedFrames = Math.max(1, opts.reservedFrames ?? 1);
    if (this.reservedFrames + 2 > n) throw new RangeError('not enough memory for the page allocator');
    // Frames below reservedFrames (at least frame 0) are reserved and never handed out, so a
    // pfn of 0 can mean "none".
    for (let pfn = 0; pfn < this.reservedFrames; pfn++) {
      this.flags[pfn] = PG_reserved;
      this.refcount[pfn] = 1;
    }
    // Free the rest in the largest naturally aligned blocks that fit.
    let pfn = this.reservedFrames;
    while (pfn < n) {
      let order = MAX_ORDER;
      while (order > 0 && (pfn % (1 << order) !== 0 || pfn + (1 << order) > n)) order--;
      this.markFreeBlock(pfn, order);
      this.listAdd(pfn, order);
      pfn += 1 << order;
    }
    // The zero page: a reserved frame that is never freed.
    const z = this.allocPages(__GFP_ZERO, 0, 'zero_page_init');
    if (z < 0) throw new RangeError('no memory for the zero page');
    this.flags[z] |= PG_reserved | PG_zero;
    this.zeroPfn = z;
  }

  // ---- free lists -----------------------------------------------------------------------------

  private listAdd(pfn: number, order: number): void {
    const head = this.freeHead[order]!;
    this.mapping[pfn] = head;
    this.index[pfn] = 0xffffffff;
    if (head >= 0) this.index[head] = pfn;
    this.freeHead[order] = pfn;
    this.nrFree[order]!++;
    this.freeFrames += 1 << order;
  }

  private listDel(pfn: number, order: number): void {
    const next = this.mapping[pfn]!;
    const prevU = this.index[pfn]!;
    const prev = prevU === 0xffffffff ? -1 : prevU;
    if (prev >= 0) this.mapping[prev] = next;
    else this.freeHead[order] = next;
    if (next >= 0) this.index[next] = prev < 0 ? 0xffffffff : prev;
    this.nrFree[order]!--;
    this.freeFrames -= 1 << order;
  }

  /** Flags of every frame of a free block: the head is PG_buddy with its order; all are PG_free. */
  private markFreeBlock(pfn: number, order: number): void {
    const f = this.flags;
    const end = pfn + (1 << order);
    f[pfn] = PG_buddy | PG_free | (order << ORDER_SHIFT);
    for (let p = pfn + 1; p < end; p++) f[p] = PG_free;
  }

  /** Is `pfn` the head of a free block of exactly `order`? */
  private isFreeHead(pfn: number, order: number): boolean {
    const f = this.flags[pfn]!;
    return (f & PG_buddy) !== 0 && (f & ORDER_MASK) >>> ORDER_SHIFT === order;
  }

  // ---- allocation and free ---------------------------------------------------------------------

  /**
   * alloc_pages(gfp, order): a block of 2^order frames with refcount 1 on its first frame, or -1
   * when no block is free. `site` names the call chain for use-after-free reports.
   */
  allocPages(gfp: number, order: number, site: string): number {
    if (!Number.isInteger(order) || order < 0 || order > MAX_ORDER) throw new RangeError(`allocation order ${order} is not 0..${MAX_ORDER}`);
    let o = order;
    while (o <= MAX_ORDER && this.freeHead[o]! < 0) o++;
    if (o > MAX_ORDER) {
      this.failures++;
      return -1;
    }
    const pfn = this.freeHead[o]!;
    this.listDel(pfn, o);
    // Split down to the requested order; the upper halves go back on the free lists.
    while (o > order) {
      o--;
      const buddy = pfn + (1 << o);
      this.markFreeBlock(buddy, o);
      this.listAdd(buddy, o);
    }
    const end = pfn + (1 << order);
    const siteId = this.siteId(site);
    for (let p = pfn; p < end; p++) {
      this.flags[p] = 0;
      this.mapping[p] = 0;
      this.index[p] = 0;
      this.priv[p] = 0;
      this.refcount[p] = 0;
      this.mapcount[p] = 0;
      this.allocSite[p] = siteId;
      const pending = this.phys.watch[p] === WATCH_POISON_PENDING;
      this.phys.watch[p] = 0;
      // A frame handed out without __GFP_ZERO holds the poison, deferred or not.
      if (gfp & __GFP_ZERO) this.phys.fillFrame(p, 0);
      else if (pending) this.phys.fillFrame(p, POISON_WORD);
    }
    this.refcount[pfn] = 1;
    if (order > 0 && gfp & __GFP_COMP) {
      this.flags[pfn] |= PG_head | (order << ORDER_SHIFT);
      for (let p = pfn + 1; p < end; p++) {
        this.flags[p] |= PG_tail;
        this.priv[p] = pfn; // compound_head
      }
    }
    this.allocs++;
    if (this.hooks.onAlloc) this.hooks.onAlloc(pfn, order, gfp);
    return pfn;
  }

  /**
   * __free_pages: return a block to the allocator (refcount must already be 0 — callers use
   * put_page). Poisons and watches the frames, then merges with free buddies.
   */
  freeBlock(pfn: number, order: number, site: string): void {
    const end = pfn + (1 << order);
    const siteId = this.siteId(site);
    for (let p = pfn; p < end; p++) {
      const bad = this.checkFreeable(p);
      if (bad) {
        if (this.hooks.badPage) this.hooks.badPage(p, bad);
        return; // like Linux, a bad page is taken out of circulation
      }
    }
    const defer = this.deferPoison;
    for (let p = pfn; p < end; p++) {
      if (defer) this.phys.watch[p] = WATCH_POISON_PENDING;
      else {
        this.phys.fillFrame(p, POISON_WORD);
        this.phys.watch[p] = WATCH_POISONED;
      }
      this.freeSite[p] = siteId;
      this.mapcount[p] = 0;
    }
    this.frees++;
    if (this.hooks.onFree) this.hooks.onFree(pfn, order);
    let o = order;
    let p = pfn;
    while (o < MAX_ORDER) {
      const buddy = p ^ (1 << o);
      if (buddy < this.reservedFrames || buddy + (1 << o) > this.nframes || !this.isFreeHead(buddy, o)) break;
      this.listDel(buddy, o);
      p = Math.min(p, buddy);
      o++;
    }
    this.markFreeBlock(p, o);
    this.listAdd(p, o);
  }

  /** Why a frame cannot be freed, or null (free_page_is_bad). */
  private checkFreeable(p: number): string | null {
    const f = this.flags[p]!;
    if (f & PG_free) return 'page is already free (double free)';
    if (f & PG_reserved) return 'PAGE_FLAGS_CHECK_AT_FREE flag(s) set: reserved';
    if (this.mapcount[p] !== 0) return 'nonzero mapcount';
    if (this.refcount[p] !== 0) return 'nonzero _refcount';
    return null;
  }

  // ---- references -----------------------------------------------------------------------------

  isFree(pfn: number): boolean {
    return (this.flags[pfn]! & PG_free) !== 0;
  }

  /**
   * Write the poison of a freed frame whose poisoning was deferred (see deferPoison). Every
   * reader of a free frame calls this before it reads: the kernel's frame-watch hook for CPU
   * accesses and page walks, kasanCheck for the kernel's own, and copy_highpage (which KASAN does
   * not check, as copy_page is not instrumented).
   */
  poisonNow(pfn: number): void {
    if (this.phys.watch[pfn] !== WATCH_POISON_PENDING) return;
    this.phys.fillFrame(pfn, POISON_WORD);
    this.phys.watch[pfn] = WATCH_POISONED;
  }

  /**
   * copy_highpage: copy frame `from` into frame `to` (copy-on-write, fork). A freed source (a
   * frame a bug elsewhere left mapped) copies as its poison.
   */
  copy_highpage(to: number, from: number): void {
    this.poisonNow(from);
    this.phys.copyFrame(to, from);
  }

  /** Write every deferred poison now (before code that reads frames without those hooks runs). */
  poisonAllNow(): void {
    const w = this.phys.watch;
    for (let pfn = 0; pfn < this.nframes; pfn++) if (w[pfn] === WATCH_POISON_PENDING) this.poisonNow(pfn);
  }

  /** The first frame of the compound page containing `pfn` (compound_head). */
  head(pfn: number): number {
    return this.flags[pfn]! & PG_tail ? this.priv[pfn]! : pfn;
  }

  /** Order of the allocation headed by `pfn` (0 unless a compound head). */
  orderOf(pfn: number): number {
    const f = this.flags[pfn]!;
    return f & PG_head ? (f & ORDER_MASK) >>> ORDER_SHIFT : 0;
  }

  /** get_page: one more reference (on the compound head). */
  getPage(pfn: number): void {
    const h = this.head(pfn);
    this.refcount[h]!++;
  }

  /**
   * put_page: one reference fewer; the block is freed when the last one goes. Returns true if
   * it was freed.
   */
  putPage(pfn: number, site: string): boolean {
    const h = this.head(pfn);
    const c = --this.refcount[h]!;
    if (c > 0) return false;
    if (c < 0) {
      this.refcount[h] = 0;
      if (this.hooks.badPage) this.hooks.badPage(h, 'put_page on a page with zero refcount');
      return false;
    }
    if (this.flags[h]! & PG_reserved) return false;
    const order = this.orderOf(h);
    for (let p = h; p < h + (1 << order); p++) this.flags[p] &= ~(PG_head | PG_tail | ORDER_MASK);
    this.freeBlock(h, order, site);
    return true;
  }

  /** Site ids by chain, then by pid: the interned key is built only the first time. */
  private readonly siteIds = new Map<string, Map<number, number>>();

  /** The last site id handed out, with its chain and pid (most calls repeat the previous one). */
  private lastSiteChain = '';
  private lastSitePid = -1;
  private lastSiteId = 0;

  /** A site id: the call chain and the current task's pid, interned together. */
  private siteId(chain: string): number {
    const pid = this.hooks.currentPid ? this.hooks.currentPid() : 0;
    if (pid === this.lastSitePid && chain === this.lastSiteChain) return this.lastSiteId;
    const id = this.internSite(chain, pid);
    this.lastSiteChain = chain;
    this.lastSitePid = pid;
    this.lastSiteId = id;
    return id;
  }

  private internSite(chain: string, pid: number): number {
    let byPid = this.siteIds.get(chain);
    if (!byPid) {
      byPid = new Map();
      this.siteIds.set(chain, byPid);
    }
    let id = byPid.get(pid);
    if (id === undefined) {
      id = this.sites.id(`${pid}\u0000${chain}`);
      byPid.set(pid, id);
    }
    return id;
  }

  /** Who allocated and who freed `pfn` last. */
  siteOf(id: number): SiteRecord {
    const s = this.sites.name(id);
    const i = s.indexOf('\u0000');
    return i < 0 ? { chain: s, pid: 0 } : { chain: s.slice(i + 1), pid: Number(s.slice(0, i)) };
  }

  allocRecord(pfn: number): SiteRecord {
    return this.siteOf(this.allocSite[pfn]!);
  }

  freeRecord(pfn: number): SiteRecord {
    return this.siteOf(this.freeSite[pfn]!);
  }

  /** Frames not free: allocated plus reserved. */
  get usedFrames(): number {
    return this.nframes - this.freeFrames;
  }

  /** dump_page's flags text: "flags: 0x…(anon|lru)". */
  flagText(pfn: number): string {
    const f = this.flags[pfn]!;
    const names = PAGE_FLAG_NAMES.filter(([b]) => f & b).map(([, n]) => n);
    return `flags: 0x${f.toString(16)}(${names.join('|')})`;
  }

  /** Check the free lists and counters (invariant checker). Returns the first problem or null. */
  validate(): string | null {
    let frames = 0;
    for (let o = 0; o <= MAX_ORDER; o++) {
      let n = 0;
      let prev = -1;
      for (let p = this.freeHead[o]!; p >= 0; p = this.mapping[p]!) {
        if (!this.isFreeHead(p, o)) return `free list ${o} holds frame ${p} which is not a free block head of that order`;
        const back = this.index[p] === 0xffffffff ? -1 : this.index[p]!;
        if (back !== prev) return `free list ${o}: broken back link at frame ${p}`;
        if (p % (1 << o) !== 0) return `free block ${p} is not aligned to order ${o}`;
        prev = p;
        n++;
        frames += 1 << o;
        if (n > this.nframes) return `free list ${o} loops`;
      }
      if (n !== this.nrFree[o]) return `free list ${o} has ${n} blocks, counter says ${this.nrFree[o]}`;
    }
    if (frames !== this.freeFrames) return `free lists hold ${frames} frames, counter says ${this.freeFrames}`;
    let flagged = 0;
    for (let p = 0; p < this.nframes; p++) if (this.flags[p]! & PG_free) flagged++;
    if (flagged !== frames) return `${flagged} frames are flagged free but the lists hold ${frames}`;
    return null;
  }
}
