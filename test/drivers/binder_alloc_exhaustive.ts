// The exhaustive binder_alloc test, written anew for mmulab after Linux's boot-time selftest
// (drivers/android/binder_alloc_selftest.c) and its KUnit replacement
// (drivers/android/tests/binder_alloc_kunit.c, binder_alloc_exhaustive_test); the facts it rests
// on are in shared/reference/binder.md §5.2.
//
// Five buffers; each ends in one of five places relative to the end of the previous one (same
// page unaligned, same page aligned, next page unaligned, next page aligned, the page after
// unaligned): 5^5 = 3125 offset vectors. Each vector gives two size layouts, "front" (the small
// buffers share the first pages) and "back" (one giant first buffer, the small ones share the
// last pages), and each layout is run with all 5! = 120 free orders: 3125 × 2 × 120 = 750,000
// runs. One run:
//   1. allocate the five buffers in index order            I1: every page a live buffer touches
//                                                             is installed and off the LRU
//   2. free them in the permutation's order                 I2: every page up to the last byte
//                                                             used is on the LRU, none beyond
//                                                             was ever installed
//   3. allocate the same five sizes again                   I1 again, and I3: the LRU is empty
//                                                             and no page was installed anew
//   4. free them again in the same order                    I2 again
//   5. drain the LRU through the shrinker callback          I4: no page left in the page array
//
// What "installed" means follows the design. The eager designs (eager, eager-writelock) map a
// page into the receiver when they install it, so an installed page must have a present,
// read-only user PTE to exactly that frame, which stays while the page sits on the LRU. The
// others (eager-deferred, fault, pfnmap) only give the page a frame at allocation — the PTE is
// made by the receiver's delivery or its fault — so an installed page is one present in the page
// array, and since this test delivers nothing, no PTE may ever appear in the binder VMA. After a
// drain no PTE may be left for any page of the run.
//
// mmulab's extra checks: the buffers lie contiguously from vm_start (one free chunk, best fit);
// after each free-all the buffer list is one free chunk of buffer_size; every run's frame count
// (less page-table pages) is back to the baseline and no checker report was filed; at the end of
// each offset vector (240 runs) the full audit: check_vm_invariants, a PTE scan of the whole
// binder VMA, the frame count. At the end the process unmaps, closes and exits, and every frame
// it or binder used must be free again.
//
// Like the KUnit case, the allocator is driven directly in kernel context (here: inside one
// system call of a process that opened and mapped /dev/binder), not through transactions.

import { Kernel } from '../../kernel/kernel.ts';
import type { KGen } from '../../kernel/sched/core.ts';
import type { User } from '../../kernel/uapi.ts';
import type { MmStruct, VmArea } from '../../kernel/mm/mm_types.ts';
import { MAP_NORESERVE, MAP_PRIVATE, PROT_READ } from '../../kernel/mm/mmap.ts';
import { check_vm_invariants } from '../../kernel/mm/debug_vm.ts';
import { _PAGE_PRESENT, _PAGE_RW, ptePfn } from '../../kernel/arch/x86/pgtable.ts';
import { BinderDevice } from '../../drivers/android/binder/binder.ts';
import { PAGE_SIZE, type BinderAlloc, type BinderBuffer } from '../../drivers/android/binder/binder_alloc.ts';
import type { DesignName } from '../../drivers/android/binder/page_mapping.ts';

export const BUFFER_NUM = 5;
/** BUFFER_MIN_SIZE: PAGE_SIZE / 8. */
export const BUFFER_MIN_SIZE = PAGE_SIZE / 8;
/**
 * The size of the binder mapping the runs use. KUnit maps SZ_128K; the boot-time selftest used
 * whatever the first process had mapped (libbinder: 1 MiB - 8 KiB). The invariants hold for any
 * mapping at least as large as the largest layout (end_offset[4] ≤ 41,472 bytes), and the pages
 * beyond it only lengthen the back layout's giant first buffer, whose interior pages all behave
 * alike. mmulab maps 48 KiB (12 pages) so that the 3.75 million runs of the five designs fit in
 * the test suite; the giant buffer still spans at least one whole page. Pass `mmapSize:
 * 128 * 1024` to run KUnit's geometry.
 */
export const BINDER_MMAP_SIZE = 48 * 1024;
/** KUnit's BINDER_MMAP_SIZE. */
export const KUNIT_MMAP_SIZE = 128 * 1024;
/** enum buf_end_align_type, by value. */
export const ALIGN_NAMES = ['SP_U', 'SP_A', 'NP_U', 'NP_A', 'NNP_U'] as const;
const LOOP_END = 5;
export const TOTAL_EXHAUSTIVE_CASES = 3125 * 2 * 120;

/** Designs whose allocation maps the page into the receiver (the sender installs the PTE). */
export const INSTALLS_PTE_AT_ALLOC: Record<DesignName, boolean> = {
  eager: true,
  'eager-writelock': true,
  'eager-deferred': false,
  fault: false,
  pfnmap: false,
};

export interface OffsetVector {
  /** end_offset[i]: where buffer i ends, from vm_start. */
  end: number[];
  /** The buf_end_align_type of each buffer. */
  align: number[];
}

/**
 * gen_buf_offsets: every end-offset vector, in the kernel's order. For each buffer, starting from
 * the previous end: odd alignment types round up to the next page boundary, even ones add
 * BUFFER_MIN_SIZE, cumulatively over the five choices.
 */
export function genBufOffsets(): OffsetVector[] {
  const out: OffsetVector[] = [];
  const end = new Array<number>(BUFFER_NUM).fill(0);
  const align = new Array<number>(BUFFER_NUM).fill(0);
  const rec = (index: number): void => {
    if (index === BUFFER_NUM) {
      out.push({ end: [...end], align: [...align] });
      return;
    }
    let e = index === 0 ? 0 : end[index - 1]!;
    for (let a = 0; a < LOOP_END; a++) {
      if (a % 2) e = Math.ceil(e / PAGE_SIZE) * PAGE_SIZE;
      else e += BUFFER_MIN_SIZE;
      end[index] = e;
      align[index] = a;
      rec(index + 1);
    }
  };
  rec(0);
  return out;
}

/** permute_frees: every free order of the five buffers (lexicographic, duplicates skipped). */
export function genFreeOrders(): number[][] {
  const out: number[][] = [];
  const seq = new Array<number>(BUFFER_NUM).fill(0);
  const rec = (index: number): void => {
    if (index === BUFFER_NUM) {
      out.push([...seq]);
      return;
    }
    for (let i = 0; i < BUFFER_NUM; i++) {
      if (seq.slice(0, index).includes(i)) continue; // is_dup
      seq[index] = i;
      rec(index + 1);
    }
  };
  rec(0);
  return out;
}

/** gen_buf_sizes: the front and back size layouts of one offset vector. */
export function layouts(v: OffsetVector, bufferSize: number): { front: number[]; back: number[]; frontEnd: number; backEnd: number } {
  const front: number[] = [];
  const back = new Array<number>(BUFFER_NUM).fill(0);
  let offset = 0;
  for (let i = 0; i < BUFFER_NUM; i++) {
    const last = offset;
    offset = v.end[i]!;
    front[i] = offset - last;
    back[BUFFER_NUM - i - 1] = front[i]!;
  }
  back[0]! += bufferSize - v.end[BUFFER_NUM - 1]!;
  return { front, back, frontEnd: v.end[BUFFER_NUM - 1]!, backEnd: bufferSize };
}

export interface ExhaustiveOptions {
  design: DesignName;
  /** Run only the first `vectors` offset vectors (default: all 3125). */
  vectors?: number;
  /** Size of the binder mapping (default BINDER_MMAP_SIZE). */
  mmapSize?: number;
  /** Plant a fault after mmap, before the runs (to show the test can fail). */
  sabotage?: (alloc: BinderAlloc, k: Kernel) => void;
  /** Failure messages kept (default 20). */
  keepMessages?: number;
  /** Stop after this many failed runs (default: never). */
  stopAfterFailures?: number;
}

export interface ExhaustiveResult {
  runs: number;
  failedRuns: number;
  /** The first failure messages (Linux's "case N: [FAILED] | …" lines plus what was wrong). */
  messages: string[];
  /** Failed full audits (end of each offset vector) and what they found. */
  auditFailures: number;
  auditMessages: string[];
  pagesInstalled: number;
  pagesReclaimed: number;
  /** Every report filed during the test. */
  reports: string[];
  /** check_vm_invariants problems at the very end (after the process exited). */
  finalProblems: string[];
  /** usedFrames after exit minus before the process started. */
  leakedFrames: number;
  /** Wall-clock milliseconds spent in the runs. */
  ms: number;
  /** CPU milliseconds of this process during the runs (the wall clock also counts other load). */
  cpuMs: number;
}

/** A tiny failure log shared by the checks. */
class Failures {
  runFailed = false;
  failedRuns = 0;
  auditFailures = 0;
  readonly messages: string[] = [];
  constructor(readonly keep: number) {}
  note(msg: string): void {
    this.runFailed = true;
    if (this.messages.length < this.keep) this.messages.push(msg);
  }
  readonly auditMessages: string[] = [];
  audit(msg: string): void {
    this.auditFailures++;
    if (this.auditMessages.length < this.keep) this.auditMessages.push(msg);
  }
}

/** The test's view of one binder mapping and how to check it cheaply. */
class Checker {
  readonly nPages: number;
  constructor(
    readonly k: Kernel,
    readonly alloc: BinderAlloc,
    readonly mm: MmStruct,
    readonly vma: VmArea,
    readonly ptePerAlloc: boolean,
    readonly f: Failures,
  ) {
    this.nPages = alloc.buffer_size / PAGE_SIZE;
    this.pteps = new Float64Array(this.nPages).fill(-1);
  }

  /**
   * Where each page's PTE lives, once a page table exists for it. Page tables under a VMA are
   * only freed by munmap (after the runs), and the audit after every offset vector walks the
   * tables afresh, so the cache cannot hide a stale table for long.
   */
  private readonly pteps: Float64Array;

  /** The frame the user PTE of page `i` maps, -1 when none is present. */
  ptePfnOf(i: number): number {
    const pt = this.k.pt;
    let ptep = this.pteps[i]!;
    if (ptep < 0) {
      ptep = pt.pte_offset(this.mm, this.alloc.vm_start + i * PAGE_SIZE);
      if (ptep < 0) return -1;
      this.pteps[i] = ptep;
    }
    const lo = pt.lo(ptep);
    if (!(lo & _PAGE_PRESENT)) return -1;
    if (lo & _PAGE_RW) this.f.note(`page ${i}: the user PTE is writable`);
    return ptePfn(lo, pt.hi(ptep));
  }

  /** Page `i` as this design should have it while installed (active or on the LRU). */
  private checkMapping(i: number, what: string): void {
    const pfn = this.alloc.pages[i]!;
    const u = this.ptePfnOf(i);
    if (this.ptePerAlloc) {
      if (u !== pfn) this.f.note(`${what}: page ${i} has frame ${pfn} but its user PTE maps ${u === -1 ? 'nothing' : u}`);
    } else if (u !== -1) this.f.note(`${what}: page ${i} has a user PTE (frame ${u}) although the ${this.alloc.mapping.design} design maps nothing at allocation`);
  }

  /** I1 for one buffer: its pages installed, off the LRU, mapped as the design says. */
  bufferPagesAllocated(b: BinderBuffer, size: number, what: string): boolean {
    const a = this.alloc;
    const first = (b.user_data - a.vm_start - ((b.user_data - a.vm_start) % PAGE_SIZE)) / PAGE_SIZE;
    const end = Math.ceil((b.user_data - a.vm_start + size) / PAGE_SIZE);
    let ok = true;
    for (let i = first; i < end; i++) {
      if (a.pages[i]! < 0) {
        this.f.note(`${what}: expect alloc but is free at page index ${i}`);
        ok = false;
      } else if (a.lru.has(a, i)) {
        this.f.note(`${what}: expect alloc but is lru at page index ${i}`);
        ok = false;
      } else this.checkMapping(i, what);
    }
    return ok;
  }

  /** I2: pages 0 ..= (end-1)/PAGE_SIZE on the LRU (and still mapped as installed), none beyond. */
  allOnLru(end: number, what: string): void {
    const a = this.alloc;
    const last = Math.floor((end - 1) / PAGE_SIZE);
    for (let i = 0; i < this.nPages; i++) {
      if (i <= last) {
        if (a.pages[i]! < 0) this.f.note(`${what}: expect lru but is free at page index ${i}`);
        else if (!a.lru.has(a, i)) this.f.note(`${what}: expect lru but is alloc at page index ${i}`);
        else this.checkMapping(i, what);
      } else if (a.pages[i]! >= 0) this.f.note(`${what}: page index ${i} lies beyond the last byte used (${end}) but is installed`);
    }
    if (a.lru.count !== last + 1) this.f.note(`${what}: the LRU holds ${a.lru.count} pages, expected ${last + 1}`);
    // Structural: everything coalesced back into one free chunk of buffer_size.
    const h = a.head;
    if (!h || h.next || !h.free || h.user_data !== a.vm_start || a.allocated.size !== 0 || a.freeTree.size !== 1) {
      this.f.note(`${what}: the buffers did not coalesce into one free chunk (${a.buffers().length} buffers, ${a.allocated.size} allocated)`);
    }
  }

  /** I4 plus mmulab's: no page, no PTE for the pages this run used. */
  drained(end: number, what: string): void {
    const a = this.alloc;
    for (let i = 0; i < this.nPages; i++) if (a.pages[i]! >= 0) this.f.note(`${what}: expect free but is ${a.lru.has(a, i) ? 'lru' : 'alloc'} at page index ${i}`);
    const last = Math.floor((end - 1) / PAGE_SIZE);
    for (let i = 0; i <= last; i++) if (this.ptePfnOf(i) !== -1) this.f.note(`${what}: a user PTE is left at page index ${i} after the drain`);
    if (a.lru.count !== 0) this.f.note(`${what}: ${a.lru.count} pages still on the LRU after the drain`);
  }

  /** The full scan: no PTE anywhere in the binder VMA (after a drain). */
  fullPteScan(what: string): void {
    for (let va = this.vma.vm_start; va < this.vma.vm_end; va += PAGE_SIZE) {
      const pt = this.k.pt;
      const ptep = pt.pte_offset(this.mm, va);
      if (ptep >= 0 && (pt.lo(ptep) | pt.hi(ptep)) !== 0) this.f.audit(`${what}: PTE 0x${(pt.hi(ptep) >>> 0).toString(16)}${(pt.lo(ptep) >>> 0).toString(16).padStart(8, '0')} left at 0x${va.toString(16)}`);
    }
  }
}

/**
 * Run the exhaustive test for one design and return what happened; the caller asserts. Boots
 * its own kernel: a process opens /dev/binder, maps BINDER_MMAP_SIZE read-only, and runs every
 * case inside one system call, then unmaps, closes and exits.
 */
export function runExhaustive(opts: ExhaustiveOptions): ExhaustiveResult {
  const k = new Kernel({ cpus: 2, memoryBytes: 16 << 20, seed: 1 });
  const dev = new BinderDevice(k, { design: { design: opts.design } });
  const size = opts.mmapSize ?? BINDER_MMAP_SIZE;
  const vectors = genBufOffsets().slice(0, opts.vectors ?? 3125);
  const orders = genFreeOrders();
  const f = new Failures(opts.keepMessages ?? 20);
  const ptePerAlloc = INSTALLS_PTE_AT_ALLOC[opts.design];
  const framesAtBoot = k.pages.usedFrames;
  let runs = 0;
  let ms = 0;
  let cpuMs = 0;
  let pagesInstalled = 0;
  let pagesReclaimed = 0;
  let thrown: unknown = null;
  let finished = false;

  function* body(alloc: BinderAlloc, mm: MmStruct, vma: VmArea): KGen {
    const c = new Checker(k, alloc, mm, vma, ptePerAlloc, f);
    const lru = alloc.lru;
    const buffers: BinderBuffer[] = new Array<BinderBuffer>(BUFFER_NUM);
    const tablePages = (): number => mm.pgtables_bytes / PAGE_SIZE;
    const frameBase = k.pages.usedFrames - tablePages();
    const stop = opts.stopAfterFailures ?? Infinity;
    const t0 = performance.now();
    const c0 = process.cpuUsage();

    /** binder_alloc_test_alloc_buf: allocate the five, check each (I1) and the contiguous layout. */
    function* allocBufs(sizes: number[], what: string): KGen<boolean> {
      let off = alloc.vm_start;
      let ok = true;
      for (let i = 0; i < BUFFER_NUM; i++) {
        const b = yield* alloc.new_buf(sizes[i]!, 0, 0, false);
        if (typeof b === 'number') {
          f.note(`${what}: buffer ${i} (${sizes[i]} bytes): binder_alloc_new_buf failed with ${b}`);
          return false;
        }
        buffers[i] = b;
        if (b.user_data !== off) {
          f.note(`${what}: buffer ${i} at offset ${b.user_data - alloc.vm_start}, expected ${off - alloc.vm_start}`);
          ok = false;
        }
        off += sizes[i]!;
        if (!c.bufferPagesAllocated(b, sizes[i]!, `${what} buffer ${i}`)) ok = false;
      }
      return ok;
    }

    function* freeBufs(seq: number[]): KGen {
      for (let i = 0; i < BUFFER_NUM; i++) yield* alloc.free_buf(buffers[seq[i]!]!);
    }

    for (let vi = 0; vi < vectors.length && f.failedRuns < stop; vi++) {
      const v = vectors[vi]!;
      const l = layouts(v, alloc.buffer_size);
      for (const front of [true, false]) {
        const sizes = front ? l.front : l.back;
        const end = front ? l.frontEnd : l.backEnd;
        const nPagesUsed = Math.ceil(end / PAGE_SIZE);
        for (const seq of orders) {
          f.runFailed = false;
          const installed0 = alloc.stats.pagesInstalled;
          // 1. initial allocation
          if (!(yield* allocBufs(sizes, 'Initial allocation'))) f.note('Initial allocation failed');
          else {
            if (alloc.stats.pagesInstalled - installed0 !== nPagesUsed) f.note(`Initial allocation installed ${alloc.stats.pagesInstalled - installed0} pages, expected ${nPagesUsed}`);
            // 2. free in this order: everything on the LRU
            yield* freeBufs(seq);
            c.allOnLru(end, 'Initial buffers not freed correctly');
            // 3. reallocate from the LRU: nothing new installed, the LRU consumed
            const installed1 = alloc.stats.pagesInstalled;
            if (!(yield* allocBufs(sizes, 'Reallocation'))) f.note('Reallocation failed');
            if (lru.count !== 0) f.note(`lru list should be empty after reallocation (${lru.count} left)`);
            if (alloc.stats.pagesInstalled !== installed1) f.note(`Reallocation installed ${alloc.stats.pagesInstalled - installed1} new pages`);
            // 4. free again
            yield* freeBufs(seq);
            c.allOnLru(end, 'Reallocated buffers not freed correctly');
          }
          // 5. drain through the shrinker callback
          const reclaimed0 = lru.reclaimed;
          const installedRun = alloc.stats.pagesInstalled - installed0;
          for (let n = lru.count, guard = 0; n > 0; n = lru.count) {
            yield* lru.walk(n);
            if (++guard > 1000) {
              f.note('Failed to clean up allocated pages: the LRU does not drain');
              break;
            }
          }
          if (lru.reclaimed - reclaimed0 !== installedRun) f.note(`the drain reclaimed ${lru.reclaimed - reclaimed0} pages, ${installedRun} were installed`);
          c.drained(end, 'Failed to clean up allocated pages');
          if (k.pages.usedFrames - tablePages() !== frameBase) f.note(`frames: ${k.pages.usedFrames - tablePages() - frameBase} more in use than before the run (page tables excluded)`);
          if (k.reports.reports.length) f.note(`report filed: ${k.reports.reports.map((r) => r.title).join(' | ')}`);
          if (f.runFailed) {
            f.failedRuns++;
            if (f.messages.length < f.keep) {
              const shape = v.align.map((a, i) => `${i}:${ALIGN_NAMES[a]}`).join(' ');
              f.messages.push(`case ${runs}: [FAILED] | ${front ? 'front' : 'back '} - [ ${shape} ] - [${seq.join(',')}]`);
            }
            // Leave a clean state for the next run so one fault does not cascade.
            for (const b of alloc.allocated.values()) if (!b.free) yield* alloc.free_buf(b);
            while (lru.count) if ((yield* lru.walk(lru.count)) === 0) break;
          }
          runs++;
        }
      }
      // The full audit at the end of each offset vector.
      c.fullPteScan(`after vector ${vi}`);
      const r = check_vm_invariants(k);
      if (!r.ok) f.audit(`after vector ${vi}: ${r.problems.join('; ')}`);
      if (k.pages.usedFrames - tablePages() !== frameBase) f.audit(`after vector ${vi}: ${k.pages.usedFrames - tablePages() - frameBase} frames leaked`);
      if (k.reports.reports.length) f.audit(`after vector ${vi}: reports filed`);
    }
    ms = performance.now() - t0;
    const c1 = process.cpuUsage(c0);
    cpuMs = (c1.user + c1.system) / 1000;
    pagesInstalled = alloc.stats.pagesInstalled;
    pagesReclaimed = alloc.stats.pagesReclaimed;
  }

  k.spawn(
    function* binder_alloc_test(u: User) {
      try {
        const fd = yield* u.open('/dev/binder');
        const base = yield* u.mmap(0, size, PROT_READ, MAP_PRIVATE | MAP_NORESERVE, fd, 0);
        const proc = dev.procOf(u.pid);
        if (!proc) throw new Error('no binder_proc after open');
        const alloc = proc.alloc;
        const mm = u.task.mm!;
        const vma = mm.vma_lookup(base);
        if (!vma || alloc.vm_start !== base || alloc.buffer_size !== Math.min(size, 4 << 20) || !alloc.mapped) throw new Error('binder mmap did not set the allocator up');
        opts.sabotage?.(alloc, k);
        yield* u.call('binder_alloc_exhaustive_test', () => body(alloc, mm, vma));
        yield* u.munmap(base, size);
        yield* u.close(fd);
        finished = true;
      } catch (e) {
        thrown = e;
      }
    },
    { comm: 'binder_alloc_t' },
  );
  const r = k.run();
  if (thrown) throw thrown;
  if (!finished || r.reason !== 'done') throw new Error(`the test process did not finish (${r.reason})`);
  const fin = check_vm_invariants(k);
  return {
    runs,
    failedRuns: f.failedRuns,
    messages: f.messages,
    auditFailures: f.auditFailures,
    auditMessages: f.auditMessages,
    pagesInstalled,
    pagesReclaimed,
    reports: k.reports.reports.map((x) => `${x.kind}: ${x.title}`),
    finalProblems: fin.problems,
    leakedFrames: k.pages.usedFrames - framesAtBoot,
    ms,
    cpuMs,
  };
}
