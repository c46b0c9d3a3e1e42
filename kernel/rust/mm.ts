/**
 * kernel/rust/mm.ts — the address-space handles and lock guards of the kernel's Rust mm
 * abstractions (rust/kernel/mm.rs, rust/kernel/mm/mmput_async.rs), with the same names and the
 * same type states:
 *
 *   Mm                 holds an mm_count reference (mmgrab); mm_users may be 0. The only way to
 *                      the address space is mmget_not_zero() → MmWithUser | null.
 *   MmWithUser         holds an mm_users reference (mmget): VMAs and page tables stay. Offers
 *                      mmap_read_lock() → MmapReadGuard, mmap_read_trylock() → guard | null,
 *                      lock_vma_under_rcu(addr) → VmaReadGuard | null (never waits), and
 *                      into_mmput_async(). There is no write lock: Rust drivers cannot take it.
 *   MmWithUserAsync    the same, released with mmput_async (safe where sleeping is not).
 *   MmapReadGuard      owns the mmap read lock; vma_lookup(addr) → VmaRef | null.
 *   VmaReadGuard       owns one VMA's read lock; `.vma` is the VmaRef.
 *
 * Rust drops values implicitly; here guards and handles are released explicitly (unlock(),
 * drop()). A VmaRef lives only as long as its guard (kernel/rust/borrow.ts checks it); a handle
 * dropped twice is reported.
 */

import type { Kernel } from '../kernel.ts';
import type { KGen } from '../sched/core.ts';
import type { MmStruct } from '../mm/mm_types.ts';
import { mmdrop, mmget_not_zero, mmgrab, mmput, mmput_async } from '../fork.ts';
import { Borrow, borrowCounters, callSite, checkBorrow } from './borrow.ts';
import { VmaRef } from './mm/virt.ts';

function doubleRelease(k: Kernel, what: string, b: Borrow): void {
  borrowCounters(k).doubleRelease++;
  k.report({
    kind: 'BUG',
    title: `BUG: ${what} released twice`,
    text: `BUG: ${what} released twice at ${callSite()} (first released at ${b.endedAt}, obtained at ${b.startedAt})`,
    data: { contract: 'double-release', what },
  });
}

/** `Mm`: an mmgrab'd mm_struct. */
export class Mm {
  readonly borrow: Borrow;

  /** Take an mm_count reference on `mm` (ARef<Mm> from a raw pointer). */
  constructor(
    readonly k: Kernel,
    readonly raw: MmStruct,
  ) {
    mmgrab(raw);
    this.borrow = new Borrow('Mm');
  }

  /** mmget_not_zero: the address space, unless it is already being torn down. */
  mmget_not_zero(): MmWithUser | null {
    if (!checkBorrow(this.k, this.borrow, 'Mm::mmget_not_zero')) return null;
    if (!mmget_not_zero(this.raw)) return null;
    return new MmWithUser(this.k, this.raw);
  }

  /** Drop the mm_count reference (mmdrop). */
  drop(): void {
    if (!this.borrow.live) return doubleRelease(this.k, 'Mm', this.borrow);
    this.borrow.end();
    mmdrop(this.k, this.raw);
  }
}

/** `MmWithUser`: an mmget'd mm_struct. */
export class MmWithUser {
  readonly borrow: Borrow;

  constructor(
    readonly k: Kernel,
    readonly raw: MmStruct,
    what = 'MmWithUser',
  ) {
    this.borrow = new Borrow(what);
  }

  /** mmap_read_lock (blocking). `caller` names the acquisition in lock statistics. */
  *mmap_read_lock(caller = 'MmWithUser::mmap_read_lock'): KGen<MmapReadGuard | null> {
    if (!checkBorrow(this.k, this.borrow, 'MmWithUser::mmap_read_lock')) return null;
    yield* this.k.locks.mmap_read_lock(this.raw, caller);
    return new MmapReadGuard(this);
  }

  /** mmap_read_trylock. */
  mmap_read_trylock(caller = 'MmWithUser::mmap_read_trylock'): MmapReadGuard | null {
    if (!checkBorrow(this.k, this.borrow, 'MmWithUser::mmap_read_trylock')) return null;
    if (!this.k.locks.mmap_read_trylock(this.raw, caller)) return null;
    return new MmapReadGuard(this);
  }

  /** lock_vma_under_rcu: an optimistic per-VMA read lock; null on contention (fall back to mmap_read_lock). */
  lock_vma_under_rcu(vma_addr: number, caller = 'MmWithUser::lock_vma_under_rcu'): VmaReadGuard | null {
    if (!checkBorrow(this.k, this.borrow, 'MmWithUser::lock_vma_under_rcu')) return null;
    const vma = this.k.locks.lock_vma_under_rcu(this.raw, vma_addr, caller);
    if (!vma) return null;
    return new VmaReadGuard(this, vma);
  }

  /** into_mmput_async: the same reference, released with mmput_async. */
  into_mmput_async(): MmWithUserAsync | null {
    if (!checkBorrow(this.k, this.borrow, 'MmWithUser::into_mmput_async')) return null;
    this.borrow.end();
    return new MmWithUserAsync(this.k, this.raw);
  }

  /** Drop the mm_users reference (mmput; the last one tears the address space down). */
  *drop(): KGen {
    if (!this.borrow.live) return doubleRelease(this.k, this.borrow.what, this.borrow);
    this.borrow.end();
    yield* mmput(this.k, this.raw);
  }
}

/** `MmWithUserAsync`: released by mmput_async, never sleeps. */
export class MmWithUserAsync extends MmWithUser {
  constructor(k: Kernel, raw: MmStruct) {
    super(k, raw, 'MmWithUserAsync');
  }

  /** Drop with mmput_async (a last reference is put by a workqueue). */
  drop_async(): void {
    if (!this.borrow.live) return doubleRelease(this.k, this.borrow.what, this.borrow);
    this.borrow.end();
    mmput_async(this.k, this.raw);
  }

  override *drop(): KGen {
    this.drop_async();
  }
}

/** `MmapReadGuard`: the mmap read lock, held. */
export class MmapReadGuard {
  readonly borrow: Borrow;

  constructor(readonly mm: MmWithUser) {
    this.borrow = new Borrow('MmapReadGuard');
  }

  /** vma_lookup: the VMA containing `vma_addr`, valid while this guard is held. */
  vma_lookup(vma_addr: number): VmaRef | null {
    if (!checkBorrow(this.mm.k, this.borrow, 'MmapReadGuard::vma_lookup')) return null;
    const vma = this.mm.raw.vma_lookup(vma_addr);
    return vma ? new VmaRef(this.mm.k, vma, new Borrow('VmaRef (from MmapReadGuard::vma_lookup)'), this.borrow) : null;
  }

  /** Drop: mmap_read_unlock. Every VmaRef from this guard ends with it. */
  unlock(): void {
    if (!this.borrow.live) return doubleRelease(this.mm.k, 'MmapReadGuard', this.borrow);
    this.borrow.end();
    this.mm.k.locks.mmap_read_unlock(this.mm.raw);
  }
}

/** `VmaReadGuard`: one VMA's read lock, held. */
export class VmaReadGuard {
  readonly borrow: Borrow;
  /** The VMA (Deref<Target = VmaRef>), valid while this guard is held. */
  readonly vma: VmaRef;

  constructor(
    readonly mm: MmWithUser,
    raw: import('../mm/mm_types.ts').VmArea,
  ) {
    const at = new Error();
    this.borrow = new Borrow('VmaReadGuard', at);
    this.vma = new VmaRef(mm.k, raw, new Borrow('VmaRef (from lock_vma_under_rcu)', at), this.borrow);
  }

  /** Drop: vma_end_read. */
  unlock(): void {
    if (!this.borrow.live) return doubleRelease(this.mm.k, 'VmaReadGuard', this.borrow);
    this.borrow.end();
    this.mm.k.locks.vma_end_read(this.vma.raw);
  }
}
