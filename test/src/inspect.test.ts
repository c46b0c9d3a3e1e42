/**
 * `mmulab maps|smaps|pagemap|ptdump` end to end: the views of a scenario's process in Linux's
 * formats (maps lines as /proc prints them, name at column 73; smaps fields in order; the x86
 * ptdump line layout), taken at the end of the programs or at a scheduling step, of the process
 * picked by --pid or --process; the decoded pagemap agrees with what the workload touched; and
 * bad choices exit 2 with one line.
 */

import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { main } from '../../src/cli.ts';

async function run(args: string[]) {
  let out = '';
  let err = '';
  const code = await main(args, { out: (s) => void (out += s), err: (s) => void (err += s) });
  return { code, out, err };
}

const FIXTURE = join(import.meta.dirname, '..', 'fixtures', 'lackey-true.txt');

/** /proc/PID/maps: "start-end perms offset major:minor inode", then the name at column 73, or one trailing space. */
const MAPS_LINE = /^([0-9a-f]{8,})-([0-9a-f]{8,}) [r-][w-][x-][sp] [0-9a-f]{8,} [0-9a-f]{2,}:[0-9a-f]{2,} \d+ (?:$| +\S.*$)/;

function checkMapsFormat(text: string): string[] {
  const lines = text.split('\n');
  expect(lines.pop()).toBe('');
  let prevEnd = 0;
  for (const l of lines) {
    const m = MAPS_LINE.exec(l);
    expect(m, l).not.toBeNull();
    const [start, end] = [parseInt(m![1]!, 16), parseInt(m![2]!, 16)];
    expect(start).toBeLessThan(end);
    expect(start).toBeGreaterThanOrEqual(prevEnd);
    expect(start % 4096 + (end % 4096)).toBe(0);
    prevEnd = end;
    if (!l.endsWith(' ')) {
      // seq_pad: the name starts at column 73 (0-based), after at least one space.
      expect(l[72], l).toBe(' ');
      expect(l[73], l).not.toBe(' ');
    }
  }
  return lines;
}

describe('mmulab maps', () => {
  it("prints the binder server's maps at the end of its program", async () => {
    const r = await run(['maps', 'binder', '--iterations', '3', '--memory', '32']);
    expect(r.err).toBe('');
    expect(r.code).toBe(0);
    const lines = checkMapsFormat(r.out);
    // libbinder's scratch area (anonymous, trailing space) and the binder mapping, read-only private.
    expect(lines.some((l) => / rw-p 00000000 00:00 0 $/.test(l))).toBe(true);
    const binder = lines.find((l) => l.endsWith('/dev/binder'))!;
    expect(binder).toMatch(/^[0-9a-f]+-[0-9a-f]+ r--p 00000000 [0-9a-f]{2}:[0-9a-f]{2} \d+ +\/dev\/binder$/);
    const [s, e] = binder.split(' ')[0]!.split('-').map((x) => parseInt(x, 16));
    expect(e! - s!).toBe((1 << 20) - 2 * 4096); // BINDER_VM_SIZE
  });

  it('picks a process by --process and by --pid; both name the same one', async () => {
    const args = ['maps', 'fork', '--pages', '16', '--accesses', '50', '--memory', '32'];
    const byName = await run([...args, '--process', 'fork-child']);
    expect(byName.code).toBe(0);
    checkMapsFormat(byName.out);
    const json = JSON.parse((await run([...args, '--process', 'fork-child', '--json'])).out) as { pid: number; comm: string; vmas: { start: number; end: number; perms: string; name: string | null }[]; text: string };
    expect(json.comm).toBe('fork-child');
    expect(json.text).toBe(byName.out);
    expect(json.vmas).toEqual([expect.objectContaining({ perms: 'rw-p', name: null })]);
    expect(json.vmas[0]!.end - json.vmas[0]!.start).toBe(16 * 4096);
    const byPid = await run([...args, '--pid', String(json.pid)]);
    expect(byPid.out).toBe(byName.out);
  });

  it('maps a lackey trace as the touched ranges, read-write-execute where it fetched', async () => {
    const r = await run(['maps', '--lackey', FIXTURE, '--json']);
    expect(r.code).toBe(0);
    const doc = JSON.parse(r.out) as { comm: string; vmas: { start: number; end: number; perms: string }[] };
    expect(doc.comm).toBe('lackey');
    expect(doc.vmas.some((v) => v.perms === 'rwxp')).toBe(true);
    expect(doc.vmas.some((v) => v.perms === 'rw-p')).toBe(true);
    const run2 = JSON.parse((await run(['run', '--lackey', FIXTURE, '--json'])).out) as { lackey: { pages: number } };
    expect(doc.vmas.reduce((a, v) => a + (v.end - v.start) / 4096, 0)).toBe(run2.lackey.pages);
  });

  it('--at-step looks at the processes mid-run', async () => {
    const args = ['sequential', '--pages', '64', '--accesses', '4096', '--writes', '1'];
    const early = await run(['maps', ...args, '--at-step', '0']);
    expect(early.code).toBe(0);
    expect(early.out).toBe(''); // spawned, nothing mapped yet
    const pages = async (extra: string[]) => JSON.parse((await run(['pagemap', ...args, ...extra, '--json'])).out) as { at: { reason: string; steps: number }; pages: unknown[] };
    const end = await pages([]);
    expect(end.at).toEqual({ reason: 'end', steps: expect.any(Number) });
    expect(end.pages).toHaveLength(64);
    const mid = await pages(['--at-step', '4']);
    expect(mid.at).toEqual({ reason: 'step', steps: 4 });
    expect(mid.pages.length).toBeGreaterThan(0);
    expect(mid.pages.length).toBeLessThan(64);
  });
});

describe('mmulab smaps', () => {
  it("shows the fork parent's frames shared with its child: Pss below Rss", async () => {
    // The child stores to a few pages only: the rest stay shared with the parent.
    const r = await run(['smaps', 'fork', '--pages', '32', '--accesses', '20', '--writes', '0.5', '--memory', '32']);
    expect(r.code).toBe(0);
    const lines = r.out.split('\n');
    expect(lines[0]).toMatch(MAPS_LINE);
    const fields = lines.slice(1, -2).map((l) => /^(\w+): +(\d+)(?: kB)?$/.exec(l)!);
    for (const [i, f] of fields.entries()) expect(f, lines[i + 1]).not.toBeNull();
    expect(fields.map((f) => f[1])).toEqual([
      'Size', 'KernelPageSize', 'MMUPageSize', 'Rss', 'Pss', 'Pss_Dirty', 'Shared_Clean', 'Shared_Dirty', 'Private_Clean', 'Private_Dirty', 'Referenced',
      'Anonymous', 'KSM', 'LazyFree', 'AnonHugePages', 'ShmemPmdMapped', 'FilePmdMapped', 'Shared_Hugetlb', 'Private_Hugetlb', 'Swap', 'SwapPss', 'Locked', 'THPeligible',
    ]);
    // Values right-aligned in 8 columns after a 16-character label (Private_Hugetlb: 17 and 7).
    for (const l of lines.slice(1, -2)) expect(l.indexOf(':') < 16 ? l.slice(16).match(/^ *\d+/)![0].length : 8).toBe(8);
    expect(lines[lines.length - 2]).toBe('VmFlags: rd wr mr mw me ac ');
    const v = Object.fromEntries(fields.map((f) => [f[1], Number(f[2])]));
    expect(v.Rss).toBe(128);
    expect(v.Shared_Dirty).toBeGreaterThan(64);
    expect(v.Private_Dirty).toBeGreaterThan(0);
    expect(v.Private_Dirty! + v.Shared_Dirty!).toBe(v.Rss);
    expect(v.Pss).toBe(v.Private_Dirty! + v.Shared_Dirty! / 2);
  });

  it('--rollup prints smaps_rollup; --json gives the fields as numbers', async () => {
    const r = await run(['smaps', 'sequential', '--pages', '16', '--accesses', '1024', '--writes', '1', '--rollup', '--json']);
    expect(r.code).toBe(0);
    const doc = JSON.parse(r.out) as { view: string; vmas: { name: string; fields: Record<string, number> }[]; text: string };
    expect(doc.view).toBe('smaps_rollup');
    expect(doc.text.split('\n')[0]).toMatch(/^[0-9a-f]+-[0-9a-f]+ ---p 00000000 00:00 0 +\[rollup\]$/);
    expect(doc.vmas).toHaveLength(1);
    expect(doc.vmas[0]!.name).toBe('[rollup]');
    expect(doc.vmas[0]!.fields).toMatchObject({ Rss: 64, Pss: 64, Pss_Anon: 64, Private_Dirty: 64, Anonymous: 64 });
  });
});

describe('mmulab pagemap', () => {
  it('decodes one entry per touched page: present, exclusive, a PFN each', async () => {
    const r = await run(['pagemap', 'sequential', '--pages', '8', '--accesses', '256', '--writes', '1', '--json']);
    expect(r.code).toBe(0);
    const doc = JSON.parse(r.out) as { pages: { addr: string; entry: string; pfn: number; flags: string[] }[]; text: string };
    // 256 × 64 bytes: the first 4 pages of the region.
    expect(doc.pages).toHaveLength(4);
    const pfns = new Set(doc.pages.map((p) => p.pfn));
    expect(pfns.size).toBe(4);
    for (const p of doc.pages) {
      expect(p.flags).toEqual(['present', 'exclusive']);
      expect(BigInt('0x' + p.entry)).toBe((1n << 63n) | (1n << 56n) | BigInt(p.pfn));
    }
    const addrs = doc.pages.map((p) => parseInt(p.addr, 16));
    expect(addrs).toEqual([0, 1, 2, 3].map((i) => addrs[0]! + i * 4096));
    const lines = doc.text.trimEnd().split('\n');
    expect(lines[0]).toMatch(/^# \/proc\/1\/pagemap of sequential, decoded/);
    for (const l of lines.slice(2)) expect(l).toMatch(/^ {2}[0-9a-f]{12} {2}[0-9a-f]{16} {2}0x[0-9a-f]+ +present,exclusive$/);
  });

  it('--all lists the untouched pages of the VMAs as zero entries', async () => {
    const r = await run(['pagemap', 'sequential', '--pages', '8', '--accesses', '256', '--writes', '1', '--all', '--json']);
    const doc = JSON.parse(r.out) as { pages: { entry: string; pfn: number | null; flags: string[] }[] };
    expect(doc.pages).toHaveLength(8);
    expect(doc.pages.slice(4).every((p) => p.entry === '0'.repeat(16) && p.pfn === null && p.flags.length === 0)).toBe(true);
  });

  it("shows the fork child's copied pages as exclusive and the still-shared ones without the bit", async () => {
    const doc = JSON.parse((await run(['pagemap', 'fork', '--pages', '16', '--accesses', '40', '--writes', '0.5', '--process', 'fork-child', '--json', '--memory', '32'])).out) as {
      pages: { flags: string[] }[];
    };
    expect(doc.pages).toHaveLength(16);
    const excl = doc.pages.filter((p) => p.flags.includes('exclusive')).length;
    expect(excl).toBeGreaterThan(0);
    expect(excl).toBeLessThan(16);
  });
});

describe('mmulab ptdump', () => {
  it('prints the x86 page-table dump of the process', async () => {
    const r = await run(['ptdump', 'sequential', '--pages', '16', '--accesses', '1024', '--writes', '1']);
    expect(r.code).toBe(0);
    const lines = r.out.trimEnd().split('\n');
    expect(lines[0]).toBe('---[ User Space ]---');
    expect(lines[lines.length - 1]).toBe('---[ Kernel Space ]---');
    for (const l of lines.slice(1, -1)) expect(l).toMatch(/^0x[0-9a-f]{16}-0x[0-9a-f]{16} {3}[ \d]{9}[BKMGTPE] (?:USR |    )(?:RW |ro )|^0x[0-9a-f]{16}-0x[0-9a-f]{16} {3}[ \d]{9}[BKMGTPE] {31}(?:pgd|p4d|pud|pmd|pte)$/);
    // The 16 written pages: one run of user, writable, non-executable 4 KiB entries.
    expect(lines.some((l) => /^0x[0-9a-f]{16}-0x[0-9a-f]{16} {10}64K USR RW {21}NX pte$/.test(l))).toBe(true);
  });
});

describe('inspection: bad choices', () => {
  const cases: [string[], RegExp][] = [
    [['maps', 'binder', '--process', 'nosuch', '--iterations', '1', '--memory', '32'], /--process nosuch: not running at the end \(processes: 1 servicemanager, 2 binder_server, 3 binder_client\)/],
    [['maps', '--pid', '99', '--pages', '4', '--accesses', '10'], /--pid 99: no such process at the end \(processes: 1 sequential\)/],
    [['maps', '--pid', '1', '--process', 'x'], /give either --pid or --process/],
    [['smaps', 'bogus'], /unknown workload "bogus"/],
    [['pagemap', '--at-step', '-1'], /--at-step must be between 0/],
  ];
  for (const [args, re] of cases) {
    it(`${args.join(' ')} → exit 2`, async () => {
      const r = await run(args);
      expect(r.code).toBe(2);
      expect(r.out).toBe('');
      expect(r.err).toMatch(re);
    });
  }

  it("a module's process that died before its end is a finding (exit 1), not bad usage", async () => {
    const file = join(mkdtempSync(join(tmpdir(), 'mmulab-inspect-')), 'crash.mjs');
    writeFileSync(file, 'export default function* (u) { yield* u.store32(0x30000, 1); }\n');
    const r = await run(['maps', '--module', file]);
    expect(r.code).toBe(1);
    expect(r.out).toBe('');
    expect(r.err).toMatch(/^mmulab: crash\[1\] did not reach the end of its program: SIGSEGV \(SEGV_MAPERR\) at 0x30000/);
  });

  it('--help shows examples', async () => {
    for (const view of ['maps', 'smaps', 'pagemap', 'ptdump']) {
      const r = await run([view, '--help']);
      expect(r.code).toBe(0);
      expect(r.out).toContain(`Usage: mmulab ${view} [options] [workload]`);
      expect(r.out).toMatch(new RegExp(`Examples:\\n {2}mmulab ${view} `));
    }
  });
});
