// Golden tests of /proc/PID/{maps,smaps,smaps_rollup,pagemap,status} and /proc/kpage{count,flags}.
// Every expected value is derived by hand from the format rules (fs/proc/task_mmu.c,
// fs/proc/page.c, Documentation/admin-guide/mm/pagemap.rst) and from what the scenario did: which
// pages were written, read, shared by fork, mapped by a driver. The outputs are also parsed the
// way real tools parse them (LTP's "%p-%p" sscanf of maps lines, the selftests' smaps field
// lookup and 8-byte pagemap preads), so a format slip that a person would miss still fails.
import { describe, expect, it } from 'vitest';
import { Kernel } from '../../kernel/kernel.ts';
import type { KGen, Task } from '../../kernel/sched/core.ts';
import type { User } from '../../kernel/uapi.ts';
import {
  MAP_ANONYMOUS, MAP_FIXED, MAP_GROWSDOWN, MAP_HUGETLB, MAP_LOCKED, MAP_PRIVATE, MAP_SHARED, PROT_EXEC, PROT_NONE, PROT_READ, PROT_WRITE,
} from '../../kernel/mm/mmap.ts';
import { File, Inode, type FileOperations } from '../../kernel/fs/file.ts';
import { mk_pte, remap_pfn_range, vm_insert_page } from '../../kernel/mm/memory.ts';
import { GFP_HIGHUSER_MOVABLE, GFP_KERNEL, PG_anon, PG_locked, PG_lru, PG_private, PG_referenced, PG_slab, __GFP_COMP, __GFP_ZERO } from '../../kernel/mm/page_alloc.ts';
import { PTE_A, PTE_D, PTE_HI_XD, PTE_P, PTE_PS, PTE_RW, PTE_US } from '../../hw/pte.ts';
import { VM_FAULT_OOM, VM_SOFTDIRTY, type MmStruct, type VmArea, type VmFault, type VmOperations } from '../../kernel/mm/mm_types.ts';
import { _PAGE_SOFT_DIRTY, _PAGE_UFFD_WP, ptePfn } from '../../kernel/arch/x86/pgtable.ts';
import { CR4_PKE } from '../../hw/control-registers.ts';
import { SyscallError } from '../../kernel/errno.ts';
import {
  PM_PFRAME_MASK, PM_PRESENT, kpagecount_read, kpageflags_read, pagemap_read, proc_pid_maps, proc_pid_smaps, proc_pid_smaps_rollup, task_mem,
} from '../../kernel/fs/proc/task_mmu.ts';

const PAGE = 4096;
const RW = PROT_READ | PROT_WRITE;
const ANON_FIXED = MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED;

// ================================================================================================
// Fixtures: a regular file with a page cache, a PFN-map device, a vm_insert_page device
// ================================================================================================

/** An inode whose number the test fixes (as the file system holding it would have assigned). */
class FixedInode extends Inode {
  override readonly i_ino: number;
  constructor(k: Kernel, kind: string, dev: [number, number], ino: number) {
    super(k, kind, dev);
    this.i_ino = ino;
  }
}

/** A regular file on device fe:01, inode 260131: ->fault reads pages into its page cache. */
function regularFile(k: Kernel, path: string): FixedInode {
  const inode = new FixedInode(k, 'reg', [0xfe, 0x01], 260131);
  inode.i_size = 16 * PAGE;
  const vmOps: VmOperations = {
    name: 'fakefs',
    map_pages: true,
    fault(vmf: VmFault): number {
      const m = vmf.vma.vm_file!.f_mapping;
      let pfn = m.i_pages.get(vmf.pgoff);
      if (pfn === undefined) {
        pfn = k.pages.allocPages(GFP_HIGHUSER_MOVABLE | __GFP_ZERO, 0, 'fakefs read_folio');
        if (pfn < 0) return VM_FAULT_OOM;
        k.pages.mapping[pfn] = m.id;
        k.pages.index[pfn] = vmf.pgoff;
        m.i_pages.set(vmf.pgoff, pfn);
        m.nrpages++;
      }
      k.pages.getPage(pfn);
      vmf.page = pfn;
      return 0;
    },
  };
  const fops: FileOperations = {
    name: 'fakefs',
    mmap(_f: File, vma: VmArea): number {
      vma.vm_ops = vmOps;
      return 0;
    },
    release(f: File): void {
      if (f.f_inode.i_count !== 1) return;
      const m = f.f_mapping;
      for (const pfn of m.i_pages.values()) k.pages.putPage(pfn, 'fakefs evict');
      m.i_pages.clear();
      m.nrpages = 0;
    },
  };
  k.devices.set(path, { open: () => new File(k, inode, fops, path) });
  return inode;
}

/** Driver frames, zeroed, owned by the driver. */
function driverFrames(k: Kernel, n: number): number[] {
  const pfns: number[] = [];
  for (let i = 0; i < n; i++) pfns.push(k.pages.allocPages(GFP_KERNEL | __GFP_ZERO, 0, 'fake driver frames'));
  return pfns;
}

/** /dev/fakepfn (devtmpfs 00:05, inode 7): ->mmap maps its frames with remap_pfn_range. */
function pfnDevice(k: Kernel): number[] {
  const pfns = driverFrames(k, 2);
  const fops: FileOperations = {
    name: 'fakepfn',
    *mmap(_f: File, vma: VmArea): KGen<number> {
      for (let i = 0; i < pfns.length && i < vma.pages; i++) {
        const r = yield* remap_pfn_range(k, vma, vma.vm_start + i * PAGE, pfns[i]!, PAGE);
        if (r) return r;
      }
      return 0;
    },
  };
  const inode = new FixedInode(k, 'chr', [0, 5], 7);
  k.devices.set('/dev/fakepfn', { open: () => new File(k, inode, fops, '/dev/fakepfn') });
  return pfns;
}

/** /dev/fakeins (devtmpfs 00:05, inode 8): ->mmap inserts its pages with vm_insert_page. */
function insertDevice(k: Kernel): number[] {
  const pfns = driverFrames(k, 2);
  const fops: FileOperations = {
    name: 'fakeins',
    mmap(_f: File, vma: VmArea): number {
      for (let i = 0; i < pfns.length && i < vma.pages; i++) {
        const r = vm_insert_page(k, vma, vma.vm_start + i * PAGE, pfns[i]!, 'fakeins mmap');
        if (r) return r;
      }
      return 0;
    },
  };
  const inode = new FixedInode(k, 'chr', [0, 5], 8);
  k.devices.set('/dev/fakeins', { open: () => new File(k, inode, fops, '/dev/fakeins') });
  return pfns;
}

/**
 * /dev/fakemem (00:05, inode 9): two physically contiguous frames, remapped over the whole VMA in
 * one call, as /dev/mem does, so private (copy-on-write) mappings work: vm_pgoff becomes the pfn.
 */
function memDevice(k: Kernel): number {
  const base = k.pages.allocPages(GFP_KERNEL | __GFP_ZERO, 1, 'fakemem frames');
  const fops: FileOperations = {
    name: 'fakemem',
    *mmap(_f: File, vma: VmArea): KGen<number> {
      return yield* remap_pfn_range(k, vma, vma.vm_start, base, vma.vm_end - vma.vm_start);
    },
  };
  const inode = new FixedInode(k, 'chr', [0, 5], 9);
  k.devices.set('/dev/fakemem', { open: () => new File(k, inode, fops, '/dev/fakemem') });
  return base;
}

// ================================================================================================
// Running scenarios
// ================================================================================================

function boot(): Kernel {
  return new Kernel({ cpus: 2, memoryBytes: 64 << 20, seed: 1 });
}

function settle(k: Kernel, cond: () => boolean): void {
  for (let t = 2_000_000; !cond(); t += 2_000_000) {
    if (t > 4_000_000_000) throw new Error('the scenario did not get ready');
    k.run({ untilCycles: t });
  }
}

interface Live {
  task: Task;
  mm: MmStruct;
  /** Let every process of the scenario exit, and run the system to the end. */
  stop(): void;
}

/**
 * Start a process running `body`; once the body returns the process sleeps until stop(). The
 * body gets `alive()` for threads and children that must stay until then too.
 */
function start(k: Kernel, body: (u: User, alive: () => boolean) => KGen<void>): Live {
  let ready = false;
  let release = false;
  let failure: unknown = null;
  const alive = (): boolean => !release;
  const task = k.spawn(
    function* (u: User) {
      try {
        yield* body(u, alive);
      } catch (e) {
        failure = e;
      }
      ready = true;
      while (!release) yield* u.sleep(200_000);
    },
    { comm: 'procview' },
  );
  settle(k, () => ready);
  if (failure) throw failure;
  return {
    task,
    mm: task.mm!,
    stop: () => {
      release = true;
      k.run();
    },
  };
}

/**
 * The main scenario, VMA by VMA (addresses fixed so every line can be written by hand):
 *   A  10000000  4 pages rw anon; pages 0-2 written; page 1 made read-only, page 3 PROT_NONE
 *   Z  10100000  2 pages r-- anon; page 0 read (the zero page)
 *   S  10200000  2 pages rw shared anon; page 0 written, page 1 read
 *   F  10300000  3 pages r-- private file, offset 0x2000; pages 0 and 1 read
 *   W  10400000  2 pages rw- private file, offset 0; page 0 written (a COW copy), page 1 read
 *   P  10500000  2 pages rw shared /dev/fakepfn (remap_pfn_range)
 *   I  10600000  2 pages r-- shared /dev/fakeins (vm_insert_page); page 0 read
 *   L  10700000  2 pages rw anon MAP_LOCKED; both written
 *   N  10800000  1 page  rw anon, named "buf"; written
 *   X  10900000  1 page  r-x anon; untouched
 *      10910000  8 pages rw anon; 4 written, then unmapped (raises VmPeak and VmHWM)
 *   heap 11000000 3 pages rw anon; page 0 written; start_brk/brk set around it
 *   H  40000000  one 2 MiB hugetlb page, written
 *   stack 7ffffffde000-7ffffffff000 rw anon MAP_GROWSDOWN; the top page written
 * and a second thread, sleeping.
 */
function mainScenario(k: Kernel): Live & { tid: number; pfnFrames: number[]; insFrames: number[] } {
  regularFile(k, '/data/lib.so');
  const pfnFrames = pfnDevice(k);
  const insFrames = insertDevice(k);
  let tid = 0;
  const live = start(k, function* (u, alive) {
    const a = yield* u.mmap(0x10000000, 4 * PAGE, RW, ANON_FIXED);
    for (let i = 0; i < 3; i++) yield* u.store32(a + i * PAGE, 0x11);
    yield* u.mprotect(a + PAGE, PAGE, PROT_READ);
    yield* u.mprotect(a + 3 * PAGE, PAGE, PROT_NONE);
    yield* u.load32(yield* u.mmap(0x10100000, 2 * PAGE, PROT_READ, ANON_FIXED));
    const s = yield* u.mmap(0x10200000, 2 * PAGE, RW, MAP_SHARED | MAP_ANONYMOUS | MAP_FIXED);
    yield* u.store32(s, 0x22);
    yield* u.load32(s + PAGE);
    const fd = yield* u.open('/data/lib.so');
    const f = yield* u.mmap(0x10300000, 3 * PAGE, PROT_READ, MAP_PRIVATE | MAP_FIXED, fd, 0x2000);
    yield* u.load32(f);
    yield* u.load32(f + PAGE);
    const w = yield* u.mmap(0x10400000, 2 * PAGE, RW, MAP_PRIVATE | MAP_FIXED, fd, 0);
    yield* u.store32(w, 0x33);
    yield* u.load32(w + PAGE);
    yield* u.mmap(0x10500000, 2 * PAGE, RW, MAP_SHARED | MAP_FIXED, yield* u.open('/dev/fakepfn'), 0);
    yield* u.load32(yield* u.mmap(0x10600000, 2 * PAGE, PROT_READ, MAP_SHARED | MAP_FIXED, yield* u.open('/dev/fakeins'), 0));
    const l = yield* u.mmap(0x10700000, 2 * PAGE, RW, ANON_FIXED | MAP_LOCKED);
    yield* u.store32(l, 0x44);
    yield* u.store32(l + PAGE, 0x44);
    yield* u.store32(yield* u.mmap(0x10800000, PAGE, RW, ANON_FIXED), 0x55);
    yield* u.mmap(0x10900000, PAGE, PROT_READ | PROT_EXEC, ANON_FIXED);
    yield* u.store32(yield* u.mmap(0x11000000, 3 * PAGE, RW, ANON_FIXED), 0x66);
    yield* u.store32(yield* u.mmap(0x40000000, 2 << 20, RW, ANON_FIXED | MAP_HUGETLB), 0x77);
    yield* u.mmap(0x7ffffffde000, 0x21000, RW, ANON_FIXED | MAP_GROWSDOWN);
    yield* u.store32(0x7fffffffe000, 0x88);
    const t = yield* u.mmap(0x10910000, 8 * PAGE, RW, ANON_FIXED);
    for (let i = 0; i < 4; i++) yield* u.store32(t + i * PAGE, 0x99);
    yield* u.munmap(t, 8 * PAGE);
    tid = yield* u.clone(function* (tu: User) {
      while (alive()) yield* tu.sleep(200_000);
    });
  });
  // What exec and prctl would have set up: the heap's brk range, the initial stack pointer, a
  // name for the anonymous VMA N.
  live.mm.start_brk = 0x11000000;
  live.mm.brk = 0x11003000;
  live.mm.start_stack = 0x7fffffffe5c0;
  live.mm.vma_lookup(0x10800000)!.anon_name = 'buf';
  settle(k, () => tid !== 0 && k.tasks.has(tid));
  return { ...live, tid, pfnFrames, insFrames };
}

/** The maps line of the shared anonymous mapping, whose shmem inode number is assigned at run time. */
function shmemLine(mm: MmStruct): string {
  const ino = mm.vma_lookup(0x10200000)!.vm_file!.f_inode.i_ino;
  const prefix = `10200000-10202000 rw-s 00000000 00:01 ${ino} `;
  // The name column: padded to 72 characters, then one space (seq_setwidth(m, 25 + 6 * 8 - 1)).
  return prefix + ' '.repeat(72 - prefix.length) + ' /dev/zero (deleted)';
}

const MAIN_MAPS = [
  '10000000-10001000 rw-p 00000000 00:00 0 ',
  '10001000-10002000 r--p 00000000 00:00 0 ',
  '10002000-10003000 rw-p 00000000 00:00 0 ',
  '10003000-10004000 ---p 00000000 00:00 0 ',
  '10100000-10102000 r--p 00000000 00:00 0 ',
  'SHMEM',
  '10300000-10303000 r--p 00002000 fe:01 260131                             /data/lib.so',
  '10400000-10402000 rw-p 00000000 fe:01 260131                             /data/lib.so',
  '10500000-10502000 rw-s 00000000 00:05 7                                  /dev/fakepfn',
  '10600000-10602000 r--s 00000000 00:05 8                                  /dev/fakeins',
  '10700000-10702000 rw-p 00000000 00:00 0 ',
  '10800000-10801000 rw-p 00000000 00:00 0                                  [anon:buf]',
  '10900000-10901000 r-xp 00000000 00:00 0 ',
  '11000000-11003000 rw-p 00000000 00:00 0                                  [heap]',
  '40000000-40200000 rw-p 00000000 00:00 0 ',
  '7ffffffde000-7ffffffff000 rw-p 00000000 00:00 0                          [stack]',
];

function expectErrno(f: () => unknown, code: string): void {
  let err: unknown = null;
  try {
    f();
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(SyscallError);
  expect((err as SyscallError).code).toBe(code);
}

// ---- parsers in the style of the tools that read these files ----

/** LTP vma01: sscanf(line, "%p-%p", &start, &end) on every maps line. */
function ltpRanges(maps: string): [number, number][] {
  return maps
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => {
      const m = /^([0-9a-f]+)-([0-9a-f]+)/.exec(l);
      if (!m) throw new Error(`sscanf("%p-%p") fails on "${l}"`);
      return [parseInt(m[1]!, 16), parseInt(m[2]!, 16)];
    });
}

/** procps/pmap: sscanf(line, "%lx-%lx %31s %llx %x:%x %llu %n") and the rest of the line as the name. */
function pmapFields(line: string): { start: number; end: number; perms: string; offset: number; major: number; minor: number; inode: number; name: string } {
  const m = /^([0-9a-f]+)-([0-9a-f]+) (\S+) ([0-9a-f]+) ([0-9a-f]+):([0-9a-f]+) (\d+) ?(.*)$/.exec(line);
  if (!m) throw new Error(`not a maps line: "${line}"`);
  return { start: parseInt(m[1]!, 16), end: parseInt(m[2]!, 16), perms: m[3]!, offset: parseInt(m[4]!, 16), major: parseInt(m[5]!, 16), minor: parseInt(m[6]!, 16), inode: Number(m[7]), name: m[8]!.trim() };
}

/**
 * The selftests' smaps lookup (vm_util.c check_huge/read_smaps-style): find the block whose header
 * range contains `addr`, then "Field:" lines read with "%ld kB"; VmFlags kept as text.
 */
function smapsBlock(smaps: string, addr: number): Record<string, number | string> {
  const lines = smaps.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const h = /^([0-9a-f]+)-([0-9a-f]+) /.exec(lines[i]!);
    if (!h || addr < parseInt(h[1]!, 16) || addr >= parseInt(h[2]!, 16)) continue;
    const out: Record<string, number | string> = { header: lines[i]! };
    for (let j = i + 1; j < lines.length && !/^[0-9a-f]+-[0-9a-f]+ /.test(lines[j]!); j++) {
      const f = /^(\w+):\s+(\d+) kB$/.exec(lines[j]!);
      if (f) out[f[1]!] = Number(f[2]);
      else if (lines[j]!.startsWith('THPeligible:')) out.THPeligible = Number(lines[j]!.slice(12));
      else if (lines[j]!.startsWith('ProtectionKey:')) out.ProtectionKey = Number(lines[j]!.slice(14));
      else if (lines[j]!.startsWith('VmFlags:')) out.VmFlags = lines[j]!;
    }
    return out;
  }
  throw new Error(`no smaps block for ${addr.toString(16)}`);
}

/** vm_util.h pagemap_get_entry: pread(fd, &entry, 8, (vaddr / pagesize) * 8). */
function pagemap_get_entry(k: Kernel, pid: number | MmStruct, vaddr: number, privileged = false): bigint {
  const b = pagemap_read(k, pid, Math.floor(vaddr / PAGE) * 8, 8, { privileged });
  expect(b.length).toBe(8);
  return new DataView(b.buffer, b.byteOffset).getBigUint64(0, true);
}

/** page-types: the pfn of a present entry (privileged reader). */
function pfnOf(k: Kernel, pid: number, vaddr: number): number {
  const e = pagemap_get_entry(k, pid, vaddr, true);
  expect(e & PM_PRESENT).toBe(PM_PRESENT);
  return Number(e & PM_PFRAME_MASK);
}

function kpageflags(k: Kernel, pfn: number): bigint {
  return new DataView(kpageflags_read(k, pfn * 8, 8).buffer).getBigUint64(0, true);
}

function kpagecount(k: Kernel, pfn: number): bigint {
  return new DataView(kpagecount_read(k, pfn * 8, 8).buffer).getBigUint64(0, true);
}

/** The pfn a present PTE maps (read from the page tables directly). */
function ptePfnAt(k: Kernel, mm: MmStruct, addr: number): number {
  const ptep = k.pt.pte_offset(mm, addr);
  return ptePfn(k.pt.lo(ptep), k.pt.hi(ptep));
}

// ================================================================================================
// /proc/PID/maps
// ================================================================================================

describe('/proc/PID/maps', () => {
  it('prints every VMA as show_map_vma does', () => {
    const k = boot();
    const s = mainScenario(k);
    const expected = MAIN_MAPS.map((l) => (l === 'SHMEM' ? shmemLine(s.mm) : l));
    // The hand-written lines keep the layout rule: a name starts at column 73, an unnamed line
    // ends with the space after the inode number.
    for (const l of expected) {
      if (l.endsWith(' ')) expect(l).toMatch(/ \d+ $/);
      else expect(/^\S+ \S+ \S+ \S+ \d+ +/.exec(l)![0].length, l).toBe(73);
    }
    expect(proc_pid_maps(k, s.task.pid)).toBe(expected.join('\n') + '\n');
    // /proc/TID/maps of the second thread shows the same address space.
    expect(proc_pid_maps(k, s.tid)).toBe(proc_pid_maps(k, s.task.pid));
    s.stop();
    expect(k.reports.reports.map((r) => r.title)).toEqual([]);
  });

  it('reads back with the sscanf patterns of LTP and pmap', () => {
    const k = boot();
    const s = mainScenario(k);
    const maps = proc_pid_maps(k, s.task.pid);
    expect(ltpRanges(maps)).toEqual(s.mm.vmas().map((v) => [v.vm_start, v.vm_end]));
    const lines = maps.split('\n').filter((l) => l);
    expect(pmapFields(lines[6]!)).toEqual({ start: 0x10300000, end: 0x10303000, perms: 'r--p', offset: 0x2000, major: 0xfe, minor: 1, inode: 260131, name: '/data/lib.so' });
    expect(pmapFields(lines[5]!)).toMatchObject({ perms: 'rw-s', offset: 0, major: 0, minor: 1, name: '/dev/zero (deleted)' });
    expect(pmapFields(lines[0]!)).toEqual({ start: 0x10000000, end: 0x10001000, perms: 'rw-p', offset: 0, major: 0, minor: 0, inode: 0, name: '' });
    expect(pmapFields(lines[lines.length - 1]!)).toMatchObject({ start: 0x7ffffffde000, end: 0x7ffffffff000, name: '[stack]' });
    s.stop();
  });

  it('names: a shared anonymous VMA named by prctl shows [anon_shmem:NAME]; vm_ops.nameOf names special VMAs; paths escape newlines', () => {
    const k = boot();
    const s = mainScenario(k);
    s.mm.vma_lookup(0x10200000)!.anon_name = 'ring';
    s.mm.vma_lookup(0x10100000)!.vm_ops = { nameOf: () => '[vvar]' };
    const maps = proc_pid_maps(k, s.task.pid).split('\n');
    expect(maps[4]).toBe('10100000-10102000 r--p 00000000 00:00 0                                  [vvar]');
    expect(maps[5]!.endsWith(' [anon_shmem:ring]')).toBe(true);
    expect(maps[5]!.indexOf('[anon_shmem:ring]')).toBe(73);
    s.mm.vma_lookup(0x10100000)!.vm_ops = null;
    // The initial heap overlaps [start_brk, brk) strictly: an empty heap right after a VMA does
    // not name it.
    s.mm.start_brk = s.mm.brk = 0x11003000;
    expect(proc_pid_maps(k, s.task.pid).split('\n')[13]).toBe('11000000-11003000 rw-p 00000000 00:00 0 ');
    s.mm.brk = 0x11003001;
    expect(proc_pid_maps(k, s.task.pid).split('\n')[13]).toBe('11000000-11003000 rw-p 00000000 00:00 0 ');
    s.mm.start_brk = 0x11002fff;
    expect(proc_pid_maps(k, s.task.pid).split('\n')[13]).toBe('11000000-11003000 rw-p 00000000 00:00 0                                  [heap]');
    s.stop();
    // A path with a newline in it (seq_path escapes it as \012).
    const k2 = boot();
    regularFile(k2, '/data/odd\nname');
    const s2 = start(k2, function* (u) {
      yield* u.mmap(0x10000000, PAGE, PROT_READ, MAP_PRIVATE | MAP_FIXED, yield* u.open('/data/odd\nname'), 0);
    });
    expect(proc_pid_maps(k2, s2.task.pid)).toBe('10000000-10001000 r--p 00000000 fe:01 260131                             /data/odd\\012name\n');
    s2.stop();
  });
});

// ================================================================================================
// /proc/PID/smaps and smaps_rollup
// ================================================================================================

const ZERO_FIELDS = { KSM: 0, LazyFree: 0, AnonHugePages: 0, ShmemPmdMapped: 0, FilePmdMapped: 0, Swap: 0, SwapPss: 0, THPeligible: 0 };

describe('/proc/PID/smaps', () => {
  it('prints the counters of one VMA in Linux order and widths', () => {
    const k = boot();
    const s = mainScenario(k);
    const smaps = proc_pid_smaps(k, s.task.pid);
    // A's page 1: written, then made read-only. The PTE keeps D and A.
    const a2 = [
      '10001000-10002000 r--p 00000000 00:00 0 ',
      'Size:                  4 kB',
      'KernelPageSize:        4 kB',
      'MMUPageSize:           4 kB',
      'Rss:                   4 kB',
      'Pss:                   4 kB',
      'Pss_Dirty:             4 kB',
      'Shared_Clean:          0 kB',
      'Shared_Dirty:          0 kB',
      'Private_Clean:         0 kB',
      'Private_Dirty:         4 kB',
      'Referenced:            4 kB',
      'Anonymous:             4 kB',
      'KSM:                   0 kB',
      'LazyFree:              0 kB',
      'AnonHugePages:         0 kB',
      'ShmemPmdMapped:        0 kB',
      'FilePmdMapped:         0 kB',
      'Shared_Hugetlb:        0 kB',
      'Private_Hugetlb:       0 kB',
      'Swap:                  0 kB',
      'SwapPss:               0 kB',
      'Locked:                0 kB',
      'THPeligible:           0',
      'VmFlags: rd mr mw me ac ',
    ];
    expect(smaps).toContain('\n' + a2.join('\n') + '\n');
    // The hugetlb VMA: 2 MiB pages, counted only in Private_Hugetlb (17-character label, width 7).
    const h = [
      '40000000-40200000 rw-p 00000000 00:00 0 ',
      'Size:               2048 kB',
      'KernelPageSize:     2048 kB',
      'MMUPageSize:        2048 kB',
      'Rss:                   0 kB',
      'Pss:                   0 kB',
      'Pss_Dirty:             0 kB',
      'Shared_Clean:          0 kB',
      'Shared_Dirty:          0 kB',
      'Private_Clean:         0 kB',
      'Private_Dirty:         0 kB',
      'Referenced:            0 kB',
      'Anonymous:             0 kB',
      'KSM:                   0 kB',
      'LazyFree:              0 kB',
      'AnonHugePages:         0 kB',
      'ShmemPmdMapped:        0 kB',
      'FilePmdMapped:         0 kB',
      'Shared_Hugetlb:        0 kB',
      'Private_Hugetlb:    2048 kB',
      'Swap:                  0 kB',
      'SwapPss:               0 kB',
      'Locked:                0 kB',
      'THPeligible:           0',
      // No "ac": hugetlb memory is not charged as committed memory (accountable_mapping).
      'VmFlags: rd wr mr mw me de ht ',
    ];
    expect(smaps).toContain('\n' + h.join('\n') + '\n');
    // The PFN map: VM_PFNMAP VMAs are not walked, so nothing is resident.
    const p = [
      '10500000-10502000 rw-s 00000000 00:05 7                                  /dev/fakepfn',
      'Size:                  8 kB',
      'KernelPageSize:        4 kB',
      'MMUPageSize:           4 kB',
      'Rss:                   0 kB',
      'Pss:                   0 kB',
      'Pss_Dirty:             0 kB',
      'Shared_Clean:          0 kB',
      'Shared_Dirty:          0 kB',
      'Private_Clean:         0 kB',
      'Private_Dirty:         0 kB',
      'Referenced:            0 kB',
      'Anonymous:             0 kB',
      'KSM:                   0 kB',
      'LazyFree:              0 kB',
      'AnonHugePages:         0 kB',
      'ShmemPmdMapped:        0 kB',
      'FilePmdMapped:         0 kB',
      'Shared_Hugetlb:        0 kB',
      'Private_Hugetlb:       0 kB',
      'Swap:                  0 kB',
      'SwapPss:               0 kB',
      'Locked:                0 kB',
      'THPeligible:           0',
      'VmFlags: rd wr sh mr mw me ms pf io de dd ',
    ];
    expect(smaps).toContain('\n' + p.join('\n') + '\n');
    // One block per maps line, in the same order, each starting with that line.
    const headers = smaps.split('\n').filter((l) => /^[0-9a-f]+-[0-9a-f]+ /.test(l));
    expect(headers.join('\n') + '\n').toBe(proc_pid_maps(k, s.task.pid));
    expect(smaps.split('\n').filter((l) => l !== '').length).toBe(headers.length * 25);
    s.stop();
  });

  it('counts each VMA from its page tables and struct pages', () => {
    const k = boot();
    const s = mainScenario(k);
    const smaps = proc_pid_smaps(k, s.task.pid);
    const v = (addr: number): Record<string, number | string> => smapsBlock(smaps, addr);
    const zero = { Rss: 0, Pss: 0, Pss_Dirty: 0, Shared_Clean: 0, Shared_Dirty: 0, Private_Clean: 0, Private_Dirty: 0, Referenced: 0, Anonymous: 0, Shared_Hugetlb: 0, Private_Hugetlb: 0, Locked: 0, ...ZERO_FIELDS };
    // A's first page: written.
    expect(v(0x10000000)).toMatchObject({ ...zero, Size: 4, Rss: 4, Pss: 4, Pss_Dirty: 4, Private_Dirty: 4, Referenced: 4, Anonymous: 4, VmFlags: 'VmFlags: rd wr mr mw me ac ' });
    // A's page 3: PROT_NONE and never touched.
    expect(v(0x10003000)).toMatchObject({ ...zero, Size: 4, VmFlags: 'VmFlags: mr mw me ac ' });
    // Z: the zero page is a special PTE, not counted.
    expect(v(0x10100000)).toMatchObject({ ...zero, Size: 8, VmFlags: 'VmFlags: rd mr mw me ' });
    // S: shmem pages, each in the page cache and one PTE (refcount 2, mapcount 1): private. The
    // written one is dirty (D and PG_dirty), the read one clean.
    expect(v(0x10200000)).toMatchObject({ ...zero, Size: 8, Rss: 8, Pss: 8, Pss_Dirty: 4, Private_Clean: 4, Private_Dirty: 4, Referenced: 8, VmFlags: 'VmFlags: rd wr sh mr mw me ms ' });
    // F: two page-cache pages read through a private mapping.
    expect(v(0x10300000)).toMatchObject({ ...zero, Size: 12, Rss: 8, Pss: 8, Private_Clean: 8, Referenced: 8, VmFlags: 'VmFlags: rd mr mw me ' });
    // W: page 0 is an anonymous COW copy (dirty), page 1 the file's page (clean).
    expect(v(0x10400000)).toMatchObject({ ...zero, Size: 8, Rss: 8, Pss: 8, Pss_Dirty: 4, Private_Clean: 4, Private_Dirty: 4, Referenced: 8, Anonymous: 4, VmFlags: 'VmFlags: rd wr mr mw me ac ' });
    // I: driver pages (refcount 2: driver and PTE; mapcount 1), young from the protection.
    expect(v(0x10600000)).toMatchObject({ ...zero, Size: 8, Rss: 8, Pss: 8, Private_Clean: 8, Referenced: 8, VmFlags: 'VmFlags: rd sh mr mw me ms mm ' });
    // L: VM_LOCKED, so its PSS is Locked.
    expect(v(0x10700000)).toMatchObject({ ...zero, Size: 8, Rss: 8, Pss: 8, Pss_Dirty: 8, Private_Dirty: 8, Referenced: 8, Anonymous: 8, Locked: 8, VmFlags: 'VmFlags: rd wr mr mw me lo ac ' });
    expect(v(0x10800000)).toMatchObject({ ...zero, Size: 4, Rss: 4, Pss: 4, Pss_Dirty: 4, Private_Dirty: 4, Referenced: 4, Anonymous: 4 });
    expect(v(0x10900000)).toMatchObject({ ...zero, Size: 4, VmFlags: 'VmFlags: rd ex mr mw me ' });
    expect(v(0x11000000)).toMatchObject({ ...zero, Size: 12, Rss: 4, Pss: 4, Pss_Dirty: 4, Private_Dirty: 4, Referenced: 4, Anonymous: 4 });
    expect(v(0x7ffffffde000)).toMatchObject({ ...zero, Size: 132, KernelPageSize: 4, MMUPageSize: 4, Rss: 4, Pss: 4, Pss_Dirty: 4, Private_Dirty: 4, Referenced: 4, Anonymous: 4, VmFlags: 'VmFlags: rd wr mr mw me gd ac ' });
    s.stop();
  });

  it('PG_referenced and PG_dirty count like the A and D bits', () => {
    const k = boot();
    const s = mainScenario(k);
    // Make F's first page look old and clean in its PTE but referenced and dirty in struct page.
    const ptep = k.pt.pte_offset(s.mm, 0x10300000);
    k.pt.clear_bits(ptep, (1 << 5) | (1 << 6));
    let b = smapsBlock(proc_pid_smaps(k, s.task.pid), 0x10300000);
    expect(b).toMatchObject({ Referenced: 4, Private_Clean: 8, Private_Dirty: 0, Pss_Dirty: 0 });
    const pfn = ptePfnAt(k, s.mm, 0x10300000);
    k.pages.flags[pfn] |= PG_referenced | (1 << 2) /* PG_dirty */;
    b = smapsBlock(proc_pid_smaps(k, s.task.pid), 0x10300000);
    expect(b).toMatchObject({ Referenced: 8, Private_Clean: 4, Private_Dirty: 4, Pss_Dirty: 4 });
    k.pages.flags[pfn] &= ~(PG_referenced | (1 << 2));
    s.stop();
  });

  it('a page whose refcount is 1 is private whatever its mapcount says; a hugetlb page mapped twice is shared', () => {
    const k = boot();
    const s = mainScenario(k);
    const pfn = ptePfnAt(k, s.mm, 0x10000000);
    k.pages.mapcount[pfn] = 2;
    expect(smapsBlock(proc_pid_smaps(k, s.task.pid), 0x10000000)).toMatchObject({ Rss: 4, Pss: 4, Private_Dirty: 4, Shared_Dirty: 0 });
    // With a second reference the mapcount decides: shared by two, half the PSS.
    k.pages.refcount[pfn] = 2;
    expect(smapsBlock(proc_pid_smaps(k, s.task.pid), 0x10000000)).toMatchObject({ Rss: 4, Pss: 2, Private_Dirty: 0, Shared_Dirty: 4 });
    k.pages.mapcount[pfn] = 1;
    k.pages.refcount[pfn] = 1;
    // A hugetlb page mapped twice is shared (folio_likely_mapped_shared: mapcount > 1).
    const pmdp = k.pt.pmd_offset(s.mm, 0x40000000);
    const head = ptePfn(k.pt.lo(pmdp), k.pt.hi(pmdp));
    k.pages.mapcount[head] = 2;
    expect(smapsBlock(proc_pid_smaps(k, s.task.pid), 0x40000000)).toMatchObject({ Shared_Hugetlb: 2048, Private_Hugetlb: 0 });
    expect(pagemap_get_entry(k, s.task.pid, 0x40000000)).toBe(0x8000000000000000n);
    k.pages.mapcount[head] = 1;
    s.stop();
  });

  it('a private PFN map: offset is the pfn, COW copies in it are invisible to smaps and pagemap', () => {
    const k = boot();
    const base = memDevice(k);
    const s = start(k, function* (u) {
      const m = yield* u.mmap(0x10000000, 2 * PAGE, RW, MAP_PRIVATE | MAP_FIXED, yield* u.open('/dev/fakemem'), 0);
      yield* u.store32(m, 0xabc); // a write to a read-only special PTE: copy on write
    });
    // remap_pfn_range on a COW mapping sets vm_pgoff to the pfn, which maps prints as the offset.
    const prefix = `10000000-10002000 rw-p ${(base * PAGE).toString(16).padStart(8, '0')} 00:05 9 `;
    expect(proc_pid_maps(k, s.task.pid)).toBe(prefix + ' '.repeat(72 - prefix.length) + ' /dev/fakemem\n');
    // The copy is an anonymous page in RSS…
    expect(s.mm.rss.anon).toBe(1);
    expect(task_mem(k, s.task.pid)).toContain('RssAnon:\t       4 kB\n');
    // …but the VM_PFNMAP VMA is not walked: nothing resident in smaps, nothing in pagemap.
    expect(smapsBlock(proc_pid_smaps(k, s.task.pid), 0x10000000)).toMatchObject({ Rss: 0, Pss: 0, Anonymous: 0, VmFlags: 'VmFlags: rd wr mr mw me pf io de ac dd ' });
    expect(pagemap_get_entry(k, s.task.pid, 0x10000000, true)).toBe(0n);
    expect(pagemap_get_entry(k, s.task.pid, 0x10001000, true)).toBe(0n);
    s.stop();
  });

  it('a PMD-mapped transparent huge page (planted; mmulab makes none) counts as AnonHugePages', () => {
    const k = boot();
    const s = start(k, function* (u) {
      yield* u.mmap(0x40000000, 2 << 20, RW, ANON_FIXED);
    });
    const head = k.pages.allocPages(GFP_HIGHUSER_MOVABLE | __GFP_ZERO | __GFP_COMP, 9, 'test thp');
    k.pages.flags[head] |= PG_anon;
    k.pages.mapcount[head] = 1;
    const pmdp = k.pt.alloc(s.mm, 0x40000000, 2, 'test thp');
    const [lo, hi] = mk_pte(head, { lo: PTE_P | PTE_RW | PTE_US | PTE_A | PTE_D | PTE_PS, hi: PTE_HI_XD });
    k.pt.set_pte(pmdp, lo, hi);
    expect(smapsBlock(proc_pid_smaps(k, s.task.pid), 0x40000000)).toMatchObject({
      Size: 2048, KernelPageSize: 4, Rss: 2048, Pss: 2048, Pss_Dirty: 2048, Private_Dirty: 2048, Referenced: 2048, Anonymous: 2048, AnonHugePages: 2048, ShmemPmdMapped: 0, FilePmdMapped: 0,
    });
    expect(pagemap_get_entry(k, s.task.pid, 0x40003000, true)).toBe(0x8100000000000000n | BigInt(head + 3));
    // As a file page (not anonymous, not swap-backed) it is FilePmdMapped and file in pagemap.
    k.pages.flags[head] &= ~PG_anon;
    expect(smapsBlock(proc_pid_smaps(k, s.task.pid), 0x40000000)).toMatchObject({ Anonymous: 0, AnonHugePages: 0, FilePmdMapped: 2048 });
    expect(pagemap_get_entry(k, s.task.pid, 0x40003000)).toBe(0xa100000000000000n);
    k.pt.set_pte(pmdp, 0, 0);
    k.pages.mapcount[head] = 0;
    k.pages.putPage(head, 'test thp');
    s.stop();
  });

  it('prints ProtectionKey when the kernel has turned protection keys on', () => {
    const k = boot();
    const s = mainScenario(k);
    expect(proc_pid_smaps(k, s.task.pid)).not.toContain('ProtectionKey');
    const cpu = k.machine.cpu(0);
    const cr4 = cpu.readCr4();
    expect(cpu.writeCr4(cr4 | BigInt(CR4_PKE)).ok).toBe(true);
    s.mm.vma_lookup(0x10800000)!.pkey = 3;
    const smaps = proc_pid_smaps(k, s.task.pid);
    expect(smaps).toContain(['THPeligible:           0', 'ProtectionKey:         3', 'VmFlags: rd wr mr mw me ac '].join('\n'));
    expect(smaps.split('\n').filter((l) => l.startsWith('ProtectionKey:')).length).toBe(MAIN_MAPS.length);
    expect(cpu.writeCr4(cr4).ok).toBe(true);
    s.stop();
  });

  it('smaps_rollup sums every VMA under one [rollup] header', () => {
    const k = boot();
    const s = mainScenario(k);
    // Rss: A 12 + S 8 + F 8 + W 8 + I 8 + L 8 + N 4 + heap 4 + stack 4 = 64 kB; all private.
    // Anonymous: A 12, W's copy 4, L 8, N 4, heap 4, stack 4 = 36 kB; file: F 8, W 4, I 8 = 20 kB;
    // shmem: S 8 kB. Dirty: A 12, S 4, W 4, L 8, N 4, heap 4, stack 4 = 40 kB.
    const expected = [
      '10000000-7ffffffff000 ---p 00000000 00:00 0                              [rollup]',
      'Rss:                  64 kB',
      'Pss:                  64 kB',
      'Pss_Dirty:            40 kB',
      'Pss_Anon:             36 kB',
      'Pss_File:             20 kB',
      'Pss_Shmem:             8 kB',
      'Shared_Clean:          0 kB',
      'Shared_Dirty:          0 kB',
      'Private_Clean:        24 kB',
      'Private_Dirty:        40 kB',
      'Referenced:           64 kB',
      'Anonymous:            36 kB',
      'KSM:                   0 kB',
      'LazyFree:              0 kB',
      'AnonHugePages:         0 kB',
      'ShmemPmdMapped:        0 kB',
      'FilePmdMapped:         0 kB',
      'Shared_Hugetlb:        0 kB',
      'Private_Hugetlb:    2048 kB',
      'Swap:                  0 kB',
      'SwapPss:               0 kB',
      'Locked:                8 kB',
    ];
    expect(proc_pid_smaps_rollup(k, s.task.pid)).toBe(expected.join('\n') + '\n');
    s.stop();
  });

  it('an empty address space rolls up to a 0-0 header', () => {
    const k = boot();
    const s = start(k, function* () {});
    expect(proc_pid_smaps(k, s.task.pid)).toBe('');
    expect(proc_pid_maps(k, s.task.pid)).toBe('');
    expect(proc_pid_smaps_rollup(k, s.task.pid).split('\n').slice(0, 3)).toEqual([
      '00000000-00000000 ---p 00000000 00:00 0                                  [rollup]',
      'Rss:                   0 kB',
      'Pss:                   0 kB',
    ]);
    s.stop();
  });
});

// ================================================================================================
// Sharing after fork: PSS, Shared_*, the fixed-point rounding
// ================================================================================================

/**
 * The parent writes C (4 anonymous pages), reads F (3 file pages) and writes a hugetlb page H,
 * forks child1, which reads F and writes C's page 3 (a COW break), then forks child2, which reads
 * F. Afterwards C's pages 0-2 are mapped by all three (mapcount 3), C's page 3 by the parent and
 * child2 (mapcount 2; child1 has its own copy), F's pages and H by all three.
 */
function forkScenario(k: Kernel): Live & { child1: number; child2: number } {
  regularFile(k, '/data/lib.so');
  let ready1 = false;
  let ready2 = false;
  let child1 = 0;
  let child2 = 0;
  const live = start(k, function* (u, alive) {
    const c = yield* u.mmap(0x20000000, 4 * PAGE, RW, ANON_FIXED);
    for (let i = 0; i < 4; i++) yield* u.store32(c + i * PAGE, i);
    const f = yield* u.mmap(0x20100000, 3 * PAGE, PROT_READ, MAP_PRIVATE | MAP_FIXED, yield* u.open('/data/lib.so'), 0);
    for (let i = 0; i < 3; i++) yield* u.load32(f + i * PAGE);
    yield* u.store32(yield* u.mmap(0x40000000, 2 << 20, RW, ANON_FIXED | MAP_HUGETLB), 0x77);
    child1 = yield* u.fork(function* (cu: User) {
      for (let i = 0; i < 3; i++) yield* cu.load32(f + i * PAGE);
      yield* cu.store32(c + 3 * PAGE, 0xc1);
      ready1 = true;
      while (alive()) yield* cu.sleep(200_000);
    }, 'child1');
    while (!ready1) yield* u.sleep(100_000);
    child2 = yield* u.fork(function* (cu: User) {
      for (let i = 0; i < 3; i++) yield* cu.load32(f + i * PAGE);
      ready2 = true;
      while (alive()) yield* cu.sleep(200_000);
    }, 'child2');
    while (!ready2) yield* u.sleep(100_000);
  });
  return { ...live, child1, child2 };
}

describe('sharing after fork', () => {
  it('Pss divides each page by its mapcount in fixed point (PSS_SHIFT 12)', () => {
    const k = boot();
    const s = forkScenario(k);
    const smaps = proc_pid_smaps(k, s.task.pid);
    // C in the parent: 3 pages at mapcount 3 and 1 at mapcount 2. In fixed point each page adds
    // (4096 << 12) / mapcount: 3 * 5592405 + 8388608 = 25165823, >> 12 >> 10 = 5 kB (not the
    // 6 kB of exact arithmetic). The parent's PTEs keep D (fork only write-protects them).
    expect(smapsBlock(smaps, 0x20000000)).toMatchObject({
      header: '20000000-20004000 rw-p 00000000 00:00 0 ', Size: 16, Rss: 16, Pss: 5, Pss_Dirty: 5, Shared_Clean: 0, Shared_Dirty: 16, Private_Clean: 0, Private_Dirty: 0, Referenced: 16, Anonymous: 16,
    });
    // F: 3 page-cache pages mapped by three processes: 3 * 5592405 = 16777215 >> 22 = 3 kB.
    const fBlock = { header: '20100000-20103000 r--p 00000000 fe:01 260131                             /data/lib.so', Size: 12, Rss: 12, Pss: 3, Pss_Dirty: 0, Shared_Clean: 12, Shared_Dirty: 0, Private_Clean: 0, Private_Dirty: 0, Referenced: 12, Anonymous: 0 };
    expect(smapsBlock(smaps, 0x20100000)).toMatchObject(fBlock);
    expect(smapsBlock(proc_pid_smaps(k, s.child2), 0x20100000)).toMatchObject(fBlock);
    expect(smapsBlock(proc_pid_smaps(k, s.child1), 0x20100000)).toMatchObject(fBlock);
    // The rollup adds the fixed-point values before shifting: 25165823 + 16777215 = 41943038,
    // >> 22 = 9 kB, one more than the per-VMA values 5 + 3.
    expect(proc_pid_smaps_rollup(k, s.task.pid)).toBe(
      [
        '20000000-40200000 ---p 00000000 00:00 0                                  [rollup]',
        'Rss:                  28 kB',
        'Pss:                   9 kB',
        'Pss_Dirty:             5 kB',
        'Pss_Anon:              5 kB',
        'Pss_File:              3 kB',
        'Pss_Shmem:             0 kB',
        'Shared_Clean:         12 kB',
        'Shared_Dirty:         16 kB',
        'Private_Clean:         0 kB',
        'Private_Dirty:         0 kB',
        'Referenced:           28 kB',
        'Anonymous:            16 kB',
        'KSM:                   0 kB',
        'LazyFree:              0 kB',
        'AnonHugePages:         0 kB',
        'ShmemPmdMapped:        0 kB',
        'FilePmdMapped:         0 kB',
        'Shared_Hugetlb:     2048 kB',
        'Private_Hugetlb:       0 kB',
        'Swap:                  0 kB',
        'SwapPss:               0 kB',
        'Locked:                0 kB',
        '',
      ].join('\n'),
    );
    // H is mapped by three processes: Shared_Hugetlb in each.
    for (const pid of [s.task.pid, s.child1, s.child2]) expect(smapsBlock(proc_pid_smaps(k, pid), 0x40000000)).toMatchObject({ Rss: 0, Shared_Hugetlb: 2048, Private_Hugetlb: 0 });
    s.stop();
  });

  it('pagemap and kpagecount see the sharing', () => {
    const k = boot();
    const s = forkScenario(k);
    const parent = s.task.pid;
    // Unprivileged: no PFN. Shared anonymous pages are present but not exclusive; file pages
    // carry bit 61; child1's own copy of C's page 3 is exclusive.
    expect(pagemap_get_entry(k, parent, 0x20000000)).toBe(0x8000000000000000n);
    expect(pagemap_get_entry(k, parent, 0x20003000)).toBe(0x8000000000000000n);
    expect(pagemap_get_entry(k, s.child1, 0x20003000)).toBe(0x8100000000000000n);
    expect(pagemap_get_entry(k, s.child2, 0x20003000)).toBe(0x8000000000000000n);
    expect(pagemap_get_entry(k, parent, 0x20100000)).toBe(0xa000000000000000n);
    expect(pagemap_get_entry(k, parent, 0x40000000)).toBe(0x8000000000000000n); // shared hugetlb page
    // Privileged: the PFNs, and the mapcounts behind them.
    const c0 = pfnOf(k, parent, 0x20000000);
    const c3 = pfnOf(k, parent, 0x20003000);
    const c3copy = pfnOf(k, s.child1, 0x20003000);
    expect(pfnOf(k, s.child1, 0x20000000)).toBe(c0);
    expect(pfnOf(k, s.child2, 0x20003000)).toBe(c3);
    expect(c3copy).not.toBe(c3);
    const h = pfnOf(k, parent, 0x40000000);
    expect([kpagecount(k, c0), kpagecount(k, c3), kpagecount(k, c3copy), kpagecount(k, pfnOf(k, parent, 0x20101000)), kpagecount(k, h), kpagecount(k, h + 9)]).toEqual([3n, 2n, 1n, 3n, 3n, 3n]);
    s.stop();
  });

  // Linux's fork (copy_present_ptes) keeps the dirty bit of a private page in the child's PTE and
  // makes the child's PTE old (A clear), so the child's smaps shows Shared_Dirty and no
  // references for the pages it inherited.
  it('a child sees its inherited COW pages as dirty and not young (Linux fork semantics)', () => {
    const k = boot();
    const s = forkScenario(k);
    try {
      // child1's C: pages 0-2 shared three ways (dirty, old), page 3 its own copy (dirty, young):
      // Pss = 3 * 5592405 + 16777216 = 33554431 >> 22 = 7 kB, all of it dirty.
      expect(smapsBlock(proc_pid_smaps(k, s.child1), 0x20000000)).toMatchObject({
        Rss: 16, Pss: 7, Pss_Dirty: 7, Shared_Clean: 0, Shared_Dirty: 12, Private_Clean: 0, Private_Dirty: 4, Referenced: 4, Anonymous: 16,
      });
    } finally {
      s.stop();
    }
  });
});

// ================================================================================================
// /proc/PID/pagemap
// ================================================================================================

describe('/proc/PID/pagemap', () => {
  it('encodes present, exclusive and file bits per page; PFNs only for a privileged reader', () => {
    const k = boot();
    const s = mainScenario(k);
    const pid = s.task.pid;
    const E = 0x8100000000000000n; // present | exclusively mapped
    const FE = 0xa100000000000000n; // present | file-page or shared-anon | exclusive
    const cases: [number, bigint][] = [
      [0x10000000, E],
      [0x10001000, E],
      [0x10002000, E],
      [0x10003000, 0n], // PROT_NONE, never touched
      [0x10004000, 0n], // no VMA
      [0x10100000, 0x8000000000000000n], // the zero page: present, no page behind it
      [0x10101000, 0n],
      [0x10200000, FE], // shared anonymous memory counts as file
      [0x10201000, FE],
      [0x10300000, FE],
      [0x10302000, 0n],
      [0x10400000, E], // the COW copy is anonymous
      [0x10401000, FE],
      [0x10500000, 0n], // VM_PFNMAP: handed to the hole callback
      [0x10501000, 0n],
      [0x10600000, FE],
      [0x10601000, FE],
      [0x10900000, 0n],
      [0x40000000, E],
      [0x401ff000, E],
      [0x7ffffffde000, 0n],
      [0x7fffffffe000, E],
    ];
    for (const [addr, want] of cases) expect(pagemap_get_entry(k, pid, addr), addr.toString(16)).toBe(want);
    // Privileged: the same flags with the PFN in bits 0-54.
    for (const [addr, want] of cases) {
      if (!want || addr === 0x10100000 || addr >= 0x40000000) continue;
      expect(pagemap_get_entry(k, pid, addr, true), addr.toString(16)).toBe(want | BigInt(ptePfnAt(k, s.mm, addr)));
    }
    expect(pagemap_get_entry(k, pid, 0x10100000, true)).toBe(0x8000000000000000n | BigInt(k.pages.zeroPfn));
    const pmdp = k.pt.pmd_offset(s.mm, 0x40000000);
    const huge = ptePfn(k.pt.lo(pmdp), k.pt.hi(pmdp));
    expect(pagemap_get_entry(k, pid, 0x40000000, true)).toBe(E | BigInt(huge));
    expect(pagemap_get_entry(k, pid, 0x401ff000, true)).toBe(E | BigInt(huge + 511));
    // The PFN map stays hidden even from a privileged reader.
    expect(pagemap_get_entry(k, pid, 0x10500000, true)).toBe(0n);
    s.stop();
  });

  it('reads ranges like pread, little endian, one u64 per page', () => {
    const k = boot();
    const s = mainScenario(k);
    const b = pagemap_read(k, s.task.pid, (0x10000000 / PAGE) * 8, 5 * 8);
    expect(b.length).toBe(40);
    expect([...b.subarray(0, 8)]).toEqual([0, 0, 0, 0, 0, 0, 0, 0x81]);
    const dv = new DataView(b.buffer);
    expect([0, 1, 2, 3, 4].map((i) => dv.getBigUint64(i * 8, true))).toEqual([0x8100000000000000n, 0x8100000000000000n, 0x8100000000000000n, 0n, 0n]);
    s.stop();
  });

  it('soft-dirty (PTE bit or VM_SOFTDIRTY) and uffd-wp', () => {
    const k = boot();
    const s = mainScenario(k);
    const pid = s.task.pid;
    s.mm.vma_lookup(0x10100000)!.vm_flags |= VM_SOFTDIRTY;
    expect(pagemap_get_entry(k, pid, 0x10101000)).toBe(0x0080000000000000n); // not present, VMA soft-dirty
    expect(pagemap_get_entry(k, pid, 0x10100000)).toBe(0x8080000000000000n);
    k.pt.set_bits(k.pt.pte_offset(s.mm, 0x10000000), _PAGE_UFFD_WP);
    k.pt.set_bits(k.pt.pte_offset(s.mm, 0x10002000), _PAGE_SOFT_DIRTY);
    expect(pagemap_get_entry(k, pid, 0x10000000)).toBe(0x8300000000000000n);
    expect(pagemap_get_entry(k, pid, 0x10002000)).toBe(0x8180000000000000n);
    // VmFlags shows the soft-dirty VMA with "sd".
    expect(smapsBlock(proc_pid_smaps(k, pid), 0x10100000).VmFlags).toBe('VmFlags: rd mr mw me sd ');
    k.pt.clear_bits(k.pt.pte_offset(s.mm, 0x10000000), _PAGE_UFFD_WP);
    k.pt.clear_bits(k.pt.pte_offset(s.mm, 0x10002000), _PAGE_SOFT_DIRTY);
    s.stop();
  });

  it('fails misaligned reads with EINVAL and stops at the end of user space', () => {
    const k = boot();
    const s = mainScenario(k);
    const pid = s.task.pid;
    const last = (0x7ffffffff000 / PAGE - 1) * 8; // the entry of the top user page
    expectErrno(() => pagemap_read(k, pid, 4, 8), 'EINVAL');
    expectErrno(() => pagemap_read(k, pid, 0, 12), 'EINVAL');
    expectErrno(() => pagemap_read(k, pid, -8, 8), 'EINVAL');
    expect(pagemap_read(k, pid, 8, 0).length).toBe(0);
    // A read crossing TASK_SIZE is cut there; one starting at or above it reads nothing.
    const tail = pagemap_read(k, pid, last, 32);
    expect(tail.length).toBe(8);
    expect(new DataView(tail.buffer).getBigUint64(0, true)).toBe(0x8100000000000000n);
    expect(pagemap_read(k, pid, last + 8, 8).length).toBe(0);
    expect(pagemap_read(k, pid, 2 ** 53 - 8, 8).length).toBe(0);
    expect(pagemap_read(k, pid, 1n << 62n, 8).length).toBe(0);
    s.stop();
  });
});

// ================================================================================================
// /proc/PID/status
// ================================================================================================

describe('/proc/PID/status memory lines', () => {
  it('prints task_mem with hand-computed counters', () => {
    const k = boot();
    const s = mainScenario(k);
    // VmSize: A 4 + Z 2 + S 2 + F 3 + W 2 + P 2 + I 2 + L 2 + N 1 + X 1 + heap 3 + H 512 +
    // stack 33 = 569 pages; VmPeak adds the 8 unmapped pages: 577. VmHWM: 64 kB resident plus the
    // 16 kB written to the unmapped pages. VmData: writable private non-stack VMAs: A 1 + 1, W 2,
    // L 2, N 1, heap 3, H 512 = 522 pages. VmLib: X, executable and not writable (VmExe is 0:
    // there is no executable image). VmPTE: 7 page tables, 3 PMD tables, 2 PUD tables = 48 kB.
    const expected = [
      'VmPeak:\t    2308 kB',
      'VmSize:\t    2276 kB',
      'VmLck:\t       8 kB',
      'VmPin:\t       0 kB',
      'VmHWM:\t      80 kB',
      'VmRSS:\t      64 kB',
      'RssAnon:\t      36 kB',
      'RssFile:\t      20 kB',
      'RssShmem:\t       8 kB',
      'VmData:\t    2088 kB',
      'VmStk:\t     132 kB',
      'VmExe:\t       0 kB',
      'VmLib:\t       4 kB',
      'VmPTE:\t      48 kB',
      'VmSwap:\t       0 kB',
      'HugetlbPages:\t    2048 kB',
    ];
    expect(task_mem(k, s.task.pid)).toBe(expected.join('\n') + '\n');
    // procps reads "VmRSS:\t%lu kB" with sscanf.
    const rss = /^VmRSS:\s+(\d+) kB$/m.exec(task_mem(k, s.tid));
    expect(Number(rss![1])).toBe(64);
    s.stop();
  });
});

// ================================================================================================
// /proc/kpagecount and /proc/kpageflags
// ================================================================================================

describe('/proc/kpagecount and /proc/kpageflags', () => {
  it('report each frame by pfn', () => {
    const k = boot();
    const s = mainScenario(k);
    const pid = s.task.pid;
    const a = pfnOf(k, pid, 0x10000000);
    const s0 = pfnOf(k, pid, 0x10200000);
    const s1 = pfnOf(k, pid, 0x10201000);
    const f0 = pfnOf(k, pid, 0x10300000);
    const i0 = pfnOf(k, pid, 0x10600000);
    const h = pfnOf(k, pid, 0x40000000);
    const pgd = s.mm.pgd / PAGE;
    let free = k.pages.nframes - 1;
    while (!k.pages.isFree(free)) free--;
    // Flag words, bit by bit: ANON 12, MMAP 11, SWAPBACKED 14, DIRTY 4, COMPOUND_HEAD 15,
    // COMPOUND_TAIL 16, HUGE 17, ZERO_PAGE 24, RESERVED 32, PGTABLE 26, BUDDY 10.
    expect(kpageflags(k, a)).toBe(0x5800n);
    expect(kpageflags(k, k.pages.zeroPfn)).toBe(0x101000000n);
    expect(kpageflags(k, s0)).toBe(0x4810n);
    expect(kpageflags(k, s1)).toBe(0x4800n);
    expect(kpageflags(k, f0)).toBe(0x800n);
    expect(kpageflags(k, i0)).toBe(0x800n);
    expect(kpageflags(k, h)).toBe(0x2d800n);
    expect(kpageflags(k, h + 1)).toBe(0x35800n);
    expect(kpageflags(k, pgd)).toBe(0x4000000n);
    expect(kpageflags(k, free)).toBe(0x400n);
    // A PFN-mapped driver frame is neither mapped (no rmap) nor anything else…
    const p0 = s.pfnFrames[0]!;
    expect([kpageflags(k, p0), kpagecount(k, p0)]).toEqual([0n, 0n]);
    // …until it carries flags: LOCKED 0, REFERENCED 2, LRU 5, SLAB 7, PRIVATE 35.
    k.pages.flags[p0] |= PG_locked | PG_referenced | PG_lru | PG_slab | PG_private;
    expect(kpageflags(k, p0)).toBe(0x8000000a5n);
    k.pages.flags[p0] &= ~(PG_locked | PG_referenced | PG_lru | PG_slab | PG_private);
    expect([a, k.pages.zeroPfn, s0, i0, h, h + 511, free].map((p) => kpagecount(k, p))).toEqual([1n, 0n, 1n, 1n, 1n, 1n, 0n]);
    // Several frames in one read.
    const both = kpageflags_read(k, h * 8, 16);
    expect([new DataView(both.buffer).getBigUint64(0, true), new DataView(both.buffer).getBigUint64(8, true)]).toEqual([0x2d800n, 0x35800n]);
    s.stop();
  });

  it('an unmapped page-cache page keeps what zap recorded: PG_referenced, PG_dirty', () => {
    const k = boot();
    const inode = regularFile(k, '/data/lib.so');
    const s = start(k, function* (u) {
      const fd = yield* u.open('/data/lib.so');
      const r = yield* u.mmap(0x10000000, PAGE, PROT_READ, MAP_PRIVATE | MAP_FIXED, fd, 0);
      yield* u.load32(r);
      yield* u.munmap(r, PAGE);
      const w = yield* u.mmap(0x10000000, PAGE, RW, MAP_SHARED | MAP_FIXED, fd, PAGE);
      yield* u.store32(w, 1);
      yield* u.munmap(w, PAGE);
    });
    const p0 = inode.i_mapping.i_pages.get(0)!;
    const p1 = inode.i_mapping.i_pages.get(1)!;
    expect([kpageflags(k, p0), kpagecount(k, p0)]).toEqual([0x4n, 0n]);
    expect([kpageflags(k, p1), kpagecount(k, p1)]).toEqual([0x14n, 0n]);
    s.stop();
  });

  it('reject misaligned reads and end at the last frame', () => {
    const k = boot();
    const n = k.pages.nframes;
    expectErrno(() => kpageflags_read(k, 3, 8), 'EINVAL');
    expectErrno(() => kpagecount_read(k, 8, 5), 'EINVAL');
    expect(kpageflags_read(k, n * 8, 8).length).toBe(0);
    expect(kpagecount_read(k, (n - 1) * 8, 16).length).toBe(8);
    expect(kpageflags_read(k, 0, 0).length).toBe(0);
  });
});

// ================================================================================================
// Who can be read
// ================================================================================================

describe('targets', () => {
  it('an unknown pid is ENOENT for every view', () => {
    const k = boot();
    for (const f of [
      () => proc_pid_maps(k, 999),
      () => proc_pid_smaps(k, 999),
      () => proc_pid_smaps_rollup(k, 999),
      () => pagemap_read(k, 999, 0, 8),
      () => task_mem(k, 999),
    ]) expectErrno(f, 'ENOENT');
  });

  it('a kernel thread has no address space: empty files, ESRCH from smaps_rollup', () => {
    const k = boot();
    let release = false;
    const kt = k.kthread('kworker/0:1', function* () {
      while (!release) yield* k.sleepFor(200_000);
    });
    k.run({ untilCycles: 1_000_000 });
    expect(proc_pid_maps(k, kt.pid)).toBe('');
    expect(proc_pid_smaps(k, kt.pid)).toBe('');
    expect(task_mem(k, kt.pid)).toBe('');
    expect(pagemap_read(k, kt.pid, 0, 8).length).toBe(0);
    expectErrno(() => proc_pid_smaps_rollup(k, kt.pid), 'ESRCH');
    release = true;
    k.run();
  });

  it('after exit the pid is gone, and the old mm reads as empty', () => {
    const k = boot();
    const s = mainScenario(k);
    const pid = s.task.pid;
    const mm = s.mm;
    s.stop();
    expectErrno(() => proc_pid_maps(k, pid), 'ENOENT');
    expect(proc_pid_maps(k, mm)).toBe('');
    expect(pagemap_read(k, mm, 0, 8).length).toBe(0);
    expectErrno(() => proc_pid_smaps_rollup(k, mm), 'ESRCH');
  });
});
