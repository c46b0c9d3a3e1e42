// Regression tests for what the fuzzer (src/fuzz/) found in the binder driver, each as the
// shrunk case it printed or as a direct reproduction through the raw ABI:
//  - a transaction still copying into a process that died had its buffer freed under it by the
//    deferred release (BUG_ON(buffer->free)); binder.c holds the target with proc->tmp_ref;
//  - the context manager's own process could call handle 0 (binder.c refuses: "got transaction
//    to context manager from process owning it");
//  - a ref to a new context manager overwrote desc 0 of a ref to an earlier one (binder.c never
//    reuses a desc);
//  - (by design, documented) eager designs reclaim a page without reaching a copy of the binder
//    mapping that user space moved with mremap; the fault designs do reach it.
import { describe, expect, it } from 'vitest';
import { Kernel } from '../../kernel/kernel.ts';
import type { User } from '../../kernel/uapi.ts';
import { MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE } from '../../kernel/mm/mmap.ts';
import { MREMAP_FIXED, MREMAP_MAYMOVE } from '../../kernel/mm/mremap.ts';
import { check_vm_invariants } from '../../kernel/mm/debug_vm.ts';
import { ptePfn } from '../../kernel/arch/x86/pgtable.ts';
import { BinderDevice } from '../../drivers/android/binder/binder.ts';
import { binder_check_device } from '../../drivers/android/binder/binder_alloc_debug.ts';
import type { DesignName } from '../../drivers/android/binder/page_mapping.ts';
import { BC_ENTER_LOOPER, BC_TRANSACTION, BINDER_SET_CONTEXT_MGR, TF_ONE_WAY } from '../../drivers/android/binder/uapi.ts';
import { PAYLOAD_AT, SCRATCH_SIZE, cmdFree, cmdTransaction, cmdWord, payload, setNonblock, writeRead } from '../../src/fuzz/binder_client.ts';
import { executeScenario } from '../../src/fuzz/executor.ts';
import type { Scenario } from '../../src/fuzz/ops.ts';

describe('binder: regressions found by the fuzzer', () => {
  it('a transaction in flight to a dying process keeps its buffer until it is done (proc tmp_ref)', () => {
    // The shrunk case: the context manager exits while another process's transaction to it
    // (its payload unreadable, TF_CLEAR_BUF) is being copied and then released.
    const s: Scenario = {
      cpus: 3,
      memoryMiB: 16,
      quantum: 500,
      procs: 3,
      designs: [0, 0, 0, 0, 0, 0],
      ops: [
        { t: 'bsend', a: 0, to: 0, oneway: false, size: 5767, obj: 'none', bad: 'oddoffs', clear: true },
        { t: 'exit', a: 0 },
        { t: 'bsend', a: 58, to: 4, oneway: true, size: 6160, obj: 'none', bad: 'badbuf', clear: true },
      ],
    };
    for (let quantum = 100; quantum <= 3000; quantum += 100) {
      const r = executeScenario({ ...s, quantum });
      expect(r.failure, `quantum ${quantum}`).toBeNull();
    }
  });

  it("refuses a transaction from the context manager's own process to handle 0", () => {
    const k = new Kernel({ cpus: 2, memoryBytes: 32 << 20 });
    const dev = new BinderDevice(k);
    const returns: string[] = [];
    k.spawn(function* mgr(u: User) {
      const fd = yield* u.open('/dev/binder');
      setNonblock(u, fd);
      yield* u.mmap(0, 128 * 1024, PROT_READ, MAP_PRIVATE, fd, 0);
      yield* u.ioctl(fd, BINDER_SET_CONTEXT_MGR, 0);
      // A second binder fd of the same process: binder.c compares pids, not procs.
      const fd2 = yield* u.open('/dev/binder');
      setNonblock(u, fd2);
      yield* u.mmap(0, 128 * 1024, PROT_READ, MAP_PRIVATE, fd2, 0);
      const s = yield* u.mmap(0, SCRATCH_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
      for (const f of [fd, fd2]) {
        yield* writeRead(u, f, s, cmdTransaction(BC_TRANSACTION, { target: 0, cookie: 0, code: 1, flags: TF_ONE_WAY, sender_pid: 0, sender_euid: 0, data_size: 8, offsets_size: 0, buffer: s + PAYLOAD_AT, offsets: s + PAYLOAD_AT + 8 }), 0);
        for (const r of yield* writeRead(u, f, s, null, 256)) returns.push(r.name);
      }
    });
    k.run();
    expect(returns.filter((r) => r !== 'BR_NOOP')).toEqual(['BR_FAILED_REPLY', 'BR_FAILED_REPLY']);
    expect(dev.log.filter((l) => l.includes('got transaction to context manager from process owning it')).length).toBe(2);
    expect(k.reports.reports).toEqual([]);
  });

  it('gives a new context manager a fresh desc when desc 0 names an earlier one', () => {
    const k = new Kernel({ cpus: 2, memoryBytes: 32 << 20 });
    const dev = new BinderDevice(k);
    k.spawn(function* client(u: User) {
      yield* u.open('/dev/binder');
      for (;;) yield* u.sleep(10_000_000);
    });
    k.run({ untilCycles: 10_000_000 });
    const client = [...dev.procs][0]!;
    const mgrA = { proc: client, ptr: 0, cookie: 0 } as never;
    // Desc 0: a ref to the first context manager's node.
    dev.contextManager = mgrA;
    expect(client.refFor(mgrA).desc).toBe(0);
    // A new context manager: its node gets the next free desc, desc 0 keeps naming the old one.
    const mgrB = { proc: client, ptr: 0, cookie: 1 } as never;
    dev.contextManager = mgrB;
    expect(client.refFor(mgrB).desc).toBe(1);
    expect(client.refsByDesc.get(0)!.node).toBe(mgrA);
    expect(client.refsByDesc.get(1)!.node).toBe(mgrB);
  });

  for (const [design, keeps] of [['eager', true], ['fault', false]] as [DesignName, boolean][]) {
    it(`after user space moves its binder mapping, reclaim ${keeps ? 'leaves the moved copy of a page mapped (eager: by design, refcounted)' : 'unmaps the moved copy too (fault)'}`, () => {
      const k = new Kernel({ cpus: 2, memoryBytes: 32 << 20 });
      const dev = new BinderDevice(k, { design: { design } });
      const DEST = 0x40000000;
      let ready = false;
      let moved = false;
      let frame = -1;
      k.spawn(function* mgr(u: User) {
        const fd = yield* u.open('/dev/binder');
        setNonblock(u, fd);
        const map = yield* u.mmap(0, 128 * 1024, PROT_READ, MAP_PRIVATE, fd, 0);
        yield* u.ioctl(fd, BINDER_SET_CONTEXT_MGR, 0);
        const s = yield* u.mmap(0, SCRATCH_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
        yield* writeRead(u, fd, s, cmdWord(BC_ENTER_LOOPER), 0);
        ready = true;
        for (;;) {
          let got = null;
          try {
            got = (yield* writeRead(u, fd, s, null, 256)).find((r) => r.tr);
          } catch {
            yield* u.sleep(100_000);
          }
          if (!got) continue;
          yield* u.read(got.tr!.buffer, got.tr!.data_size); // mapped in every design now
          yield* writeRead(u, fd, s, cmdFree(got.tr!.buffer), 0); // page 0 goes to the LRU
          frame = dev.procOf(u.pid)!.alloc.pages[0]!;
          // Move the first page of the mapping (with its PTE) elsewhere.
          yield* u.mremap(map, 4096, 4096, MREMAP_MAYMOVE | MREMAP_FIXED, DEST);
          moved = true;
          // Reclaim everything on the LRU.
          yield* u.call('shrink', function* () {
            return yield* dev.shrink(1000);
          });
          break;
        }
        for (;;) yield* u.sleep(10_000_000);
      });
      k.spawn(function* client(u: User) {
        while (!ready) yield* u.sleep(100_000);
        const fd = yield* u.open('/dev/binder');
        yield* u.mmap(0, 128 * 1024, PROT_READ, MAP_PRIVATE, fd, 0);
        const s = yield* u.mmap(0, SCRATCH_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
        yield* u.write(s + PAYLOAD_AT, payload(1, 100));
        yield* writeRead(u, fd, s, cmdTransaction(BC_TRANSACTION, { target: 0, cookie: 0, code: 1, flags: TF_ONE_WAY, sender_pid: 0, sender_euid: 0, data_size: 100, offsets_size: 0, buffer: s + PAYLOAD_AT, offsets: s + PAYLOAD_AT + 104 }), 0);
        for (;;) yield* u.sleep(10_000_000);
      });
      k.run({ untilCycles: 300_000_000 });
      expect(moved).toBe(true);
      const alloc = [...dev.procs].find((p) => dev.contextManager?.proc === p)!.alloc;
      expect(alloc.pages[0]).toBe(-1); // binder gave the page up
      const ptep = k.pt.pte_offset(alloc.mm!, DEST);
      const present = ptep >= 0 && (k.pt.lo(ptep) & 1) === 1;
      expect(present).toBe(keeps);
      if (keeps) {
        // The moved PTE still maps the old frame, which its own reference keeps allocated.
        expect(ptePfn(k.pt.lo(ptep), k.pt.hi(ptep))).toBe(frame);
        expect(k.pages.refcount[frame]).toBe(1);
      }
      expect(check_vm_invariants(k).problems).toEqual([]);
      expect(binder_check_device(dev)).toEqual([]);
      expect(k.reports.reports.map((r) => r.title)).toEqual([]);
    });
  }
});
