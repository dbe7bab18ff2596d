/**
 * Proves the SIPp far-end scenarios in sip-test/ and the harness in
 * test/helpers/sipp.ts: each uas-*.xml is played against a SIPp UAC from
 * sip-test/ (the engine's call flow) over loopback, on UDP and TCP, and the
 * harness's parsing of the INVITE (From / P-Asserted-Identity, as a handset
 * would read them) is checked. uas-no-response is driven by raw INVITEs from
 * this file so its handling of retransmissions is visible.
 */
import { createSocket } from 'node:dgram';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import {
  findFreePort,
  parseSipMessage,
  runSippUac,
  SIPP_TEST_CREDENTIALS,
  sipUriUser,
  startSippUas,
  verifyDigestResponse,
  type SipMessage,
  type SippTransport,
  type SippUas,
  type SippUasOptions,
  type SippUacOptions,
} from '../helpers/sipp.js';

const CLI = '+441908734321';

const started: SippUas[] = [];
async function uas(opts: SippUasOptions): Promise<SippUas> {
  const u = await startSippUas(opts);
  started.push(u);
  return u;
}
afterEach(async () => {
  await Promise.all(started.splice(0).map((u) => u.stop()));
});

/** Runs `uasScenario` against `uacScenario`; returns both results. */
async function pair(
  uasScenario: string,
  uacScenario: string,
  transport: SippTransport,
  uasExtra: Partial<SippUasOptions> = {},
  uacExtra: Partial<SippUacOptions> = {},
) {
  const far = await uas({ scenario: uasScenario, transport, ...uasExtra });
  const uac = await runSippUac({
    scenario: uacScenario,
    transport,
    target: `127.0.0.1:${far.port}`,
    maxLifetimeMs: 20_000,
    ...uacExtra,
    vars: { cli: CLI, ...uacExtra.vars },
  });
  const exit = await far.waitForExit(10_000);
  const messages = far.messages();
  return { far, uac, exit, messages };
}

/** What the far end saw/sent, as "< INVITE 1 INVITE", "> 180 1 INVITE", ... */
function flow(ms: SipMessage[]): string[] {
  return ms.map((m) => `${m.direction === 'sent' ? '>' : '<'} ${m.method ?? m.status} ${m.header('cseq') ?? ''}`);
}

describe.each<SippTransport>(['udp', 'tcp'])('SIPp far-end scenarios over %s', (transport) => {
  it('uas-ring-cancel: 100, 180, CANCEL -> 200 + 487, ACK; INVITE caller ID parsed', async () => {
    const { far, uac, exit, messages } = await pair('uas-ring-cancel', 'uac-flash', transport, {}, { vars: { ring_ms: 150 } });
    expect(exit.code, exit.errors).toBe(0);
    expect(exit.stopped).toBe(false);
    expect(uac.code, uac.errors).toBe(0);
    expect(far.uri).toBe(transport === 'tcp' ? `sip:127.0.0.1:${far.port};transport=tcp` : `sip:127.0.0.1:${far.port}`);
    expect(flow(messages)).toEqual([
      '< INVITE 1 INVITE',
      '> 100 1 INVITE',
      '> 180 1 INVITE',
      '< CANCEL 1 CANCEL',
      '> 200 1 CANCEL',
      '> 487 1 INVITE',
      '< ACK 1 ACK',
    ]);
    const invite = far.requests('INVITE')[0];
    expect(invite).toBeDefined();
    expect(sipUriUser(invite?.header('From'))).toBe(CLI);
    expect(sipUriUser(invite?.header('P-Asserted-Identity'))).toBe(CLI);
    expect(invite?.body).toBe('');
    expect(invite?.transport).toBe(transport.toUpperCase());
    // one To tag for the 180, the 200 (CANCEL) and the 487
    const tags = far.sent().filter((m) => m.status !== 100).map((m) => /;tag=([^;]+)/.exec(m.header('to') ?? '')?.[1]);
    expect(new Set(tags).size).toBe(1);
    expect(tags[0]).toBeTruthy();
    // the 487 echoes the INVITE's Via and Call-ID
    const r487 = far.sent().find((m) => m.status === 487);
    expect(r487?.header('via')).toBe(invite?.header('via'));
    expect(r487?.header('call-id')).toBe(invite?.header('call-id'));
  });

  it('uas-407-challenge: 407, ACK, authenticated INVITE (CSeq+1), then ring and CANCEL', async () => {
    const { far, uac, exit, messages } = await pair(
      'uas-407-challenge',
      'uac-challenge',
      transport,
      {},
      { auth: { username: SIPP_TEST_CREDENTIALS.username, password: SIPP_TEST_CREDENTIALS.password }, vars: { ring_ms: 100 } },
    );
    expect(exit.code, exit.errors).toBe(0);
    expect(uac.code, uac.errors).toBe(0);
    expect(flow(messages)).toEqual([
      '< INVITE 1 INVITE',
      '> 407 1 INVITE',
      '< ACK 1 ACK',
      '< INVITE 2 INVITE',
      '> 100 2 INVITE',
      '> 180 2 INVITE',
      '< CANCEL 2 CANCEL',
      '> 200 2 CANCEL',
      '> 487 2 INVITE',
      '< ACK 2 ACK',
    ]);
    const challenge = far.sent().find((m) => m.status === 407)?.header('proxy-authenticate') ?? '';
    expect(challenge).toMatch(/^Digest realm="flashverify\.test", nonce="[^"]+", qop="auth", algorithm=MD5$/);
    const [first, second] = far.requests('INVITE');
    expect(second?.header('call-id')).toBe(first?.header('call-id'));
    expect(second?.header('from')).toBe(first?.header('from'));
    const nonce = /nonce="([^"]+)"/.exec(challenge)?.[1];
    const creds = second?.header('proxy-authorization');
    expect(verifyDigestResponse(creds, { method: 'INVITE', password: 'trunkpass', username: 'trunkuser', realm: 'flashverify.test', nonce })).toBe(true);
    expect(verifyDigestResponse(creds, { method: 'INVITE', password: 'wrong' })).toBe(false);
  });

  it('uas-407-challenge: wrong username -> 403, ACK, scenario exits 255 with the reason', async () => {
    const { uac, exit, messages } = await pair(
      'uas-407-challenge',
      'uac-challenge',
      transport,
      {},
      { auth: { username: 'intruder', password: 'trunkpass' } },
    );
    expect(uac.code, uac.errors).toBe(0); // the UAC accepts a 403 and ACKs it
    expect(exit.code).toBe(255);
    expect(exit.errors).toContain('answered 403');
    expect(flow(messages).slice(3)).toEqual(['< INVITE 2 INVITE', '> 403 2 INVITE', '< ACK 2 ACK']);
  });

  it.each([
    ['uas-183-then-180-cancel', ['> 100 1 INVITE', '> 183 1 INVITE', '> 180 1 INVITE']],
    ['uas-183-only-cancel', ['> 100 1 INVITE', '> 183 1 INVITE']],
  ] as const)('%s: provisional responses, then the CANCEL flow', async (scenario, provisional) => {
    const { uac, exit, messages } = await pair(scenario, 'uac-flash', transport, { vars: scenario.includes('then') ? { gap_ms: 100 } : {} }, { vars: { ring_ms: 100 } });
    expect(exit.code, exit.errors).toBe(0);
    expect(uac.code, uac.errors).toBe(0);
    expect(flow(messages)).toEqual([
      '< INVITE 1 INVITE',
      ...provisional,
      '< CANCEL 1 CANCEL',
      '> 200 1 CANCEL',
      '> 487 1 INVITE',
      '< ACK 1 ACK',
    ]);
  });

  it('uas-200-crossing-cancel: 200 (CANCEL) then 200 (INVITE), ACK, BYE', async () => {
    const { uac, exit, messages } = await pair('uas-200-crossing-cancel', 'uac-flash', transport, {}, { vars: { ring_ms: 100 } });
    expect(exit.code, exit.errors).toBe(0);
    expect(uac.code, uac.errors).toBe(0);
    expect(flow(messages)).toEqual([
      '< INVITE 1 INVITE',
      '> 100 1 INVITE',
      '> 180 1 INVITE',
      '< CANCEL 1 CANCEL',
      '> 200 1 CANCEL',
      '> 200 1 INVITE',
      '< ACK 1 ACK',
      '< BYE 2 BYE',
      '> 200 2 BYE',
    ]);
    const ok = messages.find((m) => m.direction === 'sent' && m.status === 200 && m.header('cseq') === '1 INVITE');
    expect(ok?.header('content-type')).toBe('application/sdp');
    expect(ok?.body).toContain('m=audio');
  });

  it('uas-answer: 180, 200, ACK, BYE', async () => {
    const { uac, exit, messages } = await pair('uas-answer', 'uac-answer-bye', transport, { vars: { answer_ms: 20 } });
    expect(exit.code, exit.errors).toBe(0);
    expect(uac.code, uac.errors).toBe(0);
    expect(flow(messages)).toEqual([
      '< INVITE 1 INVITE',
      '> 100 1 INVITE',
      '> 180 1 INVITE',
      '> 200 1 INVITE',
      '< ACK 1 ACK',
      '< BYE 2 BYE',
      '> 200 2 BYE',
    ]);
  });

  it.each([
    ['uas-busy-486', 486],
    ['uas-decline-603', 603],
    ['uas-not-found-404', 404],
    ['uas-unavailable-480', 480],
    ['uas-busy-everywhere-600', 600],
  ] as const)('%s: 100 then %i, ACK', async (scenario, code) => {
    const { uac, exit, messages } = await pair(scenario, 'uac-expect-reject', transport);
    expect(exit.code, exit.errors).toBe(0);
    expect(uac.code, uac.errors).toBe(0);
    expect(flow(messages)).toEqual(['< INVITE 1 INVITE', '> 100 1 INVITE', `> ${code} 1 INVITE`, '< ACK 1 ACK']);
    expect(uac.messages.find((m) => m.direction === 'received' && m.status === code)).toBeDefined();
  });

  it('uas-trying-only: 100, then CANCEL -> 200 + 487, ACK', async () => {
    const { uac, exit, messages } = await pair('uas-trying-only', 'uac-no-ringing', transport, {}, { vars: { wait_ms: 100 } });
    expect(exit.code, exit.errors).toBe(0);
    expect(uac.code, uac.errors).toBe(0);
    expect(flow(messages)).toEqual([
      '< INVITE 1 INVITE',
      '> 100 1 INVITE',
      '< CANCEL 1 CANCEL',
      '> 200 1 CANCEL',
      '> 487 1 INVITE',
      '< ACK 1 ACK',
    ]);
  });
});

// ---------------------------------------------------------------- uas-no-response, driven by raw INVITEs

function rawRequest(method: 'INVITE' | 'CANCEL', transport: SippTransport, localPort: number, farPort: number, callId: string): string {
  const proto = transport === 'udp' ? 'UDP' : 'TCP';
  return [
    `${method} sip:79161234567@127.0.0.1:${farPort} SIP/2.0`,
    `Via: SIP/2.0/${proto} 127.0.0.1:${localPort};branch=z9hG4bK-raw-${callId}`,
    'Max-Forwards: 70',
    `From: <sip:${CLI}@127.0.0.1>;tag=raw1`,
    `To: <sip:79161234567@127.0.0.1:${farPort}>`,
    `Call-ID: ${callId}`,
    `CSeq: 1 ${method}`,
    ...(method === 'INVITE' ? [`Contact: <sip:${CLI}@127.0.0.1:${localPort}>`, `P-Asserted-Identity: <tel:${CLI}>`] : []),
    'Content-Length: 0',
    '',
    '',
  ].join('\r\n');
}

describe('uas-no-response', () => {
  it('udp: absorbs INVITE retransmissions, never answers, exits 0 after hold_ms', async () => {
    const far = await uas({ scenario: 'uas-no-response', transport: 'udp', vars: { hold_ms: 1200 } });
    const sock = createSocket('udp4');
    const replies: string[] = [];
    sock.on('message', (b) => replies.push(b.toString()));
    await new Promise<void>((r) => sock.bind(0, '127.0.0.1', () => r()));
    const localPort = sock.address().port;
    const invite = rawRequest('INVITE', 'udp', localPort, far.port, 'noresp-udp-1');
    const t0 = Date.now();
    // the engine's Timer A schedule with T1 = 50 ms: 0, 50, 150, 350, 750 ms
    for (const at of [0, 50, 150, 350, 750]) {
      await new Promise((r) => setTimeout(r, Math.max(0, t0 + at - Date.now())));
      sock.send(invite, far.port, '127.0.0.1');
    }
    const exit = await far.waitForExit(5000);
    sock.close();
    expect(exit.code, exit.errors).toBe(0);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(1100);
    expect(replies).toEqual([]);
    expect(far.sent()).toEqual([]);
    const invites = far.requests('INVITE');
    expect(invites.length).toBe(5);
    expect(sipUriUser(invites[0]?.header('p-asserted-identity'))).toBe(CLI);
  });

  it('tcp: one INVITE, never answered, exits 0 after hold_ms', async () => {
    const far = await uas({ scenario: 'uas-no-response', transport: 'tcp', vars: { hold_ms: 600 } });
    const replies: string[] = [];
    const sock: Socket = connect(far.port, '127.0.0.1');
    sock.on('data', (b) => replies.push(b.toString()));
    sock.on('error', () => undefined); // SIPp closes the connection when it exits
    await new Promise<void>((r) => sock.once('connect', () => r()));
    sock.write(rawRequest('INVITE', 'tcp', sock.localPort ?? 5060, far.port, 'noresp-tcp-1'));
    const exit = await far.waitForExit(5000);
    sock.destroy();
    expect(exit.code, exit.errors).toBe(0);
    expect(replies).toEqual([]);
    expect(far.requests('INVITE').length).toBe(1);
  });

  it('udp: a CANCEL during the hold (no provisional was sent) fails the scenario', async () => {
    const far = await uas({ scenario: 'uas-no-response', transport: 'udp', vars: { hold_ms: 3000 } });
    const sock = createSocket('udp4');
    await new Promise<void>((r) => sock.bind(0, '127.0.0.1', () => r()));
    const localPort = sock.address().port;
    sock.send(rawRequest('INVITE', 'udp', localPort, far.port, 'noresp-cancel'), far.port, '127.0.0.1');
    await far.waitForMessage((m) => m.method === 'INVITE', 2000);
    sock.send(rawRequest('CANCEL', 'udp', localPort, far.port, 'noresp-cancel'), far.port, '127.0.0.1');
    const exit = await far.waitForExit(5000);
    sock.close();
    expect(exit.code).toBe(1);
    expect(exit.errors).toMatch(/CANCEL/);
  });
});

// ---------------------------------------------------------------- retransmissions (engine with T1 = 50 ms)

/**
 * A deliberately clumsy UDP caller: it retransmits every request on the
 * T1 = 50 ms schedule whether or not a response came (as if responses were
 * late), CANCELs on `cancelOn`, ACKs the final response 120 ms late with the
 * INVITE's branch, or ACKs + BYEs a 200. Returns the status codes it received.
 */
async function clumsyUdpCall(farPort: number, callId: string, cancelOn: number | undefined): Promise<number[]> {
  const sock = createSocket('udp4');
  await new Promise<void>((r) => sock.bind(0, '127.0.0.1', () => r()));
  const lp = sock.address().port;
  const statuses: number[] = [];
  const send = (text: string) => sock.send(text, farPort, '127.0.0.1');
  const req = (method: string, cseq: string, branch: string, to = `<sip:79161234567@127.0.0.1:${farPort}>`, uri = `sip:79161234567@127.0.0.1:${farPort}`) =>
    [
      `${method} ${uri} SIP/2.0`,
      `Via: SIP/2.0/UDP 127.0.0.1:${lp};branch=${branch}`,
      'Max-Forwards: 70',
      `From: <sip:${CLI}@127.0.0.1>;tag=clumsy`,
      `To: ${to}`,
      `Call-ID: ${callId}`,
      `CSeq: ${cseq}`,
      ...(method === 'INVITE' ? [`Contact: <sip:${CLI}@127.0.0.1:${lp}>`] : []),
      'Content-Length: 0',
      '',
      '',
    ].join('\r\n');
  const timers: NodeJS.Timeout[] = [];
  const burst = (text: string) => {
    send(text);
    for (const at of [50, 150, 350]) timers.push(setTimeout(() => send(text), at));
  };
  const done = new Promise<void>((resolve) => {
    let cancelled = false;
    let answered = false;
    sock.on('message', (buf) => {
      const m = parseSipMessage(buf.toString(), { direction: 'received', transport: 'UDP', timestamp: '' });
      if (m.status === undefined) return;
      statuses.push(m.status);
      const cseq = m.header('cseq') ?? '';
      if (cseq.endsWith('INVITE') && m.status === cancelOn && !cancelled) {
        cancelled = true;
        timers.push(setTimeout(() => burst(req('CANCEL', '1 CANCEL', 'z9hG4bK-clumsy-1')), 60));
      }
      if (cseq.endsWith('INVITE') && m.status >= 300 && !statuses.slice(0, -1).includes(m.status)) {
        // a slow ACK, so that INVITE/CANCEL retransmissions reach the far end before it
        const to = m.header('to');
        timers.push(setTimeout(() => send(req('ACK', '1 ACK', 'z9hG4bK-clumsy-1', to)), 120));
        timers.push(setTimeout(resolve, 700));
      }
      if (cseq.endsWith('INVITE') && m.status === 200 && !answered) {
        answered = true;
        const contact = /<([^>]+)>/.exec(m.header('contact') ?? '')?.[1] ?? `sip:127.0.0.1:${farPort}`;
        send(req('ACK', '1 ACK', 'z9hG4bK-clumsy-2', m.header('to'), contact));
        burst(req('BYE', '2 BYE', 'z9hG4bK-clumsy-3', m.header('to'), contact));
      }
      if (cseq.endsWith('BYE') && m.status === 200) timers.push(setTimeout(resolve, 300));
    });
  });
  burst(req('INVITE', '1 INVITE', 'z9hG4bK-clumsy-1'));
  await Promise.race([done, new Promise((r) => setTimeout(r, 8000))]);
  for (const t of timers) clearTimeout(t);
  sock.close();
  return statuses;
}

// The clumsy caller resends on a fixed 50 ms schedule; on a loaded 2-core CI machine a
// scheduling stall can reorder its sends, so a failure is retried before it counts.
describe('UDP retransmissions from the engine (T1 = 50 ms) do not fail the far ends', { retry: 2 }, () => {
  it.each([
    ['uas-ring-cancel', 180, {}],
    ['uas-183-then-180-cancel', 180, { gap_ms: 300 }],
    ['uas-183-only-cancel', 183, {}],
    ['uas-trying-only', 100, {}],
    ['uas-200-crossing-cancel', 180, {}],
    ['uas-answer', undefined, { answer_ms: 400 }],
    ['uas-busy-486', undefined, {}],
  ] as const)('%s', async (scenario, cancelOn, vars) => {
    const far = await uas({ scenario, transport: 'udp', vars });
    const statuses = await clumsyUdpCall(far.port, `clumsy-${scenario}`, cancelOn);
    const exit = await far.waitForExit(8000);
    expect(exit.code, `${exit.errors}\n${statuses.join(',')}`).toBe(0);
    const invites = far.requests('INVITE');
    expect(invites.length).toBeGreaterThanOrEqual(2); // retransmissions did arrive
  });
});

// ---------------------------------------------------------------- harness behaviour

describe('sipp harness', () => {
  it('surfaces SIPp start-up failures (bad scenario) with its stderr', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'sipp-bad-'));
    try {
      const bad = join(dir, 'broken.xml');
      writeFileSync(bad, '<?xml version="1.0"?><scenario name="x"><recv request="INVITE"></scenario>');
      await expect(startSippUas({ scenario: bad })).rejects.toThrow(/SIPp failed to start[\s\S]*(Unable to load or parse|xml)/i);
      await expect(startSippUas({ scenario: 'no-such-scenario' })).rejects.toThrow(/not found/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('surfaces a port already in use', async () => {
    const port = await findFreePort();
    const blocker = createSocket('udp4');
    await new Promise<void>((r) => blocker.bind(port, '127.0.0.1', () => r()));
    try {
      await expect(startSippUas({ scenario: 'uas-ring-cancel', port })).rejects.toThrow(/SIPp failed to start[\s\S]*exit code/);
    } finally {
      blocker.close();
    }
  });

  it('stop() is idempotent, reports stopped, and removes the temp dir', async () => {
    const far = await startSippUas({ scenario: 'uas-ring-cancel', transport: 'tcp' });
    const first = await far.stop();
    const second = await far.stop();
    expect(first.stopped).toBe(true);
    expect(second.stopped).toBe(true);
    expect(first.code).toBe(0); // SIPp exits 0 on SIGTERM: look at `stopped`
    expect(existsSync(far.dir)).toBe(false);
    expect(far.messages()).toEqual([]);
  });

  it('parses compact headers and tel: URIs like a handset would', () => {
    const m = parseSipMessage(
      'INVITE sip:1@h SIP/2.0\r\nf: "Flash" <sip:+4419087300123@10.0.0.1;user=phone>;tag=a\r\nP-Asserted-Identity: <tel:+4419087300123>\r\ni: x@y\r\nl: 0\r\n\r\n',
    );
    expect(m.method).toBe('INVITE');
    expect(sipUriUser(m.header('From'))).toBe('+4419087300123');
    expect(sipUriUser(m.header('p-asserted-identity'))).toBe('+4419087300123');
    expect(m.header('Call-ID')).toBe('x@y');
  });
});
