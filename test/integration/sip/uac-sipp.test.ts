/**
 * The embedded UAC against a real SIPp (3.6.x) over loopback.
 */
import { spawn } from 'node:child_process';
import dgram from 'node:dgram';
import net from 'node:net';
import { fileURLToPath } from 'node:url';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { EmbeddedSipOriginator } from '../../../src/sip/embedded-originator.js';
import { freePort, killSipp, recorder, startSipp, testLogger, trunk, type SippProcess } from './helpers.js';

const scenario = (name: string): string => fileURLToPath(new URL(`./scenarios/${name}`, import.meta.url));

const CLI = '+441234567890';
const DEST = '+447700900123';

describe('EmbeddedSipOriginator against SIPp', () => {
  let sipp: SippProcess | undefined;
  let originator: EmbeddedSipOriginator;

  beforeEach(async () => {
    originator = new EmbeddedSipOriginator({
      listen: { host: '127.0.0.1', port: 0, transports: ['udp', 'tcp'] },
      timers: { t1Ms: 500, t2Ms: 4000, t4Ms: 5000 },
      userAgent: 'flashverify-test',
      logger: testLogger,
    });
    await originator.start();
    expect(originator.localPort).toBeGreaterThan(0);
  });

  afterEach(async () => {
    killSipp(sipp);
    sipp = undefined;
    await originator.stop();
  });

  for (const transport of ['udp', 'tcp'] as const) {
    it(`${transport}: 180 then 200, hangup() sends BYE, SIPp uas exits 0`, async () => {
      const port = await freePort();
      sipp = await startSipp(['-sn', 'uas', '-m', '1', ...(transport === 'tcp' ? ['-t', 't1'] : [])], port, transport);
      const rec = recorder();
      const uri = `sip:127.0.0.1:${port}${transport === 'tcp' ? ';transport=tcp' : ''}`;
      const call = originator.originate(
        { to: DEST, from: CLI, trunk: trunk(uri, { dummySdp: true }), logger: testLogger },
        rec.delegate,
      );
      expect(call.callId).toMatch(/^[0-9a-f]+$/);
      await rec.waitFor('answered');
      await call.hangup();
      await rec.waitFor('ended');
      expect(rec.events.map((e) => e.type)).toEqual(['provisional', 'answered', 'ended']);
      expect(rec.events[0]).toEqual({ type: 'provisional', status: 180 });
      expect(rec.events[1]).toMatchObject({ type: 'answered', crossedCancel: false });
      expect(await sipp.exit).toBe(0);
    });
  }

  it('udp: CANCEL after 180 -> 487 -> onCancelled; SIPp sees the ACK', async () => {
    const port = await freePort();
    sipp = await startSipp(['-sf', scenario('uas-cancel.xml'), '-m', '1'], port, 'udp');
    const rec = recorder();
    const call = originator.originate(
      { to: DEST, from: CLI, trunk: trunk(`sip:127.0.0.1:${port}`), logger: testLogger },
      {
        ...rec.delegate,
        onProvisional: (s, p, sdp) => {
          rec.delegate.onProvisional?.(s, p, sdp);
          call.cancel();
        },
      },
    );
    await rec.waitFor('ended');
    expect(rec.events.map((e) => e.type)).toEqual(['provisional', 'cancelled', 'ended']);
    expect(await sipp.exit).toBe(0);
  });

  it('tcp: cancel() before any provisional is deferred until the 180 (RFC 3261 9.1)', async () => {
    const port = await freePort();
    sipp = await startSipp(['-sf', scenario('uas-cancel.xml'), '-m', '1', '-t', 't1'], port, 'tcp');
    const rec = recorder();
    const call = originator.originate(
      { to: DEST, from: CLI, trunk: trunk(`sip:127.0.0.1:${port};transport=tcp`), logger: testLogger },
      rec.delegate,
    );
    call.cancel();
    await rec.waitFor('ended');
    expect(rec.events.map((e) => e.type)).toEqual(['provisional', 'cancelled', 'ended']);
    expect(await sipp.exit).toBe(0);
  });

  /** A flash call (CANCEL at the 180) to `trunkUri` whose INVITE is over 1300 bytes: a carrier's long header. */
  async function largeInviteCall(sip: EmbeddedSipOriginator, trunkUri: string): Promise<string[]> {
    const rec = recorder();
    const call = sip.originate(
      { to: DEST, from: CLI, trunk: trunk(trunkUri, { headers: { 'X-Carrier-Route': 'r'.repeat(1000) } }), logger: testLogger },
      {
        ...rec.delegate,
        onProvisional: (s, p, sdp) => {
          rec.delegate.onProvisional?.(s, p, sdp);
          call.cancel();
        },
      },
    );
    await rec.waitFor('ended');
    return rec.events.map((e) => e.type);
  }

  it('a UDP trunk, an INVITE over 1300 bytes: it goes over TCP to the same port (RFC 3261 18.1.1), its CANCEL and ACK too; SIPp listening on TCP only sees the whole call', async () => {
    const port = await freePort();
    sipp = await startSipp(['-sf', scenario('uas-cancel.xml'), '-m', '1', '-t', 't1'], port, 'tcp');
    expect(await largeInviteCall(originator, `sip:127.0.0.1:${port}`)).toEqual(['provisional', 'cancelled', 'ended']);
    expect(await sipp.exit).toBe(0);
  });

  it('the same INVITE where TCP is refused: sent over UDP after all; a small one never tries TCP', async () => {
    const port = await freePort();
    sipp = await startSipp(['-sf', scenario('uas-cancel.xml'), '-m', '1'], port, 'udp');
    expect(await largeInviteCall(originator, `sip:127.0.0.1:${port}`)).toEqual(['provisional', 'cancelled', 'ended']);
    expect(await sipp.exit).toBe(0);
  });

  it('TCP that never answers the SYN there (a firewall): after 8*T1 the large INVITE goes over UDP', async () => {
    const port = await freePort();
    // A listener whose accept queue is full (backlog 0, one connection waiting, never accepted): the kernel drops
    // every further SYN, as a firewall would.
    const holder = spawn('python3', ['-c', `import socket,time\ns=socket.socket();s.bind(('127.0.0.1',${port}));s.listen(0);print('ok',flush=True);time.sleep(60)`], { stdio: ['ignore', 'pipe', 'inherit'] });
    const filler = new net.Socket();
    try {
      await new Promise<void>((r) => holder.stdout!.once('data', () => r()));
      await new Promise<void>((r, j) => filler.connect(port, '127.0.0.1', () => r()).once('error', j));
      sipp = await startSipp(['-sf', scenario('uas-cancel.xml'), '-m', '1'], port, 'udp');
      const started = Date.now();
      expect(await largeInviteCall(originator, `sip:127.0.0.1:${port}`)).toEqual(['provisional', 'cancelled', 'ended']);
      // 8*T1 = 4 s, not Timer B (32 s).
      expect(Date.now() - started).toBeGreaterThanOrEqual(3900);
      expect(Date.now() - started).toBeLessThan(10_000);
      expect(await sipp.exit).toBe(0);
    } finally {
      filler.destroy();
      holder.kill('SIGKILL');
    }
  }, 20_000);

  it('sip.udpMaxRequestBytes 0: a large INVITE stays on UDP, TCP never tried', async () => {
    const udpOnly = new EmbeddedSipOriginator({
      listen: { host: '127.0.0.1', port: 0, transports: ['udp', 'tcp'] },
      udpMaxRequestBytes: 0,
      timers: { t1Ms: 500, t2Ms: 4000, t4Ms: 5000 },
      userAgent: 'flashverify-test',
      logger: testLogger,
    });
    await udpOnly.start();
    const port = await freePort();
    // A TCP listener on SIPp's UDP port: it counts the connections made to it.
    let connections = 0;
    const tcp = net.createServer((s) => {
      connections++;
      s.destroy();
    });
    await new Promise<void>((r) => tcp.listen(port, '127.0.0.1', () => r()));
    try {
      sipp = await startSipp(['-sf', scenario('uas-cancel.xml'), '-m', '1'], port, 'udp');
      expect(await largeInviteCall(udpOnly, `sip:127.0.0.1:${port}`)).toEqual(['provisional', 'cancelled', 'ended']);
      expect(await sipp.exit).toBe(0);
      expect(connections).toBe(0);
    } finally {
      await udpOnly.stop();
      await new Promise<void>((r) => tcp.close(() => r()));
    }
  });

  it('udp: 486 -> onFailed busy, ACKed by the transaction', async () => {
    const port = await freePort();
    sipp = await startSipp(['-sf', scenario('uas-busy.xml'), '-m', '1'], port, 'udp');
    const rec = recorder();
    originator.originate({ to: DEST, from: CLI, trunk: trunk(`sip:127.0.0.1:${port}`), logger: testLogger }, rec.delegate);
    const failed = await rec.waitFor('failed');
    expect(failed).toEqual({ type: 'failed', failure: { reason: 'busy', status: 486, phrase: 'Busy Here' } });
    await rec.waitFor('ended');
    expect(await sipp.exit).toBe(0);
  });

  it('udp: 401 challenge answered with Authorization (qop=auth, verified by SIPp), then answered', async () => {
    const port = await freePort();
    sipp = await startSipp(['-sf', scenario('uas-auth-401.xml'), '-m', '1'], port, 'udp');
    const rec = recorder();
    const call = originator.originate(
      {
        to: DEST,
        from: CLI,
        trunk: trunk(`sip:127.0.0.1:${port}`, { auth: { username: 'fvuser', password: 'fvsecret' } }),
        logger: testLogger,
      },
      rec.delegate,
    );
    await rec.waitFor('answered');
    await call.hangup();
    await rec.waitFor('ended');
    expect(rec.events.map((e) => e.type)).toEqual(['provisional', 'answered', 'ended']);
    expect(await sipp.exit).toBe(0);
  });

  for (const transport of ['udp', 'tcp'] as const) {
    it(`${transport}: 407 challenge answered with Proxy-Authorization (qop=auth), then answered`, async () => {
      const port = await freePort();
      sipp = await startSipp(
        ['-sf', scenario('uas-auth.xml'), '-m', '1', ...(transport === 'tcp' ? ['-t', 't1'] : [])],
        port,
        transport,
      );
      const rec = recorder();
      const uri = `sip:127.0.0.1:${port}${transport === 'tcp' ? ';transport=tcp' : ''}`;
      const call = originator.originate(
        { to: DEST, from: CLI, trunk: trunk(uri, { auth: { username: 'fvuser', password: 'fvsecret' } }), logger: testLogger },
        rec.delegate,
      );
      await rec.waitFor('answered');
      await call.hangup();
      await rec.waitFor('ended');
      expect(rec.events.map((e) => e.type)).toEqual(['provisional', 'answered', 'ended']);
      expect(await sipp.exit).toBe(0);
    });
  }

  it('udp: 407 without trunk.auth -> onFailed rejected 407', async () => {
    const port = await freePort();
    sipp = await startSipp(['-sf', scenario('uas-auth.xml'), '-m', '1'], port, 'udp');
    const rec = recorder();
    originator.originate({ to: DEST, from: CLI, trunk: trunk(`sip:127.0.0.1:${port}`), logger: testLogger }, rec.delegate);
    const failed = await rec.waitFor('failed');
    expect(failed).toMatchObject({ type: 'failed', failure: { reason: 'rejected', status: 407 } });
    await rec.waitFor('ended');
  });

  for (const transport of ['udp', 'tcp'] as const) {
    it(`${transport}: far end BYE (Record-Route, Contact) -> 200 + onRemoteHangup`, async () => {
      const port = await freePort();
      sipp = await startSipp(
        ['-sf', scenario('uas-remote-bye.xml'), '-m', '1', ...(transport === 'tcp' ? ['-t', 't1'] : [])],
        port,
        transport,
      );
      const rec = recorder();
      const uri = `sip:127.0.0.1:${port}${transport === 'tcp' ? ';transport=tcp' : ''}`;
      originator.originate({ to: DEST, from: CLI, trunk: trunk(uri), logger: testLogger }, rec.delegate);
      await rec.waitFor('ended');
      expect(rec.events.map((e) => e.type)).toEqual(['provisional', 'answered', 'remoteHangup', 'ended']);
      expect(await sipp.exit).toBe(0);
    });
  }
});

describe('EmbeddedSipOriginator transport errors', () => {
  let originator: EmbeddedSipOriginator;

  beforeEach(async () => {
    originator = new EmbeddedSipOriginator({
      listen: { host: '127.0.0.1', port: 0, transports: ['udp', 'tcp'] },
      timers: { t1Ms: 500, t2Ms: 4000, t4Ms: 5000 },
      userAgent: 'flashverify-test',
      logger: testLogger,
    });
    await originator.start();
  });

  afterEach(async () => {
    await originator.stop();
  });

  it('udp: INVITE to a port where nothing listens fails `unreachable` well under a second (ICMP)', async () => {
    const port = await freePort();
    const rec = recorder();
    const t0 = Date.now();
    originator.originate({ to: DEST, from: CLI, trunk: trunk(`sip:127.0.0.1:${port}`), logger: testLogger }, rec.delegate);
    const failed = await rec.waitFor('failed', 3000);
    expect(Date.now() - t0).toBeLessThan(1000);
    expect(failed).toMatchObject({ type: 'failed', failure: { reason: 'unreachable' } });
    await rec.waitFor('ended');
    expect(rec.events.map((e) => e.type)).toEqual(['failed', 'ended']);
  });

  it('tcp: connection refused fails `unreachable` at once', async () => {
    const port = await freePort();
    const rec = recorder();
    const t0 = Date.now();
    originator.originate(
      { to: DEST, from: CLI, trunk: trunk(`sip:127.0.0.1:${port};transport=tcp`), logger: testLogger },
      rec.delegate,
    );
    const failed = await rec.waitFor('failed', 3000);
    expect(Date.now() - t0).toBeLessThan(1000);
    expect(failed).toMatchObject({ type: 'failed', failure: { reason: 'unreachable' } });
    await rec.waitFor('ended');
  });

  it('stop() fails calls in flight as `unreachable` and ends them', async () => {
    // A UDP peer that swallows everything: the INVITE stays in Calling.
    const sink = dgram.createSocket('udp4');
    await new Promise<void>((r) => sink.bind(0, '127.0.0.1', () => r()));
    const port = sink.address().port;
    const rec = recorder();
    originator.originate({ to: DEST, from: CLI, trunk: trunk(`sip:127.0.0.1:${port}`), logger: testLogger }, rec.delegate);
    await new Promise((r) => setTimeout(r, 100));
    await originator.stop();
    sink.close();
    expect(rec.events.map((e) => e.type)).toEqual(['failed', 'ended']);
    expect(rec.events[0]).toMatchObject({ failure: { reason: 'unreachable' } });
  });

  it('answers out-of-dialog OPTIONS with 200; INVITE, REGISTER and MESSAGE (known, not taken) with 405, an unknown method with 501, as in a dialog', async () => {
    const sock = dgram.createSocket('udp4');
    await new Promise<void>((r) => sock.bind(0, '127.0.0.1', () => r()));
    const myPort = sock.address().port;
    const replies: string[] = [];
    sock.on('message', (m) => replies.push(m.toString()));
    const req = (method: string, n: number): string =>
      `${method} sip:flashverify@127.0.0.1:${originator.localPort} SIP/2.0\r\n` +
      `Via: SIP/2.0/UDP 127.0.0.1:${myPort};branch=z9hG4bKprobe${n};rport\r\n` +
      `From: <sip:sbc@127.0.0.1>;tag=p${n}\r\nTo: <sip:flashverify@127.0.0.1>\r\n` +
      `Call-ID: probe-${n}\r\nCSeq: ${n} ${method}\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n`;
    sock.send(req('OPTIONS', 1), originator.localPort, '127.0.0.1');
    sock.send(req('INVITE', 2), originator.localPort, '127.0.0.1');
    sock.send(req('BYE', 3), originator.localPort, '127.0.0.1');
    sock.send(req('REGISTER', 4), originator.localPort, '127.0.0.1');
    sock.send(req('MESSAGE', 5), originator.localPort, '127.0.0.1');
    sock.send(req('FROBNICATE', 6), originator.localPort, '127.0.0.1');
    sock.send('garbage\r\n\r\n', originator.localPort, '127.0.0.1');
    const deadline = Date.now() + 2000;
    while (replies.length < 6 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    sock.close();
    const status = (callId: string): string | undefined =>
      replies.find((r) => r.includes(`Call-ID: ${callId}`))?.split('\r\n')[0];
    expect(status('probe-1')).toBe('SIP/2.0 200 OK');
    expect(status('probe-2')).toBe('SIP/2.0 405 Method Not Allowed');
    expect(status('probe-3')).toBe('SIP/2.0 481 Call/Transaction Does Not Exist');
    expect(status('probe-4')).toBe('SIP/2.0 405 Method Not Allowed');
    expect(status('probe-5')).toBe('SIP/2.0 405 Method Not Allowed');
    expect(status('probe-6')).toBe('SIP/2.0 501 Not Implemented');
    for (const n of [4, 5, 6]) expect(replies.find((r) => r.includes(`probe-${n}\r\n`))).toMatch(/\r\nAllow: INVITE, ACK, CANCEL, BYE, OPTIONS\r\n/);
    expect(replies.find((r) => r.includes('probe-2'))).toMatch(/\r\nAllow: INVITE, ACK, CANCEL, BYE, OPTIONS\r\n/);
    // RFC 3581 4: rport filled in with the source port, and `received` added although it is the sent-by host.
    expect(replies.find((r) => r.includes('probe-1'))).toMatch(new RegExp(`\\r\\nVia: SIP/2\\.0/UDP 127\\.0\\.0\\.1:${myPort};branch=z9hG4bKprobe1;rport=${myPort};received=127\\.0\\.0\\.1\\r\\n`));
  });
});
