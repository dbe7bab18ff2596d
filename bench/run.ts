/**
 * `npm run bench -- <name> [args]`: runs one benchmark from bench/. Each
 * benchmark bounds itself in count and time, uses loopback only, cleans up
 * what it started, and prints what BENCHMARKS.md records.
 *
 *   flash   flash calls through the API (or the queue) against a SIPp UAS    bench/flash.ts
 *   api     POST /v1/verify only (enqueue; no worker delivers)               bench/api.ts
 *   drive   POST /v1/verify at a rate against a running engine (starts nothing) bench/drive.ts
 *   voice   RTP pacing of the embedded media player                          bench/voice.ts
 *   voice-calls voice OTP calls end to end through one worker (API → SIPp → RTP)  bench/voice-calls.ts
 *   profile summarise .cpuprofile files (top self time)                     bench/profile-summary.ts
 *   sms     SMS verifications through the worker: queue → submit_sm → receipt → delivered  bench/sms.ts
 *   floor   the platform's own cost: HTTP + BullMQ + Redis stream, nothing of ours   bench/floor.ts
 *   bullmq  BullMQ alone: Redis and process CPU per no-op job                 bench/bullmq.ts
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const BENCHES: Record<string, string> = {
  flash: 'flash.ts',
  api: 'api.ts',
  drive: 'drive.ts',
  voice: 'voice.ts',
  'voice-calls': 'voice-calls.ts',
  profile: 'profile-summary.ts',
  sms: 'sms.ts',
  floor: 'floor.ts',
  bullmq: 'bullmq.ts',
};
/** Named in the issue, not written yet: say so instead of "unknown". */
const NOT_YET: Record<string, string> = {};

const [name, ...args] = process.argv.slice(2);
// A benchmark whose file has not landed yet says so instead of failing on a missing file.
if (name && NOT_YET[name] && !existsSync(fileURLToPath(new URL(BENCHES[name] ?? `${name}.ts`, import.meta.url)))) {
  process.stderr.write(`bench ${name}: not yet. ${NOT_YET[name]}\n`);
  process.exit(2);
}
const file = name ? BENCHES[name] : undefined;
if (!file) {
  process.stderr.write(
    `usage: npm run bench -- <${[...Object.keys(BENCHES), ...Object.keys(NOT_YET)].join('|')}> [args]   (--help for a benchmark's options)\n` +
      (name ? `no benchmark "${name}"\n` : ''),
  );
  process.exit(2);
}
const path = fileURLToPath(new URL(file, import.meta.url));
if (!existsSync(path)) throw new Error(`missing ${path}`);
const r = spawnSync(process.execPath, ['--import', 'tsx', path, ...args], { stdio: 'inherit' });
process.exit(r.status ?? 1);
