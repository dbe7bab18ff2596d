import { fill, fixtureHeaders, fixtureText } from './fixtures.js';

/**
 * What the fake FreeSWITCH (freeswitch-esl.ts) says on its event socket, from
 * the fixtures in test/fixtures/esl/ (their headers say what each is derived
 * from): event header templates (events.txt) and reply texts / message frames
 * (replies.txt), `{placeholders}` filled per channel.
 */

const EVENTS = 'esl/events.txt';
const REPLIES = 'esl/replies.txt';

export const HEARTBEAT = fixtureHeaders(EVENTS, 'HEARTBEAT');
export const BACKGROUND_JOB = fixtureHeaders(EVENTS, 'BACKGROUND_JOB');
/** The CHANNEL_DATA headers of the `connect` reply on an outbound connection (3pcc INVITE from fsmrf, answered). */
export const CHANNEL_DATA = fixtureHeaders(EVENTS, 'CHANNEL_DATA');
/** Body lines of `api uuid_dump <uuid>` after the re-INVITE with the callee's SDP. */
export const UUID_DUMP = fixtureHeaders(EVENTS, 'UUID_DUMP');
export const CHANNEL_EXECUTE = fixtureHeaders(EVENTS, 'CHANNEL_EXECUTE');
/** Application-Response: "FILE PLAYED" (also after uuid_break), "FILE NOT FOUND", "PLAYBACK ERROR" (mod_dptools playback). */
export const CHANNEL_EXECUTE_COMPLETE = fixtureHeaders(EVENTS, 'CHANNEL_EXECUTE_COMPLETE');
export const CHANNEL_HANGUP = fixtureHeaders(EVENTS, 'CHANNEL_HANGUP');
export const CHANNEL_CALLSTATE_HANGUP = fixtureHeaders(EVENTS, 'CHANNEL_CALLSTATE_HANGUP');
/** `sofia status` on drachtio/drachtio-freeswitch-mrf: the drachtio_mrf profile fsmrf INVITEs. {sip} = host:port. */
export const SOFIA_STATUS = fixtureText(EVENTS, 'sofia-status');
/** `sofia status` of a FreeSWITCH without the drachtio_mrf profile. */
export const SOFIA_STATUS_NO_MRF = fixtureText(EVENTS, 'sofia-status-no-mrf');

/** A reply text of replies.txt, filled. */
export function replyText(name: string, values: Record<string, string | number> = {}): string {
  return fill(fixtureText(REPLIES, name), values);
}

/** A whole message of replies.txt (`frame` blocks); {length} is set to the byte length of `body`. */
export function eslFrame(name: string, values: Record<string, string | number> = {}, body?: string): string {
  const all = body === undefined ? values : { ...values, body, length: Buffer.byteLength(body, 'utf8') };
  return fill(fixtureText(REPLIES, name), all);
}

/** SDP FreeSWITCH answers fsmrf's offer-less INVITE with (becomes the offer to the callee). */
export const FS_LOCAL_SDP = `v=0
o=FreeSWITCH 1700000000 1700000001 IN IP4 {mediaIp}
s=FreeSWITCH
c=IN IP4 {mediaIp}
t=0 0
m=audio {mediaPort} RTP/AVP 0 8 101
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a=ptime:20
a=sendrecv
`.replace(/\n/g, '\r\n');

export { fill };

export function fillHeaders(template: Record<string, string>, values: Record<string, string | number>): Record<string, string> {
  return Object.fromEntries(Object.entries(template).map(([k, v]) => [k, fill(v, values)]));
}
