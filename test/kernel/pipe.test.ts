// Pipes and vmsplice (fs/pipe.c, fs/splice.c): byte-stream semantics (EOF, EPIPE, EAGAIN,
// blocking across processes), and the page-lifetime hazard: a vmspliced page outlives its
// mapping while the pipe holds it, is read with its current contents, and is never handed out
// again until the pipe lets go; a PFN map cannot be vmspliced at all.
import { describe, expect, it } from 'vitest';
import { Kernel } from '../../kernel/kernel.ts';
import { errno, runProgram } from './util.ts';
import { MAP_ANONYMOUS, MAP_PRIVATE, MAP_SHARED, PROT_READ, PROT_WRITE } from '../../kernel/mm/mmap.ts';
import type { User } from '../../kernel/uapi.ts';
import { assert_vm_invariants } from '../../kernel/mm/debug_vm.ts';
import { O_NONBLOCK, PIPE_DEF_BUFFERS, SPLICE_F_NONBLOCK } from '../../kernel/fs/pipe.ts';
import { ptePfn } from '../../kernel/arch/x86/pgtable.ts';
import { fakeDevice } from './fake-devices.ts';

const text = (b: Uint8Array): string => new TextDecoder().decode(b);
const bytes = (s: string): Uint8Array => new TextEncoder().encode(s);



describe('pipe byte stream', () => {
  it('delivers bytes in order, then EOF once the writer is closed', () => {
    runProgram(function* (u) {
      const [r, w] = yield* u.pipe();
      expect(yield* u.writeFd(w, bytes('hello '))).toBe(6);
      expect(yield* u.writeFd(w, bytes('world'))).toBe(5);
      expect(text(yield* u.readFd(r, 3))).toBe('hel');
      expect(text(yield* u.readFd(r, 100))).toBe('lo world');
      yield* u.close(w);
      expect((yield* u.readFd(r, 10)).length).toBe(0);
    });
  });

  it('EPIPE without readers, EAGAIN on an empty non-blocking pipe, EBADF on the wrong end', () => {
    runProgram(function* (u) {
      const [r, w] = yield* u.pipe(O_NONBLOCK);
      expect(yield* errno(u.readFd(r, 1))).toBe('EAGAIN');
      expect(yield* errno(u.readFd(w, 1))).toBe('EBADF');
      expect(yield* errno(u.writeFd(r, bytes('x')))).toBe('EBADF');
      yield* u.close(r);
      expect(yield* errno(u.writeFd(w, bytes('x')))).toBe('EPIPE');
      expect(yield* errno(u.pipe(0x1234))).toBe('EINVAL');
    });
  });

  it('a blocked reader in another process is woken by the writer', () => {
    runProgram(function* (u) {
      const [r, w] = yield* u.pipe();
      let got = '';
      const child = yield* u.fork(function* (c: User) {
        yield* c.close(w);
        got = text(yield* c.readFd(r, 64));
      });
      yield* u.sleep(200_000); // the child blocks first
      yield* u.writeFd(w, bytes('ping'));
      yield* u.wait(child);
      expect(got).toBe('ping');
    });
  });

  it('a full pipe blocks the writer until the reader drains it', () => {
    runProgram(function* (u) {
      const [r, w] = yield* u.pipe();
      const big = new Uint8Array(PIPE_DEF_BUFFERS * 4096 + 100).fill(0x41);
      let wrote = 0;
      const child = yield* u.fork(function* (c: User) {
        wrote = yield* c.writeFd(w, big);
      });
      yield* u.sleep(500_000);
      expect(wrote).toBe(0); // still blocked: 16 pages are full
      let total = 0;
      while (total < big.length) total += (yield* u.readFd(r, 8192)).length;
      yield* u.wait(child);
      expect(wrote).toBe(big.length);
    });
  });
});

describe('vmsplice', () => {
  it('keeps an unmapped page alive and readable with its current contents, and never reuses it meanwhile', () => {
    runProgram(function* (u, k) {
      const [r, w] = yield* u.pipe();
      const a = yield* u.mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS);
      yield* u.write(a, bytes('secret v1'));
      const mm = u.task.mm!;
      const ptep = k.pt.pte_offset(mm, a);
      const pfn = ptePfn(k.pt.lo(ptep), k.pt.hi(ptep));
      expect(yield* u.vmsplice(w, [{ base: a, len: 9 }])).toBe(9);
      expect(k.pages.refcount[pfn]).toBe(3); // page cache, PTE, pipe buffer
      yield* u.write(a, bytes('secret v2')); // no copy was made: the pipe sees this
      yield* u.munmap(a, 4096);
      expect(k.pages.isFree(pfn)).toBe(false);
      // Memory pressure: many fresh pages; none of them may be the pipe's page.
      const big = yield* u.mmap(0, 512 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
      const seen = new Set<number>();
      for (let i = 0; i < 512; i++) {
        yield* u.store8(big + i * 4096, 1);
        const p = k.pt.pte_offset(mm, big + i * 4096);
        seen.add(ptePfn(k.pt.lo(p), k.pt.hi(p)));
      }
      expect(seen.has(pfn)).toBe(false);
      assert_vm_invariants(k);
      expect(text(yield* u.readFd(r, 64))).toBe('secret v2');
      // The pipe let go: that was the last reference.
      expect(k.pages.isFree(pfn)).toBe(true);
      expect(k.reports.count('KASAN')).toBe(0);
    });
  });

  it('fails with EFAULT on a PFN map (special PTEs, VM_PFNMAP) and queues nothing', () => {
    runProgram(function* (u, k) {
      const dev = fakeDevice(k, '/dev/pfn', 1, 'pfnmap');
      const fd = yield* u.open('/dev/pfn');
      const a = yield* u.mmap(0, 4096, PROT_READ, MAP_SHARED, fd);
      yield* u.load32(a);
      const [, w] = yield* u.pipe();
      expect(yield* errno(u.vmsplice(w, [{ base: a, len: 100 }]))).toBe('EFAULT');
      expect(k.pages.refcount[dev.pages[0]!]).toBe(1);
    });
  });

  it('succeeds on a vm_insert_page mapping, so the driver page outlives the driver freeing it', () => {
    runProgram(function* (u, k) {
      const dev = fakeDevice(k, '/dev/mixed', 1, 'insert-in-mmap');
      dev.fill(0, 0x5a);
      const fd = yield* u.open('/dev/mixed');
      const a = yield* u.mmap(0, 4096, PROT_READ, MAP_SHARED, fd);
      const [r, w] = yield* u.pipe();
      expect(yield* u.vmsplice(w, [{ base: a, len: 16 }])).toBe(16);
      yield* u.munmap(a, 4096);
      // The driver drops its own reference: the page must survive for the pipe.
      const pfn = dev.pages[0]!;
      dev.refs.dropGet(pfn);
      k.pages.putPage(pfn, 'driver free');
      expect(k.pages.isFree(pfn)).toBe(false);
      const data = yield* u.readFd(r, 16);
      expect([...data]).toEqual(new Array(16).fill(0x5a));
      expect(k.pages.isFree(pfn)).toBe(true);
    });
  });

  it('blocks on a full pipe, or returns EAGAIN with SPLICE_F_NONBLOCK', () => {
    runProgram(function* (u) {
      const [, w] = yield* u.pipe();
      const a = yield* u.mmap(0, (PIPE_DEF_BUFFERS + 1) * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
      yield* u.fill(a, (PIPE_DEF_BUFFERS + 1) * 4096, 1);
      const iov = Array.from({ length: PIPE_DEF_BUFFERS }, (_, i) => ({ base: a + i * 4096, len: 4096 }));
      expect(yield* u.vmsplice(w, iov)).toBe(PIPE_DEF_BUFFERS * 4096);
      expect(yield* errno(u.vmsplice(w, [{ base: a + PIPE_DEF_BUFFERS * 4096, len: 10 }], SPLICE_F_NONBLOCK))).toBe('EAGAIN');
      expect(yield* errno(u.vmsplice(w, [{ base: a, len: 10 }], 0x100))).toBe('EINVAL');
    });
  });

  it('closing both ends releases every buffer (no leaked frames)', () => {
    const k = new Kernel({ cpus: 1, memoryBytes: 64 << 20 });
    const base = k.pages.usedFrames;
    k.spawn(function* (u: User) {
      const [r, w] = yield* u.pipe();
      const a = yield* u.mmap(0, 3 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
      yield* u.fill(a, 3 * 4096, 7);
      yield* u.vmsplice(w, [{ base: a, len: 3 * 4096 }]);
      yield* u.writeFd(w, bytes('tail'));
      yield* u.close(r);
      yield* u.close(w);
    });
    k.run();
    expect(k.pages.usedFrames).toBe(base);
  });
});
