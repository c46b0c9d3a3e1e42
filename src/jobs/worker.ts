/**
 * src/jobs/worker.ts — a job-pool worker thread: receives { kind, args } messages, runs the job
 * named by `kind` from the registry in ./registry.ts and posts back { ok, value } or
 * { ok: false, error }.
 */

import { parentPort } from 'node:worker_threads';
import { JOBS } from './registry.ts';

if (!parentPort) throw new Error('src/jobs/worker.ts must run as a worker thread');
const port = parentPort;
port.on('message', (m: { id: number; kind: string; args: unknown }) => {
  try {
    const job = JOBS[m.kind];
    if (!job) throw new Error(`unknown job kind "${m.kind}"`);
    port.postMessage({ id: m.id, ok: true, value: job(m.args as never) });
  } catch (e) {
    port.postMessage({ id: m.id, ok: false, error: (e as Error).message });
  }
});
