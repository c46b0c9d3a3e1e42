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
 * lock. vma_start_write waits (sleeps) for readers to leave. uffd_lock_vma (mm/userfaultfd.c)
 * is the waiting variant: it falls back to the mmap read lock to wait out a writer.
 *
 * The assertions follow Linux: mmap_assert_locked/_write_locked are lockdep checks;
 * vma_assert_locked wants the VMA's own lock (read, or write under the mmap write lock), while
 * vma_assert_stabilised also accepts the mmap lock; i_mmap_assert_locked (include/linux/fs.h in
 * Linux) lives here with the other lock assertions.
 *
 * Deviation: a VMA found by lock_vma_under_rcu is always in the tree (detaching removes it at
 * once), so a detached VMA (vm_refcnt 0) is only met if planted; Linux would retry the lookup
 * (VMA_LOCK_MISS), mmulab counts the miss and fails.
 */

import type { Kernel } from '../kernel.ts';
import type { KGen, Task } from '../sched/core.ts';
import { RwSemaphore } from '../locking/rwsem.ts';
import type { Lockdep } from '../locking/lockdep.ts';
import { WaitQueue } from '../sched/wait.ts';
import { VM_SHARED, type MmStruct, type VmArea } from './mm_types.ts';
import { anon_vma_prepare } from './rmap.ts';
import type { AddressSpace } from '../fs/file.ts';
import { EAGAIN, ENOENT } from '../errno.ts';

export const MMAP_LOCK_CLASS = '&mm->mmap_lock';
/** The lockdep class of VMA locks, as vma_lock_init names it. */
export const VMA_LOCK_CLASS = 'vm_lock';

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
    this.traceStart(mm, true);
    const ok = mm.mmap_lock.down_write_trylock(caller, `mmap_write_trylock <- ${caller}`);
    if (ok) mm.mm_lock_seq++;
    this.traceAcquired(mm, true, ok);
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
    this.traceAcquired(mm, false, true);
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

  /**
   * vma_assert_write_locked: the mmap write lock is held (mmap_assert_write_locked inside
   * __vma_raw_mm_seqnum) and the VMA was write-locked in this cycle (VM_WARN_ON_ONCE_VMA).
   */
  vma_assert_write_locked(vma: VmArea, func: string): boolean {
    if (!this.mmap_assert_write_locked(vma.vm_mm, func)) return false;
    if (this.isWriteLocked(vma)) return true;
    this.k.warn(`WARNING: ${func}: VMA not write-locked`, `VM_WARN_ON_ONCE_VMA(!__is_vma_write_locked(vma)) at ${func}: ${vma} vm_lock_seq ${vma.vm_lock_seq} mm_lock_seq ${vma.vm_mm.mm_lock_seq}`, { vma: vma.id, func });
    return false;
  }

  /**
   * vma_assert_locked: the current task holds the VMA's read lock, or else the VMA is
   * write-locked (which requires the mmap write lock). The mmap lock alone does not satisfy it:
   * that is vma_assert_stabilised.
   */
  vma_assert_locked(vma: VmArea, func: string): boolean {
    if (this.lockdep.isHeld(vma)) return true;
    return this.vma_assert_write_locked(vma, func);
  }

  /** vma_assert_stabilised: the mmap lock (either mode) or a VMA lock keeps the VMA stable. */
  vma_assert_stabilised(vma: VmArea, func: string): boolean {
    if (this.lockdep.isHeld(vma.vm_mm.mmap_lock)) return true;
    return this.vma_assert_locked(vma, func);
  }

  /**
   * i_mmap_assert_locked / i_mmap_assert_write_locked (include/linux/fs.h): the rmap lock of a
   * file's mapping, which stabilises every VMA in its i_mmap tree.
   */
  i_mmap_assert_locked(mapping: AddressSpace, func: string): boolean {
    return this.lockdep.assertHeld(mapping.i_mmap_rwsem, mapping.i_mmap_rwsem.cls, 'any', func);
  }

  i_mmap_assert_write_locked(mapping: AddressSpace, func: string): boolean {
    return this.lockdep.assertHeld(mapping.i_mmap_rwsem, mapping.i_mmap_rwsem.cls, 'write', func);
  }

  // ---- per-VMA locks --------------------------------------------------------------------------

  /** vma_is_write_locked (only meaningful under the mmap write lock). */
  isWriteLocked(vma: VmArea): boolean {
    return vma.vm_lock_seq === vma.vm_mm.mm_lock_seq;
  }

  /** The caller label looked up last, with its vmaStats.byCaller entry and its lockdep site. */
  private lastCaller: { caller: string; stat: { success: number; fail: number }; site: string } | null = null;

  /** The per-caller entry of vmaStats and the lockdep site (faults all come from one caller). */
  private vmaStat(caller: string): { caller: string; stat: { success: number; fail: number }; site: string } {
    const last = this.lastCaller;
    if (last !== null && last.caller === caller) return last;
    let s = this.vmaStats.byCaller.get(caller);
    if (!s) {
      s = { success: 0, fail: 0 };
      this.vmaStats.byCaller.set(caller, s);
    }
    const entry = { caller, stat: s, site: `lock_vma_under_rcu <- ${caller}` };
    this.lastCaller = entry;
    return entry;
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
    const entry = this.vmaStat(caller);
    const st = entry.stat;
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
    this.lockdep.acquire(VMA_LOCK_CLASS, vma, 'read', entry.site, true, t);
    this.vmaStats.success++;
    st.success++;
    return vma;
  }

  /** vma_start_read_locked: under the mmap read lock a reader cannot be refused. */
  vma_start_read_locked(vma: VmArea, caller: string): boolean {
    this.mmap_assert_locked(vma.vm_mm, `vma_start_read_locked <- ${caller}`);
    const t = this.k.current;
    if (!t || vma.vm_refcnt === 0) return false;
    vma.vm_refcnt++;
    vma.readers.push(t);
    this.lockdep.acquire(VMA_LOCK_CLASS, vma, 'read', `vma_start_read_locked <- ${caller}`, true, t);
    return true;
  }

  vma_end_read(vma: VmArea, t: Task | null = this.k.current): void {
    const readers = vma.readers;
    const i = t ? readers.lastIndexOf(t) : -1;
    if (i < 0) {
      this.k.warn('WARNING: vma_end_read without the VMA read lock', `vma_end_read: ${vma} is not read-locked by ${t?.comm}/${t?.pid}`, { vma: vma.id });
      return;
    }
    // Readers are usually released in the order they came; removing the last one is a pop.
    if (i === readers.length - 1) readers.pop();
    else readers.splice(i, 1);
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
    if (vma.vm_refcnt !== 0) {
      // __vma_start_exclude_readers: an exclusive acquisition for lockdep (so mmap_lock → vm_lock
      // is a known dependency and a VMA reader that takes the mmap lock is a reported inversion).
      this.lockdep.acquire(VMA_LOCK_CLASS, vma, 'write', `vma_start_write <- ${caller}`, false);
      if (vma.readers.length > 0) {
        vma.excludeReaders = true;
        while (vma.readers.length > 0) yield* this.vmaWriters.sleep(this.k, `vma_start_write (readers of ${vma})`);
        vma.excludeReaders = false;
      }
      this.lockdep.release(vma);
    }
    vma.vm_lock_seq = mm.mm_lock_seq;
  }

  /**
   * uffd_lock_vma (mm/userfaultfd.c): the VMA at `address` read-locked, waiting if need be.
   * First lock_vma_under_rcu; a private VMA without an anon_vma is given up (one will be needed).
   * Otherwise wait for any writer by taking the mmap read lock briefly: vma_lookup, prepare the
   * anon_vma of a private VMA, vma_start_read_locked (which cannot meet a writer now), unlock.
   * Returns the VMA or -ENOENT (no VMA there) / -EAGAIN (refcount could not be raised).
   */
  *uffd_lock_vma(mm: MmStruct, address: number, caller = 'uffd_lock_vma'): KGen<VmArea | number> {
    const vma = this.lock_vma_under_rcu(mm, address, caller);
    if (vma) {
      if (vma.vm_flags & VM_SHARED || vma.anon_vma) return vma;
      this.vma_end_read(vma);
    }
    yield* this.mmap_read_lock(mm, caller);
    let r: VmArea | number;
    const v = mm.vma_lookup(address);
    if (!v) r = -ENOENT;
    else {
      // find_vma_and_prepare_anon: anon_vma_prepare under the mmap read lock.
      if (!(v.vm_flags & VM_SHARED)) anon_vma_prepare(v);
      r = this.vma_start_read_locked(v, caller) ? v : -EAGAIN;
    }
    this.mmap_read_unlock(mm);
    return r;
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
