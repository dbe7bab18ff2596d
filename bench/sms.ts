/**
 * SMS throughput: submit_sm per second through the SMPP session layer
 * (src/sms/gateway.ts) against the test SMSC process (smsc-test/server.ts) on
 * loopback, through 1 bind and through N binds, with every delivery receipt
 * matched back to its submit by message id.
 *
 *   npm run bench -- sms [--binds 1,4] [--messages 30000] [--window 50] [--tps 0] [--duration 60]
 *
 * Closed loop: `window × binds` submits are kept in flight (the window is the
 * limit a real SMSC enforces); --tps caps each bind (0 = uncapped) to show
 * the token bucket. Bounded by --messages and --duration; the SMSC process is
 * killed (by PID) at the end, also on error.
 */
import { randomUUID } from 'node:crypto';
import { pino } from 'pino';
import { smsSchema } from '../src/config/schema.js';
import { SmppGateway } from '../src/sms/gateway.js';
import { renderSms } from '../src/sms/text.js';
import type { DeliveryReceipt, SubmitRequest } from '../src/sms/types.js';
import { startSmsc, type TestSmsc } from '../test/helpers/smsc.js';
import { parseBenchArgs } from './lib/args.js';
import { CpuWindow, formatCpu, loadAverages, machineDescription } from './lib/procstat.js';
import { header, line } from './lib/report.js';
import { summarize } from './lib/stats.js';

const args = parseBenchArgs(process.argv.slice(2), {
  binds: { type: 'string', default: '1,4' },
  messages: { type: 'string', default: '30000' },
  window: { type: 'string', default: '50' },
  tps: { type: 'string', default: '0' },
  duration: { type: 'string', default: '60' },
});
if (args.help) {
  line('npm run bench -- sms [--binds 1,4] [--messages 30000] [--window 50] [--tps 0 (per bind; 0 = no cap)] [--duration 60]');
  process.exit(0);
}
const bindCounts = args.list('binds').map((b) => Number(b));
if (bindCounts.some((b) => !Number.isInteger(b) || b < 1 || b > 16)) throw new Error('--binds: whole numbers from 1 to 16');
const messages = args.num('messages', 1, 500_000);
const window = args.num('window', 1, 1000);
const tps = args.num('tps', 0, 100_000);
const durationS = args.num('duration', 1, 600);
const logger = pino({ level: 'warn' });
const message = renderSms('Your FlashVerify code is: {code}', '482916');

header('SMS submit_sm throughput (SMPP session layer → test SMSC, receipts matched)', `npm run bench -- sms ${process.argv.slice(2).join(' ')}`.trim());
line(`machine: ${machineDescription()}`);

let smsc: TestSmsc | undefined;
try {
  smsc = await startSmsc({ maxLifetimeMs: (durationS * bindCounts.length + 60) * 1000, logSubmits: false, receiptDelayMs: 0 });
  line(`test SMSC pid ${smsc.pid} port ${smsc.port}`);
  line('');
  line('| binds | window/bind | tps cap/bind | submits | accepted | failed | submit/s | resp p50 / p99 / max ms | receipts matched | receipt lag p99 ms | cpu bench / SMSC % |');
  line('| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | --- |');
  const rows: string[] = [];
  for (const binds of bindCounts) rows.push(await run(smsc, binds));
  line('');
  line(`load average after: ${loadAverages()}`);
} finally {
  await smsc?.stop();
}

async function run(smsc: TestSmsc, binds: number): Promise<string> {
  await smsc.reset();
  const sms = smsSchema.parse({
    smscs: [
      {
        name: 'bench',
        url: smsc.url,
        binds,
        window,
        tps: tps === 0 ? 1_000_000 : tps,
        responseTimeoutMs: 10_000,
        enquireLinkMs: 30_000,
        reconnectMinMs: 100,
        reconnectMaxMs: 1000,
      },
    ],
  });
  const gateway = SmppGateway.fromConfig(sms, logger, { slotWaitMs: 10_000, bindWaitMs: 5_000, stopTimeoutMs: 5_000 });
  // A receipt may overtake the submit's resolution (receiptDelayMs 0): match in whichever order they come.
  const submittedAt = new Map<string, number>();
  const receivedAt = new Map<string, number>();
  const receiptLag: number[] = [];
  let receipts = 0;
  let duplicates = 0;
  const seen = new Set<string>();
  gateway.onReceipt(async (r: DeliveryReceipt) => {
    if (seen.has(r.messageId)) return void duplicates++;
    seen.add(r.messageId);
    const at = submittedAt.get(r.messageId);
    if (at === undefined) receivedAt.set(r.messageId, performance.now());
    else {
      receipts++;
      receiptLag.push(performance.now() - at);
      submittedAt.delete(r.messageId);
    }
  });
  await gateway.start();
  for (let i = 0; i < 500 && !gateway.status().every((s) => s.bindsUp === binds); i++) await new Promise((r) => setTimeout(r, 10));

  const respMs: number[] = [];
  let accepted = 0;
  let failed = 0;
  let next = 0;
  const deadline = performance.now() + durationS * 1000;
  const cpu = new CpuWindow([
    { name: 'bench (gateway)', pid: process.pid },
    { name: 'test SMSC', pid: smsc.pid },
  ]);
  const t0 = performance.now();
  const lane = async (): Promise<void> => {
    while (next < messages && performance.now() < deadline) {
      const n = next++;
      const req: SubmitRequest = {
        requestId: randomUUID(),
        to: `+4477009${String(n % 100_000).padStart(5, '0')}`,
        from: { addr: 'FlashVerify', ton: 5, npi: 0 },
        message,
        requestReceipt: true,
        logger,
      };
      const start = performance.now();
      const outcome = await gateway.submit(req);
      respMs.push(performance.now() - start);
      if (outcome.kind === 'accepted') {
        accepted++;
        const early = receivedAt.get(outcome.messageId);
        if (early === undefined) submittedAt.set(outcome.messageId, start);
        else {
          receipts++;
          receiptLag.push(early - start);
          receivedAt.delete(outcome.messageId);
        }
      } else failed++;
    }
  };
  await Promise.all(Array.from({ length: window * binds }, lane));
  const elapsed = (performance.now() - t0) / 1000;
  // Receipts still on their way: wait (bounded) for them.
  for (let i = 0; i < 1000 && receipts < accepted; i++) await new Promise((r) => setTimeout(r, 10));
  const cpuReport = cpu.finish();
  await gateway.stop();

  const r = summarize(respMs);
  const lag = summarize(receiptLag);
  const cpuCell = cpuReport.procs.map((p) => p.cpuPercent.toFixed(0)).join(' / ');
  const row = `| ${binds} | ${window} | ${tps === 0 ? 'none' : tps} | ${respMs.length} | ${accepted} | ${failed} | ${(accepted / elapsed).toFixed(0)} | ${r.p50.toFixed(1)} / ${r.p99.toFixed(1)} / ${r.max.toFixed(1)} | ${receipts}${duplicates ? ` (+${duplicates} duplicates)` : ''} | ${lag.p99.toFixed(0)} | ${cpuCell} |`;
  line(row);
  process.stderr.write(formatCpu(cpuReport) + '\n');
  return row;
}
