/**
 * kernel/mm/mm_types.ts — mm_struct, vm_area_struct, the VM_* flags and the vm_operations
 * interface (include/linux/mm_types.h, include/linux/mm.h).
 *
 * VM_* values are Linux's (x86-64); VM_MAY* == VM_* << 4 for read/write/exec, which mprotect
 * relies on. An mm keeps its VMAs in an ordered tree keyed by vm_start (Linux uses the maple
 * tree); find_vma and vma_lookup are O(log n).
 *
 * Deviation: addresses and page offsets are numbers (user addresses are below 2^47, page offsets
 * below 2^53), so no bigint appears on these paths.
 */

import type { Kernel } from '../kernel.ts';
import type { KGen, Task } from '../sched/core.ts';
import { RbTree, type RbNode } from '../lib/rbtree.ts';
import type { RwSemaphore } from '../locking/rwsem.ts';
import type { File } from '../fs/file.ts';

export const PAGE_SHIFT = 12;
export const PAGE_SIZE = 4096;
export const PAGE_MASK = ~(PAGE_SIZE - 1);
/** TASK_SIZE on x86-64 with 4-level paging: the top of user space (exclusive). */
export const TASK_SIZE = 0x7ffffffff000;
/** mmap_min_addr default. */
export const MMAP_MIN_ADDR = 0x10000;
/** The top-down mmap base (below the stack gap). */
export const MMAP_BASE = 0x7f0000000000;

export const VM_NONE = 0x0;
export const VM_READ = 0x1;
export const VM_WRITE = 0x2;
export const VM_EXEC = 0x4;
export const VM_SHARED = 0x8;
export const VM_MAYREAD = 0x10;
export const VM_MAYWRITE = 0x20;
export const VM_MAYEXEC = 0x40;
export const VM_MAYSHARE = 0x80;
export const VM_GROWSDOWN = 0x100;
export const VM_UFFD_MISSING = 0x200;
export const VM_PFNMAP = 0x400;
export const VM_MAYBE_GUARD = 0x800;
export const VM_UFFD_WP = 0x1000;
export const VM_LOCKED = 0x2000;
export const VM_IO = 0x4000;
export const VM_SEQ_READ = 0x8000;
export const VM_RAND_READ = 0x10000;
export const VM_DONTCOPY = 0x20000;
export const VM_DONTEXPAND = 0x40000;
export const VM_LOCKONFAULT = 0x80000;
export const VM_ACCOUNT = 0x100000;
export const VM_NORESERVE = 0x200000;
export const VM_HUGETLB = 0x400000;
export const VM_SYNC = 0x800000;
export const VM_ARCH_1 = 0x1000000;
export const VM_WIPEONFORK = 0x2000000;
export const VM_DONTDUMP = 0x4000000;
export const VM_SOFTDIRTY = 0x8000000;
export const VM_MIXEDMAP = 0x10000000;
export const VM_HUGEPAGE = 0x20000000;
export const VM_NOHUGEPAGE = 0x40000000;
export const VM_MERGEABLE = 0x80000000;

export const VM_ACCESS_FLAGS = VM_READ | VM_WRITE | VM_EXEC;
export const VM_SPECIAL = VM_IO | VM_DONTEXPAND | VM_PFNMAP | VM_MIXEDMAP;
export const VM_LOCKED_MASK = VM_LOCKED | VM_LOCKONFAULT;
/** Flags that merging ignores and propagates (VM_IGNORE_MERGE / VM_STICKY). */
export const VM_IGNORE_MERGE = VM_SOFTDIRTY | VM_MAYBE_GUARD;
export const VM_COPY_ON_FORK = VM_PFNMAP | VM_MIXEDMAP | VM_UFFD_WP | VM_MAYBE_GUARD;
export const VM_REMAP_FLAGS = VM_IO | VM_PFNMAP | VM_DONTEXPAND | VM_DONTDUMP;
export const VM_STACK = VM_GROWSDOWN;

/** Two-letter VmFlags codes of /proc/PID/smaps, in bit order (fs/proc/task_mmu.c). */
export const VM_FLAG_CODES: [number, string][] = [
  [VM_READ, 'rd'],
  [VM_WRITE, 'wr'],
  [VM_EXEC, 'ex'],
  [VM_SHARED, 'sh'],
  [VM_MAYREAD, 'mr'],
  [VM_MAYWRITE, 'mw'],
  [VM_MAYEXEC, 'me'],
  [VM_MAYSHARE, 'ms'],
  [VM_GROWSDOWN, 'gd'],
  [VM_UFFD_MISSING, 'um'],
  [VM_PFNMAP, 'pf'],
  [VM_MAYBE_GUARD, 'gu'],
  [VM_UFFD_WP, 'uw'],
  [VM_LOCKED, 'lo'],
  [VM_IO, 'io'],
  [VM_SEQ_READ, 'sr'],
  [VM_RAND_READ, 'rr'],
  [VM_DONTCOPY, 'dc'],
  [VM_DONTEXPAND, 'de'],
  [VM_LOCKONFAULT, 'lf'],
  [VM_ACCOUNT, 'ac'],
  [VM_NORESERVE, 'nr'],
  [VM_HUGETLB, 'ht'],
  [VM_SYNC, 'sf'],
  [VM_ARCH_1, 'ar'],
  [VM_WIPEONFORK, 'wf'],
  [VM_DONTDUMP, 'dd'],
  [VM_SOFTDIRTY, 'sd'],
  [VM_MIXEDMAP, 'mm'],
  [VM_HUGEPAGE, 'hg'],
  [VM_NOHUGEPAGE, 'nh'],
  [VM_MERGEABLE, 'mg'],
];

export function vmFlagNames(flags: number): string {
  return VM_FLAG_CODES.filter(([b]) => (flags & b) !== 0).map(([, n]) => n).join(' ');
}

/** is_cow_mapping(): private and may be made writable. */
/** stack_guard_gap (its default; Linux's stack_guard_gap= boot parameter): 256 pages. */
export const STACK_GUARD_GAP = 256 * PAGE_SIZE;

/**
 * vm_start_gap: the lowest address a mapping below `vma` may reach: a stack (VM_GROWSDOWN) keeps
 * stack_guard_gap free below it (0 if that would wrap).
 */
export function vm_start_gap(vma: VmArea): number {
  if (!(vma.vm_flags & VM_GROWSDOWN)) return vma.vm_start;
  return Math.max(vma.vm_start - STACK_GUARD_GAP, 0);
}

export function is_cow_mapping(flags: number): boolean {
  return (flags & (VM_SHARED | VM_MAYWRITE)) === VM_MAYWRITE;
}

// ---- faults ------------------------------------------------------------------------------------

export const VM_FAULT_OOM = 0x000001;
export const VM_FAULT_SIGBUS = 0x000002;
export const VM_FAULT_MAJOR = 0x000004;
export const VM_FAULT_HWPOISON = 0x000010;
export const VM_FAULT_SIGSEGV = 0x000040;
export const VM_FAULT_NOPAGE = 0x000100;
export const VM_FAULT_LOCKED = 0x000200;
export const VM_FAULT_RETRY = 0x000400;
export const VM_FAULT_FALLBACK = 0x000800;
export const VM_FAULT_DONE_COW = 0x001000;
export const VM_FAULT_NEEDDSYNC = 0x002000;
export const VM_FAULT_COMPLETED = 0x004000;
export const VM_FAULT_ERROR = VM_FAULT_OOM | VM_FAULT_SIGBUS | VM_FAULT_SIGSEGV | VM_FAULT_HWPOISON;

export const FAULT_FLAG_WRITE = 1 << 0;
export const FAULT_FLAG_MKWRITE = 1 << 1;
export const FAULT_FLAG_ALLOW_RETRY = 1 << 2;
export const FAULT_FLAG_RETRY_NOWAIT = 1 << 3;
export const FAULT_FLAG_KILLABLE = 1 << 4;
export const FAULT_FLAG_TRIED = 1 << 5;
export const FAULT_FLAG_USER = 1 << 6;
export const FAULT_FLAG_REMOTE = 1 << 7;
export const FAULT_FLAG_INSTRUCTION = 1 << 8;
export const FAULT_FLAG_INTERRUPTIBLE = 1 << 9;
export const FAULT_FLAG_UNSHARE = 1 << 10;
export const FAULT_FLAG_ORIG_PTE_VALID = 1 << 11;
export const FAULT_FLAG_VMA_LOCK = 1 << 12;

/** struct vm_fault. */
export interface VmFault {
  vma: VmArea;
  address: number;
  pgoff: number;
  flags: number;
  /** Set by ->fault: a referenced page (pfn) for the core to map. */
  page: number;
}

/** vm_operations_struct: the hooks a driver or filesystem attaches to a VMA. */
export interface VmOperations {
  readonly name?: string;
  open?(vma: VmArea): void;
  close?(vma: VmArea): void;
  /** May sleep; returns VM_FAULT_* (0 with vmf.page set, or VM_FAULT_NOPAGE after inserting itself). */
  fault?(vmf: VmFault): KGen<number> | number;
  /** Present means ->fault can run under the per-VMA lock (do_fault_around). */
  map_pages?: unknown;
  may_split?(vma: VmArea, addr: number): number;
  mremap?(vma: VmArea): number;
  /** The [name] shown in /proc/PID/maps. */
  nameOf?(vma: VmArea): string | null;
}

/** vm_area_struct. */
export class VmArea {
  readonly id: number;
  vm_start: number;
  vm_end: number;
  vm_pgoff = 0;
  vm_flags: number;
  vm_ops: VmOperations | null = null;
  vm_file: File | null = null;
  vm_private_data: unknown = null;
  /** anon_vma: set once a private mapping holds anonymous pages (an identity for merging/fork). */
  anon_vma: AnonVma | null = null;
  /** userfaultfd context attached by UFFDIO_REGISTER. */
  vm_userfaultfd_ctx: unknown = null;
  /** Protection key (x86 VM_PKEY_BIT*), 0 by default. */
  pkey = 0;
  /** Anonymous VMA name (prctl PR_SET_VMA_ANON_NAME), e.g. "[anon:NAME]". */
  anon_name: string | null = null;

  // ---- per-VMA lock (include/linux/mmap_lock.h) ----
  /** 0 detached; 1 attached; >1 readers present. */
  vm_refcnt = 0;
  /** mm_lock_seq when last write-locked (-1: never). */
  vm_lock_seq = -1;
  /** A writer is excluding readers (VM_REFCNT_EXCLUDE_READERS_FLAG). */
  excludeReaders = false;
  /** Tasks holding this VMA's read lock (for lockdep and checks). */
  readers: Task[] = [];
  /** Set when the VMA has been freed (any later use is a use-after-free of the VMA). */
  freed = false;
  /** Bumped whenever the VMA changes identity in a way a cached reference must notice. */
  generation = 0;
  /**
   * Free space a new mapping may take below this VMA: from the previous VMA's end (or
   * mmap_min_addr) to vm_start_gap (for the gap tree; 0 when the guard gap covers it).
   */
  gapBefore = 0;

  constructor(
    public vm_mm: MmStruct,
    start: number,
    end: number,
    flags: number,
  ) {
    this.id = vm_mm.kernel.ids.vma++;
    this.vm_start = start;
    this.vm_end = end;
    this.vm_flags = flags;
  }

  get pages(): number {
    return (this.vm_end - this.vm_start) / PAGE_SIZE;
  }

  /** Page offset of `addr` within the mapped object. */
  pgoffOf(addr: number): number {
    return this.vm_pgoff + (addr - this.vm_start) / PAGE_SIZE;
  }

  /** The last page offset covered (vma_last_pgoff). */
  get lastPgoff(): number {
    return this.vm_pgoff + this.pages - 1;
  }

  isAnonymous(): boolean {
    return this.vm_ops === null && this.vm_file === null;
  }

  toString(): string {
    return `vma ${this.vm_start.toString(16)}-${this.vm_end.toString(16)} ${vmFlagNames(this.vm_flags)}`;
  }
}

/** anon_vma: ties the anonymous pages of a VMA and its fork children together (mm/rmap.c). */
export class AnonVma {
  readonly id: number;
  /** Root anon_vma of the fork tree. */
  root: AnonVma = this;
  constructor(
    k: Kernel,
    readonly parent: AnonVma | null = null,
  ) {
    this.id = k.ids.anonVma++;
    if (parent) this.root = parent.root;
  }
}

/** MM counters (enum { MM_FILEPAGES, MM_ANONPAGES, MM_SWAPENTS, MM_SHMEMPAGES }). */
export interface RssStat {
  file: number;
  anon: number;
  swap: number;
  shmem: number;
}

/** mm_struct. */
export class MmStruct {
  /** Physical address of the PGD (PML4 or PML5 page). */
  pgd = 0;
  /** VMAs ordered by vm_start (Linux: the maple tree mm_mt). */
  readonly mm_mt: RbTree<number, VmArea>;
  private readonly nodes = new Map<VmArea, RbNode<number, VmArea>>();
  map_count = 0;
  /** mm_users: users of the address space (threads, mmget). */
  mm_users = 1;
  /** mm_count: references to the struct (mmgrab), one held on behalf of all mm_users. */
  mm_count = 1;
  /** The mmap lock and its sequence count (mm_lock_seq). */
  mmap_lock!: RwSemaphore;
  mm_lock_seq = 0;
  /** context.ctx_id / context.tlb_gen (arch/x86/include/asm/mmu.h). */
  readonly ctx_id: number;
  tlb_gen = 1;
  /** mm_cpumask. */
  readonly cpumask = new Set<number>();
  /** Number of mmu_gather batches in flight (tlb_flush_pending). */
  tlb_flush_pending = 0;
  readonly rss: RssStat = { file: 0, anon: 0, swap: 0, shmem: 0 };
  /** Pages mapped from hugetlb (mm->hugetlb_usage, in 4 KiB pages; not part of RSS). */
  hugetlb_usage = 0;
  /** Page-table pages of this mm (VmPTE accounting). */
  pgtables_bytes = 0;
  /** Peak RSS in pages. */
  hiwater_rss = 0;
  /** Peak total_vm in pages (VmPeak); kept by the total_vm setter, so every change is seen. */
  hiwater_vm = 0;
  private total_vm_ = 0;
  /** Pages of all VMAs (VmSize). */
  get total_vm(): number {
    return this.total_vm_;
  }
  set total_vm(pages: number) {
    this.total_vm_ = pages;
    if (pages > this.hiwater_vm) this.hiwater_vm = pages;
  }
  /** Owner task group (for reports). */
  owner: Task | null = null;
  /** Set once exit_mmap ran (address space torn down). */
  dead = false;
  /** The mmap_base for top-down allocation. */
  mmap_base = MMAP_BASE;
  /** Start of the heap (brk) area; unused by default. */
  start_brk = 0;
  brk = 0;
  /** Start of the initial stack (mm->start_stack): the VMA containing it is [stack] in maps; 0 = none. */
  start_stack = 0;
  /** Flags (MMF_HAS_PINNED …). */
  flags = 0;
  /** write_protect_seq (fork's copy_page_range in progress when odd). */
  write_protect_seq = 0;

  constructor(readonly kernel: Kernel) {
    this.ctx_id = kernel.ids.ctx++;
    kernel.mms.add(this);
    // Augmented with the largest gap below any VMA of the subtree (the old rbtree mm's
    // rb_subtree_gap), so get_unmapped_area finds a hole in O(log n).
    this.mm_mt = new RbTree<number, VmArea>((a, b) => a - b, {
      compute: (n) => Math.max(n.value.gapBefore, n.left ? n.left.aug : 0, n.right ? n.right.aug : 0),
    });
  }

  /** Recompute the gap below `vma` and below its successor after a change of ranges. */
  refreshGaps(vma: VmArea | null): void {
    if (!vma) return;
    const n = this.nodes.get(vma);
    if (!n) return;
    const prev = this.mm_mt.prev(n);
    vma.gapBefore = Math.max(vm_start_gap(vma) - (prev ? prev.value.vm_end : MMAP_MIN_ADDR), 0);
    this.mm_mt.propagate(n);
    const next = this.mm_mt.next(n);
    if (next) {
      next.value.gapBefore = Math.max(vm_start_gap(next.value) - vma.vm_end, 0);
      this.mm_mt.propagate(next);
    }
  }

  /**
   * The highest free range of `len` bytes inside [low, high) (top-down get_unmapped_area), or -1.
   * The range above the last VMA counts too.
   */
  findGapTopDown(len: number, low: number, high: number): number {
    const last = this.mm_mt.last();
    const top = Math.min(high, TASK_SIZE);
    if (!last || last.value.vm_end <= top - len) {
      const start = top - len;
      const floor = last ? last.value.vm_end : low;
      if (start >= Math.max(floor, low)) return start;
    }
    // Descend preferring higher addresses, pruned by the subtree's largest gap.
    const visit = (n: RbNode<number, VmArea> | null): number => {
      if (!n || n.aug < len) return -1;
      const r = visit(n.right);
      if (r >= 0) return r;
      const v = n.value;
      const below = vm_start_gap(v);
      const gapEnd = Math.min(below, top);
      const gapStart = Math.max(below - v.gapBefore, low);
      if (gapEnd - gapStart >= len) return gapEnd - len;
      return visit(n.left);
    };
    return visit(this.mm_mt.root);
  }

  /** find_vma: the first VMA with vm_end > addr. */
  find_vma(addr: number): VmArea | null {
    // The VMA containing addr, or the next one. VMAs do not overlap, so the candidate is the last
    // one starting at or below addr (if it still covers addr) or the one after it.
    const n = this.mm_mt.floor(addr);
    if (n && n.value.vm_end > addr) return n.value;
    const next = n ? this.mm_mt.next(n) : this.mm_mt.first();
    return next ? next.value : null;
  }

  /** vma_lookup: the VMA containing addr, or null. */
  vma_lookup(addr: number): VmArea | null {
    const n = this.mm_mt.floor(addr);
    return n && n.value.vm_end > addr ? n.value : null;
  }

  /** The VMA before `vma`, or null. */
  prevVma(vma: VmArea): VmArea | null {
    const n = this.nodes.get(vma);
    if (!n) return null;
    const p = this.mm_mt.prev(n);
    return p ? p.value : null;
  }

  nextVma(vma: VmArea): VmArea | null {
    const n = this.nodes.get(vma);
    if (!n) return null;
    const p = this.mm_mt.next(n);
    return p ? p.value : null;
  }

  /** Insert a VMA into the tree (vma_link's tree part). */
  treeInsert(vma: VmArea): void {
    if (this.nodes.has(vma)) throw new Error('VMA inserted twice');
    this.nodes.set(vma, this.mm_mt.insert(vma.vm_start, vma));
    this.map_count++;
    this.total_vm += vma.pages;
    this.refreshGaps(vma);
  }

  treeRemove(vma: VmArea): void {
    const n = this.nodes.get(vma);
    if (!n) throw new Error('removing a VMA that is not in the tree');
    const next = this.mm_mt.next(n);
    this.mm_mt.erase(n);
    this.nodes.delete(vma);
    this.map_count--;
    this.total_vm -= vma.pages;
    if (next) this.refreshGaps(next.value);
  }

  /** After vm_start of a linked VMA changed: re-key it. */
  treeRekey(vma: VmArea, oldPages: number): void {
    const n = this.nodes.get(vma);
    if (!n) throw new Error('re-keying a VMA that is not in the tree');
    this.mm_mt.erase(n);
    this.nodes.set(vma, this.mm_mt.insert(vma.vm_start, vma));
    this.total_vm += vma.pages - oldPages;
    this.refreshGaps(vma);
  }

  inTree(vma: VmArea): boolean {
    return this.nodes.has(vma);
  }

  /** All VMAs in address order. */
  vmas(): VmArea[] {
    return this.mm_mt.values();
  }

  /** VMAs overlapping [start, end). */
  vmasIn(start: number, end: number): VmArea[] {
    const out: VmArea[] = [];
    let v = this.find_vma(start);
    while (v && v.vm_start < end) {
      out.push(v);
      v = this.nextVma(v);
    }
    return out;
  }

  get rssPages(): number {
    return this.rss.file + this.rss.anon + this.rss.shmem;
  }

  /**
   * mm->locked_vm in pages (VmLck): Linux adds a mapping's pages when __mmap_complete keeps its
   * VM_LOCKED (and brk, mremap, mlock adjust it); munmap and mremap take them off again. Every
   * path mmulab has that sets, keeps or drops VM_LOCKED (mmap, split, merge, munmap, mremap,
   * fork, exit) does the same to this sum, so it is derived from the VMAs instead of kept.
   */
  get locked_vm(): number {
    let n = 0;
    for (const v of this.mm_mt.values()) if (v.vm_flags & VM_LOCKED) n += v.pages;
    return n;
  }
}
