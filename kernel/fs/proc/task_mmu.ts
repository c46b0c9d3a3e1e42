/**
 * kernel/fs/proc/task_mmu.ts — the per-process memory views of procfs (fs/proc/task_mmu.c) and
 * the physical-page views (fs/proc/page.c), byte for byte in Linux's formats:
 *
 *   /proc/PID/maps          proc_pid_maps         show_map_vma per VMA
 *   /proc/PID/smaps         proc_pid_smaps        show_smap: the maps line, then the counters
 *   /proc/PID/smaps_rollup  proc_pid_smaps_rollup show_smaps_rollup
 *   /proc/PID/pagemap       pagemap_read          one u64 per virtual page, read like pread()
 *   /proc/PID/status        task_mem              the Vm…, Rss… and HugetlbPages lines
 *   /proc/kpagecount        kpagecount_read       one u64 per pfn: the page's mapcount
 *   /proc/kpageflags        kpageflags_read       one u64 per pfn: stable_page_flags
 *
 * A view takes the kernel and either an mm_struct or a pid. A pid that names no task fails with
 * ENOENT (the /proc/PID directory does not exist), thrown as SyscallError('open'); a task
 * without an address space (a kernel thread, or a process whose main thread has exited) reads
 * as Linux reads it: empty maps/smaps/status memory block, a zero-length pagemap read, and ESRCH
 * from smaps_rollup. Read errors (EINVAL for a misaligned pagemap or kpage* read) are thrown as
 * SyscallError('read').
 *
 * The counters are computed as smaps_pte_entry/smaps_account compute them: a present entry's
 * page is vm_normal_page (special entries — the zero page, PFN maps — are not counted); PSS is
 * fixed point with PSS_SHIFT 12, each page adding (PAGE_SIZE << 12) / mapcount when it is mapped
 * more than once; a page whose refcount is 1 is private without looking at the mapcount; dirty
 * is the PTE's D bit or PG_dirty, referenced the A bit or PG_referenced; Locked is the PSS of
 * VM_LOCKED VMAs; VM_PFNMAP VMAs are skipped (walk_page_test) and hugetlb VMAs only count in
 * Shared_Hugetlb/Private_Hugetlb (by the huge page's mapcount).
 *
 * mmulab lacks some of the data behind Linux's fields; each such field prints what Linux prints
 * on a system without the feature:
 *   - no swap: Swap, SwapPss and VmSwap are 0 kB (from MM_SWAPENTS, which stays 0), pagemap
 *     bit 62 and the swap type/offset encoding never appear;
 *   - no KSM: KSM is 0 kB, kpageflags bit 21 is never set;
 *   - no THP: AnonHugePages, ShmemPmdMapped and FilePmdMapped are 0 kB, THPeligible is 0, and
 *     kpageflags bit 22 is never set (the PMD-leaf paths are still written out as Linux has
 *     them, for completeness);
 *   - no lazy freeing (MADV_FREE zaps at once) and no PG_swapbacked on anonymous pages: Linux
 *     marks every anonymous folio swap-backed until MADV_FREE clears it, so the views treat
 *     every anonymous page as swap-backed — LazyFree is 0 kB and kpageflags shows SWAPBACKED;
 *   - no guard-region markers: pagemap bit 58 is never set; no uffd-wp markers on non-present
 *     entries (bit 57 comes from present entries' _PAGE_UFFD_WP only);
 *   - no executable image (mm->start_code == mm->end_code == 0): VmExe is 0 kB and every
 *     executable mapping counts as VmLib, exactly as task_mem splits them;
 *   - no pinned_vm accounting (no RDMA/vfio): VmPin is 0 kB;
 *   - mm->locked_vm, data_vm, exec_vm and stack_vm are not kept as counters: they are summed
 *     from the VMAs (MmStruct.locked_vm: the VM_LOCKED pages, which __mmap_complete never leaves
 *     on a VM_SPECIAL or hugetlb VMA; vm_stat_account's classification for the others), which is
 *     what those counters hold in Linux;
 *   - mm->pgtables_bytes in mmulab also counts the pgd (and p4d tables with LA57), which Linux
 *     does not account: VmPTE subtracts them;
 *   - no PG_uptodate/PG_active/PG_mlocked/PG_idle in struct page: those kpageflags bits are 0;
 *     hugetlb folios are recognised by PG_hugetlb or, since mmulab has no THP, as anonymous
 *     compound pages; /proc/kpage* cover exactly the machine's frames (no SPARSEMEM rounding);
 *   - no gate VMA: no [vsyscall] line (as with vsyscall=none); no vDSO/[vvar] unless a driver
 *     names a VMA through vm_ops.nameOf; ProtectionKey is printed only when CR4.PKE is set on
 *     CPU 0 (arch_pkeys_enabled).
 * The views take no locks: they run between simulation steps, when no task is inside the
 * kernel, so the address space cannot change under them.
 */

import type { Kernel } from '../../kernel.ts';
import {
  PAGE_SIZE, TASK_SIZE, VM_EXEC, VM_FLAG_CODES, VM_GROWSDOWN, VM_HUGETLB, VM_LOCKED, VM_MAYSHARE, VM_PFNMAP, VM_READ, VM_SHARED, VM_SOFTDIRTY, VM_WRITE,
  type MmStruct, type VmArea,
} from '../../mm/mm_types.ts';
import { PG_anon, PG_dirty, PG_free, PG_head, PG_hugetlb, PG_locked, PG_lru, PG_private, PG_referenced, PG_reserved, PG_slab, PG_swapbacked, PG_table, PG_tail, PG_zero } from '../../mm/page_alloc.ts';
import { PMD_SIZE, _PAGE_ACCESSED, _PAGE_DIRTY, _PAGE_PRESENT, _PAGE_SOFT_DIRTY, _PAGE_SPECIAL, _PAGE_UFFD_WP, ptePfn } from '../../arch/x86/pgtable.ts';
import { CR4_PKE } from '../../../hw/control-registers.ts';
import { EINVAL, ENOENT, ESRCH, SyscallError } from '../../errno.ts';

/** The target of a view: an address space, or a pid (a task id, as the /proc/PID directories). */
export type ProcTarget = MmStruct | number;

/**
 * proc_mem_open, reduced: the mm behind `target`, or null for a task that has none. An unknown
 * pid is ENOENT, as opening /proc/PID/… would be.
 */
export function proc_mem_open(k: Kernel, target: ProcTarget): MmStruct | null {
  if (typeof target !== 'number') return target;
  const t = Number.isSafeInteger(target) ? k.tasks.get(target) : undefined;
  if (t) return t.mm;
  // A process whose main thread is gone keeps its /proc/TGID directory while other threads
  // live; the leader's mm is NULL then.
  if (Number.isSafeInteger(target) && k.groups.has(target)) return null;
  throw new SyscallError('open', ENOENT);
}

/** mmget_not_zero: a view of an address space that is being torn down reads as empty. */
function mmget_not_zero(mm: MmStruct | null): mm is MmStruct {
  return mm !== null && mm.mm_users > 0 && !mm.dead;
}

function hex(n: number, width: number): string {
  return n.toString(16).padStart(width, '0');
}

/** seq_setwidth(m, 25 + sizeof(void *) * 6 - 1): the name column of maps lines on 64-bit. */
const MAPS_NAME_PAD = 25 + 8 * 6 - 1;

// ================================================================================================
// /proc/PID/maps
// ================================================================================================

/** show_vma_header_prefix: "start-end perms offset major:minor inode " (note the last space). */
function show_vma_header_prefix(start: number, end: number, flags: number, pgoff: bigint, dev: readonly [number, number], ino: number): string {
  const perms = (flags & VM_READ ? 'r' : '-') + (flags & VM_WRITE ? 'w' : '-') + (flags & VM_EXEC ? 'x' : '-') + (flags & VM_MAYSHARE ? 's' : 'p');
  return `${hex(start, 8)}-${hex(end, 8)} ${perms} ${pgoff.toString(16).padStart(8, '0')} ${hex(dev[0], 2)}:${hex(dev[1], 2)} ${ino} `;
}

/** seq_pad(m, ' ') then the name: pad to the name column, one space, the name. */
function padName(prefix: string, name: string): string {
  return prefix.padEnd(MAPS_NAME_PAD, ' ') + ' ' + name;
}

/** seq_path's escaping of the path of a mapped file: "\n" becomes the octal escape "\012". */
function mangle_path(path: string): string {
  return path.replace(/\n/g, '\\012');
}

/** vma_is_initial_heap (include/linux/mm.h). */
function vma_is_initial_heap(vma: VmArea): boolean {
  return vma.vm_start < vma.vm_mm.brk && vma.vm_end > vma.vm_mm.start_brk;
}

/** vma_is_initial_stack (include/linux/mm.h). */
function vma_is_initial_stack(vma: VmArea): boolean {
  return vma.vm_start <= vma.vm_mm.start_stack && vma.vm_end >= vma.vm_mm.start_stack;
}

/**
 * get_vma_name: the name column, or null. Order as in Linux: the file's path (or
 * [anon_shmem:NAME] for a named shared-anonymous mapping), vm_ops->name, [heap], [stack],
 * [anon:NAME].
 */
export function get_vma_name(vma: VmArea): string | null {
  if (vma.vm_file) {
    if (vma.anon_name !== null) return `[anon_shmem:${vma.anon_name}]`;
    return mangle_path(vma.vm_file.path);
  }
  const n = vma.vm_ops?.nameOf?.(vma);
  if (n) return n;
  if (vma_is_initial_heap(vma)) return '[heap]';
  if (vma_is_initial_stack(vma)) return '[stack]';
  if (vma.anon_name !== null) return `[anon:${vma.anon_name}]`;
  return null;
}

/** show_map_vma: one line of /proc/PID/maps, with its newline. */
export function show_map_vma(vma: VmArea): string {
  let dev: readonly [number, number] = [0, 0];
  let ino = 0;
  let pgoff = 0n;
  if (vma.vm_file) {
    const inode = vma.vm_file.f_inode;
    dev = inode.dev;
    ino = inode.i_ino;
    pgoff = BigInt.asUintN(64, BigInt(vma.vm_pgoff) << 12n);
  }
  const prefix = show_vma_header_prefix(vma.vm_start, vma.vm_end, vma.vm_flags, pgoff, dev, ino);
  const name = get_vma_name(vma);
  return (name === null ? prefix : padName(prefix, name)) + '\n';
}

/** /proc/PID/maps. */
export function proc_pid_maps(k: Kernel, target: ProcTarget): string {
  const mm = proc_mem_open(k, target);
  if (!mmget_not_zero(mm)) return '';
  let out = '';
  for (const vma of mm.vmas()) out += show_map_vma(vma);
  return out;
}

// ================================================================================================
// /proc/PID/smaps and smaps_rollup
// ================================================================================================

/** PSS is kept in fixed point: bytes << PSS_SHIFT. */
export const PSS_SHIFT = 12;

/** struct mem_size_stats: byte counts, and PSS values in bytes << PSS_SHIFT. */
export interface MemSizeStats {
  resident: number;
  shared_clean: number;
  shared_dirty: number;
  private_clean: number;
  private_dirty: number;
  referenced: number;
  anonymous: number;
  lazyfree: number;
  anonymous_thp: number;
  shmem_thp: number;
  file_thp: number;
  swap: number;
  shared_hugetlb: number;
  private_hugetlb: number;
  ksm: number;
  pss: number;
  pss_anon: number;
  pss_file: number;
  pss_shmem: number;
  pss_dirty: number;
  pss_locked: number;
  swap_pss: number;
}

function emptyStats(): MemSizeStats {
  return {
    resident: 0, shared_clean: 0, shared_dirty: 0, private_clean: 0, private_dirty: 0, referenced: 0, anonymous: 0, lazyfree: 0, anonymous_thp: 0,
    shmem_thp: 0, file_thp: 0, swap: 0, shared_hugetlb: 0, private_hugetlb: 0, ksm: 0, pss: 0, pss_anon: 0, pss_file: 0, pss_shmem: 0, pss_dirty: 0,
    pss_locked: 0, swap_pss: 0,
  };
}

/**
 * vm_normal_page without side effects: the page behind a present entry, or -1 for a special
 * entry (the zero page, PFN and mixed maps) or a PFN beyond memory. (The kernel's own
 * vm_normal_page files a "bad page map" report on odd entries; a view must not.)
 */
function normalPage(k: Kernel, lo: number, hi: number): number {
  if (lo & _PAGE_SPECIAL) return -1;
  const pfn = ptePfn(lo, hi);
  return pfn < k.pages.nframes ? pfn : -1;
}

/** folio_test_anon. */
function folioAnon(k: Kernel, head: number): boolean {
  return (k.pages.flags[head]! & PG_anon) !== 0;
}

/**
 * folio_test_swapbacked. Linux sets PG_swapbacked on every anonymous folio (MADV_FREE clears
 * it); mmulab sets it on shmem pages only, and has no lazy freeing, so anonymous pages count as
 * swap-backed here.
 */
function folioSwapbacked(k: Kernel, head: number): boolean {
  const f = k.pages.flags[head]!;
  return (f & (PG_swapbacked | PG_anon)) !== 0;
}

/** folio_precise_page_mapcount: mmulab keeps the mapcount of a compound page on its head. */
function preciseMapcount(k: Kernel, pfn: number): number {
  return k.pages.mapcount[k.pages.head(pfn)]!;
}

/** smaps_page_accumulate. */
function smaps_page_accumulate(k: Kernel, mss: MemSizeStats, head: number, size: number, pss: number, dirty: boolean, locked: boolean, priv: boolean): void {
  mss.pss += pss;
  if (folioAnon(k, head)) mss.pss_anon += pss;
  else if (folioSwapbacked(k, head)) mss.pss_shmem += pss;
  else mss.pss_file += pss;
  if (locked) mss.pss_locked += pss;
  if (dirty || k.pages.flags[head]! & PG_dirty) {
    mss.pss_dirty += pss;
    if (priv) mss.private_dirty += size;
    else mss.shared_dirty += size;
  } else if (priv) mss.private_clean += size;
  else mss.shared_clean += size;
}

/** smaps_account for a present entry mapping `pfn` (`nr` pages when it is a PMD leaf). */
function smaps_account(k: Kernel, mss: MemSizeStats, pfn: number, nr: number, young: boolean, dirty: boolean, locked: boolean): void {
  const p = k.pages;
  const head = p.head(pfn);
  const size = nr * PAGE_SIZE;
  if (folioAnon(k, head)) {
    mss.anonymous += size;
    if (!folioSwapbacked(k, head) && !dirty && !(p.flags[head]! & PG_dirty)) mss.lazyfree += size;
  }
  mss.resident += size;
  if (young || p.flags[head]! & PG_referenced) mss.referenced += size;
  // A refcount of 1 means exactly one mapping: private, whatever the mapcount says.
  if (p.refcount[head] === 1) {
    smaps_page_accumulate(k, mss, head, size, size * 2 ** PSS_SHIFT, dirty, locked, true);
    return;
  }
  for (let i = 0; i < nr; i++) {
    const mapcount = preciseMapcount(k, pfn + i);
    let pss = PAGE_SIZE * 2 ** PSS_SHIFT;
    if (mapcount >= 2) pss = Math.floor(pss / mapcount);
    smaps_page_accumulate(k, mss, head, PAGE_SIZE, pss, dirty, locked, mapcount < 2);
  }
}

/** The entry mapping `addr` at page-table level `level` (2 = PMD), or -1 (pt.walk, read-only). */
function entryAt(k: Kernel, mm: MmStruct, addr: number, level: number): number {
  return k.pt.walk(mm, addr, level);
}

/**
 * smap_gather_stats for one VMA (walk_page_vma with smaps_walk_ops): VM_PFNMAP VMAs are not
 * walked; hugetlb VMAs count each huge page as shared or private; other VMAs go leaf by leaf.
 */
export function smap_gather_stats(k: Kernel, vma: VmArea, mss: MemSizeStats = emptyStats()): MemSizeStats {
  const mm = vma.vm_mm;
  if (vma.vm_flags & VM_PFNMAP) return mss;
  const pt = k.pt;
  if (vma.vm_flags & VM_HUGETLB) {
    // smaps_hugetlb_range, once per huge page of the VMA.
    for (let a = vma.vm_start - (vma.vm_start % PMD_SIZE); a < vma.vm_end; a += PMD_SIZE) {
      const pmdp = entryAt(k, mm, a, 2);
      if (pmdp < 0) continue;
      const lo = pt.lo(pmdp);
      if (!(lo & _PAGE_PRESENT)) continue;
      const head = k.pages.head(ptePfn(lo, pt.hi(pmdp)));
      // folio_likely_mapped_shared: for hugetlb, mapped more than once (no PMD sharing here).
      if (k.pages.mapcount[head]! > 1) mss.shared_hugetlb += PMD_SIZE;
      else mss.private_hugetlb += PMD_SIZE;
    }
    return mss;
  }
  const locked = (vma.vm_flags & VM_LOCKED) !== 0;
  pt.forEachLeaf(mm, vma.vm_start, vma.vm_end, (addr, ptep, level) => {
    const lo = pt.lo(ptep);
    const hi = pt.hi(ptep);
    const young = (lo & _PAGE_ACCESSED) !== 0;
    const dirty = (lo & _PAGE_DIRTY) !== 0;
    if (level === 1) {
      const pfn = normalPage(k, lo, hi);
      if (pfn >= 0) smaps_account(k, mss, pfn, 1, young, dirty, locked);
      return;
    }
    if (level === 2) {
      // smaps_pmd_entry (a transparent huge page; mmulab maps none).
      const pfn = ptePfn(lo, hi);
      if (pfn >= k.pages.nframes) return;
      const head = k.pages.head(pfn);
      if (folioAnon(k, head)) mss.anonymous_thp += PMD_SIZE;
      else if (folioSwapbacked(k, head)) mss.shmem_thp += PMD_SIZE;
      else mss.file_thp += PMD_SIZE;
      smaps_account(k, mss, pfn, PMD_SIZE / PAGE_SIZE, young, dirty, locked);
    }
    void addr;
  });
  return mss;
}

/** seq_put_decimal_ull_width(m, label, value, width) for a byte count shown in kB. */
function kb(label: string, bytes: number, width = 8): string {
  return `${label}${String(Math.floor(bytes / 1024)).padStart(width, ' ')} kB\n`;
}

/** A fixed-point PSS value in kB (>> PSS_SHIFT, then >> 10). */
function psskb(label: string, pss: number): string {
  return kb(label, Math.floor(pss / 2 ** PSS_SHIFT));
}

/** __show_smap: the counters common to smaps and smaps_rollup. */
function __show_smap(mss: MemSizeStats, rollup: boolean): string {
  let s = kb('Rss:            ', mss.resident);
  s += psskb('Pss:            ', mss.pss);
  s += psskb('Pss_Dirty:      ', mss.pss_dirty);
  if (rollup) {
    s += psskb('Pss_Anon:       ', mss.pss_anon);
    s += psskb('Pss_File:       ', mss.pss_file);
    s += psskb('Pss_Shmem:      ', mss.pss_shmem);
  }
  s += kb('Shared_Clean:   ', mss.shared_clean);
  s += kb('Shared_Dirty:   ', mss.shared_dirty);
  s += kb('Private_Clean:  ', mss.private_clean);
  s += kb('Private_Dirty:  ', mss.private_dirty);
  s += kb('Referenced:     ', mss.referenced);
  s += kb('Anonymous:      ', mss.anonymous);
  s += kb('KSM:            ', mss.ksm);
  s += kb('LazyFree:       ', mss.lazyfree);
  s += kb('AnonHugePages:  ', mss.anonymous_thp);
  s += kb('ShmemPmdMapped: ', mss.shmem_thp);
  s += kb('FilePmdMapped:  ', mss.file_thp);
  s += kb('Shared_Hugetlb: ', mss.shared_hugetlb);
  s += kb('Private_Hugetlb: ', mss.private_hugetlb, 7);
  s += kb('Swap:           ', mss.swap);
  s += psskb('SwapPss:        ', mss.swap_pss);
  s += psskb('Locked:         ', mss.pss_locked);
  return s;
}

/** The two-letter mnemonic of each vm_flags bit (a bit without one prints "??"). */
const VM_MNEMONICS = new Map<number, string>(VM_FLAG_CODES.map(([bit, code]) => [Math.log2(bit >>> 0), code]));

/** show_smap_vma_flags: "VmFlags: " and each set bit's mnemonic with a space, in bit order. */
export function show_smap_vma_flags(flags: number): string {
  let s = 'VmFlags: ';
  for (let i = 0; i < 32; i++) {
    if ((flags >>> i) & 1) s += `${VM_MNEMONICS.get(i) ?? '??'} `;
  }
  return s + '\n';
}

/** vma_kernel_pagesize / vma_mmu_pagesize: the huge page size for hugetlb VMAs. */
function vma_kernel_pagesize(vma: VmArea): number {
  return vma.vm_flags & VM_HUGETLB ? PMD_SIZE : PAGE_SIZE;
}

/** arch_pkeys_enabled on x86: the kernel turned protection keys on (CR4.PKE, X86_FEATURE_OSPKE). */
function arch_pkeys_enabled(k: Kernel): boolean {
  return (k.machine.cpu(0).readCr4() & BigInt(CR4_PKE)) !== 0n;
}

/** show_smap: one VMA's block of /proc/PID/smaps. */
export function show_smap(k: Kernel, vma: VmArea): string {
  const mss = smap_gather_stats(k, vma);
  let s = show_map_vma(vma);
  s += kb('Size:           ', vma.vm_end - vma.vm_start);
  s += kb('KernelPageSize: ', vma_kernel_pagesize(vma));
  s += kb('MMUPageSize:    ', vma_kernel_pagesize(vma));
  s += __show_smap(mss, false);
  // thp_vma_allowable_orders: mmulab has no transparent huge pages.
  s += `THPeligible:    ${String(0).padStart(8, ' ')}\n`;
  if (arch_pkeys_enabled(k)) s += `ProtectionKey:  ${String(vma.pkey).padStart(8, ' ')}\n`;
  s += show_smap_vma_flags(vma.vm_flags);
  return s;
}

/** /proc/PID/smaps. */
export function proc_pid_smaps(k: Kernel, target: ProcTarget): string {
  const mm = proc_mem_open(k, target);
  if (!mmget_not_zero(mm)) return '';
  let out = '';
  for (const vma of mm.vmas()) out += show_smap(k, vma);
  return out;
}

/**
 * /proc/PID/smaps_rollup: every VMA's counters summed under one header spanning the first
 * VMA's start to the last VMA's end. ESRCH for a task without an address space.
 */
export function proc_pid_smaps_rollup(k: Kernel, target: ProcTarget): string {
  const mm = proc_mem_open(k, target);
  if (!mmget_not_zero(mm)) throw new SyscallError('read', ESRCH);
  const mss = emptyStats();
  const vmas = mm.vmas();
  let start = 0;
  let end = 0;
  if (vmas.length) {
    start = vmas[0]!.vm_start;
    for (const vma of vmas) {
      smap_gather_stats(k, vma, mss);
      end = vma.vm_end;
    }
  }
  const prefix = show_vma_header_prefix(start, end, 0, 0n, [0, 0], 0);
  return padName(prefix, '[rollup]') + '\n' + __show_smap(mss, true);
}

// ================================================================================================
// /proc/PID/pagemap
// ================================================================================================

export const PM_ENTRY_BYTES = 8;
export const PM_PFRAME_BITS = 55;
export const PM_PFRAME_MASK = (1n << 55n) - 1n;
export const PM_SOFT_DIRTY = 1n << 55n;
export const PM_MMAP_EXCLUSIVE = 1n << 56n;
export const PM_UFFD_WP = 1n << 57n;
/** Guard region (MADV_GUARD_INSTALL marker); mmulab has no guard markers, so never set. */
export const PM_GUARD_REGION = 1n << 58n;
export const PM_FILE = 1n << 61n;
export const PM_SWAP = 1n << 62n;
export const PM_PRESENT = 1n << 63n;

// The flag bits as masks on the high 32 bits of an entry.
const HI_SOFT_DIRTY = 1 << (55 - 32);
const HI_EXCLUSIVE = 1 << (56 - 32);
const HI_UFFD_WP = 1 << (57 - 32);
const HI_FILE = 1 << (61 - 32);
const HI_PRESENT = 1 << (63 - 32);

export interface PagemapOptions {
  /** The reader has CAP_SYS_ADMIN: PFNs are shown (otherwise bits 0-54 read as zero). */
  privileged?: boolean;
}

/**
 * pagemap_read: read `count` bytes at file offset `offset` of /proc/PID/pagemap, as pread()
 * would. The offset and the count must be multiples of 8 (EINVAL otherwise); entry i describes
 * the page at virtual address (offset / 8 + i) * 4096; the read stops at the end of the user
 * address space (TASK_SIZE), so it may return fewer bytes than asked, or none.
 */
export function pagemap_read(k: Kernel, target: ProcTarget, offset: number | bigint, count: number, opts: PagemapOptions = {}): Uint8Array {
  const mm = proc_mem_open(k, target);
  // pread(2) itself refuses a negative position.
  const off = typeof offset === 'bigint' ? offset : Number.isSafeInteger(offset) ? BigInt(offset) : -1n;
  if (off < 0n || !Number.isSafeInteger(count) || count < 0) throw new SyscallError('read', EINVAL);
  if (!mmget_not_zero(mm)) return new Uint8Array(0);
  if (off % 8n !== 0n || count % 8 !== 0) throw new SyscallError('read', EINVAL);
  if (count === 0) return new Uint8Array(0);
  const showPfn = opts.privileged === true;
  // The window of virtual addresses, computed as pagemap_read does (unsigned long arithmetic).
  const taskSize = BigInt(TASK_SIZE);
  const ULONG = 1n << 64n;
  const svpfn = off / 8n;
  let endVaddr = taskSize;
  let startVaddr = endVaddr;
  if (svpfn <= (ULONG - 1n) >> 12n) {
    startVaddr = svpfn << 12n;
    const end = (startVaddr + (BigInt(count / 8) << 12n)) % ULONG;
    if (end >= startVaddr && end < taskSize) endVaddr = end;
  }
  if (startVaddr > taskSize) startVaddr = endVaddr;
  if (startVaddr >= endVaddr) return new Uint8Array(0);
  const start = Number(startVaddr);
  const end = Number(endVaddr);
  const nr = (end - start) / PAGE_SIZE;
  const lo32 = new Uint32Array(nr);
  const hi32 = new Uint32Array(nr);
  fillPagemap(k, mm, start, end, showPfn, lo32, hi32);
  const out = new Uint8Array(Math.min(count, nr * PM_ENTRY_BYTES));
  const dv = new DataView(out.buffer);
  for (let i = 0; i < out.length / 8; i++) {
    dv.setUint32(i * 8, lo32[i]!, true);
    dv.setUint32(i * 8 + 4, hi32[i]!, true);
  }
  return out;
}

/** The pagemap entry of one virtual address (a one-entry pagemap_read), as a bigint. */
export function pagemap_entry(k: Kernel, target: ProcTarget, addr: number, opts: PagemapOptions = {}): bigint {
  const b = pagemap_read(k, target, Math.floor(addr / PAGE_SIZE) * PM_ENTRY_BYTES, PM_ENTRY_BYTES, opts);
  return b.length === 8 ? new DataView(b.buffer).getBigUint64(0, true) : 0n;
}

/**
 * The walk of pagemap_read over [start, end): holes between VMAs read as 0; every page of a VMA
 * starts as pagemap_pte_hole makes it (PM_SOFT_DIRTY if the VMA is VM_SOFTDIRTY); VM_PFNMAP VMAs
 * stay that way (walk_page_test hands them to pte_hole); present entries then overwrite their
 * pages (pte_to_pagemap_entry, pagemap_hugetlb_range, the PMD-leaf branch of pagemap_pmd_range).
 */
function fillPagemap(k: Kernel, mm: MmStruct, start: number, end: number, showPfn: boolean, lo32: Uint32Array, hi32: Uint32Array): void {
  const pt = k.pt;
  const p = k.pages;
  const put = (addr: number, frame: number, flagsHi: number): void => {
    const i = (addr - start) / PAGE_SIZE;
    lo32[i] = frame >>> 0;
    hi32[i] = (Math.floor(frame / 2 ** 32) & 0x7fffff) | flagsHi;
  };
  for (const vma of mm.vmasIn(start, end)) {
    const a0 = Math.max(start, vma.vm_start);
    const a1 = Math.min(end, vma.vm_end);
    const sd = vma.vm_flags & VM_SOFTDIRTY ? HI_SOFT_DIRTY : 0;
    if (sd) for (let a = a0; a < a1; a += PAGE_SIZE) put(a, 0, sd);
    if (vma.vm_flags & VM_PFNMAP) continue;
    const hugetlb = (vma.vm_flags & VM_HUGETLB) !== 0;
    pt.forEachLeaf(mm, a0, a1, (addr, ptep, level) => {
      const lo = pt.lo(ptep);
      const hi = pt.hi(ptep);
      const pfn = ptePfn(lo, hi);
      if (level === 1 && !hugetlb) {
        // pte_to_pagemap_entry for a present PTE.
        let flags = HI_PRESENT | sd;
        if (lo & _PAGE_SOFT_DIRTY) flags |= HI_SOFT_DIRTY;
        if (lo & _PAGE_UFFD_WP) flags |= HI_UFFD_WP;
        const page = normalPage(k, lo, hi);
        if (page >= 0) {
          if (!folioAnon(k, p.head(page))) flags |= HI_FILE;
          if (preciseMapcount(k, page) === 1) flags |= HI_EXCLUSIVE;
        }
        put(addr, showPfn ? pfn : 0, flags);
        return;
      }
      // A leaf covering several pages: a hugetlb page or a PMD-mapped THP.
      const span = level === 2 ? PMD_SIZE : 2 ** 30;
      const head = pfn < p.nframes ? p.head(pfn) : -1;
      let flags = HI_PRESENT | sd;
      if (head >= 0 && !folioAnon(k, head)) flags |= HI_FILE;
      if (lo & _PAGE_UFFD_WP) flags |= HI_UFFD_WP;
      if (!hugetlb && lo & _PAGE_SOFT_DIRTY) flags |= HI_SOFT_DIRTY;
      // hugetlb: exclusive unless likely mapped shared; THP: per page, precise mapcount == 1.
      if (head >= 0 && (hugetlb ? p.mapcount[head]! <= 1 : p.mapcount[head] === 1)) flags |= HI_EXCLUSIVE;
      const from = Math.max(addr, a0);
      const to = Math.min(addr + span, a1);
      for (let a = from; a < to; a += PAGE_SIZE) put(a, showPfn ? pfn + (a - addr) / PAGE_SIZE : 0, flags);
    });
  }
}

// ================================================================================================
// /proc/PID/status (task_mem)
// ================================================================================================

/** is_exec_mapping / is_stack_mapping / is_data_mapping (mm/internal.h), VM_STACK = VM_GROWSDOWN. */
function vm_stat_class(flags: number): 'exec' | 'stack' | 'data' | null {
  if ((flags & (VM_EXEC | VM_WRITE | VM_GROWSDOWN)) === VM_EXEC) return 'exec';
  if ((flags & VM_GROWSDOWN) === VM_GROWSDOWN) return 'stack';
  if ((flags & (VM_WRITE | VM_SHARED | VM_GROWSDOWN)) === VM_WRITE) return 'data';
  return null;
}

/** Page-table pages Linux does not put in pgtables_bytes: the pgd, and p4d tables with LA57. */
function unaccountedTableBytes(k: Kernel, mm: MmStruct): number {
  if (!mm.pgd) return 0;
  let bytes = PAGE_SIZE;
  if (k.pt.levels === 5) {
    for (let i = 0; i < 512; i++) {
      const e = mm.pgd + i * 8;
      if (k.pt.lo(e) & _PAGE_PRESENT) bytes += PAGE_SIZE;
    }
  }
  return bytes;
}

/**
 * task_mem: the memory lines of /proc/PID/status (VmPeak … VmSwap, then HugetlbPages), each
 * "Label:\t%8lu kB". Empty for a task without an address space.
 */
export function task_mem(k: Kernel, target: ProcTarget): string {
  const mm = proc_mem_open(k, target);
  if (!mm) return '';
  const anon = mm.rss.anon;
  const file = mm.rss.file;
  const shmem = mm.rss.shmem;
  const totalVm = mm.total_vm;
  const hiwaterVm = Math.max(totalVm, mm.hiwater_vm);
  const totalRss = anon + file + shmem;
  const hiwaterRss = Math.max(totalRss, mm.hiwater_rss);
  const lockedVm = mm.locked_vm;
  let execVm = 0;
  let stackVm = 0;
  let dataVm = 0;
  for (const vma of mm.vmas()) {
    const c = vm_stat_class(vma.vm_flags);
    if (c === 'exec') execVm += vma.pages;
    else if (c === 'stack') stackVm += vma.pages;
    else if (c === 'data') dataVm += vma.pages;
  }
  // text = min(PAGE_ALIGN(end_code) - (start_code & PAGE_MASK), exec_vm << PAGE_SHIFT): with no
  // executable image (start_code == end_code == 0) every executable mapping is library.
  const text = 0;
  const lib = execVm * PAGE_SIZE - text;
  const pteBytes = Math.max(0, mm.pgtables_bytes - unaccountedTableBytes(k, mm));
  const pages = (label: string, n: number): string => kb(label, n * PAGE_SIZE);
  let s = pages('VmPeak:\t', hiwaterVm);
  s += pages('VmSize:\t', totalVm);
  s += pages('VmLck:\t', lockedVm);
  s += pages('VmPin:\t', 0);
  s += pages('VmHWM:\t', hiwaterRss);
  s += pages('VmRSS:\t', totalRss);
  s += pages('RssAnon:\t', anon);
  s += pages('RssFile:\t', file);
  s += pages('RssShmem:\t', shmem);
  s += pages('VmData:\t', dataVm);
  s += pages('VmStk:\t', stackVm);
  s += kb('VmExe:\t', text);
  s += kb('VmLib:\t', lib);
  s += kb('VmPTE:\t', pteBytes);
  s += pages('VmSwap:\t', mm.rss.swap);
  // hugetlb_report_usage: hugetlb_usage counts base pages.
  s += pages('HugetlbPages:\t', mm.hugetlb_usage);
  return s;
}

// ================================================================================================
// /proc/kpagecount and /proc/kpageflags (fs/proc/page.c)
// ================================================================================================

export const KPF_LOCKED = 0;
export const KPF_ERROR = 1;
export const KPF_REFERENCED = 2;
export const KPF_UPTODATE = 3;
export const KPF_DIRTY = 4;
export const KPF_LRU = 5;
export const KPF_ACTIVE = 6;
export const KPF_SLAB = 7;
export const KPF_WRITEBACK = 8;
export const KPF_RECLAIM = 9;
export const KPF_BUDDY = 10;
export const KPF_MMAP = 11;
export const KPF_ANON = 12;
export const KPF_SWAPCACHE = 13;
export const KPF_SWAPBACKED = 14;
export const KPF_COMPOUND_HEAD = 15;
export const KPF_COMPOUND_TAIL = 16;
export const KPF_HUGE = 17;
export const KPF_UNEVICTABLE = 18;
export const KPF_HWPOISON = 19;
export const KPF_NOPAGE = 20;
export const KPF_KSM = 21;
export const KPF_THP = 22;
export const KPF_OFFLINE = 23;
export const KPF_ZERO_PAGE = 24;
export const KPF_IDLE = 25;
export const KPF_PGTABLE = 26;
/** Kernel-internal flags, also present in the exported word (include/linux/kernel-page-flags.h). */
export const KPF_RESERVED = 32;
export const KPF_PRIVATE = 35;

/** A hugetlb folio: PG_hugetlb, or (mmulab has no THP) an anonymous compound page. */
function folioHugetlb(k: Kernel, head: number): boolean {
  const f = k.pages.flags[head]!;
  return (f & PG_hugetlb) !== 0 || ((f & PG_head) !== 0 && (f & PG_anon) !== 0);
}

/** stable_page_flags: the /proc/kpageflags word of one frame. */
export function stable_page_flags(k: Kernel, pfn: number): bigint {
  const p = k.pages;
  if (!Number.isSafeInteger(pfn) || pfn < 0 || pfn >= p.nframes) return 1n << BigInt(KPF_NOPAGE);
  const page = p.flags[pfn]!;
  const head = p.head(pfn);
  const kf = p.flags[head]!;
  let u = 0n;
  const set = (bit: number): void => {
    u |= 1n << BigInt(bit);
  };
  if (!(page & PG_free) && p.mapcount[head]! > 0) set(KPF_MMAP);
  const anon = (kf & PG_anon) !== 0;
  if (anon) set(KPF_ANON);
  if (page & PG_tail) set(KPF_COMPOUND_TAIL);
  else if (page & PG_head) set(KPF_COMPOUND_HEAD);
  if (!(page & PG_free) && folioHugetlb(k, head)) set(KPF_HUGE);
  else if (page & PG_zero) set(KPF_ZERO_PAGE);
  // Every page of a free block is a buddy page (PageBuddy on the head, is_free_buddy_page on
  // the others).
  if (page & PG_free) set(KPF_BUDDY);
  if (page & PG_table) set(KPF_PGTABLE);
  if (kf & PG_slab) set(KPF_SLAB);
  if (kf & PG_locked) set(KPF_LOCKED);
  if (kf & PG_dirty) set(KPF_DIRTY);
  if (kf & PG_lru) set(KPF_LRU);
  if (kf & PG_referenced) set(KPF_REFERENCED);
  if (!(page & PG_free) && folioSwapbacked(k, head)) set(KPF_SWAPBACKED);
  if (kf & PG_reserved) set(KPF_RESERVED);
  if (kf & PG_private) set(KPF_PRIVATE);
  return u;
}

/** The shared part of kpagecount_read/kpageflags_read: aligned u64 reads indexed by pfn. */
function kpage_read(k: Kernel, offset: number, count: number, value: (pfn: number) => bigint): Uint8Array {
  if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(count) || count < 0) throw new SyscallError('read', EINVAL);
  if (offset % 8 !== 0 || count % 8 !== 0) throw new SyscallError('read', EINVAL);
  const maxBytes = k.pages.nframes * 8;
  if (offset >= maxBytes) return new Uint8Array(0);
  const n = Math.min(count, maxBytes - offset) / 8;
  const out = new Uint8Array(n * 8);
  const dv = new DataView(out.buffer);
  for (let i = 0; i < n; i++) dv.setBigUint64(i * 8, value(offset / 8 + i), true);
  return out;
}

/** /proc/kpagecount: each frame's mapcount (folio_precise_page_mapcount). */
export function kpagecount_read(k: Kernel, offset: number, count: number): Uint8Array {
  return kpage_read(k, offset, count, (pfn) => (k.pages.isFree(pfn) ? 0n : BigInt(preciseMapcount(k, pfn))));
}

/** /proc/kpageflags: each frame's stable_page_flags. */
export function kpageflags_read(k: Kernel, offset: number, count: number): Uint8Array {
  return kpage_read(k, offset, count, (pfn) => stable_page_flags(k, pfn));
}
