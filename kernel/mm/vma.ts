/**
 * kernel/mm/vma.ts — VMA manipulation (mm/vma.c): flag updates on live VMAs, linking and
 * unlinking, splitting, merging a new range with its neighbours, modifying part of an existing
 * VMA (split and/or merge), removal, and the growth of a stack (expand_downwards).
 *
 * The rules, as Linux has them:
 *  - flags of a published VMA change only under its write lock (vm_flags_set and friends);
 *  - a split calls ->open on the new piece only (the original keeps its identity) and may be
 *    vetoed by ->may_split; splitting is refused beyond max_map_count (munmap may exceed it);
 *  - merges call no hooks, never merge VM_SPECIAL VMAs, and never delete a VMA that has ->close
 *    (it may be extended, though);
 *  - mergeability: equal flags apart from VM_IGNORE_MERGE (which is ORed into the result), same
 *    file, contiguous page offsets (anonymous VMAs too: their offset is the address they were
 *    created at, and stays with their pages when mremap moves them), same userfaultfd context and
 *    anon name, compatible anon_vma.
 *  - a VMA's page-offset range keys the i_mmap tree of its file's mapping, so range changes are
 *    made under i_mmap_rwsem (write).
 *
 * Deviation: Linux's vma_start_write may sleep waiting for VMA readers; flag changes made from
 * contexts that cannot yield here (vm_insert_page setting VM_MIXEDMAP) mark the VMA write-locked
 * without waiting and report a WARN if readers are present.
 */

import type { Kernel } from '../kernel.ts';
import type { KGen } from '../sched/core.ts';
import {
  MMAP_MIN_ADDR, PAGE_SIZE, STACK_GUARD_GAP, VM_ACCESS_FLAGS, VM_GROWSDOWN, VM_HUGETLB, VM_IGNORE_MERGE, VM_LOCKED_MASK, VM_SPECIAL, VmArea, type AnonVma, type MmStruct, type VmOperations,
} from './mm_types.ts';
import type { File } from '../fs/file.ts';
import { EFAULT, EINVAL, ENOMEM, EPERM } from '../errno.ts';
import { PMD_SIZE } from '../arch/x86/pgtable.ts';
import { anon_vma_prepare } from './rmap.ts';

/** sysctl_max_map_count default. */
export const DEFAULT_MAX_MAP_COUNT = 65530;
/** _STK_LIM: the default RLIMIT_STACK soft limit, 8 MiB. */
export const STK_LIM = 8 << 20;

/** What a new mapping would be, for merge decisions. */
export interface VmaProposal {
  flags: number;
  file: File | null;
  pgoff: number;
  anon_vma: AnonVma | null;
  uffd: unknown;
  anon_name: string | null;
  /** For existing-range modifications: the VMA being changed (its ops matter for removal). */
  vma?: VmArea;
}

/** vm_ops of a closed VMA (vma_dummy_vm_ops): close can never run twice. */
export const vma_dummy_vm_ops: VmOperations = Object.freeze({ name: 'dummy' });

export interface VmaCounters {
  splits: number;
  mergesNew: number;
  mergesExisting: number;
  opens: number;
  closes: number;
}

export class VmaOps {
  max_map_count = DEFAULT_MAX_MAP_COUNT;
  /**
   * RLIMIT_STACK's soft limit in bytes, for every task (mmulab has no per-process rlimits; this
   * is the default every task starts with, _STK_LIM).
   */
  rlimit_stack = STK_LIM;
  readonly counters: VmaCounters = { splits: 0, mergesNew: 0, mergesExisting: 0, opens: 0, closes: 0 };

  constructor(private readonly k: Kernel) {}

  // ---- flags ----------------------------------------------------------------------------------

  /** vma_start_write without waiting (see the header's deviation). */
  private writeLockNow(vma: VmArea, caller: string): void {
    const mm = vma.vm_mm;
    if (!mm.inTree(vma)) return; // not published: vm_flags_init territory
    this.k.locks.mmap_assert_write_locked(mm, `vm_flags_set <- ${caller}`);
    if (vma.readers.length > 0) {
      this.k.warn('WARNING: VMA flags changed while readers hold the VMA lock', `vma_start_write would wait for ${vma.readers.length} reader(s) of ${vma} (${caller})`, { vma: vma.id, caller });
    }
    vma.vm_lock_seq = mm.mm_lock_seq;
  }

  vm_flags_set(vma: VmArea, flags: number, caller: string): void {
    this.writeLockNow(vma, caller);
    vma.vm_flags = (vma.vm_flags | flags) >>> 0;
    this.k.checkVmaFlags(vma, caller);
  }

  vm_flags_clear(vma: VmArea, flags: number, caller: string): void {
    this.writeLockNow(vma, caller);
    vma.vm_flags = (vma.vm_flags & ~flags) >>> 0;
    this.k.checkVmaFlags(vma, caller);
  }

  vm_flags_mod(vma: VmArea, set: number, clear: number, caller: string): void {
    this.writeLockNow(vma, caller);
    vma.vm_flags = ((vma.vm_flags | set) & ~clear) >>> 0;
    this.k.checkVmaFlags(vma, caller);
  }

  // ---- file rmap (i_mmap) ---------------------------------------------------------------------

  *linkFile(vma: VmArea): KGen {
    const f = vma.vm_file;
    if (!f) return;
    const m = f.f_mapping;
    yield* m.i_mmap_rwsem.down_write('vma_link_file');
    m.i_mmap.insert(vma, vma.vm_pgoff, vma.lastPgoff);
    m.i_mmap_rwsem.up_write();
  }

  *unlinkFile(vma: VmArea): KGen {
    const f = vma.vm_file;
    if (!f) return;
    const m = f.f_mapping;
    yield* m.i_mmap_rwsem.down_write('unlink_file_vma');
    m.i_mmap.remove(vma);
    m.i_mmap_rwsem.up_write();
  }

  /** Change a linked VMA's range (and i_mmap key) under the locks Linux takes. */
  private *adjust(vma: VmArea, start: number, end: number, pgoff: number): KGen {
    const mm = vma.vm_mm;
    // Growing over a range a lazy flush policy still holds: let it finish there first.
    if (start < vma.vm_start) yield* this.k.tlb.before_map_range(mm, start, vma.vm_start);
    if (end > vma.vm_end) yield* this.k.tlb.before_map_range(mm, vma.vm_end, end);
    const f = vma.vm_file;
    if (f) yield* f.f_mapping.i_mmap_rwsem.down_write('vma_adjust');
    if (f) f.f_mapping.i_mmap.remove(vma);
    const oldPages = vma.pages;
    const startChanged = vma.vm_start !== start;
    vma.vm_start = start;
    vma.vm_end = end;
    vma.vm_pgoff = pgoff;
    vma.generation++;
    if (mm.inTree(vma)) {
      if (startChanged) mm.treeRekey(vma, oldPages);
      else {
        mm.total_vm += vma.pages - oldPages;
        mm.refreshGaps(vma);
      }
    }
    if (f) {
      f.f_mapping.i_mmap.insert(vma, vma.vm_pgoff, vma.lastPgoff);
      f.f_mapping.i_mmap_rwsem.up_write();
    }
    this.k.charge(this.k.costs.vmaOp);
  }

  // ---- stack growth -----------------------------------------------------------------------------

  /**
   * expand_downwards: grow the VM_GROWSDOWN `vma` down to the page of `address`, which lies below
   * it and above the VMA before it. Requires the mmap write lock (expand_stack_locked's callers
   * hold it); returns 0 or -errno: EFAULT for a VMA that does not grow down, EPERM below
   * mmap_min_addr, ENOMEM when the stack would come within stack_guard_gap of an accessible
   * mapping under it (one that grows down too, or a PROT_NONE one, is no obstacle), exceed
   * RLIMIT_STACK (acct_stack_growth: the size less one page) or run its page offset below 0.
   * The VMA is write-locked first, so no fault runs on it under its VMA lock meanwhile.
   *
   * Deviations: no RLIMIT_AS, RLIMIT_MEMLOCK or overcommit accounting (as for mmap, see
   * mmap.ts); RLIMIT_STACK is rlimit_stack above, one value for every task.
   */
  *expand_downwards(vma: VmArea, address: number): KGen<number> {
    const mm = vma.vm_mm;
    if (!(vma.vm_flags & VM_GROWSDOWN)) return -EFAULT;
    this.k.locks.mmap_assert_write_locked(mm, 'expand_downwards');
    address -= address % PAGE_SIZE;
    if (address < MMAP_MIN_ADDR) return -EPERM;
    // Enforce stack_guard_gap.
    const prev = mm.prevVma(vma);
    if (prev && !(prev.vm_flags & VM_GROWSDOWN) && prev.vm_flags & VM_ACCESS_FLAGS && address - prev.vm_end < STACK_GUARD_GAP) return -ENOMEM;
    // We must make sure the anon_vma is allocated.
    anon_vma_prepare(vma);
    // Lock the VMA before expanding to prevent concurrent page faults.
    yield* this.k.locks.vma_start_write(vma, 'expand_downwards');
    // Somebody else might have raced and expanded it already.
    if (address >= vma.vm_start) return 0;
    const size = vma.vm_end - address;
    const grow = (vma.vm_start - address) / PAGE_SIZE;
    if (grow > vma.vm_pgoff) return -ENOMEM;
    // acct_stack_growth: the guard page is not counted against the limit.
    if (size - PAGE_SIZE > this.rlimit_stack) return -ENOMEM;
    yield* this.adjust(vma, address, vma.vm_end, vma.vm_pgoff - grow);
    return 0;
  }

  // ---- link / unlink ----------------------------------------------------------------------------

  /** vma_link: publish a new VMA in its mm (tree, i_mmap). Requires the mmap write lock. */
  *link(vma: VmArea): KGen {
    const mm = vma.vm_mm;
    this.k.locks.mmap_assert_write_locked(mm, 'vma_link');
    yield* this.k.tlb.before_map_range(mm, vma.vm_start, vma.vm_end);
    vma.vm_lock_seq = mm.mm_lock_seq; // a new VMA is write-locked until the mmap lock is released
    this.k.locks.vma_mark_attached(vma);
    mm.treeInsert(vma);
    yield* this.linkFile(vma);
    this.k.charge(this.k.costs.vmaOp);
  }

  /** Detach a VMA from its mm's tree (and i_mmap) — vma_mark_detached + tree removal. */
  *detach(vma: VmArea): KGen {
    const mm = vma.vm_mm;
    yield* this.k.locks.vma_start_write(vma, 'vma_detach');
    mm.treeRemove(vma);
    this.k.locks.vma_mark_detached(vma);
    yield* this.unlinkFile(vma);
    this.k.charge(this.k.costs.vmaOp);
  }

  /** vma_close: ->close, then dummy ops so it cannot run twice. */
  close(vma: VmArea): void {
    if (vma.vm_ops?.close) {
      this.counters.closes++;
      vma.vm_ops.close(vma);
      vma.vm_ops = vma_dummy_vm_ops;
    }
  }

  /** remove_vma: close, drop the file reference, free. */
  remove(vma: VmArea): void {
    this.close(vma);
    if (vma.vm_file) vma.vm_file.put();
    vma.freed = true;
    vma.generation++;
  }

  /** vm_area_dup: a copy for a split or fork (VM_LOCKED_MASK not inherited on fork). */
  dup(vma: VmArea, mm: MmStruct = vma.vm_mm): VmArea {
    const n = new VmArea(mm, vma.vm_start, vma.vm_end, vma.vm_flags);
    n.vm_pgoff = vma.vm_pgoff;
    n.vm_ops = vma.vm_ops;
    n.vm_file = vma.vm_file;
    n.vm_private_data = vma.vm_private_data;
    n.anon_vma = vma.anon_vma;
    n.vm_userfaultfd_ctx = vma.vm_userfaultfd_ctx;
    n.pkey = vma.pkey;
    n.anon_name = vma.anon_name;
    if (mm !== vma.vm_mm) n.vm_flags &= ~VM_LOCKED_MASK;
    return n;
  }

  // ---- split ----------------------------------------------------------------------------------

  /**
   * __split_vma: split `vma` at `addr`. With newBelow, the new VMA takes [vm_start, addr) and the
   * original keeps the rest; otherwise the new VMA takes [addr, vm_end). ->open is called on the
   * new VMA. Returns the new VMA or -errno.
   */
  *split(vma: VmArea, addr: number, newBelow: boolean, checkMapCount: boolean): KGen<VmArea | number> {
    const mm = vma.vm_mm;
    if (addr <= vma.vm_start || addr >= vma.vm_end || addr % PAGE_SIZE) throw new Error(`split of ${vma} at ${addr.toString(16)}`);
    // hugetlb_vm_op_split: a hugetlb VMA splits only at a huge page boundary. mmulab's anonymous
    // hugetlb VMAs have no vm_ops, so the hook's check is made here.
    if (vma.vm_flags & VM_HUGETLB && addr % PMD_SIZE) return -EINVAL;
    if (vma.vm_ops?.may_split) {
      const err = vma.vm_ops.may_split(vma, addr);
      if (err) return err;
    }
    if (checkMapCount && mm.map_count >= this.max_map_count) return -ENOMEM;
    yield* this.k.locks.vma_start_write(vma, '__split_vma');
    const n = this.dup(vma);
    const pgAt = vma.pgoffOf(addr);
    if (newBelow) {
      n.vm_end = addr;
      yield* this.adjust(vma, addr, vma.vm_end, pgAt);
    } else {
      n.vm_start = addr;
      n.vm_pgoff = pgAt;
      yield* this.adjust(vma, vma.vm_start, addr, vma.vm_pgoff);
    }
    if (n.vm_file) n.vm_file.get();
    yield* this.link(n);
    if (n.vm_ops?.open) {
      this.counters.opens++;
      n.vm_ops.open(n);
    }
    this.counters.splits++;
    return n;
  }

  // ---- merging --------------------------------------------------------------------------------

  private mergeable(vma: VmArea, p: VmaProposal): boolean {
    if ((p.flags | vma.vm_flags) & VM_SPECIAL) return false;
    if (((vma.vm_flags ^ p.flags) & ~VM_IGNORE_MERGE) !== 0) return false;
    if (vma.vm_file !== p.file) return false;
    if (vma.vm_userfaultfd_ctx !== p.uffd) return false;
    if (vma.anon_name !== p.anon_name) return false;
    if (vma.anon_vma && p.anon_vma && vma.anon_vma !== p.anon_vma) return false;
    return true;
  }

  private canRemove(vma: VmArea): boolean {
    return !vma.vm_ops?.close;
  }

  /**
   * vma_merge_new_range: can the new range [start, end) described by `p` merge into its
   * neighbours? Returns the VMA now covering the range, or null (no merge).
   */
  *mergeNew(mm: MmStruct, start: number, end: number, p: VmaProposal): KGen<VmArea | null> {
    const next = mm.find_vma(start);
    const prev = next ? mm.prevVma(next) : mm.mm_mt.last()?.value ?? null;
    const pages = (end - start) / PAGE_SIZE;
    const canPrev = prev !== null && prev.vm_end === start && this.mergeable(prev, p) && prev.vm_pgoff + prev.pages === p.pgoff;
    const nx = next !== null && next.vm_start === end ? next : null;
    const canNext = nx !== null && this.mergeable(nx, p) && nx.vm_pgoff === p.pgoff + pages;
    const sticky = p.flags & VM_IGNORE_MERGE;
    if (canPrev && canNext && prev && nx && (!prev.anon_vma || !nx.anon_vma || prev.anon_vma === nx.anon_vma) && this.canRemove(nx)) {
      yield* this.k.locks.vma_start_write(prev, 'vma_merge_new_range');
      yield* this.k.locks.vma_start_write(nx, 'vma_merge_new_range');
      const end2 = nx.vm_end;
      if (!prev.anon_vma) prev.anon_vma = nx.anon_vma;
      yield* this.detach(nx);
      nx.freed = true;
      if (nx.vm_file) nx.vm_file.put();
      yield* this.adjust(prev, prev.vm_start, end2, prev.vm_pgoff);
      prev.vm_flags |= sticky | (nx.vm_flags & VM_IGNORE_MERGE);
      this.counters.mergesNew++;
      return prev;
    }
    if (canPrev && prev) {
      yield* this.k.locks.vma_start_write(prev, 'vma_merge_new_range');
      yield* this.adjust(prev, prev.vm_start, end, prev.vm_pgoff);
      prev.vm_flags |= sticky;
      this.counters.mergesNew++;
      return prev;
    }
    if (canNext && nx) {
      yield* this.k.locks.vma_start_write(nx, 'vma_merge_new_range');
      yield* this.adjust(nx, start, nx.vm_end, p.pgoff);
      nx.vm_flags |= sticky;
      this.counters.mergesNew++;
      return nx;
    }
    return null;
  }

  /**
   * vma_modify: apply `newFlags` (and `change`) to [start, end) of `vma`, merging with a
   * neighbour where the rules allow, splitting otherwise. Returns the VMA that now covers exactly
   * [start, end), or -errno. When no merge happens the returned VMA is the original object.
   */
  *modify(vma: VmArea, start: number, end: number, newFlags: number, change?: (v: VmArea) => void): KGen<VmArea | number> {
    const mm = vma.vm_mm;
    const prev = mm.prevVma(vma);
    const next = mm.nextVma(vma);
    const leftSide = start === vma.vm_start;
    const rightSide = end === vma.vm_end;
    const p: VmaProposal = { flags: newFlags, file: vma.vm_file, pgoff: vma.pgoffOf(start), anon_vma: vma.anon_vma, uffd: vma.vm_userfaultfd_ctx, anon_name: vma.anon_name, vma };
    const pages = (end - start) / PAGE_SIZE;
    let mergeLeft = leftSide && prev !== null && prev.vm_end === start && !change && this.mergeable(prev, p) && prev.vm_pgoff + prev.pages === p.pgoff;
    let mergeRight = rightSide && next !== null && next.vm_start === end && !change && this.mergeable(next, p) && next.vm_pgoff === p.pgoff + pages;
    if (mergeLeft && mergeRight && prev!.anon_vma && next!.anon_vma && prev!.anon_vma !== next!.anon_vma) mergeRight = false;
    if (mergeLeft && mergeRight && !(this.canRemove(vma) && this.canRemove(next!))) {
      // The middle or the next VMA cannot be deleted: try prev + middle only.
      mergeRight = false;
    }
    if (mergeLeft && rightSide && !this.canRemove(vma)) mergeLeft = false;
    if (mergeRight && leftSide && !this.canRemove(vma)) mergeRight = false;
    const sticky = newFlags & VM_IGNORE_MERGE;
    if (mergeLeft && mergeRight) {
      const pr = prev!;
      const nx = next!;
      for (const v of [pr, vma, nx]) yield* this.k.locks.vma_start_write(v, 'vma_merge_existing_range');
      if (!pr.anon_vma) pr.anon_vma = vma.anon_vma ?? nx.anon_vma;
      const end2 = nx.vm_end;
      for (const v of [vma, nx]) {
        yield* this.detach(v);
        v.freed = true;
        if (v.vm_file) v.vm_file.put();
      }
      yield* this.adjust(pr, pr.vm_start, end2, pr.vm_pgoff);
      pr.vm_flags |= sticky;
      this.counters.mergesExisting++;
      return pr;
    }
    if (mergeLeft) {
      const pr = prev!;
      yield* this.k.locks.vma_start_write(pr, 'vma_merge_existing_range');
      yield* this.k.locks.vma_start_write(vma, 'vma_merge_existing_range');
      if (!pr.anon_vma) pr.anon_vma = vma.anon_vma;
      if (rightSide) {
        yield* this.detach(vma);
        vma.freed = true;
        if (vma.vm_file) vma.vm_file.put();
      } else {
        yield* this.adjust(vma, end, vma.vm_end, vma.pgoffOf(end));
      }
      yield* this.adjust(pr, pr.vm_start, end, pr.vm_pgoff);
      pr.vm_flags |= sticky;
      this.counters.mergesExisting++;
      return pr;
    }
    if (mergeRight) {
      const nx = next!;
      yield* this.k.locks.vma_start_write(nx, 'vma_merge_existing_range');
      yield* this.k.locks.vma_start_write(vma, 'vma_merge_existing_range');
      if (!nx.anon_vma) nx.anon_vma = vma.anon_vma;
      const pg = p.pgoff;
      if (leftSide) {
        yield* this.detach(vma);
        vma.freed = true;
        if (vma.vm_file) vma.vm_file.put();
      } else {
        yield* this.adjust(vma, vma.vm_start, start, vma.vm_pgoff);
      }
      yield* this.adjust(nx, start, nx.vm_end, pg);
      nx.vm_flags |= sticky;
      this.counters.mergesExisting++;
      return nx;
    }
    // No merge: split off the parts outside [start, end).
    if (start > vma.vm_start) {
      const r = yield* this.split(vma, start, true, true);
      if (typeof r === 'number') return r;
    }
    if (end < vma.vm_end) {
      const r = yield* this.split(vma, end, false, true);
      if (typeof r === 'number') return r;
    }
    yield* this.k.locks.vma_start_write(vma, 'vma_modify');
    vma.vm_flags = newFlags >>> 0;
    if (change) change(vma);
    return vma;
  }
}
