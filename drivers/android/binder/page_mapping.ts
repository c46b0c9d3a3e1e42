/**
 * drivers/android/binder/page_mapping.ts — the one interface behind which binder's page-mapping
 * designs live, and the registry that selects a design by name.
 *
 * binder_alloc (binder_alloc.ts) owns the buffers, the page array and the LRU; a design decides
 * how those pages reach the receiver's page tables and how reclaim takes them away:
 *
 *   eager            Linux since v6.14 (eager.ts)
 *   eager-writelock  Linux v6.8–v6.13 (eager_writelock.ts)
 *   eager-deferred   pages allocated by the sender, PTEs installed by the receiver (eager_deferred.ts)
 *   fault            the November 2024 review's design: ->fault on a per-open address_space (fault.ts)
 *   pfnmap           like fault, with special PFN entries in a VM_PFNMAP|VM_IO VMA (pfnmap.ts)
 *
 * The eager designs find the VMA by address, so they need an identity check; it is a variant:
 *   none     vma_lookup alone (the pattern the review called unsafe)
 *   mapped   the allocator's `mapped` flag (C binder since v6.14)
 *   vm_ops   vm_ops and vm_private_data must be binder's (Rust binder's check_vma)
 */

import type { KGen } from '../../../kernel/sched/core.ts';
import { VM_FAULT_SIGBUS, type VmArea, type VmOperations } from '../../../kernel/mm/mm_types.ts';
import type { File } from '../../../kernel/fs/file.ts';
import type { BinderAlloc, BinderBuffer } from './binder_alloc.ts';

export const DESIGNS = ['eager', 'eager-writelock', 'eager-deferred', 'fault', 'pfnmap'] as const;
export type DesignName = (typeof DESIGNS)[number];
export const IDENTITY_VARIANTS = ['none', 'mapped', 'vm_ops'] as const;
export type IdentityVariant = (typeof IDENTITY_VARIANTS)[number];

/** Faults planted on purpose for the security experiments (all off by default). */
export interface PlantedBugs {
  /** Reclaim clears the PTE but skips the TLB flush before freeing the page (scenario 3). */
  zapWithoutFlush?: boolean;
  /** The eager designs keep the VMA they found and use it after dropping its lock (scenario 5). */
  keepVmaReference?: boolean;
}

export interface DesignOptions {
  design: DesignName;
  /** For the eager designs (default 'mapped'; 'vm_ops' for the Rust-style path). */
  identity?: IdentityVariant;
  bugs?: PlantedBugs;
}

/** What a list_lru walk callback returns (enum lru_status, reduced). */
export type LruStatus = 'removed' | 'skip';

export interface PageMapping {
  readonly design: DesignName;
  readonly identity: IdentityVariant | null;
  /**
   * binder_mmap's flag and ops work on the new VMA, before binder_alloc_mmap_handler. Returns 0
   * or -errno (the mapping is then undone by mmap).
   */
  setupVma(alloc: BinderAlloc, vma: VmArea, file: File): number;
  /** binder_open: per-open state (the fault designs give the file its own address_space). */
  open?(alloc: BinderAlloc, file: File): void;
  /**
   * binder_install_single_page: give page `index` (user address `addr`) a frame the kernel can
   * copy into and publish it in alloc.pages — and, for the eager designs, map it into the
   * receiver. Called by binder_install_buffer_pages in the sender's context, without the
   * allocator lock, for each page of a new buffer not yet installed. 0 or -errno.
   */
  installSinglePage(alloc: BinderAlloc, index: number, addr: number): KGen<number>;
  /** Just before the buffer's address is handed to the receiver, in the receiver's context. */
  beforeDeliver(alloc: BinderAlloc, buffer: BinderBuffer): KGen<number>;
  /**
   * The shrinker's callback for LRU page `index` (binder_alloc_free_page), entered with the LRU
   * lock held: only trylocks until the page is isolated (alloc.isolate drops the LRU lock).
   */
  freePage(alloc: BinderAlloc, index: number): KGen<LruStatus>;
  /** binder_alloc_deferred_release: drop what the design holds (after every page was freed). */
  release?(alloc: BinderAlloc): void;
}

/**
 * beforeDeliver for a design with nothing to do there. binder_thread_read knows it and skips the
 * call (one generator fewer per delivered transaction).
 */
export function* nothingBeforeDeliver(_alloc: BinderAlloc, _buffer: BinderBuffer): KGen<number> {
  return 0;
}

export type DesignFactory = (opts: DesignOptions) => PageMapping;

const registry = new Map<DesignName, DesignFactory>();

export function registerDesign(name: DesignName, f: DesignFactory): void {
  registry.set(name, f);
}

/** Build the page mapping for `opts`, with a clear error for unknown names. */
export function createPageMapping(opts: DesignOptions): PageMapping {
  if (!(DESIGNS as readonly string[]).includes(opts.design)) throw new RangeError(`unknown binder design "${String(opts.design)}" (known: ${DESIGNS.join(', ')})`);
  if (opts.identity !== undefined && !(IDENTITY_VARIANTS as readonly string[]).includes(opts.identity)) {
    throw new RangeError(`unknown VMA identity variant "${String(opts.identity)}" (known: ${IDENTITY_VARIANTS.join(', ')})`);
  }
  if (opts.identity !== undefined && !opts.design.startsWith('eager')) throw new RangeError(`the ${opts.design} design looks up no VMA, so it takes no identity variant`);
  const f = registry.get(opts.design);
  if (!f) throw new Error(`binder design "${opts.design}" is not loaded`);
  return f(opts);
}

/** "eager/mapped", "fault", … */
export function designLabel(opts: DesignOptions): string {
  return opts.design.startsWith('eager') ? `${opts.design}/${opts.identity ?? 'mapped'}` : opts.design;
}

// ---- the VMA side shared by the designs -----------------------------------------------------


/** binder_vma_close: any piece of the mapping going away disables the allocator. */
function binder_vma_close(vma: VmArea): void {
  const alloc = vma.vm_private_data as BinderAlloc | null;
  if (alloc && typeof alloc.vma_close === 'function') alloc.vma_close();
}

/**
 * binder_vm_ops of the eager designs: ->close disables the allocator; ->fault always SIGBUS (a
 * page not installed by the sender is not there). Its identity is what the vm_ops variant checks.
 */
export const BINDER_VM_OPS: VmOperations = Object.freeze({
  name: 'binder_vm_ops',
  open(): void {},
  close: binder_vma_close,
  fault(): number {
    return VM_FAULT_SIGBUS;
  },
});

/** vm_ops for designs with their own fault handler (the ->close is binder's). */
export function faultingVmOps(name: string, fault: NonNullable<VmOperations['fault']>): VmOperations {
  return Object.freeze({ name, open(): void {}, close: binder_vma_close, fault });
}
