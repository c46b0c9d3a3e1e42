// Page faults: zero-fill and the zero page, copy-on-write, the signals (SEGV_ACCERR with the
// address for a forbidden access, SEGV_MAPERR without a VMA, PROT_NONE, instruction fetches),
// driver ->fault returning a page or inserting one itself (VM_FAULT_NOPAGE), VM_FAULT_SIGBUS and
// VM_FAULT_SIGSEGV, a driver VMA without ->fault, private and shared file faults, the
// VM_FAULT_RETRY path when the per-VMA lock cannot be used, a relaxing mprotect (flushed, as x86
// flushes any change of RW) and a stale stricter TLB entry left by a PTE upgraded without a flush
// (wp_page_reuse; re-walked by the modelled CPU), a spurious fault on a page another CPU is
// replacing (the wp_page_copy flush window), and an uncaught signal killing the process with
// Linux's log line.
import { describe, expect, it } from 'vitest';
import { MAP_ANONYMOUS, MAP_FIXED, MAP_GROWSDOWN, MAP_PRIVATE, MAP_SHARED, PROT_NONE, PROT_READ, PROT_WRITE } from '../../kernel/mm/mmap.ts';
import { EFAULT, EPERM } from '../../kernel/errno.ts';
import { proc_pid_maps } from '../../kernel/fs/proc/task_mmu.ts';
import {
  VM_FAULT_NOPAGE, VM_FAULT_SIGBUS, VM_FAULT_SIGSEGV, VM_IO, VM_MIXEDMAP, VM_PFNMAP, VM_DONTEXPAND, type VmFault,
} from '../../kernel/mm/mm_types.ts';
import { faultCounters, vmf_insert_page, vmf_insert_pfn } from '../../kernel/mm/memory.ts';
import { PG_dirty } from '../../kernel/mm/page_alloc.ts';
import { _PAGE_RW, _PAGE_SPECIAL } from '../../kernel/arch/x86/pgtable.ts';
import { assert_vm_invariants } from '../../kernel/mm/debug_vm.ts';
import { tlbEntries } from '../../hw/inspect.ts';
import type { User } from '../../kernel/uapi.ts';
import { PAGE, PagePool, boot, eventsOf, expectClean, fakeDevice, pfnAt, pteAt, reportsOf, run, signalOf } from './util.ts';

const RW = PROT_READ | PROT_WRITE;
const ANON = MAP_PRIVATE | MAP_ANONYMOUS;
const A = 0x40000000;

describe('anonymous faults', () => {
  it('a first read maps the shared zero page (special, read-only); a first write a fresh zeroed page', () => {
    const k = boot();
    run(k, function* (u) {
      const mm = u.task.mm!;
      const fc = faultCounters(k);
      yield* u.mmap(A, 2 * PAGE, RW, ANON | MAP_FIXED);
      const z0 = fc.zeroPage;
      const a0 = fc.anon;
      expect(yield* u.load32(A)).toBe(0);
      expect(fc.zeroPage).toBe(z0 + 1);
      expect(pfnAt(k, mm, A)).toBe(k.pages.zeroPfn);
      const pte = pteAt(k, mm, A)!;
      expect(pte[0] & (_PAGE_RW | _PAGE_SPECIAL)).toBe(_PAGE_SPECIAL);
      expect(mm.rss.anon).toBe(0);
      yield* u.store32(A + PAGE, 9);
      expect(fc.anon).toBe(a0 + 1);
      const pfn = pfnAt(k, mm, A + PAGE);
      expect([k.pages.refcount[pfn], k.pages.mapcount[pfn]]).toEqual([1, 1]);
      expect(yield* u.read(A + PAGE, 8)).toEqual(new Uint8Array([9, 0, 0, 0, 0, 0, 0, 0]));
      // Writing over the zero page is a copy-on-write from it.
      const c0 = fc.cow;
      yield* u.store32(A + 100, 1);
      expect(fc.cow).toBe(c0 + 1);
      expect(pfnAt(k, mm, A)).not.toBe(k.pages.zeroPfn);
      expect(mm.rss.anon).toBe(2);
    });
    expectClean(k);
  });
});

describe('touchPages', () => {
  it('touches the first address and every page boundary after it, faulting each page in as touch() would', () => {
    const k = boot();
    const touched: bigint[] = [];
    run(k, function* (u) {
      const mm = u.task.mm!;
      const fc = faultCounters(k);
      yield* u.mmap(A, 8 * PAGE, RW, ANON | MAP_FIXED);
      const a0 = fc.anon;
      // From the middle of page 1 to the middle of page 5: pages 1 to 5, written.
      yield* u.touchPages(A + PAGE + 100, A + 5 * PAGE + 8, 'write');
      expect(fc.anon).toBe(a0 + 5);
      for (let p = 0; p < 8; p++) expect(((pteAt(k, mm, A + p * PAGE)?.[0] ?? 0) & 1) === 1, `page ${p} present`).toBe(p >= 1 && p <= 5);
      for (const e of tlbEntries(k.machine.cpu(u.task.cpu))) if (e.va >= BigInt(A) && e.va < BigInt(A + 8 * PAGE)) touched.push(e.va);
      // An empty range touches nothing; a range running into a hole is a SIGSEGV at the hole.
      yield* u.touchPages(A, A, 'read');
      yield* u.munmap(A + 6 * PAGE, PAGE);
      const e = yield* signalOf(u.touchPages(A + 5 * PAGE, A + 8 * PAGE, 'read'));
      expect(e.addr).toBe(A + 6 * PAGE);
      expect(() => u.touchPages(A, A + PAGE, 'poke' as 'read').next()).toThrow(/touchPages: kind must be read, write or fetch/);
    });
    // Each page is cached (in the L1 and second-level TLBs): the pages touched and no other.
    expect([...new Set(touched)].sort()).toEqual([1, 2, 3, 4, 5].map((p) => BigInt(A + p * PAGE)));
    expectClean(k);
  });
});

describe('fault signals', () => {
  it('a write to a read-only VMA is SIGSEGV/SEGV_ACCERR at the address; an unmapped one SEGV_MAPERR', () => {
    const k = boot();
    run(k, function* (u) {
      yield* u.mmap(A, PAGE, PROT_READ, ANON | MAP_FIXED);
      let e = yield* signalOf(u.store32(A + 0x10, 1));
      expect([e.signame, e.codename, e.addr]).toEqual(['SIGSEGV', 'SEGV_ACCERR', A + 0x10]);
      // Even after the page is present (read first).
      yield* u.load32(A);
      e = yield* signalOf(u.store8(A + 0x11, 1));
      expect([e.signame, e.codename, e.addr]).toEqual(['SIGSEGV', 'SEGV_ACCERR', A + 0x11]);
      e = yield* signalOf(u.load32(A + PAGE + 4));
      expect([e.signame, e.codename, e.addr]).toEqual(['SIGSEGV', 'SEGV_MAPERR', A + PAGE + 4]);
      e = yield* signalOf(u.load32(0x1000));
      expect([e.signame, e.codename]).toEqual(['SIGSEGV', 'SEGV_MAPERR']);
    });
    expectClean(k);
  });

  it('PROT_NONE refuses reads, writes and fetches (SEGV_ACCERR); a non-executable VMA refuses fetches', () => {
    const k = boot();
    run(k, function* (u) {
      yield* u.mmap(A, PAGE, PROT_NONE, ANON | MAP_FIXED);
      for (const g of [u.load8(A), u.store8(A, 1), u.touch(A, 'fetch')]) {
        const e = yield* signalOf(g);
        expect([e.signame, e.codename, e.addr]).toEqual(['SIGSEGV', 'SEGV_ACCERR', A]);
      }
      yield* u.mmap(A + PAGE, PAGE, RW, ANON | MAP_FIXED);
      // Not present yet: the read half of the fetch faults the page in, then NX refuses it.
      const e = yield* signalOf(u.touch(A + PAGE, 'fetch'));
      expect([e.signame, e.codename, e.addr]).toEqual(['SIGSEGV', 'SEGV_ACCERR', A + PAGE]);
    });
    expectClean(k);
  });

  it('an uncaught signal kills the process with the segfault line; the parent sees 128 + SIGSEGV', () => {
    const k = boot();
    const before = k.pages.usedFrames;
    let status = -1;
    let childPid = -1;
    run(k, function* (u) {
      yield* u.mmap(A, PAGE, RW, ANON | MAP_FIXED);
      yield* u.store32(A, 1);
      childPid = yield* u.fork(function* (c) {
        yield* c.store32(A, 2);
        yield* c.store32(0x12345678, 1);
        throw new Error('not reached');
      }, 'crasher');
      status = yield* u.wait(childPid);
      expect(yield* u.load32(A)).toBe(1);
    });
    expect(status).toBe(128 + 11);
    const sig = reportsOf(k, 'signal');
    expect(sig.length).toBe(1);
    expect(sig[0]).toMatch(new RegExp(`^crasher\\[${childPid}\\]: segfault at 12345678 ip 0+ sp 0+ error 6`));
    const r = k.reports.reports[0]!;
    expect(r.data).toMatchObject({ signo: 11, codename: 'SEGV_MAPERR', addr: 0x12345678 });
    expect(k.reports.reports.length).toBe(1);
    assert_vm_invariants(k);
    expect(k.pages.usedFrames).toBe(before);
  });
});

describe('stack growth (VM_GROWSDOWN)', () => {
  const STACK = 0x50000000;
  const GAP = 256 * PAGE; // stack_guard_gap's default

  it('a fault below a VM_GROWSDOWN VMA grows it down to the page, under the mmap write lock; other VMAs do not grow', () => {
    const k = boot();
    run(k, function* (u) {
      const mm = u.task.mm!;
      yield* u.mmap(STACK, 4 * PAGE, RW, ANON | MAP_FIXED | MAP_GROWSDOWN);
      const vma = mm.find_vma(STACK)!;
      const [pgoff, total] = [vma.vm_pgoff, mm.total_vm];
      const retries = k.locks.vmaStats.retry;
      // Five pages below, not page-aligned: the VMA now starts at that page, one VMA still.
      const at = STACK - 5 * PAGE + 12;
      yield* u.store32(at, 0x5eed);
      expect(mm.vmas()).toEqual([vma]);
      expect([vma.vm_start, vma.vm_end]).toEqual([STACK - 5 * PAGE, STACK + 4 * PAGE]);
      expect(vma.vm_pgoff).toBe(pgoff - 5);
      expect(mm.total_vm).toBe(total + 5);
      expect(yield* u.load32(at)).toBe(0x5eed);
      // The per-VMA lock could not find it: the mmap lock path grew it (no retry involved).
      expect(k.locks.vmaStats.retry).toBe(retries);
      expect(proc_pid_maps(k, u.pid)).toContain(`${(STACK - 5 * PAGE).toString(16)}-${(STACK + 4 * PAGE).toString(16)} rw-p`);
      // Below an ordinary VMA an access is SEGV_MAPERR, and nothing grows.
      yield* u.mmap(A, PAGE, RW, ANON | MAP_FIXED);
      const e = yield* signalOf(u.load32(A - PAGE));
      expect([e.signame, e.codename, e.addr]).toEqual(['SIGSEGV', 'SEGV_MAPERR', A - PAGE]);
      expect(mm.find_vma(A)!.vm_start).toBe(A);
    });
    expectClean(k);
  });

  it('keeps stack_guard_gap above an accessible mapping (a PROT_NONE one or another stack is no obstacle), and stays within RLIMIT_STACK', () => {
    const k = boot();
    run(k, function* (u) {
      const mm = u.task.mm!;
      yield* u.mmap(STACK, PAGE, RW, ANON | MAP_FIXED | MAP_GROWSDOWN);
      const below = STACK - GAP - 8 * PAGE;
      yield* u.mmap(below, 4 * PAGE, PROT_READ, ANON | MAP_FIXED);
      // The gap to `below`'s end is exactly stack_guard_gap: allowed; one page less: refused.
      yield* u.store8(below + 4 * PAGE + GAP, 1);
      expect(mm.find_vma(STACK)!.vm_start).toBe(below + 4 * PAGE + GAP);
      const e = yield* signalOf(u.store8(below + 4 * PAGE + GAP - PAGE, 1));
      expect([e.signame, e.codename]).toEqual(['SIGSEGV', 'SEGV_MAPERR']);
      // The same mapping made inaccessible is no obstacle.
      yield* u.mprotect(below, 4 * PAGE, PROT_NONE);
      yield* u.store8(below + 4 * PAGE, 2);
      expect(mm.find_vma(STACK)!.vm_start).toBe(below + 4 * PAGE);
      // Another stack under it is no obstacle either: it may grow right up to that one.
      const hi = 0x70000000;
      yield* u.mmap(hi, PAGE, RW, ANON | MAP_FIXED | MAP_GROWSDOWN);
      yield* u.mmap(hi - 4 * PAGE, PAGE, RW, ANON | MAP_FIXED | MAP_GROWSDOWN);
      yield* u.store8(hi - 3 * PAGE, 4);
      expect([mm.find_vma(hi)!.vm_start, mm.find_vma(hi - 4 * PAGE)!.vm_start]).toEqual([hi - 3 * PAGE, hi - 4 * PAGE]);
      // RLIMIT_STACK: with 16 KiB the stack may span 5 pages (the guard page is not counted).
      k.vmaOps.rlimit_stack = 4 * PAGE;
      yield* u.mmap(0x60000000, PAGE, RW, ANON | MAP_FIXED | MAP_GROWSDOWN);
      yield* u.store8(0x60000000 - 4 * PAGE, 3);
      expect(mm.find_vma(0x60000000 - PAGE)!.vm_start).toBe(0x60000000 - 4 * PAGE);
      const f = yield* signalOf(u.store8(0x60000000 - 5 * PAGE, 3));
      expect([f.signame, f.codename]).toEqual(['SIGSEGV', 'SEGV_MAPERR']);
      expect(mm.find_vma(0x60000000 - PAGE)!.vm_start).toBe(0x60000000 - 4 * PAGE);
    });
    expectClean(k);
  });

  it('new mappings keep out of the guard gap below a stack (vm_start_gap): top-down placement and hints; MAP_FIXED may go there', () => {
    const k = boot();
    run(k, function* (u) {
      const mm = u.task.mm!;
      // A stack at the top of the mmap area: the next mapping lands a guard gap below it.
      const top = yield* u.mmap(0, PAGE, RW, ANON | MAP_GROWSDOWN);
      const next = yield* u.mmap(0, 2 * PAGE, RW, ANON);
      expect(next).toBe(top - GAP - 2 * PAGE);
      // Without MAP_GROWSDOWN the same request would have been right below.
      const plain = yield* u.mmap(0, PAGE, RW, ANON);
      expect(plain).toBe(next - PAGE);
      // A hint inside the gap is not taken; one just below it is.
      yield* u.mmap(STACK, PAGE, RW, ANON | MAP_FIXED | MAP_GROWSDOWN);
      expect(yield* u.mmap(STACK - PAGE, PAGE, RW, ANON)).not.toBe(STACK - PAGE);
      expect(yield* u.mmap(STACK - GAP - PAGE, PAGE, RW, ANON)).toBe(STACK - GAP - PAGE);
      // MAP_FIXED is not placement: it may map inside the gap, and the stack then cannot grow.
      expect(yield* u.mmap(STACK - 2 * PAGE, PAGE, RW, ANON | MAP_FIXED)).toBe(STACK - 2 * PAGE);
      const e = yield* signalOf(u.store8(STACK - PAGE, 1));
      expect([e.signame, e.codename]).toEqual(['SIGSEGV', 'SEGV_MAPERR']);
      expect(mm.find_vma(STACK)!.vm_start).toBe(STACK);
    });
    expectClean(k);
  });

  it('expand_downwards refuses a VMA that does not grow down, an address below mmap_min_addr, and runs with the mmap write lock only', () => {
    const k = boot();
    run(k, function* (u) {
      const mm = u.task.mm!;
      yield* u.mmap(A, PAGE, RW, ANON | MAP_FIXED);
      yield* u.mmap(0x20000, PAGE, RW, ANON | MAP_FIXED | MAP_GROWSDOWN);
      yield* k.locks.mmap_write_lock(mm, 'test');
      expect(yield* k.vmaOps.expand_downwards(mm.find_vma(A)!, A - PAGE)).toBe(-EFAULT);
      expect(yield* k.vmaOps.expand_downwards(mm.find_vma(0x20000)!, 0x8000)).toBe(-EPERM);
      expect(yield* k.vmaOps.expand_downwards(mm.find_vma(0x20000)!, 0x10000)).toBe(0);
      // The VMA was write-locked for the change (no fault ran on it under its VMA lock meanwhile).
      expect(k.locks.isWriteLocked(mm.find_vma(0x10000)!)).toBe(true);
      k.locks.mmap_write_unlock(mm);
      expect(mm.find_vma(0x10000)!.vm_start).toBe(0x10000);
    });
    expectClean(k);
    // Without the write lock: lockdep's assertion, counted.
    const k2 = boot();
    run(k2, function* (u) {
      yield* u.mmap(0x30000, PAGE, RW, ANON | MAP_FIXED | MAP_GROWSDOWN);
      yield* k2.vmaOps.expand_downwards(u.task.mm!.find_vma(0x30000)!, 0x2f000);
    });
    expect(k2.reports.reports.some((r) => /expand_downwards/.test(r.text))).toBe(true);
  });
});

describe('driver faults', () => {
  it('->fault returning a referenced page: the PTE takes that reference (file RSS, mapcount 1)', () => {
    const k = boot();
    const pool = new PagePool(k, 'pg');
    const dev = fakeDevice(k, 'pg', {
      ops: {
        map_pages: true,
        fault(vmf: VmFault) {
          vmf.page = pool.page(vmf.pgoff);
          k.pages.getPage(vmf.page);
          return 0;
        },
      },
    });
    run(k, function* (u) {
      const mm = u.task.mm!;
      const fd = yield* u.open(dev.path);
      const a = yield* u.mmap(A, 4 * PAGE, RW, MAP_SHARED | MAP_FIXED, fd, 2 * PAGE);
      yield* u.store32(a + PAGE, 0x31);
      const pfn = pool.pfns[3]!;
      expect(pfnAt(k, mm, a + PAGE)).toBe(pfn);
      expect([k.pages.refcount[pfn], k.pages.mapcount[pfn]]).toEqual([2, 1]);
      expect(mm.rss.file).toBe(1);
      expect(eventsOf(dev, 'fault').length).toBe(1);
      // A shared write fault marks the page dirty; the PTE is writable.
      expect(k.pages.flags[pfn]! & PG_dirty).toBe(PG_dirty);
      expect(pteAt(k, mm, a + PAGE)![0] & _PAGE_RW).toBe(_PAGE_RW);
      expect(k.machine.phys.u8[pfn * PAGE]).toBe(0x31);
      yield* u.munmap(a, 4 * PAGE);
      expect([k.pages.refcount[pfn], k.pages.mapcount[pfn]]).toEqual([1, 0]);
    });
    pool.release();
    expectClean(k);
  });

  it('a private mapping of a driver: a read maps the driver page, a write copies it into an anonymous page', () => {
    const k = boot();
    const pool = new PagePool(k, 'priv');
    const dev = fakeDevice(k, 'priv', {
      ops: {
        map_pages: true,
        fault(vmf: VmFault) {
          vmf.page = pool.page(vmf.pgoff);
          k.pages.getPage(vmf.page);
          return 0;
        },
      },
    });
    run(k, function* (u) {
      const mm = u.task.mm!;
      k.machine.phys.u8[pool.page(0) * PAGE] = 0x44;
      k.machine.phys.u8[pool.page(1) * PAGE] = 0x55;
      const fd = yield* u.open(dev.path);
      const a = yield* u.mmap(A, 2 * PAGE, RW, MAP_PRIVATE | MAP_FIXED, fd);
      expect(yield* u.load8(a)).toBe(0x44);
      expect(pfnAt(k, mm, a)).toBe(pool.pfns[0]);
      expect(pteAt(k, mm, a)![0] & _PAGE_RW).toBe(0);
      // Write after read: do_wp_page copies the file page.
      yield* u.store8(a + 1, 0x66);
      expect(pfnAt(k, mm, a)).not.toBe(pool.pfns[0]);
      expect(yield* u.read(a, 2)).toEqual(new Uint8Array([0x44, 0x66]));
      // First access a write: do_cow_fault copies without ever mapping the driver page.
      yield* u.store8(a + PAGE + 1, 0x77);
      expect(yield* u.read(a + PAGE, 2)).toEqual(new Uint8Array([0x55, 0x77]));
      expect(k.machine.phys.u8[pool.pfns[1]! * PAGE + 1]).toBe(0);
      expect([k.pages.refcount[pool.pfns[0]!], k.pages.refcount[pool.pfns[1]!]]).toEqual([1, 1]);
      expect(mm.rss.anon).toBe(2);
      expect(mm.rss.file).toBe(0);
      yield* u.munmap(a, 2 * PAGE);
    });
    pool.release();
    expectClean(k);
  });

  it('->fault inserting the page itself returns VM_FAULT_NOPAGE: vmf_insert_pfn (special, no reference) and vmf_insert_page (+1 reference)', () => {
    const k = boot();
    const pool = new PagePool(k, 'ins');
    const pfnDev = fakeDevice(k, 'ipfn', {
      mmap(vma) {
        vma.vm_flags |= VM_PFNMAP | VM_IO | VM_DONTEXPAND;
        return 0;
      },
      ops: { map_pages: true, fault: (vmf: VmFault) => vmf_insert_pfn(k, vmf.vma, vmf.address, pool.page(0)) },
    });
    const pageDev = fakeDevice(k, 'ipage', {
      mmap(vma) {
        vma.vm_flags |= VM_MIXEDMAP;
        return 0;
      },
      ops: { map_pages: true, fault: (vmf: VmFault) => vmf_insert_page(k, vmf, pool.page(1 + vmf.pgoff)) },
    });
    run(k, function* (u) {
      const mm = u.task.mm!;
      const f1 = yield* u.open(pfnDev.path);
      const f2 = yield* u.open(pageDev.path);
      const a = yield* u.mmap(A, PAGE, RW, MAP_SHARED | MAP_FIXED, f1);
      const b = yield* u.mmap(A + 4 * PAGE, 2 * PAGE, RW, MAP_SHARED | MAP_FIXED, f2);
      yield* u.store32(a, 5);
      expect(pfnAt(k, mm, a)).toBe(pool.pfns[0]);
      expect(pteAt(k, mm, a)![0] & _PAGE_SPECIAL).toBe(_PAGE_SPECIAL);
      expect([k.pages.refcount[pool.pfns[0]!], k.pages.mapcount[pool.pfns[0]!]]).toEqual([1, 0]);
      yield* u.store32(b + PAGE, 6);
      const p2 = pool.pfns[2]!;
      expect(pfnAt(k, mm, b + PAGE)).toBe(p2);
      expect(pteAt(k, mm, b + PAGE)![0] & _PAGE_SPECIAL).toBe(0);
      expect([k.pages.refcount[p2], k.pages.mapcount[p2]]).toEqual([2, 1]);
      expect(mm.rss.file).toBe(1);
      yield* u.munmap(a, PAGE);
      yield* u.munmap(b, 2 * PAGE);
    });
    expect(VM_FAULT_NOPAGE).toBe(0x100);
    pool.release();
    expectClean(k);
  });

  it('VM_FAULT_SIGBUS is SIGBUS/BUS_ADRERR, VM_FAULT_SIGSEGV is SIGSEGV/SEGV_MAPERR; a driver VMA without ->fault SIGBUSes', () => {
    const k = boot();
    const busDev = fakeDevice(k, 'bus', { ops: { map_pages: true, fault: () => VM_FAULT_SIGBUS } });
    const segvDev = fakeDevice(k, 'segv', { ops: { map_pages: true, fault: () => VM_FAULT_SIGSEGV } });
    const noFault = fakeDevice(k, 'nofault');
    run(k, function* (u) {
      const f1 = yield* u.open(busDev.path);
      const f2 = yield* u.open(segvDev.path);
      const f3 = yield* u.open(noFault.path);
      const a = yield* u.mmap(0, PAGE, RW, MAP_SHARED, f1);
      const b = yield* u.mmap(0, PAGE, RW, MAP_SHARED, f2);
      const c = yield* u.mmap(0, PAGE, RW, MAP_SHARED, f3);
      let e = yield* signalOf(u.load32(a + 8));
      expect([e.signame, e.codename, e.addr]).toEqual(['SIGBUS', 'BUS_ADRERR', a + 8]);
      e = yield* signalOf(u.store32(b + 8, 1));
      expect([e.signame, e.codename, e.addr]).toEqual(['SIGSEGV', 'SEGV_MAPERR', b + 8]);
      e = yield* signalOf(u.load32(c));
      expect([e.signame, e.codename, e.addr]).toEqual(['SIGBUS', 'BUS_ADRERR', c]);
    });
    expectClean(k);
  });
});

describe('the fault retry path', () => {
  it('a driver ->fault without ->map_pages is not called under the VMA lock: VM_FAULT_RETRY, then under the mmap read lock', () => {
    const k = boot();
    const pool = new PagePool(k, 'retry');
    const seen: string[] = [];
    const mkFault = (label: string) => (vmf: VmFault) => {
      const t = k.current;
      seen.push(`${label}: mmap_lock=${vmf.vma.vm_mm.mmap_lock.heldBy(t, 'read')} vma_lock=${vmf.vma.readers.includes(t!)}`);
      vmf.page = pool.page(0);
      k.pages.getPage(vmf.page);
      return 0;
    };
    const slow = fakeDevice(k, 'slow', { ops: { fault: mkFault('no map_pages') } });
    const fast = fakeDevice(k, 'fast', { ops: { map_pages: true, fault: mkFault('map_pages') } });
    run(k, function* (u) {
      const f1 = yield* u.open(slow.path);
      const f2 = yield* u.open(fast.path);
      const a = yield* u.mmap(0, PAGE, PROT_READ, MAP_SHARED, f1);
      const b = yield* u.mmap(0, PAGE, PROT_READ, MAP_SHARED, f2);
      const r0 = k.locks.vmaStats.retry;
      const f0 = faultCounters(k).retries;
      yield* u.load32(a);
      expect(k.locks.vmaStats.retry).toBe(r0 + 1);
      expect(faultCounters(k).retries).toBe(f0 + 1);
      yield* u.load32(b);
      expect(k.locks.vmaStats.retry).toBe(r0 + 1);
      yield* u.munmap(a, PAGE);
      yield* u.munmap(b, PAGE);
    });
    expect(seen).toEqual(['no map_pages: mmap_lock=true vma_lock=false', 'map_pages: mmap_lock=false vma_lock=true']);
    pool.release();
    expectClean(k);
  });

  it('a first write needing an anon_vma while another thread holds the mmap lock for write retries and waits for it', () => {
    const k = boot();
    let inMmap = false;
    const seen: string[] = [];
    const dev = fakeDevice(k, 'sleepy', {
      *mmap() {
        inMmap = true;
        yield* k.sleepFor(3_000_000);
        seen.push('mmap done');
        inMmap = false;
        return 0;
      },
    });
    run(k, function* (u) {
      yield* u.mmap(A, PAGE, RW, ANON | MAP_FIXED);
      expect(u.task.mm!.vma_lookup(A)!.anon_vma).toBeNull();
      const fd = yield* u.open(dev.path);
      yield* u.clone(
        function* (t) {
          while (!inMmap) yield* t.sleep(10_000);
          const r0 = k.locks.vmaStats.retry;
          yield* t.store32(A, 0x42);
          seen.push(`write done, retried ${k.locks.vmaStats.retry - r0}`);
        },
        { cpu: 1 },
      );
      yield* u.mmap(0x50000000, PAGE, PROT_READ, MAP_SHARED | MAP_FIXED, fd);
      while (seen.length < 2) yield* u.sleep(10_000);
      expect(yield* u.load32(A)).toBe(0x42);
    });
    expect(seen).toEqual(['mmap done', 'write done, retried 1']);
    expectClean(k);
  });
});

describe('spurious faults and the TLB', () => {
  it('mprotect making a page writable flushes it (x86 pte_needs_flush: _PAGE_RW is in flush_on_change); the TLB entry is gone', () => {
    const k = boot();
    run(k, function* (u) {
      const mm = u.task.mm!;
      yield* u.mmap(A, PAGE, RW, ANON | MAP_FIXED);
      yield* u.store32(A, 1);
      yield* u.mprotect(A, PAGE, PROT_READ);
      expect(yield* u.load32(A)).toBe(1); // the TLB now holds a read-only entry
      const cpu = k.machine.cpu(u.task.cpu);
      expect(tlbEntries(cpu).filter((e) => Number(e.va) === A).every((e) => !e.writable)).toBe(true);
      const flushes = k.tlb.stats.flushes;
      yield* u.mprotect(A, PAGE, RW);
      expect(k.tlb.stats.flushes).toBe(flushes + 1);
      expect(tlbEntries(cpu).filter((e) => Number(e.va) === A)).toEqual([]);
      expect(pteAt(k, mm, A)![0] & _PAGE_RW).toBe(_PAGE_RW);
      const before = { ...faultCounters(k) };
      yield* u.store32(A, 2);
      expect(faultCounters(k)).toEqual(before);
    });
    expectClean(k);
  });

  it('a PTE made writable without a flush (wp_page_reuse) leaves a stale read-only entry on another CPU, which this CPU model re-walks: never a signal', () => {
    const k = boot();
    const st = { cached: false, reused: false, done: false, rewalks: -1, faults: {} as Record<string, number>, after: {} as Record<string, number> };
    run(k, function* (u) {
      const mm = u.task.mm!;
      yield* u.mmap(A, PAGE, RW, ANON | MAP_FIXED);
      yield* u.store32(A, 1);
      const pfn = pfnAt(k, mm, A);
      // fork write-protects the page; once the child is gone it is this process's alone again.
      yield* u.wait(yield* u.fork(function* () {}));
      expect(pteAt(k, mm, A)![0] & _PAGE_RW).toBe(0);
      yield* u.clone(function* (w: User) {
        expect(yield* w.load32(A)).toBe(1); // CPU 1 caches the read-only entry
        st.cached = true;
        while (!st.reused) yield* w.sleep(5_000);
        const cpu = k.machine.cpu(1);
        const rewalks = cpu.counters().rightsRewalks!;
        st.faults = { ...faultCounters(k) };
        // SDM 4.10.4.3 lets a CPU fault on the stale entry (Linux would then find the PTE
        // already writable: a spurious fault) or re-walk first; the modelled CPU re-walks.
        yield* w.store32(A, 3);
        st.rewalks = cpu.counters().rightsRewalks! - rewalks;
        st.after = { ...faultCounters(k) };
        st.done = true;
      }, { cpu: 1 });
      while (!st.cached) yield* u.sleep(5_000);
      const flushes = k.tlb.stats.flushes;
      const reuse = faultCounters(k).reuse;
      yield* u.store32(A, 2); // do_wp_page reuses the page: RW set, nothing flushed
      expect(faultCounters(k).reuse).toBe(reuse + 1);
      expect(k.tlb.stats.flushes).toBe(flushes);
      expect(tlbEntries(k.machine.cpu(1)).filter((e) => Number(e.va) === A && !e.writable).length).toBeGreaterThan(0);
      st.reused = true;
      while (!st.done) yield* u.sleep(5_000);
      expect(st.rewalks).toBe(1);
      expect(st.after).toEqual(st.faults);
      expect(pfnAt(k, mm, A)).toBe(pfn);
      expect(yield* u.load32(A)).toBe(3);
    }, { maxSteps: 4_000_000 });
    expectClean(k);
  });

  it("a fault on a page another CPU is replacing waits for it and is spurious; that CPU sees the write (wp_page_copy holds the PTE lock over its flush)", () => {
    const k = boot();
    const seen: number[] = [];
    const sp = faultCounters(k).spurious;
    run(k, function* (u) {
      const a = yield* u.mmap(A, PAGE, RW, ANON | MAP_FIXED);
      const flag = yield* u.mmap(A + 16 * PAGE, PAGE, RW, ANON | MAP_FIXED);
      yield* u.store32(a, 77);
      yield* u.clone(
        function* (t) {
          yield* t.load32(a);
          yield* t.store32(flag, 1); // flag's page was the zero page for the main thread
        },
        { cpu: 1 },
      );
      // Keep reading (no sleep: an idle CPU would be in lazy TLB mode, left out of the flush
      // and so out of the window), so one read falls between the flush and the new PTE.
      for (let i = 0; i < 20000; i++) {
        const v = yield* u.load32(flag);
        if (v === 1) {
          seen.push(i);
          break;
        }
      }
    });
    expect(seen.length).toBe(1);
    // The main thread's read fault found the entry empty during the flush, waited for the PTE
    // lock, and then found the new page already mapped: a spurious fault.
    expect(faultCounters(k).spurious).toBe(sp + 1);
    expectClean(k);
  });
});
