/**
 * The mmulab command line: the default job, help, JSON output, the demo's cost model and the
 * shared options it refuses, and exit code 2 with one clear line for bad usage.
 */

import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
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

describe('mmulab command line', () => {
  it('runs the demo and exits 0', async () => {
    const r = await run(['demo']);
    expect(r.code).toBe(0);
    expect(r.out).toContain('stale TLB entry still answers');
    expect(r.out).toMatch(/#PF error 0x4 \(not-present, read, user\)/);
  });

  it('prints the demo as JSON', async () => {
    const r = await run(['demo', '--json']);
    expect(r.code).toBe(0);
    const doc = JSON.parse(r.out) as { schema: string; rows: { answeredBy: string }[]; counters: Record<string, number> };
    expect(doc.schema).toBe('mmulab.demo/1'); // docs/schemas/demo.schema.json, validated in schemas.test.ts
    expect(doc.rows.length).toBe(11);
    expect(doc.rows[1]!.answeredBy).toBe('L1 TLB');
    expect(doc.counters.pageFaults).toBe(5);
  });

  it('runs the demo on another cost model, and refuses the shared options it cannot use', async () => {
    const file = join(mkdtempSync(join(tmpdir(), 'mmulab-cli-')), 'costs.json');
    writeFileSync(file, JSON.stringify({ hw: { walkMemRef: 1000 } }));
    const cycles = async (args: string[]) => (JSON.parse((await run(['demo', '--json', ...args])).out) as { counters: { cycles: number; walkMemRefs: number } }).counters;
    const base = await cycles([]);
    const slow = await cycles(['--cost-model', file]);
    expect(slow.walkMemRefs).toBe(base.walkMemRefs);
    expect(slow.cycles).toBeGreaterThan(base.cycles + 500 * base.walkMemRefs);
    const r = await run(['demo', '--cpus', '4']);
    expect(r.code).toBe(2);
    expect(r.err.split('\n')[0]).toBe("error: option '--cpus <n>' argument '4' is invalid. demo takes no --cpus: the tour runs on one CPU");
  });

  it('answers an unknown option with exit code 2 and a message', async () => {
    const r = await run(['demo', '--bogus']);
    expect(r.code).toBe(2);
    expect(r.err).toContain("unknown option '--bogus'");
  });

  it('answers an unknown command with exit code 2', async () => {
    const r = await run(['frobnicate', 'x']);
    expect(r.code).toBe(2);
    expect(r.err.length).toBeGreaterThan(0);
  });

  it('prints help with exit code 0', async () => {
    const r = await run(['--help']);
    expect(r.code).toBe(0);
    expect(r.out).toContain('Usage: mmulab');
  });

  it('prints its version (package.json) with --version and -V, exit code 0', async () => {
    const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
    for (const flag of ['--version', '-V']) {
      const r = await run([flag]);
      expect(r.code).toBe(0);
      expect(r.out).toBe(`${pkg.version}\n`);
    }
  });
});

describe('the mmulab process', () => {
  // The output's reader going away (`mmulab attack --json | head -c 100`) must end the command
  // with the SIGPIPE status and nothing on stderr, not Node's unhandled EPIPE error and its
  // stack. A shell pipeline, so stdout is an OS pipe as on a terminal (attack --json writes
  // ~180 KB, more than a pipe holds, so the command is still writing when head exits).
  it('stops quietly with 141 when the reader of its output closes the pipe early', async () => {
    const { execFileSync } = await import('node:child_process');
    const entry = new URL('../../src/mmulab.js', import.meta.url).pathname;
    const dir = mkdtempSync(join(tmpdir(), 'mmulab-epipe-'));
    const errFile = join(dir, 'stderr.txt');
    const script = `"$0" "$1" attack --json 2>"$2" | head -c 100 >/dev/null; echo "\${PIPESTATUS[0]}"`;
    const status = execFileSync('bash', ['-c', script, process.execPath, entry, errFile], { encoding: 'utf8', timeout: 60_000 }).trim();
    expect(readFileSync(errFile, 'utf8')).toBe('');
    expect(status).toBe('141');
  }, 60_000);
});
