// hw/ts-register.mjs — registers mmulab's TypeScript loader (hw/ts-loader.mjs) in this thread,
// with source maps on, so stack traces and call sites name .ts lines. Entry points import it
// before anything written in TypeScript; `node --import ./hw/ts-register.mjs file.ts` runs a
// TypeScript file. (Node 20 does not pass loaders on to worker threads: each worker entry
// imports it again.)

import { register } from 'node:module';

process.setSourceMapsEnabled(true);
register('./ts-loader.mjs', import.meta.url);
