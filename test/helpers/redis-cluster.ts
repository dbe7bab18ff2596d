/**
 * A private Redis Cluster for tests: three masters (and, when asked, one
 * replica each) on loopback, each a redis-server process of its own with its
 * own directory, free client port and free cluster-bus port (`cluster-port`,
 * Redis 7: the default port + 10000 may be taken or out of range). Never the
 * shared Redis on 6379. stop() kills the servers it started, by PID.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, mkdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { Redis } from 'ioredis';
import { findFreePort } from './sipp.js';

const run = promisify(execFile);

export interface ClusterNode {
  readonly port: number;
  readonly url: string;
  /** SIGKILL by pid (a crashed node). */
  kill(): Promise<void>;
  /** Starts a killed node again, with its data (AOF) and its cluster config: it rejoins the cluster. */
  start(): Promise<void>;
}

export interface OwnRedisCluster {
  /** The seed list for redis.url: every node, comma-separated. */
  readonly url: string;
  readonly nodes: readonly ClusterNode[];
  /** Until every node sees every slot served and every replica attached (after nodes were started again). */
  waitUntilOk(): Promise<void>;
  stop(): Promise<void>;
}

export async function ownRedisCluster(opts: { masters?: number; replicas?: 0 | 1 } = {}): Promise<OwnRedisCluster> {
  const masters = opts.masters ?? 3;
  const replicas = opts.replicas ?? 0;
  const dir = mkdtempSync(join(tmpdir(), 'fv-redis-cluster-'));
  const children: ChildProcess[] = [];
  const nodes: ClusterNode[] = [];
  const exitOf = (c: ChildProcess) => new Promise<void>((r) => (c.exitCode !== null || c.signalCode !== null ? r() : c.once('exit', () => r())));
  const killAll = (): void => {
    for (const c of children) if (c.pid && c.exitCode === null && c.signalCode === null) process.kill(c.pid, 'SIGKILL');
  };
  // A test process that ends without its afterAll (a hook timeout) must not leave the nodes running.
  const onExit = (): void => {
    killAll();
    rmSync(dir, { recursive: true, force: true });
  };
  process.once('exit', onExit);
  const stop = async (): Promise<void> => {
    process.removeListener('exit', onExit);
    killAll();
    await Promise.all(children.map(exitOf));
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    for (let i = 0; i < masters * (1 + replicas); i++) {
      const port = await findFreePort();
      let busPort = await findFreePort();
      while (busPort === port) busPort = await findFreePort();
      const nodeDir = join(dir, String(port));
      mkdirSync(nodeDir);
      // AOF with fsync always, as the README advises: a node killed and started again has every acknowledged write.
      const args = [
        '--bind', '127.0.0.1', '--port', String(port), '--cluster-enabled', 'yes', '--cluster-port', String(busPort),
        '--cluster-config-file', join(nodeDir, 'nodes.conf'), '--cluster-node-timeout', '1000', '--dir', nodeDir,
        '--save', '', '--appendonly', 'yes', '--appendfsync', 'always', '--protected-mode', 'no',
      ];
      let child = spawn('redis-server', args, { stdio: 'ignore' });
      children.push(child);
      nodes.push({
        port,
        url: `redis://127.0.0.1:${port}`,
        async kill() {
          if (child.pid && child.exitCode === null && child.signalCode === null) process.kill(child.pid, 'SIGKILL');
          await exitOf(child);
        },
        async start() {
          if (child.exitCode === null && child.signalCode === null) return;
          child = spawn('redis-server', args, { stdio: 'ignore' });
          children.push(child);
          // The port was free while the node was down: what answers must be the node just started.
          await waitForOwn(port, child.pid);
        },
      });
    }
    for (const [i, n] of nodes.entries()) await waitForOwn(n.port, children[i]!.pid);
    await run('redis-cli', [
      '--cluster', 'create', ...nodes.map((n) => `127.0.0.1:${n.port}`), '--cluster-replicas', String(replicas), '--cluster-yes',
    ]);
    // Every node must see every slot served before a client is let in.
    for (const n of nodes) await waitForClusterOk(n.port, replicas);
    return {
      url: nodes.map((n) => n.url).join(','),
      nodes,
      stop,
      async waitUntilOk() {
        for (const n of nodes) await waitForClusterOk(n.port, replicas);
      },
    };
  } catch (err) {
    await stop();
    throw err;
  }
}

async function waitForPing(port: number): Promise<void> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const probe = new Redis(port, '127.0.0.1', { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
    probe.on('error', () => undefined);
    const ok = await probe
      .connect()
      .then(() => probe.ping())
      .catch(() => undefined)
      .finally(() => probe.disconnect());
    if (ok === 'PONG') return;
    if (Date.now() > deadline) throw new Error(`redis-server on ${port} did not start`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Until the redis-server with this pid answers on the port (not another test's process that took the port). */
async function waitForOwn(port: number, pid: number | undefined): Promise<void> {
  await waitForPing(port);
  const probe = new Redis(port, '127.0.0.1', { maxRetriesPerRequest: 0 });
  probe.on('error', () => undefined);
  const answering = await probe
    .info('server')
    .then((i) => Number(/process_id:(\d+)/.exec(i)?.[1]))
    .finally(() => probe.disconnect());
  if (answering !== pid) throw new Error(`port ${port} is held by another process (pid ${answering}), not the cluster node (pid ${pid})`);
}

/** Until the node sees every slot served, and each slot range with its replicas attached. */
async function waitForClusterOk(port: number, replicas: number): Promise<void> {
  const deadline = Date.now() + 15_000;
  const probe = new Redis(port, '127.0.0.1', { maxRetriesPerRequest: 0 });
  probe.on('error', () => undefined);
  try {
    for (;;) {
      const info = String(await probe.call('CLUSTER', 'INFO').catch(() => ''));
      const slots = ((await probe.call('CLUSTER', 'SLOTS').catch(() => [])) as unknown[][]) ?? [];
      const attached = slots.length > 0 && slots.every((range) => range.length - 2 >= 1 + replicas);
      if (/cluster_state:ok/.test(info) && /cluster_slots_ok:16384/.test(info) && attached) return;
      if (Date.now() > deadline) throw new Error(`cluster not ok on ${port}: ${info.split('\n')[0] ?? ''}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  } finally {
    probe.disconnect();
  }
}
