/**
 * kernel/mm/mmap_lock.ts — the mmap lock and per-VMA locks (include/linux/mmap_lock.h,
 * mm/mmap_lock.c), with the mmap_lock tracepoints.
 *
 * The mmap lock is an rwsem. mm_lock_seq is odd while the lock is held for write and is bumped
 * to even by mmap_write_unlock and mmap_write_downgrade (vma_end_write_all): that single bump
 * releases every VMA write lock taken during the write hold — there is no vma_end_write.
 *
 * A VMA is write-locked when its vm_lock_seq equals mm_lock_seq (meaningful only under the mmap
 * write lock). Readers take the VMA lock with lock_vma_under_rcu, which never waits: it fails
 * when the VMA is write-locked in the current cycle or being write-locked, when it was detached,
 * or when the address is outside it after all — the caller then falls back to the mmap read
 * lock. vma_start_write waits (sleeps) for readers to leave.
 */

import type { Kernel } from '../kernel.ts';
import type { KGen, Task } from '../sched/core.ts';
import { RwSemaphore } from '../locking/rwsem.ts';
import type { Lockdep } from '../locking/lockdep.ts';
import { WaitQueue } from '../sched/wait.ts';
import type { MmStruct, VmArea } from './mm_types.ts';

export const MMAP_LOCK_CLASS = '&mm->mmap_lock';
export const VMA_LOCK_CLASS = '&vma->vm_lock';

export interface VmaLockStats {
  /** lock_vma_under_rcu outcomes (VMA_LOCK_SUCCESS / VMA_LOCK_ABORT / VMA_LOCK_MISS). */
  success: number;
  abort: number;
  miss: number;
  /** Faults retried under the mmap lock after the VMA lock (VMA_LOCK_RETRY). */
  retry: number;
  /** By caller label: successes and failures. */
  byCaller: Map<string, { success: number; fail: number }>;
}

export class MmapLocking {
  readonly vmaStats: VmaLockStats = { success: 0, abort: 0, miss: 0, retry: 0, byCaller: new Map() };
  /** Writers waiting for readers of a VMA. */
  private readonly vmaWriters = new WaitQueue('vma_writer_wait');

  constructor(
    private readonly k: Kernel,
    readonly lockdep: Lockdep,
  ) {}

  /** Create the mmap lock of a new mm. */
  init(mm: MmStruct): void {
    mm.mmap_lock = new RwSemaphore(this.k, MMAP_LOCK_CLASS, this.lockdep);
    mm.mm_lock_seq = 0;
  }

  private traceStart(mm: MmStruct, write: boolean): void {
    if (!this.k.trace.enabled) return;
    this.k.trace.emit('mmap_lock:mmap_lock_start_locking', { mm: mm.ctx_id, memcg_id: 0, write }, `mm=${mmHash(mm)} memcg_id=0 write=${write}`);
  }

  private traceAcquired(mm: MmStruct, write: boolean, success: boolean): void {
    if (!this.k.trace.enabled) return;
    this.k.trace.emit('mmap_lock:mmap_lock_acquire_returned', { mm: mm.ctx_id, memcg_id: 0, write, success }, `mm=${mmHash(mm)} memcg_id=0 write=${write} success=${success}`);
  }

  private traceReleased(mm: MmStruct, write: boolean): void {
    if (!this.k.trace.enabled) return;
    this.k.trace.emit('mmap_lock:mmap_lock_released', { mm: mm.ctx_id, memcg_id: 0, write }, `mm=${mmHash(mm)} memcg_id=0 write=${write}`);
  }

  *mmap_read_lock(mm: MmStruct, caller: string): KGen {
    this.traceStart(mm, false);
    yield* mm.mmap_lock.down_read(caller, `mmap_read_lock <- ${caller}`);
    this.traceAcquired(mm, false, true);
  }

  mmap_read_trylock(mm: MmStruct, caller: string): boolean {
    this.traceStart(mm, false);
    const ok = mm.mmap_lock.down_read_trylock(caller, `mmap_read_trylock <- ${caller}`);
    this.traceAcquired(mm, false, ok);
    return ok;
  }

  mmap_read_unlock(mm: MmStruct): void {
    mm.mmap_lock.up_read();
    this.traceReleased(mm, false);
  }

  *mmap_write_lock(mm: MmStruct, caller: string): KGen {
    this.traceStart(mm, true);
    yield* mm.mmap_lock.down_write(caller, `mmap_write_lock <- ${caller}`);
    mm.mm_lock_seq++; // odd: write-locked
    this.traceAcquired(mm, true, true);
  }

  mmap_write_trylock(mm: MmStruct, caller: string): boolean {
    const ok = mm.mmap_lock.down_write_trylock(caller, `mmap_write_trylock <- ${caller}`);
    if (ok) mm.mm_lock_seq++;
    return ok;
  }

  /** vma_end_write_all: one bump releases every VMA write lock of this write cycle. */
  private vma_end_write_all(mm: MmStruct): void {
    mm.mm_lock_seq++;
    this.vmaWriters.wakeAll(this.k);
  }

  mmap_write_unlock(mm: MmStruct): void {
    this.vma_end_write_all(mm);
    mm.mmap_lock.up_write();
    this.traceReleased(mm, true);
  }

  mmap_write_downgrade(mm: MmStruct): void {
    this.vma_end_write_all(mm);
    mm.mmap_lock.downgrade_write();
  }

  // ---- assertions (mmap_assert_locked, mmap_assert_write_locked, vma_assert_locked) ----------

  mmap_assert_locked(mm: MmStruct, func: string): boolean {
    return this.lockdep.assertHeld(mm.mmap_lock, MMAP_LOCK_CLASS, 'any', func);
  }

  mmap_assert_write_locked(mm: MmStruct, func: string): boolean {
    return this.lockdep.assertHeld(mm.mmap_lock, MMAP_LOCK_CLASS, 'write', func);
  }

  /** The VMA is stable for the current task: mmap lock (any mode) or the VMA's read lock. */
  vmaIsStable(vma: VmArea, t: Task | null = this.k.current): boolean {
    if (!t) return false;
    return vma.vm_mm.mmap_lock.heldBy(t) || vma.readers.includes(t);
  }

  vma_assert_locked(vma: VmArea, func: string): boolean {
    if (this.vmaIsStable(vma)) return true;
    return this.lockdep.assertHeld(vma, VMA_LOCK_CLASS, 'any', func);
  }

  // ---- per-VMA locks --------------------------------------------------------------------------

  /** vma_is_write_locked (only meaningful under the mmap write lock). */
  isWriteLocked(vma: VmArea): boolean {
    return vma.vm_lock_seq === vma.vm_mm.mm_lock_seq;
  }

  private vmaStat(caller: string): { success: number; fail: number } {
    let s = this.vmaStats.byCaller.get(caller);
    if (!s) {
      s = { success: 0, fail: 0 };
      this.vmaStats.byCaller.set(caller, s);
    }
    return s;
  }

  /**
   * lock_vma_under_rcu: find the VMA at `addr` and take its read lock without waiting; null
   * when that is not possible now (write-locked this cycle, being write-locked, detached) or
   * there is no VMA there.
   */
  lock_vma_under_rcu(mm: MmStruct, addr: number, caller: string): VmArea | null {
    const k = this.k;
    k.charge(k.costs.vmaOp);
    const t = k.current;
    const vma = mm.vma_lookup(addr);
    const st = this.vmaStat(caller);
    if (!vma || !t) {
      this.vmaStats.abort++;
      st.fail++;
      return null;
    }
    // vma_start_read: the lockless check, then the refcount (which fails while a writer
    // excludes readers or when detached), then the re-check of the sequence.
    if (vma.vm_lock_seq === mm.mm_lock_seq || vma.excludeReaders || vma.vm_refcnt === 0 || vma.vm_mm !== mm) {
      if (vma.vm_refcnt === 0) this.vmaStats.miss++;
      else this.vmaStats.abort++;
      st.fail++;
      return null;
    }
    if (addr < vma.vm_start || addr >= vma.vm_end) {
      this.vmaStats.abort++;
      st.fail++;
      return null;
    }
    vma.vm_refcnt++;
    vma.readers.push(t);
    this.lockdep.acquire(VMA_LOCK_CLASS, vma, 'read', `lock_vma_under_rcu <- ${caller}`, true, t);
    this.vmaStats.success++;
    st.success++;
    return vma;
  }

  /** vma_start_read_locked: under the mmap read lock a reader cannot be refused. */
  vma_start_read_locked(vma: VmArea, caller: string): boolean {
    const t = this.k.current;
    if (!t || vma.vm_refcnt === 0) return false;
    vma.vm_refcnt++;
    vma.readers.push(t);
    this.lockdep.acquire(VMA_LOCK_CLASS, vma, 'read', `vma_start_read_locked <- ${caller}`, true, t);
    return true;
  }

  vma_end_read(vma: VmArea, t: Task | null = this.k.current): void {
    const i = t ? vma.readers.indexOf(t) : -1;
    if (i < 0) {
      this.k.warn('WARNING: vma_end_read without the VMA read lock', `vma_end_read: ${vma} is not read-locked by ${t?.comm}/${t?.pid}`, { vma: vma.id });
      return;
    }
    vma.readers.splice(i, 1);
    vma.vm_refcnt--;
    this.lockdep.release(vma, t);
    if (vma.excludeReaders && vma.readers.length === 0) this.vmaWriters.wakeAll(this.k);
  }

  /**
   * vma_start_write: requires the mmap write lock; waits for the VMA's readers to leave, then
   * marks it write-locked for this cycle.
   */
  *vma_start_write(vma: VmArea, caller: string): KGen {
    const mm = vma.vm_mm;
    this.mmap_assert_write_locked(mm, `vma_start_write <- ${caller}`);
    if (vma.vm_lock_seq === mm.mm_lock_seq) return;
    if (vma.vm_refcnt !== 0 && vma.readers.length > 0) {
      vma.excludeReaders = true;
      while (vma.readers.length > 0) yield* this.vmaWriters.sleep(this.k, `vma_start_write (readers of ${vma})`);
      vma.excludeReaders = false;
    }
    vma.vm_lock_seq = mm.mm_lock_seq;
  }

  /** vma_mark_attached / vma_mark_detached. */
  vma_mark_attached(vma: VmArea): void {
    vma.vm_refcnt = 1;
  }

  vma_mark_detached(vma: VmArea): void {
    vma.vm_refcnt = 0;
  }
}

/** A stable pseudo-pointer for `mm=%p` in the trace. */
export function mmHash(mm: MmStruct): string {
  return (0xffff888100000000n + BigInt(mm.ctx_id) * 0x1000n).toString(16).padStart(16, '0');
}
