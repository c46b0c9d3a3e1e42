/**
 * src/jobs/worker.ts — a job-pool worker process (src/jobs/pool.ts): receives { id, kind, args }
 * messages, runs the job named by `kind` from the registry in ./registry.ts and sends back
 * { id, ok, value } or { id, ok: false, error }.
 */

import { JOBS } from './registry.ts';

if (typeof process.send !== 'function') throw new Error('src/jobs/worker.ts must run as a forked worker process');
const send = process.send.bind(process);
process.on('message', (m: { id: number; kind: string; args: unknown }) => {
  try {
    const job = JOBS[m.kind];
    if (!job) throw new Error(`unknown job kind "${m.kind}"`);
    send({ id: m.id, ok: true, value: job(m.args as never) });
  } catch (e) {
    send({ id: m.id, ok: false, error: (e as Error).message });
  }
});
// The parent going away (killed, crashed) ends this process too.
process.on('disconnect', () => process.exit(0));
