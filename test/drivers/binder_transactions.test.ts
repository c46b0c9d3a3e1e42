// Binder transaction and mmap semantics, for every page-mapping design: synchronous round trips,
// oneway ordering and the async half, oneway spam detection, BC_FREE_BUFFER errors, TF_CLEAR_BUF,
// dead receivers, the one-shot read-only mapping, fork and partial munmap, and the payload being
// copied through the kernel's page array rather than the receiver's mapping. The rules are those
// of shared/reference/binder.md (§1, §4, §9) and drivers/android/binder.c.
//
// The processes speak the raw ABI (a BINDER_WRITE_READ per step, commands and returns encoded in
// their own user memory) so each test sees every return code, in order.
import { describe, expect, it } from 'vitest';
import type { Kernel } from '../../kernel/kernel.ts';
import type { KGen } from '../../kernel/sched/core.ts';
import type { User } from '../../kernel/uapi.ts';
import { MAP_ANONYMOUS, MAP_NORESERVE, MAP_PRIVATE, PROT_READ, PROT_WRITE } from '../../kernel/mm/mmap.ts';
import { VM_DONTCOPY, VM_MAYWRITE, VM_WRITE } from '../../kernel/mm/mm_types.ts';
import { check_vm_invariants } from '../../kernel/mm/debug_vm.ts';
import { _PAGE_PRESENT } from '../../kernel/arch/x86/pgtable.ts';
import { BinderDevice, type BinderProc } from '../../drivers/android/binder/binder.ts';
import { DESIGNS, type DesignName } from '../../drivers/android/binder/page_mapping.ts';
import { PAGE_SIZE, SZ_4M } from '../../drivers/android/binder/binder_alloc.ts';
import { faultState } from '../../drivers/android/binder/fault.ts';
import {
  BC_ENTER_LOOPER, BC_FREE_BUFFER, BC_REPLY, BC_TRANSACTION, BINDER_ENABLE_ONEWAY_SPAM_DETECTION, BINDER_SET_CONTEXT_MGR, BINDER_WRITE_READ, BR_NAMES,
  BR_TRANSACTION, BR_REPLY, BTD_SIZE, BWR_SIZE, TF_CLEAR_BUF, TF_ONE_WAY, decodeBwr, decodeTransactionData, encodeBwr, encodeTransactionData, type TransactionData,
} from '../../drivers/android/binder/uapi.ts';
import { boot, errno, signalOf } from '../kernel/util.ts';

// ---- a raw binder client ---------------------------------------------------------------------

interface Ret {
  name: string;
  tr?: TransactionData;
}

const SCRATCH = 256 * 1024;
const WRITE_AT = 64;
const READ_AT = 8192;
const PAYLOAD_AT = 16384;
const SLOT = 16384;

/** One thread's view of /dev/binder: the fd, the binder mapping, a scratch area for the ABI. */
class Raw {
  private slot = 0;
  private constructor(
    readonly u: User,
    readonly fd: number,
    readonly map: number,
    readonly mapSize: number,
    readonly scratch: number,
  ) {}

  static *open(u: User, opts: { vmSize?: number; mgr?: boolean; spam?: boolean } = {}): KGen<Raw> {
    const fd = yield* u.open('/dev/binder');
    const size = opts.vmSize ?? 128 * 1024;
    const map = yield* u.mmap(0, size, PROT_READ, MAP_PRIVATE | MAP_NORESERVE, fd, 0);
    const scratch = yield* u.mmap(0, SCRATCH, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
    if (opts.mgr) yield* u.ioctl(fd, BINDER_SET_CONTEXT_MGR, 0);
    if (opts.spam) yield* u.ioctl(fd, BINDER_ENABLE_ONEWAY_SPAM_DETECTION, 1);
    return new Raw(u, fd, map, size, scratch);
  }

  static cmd32(cmd: number): Uint8Array {
    const b = new Uint8Array(4);
    new DataView(b.buffer).setUint32(0, cmd, true);
    return b;
  }

  static free(ptr: number): Uint8Array {
    const b = new Uint8Array(12);
    const v = new DataView(b.buffer);
    v.setUint32(0, BC_FREE_BUFFER, true);
    v.setBigUint64(4, BigInt(ptr), true);
    return b;
  }

  /** BC_TRANSACTION / BC_REPLY with `data` placed in this thread's memory. */
  *tx(handle: number, code: number, data: Uint8Array, flags = 0, reply = false): KGen<Uint8Array> {
    const at = this.scratch + PAYLOAD_AT + (this.slot++ % 14) * SLOT;
    if (data.length > SLOT) throw new RangeError('payload too large for a slot');
    if (data.length) yield* this.u.write(at, data);
    const c = new Uint8Array(4 + BTD_SIZE);
    new DataView(c.buffer).setUint32(0, reply ? BC_REPLY : BC_TRANSACTION, true);
    encodeTransactionData({ target: handle, cookie: 0, code, flags, sender_pid: 0, sender_euid: 0, data_size: data.length, offsets_size: 0, buffer: at, offsets: at + data.length }, c, 4);
    return c;
  }

  /** One BINDER_WRITE_READ: write `cmds`, then (if `read`) block for returns. BR_NOOP is dropped. */
  *wr(cmds: Uint8Array[], read = true): KGen<Ret[]> {
    const u = this.u;
    const len = cmds.reduce((a, c) => a + c.length, 0);
    const w = new Uint8Array(len);
    let p = 0;
    for (const c of cmds) {
      w.set(c, p);
      p += c.length;
    }
    if (len) yield* u.write(this.scratch + WRITE_AT, w);
    yield* u.write(this.scratch, encodeBwr({ write_size: len, write_consumed: 0, write_buffer: this.scratch + WRITE_AT, read_size: read ? 4096 : 0, read_consumed: 0, read_buffer: this.scratch + READ_AT }));
    yield* u.ioctl(this.fd, BINDER_WRITE_READ, this.scratch);
    const bwr = decodeBwr(yield* u.read(this.scratch, BWR_SIZE));
    if (bwr.write_consumed !== len) throw new Error(`write_consumed ${bwr.write_consumed} of ${len}`);
    const out: Ret[] = [];
    if (!bwr.read_consumed) return out;
    const r = yield* u.read(this.scratch + READ_AT, bwr.read_consumed);
    const v = new DataView(r.buffer, r.byteOffset, r.length);
    for (let q = 0; q + 4 <= r.length; ) {
      const cmd = v.getUint32(q, true);
      const n = (cmd >>> 16) & 0x3fff;
      const name = BR_NAMES[cmd] ?? `0x${cmd.toString(16)}`;
      if (name !== 'BR_NOOP') out.push(cmd === BR_TRANSACTION || cmd === BR_REPLY ? { name, tr: decodeTransactionData(r, q + 4) } : { name });
      q += 4 + n;
    }
    return out;
  }

  /** Read returns until one named in `until` arrives; all returns seen, in order. */
  *readUntil(...until: string[]): KGen<Ret[]> {
    const seen: Ret[] = [];
    for (let i = 0; i < 100; i++) {
      const r = yield* this.wr([]);
      seen.push(...r);
      if (r.some((x) => until.includes(x.name))) return seen;
    }
    throw new Error(`no ${until.join('/')} after 100 reads: ${seen.map((x) => x.name).join(',')}`);
  }

  *enterLooper(): KGen {
    yield* this.wr([Raw.cmd32(BC_ENTER_LOOPER)], false);
  }
}

const names = (r: Ret[]): string[] => r.map((x) => x.name);

function pattern(n: number, seed: number): Uint8Array {
  const b = new Uint8Array(n);
  let x = seed * 2654435761;
  for (let i = 0; i < n; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    b[i] = (x >>> 16) & 0xff || 1;
  }
  return b;
}

// ---- running several processes ------------------------------------------------------------------

type Body = (u: User) => KGen<void | number>;

/** Boot a kernel with the binder device on `design`, run the programs to the end, rethrow failures. */
function world(design: DesignName, make: (dev: BinderDevice, k: Kernel) => Record<string, Body>, opts: { expectReports?: boolean } = {}): { k: Kernel; dev: BinderDevice } {
  const k = boot({ memoryBytes: 64 << 20 });
  const dev = new BinderDevice(k, { design: { design } });
  const programs = make(dev, k);
  const failures: unknown[] = [];
  const done = new Set<string>();
  for (const [name, body] of Object.entries(programs)) {
    k.spawn(
      function* (u: User) {
        try {
          const r = yield* body(u);
          done.add(name);
          return r;
        } catch (e) {
          failures.push(e);
          done.add(name);
          return 99;
        }
      },
      { comm: name },
    );
  }
  const r = k.run({ maxSteps: 5_000_000 });
  if (failures.length) throw failures[0];
  if (done.size !== Object.keys(programs).length) throw new Error(`programs did not finish (${r.reason}): ${Object.keys(programs).filter((n) => !done.has(n)).join(', ')}`);
  if (!opts.expectReports) expect(k.reports.reports.map((x) => `${x.kind}: ${x.title}`)).toEqual([]);
  expect(check_vm_invariants(k).problems).toEqual([]);
  return { k, dev };
}

/** Poll until `cond` holds (virtual time passes; other processes run). */
function* waitFor(u: User, cond: () => boolean, what: string): KGen {
  for (let i = 0; i < 10_000; i++) {
    if (cond()) return;
    yield* u.sleep(20_000);
  }
  throw new Error(`timed out waiting for ${what}`);
}

function procOf(dev: BinderDevice, pid: number): BinderProc {
  const p = dev.procOf(pid);
  if (!p) throw new Error(`no binder proc for ${pid}`);
  return p;
}

/** Is a present PTE mapping `va` in the current process? */
function ptePresent(k: Kernel, u: User, va: number): boolean {
  const ptep = k.pt.pte_offset(u.task.mm!, va);
  return ptep >= 0 && (k.pt.lo(ptep) & _PAGE_PRESENT) !== 0;
}

const EAGER_PTE = new Set<DesignName>(['eager', 'eager-writelock']);

// ================================================================================================

for (const design of DESIGNS) {
  describe(`binder transactions (${design})`, () => {
    it('synchronous round trip: payload intact both ways, BR_TRANSACTION_COMPLETE before BR_REPLY', () => {
      const request = pattern(6000, 1); // spans two pages of the receiver's buffer
      const answer = pattern(5000, 2);
      let serverSaw: TransactionData | null = null;
      let serverData: Uint8Array = new Uint8Array(0);
      let clientSeq: string[] = [];
      let replyData: Uint8Array = new Uint8Array(0);
      let clientPid = 0;
      let mgrReady = false;
      const { dev } = world(design, (dev) => ({
        *server(u) {
          const b = yield* Raw.open(u, { mgr: true });
          mgrReady = true;
          yield* b.enterLooper();
          const r = yield* b.readUntil('BR_TRANSACTION');
          const tr = r.find((x) => x.name === 'BR_TRANSACTION')!.tr!;
          serverSaw = tr;
          serverData = yield* u.read(tr.buffer, tr.data_size);
          const rep = yield* b.tx(0, 0, answer, 0, true);
          const after = yield* b.wr([rep, Raw.free(tr.buffer)]);
          expect(names(after)).toEqual(['BR_TRANSACTION_COMPLETE']);
          expect(procOf(dev, u.pid).alloc.allocated.size).toBe(0);
        },
        *client(u) {
          clientPid = u.pid;
          yield* waitFor(u, () => mgrReady, 'the context manager');
          const b = yield* Raw.open(u);
          const r = yield* b.wr([yield* b.tx(0, 0x42, request)]);
          const seen = [...r, ...(r.some((x) => x.name === 'BR_REPLY') ? [] : yield* b.readUntil('BR_REPLY'))];
          clientSeq = names(seen);
          const tr = seen.find((x) => x.name === 'BR_REPLY')!.tr!;
          expect(tr.buffer).toBeGreaterThanOrEqual(b.map);
          expect(tr.buffer + tr.data_size).toBeLessThanOrEqual(b.map + b.mapSize);
          replyData = yield* u.read(tr.buffer, tr.data_size);
          yield* b.wr([Raw.free(tr.buffer)], false);
          expect(procOf(dev, u.pid).alloc.allocated.size).toBe(0);
        },
      }));
      expect(clientSeq).toEqual(['BR_TRANSACTION_COMPLETE', 'BR_REPLY']);
      expect(serverSaw!.code).toBe(0x42);
      expect(serverSaw!.sender_pid).toBe(clientPid);
      expect(serverSaw!.data_size).toBe(request.length);
      expect(serverData).toEqual(request);
      expect(replyData).toEqual(answer);
      expect(dev.stats.userErrors).toBe(0);
    });

    it('the payload is copied through the kernel page array, not the receiver mapping', () => {
      const payload = pattern(3 * PAGE_SIZE + 100, 3);
      let mgrReady = false;
      let sent = false;
      let checked = false;
      world(design, (dev, k) => ({
        *server(u) {
          const b = yield* Raw.open(u, { mgr: true });
          mgrReady = true;
          yield* waitFor(u, () => sent, 'the transaction');
          // The sender has copied the payload and the buffer is queued; nothing delivered yet.
          const proc = procOf(dev, u.pid);
          const [buf] = [...proc.alloc.allocated.values()];
          expect(buf).toBeDefined();
          const first = Math.floor((buf!.user_data - b.map) / PAGE_SIZE);
          const last = Math.floor((buf!.user_data + payload.length - 1 - b.map) / PAGE_SIZE);
          for (let i = first; i <= last; i++) {
            expect(proc.alloc.pages[i]).toBeGreaterThanOrEqual(0);
            // Only the eager designs map at allocation; for the others no PTE existed when the copy happened.
            expect(ptePresent(k, u, b.map + i * PAGE_SIZE)).toBe(EAGER_PTE.has(design));
          }
          // The kernel sees the data through its pages.
          expect(proc.alloc.copy_from_buffer(buf!, 0, payload.length)).toEqual(payload);
          const faultsBefore = design === 'fault' || design === 'pfnmap' ? faultState(proc.alloc).counters.faults : 0;
          yield* b.enterLooper();
          const r = yield* b.readUntil('BR_TRANSACTION');
          const tr = r.find((x) => x.name === 'BR_TRANSACTION')!.tr!;
          expect(tr.buffer).toBe(buf!.user_data);
          if (design === 'eager-deferred') for (let i = first; i <= last; i++) expect(ptePresent(k, u, b.map + i * PAGE_SIZE)).toBe(true);
          expect(yield* u.read(tr.buffer, tr.data_size)).toEqual(payload);
          if (design === 'fault' || design === 'pfnmap') expect(faultState(proc.alloc).counters.faults - faultsBefore).toBe(last - first + 1);
          yield* b.wr([Raw.free(tr.buffer)], false);
          checked = true;
        },
        *client(u) {
          yield* waitFor(u, () => mgrReady, 'the context manager');
          const b = yield* Raw.open(u);
          const r = yield* b.wr([yield* b.tx(0, 1, payload, TF_ONE_WAY)]);
          expect(names(r)).toEqual(['BR_TRANSACTION_COMPLETE']);
          sent = true;
        },
      }));
      expect(checked).toBe(true);
    });

    it('oneway: one at a time per node, the rest wait in async_todo with their buffers allocated', () => {
      const N = 5;
      const got: number[] = [];
      let mgrReady = false;
      let sent = false;
      world(design, (dev) => ({
        *server(u) {
          const b = yield* Raw.open(u, { mgr: true });
          mgrReady = true;
          yield* waitFor(u, () => sent, 'the oneway transactions');
          const proc = procOf(dev, u.pid);
          const node = dev.contextManager!;
          // Every queued transaction already holds its buffer in the receiver.
          expect(proc.alloc.allocated.size).toBe(N);
          expect(node.async_todo.length).toBe(N - 1);
          expect(proc.todo.length).toBe(1);
          yield* b.enterLooper();
          for (let i = 0; i < N; i++) {
            const r = yield* b.readUntil('BR_TRANSACTION');
            const tr = r.find((x) => x.name === 'BR_TRANSACTION')!.tr!;
            expect(tr.flags & TF_ONE_WAY).toBe(TF_ONE_WAY);
            expect(yield* u.read(tr.buffer, tr.data_size)).toEqual(pattern(300 + tr.code, tr.code));
            got.push(tr.code);
            // The next one is not delivered until this buffer is freed.
            expect(proc.todo.length).toBe(0);
            expect(node.async_todo.length).toBe(N - 1 - i);
            expect(proc.alloc.allocated.size).toBe(N - i);
            yield* b.wr([Raw.free(tr.buffer)], false);
            expect(proc.alloc.allocated.size).toBe(N - i - 1);
          }
          expect(node.has_async_transaction).toBe(false);
        },
        *client(u) {
          yield* waitFor(u, () => mgrReady, 'the context manager');
          const b = yield* Raw.open(u);
          for (let i = 1; i <= N; i++) expect(names(yield* b.wr([yield* b.tx(0, i, pattern(300 + i, i), TF_ONE_WAY)]))).toEqual(['BR_TRANSACTION_COMPLETE']);
          sent = true;
        },
      }));
      expect(got).toEqual([1, 2, 3, 4, 5]);
    });

    it('async space: oneway sends fail with BR_FAILED_REPLY once the async half is used up', () => {
      const SIZE = 128 * 1024;
      const PAY = 8000;
      // Each oneway buffer takes ALIGN(8000, 8) bytes of the buffer_size / 2 async budget.
      const fits = Math.floor(SIZE / 2 / PAY);
      let mgrReady = false;
      let phase = 0;
      const results: string[][] = [];
      world(design, (dev) => ({
        *server(u) {
          const b = yield* Raw.open(u, { mgr: true, vmSize: SIZE });
          mgrReady = true;
          yield* waitFor(u, () => phase === 1, 'the flood');
          const alloc = procOf(dev, u.pid).alloc;
          expect(alloc.free_async_space).toBe(SIZE / 2 - fits * PAY);
          expect(alloc.stats.failures.ENOSPC).toBe(1);
          // Free the first one: its space returns and one more fits.
          yield* b.enterLooper();
          const r = yield* b.readUntil('BR_TRANSACTION');
          yield* b.wr([Raw.free(r.find((x) => x.name === 'BR_TRANSACTION')!.tr!.buffer)], false);
          expect(alloc.free_async_space).toBe(SIZE / 2 - (fits - 1) * PAY);
          phase = 2;
          yield* waitFor(u, () => phase === 3, 'the last send');
        },
        *client(u) {
          yield* waitFor(u, () => mgrReady, 'the context manager');
          const b = yield* Raw.open(u);
          for (let i = 0; i <= fits; i++) results.push(names(yield* b.wr([yield* b.tx(0, i, pattern(PAY, i), TF_ONE_WAY)])));
          phase = 1;
          yield* waitFor(u, () => phase === 2, 'a free');
          results.push(names(yield* b.wr([yield* b.tx(0, 99, pattern(PAY, 99), TF_ONE_WAY)])));
          results.push(names(yield* b.wr([yield* b.tx(0, 100, pattern(PAY, 100), TF_ONE_WAY)])));
          phase = 3;
        },
      }));
      expect(results.slice(0, fits).every((r) => r.length === 1 && r[0] === 'BR_TRANSACTION_COMPLETE')).toBe(true);
      expect(results[fits]).toEqual(['BR_FAILED_REPLY']);
      expect(results[fits + 1]).toEqual(['BR_TRANSACTION_COMPLETE']);
      expect(results[fits + 2]).toEqual(['BR_FAILED_REPLY']);
    });

    it('oneway spam: BR_ONEWAY_SPAM_SUSPECT once the sender holds most of the async space, then not again', () => {
      const SIZE = 128 * 1024;
      const PAY = 4000;
      // binder.md §4: after allocating, if free_async_space < buffer_size / 10 and this sender's
      // async buffers number more than 50 or exceed buffer_size / 4 bytes, flag it (once). As in
      // Linux, the buffer being allocated is not counted yet (its pid is set after the check), so
      // the sender's earlier n - 1 buffers are what counts.
      let expectedAt = -1;
      for (let n = 1, free = SIZE / 2; free >= PAY; n++) {
        free -= PAY;
        if (free < SIZE / 10 && (n - 1 > 50 || (n - 1) * PAY > SIZE / 4)) {
          expectedAt = n - 1;
          break;
        }
      }
      expect(expectedAt).toBeGreaterThan(0);
      let mgrReady = false;
      const seen: string[] = [];
      const seenQuiet: string[] = [];
      world(design, () => ({
        *server(u) {
          yield* Raw.open(u, { mgr: true, vmSize: SIZE });
          mgrReady = true;
          yield* u.sleep(50_000_000);
        },
        *spammer(u) {
          yield* waitFor(u, () => mgrReady, 'the context manager');
          const b = yield* Raw.open(u, { spam: true });
          for (let i = 0; i <= expectedAt + 2; i++) seen.push(...names(yield* b.wr([yield* b.tx(0, i, pattern(PAY, i), TF_ONE_WAY)])));
        },
      }));
      expect(seen.indexOf('BR_ONEWAY_SPAM_SUSPECT')).toBe(expectedAt);
      expect(seen.filter((x) => x === 'BR_ONEWAY_SPAM_SUSPECT').length).toBe(1);
      expect(seen.filter((x) => x === 'BR_TRANSACTION_COMPLETE').length).toBe(expectedAt + 2);
      // Without BINDER_ENABLE_ONEWAY_SPAM_DETECTION the sender only sees BR_TRANSACTION_COMPLETE.
      mgrReady = false;
      world(design, () => ({
        *server(u) {
          yield* Raw.open(u, { mgr: true, vmSize: SIZE });
          mgrReady = true;
          yield* u.sleep(50_000_000);
        },
        *quiet(u) {
          yield* waitFor(u, () => mgrReady, 'the context manager');
          const b = yield* Raw.open(u);
          for (let i = 0; i <= expectedAt + 2; i++) seenQuiet.push(...names(yield* b.wr([yield* b.tx(0, i, pattern(PAY, i), TF_ONE_WAY)])));
        },
      }));
      expect(seenQuiet).toEqual(new Array(expectedAt + 3).fill('BR_TRANSACTION_COMPLETE'));
    });

    it('BC_FREE_BUFFER of an unknown pointer or twice: a user error, nothing else changes', () => {
      let mgrReady = false;
      let sent = false;
      const { dev } = world(design, (dev) => ({
        *server(u) {
          const b = yield* Raw.open(u, { mgr: true });
          mgrReady = true;
          yield* waitFor(u, () => sent, 'the transactions');
          const alloc = procOf(dev, u.pid).alloc;
          yield* b.enterLooper();
          const r = yield* b.readUntil('BR_TRANSACTION');
          const tr = r.find((x) => x.name === 'BR_TRANSACTION')!.tr!;
          // The second oneway buffer is allocated but not delivered yet.
          const queued = [...alloc.allocated.values()].find((x) => x.user_data !== tr.buffer)!;
          const snap = () => ({ allocated: [...alloc.allocated.keys()].sort(), frees: alloc.stats.frees, async: alloc.free_async_space, buffers: alloc.buffers().length, lru: alloc.lru.count });
          const before = snap();
          const errors0 = dev.stats.userErrors;
          // Unknown pointers (inside the mapping but not a buffer start, and outside it), then a buffer not yet returned.
          yield* b.wr([Raw.free(tr.buffer + 8), Raw.free(b.map + b.mapSize + 4096), Raw.free(queued.user_data)], false);
          expect(dev.stats.userErrors - errors0).toBe(3);
          expect(snap()).toEqual(before);
          expect(dev.log.slice(-3).map((m) => m.replace(/u[0-9a-f]{16}/, 'u…'))).toEqual([
            expect.stringContaining('BC_FREE_BUFFER u… no match'),
            expect.stringContaining('BC_FREE_BUFFER u… no match'),
            expect.stringContaining('BC_FREE_BUFFER u… matched unreturned or currently freeing buffer'),
          ]);
          // The real free, then the same pointer again in the same command stream.
          yield* b.wr([Raw.free(tr.buffer), Raw.free(tr.buffer)], false);
          expect(dev.stats.userErrors - errors0).toBe(4);
          expect(dev.log.at(-1)).toContain('no match');
          expect(alloc.stats.frees).toBe(before.frees + 1);
          // The command stream went on: the queued transaction is delivered and can be freed.
          const r2 = yield* b.readUntil('BR_TRANSACTION');
          const tr2 = r2.find((x) => x.name === 'BR_TRANSACTION')!.tr!;
          expect(tr2.buffer).toBe(queued.user_data);
          yield* b.wr([Raw.free(tr2.buffer)], false);
          expect(alloc.allocated.size).toBe(0);
          expect(alloc.free_async_space).toBe(alloc.buffer_size / 2);
          expect(alloc.buffers().length).toBe(1);
        },
        *client(u) {
          yield* waitFor(u, () => mgrReady, 'the context manager');
          const b = yield* Raw.open(u);
          yield* b.wr([yield* b.tx(0, 1, pattern(100, 1), TF_ONE_WAY)]);
          yield* b.wr([yield* b.tx(0, 2, pattern(100, 2), TF_ONE_WAY)]);
          sent = true;
        },
      }));
      expect(dev.stats.userErrors).toBe(4);
    });

    it('TF_CLEAR_BUF: the buffer is zeroed when freed (and only then, and only with the flag)', () => {
      const data = pattern(6000, 7);
      let mgrReady = false;
      let sent = false;
      const after: Record<string, { kernel: Uint8Array; user: Uint8Array; beforeFree: Uint8Array }> = {};
      world(design, (dev, k) => ({
        *server(u) {
          const b = yield* Raw.open(u, { mgr: true });
          mgrReady = true;
          yield* waitFor(u, () => sent, 'the transactions');
          const alloc = procOf(dev, u.pid).alloc;
          yield* b.enterLooper();
          for (let i = 0; i < 2; i++) {
            const r = yield* b.readUntil('BR_TRANSACTION');
            const tr = r.find((x) => x.name === 'BR_TRANSACTION')!.tr!;
            const label = tr.flags & TF_CLEAR_BUF ? 'clear' : 'keep';
            const beforeFree = yield* u.read(tr.buffer, tr.data_size);
            yield* b.wr([Raw.free(tr.buffer)], false);
            // The pages stay (on the LRU): read them through the kernel's page array and through the mapping.
            const kernel = new Uint8Array(tr.data_size);
            for (let off = 0; off < tr.data_size; ) {
              const a = tr.buffer + off;
              const n = Math.min(tr.data_size - off, PAGE_SIZE - (a % PAGE_SIZE));
              const pfn = alloc.pages[Math.floor((a - b.map) / PAGE_SIZE)]!;
              expect(pfn).toBeGreaterThanOrEqual(0);
              kernel.set(k.machine.phys.u8.subarray(pfn * PAGE_SIZE + (a % PAGE_SIZE), pfn * PAGE_SIZE + (a % PAGE_SIZE) + n), off);
              off += n;
            }
            after[label] = { kernel, user: yield* u.read(tr.buffer, tr.data_size), beforeFree };
          }
        },
        *client(u) {
          yield* waitFor(u, () => mgrReady, 'the context manager');
          const b = yield* Raw.open(u);
          yield* b.wr([yield* b.tx(0, 1, data, TF_ONE_WAY | TF_CLEAR_BUF)]);
          yield* b.wr([yield* b.tx(0, 2, data, TF_ONE_WAY)]);
          sent = true;
        },
      }));
      expect(after.clear!.beforeFree).toEqual(data);
      expect(after.clear!.kernel).toEqual(new Uint8Array(data.length));
      expect(after.clear!.user).toEqual(new Uint8Array(data.length));
      expect(after.keep!.beforeFree).toEqual(data);
      expect(after.keep!.kernel).toEqual(data);
      expect(after.keep!.user).toEqual(data);
    });

    it('dead receiver: BR_DEAD_REPLY to the sender, before and during the transaction', () => {
      let mgrReady = false;
      let serverGone = false;
      let got = false;
      const seen: string[][] = [];
      const { dev } = world(design, () => ({
        *server(u) {
          const b = yield* Raw.open(u, { mgr: true });
          mgrReady = true;
          yield* b.enterLooper();
          yield* b.readUntil('BR_TRANSACTION');
          got = true;
          // Exits without replying: its binder file is released.
        },
        *client(u) {
          yield* waitFor(u, () => mgrReady, 'the context manager');
          const b = yield* Raw.open(u);
          const r = yield* b.wr([yield* b.tx(0, 1, pattern(64, 1))]);
          seen.push(names(r.some((x) => x.name === 'BR_DEAD_REPLY') ? r : [...r, ...(yield* b.readUntil('BR_DEAD_REPLY', 'BR_REPLY'))]));
          serverGone = true;
        },
        *late(u) {
          const b = yield* Raw.open(u);
          yield* waitFor(u, () => serverGone && got, 'the server to die');
          // The node's process is gone (the context manager too): the send fails dead.
          seen.push(names(yield* b.wr([yield* b.tx(0, 2, pattern(64, 2))])));
        },
      }));
      expect(seen[0]).toEqual(['BR_TRANSACTION_COMPLETE', 'BR_DEAD_REPLY']);
      expect(seen[1]).toEqual(['BR_DEAD_REPLY']);
      expect(dev.stats.deadReplies).toBe(2);
    });

    it('a target whose process died after the sender got its handle: BR_DEAD_REPLY, its buffers and pages freed', () => {
      let mgrReady = false;
      let serverPid = 0;
      let dead = false;
      let alloc: import('../../drivers/android/binder/binder_alloc.ts').BinderAlloc | null = null;
      const seen: string[][] = [];
      const { dev } = world(design, (dev) => ({
        *server(u) {
          const b = yield* Raw.open(u, { mgr: true });
          serverPid = u.pid;
          alloc = procOf(dev, u.pid).alloc;
          mgrReady = true;
          yield* b.enterLooper();
          // Receive a oneway buffer and keep it: the proc dies holding it.
          yield* b.readUntil('BR_TRANSACTION');
          expect(procOf(dev, u.pid).alloc.allocated.size).toBe(1);
        },
        *client(u) {
          yield* waitFor(u, () => mgrReady, 'the context manager');
          const b = yield* Raw.open(u);
          seen.push(names(yield* b.wr([yield* b.tx(0, 1, pattern(5000, 1), TF_ONE_WAY)])));
          yield* waitFor(u, () => serverPid !== 0 && !dev.procOf(serverPid), 'the server to die');
          dead = true;
          seen.push(names(yield* b.wr([yield* b.tx(0, 2, pattern(64, 2), TF_ONE_WAY)])));
        },
      }));
      expect(dead).toBe(true);
      expect(seen).toEqual([['BR_TRANSACTION_COMPLETE'], ['BR_DEAD_REPLY']]);
      // Deferred release freed every page of the dead process: nothing of it is left on the LRU.
      expect([...dev.procs].some((p) => p.pid === serverPid)).toBe(false);
      const a = alloc as import('../../drivers/android/binder/binder_alloc.ts').BinderAlloc | null;
      expect(a!.allocated.size).toBe(0);
      expect([...a!.pages].every((p) => p < 0)).toBe(true);
      expect(a!.lru.countOf(a!)).toBe(0);
      expect(a!.mm).toBeNull();
    });
  });

  describe(`binder mmap (${design})`, () => {
    it('one mapping per open file, ever: a second mmap is EBUSY, also after munmap', () => {
      world(design, () => ({
        *p(u) {
          const fd = yield* u.open('/dev/binder');
          const a = yield* u.mmap(0, 64 * 1024, PROT_READ, MAP_PRIVATE | MAP_NORESERVE, fd, 0);
          expect(yield* errno(u.mmap(0, 64 * 1024, PROT_READ, MAP_PRIVATE | MAP_NORESERVE, fd, 0))).toBe('EBUSY');
          yield* u.munmap(a, 64 * 1024);
          expect(yield* errno(u.mmap(0, 64 * 1024, PROT_READ, MAP_PRIVATE | MAP_NORESERVE, fd, 0))).toBe('EBUSY');
          expect(u.task.mm!.vmas().some((v) => v.vm_file !== null)).toBe(false);
          // Another open file of the same process maps fine.
          const fd2 = yield* u.open('/dev/binder');
          expect(yield* errno(u.mmap(0, 64 * 1024, PROT_READ, MAP_PRIVATE | MAP_NORESERVE, fd2, 0))).toBe('OK');
        },
      }));
    });

    it('writable mmap is EPERM; the read-only mapping has VM_MAYWRITE cleared, so mprotect(PROT_WRITE) fails', () => {
      world(design, () => ({
        *p(u) {
          const fd = yield* u.open('/dev/binder');
          expect(yield* errno(u.mmap(0, 64 * 1024, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE, fd, 0))).toBe('EPERM');
          expect(yield* errno(u.mmap(0, 64 * 1024, PROT_READ | PROT_WRITE, 0x01 /* MAP_SHARED */, fd, 0))).toBe('EPERM');
          // The refused mmap did not use up the file's one mapping.
          const a = yield* u.mmap(0, 64 * 1024, PROT_READ, MAP_PRIVATE | MAP_NORESERVE, fd, 0);
          const vma = u.task.mm!.vma_lookup(a)!;
          expect(vma.vm_flags & VM_MAYWRITE).toBe(0);
          expect(vma.vm_flags & VM_WRITE).toBe(0);
          expect(vma.vm_flags & VM_DONTCOPY).toBe(VM_DONTCOPY);
          expect(yield* errno(u.mprotect(a, 64 * 1024, PROT_READ | PROT_WRITE))).toBe('EACCES');
          expect(yield* errno(u.mprotect(a, 4096, PROT_READ | PROT_WRITE))).toBe('EACCES');
          expect(u.task.mm!.vma_lookup(a)!.vm_flags & VM_WRITE).toBe(0);
        },
      }));
    });

    it('a mapping larger than 4 MiB: only the first 4 MiB are used, the rest is SIGBUS', () => {
      const { dev } = world(design, (dev) => ({
        *p(u) {
          const fd = yield* u.open('/dev/binder');
          const a = yield* u.mmap(0, 8 << 20, PROT_READ, MAP_PRIVATE | MAP_NORESERVE, fd, 0);
          const alloc = procOf(dev, u.pid).alloc;
          expect(alloc.buffer_size).toBe(SZ_4M);
          expect(alloc.pages.length).toBe(SZ_4M / PAGE_SIZE);
          expect(alloc.free_async_space).toBe(SZ_4M / 2);
          expect(alloc.buffers().map((b) => alloc.bufferSize(b))).toEqual([SZ_4M]);
          // Linux keeps the VMA as mapped (45d02f79b539): touching past 4 MiB finds no page.
          const vma = u.task.mm!.vma_lookup(a)!;
          expect(vma.vm_end - vma.vm_start).toBe(8 << 20);
          const sig = yield* signalOf(u.read(a + SZ_4M + 4096, 4));
          expect(sig.signo).toBe(7); // SIGBUS
        },
      }));
      expect(dev.stats.userErrors).toBe(0);
    });

    it("mmap from another process's mm is EINVAL", () => {
      let childResult = '';
      world(design, () => ({
        *parent(u) {
          const fd = yield* u.open('/dev/binder');
          const child = yield* u.fork(function* (c: User) {
            childResult = yield* errno(c.mmap(0, 64 * 1024, PROT_READ, MAP_PRIVATE | MAP_NORESERVE, fd, 0));
          });
          yield* u.wait(child);
          // The opener itself still maps it.
          expect(yield* errno(u.mmap(0, 64 * 1024, PROT_READ, MAP_PRIVATE | MAP_NORESERVE, fd, 0))).toBe('OK');
        },
      }));
      expect(childResult).toBe('EINVAL');
    });

    it('fork: the child has no binder mapping (VM_DONTCOPY)', () => {
      let childSaw = '';
      let childVmas = -1;
      world(design, () => ({
        *parent(u) {
          const b = yield* Raw.open(u, { mgr: true });
          const anon = yield* u.mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
          yield* u.write(anon, new Uint8Array([1, 2, 3]));
          const child = yield* u.fork(function* (c: User) {
            childVmas = c.task.mm!.vmas().filter((v) => v.vm_start <= b.map && b.map < v.vm_end).length;
            expect(yield* c.read(anon, 3)).toEqual(new Uint8Array([1, 2, 3]));
            const sig = yield* signalOf(c.read(b.map, 4));
            childSaw = `signal ${sig.signo}`;
          });
          yield* u.wait(child);
          expect(u.task.mm!.vma_lookup(b.map)).not.toBeNull();
        },
      }));
      expect(childVmas).toBe(0);
      expect(childSaw).toBe('signal 11'); // SIGSEGV: nothing mapped there
    });

    it('partial munmap of the binder VMA disables allocation: the next transaction gets BR_DEAD_REPLY', () => {
      let mgrReady = false;
      let unmapped = false;
      const seen: string[][] = [];
      const { dev } = world(design, (dev) => ({
        *server(u) {
          const b = yield* Raw.open(u, { mgr: true });
          mgrReady = true;
          yield* waitFor(u, () => seen.length === 1, 'a first transaction');
          yield* b.enterLooper();
          const r = yield* b.readUntil('BR_TRANSACTION');
          yield* b.wr([Raw.free(r.find((x) => x.name === 'BR_TRANSACTION')!.tr!.buffer)], false);
          // Unmap only the last page of the mapping: ->close runs for that piece.
          yield* u.munmap(b.map + b.mapSize - 4096, 4096);
          const alloc = procOf(dev, u.pid).alloc;
          expect(alloc.mapped).toBe(false);
          expect(u.task.mm!.vma_lookup(b.map)).not.toBeNull();
          unmapped = true;
          yield* waitFor(u, () => seen.length === 2, 'the second transaction');
          expect(alloc.stats.failures.ESRCH).toBe(1);
          expect(alloc.allocated.size).toBe(0);
        },
        *client(u) {
          yield* waitFor(u, () => mgrReady, 'the context manager');
          const b = yield* Raw.open(u);
          seen.push(names(yield* b.wr([yield* b.tx(0, 1, pattern(64, 1), TF_ONE_WAY)])));
          yield* waitFor(u, () => unmapped, 'the munmap');
          seen.push(names(yield* b.wr([yield* b.tx(0, 2, pattern(64, 2), TF_ONE_WAY)])));
        },
      }));
      expect(seen).toEqual([['BR_TRANSACTION_COMPLETE'], ['BR_DEAD_REPLY']]);
      expect(dev.stats.deadReplies).toBe(1);
    });
  });
}
