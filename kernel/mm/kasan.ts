/**
 * kernel/mm/kasan.ts — the physical use-after-free detector, reported in KASAN's format
 * (mm/kasan/report.c): "BUG: KASAN: use-after-free in …", the access line, the context, the
 * allocation and free stacks, the page dump and the shadow-memory rows.
 *
 * Two sources feed it. CPU accesses (through a page table or a cached TLB entry) to a frame the
 * page allocator has freed arrive from the hardware's frame-watch map (hw/phys.ts); kernel
 * accesses to physical memory go through the accessors here, which check the same state. Linux's
 * KASAN only instruments kernel code; a user access through a stale TLB entry to a freed frame is
 * mmulab's extension, reported in the same format ("in user access") so the same tools read it.
 * Each (frame, task, kind of access) is reported once per free; the hits are all counted.
 */

import type { Kernel } from '../kernel.ts';
import type { WatchHit } from '../../hw/cpu.ts';
import { BANNER, callTrace, contextLine, hex } from '../report.ts';
import { PG_free } from './page_alloc.ts';

/** Linux's direct map (page_offset_base with KASLR off): kernel addresses of physical memory. */
export const PAGE_OFFSET = 0xffff888000000000n;

export interface KasanState {
  /** Every detected access, reported or not. */
  hits: number;
  seen: Set<string>;
  /** Size of the user access in progress (set by the uaccess helpers). */
  accessSize: number;
  /** Name of the kernel function doing the access in progress, if a kernel access. */
  accessFunc: string;
}

export function kasanState(k: Kernel): KasanState {
  let s = k.subsystems.get('kasan') as KasanState | undefined;
  if (!s) {
    s = { hits: 0, seen: new Set(), accessSize: 8, accessFunc: '' };
    k.subsystems.set('kasan', s);
  }
  return s;
}

function pageDump(k: Kernel, pfn: number): string[] {
  const p = k.pages;
  return [
    'The buggy address belongs to the physical page:',
    `page: refcount:${p.refcount[pfn]} mapcount:${p.mapcount[pfn]} mapping:${hex(p.mapping[pfn]! >>> 0)} index:0x${p.index[pfn]!.toString(16)} pfn:0x${pfn.toString(16)}`,
    p.flagText(pfn),
    'page dumped because: kasan: bad access detected',
  ];
}

function shadowRows(addr: bigint): string[] {
  // Freed pages have shadow value 0xff (KASAN_PAGE_FREE) over the whole page.
  const row = (a: bigint, mark: string) => `${mark}${hex(a)}: ${Array(16).fill('ff').join(' ')}`;
  const line = addr & ~0x7fn; // a shadow row covers 16 granules of 8 bytes
  const caret = ' '.repeat(1 + 16 + 2 + Number((addr & 0x7fn) >> 3n) * 3) + '^';
  return ['Memory state around the buggy address:', row(line - 0x100n, ' '), row(line - 0x80n, ' '), row(line, '>'), caret, row(line + 0x80n, ' '), row(line + 0x100n, ' ')];
}

function kasanReport(k: Kernel, o: { pfn: number; addr: bigint; write: boolean; size: number; where: string; frames: string[]; cpu: number; pid?: number; comm?: string; data: Record<string, unknown> }): void {
  const p = k.pages;
  const alloc = p.allocRecord(o.pfn);
  const free = p.freeRecord(o.pfn);
  const chain = (c: string) => (c ? c.split(' <- ').map((f) => ` ${f}`) : [' (unknown)']);
  const title = `BUG: KASAN: use-after-free in ${o.where}`;
  const text = [
    BANNER,
    title,
    `${o.write ? 'Write' : 'Read'} of size ${o.size} at addr ${hex(o.addr)} by task ${o.comm ?? 'swapper'}/${o.pid ?? 0}`,
    '',
    contextLine(o.cpu, o.pid, o.comm),
    ...callTrace(o.frames),
    '',
    `Allocated by task ${alloc.pid}:`,
    ...chain(alloc.chain),
    '',
    `Freed by task ${free.pid}:`,
    ...chain(free.chain),
    '',
    ...pageDump(k, o.pfn),
    '',
    ...shadowRows(o.addr),
    BANNER,
  ].join('\n');
  k.reports.add({ kind: 'KASAN', title, text, cpu: o.cpu, cycles: k.machine.cpu(o.cpu).cycles, pid: o.pid, comm: o.comm, data: { pfn: o.pfn, addr: o.addr, ...o.data } });
}

/** The hardware saw a CPU access a watched (freed) frame. */
export function kasanCpuAccess(k: Kernel, hit: WatchHit): void {
  // The access reads the frame after this hook returns: a deferred poison is written first.
  k.pages.poisonNow(hit.pfn);
  const st = kasanState(k);
  st.hits++;
  if (!k.pages.isFree(hit.pfn)) return; // watched but reallocated meanwhile: not ours
  const t = k.current;
  const key = `${hit.pfn}:${t?.pid ?? 0}:${hit.kind}:${k.pages.freeSite[hit.pfn]}`;
  if (st.seen.has(key)) return;
  st.seen.add(key);
  const write = hit.kind === 'write';
  if (hit.kind === 'walk') {
    kasanReport(k, {
      pfn: hit.pfn,
      addr: PAGE_OFFSET + BigInt(hit.pa),
      write: false,
      size: 8,
      where: 'page table walk',
      frames: [`page walk for 0x${hit.va.toString(16)} read a paging-structure entry at phys 0x${hit.pa.toString(16)}`, 'through a stale paging-structure-cache entry or a freed page table'],
      cpu: hit.cpu,
      pid: t?.pid,
      comm: t?.comm,
      data: { source: 'walk', va: hit.va },
    });
    return;
  }
  const user = t !== null && t.inKernel === 0;
  const func = st.accessFunc || (user ? 'user access' : 'kernel access to user memory');
  kasanReport(k, {
    pfn: hit.pfn,
    addr: hit.va,
    write,
    size: st.accessSize,
    where: func,
    frames: [`${func} at 0x${hit.va.toString(16)} translated to freed frame pfn 0x${hit.pfn.toString(16)} (pa 0x${hit.pa.toString(16)})`, 'the translation came from a cached TLB entry or a page table still mapping the freed frame'],
    cpu: hit.cpu,
    pid: t?.pid,
    comm: t?.comm,
    data: { source: user ? 'user' : 'kernel', va: hit.va, kind: hit.kind },
  });
}

/**
 * Check a kernel access to physical memory (the direct map). Returns true when the frame is
 * allocated; otherwise files the report and returns false (the access still proceeds, as KASAN
 * reports and lets execution continue).
 */
export function kasanCheck(k: Kernel, pa: number, size: number, write: boolean, func: string): boolean {
  const pfn = Math.floor(pa / 4096);
  if (pfn >= k.pages.nframes || (k.pages.flags[pfn]! & PG_free) === 0) return true;
  // The access proceeds after the report: a deferred poison is written first.
  const last = Math.min(k.pages.nframes - 1, Math.floor((pa + Math.max(size, 1) - 1) / 4096));
  for (let p = pfn; p <= last; p++) k.pages.poisonNow(p);
  const st = kasanState(k);
  st.hits++;
  const t = k.current;
  const key = `${pfn}:${t?.pid ?? 0}:k${write ? 'w' : 'r'}:${func}:${k.pages.freeSite[pfn]}`;
  if (st.seen.has(key)) return false;
  st.seen.add(key);
  kasanReport(k, {
    pfn,
    addr: PAGE_OFFSET + BigInt(pa),
    write,
    size,
    where: func,
    frames: [func],
    cpu: k.thisCpu(),
    pid: t?.pid,
    comm: t?.comm,
    data: { source: 'kernel', func },
  });
  return false;
}

/** "BUG: Bad page state" (mm/page_alloc.c bad_page). */
export function reportBadPage(k: Kernel, pfn: number, reason: string): void {
  const p = k.pages;
  const t = k.current;
  const title = `BUG: Bad page state in process ${t?.comm ?? 'swapper'}  pfn:${pfn.toString(16)}`;
  const text = [
    title,
    `page: refcount:${p.refcount[pfn]} mapcount:${p.mapcount[pfn]} mapping:${hex(p.mapping[pfn]! >>> 0)} index:0x${p.index[pfn]!.toString(16)} pfn:0x${pfn.toString(16)}`,
    p.flagText(pfn),
    `page dumped because: ${reason}`,
    contextLine(k.thisCpu(), t?.pid, t?.comm),
  ].join('\n');
  k.report({ kind: 'bad-page', title, text, data: { pfn, reason } });
}
