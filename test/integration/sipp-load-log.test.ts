import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { readInvites, readInvitesPerNumber } from '../../bench/lib/uas.js';
import { runSippUac, startSippUas, type SippUas } from '../helpers/sipp.js';

/**
 * The load UAS (sip-test/uas-load-ring-cancel.xml) logs one line per INVITE, which the flash bench reads for the
 * accept-to-INVITE latency and, after a worker crash (--kill-worker), for numbers dialled twice. Driven here by
 * SIPp's own load caller (uac-load-flash.xml), every call to one number, and once to another.
 */
describe('the load UAS INVITE log', { timeout: 60_000 }, () => {
  let uas: SippUas | undefined;
  let dir: string | undefined;
  afterEach(async () => {
    await uas?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
    uas = dir = undefined;
  });

  it('names each INVITE\'s Call-ID, receipt time and number called: three calls to one number show as dialled three times', async () => {
    dir = mkdtempSync(join(tmpdir(), 'fv-uas-log-'));
    const log = join(dir, 'invites.log');
    uas = await startSippUas({ scenario: 'uas-load-ring-cancel', calls: 4, extraArgs: ['-trace_logs', '-log_file', log] });
    const t0 = Date.now();
    const target = `127.0.0.1:${uas.port}`;
    const three = await runSippUac({ scenario: 'uac-load-flash', target, service: '447400000123', calls: 3, rate: 10 });
    const once = await runSippUac({ scenario: 'uac-load-flash', target, service: '+447400000456', calls: 1 });
    expect([three.code, once.code]).toEqual([0, 0]);

    const times = readInvites(log);
    expect(times.size).toBe(4);
    for (const at of times.values()) expect(Math.abs(at - t0)).toBeLessThan(30_000);
    expect(Object.fromEntries(readInvitesPerNumber(log))).toEqual({ '447400000123': 3, '+447400000456': 1 });
  });
});
