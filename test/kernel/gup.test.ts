// GUP (mm/gup.c): the lockless walk and its bail-outs, the slow path's VMA checks and faults,
// FOLL_GET versus FOLL_PIN references, FOLL_NOFAULT, FOLL_FORCE, unsharing for read-only pins,
// and pinned pages at fork. Expectations follow mm/gup.c and the refcount rules of
// Documentation/core-api/pin_user_pages.rst.
import { describe, expect, it } from 'vitest';
import { Kernel } from '../../kernel/kernel.ts';
import { MAP_ANONYMOUS, MAP_PRIVATE, MAP_SHARED, PROT_READ, PROT_WRITE } from '../../kernel/mm/mmap.ts';
import type { User } from '../../kernel/uapi.ts';
import { PageRefs, GUP_PIN_COUNTING_BIAS } from '../../kernel/mm/page_ref.ts';
import {
  FOLL_FORCE, FOLL_NOFAULT, FOLL_WRITE, MMF_HAS_PINNED, get_user_pages_fast, get_user_pages_fast_only, get_user_pages_remote, gupCounters,
  pin_user_pages_fast, put_page, unpin_user_page,
} from '../../kernel/mm/gup.ts';
import { assert_vm_invariants, check_vm_invariants } from '../../kernel/mm/debug_vm.ts';
import { ptePfn } from '../../kernel/arch/x86/pgtable.ts';
import { EFAULT } from '../../kernel/errno.ts';
import { fakeDevice, type FaultMode } from './fake-devices.ts';
import type { MmStruct } from '../../kernel/mm/mm_types.ts';

function pfnAt(k: Kernel, mm: MmStruct, va: number): number {
  const ptep = k.pt.pte_offset(mm, va);
  if (ptep < 0 || !(k.pt.lo(ptep) & 1)) return -1;
  return ptePfn(k.pt.lo(ptep), k.pt.hi(ptep));
}

/** Run `body` as the only process and return the kernel after it finished. */
function runProcess(body: (u: User, k: Kernel) => Generator<any, void, any>, opts: { cpus?: number } = {}): Kernel {
  const k = new Kernel({ cpus: opts.cpus ?? 1, memoryBytes: 64 << 20 });
  let error: unknown = null;
  k.spawn(function* (u: User) {
    try {
      yield* body(u, k);
    } catch (e) {
      error = e;
    }
  });
  k.run();
  if (error) throw error;
  return k;
}

describe('get_user_pages_fast', () => {
  it('takes one reference per present page and the checker accounts for it until put_page', () => {
    runProcess(function* (u, k) {
      const a = yield* u.mmap(0, 4 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
      for (let i = 0; i < 4; i++) yield* u.store32(a + i * 4096, i + 1);
      const mm = u.task.mm!;
      const before = [0, 1, 2, 3].map((i) => k.pages.refcount[pfnAt(k, mm, a + i * 4096)]!);
      const refs = new PageRefs(k, 'test');
      const out: number[] = [];
      const n = yield* u.call('gup', (kk) => get_user_pages_fast(kk, a, 4, 0, refs, out));
      expect(n).toBe(4);
      expect(out).toEqual([0, 1, 2, 3].map((i) => pfnAt(k, mm, a + i * 4096)));
      expect(out.map((p) => k.pages.refcount[p]!)).toEqual(before.map((r) => r + 1));
      expect(gupCounters(k).fastPages).toBe(4);
      assert_vm_invariants(k);
      // A reference taken behind the holder's back is a leak the checker sees.
      k.pages.getPage(out[0]!);
      expect(check_vm_invariants(k).problems.join('\n')).toMatch(/refcount 3 but 1 mappings \+ 1 holder/);
      k.pages.putPage(out[0]!, 'test');
      for (const p of out) put_page(k, refs, p);
      expect(out.map((p) => k.pages.refcount[p]!)).toEqual(before);
      assert_vm_invariants(k);
    });
  });

  it('faults missing pages in through the slow path', () => {
    runProcess(function* (u, k) {
      const a = yield* u.mmap(0, 3 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
      yield* u.store32(a, 1); // only the first page exists
      const refs = new PageRefs(k, 'test');
      const out: number[] = [];
      const n = yield* u.call('gup', (kk) => get_user_pages_fast(kk, a, 3, FOLL_WRITE, refs, out));
      expect(n).toBe(3);
      expect(gupCounters(k).fastPages).toBe(1);
      expect(gupCounters(k).fastBail['not present']).toBe(1);
      expect(gupCounters(k).slowPages).toBe(2);
      expect(gupCounters(k).faults).toBe(2);
      const mm = u.task.mm!;
      expect(out).toEqual([0, 1, 2].map((i) => pfnAt(k, mm, a + i * 4096)));
      assert_vm_invariants(k);
      for (const p of out) put_page(k, refs, p);
    });
  });

  it('returns the zero page for a read without taking a reference', () => {
    runProcess(function* (u, k) {
      const a = yield* u.mmap(0, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS);
      yield* u.load32(a);
      const zeroRef = k.pages.refcount[k.pages.zeroPfn];
      const refs = new PageRefs(k, 'test');
      const out: number[] = [];
      // GUP-fast bails on the special zero-page entry; the slow path returns the zero page.
      const n = yield* u.call('gup', (kk) => get_user_pages_fast(kk, a, 1, 0, refs, out));
      expect(n).toBe(1);
      expect(out[0]).toBe(k.pages.zeroPfn);
      expect(gupCounters(k).fastBail['special entry']).toBe(1);
      expect(k.pages.refcount[k.pages.zeroPfn]).toBe(zeroRef);
      expect(refs.size).toBe(0);
    });
  });

  it('FOLL_FAST_ONLY never falls back', () => {
    runProcess(function* (u, k) {
      const a = yield* u.mmap(0, 2 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
      yield* u.store32(a, 1);
      const refs = new PageRefs(k, 'test');
      const out: number[] = [];
      const n = yield* u.call('gup', function* (kk) {
        return get_user_pages_fast_only(kk, a, 2, 0, refs, out);
      });
      expect(n).toBe(1);
      expect(gupCounters(k).faults).toBe(0);
      put_page(k, refs, out[0]!);
    });
  });
});

describe('driver mappings under GUP', () => {
  const cases: [FaultMode, boolean, string][] = [
    // mode, GUP succeeds, why
    ['pfnmap', false, 'special PTEs stop GUP-fast and VM_PFNMAP stops the slow path'],
    ['vmf_insert_mixed', false, 'x86 vmf_insert_mixed installs special PTEs: no struct page to take'],
    ['insert-in-mmap', true, 'vm_insert_page installs normal PTEs in a VM_MIXEDMAP VMA'],
    ['vmf_insert_page', true, 'vmf_insert_page from ->fault installs normal PTEs'],
    ['return-page', true, '->fault returning a page maps it normally'],
  ];
  for (const [mode, ok, why] of cases) {
    it(`${mode}: ${ok ? 'GUP takes the page' : '-EFAULT'} (${why})`, () => {
      runProcess(function* (u, k) {
        const dev = fakeDevice(k, '/dev/fake', 2, mode);
        const fd = yield* u.open('/dev/fake');
        const a = yield* u.mmap(0, 2 * 4096, PROT_READ, MAP_SHARED, fd);
        yield* u.load32(a); // fault the first page in where the design faults
        const refs = new PageRefs(k, 'test');
        const out: number[] = [];
        const [n] = yield* u.call('gup', function* (kk) {
          return [yield* get_user_pages_fast(kk, a, 1, 0, refs, out)];
        });
        if (ok) {
          expect(n).toBe(1);
          expect(out[0]).toBe(dev.pages[0]);
          put_page(k, refs, out[0]!);
        } else {
          expect(n).toBe(-EFAULT);
          expect(refs.size).toBe(0);
        }
        assert_vm_invariants(k);
      });
    });
  }

  it('VM_IO refuses the slow path even for normal pages (VM_MIXEDMAP|VM_IO)', () => {
    runProcess(function* (u, k) {
      fakeDevice(k, '/dev/io', 1, 'vmf_insert_page', { io: true });
      const fd = yield* u.open('/dev/io');
      const a = yield* u.mmap(0, 4096, PROT_READ, MAP_SHARED, fd);
      const refs = new PageRefs(k, 'test');
      // Not faulted in yet: GUP-fast finds nothing, the slow path meets VM_IO.
      const [n] = yield* u.call('gup', function* (kk) {
        return [yield* get_user_pages_fast(kk, a, 1, 0, refs, [])];
      });
      expect(n).toBe(-EFAULT);
      expect(gupCounters(k).faults).toBe(0);
    });
  });
});

describe('slow-path flags', () => {
  it('FOLL_NOFAULT refuses to fault (-EFAULT) and takes present pages', () => {
    runProcess(function* (u, k) {
      const a = yield* u.mmap(0, 2 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
      yield* u.store32(a, 5);
      const mm = u.task.mm!;
      const refs = new PageRefs(k, 'test');
      const r = yield* u.call('gup', function* (kk) {
        yield* kk.locks.mmap_read_lock(mm, 'test');
        const present: number[] = [];
        const got1 = yield* get_user_pages_remote(kk, mm, a, 1, FOLL_NOFAULT, refs, present);
        const got2 = yield* get_user_pages_remote(kk, mm, a + 4096, 1, FOLL_NOFAULT, refs, []);
        kk.locks.mmap_read_unlock(mm);
        return [got1, got2, present[0]!] as const;
      });
      expect(r[0]).toBe(1);
      expect(r[1]).toBe(-EFAULT);
      expect(gupCounters(k).faults).toBe(0);
      put_page(k, refs, r[2]);
    });
  });

  it('a write to a read-only private mapping needs FOLL_FORCE, which breaks COW without making the PTE writable', () => {
    runProcess(function* (u, k) {
      const a = yield* u.mmap(0, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS);
      yield* u.load32(a); // zero page
      const mm = u.task.mm!;
      const refs = new PageRefs(k, 'test');
      const out: number[] = [];
      const r = yield* u.call('gup', function* (kk) {
        yield* kk.locks.mmap_read_lock(mm, 'test');
        const plain = yield* get_user_pages_remote(kk, mm, a, 1, FOLL_WRITE, refs, []);
        const forced = yield* get_user_pages_remote(kk, mm, a, 1, FOLL_WRITE | FOLL_FORCE, refs, out);
        kk.locks.mmap_read_unlock(mm);
        return [plain, forced];
      });
      expect(r).toEqual([-EFAULT, 1]);
      expect(out[0]).not.toBe(k.pages.zeroPfn);
      expect(pfnAt(k, mm, a)).toBe(out[0]);
      const ptep = k.pt.pte_offset(mm, a);
      expect(k.pt.lo(ptep) & 2).toBe(0); // still read-only for the process
      // The kernel writes through the page; the process reads the value.
      k.machine.phys.writeN(out[0]! * 4096, 4, 0xabcd);
      expect(yield* u.load32(a)).toBe(0xabcd);
      assert_vm_invariants(k);
      put_page(k, refs, out[0]!);
    });
  });

  it('get_user_pages_remote without the mmap lock is reported', () => {
    const k = runProcess(function* (u, k) {
      const a = yield* u.mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
      yield* u.store32(a, 1);
      const refs = new PageRefs(k, 'test');
      const out: number[] = [];
      yield* u.call('gup', (kk) => get_user_pages_remote(kk, u.task.mm!, a, 1, 0, refs, out));
      for (const p of out) put_page(k, refs, p);
    });
    expect(k.reports.reports.some((r) => r.kind === 'lockdep' && /lockdep_assert_held\(&mm->mmap_lock\)/.test(r.text) && /get_user_pages_remote/.test(r.text))).toBe(true);
  });
});

describe('FOLL_PIN', () => {
  it('adds GUP_PIN_COUNTING_BIAS, sets MMF_HAS_PINNED, and fork copies the pinned page eagerly', () => {
    runProcess(function* (u, k) {
      const a = yield* u.mmap(0, 2 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
      yield* u.store32(a, 11);
      yield* u.store32(a + 4096, 22);
      const mm = u.task.mm!;
      const pinned = pfnAt(k, mm, a);
      const plain = pfnAt(k, mm, a + 4096);
      const refs = new PageRefs(k, 'test');
      const out: number[] = [];
      const n = yield* u.call('pin', (kk) => pin_user_pages_fast(kk, a, 1, FOLL_WRITE, refs, out));
      expect(n).toBe(1);
      expect(k.pages.refcount[pinned]).toBe(1 + GUP_PIN_COUNTING_BIAS);
      expect(mm.flags & MMF_HAS_PINNED).toBeTruthy();
      assert_vm_invariants(k);
      let childPinned = -1;
      let childPlain = -1;
      const child = yield* u.fork(function* (c: User) {
        expect(yield* c.load32(a)).toBe(11);
        childPinned = pfnAt(k, c.task.mm!, a);
        childPlain = pfnAt(k, c.task.mm!, a + 4096);
      });
      yield* u.wait(child);
      expect(childPinned).not.toBe(pinned); // copied at fork: the pin keeps pointing at the parent's page
      expect(childPlain).toBe(plain); // shared copy-on-write as usual
      unpin_user_page(k, refs, pinned, true);
      expect(k.pages.refcount[pinned]).toBe(1);
      assert_vm_invariants(k);
    });
  });

  it('a read-only pin of a shared anonymous page unshares it first', () => {
    runProcess(function* (u, k) {
      const a = yield* u.mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
      yield* u.store32(a, 7);
      let release = false;
      const child = yield* u.fork(function* (c: User) {
        while (!release) yield* c.sleep(10_000);
      });
      const mm = u.task.mm!;
      const shared = pfnAt(k, mm, a);
      expect(k.pages.mapcount[shared]).toBe(2);
      const refs = new PageRefs(k, 'test');
      const out: number[] = [];
      const n = yield* u.call('pin', (kk) => pin_user_pages_fast(kk, a, 1, 0, refs, out));
      expect(n).toBe(1);
      expect(gupCounters(k).fastBail['must unshare']).toBe(1);
      expect(out[0]).not.toBe(shared);
      expect(pfnAt(k, mm, a)).toBe(out[0]);
      expect(k.pages.mapcount[shared]).toBe(1); // the child keeps the original
      expect(yield* u.load32(a)).toBe(7);
      assert_vm_invariants(k);
      unpin_user_page(k, refs, out[0]!);
      release = true;
      yield* u.wait(child);
    }, { cpus: 2 });
  });

  it('unpinning a page that is not pinned is a WARN and changes nothing', () => {
    const k = runProcess(function* (u, k) {
      const a = yield* u.mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
      yield* u.store32(a, 1);
      const pfn = pfnAt(k, u.task.mm!, a);
      unpin_user_page(k, new PageRefs(k, 'nobody'), pfn);
      expect(k.pages.refcount[pfn]).toBe(1);
    });
    expect(k.reports.reports.map((r) => r.title)).toContain('WARNING: unpin of a page that is not pinned');
  });
});
