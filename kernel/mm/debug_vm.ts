/**
 * kernel/mm/debug_vm.ts — the invariant checker: a CONFIG_DEBUG_VM-style audit of the whole
 * memory-management state, run between steps of tests, fuzzers and experiments.
 *
 * Linux spreads these checks over VM_BUG_ON_*, check_mm (kernel/fork.c), print_bad_pte and
 * the page allocator's bad_page; mmulab can afford to audit everything at once, by recounting
 * from the page tables and comparing with the books:
 *
 *   VMAs      sorted, page aligned, non-overlapping, inside the user address range, attached to
 *             their mm, map_count right, gap tree right, flags consistent (VM_MIXEDMAP and
 *             VM_PFNMAP never together; VM_READ/WRITE/EXEC each imply their VM_MAY* bit).
 *   tables    every page-table page is allocated, flagged PG_table, reachable once, and
 *             pgtables_bytes counts them.
 *   leaves    every present user entry lies inside a VMA of its mm, with rights the VMA allows
 *             (RW only with VM_WRITE, executable only with VM_EXEC, large leaves only in hugetlb
 *             VMAs, special entries only in VM_PFNMAP/VM_MIXEDMAP VMAs or for the zero page,
 *             normal entries never in a VM_PFNMAP VMA unless it is a private copy-on-write page).
 *   pages     no mapped or held frame is free; each page's mapcount equals the number of
 *             entries mapping it; its refcount equals mapcount plus the references of the
 *             registered holders (page cache, pipes, pins, mmu_gather batches, drivers).
 *   counters  RSS counters and hugetlb_usage of every mm equal what its page tables map.
 *   buddy     the free lists are well formed (PageAllocator.validate).
 *   tree      the VMA tree (mm_mt) is a valid red-black tree with correct gap augmentation, and
 *             vma_lookup finds every VMA at its first and last byte.
 *   TLBs      after a completed flush no TLB holds a translation to a frame that has since been
 *             freed: a cached translation (or paging-structure-cache entry) whose frame is free
 *             in the page allocator is a violation when the CPU could still use it — a global
 *             entry, or an entry of an ASID slot whose CPU runs that mm now or claims to be up to
 *             date with its tlb_gen. A slot behind its mm's tlb_gen has a flush pending (it is
 *             flushed before it is used again) and is not counted; neither is a slot whose mm is
 *             gone (choose_new_asid flushes a reused slot). Valid at any instant, not only at
 *             quiescent points: the kernel frees a frame only after the flush that removed its
 *             last translation has been acknowledged (or, under a deferring policy, after every
 *             spared CPU caught up). Opt out with `tlb: false` (planted flush bugs).
 *
 * Frames allocated by the kernel for its own use and mapped nowhere are not accounted
 * page by page; tests catch leaks of those by comparing usedFrames before and after.
 */

import type { Kernel } from '../kernel.ts';
import { MMAP_MIN_ADDR, PAGE_SIZE, TASK_SIZE, VM_EXEC, VM_HUGETLB, VM_MAYEXEC, VM_MAYREAD, VM_MAYWRITE, VM_MIXEDMAP, VM_PFNMAP, VM_READ, VM_WRITE, is_cow_mapping, vm_start_gap, type MmStruct, type VmArea } from './mm_types.ts';
import { PG_anon, PG_free, PG_swapbacked, PG_table, PG_zero } from './page_alloc.ts';
import { _PAGE_NX_HI, _PAGE_RW, _PAGE_SPECIAL, _PAGE_USER, ptePfn } from '../arch/x86/pgtable.ts';
import { TLB_NR_DYN_ASIDS } from '../arch/x86/tlb.ts';
import { pagingCacheEntries, tlbEntries } from '../../hw/inspect.ts';

export interface VmCheckOptions {
  /** Require refcount == mapcount + holder references exactly (default true). */
  exactRefs?: boolean;
  /** Stop after this many problems (default 50). */
  limit?: number;
  /** Check the TLBs for usable translations to freed frames (default true). */
  tlb?: boolean;
}

export interface VmCheckResult {
  ok: boolean;
  problems: string[];
  /** Live address spaces audited. */
  mms: number;
  /** Present user leaf entries seen. */
  leaves: number;
  /** Pages with a mapping or a holder reference. */
  accountedPages: number;
}

/** Every user address space not yet torn down (exit_mmap not run), by ctx_id. */
export function liveMms(k: Kernel): MmStruct[] {
  return [...k.mms].filter((mm) => mm !== k.init_mm && !mm.dead && mm.pgd !== 0).sort((a, b) => a.ctx_id - b.ctx_id);
}

/** Audit the memory-management state; see the file header for what is checked. */
export function check_vm_invariants(k: Kernel, opts: VmCheckOptions = {}): VmCheckResult {
  const limit = opts.limit ?? 50;
  const exact = opts.exactRefs ?? true;
  const problems: string[] = [];
  const bad = (s: string): void => {
    if (problems.length < limit) problems.push(s);
  };
  const p = k.pages;
  const pt = k.pt;
  /** Mappings counted per pfn (head pfn for large leaves). */
  const mapped = new Int32Array(k.pages.nframes);
  const tables = new Map<number, number>();
  let leaves = 0;
  const mms = liveMms(k);

  const allMms = [k.init_mm, ...mms];
  for (const mm of allMms) {
    const label = mm === k.init_mm ? 'init_mm' : `mm ${mm.ctx_id}${mm.owner ? ` (${mm.owner.comm}[${mm.owner.tgid}])` : ''}`;
    // ---- VMAs ----
    const vmas = mm.vmas();
    if (vmas.length !== mm.map_count) bad(`${label}: map_count ${mm.map_count} but ${vmas.length} VMAs in the tree`);
    let prevEnd = MMAP_MIN_ADDR;
    let first = true;
    for (const v of vmas) {
      const name = `${label} ${v}`;
      if (v.vm_mm !== mm) bad(`${name}: vm_mm points to another mm`);
      if (v.freed) bad(`${name}: a freed VMA is still in the tree`);
      if (v.vm_refcnt < 1) bad(`${name}: in the tree but detached (vm_refcnt ${v.vm_refcnt})`);
      if (v.vm_start % PAGE_SIZE || v.vm_end % PAGE_SIZE) bad(`${name}: not page aligned`);
      if (v.vm_start >= v.vm_end) bad(`${name}: empty or inverted`);
      if (v.vm_end > TASK_SIZE) bad(`${name}: beyond TASK_SIZE`);
      if (!first && v.vm_start < prevEnd) bad(`${name}: overlaps the previous VMA (which ends at 0x${prevEnd.toString(16)})`);
      // Free for a new mapping: up to vm_start_gap (a stack's guard gap is not).
      const expectGap = Math.max(0, vm_start_gap(v) - (first ? MMAP_MIN_ADDR : prevEnd));
      if (v.gapBefore !== expectGap) bad(`${name}: gap tree says ${v.gapBefore} bytes free below, really ${expectGap}`);
      const f = v.vm_flags;
      if ((f & (VM_MIXEDMAP | VM_PFNMAP)) === (VM_MIXEDMAP | VM_PFNMAP)) bad(`${name}: VM_MIXEDMAP and VM_PFNMAP both set`);
      if (f & VM_READ && !(f & VM_MAYREAD)) bad(`${name}: VM_READ without VM_MAYREAD`);
      if (f & VM_WRITE && !(f & VM_MAYWRITE)) bad(`${name}: VM_WRITE without VM_MAYWRITE`);
      if (f & VM_EXEC && !(f & VM_MAYEXEC)) bad(`${name}: VM_EXEC without VM_MAYEXEC`);
      if (f & VM_HUGETLB && (v.vm_start % (2 << 20) || v.vm_end % (2 << 20))) bad(`${name}: hugetlb VMA not 2 MiB aligned`);
      if (mm.vma_lookup(v.vm_start) !== v || mm.vma_lookup(v.vm_end - 1) !== v) bad(`${name}: vma_lookup does not find it at its first and last byte`);
      prevEnd = v.vm_end;
      first = false;
    }
    const tree = mm.mm_mt.validate();
    if (tree) bad(`${label}: VMA tree broken: ${tree}`);
    // ---- page-table pages ----
    let tablePages = 0;
    if (mm.pgd) {
      pt.forEachTable(mm, (tablePa) => {
        const pfn = tablePa / PAGE_SIZE;
        tablePages++;
        tables.set(pfn, (tables.get(pfn) ?? 0) + 1);
        if (pfn >= p.nframes) bad(`${label}: page-table page 0x${tablePa.toString(16)} beyond memory`);
        else {
          if (p.flags[pfn]! & PG_free) bad(`${label}: page-table page pfn 0x${pfn.toString(16)} is free`);
          if (!(p.flags[pfn]! & PG_table)) bad(`${label}: page-table page pfn 0x${pfn.toString(16)} lacks PG_table`);
        }
      });
    }
    if (mm !== k.init_mm && tablePages * PAGE_SIZE !== mm.pgtables_bytes) bad(`${label}: pgtables_bytes ${mm.pgtables_bytes} but ${tablePages} table pages are reachable`);
    if (mm === k.init_mm || !mm.pgd) continue;
    // ---- leaves ----
    const rss = { anon: 0, file: 0, shmem: 0 };
    let huge = 0;
    const nxe = k.machine.cpu(0).nxe;
    // The VMA of the previous leaf: leaves come in address order, so most lookups hit it.
    let last: VmArea | null = null;
    // The callback runs for every leaf: a problem's location is formatted only when there is one.
    let leafAddr = 0;
    const at = (): string => `${label} 0x${leafAddr.toString(16)}`;
    pt.forEachLeaf(mm, 0, TASK_SIZE + PAGE_SIZE, (addr, ptep, level) => {
      leaves++;
      leafAddr = addr;
      const lo = pt.lo(ptep);
      const hi = pt.hi(ptep);
      const v = last !== null && addr >= last.vm_start && addr < last.vm_end ? last : (last = mm.vma_lookup(addr));
      if (!v) {
        bad(`${at()}: present ${level === 1 ? 'PTE' : level === 2 ? 'PMD' : 'PUD'} outside every VMA`);
        return;
      }
      const f = v.vm_flags;
      if (lo & _PAGE_RW && !(f & VM_WRITE)) bad(`${at()}: writable entry in ${v} without VM_WRITE`);
      if (lo & _PAGE_USER && !(hi & _PAGE_NX_HI) && !(f & VM_EXEC) && nxe) bad(`${at()}: executable entry in ${v} without VM_EXEC`);
      if (level > 1 && !(f & VM_HUGETLB)) bad(`${at()}: large leaf in ${v}, which is not a hugetlb VMA`);
      if (level === 1 && f & VM_HUGETLB) bad(`${at()}: 4 KiB PTE in hugetlb ${v}`);
      const pfn = ptePfn(lo, hi);
      if (lo & _PAGE_SPECIAL) {
        if (pfn !== p.zeroPfn && !(f & (VM_PFNMAP | VM_MIXEDMAP))) bad(`${at()}: special entry in ${v}`);
        if (pfn < p.nframes && p.flags[pfn]! & PG_free) bad(`${at()}: special entry maps free frame 0x${pfn.toString(16)}`);
        return;
      }
      if (pfn >= p.nframes) {
        bad(`${at()}: normal entry maps pfn 0x${pfn.toString(16)} beyond memory`);
        return;
      }
      const head = level > 1 ? p.head(pfn) : pfn;
      if (p.flags[pfn]! & PG_zero) {
        bad(`${at()}: the zero page mapped by a normal (not special) entry`);
        return;
      }
      if (f & VM_PFNMAP && !(is_cow_mapping(f) && p.flags[head]! & PG_anon)) bad(`${at()}: normal entry in VM_PFNMAP ${v}`);
      if (p.flags[pfn]! & PG_free) bad(`${at()}: maps free frame 0x${pfn.toString(16)} (use after free)`);
      if (p.flags[head]! & PG_table) bad(`${at()}: maps page-table page 0x${head.toString(16)} into user space`);
      mapped[head]!++;
      if (level > 1) huge += 512;
      else if (p.flags[head]! & PG_anon) rss.anon++;
      else if (p.flags[head]! & PG_swapbacked) rss.shmem++;
      else rss.file++;
    });
    for (const key of ['anon', 'file', 'shmem'] as const) {
      if (mm.rss[key] !== rss[key]) bad(`${label}: rss ${key} counter is ${mm.rss[key]} but the page tables map ${rss[key]} such pages`);
    }
    if (mm.hugetlb_usage !== huge) bad(`${label}: hugetlb_usage ${mm.hugetlb_usage} but ${huge} hugetlb pages mapped`);
  }

  // ---- pages ----
  for (const [pfn, n] of tables) {
    if (n > 1) bad(`page-table page pfn 0x${pfn.toString(16)} is linked ${n} times`);
    if (p.refcount[pfn] !== 1) bad(`page-table page pfn 0x${pfn.toString(16)} has refcount ${p.refcount[pfn]}, expected 1`);
    if (mapped[pfn]) bad(`page-table page pfn 0x${pfn.toString(16)} is also mapped into user space`);
  }
  const held = new Map<number, number>();
  const holderOf = new Map<number, string>();
  for (const h of k.pageRefHolders) {
    h.forEachPageRef((pfn, refs = 1) => {
      const head = pfn < p.nframes ? p.head(pfn) : pfn;
      held.set(head, (held.get(head) ?? 0) + refs);
      if (!holderOf.has(head)) holderOf.set(head, h.holderName);
      if (pfn >= p.nframes) bad(`${h.holderName}: holds pfn 0x${pfn.toString(16)} beyond memory`);
      else if (p.flags[pfn]! & PG_free) bad(`${h.holderName}: holds a reference on free frame 0x${pfn.toString(16)}`);
    });
  }
  // Every frame that is mapped, held or has a mapcount, in pfn order (one pass over the frames).
  let accounted = 0;
  const mapcount = p.mapcount;
  for (let pfn = 0; pfn < p.nframes; pfn++) {
    const mc = mapcount[pfn]!;
    const m = mapped[pfn]!;
    if (mc === 0 && m === 0 && !held.has(pfn)) continue;
    accounted++;
    if (tables.has(pfn)) continue;
    const h = held.get(pfn) ?? 0;
    const rc = p.refcount[pfn]!;
    if (p.flags[pfn]! & PG_free) {
      if (mc || rc) bad(`pfn 0x${pfn.toString(16)}: free but refcount ${rc} mapcount ${mc}`);
      continue;
    }
    if (mc !== m) bad(`pfn 0x${pfn.toString(16)}: mapcount ${mc} but ${m} page-table entries map it`);
    if (exact ? rc !== m + h : rc < m + h) bad(`pfn 0x${pfn.toString(16)}: refcount ${rc} but ${m} mappings + ${h} holder references${h ? ` (${holderOf.get(pfn)})` : ''}${exact ? '' : ' exceed it'}`);
  }
  for (const pfn of held.keys()) if (pfn >= p.nframes) accounted++;
  for (let pfn = 0; pfn < p.nframes; pfn++) {
    if (p.flags[pfn]! & PG_free && (p.refcount[pfn] !== 0 || p.mapcount[pfn] !== 0)) bad(`pfn 0x${pfn.toString(16)}: free with refcount ${p.refcount[pfn]} mapcount ${p.mapcount[pfn]}`);
  }
  const buddy = p.validate();
  if (buddy) bad(`page allocator: ${buddy}`);
  if (opts.tlb ?? true) for (const s of tlb_freed_frame_problems(k)) bad(s);
  return { ok: problems.length === 0, problems, mms: mms.length, leaves, accountedPages: accounted };
}

/**
 * TLB and paging-structure-cache entries some CPU could still use that point to a free frame
 * (see the file header for which entries count). One line per entry.
 */
export function tlb_freed_frame_problems(k: Kernel): string[] {
  const out: string[] = [];
  const p = k.pages;
  const isFree = (pfn: number): boolean => pfn < p.nframes && (p.flags[pfn]! & PG_free) !== 0;
  const byId = new Map<number, MmStruct>();
  for (const m of k.mms) byId.set(m.ctx_id, m);
  const usePcid = k.tlb.usePcid;
  for (let c = 0; c < k.machine.cpuCount; c++) {
    const st = k.tlb.cpuState[c]!;
    // PCID → the mm whose translations an entry with that tag may still serve.
    const usable = new Map<number, MmStruct>();
    for (let a = 0; a < TLB_NR_DYN_ASIDS; a++) {
      const ctx = st.ctxs[a]!;
      const mm = byId.get(ctx.ctx_id);
      if (!mm || mm.pgd === 0) continue;
      if (!usePcid && (a !== 0 || st.loaded_mm !== mm)) continue;
      const running = st.loaded_mm === mm && !st.is_lazy && st.loaded_mm_asid === a;
      if (ctx.tlb_gen < mm.tlb_gen && !running) continue;
      usable.set(usePcid ? a + 1 : 0, mm);
    }
    const cpu = k.machine.cpu(c);
    for (const e of tlbEntries(cpu)) {
      if (!e.global && !usable.has(e.pcid)) continue;
      const first = Number(e.frame);
      const last = first + e.pageSize / PAGE_SIZE - 1;
      const freed = isFree(first) ? first : isFree(last) ? last : -1;
      if (freed < 0) continue;
      const owner = e.global ? 'global' : `mm ${usable.get(e.pcid)!.ctx_id}`;
      out.push(`cpu ${c}: ${e.array} TLB entry 0x${e.va.toString(16)} (pcid ${e.pcid}, ${owner}) still translates to free frame 0x${freed.toString(16)} with no flush pending`);
    }
    for (const e of pagingCacheEntries(cpu)) {
      if (!usable.has(e.pcid)) continue;
      const pfn = Number(e.table / 4096n);
      if (!isFree(pfn)) continue;
      out.push(`cpu ${c}: ${e.array} paging-structure cache entry for 0x${e.va.toString(16)} (pcid ${e.pcid}, mm ${usable.get(e.pcid)!.ctx_id}) still points to freed page-table page 0x${pfn.toString(16)}`);
    }
  }
  return out;
}

/** Throw with every problem listed (for tests). */
export function assert_vm_invariants(k: Kernel, opts: VmCheckOptions = {}): VmCheckResult {
  const r = check_vm_invariants(k, opts);
  if (!r.ok) throw new Error(`mm invariants violated:\n  ${r.problems.join('\n  ')}`);
  return r;
}
