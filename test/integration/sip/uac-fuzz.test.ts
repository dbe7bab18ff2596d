/**
 * Fuzzing the embedded UAC from the network: a fake trunk on a real UDP
 * socket answers each INVITE with a storm of random, mutated and
 * contradictory responses (and stray requests, and raw garbage), then either
 * a final response or silence. The stack must not crash or throw, every call
 * must end exactly once (within Timer B, or 64×T1 after the CANCEL that the
 * flash/voice policies send when no answer comes), and the heap must not grow
 * with the number of messages.
 *
 * Found with it: a first 2xx matched to the call by Call-ID (its Via branch
 * mangled) left the INVITE "outstanding", so a call whose BYE then failed was
 * never reported ended (fixed in UacCall.on2xx).
 */
import dgram from 'node:dgram';
import v8 from 'node:v8';
import vm from 'node:vm';
import { afterEach, describe, expect, it } from 'vitest';
import type { CallDelegate } from '../../../src/sip/call-originator.js';
import { EmbeddedSipOriginator } from '../../../src/sip/embedded-originator.js';
import { getHeader, getHeaders, type ParsedRequest } from '../../../src/sip/message.js';
import { parseMessage } from '../../../src/sip/parser.js';
import { mutate, prng } from '../../helpers/sip-fuzz.js';
import { testLogger, trunk } from './helpers.js';

v8.setFlagsFromString('--expose_gc');
const gc = vm.runInNewContext('gc') as () => void;
const T1 = 20; // Timer B = 64 × T1 = 1.28 s

function response(inv: ParsedRequest, status: number, toTag: string | undefined, body = ''): Buffer {
  return Buffer.from(
    [
      `SIP/2.0 ${status} Fuzz`,
      ...getHeaders(inv, 'via').map((v) => `Via: ${v}`),
      `From: ${getHeader(inv, 'from')}`,
      `To: ${getHeader(inv, 'to')}${toTag ? `;tag=${toTag}` : ''}`,
      `Call-ID: ${inv.callId}`,
      `CSeq: ${inv.cseq.seq} ${inv.cseq.method}`,
      'Contact: <sip:127.0.0.1:9>',
      `Content-Length: ${Buffer.byteLength(body)}`,
      '',
      body,
    ].join('\r\n'),
  );
}

let sip: EmbeddedSipOriginator | undefined;
let peer: dgram.Socket | undefined;
afterEach(async () => {
  await sip?.stop();
  peer?.close();
  sip = peer = undefined;
});

describe('UAC fed fuzzed responses over UDP', { timeout: 60_000 }, () => {
  it('no crash, no hang, every call ends once, heap bounded', async () => {
    const rnd = prng(2026);
    sip = new EmbeddedSipOriginator({
      listen: { host: '127.0.0.1', port: 0, transports: ['udp'] },
      timers: { t1Ms: T1, t2Ms: 80, t4Ms: 100 },
      userAgent: 'fuzz',
      logger: testLogger,
    });
    await sip.start();
    const uacPort = sip.localPort;
    peer = dgram.createSocket('udp4');
    const sock = peer;
    let sent = 0;
    const blast = (b: Buffer): void => {
      sent++;
      sock.send(b, uacPort, '127.0.0.1');
    };
    sock.on('message', (m) => {
      const r = parseMessage(m);
      if (!r.ok || r.message.kind !== 'request' || r.message.method !== 'INVITE' || getHeader(r.message, 'x-fuzz-seen')) return;
      const inv = r.message;
      const tag = `t${Math.floor(rnd() * 1e6)}`;
      // The storm: valid-looking responses of any class, their mutations, other dialogs' tags, stray requests, garbage.
      for (let i = 0; i < 60; i++) {
        const kind = rnd();
        const status = 100 + Math.floor(rnd() * 600);
        if (kind < 0.3) blast(mutate(response(inv, status, tag), rnd));
        else if (kind < 0.4) blast(response(inv, 180 + Math.floor(rnd() * 4), rnd() < 0.5 ? tag : `other${i}`, rnd() < 0.2 ? 'v=0\r\n' : ''));
        else if (kind < 0.5) blast(Buffer.from(`BYE sip:x@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bK${i}\r\nCall-ID: ${inv.callId}\r\nFrom: <sip:a@b>;tag=${tag}\r\nTo: <sip:c@d>;tag=x\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n`));
        else if (kind < 0.6) blast(Buffer.from(Array.from({ length: Math.floor(rnd() * 1400) }, () => Math.floor(rnd() * 256))));
        else blast(mutate(response(inv, status, rnd() < 0.5 ? tag : undefined), rnd));
      }
      // Then an honest final answer, or nothing at all (Timer B).
      const end = rnd();
      if (end < 0.3) blast(response(inv, 486, tag));
      else if (end < 0.5) blast(response(inv, 200, tag, 'v=0\r\n'));
    });

    const CALLS = 150;
    const finals = new Map<number, string[]>();
    const ended = new Set<number>();
    const ids = new Map<number, string>();
    const started = performance.now();
    let heapAfterFirstHalf = 0;
    const runBatch = async (from: number, to: number): Promise<void> => {
      await Promise.all(
        Array.from({ length: to - from }, (_, k) => {
          const n = from + k;
          finals.set(n, []);
          return new Promise<void>((resolve) => {
            const note = (what: string) => finals.get(n)!.push(what);
            const delegate: CallDelegate = {
              onAnswered: () => {
                note('answered');
                void call.hangup().catch(() => undefined);
              },
              onFailed: (f) => note(`failed:${f.reason}`),
              onCancelled: () => note('cancelled'),
              onEnded: () => {
                ended.add(n);
                resolve();
              },
            };
            const call: { callId: string; hangup(): Promise<void>; cancel(): void } = sip!.originate(
              { to: `+4477009${String(10_000 + n).slice(1)}`, from: '+441234567890', trunk: trunk(`sip:127.0.0.1:${sock.address().port}`, { cps: 1000 }), logger: testLogger },
              delegate,
            );
            // As the flash and voice policies do: a call still without a final answer is CANCELled (ringing/answer timeout).
            setTimeout(() => call.cancel(), 1500);
            ids.set(n, call.callId);
          });
        }),
      );
    };
    await new Promise<void>((r) => sock.bind(0, '127.0.0.1', () => r()));
    gc();
    const heapBefore = process.memoryUsage().heapUsed;
    for (let b = 0; b < CALLS; b += 25) {
      // Bound each batch: Timer B (1.28 s) plus the BYE of answered calls (Timer F), with room.
      let t: NodeJS.Timeout | undefined;
      const batch = runBatch(b, b + 25);
      await Promise.race([batch, new Promise<void>((r) => (t = setTimeout(r, 8000)))]);
      clearTimeout(t);
      const stuck = [...finals.keys()].filter((n) => n >= b && n < b + 25 && !ended.has(n)).map((n) => [n, finals.get(n), ids.get(n)]);
      expect(stuck, 'calls that did not end').toEqual([]);
      if (b + 25 === CALLS / 2) {
        gc();
        heapAfterFirstHalf = process.memoryUsage().heapUsed;
      }
    }
    gc();
    const heapAfter = process.memoryUsage().heapUsed;

    expect(sent).toBeGreaterThan(CALLS * 60);
    expect(ended.size).toBe(CALLS);
    // Exactly one outcome per call.
    for (const [n, f] of finals) expect([n, f.length]).toEqual([n, 1]);
    const outcomes = [...finals.values()].map((f) => f[0]!.split(':')[0]);
    expect(outcomes).toContain('failed');
    expect(sip.started).toBe(true);
    // The second half of the storm did not grow the heap like the first half had no reason to either.
    expect((heapAfter - heapAfterFirstHalf) / 1e6).toBeLessThan(15);
    expect((heapAfter - heapBefore) / 1e6).toBeLessThan(40);
    expect(performance.now() - started).toBeLessThan(50_000);
  });
});
