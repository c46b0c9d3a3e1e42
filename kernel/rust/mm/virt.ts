/**
 * kernel/rust/mm/virt.ts — the VMA views of the kernel's Rust mm abstractions
 * (rust/kernel/mm/virt.rs), with the same names and type states:
 *
 *   VmaRef        "the caller holds the mmap read lock or this VMA's read lock": start(),
 *                 end(), flags(), mm(), zap_page_range_single(address, size) with its silent
 *                 bounds check, as_mixedmap_vma() → VmaMixedMap | null.
 *   VmaMixedMap   a VmaRef whose VMA has VM_MIXEDMAP: vm_insert_page(address, page) — legal
 *                 under a read lock precisely because VM_MIXEDMAP is already set.
 *   VmaNew        a VMA being set up inside a driver's ->mmap hook: set_mixedmap() → VmaMixedMap,
 *                 set_io(), set_dontexpand(), set_dontcopy(), set_dontdump(), readable(),
 *                 writable(), executable(), try_clear_mayread/maywrite/mayexec() (-EINVAL when
 *                 the matching permission is set; irreversible otherwise).
 *
 * A view's lifetime is its guard's (or, for VmaNew, the ->mmap call's): using it afterwards is
 * reported (kernel/rust/borrow.ts) and refused. Flag changes through VmaNew write vm_flags
 * directly, as Rust's update_flags does: the VMA is not yet visible to anyone else.
 */

import type { Kernel } from '../../kernel.ts';
import type { KGen } from '../../sched/core.ts';
import {
  VM_DONTCOPY, VM_DONTDUMP, VM_DONTEXPAND, VM_EXEC, VM_IO, VM_MAYEXEC, VM_MAYREAD, VM_MAYWRITE, VM_MIXEDMAP, VM_READ, VM_WRITE, type VmArea,
} from '../../mm/mm_types.ts';
import { vm_insert_page, zap_page_range_single } from '../../mm/memory.ts';
import { EINVAL } from '../../errno.ts';
import { Borrow, borrowCounters, checkBorrow } from '../borrow.ts';
import type { Page } from '../page.ts';

/** `VmaRef`. */
export class VmaRef {
  constructor(
    readonly k: Kernel,
    /** The vm_area_struct (as_ptr). */
    readonly raw: VmArea,
    readonly borrow: Borrow,
    /** The guard's borrow: the reference ends with it. */
    readonly guard: Borrow | null,
  ) {}

  /** Is this view usable now (its own and its guard's lifetime)? Reports if not. */
  protected ok(method: string): boolean {
    if (this.guard && !this.guard.live && this.borrow.live) this.borrow.end(this.guard.endedAt);
    return checkBorrow(this.k, this.borrow, method);
  }

  start(): number {
    return this.ok('VmaRef::start') ? this.raw.vm_start : 0;
  }

  end(): number {
    return this.ok('VmaRef::end') ? this.raw.vm_end : 0;
  }

  flags(): number {
    return this.ok('VmaRef::flags') ? this.raw.vm_flags : 0;
  }

  /** The mm (borrowed: no reference is taken; a locked VMA implies mm_users > 0). */
  mm(): import('../../mm/mm_types.ts').MmStruct | null {
    return this.ok('VmaRef::mm') ? this.raw.vm_mm : null;
  }

  /**
   * zap_page_range_single: clear the leaf entries of [address, address + size). Out-of-range or
   * overflowing requests return silently, as the Rust wrapper does (counted, not reported).
   */
  *zap_page_range_single(address: number, size: number): KGen {
    if (!this.ok('VmaRef::zap_page_range_single')) return;
    const end = address + size;
    if (!Number.isSafeInteger(end) || end < address || address < this.raw.vm_start || this.raw.vm_end < end) {
      borrowCounters(this.k).silentZapSkips++;
      return;
    }
    yield* zap_page_range_single(this.k, this.raw, address, size);
  }

  /** as_mixedmap_vma: the VmaMixedMap view if VM_MIXEDMAP is set. */
  as_mixedmap_vma(): VmaMixedMap | null {
    if (!this.ok('VmaRef::as_mixedmap_vma')) return null;
    if (!(this.raw.vm_flags & VM_MIXEDMAP)) return null;
    return new VmaMixedMap(this.k, this.raw, this.borrow, this.guard);
  }
}

/** `VmaMixedMap`. */
export class VmaMixedMap extends VmaRef {
  /** vm_insert_page: 0 or -errno (C takes its own page reference). */
  vm_insert_page(address: number, page: Page, caller = 'VmaMixedMap::vm_insert_page'): number {
    if (!this.ok('VmaMixedMap::vm_insert_page')) return -EINVAL;
    return vm_insert_page(this.k, this.raw, address, page.pfn, caller);
  }
}

/** `VmaNew`: only inside the ->mmap hook of the VMA. */
export class VmaNew extends VmaRef {
  /** Wrap the VMA handed to a driver's ->mmap (the C trampoline's VmaNew::from_raw). */
  static fromMmapHook(k: Kernel, vma: VmArea): VmaNew {
    const b = new Borrow('VmaNew');
    const v = new VmaNew(k, vma, b, null);
    return v;
  }

  protected override ok(method: string): boolean {
    if (this.borrow.live && !this.k.vmaNewWindow.isOpen(this.raw)) this.borrow.end('the return of ->mmap');
    return checkBorrow(this.k, this.borrow, method);
  }

  private update(set: number, unset: number, method: string): boolean {
    if (!this.ok(method)) return false;
    this.raw.vm_flags = ((this.raw.vm_flags | set) & ~unset) >>> 0;
    return true;
  }

  /** set_mixedmap: VM_MIXEDMAP, and the stronger view. */
  set_mixedmap(): VmaMixedMap | null {
    if (!this.update(VM_MIXEDMAP, 0, 'VmaNew::set_mixedmap')) return null;
    return new VmaMixedMap(this.k, this.raw, this.borrow, null);
  }

  set_io(): void {
    this.update(VM_IO, 0, 'VmaNew::set_io');
  }

  set_dontexpand(): void {
    this.update(VM_DONTEXPAND, 0, 'VmaNew::set_dontexpand');
  }

  set_dontcopy(): void {
    this.update(VM_DONTCOPY, 0, 'VmaNew::set_dontcopy');
  }

  set_dontdump(): void {
    this.update(VM_DONTDUMP, 0, 'VmaNew::set_dontdump');
  }

  readable(): boolean {
    return this.ok('VmaNew::readable') && (this.raw.vm_flags & VM_READ) !== 0;
  }

  writable(): boolean {
    return this.ok('VmaNew::writable') && (this.raw.vm_flags & VM_WRITE) !== 0;
  }

  executable(): boolean {
    return this.ok('VmaNew::executable') && (this.raw.vm_flags & VM_EXEC) !== 0;
  }

  private tryClear(perm: number, may: number, method: string): number {
    if (!this.ok(method)) return -EINVAL;
    if (this.raw.vm_flags & perm) return -EINVAL;
    this.raw.vm_flags = (this.raw.vm_flags & ~may) >>> 0;
    return 0;
  }

  try_clear_mayread(): number {
    return this.tryClear(VM_READ, VM_MAYREAD, 'VmaNew::try_clear_mayread');
  }

  try_clear_maywrite(): number {
    return this.tryClear(VM_WRITE, VM_MAYWRITE, 'VmaNew::try_clear_maywrite');
  }

  try_clear_mayexec(): number {
    return this.tryClear(VM_EXEC, VM_MAYEXEC, 'VmaNew::try_clear_mayexec');
  }
}
