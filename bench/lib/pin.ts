/**
 * `--pin`: CPU affinity for the processes of a run, set with `taskset -a -cp` (every thread of the process) once
 * they are up, as systemd's `CPUAffinity=` would set it for a deployed engine. The shared Redis gets its affinity
 * back when the run ends; the bench's own processes die with it.
 *
 * Spec: space-separated `name=cpus`, e.g. `api0=0 worker0=0 worker1=1 sipp=1 redis=1 bench=0`; `cpus` is a CPU list
 * as taskset takes it (`0`, `0,1`, `0-3`). Names: the CPU report's processes (api0, worker1, webhooks0), `sipp`,
 * `redis`, `bench` (the load generator).
 */
import { spawnSync } from 'node:child_process';
import { availableParallelism } from 'node:os';

export interface PinTarget {
  /** The name `--pin` uses. */
  key: string;
  pid: number;
}

const CPU_LIST = /^\d+(-\d+)?(,\d+(-\d+)?)*$/;

/** `name=cpus ...` → name → CPU list; every CPU below `cpus`. Throws a message naming the bad part. */
export function parsePinSpec(spec: string, cpus = availableParallelism()): Map<string, string> {
  const out = new Map<string, string>();
  for (const part of spec.split(/\s+/).filter(Boolean)) {
    const eq = part.indexOf('=');
    const name = eq > 0 ? part.slice(0, eq) : '';
    const list = eq > 0 ? part.slice(eq + 1) : '';
    if (!name || !CPU_LIST.test(list)) throw new Error(`--pin: "${part}" is not name=cpus (e.g. worker0=1 or redis=0,1)`);
    if (out.has(name)) throw new Error(`--pin: ${name} is given twice`);
    for (const range of list.split(',')) {
      const [lo, hi = lo] = range.split('-').map(Number) as [number, number?];
      if (hi! < lo) throw new Error(`--pin: ${name}=${list}: the range ${range} runs backwards`);
      if (hi! >= cpus) throw new Error(`--pin: ${name}=${list}: CPU ${hi} does not exist (this machine has CPUs 0-${cpus - 1})`);
    }
    out.set(name, list);
  }
  return out;
}

/** The current affinity list of a process, as taskset prints it (`0,1`, `0-3`). */
function affinityOf(pid: number): string {
  const r = spawnSync('taskset', ['-cp', String(pid)], { encoding: 'utf8' });
  if (r.error) throw new Error(`--pin needs taskset (util-linux): ${r.error.message}`);
  const m = /list:\s*(\S+)/.exec(r.stdout);
  if (r.status !== 0 || !m) throw new Error(`taskset -cp ${pid}: ${r.stderr.trim() || r.stdout.trim()}`);
  return m[1]!;
}

function setAffinity(pid: number, list: string): void {
  const r = spawnSync('taskset', ['-a', '-cp', list, String(pid)], { encoding: 'utf8' });
  if (r.error || r.status !== 0) throw new Error(`taskset -a -cp ${list} ${pid}: ${r.error?.message ?? r.stderr.trim()}`);
}

/**
 * Pins each named target; a name in the spec with no target is an error that lists the names there are. Returns
 * what was done (for the report) and a function that gives every pinned process its old affinity back (a process
 * that has exited is skipped).
 */
export function applyPins(pins: Map<string, string>, targets: readonly PinTarget[]): { summary: string; restore: () => void } {
  const byKey = new Map(targets.map((t) => [t.key, t]));
  const unknown = [...pins.keys()].filter((k) => !byKey.has(k));
  if (unknown.length) throw new Error(`--pin: no process named ${unknown.join(', ')} in this run (there are: ${targets.map((t) => t.key).join(', ')})`);
  const before: Array<{ pid: number; list: string }> = [];
  const restore = (): void => {
    for (const b of before) {
      try {
        setAffinity(b.pid, b.list);
      } catch {
        // exited: nothing to give back
      }
    }
  };
  try {
    for (const [key, list] of pins) {
      const { pid } = byKey.get(key)!;
      before.push({ pid, list: affinityOf(pid) });
      setAffinity(pid, list);
    }
  } catch (err) {
    restore();
    throw err;
  }
  return { summary: [...pins].map(([k, l]) => `${k}→${l}`).join(' '), restore };
}
