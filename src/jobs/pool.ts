/**
 * src/jobs/pool.ts — run independent jobs on local worker threads (`--jobs N`), or inline when
 * N is 1. Results come back in submission order whatever order the workers finish in, so the
 * output of a sweep does not depend on the number of jobs. A failing job rejects the whole run
 * with its message.
 */

import { Worker } from 'node:worker_threads';
import { fileURLToPath } from 'node:url';
import { availableParallelism } from 'node:os';
import { JOBS } from './registry.ts';

export interface Job {
  kind: string;
  args: unknown;
}

/** The default for --jobs: every core. */
export function defaultJobs(): number {
  return Math.max(1, availableParallelism());
}

export async function runJobs<T>(jobs: Job[], n: number, onDone: () => void = () => {}): Promise<T[]> {
  const results: T[] = new Array(jobs.length);
  if (n <= 1 || jobs.length <= 1) {
    for (let i = 0; i < jobs.length; i++) {
      const f = JOBS[jobs[i]!.kind];
      if (!f) throw new Error(`unknown job kind "${jobs[i]!.kind}"`);
      results[i] = f(jobs[i]!.args as never) as T;
      onDone();
    }
    return results;
  }
  const entry = fileURLToPath(new URL('./worker-entry.mjs', import.meta.url));
  const workers = Array.from({ length: Math.min(n, jobs.length) }, () => new Worker(entry));
  let next = 0;
  try {
    await Promise.all(
      workers.map(
        (w) =>
          new Promise<void>((resolve, reject) => {
            const feed = () => {
              if (next >= jobs.length) return resolve();
              const id = next++;
              w.postMessage({ id, kind: jobs[id]!.kind, args: jobs[id]!.args });
            };
            w.on('message', (m: { id: number; ok: boolean; value?: T; error?: string }) => {
              if (!m.ok) return reject(new Error(m.error));
              results[m.id] = m.value as T;
              onDone();
              feed();
            });
            w.on('error', reject);
            w.on('exit', (code) => {
              if (code !== 0) reject(new Error(`a job worker exited with code ${code}`));
            });
            feed();
          }),
      ),
    );
  } finally {
    await Promise.all(workers.map((w) => w.terminate()));
  }
  return results;
}
