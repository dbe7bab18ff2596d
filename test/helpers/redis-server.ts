/**
 * A private redis-server for tests that kill Redis: never the shared one on
 * 6379. AOF on (fsync always, so an acknowledged write survives kill -9),
 * its own directory and a free port; kill() and start() reuse both.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { findFreePort } from './sipp.js';

export interface OwnRedis {
  readonly url: string;
  /** The same server over its Unix socket: unix://<dir>/redis.sock. */
  readonly socketUrl: string;
  readonly port: number;
  readonly dir: string;
  start(): Promise<void>;
  /** SIGKILL (kill -9) by pid. */
  kill(): Promise<void>;
  /** SIGSTOP / SIGCONT by pid: a Redis that hangs (accepts connections, answers nothing), then goes on. */
  pause(): void;
  resume(): void;
  /** Kills it and removes its directory. */
  cleanup(): Promise<void>;
}

export async function ownRedis(): Promise<OwnRedis> {
  const port = await findFreePort();
  const dir = mkdtempSync(join(tmpdir(), 'fv-redis-'));
  let child: ChildProcess | undefined;
  const exitOf = (c: ChildProcess) => new Promise<void>((r) => (c.exitCode !== null || c.signalCode !== null ? r() : c.once('exit', () => r())));
  const self: OwnRedis = {
    url: `redis://127.0.0.1:${port}`,
    socketUrl: `unix://${join(dir, 'redis.sock')}`,
    port,
    dir,
    async start() {
      child = spawn(
        'redis-server',
        ['--bind', '127.0.0.1', '--port', String(port), '--dir', dir, '--appendonly', 'yes', '--appendfsync', 'always', '--save', '', '--protected-mode', 'no', '--unixsocket', join(dir, 'redis.sock'), '--unixsocketperm', '700'],
        { stdio: 'ignore' },
      );
      const probe = new Redis(self.url, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
      probe.on('error', () => undefined);
      const deadline = Date.now() + 10_000;
      try {
        for (;;) {
          const ok = await probe
            .connect()
            .then(() => probe.ping())
            .catch(() => undefined);
          if (ok === 'PONG') return;
          probe.disconnect();
          if (child.exitCode !== null || Date.now() > deadline) throw new Error('redis-server did not start');
          await new Promise((r) => setTimeout(r, 50));
        }
      } finally {
        probe.disconnect();
      }
    },
    async kill() {
      if (!child?.pid) return;
      const c = child;
      if (c.exitCode === null && c.signalCode === null) process.kill(c.pid!, 'SIGKILL');
      await exitOf(c);
    },
    pause() {
      if (child?.pid && child.exitCode === null && child.signalCode === null) process.kill(child.pid, 'SIGSTOP');
    },
    resume() {
      // Also from cleanup(): a server already gone (killed, its exit not seen yet) needs nothing.
      if (child?.pid && child.exitCode === null && child.signalCode === null) {
        try {
          process.kill(child.pid, 'SIGCONT');
        } catch {
          // gone
        }
      }
    },
    async cleanup() {
      self.resume();
      await self.kill();
      rmSync(dir, { recursive: true, force: true });
    },
  };
  await self.start();
  return self;
}

export interface OwnSentinel {
  readonly port: number;
  /** sentinel://127.0.0.1:<port>/<master name> */
  readonly url: string;
  cleanup(): Promise<void>;
}

/**
 * A Redis Sentinel (redis-server --sentinel) watching `masterPort` as `name`, quorum 1, quick to act (down after
 * 1 s): for tests of a failover. Waits until it knows the master and at least `replicas` replicas of it.
 */
export async function ownSentinel(name: string, masterPort: number, replicas: number): Promise<OwnSentinel> {
  const port = await findFreePort();
  const dir = mkdtempSync(join(tmpdir(), 'fv-sentinel-'));
  const conf = join(dir, 'sentinel.conf');
  writeFileSync(
    conf,
    [`port ${port}`, 'bind 127.0.0.1', `dir ${dir}`, `sentinel monitor ${name} 127.0.0.1 ${masterPort} 1`, `sentinel down-after-milliseconds ${name} 1000`, `sentinel failover-timeout ${name} 5000`].join('\n') + '\n',
  );
  const child = spawn('redis-server', [conf, '--sentinel'], { stdio: 'ignore' });
  const probe = new Redis({ host: '127.0.0.1', port, lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => 100 });
  probe.on('error', () => undefined);
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  try {
    await probe.connect().catch(() => undefined);
    const deadline = Date.now() + 15_000;
    for (;;) {
      const known = (await probe.call('SENTINEL', 'REPLICAS', name).catch(() => [])) as unknown[];
      if (Array.isArray(known) && known.length >= replicas) break;
      if (child.exitCode !== null || Date.now() > deadline) throw new Error('redis-server --sentinel did not start or find the replicas');
      await new Promise((r) => setTimeout(r, 100));
    }
  } finally {
    probe.disconnect();
  }
  return {
    port,
    url: `sentinel://127.0.0.1:${port}/${name}`,
    async cleanup() {
      if (child.exitCode === null && child.signalCode === null && child.pid !== undefined) process.kill(child.pid, 'SIGKILL');
      await exited;
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
