/**
 * The options every mmulab command shares (--seed, --cpus, --engine, --cost-model, --json), for
 * every command the program registers: a bad value of each gives exit code 2, nothing on stdout
 * and one line on stderr naming the option (table-driven, command × bad input); --engine parallel
 * runs every command that runs the kernel (run, the inspection views, ab, attack, shootdown,
 * fuzz) and is refused, with the reason, by the others (merge and demo); every --help shows examples and accounts for each shared option (taken,
 * or refused with the reason).
 */

import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { buildProgram, main } from '../../src/cli.ts';

async function run(args: string[]) {
  let out = '';
  let err = '';
  const code = await main(args, { out: (s) => void (out += s), err: (s) => void (err += s) });
  return { code, out, err };
}

/** Every command, with the arguments it needs besides the options under test. */
const COMMANDS: Record<string, string[]> = {
  ab: [],
  run: [],
  maps: [],
  smaps: [],
  pagemap: [],
  ptdump: [],
  shootdown: [],
  attack: [],
  fuzz: ['--ops', '1'],
  merge: ['shard.json'],
  demo: [],
};

/**
 * The commands that run on the parallel engine too (kernel/sched/parallel.ts), each with the
 * arguments of a small run; the others (merge, demo) refuse it with the reason.
 */
const PROCESS_ARGS = ['--pages', '8', '--accesses', '2000', '--cpus', '2', '--threads', '2'];
const PARALLEL_OK: Record<string, string[]> = {
  run: PROCESS_ARGS,
  maps: PROCESS_ARGS,
  smaps: PROCESS_ARGS,
  pagemap: PROCESS_ARGS,
  ptdump: PROCESS_ARGS,
  ab: ['--design', 'eager,fault', '--workload', 'sync-0', '--seeds', '1', '--iterations', '5', '--no-attack', '--jobs', '1'],
  attack: ['--design', 'fault', '--scenario', '2'],
  shootdown: ['--cpus-list', '2', '--pages', '1', '--policy', 'linux', '--lazy', 'on', '--pcid', 'on', '--rounds', '1', '--jobs', '1'],
  fuzz: ['--seed', '3', '--jobs', '1'],
};

/** A bad value of each shared option, and what the one line must say. */
const BAD: [string[], RegExp][] = [
  [['--cpus', '0'], /--cpus/],
  [['--cpus', 'abc'], /--cpus/],
  [['--cpus', '1.5'], /--cpus/],
  [['--engine', 'foo'], /--engine/],
  [['--cost-model', '/nonexistent/costs.json'], /--cost-model/],
  [['--seed', '-1'], /--seed/],
  [['--seed', 'abc'], /--seed/],
  [['--seed', '4294967296'], /--seed/],
];

/** stderr without commander's pointer to --help. */
function problemLines(err: string): string[] {
  return err.split('\n').filter((l) => l && !l.startsWith('(run mmulab --help'));
}

describe('shared options', () => {
  it('the table covers every command the program registers', () => {
    const io = { out: () => {}, err: () => {}, errIsTty: false, exitCode: 0 };
    const names = buildProgram(io).commands.map((c) => c.name()).sort();
    expect(names).toEqual(Object.keys(COMMANDS).sort());
  });

  for (const [command, extra] of Object.entries(COMMANDS)) {
    describe(command, () => {
      for (const [bad, names] of BAD) {
        it(`${bad.join(' ')} → exit 2, one line naming the option`, async () => {
          const r = await run([command, ...extra, ...bad]);
          expect(r.code).toBe(2);
          expect(r.out).toBe('');
          const lines = problemLines(r.err);
          expect(lines, r.err).toHaveLength(1);
          expect(lines[0]).toMatch(names);
          expect(r.err).not.toMatch(/\n\s+at /); // no stack trace
        });
      }

      if (command in PARALLEL_OK) {
        it('--engine parallel runs (the kernel on this thread, user code on workers)', async () => {
          const r = await run([command, ...extra, '--engine', 'parallel', ...PARALLEL_OK[command]!]);
          expect(r.err).toBe(command === 'fuzz' ? 'mmulab fuzz: seed 3, 1 operations, parallel engine\n' : '');
          expect(r.code).toBe(0);
          // The reports say which engine ran; the inspection views print Linux's formats only.
          if (command === 'fuzz') expect(r.out).toMatch(/no invariant violation/);
          else expect(r.out).toMatch(['maps', 'smaps', 'pagemap', 'ptdump'].includes(command) ? /\S/ : /parallel engine \(not reproducible by seed\)/);
        });
      } else {
        it('--engine parallel → exit 2, one line with the reason', async () => {
          const r = await run([command, ...extra, '--engine', 'parallel']);
          expect(r.code).toBe(2);
          expect(r.out).toBe('');
          const lines = problemLines(r.err);
          expect(lines, r.err).toHaveLength(1);
          expect(lines[0]).toMatch(/--engine/);
          expect(lines[0]).toMatch(/deterministic engine|runs nothing|without an engine/);
        });
      }

      it('--help shows examples and accounts for every shared option', async () => {
        const r = await run([command, '--help']);
        expect(r.code).toBe(0);
        expect(r.out).toContain(`Usage: mmulab ${command} `);
        expect(r.out).toMatch(new RegExp(`\\nExamples?:\\n {2}mmulab ${command}\\b`));
        for (const opt of ['--seed', '--cpus', '--engine', '--cost-model']) expect(r.out, opt).toMatch(new RegExp(`^ {2}${opt}\\b`, 'm'));
        expect(r.out).toMatch(/^ {2}--json\b/m);
      });
    });
  }

  it('a bad cost model names the file and the field', async () => {
    const file = join(mkdtempSync(join(tmpdir(), 'mmulab-shared-')), 'costs.json');
    writeFileSync(file, JSON.stringify({ hw: { walkMemRef: -3 } }));
    for (const command of ['run', 'attack', 'shootdown', 'demo', 'fuzz']) {
      const r = await run([command, '--cost-model', file, ...(command === 'fuzz' ? ['--ops', '1'] : [])]);
      expect(r.code, command).toBe(2);
      expect(problemLines(r.err), command).toEqual([`mmulab: --cost-model: ${file}: cost model field "hw.walkMemRef" must be a finite number >= 0, got -3`]);
    }
  });
});
