// hw/ts-loader.mjs — the Node module hooks that load mmulab's TypeScript: each .ts file is
// compiled on its own by esbuild (types stripped, no type check: `npm test` runs tsc for that)
// with the semantics tsconfig.json fixes (ES2022 class fields with define semantics, imports as
// written). Registered by hw/ts-register.mjs.
//
// Why not tsx's loader, which mmulab used before: tsx compiles with esbuild's keepNames, which
// wraps every function and class in a naming call; in the hot paths (walks, TLB hits, the
// engine's step, the fault path) that cost 10–20% of the throughput. Function names stay what
// they are without it: esbuild renames nothing when it compiles one file.
//
// It lives in hw/, the bottom layer, because worker entries of every layer (hw/parallel, the job
// pool) register it.

import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { transform } from 'esbuild';

const TSCONFIG = { compilerOptions: { target: 'ES2022', useDefineForClassFields: true, verbatimModuleSyntax: true } };

export async function load(url, context, nextLoad) {
  if (!url.startsWith('file:') || !url.endsWith('.ts')) return nextLoad(url, context);
  const path = fileURLToPath(url);
  const { code } = await transform(await readFile(path, 'utf8'), {
    loader: 'ts',
    format: 'esm',
    target: 'es2022',
    sourcemap: 'inline',
    sourcefile: path,
    tsconfigRaw: TSCONFIG,
  });
  return { format: 'module', source: code, shortCircuit: true };
}
