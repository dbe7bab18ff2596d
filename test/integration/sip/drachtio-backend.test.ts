import { createServer, type AddressInfo, type Socket } from 'node:net';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { pino, type Logger } from 'pino';
import type { TrunkConfig } from '../../../src/config/schema.js';
import { placeFlashCall, type FlashResult } from '../../../src/engine/flash-call.js';
import { placeVoiceCall } from '../../../src/engine/voice-call.js';
import type { MediaPlayer, MediaSession } from '../../../src/media/media-player.js';
import { parseAnswer } from '../../../src/media/sdp.js';
import { CONNECTION_LOST, DrachtioOriginator } from '../../../src/sip/drachtio/drachtio-originator.js';
import { EmbeddedSipOriginator } from '../../../src/sip/embedded-originator.js';
import { SCENARIOS, type DrachtioScenario } from '../../fakes/drachtio-scenarios.js';
import { FakeDrachtioServer } from '../../fakes/drachtio-server.js';
import { diffTranscript, transcriptFrames } from '../../fakes/fixtures.js';
import { http, readEvents, startTestEngine, testConfig, waitFor, type TestEngine } from '../../helpers/engine.js';
import { SIPP_TEST_CREDENTIALS, sipUriUser, startSippUas, verifyDigestResponse } from '../../helpers/sipp.js';

/**
 * The flash-call outcome table of design.md "Flash call, precisely", run on
 * BOTH signalling backends through the one policy (placeFlashCall):
 *  - embedded: our UAC against the SIPp scenario of the row (sip-test/);
 *  - drachtio: DrachtioOriginator (drachtio-srf) against the fake
 *    drachtio-server playing the same far-end behaviour (test/fakes/).
 * Each row checks the outcome, whether it rang (the `delivered` moment), the
 * final SIP status and the SIP requests that went on the wire.
 */
const T1 = 50;
const RING_MS = 300;
const RINGING_TIMEOUT_MS = 1500;
const CALL_TIMEOUT_MS = 64 * T1; // Timer B
const SETTLE_MS = 64 * T1 + 1000;
const SECRET = 'cymru-test';
const logger = pino({ level: process.env.TEST_LOG_LEVEL ?? 'silent' });

function trunk(uri: string, extra: Partial<TrunkConfig> = {}): TrunkConfig {
  return { name: 'test', uri, cps: 200, ringOn183: false, dummySdp: false, headers: {}, ...extra };
}

interface Row {
  scenario: DrachtioScenario;
  trunk?: Partial<TrunkConfig>;
  sippVars?: Record<string, number>;
  outcome: FlashResult['outcome'];
  rang: boolean;
  /** The provisional that counted as ringing, when it matters (183 vs 180). */
  ringingStatus?: number;
  sipStatus?: number;
  /** The second INVITE must carry a Proxy-Authorization whose digest matches the trunk password. */
  digest?: boolean;
  /** SIP requests on the wire, consecutive retransmissions collapsed. */
  wire: string[];
}

const TABLE: Row[] = [
  { scenario: SCENARIOS.ringCancel, outcome: 'cancelled', rang: true, sipStatus: 487, wire: ['INVITE', 'CANCEL', 'ACK'] },
  {
    scenario: SCENARIOS.sessionProgressOnly,
    trunk: { ringOn183: true },
    outcome: 'cancelled',
    rang: true,
    sipStatus: 487,
    wire: ['INVITE', 'CANCEL', 'ACK'],
  },
  // ringOn183 false (trunk default): the 183 is not ringing, the 180 after it is.
  { scenario: SCENARIOS.progressThenRinging, outcome: 'cancelled', rang: true, ringingStatus: 180, sipStatus: 487, wire: ['INVITE', 'CANCEL', 'ACK'] },
  { scenario: SCENARIOS.answerCrossesCancel, outcome: 'answered', rang: true, sipStatus: 200, wire: ['INVITE', 'CANCEL', 'ACK', 'BYE'] },
  { scenario: SCENARIOS.answer, outcome: 'answered', rang: true, sipStatus: 200, wire: ['INVITE', 'ACK', 'BYE'] },
  { scenario: SCENARIOS.busy, outcome: 'busy', rang: false, sipStatus: 486, wire: ['INVITE', 'ACK'] },
  { scenario: SCENARIOS.busyEverywhere, outcome: 'busy', rang: false, sipStatus: 600, wire: ['INVITE', 'ACK'] },
  { scenario: SCENARIOS.serviceUnavailable, outcome: 'rejected', rang: false, sipStatus: 503, wire: ['INVITE', 'ACK'] },
  {
    scenario: SCENARIOS.proxyChallenge,
    trunk: { auth: { username: SIPP_TEST_CREDENTIALS.username, password: SIPP_TEST_CREDENTIALS.password } },
    outcome: 'cancelled',
    rang: true,
    ringingStatus: 180,
    sipStatus: 487,
    digest: true,
    wire: ['INVITE', 'ACK', 'INVITE', 'CANCEL', 'ACK'],
  },
  { scenario: SCENARIOS.declined, outcome: 'declined', rang: false, sipStatus: 603, wire: ['INVITE', 'ACK'] },
  { scenario: SCENARIOS.notFound, outcome: 'not_found', rang: false, sipStatus: 404, wire: ['INVITE', 'ACK'] },
  { scenario: SCENARIOS.unavailable, outcome: 'unavailable', rang: false, sipStatus: 480, wire: ['INVITE', 'ACK'] },
  { scenario: SCENARIOS.tryingOnly, outcome: 'no_ringing', rang: false, sipStatus: 487, wire: ['INVITE', 'CANCEL', 'ACK'] },
  // No CANCEL before a provisional response (RFC 3261 9.1): only the INVITE (and its UDP retransmissions).
  { scenario: SCENARIOS.noResponse, sippVars: { hold_ms: 64 * T1 + 1500 }, outcome: 'timeout', rang: false, wire: ['INVITE'] },
];

function collapse(methods: string[]): string[] {
  return methods.filter((m, i) => m !== methods[i - 1]);
}

interface Observed {
  result: FlashResult;
  ringingStatus: number | undefined;
  wire: string[];
}

function flash(
  originator: DrachtioOriginator | EmbeddedSipOriginator,
  t: TrunkConfig,
  log: Logger = logger,
): Promise<{ result: FlashResult; ringingStatus: number | undefined }> {
  let ringingStatus: number | undefined;
  return placeFlashCall(originator, {
    to: '+447700900123',
    cli: '+441908731234',
    trunk: t,
    ringMs: RING_MS,
    ringingTimeoutMs: RINGING_TIMEOUT_MS,
    settleMs: SETTLE_MS,
    logger: log,
    onRinging: (_callId, status) => {
      ringingStatus = status;
    },
  }).then((result) => ({ result, ringingStatus }));
}

/** RFC 2617 3.2.2: the re-sent INVITE's digest, recomputed from the trunk password (and not from a wrong one). */
function checkDigest(invites: { header(name: string): string | undefined }[]): void {
  expect(invites).toHaveLength(2);
  const authorization = invites[1]!.header('proxy-authorization');
  const { username, password, realm } = SIPP_TEST_CREDENTIALS;
  expect(verifyDigestResponse(authorization, { method: 'INVITE', username, password, realm })).toBe(true);
  expect(verifyDigestResponse(authorization, { method: 'INVITE', password: 'wrong' })).toBe(false);
  expect(invites[1]!.header('call-id')).toBe(invites[0]!.header('call-id'));
  expect(invites[0]!.header('proxy-authorization')).toBeUndefined();
}

function check(row: Row, seen: Observed): void {
  expect(seen.result.outcome).toBe(row.outcome);
  expect(seen.result.rang).toBe(row.rang);
  expect(seen.ringingStatus !== undefined).toBe(row.rang);
  if (row.ringingStatus !== undefined) expect(seen.ringingStatus).toBe(row.ringingStatus);
  if (row.sipStatus !== undefined) expect(seen.result.sipStatus).toBe(row.sipStatus);
  expect(seen.result.callId).not.toBe('');
  expect(collapse(seen.wire)).toEqual(row.wire);
}

describe.each(['embedded', 'drachtio'] as const)('flash-call outcome table on the %s backend', (backend) => {
  let fake: FakeDrachtioServer | undefined;
  let drachtio: DrachtioOriginator | undefined;
  let embedded: EmbeddedSipOriginator | undefined;

  beforeAll(async () => {
    if (backend === 'drachtio') {
      fake = await FakeDrachtioServer.start({ secret: SECRET });
      drachtio = newDrachtio(fake.port);
      await drachtio.start();
      expect(drachtio.isConnected()).toBe(true);
    } else {
      embedded = new EmbeddedSipOriginator({
        listen: { host: '127.0.0.1', port: 0, transports: ['udp', 'tcp'] },
        timers: { t1Ms: T1, t2Ms: 400, t4Ms: 500 },
        userAgent: 'flashverify-test',
        logger,
      });
      await embedded.start();
    }
  });
  afterAll(async () => {
    await drachtio?.stop();
    await embedded?.stop();
    await fake?.stop();
  });

  it.each(TABLE.map((row) => [row.scenario.name, row] as const))('%s', async (_name, row) => {
    if (backend === 'drachtio') {
      fake!.scenario = row.scenario;
      const { result, ringingStatus } = await flash(drachtio!, trunk('sip:192.0.2.10:5060', row.trunk));
      // The BYE of an answered call leaves right after the outcome: give the wire a moment.
      const wire = await waitFor(async () => {
        const methods = fake!.wire().filter((r) => r.callId === result.callId).map((r) => r.method);
        return collapse(methods).length >= row.wire.length ? methods : undefined;
      }, 3000).catch(() => fake!.wire().filter((r) => r.callId === result.callId).map((r) => r.method));
      check(row, { result, ringingStatus, wire });
      const invite = fake!.wire('INVITE').find((r) => r.callId === result.callId)!;
      if (row.digest) {
        checkDigest(fake!.wire('INVITE').filter((r) => r.callId === result.callId).map((r) => r.sip));
        expect(fake!.authorizations.filter((a) => a.callId === result.callId).map((a) => a.valid)).toEqual([true]);
      }
      expect(sipUriUser(invite.sip.header('from'))).toBe('+441908731234');
      expect(sipUriUser(invite.sip.header('p-asserted-identity'))).toBe('+441908731234');
      expect(invite.uri).toBe('sip:+447700900123@192.0.2.10:5060;user=phone');
      expect(invite.sip.body).toBe('');
      expect(drachtio!.activeCalls).toBe(0);
      // Every frame drachtio-srf sent is one admin-protocol.txt knows.
      expect(fake!.unexpectedFrames).toEqual([]);
    } else {
      const uas = await startSippUas({ scenario: row.scenario.sipp, vars: row.sippVars, maxLifetimeMs: 30_000 });
      try {
        const { result, ringingStatus } = await flash(embedded!, trunk(uas.uri, row.trunk));
        const exit = await uas.waitForExit(10_000);
        expect(exit.code).toBe(0);
        check(row, { result, ringingStatus, wire: uas.requests().map((m) => m.method!) });
        if (row.digest) checkDigest(uas.requests('INVITE'));
      } finally {
        await uas.stop();
      }
    }
  });
});

describe("drachtio backend: drachtio-server's own 503 for a transport error (To untagged)", () => {
  it('is `unreachable`, as the embedded stack reports a transport error, and a far end\'s 503 beside it stays `rejected`', async () => {
    await withFreshDrachtio(async (fake, drachtio) => {
      fake.scenario = { name: "drachtio-server's 503 (TCP refused)", sipp: '', invite: [{ status: 503, delayMs: 10, local: true }] };
      const local = (await flash(drachtio, trunk('sip:192.0.2.10:5060;transport=tcp'))).result;
      expect([local.outcome, local.sipStatus, local.rang]).toEqual(['unreachable', 503, false]);
      fake.scenario = SCENARIOS.serviceUnavailable;
      const far = (await flash(drachtio, trunk('sip:192.0.2.10:5060;transport=tcp'))).result;
      expect([far.outcome, far.sipStatus]).toEqual(['rejected', 503]);
      expect(fake.unexpectedFrames).toEqual([]);
    });
  });
});

/** A flash call that rings for long (no CANCEL due during the test). */
function flashLong(originator: DrachtioOriginator): Promise<FlashResult> {
  return placeFlashCall(originator, {
    to: '+447700900123',
    cli: '+441908731234',
    trunk: trunk('sip:192.0.2.10:5060'),
    ringMs: 20_000,
    ringingTimeoutMs: 5000,
    settleMs: SETTLE_MS,
    logger,
  });
}

function newDrachtio(port: number, overrides: Partial<ConstructorParameters<typeof DrachtioOriginator>[0]> = {}): DrachtioOriginator {
  return new DrachtioOriginator({
    host: '127.0.0.1',
    port,
    secret: SECRET,
    enablePing: true,
    pingIntervalMs: 5000,
    reconnectMinMs: 100,
    reconnectMaxMs: 400,
    callTimeoutMs: CALL_TIMEOUT_MS,
    userAgent: 'flashverify-test',
    logger,
    ...overrides,
  });
}

/** A fresh fake drachtio-server and an originator connected to it for `run`, then both stopped. */
async function withFreshDrachtio(
  run: (fake: FakeDrachtioServer, drachtio: DrachtioOriginator) => Promise<void>,
  overrides: Partial<ConstructorParameters<typeof DrachtioOriginator>[0]> = {},
): Promise<void> {
  const fake = await FakeDrachtioServer.start({ secret: SECRET });
  const drachtio = newDrachtio(fake.port, overrides);
  try {
    await drachtio.start();
    await run(fake, drachtio);
  } finally {
    await drachtio.stop();
    await fake.stop();
  }
}

/** One flash call against a fresh fake (no keepalive pings in its exchange log), then both stopped. */
async function oneFlash(scenario: DrachtioScenario, check: (fake: FakeDrachtioServer, drachtio: DrachtioOriginator, result: FlashResult) => Promise<void>): Promise<void> {
  await withFreshDrachtio(
    async (fake, drachtio) => {
      fake.scenario = scenario;
      const { result } = await flash(drachtio, trunk('sip:192.0.2.10:5060'));
      await check(fake, drachtio, result);
    },
    { enablePing: false },
  );
}

describe('drachtio backend: the exchange on the admin connection', () => {
  it('a flash call that rings and is cancelled is exactly the transcript of test/fixtures/drachtio/flash-ring-cancel.txt', async () => {
    await oneFlash(SCENARIOS.ringCancel, async (fake, _drachtio, result) => {
      expect(result.outcome).toBe('cancelled');
      const expected = transcriptFrames('drachtio/flash-ring-cancel.txt', 'ring-cancel');
      // The last frame (NOK to the ACK) may land just after the outcome.
      await waitFor(async () => fake.exchange.length >= expected.length || undefined, 3000).catch(() => undefined);
      expect(diffTranscript(expected, fake.exchange)).toBeUndefined();
      expect(fake.unexpectedFrames).toEqual([]);
    });
  });
});

describe('drachtio backend: 200 crossing the CANCEL (drachtio-server ACK-BYE)', () => {
  it("answered; the one BYE on the wire is drachtio-server's own, the app's later BYE finds no dialog and nothing is left open", async () => {
    const started = Date.now();
    await oneFlash(SCENARIOS.answerCrossesCancel, async (fake, drachtio, result) => {
      expect(result).toMatchObject({ outcome: 'answered', rang: true, sipStatus: 200 });
      await waitFor(async () => drachtio.activeCalls === 0 || undefined, 3000);
      expect(Date.now() - started).toBeLessThan(RING_MS + 3000);
      const byes = fake.wire('BYE').filter((r) => r.callId === result.callId);
      expect(byes.map((b) => b.fromApp)).toEqual([false]);
      expect(byes[0]!.sip.header('reason')).toContain('ACK-BYE');
      // drachtio-srf got the server's BYE as an `unsolicited` request and answered nothing to it.
      const unsolicited = fake.exchange.filter((f) => f.direction === '<' && f.payload.split('\r\n', 1)[0]!.includes('|unsolicited|'));
      expect(unsolicited).toHaveLength(1);
      expect(fake.appResponses.filter((r) => r.header('call-id') === result.callId)).toEqual([]);
      // Our own BYE (sent on the 200, as for any crossing 2xx) reaches a server that already cleared the dialog.
      const appBye = fake.exchange.find((f) => f.direction === '>' && /\r\nBYE /.test(f.payload));
      const msgId = appBye?.payload.split('|', 1)[0];
      expect(fake.exchange.some((f) => f.direction === '<' && f.payload.endsWith(`|response|${msgId}|NOK|Server error: unable to find dialog for dialog id provided`))).toBe(true);
      expect(fake.unexpectedFrames).toEqual([]);
    });
  });
});

describe('drachtio backend: connection to drachtio-server', () => {
  let fake: FakeDrachtioServer | undefined;
  let drachtio: DrachtioOriginator | undefined;
  afterEach(async () => {
    await drachtio?.stop();
    await fake?.stop();
    drachtio = undefined;
    fake = undefined;
  });

  it('connection lost while ringing: the call settles at once (drachtio connection lost), readiness drops, it reconnects when drachtio-server is back', async () => {
    fake = await FakeDrachtioServer.start({ secret: SECRET });
    drachtio = newDrachtio(fake.port);
    await drachtio.start();
    fake.scenario = SCENARIOS.connectionLostWhileRinging;
    // ringMs longer than the drop: the call is ringing, CANCEL not yet due, when the connection breaks.
    const started = Date.now();
    let ended = false;
    let paused: Promise<void> | undefined;
    const result = await new Promise<FlashResult>((resolve) => {
      void placeFlashCall(drachtio!, {
        to: '+447700900123',
        cli: '+441908731234',
        trunk: trunk('sip:192.0.2.10:5060'),
        ringMs: 5000,
        ringingTimeoutMs: 5000,
        settleMs: SETTLE_MS,
        logger,
        onRinging: () => {
          // drachtio-server goes away for a while: reconnects are refused until resume().
          paused = new Promise((r) => setTimeout(r, 50)).then(() => fake!.pause());
        },
      }).then(resolve);
    });
    ended = true;
    expect(Date.now() - started).toBeLessThan(2000);
    // Rang first, so the policy reports the call as shown (cancelled) with the connection-loss phrase.
    expect(result.rang).toBe(true);
    expect(result.phrase).toBe(CONNECTION_LOST);
    await paused;
    expect(drachtio.isConnected()).toBe(false);
    expect(drachtio.activeCalls).toBe(0);
    // While it is down, new calls fail unreachable at once.
    const down = await flash(drachtio, trunk('sip:192.0.2.10:5060'));
    expect(down.result.outcome).toBe('unreachable');
    await new Promise((r) => setTimeout(r, 500)); // a few refused reconnects (back-off 100..400 ms)
    await fake.resume();
    await waitFor(async () => drachtio!.isConnected(), 5000);
    // One connection: our reconnect, and no second one from drachtio-srf's own retry (switched off).
    expect(fake.clientCount).toBe(1);
    fake.scenario = SCENARIOS.busy;
    const after = await flash(drachtio, trunk('sip:192.0.2.10:5060'));
    expect(after.result.outcome).toBe('busy');
    expect(ended).toBe(true);
  });

  it('connection lost before any provisional: failed unreachable', async () => {
    fake = await FakeDrachtioServer.start({ secret: SECRET });
    drachtio = newDrachtio(fake.port);
    await drachtio.start();
    fake.scenario = { ...SCENARIOS.noResponse, dropConnectionAfterMs: 100 };
    const { result } = await flash(drachtio, trunk('sip:192.0.2.10:5060'));
    expect(result.outcome).toBe('unreachable');
    expect(result.phrase).toBe(CONNECTION_LOST);
  });

  it('a wrong secret fails start() with drachtio_auth_failed', async () => {
    fake = await FakeDrachtioServer.start({ secret: SECRET });
    drachtio = newDrachtio(fake.port, { secret: 'wrong' });
    await expect(drachtio.start()).rejects.toMatchObject({ code: 'drachtio_auth_failed' });
    expect(drachtio.isConnected()).toBe(false);
  });

  it('a server that takes the connection and never answers authenticate: the attempt is dropped after connectTimeoutMs, start() resolves, and it is tried again', async () => {
    const sockets: Socket[] = [];
    const closed = new Set<Socket>();
    const silent = createServer((socket) => {
      socket.resume(); // read (and drop) the authenticate frame, so that the client's close is seen
      socket.on('error', () => undefined).on('close', () => closed.add(socket));
      sockets.push(socket);
    });
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
    try {
      drachtio = newDrachtio((silent.address() as AddressInfo).port, { connectTimeoutMs: 300 });
      const t0 = Date.now();
      await drachtio.start();
      expect(Date.now() - t0).toBeLessThan(2000);
      expect(drachtio.isConnected()).toBe(false);
      // Dropped and tried again with the back-off (100-400 ms), not left hanging on the first socket.
      await waitFor(async () => sockets.length >= 2, 3000);
      await waitFor(async () => closed.has(sockets[0]!), 2000);
    } finally {
      drachtio?.stop();
      drachtio = undefined;
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => silent.close(() => resolve()));
    }
  });

  it('drachtio-server down at boot: start() resolves, readiness false, connects once it is up', async () => {
    fake = await FakeDrachtioServer.start({ secret: SECRET });
    await fake.pause();
    drachtio = newDrachtio(fake.port);
    await drachtio.start();
    expect(drachtio.isConnected()).toBe(false);
    await fake.resume();
    await waitFor(async () => drachtio!.isConnected(), 5000);
    expect(fake.clientCount).toBe(1);
    expect(fake.frames.filter((f) => f.type === 'authenticate')).toHaveLength(1);
  });

  it('keepalive: ping frames every pingIntervalMs; a drachtio-server that stops answering them is dropped, calls fail, it reconnects', async () => {
    fake = await FakeDrachtioServer.start({ secret: SECRET });
    drachtio = newDrachtio(fake.port, { pingIntervalMs: 100, pingTimeoutMs: 250 });
    await drachtio.start();
    const pings = (): number => fake!.frames.filter((f) => f.type === 'ping').length;
    await waitFor(async () => pings() >= 3, 3000);
    // Each one answered `OK|pong`: still the same connection.
    expect(drachtio.isConnected()).toBe(true);
    expect(fake.frames.filter((f) => f.type === 'authenticate')).toHaveLength(1);

    // A half-open connection: TCP stays up, nothing comes back. A ringing call is in flight.
    fake.scenario = { ...SCENARIOS.ringCancel, onCancel: 'ignore' };
    const call = flashLong(drachtio);
    await fake.waitForRequest('INVITE', 2000);
    await new Promise((r) => setTimeout(r, 100)); // the 180 arrives
    fake.answerPings = false;
    const silencedAt = Date.now();
    const result = await call;
    expect(result.phrase).toBe(CONNECTION_LOST);
    expect(Date.now() - silencedAt).toBeLessThan(2000);
    expect(drachtio.isConnected()).toBe(false);

    // drachtio-server answers again: reconnected, one connection.
    fake.answerPings = true;
    await waitFor(async () => drachtio!.isConnected(), 5000);
    expect(fake.clientCount).toBe(1);
    expect(fake.frames.filter((f) => f.type === 'authenticate').length).toBeGreaterThanOrEqual(2);
  });

  it('without enablePing no ping frame is sent', async () => {
    fake = await FakeDrachtioServer.start({ secret: SECRET });
    drachtio = newDrachtio(fake.port, { enablePing: false, pingIntervalMs: 50 });
    await drachtio.start();
    await new Promise((r) => setTimeout(r, 300));
    expect(fake.frames.filter((f) => f.type === 'ping')).toHaveLength(0);
  });

  it("drachtio-server's Timer B: a 408 as the only response is a timeout, end to end", async () => {
    fake = await FakeDrachtioServer.start({ secret: SECRET });
    drachtio = newDrachtio(fake.port);
    await drachtio.start();
    fake.scenario = SCENARIOS.timerB;
    const { result } = await flash(drachtio, trunk('sip:192.0.2.10:5060'));
    expect(result).toMatchObject({ outcome: 'timeout', rang: false, sipStatus: 408 });
    expect(collapse(fake.wire().filter((r) => r.callId === result.callId).map((r) => r.method))).toEqual(['INVITE', 'ACK']);
    expect(drachtio.activeCalls).toBe(0);
  });

  it('an INVITE drachtio-server refuses to send (NOK|<reason>) fails unreachable with the reason', async () => {
    fake = await FakeDrachtioServer.start({ secret: SECRET });
    drachtio = newDrachtio(fake.port);
    await drachtio.start();
    fake.scenario = SCENARIOS.notSent;
    const { result } = await flash(drachtio, trunk('sip:192.0.2.10:5060'));
    expect(result.outcome).toBe('unreachable');
    expect(result.phrase).toBe('requested protocol/transport not available');
    expect(fake.wire()).toHaveLength(0);
    expect(drachtio.activeCalls).toBe(0);
    expect(drachtio.isConnected()).toBe(true);
  });

  it('a 407 to a trunk without credentials: rejected 407, and a warn line names the trunk and what to set', async () => {
    fake = await FakeDrachtioServer.start({ secret: SECRET });
    const lines: Record<string, unknown>[] = [];
    drachtio = newDrachtio(fake.port);
    await drachtio.start();
    fake.scenario = SCENARIOS.proxyChallenge;
    const capture = pino({ level: 'warn' }, { write: (l: string) => void lines.push(JSON.parse(l) as Record<string, unknown>) });
    const { result } = await flash(drachtio, trunk('sip:192.0.2.10:5060', { name: 'carrier-a' }), capture);
    expect(result).toMatchObject({ outcome: 'rejected', sipStatus: 407, rang: false });
    const warn = lines.find((l) => l['msg'] === 'the trunk asks for digest credentials: set sip.trunks[].auth');
    expect(warn).toMatchObject({ trunk: 'carrier-a', status: 407, call_id: result.callId });
    expect(warn!['challenges']).toEqual([expect.stringMatching(/^realm="[^"]+" algorithm=MD5$/)]);
  });

  it('a 407 answered with a wrong password gets 403: rejected, the digest was checked', async () => {
    fake = await FakeDrachtioServer.start({ secret: SECRET });
    drachtio = newDrachtio(fake.port);
    await drachtio.start();
    fake.scenario = SCENARIOS.proxyChallenge;
    const { result } = await flash(drachtio, trunk('sip:192.0.2.10:5060', { auth: { username: 'trunkuser', password: 'not-the-password' } }));
    expect(result).toMatchObject({ outcome: 'rejected', sipStatus: 403, rang: false });
    expect(fake.authorizations.map((a) => a.valid)).toEqual([false]);
  });

  it('a far-end BYE on an answered call is answered 200 and reported', async () => {
    fake = await FakeDrachtioServer.start({ secret: SECRET });
    drachtio = newDrachtio(fake.port);
    await drachtio.start();
    fake.scenario = SCENARIOS.remoteHangup;
    const events: string[] = [];
    await new Promise<void>((resolve) => {
      drachtio!.originate(
        { to: '+447700900123', from: '+441908731234', trunk: trunk('sip:192.0.2.10:5060'), logger },
        {
          onAnswered: (_sdp, crossed) => events.push(`answered:${crossed}`),
          onRemoteHangup: () => events.push('remote_hangup'),
          onEnded: () => {
            events.push('ended');
            resolve();
          },
        },
      );
    });
    expect(events).toEqual(['answered:false', 'remote_hangup', 'ended']);
    // drachtio-srf answers the BYE 200 (the frame may land just after onEnded).
    await waitFor(async () => fake!.appResponses.length > 0, 2000);
    expect(fake.appResponses.map((r) => r.status)).toEqual([200]);
    expect(fake.wire('BYE')).toHaveLength(0); // we did not send one
  });
});

/** The SDP offer of the stub media session below. */
const STUB_OFFER =
  'v=0\r\no=flashverify 1 1 IN IP4 127.0.0.1\r\ns=flashverify\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n' +
  'm=audio 41000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n';

/** A voice call through `drachtio` with a stub media session (signalling only) that "plays" for `playMs`; `extra` adds to it. */
function stubVoiceCall(drachtio: DrachtioOriginator, extra: Partial<MediaSession>, playMs: number): ReturnType<typeof placeVoiceCall> {
  const session: MediaSession = {
    offer: STUB_OFFER,
    accept: (sdp) => parseAnswer(sdp),
    play: () => new Promise((r) => setTimeout(() => r({ completed: true, packets: playMs / 20 }), playMs)),
    stop: () => undefined,
    close: async () => undefined,
    ...extra,
  };
  const player: MediaPlayer = { createSession: async () => session, stop: async () => undefined };
  return placeVoiceCall(drachtio, player, {
    to: '+447700900123',
    from: '+441908731234',
    trunk: trunk('sip:192.0.2.10:5060'),
    announcement: { language: 'en', items: [{ silenceMs: playMs }] },
    answerTimeoutMs: 2000,
    settleMs: SETTLE_MS,
    logger,
  });
}

describe('drachtio backend: voice call smoke test', () => {
  it('the SDP offer goes out as localSdp, a re-INVITE is answered with it, then our BYE', async () => {
    await withFreshDrachtio(async (fake, drachtio) => {
      fake.scenario = SCENARIOS.voiceReinvite;
      const offer = STUB_OFFER;
      // A stub media session: this test is about signalling; it "plays" for 300 ms (the re-INVITE lands meanwhile).
      const result = await stubVoiceCall(drachtio, {}, 300);
      expect(result.outcome).toBe('played');
      expect(result.codec).toBe('PCMU');
      const invite = fake.wire('INVITE')[0]!;
      expect(invite.sip.body).toBe(offer);
      expect(invite.sip.header('content-type')).toBe('application/sdp');
      await fake.waitForRequest('BYE', 2000);
      expect(fake.wire().map((r) => r.method)).toEqual(['INVITE', 'ACK', 'BYE']);
      const reinviteAnswer = fake.appResponses.find((r) => r.header('cseq')?.endsWith('INVITE'));
      expect(reinviteAnswer?.status).toBe(200);
      expect(reinviteAnswer?.body).toBe(offer);
    });
  });
});

describe('drachtio backend: a re-INVITE without SDP', () => {
  it('our 200 carries the media side\'s offer, and the answer in the far end\'s ACK goes to the media side (RFC 3261 14.2)', async () => {
    const ackSdp = 'v=0\r\no=far 1 3 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40100 RTP/AVP 0\r\na=sendrecv\r\n';
    await withFreshDrachtio(async (fake, drachtio) => {
      fake.scenario = { ...SCENARIOS.voiceReinvite, reinviteWithoutSdp: { ackSdp } };
      const reoffer = STUB_OFFER.replace('o=flashverify 1 1', 'o=flashverify 1 2').replace('RTP/AVP 0 8 101', 'RTP/AVP 0 101');
      const answers: string[] = [];
      const result = await stubVoiceCall(drachtio, { offerAgain: () => reoffer, acceptAgain: (sdp) => void answers.push(sdp) }, 400);
      expect(result.outcome).toBe('played');
      const ok = fake.appResponses.find((r) => r.header('cseq')?.endsWith('INVITE'));
      expect([ok?.status, ok?.body]).toEqual([200, reoffer]);
      expect(answers).toEqual([ackSdp]);
    });
  });
});

describe('drachtio backend: OPTIONS keep-alive pings (srf.request)', () => {
  let fake: FakeDrachtioServer;
  let drachtio: DrachtioOriginator;
  beforeAll(async () => {
    fake = await FakeDrachtioServer.start({ secret: SECRET });
    drachtio = newDrachtio(fake.port, { enablePing: false });
    await drachtio.start();
  });
  afterAll(async () => {
    await drachtio.stop();
    await fake.stop();
  });
  let hosts = 0;
  const ping = (uri: string, extra: Partial<TrunkConfig> = {}, timeoutMs = 1000) => drachtio.ping({ trunk: trunk(uri, extra), timeoutMs, logger });
  /** The frame that carried the response to this ping's OPTIONS up to the app. */
  const responseFrame = (callId: string) =>
    fake.exchange.find((f) => f.direction === '<' && f.payload.includes('|sip|network|') && f.payload.includes(`Call-ID: ${callId}\r\n`));

  it('sends an out-of-dialog OPTIONS with the headers of the trunk and takes its 200 as answered', async () => {
    const result = await ping('sip:192.0.2.10:5060', { fromDomain: 'cli.example.net', headers: { 'X-Account': 'acme' }, auth: { username: 'u', password: 'p' } });
    expect(result).toMatchObject({ outcome: 'answered', status: 200, phrase: 'OK' });
    const sent = fake.wire('OPTIONS').find((r) => r.callId === result.callId)!;
    expect(sent.uri).toBe('sip:192.0.2.10:5060');
    expect(sent.sip.header('to')).toBe('<sip:192.0.2.10:5060>');
    expect(sent.sip.header('from')).toMatch(/^<sip:flashverify@cli\.example\.net>;tag=\w+$/);
    expect(sent.sip.header('accept')).toBe('application/sdp');
    expect(sent.sip.header('user-agent')).toBe('flashverify-test');
    expect(sent.sip.header('x-account')).toBe('acme');
    expect(sent.sip.header('cseq')).toBe('1 OPTIONS');
    expect(sent.sip.header('authorization')).toBeUndefined();
    // drachtio-server's response frame of a request outside a dialog: the transaction id, no dialog id.
    expect(responseFrame(result.callId)!.payload.split('\r\n', 1)[0]).toMatch(/\|[0-9a-f-]{36}\|\|$/);
    expect(fake.unexpectedFrames).toEqual([]);
    expect(drachtio.activeCalls).toBe(0);
    expect(fake.wire('INVITE')).toHaveLength(0);
  });

  it.each([
    { name: 'the far end answers 405', answer: { status: 405 }, outcome: 'answered', status: 405 },
    { name: 'the far end answers 403', answer: { status: 403 }, outcome: 'answered', status: 403 },
    { name: 'the far end answers 503', answer: { status: 503 }, outcome: 'answered', status: 503 },
    // Nothing answered: drachtio-server's own responses (untagged To), not the trunk's.
    { name: "drachtio-server's Timer F 408", answer: { local: 408 }, outcome: 'timeout', status: 408 },
    { name: "drachtio-server's 503 for a transport error", answer: { local: 503 }, outcome: 'unreachable', status: 503 },
    { name: 'drachtio-server cannot send it (NOK)', answer: { refuse: 'requested protocol/transport not available' }, outcome: 'unreachable', phrase: 'requested protocol/transport not available' },
    { name: 'no response at all', answer: 'silent', outcome: 'timeout', phrase: 'no final response within 300 ms' },
  ] as const)('$name → $outcome', async ({ answer, outcome, name: _name, ...rest }) => {
    const host = `192.0.2.${20 + hosts++}:5060`;
    fake.answerOptions(host, answer);
    const started = Date.now();
    const result = await ping(`sip:${host}`, {}, 300);
    expect(result).toMatchObject({ outcome, ...rest });
    expect(Date.now() - started).toBeLessThan(1000);
    expect(fake.unexpectedFrames).toEqual([]);
  });

  it('not connected, or the connection lost while a ping waits: not_sent (says nothing of the trunk)', async () => {
    const other = await FakeDrachtioServer.start({ secret: SECRET });
    const d = newDrachtio(other.port, { enablePing: false });
    try {
      expect(await d.ping({ trunk: trunk('sip:192.0.2.10:5060'), timeoutMs: 500, logger })).toMatchObject({ outcome: 'not_sent', phrase: 'SIP stack not running' });
      await d.start();
      other.answerOptions('192.0.2.10', 'silent');
      const waiting = d.ping({ trunk: trunk('sip:192.0.2.10:5060'), timeoutMs: 5000, logger });
      await other.waitForRequest('OPTIONS', 2000);
      const t0 = Date.now();
      other.dropConnections();
      expect(await waiting).toMatchObject({ outcome: 'not_sent', phrase: CONNECTION_LOST });
      expect(Date.now() - t0).toBeLessThan(1000);
      await other.pause();
      expect(await d.ping({ trunk: trunk('sip:192.0.2.10:5060'), timeoutMs: 500, logger })).toMatchObject({ outcome: 'not_sent', phrase: 'drachtio not connected' });
    } finally {
      await d.stop();
      await other.stop();
    }
  });
});

describe('drachtio backend through the engine', () => {
  let engine: TestEngine | undefined;
  let fake: FakeDrachtioServer | undefined;
  afterEach(async () => {
    await engine?.stop();
    await fake?.stop();
    engine = undefined;
    fake = undefined;
  });

  it('POST /v1/verify → INVITE via drachtio → ring → CANCEL → delivered', async () => {
    fake = await FakeDrachtioServer.start({ secret: SECRET });
    fake.scenario = SCENARIOS.ringCancel;
    engine = await startTestEngine(
      testConfig({
        api: { defaultRateLimitPerSecond: 1000 },
        flash: { ringMs: RING_MS, ringingTimeoutMs: RINGING_TIMEOUT_MS },
        sip: {
          backend: 'drachtio',
          drachtio: { host: '127.0.0.1', port: fake.port, secret: SECRET, reconnectMinMs: 100, reconnectMaxMs: 400 },
          timers: { t1Ms: T1 },
          trunks: [{ name: 'carrier', uri: 'sip:192.0.2.10:5060' }],
        },
      }),
    );
    expect(engine.engine.sipPort).toBeUndefined();
    const ready = await http(`${engine.url}/readyz`);
    expect(ready.status).toBe(200);
    expect(JSON.stringify(ready.body)).toContain('drachtio');
    const account = await engine.account({ balance: 1 });
    const created = await http(`${engine.url}/v1/verify`, {
      auth: account.auth,
      body: { phone_number: '+447700900123', method: 'flash_call' },
    });
    expect(created.status).toBe(201);
    const id = String(created.body.request_id);
    const body = await waitFor(async () => {
      const r = await http(`${engine!.url}/v1/verify/${id}`, { auth: account.auth });
      return r.body.status === 'delivered' ? r.body : undefined;
    }, 10_000);
    expect(body.status).toBe('delivered');
    const record = await waitFor(async () => {
      const h = await engine!.redis.hgetall(engine!.keys.verification(id));
      return h.outcome ? h : undefined;
    }, 10_000);
    expect(record.outcome).toBe('cancelled');
    const events = (await readEvents(engine.redis, engine.keys)).filter((e) => e.request_id === id);
    expect(events.map((e) => e.status)).toEqual(['sent', 'delivered']);
    expect(JSON.parse(events[1]!.detail!)).toMatchObject({ sip_status: 180, trunk: 'carrier' });
    expect(fake.wire().map((r) => r.method)).toEqual(['INVITE', 'CANCEL', 'ACK']);
    expect(sipUriUser(fake.wire('INVITE')[0]!.sip.header('from'))).toMatch(/^\+44190873\d{4}$/);

    // drachtio-server goes away: readiness reports it.
    await fake.pause();
    await waitFor(async () => (await http(`${engine!.url}/readyz`)).status === 503, 5000);

    // Calls meanwhile fail unreachable (refunded), but the trunk was never asked: they do not take it out of service
    // (sip.trunkHealth.failuresToMarkDown is 3).
    for (let i = 0; i < 4; i++) {
      const r = await http(`${engine.url}/v1/verify`, { auth: account.auth, body: { phone_number: `+44770090013${i}`, method: 'flash_call' } });
      expect([r.status, r.body.error]).toEqual([201, undefined]);
      const ended = await waitFor(async () => {
        const s = await http(`${engine!.url}/v1/verify/${String(r.body.request_id)}`, { auth: account.auth });
        return s.body.status === 'failed' ? s.body : undefined;
      }, 10_000);
      expect(ended.status).toBe('failed');
    }
    const metrics = await fetch(`${engine.url}/metrics`).then((r) => r.text());
    expect(metrics).toMatch(/flashverify_trunk_up\{trunk="carrier"\} 1/);
    expect(engine.logs.some((l) => l.includes('trunk down'))).toBe(false);
  });
});
