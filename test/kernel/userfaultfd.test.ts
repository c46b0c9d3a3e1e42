// userfaultfd (fs/userfaultfd.c, mm/userfaultfd.c), MISSING mode: the API handshake, which VMAs
// may be registered, delivery of a missing fault to a handler thread and its resolution by
// UFFDIO_COPY / UFFDIO_ZEROPAGE, release waking the waiters, fork, GUP without retry, and the
// review's warning about VM_MIXEDMAP appearing on a registered VMA.
import { describe, expect, it } from 'vitest';
import { errno, runProgram } from './util.ts';
import { MAP_ANONYMOUS, MAP_PRIVATE, MAP_SHARED, PROT_READ, PROT_WRITE } from '../../kernel/mm/mmap.ts';
import type { User } from '../../kernel/uapi.ts';
import {
  UFFDIO_API, UFFDIO_COPY, UFFDIO_REGISTER, UFFDIO_REGISTER_MODE_MISSING, UFFDIO_UNREGISTER, UFFDIO_ZEROPAGE, UFFD_API, UFFD_EVENT_PAGEFAULT,
  UFFD_PAGEFAULT_FLAG_WRITE, UFFD_FEATURE_THREAD_ID, parseUffdMsg,
} from '../../kernel/fs/userfaultfd.ts';
import { VM_MIXEDMAP, VM_UFFD_MISSING } from '../../kernel/mm/mm_types.ts';
import { assert_vm_invariants } from '../../kernel/mm/debug_vm.ts';
import { PageRefs } from '../../kernel/mm/page_ref.ts';
import { get_user_pages_remote } from '../../kernel/mm/gup.ts';
import { vm_insert_page } from '../../kernel/mm/memory.ts';
import { GFP_KERNEL } from '../../kernel/mm/page_alloc.ts';
import { fakeDevice } from './fake-devices.ts';



function* openUffd(u: User, features = 0): Generator<any, number, any> {
  const fd = yield* u.userfaultfd();
  const api = { api: UFFD_API, features, ioctls: 0 };
  yield* u.ioctl(fd, UFFDIO_API, api);
  return fd;
}

describe('userfaultfd API', () => {
  it('requires UFFDIO_API first, refuses a wrong API number and unknown flags', () => {
    runProgram(function* (u) {
      expect(yield* errno(u.userfaultfd(0x40))).toBe('EINVAL');
      const fd = yield* u.userfaultfd();
      expect(yield* errno(u.ioctl(fd, UFFDIO_REGISTER, { range: { start: 0x100000, len: 4096 }, mode: 1 }))).toBe('EINVAL');
      expect(yield* errno(u.readFd(fd, 32))).toBe('EINVAL');
      expect(yield* errno(u.ioctl(fd, UFFDIO_API, { api: 0xab, features: 0 }))).toBe('EINVAL');
      const api = { api: UFFD_API, features: 0, ioctls: 0 };
      yield* u.ioctl(fd, UFFDIO_API, api);
      expect(api.ioctls).not.toBe(0);
      expect(yield* errno(u.ioctl(fd, UFFDIO_API, { api: UFFD_API, features: 0 }))).toBe('EINVAL'); // only once
    });
  });

  it('registers anonymous memory (splitting at the range ends) and refuses driver, foreign and misaligned ranges', () => {
    runProgram(function* (u, k) {
      fakeDevice(k, '/dev/pfn', 1, 'pfnmap');
      fakeDevice(k, '/dev/mixed', 1, 'insert-in-mmap');
      const fd = yield* openUffd(u);
      const a = yield* u.mmap(0, 4 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
      const reg = { range: { start: a + 4096, len: 2 * 4096 }, mode: UFFDIO_REGISTER_MODE_MISSING, ioctls: 0 };
      yield* u.ioctl(fd, UFFDIO_REGISTER, reg);
      expect(reg.ioctls).not.toBe(0);
      const vmas = u.task.mm!.vmasIn(a, a + 4 * 4096);
      expect(vmas.map((v) => [v.vm_start - a, v.vm_end - a, (v.vm_flags & VM_UFFD_MISSING) !== 0])).toEqual([
        [0, 4096, false],
        [4096, 3 * 4096, true],
        [3 * 4096, 4 * 4096, false],
      ]);
      expect(yield* errno(u.ioctl(fd, UFFDIO_REGISTER, { range: { start: a + 1, len: 4096 }, mode: UFFDIO_REGISTER_MODE_MISSING }))).toBe('EINVAL');
      expect(yield* errno(u.ioctl(fd, UFFDIO_REGISTER, { range: { start: a, len: 4096 }, mode: 0 }))).toBe('EINVAL');
      for (const dev of ['/dev/pfn', '/dev/mixed']) {
        const dfd = yield* u.open(dev);
        const m = yield* u.mmap(0, 4096, PROT_READ, MAP_SHARED, dfd);
        expect(yield* errno(u.ioctl(fd, UFFDIO_REGISTER, { range: { start: m, len: 4096 }, mode: UFFDIO_REGISTER_MODE_MISSING }))).toBe('EINVAL');
      }
      const other = yield* openUffd(u);
      expect(yield* errno(u.ioctl(other, UFFDIO_REGISTER, { range: { start: a + 4096, len: 4096 }, mode: UFFDIO_REGISTER_MODE_MISSING }))).toBe('EBUSY');
      yield* u.ioctl(fd, UFFDIO_UNREGISTER, { start: a + 4096, len: 2 * 4096 });
      expect(u.task.mm!.vmasIn(a, a + 4 * 4096).some((v) => v.vm_flags & VM_UFFD_MISSING || v.vm_userfaultfd_ctx)).toBe(false);
      assert_vm_invariants(k);
    });
  });
});

describe('missing faults', () => {
  it('delivers a fault to the handler thread and resumes the faulting thread after UFFDIO_COPY', () => {
    runProgram(function* (u, k) {
      const fd = yield* openUffd(u, UFFD_FEATURE_THREAD_ID);
      const a = yield* u.mmap(0, 2 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
      const src = yield* u.mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
      yield* u.write(src, new TextEncoder().encode('filled by the handler'));
      yield* u.ioctl(fd, UFFDIO_REGISTER, { range: { start: a, len: 2 * 4096 }, mode: UFFDIO_REGISTER_MODE_MISSING });
      let seen = '';
      let faulterTid = 0;
      const faulter = yield* u.clone(function* (t: User) {
        faulterTid = t.tid;
        const b = yield* t.read(a + 4096 + 7, 14);
        seen = new TextDecoder().decode(b);
      });
      // The handler: read the message, fill the page.
      const msg = parseUffdMsg(yield* u.readFd(fd, 32));
      expect(msg.event).toBe(UFFD_EVENT_PAGEFAULT);
      expect(msg.address).toBe(a + 4096); // page aligned without UFFD_FEATURE_EXACT_ADDRESS
      expect(msg.flags & UFFD_PAGEFAULT_FLAG_WRITE).toBe(0);
      expect(msg.ptid).toBe(faulter);
      expect(seen).toBe(''); // still blocked
      const copy = { dst: msg.address, src, len: 4096, mode: 0, copy: 0 };
      yield* u.ioctl(fd, UFFDIO_COPY, copy);
      expect(copy.copy).toBe(4096);
      while (seen === '') yield* u.sleep(10_000);
      expect(seen).toBe('by the handler');
      expect(faulterTid).toBe(faulter);
      // Copying onto a present page: EEXIST, reported in the copy field too.
      const again = { dst: msg.address, src, len: 4096, mode: 0, copy: 0 };
      expect(yield* errno(u.ioctl(fd, UFFDIO_COPY, again))).toBe('EEXIST');
      expect(again.copy).toBe(-17);
      assert_vm_invariants(k);
    });
  });

  it('UFFDIO_ZEROPAGE resolves a write fault with the zero page; the retried write breaks copy-on-write', () => {
    runProgram(function* (u, k) {
      const fd = yield* openUffd(u);
      const a = yield* u.mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
      yield* u.ioctl(fd, UFFDIO_REGISTER, { range: { start: a, len: 4096 }, mode: UFFDIO_REGISTER_MODE_MISSING });
      let done = false;
      yield* u.clone(function* (t: User) {
        yield* t.store32(a, 0x1234);
        done = true;
      });
      const msg = parseUffdMsg(yield* u.readFd(fd, 32));
      expect(msg.flags & UFFD_PAGEFAULT_FLAG_WRITE).toBe(UFFD_PAGEFAULT_FLAG_WRITE);
      const z = { range: { start: a, len: 4096 }, mode: 0, zeropage: 0 };
      yield* u.ioctl(fd, UFFDIO_ZEROPAGE, z);
      expect(z.zeropage).toBe(4096);
      while (!done) yield* u.sleep(10_000);
      expect(yield* u.load32(a)).toBe(0x1234);
      assert_vm_invariants(k);
    });
  });

  it('closing the userfaultfd wakes waiting faults, which then fault normally', () => {
    runProgram(function* (u) {
      const fd = yield* openUffd(u);
      const a = yield* u.mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
      yield* u.ioctl(fd, UFFDIO_REGISTER, { range: { start: a, len: 4096 }, mode: UFFDIO_REGISTER_MODE_MISSING });
      let v = -1;
      yield* u.clone(function* (t: User) {
        v = yield* t.load32(a);
      });
      yield* u.sleep(200_000);
      expect(v).toBe(-1);
      yield* u.close(fd);
      while (v === -1) yield* u.sleep(10_000);
      expect(v).toBe(0);
    });
  });

  it('a fork child is not registered; GUP without FOLL_UNLOCKABLE gets -EFAULT (SIGBUS from handle_userfault)', () => {
    runProgram(function* (u, k) {
      const fd = yield* openUffd(u);
      const a = yield* u.mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
      yield* u.ioctl(fd, UFFDIO_REGISTER, { range: { start: a, len: 4096 }, mode: UFFDIO_REGISTER_MODE_MISSING });
      let childValue = -1;
      const child = yield* u.fork(function* (c: User) {
        childValue = yield* c.load32(a);
      });
      yield* u.wait(child);
      expect(childValue).toBe(0);
      const mm = u.task.mm!;
      const [n] = yield* u.call('gup', function* (kk) {
        yield* kk.locks.mmap_read_lock(mm, 'test');
        const r = yield* get_user_pages_remote(kk, mm, a, 1, 0, new PageRefs(kk, 'test'), []);
        kk.locks.mmap_read_unlock(mm);
        return [r];
      });
      expect(n).toBe(-14);
      void fd;
    });
  });
});

describe('the review contract', () => {
  it('vm_insert_page setting VM_MIXEDMAP on a registered anonymous VMA is reported', () => {
    const k = runProgram(function* (u, k) {
      const fd = yield* openUffd(u);
      const a = yield* u.mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
      yield* u.ioctl(fd, UFFDIO_REGISTER, { range: { start: a, len: 4096 }, mode: UFFDIO_REGISTER_MODE_MISSING });
      const mm = u.task.mm!;
      const pfn = k.pages.allocPages(GFP_KERNEL, 0, 'test driver page');
      const refs = new PageRefs(k, 'driver');
      refs.noteGet(pfn);
      yield* u.call('insert', function* (kk) {
        yield* kk.locks.mmap_write_lock(mm, 'test');
        const vma = mm.vma_lookup(a)!;
        const r = vm_insert_page(kk, vma, a, pfn, 'binder_install_single_page');
        kk.locks.mmap_write_unlock(mm);
        expect(r).toBe(0);
        expect(vma.vm_flags & VM_MIXEDMAP).toBe(VM_MIXEDMAP);
        return 0;
      });
      yield* u.munmap(a, 4096);
      refs.dropGet(pfn);
      k.pages.putPage(pfn, 'test');
    });
    const w = k.reports.reports.find((r) => r.title === 'WARNING: VM_MIXEDMAP set on a VMA in use');
    expect(w?.text).toMatch(/userfaultfd context/);
    expect(w?.text).toMatch(/binder_install_single_page/);
  });
});
