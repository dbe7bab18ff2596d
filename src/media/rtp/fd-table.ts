import { closeSync, openSync, readdirSync, readFileSync } from 'node:fs';

/**
 * Grows the process's file-descriptor table before RTP streams play, so that binding a call's socket later
 * never has to grow it.
 *
 * Linux keeps a process's descriptors in one table that grows by doubling (64, 128, 256, 512 ...) when a new
 * descriptor does not fit. In a process with more than one thread, which every Node process is, growing it
 * waits for an RCU grace period (`expand_fdtable` calls `synchronize_rcu`). On the 2-vCPU VM of BENCHMARKS.md
 * the `open()` that crossed descriptor 256 took 9.7 ms, 512 6.8 ms, 1024 14.2 ms and 2048 4.9 ms; every
 * other one took microseconds. The RTP thread binds each call's socket, and while one of those binds waited,
 * no stream of the thread sent anything. At 500 concurrent calls that made most of a run's late packets (3 to
 * 512 packets more than 5 ms late per run), at the same socket counts every time (about 216 and 472).
 *
 * The table never shrinks, so opening placeholders (/dev/null) up to the size needed and closing them at once
 * pays for every doubling at start, before any stream plays.
 */
export interface FdTableReservation {
  /** Descriptors open in the process before (the placeholders excluded). */
  inUse: number;
  /** Placeholders opened, and closed again. */
  opened: number;
  /** The table's size afterwards (/proc/self/status FDSize), or undefined when it cannot be read. */
  tableSize: number | undefined;
  /** The soft RLIMIT_NOFILE it stayed under. */
  limit: number;
  ms: number;
}

/**
 * Makes room in the descriptor table for `extra` more descriptors than the process holds now, staying a tenth of
 * the open-files limit (at least 64) below it so the rest of the process never meets EMFILE while the
 * placeholders are open. Linux only (elsewhere: undefined, nothing done). Throws when a placeholder cannot be
 * opened; the ones opened are closed first.
 */
export function reserveFdTable(extra: number): FdTableReservation | undefined {
  if (process.platform !== 'linux') return undefined;
  const started = performance.now();
  const limit = openFilesLimit(readFileSync('/proc/self/limits', 'utf8'));
  const inUse = readdirSync('/proc/self/fd').length;
  const headroom = Math.max(64, Math.floor(limit / 10));
  const target = Math.min(inUse + Math.max(0, extra), limit - headroom);
  const fds: number[] = [];
  try {
    while (inUse + fds.length < target) fds.push(openSync('/dev/null', 'r'));
  } finally {
    for (const fd of fds) closeSync(fd);
  }
  return { inUse, opened: fds.length, tableSize: fdTableSize(), limit, ms: performance.now() - started };
}

/** The soft "Max open files" of a /proc/<pid>/limits text; Infinity for "unlimited". */
export function openFilesLimit(limits: string): number {
  const line = limits.split('\n').find((l) => l.startsWith('Max open files'));
  const soft = line?.slice('Max open files'.length).trim().split(/\s+/)[0];
  if (soft === 'unlimited') return Infinity;
  const n = Number(soft);
  if (!Number.isInteger(n) || n <= 0) throw new Error(`no "Max open files" limit in ${JSON.stringify(line ?? limits.slice(0, 80))}`);
  return n;
}

/** The process's descriptor table's current size (FDSize in /proc/self/status). */
export function fdTableSize(): number | undefined {
  const m = /^FDSize:\s*(\d+)$/m.exec(readFileSync('/proc/self/status', 'utf8'));
  return m ? Number(m[1]) : undefined;
}
