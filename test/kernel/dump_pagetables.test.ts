// Golden tests of the page-table dump (debugfs page_tables/current_user format). Each expected
// line is written out by hand from the rules of arch/x86/mm/dump_pagetables.c and mm/ptdump.c —
// "0x%016lx-0x%016lx   %9lu%c " then 30 flag columns (USR/RW-ro/PWT/PCD/PSE/PAT/GLB/NX-x) or 30
// spaces, then the level name; ranges merge while the entry flags (address bits stripped), the
// effective protection and the level stay equal — for a scenario whose page tables are known
// exactly: MAP_FIXED mappings in the first gigabyte, a hugetlb page at 1 GiB, nothing else.
import { describe, expect, it } from 'vitest';
import { Kernel } from '../../kernel/kernel.ts';
import type { KGen, Task } from '../../kernel/sched/core.ts';
import type { User } from '../../kernel/uapi.ts';
import { MAP_ANONYMOUS, MAP_FIXED, MAP_HUGETLB, MAP_PRIVATE, MAP_SHARED, PROT_EXEC, PROT_NONE, PROT_READ, PROT_WRITE } from '../../kernel/mm/mmap.ts';
import { File, Inode, type FileOperations } from '../../kernel/fs/file.ts';
import { remap_pfn_range } from '../../kernel/mm/memory.ts';
import { GFP_KERNEL, __GFP_ZERO } from '../../kernel/mm/page_alloc.ts';
import type { VmArea } from '../../kernel/mm/mm_types.ts';
import type { PgProt } from '../../kernel/arch/x86/pgtable.ts';
import { PTE_G, PTE_HI_XD, PTE_P, PTE_PAT, PTE_PCD, PTE_PWT, PTE_RW, PTE_US } from '../../hw/pte.ts';
import { SyscallError } from '../../kernel/errno.ts';
import { ptdump_check_wx, ptdump_walk_pgd_level_debugfs } from '../../kernel/arch/x86/mm/dump_pagetables.ts';

const PAGE = 4096;
const RW = PROT_READ | PROT_WRITE;
const ANON_FIXED = MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED;

/** Run the system until `cond` holds (virtual time, in steps of 2M cycles). */
function settle(k: Kernel, cond: () => boolean): void {
  for (let t = 2_000_000; !cond(); t += 2_000_000) {
    if (t > 2_000_000_000) throw new Error('the scenario did not get ready');
    k.run({ untilCycles: t });
  }
}

/** Start a process running `body`, then keep it alive (sleeping) until stop(). */
function start(k: Kernel, body: (u: User) => KGen<void>): { task: Task; stop: () => void } {
  let ready = false;
  let release = false;
  let failure: unknown = null;
  const task = k.spawn(
    function* (u: User) {
      try {
        yield* body(u);
      } catch (e) {
        failure = e;
      }
      ready = true;
      while (!release) yield* u.sleep(200_000);
    },
    { comm: 'ptdump' },
  );
  settle(k, () => ready);
  if (failure) throw failure;
  return {
    task,
    stop: () => {
      release = true;
      k.run();
    },
  };
}

/** A character device whose ->mmap maps `nr` driver frames with remap_pfn_range and `prot`. */
function pfnDevice(k: Kernel, path: string, nr: number, prot: PgProt): void {
  const pfns: number[] = [];
  for (let i = 0; i < nr; i++) pfns.push(k.pages.allocPages(GFP_KERNEL | __GFP_ZERO, 0, `${path} frames`));
  const fops: FileOperations = {
    name: path,
    *mmap(_f: File, vma: VmArea): KGen<number> {
      for (let i = 0; i < nr && i < vma.pages; i++) {
        const r = yield* remap_pfn_range(k, vma, vma.vm_start + i * PAGE, pfns[i]!, PAGE, prot);
        if (r) return r;
      }
      return 0;
    },
  };
  const inode = new Inode(k, 'chr', [0, 5]);
  k.devices.set(path, { open: () => new File(k, inode, fops, path) });
}

/**
 * The scenario (4-level paging):
 *   0x400000  2 pages rw, written          -> P|US|RW|A|D, NX
 *   0x402000  1 page  r-x, read            -> the zero page: P|US|A|special, executable
 *   0x403000  1 page  rw, read only        -> the zero page: P|US|A|special, NX (read-only)
 *   0x404000  1 page  rw written, then mprotect(PROT_READ): P|US|A|D, NX — looks like the page
 *             before it, but its flags differ (D set, special clear), so a new range begins
 *   0x405000  1 page  rw written, then mprotect(PROT_NONE): mmulab keeps it present without US
 *   0x600000  2 pages of a PFN map with PWT|PCD|PAT|G in its protection
 *   0x800000  1 page  rwx, written          -> W+X
 *   0x40000000 one 2 MiB hugetlb page, written -> a PMD leaf with PSE
 */
function scenario(k: Kernel): { task: Task; stop: () => void } {
  pfnDevice(k, '/dev/uncached', 2, { lo: PTE_P | PTE_RW | PTE_US | PTE_PWT | PTE_PCD | PTE_PAT | PTE_G, hi: PTE_HI_XD });
  return start(k, function* (u) {
    const a = yield* u.mmap(0x400000, 2 * PAGE, RW, ANON_FIXED);
    yield* u.store32(a, 1);
    yield* u.store32(a + PAGE, 2);
    yield* u.load32(yield* u.mmap(0x402000, PAGE, PROT_READ | PROT_EXEC, ANON_FIXED));
    yield* u.load32(yield* u.mmap(0x403000, PAGE, RW, ANON_FIXED));
    const m = yield* u.mmap(0x404000, 2 * PAGE, RW, ANON_FIXED);
    yield* u.store32(m, 3);
    yield* u.store32(m + PAGE, 4);
    yield* u.mprotect(m, PAGE, PROT_READ);
    yield* u.mprotect(m + PAGE, PAGE, PROT_NONE);
    const fd = yield* u.open('/dev/uncached');
    yield* u.mmap(0x600000, 2 * PAGE, RW, MAP_SHARED | MAP_FIXED, fd, 0);
    yield* u.store32(yield* u.mmap(0x800000, PAGE, RW | PROT_EXEC, ANON_FIXED), 5);
    yield* u.store32(yield* u.mmap(0x40000000, 2 << 20, RW, ANON_FIXED | MAP_HUGETLB), 6);
  });
}

const EXPECTED = [
  '---[ User Space ]---',
  // PD entries 0 and 1 of the first gigabyte are empty: a hole at the pmd level.
  '0x0000000000000000-0x0000000000400000           4M                               pmd',
  '0x0000000000400000-0x0000000000402000           8K USR RW                     NX pte',
  '0x0000000000402000-0x0000000000403000           4K USR ro                     x  pte',
  '0x0000000000403000-0x0000000000404000           4K USR ro                     NX pte',
  '0x0000000000404000-0x0000000000405000           4K USR ro                     NX pte',
  '0x0000000000405000-0x0000000000406000           4K     ro                     NX pte',
  // The rest of that page table: empty PTEs are noted one by one and merge.
  '0x0000000000406000-0x0000000000600000        2024K                               pte',
  '0x0000000000600000-0x0000000000602000           8K USR RW PWT PCD     PAT GLB NX pte',
  '0x0000000000602000-0x0000000000800000        2040K                               pte',
  '0x0000000000800000-0x0000000000801000           4K USR RW                     x  pte',
  '0x0000000000801000-0x0000000000a00000        2044K                               pte',
  '0x0000000000a00000-0x0000000040000000        1014M                               pmd',
  '0x0000000040000000-0x0000000040200000           2M USR RW         PSE         NX pmd',
  '0x0000000040200000-0x0000000080000000        1022M                               pmd',
  '0x0000000080000000-0x0000008000000000         510G                               pud',
  // PML4 entries 1-255 are empty (pgd holes: the p4d is folded); the range is closed by the first
  // entry of the kernel walk range at GUARD_HOLE_END_ADDR.
  '0x0000008000000000-0xffff880000000000   17179745792G                               pgd',
  '---[ Kernel Space ]---',
];

describe('ptdump (page_tables/current_user)', () => {
  it('prints the hand-derived dump of a known address space', () => {
    const k = new Kernel({ cpus: 2, memoryBytes: 64 << 20 });
    const { task, stop } = scenario(k);
    // The golden lines themselves obey the layout: level names start at column 81.
    for (const l of EXPECTED) if (l.startsWith('0x') && !l.includes('17179745792G')) expect(l.length, l).toBe(84);
    expect(ptdump_walk_pgd_level_debugfs(k, task.pid)).toBe(EXPECTED.join('\n') + '\n');
    // The same through the mm.
    expect(ptdump_walk_pgd_level_debugfs(k, task.mm!)).toBe(EXPECTED.join('\n') + '\n');
    stop();
    expect(k.reports.reports.map((r) => r.title)).toEqual([]);
  });

  it('lines tile the address space: each range starts where the previous one ended', () => {
    const k = new Kernel({ cpus: 2, memoryBytes: 64 << 20 });
    const { task, stop } = scenario(k);
    const re = /^0x([0-9a-f]{16})-0x([0-9a-f]{16})   ( *\d+)([BKMGTPE]) (.{30})(pgd|p4d|pud|pmd|pte)$/;
    let prevEnd = 0n;
    let lines = 0;
    for (const line of ptdump_walk_pgd_level_debugfs(k, task.pid).split('\n')) {
      if (line === '' || line.startsWith('---[')) continue;
      const m = re.exec(line);
      expect(m, line).not.toBeNull();
      const [s, e, n, unit] = [BigInt('0x' + m![1]), BigInt('0x' + m![2]), BigInt(m![3]!.trim()), m![4]!];
      expect(s).toBe(prevEnd);
      expect(e - s).toBe(n << BigInt(10 * 'BKMGTPE'.indexOf(unit)));
      prevEnd = e;
      lines++;
    }
    expect(lines).toBe(EXPECTED.length - 2);
    stop();
  });

  it('a change of a bit that is not printed (A) still starts a new range', () => {
    const k = new Kernel({ cpus: 2, memoryBytes: 64 << 20 });
    const { task, stop } = scenario(k);
    // Clear the accessed bit of the second of the two written pages at 0x400000.
    const ptep = k.pt.pte_offset(task.mm!, 0x401000);
    k.pt.clear_bits(ptep, 1 << 5);
    const dump = ptdump_walk_pgd_level_debugfs(k, task.pid);
    expect(dump).toContain(
      [
        '0x0000000000400000-0x0000000000401000           4K USR RW                     NX pte',
        '0x0000000000401000-0x0000000000402000           4K USR RW                     NX pte',
      ].join('\n'),
    );
    stop();
  });

  it('the effective protection (USER and RW ANDed down the walk, NX ORed) splits ranges and decides W+X', () => {
    const k = new Kernel({ cpus: 2, memoryBytes: 64 << 20 });
    const { task, stop } = start(k, function* (u) {
      // Four written pages across the boundary of two page tables (PMD entries 1 and 2).
      const a = yield* u.mmap(0x3fe000, 4 * PAGE, RW, ANON_FIXED);
      for (let i = 0; i < 4; i++) yield* u.store32(a + i * PAGE, i);
      yield* u.store32(yield* u.mmap(0x800000, PAGE, RW | PROT_EXEC, ANON_FIXED), 5);
    });
    const mm = task.mm!;
    const lines = [
      '0x0000000000000000-0x0000000000200000           2M                               pmd',
      '0x0000000000200000-0x00000000003fe000        2040K                               pte',
      '0x00000000003fe000-0x0000000000402000          16K USR RW                     NX pte',
      '0x0000000000402000-0x0000000000600000        2040K                               pte',
      '0x0000000000600000-0x0000000000800000           2M                               pmd',
      '0x0000000000800000-0x0000000000801000           4K USR RW                     x  pte',
    ];
    expect(ptdump_walk_pgd_level_debugfs(k, task.pid)).toContain('---[ User Space ]---\n' + lines.join('\n') + '\n');
    expect(ptdump_check_wx(k, task.pid).wx_pages).toBe(1);
    // Read-only in the PMD entry above 0x400000: its leaves print the same flags, but their
    // effective protection differs from the pages before 0x400000, so the range splits.
    k.pt.clear_bits(k.pt.pmd_offset(mm, 0x400000), 1 << 1);
    expect(ptdump_walk_pgd_level_debugfs(k, task.pid)).toContain(
      [
        '0x00000000003fe000-0x0000000000400000           8K USR RW                     NX pte',
        '0x0000000000400000-0x0000000000402000           8K USR RW                     NX pte',
      ].join('\n'),
    );
    // NX in the PMD entry above the RWX page: no longer executable, so no W+X page.
    const pmd = k.pt.pmd_offset(mm, 0x800000);
    k.machine.phys.i32[pmd / 4 + 1]! |= PTE_HI_XD;
    expect(ptdump_check_wx(k, task.pid)).toEqual({ wx_pages: 0, message: 'x86/mm: Checked W+X mappings: passed, no W+X pages found.' });
    k.machine.phys.i32[pmd / 4 + 1]! &= ~PTE_HI_XD;
    k.pt.set_bits(k.pt.pmd_offset(mm, 0x400000), 1 << 1);
    stop();
  });

  it('an address space without mappings is one pgd hole', () => {
    const k = new Kernel({ cpus: 2, memoryBytes: 64 << 20 });
    const { task, stop } = start(k, function* () {});
    expect(ptdump_walk_pgd_level_debugfs(k, task.pid)).toBe(
      ['---[ User Space ]---', '0x0000000000000000-0xffff880000000000    16777096T                               pgd', '---[ Kernel Space ]---', ''].join('\n'),
    );
    stop();
  });

  it('counts W+X pages as the boot-time check reports them', () => {
    const k = new Kernel({ cpus: 2, memoryBytes: 64 << 20 });
    const { task, stop } = scenario(k);
    expect(ptdump_check_wx(k, task.pid)).toEqual({ wx_pages: 1, message: 'x86/mm: Checked W+X mappings: FAILED, 1 W+X pages found.' });
    stop();
    const k2 = new Kernel({ cpus: 2, memoryBytes: 64 << 20 });
    const s2 = start(k2, function* (u) {
      yield* u.store32(yield* u.mmap(0x400000, PAGE, RW, ANON_FIXED), 1);
    });
    expect(ptdump_check_wx(k2, s2.task.pid)).toEqual({ wx_pages: 0, message: 'x86/mm: Checked W+X mappings: passed, no W+X pages found.' });
    s2.stop();
  });

  it('unknown pids fail with ENOENT; a kernel thread has no user page tables to dump', () => {
    const k = new Kernel({ cpus: 2, memoryBytes: 64 << 20 });
    expect(() => ptdump_walk_pgd_level_debugfs(k, 4242)).toThrow(SyscallError);
    try {
      ptdump_walk_pgd_level_debugfs(k, 4242);
    } catch (e) {
      expect((e as SyscallError).code).toBe('ENOENT');
    }
    let release = false;
    const kt = k.kthread('kworker/0:1', function* () {
      while (!release) yield* k.sleepFor(200_000);
    });
    k.run({ untilCycles: 1_000_000 });
    expect(ptdump_walk_pgd_level_debugfs(k, kt.pid)).toBe('');
    release = true;
    k.run();
  });
});
