/**
 * Starts flashverify for a benchmark: N `--role api`, M `--role worker` (or M `--role all`, `combined`) and
 * K `--role webhooks` processes of the real CLI (`node dist/main.js`), sharing a generated config
 * (unique redis.prefix, random master key, loopback ports), plus one active
 * account created with the CLI. Optional `--cpu-prof` per role.
 */
import { join } from 'node:path';
import { freeSipPort, freeTcpPort, waitHttpOk, type Managed, type Stack } from './stack.js';

export interface EngineOptions {
  apiProcs: number;
  workerProcs: number;
  /** `--role webhooks` processes; more than 0 sets webhooks.inWorkers false (workers send none). */
  webhookProcs?: number;
  /** Niceness of the `--role webhooks` processes (`nice -n`), e.g. 10: calls get the CPU first. */
  webhookNice?: number;
  /** Trunk uri (the SIPp UAS); workers only. */
  trunkUri?: string;
  /** sip.trunks[].cps: for the trunk (sip.trunkLimits cluster, the default) or per worker process (process). */
  cps: number;
  /** Concurrent calls per worker process (sip.trunks[].maxCalls); undefined: no cap. */
  maxCalls?: number | undefined;
  flashConcurrency: number;
  ringMs: number;
  logLevel: string;
  /** Roles run under node --cpu-prof. */
  profile: readonly string[];
  /** Extra config merged (deeply) over the generated one. */
  extra?: Record<string, unknown>;
  /** node options for every engine process, e.g. ['--max-semi-space-size=64'] (A/B of V8 flags). */
  nodeArgs?: readonly string[];
  /**
   * Each of the `workerProcs` processes runs `--role all` (api and worker in one process, as `npm start` does) and
   * takes requests on its own HTTP port; `apiProcs` must then be 0.
   */
  combined?: boolean;
}

export interface RunningEngine {
  /** The `--role api` processes. */
  apis: { m: Managed; port: number }[];
  /** Where requests go: the api processes' HTTP ports, or the combined processes' (`combined`). */
  httpPorts: number[];
  /** `configFile` and `nodeArgs`: what starts it again (bench flash --kill-worker). */
  workers: { m: Managed; metricsPort: number; sipPort: number; configFile: string; nodeArgs: string[] }[];
  webhookSenders: { m: Managed; metricsPort: number }[];
  account: { account_id: string; api_key: string; api_secret: string };
  /** Config file the CLI (account commands) and an in-process producer use. */
  configFile: string;
  profileDir: string;
}

export async function startFlashverify(stack: Stack, o: EngineOptions): Promise<RunningEngine> {
  const base = (over: Record<string, unknown>): Record<string, unknown> =>
    deepMerge(
      deepMerge({
        http: { host: '127.0.0.1', port: 0 },
        redis: { url: stack.redisUrl, prefix: stack.prefix },
        security: { masterKey: stack.masterKey },
        log: { level: o.logLevel, pretty: false },
        // The bench account gets its own limit (account set-rate-limit); this keeps the default out of the way.
        api: { defaultRateLimitPerSecond: 100_000 },
        flash: { ringMs: o.ringMs },
        sip: {
          listen: { host: '127.0.0.1', port: 0, transports: ['udp'] },
          trunks: [{ name: 'bench', uri: o.trunkUri ?? 'sip:127.0.0.1:9', cps: o.cps, ...(o.maxCalls !== undefined ? { maxCalls: o.maxCalls } : {}) }],
        },
        worker: { flashConcurrency: o.flashConcurrency },
        metrics: { host: '127.0.0.1', port: 0 },
        media: { rtp: { portMin: 40000, portMax: 40999 } },
        // Flash only: no SMSC to bind to (its readiness probe would keep /readyz at 503).
        sms: { enabled: false },
        // Nobody verifies a load test's calls: the conversion rule would quarantine every range after
        // its grace period (runs longer than ~7 min). The reject rule and its Redis work stay on.
        fraud: { rangeHealth: { minConversionRatio: 0 } },
        ...(o.webhookProcs ? { webhooks: { inWorkers: false } } : {}),
      }, o.extra ?? {}),
      over,
    );
  const profileDir = join(stack.dir, 'cpu-prof');
  const prof = (role: string, name: string): string[] => [
    ...(o.nodeArgs ?? []),
    ...(o.profile.includes(role) ? ['--cpu-prof', '--cpu-prof-dir', profileDir, '--cpu-prof-name', `${name}.cpuprofile`] : []),
  ];

  const configFile = stack.writeConfig('cli', base({}));
  if (o.combined && o.apiProcs > 0) throw new Error('combined processes take the requests themselves: apiProcs must be 0');
  const workers: RunningEngine['workers'] = [];
  const apis: RunningEngine['apis'] = [];
  const httpPorts: number[] = [];
  for (let i = 0; i < o.workerProcs; i++) {
    // A combined process serves /metrics and /readyz on its HTTP port (the separate listener is for worker roles).
    const metricsPort = await freeTcpPort();
    const sipPort = await freeSipPort();
    const sip = { listen: { host: '127.0.0.1', port: sipPort, transports: ['udp'] } };
    const file = stack.writeConfig(
      `worker${i}`,
      base(o.combined ? { sip, http: { host: '127.0.0.1', port: metricsPort } } : { sip, metrics: { host: '127.0.0.1', port: metricsPort } }),
    );
    // A combined process is profiled when either of its roles is asked for.
    const nodeArgs = prof(o.combined && o.profile.includes('api') ? 'api' : 'worker', `worker${i}`);
    const m = stack.startEngine(`worker${i}`, o.combined ? 'all' : 'worker', file, nodeArgs);
    workers.push({ m, metricsPort, sipPort, configFile: file, nodeArgs });
    if (o.combined) httpPorts.push(metricsPort);
  }
  const webhookSenders: RunningEngine['webhookSenders'] = [];
  for (let i = 0; i < (o.webhookProcs ?? 0); i++) {
    const metricsPort = await freeTcpPort();
    const file = stack.writeConfig(`webhooks${i}`, base({ metrics: { host: '127.0.0.1', port: metricsPort } }));
    webhookSenders.push({ m: stack.startEngine(`webhooks${i}`, 'webhooks', file, prof('webhooks', `webhooks${i}`), o.webhookNice ?? 0), metricsPort });
  }
  for (let i = 0; i < o.apiProcs; i++) {
    const port = await freeTcpPort();
    const file = stack.writeConfig(`api${i}`, base({ http: { host: '127.0.0.1', port } }));
    const m = stack.startEngine(`api${i}`, 'api', file, prof('api', `api${i}`));
    apis.push({ m, port });
    httpPorts.push(port);
  }
  for (const w of [...workers, ...webhookSenders]) await waitHttpOk(`http://127.0.0.1:${w.metricsPort}/readyz`, w.m, 30_000, () => stack.tail(w.m));
  for (const a of apis) await waitHttpOk(`http://127.0.0.1:${a.port}/healthz`, a.m, 30_000, () => stack.tail(a.m));

  const account = JSON.parse(stack.cli(['account', 'create', '--name', 'bench', '--active', '--balance', '1000000'], configFile)) as RunningEngine['account'];
  stack.cli(['account', 'set-rate-limit', account.account_id, '--rps', '100000'], configFile);
  return { apis, httpPorts, workers, webhookSenders, account, configFile, profileDir };
}

/** Sums of Prometheus samples by metric name and label set, from a /metrics text. */
export async function scrape(url: string): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  const text = await (await fetch(url)).text();
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const sp = line.lastIndexOf(' ');
    out.set(line.slice(0, sp), Number(line.slice(sp + 1)));
  }
  return out;
}

/** Sum of every sample whose name (and optional label fragment) matches. */
export function sumMetric(m: Map<string, number>, name: string, labelFragment = ''): number {
  let s = 0;
  for (const [k, v] of m) {
    if ((k === name || k.startsWith(`${name}{`)) && k.includes(labelFragment)) s += v;
  }
  return s;
}

export function deepMerge(a: Record<string, unknown>, b: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = { ...a };
  for (const [k, v] of Object.entries(b)) {
    const av = out[k];
    out[k] =
      v && typeof v === 'object' && !Array.isArray(v) && av && typeof av === 'object' && !Array.isArray(av)
        ? deepMerge(av as Record<string, unknown>, v as Record<string, unknown>)
        : v;
  }
  return out;
}
