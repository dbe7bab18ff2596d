/**
 * CPU and memory of processes from /proc (Linux): utime + stime deltas over a
 * window, in % of one core, and resident memory. Also the machine's load
 * averages and whole-machine CPU use, so a result can say how busy the box was.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';

let ticks: number | undefined;
/** Clock ticks per second (USER_HZ), almost always 100. */
export function clockTicks(): number {
  if (ticks === undefined) {
    try {
      ticks = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
    } catch {
      ticks = 100;
    }
  }
  return ticks;
}

export interface ProcSample {
  /** utime + stime, seconds. */
  cpuSeconds: number;
  /** stime alone (the kernel's share: socket writes, wake-ups), seconds. */
  sysSeconds: number;
  /** Write and read system calls so far (/proc/<pid>/io syscw, syscr; 0 where unreadable). */
  writes: number;
  reads: number;
  rssBytes: number;
  at: number;
}

/** undefined when the process is gone. */
export function sampleProc(pid: number): ProcSample | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Fields after the command name, which is in parentheses and may hold spaces.
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const utime = Number(rest[11]);
    const stime = Number(rest[12]);
    const rssPages = Number(rest[21]);
    const io = readIo(pid);
    return { cpuSeconds: (utime + stime) / clockTicks(), sysSeconds: stime / clockTicks(), writes: io.syscw, reads: io.syscr, rssBytes: rssPages * 4096, at: performance.now() };
  } catch {
    return undefined;
  }
}

/** syscw / syscr of /proc/<pid>/io: write- and read-family system calls (send, sendmsg, writev ... count too). */
function readIo(pid: number): { syscw: number; syscr: number } {
  try {
    const io = readFileSync(`/proc/${pid}/io`, 'utf8');
    return { syscw: Number(/syscw:\s*(\d+)/.exec(io)?.[1] ?? 0), syscr: Number(/syscr:\s*(\d+)/.exec(io)?.[1] ?? 0) };
  } catch {
    return { syscw: 0, syscr: 0 };
  }
}

export interface WatchedProcess {
  name: string;
  pid: number;
}

export interface CpuReport {
  name: string;
  pid: number;
  /** % of one core over the window (200 % = both cores of a 2-core box). */
  cpuPercent: number;
  /** The kernel's part of cpuPercent. */
  sysPercent: number;
  /** Write / read system calls per second over the window. */
  writesPerSec: number;
  readsPerSec: number;
  rssMb: number;
}

/** Takes a sample of each process now; `finish()` returns each one's CPU over the window. */
export class CpuWindow {
  private readonly start = new Map<number, ProcSample>();
  private readonly last = new Map<number, ProcSample>();
  private readonly machineStart = machineCpu();
  private readonly timer: NodeJS.Timeout;

  constructor(private readonly procs: readonly WatchedProcess[]) {
    for (const p of procs) {
      const s = sampleProc(p.pid);
      if (s) this.start.set(p.pid, s);
    }
    // A process that exits before finish() (SIPp at the end of its calls) is counted up to its last sample.
    this.timer = setInterval(() => {
      for (const p of procs) {
        const s = sampleProc(p.pid);
        if (s) this.last.set(p.pid, s);
      }
    }, 500);
    this.timer.unref();
  }

  finish(): { procs: CpuReport[]; machineBusyPercent: number } {
    const out: CpuReport[] = [];
    clearInterval(this.timer);
    for (const p of this.procs) {
      const a = this.start.get(p.pid);
      const b = sampleProc(p.pid) ?? this.last.get(p.pid);
      if (!a || !b) continue;
      const wall = (b.at - a.at) / 1000;
      const per = (d: number): number => (wall > 0 ? d / wall : 0);
      out.push({
        name: p.name,
        pid: p.pid,
        cpuPercent: per(b.cpuSeconds - a.cpuSeconds) * 100,
        sysPercent: per(b.sysSeconds - a.sysSeconds) * 100,
        writesPerSec: per(b.writes - a.writes),
        readsPerSec: per(b.reads - a.reads),
        rssMb: b.rssBytes / 2 ** 20,
      });
    }
    const m = machineCpu();
    const total = m.total - this.machineStart.total;
    const busy = total > 0 ? (1 - (m.idle - this.machineStart.idle) / total) * 100 : 0;
    return { procs: out, machineBusyPercent: busy };
  }
}

/** Jiffies of the whole machine (all cores): total and idle (+ iowait). */
export function machineCpu(): { total: number; idle: number } {
  const line = readFileSync('/proc/stat', 'utf8').split('\n')[0] ?? '';
  const v = line.trim().split(/\s+/).slice(1).map(Number);
  const total = v.reduce((a, b) => a + b, 0);
  return { total, idle: (v[3] ?? 0) + (v[4] ?? 0) };
}

/** "0.42 0.24 0.12" from /proc/loadavg. */
export function loadAverages(): string {
  return readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');
}

/** CPU model and core count, for the results table. */
export function machineDescription(): string {
  const info = readFileSync('/proc/cpuinfo', 'utf8');
  const model = /model name\s*:\s*(.+)/.exec(info)?.[1]?.trim() ?? 'unknown CPU';
  const n = info.split('\n').filter((l) => l.startsWith('processor')).length;
  return `${n} × ${model}, Node ${process.version}`;
}

export function formatCpu(r: { procs: CpuReport[]; machineBusyPercent: number }): string {
  const rows = r.procs.map(
    (p) =>
      `  ${p.name.padEnd(22)} pid ${String(p.pid).padEnd(8)} cpu ${p.cpuPercent.toFixed(1).padStart(6)} % (sys ${p.sysPercent.toFixed(1).padStart(5)})` +
      `   writes ${p.writesPerSec.toFixed(0).padStart(6)}/s reads ${p.readsPerSec.toFixed(0).padStart(6)}/s   rss ${p.rssMb.toFixed(0).padStart(5)} MB`,
  );
  return [...rows, `  machine busy (all cores): ${r.machineBusyPercent.toFixed(1)} % of ${machineCores()} cores`].join('\n');
}

function machineCores(): number {
  return readFileSync('/proc/cpuinfo', 'utf8').split('\n').filter((l) => l.startsWith('processor')).length;
}

/** Machine-wide UDP datagrams dropped because a socket's receive buffer was full (/proc/net/snmp). */
export function udpReceiveBufferErrors(): number {
  const lines = readFileSync('/proc/net/snmp', 'utf8').split('\n').filter((l) => l.startsWith('Udp:'));
  const head = lines[0]?.split(/\s+/) ?? [];
  const vals = lines[1]?.split(/\s+/) ?? [];
  return Number(vals[head.indexOf('RcvbufErrors')] ?? 0);
}
