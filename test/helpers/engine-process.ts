/**
 * Runs the engine as real processes, the way an operator does:
 * `flashverify start --role api|worker|all --config FILE` (through tsx, from
 * src/), so tests can SIGKILL or SIGTERM one role alone and start it again.
 * Only processes started here are ever signalled, by their pid.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { Redis } from 'ioredis';
import { stringify } from 'yaml';
import { AccountStore } from '../../src/accounts/account-store.js';
import { Sealer } from '../../src/crypto/sealer.js';
import { Keys } from '../../src/store/keys.js';
import { redisClient } from '../../src/store/redis.js';
import { deletePrefix, REDIS_URL, waitFor } from './engine.js';
import { findFreePort } from './sipp.js';
import type { Receiver, Received } from './webhook-receiver.js';

const ROOT = resolve(import.meta.dirname, '..', '..');

export interface EngineProcess {
  readonly role: string;
  readonly child: ChildProcess;
  /** Everything the process wrote (JSON log lines) so far. */
  output(): string;
  /** Resolves with the exit code (null when killed by a signal) and the time it took, or timedOut. */
  waitExit(timeoutMs: number): Promise<{ code: number | null; signal: NodeJS.Signals | null; timedOut: boolean; ms: number }>;
  kill(signal: NodeJS.Signals): void;
}

export interface EngineCluster {
  readonly dir: string;
  readonly prefix: string;
  readonly redisUrl: string;
  readonly httpUrl: string;
  readonly redis: Redis;
  readonly keys: Keys;
  readonly sealer: Sealer;
  /**
   * Starts one process of a role and waits until it is serving (api, all: /healthz; worker, webhooks: its
   * "… role started" log line).
   * `signalOn`: send `signal` the moment the process writes `text` (from its output handler, without waiting),
   * and return then: a signal during start-up.
   */
  start(role: 'api' | 'worker' | 'all' | 'webhooks', opts?: { signalOn?: { text: string; signal: NodeJS.Signals } }): Promise<EngineProcess>;
  account(balance?: number): Promise<{ account_id: string; auth: string; api_secret: string }>;
  /** SIGKILLs whatever is still running, deletes the test's keys and files. */
  cleanup(): Promise<void>;
}

/**
 * Config overrides are merged into a per-test config file (own Redis prefix, loopback, ephemeral SIP port). `env`: more
 * environment for the processes (e.g. NODE_EXTRA_CA_CERTS, which Node reads only at process start).
 */
export async function engineCluster(overrides: Record<string, unknown>, opts: { redisUrl?: string; env?: NodeJS.ProcessEnv } = {}): Promise<EngineCluster> {
  const dir = mkdtempSync(join(tmpdir(), 'fv-proc-'));
  const prefix = `fvproc-${randomBytes(4).toString('hex')}`;
  const redisUrl = opts.redisUrl ?? REDIS_URL;
  const env = { ...process.env, ...opts.env };
  const masterKey = randomBytes(32).toString('hex');
  const httpPort = await findFreePort();
  const config = merge(
    {
      http: { host: '127.0.0.1', port: httpPort },
      redis: { url: redisUrl, prefix },
      security: { masterKey },
      log: { level: 'info' },
      sip: { listen: { host: '127.0.0.1', port: 0 } },
      metrics: { host: '127.0.0.1', port: 0 },
      // No SMPP binds unless a test brings a test SMSC.
      sms: { enabled: false },
    },
    overrides,
  );
  const configFile = join(dir, 'config.yaml');
  writeFileSync(configFile, stringify(config));
  const redis = redisClient(redisUrl, { maxRetriesPerRequest: 1 });
  // Keep the test's own connection quiet while a test has its Redis down on purpose.
  redis.on('error', () => undefined);
  const keys = new Keys(prefix);
  const sealer = new Sealer(Buffer.from(masterKey, 'hex'));
  const procs: ChildProcess[] = [];
  const httpUrl = `http://127.0.0.1:${httpPort}`;

  return {
    dir,
    prefix,
    redisUrl,
    httpUrl,
    redis,
    keys,
    sealer,
    async start(role, opts = {}) {
      const child = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts', 'start', '--role', role, '--config', configFile], {
        cwd: ROOT,
        env: { ...env, LOG_LEVEL: String((config.log as Record<string, unknown>).level) },
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      procs.push(child);
      let out = '';
      let signalled = false;
      const signalOn = opts.signalOn;
      child.stdout!.on('data', (d: Buffer) => {
        out += d.toString();
        if (signalOn && !signalled && out.includes(signalOn.text) && child.pid !== undefined) {
          signalled = true;
          process.kill(child.pid, signalOn.signal);
        }
      });
      child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
      const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) =>
        child.once('exit', (code, signal) => r({ code, signal })),
      );
      const p: EngineProcess = {
        role,
        child,
        output: () => out,
        async waitExit(timeoutMs) {
          const t0 = Date.now();
          let timer: NodeJS.Timeout | undefined;
          const r = await Promise.race([exited, new Promise<undefined>((res) => (timer = setTimeout(() => res(undefined), timeoutMs)))]);
          clearTimeout(timer);
          return r ? { ...r, timedOut: false, ms: Date.now() - t0 } : { code: null, signal: null, timedOut: true, ms: Date.now() - t0 };
        },
        kill(signal) {
          if (child.exitCode === null && child.signalCode === null && child.pid !== undefined) process.kill(child.pid, signal);
        },
      };
      if (signalOn) {
        await waitFor(async () => signalled || child.exitCode !== null || child.signalCode !== null, 20_000);
        return p;
      }
      await waitFor(
        async () => {
          if (child.exitCode !== null) throw new Error(`${role} process exited during start-up:\n${out}`);
          if (role === 'worker' || role === 'webhooks') return out.includes(`${role} role started`);
          return (await fetch(`${httpUrl}/healthz`).catch(() => undefined))?.ok;
        },
        20_000,
        100,
      );
      return p;
    },
    async account(balance = 10) {
      const a = await new AccountStore(redis, keys, sealer).create({ name: 'proc', balance, currency: 'GBP', active: true });
      return { account_id: a.account_id, api_secret: a.api_secret, auth: 'Basic ' + Buffer.from(`${a.api_key}:${a.api_secret}`).toString('base64') };
    },
    async cleanup() {
      for (const c of procs) {
        if (c.exitCode === null && c.signalCode === null && c.pid !== undefined) {
          process.kill(c.pid, 'SIGKILL');
          await new Promise((r) => c.once('exit', r));
        }
      }
      await deletePrefix(redis, prefix).catch(() => undefined);
      redis.disconnect();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/**
 * A webhooks process killed while `r` holds a request's `sent` webhook unanswered (`Receiver.hang`): SIGKILLs it,
 * lets the receiver answer again and starts the next webhooks process; waits until that `sent` is delivered, within
 * `withinMs` of the start, and half a second more (a second delivery would have come by then). Gives every
 * `verification.sent` request of `requestId` the receiver got, the hung one first.
 */
export async function sentAfterWebhooksKill(c: EngineCluster, dead: EngineProcess, r: Receiver, requestId: string, withinMs: number): Promise<Received[]> {
  dead.kill('SIGKILL');
  await dead.waitExit(5000);
  r.hang = false;
  await c.start('webhooks');
  await waitFor(async () => r.events(requestId).includes('verification.sent'), withinMs);
  await new Promise((done) => setTimeout(done, 500));
  return r.forRequest(requestId).filter((x) => x.json.event === 'verification.sent');
}

function merge(a: Record<string, unknown>, b: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = { ...a };
  for (const [k, v] of Object.entries(b)) {
    const cur = out[k];
    out[k] =
      typeof cur === 'object' && cur !== null && !Array.isArray(cur) && typeof v === 'object' && v !== null && !Array.isArray(v)
        ? merge(cur as Record<string, unknown>, v as Record<string, unknown>)
        : v;
  }
  return out;
}

/** Distinct INVITE transactions (Call-IDs) per Request-URI user: retransmissions count once. */
export function invitesPerDestination(messages: { direction: string; method?: string; startLine: string; header(n: string): string | undefined }[]): Map<string, Set<string>> {
  const out = new Map<string, Set<string>>();
  for (const m of messages) {
    if (m.direction !== 'received' || m.method !== 'INVITE') continue;
    const user = /^INVITE\s+sips?:([^@;\s]+)@/i.exec(m.startLine)?.[1];
    if (!user) continue;
    const set = out.get(user) ?? new Set<string>();
    set.add(m.header('call-id') ?? '');
    out.set(user, set);
  }
  return out;
}
