/**
 * kernel/rust/page.ts — `kernel::page::Page` (rust/kernel/page.rs): one owned order-0 page.
 * alloc_page takes the allocation's reference; drop() puts it (the page is freed only when no
 * PTE or pipe still holds one). Reads and writes go through the direct map and are checked by
 * KASAN, like the Rust methods that copy through a temporary kernel mapping.
 *
 * The references of live Page objects are recorded in one PageRefs per kernel, so the
 * invariant checker accounts for them.
 */

import type { Kernel } from '../kernel.ts';
import { PageRefs } from '../mm/page_ref.ts';
import { GFP_KERNEL, __GFP_ZERO } from '../mm/page_alloc.ts';
import { kasanCheck } from '../mm/kasan.ts';
import { callSite } from './borrow.ts';

export const PAGE_SIZE = 4096;

function pageRefs(k: Kernel): PageRefs {
  let r = k.subsystems.get('rust-pages') as PageRefs | undefined;
  if (!r) {
    r = new PageRefs(k, 'kernel::page::Page objects');
    k.subsystems.set('rust-pages', r);
  }
  return r;
}

export class Page {
  private dropped = false;

  private constructor(
    readonly k: Kernel,
    readonly pfn: number,
    /** A view of a frame owned elsewhere (from_raw): dropping it puts nothing. */
    private readonly borrowed = false,
  ) {}

  /**
   * A view of a frame the caller owns (Rust's unsafe `from_raw`): for drivers that keep their
   * own page arrays; the frame's reference stays with its owner.
   */
  static fromRaw(k: Kernel, pfn: number): Page {
    return new Page(k, pfn, true);
  }

  /** Page::alloc_page: null when memory is exhausted (Err(AllocError)). */
  static alloc_page(k: Kernel, gfp = GFP_KERNEL | __GFP_ZERO, site = 'Page::alloc_page'): Page | null {
    const pfn = k.pages.allocPages(gfp, 0, site);
    if (pfn < 0) return null;
    k.charge(k.costs.pageAlloc);
    pageRefs(k).noteGet(pfn);
    return new Page(k, pfn);
  }

  get alive(): boolean {
    return !this.dropped;
  }

  private check(method: string): boolean {
    if (!this.dropped) return true;
    this.k.report({ kind: 'BUG', title: `BUG: Page used after drop (${method})`, text: `BUG: kernel::page::Page pfn 0x${this.pfn.toString(16)} used after drop by ${method} at ${callSite()}`, data: { pfn: this.pfn, contract: 'page-lifetime' } });
    return false;
  }

  /** Page::read_raw: copy `len` bytes at `offset` out. */
  read(offset: number, len: number): Uint8Array {
    if (!this.check('Page::read') || offset < 0 || len < 0 || offset + len > PAGE_SIZE) return new Uint8Array(0);
    const pa = this.pfn * PAGE_SIZE + offset;
    kasanCheck(this.k, pa, len, false, 'Page::read_raw');
    this.k.charge(len * this.k.costs.copyPerByte);
    return this.k.machine.phys.u8.slice(pa, pa + len);
  }

  /** Page::write_raw: copy `data` in at `offset`; false if out of bounds or dropped. */
  write(offset: number, data: Uint8Array): boolean {
    if (!this.check('Page::write') || offset < 0 || offset + data.length > PAGE_SIZE) return false;
    const pa = this.pfn * PAGE_SIZE + offset;
    kasanCheck(this.k, pa, data.length, true, 'Page::write_raw');
    this.k.charge(data.length * this.k.costs.copyPerByte);
    this.k.machine.phys.u8.set(data, pa);
    return true;
  }

  /** Page::fill_zero. */
  fill_zero(offset: number, len: number): boolean {
    return this.write(offset, new Uint8Array(len));
  }

  /** Drop: put the reference (__free_pages on the last one). */
  drop(site = 'Page::drop'): void {
    if (!this.check('Page::drop')) return;
    this.dropped = true;
    if (this.borrowed) return;
    pageRefs(this.k).dropGet(this.pfn);
    this.k.pages.putPage(this.pfn, site);
  }
}
