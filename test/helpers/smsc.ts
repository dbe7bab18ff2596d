/**
 * Test SMSC harness: starts smsc-test/server.ts as a child process on
 * 127.0.0.1 (SMPP and control ports chosen by the OS, reported on its first
 * stdout line), and gives typed access to its control channel.
 *
 *   const smsc = await startSmsc({ respDelayMs: 100 });
 *   // point an SmscConfig at smsc.url ...
 *   await smsc.set({ throttleNext: 1 });
 *   const { submits } = await smsc.state();
 *   await smsc.stop();
 *
 * The process is killed by its PID on stop(); it also exits by itself when its
 * stdin closes (the test process died) or after maxLifetimeMs.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { pino, type Logger } from 'pino';
import { smsSchema, type SmscConfig } from '../../src/config/schema.js';
import { SmppGateway, type SmppGatewayOptions } from '../../src/sms/gateway.js';
import { renderSms } from '../../src/sms/text.js';
import type { DeliveryReceipt, SubmitOutcome, SubmitRequest } from '../../src/sms/types.js';
import { dirname, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import type { ReadyLine, SmscAction, SmscSettings, SmscState } from '../../smsc-test/protocol.js';

export type { SmscSettings, SmscState, SubmitRecord, SessionRecord, ReceiptRecord, EventRecord } from '../../smsc-test/protocol.js';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');

export interface StartSmscOptions extends Partial<SmscSettings> {
  /** Hard bound on the process lifetime. Default 120 000 ms. */
  maxLifetimeMs?: number;
  /** How long to wait for the ready line. Default 10 000 ms. */
  startTimeoutMs?: number;
}

export interface TestSmsc {
  port: number;
  controlPort: number;
  pid: number;
  /** smpp://systemId:password@127.0.0.1:port */
  url: string;
  systemId: string;
  password: string;
  set(patch: Partial<SmscSettings>): Promise<SmscSettings>;
  state(): Promise<SmscState>;
  reset(): Promise<void>;
  action(action: SmscAction, session?: number): Promise<{ session: number; seq: number }[]>;
  /** Polls state() until `check` returns a value other than undefined/false (bounded). */
  waitFor<T>(check: (s: SmscState) => T | undefined | false, timeoutMs?: number, what?: string): Promise<T>;
  /** stderr so far (for failure messages). */
  stderr(): string;
  stop(): Promise<void>;
}

export async function startSmsc(options: StartSmscOptions = {}): Promise<TestSmsc> {
  const { maxLifetimeMs = 120_000, startTimeoutMs = 10_000, ...initial } = options;
  const systemId = initial.systemId ?? 'flashverify';
  const password = initial.password ?? 'secret';
  const child: ChildProcess = spawn(
    process.execPath,
    ['--import', 'tsx', 'smsc-test/server.ts', '--port', '0', '--quiet', '--system-id', systemId, '--password', password, '--max-lifetime-ms', String(maxLifetimeMs)],
    { cwd: ROOT, stdio: ['pipe', 'pipe', 'pipe'] },
  );
  let stderr = '';
  child.stderr?.on('data', (c: Buffer) => {
    if (stderr.length < 64_000) stderr += c.toString('utf8');
  });
  const lines = createInterface({ input: child.stdout! });
  const ready = await new Promise<ReadyLine>((resolveReady, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`test SMSC did not start within ${startTimeoutMs} ms: ${stderr}`));
    }, startTimeoutMs);
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`test SMSC exited (${code}) before listening: ${stderr}`));
    });
    lines.on('line', (line) => {
      try {
        const parsed = JSON.parse(line) as { event?: string };
        if (parsed.event === 'listening') {
          clearTimeout(timer);
          resolveReady(parsed as ReadyLine);
        }
      } catch {
        // not JSON: ignore
      }
    });
  });

  const base = `http://127.0.0.1:${ready.controlPort}`;
  const call = async <T>(method: 'GET' | 'POST', path: string, body?: unknown): Promise<T> => {
    const res = await fetch(`${base}${path}`, {
      method,
      headers: body === undefined ? {} : { 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(5_000),
    });
    const json = (await res.json()) as T;
    if (!res.ok) throw new Error(`test SMSC ${method} ${path}: ${res.status} ${JSON.stringify(json)}`);
    return json;
  };

  const smsc: TestSmsc = {
    port: ready.port,
    controlPort: ready.controlPort,
    pid: ready.pid,
    url: `smpp://${encodeURIComponent(systemId)}:${encodeURIComponent(password)}@127.0.0.1:${ready.port}`,
    systemId,
    password,
    set: (patch) => call<SmscSettings>('POST', '/settings', patch),
    state: () => call<SmscState>('GET', '/state'),
    reset: async () => {
      await call('POST', '/reset', {});
    },
    action: async (action, session) => (await call<{ sent: { session: number; seq: number }[] }>('POST', '/action', { action, session })).sent,
    async waitFor<T>(check: (s: SmscState) => T | undefined | false, timeoutMs = 5_000, what = 'condition'): Promise<T> {
      const deadline = Date.now() + timeoutMs;
      let last: SmscState | undefined;
      for (let i = 0; i < 10_000 && Date.now() < deadline; i += 1) {
        last = await smsc.state();
        const v = check(last);
        if (v !== undefined && v !== false) return v;
        await new Promise((r) => setTimeout(r, 25));
      }
      throw new Error(`test SMSC: timed out waiting for ${what}; sessions=${JSON.stringify(last?.sessions)}`);
    },
    stderr: () => stderr,
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = new Promise<void>((r) => child.once('exit', () => r()));
      if (ready.pid) process.kill(ready.pid, 'SIGTERM');
      const timer = setTimeout(() => {
        if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      }, 2_000);
      await exited;
      clearTimeout(timer);
      lines.close();
    },
  };
  const { systemId: _s, password: _p, ...rest } = initial;
  if (Object.keys(rest).length > 0) await smsc.set(rest);
  return smsc;
}

// --- building gateways against test SMSCs -------------------------------------------

/** Test logger: silent unless SMS_TEST_LOG=debug|info|... */
export const testLogger: Logger = pino({ level: process.env.SMS_TEST_LOG ?? 'silent' });

/** SMSC config input (as in YAML) with short timers so failures show within a second. */
export function smscEntry(smsc: TestSmsc, overrides: Partial<SmscConfig> & { name?: string } = {}): Record<string, unknown> {
  return {
    name: 'default',
    url: smsc.url,
    binds: 1,
    window: 10,
    tps: 1000,
    responseTimeoutMs: 500,
    enquireLinkMs: 5_000,
    reconnectMinMs: 100,
    reconnectMaxMs: 400,
    ...overrides,
  };
}

export interface GatewayUnderTest {
  gateway: SmppGateway;
  receipts: DeliveryReceipt[];
  /** Waits (bounded) until every SMSC reports all its binds up. */
  waitUp(timeoutMs?: number): Promise<void>;
  /** Waits (bounded) until `n` receipts have been handled. */
  waitReceipts(n: number, timeoutMs?: number): Promise<DeliveryReceipt[]>;
  /** Waits (bounded) for the receipt of an accepted submit (matched by normalised message id). */
  receiptFor(outcome: SubmitOutcome, timeoutMs?: number): Promise<DeliveryReceipt>;
}

export async function startGateway(
  entries: Record<string, unknown>[],
  options: Omit<SmppGatewayOptions, 'smscs' | 'logger'> = {},
): Promise<GatewayUnderTest> {
  const sms = smsSchema.parse({ smscs: entries });
  const gateway = SmppGateway.fromConfig(sms, testLogger, { slotWaitMs: 3_000, bindWaitMs: 500, stopTimeoutMs: 2_000, ...options });
  const receipts: DeliveryReceipt[] = [];
  gateway.onReceipt(async (r) => {
    receipts.push(r);
  });
  await gateway.start();
  const until = async (cond: () => boolean, timeoutMs: number, what: string): Promise<void> => {
    const deadline = Date.now() + timeoutMs;
    for (let i = 0; i < 100_000 && Date.now() < deadline; i += 1) {
      if (cond()) return;
      await new Promise((r) => setTimeout(r, 10));
    }
    throw new Error(`timed out waiting for ${what}: ${JSON.stringify(gateway.status())}`);
  };
  return {
    gateway,
    receipts,
    waitUp: (timeoutMs = 5_000) => until(() => gateway.status().every((s) => s.bindsUp === s.bindsConfigured), timeoutMs, 'binds up'),
    waitReceipts: async (n, timeoutMs = 5_000) => {
      await until(() => receipts.length >= n, timeoutMs, `${n} receipts (have ${receipts.length})`);
      return receipts;
    },
    receiptFor: async (outcome, timeoutMs = 5_000) => {
      if (outcome.kind !== 'accepted') throw new Error(`submit not accepted: ${JSON.stringify(outcome)}`);
      const find = (): DeliveryReceipt | undefined => receipts.find((r) => r.smsc === outcome.smsc && r.messageId === outcome.messageId);
      await until(() => find() !== undefined, timeoutMs, `receipt for ${outcome.messageId} (have ${receipts.map((r) => r.messageId).join(',')})`);
      return find()!;
    },
  };
}

export const TEST_TEMPLATE = 'Your FlashVerify code is: {code}';

export function submitRequest(to: string, options: { code?: string; template?: string; requestReceipt?: boolean } = {}): SubmitRequest {
  const requestId = randomUUID();
  return {
    requestId,
    to,
    from: { addr: 'FlashVerify', ton: 5, npi: 0 },
    message: renderSms(options.template ?? TEST_TEMPLATE, options.code ?? '482916'),
    requestReceipt: options.requestReceipt ?? true,
    logger: testLogger.child({ request_id: requestId }),
  };
}
