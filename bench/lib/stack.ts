/**
 * What a load benchmark starts on loopback and must tear down again: engine
 * processes (the real CLI, `node dist/main.js start --role ...`, each with its
 * own generated config file), a SIPp far end, and Redis keys under a unique
 * `redis.prefix`. Everything registered here is stopped by PID and every key
 * of the prefix deleted by `cleanup()`, which also runs on SIGINT/SIGTERM, on
 * an uncaught error and when the hard time cap fires.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, copyFileSync, cpSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { createSocket } from 'node:dgram';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Redis } from 'ioredis';
import { redisTarget } from '../../src/store/redis.js';
import { stringify } from 'yaml';

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const SIP_TEST = join(ROOT, 'sip-test');

/** Environment variables that would override the generated config files (config/load.ts). */
const ENGINE_ENV_OVERRIDES = [
  'REDIS_URL', 'REDIS_PREFIX', 'PORT', 'HOST', 'SIP_TRUNK_URI', 'SIP_LISTEN_PORT', 'SMPP_URL',
  'FLASHVERIFY_MASTER_KEY', 'FLASHVERIFY_CONFIG', 'FLASHVERIFY_ADMIN_TOKEN', 'LOG_LEVEL',
];

export interface Managed {
  name: string;
  child: ChildProcess;
  pid: number;
  logFile: string;
  exited: Promise<number | null>;
}

export class Stack {
  readonly prefix = `fvbench${process.pid}x${Date.now().toString(36)}`;
  readonly masterKey = randomBytes(32).toString('hex');
  readonly dir = mkdtempSync(join(tmpdir(), 'flashverify-bench-'));
  readonly procs: Managed[] = [];
  private readonly atCleanupFns: Array<() => void> = [];
  private cleaned = false;
  private readonly onSignal = (sig: NodeJS.Signals): void => {
    process.stderr.write(`\nbench: ${sig}: cleaning up\n`);
    void this.cleanup().finally(() => process.exit(130));
  };

  constructor(readonly redisUrl: string, readonly keepLogs: boolean) {
    process.once('SIGINT', this.onSignal);
    process.once('SIGTERM', this.onSignal);
  }

  /** Starts a hard wall-clock cap: past it the run is cleaned up and the process exits 3. */
  hardCap(seconds: number): void {
    const t = setTimeout(() => {
      process.stderr.write(`\nbench: hard cap of ${seconds} s reached; stopping everything\n`);
      void this.cleanup().finally(() => process.exit(3));
    }, seconds * 1000);
    t.unref();
  }

  /** Generated engine config for one process (YAML, layered over config/default.yaml). */
  writeConfig(name: string, config: Record<string, unknown>): string {
    const file = join(this.dir, `${name}.yaml`);
    writeFileSync(file, stringify(config));
    return file;
  }

  /** The dist/main.js engine processes run: set by `build()`. */
  mainJs = join(ROOT, 'dist', 'main.js');

  /**
   * Builds a snapshot of src/ with tsc into this run's temp directory (beside
   * links to config/, assets/ and node_modules/, which the build finds relative
   * to itself), so that edits to src/ or a half-built dist/ during the run
   * change nothing. Type errors in someone's work in progress are reported but
   * do not stop the run (tsc still emits). `useDist` runs ./dist as it is.
   */
  build(useDist: boolean, appDir?: string): void {
    if (appDir) {
      // A snapshot kept from an earlier run (--keep-logs: <dir>/app), e.g. to compare two builds back to back.
      this.mainJs = join(resolve(appDir), 'dist', 'main.js');
      if (!existsSync(this.mainJs)) throw new Error(`${this.mainJs} missing`);
      return;
    }
    if (useDist) {
      if (!existsSync(this.mainJs)) throw new Error(`${this.mainJs} missing: npm run build`);
      return;
    }
    const app = join(this.dir, 'app');
    mkdirSync(app);
    for (const d of ['config', 'assets', 'node_modules']) symlinkSync(join(ROOT, d), join(app, d));
    copyFileSync(join(ROOT, 'package.json'), join(app, 'package.json'));
    const t0 = Date.now();
    const r = spawnSync(process.execPath, [join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', join(ROOT, 'tsconfig.build.json'), '--outDir', join(app, 'dist'), '--declaration', 'false', '--sourceMap', 'false'], {
      cwd: ROOT,
      encoding: 'utf8',
    });
    this.mainJs = join(app, 'dist', 'main.js');
    if (!existsSync(this.mainJs)) throw new Error(`tsc emitted nothing:\n${r.stdout}${r.stderr}`);
    cpSync(join(ROOT, 'src', 'store', 'lua'), join(app, 'dist', 'store', 'lua'), { recursive: true });
    const errors = (r.stdout.match(/error TS/g) ?? []).length;
    process.stderr.write(`bench: built a snapshot of src/ in ${((Date.now() - t0) / 1000).toFixed(1)} s${errors ? ` (${errors} type errors in work in progress, emitted anyway)` : ''}\n`);
  }

  engineEnv(): NodeJS.ProcessEnv {
    const env = { ...process.env };
    for (const k of ENGINE_ENV_OVERRIDES) delete env[k];
    return env;
  }

  /** Runs the CLI to completion (account commands) and returns its stdout. */
  cli(args: string[], configFile: string): string {
    const r = spawnSync(process.execPath, [this.mainJs, ...args, '--config', configFile], {
      cwd: this.dir,
      env: this.engineEnv(),
      encoding: 'utf8',
    });
    if (r.status !== 0) throw new Error(`flashverify ${args.join(' ')} failed (${r.status}): ${r.stderr}`);
    return r.stdout;
  }

  /** `[nice -n N] node [nodeArgs] dist/main.js start --role ROLE --config FILE`, logs to a file (nice execs node: same pid). */
  startEngine(name: string, role: 'api' | 'worker' | 'all' | 'webhooks', configFile: string, nodeArgs: string[] = [], nice = 0): Managed {
    const args = [...nodeArgs, this.mainJs, 'start', '--role', role, '--config', configFile];
    return nice
      ? this.spawnManaged(name, 'nice', ['-n', String(nice), process.execPath, ...args], { env: this.engineEnv() })
      : this.spawnManaged(name, process.execPath, args, { env: this.engineEnv() });
  }

  spawnManaged(name: string, cmd: string, args: string[], opts: { env?: NodeJS.ProcessEnv; cwd?: string } = {}): Managed {
    const logFile = join(this.dir, `${name}.log`);
    const fd = openSync(logFile, 'a');
    const child = spawn(cmd, args, { cwd: opts.cwd ?? this.dir, env: opts.env ?? process.env, stdio: ['ignore', fd, fd] });
    closeSync(fd);
    if (child.pid === undefined) throw new Error(`could not start ${cmd}`);
    const exited = new Promise<number | null>((res) => child.once('exit', (code, signal) => res(code ?? (signal ? 128 : null))));
    const m: Managed = { name, child, pid: child.pid, logFile, exited };
    this.procs.push(m);
    return m;
  }

  /** Last lines of a process's log, for error messages. */
  tail(m: Managed, lines = 20): string {
    try {
      return readFileSync(m.logFile, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
    } catch {
      return '';
    }
  }

  /** SIGTERM, then SIGKILL after `graceMs`; only processes this stack started, by PID. */
  async stop(m: Managed, graceMs = 10_000): Promise<void> {
    if (m.child.exitCode !== null || m.child.signalCode !== null) return;
    m.child.kill('SIGTERM');
    const t = setTimeout(() => m.child.kill('SIGKILL'), graceMs);
    await m.exited;
    clearTimeout(t);
  }

  /** `fn` runs first in cleanup(): undoes what the run did to something it did not start (the shared Redis's affinity). */
  atCleanup(fn: () => void): void {
    this.atCleanupFns.push(fn);
  }

  async cleanup(): Promise<void> {
    if (this.cleaned) return;
    this.cleaned = true;
    for (const fn of this.atCleanupFns) {
      try {
        fn();
      } catch (err) {
        process.stderr.write(`bench: cleanup: ${(err as Error).message}\n`);
      }
    }
    process.removeListener('SIGINT', this.onSignal);
    process.removeListener('SIGTERM', this.onSignal);
    await Promise.all([...this.procs].reverse().map((m) => this.stop(m)));
    const deleted = await deletePrefix(this.redisUrl, this.prefix).catch((err: Error) => {
      process.stderr.write(`bench: could not delete Redis keys ${this.prefix}:*: ${err.message}\n`);
      return -1;
    });
    if (deleted >= 0) process.stderr.write(`bench: deleted ${deleted} Redis keys under ${this.prefix}:*\n`);
    if (this.keepLogs) process.stderr.write(`bench: logs kept in ${this.dir}\n`);
    else rmSync(this.dir, { recursive: true, force: true });
  }
}

/** SCAN + UNLINK of every key under `prefix:`. */
export async function deletePrefix(redisUrl: string, prefix: string): Promise<number> {
  const redis = new Redis(redisTarget(redisUrl), { maxRetriesPerRequest: 1, lazyConnect: true });
  await redis.connect();
  let n = 0;
  try {
    let cursor = '0';
    do {
      const [next, keys] = await redis.scan(cursor, 'MATCH', `${prefix}:*`, 'COUNT', 5000);
      cursor = next;
      if (keys.length) n += await redis.unlink(...keys);
    } while (cursor !== '0');
  } finally {
    redis.disconnect();
  }
  return n;
}

/** A free TCP port on 127.0.0.1 (closed again before use: fine on a box the bench owns loopback ports of). */
export function freeTcpPort(): Promise<number> {
  return new Promise((res, rej) => {
    const s = createServer();
    s.once('error', rej);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => res(port));
    });
  });
}

/** A port free for both UDP and TCP on 127.0.0.1 (SIP listens on both). */
export async function freeSipPort(): Promise<number> {
  for (let i = 0; i < 50; i++) {
    const port = await freeTcpPort();
    const ok = await new Promise<boolean>((res) => {
      const u = createSocket('udp4');
      u.once('error', () => res(false));
      u.bind(port, '127.0.0.1', () => u.close(() => res(true)));
    });
    if (ok) return port;
  }
  throw new Error('no free SIP port');
}

/** Polls a URL until it answers 200 (or the process dies / time runs out). */
export async function waitHttpOk(url: string, m: Managed, timeoutMs: number, tail: () => string): Promise<void> {
  const until = Date.now() + timeoutMs;
  let dead = false;
  void m.exited.then(() => (dead = true));
  while (Date.now() < until) {
    if (dead) throw new Error(`${m.name} exited during start:\n${tail()}`);
    try {
      const r = await fetch(url);
      if (r.ok) return;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${m.name} not ready at ${url} after ${timeoutMs} ms:\n${tail()}`);
}

/** Redis server's pid and its INFO, for the CPU table (Redis is shared: other users' load shows in it too). */
export async function redisPid(redisUrl: string): Promise<number | undefined> {
  const redis = new Redis(redisTarget(redisUrl), { maxRetriesPerRequest: 1, lazyConnect: true });
  try {
    await redis.connect();
    const info = await redis.info('server');
    const pid = /process_id:(\d+)/.exec(info)?.[1];
    return pid ? Number(pid) : undefined;
  } catch {
    return undefined;
  } finally {
    redis.disconnect();
  }
}

/** Parses SIPp's -trace_stat CSV: the last row, by column name. */
export function readSippStats(file: string): Record<string, string> | undefined {
  if (!existsSync(file)) return undefined;
  const lines = readFileSync(file, 'utf8').trim().split('\n');
  if (lines.length < 2) return undefined;
  const head = lines[0]!.split(';');
  const last = lines[lines.length - 1]!.split(';');
  const out: Record<string, string> = {};
  head.forEach((h, i) => (out[h] = last[i] ?? ''));
  return out;
}
