/**
 * drivers/android/binder/eager_common.ts — what the eager designs share: binder_mmap's VMA flags
 * and the PageMapping boilerplate (EagerMappingBase), finding the receiver's binder VMA by address
 * and checking that it is binder's (the identity variant), inserting a page into it, adopting a
 * page another thread inserted first (EBUSY), and the reclaim callback that zaps a page from the
 * VMA it finds.
 *
 * Two code paths, as in Linux:
 *  - C (drivers/android/binder_alloc.c, v6.14+): mmget_not_zero, lock_vma_under_rcu or
 *    mmap_read_lock + vma_lookup, identity check, vm_insert_page; EBUSY → get_user_pages_remote
 *    with FOLL_NOFAULT adopts the page already mapped. Used by the `none` and `mapped` variants.
 *  - Rust (drivers/android/binder/page_range.rs): the same through the typed API (Mm,
 *    MmWithUser, VmaReadGuard / MmapReadGuard, check_vma, as_mixedmap_vma, VmaMixedMap). Used by
 *    the `vm_ops` variant, whose check is Rust binder's check_vma.
 *
 * Planted bugs for the security experiments (page_mapping.ts PlantedBugs): keepVmaReference
 * re-uses the VMA (or VmaRef) found by an earlier install without looking it up or locking it;
 * zapWithoutFlush clears the PTE by hand and frees the page before any TLB flush.
 */

import type { Kernel } from '../../../kernel/kernel.ts';
import type { KGen } from '../../../kernel/sched/core.ts';
import { VM_DONTCOPY, VM_MAYWRITE, VM_MIXEDMAP, type MmStruct, type VmArea } from '../../../kernel/mm/mm_types.ts';
import type { File } from '../../../kernel/fs/file.ts';
import { mmget_not_zero, mmput_async } from '../../../kernel/fork.ts';
import { vm_insert_page, zap_page_range_single, vm_normal_page } from '../../../kernel/mm/memory.ts';
import { folio_remove_rmap_pte, isAnon, mm_counter_file } from '../../../kernel/mm/rmap.ts';
import { FOLL_NOFAULT, get_user_pages_remote } from '../../../kernel/mm/gup.ts';
import { PageRefs } from '../../../kernel/mm/page_ref.ts';
import { _PAGE_PRESENT } from '../../../kernel/arch/x86/pgtable.ts';
import { EBUSY, ESRCH } from '../../../kernel/errno.ts';
import { Mm } from '../../../kernel/rust/mm.ts';
import type { VmaMixedMap, VmaRef } from '../../../kernel/rust/mm/virt.ts';
import { Page } from '../../../kernel/rust/page.ts';
import { BINDER_VM_OPS, nothingBeforeDeliver, type DesignName, type DesignOptions, type IdentityVariant, type LruStatus, type PageMapping, type PlantedBugs } from './page_mapping.ts';
import type { BinderAlloc } from './binder_alloc.ts';
import { traceLruPage } from './binder_trace.ts';

/** binder_mmap's flags for the eager designs: VM_DONTCOPY | VM_MIXEDMAP set, VM_MAYWRITE cleared. */
export function setupEagerVma(alloc: BinderAlloc, vma: VmArea): number {
  vma.vm_flags = ((vma.vm_flags | VM_DONTCOPY | VM_MIXEDMAP) & ~VM_MAYWRITE) >>> 0;
  vma.vm_ops = BINDER_VM_OPS;
  vma.vm_private_data = alloc;
  return 0;
}

/**
 * What the designs that insert pages with vm_insert_page (eager, eager-writelock,
 * eager-deferred) share: the options, binder_mmap's flags, nothing to do before delivery (unless
 * the design says otherwise: eager-deferred installs there), and dropping the mm handle at
 * release. Each design says how it installs and reclaims a page.
 */
export abstract class EagerMappingBase implements PageMapping {
  abstract readonly design: DesignName;
  readonly identity: IdentityVariant;
  protected readonly bugs: PlantedBugs;

  constructor(opts: DesignOptions) {
    this.identity = opts.identity ?? 'mapped';
    this.bugs = opts.bugs ?? {};
  }

  setupVma(alloc: BinderAlloc, vma: VmArea, _file: File): number {
    return setupEagerVma(alloc, vma);
  }

  abstract installSinglePage(alloc: BinderAlloc, index: number, addr: number): KGen<number>;

  beforeDeliver = nothingBeforeDeliver;

  abstract freePage(alloc: BinderAlloc, index: number): KGen<LruStatus>;

  release(alloc: BinderAlloc): void {
    dropMmHandle(alloc);
  }
}

export interface EagerCounters {
  /** Installs that found no usable VMA (ESRCH). */
  noVma: number;
  /** Installs refused by the identity check. */
  identityRefused: number;
  /** EBUSY: another thread's page adopted through GUP. */
  adopted: number;
  /** Per-VMA lock attempts that failed and fell back to the mmap lock. */
  vmaLockFallbacks: number;
  /** Pages inserted into a VMA that is not the allocator's binder mapping (the hazard). */
  foreignInserts: number;
  /** Reclaims that zapped a VMA that is not the binder mapping (the hazard). */
  foreignZaps: number;
}

export function eagerCounters(alloc: BinderAlloc): EagerCounters {
  const s = alloc.designState as { eager?: EagerCounters } | null;
  if (s && s.eager) return s.eager;
  const c: EagerCounters = { noVma: 0, identityRefused: 0, adopted: 0, vmaLockFallbacks: 0, foreignInserts: 0, foreignZaps: 0 };
  alloc.designState = { ...(s ?? {}), eager: c };
  return c;
}

/** Is `vma` the allocator's binder mapping, truly (for counting hazards, not as a check)? */
export function isBinderVma(alloc: BinderAlloc, vma: VmArea): boolean {
  return vma.vm_private_data === alloc && !vma.freed;
}

/** The identity check of a variant: may the driver touch this VMA? */
export function identityOk(alloc: BinderAlloc, vma: VmArea, variant: IdentityVariant): boolean {
  switch (variant) {
    case 'none':
      return true;
    case 'mapped':
      return alloc.mapped;
    case 'vm_ops':
      return vma.vm_ops === BINDER_VM_OPS && vma.vm_private_data === alloc;
  }
}

interface Remembered {
  vma: VmArea | null;
  rust: VmaMixedMap | null;
}

function remembered(alloc: BinderAlloc): Remembered {
  const s = alloc.designState as { kept?: Remembered } | null;
  if (s && s.kept) return s.kept;
  const r: Remembered = { vma: null, rust: null };
  alloc.designState = { ...(s ?? {}), kept: r };
  return r;
}

// ==============================================================================================
// C path
// ==============================================================================================

/** insertC's last step, under whichever lock it took: check the VMA found, vm_insert_page. */
function tryInsert(k: Kernel, alloc: BinderAlloc, c: EagerCounters, kept: Remembered, vma: VmArea | null, addr: number, pfn: number, variant: IdentityVariant, bugs: PlantedBugs, site: string): number {
  if (!vma) {
    c.noVma++;
    return -ESRCH;
  }
  if (!identityOk(alloc, vma, variant)) {
    c.identityRefused++;
    return -ESRCH;
  }
  if (!isBinderVma(alloc, vma)) c.foreignInserts++;
  if (bugs.keepVmaReference) kept.vma = vma;
  return vm_insert_page(k, vma, addr, pfn, site);
}

/** insertC's answer when the re-check under the mmap write lock found the page installed. */
const ALREADY_INSTALLED = 1;

/**
 * binder_page_insert: find the VMA at `addr` (per-VMA lock, else the mmap lock in `fallback`
 * mode), check it, vm_insert_page. 0, -EBUSY, -ESRCH or the insert's error.
 * `index` (mmap-write mode) is the page re-checked under the write lock.
 */
export function* insertC(k: Kernel, alloc: BinderAlloc, mm: MmStruct, addr: number, pfn: number, variant: IdentityVariant, bugs: PlantedBugs, mode: 'vma-lock' | 'mmap-write', index = -1): KGen<number> {
  const c = eagerCounters(alloc);
  const site = mode === 'vma-lock' ? 'binder_page_insert' : 'binder_install_single_page';
  const kept = remembered(alloc);
  if (bugs.keepVmaReference && kept.vma) {
    // The planted bug: the VMA found earlier, used without any lock.
    if (!isBinderVma(alloc, kept.vma)) c.foreignInserts++;
    return vm_insert_page(k, kept.vma, addr, pfn, `${site} (kept VMA)`);
  }
  if (mode === 'mmap-write') {
    yield* k.locks.mmap_write_lock(mm, site);
    try {
      // v6.8–v6.13 re-check under the write lock: another installer (a reply and a
      // transaction can target the same page) may have installed it while we waited.
      if (index >= 0 && alloc.installedPage(index) >= 0) return ALREADY_INSTALLED;
      return tryInsert(k, alloc, c, kept, mm.vma_lookup(addr), addr, pfn, variant, bugs, site);
    } finally {
      k.locks.mmap_write_unlock(mm);
    }
  }
  const vma = k.locks.lock_vma_under_rcu(mm, addr, site);
  if (vma) {
    try {
      return tryInsert(k, alloc, c, kept, vma, addr, pfn, variant, bugs, site);
    } finally {
      k.locks.vma_end_read(vma);
    }
  }
  c.vmaLockFallbacks++;
  yield* k.locks.mmap_read_lock(mm, site);
  try {
    return tryInsert(k, alloc, c, kept, mm.vma_lookup(addr), addr, pfn, variant, bugs, site);
  } finally {
    k.locks.mmap_read_unlock(mm);
  }
}

/**
 * binder_page_lookup: another installer won the race for this PTE; adopt the page it mapped
 * (get_user_pages_remote with FOLL_NOFAULT under the mmap read lock). The pfn, or -ESRCH.
 */
export function* lookupC(k: Kernel, alloc: BinderAlloc, mm: MmStruct, addr: number, variant: IdentityVariant): KGen<number> {
  yield* k.locks.mmap_read_lock(mm, 'binder_page_lookup');
  try {
    const vma = mm.vma_lookup(addr);
    if (!vma || !identityOk(alloc, vma, variant)) return -ESRCH;
    const refs = new PageRefs(k, 'binder_page_lookup');
    const out: number[] = [];
    const n = yield* get_user_pages_remote(k, mm, addr, 1, FOLL_NOFAULT, refs, out);
    if (n !== 1) return -ESRCH;
    refs.dropGet(out[0]!); // the reference becomes the allocator's (alloc.pages holds it)
    eagerCounters(alloc).adopted++;
    return out[0]!;
  } finally {
    k.locks.mmap_read_unlock(mm);
  }
}

/**
 * binder_install_single_page for the eager C designs: mmget_not_zero, a fresh page, insert;
 * EBUSY adopts the page already there. Publishes the page on success.
 */
export function* installC(k: Kernel, alloc: BinderAlloc, index: number, addr: number, variant: IdentityVariant, bugs: PlantedBugs, mode: 'vma-lock' | 'mmap-write'): KGen<number> {
  const mm = alloc.mm;
  if (!mm || !mmget_not_zero(mm)) return -ESRCH;
  try {
    if (mode === 'mmap-write' && alloc.installedPage(index) >= 0) return 0;
    const pfn = alloc.allocFrame('binder_page_alloc');
    if (pfn < 0) return -12;
    const r = yield* insertC(k, alloc, mm, addr, pfn, variant, bugs, mode, index);
    if (r === ALREADY_INSTALLED) {
      alloc.dropFrame(pfn, 'binder_free_page <- binder_install_single_page');
      return 0;
    }
    if (r === 0) {
      alloc.setInstalledPage(index, pfn);
      return 0;
    }
    alloc.dropFrame(pfn, 'binder_free_page <- binder_install_single_page');
    if (r === -EBUSY && mode === 'vma-lock') {
      const found = yield* lookupC(k, alloc, mm, addr, variant);
      if (found < 0) return -ESRCH;
      alloc.setInstalledPage(index, found);
      return 0;
    }
    return r;
  } finally {
    mmput_async(k, mm);
  }
}

/**
 * The shrinker callback of the C eager designs (binder_alloc_free_page). `mode` 'vma-lock' is
 * v6.14+ (per-VMA lock, else mmap read trylock); 'mmap-trylock' is v6.8–v6.13 (mmap read
 * trylock only). Entered with the LRU lock held; every lock is a trylock.
 */
export function* freePageC(k: Kernel, alloc: BinderAlloc, index: number, variant: IdentityVariant, bugs: PlantedBugs, mode: 'vma-lock' | 'mmap-trylock'): KGen<LruStatus> {
  const mm = alloc.mm;
  if (!mm || !mmget_not_zero(mm)) return 'skip';
  const addr = alloc.pageAddr(index);
  let vma: VmArea | null = null;
  let held: 'vma' | 'mmap' | null = null;
  try {
    if (mode === 'vma-lock') {
      vma = k.locks.lock_vma_under_rcu(mm, addr, 'binder_alloc_free_page');
      if (vma) held = 'vma';
    }
    if (!held) {
      if (!k.locks.mmap_read_trylock(mm, 'binder_alloc_free_page')) return 'skip';
      held = 'mmap';
      vma = mm.vma_lookup(addr);
    }
    if (!alloc.mutex.trylock('binder_alloc_free_page')) return 'skip';
    try {
      // A VMA that fails the identity check is not touched, and neither is the page (C: SKIP).
      if (vma && !identityOk(alloc, vma, variant)) return 'skip';
      traceLruPage(k, 'binder_unmap_kernel_start', alloc.pid, index);
      const pfn = alloc.pages[index]!;
      alloc.pages[index] = -1;
      traceLruPage(k, 'binder_unmap_kernel_end', alloc.pid, index);
      alloc.isolate(index);
      if (vma) {
        if (!isBinderVma(alloc, vma)) eagerCounters(alloc).foreignZaps++;
        traceLruPage(k, 'binder_unmap_user_start', alloc.pid, index);
        if (bugs.zapWithoutFlush) zapPteWithoutFlush(k, vma, addr);
        else yield* zap_page_range_single(k, vma, addr, 4096);
        traceLruPage(k, 'binder_unmap_user_end', alloc.pid, index);
      }
      alloc.stats.pagesReclaimed++;
      k.pages.putPage(pfn, 'binder_free_page <- binder_alloc_free_page');
      return 'removed';
    } finally {
      alloc.mutex.unlock();
    }
  } finally {
    if (held === 'vma') k.locks.vma_end_read(vma!);
    else if (held === 'mmap') k.locks.mmap_read_unlock(mm);
    mmput_async(k, mm);
  }
}

// ==============================================================================================
// Rust path (identity variant vm_ops)
// ==============================================================================================

/** check_vma: vm_ops and private data must be this allocator's, then the VmaMixedMap view. */
function check_vma(alloc: BinderAlloc, vma: VmaRef): VmaMixedMap | null {
  if (vma.raw.vm_ops !== BINDER_VM_OPS || vma.raw.vm_private_data !== alloc) return null;
  return vma.as_mixedmap_vma();
}

/** The allocator's `Mm` handle (mmgrab'd once, dropped at release). */
function mmHandle(k: Kernel, alloc: BinderAlloc): Mm | null {
  const s = alloc.designState as { mm?: Mm } | null;
  if (s && s.mm) return s.mm;
  if (!alloc.mm) return null;
  const h = new Mm(k, alloc.mm);
  alloc.designState = { ...(s ?? {}), mm: h };
  return h;
}

/** Drop the `Mm` handle the Rust path took (at deferred release). */
export function dropMmHandle(alloc: BinderAlloc): void {
  const s = alloc.designState as { mm?: Mm } | null;
  if (s && s.mm) {
    s.mm.drop();
    s.mm = undefined;
  }
}

/**
 * use_page_slow: a fresh page, then mmget_not_zero (as MmWithUserAsync), lock_vma_under_rcu or
 * mmap_read_lock + vma_lookup, check_vma, VmaMixedMap::vm_insert_page; publish on success.
 */
export function* installRust(k: Kernel, alloc: BinderAlloc, index: number, addr: number, bugs: PlantedBugs): KGen<number> {
  const c = eagerCounters(alloc);
  const pfn = alloc.allocFrame('Page::alloc_page <- use_page_slow');
  if (pfn < 0) return -12;
  const page = Page.fromRaw(k, pfn);
  const handle = mmHandle(k, alloc);
  const mmu = handle?.mmget_not_zero()?.into_mmput_async() ?? null;
  if (!mmu) {
    alloc.dropFrame(pfn, 'use_page_slow (no mm)');
    return -ESRCH;
  }
  let r = -ESRCH;
  try {
    const kept = remembered(alloc);
    if (bugs.keepVmaReference && kept.rust) {
      r = kept.rust.vm_insert_page(addr, page, 'use_page_slow (kept VmaRef)');
    } else {
      const guard = mmu.lock_vma_under_rcu(addr, 'use_page_slow');
      if (guard) {
        const mixed = check_vma(alloc, guard.vma);
        if (mixed) {
          if (bugs.keepVmaReference) kept.rust = mixed;
          r = mixed.vm_insert_page(addr, page, 'use_page_slow');
        } else c.identityRefused++;
        guard.unlock();
      } else {
        c.vmaLockFallbacks++;
        const g = yield* mmu.mmap_read_lock('use_page_slow');
        if (g) {
          const vma = g.vma_lookup(addr);
          const mixed = vma ? check_vma(alloc, vma) : null;
          if (!vma) c.noVma++;
          else if (!mixed) c.identityRefused++;
          if (mixed) {
            if (bugs.keepVmaReference) kept.rust = mixed;
            r = mixed.vm_insert_page(addr, page, 'use_page_slow');
          }
          g.unlock();
        }
      }
    }
  } finally {
    mmu.drop_async();
  }
  if (r === 0) {
    alloc.setInstalledPage(index, pfn);
    return 0;
  }
  alloc.dropFrame(pfn, 'use_page_slow (insert failed)');
  return r;
}

/**
 * rust_shrink_free_page: mmget_not_zero, mmap_read_trylock, the allocator lock by trylock; take
 * the page, then vma_lookup + check_vma and zap it if the VMA is binder's; free it regardless
 * (it is mapped nowhere else).
 */
export function* freePageRust(k: Kernel, alloc: BinderAlloc, index: number, bugs: PlantedBugs): KGen<LruStatus> {
  const handle = mmHandle(k, alloc);
  const mmu = handle?.mmget_not_zero()?.into_mmput_async() ?? null;
  if (!mmu) return 'skip';
  try {
    const g = mmu.mmap_read_trylock('rust_shrink_free_page');
    if (!g) return 'skip';
    try {
      if (!alloc.mutex.trylock('rust_shrink_free_page')) return 'skip';
      try {
        traceLruPage(k, 'binder_unmap_kernel_start', alloc.pid, index);
        const pfn = alloc.pages[index]!;
        alloc.pages[index] = -1;
        traceLruPage(k, 'binder_unmap_kernel_end', alloc.pid, index);
        alloc.isolate(index);
        const addr = alloc.pageAddr(index);
        const vma = g.vma_lookup(addr);
        if (vma && check_vma(alloc, vma)) {
          traceLruPage(k, 'binder_unmap_user_start', alloc.pid, index);
          if (bugs.zapWithoutFlush) zapPteWithoutFlush(k, vma.raw, addr);
          else yield* vma.zap_page_range_single(addr, 4096);
          traceLruPage(k, 'binder_unmap_user_end', alloc.pid, index);
        }
        alloc.stats.pagesReclaimed++;
        k.pages.putPage(pfn, 'Page::drop <- rust_shrink_free_page');
        return 'removed';
      } finally {
        alloc.mutex.unlock();
      }
    } finally {
      g.unlock();
    }
  } finally {
    mmu.drop_async();
  }
}

// ==============================================================================================
// The planted flush bug
// ==============================================================================================

/**
 * Clear the PTE at `addr` in `vma` by hand and drop its page reference at once, with no TLB
 * flush: what a driver that "zaps" without mm's help would do. A CPU that cached the entry keeps
 * using the frame after it is freed.
 */
export function zapPteWithoutFlush(k: Kernel, vma: VmArea, addr: number): void {
  const pt = k.pt;
  const ptep = pt.pte_offset(vma.vm_mm, addr);
  if (ptep < 0) return;
  const lo = pt.lo(ptep);
  const hi = pt.hi(ptep);
  if (!(lo & _PAGE_PRESENT)) return;
  pt.get_and_clear(ptep);
  const pfn = vm_normal_page(k, vma, addr, lo, hi);
  if (pfn < 0) return;
  const mm = vma.vm_mm;
  if (isAnon(k, pfn)) mm.rss.anon--;
  else mm.rss[mm_counter_file(k, pfn)]--;
  folio_remove_rmap_pte(k, pfn);
  k.pages.putPage(pfn, 'zap without flush (planted bug)');
}
