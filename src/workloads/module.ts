/**
 * src/workloads/module.ts — a user's own programs, loaded from a TypeScript or JavaScript
 * module (the `--module FILE` input of mmulab run and the inspection commands).
 *
 * The module contract. A program is a generator function that receives the process's system
 * interface `u` (kernel/uapi.ts User: loads, stores, touch, read/write, mmap, munmap, mprotect,
 * mremap, madvise, fork, clone, wait, sleep, …; every call is used with `yield*`) and a small
 * library `lib` of constants and helpers. A module exports either
 *
 *   export default function* (u, lib) { … }             one program, named after the file
 *
 * or
 *
 *   export const programs = { writer: function* (u, lib) { … }, reader: function* (u) { … } }
 *
 * (or both; `export default { name: function* … }` is read like `programs`). Each program runs
 * as its own process, named by its key (the comm, cut to 15 characters), started in export
 * order. For example:
 *
 *   export default function* (u, { PROT_READ, PROT_WRITE, MAP_PRIVATE, MAP_ANONYMOUS, PAGE_SIZE }) {
 *     const a = yield* u.mmap(0, 16 * PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
 *     for (let i = 0; i < 16; i++) yield* u.store32(a + i * PAGE_SIZE, i);
 *   }
 *
 * `lib` holds PROT_*, MAP_*, MADV_* and MREMAP_* constants, PAGE_SIZE, `random` (a seeded
 * generator, see hw/random.ts: u32, float, below, range, chance, pick, shuffle — a program must
 * not use Math.random, or runs stop being reproducible) and `seed`. Processes a program forks or
 * threads it clones get the same `lib`.
 *
 * A TypeScript module is loaded through tsx (the mmulab command registers it); under vitest,
 * vite transforms it.
 */

import { existsSync, statSync } from 'node:fs';
import { basename, extname, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import type { Program } from '../../kernel/uapi.ts';
import { Random } from '../../hw/random.ts';
import * as mmap from '../../kernel/mm/mmap.ts';
import * as madvise from '../../kernel/mm/madvise.ts';
import * as mremap from '../../kernel/mm/mremap.ts';

export class ModuleError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ModuleError';
  }
}

export interface LoadedProgram {
  name: string;
  /** Called as fn(u, lib). */
  fn: (...args: unknown[]) => Generator<unknown, unknown, unknown>;
}

export interface LoadedModule {
  path: string;
  programs: LoadedProgram[];
}

/** The file names a program module may have. */
const MODULE_EXTENSIONS = ['.ts', '.mts', '.cts', '.js', '.mjs', '.cjs'];

const CONTRACT = 'expected `export default function* (u, lib) {…}` or `export const programs = { name: function* (u, lib) {…} }`';

function isGeneratorFunction(f: unknown): f is LoadedProgram['fn'] {
  return typeof f === 'function' && Object.prototype.toString.call(f) === '[object GeneratorFunction]';
}

/** Load `file` and collect its programs; every problem is a ModuleError with one line. */
export async function loadProgramModule(file: string): Promise<LoadedModule> {
  const path = resolve(file);
  if (!existsSync(path)) throw new ModuleError(`${file}: no such file`);
  if (!statSync(path).isFile()) throw new ModuleError(`${file}: not a file`);
  // Node and tsx choose the loader by extension (tsx appends ".js" to a name without one, and
  // its errors would then name a file that does not exist).
  if (!MODULE_EXTENSIONS.includes(extname(path).toLowerCase())) throw new ModuleError(`${file}: not a TypeScript or JavaScript module (the name must end in ${MODULE_EXTENSIONS.join(', ')})`);
  let mod: Record<string, unknown>;
  try {
    mod = (await import(pathToFileURL(path).href)) as Record<string, unknown>;
  } catch {
    // Outside a "type": "module" package, Node (with tsx's hooks) takes a .ts or .js file for
    // CommonJS and refuses its ESM syntax; tsx's tsImport loads it in a namespace of its own.
    try {
      const { tsImport } = await import('tsx/esm/api');
      mod = (await tsImport(pathToFileURL(path).href, import.meta.url)) as Record<string, unknown>;
    } catch (e) {
      throw new ModuleError(`${file}: cannot load the module: ${firstLine(e)}`);
    }
  }
  // A CommonJS module (or one compiled to it) arrives as { default: module.exports }.
  const d = mod.default as Record<string, unknown> | undefined;
  if (typeof d === 'object' && d !== null && (d.__esModule === true || 'programs' in d || 'default' in d)) mod = d;
  const programs: LoadedProgram[] = [];
  const add = (name: string, f: unknown, where: string) => {
    if (!isGeneratorFunction(f)) throw new ModuleError(`${file}: ${where} is not a generator function (write function* (u, lib) {…})`);
    if (programs.some((p) => p.name === name)) throw new ModuleError(`${file}: two programs are named "${name}"`);
    programs.push({ name, fn: f });
  };
  const addAll = (obj: unknown, where: string) => {
    if (typeof obj !== 'object' || obj === null) throw new ModuleError(`${file}: ${where} must be an object of generator functions`);
    for (const [name, f] of Object.entries(obj)) if (name !== '__esModule') add(name, f, `${where}.${name}`);
  };
  const def = mod.default;
  if (typeof def === 'function') add(def.name && def.name !== 'default' && !def.name.startsWith('__') ? def.name : basename(path, extname(path)), def, 'the default export'); // (bundlers name an anonymous default __…)
  else if (typeof def === 'object' && def !== null) addAll(def, 'the default export');
  if (mod.programs !== undefined) addAll(mod.programs, '`programs`');
  if (!programs.length) throw new ModuleError(`${file}: the module exports no programs (${CONTRACT})`);
  return { path, programs };
}

/** The first line of an error's message (and the next one when the first only announces it). */
function firstLine(e: unknown): string {
  const lines = (e instanceof Error ? e.message : String(e)).split('\n').map((l) => l.trim()).filter(Boolean);
  if (!lines.length) return 'unknown error';
  return lines[0]!.endsWith(':') && lines[1] ? `${lines[0]} ${lines[1]}` : lines[0]!;
}

/** The `lib` argument of a module's programs. */
export function programLib(seed: number): Record<string, unknown> {
  const lib: Record<string, unknown> = { PAGE_SIZE: 4096, seed, random: new Random(seed) };
  for (const ns of [mmap, madvise, mremap] as Record<string, unknown>[]) {
    for (const [k, v] of Object.entries(ns)) if (/^(PROT|MAP|MREMAP|MADV)_/.test(k) && typeof v === 'number') lib[k] = v;
  }
  return lib;
}

/** A loaded program as a kernel Program (it gets `lib` as its second argument). */
export function asProgram(p: LoadedProgram, lib: Record<string, unknown>): Program {
  return function* (u) {
    return (yield* p.fn(u, lib) as Generator<never, unknown, unknown>) as number | void;
  } as Program;
}
