// mmap(2): argument checks and their errno in Linux's order (do_mmap, __get_unmapped_area),
// address selection (top down, hints, MAP_FIXED, MAP_FIXED_NOREPLACE), the VM_* flags a mapping
// gets (VM_ACCOUNT per accountable_mapping: never for hugetlb), MAP_POPULATE, MAP_LOCKED
// (VM_LOCKED, populated after the mmap lock is dropped, counted in locked_vm; cleared again on
// VM_SPECIAL and hugetlb VMAs by __mmap_complete), MAP_NORESERVE, MAP_SHARED vs MAP_PRIVATE
// anonymous memory, MAP_HUGETLB (2 MiB pages in PS=1 PDEs), MAP_SHARED_VALIDATE and unknown
// flags, map_count, and a file without ->mmap.
import { describe, expect, it } from 'vitest';
import {
  MAP_ANONYMOUS, MAP_FIXED, MAP_FIXED_NOREPLACE, MAP_GROWSDOWN, MAP_HUGETLB, MAP_LOCKED, MAP_NONBLOCK, MAP_NORESERVE, MAP_POPULATE, MAP_PRIVATE, MAP_SHARED,
  MAP_SHARED_VALIDATE, MAP_SYNC, PROT_EXEC, PROT_NONE, PROT_READ, PROT_WRITE,
} from '../../kernel/mm/mmap.ts';
import { MMAP_BASE, MMAP_MIN_ADDR, TASK_SIZE, VM_LOCKED, vmFlagNames } from '../../kernel/mm/mm_types.ts';
import { _PAGE_PRESENT, _PAGE_PSE, _PAGE_RW, _PAGE_SPECIAL } from '../../kernel/arch/x86/pgtable.ts';
import { show_smap, task_mem } from '../../kernel/fs/proc/task_mmu.ts';
import { MB2, PAGE, boot, errno, expectClean, fakeDevice, pfnAt, pteAt, ranges, run, signalOf, vmaList } from './util.ts';
import { fakeDevice as driverDevice } from './fake-devices.ts';

const RW = PROT_READ | PROT_WRITE;
const ANON = MAP_PRIVATE | MAP_ANONYMOUS;
/** A flag bit Linux does not define for mmap on x86-64. */
const MAP_UNKNOWN = 0x200000;

describe('mmap argument checks', () => {
  it('refuses a zero length with EINVAL, before anything else', () => {
    const k = boot();
    run(k, function* (u) {
      expect(yield* errno(u.mmap(0, 0, RW, ANON))).toBe('EINVAL');
      expect(yield* errno(u.mmap(0x10000001, 0, RW, ANON | MAP_FIXED))).toBe('EINVAL');
      expect(yield* errno(u.mmap(0, 0, RW, 0 /* no type */ | MAP_ANONYMOUS))).toBe('EINVAL');
      expect(u.task.mm!.map_count).toBe(0);
    });
    expectClean(k);
  });

  it('rounds the length up to whole pages', () => {
    const k = boot();
    run(k, function* (u) {
      const a = yield* u.mmap(0, 1, RW, ANON);
      const b = yield* u.mmap(0x20000000, PAGE + 1, RW, ANON);
      const mm = u.task.mm!;
      expect(mm.vma_lookup(a)!.vm_end - a).toBe(PAGE);
      expect(mm.vma_lookup(b)!.vm_end - b).toBe(2 * PAGE);
    });
    expectClean(k);
  });

  it('gives ENOMEM for a length no address space can hold', () => {
    const k = boot();
    run(k, function* (u) {
      expect(yield* errno(u.mmap(0, TASK_SIZE + PAGE, RW, ANON))).toBe('ENOMEM');
      expect(yield* errno(u.mmap(0, 2 ** 52, RW, ANON))).toBe('ENOMEM');
      expect(yield* errno(u.mmap(0, TASK_SIZE - MMAP_MIN_ADDR + PAGE, RW, ANON))).toBe('ENOMEM');
    });
    expectClean(k);
  });

  it('wants a page-aligned offset (EINVAL) and a valid fd for file mappings (EBADF)', () => {
    const k = boot();
    run(k, function* (u) {
      expect(yield* errno(u.mmap(0, PAGE, RW, ANON, -1, 100))).toBe('EINVAL');
      expect(yield* errno(u.mmap(0, PAGE, RW, MAP_PRIVATE, 7, 0))).toBe('EBADF');
      expect(yield* errno(u.mmap(0, PAGE, RW, MAP_SHARED, -1, 0))).toBe('EBADF');
      // An anonymous mapping ignores fd and any aligned offset.
      const a = yield* u.mmap(0, PAGE, RW, ANON, 7, 5 * PAGE);
      expect(u.task.mm!.vma_lookup(a)).not.toBeNull();
    });
    expectClean(k);
  });

  it('needs a mapping type: neither MAP_SHARED nor MAP_PRIVATE is EINVAL', () => {
    const k = boot();
    run(k, function* (u) {
      expect(yield* errno(u.mmap(0, PAGE, RW, MAP_ANONYMOUS))).toBe('EINVAL');
      expect(yield* errno(u.mmap(0, PAGE, RW, 0x0f | MAP_ANONYMOUS))).toBe('EINVAL');
    });
    expectClean(k);
  });

  it('MAP_FIXED: an unaligned address is EINVAL, one below mmap_min_addr EPERM, one past TASK_SIZE ENOMEM', () => {
    const k = boot();
    run(k, function* (u) {
      expect(yield* errno(u.mmap(0x10000800, PAGE, RW, ANON | MAP_FIXED))).toBe('EINVAL');
      expect(yield* errno(u.mmap(0x1000, PAGE, RW, ANON | MAP_FIXED))).toBe('EPERM');
      expect(yield* errno(u.mmap(0, PAGE, RW, ANON | MAP_FIXED))).toBe('EPERM');
      expect(yield* errno(u.mmap(TASK_SIZE, PAGE, RW, ANON | MAP_FIXED))).toBe('ENOMEM');
      expect(yield* errno(u.mmap(TASK_SIZE - PAGE, 2 * PAGE, RW, ANON | MAP_FIXED))).toBe('ENOMEM');
      // The last page below TASK_SIZE and the first at mmap_min_addr are fine.
      expect(yield* u.mmap(TASK_SIZE - PAGE, PAGE, RW, ANON | MAP_FIXED)).toBe(TASK_SIZE - PAGE);
      expect(yield* u.mmap(MMAP_MIN_ADDR, PAGE, RW, ANON | MAP_FIXED)).toBe(MMAP_MIN_ADDR);
      yield* u.store32(TASK_SIZE - 4, 0xfeed);
      expect(yield* u.load32(TASK_SIZE - 4)).toBe(0xfeed);
    });
    expectClean(k);
  });

  it('keeps the map_count limit as Linux does (refused once map_count exceeds max_map_count)', () => {
    const k = boot();
    k.vmaOps.max_map_count = 3;
    run(k, function* (u) {
      // Separate, unmergeable mappings (alternating protections, with gaps).
      for (let i = 0; i < 4; i++) yield* u.mmap(0x10000000 + i * 2 * PAGE, PAGE, i % 2 ? PROT_READ : RW, ANON | MAP_FIXED);
      expect(u.task.mm!.map_count).toBe(4);
      expect(yield* errno(u.mmap(0x20000000, PAGE, RW, ANON))).toBe('ENOMEM');
      expect(u.task.mm!.map_count).toBe(4);
    });
    expectClean(k);
  });
});

describe('mmap address selection', () => {
  it('allocates top down from mmap_base, and adjacent compatible mappings merge', () => {
    const k = boot();
    run(k, function* (u) {
      const a = yield* u.mmap(0, 2 * PAGE, RW, ANON);
      const b = yield* u.mmap(0, 3 * PAGE, RW, ANON);
      expect(a).toBe(MMAP_BASE - 2 * PAGE);
      expect(b).toBe(a - 3 * PAGE);
      expect(ranges(u.task.mm!)).toEqual([[b, a + 2 * PAGE]]);
      // A different protection does not merge.
      const c = yield* u.mmap(0, PAGE, PROT_READ, ANON);
      expect(c).toBe(b - PAGE);
      expect(ranges(u.task.mm!)).toEqual([[c, b], [b, a + 2 * PAGE]]);
    });
    expectClean(k);
  });

  it('uses a free hint as is, rounding an unaligned hint down to its page', () => {
    const k = boot();
    run(k, function* (u) {
      expect(yield* u.mmap(0x40000000, PAGE, RW, ANON)).toBe(0x40000000);
      // round_hint_to_min masks the hint with PAGE_MASK.
      expect(yield* u.mmap(0x50000123, PAGE, RW, ANON)).toBe(0x50000000);
    });
    expectClean(k);
  });

  it('raises a hint below mmap_min_addr to mmap_min_addr', () => {
    const k = boot();
    run(k, function* (u) {
      expect(yield* u.mmap(0x2000, PAGE, RW, ANON)).toBe(MMAP_MIN_ADDR);
    });
    expectClean(k);
  });

  it('ignores a hint that overlaps a mapping or does not fit below TASK_SIZE', () => {
    const k = boot();
    run(k, function* (u) {
      const a = yield* u.mmap(0x40000000, 4 * PAGE, RW, ANON);
      const b = yield* u.mmap(a + PAGE, PAGE, PROT_READ, ANON);
      expect(b).not.toBe(a + PAGE);
      expect(b === a || (b >= a && b < a + 4 * PAGE)).toBe(false);
      const c = yield* u.mmap(TASK_SIZE - PAGE, 2 * PAGE, RW, ANON);
      expect(c + 2 * PAGE).toBeLessThanOrEqual(MMAP_BASE);
      // The hinted mapping is untouched.
      expect(ranges(u.task.mm!).some(([s, e]) => s === a && e === a + 4 * PAGE)).toBe(true);
    });
    expectClean(k);
  });

  it('MAP_FIXED replaces what was there: old pages freed, VMAs split, new range reads zero', () => {
    const k = boot();
    const before = k.pages.usedFrames;
    run(k, function* (u) {
      const a = yield* u.mmap(0x40000000, 4 * PAGE, RW, ANON);
      for (let i = 0; i < 4; i++) yield* u.store32(a + i * PAGE, 0x100 + i);
      const used = k.pages.usedFrames;
      expect(yield* u.mmap(a + PAGE, 2 * PAGE, PROT_READ, ANON | MAP_FIXED)).toBe(a + PAGE);
      // Two anonymous pages went back to the allocator (their page-table page stays in use).
      expect(k.pages.usedFrames).toBe(used - 2);
      expect(yield* u.load32(a + PAGE)).toBe(0);
      expect(yield* u.load32(a + 2 * PAGE)).toBe(0);
      expect(yield* u.load32(a)).toBe(0x100);
      expect(yield* u.load32(a + 3 * PAGE)).toBe(0x103);
      expect(vmaList(u.task.mm!)).toEqual([
        [a, a + PAGE, 'rd wr mr mw me ac'],
        [a + PAGE, a + 3 * PAGE, 'rd mr mw me'],
        [a + 3 * PAGE, a + 4 * PAGE, 'rd wr mr mw me ac'],
      ]);
    });
    expectClean(k);
    expect(k.pages.usedFrames).toBe(before);
  });

  it('MAP_FIXED_NOREPLACE refuses any overlap with EEXIST and leaves the old mapping alone', () => {
    const k = boot();
    run(k, function* (u) {
      const a = yield* u.mmap(0x40000000, 4 * PAGE, RW, ANON);
      yield* u.store32(a + PAGE, 7);
      expect(yield* errno(u.mmap(a, 4 * PAGE, RW, ANON | MAP_FIXED_NOREPLACE))).toBe('EEXIST');
      expect(yield* errno(u.mmap(a + 3 * PAGE, 4 * PAGE, RW, ANON | MAP_FIXED_NOREPLACE))).toBe('EEXIST');
      expect(yield* errno(u.mmap(a - PAGE, 2 * PAGE, RW, ANON | MAP_FIXED_NOREPLACE))).toBe('EEXIST');
      expect(yield* u.load32(a + PAGE)).toBe(7);
      // Adjacent on either side is not an overlap.
      expect(yield* u.mmap(a + 4 * PAGE, PAGE, PROT_READ, ANON | MAP_FIXED_NOREPLACE)).toBe(a + 4 * PAGE);
      expect(yield* u.mmap(a - PAGE, PAGE, PROT_READ, ANON | MAP_FIXED_NOREPLACE)).toBe(a - PAGE);
      // It is MAP_FIXED otherwise: alignment still checked.
      expect(yield* errno(u.mmap(0x50000010, PAGE, RW, ANON | MAP_FIXED_NOREPLACE))).toBe('EINVAL');
    });
    expectClean(k);
  });
});

describe('mmap flags', () => {
  it('turns PROT_* into VM_* with every VM_MAY* bit, and VM_ACCOUNT only for private writable memory', () => {
    const k = boot();
    run(k, function* (u) {
      const mm = u.task.mm!;
      const f = function* (prot: number, flags: number) {
        const len = flags & MAP_HUGETLB ? MB2 : PAGE;
        const a = yield* u.mmap(0, len, prot, flags);
        const s = vmFlagNames(mm.vma_lookup(a)!.vm_flags);
        yield* u.munmap(a, len);
        return s;
      };
      expect(yield* f(PROT_READ, ANON)).toBe('rd mr mw me');
      expect(yield* f(RW, ANON)).toBe('rd wr mr mw me ac');
      expect(yield* f(PROT_READ | PROT_EXEC, ANON)).toBe('rd ex mr mw me');
      expect(yield* f(PROT_NONE, ANON)).toBe('mr mw me');
      expect(yield* f(RW, ANON | MAP_NORESERVE)).toBe('rd wr mr mw me nr');
      expect(yield* f(RW, MAP_SHARED | MAP_ANONYMOUS)).toBe('rd wr sh mr mw me ms');
      expect(yield* f(RW, ANON | MAP_LOCKED)).toBe('rd wr mr mw me lo ac');
      // accountable_mapping: hugetlb has its own reservations, so no VM_ACCOUNT, even for a
      // private writable mapping (and MAP_LOCKED does not stay on it: see MAP_LOCKED below).
      expect(yield* f(RW, ANON | MAP_HUGETLB)).toBe('rd wr mr mw me de ht');
      expect(yield* f(RW, ANON | MAP_HUGETLB | MAP_NORESERVE)).toBe('rd wr mr mw me de nr ht');
      expect(yield* f(RW, ANON | MAP_HUGETLB | MAP_LOCKED)).toBe('rd wr mr mw me de ht');
      // Unknown prot bits are ignored by mmap (mprotect is stricter).
      expect(yield* f(PROT_READ | 0x10, ANON)).toBe('rd mr mw me');
    });
    expectClean(k);
  });

  it('ignores unknown flags with MAP_PRIVATE and MAP_SHARED, but anonymous MAP_SHARED_VALIDATE is EINVAL', () => {
    const k = boot();
    run(k, function* (u) {
      const a = yield* u.mmap(0, PAGE, RW, ANON | MAP_UNKNOWN);
      expect(u.task.mm!.vma_lookup(a)).not.toBeNull();
      const b = yield* u.mmap(0, PAGE, RW, MAP_SHARED | MAP_ANONYMOUS | MAP_UNKNOWN);
      expect(u.task.mm!.vma_lookup(b)!.vm_flags & 0x8).toBe(0x8);
      // do_mmap's anonymous switch knows MAP_SHARED and MAP_PRIVATE only.
      expect(yield* errno(u.mmap(0, PAGE, RW, MAP_SHARED_VALIDATE | MAP_ANONYMOUS))).toBe('EINVAL');
      expect(yield* errno(u.mmap(0, PAGE, RW, MAP_SHARED_VALIDATE | MAP_ANONYMOUS | MAP_UNKNOWN))).toBe('EINVAL');
      // MAP_GROWSDOWN makes no sense for shared anonymous memory.
      expect(yield* errno(u.mmap(0, PAGE, RW, MAP_SHARED | MAP_ANONYMOUS | MAP_GROWSDOWN))).toBe('EINVAL');
    });
    expectClean(k);
  });

  it('MAP_SHARED_VALIDATE on a file: unknown flags, MAP_SYNC (no FOP_MMAP_SYNC) and non-legacy MAP_FIXED_NOREPLACE are EOPNOTSUPP', () => {
    const k = boot();
    const dev = fakeDevice(k, 'val');
    run(k, function* (u) {
      const fd = yield* u.open(dev.path);
      expect(yield* errno(u.mmap(0, PAGE, RW, MAP_SHARED_VALIDATE | MAP_UNKNOWN, fd))).toBe('EOPNOTSUPP');
      expect(yield* errno(u.mmap(0, PAGE, RW, MAP_SHARED_VALIDATE | MAP_SYNC, fd))).toBe('EOPNOTSUPP');
      expect(yield* errno(u.mmap(0x40000000, PAGE, RW, MAP_SHARED_VALIDATE | MAP_FIXED_NOREPLACE, fd))).toBe('EOPNOTSUPP');
      expect(dev.mmapped.length).toBe(0);
      // Plain MAP_SHARED drops the same flags silently; MAP_SHARED_VALIDATE with legacy flags works.
      const a = yield* u.mmap(0, PAGE, RW, MAP_SHARED | MAP_UNKNOWN | MAP_SYNC, fd);
      const b = yield* u.mmap(0, PAGE, RW, MAP_SHARED_VALIDATE | MAP_POPULATE | MAP_NORESERVE, fd);
      expect(dev.mmapped.map((v) => v.vm_start)).toEqual([a, b]);
      expect(u.task.mm!.vma_lookup(b)!.vm_flags & 0x88).toBe(0x88); // VM_SHARED | VM_MAYSHARE
    });
    expectClean(k);
  });

  it('a file without ->mmap cannot be mapped (ENODEV)', () => {
    const k = boot();
    const dev = fakeDevice(k, 'nommap', { noMmap: true });
    run(k, function* (u) {
      const fd = yield* u.open(dev.path);
      expect(yield* errno(u.mmap(0, PAGE, PROT_READ, MAP_SHARED, fd))).toBe('ENODEV');
      expect(u.task.mm!.map_count).toBe(0);
    });
    expectClean(k);
  });

  it('MAP_POPULATE faults every page in at mmap time: private writable gets its own pages, read-only the zero page', () => {
    const k = boot();
    run(k, function* (u) {
      const mm = u.task.mm!;
      const a = yield* u.mmap(0, 4 * PAGE, RW, ANON | MAP_POPULATE);
      expect(mm.rss.anon).toBe(4);
      for (let i = 0; i < 4; i++) {
        const pte = pteAt(k, mm, a + i * PAGE)!;
        expect(pte[0] & _PAGE_PRESENT).toBe(_PAGE_PRESENT);
        expect(pte[0] & _PAGE_RW).toBe(_PAGE_RW);
      }
      const r = yield* u.mmap(0, 2 * PAGE, PROT_READ, ANON | MAP_POPULATE);
      expect(pfnAt(k, mm, r)).toBe(k.pages.zeroPfn);
      expect(pfnAt(k, mm, r + PAGE)).toBe(k.pages.zeroPfn);
      expect(pteAt(k, mm, r)![0] & _PAGE_SPECIAL).toBe(_PAGE_SPECIAL);
      expect(mm.rss.anon).toBe(4);
      // Without MAP_POPULATE nothing is mapped until touched.
      const n = yield* u.mmap(0, 2 * PAGE, RW, ANON);
      expect(pfnAt(k, mm, n)).toBe(-1);
      // Populated memory still reads zero.
      expect(yield* u.load32(a + 2 * PAGE)).toBe(0);
    });
    expectClean(k);
  });

  it('MAP_POPULATE of a PROT_NONE mapping maps nothing (the range is not accessible)', () => {
    const k = boot();
    run(k, function* (u) {
      const mm = u.task.mm!;
      const a = yield* u.mmap(0, 2 * PAGE, PROT_NONE, ANON | MAP_POPULATE);
      const pte = pteAt(k, mm, a);
      expect(pte === null || (pte[0] === 0 && pte[1] === 0)).toBe(true);
      const e = yield* signalOf(u.load32(a));
      expect([e.signame, e.codename, e.addr]).toEqual(['SIGSEGV', 'SEGV_ACCERR', a]);
    });
    expectClean(k);
  });

  it('MAP_SHARED anonymous memory is a shmem object at page offset 0; MAP_PRIVATE anonymous memory has no file and pgoff = addr >> 12', () => {
    const k = boot();
    run(k, function* (u) {
      const mm = u.task.mm!;
      const s = yield* u.mmap(0x40000000, 2 * PAGE, RW, MAP_SHARED | MAP_ANONYMOUS);
      const p = yield* u.mmap(0x50000000, 2 * PAGE, RW, ANON);
      const vs = mm.vma_lookup(s)!;
      const vp = mm.vma_lookup(p)!;
      expect(vs.vm_file).not.toBeNull();
      expect(vs.vm_pgoff).toBe(0);
      expect(vp.vm_file).toBeNull();
      expect(vp.vm_pgoff).toBe(p / PAGE);
      yield* u.store32(s, 1);
      yield* u.store32(p, 2);
      expect(mm.rss.shmem).toBe(1);
      expect(mm.rss.anon).toBe(1);
      // Two shared anonymous mappings next to each other are different objects: no merge.
      yield* u.mmap(s + 2 * PAGE, PAGE, RW, MAP_SHARED | MAP_ANONYMOUS | MAP_FIXED);
      expect(mm.vma_lookup(s + 2 * PAGE)).not.toBe(vs);
    });
    expectClean(k);
  });
});

/** The "Label:   N kB" value of one line of an smaps block or of /proc/PID/status. */
function kbOf(text: string, label: string): number {
  const m = new RegExp(`^${label}:\\s+(\\d+) kB$`, 'm').exec(text);
  if (!m) throw new Error(`no ${label} line in:\n${text}`);
  return Number(m[1]);
}

describe('MAP_LOCKED', () => {
  it('sets VM_LOCKED and populates the range as MAP_POPULATE does (MAP_NONBLOCK does not stop it); the pages count in locked_vm (VmLck, smaps Locked)', () => {
    const k = boot();
    run(k, function* (u) {
      const mm = u.task.mm!;
      const a = yield* u.mmap(0, 4 * PAGE, RW, ANON | MAP_LOCKED);
      const v = mm.vma_lookup(a)!;
      expect(vmFlagNames(v.vm_flags)).toBe('rd wr mr mw me lo ac');
      // Private writable: write faults, so every page is the process's own, mapped writable.
      expect(mm.rss.anon).toBe(4);
      for (let i = 0; i < 4; i++) expect(pteAt(k, mm, a + i * PAGE)![0] & (_PAGE_PRESENT | _PAGE_RW)).toBe(_PAGE_PRESENT | _PAGE_RW);
      expect(mm.locked_vm).toBe(4);
      expect(kbOf(task_mem(k, mm), 'VmLck')).toBe(16);
      expect(kbOf(show_smap(k, v), 'Locked')).toBe(16);
      // Read-only: read faults, the zero page.
      const r = yield* u.mmap(0, 2 * PAGE, PROT_READ, ANON | MAP_LOCKED | MAP_NONBLOCK);
      expect(pfnAt(k, mm, r)).toBe(k.pages.zeroPfn);
      expect(pfnAt(k, mm, r + PAGE)).toBe(k.pages.zeroPfn);
      expect(mm.rss.anon).toBe(4);
      expect(mm.locked_vm).toBe(6);
      // PROT_NONE: VM_LOCKED, counted, but nothing can be faulted in.
      const n = yield* u.mmap(0, PAGE, PROT_NONE, ANON | MAP_LOCKED);
      expect(pfnAt(k, mm, n)).toBe(-1);
      expect(mm.locked_vm).toBe(7);
      // munmap takes the pages off locked_vm again, a split keeps them.
      yield* u.munmap(a, PAGE);
      expect(mm.locked_vm).toBe(6);
      yield* u.munmap(r, 2 * PAGE);
      yield* u.munmap(n, PAGE);
      expect(mm.locked_vm).toBe(3);
      expect(kbOf(task_mem(k, mm), 'VmLck')).toBe(12);
    });
    expectClean(k);
  });

  it('populates after do_mmap, with the mmap write lock dropped and the read lock taken (vm_mmap_pgoff → mm_populate)', () => {
    const k = boot({ trace: true });
    run(k, function* (u) {
      const mm = u.task.mm!;
      k.trace.clear();
      const a = yield* u.mmap(0, 3 * PAGE, RW, ANON | MAP_LOCKED);
      const evs = k.trace.events.filter((e) => e.name.startsWith('mmap_lock:') || e.name === 'kmem:mm_page_alloc');
      const lock = evs.map((e) => (e.name === 'kmem:mm_page_alloc' ? 'alloc' : `${e.name.slice(20)} write=${e.fields.write}`));
      // The write lock for do_mmap (it allocates nothing: the VMA is new), then the read lock,
      // under which the page tables and the three pages are allocated.
      const release = lock.indexOf('released write=true');
      const read = lock.indexOf('acquire_returned write=false');
      expect(lock.slice(0, release + 1)).toEqual(['start_locking write=true', 'acquire_returned write=true', 'released write=true']);
      expect(lock[read - 1]).toBe('start_locking write=false');
      expect(read).toBe(release + 2);
      expect(lock.slice(read + 1, -1).every((x) => x === 'alloc')).toBe(true);
      expect(lock.slice(read + 1, -1).length).toBeGreaterThanOrEqual(3);
      expect(lock[lock.length - 1]).toBe('released write=false');
      expect(mm.rss.anon).toBe(3);
      expect(pfnAt(k, mm, a + 2 * PAGE)).toBeGreaterThan(0);
    });
    expectClean(k);
  });

  it('does not stay on a hugetlb VMA (__mmap_complete clears VM_LOCKED_MASK, locked_vm unchanged), which is still populated', () => {
    const k = boot();
    run(k, function* (u) {
      const mm = u.task.mm!;
      const h = yield* u.mmap(0, 2 * MB2, RW, ANON | MAP_HUGETLB | MAP_LOCKED);
      const v = mm.vma_lookup(h)!;
      expect(v.vm_flags & VM_LOCKED).toBe(0);
      expect(vmFlagNames(v.vm_flags)).toBe('rd wr mr mw me de ht');
      expect(mm.locked_vm).toBe(0);
      expect(kbOf(task_mem(k, mm), 'VmLck')).toBe(0);
      expect(kbOf(show_smap(k, v), 'Locked')).toBe(0);
      // do_mmap decided on the requested VM_LOCKED: both huge pages are there.
      expect(mm.hugetlb_usage).toBe(1024);
      expect(k.pt.lo(k.pt.pmd_offset(mm, h + MB2)) & (_PAGE_PRESENT | _PAGE_PSE)).toBe(_PAGE_PRESENT | _PAGE_PSE);
      expect(yield* u.load32(h + MB2)).toBe(0);
    });
    expectClean(k);
  });

  it('does not stay on a VM_SPECIAL VMA: a VM_MIXEDMAP|VM_DONTEXPAND driver mapping is populated through ->fault but not locked; a PFN map is neither', () => {
    const k = boot();
    const mixed = driverDevice(k, '/dev/mixed', 4, 'vmf_insert_page');
    const pfnmap = driverDevice(k, '/dev/pfnmap', 2, 'pfnmap');
    run(k, function* (u) {
      const mm = u.task.mm!;
      const m = yield* u.mmap(0, 4 * PAGE, PROT_READ, MAP_SHARED | MAP_LOCKED, yield* u.open('/dev/mixed'));
      const vm = mm.vma_lookup(m)!;
      expect(vmFlagNames(vm.vm_flags)).toBe('rd sh mr mw me ms de mm');
      for (let i = 0; i < 4; i++) expect(pfnAt(k, mm, m + i * PAGE)).toBe(mixed.pages[i]);
      expect(kbOf(show_smap(k, vm), 'Rss')).toBe(16);
      expect(kbOf(show_smap(k, vm), 'Locked')).toBe(0);
      const p = yield* u.mmap(0, 2 * PAGE, PROT_READ, MAP_SHARED | MAP_LOCKED, yield* u.open('/dev/pfnmap'));
      const vp = mm.vma_lookup(p)!;
      expect(vmFlagNames(vp.vm_flags)).toBe('rd sh mr mw me ms pf io de dd');
      expect(pfnAt(k, mm, p + PAGE)).toBe(pfnmap.pages[1]);
      expect(mm.locked_vm).toBe(0);
      expect(kbOf(task_mem(k, mm), 'VmLck')).toBe(0);
      // Next to a locked anonymous mapping nothing of them is counted either.
      yield* u.mmap(0, PAGE, PROT_READ, ANON | MAP_LOCKED);
      expect(mm.locked_vm).toBe(1);
    });
    expectClean(k);
  });
});

describe('MAP_HUGETLB', () => {
  it('rounds the length to 2 MiB, aligns the mapping and maps a 2 MiB page with one PS=1 PDE', () => {
    const k = boot();
    const before = k.pages.usedFrames;
    run(k, function* (u) {
      const mm = u.task.mm!;
      const h = yield* u.mmap(0, MB2 + 1, RW, ANON | MAP_HUGETLB);
      expect(h % MB2).toBe(0);
      const v = mm.vma_lookup(h)!;
      expect(v.vm_end - v.vm_start).toBe(2 * MB2);
      expect(vmFlagNames(v.vm_flags)).toContain('ht');
      yield* u.store32(h + MB2 - 4, 0xabcd);
      const pmdp = k.pt.pmd_offset(mm, h);
      expect(pmdp).toBeGreaterThan(0);
      const lo = k.pt.lo(pmdp);
      expect(lo & (_PAGE_PRESENT | _PAGE_PSE)).toBe(_PAGE_PRESENT | _PAGE_PSE);
      // No PTE table under it; not RSS, but hugetlb_usage.
      expect(k.pt.pte_offset(mm, h)).toBe(-1);
      expect(mm.hugetlb_usage).toBe(512);
      expect(mm.rssPages).toBe(0);
      expect(yield* u.load32(h + MB2 - 4)).toBe(0xabcd);
      expect(yield* u.load32(h + 12345 * 4)).toBe(0);
      // The second 2 MiB is another huge page, faulted separately.
      yield* u.store32(h + MB2, 1);
      expect(mm.hugetlb_usage).toBe(1024);
    });
    expectClean(k);
    expect(k.pages.usedFrames).toBe(before);
  });

  it('MAP_FIXED needs a 2 MiB aligned address (EINVAL); a hint is rounded up to 2 MiB', () => {
    const k = boot();
    run(k, function* (u) {
      expect(yield* errno(u.mmap(0x40000000 + PAGE, MB2, RW, ANON | MAP_HUGETLB | MAP_FIXED))).toBe('EINVAL');
      expect(yield* u.mmap(0x40000000, MB2, RW, ANON | MAP_HUGETLB | MAP_FIXED)).toBe(0x40000000);
      expect(yield* u.mmap(0x50000000 + PAGE, MB2, RW, ANON | MAP_HUGETLB)).toBe(0x50000000 + MB2);
    });
    expectClean(k);
  });

  it('a file that is not hugetlbfs cannot be mapped with MAP_HUGETLB (EINVAL)', () => {
    const k = boot();
    const dev = fakeDevice(k, 'nohuge');
    run(k, function* (u) {
      const fd = yield* u.open(dev.path);
      expect(yield* errno(u.mmap(0, MB2, RW, MAP_SHARED | MAP_HUGETLB, fd))).toBe('EINVAL');
    });
    expectClean(k);
  });

  it('cannot be split at a 4 KiB boundary: partial munmap and mprotect are EINVAL, 2 MiB boundaries are fine', () => {
    const k = boot();
    const before = k.pages.usedFrames;
    run(k, function* (u) {
      const mm = u.task.mm!;
      const h = yield* u.mmap(0x40000000, 2 * MB2, RW, ANON | MAP_HUGETLB | MAP_FIXED);
      yield* u.store32(h, 1);
      yield* u.store32(h + MB2, 2);
      expect(yield* errno(u.munmap(h + PAGE, PAGE))).toBe('EINVAL');
      expect(yield* errno(u.mprotect(h, PAGE, PROT_READ))).toBe('EINVAL');
      expect(ranges(mm)).toEqual([[h, h + 2 * MB2]]);
      expect(yield* u.load32(h)).toBe(1);
      // At a 2 MiB boundary the split is allowed.
      yield* u.mprotect(h + MB2, MB2, PROT_READ);
      expect(ranges(mm)).toEqual([[h, h + MB2], [h + MB2, h + 2 * MB2]]);
      expect(yield* u.load32(h + MB2)).toBe(2);
      const e = yield* signalOf(u.store32(h + MB2, 3));
      expect(e.codename).toBe('SEGV_ACCERR');
      yield* u.munmap(h, MB2);
      expect(mm.hugetlb_usage).toBe(512);
    });
    expectClean(k);
    expect(k.pages.usedFrames).toBe(before);
  });
});
