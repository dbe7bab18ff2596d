/**
 * What the "network" behind the fake drachtio-server (test/fakes/drachtio-server.ts)
 * does with an INVITE: one call flow per far-end behaviour.
 *
 * Each scenario is transcribed by hand from the SIPp scenario of the same
 * behaviour in sip-test/ (named in `sipp`): the responses the far end sends and
 * when, so the embedded backend (driven against SIPp) and the drachtio backend
 * (driven against this fake) see the same far end. They are not captures of a
 * real drachtio-server. The fake turns each step into the frame drachtio-server
 * delivers to the app, from the `sip-from-network` template of
 * test/fixtures/drachtio/admin-protocol.txt (whose header cites the
 * drachtio-server source it is derived from):
 *
 *   <len>#<uuid>|sip|network|<bytes>|udp|<far-end addr>|<far-end port>|<hh:mm:ss.us>|<txn id>|<Call-ID>;uac|\r\n<SIP response>
 *
 * test/fixtures/drachtio/flash-ring-cancel.txt is the whole admin-connection
 * exchange of `ringCancel`, checked against the fake in drachtio-backend.test.ts.
 */

/** One response of the far end. */
export interface NetworkResponse {
  status: number;
  /** Default: the standard phrase. */
  reason?: string;
  /** Wait this long before sending it (from the previous step, or from the trigger). Default 0. */
  delayMs?: number;
  /** Attach an SDP (an answer, or an offer when the INVITE had none). */
  sdp?: boolean;
  /** Extra header lines (e.g. Proxy-Authenticate). */
  headers?: Record<string, string>;
  /** drachtio-server's transaction layer's own response (sofia-sip: 503 for a transport error), not the far end's: To untagged. */
  local?: true;
}

/** Credentials the far end demands (407 first, then the digest is checked against the password). */
export interface ProxyChallenge {
  realm: string;
  username: string;
  password: string;
}

export interface DrachtioScenario {
  name: string;
  /** The SIPp scenario in sip-test/ with the same far-end behaviour. */
  sipp: string;
  /** Responses to the INVITE, in order. Nothing after them: the far end waits (for a CANCEL, an ACK ...). */
  invite: NetworkResponse[];
  /**
   * What the far end does on CANCEL (the CANCEL itself is always answered 200 by
   * the far end; drachtio-server does not pass that 200 up to the app):
   * a final response to the INVITE (487, or a 200 that crosses the CANCEL).
   * Default: 487 at once. 'ignore': no final response at all.
   */
  onCancel?: NetworkResponse | 'ignore';
  /** The far end hangs up (BYE) this long after its 2xx. */
  remoteByeAfterMs?: number;
  /** The far end sends a re-INVITE (same SDP, new version) this long after its 2xx. */
  reinviteAfterMs?: number;
  /**
   * That re-INVITE carries no SDP (RFC 3261 14.2): the app's 200 must offer, and the far end's ACK answers with this
   * SDP (drachtio-server passes the ACK up in the dialog).
   */
  reinviteWithoutSdp?: { ackSdp: string };
  /** The TCP connection between app and drachtio-server breaks this long after the INVITE. */
  dropConnectionAfterMs?: number;
  /** The SDP of responses with `sdp: true` (default farEndSdp()). */
  sdpBody?: string;
  /** Proxy authentication: 407, then `invite` once the re-sent INVITE carries the right digest (403 otherwise). */
  challenge?: ProxyChallenge;
  /**
   * drachtio-server cannot send the INVITE at all and answers the app's `sip` frame
   * `NOK|<this reason>` (sip-dialog-controller.cpp doSendRequestOutsideDialog).
   */
  rejectInvite?: string;
  /** What the far end answers to a re-INVITE from the app (default 200 with its SDP); 'ignore': no response ever. */
  onReinvite?: NetworkResponse | 'ignore' | ((nth: number) => NetworkResponse | 'ignore' | undefined);
}

export const SCENARIOS = {
  /** sip-test/uas-ring-cancel.xml: 100, 180, then CANCEL → 200 (CANCEL) + 487. */
  ringCancel: {
    name: 'ring then 487 after CANCEL',
    sipp: 'uas-ring-cancel',
    invite: [{ status: 100 }, { status: 180, delayMs: 50 }],
    onCancel: { status: 487 },
  },
  /** sip-test/uas-183-only-cancel.xml: 100, 183 with early media, never 180. */
  sessionProgressOnly: {
    name: '183 only, then 487 after CANCEL',
    sipp: 'uas-183-only-cancel',
    invite: [{ status: 100 }, { status: 183, delayMs: 50, sdp: true }],
    onCancel: { status: 487 },
  },
  /** sip-test/uas-200-crossing-cancel.xml: 100, 180, CANCEL → 200 (INVITE, with an SDP offer) instead of 487. */
  answerCrossesCancel: {
    name: '200 crossing the CANCEL',
    sipp: 'uas-200-crossing-cancel',
    invite: [{ status: 100 }, { status: 180, delayMs: 50 }],
    onCancel: { status: 200, sdp: true },
  },
  /** sip-test/uas-answer.xml: 100, 180, 200 with SDP at once; waits for ACK and BYE. */
  answer: {
    name: '200 before any CANCEL',
    sipp: 'uas-answer',
    invite: [{ status: 100 }, { status: 180, delayMs: 20 }, { status: 200, delayMs: 20, sdp: true }],
  },
  /** sip-test/uas-busy-486.xml */
  busy: { name: '486 busy', sipp: 'uas-busy-486', invite: [{ status: 100 }, { status: 486, delayMs: 20 }] },
  /** sip-test/uas-decline-603.xml */
  declined: { name: '603 declined', sipp: 'uas-decline-603', invite: [{ status: 100 }, { status: 603, delayMs: 20 }] },
  /** sip-test/uas-not-found-404.xml */
  notFound: { name: '404 not found', sipp: 'uas-not-found-404', invite: [{ status: 100 }, { status: 404, delayMs: 20 }] },
  /** sip-test/uas-unavailable-480.xml */
  unavailable: {
    name: '480 unavailable',
    sipp: 'uas-unavailable-480',
    invite: [{ status: 100 }, { status: 480, delayMs: 20 }],
  },
  /**
   * sip-test/uas-trying-only.xml: 100 Trying, never an 18x; CANCEL → 487.
   * drachtio-server's sofia agent is created without NTATAG_PASS_100: the app never sees the 100
   * (the fake drops it too, test/fixtures/drachtio/flash-ring-cancel.txt), sofia's transaction
   * does, and sends the app's CANCEL (held until a provisional, nta.c) at once.
   */
  tryingOnly: { name: '100 only', sipp: 'uas-trying-only', invite: [{ status: 100 }], onCancel: { status: 487 } },
  /** sip-test/uas-no-response.xml: a black hole, not even 100 Trying. */
  noResponse: { name: 'no response at all', sipp: 'uas-no-response', invite: [], onCancel: 'ignore' },
  /** sip-test/uas-voice-answer.xml: answered with an SDP answer; the far end waits for our BYE. */
  voiceAnswer: {
    name: 'voice: 200 with SDP answer',
    sipp: 'uas-voice-answer',
    invite: [{ status: 100 }, { status: 180, delayMs: 20 }, { status: 200, delayMs: 50, sdp: true }],
  },
  /** sip-test/uas-voice-reinvite-mid-prompt.xml: answered, then a re-INVITE mid-call. */
  voiceReinvite: {
    name: 'voice: re-INVITE after answer',
    sipp: 'uas-voice-reinvite-mid-prompt',
    invite: [{ status: 100 }, { status: 200, delayMs: 20, sdp: true }],
    reinviteAfterMs: 100,
  },
  /** sip-test/uas-voice-hangup-mid-prompt.xml: answered, far end BYEs soon after. */
  remoteHangup: {
    name: 'answered, then far-end BYE',
    sipp: 'uas-voice-hangup-mid-prompt',
    invite: [{ status: 100 }, { status: 200, delayMs: 20, sdp: true }],
    remoteByeAfterMs: 300,
  },
  /** sip-test/uas-busy-everywhere-600.xml */
  busyEverywhere: {
    name: '600 busy everywhere',
    sipp: 'uas-busy-everywhere-600',
    invite: [{ status: 100 }, { status: 600, delayMs: 20 }],
  },
  /** sip-test/uas-service-unavailable-503.xml */
  serviceUnavailable: {
    name: '503 service unavailable',
    sipp: 'uas-service-unavailable-503',
    invite: [{ status: 100 }, { status: 503, delayMs: 20 }],
  },
  /** sip-test/uas-183-then-180-cancel.xml: 100, 183 without SDP, 180 after gap_ms (200), then the CANCEL flow. */
  progressThenRinging: {
    name: '183 then 180, ringing on the 180',
    sipp: 'uas-183-then-180-cancel',
    invite: [{ status: 100 }, { status: 183, delayMs: 20 }, { status: 180, delayMs: 200 }],
    onCancel: { status: 487 },
  },
  /** sip-test/uas-407-challenge.xml: 407 (digest, qop=auth), then the authenticated INVITE rings and is cancelled. */
  proxyChallenge: {
    name: '407 challenge answered with digest credentials',
    sipp: 'uas-407-challenge',
    invite: [{ status: 100 }, { status: 180, delayMs: 20 }],
    onCancel: { status: 487 },
    challenge: { realm: 'flashverify.test', username: 'trunkuser', password: 'trunkpass' },
  },
  /**
   * No response from the far end: drachtio-server's own Timer B (sofia nta) fires and the
   * app gets the transaction's locally generated 408 as a network response
   * (processResponseOutsideDialog passes every INVITE response up with source "network").
   * Timer B is 32 s on drachtio-server; the fake shortens it.
   */
  timerB: { name: "drachtio-server's Timer B (408)", sipp: '', invite: [{ status: 408, delayMs: 300 }] },
  /** drachtio-server cannot send the INVITE (e.g. no transport for the Request-URI). */
  notSent: { name: 'INVITE refused by drachtio-server (NOK)', sipp: '', invite: [], rejectInvite: 'requested protocol/transport not available' },
  /** Rings, then the app's connection to drachtio-server breaks before any final response (no SIPp equivalent). */
  connectionLostWhileRinging: {
    name: 'connection to drachtio-server lost while ringing',
    sipp: '',
    invite: [{ status: 100 }, { status: 180, delayMs: 20 }],
    onCancel: 'ignore',
    dropConnectionAfterMs: 100,
  },
} satisfies Record<string, DrachtioScenario>;

/** Standard reason phrases used by the fake far end. */
export const REASONS: Record<number, string> = {
  100: 'Trying',
  180: 'Ringing',
  183: 'Session Progress',
  200: 'OK',
  403: 'Forbidden',
  404: 'Not Found',
  405: 'Method Not Allowed',
  408: 'Request Timeout',
  480: 'Temporarily Unavailable',
  481: 'Call/Transaction Does Not Exist',
  486: 'Busy Here',
  487: 'Request Terminated',
  488: 'Not Acceptable Here',
  500: 'Server Internal Error',
  503: 'Service Unavailable',
  600: 'Busy Everywhere',
  603: 'Decline',
};

/** The far end's SDP (one PCMU/PCMA stream on loopback), version `v`. */
export function farEndSdp(port = 40_000, v = 1): string {
  return (
    'v=0\r\n' +
    `o=farend 1000 ${v} IN IP4 127.0.0.1\r\n` +
    's=farend\r\n' +
    'c=IN IP4 127.0.0.1\r\n' +
    't=0 0\r\n' +
    `m=audio ${port} RTP/AVP 0 8 101\r\n` +
    'a=rtpmap:0 PCMU/8000\r\n' +
    'a=rtpmap:8 PCMA/8000\r\n' +
    'a=rtpmap:101 telephone-event/8000\r\n' +
    'a=sendrecv\r\n'
  );
}
