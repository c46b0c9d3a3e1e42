/**
 * `mmulab run` end to end: every built-in workload runs and reports TLB levels whose hit rates
 * are in [0, 1] and add up with the CPUs' counters; the numbers follow from the workloads (a
 * sequential pass faults each page once, fork copies on write, binder completes its
 * transactions); a lackey trace replays with exactly the trace's fetches, loads, stores and
 * modifies; a module's programs run as processes; --trace writes ftrace text and Chrome JSON;
 * bad input exits 2 with one line naming the problem (and the line of a bad trace).
 */

import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { main } from '../../src/cli.ts';
import type { RunResult, TlbLevel } from '../../src/experiments/run.ts';

async function run(args: string[]) {
  let out = '';
  let err = '';
  const code = await main(args, { out: (s) => void (out += s), err: (s) => void (err += s) });
  return { code, out, err };
}

async function runJson(args: string[]): Promise<RunResult> {
  const r = await run(['run', ...args, '--json']);
  expect(r.err).toBe('');
  expect(r.code).toBe(0);
  return JSON.parse(r.out) as RunResult;
}

const FIXTURE = join(import.meta.dirname, '..', 'fixtures', 'lackey-true.txt');
const tmp = mkdtempSync(join(tmpdir(), 'mmulab-run-'));

function checkLevel(l: TlbLevel): void {
  expect(l.hits + l.misses).toBe(l.lookups);
  expect(l.hits).toBeGreaterThanOrEqual(0);
  expect(l.misses).toBeGreaterThanOrEqual(0);
  if (l.lookups === 0) expect(l.hitRate).toBeNull();
  else {
    expect(l.hitRate).toBeGreaterThanOrEqual(0);
    expect(l.hitRate).toBeLessThanOrEqual(1);
    expect(l.hitRate).toBeCloseTo(l.hits / l.lookups, 12);
  }
}

/** The levels are consistent with each other and with the CPUs' own counters. */
function checkConsistent(r: RunResult): void {
  const t = r.tlb;
  for (const l of [t.l1d, t.l1i, t.l1, t.stlb, t.stlbBySide.data, t.stlbBySide.inst]) checkLevel(l);
  const sum = (name: string) => r.perCpu.reduce((a, c) => a + c[name]!, 0);
  expect(t.l1.hits).toBe(sum('l1Hits'));
  expect(t.l1.misses).toBe(sum('l1Misses'));
  // The dTLB/iTLB split adds up to the L1 counters exactly.
  expect(t.l1d.lookups + t.l1i.lookups).toBe(t.l1.lookups);
  expect(t.l1d.misses + t.l1i.misses).toBe(t.l1.misses);
  expect(t.stlbBySide.data.hits + t.stlbBySide.inst.hits).toBe(t.stlb.hits);
  expect(t.stlbBySide.data.misses + t.stlbBySide.inst.misses).toBe(t.stlb.misses);
  expect(t.stlb.hits).toBe(sum('stlbHits'));
  expect(t.walks).toBe(sum('walks'));
  expect(t.walksBySide.data + t.walksBySide.inst).toBe(t.walks);
  // Every STLB lookup follows an L1 miss.
  expect(t.stlb.lookups).toBeLessThanOrEqual(t.l1.misses);
  expect(r.cycles.elapsed).toBe(Math.max(...r.cycles.perCpu));
  expect(r.reports).toEqual([]);
}

describe('mmulab run: built-in workloads', () => {
  it('sequential: one pass of stores faults every page in once', async () => {
    // 1024 accesses × 64 bytes = 16 pages, every access a store.
    const r = await runJson(['sequential', '--pages', '16', '--accesses', '1024', '--writes', '1', '--cpus', '1']);
    expect(r.schema).toBe('mmulab.run/1');
    expect(r.workload).toBe('sequential');
    checkConsistent(r);
    expect(r.faults.total).toBe(16);
    expect(r.faults.byKind.anon).toBe(16);
    expect(r.rss.kb).toBe(64);
    expect(r.processes).toEqual([expect.objectContaining({ comm: 'sequential', threads: 1, faults: 16, rssKb: 64 })]);
    // Only loads and stores: the instruction TLB is never looked up.
    expect(r.tlb.l1i.lookups).toBe(0);
    expect(r.tlb.l1d.lookups).toBeGreaterThanOrEqual(1024);
    // 64 lines per page: every line after the first on a page hits the L1 dTLB.
    expect(r.tlb.l1d.hits).toBeGreaterThanOrEqual(1024 - 2 * 16);
  });

  it('strided loads of untouched memory map the zero page: faults but no RSS', async () => {
    const r = await runJson(['strided', '--pages', '32', '--accesses', '64', '--writes', '0', '--cpus', '1']);
    checkConsistent(r);
    expect(r.faults.total).toBe(32);
    expect(r.faults.byKind.zeroPage).toBe(32);
    expect(r.rss.kb).toBe(0);
    // The second pass finds the 32 pages in the L1 dTLB (64 entries).
    expect(r.tlb.l1d.hits).toBeGreaterThanOrEqual(32);
  });

  it('random and zipf: zipf concentrates on few pages and hits the L1 dTLB more often', async () => {
    const common = ['--pages', '1024', '--accesses', '4000', '--cpus', '1', '--memory', '64'];
    const [random, zipf] = [await runJson(['random', ...common]), await runJson(['zipf', ...common])];
    checkConsistent(random);
    checkConsistent(zipf);
    expect(zipf.tlb.l1d.hitRate!).toBeGreaterThan(random.tlb.l1d.hitRate! + 0.1);
    expect(zipf.rss.kb).toBeLessThan(random.rss.kb);
  });

  it('is deterministic: the same seed gives the same result, another seed another', async () => {
    const args = ['random', '--pages', '256', '--accesses', '2000', '--memory', '32'];
    const a = await run(['run', ...args, '--json']);
    const b = await run(['run', ...args, '--json']);
    const c = await run(['run', ...args, '--json', '--seed', '7']);
    expect(a.out).toBe(b.out);
    expect(c.out).not.toBe(a.out);
  });

  it('threads of a touch workload spread over the CPUs', async () => {
    const r = await runJson(['zipf', '--pages', '128', '--accesses', '2000', '--threads', '2', '--cpus', '2', '--memory', '32']);
    checkConsistent(r);
    expect(r.processes).toHaveLength(1);
    expect(r.processes[0]!.threads).toBe(2);
    for (const c of r.perCpu) expect(c.l1Hits! + c.l1Misses!).toBeGreaterThan(1000);
  });

  it('fork: the child copies on write, the parent then reuses its pages', async () => {
    const r = await runJson(['fork', '--pages', '32', '--accesses', '2000', '--writes', '0.5', '--memory', '32']);
    checkConsistent(r);
    expect(r.processes.map((p) => p.comm)).toEqual(['fork', 'fork-child']);
    // The parent's first pass: 32 anonymous faults; the child's stores: copies; the parent's
    // second pass after the child exited: every page is its own again.
    expect(r.faults.byKind.anon).toBe(32);
    expect(r.faults.byKind.cow).toBeGreaterThan(16);
    expect(r.faults.byKind.cow).toBeLessThanOrEqual(32);
    expect(r.faults.byKind.reuse).toBe(32);
    const child = r.processes.find((p) => p.comm === 'fork-child')!;
    expect(child.faults).toBe(r.faults.byKind.cow);
  });

  it('binder: the client completes its transactions with the server', async () => {
    const r = await runJson(['binder', '--iterations', '8', '--payload', '4096', '--design', 'fault', '--memory', '32']);
    checkConsistent(r);
    expect(r.binder!.transactions).toBe(8);
    expect(r.binder!.failures).toBe(0);
    expect(r.processes.map((p) => p.comm).sort()).toEqual(['binder_client', 'binder_server', 'servicemanager']);
    // The fault design: the server faults its binder pages in when it reads the requests.
    expect(r.processes.find((p) => p.comm === 'binder_server')!.faults).toBeGreaterThan(0);
    expect(r.options.design).toBe('fault');
  });

  it('prints a table with a row per TLB level', async () => {
    const r = await run(['run', 'sequential', '--pages', '16', '--accesses', '1024', '--writes', '1']);
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/^mmulab run: sequential touches of 16 pages/);
    for (const row of ['L1 dTLB', 'L1 iTLB', 'L1 (both)', 'STLB']) expect(r.out).toMatch(new RegExp(`^${row.replace(/[()]/g, '\\$&')} +[\\d,]+ +[\\d,]+ +[\\d,]+ +(\\d+\\.\\d\\d%|-)$`, 'm'));
    expect(r.out).toMatch(/^L1 iTLB +0 +0 +0 +-$/m);
    expect(r.out).toMatch(/^page faults: 16 \(resolved: anon 16\)/m);
    expect(r.out).toMatch(/^RSS at exit: 64 kB/m);
    expect(r.out).toMatch(/^sequential +1 +1 +16 +64 /m);
  });
});

describe('mmulab run --lackey', () => {
  // Counted here from the file itself, independently of the parser.
  const text = readFileSync(FIXTURE, 'utf8');
  const count = (re: RegExp) => text.split('\n').filter((l) => re.test(l)).length;
  const expected = { fetches: count(/^I {2}[0-9a-f]+,\d+$/), loads: count(/^ L [0-9a-f]+,\d+$/), stores: count(/^ S [0-9a-f]+,\d+$/), modifies: count(/^ M [0-9a-f]+,\d+$/) };

  it('replays the trace: fetches, loads, stores and modifies match the file', async () => {
    expect(expected.fetches).toBeGreaterThan(500);
    expect(expected.modifies).toBeGreaterThan(0);
    const r = await runJson(['--lackey', FIXTURE]);
    checkConsistent(r);
    expect(r.workload).toBe('lackey');
    const l = r.lackey!;
    expect({ fetches: l.fetches, loads: l.loads, stores: l.stores, modifies: l.modifies }).toEqual(expected);
    expect(l.lines).toBe(text.split('\n').length - (text.endsWith('\n') ? 1 : 0));
    // Each access is translated at least once on its side (more when it crosses a page or faults).
    expect(r.tlb.l1i.lookups).toBeGreaterThanOrEqual(expected.fetches);
    expect(r.tlb.l1d.lookups).toBeGreaterThanOrEqual(expected.loads + expected.stores + expected.modifies);
    expect(l.translations).toBeLessThanOrEqual(r.tlb.l1.lookups);
    // Each touched page faults once at least (more when a load maps the zero page and a store follows).
    expect(r.faults.total).toBeGreaterThanOrEqual(l.pages);
    expect(r.processes).toEqual([expect.objectContaining({ comm: 'lackey' })]);
  });

  it('exits 2 naming the line number and content of a malformed line', async () => {
    const bad = join(tmp, 'bad.txt');
    writeFileSync(bad, '==12== Lackey, an example Valgrind tool\nI  0401ab70,3\n S 1fff000778,8\n L 04001290;8\nI  0401ab73,5\n');
    const r = await run(['run', '--lackey', bad]);
    expect(r.code).toBe(2);
    expect(r.out).toBe('');
    expect(r.err.trim().split('\n')).toHaveLength(1);
    expect(r.err).toContain('line 4');
    expect(r.err).toContain('" L 04001290;8"');
  });

  it('rejects sizes and addresses a process cannot have, and a missing file', async () => {
    const bad = join(tmp, 'bad2.txt');
    writeFileSync(bad, 'I  0401ab70,3\n L 00000010,8\n');
    let r = await run(['run', '--lackey', bad]);
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/line 2: address 0x10 is below mmap_min_addr/);
    writeFileSync(bad, 'I  0401ab70,0\n');
    r = await run(['run', '--lackey', bad]);
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/line 1: access size 0 is out of range/);
    r = await run(['run', '--lackey', join(tmp, 'missing.txt')]);
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/--lackey .*missing\.txt: no such file/);
  });
});

describe('mmulab run --module', () => {
  it("runs a module's default program and its programs map, each as a process", async () => {
    const file = join(tmp, 'progs.ts');
    writeFileSync(
      file,
      `
export default function* writer(u: any, lib: any) {
  const a: number = yield* u.mmap(0, 8 * lib.PAGE_SIZE, lib.PROT_READ | lib.PROT_WRITE, lib.MAP_PRIVATE | lib.MAP_ANONYMOUS);
  for (let i = 0; i < 8; i++) yield* u.store32(a + i * lib.PAGE_SIZE, lib.random.u32());
}
export const programs = {
  *fetcher(u: any, lib: any) {
    const a: number = yield* u.mmap(0, 3 * lib.PAGE_SIZE, lib.PROT_READ | lib.PROT_EXEC, lib.MAP_PRIVATE | lib.MAP_ANONYMOUS);
    for (let i = 0; i < 3; i++) yield* u.touch(a + i * lib.PAGE_SIZE, 'fetch');
  },
};
`,
    );
    const r = await runJson(['--module', file]);
    checkConsistent(r);
    expect(r.workload).toBe('module');
    expect(r.processes.map((p) => [p.comm, p.faults])).toEqual([
      ['writer', 8],
      ['fetcher', 3],
    ]);
    expect(r.tlb.l1i.lookups).toBeGreaterThanOrEqual(3);
    expect(r.processes[0]!.rssKb).toBe(32);
  });

  it('a program that faults outside its mappings is a finding (exit 1) with the kernel log line', async () => {
    const file = join(tmp, 'segv.mjs');
    writeFileSync(file, 'export default function* (u) { yield* u.load32(0x20000); }\n');
    const r = await run(['run', '--module', file]);
    expect(r.code).toBe(1);
    expect(r.out).toMatch(/segfault at 20000/);
  });

  it('the invariant checkers run at the end (and with --debug-vm after every step): a planted leak is a finding', { timeout: 120_000 }, async () => {
    // The program raises the refcount of one of its pages from inside the kernel and goes on
    // running: the books no longer match the page tables.
    const file = join(tmp, 'leak.mjs');
    writeFileSync(
      file,
      `export default function* leaker(u, lib) {
  const a = yield* u.mmap(0, 4 * lib.PAGE_SIZE, lib.PROT_READ | lib.PROT_WRITE, lib.MAP_PRIVATE | lib.MAP_ANONYMOUS);
  for (let i = 0; i < 4; i++) yield* u.store32(a + i * lib.PAGE_SIZE, i);
  yield* u.call('leak', function* (k, t) {
    const ptep = k.pt.pte_offset(t.mm, a);
    k.pages.refcount[(k.pt.lo(ptep) >>> 12) | ((k.pt.hi(ptep) & 0xfffff) << 20)]++;
  });
  yield* u.sleep(100000);
  for (let i = 0; i < 4; i++) yield* u.load32(a + i * lib.PAGE_SIZE);
}
`,
    );
    // At the end the process has exited and its page, one reference short of free, is leaked.
    const end = await run(['run', '--module', file, '--json']);
    expect(end.code).toBe(1);
    const endDoc = JSON.parse(end.out) as RunResult;
    expect(endDoc.reports).toEqual(['BUG: invariants violated at the end of the run: 1 frames still in use after every process exited (' + endDoc.reports[0]!.split('(')[1]]);
    expect(endDoc.reports[0]).toMatch(/\((\d+) in use, (\d+) at boot\)$/);
    const stepped = await run(['run', '--module', file, '--json', '--debug-vm']);
    expect(stepped.code).toBe(1);
    const doc = JSON.parse(stepped.out) as RunResult;
    expect(doc.options.debugVm).toBe(true);
    expect(doc.reports[0]).toMatch(/^BUG: mm invariant violated after engine step \d+ \(CPU \d+\): .*refcount 2 but 1 mappings/);
    // A healthy module: nothing filed, exit 0, in either mode.
    const ok = join(tmp, 'ok.mjs');
    writeFileSync(ok, 'export default function* (u, lib) { const a = yield* u.mmap(0, lib.PAGE_SIZE, lib.PROT_READ | lib.PROT_WRITE, lib.MAP_PRIVATE | lib.MAP_ANONYMOUS); yield* u.store32(a, 1); yield* u.munmap(a, lib.PAGE_SIZE); }\n');
    for (const extra of [[], ['--debug-vm']]) {
      const r = await run(['run', '--module', ok, ...extra]);
      expect(r.code, r.out + r.err).toBe(0);
    }
  });

  it('a module that cannot be read or has no programs gets one line and exit 2', async () => {
    const none = join(tmp, 'none.mjs');
    writeFileSync(none, 'export const x = 1;\n');
    const notGen = join(tmp, 'notgen.mjs');
    writeFileSync(notGen, 'export default function (u) { return 1; }\n');
    const broken = join(tmp, 'broken.ts');
    writeFileSync(broken, 'export default function* ( {\n');
    const plain = join(tmp, 'prog.txt');
    writeFileSync(plain, 'export default function* (u) {}\n');
    const cases: [string, RegExp][] = [
      [none, /none\.mjs: the module exports no programs \(expected `export default function\* \(u, lib\)/],
      [notGen, /notgen\.mjs: the default export is not a generator function/],
      [broken, /broken\.ts: cannot load the module: /],
      [join(tmp, 'absent.ts'), /absent\.ts: no such file/],
      [plain, /prog\.txt: not a TypeScript or JavaScript module \(the name must end in \.ts, \.mts, \.cts, \.js, \.mjs, \.cjs\)$/m],
    ];
    for (const [file, re] of cases) {
      const r = await run(['run', '--module', file]);
      expect(r.code, file).toBe(2);
      expect(r.err.trim().split('\n'), file).toHaveLength(1);
      expect(r.err).toMatch(re);
    }
  });
});

describe('mmulab run --trace', () => {
  it('writes ftrace text with the nop tracer header and event lines', async () => {
    const file = join(tmp, 'trace.txt');
    const r = await runJson(['sequential', '--pages', '8', '--accesses', '512', '--writes', '1', '--trace', file]);
    expect(r.trace).toEqual({ file, format: 'ftrace', events: expect.any(Number) });
    const lines = readFileSync(file, 'utf8').trimEnd().split('\n');
    expect(lines[0]).toBe('# tracer: nop');
    expect(lines[2]).toMatch(/^# entries-in-buffer\/entries-written: (\d+)\/\1 {3}#P:2$/);
    expect(lines[10]).toBe('#           TASK-PID     CPU#  |||||  TIMESTAMP  FUNCTION');
    const events = lines.filter((l) => !l.startsWith('#'));
    expect(events.length).toBe(r.trace!.events);
    for (const l of events) expect(l).toMatch(/^ *\S.{0,15}-\d+ +\[\d{3}\] [.dDbNnpBLlZzHhs]{2}[.\w]{3} +\d+\.\d{6}: \w+: /);
    // The 8 first stores fault.
    expect(events.filter((l) => / page_fault_user: address=0x[0-9a-f]+ ip=0x0 error_code=0x6$/.test(l))).toHaveLength(8);
  });

  it('writes Perfetto/Chrome JSON with traceEvents', async () => {
    const file = join(tmp, 'trace.json');
    const r = await runJson(['fork', '--pages', '8', '--accesses', '100', '--memory', '32', '--trace', file]);
    expect(r.trace!.format).toBe('json');
    const doc = JSON.parse(readFileSync(file, 'utf8')) as { traceEvents: { ph: string; name: string; ts: number }[] };
    expect(doc.traceEvents.length).toBeGreaterThan(10);
    for (const e of doc.traceEvents) expect(typeof e.ts).toBe('number');
    expect(doc.traceEvents.some((e) => e.ph === 'M' && e.name === 'thread_name')).toBe(true);
  });
});

describe('mmulab run: bad usage', () => {
  const cases: [string[], RegExp][] = [
    [['run', 'bogus'], /unknown workload "bogus" \(known: sequential, strided, random, zipf, fork, binder/],
    [['run', '--engine', 'parallel', '--debug-vm'], /--debug-vm audits the mm after every step of the deterministic engine; it cannot be combined with --engine parallel/],
    [['run', '--writes', '1.5'], /--writes must be between 0 and 1/],
    [['run', '--pages', 'many'], /--pages must be an integer/],
    [['run', '--trace', 'out.csv'], /--trace out\.csv: name the file \.txt .* or \.json/],
    [['run', 'zipf', '--module', 'x.ts'], /give either a workload \("zipf"\) or --module/],
    [['run', '--module', 'x.ts', '--lackey', 'y.txt'], /give either --module or --lackey/],
    [['run', '--design', 'nosuch'], /--design: unknown design "nosuch"/],
    [['run', '--pages', '100000', '--memory', '64'], /--pages 100000 needs 391 MiB .* raise --memory/],
  ];
  for (const [args, re] of cases) {
    it(`${args.join(' ')} → exit 2`, async () => {
      const r = await run(args);
      expect(r.code).toBe(2);
      expect(r.out).toBe('');
      expect(r.err).toMatch(re);
    });
  }

  it('--help lists the workloads, the module contract and examples', async () => {
    const r = await run(['run', '--help']);
    expect(r.code).toBe(0);
    expect(r.out).toContain('Usage: mmulab run [options] [workload]');
    expect(r.out).toMatch(/^ {2}zipf {8}/m);
    expect(r.out).toContain('export const programs = {');
    expect(r.out).toContain('mmulab run --lackey trace.txt');
  });
});
