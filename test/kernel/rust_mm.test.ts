// The typed API mirroring rust/kernel/mm.rs and rust/kernel/mm/virt.rs: handles (Mm,
// MmWithUser, MmWithUserAsync), guards (MmapReadGuard, VmaReadGuard), VMA views (VmaRef,
// VmaMixedMap, VmaNew), and the run-time lifetime checks standing in for the borrow checker.
import { describe, expect, it } from 'vitest';
import { Kernel } from '../../kernel/kernel.ts';
import { errno, runProgram } from './util.ts';
import { MAP_ANONYMOUS, MAP_PRIVATE, MAP_SHARED, PROT_EXEC, PROT_NONE, PROT_READ, PROT_WRITE } from '../../kernel/mm/mmap.ts';
import type { User } from '../../kernel/uapi.ts';
import { Mm, MmWithUser, type MmWithUserAsync } from '../../kernel/rust/mm.ts';
import { VmaNew } from '../../kernel/rust/mm/virt.ts';
import { Page } from '../../kernel/rust/page.ts';
import { borrowCounters } from '../../kernel/rust/borrow.ts';
import { File, Inode, type FileOperations } from '../../kernel/fs/file.ts';
import { VM_DONTCOPY, VM_DONTDUMP, VM_DONTEXPAND, VM_EXEC, VM_IO, VM_MAYEXEC, VM_MAYREAD, VM_MAYWRITE, VM_MIXEDMAP, VM_READ, VM_WRITE, vmFlagNames, type VmArea } from '../../kernel/mm/mm_types.ts';
import { assert_vm_invariants } from '../../kernel/mm/debug_vm.ts';
import type { MmStruct } from '../../kernel/mm/mm_types.ts';



const titles = (k: Kernel): string[] => k.reports.reports.map((r) => r.title);

describe('handles', () => {
  it('Mm keeps the struct, MmWithUser the address space; mmget_not_zero fails once the last user is gone', () => {
    const k = new Kernel({ cpus: 1, memoryBytes: 64 << 20 });
    let mm: MmStruct | null = null;
    let held: Mm | null = null;
    k.spawn(function* (u: User) {
      mm = u.task.mm;
      held = new Mm(k, mm!);
      const user = held.mmget_not_zero();
      expect(user).toBeInstanceOf(MmWithUser);
      expect(mm!.mm_users).toBe(2);
      yield* user!.drop();
      expect(mm!.mm_users).toBe(1);
    });
    k.run();
    expect(mm!.mm_users).toBe(0);
    expect(mm!.dead).toBe(true);
    expect(k.mms.has(mm!)).toBe(true); // still grabbed
    expect(held!.mmget_not_zero()).toBeNull();
    held!.drop();
    expect(k.mms.has(mm!)).toBe(false);
    held!.drop();
    expect(titles(k)).toEqual(['BUG: Mm released twice']);
  });

  it('MmWithUserAsync puts the last reference from a workqueue', () => {
    const k = new Kernel({ cpus: 1, memoryBytes: 64 << 20 });
    let asyncRef: MmWithUserAsync | null = null;
    let mm: MmStruct | null = null;
    k.spawn(function* (u: User) {
      mm = u.task.mm;
      const h = new Mm(k, mm!);
      asyncRef = h.mmget_not_zero()!.into_mmput_async();
      h.drop();
    });
    k.run();
    expect(mm!.dead).toBe(false); // the async reference keeps it
    k.kthread('binder_deferred', function* () {
      asyncRef!.drop_async();
    });
    k.run();
    expect(mm!.dead).toBe(true);
  });
});

describe('guards and VMA views', () => {
  it('lock_vma_under_rcu gives a VmaRef that ends with its guard; a later use is a BUG naming the call site, and is refused', () => {
    const k = runProgram(function* (u, k) {
      const a = yield* u.mmap(0, 3 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
      const user = new Mm(k, u.task.mm!).mmget_not_zero()!;
      const g = user.lock_vma_under_rcu(a + 4096)!;
      expect(g).not.toBeNull();
      const vma = g.vma;
      expect([vma.start(), vma.end()]).toEqual([a, a + 3 * 4096]);
      expect(vma.flags() & 3).toBe(3);
      expect(vma.as_mixedmap_vma()).toBeNull();
      g.unlock();
      expect(vma.start()).toBe(0); // refused
      g.unlock();
      yield* user.drop();
    });
    const bug = k.reports.reports.find((r) => r.title.startsWith('BUG: VmaRef (from lock_vma_under_rcu) used after its lifetime ended'));
    expect(bug?.text).toMatch(/VmaRef::start called at test\/kernel\/rust_mm\.test\.ts:\d+/);
    expect(bug?.data.ended).toMatch(/rust_mm\.test\.ts/);
    expect(titles(k)).toContain('BUG: VmaReadGuard released twice');
    expect(borrowCounters(k).useAfterEnd).toBe(1);
  });

  it('vma_lookup finds only a VMA that contains the address; the view ends with the mmap read guard', () => {
    const k = runProgram(function* (u, k) {
      const a = yield* u.mmap(0, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS);
      const user = new Mm(k, u.task.mm!).mmget_not_zero()!;
      const g = (yield* user.mmap_read_lock())!;
      expect(g.vma_lookup(a + 4096)).toBeNull();
      const v = g.vma_lookup(a)!;
      expect(v.end()).toBe(a + 4096);
      g.unlock();
      expect(v.flags()).toBe(0);
      yield* user.drop();
    });
    expect(titles(k)).toEqual(['BUG: VmaRef (from MmapReadGuard::vma_lookup) used after its lifetime ended (VmaRef::flags)']);
  });

  it('mmap_read_trylock fails while a writer holds the lock; lock_vma_under_rcu fails on a write-locked VMA', () => {
    runProgram(function* (u, k) {
      const a = yield* u.mmap(0, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS);
      const mm = u.task.mm!;
      const user = new Mm(k, mm).mmget_not_zero()!;
      yield* k.locks.mmap_write_lock(mm, 'test');
      const vma = mm.vma_lookup(a)!;
      yield* k.locks.vma_start_write(vma, 'test');
      let results: [unknown, unknown] = [undefined, undefined];
      const other = yield* u.clone(function* () {
        results = [user.mmap_read_trylock(), user.lock_vma_under_rcu(a)];
      });
      while (results[0] === undefined) yield* u.sleep(10_000);
      expect(results).toEqual([null, null]);
      k.locks.mmap_write_unlock(mm);
      void other;
      yield* user.drop();
    }, { cpus: 2 });
  });

  it('zap_page_range_single bounds-checks silently, as the Rust wrapper does', () => {
    const k = runProgram(function* (u, k) {
      const a = yield* u.mmap(0, 2 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
      yield* u.store32(a, 1);
      yield* u.store32(a + 4096, 2);
      const user = new Mm(k, u.task.mm!).mmget_not_zero()!;
      const g = user.lock_vma_under_rcu(a)!;
      yield* g.vma.zap_page_range_single(a + 4096, 2 * 4096); // runs past the end: ignored
      yield* g.vma.zap_page_range_single(a - 4096, 4096); // below the start: ignored
      yield* g.vma.zap_page_range_single(a + 4096, Number.MAX_SAFE_INTEGER); // overflow: ignored
      expect(borrowCounters(k).silentZapSkips).toBe(3);
      expect(u.task.mm!.rss.anon).toBe(2);
      yield* g.vma.zap_page_range_single(a + 4096, 4096);
      expect(u.task.mm!.rss.anon).toBe(1);
      g.unlock();
      expect(yield* u.load32(a + 4096)).toBe(0); // refaulted as a fresh zero page
      yield* user.drop();
    });
    expect(k.reports.reports).toEqual([]);
  });
});

describe('VmaNew and VmaMixedMap', () => {
  function device(k: Kernel, hook: (v: VmaNew, raw: VmArea) => number, keep?: (v: VmaNew) => void): void {
    const fops: FileOperations = {
      name: 'rustdev',
      mmap(_f: File, raw: VmArea): number {
        const v = VmaNew.fromMmapHook(k, raw);
        keep?.(v);
        return hook(v, raw);
      },
    };
    k.devices.set('/dev/rustdev', { open: () => new File(k, new Inode(k, 'chr', [10, 61]), fops, '/dev/rustdev') });
  }

  it('sets flags inside ->mmap; try_clear_maywrite refuses a writable mapping and makes mprotect(PROT_WRITE) fail afterwards', () => {
    runProgram(function* (u, k) {
      let page: Page | null = null;
      device(k, (v) => {
        if (v.writable()) return v.try_clear_maywrite();
        expect(v.try_clear_maywrite()).toBe(0);
        v.set_dontcopy();
        v.set_io();
        const mixed = v.set_mixedmap()!;
        page = Page.alloc_page(k)!;
        page.write(0, new TextEncoder().encode('from the driver'));
        return mixed.vm_insert_page(v.start(), page);
      });
      const fd = yield* u.open('/dev/rustdev');
      expect(yield* errno(u.mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd))).toBe('EINVAL');
      const a = yield* u.mmap(0, 4096, PROT_READ, MAP_SHARED, fd);
      const vma = u.task.mm!.vma_lookup(a)!;
      expect(vma.vm_flags & (VM_MIXEDMAP | VM_DONTCOPY | VM_IO)).toBe(VM_MIXEDMAP | VM_DONTCOPY | VM_IO);
      expect(vma.vm_flags & VM_MAYWRITE).toBe(0);
      expect(new TextDecoder().decode(yield* u.read(a, 15))).toBe('from the driver');
      expect(yield* errno(u.mprotect(a, 4096, PROT_READ | PROT_WRITE))).toBe('EACCES');
      assert_vm_invariants(k);
      yield* u.munmap(a, 4096);
      page!.drop();
      expect(k.reports.reports).toEqual([]);
    });
  });

  const setters: [keyof VmaNew & `set_${string}`, number][] = [
    ['set_io', VM_IO],
    ['set_dontexpand', VM_DONTEXPAND],
    ['set_dontcopy', VM_DONTCOPY],
    ['set_dontdump', VM_DONTDUMP],
    ['set_mixedmap', VM_MIXEDMAP],
  ];
  for (const [setter, flag] of setters) {
    it(`${setter} sets exactly ${vmFlagNames(flag)} on the new VMA`, () => {
      runProgram(function* (u, k) {
        let before = 0;
        device(k, (v, raw) => {
          before = raw.vm_flags;
          (v[setter] as () => unknown).call(v);
          return 0;
        });
        const fd = yield* u.open('/dev/rustdev');
        const a = yield* u.mmap(0, 4096, PROT_READ, MAP_SHARED, fd);
        expect(u.task.mm!.vma_lookup(a)!.vm_flags ^ before).toBe(flag);
        expect(k.reports.reports).toEqual([]);
      });
    });
  }

  const clears: ['try_clear_mayread' | 'try_clear_maywrite' | 'try_clear_mayexec', number, number, number][] = [
    ['try_clear_mayread', PROT_READ, VM_READ, VM_MAYREAD],
    ['try_clear_maywrite', PROT_READ | PROT_WRITE, VM_WRITE, VM_MAYWRITE],
    ['try_clear_mayexec', PROT_READ | PROT_EXEC, VM_EXEC, VM_MAYEXEC],
  ];
  for (const [method, prot, perm, may] of clears) {
    it(`${method}: -EINVAL (flags untouched) while ${vmFlagNames(perm)} is set; clears ${vmFlagNames(may)} otherwise`, () => {
      runProgram(function* (u, k) {
        const seen: [number, number, number][] = [];
        device(k, (v, raw) => {
          const f0 = raw.vm_flags;
          const r = v[method]();
          seen.push([r, f0, raw.vm_flags]);
          return 0;
        });
        const fd = yield* u.open('/dev/rustdev');
        yield* u.mmap(0, 4096, prot, MAP_SHARED, fd);
        const other = perm === VM_READ ? PROT_NONE : PROT_READ;
        yield* u.mmap(0, 4096, other, MAP_SHARED, fd);
        expect(seen[0]![0]).toBe(-22);
        expect(seen[0]![2]).toBe(seen[0]![1]);
        expect(seen[1]![0]).toBe(0);
        expect(seen[1]![1] & may).toBe(may);
        expect(seen[1]![1] ^ seen[1]![2]).toBe(may);
        expect(k.reports.reports).toEqual([]);
      });
    });
  }

  it('a VmaNew kept after ->mmap returned is refused and reported', () => {
    let kept: VmaNew | null = null;
    const k = runProgram(function* (u, k) {
      device(k, () => 0, (v) => (kept = v));
      const fd = yield* u.open('/dev/rustdev');
      yield* u.mmap(0, 4096, PROT_READ, MAP_SHARED, fd);
      expect(kept!.set_mixedmap()).toBeNull();
    });
    const r = k.reports.reports.find((x) => x.title === 'BUG: VmaNew used after its lifetime ended (VmaNew::set_mixedmap)');
    expect(r?.data.ended).toBe('the return of ->mmap');
  });

  it('as_mixedmap_vma + vm_insert_page under the VMA read lock is the legal fault-time context: no report', () => {
    const k = runProgram(function* (u, k) {
      device(k, (v) => (v.set_mixedmap() ? 0 : -22));
      const fd = yield* u.open('/dev/rustdev');
      const a = yield* u.mmap(0, 2 * 4096, PROT_READ, MAP_SHARED, fd);
      const user = new Mm(k, u.task.mm!).mmget_not_zero()!;
      const page = Page.alloc_page(k)!;
      const g = user.lock_vma_under_rcu(a)!;
      const mixed = g.vma.as_mixedmap_vma()!;
      expect(mixed.vm_insert_page(a + 4096, page)).toBe(0);
      expect(mixed.vm_insert_page(a + 4096, page)).toBe(-16); // EBUSY
      g.unlock();
      expect(mixed.vm_insert_page(a, page)).toBe(-22); // after the guard: refused
      yield* user.drop();
      yield* u.munmap(a, 2 * 4096);
      page.drop();
    });
    expect(titles(k)).toEqual(['BUG: VmaRef (from lock_vma_under_rcu) used after its lifetime ended (VmaMixedMap::vm_insert_page)']);
  });

  it('a Page used after drop is reported', () => {
    const k = runProgram(function* (_u, k) {
      const p = Page.alloc_page(k)!;
      p.drop();
      expect(p.read(0, 4).length).toBe(0);
    });
    expect(titles(k)).toEqual(['BUG: Page used after drop (Page::read)']);
  });
});
