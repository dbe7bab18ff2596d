import { isIP } from 'node:net';
import { parse, write, type MediaDescription, type SessionDescription } from 'sdp-transform';
import { AppError } from '../errors/app-error.js';
import { G711_PAYLOAD_TYPE, type G711Codec } from './g711.js';

/** SDP offer/answer (RFC 3264) for one audio stream, built and parsed with sdp-transform. */

/** Dynamic payload type we offer for telephone-event (RFC 4733). */
export const TELEPHONE_EVENT_PT = 101;

/** Media negotiation failed: no usable audio stream or no codec in common. */
export class MediaError extends AppError {
  constructor(message: string) {
    super('media_error', message);
  }
}

export interface OfferParams {
  /** Address placed in o= and c= (the advertised media host). */
  host: string;
  /** Our RTP port. */
  port: number;
  /** o= session id; any number unique per call. */
  sessionId: number;
  /** o= version: 1 for the INVITE's; higher for an offer later in the call (RFC 3264 8). */
  sessionVersion?: number;
  /** Codecs in order of preference. Default PCMU, PCMA. */
  codecs?: readonly G711Codec[];
}

/** The INVITE's SDP offer: G.711 μ-law and A-law plus telephone-event/8000, 20 ms packets, sendrecv. */
export function buildOffer(p: OfferParams): string {
  const codecs = p.codecs ?? ['PCMU', 'PCMA'];
  const ipVer = p.host.includes(':') ? 6 : 4;
  const payloads = [...codecs.map((c) => G711_PAYLOAD_TYPE[c]), TELEPHONE_EVENT_PT];
  const session: SessionDescription = {
    version: 0,
    origin: { username: 'flashverify', sessionId: p.sessionId, sessionVersion: p.sessionVersion ?? 1, netType: 'IN', ipVer, address: p.host },
    name: 'flashverify',
    connection: { version: ipVer, ip: p.host },
    timing: { start: 0, stop: 0 },
    media: [
      {
        type: 'audio',
        port: p.port,
        protocol: 'RTP/AVP',
        payloads: payloads.join(' '),
        rtp: [
          ...codecs.map((c) => ({ payload: G711_PAYLOAD_TYPE[c], codec: c, rate: 8000 })),
          { payload: TELEPHONE_EVENT_PT, codec: 'telephone-event', rate: 8000 },
        ],
        fmtp: [{ payload: TELEPHONE_EVENT_PT, config: '0-16' }],
        ptime: 20,
        direction: 'sendrecv',
      },
    ],
  };
  return write(session);
}

export interface NegotiatedMedia {
  codec: G711Codec;
  payloadType: number;
  /** Where to send RTP. */
  address: string;
  port: number;
  /** telephone-event payload type of the answer, if any. */
  telephoneEventPt?: number;
  /** The far end put the stream on hold / receive-less (a=sendonly or a=inactive): send nothing. */
  sendAllowed: boolean;
}

const STATIC_CODECS: Record<number, G711Codec> = { 0: 'PCMU', 8: 'PCMA' };

/** The payload types an m= line lists, in its order (the answerer's preference). */
function payloadsOf(m: MediaDescription): number[] {
  return String(m.payloads ?? '')
    .split(/\s+/)
    .filter((x) => x !== '')
    .map(Number);
}

/**
 * The upper-case encoding name of payload type `pt` in an m= line (its rtpmap, else the static one), or undefined;
 * G.711 only at 8000 Hz (a PCMU/16000 rtpmap is not ours).
 */
function codecOf(m: MediaDescription, pt: number): string | undefined {
  const rtpmap = m.rtp.find((r) => r.payload === pt);
  const name = rtpmap?.codec.toUpperCase() ?? STATIC_CODECS[pt];
  if ((name === 'PCMU' || name === 'PCMA') && (rtpmap?.rate ?? 8000) !== 8000) return undefined;
  return name;
}

/** What our RTP sender can send to: plain RTP (RTP/AVP, what we offer), over IPv4 or IPv6 as its socket is bound. */
export interface MediaReach {
  /** The address family of our RTP socket (it binds on sip.listen.host): 4 or 6. */
  family: 4 | 6;
}

/** An address that means "send nothing" (RFC 2543 hold, RFC 3264 8.4): 0.0.0.0 or the unspecified IPv6 address. */
function isHoldAddress(address: string): boolean {
  return address === '0.0.0.0' || (isIP(address) === 6 && /^[0:]+$/.test(address));
}

/**
 * Why our sender cannot send to an m= line's stream, or undefined: a transport other than plain RTP (RTP/SAVP is
 * SRTP, which we neither offer nor speak: the far end would hear noise), or an address of the other IP family than
 * our socket's (an IPv4 socket cannot reach ::1).
 */
function unreachable(m: MediaDescription, session: SessionDescription, reach: MediaReach | undefined): string | undefined {
  // RTP/AVPF (RFC 4585) is plain RTP on the wire, with feedback we neither send nor need: taken, though the answer
  // should have kept our RTP/AVP (RFC 3264 6). SRTP (RTP/SAVP, RTP/SAVPF, UDP/TLS/RTP/SAVP...) is not.
  if (!/^RTP\/AVPF?$/i.test(m.protocol)) return `its audio is ${m.protocol}, and we send plain RTP (RTP/AVP) only`;
  if (!Number.isInteger(m.port) || m.port < 1 || m.port > 65535) return `its audio port ${m.port} is not a UDP port (1 to 65535)`;
  // The address itself when it is a literal (c=IN IP4 ::1 is an IPv6 address, whatever the line says), else the line.
  const address = m.connection?.ip ?? session.connection?.ip ?? '';
  const literal = isIP(address);
  const version = literal !== 0 ? literal : (m.connection?.version ?? session.connection?.version);
  if (reach !== undefined && version !== undefined && Number(version) !== reach.family) {
    return `its media address is IPv${version} and our RTP socket is IPv${reach.family} (it binds on sip.listen.host)`;
  }
  return undefined;
}

/**
 * Reads the SDP answer: the first audio m= line with a non-zero port, its
 * connection address (media-level c= overrides session-level, RFC 4566 5.7),
 * and the first payload of ours it lists (RFC 3264 6.1: the answerer's order
 * is its preference). Throws MediaError when nothing usable is there, and when
 * the announcement could not reach the far end: an answer that takes no audio
 * (a=sendonly or a=inactive, c=0.0.0.0), one in SRTP (RTP/SAVP), one whose
 * address our socket cannot send to (`reach`).
 */
export function parseAnswer(sdp: string, reach?: MediaReach): NegotiatedMedia {
  const { session, audio, address } = answeredStream(sdp, reach);
  const answered = audio.direction ?? session.direction ?? 'sendrecv';
  if (answered === 'sendonly' || answered === 'inactive') {
    throw new MediaError(`SDP answer is a=${answered}: the far end takes no audio, so the code cannot be read to it`);
  }
  if (isHoldAddress(address)) throw new MediaError(`SDP answer's address is ${address} (send nothing): the code cannot be read to it`);
  const payloads = payloadsOf(audio);
  let chosen: { codec: G711Codec; pt: number } | undefined;
  let telephoneEventPt: number | undefined;
  for (const pt of payloads) {
    const name = codecOf(audio, pt);
    if (name === 'TELEPHONE-EVENT') {
      telephoneEventPt ??= pt;
      continue;
    }
    if (!chosen && (name === 'PCMU' || name === 'PCMA')) chosen = { codec: name, pt };
  }
  if (!chosen) throw new MediaError(`SDP answer offers no codec we sent (payloads: ${payloads.join(' ') || 'none'})`);
  return {
    codec: chosen.codec,
    payloadType: chosen.pt,
    address,
    port: audio.port,
    ...(telephoneEventPt !== undefined ? { telephoneEventPt } : {}),
    sendAllowed: true,
  };
}

export type Direction = 'sendrecv' | 'sendonly' | 'recvonly' | 'inactive';

/** The answer's direction for an offer's (RFC 3264 6.1): what the offerer sends, we receive, and the other way round. */
const ANSWER_DIRECTION: Record<Direction, Direction> = { sendrecv: 'sendrecv', sendonly: 'recvonly', recvonly: 'sendonly', inactive: 'inactive' };

export interface ReofferParams {
  /** Address placed in o= and c= (the advertised media host). */
  host: string;
  /** Our RTP port (unchanged for the call). */
  port: number;
  /** o= session id and version of the SDP we send (the version goes up with each change, RFC 3264 8). */
  sessionId: number;
  sessionVersion: number;
  /** The codec the call plays in: the answer keeps it (a stream cannot change codec mid-announcement). */
  codec: G711Codec;
}

/**
 * A new offer from the far end in an established call (a re-INVITE: media moved to another address, hold, a
 * refresh): the answer (RFC 3264 6, 8) and what it means for our stream. The first audio stream that lists `codec`
 * is taken, with its telephone-event if offered; every other m= line is declined (port 0), in order. Direction
 * complements the offer's; a sendonly or inactive offer, or a connection address of 0.0.0.0 (RFC 2543 hold), lets
 * us send nothing. Throws MediaError when no audio stream of the offer takes `codec` (the call keeps its media: 488).
 */
export function answerReoffer(offerSdp: string, p: ReofferParams, reach?: MediaReach): { media: NegotiatedMedia; answer: string } {
  let offer: SessionDescription;
  try {
    offer = parse(offerSdp);
  } catch (err) {
    throw new MediaError(`unparsable SDP offer: ${(err as Error).message}`);
  }
  let chosen: { index: number; pt: number; te: number | undefined } | undefined;
  let why: string | undefined;
  offer.media.forEach((m, index) => {
    if (chosen || m.type !== 'audio' || m.port === 0) return;
    const pts = payloadsOf(m);
    const pt = pts.find((x) => codecOf(m, x) === p.codec);
    if (pt === undefined) return;
    const cannot = unreachable(m, offer, reach);
    if (cannot === undefined) chosen = { index, pt, te: pts.find((x) => codecOf(m, x) === 'TELEPHONE-EVENT') };
    else why ??= cannot;
  });
  if (!chosen) throw new MediaError(why ? `SDP offer cannot be taken: ${why}` : `SDP offer has no active audio stream with ${p.codec}, the codec the call plays in`);
  const { index, pt, te } = chosen;
  const audio = offer.media[index]!;
  const address = audio.connection?.ip ?? offer.connection?.ip;
  if (!address) throw new MediaError('SDP offer has no connection address');
  const offered = (audio.direction ?? offer.direction ?? 'sendrecv') as Direction;
  const ipVer = p.host.includes(':') ? 6 : 4;
  const answer: SessionDescription = {
    version: 0,
    origin: { username: 'flashverify', sessionId: p.sessionId, sessionVersion: p.sessionVersion, netType: 'IN', ipVer, address: p.host },
    name: 'flashverify',
    connection: { version: ipVer, ip: p.host },
    timing: { start: 0, stop: 0 },
    media: offer.media.map((m, i): MediaDescription => {
      if (i !== index) return { type: m.type, port: 0, protocol: m.protocol, payloads: String(payloadsOf(m)[0] ?? 0), rtp: [], fmtp: [] } as MediaDescription;
      return {
        type: 'audio',
        port: p.port,
        protocol: m.protocol,
        payloads: te === undefined ? String(pt) : `${pt} ${te}`,
        rtp: [{ payload: pt, codec: p.codec, rate: 8000 }, ...(te === undefined ? [] : [{ payload: te, codec: 'telephone-event', rate: 8000 }])],
        ...(te === undefined ? {} : { fmtp: [{ payload: te, config: '0-16' }] }),
        ptime: 20,
        direction: ANSWER_DIRECTION[offered] ?? 'sendrecv',
      } as MediaDescription;
    }),
  };
  const hold = isHoldAddress(address);
  return {
    media: {
      codec: p.codec,
      payloadType: pt,
      address,
      port: audio.port,
      ...(te !== undefined ? { telephoneEventPt: te } : {}),
      sendAllowed: !hold && (offered === 'sendrecv' || offered === 'recvonly'),
    },
    answer: write(answer),
  };
}

/**
 * The far end's answer to an offer of ours later in the call (a re-INVITE that brought none: our 200 offered, its
 * ACK answers, RFC 3261 14.2, RFC 3264 8): what it means for our stream. The first audio stream with a port must
 * list `codec`, the one we offered (the call plays in it); its direction and address may hold the stream (sendonly,
 * inactive, 0.0.0.0), as a new offer's may. Throws MediaError when it cannot be taken.
 */
export function parseReanswer(answerSdp: string, codec: G711Codec, reach?: MediaReach): NegotiatedMedia {
  const { session, audio, address } = answeredStream(answerSdp, reach);
  const pts = payloadsOf(audio);
  const pt = pts.find((x) => codecOf(audio, x) === codec);
  if (pt === undefined) throw new MediaError(`SDP answer does not take ${codec}, the codec offered (payloads: ${pts.join(' ') || 'none'})`);
  const te = pts.find((x) => codecOf(audio, x) === 'TELEPHONE-EVENT');
  const answered = (audio.direction ?? session.direction ?? 'sendrecv') as Direction;
  return {
    codec,
    payloadType: pt,
    address,
    port: audio.port,
    ...(te !== undefined ? { telephoneEventPt: te } : {}),
    sendAllowed: !isHoldAddress(address) && (answered === 'sendrecv' || answered === 'recvonly'),
  };
}

/**
 * An answer whose media another side negotiates (FreeSWITCH takes it in a re-INVITE and decides the codec and the
 * hold): only checked to carry an audio stream with an address. Throws MediaError otherwise.
 */
export function checkAnswerStream(sdp: string): void {
  answeredStream(sdp, undefined);
}

/**
 * RFC 3264 8: an offer in a dialog keeps the o= line of the SDP sent before it (user, session id, address), its version
 * one up when anything else changed and the same when nothing did. `next` is the new SDP as its producer wrote it
 * (FreeSWITCH numbers its own versions, which the far end never saw all of); `previous` what the far end has.
 */
export function continueOrigin(previous: string, next: string): string {
  const origin = /^o=(\S+) (\S+) (\d+) ([^\r\n]*)/m;
  const before = origin.exec(previous);
  if (!before || !origin.test(next)) return next;
  const body = (sdp: string): string => sdp.replace(origin, '').replace(/\r\n/g, '\n');
  const version = BigInt(before[3]!) + (body(previous) === body(next) ? 0n : 1n);
  return next.replace(origin, () => `o=${before[1]} ${before[2]} ${version} ${before[4]}`);
}

/**
 * An SDP answer's stream: the first audio m= line with a non-zero port and its connection address (media-level c=
 * overrides session-level, RFC 4566 5.7). Throws MediaError when it does not parse, has none, or cannot be sent to.
 */
function answeredStream(sdp: string, reach: MediaReach | undefined): { session: SessionDescription; audio: MediaDescription; address: string } {
  let session: SessionDescription;
  try {
    session = parse(sdp);
  } catch (err) {
    throw new MediaError(`unparsable SDP answer: ${(err as Error).message}`);
  }
  const audio = session.media.find((m: MediaDescription) => m.type === 'audio' && m.port > 0);
  if (!audio) throw new MediaError('SDP answer has no active audio stream');
  const address = audio.connection?.ip ?? session.connection?.ip;
  if (!address) throw new MediaError('SDP answer has no connection address');
  const why = unreachable(audio, session, reach);
  if (why) throw new MediaError(`SDP answer cannot be sent to: ${why}`);
  return { session, audio, address };
}
