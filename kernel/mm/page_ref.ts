/**
 * kernel/mm/page_ref.ts — page references held outside page tables (the role of the `struct
 * page **pages` arrays GUP fills, of pipe buffers and of driver page arrays in Linux).
 *
 * Linux keeps no record of who holds a page reference; mmulab does, so that the invariant
 * checker (kernel/mm/debug_vm.ts) can prove refcount == mappings + holders for every page, and
 * a leaked reference is found the moment it leaks. A PageRefs is a named multiset of pfns, split
 * into plain references (get_page / FOLL_GET) and pins (FOLL_PIN: GUP_PIN_COUNTING_BIAS
 * references each on an order-0 page, one reference on a large folio). It registers itself in
 * the kernel's holder set while it holds anything.
 */

import type { Kernel } from '../kernel.ts';
import type { PageRefHolder } from './page_alloc.ts';

/** Each FOLL_PIN on an order-0 page adds this many references (include/linux/mm.h). */
export const GUP_PIN_COUNTING_BIAS = 1024;

export class PageRefs implements PageRefHolder {
  private readonly gets = new Map<number, number>();
  private readonly pins = new Map<number, number>();
  private registered = false;

  constructor(
    private readonly k: Kernel,
    readonly holderName: string,
  ) {}

  /** References a pin stands for on `pfn` (bias for order-0 pages, 1 for large folios). */
  pinWeight(pfn: number): number {
    return this.k.pages.orderOf(this.k.pages.head(pfn)) === 0 ? GUP_PIN_COUNTING_BIAS : 1;
  }

  private register(): void {
    if (!this.registered) {
      this.k.pageRefHolders.add(this);
      this.registered = true;
    }
  }

  private unregisterIfEmpty(): void {
    if (this.registered && this.gets.size === 0 && this.pins.size === 0) {
      this.k.pageRefHolders.delete(this);
      this.registered = false;
    }
  }

  /** Record a reference the caller has just taken on `pfn`. */
  noteGet(pfn: number): void {
    this.gets.set(pfn, (this.gets.get(pfn) ?? 0) + 1);
    this.register();
  }

  /** Record a pin the caller has just taken on `pfn`. */
  notePin(pfn: number): void {
    this.pins.set(pfn, (this.pins.get(pfn) ?? 0) + 1);
    this.register();
  }

  /** Forget one reference (the caller drops it); false if none was recorded. */
  dropGet(pfn: number): boolean {
    const n = this.gets.get(pfn) ?? 0;
    if (n === 0) return false;
    if (n === 1) this.gets.delete(pfn);
    else this.gets.set(pfn, n - 1);
    this.unregisterIfEmpty();
    return true;
  }

  /** Forget one pin; false if none was recorded. */
  dropPin(pfn: number): boolean {
    const n = this.pins.get(pfn) ?? 0;
    if (n === 0) return false;
    if (n === 1) this.pins.delete(pfn);
    else this.pins.set(pfn, n - 1);
    this.unregisterIfEmpty();
    return true;
  }

  /** Move one reference on `pfn` from this holder to `to` (no refcount change). */
  transferGet(pfn: number, to: PageRefs): boolean {
    if (!this.dropGet(pfn)) return false;
    to.noteGet(pfn);
    return true;
  }

  references(pfn: number): number {
    return this.gets.get(pfn) ?? 0;
  }

  pinned(pfn: number): number {
    return this.pins.get(pfn) ?? 0;
  }

  get size(): number {
    let n = 0;
    for (const v of this.gets.values()) n += v;
    for (const v of this.pins.values()) n += v;
    return n;
  }

  forEachPageRef(emit: (pfn: number, refs?: number) => void): void {
    for (const [pfn, n] of this.gets) emit(pfn, n);
    for (const [pfn, n] of this.pins) emit(pfn, n * this.pinWeight(pfn));
  }
}
