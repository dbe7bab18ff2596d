import { execFile } from 'node:child_process';
import { createSocket } from 'node:dgram';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createServer, type AddressInfo, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AccountStore } from '../../src/accounts/account-store.js';
import { WEBHOOK_QUEUE, type WebhookJobData } from '../../src/events/webhook-queue.js';
import type { Method } from '../../src/verification/types.js';
import { VerificationService } from '../../src/verification/verification-service.js';
import { deletePrefix, REDIS_URL, startTestEngine, testConfig, waitFor, type TestEngine } from '../helpers/engine.js';
import { engineCluster } from '../helpers/engine-process.js';
import { ownRedis, type OwnRedis } from '../helpers/redis-server.js';
import { findFreePort } from '../helpers/sipp.js';
import { Receiver } from '../helpers/webhook-receiver.js';

const ROOT = resolve(import.meta.dirname, '..', '..');

function flashverify(args: string[], env: Record<string, string> = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((done) => {
    execFile(process.execPath, ['--import', 'tsx', 'src/main.ts', ...args], { cwd: ROOT, env: { ...process.env, ...env } }, (err, stdout, stderr) =>
      done({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr }),
    );
  });
}

/** A TCP server on an ephemeral loopback port that takes connections and never writes. */
async function silentTcpServer(): Promise<{ port: number; close(): Promise<void> }> {
  const held = new Set<Socket>();
  const server = createServer((socket) => {
    held.add(socket);
    socket.on('close', () => held.delete(socket));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  return {
    port: (server.address() as AddressInfo).port,
    close: () =>
      new Promise<void>((r) => {
        server.close(() => r());
        for (const socket of held) socket.destroy();
      }),
  };
}

// Each CLI run is its own Node process (about 1.5 s with tsx); give the multi-step tests room.
describe('flashverify CLI', { timeout: 90_000 }, () => {
  const prefix = `fvcli-${randomBytes(4).toString('hex')}`;
  const dir = mkdtempSync(join(tmpdir(), 'fv-cli-'));
  const env = { REDIS_URL, REDIS_PREFIX: prefix, LOG_LEVEL: 'warn' };
  const keyFile = join(dir, 'master.key');
  const config = join(dir, 'c.yaml');
  // Webhook URLs are resolved and must not be private unless allowed: loopback here, no network.
  writeFileSync(config, `security: { masterKeyFile: "${keyFile}" }\nwebhooks: { allowPrivate: true }\n`);

  afterAll(async () => {
    const redis = new Redis(REDIS_URL);
    await deletePrefix(redis, prefix);
    await redis.quit();
    rmSync(dir, { recursive: true, force: true });
  });

  it('manages an account through its whole life', async () => {
    const created = await flashverify(['account', 'create', '--name', 'acme', '--balance', '12.5', '--currency', 'EUR', '--config', config], env);
    expect(created.code).toBe(0);
    const a = JSON.parse(created.stdout) as Record<string, unknown>;
    expect(a).toMatchObject({ name: 'acme', status: 'pending', currency: 'EUR', balance: 12.5 });
    expect(a.api_key).toMatch(/^[0-9a-f]{32}$/);
    expect(a.api_secret).toMatch(/^[0-9a-f]{64}$/);
    // The master key was generated on first use, readable by its owner only.
    expect(statSync(keyFile).mode & 0o777).toBe(0o600);
    const id = String(a.account_id);
    const step = async (...args: string[]) => {
      const r = await flashverify(['account', ...args, '--config', config], env);
      expect(r.stderr).toBe('');
      expect(r.code).toBe(0);
      return JSON.parse(r.stdout) as Record<string, unknown>;
    };
    expect((await step('approve', id)).status).toBe('active');
    expect((await step('topup', id, '--amount', '7.5')).balance).toBe(20);
    expect((await step('suspend', id)).status).toBe('suspended');
    const regenerated = await step('regenerate-secret', id);
    expect(regenerated.api_key).toBe(a.api_key);
    expect(regenerated.api_secret).not.toBe(a.api_secret);
    expect((await step('set-webhook', id, '--url', 'http://127.0.0.1:9/fv')).webhook_url).toBe('http://127.0.0.1:9/fv');
    expect((await step('set-webhook', id, '--clear')).webhook_url).toBeNull();
    // Secrets are only ever printed by create / regenerate-secret.
    expect(await step('show', id)).not.toHaveProperty('api_secret');
  });

  it('sets and clears a per-account rate limit', async () => {
    const created = await flashverify(['account', 'create', '--name', 'limited', '--config', config], env);
    expect(created.code).toBe(0);
    const id = String((JSON.parse(created.stdout) as Record<string, unknown>).account_id);
    const set = await flashverify(['account', 'set-rate-limit', id, '--rps', '25', '--config', config], env);
    expect([set.code, set.stderr]).toEqual([0, '']);
    expect((JSON.parse(set.stdout) as Record<string, unknown>).rate_limit).toBe(25);
    const cleared = await flashverify(['account', 'set-rate-limit', id, '--clear', '--config', config], env);
    expect((JSON.parse(cleared.stdout) as Record<string, unknown>).rate_limit).toBeNull();
  });

  it('explains bad usage with a non-zero exit', async () => {
    const r = await flashverify(['account', 'topup', 'nope', '--config', config], env);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/--amount is required/);
    const unknown = await flashverify(['account', 'show', randomBytes(4).toString('hex'), '--config', config], env);
    expect(unknown.code).not.toBe(0);
    expect(unknown.stderr).toMatch(/no account/);
    expect((await flashverify(['frobnicate'], env)).stderr).toMatch(/unknown command/);
    const rps = await flashverify(['account', 'set-rate-limit', randomBytes(4).toString('hex'), '--rps', '0', '--config', config], env);
    expect(rps.code).not.toBe(0);
    expect(rps.stderr).toMatch(/--rps must be a positive whole number/);
  });

  it('a wrong command line exits 2 with a message and no stack; amounts it cannot keep exactly are refused', async () => {
    // A value that looks like an option.
    const negative = await flashverify(['account', 'create', '--name', 'x', '--balance', '-1', '--config', config], env);
    expect(negative.code).toBe(2);
    expect(negative.stderr).toMatch(/^flashverify: Option '--balance' argument is ambiguous/);
    expect(negative.stderr).not.toMatch(/\n\s+at /);
    const minus = await flashverify(['account', 'create', '--name', 'x', '--balance=-1', '--config', config], env);
    expect([minus.code, minus.stderr]).toEqual([2, 'flashverify: --balance must be a non-negative decimal number with at most 6 decimal places, such as 10 or 0.25\n']);
    for (const odd of [' ', '0x10', '1e-7', '1e3']) {
      expect((await flashverify(['account', 'create', '--name', 'x', `--balance=${odd}`, '--config', config], env)).code).toBe(2);
    }
    const huge = await flashverify(['account', 'create', '--name', 'x', '--balance', '1000000000000000', '--config', config], env);
    expect([huge.code, huge.stderr]).toEqual([2, 'flashverify: the balance must be a number from 0 to 1000000000\n']);
    const created = await flashverify(['account', 'create', '--name', 'rich', '--balance', '999999999', '--active', '--config', config], env);
    const id = String((JSON.parse(created.stdout) as Record<string, unknown>).account_id);
    const over = await flashverify(['account', 'topup', id, '--amount', '2', '--config', config], env);
    expect([over.code, over.stderr]).toEqual([2, 'flashverify: the balance would be over 1000000000\n']);
    // Left as it was, and still topped up within the bound.
    const ok = await flashverify(['account', 'topup', id, '--amount', '1', '--config', config], env);
    expect([ok.code, (JSON.parse(ok.stdout) as Record<string, unknown>).balance]).toEqual([0, 1_000_000_000]);
    const missing = await flashverify(['account', 'topup', 'nope', '--config', config], env);
    expect(missing.code).toBe(2);
    // Bad values of other commands: 2 too, with the message and no stack.
    for (const [args, message] of [
      [['account', 'set-webhook', id, '--url', 'ftp://example.com/hook'], /webhook URL must be http:\/\/ or https:\/\//],
      // As the admin API: at most 2,048 characters, and a port something can listen on.
      [['account', 'set-webhook', id, '--url', `http://127.0.0.1:9/${'a'.repeat(60_000)}`], /webhook URL is 60019 characters long \(percent-encoded\); at most 2048/],
      [['account', 'set-webhook', id, '--url', 'http://8.8.8.8:0/hook'], /webhook URL port must be 1-65535/],
      // Short as given, 9,019 characters as kept (each é percent-encoded to 6).
      [['account', 'set-webhook', id, '--url', `http://127.0.0.1:9/${'\u00e9'.repeat(1500)}`], /webhook URL is 9019 characters long \(percent-encoded\); at most 2048/],
      [['account', 'set-fraud', id, '--json', '{"bogus":1}'], /bogus/],
      [['account', 'set-sms-template', id, '--locale', 'fr', '--template', 'no placeholder'], /\{code\}/],
      [['trunk', 'disable', 'nope'], /no SIP trunk named "nope"/],
      // More arguments than the command takes, or another command's option: refused, nothing done.
      [['account', 'suspend', id, 'second-account'], /account suspend: unexpected argument "second-account"/],
      [['account', 'show', id, '--amount', '5'], /account show does not take --amount/],
      [['account', 'create', '--name', 'c1', '25'], /account create: unexpected argument "25"/],
    ] as const) {
      const r = await flashverify([...args, '--config', config], env);
      expect([r.code, r.stderr], args.join(' ')).toEqual([2, expect.stringMatching(message)]);
      expect(r.stderr).not.toMatch(/\n\s+at /);
    }
    // The account the refused suspend named is as it was (created active: --active).
    expect((JSON.parse((await flashverify(['account', 'show', id, '--config', config], env)).stdout) as Record<string, unknown>).status).toBe('active');
  });

  it('says its version', async () => {
    const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string };
    for (const flag of ['--version', '-v']) {
      const r = await flashverify([flag], env);
      expect([r.code, r.stdout, r.stderr]).toEqual([0, `flashverify ${pkg.version} (Node.js ${process.version})\n`, '']);
    }
  });

  it('refuses an invalid configuration listing every error, exit 78', async () => {
    const bad = join(dir, 'bad.yaml');
    writeFileSync(bad, 'http:\n  port: -1\nflash:\n  ringMs: soon\nsip:\n  trunks:\n    - { name: t, uri: "http://x" }\n');
    const r = await flashverify(['start', '--config', bad], env);
    expect(r.code).toBe(78);
    expect(r.stderr).toMatch(/http\.port/);
    expect(r.stderr).toMatch(/flash\.ringMs/);
    expect(r.stderr).toMatch(/sip\.trunks\.0\.uri: must be a SIP URI/);
  });
});

/**
 * Redis not there when the engine starts: a clear error that names it (password hidden) and exit 69 (EX_UNAVAILABLE)
 * after `redis.startupWaitMs`; a Redis that comes up within that wait is simply used.
 */
describe('flashverify without Redis at start-up', { timeout: 90_000 }, () => {
  const dir = mkdtempSync(join(tmpdir(), 'fv-cli-noredis-'));
  const config = join(dir, 'c.yaml');
  writeFileSync(config, `security: { masterKeyFile: "${join(dir, 'master.key')}" }\nredis: { startupWaitMs: 1500 }\nsms: { enabled: false }\nhttp: { host: 127.0.0.1, port: 0 }\nsip: { listen: { host: 127.0.0.1, port: 0 } }\nmetrics: { port: 0 }\n`);
  const prefix = `fvnoredis-${randomBytes(4).toString('hex')}`;
  /** A port nothing listens on. */
  let nobody: number;
  let own: OwnRedis;
  beforeAll(async () => {
    nobody = await findFreePort();
    own = await ownRedis();
  });
  afterAll(async () => {
    await own?.cleanup();
    rmSync(dir, { recursive: true, force: true });
  });

  it('start exits 69 after the wait, naming the URL without its password and the connection error', async () => {
    const t0 = Date.now();
    const r = await flashverify(['start', '--config', config], { REDIS_URL: `redis://:s3cret-pw@127.0.0.1:${nobody}`, REDIS_PREFIX: prefix, LOG_LEVEL: 'warn' });
    expect(r.code).toBe(69);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(1500);
    expect(r.stderr).toContain(`cannot reach Redis at redis://:***@127.0.0.1:${nobody} within 1.5 s (redis.startupWaitMs): connect ECONNREFUSED 127.0.0.1:${nobody}`);
    expect(r.stderr).not.toMatch(/MaxRetriesPerRequest|\n\s+at /);
    expect(r.stdout + r.stderr).not.toContain('s3cret-pw');
  });

  it('account and webhook commands try once and say the same', async () => {
    const env = { REDIS_URL: `redis://127.0.0.1:${nobody}`, REDIS_PREFIX: prefix, LOG_LEVEL: 'error' };
    const t0 = Date.now();
    const created = await flashverify(['account', 'create', '--name', 'x', '--config', config], env);
    expect(created.code).toBe(69);
    expect(created.stderr).toMatch(/^flashverify: cannot reach Redis at redis:\/\/127\.0\.0\.1:\d+: connect ECONNREFUSED/m);
    const failed = await flashverify(['webhook', 'failed', 'acct', '--config', config], env);
    expect(failed.code).toBe(69);
    expect(failed.stderr).toMatch(/cannot reach Redis/);
    // Two CLI processes (about 1.5 s each with tsx), with no wait for Redis in either.
    expect(Date.now() - t0).toBeLessThan(15_000);
  });

  it('a Redis that answers PING with an error (a password required) is named at once, without waiting', async () => {
    const admin = new Redis(own.url);
    await admin.config('SET', 'requirepass', 'needed-pw');
    try {
      const t0 = Date.now();
      const r = await flashverify(['start', '--config', config], { REDIS_URL: own.url, REDIS_PREFIX: prefix, LOG_LEVEL: 'error' });
      expect(r.code).toBe(69);
      expect(r.stderr).toMatch(/Redis at redis:\/\/127\.0\.0\.1:\d+ answered PING with an error: NOAUTH/);
      // Not the 1.5 s wait: Redis is there and has answered.
      expect(Date.now() - t0).toBeLessThan(1500 + 5000);
    } finally {
      await admin.config('SET', 'requirepass', '');
      admin.disconnect();
    }
  });

  it('a server that takes the connection and never answers is named after the wait, not waited for for ever', async () => {
    const silent = await silentTcpServer();
    const port = silent.port;
    try {
      const r = await flashverify(['start', '--config', config], { REDIS_URL: `redis://127.0.0.1:${port}`, REDIS_PREFIX: prefix, LOG_LEVEL: 'error' });
      expect(r.code).toBe(69);
      // The one try lasts what is left of the wait (a little under 1.5 s once the process is up).
      expect(r.stderr).toMatch(new RegExp(`^flashverify: cannot reach Redis at redis://127\\.0\\.0\\.1:${port} within 1\\.5 s \\(redis\\.startupWaitMs\\): no answer to PING within 1\\.[0-5] s\\.`));
    } finally {
      await silent.close();
    }
  });

  it('a command that Redis refuses (full) says so, exit 69, no stack trace', async () => {
    const admin = new Redis(own.url);
    await admin.config('SET', 'maxmemory-policy', 'noeviction');
    await admin.config('SET', 'maxmemory', '1');
    try {
      const r = await flashverify(['account', 'create', '--name', 'x', '--config', config], { REDIS_URL: own.url, REDIS_PREFIX: prefix, LOG_LEVEL: 'error' });
      expect(r.code).toBe(69);
      expect(r.stderr).toMatch(/^flashverify: Redis is unavailable: OOM command not allowed when used memory > 'maxmemory'/);
      expect(r.stderr).not.toMatch(/\n\s+at /);
    } finally {
      await admin.config('SET', 'maxmemory', '0');
      admin.disconnect();
    }
  });

  it('a SIGTERM while the start waits for Redis stops it at once, exit 0', async () => {
    const c = await engineCluster({ redis: { startupWaitMs: 60_000 } }, { redisUrl: `redis://127.0.0.1:${nobody}` });
    try {
      // Sent the moment it says it cannot connect: it is waiting then.
      const p = await c.start('api', { signalOn: { text: 'redis connection error', signal: 'SIGTERM' } });
      const exit = await p.waitExit(10_000);
      expect(exit).toMatchObject({ code: 0, timedOut: false });
      expect(exit.ms).toBeLessThan(3000);
      expect(p.output()).toContain(`stopped while waiting for Redis at redis://127.0.0.1:${nobody}`);
      expect(p.output()).not.toContain('shutdown grace exceeded');
    } finally {
      await c.cleanup();
    }
  });

  it('an engine started before its Redis serves once Redis comes up within the wait', async () => {
    await own.kill();
    const c = await engineCluster({ redis: { startupWaitMs: 30_000 } }, { redisUrl: own.url });
    try {
      const starting = c.start('api');
      // The engine is up and waiting for Redis when it starts.
      await new Promise((r) => setTimeout(r, 2500));
      await own.start();
      const api = await starting;
      expect(api.output()).toContain('redis connection error');
      const ready = await fetch(`${c.httpUrl}/readyz`);
      expect(ready.status).toBe(200);
    } finally {
      await c.cleanup();
    }
  });
});

/** A port the configuration names is taken: which listener, where, why and the setting, with no stack trace. */
describe('flashverify start with a port taken', { timeout: 90_000 }, () => {
  const prefix = `fvport-${randomBytes(4).toString('hex')}`;
  const dir = mkdtempSync(join(tmpdir(), 'fv-cli-port-'));
  const env = { REDIS_URL, REDIS_PREFIX: prefix, LOG_LEVEL: 'error' };
  const config = (yaml: string): string => {
    const file = join(dir, `${randomBytes(4).toString('hex')}.yaml`);
    writeFileSync(file, `security: { masterKeyFile: "${join(dir, 'master.key')}" }\nsms: { enabled: false }\n${yaml}`);
    return file;
  };
  afterAll(async () => {
    const redis = new Redis(REDIS_URL);
    await deletePrefix(redis, prefix);
    await redis.quit();
    rmSync(dir, { recursive: true, force: true });
  });

  it('the HTTP API port', async () => {
    const taken = await silentTcpServer();
    const port = taken.port;
    try {
      const r = await flashverify(['start', '--role', 'api', '--config', config(`http: { host: 127.0.0.1, port: ${port} }\n`)], env);
      expect(r.code).toBe(1);
      expect(r.stderr).toBe(
        `flashverify: cannot listen for the HTTP API on 127.0.0.1:${port} (tcp): the address is already in use (another flashverify process, or another program, holds it). Set http.host / http.port (PORT)\n`,
      );
    } finally {
      await taken.close();
    }
  });

  it('the SIP port over UDP only, held by another process\'s SIP listener', async () => {
    const port = await findFreePort();
    const other = createSocket({ type: 'udp4', reuseAddr: true });
    await new Promise<void>((r) => other.bind(port, '127.0.0.1', () => r()));
    try {
      const r = await flashverify(['start', '--role', 'worker', '--config', config(`metrics: { port: 0 }\nsip: { listen: { host: 127.0.0.1, port: ${port}, transports: [udp] } }\n`)], env);
      expect(r.code).toBe(1);
      expect(r.stderr).toMatch(new RegExp(`^flashverify: cannot listen for SIP on 127\\.0\\.0\\.1:${port} \\(udp\\): the address is already in use .*Set sip\\.listen\\.host / sip\\.listen\\.port \\(SIP_LISTEN_PORT\\)\\n$`));
    } finally {
      other.close();
    }
  });

  it('an HTTP host that does not resolve: the listener and the setting named, no stack', async () => {
    const r = await flashverify(['start', '--role', 'api', '--config', config(`http: { host: "not a host!", port: 0 }\n`)], env);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^flashverify: cannot listen for the HTTP API on not a host!:0: the host name (does not resolve to an address|could not be resolved now).*Set http\.host \/ http\.port \(PORT\)\n$/);
    expect(r.stderr).not.toMatch(/\n\s+at /);
  });

  it('the metrics port of a worker', async () => {
    const taken = await silentTcpServer();
    const port = taken.port;
    try {
      const r = await flashverify(['start', '--role', 'worker', '--config', config(`metrics: { host: 127.0.0.1, port: ${port} }\nsip: { listen: { host: 127.0.0.1, port: 0 } }\n`)], env);
      expect(r.code).toBe(1);
      expect(r.stderr).toMatch(new RegExp(`^flashverify: cannot listen for /metrics and health on 127\\.0\\.0\\.1:${port} \\(tcp\\): the address is already in use`));
      expect(r.stderr).not.toMatch(/\n\s+at /);
    } finally {
      await taken.close();
    }
  });
});

/**
 * Given-up webhooks (every attempt failed) listed and queued again from the command line: a real engine delivers
 * (in this process), the CLI runs as its own process on the same Redis prefix, and a real receiver on loopback
 * answers what the test scripts.
 */
describe('flashverify webhook failed / replay', { timeout: 90_000 }, () => {
  let t: TestEngine;
  let url: string;
  const dir = mkdtempSync(join(tmpdir(), 'fv-cli-webhooks-'));
  const config = join(dir, 'c.yaml');
  let env: Record<string, string>;
  // Every answer 500 (each attempt fails) until the test sets `otherwise` to 200.
  const receiver = new Receiver();
  receiver.otherwise = 500;
  let queue: Queue<WebhookJobData>;
  let service: VerificationService;
  let store: AccountStore;

  beforeAll(async () => {
    // Two attempts, quick back-off; the breaker off (these failures are the point).
    t = await startTestEngine(
      testConfig({ webhooks: { allowPrivate: true, attempts: 2, backoffMs: 100, orderPollMs: 50, breaker: { failures: 0 } }, accounts: { fieldCacheMs: 0 } }),
      'all',
    );
    env = { REDIS_URL, REDIS_PREFIX: t.config.redis.prefix, LOG_LEVEL: 'warn' };
    writeFileSync(config, `security: { masterKeyFile: "${join(dir, 'master.key')}" }\nwebhooks: { allowPrivate: true }\n`);
    url = await receiver.start();
    queue = new Queue<WebhookJobData>(WEBHOOK_QUEUE, { connection: t.redis, prefix: t.keys.bullPrefix() });
    service = new VerificationService(t.redis, t.keys, t.sealer, t.config, { enqueue: async () => undefined }, pino({ level: 'silent' }), new Set<Method>(['flash_call']));
    store = new AccountStore(t.redis, t.keys, t.sealer, { allowPrivateWebhooks: true });
  });
  afterAll(async () => {
    await queue?.close();
    await t?.stop();
    await receiver.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  const lines = (stdout: string) => stdout.split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>);
  const failedCount = async () => (await queue.getFailed()).length;

  async function cli(...args: string[]): Promise<Record<string, unknown>[]> {
    const r = await flashverify(['webhook', ...args, '--config', config], env);
    expect([r.code, r.stderr]).toEqual([0, '']);
    return lines(r.stdout);
  }

  it('lists an account\'s given-up webhooks, and replays them with fresh attempts, signed with the current secret', async () => {
    const a = await t.account();
    const other = await t.account();
    await store.setWebhook(a.account_id, url);
    await store.setWebhook(other.account_id, url);
    receiver.secret = a.api_secret;
    // Every answer 500: each event is given up after its 2 attempts. R1 and R2 first, R3 (and the other account's) later.
    const r1 = (await service.create(a, { phone_number: '+447700900501' })).request_id;
    const r2 = (await service.create(a, { phone_number: '+447700900502' })).request_id;
    await waitFor(async () => (await failedCount()) === 2);
    const r3 = (await service.create(a, { phone_number: '+447700900503' })).request_id;
    await service.create(other, { phone_number: '+447700900504' });
    await waitFor(async () => (await failedCount()) === 4);

    const failed = await cli('failed', a.account_id);
    expect(failed.map((f) => f.request_id).sort()).toEqual([r1, r2, r3].sort());
    for (const f of failed) {
      expect(Object.keys(f).sort()).toEqual(['attempts', 'event', 'event_id', 'failed_at', 'last_error', 'request_id']);
      expect(f).toMatchObject({ event: 'verification.sent', last_error: 'receiver answered HTTP 500', attempts: 2 });
      expect(Date.parse(String(f.failed_at))).toBeGreaterThan(Date.now() - 60_000);
      expect(String(f.failed_at)).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
    }
    const first = Object.fromEntries(failed.map((f) => [String(f.request_id), f]));
    expect(await cli('failed', a.account_id, '--request-id', r2)).toEqual([first[r2]]);

    // The customer fixed the endpoint and rotated the secret; the replay is signed with the new one.
    const regenerated = await store.regenerateSecret(a.account_id);
    receiver.secret = regenerated.api_secret;
    receiver.otherwise = 200;
    const replayed = await cli('replay', a.account_id, '--request-id', r1);
    expect(replayed).toEqual([first[r1]]);
    await waitFor(async () => receiver.forRequest(r1).some((r) => r.answered === 200));
    const r1Hits = receiver.forRequest(r1);
    expect(r1Hits.map((h) => h.answered)).toEqual([500, 500, 200]);
    expect(new Set(r1Hits.map((h) => h.headers['x-flashverify-event-id']))).toEqual(new Set([first[r1]!.event_id]));
    expect(r1Hits[2]!.signatureValid).toBe(true);

    // --since: only those given up at or after that time (R3 failed after R1 and R2).
    expect(await cli('replay', a.account_id, '--since', String(first[r3]!.failed_at))).toEqual([first[r3]]);
    await waitFor(async () => receiver.forRequest(r3).some((r) => r.answered === 200));

    // Fresh attempts: the replayed R2 fails once more and is still retried (its 2 attempts start again).
    receiver.script.push(500);
    expect(await cli('replay', a.account_id)).toEqual([first[r2]]);
    await waitFor(async () => receiver.forRequest(r2).some((r) => r.answered === 200));
    expect(receiver.forRequest(r2).map((h) => h.answered)).toEqual([500, 500, 500, 200]);
    expect(await cli('failed', a.account_id)).toEqual([]);
    // The other account's given-up event was never touched.
    expect((await cli('failed', other.account_id)).map((f) => f.event)).toEqual(['verification.sent']);
  });

  it('explains what it cannot do, with a non-zero exit', async () => {
    const a = await t.account();
    const noUrl = await flashverify(['webhook', 'replay', a.account_id, '--config', config], env);
    expect(noUrl.code).not.toBe(0);
    expect(noUrl.stderr).toMatch(/has no webhook URL: set one first/);
    const since = await flashverify(['webhook', 'failed', a.account_id, '--since', 'yesterday', '--config', config], env);
    expect(since.code).not.toBe(0);
    expect(since.stderr).toMatch(/--since must be an ISO 8601 date and time/);
    const unknown = await flashverify(['webhook', 'failed', randomBytes(4).toString('hex'), '--config', config], env);
    expect(unknown.code).not.toBe(0);
    expect(unknown.stderr).toMatch(/no account/);
    const sub = await flashverify(['webhook', 'resend', a.account_id, '--config', config], env);
    expect(sub.stderr).toMatch(/unknown webhook command "resend"/);
    expect((await flashverify(['webhook', 'failed', '--config', config], env)).stderr).toMatch(/ACCOUNT_ID is required/);
  });
});
