/**
 * Drives a running flashverify (a deployed one, or `npm start`) with
 * `POST /v1/verify` at an open-loop rate and prints throughput, latency
 * percentiles and failures by kind. Starts nothing and cleans nothing: the
 * verifications are real (each one is charged and delivered by the engine's
 * workers), so point the engine's trunk at a SIPp far end (sip-test/README.md,
 * "Load testing").
 *
 *   npm run bench -- drive --url http://127.0.0.1:8080 --key KEY --secret SECRET \
 *                          --rate 200 --duration 30 [--method flash_call] [--prefix +4474]
 */
import { parseBenchArgs } from './lib/args.js';
import { httpFirer, runOpenLoop } from './lib/load.js';
import { loadAverages } from './lib/procstat.js';
import { header, line } from './lib/report.js';
import { formatMs, summarize } from './lib/stats.js';

const USAGE = `npm run bench -- drive --url URL --key API_KEY --secret API_SECRET [options]
  --rate N          requests per second, open loop (default 100, max 20000)
  --duration S      seconds (default 10, max 900)
  --connections N   keep-alive connections (default 64)
  --method M        flash_call (default), voice or sms
  --prefix P        destination numbers: P + 8 digits, a new one per request (default +4474)
  --timeout MS      per request (default 10000)
Credentials may also come from FV_API_KEY / FV_API_SECRET.`;

/** True when every request was accepted. */
async function main(): Promise<boolean> {
  const a = parseBenchArgs(process.argv.slice(2), {
    url: { type: 'string' },
    key: { type: 'string', default: process.env.FV_API_KEY ?? '' },
    secret: { type: 'string', default: process.env.FV_API_SECRET ?? '' },
    rate: { type: 'string', default: '100' },
    duration: { type: 'string', default: '10' },
    connections: { type: 'string', default: '64' },
    method: { type: 'string', default: 'flash_call' },
    prefix: { type: 'string', default: '+4474' },
    timeout: { type: 'string', default: '10000' },
  });
  if (a.help || !a.str('url') || !a.str('key') || !a.str('secret')) {
    line(USAGE);
    return a.help;
  }
  const url = new URL(a.str('url'));
  if (url.protocol !== 'http:') throw new Error('--url must be http:// (put the generator next to the engine, not through TLS)');
  const rate = a.num('rate', 1, 20_000);
  const duration = a.num('duration', 1, 900);
  const prefix = a.str('prefix');
  const method = a.str('method');
  header(`drive ${url.origin}: POST /v1/verify ${rate}/s for ${duration} s (${method})`, `npm run bench -- drive ${process.argv.slice(2).filter((x) => x !== a.str('secret')).join(' ')}`);
  let seq = 0;
  const firer = httpFirer({
    targets: [{ host: url.hostname, port: Number(url.port || 80) }],
    path: `${url.pathname.replace(/\/$/, '')}/v1/verify`,
    headers: { authorization: `Basic ${Buffer.from(`${a.str('key')}:${a.str('secret')}`).toString('base64')}` },
    body: () => `{"phone_number":"${prefix}${String((seq++ * 7919 + process.pid * 104_729) % 100_000_000).padStart(8, '0')}","method":"${method}"}`,
    expectStatus: 201,
    connections: a.num('connections', 1, 1024),
    timeoutMs: a.num('timeout', 100, 60_000),
    wantRequestId: false,
  });
  const load = await runOpenLoop({
    rate,
    durationSeconds: duration,
    maxRequests: 1_000_000,
    maxInFlight: 20_000,
    drainMs: 15_000,
    fire: firer.fire,
    onProgress: (p) => {
      if (Math.round(p.elapsedMs / 1000) % 5 === 0) line(`  t=${(p.elapsedMs / 1000).toFixed(0)} s sent ${p.sent} ok ${p.ok} failed ${p.failed} in flight ${p.inFlight}`);
    },
  });
  firer.close();
  const fromDue: number[] = [];
  for (let i = 0; i < load.total; i++) if (load.okFlags[i]) fromDue.push(load.doneAt[i]! - load.due[i]!);
  line(`requests: ${load.sent} sent, ${load.ok} accepted (201), failed: ${load.failures.toString()}`);
  line(`  throughput: ${(load.ok / (load.elapsedMs / 1000)).toFixed(0)} accepted/s (offered ${rate}/s)`);
  line(`  latency from due time: ${formatMs(summarize(fromDue))}`);
  line(`load average after: ${loadAverages()}`);
  return load.ok === load.sent && load.sent > 0;
}

main().then(
  // A request refused or not answered is a failed run: scripts see it in the exit status.
  (ok) => process.exit(ok ? 0 : 1),
  (err: unknown) => {
    process.stderr.write(`bench drive: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  },
);
