/**
 * kernel/cost.ts — virtual-cycle costs of kernel work (the "kernel" section of a cost-model JSON
 * file; the hardware section is hw/cost.ts). Hardware events inside kernel code — TLB hits and
 * misses, walks, INVLPG, CR3 writes, IPIs — are charged by the hardware model as they happen;
 * these constants price the software around them.
 *
 * Published per-operation figures for Linux internals are scarce. Each constant says where its
 * value comes from; where it is an order-of-magnitude choice, the comment says that too, so an
 * experiment's conclusions can be checked against a different model.
 */

import { CostModelError } from '../hw/cost.ts';

export interface KernelCostModel {
  /** SYSCALL/SYSRET plus entry and exit code, without mitigations. */
  syscall: number;
  /** Page-fault entry/exit (exception entry, pt_regs, return), without the handler's work. */
  faultEntry: number;
  /** Handler work of a fault besides allocation, zeroing and PTE writes (VMA lookup, checks). */
  faultHandler: number;
  /** One order-0 allocation or free in the buddy allocator. */
  pageAlloc: number;
  /** Copying or zeroing, per byte. */
  copyPerByte: number;
  /** Writing one page-table entry (a locked or plain store plus the surrounding checks). */
  pteWrite: number;
  /** An uncontended lock or unlock (rwsem, mutex, spinlock). */
  lock: number;
  /** Blocking on a lock or wait queue and being woken (scheduler bookkeeping, both sides). */
  sleepWake: number;
  /** A context switch between tasks (register state, scheduler), TLB effects excluded. */
  contextSwitch: number;
  /** VMA tree lookup, insert or erase (maple tree work). */
  vmaOp: number;
  /** Other bookkeeping of a syscall or kernel operation (argument checks, accounting). */
  misc: number;
  /** A virtual time slice for preemption, in cycles. */
  timeSlice: number;
}

export const DEFAULT_KERNEL_COSTS: Readonly<KernelCostModel> = Object.freeze({
  // A null syscall costs about 100 ns on recent x86 without PTI (lmbench lat_syscall "null call"
  // order of magnitude); 300 cycles at 3 GHz.
  syscall: 300,
  // Exception entry/exit is of the same order as a syscall round trip; tied to it.
  faultEntry: 300,
  // find_vma + access checks + handle_mm_fault dispatch: an order-of-magnitude choice (~70 ns).
  faultHandler: 200,
  // Buddy allocator fast path (per-CPU lists): order-of-magnitude choice, ~50 ns.
  pageAlloc: 150,
  // memcpy/memset of cached data at ~8 bytes per cycle (one 32-byte store per 4 cycles): 4 KiB
  // zeroing = 512 cycles.
  copyPerByte: 0.125,
  // A PTE store with its lock and checks: order-of-magnitude choice.
  pteWrite: 20,
  // An uncontended atomic RMW is ~20 cycles (hw adUpdate); lock + unlock bookkeeping ~30.
  lock: 30,
  // try_to_wake_up + dequeue/enqueue: order-of-magnitude choice, ~0.5 µs.
  sleepWake: 1500,
  // lmbench lat_ctx for two small processes is ~1–2 µs; the TLB part is modelled separately by
  // the hardware (CR3 write, refills), so 1,500 cycles for the rest.
  contextSwitch: 1500,
  // Maple-tree walk/modify: order-of-magnitude choice, ~50 ns.
  vmaOp: 150,
  misc: 50,
  // A 3 ms slice (CFS-like latency target / few tasks) at 3 GHz.
  timeSlice: 9_000_000,
});

export function parseKernelCosts(section: unknown): KernelCostModel {
  const out: KernelCostModel = { ...DEFAULT_KERNEL_COSTS };
  if (section === undefined) return out;
  if (typeof section !== 'object' || section === null || Array.isArray(section)) throw new CostModelError('cost model field "kernel" must be an object', 'kernel');
  for (const [k, v] of Object.entries(section as Record<string, unknown>)) {
    if (!(k in DEFAULT_KERNEL_COSTS)) throw new CostModelError(`cost model field "kernel.${k}" is not a kernel cost (known: ${Object.keys(DEFAULT_KERNEL_COSTS).join(', ')})`, `kernel.${k}`);
    if (typeof v !== 'number' || !Number.isFinite(v) || v < 0) throw new CostModelError(`cost model field "kernel.${k}" must be a finite number >= 0, got ${JSON.stringify(v)}`, `kernel.${k}`);
    (out as unknown as Record<string, number>)[k] = v;
  }
  if (out.timeSlice < 1) throw new CostModelError('cost model field "kernel.timeSlice" must be at least 1 cycle', 'kernel.timeSlice');
  return out;
}
