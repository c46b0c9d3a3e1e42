/**
 * src/jobs/pool.ts — run independent jobs in local worker processes (`--jobs N`), or inline when
 * N is 1. Results come back in submission order whatever order the workers finish in, so the
 * output of a sweep does not depend on the number of jobs. A failing job rejects the whole run
 * with its message.
 *
 * Processes, not worker threads: the jobs share nothing (each builds its own machine), and
 * threads of one process slowed each other badly — every machine's buffer is fresh memory, and
 * the page faults of two threads contend in one address space (a 360-point shootdown sweep took
 * as long on two threads as on one; on two processes, 30% less).
 */

import { fork, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { availableParallelism } from 'node:os';
import { JOBS } from './registry.ts';

export interface Job {
  kind: string;
  args: unknown;
  /**
   * An estimate of the job's run time in any unit (optional): workers take the costliest jobs
   * first, so the run does not end waiting on one long job started last. Results keep the
   * submission order.
   */
  cost?: number;
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
  // 'advanced' serialization: the structured clone, as between threads. No inherited Node
  // options (a test runner's loader flags mean nothing to the worker).
  const workers: ChildProcess[] = Array.from({ length: Math.min(n, jobs.length) }, () => fork(entry, [], { serialization: 'advanced', execArgv: [], stdio: ['ignore', 'inherit', 'inherit', 'ipc'] }));
  // Dispatch order: by decreasing cost (stable), the submission order without costs.
  const order = jobs.map((_, i) => i);
  if (jobs.some((j) => j.cost !== undefined)) order.sort((a, b) => (jobs[b]!.cost ?? 0) - (jobs[a]!.cost ?? 0) || a - b);
  let next = 0;
  let finished = false;
  try {
    await Promise.all(
      workers.map(
        (w) =>
          new Promise<void>((resolve, reject) => {
            const feed = () => {
              if (next >= jobs.length) return resolve();
              const id = order[next++]!;
              w.send({ id, kind: jobs[id]!.kind, args: jobs[id]!.args });
            };
            w.on('message', (m: { id: number; ok: boolean; value?: T; error?: string }) => {
              if (!m.ok) return reject(new Error(m.error));
              results[m.id] = m.value as T;
              onDone();
              feed();
            });
            w.on('error', reject);
            w.on('exit', (code, signal) => {
              if (!finished) reject(new Error(`a job worker exited (${signal ?? `code ${code}`}) before its jobs were done`));
            });
            feed();
          }),
      ),
    );
  } finally {
    finished = true;
    // Wait for every worker to be gone (and reaped, so its CPU time counts as this process's).
    await Promise.all(
      workers.map((w) =>
        w.exitCode !== null || w.signalCode !== null
          ? undefined
          : new Promise<void>((done) => {
              w.once('exit', () => done());
              w.kill();
            }),
      ),
    );
  }
  return results;
}
