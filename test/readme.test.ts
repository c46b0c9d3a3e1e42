/**
 * The runnable examples in README.md (code blocks after `<!-- example:NAME -->`) are run as
 * written; every `console.log(...)` line ends with a comment holding exactly what it prints.
 */

import { describe, expect, it } from 'vitest';
import { readFileSync, writeFileSync, rmSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const readme = readFileSync(join(root, 'README.md'), 'utf8');
const examples = [...readme.matchAll(/<!-- example:([\w-]+) -->\s*```ts\n([\s\S]*?)```/g)].map((m) => ({ name: m[1]!, code: m[2]! }));

describe('README examples', () => {
  it('has examples', () => {
    expect(examples.length).toBeGreaterThan(0);
  });
  for (const ex of examples) {
    it(`example "${ex.name}" runs and prints what its comments say`, () => {
      const file = join(root, `.readme-example-${ex.name}.ts`);
      writeFileSync(file, ex.code);
      let out: string;
      try {
        out = execFileSync(process.execPath, ['--import', './hw/ts-register.mjs', file], { cwd: root, encoding: 'utf8' });
      } finally {
        rmSync(file, { force: true });
      }
      const expected = ex.code
        .split('\n')
        .filter((l) => /^\s*console\.log\(.*\);\s*\/\/ /.test(l))
        .map((l) => l.replace(/^.*?\);\s*\/\/ /, '').trim());
      const lines = out.trim().split('\n');
      expect(lines.length).toBe(expected.length);
      expected.forEach((e, i) => expect(lines[i]!.replace(/\s+/g, ' ')).toBe(e.replace(/\s+/g, ' ')));
    });
  }
});
