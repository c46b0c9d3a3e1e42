// binder_alloc_check / binder_check_device: quiet on a healthy allocator in every design (buffers
// in use, pages on the LRU, PTEs in the receiver), loud on each planted inconsistency between the
// buffer list, the free tree, the allocated index, the page array, the global LRU and the PTEs.
import { describe, expect, it } from 'vitest';
import { Kernel } from '../../kernel/kernel.ts';
import type { User } from '../../kernel/uapi.ts';
import { MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE } from '../../kernel/mm/mmap.ts';
import { check_vm_invariants } from '../../kernel/mm/debug_vm.ts';
import { BinderDevice } from '../../drivers/android/binder/binder.ts';
import { binderLru, type BinderAlloc } from '../../drivers/android/binder/binder_alloc.ts';
import { binder_alloc_check, binder_check_device } from '../../drivers/android/binder/binder_alloc_debug.ts';
import { DESIGNS, type DesignName } from '../../drivers/android/binder/page_mapping.ts';
import { BC_ENTER_LOOPER, BC_TRANSACTION, BINDER_SET_CONTEXT_MGR, TF_ONE_WAY } from '../../drivers/android/binder/uapi.ts';
import { PAYLOAD_AT, SCRATCH_SIZE, cmdFree, cmdTransaction, cmdWord, payload, setNonblock, writeRead } from '../../src/fuzz/binder_client.ts';
import { ptePfn } from '../../kernel/arch/x86/pgtable.ts';

const SIZES = [5000, 100, 9000, 50];

/**
 * A context manager that received four oneway transactions from a client: it read and freed the
 * first two (their pages go to the LRU), read the third and holds it, and the fourth waits in the
 * node's async queue with its buffer allocated. Both processes stay alive.
 */
function system(design: DesignName): { k: Kernel; dev: BinderDevice; alloc: BinderAlloc } {
  const k = new Kernel({ cpus: 2, memoryBytes: 32 << 20 });
  const dev = new BinderDevice(k, { design: { design } });
  let ready = false;
  const errors: unknown[] = [];
  k.spawn(function* server(u: User) {
    try {
      const fd = yield* u.open('/dev/binder');
      setNonblock(u, fd);
      yield* u.mmap(0, 128 * 1024, PROT_READ, MAP_PRIVATE, fd, 0);
      yield* u.ioctl(fd, BINDER_SET_CONTEXT_MGR, 0);
      const s = yield* u.mmap(0, SCRATCH_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
      yield* writeRead(u, fd, s, cmdWord(BC_ENTER_LOOPER), 0);
      ready = true;
      for (let got = 0; got < 3; ) {
        let rets;
        try {
          rets = yield* writeRead(u, fd, s, null, 512);
        } catch {
          yield* u.sleep(100_000);
          continue;
        }
        for (const r of rets) {
          if (!r.tr) continue;
          yield* u.read(r.tr.buffer, r.tr.data_size); // fault designs: the pages get PTEs
          if (got < 2) yield* writeRead(u, fd, s, cmdFree(r.tr.buffer), 0);
          got++;
        }
      }
      for (;;) yield* u.sleep(10_000_000);
    } catch (e) {
      errors.push(e);
    }
  });
  k.spawn(function* client(u: User) {
    while (!ready) yield* u.sleep(100_000);
    const fd = yield* u.open('/dev/binder');
    yield* u.mmap(0, 128 * 1024, PROT_READ, MAP_PRIVATE, fd, 0);
    const s = yield* u.mmap(0, SCRATCH_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
    for (let i = 0; i < SIZES.length; i++) {
      const data = payload(i + 1, SIZES[i]!);
      yield* u.write(s + PAYLOAD_AT, data);
      yield* writeRead(u, fd, s, cmdTransaction(BC_TRANSACTION, { target: 0, cookie: 0, code: i + 1, flags: TF_ONE_WAY, sender_pid: 0, sender_euid: 0, data_size: data.length, offsets_size: 0, buffer: s + PAYLOAD_AT, offsets: s + PAYLOAD_AT + data.length }), 0);
    }
    for (;;) yield* u.sleep(10_000_000);
  });
  k.run({ untilCycles: 200_000_000 });
  expect(errors).toEqual([]);
  const server = [...dev.procs].find((p) => p.device.contextManager?.proc === p)!;
  return { k, dev, alloc: server.alloc };
}

/** An installed page in state `want`, and whether it is mapped in the receiver. */
function pageIn(alloc: BinderAlloc, want: 'lru' | 'active', mapped?: boolean): number {
  const k = alloc.k;
  for (let i = 0; i < alloc.pages.length; i++) {
    if (alloc.pageState(i) !== want) continue;
    if (mapped !== undefined) {
      const ptep = k.pt.pte_offset(alloc.mm!, alloc.pageAddr(i));
      const present = ptep >= 0 && (k.pt.lo(ptep) & 1) === 1 && ptePfn(k.pt.lo(ptep), k.pt.hi(ptep)) === alloc.pages[i];
      if (present !== mapped) continue;
    }
    return i;
  }
  throw new Error(`no ${want} page${mapped === undefined ? '' : mapped ? ' with a PTE' : ' without a PTE'}`);
}

describe('binder_alloc_check', () => {
  for (const design of DESIGNS) {
    it(`finds nothing wrong with a healthy allocator (${design})`, () => {
      const { k, dev, alloc } = system(design);
      expect(alloc.allocated.size).toBe(2); // the held buffer and the queued oneway one
      expect(alloc.lru.countOf(alloc)).toBeGreaterThan(0);
      expect([...alloc.pages].some((p, i) => p >= 0 && alloc.pageState(i) === 'active')).toBe(true);
      expect(binder_check_device(dev)).toEqual([]);
      expect(check_vm_invariants(k).problems).toEqual([]);
      expect(k.reports.reports.map((r) => r.title)).toEqual([]);
    });
  }

  const plants: [string, DesignName, (a: BinderAlloc) => void, RegExp][] = [
    ['an LRU page taken off the LRU', 'eager', (a) => { a.lru.del(a, pageIn(a, 'lru')); }, /page \d+ is installed and unused but not on the LRU/],
    ['a used page put on the LRU', 'fault', (a) => { a.lru.add(a, pageIn(a, 'active')); }, /page \d+ is used by a buffer but on the LRU/],
    ['a page forgotten while its PTE stays', 'eager', (a) => { a.pages[pageIn(a, 'active', true)] = -1; }, /PTE 0x[0-9a-f]+ in .*: maps frame 0x[0-9a-f]+, which binder does not hold/],
    ['a page forgotten while its pfnmap PTE stays', 'pfnmap', (a) => { a.pages[pageIn(a, 'active', true)] = -1; }, /which binder does not hold/],
    ['two page slots sharing a frame', 'eager-writelock', (a) => { const i = pageIn(a, 'active'); const j = pageIn(a, 'lru'); a.pages[j] = a.pages[i]!; }, /frame 0x[0-9a-f]+ installed at pages \d+ and \d+/],
    ['free_async_space off by 8', 'eager', (a) => { a.free_async_space -= 8; }, /free_async_space \d+, expected \d+/],
    ['a used buffer missing from the allocated index', 'fault', (a) => { a.allocated.delete([...a.allocated.keys()][0]!); }, /used but not in the allocated index/],
    ['a used buffer marked free', 'pfnmap', (a) => { a.allocated.values().next().value!.free = true; }, /free but not in the free tree/],
    ['a broken next link', 'eager', (a) => { a.head!.next = a.head!.next!.next; }, /next link broken|prev link/],
    ['an eager-deferred PTE the design does not know about', 'eager-deferred', (a) => { const s = a.designState as { deferred: { userMapped: Uint8Array } }; s.deferred.userMapped[pageIn(a, 'active', true)] = 0; }, /is mapped but not marked userMapped/],
  ];
  for (const [what, design, plant, expected] of plants) {
    it(`detects ${what} (${design})`, () => {
      const { dev, alloc } = system(design);
      expect(binder_alloc_check(alloc)).toEqual([]);
      plant(alloc);
      const problems = binder_check_device(dev);
      expect(problems.length).toBeGreaterThan(0);
      expect(problems.join('\n')).toMatch(expected);
    });
  }

  it('detects an LRU entry of an allocator that is gone', () => {
    const { k, dev, alloc } = system('eager');
    const ghost = Object.create(alloc) as BinderAlloc;
    Object.defineProperty(ghost, 'id', { value: 99_999 });
    binderLru(k).add(ghost, 0);
    expect(binder_check_device(dev).join('\n')).toMatch(/binder LRU: \d+ entries but the live allocators have \d+ pages on it/);
  });
});
